//! The shared test cluster is what the other integration tests assume: one
//! primary, two streaming replicas, and the roles with their auth methods.

mod support;

use std::time::{Duration, Instant};

use pgrelay::localcluster::{APP_DATABASE, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, SUPERUSER, TRUST_USER};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

async fn connect(port: u16, user: &str, password: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&support::connect_string(port, user, password, db), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn superuser(port: u16) -> Client {
    connect(port, SUPERUSER, "", APP_DATABASE).await.expect("superuser connects over TCP (trust)")
}

async fn in_recovery(port: u16) -> bool {
    superuser(port).await.query_one("select pg_is_in_recovery()", &[]).await.expect("query").get(0)
}

#[tokio::test]
async fn primary_is_read_write_and_replicas_are_in_recovery() {
    let cluster = support::cluster();
    assert!(!in_recovery(cluster.primary().port).await, "primary must not be in recovery");
    assert_eq!(cluster.replicas().len(), 2);
    for replica in cluster.replicas() {
        assert!(in_recovery(replica.port).await, "{} must be in recovery", replica.name);
    }
    let names: Vec<&str> = cluster.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["pg0", "pg1", "pg2"]);
}

#[tokio::test]
async fn rows_written_on_the_primary_reach_both_replicas() {
    let cluster = support::cluster();
    let primary = superuser(cluster.primary().port).await;
    primary.batch_execute("create table fixture_replication (id int primary key, note text)").await.expect("create");
    primary.execute("insert into fixture_replication values (1, 'hello')", &[]).await.expect("insert");

    for replica in cluster.replicas() {
        let client = superuser(replica.port).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = client.query_opt("select note from fixture_replication where id = 1", &[]).await;
            match seen {
                Ok(Some(row)) => {
                    assert_eq!(row.get::<_, String>(0), "hello");
                    break;
                }
                // The table itself may not have been replayed yet.
                Ok(None) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                other => panic!("{} did not show the row within 10 s: {other:?}", replica.name),
            }
        }
    }
}

#[tokio::test]
async fn app_logs_in_with_scram_and_a_wrong_password_is_refused() {
    let port = support::cluster().primary().port;
    let client = connect(port, APP_USER, APP_PASSWORD, APP_DATABASE).await.expect("app logs in with its password");
    let user: String = client.query_one("select current_user", &[]).await.expect("query").get(0);
    assert_eq!(user, APP_USER);

    let error = connect(port, APP_USER, "not-the-password", APP_DATABASE).await.expect_err("wrong password refused");
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD), "{error}");
}

#[tokio::test]
async fn app_md5_logs_in_with_md5_and_app_trust_without_a_password() {
    let cluster = support::cluster();
    let port = cluster.primary().port;
    let md5 = connect(port, MD5_USER, MD5_PASSWORD, APP_DATABASE).await.expect("app_md5 logs in");
    md5.batch_execute("create temp table md5_can_create (x int)").await.expect("app_md5 works in app");
    let error = connect(port, MD5_USER, "wrong", APP_DATABASE).await.expect_err("wrong md5 password refused");
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD), "{error}");

    let trust = connect(port, TRUST_USER, "", APP_DATABASE).await.expect("app_trust logs in without a password");
    trust.batch_execute("create table trust_can_create (x int); drop table trust_can_create").await.expect("grants");

    // The stored verifiers are what the names promise.
    let sql = "select rolname || ':' || coalesce(left(rolpassword, 14), '') from pg_authid \
               where rolname in ('app', 'app_md5', 'app_trust') order by rolname";
    let stored = cluster.psql(cluster.primary(), sql).expect("psql");
    let stored: Vec<&str> = stored.lines().collect();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(stored[0].starts_with("app:SCRAM-SHA-256$"), "{stored:?}");
    assert!(stored[1].starts_with("app_md5:md5"), "{stored:?}");
    assert_eq!(stored[2], "app_trust:", "app_trust has no password");
}
