//! The expected-response queue of one server connection: which request each
//! server message answers, whether the client or pgrelay asked for it, where
//! answers pgrelay makes up itself belong, and the connection's transaction
//! and COPY state. Pure bookkeeping; the connection does the IO.
//!
//! It fails closed: a server message that answers nothing outstanding, or
//! that is not a possible answer to the request at the front, is a
//! [`Verdict::Desync`], and the connection must be closed, never relayed
//! from or pooled. Client messages whose fate on the server cannot be known
//! in advance (anything but COPY data while the client streams a COPY FROM
//! STDIN that may or may not have failed already) are refused before they
//! are sent.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::server_statements::{Presence, ServerStatements};
use super::txeffect::TxEffect;
use super::Statement;
use crate::wire::{self, backend as tag, TxStatus};

/// What a request sent to the server is answered with.
#[derive(Debug, Clone)]
pub enum Expect {
    /// ParseComplete; `registers` is the shared statement it creates, and
    /// `client_name` the name the client gave it (undone if it is skipped).
    Parse { registers: Option<Arc<Statement>>, client_name: Option<Bytes> },
    /// BindComplete; `statement` is the shared statement it binds.
    Bind { statement: Option<Arc<Statement>> },
    /// ParameterDescription + RowDescription/NoData.
    DescribeStatement {
        got_parameters: bool,
        /// The shared statement whose result description this records
        /// (the first time) or checks (when it is prepared again elsewhere).
        shape_of: Option<Arc<Statement>>,
        /// The client's name, when this follows the client's own Parse: a
        /// description that changed then means the client prepared the
        /// text anew after a schema change (see [`Undone::Fork`]).
        fork_for: Option<Bytes>,
    },
    /// RowDescription/NoData.
    DescribePortal,
    /// Rows or COPY, then CommandComplete/EmptyQuery/PortalSuspended.
    Execute,
    /// CloseComplete; `closes` is the shared statement pgrelay closes.
    Close { closes: Option<Arc<str>> },
    /// CloseComplete for a Close of a shared statement that may or may not
    /// exist, before preparing it again: if the server skips it, what the
    /// connection holds is no longer known.
    CloseUnknown,
    /// ReadyForQuery.
    Sync,
    /// A simple Query or FunctionCall: everything up to ReadyForQuery.
    Query,
    /// Flush: answers nothing.
    Flush,
    /// CopyData: answers nothing; the first of a run marks where the
    /// client's COPY data begins.
    CopyData,
    /// CopyDone or CopyFail: answers nothing itself, but marks where the
    /// client's COPY data ends (the server ignores Sync until then).
    CopyEnd,
}

/// Who asked: answers to pgrelay's own requests never reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    /// Statement upkeep: a Parse so that a statement the client prepared
    /// elsewhere exists here, or a Close of one evicted. Its errors concern
    /// the client's request, so they are relayed.
    Injected,
    /// The settings that bring the connection to the client's, or a reset.
    InjectedSetup,
    /// Upkeep behind the client's own request whose failure changes nothing
    /// for the client (its transaction had already failed): nothing of it
    /// reaches the client, errors included.
    InjectedQuiet,
}

/// An answer pgrelay gives itself, in order with the server's answers.
#[derive(Debug, Clone)]
pub enum Synthetic {
    /// For the client's Parse of this name, of a statement already prepared.
    ParseComplete(Bytes),
    /// For the client's Close of its statement of this name (undone if the
    /// server skips what it stands in for).
    CloseComplete(Option<(Bytes, Arc<Statement>)>),
    /// A whole message pgrelay answers with (a ParameterDescription).
    Message(Bytes),
}

#[derive(Debug)]
enum Pending {
    Server { expect: Expect, origin: Origin, effect: TxEffect },
    Synthetic(Synthetic),
}

/// A request in flight, as [`Tracker::in_flight`] lists it.
#[derive(Debug)]
pub struct InFlight<'a> {
    pub expect: &'a Expect,
    pub origin: Origin,
    pub effect: TxEffect,
}

