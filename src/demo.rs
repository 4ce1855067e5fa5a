//! `pgrelay demo`: a throw-away local primary + 2 streaming replicas made
//! from the PostgreSQL binaries on this machine, with pgrelay in front of
//! them on loopback. Ctrl-C stops everything and removes the data.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, ConfigError};
use crate::localcluster::{LocalCluster, LocalClusterError, LocalClusterOptions, APP_DATABASE, APP_PASSWORD, APP_USER};
use crate::{App, StartError};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting the local cluster: {0}")]
    Cluster(#[from] LocalClusterError),
    #[error("the demo configuration is invalid: {0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The port if it is free on loopback, else 0 (any free port).
fn free_or_any(port: u16) -> u16 {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => port,
        Err(_) => 0,
    }
}

/// The demo's configuration: the nodes the cluster made, roles discovered;
/// `PGRELAY_<SECTION>_<KEY>` variables override it as they do a config file
/// (`PGRELAY_POOL_WORKERS=1 pgrelay demo`).
pub fn demo_config(cluster: &LocalCluster, ports: [u16; 3]) -> Result<Config, ConfigError> {
    let [rw_port, ro_port, http_port] = ports;
    let mut text = format!(
        "[listen]\nrw = \"127.0.0.1:{rw_port}\"\nro = \"127.0.0.1:{ro_port}\"\nhttp = \"127.0.0.1:{http_port}\"\n\n\
         [cluster]\nsource = \"postgres\"\ncheck_interval = \"500ms\"\n\n\
         [[users]]\nname = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n\n\
         [[databases]]\nname = \"{APP_DATABASE}\"\n\n"
    );
    // Roles are discovered: pgrelay polls each node's pg_is_in_recovery().
    for node in cluster.nodes() {
        text.push_str(&format!("[[nodes]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n\n", node.name, node.port));
    }
    Config::parse_with_process_env(&text)
}

fn print_banner(cluster: &LocalCluster, rw: SocketAddr, ro: SocketAddr, http: SocketAddr) {
    let url = |addr: SocketAddr| format!("postgresql://{APP_USER}:{APP_PASSWORD}@{addr}/{APP_DATABASE}");
    println!();
    println!("pgrelay demo is running.");
    println!("  primary  {} (port {})", cluster.primary().name, cluster.primary().port);
    for replica in cluster.replicas() {
        println!("  replica  {} (port {})", replica.name, replica.port);
    }
    println!("  data     {}", cluster.base_dir().display());
    println!();
    println!("Writes and reads on the primary, through the read-write port {}:", rw.port());
    println!("  psql \"{}\" -c 'select pg_is_in_recovery(), inet_server_port()'", url(rw));
    println!("Reads spread over the replicas, through the read-only port {}:", ro.port());
    println!("  psql \"{}\" -c 'select pg_is_in_recovery(), inet_server_port()'", url(ro));
    println!("Load through the proxy:");
    println!("  PGPASSWORD={APP_PASSWORD} pgbench -h 127.0.0.1 -p {} -U {APP_USER} -i {APP_DATABASE}", rw.port());
    println!(
        "  PGPASSWORD={APP_PASSWORD} pgbench -h 127.0.0.1 -p {} -U {APP_USER} -S -c 8 -T 10 {APP_DATABASE}",
        ro.port()
    );
    println!("Topology, health and Prometheus metrics:");
    println!("  curl http://{http}/topology    curl http://{http}/readyz    curl http://{http}/metrics");
    println!();
    println!("Press Ctrl-C to stop pgrelay and the cluster and remove the data directory.");
}

/// Runs the demo until SIGINT or SIGTERM.
pub async fn run(rw_port: u16, ro_port: u16) -> Result<(), DemoError> {
    println!("Creating a primary and 2 streaming replicas on loopback ...");
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start(LocalClusterOptions::default()))
        .await
        .expect("cluster start does not panic")?;
    let config = demo_config(&cluster, [free_or_any(rw_port), free_or_any(ro_port), free_or_any(9930)])?;
    let app = App::start(config).await?;
    print_banner(&cluster, app.rw_addr, app.ro_addr, app.http_addr);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    println!("Stopping ...");
    app.shutdown(Duration::from_secs(5)).await;
    tokio::task::spawn_blocking(move || drop(cluster)).await.expect("cluster stop does not panic");
    println!("Stopped; the data directory is removed.");
    Ok(())
}
