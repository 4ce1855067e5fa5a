//! Client connections that outlive the loss of their server: the primary
//! killed (`pg_ctl -m immediate`) and a replica promoted, or a backend
//! terminated by the server. Each client keeps its pgrelay connection and
//! hears the truth about its transaction: 40001 when nothing in flight
//! could have committed, 08007 when a COMMIT or an autocommit statement
//! was in flight; a client pinned by session state is closed as before.
//! The in-flight windows are held open on purpose (a `pg_sleep`, a COMMIT
//! waiting for a synchronous standby that does not exist) and observed in
//! pg_stat_activity before the server is lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgrelay::localcluster::{LocalCluster, NodeHandle, StopMode};
use tokio_postgres::Client;

use crate::common::{self, blocking, config, psql, read_set, wait_topology};
use crate::support::relay::{self, msg, scalar, sqlstate, tags, Raw};

const IN_FLIGHT: Duration = Duration::from_secs(15);

/// Waits until `n` statements of user `user` on `node` are running (or a
/// COMMIT waits for its synchronous standby) whose text matches `like`.
async fn wait_running(cluster: &LocalCluster, node: &NodeHandle, user: &str, like: &str, n: usize) {
    let sql = format!(
        "select count(*) from pg_stat_activity where usename = '{user}' and state = 'active' and query ilike '{like}'"
    );
    common::wait_for(&format!("{n} statements like {like} running"), IN_FLIGHT, || {
        let count: usize = psql(cluster, node, &sql).trim().parse().expect("a count");
        (count >= n).then_some(())
    })
    .await;
}

async fn port_of(client: &Client) -> u16 {
    scalar(client, "select inet_server_port()").await.parse().expect("a port")
}

