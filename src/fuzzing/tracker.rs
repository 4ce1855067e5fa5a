//! `tracker`: a server connection's expected-response queue (Tracker) under
//! an arbitrary interleaving of requests sent and server messages received.
//!
//! Input: one byte for `max_prepared`, then operations, each a byte
//! choosing what happens and the bytes it needs:
//! - send a request: its Expect (with or without a shared statement, a
//!   client statement name or a statement to close) and its Origin;
//! - receive a server message: a tag (the first 24 values pick a tag
//!   PostgreSQL sends, the rest are taken as they are) and a body (a
//!   ReadyForQuery status, a plausible ErrorResponse, or raw bytes);
//! - queue a synthetic answer; emit synthetic answers; take undone Parses.
//!
//! The run stops at the first Desync: the connection would be closed.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::Input;
use crate::backend::{CopyState, Expect, Origin, Statement, StatementRegistry, Synthetic, Tracker, Verdict};
use crate::wire::{backend as tag, TxStatus};

const TAGS: [u8; 24] = [
    tag::AUTHENTICATION,
    tag::BACKEND_KEY_DATA,
    tag::BIND_COMPLETE,
    tag::CLOSE_COMPLETE,
    tag::COMMAND_COMPLETE,
    tag::COPY_DATA,
    tag::COPY_DONE,
    tag::COPY_IN_RESPONSE,
    tag::COPY_OUT_RESPONSE,
    tag::COPY_BOTH_RESPONSE,
    tag::DATA_ROW,
    tag::EMPTY_QUERY_RESPONSE,
    tag::ERROR_RESPONSE,
    tag::FUNCTION_CALL_RESPONSE,
    tag::NO_DATA,
    tag::NOTICE_RESPONSE,
    tag::NOTIFICATION_RESPONSE,
    tag::PARAMETER_DESCRIPTION,
    tag::PARAMETER_STATUS,
    tag::PARSE_COMPLETE,
    tag::PORTAL_SUSPENDED,
    tag::READY_FOR_QUERY,
    tag::ROW_DESCRIPTION,
    tag::NEGOTIATE_PROTOCOL_VERSION,
];

const ERRORS: [&[u8]; 5] = [
    b"SERROR\0VERROR\0C42601\0Msyntax error at or near \"x\"\0\0",
    b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
    b"SERROR\0VERROR\0C0A000\0Mcached plan must not change result type\0\0",
    b"SERROR\0VERROR\0CXX000\0Mcache lookup failed for type 16384\0\0",
    b"SPANIC\0CXX000\0Mpanic\0\0",
];

/// The run so far, as the properties need it.
struct Run {
    tracker: Tracker,
    /// Sync and Query requests the tracker accepted, and ReadyForQuery it accepted.
    syncs_sent: usize,
    readies_accepted: usize,
    sent_injected: bool,
    sent_injected_setup: bool,
    /// Client statement names handed to the tracker (each once), and those it gave back as undone.
    names_given: HashSet<Bytes>,
    names_undone: HashSet<Bytes>,
    next_name: u32,
    synthetics_queued: usize,
    /// What the tracker emitted for the client, and how much of it was checked.
    out: BytesMut,
    out_checked: usize,
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let registry = StatementRegistry::default();
    let statements: Vec<Arc<Statement>> =
        (0..3).map(|i| registry.intern(0, format!("select {i}\0\0\0").as_bytes())).collect();
    let mut run = Run {
        tracker: Tracker::new(usize::from(input.byte() % 4)),
        syncs_sent: 0,
        readies_accepted: 0,
        sent_injected: false,
        sent_injected_setup: false,
        names_given: HashSet::new(),
        names_undone: HashSet::new(),
        next_name: 0,
        synthetics_queued: 0,
        out: BytesMut::new(),
        out_checked: 0,
    };
    while !input.is_empty() {
        let op = input.byte();
        match op % 8 {
            0..=2 => run.send(&mut input, &statements),
            3..=5 => {
                if run.receive(&mut input) {
                    return;
                }
            }
            6 => {
                let answer = if input.byte() % 2 == 0 {
                    Synthetic::ParseComplete(run.fresh_name())
                } else {
                    Synthetic::CloseComplete(None)
                };
                run.synthetics_queued += 1;
                run.tracker.synthetic(answer, &mut run.out);
            }
            _ => {
                run.tracker.emit_synthetic(&mut run.out);
                run.take_undone();
            }
        }
        run.check_state();
    }
}

impl Run {
    fn fresh_name(&mut self) -> Bytes {
        self.next_name += 1;
        let name = Bytes::from(format!("client_{}", self.next_name));
        self.names_given.insert(name.clone());
        name
    }

