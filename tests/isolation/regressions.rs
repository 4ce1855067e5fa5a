//! Known crossings, one per test, each against the real server and each
//! asserting what a direct connection to PostgreSQL shows
//! (`PGRELAY_ISOLATION_AGAINST=direct` runs them against the primary
//! itself, where they all pass).
//!
//! Against the code they were written for (063f7f9) every one fails:
//!
//! 1. `failing_copy_with_sync_and_query_pipelined_reaches_only_its_client`:
//!    B receives A's `A-after` row instead of its own 'B'.
//! 2. `search_path_decides_the_parameter_type_of_a_named_statement`: the
//!    text schema stores '7', not '007' (the statement prepared for the int
//!    schema is shared with the text one).
//! 3. `session_state_of_a_multi_statement_query_never_reaches_another_client`:
//!    B sees A's search_path and app.tenant (a SET behind `select 1;` and
//!    set_config do not pin).
//! 4. `server_statement_names_cannot_be_forged`: A's `deallocate pgrelay_0`
//!    succeeds (direct: 26000) and replaces B's statement.
//! 5. `sql_deallocate_of_a_protocol_statement_works_as_direct`: 26000, the
//!    server knows the statement only under pgrelay's name.
//! 5. `deallocate_all_and_discard_all_leave_no_missing_statement_behind`:
//!    the next client fails with `prepared statement "pgrelay_0" does not exist`.
//! 6. `alter_table_then_prepare_again_under_a_new_name`: the new name maps to
//!    the old server statement, which fails with 0A000.
//! 7. `parameter_status_reports_the_servers_spelling`: reported as the
//!    client spelled them (`utf8`, `iso, dmy`, `utc`), not `UTF8`, `ISO, DMY`, `UTC`.
//! 8. `notification_pid_is_the_backend_key_pid`: the notification carries the
//!    server's pid, the BackendKeyData pgrelay's own.
//! 9. `parse_of_an_existing_name_fails_with_42p05`: pgrelay answers
//!    ParseComplete and replaces the statement.
//! 10. `server_fatal_reaches_the_client_once`: the server's 57P01 is followed
//!     by pgrelay's own 08006 ("server connection to pg0 closed unexpectedly").
//!     (Since the client outlives its server, it hears of the loss once, as
//!     40001 on its next request.)
//! 11. `a_failed_parse_fails_again_when_pipelined` (found by the randomized
//!     test): the second Parse is answered ParseComplete, and its Bind then
//!     fails with `prepared statement "pgrelay_0" does not exist`.
//! 12. `an_unsynced_batch_of_a_vanished_client_is_not_committed` (found by
//!     the randomized test): pgrelay finishes the abandoned batch with a
//!     Sync of its own, which commits the insert.
//!
//! Written later, each failing on the commit before its fix:
//!
//! 13. `a_close_behind_a_skipped_close_of_the_same_name_closes_it` (found by
//!     the randomized test): the skipped Close was taken back after the
//!     second Close had run, and the name came back (42P05 on its next Parse).
//! 14. `deallocate_all_drops_the_clients_statements_only_when_it_runs`: a
//!     failing DISCARD ALL dropped them; DEALLOCATE ALL behind a SELECT or
//!     by Execute did not.
//! 15. `a_statement_prepared_again_after_alter_table_is_not_the_old_one`
//!     (found by the randomized test): the old statement ran with the new
//!     result type; the text prepared again failed with 0A000.
//! 16. `private_copies_of_the_same_text_stay_apart` (found by the randomized
//!     test): the copy of the statement prepared for bigint was the copy of
//!     the one prepared for int, and ran.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{Msg, PgClient};
use crate::harness::superuser;
use crate::render::{render, render_verbose};
use crate::support::{cluster, relay};
use crate::wire_out::Out;
use crate::SERIAL;

const LIMIT: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(5);

/// A raw client and what it has been answered.
struct Conn {
    client: PgClient,
}

impl Conn {
    async fn login(addr: SocketAddr, params: &[(&str, &str)]) -> Conn {
        Conn { client: PgClient::login(addr, params, LIMIT).await.map(|(client, _)| client).expect("login") }
    }

    async fn write(&mut self, out: Out) {
        let (bytes, _) = out.finish();
        self.client.send(&bytes).await.expect("write");
    }

