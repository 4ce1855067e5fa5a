//! Who may log in and how: the user list from config, the client-facing
//! verification (SCRAM-SHA-256, md5, trust) as a sans-IO state machine, and
//! the credentials pgrelay answers servers with.

mod lookup;
pub mod md5;
pub mod scram;
pub mod server_login;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use rand::Rng;

use crate::config::{AuthType, Config};
use crate::wire;
pub use lookup::{LookupCounters, LookupError, LookupTarget, UserLookup};
use scram::{Binding, PasswordSecret, ScramSecret, ScramServer, ScramVerifier};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed")]
    WrongPassword,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    #[error("SCRAM channel binding: {0}")]
    ChannelBinding(&'static str),
    #[error("the server's SCRAM salt or iteration count differs from the verifier pgrelay has; set server_password for this user")]
    VerifierMismatch,
    #[error("the server's SCRAM signature does not match: it does not know this password")]
    ServerSignature,
    #[error("no credentials to log in to the server: {0}")]
    NoServerCredentials(&'static str),
    #[error("the server asks for SCRAM with 0 iterations, which proves nothing")]
    ZeroIterations,
    #[error(
        "the server asks for SCRAM with {asked} iterations, more than server_scram_max_iterations = {max} \
         (raise it if the server's verifiers really use that many)"
    )]
    TooManyIterations { asked: u32, max: u32 },
}

/// How a client proves who it is.
#[derive(Debug, Clone)]
pub enum ClientSecret {
    Trust,
    Md5 {
        stored: String,
    },
    Scram(ScramVerifier),
    /// A user pgrelay does not know: challenged as a real user of the usual
    /// method would be, and always answered as a wrong password, so the
    /// wire never tells which user names exist.
    Unknown(Mock),
}

/// The challenge an unknown user gets.
#[derive(Debug, Clone)]
pub enum Mock {
    Md5,
    Scram(ScramVerifier),
}

/// What pgrelay logs in to servers with, for one user.
#[derive(Debug)]
pub struct ServerCredentials {
    pub user: String,
    secret: ServerSecret,
}

#[derive(Debug)]
enum ServerSecret {
    /// A plain password, and which key gave it.
    Password(PasswordSecret, PasswordOrigin),
    /// Only a SCRAM verifier is known: log in with the ClientKey recovered
    /// from a client's proof (available once a client has logged in).
    ClientKey { verifier: ScramVerifier, client_key: Mutex<Option<[u8; 32]>> },
    /// Only the user's md5 hash is known: it answers md5, nothing else.
    Md5Hash(String),
    /// No password: only a server that asks for none takes the login.
    None,
}

/// Which key a server login's plain password comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PasswordOrigin {
    Own,
    ServerPassword,
    Cluster,
}

/// Why a user without a password for the servers has none, said where a
/// server asks for one: the monitors' password is never used unasked.
const NO_SERVER_PASSWORD: &str = "the user has no password for the servers (no plain password or SCRAM verifier, no \
     server_password, and server_password_from_cluster is off: [cluster] password is never used unless it says so)";

impl ServerCredentials {
    pub fn scram_secret(&self) -> Result<ScramSecret, AuthError> {
        match &self.secret {
            ServerSecret::Password(p, _) => Ok(ScramSecret::Password(p.clone())),
            ServerSecret::ClientKey { verifier, client_key } => {
                let key = client_key.lock().expect("client key lock").ok_or(AuthError::NoServerCredentials(
                    "the user's password is a SCRAM verifier and no client has logged in with it yet",
                ))?;
                Ok(ScramSecret::ClientKey { client_key: key, verifier: verifier.clone() })
            }
            ServerSecret::Md5Hash(_) => Err(AuthError::NoServerCredentials(
                "the server asks for SCRAM but only the user's md5 hash is configured (set server_password)",
            )),
            ServerSecret::None => Err(AuthError::NoServerCredentials(NO_SERVER_PASSWORD)),
        }
    }

    /// The password for cleartext server auth.
    pub fn password(&self) -> Result<&str, AuthError> {
        match &self.secret {
            ServerSecret::Password(p, _) => Ok(&p.password),
            ServerSecret::ClientKey { .. } | ServerSecret::Md5Hash(_) => Err(AuthError::NoServerCredentials(
                "the server asks for the password in clear but only a SCRAM verifier or md5 hash is configured \
                 (set server_password)",
            )),
            ServerSecret::None => Err(AuthError::NoServerCredentials(NO_SERVER_PASSWORD)),
        }
    }