/// A client's statement command that the server did not run.
#[derive(Debug, Clone)]
pub enum Undone {
    /// Its Parse of this name created nothing.
    Parse(Bytes),
    /// Its Close of this name closed nothing: the name still stands for it.
    Close(Bytes, Arc<Statement>),
    /// Its Parse of this name, of a shared statement prepared before a
    /// schema change, gave the result description that follows (tag, body):
    /// the name stands for a statement with that description, not for the
    /// shared one (whose other clients prepared it before the change).
    Fork(Bytes, Arc<Statement>, u8, Bytes),
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Relay,
    Swallow,
    /// pgrelay's setup query failed: the client cannot run with its settings.
    SetupFailed,
    /// The message answers nothing outstanding: the connection's state is
    /// unknown, so it must be closed and nothing more relayed from it.
    Desync(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    None,
    In,
    Out,
}

/// A client message whose effect on the server cannot be known in advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("only CopyData, CopyDone and CopyFail may follow CopyData until the COPY ends")]
pub struct CopyInterleaved;

#[derive(Debug)]
pub struct Tracker {
    queue: VecDeque<Pending>,
    /// CopyData/CopyEnd markers in `queue` (0 on every path but COPY's).
    markers: usize,
    /// After an error in extended protocol the server ignores everything up to Sync.
    skipping_until_sync: bool,
    /// Extended-protocol messages were sent since the last Sync.
    batch_open: bool,
    /// What the statements executed since the last Sync do to the
    /// transaction: an implicit transaction commits at the Sync, after its
    /// Executes were answered, so the Sync carries the whole batch's effect.
    batch_effect: TxEffect,
    tx: TxStatus,
    copy: CopyState,
    /// The shared statements prepared on this connection.
    prepared: ServerStatements,
    /// Syncs sent: numbers the extended-protocol batches.
    batches: u64,
    /// ReadyForQuery messages received (wrapping): advances as each request
    /// of a pipeline ends.
    readies: u32,
    /// Shared statements whose description, prepared here, did not match
    /// the one first seen (see `DescribeStatement::shape_of`).
    mismatched: Vec<Arc<str>>,
    /// The client's Parses and Closes the server skipped or refused, in the
    /// order they were sent (undone in reverse).
    undone: Vec<Undone>,
}

impl Tracker {
    pub fn new(max_prepared: usize) -> Tracker {
        Tracker {
            queue: VecDeque::with_capacity(8),
            markers: 0,
            skipping_until_sync: false,
            batch_open: false,
            batch_effect: TxEffect::NONE,
            tx: TxStatus::Idle,
            copy: CopyState::None,
            prepared: ServerStatements::new(max_prepared),
            undone: Vec::new(),
            batches: 0,
            readies: 0,
            mismatched: Vec::new(),
        }
    }

    /// Records a request written to the server. Refuses (before anything is
    /// written) a request whose answer cannot be predicted.
    pub fn sent(&mut self, expect: Expect, origin: Origin) -> Result<(), CopyInterleaved> {
        // A client's statements pgrelay did not read may do anything.
        let effect = match (&expect, origin) {
            (Expect::Query | Expect::Execute, Origin::Client) => TxEffect::UNKNOWN,
            _ => TxEffect::NONE,
        };
        self.sent_with(expect, origin, effect)
    }

    /// [`Tracker::sent`], with what the request does to the transaction.
    pub fn sent_with(&mut self, expect: Expect, origin: Origin, effect: TxEffect) -> Result<(), CopyInterleaved> {
        if self.client_copy_open() && !matches!(expect, Expect::CopyData | Expect::CopyEnd | Expect::Flush) {
            return Err(CopyInterleaved);
        }
        match expect {
            Expect::Flush => return Ok(()),
            // With nothing in flight the server is not in COPY and drops
            // COPY messages; within a run, only the first one marks it.
            Expect::CopyData if self.queue.is_empty() || self.client_copy_open() => return Ok(()),
            Expect::CopyEnd if self.queue.is_empty() => return Ok(()),
            Expect::CopyData | Expect::CopyEnd => self.markers += 1,
            // The server ignores a Sync that arrives during COPY IN before
            // any CopyData (one sent during the data was refused above).
            Expect::Sync if self.copy == CopyState::In && !self.copy_end_queued() => return Ok(()),
            Expect::Sync => {
                self.batch_open = false;
                self.skipping_until_sync = false;
                self.batches += 1;
            }
            _ => {
                if !matches!(expect, Expect::Query) {
                    self.batch_open = true;
                }
                // The server discards everything up to the Sync: what the
                // caller recorded for a Parse or Close did not happen.
                if self.skipping_until_sync {
                    self.undo_statement_change(&expect);
                    return Ok(());
                }
            }
        }
        let effect = match expect {
            Expect::Sync => std::mem::replace(&mut self.batch_effect, TxEffect::NONE),
            // Only an Execute runs statements in a batch.
            Expect::Execute => {
                self.batch_effect = self.batch_effect.then(effect);
                effect
            }
            _ => effect,
        };
        self.queue.push_back(Pending::Server { expect, origin, effect });
        Ok(())
    }

