//! Users from the database (`[auth]`): a user that `[[users]]` does not list
//! is looked up with `auth_query` on the primary, as `auth_user`. Results,
//! found or not, are cached for `auth_cache_ttl`; one lookup per name is in
//! flight at a time, at most `auth_query_concurrency` run at once and at
//! most `auth_query_rate` start per second, so a flood of unknown names
//! costs the primary a bounded number of queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::UserEntry;
use crate::config::{connect_tokio_postgres, AuthQuery, AuthType, ServerTls};

/// The node a lookup runs on (the primary, as the caller found it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupTarget {
    pub node: String,
    pub host: String,
    pub port: u16,
}

/// Why a user could not be looked up; the session decides what the client
/// is told (a connection failure, or a refused authorization).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(
        "too many user lookups waiting (auth_query_rate = {rate}/s, auth_query_concurrency = {concurrency}); \
         try again"
    )]
    Throttled { rate: u32, concurrency: usize },
    #[error("could not connect to {node} to look the user up: {source}")]
    Connect { node: String, source: tokio_postgres::Error },
    #[error("{node} refused auth_user \"{auth_user}\": {source}")]
    Refused { node: String, auth_user: String, source: tokio_postgres::Error },
    #[error("auth_query failed on {node}: {source}")]
    Query { node: String, source: tokio_postgres::Error },
    #[error("the user lookup on {node} did not finish before the login deadline")]
    TimedOut { node: String },
}

impl LookupError {
    /// The server answered (a wrong auth_user, a failing auth_query), as
    /// opposed to a connection that failed or took too long.
    pub fn server_refused(&self) -> bool {
        matches!(self, LookupError::Refused { .. } | LookupError::Query { .. })
    }

    pub fn is_throttled(&self) -> bool {
        matches!(self, LookupError::Throttled { .. })
    }
}

/// Counters of lookups by result (`pgrelay_auth_query_total{result}`).
#[derive(Debug, Clone)]
pub struct LookupCounters {
    pub found: IntCounter,
    pub not_found: IntCounter,
    pub error: IntCounter,
    pub throttled: IntCounter,
}

/// One lookup result: the user, or `None` when the query found no row or
/// a password that cannot serve (NULL, or an md5 hash under SCRAM).
#[derive(Debug)]
struct Fetched {
    at: Instant,
    user: Option<Arc<UserEntry>>,
    /// What the query returned, so an unchanged password keeps its entry
    /// (and the ClientKey learnt for it) across refreshes.
    passwd: Option<String>,
}

/// A cached name: filled once by the first login that needs it; the others
/// wait for that one lookup.
#[derive(Debug, Default)]
struct Slot {
    fetched: OnceCell<Fetched>,
}

impl Slot {
    fn fresh(&self, now: Instant, ttl: Duration) -> bool {
        self.fetched.get().is_none_or(|f| now < f.at + ttl)
    }
}

/// One connection to a node as `auth_user`, with `auth_query` prepared.
#[derive(Debug)]
struct LookupConn {
    target: LookupTarget,
    client: Client,
    statement: Statement,
}

