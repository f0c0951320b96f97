//! The exporter's configuration: the seed's Collector-style YAML, its defaults and its limits.
//!
//! Every key's type, default, range and description is one row of [`settings::SETTINGS`]; the
//! validator below, the operator's CRD and the README's tables are made from it. Loading is two
//! steps: YAML text to a generic value, then a validating walk ([`validate`]) that fills
//! defaults and collects *every* problem (key, value, rule) before anything starts. No I/O but
//! reading the file, so the operator shares this crate without the exporter's network stack.

mod service;
pub mod settings;
pub mod status;
mod validate;

use settings::Group;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Kinesis accepts at most this many records in one PutRecords request (the producer's own
/// limits are in `kinesis_exporter::kpl::limits`; a test there checks they agree). Said in
/// the start-up warning about `batch_count`.
pub const KINESIS_MAX_RECORDS_PER_REQUEST: usize = 500;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub receivers: Receivers,
    /// Exporter instances by Collector-style id: `kinesis`, `kinesis/traces`, ...
    pub exporters: BTreeMap<String, ExporterConfig>,
    pub service: Service,
}

/// The three OpenTelemetry signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }
}

/// Which exporters each signal goes to, and the exporter's own telemetry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// Pipelines by Collector-style id (`traces`, `logs/audit`, ...).
    pub pipelines: BTreeMap<String, Pipeline>,
    pub telemetry: ServiceTelemetry,
    /// Ours: the async runtime's worker threads.
    pub worker_threads: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pipeline {
    pub receivers: Vec<String>,
    pub exporters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceTelemetry {
    pub metrics: MetricsTelemetry,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsTelemetry {
    /// `host:port` serving /metrics, /healthz and /readyz.
    pub address: String,
}

impl Service {
    /// The exporters that receive `signal`, each once, in pipeline order.
    pub fn exporters_for(&self, signal: Signal) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (id, pipeline) in &self.pipelines {
            if service::pipeline_signal(id) == Some(signal) {
                for exporter in &pipeline.exporters {
                    if !out.contains(exporter) {
                        out.push(exporter.clone());
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Receivers {
    pub otlp: OtlpReceiver,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtlpReceiver {
    pub protocols: OtlpProtocols,
    /// Ours: MiB of requests being decoded and encoded at once, over both protocols.
    pub request_memory_limit_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtlpProtocols {
    pub grpc: GrpcProtocol,
    pub http: HttpProtocol,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrpcProtocol {
    /// `host:port` to listen on.
    pub endpoint: String,
    /// Largest request message accepted, in MiB (after decompression).
    pub max_recv_msg_size_mib: u64,
    pub max_concurrent_streams: u64,
    pub max_connections: u64,
    pub keepalive_time_seconds: u64,
    pub keepalive_timeout_seconds: u64,
}

impl GrpcProtocol {
    /// The integer settings with their keys below `grpc.` (the validator walks this list).
    pub(crate) fn integers_mut(&mut self) -> [(&'static str, &mut u64); 5] {
        [
            ("max_recv_msg_size_mib", &mut self.max_recv_msg_size_mib),
            ("max_concurrent_streams", &mut self.max_concurrent_streams),
            ("max_connections", &mut self.max_connections),
            ("keepalive_time_seconds", &mut self.keepalive_time_seconds),
            (
                "keepalive_timeout_seconds",
                &mut self.keepalive_timeout_seconds,
            ),
        ]
    }
}

impl HttpProtocol {
    /// The integer settings with their keys below `http.`.
    pub(crate) fn integers_mut(&mut self) -> [(&'static str, &mut u64); 3] {
        [
            ("max_request_body_size", &mut self.max_request_body_size),
            ("max_connections", &mut self.max_connections),
            (
                "read_header_timeout_seconds",
                &mut self.read_header_timeout_seconds,
            ),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpProtocol {
    /// `host:port` to listen on.
    pub endpoint: String,
    /// Largest request body accepted, in bytes, both as sent and after decompression.
    pub max_request_body_size: u64,
    pub max_connections: u64,
    pub read_header_timeout_seconds: u64,
}

/// One `kinesis[/name]` exporter instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExporterConfig {
    pub aws: AwsConfig,
    pub kpl: KplConfig,
    pub encoding: Encoding,
    /// Ours: compression of each user record's payload.
    pub compression: Compression,
    /// Ours: whether a request is answered once buffered or once stored.
    pub delivery: Delivery,
    /// Ours: how user records are keyed, per signal.
    pub partition_key: PartitionKeys,
    /// Ours: how long an OTLP request waits for room in a full backlog before it is answered
    /// with a retryable error.
    pub enqueue_timeout_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

/// When an OTLP request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Once its records are in the producer's backlog.
    #[default]
    Buffered,
    /// Once every record is stored in Kinesis, or refused for good.
    Acknowledged,
}

/// How a user record's partition key is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionKey {
    /// The span's (or log record's) trace id in hex: a trace stays on one shard.
    TraceId,
    /// A random key per user record: even spread over shards.
    Random,
    /// The value of this resource attribute (random when the resource lacks it).
    Attribute(String),
}

impl PartitionKey {
    /// `trace_id`, `random`, or else the name of a resource attribute.
    pub fn from_name(name: &str) -> PartitionKey {
        match name {
            "trace_id" => PartitionKey::TraceId,
            "random" => PartitionKey::Random,
            _ => PartitionKey::Attribute(name.to_string()),
        }
    }
}

impl Serialize for PartitionKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match self {
            PartitionKey::TraceId => "trace_id",
            PartitionKey::Random => "random",
            PartitionKey::Attribute(name) => name,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionKeys {
    pub traces: PartitionKey,
    pub metrics: PartitionKey,
    pub logs: PartitionKey,
}

impl PartitionKeys {
    pub fn for_signal(&self, signal: Signal) -> &PartitionKey {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
        }
    }
}

impl Default for PartitionKeys {
    fn default() -> Self {
        PartitionKeys {
            traces: PartitionKey::TraceId,
            metrics: PartitionKey::Random,
            logs: PartitionKey::Random,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AwsConfig {
    pub stream_name: String,
    pub region: String,
    /// Normalised to a URL; the seed allows a bare host name, which means https.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kinesis_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// The producer's knobs, named as in the seed (`kpl.*`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KplConfig {
    pub aggregate_batch_count: u64,
    pub aggregate_batch_size: u64,
    pub batch_size: u64,
    pub batch_count: u64,
    pub backlog_count: u64,
    pub flush_interval_seconds: u64,
    pub max_connections: u64,
    pub max_retries: u64,
    pub max_backoff_seconds: u64,
    /// Ours: how long one PutRecords attempt may take before it counts as failed and is retried.
    pub request_timeout_seconds: u64,
    /// Ours: longest a user record waits in a partial aggregate or batch.
    pub linger_ms: u64,
}

impl KplConfig {
    /// Longest a record waits in a partial aggregate or batch: the linger, bounded by the
    /// seed's flush interval.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms).min(Duration::from_secs(self.flush_interval_seconds))
    }
    pub fn max_backoff(&self) -> Duration {
        Duration::from_secs(self.max_backoff_seconds)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    /// Every field with its key below `kpl.`: the one place that ties the struct to the
    /// settings table (defaults and the validator walk this list).
    pub fn fields_mut(&mut self) -> [(&'static str, &mut u64); 11] {
        [
            ("aggregate_batch_count", &mut self.aggregate_batch_count),
            ("aggregate_batch_size", &mut self.aggregate_batch_size),
            ("batch_size", &mut self.batch_size),
            ("batch_count", &mut self.batch_count),
            ("backlog_count", &mut self.backlog_count),
            ("flush_interval_seconds", &mut self.flush_interval_seconds),
            ("max_connections", &mut self.max_connections),
            ("max_retries", &mut self.max_retries),
            ("max_backoff_seconds", &mut self.max_backoff_seconds),
            ("request_timeout_seconds", &mut self.request_timeout_seconds),
            ("linger_ms", &mut self.linger_ms),
        ]
    }
}

impl Default for KplConfig {
    /// The defaults of the settings table.
    fn default() -> Self {
        let mut kpl = KplConfig {
            aggregate_batch_count: 0,
            aggregate_batch_size: 0,
            batch_size: 0,
            batch_count: 0,
            backlog_count: 0,
            flush_interval_seconds: 0,
            max_connections: 0,
            max_retries: 0,
            max_backoff_seconds: 0,
            request_timeout_seconds: 0,
            linger_ms: 0,
        };
        for (name, field) in kpl.fields_mut() {
            *field = settings::range(Group::Exporter, &format!("kpl.{name}")).0;
        }
        kpl
    }
}

/// The default of an integer receiver setting of the table.
fn receiver_default(key: &str) -> u64 {
    settings::range(Group::Receiver, key).0
}

/// The default of a text setting of the table.
fn text_default(group: Group, key: &str) -> String {
    match settings::setting(group, key).kind {
        settings::Kind::Text {
            default: Some(d), ..
        } => d.to_string(),
        _ => panic!("{key} has no text default in the settings table"),
    }
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            stream_name: text_default(Group::Exporter, "aws.stream_name"),
            region: text_default(Group::Exporter, "aws.region"),
            kinesis_endpoint: None,
            role: None,
        }
    }
}

/// How telemetry is written into a user record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    OtlpProto,
    OtlpJson,
}

impl Default for Receivers {
    fn default() -> Self {
        Receivers {
            otlp: OtlpReceiver {
                request_memory_limit_mib: receiver_default("request_memory_limit_mib"),
                protocols: OtlpProtocols {
                    grpc: GrpcProtocol {
                        endpoint: text_default(Group::Receiver, "protocols.grpc.endpoint"),
                        max_recv_msg_size_mib: receiver_default(
                            "protocols.grpc.max_recv_msg_size_mib",
                        ),
                        max_concurrent_streams: receiver_default(
                            "protocols.grpc.max_concurrent_streams",
                        ),
                        max_connections: receiver_default("protocols.grpc.max_connections"),
                        keepalive_time_seconds: receiver_default(
                            "protocols.grpc.keepalive_time_seconds",
                        ),
                        keepalive_timeout_seconds: receiver_default(
                            "protocols.grpc.keepalive_timeout_seconds",
                        ),
                    },
                    http: HttpProtocol {
                        endpoint: text_default(Group::Receiver, "protocols.http.endpoint"),
                        max_request_body_size: receiver_default(
                            "protocols.http.max_request_body_size",
                        ),
                        max_connections: receiver_default("protocols.http.max_connections"),
                        read_header_timeout_seconds: receiver_default(
                            "protocols.http.read_header_timeout_seconds",
                        ),
                    },
                },
            },
        }
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `exporters.kinesis.kpl.batch_count`.
    pub key: String,
    /// The offending value as written, when there is one.
    pub value: Option<String>,
    /// The rule it breaks, in words.
    pub rule: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}: {} (got {})", self.key, self.rule, v),
            None => write!(f, "{}: {}", self.key, self.rule),
        }
    }
}

/// Every problem found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} error(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Parses and validates YAML text; on failure returns every error found.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
        validate::load(text)
    }

    /// Reads and validates a file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: "(file)".into(),
                value: Some(path.display().to_string()),
                rule: format!("cannot be read: {e}"),
            }])
        })?;
        Config::from_yaml(&text)
    }

    /// The effective configuration, every default filled in, as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("configuration serialises")
    }

    /// Start-up warnings about values that are legal but do not mean what they seem to.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for id in self.exporters.keys() {
            if Signal::ALL
                .iter()
                .all(|s| !self.service.exporters_for(*s).contains(id))
            {
                out.push(format!(
                    "exporters.{id} is in no pipeline of service.pipelines and receives nothing"
                ));
            }
        }
        for (id, exporter) in &self.exporters {
            if exporter.kpl.batch_count as usize > KINESIS_MAX_RECORDS_PER_REQUEST {
                out.push(format!(
                    "exporters.{id}.kpl.batch_count is {}, but Kinesis accepts at most {} records \
                     per PutRecords; requests will be split at {}",
                    exporter.kpl.batch_count,
                    KINESIS_MAX_RECORDS_PER_REQUEST,
                    KINESIS_MAX_RECORDS_PER_REQUEST
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
