//! The producer against faults: partial failures, throttling, 5xx, stalls, permanent errors,
//! bounded concurrency, back-pressure, shutdown and resharding. Kinesis is a stand-in speaking
//! the JSON 1.1 protocol, reached through the real AWS SDK client.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use kinesis_exporter::aws::SdkKinesis;
use kinesis_exporter::config::KplConfig;
use kinesis_exporter::kpl::aggregator::deaggregate;
use kinesis_exporter::kpl::{
    Producer, ProducerConfig, ProducerHandle, ProducerMetrics, PutError, UserRecord,
    partition_key_hash,
};
use support::standin::{Entry, Reply, StandIn};

const THROTTLED: &str = "ProvisionedThroughputExceededException";

/// Settings for fast tests: small backoff, short timeouts, no periodic flush.
fn producer_config(tweak: impl FnOnce(&mut KplConfig)) -> ProducerConfig {
    let mut kpl = KplConfig {
        flush_interval_seconds: 3600,
        linger_ms: 3_600_000,
        ..KplConfig::default()
    };
    tweak(&mut kpl);
    let mut config = kinesis_exporter::server::producer_config("stream", &kpl);
    config.base_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(40);
    config.request_timeout = Duration::from_millis(500);
    config
}

/// One user record per Kinesis record, so entries map 1:1 to what the test put.
fn unaggregated(kpl: &mut KplConfig) {
    kpl.aggregate_batch_count = 1;
}

async fn start(
    standin: &StandIn,
    config: ProducerConfig,
) -> (Producer, ProducerHandle, Arc<ProducerMetrics>) {
    let sdk = aws_config::defaults(kinesis_exporter::aws::behavior_version())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await;
    let client = SdkKinesis::new(&sdk, Some(&standin.url()), config.request_timeout)
        .await
        .expect("the client builds");
    let metrics = Arc::new(ProducerMetrics::default());
    let producer = Producer::start(config, Arc::new(client), metrics.clone());
    let handle = producer.handle();
    (producer, handle, metrics)
}

fn numbered(i: usize) -> UserRecord {
    UserRecord::new(format!("key-{i}"), format!("record-{i}").into_bytes())
}

fn entries_of(records: &[UserRecord]) -> Vec<Entry> {
    records
        .iter()
        .map(|r| Entry {
            partition_key: r.partition_key.clone(),
            explicit_hash_key: None,
            data: r.data.to_vec(),
        })
        .collect()
}

fn sorted(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| (&a.partition_key, &a.data).cmp(&(&b.partition_key, &b.data)));
    entries
}

#[tokio::test]
async fn only_failed_entries_are_resent() {
    let standin = StandIn::start(|call, entries| {
        Reply::Entries(
            (0..entries.len())
                .map(|i| match (call, i % 3) {
                    (0, 0) => Some(THROTTLED),
                    (0, 1) => Some("InternalFailure"),
                    _ => None,
                })
                .collect(),
        )
    })
    .await;
    let (producer, handle, metrics) = start(&standin, producer_config(unaggregated)).await;
    let records: Vec<_> = (0..30).map(numbered).collect();
    for r in &records {
        handle.put(r.clone()).await.unwrap();
    }
    drop(handle);
    assert_eq!(
        producer.shutdown(Duration::from_secs(10)).await.abandoned,
        0
    );

    // The entries that failed are retried at once; the throttled ones wait for their shard's
    // backoff, so they go in a call of their own.
    let calls = standin.calls();
    assert_eq!(calls.len(), 3, "one call, then one retry of each kind");
    assert_eq!(calls[0], entries_of(&records));
    let failed_with = |kind: usize| -> Vec<Entry> {
        calls[0]
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == kind)
            .map(|(_, e)| e.clone())
            .collect()
    };
    let mut retries = [calls[1].clone(), calls[2].clone()];
    retries.sort_by_key(|call| call[0].partition_key != calls[0][0].partition_key);
    assert_eq!(
        retries[0],
        failed_with(0),
        "the throttled entries, in order"
    );
    assert_eq!(retries[1], failed_with(1), "the failed entries, in order");
    assert_eq!(
        sorted(standin.stored()),
        sorted(entries_of(&records)),
        "each stored once"
    );
    assert_eq!(metrics.retried(THROTTLED), 10);
    assert_eq!(metrics.retried("InternalFailure"), 10);
    assert_eq!(
        metrics.records_throttled.get(),
        10,
        "throttled entries, not 5xx"
    );
    let health = metrics.health.report(std::time::Instant::now());
    assert!(health.last_throttle_age_seconds.is_some());
    assert!(health.last_delivery_age_seconds.is_some());
    assert_eq!(
        health.last_error, None,
        "entry failures are not call failures"
    );
    assert_eq!(metrics.user_records_delivered.get(), 30);
    assert_eq!(metrics.dropped_total(), 0);
    assert_eq!((metrics.calls("partial"), metrics.calls("ok")), (1, 2));
}

