//! The validating walk from parsed YAML to [`Config`]: defaults, types, limits, unknown keys.
//!
//! Every problem is recorded and the walk goes on, so one run reports all of a file's errors.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::*;

/// Largest configuration file accepted; a real one is a few kilobytes.
pub(super) const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Deepest `[`/`{` nesting accepted; a real file needs three or four levels. The YAML parser's
/// own recursion limit only fires after a slow pass over the whole input (a minute for 100k
/// levels), so deeper input is refused by a linear scan first.
pub(super) const MAX_FLOW_NESTING: usize = 64;

pub(super) fn load(text: &str) -> Result<Config, ConfigErrors> {
    if let Err(rule) = check_shape(text) {
        return Err(ConfigErrors(vec![ConfigError {
            key: "(file)".into(),
            value: None,
            rule,
        }]));
    }
    let root: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError {
                key: "(file)".into(),
                value: None,
                rule: format!("is not valid YAML: {e}"),
            }]));
        }
    };
    let mut errors = Vec::new();
    let config = walk_root(&root, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Size and flow-nesting bounds, in one pass over the text. Quoted strings and comments are
/// skipped; a quote inside a plain scalar can only make the count lower, never refuse a file
/// the parser would take.
fn check_shape(text: &str) -> Result<(), String> {
    if text.len() > MAX_FILE_BYTES {
        return Err(format!(
            "is {} bytes; a configuration file may have at most {MAX_FILE_BYTES}",
            text.len()
        ));
    }
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\n') => {
                line += 1;
                if quote == Some('#') {
                    quote = None;
                }
            }
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if q == c && q != '#' => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '#') => quote = Some(c),
            (None, '[' | '{') => {
                depth += 1;
                if depth > MAX_FLOW_NESTING {
                    return Err(format!(
                        "nests [ and {{ deeper than {MAX_FLOW_NESTING} levels (line {line})"
                    ));
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The keys of one mapping, consumed one by one; what is left over is unknown.
pub(super) struct Section<'a> {
    path: String,
    pub(super) entries: Vec<(String, &'a Value)>,
}

impl<'a> Section<'a> {
    /// A section at `path`; a missing or null value is an empty section.
    pub(super) fn new(path: &str, value: Option<&'a Value>, errors: &mut Vec<ConfigError>) -> Self {
        let mut entries = Vec::new();
        match value {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(map)) => entries = mapping_entries(path, map, errors),
            Some(other) => errors.push(ConfigError {
                key: path.into(),
                value: Some(show(other)),
                rule: "must be a mapping of keys to values".into(),
            }),
        }
        Section {
            path: path.into(),
            entries,
        }
    }

    pub(super) fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.path, name)
        }
    }

    pub(super) fn take(&mut self, name: &str) -> Option<&'a Value> {
        let at = self.entries.iter().position(|(k, _)| k == name)?;
        Some(self.entries.remove(at).1)
    }

    /// The integer setting `name` of this section: in the range of `setting` (a row of the
    /// settings table), or its default when absent.
    pub(super) fn integer(
        &mut self,
        name: &str,
        setting: &settings::Setting,
        errors: &mut Vec<ConfigError>,
    ) -> u64 {
        let (default, min, max) = setting.range();
        let rule = setting.rule();
        let key = self.key(name);
        match self.take(name) {
            None | Some(Value::Null) => default,
            Some(v @ Value::Number(n)) => match n.as_u64() {
                Some(x) if (min..=max).contains(&x) => x,
                _ => {
                    errors.push(ConfigError {
                        key,
                        value: Some(show(v)),
                        rule,
                    });
                    default
                }
            },
            Some(other) => {
                errors.push(ConfigError {
                    key,
                    value: Some(show(other)),
                    rule: format!("must be an integer; {rule}"),
                });
                default
            }
        }
    }

    /// One of the words a `OneOf` setting allows, or its default when absent or wrong.
    pub(super) fn one_of(
        &mut self,
        name: &str,
        setting: &settings::Setting,
        errors: &mut Vec<ConfigError>,
    ) -> String {
        let settings::Kind::OneOf { default, values } = setting.kind else {
            panic!("{} is not a one-of setting", setting.path());
        };
        let rule = setting.rule();
        self.string(
            name,
            |s| {
                if values.contains(&s) {
                    Ok(s.to_string())
                } else {
                    Err(rule.clone())
                }
            },
            errors,
        )
        .unwrap_or_else(|| default.to_string())
    }

    /// A string that passes `check` (which returns the rule broken), or `None` when absent.
    pub(super) fn string(
        &mut self,
        name: &str,
        check: impl Fn(&str) -> Result<String, String>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<String> {
        let key = self.key(name);
        match self.take(name)? {
            Value::Null => None,
            Value::String(s) => match check(s) {
                Ok(normalised) => Some(normalised),
                Err(rule) => {
                    errors.push(ConfigError {
                        key,
                        value: Some(format!("{s:?}")),
                        rule,
                    });
                    None
                }
            },
            other => {
                errors.push(ConfigError {
                    key,
                    value: Some(show(other)),
                    rule: "must be a string".into(),
                });
                None
            }
        }
    }

    /// Reports every key nobody took.
    pub(super) fn finish(self, errors: &mut Vec<ConfigError>) {
        for (name, _) in &self.entries {
            errors.push(ConfigError {
                key: self.key(name),
                value: None,
                rule: "is not a known key".into(),
            });
        }
    }
}

