//! Builders: a spec in, Kubernetes objects out, and the rendered configuration accepted by the
//! exporter's own validator.

use kinesis_exporter_config::{self as exporter, Config, Signal as ExporterSignal};
use serde_json::json;

use super::*;
use crate::crd::KinesisExporter;

fn kex(spec: serde_json::Value) -> KinesisExporter {
    let mut base = json!({"aws": {"streamName": "traces", "region": "eu-west-1",
                                  "role": "arn:aws:iam::123456789012:role/writer"}});
    if let (Some(b), Some(p)) = (base.as_object_mut(), spec.as_object()) {
        for (k, v) in p {
            b.insert(k.clone(), v.clone());
        }
    }
    let mut kex: KinesisExporter = serde_json::from_value(json!({
        "apiVersion": "kinesis.otlp.dev/v1alpha1", "kind": "KinesisExporter",
        "metadata": {"name": "team-a", "namespace": "observability", "uid": "0b9c-uid", "generation": 1},
        "spec": base,
    }))
    .unwrap();
    kex.metadata.uid = Some("0b9c-uid".into());
    kex
}

fn defaults() -> Defaults {
    Defaults {
        exporter_image: "registry.example/kinesis-exporter:1.0".into(),
    }
}

/// The exporter container's environment, by name.
fn container_env(kex: &KinesisExporter) -> std::collections::BTreeMap<String, String> {
    let pod = deployment(kex, &defaults())
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn loaded(kex: &KinesisExporter) -> Config {
    let text = render_config(&kex.spec);
    Config::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn the_rendered_configuration_loads_in_the_exporter_with_every_value() {
    let k = kex(json!({
        "aws": {"streamName": "s", "region": "ap-south-1", "kinesisEndpoint": "http://kinesis:4567",
                "role": "arn:aws:iam::123456789012:role/w"},
        "kpl": {"aggregateBatchCount": 10, "aggregateBatchSize": 1000, "batchSize": 100000,
                "batchCount": 200, "backlogCount": 50, "flushIntervalSeconds": 2,
                "maxConnections": 3, "maxRetries": 4, "maxBackoffSeconds": 7},
        "encoding": "otlp_json", "compression": "gzip", "delivery": "acknowledged",
        "partitionKey": {"traces": "service.name", "logs": "trace_id"},
        "signals": ["traces", "logs"],
    }));
    let config = loaded(&k);
    let e = &config.exporters["kinesis"];
    assert_eq!(e.aws.stream_name, "s");
    assert_eq!(e.aws.region, "ap-south-1");
    assert_eq!(
        e.aws.kinesis_endpoint.as_deref(),
        Some("http://kinesis:4567")
    );
    assert_eq!(
        e.aws.role.as_deref(),
        Some("arn:aws:iam::123456789012:role/w")
    );
    let kpl = &e.kpl;
    assert_eq!(
        (
            kpl.aggregate_batch_count,
            kpl.aggregate_batch_size,
            kpl.batch_size,
            kpl.batch_count
        ),
        (10, 1000, 100000, 200)
    );
    assert_eq!(
        (
            kpl.backlog_count,
            kpl.flush_interval_seconds,
            kpl.max_connections,
            kpl.max_retries,
            kpl.max_backoff_seconds
        ),
        (50, 2, 3, 4, 7)
    );
    assert_eq!(e.encoding, exporter::Encoding::OtlpJson);
    assert_eq!(e.compression, exporter::Compression::Gzip);
    assert_eq!(e.delivery, exporter::Delivery::Acknowledged);
    assert_eq!(
        e.partition_key.traces,
        exporter::PartitionKey::Attribute("service.name".into())
    );
    assert_eq!(e.partition_key.logs, exporter::PartitionKey::TraceId);
    assert_eq!(
        config.service.exporters_for(ExporterSignal::Traces),
        ["kinesis"]
    );
    assert!(
        config
            .service
            .exporters_for(ExporterSignal::Metrics)
            .is_empty()
    );
    assert_eq!(
        config.receivers.otlp.protocols.grpc.endpoint,
        "0.0.0.0:4317"
    );
    assert_eq!(config.service.telemetry.metrics.address, "0.0.0.0:8888");

    // Defaults: the seed's, all three signals.
    let config = loaded(&kex(json!({})));
    assert_eq!(
        config.exporters["kinesis"].kpl,
        exporter::KplConfig::default()
    );
    for s in ExporterSignal::ALL {
        assert_eq!(config.service.exporters_for(s), ["kinesis"]);
    }
}

#[test]
fn the_deployment_meets_the_restricted_pod_security_standard() {
    let d = deployment(&kex(json!({})), &defaults());
    let pod = d.spec.unwrap().template.spec.unwrap();
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    assert!(pod.host_network.is_none() && pod.host_pid.is_none());
    assert!(pod.volumes.iter().flatten().all(|v| v.host_path.is_none()));
}

#[test]
fn projected_token_mode_wires_irsa_like_the_webhook() {
    let k = kex(json!({}));
    let pod = deployment(&k, &defaults())
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let c = &pod.containers[0];
    let env: std::collections::BTreeMap<_, _> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(env["AWS_ROLE_ARN"], "arn:aws:iam::123456789012:role/writer");
    assert_eq!(
        env["AWS_WEB_IDENTITY_TOKEN_FILE"],
        "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "aws-iam-token")
        .unwrap();
    let projection = volume.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(projection.audience.as_deref(), Some("sts.amazonaws.com"));
    assert!(
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/var/run/secrets/eks.amazonaws.com/serviceaccount")
    );
    assert!(service_account(&k).unwrap().metadata.annotations.is_none());

    // A base role is the pod's identity; the exporter then assumes aws.role from it.
    let k = kex(json!({"identity": {"baseRoleArn": "arn:aws:iam::210987654321:role/pod"}}));
    assert_eq!(
        container_env(&k)["AWS_ROLE_ARN"],
        "arn:aws:iam::210987654321:role/pod"
    );
    assert_eq!(
        loaded(&k).exporters["kinesis"].aws.role.as_deref(),
        Some("arn:aws:iam::123456789012:role/writer")
    );
}

#[test]
fn a_custom_sts_endpoint_reaches_the_pods_and_rolls_them() {
    let endpoint = "http://sts.internal.example:5000";
    let k = kex(
        json!({"aws": {"streamName": "traces", "stsEndpoint": endpoint,
                               "role": "arn:aws:iam::123456789012:role/writer"}}),
    );
    assert_eq!(container_env(&k)["AWS_ENDPOINT_URL_STS"], endpoint);
    let without = kex(json!({"aws": {"streamName": "traces",
                                     "role": "arn:aws:iam::123456789012:role/writer"}}));
    assert_ne!(restart_hash_of(&k), restart_hash_of(&without));
    assert!(!container_env(&without).contains_key("AWS_ENDPOINT_URL_STS"));
}

#[test]
fn other_identity_modes_and_an_existing_service_account() {
    let k = kex(json!({"identity": {"mode": "EksWebhook"}}));
    let sa = service_account(&k).unwrap();
    assert_eq!(
        sa.metadata.annotations.unwrap()["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/writer"
    );
    for mode in ["EksWebhook", "PodIdentity", "None"] {
        let pod = deployment(&kex(json!({"identity": {"mode": mode}})), &defaults())
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert!(
            pod.volumes
                .iter()
                .flatten()
                .all(|v| v.name != "aws-iam-token"),
            "{mode}"
        );
        assert!(
            pod.containers[0]
                .env
                .iter()
                .flatten()
                .all(|e| e.name != "AWS_ROLE_ARN"),
            "{mode}"
        );
    }
    let k = kex(json!({"serviceAccountName": "shared-writer"}));
    assert!(service_account(&k).is_none());
    let pod = deployment(&k, &defaults())
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("shared-writer"));
}

fn restart_hash_of(k: &KinesisExporter) -> String {
    deployment(k, &defaults())
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()[RESTART_HASH_ANNOTATION]
        .clone()
}

#[test]
fn config_and_identity_changes_roll_pods_and_nothing_else_does() {
    let base = restart_hash_of(&kex(json!({})));
    assert_eq!(base, restart_hash_of(&kex(json!({}))), "deterministic");
    assert_ne!(
        base,
        restart_hash_of(&kex(json!({"kpl": {"maxRetries": 3}})))
    );
    assert_ne!(
        base,
        restart_hash_of(&kex(json!({"identity": {"mode": "PodIdentity"}})))
    );
    assert_eq!(base, restart_hash_of(&kex(json!({"replicas": 5}))));
    assert_eq!(
        base,
        restart_hash_of(&kex(json!({"podLabels": {"team": "a"}})))
    );
}

#[test]
fn names_labels_owners_and_selectors_are_stable() {
    let k =
        kex(json!({"podLabels": {"app.kubernetes.io/name": "hijack", "team": "a"}, "replicas": 3}));
    let d = deployment(&k, &defaults());
    assert_eq!(d.metadata.name.as_deref(), Some("team-a"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("observability"));
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("KinesisExporter", "team-a", Some(true))
    );
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let selector = spec.selector.match_labels.unwrap();
    let template_labels = spec.template.metadata.unwrap().labels.unwrap();
    for (k, v) in &selector {
        assert_eq!(
            &template_labels[k], v,
            "the pod labels cannot override the selector"
        );
    }
    assert_eq!(template_labels["team"], "a");
    assert_eq!(
        selector_string(&kex(json!({}))),
        "app.kubernetes.io/instance=team-a,app.kubernetes.io/name=kinesis-exporter"
    );
}

#[test]
fn shutdown_has_time_to_flush() {
    let k = kex(json!({"kpl": {"flushIntervalSeconds": 10, "maxBackoffSeconds": 20}}));
    let pod = deployment(&k, &defaults())
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    let timeout: i64 = args[args.iter().position(|a| a == "--shutdown-timeout").unwrap() + 1]
        .parse()
        .unwrap();
    assert_eq!(timeout, shutdown_timeout_seconds(&k.spec));
    assert!(timeout >= 10 + 20, "a flush interval plus a full backoff");
    let grace = pod.termination_grace_period_seconds.unwrap();
    let pre_stop = pod.containers[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap()
        .sleep
        .as_ref()
        .unwrap()
        .seconds;
    assert!(
        grace > pre_stop + timeout,
        "grace {grace} must cover preStop {pre_stop} + flush {timeout}"
    );
    let probes = (
        &pod.containers[0].liveness_probe,
        &pod.containers[0].readiness_probe,
    );
    assert_eq!(
        probes
            .0
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probes
            .1
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
}

#[test]
fn service_ports_and_the_disruption_budget() {
    let k = kex(json!({}));
    let ports: Vec<_> = service(&k)
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port))
        .collect();
    assert_eq!(
        ports,
        [
            ("otlp-grpc".to_string(), 4317),
            ("otlp-http".into(), 4318),
            ("metrics".into(), 8888)
        ]
    );
    assert!(
        pod_disruption_budget(&k).is_none(),
        "one pod: a budget would block node drains"
    );
    let pdb = pod_disruption_budget(&kex(json!({"replicas": 2}))).unwrap();
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let cm = config_map(&k);
    assert!(cm.data.unwrap()[CONFIG_FILE].contains("stream_name: traces"));
}

#[test]
fn only_objects_this_resource_controls_are_ours() {
    let k = kex(json!({}));
    let mine = child_meta(&k);
    assert_eq!(foreign_holder(&mine, "0b9c-uid"), None);

    let unowned = ObjectMeta {
        name: Some("a".into()),
        ..ObjectMeta::default()
    };
    assert_eq!(
        foreign_holder(&unowned, "0b9c-uid").as_deref(),
        Some("the operator did not create it")
    );
    // Same name and labels, but controlled by something else (another resource's uid, or
    // another kind): not ours either.
    let mut other = child_meta(&k);
    other.owner_references.as_mut().unwrap()[0].uid = "another-uid".into();
    assert!(foreign_holder(&other, "0b9c-uid").is_some());
    let mut replica_set = child_meta(&k);
    replica_set.owner_references.as_mut().unwrap()[0].kind = "ReplicaSet".into();
    assert_eq!(
        foreign_holder(&replica_set, "0b9c-uid").as_deref(),
        Some("its controller is ReplicaSet team-a")
    );
    // Written by the operator's own apply, its owner reference since removed: ours (the next
    // apply restores the reference). Written by anyone else without an owner: not ours.
    let managed = |manager: &str, operation: &str| ObjectMeta {
        name: Some("team-a".into()),
        managed_fields: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some(manager.into()),
                operation: Some(operation.into()),
                ..Default::default()
            },
        ]),
        ..ObjectMeta::default()
    };
    assert_eq!(
        foreign_holder(&managed(FIELD_MANAGER, "Apply"), "0b9c-uid"),
        None
    );
    assert!(foreign_holder(&managed("kubectl-client-side-apply", "Update"), "0b9c-uid").is_some());
    assert!(foreign_holder(&managed(FIELD_MANAGER, "Update"), "0b9c-uid").is_some());
    // An owner that is not the controller does not make it ours.
    let mut not_controller = child_meta(&k);
    not_controller.owner_references.as_mut().unwrap()[0].controller = Some(false);
    assert!(foreign_holder(&not_controller, "0b9c-uid").is_some());
}

