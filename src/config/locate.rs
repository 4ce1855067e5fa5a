//! Where each value came from: a line of the file, an environment variable,
//! or the default. One walk over the parsed document records the line of
//! every key (and rejects unknown sections and keys on the way), so that
//! validation can name the line of any key without keeping the document.

use std::collections::HashMap;
use std::fmt::Display;
use std::ops::Range;

use toml_edit::{Item, Key, Table, TableLike, TomlError, Value};

use super::raw::{self, LISTS, TABLES};
use super::ConfigError;

/// Where a value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    /// A 1-based line of the config file.
    Line(usize),
    /// An environment variable (`PGRELAY_POOL_MODE`).
    Env(String),
    /// Not set anywhere: the built-in default.
    Default,
}

impl Origin {
    fn from_line(line: Option<usize>) -> Origin {
        line.map_or(Origin::Default, Origin::Line)
    }

    pub(super) fn line(&self) -> Option<usize> {
        match self {
            Origin::Line(line) => Some(*line),
            _ => None,
        }
    }

    /// How a message mentions it: `line 7`, `PGRELAY_POOL_MODE`, `default`.
    pub(super) fn describe(&self) -> String {
        match self {
            Origin::Line(line) => format!("line {line}"),
            Origin::Env(var) => var.clone(),
            Origin::Default => "default".to_owned(),
        }
    }
}

/// `line 7: [pool] mode: <message>`, with the variable's name instead of the
/// line for an environment override and no prefix for a default.
pub(super) fn error_at(origin: &Origin, label: impl Display, message: impl Display) -> ConfigError {
    match origin {
        Origin::Default => ConfigError(format!("{label}: {message}")),
        _ => ConfigError(format!("{}: {label}: {message}", origin.describe())),
    }
}

