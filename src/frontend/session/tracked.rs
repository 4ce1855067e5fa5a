//! A plain session `SET` between transactions (see `router::tracked_set`)
//! is followed instead of pinning the client: it runs as sent, then pgrelay
//! asks the same, still leased connection for the value the server now has
//! and makes it one of the client's settings, which every later lease
//! applies (and which the next client's lease resets or replaces). Anything
//! else the client sends with it, before its answer, pins the client as any
//! `SET` did before.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Session;
use crate::backend::{BackendError, ClientSettings};
use crate::config::PoolMode;
use crate::frontend::error::SessionError;
use crate::router::SessionStateEffect;
use crate::wire::{frontend as tag, TxStatus};

/// Settings a client may have (startup and followed together): a `SET` of
/// another name beyond this pins, so each lease's work stays bounded.
const MAX_SETTINGS: usize = 64;
/// Longest value followed; a `SET` to a longer one pins.
const MAX_VALUE: usize = 4096;

/// The client's settings besides those its leases get now (`Session::settings`).
pub(super) struct OriginSettings {
    /// Its settings as it gave them (no address): clients with the same
    /// share prepared statements.
    pub given: Arc<ClientSettings>,
    /// Its startup settings as the servers got them: what a `RESET` brings back.
    pub startup: Arc<ClientSettings>,
    /// Under application_name_add_host, the address its application_name carries.
    pub address: Option<SocketAddr>,
}

/// A tracked `SET` on its way.
#[derive(Debug)]
pub(super) struct TrackedSet {
    /// The setting, lower case.
    name: String,
    stage: Stage,
    /// The server reported an error: nothing changed.
    failed: bool,
}

impl TrackedSet {
    /// The server's ReadyForQuery, relayed: when it is the one the `SET`
    /// was owed (no other is owed the client), its value is to be learned
    /// before the client sees it.
    pub fn on_ready(&mut self, client_ready_owed: bool) {
        if self.stage == Stage::Sent && !client_ready_owed {
            self.stage = Stage::Answered;
        }
    }

