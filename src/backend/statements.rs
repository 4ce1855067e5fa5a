//! Server-side prepared statements shared by all clients: one server name per
//! distinct statement (query text + parameter types), prepared lazily on each
//! server connection that needs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A statement as the servers know it.
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    /// The Parse body after the name: query text and parameter types.
    pub definition: Bytes,
    /// A server has accepted this definition (answered ParseComplete), so a
    /// client's Parse of it can be answered without asking a server again.
    validated: AtomicBool,
}

impl Statement {
    pub fn is_validated(&self) -> bool {
        self.validated.load(Ordering::Relaxed)
    }

    pub fn mark_validated(&self) {
        self.validated.store(true, Ordering::Relaxed);
    }
}

/// Server-side names by statement definition, for the whole process.
#[derive(Debug, Default)]
pub struct StatementRegistry {
    by_definition: Mutex<HashMap<Bytes, Arc<Statement>, foldhash::fast::RandomState>>,
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
        let stmt = Arc::new(Statement {
            server_name: format!("pgrelay_{id}").into(),
            definition: definition.clone(),
            validated: AtomicBool::new(false),
        });
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
