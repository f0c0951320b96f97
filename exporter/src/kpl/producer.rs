//! The producer: takes user records, aggregates them per predicted shard, batches aggregates
//! into PutRecords calls and sends at most `max_connections` of those at a time.
//!
//! One task owns all buffers (no locks on the hot path). Callers talk to it through a bounded
//! channel of `backlog` records: when the task cannot keep up, callers wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use super::aggregator::{AggregateLimits, Aggregator};
use super::batcher::{Batch, Batcher};
use super::client::KinesisApi;
use super::deadline::Deadline;
use super::limits::MAX_RECORD_BYTES;
use super::metrics::ProducerMetrics;
use super::record::{InvalidRecord, KinesisRecord, UserRecord};
use super::refresher::Refresher;
use super::sender::{SendContext, SendOutcome, count_stored, send_batch};
use super::shard_map::ShardMap;
use super::throttled::Throttled;

/// Everything the producer needs to know, in its own units.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub stream_name: String,
    pub aggregate_max_count: u64,
    pub aggregate_max_bytes: usize,
    pub records_per_request: usize,
    pub request_max_bytes: usize,
    pub backlog: usize,
    /// Longest a record waits in a partial aggregate or batch: the first record buffered
    /// after a flush sets when the next flush is (the KPL's RecordMaxBufferedTime).
    pub linger: Duration,
    pub max_connections: usize,
    pub max_retries: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
    /// Shortest time between two ListShards refreshes; doubles while refreshes fail.
    pub shard_map_refresh_interval: Duration,
}

impl ProducerConfig {
    /// A Kinesis record (data + key) must fit in one record and in one request.
    fn max_record_bytes(&self) -> usize {
        MAX_RECORD_BYTES.min(self.request_max_bytes)
    }

    fn aggregate_limits(&self) -> AggregateLimits {
        AggregateLimits {
            max_count: self.aggregate_max_count,
            max_bytes: self.aggregate_max_bytes,
            max_record_bytes: self.max_record_bytes(),
        }
    }
}

/// Why a put did not take a record.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("invalid record: {0}")]
    Invalid(#[from] InvalidRecord),
    /// The backlog is full; the record is handed back.
    #[error("the producer's backlog is full")]
    Full(UserRecord),
    #[error("the producer is shutting down")]
    Closed,
    /// No room for a whole reservation before the deadline.
    #[error("the producer's backlog has no room for {0} records")]
    NoRoom(usize),
    /// More records than the whole backlog holds: they can never be admitted at once.
    #[error("{records} records are more than the whole backlog ({backlog}) holds")]
    LargerThanBacklog { records: usize, backlog: usize },
}

/// Most user records taken from the backlog per turn of the producer's loop, so that a steady
/// stream of records still lets the linger, the settling of sends and a stop be seen.
const RECEIVED_PER_TURN: usize = 128;

/// Room reserved in a producer's backlog; nothing is queued until [`Reserved::admit`], and
/// dropping it gives the room back.
pub struct Reserved<'a> {
    permits: Option<tokio::sync::mpsc::PermitIterator<'a, UserRecord>>,
    handle: &'a ProducerHandle,
}

impl Reserved<'_> {
    /// Queues `records`, exactly as many as were reserved.
    pub fn admit(self, records: Vec<UserRecord>) {
        self.handle
            .metrics
            .user_records_received
            .inc_by(records.len() as u64);
        if let Some(permits) = self.permits {
            debug_assert_eq!(permits.len(), records.len(), "admit what was reserved");
            for (permit, record) in permits.zip(records) {
                permit.send(record);
            }
        }
        self.handle.note_backlog();
    }
}

/// The cheap, cloneable side that callers put records through.
#[derive(Clone)]
pub struct ProducerHandle {
    tx: mpsc::Sender<UserRecord>,
    metrics: Arc<ProducerMetrics>,
}

impl ProducerHandle {
    /// Puts a record, waiting while the backlog is full.
    pub async fn put(&self, record: UserRecord) -> Result<(), PutError> {
        self.refuse_invalid(&record)?;
        self.tx.send(record).await.map_err(|_| PutError::Closed)?;
        self.metrics.user_records_received.inc();
        self.note_backlog();
        Ok(())
    }

