"""Helpers for the OTLP ingress end-to-end tests and the OTLP part of `make demo`.

Three concerns, top-down:

* running the exporter: :func:`kinesis_exporter` and :class:`ExporterProcess` write a
  Collector-style config with free ports, start ``kinesis-exporter --config FILE --log-format
  json``, wait for ``/readyz`` and stop it with SIGTERM (a drained exit must be status 0);
* sending OTLP with the real OpenTelemetry Python SDK (gRPC and HTTP/protobuf exporters),
  recording each export result, plus raw HTTP and raw gRPC calls for the error paths;
* reading back: every shard of a stream, deaggregated by the official deaggregator, each user
  record decompressed (none/gzip/zstd) and decoded (otlp_proto/otlp_json) with the official
  OTLP Python classes. OTLP/JSON ids are hex; ``json_format.Parse`` would take them as base64
  without complaint, so :func:`otlp_json_to_proto` converts them first and checks their shape.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Iterable, NamedTuple

import grpc
import yaml
import zstandard
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from conftest import (
    KINESALITE_ENV,
    ChildProcess,
    child_env,
    UserRecord,
    deaggregate_python,
    read_all_records,
    wait_for,
)

SIGNALS = ("traces", "metrics", "logs")
HTTP_PATHS = {"traces": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs"}
REQUEST_TYPES = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}
RESPONSE_TYPES = {
    "traces": trace_service_pb2.ExportTraceServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
}
GRPC_METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
# The repeated top-level field of each request: one entry per resource.
RESOURCE_FIELD = {"traces": "resource_spans", "metrics": "resource_metrics", "logs": "resource_logs"}

EXPORTER_START_TIMEOUT = 30.0
ANY_LOCAL_PORT = "127.0.0.1:0"
HEX32 = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------- configuration


def kinesis_exporter(stream: str, endpoint: str, *, encoding: str = "otlp_proto",
                     compression: str = "none", partition_key: dict | None = None,
                     kpl: dict | None = None, **extra) -> dict:
    """The config of one `kinesis` exporter instance (``extra``: e.g. enqueue_timeout_seconds)."""
    config = {
        "aws": {"stream_name": stream, "region": "us-east-1", "kinesis_endpoint": endpoint},
        "kpl": {"flush_interval_seconds": 1, **(kpl or {})},
        "encoding": encoding,
        "compression": compression,
    }
    if partition_key:
        config["partition_key"] = partition_key
    config.update(extra)
    return config


def one_span_traces(spans: int) -> bytes:
    """An OTLP traces request (protobuf) of ``spans`` one-span traces of 33 bytes each, with
    random ids: the input that costs the exporter the most memory per byte."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for _ in range(spans):
        span = scope.spans.add()
        span.trace_id = os.urandom(16)
        span.span_id = os.urandom(8)
        span.name = "x"
    return request.SerializeToString()


def all_signals_to(exporter_id: str) -> dict:
    """``service.pipelines`` sending traces, metrics and logs to one exporter."""
    return {signal_: {"receivers": ["otlp"], "exporters": [exporter_id]} for signal_ in SIGNALS}