    /// Messages up to the `readies`th ReadyForQuery, or all that came
    /// before the connection closed or the time limit.
    async fn read(&mut self, readies: usize) -> Vec<Msg> {
        let deadline = Instant::now() + LIMIT;
        let mut got = Vec::new();
        while got.iter().filter(|m: &&Msg| m.tag == b'Z').count() < readies {
            match self.client.recv(deadline).await {
                Ok(msg) => got.push(msg),
                Err(_) => break,
            }
        }
        got
    }

    async fn query(&mut self, sql: &str) -> Vec<Msg> {
        let mut out = Out::default();
        out.query(sql);
        self.write(out).await;
        self.read(1).await
    }

    fn pid(&self) -> u32 {
        self.client.key.0
    }
}

/// Each message as `render` shows it.
fn tags(messages: &[Msg], pid: u32) -> Vec<String> {
    messages.iter().map(|m| render(m, pid)).collect()
}

fn show(messages: &[Msg], pid: u32) -> String {
    messages.iter().map(|m| render_verbose(m, pid)).collect::<Vec<_>>().join(" ")
}

#[track_caller]
fn assert_answers(what: &str, messages: &[Msg], pid: u32, expected: &[&str]) {
    assert_eq!(tags(messages, pid), expected, "{what}: received {}", show(messages, pid));
}

async fn admin(sql: &str) {
    superuser().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn admin_value(sql: &str) -> String {
    let row = superuser().await.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get::<_, Option<String>>(0).unwrap_or_else(|| "NULL".to_owned())
}

const APP: &str = pgrelay::localcluster::TRUST_USER;

/// What a test talks to: pgrelay with `pool` in [pool], or, with
/// `PGRELAY_ISOLATION_AGAINST=direct`, the primary itself, which shows
/// that each expectation is PostgreSQL's own answer.
struct Target {
    addr: SocketAddr,
    app: Option<pgrelay::RunningApp>,
}

impl Target {
    async fn start(pool: &str) -> Target {
        if std::env::var("PGRELAY_ISOLATION_AGAINST").is_ok_and(|v| v == "direct") {
            return Target { addr: cluster().primary().addr(), app: None };
        }
        let app = relay::start_default(cluster(), pool).await;
        Target { addr: app.rw_addr, app: Some(app) }
    }

    async fn stop(self) {
        if let Some(app) = self.app {
            app.shutdown(GRACE).await;
        }
    }
}

/// 1. A COPY FROM STDIN fails on a bad row while the client has already
/// pipelined Sync and a Query behind it; a client sharing the (single)
/// server connection must get only its own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_copy_with_sync_and_query_pipelined_reaches_only_its_client() {
    let _serial = SERIAL.lock().await;
    admin(&format!(
        "drop table if exists reg_copy; create table reg_copy (n int); alter table reg_copy owner to {APP}"
    ))
    .await;
    let target = Target::start("default_pool_size = 1").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let mut out = Out::default();
    out.query("copy reg_copy from stdin");
    a.write(out).await;
    let started = a.client.recv(Instant::now() + LIMIT).await.map(|m| render(&m, 0));
    assert_eq!(started, Ok("G[1]".to_owned()), "A's COPY starts");
    // B waits for the only server connection, which A holds.
    let mut b = Conn::login(target.addr, &[]).await;
    let mut out = Out::default();
    out.query("select 'B' as b");
    b.write(out).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The sleep makes the Query's rows arrive well after the two
    // ReadyForQuery before them, not in the same read.
    let mut out = Out::default();
    out.copy_data("x\n");
    out.sync();
    out.query("select pg_sleep(0.3) as slept, 'A-after' as a");
    a.write(out).await;
    let b_got = b.read(1).await;
    assert_answers("B", &b_got, b.pid(), &["T[b:25]", "D['B']", "C[SELECT 1]", "Z[I]"]);
    let a_got = a.read(3).await;
    let expected = ["E[22P02]", "Z[I]", "Z[I]", "T[slept:2278,a:25]", "D['','A-after']", "C[SELECT 1]", "Z[I]"];
    assert_answers("A", &a_got, a.pid(), &expected);
    target.stop().await;
}

