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

/// Clients until worker 0 has `need[0]` and worker 1 `need[1]` of them
/// (each goes to the worker serving the fewest connections); the others
/// are closed.
async fn clients_on_workers(app: &RunningApp, need: [usize; 2]) -> [Vec<Client>; 2] {
    let console = connect(app, "console", "pgrelay").await;
    let mut on: [Vec<Client>; 2] = [Vec::new(), Vec::new()];
    for i in 0..64 {
        let name = format!("c{i}");
        let client = connect(app, &name, "app").await;
        // Listed before its welcome is sent, so at once.
        let workers = workers_of_clients(&console).await;
        let worker: usize =
            workers.get(&name).unwrap_or_else(|| panic!("{name} is not in SHOW CLIENTS")).parse().expect("a number");
        if on[worker].len() < need[worker] {
            on[worker].push(client);
        }
        if on[0].len() == need[0] && on[1].len() == need[1] {
            return on;
        }
    }
    panic!("64 clients did not give {need:?} on workers 0 and 1");
}

#[tokio::test]
async fn an_idle_connection_of_one_worker_serves_a_client_of_the_other() {
    let app = start(1).await;
    let [mut on_0, mut on_1] = clients_on_workers(&app, [1, 1]).await;
    let (a, b) = (on_0.remove(0), on_1.remove(0));
    async fn backend(client: &Client) -> String {
        relay::scalar(client, "select pg_backend_pid()").await
    }
    // The one connection is made on a's worker and left idle there ...
    let first = backend(&a).await;
    let moves = counter(&app, "pgrelay_server_connection_moves_total");
    // ... and serves b at once, moved to b's worker, then a again.
    let started = Instant::now();
    assert_eq!(backend(&b).await, first, "b got the same server connection");
    assert_eq!(backend(&a).await, first, "and a got it back");
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

#[tokio::test]
async fn a_client_waiting_on_one_worker_gets_the_slot_the_other_worker_frees() {
    // Two slots: one per worker. Each worker's is taken by an open transaction.
    let app = start(2).await;
    let [on_0, mut on_1] = clients_on_workers(&app, [1, 2]).await;
    let z = on_1.pop().expect("a second client on worker 1");
    let (x, y) = (&on_0[0], &on_1[0]);
    x.batch_execute("begin; select 1").await.expect("x holds worker 0's slot");
    y.batch_execute("begin; select 1").await.expect("y holds worker 1's slot");
    let x_pid = relay::scalar(x, "select pg_backend_pid()").await;
    // z, on worker 1, has to wait ...
    let waiting = tokio::spawn(async move { relay::scalar(&z, "select pg_backend_pid()").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "z found no free slot");
    // ... until x frees worker 0's slot, which nobody on worker 0 waits for.
    let freed = Instant::now();
    x.batch_execute("commit").await.expect("x commits");
    let z_pid = tokio::time::timeout(Duration::from_secs(2), waiting).await.expect("z is served").expect("z");
    assert!(freed.elapsed() < Duration::from_secs(1), "z waited {:?}", freed.elapsed());
    assert_eq!(z_pid, x_pid, "z got worker 0's connection");
    y.batch_execute("commit").await.expect("y commits");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_client_whose_worker_has_no_free_slot_borrows_the_idle_one_of_the_other() {
    // Two slots: one per worker. Worker 0's is idle, worker 1's is taken.
    let app = start(2).await;
    let [on_0, mut on_1] = clients_on_workers(&app, [1, 2]).await;
    let z = on_1.pop().expect("a second client on worker 1");
    let (x, y) = (&on_0[0], &on_1[0]);
    let x_pid = relay::scalar(x, "select pg_backend_pid()").await;
    y.batch_execute("begin; select 1").await.expect("y holds worker 1's slot");
    let moves = counter(&app, "pgrelay_server_connection_moves_total");
    // z waits a moment for worker 1's slot, then takes worker 0's idle one.
    let asked = Instant::now();
    let z_pid = tokio::time::timeout(Duration::from_secs(2), relay::scalar(&z, "select pg_backend_pid()"))
        .await
        .expect("z is served while worker 0's connection is idle");
    assert!(asked.elapsed() < Duration::from_secs(1), "z waited {:?}", asked.elapsed());
    assert_eq!(z_pid, x_pid, "z got worker 0's idle connection");
    assert_eq!(counter(&app, "pgrelay_server_connection_moves_total"), moves + 1, "which moved to worker 1");
    y.batch_execute("commit").await.expect("y commits");
    app.shutdown(Duration::from_secs(5)).await;
}

/// The workers of the clients named `prefix`N in SHOW CLIENTS: how many on each.
async fn spread(console: &Client, prefix: &str) -> [usize; 2] {
    let mut on = [0, 0];
    for (name, worker) in workers_of_clients(console).await {
        if name.starts_with(prefix) {
            on[worker.parse::<usize>().expect("a number")] += 1;
        }
    }
    on
}

#[tokio::test]
async fn each_new_client_goes_to_the_worker_serving_the_fewest() {
    let app = start(2).await;
    let console = connect(&app, "console", "pgrelay").await;
    let mut clients = HashMap::new();
    for i in 0..8 {
        let name = format!("n{i}");
        clients.insert(name.clone(), connect(&app, &name, "app").await);
    }
    assert_eq!(spread(&console, "n").await, [4, 4], "8 clients one after the other: 4 on each worker");
    // Three of worker 0's clients leave: the next three all go to worker 0.
    let on_0: Vec<String> = workers_of_clients(&console)
        .await
        .into_iter()
        .filter(|(name, worker)| name.starts_with('n') && worker == "0")
        .map(|(name, _)| name)
        .take(3)
        .collect();
    for name in &on_0 {
        drop(clients.remove(name));
    }
    // Gone once their tasks have ended: the console and five clients are left.
    for _ in 0..200 {
        if app.context().worker_load.total() == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(spread(&console, "n").await, [1, 4], "the three left");
    for i in 0..3 {
        let name = format!("m{i}");
        clients.insert(name.clone(), connect(&app, &name, "app").await);
    }
    assert_eq!(spread(&console, "m").await, [3, 0], "the new clients went to the worker serving fewer");
    app.shutdown(Duration::from_secs(5)).await;
}
