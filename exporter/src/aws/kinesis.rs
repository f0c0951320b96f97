//! [`KinesisApi`] over the AWS SDK: request building and error classification.

use aws_config::SdkConfig;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::body::SdkBody;
use futures::future::BoxFuture;
use std::time::Duration;

use super::put_records_body::put_records_body;
use crate::kpl::client::{EntryResult, KinesisApi, RequestError};
use crate::kpl::record::KinesisRecord;
use crate::kpl::shard_map::Shard;

/// Kinesis through the official SDK. The SDK's own retries are off for PutRecords: the
/// producer retries, per entry, and counts every attempt. The PutRecords body is ours
/// ([`put_records_body`]), put in place of the SDK's before it is signed.
pub struct SdkKinesis {
    client: Client,
}

impl SdkKinesis {
    pub fn new(sdk: &SdkConfig, endpoint: Option<&str>, attempt_timeout: Duration) -> Self {
        let mut builder = aws_sdk_kinesis::config::Builder::from(sdk)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(attempt_timeout)
                    .connect_timeout(Duration::from_secs(5).min(attempt_timeout))
                    .build(),
            );
        if let Some(url) = endpoint {
            builder = builder.endpoint_url(url);
        }
        SdkKinesis {
            client: Client::from_conf(builder.build()),
        }
    }
}

impl KinesisApi for SdkKinesis {
    fn put_records<'a>(
        &'a self,
        stream: &'a str,
        records: &'a [KinesisRecord],
    ) -> BoxFuture<'a, Result<Vec<EntryResult>, RequestError>> {
        Box::pin(async move {
            let body = put_records_body(stream, records);
            let output = self
                .client
                .put_records()
                .stream_name(stream)
                // The SDK serializes an empty list, and the body is replaced before signing.
                .set_records(Some(Vec::new()))
                .customize()
                .mutate_request(move |request| {
                    request
                        .headers_mut()
                        .insert("content-length", body.len().to_string());
                    *request.body_mut() = SdkBody::from(body.clone());
                })
                .send()
                .await
                .map_err(classify)?;
            let results: Vec<EntryResult> = output
                .records()
                .iter()
                .map(|r| match r.error_code() {
                    Some(code) => EntryResult::Failed {
                        code: code.to_string(),
                        message: r.error_message().unwrap_or_default().to_string(),
                        permanent: is_permanent_entry_error(code),
                    },
                    None => EntryResult::Stored {
                        shard_id: r.shard_id().unwrap_or_default().to_string(),
                    },
                })
                .collect();
            if results.len() != records.len() {
                return Err(RequestError {
                    retryable: true,
                    code: "MalformedResponse".into(),
                    message: format!(
                        "PutRecords answered {} results for {} records",
                        results.len(),
                        records.len()
                    ),
                });
            }
            Ok(results)
        })
    }

    fn list_shards<'a>(
        &'a self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Shard>, RequestError>> {
        Box::pin(async move {
            let mut shards = Vec::new();
            let mut next_token: Option<String> = None;
            loop {
                // The API takes either the stream name or a continuation token, never both.
                let request = match &next_token {
                    Some(token) => self.client.list_shards().next_token(token),
                    None => self.client.list_shards().stream_name(stream),
                };
                let page = request.send().await.map_err(classify)?;
                for shard in page.shards() {
                    let open = shard
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_none();
                    let Some(range) = shard.hash_key_range() else {
                        continue;
                    };
                    let parse = |s: &str| {
                        s.parse::<u128>().map_err(|e| RequestError {
                            retryable: false,
                            code: "MalformedResponse".into(),
                            message: format!("hash key {s:?}: {e}"),
                        })
                    };
                    if open {
                        shards.push(Shard {
                            id: shard.shard_id().into(),
                            start: parse(range.starting_hash_key())?,
                            end: parse(range.ending_hash_key())?,
                        });
                    }
                }
                match page.next_token() {
                    Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                    _ => return Ok(shards),
                }
            }
        })
    }
}

/// Sorts an SDK error into retryable or not, keeping the service's error code.
fn classify<E>(err: SdkError<E, HttpResponse>) -> RequestError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = aws_sdk_kinesis::error::DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown").to_string();
            let status_5xx = service.raw().status().is_server_error();
            RequestError {
                retryable: is_retryable_request_error(&code) || status_5xx,
                code,
                // The service's own words are what a human acts on ("User ... is not
                // authorized to perform kinesis:PutRecords on ...").
                message: service
                    .err()
                    .message()
                    .map(str::to_string)
                    .unwrap_or(message),
            }
        }
        // An error answer the SDK could not parse (a proxy's page, or the Query protocol's XML
        // from an endpoint that speaks it): its HTTP status still says whether to retry.
        SdkError::ResponseError(response) if response.raw().status().is_client_error() => {
            let status = response.raw().status().as_u16();
            let body = response
                .raw()
                .body()
                .bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let code = xml_element(&body, "Code").unwrap_or_else(|| format!("Http{status}"));
            RequestError {
                retryable: matches!(status, 408 | 429) || is_retryable_request_error(&code),
                message: xml_element(&body, "Message").unwrap_or(message),
                code,
            }
        }
        SdkError::TimeoutError(_) => RequestError {
            retryable: true,
            code: "Timeout".into(),
            message,
        },
        SdkError::DispatchFailure(_) => RequestError {
            retryable: true,
            code: "ConnectionError".into(),
            message,
        },
        SdkError::ResponseError(_) => RequestError {
            retryable: true,
            code: "ResponseError".into(),
            message,
        },
        _ => RequestError {
            retryable: false,
            code: "RequestConstructionError".into(),
            message,
        },
    }
}

/// The text of the first `<name>` element of an XML error body, if any.
fn xml_element(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&format!("</{name}>"))?;
    Some(body[start..end].trim().to_string()).filter(|s| !s.is_empty())
}

/// Entry error codes that will not go away by retrying the same record.
fn is_permanent_entry_error(code: &str) -> bool {
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
fn is_retryable_request_error(code: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::xml_element;

    #[test]
    fn an_xml_error_body_gives_its_code_and_message() {
        let body = r#"<?xml version="1.0" encoding="utf-8"?>
<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: arn:aws:sts::1:assumed-role/r/s is not authorized to perform: kinesis:PutRecords</Message><Type>Sender</Type></Error></Errors></ErrorResponse>"#;
        assert_eq!(xml_element(body, "Code").as_deref(), Some("AccessDenied"));
        assert!(
            xml_element(body, "Message")
                .unwrap()
                .ends_with("kinesis:PutRecords")
        );
        assert_eq!(xml_element("<html>502 Bad Gateway</html>", "Code"), None);
        assert_eq!(xml_element("<Code></Code>", "Code"), None);
    }
}