class ExporterProcess(ChildProcess):
    """One running ``kinesis-exporter`` with an OTLP ingress on free 127.0.0.1 ports.

    ``exporters`` maps exporter ids (``kinesis``, ``kinesis/traces``...) to their config;
    ``pipelines`` is ``service.pipelines`` (None: no pipelines key, the default routing);
    ``grpc``/``http`` add receiver options (``max_recv_msg_size_mib``, ``max_request_body_size``);
    ``otlp_options`` keys of ``receivers.otlp`` itself (``request_memory_limit_mib``).
    """

    def __init__(self, binary: Path, workdir: Path, exporters: dict, *, pipelines: dict | None = None,
                 grpc_options: dict | None = None, http_options: dict | None = None,
                 otlp_options: dict | None = None,
                 args: Iterable[str] = (), env: dict | None = None, name: str = "exporter"):
        super().__init__(name, workdir / f"{name}.log")
        self.binary = binary
        workdir.mkdir(parents=True, exist_ok=True)
        # Port 0 everywhere: the exporter binds, then logs the addresses it got (no race for a
        # port picked here and bound later).
        self.config = {
            "receivers": {"otlp": {"protocols": {
                "grpc": {"endpoint": ANY_LOCAL_PORT, **(grpc_options or {})},
                "http": {"endpoint": ANY_LOCAL_PORT, **(http_options or {})},
            }, **(otlp_options or {})}},
            "exporters": exporters,
            "service": {"telemetry": {"metrics": {"address": ANY_LOCAL_PORT}}},
        }
        self._bound: dict[str, int] | None = None
        if pipelines is not None:
            self.config["service"]["pipelines"] = pipelines
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.args = list(args)
        self.env = child_env(workdir, AWS_EC2_METADATA_DISABLED="true",
                             **(KINESALITE_ENV if env is None else env))

    # ---- addresses (what the exporter logged it bound)

    def bound_ports(self, timeout: float = EXPORTER_START_TIMEOUT) -> dict[str, int]:
        """{"grpc", "http", "telemetry"} -> port, from the exporter's "receiving OTLP" log line."""
        if self._bound is None:
            def logged():
                self.check_running()
                for line in self.logs(tail=10**9).splitlines():
                    if '"receiving OTLP' not in line:
                        continue
                    record = json.loads(line)
                    return {k: int(record[k].rsplit(":", 1)[1]) for k in ("grpc", "http", "telemetry")}
                return None
            try:
                self._bound = wait_for(logged, timeout, f"{self.name} to log its listen addresses")
            except TimeoutError as err:
                raise AssertionError(f"{err}; log:\n{self.logs()}") from None
        return self._bound

    @property
    def grpc_port(self) -> int:
        return self.bound_ports()["grpc"]

    @property
    def http_port(self) -> int:
        return self.bound_ports()["http"]

    @property
    def metrics_port(self) -> int:
        return self.bound_ports()["telemetry"]

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def http_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def telemetry_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    # ---- lifecycle

    def start(self) -> "ExporterProcess":
        self.spawn([str(self.binary), "--config", str(self.config_path), "--log-format", "json", *self.args],
                   env=self.env)
        return self

    def wait_ready(self, path: str = "/readyz", timeout: float = EXPORTER_START_TIMEOUT) -> "ExporterProcess":
        """Poll ``path`` on the telemetry address until 200, and both OTLP ports accept."""
        def ready():
            self.check_running()
            return (http_status(self.telemetry_url(path)) == 200
                    and port_accepts(self.grpc_port) and port_accepts(self.http_port))
        try:
            wait_for(ready, timeout, f"{self.name} {path} to answer 200")
        except TimeoutError as err:
            raise AssertionError(f"{err}; log:\n{self.logs()}") from None
        return self

    # ---- telemetry

    def metrics(self) -> "PromSamples":
        with urllib.request.urlopen(self.telemetry_url("/metrics"), timeout=10) as response:
            return PromSamples.parse(response.read().decode())

    def status(self, exporter: str = "kinesis") -> dict:
        """That exporter's entry of ``/status``: records_received, records_delivered,
        records_dropped (by reason), records_throttled, backlog_records, last_error..."""
        with urllib.request.urlopen(self.telemetry_url("/status"), timeout=10) as response:
            entries = json.load(response)["exporters"]
        return next(entry for entry in entries if entry["exporter"] == exporter)


def http_status(url: str, timeout: float = 2) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class PromSamples:
    """Prometheus text exposition, parsed into (name, labels) -> value."""

    LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
    LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

    def __init__(self, samples: list[tuple[str, dict, float]], text: str):
        self.samples, self.text = samples, text

    @classmethod
    def parse(cls, text: str) -> "PromSamples":
        samples = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = cls.LINE.match(line)
            if match:
                labels = dict(cls.LABEL.findall(match.group(3) or ""))
                samples.append((match.group(1), labels, float(match.group(4))))
        return cls(samples, text)

    def value(self, name: str, **labels: str) -> float | None:
        """Sum of the samples named ``name`` whose labels include ``labels``; None if none."""
        found = [v for n, l, v in self.samples if n == name and all(l.get(k) == w for k, w in labels.items())]
        return sum(found) if found else None


class HangingServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a stalled Kinesis)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hanging-kinesis", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections.append(conn)  # kept open, never read from or written to

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.connections:
            conn.close()
        self.sock.close()


# --------------------------------------------------------------------------- sending (SDK)


class RecordingExporter:
    """Wraps an SDK exporter and keeps every export result, so a test can assert SUCCESS."""

    def __init__(self, inner):
        self.inner = inner
        self.results: list = []

    def export(self, batch, *args, **kwargs):
        result = self.inner.export(batch, *args, **kwargs)
        self.results.append(result)
        return result

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, *args, **kwargs):
        return self.inner.shutdown(*args, **kwargs)

    def assert_all_succeeded(self, what: str) -> None:
        assert self.results, f"{what}: the SDK exported nothing"
        bad = [r for r in self.results if getattr(r, "name", str(r)) != "SUCCESS"]
        assert not bad, f"{what}: {len(bad)} of {len(self.results)} exports failed: {bad}"


