//! AWS wiring: region, endpoint and credentials (SDK default chain, optionally one AssumeRole).

mod credentials;
mod errors;
mod kinesis;
mod put_records;
mod put_records_body;

pub use kinesis::SdkKinesis;

use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;

use crate::config::AwsConfig;

/// The SDK behaviour this build was tested with, pinned so an SDK upgrade cannot change
/// defaults (retries, timeouts) behind our back. `latest()` is the same version today.
pub fn behavior_version() -> BehaviorVersion {
    BehaviorVersion::v2026_01_12()
}

/// Loads the SDK configuration for one exporter.
///
/// Credentials come from the default chain: environment, IRSA web identity
/// (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`), EKS Pod Identity, profiles, IMDS. When
/// `aws.role` is set, that role is assumed on top of them, unless the web identity already is
/// that role (then the second hop would only add latency and a needed trust policy).
pub async fn load(aws: &AwsConfig) -> SdkConfig {
    let base = aws_config::defaults(behavior_version())
        .region(Region::new(aws.region.clone()))
        .load()
        .await;
    let web_identity_role = std::env::var("AWS_ROLE_ARN").ok();
    match &aws.role {
        Some(role) if web_identity_role.as_deref() != Some(role.as_str()) => {
            tracing::info!(role, "assuming role on top of the default credential chain");
            let provider = AssumeRoleProvider::builder(role.clone())
                .session_name("kinesis-exporter")
                .configure(&base)
                .build()
                .await;
            base.into_builder()
                .credentials_provider(SharedCredentialsProvider::new(provider))
                .build()
        }
        Some(role) => {
            tracing::info!(
                role,
                "aws.role is the web identity role already; not assuming it again"
            );
            base
        }
        None => base,
    }
}
