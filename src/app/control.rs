//! What an operator does to a running pgrelay: pause and resume, reload the
//! configuration, and (re)start the topology monitors that a reload may
//! have to replace.

use std::sync::Arc;
use std::time::Duration;

use super::pools::{cap_limit, pool_settings, pool_tuning};
use super::{ClientState, Context};
use crate::auth::UserDb;
use crate::cluster::{self, monitor::Generation, Topology};
use crate::config::{Config, Source};
use crate::pool::Pool;

/// How often PAUSE looks whether the transactions in flight have ended: at
/// first often (a switchover waits on it), then less (a pinned client may
/// hold its transaction for long).
const PAUSE_POLL: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(100));

/// What a successful reload changed, for the log and the RELOAD command.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Pools retired because their node, user, database or settings changed.
    pub pools_retired: usize,
    /// Whether the topology monitors were restarted (nodes, cluster or routing changed).
    pub monitors_restarted: bool,
    /// Settings that only take effect on a restart, and were kept.
    pub needs_restart: Vec<&'static str>,
}

impl Context {
    /// Holds every client's next transaction and returns once no client is
    /// in a transaction any more; idle server connections are closed.
    pub async fn pause(&self) {
        if self.lifecycle.set_paused() {
            tracing::info!("PAUSE: holding new transactions");
        }
        self.metrics.paused.set(1);
        let mut poll = PAUSE_POLL.0;
        while self.lifecycle.is_paused() && self.clients.any_in(ClientState::Active) {
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(PAUSE_POLL.1);
        }
        for pool in self.pools.all() {
            pool.drop_idle();
        }
    }

    /// Releases the transactions PAUSE held.
    pub fn resume(&self) {
        if self.lifecycle.set_resumed() {
            tracing::info!("RESUME: releasing held transactions");
        }
        self.metrics.paused.set(0);
    }

    /// Reads the configuration file again and applies it (see [`Context::apply_config`]).
    /// A file that does not load or validate changes nothing.
    pub fn reload(self: &Arc<Self>) -> Result<ReloadSummary, String> {
        let result = self
            .config_path
            .as_deref()
            .ok_or_else(|| "pgrelay was not started from a configuration file".to_owned())
            .and_then(|path| Config::load(path).map_err(|e| e.to_string()))
            .and_then(|config| self.apply_config(config));
        match &result {
            Ok(summary) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(?summary, "configuration reloaded");
            }
            Err(error) => {
                self.metrics.config_reloads.with_label_values(&["error"]).inc();
                tracing::error!(%error, "configuration reload failed; keeping the running configuration");
            }
        }
        result
    }

    /// Switches to `new` without dropping clients: users, databases, pool
    /// settings, nodes and routing limits take effect for the next
    /// transaction; pools that did not change keep their server connections.
    /// Listen addresses only change on a restart.
    pub fn apply_config(self: &Arc<Self>, mut new: Config) -> Result<ReloadSummary, String> {
        // A new lookup, so RELOAD also forgets every cached database user.
        let lookup = super::user_lookup(&new, &self.metrics, &self.tasks, &self.shutdown);
        let users = UserDb::from_config(&new)?.with_lookup(lookup);
        let old = self.config.load_full();
        let mut summary = ReloadSummary::default();
        if new.listen != old.listen {
            summary.needs_restart.push("listen");
            new.listen = old.listen.clone();
        }
        if new.pool.workers != old.pool.workers {
            summary.needs_restart.push("pool.workers");
            new.pool.workers = old.pool.workers;
        }
        let new = Arc::new(new);
        self.users.store(Arc::new(users));
        self.store_config(new.clone());
        self.server_tcp.store(Arc::new(new.pool.tcp));
        self.resize_client_slots(old.pool.max_client_conn, new.pool.max_client_conn);
        summary.pools_retired = self.pools.retire_unless(|pool| pool_unchanged(pool, &old, &new));
        for pool in self.pools.all() {
            pool.retune(pool_tuning(&new));
        }
        self.pools.set_cap_limits(|kind, name| cap_limit(&new, kind, name));
        if new.nodes != old.nodes
            || new.cluster != old.cluster
            || new.routing != old.routing
            || new.tls.server != old.tls.server
        {
            summary.monitors_restarted = true;
            self.restart_monitors(&new);
        }
        Ok(summary)
    }

    fn resize_client_slots(&self, old: usize, new: usize) {
        if new > old {
            self.client_slots.add_permits(new - old);
        } else if new < old {
            // Only free slots can go at once; connected clients keep theirs.
            let gone = self.client_slots.forget_permits(old - new);
            if gone < old - new {
                tracing::warn!(max_client_conn = new, "more clients are connected than the new max_client_conn allows");
            }
        }
    }

    /// With `source = "postgres"` or `"patroni"`: starts the monitors, whose
    /// fencing hook closes a former primary's pools. The receiver fires
    /// once every node has been checked.
    pub(crate) fn start_monitors(self: &Arc<Self>, generation: Generation) -> tokio::sync::oneshot::Receiver<()> {
        let config = self.config();
        let weak = Arc::downgrade(self);
        let fence = Box::new(move |node: &str| {
            if let Some(ctx) = weak.upgrade() {
                ctx.pools.close_node(node);
            }
        });
        let stop = self.monitors.lock().expect("monitors lock").clone();
        cluster::monitor::start(&config, self.cluster.clone(), &self.tasks, stop, fence, generation)
    }

    /// Replaces the monitors after a reload changed nodes, cluster or routing
    /// settings. The view keeps what is known about unchanged nodes until the
    /// new monitors have checked every node, so clients never see a gap.
    fn restart_monitors(self: &Arc<Self>, new: &Config) {
        let fresh = self.shutdown.child_token();
        std::mem::replace(&mut *self.monitors.lock().expect("monitors lock"), fresh).cancel();
        if new.cluster.source == Source::Static {
            self.cluster.store(Topology::from_static(new));
            return;
        }
        let rebased = self.cluster.load().rebased(&new.nodes);
        let primary = rebased.primary;
        self.cluster.store(rebased);
        drop(self.start_monitors(Generation::Reloaded { primary }));
    }
}

