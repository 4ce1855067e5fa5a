use super::lexer::{Backslashes, Kind, Lexer, StrKind};
use super::*;
use Opaque::*;
use SessionStateEffect::*;

/// (sql, session state, changes settings)
type Case = (&'static str, Option<SessionStateEffect>, bool);

fn check(cases: &[Case]) {
    for &(sql, state, changes) in cases {
        let want = SqlEffects { session_state: state, changes_settings: changes };
        assert_eq!(classify(sql.as_bytes()), want, "{sql:?}");
        let cut = sql.split('\0').next().unwrap_or_default().as_bytes();
        assert_eq!(lex_and_classify(cut), want, "full lexer: {sql:?}");
        assert_eq!(session_state_effect(sql.as_bytes()), state, "{sql:?}");
    }
}

#[test]
fn set_and_reset() {
    check(&[
        ("SET search_path = x", Some(Set), true),
        ("  /* c */ -- x\n set  application_name to 'a'", Some(Set), true),
        ("set session search_path = x", Some(Set), true),
        ("SET SESSION AUTHORIZATION bob", Some(Set), true),
        ("set session characteristics as transaction read only", Some(Set), true),
        ("set role admin", Some(Set), true),
        ("set \"search_path\" = x", Some(Set), true),
        ("SET LOCAL search_path = x", None, true),
        ("set local search_path = x", None, true),
        ("set transaction isolation level serializable", None, true),
        ("SET CONSTRAINTS ALL DEFERRED", None, true),
        ("RESET ALL", Some(Set), true),
        ("reset search_path", Some(Set), true),
        ("begin; set search_path = x; commit", Some(Set), true),
        ("select 1; set search_path = x", Some(Set), true),
        ("select 1;set search_path = x;", Some(Set), true),
        ("UPDATE t SET a = 1", None, false),
        ("UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;", None, false),
        ("alter table t alter column a set default 1", None, false),
        ("insert into t values (1) on conflict (a) do update set a = 2", None, false),
        ("settle", None, false),
        ("select 1", None, false),
        ("", None, false),
        (" ; ;; ", None, false),
    ]);
}

#[test]
fn set_config_calls() {
    check(&[
        ("select set_config('a','b', true)", None, true),
        ("select set_config('a','b', TRUE)", None, true),
        ("select set_config('a', 'b', 'on')", None, true),
        ("select set_config('a', 'b', 't')", None, true),
        ("select set_config('a','b', false)", Some(Set), true),
        ("select set_config('a','b', $1)", Some(Set), true),
        ("select set_config('a','b', true::bool)", Some(Set), true),
        ("select set_config('a','b', not false)", Some(Set), true),
        ("select set_config('a','b', 'off')", Some(Set), true),
        ("select set_config('a', 'b')", Some(Set), true),
        ("select set_config('a', (select 'b', true), false)", Some(Set), true),
        ("select set_config('a', f(1, 2), true)", None, true),
        ("select set_config('a', array[1, 2]::text, true)", None, true),
        ("select set_config(is_local => true, setting_name => 'a', new_value => 'b')", Some(Set), true),
        ("select pg_catalog.set_config('a', 'b', false)", Some(Set), true),
        ("select \"pg_catalog\".\"set_config\"('a', 'b', false)", Some(Set), true),
        ("select \"SET_CONFIG\"('a', 'b', false)", None, false),
        ("select SET_CONFIG ( 'a', 'b', false)", Some(Set), true),
        ("select set_config /* why not */ ('a', 'b', false)", Some(Set), true),
        ("select 1 from t where x = (select length(set_config('a', 'b', false)))", Some(Set), true),
        ("select * from set_config('a', 'b', false)", Some(Set), true),
        ("select U&\"set\\005fconfig\"('a', 'b', false)", Some(Set), true),
        ("select U&\"set!005fconfig\" UESCAPE '!' ('a', 'b', false)", Some(Set), true),
        ("select U&\"set\\+00005Fconfig\"('a', 'b', true)", None, true),
        ("select set_config('a', 'b', set_config('c', 'd', false)::bool)", Some(Set), true),
        ("select set_config", None, false),
        ("select my_set_config('a', 'b', false)", None, false),
        ("select 'set_config(''a'', ''b'', false)'", None, false),
    ]);
}

#[test]
fn function_calls() {
    check(&[
        ("select pg_advisory_lock(1)", Some(AdvisoryLock), false),
        ("SELECT PG_ADVISORY_LOCK(1)", Some(AdvisoryLock), false),
        ("select 1; select pg_try_advisory_lock(7)", Some(AdvisoryLock), false),
        ("select pg_try_advisory_lock(1)", Some(AdvisoryLock), false),
        ("select pg_advisory_lock_shared(1)", Some(AdvisoryLock), false),
        ("select PG_TRY_ADVISORY_LOCK_SHARED(2)", Some(AdvisoryLock), false),
        ("select pg_catalog.pg_advisory_lock(1, 2)", Some(AdvisoryLock), false),
        ("select x from t where pg_try_advisory_lock(t.id) and y", Some(AdvisoryLock), false),
        ("select pg_advisory_xact_lock(1)", None, false),
        ("select pg_try_advisory_xact_lock_shared(1)", None, false),
        ("select pg_advisory_unlock(1)", None, false),
        ("select my_advisory_lock(1)", None, false),
        ("select 'dvisory_lock' || 'v'", None, false),
        ("select pg_advisory_lock", None, false),
        ("vv", None, false),
        ("select dblink_connect('c', 'dbname=x')", Some(Dblink), false),
        ("select dblink_connect_u('dbname=x')", Some(Dblink), false),
        ("select dblink_open('c', 'select 1')", Some(Dblink), false),
        ("select * from dblink('dbname=x', 'select 1') as t(a int)", None, false),
    ]);
}

#[test]
fn other_session_state() {
    check(&[
        ("LISTEN ch", Some(Listen), false),
        ("listen x", Some(Listen), false),
        ("LiStEn x", Some(Listen), false),
        ("unlisten x", None, false),
        ("prepare p as select 1", Some(Prepare), false),
        ("PREPARE p (int) AS select $1", Some(Prepare), false),
        ("select 1; prepare p as select 1", Some(Prepare), false),
        ("prepare transaction 'gid'", None, false),
        ("prepare transaction as select 1", Some(Prepare), false),
        ("commit prepared 'gid'", None, false),
        ("execute p(1)", None, false),
        ("deallocate all", Some(Deallocate), false),
        ("select 1; DEALLOCATE p", Some(Deallocate), false),
        ("discard all", Some(Discard), true),
        ("select 1; discard plans", Some(Discard), true),
        ("load 'auto_explain'", Some(Load), false),
        ("declare c cursor with hold for select 1", Some(HoldCursor), false),
        ("DECLARE c CURSOR WITH HOLD FOR select 1", Some(HoldCursor), false),
        ("declare c no scroll cursor without hold for select 1", None, false),
        ("declare c cursor for select 1", None, false),
        ("with hold as (select 1) select * from hold", None, false),
        ("DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$", Some(Unprovable(DoBlock)), true),
        ("do language plpgsql 'begin null; end'", Some(Unprovable(DoBlock)), true),
        ("call p()", Some(Unprovable(Call)), true),
        ("select 1; CALL p(1)", Some(Unprovable(Call)), true),
        ("listen a; set local search_path = x", Some(Listen), true),
        ("select 1; listen a; set search_path = x", Some(Listen), true),
    ]);
}

#[test]
fn temporary_objects() {
    check(&[
        ("create temp table t(a int)", Some(TempTable), false),
        ("CREATE TEMPORARY TABLE t (a int)", Some(TempTable), false),
        ("create global temporary table t (a int)", Some(TempTable), false),
        ("create local temp table t (a int)", Some(TempTable), false),
        ("create temp view v as select 1", Some(TempTable), false),
        ("create or replace temp view v as select 1", Some(TempTable), false),
        ("create temp sequence s", Some(TempTable), false),
        ("create unlogged table t (a int)", None, false),
        ("create table t (a int)", None, false),
        ("create table t (temp int)", None, false),
        ("create table pg_temp.t(a int)", Some(TempTable), false),
        ("CREATE TABLE PG_TEMP.t(a int)", Some(TempTable), false),
        ("create table \"pg_temp\".t(a int)", Some(TempTable), false),
        ("create function pg_temp_3.f() returns int language sql as 'select 1'", Some(TempTable), false),
        ("create table pg_temporary.t(a int)", None, false),
        // Older servers read `1pg_temp` as `1` and `pg_temp`.
        ("create table 1pg_temp.t(a int)", Some(TempTable), false),
        ("select * from pg_temp.t", None, false),
        ("select 1 into temporary t", Some(TempTable), false),
        ("select 1 into temp table t", Some(TempTable), false),
        ("select * into local temp t from x", Some(TempTable), false),
        ("select * into pg_temp.t from x", Some(TempTable), false),
        ("select 1 into t", None, false),
        ("insert into temp values (1)", None, false),
        ("merge into temp t using s on true when matched then do nothing", None, false),
        ("select temp from weather", None, false),
        ("explain analyze create temp table t as select 1", Some(TempTable), false),
        ("discard temp", Some(Discard), true),
    ]);
}

#[test]
fn literals_and_comments_hide_nothing() {
    check(&[
        ("select 'x; set a=1'", None, false),
        ("select $$; set a = 1$$", None, false),
        ("select $a$ $$ ; set x=1 $$ $a$", None, false),
        ("select $a$ $b$ ; set x=1 $b$ $a$", None, false),
        ("select $a$ x $ba$; set x=1 $a$", None, false),
        ("/* /* nested */ set x = 1; */ select 1", None, false),
        ("/* /* nested */ */ set x = 1", Some(Set), true),
        ("select 1 -- ; set x\n", None, false),
        ("select 1 -- ; set x\r", None, false),
        ("select 1 --\nset x = 1", None, false),
        ("select 1 --\n; set x = 1", Some(Set), true),
        ("select \"a;set x=1\"", None, false),
        ("select \"a\"\";set x=1\"", None, false),
        ("select e'\\\\'; set x = 1; '", Some(Set), true),
        ("select E'\\'; set x = 1; '", None, false),
        ("select e'x''; set x = 1; '", None, false),
        ("select b'101'; set x = 1", Some(Set), true),
        ("select x'1f'; set x = 1", Some(Set), true),
        ("select n'abc;'; set x = 1", Some(Set), true),
        ("select U&'d\\0061t;'; set x = 1", Some(Set), true),
        ("select 'a'\n';set x = 1'", None, false),
        ("select 'a' -- c\n  ';set x = 1'", None, false),
        ("select e'a'\n'\\'; set x = 1; --'", None, false),
        ("select e'a'   '\\'; set x = 1; --'", Some(Set), true),
        ("select a$$; set x = 1; select 1", Some(Set), true),
        ("select $1; set x = 1", Some(Set), true),
        ("select 1$$; set x = 1$$", None, false),
        ("select $x; set x = 1", Some(Set), true),
        ("select 1e'\\'; set x = 1; '", None, false),
        ("select 'a\0'; set x = 1", Some(Unprovable(Unterminated)), true),
        ("select 1;\0 set x = 1", None, false),
    ]);
}

#[test]
fn backslashes_in_plain_literals_are_read_both_ways() {
    check(&[
        // Only standard_conforming_strings = on runs the SET.
        ("select 'a\\'; set x = 1; select 'b'", Some(Set), true),
        // Only standard_conforming_strings = off runs the SET.
        ("select 'x\\''; set a = 1; --'", Some(Set), true),
        // Only standard_conforming_strings = off calls the function.
        ("select 'x\\'', pg_advisory_lock(1), 'y\\''", Some(AdvisoryLock), false),
        // Either way nothing: the off reading is unterminated, so rejected.
        ("select replace(path, '\\', '/') from files", None, false),
        ("select 'C:\\'", None, false),
        ("select '\\d+'", None, false),
    ]);
}

#[test]
fn unterminated_text_proves_nothing() {
    check(&[
        ("select 'abc", Some(Unprovable(Unterminated)), true),
        ("select e'abc\\'", Some(Unprovable(Unterminated)), true),
        ("select \"abc", Some(Unprovable(Unterminated)), true),
        ("select $$abc", Some(Unprovable(Unterminated)), true),
        ("select $a$abc$$", Some(Unprovable(Unterminated)), true),
        ("select 1 /* abc", Some(Unprovable(Unterminated)), true),
        ("select 1 /* /* */", Some(Unprovable(Unterminated)), true),
        ("select U&\"abc", Some(Unprovable(Unterminated)), true),
        ("listen x; select 'abc", Some(Listen), true),
        ("select 1 -- no newline", None, false),
    ]);
}

#[test]
fn lexer_tokens() {
    let sql = b"SELECT e'\\'', \"a\"\"b\", $t$x$t$, $1, 1.5e3, .5, a.b, U&\"x\" UESCAPE '!', x[1]; ";
    let kinds: Vec<Kind> = Lexer::new(sql, Backslashes::Literal).map(|t| t.kind).collect();
    use Kind::*;
    let want = [
        Word,
        Str(StrKind::Escape),
        Comma,
        QuotedIdent,
        Comma,
        Str(StrKind::Dollar),
        Comma,
        Param,
        Comma,
        Number,
        Comma,
        Number,
        Comma,
        Word,
        Dot,
        Word,
        Comma,
        UnicodeIdent { escape: b'!' },
        Comma,
        Word,
        Open,
        Number,
        Close,
        Semicolon,
    ];
    assert_eq!(kinds, want);
}

#[test]
fn prepared_commands() {
    use PreparedCommand::*;
    let cases: &[(&str, Option<PreparedCommand>)] = &[
        ("DEALLOCATE \"Foo\"", Some(Deallocate(b"Foo".to_vec()))),
        ("deallocate prepare S_1", Some(Deallocate(b"s_1".to_vec()))),
        ("deallocate \"a\"\"b\";", Some(Deallocate(b"a\"b".to_vec()))),
        ("deallocate prepare", Some(Deallocate(b"prepare".to_vec()))),
        ("deallocate \"all\"", Some(Deallocate(b"all".to_vec()))),
        ("deallocate all;", Some(DeallocateAll)),
        ("DEALLOCATE PREPARE ALL", Some(DeallocateAll)),
        (" /* c */ deallocate all ; -- done\n\0", Some(DeallocateAll)),
        ("discard plans", Some(DiscardPlans)),
        ("DISCARD ALL", Some(DiscardAll)),
        ("discard temp", None),
        ("deallocate a; select 1", None),
        ("deallocate a;;", None),
        ("deallocate", None),
        ("deallocate 'a'", None),
        ("deallocate a b", None),
        ("deallocate U&\"a\"", None),
        ("deallocate all /* open", None),
        ("select 1", None),
    ];
    for (sql, want) in cases {
        assert_eq!(&prepared_command(sql.as_bytes()), want, "{sql:?}");
    }
    let long = format!("deallocate {}é", "A".repeat(62));
    assert_eq!(prepared_command(long.as_bytes()), Some(Deallocate("a".repeat(62).into_bytes())));
}

/// xorshift64: a fixed sequence, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as usize
    }
}