def sdk_exporter(signal_: str, protocol: str, proc: ExporterProcess, gzip_: bool = False):
    """A real OTLP SDK exporter of ``signal_`` aimed at ``proc`` over ``protocol`` (grpc|http)."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        cls = {"traces": OTLPSpanExporter, "metrics": OTLPMetricExporter, "logs": OTLPLogExporter}[signal_]
        return cls(endpoint=f"http://{proc.grpc_target}", insecure=True, timeout=20,
                   compression=grpc.Compression.Gzip if gzip_ else grpc.Compression.NoCompression)
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        cls = {"traces": OTLPSpanExporter, "metrics": OTLPMetricExporter, "logs": OTLPLogExporter}[signal_]
        return cls(endpoint=proc.http_url(HTTP_PATHS[signal_]), timeout=20,
                   compression=Compression.Gzip if gzip_ else Compression.NoCompression)
    raise ValueError(protocol)


class SentSpan(NamedTuple):
    name: str
    trace_id: str  # lowercase hex
    span_id: str
    service: str


def send_traces(protocol: str, proc: ExporterProcess, plan: dict[str, list[list[str]]], *,
                gzip_: bool = False, batch_size: int = 512) -> list[SentSpan]:
    """Send spans through a TracerProvider + BatchSpanProcessor per resource.

    ``plan`` maps a service.name (one resource each) to traces, each trace a list of span
    names: the first is the root, the rest its children. Returns what was sent.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import set_span_in_context

    sent: list[SentSpan] = []
    for service, traces in plan.items():
        exporter = RecordingExporter(sdk_exporter("traces", protocol, proc, gzip_))
        provider = TracerProvider(resource=Resource.create({"service.name": service, "test.run": "otlp-e2e"}))
        provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=batch_size,
                                                       schedule_delay_millis=60_000))
        tracer = provider.get_tracer("e2e.tests", "1.0")
        for names in traces:
            with tracer.start_as_current_span(names[0]) as root:
                sent.append(_sent_span(names[0], root, service))
                for name in names[1:]:
                    with tracer.start_as_current_span(name, context=set_span_in_context(root),
                                                      attributes={"index": len(sent)}) as child:
                        sent.append(_sent_span(name, child, service))
        assert provider.force_flush(30_000), f"{service}: force_flush timed out"
        provider.shutdown()
        exporter.assert_all_succeeded(f"traces over {protocol} ({service})")
    return sent


def _sent_span(name, span, service) -> SentSpan:
    ctx = span.get_span_context()
    return SentSpan(name, f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", service)


def send_traces_sharing_trace_ids(protocol: str, proc: ExporterProcess, services: list[str],
                                  traces: int, spans_per_service: int, batch_size: int) -> list[SentSpan]:
    """Traces whose spans come from several resources: each trace's root is made by the first
    service, then every service adds ``spans_per_service`` children under it. Spans leave in
    batches of ``batch_size``, so one trace is spread over resources, batches and requests."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import set_span_in_context

    setups = []
    for service in services:
        exporter = RecordingExporter(sdk_exporter("traces", protocol, proc))
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=batch_size,
                                                       schedule_delay_millis=60_000))
        setups.append((service, exporter, provider, provider.get_tracer("e2e.traces")))
    sent: list[SentSpan] = []
    for t in range(traces):
        root_service, _, _, root_tracer = setups[0]
        root = root_tracer.start_span(f"trace{t}-root")
        sent.append(_sent_span(f"trace{t}-root", root, root_service))
        for i in range(spans_per_service):
            for service, _, _, tracer in setups:
                name = f"trace{t}-{service}-{i}"
                with tracer.start_as_current_span(name, context=set_span_in_context(root)) as child:
                    sent.append(_sent_span(name, child, service))
        root.end()
    for service, exporter, provider, _ in setups:
        assert provider.force_flush(30_000), f"{service}: force_flush timed out"
        provider.shutdown()
        exporter.assert_all_succeeded(f"traces over {protocol} ({service})")
    return sent


def send_metrics(protocol: str, proc: ExporterProcess, service: str, prefix: str,
                 gzip_: bool = False) -> Counter:
    """A counter, an up-down counter and a histogram with known attributes, exported once.

    Returns the expected data points: Counter of (metric name, attributes, value) where value
    is the sum (int) for sums and (count, sum) for histograms.
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource

    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader])
    meter = provider.get_meter("e2e.metrics", "1.0")
    requests_ = meter.create_counter(f"{prefix}.requests", unit="1")
    in_flight = meter.create_up_down_counter(f"{prefix}.in_flight")
    latency = meter.create_histogram(f"{prefix}.latency", unit="ms")
    expected: Counter = Counter()
    for route, hits in (("/a", 3), ("/b", 5), ("/c", 7)):
        for _ in range(hits):
            requests_.add(1, {"route": route, "code": 200})
        expected[(f"{prefix}.requests", (("code", 200), ("route", route)), hits)] += 1
        in_flight.add(hits, {"route": route})
        in_flight.add(-1, {"route": route})
        expected[(f"{prefix}.in_flight", (("route", route),), hits - 1)] += 1
        values = [hits * 10 + k for k in range(hits)]
        for value in values:
            latency.record(value, {"route": route})
        expected[(f"{prefix}.latency", (("route", route),), (len(values), float(sum(values))))] += 1
    data = reader.get_metrics_data()
    exporter = RecordingExporter(sdk_exporter("metrics", protocol, proc, gzip_))
    exporter.export(data, timeout_millis=20_000)
    exporter.shutdown()
    provider.shutdown()
    exporter.assert_all_succeeded(f"metrics over {protocol}")
    return expected