#[tokio::test]
async fn request_level_throttling_and_5xx_are_retried() {
    let standin = StandIn::start(|call, entries| match call {
        0 => Reply::Error(500, "InternalFailure"),
        1 => Reply::Error(400, THROTTLED),
        2 => Reply::Error(400, "KMSThrottlingException"),
        3 => Reply::Error(503, "ServiceUnavailable"),
        _ => Reply::Entries(vec![None; entries.len()]),
    })
    .await;
    let (producer, handle, metrics) = start(&standin, producer_config(unaggregated)).await;
    let records: Vec<_> = (0..5).map(numbered).collect();
    for r in &records {
        handle.put(r.clone()).await.unwrap();
    }
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;

    let calls = standin.calls();
    assert_eq!(calls.len(), 5);
    assert!(calls.iter().all(|c| *c == entries_of(&records)));
    assert_eq!(sorted(standin.stored()), sorted(entries_of(&records)));
    assert_eq!(metrics.calls("error"), 4);
    assert_eq!(metrics.dropped_total(), 0);
}

#[tokio::test]
async fn a_stalled_request_times_out_and_is_retried() {
    let standin = StandIn::start(|call, entries| match call {
        0 => Reply::Stall,
        _ => Reply::Entries(vec![None; entries.len()]),
    })
    .await;
    let (producer, handle, metrics) = start(&standin, producer_config(unaggregated)).await;
    let records: Vec<_> = (0..3).map(numbered).collect();
    for r in &records {
        handle.put(r.clone()).await.unwrap();
    }
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;

    assert_eq!(standin.calls().len(), 2);
    assert_eq!(sorted(standin.stored()), sorted(entries_of(&records)));
    assert_eq!(metrics.retried("Timeout"), 3);
    assert_eq!(metrics.dropped_total(), 0);
}

