//! AWS identity of the exporter pods: the ServiceAccount, and for ProjectedToken mode the
//! token volume and environment the EKS webhook would inject.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvVar, ProjectedVolumeSource, ServiceAccount, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};

use super::child_meta;
use crate::crd::{IdentityMode, KinesisExporter};

pub const TOKEN_VOLUME: &str = "aws-iam-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";
pub const TOKEN_FILE: &str = "token";
pub const TOKEN_AUDIENCE: &str = "sts.amazonaws.com";
pub const IRSA_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
const TOKEN_LIFETIME_SECONDS: i64 = 86_400;

/// The role the pod's web identity is: the base role when given, else the role to write as.
pub fn web_identity_role(kex: &KinesisExporter) -> Option<String> {
    kex.spec
        .identity
        .as_ref()
        .and_then(|i| i.base_role_arn.clone())
        .or_else(|| kex.spec.aws.role.clone())
}

/// The ServiceAccount to create, unless the resource names an existing one. Only the fields
/// set here are owned by the operator (server-side apply), so other annotations are left alone.
pub fn service_account(kex: &KinesisExporter) -> Option<ServiceAccount> {
    if kex.spec.service_account_name.is_some() {
        return None;
    }
    let mut meta = child_meta(kex);
    if kex.spec.identity_mode() == IdentityMode::EksWebhook
        && let Some(role) = web_identity_role(kex)
    {
        meta.annotations = Some(BTreeMap::from([(IRSA_ANNOTATION.to_string(), role)]));
    }
    Some(ServiceAccount {
        metadata: meta,
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    })
}

/// The name of the ServiceAccount the pods run as.
pub fn service_account_name(kex: &KinesisExporter) -> String {
    kex.spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| kube::ResourceExt::name_any(kex))
}

/// Environment, volume and mount for a projected web-identity token (ProjectedToken mode).
pub struct ProjectedToken {
    pub env: Vec<EnvVar>,
    pub volume: Volume,
    pub mount: VolumeMount,
}

pub fn projected_token(kex: &KinesisExporter) -> Option<ProjectedToken> {
    if kex.spec.identity_mode() != IdentityMode::ProjectedToken {
        return None;
    }
    let role = web_identity_role(kex)?;
    let env = |name: &str, value: String| EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..EnvVar::default()
    };
    Some(ProjectedToken {
        env: vec![
            env("AWS_ROLE_ARN", role),
            env(
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                format!("{TOKEN_DIR}/{TOKEN_FILE}"),
            ),
            env("AWS_STS_REGIONAL_ENDPOINTS", "regional".into()),
        ],
        volume: Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_LIFETIME_SECONDS),
                        path: TOKEN_FILE.into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        mount: VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    })
}