/// Looks users up and caches them; replaced (with an empty cache) on reload.
#[derive(Debug)]
pub struct UserLookup {
    settings: AuthQuery,
    /// TLS to the servers, as pooled connections use it.
    tls: ServerTls,
    connect_timeout: Duration,
    cache: Mutex<HashMap<String, Arc<Slot>, foldhash::fast::RandomState>>,
    running: Semaphore,
    rate: Mutex<RateLimit>,
    /// Connections not in use, at most `auth_query_concurrency`.
    idle: Mutex<Vec<LookupConn>>,
    counters: LookupCounters,
    /// Owns the connections' tasks, which end with the shutdown.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl UserLookup {
    pub fn new(
        settings: AuthQuery,
        tls: ServerTls,
        connect_timeout: Duration,
        counters: LookupCounters,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> UserLookup {
        UserLookup {
            tls,
            connect_timeout,
            cache: Mutex::default(),
            running: Semaphore::new(settings.concurrency.get()),
            rate: Mutex::new(RateLimit::new(settings.rate.get())),
            idle: Mutex::default(),
            counters,
            tasks,
            shutdown,
            settings,
        }
    }

    pub fn auth_type(&self) -> AuthType {
        self.settings.auth_type
    }

    /// The cached answer for `name`, if there is a fresh one: `Some(None)`
    /// means "looked up and not found".
    pub fn cached(&self, name: &str) -> Option<Option<Arc<UserEntry>>> {
        let cache = self.cache.lock().expect("auth cache lock");
        let slot = cache.get(name)?;
        let fetched = slot.fetched.get()?;
        slot.fresh(Instant::now(), self.settings.cache_ttl).then(|| fetched.user.clone())
    }

    /// The user called `name` on `target`, from the cache when fresh;
    /// `None` when there is no such user (or no usable password). Gives up
    /// at `deadline`.
    pub async fn find(
        &self,
        name: &str,
        target: &LookupTarget,
        deadline: Instant,
    ) -> Result<Option<Arc<UserEntry>>, LookupError> {
        let (slot, previous) = self.slot(name, Instant::now());
        let fetched = slot.fetched.get_or_try_init(|| self.fetch(name, target, previous, deadline)).await?;
        Ok(fetched.user.clone())
    }

    /// The slot for `name`: the cached one while fresh, else a new one (the
    /// stale one's result is returned to be compared with the new lookup).
    fn slot(&self, name: &str, now: Instant) -> (Arc<Slot>, Option<Arc<Slot>>) {
        let mut cache = self.cache.lock().expect("auth cache lock");
        let ttl = self.settings.cache_ttl;
        if let Some(slot) = cache.get(name).filter(|slot| slot.fresh(now, ttl)) {
            return (slot.clone(), None);
        }
        let slot = Arc::new(Slot::default());
        let previous = cache.remove(name);
        if cache.len() >= self.settings.cache_size.get() {
            make_room(&mut cache, now, ttl, self.settings.cache_size.get());
        }
        // Still full (every entry a fresh user found): this name goes uncached.
        if cache.len() < self.settings.cache_size.get() {
            cache.insert(name.to_owned(), slot.clone());
        }
        (slot, previous)
    }

    async fn fetch(
        &self,
        name: &str,
        target: &LookupTarget,
        previous: Option<Arc<Slot>>,
        deadline: Instant,
    ) -> Result<Fetched, LookupError> {
        let throttled = || {
            self.counters.throttled.inc();
            LookupError::Throttled { rate: self.settings.rate.get(), concurrency: self.settings.concurrency.get() }
        };
        // A lookup must start within half the time left, so that it and the
        // authentication after it can finish before the login times out.
        let now = Instant::now();
        let start_by = now + deadline.saturating_duration_since(now) / 2;
        let start_at = self.rate.lock().expect("auth rate lock").reserve(now, start_by).ok_or_else(throttled)?;
        tokio::time::sleep_until(start_at).await;
        let _running = tokio::time::timeout_at(start_by, self.running.acquire())
            .await
            .map_err(|_| throttled())?
            .expect("the semaphore is never closed");
        let passwd = tokio::time::timeout_at(deadline, self.query(name, target))
            .await
            .map_err(|_| LookupError::TimedOut { node: target.node.clone() })
            .and_then(|result| result);
        let passwd = match passwd {
            Ok(passwd) => passwd,
            Err(error) => {
                self.counters.error.inc();
                return Err(error);
            }
        };
        let kept = previous.as_ref().and_then(|slot| slot.fetched.get()).filter(|old| old.passwd == passwd);
        let user = match kept {
            Some(old) => old.user.clone(),
            None => {
                passwd.as_deref().and_then(|p| super::looked_up_user(name, p, self.settings.auth_type)).map(Arc::new)
            }
        };
        match &user {
            Some(_) => self.counters.found.inc(),
            None => self.counters.not_found.inc(),
        }
        Ok(Fetched { at: Instant::now(), user, passwd })
    }

    /// Runs `auth_query` for `name` on an idle connection to `target`, or a
    /// new one. A connection that failed is dropped, never reused.
    async fn query(&self, name: &str, target: &LookupTarget) -> Result<Option<String>, LookupError> {
        let conn = self.take_idle(target);
        let conn = match conn {
            Some(conn) => conn,
            None => self.connect(target).await?,
        };
        let row = conn
            .client
            .query_opt(&conn.statement, &[&name])
            .await
            .map_err(|source| LookupError::Query { node: target.node.clone(), source })?;
        let passwd = match row {
            Some(row) => row
                .try_get::<_, Option<String>>(1)
                .map_err(|source| LookupError::Query { node: target.node.clone(), source })?,
            None => None,
        };
        let mut idle = self.idle.lock().expect("auth idle lock");
        if idle.len() < self.settings.concurrency.get() {
            idle.push(conn);
        }
        Ok(passwd)
    }

    fn take_idle(&self, target: &LookupTarget) -> Option<LookupConn> {
        let mut idle = self.idle.lock().expect("auth idle lock");
        // Connections to a node that is no longer the target go.
        idle.retain(|conn| conn.target == *target && !conn.client.is_closed());
        idle.pop()
    }

    async fn connect(&self, target: &LookupTarget) -> Result<LookupConn, LookupError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&target.host)
            .port(target.port)
            .user(&self.settings.user)
            .dbname(&self.settings.dbname)
            .application_name("pgrelay-auth-query")
            .connect_timeout(self.connect_timeout);
        if !self.settings.password.is_empty() {
            config.password(&self.settings.password);
        }
        let refused = |source: tokio_postgres::Error| match source.as_db_error() {
            Some(_) => {
                LookupError::Refused { node: target.node.clone(), auth_user: self.settings.user.clone(), source }
            }
            None => LookupError::Connect { node: target.node.clone(), source },
        };
        let span = tracing::debug_span!("auth-query-connection", node = %target.node);
        let tls = self.tls.tokio_postgres(&mut config);
        let (client, connection) = connect_tokio_postgres(&config, tls.as_ref()).await.map_err(refused)?;
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(tracing::Instrument::instrument(
            async move {
                tokio::select! {
                    _ = connection => {}
                    _ = shutdown.cancelled() => {}
                }
            },
            span,
        ));
        let statement = client
            .prepare(&self.settings.query)
            .await
            .map_err(|source| LookupError::Query { node: target.node.clone(), source })?;
        Ok(LookupConn { target: target.clone(), client, statement })
    }
}

