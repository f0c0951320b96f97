//! The seam between the producer and Kinesis: two calls, and errors already classified.

use futures::future::BoxFuture;

use super::record::KinesisRecord;
use super::shard_map::Shard;

/// The outcome of one entry of a PutRecords response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    Stored {
        shard_id: String,
    },
    /// `permanent`: retrying the same record cannot succeed (the adapter knows which codes).
    Failed {
        code: String,
        message: String,
        permanent: bool,
    },
}

/// A whole request that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    /// Throttling, 5xx, timeouts and network errors are worth retrying; a missing stream,
    /// denied access or a rejected request are not.
    pub retryable: bool,
    pub code: String,
    pub message: String,
}

/// What the producer needs from Kinesis.
pub trait KinesisApi: Send + Sync + 'static {
    /// One PutRecords call; on success, one result per record, in order.
    fn put_records<'a>(
        &'a self,
        stream: &'a str,
        records: &'a [KinesisRecord],
    ) -> BoxFuture<'a, Result<Vec<EntryResult>, RequestError>>;

    /// The open shards of the stream (every page).
    fn list_shards<'a>(
        &'a self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Shard>, RequestError>>;
}
