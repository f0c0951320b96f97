//! Every default and every limit of the configuration table, and how errors are reported.

use super::*;

const SEED_EXAMPLE: &str = r#"
exporters:
  kinesis:
      aws:
          stream_name: test-stream
          region: mars-1
          role: arn:test-role
          kinesis_endpoint: kinesis.mars-1.aws.galactic
      kpl:
          aggregate_batch_count: 4294967295
          aggregate_batch_size: 51200
          batch_size: 5242880
          batch_count: 1000
          backlog_count: 2000
          flush_interval_seconds: 5
          max_connections: 24
          max_retries: 10
          max_backoff_seconds: 60
"#;

fn kpl_with(line: &str) -> Result<Config, ConfigErrors> {
    Config::from_yaml(&format!("exporters:\n  kinesis:\n    kpl:\n      {line}\n"))
}

fn single_error(result: Result<Config, ConfigErrors>) -> ConfigError {
    let errors = result.expect_err("should be rejected").0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

#[test]
fn seed_example_loads_unchanged() {
    let config = Config::from_yaml(SEED_EXAMPLE).unwrap();
    let kinesis = &config.exporters["kinesis"];
    assert_eq!(kinesis.aws.region, "mars-1");
    assert_eq!(kinesis.aws.role.as_deref(), Some("arn:test-role"));
    assert_eq!(
        kinesis.aws.kinesis_endpoint.as_deref(),
        Some("https://kinesis.mars-1.aws.galactic")
    );
    assert_eq!(kinesis.kpl, KplConfig::default());
}

#[test]
fn defaults_match_the_table() {
    let config = Config::from_yaml("exporters:\n  kinesis:\n").unwrap();
    let k = &config.exporters["kinesis"];
    assert_eq!(k.aws.stream_name, "test-stream");
    assert_eq!(k.aws.region, "us-west-2");
    assert_eq!(k.aws.kinesis_endpoint, None);
    assert_eq!(k.aws.role, None);
    assert_eq!(k.kpl.aggregate_batch_count, 4_294_967_295);
    assert_eq!(k.kpl.aggregate_batch_size, 51_200);
    assert_eq!(k.kpl.batch_size, 5_242_880);
    assert_eq!(k.kpl.batch_count, 1000);
    assert_eq!(k.kpl.backlog_count, 2000);
    assert_eq!(k.kpl.flush_interval_seconds, 5);
    assert_eq!(k.kpl.max_connections, 24);
    assert_eq!(k.kpl.max_retries, 10);
    assert_eq!(k.kpl.max_backoff_seconds, 60);
    assert_eq!(k.encoding, Encoding::OtlpProto);
    assert_eq!(
        config.receivers.otlp.protocols.grpc.endpoint,
        "0.0.0.0:4317"
    );
    assert_eq!(
        config.receivers.otlp.protocols.http.endpoint,
        "0.0.0.0:4318"
    );
}

#[test]
fn every_kpl_limit_is_enforced_at_both_ends() {
    // (key, lowest accepted, highest accepted); one below and one above must fail.
    let limits: &[(&str, u64, Option<u64>)] = &[
        ("aggregate_batch_count", 1, Some(4_294_967_295)),
        ("aggregate_batch_size", 1, Some(1_048_576)),
        ("batch_size", 1, Some(5_242_880)),
        ("batch_count", 1, Some(1000)),
        ("backlog_count", 1, Some(10_000_000)),
        ("flush_interval_seconds", 1, Some(3600)),
        ("max_connections", 1, Some(256)),
        ("max_retries", 0, Some(100)),
        ("max_backoff_seconds", 1, Some(3600)),
        ("request_timeout_seconds", 1, Some(600)),
    ];
    for &(key, low, high) in limits {
        kpl_with(&format!("{key}: {low}")).unwrap_or_else(|e| panic!("{key}={low}: {e}"));
        if low > 0 {
            let err = single_error(kpl_with(&format!("{key}: {}", low - 1)));
            assert_eq!(err.key, format!("exporters.kinesis.kpl.{key}"));
            assert_eq!(err.value.as_deref(), Some((low - 1).to_string().as_str()));
        }
        if let Some(high) = high {
            kpl_with(&format!("{key}: {high}")).unwrap_or_else(|e| panic!("{key}={high}: {e}"));
            let err = single_error(kpl_with(&format!("{key}: {}", high + 1)));
            assert_eq!(err.key, format!("exporters.kinesis.kpl.{key}"));
            assert!(err.rule.contains("must be between"), "{err}");
        }
    }
}

#[test]
fn batch_count_above_500_is_accepted_with_one_warning_and_split_at_500() {
    // The split itself is the producer's (kinesis_exporter::server::producer_config).
    let config = kpl_with("batch_count: 1000").unwrap();
    assert_eq!(config.exporters["kinesis"].kpl.batch_count, 1000);
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("split at 500"), "{}", warnings[0]);

    let config = kpl_with("batch_count: 200").unwrap();
    assert!(config.warnings().is_empty());
}

