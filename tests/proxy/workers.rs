//! `[pool] workers = 2`: sessions run on two threads, server connections
//! are pooled for the whole process. An idle connection on one worker
//! serves a client of the other (it moves; nobody waits for
//! query_wait_timeout), and the pool size holds across both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrelay::config::Config;
use pgrelay::localcluster::{APP_PASSWORD, APP_USER};
use pgrelay::{App, RunningApp};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::{cluster, relay};

/// Two workers, one server connection per pool, and a short wait so that
/// a client left waiting fails the test quickly.
async fn start(pool_size: usize) -> RunningApp {
    let pool = format!("workers = 2\ndefault_pool_size = {pool_size}\nquery_wait_timeout = \"3s\"");
    let toml = format!("{}\n[admin]\nadmin_users = [\"{APP_USER}\"]\n", relay::config_toml(cluster(), &pool, ""));
    App::start(Config::parse(&toml).expect("valid config")).await.expect("pgrelay starts")
}

async fn connect(app: &RunningApp, name: &str, database: &str) -> Client {
    let conn = format!(
        "{} dbname={database} application_name={name}",
        relay::conn_string(app.rw_addr, APP_USER, APP_PASSWORD)
    );
    relay::connect_with(&conn).await.unwrap_or_else(|e| panic!("{name}: {e}")).client
}

/// SHOW CLIENTS: the worker of each client, by application_name.
async fn workers_of_clients(console: &Client) -> HashMap<String, String> {
    let mut columns = Vec::new();
    let mut workers = HashMap::new();
    for message in console.simple_query("SHOW CLIENTS").await.expect("SHOW CLIENTS") {
        match message {
            SimpleQueryMessage::RowDescription(d) => columns = d.iter().map(|c| c.name().to_owned()).collect(),
            SimpleQueryMessage::Row(row) => {
                let get = |name: &str| row.get(columns.iter().position(|c| c == name).unwrap()).unwrap().to_owned();
                workers.insert(get("application_name"), get("worker"));
            }
            _ => {}
        }
    }
    workers
}

/// The value of a counter with these labels in /metrics' text, 0 when absent.
fn counter(app: &RunningApp, name: &str) -> u64 {
    let text = app.context().metrics.render();
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains("user=\"app\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn an_idle_connection_of_one_worker_serves_a_client_of_the_other() {
    let app = start(1).await;
    let console = connect(&app, "console", "pgrelay").await;
    // Clients until each worker has one (which worker accepts is the kernel's choice).
    let mut clients = Vec::new();
    let mut on = [None, None];
    for i in 0..64 {
        let name = format!("c{i}");
        clients.push((name.clone(), connect(&app, &name, "app").await));
        let workers = workers_of_clients(&console).await;
        for (worker, slot) in on.iter_mut().enumerate() {
            if slot.is_none() && workers.get(&name) == Some(&worker.to_string()) {
                *slot = Some(clients.len() - 1);
            }
        }
        if on.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(a), Some(b)] = on else { panic!("64 clients all landed on one worker: {on:?}") };
    let backend = |i: usize| {
        let client = &clients[i].1;
        async move { relay::scalar(client, "select pg_backend_pid()").await }
    };
    // The one connection is made on a's worker and left idle there ...
    let first = backend(a).await;
    let moves = counter(&app, "pgrelay_server_connection_moves_total");
    // ... and serves b at once, moved to b's worker, then a again.
    let started = Instant::now();
    assert_eq!(backend(b).await, first, "b got the same server connection");
    assert_eq!(backend(a).await, first, "and a got it back");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "nobody waited for query_wait_timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(counter(&app, "pgrelay_server_connection_moves_total"), moves + 2, "it moved twice");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn clients_on_both_workers_share_the_pool_within_its_size() {
    const CLIENTS: usize = 12;
    const TRANSACTIONS: usize = 100;
    let app = start(2).await;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let client = connect(&app, &format!("s{i}"), "app").await;
        tasks.push(tokio::spawn(async move {
            let mut pids = Vec::with_capacity(TRANSACTIONS);
            for n in 0..TRANSACTIONS {
                let sql = format!("select pg_backend_pid()::text || ':' || {n}");
                let value = relay::scalar(&client, &sql).await;
                let (pid, echoed) = value.split_once(':').expect("pid:n");
                assert_eq!(echoed, n.to_string(), "client {i} got another's answer");
                pids.push(pid.to_owned());
            }
            pids
        }));
    }
    let mut pids = std::collections::HashSet::new();
    for task in tasks {
        pids.extend(task.await.expect("client task"));
    }
    assert!(pids.len() <= 2, "the pool (size 2) used {} server connections: {pids:?}", pids.len());
    app.shutdown(Duration::from_secs(5)).await;
}
