//! Real client programs through pgrelay: psql and pgbench.

use std::process::Command;
use std::time::Duration;

use crate::support::cluster;
use crate::support::relay;

fn run(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{cmd:?} failed: {stdout}\n{stderr}");
    stdout
}

fn pg_command(program: &str, port: u16) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "app")
        .env("PGPASSWORD", "app")
        .env("PGDATABASE", "app")
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

#[tokio::test]
async fn psql_through_both_ports() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "").await;
    let (rw, ro) = (app.rw_addr.port(), app.ro_addr.port());
    let out = tokio::task::spawn_blocking(move || {
        let rw_out =
            run(pg_command("psql", rw).args(["-X", "-At", "-c", "select pg_is_in_recovery(), inet_server_port()"]));
        let ro_out = run(pg_command("psql", ro).args(["-X", "-At", "-c", "select pg_is_in_recovery()"]));
        (rw_out, ro_out)
    })
    .await
    .unwrap();
    assert_eq!(out.0.trim(), format!("f|{}", cluster.primary().port));
    assert_eq!(out.1.trim(), "t");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pgbench_init_then_simple_extended_and_prepared() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "default_pool_size = 4").await;
    let (rw, ro) = (app.rw_addr.port(), app.ro_addr.port());
    let outputs = tokio::task::spawn_blocking(move || {
        // -i goes through the proxy too: DDL, COPY, VACUUM.
        run(pg_command("pgbench", rw).args(["-i", "-s", "1", "-q", "--foreign-keys"]));
        let mut outputs = Vec::new();
        for (port, mode, extra) in
            [(rw, "simple", "-N"), (rw, "extended", "-N"), (rw, "prepared", "-N"), (ro, "prepared", "-S")]
        {
            let args = ["-n", "-c", "8", "-j", "2", "-t", "100", "-M", mode, extra];
            outputs.push((mode, run(pg_command("pgbench", port).args(args))));
        }
        outputs
    })
    .await
    .unwrap();
    for (mode, out) in outputs {
        assert!(out.contains("number of transactions actually processed: 800/800"), "{mode}: {out}");
        assert!(out.contains("number of failed transactions: 0"), "{mode}: {out}");
    }
    app.shutdown(Duration::from_secs(5)).await;
}
