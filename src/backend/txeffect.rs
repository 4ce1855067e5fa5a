//! What a client's request does to its transaction: from each state it may
//! start in (idle, in a block, in a failed block), the state it leaves and
//! whether it may commit on the way. Recorded with each request in flight,
//! so that when the server is lost pgrelay can tell whether the transaction
//! may have committed (see `frontend::session::lost`).

use crate::wire::TxStatus;

/// A transaction-control statement, or any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// BEGIN, START TRANSACTION.
    Begin,
    /// COMMIT, END, PREPARE TRANSACTION: ends a block, committing it when it did not fail.
    Commit,
    /// ROLLBACK, ABORT.
    Rollback,
    /// ROLLBACK TO SAVEPOINT: a failed block goes on.
    RollbackTo,
    /// Anything else: outside a block it runs in a transaction of its own
    /// that commits (COMMIT PREPARED and ROLLBACK PREPARED too).
    Other,
}

/// One step: where the transaction ends up, and whether it may have committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub after: TxStatus,
    pub may_commit: bool,
}

/// What a request does to the transaction, by the state it starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxEffect([Step; 3]);

const fn step(after: TxStatus, may_commit: bool) -> Step {
    Step { after, may_commit }
}

impl TxEffect {
    /// Runs no statement (Parse, Describe, Sync, pgrelay's own requests).
    pub const NONE: TxEffect =
        TxEffect([step(TxStatus::Idle, false), step(TxStatus::InTransaction, false), step(TxStatus::Failed, false)]);

    /// Statements pgrelay did not read: they may commit, and a block they
    /// leave open failed with the server.
    pub const UNKNOWN: TxEffect =
        TxEffect([step(TxStatus::Idle, true), step(TxStatus::Failed, true), step(TxStatus::Failed, true)]);

    pub const fn of(kind: StatementKind) -> TxEffect {
        use TxStatus::{Failed, Idle, InTransaction as Block};
        match kind {
            StatementKind::Begin => TxEffect([step(Block, false), step(Block, false), step(Failed, false)]),
            StatementKind::Commit => TxEffect([step(Idle, false), step(Idle, true), step(Idle, false)]),
            StatementKind::Rollback => TxEffect([step(Idle, false), step(Idle, false), step(Idle, false)]),
            StatementKind::RollbackTo => TxEffect([step(Idle, false), step(Block, false), step(Block, false)]),
            StatementKind::Other => TxEffect([step(Idle, true), step(Block, false), step(Failed, false)]),
        }
    }

    /// From `state`: where the transaction ends up, and whether it may have committed.
    #[inline]
    pub fn from(self, state: TxStatus) -> Step {
        self.0[index(state)]
    }

    /// This, then `next`.
    #[inline]
    pub fn then(self, next: TxEffect) -> TxEffect {
        let compose = |s: Step| {
            let n = next.from(s.after);
            step(n.after, s.may_commit || n.may_commit)
        };
        TxEffect([compose(self.0[0]), compose(self.0[1]), compose(self.0[2])])
    }
}

/// What pgrelay has not read may do anything.
impl Default for TxEffect {
    fn default() -> TxEffect {
        TxEffect::UNKNOWN
    }
}

fn index(state: TxStatus) -> usize {
    match state {
        TxStatus::Idle => 0,
        TxStatus::InTransaction => 1,
        TxStatus::Failed => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::StatementKind::*;
    use super::*;

    #[test]
    fn a_block_commits_only_at_its_end() {
        let block = TxEffect::of(Begin).then(TxEffect::of(Other)).then(TxEffect::of(Other));
        assert_eq!(block.from(TxStatus::Idle), step(TxStatus::InTransaction, false));
        let whole = block.then(TxEffect::of(Commit));
        assert_eq!(whole.from(TxStatus::Idle), step(TxStatus::Idle, true));
    }

    #[test]
    fn autocommit_statements_may_commit_and_statements_in_a_block_do_not() {
        assert!(TxEffect::of(Other).from(TxStatus::Idle).may_commit);
        assert!(!TxEffect::of(Other).from(TxStatus::InTransaction).may_commit);
        assert!(!TxEffect::of(Other).from(TxStatus::Failed).may_commit);
    }

    #[test]
    fn a_failed_block_never_commits() {
        let end = TxEffect::of(Commit).from(TxStatus::Failed);
        assert_eq!(end, step(TxStatus::Idle, false));
        // ROLLBACK TO brings it back, and then a COMMIT commits.
        let resumed = TxEffect::of(RollbackTo).then(TxEffect::of(Commit));
        assert!(resumed.from(TxStatus::Failed).may_commit);
    }

    #[test]
    fn rollback_then_an_autocommit_statement_may_commit() {
        let text = TxEffect::of(Rollback).then(TxEffect::of(Other));
        for state in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            assert!(text.from(state).may_commit);
        }
    }

    #[test]
    fn none_is_neutral() {
        for kind in [Begin, Commit, Rollback, RollbackTo, Other] {
            assert_eq!(TxEffect::NONE.then(TxEffect::of(kind)), TxEffect::of(kind));
            assert_eq!(TxEffect::of(kind).then(TxEffect::NONE), TxEffect::of(kind));
        }
    }
}
