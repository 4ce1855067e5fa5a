//! Client authentication (SCRAM, md5, trust; plain passwords and SCRAM
//! verifiers) and server authentication through pgrelay.

use std::time::Duration;

use crate::support::cluster;
use crate::support::relay::{self, scalar, sqlstate};

#[tokio::test]
async fn each_auth_method_logs_in_and_reaches_the_server() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "").await;
    for (user, password) in [("app", "app"), ("app_md5", "app_md5"), ("app_trust", "")] {
        let conn = relay::connect_as(app.rw_addr, user, password).await.unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(scalar(&conn.client, "select current_user").await, user);
    }
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_cost_no_server_connection() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "").await;
    let cases = [("app", "wrong", "28P01"), ("app_md5", "wrong", "28P01"), ("nobody", "x", "28000")];
    for (user, password, code) in cases {
        let err = relay::connect_as(app.rw_addr, user, password).await.err().expect("login must fail");
        assert_eq!(sqlstate(&err), code, "{user}: {err}");
    }
    assert!(app.context().pools.all().is_empty(), "a failed login must not open a server connection");
    // And the proxy still serves a correct login right after.
    let client = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&client, "select 1").await, "1");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_scram_verifier_as_password_logs_in_to_the_server_with_the_clients_key() {
    let cluster = cluster();
    let verifier = cluster.psql(cluster.primary(), "select rolpassword from pg_authid where rolname = 'app'").unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let toml = relay::config_toml(cluster, "", "")
        .replace("name = \"app\"\npassword = \"app\"", &format!("name = \"app\"\npassword = \"{verifier}\""));
    let app = relay::start(pgrelay::config::Config::parse(&toml).unwrap()).await;
    // Nobody knows the plain password but the client; pgrelay logs in with
    // the ClientKey recovered from the client's proof.
    let client = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&client, "select current_user").await, "app");
    let ro = relay::connect(app.ro_addr).await;
    assert_eq!(scalar(&ro, "select pg_is_in_recovery()").await, "t");
    let err = relay::connect_as(app.rw_addr, "app", "wrong").await.err().expect("login must fail");
    assert_eq!(sqlstate(&err), "28P01");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn unknown_database_gets_3d000() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "").await;
    let conn_str = format!("host=127.0.0.1 port={} user=app password=app dbname=nope", app.rw_addr.port());
    let err = relay::connect_with(&conn_str).await.err().expect("login must fail");
    assert_eq!(sqlstate(&err), "3D000", "{err}");
    app.shutdown(Duration::from_secs(5)).await;
}
