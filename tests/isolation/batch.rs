//! The extended protocol as PostgreSQL answers it: an error skips
//! everything up to Sync, a batch is one implicit transaction (rolled back
//! by an error in it), Parse of a name in use fails with 42P05, and a
//! statement whose result type changed fails with 0A000 until its type is
//! back. Each message is written and its expected answer recorded together.

use crate::model::{Row, Session, Stmt, Text};
use crate::render::{complete, error, param_desc, row, row_desc};
use crate::wire_out::Out;

struct Portal {
    stmt: Stmt,
    value: String,
    rows: Option<Vec<Vec<String>>>,
    fetched: usize,
}

/// One or more extended-protocol batches written together, and what the
/// server answers to them.
pub struct Batch<'s> {
    pub s: &'s mut Session,
    pub out: Out,
    pub expect: Vec<String>,
    pub marker: String,
    failed: bool,
    portal: Option<Portal>,
    pending: Vec<Row>,
}

impl<'s> Batch<'s> {
    pub fn new(s: &'s mut Session, marker: &str) -> Batch<'s> {
        Batch {
            s,
            out: Out::default(),
            expect: Vec::new(),
            marker: marker.to_owned(),
            failed: false,
            portal: None,
            pending: Vec::new(),
        }
    }

    /// The messages written so far and their expected answers, as one
    /// exchange; the batch goes on with a fresh write.
    pub fn cut(&mut self) -> (Out, Vec<String>) {
        (std::mem::take(&mut self.out), std::mem::take(&mut self.expect))
    }

    fn fail(&mut self, code: &str) {
        self.expect.push(error(code));
        self.failed = true;
    }

    pub fn parse(&mut self, name: &str, text: Text) {
        self.out.parse(name, &text.sql(self.s.client));
        if self.failed {
            return;
        }
        if name.is_empty() {
            // The old unnamed statement goes even when the new one fails.
            self.s.unnamed = None;
        }
        if text == Text::Bad {
            return self.fail("42601");
        }
        if !name.is_empty() && self.s.named.contains_key(name) {
            return self.fail("42P05");
        }
        self.expect.push("1".to_owned());
        let stmt = Stmt { text, schema: self.s.schema, ddl: self.s.ddl };
        if name.is_empty() {
            self.s.unnamed = Some(stmt);
        } else {
            self.s.named.insert(name.to_owned(), stmt);
        }
    }

    fn lookup(&self, name: &str) -> Option<Stmt> {
        if name.is_empty() {
            self.s.unnamed.clone()
        } else {
            self.s.named.get(name).cloned()
        }
    }

    /// Bind of `name` with the parameters its text takes (`value` for t.v).
    pub fn bind(&mut self, name: &str, value: &str) {
        let stmt = self.lookup(name);
        let params = match &stmt {
            Some(st) => st.text.params(&self.marker, &self.s.owner, value),
            None => vec![self.marker.clone()],
        };
        self.out.bind(name, &params);
        if self.failed {
            return;
        }
        match stmt {
            None => self.fail("26000"),
            Some(st) if st.text == Text::Ddl && st.ddl != self.s.ddl => self.fail("0A000"),
            Some(stmt) => {
                self.expect.push("2".to_owned());
                self.portal = Some(Portal { stmt, value: value.to_owned(), rows: None, fetched: 0 });
            }
        }
    }

    pub fn describe_portal(&mut self) {
        self.out.describe_portal();
        if self.failed {
            return;
        }
        let stmt = &self.portal.as_ref().expect("describe after bind").stmt;
        self.expect.push(row_desc(&stmt.text.columns(stmt.schema, stmt.ddl)));
    }

    pub fn describe_statement(&mut self, name: &str) {
        self.out.describe_statement(name);
        if self.failed {
            return;
        }
        match self.s.named.get(name).cloned() {
            None => self.fail("26000"),
            Some(st) => {
                self.expect.push(param_desc(&st.text.param_oids(st.schema)));
                if st.text == Text::Ddl && st.ddl != self.s.ddl {
                    self.fail("0A000");
                } else {
                    self.expect.push(row_desc(&st.text.columns(st.schema, st.ddl)));
                }
            }
        }
    }

    pub fn execute(&mut self, max_rows: u32) {
        self.out.execute(max_rows);
        if self.failed {
            return;
        }
        let mut portal = self.portal.take().expect("execute after bind");
        if portal.stmt.text == Text::Boom {
            return self.fail("22012");
        }
        if portal.rows.is_none() {
            portal.rows = Some(self.run(&portal));
        }
        let rows = portal.rows.as_ref().expect("rows computed");
        let remaining = &rows[portal.fetched..];
        let take = if max_rows > 0 { remaining.len().min(max_rows as usize) } else { remaining.len() };
        for values in &remaining[..take] {
            self.expect.push(row(values));
        }
        portal.fetched += take;
        if max_rows > 0 && remaining.len() > take {
            self.expect.push("s".to_owned());
        } else if portal.stmt.text == Text::Insert {
            self.expect.push(complete("INSERT 0 1"));
        } else {
            self.expect.push(complete(&format!("SELECT {take}")));
        }
        self.portal = Some(portal);
    }

    /// The rows a statement returns when it runs now.
    fn run(&mut self, portal: &Portal) -> Vec<Vec<String>> {
        let m = self.marker.clone();
        match portal.stmt.text {
            Text::Echo => vec![vec![m]],
            Text::Series => (1..=3).map(|g| vec![format!("{m}:{g}")]).collect(),
            Text::Insert => {
                let stored = self.s.schema.stored(&portal.value);
                self.pending.push(Row { schema: self.s.schema.name(), value: stored.clone(), marker: m.clone() });
                vec![vec![stored, m]]
            }
            Text::Count => vec![vec![m, self.s.visible(&self.pending).len().to_string()]],
            Text::Vals => self.s.visible(&self.pending).into_iter().map(|r| vec![m.clone(), r.value]).collect(),
            Text::Ddl => vec![vec![m, "1".to_owned()]],
            Text::Boom | Text::Bad => unreachable!("never runs"),
        }
    }

    pub fn close(&mut self, name: &str) {
        self.out.close_statement(name);
        if self.failed {
            return;
        }
        self.expect.push("3".to_owned());
        self.s.named.remove(name);
    }

    /// Sync: the implicit transaction commits, or after an error rolls back.
    pub fn sync(&mut self) {
        self.out.sync();
        let rows = std::mem::take(&mut self.pending);
        if self.failed {
            if let Some(tx) = &mut self.s.tx {
                tx.aborted = true;
            }
        } else {
            self.s.wrote(rows);
        }
        self.failed = false;
        self.portal = None;
        self.expect.push(self.s.ready());
    }

    pub fn flush(&mut self) {
        self.out.flush();
    }
}
