//! One client's named prepared statements under transaction pooling: the
//! client's name maps to a server-side statement shared by every client that
//! prepares the same text and parameter types; the session prepares it on
//! whichever server connection the client's next Bind or Describe lands on.

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
    pub fn insert(&mut self, name: &[u8], stmt: Arc<Statement>) {
        self.by_name.insert(Bytes::copy_from_slice(name), stmt);
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.by_name.remove(name)
    }
}
