//! A bounded cache of unwrapped keys, so a hot key is not unwrapped on every
//! call. Each entry lives in locked, non-dumpable memory (with its reference
//! count, see [`crate::sys::LockedArc`]) and is zeroized when the last user
//! drops it after eviction. The cache never hands out key bytes, only shared
//! handles to [`LoadedKey`].

use super::LoadedKey;
use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;

pub type CachedKey = crate::sys::LockedArc<LoadedKey>;

/// FIFO-evicting map from a reference (key id or key block) to a loaded key.
pub struct KeyCache {
    /// Reads (every call) share the lock; only inserts and evictions take it.
    inner: RwLock<Inner>,
    capacity: usize,
}

struct Inner {
    map: HashMap<String, CachedKey, crate::hash::FastState>,
    order: VecDeque<String>,
}

impl KeyCache {
    pub fn new(capacity: usize) -> KeyCache {
        KeyCache {
            inner: RwLock::new(Inner {
                map: HashMap::default(),
                order: VecDeque::new(),
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        // A poisoned cache holds only complete entries: keep using it.
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, reference: &str) -> Option<CachedKey> {
        self.read().map.get(reference).cloned()
    }

    pub fn insert(&self, reference: String, key: LoadedKey) -> CachedKey {
        let entry = crate::sys::LockedArc::new(key);
        let mut inner = self.lock();
        if !inner.map.contains_key(&reference) {
            while inner.map.len() >= self.capacity {
                match inner.order.pop_front() {
                    Some(old) => {
                        inner.map.remove(&old);
                    }
                    None => break,
                }
            }
            inner.order.push_back(reference.clone());
        }
        inner.map.insert(reference, entry.clone());
        entry
    }

    /// Drops every entry whose metadata names `key_id` (retire, rotate).
    pub fn invalidate_key_id(&self, key_id: &str) {
        let mut inner = self.lock();
        inner.map.retain(|reference, v| {
            reference != key_id && v.meta().key_id.as_deref() != Some(key_id)
        });
        let Inner { map, order } = &mut *inner;
        order.retain(|r| map.contains_key(r));
    }

    /// Drops the entry under `reference`, if any.
    pub fn remove(&self, reference: &str) {
        let mut inner = self.lock();
        if inner.map.remove(reference).is_some() {
            inner.order.retain(|r| r != reference);
        }
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.order.clear();
    }

    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
