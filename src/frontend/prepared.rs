//! One client's named prepared statements under transaction pooling: the
//! client's name maps to a server-side statement shared by every client that
//! prepares the same text and parameter types in the same context; the
//! session prepares it on whichever server connection the client's next
//! Bind or Describe lands on. Bounded by `max_client_prepared_statements`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::Statement;

/// One client's statement names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    /// foldhash (randomly seeded): looked up on every Bind, where SipHash was
    /// a tenth of the cost of a prepared transaction.
    by_name: HashMap<Bytes, Arc<Statement>, foldhash::fast::RandomState>,
}

impl ClientStatements {
    pub fn insert(&mut self, name: Bytes, stmt: Arc<Statement>) {
        self.by_name.insert(name, stmt);
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.by_name.remove(name)
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }
}
