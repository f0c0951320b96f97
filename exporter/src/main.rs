//! The `kinesis-exporter` command line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Parser, Subcommand};
use kinesis_exporter::config::{Config, ExporterConfig};
use kinesis_exporter::kpl::{DROP_REASONS, KinesisApi, ProducerMetrics, UserRecord};
use kinesis_exporter::server::{self, Listeners, ShutdownTimeouts};
use kinesis_exporter::telemetry::{self, LogFormat};
use kinesis_exporter::{aws, kpl};

mod allocator;

/// Receives OpenTelemetry data and writes it to Amazon Kinesis through a KPL-grade producer.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Configuration file (Collector-style YAML: receivers, exporters.kinesis...).
    #[arg(long, env = "KINESIS_EXPORTER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log line format.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "KINESIS_EXPORTER_LOG_FORMAT",
        global = true
    )]
    log_format: LogFormat,
    /// Longest time from SIGTERM to exit: requests under way finish (up to --drain-timeout),
    /// then buffered records are sent; what is left at the end is dropped and counted.
    #[arg(long, default_value = "25", value_name = "SECONDS", global = true)]
    shutdown_timeout: u64,
    /// Part of --shutdown-timeout given to OTLP requests under way; connections still open after
    /// it (a stalled client, a half-sent request) are closed without an answer.
    #[arg(long, default_value = "5", value_name = "SECONDS", global = true)]
    drain_timeout: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check the configuration and print it with every default filled in.
    Validate,
    /// Send records from stdin through the producer, then flush and print a JSON summary.
    ///
    /// Each input line is a JSON object {"partition_key": "...", "data": "<base64>",
    /// "explicit_hash_key": "<decimal>" (optional)}. Useful to check credentials, the stream and
    /// the producer settings without any OTLP client. Exits 1 if any record was dropped.
    Put {
        /// Which exporter instance to use (default: the only one, or `kinesis`).
        #[arg(long)]
        exporter: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    allocator::no_huge_pages();
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    let config_path = cli
        .config
        .clone()
        .context("--config FILE is required (or KINESIS_EXPORTER_CONFIG)")?;
    let config = match Config::from_file(&config_path) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{}: {errors}", config_path.display());
            std::process::exit(2);
        }
    };
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.service.worker_threads as usize)
        .enable_all()
        .on_thread_park(allocator::collect_freed_memory_when_idle)
        .build()?;
    runtime.spawn(allocator::match_purge_delay_to_resident_set());
    let shutdown_timeout = Duration::from_secs(cli.shutdown_timeout);
    let drain_timeout = Duration::from_secs(cli.drain_timeout);
    match cli.command {
        Some(Command::Validate) => {
            print!("{}", config.to_yaml());
            Ok(())
        }
        Some(Command::Put { exporter }) => {
            let (id, exporter) = pick_exporter(&config, exporter.as_deref())?;
            runtime.block_on(put_from_stdin(id, exporter, shutdown_timeout))
        }
        None => runtime.block_on(run(
            config,
            ShutdownTimeouts {
                total: shutdown_timeout,
                drain: drain_timeout,
            },
        )),
    }
}

fn pick_exporter<'a>(
    config: &'a Config,
    id: Option<&str>,
) -> anyhow::Result<(&'a str, &'a ExporterConfig)> {
    let id = match id {
        Some(id) => id,
        None if config.exporters.len() == 1 => config.exporters.keys().next().unwrap(),
        None => "kinesis",
    };
    match config.exporters.get_key_value(id) {
        Some((id, exporter)) => Ok((id.as_str(), exporter)),
        None => bail!(
            "no exporter {id:?} in the configuration (have: {})",
            config
                .exporters
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The Kinesis client of every exporter, from its `aws` settings and the default credentials.
async fn kinesis_clients(config: &Config) -> anyhow::Result<HashMap<String, Arc<dyn KinesisApi>>> {
    let mut clients = HashMap::new();
    for (id, exporter) in &config.exporters {
        let client = kinesis_client(exporter)
            .await
            .map_err(|e| e.context(format!("exporters.{id}")))?;
        clients.insert(id.clone(), client);
    }
    Ok(clients)
}

async fn kinesis_client(exporter: &ExporterConfig) -> anyhow::Result<Arc<dyn KinesisApi>> {
    let sdk = aws::load(&exporter.aws).await;
    let client = aws::SdkKinesis::new(
        &sdk,
        exporter.aws.kinesis_endpoint.as_deref(),
        exporter.kpl.request_timeout(),
    )
    .await?;
    Ok(Arc::new(client))
}

/// Runs the exporter until SIGTERM or Ctrl-C (see [`server::serve`]).
async fn run(config: Config, timeouts: ShutdownTimeouts) -> anyhow::Result<()> {
    let clients = kinesis_clients(&config).await?;
    let listeners = Listeners::bind(&config).await?;
    server::serve(&config, listeners, clients, wait_for_signal(), timeouts).await
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[derive(serde::Deserialize)]
struct InputRecord {
    partition_key: String,
    data: String,
    explicit_hash_key: Option<String>,
}

async fn put_from_stdin(
    id: &str,
    exporter: &ExporterConfig,
    shutdown_timeout: Duration,
) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let metrics = Arc::new(ProducerMetrics::default());
    let client = kinesis_client(exporter).await?;
    let producer = server::start_producer(id, exporter, client, metrics.clone());
    let handle = producer.handle();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut line_number = 0usize;
    let mut rejected = 0usize;
    while let Some(line) = lines.next_line().await? {
        line_number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let input: InputRecord =
            serde_json::from_str(&line).with_context(|| format!("stdin line {line_number}"))?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(input.data)
            .with_context(|| format!("stdin line {line_number}: data is not base64"))?;
        let explicit_hash_key = match input.explicit_hash_key {
            Some(s) => Some(
                s.parse::<u128>()
                    .with_context(|| format!("stdin line {line_number}: explicit_hash_key"))?,
            ),
            None => None,
        };
        let record = UserRecord {
            partition_key: input.partition_key,
            explicit_hash_key,
            data: data.into(),
            ack: None,
        };
        match handle.put(record).await {
            Ok(()) => {}
            Err(kpl::PutError::Invalid(e)) => {
                rejected += 1;
                tracing::warn!(line = line_number, error = %e, "record rejected");
            }
            Err(e) => bail!("stdin line {line_number}: {e}"),
        }
        if line_number.is_multiple_of(10_000) {
            tracing::info!(records = line_number, "records read");
        }
    }
    drop(handle);
    producer.shutdown(shutdown_timeout).await;
    let dropped: serde_json::Map<String, serde_json::Value> = DROP_REASONS
        .iter()
        .map(|r| (r.to_string(), metrics.dropped(r).into()))
        .filter(|(_, n): &(String, serde_json::Value)| n.as_u64() != Some(0))
        .collect();
    let summary = serde_json::json!({
        "user_records": metrics.user_records_received.get(),
        "user_records_delivered": metrics.user_records_delivered.get(),
        "kinesis_records": metrics.kinesis_records_delivered.get(),
        "aggregated_records": metrics.aggregated_records_delivered.get(),
        "put_records_calls": kpl::metrics::PUT_RESULTS.iter().map(|r| metrics.calls(r)).sum::<u64>(),
        "dropped": dropped,
    });
    println!("{summary}");
    if metrics.dropped_total() > 0 || rejected > 0 {
        std::process::exit(1);
    }
    Ok(())
}