/// Whether a pool built under `old` is still what `new` would build.
fn pool_unchanged(pool: &Pool, old: &Config, new: &Config) -> bool {
    let key = &pool.key;
    fn node<'c>(c: &'c Config, name: &str) -> Option<(&'c str, u16, crate::config::ServerAuthPolicy)> {
        c.nodes.iter().find(|n| n.name == name).map(|n| (n.host.as_str(), n.port, c.server_auth_policy(name)))
    }
    /// The user's entry, and the cluster password when it logs in with that.
    fn user<'c>(c: &'c Config, name: &str) -> Option<(crate::config::User, Option<&'c str>)> {
        let user = c.users.iter().find(|u| u.name == name)?;
        let cluster_password = user.server_password_from_cluster.then_some(c.cluster.password.as_str());
        Some((crate::config::User { max_user_connections: None, ..user.clone() }, cluster_password))
    }
    /// The entry, less what a reload changes in running pools (the caps).
    fn database(c: &Config, name: &str) -> Option<crate::config::Database> {
        let database = c.databases.iter().find(|d| d.name == name)?;
        Some(crate::config::Database { max_db_connections: None, ..database.clone() })
    }
    let new_database = database(new, &key.database);
    same(node(old, &key.node), node(new, &key.node))
        && same(user(old, &key.user), user(new, &key.user))
        && same(database(old, &key.database), new_database.clone())
        && new_database.as_ref().is_some_and(|db| pool.settings() == &pool_settings(new, db, &key.user))
        && old.pool.server_connect_timeout == new.pool.server_connect_timeout
        && old.tls.server == new.tls.server
        && old.pool.max_prepared_statements == new.pool.max_prepared_statements
}

/// Present in both, and equal.
fn same<T: PartialEq>(a: Option<T>, b: Option<T>) -> bool {
    a.is_some() && a == b
}