/// 2. The same text prepared as a named statement with an untyped
/// parameter means an int parameter in one schema and a text one in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_decides_the_parameter_type_of_a_named_statement() {
    let _serial = SERIAL.lock().await;
    let mut setup = String::new();
    for (schema, v) in [("reg_sp1", "int"), ("reg_sp2", "text")] {
        setup.push_str(&format!(
            "drop schema if exists {schema} cascade; create schema {schema} authorization {APP};\
             create table {schema}.t (v {v}); alter table {schema}.t owner to {APP};"
        ));
    }
    admin(&setup).await;
    let target = Target::start("default_pool_size = 1").await;
    for schema in ["reg_sp1", "reg_sp2"] {
        let mut c = Conn::login(target.addr, &[("search_path", schema)]).await;
        let mut out = Out::default();
        out.parse("ins", "insert into t values ($1)");
        out.bind("ins", &["007".to_owned()]);
        out.execute(0);
        out.sync();
        c.write(out).await;
        let got = c.read(1).await;
        assert_answers(schema, &got, c.pid(), &["1", "2", "C[INSERT 0 1]", "Z[I]"]);
    }
    assert_eq!(admin_value("select string_agg(v::text, ',') from reg_sp1.t").await, "7");
    assert_eq!(admin_value("select string_agg(v, ',') from reg_sp2.t").await, "007", "the text column keeps '007'");
    target.stop().await;
}

/// 3. Session state behind a first statement that looks harmless, or in a
/// DO block, stays with the client that made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_of_a_multi_statement_query_never_reaches_another_client() {
    let _serial = SERIAL.lock().await;
    // A and C keep (are pinned to) a server connection each; B needs a third.
    let target = Target::start("default_pool_size = 3").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let got = a.query("select 1 as one; set search_path = reg_x").await;
    assert_answers("A's SET", &got, a.pid(), &["T[one:23]", "D['1']", "C[SELECT 1]", "C[SET]", "Z[I]"]);
    let got = a.query("select set_config('app.tenant', '42', false) as tenant").await;
    assert_answers("A's set_config", &got, a.pid(), &["T[tenant:25]", "D['42']", "C[SELECT 1]", "Z[I]"]);
    let state =
        "select current_setting('search_path') as sp, coalesce(current_setting('app.tenant', true), '') as tenant";
    let got = a.query(state).await;
    assert_answers("A's own state", &got, a.pid(), &["T[sp:25,tenant:25]", "D['reg_x','42']", "C[SELECT 1]", "Z[I]"]);
    let mut b = Conn::login(target.addr, &[]).await;
    for round in 0..3 {
        let got = b.query(state).await;
        let clean = ["T[sp:25,tenant:25]", "D['\"$user\", public','']", "C[SELECT 1]", "Z[I]"];
        assert_answers(&format!("B's state, round {round}"), &got, b.pid(), &clean);
    }
    let mut c = Conn::login(target.addr, &[]).await;
    let got = c.query("do $$ begin perform pg_advisory_lock(3003); end $$").await;
    assert_answers("C's lock", &got, c.pid(), &["C[DO]", "Z[I]"]);
    let locks = "select count(*) as n from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()";
    let got = c.query(locks).await;
    assert_answers("C holds its lock", &got, c.pid(), &["T[n:20]", "D['1']", "C[SELECT 1]", "Z[I]"]);
    for round in 0..3 {
        let got = b.query(locks).await;
        assert_answers(
            &format!("B holds no lock, round {round}"),
            &got,
            b.pid(),
            &["T[n:20]", "D['0']", "C[SELECT 1]", "Z[I]"],
        );
    }
    let got = b.query("select pg_try_advisory_lock(3003) as got").await;
    assert_answers("C's lock is held by C", &got, b.pid(), &["T[got:16]", "D['f']", "C[SELECT 1]", "Z[I]"]);
    target.stop().await;
}

async fn prepare_and_run(c: &mut Conn, name: &str, sql: &str) -> Vec<Msg> {
    let mut out = Out::default();
    out.parse(name, sql);
    out.bind(name, &[]);
    out.execute(0);
    out.sync();
    c.write(out).await;
    c.read(1).await
}

async fn run(c: &mut Conn, name: &str) -> Vec<Msg> {
    let mut out = Out::default();
    out.bind(name, &[]);
    out.execute(0);
    out.sync();
    c.write(out).await;
    c.read(1).await
}

