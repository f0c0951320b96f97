//! Every answer the README promises from the OTLP ingress, in process: the server runs as a
//! library ([`server::serve`]) on ports the OS picks, with the real producer and AWS SDK
//! client writing to the Kinesis stand-in. HTTP: 200 (+ partial success), 400 with a
//! google.rpc.Status, 404, 413, 415, 503 + Retry-After. gRPC: OK, INVALID_ARGUMENT,
//! RESOURCE_EXHAUSTED, UNAVAILABLE, UNIMPLEMENTED.

// Shared with producer_faults, which uses the rest of the stand-in's controls.
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kinesis_exporter::aws::SdkKinesis;
use kinesis_exporter::config::Config;
use kinesis_exporter::kpl::KinesisApi;
use kinesis_exporter::kpl::aggregator::deaggregate;
use kinesis_exporter::server::{self, BoundAddresses, Listeners, ShutdownTimeouts};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use support::standin::{Entry, Reply, StandIn};
use tokio::sync::oneshot;

const TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const LOGS: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// A running exporter: its addresses, the stand-in behind it, and a way to stop it.
struct Running {
    addresses: BoundAddresses,
    standin: StandIn,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The exporter's Kinesis client aimed at `standin`.
async fn client_for(standin: &StandIn) -> Arc<dyn KinesisApi> {
    let sdk = aws_config::defaults(kinesis_exporter::aws::behavior_version())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await;
    Arc::new(
        SdkKinesis::new(&sdk, Some(&standin.url()), Duration::from_secs(600))
            .await
            .expect("the client builds"),
    )
}

const LISTENERS: &str = "receivers:\n  otlp:\n    protocols:\n      \
       grpc: {endpoint: '127.0.0.1:0', max_recv_msg_size_mib: 1}\n      \
       http: {endpoint: '127.0.0.1:0', max_request_body_size: 65536}\n";

impl Running {
    /// Starts the exporter with only a traces pipeline; `kpl` and `exporter` are extra YAML
    /// lines for `exporters.kinesis.kpl` and `exporters.kinesis`.
    async fn start(reply: fn(&[Entry]) -> Reply, kpl: &str, exporter: &str) -> Running {
        let standin = StandIn::start(move |_, entries| reply(entries)).await;
        let yaml = format!(
            "{LISTENERS}exporters:\n  kinesis:\n    \
               aws: {{stream_name: s, region: us-east-1, kinesis_endpoint: '{}'}}\n    \
               kpl: {{flush_interval_seconds: 1, {kpl}}}\n    {exporter}\n\
             service:\n  pipelines:\n    traces: {{receivers: [otlp], exporters: [kinesis]}}\n  \
               telemetry: {{metrics: {{address: '127.0.0.1:0'}}}}\n",
            standin.url()
        );
        let clients = HashMap::from([("kinesis".to_string(), client_for(&standin).await)]);
        Running::serve(&yaml, clients, standin).await
    }

    /// Serves `yaml` in process with `clients`; `standin` is what `stop` hands back.
    async fn serve(
        yaml: &str,
        clients: HashMap<String, Arc<dyn KinesisApi>>,
        standin: StandIn,
    ) -> Running {
        let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let listeners = Listeners::bind(&config).await.unwrap();
        let addresses = listeners.local_addresses().unwrap();
        assert_ne!(
            addresses.grpc.port(),
            0,
            "port 0 is resolved to the bound port"
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let timeouts = ShutdownTimeouts {
                total: Duration::from_secs(3),
                drain: Duration::from_secs(1),
            };
            let shutdown = async {
                let _ = stopped.await;
            };
            server::serve(&config, listeners, clients, shutdown, timeouts).await
        });
        Running {
            addresses,
            standin,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server (it flushes) and returns the stand-in, to look at what was stored.
    async fn stop(mut self) -> StandIn {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops within its shutdown timeout")
            .unwrap()
            .unwrap();
        self.standin
    }

    async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> HttpAnswer {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = hyper::Request::post(format!("http://{}{path}", self.addresses.http))
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        HttpAnswer {
            status,
            content_type: header(&headers, "content-type"),
            retry_after: header(&headers, "retry-after"),
            body,
        }
    }

    /// One unary gRPC call with `message` as the (uncompressed) payload; returns grpc-status,
    /// grpc-message and the response message bytes.
    async fn grpc(&self, path: &str, message: Vec<u8>) -> (i32, String, Bytes) {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let request = hyper::Request::post(format!("http://{}{path}", self.addresses.grpc))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(framed)))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let headers = response.headers().clone();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = header(&trailers, "grpc-status")
            .or_else(|| header(&headers, "grpc-status"))
            .expect("a grpc-status")
            .parse()
            .unwrap();
        let message_text = header(&trailers, "grpc-message")
            .or_else(|| header(&headers, "grpc-message"))
            .unwrap_or_default();
        let body = collected.to_bytes();
        let payload = if body.len() >= 5 {
            body.slice(5..)
        } else {
            Bytes::new()
        };
        (status, message_text, payload)
    }
}