#[tokio::test]
async fn drops_are_counted_exactly_after_max_retries() {
    let standin = StandIn::start(|_, entries| {
        Reply::Entries(
            entries
                .iter()
                .map(|e| {
                    e.partition_key
                        .starts_with("doomed")
                        .then_some("InternalFailure")
                })
                .collect(),
        )
    })
    .await;
    let config = producer_config(|kpl| {
        unaggregated(kpl);
        kpl.max_retries = 3;
    });
    let (producer, handle, metrics) = start(&standin, config).await;
    for i in 0..10 {
        handle.put(numbered(i)).await.unwrap();
    }
    for i in 0..4 {
        handle
            .put(UserRecord::new(format!("doomed-{i}"), vec![i as u8]))
            .await
            .unwrap();
    }
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;

    let mut sends: HashMap<String, usize> = HashMap::new();
    for entry in standin.calls().into_iter().flatten() {
        *sends.entry(entry.partition_key).or_default() += 1;
    }
    for i in 0..4 {
        assert_eq!(
            sends[&format!("doomed-{i}")],
            4,
            "1 attempt + max_retries 3"
        );
    }
    assert_eq!(metrics.dropped("retries_exhausted"), 4);
    assert_eq!(metrics.dropped_total(), 4);
    assert_eq!(metrics.user_records_delivered.get(), 10);
    assert_eq!(metrics.unsettled(), 0);
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    for code in [
        "ResourceNotFoundException",
        "AccessDeniedException",
        "ValidationException",
    ] {
        let standin = StandIn::start(move |_, _| Reply::Error(400, code)).await;
        let (producer, handle, metrics) = start(&standin, producer_config(unaggregated)).await;
        for i in 0..6 {
            handle.put(numbered(i)).await.unwrap();
        }
        drop(handle);
        producer.shutdown(Duration::from_secs(10)).await;
        assert_eq!(standin.calls().len(), 1, "{code} must not be retried");
        assert_eq!(metrics.dropped("permanent_error"), 6, "{code}");
        assert_eq!(metrics.unsettled(), 0);
        // What /status reports, and so what the operator shows the team.
        let health = metrics.health.report(std::time::Instant::now());
        let error = health.last_error.expect("the failure is reported");
        assert_eq!((error.code.as_str(), error.retryable), (code, false));
        assert_eq!(health.last_drop.unwrap().reason, "permanent_error");
        assert_eq!(health.last_delivery_age_seconds, None);
    }
}

#[tokio::test]
async fn max_connections_is_reached_and_never_exceeded() {
    let standin = StandIn::start(|_, entries| Reply::Entries(vec![None; entries.len()])).await;
    standin.close_gate();
    let config = producer_config(|kpl| {
        unaggregated(kpl);
        kpl.batch_count = 1;
        kpl.max_connections = 4;
    });
    let (producer, handle, metrics) = start(&standin, config).await;
    for i in 0..20 {
        handle.put(numbered(i)).await.unwrap();
    }
    standin
        .wait_for_concurrent(4, Duration::from_secs(10))
        .await;
    // The producer holds one more batch while it waits for a connection; the other 15 records
    // stay in the backlog. Had it sent more than 4, fewer would be left there.
    tokio::time::timeout(Duration::from_secs(10), async {
        while handle.backlog() != 15 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the producer stops taking records while all connections are busy");
    assert_eq!(standin.max_concurrent(), 4);
    assert_eq!(metrics.in_flight_requests.get(), 4);

    standin.open_gate();
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;
    assert_eq!(standin.stored().len(), 20);
    assert_eq!(standin.max_concurrent(), 4);
}

#[tokio::test]
async fn back_pressure_reaches_the_caller_when_the_backlog_is_full() {
    let standin = StandIn::start(|_, entries| Reply::Entries(vec![None; entries.len()])).await;
    standin.close_gate();
    let mut config = producer_config(|kpl| {
        unaggregated(kpl);
        kpl.batch_count = 1;
        kpl.max_connections = 1;
        kpl.backlog_count = 5;
    });
    // The held call must stay held: a timed-out attempt that Kinesis then stores anyway would
    // be stored twice once retried (at least once), which is not what this test is about.
    config.request_timeout = Duration::from_secs(30);
    let (producer, handle, _metrics) = start(&standin, config).await;
    let mut accepted = 0;
    for i in 0..100 {
        match tokio::time::timeout(Duration::from_secs(1), handle.put(numbered(i))).await {
            Ok(result) => {
                result.unwrap();
                accepted += 1;
            }
            Err(_) => break,
        }
    }
    // One record in flight, one waiting for the connection, five in the backlog.
    assert_eq!(accepted, 7);
    match handle.try_put(numbered(999)) {
        Err(PutError::Full(record)) => assert_eq!(record, numbered(999)),
        other => panic!("expected Full, got {other:?}"),
    }
    standin.open_gate();
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        sorted(standin.stored()),
        sorted(entries_of(&(0..7).map(numbered).collect::<Vec<_>>()))
    );
}

#[tokio::test]
async fn shutdown_flushes_every_buffered_record() {
    let standin = StandIn::start(|_, entries| Reply::Entries(vec![None; entries.len()])).await;
    let (producer, handle, metrics) = start(&standin, producer_config(|_| {})).await;
    let records: Vec<_> = (0..100)
        .map(|i| {
            UserRecord::new(
                format!("key-{}", i % 10),
                format!("record-{i}").into_bytes(),
            )
        })
        .collect();
    for r in &records {
        handle.put(r.clone()).await.unwrap();
    }
    drop(handle);
    let report = producer.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.abandoned, 0);

    let mut got = Vec::new();
    for entry in standin.stored() {
        match deaggregate(&entry.data) {
            Ok(subs) => got.extend(subs.into_iter().map(|(pk, _, data)| (pk, data.to_vec()))),
            Err(_) => got.push((entry.partition_key, entry.data)),
        }
    }
    got.sort();
    let mut want: Vec<_> = records
        .iter()
        .map(|r| (r.partition_key.clone(), r.data.to_vec()))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert!(standin.stored().len() < 100, "records were aggregated");
    assert_eq!(metrics.user_records_delivered.get(), 100);
    assert_eq!(
        metrics.kinesis_records_delivered.get(),
        standin.stored().len() as u64
    );
}