/// A TOML syntax error, as `line N: <what the parser says>`.
pub(super) fn syntax_error(text: &str, error: &TomlError) -> ConfigError {
    let message = one_line(error.message());
    match error.span() {
        Some(span) => ConfigError(format!("line {}: {message}", line_of(text, span.start))),
        None => ConfigError(format!("invalid TOML: {message}")),
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// One `[[nodes]]` (or users, databases) entry: its header line and the line
/// of each key it sets.
#[derive(Debug, Default)]
struct Entry {
    line: Option<usize>,
    keys: HashMap<&'static str, usize>,
}

/// The line of every key in the file, plus the environment overrides.
#[derive(Debug)]
pub(super) struct Locations<'t> {
    text: &'t str,
    table_keys: HashMap<(&'static str, &'static str), usize>,
    entries: HashMap<&'static str, Vec<Entry>>,
    /// The byte range of each value with its label (`[pool] mode`), to point
    /// serde's type errors at a key.
    value_labels: Vec<(Range<usize>, String)>,
    env: HashMap<(&'static str, &'static str), String>,
}

impl<'t> Locations<'t> {
    /// Walks the parsed file; fails on an unknown section or key, or a
    /// section written in the wrong form (`[nodes]` for `[[nodes]]`).
    pub(super) fn scan(text: &'t str, root: &Table) -> Result<Locations<'t>, ConfigError> {
        let mut locations = Locations {
            text,
            table_keys: HashMap::new(),
            entries: HashMap::new(),
            value_labels: Vec::new(),
            env: HashMap::new(),
        };
        for (name, item) in root.iter() {
            let line = locations.line(root.key(name).and_then(Key::span));
            if let Some(section) = TABLES.iter().copied().find(|s| *s == name) {
                locations.scan_table(section, line, item)?;
            } else if let Some(list) = LISTS.iter().copied().find(|s| *s == name) {
                locations.scan_list(list, line, item)?;
            } else {
                let known = [&TABLES[..], &LISTS[..]].concat().join(", ");
                let message = format!("unknown section [{name}] (known sections: {known})");
                return Err(prefixed(line, message));
            }
        }
        Ok(locations)
    }

    fn scan_table(&mut self, section: &'static str, line: Option<usize>, item: &Item) -> Result<(), ConfigError> {
        let Some(table) = item.as_table_like() else {
            let message = format!("must be a single table: write [{section}] on a line of its own, then its keys");
            return Err(error_at(&Origin::from_line(line), format!("[{section}]"), message));
        };
        for (key, line) in self.scan_keys(section, &format!("[{section}]"), table)? {
            self.table_keys.insert((section, key), line);
        }
        Ok(())
    }

    fn scan_list(&mut self, list: &'static str, line: Option<usize>, item: &Item) -> Result<(), ConfigError> {
        let wrong_form = || {
            let message = format!("must be a list of tables: write [[{list}]] above each entry");
            error_at(&Origin::from_line(line), format!("[[{list}]]"), message)
        };
        let tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = match item {
            Item::ArrayOfTables(array) => array.iter().map(|t| (t as &dyn TableLike, t.span())).collect(),
            Item::Value(Value::Array(array)) => array
                .iter()
                .map(|v| v.as_inline_table().map(|t| (t as &dyn TableLike, v.span())))
                .collect::<Option<_>>()
                .ok_or_else(wrong_form)?,
            _ => return Err(wrong_form()),
        };
        let mut entries = Vec::with_capacity(tables.len());
        for (table, span) in tables {
            let line = self.line(span);
            let keys = self.scan_keys(list, &format!("[[{list}]]"), table)?;
            entries.push(Entry { line, keys: keys.into_iter().collect() });
        }
        self.entries.insert(list, entries);
        Ok(())
    }

    /// Checks every key of one table against the section's known keys and
    /// returns the line of each.
    fn scan_keys(
        &mut self,
        section: &str,
        label: &str,
        table: &dyn TableLike,
    ) -> Result<Vec<(&'static str, usize)>, ConfigError> {
        let known = raw::keys(section).unwrap_or_default();
        let mut lines = Vec::new();
        for (name, value) in table.iter() {
            let line = self.line(table.key(name).and_then(Key::span));
            let Some(key) = known.iter().copied().find(|k| *k == name) else {
                let message = format!("unknown key {name:?} in {label} (known keys: {})", known.join(", "));
                return Err(prefixed(line, message));
            };
            lines.extend(line.map(|line| (key, line)));
            if let Some(span) = value.span() {
                self.value_labels.push((span, format!("{label} {key}")));
            }
        }
        Ok(lines)
    }

    fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        span.map(|span| line_of(self.text, span.start))
    }

    /// Records that `PGRELAY_..` `var` set `[section] key`.
    pub(super) fn note_env(&mut self, section: &'static str, key: &'static str, var: &str) {
        self.env.insert((section, key), var.to_owned());
    }

    /// Where `[section] key` of a single-table section was set.
    pub(super) fn key(&self, section: &'static str, key: &'static str) -> Origin {
        if let Some(var) = self.env.get(&(section, key)) {
            return Origin::Env(var.clone());
        }
        Origin::from_line(self.table_keys.get(&(section, key)).copied())
    }

    /// The header line of entry `index` of a list (`[[nodes]]`).
    pub(super) fn entry(&self, list: &str, index: usize) -> Origin {
        Origin::from_line(self.entries.get(list).and_then(|e| e.get(index)).and_then(|e| e.line))
    }

    /// The line of `key` in entry `index` of a list, or the entry's header
    /// line when the key is not set.
    pub(super) fn entry_key(&self, list: &str, index: usize, key: &str) -> Origin {
        let entry = self.entries.get(list).and_then(|e| e.get(index));
        match entry.and_then(|e| e.keys.get(key)) {
            Some(line) => Origin::Line(*line),
            None => self.entry(list, index),
        }
    }

    /// A deserialization error (a value of the wrong type), pointed at the
    /// key whose value it is about.
    pub(super) fn serde_error(&self, error: &toml_edit::de::Error) -> ConfigError {
        let message = one_line(error.message());
        let Some(span) = error.span() else {
            return ConfigError(format!("invalid configuration: {message}"));
        };
        let label = self
            .value_labels
            .iter()
            .filter(|(range, _)| range.contains(&span.start))
            .min_by_key(|(range, _)| range.len())
            .map(|(_, label)| label);
        let line = line_of(self.text, span.start);
        match label {
            Some(label) => ConfigError(format!("line {line}: {label}: {message}")),
            None => ConfigError(format!("line {line}: {message}")),
        }
    }
}

fn prefixed(line: Option<usize>, message: String) -> ConfigError {
    match line {
        Some(line) => ConfigError(format!("line {line}: {message}")),
        None => ConfigError(message),
    }
}
