//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES and the matching Prometheus
//! metrics after workloads whose counts the test knows and whose times it
//! measures itself: counts exact, times within 10 % (pgrelay's interval lies
//! within the client's, so its figure is at most the client's).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgrelay::config::Config;
use pgrelay::localcluster::{APP_PASSWORD, APP_USER};
use pgrelay::RunningApp;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::http::get;
use crate::support::relay::{self, msg, Raw};
use crate::support::{cluster, connect_string};

/// SHOW STATS_TOTALS / STATS_AVERAGES columns after `database`.
const FIGURES: [&str; 7] =
    ["xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time"];

async fn start(pool_extra: &str, stats_period: &str) -> RunningApp {
    let admin = format!("\n[admin]\nadmin_users = [\"app\"]\nstats_period = \"{stats_period}\"\n");
    let toml = relay::config_toml(cluster(), pool_extra, "") + &admin;
    relay::start(Config::parse(&toml).expect("valid config")).await
}

async fn console(app: &RunningApp) -> Client {
    let conn_str = connect_string(app.rw_addr.port(), APP_USER, APP_PASSWORD, "pgbouncer");
    relay::connect_with(&conn_str).await.expect("admin console login").client
}

/// One row of a SHOW command as column name -> number, for `database`.
async fn row(console: &Client, command: &str, database: &str) -> Vec<(String, u64)> {
    let messages = console.simple_query(command).await.unwrap_or_else(|e| panic!("{command}: {e}"));
    let mut columns = Vec::new();
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(description) => {
                columns = description.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) if row.get(0) == Some(database) => {
                let value = |i: usize| row.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{command}"));
                return columns.iter().enumerate().skip(1).map(|(i, name)| (name.clone(), value(i))).collect();
            }
            _ => {}
        }
    }
    columns.iter().skip(1).map(|name| (name.clone(), 0)).collect()
}

/// SHOW STATS_TOTALS for `database`, checked against SHOW STATS' total_*
/// columns. A client's bytes are counted once its socket took them, which
/// with two workers may be just after the client read them: the two are
/// read again (bounded) until no such count lands between them.
async fn totals(console: &Client, database: &str) -> [u64; 7] {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let parts = row(console, "SHOW STATS_TOTALS", database).await;
        let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, FIGURES);
        let stats = row(console, "SHOW STATS", database).await;
        let from_stats: Vec<u64> = stats[..7].iter().map(|(_, v)| *v).collect();
        let figures: Vec<u64> = parts.iter().map(|(_, v)| *v).collect();
        if figures == from_stats || Instant::now() > deadline {
            assert_eq!(figures, from_stats, "SHOW STATS' totals are SHOW STATS_TOTALS");
            return figures.try_into().expect("seven figures");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn delta(after: &[u64; 7], before: &[u64; 7], name: &str) -> u64 {
    let i = FIGURES.iter().position(|n| *n == name).expect("a figure");
    after[i] - before[i]
}

/// Asserts pgrelay's figure (microseconds) is within 10 % below what the client measured.
fn assert_within(what: &str, pgrelay_us: u64, measured: Duration) {
    let measured_us = measured.as_micros() as f64;
    let got = pgrelay_us as f64;
    assert!(
        got <= measured_us + 1_000.0 && got >= 0.9 * measured_us,
        "{what}: pgrelay says {pgrelay_us} µs, the client measured {measured_us} µs"
    );
}

async fn timed(client: &Client, sql: &str) -> Duration {
    let started = Instant::now();
    client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    started.elapsed()
}

async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
}

/// A sample's value (a histogram: its count, or the count of bucket `le`).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)], le: Option<f64>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => match le {
                Some(le) => buckets.iter().find(|b| (b.less_than - le).abs() < 1e-9).map_or(0.0, |b| b.count),
                None => buckets.last().map_or(0.0, |b| b.count),
            },
            _ => 0.0,
        })
        .sum()
}

fn copy_data(buf: &mut BytesMut, rows: &[u8]) {
    buf.extend_from_slice(b"d");
    buf.extend_from_slice(&(rows.len() as u32 + 4).to_be_bytes());
    buf.extend_from_slice(rows);
}