#[tokio::test]
async fn records_unsent_at_the_shutdown_deadline_are_counted_as_dropped() {
    let standin = StandIn::start(|_, entries| Reply::Entries(vec![None; entries.len()])).await;
    standin.close_gate();
    let (producer, handle, metrics) = start(&standin, producer_config(unaggregated)).await;
    for i in 0..3 {
        handle.put(numbered(i)).await.unwrap();
    }
    drop(handle);
    let report = producer.shutdown(Duration::from_millis(300)).await;
    assert_eq!(report.abandoned, 3);
    assert_eq!(metrics.dropped("shutdown_deadline"), 3);
    assert_eq!(metrics.unsettled(), 0);
}

#[tokio::test]
async fn an_aggregate_on_an_unexpected_shard_refreshes_the_map_and_resends_what_is_outside() {
    const MID: u128 = u128::MAX / 2;
    let standin = StandIn::start(|_, entries| Reply::Entries(vec![None; entries.len()])).await;
    standin.set_shards(vec![
        ("shardId-0", 0, MID),
        ("shardId-1", MID + 1, u128::MAX),
    ]);
    standin.misroute_next_aggregates_to("shardId-1");
    let (producer, handle, metrics) = start(&standin, producer_config(|_| {})).await;
    let records: Vec<_> = (0..200)
        .map(|i| {
            UserRecord::new(
                format!("key-{}", i % 40),
                format!("record-{i}").into_bytes(),
            )
        })
        .collect();
    for r in &records {
        handle.put(r.clone()).await.unwrap();
    }
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;

    let on_shard_0 = records
        .iter()
        .filter(|r| partition_key_hash(&r.partition_key) <= MID)
        .count();
    assert!(on_shard_0 > 0 && on_shard_0 < 200);
    assert_eq!(
        standin.list_shards_calls(),
        2,
        "the map is read at start and refreshed once"
    );
    assert_eq!(metrics.wrong_shard_resends.get(), on_shard_0 as u64);
    assert_eq!(metrics.user_records_delivered.get(), 200);

    // Every record arrives; the resent ones arrive twice (once misplaced, once right).
    let mut arrivals: HashMap<Vec<u8>, usize> = HashMap::new();
    for entry in standin.stored() {
        for (_, _, data) in deaggregate(&entry.data).unwrap() {
            *arrivals.entry(data.to_vec()).or_default() += 1;
        }
    }
    for r in &records {
        let expected = if partition_key_hash(&r.partition_key) <= MID {
            2
        } else {
            1
        };
        assert_eq!(arrivals[&r.data.to_vec()], expected, "{}", r.partition_key);
    }
}

