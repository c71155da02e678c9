//! The per-terminal security trigger (安全触发): token buckets limiting PIN
//! translations and MAC verification failures per terminal (or per terminal
//! PIN/MAC key in stateless mode). An exhausted bucket refuses the call with
//! `TERMINAL_THROTTLED`; the first refusal of an episode is audited, so an
//! attacker cannot turn the guard into an audit-write amplifier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Rate and burst of one kind of event.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Sustained events per second (0 disables the limit).
    pub per_sec: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Default for Limit {
    fn default() -> Self {
        Limit {
            per_sec: 20.0,
            burst: 50.0,
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
    throttled: bool,
}

/// One subject's bucket. The guard's map holds it, and a terminal's cached
/// keys hold the same one, so the hot path reaches it without a map lookup.
/// It outlives sign-ins and cache evictions (the map keeps it while it is not
/// full), so neither can reset the trigger; there is never more than one per
/// subject (the map drops only buckets nobody else holds).
pub struct Slot(Mutex<Bucket>);

impl Slot {
    /// Starts fetching the bucket (see [`crate::sys::prefetch`]), so a cold
    /// terminal's bucket is on its way alongside its key, before the lock.
    pub fn warm(&self) {
        crate::sys::prefetch(self);
    }
}

const SHARDS: usize = 16;

/// FNV-1a: cheap and good enough to spread terminal ids over shards (not a
/// defence against chosen ids: each shard is an ordinary SipHash map).
pub(crate) fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}
/// Above this many tracked subjects per shard, idle (full, unheld) buckets are dropped.
const PRUNE_AT: usize = 65_536;

struct Shard {
    map: HashMap<String, Arc<Slot>>,
    /// Size at which the next pruning pass runs: twice what the last pass
    /// kept, so held buckets cannot make every call scan the shard.
    prune_at: usize,
}

/// One family of buckets (PIN translations, or MAC failures).
pub struct Guard {
    limit: Limit,
    shards: Vec<Mutex<Shard>>,
    /// Smallest shard size at which pruning runs (PRUNE_AT; small in tests).
    prune_floor: usize,
}

/// What a take() decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused; `first` is true for the first refusal of an episode (audit it).
    Throttled {
        first: bool,
    },
}

impl Guard {
    pub fn new(limit: Limit) -> Guard {
        Guard::with_prune_floor(limit, PRUNE_AT)
    }