/// Runs `sql` (one statement, extended protocol) on a shared client in the background.
fn in_background(client: &Arc<Client>, sql: &'static str) -> tokio::task::JoinHandle<Result<(), String>> {
    let client = client.clone();
    tokio::spawn(async move {
        match sql.starts_with("commit") {
            true => client.simple_query(sql).await.map(drop),
            false => client.query(sql, &[]).await.map(drop),
        }
        .map_err(|e| sqlstate(&e))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_outlive_an_unplanned_failover() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let (pg0, pg1) = (cluster.primary(), &cluster.replicas()[0]);
    psql(&cluster, pg0, "create table survive_t (id int primary key, v int); grant all on survive_t to public");
    psql(&cluster, pg0, "insert into survive_t values (1, 0), (2, 0), (3, 0)");
    // A COMMIT with synchronous_commit = on waits for this standby, which never comes.
    psql(&cluster, pg0, "alter system set synchronous_standby_names = 'nobody'");
    psql(&cluster, pg0, "select pg_reload_conf()");
    // Every commit of a transaction that wrote waits for it (new sessions: before pgrelay connects).
    psql(&cluster, pg0, "alter role app set synchronous_commit = on");
    let mut settings = config(&cluster, "", "query_wait_timeout = \"15s\"");
    // Six clients hold a server connection at once.
    settings.pool.default_pool_size = std::num::NonZeroUsize::new(8).expect("8");
    let app = relay::start(settings).await;
    wait_topology(&app, "primary and both replicas", Duration::from_secs(5), |t| {
        t.primary == Some(0) && read_set(t) == ["pg1", "pg2"]
    })
    .await;
    let rw = app.rw_addr;

    let connect = || async { Arc::new(relay::connect(rw).await) };
    let (mid, committing, autocommit, idle, idle_in_block, pinned) =
        (connect().await, connect().await, connect().await, connect().await, connect().await, connect().await);
    let implicit_commit = connect().await;
    assert_eq!(port_of(&idle).await, pg0.port);
    // A statement in flight in a block.
    mid.batch_execute("begin; update survive_t set v = v + 1 where id = 1").await.expect("begin");
    let mid_sleep = in_background(&mid, "select pg_sleep(60)");
    // A COMMIT in flight, held by the missing synchronous standby.
    committing
        .batch_execute("begin; set local synchronous_commit = on; update survive_t set v = v + 1 where id = 2")
        .await
        .expect("begin");
    let commit = in_background(&committing, "commit");
    // An autocommit statement in flight.
    let auto_sleep = in_background(&autocommit, "select pg_sleep(61)");
    // An autocommit insert in extended protocol whose implicit commit, at
    // its Sync, waits: the Execute may be answered, the commit is in flight.
    let insert = in_background(&implicit_commit, "insert into survive_t values (4, 0)");
    // A block open with nothing in flight.
    idle_in_block.batch_execute("begin; update survive_t set v = v + 1 where id = 3").await.expect("begin");
    // Pinned by a session setting.
    pinned.batch_execute("select set_config('application_name', 'pinned', false)").await.expect("set");
    assert_eq!(port_of(&pinned).await, pg0.port);

    wait_running(&cluster, pg0, "app", "select pg_sleep(6%", 2).await;
    wait_running(&cluster, pg0, "app", "commit", 1).await;
    wait_running(&cluster, pg0, "app", "insert into survive_t values (4%", 1).await;
    blocking(|| cluster.stop(pg0, StopMode::Immediate)).expect("kill the primary");

    // Each in-flight request is answered at once, before any new primary exists.
    let answered = |task| common::bounded("an answer to the request in flight", Duration::from_secs(5), task);
    assert_eq!(answered(mid_sleep).await.expect("task"), Err("40001".to_owned()), "in a block");
    assert_eq!(answered(commit).await.expect("task"), Err("08007".to_owned()), "COMMIT in flight");
    assert_eq!(answered(auto_sleep).await.expect("task"), Err("08007".to_owned()), "autocommit in flight");
    assert_eq!(answered(insert).await.expect("task"), Err("08007".to_owned()), "implicit commit at the Sync");

    // Until its ROLLBACK the client is in a failed block, answered by pgrelay.
    let refused = mid.simple_query("select 1").await.expect_err("refused in the failed block");
    assert_eq!(sqlstate(&refused), "25P02");
    mid.batch_execute("rollback").await.expect("the ROLLBACK is answered without a server");

    blocking(|| cluster.promote(pg1)).expect("promote pg1");
    // The same connection objects carry on, on the new primary.
    let next = |client: Arc<Client>| async move {
        common::bounded("a transaction on the new primary", Duration::from_secs(20), port_of(&client)).await
    };
    assert_eq!(next(mid.clone()).await, pg1.port, "after its ROLLBACK");
    assert_eq!(next(committing.clone()).await, pg1.port, "after the unknown COMMIT");
    assert_eq!(next(autocommit.clone()).await, pg1.port, "after the unknown autocommit statement");
    assert_eq!(next(idle.clone()).await, pg1.port, "idle: no error at all");
    assert_eq!(next(implicit_commit.clone()).await, pg1.port, "after the unknown implicit commit");
    // The block lost while idle: its next statement hears of the loss.
    let lost = idle_in_block.simple_query("select 1").await.expect_err("the lost block");
    assert_eq!(sqlstate(&lost), "40001", "{}", relay::message(&lost));
    idle_in_block.batch_execute("rollback").await.expect("rollback");
    assert_eq!(next(idle_in_block.clone()).await, pg1.port);
    // A transaction in a block commits on the new primary.
    mid.batch_execute("begin; update survive_t set v = v + 10 where id = 1; commit").await.expect("a new block");
    assert_eq!(scalar(&mid, "select v from survive_t where id = 1").await, "10", "the lost update never committed");

    // The pinned client's session state died with pg0: its connection ends.
    let gone = pinned.simple_query("select 1").await.expect_err("the pinned client is closed");
    assert!(pinned.is_closed(), "{gone}");
    app.shutdown(Duration::from_secs(5)).await;
}

/// Pipelined requests behind one that a terminated backend never answered:
/// each gets the answer a server gives in a failed block, in order, and
/// another client of the same pool sees only its own answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_at_a_lost_server_get_their_own_answers_in_order() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let pg0 = cluster.primary();
    let app = relay::start(config(&cluster, "", "")).await;
    let rw: SocketAddr = app.rw_addr;
    let other = relay::connect(rw).await;
    assert_eq!(scalar(&other, "select 'other'").await, "other");

    let (mut raw, _) = Raw::login(rw, &[]).await;
    let mut out = BytesMut::new();
    pgrelay::wire::put_query(&mut out, "begin");
    msg::parse(&mut out, "", "select pg_sleep(60)");
    msg::bind_execute(&mut out, "");
    pgrelay::wire::put_sync(&mut out);
    msg::parse(&mut out, "", "select 2");
    msg::bind_execute(&mut out, "");
    pgrelay::wire::put_sync(&mut out);
    pgrelay::wire::put_query(&mut out, "rollback");
    raw.send(&out).await;
    let begun = raw.until_ready().await;
    assert_eq!(tags(&begun), "C Z");
    wait_running(&cluster, pg0, "app_trust", "select pg_sleep(60)", 1).await;
    let terminated = psql(
        &cluster,
        pg0,
        "select pg_terminate_backend(pid) from pg_stat_activity where query = 'select pg_sleep(60)'",
    );
    assert_eq!(terminated.trim(), "t");

    // The batch in flight: its error (the Parse and Bind answers may or may
    // not have left the server before it went), then ReadyForQuery 'E'.
    let first = raw.until_ready().await;
    let first_tags = tags(&first);
    let last_error = first.iter().rev().find(|(t, _)| *t == b'E').map(|(_, body)| relay::error_fields(body));
    assert!(first_tags.ends_with("E Z"), "{first_tags}: {last_error:?}");
    let (code, message) = relay::error_fields(&first[first.len() - 2].1);
    assert_eq!(code, "40001", "{message}");
    assert_eq!(&first[first.len() - 1].1[..], b"E");
    // The next batch: refused as in any failed block.
    let second = raw.until_ready().await;
    assert_eq!(tags(&second), "E Z");
    assert_eq!(relay::error_fields(&second[0].1).0, "25P02");
    // The pipelined ROLLBACK ends the block.
    let third = raw.until_ready().await;
    assert_eq!(tags(&third), "C Z");
    assert_eq!(&third[1].1[..], b"I");

    // The client carries on with a new server connection; the other client
    // never saw anything of it.
    let mut out = BytesMut::new();
    pgrelay::wire::put_query(&mut out, "select 3");
    raw.send(&out).await;
    let fourth = raw.until_ready().await;
    assert_eq!(tags(&fourth), "T D C Z");
    assert_eq!(scalar(&other, "select 'other'").await, "other");
    app.shutdown(Duration::from_secs(5)).await;
}

/// pgbench, its clients as pgbench runs them, on the process's PATH.
fn pgbench(port: u16, args: &[&str]) -> std::process::Output {
    std::process::Command::new("pgbench")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([("PGHOST", "127.0.0.1"), ("PGUSER", "app"), ("PGPASSWORD", "app"), ("PGDATABASE", "app")])
        .env("PGPORT", port.to_string())
        .env("PGSSLMODE", "disable")
        .args(args)
        .output()
        .expect("pgbench runs")
}

/// Kills the primary `dead` (`pg_ctl -m immediate`), promotes `next`, and
/// waits until pgrelay routes writes to it.
async fn fail_over(cluster: &LocalCluster, app: &pgrelay::RunningApp, dead: &NodeHandle, next: (usize, &NodeHandle)) {
    blocking(|| cluster.stop(dead, StopMode::Immediate)).expect("kill the primary");
    blocking(|| cluster.promote(next.1)).expect("promote");
    wait_topology(app, "pgrelay routes to the promoted node", Duration::from_secs(10), |t| t.primary == Some(next.0))
        .await;
}

/// pgbench (tpcb-like, `--max-tries`) through :5432 across two unplanned
/// failovers. A client whose transaction could not have committed gets
/// 40001 and retries; one whose COMMIT (END) was in flight gets 08007,
/// which pgbench 15 does not retry: it aborts that client. Every abort must
/// be such an 08007, and pgbench must go on writing on the last primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_carries_on_across_repeated_unplanned_failovers() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let (pg0, pg1, pg2) = (cluster.primary(), &cluster.replicas()[0], &cluster.replicas()[1]);
    let app = relay::start(config(&cluster, "", "query_wait_timeout = \"15s\"")).await;
    wait_topology(&app, "primary and both replicas", Duration::from_secs(5), |t| {
        t.primary == Some(0) && read_set(t) == ["pg1", "pg2"]
    })
    .await;
    let rw = app.rw_addr.port();
    let init = blocking(|| pgbench(rw, &["-i", "-s", "1", "-q"]));
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    psql(&cluster, pg0, "checkpoint");

    let run = tokio::task::spawn_blocking(move || {
        pgbench(rw, &["-n", "-c", "4", "-j", "1", "-T", "16", "--max-tries=0", "--verbose-errors", "-r"])
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    fail_over(&cluster, &app, pg0, (1, pg1)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    fail_over(&cluster, &app, pg1, (2, pg2)).await;
    let last_promoted = psql(&cluster, pg2, "select now()");
    let output = common::bounded("pgbench ends", Duration::from_secs(60), run).await.expect("pgbench");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));

    let aborted: Vec<&str> = stderr.lines().filter(|l| l.contains("aborted in command")).collect();
    let unknown = aborted.iter().filter(|l| l.contains("whether it committed is unknown")).count();
    let retried_lost =
        stderr.lines().filter(|l| l.contains("the transaction was rolled back and may be retried")).count();
    let written_after =
        psql(&cluster, pg2, &format!("select count(*) from pgbench_history where mtime > '{}'", last_promoted.trim()));
    println!(
        "pgbench across 2 unplanned failovers: {retried_lost} transactions answered 40001 and retried, \
         {unknown} answered 08007 (COMMIT in flight), {} clients aborted; {} transactions written on the \
         last primary after its promotion\n{stdout}\n{}",
        aborted.len(),
        written_after.trim(),
        stderr.lines().filter(|l| !l.contains("may be retried")).collect::<Vec<_>>().join("\n"),
    );
    assert!(retried_lost >= 1, "a failover caught no transaction in flight:\n{stderr}");
    // Each abort is a client told that its COMMIT's fate is unknown, none anything else.
    assert_eq!(aborted.len(), unknown, "{stderr}");
    assert!(aborted.len() < 4, "every client aborted:\n{stdout}\n{stderr}");
    assert!(written_after.trim().parse::<u64>().expect("a count") > 0, "no write after the last promotion");
    app.shutdown(Duration::from_secs(5)).await;
}