#[test]
fn wrong_types_name_key_value_and_rule() {
    let err = single_error(kpl_with("max_connections: lots"));
    assert_eq!(err.key, "exporters.kinesis.kpl.max_connections");
    assert_eq!(err.value.as_deref(), Some("\"lots\""));
    assert!(err.rule.starts_with("must be an integer"), "{err}");

    let err = single_error(kpl_with("max_retries: -1"));
    assert_eq!(err.value.as_deref(), Some("-1"));

    let err = single_error(kpl_with("flush_interval_seconds: 0.5"));
    assert_eq!(err.key, "exporters.kinesis.kpl.flush_interval_seconds");

    let err = single_error(Config::from_yaml(
        "exporters:\n  kinesis:\n    aws:\n      stream_name: [a, b]\n",
    ));
    assert_eq!(err.key, "exporters.kinesis.aws.stream_name");
    assert_eq!(err.rule, "must be a string");
}

#[test]
fn unknown_keys_are_errors_at_every_level() {
    let text = r#"
extensions: {}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "0.0.0.0:4317", tls: {}}
exporters:
  kinesis:
    aws: {stream_name: s, regoin: us-east-1}
    kpl: {batch_cnt: 10}
    retry_on_failure: {}
  kafka: {}
"#;
    let errors = Config::from_yaml(text).unwrap_err().0;
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "receivers.otlp.protocols.grpc.tls",
            "exporters.kinesis.aws.regoin",
            "exporters.kinesis.kpl.batch_cnt",
            "exporters.kinesis.retry_on_failure",
            "exporters.kafka",
            "extensions",
        ]
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = r#"
exporters:
  kinesis:
    aws: {stream_name: "bad name!", region: "US West", role: "not-an-arn", kinesis_endpoint: "ftp://x"}
    kpl: {batch_count: 2000, max_connections: 0, batch_size: 6000000}
    encoding: avro
"#;
    let errors = Config::from_yaml(text).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "exporters.kinesis.aws.stream_name",
            "exporters.kinesis.aws.region",
            "exporters.kinesis.aws.kinesis_endpoint",
            "exporters.kinesis.aws.role",
            "exporters.kinesis.kpl.batch_size",
            "exporters.kinesis.kpl.batch_count",
            "exporters.kinesis.kpl.max_connections",
            "exporters.kinesis.encoding",
        ]
    );
    let text = errors.to_string();
    assert!(text.contains("8 error(s)"), "{text}");
    assert!(
        text.contains("exporters.kinesis.kpl.batch_count: must be between 1 and 1000 (got 2000)"),
        "{text}"
    );
}

#[test]
fn stream_name_rules() {
    for bad in ["", "has space", "slash/no", &"x".repeat(129)] {
        let err = single_error(Config::from_yaml(&format!(
            "exporters:\n  kinesis:\n    aws:\n      stream_name: {bad:?}\n"
        )));
        assert_eq!(err.key, "exporters.kinesis.aws.stream_name", "{bad}");
    }
    for good in ["a", "my_stream-1.x", &"x".repeat(128)] {
        Config::from_yaml(&format!(
            "exporters:\n  kinesis:\n    aws:\n      stream_name: {good:?}\n"
        ))
        .unwrap();
    }
}

