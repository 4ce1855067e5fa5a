//! Cancel keys pgrelay issues, and cancel requests reaching the query that
//! was running when they arrived, and nothing else.

use std::time::{Duration, Instant};

use crate::support::cluster;
use crate::support::relay::{self, scalar, sqlstate, Raw};

const GRACE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn cancel_keys_are_random_and_unique() {
    let app = relay::start_default(cluster(), "").await;
    let mut held = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..16 {
        let (raw, welcome) = Raw::login(app.rw_addr, &[]).await;
        let (_, key) = welcome.iter().find(|(tag, _)| *tag == b'K').expect("BackendKeyData");
        let pid = u32::from_be_bytes(key[..4].try_into().unwrap());
        assert!((1..=i32::MAX as u32).contains(&pid), "{pid} is a positive int4, as a PostgreSQL pid");
        pids.push(pid);
        held.push(raw);
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 16, "unique among connected clients");
    // One client's key says nothing about the next one's.
    let close = pids.windows(2).filter(|w| w[1] - w[0] <= 16).count();
    assert_eq!(close, 0, "pids close together: {pids:?}");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_cancel_reaches_only_the_query_running_when_it_arrived() {
    let app = relay::start_default(cluster(), "").await;
    let client = relay::connect(app.rw_addr).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let running = tokio::spawn(async move {
        let result = client.simple_query("select pg_sleep(0.5)").await.map(|_| ());
        (result, client)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (result, client) = running.await.unwrap();
    assert_eq!(sqlstate(&result.unwrap_err()), "57014");
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());

    // A cancel after the query ended leaves the client's next query alone.
    assert_eq!(scalar(&client, "select 'done'").await, "done");
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    // tokio-postgres returns once the request is written, not once pgrelay
    // has read it (another worker may read it later): give it that time, or
    // the next query could be running when it arrives, as on PostgreSQL.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    client.simple_query("select pg_sleep(0.3)").await.expect("not cancelled");
    assert!(started.elapsed() >= Duration::from_millis(300));
    app.shutdown(GRACE).await;
}