#[tokio::test]
async fn oversized_and_badly_keyed_records_are_refused_and_counted() {
    let standin = StandIn::start(|_, entries| Reply::Entries(vec![None; entries.len()])).await;
    let (producer, handle, metrics) = start(&standin, producer_config(|_| {})).await;
    let too_big = UserRecord::new("k", vec![0u8; 1024 * 1024]);
    assert!(matches!(
        handle.put(too_big).await,
        Err(PutError::Invalid(_))
    ));
    let no_key = UserRecord::new("", vec![1]);
    assert!(matches!(
        handle.put(no_key).await,
        Err(PutError::Invalid(_))
    ));
    let long_key = UserRecord::new("k".repeat(257), vec![1]);
    assert!(matches!(
        handle.put(long_key).await,
        Err(PutError::Invalid(_))
    ));
    drop(handle);
    producer.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metrics.dropped("record_too_large"), 1);
    assert_eq!(metrics.dropped("invalid_partition_key"), 2);
    assert!(standin.calls().is_empty());
}

#[tokio::test]
async fn without_a_shard_map_aggregates_never_mix_partition_keys() {
    let standin = StandIn::start(|_, entries| Reply::Entries(vec![None; entries.len()])).await;
    standin.deny_list_shards();
    let (producer, handle, metrics) = start(&standin, producer_config(|_| {})).await;
    let records: Vec<_> = (0..300)
        .map(|i| UserRecord::new(format!("key-{}", i % 7), format!("record-{i}").into_bytes()))
        .collect();
    for r in &records {
        handle.put(r.clone()).await.unwrap();
    }
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;

    assert_eq!(standin.list_shards_calls(), 1);
    assert_eq!(metrics.user_records_delivered.get(), 300);
    let stored = standin.stored();
    assert_eq!(stored.len(), 7, "one aggregate per partition key");
    let mut got = 0;
    for entry in stored {
        let subs = deaggregate(&entry.data).unwrap();
        assert!(subs.iter().all(|(pk, _, _)| *pk == entry.partition_key));
        assert_eq!(
            entry.explicit_hash_key, None,
            "routed by its own partition key"
        );
        got += subs.len();
    }
    assert_eq!(got, 300);
}

/// Waits until `condition` holds, looking every few milliseconds, for 10 s at most.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Every user record's data in what the stand-in stored, with the shard each copy landed on.
fn stored_data(standin: &StandIn) -> Vec<(Vec<u8>, Option<String>, String)> {
    standin
        .stored()
        .into_iter()
        .flat_map(|entry| match deaggregate(&entry.data) {
            Ok(subs) => subs
                .into_iter()
                .map(|(pk, _, data)| (data.to_vec(), entry.explicit_hash_key.clone(), pk))
                .collect(),
            Err(_) => vec![(entry.data, entry.explicit_hash_key, entry.partition_key)],
        })
        .collect()
}

