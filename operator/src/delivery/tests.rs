use std::collections::BTreeMap;

use super::*;

fn healthy() -> ExporterReport {
    ExporterReport {
        exporter: "kinesis".into(),
        stream: "orders".into(),
        records_received: 10,
        records_delivered: 10,
        health: HealthReport {
            last_success_age_seconds: Some(1.0),
            last_delivery_age_seconds: Some(1.0),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn error(code: &str, retryable: bool, age: f64) -> Option<ErrorReport> {
    Some(ErrorReport {
        operation: "PutRecords".into(),
        code: code.into(),
        message: "User: arn:aws:sts::1:assumed-role/reader/s is not authorized".into(),
        retryable,
        age_seconds: age,
    })
}

fn pods(exporters: Vec<ExporterReport>) -> Vec<PodReport> {
    exporters
        .into_iter()
        .map(|e| PodReport { exporters: vec![e] })
        .collect()
}

#[test]
fn records_stored_lately_is_delivering() {
    let d = judge(&pods(vec![healthy()]), None);
    assert_eq!((d.verdict.status, d.verdict.reason), ("True", "Delivering"));
    assert_eq!(d.verdict.message, "records reach stream orders");
    let status = d.status.unwrap();
    assert_eq!((status.records_delivered, status.pods_reporting), (10, 1));
}

#[test]
fn denied_access_names_the_call_the_stream_and_the_principal() {
    let mut r = healthy();
    r.records_delivered = 0;
    r.health.last_delivery_age_seconds = None;
    r.health.last_success_age_seconds = Some(30.0); // ListShards worked; PutRecords is refused
    r.health.last_error = error("AccessDenied", false, 2.0);
    let v = judge_exporter(&r, None);
    assert_eq!((v.status, v.reason), ("False", "AccessDenied"));
    assert!(
        v.message
            .starts_with("PutRecords on stream orders failed: AccessDenied: User: arn:"),
        "{}",
        v.message
    );
    let v = judge_exporter(&r, Some("arn:aws:iam::1:role/team/writer"));
    assert!(
        v.message.starts_with(
            "PutRecords on stream orders as role arn:aws:iam::1:role/team/writer failed: \
             AccessDenied: "
        ),
        "{}",
        v.message
    );
    for code in [
        "AccessDeniedException",
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "Http403",
    ] {
        r.health.last_error = error(code, false, 2.0);
        assert_eq!(judge_exporter(&r, None).reason, "AccessDenied", "{code}");
    }
}

#[test]
fn a_missing_stream_is_reported_without_any_traffic() {
    let r = ExporterReport {
        stream: "nope".into(),
        health: HealthReport {
            last_error: Some(ErrorReport {
                operation: "ListShards".into(),
                code: "ResourceNotFoundException".into(),
                message: "Stream nope under account 1 not found.".into(),
                retryable: false,
                age_seconds: 5.0,
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let v = judge_exporter(&r, None);
    assert_eq!((v.status, v.reason), ("False", "StreamNotFound"));
    assert!(
        v.message.contains("ListShards on stream nope"),
        "{}",
        v.message
    );
}

#[test]
fn an_error_before_the_last_success_is_history() {
    let mut r = healthy();
    r.health.last_error = error("AccessDeniedException", false, 5.0);
    assert_eq!(judge_exporter(&r, None).reason, "Delivering");
}

#[test]
fn a_retryable_failure_counts_only_once_it_lasts() {
    let mut r = healthy();
    r.health.last_success_age_seconds = Some(10.0);
    r.health.last_delivery_age_seconds = Some(10.0);
    r.health.last_error = error("InternalFailure", true, 1.0);
    assert_eq!(judge_exporter(&r, None).reason, "Delivering", "a blip");
    r.health.last_success_age_seconds = Some(90.0);
    r.health.last_delivery_age_seconds = Some(90.0);
    let v = judge_exporter(&r, None);
    assert_eq!((v.status, v.reason), ("False", "DeliveryFailing"));
    r.health.last_error = error("LimitExceededException", true, 1.0);
    assert_eq!(judge_exporter(&r, None).reason, "Throttled");
    assert_eq!(judge_exporter(&r, None).status, "False");
}

#[test]
fn recent_drops_and_throttles_colour_the_verdict() {
    let mut r = healthy();
    r.health.last_throttle_age_seconds = Some(30.0);
    let v = judge_exporter(&r, None);
    assert_eq!((v.status, v.reason), ("True", "Throttled"));
    r.health.last_throttle_age_seconds = Some(RECENT_SECONDS + 1.0);
    assert_eq!(judge_exporter(&r, None).reason, "Delivering");

    r.health.last_drop = Some(DropReport {
        reason: "retries_exhausted".into(),
        age_seconds: 20.0,
    });
    let v = judge_exporter(&r, None);
    assert_eq!((v.status, v.reason), ("False", "Dropping"));
    assert!(v.message.contains("retries_exhausted"));
    // A record Kinesis could never take is the client's, and it was told.
    r.health.last_drop = Some(DropReport {
        reason: "invalid_partition_key".into(),
        age_seconds: 20.0,
    });
    assert_eq!(judge_exporter(&r, None).reason, "Delivering");
}

#[test]
fn nothing_sent_is_unknown_and_says_so() {
    let idle = ExporterReport {
        stream: "orders".into(),
        health: HealthReport {
            last_success_age_seconds: Some(3.0),
            ..Default::default()
        },
        ..Default::default()
    };
    let v = judge_exporter(&idle, None);
    assert_eq!((v.status, v.reason), ("Unknown", "NoData"));
    let waiting = ExporterReport {
        records_received: 3,
        ..idle
    };
    assert_eq!(judge_exporter(&waiting, None).reason, "Pending");
    assert_eq!(judge(&[], None), Delivery::default());
    assert_eq!(judge(&[], None).verdict.reason, "NoReport");
}

#[test]
fn the_worst_pod_decides_and_counts_add_up() {
    let mut denied = healthy();
    denied.health.last_error = error("AccessDeniedException", false, 0.5);
    denied.records_dropped = BTreeMap::from([
        ("permanent_error".to_string(), 4),
        ("shutdown_deadline".to_string(), 0),
    ]);
    let idle = ExporterReport {
        stream: "orders".into(),
        ..Default::default()
    };
    let d = judge(&pods(vec![healthy(), idle, denied]), None);
    assert_eq!(d.verdict.reason, "AccessDenied");
    let status = d.status.unwrap();
    assert_eq!(status.pods_reporting, 3);
    assert_eq!(status.records_delivered, 20);
    assert_eq!(
        status.records_dropped,
        BTreeMap::from([("permanent_error".to_string(), 4)]),
        "reasons at 0 are left out"
    );
    let d = judge(
        &pods(vec![
            ExporterReport {
                stream: "orders".into(),
                ..Default::default()
            },
            healthy(),
        ]),
        None,
    );
    assert_eq!(d.verdict.reason, "Delivering", "one idle pod is no news");
}

#[test]
fn the_exporters_status_document_parses() {
    // What kinesis-exporter's /status answers (exporter/src/telemetry.rs).
    let body = r#"{"exporters":[{"exporter":"kinesis","stream":"orders","records_received":3,
        "records_delivered":0,"records_dropped":{"permanent_error":3,"retries_exhausted":0},
        "records_throttled":0,"backlog_records":0,"backlog_capacity_records":100000,
        "last_success_age_seconds":12.5,"last_delivery_age_seconds":null,
        "last_throttle_age_seconds":null,
        "last_error":{"operation":"PutRecords","code":"AccessDenied","message":"denied",
                      "retryable":false,"age_seconds":0.25},
        "last_drop":{"reason":"permanent_error","age_seconds":0.25}}]}"#;
    let report: PodReport = serde_json::from_str(body).unwrap();
    let d = judge(&[report], None);
    assert_eq!(
        (d.verdict.status, d.verdict.reason),
        ("False", "AccessDenied")
    );
    assert_eq!(d.status.unwrap().records_dropped["permanent_error"], 3);
}
