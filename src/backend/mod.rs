//! Server connections: connect and authenticate, remember what the server
//! reported at startup, and track each connection's protocol state.

mod conn;
mod statements;
#[cfg(test)]
mod tests;
pub mod tracker;

pub use conn::{BackendError, BackendKey, ServerConn, ServerParams, ServerTarget};
pub use statements::{Statement, StatementRegistry};
pub use tracker::{CopyState, Expect, Origin, Synthetic, Tracker, Verdict};
