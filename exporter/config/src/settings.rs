//! One table of every setting: key, type, default, range, description, and where the
//! KinesisExporter resource carries it. The exporter's validator, the CRD's schema (the
//! operator's `crdgen`) and the README's configuration tables are all made from this table,
//! so the three cannot drift apart.

use std::fmt::Write as _;

/// Where a key lives in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Under `exporters.kinesis` (and every `exporters.kinesis/<name>`).
    Exporter,
    /// Under `receivers.otlp`.
    Receiver,
    /// Under `service`.
    Service,
}

impl Group {
    pub fn prefix(self) -> &'static str {
        match self {
            Group::Exporter => "exporters.kinesis",
            Group::Receiver => "receivers.otlp",
            Group::Service => "service",
        }
    }
}

/// Who defined the key: the old Collector exporter's README (the seed), the OpenTelemetry
/// Collector's own receivers, or this project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Seed,
    Collector,
    Ours,
}

/// The type of a setting and what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An unsigned integer in `min..=max`; `unit` is said after the range ("seconds").
    Integer {
        default: u64,
        min: u64,
        max: u64,
        unit: &'static str,
    },
    /// One of a fixed list of words.
    OneOf {
        default: &'static str,
        values: &'static [&'static str],
    },
    /// Text checked by a rule of its own (`rule` says it in words); `None` default: unset.
    Text {
        default: Option<&'static str>,
        rule: &'static str,
    },
}

/// One setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub group: Group,
    /// The key below its group, dotted: `kpl.batch_count`.
    pub key: &'static str,
    pub kind: Kind,
    pub origin: Origin,
    /// The KinesisExporter field that carries it, below `spec`: `kpl.batchCount`.
    pub crd: Option<&'static str>,
    pub description: &'static str,
}

impl Setting {
    /// The full dotted path in the file: `exporters.kinesis.kpl.batch_count`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.group.prefix(), self.key)
    }

    /// `(default, min, max)` of an integer setting; panics for another kind (a bug).
    pub fn range(&self) -> (u64, u64, u64) {
        match self.kind {
            Kind::Integer {
                default, min, max, ..
            } => (default, min, max),
            _ => panic!("{} is not an integer setting", self.path()),
        }
    }

    /// The rule a value breaks, as the validator reports it.
    pub fn rule(&self) -> String {
        match self.kind {
            Kind::Integer { min, max, unit, .. } => {
                format!("must be between {min} and {max}{}", unit_suffix(unit))
            }
            Kind::OneOf { values, .. } => format!("must be one of {}", values.join(", ")),
            Kind::Text { rule, .. } => rule.to_string(),
        }
    }
}

const fn integer(default: u64, min: u64, max: u64, unit: &'static str) -> Kind {
    Kind::Integer {
        default,
        min,
        max,
        unit,
    }
}

/// ` seconds` for a unit, nothing without one: what follows a number in prose.
pub fn unit_suffix(unit: &str) -> String {
    if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    }
}

