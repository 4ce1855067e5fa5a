//! The server's answers: each is accounted for by the connection's tracker
//! and relayed, swallowed (pgrelay's own requests), or — when it answers
//! nothing outstanding — the connection is given up. Large rows and COPY
//! data stream through once their header is read, so a client that reads
//! slowly never makes pgrelay hold a whole large message.

use std::time::Instant;

use bytes::Buf;

use super::{ryw::note_commit, statements, Session, READ_CHUNK};
use crate::backend::Verdict;
use crate::frontend::error::SessionError;
use crate::metrics::ErrorOrigin;
use crate::router::ListenerKind;
use crate::wire::{self, backend as tag, ErrorFields, Frame, TxStatus};

/// Server messages are trusted up to PostgreSQL's own 1 GB field limit.
const MAX_SERVER_MESSAGE: usize = 1 << 30;
/// Rows and COPY data larger than this pass through as they arrive.
const STREAM_ABOVE: usize = 4 * READ_CHUNK;

impl Session {
    pub(super) fn handle_server_messages(&mut self) -> Result<(), SessionError> {
        let span = &self.span;
        let Some(lease) = self.lease.as_mut() else { return Ok(()) };
        let (conn, pool) = lease.parts_mut();
        // Taken out while its messages are handled (a move, no copy).
        let mut rbuf = std::mem::take(&mut conn.rbuf);
        let mut consumed = 0;
        if self.passthrough > 0 {
            consumed = self.passthrough.min(rbuf.len());
            self.out.extend_from_slice(&rbuf[..consumed]);
            self.passthrough -= consumed;
        }
        let result = loop {
            if self.passthrough > 0 {
                break Ok(());
            }
            let rest = &rbuf[consumed..];
            let frame = match Frame::peek(rest, MAX_SERVER_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => match streamable(rest) {
                    // Accounted for by its header alone; the rest follows as it comes.
                    Some(total) => match conn.on_server_message(rest[0], &[]) {
                        Verdict::Relay => {
                            self.out.extend_from_slice(rest);
                            self.passthrough = total - rest.len();
                            consumed += rest.len();
                            break Ok(());
                        }
                        Verdict::Desync(reason) => break Err(SessionError::ServerDesync(reason)),
                        _ => break Err(SessionError::ServerDesync("a large message pgrelay did not ask for")),
                    },
                    None => break Ok(()),
                },
                Err(e) => break Err(SessionError::ServerProtocol(e)),
            };
            let msg = &rest[..frame.total_len];
            if frame.tag == tag::ERROR_RESPONSE && wire::is_server_going_away(&msg[5..]) {
                // Not relayed: the session decides what the client is told (see `lost`).
                let fields = ErrorFields::parse(&msg[5..]);
                break Err(SessionError::ServerGone { node: pool.key.node.clone(), fields });
            }
            let verdict = conn.on_server_message(frame.tag, &msg[5..]);
            tracing::trace!(parent: span, tag = %char::from(frame.tag), ?verdict, "server message");
            match verdict {
                Verdict::Relay => match frame.tag {
                    tag::ERROR_RESPONSE => {
                        let body = &msg[5..];
                        self.ctx.metrics.error(wire::error_code(body).unwrap_or(b"??"), ErrorOrigin::Server);
                        self.server_fatal |= wire::is_fatal_error(body);
                        if let Some(tracked) = &mut self.tracked {
                            tracked.failed();
                        }
                        self.out.extend_from_slice(msg);
                        if let Some(watch) = &mut self.first_write {
                            watch.on_error();
                        }
                    }
                    tag::COMMAND_COMPLETE => {
                        self.out.extend_from_slice(msg);
                        statements::on_command_complete(&mut self.statements, &mut self.unnamed, &msg[5..]);
                    }
                    tag::READY_FOR_QUERY => {
                        let tracker = conn.tracker();
                        if let Some(watch) = &mut self.first_write {
                            if watch.on_ready(tracker.tx_status(), &self.ctx.cluster) {
                                self.first_write = None;
                            }
                        }
                        let idle = tracker.tx_status() == TxStatus::Idle;
                        if let Some(tracked) = &mut self.tracked {
                            tracked.on_ready(tracker.client_ready_owed());
                        }
                        if idle && self.listener == ListenerKind::ReadWrite {
                            // Before the client can see it: its next read may be on another connection.
                            if self.ryw.causal_id.is_some() {
                                note_commit(&self.ctx, &self.ryw, &self.config.1);
                            }
                            if self.ryw.report_commit_lsn && !tracker.has_outstanding() {
                                self.commit_report = Some(self.out.len());
                            }
                        }
                        self.out.extend_from_slice(msg);
                        if let Some(ended) = self.timing.ready(idle, || tracker.client_ready_owed(), Instant::now) {
                            let traffic = &pool.metrics().traffic;
                            traffic.query(ended.query);
                            if let Some(transaction) = ended.transaction {
                                traffic.transaction(transaction);
                                self.idle_since = Some(ended.at);
                            }
                        }
                    }
                    tag::NOTIFICATION_RESPONSE if msg.len() >= 9 && msg[5..9] == conn.key.pid.to_be_bytes() => {
                        // The client knows its connection by pgrelay's pid, not the server's.
                        self.out.extend_from_slice(&msg[..5]);
                        self.out.extend_from_slice(&self.cancel.pid.to_be_bytes());
                        self.out.extend_from_slice(&msg[9..]);
                    }
                    _ => self.out.extend_from_slice(msg),
                },
                Verdict::Swallow => {}
                Verdict::SetupFailed => break Err(SessionError::SetupFailed(ErrorFields::parse(&msg[5..]))),
                Verdict::Desync(reason) => break Err(SessionError::ServerDesync(reason)),
            }
            consumed += frame.total_len;
            conn.emit_synthetic(&mut self.out);
        };
        rbuf.advance(consumed);
        conn.rbuf = rbuf;
        if result.is_err() {
            lease.poison();
        }
        self.apply_undone();
        result
    }
}

/// The whole length of an incomplete DataRow or CopyData whose header is
/// here, when it is large enough to pass through piecewise.
fn streamable(buf: &[u8]) -> Option<usize> {
    if buf.len() < 5 || !matches!(buf[0], tag::DATA_ROW | tag::COPY_DATA) {
        return None;
    }
    let total = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize + 1;
    (total > STREAM_ABOVE && total <= MAX_SERVER_MESSAGE).then_some(total)
}
