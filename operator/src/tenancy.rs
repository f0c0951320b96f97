//! The platform team's guardrails on what a tenant may ask for through a KinesisExporter:
//! images, ServiceAccounts, IAM roles, priority classes, tolerations, pod labels and
//! namespaces. Pure, so each rule is unit-tested; the reconciler deploys nothing for a
//! resource that breaks one and says why in its Degraded condition.
//!
//! Patterns are globs (`*` any run of characters, `?` one character); in role patterns,
//! `{namespace}` stands for the resource's namespace. The chart renders the same patterns into
//! its ValidatingAdmissionPolicy, so the API server holds the operator to them too.

use std::fmt;

use kube::ResourceExt;
use wildmatch::WildMatch;

use crate::crd::KinesisExporter;

/// Role ARNs a namespace may use by default: roles under an IAM path named after it, e.g.
/// `arn:aws:iam::123456789012:role/team-a/kinesis-writer` in namespace team-a. A path rather
/// than a name prefix, so namespace `team` cannot use the roles of namespace `team-b`.
pub const DEFAULT_ROLE_ARN_PATTERN: &str = "arn:*:iam::*:role/{namespace}/*";
/// Pod labels a tenant may set by default: only under our own prefix, which no other
/// workload's selector uses.
pub const DEFAULT_POD_LABEL_PREFIX: &str = "kinesis.otlp.dev/";
/// Namespaces no KinesisExporter is ever deployed in by default.
pub const DEFAULT_EXCLUDED_NAMESPACES: &str = "kube-system,kube-public,kube-node-lease";

/// What the platform allows. Empty lists allow nothing, except where noted.
#[derive(Debug, Clone)]
pub struct Tenancy {
    /// Images besides the operator's own exporter image, which is always allowed.
    pub allowed_images: Vec<String>,
    /// Whether `spec.serviceAccountName` may name an existing ServiceAccount.
    pub allow_service_account_name: bool,
    /// Patterns for `spec.aws.role` and `spec.identity.baseRoleArn`.
    pub allowed_role_arns: Vec<String>,
    /// Patterns for `spec.priorityClassName`.
    pub allowed_priority_classes: Vec<String>,
    /// Patterns for the key of each toleration; a toleration without a key (it tolerates
    /// every taint) needs the pattern `*`.
    pub allowed_toleration_keys: Vec<String>,
    /// Prefixes every key of `spec.podLabels` must start with.
    pub pod_label_prefixes: Vec<String>,
    /// Namespaces whose KinesisExporters are refused.
    pub excluded_namespaces: Vec<String>,
}

impl Default for Tenancy {
    /// The defaults of the operator's flags and of the chart's `tenancy` values.
    fn default() -> Self {
        Tenancy {
            allowed_images: Vec::new(),
            allow_service_account_name: false,
            allowed_role_arns: vec![DEFAULT_ROLE_ARN_PATTERN.into()],
            allowed_priority_classes: Vec::new(),
            allowed_toleration_keys: Vec::new(),
            pod_label_prefixes: vec![DEFAULT_POD_LABEL_PREFIX.into()],
            excluded_namespaces: DEFAULT_EXCLUDED_NAMESPACES
                .split(',')
                .map(String::from)
                .collect(),
        }
    }
}

/// One field the policy refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn matches_any(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| WildMatch::new(p).matches(value))
}

/// The allowed values, quoted, for a refusal's message.
fn allowed(patterns: &[String]) -> String {
    if patterns.is_empty() {
        "none are allowed".into()
    } else {
        let quoted: Vec<String> = patterns.iter().map(|p| format!("{p:?}")).collect();
        format!("allowed: {}", quoted.join(", "))
    }
}

