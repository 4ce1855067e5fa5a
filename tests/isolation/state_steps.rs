//! Session state: statements that leave it (stateful sessions only, each
//! also as the second statement of a multi-statement query, which hides it
//! from a first-word look), statements that clear it (any session), and
//! statements that would show another session's state (any session).

use crate::model::Session;
use crate::render::{complete, error, notification, parameter_status, ready, row, row_desc, INT8, VOID};
use crate::script::{Action, Rng};
use crate::steps::one_text;
use crate::wire_out::Out;

const SQL_PREPARED: [&str; 2] = ["q1", "q2"];

fn sql_prepared_text(name: &str) -> &'static str {
    match name {
        "q1" => "select $1::text as m",
        _ => "select $1::text || '-q2' as m",
    }
}

fn done(mut expect: Vec<String>) -> Vec<String> {
    expect.push(ready('I'));
    expect
}

/// `sql` alone, or behind `select '<m>' as m;` in the same query string.
fn plain_or_multi(rng: &mut Rng, m: &str, sql: &str, answer: Vec<String>) -> (&'static str, Action) {
    if rng.chance(50) {
        return ("", Action::query(sql, done(answer)));
    }
    let mut expect = one_text("m", m);
    expect.extend(answer);
    (" (second statement of a query)", Action::query(&format!("select '{m}' as m; {sql}"), done(expect)))
}

/// DISCARD ALL, DEALLOCATE ALL, DEALLOCATE of a protocol-level statement.
pub fn cleanup(s: &mut Session, rng: &mut Rng, _m: &str) -> (String, Vec<Action>) {
    match rng.range(0, 2) {
        0 => {
            let mut expect = vec![complete("DISCARD ALL")];
            if !s.app_name.is_empty() {
                expect.push(parameter_status("application_name", ""));
            }
            s.discard_all();
            ("DISCARD ALL".to_owned(), vec![Action::query("discard all", done(expect))])
        }
        1 => {
            s.sql_prepared.clear();
            s.named.clear();
            ("DEALLOCATE ALL".to_owned(), vec![Action::query("deallocate all", done(vec![complete("DEALLOCATE ALL")]))])
        }
        _ => {
            let names: Vec<String> = s.named.keys().cloned().collect();
            let name = if !names.is_empty() && rng.chance(80) { rng.pick(&names) } else { "s4".to_owned() };
            let answer = match s.named.remove(&name) {
                Some(_) => complete("DEALLOCATE"),
                None => error("26000"),
            };
            let sql = format!("deallocate {name}");
            ("SQL DEALLOCATE of a protocol-level statement".to_owned(), vec![Action::query(&sql, done(vec![answer]))])
        }
    }
}

