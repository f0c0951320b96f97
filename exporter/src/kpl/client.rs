//! The seam between the producer and Kinesis: two calls, and errors already classified.

use futures::future::BoxFuture;

use super::record::KinesisRecord;
use super::shard_map::Shard;

/// The outcome of one entry of a PutRecords response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    Stored { shard_id: String },
    Failed { code: String, message: String },
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

/// Entry error codes that will not go away by retrying the same record.
pub fn is_permanent_entry_error(code: &str) -> bool {
    matches!(
        code,
        "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSInvalidStateException"
            | "KMSNotFoundException"
            | "KMSOptInRequired"
            | "ValidationException"
            | "InvalidArgumentException"
    )
}

/// Request error codes worth retrying (besides 5xx, timeouts and network failures).
pub fn is_retryable_request_error(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "KMSThrottlingException"
            | "InternalFailure"
            | "InternalFailureException"
            | "InternalServerError"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "RequestTimeoutException"
            | "ExpiredTokenException"
            | "RequestExpired"
    )
}
