//! PutRecords sent without the SDK's per-call orchestrator.
//!
//! Everything that matters still comes from the SDK: the endpoint from its resolver, the HTTPS
//! connector is its default one (rustls, native roots, connect timeout), the signature is its
//! SigV4 signer's, the credentials its provider chain's. What is skipped is the orchestration
//! around each call (runtime plugins, a dozen interceptors, retry classification with retries
//! off, config layering), which measured about a sixth of the exporter's CPU at 5k spans/s
//! (#12). ListShards, called rarely, still goes through the SDK client.

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4::SigningParams;
use aws_smithy_runtime_api::client::http::{HttpConnector, HttpConnectorSettings};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use super::credentials::CredentialsCache;
use super::errors::{is_permanent_entry_error, is_retryable_answer, xml_element};
use crate::kpl::client::{EntryResult, RequestError};

const TARGET: &str = "Kinesis_20131202.PutRecords";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// A clock more than this far from the service's is corrected for when signing. Smaller
/// differences are below what the `Date` header (whole seconds) can tell, and far inside the
/// five minutes a signature is accepted for.
const CLOCK_SKEW_CORRECTED_FROM: Duration = Duration::from_secs(60);

pub struct PutRecordsClient {
    connector: aws_smithy_runtime_api::client::http::SharedHttpConnector,
    /// The request's URL: the resolved endpoint with the path `/`.
    url: String,
    host: String,
    signing_region: String,
    credentials: Arc<CredentialsCache>,
    /// The service's clock minus ours, in milliseconds, once it is worth correcting.
    clock_skew_ms: AtomicI64,
}

impl PutRecordsClient {
    pub fn new(
        endpoint: &str,
        signing_region: &str,
        credentials: Arc<CredentialsCache>,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| anyhow::anyhow!("Kinesis endpoint {endpoint:?}: {e}"))?;
        let host = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("Kinesis endpoint {endpoint:?} names no host"))?
            .to_string();
        let settings = HttpConnectorSettings::builder()
            .connect_timeout(connect_timeout)
            .build();
        let connector = aws_smithy_http_client::default_connector(
            &settings,
            Some(aws_smithy_async::rt::sleep::SharedAsyncSleep::new(
                aws_smithy_async::rt::sleep::TokioSleep::new(),
            )),
        )
        .ok_or_else(|| anyhow::anyhow!("the SDK was built without its HTTPS connector"))?;
        Ok(PutRecordsClient {
            connector,
            url: format!("{}/", endpoint.trim_end_matches('/')),
            host,
            signing_region: signing_region.to_string(),
            credentials,
            clock_skew_ms: AtomicI64::new(0),
        })
    }

    /// One attempt: sign, send, read the answer. The producer's sender bounds it with
    /// `kpl.request_timeout` (one timer per call; this client adds none of its own).
    pub async fn put_records(
        &self,
        body: Bytes,
        records: usize,
    ) -> Result<Vec<EntryResult>, RequestError> {
        let request = self.signed_request(body).await?;
        let response = self
            .connector
            .call(request)
            .await
            .map_err(|e| RequestError {
                retryable: true,
                code: if e.is_timeout() {
                    "Timeout".into()
                } else {
                    "ConnectionError".into()
                },
                message: aws_sdk_kinesis::error::DisplayErrorContext(&e).to_string(),
            })?;
        let status = response.status().as_u16();
        self.note_service_clock(response.headers().get("date"));
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .map(str::to_string);
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|e| RequestError {
                retryable: true,
                code: "ResponseError".into(),
                message: format!("reading the PutRecords answer: {e}"),
            })?
            .to_bytes();
        if !(200..300).contains(&status) {
            let error = request_error(status, error_type.as_deref(), &answer);
            if credentials_rejected(&error.code) {
                self.credentials.invalidate();
            }
            return Err(error);
        }
        entry_results(&answer, records)
    }

    async fn signed_request(&self, body: Bytes) -> Result<HttpRequest, RequestError> {
        let credentials = self.credentials.get().await.map_err(|e| RequestError {
            retryable: true,
            code: "CredentialsError".into(),
            message: aws_sdk_kinesis::error::DisplayErrorContext(&e).to_string(),
        })?;
        let identity = credentials.into();
        let signing_error = |e: &dyn std::fmt::Display| RequestError {
            retryable: false,
            code: "RequestConstructionError".into(),
            message: format!("signing PutRecords: {e}"),
        };
        let params = SigningParams::builder()
            .identity(&identity)
            .region(&self.signing_region)
            .name("kinesis")
            .time(self.service_time())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| signing_error(&e))?
            .into();
        let headers = [
            ("content-type", CONTENT_TYPE),
            ("x-amz-target", TARGET),
            ("host", self.host.as_str()),
        ];
        let signable = SignableRequest::new(
            "POST",
            &self.url,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| signing_error(&e))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| signing_error(&e))?
            .into_parts();
        let mut request = http::Request::builder().method("POST").uri(&self.url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut request = request
            .header("content-length", body.len())
            .header("user-agent", USER_AGENT)
            .body(SdkBody::from(body))
            .map_err(|e| signing_error(&e))?;
        instructions.apply_to_request_http1x(&mut request);
        HttpRequest::try_from(request).map_err(|e| signing_error(&e))
    }

    fn service_time(&self) -> SystemTime {
        let skew = self.clock_skew_ms.load(Ordering::Relaxed);
        let now = SystemTime::now();
        if skew >= 0 {
            now + Duration::from_millis(skew as u64)
        } else {
            now - Duration::from_millis(skew.unsigned_abs())
        }
    }

    fn note_service_clock(&self, date: Option<&str>) {
        let Some(service) = date.and_then(|d| {
            aws_smithy_types::DateTime::from_str(d, aws_smithy_types::date_time::Format::HttpDate)
                .ok()
                .and_then(|t| SystemTime::try_from(t).ok())
        }) else {
            return;
        };
        let skew = clock_skew_ms(service, SystemTime::now());
        let previous = self.clock_skew_ms.swap(skew, Ordering::Relaxed);
        if previous == 0 && skew != 0 {
            tracing::warn!(
                skew_seconds = skew / 1000,
                "this host's clock is off from Kinesis's; signing with Kinesis's time"
            );
        }
    }
}