#[test]
fn the_fingerprint_moves_with_what_others_change_and_not_with_status() {
    let k = kex(json!({}));
    let mut meta = child_meta(&k);
    meta.generation = Some(3);
    meta.resource_version = Some("100".into());
    let base = fingerprint(&meta);
    // A Deployment's status update moves its resourceVersion only.
    let mut status_only = meta.clone();
    status_only.resource_version = Some("101".into());
    assert_eq!(fingerprint(&status_only), base);
    // A spec edit moves the generation; a removed owner reference or label moves neither.
    let mut spec_edit = meta.clone();
    spec_edit.generation = Some(4);
    assert_ne!(fingerprint(&spec_edit), base);
    let mut orphaned = meta.clone();
    orphaned.owner_references = None;
    assert_ne!(fingerprint(&orphaned), base);
    let mut relabelled = meta.clone();
    relabelled
        .labels
        .as_mut()
        .unwrap()
        .insert("x".into(), "y".into());
    assert_ne!(fingerprint(&relabelled), base);
    // Kinds without a generation (ConfigMap, Service) go by resourceVersion.
    let mut config_map = meta.clone();
    config_map.generation = None;
    let mut edited = config_map.clone();
    edited.resource_version = Some("102".into());
    assert_ne!(fingerprint(&config_map), fingerprint(&edited));
}