struct HttpAnswer {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
    body: Bytes,
}

fn header(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn stores(entries: &[Entry]) -> Reply {
    Reply::Entries(vec![None; entries.len()])
}

fn stalls(_: &[Entry]) -> Reply {
    Reply::Stall
}

/// One span in one resource; `attribute_bytes` pads it with an attribute that large.
fn trace_request(name: &str, attribute_bytes: usize) -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: vec![7; 16],
        span_id: vec![9; 8],
        name: name.to_string(),
        attributes: vec![KeyValue {
            key: "padding".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("x".repeat(attribute_bytes))),
            }),
            ..KeyValue::default()
        }],
        ..Span::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

// gRPC status codes
const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNIMPLEMENTED: i32 = 12;
const UNAVAILABLE: i32 = 14;

#[tokio::test]
async fn http_answers() {
    let running = Running::start(stores, "", "").await;
    let request = trace_request("ok", 10).encode_to_vec();

    let ok = running
        .post("/v1/traces", "application/x-protobuf", request.clone())
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.content_type.as_deref(), Some("application/x-protobuf"));
    let answer = ExportTraceServiceResponse::decode(ok.body).unwrap();
    assert!(answer.partial_success.is_none_or(|p| p.rejected_spans == 0));

    let json = running
        .post(
            "/v1/traces",
            "application/json",
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"json"}]}]}]}"#.to_vec(),
        )
        .await;
    assert_eq!(json.status, 200, "{:?}", json.body);
    assert_eq!(json.content_type.as_deref(), Some("application/json"));

    let bad = running
        .post("/v1/traces", "application/x-protobuf", vec![0xff; 7])
        .await;
    assert_eq!(bad.status, 400);
    let status = google_rpc_status(&bad.body);
    assert_eq!(status.0, INVALID_ARGUMENT, "google.rpc.Status code");
    assert!(!status.1.is_empty(), "the Status says what was wrong");

    let media = running
        .post("/v1/traces", "text/plain", request.clone())
        .await;
    assert_eq!(media.status, 415);

    let path = running
        .post("/v1/spans", "application/x-protobuf", request.clone())
        .await;
    assert_eq!(path.status, 404);
    // A signal with no pipeline is refused the same way.
    let logs = running
        .post("/v1/logs", "application/x-protobuf", Vec::new())
        .await;
    assert_eq!(logs.status, 404);

    let large = running
        .post(
            "/v1/traces",
            "application/x-protobuf",
            trace_request("large", 70_000).encode_to_vec(),
        )
        .await;
    assert_eq!(large.status, 413);

    running.stop().await;
}

/// google.rpc.Status {code = 1, message = 2}, decoded by hand to keep the test's own types few.
fn google_rpc_status(body: &[u8]) -> (i32, String) {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let status = RpcStatus::decode(body).expect("a google.rpc.Status body");
    (status.code, status.message)
}

#[tokio::test]
async fn grpc_answers() {
    let running = Running::start(stores, "", "").await;

    let (code, message, payload) = running
        .grpc(TRACES, trace_request("ok", 10).encode_to_vec())
        .await;
    assert_eq!(code, OK, "{message}");
    assert!(
        ExportTraceServiceResponse::decode(payload)
            .unwrap()
            .partial_success
            .is_none_or(|p| p.rejected_spans == 0)
    );

    let (code, message, _) = running.grpc(TRACES, vec![0xff; 7]).await;
    assert_eq!(code, INVALID_ARGUMENT, "{message}");

    let (code, message, _) = running
        .grpc(TRACES, trace_request("big", 1_100_000).encode_to_vec())
        .await;
    assert_eq!(code, RESOURCE_EXHAUSTED, "{message}");

    let (code, message, _) = running.grpc(LOGS, Vec::new()).await;
    assert_eq!(code, UNIMPLEMENTED, "{message}");

    running.stop().await;
}

