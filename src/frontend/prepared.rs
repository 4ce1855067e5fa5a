//! One client's named prepared statements under transaction pooling: the
//! client's name maps to a server-side statement shared by every client that
//! prepares the same text and parameter types in the same context; the
//! session prepares it on whichever server connection the client's next
//! Bind or Describe lands on. Bounded by `max_client_prepared_statements`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::Statement;
use crate::router::PgrelayCommand;

/// One client's statement names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    /// foldhash (randomly seeded): looked up on every Bind, where SipHash was
    /// a tenth of the cost of a prepared transaction.
    by_name: HashMap<Bytes, Arc<Statement>, foldhash::fast::RandomState>,
    /// Statements about pgrelay's own settings (`SHOW pgrelay.commit_lsn`),
    /// answered by pgrelay: rare, so a list.
    own: Vec<(Bytes, PgrelayCommand)>,
}

impl ClientStatements {
    pub fn insert(&mut self, name: Bytes, stmt: Arc<Statement>) {
        self.by_name.insert(name, stmt);
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    /// Whether the client has a statement of this name, its own or pgrelay's.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.by_name.contains_key(name) || self.own(name).is_some()
    }

    /// Removes a statement that servers know.
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.by_name.remove(name)
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
        self.own.clear();
    }

    pub fn len(&self) -> usize {
        self.by_name.len() + self.own.len()
    }

    /// Whether the client has any statement pgrelay answers itself.
    pub fn has_own(&self) -> bool {
        !self.own.is_empty()
    }

    /// Keeps a statement pgrelay answers itself.
    pub fn insert_own(&mut self, name: Bytes, command: PgrelayCommand) {
        self.own.push((name, command));
    }

    /// The pgrelay statement of this name.
    pub fn own(&self, name: &[u8]) -> Option<&PgrelayCommand> {
        self.own.iter().find(|(n, _)| n[..] == *name).map(|(_, command)| command)
    }

    /// Removes a pgrelay statement; whether there was one.
    pub fn remove_own(&mut self, name: &[u8]) -> bool {
        let before = self.own.len();
        self.own.retain(|(n, _)| n[..] != *name);
        self.own.len() != before
    }
}
