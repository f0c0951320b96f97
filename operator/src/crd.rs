//! The `KinesisExporter` custom resource: spec (mapping 1:1 to the exporter's configuration),
//! status, and the validation the API server enforces (OpenAPI + CEL rules).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kinesis_exporter_config::settings::{self, Kind};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A KPL-grade OpenTelemetry exporter into one Amazon Kinesis data stream: the operator runs
/// it as a Deployment that receives OTLP on ports 4317 (gRPC) and 4318 (HTTP).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kinesis.otlp.dev",
    version = "v1alpha1",
    kind = "KinesisExporter",
    namespaced,
    shortname = "kex",
    status = "KinesisExporterStatus",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Stream","type":"string","description":"Kinesis stream","jsonPath":".spec.aws.streamName"}"#,
    printcolumn = r#"{"name":"Region","type":"string","description":"AWS region","jsonPath":".spec.aws.region"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","description":"Ready pods of desired","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Delivery","type":"string","description":"Whether records reach the stream (the Delivering condition's reason)","jsonPath":".status.conditions[?(@.type==\"Delivering\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.aws.streamName",
    validation = Rule::new("size(self.metadata.name) <= 52").message("metadata.name must be at most 52 characters: it names the exporter's Service and Deployment"),
    cel
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.identity) || !has(self.identity.mode) || !(self.identity.mode in ['ProjectedToken', 'EksWebhook']) || has(self.aws.role) || has(self.identity.baseRoleArn)").message("identity modes ProjectedToken and EksWebhook need a role: set aws.role or identity.baseRoleArn"),
    validation = Rule::new("has(self.identity) || has(self.aws.role)").message("the default identity mode ProjectedToken needs aws.role (or set identity.mode)"),
    validation = Rule::new("!has(self.identity) || !has(self.identity.baseRoleArn) || !has(self.identity.mode) || self.identity.mode in ['ProjectedToken', 'EksWebhook']").message("identity.baseRoleArn is only used with identity modes ProjectedToken and EksWebhook"),
    validation = Rule::new("!has(self.identity) || !has(self.identity.baseRoleArn) || has(self.aws.role)").message("identity.baseRoleArn is the pod's web identity from which aws.role is assumed: set aws.role too"),
)]
pub struct KinesisExporterSpec {
    /// Where records go and as whom.
    pub aws: AwsSpec,
    /// Producer settings (the KPL's knobs); every one is optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kpl: Option<KplSpec>,
    /// How telemetry is written into a record: otlp_proto (default) or otlp_json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// Compression of each record's payload: none (default), gzip or zstd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// When an OTLP request is answered: buffered (default), once its records are queued, or
    /// acknowledged, once every record is stored in Kinesis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// How records are keyed (and so spread over shards), per signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<PartitionKeySpec>,
    /// Which signals this exporter accepts; all three by default. One stream per resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 3))]
    #[x_kube(validation = Rule::new("size(self) > 0 && self.all(s, self.exists_one(t, t == s))").message("signals must list each of traces, metrics, logs at most once, and at least one"))]
    pub signals: Option<Vec<Signal>>,
    /// Exporter pods; the scale subresource (kubectl scale, an HPA) sets this. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("replicas must be between 0 and 1000"))]
    pub replicas: Option<i32>,
    /// Exporter image; the operator's default image when empty. Another image only where the
    /// platform allows it (tenancy.allowedImages); otherwise the resource is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// CPU and memory for the exporter container. A memory limit also sizes the exporter's
    /// memory for requests being decoded (receivers.otlp.request_memory_limit_mib): half of it.
    /// A CPU limit sets its worker threads (service.worker_threads), rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the exporter pods, for the taint keys the platform allows
    /// (tenancy.allowedTolerationKeys; none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity rules of the exporter pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Annotations added to the exporter pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// Labels added to the exporter pods (the selector labels cannot be overridden). Keys must
    /// start with a prefix the platform allows (tenancy.podLabelPrefixes; default
    /// kinesis.otlp.dev/), so no other workload's selector matches the exporter pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// PriorityClass of the exporter pods, one the platform allows
    /// (tenancy.allowedPriorityClasses; none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Use this existing ServiceAccount instead of one the operator creates; only where the
    /// platform allows it (tenancy.allowServiceAccountName; off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// How the pods get AWS credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
}

