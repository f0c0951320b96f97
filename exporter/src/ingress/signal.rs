//! The three OTLP export services described once, for both the gRPC and the HTTP server:
//! request and response types, how a request becomes records, and the partial_success answer.

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;

use std::sync::Arc;

use super::Accepted;
use crate::config::{Encoding, Signal};
use crate::encoding::raw::RawResource;
use crate::encoding::{self, Encoded, RecordFormat};

pub(super) trait OtlpSignal: Send + Sync + 'static {
    type Request: Clone + Send + 'static;
    type Response: Message + Serialize + Send + 'static;
    const SIGNAL: Signal;
    fn encode(request: Self::Request, format: &RecordFormat) -> Encoded;
    /// Decodes protobuf bytes, with every list sized before it is filled.
    fn decode(bytes: prost::bytes::Bytes) -> Result<Self::Request, prost::DecodeError>;
    /// Decodes OTLP/JSON.
    fn from_json(bytes: &[u8]) -> Result<Self::Request, serde_json::Error>;
    fn respond(accepted: &Accepted) -> Self::Response;
}

pub(super) struct Traces;
pub(super) struct Metrics;
pub(super) struct Logs;

/// The partial_success field: set only when something was rejected.
fn partial<P>(accepted: &Accepted, make: impl Fn(i64, String) -> P) -> Option<P> {
    (accepted.rejected > 0).then(|| {
        make(
            accepted.rejected as i64,
            accepted.message.clone().unwrap_or_default(),
        )
    })
}

/// A traces request: from protobuf, kept as its checked bytes, so that `otlp_proto` records
/// are cut from them (encoding::raw); from JSON, decoded.
#[derive(Clone)]
pub(super) enum TracesRequest {
    Raw {
        bytes: prost::bytes::Bytes,
        resources: Arc<Vec<RawResource>>,
    },
    Decoded(ExportTraceServiceRequest),
}

impl OtlpSignal for Traces {
    type Request = TracesRequest;
    type Response = ExportTraceServiceResponse;
    const SIGNAL: Signal = Signal::Traces;

    fn encode(request: Self::Request, format: &RecordFormat) -> Encoded {
        match request {
            TracesRequest::Raw { resources, .. } if format.encoding == Encoding::OtlpProto => {
                encoding::raw::traces(&resources, format)
            }
            TracesRequest::Raw { bytes, .. } => encoding::traces(
                encoding::decode::traces(bytes).expect("checked when received"),
                format,
            ),
            TracesRequest::Decoded(request) => encoding::traces(request, format),
        }
    }

    fn decode(bytes: prost::bytes::Bytes) -> Result<Self::Request, prost::DecodeError> {
        let resources = encoding::raw::split_traces(bytes.clone())?;
        Ok(TracesRequest::Raw {
            bytes,
            resources: Arc::new(resources),
        })
    }

    fn from_json(bytes: &[u8]) -> Result<Self::Request, serde_json::Error> {
        serde_json::from_slice(bytes).map(TracesRequest::Decoded)
    }

    fn respond(accepted: &Accepted) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: partial(accepted, |rejected, message| ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: message,
            }),
        }
    }
}

impl OtlpSignal for Metrics {
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    const SIGNAL: Signal = Signal::Metrics;

    fn encode(request: Self::Request, format: &RecordFormat) -> Encoded {
        encoding::metrics(request, format)
    }

    fn decode(bytes: prost::bytes::Bytes) -> Result<Self::Request, prost::DecodeError> {
        encoding::decode::metrics(bytes)
    }

    fn from_json(bytes: &[u8]) -> Result<Self::Request, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    fn respond(accepted: &Accepted) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: partial(accepted, |rejected, message| ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message: message,
            }),
        }
    }
}

impl OtlpSignal for Logs {
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    const SIGNAL: Signal = Signal::Logs;

    fn encode(request: Self::Request, format: &RecordFormat) -> Encoded {
        encoding::logs(request, format)
    }

    fn decode(bytes: prost::bytes::Bytes) -> Result<Self::Request, prost::DecodeError> {
        encoding::decode::logs(bytes)
    }

    fn from_json(bytes: &[u8]) -> Result<Self::Request, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    fn respond(accepted: &Accepted) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: partial(accepted, |rejected, message| ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: message,
            }),
        }
    }
}