const USER_AGENT: &str = concat!("kinesis-exporter/", env!("CARGO_PKG_VERSION"));

/// The correction to sign with: the service's clock minus ours, when it is large enough to
/// matter; 0 otherwise.
fn clock_skew_ms(service: SystemTime, local: SystemTime) -> i64 {
    let skew_ms = match service.duration_since(local) {
        Ok(ahead) => ahead.as_millis() as i64,
        Err(behind) => -(behind.duration().as_millis() as i64),
    };
    if skew_ms.unsigned_abs() >= CLOCK_SKEW_CORRECTED_FROM.as_millis() as u64 {
        skew_ms
    } else {
        0
    }
}

/// Codes with which the service says the credentials themselves are no good (rather than the
/// rights they carry): new ones are fetched for the next attempt.
fn credentials_rejected(code: &str) -> bool {
    matches!(
        code,
        "ExpiredTokenException"
            | "ExpiredToken"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException"
    )
}

#[derive(serde::Deserialize)]
struct PutRecordsOutput {
    #[serde(rename = "Records")]
    records: Vec<PutRecordsEntry>,
}

#[derive(serde::Deserialize)]
struct PutRecordsEntry {
    #[serde(rename = "ShardId")]
    shard_id: Option<String>,
    #[serde(rename = "ErrorCode")]
    error_code: Option<String>,
    #[serde(rename = "ErrorMessage")]
    error_message: Option<String>,
}

