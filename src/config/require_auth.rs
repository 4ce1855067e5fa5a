//! `server_require_auth`: which authentication a server may ask pgrelay for,
//! written as libpq's `require_auth` is (`"scram-sha-256,none"`, or
//! negated, `"!password,!md5"`). Only the methods pgrelay can answer exist.

use std::fmt;

/// An authentication method a server may ask for, by libpq's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAuthMethod {
    /// The password in clear (AuthenticationCleartextPassword).
    Password,
    /// md5 of the password (AuthenticationMD5Password).
    Md5,
    /// SCRAM-SHA-256 (AuthenticationSASL).
    ScramSha256,
    /// No challenge: the server accepts the login at once (trust).
    None,
}

impl ServerAuthMethod {
    pub const ALL: [ServerAuthMethod; 4] =
        [ServerAuthMethod::Password, ServerAuthMethod::Md5, ServerAuthMethod::ScramSha256, ServerAuthMethod::None];

    pub fn name(self) -> &'static str {
        match self {
            ServerAuthMethod::Password => "password",
            ServerAuthMethod::Md5 => "md5",
            ServerAuthMethod::ScramSha256 => "scram-sha-256",
            ServerAuthMethod::None => "none",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for ServerAuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The methods a server may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequireAuth {
    allowed: u8,
}

impl RequireAuth {
    /// Nothing sent in clear or as md5 unless the configuration says so.
    pub const DEFAULT: RequireAuth =
        RequireAuth { allowed: 1 << ServerAuthMethod::ScramSha256 as u8 | 1 << ServerAuthMethod::None as u8 };

    pub fn allows(self, method: ServerAuthMethod) -> bool {
        self.allowed & method.bit() != 0
    }

    /// Parses a comma-separated list of method names, all plain (the server
    /// must use one of them) or all negated with `!` (it must use none of
    /// them), as libpq's `require_auth`. Errors are the tail of a message.
    pub fn parse(text: &str) -> Result<RequireAuth, String> {
        let mut listed = 0u8;
        let mut negated = None;
        for item in text.split(',').map(str::trim) {
            let (is_negated, name) = match item.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, item),
            };
            let method = ServerAuthMethod::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
                let hint = if ["gss", "sspi", "creds"].contains(&name) { " (pgrelay cannot answer it)" } else { "" };
                format!(
                    "unknown method {name:?}{hint} in {text:?} (expected a comma-separated list of password, md5, \
                     scram-sha-256, none, or all of them negated with \"!\")"
                )
            })?;
            if *negated.get_or_insert(is_negated) != is_negated {
                return Err(format!("{text:?} mixes negated and plain methods; use one form or the other"));
            }
            if listed & method.bit() != 0 {
                return Err(format!("{text:?} names {name:?} twice"));
            }
            listed |= method.bit();
        }
        let all = ServerAuthMethod::ALL.iter().fold(0, |acc, m| acc | m.bit());
        let allowed = if negated == Some(true) { all & !listed } else { listed };
        if allowed == 0 {
            return Err(format!("{text:?} allows no method at all: every login to the servers would fail"));
        }
        Ok(RequireAuth { allowed })
    }
}

impl fmt::Display for RequireAuth {
    /// The allowed methods as a plain list ("nothing" when none is).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = ServerAuthMethod::ALL.iter().filter(|m| self.allows(**m)).map(|m| m.name()).collect();
        if names.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&names.join(","))
        }
    }
}