    fn send(&mut self, input: &mut Input, statements: &[Arc<Statement>]) {
        let choice = input.byte();
        let detail = input.byte();
        let statement = statements.get(usize::from(detail % 4)).cloned();
        let expect = match choice % 11 {
            0 => {
                let client_name = (detail & 0x10 != 0).then(|| self.fresh_name());
                Expect::Parse { registers: statement, client_name }
            }
            1 => Expect::Bind { statement },
            2 => Expect::DescribeStatement { got_parameters: detail & 0x10 != 0, shape_of: None, fork_for: None },
            3 => Expect::DescribePortal,
            4 => Expect::Execute,
            5 => Expect::Close { closes: statement.map(|s| s.server_name.clone()) },
            6 => Expect::Sync,
            7 => Expect::Query,
            8 => Expect::Flush,
            9 => Expect::CopyData,
            _ => Expect::CopyEnd,
        };
        let origin = match (choice / 11) % 3 {
            0 => Origin::Client,
            1 => Origin::Injected,
            _ => Origin::InjectedSetup,
        };
        let copy_open = self.tracker.client_copy_open();
        let copy_message = matches!(expect, Expect::CopyData | Expect::CopyEnd | Expect::Flush);
        let refused = copy_open && !copy_message;
        if !refused {
            // As ServerConn::prepare: a statement is listed as prepared before
            // its Parse is sent, and an evicted one unlisted before its Close.
            match &expect {
                Expect::Parse { registers: Some(stmt), .. } => {
                    let batch = self.tracker.batch();
                    self.tracker.prepared().insert(stmt.server_name.clone(), batch);
                }
                Expect::Close { closes: Some(name) } => self.tracker.prepared().remove(name),
                _ => {}
            }
        }
        let ready_request = matches!(expect, Expect::Sync | Expect::Query);
        let pending_before = self.tracker.pending_ready();
        let result = self.tracker.sent(expect, origin);
        assert_eq!(result.is_err(), refused, "refused exactly what cannot be predicted during client COPY data");
        if result.is_err() {
            assert_eq!(self.tracker.pending_ready(), pending_before, "a refused request changed the queue");
            assert!(self.tracker.client_copy_open());
            return;
        }
        self.syncs_sent += usize::from(ready_request);
        self.sent_injected |= origin != Origin::Client;
        self.sent_injected_setup |= origin == Origin::InjectedSetup;
        assert!(self.tracker.pending_ready() <= pending_before + usize::from(ready_request));
    }

    /// Feeds one server message; true when the connection would be closed.
    fn receive(&mut self, input: &mut Input) -> bool {
        let tag_choice = input.byte();
        let msg_tag = TAGS.get(usize::from(tag_choice)).copied().unwrap_or(tag_choice);
        let body_choice = input.byte();
        let body: Vec<u8> = match body_choice % 4 {
            0 => vec![[b'I', b'T', b'E', body_choice][usize::from(body_choice / 4 % 4)]],
            1 => ERRORS[usize::from(body_choice / 4) % ERRORS.len()].to_vec(),
            _ => input.chunk().to_vec(),
        };
        let pending_before = self.tracker.pending_ready();
        let sync_point = self.tracker.at_sync_point();
        let tx_before = self.tracker.tx_status();
        let verdict = self.tracker.on_server_message(msg_tag, &body);
        let asynchronous = matches!(msg_tag, tag::NOTICE_RESPONSE | tag::PARAMETER_STATUS | tag::NOTIFICATION_RESPONSE);
        if sync_point && !asynchronous {
            let fatal = msg_tag == tag::ERROR_RESPONSE && crate::wire::is_fatal_error(&body);
            assert_eq!(
                matches!(verdict, Verdict::Desync(_)),
                !fatal,
                "with nothing outstanding, {:?} must fail closed (a FATAL excepted): {verdict:?}",
                char::from(msg_tag)
            );
        }
        if !self.sent_injected {
            assert!(matches!(verdict, Verdict::Relay | Verdict::Desync(_)), "only pgrelay's own answers are swallowed");
        }
        if !self.sent_injected_setup {
            assert_ne!(verdict, Verdict::SetupFailed, "no setup was sent");
        }
        if let Verdict::Desync(_) = verdict {
            return true;
        }
        if msg_tag == tag::READY_FOR_QUERY {
            assert!(pending_before > 0, "a ReadyForQuery that answers nothing was accepted");
            self.readies_accepted += 1;
            assert_eq!(self.tracker.pending_ready(), pending_before - 1, "one ReadyForQuery answers one request");
            assert_eq!(Some(self.tracker.tx_status()), TxStatus::from_byte(body[0]));
            assert_eq!(self.tracker.copy_state(), CopyState::None);
        } else {
            assert!(self.tracker.pending_ready() <= pending_before, "only requests add to what is owed");
            assert_eq!(self.tracker.tx_status(), tx_before, "only ReadyForQuery reports the transaction status");
        }
        if msg_tag == tag::ERROR_RESPONSE {
            assert_eq!(self.tracker.copy_state(), CopyState::None, "an error ends any COPY");
        }
        self.tracker.emit_synthetic(&mut self.out);
        false
    }

    fn take_undone(&mut self) {
        let names = self.tracker.take_undone().unwrap_or_default().into_iter().filter_map(|undone| match undone {
            crate::backend::Undone::Parse(name) => Some(name),
            crate::backend::Undone::Close(..) | crate::backend::Undone::Fork(..) => None,
        });
        for name in names {
            assert!(self.names_given.contains(&name), "{name:?} was never a client's statement");
            assert!(self.names_undone.insert(name.clone()), "{name:?} was undone twice");
        }
    }

    fn check_state(&mut self) {
        let tracker = &self.tracker;
        let pending = tracker.pending_ready();
        assert!(
            pending <= self.syncs_sent - self.readies_accepted,
            "{pending} ReadyForQuery owed after {} Syncs/Queries and {} ReadyForQuery",
            self.syncs_sent,
            self.readies_accepted
        );
        if tracker.at_sync_point() {
            assert_eq!(pending, 0, "a sync point owes nothing");
            assert!(!tracker.client_copy_open() && !tracker.batch_open());
        }
        if tracker.is_idle() {
            assert!(tracker.at_sync_point() && tracker.tx_status() == TxStatus::Idle);
            assert_eq!(tracker.copy_state(), CopyState::None);
        }
        assert_eq!(self.out.len() % 5, 0);
        for answer in self.out[self.out_checked..].chunks(5) {
            assert!(answer == b"1\0\0\0\x04" || answer == b"3\0\0\0\x04", "not a synthetic answer: {answer:?}");
        }
        self.out_checked = self.out.len();
        assert!(self.out.len() / 5 <= self.synthetics_queued, "more synthetic answers than were queued");
    }
}
