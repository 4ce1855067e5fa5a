//! Split brain: a replica is promoted while the old primary still runs.
//! pgrelay refuses writes (and ends transactions open on the old primary)
//! until only one node is out of recovery, then follows that one.

use std::time::Duration;

use bytes::BytesMut;
use pgrelay::localcluster::StopMode;

use crate::common::{self, blocking, config, psql, read_set, wait_topology};
use crate::support::relay::{self, message, scalar, sqlstate, Raw};

const BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_refuses_writes_until_one_primary_is_left() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let (pg0, pg1) = (cluster.primary(), &cluster.replicas()[0]);
    psql(&cluster, pg0, "create table split_t (a int); grant all on split_t to public");
    // synchronous_commit is off in the test cluster: make sure pg1 has the
    // table before it is promoted.
    let replayed = "select count(*) from pg_class where relname = 'split_t'";
    common::wait_for("pg1 replays the table", BOUND, || (psql(&cluster, pg1, replayed) == "1").then_some(())).await;
    let app = relay::start(config(&cluster, "", "query_wait_timeout = \"2s\"")).await;
    wait_topology(&app, "pg0 primary", BOUND, |t| t.primary == Some(0) && read_set(t) == ["pg1", "pg2"]).await;

    // A client in the middle of a transaction on pg0, and an idle one.
    let (mut in_transaction, _) = Raw::login(app.rw_addr, &[]).await;
    let mut query = BytesMut::new();
    pgrelay::wire::put_query(&mut query, "begin; insert into split_t values (1)");
    in_transaction.send(&query).await;
    let answer = in_transaction.until_ready().await;
    assert_eq!(answer.last().map(|(_, body)| body.as_ref()), Some(&b"T"[..]), "{}", relay::tags(&answer));
    let idle = relay::connect(app.rw_addr).await;

    blocking(|| cluster.promote(pg1)).expect("promote pg1 next to a running pg0");
    let took = wait_topology(&app, "split brain seen", BOUND, |t| t.split_brain).await;
    println!("split brain seen {took:?} after the promotion");

    // The open transaction on pg0 is ended: its server connection closed,
    // and the client hears of it on its next request (40001).
    common::lost_block_is_reported(&cluster, pg0, &mut in_transaction, "no longer the primary").await;

    // Writes are refused at once, naming both claimants.
    let error = idle.simple_query("insert into split_t values (2)").await.expect_err("split brain refuses writes");
    let text = message(&error);
    assert_eq!(sqlstate(&error), "08006", "{text}");
    assert!(text.contains("split brain") && text.contains("pg0 and pg1"), "{text}");
    println!("a write during the split brain: {text}");
    let error = relay::connect_as(app.rw_addr, "app", "app").await.err().expect("new logins are refused too");
    assert!(message(&error).contains("split brain"), "{}", message(&error));

    blocking(|| cluster.stop(pg0, StopMode::Fast)).expect("stop the old primary");
    let took = wait_topology(&app, "pg1 primary", BOUND, |t| t.primary == Some(1)).await;
    println!("pg1 became the primary {took:?} after the old primary stopped");
    let writer = relay::connect(app.rw_addr).await;
    writer.batch_execute("insert into split_t values (3)").await.expect("write on the new primary");
    assert_eq!(scalar(&writer, "select inet_server_port()").await, pg1.port.to_string());
    assert_eq!(psql(&cluster, pg1, "select string_agg(a::text, ',') from split_t"), "3");
    app.shutdown(Duration::from_secs(5)).await;
}
