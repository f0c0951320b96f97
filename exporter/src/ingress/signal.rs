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
use serde::de::DeserializeOwned;

use super::Accepted;
use crate::config::Signal;
use crate::encoding::{self, Encoded, RecordFormat};

pub(super) trait OtlpSignal: Send + Sync + 'static {
    type Request: Message + Default + Clone + DeserializeOwned + Send + 'static;
    type Response: Message + Serialize + Send + 'static;
    const SIGNAL: Signal;
    fn encode(request: Self::Request, format: &RecordFormat) -> Encoded;
    /// Decodes protobuf bytes, with every list sized before it is filled.
    fn decode(bytes: prost::bytes::Bytes) -> Result<Self::Request, prost::DecodeError>;
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

impl OtlpSignal for Traces {
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    const SIGNAL: Signal = Signal::Traces;

    fn encode(request: Self::Request, format: &RecordFormat) -> Encoded {
        encoding::traces(request, format)
    }

    fn decode(bytes: prost::bytes::Bytes) -> Result<Self::Request, prost::DecodeError> {
        encoding::decode::traces(bytes)
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

    fn respond(accepted: &Accepted) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: partial(accepted, |rejected, message| ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: message,
            }),
        }
    }
}
