//! Client authentication (SCRAM, md5, trust; plain passwords and SCRAM
//! verifiers) and server authentication through pgrelay.

use std::time::Duration;

use bytes::BytesMut;

use crate::support::cluster;
use crate::support::relay::{self, error_fields, scalar, sqlstate, Raw};

#[tokio::test]
async fn each_auth_method_logs_in_and_reaches_the_server() {
    let cluster = cluster();
    // app_md5's pg_hba rule asks for md5, which pgrelay sends only when allowed.
    let toml = relay::config_toml(cluster, "", "")
        .replace("user = \"postgres\"\n", "user = \"postgres\"\nserver_require_auth = \"scram-sha-256,md5,none\"\n");
    let app = relay::start(pgrelay::config::Config::parse(&toml).unwrap()).await;
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
    let cases = [("app", "wrong", "28P01"), ("app_md5", "wrong", "28P01"), ("nobody", "x", "28P01")];
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

/// What one SCRAM login with `password` shows on the wire: each message's
/// type (with the authentication request's code), the salt and iteration
/// count offered, and the final error.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) shape: Vec<String>,
    pub(crate) salt: String,
    pub(crate) iterations: String,
    pub(crate) error: (String, String),
}

pub(crate) async fn scram_attempt(addr: std::net::SocketAddr, user: &str, password: &str) -> Attempt {
    use pgrelay::auth::scram::{ScramClient, ScramSecret, MECHANISM};
    use pgrelay::wire;

    let mut raw = Raw::connect(addr).await;
    let mut shape = Vec::new();
    let mut note = |(tag, body): &(u8, bytes::Bytes)| {
        let code =
            if *tag == b'R' { format!("{}", u32::from_be_bytes(body[..4].try_into().unwrap())) } else { "".into() };
        shape.push(format!("{}{code}", char::from(*tag)));
    };
    let mut out = BytesMut::new();
    wire::put_startup_message(&mut out, [(&b"user"[..], user.as_bytes()), (&b"database"[..], &b"app"[..])]);
    raw.send(&out).await;
    let sasl = raw.recv().await.expect("an authentication request");
    note(&sasl);
    let (client, first) = ScramClient::start();
    let mut out = BytesMut::new();
    wire::put_sasl_initial_response(&mut out, MECHANISM, first.as_bytes());
    raw.send(&out).await;
    let server_first = raw.recv().await.expect("SASLContinue");
    note(&server_first);
    let text = String::from_utf8(server_first.1[4..].to_vec()).unwrap();
    let attribute = |name: &str| text.split(',').find_map(|a| a.strip_prefix(name)).unwrap_or("").to_owned();
    let answer =
        client.answer(&server_first.1[4..], &ScramSecret::password(password), u32::MAX).expect("a valid challenge");
    let mut out = BytesMut::new();
    wire::put_sasl_response(&mut out, answer.client_final.as_bytes());
    raw.send(&out).await;
    let mut error = None;
    while let Some(message) = raw.recv().await {
        note(&message);
        if message.0 == b'E' {
            let (code, text) = error_fields(&message.1);
            error = Some((code, text.replace(user, "<user>")));
        }
    }
    Attempt { shape, salt: attribute("s="), iterations: attribute("i="), error: error.expect("an error") }
}

#[tokio::test]
async fn an_unknown_user_sees_exactly_what_a_wrong_password_sees() {
    let app = relay::start_default(cluster(), "").await;
    let known = scram_attempt(app.rw_addr, "app", "wrong").await;
    let unknown = scram_attempt(app.rw_addr, "nobody", "wrong").await;
    assert_eq!(known.shape, ["R10", "R11", "E"], "{known:?}");
    assert_eq!(unknown.shape, known.shape, "{unknown:?}");
    assert_eq!(unknown.error, known.error);
    assert_eq!(known.error, ("28P01".to_owned(), "password authentication failed for user \"<user>\"".to_owned()));
    assert_eq!(unknown.iterations, "4096");
    assert_eq!(unknown.salt.len(), known.salt.len(), "{} {}", unknown.salt, known.salt);
    // The same name is offered the same salt every time, as a real user is; another name another one.
    assert_eq!(scram_attempt(app.rw_addr, "nobody", "other").await.salt, unknown.salt);
    assert_ne!(scram_attempt(app.rw_addr, "somebody", "other").await.salt, unknown.salt);
    // A driver reports both the same way.
    for user in ["app", "nobody"] {
        let err = relay::connect_as(app.rw_addr, user, "wrong").await.err().expect("login must fail");
        assert_eq!(sqlstate(&err), "28P01", "{user}: {err}");
        assert_eq!(relay::message(&err), format!("password authentication failed for user \"{user}\""));
    }
    assert!(app.context().pools.all().is_empty(), "no server connection for either");
    app.shutdown(Duration::from_secs(5)).await;
}
