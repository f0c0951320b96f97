//! The hashing that the wire formats require of any KPL-aggregating Kinesis exporter, timed in
//! CPU seconds per million spans for `make bench-e2e`: the MD5 checksum that closes every KPL
//! aggregated record, and for each PutRecords body the base64 of the data (JSON protocol) and
//! its SHA-256 (SigV4's payload hash). Same crates and the same way as the exporter and the SDK:
//! the MD5s of a PutRecords batch's aggregates together (md5-many), the rest one body at a time.
//! Prints one JSON object.

use clap::Parser;
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(about = "CPU time of the hashing the KPL format and SigV4 require, per million spans")]
struct Cli {
    /// Kinesis record bytes per million spans (the stand-in's figure).
    #[arg(long)]
    bytes_per_million: u64,
    /// Kinesis records per million spans (sets the size of each hashed record).
    #[arg(long)]
    records_per_million: u64,
    /// Aggregates whose MD5s are computed together (a PutRecords batch's worth).
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Times to repeat the measurement; the median is printed.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

/// CPU seconds of this thread so far.
fn thread_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a whole rusage on success, checked before it is read.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn timed(work: impl FnOnce()) -> f64 {
    let before = thread_cpu_seconds();
    work();
    thread_cpu_seconds() - before
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let cli = Cli::parse();
    let records = cli.records_per_million.max(1);
    let size = (cli.bytes_per_million / records).max(1) as usize;
    // Any bytes do: neither hash's speed depends on the data.
    let record: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let encoded = aws_smithy_types::base64::encode(&record);
    let (mut md5, mut base64, mut sha256) = (Vec::new(), Vec::new(), Vec::new());
    let mut sink = 0u8;
    for _ in 0..cli.repeat.max(1) {
        let batch = cli.batch.clamp(1, records) as usize;
        let messages = vec![record.as_slice(); batch];
        let mut digests = vec![[0u8; 16]; batch];
        md5.push(timed(|| {
            for _ in 0..records.div_ceil(batch as u64) {
                md5_many::md5_many(std::hint::black_box(&messages), &mut digests);
                sink ^= digests[0][0];
            }
        }));
        base64.push(timed(|| {
            for _ in 0..records {
                sink ^=
                    aws_smithy_types::base64::encode(std::hint::black_box(&record)).as_bytes()[0];
            }
        }));
        sha256.push(timed(|| {
            for _ in 0..records {
                sink ^= Sha256::digest(std::hint::black_box(encoded.as_bytes()))[0];
            }
        }));
    }
    std::hint::black_box(sink);
    let (md5, base64, sha256) = (median(md5), median(base64), median(sha256));
    println!(
        "{}",
        json!({
            "record_bytes": size,
            "md5_seconds": md5,
            "base64_seconds": base64,
            "sha256_seconds": sha256,
            "total_seconds": md5 + base64 + sha256,
        })
    );
}
