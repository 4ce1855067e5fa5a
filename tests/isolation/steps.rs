//! The step kinds that need no session state: simple and extended queries,
//! pipelines, errors in batches, transactions, cancels, vanishing. The
//! session-state kinds are in `state_steps`, COPY in `copy_steps`.

use crate::batch::Batch;
use crate::model::{probe_columns, probe_row, probe_sql, Row, Session, Stmt, Text, Tx};
use crate::render::{complete, error, ready, row, row_desc, TEXT, VOID};
use crate::script::{marker, Action, Rng, Step};
use crate::wire_out::Out;
use crate::{copy_steps, state_steps};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Simple,
    Multi,
    MultiError,
    Empty,
    PipelinedSimple,
    Extended,
    Pipeline,
    Flush,
    Transaction,
    CopyOut,
    CopyIn,
    CopyInFail,
    Cancel,
    Probe,
    Rows,
    Ddl,
    Cleanup,
    Visitor,
    State,
}

pub fn random_step(s: &mut Session, rng: &mut Rng, number: usize) -> Step {
    let m = marker(s.client, number);
    let state = if s.stateful { 40 } else { 0 };
    let kind = rng.weighted(&[
        (Kind::Simple, 5),
        (Kind::Multi, 3),
        (Kind::MultiError, 2),
        (Kind::Empty, 1),
        (Kind::PipelinedSimple, 4),
        (Kind::Extended, 10),
        (Kind::Pipeline, 6),
        (Kind::Flush, 2),
        (Kind::Transaction, 6),
        (Kind::CopyOut, 2),
        (Kind::CopyIn, 2),
        (Kind::CopyInFail, 3),
        (Kind::Cancel, 1),
        (Kind::Probe, 3),
        (Kind::Rows, 3),
        (Kind::Ddl, 3),
        (Kind::Cleanup, 2),
        (Kind::Visitor, 3),
        (Kind::State, state),
    ]);
    let (name, actions) = match kind {
        Kind::Simple => simple(&m),
        Kind::Multi => multi(&m),
        Kind::MultiError => multi_error(&m),
        Kind::Empty => ("empty query".to_owned(), vec![Action::query("", vec!["I".to_owned(), ready('I')])]),
        Kind::PipelinedSimple => pipelined_simple(rng, &m),
        Kind::Extended => extended(s, rng, &m, 1),
        Kind::Pipeline => {
            let batches = rng.range(2, 4);
            extended(s, rng, &m, batches)
        }
        Kind::Flush => flush(s, &m),
        Kind::Transaction => transaction(s, rng, &m),
        Kind::CopyOut => copy_steps::copy_out(s, rng, &m),
        Kind::CopyIn => copy_steps::copy_in(s, rng, &m),
        Kind::CopyInFail => copy_steps::copy_in_fail(s, rng, &m),
        Kind::Cancel => cancel(&m),
        Kind::Probe => probe(s, rng, &m),
        Kind::Rows => rows(s, rng, &m),
        Kind::Ddl => ddl(s, rng, &m),
        Kind::Cleanup => state_steps::cleanup(s, rng, &m),
        Kind::Visitor => state_steps::visitor(s, rng, &m),
        Kind::State => state_steps::stateful(s, rng, &m),
    };
    Step { number, kind: name, marker: m, actions }
}

/// The answer to `select '<value>' as <column>`.
pub fn one_text(column: &str, value: &str) -> Vec<String> {
    vec![row_desc(&[(column, TEXT)]), row(&[value]), complete("SELECT 1")]
}

fn with_ready(mut expect: Vec<String>, s: &Session) -> Vec<String> {
    expect.push(s.ready());
    expect
}

fn simple(m: &str) -> (String, Vec<Action>) {
    let mut expect = one_text("m", m);
    expect.push(ready('I'));
    ("simple query".to_owned(), vec![Action::query(&format!("select '{m}' as m"), expect)])
}

fn multi(m: &str) -> (String, Vec<Action>) {
    let mut expect = one_text("m", m);
    expect.extend(one_text("m2", &format!("{m}-2")));
    expect.push(ready('I'));
    let sql = format!("select '{m}' as m; select '{m}' || '-2' as m2");
    ("several statements in one query".to_owned(), vec![Action::query(&sql, expect)])
}

