//! Pure builders: a `KinesisExporter` in, the Kubernetes objects that run it out. No I/O here,
//! so every object is unit-tested and the reconciler only applies what these return.

mod config;
mod identity;
mod workload;

pub use config::{render_config, shutdown_timeout_seconds};
pub use identity::service_account;
pub use workload::{config_map, deployment, pod_disruption_budget, service};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::KinesisExporter;

/// The one field manager of every object the operator writes.
pub const FIELD_MANAGER: &str = "kinesis-operator";

pub const GRPC_PORT: i32 = 4317;
pub const HTTP_PORT: i32 = 4318;
pub const METRICS_PORT: i32 = 8888;
pub const CONFIG_FILE: &str = "config.yaml";
pub const CONFIG_DIR: &str = "/etc/kinesis-exporter";
/// Pod-template annotation whose change rolls the pods.
pub const RESTART_HASH_ANNOTATION: &str = "kinesis.otlp.dev/restart-hash";

/// Settings of the operator that shape what it builds.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Exporter image when the resource names none.
    pub exporter_image: String,
}

/// Labels that select the pods of one exporter; they never change for a given resource.
pub fn selector_labels(kex: &KinesisExporter) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "kinesis-exporter".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), kex.name_any()),
    ])
}

/// Labels on every object the operator makes.
pub fn labels(kex: &KinesisExporter) -> BTreeMap<String, String> {
    let mut labels = selector_labels(kex);
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        "kinesis-operator".to_string(),
    );
    labels.insert(
        "app.kubernetes.io/component".to_string(),
        "exporter".to_string(),
    );
    labels
}

/// The label selector of the pods as a string (status.selector, for the scale subresource).
pub fn selector_string(kex: &KinesisExporter) -> String {
    selector_labels(kex)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata for a child object: same name and namespace, our labels, owned by the resource
/// (so deleting the resource garbage-collects it).
fn child_meta(kex: &KinesisExporter) -> ObjectMeta {
    ObjectMeta {
        name: Some(kex.name_any()),
        namespace: kex.namespace(),
        labels: Some(labels(kex)),
        owner_references: owner_reference(kex).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn owner_reference(kex: &KinesisExporter) -> Option<OwnerReference> {
    kex.controller_owner_ref(&())
}

/// What changes whenever someone else changes a child: its generation for kinds that have one
/// (a Deployment's status moves its resourceVersion, not its generation), else its
/// resourceVersion; and the labels and owner references, which move neither generation.
pub fn fingerprint(meta: &ObjectMeta) -> String {
    let version = match meta.generation {
        Some(generation) if generation > 0 => format!("generation {generation}"),
        _ => format!(
            "resourceVersion {}",
            meta.resource_version.as_deref().unwrap_or("")
        ),
    };
    let identity = serde_json::json!([meta.labels, meta.owner_references]);
    format!("{version} {identity}")
}

/// Why an existing object named like a child is not ours to change, or None when it is ours:
/// its controller is the KinesisExporter whose uid is `uid`, or it has no controller at all
/// and the operator's own server-side apply wrote it (someone removed the owner reference;
/// the next apply puts it back). The operator never adopts anything else: an object it did
/// not create keeps its owner, its spec and its traffic.
pub fn foreign_holder(existing: &ObjectMeta, uid: &str) -> Option<String> {
    let controller = existing
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let applied_by_us = existing.managed_fields.iter().flatten().any(|f| {
        f.manager.as_deref() == Some(FIELD_MANAGER) && f.operation.as_deref() == Some("Apply")
    });
    match controller {
        Some(o) if o.uid == uid && o.kind == "KinesisExporter" => None,
        Some(o) => Some(format!("its controller is {} {}", o.kind, o.name)),
        None if applied_by_us => None,
        None => Some("the operator did not create it".into()),
    }
}

#[cfg(test)]
mod tests;
