//! Replacing pgrelay's certificate with RELOAD while clients keep
//! connecting: no client notices, new connections get the new certificate,
//! and a broken certificate file changes nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrelay::localcluster::{APP_PASSWORD, APP_USER};
use pgrelay::App;
use tokio_postgres::config::ChannelBinding;

use super::{config_text, connect_tls, connector, pg_config, tls_files, Issued, Pki};
use crate::support::relay;

/// Clients connecting at once, and how long and how often each does.
const CLIENTS: usize = 8;
const LOAD_FOR: Duration = Duration::from_secs(4);
const MAX_ROUNDS: usize = 60;

/// One connection of the load: whether it began after the reload returned,
/// and the certificate it was shown.
struct Connected {
    after_reload: bool,
    cert: Vec<u8>,
}

/// New TLS connections, one query each, until [`LOAD_FOR`] passed or
/// [`MAX_ROUNDS`] were made. SCRAM with channel binding for even clients
/// (its binding data must stay that of the certificate the connection was
/// opened with), trust for odd ones.
async fn connect_in_a_loop(
    pki: Arc<Pki>,
    port: u16,
    client: usize,
    reloaded: Arc<AtomicBool>,
) -> Vec<Result<Connected, String>> {
    let config = if client % 2 == 0 {
        pg_config(port, APP_USER, APP_PASSWORD, ChannelBinding::Require)
    } else {
        pg_config(port, "app_trust", "", ChannelBinding::Prefer)
    };
    let deadline = Instant::now() + LOAD_FOR;
    let mut results = Vec::new();
    while results.len() < MAX_ROUNDS && Instant::now() < deadline {
        let after_reload = reloaded.load(Ordering::SeqCst);
        let (tls, seen) = connector(&pki);
        let result = async {
            let client = connect_tls(&config, tls).await?;
            client.simple_query("select 1").await
        }
        .await;
        let seen = seen.lock().unwrap().take();
        results.push(match (result, seen) {
            (Ok(_), Some(cert)) => Ok(Connected { after_reload, cert }),
            (Ok(_), None) => Err("no TLS handshake".to_owned()),
            (Err(e), _) => Err(format!("client {client}: {}", relay::message(&e))),
        });
    }
    results
}

/// Copies an issued certificate to the files the config names.
fn install(cert: &Issued, live: &Issued) {
    std::fs::copy(&cert.cert, &live.cert).unwrap();
    std::fs::copy(&cert.key, &live.key).unwrap();
}

#[tokio::test]
async fn reloading_the_certificate_under_load_serves_the_new_one_without_errors() {
    let pki = Arc::new(Pki::new("reload"));
    let first = pki.issue("first", &["localhost", "127.0.0.1"]);
    let second = pki.issue("second", &["127.0.0.1", "localhost"]);
    assert_ne!(first.der, second.der);
    let live =
        Issued { cert: pki.dir.join("live.crt"), key: pki.dir.join("live.key"), der: Vec::new(), key_der: Vec::new() };
    install(&first, &live);
    let file = pki.dir.join("pgrelay.toml");
    std::fs::write(&file, config_text(&tls_files("require", &live.cert, &live.key))).unwrap();
    let app = App::start_from(&file).await.expect("pgrelay starts from the file");
    let port = app.rw_addr.port();

    // A client connected across the reload keeps its TLS session.
    let (tls, _) = connector(&pki);
    let staying = connect_tls(&pg_config(port, APP_USER, APP_PASSWORD, ChannelBinding::Require), tls)
        .await
        .expect("a client connected before the reload");
    assert_eq!(relay::scalar(&staying, "select 1").await, "1");
    let reloaded = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..CLIENTS)
        .map(|client| tokio::spawn(connect_in_a_loop(pki.clone(), port, client, reloaded.clone())))
        .collect();
    tokio::time::sleep(LOAD_FOR / 3).await;
    install(&second, &live);
    app.context().reload().expect("the second certificate loads");
    reloaded.store(true, Ordering::SeqCst);

    let mut connections = Vec::new();
    for task in load {
        connections.extend(task.await.expect("load task"));
    }
    let errors: Vec<&String> = connections.iter().filter_map(|c| c.as_ref().err()).collect();
    assert!(errors.is_empty(), "{} of {} connections failed: {errors:?}", errors.len(), connections.len());
    let connections: Vec<Connected> = connections.into_iter().map(Result::unwrap).collect();
    let (after, before): (Vec<&Connected>, Vec<&Connected>) = connections.iter().partition(|c| c.after_reload);
    assert!(!after.is_empty() && before.iter().any(|c| c.cert == first.der), "both sides of the reload were seen");
    assert!(before.iter().all(|c| c.cert == first.der || c.cert == second.der));
    assert!(after.iter().all(|c| c.cert == second.der), "a connection after the reload was shown the old certificate");
    assert_eq!(relay::scalar(&staying, "select 2").await, "2", "the session from before the reload goes on");

    // A broken certificate file: RELOAD (here from the console, over TLS) fails and changes nothing.
    std::fs::write(&live.cert, "not a certificate\n").unwrap();
    let (tls, _) = connector(&pki);
    let mut console = pg_config(port, APP_USER, APP_PASSWORD, ChannelBinding::Require);
    console.dbname("pgrelay");
    let console = connect_tls(&console, tls).await.expect("the admin console over TLS");
    let error = console.simple_query("RELOAD").await.expect_err("a broken certificate does not load");
    assert!(relay::message(&error).contains("client_tls_cert_file"), "{}", relay::message(&error));
    let (tls, seen) = connector(&pki);
    let client = connect_tls(&pg_config(port, "app_trust", "", ChannelBinding::Prefer), tls).await.expect("connect");
    assert_eq!(relay::scalar(&client, "select 40 + 2").await, "42");
    assert_eq!(seen.lock().unwrap().as_deref(), Some(&second.der[..]), "still the second certificate");
    app.shutdown(Duration::from_secs(5)).await;
}
