//! Sends one batch with PutRecords, retrying only what failed, until it is stored or given up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::backoff::{WHILE_SHUTTING_DOWN, jittered_delay};
use super::client::{EntryResult, KinesisApi};
use super::health::Operation;
use super::metrics::{ErrorCodeLabel, ProducerMetrics, ResultLabel};
use super::record::KinesisRecord;

/// What every send job shares.
pub(super) struct SendContext {
    pub client: Arc<dyn KinesisApi>,
    pub stream: String,
    pub metrics: Arc<ProducerMetrics>,
    pub max_retries: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
    /// Set when the producer shuts down: retries stop waiting out long backoffs, since the
    /// shutdown deadline is what bounds them now.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// What the producer must still act on after a batch is settled.
#[derive(Default)]
pub(super) struct SendOutcome {
    /// Aggregates stored on another shard than predicted, with the shard they landed on.
    pub wrong_shard: Vec<(String, KinesisRecord)>,
    /// Records Kinesis throttled: the producer holds them back per shard (see `throttled`).
    pub throttled: Vec<KinesisRecord>,
    /// Shards that stored at least one record of the batch.
    pub stored_shards: Vec<String>,
    /// User records of the batch that were sent again after a throttle (now settled).
    pub after_throttle: usize,
}

pub(super) const DROP_RETRIES_EXHAUSTED: &str = "retries_exhausted";
pub(super) const DROP_PERMANENT_ERROR: &str = "permanent_error";

/// Sends `pending` until every record is stored, dropped, or throttled. Throttled records go
/// back to the producer, which holds them per shard: throttling spends no retry and holds no
/// connection. Other failures are retried here, holding the connection permit while backing
/// off, so that an outage slows the producer instead of piling up retries in memory.
pub(super) async fn send_batch(
    ctx: Arc<SendContext>,
    mut pending: Vec<KinesisRecord>,
    _connection: OwnedSemaphorePermit,
) -> SendOutcome {
    let metrics = &ctx.metrics;
    let mut outcome = SendOutcome {
        after_throttle: pending
            .iter()
            .filter(|r| r.after_throttle)
            .map(|r| r.user_records.len())
            .sum(),
        ..SendOutcome::default()
    };
    let mut retry = 0u32;
    loop {
        metrics.in_flight_requests.inc();
        metrics
            .put_records_request_records
            .observe(pending.len() as f64);
        metrics.put_records_request_bytes.observe(
            pending
                .iter()
                .map(KinesisRecord::billed_size)
                .sum::<usize>() as f64,
        );
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            ctx.request_timeout,
            ctx.client.put_records(&ctx.stream, &pending),
        )
        .await;
        metrics
            .put_records_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.in_flight_requests.dec();

        let mut failed: Vec<(KinesisRecord, String)> = Vec::new();
        match result {
            Err(_elapsed) => {
                count_call(metrics, "error");
                let message = format!("no answer within {:?}", ctx.request_timeout);
                metrics
                    .health
                    .failed(Operation::PutRecords, "Timeout", &message, true);
                failed.extend(pending.drain(..).map(|r| (r, "Timeout".to_string())));
            }
            Ok(Err(error)) if error.retryable && is_throttling(&error.code) => {
                count_call(metrics, "error");
                tracing::debug!(code = %error.code, message = %error.message, "PutRecords throttled");
                throttled(metrics, &error.code, pending.len());
                outcome.throttled.append(&mut pending);
            }
            Ok(Err(error)) if error.retryable => {
                count_call(metrics, "error");
                tracing::debug!(code = %error.code, message = %error.message, "PutRecords failed; will retry");
                metrics
                    .health
                    .failed(Operation::PutRecords, &error.code, &error.message, true);
                failed.extend(pending.drain(..).map(|r| (r, error.code.clone())));
            }
            Ok(Err(error)) => {
                count_call(metrics, "error");
                metrics
                    .health
                    .failed(Operation::PutRecords, &error.code, &error.message, false);
                drop_records(
                    metrics,
                    DROP_PERMANENT_ERROR,
                    &error.code,
                    &error.message,
                    std::mem::take(&mut pending),
                );
                return outcome;
            }
            Ok(Ok(results)) => {
                metrics.health.succeeded();
                let mut partial = false;
                // One count per answer: the code of its first throttled entry and how many.
                let mut throttle: Option<(String, usize)> = None;
                for (record, result) in pending.drain(..).zip(results) {
                    match result {
                        EntryResult::Stored { shard_id } => {
                            let wrong = record.is_aggregated()
                                && record
                                    .predicted_shard
                                    .as_deref()
                                    .is_some_and(|p| p != shard_id);
                            if !outcome.stored_shards.contains(&shard_id) {
                                outcome.stored_shards.push(shard_id.clone());
                            }
                            if wrong {
                                outcome.wrong_shard.push((shard_id, record));
                            } else {
                                delivered(metrics, record);
                            }
                        }
                        EntryResult::Failed {
                            code,
                            message,
                            permanent: true,
                        } => {
                            partial = true;
                            drop_records(
                                metrics,
                                DROP_PERMANENT_ERROR,
                                &code,
                                &message,
                                vec![record],
                            );
                        }
                        EntryResult::Failed { code, .. } if is_throttling(&code) => {
                            partial = true;
                            throttle.get_or_insert((code, 0)).1 += 1;
                            outcome.throttled.push(record);
                        }
                        EntryResult::Failed { code, .. } => {
                            partial = true;
                            failed.push((record, code));
                        }
                    }
                }
                if let Some((code, records)) = throttle {
                    throttled(metrics, &code, records);
                }
                count_call(metrics, if partial { "partial" } else { "ok" });
            }
        }
        if failed.is_empty() {
            return outcome;
        }
        retry += 1;
        if retry > ctx.max_retries {
            let (records, codes): (Vec<_>, Vec<_>) = failed.into_iter().unzip();
            let last_code = codes.last().cloned().unwrap_or_default();
            drop_records(
                metrics,
                DROP_RETRIES_EXHAUSTED,
                &last_code,
                &format!("still failing after {} attempts", ctx.max_retries + 1),
                records,
            );
            return outcome;
        }
        for (_, code) in &failed {
            metrics
                .records_retried
                .get_or_create(&ErrorCodeLabel {
                    error_code: code.clone(),
                })
                .inc();
        }
        pending = failed.into_iter().map(|(record, _)| record).collect();
        let mut stopping = ctx.stopping.clone();
        if *stopping.borrow_and_update() {
            tokio::time::sleep(WHILE_SHUTTING_DOWN.min(ctx.base_backoff)).await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(jittered_delay(retry, ctx.base_backoff, ctx.max_backoff)) => {}
                // Shutting down: try again at once rather than sleep past the deadline.
                _ = stopping.wait_for(|stopping| *stopping) => {}
            }
        }
    }
}