#[tokio::test]
async fn a_slow_shard_map_read_never_holds_the_producer() {
    const MID: u128 = u128::MAX / 2;
    let standin = StandIn::start(|_, entries| Reply::Entries(vec![None; entries.len()])).await;
    standin.set_shards(vec![
        ("shardId-0", 0, MID),
        ("shardId-1", MID + 1, u128::MAX),
    ]);
    let mut config = producer_config(|kpl| {
        kpl.linger_ms = 20;
        kpl.flush_interval_seconds = 1;
    });
    // A held ListShards must stay held, not time out.
    config.request_timeout = Duration::from_secs(30);
    let (producer, handle, metrics) = start(&standin, config).await;
    let map_reads = |result: &'static str| {
        metrics
            .shard_map_refreshes
            .get_or_create(&kinesis_exporter::kpl::metrics::ResultLabel { result })
            .get()
    };
    until("the first read of the shard map", || map_reads("ok") == 1).await;
    // The first aggregates land "wrong", and the refresh that follows is held by Kinesis.
    standin.hold_list_shards();
    standin.misroute_next_aggregates_to("shardId-1");
    let first: Vec<_> = (0..100)
        .map(|i| UserRecord::new(format!("key-{}", i % 20), format!("first-{i}").into_bytes()))
        .collect();
    for r in &first {
        handle.put(r.clone()).await.unwrap();
    }
    standin
        .wait_for_list_shards_calls(2, Duration::from_secs(10))
        .await;
    // While the read is held, later records still flow: the producer does not wait for it.
    let later: Vec<_> = (0..100)
        .map(|i| UserRecord::new(format!("key-{}", i % 20), format!("later-{i}").into_bytes()))
        .collect();
    for r in &later {
        handle.put(r.clone()).await.unwrap();
    }
    until("the later records stored while ListShards is held", || {
        let stored: Vec<_> = stored_data(&standin)
            .into_iter()
            .map(|(d, _, _)| d)
            .collect();
        later.iter().all(|r| stored.contains(&r.data.to_vec()))
    })
    .await;
    assert_eq!(
        metrics.wrong_shard_resends.get(),
        0,
        "decided only once the map is read"
    );
    standin.release_list_shards();
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;
    let on_shard_0 = first
        .iter()
        .filter(|r| partition_key_hash(&r.partition_key) <= MID)
        .count();
    assert_eq!(metrics.wrong_shard_resends.get(), on_shard_0 as u64);
    assert_eq!(metrics.user_records_delivered.get(), 200);
    assert_eq!(metrics.dropped_total(), 0);
}

#[tokio::test]
async fn a_paged_list_shards_gives_the_whole_map() {
    let standin = StandIn::start(|_, entries| Reply::Entries(vec![None; entries.len()])).await;
    let fifth = u128::MAX / 5;
    let shards: Vec<(String, u128, u128)> = (0..5u128)
        .map(|i| {
            let end = if i == 4 {
                u128::MAX
            } else {
                fifth * (i + 1) - 1
            };
            (format!("shardId-{i}"), fifth * i, end)
        })
        .collect();
    standin.set_shards(
        shards
            .iter()
            .map(|(id, s, e)| (id.as_str(), *s, *e))
            .collect(),
    );
    standin.page_list_shards(2);
    let (producer, handle, metrics) = start(&standin, producer_config(|_| {})).await;
    for i in 0..500 {
        let r = UserRecord::new(
            format!("key-{}", i % 100),
            format!("record-{i}").into_bytes(),
        );
        handle.put(r).await.unwrap();
    }
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;

    assert_eq!(standin.list_shards_calls(), 3, "5 shards, 2 per page");
    assert_eq!(metrics.wrong_shard_resends.get(), 0);
    assert_eq!(metrics.user_records_delivered.get(), 500);
    // One aggregate per shard, each routed to the start of its shard and holding only that
    // shard's records: the map had all five.
    let stored = standin.stored();
    let mut starts: Vec<u128> = stored
        .iter()
        .map(|e| e.explicit_hash_key.as_deref().unwrap().parse().unwrap())
        .collect();
    starts.sort();
    starts.dedup();
    assert_eq!(
        starts,
        shards.iter().map(|(_, s, _)| *s).collect::<Vec<_>>()
    );
    for (data, ehk, pk) in stored_data(&standin) {
        let start: u128 = ehk.unwrap().parse().unwrap();
        let (_, s, e) = shards.iter().find(|(_, s, _)| *s == start).unwrap();
        let hash = partition_key_hash(&pk);
        assert!(*s <= hash && hash <= *e, "{:?} outside its shard", data);
    }
}

