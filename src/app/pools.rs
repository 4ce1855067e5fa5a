//! Which pool serves a (node, database, user) and what it is made of under
//! the configuration in force: created on first use, by a client's
//! transaction or by the janitor keeping `min_pool_size` on the primary.

use std::num::NonZeroUsize;
use std::sync::Arc;

use super::Context;
use crate::auth::UserEntry;
use crate::backend::ServerTarget;
use crate::cluster::NodeStatus;
use crate::config::{Config, Database, Role};
use crate::pool::{CapKind, CapLimits, Pool, PoolParts, PoolSettings, PoolTuning};

impl Context {
    /// The pool for (node, database, user), created on first use.
    pub fn pool_for(&self, node: &NodeStatus, database: &Database, user: &Arc<UserEntry>) -> Arc<Pool> {
        // A looked-up user whose password changed gets a new pool: the old one logs in with the old secret.
        let fits = |pool: &Pool| pool.target().credentials.server.same_secret(&user.server);
        self.pools.get_fitting((&node.name, &database.name, &user.name), fits, || {
            let config = self.config();
            // The database as configured now: a client that logged in before
            // a reload must not make the pool with the entry it logged in with.
            let database = config.databases.iter().find(|d| d.name == database.name).unwrap_or(database);
            if node.role == Some(Role::Primary) {
                self.pools.remember_primary_pair(&database.name, user);
            }
            let target = ServerTarget {
                node: node.name.clone(),
                host: node.host.clone(),
                port: node.port,
                database: database.server_dbname.clone(),
                credentials: user.clone(),
                auth_policy: config.server_auth_policy(&node.name),
                connect_timeout: config.pool.server_connect_timeout,
                tls: config.tls.server.clone(),
                max_prepared: config.pool.max_prepared_statements,
                tcp: self.server_tcp.clone(),
            };
            let settings = pool_settings(&config, database, &user.name);
            let metrics = self.metrics.pool(&node.name, &database.name, &user.name);
            let limits = CapLimits {
                database: cap_limit(&config, CapKind::Database, &database.name),
                user: cap_limit(&config, CapKind::User, &user.name),
            };
            PoolParts { target, settings, tuning: pool_tuning(&config), metrics, limits }
        })
    }

    /// With `min_pool_size`: a pool on the current primary for every
    /// (database, user) that has had one on a primary, so that the janitor
    /// opens its connections there, also right after the primary moved. A
    /// pair whose database or user left the configuration is forgotten.
    pub(crate) fn keep_primary_pools(&self) {
        let topology = self.cluster.load();
        let Some(primary) = topology.primary.and_then(|i| topology.nodes.get(i)) else { return };
        let config = self.config();
        let users = self.users();
        for (database, user) in self.pools.primary_pairs() {
            let Some(db) = config.databases.iter().find(|d| d.name == database) else {
                self.pools.forget_primary_pair(&database, &user.name);
                continue;
            };
            // A configured user logs in as configured now, a looked-up one
            // with the credentials it was looked up with.
            let user = match users.get(&user.name) {
                // The remembered entry may hold a ClientKey learnt from a
                // client's SCRAM proof; a configured one since a reload not yet.
                Some(configured) if !configured.server.same_secret(&user.server) => configured.clone(),
                Some(_) => user,
                None if users.lookup().is_some() => user,
                None => {
                    self.pools.forget_primary_pair(&database, &user.name);
                    continue;
                }
            };
            self.pool_for(primary, db, &user);
        }
    }
}

/// The cap on a node's connections of a database or user under `config`
/// (0: none): its own `max_db_connections` / `max_user_connections`, else
/// `[pool]`'s. A looked-up user has `[pool]`'s.
pub fn cap_limit(config: &Config, kind: CapKind, name: &str) -> usize {
    let own = match kind {
        CapKind::Database => config.databases.iter().find(|d| d.name == name).and_then(|d| d.max_db_connections),
        CapKind::User => config.users.iter().find(|u| u.name == name).and_then(|u| u.max_user_connections),
    };
    let default = match kind {
        CapKind::Database => config.pool.max_db_connections,
        CapKind::User => config.pool.max_user_connections,
    };
    own.map_or(default, NonZeroUsize::get)
}

/// What a reload changes in the pools it keeps, under `config`.
pub fn pool_tuning(config: &Config) -> PoolTuning {
    let pool = &config.pool;
    PoolTuning {
        lifetime: pool.server_lifetime,
        check_delay: pool.server_check_delay,
        min_size: pool.min_pool_size,
        reserve_timeout: pool.reserve_pool_timeout,
    }
}

/// The settings of a pool for `database` and `user` under `config`. As in
/// PgBouncer, the user's own `pool_size` and `pool_mode` win over the
/// database's, which win over `[pool]`'s (a looked-up user has none).
pub fn pool_settings(config: &Config, database: &Database, user: &str) -> PoolSettings {
    let pool = &config.pool;
    let own = config.users.iter().find(|u| u.name == user);
    let size = own.and_then(|u| u.pool_size).or(database.pool_size).unwrap_or(pool.default_pool_size);
    let mode = own.and_then(|u| u.pool_mode).or(database.pool_mode).unwrap_or(pool.mode);
    PoolSettings {
        size: size.get(),
        reserve_size: pool.reserve_pool_size,
        workers: pool.workers,
        mode,
        reset_timeout: pool.server_reset_timeout,
        idle_timeout: pool.server_idle_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolMode;

    #[test]
    fn a_users_pool_size_and_mode_win_over_its_databases() {
        let config = Config::parse(
            "[pool]\ndefault_pool_size = 20\nmode = \"transaction\"\n\n\
             [[nodes]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\n\n\
             [[users]]\nname = \"own\"\npassword = \"x\"\npool_size = 2\npool_mode = \"transaction\"\n\n\
             [[users]]\nname = \"plain\"\npassword = \"x\"\n\n\
             [[databases]]\nname = \"sized\"\npool_size = 5\npool_mode = \"session\"\n\n\
             [[databases]]\nname = \"default\"\n",
        )
        .expect("valid config");
        let cases = [
            ("sized", "own", 2, PoolMode::Transaction),
            ("sized", "plain", 5, PoolMode::Session),
            ("sized", "looked_up", 5, PoolMode::Session),
            ("default", "own", 2, PoolMode::Transaction),
            ("default", "plain", 20, PoolMode::Transaction),
        ];
        for (database, user, size, mode) in cases {
            let db = config.databases.iter().find(|d| d.name == database).expect("configured");
            let settings = pool_settings(&config, db, user);
            assert_eq!((settings.size, settings.mode), (size, mode), "{database} {user}");
        }
    }
}