/// Error codes that mean "too fast": the stream's shards, the account's API rate or KMS.
fn is_throttling(code: &str) -> bool {
    code.contains("ProvisionedThroughputExceeded")
        || code.contains("LimitExceeded")
        || code.contains("Throttl")
}

/// Counts records throttled in one answer; each will be sent again once its shard's backoff
/// has passed.
fn throttled(metrics: &ProducerMetrics, code: &str, records: usize) {
    metrics.health.throttled();
    metrics.records_throttled.inc_by(records as u64);
    metrics
        .records_retried
        .get_or_create(&ErrorCodeLabel {
            error_code: code.to_string(),
        })
        .inc_by(records as u64);
}

fn count_call(metrics: &ProducerMetrics, result: &'static str) {
    metrics
        .put_records_requests
        .get_or_create(&ResultLabel { result })
        .inc();
}

/// Counts a stored record and settles the acknowledgements of the user records inside.
fn delivered(metrics: &ProducerMetrics, record: KinesisRecord) {
    count_stored(
        metrics,
        &record.data,
        &record.partition_key,
        record.user_records.len(),
    );
    for mut user_record in record.user_records {
        user_record.settle_stored();
    }
}

/// Counts one Kinesis record stored, carrying `user_records` user records that need no resend.
pub(super) fn count_stored(
    metrics: &ProducerMetrics,
    data: &[u8],
    partition_key: &str,
    user_records: usize,
) {
    metrics.user_records_delivered.inc_by(user_records as u64);
    metrics.kinesis_records_delivered.inc();
    if data.starts_with(&super::aggregator::MAGIC) {
        metrics.aggregated_records_delivered.inc();
    }
    metrics
        .delivered_bytes
        .inc_by((data.len() + partition_key.len()) as u64);
    metrics.health.delivered();
}

/// Counts, logs and settles user records given up on.
fn drop_records(
    metrics: &ProducerMetrics,
    reason: &str,
    code: &str,
    message: &str,
    records: Vec<KinesisRecord>,
) {
    let user_records: usize = records.iter().map(|r| r.user_records.len()).sum();
    metrics.drop_records(reason, user_records);
    tracing::error!(
        reason,
        code,
        message,
        kinesis_records = records.len(),
        user_records,
        "dropping records"
    );
    let permanent = reason == DROP_PERMANENT_ERROR;
    for mut user_record in records.into_iter().flat_map(|r| r.user_records) {
        user_record.settle_dropped(reason, permanent);
    }
}
