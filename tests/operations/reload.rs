//! A live reload under a steady load through both ports: a changed pool size
//! and an added user take effect, a pool whose settings did not change keeps
//! its server connection, a broken file changes nothing, a removed user's
//! open sessions carry on while new logins are refused, and no client of the
//! load ever sees an error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgrelay::pool::Pool;
use pgrelay::App;
use tokio_postgres::Client;

use crate::common::{bounded, metric, wait_until, ConfigFile};
use crate::support::relay::{self, scalar, sqlstate};
use crate::support::{self, cluster};

/// Load clients per port.
const CLIENTS_PER_PORT: usize = 2;
/// Transactions per load client at most, whatever the test's phases take.
const MAX_TRANSACTIONS: usize = 20_000;
/// How long a load client runs at most.
const MAX_LOAD_TIME: Duration = Duration::from_secs(60);

/// A second database entry for the same server database, with its own pool
/// size: a change of `default_pool_size` leaves its pools alone. Size 1, so
/// its one server connection is the backend every client of it sees.
const FIXED_DATABASE: &str = "\n[[databases]]\nname = \"fixed\"\ndbname = \"app\"\npool_size = 1\n";
/// A user added by the reload, logging in to the server as `app`.
const NEW_USER: &str =
    "\n[[users]]\nname = \"ops_new\"\npassword = \"ops_new\"\nserver_user = \"app\"\nserver_password = \"app\"\n";

/// What the load saw.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    next_id: AtomicI64,
    rw_ok: AtomicUsize,
    ro_ok: AtomicUsize,
    failed: AtomicUsize,
    errors: Mutex<Vec<String>>,
    inserted: Mutex<Vec<i64>>,
}

impl Load {
    fn ok(&self) -> usize {
        self.rw_ok.load(Ordering::Relaxed) + self.ro_ok.load(Ordering::Relaxed)
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.errors.lock().expect("errors").push(what);
    }
}