/// Either bytes weighted towards those the lexer treats specially, or
/// SQL-like pieces, up to 40 of them.
fn random_text(rng: &mut Rng) -> Vec<u8> {
    const BYTES: &[u8] = b"'\"$-/*;()[],.\\eEuUbxn&_01 \n\tm";
    // `|`-separated, so the list stays readable.
    const PIECES: &str = "select |x| |'a'|''|\"q\"|\"\"|$1|$$|$a$|(|)|;|--|\n|/*|*/|e'|E'\\'|\\|U&|&|'|\"|set_config|\
        pg_advisory_lock|temp|into |create |set |do |1|.|,|true|false|pg_temp|with hold|declare |$|é|\0|m|temporary|1temp|xtemp|pg_temp_1|TeMp|global |local |insert ";
    let pieces = PIECES.split('|').collect::<Vec<_>>();
    let len = rng.next() % 40;
    let mut text = Vec::new();
    if rng.next() % 2 == 0 {
        for _ in 0..len {
            let r = rng.next();
            text.push(if r % 4 == 0 { (r >> 8) as u8 } else { BYTES[(r >> 8) % BYTES.len()] });
        }
    } else {
        for _ in 0..len {
            text.extend_from_slice(pieces[rng.next() % pieces.len()].as_bytes());
        }
    }
    text
}

