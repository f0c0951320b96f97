//! OTLP/gRPC: the trace, metrics and logs Export services, served by axum over HTTP/2 with
//! tonic's gRPC framing. A codec of our own turns an undecodable message into
//! INVALID_ARGUMENT (tonic's own says INTERNAL, which OTLP clients would retry forever).

use std::marker::PhantomData;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{Buf, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::signal::{Logs, Metrics, OtlpSignal, Traces};
use super::{ExportError, Ingress};
use crate::config::Signal;

#[derive(Clone)]
struct GrpcState {
    ingress: Arc<Ingress>,
    max_message: usize,
}

pub fn router(ingress: Arc<Ingress>, max_message: usize) -> Router {
    Router::new()
        .route(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            post(unary::<Traces>),
        )
        .route(
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            post(unary::<Metrics>),
        )
        .route(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            post(unary::<Logs>),
        )
        .fallback(|| async { status_only(tonic::Code::Unimplemented) })
        .with_state(GrpcState {
            ingress,
            max_message,
        })
}

/// A gRPC response carrying only a status (for methods nobody serves).
fn status_only(code: tonic::Code) -> Response {
    Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", (code as i32).to_string())
        .body(Body::empty())
        .expect("static response")
}

/// Runs one unary Export call through tonic's framing, compression and size limits.
async fn unary<S: OtlpSignal>(State(state): State<GrpcState>, request: Request) -> Response {
    let signal = S::SIGNAL;
    // The codec hands over the message's bytes undecoded, so that the request is admitted
    // into the memory budget by its size before it is decoded (see `memory`).
    let mut grpc = tonic::server::Grpc::new(OtlpCodec::<S::Response>::default())
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(state.max_message);
    let ingress = state.ingress.clone();
    let service = tower::service_fn(move |request: tonic::Request<Bytes>| {
        let ingress = ingress.clone();
        async move {
            let message = request.into_inner();
            let memory = match ingress.admit(signal, message.len()).await {
                Ok(permit) => permit,
                Err(e) => return Err(refused(signal, &ingress, e)),
            };
            let decoded = memory.run(|| S::decode(message));
            let request = match decoded {
                Ok(request) => request,
                Err(e) => {
                    ingress.metrics.request(signal, "grpc", "bad_request");
                    return Err(Status::invalid_argument(format!(
                        "cannot decode the OTLP request: {e}"
                    )));
                }
            };
            match ingress
                .export(signal, "grpc", request, S::encode, memory)
                .await
            {
                Ok(accepted) => {
                    ingress.metrics.request(signal, "grpc", "ok");
                    Ok(tonic::Response::new(S::respond(&accepted)))
                }
                Err(e) => Err(refused(signal, &ingress, e)),
            }
        }
    });
    if !state.ingress.accepts(signal) {
        state.ingress.metrics.request(signal, "grpc", "not_routed");
        return status_only(tonic::Code::Unimplemented);
    }
    let mut response = grpc.unary(service, request).await.map(Body::new);
    // tonic reports a message over the size limit as OUT_OF_RANGE; OTLP (like grpc-go) says
    // RESOURCE_EXHAUSTED. Our own handler never answers OUT_OF_RANGE, so this is that case.
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    if response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == out_of_range.as_bytes())
    {
        let exhausted = (tonic::Code::ResourceExhausted as i32).to_string();
        response.headers_mut().insert(
            "grpc-status",
            exhausted.parse().expect("a number is a valid header value"),
        );
    }
    response.into_response()
}

/// The status of a request that was not taken, counted by outcome.
fn refused(signal: Signal, ingress: &Ingress, e: ExportError) -> Status {
    match e {
        ExportError::NotRouted(_) => {
            ingress.metrics.request(signal, "grpc", "not_routed");
            Status::unimplemented(e.to_string())
        }
        ExportError::TooLarge { .. } | ExportError::OverMemoryLimit { .. } => {
            ingress.metrics.request(signal, "grpc", "too_large");
            Status::resource_exhausted(e.to_string())
        }
        ExportError::Busy(_)
        | ExportError::ShuttingDown
        | ExportError::NotStored { .. }
        | ExportError::MemoryFull { .. } => {
            ingress.metrics.request(signal, "grpc", "unavailable");
            Status::unavailable(e.to_string())
        }
    }
}

/// Encodes responses with protobuf; hands requests over as their undecoded bytes (decoded by
/// the handler once admitted, a decode error being INVALID_ARGUMENT: tonic's own codec says
/// INTERNAL, which OTLP clients would retry forever).
struct OtlpCodec<E>(PhantomData<E>);

impl<E> Default for OtlpCodec<E> {
    fn default() -> Self {
        OtlpCodec(PhantomData)
    }
}

impl<E> Codec for OtlpCodec<E>
where
    E: Message + Send + 'static,
{
    type Encode = E;
    type Decode = Bytes;
    type Encoder = OtlpEncoder<E>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        OtlpEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

struct OtlpEncoder<E>(PhantomData<E>);

impl<E: Message> Encoder for OtlpEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

/// One whole message, as its bytes.
struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