    /// The answer to an md5 challenge with `salt`.
    pub fn md5_answer(&self, salt: [u8; 4]) -> Result<String, AuthError> {
        let stored = match &self.secret {
            ServerSecret::Password(p, _) => md5::stored_hash(&p.password, &self.user),
            ServerSecret::Md5Hash(stored) => stored.clone(),
            ServerSecret::ClientKey { .. } => {
                return Err(AuthError::NoServerCredentials(
                    "the server asks for md5 but only a SCRAM verifier is configured (set server_password)",
                ))
            }
            ServerSecret::None => return Err(AuthError::NoServerCredentials(NO_SERVER_PASSWORD)),
        };
        Ok(md5::salted_answer(&stored, salt))
    }

    /// What the servers get asked with, in words (for `pgrelay check`).
    pub fn describe(&self) -> &'static str {
        match &self.secret {
            ServerSecret::Password(_, PasswordOrigin::Own) => "its own password",
            ServerSecret::Password(_, PasswordOrigin::ServerPassword) => "its server_password",
            ServerSecret::Password(_, PasswordOrigin::Cluster) => "[cluster] password (server_password_from_cluster)",
            ServerSecret::ClientKey { .. } => "the ClientKey recovered from its clients' SCRAM proofs",
            ServerSecret::Md5Hash(_) => "its md5 hash (answers md5 only)",
            ServerSecret::None => "no password (only servers that ask for none take it)",
        }
    }

    /// Whether `other` logs in with the same secret (a ClientKey learnt
    /// for one verifier still fits the other).
    pub fn same_secret(&self, other: &ServerCredentials) -> bool {
        self.user == other.user
            && match (&self.secret, &other.secret) {
                (ServerSecret::Password(a, x), ServerSecret::Password(b, y)) => a.password == b.password && x == y,
                (ServerSecret::ClientKey { verifier: a, .. }, ServerSecret::ClientKey { verifier: b, .. }) => a == b,
                (ServerSecret::Md5Hash(a), ServerSecret::Md5Hash(b)) => a == b,
                (ServerSecret::None, ServerSecret::None) => true,
                _ => false,
            }
    }

    fn remember_client_key(&self, key: [u8; 32]) {
        if let ServerSecret::ClientKey { client_key, .. } = &self.secret {
            *client_key.lock().expect("client key lock") = Some(key);
        }
    }
}

/// One configured user.
#[derive(Debug)]
pub struct UserEntry {
    pub name: String,
    pub client: ClientSecret,
    pub server: ServerCredentials,
}

/// All configured users, by name.
#[derive(Debug, Default)]
pub struct UserDb {
    users: HashMap<String, Arc<UserEntry>>,
    /// Unknown users are challenged with md5 rather than SCRAM: when more
    /// configured users use md5 (as PostgreSQL picks its usual password
    /// type, so that they blend in).
    mock_md5: bool,
    /// `[auth]`: users from the database (its cache lives as long as this list).
    lookup: Option<Arc<UserLookup>>,
}

/// The secret unknown users' SCRAM salts are derived from: random, and the
/// same for the whole process (across reloads), as a real user's salt is.
fn mock_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| rand::thread_rng().gen())
}

impl UserDb {
    pub fn from_config(config: &Config) -> Result<UserDb, String> {
        let mut users = HashMap::new();
        for user in &config.users {
            let entry = user_entry(user, &config.cluster.password)?;
            users.insert(user.name.clone(), Arc::new(entry));
        }
        let md5 = users.values().filter(|u| matches!(u.client, ClientSecret::Md5 { .. })).count();
        let scram = users.values().filter(|u| matches!(u.client, ClientSecret::Scram(_))).count();
        Ok(UserDb { users, mock_md5: md5 > scram, lookup: None })
    }

    /// Looks users that are not configured up with `lookup`; unknown users
    /// are then challenged as its `auth_type` says.
    pub fn with_lookup(mut self, lookup: Option<Arc<UserLookup>>) -> UserDb {
        if let Some(lookup) = &lookup {
            self.mock_md5 = lookup.auth_type() == AuthType::Md5;
        }
        self.lookup = lookup;
        self
    }

