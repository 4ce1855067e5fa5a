//! The admin console: a client that logs in to database `pgrelay` (or
//! `pgbouncer`) as one of `[admin] admin_users` or `stats_users` talks to
//! pgrelay itself. It speaks the simple query protocol only and answers
//! PgBouncer's SHOW commands with PgBouncer's columns, pgrelay's own
//! `SHOW NODES`, and the controls PAUSE, RESUME, RELOAD and SHUTDOWN
//! (admin users only).
//!
//! The connection loop lives here; `command` parses, `show`, `connections`
//! and `settings` build the tables, `table` encodes them.

mod command;
mod connections;
mod settings;
mod show;
mod table;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use command::{Command, Show};
use table::Table;

use crate::app::{AdminLogin, Context};
use crate::stream::Stream;
use crate::wire::{self, frontend as tag, sqlstate, Severity, TxStatus, WireError};

/// Largest message the console reads: a command is a few words.
const MAX_CONSOLE_MESSAGE: usize = 64 * 1024;

/// Why a console connection ended.
#[derive(Debug, thiserror::Error)]
enum ConsoleError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] WireError),
    #[error("pgrelay is shutting down")]
    Shutdown,
}

/// One console connection.
struct Console {
    ctx: Arc<Context>,
    login: AdminLogin,
    span: tracing::Span,
    client: Stream,
    buf: BytesMut,
}

/// Serves one admin console connection until the client leaves or pgrelay
/// stops. `buf` holds what the client sent after its login.
pub async fn serve(ctx: Arc<Context>, client: Stream, buf: BytesMut, login: AdminLogin, span: tracing::Span) {
    let mut console = Console { ctx, login, span, client, buf };
    match console.run().await {
        Ok(()) => tracing::debug!(parent: &console.span, "admin console client left"),
        Err(error) => {
            tracing::info!(parent: &console.span, %error, "admin console connection closed");
            let code = match error {
                ConsoleError::Io(_) => return,
                ConsoleError::Protocol(_) => sqlstate::PROTOCOL_VIOLATION,
                ConsoleError::Shutdown => sqlstate::ADMIN_SHUTDOWN,
            };
            let mut out = BytesMut::new();
            wire::put_error_response(&mut out, Severity::Fatal, code, &error.to_string(), None);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), console.client.write_all(&out)).await;
        }
    }
}

impl Console {
    async fn run(&mut self) -> Result<(), ConsoleError> {
        let mut out = BytesMut::new();
        self.welcome(&mut out);
        // After an error in an extended-protocol batch, messages are skipped up to its Sync.
        let mut skipping_to_sync = false;
        loop {
            self.client.write_all(&out).await?;
            out.clear();
            let message = self.next_message().await?;
            match message[0] {
                tag::QUERY => {
                    let query = wire::read_cstr(wire::body(&message)).map(|(q, _)| q).unwrap_or_default();
                    out = self.run_query(&String::from_utf8_lossy(query)).await?;
                    wire::put_ready_for_query(&mut out, TxStatus::Idle);
                }
                tag::TERMINATE => return Ok(()),
                tag::SYNC => {
                    skipping_to_sync = false;
                    wire::put_ready_for_query(&mut out, TxStatus::Idle);
                }
                tag::FLUSH => {}
                tag::FUNCTION_CALL => {
                    put_error(&mut out, sqlstate::FEATURE_NOT_SUPPORTED, SIMPLE_ONLY);
                    wire::put_ready_for_query(&mut out, TxStatus::Idle);
                }
                _ if skipping_to_sync => {}
                _ => {
                    // Answered like PostgreSQL answers an error in a batch:
                    // once, then ReadyForQuery when the batch's Sync arrives.
                    skipping_to_sync = true;
                    put_error(&mut out, sqlstate::FEATURE_NOT_SUPPORTED, SIMPLE_ONLY);
                }
            }
        }
    }

    /// AuthenticationOk and the rest of the welcome (login sent nothing after authentication).
    fn welcome(&self, out: &mut BytesMut) {
        wire::put_auth_ok(out);
        let application_name = crate::app::application_name(&self.login.settings);
        let server_version = self.server_version();
        let params: [(&str, &str); 7] = [
            ("server_version", &server_version),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("application_name", application_name),
        ];
        for (name, value) in params {
            wire::put_parameter_status(out, name.as_bytes(), value.as_bytes());
        }
        // Cancelling a console command is not supported: the key matches nothing.
        wire::put_backend_key_data(out, 0, 0);
        wire::put_ready_for_query(out, TxStatus::Idle);
    }

    /// The servers' version number (clients such as psql parse the leading
    /// number), then pgrelay's own; 15.0 until a server has been seen.
    fn server_version(&self) -> String {
        let reported = self.ctx.pools.all().iter().find_map(|pool| {
            let params = pool.server_params()?;
            let (_, value) = params.iter().find(|(name, _)| &name[..] == b"server_version")?;
            let number = String::from_utf8_lossy(value).split_whitespace().next()?.to_owned();
            Some(number)
        });
        format!("{} (pgrelay {})", reported.as_deref().unwrap_or("15.0"), env!("CARGO_PKG_VERSION"))
    }