    /// The server reported an error: the `SET` changed nothing.
    pub fn failed(&mut self) {
        self.failed = true;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// An extended batch, its Sync not yet sent.
    Batch,
    /// The Query or Sync went; its ReadyForQuery is awaited.
    Sent,
    /// Its ReadyForQuery came: the value is to be learned.
    Answered,
}

impl Session {
    /// Whether the `SET` of `name` that `msg_tag` (a Query or an unnamed
    /// Parse) begins can be tracked: the client is not pinned, its pool
    /// pools transactions, and the connection is idle with nothing of the
    /// client's outstanding (the text is a transaction of its own).
    pub(super) fn track_set(&mut self, msg_tag: u8, name: Option<String>) -> bool {
        let Some(name) = name else { return false };
        let known = self.settings.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name));
        if !known && self.settings.len() >= MAX_SETTINGS {
            return false;
        }
        let Some(lease) = &self.lease else { return false };
        let tracker = lease.conn().tracker();
        let idle = tracker.tx_status() == TxStatus::Idle && !tracker.client_ready_owed() && !tracker.batch_open();
        if self.pinned.is_some() || lease.pool().mode() != PoolMode::Transaction || !idle {
            return false;
        }
        let stage = if msg_tag == tag::QUERY { Stage::Sent } else { Stage::Batch };
        self.tracked = Some(TrackedSet { name, stage, failed: false });
        // Should the value never be learned (the client leaves first), the
        // connection's next lease resets everything.
        self.conn().settings_may_change();
        true
    }

    /// A client message forwarded while a `SET` is tracked: the rest of its
    /// batch (Bind of the unnamed statement, Describe, Execute, Flush, Sync)
    /// is fine; anything else means the `SET` is not alone, and pins.
    #[cold]
    pub(super) fn tracked_batch_message(&mut self, msg_tag: u8, body: &[u8]) {
        let Some(tracked) = &mut self.tracked else { return };
        let unnamed_bind = || crate::wire::read_cstr(body).and_then(|(_, rest)| rest.first()) == Some(&0);
        match (tracked.stage, msg_tag) {
            (Stage::Batch, tag::SYNC) => tracked.stage = Stage::Sent,
            (Stage::Batch, tag::DESCRIBE | tag::EXECUTE | tag::FLUSH) => {}
            (Stage::Batch, tag::BIND) if unnamed_bind() => {}
            _ => {
                self.tracked = None;
                self.pin(SessionStateEffect::Set);
            }
        }
    }

    /// Whether a tracked `SET` waits for its value to be learned.
    #[inline]
    pub(super) fn tracked_answered(&self) -> bool {
        self.tracked.as_ref().is_some_and(|t| t.stage == Stage::Answered)
    }

    /// Learns the value of the answered `SET` on the still leased connection
    /// and makes it the client's. If that cannot be done, the client is
    /// pinned (its connection has the value) or, with the connection lost,
    /// told so and disconnected: never left with settings pgrelay does not know.
    pub(super) async fn learn_tracked_setting(&mut self) -> Result<(), SessionError> {
        let Some(tracked) = self.tracked.take() else { return Ok(()) };
        let timeout = self.config().pool.query_wait_timeout;
        let Some(lease) = self.lease.as_mut() else { return Ok(()) };
        let tracker = lease.conn().tracker();
        if tracked.failed && tracker.tx_status() == TxStatus::Idle {
            return Ok(());
        }
        if tracked.failed || tracker.has_outstanding() || tracker.tx_status() != TxStatus::Idle {
            self.pin(SessionStateEffect::Set);
            return Ok(());
        }
        let asked = lease.conn_mut().current_setting(&tracked.name);
        // That used the unnamed statement.
        self.unnamed.on_lease = false;
        let value = match tokio::time::timeout(timeout, asked).await {
            // Too long to carry to every connection: the client keeps this one.
            Ok(Ok(value)) if value.len() > MAX_VALUE => {
                self.pin(SessionStateEffect::Set);
                return Ok(());
            }
            Ok(Ok(value)) => value,
            // The server refused the question (the connection is at its Sync): it keeps the value.
            Ok(Err(BackendError::Server(_))) => {
                self.pin(SessionStateEffect::Set);
                return Ok(());
            }
            other => {
                lease.poison();
                let cause = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within query_wait_timeout ({timeout:?})"),
                };
                let node = lease.pool().key.node.clone();
                tracing::info!(parent: &self.span, %node, %cause, "could not learn the value of a SET");
                return Err(SessionError::PinnedStateLost { node, state: "SET", cause });
            }
        };
        self.adopt_setting(&tracked.name, value);
        Ok(())
    }

    /// Makes `name = value` (as the server has it now) one of the client's
    /// settings, and records that the leased connection has them.
    fn adopt_setting(&mut self, name: &str, value: String) {
        let given = with_setting(&self.origin.given, name, &value);
        let given = self.ctx.settings.intern(given);
        // Statements parsed from now on are shared with clients of these settings.
        self.shared_context = self.ctx.settings.statement_context(&given);
        self.private_context = None;
        let on_server = with_setting(&self.settings, name, &value);
        self.settings = match self.origin.address {
            None => given.clone(),
            Some(peer) => Arc::new(super::super::welcome::named_with_address(&given, peer)),
        };
        self.origin.given = given;
        let settings = self.settings.clone();
        let conn = self.conn();
        if on_server == *settings {
            conn.settings_are(settings);
        } else {
            // application_name with the client's address appended: set now.
            conn.settings_are(Arc::new(on_server));
            conn.apply_settings(&settings);
        }
    }
}

/// `settings` with `name` (matched ignoring case) set to `value`, in name order.
fn with_setting(settings: &[(String, String)], name: &str, value: &str) -> ClientSettings {
    let mut changed: ClientSettings = settings.iter().filter(|(n, _)| !n.eq_ignore_ascii_case(name)).cloned().collect();
    let at = changed.partition_point(|(n, _)| n.as_str() < name);
    changed.insert(at, (name.to_owned(), value.to_owned()));
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_replaces_its_name_in_any_case_and_keeps_the_order() {
        let settings = |pairs: &[(&str, &str)]| -> ClientSettings {
            pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
        };
        let startup = settings(&[("TimeZone", "UTC"), ("application_name", "psql")]);
        assert_eq!(
            with_setting(&startup, "timezone", "Europe/Paris"),
            settings(&[("application_name", "psql"), ("timezone", "Europe/Paris")])
        );
        assert_eq!(
            with_setting(&startup, "extra_float_digits", "3"),
            settings(&[("TimeZone", "UTC"), ("application_name", "psql"), ("extra_float_digits", "3")])
        );
    }
}
