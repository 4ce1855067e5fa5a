//! Where transactions go: :rw to the primary, :ro to the least busy replica,
//! each client's reads taking the replicas in turn among equals.

use std::collections::HashMap;

use crate::support::cluster;
use crate::support::relay::{self, scalar, sqlstate};

#[tokio::test]
async fn rw_port_reaches_the_primary_and_ro_port_the_replicas() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "").await;
    let rw = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&rw, "select pg_is_in_recovery()").await, "f");
    assert_eq!(scalar(&rw, "select inet_server_port()").await, cluster.primary().port.to_string());

    let ro = relay::connect(app.ro_addr).await;
    assert_eq!(scalar(&ro, "select pg_is_in_recovery()").await, "t");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let row = scalar(&ro, "select inet_server_port()::text || ' ' || pg_is_in_recovery()::text").await;
        let (port, in_recovery) = row.split_once(' ').unwrap();
        assert_eq!(in_recovery, "true", "{row}");
        *seen.entry(port.to_owned()).or_default() += 1;
    }
    let replica_ports: Vec<String> = cluster.replicas().iter().map(|r| r.port.to_string()).collect();
    assert_eq!(seen.len(), 2, "reads should spread over both replicas: {seen:?}");
    for port in &replica_ports {
        // A client's reads take the replicas in turn: 10 alternate evenly.
        assert!(seen.get(port).copied().unwrap_or(0) >= 4, "replica {port} got too few reads: {seen:?}");
    }
    app.shutdown(std::time::Duration::from_secs(5)).await;
}

/// The replica port that served a read on `ro`.
async fn replica_of(ro: &tokio_postgres::Client) -> String {
    scalar(ro, "select inet_server_port()::text").await
}

#[tokio::test]
async fn reads_alternate_whatever_the_client_does_on_the_rw_port() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "").await;
    let (rw, ro) = (relay::connect(app.rw_addr).await, relay::connect(app.ro_addr).await);
    let other_ro = relay::connect(app.ro_addr).await;
    // The commonest web pattern: a write, then a read; and two reads of
    // another client in between. Neither moves this client's turn (a turn
    // shared by all routing sent every such read to the same replica).
    let mut reads = Vec::new();
    for _ in 0..16 {
        scalar(&rw, "select pg_current_wal_lsn()::text").await;
        reads.push(replica_of(&ro).await);
        replica_of(&other_ro).await;
        replica_of(&other_ro).await;
    }
    let on_first = reads.iter().filter(|port| **port == cluster.replicas()[0].port.to_string()).count();
    assert_eq!(on_first, 8, "16 reads alternate over the two replicas: {reads:?}");
    assert!(reads.windows(2).all(|pair| pair[0] != pair[1]), "one replica, then the other: {reads:?}");
    app.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_read_goes_to_the_replica_with_fewer_transactions_in_progress() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "").await;
    let (holder, reader) = (relay::connect(app.ro_addr).await, relay::connect(app.ro_addr).await);
    // The reader has used both replicas' pools, so it knows how busy each is.
    let used: std::collections::HashSet<String> = [replica_of(&reader).await, replica_of(&reader).await].into();
    assert_eq!(used.len(), 2, "{used:?}");
    holder.batch_execute("begin; select 1").await.expect("a transaction stays open on one replica");
    let busy = replica_of(&holder).await;
    for _ in 0..10 {
        assert_ne!(replica_of(&reader).await, busy, "reads avoid the replica with a transaction in progress");
    }
    holder.batch_execute("commit").await.expect("commit");
    let after: std::collections::HashSet<String> = [replica_of(&reader).await, replica_of(&reader).await].into();
    assert_eq!(after.len(), 2, "both replicas serve reads again: {after:?}");
    app.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_write_on_the_ro_port_fails_with_postgres_own_error() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "").await;
    let ro = relay::connect(app.ro_addr).await;
    let err = ro.batch_execute("create table ro_write_attempt (a int)").await.unwrap_err();
    // 25006: read_only_sql_transaction, raised by the replica itself.
    assert_eq!(sqlstate(&err), "25006", "{err}");
    // The client keeps its connection and can go on reading.
    assert_eq!(scalar(&ro, "select 1").await, "1");
    app.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_transaction_stays_on_one_replica() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "").await;
    let mut ro = relay::connect(app.ro_addr).await;
    for _ in 0..4 {
        let tx = ro.transaction().await.unwrap();
        let a = tx.query_one("select inet_server_port()::text", &[]).await.unwrap().get::<_, String>(0);
        let b = tx.query_one("select inet_server_port()::text", &[]).await.unwrap().get::<_, String>(0);
        assert_eq!(a, b, "both statements of one transaction run on one server");
        tx.commit().await.unwrap();
    }
    app.shutdown(std::time::Duration::from_secs(5)).await;
}
