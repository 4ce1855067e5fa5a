//! Bad input gets a clear error and a clean close, while another client
//! keeps running queries through the same pgrelay.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pgrelay::wire;
use tokio::io::AsyncReadExt;

use crate::support::cluster;
use crate::support::relay::{self, error_fields, Raw};

/// Reads what pgrelay says until it closes; returns the ErrorResponse's SQLSTATE and message.
async fn final_error(raw: &mut Raw) -> (String, String) {
    let mut error = None;
    while let Some((tag, body)) = raw.recv().await {
        if tag == b'E' {
            error = Some(error_fields(&body));
        }
    }
    error.expect("an ErrorResponse before the close")
}

#[tokio::test]
async fn bad_input_is_refused_while_others_keep_working() {
    let app = relay::start_default(cluster(), "max_message_size = \"64kB\"\nclient_login_timeout = \"2s\"").await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let bystander = {
        let client = relay::connect(app.rw_addr).await;
        let (stop, done) = (stop.clone(), done.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = done.load(Ordering::Relaxed) as i64;
                let row = client.query_one("select $1::int8 + 1", &[&n]).await.expect("bystander query");
                assert_eq!(row.get::<_, i64>(0), n + 1);
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Garbage instead of a startup packet.
    let mut raw = Raw::connect(app.rw_addr).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (code, message) = final_error(&mut raw).await;
    assert_eq!(code, "08P01", "{message}");

    // A startup packet without a user.
    let mut raw = Raw::connect(app.rw_addr).await;
    let mut out = BytesMut::new();
    wire::put_startup_message(&mut out, [(&b"database"[..], &b"app"[..])]);
    raw.send(&out).await;
    let (code, message) = final_error(&mut raw).await;
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("user"), "{message}");

    // A message length below 4, after login.
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    raw.send(&[b'Q', 0, 0, 0, 2]).await;
    let (code, message) = final_error(&mut raw).await;
    assert_eq!(code, "08P01", "{message}");
    assert!(message.contains("length"), "{message}");

    // A message longer than max_message_size: refused on its header alone.
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut huge = BytesMut::new();
    huge.put_u8(b'Q');
    huge.put_u32(1 << 20);
    huge.put_slice(&[b'x'; 1000]);
    raw.send(&huge).await;
    let (code, message) = final_error(&mut raw).await;
    assert_eq!(code, "08P01", "{message}");
    assert!(message.contains("max_message_size"), "{message}");

    // An unknown message type after login.
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    raw.send(&[b'?', 0, 0, 0, 4]).await;
    let (code, _) = final_error(&mut raw).await;
    assert_eq!(code, "08P01");

    // A client that connects and says nothing: the login timeout (2 s here) closes it.
    let mut silent = Raw::connect(app.rw_addr).await;
    let started = std::time::Instant::now();
    let (code, message) = final_error(&mut silent).await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "{:?}", started.elapsed());
    assert!(message.contains("client_login_timeout"), "{code} {message}");

    // A client that vanishes half way through its startup packet.
    let mut raw = Raw::connect(app.rw_addr).await;
    raw.send(&[0, 0, 0, 40, 0, 3]).await;
    drop(raw);

    // Binary noise after login.
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    raw.send(&[0xff; 64]).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.stream.read_to_end(&mut sink)).await;

    stop.store(true, Ordering::Relaxed);
    bystander.await.expect("the bystander never saw an error");
    assert!(done.load(Ordering::Relaxed) > 10, "the bystander kept running");
    let after = relay::connect(app.rw_addr).await;
    assert_eq!(relay::scalar(&after, "select 'still serving'").await, "still serving");
    app.shutdown(Duration::from_secs(5)).await;
}
