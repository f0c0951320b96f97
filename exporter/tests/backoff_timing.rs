//! Retry timing under tokio's paused clock: delays grow exponentially with jitter and stop
//! growing at max_backoff, measured on the virtual clock, with no real sleeping.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use kinesis_exporter::config::KplConfig;
use kinesis_exporter::kpl::shard_map::Shard;
use kinesis_exporter::kpl::{
    EntryResult, KinesisApi, KinesisRecord, Producer, ProducerMetrics, RequestError, UserRecord,
};
use tokio::time::Instant;

/// Fails the first `failures` calls with `code` (retryable), then stores everything; notes
/// when each call came.
struct Throttled {
    failures: usize,
    code: &'static str,
    calls: Mutex<Vec<Instant>>,
}

impl KinesisApi for Throttled {
    fn put_records<'a>(
        &'a self,
        _stream: &'a str,
        records: &'a [KinesisRecord],
    ) -> BoxFuture<'a, Result<Vec<EntryResult>, RequestError>> {
        Box::pin(async move {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Instant::now());
            if calls.len() <= self.failures {
                return Err(RequestError {
                    retryable: true,
                    code: self.code.into(),
                    message: "slow down".into(),
                });
            }
            Ok(records
                .iter()
                .map(|_| EntryResult::Stored {
                    shard_id: "shardId-0".into(),
                })
                .collect())
        })
    }

    fn list_shards<'a>(
        &'a self,
        _stream: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Shard>, RequestError>> {
        Box::pin(async {
            Ok(vec![Shard {
                id: "shardId-0".into(),
                start: 0,
                end: u128::MAX,
            }])
        })
    }
}

/// Fails 8 calls with `code`, then checks the gaps between the 9 calls: delay n in the upper
/// half of min(100 ms x 2^(n-1), 2 s). The record is sent while the producer runs (a 10 ms
/// linger); at shutdown retries no longer wait out their backoff.
async fn backs_off_exponentially_with_jitter_up_to_the_cap(code: &'static str) {
    let client = Arc::new(Throttled {
        failures: 8,
        code,
        calls: Mutex::default(),
    });
    let kpl = KplConfig {
        max_retries: 10,
        max_backoff_seconds: 2,
        linger_ms: 10,
        ..KplConfig::default()
    };
    let config = kinesis_exporter::server::producer_config("stream", &kpl);
    assert_eq!(config.base_backoff, Duration::from_millis(100));
    let metrics = Arc::new(ProducerMetrics::default());
    let producer = Producer::start(config, client.clone(), metrics.clone());
    producer
        .handle()
        .put(UserRecord::new("k", b"x".to_vec()))
        .await
        .unwrap();
    while client.calls.lock().unwrap().len() < 9 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    producer.shutdown(Duration::from_secs(3600)).await;

    let calls = client.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 9, "8 failed attempts, then success");
    let cap = Duration::from_secs(2);
    for (retry, pair) in (1u32..).zip(calls.windows(2)) {
        let gap = pair[1] - pair[0];
        let ceiling = (Duration::from_millis(100) * 2u32.pow(retry - 1)).min(cap);
        assert!(
            gap >= ceiling / 2 && gap <= ceiling,
            "{code}, retry {retry}: waited {gap:?}, expected within [{:?}, {ceiling:?}]",
            ceiling / 2
        );
    }
    assert_eq!(metrics.user_records_delivered.get(), 1);
    assert_eq!(metrics.retried(code), 8);
}

/// A 5xx: retried by its send job, which keeps its connection while it backs off.
#[tokio::test(start_paused = true)]
async fn failed_sends_back_off_exponentially_with_jitter_up_to_the_cap() {
    backs_off_exponentially_with_jitter_up_to_the_cap("InternalFailure").await;
}

/// Throttling: held back by its shard, whose own backoff follows the same curve.
#[tokio::test(start_paused = true)]
async fn a_throttled_shard_backs_off_exponentially_with_jitter_up_to_the_cap() {
    backs_off_exponentially_with_jitter_up_to_the_cap("ProvisionedThroughputExceededException")
        .await;
}

/// A lone record is sent after the linger (100 ms by default), not after the seed's
/// flush_interval_seconds (5 s): the last spans of a burst arrive in well under a second.
#[tokio::test(start_paused = true)]
async fn a_partial_batch_is_sent_after_the_linger() {
    let client = Arc::new(Throttled {
        failures: 0,
        code: "",
        calls: Mutex::default(),
    });
    let kpl = KplConfig::default();
    assert_eq!((kpl.linger_ms, kpl.flush_interval_seconds), (100, 5));
    let config = kinesis_exporter::server::producer_config("stream", &kpl);
    let producer = Producer::start(config, client.clone(), Arc::new(ProducerMetrics::default()));
    tokio::time::sleep(Duration::from_secs(1)).await; // past start-up (the shard map)
    let put_at = Instant::now();
    producer
        .handle()
        .put(UserRecord::new("k", b"x".to_vec()))
        .await
        .unwrap();
    while client.calls.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = client.calls.lock().unwrap()[0] - put_at;
    assert!(
        waited <= Duration::from_millis(100),
        "sent after {waited:?}"
    );
    producer.shutdown(Duration::from_secs(10)).await;
}

/// The linger runs from the first record buffered, not on a clock of its own: a record put
/// 60 ms after it rides in the same request, sent exactly the linger after the first.
#[tokio::test(start_paused = true)]
async fn the_linger_runs_from_the_first_buffered_record() {
    let client = Arc::new(Throttled {
        failures: 0,
        code: "",
        calls: Mutex::default(),
    });
    let config = kinesis_exporter::server::producer_config("stream", &KplConfig::default());
    let linger = config.linger;
    let producer = Producer::start(config, client.clone(), Arc::new(ProducerMetrics::default()));
    // Past start-up (the shard map), at a time no multiple of the linger after it.
    tokio::time::sleep(Duration::from_millis(1030)).await;
    let first_at = Instant::now();
    let handle = producer.handle();
    handle
        .put(UserRecord::new("a", b"x".to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    handle
        .put(UserRecord::new("b", b"y".to_vec()))
        .await
        .unwrap();
    while client.calls.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(linger * 3).await;
    let calls = client.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "both records in one request");
    assert_eq!(
        calls[0] - first_at,
        linger,
        "sent the linger after the first record"
    );
    producer.shutdown(Duration::from_secs(10)).await;
}
