//! What a direct PostgreSQL connection shows one client: its session state
//! (settings, locks, LISTEN, prepared statements, temp table, search_path),
//! its transaction, and the rows it committed; and the extended protocol's
//! rules (an error skips to Sync, a batch is one implicit transaction,
//! a statement whose result type changed fails with 0A000 until it is
//! prepared again). The generator asks the model what each message must be
//! answered with; the direct pass checks the model against PostgreSQL itself.

use std::collections::BTreeMap;

use crate::render::{self, ready, row_desc, INT4, INT8, TEXT};

/// The two schemas clients are split between: the same table name `t`
/// with a column `v` of a different type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Int,
    Text,
}

impl Schema {
    pub fn name(self) -> &'static str {
        match self {
            Schema::Int => "iso_int",
            Schema::Text => "iso_text",
        }
    }

    pub fn other(self) -> Schema {
        match self {
            Schema::Int => Schema::Text,
            Schema::Text => Schema::Int,
        }
    }

    pub fn v_oid(self) -> u32 {
        match self {
            Schema::Int => INT4,
            Schema::Text => TEXT,
        }
    }

    /// `value` as t.v stores it (and shows it as text).
    pub fn stored(self, value: &str) -> String {
        match self {
            Schema::Int => value.parse::<i64>().expect("an integer literal").to_string(),
            Schema::Text => value.to_owned(),
        }
    }
}

/// The type of the column `a` of the client's own DDL table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdlType {
    Int,
    Big,
}

impl DdlType {
    pub fn sql(self) -> &'static str {
        match self {
            DdlType::Int => "int",
            DdlType::Big => "bigint",
        }
    }

    pub fn oid(self) -> u32 {
        match self {
            DdlType::Int => INT4,
            DdlType::Big => INT8,
        }
    }

    pub fn other(self) -> DdlType {
        match self {
            DdlType::Int => DdlType::Big,
            DdlType::Big => DdlType::Int,
        }
    }
}

/// The statement texts of the extended protocol. The same texts serve
/// every client, so a proxy that shares server-side statements by text
/// shares these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    Echo,
    Series,
    /// `$1` has no declared type: the server infers it from t.v, which
    /// depends on the search_path.
    Insert,
    Count,
    /// Its result type depends on the search_path.
    Vals,
    /// Reads the client's own DDL table, whose column type the client changes.
    Ddl,
    /// Fails in Execute (not in Bind).
    Boom,
    Bad,
}

impl Text {
    pub fn sql(self, client: usize) -> String {
        match self {
            Text::Echo => "select $1::text as m".to_owned(),
            Text::Series => "select $1::text || ':' || g as m from generate_series(1, 3) g".to_owned(),
            Text::Insert => "insert into t (v, owner, m) values ($1, $2, $3) returning v::text as v, m".to_owned(),
            Text::Count => "select $1::text as m, count(*) as n from t where owner = $2".to_owned(),
            Text::Vals => "select $1::text as m, v from t where owner = $2 order by id".to_owned(),
            Text::Ddl => format!("select $1::text as m, a from iso.d_c{client:02}"),
            Text::Boom => "select $1::text as m, 1 / (g - 1) as boom from generate_series(1, 1) g".to_owned(),
            Text::Bad => "selec $1 as m".to_owned(),
        }
    }

    pub fn search_path_sensitive(self) -> bool {
        matches!(self, Text::Insert | Text::Count | Text::Vals)
    }

    pub fn params(self, marker: &str, owner: &str, value: &str) -> Vec<String> {
        match self {
            Text::Insert => vec![value.to_owned(), owner.to_owned(), marker.to_owned()],
            Text::Count | Text::Vals => vec![marker.to_owned(), owner.to_owned()],
            _ => vec![marker.to_owned()],
        }
    }

    pub fn param_oids(self, schema: Schema) -> Vec<u32> {
        match self {
            Text::Insert => vec![schema.v_oid(), TEXT, TEXT],
            Text::Count | Text::Vals => vec![TEXT, TEXT],
            _ => vec![TEXT],
        }
    }

    pub fn columns(self, schema: Schema, ddl: Option<DdlType>) -> Vec<(&'static str, u32)> {
        match self {
            Text::Echo | Text::Series | Text::Bad => vec![("m", TEXT)],
            Text::Insert => vec![("v", TEXT), ("m", TEXT)],
            Text::Count => vec![("m", TEXT), ("n", INT8)],
            Text::Vals => vec![("m", TEXT), ("v", schema.v_oid())],
            Text::Ddl => vec![("m", TEXT), ("a", ddl.expect("DDL type known").oid())],
            Text::Boom => vec![("m", TEXT), ("boom", INT4)],
        }
    }
}

/// A row of t the client inserted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub schema: &'static str,
    pub value: String,
    pub marker: String,
}

/// A prepared statement as the client's session knows it: the state of the
/// world when it was parsed decides what it does later.
#[derive(Debug, Clone)]
pub struct Stmt {
    pub text: Text,
    pub schema: Schema,
    pub ddl: Option<DdlType>,
}