fn multi_error(m: &str) -> (String, Vec<Action>) {
    let mut expect = one_text("m", m);
    expect.push(error("22012"));
    expect.push(ready('I'));
    let sql = format!("select '{m}' as m; select 1/0 as boom; select '{m}-3' as m3");
    ("an error in the middle of a multi-statement query".to_owned(), vec![Action::query(&sql, expect)])
}

fn pipelined_simple(rng: &mut Rng, m: &str) -> (String, Vec<Action>) {
    let mut out = Out::default();
    let mut expect = Vec::new();
    for k in 0..rng.range(2, 4) {
        if rng.chance(25) {
            out.query("select 1/0 as boom");
            expect.push(error("22012"));
        } else {
            let value = format!("{m}-{k}");
            out.query(&format!("select '{value}' as m"));
            expect.extend(one_text("m", &value));
        }
        expect.push(ready('I'));
    }
    ("pipelined simple queries in one write".to_owned(), vec![Action::exchange(out, expect)])
}

const NAMES: [&str; 4] = ["s1", "s2", "s3", "s4"];
const VALUES: [&str; 3] = ["007", "42", "7"];

fn random_text(s: &Session, rng: &mut Rng) -> Text {
    let mut texts = vec![Text::Echo, Text::Series, Text::Insert, Text::Count, Text::Vals];
    if s.ddl.is_some() {
        texts.push(Text::Ddl);
    }
    rng.pick(&texts)
}

fn execute_portal(b: &mut Batch, rng: &mut Rng, text: Text) {
    if rng.chance(30) {
        b.describe_portal();
    }
    if text == Text::Series && rng.chance(50) {
        b.execute(rng.range(1, 2) as u32);
        b.execute(0);
    } else {
        b.execute(0);
    }
}

fn names_where(s: &Session, keep: impl Fn(&Stmt) -> bool) -> Vec<String> {
    s.named.iter().filter(|(_, st)| keep(st)).map(|(n, _)| n.clone()).collect()
}

fn unused_name(s: &Session, rng: &mut Rng) -> Option<&'static str> {
    let free: Vec<&'static str> = NAMES.iter().copied().filter(|n| !s.named.contains_key(*n)).collect();
    (!free.is_empty()).then(|| rng.pick(&free))
}

#[derive(Debug, Clone, Copy)]
enum Unit {
    Unnamed,
    Prepare,
    Run,
    Describe,
    Close,
    Boom,
    BadParse,
    Reparse,
    BindMissing,
    RunStale,
}

/// One piece of an extended batch: a few messages the model answers.
pub fn unit(b: &mut Batch, rng: &mut Rng, allow_errors: bool) {
    let usable = names_where(b.s, |st| b.s.usable(st));
    let stale = names_where(b.s, |st| st.text == Text::Ddl && st.ddl != b.s.ddl);
    let any: Vec<String> = b.s.named.keys().cloned().collect();
    let errors = u32::from(allow_errors);
    let choice = rng.weighted(&[
        (Unit::Unnamed, 5),
        (Unit::Prepare, 3),
        (Unit::Run, if usable.is_empty() { 0 } else { 5 }),
        (Unit::Describe, if usable.is_empty() { 0 } else { 1 }),
        (Unit::Close, 1),
        (Unit::Boom, errors),
        (Unit::BadParse, errors),
        (Unit::Reparse, if any.is_empty() { 0 } else { errors }),
        (Unit::BindMissing, errors),
        (Unit::RunStale, if stale.is_empty() { 0 } else { 3 * errors }),
    ]);
    let value = rng.pick(&VALUES);
    match choice {
        Unit::Unnamed => {
            let text = random_text(b.s, rng);
            b.parse("", text);
            b.bind("", value);
            execute_portal(b, rng, text);
        }
        Unit::Prepare => match unused_name(b.s, rng) {
            Some(name) => {
                let text = random_text(b.s, rng);
                b.parse(name, text);
            }
            None => {
                let name = rng.pick(&NAMES);
                b.close(name);
            }
        },
        Unit::Run => {
            let name = rng.pick(&usable);
            let text = b.s.named[&name].text;
            b.bind(&name, value);
            execute_portal(b, rng, text);
        }
        Unit::Describe => b.describe_statement(&rng.pick(&usable)),
        Unit::Close => b.close(rng.pick(&NAMES)),
        Unit::Boom => {
            b.parse("", Text::Boom);
            b.bind("", value);
            b.execute(0);
        }
        Unit::BadParse => b.parse(unused_name(b.s, rng).unwrap_or(""), Text::Bad),
        Unit::Reparse => {
            let text = random_text(b.s, rng);
            b.parse(&rng.pick(&any), text);
        }
        Unit::BindMissing => {
            let missing = unused_name(b.s, rng).unwrap_or("s9");
            b.bind(missing, value);
            b.execute(0);
        }
        Unit::RunStale => {
            let name = rng.pick(&stale);
            if rng.chance(30) {
                b.describe_statement(&name);
            } else {
                b.bind(&name, value);
                b.execute(0);
            }
        }
    }
}