    /// Where users that are not configured are looked up, if anywhere.
    pub fn lookup(&self) -> Option<&Arc<UserLookup>> {
        self.lookup.as_ref()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<UserEntry>> {
        self.users.get(name)
    }

    /// A stand-in for a user that is not configured: authenticating it
    /// always fails with [`AuthError::WrongPassword`], after the same
    /// exchange a configured user with a wrong password goes through.
    pub fn unknown(&self, name: &str) -> Arc<UserEntry> {
        let mock = if self.mock_md5 { Mock::Md5 } else { Mock::Scram(ScramVerifier::mock(name, mock_secret())) };
        Arc::new(UserEntry {
            name: name.to_owned(),
            client: ClientSecret::Unknown(mock),
            server: ServerCredentials { user: name.to_owned(), secret: ServerSecret::None },
        })
    }
}

/// One `[[users]]` entry (or a looked-up user, given as one) as pgrelay checks it.
fn user_entry(user: &crate::config::User, cluster_password: &str) -> Result<UserEntry, String> {
    let password = user.password.as_deref();
    let verifier = password.and_then(ScramVerifier::parse);
    if password.is_some_and(|p| p.starts_with("SCRAM-SHA-256$")) && verifier.is_none() {
        return Err(format!("users.{}.password: not a valid SCRAM-SHA-256 verifier", user.name));
    }
    let client = match (user.auth_type, password) {
        (AuthType::Trust, _) => ClientSecret::Trust,
        (AuthType::Md5, Some(p)) if md5::is_stored_hash(p) => ClientSecret::Md5 { stored: p.to_owned() },
        (AuthType::Md5, Some(p)) if verifier.is_none() => ClientSecret::Md5 { stored: md5::stored_hash(p, &user.name) },
        (AuthType::ScramSha256, Some(p)) => {
            ClientSecret::Scram(verifier.clone().unwrap_or_else(|| ScramVerifier::from_password(p)))
        }
        _ => return Err(format!("users.{}.password: required for auth_type {:?}", user.name, user.auth_type)),
    };
    let server_user = user.server_user.clone().unwrap_or_else(|| user.name.clone());
    let secret = server_secret(user, cluster_password, verifier, &server_user);
    let server = ServerCredentials { user: server_user, secret };
    Ok(UserEntry { name: user.name.clone(), client, server })
}

/// A user found by `auth_query` with `passwd` (a SCRAM verifier, an md5
/// hash, or plain text), checked as PostgreSQL checks it under a pg_hba
/// method of `auth_type`: `md5` takes a SCRAM verifier too (with SCRAM),
/// `scram-sha-256` cannot use an md5 hash, which then fails like a wrong
/// password. `None` when the password cannot serve.
pub fn looked_up_user(name: &str, passwd: &str, auth_type: AuthType) -> Option<UserEntry> {
    let scram_verifier = ScramVerifier::parse(passwd).is_some();
    if passwd.starts_with("SCRAM-SHA-256$") && !scram_verifier {
        return None;
    }
    let auth_type = match auth_type {
        AuthType::ScramSha256 if md5::is_stored_hash(passwd) => return None,
        AuthType::Md5 if scram_verifier => AuthType::ScramSha256,
        other => other,
    };
    let user = crate::config::User {
        name: name.to_owned(),
        password: Some(passwd.to_owned()),
        auth_type,
        server_user: None,
        server_password: None,
        server_password_from_cluster: false,
        pool_size: None,
        pool_mode: None,
        max_user_connections: None,
    };
    user_entry(&user, "").ok()
}

/// What `user` logs in to the servers with as `server_user`: only what its
/// own entry says, never the monitors' password unless it asks for it.
fn server_secret(
    user: &crate::config::User,
    cluster_password: &str,
    verifier: Option<ScramVerifier>,
    server_user: &str,
) -> ServerSecret {
    let password = |p: &str, origin| ServerSecret::Password(PasswordSecret::new(p), origin);
    match (&user.server_password, user.password.as_deref()) {
        (Some(p), _) => password(p, PasswordOrigin::ServerPassword),
        (None, _) if user.server_password_from_cluster => password(cluster_password, PasswordOrigin::Cluster),
        (None, Some(_)) if verifier.is_some() => {
            ServerSecret::ClientKey { verifier: verifier.expect("checked"), client_key: Mutex::new(None) }
        }
        // An md5 hash is salted with the user name: it only fits that name.
        (None, Some(p)) if md5::is_stored_hash(p) && server_user == user.name => ServerSecret::Md5Hash(p.to_owned()),
        (None, Some(p)) if !md5::is_stored_hash(p) => password(p, PasswordOrigin::Own),
        (None, _) => ServerSecret::None,
    }
}

impl UserEntry {
    /// A stand-in from [`UserDb::unknown`], not a configured user.
    pub fn is_unknown(&self) -> bool {
        matches!(self.client, ClientSecret::Unknown(_))
    }
}

/// One step of client authentication.
#[derive(Debug)]
pub enum AuthStep {
    /// Send these bytes and wait for the client's next password message.
    Continue(Bytes),
    /// Authenticated; send these bytes (possibly empty) before AuthenticationOk.
    Done(Bytes),
}

/// Client-facing authentication of one connection.
#[derive(Debug)]
pub struct ClientAuth {
    user: Arc<UserEntry>,
    state: ClientAuthState,
    /// `tls-server-end-point` data of a TLS connection (SCRAM-SHA-256-PLUS offered).
    channel_binding: Option<Vec<u8>>,
}

#[derive(Debug)]
enum ClientAuthState {
    Md5 { salt: [u8; 4] },
    ScramStart,
    ScramFinal(ScramServer),
    Finished,
}

impl ClientAuth {
    /// Starts authentication; `Done` right away for trust. With
    /// `channel_binding` (a TLS connection), SCRAM is offered as
    /// SCRAM-SHA-256-PLUS too, first, as PostgreSQL offers it.
    pub fn start(user: Arc<UserEntry>, channel_binding: Option<&[u8]>) -> (ClientAuth, AuthStep) {
        let mut out = BytesMut::new();
        let (state, step) = match &user.client {
            ClientSecret::Trust => (ClientAuthState::Finished, AuthStep::Done(Bytes::new())),
            ClientSecret::Md5 { .. } | ClientSecret::Unknown(Mock::Md5) => {
                let salt: [u8; 4] = rand::thread_rng().gen();
                wire::put_auth_md5(&mut out, salt);
                (ClientAuthState::Md5 { salt }, AuthStep::Continue(out.freeze()))
            }
            ClientSecret::Scram(_) | ClientSecret::Unknown(Mock::Scram(_)) => {
                let mechanisms: &[&str] = match channel_binding {
                    Some(_) => &[scram::MECHANISM_PLUS, scram::MECHANISM],
                    None => &[scram::MECHANISM],
                };
                wire::put_auth_sasl(&mut out, mechanisms);
                (ClientAuthState::ScramStart, AuthStep::Continue(out.freeze()))
            }
        };
        (ClientAuth { user, state, channel_binding: channel_binding.map(<[u8]>::to_vec) }, step)
    }

