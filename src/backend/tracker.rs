//! The expected-response queue of one server connection: which request each
//! server message answers, whether the client or pgrelay asked for it, where
//! answers pgrelay makes up itself belong, and the connection's transaction
//! and COPY state. Pure bookkeeping; the session does the IO.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;

use super::Statement;
use crate::wire::{self, backend as tag, TxStatus};

/// What a request sent to the server is answered with.
#[derive(Debug, Clone)]
pub enum Expect {
    /// ParseComplete; `registers` is the server-side statement it creates.
    Parse {
        registers: Option<Arc<Statement>>,
    },
    Bind,
    /// ParameterDescription + RowDescription/NoData.
    DescribeStatement {
        got_parameters: bool,
    },
    /// RowDescription/NoData.
    DescribePortal,
    /// Rows or COPY, then CommandComplete/EmptyQuery/PortalSuspended.
    Execute,
    Close,
    /// ReadyForQuery.
    Sync,
    /// A simple Query or FunctionCall: everything up to ReadyForQuery.
    Query,
    /// CopyDone or CopyFail: answers nothing itself, but marks where the
    /// server leaves COPY IN mode (it ignores Sync until then).
    CopyEnd,
}

/// Who asked: answers to pgrelay's own requests never reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    /// A Parse pgrelay sent so a statement the client prepared elsewhere exists here.
    InjectedParse,
    /// The SET/RESET query that brings the connection to the client's settings.
    InjectedSetup,
}

/// An answer pgrelay gives itself, in order with the server's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthetic {
    ParseComplete,
    CloseComplete,
}

#[derive(Debug)]
enum Pending {
    Server { expect: Expect, origin: Origin },
    Synthetic(Synthetic),
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Relay,
    Swallow,
    /// pgrelay's setup query failed: the client cannot run with its settings.
    SetupFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    None,
    In,
    Out,
}

#[derive(Debug)]
pub struct Tracker {
    queue: VecDeque<Pending>,
    /// After an error in extended protocol the server ignores everything up to Sync.
    skipping_until_sync: bool,
    /// Extended-protocol messages were sent since the last Sync.
    batch_open: bool,
    tx: TxStatus,
    copy: CopyState,
    /// Server-side names of the statements prepared on this connection.
    /// foldhash (randomly seeded): looked up on every Bind.
    prepared: HashSet<Arc<str>, foldhash::fast::RandomState>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            queue: VecDeque::with_capacity(8),
            skipping_until_sync: false,
            batch_open: false,
            tx: TxStatus::Idle,
            copy: CopyState::None,
            prepared: HashSet::default(),
        }
    }
}

impl Tracker {
    /// Records a request written to the server.
    pub fn sent(&mut self, expect: Expect, origin: Origin) {
        match expect {
            // The server ignores a Sync that arrives during COPY IN.
            Expect::Sync if self.copy == CopyState::In && !self.copy_end_queued() => return,
            Expect::Sync => {
                self.batch_open = false;
                self.skipping_until_sync = false;
            }
            Expect::Query => {}
            // With nothing in flight there is no COPY for it to end (a stray
            // CopyDone after a failed COPY, which the server ignores).
            Expect::CopyEnd if self.skipping_until_sync || self.queue.is_empty() => return,
            Expect::CopyEnd => {}
            _ => {
                self.batch_open = true;
                if self.skipping_until_sync {
                    return;
                }
            }
        }
        if let Expect::Parse { registers: Some(stmt) } = &expect {
            self.prepared.insert(stmt.server_name.clone());
        }
        self.queue.push_back(Pending::Server { expect, origin });
    }

    /// Extended-protocol messages were sent since the last Sync.
    pub fn batch_open(&self) -> bool {
        self.batch_open
    }

    /// Queues an answer pgrelay gives itself; emitted into `out` at once when
    /// nothing is ahead of it.
    pub fn synthetic(&mut self, answer: Synthetic, out: &mut BytesMut) {
        self.batch_open = true;
        if self.skipping_until_sync {
            return;
        }
        self.queue.push_back(Pending::Synthetic(answer));
        self.emit_synthetic(out);
    }

    /// Emits the synthetic answers that are now at the front of the queue.
    pub fn emit_synthetic(&mut self, out: &mut BytesMut) {
        while let Some(Pending::Synthetic(answer)) = self.queue.front() {
            match answer {
                Synthetic::ParseComplete => wire::put_parse_complete(out),
                Synthetic::CloseComplete => wire::put_close_complete(out),
            }
            self.queue.pop_front();
        }
    }

    pub fn is_prepared(&self, server_name: &str) -> bool {
        self.prepared.contains(server_name)
    }

    pub fn forget_prepared(&mut self) {
        self.prepared.clear();
    }

    pub fn tx_status(&self) -> TxStatus {
        self.tx
    }

    pub fn copy_state(&self) -> CopyState {
        self.copy
    }