    /// What the statements executed in the batch not yet ended by a Sync do
    /// to the transaction, answered or not.
    pub fn open_batch_effect(&self) -> TxEffect {
        self.batch_effect
    }

    /// The client has sent CopyData and neither its CopyDone/CopyFail nor the
    /// end of the COPY on the server has been seen: whether the server is
    /// still reading COPY data (and would ignore a Sync or choke on a Query)
    /// or already failed the COPY (and would answer them) is unknown.
    pub fn client_copy_open(&self) -> bool {
        self.markers > 0
            && self
                .queue
                .iter()
                .rev()
                .find_map(|p| match p {
                    Pending::Server { expect: Expect::CopyData, .. } => Some(true),
                    Pending::Server { expect: Expect::CopyEnd, .. } => Some(false),
                    _ => None,
                })
                .unwrap_or(false)
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
            // The server skips the batch: the client's Parse or Close did not happen.
            self.undo_synthetic(answer);
            return;
        }
        self.queue.push_back(Pending::Synthetic(answer));
        self.emit_synthetic(out);
    }

    /// Emits the synthetic answers that are now at the front of the queue.
    pub fn emit_synthetic(&mut self, out: &mut BytesMut) {
        while let Some(Pending::Synthetic(answer)) = self.queue.front() {
            match answer {
                Synthetic::ParseComplete(_) => wire::put_parse_complete(out),
                Synthetic::CloseComplete(_) => wire::put_close_complete(out),
                Synthetic::Message(message) => out.extend_from_slice(message),
            }
            self.queue.pop_front();
        }
    }

    /// The client's Parses and Closes that did not happen, in the order they
    /// were sent: undo them in reverse.
    pub fn take_undone(&mut self) -> Option<Vec<Undone>> {
        (!self.undone.is_empty()).then(|| std::mem::take(&mut self.undone))
    }

    /// ReadyForQuery messages received so far (wrapping).
    pub fn readies(&self) -> u32 {
        self.readies
    }

    /// The number of the batch being sent (Syncs sent so far).
    pub fn batch(&self) -> u64 {
        self.batches
    }

    /// Whether the statement's Parse was sent in an earlier batch and is
    /// still unanswered: if that batch fails, it does not exist.
    pub fn parse_unanswered_before_this_batch(&self, server_name: &str) -> bool {
        matches!(self.prepared.presence(server_name), Presence::Pending { batch } if batch != self.batches)
    }

    /// Whether a Parse or Close of the client's statement `name` went in an
    /// earlier batch and is still unanswered: if that batch fails, it is
    /// taken back, and what the name stands for changes again.
    pub fn name_unsettled_before_this_batch(&self, name: &[u8]) -> bool {
        let mut earlier_batch = false;
        for pending in self.queue.iter().rev() {
            let named = match pending {
                Pending::Server { expect: Expect::Sync, .. } => {
                    earlier_batch = true;
                    continue;
                }
                Pending::Server { expect: Expect::Parse { client_name: Some(named), .. }, .. }
                | Pending::Synthetic(Synthetic::ParseComplete(named))
                | Pending::Synthetic(Synthetic::CloseComplete(Some((named, _)))) => named,
                _ => continue,
            };
            if earlier_batch && named[..] == *name {
                return true;
            }
        }
        false
    }

    /// Prepared here and usable as it is.
    pub fn is_usable(&self, server_name: &str) -> bool {
        !matches!(self.prepared.presence(server_name), Presence::Absent | Presence::Doubtful)
    }

    pub fn is_prepared(&self, server_name: &str) -> bool {
        self.prepared.contains(server_name)
    }

    /// The shared statements prepared on this connection.
    pub fn prepared(&mut self) -> &mut ServerStatements {
        &mut self.prepared
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
        self.at_sync_point() && self.tx == TxStatus::Idle
    }

    /// Whether a mismatch of `server_name` is waiting to be acted on.
    pub fn has_mismatch(&self, server_name: &str) -> bool {
        self.mismatched.iter().any(|n| &**n == server_name)
    }

