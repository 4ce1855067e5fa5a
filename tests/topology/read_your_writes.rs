//! Read-your-writes with a replica whose replay is paused (and so stays in
//! the read set under generous lag limits, but never has the latest write):
//! a write through rw followed by a read through ro with the position
//! (`SHOW pgrelay.commit_lsn` then `SET pgrelay.min_lsn`) or with a shared
//! `pgrelay.causal_id` always sees the write, while reads without either
//! keep going to both replicas. With both replicas paused, such reads fall
//! back to the primary after read_your_writes_wait (or fail under
//! `ro_fallback = "error"`). `pgrelay_reads_routed_total` counts each way.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgrelay::localcluster::{LocalCluster, NodeHandle};
use tokio_postgres::Client;

use crate::common::{self, config, psql, read_set, wait_topology};
use crate::support::connect_string;
use crate::support::relay::{self, message, metric, scalar, sqlstate, tags, Raw};
use bytes::BytesMut;

/// Within a few checks, with slack for a loaded machine.
const FEW_CHECKS: Duration = Duration::from_secs(5);
/// Write-then-read rounds with a replica paused.
const ROUNDS: usize = 1000;
/// Rounds with both replicas paused: each waits read_your_writes_wait.
const FALLBACK_ROUNDS: usize = 3;

/// Lag limits that keep a paused replica in the read set.
const ROUTING: &str = "max_replica_lag_bytes = \"1GB\"\nmax_replica_lag = \"1h\"\nread_your_writes_wait = \"300ms\"";

/// Pauses a replica's WAL replay; resumes it when dropped, also when the test fails.
struct Paused<'a> {
    cluster: &'a LocalCluster,
    node: &'a NodeHandle,
}

impl<'a> Paused<'a> {
    fn new(cluster: &'a LocalCluster, node: &'a NodeHandle) -> Paused<'a> {
        psql(cluster, node, "select pg_wal_replay_pause()");
        Paused { cluster, node }
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let resumed = common::blocking(|| self.cluster.psql_db(self.node, "app", "select pg_wal_replay_resume()"));
        if let Err(e) = resumed {
            eprintln!("resuming replay on {}: {e}", self.node.name);
        }
    }
}

async fn connect_with_options(addr: SocketAddr, options: &str) -> Client {
    let conn = format!("{} options='{options}'", connect_string(addr.port(), "app", "app", "app"));
    relay::connect_with(&conn).await.unwrap_or_else(|e| panic!("connect with {options}: {e}")).client
}

/// `pgrelay_reads_routed_total` of one node and reason (0 when absent).
async fn reads(addr: SocketAddr, node: &str, reason: &str) -> u64 {
    let series = format!("pgrelay_reads_routed_total{{node=\"{node}\",reason=\"{reason}\"}}");
    metric(addr, &series).await.unwrap_or(0.0) as u64
}