/// A simple Query message's size on the wire.
fn query_bytes(sql: &str) -> u64 {
    5 + sql.len() as u64 + 1
}

#[tokio::test]
async fn totals_count_and_time_simple_extended_and_pipelined_queries() {
    let app = start("", "60s").await;
    let console = console(&app).await;
    let client = relay::connect(app.rw_addr).await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    // Before the counted part: the server connections' logins (waits) and the prepare.
    client.simple_query("select 1").await.expect("warm up");
    let mut warm_up = BytesMut::new();
    pgrelay::wire::put_query(&mut warm_up, "select 1");
    raw.send(&warm_up).await;
    raw.until_ready().await;
    client
        .simple_query("create table if not exists stats_copy (x int); grant all on stats_copy to public")
        .await
        .expect("a table to COPY into");
    let prepared = client.prepare("select pg_sleep(0.06)").await.expect("prepare");
    let before = totals(&console, "app").await;
    let scrape_before = scrape(app.http_addr).await;

    // What the client measured: each query's and transaction's round
    // trips, and the bytes of the messages it sent.
    let mut query_time = Duration::ZERO;
    let mut xact_time = Duration::ZERO;
    let mut received = 0;
    // Ten autocommit queries of 100 ms (long enough that what the client
    // measures beyond pgrelay's interval, a fraction of a millisecond per
    // query here and a few under a loaded machine, stays well within 10 %).
    for _ in 0..10 {
        let took = timed(&client, "select pg_sleep(0.1)").await;
        query_time += took;
        xact_time += took;
        received += query_bytes("select pg_sleep(0.1)");
    }
    // Five transactions of three queries each.
    for _ in 0..5 {
        let started = Instant::now();
        for sql in ["begin", "select pg_sleep(0.04)", "commit"] {
            query_time += timed(&client, sql).await;
            received += query_bytes(sql);
        }
        xact_time += started.elapsed();
    }
    // Five executions of a prepared statement: Bind, Execute, Sync each.
    const EXECUTIONS: u64 = 5;
    for _ in 0..EXECUTIONS {
        let started = Instant::now();
        client.query(&prepared, &[]).await.expect("prepared query");
        query_time += started.elapsed();
        xact_time += started.elapsed();
    }
    // One simple query of two statements: one query, one (implicit) transaction.
    let two = "select pg_sleep(0.02); select pg_sleep(0.02)";
    let took = timed(&client, two).await;
    query_time += took;
    xact_time += took;
    received += query_bytes(two);
    // Three extended-protocol batches pipelined in one write (another user,
    // the same database): in flight together, they are one query, as in PgBouncer.
    let mut batches = BytesMut::new();
    for _ in 0..3 {
        msg::parse(&mut batches, "", "select pg_sleep(0.04)");
        msg::bind_execute(&mut batches, "");
        pgrelay::wire::put_sync(&mut batches);
    }
    let started = Instant::now();
    raw.send(&batches).await;
    for _ in 0..3 {
        let answers = raw.until_ready().await;
        assert_eq!(relay::tags(&answers), "1 2 D C Z");
    }
    query_time += started.elapsed();
    xact_time += started.elapsed();
    received += batches.len() as u64;
    // A COPY FROM STDIN with a Sync pipelined behind it, which the server
    // ignores (it is in COPY): one query, ended by the COPY's ReadyForQuery.
    let mut copy = BytesMut::new();
    pgrelay::wire::put_query(&mut copy, "copy stats_copy from stdin");
    pgrelay::wire::put_sync(&mut copy);
    let started = Instant::now();
    raw.send(&copy).await;
    assert_eq!(raw.recv().await.map(|(tag, _)| tag), Some(b'G'), "CopyInResponse");
    let mut data = BytesMut::new();
    copy_data(&mut data, b"1\n2\n3\n");
    data.extend_from_slice(b"c\0\0\0\x04"); // CopyDone
    raw.send(&data).await;
    assert_eq!(relay::tags(&raw.until_ready().await), "C Z");
    query_time += started.elapsed();
    xact_time += started.elapsed();
    received += (copy.len() + data.len()) as u64;

    let after = totals(&console, "app").await;
    let scrape_after = scrape(app.http_addr).await;
    assert_eq!(delta(&after, &before, "xact_count"), 10 + 5 + 5 + 1 + 1 + 1);
    assert_eq!(delta(&after, &before, "query_count"), 10 + 15 + 5 + 1 + 1 + 1);
    assert_within("total_query_time", delta(&after, &before, "query_time"), query_time);
    assert_within("total_xact_time", delta(&after, &before, "xact_time"), xact_time);
    assert_eq!(delta(&after, &before, "wait_time"), 0, "a free connection each time");
    let bytes = delta(&after, &before, "bytes_received");
    // Bind, Execute and Sync of tokio-postgres' statement: a few dozen bytes each time.
    assert!(bytes >= received + EXECUTIONS * 20 && bytes <= received + EXECUTIONS * 80, "{bytes}");
    assert!(delta(&after, &before, "bytes_sent") > 0);

    // The Prometheus metrics, per pool, moved by as much.
    let app_pool = [("node", "pg0"), ("database", "app"), ("user", "app")];
    let trust_pool = [("node", "pg0"), ("database", "app"), ("user", "app_trust")];
    let moved = |name: &str, labels: &[(&str, &str)], le: Option<f64>| {
        sample(&scrape_after, name, labels, le) - sample(&scrape_before, name, labels, le)
    };
    assert_eq!(moved("pgrelay_queries_total", &app_pool, None), 31.0);
    assert_eq!(moved("pgrelay_queries_total", &trust_pool, None), 2.0);
    assert_eq!(moved("pgrelay_transactions_total", &app_pool, None), 21.0);
    assert_eq!(moved("pgrelay_query_duration_seconds", &app_pool, None), 31.0);
    assert_eq!(moved("pgrelay_transaction_duration_seconds_count", &trust_pool, None), 2.0);
    assert_eq!(moved("pgrelay_checkout_wait_seconds_count", &app_pool, None), 21.0, "one per connection assigned");
    // The ten 100 ms queries and the five 60 ms executions are above the 50 ms bucket.
    assert!(moved("pgrelay_query_duration_seconds", &app_pool, Some(0.05)) <= 16.0);
    let seconds = |name: &str| moved(name, &app_pool, None) + moved(name, &trust_pool, None);
    let query_seconds = seconds("pgrelay_query_duration_seconds_sum");
    assert!((query_seconds * 1e6 - delta(&after, &before, "query_time") as f64).abs() < 2.0, "{query_seconds}");
    let xact_seconds = seconds("pgrelay_transaction_duration_seconds_sum");
    assert!((xact_seconds * 1e6 - delta(&after, &before, "xact_time") as f64).abs() < 2.0, "{xact_seconds}");
    let labels = [("database", "app"), ("user", "app")];
    let received_metric = sample(&scrape_after, "pgrelay_client_bytes_received_total", &labels, None)
        - sample(&scrape_before, "pgrelay_client_bytes_received_total", &labels, None);
    let raw_bytes = (batches.len() + copy.len() + data.len()) as u64;
    assert_eq!(received_metric as u64, bytes - raw_bytes, "the app user's share of bytes_received");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn session_mode_counts_transactions_not_connection_assignments() {
    let app = start("mode = \"session\"", "60s").await;
    let console = console(&app).await;
    let client = relay::connect(app.rw_addr).await;
    client.simple_query("select 1").await.expect("warm up");
    let before = totals(&console, "app").await;
    let scrape_before = scrape(app.http_addr).await;
    let mut xact_time = Duration::ZERO;
    for _ in 0..3 {
        xact_time += timed(&client, "select pg_sleep(0.05)").await;
    }
    // Idle time between transactions is in none of them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    timed(&client, "begin").await;
    timed(&client, "select pg_sleep(0.05)").await;
    timed(&client, "commit").await;
    xact_time += started.elapsed();
    let after = totals(&console, "app").await;
    let scrape_after = scrape(app.http_addr).await;
    assert_eq!(delta(&after, &before, "xact_count"), 4);
    assert_eq!(delta(&after, &before, "query_count"), 6);
    assert_within("total_xact_time", delta(&after, &before, "xact_time"), xact_time);
    let pool = [("node", "pg0"), ("database", "app"), ("user", "app")];
    let moved = |name: &str| sample(&scrape_after, name, &pool, None) - sample(&scrape_before, name, &pool, None);
    assert_eq!(moved("pgrelay_transactions_total"), 4.0);
    assert_eq!(moved("pgrelay_checkout_wait_seconds_count"), 0.0, "the session kept its connection");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn wait_time_is_the_time_a_client_waited_for_a_server_connection() {
    let app = start("default_pool_size = 1", "60s").await;
    let console = console(&app).await;
    let holder = relay::connect(app.rw_addr).await;
    let waiter = relay::connect(app.rw_addr).await;
    holder.simple_query("select 1").await.expect("warm up");
    let before = totals(&console, "app").await;
    let scrape_before = scrape(app.http_addr).await;

    let started = Instant::now();
    holder.simple_query("begin; select 1").await.expect("open transaction");
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        waiter.simple_query("select 1").await.expect("query after the wait");
        started.elapsed()
    });
    // The waiter queues for the only server connection meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.simple_query("commit").await.expect("commit");
    let holder_span = started.elapsed();
    let waited = waiting.await.expect("waiter");
    assert!(waited >= Duration::from_millis(250), "the waiter waited: {waited:?}");

    let after = totals(&console, "app").await;
    let scrape_after = scrape(app.http_addr).await;
    assert_eq!(delta(&after, &before, "xact_count"), 2);
    assert_eq!(delta(&after, &before, "query_count"), 3);
    // The waiter's whole round trip was its wait, but for a select 1.
    assert_within("total_wait_time", delta(&after, &before, "wait_time"), waited);
    // Its transaction (and query) include the wait, as in PgBouncer.
    assert_within("total_xact_time", delta(&after, &before, "xact_time"), holder_span + waited);
    let pool = [("node", "pg0"), ("database", "app"), ("user", "app")];
    let moved = |name: &str| sample(&scrape_after, name, &pool, None) - sample(&scrape_before, name, &pool, None);
    assert_eq!(moved("pgrelay_checkout_wait_seconds_count"), 2.0);
    let wait_seconds = moved("pgrelay_checkout_wait_seconds_sum");
    assert!((wait_seconds * 1e6 - delta(&after, &before, "wait_time") as f64).abs() < 2.0, "{wait_seconds}");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn averages_are_those_of_the_last_completed_stats_period() {
    const PERIOD: Duration = Duration::from_millis(1000);
    const SQL: &str = "select pg_sleep(0.05)";
    let app = start("", "1s").await;
    let console = console(&app).await;
    let client = relay::connect(app.rw_addr).await;
    client.simple_query("select 1").await.expect("warm up");

    // A steady load of 50 ms queries, each timed, while the periods pass.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut times = Vec::new();
            while !stop.load(Ordering::Relaxed) && times.len() < 10_000 {
                times.push(timed(&client, SQL).await);
            }
            times
        }
    });
    let started = Instant::now();
    // Two periods and a bit: the last completed one lies within the load.
    tokio::time::sleep(PERIOD * 2 + PERIOD / 4).await;
    let averages = row(&console, "SHOW STATS_AVERAGES", "app").await;
    let stats = row(&console, "SHOW STATS", "app").await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let times = load.await.expect("load");
    let names: Vec<&str> = averages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, FIGURES);
    let avg: Vec<u64> = averages.iter().map(|(_, v)| *v).collect();
    let from_stats: Vec<u64> = stats[7..].iter().map(|(_, v)| *v).collect();
    assert_eq!(avg, from_stats, "SHOW STATS' avg_* columns are SHOW STATS_AVERAGES");

    let measured_rate = times.len() as f64 / elapsed.as_secs_f64();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    let [xacts, queries, received, sent, xact_time, query_time, wait_time] = avg[..] else { unreachable!() };
    assert!(
        (xacts as f64 - measured_rate).abs() <= 0.2 * measured_rate + 1.0,
        "{xacts} transactions/s against {measured_rate:.1} measured"
    );
    assert_eq!(queries, xacts, "one query per transaction");
    let per_query = query_bytes(SQL);
    assert!(
        received >= per_query * xacts.saturating_sub(1) && received <= per_query * (xacts + 2),
        "{received} bytes/s received for {xacts} queries/s of {per_query} bytes"
    );
    assert!(sent > received, "rows and more go back: {sent} bytes/s");
    assert_within("avg_query_time", query_time, mean);
    assert_eq!(xact_time, query_time, "each transaction is its query");
    assert_eq!(wait_time, 0, "a free connection each time");

    // Once a whole period passed without traffic, the averages are zero;
    // the totals stay.
    let mut idle_averages = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(PERIOD / 5).await;
        idle_averages = row(&console, "SHOW STATS_AVERAGES", "app").await;
        if idle_averages.iter().all(|(_, v)| *v == 0) {
            break;
        }
    }
    assert!(idle_averages.iter().all(|(_, v)| *v == 0), "{idle_averages:?}");
    let totals = totals(&console, "app").await;
    assert!(totals[0] > times.len() as u64, "{totals:?}");
    app.shutdown(Duration::from_secs(5)).await;
}