/// 4. A client cannot reach another client's prepared statement by the
/// name the server knows it under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_statement_names_cannot_be_forged() {
    let _serial = SERIAL.lock().await;
    // A's text leaves session state, so A keeps a server connection; B needs another.
    let target = Target::start("default_pool_size = 2").await;
    let mut b = Conn::login(target.addr, &[]).await;
    let got = prepare_and_run(&mut b, "mine", "select 'mine' as v").await;
    assert_answers("B prepares", &got, b.pid(), &["1", "2", "D['mine']", "C[SELECT 1]", "Z[I]"]);
    let mut a = Conn::login(target.addr, &[]).await;
    let got = a.query("select 1 as one; deallocate pgrelay_0; prepare pgrelay_0 as select 'forged'").await;
    let expected = ["T[one:23]", "D['1']", "C[SELECT 1]", "E[26000]", "Z[I]"];
    assert_answers("A has no statement pgrelay_0", &got, a.pid(), &expected);
    let got = run(&mut b, "mine").await;
    assert_answers("B's statement", &got, b.pid(), &["2", "D['mine']", "C[SELECT 1]", "Z[I]"]);
    // The same by whatever names the server shows.
    let forge = "do $$ declare r record; begin for r in select name from pg_prepared_statements loop \
                 execute format('deallocate %I', r.name); \
                 execute format('prepare %I as select %L::text', r.name, 'forged'); end loop; end $$";
    let got = a.query(forge).await;
    assert_answers("A sees no statements", &got, a.pid(), &["C[DO]", "Z[I]"]);
    let got = run(&mut b, "mine").await;
    assert_answers("B's statement after the DO block", &got, b.pid(), &["2", "D['mine']", "C[SELECT 1]", "Z[I]"]);
    target.stop().await;
}

/// 5. SQL DEALLOCATE of a name the client prepared with Parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_deallocate_of_a_protocol_statement_works_as_direct() {
    let _serial = SERIAL.lock().await;
    let target = Target::start("default_pool_size = 1").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let got = prepare_and_run(&mut a, "s5", "select 'five' as v").await;
    assert_answers("prepared", &got, a.pid(), &["1", "2", "D['five']", "C[SELECT 1]", "Z[I]"]);
    let got = a.query("deallocate s5").await;
    assert_answers("DEALLOCATE s5", &got, a.pid(), &["C[DEALLOCATE]", "Z[I]"]);
    let got = run(&mut a, "s5").await;
    assert_answers("s5 is gone", &got, a.pid(), &["E[26000]", "Z[I]"]);
    target.stop().await;
}

/// 5. DEALLOCATE ALL and DISCARD ALL drop the client's statements, and a
/// later client preparing the same text on that connection is not hurt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_and_discard_all_leave_no_missing_statement_behind() {
    let _serial = SERIAL.lock().await;
    let target = Target::start("default_pool_size = 1").await;
    for (command, text) in [("deallocate all", "select 'deallocated' as v"), ("discard all", "select 'discarded' as v")]
    {
        let value = if command == "deallocate all" { "D['deallocated']" } else { "D['discarded']" };
        let mut a = Conn::login(target.addr, &[]).await;
        let got = prepare_and_run(&mut a, "d1", text).await;
        assert_answers(command, &got, a.pid(), &["1", "2", value, "C[SELECT 1]", "Z[I]"]);
        let got = a.query(command).await;
        let tag = format!("C[{}]", command.to_uppercase());
        assert_answers(command, &got, a.pid(), &[tag.as_str(), "Z[I]"]);
        let got = run(&mut a, "d1").await;
        assert_answers(&format!("d1 after {command}"), &got, a.pid(), &["E[26000]", "Z[I]"]);
        let mut next = Conn::login(target.addr, &[]).await;
        let got = prepare_and_run(&mut next, "n1", text).await;
        assert_answers(
            &format!("a later client after {command}"),
            &got,
            next.pid(),
            &["1", "2", value, "C[SELECT 1]", "Z[I]"],
        );
        next.client.terminate().await;
        a.client.terminate().await;
    }
    target.stop().await;
}

