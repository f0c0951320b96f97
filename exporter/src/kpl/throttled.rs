//! Records Kinesis throttled, held back per shard until that shard's own backoff has passed.
//!
//! Throttling means "too fast for this shard", not "this record is bad", so it is answered
//! the way the KPL answers it: the shard is slowed down, and its records wait, without a
//! connection and without spending their retries. A throttled shard then never holds every
//! connection while the other shards idle, and a throttled record is never dropped: while the
//! shard stays throttled its records pile up here, the producer stops taking new ones once
//! this holds a backlog's worth, and callers are told to retry later (back-pressure).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::backoff::{WHILE_SHUTTING_DOWN, delay};
use super::record::KinesisRecord;

/// Held records of every throttled shard. Pure bookkeeping: the producer decides when to look.
#[derive(Debug)]
pub(super) struct Throttled {
    shards: HashMap<String, ShardHold>,
    base: Duration,
    cap: Duration,
    user_records: usize,
    /// Shutting down: every shard waits `WHILE_SHUTTING_DOWN` at most; the deadline bounds
    /// the rest.
    hurrying: bool,
}

#[derive(Debug)]
struct ShardHold {
    records: Vec<KinesisRecord>,
    /// Throttled answers since the shard last stored anything: the backoff's exponent.
    throttles: u32,
    not_before: Instant,
}

impl Throttled {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Throttled {
            shards: HashMap::new(),
            base,
            cap,
            user_records: 0,
            hurrying: false,
        }
    }

    /// From now on no shard waits longer than `WHILE_SHUTTING_DOWN`, and none waits at all
    /// now: the producer is shutting down and its deadline is what bounds the retries.
    pub fn hurry(&mut self, now: Instant) {
        self.hurrying = true;
        for hold in self.shards.values_mut() {
            hold.not_before = hold.not_before.min(now);
        }
    }

    /// Holds `records`, throttled by `shard` in one answer: the shard backs off one step more.
    /// `unit_random` in [0, 1] is the jitter.
    pub fn hold(
        &mut self,
        shard: String,
        records: Vec<KinesisRecord>,
        now: Instant,
        unit_random: f64,
    ) {
        self.user_records += records.iter().map(|r| r.user_records.len()).sum::<usize>();
        let hold = self.shards.entry(shard).or_insert_with(|| ShardHold {
            records: Vec::new(),
            throttles: 0,
            not_before: now,
        });
        hold.throttles = hold.throttles.saturating_add(1);
        hold.not_before = now
            + if self.hurrying {
                WHILE_SHUTTING_DOWN.min(self.base)
            } else {
                delay(hold.throttles, self.base, self.cap, unit_random)
            };
        hold.records.extend(records);
    }

    /// `shard` stored a record: it is not throttled any more, so its next throttle starts the
    /// backoff from the beginning.
    pub fn stored(&mut self, shard: &str) {
        if let Some(hold) = self.shards.get_mut(shard) {
            hold.throttles = 0;
            if hold.records.is_empty() {
                self.shards.remove(shard);
            }
        }
    }

    /// When the next held records may be sent again.
    pub fn next_due(&self) -> Option<Instant> {
        self.shards
            .values()
            .filter(|h| !h.records.is_empty())
            .map(|h| h.not_before)
            .min()
    }

    /// Takes the held records whose shard's backoff has passed.
    pub fn take_due(&mut self, now: Instant) -> Vec<KinesisRecord> {
        let mut due = Vec::new();
        for hold in self.shards.values_mut() {
            if hold.not_before <= now {
                due.append(&mut hold.records);
            }
        }
        // A shard's backoff state outlives its records until it stores again.
        self.user_records -= due.iter().map(|r| r.user_records.len()).sum::<usize>();
        due
    }

    /// User records held.
    pub fn user_records(&self) -> usize {
        self.user_records
    }

    pub fn is_empty(&self) -> bool {
        self.user_records == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kpl::UserRecord;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(10);

    fn records(n: usize) -> Vec<KinesisRecord> {
        (0..n)
            .map(|i| KinesisRecord::raw(UserRecord::new(format!("k{i}"), vec![1])))
            .collect()
    }

    #[test]
    fn a_shard_waits_for_its_own_backoff_only() {
        let now = Instant::now();
        let mut held = Throttled::new(BASE, CAP);
        held.hold("a".into(), records(2), now, 1.0);
        held.hold("b".into(), records(3), now, 1.0);
        held.hold("b".into(), records(1), now, 1.0);
        assert_eq!(held.user_records(), 6);
        // "a" was throttled once (100 ms), "b" twice (200 ms).
        assert_eq!(held.next_due(), Some(now + BASE));
        assert!(held.take_due(now + BASE / 2).is_empty());
        assert_eq!(held.take_due(now + BASE).len(), 2);
        assert_eq!(held.user_records(), 4);
        assert_eq!(held.next_due(), Some(now + 2 * BASE));
        assert_eq!(held.take_due(now + 2 * BASE).len(), 4);
        assert!(held.is_empty());
        assert_eq!(held.next_due(), None);
    }

    #[test]
    fn the_backoff_grows_while_throttled_and_restarts_after_a_store() {
        let now = Instant::now();
        let mut held = Throttled::new(BASE, CAP);
        for _ in 0..10 {
            held.hold("a".into(), records(1), now, 1.0);
            held.take_due(now + CAP);
        }
        held.hold("a".into(), records(1), now, 1.0);
        assert_eq!(held.next_due(), Some(now + CAP), "capped");
        held.take_due(now + CAP);
        held.stored("a");
        held.hold("a".into(), records(1), now, 1.0);
        assert_eq!(held.next_due(), Some(now + BASE), "from the start again");
    }

    #[test]
    fn shutting_down_releases_every_shard_and_caps_the_backoff_at_the_base() {
        let now = Instant::now();
        let mut held = Throttled::new(BASE, CAP);
        for _ in 0..10 {
            held.hold("a".into(), records(1), now, 1.0);
        }
        assert_eq!(held.next_due(), Some(now + CAP));
        held.hurry(now);
        assert_eq!(held.next_due(), Some(now));
        assert_eq!(held.take_due(now).len(), 10);
        held.hold("a".into(), records(1), now, 1.0);
        assert_eq!(held.next_due(), Some(now + WHILE_SHUTTING_DOWN.min(BASE)));
    }

    #[test]
    fn aggregates_count_every_user_record_inside() {
        let now = Instant::now();
        let mut held = Throttled::new(BASE, CAP);
        let mut aggregate = KinesisRecord::raw(UserRecord::new("k", vec![1]));
        aggregate
            .user_records
            .extend((0..4).map(|i| UserRecord::new(format!("k{i}"), vec![2])));
        held.hold("a".into(), vec![aggregate], now, 0.0);
        assert_eq!(held.user_records(), 5);
        held.take_due(now + CAP);
        assert_eq!(held.user_records(), 0);
    }
}