fn mapping_entries<'a>(
    path: &str,
    map: &'a Mapping,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, &'a Value)> {
    let mut entries = Vec::new();
    for (k, v) in map {
        match k {
            Value::String(s) => entries.push((s.clone(), v)),
            other => errors.push(ConfigError {
                key: path.into(),
                value: Some(show(other)),
                rule: "keys must be strings".into(),
            }),
        }
    }
    entries
}

pub(super) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|_| format!("{other:?}")),
    }
}

fn walk_root(root: &Value, errors: &mut Vec<ConfigError>) -> Config {
    let mut top = Section::new("", Some(root), errors);
    let receivers = walk_receivers(top.take("receivers"), errors);
    let exporters = walk_exporters(top.take("exporters"), errors);
    let service = super::service::walk_service(top.take("service"), &exporters, errors);
    top.finish(errors);
    Config {
        receivers,
        exporters,
        service,
    }
}

fn walk_receivers(value: Option<&Value>, errors: &mut Vec<ConfigError>) -> Receivers {
    let mut receivers = Receivers::default();
    let mut section = Section::new("receivers", value, errors);
    let mut otlp = Section::new("receivers.otlp", section.take("otlp"), errors);
    let mut protocols = Section::new("receivers.otlp.protocols", otlp.take("protocols"), errors);
    let grpc = &mut receivers.otlp.protocols.grpc;
    let value = protocols.take("grpc");
    if let Some(endpoint) = walk_protocol("grpc", value, grpc.integers_mut(), errors) {
        grpc.endpoint = endpoint;
    }
    let http = &mut receivers.otlp.protocols.http;
    let value = protocols.take("http");
    if let Some(endpoint) = walk_protocol("http", value, http.integers_mut(), errors) {
        http.endpoint = endpoint;
    }
    protocols.finish(errors);
    let setting = settings::setting(Group::Receiver, "request_memory_limit_mib");
    receivers.otlp.request_memory_limit_mib =
        otlp.integer("request_memory_limit_mib", setting, errors);
    otlp.finish(errors);
    section.finish(errors);
    receivers
}

/// One of `receivers.otlp.protocols.{grpc,http}`: each integer setting of `integers` with the
/// table's default, range and rule; returns the endpoint when one is given.
fn walk_protocol<'a>(
    name: &str,
    value: Option<&Value>,
    integers: impl IntoIterator<Item = (&'static str, &'a mut u64)>,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let mut protocol = Section::new(&format!("receivers.otlp.protocols.{name}"), value, errors);
    let check = check_listen_address(Group::Receiver, format!("protocols.{name}.endpoint"));
    let endpoint = protocol.string("endpoint", check, errors);
    for (key, field) in integers {
        let setting = settings::setting(Group::Receiver, &format!("protocols.{name}.{key}"));
        *field = protocol.integer(key, setting, errors);
    }
    protocol.finish(errors);
    endpoint
}

