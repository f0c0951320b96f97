//! The ConfigMap, Deployment, Service and PodDisruptionBudget of one exporter.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    HTTPGetAction, Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, SleepAction, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::identity::{projected_token, service_account_name};
use super::{
    CONFIG_DIR, CONFIG_FILE, Defaults, GRPC_PORT, HTTP_PORT, METRICS_PORT, RESTART_HASH_ANNOTATION,
    child_meta, labels, render_config, selector_labels, shutdown_timeout_seconds,
};
use crate::crd::{ImagePullPolicy, KinesisExporter};

const CONFIG_VOLUME: &str = "config";
/// Time for endpoints to drop the pod before the exporter stops listening.
const PRE_STOP_SECONDS: i64 = 5;
const UID: i64 = 65532;

pub fn config_map(kex: &KinesisExporter) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(kex),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_string(),
            render_config(&kex.spec),
        )])),
        ..ConfigMap::default()
    }
}

/// A digest of everything whose change must restart the pods: the rendered configuration and
/// the identity wiring. Anything else (replicas, labels) changes without a restart.
fn restart_hash(kex: &KinesisExporter) -> String {
    let mut hasher = Sha256::new();
    hasher.update(render_config(&kex.spec));
    hasher.update(serde_json::to_vec(&kex.spec.identity).unwrap_or_default());
    hasher.update(kex.spec.aws.role.as_deref().unwrap_or(""));
    hasher.update(kex.spec.aws.sts_endpoint.as_deref().unwrap_or(""));
    hex::encode(&hasher.finalize()[..16])
}

pub fn deployment(kex: &KinesisExporter, defaults: &Defaults) -> Deployment {
    let spec = &kex.spec;
    let token = projected_token(kex);
    let shutdown = shutdown_timeout_seconds(spec);

    let mut pod_labels = spec.pod_labels.clone().unwrap_or_default();
    pod_labels.extend(labels(kex));
    let mut pod_annotations = spec.pod_annotations.clone().unwrap_or_default();
    pod_annotations.insert(RESTART_HASH_ANNOTATION.into(), restart_hash(kex));

    let mut env = vec![EnvVar {
        name: "AWS_REGION".into(),
        value: Some(
            spec.aws
                .region
                .clone()
                .unwrap_or_else(|| kinesis_exporter_config::AwsConfig::default().region),
        ),
        ..EnvVar::default()
    }];
    let mut volumes = vec![Volume {
        name: CONFIG_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: kube::ResourceExt::name_any(kex),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: CONFIG_VOLUME.into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if let Some(endpoint) = &spec.aws.sts_endpoint {
        env.push(EnvVar {
            name: "AWS_ENDPOINT_URL_STS".into(),
            value: Some(endpoint.clone()),
            ..EnvVar::default()
        });
    }
    if let Some(token) = token {
        env.extend(token.env);
        volumes.push(token.volume);
        mounts.push(token.mount);
    }

    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let port = |name: &str, number: i32| ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let container = Container {
        name: "exporter".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| defaults.exporter_image.clone()),
        ),
        image_pull_policy: spec.image_pull_policy.map(|p| {
            match p {
                ImagePullPolicy::Always => "Always",
                ImagePullPolicy::IfNotPresent => "IfNotPresent",
                ImagePullPolicy::Never => "Never",
            }
            .to_string()
        }),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
            "--log-format".into(),
            "json".into(),
            "--shutdown-timeout".into(),
            shutdown.to_string(),
        ]),
        env: Some(env),
        ports: Some(vec![
            port("otlp-grpc", GRPC_PORT),
            port("otlp-http", HTTP_PORT),
            port("metrics", METRICS_PORT),
        ]),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    Deployment {
        metadata: child_meta(kex),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(kex)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    service_account_name: Some(service_account_name(kex)),
                    // The projected token is mounted explicitly; the API token is not needed.
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(PRE_STOP_SECONDS + shutdown + 5),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(UID),
                        run_as_group: Some(UID),
                        fs_group: Some(UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    node_selector: spec.node_selector.clone(),
                    tolerations: spec.tolerations.clone(),
                    affinity: spec.affinity.clone(),
                    priority_class_name: spec.priority_class_name.clone(),
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

pub fn service(kex: &KinesisExporter) -> Service {
    let port = |name: &str, number: i32| ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: Some(if name == "otlp-grpc" { "grpc" } else { "http" }.into()),
        ..ServicePort::default()
    };
    Service {
        metadata: child_meta(kex),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(kex)),
            ports: Some(vec![
                port("otlp-grpc", GRPC_PORT),
                port("otlp-http", HTTP_PORT),
                port("metrics", METRICS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Keeps all but one pod up through voluntary disruptions; only when there is more than one.
pub fn pod_disruption_budget(kex: &KinesisExporter) -> Option<PodDisruptionBudget> {
    (kex.spec.replicas() > 1).then(|| PodDisruptionBudget {
        metadata: child_meta(kex),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(kex)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}