    /// The next message from the client; ends when pgrelay shuts down or drains.
    async fn next_message(&mut self) -> Result<bytes::Bytes, ConsoleError> {
        loop {
            if let Some(message) = wire::split_message(&mut self.buf, MAX_CONSOLE_MESSAGE)? {
                return Ok(message);
            }
            let read = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return Err(ConsoleError::Shutdown),
                _ = self.ctx.lifecycle.draining().cancelled() => return Err(ConsoleError::Shutdown),
                read = self.client.read_buf(&mut self.buf) => read?,
            };
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    /// Runs one query; returns the messages to send before ReadyForQuery.
    async fn run_query(&self, query: &str) -> Result<BytesMut, ConsoleError> {
        let mut out = BytesMut::new();
        let command = match command::parse(query) {
            Ok(command) => command,
            Err(error) => {
                tracing::debug!(parent: &self.span, %error, "not an admin console command");
                put_error(&mut out, sqlstate::SYNTAX_ERROR, &error.to_string());
                return Ok(out);
            }
        };
        if let Some(name) = command.control_name() {
            if !self.login.may_control {
                let message = format!(
                    "permission denied: {name} needs admin rights (user \"{}\" is in [admin] stats_users, \
                     not admin_users)",
                    self.login.user.name
                );
                put_error(&mut out, sqlstate::INSUFFICIENT_PRIVILEGE, &message);
                return Ok(out);
            }
            tracing::info!(parent: &self.span, admin_user = %self.login.user.name, command = name, "admin command");
        }
        match command {
            Command::Empty => wire::put_empty_query_response(&mut out),
            Command::Help => {
                wire::put_notice_response(&mut out, "Console usage", command::USAGE);
                wire::put_command_complete(&mut out, "SHOW");
            }
            Command::Show(what) => self.show(what).encode(&mut out),
            Command::Pause => {
                tokio::select! {
                    _ = self.ctx.pause() => {}
                    _ = self.ctx.shutdown.cancelled() => return Err(ConsoleError::Shutdown),
                }
                wire::put_command_complete(&mut out, "PAUSE");
            }
            Command::Resume => {
                self.ctx.resume();
                wire::put_command_complete(&mut out, "RESUME");
            }
            Command::PerDatabase { command, database } => {
                let message = format!(
                    "per-database {command} is not supported (asked for \"{database}\"); \
                                       {command} without a name applies to every database"
                );
                put_error(&mut out, sqlstate::FEATURE_NOT_SUPPORTED, &message);
            }
            Command::Reload => self.reload(&mut out),
            Command::Shutdown(mode) => {
                self.ctx.lifecycle.request_stop(mode);
                wire::put_command_complete(&mut out, "SHUTDOWN");
            }
        }
        Ok(out)
    }

    fn reload(&self, out: &mut BytesMut) {
        match self.ctx.reload() {
            Ok(summary) => {
                if !summary.needs_restart.is_empty() {
                    let detail = format!("kept until a restart: {}", summary.needs_restart.join(", "));
                    wire::put_notice_response(out, "some settings take effect only after a restart", &detail);
                }
                wire::put_command_complete(out, "RELOAD");
            }
            Err(error) => put_error(out, sqlstate::CONFIG_FILE_ERROR, &error),
        }
    }

    /// The table a SHOW command lists.
    fn show(&self, what: Show) -> Table {
        let ctx = &self.ctx;
        let now = Instant::now();
        let pools = show::sample_pools(ctx);
        let clients = show::sample_clients(ctx);
        let clock = connections::Clock::new(now, SystemTime::now());
        match what {
            Show::Pools => show::pools_table(&pools, &clients, &ctx.cancels.forwarding(), ctx.config().pool.mode, now),
            Show::Stats => show::stats_table(&show::sample_stats(ctx)),
            Show::StatsTotals => show::stats_totals_table(&show::sample_stats(ctx)),
            Show::StatsAverages => show::stats_averages_table(&show::sample_stats(ctx)),
            Show::Servers => connections::servers_table(ctx, &clock),
            Show::Clients => connections::clients_table(ctx, &clock, now),
            Show::Databases => show::databases_table(ctx, &pools),
            Show::Config => settings::config_table(&ctx.config()),
            Show::Lists => show::lists_table(ctx, &pools, &clients),
            Show::Users => show::users_table(ctx),
            Show::Nodes => settings::nodes_table(&ctx.cluster.load()),
            Show::Version => show::version_table(),
        }
    }
}

const SIMPLE_ONLY: &str = "the admin console accepts only simple queries";

fn put_error(out: &mut BytesMut, code: &str, message: &str) {
    wire::put_error_response(out, Severity::Error, code, message, None);
}
