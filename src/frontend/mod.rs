//! The client side: listeners, login, and the per-client session that
//! batches requests, routes them, leases server connections and relays.
//! What sessions share (the `Context`, the client registry, cancel keys,
//! admission counts) is `app`'s; a login that names the admin console is
//! handed, as an `app::AdminLogin`, to the handler the listener was given.

mod checkout;
mod error;
mod listener;
mod prepared;
mod session;
mod startup;
mod welcome;

pub use error::SessionError;
pub use listener::{dispatch, serve, serve_handed, Accepted, ConsoleHandler, Dispatch};
pub use startup::ADMIN_DATABASES;
