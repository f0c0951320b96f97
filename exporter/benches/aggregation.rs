//! Aggregation throughput against its floor, MD5 over the same bytes, measured in one run.
//!
//! For user records of 100 B, 512 B and 1 KiB, rounds of "aggregate everything" and "MD5
//! everything" alternate (so both see the same machine noise); the table shows the median of
//! each and their ratio. Run with `cargo bench -p kinesis-exporter --bench aggregation`.
//! Aggregates are sealed (their MD5s computed together) a batch of 100 at a time, as the
//! producer's batcher does; the floor is MD5 one message at a time, as a plain KPL would.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinesis_exporter::kpl::aggregator::{AggregateLimits, Aggregator, seal};
use kinesis_exporter::kpl::{KinesisRecord, UserRecord};
use md5::{Digest, Md5};

const RECORDS: usize = 100_000;
const KEYS: usize = 1_000;
const ROUNDS: usize = 15;
const LIMITS: AggregateLimits = AggregateLimits {
    max_count: u64::MAX,
    max_bytes: 51_200,
    max_record_bytes: 1024 * 1024,
};

fn records(size: usize) -> Vec<UserRecord> {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("partition-key-{i:06}")).collect();
    (0..RECORDS)
        .map(|i| UserRecord {
            partition_key: keys[(i * 7919) % KEYS].clone(),
            explicit_hash_key: None,
            data: Bytes::from(vec![(i % 251) as u8; size]),
            ack: None,
        })
        .collect()
}

const SEALED_TOGETHER: usize = 100;

/// What the producer does per shard: fill an aggregate, finish it when the next record
/// does not fit, start the next; seal the finished ones a batch at a time.
/// Each sealed batch is dropped at once, as the sender does after delivery, so memory is
/// reused as in a running producer.
fn aggregate_all(records: Vec<UserRecord>) -> usize {
    let mut aggregator = Aggregator::new(LIMITS, Some(0));
    let mut batch: Vec<KinesisRecord> = Vec::with_capacity(SEALED_TOGETHER);
    let mut bytes_out = 0;
    let mut seal_batch = |batch: &mut Vec<KinesisRecord>| {
        seal(batch);
        bytes_out += batch.iter().map(|r| r.data.len()).sum::<usize>();
        batch.clear();
    };
    for record in records {
        if let Err(record) = aggregator.try_add(record) {
            let next = aggregator.successor();
            batch.extend(std::mem::replace(&mut aggregator, next).finish_unsealed());
            if batch.len() == SEALED_TOGETHER {
                seal_batch(&mut batch);
            }
            aggregator.try_add(record).unwrap();
        }
    }
    batch.extend(aggregator.finish_unsealed());
    seal_batch(&mut batch);
    bytes_out
}

/// The floor: MD5 over the same user data, one digest per aggregate-sized run of records.
fn md5_all(records: &[UserRecord]) -> usize {
    let mut hasher = Md5::new();
    let mut in_digest = 0;
    let mut digests = 0;
    for record in records {
        if in_digest + record.data.len() > LIMITS.max_bytes {
            black_box(hasher.finalize_reset());
            digests += 1;
            in_digest = 0;
        }
        hasher.update(&record.data);
        in_digest += record.data.len();
    }
    black_box(hasher.finalize());
    digests + 1
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with no `--bench`; a smoke run then is enough.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 1 } else { ROUNDS };
    println!(
        "{:>6} | {:>14} {:>9} | {:>14} {:>9} | {:>5}",
        "size", "aggregate rec/s", "MB/s", "md5-only rec/s", "MB/s", "ratio"
    );
    for size in [100usize, 512, 1024] {
        let input = records(size);
        let (mut agg, mut md5) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            // The producer owns the records it aggregates; the copy is made outside the clock.
            let owned = input.clone();
            let t = Instant::now();
            black_box(aggregate_all(black_box(owned)));
            agg.push(t.elapsed());
            let t = Instant::now();
            black_box(md5_all(black_box(&input)));
            md5.push(t.elapsed());
        }
        let (agg, md5) = (median(agg), median(md5));
        let rate = |d: Duration| RECORDS as f64 / d.as_secs_f64();
        let mbps = |d: Duration| (RECORDS * size) as f64 / d.as_secs_f64() / 1e6;
        println!(
            "{:>5}B | {:>14.0} {:>9.1} | {:>14.0} {:>9.1} | {:>4.0}%",
            size,
            rate(agg),
            mbps(agg),
            rate(md5),
            mbps(md5),
            100.0 * md5.as_secs_f64() / agg.as_secs_f64()
        );
    }
    println!(
        "ratio = aggregation throughput as a share of MD5-only throughput (median of {rounds} interleaved rounds)"
    );
}
