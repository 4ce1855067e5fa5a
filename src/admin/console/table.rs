//! A result table as the console sends it: typed columns, text values, and
//! its encoding as RowDescription, DataRows and CommandComplete.

use bytes::BytesMut;

use crate::wire;

/// The PostgreSQL type a column is announced with. Values are always sent
/// as text; the type tells clients such as psql how to align and parse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int4,
    Int8,
    /// PgBouncer sends its SHOW STATS counters as numeric.
    Numeric,
    Bool,
    Float8,
}

impl ColumnType {
    fn oid(self) -> u32 {
        match self {
            ColumnType::Bool => 16,
            ColumnType::Int8 => 20,
            ColumnType::Int4 => 23,
            ColumnType::Text => 25,
            ColumnType::Float8 => 701,
            ColumnType::Numeric => 1700,
        }
    }
}

/// One cell: text, or NULL.
pub type Value = Option<String>;

/// A text value.
pub fn text(value: impl Into<String>) -> Value {
    Some(value.into())
}

/// A number (or anything displayed as one).
pub fn num(value: impl std::fmt::Display) -> Value {
    Some(value.to_string())
}

/// A boolean as PostgreSQL writes it.
pub fn boolean(value: bool) -> Value {
    Some(if value { "t" } else { "f" }.to_owned())
}

/// A finished result: its columns and rows, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<(&'static str, ColumnType)>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, ColumnType)]) -> Table {
        Table { columns: columns.to_vec(), rows: Vec::new() }
    }

    /// Adds a row; it must have one value per column.
    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len(), "one value per column");
        self.rows.push(row);
    }

    /// The column names, in order.
    #[cfg(test)]
    pub fn names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|(name, _)| *name).collect()
    }

    /// Encodes the table and its CommandComplete (tag `SHOW`, as PgBouncer sends).
    pub fn encode(&self, out: &mut BytesMut) {
        let columns: Vec<(&str, u32)> = self.columns.iter().map(|(name, kind)| (*name, kind.oid())).collect();
        wire::put_row_description(out, &columns);
        for row in &self.rows {
            wire::put_data_row(out, row.iter().map(|v| v.as_deref().map(str::as_bytes)));
        }
        wire::put_command_complete(out, "SHOW");
    }
}
