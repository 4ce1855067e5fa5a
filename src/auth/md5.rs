//! PostgreSQL's md5 password scheme: `"md5" + md5(password + user)` is what
//! the server stores; the wire answer hashes that again with a 4-byte salt.

use md5::{Digest, Md5};

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The stored form, `md5<32 hex digits>`.
pub fn stored_hash(password: &str, user: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// The answer to an AuthenticationMD5Password challenge, from the stored form.
pub fn salted_answer(stored: &str, salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(&stored.as_bytes()[3..]);
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// True for a string in the stored form.
pub fn is_stored_hash(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}