def send_logs(protocol: str, proc: ExporterProcess, service: str, bodies: list[str],
              gzip_: bool = False) -> None:
    """Emit one log record per body through a LoggerProvider + BatchLogRecordProcessor."""
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    exporter = RecordingExporter(sdk_exporter("logs", protocol, proc, gzip_))
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, schedule_delay_millis=60_000))
    logger = provider.get_logger("e2e.logs", "1.0")
    for i, body in enumerate(bodies):
        logger.emit(body=body, severity_number=SeverityNumber.INFO, severity_text="INFO",
                    attributes={"index": i})
    assert provider.force_flush(30_000), f"{service}: log force_flush timed out"
    provider.shutdown()
    exporter.assert_all_succeeded(f"logs over {protocol} ({service})")


# --------------------------------------------------------------------------- sending (raw)


def grpc_raw_call(proc: ExporterProcess, signal_: str, payload: bytes, timeout: float = 20,
                  compression=None) -> tuple[grpc.StatusCode, bytes | str]:
    """Send ``payload`` bytes as-is to the Export method; (status code, response or details)."""
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024),
               ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(proc.grpc_target, options=options) as channel:
        call = channel.unary_unary(GRPC_METHODS[signal_], request_serializer=None, response_deserializer=None)
        try:
            response = call(payload, timeout=timeout, compression=compression)
            return grpc.StatusCode.OK, response
        except grpc.RpcError as err:
            return err.code(), err.details() or ""


def minimal_trace_request(name: str = "raw-span", trace_id: bytes = b"\x01" * 16,
                          span_id: bytes = b"\x02" * 8, service: str = "raw-client",
                          spans: int = 1) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attribute = resource_spans.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", service
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "raw"
    for i in range(spans):
        span = scope_spans.spans.add()
        span.trace_id, span.name = trace_id, name if spans == 1 else f"{name}-{i}"
        span.span_id = span_id if spans == 1 else (int.from_bytes(span_id, "big") + i).to_bytes(8, "big")
        span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_100_000_000
    return request


# --------------------------------------------------------------------------- reading back


HEX_ID_FIELDS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}
ENUM_FIELDS = {"kind", "aggregationTemporality", "severityNumber", "code"}


def otlp_json_to_proto(text: bytes | str, message_type):
    """Parse OTLP/JSON into ``message_type``, checking what protobuf's Parse would let slide.

    OTLP/JSON differs from the canonical proto3 JSON mapping: ids are lowercase hex, not
    base64 (Parse would read hex as base64 garbage without error), and enums are integers.
    Keys must be lowerCamelCase (Parse accepts snake_case too, so that is checked here).
    """
    obj = json.loads(text)

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}"
                assert "_" not in key, f"{where}: OTLP/JSON keys are lowerCamelCase"
                if key in HEX_ID_FIELDS:
                    assert isinstance(value, str), f"{where}: id must be a hex string, got {value!r}"
                    size = HEX_ID_FIELDS[key]
                    assert value == "" or re.fullmatch(f"[0-9a-f]{{{2 * size}}}", value), \
                        f"{where}: id must be {2 * size} lowercase hex digits, got {value!r}"
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                elif key in ENUM_FIELDS and not isinstance(value, (dict, list)):
                    assert isinstance(value, int), f"{where}: enums are integers in OTLP/JSON, got {value!r}"
                else:
                    walk(value, where)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(obj, "$")
    return json_format.Parse(json.dumps(obj), message_type())


