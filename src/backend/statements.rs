//! Server-side prepared statements shared between clients: one server name
//! per distinct (statement context, definition), prepared lazily on each
//! server connection that needs it.
//!
//! A statement's meaning depends on the session that parses it (search_path
//! resolves its tables, and the parameter types PostgreSQL infers follow
//! from them), so statements are shared only between clients whose
//! *context* is the same: the same startup settings, and no settings
//! changed by the client itself (the session gives such a client a private
//! context). The registry holds statements weakly: a statement lives as long
//! as a client refers to it, so the registry is bounded by the clients'
//! own statement maps. Server names are random, so no client can guess
//! another's statement and deallocate or replace it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;

use super::txeffect::TxEffect;

/// Clients with the same context may share statements.
pub type StatementContext = u64;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    context: StatementContext,
    /// The Parse body after the name: query text and parameter types.
    definition: Bytes,
}

type Entries = Mutex<HashMap<Key, Weak<Statement>, foldhash::fast::RandomState>>;

/// A statement as the servers know it.
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    key: Key,
    /// A server has accepted this definition (answered ParseComplete), so a
    /// client's Parse of it can be answered without asking a server again.
    validated: AtomicBool,
    /// The result description (RowDescription or NoData) the server first
    /// gave it, to tell whether a later preparation elsewhere still matches.
    shape: OnceLock<(u8, Bytes)>,
    /// The ParameterDescription message the server first gave it.
    parameters: OnceLock<Bytes>,
    /// What running it does to the transaction, read from its text once.
    tx_effect: OnceLock<TxEffect>,
    /// The registry it is listed in, to unlist it when the last client lets go.
    registry: Weak<Entries>,
}

impl Statement {
    /// The Parse body after the name: query text and parameter types.
    pub fn definition(&self) -> &Bytes {
        &self.key.definition
    }

    /// What running it does to the transaction: `read` from its definition
    /// the first time.
    pub fn tx_effect(&self, read: impl FnOnce(&[u8]) -> TxEffect) -> TxEffect {
        *self.tx_effect.get_or_init(|| read(&self.key.definition))
    }

    pub fn is_validated(&self) -> bool {
        self.validated.load(Ordering::Relaxed)
    }

    pub fn mark_validated(&self) {
        self.validated.store(true, Ordering::Relaxed);
    }

    /// Whether its result description is known (see [`Statement::observe_shape`]).
    pub fn has_shape(&self) -> bool {
        self.shape.get().is_some()
    }

    /// Takes `original`'s first descriptions as its own (a private copy of a
    /// shared statement is checked against what its client prepared).
    pub fn inherit_shape(&self, original: &Statement) {
        if let Some(shape) = original.shape.get() {
            let _ = self.shape.set(shape.clone());
        }
        if let Some(parameters) = original.parameters.get() {
            let _ = self.parameters.set(parameters.clone());
        }
    }

    /// Keeps the first ParameterDescription (the whole message) a server gave it.
    pub fn observe_parameters(&self, message: &[u8]) {
        self.parameters.get_or_init(|| Bytes::copy_from_slice(message));
    }

    /// The ParameterDescription message first given for it, if any.
    pub fn parameters(&self) -> Option<&Bytes> {
        self.parameters.get()
    }

    /// A server described it: the first description is kept, and whether
    /// this one matches it is returned (it does not after a schema change
    /// that changed its result type; a statement parsed before such a change
    /// then fails with 0A000 on PostgreSQL).
    pub fn observe_shape(&self, msg_tag: u8, body: &[u8]) -> bool {
        let first = self.shape.get_or_init(|| (msg_tag, Bytes::copy_from_slice(body)));
        first.0 == msg_tag && first.1[..] == *body
    }

    /// Takes this statement out of sharing: the next client to prepare its
    /// text gets a new statement under a new name. For a statement the
    /// server can no longer run as prepared (its result type changed, a type
    /// it used was dropped); clients holding it keep getting the server's
    /// error, as they would on a direct connection, until they prepare it again.
    pub fn retire(&self) {
        let Some(entries) = self.registry.upgrade() else { return };
        let mut entries = entries.lock().expect("statement registry lock");
        if entries.get(&self.key).is_some_and(|w| std::ptr::eq(w.as_ptr(), self)) {
            entries.remove(&self.key);
        }
    }
}

impl Drop for Statement {
    fn drop(&mut self) {
        // Only this statement's own entry: a retired one may have been replaced.
        self.retire();
    }
}

/// The statements clients refer to right now, for the whole process.
#[derive(Debug, Default)]
pub struct StatementRegistry {
    entries: Arc<Entries>,
}

impl StatementRegistry {
    /// The shared statement for `definition` in `context`, created (with a
    /// new random server name) when no client refers to one.
    pub fn intern(&self, context: StatementContext, definition: &[u8]) -> Arc<Statement> {
        let mut entries = self.entries.lock().expect("statement registry lock");
        let key = Key { context, definition: Bytes::copy_from_slice(definition) };
        if let Some(stmt) = entries.get(&key).and_then(Weak::upgrade) {
            // Returned, never dropped here: its Drop takes this lock.
            return stmt;
        }
        let stmt = Arc::new(Statement {
            server_name: random_name().into(),
            key: key.clone(),
            validated: AtomicBool::new(false),
            shape: OnceLock::new(),
            parameters: OnceLock::new(),
            tx_effect: OnceLock::new(),
            registry: Arc::downgrade(&self.entries),
        });
        entries.insert(key, Arc::downgrade(&stmt));
        stmt
    }

    /// A statement for `original`'s definition that a client prepared after
    /// a schema change changed its result description to `(msg_tag, shape)`:
    /// the one clients now get for the text when it has that description,
    /// else a new one (under a new name), listed in the original's place.
    pub fn fork(&self, original: &Statement, msg_tag: u8, shape: &[u8]) -> Arc<Statement> {
        // Declared before the lock, so dropped after it: its Drop takes the lock.
        let current;
        let mut entries = self.entries.lock().expect("statement registry lock");
        current = entries.get(&original.key).and_then(Weak::upgrade);
        if let Some(current) = &current {
            let first = current.shape.get_or_init(|| (msg_tag, Bytes::copy_from_slice(shape)));
            if first.0 == msg_tag && first.1[..] == *shape {
                return current.clone();
            }
        }
        let stmt = Arc::new(Statement {
            server_name: random_name().into(),
            key: original.key.clone(),
            validated: AtomicBool::new(true),
            shape: OnceLock::from((msg_tag, Bytes::copy_from_slice(shape))),
            parameters: OnceLock::new(),
            tx_effect: OnceLock::new(),
            registry: Arc::downgrade(&self.entries),
        });
        entries.insert(original.key.clone(), Arc::downgrade(&stmt));
        stmt
    }

    /// Statements some client refers to.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("statement registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `pgrelay_` and 64 random bits: unguessable, and unique in practice.
fn random_name() -> String {
    format!("pgrelay_{:016x}", rand::random::<u64>())
}