#[derive(Debug, Default)]
pub struct Tx {
    pub pending: Vec<Row>,
    pub aborted: bool,
    /// Rows pending when `savepoint sp` ran.
    pub savepoint: Option<usize>,
    pub local_x: Option<String>,
}

/// One client connection (a "session") from login to its end.
#[derive(Debug)]
pub struct Session {
    pub client: usize,
    pub owner: String,
    pub stateful: bool,
    pub startup: Schema,
    pub schema: Schema,
    pub app_x: String,
    pub app_name: String,
    pub locks: Vec<u64>,
    pub next_lock: u64,
    pub listening: bool,
    pub sql_prepared: Vec<&'static str>,
    pub named: BTreeMap<String, Stmt>,
    pub unnamed: Option<Stmt>,
    pub temp_rows: Option<usize>,
    pub rows: Vec<Row>,
    pub ddl: Option<DdlType>,
    pub tx: Option<Tx>,
}

impl Session {
    pub fn new(client: usize, number: usize, startup: Schema, stateful: bool) -> Session {
        Session {
            client,
            owner: format!("c{client:02}-n{number:02}"),
            stateful,
            startup,
            schema: startup,
            app_x: String::new(),
            app_name: String::new(),
            locks: Vec::new(),
            next_lock: (client as u64 * 1000 + number as u64) * 100,
            listening: false,
            sql_prepared: Vec::new(),
            named: BTreeMap::new(),
            unnamed: None,
            temp_rows: None,
            rows: Vec::new(),
            ddl: None,
            tx: None,
        }
    }

    pub fn channel(&self) -> String {
        format!("ch_c{:02}", self.client)
    }

    pub fn status(&self) -> char {
        match &self.tx {
            None => 'I',
            Some(tx) if tx.aborted => 'E',
            Some(_) => 'T',
        }
    }

    pub fn ready(&self) -> String {
        ready(self.status())
    }

    /// The value `current_setting('app.x', true)` shows (NULL read as '').
    pub fn x(&self) -> String {
        self.tx.as_ref().and_then(|tx| tx.local_x.clone()).unwrap_or_else(|| self.app_x.clone())
    }

    /// Rows of this session's owner visible in the current schema, with
    /// `extra` rows not yet committed (inserted earlier in the same batch).
    pub fn visible(&self, extra: &[Row]) -> Vec<Row> {
        let pending = self.tx.as_ref().map_or(&[][..], |tx| &tx.pending[..]);
        let name = self.schema.name();
        self.rows.iter().chain(pending).chain(extra).filter(|r| r.schema == name).cloned().collect()
    }

    /// Whether executing the named statement succeeds predictably: its
    /// search_path (when it matters) and result type are still those it was
    /// prepared with.
    pub fn usable(&self, stmt: &Stmt) -> bool {
        (!stmt.text.search_path_sensitive() || stmt.schema == self.schema)
            && (stmt.text != Text::Ddl || stmt.ddl == self.ddl)
    }

    /// What DISCARD ALL leaves: the session as it was after login.
    pub fn discard_all(&mut self) {
        self.app_x.clear();
        self.app_name.clear();
        self.schema = self.startup;
        self.locks.clear();
        self.listening = false;
        self.sql_prepared.clear();
        self.named.clear();
        self.temp_rows = None;
    }

    /// Commits (or drops) rows written by a statement outside any batch.
    pub fn wrote(&mut self, rows: Vec<Row>) {
        match &mut self.tx {
            Some(tx) => tx.pending.extend(rows),
            None => self.rows.extend(rows),
        }
    }
}

/// Everything a session's state shows, as one row: `iso.state(marker)`.
pub const STATE_FUNCTION: &str = "
create function iso.state(marker text, out m text, out x text, out sp text, out app text,
                          out locks bigint, out prepared bigint, out listening bigint, out temps bigint)
language sql volatile as $$
  select marker, coalesce(current_setting('app.x', true), ''), current_setting('search_path'),
         current_setting('application_name'),
         (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()),
         (select count(*) from pg_prepared_statements where from_sql),
         (select count(*) from pg_listening_channels()),
         (select count(*) from pg_class where relkind = 'r' and relpersistence = 't'
                                          and relnamespace = pg_my_temp_schema())
$$;
";

/// The probe query; `marker_expr` is a literal or a parameter.
pub fn probe_sql(marker_expr: &str) -> String {
    format!("select * from iso.state({marker_expr})")
}

pub fn probe_columns() -> String {
    row_desc(&[
        ("m", TEXT),
        ("x", TEXT),
        ("sp", TEXT),
        ("app", TEXT),
        ("locks", INT8),
        ("prepared", INT8),
        ("listening", INT8),
        ("temps", INT8),
    ])
}

pub fn probe_row(s: &Session, marker: &str) -> String {
    render::row(&[
        marker.to_owned(),
        s.x(),
        s.schema.name().to_owned(),
        s.app_name.clone(),
        s.locks.len().to_string(),
        s.sql_prepared.len().to_string(),
        usize::from(s.listening).to_string(),
        usize::from(s.temp_rows.is_some()).to_string(),
    ])
}