/// 6. After a column's type changes, the old statement fails with 0A000 and
/// preparing the text again (new name, new client) works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_then_prepare_again_under_a_new_name() {
    let _serial = SERIAL.lock().await;
    admin(&format!(
        "drop table if exists reg_alter; create table reg_alter (a int); insert into reg_alter values (1); \
         alter table reg_alter owner to {APP}"
    ))
    .await;
    let target = Target::start("default_pool_size = 1").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let got = prepare_and_run(&mut a, "p1", "select a from reg_alter").await;
    assert_answers("p1", &got, a.pid(), &["1", "2", "D['1']", "C[SELECT 1]", "Z[I]"]);
    let got = a.query("alter table reg_alter alter column a type bigint").await;
    assert_answers("ALTER", &got, a.pid(), &["C[ALTER TABLE]", "Z[I]"]);
    let got = run(&mut a, "p1").await;
    assert_answers("p1 after the ALTER", &got, a.pid(), &["E[0A000]", "Z[I]"]);
    let mut out = Out::default();
    out.parse("p2", "select a from reg_alter");
    out.describe_statement("p2");
    out.bind("p2", &[]);
    out.execute(0);
    out.sync();
    a.write(out).await;
    let got = a.read(1).await;
    assert_answers("p2, the same text", &got, a.pid(), &["1", "t[]", "T[a:20]", "2", "D['1']", "C[SELECT 1]", "Z[I]"]);
    let mut c = Conn::login(target.addr, &[]).await;
    let got = prepare_and_run(&mut c, "p", "select a from reg_alter").await;
    assert_answers("a new client", &got, c.pid(), &["1", "2", "D['1']", "C[SELECT 1]", "Z[I]"]);
    target.stop().await;
}

/// 7. Startup parameters are reported the way the server reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_reports_the_servers_spelling() {
    let _serial = SERIAL.lock().await;
    let params = [("client_encoding", "utf8"), ("DateStyle", "iso, dmy"), ("TimeZone", "utc")];
    let reported = |welcome: &[Msg]| -> Vec<String> {
        let all: Vec<String> = welcome.iter().filter(|m| m.tag == b'S').map(|m| render(m, 0)).collect();
        let wanted = ["S[client_encoding=", "S[DateStyle=", "S[TimeZone="];
        let mut some: Vec<String> = all.into_iter().filter(|s| wanted.iter().any(|w| s.starts_with(w))).collect();
        some.sort();
        some
    };
    let (_, direct) = PgClient::login(cluster().primary().addr(), &params, LIMIT).await.expect("direct login");
    let target = Target::start("").await;
    let (_, relayed) = PgClient::login(target.addr, &params, LIMIT).await.expect("login through pgrelay");
    let expected = reported(&direct);
    assert_eq!(expected.len(), 3, "the server reports all three: {expected:?}");
    assert_eq!(reported(&relayed), expected, "as the server reports them");
    target.stop().await;
}

/// 8. A notification the client sent itself carries the pid its
/// BackendKeyData announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_pid_is_the_backend_key_pid() {
    let _serial = SERIAL.lock().await;
    let target = Target::start("").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let got = a.query("listen reg_channel").await;
    assert_answers("LISTEN", &got, a.pid(), &["C[LISTEN]", "Z[I]"]);
    let got = a.query("notify reg_channel, 'hello'").await;
    assert_answers("NOTIFY", &got, a.pid(), &["C[NOTIFY]", "A[reg_channel,hello,own pid]", "Z[I]"]);
    target.stop().await;
}

/// 9. Parse of a name the client already has fails, and the first
/// statement stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_of_an_existing_name_fails_with_42p05() {
    let _serial = SERIAL.lock().await;
    let target = Target::start("").await;
    let mut a = Conn::login(target.addr, &[]).await;
    for (sql, expected) in [("select 1 as v", &["1", "Z[I]"][..]), ("select 2 as v", &["E[42P05]", "Z[I]"][..])] {
        let mut out = Out::default();
        out.parse("dup", sql);
        out.sync();
        a.write(out).await;
        let got = a.read(1).await;
        assert_answers(&format!("Parse of dup as {sql}"), &got, a.pid(), expected);
    }
    let got = run(&mut a, "dup").await;
    assert_answers("dup is the first statement", &got, a.pid(), &["2", "D['1']", "C[SELECT 1]", "Z[I]"]);
    target.stop().await;
}

/// 10. When the server ends the connection with FATAL, the client hears of
/// it once, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fatal_reaches_the_client_once() {
    let _serial = SERIAL.lock().await;
    let target = Target::start("").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let got = a.query("begin").await;
    assert_answers("BEGIN", &got, a.pid(), &["C[BEGIN]", "Z[T]"]);
    let got = a.query("select pg_backend_pid()::text as pid").await;
    let pid = match tags(&got, a.pid()).get(1) {
        Some(row) => row.trim_start_matches("D['").trim_end_matches("']").to_owned(),
        None => panic!("no pid: {}", show(&got, a.pid())),
    };
    let terminated = admin_value(&format!("select pg_terminate_backend({pid})::text")).await;
    assert_eq!(terminated, "true");
    // The block died with its backend: the client keeps its connection and
    // hears of it once, on its next request (see tests/topology/survive.rs).
    let got = a.query("select 1").await;
    assert_answers("after pg_terminate_backend", &got, a.pid(), &["E[40001]", "Z[E]"]);
    let got = a.query("rollback").await;
    assert_answers("ROLLBACK of the lost block", &got, a.pid(), &["C[ROLLBACK]", "Z[I]"]);
    target.stop().await;
}