/// Frees cache entries: expired ones first, then names that were not found
/// (a flood of unknown names must not push out the users that exist).
fn make_room(
    cache: &mut HashMap<String, Arc<Slot>, foldhash::fast::RandomState>,
    now: Instant,
    ttl: Duration,
    size: usize,
) {
    cache.retain(|_, slot| slot.fresh(now, ttl));
    if cache.len() >= size {
        cache.retain(|_, slot| slot.fetched.get().is_none_or(|f| f.user.is_some()));
    }
}

/// At most `rate` starts per second after a burst of `rate` (GCRA): each
/// start reserves its time, so waiting lookups go in order of arrival.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    burst: u32,
    /// When the next start would be due if no burst were allowed.
    theoretical: Option<Instant>,
}

impl RateLimit {
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit { interval: Duration::from_secs(1) / per_second.max(1), burst: per_second.max(1), theoretical: None }
    }

    /// When a start asked for at `now` may go; `None` (and nothing
    /// reserved) when that would be after `deadline`.
    pub fn reserve(&mut self, now: Instant, deadline: Instant) -> Option<Instant> {
        let due = self.theoretical.map_or(now, |t| t.max(now));
        let allowed = due.checked_sub(self.interval * (self.burst - 1)).map_or(now, |at| at.max(now));
        if allowed > deadline {
            return None;
        }
        self.theoretical = Some(due + self.interval);
        Some(allowed)
    }
}

#[cfg(test)]
#[path = "lookup_tests.rs"]
mod tests;