/// Whether the row with `id` is visible through `client`.
async fn sees(client: &Client, id: usize) -> bool {
    scalar(client, &format!("select count(*) from ryw where id = {id}")).await == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_with_a_position_or_a_causal_id_see_the_write_before_them() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster_with(&["synchronous_commit = on"]);
    let (pg1, pg2) = (&cluster.replicas()[0], &cluster.replicas()[1]);
    let app = relay::start(config(&cluster, ROUTING, "")).await;
    wait_topology(&app, "both replicas in the read set", FEW_CHECKS, |t| read_set(t) == ["pg1", "pg2"]).await;
    let writer = connect_with_options(app.rw_addr, "-c pgrelay.causal_id=user-1").await;
    writer.batch_execute("create table ryw (id int primary key)").await.expect("create");
    let token_reader = relay::connect(app.ro_addr).await;
    let causal_reader = connect_with_options(app.ro_addr, "-c pgrelay.causal_id=user-1").await;
    let plain_reader = relay::connect(app.ro_addr).await;
    // The table exists everywhere before replay stops.
    // In the extended protocol as in a simple query, each position at or
    // past the one before.
    let mut last = 0;
    for _ in 0..10 {
        let extended: String = writer.query_one("show pgrelay.commit_lsn", &[]).await.expect("extended").get(0);
        let simple = scalar(&writer, "show pgrelay.commit_lsn").await;
        for position in [extended, simple] {
            let lsn = pgrelay::router::parse_lsn(&position).expect("a position");
            assert!(lsn >= last, "{position} went back");
            last = lsn;
        }
    }
    // Opted in: each transaction on rw ends with the position before its ReadyForQuery.
    let (mut raw, _) = Raw::login(app.rw_addr, &[("options", "-c pgrelay.report_commit_lsn=on")]).await;
    let mut query = BytesMut::new();
    pgrelay::wire::put_query(&mut query, "select 1");
    raw.send(&query).await;
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "T D C S Z", "{answer:?}");
    let (_, status) = &answer[3];
    let reported = std::str::from_utf8(status).expect("text").trim_end_matches('\0');
    let (name, value) = reported.split_once('\0').expect("name and value");
    assert_eq!(name, "pgrelay.commit_lsn");
    let before = pgrelay::router::parse_lsn(&scalar(&writer, "show pgrelay.commit_lsn").await).expect("lsn");
    assert!(pgrelay::router::parse_lsn(value).is_some_and(|lsn| lsn <= before), "{value}");
    // Not opted in: nothing more than a server sends.
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    raw.send(&query).await;
    assert_eq!(tags(&raw.until_ready().await), "T D C Z");
    let refused = connect_string(app.rw_addr.port(), "app", "app", "app") + " options='-c pgrelay.colour=blue'";
    let error = relay::connect_with(&refused).await.err().expect("an unknown pgrelay option");
    assert_eq!(sqlstate(&error), "42704", "{}", message(&error));
    // Within a transaction: refused, in order, and never a server setting.
    writer.batch_execute("begin").await.expect("begin");
    let error = writer.batch_execute("set pgrelay.min_lsn = '0/1'").await.expect_err("in a transaction");
    assert_eq!(sqlstate(&error), "0A000", "{}", message(&error));
    writer.batch_execute("rollback").await.expect("rollback");
    let position = scalar(&writer, "show pgrelay.commit_lsn").await;
    token_reader.batch_execute(&format!("set pgrelay.min_lsn = '{position}'")).await.expect("set");
    assert_eq!(scalar(&token_reader, "show pgrelay.min_lsn").await, position);
    scalar(&token_reader, "select count(*) from ryw").await;
    common::wait_for("both replicas replayed the table", FEW_CHECKS, || {
        let replayed = |node| psql(&cluster, node, "select count(*) from pg_class where relname = 'ryw'");
        (replayed(pg1) == "1" && replayed(pg2) == "1").then_some(())
    })
    .await;

    let paused = Paused::new(&cluster, pg1);
    let mut pg1_before = Vec::new();
    for reason in ["read_your_writes_replica", "read_your_writes_wait"] {
        pg1_before.push(reads(app.http_addr, "pg1", reason).await);
    }
    let started = Instant::now();
    let mut misses = Vec::new();
    let mut took = [Duration::ZERO; 3];
    for id in 0..ROUNDS {
        let t0 = Instant::now();
        writer.batch_execute(&format!("insert into ryw values ({id})")).await.expect("insert");
        took[0] += t0.elapsed();
        let t0 = Instant::now();
        // Every other round the token; the causal read then finds the
        // position the token's question sampled, and in the others asks itself.
        if id % 2 == 1 {
            let position = scalar(&writer, "show pgrelay.commit_lsn").await;
            token_reader.batch_execute(&format!("set pgrelay.min_lsn = '{position}'")).await.expect("set");
            if !sees(&token_reader, id).await {
                misses.push(("token", id));
            }
        }
        took[1] += t0.elapsed();
        let t0 = Instant::now();
        if !sees(&causal_reader, id).await {
            misses.push(("causal", id));
        }
        took[2] += t0.elapsed();
    }
    println!("{ROUNDS} write-then-read rounds with pg1 paused took {:?} {took:?}", started.elapsed());
    assert_eq!(misses, [], "reads that did not see the write before them");

    // Reads without a position still go to both replicas, the paused one included.
    let (ryw_wait, pg1_replica, pg2_replica) = (
        reads(app.http_addr, "pg2", "read_your_writes_wait").await,
        reads(app.http_addr, "pg1", "replica").await,
        reads(app.http_addr, "pg2", "replica").await,
    );
    let seen = common::read_ports(app.ro_addr, 10).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), common::ports(&[pg1, pg2]), "{seen:?}");
    let plain = scalar(&plain_reader, "select count(*) from ryw").await;
    println!("a read without a position through ro counts {plain} of {ROUNDS} rows");
    assert_eq!(
        reads(app.http_addr, "pg1", "replica").await + reads(app.http_addr, "pg2", "replica").await,
        pg1_replica + pg2_replica + 11,
        "each plain read counted once"
    );
    // The paused replica served no read that had a position to see.
    for (reason, before) in ["read_your_writes_replica", "read_your_writes_wait"].into_iter().zip(pg1_before) {
        assert_eq!(reads(app.http_addr, "pg1", reason).await, before, "{reason} on the paused replica");
    }
    let ryw_reads: u64 = {
        let mut total = 0;
        for node in ["pg0", "pg1", "pg2"] {
            for reason in ["read_your_writes_replica", "read_your_writes_wait", "read_your_writes_primary"] {
                let n = reads(app.http_addr, node, reason).await;
                println!("{node} {reason}: {n}");
                total += n;
            }
        }
        total
    };
    // The table check above, then one token read every other round and a causal read every round.
    assert_eq!(ryw_reads, 1 + (ROUNDS / 2 + ROUNDS) as u64, "each read with a position counted once");
    assert!(ryw_wait > 0, "no read waited for pg2 to catch up");
    println!("reads that waited for pg2: {ryw_wait}");

    // Both paused: nothing replays the next writes, so reads fall back to the primary after the wait.
    let paused_too = Paused::new(&cluster, pg2);
    let before = reads(app.http_addr, "pg0", "read_your_writes_primary").await;
    for id in ROUNDS..ROUNDS + FALLBACK_ROUNDS {
        writer.batch_execute(&format!("insert into ryw values ({id})")).await.expect("insert");
        let asked = Instant::now();
        assert!(sees(&causal_reader, id).await, "causal read {id} with both replicas paused");
        assert!(asked.elapsed() >= Duration::from_millis(300), "fell back before read_your_writes_wait");
    }
    let after = reads(app.http_addr, "pg0", "read_your_writes_primary").await;
    assert_eq!(after - before, FALLBACK_ROUNDS as u64, "reads that fell back to the primary");
    // A read without a position still goes to a (stale) replica.
    let port: u16 = scalar(&plain_reader, "select inet_server_port()").await.parse().expect("port");
    assert!([pg1.port, pg2.port].contains(&port), "plain read on {port}");

    // Under ro_fallback = "error" the same read is refused instead.
    let strict_routing = format!("{ROUTING}\nro_fallback = \"error\"");
    let strict = relay::start(config(&cluster, &strict_routing, "")).await;
    wait_topology(&strict, "both replicas in the read set", FEW_CHECKS, |t| read_set(t) == ["pg1", "pg2"]).await;
    let strict_writer = connect_with_options(strict.rw_addr, "-c pgrelay.causal_id=user-2").await;
    let strict_reader = connect_with_options(strict.ro_addr, "-c pgrelay.causal_id=user-2").await;
    strict_writer
        .batch_execute(&format!("insert into ryw values ({})", ROUNDS + FALLBACK_ROUNDS))
        .await
        .expect("insert");
    let error = strict_reader.simple_query("select 1").await.expect_err("no replica replays the write");
    assert_eq!(sqlstate(&error), "08006", "{}", message(&error));
    assert!(message(&error).contains("read_your_writes_wait"), "{}", message(&error));
    drop((paused, paused_too));
    tokio::join!(app.shutdown(Duration::from_secs(5)), strict.shutdown(Duration::from_secs(5)));
}
