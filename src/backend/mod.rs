//! Server connections: connect and authenticate, remember what the server
//! reported at startup, and track each connection's protocol state.

mod conn;
mod server_statements;
mod statements;
mod stream;
#[cfg(test)]
mod tests;
pub mod tracker;
pub mod txeffect;

pub use conn::{BackendError, BackendKey, ClientSettings, ServerConn, ServerParams, ServerTarget};
pub use server_statements::ServerStatements;
pub use statements::{Statement, StatementContext, StatementRegistry};
pub use stream::TlsError;
pub use tracker::{CopyInterleaved, CopyState, Expect, InFlight, Origin, Synthetic, Tracker, Undone, Verdict};
pub use txeffect::{StatementKind, TxEffect};