/// 11. (Found by the randomized test.) A Parse that fails fails again when
/// the same text is parsed in the next pipelined batch, before the first
/// answer arrived; nothing acknowledges a statement that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_parse_fails_again_when_pipelined() {
    let _serial = SERIAL.lock().await;
    let target = Target::start("").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let mut out = Out::default();
    out.parse("bad1", "selec 1");
    out.sync();
    out.parse("bad2", "selec 1");
    out.sync();
    out.bind("bad2", &[]);
    out.execute(0);
    out.sync();
    a.write(out).await;
    let got = a.read(3).await;
    assert_answers("two failing Parses", &got, a.pid(), &["E[42601]", "Z[I]", "E[42601]", "Z[I]", "E[26000]", "Z[I]"]);
    target.stop().await;
}

/// 12. (Found by the randomized test.) A client that vanishes after
/// Parse/Bind/Execute of an insert, before its Sync, never committed it:
/// PostgreSQL rolls the implicit transaction back when the client goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsynced_batch_of_a_vanished_client_is_not_committed() {
    let _serial = SERIAL.lock().await;
    admin(&format!(
        "drop table if exists reg_vanish; create table reg_vanish (v text); alter table reg_vanish owner to {APP}"
    ))
    .await;
    let target = Target::start("default_pool_size = 1").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let mut out = Out::default();
    out.parse("", "insert into reg_vanish values ('never synced')");
    out.bind("", &[]);
    out.execute(0);
    a.write(out).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(a);
    // With one server connection, B runs only after A's connection was dealt with.
    let mut b = Conn::login(target.addr, &[]).await;
    let got = b.query("select count(*) as n from reg_vanish").await;
    assert_answers("rows of the vanished client", &got, b.pid(), &["T[n:20]", "D['0']", "C[SELECT 1]", "Z[I]"]);
    target.stop().await;
}

/// 13. A Close the server skips (its batch failed) and a Close of the same
/// name in the next batch, pipelined: the second one closes the statement,
/// for a pooled client and for a pinned one (found by the randomized test,
/// seed 305076888).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_behind_a_skipped_close_of_the_same_name_closes_it() {
    let _serial = SERIAL.lock().await;
    let target = Target::start("default_pool_size = 1").await;
    // The first batch fails at the server: on a division by zero, or on a
    // statement the client does not have (which a pinned client's Bind
    // takes to the server).
    for (pinned, missing) in [(false, false), (true, false), (true, true)] {
        let mut a = Conn::login(target.addr, &[]).await;
        if pinned {
            let got = a.query("select 1 as one; set search_path = public").await;
            assert_answers("pin", &got, a.pid(), &["T[one:23]", "D['1']", "C[SELECT 1]", "C[SET]", "Z[I]"]);
        }
        let mut out = Out::default();
        out.parse("s4", "select 'four' as m");
        out.sync();
        a.write(out).await;
        assert_answers("Parse s4", &a.read(1).await, a.pid(), &["1", "Z[I]"]);
        let mut out = Out::default();
        let failure = if missing {
            out.bind("s9", &[]);
            "E[26000]"
        } else {
            out.parse("", "select 1/0 as boom");
            out.bind("", &[]);
            "E[22012]"
        };
        out.execute(0);
        out.close_statement("s4");
        out.sync();
        out.close_statement("s4");
        out.sync();
        a.write(out).await;
        let got = a.read(2).await;
        let expected: &[&str] =
            if missing { &[failure, "Z[I]", "3", "Z[I]"] } else { &["1", failure, "Z[I]", "3", "Z[I]"] };
        assert_answers("skipped Close, then Close", &got, a.pid(), expected);
        let mut out = Out::default();
        out.parse("s4", "select 'four again' as m");
        out.bind("s4", &[]);
        out.execute(0);
        out.sync();
        a.write(out).await;
        let got = a.read(1).await;
        assert_answers(
            &format!("s4 prepared again (pinned: {pinned}, missing: {missing})"),
            &got,
            a.pid(),
            &["1", "2", "D['four again']", "C[SELECT 1]", "Z[I]"],
        );
    }
    target.stop().await;
}

