//! The settings a reload changes in a running pool without retiring it
//! (`server_lifetime`, ...): read on the forwarding path or by the janitor,
//! so they are kept in atomics, one relaxed load each.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// What a reload may change in a pool while its connections stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTuning {
    /// `server_lifetime`: a connection older than this is closed when its
    /// lease ends instead of going back idle; `None`: no limit.
    pub lifetime: Option<Duration>,
    /// `server_check_delay`: an idle connection unused for this long is
    /// checked (a round trip) before it is leased; zero: always.
    pub check_delay: Duration,
    /// `min_pool_size`: connections kept open (idle or leased) in the
    /// background, at most the pool's size.
    pub min_size: usize,
    /// `reserve_pool_timeout`: a client that waited this long may use a
    /// slot of the reserve; `None`: the reserve is not used.
    pub reserve_timeout: Option<Duration>,
}

impl Default for PoolTuning {
    fn default() -> PoolTuning {
        PoolTuning {
            lifetime: Some(Duration::from_secs(3600)),
            check_delay: Duration::from_secs(30),
            min_size: 0,
            reserve_timeout: Some(Duration::from_secs(5)),
        }
    }
}

/// Stands for `None` in an optional duration's atomic.
const NONE: u64 = u64::MAX;

fn to_nanos(duration: Option<Duration>) -> u64 {
    duration.map_or(NONE, |d| u64::try_from(d.as_nanos()).unwrap_or(NONE - 1))
}

fn from_nanos(nanos: u64) -> Option<Duration> {
    (nanos != NONE).then(|| Duration::from_nanos(nanos))
}

/// A pool's [`PoolTuning`], replaced as a whole by a reload.
#[derive(Debug)]
pub(super) struct Tunables {
    lifetime: AtomicU64,
    check_delay: AtomicU64,
    min_size: AtomicUsize,
    reserve_timeout: AtomicU64,
}

impl Tunables {
    pub(super) fn new(tuning: PoolTuning) -> Tunables {
        let tunables = Tunables {
            lifetime: AtomicU64::new(NONE),
            check_delay: AtomicU64::new(0),
            min_size: AtomicUsize::new(0),
            reserve_timeout: AtomicU64::new(NONE),
        };
        tunables.store(tuning);
        tunables
    }

    pub(super) fn store(&self, tuning: PoolTuning) {
        self.lifetime.store(to_nanos(tuning.lifetime), Ordering::Relaxed);
        self.check_delay.store(to_nanos(Some(tuning.check_delay)), Ordering::Relaxed);
        self.min_size.store(tuning.min_size, Ordering::Relaxed);
        self.reserve_timeout.store(to_nanos(tuning.reserve_timeout), Ordering::Relaxed);
    }

    pub(super) fn load(&self) -> PoolTuning {
        PoolTuning {
            lifetime: self.lifetime(),
            check_delay: self.check_delay(),
            min_size: self.min_size(),
            reserve_timeout: self.reserve_timeout(),
        }
    }

    #[inline]
    pub(super) fn lifetime(&self) -> Option<Duration> {
        from_nanos(self.lifetime.load(Ordering::Relaxed))
    }

    pub(super) fn check_delay(&self) -> Duration {
        Duration::from_nanos(self.check_delay.load(Ordering::Relaxed))
    }

    /// `server_check_delay = 0`: every lease checks its connection first.
    #[inline]
    pub(super) fn check_always(&self) -> bool {
        self.check_delay.load(Ordering::Relaxed) == 0
    }

    #[inline]
    pub(super) fn min_size(&self) -> usize {
        self.min_size.load(Ordering::Relaxed)
    }

    pub(super) fn reserve_timeout(&self) -> Option<Duration> {
        from_nanos(self.reserve_timeout.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_replaces_every_value() {
        let tunables = Tunables::new(PoolTuning::default());
        assert_eq!(tunables.load(), PoolTuning::default());
        let off = PoolTuning { lifetime: None, check_delay: Duration::ZERO, min_size: 0, reserve_timeout: None };
        tunables.store(off);
        assert_eq!(tunables.load(), off);
        let short = PoolTuning {
            lifetime: Some(Duration::from_millis(1500)),
            check_delay: Duration::from_secs(2),
            min_size: 3,
            reserve_timeout: Some(Duration::from_millis(250)),
        };
        tunables.store(short);
        assert_eq!(tunables.load(), short);
    }
}
