//! A Kinesis stand-in for `make bench-e2e`: one stream of a few shards behind the real JSON 1.1
//! protocol (ListShards, DescribeStream, DescribeStreamSummary, PutRecords), which never
//! throttles and checks every span it stores: the KPL checksum of aggregates, that each user
//! record lies in the range of the shard its record landed on (what KCL checks), and that the
//! data decodes as an OTLP ExportTraceServiceRequest. Spans are counted by span id, so a lost
//! or duplicated span shows. GET /stats answers the counts as JSON; POST /reset clears them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use clap::Parser;
use kinesis_exporter::kpl::aggregator::{MAGIC, deaggregate};
use kinesis_exporter::kpl::partition_key_hash;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "A checking Kinesis stand-in for make bench-e2e")]
struct Cli {
    /// Address to listen on; port 0 picks one, printed on stdout as the first line.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Shards of the stream, splitting the hash key space evenly.
    #[arg(long, default_value_t = 4)]
    shards: u32,
}

#[derive(Default)]
struct Counts {
    requests: u64,
    records: u64,
    aggregated_records: u64,
    bytes: u64,
    spans: u64,
    span_ids: HashSet<[u8; 8]>,
    duplicates: u64,
    /// Records that failed a check, with the first reason seen.
    bad: u64,
    first_problem: Option<String>,
    last_store_unix_ms: u128,
}

struct Stream {
    shards: Vec<(String, u128, u128)>,
    counts: Mutex<Counts>,
}

fn shard_ranges(n: u32) -> Vec<(String, u128, u128)> {
    let step = u128::MAX / n as u128;
    (0..n)
        .map(|i| {
            let start = step * i as u128;
            let end = if i + 1 == n {
                u128::MAX
            } else {
                start + step - 1
            };
            (format!("shardId-{i:012}"), start, end)
        })
        .collect()
}

impl Stream {
    fn shard_of(&self, hash: u128) -> usize {
        self.shards
            .iter()
            .position(|(_, s, e)| *s <= hash && hash <= *e)
            .expect("the shards cover the whole range")
    }

    /// Checks one stored record; returns the spans it carries, or why it is bad.
    fn check(&self, shard: usize, data: &[u8]) -> Result<Vec<[u8; 8]>, String> {
        let (_, start, end) = &self.shards[shard];
        let user_records: Vec<Bytes> = if data.starts_with(&MAGIC) {
            let records = deaggregate(data)?;
            let mut out = Vec::with_capacity(records.len());
            for (pk, ehk, bytes) in records {
                let hash = match ehk {
                    Some(e) => e.parse::<u128>().map_err(|e| e.to_string())?,
                    None => partition_key_hash(&pk),
                };
                if hash < *start || hash > *end {
                    return Err(format!("a user record hashes outside its shard {shard}"));
                }
                out.push(bytes);
            }
            out
        } else {
            vec![Bytes::copy_from_slice(data)]
        };
        let mut spans = Vec::new();
        for record in user_records {
            let request = ExportTraceServiceRequest::decode(record.as_ref())
                .map_err(|e| format!("not an OTLP trace request: {e}"))?;
            for rs in &request.resource_spans {
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        let id: [u8; 8] = span
                            .span_id
                            .as_slice()
                            .try_into()
                            .map_err(|_| "a span id is not 8 bytes".to_string())?;
                        spans.push(id);
                    }
                }
            }
        }
        Ok(spans)
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"__type": kind, "message": message}).to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}

