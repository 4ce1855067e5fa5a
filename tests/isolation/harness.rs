//! Runs the clients' scripts against one target (PostgreSQL itself, or
//! pgrelay in front of it), all clients at once, and records every answer
//! that differs from the script's expectation. A client whose session goes
//! wrong drops that session and goes on with its next one, so one fault is
//! reported once, where it happened, and the rest of the run still counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

use crate::client::{cancel, Msg, PgClient, Stop};
use crate::model::Row;
use crate::render::{render, render_verbose};
use crate::script::{Action, ClientScript, SessionScript};
use crate::support;

/// How long one write may wait for its answers. Longer than pgrelay's
/// query_wait_timeout in these tests, so its own error arrives first.
const ANSWER_LIMIT: Duration = Duration::from_secs(7);
/// Sessions holding session state at once: each may pin a server
/// connection, and the pool has 4.
const PIN_PERMITS: usize = 2;

/// One answer (or missing answer) that differs from the script.
#[derive(Debug)]
pub struct Mismatch {
    pub client: usize,
    pub owner: String,
    pub step: usize,
    pub kind: String,
    pub write: String,
    pub sent: String,
    pub expected: Vec<String>,
    pub received: Vec<String>,
    pub note: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "client c{:02}, session {}, step {} ({}), {}:",
            self.client, self.owner, self.step, self.kind, self.write
        )?;
        writeln!(f, "    sent:     {}", self.sent)?;
        writeln!(f, "    expected: {}", self.expected.join(" "))?;
        write!(f, "    received: {}", self.received.join(" "))?;
        if !self.note.is_empty() {
            write!(f, "\n    note:     {}", self.note)?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct PassReport {
    pub planned_steps: usize,
    pub steps: usize,
    pub writes: usize,
    /// ReadyForQuery messages received: transactions and sync points.
    pub transactions: usize,
    pub sessions: usize,
    pub stopped_at_deadline: bool,
    pub mismatches: Vec<Mismatch>,
    /// Per step kind: steps run, and steps whose answers differed.
    pub kinds: BTreeMap<String, (usize, usize)>,
    pub elapsed: Duration,
}

impl PassReport {
    /// One line of numbers, and a count of mismatches per step kind.
    pub fn summary(&self, name: &str) -> String {
        let mut text = format!(
            "{name}: {} of {} steps in {} sessions, {} writes, {} transactions (ReadyForQuery) in {:.1} s{}: {}",
            self.steps,
            self.planned_steps,
            self.sessions,
            self.writes,
            self.transactions,
            self.elapsed.as_secs_f64(),
            if self.stopped_at_deadline { " (stopped at the deadline)" } else { "" },
            if self.mismatches.is_empty() {
                "0 crossings".to_owned()
            } else {
                format!("{} mismatches", self.mismatches.len())
            },
        );
        text.push_str("\n      run  wrong  step kind");
        for (kind, (run, wrong)) in &self.kinds {
            text.push_str(&format!("\n    {run:5}  {wrong:5}  {kind}"));
        }
        text
    }
}

/// What the clients of one pass share.
struct Pass {
    addr: SocketAddr,
    monitor: Client,
    pins: Arc<Semaphore>,
    deadline: Instant,
}

/// A superuser connection straight to the primary.
pub async fn superuser() -> Client {
    let port = support::cluster().primary().port;
    let conn = support::connect_string(port, pgrelay::localcluster::SUPERUSER, "", pgrelay::localcluster::APP_DATABASE);
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.expect("superuser connects to the primary");
    tokio::spawn(connection);
    client
}

/// Creates the schemas and tables the scripts use, empty, owned by the
/// user the clients log in as.
pub async fn prepare_database(clients: usize) {
    let admin = superuser().await;
    let user = pgrelay::localcluster::TRUST_USER;
    let mut sql = String::from("set client_min_messages = warning;\n");
    for schema in ["iso_int", "iso_text", "iso"] {
        sql.push_str(&format!(
            "drop schema if exists {schema} cascade; create schema {schema} authorization {user};\n"
        ));
    }
    for (schema, v) in [("iso_int", "int"), ("iso_text", "text")] {
        sql.push_str(&format!(
            "create table {schema}.t (id bigserial primary key, v {v}, owner text not null, m text not null, n int not null default 0);\n\
             alter table {schema}.t owner to {user};\n"
        ));
    }
    for client in 0..clients {
        sql.push_str(&format!(
            "create table iso.d_c{client:02} (a int); insert into iso.d_c{client:02} values (1);\n\
             alter table iso.d_c{client:02} owner to {user};\n"
        ));
    }
    sql.push_str(crate::model::STATE_FUNCTION);
    admin.batch_execute(&sql).await.expect("the isolation tables are created");
}

/// Runs every client's script against `addr` until done or `deadline`.
pub async fn run_pass(addr: SocketAddr, scripts: &[ClientScript], deadline: Instant) -> PassReport {
    let started = Instant::now();
    let pass =
        Arc::new(Pass { addr, monitor: superuser().await, pins: Arc::new(Semaphore::new(PIN_PERMITS)), deadline });
    let tasks: Vec<_> = scripts
        .iter()
        .map(|script| {
            let (pass, script) = (pass.clone(), script.clone());
            tokio::spawn(async move { run_client(&pass, &script).await })
        })
        .collect();
    let mut report = PassReport { planned_steps: scripts.iter().map(ClientScript::steps).sum(), ..Default::default() };
    let mut clean = Vec::new();
    for task in tasks {
        let outcome = task.await.expect("a client task ends without panicking");
        report.steps += outcome.report.steps;
        report.writes += outcome.report.writes;
        report.transactions += outcome.report.transactions;
        report.sessions += outcome.report.sessions;
        report.stopped_at_deadline |= outcome.report.stopped_at_deadline;
        report.mismatches.extend(outcome.report.mismatches);
        for (kind, (run, wrong)) in outcome.report.kinds {
            let entry = report.kinds.entry(kind).or_default();
            entry.0 += run;
            entry.1 += wrong;
        }
        clean.extend(outcome.clean);
    }
    check_committed_rows(&pass.monitor, &clean, &mut report).await;
    report.elapsed = started.elapsed();
    report
}

struct ClientOutcome {
    report: PassReport,
    /// Sessions that ran to their end as scripted: (client, session).
    clean: Vec<(usize, SessionScript)>,
}

async fn run_client(pass: &Pass, script: &ClientScript) -> ClientOutcome {
    let mut outcome = ClientOutcome { report: PassReport::default(), clean: Vec::new() };
    for session in &script.sessions {
        if Instant::now() >= pass.deadline {
            outcome.report.stopped_at_deadline = true;
            break;
        }
        let _permit = match session.stateful {
            true => Some(pass.pins.clone().acquire_owned().await.expect("the semaphore is never closed")),
            false => None,
        };
        outcome.report.sessions += 1;
        if run_session(pass, script.id, session, &mut outcome.report).await {
            outcome.clean.push((script.id, session.clone()));
        }
    }
    outcome
}

/// Runs one session; true when it ran to its end with every answer as expected.
async fn run_session(pass: &Pass, client: usize, session: &SessionScript, report: &mut PassReport) -> bool {
    let params = [("search_path", session.startup.name())];
    let mut conn = match PgClient::login(pass.addr, &params, ANSWER_LIMIT).await {
        Ok((conn, _)) => conn,
        Err(e) => {
            report.mismatches.push(Mismatch {
                client,
                owner: session.owner.clone(),
                step: session.steps.first().map_or(0, |s| s.number),
                kind: "login".to_owned(),
                write: "startup".to_owned(),
                sent: format!("StartupMessage {params:?}"),
                expected: vec!["Z[I]".to_owned()],
                received: Vec::new(),
                note: e,
            });
            return false;
        }
    };
    let dump = std::env::var("PGRELAY_ISOLATION_DUMP").ok();
    for step in &session.steps {
        if dump.as_deref() == Some(session.owner.as_str()) {
            for action in &step.actions {
                if let Action::Exchange { sent, .. } = action {
                    eprintln!("DUMP {} step {} ({}): {sent}", session.owner, step.number, step.kind);
                }
            }
        }
        if Instant::now() >= pass.deadline {
            report.stopped_at_deadline = true;
            return false;
        }
        report.steps += 1;
        report.kinds.entry(step.kind.clone()).or_default().0 += 1;
        for (i, action) in step.actions.iter().enumerate() {
            match action {
                Action::Exchange { send, sent, expect, cancel } => {
                    report.writes += 1;
                    let mut note = String::new();
                    if let Err(e) = conn.send(send).await {
                        note = format!("writing failed: {e}");
                    } else if *cancel {
                        note = cancel_when_running(pass, &step.marker, conn.key).await;
                    }
                    let (got, stop) = read_answers(&mut conn, expect).await;
                    report.transactions += got.iter().filter(|m| m.tag == b'Z').count();
                    let rendered: Vec<String> = got.iter().map(|m| render(m, conn.key.0)).collect();
                    if rendered == *expect && stop.is_none() {
                        continue;
                    }
                    if let Some(stop) = stop {
                        let why = match stop {
                            Stop::Closed => "the connection closed",
                            Stop::TimedOut => "no further answer within the time limit",
                        };
                        note = if note.is_empty() { why.to_owned() } else { format!("{note}; {why}") };
                    }
                    report.kinds.entry(step.kind.clone()).or_default().1 += 1;
                    report.mismatches.push(Mismatch {
                        client,
                        owner: session.owner.clone(),
                        step: step.number,
                        kind: step.kind.clone(),
                        write: format!("write {} of {}", i + 1, step.actions.len()),
                        sent: sent.clone(),
                        expected: expect.clone(),
                        received: got.iter().map(|m| render_verbose(m, conn.key.0)).collect(),
                        note,
                    });
                    return false;
                }
                Action::Vanish { send, pause_ms, .. } => {
                    let _ = conn.send(send).await;
                    tokio::time::sleep(Duration::from_millis(*pause_ms)).await;
                    drop(conn);
                    return true;
                }
            }
        }
    }
    conn.terminate().await;
    true
}

/// Reads until `expect` is complete: as many ReadyForQuery as it holds, or
/// (holding none) as many messages.
async fn read_answers(conn: &mut PgClient, expect: &[String]) -> (Vec<Msg>, Option<Stop>) {
    let deadline = Instant::now() + ANSWER_LIMIT;
    let want_ready = expect.iter().filter(|e| e.starts_with("Z[")).count();
    let mut got = Vec::new();
    let mut ready = 0;
    loop {
        let complete = if want_ready > 0 { ready >= want_ready } else { got.len() >= expect.len() };
        if complete {
            return (got, None);
        }
        match conn.recv(deadline).await {
            Ok(msg) => {
                ready += usize::from(msg.tag == b'Z');
                got.push(msg);
            }
            Err(stop) => return (got, Some(stop)),
        }
    }
}

/// Waits (bounded) until the query with `marker` sleeps on the server, then
/// sends a CancelRequest with the client's key to the target.
async fn cancel_when_running(pass: &Pass, marker: &str, key: (u32, u32)) -> String {
    let sql = "select count(*) from pg_stat_activity where state = 'active' and wait_event = 'PgSleep' \
               and query like '%' || $1 || '%' and pid <> pg_backend_pid()";
    let limit = Instant::now() + Duration::from_secs(8);
    let mut note = String::new();
    loop {
        match pass.monitor.query_one(sql, &[&marker]).await {
            Ok(row) if row.get::<_, i64>(0) > 0 => break,
            Ok(_) if Instant::now() < limit => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(_) => {
                note = "the query was never seen running; cancelled anyway".to_owned();
                break;
            }
            Err(e) => {
                note = format!("watching pg_stat_activity failed: {e}");
                break;
            }
        }
    }
    if let Err(e) = cancel(pass.addr, key).await {
        note = format!("{note} sending the CancelRequest failed: {e}");
    }
    note
}

/// Every session that ran to its end committed exactly the rows its script
/// says: nothing of a rolled-back, failed or vanished transaction.
async fn check_committed_rows(admin: &Client, clean: &[(usize, SessionScript)], report: &mut PassReport) {
    let sql =
        "select owner, 'iso_int', v::text, m from iso_int.t union all select owner, 'iso_text', v, m from iso_text.t";
    let rows = admin.query(sql, &[]).await.expect("reading the rows written");
    let mut by_owner: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for r in rows {
        let schema = if r.get::<_, &str>(1) == "iso_int" { "iso_int" } else { "iso_text" };
        let row = Row { schema, value: r.get::<_, Option<String>>(2).unwrap_or_default(), marker: r.get(3) };
        by_owner.entry(r.get(0)).or_default().push(row);
    }
    for (client, session) in clean {
        let mut found = by_owner.remove(&session.owner).unwrap_or_default();
        found.sort();
        let entry =
            report.kinds.entry("rows committed by the session (checked after the pass)".to_owned()).or_default();
        entry.0 += 1;
        if found != session.committed {
            entry.1 += 1;
            let show = |rows: &[Row]| rows.iter().map(|r| format!("{}:{}={}", r.schema, r.marker, r.value)).collect();
            report.mismatches.push(Mismatch {
                client: *client,
                owner: session.owner.clone(),
                step: session.steps.last().map_or(0, |s| s.number),
                kind: "rows committed by the session (checked after the pass)".to_owned(),
                write: "after the pass".to_owned(),
                sent: format!("(direct) select ... where owner = '{}'", session.owner),
                expected: show(&session.committed),
                received: show(&found),
                note: if session.vanishes { "the session vanished at its end".to_owned() } else { String::new() },
            });
        }
    }
}
