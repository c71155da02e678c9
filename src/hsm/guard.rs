//! The per-terminal security trigger (安全触发): token buckets limiting PIN
//! translations and MAC verification failures per terminal (or per terminal
//! PIN/MAC key in stateless mode). An exhausted bucket refuses the call with
//! `TERMINAL_THROTTLED`; the first refusal of an episode is audited, so an
//! attacker cannot turn the guard into an audit-write amplifier.

use std::collections::HashMap;
use std::sync::Mutex;
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

const SHARDS: usize = 16;
/// Above this many tracked subjects per shard, idle (full) buckets are dropped.
const PRUNE_AT: usize = 65_536;

/// One family of buckets (PIN translations, or MAC failures).
pub struct Guard {
    limit: Limit,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
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
        Guard {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, subject: &str) -> &Mutex<HashMap<String, Bucket>> {
        // FNV-1a: cheap and good enough to spread terminal ids.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in subject.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        &self.shards[(h as usize) % SHARDS]
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * self.limit.per_sec).min(self.limit.burst);
        b.last = now;
    }

    /// Takes one token for `subject` if there is one.
    pub fn take(&self, subject: &str) -> Verdict {
        if self.limit.per_sec <= 0.0 {
            return Verdict::Allowed;
        }
        let now = Instant::now();
        let mut map = self
            .shard(subject)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() > PRUNE_AT {
            let burst = self.limit.burst;
            let rate = self.limit.per_sec;
            map.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = match map.get_mut(subject) {
            Some(b) => b,
            None => map.entry(subject.to_string()).or_insert(Bucket {
                tokens: self.limit.burst,
                last: now,
                throttled: false,
            }),
        };
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.throttled = false;
            Verdict::Allowed
        } else {
            let first = !b.throttled;
            b.throttled = true;
            Verdict::Throttled { first }
        }
    }

    /// Whether `subject` still has a token, without taking one (a refusal
    /// starts an episode just as in [`Guard::take`]).
    pub fn check(&self, subject: &str) -> Verdict {
        if self.limit.per_sec <= 0.0 {
            return Verdict::Allowed;
        }
        let now = Instant::now();
        let mut map = self
            .shard(subject)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match map.get_mut(subject) {
            Some(b) => {
                self.refill(b, now);
                if b.tokens >= 1.0 {
                    b.throttled = false;
                    Verdict::Allowed
                } else {
                    let first = !b.throttled;
                    b.throttled = true;
                    Verdict::Throttled { first }
                }
            }
            None => Verdict::Allowed,
        }
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
}
