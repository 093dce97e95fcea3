//! In-memory guards: a token bucket ([`TokenBucket`]), per source in the receiver and per
//! client address for the review page's logins ([`KeyedBuckets`]), and the receiver's
//! replay cache ([`ReplayCache`]) that de-duplicates verified notifications on
//! `(source, id)`, where the id is derived only from bytes the source's authentication
//! covers (the signed `webhook-id`, else a digest of the body: see
//! `receiver::authenticate`). No IO, no HTTP: time is passed in, so both are tested
//! exactly.
//!
//! INVARIANT: [`KeyedBuckets`] holds at most `capacity` buckets: a new key finding it full
//! first forgets the buckets that refilled (they are as a new one would be); if none did,
//! the new key is refused until one does.
//! INVARIANT: the replay cache is bounded: at most `capacity` remembered pairs (the
//! oldest go first when it is full, counted in [`ReplayCache::evicted`]) plus the
//! reservations of requests in flight. A pair is kept as a 128-bit keyed digest of the
//! source and id (SipHash with two random keys per process), never as text, so every
//! entry costs the same [`ReplayCache::BYTES_PER_ENTRY`] whatever the ids look like: the
//! bound on entries is a bound on bytes (100,000 entries: about 9 MiB, at most 14 MiB
//! right after the map and the deque grew; text keys took about 30 MiB). Two pairs share
//! a digest with a chance of about n²/2¹²⁹ (10⁻²⁹ at 100,000 pairs); a sender cannot
//! aim for one, since the keys are secret and new with each process.
//! INVARIANT: a pair is remembered only after its publish was confirmed
//! ([`Reservation::commit`]); a reservation that is dropped uncommitted (a failed
//! publish, a cancelled request) is released, so the sender's retry is accepted.
//! INVARIANT: while a pair is reserved, a second request for it is told so
//! ([`Reserve::InFlight`]) and not published: two identical requests never both publish.
//!
//! Each receiver process has its own cache. With several replicas a replay can reach
//! another replica and be queued again; that is harmless because workers re-fetch the
//! allocation and every write is guarded by its state, which is the real guarantee (see
//! `docs/ingress.md`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// A token bucket refilled continuously at `per_sec`, holding at most `burst` tokens.
#[derive(Debug)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (at least one token a second).
    pub fn new(limit: RateLimit, now: Instant) -> TokenBucket {
        TokenBucket::every(
            Duration::from_secs_f64(1.0 / f64::from(limit.per_sec.max(1))),
            limit.burst,
            now,
        )
    }

    /// A full bucket of `burst` tokens, refilled by one every `period`.
    pub fn every(period: Duration, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            per_sec: 1.0 / period.as_secs_f64().max(1e-6),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
    }

    /// Takes one token, or tells how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }

    /// Whether it refilled to its burst: as a new bucket would be.
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One [`TokenBucket`] per key (the review page: per client address), each of `burst`
/// tokens refilled by one every `period`.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    period: Duration,
    burst: u32,
    capacity: usize,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: std::hash::Hash + Eq> KeyedBuckets<K> {
    /// At most `capacity` keys remembered at once.
    pub fn new(period: Duration, burst: u32, capacity: usize) -> KeyedBuckets<K> {
        KeyedBuckets {
            period,
            burst,
            capacity: capacity.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `key`'s bucket, or tells how long until one is available.
    pub fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        // Every step leaves the map consistent, so a poisoned lock is still safe to use.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(&key) && buckets.len() >= self.capacity {
            buckets.retain(|_, bucket| !bucket.is_full(now));
            if buckets.len() >= self.capacity {
                return Err(self.period);
            }
        }
        buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::every(self.period, self.burst, now))
            .take(now)
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A `(source, id)` pair as its 128-bit keyed digest.
type Key = u128;

/// The digest of a pair: two independently keyed SipHash-1-3 values of the source and
/// the id (length-prefixed, so `("ab", "c")` and `("a", "bc")` differ).
#[derive(Debug)]
struct PairDigest {
    high: std::hash::RandomState,
    low: std::hash::RandomState,
}

impl PairDigest {
    fn new() -> PairDigest {
        PairDigest {
            high: std::hash::RandomState::new(),
            low: std::hash::RandomState::new(),
        }
    }

    fn key(&self, source: &str, id: &str) -> Key {
        use std::hash::BuildHasher;
        let pair = (source, id);
        (u128::from(self.high.hash_one(pair)) << 64) | u128::from(self.low.hash_one(pair))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    InFlight,
    Seen { until: Instant },
}

#[derive(Debug, Default)]
struct Entries {
    slots: HashMap<Key, Slot>,
    /// Remembered pairs in the order they were committed, with their expiry.
    order: VecDeque<(Instant, Key)>,
    /// Remembered (not in-flight) pairs.
    seen: usize,
}

/// Remembers `(source, id)` pairs of published notifications for their replay window.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    digest: PairDigest,
    entries: Mutex<Entries>,
    evicted: AtomicU64,
}

/// The answer of [`ReplayCache::reserve`].
#[derive(Debug)]
pub enum Reserve {
    /// Not seen: publish, then commit (dropping the reservation releases it).
    Fresh(Reservation),
    /// Published before, within the window.
    Duplicate,
    /// Another request with this pair is being published right now.
    InFlight,
}

/// The right to publish one `(source, id)` pair.
#[derive(Debug)]
pub struct Reservation {
    cache: Arc<ReplayCache>,
    key: Option<Key>,
}

impl Reservation {
    /// Remembers the pair until `until`.
    pub fn commit(mut self, until: Instant) {
        if let Some(key) = self.key.take() {
            self.cache.commit(key, until);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.cache.release(&key);
        }
    }
}

impl ReplayCache {
    /// What one remembered pair costs at most: its slot in the map (digest, state and
    /// expiry, one control byte, at the map's lowest load of 7/16 after growing) and its
    /// place in the commit order (expiry and digest, at a deque's lowest load of 1/2).
    pub const BYTES_PER_ENTRY: usize = (std::mem::size_of::<(Key, Slot)>() + 1) * 16 / 7
        + std::mem::size_of::<(Instant, Key)>() * 2;

    /// A cache remembering at most `capacity` pairs.
    pub fn new(capacity: usize) -> Arc<ReplayCache> {
        Arc::new(ReplayCache {
            capacity: capacity.max(1),
            digest: PairDigest::new(),
            entries: Mutex::new(Entries::default()),
            evicted: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The entries stay consistent at every await-free step, so a poisoned lock
        // (a panic elsewhere while holding it) is still safe to use.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves a pair, unless it is remembered or in flight.
    pub fn reserve(self: &Arc<Self>, source: &str, id: &str, now: Instant) -> Reserve {
        let key = self.digest.key(source, id);
        let mut entries = self.lock();
        Self::expire(&mut entries, now);
        match entries.slots.get(&key) {
            Some(Slot::InFlight) => Reserve::InFlight,
            Some(Slot::Seen { until }) if *until > now => Reserve::Duplicate,
            _ => {
                if let Some(Slot::Seen { .. }) = entries.slots.insert(key, Slot::InFlight) {
                    entries.seen -= 1;
                }
                Reserve::Fresh(Reservation {
                    cache: self.clone(),
                    key: Some(key),
                })
            }
        }
    }

    fn commit(&self, key: Key, until: Instant) {
        let mut entries = self.lock();
        entries.slots.insert(key, Slot::Seen { until });
        entries.order.push_back((until, key));
        entries.seen += 1;
        while entries.seen > self.capacity {
            if Self::pop_oldest(&mut entries) {
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn release(&self, key: &Key) {
        let mut entries = self.lock();
        if entries.slots.get(key) == Some(&Slot::InFlight) {
            entries.slots.remove(key);
        }
    }

    /// Drops expired pairs from the front of the commit order.
    fn expire(entries: &mut Entries, now: Instant) {
        while let Some((until, _)) = entries.order.front() {
            if *until > now {
                break;
            }
            Self::pop_oldest(entries);
        }
    }

    /// Forgets the oldest committed pair; true when a remembered pair was dropped (not a
    /// stale order entry of a pair committed again since).
    fn pop_oldest(entries: &mut Entries) -> bool {
        let Some((until, key)) = entries.order.pop_front() else {
            entries.seen = 0;
            return false;
        };
        if entries.slots.get(&key) == Some(&Slot::Seen { until }) {
            entries.slots.remove(&key);
            entries.seen -= 1;
            true
        } else {
            false
        }
    }

    /// Remembered pairs (not counting reservations in flight).
    pub fn len(&self) -> usize {
        self.lock().seen
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most memory the remembered pairs can take: `capacity` entries of
    /// [`ReplayCache::BYTES_PER_ENTRY`].
    pub fn max_bytes(&self) -> usize {
        self.capacity * Self::BYTES_PER_ENTRY
    }

    /// Pairs forgotten before their window ended because the cache was full.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_sec: 2,
        burst: 3,
    };

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(LIMIT, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).expect_err("empty");
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert_eq!(bucket.take(start + Duration::from_millis(500)), Ok(()));
        assert!(bucket.take(start + Duration::from_millis(500)).is_err());
        // A long pause refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn a_slow_bucket_refills_one_token_a_period() {
        let start = Instant::now();
        let mut bucket = TokenBucket::every(Duration::from_secs(12), 2, start);
        assert_eq!(bucket.take(start), Ok(()));
        assert_eq!(bucket.take(start), Ok(()));
        assert_eq!(bucket.take(start), Err(Duration::from_secs(12)));
        let wait = bucket
            .take(start + Duration::from_secs(6))
            .expect_err("half a token");
        assert!(wait > Duration::from_millis(5_900) && wait <= Duration::from_secs(6));
        assert_eq!(bucket.take(start + Duration::from_secs(12)), Ok(()));
    }

    #[test]
    fn keyed_buckets_limit_each_key_alone_and_stay_bounded() {
        let start = Instant::now();
        let buckets = KeyedBuckets::new(Duration::from_secs(10), 2, 2);
        for key in ["a", "a", "b"] {
            assert_eq!(buckets.take(key, start), Ok(()));
        }
        assert!(buckets.take("a", start).is_err(), "a's burst is spent");
        // Full of keys that have not refilled: a third is refused, not let in.
        assert_eq!(buckets.take("c", start), Err(Duration::from_secs(10)));
        assert_eq!(buckets.len(), 2);
        // Once b refilled it is forgotten and c gets a bucket of its own.
        let later = start + Duration::from_secs(10);
        assert_eq!(buckets.take("c", later), Ok(()));
        assert_eq!(buckets.len(), 2);
        assert!(buckets.take("a", later).is_ok(), "one token back");
        assert!(buckets.take("a", later).is_err());
    }

    #[test]
    fn remembers_committed_pairs_for_their_window() {
        let cache = ReplayCache::new(10);
        let now = Instant::now();
        let Reserve::Fresh(reservation) = cache.reserve("relay", "msg_1", now) else {
            panic!("first sight is fresh");
        };
        assert!(matches!(
            cache.reserve("relay", "msg_1", now),
            Reserve::InFlight
        ));
        reservation.commit(now + Duration::from_secs(10));
        assert!(matches!(
            cache.reserve("relay", "msg_1", now + Duration::from_secs(9)),
            Reserve::Duplicate
        ));
        assert!(matches!(
            cache.reserve("other", "msg_1", now),
            Reserve::Fresh(_)
        ));
        assert!(matches!(
            cache.reserve("relay", "msg_1", now + Duration::from_secs(10)),
            Reserve::Fresh(_)
        ));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_dropped_reservation_is_released() {
        let cache = ReplayCache::new(10);
        let now = Instant::now();
        let first = cache.reserve("relay", "msg_1", now);
        assert!(matches!(first, Reserve::Fresh(_)));
        drop(first);
        assert!(matches!(
            cache.reserve("relay", "msg_1", now),
            Reserve::Fresh(_)
        ));
    }

    #[test]
    fn stays_bounded_and_counts_evictions() {
        let cache = ReplayCache::new(3);
        let now = Instant::now();
        for i in 0..5 {
            let Reserve::Fresh(r) = cache.reserve("s", &i.to_string(), now) else {
                panic!("fresh");
            };
            r.commit(now + Duration::from_secs(60));
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.evicted(), 2);
        assert!(matches!(cache.reserve("s", "0", now), Reserve::Fresh(_)));
        assert!(matches!(cache.reserve("s", "4", now), Reserve::Duplicate));
    }

    #[test]
    fn an_entry_costs_the_same_whatever_the_id_and_100_000_fit_in_14_mib() {
        // Digest, state with expiry, expiry in the order: no text is kept.
        assert_eq!(ReplayCache::BYTES_PER_ENTRY, 139);
        assert!(ReplayCache::new(100_000).max_bytes() <= 14 << 20);
        let cache = ReplayCache::new(10);
        let now = Instant::now();
        let long = "x".repeat(10_000);
        let Reserve::Fresh(r) = cache.reserve("s", &long, now) else {
            panic!("fresh");
        };
        r.commit(now + Duration::from_secs(60));
        assert!(matches!(cache.reserve("s", &long, now), Reserve::Duplicate));
        // The source and id stay apart inside the digest.
        assert!(matches!(
            cache.reserve("sx", &long[1..], now),
            Reserve::Fresh(_)
        ));
    }

    #[test]
    fn recommitting_a_pair_keeps_the_newer_window() {
        let cache = ReplayCache::new(10);
        let now = Instant::now();
        let Reserve::Fresh(r) = cache.reserve("s", "a", now) else {
            panic!("fresh");
        };
        r.commit(now + Duration::from_secs(1));
        let later = now + Duration::from_secs(2);
        let Reserve::Fresh(r) = cache.reserve("s", "a", later) else {
            panic!("expired, so fresh");
        };
        r.commit(later + Duration::from_secs(5));
        assert!(matches!(
            cache.reserve("s", "a", later + Duration::from_secs(4)),
            Reserve::Duplicate
        ));
        assert_eq!(cache.len(), 1);
    }
}