    /// Puts a record if the backlog has room right now.
    pub fn try_put(&self, record: UserRecord) -> Result<(), PutError> {
        self.refuse_invalid(&record)?;
        self.tx.try_send(record).map_err(|e| match e {
            mpsc::error::TrySendError::Full(r) => PutError::Full(r),
            mpsc::error::TrySendError::Closed(_) => PutError::Closed,
        })?;
        self.metrics.user_records_received.inc();
        self.note_backlog();
        Ok(())
    }

    /// Reserves room for `n` records, waiting until `deadline` at most. Callers that must admit
    /// several batches all or nothing reserve each first and admit only when all succeeded.
    pub async fn reserve(
        &self,
        n: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Reserved<'_>, PutError> {
        if n == 0 {
            return Ok(Reserved {
                permits: None,
                handle: self,
            });
        }
        if n > self.tx.max_capacity() {
            return Err(PutError::LargerThanBacklog {
                records: n,
                backlog: self.tx.max_capacity(),
            });
        }
        match tokio::time::timeout_at(deadline, self.tx.reserve_many(n)).await {
            Ok(Ok(permits)) => Ok(Reserved {
                permits: Some(permits),
                handle: self,
            }),
            Ok(Err(_)) => Err(PutError::Closed),
            Err(_) => Err(PutError::NoRoom(n)),
        }
    }

    /// Whether Kinesis could take `record`; a refusal is counted and logged as a drop.
    pub fn accepts(&self, record: &UserRecord) -> bool {
        self.refuse_invalid(record).is_ok()
    }

    /// Refuses a record Kinesis could never take; that refusal is counted as a drop.
    fn refuse_invalid(&self, record: &UserRecord) -> Result<(), PutError> {
        record.check().map_err(|invalid| {
            self.metrics.user_records_received.inc();
            self.metrics.drop_records(invalid.reason(), 1);
            tracing::warn!(reason = invalid.reason(), error = %invalid, "rejecting user record");
            PutError::Invalid(invalid)
        })
    }

    /// Records waiting in the backlog.
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Sets the backlog gauge from the callers' side too: while the producer task waits for a
    /// connection it reads no records, and that is when the backlog fills.
    fn note_backlog(&self) {
        self.metrics.backlog.set(self.backlog() as i64);
    }

    pub fn metrics(&self) -> &Arc<ProducerMetrics> {
        &self.metrics
    }
}

/// A running producer. Dropping it without [`Producer::shutdown`] abandons what is buffered.
pub struct Producer {
    handle: ProducerHandle,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    running: Arc<AtomicBool>,
}

/// Clears the running flag when the producer task ends, however it ends.
struct RunningGuard(Arc<AtomicBool>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// User records still unsettled at the deadline; counted as dropped.
    pub abandoned: u64,
}

impl Producer {
    pub fn start(
        config: ProducerConfig,
        client: Arc<dyn KinesisApi>,
        metrics: Arc<ProducerMetrics>,
    ) -> Producer {
        let (tx, rx) = mpsc::channel(config.backlog);
        metrics.backlog_capacity.set(config.backlog as i64);
        let (stop, stopped) = oneshot::channel();
        let pipeline = Pipeline::new(config, client, metrics.clone());
        let running = Arc::new(AtomicBool::new(true));
        let guard = RunningGuard(running.clone());
        let task = tokio::spawn(async move {
            let _guard = guard;
            pipeline.run(rx, stopped).await
        });
        Producer {
            handle: ProducerHandle { tx, metrics },
            stop,
            task,
            running,
        }
    }

    /// True until the producer task ends; for readiness checks.
    pub fn running_flag(&self) -> Arc<AtomicBool> {
        self.running.clone()
    }

    pub fn handle(&self) -> ProducerHandle {
        self.handle.clone()
    }

    /// Stops taking records, flushes everything buffered and waits for in-flight requests,
    /// for at most `deadline`. What is unsettled then is counted as dropped.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let Producer {
            handle,
            stop,
            mut task,
            ..
        } = self;
        let _ = stop.send(());
        drop(handle.tx);
        let metrics = handle.metrics;
        if tokio::time::timeout(deadline, &mut task).await.is_ok() {
            return ShutdownReport { abandoned: 0 };
        }
        task.abort();
        let _ = task.await;
        let abandoned = metrics.unsettled();
        metrics.drop_records(DROP_SHUTDOWN_DEADLINE, abandoned as usize);
        tracing::error!(
            reason = DROP_SHUTDOWN_DEADLINE,
            user_records = abandoned,
            "shutdown deadline reached with records unsent; dropping them"
        );
        ShutdownReport { abandoned }
    }
}