/// A span that can never fit in a record (here: bigger than the whole batch_size) is refused
/// in partial_success with its count and reason, and what fits is stored.
#[tokio::test]
async fn what_can_never_fit_is_reported_in_partial_success() {
    let running = Running::start(stores, "batch_size: 2000", "").await;
    let mut request = trace_request("fits", 10);
    request
        .resource_spans
        .extend(trace_request("never-fits", 5000).resource_spans);
    let (code, message, payload) = running.grpc(TRACES, request.encode_to_vec()).await;
    assert_eq!(code, OK, "{message}");
    let partial = ExportTraceServiceResponse::decode(payload)
        .unwrap()
        .partial_success
        .expect("partial_success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(!partial.error_message.is_empty());
    let stored = running.stop().await.stored();
    assert_eq!(stored.len(), 1, "the span that fits, alone, raw");
    let kept = ExportTraceServiceRequest::decode(stored[0].data.as_slice()).unwrap();
    assert_eq!(kept.resource_spans[0].scope_spans[0].spans[0].name, "fits");
}

/// A span whose ids have the wrong length is refused in partial_success with the reason (it
/// was answered OK and then dropped as an invalid partition key before); the rest is stored.
#[tokio::test]
async fn ids_of_the_wrong_length_are_refused_in_partial_success() {
    let running = Running::start(stores, "", "").await;
    let mut request = trace_request("valid", 10);
    let mut bad = trace_request("two-byte-trace-id", 10);
    bad.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1, 2];
    request.resource_spans.extend(bad.resource_spans);
    let answer = running
        .post(
            "/v1/traces",
            "application/x-protobuf",
            request.encode_to_vec(),
        )
        .await;
    assert_eq!(answer.status, 200);
    let partial = ExportTraceServiceResponse::decode(answer.body)
        .unwrap()
        .partial_success
        .expect("partial_success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial
            .error_message
            .contains("trace_id must be 16 bytes, got 2"),
        "{}",
        partial.error_message
    );
    let stored = running.stop().await.stored();
    assert_eq!(stored.len(), 1);
    let kept = ExportTraceServiceRequest::decode(stored[0].data.as_slice()).unwrap();
    assert_eq!(kept.resource_spans[0].scope_spans[0].spans[0].name, "valid");
}

