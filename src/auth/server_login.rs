//! pgrelay's side of logging in to a server, without IO: which
//! authentication requests it answers (the node's `server_require_auth`),
//! in which order, and that a SCRAM server proves it knows the password
//! (a verified SASLFinal) before its AuthenticationOk is accepted.

use bytes::{Buf, BytesMut};

use super::scram::{ScramClient, ScramClientFinal, MECHANISM};
use super::{AuthError, ServerCredentials};
use crate::config::{RequireAuth, ServerAuthMethod, ServerAuthPolicy};
use crate::wire;

/// Authentication request codes (the first field of an 'R' message).
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;
const AUTH_SASL: u32 = 10;
const AUTH_SASL_CONTINUE: u32 = 11;
const AUTH_SASL_FINAL: u32 = 12;

/// Why pgrelay broke off a login to a server.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    #[error(
        "the server asks for {}, which server_require_auth does not allow for this node (allowed: {allowed}){}",
        asked(*method),
        hint(*method)
    )]
    MethodNotAllowed { method: ServerAuthMethod, allowed: RequireAuth },
    #[error(
        "the server accepted the login before the SCRAM exchange finished: without a verified SASLFinal it has not \
         proved it knows the password"
    )]
    ScramUnfinished,
    #[error("the server sent {0} out of order")]
    OutOfOrder(&'static str),
    #[error("the server asks for authentication request {0}, which pgrelay cannot answer")]
    Unsupported(u32),
    #[error("malformed {0} from the server")]
    Malformed(&'static str),
    #[error("{0}")]
    Auth(#[from] AuthError),
}

fn asked(method: ServerAuthMethod) -> &'static str {
    match method {
        ServerAuthMethod::Password => "the password in clear (password)",
        ServerAuthMethod::Md5 => "md5",
        ServerAuthMethod::ScramSha256 => "scram-sha-256",
        ServerAuthMethod::None => "no authentication at all (none)",
    }
}

fn hint(method: ServerAuthMethod) -> &'static str {
    match method {
        ServerAuthMethod::Md5 => "; md5 is weak: switch the server's pg_hba to scram-sha-256, or allow md5 here",
        ServerAuthMethod::Password | ServerAuthMethod::ScramSha256 | ServerAuthMethod::None => "",
    }
}

/// Where a login stands.
#[derive(Debug)]
enum Stage {
    /// No request answered yet.
    Start,
    /// SASLInitialResponse sent; SASLContinue is due.
    ScramStarted(ScramClient),
    /// SASLResponse sent; SASLFinal is due.
    ScramAnswered(ScramClientFinal),
    /// pgrelay's part is done (a password sent, or the server's SCRAM
    /// signature verified): AuthenticationOk is due.
    Answered,
    /// AuthenticationOk accepted.
    Authenticated,
    /// A request was refused; the login is over.
    Refused,
}

/// One login to a server, fed the server's Authentication messages.
#[derive(Debug)]
pub struct ServerLogin<'a> {
    credentials: &'a ServerCredentials,
    policy: ServerAuthPolicy,
    stage: Stage,
}

impl<'a> ServerLogin<'a> {
    pub fn new(credentials: &'a ServerCredentials, policy: ServerAuthPolicy) -> ServerLogin<'a> {
        ServerLogin { credentials, policy, stage: Stage::Start }
    }

    /// Takes the body of an Authentication message ('R') and appends the
    /// answer, if one is due, to `out`.
    pub fn on_request(&mut self, mut body: &[u8], out: &mut BytesMut) -> Result<(), LoginRefused> {
        if body.len() < 4 {
            return Err(LoginRefused::Malformed("Authentication"));
        }
        let code = body.get_u32();
        // A refused login stays refused: the stage is only put back on success.
        self.stage = match (std::mem::replace(&mut self.stage, Stage::Refused), code) {
            (Stage::Start, AUTH_OK) => {
                self.allow(ServerAuthMethod::None)?;
                Stage::Authenticated
            }
            (Stage::Answered, AUTH_OK) => Stage::Authenticated,
            (Stage::ScramStarted(_) | Stage::ScramAnswered(_), AUTH_OK) => return Err(LoginRefused::ScramUnfinished),
            (Stage::Start, AUTH_CLEARTEXT) => {
                self.allow(ServerAuthMethod::Password)?;
                wire::put_password_message(out, self.credentials.password()?.as_bytes());
                Stage::Answered
            }
            (Stage::Start, AUTH_MD5) => {
                self.allow(ServerAuthMethod::Md5)?;
                let salt: [u8; 4] = body.try_into().map_err(|_| LoginRefused::Malformed("md5 salt"))?;
                wire::put_password_message(out, self.credentials.md5_answer(salt)?.as_bytes());
                Stage::Answered
            }
            (Stage::Start, AUTH_SASL) => {
                self.allow(ServerAuthMethod::ScramSha256)?;
                if !body.split(|&b| b == 0).any(|m| m == MECHANISM.as_bytes()) {
                    return Err(AuthError::Unsupported("a SASL mechanism other than SCRAM-SHA-256").into());
                }
                let (client, first) = ScramClient::start();
                wire::put_sasl_initial_response(out, MECHANISM, first.as_bytes());
                Stage::ScramStarted(client)
            }
            (Stage::ScramStarted(client), AUTH_SASL_CONTINUE) => {
                let secret = self.credentials.scram_secret()?;
                let fin = client.answer(body, &secret, self.policy.scram_max_iterations.get())?;
                wire::put_sasl_response(out, fin.client_final.as_bytes());
                Stage::ScramAnswered(fin)
            }
            (Stage::ScramAnswered(fin), AUTH_SASL_FINAL) => {
                fin.verify_server(body)?;
                Stage::Answered
            }
            (_, AUTH_SASL_CONTINUE) => return Err(LoginRefused::OutOfOrder("SASLContinue")),
            (_, AUTH_SASL_FINAL) => return Err(LoginRefused::OutOfOrder("SASLFinal")),
            (_, AUTH_OK) => return Err(LoginRefused::OutOfOrder("a second AuthenticationOk")),
            (_, AUTH_CLEARTEXT | AUTH_MD5 | AUTH_SASL) => {
                return Err(LoginRefused::OutOfOrder("a second authentication request"))
            }
            (_, other) => return Err(LoginRefused::Unsupported(other)),
        };
        Ok(())
    }

    /// Whether the server accepted the login (AuthenticationOk arrived when due).
    pub fn is_authenticated(&self) -> bool {
        matches!(self.stage, Stage::Authenticated)
    }

    fn allow(&self, method: ServerAuthMethod) -> Result<(), LoginRefused> {
        let allowed = self.policy.require_auth;
        if allowed.allows(method) {
            Ok(())
        } else {
            Err(LoginRefused::MethodNotAllowed { method, allowed })
        }
    }
}

#[cfg(test)]
#[path = "server_login_tests.rs"]
mod tests;
