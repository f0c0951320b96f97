//! The `kinesis-exporter` binary's command line: help, validate, and start-up errors.

use std::process::Command;

fn exporter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kinesis-exporter"))
}

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn help_describes_the_commands() {
    let out = exporter().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for word in [
        "validate",
        "put",
        "--config",
        "--log-format",
        "--shutdown-timeout",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

#[test]
fn validate_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "exporters:\n  kinesis:\n    aws: {stream_name: s1}\n");
    let out = exporter()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "stream_name: s1",
        "region: us-west-2",
        "aggregate_batch_count: 4294967295",
        "max_backoff_seconds: 60",
        "endpoint: 0.0.0.0:4317",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // The one warning about batch_count above the service limit.
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.matches("batch_count is 1000").count(), 1, "{stderr}");
}

#[test]
fn a_bad_file_stops_start_up_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "exporters:\n  kinesis:\n    kpl: {batch_count: 2000, max_connections: 0, colour: red}\n",
    );
    for args in [vec!["validate", "--config"], vec!["--config"]] {
        let out = exporter().args(&args).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("3 error(s)"), "{stderr}");
        assert!(
            stderr.contains(
                "exporters.kinesis.kpl.batch_count: must be between 1 and 1000 (got 2000)"
            ),
            "{stderr}"
        );
        assert!(
            stderr.contains("exporters.kinesis.kpl.max_connections"),
            "{stderr}"
        );
        assert!(
            stderr.contains("exporters.kinesis.kpl.colour: is not a known key"),
            "{stderr}"
        );
    }
}

#[test]
fn a_missing_file_is_named() {
    let out = exporter()
        .args(["validate", "--config", "/nonexistent/kex.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("/nonexistent/kex.yaml"), "{stderr}");
}
