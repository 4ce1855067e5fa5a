//! The shared statements prepared on one server connection: a bounded set
//! with least-recently-used eviction, so a connection never holds more than
//! `max_prepared_statements` of them (the caller closes what is evicted).

use std::collections::HashMap;
use std::sync::Arc;

/// Whether a statement exists on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Absent,
    /// Its Parse is on the way, sent in batch `batch` (see
    /// [`ServerStatements::insert`]): it exists unless that Parse fails.
    Pending {
        batch: u64,
    },
    /// The server answered its Parse.
    Confirmed,
    /// It exists, but must be closed and prepared again before use.
    Doubtful,
}

#[derive(Debug)]
struct Entry {
    last_used: u64,
    confirmed: bool,
    /// It exists here but is not the statement its clients prepared: it is
    /// closed and prepared again before use.
    doubtful: bool,
    /// The batch its Parse was sent in.
    batch: u64,
}

#[derive(Debug)]
pub struct ServerStatements {
    /// Server-side name -> its last use and state. foldhash (randomly
    /// seeded): looked up on every Bind.
    names: HashMap<Arc<str>, Entry, foldhash::fast::RandomState>,
    tick: u64,
    capacity: usize,
    /// Something the client ran may have deallocated statements pgrelay does
    /// not know of: a statement not in `names` may still exist, so it is
    /// closed before it is prepared again. Ends when the connection is reset.
    uncertain: bool,
}

impl ServerStatements {
    pub fn new(capacity: usize) -> ServerStatements {
        ServerStatements { names: HashMap::default(), tick: 0, capacity: capacity.max(1), uncertain: false }
    }

    /// Whether `name` is prepared here; counts as a use.
    pub fn touch(&mut self, name: &str) -> Presence {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(entry) if entry.doubtful => Presence::Doubtful,
            Some(entry) => {
                entry.last_used = self.tick;
                if entry.confirmed {
                    Presence::Confirmed
                } else {
                    Presence::Pending { batch: entry.batch }
                }
            }
            None => Presence::Absent,
        }
    }

    /// Whether `name` is prepared here, without counting a use.
    pub fn presence(&self, name: &str) -> Presence {
        match self.names.get(name) {
            Some(entry) if entry.doubtful => Presence::Doubtful,
            Some(entry) if entry.confirmed => Presence::Confirmed,
            Some(entry) => Presence::Pending { batch: entry.batch },
            None => Presence::Absent,
        }
    }

    /// `name` exists here but must be closed and prepared again before use.
    pub fn mark_doubtful(&mut self, name: &str) {
        if let Some(entry) = self.names.get_mut(name) {
            entry.doubtful = true;
        }
    }

    /// The server answered the Parse of `name`.
    pub fn confirm(&mut self, name: &str) {
        if let Some(entry) = self.names.get_mut(name) {
            entry.confirmed = true;
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Records `name` as prepared by a Parse sent in `batch` (a count of the
    /// Syncs sent before it); returns the least recently used name it
    /// displaced, which the caller must close on the server.
    pub fn insert(&mut self, name: Arc<str>, batch: u64) -> Option<Arc<str>> {
        self.tick += 1;
        let evicted = if self.names.len() >= self.capacity && !self.names.contains_key(&name) {
            let oldest = self.names.iter().min_by_key(|(_, entry)| entry.last_used).map(|(n, _)| n.clone());
            oldest.inspect(|n| {
                self.names.remove(n);
            })
        } else {
            None
        };
        self.names.insert(name, Entry { last_used: self.tick, confirmed: false, doubtful: false, batch });
        evicted
    }

    /// Records `name` as prepared again (its Close was not run), even
    /// beyond capacity: it does exist on the server.
    pub fn restore(&mut self, name: Arc<str>) {
        self.tick += 1;
        self.names.insert(name, Entry { last_used: self.tick, confirmed: true, doubtful: false, batch: 0 });
    }

    pub fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    /// The client may have deallocated statements: forget them all, and
    /// close any name before preparing it again.
    pub fn make_uncertain(&mut self) {
        self.names.clear();
        self.uncertain = true;
    }

    pub fn is_uncertain(&self) -> bool {
        self.uncertain
    }

    /// DISCARD ALL ran: nothing is prepared, and that is certain.
    pub fn reset(&mut self) {
        self.names.clear();
        self.uncertain = false;
    }
}
