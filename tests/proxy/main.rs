//! pgrelay in front of a real primary + 2 streaming replicas: routing,
//! authentication, pooling, the protocol, prepared statements, bad input.
//! One cluster serves every test of this binary; each test starts its own
//! pgrelay so pools and settings never leak between tests.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod application_name;
mod auth;
mod auth_query;
mod bad_input;
mod cancel;
mod client_tls;
mod http;
mod keepalive;
mod login;
mod lost;
mod own_statements;
mod pool_controls;
mod pooling;
mod prepared;
mod protocol;
mod routing;
mod server_login;
mod server_tls;
mod stats;
mod timeouts;
mod tools;
mod tracked_settings;
mod workers;