/// What pgbouncer_exporter reads besides the statistics: SHOW LISTS counts a
/// connection still logging in, and SHOW CONFIG has PgBouncer's key names.
#[tokio::test]
async fn lists_and_config_answer_pgbouncer_exporter() {
    let app = start("", "60s").await;
    let console = console(&app).await;
    let list = |name: &'static str| {
        let console = &console;
        async move {
            let rows = console.simple_query("SHOW LISTS").await.expect("SHOW LISTS");
            rows.iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(row) if row.get(0) == Some(name) => row.get(1).map(str::to_owned),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("SHOW LISTS has no {name}"))
        }
    };
    assert_eq!(list("login_clients").await, "0");
    // A connection that says nothing is still logging in until client_login_timeout.
    let silent = tokio::net::TcpStream::connect(app.rw_addr).await.expect("connect");
    let mut logging_in = String::new();
    for _ in 0..50 {
        logging_in = list("login_clients").await;
        if logging_in == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(logging_in, "1");
    drop(silent);
    let rows = console.simple_query("SHOW CONFIG").await.expect("SHOW CONFIG");
    let value = |key: &str| {
        rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) if row.get(0) == Some(key) => row.get(1).map(str::to_owned),
            _ => None,
        })
    };
    assert_eq!(value("max_client_conn").as_deref(), Some("1000"));
    assert_eq!(value("pool.max_client_conn").as_deref(), Some("1000"));
    assert_eq!(value("stats_period").as_deref(), Some("60"));
    assert_eq!(value("default_pool_size").as_deref(), Some("4"));
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn reload_shortens_the_stats_period_without_dropping_anyone() {
    let text = |period: &str| {
        relay::config_toml(cluster(), "", "")
            + &format!("\n[admin]\nadmin_users = [\"app\"]\nstats_period = \"{period}\"\n")
    };
    let file = relay::TempConfig::new(&text("1h"));
    let app = pgrelay::App::start_from(&file.0).await.expect("pgrelay starts from a file");
    let console = console(&app).await;
    let client = relay::connect(app.rw_addr).await;
    for _ in 0..20 {
        client.simple_query("select 1").await.expect("query");
    }
    let xacts_per_second = |row: Vec<(String, u64)>| row[0].1;
    assert_eq!(xacts_per_second(row(&console, "SHOW STATS_AVERAGES", "app").await), 0, "no period has ended");
    file.write(&text("1s"));
    console.simple_query("RELOAD").await.expect("RELOAD");
    // The hour-long period ends within a second or two of the reload.
    let started = Instant::now();
    let mut averaged = 0;
    while averaged == 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        averaged = xacts_per_second(row(&console, "SHOW STATS_AVERAGES", "app").await);
    }
    assert!(averaged > 0, "the period ended after the reload");
    assert_eq!(relay::scalar(&client, "select 40 + 2").await, "42", "the client stayed");
    app.shutdown(Duration::from_secs(5)).await;
}
