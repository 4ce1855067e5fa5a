//! SCRAM-SHA-256 as RFC 5802 and RFC 7677 define it, written out again
//! from the RFCs for the SCRAM targets to check pgrelay's side against.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The keys of one password, salt and iteration count.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub password: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub client_key: [u8; 32],
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl Keys {
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Keys {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Keys {
            password: password.to_owned(),
            salt: salt.to_vec(),
            iterations,
            client_key,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// A random password with a random salt: nothing outside this process knows them.
    pub fn random(iterations: u32) -> Keys {
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        Keys::derive(&password, &salt, iterations)
    }

    /// As `pg_authid.rolpassword` holds it.
    pub fn verifier_text(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage).
    pub fn client_proof(&self, auth_message: &[u8]) -> [u8; 32] {
        let signature = hmac(&self.stored_key, auth_message);
        std::array::from_fn(|i| self.client_key[i] ^ signature[i])
    }

    /// ServerSignature = HMAC(ServerKey, AuthMessage).
    pub fn server_signature(&self, auth_message: &[u8]) -> [u8; 32] {
        hmac(&self.server_key, auth_message)
    }
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// AuthMessage = client-first-message-bare "," server-first-message "," client-final-message-without-proof.
pub(super) fn auth_message(
    client_first_bare: &[u8],
    server_first: &[u8],
    client_final_without_proof: &[u8],
) -> Vec<u8> {
    [client_first_bare, server_first, client_final_without_proof].join(&b","[..])
}

pub(super) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// `bytes` with bit `bit` flipped.
pub(super) fn flip(mut bytes: [u8; 32], bit: u8) -> [u8; 32] {
    bytes[usize::from(bit / 8)] ^= 1 << (bit % 8);
    bytes
}

/// The value of the first `name=` attribute of a comma-separated SCRAM message.
pub(super) fn attribute(message: &[u8], name: u8) -> Option<&[u8]> {
    message.split(|&b| b == b',').find_map(|attr| attr.strip_prefix(&[name, b'='][..]))
}

/// The data of a whole Authentication message of type `code` (11:
/// SASLContinue, 12: SASLFinal).
pub(super) fn authentication_data(msg: &[u8], code: u32) -> &[u8] {
    assert_eq!(msg[0], b'R', "an Authentication message");
    assert_eq!(u32::from_be_bytes(msg[1..5].try_into().expect("length")) as usize, msg.len() - 1, "its length");
    assert_eq!(u32::from_be_bytes(msg[5..9].try_into().expect("type")), code, "its type");
    &msg[9..]
}
