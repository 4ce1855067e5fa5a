//! SCRAM-SHA-256 (RFC 5802/7677 as PostgreSQL uses it): verifiers, the
//! verifying side pgrelay runs for its clients (with `tls-server-end-point`
//! channel binding on TLS connections, SCRAM-SHA-256-PLUS), and the
//! answering side it runs against servers. Pure computation, no IO.

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AuthError;

pub const MECHANISM: &str = "SCRAM-SHA-256";
/// SCRAM-SHA-256 bound to the TLS connection it runs on.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel binding type PostgreSQL has (RFC 5929).
const BINDING_TYPE: &str = "tls-server-end-point";
const DEFAULT_ITERATIONS: u32 = 4096;
/// PostgreSQL's salt length, for the verifiers pgrelay makes.
const SALT_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

fn nonce() -> String {
    let mut raw = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut raw);
    B64.encode(raw)
}

/// ClientKey and ServerKey derived from a password.
pub fn derive_keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    (hmac(&salted, &[b"Client Key"]), hmac(&salted, &[b"Server Key"]))
}

/// What PostgreSQL stores in `pg_authid.rolpassword` for a SCRAM password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(text: &str) -> Option<ScramVerifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramVerifier {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// What a user that does not exist is challenged with, as PostgreSQL's
    /// mock authentication does: salt and keys derived from the name and a
    /// per-process `secret`, so one name is offered the same salt every
    /// time, as a real user is; the keys belong to no password.
    pub fn mock(name: &str, secret: &[u8; 32]) -> ScramVerifier {
        let derive = |purpose: &[u8]| hmac(secret, &[purpose, b"\0", name.as_bytes()]);
        ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: derive(b"salt")[..SALT_LEN].to_vec(),
            stored_key: derive(b"stored key"),
            server_key: derive(b"server key"),
        }
    }

    /// A verifier for a plain-text password, with a fresh random salt.
    pub fn from_password(password: &str) -> ScramVerifier {
        ScramVerifier::with_iterations(password, DEFAULT_ITERATIONS)
    }

    /// [`ScramVerifier::from_password`] with another iteration count.
    pub fn with_iterations(password: &str, iterations: u32) -> ScramVerifier {
        let mut salt = vec![0u8; SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        let (client_key, server_key) = derive_keys(password, &salt, iterations);
        ScramVerifier { iterations, salt, stored_key: sha256(&client_key), server_key }
    }

    /// The form `pg_authid.rolpassword` stores (and `ALTER ROLE ... PASSWORD`
    /// takes verbatim). A method, not `Display`, so that no log line formats
    /// a verifier by accident.
    pub fn to_rolpassword(&self) -> String {
        format!(
            "{MECHANISM}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// The verifying side, run against a client. Created when the client's
/// SASLInitialResponse arrives.
#[derive(Debug)]
pub struct ScramServer {
    client_first_bare: String,
    server_first: String,
    combined_nonce: String,
    /// What the client-final-message's `c=` must hold, base64-encoded:
    /// the gs2 header, followed by the channel binding data with PLUS.
    expected_binding: String,
}

/// Channel binding on the connection a SCRAM exchange runs on.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The client chose SCRAM-SHA-256-PLUS.
    pub chosen: bool,
    /// `tls-server-end-point` data of the connection, when it is TLS (the
    /// PLUS mechanism was then offered).
    pub data: Option<&'a [u8]>,
}

/// Result of a verified client proof.
#[derive(Debug)]
pub struct ScramVerified {
    /// Message for AuthenticationSASLFinal.
    pub server_final: String,
    /// The client's ClientKey, recovered from its proof; lets pgrelay log in
    /// to servers that store the same verifier.
    pub client_key: [u8; 32],
}

impl ScramServer {
    /// Takes the client-first-message; returns the state and the server-first-message.
    /// The gs2 header must agree with `binding` as PostgreSQL requires:
    /// "p=tls-server-end-point" exactly with PLUS, and "y" (the client
    /// could bind but thinks the server cannot) only where PLUS was not
    /// offered, since on a TLS connection it means someone removed it.
    pub fn start(
        client_first: &[u8],
        verifier: &ScramVerifier,
        binding: Binding<'_>,
    ) -> Result<(ScramServer, String), AuthError> {
        let text = std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed("SCRAM client-first-message"))?;
        let (flag, rest) = text.split_once(',').ok_or(AuthError::Malformed("SCRAM client-first-message"))?;
        let (authzid, bare) = rest.split_once(',').ok_or(AuthError::Malformed("SCRAM client-first-message"))?;
        if !authzid.is_empty() {
            return Err(AuthError::Unsupported("a SCRAM authorization identity"));
        }
        let gs2 = &text[..flag.len() + authzid.len() + 2];
        let binding_data =
            match (flag, binding.chosen, binding.data) {
                ("n", false, _) | ("y", false, None) => &[][..],
                ("y", false, Some(_)) => {
                    return Err(AuthError::ChannelBinding(
                        "the client supports channel binding but thinks pgrelay does not, which it offered \
                 (was SCRAM-SHA-256-PLUS removed on the way?)",
                    ))
                }
                (flag, false, _) if flag.starts_with("p=") => return Err(AuthError::ChannelBinding(
                    "the client chose SCRAM-SHA-256 without channel binding, but its message includes channel binding",
                )),
                (flag, true, Some(data)) if flag.strip_prefix("p=") == Some(BINDING_TYPE) => data,
                (flag, true, Some(_)) if flag.starts_with("p=") => {
                    return Err(AuthError::Unsupported("a channel binding type other than tls-server-end-point"))
                }
                (_, true, Some(_)) => {
                    return Err(AuthError::ChannelBinding(
                        "the client chose SCRAM-SHA-256-PLUS, but its message does not include channel binding",
                    ))
                }
                (_, true, None) => return Err(AuthError::ChannelBinding("SCRAM-SHA-256-PLUS needs a TLS connection")),
                _ => return Err(AuthError::Malformed("SCRAM client-first-message")),
            };
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(AuthError::Malformed("SCRAM client-first-message"))?;
        let combined_nonce = format!("{client_nonce}{}", nonce());
        let server_first = format!("r={combined_nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
        let state = ScramServer {
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            combined_nonce,
            expected_binding: B64.encode([gs2.as_bytes(), binding_data].concat()),
        };
        Ok((state, server_first))
    }

    /// Checks the client-final-message's proof.
    pub fn finish(self, client_final: &[u8], verifier: &ScramVerifier) -> Result<ScramVerified, AuthError> {
        let text = std::str::from_utf8(client_final).map_err(|_| AuthError::Malformed("SCRAM client-final-message"))?;
        let (without_proof, proof) =
            text.rsplit_once(",p=").ok_or(AuthError::Malformed("SCRAM client-final-message"))?;
        // c= and r= come first and in this order (RFC 5802, and PostgreSQL
        // reads them so); extensions may follow before the proof.
        let mut attributes = without_proof.split(',');
        let channel_binding = attributes.next().and_then(|a| a.strip_prefix("c="));
        let nonce = attributes.next().and_then(|a| a.strip_prefix("r="));
        if nonce != Some(self.combined_nonce.as_str()) {
            return Err(AuthError::Malformed("SCRAM client-final-message"));
        }
        if channel_binding != Some(self.expected_binding.as_str()) {
            return Err(AuthError::ChannelBinding("the channel binding data does not match this TLS connection"));
        }
        let proof: [u8; 32] =
            B64.decode(proof).ok().and_then(|p| p.try_into().ok()).ok_or(AuthError::Malformed("SCRAM proof"))?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = hmac(&verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(&proof, &client_signature);
        if sha256(&client_key) != verifier.stored_key {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&verifier.server_key, &[auth_message.as_bytes()]);
        Ok(ScramVerified { server_final: format!("v={}", B64.encode(server_signature)), client_key })
    }
}

/// What pgrelay proves its identity with.
#[derive(Debug, Clone)]
pub enum ScramSecret {
    Password(PasswordSecret),
    /// A ClientKey recovered from a client, valid for the verifier it was checked against.
    ClientKey {
        client_key: [u8; 32],
        verifier: ScramVerifier,
    },
}

impl ScramSecret {
    pub fn password(password: impl Into<String>) -> ScramSecret {
        ScramSecret::Password(PasswordSecret::new(password))
    }
}

/// A password, with the keys last derived from it: PBKDF2 runs once per
/// (salt, iterations), not once per server connection. Clones share the cache.
#[derive(Debug, Clone)]
pub struct PasswordSecret {
    pub password: String,
    derived: Arc<Mutex<Option<DerivedKeys>>>,
}

impl PasswordSecret {
    pub fn new(password: impl Into<String>) -> PasswordSecret {
        PasswordSecret { password: password.into(), derived: Arc::default() }
    }

    #[cfg(test)]
    pub fn has_keys_for(&self, salt: &[u8], iterations: u32) -> bool {
        let cache = self.derived.lock().expect("derived keys lock");
        cache.as_ref().is_some_and(|d| d.salt == salt && d.iterations == iterations)
    }

    fn keys(&self, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
        if let Some(d) = self.derived.lock().expect("derived keys lock").as_ref() {
            if d.salt == salt && d.iterations == iterations {
                return d.keys;
            }
        }
        // Derived without holding the lock: PBKDF2 takes milliseconds.
        let keys = derive_keys(&self.password, salt, iterations);
        *self.derived.lock().expect("derived keys lock") = Some(DerivedKeys { salt: salt.to_vec(), iterations, keys });
        keys
    }
}

/// ClientKey and ServerKey for one salt and iteration count.
#[derive(Debug)]
struct DerivedKeys {
    salt: Vec<u8>,
    iterations: u32,
    keys: ([u8; 32], [u8; 32]),
}

/// The answering side, run against a server.
#[derive(Debug)]
pub struct ScramClient {
    client_nonce: String,
    client_first_bare: String,
}

/// State after the server-first-message: what to send and what to expect.
#[derive(Debug)]
pub struct ScramClientFinal {
    pub client_final: String,
    expected_server_signature: [u8; 32],
}

impl ScramClient {
    /// Returns the state and the client-first-message.
    pub fn start() -> (ScramClient, String) {
        let client_nonce = nonce();
        let client_first_bare = format!("n=,r={client_nonce}");
        let first = format!("n,,{client_first_bare}");
        (ScramClient { client_nonce, client_first_bare }, first)
    }

    /// Answers the server-first-message. A password's keys are derived with
    /// PBKDF2 (on the caller's thread) only for an iteration count of at
    /// most `max_iterations`; a ClientKey derives nothing, so no cap applies.
    pub fn answer(
        self,
        server_first: &[u8],
        secret: &ScramSecret,
        max_iterations: u32,
    ) -> Result<ScramClientFinal, AuthError> {
        let text = std::str::from_utf8(server_first).map_err(|_| AuthError::Malformed("SCRAM server-first-message"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(AuthError::Malformed("SCRAM server-first-message"));
        };
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(AuthError::Malformed("SCRAM server nonce"));
        }
        if iterations == 0 {
            return Err(AuthError::ZeroIterations);
        }
        let (client_key, server_key) = match secret {
            ScramSecret::Password(_) if iterations > max_iterations => {
                return Err(AuthError::TooManyIterations { asked: iterations, max: max_iterations })
            }
            ScramSecret::Password(secret) => secret.keys(&salt, iterations),
            ScramSecret::ClientKey { client_key, verifier } => {
                if verifier.salt != salt || verifier.iterations != iterations {
                    return Err(AuthError::VerifierMismatch);
                }
                (*client_key, verifier.server_key)
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, text, without_proof);
        let client_signature = hmac(&sha256(&client_key), &[auth_message.as_bytes()]);
        let proof = xor(&client_key, &client_signature);
        Ok(ScramClientFinal {
            client_final: format!("{without_proof},p={}", B64.encode(proof)),
            expected_server_signature: hmac(&server_key, &[auth_message.as_bytes()]),
        })
    }
}

impl ScramClientFinal {
    pub fn verify_server(&self, server_final: &[u8]) -> Result<(), AuthError> {
        let text = std::str::from_utf8(server_final).map_err(|_| AuthError::Malformed("SCRAM server-final-message"))?;
        let signature = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v.split(',').next().unwrap_or(v)).ok())
            .ok_or(AuthError::Malformed("SCRAM server-final-message"))?;
        if signature != self.expected_server_signature {
            return Err(AuthError::ServerSignature);
        }
        Ok(())
    }
}
