//! Bringing a leased server connection to what the client expects of it:
//! the client's startup settings, and the prepared statements it uses.

use std::sync::Arc;

use crate::backend::{Expect, Origin, ServerConn, Statement};
use crate::metrics::Metrics;
use crate::wire;

/// Makes sure the statement exists on this connection, preparing it first
/// (answer swallowed) when it was prepared on another connection.
pub fn ensure_prepared(conn: &mut ServerConn, stmt: &Arc<Statement>, metrics: &Metrics) {
    if !conn.tracker.is_prepared(&stmt.server_name) {
        wire::put_parse_renamed(&mut conn.wbuf, stmt.server_name.as_bytes(), &stmt.definition);
        conn.tracker.sent(Expect::Parse { registers: Some(stmt.clone()) }, Origin::InjectedParse);
        metrics.statements_reprepared.inc();
    }
}

/// Brings the connection to the client's startup settings with one
/// pipelined query whose answers the client never sees. `set_config` parses
/// values the way startup packets are parsed (lists such as search_path too).
pub fn apply_settings(conn: &mut ServerConn, wanted: &Arc<Vec<(String, String)>>) {
    if !conn.settings_dirty && conn.applied.as_ref().is_some_and(|a| Arc::ptr_eq(a, wanted)) {
        return;
    }
    let empty = Vec::new();
    let current = if conn.settings_dirty { &empty } else { conn.applied.as_deref().unwrap_or(&empty) };
    let mut sql = String::new();
    if conn.settings_dirty {
        sql.push_str("RESET ALL;");
    }
    for (name, _) in current.iter() {
        if !wanted.iter().any(|(n, _)| n == name) {
            sql.push_str(&format!("RESET {};", quote_ident(name)));
        }
    }
    let changed: Vec<String> = wanted
        .iter()
        .filter(|(name, value)| !current.iter().any(|(n, v)| n == name && v == value))
        .map(|(name, value)| format!("pg_catalog.set_config({}, {}, false)", quote_literal(name), quote_literal(value)))
        .collect();
    if !changed.is_empty() {
        sql.push_str("SELECT ");
        sql.push_str(&changed.join(", "));
    }
    if !sql.is_empty() {
        wire::put_query(&mut conn.wbuf, &sql);
        conn.tracker.sent(Expect::Query, Origin::InjectedSetup);
    }
    conn.applied = Some(wanted.clone());
    conn.settings_dirty = false;
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