/// `batches` extended batches, each ending in Sync, in one write.
fn extended(s: &mut Session, rng: &mut Rng, m: &str, batches: usize) -> (String, Vec<Action>) {
    let mut b = Batch::new(s, m);
    for _ in 0..batches {
        for _ in 0..rng.range(1, 3) {
            let allow_errors = rng.chance(35);
            unit(&mut b, rng, allow_errors);
        }
        b.sync();
    }
    let (out, expect) = b.cut();
    let name = if batches == 1 { "extended batch".to_owned() } else { format!("{batches} pipelined batches") };
    (name, vec![Action::exchange(out, expect)])
}

fn flush(s: &mut Session, m: &str) -> (String, Vec<Action>) {
    let mut b = Batch::new(s, m);
    b.parse("", Text::Echo);
    b.bind("", "");
    b.execute(0);
    b.flush();
    let (out, expect) = b.cut();
    let first = Action::exchange(out, expect);
    b.sync();
    let (out, expect) = b.cut();
    ("Flush before Sync".to_owned(), vec![first, Action::exchange(out, expect)])
}

fn insert_sql(s: &Session, value: &str, m: &str) -> (String, Row) {
    let sql = format!("insert into t (v, owner, m) values ('{value}', '{}', '{m}')", s.owner);
    (sql, Row { schema: s.schema.name(), value: s.schema.stored(value), marker: m.to_owned() })
}

#[derive(Debug, Clone, Copy)]
enum TxOp {
    Select,
    Insert,
    Batch,
    Error,
    Savepoint,
    RollbackTo,
    SetLocal,
    Probe,
}

fn transaction(s: &mut Session, rng: &mut Rng, m: &str) -> (String, Vec<Action>) {
    let mut actions = vec![Action::query("begin", vec![complete("BEGIN"), ready('T')])];
    s.tx = Some(Tx::default());
    for i in 0..rng.range(1, 4) {
        let tx = s.tx.as_ref().expect("in a transaction");
        let (aborted, savepoint) = (tx.aborted, tx.savepoint.is_some());
        let op = rng.weighted(&[
            (TxOp::Select, 3),
            (TxOp::Insert, if aborted { 0 } else { 3 }),
            (TxOp::Batch, if aborted { 0 } else { 2 }),
            (TxOp::Error, 1),
            (TxOp::Savepoint, if aborted || savepoint { 0 } else { 1 }),
            (TxOp::RollbackTo, if savepoint { 2 } else { 0 }),
            // Not after a savepoint, so ROLLBACK TO never has to undo it.
            (TxOp::SetLocal, if aborted || savepoint { 0 } else { 1 }),
            (TxOp::Probe, if aborted { 0 } else { 1 }),
        ]);
        actions.push(transaction_op(s, rng, op, &format!("{m}-{i}")));
    }
    let tx = s.tx.take().expect("in a transaction");
    let commit = rng.chance(70);
    let (sql, tag) = match (commit, tx.aborted) {
        (true, false) => {
            s.rows.extend(tx.pending);
            ("commit", "COMMIT")
        }
        (true, true) => ("commit", "ROLLBACK"),
        (false, _) => ("rollback", "ROLLBACK"),
    };
    actions.push(Action::query(sql, vec![complete(tag), ready('I')]));
    let name = if commit { "transaction, then COMMIT" } else { "transaction, then ROLLBACK" };
    (name.to_owned(), actions)
}