/// Random text never panics, lexes to the end in order, and the quick
/// check never calls harmless what the full lexer finds anything in.
#[test]
fn random_text_is_handled() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut quick_answers = 0;
    for _ in 0..40_000 {
        let text = random_text(&mut rng);
        let cut = text.split(|&b| b == 0).next().unwrap_or_default();
        let full = lex_and_classify(cut);
        assert_eq!(classify(&text), full, "{:?}", String::from_utf8_lossy(&text));
        if quick::harmless(&text) {
            quick_answers += 1;
            assert_eq!(full, SqlEffects::default(), "{:?}", String::from_utf8_lossy(&text));
        }
        prepared_command(&text);
        for backslashes in [Backslashes::Literal, Backslashes::Escape] {
            let mut end = 0;
            for token in Lexer::new(&text, backslashes) {
                assert!(token.start >= end && token.end > token.start, "{text:?}");
                end = token.end;
            }
        }
    }
    assert!(quick_answers > 2_000, "only {quick_answers} texts took the quick path");
}

/// Ordinary application queries take the quick path; each of these is
/// checked against the full lexer by `check` elsewhere or here.
#[test]
fn ordinary_queries_take_the_quick_path() {
    let queries = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
        "SELECT \"users\".\"id\", \"users\".\"name\" FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
        "select coalesce(a.filler, 'n/a; it''s 61') from t /* note */ where x in (1, 2) -- why\n",
        "/* app=web */ select count(*) from orders o join items i on i.order_id = o.id where o.total > 10.5e3",
        "BEGIN",
        "COMMIT;\n",
        "BEGIN; UPDATE t SET a = a + 1 WHERE id = 7; SELECT a FROM t WHERE id = 7; COMMIT;",
        "insert into docs (body) values ('{\"a\": \"x\\\"y\"}'), ('C:\\\\dir') returning id",
        "select * from t where name like 'a\\_b%'",
        "SELECT body FROM email_templates WHERE temperature > 3 AND tempo = $1",
        "select now() - interval '1 day', x::text, y / 2 from t\0",
    ];
    for sql in queries {
        assert!(quick::harmless(sql.as_bytes()), "{sql}");
        assert_eq!(classify(sql.as_bytes()), SqlEffects::default(), "{sql}");
    }
}

