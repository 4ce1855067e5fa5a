use super::scram::*;
use super::*;

fn scram_exchange(verifier: &ScramVerifier, secret: &ScramSecret) -> Result<[u8; 32], AuthError> {
    let (client, first) = ScramClient::start();
    let (server, server_first) = ScramServer::start(first.as_bytes(), verifier)?;
    let fin = client.answer(server_first.as_bytes(), secret)?;
    let verified = server.finish(fin.client_final.as_bytes(), verifier)?;
    fin.verify_server(verified.server_final.as_bytes())?;
    Ok(verified.client_key)
}

#[test]
fn scram_with_password_round_trips() {
    let verifier = ScramVerifier::from_password("s3cret");
    assert!(scram_exchange(&verifier, &ScramSecret::password("s3cret")).is_ok());
}

#[test]
fn scram_wrong_password_is_rejected() {
    let verifier = ScramVerifier::from_password("s3cret");
    let err = scram_exchange(&verifier, &ScramSecret::password("nope")).unwrap_err();
    assert_eq!(err, AuthError::WrongPassword);
}

#[test]
fn recovered_client_key_logs_in_again() {
    let verifier = ScramVerifier::from_password("s3cret");
    let key = scram_exchange(&verifier, &ScramSecret::password("s3cret")).unwrap();
    let passthrough = ScramSecret::ClientKey { client_key: key, verifier: verifier.clone() };
    assert!(scram_exchange(&verifier, &passthrough).is_ok());
    // Against a server whose verifier has another salt, the key is useless.
    let other = ScramVerifier::from_password("s3cret");
    assert_eq!(scram_exchange(&other, &passthrough).unwrap_err(), AuthError::VerifierMismatch);
}

#[test]
fn verifier_parses_postgres_format() {
    // Produced by PostgreSQL 15 for the password "app-secret".
    let text = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let v = ScramVerifier::parse(text).unwrap();
    assert_eq!(v.iterations, 4096);
    assert_eq!(v.salt, b"saltsaltsaltsalt");
    assert_eq!(v.server_key, [1u8; 32]);
    assert!(ScramVerifier::parse("SCRAM-SHA-256$0:xx$yy:zz").is_none());
    assert!(ScramVerifier::parse("md5abc").is_none());
}

#[test]
fn md5_matches_postgres() {
    // select 'md5' || md5('secret' || 'app')
    let stored = md5::stored_hash("secret", "app");
    assert_eq!(stored, "md56a422f785c9e20873908ce25d1736ae2");
    assert_eq!(md5::salted_answer(&stored, [1, 2, 3, 4]), "md5911f527656472583a006e7727877b33e");
    assert!(md5::is_stored_hash(&stored));
    assert!(!md5::is_stored_hash("md5xyz"));
}

#[test]
fn channel_binding_is_refused_clearly() {
    let verifier = ScramVerifier::from_password("x");
    let err = ScramServer::start(b"p=tls-server-end-point,,n=,r=abc", &verifier).unwrap_err();
    assert_eq!(err, AuthError::Unsupported("SCRAM channel binding"));
}

#[test]
fn derived_keys_are_cached_per_salt() {
    let ScramSecret::Password(password) = ScramSecret::password("s3cret") else { unreachable!() };
    let secret = ScramSecret::Password(password.clone());
    let verifier = ScramVerifier::from_password("s3cret");
    assert!(!password.has_keys_for(&verifier.salt, verifier.iterations));
    assert!(scram_exchange(&verifier, &secret).is_ok());
    assert!(password.has_keys_for(&verifier.salt, verifier.iterations), "clones share the cache");
    assert!(scram_exchange(&verifier, &secret).is_ok(), "cached keys still produce a valid proof");
    let other = ScramVerifier::from_password("s3cret");
    assert!(scram_exchange(&other, &secret).is_ok(), "a new salt derives new keys");
    assert!(password.has_keys_for(&other.salt, other.iterations));
    assert_eq!(scram_exchange(&other, &ScramSecret::password("wrong")).unwrap_err(), AuthError::WrongPassword);
}