#[test]
fn the_worker_threads_are_the_containers_cpu_limit_rounded_up() {
    let threads = |resources: serde_json::Value| {
        loaded(&kex(json!({ "resources": resources })))
            .service
            .worker_threads
    };
    let default = exporter::settings::range(exporter::settings::Group::Service, "worker_threads").0;
    assert_eq!(
        threads(json!({})),
        default,
        "no limit: the exporter's default"
    );
    assert_eq!(threads(json!({"requests": {"cpu": "4"}})), default);
    assert_eq!(threads(json!({"limits": {"cpu": "500m"}})), 1);
    assert_eq!(threads(json!({"limits": {"cpu": "2"}})), 2);
    assert_eq!(threads(json!({"limits": {"cpu": "2500m"}})), 3);
    assert_eq!(
        threads(json!({"limits": {"cpu": "1000"}})),
        256,
        "the key's maximum"
    );
}

#[test]
fn the_request_memory_budget_is_half_the_containers_memory_limit() {
    let budget = |resources: serde_json::Value| {
        loaded(&kex(json!({ "resources": resources })))
            .receivers
            .otlp
            .request_memory_limit_mib
    };
    let default = exporter::Receivers::default().otlp.request_memory_limit_mib;
    assert_eq!(
        budget(json!({})),
        default,
        "no limit: the exporter's default"
    );
    assert_eq!(budget(json!({"requests": {"memory": "1Gi"}})), default);
    assert_eq!(budget(json!({"limits": {"memory": "1Gi"}})), 512);
    assert_eq!(budget(json!({"limits": {"memory": "1.5G"}})), 715);
    assert_eq!(budget(json!({"limits": {"memory": "1.5Gi"}})), 768);
    assert_eq!(budget(json!({"limits": {"memory": "2147483648"}})), 1024);
    assert_eq!(
        budget(json!({"limits": {"memory": "20Mi"}})),
        16,
        "the key's minimum"
    );
    // And the pods roll with it, since it is in the configuration.
    let restart =
        |memory: &str| restart_hash_of(&kex(json!({"resources": {"limits": {"memory": memory}}})));
    assert_ne!(restart("1Gi"), restart("2Gi"));
}
