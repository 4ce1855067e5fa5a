//! `scram_client`: pgrelay's SCRAM-SHA-256 client (ScramClient, as it logs
//! in to servers) fed a server's two messages.
//!
//! Input: FIRST `\n` FINAL.
//! - FIRST is the server-first-message. In it byte 0x01 stands for the
//!   client's nonce, 0x02 for the user's salt in base64 and 0x03 for the
//!   user's iteration count.
//! - FINAL is the server-final-message (none: the exchange stops after the
//!   first). In it 0x01 stands for the right ServerSignature in base64, and
//!   0x02 X for that signature with bit X flipped.
//!
//! Each input runs twice: with a ClientKey recovered from a client (what
//! pgrelay has when only the user's verifier is configured), and with a
//! plain password when the iteration counts asked for are small enough to
//! derive keys for every input. Password and salt are random per process.

use std::sync::LazyLock;

use super::scram_oracle::{self as oracle, Keys};
use super::{split_once, substitute};
use crate::auth::scram::{ScramClient, ScramSecret, ScramVerifier};
use crate::auth::AuthError;

/// Iteration counts above this are not run with a password: PBKDF2 would
/// dominate the run (a server may ask for any count up to 2^32 - 1).
const MAX_PASSWORD_ITERATIONS: u32 = 8;

struct Fixture {
    keys: Keys,
    client_key: ScramSecret,
    password: ScramSecret,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let keys = Keys::random(4096);
    let verifier = ScramVerifier::parse(&keys.verifier_text()).expect("fixture verifier");
    Fixture {
        client_key: ScramSecret::ClientKey { client_key: keys.client_key, verifier },
        password: ScramSecret::password(keys.password.clone()),
        keys,
    }
});

pub fn check(data: &[u8]) {
    let fixture = &*FIXTURE;
    run(data, &fixture.client_key, fixture);
    run(data, &fixture.password, fixture);
}

fn run(data: &[u8], secret: &ScramSecret, fixture: &Fixture) {
    let (first_template, final_template) = split_once(data, b'\n');
    let (client, client_first) = ScramClient::start();
    let client_first_bare = client_first.strip_prefix("n,,").expect("gs2 header without channel binding");
    let client_nonce = oracle::attribute(client_first_bare.as_bytes(), b'r').expect("client nonce");
    let server_first = substitute(first_template, 1, client_nonce);
    let server_first = substitute(&server_first, 2, oracle::b64(&fixture.keys.salt).as_bytes());
    let server_first = substitute(&server_first, 3, fixture.keys.iterations.to_string().as_bytes());
    let salt = last_attribute(&server_first, b's');
    let iterations = last_attribute(&server_first, b'i').and_then(parse_u32);
    let is_password = matches!(secret, ScramSecret::Password(_));
    let costly = attributes(&server_first, b'i').filter_map(parse_u32).any(|n| n > MAX_PASSWORD_ITERATIONS);
    if is_password && costly {
        return;
    }
    let fin = match client.answer(&server_first, secret, u32::MAX) {
        Ok(fin) => fin,
        Err(AuthError::VerifierMismatch) => {
            assert!(!is_password, "a password fits any salt");
            let salt = salt.and_then(base64_decode);
            assert!(
                salt.as_deref() != Some(&fixture.keys.salt[..]) || iterations != Some(fixture.keys.iterations),
                "the verifier's own salt and iterations were called a mismatch"
            );
            return;
        }
        Err(_) => return,
    };
    let nonce = last_attribute(&server_first, b'r').expect("an answered server-first has a nonce");
    assert!(nonce.len() > client_nonce.len() && nonce.starts_with(client_nonce), "the server's nonce extends ours");
    let salt = base64_decode(salt.expect("salt")).expect("salt in base64");
    let iterations = iterations.expect("iteration count");
    let keys = if is_password {
        Keys::derive(&fixture.keys.password, &salt, iterations)
    } else {
        assert_eq!((&salt, iterations), (&fixture.keys.salt, fixture.keys.iterations), "a ClientKey fits one verifier");
        fixture.keys.clone()
    };
    let without_proof = [&b"c=biws,r="[..], nonce].concat();
    let auth_message = oracle::auth_message(client_first_bare.as_bytes(), &server_first, &without_proof);
    let expected_final =
        [&without_proof[..], b",p=", oracle::b64(&keys.client_proof(&auth_message)).as_bytes()].concat();
    assert_eq!(fin.client_final.as_bytes(), &expected_final[..], "client-final-message");

    let Some(final_template) = final_template else { return };
    let signature = keys.server_signature(&auth_message);
    let server_final = server_final(final_template, &signature);
    let right = format!("v={}", oracle::b64(&signature));
    let verified = fin.verify_server(&server_final);
    if verified.is_ok() {
        let rest = server_final.strip_prefix(right.as_bytes());
        assert!(
            rest.is_some_and(|rest| rest.is_empty() || rest[0] == b','),
            "accepted a server-final-message without the ServerSignature: {server_final:?}"
        );
    }
    if server_final == right.as_bytes() {
        assert_eq!(verified, Ok(()), "the right ServerSignature was refused");
    }
}

/// The template with 0x01 as the signature and 0x02 X as it with bit X flipped.
fn server_final(template: &[u8], signature: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len() + 44);
    let mut bytes = template.iter();
    while let Some(&b) = bytes.next() {
        match b {
            1 => out.extend_from_slice(oracle::b64(signature).as_bytes()),
            2 => {
                let bit = bytes.next().copied().unwrap_or(0);
                out.extend_from_slice(oracle::b64(&oracle::flip(*signature, bit)).as_bytes());
            }
            _ => out.push(b),
        }
    }
    out
}

fn attributes(message: &[u8], name: u8) -> impl Iterator<Item = &[u8]> {
    message.split(|&b| b == b',').filter_map(move |attr| attr.strip_prefix(&[name, b'='][..]))
}

/// A server should send each attribute once; of repeated ones the last counts.
fn last_attribute(message: &[u8], name: u8) -> Option<&[u8]> {
    attributes(message, name).last()
}

fn parse_u32(text: &[u8]) -> Option<u32> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}
