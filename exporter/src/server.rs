//! The exporter as a library: listeners and a shutdown signal in, OTLP served until the signal,
//! then a bounded drain and flush. `main` binds the configured addresses and passes SIGTERM;
//! tests bind port 0, read the addresses back and pass a future they complete themselves.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{Config, ExporterConfig, KplConfig};
use crate::ingress::{self, Ingress, IngressMetrics};
use crate::kpl::{KinesisApi, Producer, ProducerConfig, ProducerMetrics, limits};
use crate::telemetry;

/// The producer's settings from an exporter's `kpl` keys (the producer knows nothing of the
/// YAML file): the seed's record and byte counts, in the producer's own units, with Kinesis'
/// 500 records per request applied.
pub fn producer_config(stream_name: &str, kpl: &KplConfig) -> ProducerConfig {
    ProducerConfig {
        stream_name: stream_name.to_string(),
        aggregate_max_count: kpl.aggregate_batch_count,
        aggregate_max_bytes: kpl.aggregate_batch_size as usize,
        records_per_request: (kpl.batch_count as usize).min(limits::MAX_RECORDS_PER_REQUEST),
        request_max_bytes: kpl.batch_size as usize,
        backlog: kpl.backlog_count as usize,
        linger: kpl.linger(),
        max_connections: kpl.max_connections as usize,
        max_retries: kpl.max_retries as u32,
        base_backoff: Duration::from_millis(100),
        max_backoff: kpl.max_backoff(),
        request_timeout: kpl.request_timeout(),
        shard_map_refresh_interval: Duration::from_secs(1),
    }
}

/// Starts the producer of exporter `id`, writing through `client`.
pub fn start_producer(
    id: &str,
    exporter: &ExporterConfig,
    client: Arc<dyn KinesisApi>,
    metrics: Arc<ProducerMetrics>,
) -> Producer {
    tracing::info!(exporter = %id, stream = %exporter.aws.stream_name, region = %exporter.aws.region, "starting producer");
    Producer::start(
        producer_config(&exporter.aws.stream_name, &exporter.kpl),
        client,
        metrics,
    )
}

/// The three listening sockets: OTLP/gRPC, OTLP/HTTP and the telemetry endpoints.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub telemetry: TcpListener,
}

/// Where the listeners actually listen (port 0 in the configuration picks a free port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundAddresses {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub telemetry: SocketAddr,
}

impl Listeners {
    /// Binds the three addresses of `config`; an error names the key of the address.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let protocols = &config.receivers.otlp.protocols;
        Ok(Listeners {
            grpc: bind(
                &protocols.grpc.endpoint,
                "receivers.otlp.protocols.grpc.endpoint",
            )
            .await?,
            http: bind(
                &protocols.http.endpoint,
                "receivers.otlp.protocols.http.endpoint",
            )
            .await?,
            telemetry: bind(
                &config.service.telemetry.metrics.address,
                "service.telemetry.metrics.address",
            )
            .await?,
        })
    }

    pub fn local_addresses(&self) -> std::io::Result<BoundAddresses> {
        Ok(BoundAddresses {
            grpc: self.grpc.local_addr()?,
            http: self.http.local_addr()?,
            telemetry: self.telemetry.local_addr()?,
        })
    }
}

async fn bind(address: &str, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} ({key})"))
}

/// How long shutdown may take, and how much of it requests under way get.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownTimeouts {
    /// From the signal to the return, whatever clients do.
    pub total: Duration,
    /// Part of `total` given to requests under way before their connections are cut.
    pub drain: Duration,
}

