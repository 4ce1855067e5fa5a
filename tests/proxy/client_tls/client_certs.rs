//! Client certificates (`client_tls_ca_file`): verify-ca wants one signed by
//! the CA, verify-full also the user's name as its common name.

use std::time::Duration;

use pgrelay::localcluster::{APP_PASSWORD, APP_USER};
use tokio_postgres::config::ChannelBinding;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{client_config, connect_tls, pg_config, psql, start, tls_section, Issued, Pki, QUERY};
use crate::support::relay;

/// The `[tls]` section for `sslmode` with client certificates from `pki`.
fn with_client_ca(sslmode: &str, pki: &Pki) -> String {
    format!("{}client_tls_ca_file = \"{}\"\n", tls_section(sslmode, &pki.server_cert()), pki.ca_file().display())
}

/// libpq settings that present `cert` (`require`: libpq checks nothing of
/// pgrelay's certificate).
fn presenting(cert: &Issued) -> String {
    format!("sslmode=require sslcert={} sslkey={}", cert.cert.display(), cert.key.display())
}

#[tokio::test]
async fn verify_ca_wants_a_certificate_signed_by_the_ca() {
    let pki = Pki::new("verify-ca");
    let app = start(&with_client_ca("verify-ca", &pki)).await;
    let port = app.rw_addr.port();
    // Any name will do under verify-ca.
    let signed = pki.issue("client-any", &["someone"]);
    assert_eq!(psql(port, &presenting(&signed), QUERY).await.as_deref(), Ok("42"));

    let error = psql(port, "sslmode=require", QUERY).await.expect_err("no certificate, no handshake");
    assert!(error.contains("alert certificate required"), "rustls refuses the handshake: {error}");
    let stranger = Pki::new("verify-ca-other").issue("client-other", &["app"]);
    let error = psql(port, &presenting(&stranger), QUERY).await.expect_err("a certificate of another CA");
    assert!(error.contains("alert unknown ca"), "rustls refuses the handshake: {error}");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn verify_full_wants_the_user_name_as_common_name() {
    let pki = Pki::new("verify-full");
    let app = start(&with_client_ca("verify-full", &pki)).await;
    let port = app.rw_addr.port();
    let named = pki.issue("client-app", &["app"]);
    assert_eq!(psql(port, &presenting(&named), "select current_user").await.as_deref(), Ok("app"));

    let other = pki.issue("client-else", &["someoneelse"]);
    let error = psql(port, &presenting(&other), QUERY).await.expect_err("a certificate for another user");
    assert!(error.contains("certificate authentication failed for user \"app\""), "{error}");
    assert!(error.contains("\"someoneelse\""), "the message names what the certificate says: {error}");
    // The same through tokio-postgres, for the SQLSTATE psql does not print.
    let tls = MakeRustlsConnect::new(client_config(&pki, &[], Some(&other)).0);
    let config = pg_config(port, APP_USER, APP_PASSWORD, ChannelBinding::Prefer);
    let error = connect_tls(&config, tls).await.expect_err("a certificate for another user");
    assert_eq!(relay::sqlstate(&error), "28000", "{}", relay::message(&error));
    assert!(relay::message(&error).contains("for user \"app\""), "{}", relay::message(&error));
    app.shutdown(Duration::from_secs(5)).await;
}
