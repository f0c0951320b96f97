//! The OTLP/gRPC load of `make bench-e2e`: trace export requests of `--spans` spans (a few
//! attributes each, every span id unique) at a fixed rate or at full speed, with up to
//! `--in-flight` requests under way, for `--seconds`. Failed requests are retried (as an SDK
//! exporter does) and a span counts as acknowledged once its request got OK. Prints one JSON
//! object: spans sent and acknowledged, requests failed, response latency percentiles, and
//! when the last response came.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::json;
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(about = "OTLP/gRPC trace load for make bench-e2e")]
struct Cli {
    /// host:port of the OTLP/gRPC receiver.
    #[arg(long)]
    target: String,
    /// Spans per second; 0 sends as fast as the receiver answers.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Spans per request.
    #[arg(long, default_value_t = 512)]
    spans: usize,
    /// Requests under way at most.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Spans per trace (a root and its children).
    #[arg(long, default_value_t = 8)]
    trace_size: usize,
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// One request; `first` numbers its first span, so every span id in a run is unique.
fn request(first: u64, spans: usize, trace_size: usize) -> ExportTraceServiceRequest {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let spans = (0..spans as u64)
        .map(|i| {
            let n = first + i;
            let trace = n / trace_size as u64;
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&trace.to_be_bytes());
            trace_id[8..]
                .copy_from_slice(&(trace.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
            let root = trace * trace_size as u64;
            Span {
                trace_id: trace_id.to_vec(),
                span_id: (n + 1).to_be_bytes().to_vec(),
                parent_span_id: if n == root {
                    Vec::new()
                } else {
                    (root + 1).to_be_bytes().to_vec()
                },
                name: format!("GET /api/items/{}", n % 50),
                kind: 2,
                start_time_unix_nano: now,
                end_time_unix_nano: now + 1_500_000,
                attributes: vec![
                    attribute("http.request.method", "GET"),
                    attribute("http.route", "/api/items/{id}"),
                    attribute("url.scheme", "https"),
                    attribute("server.address", "items.internal"),
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    attribute("service.name", "bench"),
                    attribute("host.name", "bench-host"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "bench".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = TraceServiceClient::connect(format!("http://{}", cli.target)).await?;
    let requests_total = if cli.rate == 0 {
        u64::MAX
    } else {
        (cli.rate * cli.seconds).div_ceil(cli.spans as u64)
    };
    let interval = if cli.rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(cli.spans as f64 / cli.rate as f64)
    };
    let in_flight = Arc::new(Semaphore::new(cli.in_flight));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(cli.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    for i in 0..requests_total {
        let due = started + interval * i as u32;
        if cli.rate == 0 && Instant::now() >= deadline || cli.rate > 0 && due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let body = request(i * cli.spans as u64, cli.spans, cli.trace_size);
        sent += cli.spans as u64;
        let mut client = client.clone();
        let (latencies, acknowledged, failures) =
            (latencies.clone(), acknowledged.clone(), failures.clone());
        let spans = cli.spans as u64;
        tasks.spawn(async move {
            let _permit = permit;
            loop {
                let t = Instant::now();
                match client.export(body.clone()).await {
                    Ok(_) => {
                        latencies.lock().unwrap().push(t.elapsed().as_secs_f64());
                        acknowledged.fetch_add(spans, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let last_response_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
    };
    println!(
        "{}",
        json!({
            "spans_sent": sent,
            "spans_acknowledged": acknowledged.load(Ordering::Relaxed),
            "failed_attempts": failures.load(Ordering::Relaxed),
            "requests": l.len(),
            "seconds": started.elapsed().as_secs_f64(),
            "latency_p50_ms": pct(0.50).map(|s| s * 1000.0),
            "latency_p99_ms": pct(0.99).map(|s| s * 1000.0),
            "last_response_unix_ms": last_response_unix_ms,
        })
    );
    Ok(())
}
