//! The `kinesis-exporter` command line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Parser, Subcommand};
use kinesis_exporter::config::{Config, ExporterConfig};
use kinesis_exporter::ingress::{self, Ingress, IngressMetrics};
use kinesis_exporter::kpl::{Producer, ProducerConfig, ProducerMetrics, UserRecord, DROP_REASONS};
use kinesis_exporter::telemetry::{self, LogFormat};
use kinesis_exporter::{aws, kpl};

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
    let runtime = tokio::runtime::Runtime::new()?;
    let shutdown_timeout = Duration::from_secs(cli.shutdown_timeout);
    let drain_timeout = Duration::from_secs(cli.drain_timeout).min(shutdown_timeout);
    match cli.command {
        Some(Command::Validate) => {
            print!("{}", config.to_yaml());
            Ok(())
        }
        Some(Command::Put { exporter }) => {
            let (id, exporter) = pick_exporter(&config, exporter.as_deref())?;
            runtime.block_on(put_from_stdin(id, exporter, shutdown_timeout))
        }
        None => runtime.block_on(run(config, shutdown_timeout, drain_timeout)),
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

async fn start_producer(
    id: &str,
    exporter: &ExporterConfig,
    metrics: Arc<ProducerMetrics>,
) -> Producer {
    let sdk = aws::load(&exporter.aws).await;
    let client = aws::SdkKinesis::new(
        &sdk,
        exporter.aws.kinesis_endpoint.as_deref(),
        exporter.kpl.request_timeout(),
    );
    tracing::info!(exporter = id, stream = %exporter.aws.stream_name, region = %exporter.aws.region, "starting producer");
    Producer::start(
        ProducerConfig::new(&exporter.aws.stream_name, &exporter.kpl),
        Arc::new(client),
        metrics,
    )
}

/// Runs the exporter: OTLP over gRPC and HTTP in, one producer per exporter out, telemetry on
/// the side. On SIGTERM or Ctrl-C: fail /readyz, stop accepting, give requests under way up to
/// `drain_timeout`, flush, and exit within `shutdown_timeout` whatever clients do.
async fn run(
    config: Config,
    shutdown_timeout: Duration,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let mut registry = telemetry::new_registry();
    let readiness = telemetry::Readiness::default();
    let mut producers = Vec::new();
    let mut handles = HashMap::new();
    for (id, exporter) in &config.exporters {
        let metrics = Arc::new(ProducerMetrics::default());
        metrics.register(registry.sub_registry_with_label(("exporter".into(), id.clone().into())));
        let producer = start_producer(id, exporter, metrics).await;
        readiness.add_producer(producer.running_flag());
        handles.insert(id.clone(), producer.handle());
        producers.push((id.clone(), producer));
    }
    let ingress_metrics = IngressMetrics::default();
    ingress_metrics.register(&mut registry);
    let ingress = Ingress::new(ingress::routes(&config, &handles), ingress_metrics);
    drop(handles);

    let protocols = &config.receivers.otlp.protocols;
    let grpc_listener = bind(
        &protocols.grpc.endpoint,
        "receivers.otlp.protocols.grpc.endpoint",
    )
    .await?;
    let http_listener = bind(
        &protocols.http.endpoint,
        "receivers.otlp.protocols.http.endpoint",
    )
    .await?;
    let telemetry_address = &config.service.telemetry.metrics.address;
    let telemetry_listener = bind(telemetry_address, "service.telemetry.metrics.address").await?;

    let (stop_ingress, ingress_stopped) = tokio::sync::watch::channel(false);
    let (stop_telemetry, telemetry_stopped) = tokio::sync::watch::channel(false);
    let grpc_router = ingress::grpc::router(
        ingress.clone(),
        (protocols.grpc.max_recv_msg_size_mib * 1024 * 1024) as usize,
    );
    let http_router = ingress::http::router(
        ingress.clone(),
        protocols.http.max_request_body_size as usize,
    );
    let grpc = tokio::spawn(serve(grpc_listener, grpc_router, ingress_stopped.clone()));
    let http = tokio::spawn(serve(http_listener, http_router, ingress_stopped));
    let telemetry_server = tokio::spawn(serve(
        telemetry_listener,
        telemetry::router(Arc::new(registry), readiness.clone()),
        telemetry_stopped,
    ));
    readiness.set_listening();
    tracing::info!(
        grpc = %protocols.grpc.endpoint,
        http = %protocols.http.endpoint,
        telemetry = %telemetry_address,
        exporters = producers.len(),
        "receiving OTLP; send SIGTERM to drain and stop"
    );

    wait_for_signal().await;
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    readiness.set_draining();
    tracing::info!("shutting down: no new requests; finishing those under way");
    let _ = stop_ingress.send(true);
    let mut servers = [grpc, http];
    let drained = tokio::time::timeout(drain_timeout, async {
        for server in servers.iter_mut() {
            server.await??;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    match drained {
        Ok(result) => result?,
        Err(_) => {
            // Graceful shutdown waits for every connection; a client that never finishes its
            // request must not hold back the flush of what was already acknowledged.
            tracing::warn!(
                drain_timeout_seconds = drain_timeout.as_secs(),
                "OTLP requests still under way after the drain timeout; closing their connections"
            );
            servers.iter().for_each(|server| server.abort());
        }
    }
    drop(ingress);
    tracing::info!("flushing buffered records");
    for (id, producer) in producers {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let report = producer.shutdown(left).await;
        tracing::info!(exporter = %id, abandoned = report.abandoned, "exporter stopped");
    }
    let _ = stop_telemetry.send(true);
    telemetry_server.await??;
    tracing::info!("stopped");
    Ok(())
}

async fn bind(address: &str, key: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} ({key})"))
}

/// Serves `router` until `stop` turns true, then lets requests under way finish.
async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Answers are small and clients wait for them: Nagle's algorithm would hold each one back
    // for the peer's delayed ACK (tens of milliseconds per OTLP response).
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
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
    let producer = start_producer(id, exporter, metrics.clone()).await;
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
        "put_records_calls": metrics.calls("ok") + metrics.calls("partial") + metrics.calls("error"),
        "dropped": dropped,
    });
    println!("{summary}");
    if metrics.dropped_total() > 0 || rejected > 0 {
        std::process::exit(1);
    }
    Ok(())
}