#[tokio::test]
async fn several_misrouted_batches_in_flight_are_all_settled() {
    const MID: u128 = u128::MAX / 2;
    let standin = StandIn::start(|_, entries| Reply::Entries(vec![None; entries.len()])).await;
    standin.set_shards(vec![
        ("shardId-0", 0, MID),
        ("shardId-1", MID + 1, u128::MAX),
    ]);
    let config = producer_config(|kpl| {
        kpl.aggregate_batch_count = 10;
        kpl.batch_count = 2;
        kpl.max_connections = 4;
    });
    let (producer, handle, metrics) = start(&standin, config).await;
    standin.misroute_aggregates_to("shardId-1", 4);
    standin.close_gate();
    let records: Vec<_> = (0..160)
        .map(|i| {
            UserRecord::new(
                format!("key-{}", i % 16),
                format!("record-{i}").into_bytes(),
            )
        })
        .collect();
    let putter = tokio::spawn({
        let records = records.clone();
        async move {
            for r in records {
                handle.put(r).await.unwrap();
            }
        }
    });
    // Four PutRecords calls held at once, all to be answered "landed on shardId-1".
    standin
        .wait_for_concurrent(4, Duration::from_secs(10))
        .await;
    standin.open_gate();
    putter.await.unwrap();
    producer.shutdown(Duration::from_secs(10)).await;

    assert_eq!(metrics.user_records_delivered.get(), 160);
    assert_eq!(metrics.dropped_total(), 0);
    assert!(metrics.wrong_shard_resends.get() > 0);
    // Every record is stored at least once as its shard's own (routed into its range).
    let stored = stored_data(&standin);
    for r in &records {
        let own_shard_start = if partition_key_hash(&r.partition_key) <= MID {
            0
        } else {
            MID + 1
        };
        assert!(
            stored.iter().any(|(d, ehk, _)| *d == r.data.to_vec()
                && ehk.as_deref() == Some(own_shard_start.to_string().as_str())),
            "{} never stored on its own shard",
            r.partition_key
        );
    }
}

/// Partition keys that Kinesis routes to the lower or the upper half of the hash key space.
fn keys_in_half(upper: bool, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("key-{i}"))
        .filter(|k| (partition_key_hash(k) > u128::MAX / 2) == upper)
        .take(n)
        .collect()
}

/// Two shards; the stand-in throttles every entry routed to the lower one while `throttling`
/// is set, and stores everything else.
async fn one_shard_throttled(throttling: Arc<std::sync::atomic::AtomicBool>) -> StandIn {
    let standin = StandIn::start(move |_, entries| {
        let throttle = throttling.load(std::sync::atomic::Ordering::SeqCst);
        Reply::Entries(
            entries
                .iter()
                .map(|e| {
                    let hash = e
                        .explicit_hash_key
                        .as_ref()
                        .map(|h| h.parse::<u128>().unwrap())
                        .unwrap_or_else(|| partition_key_hash(&e.partition_key));
                    (throttle && hash <= u128::MAX / 2).then_some(THROTTLED)
                })
                .collect(),
        )
    })
    .await;
    standin.set_shards(vec![
        ("shardId-000000000000", 0, u128::MAX / 2),
        ("shardId-000000000001", u128::MAX / 2 + 1, u128::MAX),
    ]);
    standin
}

