//! A fault-injecting stand-in for Kinesis that speaks the real JSON 1.1 wire protocol
//! (`X-Amz-Target: Kinesis_20131202.*`), so the producer is tested through the real SDK client.
//! No emulator can fail chosen entries, throttle, return 5xx or stall on demand; this can.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One entry of a PutRecords call as the stand-in received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
}

/// What to answer to one PutRecords call.
pub enum Reply {
    /// Per-entry outcome: `None` stores the entry, `Some(code)` fails it with that error code.
    Entries(Vec<Option<&'static str>>),
    /// A request-level error with this HTTP status and `__type`.
    Error(u16, &'static str),
    /// Never answer (the client must time out).
    Stall,
}

type Script = Box<dyn FnMut(usize, &[Entry]) -> Reply + Send>;

pub struct StandIn {
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    script: Mutex<Script>,
    shards: Mutex<Vec<(String, u128, u128)>>,
    /// Shard id to report for stored aggregates, overriding the range lookup (resharding
    /// tests), and for how many more PutRecords calls.
    misroute_to: Mutex<Option<(String, usize)>>,
    /// Shards per ListShards page (0: all in one).
    list_shards_page: AtomicUsize,
    /// While closed, ListShards calls wait here.
    list_shards_open: Mutex<bool>,
    list_shards_gate: Notify,
    calls: Mutex<Vec<Vec<Entry>>>,
    stored: Mutex<Vec<Entry>>,
    list_shards_calls: AtomicUsize,
    deny_list_shards: std::sync::atomic::AtomicBool,
    concurrent: AtomicUsize,
    max_concurrent: AtomicUsize,
    /// While closed, PutRecords calls wait here (after being counted as concurrent).
    gate_open: Mutex<bool>,
    gate: Notify,
    arrived: Notify,
}

impl StandIn {
    /// Starts on a free port of 127.0.0.1; every call is answered by `script(call_index, entries)`.
    pub async fn start(script: impl FnMut(usize, &[Entry]) -> Reply + Send + 'static) -> StandIn {
        let state = Arc::new(State {
            script: Mutex::new(Box::new(script)),
            shards: Mutex::new(vec![("shardId-000000000000".into(), 0, u128::MAX)]),
            misroute_to: Mutex::new(None),
            list_shards_page: AtomicUsize::new(0),
            list_shards_open: Mutex::new(true),
            list_shards_gate: Notify::new(),
            calls: Mutex::default(),
            stored: Mutex::default(),
            list_shards_calls: AtomicUsize::new(0),
            deny_list_shards: std::sync::atomic::AtomicBool::new(false),
            concurrent: AtomicUsize::new(0),
            max_concurrent: AtomicUsize::new(0),
            gate_open: Mutex::new(true),
            gate: Notify::new(),
            arrived: Notify::new(),
        });
        let app = axum::Router::new()
            .route("/", axum::routing::post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        StandIn { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_shards(&self, shards: Vec<(&str, u128, u128)>) {
        *self.state.shards.lock().unwrap() = shards
            .into_iter()
            .map(|(id, s, e)| (id.to_string(), s, e))
            .collect();
    }

    /// The next PutRecords call reports every aggregate it stores as landed on `shard`.
    pub fn misroute_next_aggregates_to(&self, shard: &str) {
        self.misroute_aggregates_to(shard, 1);
    }

    /// The next `calls` PutRecords calls report every aggregate they store as landed on `shard`.
    pub fn misroute_aggregates_to(&self, shard: &str, calls: usize) {
        *self.state.misroute_to.lock().unwrap() = Some((shard.to_string(), calls));
    }

    /// ListShards answers `page` shards at a time, with a NextToken for the rest.
    pub fn page_list_shards(&self, page: usize) {
        self.state.list_shards_page.store(page, Ordering::SeqCst);
    }

    /// Holds every ListShards call until [`StandIn::release_list_shards`].
    pub fn hold_list_shards(&self) {
        *self.state.list_shards_open.lock().unwrap() = false;
    }

    pub fn release_list_shards(&self) {
        *self.state.list_shards_open.lock().unwrap() = true;
        self.state.list_shards_gate.notify_waiters();
    }

    /// Answers ListShards with AccessDeniedException, as for a role without that permission.
    pub fn deny_list_shards(&self) {
        self.state.deny_list_shards.store(true, Ordering::SeqCst);
    }

    pub fn calls(&self) -> Vec<Vec<Entry>> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn stored(&self) -> Vec<Entry> {
        self.state.stored.lock().unwrap().clone()
    }

    pub fn list_shards_calls(&self) -> usize {
        self.state.list_shards_calls.load(Ordering::SeqCst)
    }

    pub fn max_concurrent(&self) -> usize {
        self.state.max_concurrent.load(Ordering::SeqCst)
    }

    pub fn concurrent(&self) -> usize {
        self.state.concurrent.load(Ordering::SeqCst)
    }

    /// Holds every PutRecords call until [`StandIn::open_gate`].
    pub fn close_gate(&self) {
        *self.state.gate_open.lock().unwrap() = false;
    }

    pub fn open_gate(&self) {
        *self.state.gate_open.lock().unwrap() = true;
        self.state.gate.notify_waiters();
    }

    /// Waits until `n` PutRecords calls are held concurrently (or panics after `limit`).
    pub async fn wait_for_concurrent(&self, n: usize, limit: Duration) {
        let seen = self
            .wait_until(limit, |standin| standin.concurrent() >= n)
            .await;
        assert!(
            seen,
            "never saw {n} concurrent calls (max {})",
            self.max_concurrent()
        );
    }

    /// Waits until `n` ListShards calls have arrived (or panics after `limit`).
    pub async fn wait_for_list_shards_calls(&self, n: usize, limit: Duration) {
        let seen = self
            .wait_until(limit, |standin| standin.list_shards_calls() >= n)
            .await;
        assert!(seen, "never saw {n} ListShards calls");
    }

    /// Waits, woken by every call's arrival, until `condition` holds; false after `limit`.
    async fn wait_until(&self, limit: Duration, condition: impl Fn(&StandIn) -> bool) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let notified = self.state.arrived.notified();
                if condition(self) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match target.as_str() {
        "Kinesis_20131202.ListShards" => {
            state.list_shards_calls.fetch_add(1, Ordering::SeqCst);
            state.arrived.notify_waiters();
            loop {
                let opened = state.list_shards_gate.notified();
                if *state.list_shards_open.lock().unwrap() {
                    break;
                }
                opened.await;
            }
            if state.deny_list_shards.load(Ordering::SeqCst) {
                return amz_json(
                    StatusCode::BAD_REQUEST,
                    json!({"__type": "AccessDeniedException", "message": "not allowed"}),
                );
            }
            let shards: Vec<Value> = state
                .shards
                .lock()
                .unwrap()
                .iter()
                .map(|(id, start, end)| {
                    json!({"ShardId": id,
                           "HashKeyRange": {"StartingHashKey": start.to_string(), "EndingHashKey": end.to_string()},
                           "SequenceNumberRange": {"StartingSequenceNumber": "1"}})
                })
                .collect();
            // Pages as Kinesis does: a NextToken for the rest, and no StreamName beside it.
            let page = state.list_shards_page.load(Ordering::SeqCst);
            let from: usize = match request["NextToken"].as_str() {
                Some(token) => {
                    if request.get("StreamName").is_some() {
                        return amz_json(
                            StatusCode::BAD_REQUEST,
                            json!({"__type": "InvalidArgumentException",
                                   "message": "NextToken and StreamName cannot be provided together"}),
                        );
                    }
                    token.parse().unwrap()
                }
                None => 0,
            };
            if page == 0 {
                return amz_json(StatusCode::OK, json!({ "Shards": shards }));
            }
            let to = (from + page).min(shards.len());
            let mut body = json!({ "Shards": shards[from..to] });
            if to < shards.len() {
                body["NextToken"] = json!(to.to_string());
            }
            amz_json(StatusCode::OK, body)
        }
        "Kinesis_20131202.PutRecords" => put_records(&state, &request).await,
        other => amz_json(
            StatusCode::BAD_REQUEST,
            json!({"__type": "UnknownOperationException", "message": other}),
        ),
    }
}

async fn put_records(state: &State, request: &Value) -> Response {
    let entries: Vec<Entry> = request["Records"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| Entry {
            partition_key: r["PartitionKey"].as_str().unwrap_or_default().to_string(),
            explicit_hash_key: r["ExplicitHashKey"].as_str().map(str::to_string),
            data: base64::engine::general_purpose::STANDARD
                .decode(r["Data"].as_str().unwrap_or_default())
                .unwrap_or_default(),
        })
        .collect();
    let now = state.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_concurrent.fetch_max(now, Ordering::SeqCst);
    state.arrived.notify_waiters();
    loop {
        let opened = state.gate.notified();
        if *state.gate_open.lock().unwrap() {
            break;
        }
        opened.await;
    }
    let reply = {
        let mut calls = state.calls.lock().unwrap();
        let index = calls.len();
        calls.push(entries.clone());
        (state.script.lock().unwrap())(index, &entries)
    };
    let response = match reply {
        Reply::Stall => {
            state.concurrent.fetch_sub(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Error(status, code) => amz_json(
            StatusCode::from_u16(status).unwrap(),
            json!({"__type": code, "message": format!("injected {code}")}),
        ),
        Reply::Entries(outcomes) => {
            assert_eq!(
                outcomes.len(),
                entries.len(),
                "script must answer every entry"
            );
            let shards = state.shards.lock().unwrap().clone();
            let misroute = {
                let mut slot = state.misroute_to.lock().unwrap();
                let shard = slot.as_ref().map(|(shard, _)| shard.clone());
                if let Some((_, calls)) = slot.as_mut() {
                    *calls -= 1;
                    if *calls == 0 {
                        *slot = None;
                    }
                }
                shard
            };
            let mut failed = 0;
            let results: Vec<Value> = entries
                .iter()
                .zip(outcomes)
                .map(|(entry, outcome)| match outcome {
                    Some(code) => {
                        failed += 1;
                        json!({"ErrorCode": code, "ErrorMessage": format!("injected {code}")})
                    }
                    None => {
                        state.stored.lock().unwrap().push(entry.clone());
                        let shard =
                            match (&misroute, entry.data.starts_with(&[0xF3, 0x89, 0x9A, 0xC2])) {
                                (Some(id), true) => id.clone(),
                                _ => shard_for(&shards, entry),
                            };
                        json!({"SequenceNumber": "1", "ShardId": shard})
                    }
                })
                .collect();
            amz_json(
                StatusCode::OK,
                json!({"FailedRecordCount": failed, "Records": results}),
            )
        }
    };
    state.concurrent.fetch_sub(1, Ordering::SeqCst);
    response
}

fn shard_for(shards: &[(String, u128, u128)], entry: &Entry) -> String {
    let hash = match &entry.explicit_hash_key {
        Some(h) => h.parse::<u128>().unwrap(),
        None => kinesis_exporter::kpl::partition_key_hash(&entry.partition_key),
    };
    shards
        .iter()
        .find(|(_, s, e)| (*s..=*e).contains(&hash))
        .map(|(id, _, _)| id.clone())
        .unwrap_or_default()
}

fn amz_json(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}