#[tokio::test]
async fn a_full_backlog_answers_retry_later_never_ok() {
    let running = Running::start(
        stalls,
        "backlog_count: 1, max_connections: 1, batch_count: 1, aggregate_batch_count: 1",
        "enqueue_timeout_seconds: 0",
    )
    .await;
    let mut refused = None;
    for i in 0..200 {
        let answer = running
            .post(
                "/v1/traces",
                "application/x-protobuf",
                trace_request(&format!("bp-{i}"), 10).encode_to_vec(),
            )
            .await;
        assert!(matches!(answer.status, 200 | 503), "{}", answer.status);
        if answer.status == 503 {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("a 503 once the backlog is full");
    let retry_after = refused.retry_after.expect("503 carries Retry-After");
    assert!(retry_after.parse::<u64>().is_ok(), "{retry_after}");

    let (code, message, _) = running
        .grpc(TRACES, trace_request("bp-grpc", 10).encode_to_vec())
        .await;
    assert_eq!(code, UNAVAILABLE, "{message}");
    running.stop().await;
}

/// More records than the whole backlog holds can never be admitted at once: refused whole with
/// a reason that names the bound (HTTP 413, gRPC RESOURCE_EXHAUSTED), nothing queued.
#[tokio::test]
async fn a_request_larger_than_the_backlog_is_refused_whole() {
    let running = Running::start(stores, "backlog_count: 2", "").await;
    let mut request = trace_request("a", 10);
    for (i, name) in ["b", "c"].into_iter().enumerate() {
        let mut more = trace_request(name, 10);
        more.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![i as u8 + 1; 16];
        request.resource_spans.extend(more.resource_spans);
    }
    let answer = running
        .post(
            "/v1/traces",
            "application/x-protobuf",
            request.encode_to_vec(),
        )
        .await;
    assert_eq!(answer.status, 413);
    let (code, message) = google_rpc_status(&answer.body);
    assert_eq!(code, RESOURCE_EXHAUSTED);
    assert!(message.contains("kpl.backlog_count 2"), "{message}");
    let (code, message, _) = running.grpc(TRACES, request.encode_to_vec()).await;
    assert_eq!(code, RESOURCE_EXHAUSTED, "{message}");
    assert!(
        running.stop().await.stored().is_empty(),
        "nothing of it was queued"
    );
}

/// With two routes for traces, one of them stalled, a request is admitted by both or by none:
/// the route that could take it stores exactly the requests answered OK, never part of one the
/// client was told to retry.
#[tokio::test]
async fn a_request_is_admitted_by_every_route_or_by_none() {
    let fast = StandIn::start(|_, entries| stores(entries)).await;
    let stalled = StandIn::start(|_, entries| stalls(entries)).await;
    let yaml = format!(
        "{LISTENERS}exporters:\n  \
           kinesis/fast:\n    aws: {{stream_name: s, kinesis_endpoint: '{}'}}\n    \
             kpl: {{flush_interval_seconds: 1}}\n    enqueue_timeout_seconds: 0\n  \
           kinesis/stalled:\n    aws: {{stream_name: s, kinesis_endpoint: '{}'}}\n    \
             kpl: {{backlog_count: 1, max_connections: 1, batch_count: 1, aggregate_batch_count: 1}}\n    \
             enqueue_timeout_seconds: 0\n\
         service:\n  pipelines:\n    \
           traces: {{receivers: [otlp], exporters: [kinesis/fast, kinesis/stalled]}}\n  \
           telemetry: {{metrics: {{address: '127.0.0.1:0'}}}}\n",
        fast.url(),
        stalled.url()
    );
    let clients = HashMap::from([
        ("kinesis/fast".to_string(), client_for(&fast).await),
        ("kinesis/stalled".to_string(), client_for(&stalled).await),
    ]);
    let running = Running::serve(&yaml, clients, fast).await;
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..50 {
        let name = format!("req-{i}");
        let answer = running
            .post(
                "/v1/traces",
                "application/x-protobuf",
                trace_request(&name, 10).encode_to_vec(),
            )
            .await;
        match answer.status {
            200 => acknowledged.push(name),
            503 => {
                refused = Some(name);
                break;
            }
            other => panic!("request {i}: {other}"),
        }
    }
    let refused = refused.expect("the stalled route fills up and refuses");
    // Every user record, whether it went out raw or inside a KPL aggregate.
    let mut stored: Vec<String> = Vec::new();
    for entry in running.stop().await.stored() {
        let users = match deaggregate(&entry.data) {
            Ok(subs) => subs.into_iter().map(|(_, _, data)| data.to_vec()).collect(),
            Err(_) => vec![entry.data],
        };
        for data in users {
            let request = ExportTraceServiceRequest::decode(data.as_slice()).unwrap();
            stored.push(
                request.resource_spans[0].scope_spans[0].spans[0]
                    .name
                    .clone(),
            );
        }
    }
    stored.sort();
    acknowledged.sort();
    assert_eq!(
        stored, acknowledged,
        "the fast route stored exactly what was acknowledged"
    );
    assert!(!stored.contains(&refused));
}

/// An HTTP server in process with `http_options` (YAML flow-map entries) on its listener.
async fn serve_http_with(http_options: &str) -> Running {
    let standin = StandIn::start(|_, entries| stores(entries)).await;
    let yaml = format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc: {{endpoint: '127.0.0.1:0'}}\n      \
           http: {{endpoint: '127.0.0.1:0', {http_options}}}\n\
         exporters:\n  kinesis:\n    aws: {{stream_name: s, kinesis_endpoint: '{}'}}\n\
         service:\n  telemetry: {{metrics: {{address: '127.0.0.1:0'}}}}\n",
        standin.url()
    );
    let clients = HashMap::from([("kinesis".to_string(), client_for(&standin).await)]);
    Running::serve(&yaml, clients, standin).await
}

/// Reads until the server closes the connection (within 20 s); returns what it sent before.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the server closes the connection");
    got
}

/// A half-sent request head and an idle keep-alive connection are closed after
/// `read_header_timeout_seconds`.
#[tokio::test]
async fn stalled_and_idle_connections_are_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let running = serve_http_with("read_header_timeout_seconds: 1").await;
    let http = running.addresses.http;

    let mut half_sent = tokio::net::TcpStream::connect(http).await.unwrap();
    half_sent
        .write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .unwrap();
    until_closed(&mut half_sent).await;

    let body = trace_request("keep-alive", 10).encode_to_vec();
    let mut idle = tokio::net::TcpStream::connect(http).await.unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    idle.write_all(head.as_bytes()).await.unwrap();
    idle.write_all(&body).await.unwrap();
    let answered = until_closed(&mut idle).await;
    assert!(
        answered.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answered)
    );
    running.stop().await;
}

