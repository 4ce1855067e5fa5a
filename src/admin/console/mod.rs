//! The admin console: database `pgrelay` (or `pgbouncer`) speaks simple
//! queries with PgBouncer's SHOW commands and controls.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::frontend::{AdminLogin, Context};
use crate::wire::{self, sqlstate, Severity};

/// Serves one admin console connection until the client leaves.
pub async fn serve(
    _ctx: Arc<Context>,
    mut client: TcpStream,
    _buf: BytesMut,
    _login: AdminLogin,
    _span: tracing::Span,
) {
    let mut out = BytesMut::new();
    wire::put_error_response(&mut out, Severity::Fatal, sqlstate::FEATURE_NOT_SUPPORTED, "admin console", None);
    let _ = client.write_all(&out).await;
}
