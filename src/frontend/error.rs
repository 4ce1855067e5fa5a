//! Session errors and the one place that decides what the client is told.

use std::io;

use crate::backend::BackendError;
use crate::pool::PoolError;
use crate::router::RouteError;
use crate::wire::{sqlstate, ErrorFields, WireError};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client connection: {0}")]
    ClientIo(io::Error),
    /// The TLS handshake with the client failed; rustls told the client why
    /// (an alert), so nothing more is said.
    #[error("TLS handshake with the client: {0}")]
    ClientTls(io::Error),
    #[error("client protocol violation: {0}")]
    ClientProtocol(#[from] WireError),
    #[error("{0}")]
    Route(#[from] RouteError),
    #[error("{0}")]
    Pool(#[from] PoolError),
    #[error("server connection: {0}")]
    ServerIo(io::Error),
    #[error("server protocol violation: {0}")]
    ServerProtocol(WireError),
    /// pgrelay cannot tell what the server connection owes to whom; it was
    /// closed rather than relayed from.
    #[error("pgrelay lost track of the server connection's answers ({0}); it was closed and the transaction in progress is lost")]
    ServerDesync(&'static str),
    /// The server ended the connection with its own FATAL error, which the
    /// client has already received.
    #[error("the server closed the connection after a FATAL error")]
    ServerEnded,
    #[error("server connection to {node} closed unexpectedly; the transaction in progress is lost")]
    ServerClosed { node: String },
    /// The server sent the FATAL error it sends as it goes away (shutdown,
    /// crash, recovery); pgrelay did not relay it.
    #[error("the server {node} ended the connection: {}", .fields.message)]
    ServerGone { node: String, fields: ErrorFields },
    /// The server connection was lost with session state the client relies on.
    #[error(
        "the server connection to {node} was lost ({cause}), and with it this client's session state ({state}); \
         reconnect to go on"
    )]
    PinnedStateLost { node: String, state: &'static str, cause: String },
    /// A client in a block lost with its server sent what pgrelay cannot
    /// answer as a server would (a transaction-control statement in extended
    /// protocol, or one followed by more statements in one Query).
    #[error(
        "this client's transaction block was lost with its server connection, and pgrelay cannot answer this \
         request as a server would; send ROLLBACK alone to end the block"
    )]
    LostBlockUnanswerable,
    #[error(
        "server connections to {node} were closed because it is no longer the primary (failover or split brain); \
         the transaction in progress is lost"
    )]
    NodeFenced { node: String },
    #[error("the server rejected this client's startup settings: {}", .0.message)]
    SetupFailed(ErrorFields),
    #[error("pgrelay is shutting down")]
    Shutdown,
    #[error("client_login_timeout ({0:?}) expired before login finished")]
    LoginTimeout(std::time::Duration),
    #[error("{message}")]
    Login { code: &'static str, message: String },
    #[error("could not look the user up: {0}")]
    UserLookup(#[from] crate::auth::LookupError),
    #[error("terminating connection due to idle-session timeout (client_idle_timeout = {0:?})")]
    ClientIdleTimeout(std::time::Duration),
    #[error(
        "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout = {0:?}); \
         the transaction was rolled back"
    )]
    IdleTransactionTimeout(std::time::Duration),
    /// The query was cancelled for query_timeout and did not end.
    #[error(
        "query_timeout ({timeout:?}) expired and the query did not end within {waited:?} of being cancelled; \
         its server connection was closed and the transaction in progress is lost"
    )]
    QueryNotCancelled { timeout: std::time::Duration, waited: std::time::Duration },
}

impl SessionError {
    /// SQLSTATE for the FATAL error the client gets, or None when the client
    /// is gone and there is nobody to tell.
    pub fn sqlstate(&self) -> Option<String> {
        let code = match self {
            SessionError::ClientIo(_) | SessionError::ClientTls(_) | SessionError::ServerEnded => return None,
            SessionError::ClientProtocol(WireError::NoUser) => sqlstate::INVALID_AUTHORIZATION,
            SessionError::ClientProtocol(_) => sqlstate::PROTOCOL_VIOLATION,
            SessionError::Route(_) => sqlstate::CONNECTION_FAILURE,
            SessionError::Pool(PoolError::Connect(BackendError::Server(fields))) if !fields.code.is_empty() => {
                return Some(fields.code.clone())
            }
            SessionError::Pool(_) => sqlstate::CONNECTION_FAILURE,
            SessionError::ServerIo(_)
            | SessionError::ServerClosed { .. }
            | SessionError::NodeFenced { .. }
            | SessionError::PinnedStateLost { .. }
            | SessionError::LostBlockUnanswerable => sqlstate::CONNECTION_FAILURE,
            SessionError::ServerGone { fields, .. } => return Some(fields.code.clone()),
            SessionError::ServerProtocol(_) => sqlstate::PROTOCOL_VIOLATION,
            SessionError::ServerDesync(_) => sqlstate::PROTOCOL_VIOLATION,
            SessionError::SetupFailed(fields) if !fields.code.is_empty() => return Some(fields.code.clone()),
            SessionError::SetupFailed(_) => sqlstate::INTERNAL_ERROR,
            SessionError::Shutdown => sqlstate::ADMIN_SHUTDOWN,
            SessionError::LoginTimeout(_) => sqlstate::PROTOCOL_VIOLATION,
            SessionError::Login { code, .. } => code,
            SessionError::UserLookup(e) if e.is_throttled() => sqlstate::TOO_MANY_CONNECTIONS,
            // PostgreSQL's word for a login it cannot check (as for a failing pg_hba or LDAP lookup).
            SessionError::UserLookup(e) if e.server_refused() => sqlstate::INVALID_AUTHORIZATION,
            SessionError::UserLookup(_) => sqlstate::CONNECTION_FAILURE,
            // PostgreSQL's own codes for its idle_session_timeout and
            // idle_in_transaction_session_timeout, which drivers know.
            SessionError::ClientIdleTimeout(_) => sqlstate::IDLE_SESSION_TIMEOUT,
            SessionError::IdleTransactionTimeout(_) => sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            // The connection is gone, as when a server connection is lost.
            SessionError::QueryNotCancelled { .. } => sqlstate::CONNECTION_FAILURE,
        };
        Some(code.to_owned())
    }
}