    /// Whether `server_name` was found not to match its first description
    /// (then forgotten, so that each such finding is acted on once).
    pub fn take_mismatch(&mut self, server_name: &str) -> bool {
        match self.mismatched.iter().position(|n| &**n == server_name) {
            Some(i) => {
                self.mismatched.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// The server skips what is sent until the next Sync (an error in the batch).
    pub fn skipping(&self) -> bool {
        self.skipping_until_sync
    }

    /// The requests still owed an answer, in the order they were sent
    /// (pgrelay's own answers are left out). Read when a server is lost.
    pub fn in_flight(&self) -> impl Iterator<Item = InFlight<'_>> {
        self.queue.iter().filter_map(|p| match p {
            Pending::Server { expect, origin, effect } => Some(InFlight { expect, origin: *origin, effect: *effect }),
            Pending::Synthetic(_) => None,
        })
    }

    /// Answers are still owed for something sent.
    pub fn has_outstanding(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Nothing in flight and no open batch (a transaction may be open).
    pub fn at_sync_point(&self) -> bool {
        self.queue.is_empty() && !self.batch_open && self.copy == CopyState::None && !self.skipping_until_sync
    }

    /// Whether the server still owes a ReadyForQuery that goes to the client
    /// (pgrelay's own requests' do not). Stops at the first such request:
    /// the next one the client sent, near the front of the queue.
    pub fn client_ready_owed(&self) -> bool {
        self.queue.iter().any(|p| {
            matches!(p, Pending::Server { expect: Expect::Sync | Expect::Query, origin, .. } if *origin == Origin::Client)
        })
    }

    /// ReadyForQuery answers still owed by the server.
    pub fn pending_ready(&self) -> usize {
        self.queue.iter().filter(|p| matches!(p, Pending::Server { expect: Expect::Sync | Expect::Query, .. })).count()
    }

    /// Accounts for one server message and says what to do with it. Call
    /// [`Tracker::emit_synthetic`] after relaying it.
    pub fn on_server_message(&mut self, msg_tag: u8, body: &[u8]) -> Verdict {
        match msg_tag {
            // Asynchronous messages answer nothing; on an idle connection
            // (a pinned client between queries) they are the client's.
            tag::NOTICE_RESPONSE | tag::PARAMETER_STATUS | tag::NOTIFICATION_RESPONSE => match self.queue.front() {
                // A setting pgrelay brings back behind the client's reset: the
                // client must see its value again.
                Some(Pending::Server { origin: Origin::InjectedQuiet, .. }) if msg_tag == tag::PARAMETER_STATUS => {
                    Verdict::Relay
                }
                Some(Pending::Server { origin, .. }) => verdict_for(*origin),
                _ => Verdict::Relay,
            },
            tag::ERROR_RESPONSE => self.on_error(body),
            tag::READY_FOR_QUERY => self.on_ready(body),
            _ => self.on_reply(msg_tag, body),
        }
    }

    fn on_ready(&mut self, body: &[u8]) -> Verdict {
        let Some(status) = body.first().copied().and_then(TxStatus::from_byte) else {
            return Verdict::Desync("malformed ReadyForQuery");
        };
        match self.queue.pop_front() {
            Some(Pending::Server { expect: Expect::Sync | Expect::Query, origin, .. }) => {
                self.readies = self.readies.wrapping_add(1);
                self.tx = status;
                self.copy = CopyState::None;
                self.pop_markers();
                verdict_for(origin)
            }
            _ => Verdict::Desync("ReadyForQuery with no Sync or Query outstanding"),
        }
    }

    fn on_reply(&mut self, msg_tag: u8, body: &[u8]) -> Verdict {
        let Some(Pending::Server { expect, origin, .. }) = self.queue.front_mut() else {
            return Verdict::Desync("a server message with nothing outstanding");
        };
        let verdict = verdict_for(*origin);
        let done = match expect {
            Expect::Parse { registers, .. } => {
                if msg_tag != tag::PARSE_COMPLETE {
                    return Verdict::Desync("unexpected answer to Parse");
                }
                if let Some(stmt) = registers {
                    stmt.mark_validated();
                    self.prepared.confirm(&stmt.server_name);
                }
                true
            }
            Expect::Bind { .. } if msg_tag == tag::BIND_COMPLETE => true,
            Expect::Close { .. } | Expect::CloseUnknown if msg_tag == tag::CLOSE_COMPLETE => true,
            Expect::DescribeStatement { got_parameters, shape_of, fork_for } => match msg_tag {
                tag::PARAMETER_DESCRIPTION if !*got_parameters => {
                    *got_parameters = true;
                    if let Some(stmt) = shape_of {
                        stmt.observe_parameters(&message(msg_tag, body));
                    }
                    false
                }
                tag::ROW_DESCRIPTION | tag::NO_DATA if *got_parameters => {
                    if let Some(stmt) = shape_of.take() {
                        if !stmt.observe_shape(msg_tag, body) {
                            // Prepared here after a schema change: not the
                            // statement its clients prepared. It is closed
                            // before any further use here.
                            stmt.retire();
                            self.prepared.mark_doubtful(&stmt.server_name);
                            match fork_for.take() {
                                Some(name) => {
                                    let shape = Bytes::copy_from_slice(body);
                                    self.undone.push(Undone::Fork(name, stmt, msg_tag, shape));
                                }
                                None => self.mismatched.push(stmt.server_name.clone()),
                            }
                        }
                    }
                    true
                }
                _ => return Verdict::Desync("unexpected answer to Describe"),
            },
            Expect::DescribePortal if matches!(msg_tag, tag::ROW_DESCRIPTION | tag::NO_DATA) => true,
            Expect::Execute => match msg_tag {
                tag::DATA_ROW if self.copy == CopyState::None => false,
                tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED => {
                    self.copy = CopyState::None;
                    true
                }
                _ => return self.on_copy_message(msg_tag, verdict),
            },
            Expect::Query => match msg_tag {
                tag::ROW_DESCRIPTION | tag::DATA_ROW | tag::EMPTY_QUERY_RESPONSE | tag::FUNCTION_CALL_RESPONSE
                    if self.copy == CopyState::None =>
                {
                    false
                }
                tag::COMMAND_COMPLETE => {
                    self.copy = CopyState::None;
                    false
                }
                _ => return self.on_copy_message(msg_tag, verdict),
            },
            _ => return Verdict::Desync("a server message that answers nothing outstanding"),
        };
        if done {
            self.queue.pop_front();
            self.pop_markers();
        }
        verdict
    }

    /// COPY's own messages within an Execute or Query.
    fn on_copy_message(&mut self, msg_tag: u8, verdict: Verdict) -> Verdict {
        match (msg_tag, self.copy) {
            (tag::COPY_IN_RESPONSE, CopyState::None) => {
                self.copy = CopyState::In;
                self.start_copy_in().map_or(verdict, Verdict::Desync)
            }
            (tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE, CopyState::None) => {
                self.copy = CopyState::Out;
                verdict
            }
            (tag::COPY_DATA | tag::COPY_DONE, CopyState::Out) => verdict,
            _ => Verdict::Desync("unexpected message for the request in progress"),
        }
    }

    /// The server entered COPY IN for the request at the front. Until the
    /// client's first CopyData it ignores Sync, so Syncs pipelined there go
    /// unanswered; anything else there would be taken as a protocol
    /// violation that ends the COPY, which is refused as unknowable.
    fn start_copy_in(&mut self) -> Option<&'static str> {
        let data_start = self.queue.iter().skip(1).position(Self::is_marker).map_or(self.queue.len(), |i| i + 1);
        let mut dropped = false;
        for index in (1..data_start).rev() {
            match &self.queue[index] {
                Pending::Server { expect: Expect::Sync, .. } => {
                    self.queue.remove(index);
                    dropped = true;
                }
                _ => return Some("requests pipelined behind a COPY FROM STDIN without its data"),
            }
        }
        // The batch a dropped Sync closed is open again until the next one.
        if dropped && !self.queue.iter().any(|p| matches!(p, Pending::Server { expect: Expect::Sync, .. })) {
            self.batch_open = true;
        }
        None
    }

    fn on_error(&mut self, body: &[u8]) -> Verdict {
        // Any COPY is over: the server is back to reading requests.
        self.copy = CopyState::None;
        let (stale, origin) = match self.queue.front() {
            None | Some(Pending::Synthetic(_)) => {
                // Unasked, only a FATAL can come: the server is going away.
                return if wire::is_fatal_error(body) {
                    Verdict::Relay
                } else {
                    Verdict::Desync("an error with nothing outstanding")
                };
            }
            // A simple query ends with ReadyForQuery after its error; an
            // error at Sync (a failed commit) is followed by ReadyForQuery.
            Some(Pending::Server { expect: Expect::Query | Expect::Sync, origin, .. }) => {
                let origin = *origin;
                if self.queue.front().is_some_and(|p| matches!(p, Pending::Server { expect: Expect::Query, .. })) {
                    // The rest of the query's text is not run: its COPY data is dropped.
                    self.pop_markers_behind_front();
                }
                return error_verdict(origin);
            }
            Some(Pending::Server { expect: Expect::Bind { statement: Some(stmt) }, origin, .. }) => {
                (is_stale_plan(body).then(|| stmt.clone()), *origin)
            }
            Some(Pending::Server {
                expect: Expect::DescribeStatement { shape_of: Some(stmt), .. }, origin, ..
            }) => (is_stale_plan(body).then(|| stmt.clone()), *origin),
            Some(Pending::Server { origin, .. }) => (None, *origin),
        };
        if let Some(stmt) = stale {
            stmt.retire();
        }
        self.skip_to_sync();
        error_verdict(origin)
    }

    /// Extended protocol after an error: the server skips everything up to
    /// the next Sync. Skipped Parses created nothing; skipped Closes closed
    /// nothing.
    fn skip_to_sync(&mut self) {
        while !matches!(self.queue.front(), None | Some(Pending::Server { expect: Expect::Sync, .. })) {
            match self.queue.pop_front() {
                Some(Pending::Server { expect: Expect::CopyData | Expect::CopyEnd, .. }) => self.markers -= 1,
                Some(Pending::Server { expect, .. }) => self.undo_statement_change(&expect),
                Some(Pending::Synthetic(answer)) => self.undo_synthetic(answer),
                _ => {}
            }
        }
        if self.queue.is_empty() {
            self.skipping_until_sync = true;
        }
    }

    /// A Parse or Close pgrelay answered itself, in a batch the server skips.
    fn undo_synthetic(&mut self, answer: Synthetic) {
        match answer {
            Synthetic::ParseComplete(name) => self.undone.push(Undone::Parse(name)),
            Synthetic::CloseComplete(Some((name, stmt))) => self.undone.push(Undone::Close(name, stmt)),
            _ => {}
        }
    }

    /// A Parse or Close the server did not run: it created or closed nothing.
    fn undo_statement_change(&mut self, expect: &Expect) {
        match expect {
            Expect::Parse { registers, client_name } => {
                if let Some(stmt) = registers {
                    self.prepared.remove(&stmt.server_name);
                }
                if let Some(name) = client_name {
                    self.undone.push(Undone::Parse(name.clone()));
                }
            }
            Expect::Close { closes: Some(name) } => self.prepared.restore(name.clone()),
            Expect::CloseUnknown => self.prepared.make_uncertain(),
            _ => {}
        }
    }

    fn is_marker(pending: &Pending) -> bool {
        matches!(pending, Pending::Server { expect: Expect::CopyData | Expect::CopyEnd, .. })
    }

    fn copy_end_queued(&self) -> bool {
        self.markers > 0 && self.queue.iter().any(|p| matches!(p, Pending::Server { expect: Expect::CopyEnd, .. }))
    }

    /// Markers at the front have done their job: the COPY they belong to is over.
    fn pop_markers(&mut self) {
        while self.queue.front().is_some_and(Self::is_marker) {
            self.queue.pop_front();
            self.markers -= 1;
        }
    }

    fn pop_markers_behind_front(&mut self) {
        while self.queue.get(1).is_some_and(Self::is_marker) {
            self.queue.remove(1);
            self.markers -= 1;
        }
    }
}

/// A message rebuilt from its tag and body.
fn message(msg_tag: u8, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(body.len() + 5);
    message.push(msg_tag);
    message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(body);
    message
}

fn verdict_for(origin: Origin) -> Verdict {
    match origin {
        Origin::Client => Verdict::Relay,
        Origin::Injected | Origin::InjectedSetup | Origin::InjectedQuiet => Verdict::Swallow,
    }
}

fn error_verdict(origin: Origin) -> Verdict {
    match origin {
        Origin::InjectedSetup => Verdict::SetupFailed,
        Origin::InjectedQuiet => Verdict::Swallow,
        // The client must learn why its Bind/Describe cannot run.
        Origin::Injected | Origin::Client => Verdict::Relay,
    }
}

/// The server can no longer run a prepared statement as it was prepared:
/// its result type changed (0A000), or something it used was dropped and
/// recreated (XX000 "cache lookup failed").
fn is_stale_plan(body: &[u8]) -> bool {
    match wire::error_code(body) {
        Some(b"0A000") => wire::ErrorFields::parse(body).message.contains("cached plan must not change result type"),
        Some(b"XX000") => wire::ErrorFields::parse(body).message.starts_with("cache lookup failed"),
        _ => false,
    }
}