pub(super) const DROP_SHUTDOWN_DEADLINE: &str = "shutdown_deadline";
pub(super) const DROP_RECORD_TOO_LARGE: &str = "record_too_large";

/// Which aggregate a user record joins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AggregateKey {
    /// Everything predicted for one shard (the shard map is known).
    Shard(usize),
    /// Safe mode without a shard map: records that share a partition key and hash key, which
    /// therefore always land on the same shard.
    Key(String, Option<u128>),
}

/// The state owned by the producer task.
struct Pipeline {
    config: ProducerConfig,
    limits: AggregateLimits,
    metrics: Arc<ProducerMetrics>,
    send: Arc<SendContext>,
    shard_map: Option<Arc<ShardMap>>,
    /// Reads the shard map in the background.
    refresher: Refresher,
    /// Aggregates stored on another shard than predicted, with the shard they landed on,
    /// waiting for the next read of the map to decide which of their records to send again.
    misplaced: Vec<(String, KinesisRecord)>,
    aggregators: FxHashMap<AggregateKey, Aggregator>,
    /// Records Kinesis throttled, waiting for their shard's backoff.
    throttled: Throttled,
    /// User records sent again after a throttle whose sends have not settled yet.
    throttled_in_flight: usize,
    batcher: Batcher,
    ready: Vec<Batch>,
    /// When what is buffered must be sent; disarmed while nothing is, so an idle producer sleeps.
    linger: Deadline,
    /// When the next throttled records may be sent again.
    throttled_timer: Deadline,
    connections: Arc<Semaphore>,
    jobs: JoinSet<SendOutcome>,
    /// Tells send jobs backing off that the producer is shutting down.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Pipeline {
    fn new(
        config: ProducerConfig,
        client: Arc<dyn KinesisApi>,
        metrics: Arc<ProducerMetrics>,
    ) -> Self {
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let send = Arc::new(SendContext {
            client: client.clone(),
            stream: config.stream_name.clone(),
            metrics: metrics.clone(),
            max_retries: config.max_retries,
            base_backoff: config.base_backoff,
            max_backoff: config.max_backoff,
            request_timeout: config.request_timeout,
            stopping: stopping_rx,
        });
        let refresher = Refresher::start(
            client,
            config.stream_name.clone(),
            metrics.clone(),
            config.shard_map_refresh_interval,
        );
        Pipeline {
            limits: config.aggregate_limits(),
            batcher: Batcher::new(config.records_per_request, config.request_max_bytes),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            throttled: Throttled::new(config.base_backoff, config.max_backoff),
            throttled_in_flight: 0,
            config,
            metrics,
            send,
            shard_map: None,
            refresher,
            misplaced: Vec::new(),
            aggregators: FxHashMap::default(),
            ready: Vec::new(),
            linger: Deadline::default(),
            throttled_timer: Deadline::default(),
            jobs: JoinSet::new(),
            stopping,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<UserRecord>, mut stop: oneshot::Receiver<()>) {
        // The first read is awaited (records queue meanwhile), so that aggregation starts
        // shard-aware when the map can be read at all; later reads never hold the producer.
        if self.refresher.feed.changed().await.is_ok() {
            self.map_read().await;
        }
        loop {
            // While a backlog's worth of throttled records waits, no more are taken: callers
            // wait for room and are then told to retry later, rather than being acknowledged
            // for records that would only pile up here.
            let room =
                self.throttled.user_records() + self.throttled_in_flight < self.config.backlog;
            self.throttled_timer.set(self.throttled.next_due());
            tokio::select! {
                _ = &mut stop => break,
                received = rx.recv(), if room => match received {
                    Some(record) => {
                        self.add(record).await;
                        // What else is queued is taken in the same turn (a turn polls every
                        // source of work). One at a time: the records a full connection pool
                        // holds back stay in the backlog, where callers see them.
                        for _ in 1..RECEIVED_PER_TURN {
                            let Ok(record) = rx.try_recv() else { break };
                            self.add(record).await;
                        }
                        self.metrics.backlog.set(rx.len() as i64);
                    }
                    None => break,
                },
                () = self.linger.elapsed() => self.flush().await,
                Some(done) = self.jobs.join_next() => self.settle(done).await,
                Ok(()) = self.refresher.feed.changed() => self.map_read().await,
                () = self.throttled_timer.elapsed() => self.release_throttled().await,
            }
        }
        // Shutdown: take what callers already handed over, flush it, and wait for every send.
        // Nothing waits out a long backoff any more: the shutdown deadline bounds the retries.
        self.stopping.send_replace(true);
        self.throttled.hurry(tokio::time::Instant::now());
        rx.close();
        while let Some(record) = rx.recv().await {
            self.add(record).await;
        }
        self.metrics.backlog.set(0);
        self.flush().await;
        while !self.jobs.is_empty() || !self.misplaced.is_empty() || !self.throttled.is_empty() {
            self.throttled_timer.set(self.throttled.next_due());
            tokio::select! {
                Some(done) = self.jobs.join_next() => self.settle(done).await,
                () = self.throttled_timer.elapsed() => self.release_throttled().await,
                // Also when the reader is gone (an error): then with the map at hand.
                _ = self.refresher.feed.changed(), if !self.misplaced.is_empty() => {
                    self.map_read().await;
                }
            }
            self.flush().await;
        }
    }

    /// Routes one user record into an aggregate, or straight into a batch when it is too big
    /// to aggregate.
    async fn add(&mut self, record: UserRecord) {
        let raw = record.data.len() >= self.config.aggregate_max_bytes
            || !Aggregator::fits_alone(self.limits, &record);
        if raw {
            if record.data.len() + record.partition_key.len() > self.config.max_record_bytes() {
                let mut record = record;
                record.settle_dropped(DROP_RECORD_TOO_LARGE, true);
                self.metrics.drop_records(DROP_RECORD_TOO_LARGE, 1);
                tracing::error!(
                    reason = DROP_RECORD_TOO_LARGE,
                    bytes = record.data.len() + record.partition_key.len(),
                    batch_size = self.config.request_max_bytes,
                    "dropping a user record larger than one PutRecords request may be"
                );
                return;
            }
            self.emit(KinesisRecord::raw(record)).await;
            return;
        }
        let (key, routing) = match &self.shard_map {
            Some(map) => match map.index_of(record.hash_key()) {
                Some(i) => (AggregateKey::Shard(i), Some(map.get(i).start)),
                // A gap in the map (mid-reshard): a raw record is always read correctly.
                None => return self.emit(KinesisRecord::raw(record)).await,
            },
            None => (
                AggregateKey::Key(record.partition_key.clone(), record.explicit_hash_key),
                record.explicit_hash_key,
            ),
        };
        let limits = self.limits;
        self.start_linger();
        let aggregator = self
            .aggregators
            .entry(key.clone())
            .or_insert_with(|| Aggregator::new(limits, routing));
        let full = match aggregator.try_add(record) {
            // Full by count: nothing more can join, so it need not wait for the next record.
            Ok(()) if aggregator.len() as u64 >= limits.max_count => {
                let next = aggregator.successor();
                std::mem::replace(aggregator, next)
            }
            Ok(()) => return,
            Err(record) => {
                let next = aggregator.successor();
                let full = std::mem::replace(aggregator, next);
                aggregator
                    .try_add(record)
                    .expect("a record that fits alone fits an empty aggregate");
                full
            }
        };
        if let Some(finished) = full.finish_unsealed() {
            self.emit_aggregate(&key, finished).await;
        }
    }

    async fn emit_aggregate(&mut self, key: &AggregateKey, mut record: KinesisRecord) {
        if let (AggregateKey::Shard(i), Some(map)) = (key, &self.shard_map)
            && record.is_aggregated()
        {
            record.predicted_shard = Some(map.get(*i).id.clone());
        }
        self.emit(record).await;
    }

    /// A record is about to be buffered: if nothing was, the linger starts now.
    fn start_linger(&mut self) {
        if self.linger.when().is_none() {
            self.linger
                .set(Some(tokio::time::Instant::now() + self.config.linger));
        }
    }

    /// Hands a finished Kinesis record to the batcher and sends the batches it fills.
    async fn emit(&mut self, record: KinesisRecord) {
        self.start_linger();
        self.batcher.push(record, &mut self.ready);
        self.dispatch_ready().await;
    }

    async fn dispatch_ready(&mut self) {
        for batch in std::mem::take(&mut self.ready) {
            // Waiting here is the back-pressure: while every connection is busy the task reads
            // no more records and the backlog channel fills up.
            let permit = self
                .connections
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            self.jobs
                .spawn(send_batch(self.send.clone(), batch.records, permit));
        }
    }

    /// Sends every partial aggregate and batch.
    async fn flush(&mut self) {
        self.finish_aggregates().await;
        if let Some(batch) = self.batcher.take() {
            self.ready.push(batch);
        }
        // Nothing is buffered now (no record is added while the batches wait for connections).
        self.linger.set(None);
        self.dispatch_ready().await;
    }

    /// Acts on a finished send: throttled records are held back by shard; aggregates that
    /// landed on an unexpected shard mean the map is stale. They wait for the next read of the
    /// map, which is asked for; the producer goes on meanwhile.
    async fn settle(&mut self, done: Result<SendOutcome, tokio::task::JoinError>) {
        let outcome = match done {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return,
        };
        self.throttled_in_flight -= outcome.after_throttle;
        for shard in &outcome.stored_shards {
            self.throttled.stored(shard);
        }
        self.hold_throttled(outcome.throttled);
        if outcome.wrong_shard.is_empty() {
            return;
        }
        self.misplaced.extend(outcome.wrong_shard);
        self.refresher.request();
    }

    /// Holds throttled records by the shard they are routed to (one backoff step per shard
    /// per answer).
    fn hold_throttled(&mut self, records: Vec<KinesisRecord>) {
        if records.is_empty() {
            return;
        }
        let mut by_shard: FxHashMap<String, Vec<KinesisRecord>> = FxHashMap::default();
        for record in records {
            let shard = match (&record.predicted_shard, &self.shard_map) {
                (Some(predicted), _) => predicted.to_string(),
                (None, Some(map)) => map
                    .index_of(record.hash_key())
                    .map(|i| map.get(i).id.to_string())
                    .unwrap_or_default(),
                (None, None) => String::new(),
            };
            by_shard.entry(shard).or_default().push(record);
        }
        let now = tokio::time::Instant::now();
        for (shard, records) in by_shard {
            self.throttled.hold(shard, records, now, rand::random());
        }
        self.metrics
            .throttled_held
            .set(self.throttled.user_records() as i64);
    }

    /// Sends again the throttled records whose shard's backoff has passed.
    async fn release_throttled(&mut self) {
        let due = self.throttled.take_due(tokio::time::Instant::now());
        self.metrics
            .throttled_held
            .set(self.throttled.user_records() as i64);
        for mut record in due {
            record.after_throttle = true;
            self.throttled_in_flight += record.user_records.len();
            self.emit(record).await;
        }
        // They have waited their backoff already: sent now, not after another linger.
        if let Some(batch) = self.batcher.take() {
            self.ready.push(batch);
        }
        self.dispatch_ready().await;
    }

    /// A read of the shard map finished: take the new map, if any, then settle the misplaced
    /// aggregates with the map at hand.
    async fn map_read(&mut self) {
        let map = self.refresher.feed.borrow_and_update().map.clone();
        let changed = match (&map, &self.shard_map) {
            (Some(new), Some(old)) => !Arc::ptr_eq(new, old),
            (new, old) => new.is_some() != old.is_some(),
        };
        if changed {
            // Aggregates keyed by the old map's shard indexes must not outlive it.
            self.finish_aggregates().await;
            self.shard_map = map;
        }
        self.resend_misplaced().await;
    }

    /// The user records of misplaced aggregates that lie outside the shard they landed on are
    /// sent again; the others are stored where they are.
    async fn resend_misplaced(&mut self) {
        for (shard_id, record) in std::mem::take(&mut self.misplaced) {
            let landed = self
                .shard_map
                .as_ref()
                .and_then(|m| m.by_id(&shard_id).cloned());
            let (kept, resend): (Vec<_>, Vec<_>) = record
                .user_records
                .into_iter()
                .partition(|r| landed.as_ref().is_some_and(|s| s.contains(r.hash_key())));
            tracing::warn!(
                predicted = record.predicted_shard.as_deref().unwrap_or(""),
                landed = %shard_id,
                resent = resend.len(),
                "aggregate landed on an unexpected shard; resending its records outside that shard"
            );
            count_stored(
                &self.metrics,
                &record.data,
                &record.partition_key,
                kept.len(),
            );
            for mut user_record in kept {
                user_record.settle_stored();
            }
            self.metrics.wrong_shard_resends.inc_by(resend.len() as u64);
            for r in resend {
                self.add(r).await;
            }
        }
    }

    /// Closes every open aggregate and hands it to the batcher.
    async fn finish_aggregates(&mut self) {
        for (key, aggregator) in std::mem::take(&mut self.aggregators) {
            if let Some(record) = aggregator.finish_unsealed() {
                self.emit_aggregate(&key, record).await;
            }
        }
    }
}
