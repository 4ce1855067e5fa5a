//! COPY both ways, and COPY FROM STDIN that fails on a bad row, with what
//! the client pipelines behind it (CopyDone, Sync, a Query) in one write.

use crate::model::{Row, Session};
use crate::render::{complete, copy_data, error, ready, row, row_desc, TEXT, VOID};
use crate::script::{Action, Rng};
use crate::wire_out::Out;

pub fn copy_out(s: &mut Session, rng: &mut Rng, m: &str) -> (String, Vec<Action>) {
    let mut expect = Vec::new();
    let sql = if rng.chance(50) {
        let k = rng.range(1, 4);
        expect.push("H[1]".to_owned());
        expect.extend((1..=k).map(|g| copy_data(&format!("{m}:{g}\n"))));
        expect.extend(["c".to_owned(), complete(&format!("COPY {k}"))]);
        format!("copy (select '{m}:' || g from generate_series(1, {k}) g) to stdout")
    } else {
        let visible = s.visible(&[]);
        expect.push("H[2]".to_owned());
        expect.extend(visible.iter().map(|r| copy_data(&format!("{}\t{}\n", r.value, r.marker))));
        expect.extend(["c".to_owned(), complete(&format!("COPY {}", visible.len()))]);
        format!("copy (select v::text, m from t where owner = '{}' order by id) to stdout", s.owner)
    };
    expect.push(ready('I'));
    ("COPY TO STDOUT".to_owned(), vec![Action::query(&sql, expect)])
}

#[derive(Debug, Clone, Copy)]
enum CopyIn {
    Separate,
    OneWrite,
    Extended,
}

pub fn copy_in(s: &mut Session, rng: &mut Rng, m: &str) -> (String, Vec<Action>) {
    let copy = "copy t (v, owner, m) from stdin";
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for k in 0..rng.range(1, 3) {
        let value = rng.pick(&["007", "42", "7"]);
        let marker = format!("{m}-{k}");
        lines.push(format!("{value}\t{}\t{marker}\n", s.owner));
        rows.push(Row { schema: s.schema.name(), value: s.schema.stored(value), marker });
    }
    let data = |out: &mut Out| {
        for line in &lines {
            out.copy_data(line);
        }
        out.copy_done();
    };
    let done = vec![complete(&format!("COPY {}", rows.len())), ready('I')];
    s.rows.extend(rows);
    match rng.pick(&[CopyIn::Separate, CopyIn::OneWrite, CopyIn::Extended]) {
        CopyIn::Separate => {
            let mut out = Out::default();
            data(&mut out);
            let start = Action::query(copy, vec!["G[3]".to_owned()]);
            ("COPY FROM STDIN".to_owned(), vec![start, Action::exchange(out, done)])
        }
        CopyIn::OneWrite => {
            let mut out = Out::default();
            out.query(copy);
            data(&mut out);
            let mut expect = vec!["G[3]".to_owned()];
            expect.extend(done);
            ("COPY FROM STDIN, all in one write".to_owned(), vec![Action::exchange(out, expect)])
        }
        CopyIn::Extended => {
            let mut start = Out::default();
            start.parse("", copy);
            start.bind("", &[]);
            start.execute(0);
            // Ignored by the server while it waits for COPY data.
            start.sync();
            let start = Action::exchange(start, vec!["1".to_owned(), "2".to_owned(), "G[3]".to_owned()]);
            let mut out = Out::default();
            data(&mut out);
            out.sync();
            ("COPY FROM STDIN (extended protocol)".to_owned(), vec![start, Action::exchange(out, done)])
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fail {
    ThenCopyDone,
    ThenSyncAndQuery,
    ThenCopyDoneSyncAndQuery,
    ClientGivesUp,
    AllInOneWrite,
    Extended,
}

/// COPY FROM STDIN into t(n int, ...) with a row whose n is 'x'.
pub fn copy_in_fail(s: &mut Session, rng: &mut Rng, m: &str) -> (String, Vec<Action>) {
    let copy = "copy t (n, owner, m) from stdin";
    let how = rng.pick(&[
        Fail::ThenCopyDone,
        Fail::ThenSyncAndQuery,
        Fail::ThenCopyDoneSyncAndQuery,
        Fail::ClientGivesUp,
        Fail::AllInOneWrite,
        Fail::Extended,
    ]);
    let good_first = rng.chance(40);
    let rows = |out: &mut Out| {
        if good_first {
            out.copy_data(&format!("1\t{}\t{m}-good\n", s.owner));
        }
        out.copy_data(&format!("x\t{}\t{m}-bad\n", s.owner));
    };
    let after = format!("{m}-after");
    // The short sleep makes the Query's rows arrive after, not with, the
    // ReadyForQuery before them, which is where a miscount shows.
    let after_sql = format!("select pg_sleep(0.05) as slept, '{after}' as m");
    let after_expect =
        vec![row_desc(&[("slept", VOID), ("m", TEXT)]), row(&["", after.as_str()]), complete("SELECT 1"), ready('I')];
    let start = || Action::query(copy, vec!["G[3]".to_owned()]);
    let failed = vec![error("22P02"), ready('I')];
    let (kind, actions) = match how {
        Fail::ThenCopyDone => {
            let mut out = Out::default();
            rows(&mut out);
            out.copy_done();
            ("bad row, then CopyDone", vec![start(), Action::exchange(out, failed)])
        }
        Fail::ThenSyncAndQuery | Fail::ThenCopyDoneSyncAndQuery => {
            let mut out = Out::default();
            rows(&mut out);
            if matches!(how, Fail::ThenCopyDoneSyncAndQuery) {
                out.copy_done();
            }
            out.sync();
            out.query(&after_sql);
            let mut expect = failed;
            expect.push(ready('I'));
            expect.extend(after_expect);
            let kind = if matches!(how, Fail::ThenSyncAndQuery) {
                "bad row, then Sync and a Query in one write"
            } else {
                "bad row, then CopyDone, Sync and a Query in one write"
            };
            (kind, vec![start(), Action::exchange(out, expect)])
        }
        Fail::ClientGivesUp => {
            let mut out = Out::default();
            out.copy_fail("the client gave up");
            ("CopyFail", vec![start(), Action::exchange(out, vec![error("57014"), ready('I')])])
        }
        Fail::AllInOneWrite => {
            let mut out = Out::default();
            out.query(copy);
            rows(&mut out);
            out.sync();
            out.query(&after_sql);
            let mut expect = vec!["G[3]".to_owned()];
            expect.extend(failed);
            expect.push(ready('I'));
            expect.extend(after_expect);
            ("the COPY, a bad row, Sync and a Query all in one write", vec![Action::exchange(out, expect)])
        }
        Fail::Extended => {
            let mut begin = Out::default();
            begin.parse("", copy);
            begin.bind("", &[]);
            begin.execute(0);
            begin.sync();
            let begin = Action::exchange(begin, vec!["1".to_owned(), "2".to_owned(), "G[3]".to_owned()]);
            let mut out = Out::default();
            rows(&mut out);
            out.copy_done();
            out.sync();
            out.query(&after_sql);
            let mut expect = vec![error("22P02"), ready('I')];
            expect.extend(after_expect);
            ("extended protocol: bad row, then CopyDone, Sync and a Query", vec![begin, Action::exchange(out, expect)])
        }
    };
    (format!("failing COPY FROM STDIN: {kind}"), actions)
}