/// 14. DEALLOCATE ALL and DISCARD ALL drop the client's protocol-level
/// statements when they run, wherever they come: as one statement of
/// several in a query, through the extended protocol, pipelined before a
/// Bind; and not when they fail (DISCARD ALL inside a transaction block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_drops_the_clients_statements_only_when_it_runs() {
    let _serial = SERIAL.lock().await;
    let target = Target::start("default_pool_size = 2").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let prepare = |out: &mut Out| {
        out.parse("k", "select 'kept' as m");
        out.sync();
    };
    let run_k = |out: &mut Out| {
        out.bind("k", &[]);
        out.execute(0);
        out.sync();
    };
    let mut out = Out::default();
    prepare(&mut out);
    a.write(out).await;
    assert_answers("Parse k", &a.read(1).await, a.pid(), &["1", "Z[I]"]);

    // A failing DISCARD ALL drops nothing.
    let mut out = Out::default();
    out.query("begin");
    out.query("discard all");
    out.query("rollback");
    run_k(&mut out);
    a.write(out).await;
    let got = a.read(4).await;
    let expected =
        ["C[BEGIN]", "Z[T]", "E[25001]", "Z[E]", "C[ROLLBACK]", "Z[I]", "2", "D['kept']", "C[SELECT 1]", "Z[I]"];
    assert_answers("a failed DISCARD ALL", &got, a.pid(), &expected);

    // The second statement of a query, with a Bind pipelined behind it.
    let mut out = Out::default();
    out.query("select 1 as one; deallocate all");
    run_k(&mut out);
    a.write(out).await;
    let got = a.read(2).await;
    let expected = ["T[one:23]", "D['1']", "C[SELECT 1]", "C[DEALLOCATE ALL]", "Z[I]", "E[26000]", "Z[I]"];
    assert_answers("DEALLOCATE ALL behind a SELECT", &got, a.pid(), &expected);

    // Through the extended protocol.
    let mut out = Out::default();
    prepare(&mut out);
    out.parse("", "deallocate all");
    out.bind("", &[]);
    out.execute(0);
    out.sync();
    run_k(&mut out);
    a.write(out).await;
    let got = a.read(3).await;
    let expected = ["1", "Z[I]", "1", "2", "C[DEALLOCATE ALL]", "Z[I]", "E[26000]", "Z[I]"];
    assert_answers("DEALLOCATE ALL by Execute", &got, a.pid(), &expected);
    target.stop().await;
}

/// 15. A statement prepared before an ALTER TABLE changed its result type,
/// and prepared again by the same text after it (found by the randomized
/// test, seed 365626079): the old name fails with 0A000 and the new one
/// runs, wherever pgrelay has to prepare them (one statement per server
/// connection here, so every Parse evicts the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_again_after_alter_table_is_not_the_old_one() {
    let _serial = SERIAL.lock().await;
    admin(&format!(
        "drop table if exists reg_fork; create table reg_fork (a int); insert into reg_fork values (1); \
         alter table reg_fork owner to {APP}"
    ))
    .await;
    let target = Target::start("default_pool_size = 1\nmax_prepared_statements = 1").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let text = "select a from reg_fork";
    let got = prepare_and_run(&mut a, "old", text).await;
    assert_answers("old", &got, a.pid(), &["1", "2", "D['1']", "C[SELECT 1]", "Z[I]"]);
    let got = prepare_and_run(&mut a, "other", "select 'other' as m").await;
    assert_answers("other", &got, a.pid(), &["1", "2", "D['other']", "C[SELECT 1]", "Z[I]"]);
    let got = a.query("alter table reg_fork alter column a type bigint").await;
    assert_answers("ALTER", &got, a.pid(), &["C[ALTER TABLE]", "Z[I]"]);
    let got = prepare_and_run(&mut a, "new", text).await;
    assert_answers("new, after the ALTER", &got, a.pid(), &["1", "2", "D['1']", "C[SELECT 1]", "Z[I]"]);
    let got = run(&mut a, "old").await;
    assert_answers("old, after the ALTER", &got, a.pid(), &["E[0A000]", "Z[I]"]);
    for round in 0..2 {
        let got = run(&mut a, "new").await;
        assert_answers(&format!("new again ({round})"), &got, a.pid(), &["2", "D['1']", "C[SELECT 1]", "Z[I]"]);
        let got = run(&mut a, "old").await;
        assert_answers(&format!("old again ({round})"), &got, a.pid(), &["E[0A000]", "Z[I]"]);
    }
    // Back to int: "old" has its type again; prepared in a transaction
    // (so the Parse reaches the server), "newer" gets int too.
    let got = prepare_and_run(&mut a, "other2", "select 'other' as m").await;
    assert_answers("other2", &got, a.pid(), &["1", "2", "D['other']", "C[SELECT 1]", "Z[I]"]);
    let got = a.query("alter table reg_fork alter column a type int").await;
    assert_answers("ALTER back", &got, a.pid(), &["C[ALTER TABLE]", "Z[I]"]);
    assert_answers("begin", &a.query("begin").await, a.pid(), &["C[BEGIN]", "Z[T]"]);
    let got = prepare_and_run(&mut a, "newer", text).await;
    assert_answers("newer, in a transaction", &got, a.pid(), &["1", "2", "D['1']", "C[SELECT 1]", "Z[T]"]);
    assert_answers("commit", &a.query("commit").await, a.pid(), &["C[COMMIT]", "Z[I]"]);
    for (name, expected) in [("newer", "D['1']"), ("new", "E[0A000]"), ("old", "D['1']"), ("newer", "D['1']")] {
        let got = run(&mut a, name).await;
        let want: &[&str] =
            if expected.starts_with('E') { &[expected, "Z[I]"] } else { &["2", expected, "C[SELECT 1]", "Z[I]"] };
        assert_answers(&format!("{name} after the ALTER back"), &got, a.pid(), want);
    }
    target.stop().await;
}

