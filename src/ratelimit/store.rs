//! The state of a keyed limit, bounded: governor's GCRA keeps one time per key (when the key's
//! bucket is next empty, its "theoretical arrival time"); this store keeps at most `max_keys`
//! of them, least recently used first.
//!
//! - Keys are 64-bit hashes (keyed with a random seed, so a sender cannot aim collisions), which
//!   keeps an entry small and a check free of allocation.
//! - A key whose time has passed is indistinguishable from a new one, so forgetting it loses
//!   nothing. Each new key first forgets up to [`PRUNE_PER_INSERT`] such keys from the least
//!   recently used end, so the store follows the keys actually in use.
//! - Past `max_keys`, the least recently used key is forgotten even if its time has not passed
//!   (counted as an eviction): memory stays bounded under a flood of distinct keys, at the cost
//!   of that key starting over.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, PoisonError};

use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use linked_hash_map::LinkedHashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// Shards, each behind its own lock (a power of two).
const SHARDS: usize = 16;
/// Stale keys forgotten, at most, when a new key arrives.
const PRUNE_PER_INSERT: usize = 2;

/// The keys are already hashes: used as they are.
#[derive(Default)]
pub struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; this keeps any other input well mixed anyway.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = LinkedHashMap<u64, u64, BuildHasherDefault<Identity>>;

/// A bounded, sharded, least-recently-used store of GCRA times.
#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    /// Most keys per shard.
    per_shard: usize,
    /// The limit's emission interval in nanoseconds: a new key's time is `now + t`.
    t: u64,
    /// Keys forgotten before their time (the store was full).
    evictions: Counter,
    /// Keys held now.
    keys: Gauge,
}

impl Store {
    /// A store of at most about `max_keys` keys (rounded up to a multiple of the shard count)
    /// for a limit with emission interval `t`.
    pub fn new(max_keys: usize, t: Nanos, evictions: Counter, keys: Gauge) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            t: t.as_u64(),
            evictions,
            keys,
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        // Middle bits: the map itself uses the low bits for its slot and the top ones for tags.
        let i = ((key >> 32) as usize) & (SHARDS - 1);
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most keys it holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}

impl StateStore for Store {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self.shard(*key);
        if let Some(tat) = shard.get_refresh(key) {
            let (outcome, next) = f(Some(Nanos::from(*tat)))?;
            *tat = next.as_u64();
            return Ok(outcome);
        }
        // A new key: its time is `now + t`, which tells us now.
        let (outcome, next) = f(None)?;
        let next = next.as_u64();
        let now = next.saturating_sub(self.t);
        let mut forgotten = 0_i64;
        for _ in 0..PRUNE_PER_INSERT {
            match shard.front() {
                Some((_, &tat)) if tat <= now => {
                    shard.pop_front();
                    forgotten += 1;
                }
                _ => break,
            }
        }
        if shard.len() >= self.per_shard && shard.pop_front().is_some() {
            forgotten += 1;
            self.evictions.inc();
        }
        shard.insert(*key, next);
        drop(shard);
        self.keys.inc_by(1 - forgotten);
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<u64> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let stale: Vec<u64> = shard
                .iter()
                .filter(|&(_, &tat)| tat < drop_below)
                .map(|(&k, _)| k)
                .collect();
            for k in &stale {
                shard.remove(k);
            }
            drop(shard);
            self.keys
                .dec_by(i64::try_from(stale.len()).unwrap_or(i64::MAX));
        }
    }

    fn shrink_to_fit(&self) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        Store::len(self)
    }

    fn is_empty(&self) -> bool {
        Store::is_empty(self)
    }
}