#[test]
fn plain_session_sets_are_tracked() {
    use super::tracked_set;
    let tracked = |sql: &str| tracked_set(sql.as_bytes());
    assert_eq!(tracked("SET extra_float_digits = 3"), Some("extra_float_digits".into()));
    assert_eq!(tracked("SET application_name = 'PostgreSQL JDBC Driver'"), Some("application_name".into()));
    assert_eq!(tracked("set SESSION Search_Path TO a_schema, \"$user\", public ;"), Some("search_path".into()));
    assert_eq!(tracked("SET \"TimeZone\" = 'UTC'"), Some("timezone".into()));
    assert_eq!(tracked("SET myapp.tenant = '42' -- comment"), Some("myapp.tenant".into()));
    assert_eq!(tracked("/* c */ SET statement_timeout = -1"), Some("statement_timeout".into()));
    for sql in [
        "SET LOCAL statement_timeout = 5",
        "SET SESSION LOCAL x = 1",
        "SET statement_timeout TO DEFAULT",
        "SET statement_timeout = default",
        "SET TIME ZONE 'UTC'",
        "SET ROLE app",
        "SET role = app",
        "SET SESSION AUTHORIZATION app",
        "SET session_authorization = app",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET transaction_isolation = serializable",
        "SET CONSTRAINTS ALL DEFERRED",
        "SET SCHEMA 'x'",
        "SET pgrelay.min_lsn = '0/1'",
        "SET x = 1; SELECT 1",
        "SET x = 1; SET y = 2",
        "SELECT 1; SET x = 1",
        "SET x =",
        "SET x = 'open",
        "SET x = 'a\\'; RESET ALL; --'",
        "SET x = f(1)",
        "SET x = $1",
        "RESET x",
        "SET \"caf\u{e9}\" = 1",
    ] {
        assert_eq!(tracked(sql), None, "{sql}");
    }
}