    fn with_prune_floor(limit: Limit, prune_floor: usize) -> Guard {
        Guard {
            limit,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        prune_at: prune_floor,
                    })
                })
                .collect(),
            prune_floor,
        }
    }

    fn enabled(&self) -> bool {
        self.limit.per_sec > 0.0
    }

    fn shard(&self, subject: &str) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(fnv1a(subject) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * self.limit.per_sec).min(self.limit.burst);
        b.last = now;
    }

    /// `subject`'s bucket, created full if the guard does not track it yet.
    pub fn slot(&self, subject: &str) -> Arc<Slot> {
        let mut shard = self.shard(subject);
        if shard.map.len() > shard.prune_at {
            let now = Instant::now();
            let (burst, rate) = (self.limit.burst, self.limit.per_sec);
            shard.map.retain(|_, s| {
                if Arc::strong_count(s) > 1 {
                    return true;
                }
                let b = s.0.lock().unwrap_or_else(|p| p.into_inner());
                b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst
            });
            shard.prune_at = (2 * shard.map.len()).max(self.prune_floor);
        }
        if let Some(s) = shard.map.get(subject) {
            return s.clone();
        }
        let s = Arc::new(Slot(Mutex::new(Bucket {
            tokens: self.limit.burst,
            last: Instant::now(),
            throttled: false,
        })));
        shard.map.insert(subject.to_string(), s.clone());
        s
    }

    /// Takes one token for `subject` if there is one.
    pub fn take(&self, subject: &str) -> Verdict {
        if !self.enabled() {
            return Verdict::Allowed;
        }
        self.take_slot(&self.slot(subject))
    }

    /// [`Guard::take`] on a bucket already in hand (from [`Guard::slot`]).
    pub fn take_slot(&self, slot: &Slot) -> Verdict {
        self.decide(slot, true)
    }

    /// Whether `subject` still has a token, without taking one (a refusal
    /// starts an episode just as in [`Guard::take`]).
    pub fn check(&self, subject: &str) -> Verdict {
        if !self.enabled() {
            return Verdict::Allowed;
        }
        let slot = match self.shard(subject).map.get(subject) {
            Some(s) => s.clone(),
            None => return Verdict::Allowed,
        };
        self.check_slot(&slot)
    }

    /// [`Guard::check`] on a bucket already in hand.
    pub fn check_slot(&self, slot: &Slot) -> Verdict {
        self.decide(slot, false)
    }

    /// Refills the bucket; allows if it holds a token (spending it if `take`),
    /// otherwise refuses and opens (or continues) an episode.
    pub fn decide(&self, slot: &Slot, take: bool) -> Verdict {
        if !self.enabled() {
            return Verdict::Allowed;
        }
        let mut b = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut b, Instant::now());
        if b.tokens >= 1.0 {
            if take {
                b.tokens -= 1.0;
            }
            b.throttled = false;
            Verdict::Allowed
        } else {
            let first = !b.throttled;
            b.throttled = true;
            Verdict::Throttled { first }
        }
    }

    /// Subjects tracked now (tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_and_the_next_call_is_throttled_once_audited() {
        let g = Guard::new(Limit {
            per_sec: 0.001,
            burst: 3.0,
        });
        for _ in 0..3 {
            assert_eq!(g.take("T1"), Verdict::Allowed);
        }
        assert_eq!(g.take("T1"), Verdict::Throttled { first: true });
        assert_eq!(g.take("T1"), Verdict::Throttled { first: false });
        assert_eq!(g.take("T2"), Verdict::Allowed, "terminals are independent");
    }

    #[test]
    fn tokens_refill_at_the_sustained_rate() {
        let g = Guard::new(Limit {
            per_sec: 1000.0,
            burst: 1.0,
        });
        assert_eq!(g.take("T1"), Verdict::Allowed);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(g.take("T1"), Verdict::Allowed);
    }

    #[test]
    fn a_zero_rate_disables_the_guard() {
        let g = Guard::new(Limit {
            per_sec: 0.0,
            burst: 0.0,
        });
        for _ in 0..1000 {
            assert_eq!(g.take("T1"), Verdict::Allowed);
        }
    }

    #[test]
    fn a_held_bucket_is_the_subjects_only_bucket() {
        let g = Guard::new(Limit {
            per_sec: 0.001,
            burst: 3.0,
        });
        let held = g.slot("T1");
        for _ in 0..3 {
            assert_eq!(g.take_slot(&held), Verdict::Allowed);
        }
        // By name, the same bucket: already empty, and its episode already open.
        assert_eq!(g.take("T1"), Verdict::Throttled { first: true });
        assert_eq!(g.take_slot(&held), Verdict::Throttled { first: false });
        assert_eq!(
            g.check_slot(&g.slot("T1")),
            Verdict::Throttled { first: false }
        );
        assert!(Arc::ptr_eq(&held, &g.slot("T1")));
    }

    #[test]
    fn pruning_drops_idle_buckets_but_never_a_held_or_draining_one() {
        let g = Guard::with_prune_floor(
            Limit {
                per_sec: 0.001,
                burst: 2.0,
            },
            4,
        );
        // Held by a terminal's cache entry, drained through the handle.
        let held = g.slot("HELD");
        assert_eq!(g.take_slot(&held), Verdict::Allowed);
        assert_eq!(g.take_slot(&held), Verdict::Allowed);
        // Not held, but drained: it must survive, or the trigger resets.
        assert_eq!(g.take("DRAINED"), Verdict::Allowed);
        assert_eq!(g.take("DRAINED"), Verdict::Allowed);
        // Many idle subjects: every shard passes its pruning size many times.
        for i in 0..2000 {
            g.slot(&format!("IDLE{i}"));
        }
        assert!(
            g.tracked() < 1000,
            "idle buckets were not pruned: {}",
            g.tracked()
        );
        assert_eq!(g.take_slot(&held), Verdict::Throttled { first: true });
        assert_eq!(g.take("HELD"), Verdict::Throttled { first: false });
        assert_eq!(g.take("DRAINED"), Verdict::Throttled { first: true });
    }

    #[test]
    fn a_full_shard_of_held_buckets_is_not_rescanned_on_every_call() {
        let g = Guard::with_prune_floor(
            Limit {
                per_sec: 1.0,
                burst: 5.0,
            },
            4,
        );
        let held: Vec<_> = (0..400).map(|i| g.slot(&format!("T{i}"))).collect();
        // Nothing could be dropped; each shard's next pass waits for twice its size.
        // (Without that, prune_at would stay at the floor of 4 and every call scan.)
        for s in g.shards.iter() {
            let s = s.lock().unwrap();
            assert!(
                s.map.len() <= s.prune_at + 1,
                "{} {}",
                s.prune_at,
                s.map.len()
            );
        }
        assert_eq!(g.tracked(), held.len());
    }
}
