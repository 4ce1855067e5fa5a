//! `scram_server`: pgrelay verifying a client's SCRAM-SHA-256 login, driven
//! as the login drives it (ClientAuth with the user from a config), fed the
//! client's two messages.
//!
//! Input: [0x04] FIRST `\n` FINAL.
//! - A leading 0x04 makes it a TLS connection: SCRAM-SHA-256-PLUS is
//!   offered, with [`END_POINT`] as the connection's channel binding data.
//! - FIRST is the client-first-message, sent in a SASLInitialResponse for
//!   SCRAM-SHA-256; when it holds a NUL it is the whole SASLInitialResponse
//!   body instead.
//! - FINAL is the client-final-message (none: the exchange stops after the
//!   first). In it byte 0x01 stands for the nonce pgrelay sent; an ending
//!   `,p=` 0x02 for the right proof of the message before it, and an ending
//!   `,p=` 0x03 X for that proof with bit X flipped.
//!
//! The user's password and salt are random per process: no input knows the
//! proof unless it asks for it with 0x02, so any other proof that is
//! accepted is a bug. So is an accepted exchange whose `c=` is not the gs2
//! header followed, with channel binding, by the connection's data.

use std::sync::{Arc, LazyLock};

use super::scram_oracle::{self as oracle, Keys};
use super::{split_once, substitute};
use crate::auth::scram::ScramSecret;
use crate::auth::{AuthError, AuthStep, ClientAuth, UserDb, UserEntry};
use crate::config::Config;

struct Fixture {
    keys: Keys,
    /// Configured with the verifier only, so pgrelay keeps the ClientKey it
    /// recovers from an accepted proof (to log in to servers with it).
    user: Arc<UserEntry>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let keys = Keys::random(4096);
    let text = format!(
        "[[nodes]]\nname = \"pg0\"\nport = 6432\n\
         [[users]]\nname = \"fuzz\"\npassword = \"{}\"\n\
         [[databases]]\nname = \"fuzz\"\n",
        keys.verifier_text()
    );
    let config = Config::parse(&text).expect("fixture config");
    let users = UserDb::from_config(&config).expect("fixture users");
    Fixture { keys, user: users.get("fuzz").expect("fixture user").clone() }
});

/// How the input's client-final-message asks for its proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// Whatever the input wrote.
    Input,
    Right,
    Flipped(u8),
}

pub fn check(data: &[u8]) {
    let fixture = &*FIXTURE;
    run(fixture, data);
    // Only a right proof ever sets the key pgrelay logs in to servers with.
    match fixture.user.server.scram_secret() {
        Ok(ScramSecret::ClientKey { client_key, .. }) => {
            assert_eq!(client_key, fixture.keys.client_key, "a wrong ClientKey was stored")
        }
        Ok(ScramSecret::Password(_)) => panic!("the user has no password"),
        Err(e) => assert!(matches!(e, AuthError::NoServerCredentials(_)), "{e}"),
    }
}

/// The `tls-server-end-point` data of the TLS connection inputs may ask for.
const END_POINT: [u8; 32] = [0xab; 32];

fn run(fixture: &Fixture, data: &[u8]) {
    let (tls, data) = match data.split_first() {
        Some((0x04, rest)) => (true, rest),
        _ => (false, data),
    };
    let (first, final_template) = split_once(data, b'\n');
    let (mut auth, step) = ClientAuth::start(fixture.user.clone(), tls.then_some(&END_POINT[..]));
    let AuthStep::Continue(offer) = step else { panic!("a SCRAM user was let in without a password") };
    let expected_offer: &[u8] = match tls {
        true => b"R\0\0\0\x2a\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
        false => b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0",
    };
    assert_eq!(&offer[..], expected_offer, "AuthenticationSASL");
    let initial = if first.contains(&0) {
        first.to_vec()
    } else {
        [&b"SCRAM-SHA-256\0"[..], &(first.len() as u32).to_be_bytes(), first].concat()
    };
    let server_first = match auth.step(&initial) {
        Ok(AuthStep::Continue(msg)) => msg,
        Ok(AuthStep::Done(_)) => panic!("authenticated by a SASLInitialResponse alone"),
        Err(_) => return,
    };
    // The client-first-message is what follows the mechanism and the length.
    let client_first = &initial[initial.iter().position(|&b| b == 0).expect("mechanism") + 5..];
    let bound = tls && initial.starts_with(b"SCRAM-SHA-256-PLUS\0");
    let gs2: &[u8] = match (bound, tls) {
        (true, _) => b"p=tls-server-end-point,,",
        (false, true) => b"n,,",
        (false, false) if client_first.starts_with(b"y,,") => b"y,,",
        (false, false) => b"n,,",
    };
    let client_first_bare = client_first
        .strip_prefix(gs2)
        .expect("only the gs2 header that fits the mechanism and the connection is accepted, without authzid");
    let expected_binding = oracle::b64(&[gs2, if bound { &END_POINT[..] } else { &[][..] }].concat());
    let server_first = oracle::authentication_data(&server_first, 11);
    let nonce = oracle::attribute(server_first, b'r').expect("server nonce");
    let client_nonce = oracle::attribute(client_first_bare, b'r').expect("an accepted client-first has a nonce");
    assert!(nonce.len() > client_nonce.len() && nonce.starts_with(client_nonce), "r= is the client's nonce and more");
    let expected = format!("r={},s={},i=4096", String::from_utf8_lossy(nonce), oracle::b64(&fixture.keys.salt));
    assert_eq!(server_first, expected.as_bytes(), "server-first-message");

    let Some(template) = final_template else { return };
    let template = substitute(template, 1, nonce);
    let (without_proof, proof) = if let Some(head) = template.strip_suffix(b",p=\x02") {
        (head, Proof::Right)
    } else if template.len() >= 5 && template[template.len() - 5..template.len() - 1] == *b",p=\x03" {
        (&template[..template.len() - 5], Proof::Flipped(template[template.len() - 1]))
    } else {
        (&template[..], Proof::Input)
    };
    let auth_message = oracle::auth_message(client_first_bare, server_first, without_proof);
    let right = fixture.keys.client_proof(&auth_message);
    let client_final = match proof {
        Proof::Input => template.clone(),
        Proof::Right => [without_proof, b",p=", oracle::b64(&right).as_bytes()].concat(),
        Proof::Flipped(bit) => [without_proof, b",p=", oracle::b64(&oracle::flip(right, bit)).as_bytes()].concat(),
    };
    match auth.step(&client_final) {
        Ok(AuthStep::Done(msg)) => {
            assert_eq!(proof, Proof::Right, "accepted a proof that is not the password's: {client_final:?}");
            let binding = oracle::attribute(without_proof, b'c');
            assert_eq!(binding, Some(expected_binding.as_bytes()), "accepted channel binding data: {client_final:?}");
            let signature = fixture.keys.server_signature(&auth_message);
            let server_final = oracle::authentication_data(&msg, 12);
            assert_eq!(server_final, format!("v={}", oracle::b64(&signature)).as_bytes(), "ServerSignature");
        }
        Ok(AuthStep::Continue(_)) => panic!("a third SCRAM message was asked for"),
        Err(AuthError::WrongPassword) => {
            assert_ne!(proof, Proof::Right, "the right proof of {client_final:?} was refused")
        }
        Err(_) => {}
    }
}
