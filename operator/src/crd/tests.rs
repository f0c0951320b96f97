//! Every validation rule of the KinesisExporter CRD, evaluated locally with kube's CEL
//! implementation: what the API server would accept and what it would refuse, with which message.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::*;

/// A valid resource as JSON, with `patch` merged into its spec.
fn resource(patch: Value) -> KinesisExporter {
    let mut spec = json!({
        "aws": {"streamName": "traces", "region": "us-west-2",
                "role": "arn:aws:iam::123456789012:role/exporter"},
    });
    merge(&mut spec, patch);
    let object = json!({
        "apiVersion": "kinesis.otlp.dev/v1alpha1",
        "kind": "KinesisExporter",
        "metadata": {"name": "team-a", "namespace": "default"},
        "spec": spec,
    });
    serde_json::from_value(object).expect("test resources deserialise")
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    base.remove(&k);
                } else {
                    merge(base.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (base, patch) => *base = patch,
    }
}

/// The messages of the rules `patch` breaks.
fn violations(patch: Value) -> Vec<String> {
    match resource(patch).validate_cel() {
        Ok(()) => vec![],
        Err(errors) => errors.to_string().lines().map(str::to_string).collect(),
    }
}

fn assert_refused(patch: Value, message: &str) {
    let got = violations(patch.clone());
    assert!(
        got.iter().any(|line| line.contains(message)),
        "{patch} should be refused with {message:?}; got {got:?}"
    );
}

#[test]
fn a_minimal_and_a_full_resource_are_valid() {
    assert_eq!(violations(json!({})), Vec::<String>::new());
    let full = json!({
        "aws": {"kinesisEndpoint": "https://kinesis.us-west-2.amazonaws.com",
                "stsEndpoint": "https://sts.us-west-2.amazonaws.com"},
        "kpl": {"aggregateBatchCount": 4294967295u64, "aggregateBatchSize": 1048576, "batchSize": 5242880,
                "batchCount": 1000, "backlogCount": 2000, "flushIntervalSeconds": 5,
                "maxConnections": 256, "maxRetries": 0, "maxBackoffSeconds": 1},
        "encoding": "otlp_json", "compression": "zstd",
        "partitionKey": {"traces": "trace_id", "metrics": "service.name", "logs": "random"},
        "signals": ["traces", "logs"], "replicas": 3,
        "identity": {"mode": "ProjectedToken", "baseRoleArn": "arn:aws:iam::210987654321:role/pod"},
    });
    assert_eq!(violations(full), Vec::<String>::new());
}

#[test]
fn stream_region_endpoint_and_role_patterns() {
    for bad in ["", "has space", "a/b", &"x".repeat(129)] {
        assert_refused(json!({"aws": {"streamName": bad}}), "streamName must be");
    }
    for bad in ["US-WEST-2", "uswest2", "us-west"] {
        assert_refused(
            json!({"aws": {"region": bad}}),
            "region must look like us-west-2",
        );
    }
    assert_refused(
        json!({"aws": {"kinesisEndpoint": "ftp://x"}}),
        "kinesisEndpoint must be",
    );
    assert_refused(
        json!({"aws": {"stsEndpoint": "sts.example"}}),
        "stsEndpoint must be",
    );
    for bad in [
        "arn:test-role",
        "arn:aws:iam::123:role/x",
        "arn:aws:s3:::bucket",
    ] {
        assert_refused(
            json!({"aws": {"role": bad}}),
            "role must be an IAM role ARN",
        );
    }
    assert_eq!(
        violations(json!({"aws": {"role": "arn:aws-cn:iam::123456789012:role/path/name"}})),
        Vec::<String>::new()
    );
}

/// The CRD's kpl bounds are the exporter's: every `spec.kpl` property has a settings-table row,
/// its OpenAPI minimum and maximum are that row's range, and a resource at either end renders
/// a configuration the exporter's own validator accepts with exactly that value, while one
/// past either end is refused by the exporter too.
#[test]
fn the_crd_and_the_exporter_accept_exactly_the_same_kpl_ranges() {
    use kinesis_exporter_config::Config;
    use kinesis_exporter_config::settings::{self, Kind};
    let crd = serde_json::to_value(KinesisExporter::crd()).unwrap();
    let kpl = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["kpl"]["properties"];
    let properties = kpl.as_object().expect("spec.kpl has properties");
    assert_eq!(properties.len(), 9, "the seed's nine kpl keys");
    for (name, property) in properties {
        let setting = settings::by_crd_field(&format!("kpl.{name}"))
            .unwrap_or_else(|| panic!("spec.kpl.{name} has no row in the settings table"));
        let Kind::Integer { min, max, .. } = setting.kind else {
            panic!("{name} is not an integer setting");
        };
        // JSONSchemaProps keeps bounds as floating point; every table bound is exact in f64.
        assert_eq!(property["minimum"].as_f64(), Some(min as f64), "{name}");
        assert_eq!(property["maximum"].as_f64(), Some(max as f64), "{name}");
        let exporter_key = setting.key.strip_prefix("kpl.").unwrap();
        for value in [min, max] {
            let rendered = crate::resources::render_config(
                &resource(json!({"kpl": {name.as_str(): value}})).spec,
            );
            let config = Config::from_yaml(&rendered).unwrap_or_else(|e| panic!("{e}"));
            let got = serde_json::to_value(&config.exporters["kinesis"].kpl).unwrap();
            assert_eq!(got[exporter_key], json!(value), "{name}={value}");
        }
        let mut outside = vec![max + 1];
        if min > 0 {
            outside.push(min - 1);
        }
        for value in outside {
            let yaml = format!("exporters:\n  kinesis:\n    kpl:\n      {exporter_key}: {value}\n");
            assert!(
                Config::from_yaml(&yaml).is_err(),
                "the exporter accepted {exporter_key}={value}"
            );
        }
    }
}

#[test]
fn other_ranges_and_patterns() {
    assert_refused(json!({"replicas": -1}), "replicas must be between");
    assert_refused(
        json!({"partitionKey": {"metrics": "trace_id"}}),
        "metrics carry no trace id",
    );
    assert_refused(
        json!({"partitionKey": {"traces": ""}}),
        "partition keys are 1 to 256",
    );

    let mut long = resource(json!({}));
    long.metadata.name = Some("n".repeat(53));
    let err = long.validate_cel().unwrap_err().to_string();
    assert!(err.contains("at most 52 characters"), "{err}");
}

#[test]
fn the_crd_has_the_names_columns_subresources_and_descriptions() {
    let crd = KinesisExporter::crd();
    assert_eq!(crd.spec.group, "kinesis.otlp.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["kex".to_string()][..])
    );
    let version = &crd.spec.versions[0];
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Stream", "Region", "Ready", "Delivery", "Age"]);
    let subresources = version.subresources.as_ref().unwrap();
    assert!(subresources.status.is_some());
    let scale = subresources.scale.as_ref().unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );

    // kubectl explain: every property of the spec (ours, not Kubernetes' own types) has a description.
    let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    let mut missing = Vec::new();
    describe(spec, "spec", &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

/// Collects the paths of properties without a description, not descending into the embedded
/// Kubernetes types (which carry their own).
fn describe(schema: &Value, path: &str, missing: &mut Vec<String>) {
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    for (name, property) in properties {
        let here = format!("{path}.{name}");
        if property.get("description").is_none() {
            missing.push(here.clone());
        }
        if !matches!(name.as_str(), "resources" | "tolerations" | "affinity") {
            describe(property, &here, missing);
            describe(&property["items"], &here, missing);
        }
    }
}