#[tokio::test]
async fn a_throttled_shard_holds_no_connection_and_spends_no_retry_while_the_others_flow() {
    let throttling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let standin = one_shard_throttled(throttling.clone()).await;
    // One connection and no retries: before throttled records were held per shard, the
    // throttled shard's records were dropped at once, or, with retries, kept the only
    // connection backing off while the other shard's records waited.
    let mut config = producer_config(|kpl| {
        unaggregated(kpl);
        kpl.max_connections = 1;
        kpl.max_retries = 0;
        kpl.batch_count = 10;
    });
    config.linger = Duration::from_millis(10);
    let (producer, handle, metrics) = start(&standin, config).await;
    let hot: Vec<_> = keys_in_half(false, 20)
        .into_iter()
        .map(|k| UserRecord::new(k, b"hot".to_vec()))
        .collect();
    let cold: Vec<_> = keys_in_half(true, 200)
        .into_iter()
        .map(|k| UserRecord::new(k, b"cold".to_vec()))
        .collect();
    for r in hot.iter().chain(&cold) {
        handle.put(r.clone()).await.unwrap();
    }
    until("every record of the other shard stored", || {
        standin.stored().len() == cold.len()
    })
    .await;
    until("the throttled shard tried again", || {
        metrics.records_throttled.get() >= 2 * hot.len() as u64
    })
    .await;
    assert_eq!(metrics.dropped_total(), 0, "throttling drops nothing");
    until("the throttled shard's records held", || {
        metrics.throttled_held.get() == hot.len() as i64
    })
    .await;

    throttling.store(false, std::sync::atomic::Ordering::SeqCst);
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;
    let all: Vec<_> = hot.iter().chain(&cold).cloned().collect();
    assert_eq!(sorted(standin.stored()), sorted(entries_of(&all)));
    assert_eq!(metrics.dropped_total(), 0);
    assert_eq!(metrics.unsettled(), 0);
    assert_eq!(metrics.throttled_held.get(), 0);
}

#[tokio::test]
async fn records_held_by_a_throttled_shard_push_back_on_callers() {
    let throttling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let standin = one_shard_throttled(throttling.clone()).await;
    let mut config = producer_config(|kpl| {
        unaggregated(kpl);
        kpl.backlog_count = 5;
        kpl.max_retries = 0;
    });
    config.linger = Duration::from_millis(10);
    let (producer, handle, metrics) = start(&standin, config).await;
    let hot = keys_in_half(false, 100);
    let mut accepted = Vec::new();
    for key in hot {
        let record = UserRecord::new(key, b"hot".to_vec());
        match handle.try_put(record.clone()) {
            Ok(()) => accepted.push(record),
            Err(PutError::Full(_)) => break,
            Err(e) => panic!("{e}"),
        }
        // Each record is throttled and held before the next; from the sixth on, the producer
        // takes no more and they stay in the backlog.
        let held = accepted.len().min(5);
        until("the record held or queued", || {
            metrics.throttled_held.get() as usize == held
                && handle.backlog() == accepted.len() - held
        })
        .await;
    }
    // Five held after throttling, five more in the backlog that the producer no longer reads.
    assert_eq!(
        accepted.len(),
        10,
        "the backlog is full: callers are pushed back"
    );
    assert_eq!(metrics.dropped_total(), 0);
    throttling.store(false, std::sync::atomic::Ordering::SeqCst);
    drop(handle);
    producer.shutdown(Duration::from_secs(10)).await;
    assert_eq!(sorted(standin.stored()), sorted(entries_of(&accepted)));
    assert_eq!(metrics.dropped_total(), 0);
}

#[tokio::test]
async fn shutdown_does_not_wait_out_a_long_backoff() {
    // The first call fails (a 500), the next is throttled; everything after is stored.
    let standin = StandIn::start(|call, entries| match call {
        0 => Reply::Error(500, "InternalFailure"),
        1 => Reply::Error(400, THROTTLED),
        _ => Reply::Entries(vec![None; entries.len()]),
    })
    .await;
    let mut config = producer_config(unaggregated);
    config.linger = Duration::from_millis(10);
    // Backoffs far longer than the shutdown deadline below.
    config.base_backoff = Duration::from_secs(60);
    config.max_backoff = Duration::from_secs(120);
    let (producer, handle, metrics) = start(&standin, config).await;
    let records: Vec<_> = (0..3).map(numbered).collect();
    for r in &records {
        handle.put(r.clone()).await.unwrap();
    }
    until("the first call failed", || standin.calls().len() == 1).await;
    drop(handle);
    let report = producer.shutdown(Duration::from_secs(5)).await;
    // Before, the retry slept 30-60 s and the records were dropped at the deadline.
    assert_eq!(report.abandoned, 0);
    assert_eq!(sorted(standin.stored()), sorted(entries_of(&records)));
    assert_eq!(metrics.dropped_total(), 0);
}
