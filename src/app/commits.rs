//! What read-your-writes shares across clients and workers: which WAL
//! position of the primary is known to cover a commit, and the last commit
//! of each causal id (`pgrelay.causal_id`).
//!
//! A commit is covered by any position the primary reports *after* the
//! commit completed, so nothing is asked per commit: a commit notes the
//! current [`Commits::epoch`], and a position sampled by a query that began
//! at a later epoch covers it. Positions are sampled only when a read needs
//! one (a causal read, `SHOW pgrelay.commit_lsn`), one query at a time,
//! and every client waiting meanwhile takes the same answer if it began late enough.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A primary position and the epoch its query began at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub epoch: u64,
    pub lsn: u64,
}

#[derive(Debug, Default)]
pub struct Commits {
    /// Advances each time a sampling query begins.
    epoch: AtomicU64,
    /// The latest sample taken.
    last: Mutex<Option<Sample>>,
    /// Held while a sampling query runs: the others wait for its answer.
    sampling: tokio::sync::Mutex<()>,
    causal: Mutex<CausalIds>,
}

impl Commits {
    /// The epoch now: a commit seen complete notes it; a sample of a later
    /// epoch covers the commit.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The latest sample, if it began after `epoch`.
    pub fn sample_after(&self, epoch: u64) -> Option<Sample> {
        let last = *self.last.lock().expect("commits lock");
        last.filter(|s| s.epoch > epoch)
    }

    /// A position that covers every commit noted at or before `epoch`:
    /// the latest sample when it began later, or one `ask` takes now (one
    /// at a time; who waited for another's query takes its answer when it
    /// began late enough). Waits until `deadline` for its turn.
    pub async fn position_after<E, F>(
        &self,
        epoch: u64,
        deadline: tokio::time::Instant,
        ask: impl FnOnce() -> F,
    ) -> Result<Option<Sample>, E>
    where
        F: std::future::Future<Output = Result<u64, E>>,
    {
        if let Some(sample) = self.sample_after(epoch) {
            return Ok(Some(sample));
        }
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.sampling.lock()).await else { return Ok(None) };
        if let Some(sample) = self.sample_after(epoch) {
            return Ok(Some(sample));
        }
        // Taken before the query is sent: a commit that noted an epoch
        // below this one had completed before the query began.
        let began = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let sample = Sample { epoch: began, lsn: ask().await? };
        let mut last = self.last.lock().expect("commits lock");
        if last.is_none_or(|s| s.epoch < began) {
            *last = Some(sample);
        }
        Ok(Some(sample))
    }

    /// Notes that a client of `id` saw a transaction complete on the primary.
    pub fn note_commit(&self, id: &Arc<str>, now: Instant, limits: CausalLimits) {
        let epoch = self.epoch();
        self.causal.lock().expect("causal lock").note(id, epoch, now, limits);
    }

    /// What a read of `id` must see: the epoch of its last commit, or the
    /// position already known to cover it.
    pub fn causal_floor(&self, id: &Arc<str>, now: Instant, limits: CausalLimits) -> CausalFloor {
        self.causal.lock().expect("causal lock").floor(id, now, limits)
    }

    /// Records that `sample` covers `id`'s commits noted before it began.
    pub fn causal_covered(&self, id: &Arc<str>, sample: Sample) {
        self.causal.lock().expect("causal lock").covered(id, sample);
    }

    /// Causal ids remembered now.
    pub fn causal_ids(&self) -> usize {
        self.causal.lock().expect("causal lock").ids.len()
    }
}

/// `[routing] causal_expiry` and `causal_max_ids`.
#[derive(Debug, Clone, Copy)]
pub struct CausalLimits {
    pub expiry: Duration,
    pub max_ids: usize,
}

/// What a causal read must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CausalFloor {
    /// Nothing: the id has no commit remembered.
    Nothing,
    /// This position, known to cover the id's last commit.
    Lsn(u64),
    /// A position sampled after this epoch (the id's last commit).
    After(u64),
}

/// One causal id's last commit. About 100 bytes with its key and the
/// map's share, plus the id's own length (at most 63 bytes).
#[derive(Debug, Clone, Copy)]
struct CausalEntry {
    /// The epoch when its last commit completed.
    committed: u64,
    /// A position known to cover commits up to `epoch`.
    covered: Option<Sample>,
    used: Instant,
}