/// Serves OTLP with one producer per exporter (`clients` maps each exporter id to its Kinesis
/// client) until `shutdown` completes. Then /readyz fails, the listeners close, requests under
/// way get `timeouts.drain`, buffered records are flushed, and this returns within
/// `timeouts.total`; what is still unsent then is dropped, counted and logged.
pub async fn serve(
    config: &Config,
    listeners: Listeners,
    clients: HashMap<String, Arc<dyn KinesisApi>>,
    shutdown: impl Future<Output = ()>,
    timeouts: ShutdownTimeouts,
) -> anyhow::Result<()> {
    let mut registry = telemetry::new_registry();
    let readiness = telemetry::Readiness::default();
    let mut producers = Vec::new();
    let mut handles = HashMap::new();
    let mut statuses = Vec::new();
    for (id, exporter) in &config.exporters {
        let metrics = Arc::new(ProducerMetrics::default());
        metrics.register(registry.sub_registry_with_label(("exporter".into(), id.clone().into())));
        statuses.push(telemetry::StatusSource {
            exporter: id.clone(),
            stream: exporter.aws.stream_name.clone(),
            metrics: metrics.clone(),
        });
        let client = clients
            .get(id)
            .with_context(|| format!("no Kinesis client for exporter {id}"))?
            .clone();
        let producer = start_producer(id, exporter, client, metrics);
        readiness.add_producer(producer.running_flag());
        handles.insert(id.clone(), producer.handle());
        producers.push((id.clone(), producer));
    }
    let ingress_metrics = IngressMetrics::default();
    ingress_metrics.register(&mut registry);
    let ingress = Ingress::new(
        ingress::routes(config, &handles),
        ingress_metrics,
        config.receivers.otlp.request_memory_limit_mib,
    );
    drop(handles);

    let addresses = listeners.local_addresses()?;
    let protocols = &config.receivers.otlp.protocols;
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
    let grpc = tokio::spawn(serve_router(
        listeners.grpc,
        grpc_router,
        ingress_stopped.clone(),
        ConnectionLimits::grpc(&protocols.grpc),
    ));
    let http = tokio::spawn(serve_router(
        listeners.http,
        http_router,
        ingress_stopped,
        ConnectionLimits::http(&protocols.http),
    ));
    let telemetry_server = tokio::spawn(serve_router(
        listeners.telemetry,
        telemetry::router(Arc::new(registry), readiness.clone(), statuses),
        telemetry_stopped,
        ConnectionLimits::telemetry(),
    ));
    readiness.set_listening();
    tracing::info!(
        grpc = %addresses.grpc,
        http = %addresses.http,
        telemetry = %addresses.telemetry,
        exporters = producers.len(),
        "receiving OTLP; send SIGTERM to drain and stop"
    );

    shutdown.await;
    let deadline = tokio::time::Instant::now() + timeouts.total;
    readiness.set_draining();
    tracing::info!("shutting down: no new requests; finishing those under way");
    let _ = stop_ingress.send(true);
    let mut servers = [grpc, http];
    let drained = tokio::time::timeout(timeouts.drain.min(timeouts.total), async {
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
                drain_timeout_seconds = timeouts.drain.as_secs(),
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

/// What one listener allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections; more are closed as they arrive.
    pub max_connections: usize,
    /// A request head (the first, or the next on a keep-alive connection) must arrive within.
    pub header_read_timeout: Option<Duration>,
    /// Concurrent HTTP/2 streams on one connection.
    pub max_concurrent_streams: Option<u32>,
    /// HTTP/2 PING after this long without data; the connection closes when it goes
    /// unanswered for `keepalive_timeout`.
    pub keepalive_time: Option<Duration>,
    pub keepalive_timeout: Duration,
}

impl ConnectionLimits {
    pub fn grpc(grpc: &crate::config::GrpcProtocol) -> Self {
        ConnectionLimits {
            max_connections: grpc.max_connections as usize,
            header_read_timeout: None,
            max_concurrent_streams: Some(grpc.max_concurrent_streams as u32),
            keepalive_time: Some(Duration::from_secs(grpc.keepalive_time_seconds)),
            keepalive_timeout: Duration::from_secs(grpc.keepalive_timeout_seconds),
        }
    }

    pub fn http(http: &crate::config::HttpProtocol) -> Self {
        ConnectionLimits {
            max_connections: http.max_connections as usize,
            header_read_timeout: Some(Duration::from_secs(http.read_header_timeout_seconds)),
            max_concurrent_streams: None,
            keepalive_time: None,
            keepalive_timeout: Duration::from_secs(20),
        }
    }

    /// The telemetry endpoints: scraped and probed, a few connections at a time.
    fn telemetry() -> Self {
        ConnectionLimits {
            max_connections: 64,
            header_read_timeout: Some(Duration::from_secs(10)),
            max_concurrent_streams: Some(16),
            keepalive_time: None,
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// What one read from a client's socket may take. h2 reads its frames 8 KiB at a time: an OTLP
/// request of 512 spans (about 80 KB) took 14 reads, a fifth of the HTTP/2 server's CPU at 5k
/// spans/s (perf); through this buffer it takes 2-3 (A/B: 3-5% less CPU per span at every
/// load). Each connection holds this much memory (grpc-go, the Collector's server, keeps 32 KiB
/// to read and 32 KiB to write per connection).
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` within `limits` until `stop` turns true, then closes the
/// listener and lets requests under way finish (the caller bounds how long).
async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keepalive_time)
        .keep_alive_timeout(limits.keepalive_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let room = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { drop(stop.wait_for(|stopped| *stopped).await) } => break,
        };
        let Ok(permit) = room.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections = limits.max_connections, "too many connections; closing a new one");
            continue; // dropping the stream closes it
        };
        // Answers are small and clients wait for them: Nagle's algorithm would hold each one
        // back for the peer's delayed ACK (tens of milliseconds per OTLP response).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let service = TowerToHyperService::new(router.clone());
        let stream = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::{self, Group};

    #[test]
    fn the_kpl_keys_map_onto_the_producer_with_the_500_record_split() {
        let mut kpl = KplConfig::default();
        let producer = producer_config("s", &kpl);
        assert_eq!(
            producer.records_per_request, 500,
            "the seed's 1000, split at 500"
        );
        assert_eq!(producer.aggregate_max_bytes, 51_200);
        assert_eq!(producer.linger, Duration::from_millis(100), "the linger");
        kpl.batch_count = 200;
        kpl.max_retries = 3;
        let producer = producer_config("s", &kpl);
        assert_eq!(producer.records_per_request, 200);
        assert_eq!(producer.max_retries, 3);
    }

    /// The settings table's maxima are the producer's Kinesis limits, and so is the number the
    /// configuration warns about: one set of facts, stated once per crate.
    #[test]
    fn the_settings_table_agrees_with_the_kinesis_limits() {
        let max = |key| settings::range(Group::Exporter, key).2 as usize;
        assert_eq!(max("kpl.aggregate_batch_size"), limits::MAX_RECORD_BYTES);
        assert_eq!(max("kpl.batch_size"), limits::MAX_REQUEST_BYTES);
        assert_eq!(
            crate::config::KINESIS_MAX_RECORDS_PER_REQUEST,
            limits::MAX_RECORDS_PER_REQUEST
        );
    }
}