/// Every setting, in the order the README lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        group: Group::Exporter,
        key: "aws.stream_name",
        kind: Kind::Text {
            default: Some("test-stream"),
            rule: "must be 1 to 128 characters of letters, digits, '_', '.' and '-'",
        },
        origin: Origin::Seed,
        crd: Some("aws.streamName"),
        description: "The Kinesis data stream records are written to.",
    },
    Setting {
        group: Group::Exporter,
        key: "aws.region",
        kind: Kind::Text {
            default: Some("us-west-2"),
            rule: "must be a region name of lowercase letters, digits and '-', e.g. us-west-2",
        },
        origin: Origin::Seed,
        crd: Some("aws.region"),
        description: "AWS region of the stream (the seed's `mars-1` is accepted too).",
    },
    Setting {
        group: Group::Exporter,
        key: "aws.kinesis_endpoint",
        kind: Kind::Text {
            default: None,
            rule: "must be a URL (http:// or https://) or a host name",
        },
        origin: Origin::Seed,
        crd: Some("aws.kinesisEndpoint"),
        description: "A custom Kinesis endpoint; a bare `host[:port]` means `https://host[:port]`. \
                      Default: the SDK's endpoint for the region.",
    },
    Setting {
        group: Group::Exporter,
        key: "aws.role",
        kind: Kind::Text {
            default: None,
            rule: "must be an IAM role ARN, e.g. arn:aws:iam::123456789012:role/name",
        },
        origin: Origin::Seed,
        crd: Some("aws.role"),
        description: "A role to assume with STS on top of the default credentials (must start \
                      with `arn:`; STS judges the rest).",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.aggregate_batch_count",
        kind: integer(4_294_967_295, 1, 4_294_967_295, ""),
        origin: Origin::Seed,
        crd: Some("kpl.aggregateBatchCount"),
        description: "Most user records in one aggregated record.",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.aggregate_batch_size",
        kind: integer(51_200, 1, 1_048_576, "bytes"),
        origin: Origin::Seed,
        crd: Some("kpl.aggregateBatchSize"),
        description: "Most bytes in one aggregated record (1 MiB is the Kinesis record limit); \
                      a user record of at least this many bytes is sent raw.",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.batch_size",
        kind: integer(5_242_880, 1, 5_242_880, "bytes"),
        origin: Origin::Seed,
        crd: Some("kpl.batchSize"),
        description: "Most bytes (data plus partition keys) in one PutRecords request \
                      (5 MiB is the Kinesis limit).",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.batch_count",
        kind: integer(1000, 1, 1000, ""),
        origin: Origin::Seed,
        crd: Some("kpl.batchCount"),
        description: "Most records in one PutRecords request. Kinesis takes 500, so requests \
                      are split at 500 and a value above 500 logs one warning at start-up.",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.backlog_count",
        kind: integer(2000, 1, 10_000_000, ""),
        origin: Origin::Seed,
        crd: Some("kpl.backlogCount"),
        description: "User records buffered before senders wait (back-pressure).",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.flush_interval_seconds",
        kind: integer(5, 1, 3600, "seconds"),
        origin: Origin::Seed,
        crd: Some("kpl.flushIntervalSeconds"),
        description: "Partial aggregates and batches are sent at least this often.",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.max_connections",
        kind: integer(24, 1, 256, ""),
        origin: Origin::Seed,
        crd: Some("kpl.maxConnections"),
        description: "Concurrent PutRecords requests.",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.max_retries",
        kind: integer(10, 0, 100, ""),
        origin: Origin::Seed,
        crd: Some("kpl.maxRetries"),
        description: "Retries before a record is dropped (counted and logged); attempts per \
                      record = 1 + max_retries. Throttling spends no retry: a throttled \
                      shard's records wait for its backoff, and a full backlog refuses new \
                      requests instead.",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.max_backoff_seconds",
        kind: integer(60, 1, 3600, "seconds"),
        origin: Origin::Seed,
        crd: Some("kpl.maxBackoffSeconds"),
        description: "Cap of the exponential retry backoff.",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.linger_ms",
        kind: integer(100, 1, 3_600_000, "milliseconds"),
        origin: Origin::Ours,
        crd: None,
        description: "Longest a user record waits in a partial aggregate or batch before it is \
                      sent (the KPL's RecordMaxBufferedTime); flush_interval_seconds stays \
                      the upper bound.",
    },
    Setting {
        group: Group::Exporter,
        key: "kpl.request_timeout_seconds",
        kind: integer(30, 1, 600, "seconds"),
        origin: Origin::Ours,
        crd: None,
        description: "One PutRecords attempt that takes longer fails and is retried.",
    },
    Setting {
        group: Group::Exporter,
        key: "encoding",
        kind: Kind::OneOf {
            default: "otlp_proto",
            values: &["otlp_proto", "otlp_json"],
        },
        origin: Origin::Seed,
        crd: Some("encoding"),
        description: "How OTLP data is written into a record: one Export request per resource, \
                      as protobuf or as OTLP/JSON.",
    },
    Setting {
        group: Group::Exporter,
        key: "compression",
        kind: Kind::OneOf {
            default: "none",
            values: &["none", "gzip", "zstd"],
        },
        origin: Origin::Ours,
        crd: Some("compression"),
        description: "Compression of each user record's payload.",
    },
    Setting {
        group: Group::Exporter,
        key: "delivery",
        kind: Kind::OneOf {
            default: "buffered",
            values: &["buffered", "acknowledged"],
        },
        origin: Origin::Ours,
        crd: Some("delivery"),
        description: "When an OTLP request is answered: `buffered` once its records are in \
                      the backlog; `acknowledged` once every record is stored in Kinesis (or \
                      refused for good, reported in partial_success; a record given up on \
                      after retries gets a retryable error), so a crash loses nothing a \
                      client was told is kept. Costs the time to store: flush and linger.",
    },
    Setting {
        group: Group::Exporter,
        key: "partition_key.traces",
        kind: Kind::Text {
            default: Some("trace_id"),
            rule: "must be trace_id, random or a resource attribute name",
        },
        origin: Origin::Ours,
        crd: Some("partitionKey.traces"),
        description: "`trace_id` (a trace's spans share a key and so a shard), `random`, or a \
                      resource attribute name such as `service.name`.",
    },
    Setting {
        group: Group::Exporter,
        key: "partition_key.metrics",
        kind: Kind::Text {
            default: Some("random"),
            rule: "must be random or a resource attribute name (metrics carry no trace id)",
        },
        origin: Origin::Ours,
        crd: Some("partitionKey.metrics"),
        description: "`random` or a resource attribute name.",
    },
    Setting {
        group: Group::Exporter,
        key: "partition_key.logs",
        kind: Kind::Text {
            default: Some("random"),
            rule: "must be trace_id, random or a resource attribute name",
        },
        origin: Origin::Ours,
        crd: Some("partitionKey.logs"),
        description: "`trace_id`, `random` or a resource attribute name.",
    },
    Setting {
        group: Group::Exporter,
        key: "enqueue_timeout_seconds",
        kind: integer(5, 0, 300, "seconds"),
        origin: Origin::Ours,
        crd: None,
        description: "How long an OTLP request waits for room in a full backlog before it is \
                      answered \"retry later\" (HTTP 503, gRPC UNAVAILABLE).",
    },
    Setting {
        group: Group::Receiver,
        key: "protocols.grpc.endpoint",
        kind: Kind::Text {
            default: Some("0.0.0.0:4317"),
            rule: "must be host:port, e.g. 0.0.0.0:4317",
        },
        origin: Origin::Collector,
        crd: None,
        description: "Where OTLP/gRPC is received.",
    },
    Setting {
        group: Group::Receiver,
        key: "protocols.grpc.max_recv_msg_size_mib",
        kind: integer(4, 1, 1024, "MiB"),
        origin: Origin::Collector,
        crd: None,
        description: "Largest gRPC message, after decompression; larger ones get \
                      RESOURCE_EXHAUSTED.",
    },
    Setting {
        group: Group::Receiver,
        key: "protocols.grpc.max_concurrent_streams",
        kind: integer(100, 1, 10_000, ""),
        origin: Origin::Collector,
        crd: None,
        description: "Concurrent gRPC calls on one connection.",
    },
    Setting {
        group: Group::Receiver,
        key: "protocols.grpc.max_connections",
        kind: integer(1000, 1, 100_000, ""),
        origin: Origin::Ours,
        crd: None,
        description: "Open gRPC connections; more are closed as they arrive (and logged).",
    },
    Setting {
        group: Group::Receiver,
        key: "protocols.grpc.keepalive_time_seconds",
        kind: integer(60, 1, 86_400, "seconds"),
        origin: Origin::Ours,
        crd: None,
        description: "An HTTP/2 PING is sent after this long without data, so dead peers are \
                      found (the Collector's keepalive.server_parameters.time).",
    },
    Setting {
        group: Group::Receiver,
        key: "protocols.grpc.keepalive_timeout_seconds",
        kind: integer(20, 1, 3600, "seconds"),
        origin: Origin::Ours,
        crd: None,
        description: "A connection whose PING is not answered within this is closed \
                      (keepalive.server_parameters.timeout).",
    },
    Setting {
        group: Group::Receiver,
        key: "protocols.http.endpoint",
        kind: Kind::Text {
            default: Some("0.0.0.0:4318"),
            rule: "must be host:port, e.g. 0.0.0.0:4318",
        },
        origin: Origin::Collector,
        crd: None,
        description: "Where OTLP/HTTP is received.",
    },
    Setting {
        group: Group::Receiver,
        key: "protocols.http.max_request_body_size",
        kind: integer(20_971_520, 1, 1_073_741_824, "bytes"),
        origin: Origin::Collector,
        crd: None,
        description: "Largest HTTP body, as sent and after decompression; larger ones get 413.",
    },
    Setting {
        group: Group::Receiver,
        key: "protocols.http.max_connections",
        kind: integer(1000, 1, 100_000, ""),
        origin: Origin::Ours,
        crd: None,
        description: "Open HTTP connections; more are closed as they arrive (and logged).",
    },
    Setting {
        group: Group::Receiver,
        key: "protocols.http.read_header_timeout_seconds",
        kind: integer(10, 1, 3600, "seconds"),
        origin: Origin::Ours,
        crd: None,
        description: "A connection that has not sent a whole request head within this is \
                      closed (a half-sent request, an idle keep-alive connection).",
    },
    Setting {
        group: Group::Receiver,
        key: "request_memory_limit_mib",
        kind: integer(640, 16, 65_536, "MiB"),
        origin: Origin::Ours,
        crd: None,
        description: "Memory for OTLP requests being decoded and cut into records, over both \
                      protocols. A request is admitted before it is decoded, counted at 32 \
                      times its decompressed size (the worst case measured, many one-span \
                      traces, is 21); it waits for room up to the exporters' enqueue_timeout_seconds, \
                      then gets 503 / UNAVAILABLE; one larger than the whole limit gets 413 / \
                      RESOURCE_EXHAUSTED. Records queued after that are bounded by \
                      kpl.backlog_count. About half the pod's memory limit.",
    },
    Setting {
        group: Group::Service,
        key: "telemetry.metrics.address",
        kind: Kind::Text {
            default: Some("0.0.0.0:8888"),
            rule: "must be host:port, e.g. 0.0.0.0:8888",
        },
        origin: Origin::Collector,
        crd: None,
        description: "Where `/metrics`, `/healthz` and `/readyz` are served.",
    },
    Setting {
        group: Group::Service,
        key: "worker_threads",
        kind: integer(1, 1, 256, ""),
        origin: Origin::Ours,
        crd: None,
        description: "Threads that serve OTLP requests and run the producers (tokio's \
                      workers). One took all a two-core machine could send, 394k spans/s at \
                      0.4 of a core (make bench-e2e); against two, it used 6-14% less CPU \
                      per span and peaked at 75-95 MiB where two saw 100-240 (the same \
                      binary, runs alternated). One thread does at most a core's work, about \
                      a million spans a second by those figures: raise it for more per pod. \
                      Requests over 1 MiB are cut up with the thread handed to the others. \
                      The operator sets it to the container's CPU limit, rounded up.",
    },
];