fn walk_exporters(
    value: Option<&Value>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, ExporterConfig> {
    let mut exporters = BTreeMap::new();
    let section = Section::new("exporters", value, errors);
    for (id, body) in &section.entries {
        let path = format!("exporters.{id}");
        let is_kinesis = id == "kinesis"
            || id
                .strip_prefix("kinesis/")
                .is_some_and(|name| !name.is_empty());
        if !is_kinesis {
            errors.push(ConfigError {
                key: path,
                value: None,
                rule: "is not a known exporter; use `kinesis` or `kinesis/<name>`".into(),
            });
            continue;
        }
        exporters.insert(id.clone(), walk_exporter(&path, body, errors));
    }
    let already_reported = matches!(value, Some(v) if !v.is_mapping() && !v.is_null());
    if exporters.is_empty() && section.entries.is_empty() && !already_reported {
        errors.push(ConfigError {
            key: "exporters".into(),
            value: None,
            rule: "must define at least one exporter, e.g. `kinesis`".into(),
        });
    }
    exporters
}

fn walk_exporter(path: &str, value: &Value, errors: &mut Vec<ConfigError>) -> ExporterConfig {
    let mut section = Section::new(path, Some(value), errors);
    let aws = walk_aws(&format!("{path}.aws"), section.take("aws"), errors);
    let kpl = walk_kpl(&format!("{path}.kpl"), section.take("kpl"), errors);
    let one_of = |section: &mut Section, key: &str, errors: &mut Vec<ConfigError>| {
        section.one_of(key, settings::setting(Group::Exporter, key), errors)
    };
    let encoding = match one_of(&mut section, "encoding", errors).as_str() {
        "otlp_json" => Encoding::OtlpJson,
        _ => Encoding::OtlpProto,
    };
    let compression = match one_of(&mut section, "compression", errors).as_str() {
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        _ => Compression::None,
    };
    let delivery = match one_of(&mut section, "delivery", errors).as_str() {
        "acknowledged" => Delivery::Acknowledged,
        _ => Delivery::Buffered,
    };
    let partition_key = walk_partition_keys(
        &format!("{path}.partition_key"),
        section.take("partition_key"),
        errors,
    );
    let enqueue_timeout_seconds = section.integer(
        "enqueue_timeout_seconds",
        settings::setting(Group::Exporter, "enqueue_timeout_seconds"),
        errors,
    );
    section.finish(errors);
    ExporterConfig {
        aws,
        kpl,
        encoding,
        compression,
        delivery,
        partition_key,
        enqueue_timeout_seconds,
    }
}

fn walk_partition_keys(
    path: &str,
    value: Option<&Value>,
    errors: &mut Vec<ConfigError>,
) -> PartitionKeys {
    let mut keys = PartitionKeys::default();
    let mut section = Section::new(path, value, errors);
    for signal in Signal::ALL {
        let rule = settings::setting(
            Group::Exporter,
            &format!("partition_key.{}", signal.as_str()),
        )
        .rule();
        let parsed = section.string(
            signal.as_str(),
            |s| match s {
                "trace_id" if signal == Signal::Metrics => Err(rule.clone()),
                "" => Err(rule.clone()),
                _ => Ok(s.to_string()),
            },
            errors,
        );
        if let Some(name) = parsed {
            let key = PartitionKey::from_name(&name);
            match signal {
                Signal::Traces => keys.traces = key,
                Signal::Metrics => keys.metrics = key,
                Signal::Logs => keys.logs = key,
            }
        }
    }
    section.finish(errors);
    keys
}

fn walk_aws(path: &str, value: Option<&Value>, errors: &mut Vec<ConfigError>) -> AwsConfig {
    let defaults = AwsConfig::default();
    let mut s = Section::new(path, value, errors);
    let aws = AwsConfig {
        stream_name: s
            .string("stream_name", check_stream_name, errors)
            .unwrap_or(defaults.stream_name),
        region: s
            .string("region", check_region, errors)
            .unwrap_or(defaults.region),
        kinesis_endpoint: s.string("kinesis_endpoint", normalise_endpoint, errors),
        role: s.string("role", check_role, errors),
    };
    s.finish(errors);
    aws
}

fn walk_kpl(path: &str, value: Option<&Value>, errors: &mut Vec<ConfigError>) -> KplConfig {
    let mut kpl = KplConfig::default();
    let mut section = Section::new(path, value, errors);
    for (name, field) in kpl.fields_mut() {
        let setting = settings::setting(Group::Exporter, &format!("kpl.{name}"));
        *field = section.integer(name, setting, errors);
    }
    section.finish(errors);
    kpl
}

/// Kinesis stream names: 1 to 128 of `[a-zA-Z0-9_.-]`.
fn check_stream_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(s.into())
    } else {
        Err(rule_of(Group::Exporter, "aws.stream_name"))
    }
}

/// Region names are lowercase words joined by hyphens (`us-west-2`; the seed's `mars-1` too).
fn check_region(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(s.into())
    } else {
        Err(rule_of(Group::Exporter, "aws.region"))
    }
}

/// A role to assume must at least be an ARN; STS judges the rest.
fn check_role(s: &str) -> Result<String, String> {
    if s.starts_with("arn:") && s.len() > 4 && !s.chars().any(char::is_whitespace) {
        Ok(s.into())
    } else {
        Err(rule_of(Group::Exporter, "aws.role"))
    }
}

/// `http(s)://host[:port][/path]`, or a bare `host[:port]` as the seed allows, meaning https.
fn normalise_endpoint(s: &str) -> Result<String, String> {
    let rule = rule_of(Group::Exporter, "aws.kinesis_endpoint");
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some(_) => return Err(rule),
        None => ("https", s),
    };
    let host_port = rest.split('/').next().unwrap_or("");
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, port)| {
        if port.parse::<u16>().is_ok() { h } else { "" }
    });
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if host_ok {
        Ok(format!("{scheme}://{rest}"))
    } else {
        Err(rule)
    }
}

/// `host:port` for a listener; `Err` is the rule of the listen-address setting `key`.
pub(super) fn check_listen_address(
    group: Group,
    key: String,
) -> impl Fn(&str) -> Result<String, String> {
    move |s: &str| match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.into()),
        _ => Err(rule_of(group, &key)),
    }
}

fn rule_of(group: Group, key: &str) -> String {
    settings::setting(group, key).rule()
}
