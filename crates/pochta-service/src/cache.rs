//! A small expiring map for answers a service may reuse for a while instead of asking the
//! store again (verified logins, recipient lookups). Bounded: when full, expired entries are
//! dropped, and if none had expired, everything is (the next lookups refill it).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// Entries live `ttl` (zero: nothing is ever kept); at most `max_entries` at once.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        TtlCache {
            ttl,
            max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value stored for `key`, unless it expired by `now`.
    pub fn get<Q>(&self, key: &Q, now: Instant) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().expect("cache lock");
        entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value.clone())
    }

    /// Forgets `key`, returning what was stored for it.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.lock().expect("cache lock");
        entries.remove(key).map(|(value, _)| value)
    }

    /// Keeps `value` for `key` until `now + ttl`.
    pub fn insert(&self, key: K, value: V, now: Instant) {
        self.insert_until(key, value, now + self.ttl, now);
    }

    /// Keeps `value` for `key` until `expires` (an answer with its own lifetime, such as a
    /// DNS record's TTL), whatever the cache's `ttl`.
    pub fn insert_until(&self, key: K, value: V, expires: Instant, now: Instant) {
        if self.ttl.is_zero() || self.max_entries == 0 {
            return;
        }
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(key, (value, expires));
    }

    /// Entries held, expired or not (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn entries_expire_after_their_ttl() {
        let cache = TtlCache::new(MINUTE, 10);
        let t0 = Instant::now();
        cache.insert("a", 1, t0);
        assert_eq!(cache.get(&"a", t0), Some(1));
        assert_eq!(
            cache.get(&"a", t0 + MINUTE - Duration::from_millis(1)),
            Some(1)
        );
        assert_eq!(cache.get(&"a", t0 + MINUTE), None);
        assert_eq!(cache.get(&"b", t0), None);
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let cache = TtlCache::new(Duration::ZERO, 10);
        let t0 = Instant::now();
        cache.insert("a", 1, t0);
        assert_eq!(cache.get(&"a", t0), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first_then_all() {
        let cache = TtlCache::new(MINUTE, 2);
        let t0 = Instant::now();
        cache.insert("old", 1, t0);
        cache.insert("new", 2, t0 + MINUTE / 2);
        // Full: "old" has expired by now and makes room; "new" stays.
        cache.insert("third", 3, t0 + MINUTE);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&"new", t0 + MINUTE), Some(2));
        assert_eq!(cache.get(&"third", t0 + MINUTE), Some(3));
        // Full, nothing expired: everything goes, the new entry is kept.
        cache.insert("fourth", 4, t0 + MINUTE);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&"fourth", t0 + MINUTE), Some(4));
        // Replacing an entry of a full cache keeps the others.
        cache.insert("fifth", 5, t0 + MINUTE);
        cache.insert("fifth", 6, t0 + MINUTE);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&"fifth", t0 + MINUTE), Some(6));
    }
}