/// The setting at `key` in `group`; a key missing from the table is a bug in the caller.
pub fn setting(group: Group, key: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.group == group && s.key == key)
        .unwrap_or_else(|| panic!("{}.{key} is not in the settings table", group.prefix()))
}

/// `(default, min, max)` of the integer setting at `key` in `group`.
pub fn range(group: Group, key: &str) -> (u64, u64, u64) {
    setting(group, key).range()
}

/// The setting a KinesisExporter field carries (`kpl.batchCount`), if any.
pub fn by_crd_field(field: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.crd == Some(field))
}

/// The README's configuration tables, one per origin, in Markdown.
pub fn markdown_tables() -> String {
    let mut out = String::new();
    for (origin, title) in [
        (
            Origin::Seed,
            "Keys of the seed under `exporters.kinesis` (every one is optional):",
        ),
        (Origin::Ours, "Keys of ours under `exporters.kinesis`:"),
        (
            Origin::Collector,
            "The rest of the file, as in a Collector configuration:",
        ),
    ] {
        let _ = writeln!(out, "{title}\n");
        let _ = writeln!(
            out,
            "| key | type | default | accepts | description | KinesisExporter |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for s in SETTINGS.iter().filter(|s| s.origin == origin) {
            let key = match s.group {
                Group::Exporter => s.key.to_string(),
                _ => s.path(),
            };
            let (kind, default, accepts) = match s.kind {
                Kind::Integer {
                    default,
                    min,
                    max,
                    unit,
                } => (
                    "integer",
                    format!("`{default}`"),
                    format!("{min}..={max}{}", unit_suffix(unit)),
                ),
                Kind::OneOf { default, values } => (
                    "string",
                    format!("`{default}`"),
                    values
                        .iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                Kind::Text { default, rule } => (
                    "string",
                    default.map_or("none".to_string(), |d| format!("`{d}`")),
                    rule.strip_prefix("must be ").unwrap_or(rule).to_string(),
                ),
            };
            let crd = s.crd.map_or("-".to_string(), |f| format!("`spec.{f}`"));
            let _ = writeln!(
                out,
                "| `{key}` | {kind} | {default} | {accepts} | {} | {crd} |",
                s.description
            );
        }
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}