/// The per-record results of a successful PutRecords answer, one per record sent.
fn entry_results(answer: &[u8], records: usize) -> Result<Vec<EntryResult>, RequestError> {
    let malformed = |message: String| RequestError {
        retryable: true,
        code: "MalformedResponse".into(),
        message,
    };
    let output: PutRecordsOutput = serde_json::from_slice(answer).map_err(|e| {
        malformed(format!(
            "PutRecords answer is not its JSON ({e}): {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        ))
    })?;
    if output.records.len() != records {
        return Err(malformed(format!(
            "PutRecords answered {} results for {records} records",
            output.records.len()
        )));
    }
    Ok(output
        .records
        .into_iter()
        .map(|entry| match entry.error_code {
            Some(code) => EntryResult::Failed {
                permanent: is_permanent_entry_error(&code),
                message: entry.error_message.unwrap_or_default(),
                code,
            },
            None => EntryResult::Stored {
                shard_id: entry.shard_id.unwrap_or_default(),
            },
        })
        .collect())
}

/// The error an unsuccessful answer carries: its code from the `x-amzn-ErrorType` header or
/// the JSON body's `__type` (AWS's JSON protocol), or from an XML body (what proxies and
/// Query-protocol endpoints answer), else from the status alone.
fn request_error(status: u16, error_type: Option<&str>, body: &[u8]) -> RequestError {
    let text = String::from_utf8_lossy(body);
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let json_field = |names: &[&str]| {
        names.iter().find_map(|name| {
            json.as_ref()?
                .get(*name)?
                .as_str()
                .map(str::to_string)
                .filter(|s| !s.is_empty())
        })
    };
    let code = error_type
        .map(str::to_string)
        .or_else(|| json_field(&["__type", "code"]))
        .map(|code| sanitize_error_code(&code).to_string())
        .or_else(|| xml_element(&text, "Code"))
        .unwrap_or_else(|| format!("Http{status}"));
    let message = json_field(&["message", "Message", "errorMessage"])
        .or_else(|| xml_element(&text, "Message"))
        .unwrap_or_else(|| {
            format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            )
        });
    RequestError {
        retryable: is_retryable_answer(status, &code),
        code,
        message,
    }
}

/// `aws.protocoltests#FooError:http://internal.amazon.com/...` → `FooError`, as the SDK's
/// JSON error parser reads it.
fn sanitize_error_code(code: &str) -> &str {
    let code = code.split(':').next().unwrap_or(code);
    code.rsplit('#').next().unwrap_or(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_gives_one_result_per_record_in_order() {
        let answer = br#"{"FailedRecordCount":1,"Records":[
            {"SequenceNumber":"1","ShardId":"shardId-000000000001"},
            {"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded"},
            {"ErrorCode":"KMSDisabledException","ErrorMessage":"key off"}]}"#;
        assert_eq!(
            entry_results(answer, 3).unwrap(),
            vec![
                EntryResult::Stored {
                    shard_id: "shardId-000000000001".into()
                },
                EntryResult::Failed {
                    code: "ProvisionedThroughputExceededException".into(),
                    message: "Rate exceeded".into(),
                    permanent: false
                },
                EntryResult::Failed {
                    code: "KMSDisabledException".into(),
                    message: "key off".into(),
                    permanent: true
                },
            ]
        );
    }

    #[test]
    fn an_answer_with_the_wrong_count_or_shape_is_a_retryable_malformed_response() {
        let two = br#"{"Records":[{"ShardId":"a"},{"ShardId":"b"}]}"#;
        let error = entry_results(two, 3).unwrap_err();
        assert_eq!(
            (error.code.as_str(), error.retryable),
            ("MalformedResponse", true)
        );
        assert!(
            error.message.contains("2 results for 3"),
            "{}",
            error.message
        );
        let error = entry_results(b"<html>bad gateway</html>", 1).unwrap_err();
        assert!(error.message.contains("bad gateway"), "{}", error.message);
    }

    #[test]
    fn a_json_error_is_read_from_the_header_or_the_body() {
        let body = br#"{"__type":"com.amazonaws.kinesis#ResourceNotFoundException","message":"Stream s not found"}"#;
        let error = request_error(400, None, body);
        assert_eq!(error.code, "ResourceNotFoundException");
        assert_eq!(error.message, "Stream s not found");
        assert!(!error.retryable);

        let error = request_error(
            400,
            Some("ProvisionedThroughputExceededException:http://internal.amazon.com/"),
            br#"{"message":"Rate exceeded for stream s"}"#,
        );
        assert_eq!(error.code, "ProvisionedThroughputExceededException");
        assert!(error.retryable);
    }

    #[test]
    fn an_error_without_a_code_is_named_and_classified_by_its_status() {
        let error = request_error(503, None, b"upstream unavailable");
        assert_eq!(error.code, "Http503");
        assert!(error.retryable);
        assert!(error.message.contains("upstream unavailable"));
        let error = request_error(403, None, b"");
        assert_eq!((error.code.as_str(), error.retryable), ("Http403", false));
        let error = request_error(429, None, b"");
        assert!(error.retryable);
    }

    #[test]
    fn an_xml_error_keeps_its_code_and_message() {
        let body = br#"<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error></ErrorResponse>"#;
        let error = request_error(403, None, body);
        assert_eq!(error.code, "SignatureDoesNotMatch");
        assert!(error.message.starts_with("The request signature"));
        assert!(!error.retryable);
    }

    #[test]
    fn only_a_clock_a_minute_or_more_off_is_corrected() {
        let local = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(clock_skew_ms(local + Duration::from_secs(59), local), 0);
        assert_eq!(clock_skew_ms(local - Duration::from_secs(59), local), 0);
        assert_eq!(
            clock_skew_ms(local + Duration::from_secs(600), local),
            600_000
        );
        assert_eq!(
            clock_skew_ms(local - Duration::from_secs(600), local),
            -600_000
        );
    }

    #[test]
    fn expired_or_unknown_credentials_are_fetched_again_and_denied_rights_are_not() {
        assert!(credentials_rejected("ExpiredTokenException"));
        assert!(credentials_rejected("UnrecognizedClientException"));
        assert!(!credentials_rejected("AccessDeniedException"));
    }
}