/// The Kinesis stream and the AWS account it lives in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AwsSpec {
    /// Kinesis stream name (1 to 128 of letters, digits, '_', '.', '-').
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9_.-]{1,128}$')").message("streamName must be 1 to 128 characters of letters, digits, '_', '.' and '-'"))]
    pub stream_name: String,
    /// AWS region of the stream, e.g. us-west-2. Default us-west-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z]{2}(-[a-z]+)+-[0-9]+$')").message("region must look like us-west-2"))]
    pub region: Option<String>,
    /// A custom Kinesis endpoint URL (tests, VPC endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^ ]+$')").message("kinesisEndpoint must be an http:// or https:// URL"))]
    pub kinesis_endpoint: Option<String>,
    /// A custom STS endpoint URL for the web-identity and AssumeRole calls (VPC endpoints,
    /// tests); set on the pods as AWS_ENDPOINT_URL_STS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^ ]+$')").message("stsEndpoint must be an http:// or https:// URL"))]
    pub sts_endpoint: Option<String>,
    /// IAM role the exporter writes as (assumed with STS when the pod's identity is another).
    /// The platform decides which roles a namespace may use (tenancy.allowedRoleArns; default
    /// roles under the IAM path named after the namespace, arn:aws:iam::<account>:role/<namespace>/...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[a-zA-Z0-9+=,.@_/-]{1,512}$')").message("role must be an IAM role ARN, e.g. arn:aws:iam::123456789012:role/name"))]
    pub role: Option<String>,
}

/// The producer's settings, named as the seed's `kpl` keys in camelCase. Each field's
/// description, minimum and maximum come from the exporter's settings table
/// ([`kinesis_exporter_config::settings`]), so the API server accepts exactly the ranges the
/// exporter does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = kpl_schema)]
pub struct KplSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_batch_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_batch_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_interval_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_seconds: Option<i64>,
}

/// Fills each `spec.kpl` property's description and bounds from its settings-table row.
fn kpl_schema(schema: &mut schemars::Schema) {
    let Some(properties) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    for (name, property) in properties.iter_mut() {
        let (Some(setting), Some(property)) = (
            settings::by_crd_field(&format!("kpl.{name}")),
            property.as_object_mut(),
        ) else {
            continue;
        };
        let Kind::Integer {
            default,
            min,
            max,
            unit,
        } = setting.kind
        else {
            continue;
        };
        let unit = settings::unit_suffix(unit);
        property.insert(
            "description".into(),
            format!(
                "{} {min}..{max}{unit}, default {default} (exporter key {}).",
                setting.description, setting.key
            )
            .into(),
        );
        property.insert("minimum".into(), min.into());
        property.insert("maximum".into(), max.into());
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    OtlpProto,
    OtlpJson,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Buffered,
    Acknowledged,
}

#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// Partition key per signal: trace_id, random, or a resource attribute name (service.name).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PartitionKeySpec {
    /// trace_id (default), random, or a resource attribute name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 256").message("partition keys are 1 to 256 characters"))]
    pub traces: Option<String>,
    /// random (default) or a resource attribute name; metrics have no trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self != 'trace_id' && size(self) >= 1 && size(self) <= 256").message("metrics carry no trace id: use random or a resource attribute"))]
    pub metrics: Option<String>,
    /// random (default), trace_id, or a resource attribute name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 256").message("partition keys are 1 to 256 characters"))]
    pub logs: Option<String>,
}

/// How the exporter pods get AWS credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySpec {
    /// ProjectedToken (default): the operator projects a service-account token for
    /// sts.amazonaws.com and sets AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE itself (works
    /// without the EKS webhook). EksWebhook: only annotate the ServiceAccount with
    /// eks.amazonaws.com/role-arn. PodIdentity: nothing (EKS Pod Identity). None: nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<IdentityMode>,
    /// The pod's web identity role; the exporter then assumes aws.role from it
    /// (cross-account). Without it, the web identity is aws.role itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[a-zA-Z0-9+=,.@_/-]{1,512}$')").message("baseRoleArn must be an IAM role ARN"))]
    pub base_role_arn: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IdentityMode {
    #[default]
    ProjectedToken,
    EksWebhook,
    PodIdentity,
    None,
}

/// What the operator last saw.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KinesisExporterStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the exporter (for the scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready with the current configuration.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Ready of desired, e.g. 2/3 (printed by kubectl get).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Label selector of the pods (for the scale subresource and HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready, Progressing, Degraded and Delivering.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// What the exporter pods report on their delivery, summed over the pods that answered
    /// the operator's probe, since each pod started. Refreshed when the Delivering condition
    /// changes and at every resync (5 minutes); exact figures are in the pods' metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStatus>,
}

/// The exporter pods' own account of their delivery.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// Pods that answered the probe.
    #[serde(default)]
    pub pods_reporting: i32,
    /// User records the exporters cut from the OTLP they received.
    #[serde(default)]
    pub records_received: i64,
    /// Records stored in the stream.
    #[serde(default)]
    pub records_delivered: i64,
    /// Records given up on, by reason (reasons at 0 are left out).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records_dropped: BTreeMap<String, i64>,
    /// Records Kinesis refused for throughput, and that were retried.
    #[serde(default)]
    pub records_throttled: i64,
}

impl KinesisExporterSpec {
    pub fn identity_mode(&self) -> IdentityMode {
        self.identity
            .as_ref()
            .and_then(|i| i.mode)
            .unwrap_or_default()
    }

    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }

    pub fn signals(&self) -> Vec<Signal> {
        match &self.signals {
            Some(signals) => signals.clone(),
            None => vec![Signal::Traces, Signal::Metrics, Signal::Logs],
        }
    }
}

#[cfg(test)]
mod tests;
