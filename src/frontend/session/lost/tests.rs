use super::sql::{query_effect, statement_kind};
use super::*;
use crate::backend::StatementKind::*;

fn kind(sql: &str) -> Option<StatementKind> {
    statement_kind(sql.as_bytes())
}

fn effect(sql: &str) -> TxEffect {
    query_effect(sql.as_bytes())
}

#[test]
fn first_words_say_what_a_statement_does_to_the_transaction() {
    let table: &[(&str, Option<StatementKind>)] = &[
        ("BEGIN", Some(Begin)),
        ("  begin isolation level serializable;", Some(Begin)),
        ("START TRANSACTION", Some(Begin)),
        ("commit", Some(Commit)),
        ("END;", Some(Commit)),
        ("COMMIT WORK", Some(Commit)),
        ("/* c */ -- d\n COMMIT", Some(Commit)),
        ("PREPARE TRANSACTION 'x'", Some(Commit)),
        ("PREPARE q AS SELECT 1", Some(Other)),
        ("COMMIT PREPARED 'x'", Some(Other)),
        ("ROLLBACK PREPARED 'x'", Some(Other)),
        ("ROLLBACK", Some(Rollback)),
        ("abort", Some(Rollback)),
        ("ROLLBACK TO SAVEPOINT a", Some(RollbackTo)),
        ("ROLLBACK TRANSACTION TO a", Some(RollbackTo)),
        ("COMMIT AND CHAIN", None),
        ("ROLLBACK AND NO CHAIN", None),
        ("UPDATE t SET a = 1", Some(Other)),
        ("(SELECT 1)", Some(Other)),
        ("", Some(Other)),
        ("SELECT 'commit'", Some(Other)),
        ("STARTS", Some(Other)),
        ("set x = 1", Some(Other)),
        ("  \n", Some(Other)),
    ];
    for (sql, expected) in table {
        assert_eq!(kind(sql), *expected, "{sql}");
    }
}

#[test]
fn a_text_of_several_statements_is_read_statement_by_statement() {
    let whole = effect("BEGIN; UPDATE t SET a = 1; COMMIT");
    assert_eq!(whole.from(TxStatus::Idle), crate::backend::txeffect::Step { after: TxStatus::Idle, may_commit: true });
    let open = effect("BEGIN; UPDATE t SET a = ';COMMIT'; SELECT $$;END$$");
    assert!(!open.from(TxStatus::Idle).may_commit);
    assert_eq!(open.from(TxStatus::Idle).after, TxStatus::InTransaction);
    // Statements in a block commit nothing until its end.
    assert!(!effect("UPDATE t SET a = 1; UPDATE t SET b = 2").from(TxStatus::InTransaction).may_commit);
    assert!(effect("UPDATE t SET a = 1; COMMIT").from(TxStatus::InTransaction).may_commit);
    // Outside a block the text is one implicit transaction that commits.
    assert!(effect("UPDATE t SET a = 1; UPDATE t SET b = 2").from(TxStatus::Idle).may_commit);
    assert_eq!(effect("SELECT 1;  \n"), TxEffect::of(Other));
    assert_eq!(effect(";;BEGIN;;"), TxEffect::of(Begin));
    // However a COMMIT is spelled, it is one.
    for sql in ["-- x\ncommit", " ;; End;", "commit work", "/* a; b */ COMMIT", "/* /* */ */ end transaction"] {
        assert_eq!(effect(sql), TxEffect::of(Commit), "{sql}");
    }
    assert_eq!(effect("Commit And Chain"), TxEffect::UNKNOWN);
    assert_eq!(effect("commit -- x\n and chain"), TxEffect::UNKNOWN);
}

#[test]
fn what_cannot_be_split_for_certain_is_unknown() {
    for sql in [
        "SELECT 'a\\'; COMMIT; SELECT 1",
        "SELECT 'open; COMMIT",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
        "SELECT 1; /* open",
        "SELECT $x$ ; COMMIT",
    ] {
        assert_eq!(effect(sql), TxEffect::UNKNOWN, "{sql}");
    }
    // A parameter or a name with `$` starts no dollar quote.
    assert!(!effect("SELECT $1; SELECT a$b$ FROM t").from(TxStatus::InTransaction).may_commit);
}

fn unit(effect: TxEffect, simple: bool) -> Unit {
    Unit { effect, client: true, simple, closed: true, requests: 1, failed: false }
}

#[test]
fn in_flight_units_are_answered_with_what_is_known_of_their_outcome() {
    let lost = lost_error(sqlstate::SERIALIZATION_FAILURE, "pg0", "test");
    // A statement in a block: failed block.
    let answer = answer_for(&unit(TxEffect::of(Other), true), false, TxStatus::InTransaction, &lost);
    assert!(matches!(answer, Ok(Answer::Error(_, TxStatus::Failed))));
    // A COMMIT in flight ends the block, whatever became of it.
    let answer = answer_for(&unit(TxEffect::of(Commit), true), true, TxStatus::InTransaction, &lost);
    assert!(matches!(answer, Ok(Answer::Error(_, TxStatus::Idle))));
    // A ROLLBACK in flight did what it was asked.
    let answer = answer_for(&unit(TxEffect::of(Rollback), true), false, TxStatus::InTransaction, &lost);
    assert!(matches!(answer, Ok(Answer::RolledBack)));
    // Behind a failed request in a block: 25P02, as a server says.
    let answer = answer_for(&unit(TxEffect::of(Other), false), false, TxStatus::Failed, &lost);
    assert!(matches!(answer, Ok(Answer::Error(e, TxStatus::Failed)) if e != lost));
    // A ROLLBACK in extended protocol behind it cannot be answered exactly.
    let answer = answer_for(&unit(TxEffect::of(Rollback), false), false, TxStatus::Failed, &lost);
    assert!(answer.is_err());
}

#[test]
fn a_failed_block_ends_only_with_a_rollback_or_commit_alone() {
    assert_eq!(query_kind(b"ROLLBACK"), Ok(Rollback));
    assert_eq!(query_kind(b"commit;"), Ok(Commit));
    assert_eq!(query_kind(b"SELECT 1"), Ok(Other));
    assert_eq!(query_kind(b"ROLLBACK TO SAVEPOINT a"), Ok(Other));
    assert_eq!(query_kind(b"ROLLBACK; SELECT 1"), Err(()));
}