/// What a session that never took some state must not see of anyone's.
pub fn visitor(s: &mut Session, rng: &mut Rng, m: &str) -> (String, Vec<Action>) {
    match rng.range(0, 2) {
        0 => {
            let name = rng.pick(&SQL_PREPARED);
            let expect = if s.sql_prepared.contains(&name) {
                let value = if name == "q1" { m.to_owned() } else { format!("{m}-q2") };
                one_text("m", &value)
            } else {
                vec![error("26000")]
            };
            let sql = format!("execute {name}('{m}')");
            ("EXECUTE of a SQL prepared statement".to_owned(), vec![Action::query(&sql, done(expect))])
        }
        1 => {
            let expect = match s.temp_rows {
                Some(n) => vec![row_desc(&[("n", INT8)]), row(&[n.to_string()]), complete("SELECT 1")],
                None => vec![error("42P01")],
            };
            ("a read of the temp table".to_owned(), vec![Action::query("select count(*) as n from tmp", done(expect))])
        }
        _ => {
            let channel = s.channel();
            let heard = s.listening.then(|| notification(&channel, m));
            let (sql, mut expect) = if rng.chance(50) {
                (format!("notify {channel}, '{m}'"), vec![complete("NOTIFY")])
            } else {
                let answer = vec![row_desc(&[("n", VOID)]), row(&[""]), complete("SELECT 1")];
                (format!("select pg_notify('{channel}', '{m}') as n"), answer)
            };
            expect.extend(heard);
            ("NOTIFY of the client's own channel".to_owned(), vec![Action::query(&sql, done(expect))])
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    SetVar,
    ResetVar,
    SearchPath,
    Lock,
    Unlock,
    Listen,
    Unlisten,
    Prepare,
    Deallocate,
    TempCreate,
    TempInsert,
    AppName,
}

pub fn stateful(s: &mut Session, rng: &mut Rng, m: &str) -> (String, Vec<Action>) {
    let kind = rng.weighted(&[
        (State::SetVar, 4),
        (State::ResetVar, 1),
        (State::SearchPath, 2),
        (State::Lock, 3),
        (State::Unlock, if s.locks.is_empty() { 0 } else { 1 }),
        (State::Listen, 2),
        (State::Unlisten, 1),
        (State::Prepare, 3),
        (State::Deallocate, 1),
        (State::TempCreate, 1),
        (State::TempInsert, 1),
        (State::AppName, 1),
    ]);
    let (what, variant, action) = match kind {
        State::SetVar => set_var(s, rng, m),
        State::ResetVar => {
            s.app_x.clear();
            ("RESET of a custom setting", "", Action::query("reset app.x", done(vec![complete("RESET")])))
        }
        State::SearchPath => {
            let target = s.schema.other().name();
            s.schema = s.schema.other();
            if rng.chance(30) {
                let sql = format!("select set_config('search_path', '{target}', false) as sp");
                let expect = done(one_text("sp", target));
                ("search_path", " by set_config", Action::query(&sql, expect))
            } else {
                let sql = format!("set search_path = {target}");
                let (variant, action) = plain_or_multi(rng, m, &sql, vec![complete("SET")]);
                ("SET search_path", variant, action)
            }
        }
        State::Lock => {
            s.next_lock += 1;
            let key = s.next_lock;
            s.locks.push(key);
            match rng.range(0, 2) {
                0 => {
                    let sql = format!("select pg_advisory_lock({key}) as locked");
                    let answer = vec![row_desc(&[("locked", VOID)]), row(&[""]), complete("SELECT 1")];
                    let (variant, action) = plain_or_multi(rng, m, &sql, answer);
                    ("session advisory lock", variant, action)
                }
                1 => {
                    let sql = format!("do $$ begin perform pg_advisory_lock({key}); end $$");
                    ("session advisory lock", " in a DO block", Action::query(&sql, done(vec![complete("DO")])))
                }
                _ => {
                    let mut out = Out::default();
                    out.parse("", "select pg_advisory_lock($1) as locked");
                    out.bind("", &[key.to_string()]);
                    out.execute(0);
                    out.sync();
                    let expect = vec!["1".into(), "2".into(), row(&[""]), complete("SELECT 1"), ready('I')];
                    ("session advisory lock", " (extended)", Action::exchange(out, expect))
                }
            }
        }
        State::Unlock => {
            let key = s.locks.remove(rng.range(0, s.locks.len() - 1));
            let sql = format!("select pg_advisory_unlock({key}) as unlocked");
            let expect = done(vec![row_desc(&[("unlocked", 16)]), row(&["t"]), complete("SELECT 1")]);
            ("advisory unlock", "", Action::query(&sql, expect))
        }
        State::Listen => {
            s.listening = true;
            let sql = format!("listen {}", s.channel());
            let (variant, action) = plain_or_multi(rng, m, &sql, vec![complete("LISTEN")]);
            ("LISTEN", variant, action)
        }
        State::Unlisten => {
            s.listening = false;
            let sql = if rng.chance(50) { format!("unlisten {}", s.channel()) } else { "unlisten *".to_owned() };
            ("UNLISTEN", "", Action::query(&sql, done(vec![complete("UNLISTEN")])))
        }
        State::Prepare => {
            let name = rng.pick(&SQL_PREPARED);
            let answer = if s.sql_prepared.contains(&name) {
                error("42P05")
            } else {
                s.sql_prepared.push(name);
                complete("PREPARE")
            };
            let sql = format!("prepare {name} as {}", sql_prepared_text(name));
            let (variant, action) = plain_or_multi(rng, m, &sql, vec![answer]);
            ("SQL PREPARE", variant, action)
        }
        State::Deallocate => {
            let name = rng.pick(&SQL_PREPARED);
            let answer = match s.sql_prepared.iter().position(|n| *n == name) {
                Some(i) => {
                    s.sql_prepared.remove(i);
                    complete("DEALLOCATE")
                }
                None => error("26000"),
            };
            ("SQL DEALLOCATE", "", Action::query(&format!("deallocate {name}"), done(vec![answer])))
        }
        State::TempCreate => {
            let answer = if s.temp_rows.is_some() {
                error("42P07")
            } else {
                s.temp_rows = Some(0);
                complete("CREATE TABLE")
            };
            let (variant, action) = plain_or_multi(rng, m, "create temp table tmp (v text)", vec![answer]);
            ("CREATE TEMP TABLE", variant, action)
        }
        State::TempInsert => {
            let answer = match &mut s.temp_rows {
                Some(n) => {
                    *n += 1;
                    complete("INSERT 0 1")
                }
                None => error("42P01"),
            };
            let sql = format!("insert into tmp values ('{m}')");
            ("INSERT into the temp table", "", Action::query(&sql, done(vec![answer])))
        }
        State::AppName => {
            let mut expect = vec![complete("SET")];
            // Reported only when it changes.
            if s.app_name != s.owner {
                expect.push(parameter_status("application_name", &s.owner));
            }
            s.app_name = s.owner.clone();
            let sql = format!("set application_name = '{}'", s.owner);
            let expect = done(expect);
            ("SET application_name", "", Action::query(&sql, expect))
        }
    };
    (format!("{what}{variant}"), vec![action])
}

fn set_var(s: &mut Session, rng: &mut Rng, m: &str) -> (&'static str, &'static str, Action) {
    s.app_x = m.to_owned();
    match rng.range(0, 2) {
        0 => {
            let (variant, action) = plain_or_multi(rng, m, &format!("set app.x = '{m}'"), vec![complete("SET")]);
            ("SET of a custom setting", variant, action)
        }
        1 => {
            let sql = format!("select set_config('app.x', '{m}', false) as x");
            ("set_config(.., false)", "", Action::query(&sql, done(one_text("x", m))))
        }
        _ => {
            let mut out = Out::default();
            out.parse("", "select set_config('app.x', $1, false) as x");
            out.bind("", &[m.to_owned()]);
            out.execute(0);
            out.sync();
            let expect = vec!["1".into(), "2".into(), row(&[m]), complete("SELECT 1"), ready('I')];
            ("set_config(.., false)", " (extended)", Action::exchange(out, expect))
        }
    }
}