    /// Feeds the body of the client's password message ('p'). An unknown
    /// user's answers are checked like a real user's (malformed ones fail
    /// the same way), and even a valid one fails as a wrong password.
    pub fn step(&mut self, body: &[u8]) -> Result<AuthStep, AuthError> {
        let mut out = BytesMut::new();
        match (std::mem::replace(&mut self.state, ClientAuthState::Finished), &self.user.client) {
            (ClientAuthState::Md5 { salt }, ClientSecret::Md5 { stored }) => {
                let (answer, _) = wire::read_cstr(body).ok_or(AuthError::Malformed("password message"))?;
                let expected = md5::salted_answer(stored, salt);
                if !constant_time_eq(answer, expected.as_bytes()) {
                    return Err(AuthError::WrongPassword);
                }
                Ok(AuthStep::Done(Bytes::new()))
            }
            (ClientAuthState::Md5 { .. }, ClientSecret::Unknown(Mock::Md5)) => {
                wire::read_cstr(body).ok_or(AuthError::Malformed("password message"))?;
                Err(AuthError::WrongPassword)
            }
            (
                ClientAuthState::ScramStart,
                ClientSecret::Scram(verifier) | ClientSecret::Unknown(Mock::Scram(verifier)),
            ) => {
                let (mechanism, rest) = wire::read_cstr(body).ok_or(AuthError::Malformed("SASLInitialResponse"))?;
                let data = self.channel_binding.as_deref();
                let chosen = match mechanism {
                    m if m == scram::MECHANISM.as_bytes() => false,
                    m if m == scram::MECHANISM_PLUS.as_bytes() && data.is_some() => true,
                    _ => return Err(AuthError::Unsupported("a SASL mechanism pgrelay did not offer")),
                };
                if rest.len() < 4 {
                    return Err(AuthError::Malformed("SASLInitialResponse"));
                }
                let (server, server_first) = ScramServer::start(&rest[4..], verifier, Binding { chosen, data })?;
                wire::put_auth_sasl_continue(&mut out, server_first.as_bytes());
                self.state = ClientAuthState::ScramFinal(server);
                Ok(AuthStep::Continue(out.freeze()))
            }
            (ClientAuthState::ScramFinal(server), ClientSecret::Scram(verifier)) => {
                let verified = server.finish(body, verifier)?;
                self.user.server.remember_client_key(verified.client_key);
                wire::put_auth_sasl_final(&mut out, verified.server_final.as_bytes());
                Ok(AuthStep::Done(out.freeze()))
            }
            (ClientAuthState::ScramFinal(server), ClientSecret::Unknown(Mock::Scram(verifier))) => {
                server.finish(body, verifier)?;
                Err(AuthError::WrongPassword)
            }
            _ => Err(AuthError::Malformed("authentication message out of order")),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
