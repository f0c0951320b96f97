//! OTLP/HTTP: POST /v1/{traces,metrics,logs}, protobuf or JSON, optionally gzip-compressed.
//! Answers as the OTLP specification says: 200 with partial_success, 400 with a Status for
//! an undecodable body, 413 when too large, 415 for other media types, 503 + Retry-After when
//! the backlog is full.

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;
use serde::Serialize;

use super::signal::{Logs, Metrics, OtlpSignal, Traces};
use super::{ExportError, Ingress};
use crate::config::Signal;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";
/// What a client should wait before retrying when the backlog is full.
const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Clone)]
struct HttpState {
    ingress: Arc<Ingress>,
    max_body: usize,
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Protobuf,
    Json,
}

pub fn router(ingress: Arc<Ingress>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(handle::<Traces>))
        .route("/v1/metrics", post(handle::<Metrics>))
        .route("/v1/logs", post(handle::<Logs>))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "unknown path; OTLP/HTTP serves /v1/traces, /v1/metrics and /v1/logs\n",
            )
        })
        // The compressed body is bounded here, the decompressed one in `decompress`.
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(HttpState { ingress, max_body })
}

async fn handle<S: OtlpSignal>(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signal = S::SIGNAL;
    let ingress = &state.ingress;
    if !ingress.accepts(signal) {
        ingress.metrics.request(signal, "http", "not_routed");
        let message = format!("no pipeline takes {}", signal.as_str());
        return (StatusCode::NOT_FOUND, message).into_response();
    }
    let format = match media_type(&headers) {
        Some(format) => format,
        None => {
            ingress
                .metrics
                .request(signal, "http", "unsupported_media_type");
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type must be {PROTOBUF} or {JSON}\n"),
            )
                .into_response();
        }
    };
    let body = match decompress(&headers, body, state.max_body) {
        Ok(body) => body,
        Err((status, message)) => {
            ingress.metrics.request(signal, "http", "bad_request");
            return error(format, status, message);
        }
    };
    // Admitted by size before it is decoded: decoding and cutting into records is where a
    // request's memory is (see `memory`).
    let memory = match ingress.admit(signal, body.len()).await {
        Ok(permit) => permit,
        Err(e) => return refused(signal, ingress, format, e),
    };
    let request: S::Request = match memory.run(|| decode::<S>(format, body)) {
        Ok(request) => request,
        Err(message) => {
            ingress.metrics.request(signal, "http", "bad_request");
            return error(
                format,
                StatusCode::BAD_REQUEST,
                format!("cannot decode the {} request: {message}", signal.as_str()),
            );
        }
    };
    match ingress
        .export(signal, "http", request, S::encode, memory)
        .await
    {
        Ok(accepted) => {
            ingress.metrics.request(signal, "http", "ok");
            let response = S::respond(&accepted);
            let body = match format {
                Format::Protobuf => response.encode_to_vec(),
                Format::Json => serde_json::to_vec(&response).expect("responses serialise"),
            };
            ([(header::CONTENT_TYPE, content_type(format))], body).into_response()
        }
        Err(e) => refused(signal, ingress, format, e),
    }
}

/// The answer to a request that was not taken, counted by outcome.
fn refused(signal: Signal, ingress: &Ingress, format: Format, e: ExportError) -> Response {
    match e {
        ExportError::Busy(_)
        | ExportError::ShuttingDown
        | ExportError::NotStored { .. }
        | ExportError::MemoryFull { .. } => {
            ingress.metrics.request(signal, "http", "unavailable");
            let mut response = error(format, StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
            response
        }
        ExportError::NotRouted(_) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
        ExportError::TooLarge { .. } | ExportError::OverMemoryLimit { .. } => {
            ingress.metrics.request(signal, "http", "too_large");
            error(format, StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
    }
}

fn media_type(headers: &HeaderMap) -> Option<Format> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    match essence.as_str() {
        PROTOBUF => Some(Format::Protobuf),
        JSON => Some(Format::Json),
        _ => None,
    }
}

fn content_type(format: Format) -> &'static str {
    match format {
        Format::Protobuf => PROTOBUF,
        Format::Json => JSON,
    }
}

/// Undoes a gzip Content-Encoding, refusing to inflate past `max_body` bytes.
fn decompress(
    headers: &HeaderMap,
    body: Bytes,
    max_body: usize,
) -> Result<Bytes, (StatusCode, String)> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(body),
        "gzip" => {
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(max_body as u64 + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("the gzip body is corrupt: {e}"),
                    )
                })?;
            if inflated.len() > max_body {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body inflates past max_request_body_size ({max_body} bytes)"),
                ));
            }
            Ok(inflated.into())
        }
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )),
    }
}

fn decode<S: OtlpSignal>(format: Format, body: Bytes) -> Result<S::Request, String> {
    match format {
        Format::Protobuf => S::decode(body).map_err(|e| e.to_string()),
        Format::Json => S::from_json(&body).map_err(|e| e.to_string()),
    }
}

/// An error response whose body is a `google.rpc.Status` in the request's format.
fn error(format: Format, status: StatusCode, message: String) -> Response {
    tracing::debug!(status = status.as_u16(), %message, "OTLP/HTTP request refused");
    let rpc = RpcStatus {
        code: grpc_code(status),
        message,
    };
    let body = match format {
        Format::Protobuf => rpc.encode_to_vec(),
        Format::Json => serde_json::to_vec(&rpc).expect("status serialises"),
    };
    (status, [(header::CONTENT_TYPE, content_type(format))], body).into_response()
}

fn grpc_code(status: StatusCode) -> i32 {
    match status {
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument as i32,
        StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::ResourceExhausted as i32,
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable as i32,
        _ => tonic::Code::Unknown as i32,
    }
}