def decompress(data: bytes, compression: str) -> bytes:
    if compression == "none":
        return data
    if compression == "gzip":
        assert data[:2] == b"\x1f\x8b", f"gzip payload expected, starts with {data[:4].hex()}"
        return gzip.decompress(data)
    if compression == "zstd":
        assert data[:4] == b"\x28\xb5\x2f\xfd", f"zstd frame expected, starts with {data[:4].hex()}"
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            return reader.read()
    raise ValueError(compression)


class DecodedRecord(NamedTuple):
    """One user record read back from the stream, decoded."""

    shard_id: str
    partition_key: str
    request: object  # Export{Trace,Metrics,Logs}ServiceRequest
    resource: dict   # the one resource entry's attributes


def decode_user_record(user: UserRecord, signal_: str, encoding: str, compression: str) -> DecodedRecord:
    payload = decompress(user.data, compression)
    message_type = REQUEST_TYPES[signal_]
    if encoding == "otlp_proto":
        request = message_type.FromString(payload)
    elif encoding == "otlp_json":
        request = otlp_json_to_proto(payload, message_type)
    else:
        raise ValueError(encoding)
    entries = getattr(request, RESOURCE_FIELD[signal_])
    assert len(entries) == 1, (f"user record on {user.shard_id} (key {user.partition_key!r}) holds "
                               f"{len(entries)} resource entries, expected exactly 1")
    return DecodedRecord(user.shard_id, user.partition_key, request, attributes(entries[0].resource.attributes))


def read_signal(endpoint: str, stream: str, signal_: str, encoding: str = "otlp_proto",
                compression: str = "none") -> list[DecodedRecord]:
    """Every user record of ``stream`` (all shards, official deaggregator), decoded."""
    users = deaggregate_python(read_all_records(endpoint, stream))
    return [decode_user_record(user, signal_, encoding, compression) for user in users]


def any_value(value: common_pb2.AnyValue):
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return tuple(sorted((kv.key, any_value(kv.value)) for kv in value.kvlist_value.values))
    return getattr(value, kind)


def attributes(kvs) -> dict:
    return {kv.key: any_value(kv.value) for kv in kvs}


class GotSpan(NamedTuple):
    name: str
    trace_id: str
    span_id: str
    service: str
    shard_id: str
    partition_key: str


def spans_of(records: Iterable[DecodedRecord]) -> list[GotSpan]:
    out = []
    for record in records:
        for resource_spans in record.request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    out.append(GotSpan(span.name, span.trace_id.hex(), span.span_id.hex(),
                                       record.resource.get("service.name"), record.shard_id,
                                       record.partition_key))
    return out


def data_points_of(records: Iterable[DecodedRecord]) -> Counter:
    """Counter of (metric name, sorted attributes, value) as :func:`send_metrics` returns."""
    out: Counter = Counter()
    for record in records:
        for resource_metrics in record.request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        attrs = tuple(sorted(attributes(point.attributes).items()))
                        if kind in ("sum", "gauge"):
                            value = getattr(point, point.WhichOneof("value"))
                        elif kind == "histogram":
                            value = (point.count, point.sum)
                        else:
                            value = kind
                        out[(metric.name, attrs, value)] += 1
    return out


def log_bodies_of(records: Iterable[DecodedRecord]) -> Counter:
    out: Counter = Counter()
    for record in records:
        for resource_logs in record.request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for log in scope_logs.log_records:
                    out[any_value(log.body)] += 1
    return out


def assert_same(got: Counter, sent: Counter, what: str) -> None:
    """Multisets equal, with a readable difference."""
    if got == sent:
        return
    missing, extra = sent - got, got - sent
    lines = [f"{what}: {sum(missing.values())} missing, {sum(extra.values())} unexpected "
             f"(sent {sum(sent.values())}, read back {sum(got.values())})"]
    lines += [f"  missing {item!r} x{n}" for item, n in list(missing.items())[:10]]
    lines += [f"  extra   {item!r} x{n}" for item, n in list(extra.items())[:10]]
    raise AssertionError("\n".join(lines))


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data)