/// 16. Two statements of the same text, one prepared before an ALTER TABLE
/// and one after, used by a client whose settings changed (so pgrelay
/// prepares private copies of them): each copy is checked against its own
/// statement's result type (found by the randomized test, seed 848398092:
/// the second copy was the first one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_copies_of_the_same_text_stay_apart() {
    let _serial = SERIAL.lock().await;
    admin(&format!(
        "drop table if exists reg_copies; create table reg_copies (a int); insert into reg_copies values (1); \
         alter table reg_copies owner to {APP}"
    ))
    .await;
    let target = Target::start("default_pool_size = 1\nmax_prepared_statements = 1").await;
    let mut a = Conn::login(target.addr, &[]).await;
    let text = "select a from reg_copies";
    let alter = |to: &'static str| format!("alter table reg_copies alter column a type {to}");
    let one = ["2", "D['1']", "C[SELECT 1]", "Z[I]"];
    let stale = ["E[0A000]", "Z[I]"];
    let got = prepare_and_run(&mut a, "s1", text).await;
    assert_answers("s1", &got, a.pid(), &["1", "2", "D['1']", "C[SELECT 1]", "Z[I]"]);
    assert_answers("ALTER", &a.query(&alter("bigint")).await, a.pid(), &["C[ALTER TABLE]", "Z[I]"]);
    assert_answers("s1 after the ALTER", &run(&mut a, "s1").await, a.pid(), &stale);
    let got = prepare_and_run(&mut a, "s3", text).await;
    assert_answers("s3", &got, a.pid(), &["1", "2", "D['1']", "C[SELECT 1]", "Z[I]"]);
    assert_answers("ALTER back", &a.query(&alter("int")).await, a.pid(), &["C[ALTER TABLE]", "Z[I]"]);
    let got = a.query("select set_config('app.x', '1', false) as x").await;
    assert_answers("set_config", &got, a.pid(), &["T[x:25]", "D['1']", "C[SELECT 1]", "Z[I]"]);
    let got = prepare_and_run(&mut a, "other", "select 'other' as m").await;
    assert_answers("other", &got, a.pid(), &["1", "2", "D['other']", "C[SELECT 1]", "Z[I]"]);
    // s1 has its type again; s3 (prepared for bigint) does not.
    assert_answers("s1, a copy", &run(&mut a, "s1").await, a.pid(), &one);
    assert_answers("s3, a copy", &run(&mut a, "s3").await, a.pid(), &stale);
    assert_answers("s1 again", &run(&mut a, "s1").await, a.pid(), &one);
    assert_answers("s3 again", &run(&mut a, "s3").await, a.pid(), &stale);
    target.stop().await;
}
