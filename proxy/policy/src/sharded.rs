//! A map from 64-bit key hashes to per-key state, split over 16 mutexes so requests for
//! different keys rarely contend. The limiters' per-key tables use it; no lock is held across
//! anything but a map update.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

const SHARDS: usize = 16;

/// Per-key state in 16 locked maps.
pub struct Sharded<T> {
    shards: Vec<Mutex<HashMap<u64, T>>>,
}

impl<T> Default for Sharded<T> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl<T> Sharded<T> {
    /// The locked map that holds `key`. (A panic while a shard is held cannot leave an entry
    /// half-written: every update is a plain store into it, so a poisoned shard is sound.)
    pub fn lock(&self, key: u64) -> MutexGuard<'_, HashMap<u64, T>> {
        // The key is already a good hash; its top bits pick the shard, the map uses it whole.
        lock(&self.shards[(key >> 60) as usize % SHARDS])
    }

    /// Each shard's map in turn, locked while `f` runs on it.
    pub fn each(&self, mut f: impl FnMut(&mut HashMap<u64, T>)) {
        for shard in &self.shards {
            f(&mut lock(shard));
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