/// One statement inside the open transaction; `mi` is its marker.
fn transaction_op(s: &mut Session, rng: &mut Rng, op: TxOp, mi: &str) -> Action {
    let tx = s.tx.as_mut().expect("in a transaction");
    if tx.aborted && !matches!(op, TxOp::RollbackTo) {
        return Action::query(&format!("select '{mi}' as m"), vec![error("25P02"), ready('E')]);
    }
    match op {
        TxOp::Select => Action::query(&format!("select '{mi}' as m"), with_ready(one_text("m", mi), s)),
        TxOp::Insert => {
            let (sql, row) = insert_sql(s, rng.pick(&VALUES), mi);
            s.wrote(vec![row]);
            Action::query(&sql, vec![complete("INSERT 0 1"), ready('T')])
        }
        TxOp::Batch => {
            let mut b = Batch::new(s, mi);
            for _ in 0..rng.range(1, 2) {
                let allow_errors = rng.chance(20);
                unit(&mut b, rng, allow_errors);
            }
            b.sync();
            let (out, expect) = b.cut();
            Action::exchange(out, expect)
        }
        TxOp::Error => {
            tx.aborted = true;
            Action::query("select 1/0 as boom", vec![error("22012"), ready('E')])
        }
        TxOp::Savepoint => {
            tx.savepoint = Some(tx.pending.len());
            Action::query("savepoint sp", vec![complete("SAVEPOINT"), ready('T')])
        }
        TxOp::RollbackTo => {
            tx.pending.truncate(tx.savepoint.expect("a savepoint"));
            tx.aborted = false;
            Action::query("rollback to savepoint sp", vec![complete("ROLLBACK"), ready('T')])
        }
        TxOp::SetLocal => {
            tx.local_x = Some(mi.to_owned());
            Action::query(&format!("set local app.x = '{mi}'"), vec![complete("SET"), ready('T')])
        }
        TxOp::Probe => {
            let expect = vec![probe_columns(), probe_row(s, mi), complete("SELECT 1"), ready('T')];
            Action::query(&probe_sql(&format!("'{mi}'")), expect)
        }
    }
}

fn cancel(m: &str) -> (String, Vec<Action>) {
    let mut out = Out::default();
    out.query(&format!("select pg_sleep(5) as slept, '{m}' as m"));
    let (send, sent) = out.finish();
    let expect = vec![row_desc(&[("slept", VOID), ("m", TEXT)]), error("57014"), ready('I')];
    ("CancelRequest of a running pg_sleep".to_owned(), vec![Action::Exchange { send, sent, expect, cancel: true }])
}

pub fn probe_step(s: &mut Session, rng: &mut Rng, number: usize) -> Step {
    let m = marker(s.client, number);
    let (kind, actions) = probe(s, rng, &m);
    Step { number, kind, marker: m, actions }
}

fn probe(s: &mut Session, rng: &mut Rng, m: &str) -> (String, Vec<Action>) {
    if rng.chance(30) {
        let mut out = Out::default();
        out.parse("", &probe_sql("$1::text"));
        out.bind("", &[m.to_owned()]);
        out.execute(0);
        out.sync();
        let expect = vec!["1".to_owned(), "2".to_owned(), probe_row(s, m), complete("SELECT 1"), s.ready()];
        return ("state probe (extended)".to_owned(), vec![Action::exchange(out, expect)]);
    }
    let expect = vec![probe_columns(), probe_row(s, m), complete("SELECT 1"), s.ready()];
    ("state probe".to_owned(), vec![Action::query(&probe_sql(&format!("'{m}'")), expect)])
}

