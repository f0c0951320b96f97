//! Reads the stream's shards in the background, so that the producer never waits on ListShards
//! (which can take seconds, and fails for minutes without the permission): without a map it
//! keeps trying, backing off; with one, it reads again when the producer asks (an aggregate
//! landed on an unexpected shard), never more often than the refresh interval allows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::client::KinesisApi;
use super::health::Operation;
use super::metrics::{ProducerMetrics, ResultLabel};
use super::shard_map::ShardMap;

/// Longest wait between two tries while ListShards keeps failing.
const MAX_DELAY: Duration = Duration::from_secs(300);

/// What the producer sees: the newest map, and how many reads have finished (a read that
/// failed still counts: whoever waited for it goes on with the map it has).
#[derive(Clone, Default)]
pub(super) struct Feed {
    pub map: Option<Arc<ShardMap>>,
    pub reads: u64,
}

/// The producer's side: ask for a new read, and watch what comes.
pub(super) struct Refresher {
    requests: Arc<Notify>,
    pub feed: watch::Receiver<Feed>,
    task: tokio::task::JoinHandle<()>,
}

impl Refresher {
    pub fn start(
        client: Arc<dyn KinesisApi>,
        stream: String,
        metrics: Arc<ProducerMetrics>,
        interval: Duration,
    ) -> Refresher {
        let requests = Arc::new(Notify::new());
        let (tx, feed) = watch::channel(Feed::default());
        let task = tokio::spawn(run(client, stream, metrics, interval, requests.clone(), tx));
        Refresher {
            requests,
            feed,
            task,
        }
    }

    /// Asks for a new read; requests made while one is under way are served by the next.
    pub fn request(&self) {
        self.requests.notify_one();
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    client: Arc<dyn KinesisApi>,
    stream: String,
    metrics: Arc<ProducerMetrics>,
    interval: Duration,
    requests: Arc<Notify>,
    feed: watch::Sender<Feed>,
) {
    let mut delay = interval;
    let mut current = Feed::default();
    loop {
        let result = client.list_shards(&stream).await;
        match &result {
            Ok(_) => metrics.health.succeeded(),
            Err(e) => {
                metrics
                    .health
                    .failed(Operation::ListShards, &e.code, &e.message, e.retryable)
            }
        }
        let read = result.map_err(|e| e.to_string()).and_then(ShardMap::new);
        let outcome = if read.is_ok() { "ok" } else { "error" };
        metrics
            .shard_map_refreshes
            .get_or_create(&ResultLabel { result: outcome })
            .inc();
        match read {
            Ok(map) => {
                tracing::info!(shards = map.len(), %stream, "shard map loaded");
                current.map = Some(Arc::new(map));
                delay = interval;
            }
            Err(error) => {
                delay = (delay * 2).min(MAX_DELAY);
                if current.map.is_none() {
                    tracing::warn!(
                        %error,
                        retry_in = ?delay,
                        "cannot read the shard map; aggregating one partition key per record \
                         (safe for KCL consumers, less compact)"
                    );
                } else {
                    tracing::warn!(%error, "cannot refresh the shard map; keeping the old one");
                }
            }
        }
        current.reads += 1;
        if feed.send(current.clone()).is_err() {
            return;
        }
        let next = Instant::now() + delay;
        // Without a map, try again on the backoff schedule; with one, wait to be asked.
        if current.map.is_some() {
            requests.notified().await;
        }
        tokio::time::sleep_until(next).await;
    }
}