#[derive(Debug, Default)]
struct CausalIds {
    ids: HashMap<Arc<str>, CausalEntry, foldhash::fast::RandomState>,
    /// The latest commit of an id forgotten to make room: an id not found
    /// may be one of them, so its reads must see at least that far.
    forgotten: Option<u64>,
}

impl CausalIds {
    fn note(&mut self, id: &Arc<str>, epoch: u64, now: Instant, limits: CausalLimits) {
        if let Some(entry) = self.ids.get_mut(id) {
            entry.committed = epoch;
            entry.used = now;
            return;
        }
        if self.ids.len() >= limits.max_ids {
            self.ids.retain(|_, e| now.saturating_duration_since(e.used) < limits.expiry);
        }
        while self.ids.len() >= limits.max_ids {
            let oldest = self.ids.iter().min_by_key(|(_, e)| e.used).map(|(k, e)| (k.clone(), e.committed));
            let Some((key, committed)) = oldest else { break };
            self.ids.remove(&key);
            self.forgotten = Some(self.forgotten.map_or(committed, |f| f.max(committed)));
        }
        self.ids.insert(id.clone(), CausalEntry { committed: epoch, covered: None, used: now });
    }

    fn floor(&mut self, id: &Arc<str>, now: Instant, limits: CausalLimits) -> CausalFloor {
        let Some(entry) = self.ids.get_mut(id) else {
            return self.forgotten.map_or(CausalFloor::Nothing, CausalFloor::After);
        };
        if now.saturating_duration_since(entry.used) >= limits.expiry {
            self.ids.remove(id);
            return self.forgotten.map_or(CausalFloor::Nothing, CausalFloor::After);
        }
        entry.used = now;
        match entry.covered {
            Some(sample) if sample.epoch > entry.committed => CausalFloor::Lsn(sample.lsn),
            _ => CausalFloor::After(entry.committed),
        }
    }

    fn covered(&mut self, id: &Arc<str>, sample: Sample) {
        if let Some(entry) = self.ids.get_mut(id) {
            if entry.covered.is_none_or(|s| s.epoch < sample.epoch) {
                entry.covered = Some(sample);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CausalLimits = CausalLimits { expiry: Duration::from_secs(60), max_ids: 2 };

    #[tokio::test]
    async fn a_sample_covers_only_commits_noted_before_it_began() {
        let commits = Commits::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let before = commits.epoch();
        let lsn = commits.position_after(before, deadline, || async { Ok::<_, ()>(100) }).await;
        assert_eq!(lsn.map(|s| s.map(|s| s.lsn)), Ok(Some(100)));
        // Noted before that sample began: covered, no query.
        assert_eq!(commits.sample_after(before).map(|s| s.lsn), Some(100));
        let after = commits.epoch();
        assert_eq!(commits.sample_after(after), None, "a commit noted after the sample began");
        let lsn = commits.position_after(after, deadline, || async { Ok::<_, ()>(200) }).await;
        assert_eq!(lsn.map(|s| s.map(|s| s.lsn)), Ok(Some(200)));
    }

    #[test]
    fn causal_ids_are_bounded_and_a_forgotten_id_reads_at_the_last_forgotten_commit() {
        let mut ids = CausalIds::default();
        let now = Instant::now();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert_eq!(ids.floor(&a, now, LIMITS), CausalFloor::Nothing);
        ids.note(&a, 5, now, LIMITS);
        ids.note(&b, 6, now + Duration::from_millis(1), LIMITS);
        assert_eq!(ids.floor(&a, now + Duration::from_millis(2), LIMITS), CausalFloor::After(5));
        ids.covered(&a, Sample { epoch: 7, lsn: 1000 });
        assert_eq!(ids.floor(&a, now + Duration::from_millis(3), LIMITS), CausalFloor::Lsn(1000));
        // Full: b (used least recently) makes room for c.
        ids.note(&c, 8, now + Duration::from_millis(4), LIMITS);
        assert_eq!(ids.ids.len(), 2);
        assert_eq!(ids.floor(&b, now + Duration::from_millis(5), LIMITS), CausalFloor::After(6));
        // Expired: forgotten, as documented.
        let later = now + Duration::from_secs(120);
        assert_eq!(ids.floor(&c, later, LIMITS), CausalFloor::After(6));
    }
}