/// One load client: short transactions through `addr` until told to stop.
/// On the read-write port every other transaction inserts a row.
async fn load_client(addr: SocketAddr, writes: bool, load: Arc<Load>) {
    let client = match relay::connect_as(addr, "app", "app").await {
        Ok(conn) => conn.client,
        Err(e) => return load.fail(format!("login: {}", relay::message(&e))),
    };
    let started = Instant::now();
    for n in 0..MAX_TRANSACTIONS {
        if load.stop.load(Ordering::Relaxed) || started.elapsed() > MAX_LOAD_TIME {
            return;
        }
        let id = load.next_id.fetch_add(1, Ordering::Relaxed);
        let sql = if writes && n % 2 == 0 {
            format!("begin; insert into ops_reload_t (id) values ({id}); commit")
        } else {
            "select 1".to_owned()
        };
        match client.simple_query(&sql).await {
            Ok(_) if writes => {
                if n % 2 == 0 {
                    load.inserted.lock().expect("inserted").push(id);
                }
                load.rw_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => drop(load.ro_ok.fetch_add(1, Ordering::Relaxed)),
            Err(e) => {
                load.fail(format!("{sql}: {}", relay::message(&e)));
                if client.is_closed() {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the load has run `more` transactions beyond what it had.
async fn load_progresses(load: &Load, more: usize) {
    let target = load.ok() + more;
    wait_until("the load makes progress", Duration::from_secs(20), || async { (load.ok() >= target).then_some(()) })
        .await;
}

/// The pool of (node, database, user), if it exists.
fn pool(app: &pgrelay::RunningApp, node: &str, database: &str, user: &str) -> Option<Arc<Pool>> {
    let pools = app.context().pools.all();
    pools.into_iter().find(|p| p.key.node == node && p.key.database == database && p.key.user == user)
}

async fn backend_pid(client: &Client) -> String {
    scalar(client, "select pg_backend_pid()").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load() {
    let cluster = cluster();
    let primary = cluster.primary();
    let setup = "create table ops_reload_t (id bigint primary key); grant all on ops_reload_t to public";
    tokio::task::block_in_place(|| cluster.psql_db(primary, "app", setup)).expect("create ops_reload_t");
    let first = relay::config_toml(cluster, "default_pool_size = 4", "") + FIXED_DATABASE;
    let with_new_user = relay::config_toml(cluster, "default_pool_size = 6", "") + FIXED_DATABASE + NEW_USER;
    let without_new_user = relay::config_toml(cluster, "default_pool_size = 6", "") + FIXED_DATABASE;
    let file = ConfigFile::new("reload", &first);
    let app = App::start_from(file.path()).await.expect("pgrelay starts from the file");
    let ctx = app.context().clone();

    let fixed_conn = support::connect_string(app.rw_addr.port(), "app", "app", "fixed");
    let fixed = relay::connect_with(&fixed_conn).await.expect("log in to database fixed").client;
    let fixed_pid = backend_pid(&fixed).await;
    let load = Arc::new(Load::default());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS_PER_PORT {
        clients.push(tokio::spawn(load_client(app.rw_addr, true, load.clone())));
        clients.push(tokio::spawn(load_client(app.ro_addr, false, load.clone())));
    }
    load_progresses(&load, 100).await;
    let fixed_pool = pool(&app, "pg0", "fixed", "app").expect("the fixed database's pool");
    let old_app_pool = pool(&app, "pg0", "app", "app").expect("the app database's pool");
    assert_eq!(old_app_pool.settings().size, 4);
    let app_pools = ctx.pools.all().iter().filter(|p| p.key.database == "app").count();
    assert_eq!(app_pools, 3, "the load uses the app database on every node");
    let reloads_ok = metric(app.http_addr, r#"pgrelay_config_reloads_total{result="ok"}"#).await;
    let reloads_failed = metric(app.http_addr, r#"pgrelay_config_reloads_total{result="error"}"#).await;

    // (1) A bigger default pool and a new user.
    file.write(&with_new_user);
    let summary = ctx.reload().expect("a valid file reloads");
    assert_eq!(summary.pools_retired, app_pools, "the app database's pools, not the fixed one's: {summary:?}");
    assert!(!summary.monitors_restarted && summary.needs_restart.is_empty(), "{summary:?}");
    assert_eq!(ctx.config().pool.default_pool_size.get(), 6);
    assert!(old_app_pool.is_closed(), "a pool whose size changed is retired");
    let kept = pool(&app, "pg0", "fixed", "app").expect("the fixed pool is still registered");
    assert!(Arc::ptr_eq(&kept, &fixed_pool) && !kept.is_closed(), "an unchanged pool is kept");
    assert_eq!(backend_pid(&fixed).await, fixed_pid, "the unchanged pool kept its server connection");
    let new_user = relay::connect_as(app.rw_addr, "ops_new", "ops_new").await.expect("the added user logs in").client;
    assert_eq!(scalar(&new_user, "select current_user").await, "app", "it reaches the server as server_user");
    load_progresses(&load, 100).await;
    let new_app_pool = pool(&app, "pg0", "app", "app").expect("a fresh app pool");
    assert!(!Arc::ptr_eq(&new_app_pool, &old_app_pool));
    assert_eq!(new_app_pool.settings().size, 6, "the fresh pool has the new size");
    assert_eq!(metric(app.http_addr, r#"pgrelay_config_reloads_total{result="ok"}"#).await, reloads_ok + 1.0);

    // (2) A broken file changes nothing: first a syntax error, then an invalid value.
    let running = Arc::clone(&ctx.config());
    let path = file.path().display().to_string();
    file.write(&with_new_user.replacen("[pool]", "[pool", 1));
    let syntax = ctx.reload().expect_err("a TOML syntax error must not reload");
    assert!(syntax.contains(&path) && syntax.contains("line "), "the error names the file and line: {syntax}");
    file.write(&with_new_user.replace("default_pool_size = 6", "default_pool_size = 0"));
    let invalid = ctx.reload().expect_err("an invalid value must not reload");
    assert!(invalid.contains("default_pool_size") && invalid.contains("greater than 0"), "{invalid}");
    assert!(Arc::ptr_eq(&running, &ctx.config()), "the running configuration is untouched");
    assert_eq!(ctx.config().pool.default_pool_size.get(), 6);
    assert!(!fixed_pool.is_closed() && !new_app_pool.is_closed(), "no pool is retired by a failed reload");
    assert_eq!(backend_pid(&fixed).await, fixed_pid);
    let again = relay::connect_as(app.rw_addr, "ops_new", "ops_new").await;
    assert!(again.is_ok(), "the users stay as they were: {:?}", again.err());
    let failed_now = metric(app.http_addr, r#"pgrelay_config_reloads_total{result="error"}"#).await;
    assert_eq!(failed_now, reloads_failed + 2.0, "each failed reload is counted");

    // (3) The added user goes again: its open session carries on, new logins are refused.
    file.write(&without_new_user);
    let summary = ctx.reload().expect("the user's removal reloads");
    assert_eq!(summary.pools_retired, 1, "only ops_new's pool: {summary:?}");
    let still = pool(&app, "pg0", "app", "app").expect("the app pool");
    assert!(Arc::ptr_eq(&still, &new_app_pool), "the app user's pool did not change");
    for n in 0..5 {
        let sql = format!("select {n}");
        let answer = new_user.simple_query(&sql).await;
        assert!(answer.is_ok(), "a removed user's open session keeps working: {:?}", answer.err());
    }
    let refused = relay::connect_as(app.rw_addr, "ops_new", "ops_new").await.err().expect("a removed user's login");
    // Told as a wrong password would be: the wire does not say which users exist.
    assert_eq!(sqlstate(&refused), "28P01", "{refused}");
    assert_eq!(relay::message(&refused), "password authentication failed for user \"ops_new\"");
    assert_eq!(backend_pid(&fixed).await, fixed_pid, "the fixed pool kept its connection through every reload");
    assert_eq!(metric(app.http_addr, r#"pgrelay_config_reloads_total{result="ok"}"#).await, reloads_ok + 2.0);

    load_progresses(&load, 100).await;
    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        bounded("a load client stops", Duration::from_secs(10), client).await.expect("load client task");
    }
    let inserted = load.inserted.lock().expect("inserted").len();
    let count = || cluster.psql_db(primary, "app", "select count(*) from ops_reload_t");
    let rows: usize = tokio::task::block_in_place(count).expect("count rows").trim().parse().expect("a count");
    println!(
        "reload under load: {} transactions through :rw, {} through :ro, {} failed; {inserted} rows inserted, {rows} on the primary",
        load.rw_ok.load(Ordering::Relaxed),
        load.ro_ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    assert!(load.errors.lock().expect("errors").is_empty(), "load errors: {:?}", load.errors.lock().expect("errors"));
    assert!(load.rw_ok.load(Ordering::Relaxed) > 0 && load.ro_ok.load(Ordering::Relaxed) > 0);
    assert_eq!(rows, inserted, "every acknowledged insert is on the primary");
    app.shutdown(Duration::from_secs(5)).await;
}