impl Tenancy {
    /// Every rule `kex` breaks; empty when it may be deployed. `default_image` is the
    /// operator's exporter image.
    pub fn check(&self, kex: &KinesisExporter, default_image: &str) -> Vec<Refusal> {
        let namespace = kex.namespace().unwrap_or_default();
        let spec = &kex.spec;
        let mut refusals = Vec::new();
        let mut refuse = |field: &str, reason: String| {
            refusals.push(Refusal {
                field: field.into(),
                reason,
            })
        };

        if self.excluded_namespaces.contains(&namespace) {
            refuse(
                "metadata.namespace",
                format!("namespace {namespace:?} is excluded by the platform"),
            );
        }
        if let Some(image) = &spec.image
            && image != default_image
            && !matches_any(&self.allowed_images, image)
        {
            let mut images = vec![default_image.to_string()];
            images.extend(self.allowed_images.iter().cloned());
            refuse(
                "spec.image",
                format!("image {image:?} is not allowed ({})", allowed(&images)),
            );
        }
        if let Some(account) = &spec.service_account_name
            && !self.allow_service_account_name
        {
            refuse(
                "spec.serviceAccountName",
                format!(
                    "running as an existing ServiceAccount ({account:?}) is not allowed; leave it \
                     unset and the operator creates one for this exporter"
                ),
            );
        }
        let role_patterns: Vec<String> = self
            .allowed_role_arns
            .iter()
            .map(|p| p.replace("{namespace}", &namespace))
            .collect();
        let base_role = spec
            .identity
            .as_ref()
            .and_then(|i| i.base_role_arn.as_ref());
        for (field, role) in [
            ("spec.aws.role", spec.aws.role.as_ref()),
            ("spec.identity.baseRoleArn", base_role),
        ] {
            if let Some(role) = role
                && !matches_any(&role_patterns, role)
            {
                refuse(
                    field,
                    format!(
                        "role {role:?} is not allowed in namespace {namespace:?} ({})",
                        allowed(&role_patterns)
                    ),
                );
            }
        }
        if let Some(class) = &spec.priority_class_name
            && !matches_any(&self.allowed_priority_classes, class)
        {
            refuse(
                "spec.priorityClassName",
                format!(
                    "priority class {class:?} is not allowed ({})",
                    allowed(&self.allowed_priority_classes)
                ),
            );
        }
        for (i, toleration) in spec.tolerations.iter().flatten().enumerate() {
            let key = toleration.key.as_deref().unwrap_or("");
            if !matches_any(&self.allowed_toleration_keys, key) {
                let what = if key.is_empty() {
                    "a toleration without a key tolerates every taint".to_string()
                } else {
                    format!("toleration key {key:?}")
                };
                refuse(
                    &format!("spec.tolerations[{i}]"),
                    format!(
                        "{what}: not allowed ({})",
                        allowed(&self.allowed_toleration_keys)
                    ),
                );
            }
        }
        for key in spec.pod_labels.iter().flat_map(|labels| labels.keys()) {
            if !self.pod_label_prefixes.iter().any(|p| key.starts_with(p)) {
                refuse(
                    &format!("spec.podLabels[{key:?}]"),
                    format!(
                        "pod label keys must start with one of {:?}, so that no other \
                         workload's selector can match the exporter's pods",
                        self.pod_label_prefixes
                    ),
                );
            }
        }
        refusals
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const IMAGE: &str = "registry.example/kinesis-exporter:1.0";

    fn kex(namespace: &str, spec: serde_json::Value) -> KinesisExporter {
        let mut spec = spec;
        let aws = spec
            .as_object_mut()
            .unwrap()
            .entry("aws")
            .or_insert(json!({}));
        aws.as_object_mut()
            .unwrap()
            .entry("streamName")
            .or_insert(json!("s"));
        let mut k = KinesisExporter::new("x", serde_json::from_value(spec).unwrap());
        k.metadata.namespace = Some(namespace.into());
        k
    }

    fn fields(refusals: &[Refusal]) -> Vec<&str> {
        refusals.iter().map(|r| r.field.as_str()).collect()
    }

    #[test]
    fn a_plain_resource_passes_the_defaults() {
        let k = kex(
            "team-a",
            json!({"aws": {"role": "arn:aws:iam::123456789012:role/team-a/writer"},
                   "image": IMAGE, "podLabels": {"kinesis.otlp.dev/team": "a"}}),
        );
        assert_eq!(Tenancy::default().check(&k, IMAGE), vec![]);
    }

    #[test]
    fn each_escalation_a_tenant_tried_is_refused_by_default() {
        let k = kex(
            "team-a",
            json!({
                "aws": {"role": "arn:aws:iam::123456789012:role/team-b/writer"},
                "identity": {"baseRoleArn": "arn:aws:iam::123456789012:role/admin"},
                "image": "busybox:latest",
                "serviceAccountName": "secret-reader",
                "priorityClassName": "system-node-critical",
                "tolerations": [{"operator": "Exists"}],
                "podLabels": {"app": "payments"},
            }),
        );
        let refusals = Tenancy::default().check(&k, IMAGE);
        assert_eq!(
            fields(&refusals),
            [
                "spec.image",
                "spec.serviceAccountName",
                "spec.aws.role",
                "spec.identity.baseRoleArn",
                "spec.priorityClassName",
                "spec.tolerations[0]",
                "spec.podLabels[\"app\"]",
            ]
        );
        let text: Vec<String> = refusals.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("\"busybox:latest\" is not allowed"),
            "{text:?}"
        );
        assert!(
            text[2].contains("arn:*:iam::*:role/team-a/*"),
            "the message shows the namespace's pattern: {text:?}"
        );
        assert!(text[5].contains("without a key"), "{text:?}");
    }