#[test]
fn endpoints_are_normalised_to_urls() {
    for (given, expected) in [
        ("http://127.0.0.1:4567", "http://127.0.0.1:4567"),
        (
            "https://kinesis.us-east-1.amazonaws.com",
            "https://kinesis.us-east-1.amazonaws.com",
        ),
        ("localhost:4567", "https://localhost:4567"),
    ] {
        let config = Config::from_yaml(&format!(
            "exporters:\n  kinesis:\n    aws:\n      kinesis_endpoint: {given:?}\n"
        ))
        .unwrap();
        assert_eq!(
            config.exporters["kinesis"].aws.kinesis_endpoint.as_deref(),
            Some(expected)
        );
    }
    for bad in ["ftp://host", "http://", "host:notaport", "a b"] {
        single_error(Config::from_yaml(&format!(
            "exporters:\n  kinesis:\n    aws:\n      kinesis_endpoint: {bad:?}\n"
        )));
    }
}

#[test]
fn named_instances_and_exporter_presence() {
    let config = Config::from_yaml(
        "exporters:\n  kinesis/traces: {aws: {stream_name: t}}\n  kinesis/logs: {aws: {stream_name: l}}\n\
         service:\n  pipelines:\n    traces: {exporters: [kinesis/traces]}\n    logs: {exporters: [kinesis/logs]}\n",
    )
    .unwrap();
    assert_eq!(config.exporters["kinesis/traces"].aws.stream_name, "t");
    assert_eq!(config.exporters["kinesis/logs"].aws.stream_name, "l");

    for text in ["{}", "exporters: {}", "exporters:\n"] {
        let err = single_error(Config::from_yaml(text));
        assert_eq!(err.key, "exporters", "{text}");
    }
    let err = single_error(Config::from_yaml("exporters:\n  kinesis/: {}\n"));
    assert_eq!(err.key, "exporters.kinesis/");
}

#[test]
fn malformed_yaml_and_listen_addresses() {
    let err = single_error(Config::from_yaml("exporters: [unclosed"));
    assert_eq!(err.key, "(file)");
    let err = single_error(Config::from_yaml(
        "receivers: {otlp: {protocols: {http: {endpoint: 4318}}}}\nexporters: {kinesis: }\n",
    ));
    assert_eq!(err.key, "receivers.otlp.protocols.http.endpoint");
}

#[test]
fn effective_config_round_trips() {
    let config = Config::from_yaml(SEED_EXAMPLE).unwrap();
    let rendered = config.to_yaml();
    assert!(
        rendered.contains("request_timeout_seconds: 30"),
        "{rendered}"
    );
    assert_eq!(Config::from_yaml(&rendered).unwrap(), config);
}

#[test]
fn without_a_service_section_the_single_exporter_takes_every_signal() {
    let config = Config::from_yaml("exporters:\n  kinesis:\n").unwrap();
    for signal in Signal::ALL {
        assert_eq!(config.service.exporters_for(signal), ["kinesis"]);
    }
    assert_eq!(config.service.telemetry.metrics.address, "0.0.0.0:8888");
}

#[test]
fn pipelines_route_signals_to_named_exporters() {
    let text = r#"
exporters:
  kinesis/traces: {aws: {stream_name: t}}
  kinesis/logs: {aws: {stream_name: l}, compression: zstd, encoding: otlp_json,
                 partition_key: {logs: service.name}, enqueue_timeout_seconds: 0}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [kinesis/traces]}
    logs: {receivers: [otlp], exporters: [kinesis/logs]}
    logs/copy: {receivers: [otlp], exporters: [kinesis/traces, kinesis/logs]}
  telemetry: {metrics: {address: "127.0.0.1:9999"}}
"#;
    let config = Config::from_yaml(text).unwrap();
    assert_eq!(
        config.service.exporters_for(Signal::Traces),
        ["kinesis/traces"]
    );
    assert_eq!(
        config.service.exporters_for(Signal::Logs),
        ["kinesis/logs", "kinesis/traces"]
    );
    assert!(config.service.exporters_for(Signal::Metrics).is_empty());
    let logs = &config.exporters["kinesis/logs"];
    assert_eq!(logs.compression, Compression::Zstd);
    assert_eq!(logs.encoding, Encoding::OtlpJson);
    assert_eq!(
        logs.partition_key.logs,
        PartitionKey::Attribute("service.name".into())
    );
    assert_eq!(logs.partition_key.traces, PartitionKey::TraceId);
    assert_eq!(logs.enqueue_timeout_seconds, 0);
    assert_eq!(config.service.telemetry.metrics.address, "127.0.0.1:9999");
    assert_eq!(Config::from_yaml(&config.to_yaml()).unwrap(), config);
}