/// One whole HTTP/1.1 response (head and Content-Length body) read from `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Connections past `max_connections` are closed as they arrive, while the ones already open
/// keep working.
#[tokio::test]
async fn connections_past_the_limit_are_closed_and_the_others_served() {
    use tokio::io::AsyncWriteExt;
    let running = serve_http_with("max_connections: 2").await;
    let http = running.addresses.http;
    let request = b"GET /v1/unknown HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
        stream.write_all(request).await.unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 404"));
        open.push(stream);
    }
    let mut third = tokio::net::TcpStream::connect(http).await.unwrap();
    let _ = third.write_all(request).await;
    assert!(
        until_closed(&mut third).await.is_empty(),
        "the third connection got no answer"
    );
    for stream in &mut open {
        stream.write_all(request).await.unwrap();
        let answer = read_response(stream).await;
        assert!(
            answer.starts_with("HTTP/1.1 404"),
            "held connection still served: {answer}"
        );
    }
    drop(open);
    running.stop().await;
}

// --------------------------------------------------------------------------- delivery: acknowledged

fn denied(_: &[Entry]) -> Reply {
    Reply::Error(400, "AccessDeniedException")
}

fn failing(_: &[Entry]) -> Reply {
    Reply::Error(500, "InternalFailure")
}

#[tokio::test]
async fn acknowledged_delivery_answers_once_the_records_are_stored() {
    let running = Arc::new(Running::start(stores, "", "delivery: acknowledged").await);
    running.standin.close_gate();
    let call = tokio::spawn({
        let running = running.clone();
        async move {
            running
                .grpc(TRACES, trace_request("kept", 10).encode_to_vec())
                .await
        }
    });
    // Kinesis holds the PutRecords call; the client has no answer yet (buffered delivery
    // would have answered before the call was even made).
    running
        .standin
        .wait_for_concurrent(1, Duration::from_secs(10))
        .await;
    assert!(
        !call.is_finished(),
        "answered before the records were stored"
    );
    assert!(running.standin.stored().is_empty());
    running.standin.open_gate();
    let (status, message, payload) = call.await.unwrap();
    assert_eq!(status, OK, "{message}");
    let response = ExportTraceServiceResponse::decode(payload).unwrap();
    assert_eq!(response.partial_success, None);
    assert_eq!(
        running.standin.stored().len(),
        1,
        "stored before the answer"
    );
}

#[tokio::test]
async fn acknowledged_delivery_reports_records_refused_for_good() {
    let running = Running::start(denied, "", "delivery: acknowledged").await;
    let (status, message, payload) = running
        .grpc(TRACES, trace_request("refused", 10).encode_to_vec())
        .await;
    assert_eq!(status, OK, "{message}");
    let partial = ExportTraceServiceResponse::decode(payload)
        .unwrap()
        .partial_success
        .expect("a partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("not stored in Kinesis"),
        "{partial:?}"
    );
    let http = running
        .post(
            "/v1/traces",
            "application/x-protobuf",
            trace_request("refused", 10).encode_to_vec(),
        )
        .await;
    assert_eq!(http.status, 200);
    let partial = ExportTraceServiceResponse::decode(http.body)
        .unwrap()
        .partial_success
        .expect("a partial success");
    assert_eq!(partial.rejected_spans, 1);
}

#[tokio::test]
async fn acknowledged_delivery_asks_for_a_retry_when_retries_run_out() {
    let running = Running::start(failing, "max_retries: 1", "delivery: acknowledged").await;
    let (status, message, _) = running
        .grpc(TRACES, trace_request("lost", 10).encode_to_vec())
        .await;
    assert_eq!(status, UNAVAILABLE, "{message}");
    assert!(message.contains("retries_exhausted"), "{message}");
    let http = running
        .post(
            "/v1/traces",
            "application/x-protobuf",
            trace_request("lost", 10).encode_to_vec(),
        )
        .await;
    assert_eq!(http.status, 503);
    assert!(http.retry_after.is_some());
    assert!(running.standin.stored().is_empty());
}