    #[test]
    fn a_namespace_prefix_does_not_reach_another_namespaces_roles() {
        let k = kex(
            "team",
            json!({"aws": {"role": "arn:aws:iam::123456789012:role/team-b/writer"}}),
        );
        assert_eq!(
            fields(&Tenancy::default().check(&k, IMAGE)),
            ["spec.aws.role"]
        );
    }

    #[test]
    fn excluded_namespaces_are_refused() {
        let k = kex(
            "kube-system",
            json!({"aws": {"role": "arn:aws:iam::123456789012:role/kube-system/w"}}),
        );
        assert_eq!(
            fields(&Tenancy::default().check(&k, IMAGE)),
            ["metadata.namespace"]
        );
    }

    #[test]
    fn the_platform_can_allow_each_one() {
        let tenancy = Tenancy {
            allowed_images: vec!["registry.example/*".into()],
            allow_service_account_name: true,
            allowed_role_arns: vec!["arn:aws:iam::123456789012:role/*".into()],
            allowed_priority_classes: vec!["exporters".into()],
            allowed_toleration_keys: vec!["dedicated".into(), "example.com/*".into()],
            pod_label_prefixes: vec!["team.example/".into()],
            excluded_namespaces: vec![],
        };
        let k = kex(
            "kube-system",
            json!({
                "aws": {"role": "arn:aws:iam::123456789012:role/any"},
                "image": "registry.example/custom:2",
                "serviceAccountName": "mine",
                "priorityClassName": "exporters",
                "tolerations": [{"key": "dedicated", "operator": "Exists"},
                                {"key": "example.com/pool", "value": "x"}],
                "podLabels": {"team.example/name": "a"},
            }),
        );
        assert_eq!(tenancy.check(&k, IMAGE), vec![]);
        // A keyless toleration still needs `*` explicitly.
        let wildcard = kex("ns", json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(
            fields(&tenancy.check(&wildcard, IMAGE)),
            ["spec.tolerations[0]"]
        );
        let star = Tenancy {
            allowed_toleration_keys: vec!["*".into()],
            ..tenancy
        };
        assert_eq!(star.check(&wildcard, IMAGE), vec![]);
    }

    /// The chart's `tenancy` values are the operator's defaults, so installing the chart
    /// without values and running the binary without flags mean the same policy.
    #[test]
    fn the_charts_defaults_are_the_operators() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/kinesis-operator/values.yaml"
        );
        let values: serde_json::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let chart = &values["tenancy"];
        let defaults = Tenancy::default();
        let list = |key: &str| -> Vec<String> {
            serde_json::from_value(chart[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}"))
        };
        assert_eq!(list("allowedImages"), defaults.allowed_images);
        assert_eq!(
            chart["allowServiceAccountName"],
            json!(defaults.allow_service_account_name)
        );
        assert_eq!(list("allowedRoleArns"), defaults.allowed_role_arns);
        assert_eq!(
            list("allowedPriorityClasses"),
            defaults.allowed_priority_classes
        );
        assert_eq!(
            list("allowedTolerationKeys"),
            defaults.allowed_toleration_keys
        );
        assert_eq!(list("podLabelPrefixes"), defaults.pod_label_prefixes);
        assert_eq!(list("excludedNamespaces"), defaults.excluded_namespaces);
    }
}
