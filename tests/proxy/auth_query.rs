//! Users from the database (`[auth]`): SCRAM and md5 users that only the
//! server knows log in through pgrelay, unknown names look like wrong
//! passwords, results are cached for auth_cache_ttl, and a flood of unknown
//! names costs the primary a bounded number of lookups.

use std::time::{Duration, Instant};

use pgrelay::config::Config;
use pgrelay::localcluster::LocalCluster;
use pgrelay::RunningApp;

use crate::auth::scram_attempt;
use crate::support::cluster;
use crate::support::relay::{self, scalar, sqlstate};

const GRACE: Duration = Duration::from_secs(5);

/// Runs `sql` on the primary as the superuser, in database `postgres`.
fn sql(cluster: &LocalCluster, sql: &str) -> String {
    cluster.psql(cluster.primary(), sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A lookup role and a SECURITY DEFINER function (as config/pgrelay.toml
/// documents) that also counts its calls in a sequence named after `tag`.
fn counting_lookup(cluster: &LocalCluster, tag: &str) -> String {
    sql(
        cluster,
        &format!(
            "CREATE ROLE aq_auth_{tag} LOGIN PASSWORD 'auth-pw';
             CREATE SEQUENCE aq_count_{tag};
             CREATE FUNCTION aq_lookup_{tag}(in i_username text, out uname text, out phash text)
             RETURNS record AS $$
             BEGIN
                 PERFORM nextval('aq_count_{tag}');
                 SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = i_username INTO uname, phash;
                 RETURN;
             END;
             $$ LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public;
             REVOKE ALL ON FUNCTION aq_lookup_{tag}(text) FROM public;
             GRANT EXECUTE ON FUNCTION aq_lookup_{tag}(text) TO aq_auth_{tag};"
        ),
    );
    format!(
        "[auth]\nauth_user = \"aq_auth_{tag}\"\nauth_password = \"auth-pw\"\n\
         auth_query = \"SELECT uname, phash FROM aq_lookup_{tag}($1)\"\n"
    )
}

/// How many times the counting lookup of `tag` ran on the server.
fn lookups(cluster: &LocalCluster, tag: &str) -> u64 {
    let text = sql(cluster, &format!("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM aq_count_{tag}"));
    text.parse().unwrap_or_else(|_| panic!("a count: {text}"))
}

/// pgrelay's own count of lookups with `result`.
fn counted(app: &RunningApp, result: &str) -> u64 {
    app.context().metrics.auth_queries.with_label_values(&[result]).get()
}

/// The test config with `pool` keys and `auth` (a whole `[auth]` section) added.
fn start_with(cluster: &LocalCluster, pool: &str, auth: &str) -> Config {
    let toml = relay::config_toml(cluster, pool, "")
        .replace("user = \"postgres\"\n", "user = \"postgres\"\nserver_require_auth = \"scram-sha-256,md5,none\"\n");
    Config::parse(&format!("{auth}\n{toml}")).expect("test config is valid")
}

async fn login(app: &RunningApp, user: &str, password: &str) -> Result<String, String> {
    match relay::connect_as(app.rw_addr, user, password).await {
        Ok(conn) => Ok(scalar(&conn.client, "select current_user").await),
        Err(e) => Err(sqlstate(&e)),
    }
}

#[tokio::test]
async fn auth_query_scram_user_logs_in_with_the_key_from_its_proof() {
    let cluster = cluster();
    sql(cluster, "CREATE ROLE aq_scram LOGIN PASSWORD 'scram-pw'; GRANT ALL ON DATABASE app TO aq_scram");
    sql(cluster, "SET password_encryption = 'md5'; CREATE ROLE aq_md5_refused LOGIN PASSWORD 'md5-pw'");
    let app = relay::start(start_with(cluster, "", "[auth]\nauth_user = \"postgres\"\n")).await;
    // pgrelay knows no password for it: the server login uses the ClientKey from the client's proof.
    assert_eq!(login(&app, "aq_scram", "scram-pw").await, Ok("aq_scram".to_owned()));
    assert_eq!(login(&app, "aq_scram", "wrong").await, Err("28P01".to_owned()));
    // Under auth_type = "scram-sha-256" an md5 hash cannot serve, as in PostgreSQL.
    assert_eq!(login(&app, "aq_md5_refused", "md5-pw").await, Err("28P01".to_owned()));
    // [[users]] still come first.
    assert_eq!(login(&app, "app", "app").await, Ok("app".to_owned()));
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn auth_query_md5_user_logs_in_with_md5_and_scram_users_still_with_scram() {
    let cluster = cluster();
    sql(
        cluster,
        "SET password_encryption = 'md5'; CREATE ROLE aq_md5 LOGIN PASSWORD 'md5-pw'; \
         GRANT ALL ON DATABASE app TO aq_md5",
    );
    sql(cluster, "CREATE ROLE aq_scram2 LOGIN PASSWORD 'scram-pw'; GRANT ALL ON DATABASE app TO aq_scram2");
    for node in cluster.nodes() {
        cluster.prepend_hba_rules(node, "host all aq_md5 127.0.0.1/32 md5").expect("hba rule");
    }
    let auth = "[auth]\nauth_user = \"postgres\"\nauth_type = \"md5\"\n";
    let app = relay::start(start_with(cluster, "", auth)).await;
    let md5 = scram_or_md5_request(&app, "aq_md5").await;
    assert_eq!(md5, 5, "an md5 hash is asked for with AuthenticationMD5Password");
    assert_eq!(login(&app, "aq_md5", "md5-pw").await, Ok("aq_md5".to_owned()));
    assert_eq!(login(&app, "aq_md5", "wrong").await, Err("28P01".to_owned()));
    assert_eq!(scram_or_md5_request(&app, "aq_scram2").await, 10, "a SCRAM verifier still answers SCRAM");
    assert_eq!(login(&app, "aq_scram2", "scram-pw").await, Ok("aq_scram2".to_owned()));
    assert_eq!(scram_or_md5_request(&app, "aq_nobody_md5").await, 5, "unknown names get md5 too");
    assert_eq!(login(&app, "aq_nobody_md5", "x").await, Err("28P01".to_owned()));
    app.shutdown(GRACE).await;
}

/// The authentication request code pgrelay opens a login of `user` with.
async fn scram_or_md5_request(app: &RunningApp, user: &str) -> u32 {
    let mut raw = relay::Raw::connect(app.rw_addr).await;
    let mut out = bytes::BytesMut::new();
    pgrelay::wire::put_startup_message(&mut out, [(&b"user"[..], user.as_bytes()), (&b"database"[..], &b"app"[..])]);
    raw.send(&out).await;
    let (tag, body) = raw.recv().await.expect("an authentication request");
    assert_eq!(tag, b'R');
    u32::from_be_bytes(body[..4].try_into().unwrap())
}

#[tokio::test]
async fn auth_query_unknown_and_passwordless_users_look_like_a_wrong_password() {
    let cluster = cluster();
    sql(cluster, "CREATE ROLE aq_known LOGIN PASSWORD 'known-pw'; CREATE ROLE aq_nopass LOGIN");
    let app = relay::start(start_with(cluster, "", "[auth]\nauth_user = \"postgres\"\n")).await;
    let known = scram_attempt(app.rw_addr, "aq_known", "wrong").await;
    assert_eq!(known.shape, ["R10", "R11", "E"], "{known:?}");
    assert_eq!(known.error, ("28P01".to_owned(), "password authentication failed for user \"<user>\"".to_owned()));
    for user in ["aq_no_such_user", "aq_nopass"] {
        let other = scram_attempt(app.rw_addr, user, "wrong").await;
        assert_eq!(other.shape, known.shape, "{user}: {other:?}");
        assert_eq!(other.error, known.error, "{user}");
        assert_eq!(other.iterations, known.iterations, "{user}");
        assert_eq!(other.salt.len(), known.salt.len(), "{user}");
        // The same salt every time, as a real user's.
        assert_eq!(scram_attempt(app.rw_addr, user, "again").await.salt, other.salt, "{user}");
    }
    assert!(app.context().pools.all().is_empty(), "no server connection for a failed login");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn auth_query_results_are_cached_until_the_ttl_and_a_new_password_then_works() {
    let cluster = cluster();
    let auth = counting_lookup(cluster, "cache") + "auth_cache_ttl = \"2s\"\n";
    sql(cluster, "CREATE ROLE aq_cached LOGIN PASSWORD 'old-pw'; GRANT ALL ON DATABASE app TO aq_cached");
    let app = relay::start(start_with(cluster, "", &auth)).await;
    assert_eq!(login(&app, "aq_cached", "old-pw").await, Ok("aq_cached".to_owned()));
    assert_eq!(login(&app, "aq_cached", "old-pw").await, Ok("aq_cached".to_owned()));
    assert_eq!(login(&app, "aq_unknown_cached", "x").await, Err("28P01".to_owned()));
    assert_eq!(login(&app, "aq_unknown_cached", "x").await, Err("28P01".to_owned()));
    assert_eq!(lookups(cluster, "cache"), 2, "one lookup per name: two logins each");
    assert_eq!((counted(&app, "found"), counted(&app, "not_found")), (1, 1));

    sql(cluster, "ALTER ROLE aq_cached PASSWORD 'new-pw'");
    let changed = Instant::now();
    // Until the TTL the cached verifier holds: the old password still logs in.
    assert_eq!(login(&app, "aq_cached", "old-pw").await, Ok("aq_cached".to_owned()));
    assert!(changed.elapsed() < Duration::from_secs(2), "checked within the TTL");
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(changed.elapsed())).await;
    assert_eq!(login(&app, "aq_cached", "old-pw").await, Err("28P01".to_owned()));
    // The new verifier gets a new pool, logged in with the new ClientKey.
    assert_eq!(login(&app, "aq_cached", "new-pw").await, Ok("aq_cached".to_owned()));
    assert_eq!(lookups(cluster, "cache"), 3);
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn auth_query_flood_of_unknown_names_is_bounded_and_others_keep_working() {
    const FLOOD: usize = 200;
    const RATE: u64 = 20;
    let cluster = cluster();
    let auth = counting_lookup(cluster, "flood") + &format!("auth_query_rate = {RATE}\nauth_query_concurrency = 2\n");
    sql(cluster, "CREATE ROLE aq_steady LOGIN PASSWORD 'steady-pw'; GRANT ALL ON DATABASE app TO aq_steady");
    let pool = "client_login_timeout = \"2s\"\nmax_pre_auth_conn = 512\nmax_pre_auth_conn_per_addr = 512";
    let app = relay::start(start_with(cluster, pool, &auth)).await;
    assert_eq!(login(&app, "aq_steady", "steady-pw").await, Ok("aq_steady".to_owned()), "cached before the flood");
    let before = lookups(cluster, "flood");

    let started = Instant::now();
    let seed: u64 = rand::random();
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let addr = app.rw_addr;
            tokio::spawn(async move {
                let name = format!("aq_flood_{seed:x}_{i}");
                relay::connect_as(addr, &name, "guess").await.err().map(|e| sqlstate(&e))
            })
        })
        .collect();
    // Meanwhile a configured user and a cached database user log in and work.
    for _ in 0..5 {
        assert_eq!(login(&app, "app", "app").await, Ok("app".to_owned()));
        assert_eq!(login(&app, "aq_steady", "steady-pw").await, Ok("aq_steady".to_owned()));
    }
    let mut codes = std::collections::BTreeMap::new();
    for task in flood {
        let code = task.await.unwrap().unwrap_or_else(|| "logged in".to_owned());
        *codes.entry(code).or_insert(0) += 1;
    }
    let elapsed = started.elapsed();
    let ran = lookups(cluster, "flood") - before;
    // A burst of RATE, then RATE per second, for as long as the flood lasted.
    let bound = RATE + (RATE as f64 * elapsed.as_secs_f64()).ceil() as u64;
    eprintln!("flood of {FLOOD} unknown names in {elapsed:?}: {ran} lookups (bound {bound}), answers {codes:?}");
    assert!(ran <= bound, "{ran} lookups, bound {bound}");
    assert!(ran < FLOOD as u64 / 2, "{ran} lookups for {FLOOD} names");
    // pgrelay counts what reached the server; a lookup cut short by the login deadline counts as an error.
    assert_eq!(ran, counted(&app, "not_found") + counted(&app, "error"));
    let code = |c: &str| codes.get(c).copied().unwrap_or(0) as u64;
    // Each name looked up gets a wrong password, unless client_login_timeout
    // ran out between its lookup and the end of its SCRAM exchange (08P01).
    let not_found = counted(&app, "not_found");
    assert!(
        code("28P01") <= not_found && not_found <= code("28P01") + code("08P01"),
        "each name looked up: a wrong password ({not_found} not found, answers {codes:?})"
    );
    assert_eq!(code("53300"), counted(&app, "throttled"), "the names not looked up: too many lookups");
    assert!(code("53300") >= FLOOD as u64 - bound, "{codes:?}");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn auth_query_that_cannot_run_gives_a_clear_error() {
    let cluster = cluster();
    // A wrong auth_password: the server refuses auth_user.
    let auth = "[auth]\nauth_user = \"app\"\nauth_password = \"not-apps-password\"\n";
    let app = relay::start(start_with(cluster, "", auth)).await;
    let started = Instant::now();
    let err = relay::connect_as(app.rw_addr, "aq_anyone", "x").await.err().expect("refused");
    assert_eq!(sqlstate(&err), "28000", "{err}");
    assert!(relay::message(&err).contains("refused auth_user \"app\""), "{}", relay::message(&err));
    assert!(started.elapsed() < Duration::from_secs(5), "no hang");
    assert_eq!(counted(&app, "error"), 1);
    app.shutdown(GRACE).await;

    // The primary does not answer: a connection failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let primary = cluster.primary().port;
    let toml =
        relay::config_toml(cluster, "", "").replace(&format!("port = {primary}\n"), &format!("port = {closed}\n"));
    let config = Config::parse(&format!("[auth]\nauth_user = \"postgres\"\n{toml}")).unwrap();
    let app = relay::start(config).await;
    let err = relay::connect_as(app.rw_addr, "aq_anyone", "x").await.err().expect("refused");
    assert_eq!(sqlstate(&err), "08006", "{err}");
    assert!(relay::message(&err).contains("could not connect to"), "{}", relay::message(&err));
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn auth_query_serves_every_user_when_none_is_configured() {
    let cluster = cluster();
    sql(cluster, "CREATE ROLE aq_only LOGIN PASSWORD 'only-pw'; GRANT ALL ON DATABASE app TO aq_only");
    let mut config = start_with(cluster, "", "[auth]\nauth_user = \"postgres\"\n");
    // Parsing accepts no [[users]] with [auth] (see the config tests); run that way.
    config.users.clear();
    let app = relay::start(config).await;
    assert_eq!(login(&app, "aq_only", "only-pw").await, Ok("aq_only".to_owned()));
    assert_eq!(login(&app, "aq_only", "wrong").await, Err("28P01".to_owned()));
    assert_eq!(login(&app, "app", "not-its-password").await, Err("28P01".to_owned()));
    app.shutdown(GRACE).await;
}
