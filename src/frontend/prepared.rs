//! Named prepared statements under transaction pooling. A client's statement
//! name maps to a server-side name shared by every client that prepares the
//! same text and parameter types; the session prepares it on whichever
//! server connection the client's next Bind or Describe lands on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A statement as the server knows it.
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    /// The Parse body after the name: query text and parameter types.
    pub definition: Bytes,
}

/// Server-side names by statement definition, for the whole process.
#[derive(Debug, Default)]
pub struct StatementRegistry {
    by_definition: Mutex<HashMap<Bytes, Arc<Statement>>>,
    next_id: AtomicU64,
}

impl StatementRegistry {
    pub fn intern(&self, definition: &[u8]) -> Arc<Statement> {
        let mut map = self.by_definition.lock().expect("statement registry lock");
        if let Some(stmt) = map.get(definition) {
            return stmt.clone();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let definition = Bytes::copy_from_slice(definition);
        let stmt = Arc::new(Statement { server_name: format!("pgrelay_{id}").into(), definition: definition.clone() });
        map.insert(definition, stmt.clone());
        stmt
    }

    pub fn len(&self) -> usize {
        self.by_definition.lock().expect("statement registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One client's statement names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Bytes, Arc<Statement>>,
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