async fn kinesis(stream: Arc<Stream>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "bad JSON",
        );
    };
    let shards_json = || -> Vec<Value> {
        stream
            .shards
            .iter()
            .map(|(id, s, e)| {
                json!({"ShardId": id, "HashKeyRange": {"StartingHashKey": s.to_string(),
                       "EndingHashKey": e.to_string()},
                       "SequenceNumberRange": {"StartingSequenceNumber": "1"}})
            })
            .collect()
    };
    match target.rsplit('.').next().unwrap_or("") {
        "ListShards" => ok(json!({"Shards": shards_json()})),
        "DescribeStream" => ok(json!({"StreamDescription": {
            "StreamName": request["StreamName"], "StreamARN": "arn:aws:kinesis:us-east-1:1:stream/bench",
            "StreamStatus": "ACTIVE", "Shards": shards_json(), "HasMoreShards": false,
            "RetentionPeriodHours": 24, "StreamCreationTimestamp": 0, "EnhancedMonitoring": [],
            "EncryptionType": "NONE"}})),
        "DescribeStreamSummary" => ok(json!({"StreamDescriptionSummary": {
            "StreamName": request["StreamName"], "StreamARN": "arn:aws:kinesis:us-east-1:1:stream/bench",
            "StreamStatus": "ACTIVE", "OpenShardCount": stream.shards.len(), "RetentionPeriodHours": 24,
            "StreamCreationTimestamp": 0, "EnhancedMonitoring": [], "EncryptionType": "NONE"}})),
        "PutRecords" => put_records(&stream, &request),
        other => error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            &format!("not served here: {other}"),
        ),
    }
}

fn put_records(stream: &Stream, request: &Value) -> Response {
    let Some(records) = request["Records"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "ValidationException", "no Records");
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut results = Vec::with_capacity(records.len());
    let mut checked = Vec::with_capacity(records.len());
    for record in records {
        let data = b64
            .decode(record["Data"].as_str().unwrap_or(""))
            .unwrap_or_default();
        let pk = record["PartitionKey"].as_str().unwrap_or("");
        let hash = match record["ExplicitHashKey"].as_str() {
            Some(e) => e.parse::<u128>().unwrap_or(0),
            None => partition_key_hash(pk),
        };
        let shard = stream.shard_of(hash);
        let aggregated = data.starts_with(&MAGIC);
        checked.push((
            stream.check(shard, &data),
            data.len() + pk.len(),
            aggregated,
        ));
        results.push(json!({"ShardId": stream.shards[shard].0, "SequenceNumber": "1"}));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut counts = stream.counts.lock().unwrap();
    counts.requests += 1;
    for (result, bytes, aggregated) in checked {
        counts.records += 1;
        counts.aggregated_records += aggregated as u64;
        counts.bytes += bytes as u64;
        match result {
            Ok(spans) => {
                for id in spans {
                    counts.spans += 1;
                    if !counts.span_ids.insert(id) {
                        counts.duplicates += 1;
                    }
                }
            }
            Err(problem) => {
                counts.bad += 1;
                counts.first_problem.get_or_insert(problem);
            }
        }
    }
    counts.last_store_unix_ms = now;
    ok(json!({"FailedRecordCount": 0, "Records": results}))
}

async fn stats(stream: Arc<Stream>) -> Response {
    let c = stream.counts.lock().unwrap();
    axum::Json(json!({
        "requests": c.requests, "records": c.records, "aggregated_records": c.aggregated_records,
        "bytes": c.bytes, "spans": c.spans, "distinct_spans": c.span_ids.len(),
        "duplicates": c.duplicates, "bad_records": c.bad, "first_problem": c.first_problem,
        "last_store_unix_ms": c.last_store_unix_ms,
    }))
    .into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stream = Arc::new(Stream {
        shards: shard_ranges(cli.shards.max(1)),
        counts: Mutex::default(),
    });
    let app = axum::Router::new()
        .route(
            "/",
            post({
                let stream = stream.clone();
                move |headers, body| kinesis(stream.clone(), headers, body)
            }),
        )
        .route(
            "/stats",
            get({
                let stream = stream.clone();
                move || stats(stream.clone())
            }),
        )
        .route(
            "/reset",
            post({
                let stream = stream.clone();
                move || async move {
                    *stream.counts.lock().unwrap() = Counts::default();
                    "reset\n"
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024));
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    println!("{}", listener.local_addr()?.port());
    axum::serve(listener, app).await?;
    Ok(())
}