#[test]
fn pipeline_mistakes_are_reported_with_their_keys() {
    let text = r#"
exporters:
  kinesis/a: {}
  kinesis/b: {}
service:
  pipelines:
    traces: {receivers: [zipkin], processors: [batch], exporters: [kinesis/c]}
    profiles: {exporters: [kinesis/a]}
"#;
    let errors = Config::from_yaml(text).unwrap_err().0;
    let got: Vec<(&str, Option<&str>)> = errors
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("service.pipelines.traces.receivers", Some("\"zipkin\"")),
            ("service.pipelines.traces.processors", Some("\"batch\"")),
            ("service.pipelines.traces.exporters", Some("\"kinesis/c\"")),
            ("service.pipelines.traces.exporters", None),
            ("service.pipelines.profiles", None),
        ]
    );
    let err = single_error(Config::from_yaml(
        "exporters:\n  kinesis/a: {}\n  kinesis/b: {}\n",
    ));
    assert_eq!(err.key, "service.pipelines");
}

#[test]
fn ingress_and_record_keys_have_limits() {
    let err = single_error(Config::from_yaml(
        "exporters:\n  kinesis: {partition_key: {metrics: trace_id}}\n",
    ));
    assert_eq!(err.key, "exporters.kinesis.partition_key.metrics");
    let err = single_error(Config::from_yaml(
        "exporters:\n  kinesis: {compression: lz4}\n",
    ));
    assert_eq!(err.key, "exporters.kinesis.compression");
    let err = single_error(Config::from_yaml(
        "receivers: {otlp: {protocols: {grpc: {max_recv_msg_size_mib: 0}}}}\nexporters: {kinesis: }\n",
    ));
    assert_eq!(
        err.key,
        "receivers.otlp.protocols.grpc.max_recv_msg_size_mib"
    );
    let config = Config::from_yaml(
        "receivers: {otlp: {protocols: {http: {max_request_body_size: 1000}}}}\nexporters: {kinesis: }\n",
    )
    .unwrap();
    assert_eq!(
        config.receivers.otlp.protocols.http.max_request_body_size,
        1000
    );
    assert_eq!(
        config.receivers.otlp.protocols.grpc.max_recv_msg_size_mib,
        4
    );
}

// --------------------------------------------------------------------------- the settings table

/// The README of the checkout under test: `cargo test` sets CARGO_MANIFEST_DIR when it runs
/// a test, and a test binary built in another clone (a shared target directory) may be reused.
fn readme() -> std::path::PathBuf {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    std::path::Path::new(&dir).join("../../README.md")
}
const BEGIN: &str = "<!-- settings:begin";
const END: &str = "<!-- settings:end -->";

/// The README's configuration tables are the table rendered; `KEX_UPDATE_README=1` (what
/// `make readme` sets) rewrites them instead of failing.
#[test]
fn the_readme_tables_are_generated_from_the_settings_table() {
    let text = std::fs::read_to_string(readme()).expect("README.md");
    let begin = text
        .find(BEGIN)
        .expect("README has the settings:begin marker");
    let body_start = begin + text[begin..].find('\n').expect("marker line ends") + 1;
    let end = text.find(END).expect("README has the settings:end marker");
    let want = settings::markdown_tables();
    if text[body_start..end] == want {
        return;
    }
    if std::env::var_os("KEX_UPDATE_README").is_some() {
        let updated = format!("{}{}{}", &text[..body_start], want, &text[end..]);
        std::fs::write(readme(), updated).expect("README.md written");
        return;
    }
    panic!("README.md's configuration tables are stale: run `make readme`");
}