fn rows(s: &mut Session, rng: &mut Rng, m: &str) -> (String, Vec<Action>) {
    if rng.chance(50) {
        let mut b = Batch::new(s, m);
        let text = if rng.chance(50) { Text::Vals } else { Text::Count };
        b.parse("", text);
        b.bind("", "");
        execute_portal(&mut b, rng, text);
        b.sync();
        let (out, expect) = b.cut();
        return ("own rows (extended)".to_owned(), vec![Action::exchange(out, expect)]);
    }
    let visible = s.visible(&[]);
    let mut expect = vec![row_desc(&[("m", TEXT), ("v", TEXT)])];
    expect.extend(visible.iter().map(|r| row(&[r.marker.as_str(), r.value.as_str()])));
    expect.push(complete(&format!("SELECT {}", visible.len())));
    expect.push(s.ready());
    let sql = format!("select m, v::text as v from t where owner = '{}' order by id", s.owner);
    ("own rows".to_owned(), vec![Action::query(&sql, expect)])
}

/// Changes the result type of the client's own table, then runs what was
/// prepared before (0A000 when the type differs) and prepares it anew.
fn ddl(s: &mut Session, rng: &mut Rng, m: &str) -> (String, Vec<Action>) {
    let target = s.ddl.map_or(crate::model::DdlType::Int, |t| t.other());
    s.ddl = Some(target);
    let sql = format!("alter table iso.d_c{:02} alter column a type {}", s.client, target.sql());
    let mut actions = vec![Action::query(&sql, vec![complete("ALTER TABLE"), ready('I')])];
    let mut b = Batch::new(s, m);
    let before: Vec<String> = names_where(b.s, |st| st.text == Text::Ddl);
    for name in before {
        b.bind(&name, "");
        b.execute(0);
        b.sync();
    }
    if let Some(name) = unused_name(b.s, rng) {
        b.parse(name, Text::Ddl);
        b.bind(name, "");
        b.execute(0);
        b.sync();
    }
    let (out, expect) = b.cut();
    if !out.is_empty() {
        actions.push(Action::exchange(out, expect));
    }
    ("ALTER TABLE changes a prepared statement's result type".to_owned(), actions)
}

#[derive(Debug, Clone, Copy)]
enum Vanish {
    IdleInTransaction,
    DuringQuery,
    MidBatch,
    MidCopy,
}

/// Ends the session by dropping the socket with work unfinished.
pub fn vanish_step(s: &mut Session, rng: &mut Rng, number: usize) -> Step {
    let m = marker(s.client, number);
    let how = rng.pick(&[Vanish::IdleInTransaction, Vanish::DuringQuery, Vanish::MidBatch, Vanish::MidCopy]);
    let (sql, _) = insert_sql(s, "7", &m);
    let begin = Action::query(&format!("begin; {sql}"), vec![complete("BEGIN"), complete("INSERT 0 1"), ready('T')]);
    let vanish = |out: Out, pause_ms| {
        let (send, _) = out.finish();
        Action::Vanish { send, pause_ms }
    };
    let (kind, actions) = match how {
        Vanish::IdleInTransaction => ("vanish idle in a transaction", vec![begin, vanish(Out::default(), 0)]),
        Vanish::DuringQuery => {
            let mut out = Out::default();
            out.query("select pg_sleep(0.3)");
            ("vanish during a query in a transaction", vec![begin, vanish(out, 50)])
        }
        Vanish::MidBatch => {
            let mut b = Batch::new(s, &m);
            b.parse("", Text::Insert);
            b.bind("", "7");
            b.execute(0);
            let (out, _) = b.cut();
            ("vanish in the middle of an extended batch", vec![vanish(out, 50)])
        }
        Vanish::MidCopy => {
            let copy = "copy t (v, owner, m) from stdin";
            let first = Action::query(copy, vec!["G[3]".to_owned()]);
            let mut out = Out::default();
            out.copy_data(&format!("7\t{}\t{m}\n", s.owner));
            ("vanish in the middle of COPY FROM STDIN", vec![first, vanish(out, 50)])
        }
    };
    Step { number, kind: kind.to_owned(), marker: m, actions }
}