    /// Nothing in flight, no open batch, no transaction: the connection may
    /// serve another client.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.batch_open && self.copy == CopyState::None && self.tx == TxStatus::Idle
    }

    /// Nothing in flight and no open batch (a transaction may be open).
    pub fn at_sync_point(&self) -> bool {
        self.queue.is_empty() && !self.batch_open && self.copy == CopyState::None
    }

    /// ReadyForQuery answers still owed by the server.
    pub fn pending_ready(&self) -> usize {
        self.queue.iter().filter(|p| matches!(p, Pending::Server { expect: Expect::Sync | Expect::Query, .. })).count()
    }

    fn front_origin(&self) -> Option<Origin> {
        match self.queue.front() {
            Some(Pending::Server { origin, .. }) => Some(*origin),
            _ => None,
        }
    }

    /// Accounts for one server message and says what to do with it. Call
    /// [`Tracker::emit_synthetic`] after relaying it.
    pub fn on_server_message(&mut self, msg_tag: u8, body: &[u8]) -> Verdict {
        let origin = self.front_origin().unwrap_or(Origin::Client);
        let verdict = match origin {
            Origin::Client => Verdict::Relay,
            Origin::InjectedParse | Origin::InjectedSetup => Verdict::Swallow,
        };
        match msg_tag {
            // Asynchronous messages answer nothing.
            tag::NOTICE_RESPONSE | tag::PARAMETER_STATUS | tag::NOTIFICATION_RESPONSE => return verdict,
            tag::ERROR_RESPONSE => return self.on_error(origin),
            tag::READY_FOR_QUERY => {
                if let Some(status) = body.first().copied().and_then(TxStatus::from_byte) {
                    self.tx = status;
                }
                self.copy = CopyState::None;
                // Pop through the Sync/Query this answers (anything before it was skipped).
                while let Some(p) = self.queue.pop_front() {
                    if let Pending::Server { expect: Expect::Sync | Expect::Query, origin } = p {
                        self.pop_copy_end_markers();
                        return match origin {
                            Origin::Client => Verdict::Relay,
                            Origin::InjectedParse | Origin::InjectedSetup => Verdict::Swallow,
                        };
                    }
                }
                return verdict;
            }
            tag::COPY_IN_RESPONSE => {
                self.copy = CopyState::In;
                self.drop_syncs_ignored_during_copy();
            }
            tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => self.copy = CopyState::Out,
            tag::COMMAND_COMPLETE if self.copy != CopyState::None => self.copy = CopyState::None,
            _ => {}
        }
        let done = match self.queue.front_mut() {
            Some(Pending::Server { expect, .. }) => match expect {
                Expect::Parse { registers } => {
                    if let (Some(stmt), tag::PARSE_COMPLETE) = (registers, msg_tag) {
                        stmt.mark_validated();
                    }
                    msg_tag == tag::PARSE_COMPLETE
                }
                Expect::Bind => msg_tag == tag::BIND_COMPLETE,
                Expect::Close => msg_tag == tag::CLOSE_COMPLETE,
                Expect::DescribeStatement { got_parameters } => {
                    if msg_tag == tag::PARAMETER_DESCRIPTION {
                        *got_parameters = true;
                        false
                    } else {
                        matches!(msg_tag, tag::ROW_DESCRIPTION | tag::NO_DATA)
                    }
                }
                Expect::DescribePortal => matches!(msg_tag, tag::ROW_DESCRIPTION | tag::NO_DATA),
                Expect::Execute => {
                    matches!(msg_tag, tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED)
                }
                Expect::Sync | Expect::Query | Expect::CopyEnd => false,
            },
            _ => false,
        };
        if done {
            self.queue.pop_front();
            self.pop_copy_end_markers();
        }
        verdict
    }

    fn is_copy_end(pending: &Pending) -> bool {
        matches!(pending, Pending::Server { expect: Expect::CopyEnd, .. })
    }

    fn copy_end_queued(&self) -> bool {
        self.queue.iter().any(Self::is_copy_end)
    }

    /// A COPY marker at the front has done its job: the COPY it ended is over.
    fn pop_copy_end_markers(&mut self) {
        while self.queue.front().is_some_and(Self::is_copy_end) {
            self.queue.pop_front();
        }
    }

    /// The server entered COPY IN for the request at the front: the Syncs the
    /// client pipelined behind it, before its CopyDone/CopyFail, are ignored
    /// by the server and will not be answered.
    fn drop_syncs_ignored_during_copy(&mut self) {
        let copy_end = self.queue.iter().position(Self::is_copy_end).unwrap_or(self.queue.len());
        let mut index = 0;
        let mut dropped = false;
        self.queue.retain(|p| {
            let keep = index == 0 || index >= copy_end || !matches!(p, Pending::Server { expect: Expect::Sync, .. });
            dropped |= !keep;
            index += 1;
            keep
        });
        let sync_after_copy = self
            .queue
            .iter()
            .skip_while(|p| !Self::is_copy_end(p))
            .any(|p| matches!(p, Pending::Server { expect: Expect::Sync, .. }));
        if dropped && !sync_after_copy {
            self.batch_open = true;
        }
    }

    fn on_error(&mut self, origin: Origin) -> Verdict {
        self.copy = CopyState::None;
        let front_is_query = matches!(self.queue.front(), Some(Pending::Server { expect: Expect::Query, .. }));
        if !front_is_query {
            // Extended protocol: the server skips everything up to the next Sync.
            while let Some(p) = self.queue.front() {
                match p {
                    Pending::Server { expect: Expect::Sync, .. } => break,
                    Pending::Server { expect: Expect::Parse { registers: Some(stmt) }, .. } => {
                        self.prepared.remove(&stmt.server_name);
                    }
                    _ => {}
                }
                self.queue.pop_front();
            }
            if self.queue.is_empty() {
                self.skipping_until_sync = true;
            }
        }
        match origin {
            Origin::InjectedSetup => Verdict::SetupFailed,
            // The client must learn why its Bind/Describe cannot run.
            Origin::InjectedParse | Origin::Client => Verdict::Relay,
        }
    }
}