#[test]
fn every_setting_is_in_the_table_once_and_the_structs_agree_with_it() {
    let mut seen = std::collections::BTreeSet::new();
    for s in settings::SETTINGS {
        assert!(seen.insert(s.path()), "{} twice", s.path());
        if let settings::Kind::Integer {
            default, min, max, ..
        } = s.kind
        {
            assert!(
                min <= default && default <= max,
                "{}: default outside the range",
                s.path()
            );
        }
    }
    // The effective configuration of an empty exporter lists exactly the table's keys, with
    // the table's defaults.
    let config = Config::from_yaml("exporters:\n  kinesis: {}\n").unwrap();
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&config.to_yaml()).unwrap();
    let mut keys = Vec::new();
    flatten(&yaml, "", &mut keys);
    for (path, value) in &keys {
        if path.starts_with("service.pipelines") {
            continue; // routes, not settings
        }
        let setting = settings::SETTINGS
            .iter()
            .find(|s| s.path() == *path)
            .unwrap_or_else(|| {
                panic!("{path} is in the configuration but not in the settings table")
            });
        let default = match setting.kind {
            settings::Kind::Integer { default, .. } => default.to_string(),
            settings::Kind::OneOf { default, .. } => default.to_string(),
            settings::Kind::Text { default, .. } => default.unwrap_or_default().to_string(),
        };
        assert_eq!(*value, default, "{path}");
    }
    for s in settings::SETTINGS {
        let optional = matches!(s.kind, settings::Kind::Text { default: None, .. });
        assert!(
            optional || keys.iter().any(|(p, _)| *p == s.path()),
            "{} is in the settings table but not in the configuration",
            s.path()
        );
    }
}

fn flatten(value: &serde_yaml_ng::Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_yaml_ng::Value::Mapping(map) => {
            for (k, v) in map {
                let k = k.as_str().unwrap();
                let here = if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                };
                flatten(v, &here, out);
            }
        }
        other => out.push((
            path.to_string(),
            serde_yaml_ng::to_string(other)
                .unwrap()
                .trim()
                .trim_matches('\'')
                .to_string(),
        )),
    }
}

/// Every integer setting accepts exactly its range: both ends in, one past either end out,
/// with the table's rule in the error.
#[test]
fn every_integer_setting_accepts_exactly_its_range() {
    for s in settings::SETTINGS {
        let settings::Kind::Integer { min, max, .. } = s.kind else {
            continue;
        };
        let load = |value: u64| {
            let mut yaml = format!("{}: {value}", s.path().rsplit('.').next().unwrap());
            for part in s.path().rsplit('.').skip(1) {
                yaml = format!("{part}:\n  {}", yaml.replace('\n', "\n  "));
            }
            let yaml = if s.group == settings::Group::Exporter {
                yaml
            } else {
                format!("exporters:\n  kinesis: {{}}\n{yaml}")
            };
            Config::from_yaml(&yaml)
        };
        for ok in [min, max] {
            assert!(
                load(ok).is_ok(),
                "{} = {ok}: {:?}",
                s.path(),
                load(ok).err()
            );
        }
        let mut bad = vec![max + 1];
        if min > 0 {
            bad.push(min - 1);
        }
        for value in bad {
            let errors = load(value)
                .expect_err(&format!("{} = {value} accepted", s.path()))
                .0;
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].key, s.path());
            assert_eq!(errors[0].rule, s.rule());
        }
    }
}

/// Deep nesting is refused by a linear scan before the YAML parser sees it (the parser took a
/// minute for 100k levels), and a file over the size bound is refused outright; quotes and
/// comments do not count, and real files pass.
#[test]
fn deep_nesting_and_huge_files_are_refused_before_parsing() {
    let deep = format!(
        "exporters:\n  kinesis:\n    aws: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let errors = Config::from_yaml(&deep).unwrap_err().0;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "(file)");
    assert!(
        errors[0].rule.contains("deeper than 64 levels (line 3)"),
        "{}",
        errors[0]
    );

    let at_limit = format!(
        "exporters:\n  kinesis: {{}}\nx: {}{}\n",
        "[".repeat(64),
        "]".repeat(64)
    );
    let rule = Config::from_yaml(&at_limit).unwrap_err().0[0].rule.clone();
    assert_eq!(
        rule, "is not a known key",
        "64 levels pass the scan and reach the validator"
    );

    let quoted =
        "exporters:\n  kinesis:\n    partition_key: {traces: \"[[[[\", logs: '{{{{'} # {{{{\n";
    let quoted = quoted
        .replace("[[[[", &"[".repeat(100))
        .replace("{{{{", &"{".repeat(100));
    assert!(
        Config::from_yaml(&quoted).is_ok(),
        "brackets in strings and comments do not count"
    );

    let huge = format!(
        "exporters:\n  kinesis: {{}}\n#{}\n",
        "x".repeat(1024 * 1024)
    );
    let rule = Config::from_yaml(&huge).unwrap_err().0[0].rule.clone();
    assert!(rule.contains("at most 1048576"), "{rule}");
    assert!(Config::from_yaml(SEED_EXAMPLE).is_ok());
}
