//! Every pool of the process, by (node, database, user), created on first
//! use; the caps their connections count under; and the (database, user)
//! pairs that `min_pool_size` follows to whichever node is the primary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::caps::{Cap, CapKind};
use super::{Pool, PoolKey, PoolParts};
use crate::backend::ServerParams;

/// A cap's (node, what, database or user name).
type CapKey = (String, CapKind, String);

/// The user a pool logs in as, as its credentials came.
pub type PoolUser = Arc<crate::auth::UserEntry>;

/// All pools, created on first use.
#[derive(Debug, Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>, foldhash::fast::RandomState>>,
    /// The (database, user) pairs that have had a pool on the primary,
    /// with the user's credentials: `min_pool_size` gives them a pool on
    /// whichever node is the primary, also after it moved.
    primary_pairs: Mutex<HashMap<(String, String), PoolUser, foldhash::fast::RandomState>>,
    /// The caps by (node, what, database or user name). Locked after `pools`, never before.
    caps: Mutex<HashMap<CapKey, Arc<Cap>, foldhash::fast::RandomState>>,
}

impl Pools {
    /// Notes that `database` and `user` had a pool on the primary.
    pub fn remember_primary_pair(&self, database: &str, user: &PoolUser) {
        let mut pairs = self.primary_pairs.lock().expect("pools lock");
        pairs.insert((database.to_owned(), user.name.clone()), user.clone());
    }

    /// Every (database, user) that has had a pool on the primary.
    pub fn primary_pairs(&self) -> Vec<(String, PoolUser)> {
        let pairs = self.primary_pairs.lock().expect("pools lock");
        pairs.iter().map(|((database, _), user)| (database.clone(), user.clone())).collect()
    }

    /// Forgets a pair whose database or user is gone from the configuration.
    pub fn forget_primary_pair(&self, database: &str, user: &str) {
        self.primary_pairs.lock().expect("pools lock").remove(&(database.to_owned(), user.to_owned()));
    }

    pub fn get_or_create(&self, key: (&str, &str, &str), make: impl FnOnce() -> PoolParts) -> Arc<Pool> {
        self.get_fitting(key, |_| true, make)
    }

    /// [`Pools::get_or_create`], retiring the pool there is when `fits` says
    /// it no longer serves (its credentials changed) and creating another.
    pub fn get_fitting(
        &self,
        key: (&str, &str, &str),
        fits: impl FnOnce(&Pool) -> bool,
        make: impl FnOnce() -> PoolParts,
    ) -> Arc<Pool> {
        let (node, database, user) = key;
        let key = PoolKey { node: node.to_owned(), database: database.to_owned(), user: user.to_owned() };
        let mut pools = self.pools.lock().expect("pools lock");
        if let Some(pool) = pools.get(&key) {
            if fits(pool) {
                return pool.clone();
            }
            pool.retire();
        }
        let parts = make();
        let caps = [
            self.cap(node, CapKind::Database, database, parts.limits.database),
            self.cap(node, CapKind::User, user, parts.limits.user),
        ];
        let pool = Pool::new(key.clone(), parts, caps);
        pool.caps.iter().for_each(|cap| cap.join(&pool));
        pools.insert(key, pool.clone());
        pool
    }

    /// The cap on `node`'s connections of a database or user, with `limit` in force.
    fn cap(&self, node: &str, kind: CapKind, name: &str, limit: usize) -> Arc<Cap> {
        let mut caps = self.caps.lock().expect("caps lock");
        let key = (node.to_owned(), kind, name.to_owned());
        let cap = caps.entry(key).or_insert_with(|| Arc::new(Cap::new(kind, limit)));
        cap.set_limit(limit);
        cap.clone()
    }

    /// Applies a reload's caps (`limit` of each database's and user's) to
    /// the pools there are; forgets the caps no connection counts under.
    pub fn set_cap_limits(&self, limit: impl Fn(CapKind, &str) -> usize) {
        let mut caps = self.caps.lock().expect("caps lock");
        caps.retain(|_, cap| cap.open() > 0 || Arc::strong_count(cap) > 1);
        for ((_, kind, name), cap) in caps.iter() {
            cap.set_limit(limit(*kind, name));
        }
    }

    /// The connections open on `node` under the cap of a database or user
    /// and its limit (0: none), if any pool counts under it.
    pub fn cap_state(&self, node: &str, kind: CapKind, name: &str) -> Option<(usize, usize)> {
        let caps = self.caps.lock().expect("caps lock");
        caps.get(&(node.to_owned(), kind, name.to_owned())).map(|cap| (cap.open(), cap.limit()))
    }

    /// Closes and forgets every pool of `node` (its server connections must
    /// not be used any more); the next use creates fresh pools.
    pub fn close_node(&self, node: &str) {
        let mut pools = self.pools.lock().expect("pools lock");
        pools.retain(|key, pool| {
            if key.node == node {
                pool.close();
            }
            key.node != node
        });
    }

    /// Retires and forgets every pool for which `keep` says no.
    pub fn retire_unless(&self, mut keep: impl FnMut(&Pool) -> bool) -> usize {
        let mut pools = self.pools.lock().expect("pools lock");
        let before = pools.len();
        pools.retain(|_, pool| {
            let kept = keep(pool);
            if !kept {
                pool.retire();
            }
            kept
        });
        before - pools.len()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.lock().expect("pools lock").values().cloned().collect()
    }

    /// What any server of this (database, user) reported at startup: the
    /// nodes of one cluster report the same values.
    pub fn server_params_for(&self, database: &str, user: &str) -> Option<ServerParams> {
        let pools = self.pools.lock().expect("pools lock");
        pools.iter().filter(|(k, _)| k.database == database && k.user == user).find_map(|(_, p)| p.server_params())
    }
}
