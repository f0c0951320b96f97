//! [`KinesisApi`] for AWS: PutRecords through [`PutRecordsClient`], ListShards through the SDK
//! client, and the SDK's errors classified.

use aws_config::SdkConfig;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

use super::credentials::CredentialsCache;
use super::errors::{is_retryable_answer, is_retryable_request_error, xml_element};
use super::put_records::PutRecordsClient;
use super::put_records_body::put_records_body;
use crate::kpl::client::{EntryResult, KinesisApi, RequestError};
use crate::kpl::record::KinesisRecord;
use crate::kpl::shard_map::Shard;

/// Kinesis on AWS. Neither path retries on its own: the producer retries, per entry, and
/// counts every attempt.
pub struct SdkKinesis {
    client: Client,
    put_records: PutRecordsClient,
}

impl SdkKinesis {
    /// `endpoint` is `aws.kinesis_endpoint`; without it the endpoint is the SDK's (its
    /// environment and profile settings, else the region's).
    pub async fn new(
        sdk: &SdkConfig,
        endpoint: Option<&str>,
        attempt_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let connect_timeout = Duration::from_secs(5).min(attempt_timeout);
        let credentials = Arc::new(CredentialsCache::new(
            sdk.credentials_provider().ok_or_else(|| {
                anyhow::anyhow!("no AWS credentials provider (the default chain was not loaded)")
            })?,
        ));
        let mut builder = aws_sdk_kinesis::config::Builder::from(sdk)
            // One cache for both paths: the SDK's own in front of it would keep credentials
            // that Kinesis has called expired, which this one forgets.
            .identity_cache(aws_sdk_kinesis::config::IdentityCache::no_cache())
            .credentials_provider(credentials.as_provider())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(attempt_timeout)
                    .connect_timeout(connect_timeout)
                    .build(),
            );
        if let Some(url) = endpoint {
            builder = builder.endpoint_url(url);
        }
        let region = sdk
            .region()
            .ok_or_else(|| anyhow::anyhow!("aws.region: no region to send to"))?
            .to_string();
        let put_records = PutRecordsClient::new(
            &resolve_endpoint(sdk, endpoint, &region).await?,
            &region,
            credentials,
            connect_timeout,
        )?;
        Ok(SdkKinesis {
            client: Client::from_conf(builder.build()),
            put_records,
        })
    }
}

/// The endpoint PutRecords goes to, as the SDK client would find it: `aws.kinesis_endpoint`,
/// else `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL` / the profile's `endpoint_url`, else
/// the region's endpoint (FIPS and dual-stack as configured) from the SDK's resolver.
async fn resolve_endpoint(
    sdk: &SdkConfig,
    explicit: Option<&str>,
    region: &str,
) -> anyhow::Result<String> {
    // The same lookup `aws_sdk_kinesis::config::Builder::from(&SdkConfig)` makes.
    let configured = explicit.map(str::to_string).or_else(|| {
        if sdk.get_origin("endpoint_url").is_client_config() {
            return sdk.endpoint_url().map(str::to_string);
        }
        let key = aws_types::service_config::ServiceConfigKey::builder()
            .service_id("Kinesis")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .expect("every field is set");
        sdk.service_config()
            .and_then(|config| config.load_config(key))
            .or_else(|| sdk.endpoint_url().map(str::to_string))
    });
    let params = Params::builder()
        .region(region)
        .set_use_fips(sdk.use_fips())
        .set_use_dual_stack(sdk.use_dual_stack())
        .set_endpoint(configured)
        .operation_type("data")
        .build()
        .map_err(|e| anyhow::anyhow!("Kinesis endpoint parameters: {e}"))?;
    let endpoint = DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map_err(|e| anyhow::anyhow!("no Kinesis endpoint for region {region:?}: {e}"))?;
    Ok(endpoint.url().to_string())
}

impl KinesisApi for SdkKinesis {
    fn put_records<'a>(
        &'a self,
        stream: &'a str,
        records: &'a [KinesisRecord],
    ) -> BoxFuture<'a, Result<Vec<EntryResult>, RequestError>> {
        Box::pin(
            self.put_records
                .put_records(put_records_body(stream, records), records.len()),
        )
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
                // A client error here, so the same rule as PutRecords's answers.
                retryable: is_retryable_answer(status, &code),
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

#[cfg(test)]
mod tests {
    use super::resolve_endpoint;
    use aws_config::{Region, SdkConfig};

    fn sdk(fips: bool) -> SdkConfig {
        SdkConfig::builder()
            .region(Region::new("eu-west-1"))
            .use_fips(fips)
            .behavior_version(super::super::behavior_version())
            .build()
    }

    #[tokio::test]
    async fn put_records_goes_where_the_sdk_client_would() {
        assert_eq!(
            resolve_endpoint(&sdk(false), None, "eu-west-1")
                .await
                .unwrap(),
            "https://kinesis.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            resolve_endpoint(&sdk(true), None, "eu-west-1")
                .await
                .unwrap(),
            "https://kinesis-fips.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            resolve_endpoint(&sdk(false), Some("http://127.0.0.1:4567"), "eu-west-1")
                .await
                .unwrap(),
            "http://127.0.0.1:4567"
        );
        let with_url = sdk(false)
            .into_builder()
            .endpoint_url("http://localhost:9")
            .build();
        assert_eq!(
            resolve_endpoint(&with_url, None, "eu-west-1")
                .await
                .unwrap(),
            "http://localhost:9"
        );
    }
}
