"""End-to-end: OTLP in (gRPC and HTTP), Kinesis out, read back and decoded.

The real ``kinesis-exporter`` runs with a Collector-style config (free ports on 127.0.0.1)
and ships to kinesalite. Clients are the real OpenTelemetry Python SDK exporters (gRPC,
HTTP/protobuf), hand-built OTLP/JSON, and raw HTTP/gRPC calls for the error paths. Every
shard is read back, deaggregated by the official aws_kinesis_agg (cross-checked by a strict
parser), decompressed and decoded with the official OTLP Python classes. Asserted:

* exactly the spans (name, span id), data points (name, attributes, value) and log records
  (body) that were sent come back, for gRPC/HTTP x otlp_proto/otlp_json x none/gzip/zstd;
* each user record holds exactly one resource entry; OTLP/JSON has hex ids that round-trip;
* partition keys: trace id (all spans of a trace on one shard), random, resource attribute;
* routing of signals to exporters; a signal no pipeline takes is refused (404/UNIMPLEMENTED);
* errors: 400/INVALID_ARGUMENT, 404, 415, 413/RESOURCE_EXHAUSTED, with the exporter still
  serving afterwards;
* back-pressure against a Kinesis that never answers: 503 + Retry-After / UNAVAILABLE;
* /metrics counts what was received; /healthz and /readyz answer 200; SIGTERM exits 0.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import time
import uuid
from collections import Counter, defaultdict

import grpc
import pytest
import requests
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from conftest import create_stream, deaggregate_node, deaggregate_python, read_all_records, wait_for
from otlp_helpers import (
    HEX32,
    HTTP_PATHS,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    HangingServer,
    all_signals_to,
    assert_same,
    data_points_of,
    decode_user_record,
    grpc_raw_call,
    kinesis_exporter,
    log_bodies_of,
    minimal_trace_request,
    otlp_json_to_proto,
    read_signal,
    send_logs,
    send_metrics,
    send_traces,
    send_traces_sharing_trace_ids,
    spans_of,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def new_stream(kinesalite: str, prefix: str, shards: int = 1) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    create_stream(kinesalite, name, shards)
    return name


def post(proc, path: str, body: bytes, content_type: str = PROTOBUF, gzipped: bool = False,
         timeout: float = 20, **headers) -> requests.Response:
    headers = {"Content-Type": content_type, **headers}
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return requests.post(proc.http_url(path), data=body, headers=headers, timeout=timeout)


def rpc_status(response: requests.Response) -> status_pb2.Status:
    """The google.rpc.Status an OTLP/HTTP error body carries, in the request's content type."""
    content_type = response.headers.get("Content-Type", "")
    if content_type.startswith(JSON):
        return json_format.Parse(response.text, status_pb2.Status(), ignore_unknown_fields=True)
    assert content_type.startswith(PROTOBUF), f"error body has Content-Type {content_type!r}"
    return status_pb2.Status.FromString(response.content)


def length_delimited_field_1(data: bytes) -> bytes:
    """The first occurrence of field 1 (wire type 2) of a protobuf message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if field == 1:
                return data[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"wire type {wire}")
    raise ValueError("no field 1")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def resource_of(payload: bytes) -> dict:
    """Resource attributes of a protobuf Export*ServiceRequest of any signal.

    All three requests hold their resource entries in field 1 and each entry its Resource in
    field 1, so the signal of a record in a mixed stream can be told by its resource.
    """
    resource = resource_pb2.Resource.FromString(length_delimited_field_1(length_delimited_field_1(payload)))
    return {kv.key: kv.value.string_value for kv in resource.attributes}


def trace_plan(tag: str) -> dict[str, list[list[str]]]:
    """Two resources, three traces each of 1 root + 4 children, names unique per test."""
    return {
        f"{tag}-svc-{r}": [[f"{tag}-r{r}-t{t}-s{s}" for s in range(5)] for t in range(3)]
        for r in range(2)
    }


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("encoding", ["otlp_proto", "otlp_json"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_traces_roundtrip(kinesalite, exporter_process, protocol, encoding, compression):
    stream = new_stream(kinesalite, "otlp-traces", shards=2)
    proc = exporter_process(
        {"kinesis": kinesis_exporter(stream, kinesalite, encoding=encoding, compression=compression)},
        pipelines=all_signals_to("kinesis"))
    # Client-side gzip on half the cases: the ingress must take both.
    sent = send_traces(protocol, proc, trace_plan(f"{protocol}-{encoding}-{compression}"),
                       gzip_=compression == "gzip")
    proc.stop()  # SIGTERM drains everything buffered

    records = read_signal(kinesalite, stream, "traces", encoding, compression)
    got = spans_of(records)
    assert_same(Counter((s.name, s.trace_id, s.span_id, s.service) for s in got),
                Counter((s.name, s.trace_id, s.span_id, s.service) for s in sent), "spans")
    for record in records:
        trace_ids = {s.trace_id for s in spans_of([record])}
        assert trace_ids == {record.partition_key}, (
            f"trace_id partitioning: record keyed {record.partition_key!r} holds traces {trace_ids}")


SMALL_MATRIX = [
    ("grpc", "otlp_proto", "none"),
    ("http", "otlp_json", "gzip"),
    ("grpc", "otlp_json", "zstd"),
    ("http", "otlp_proto", "zstd"),
]


@pytest.mark.parametrize("protocol,encoding,compression", SMALL_MATRIX)
def test_metrics_and_logs_roundtrip(kinesalite, exporter_process, protocol, encoding, compression):
    metrics_stream = new_stream(kinesalite, "otlp-metrics", shards=2)
    logs_stream = new_stream(kinesalite, "otlp-logs", shards=2)
    settings = {"encoding": encoding, "compression": compression}
    proc = exporter_process(
        {"kinesis/metrics": kinesis_exporter(metrics_stream, kinesalite, **settings),
         "kinesis/logs": kinesis_exporter(logs_stream, kinesalite, **settings)},
        pipelines={"metrics": {"receivers": ["otlp"], "exporters": ["kinesis/metrics"]},
                   "logs": {"receivers": ["otlp"], "exporters": ["kinesis/logs"]}})
    tag = f"{protocol}-{encoding}-{compression}"
    expected_points = send_metrics(protocol, proc, f"{tag}-metrics-a", "e2e.a")
    expected_points += send_metrics(protocol, proc, f"{tag}-metrics-b", "e2e.b", gzip_=True)
    bodies = [f"{tag} log line {i}" for i in range(40)]
    send_logs(protocol, proc, f"{tag}-logs-a", bodies[:25])
    send_logs(protocol, proc, f"{tag}-logs-b", bodies[25:], gzip_=True)
    proc.stop()

    metric_records = read_signal(kinesalite, metrics_stream, "metrics", encoding, compression)
    assert_same(data_points_of(metric_records), expected_points, "metric data points")
    log_records = read_signal(kinesalite, logs_stream, "logs", encoding, compression)
    assert_same(log_bodies_of(log_records), Counter(bodies), "log records")
    for record in metric_records + log_records:
        assert HEX32.fullmatch(record.partition_key), (
            f"metrics/logs default to random keys of 32 hex digits, got {record.partition_key!r}")


@pytest.mark.parametrize("encoding", ["otlp_proto", "otlp_json"])
def test_http_json_ingress_keeps_hex_ids(kinesalite, exporter_process, encoding):
    """Hand-built OTLP/JSON (hex ids, int enums) over HTTP, plain and gzip-compressed."""
    stream = new_stream(kinesalite, "otlp-json")
    proc = exporter_process({"kinesis": kinesis_exporter(stream, kinesalite, encoding=encoding)},
                            pipelines=all_signals_to("kinesis"))
    sent = []
    for n, gzipped in enumerate([False, True]):
        trace_id = f"{0x5b8efff798038103d269b633813fc6 + n:032x}"
        spans = []
        for i in range(3):
            span_id = f"{0xeee19b7ec3c1b174 + 16 * n + i:016x}"
            spans.append({
                "traceId": trace_id, "spanId": span_id,
                "parentSpanId": "" if i == 0 else spans[0]["spanId"],
                "name": f"json-{n}-{i}", "kind": 2,
                "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
                "attributes": [{"key": "http.route", "value": {"stringValue": f"/r/{i}"}}],
                "status": {"code": 1},
            })
            sent.append((f"json-{n}-{i}", trace_id, span_id, spans[0]["spanId"] if i else ""))
        body = {"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-client"}}]},
            "scopeSpans": [{"scope": {"name": "hand-built"}, "spans": spans}],
        }]}
        response = post(proc, "/v1/traces", json.dumps(body).encode(), JSON, gzipped=gzipped)
        assert response.status_code == 200, f"gzip={gzipped}: {response.status_code} {response.text[:500]}"
        assert response.headers.get("Content-Type", "").startswith(JSON), response.headers
        reply = otlp_json_to_proto(response.content or b"{}", RESPONSE_TYPES["traces"])
        assert reply.partial_success.rejected_spans == 0, reply
    proc.stop()

    records = read_signal(kinesalite, stream, "traces", encoding)
    got = [(span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex())
           for record in records for rs in record.request.resource_spans
           for ss in rs.scope_spans for span in ss.spans]
    assert Counter(got) == Counter(sent)


# --------------------------------------------------------------------------- partition keys


def test_trace_id_keys_keep_each_trace_on_one_shard(kinesalite, exporter_process):
    stream = new_stream(kinesalite, "otlp-traceid", shards=4)
    proc = exporter_process({"kinesis": kinesis_exporter(stream, kinesalite,
                                                         partition_key={"traces": "trace_id"})},
                            pipelines=all_signals_to("kinesis"))
    services = ["frontend", "cart", "payments"]
    sent = send_traces_sharing_trace_ids("grpc", proc, services, traces=12, spans_per_service=6, batch_size=17)
    sent += send_traces_sharing_trace_ids("http", proc, services, traces=12, spans_per_service=6, batch_size=23)
    proc.stop()

    # The Node deaggregator reads these too (checksums verified).
    kinesis_records = read_all_records(kinesalite, stream)
    assert len(deaggregate_node(kinesis_records)) > 0
    records = read_signal(kinesalite, stream, "traces")
    got = spans_of(records)
    assert_same(Counter((s.name, s.trace_id, s.span_id) for s in got),
                Counter((s.name, s.trace_id, s.span_id) for s in sent), "spans")
    shards_of_trace = defaultdict(set)
    for span in got:
        assert span.partition_key == span.trace_id, (
            f"span {span.name} of trace {span.trace_id} is in a record keyed {span.partition_key!r}")
        shards_of_trace[span.trace_id].add(span.shard_id)
    split = {t: s for t, s in shards_of_trace.items() if len(s) > 1}
    assert not split, f"traces spread over several shards: {split}"
    assert len({s for shards in shards_of_trace.values() for s in shards}) > 1, \
        "24 traces should not all land on one of 4 shards"


def test_partition_key_by_resource_attribute(kinesalite, exporter_process):
    stream = new_stream(kinesalite, "otlp-attrkey", shards=4)
    proc = exporter_process(
        {"kinesis": kinesis_exporter(stream, kinesalite,
                                     partition_key={"traces": "service.name", "logs": "service.name"})},
        pipelines={"traces": {"receivers": ["otlp"], "exporters": ["kinesis"]},
                   "logs": {"receivers": ["otlp"], "exporters": ["kinesis"]}})
    send_traces("http", proc, {"svc-alpha": [["a-0", "a-1"]], "svc-beta": [["b-0", "b-1", "b-2"]]})
    proc.stop()
    records = read_signal(kinesalite, stream, "traces")
    assert {s.name for s in spans_of(records)} == {"a-0", "a-1", "b-0", "b-1", "b-2"}
    for record in records:
        assert record.partition_key == record.resource["service.name"], (
            f"record keyed {record.partition_key!r} holds resource {record.resource}")


# --------------------------------------------------------------------------- routing


def test_signals_go_to_their_pipelines_and_others_are_refused(kinesalite, exporter_process):
    traces_stream = new_stream(kinesalite, "otlp-route-traces")
    logs_stream = new_stream(kinesalite, "otlp-route-logs")
    proc = exporter_process(
        {"kinesis/traces": kinesis_exporter(traces_stream, kinesalite),
         "kinesis/logs": kinesis_exporter(logs_stream, kinesalite)},
        pipelines={"traces": {"receivers": ["otlp"], "exporters": ["kinesis/traces"]},
                   "logs": {"receivers": ["otlp"], "exporters": ["kinesis/logs"]}})
    sent = send_traces("grpc", proc, {"route-traces-grpc": [["rt-g-0", "rt-g-1"]]})
    sent += send_traces("http", proc, {"route-traces-http": [["rt-h-0", "rt-h-1"]]})
    send_logs("grpc", proc, "route-logs-grpc", ["log via grpc"])
    send_logs("http", proc, "route-logs-http", ["log via http"])

    metrics_request = REQUEST_TYPES["metrics"]()
    metrics_request.resource_metrics.add().scope_metrics.add().metrics.add().name = "refused"
    response = post(proc, HTTP_PATHS["metrics"], metrics_request.SerializeToString())
    assert response.status_code == 404, f"metrics over HTTP with no metrics pipeline: {response.status_code}"
    code, details = grpc_raw_call(proc, "metrics", metrics_request.SerializeToString())
    assert code == grpc.StatusCode.UNIMPLEMENTED, f"metrics over gRPC with no metrics pipeline: {code} {details}"
    proc.stop()

    trace_records = read_signal(kinesalite, traces_stream, "traces")
    assert {r.resource["service.name"] for r in trace_records} == {"route-traces-grpc", "route-traces-http"}
    assert Counter(s.span_id for s in spans_of(trace_records)) == Counter(s.span_id for s in sent)
    log_records = read_signal(kinesalite, logs_stream, "logs")
    assert {r.resource["service.name"] for r in log_records} == {"route-logs-grpc", "route-logs-http"}
    assert log_bodies_of(log_records) == Counter(["log via grpc", "log via http"])


def test_without_pipelines_one_exporter_takes_all_signals(kinesalite, exporter_process):
    """``service`` carries only telemetry: the single ``kinesis`` exporter gets every signal."""
    stream = new_stream(kinesalite, "otlp-default")
    proc = exporter_process({"kinesis": kinesis_exporter(stream, kinesalite)}, pipelines=None)
    sent = send_traces("http", proc, {"default-traces": [["d-0", "d-1"]]})
    send_metrics("grpc", proc, "default-metrics", "default")
    send_logs("http", proc, "default-logs", ["default routing"])
    proc.stop()
    users = deaggregate_python(read_all_records(kinesalite, stream))
    by_service = defaultdict(list)
    for user in users:
        by_service[resource_of(user.data).get("service.name")].append(user)
    assert set(by_service) == {"default-traces", "default-metrics", "default-logs"}
    spans = spans_of(decode_user_record(u, "traces", "otlp_proto", "none") for u in by_service["default-traces"])
    assert Counter(s.span_id for s in spans) == Counter(s.span_id for s in sent)
    logs = [decode_user_record(u, "logs", "otlp_proto", "none") for u in by_service["default-logs"]]
    assert log_bodies_of(logs) == Counter(["default routing"])


# --------------------------------------------------------------------------- bad input


def test_http_bad_input(kinesalite, exporter_process):
    stream = new_stream(kinesalite, "otlp-bad-http")
    limit = 1000
    proc = exporter_process({"kinesis": kinesis_exporter(stream, kinesalite)},
                            pipelines=all_signals_to("kinesis"),
                            http_options={"max_request_body_size": limit})
    valid = minimal_trace_request("after-bad-input").SerializeToString()
    assert len(valid) < limit

    truncated = b"\x0a\x05ab"  # field 1, length 5, only 2 bytes follow
    response = post(proc, "/v1/traces", truncated)
    assert response.status_code == 400, f"undecodable protobuf: {response.status_code} {response.text[:300]}"
    assert rpc_status(response).message, "400 body should be a google.rpc.Status saying what is wrong"
    response = post(proc, "/v1/traces", valid)
    assert response.status_code == 200, f"valid request after a bad one: {response.status_code}"
    RESPONSE_TYPES["traces"].FromString(response.content)

    for bad_json in (b"{not json", b'{"resourceSpans": 5}', b'{"resourceSpans": [{"scopeSpans": '
                                                             b'[{"spans": [{"traceId": "zz"}]}]}]}'):
        response = post(proc, "/v1/traces", bad_json, JSON)
        assert response.status_code == 400, f"bad JSON {bad_json!r}: {response.status_code} {response.text[:300]}"
        assert response.headers.get("Content-Type", "").startswith(JSON), response.headers
        assert rpc_status(response).message

    response = post(proc, "/v1/nonsense", valid)
    assert response.status_code == 404, f"unknown path: {response.status_code}"
    response = post(proc, "/v1/traces", valid, "text/plain")
    assert response.status_code == 415, f"text/plain: {response.status_code}"

    response = post(proc, "/v1/traces", minimal_trace_request(spans=40).SerializeToString())
    assert response.status_code == 413, f"body over {limit} bytes: {response.status_code}"
    chunked = iter([b"\x0a" + b"\x00" * 600, b"\x00" * 600])  # no Content-Length: chunked
    response = requests.post(proc.http_url("/v1/traces"), data=chunked,
                             headers={"Content-Type": PROTOBUF}, timeout=20)
    assert response.status_code == 413, f"chunked body over {limit} bytes: {response.status_code}"
    bomb = minimal_trace_request(name="z" * 50_000).SerializeToString()
    assert len(gzip.compress(bomb)) < limit < len(bomb)
    response = post(proc, "/v1/traces", bomb, gzipped=True)
    assert response.status_code == 413, (f"gzip body of {len(gzip.compress(bomb))} bytes inflating to "
                                         f"{len(bomb)} (limit {limit}): {response.status_code}")

    response = post(proc, "/v1/traces", valid, gzipped=True)
    assert response.status_code == 200, f"valid gzip request at the end: {response.status_code}"
    proc.stop()
    names = [s.name for s in spans_of(read_signal(kinesalite, stream, "traces"))]
    assert Counter(names) == Counter({"after-bad-input": 2}), names


def test_grpc_bad_input(kinesalite, exporter_process):
    stream = new_stream(kinesalite, "otlp-bad-grpc")
    proc = exporter_process({"kinesis": kinesis_exporter(stream, kinesalite)},
                            pipelines=all_signals_to("kinesis"),
                            grpc_options={"max_recv_msg_size_mib": 1})
    code, details = grpc_raw_call(proc, "traces", b"\x0a\x05ab")
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"undecodable bytes: {code} {details}"

    big = minimal_trace_request(name="x" * (2 * 1024 * 1024)).SerializeToString()
    code, details = grpc_raw_call(proc, "traces", big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"2 MiB over a 1 MiB limit: {code} {details}"

    code, reply = grpc_raw_call(proc, "traces", minimal_trace_request("grpc-ok").SerializeToString())
    assert code == grpc.StatusCode.OK, f"valid request after bad ones: {code} {reply}"
    RESPONSE_TYPES["traces"].FromString(reply)
    code, reply = grpc_raw_call(proc, "traces", minimal_trace_request("grpc-gzip", span_id=b"\x03" * 8)
                                .SerializeToString(), compression=grpc.Compression.Gzip)
    assert code == grpc.StatusCode.OK, f"gzip-compressed gRPC request: {code} {reply}"
    proc.stop()
    names = Counter(s.name for s in spans_of(read_signal(kinesalite, stream, "traces")))
    assert names == Counter(["grpc-ok", "grpc-gzip"])


# --------------------------------------------------------------------------- back-pressure


def test_back_pressure_when_kinesis_never_answers(exporter_process):
    """A full backlog answers 503 + Retry-After (HTTP) and UNAVAILABLE (gRPC), never 200."""
    kinesis = HangingServer()
    try:
        proc = exporter_process(
            {"kinesis": kinesis_exporter(
                "stalled", kinesis.endpoint, enqueue_timeout_seconds=1,
                kpl={"backlog_count": 1, "max_connections": 1, "batch_count": 1, "aggregate_batch_count": 1,
                     "request_timeout_seconds": 600, "flush_interval_seconds": 1})},
            pipelines=all_signals_to("kinesis"), args=["--shutdown-timeout", "2"],
            ready_path="/healthz")  # /readyz may wait for the shard map, which never comes
        statuses = []
        rejected = None
        for i in range(200):
            request = minimal_trace_request(f"bp-{i}", trace_id=(i + 1).to_bytes(16, "big"))
            response = post(proc, "/v1/traces", request.SerializeToString(), timeout=30)
            statuses.append(response.status_code)
            assert response.status_code in (200, 503), \
                f"request {i}: {response.status_code} {response.text[:300]} (statuses so far {statuses})"
            if response.status_code == 503:
                rejected = response
                break
        assert rejected is not None, f"no 503 after {len(statuses)} requests into a stalled Kinesis"
        retry_after = rejected.headers.get("Retry-After")
        assert retry_after is not None and retry_after.strip().isdigit(), \
            f"503 needs Retry-After in seconds, got {retry_after!r}"

        code, details = grpc_raw_call(proc, "traces",
                                      minimal_trace_request("bp-grpc", trace_id=b"\xee" * 16).SerializeToString(),
                                      timeout=30)
        assert code == grpc.StatusCode.UNAVAILABLE, f"gRPC into a full backlog: {code} {details}"
        assert proc.check_running() is None
        proc.stop()
    finally:
        kinesis.close()


def test_sigterm_is_bounded_by_stalled_clients_and_flushes_what_was_acknowledged(kinesalite, exporter_process):
    """A client that never finishes its request (half-sent HTTP headers, a gRPC connection
    that sent only its preface) must not hold shutdown: /readyz fails at once, the exporter
    flushes what it acknowledged and exits 0 within --shutdown-timeout."""
    stream = new_stream(kinesalite, "otlp-stalled-shutdown")
    proc = exporter_process({"kinesis": kinesis_exporter(stream, kinesalite, kpl={"flush_interval_seconds": 60})},
                            pipelines=all_signals_to("kinesis"), args=["--shutdown-timeout", "8",
                                                                       "--drain-timeout", "2"])
    sent = send_traces("http", proc, {"acked-before-term": [["a", "b"], ["c"]]})
    # Each stalled connection first gets an answer from the server, so it is surely accepted
    # (not still in the listen queue) when SIGTERM comes.
    http = socket.create_connection(("127.0.0.1", proc.http_port), timeout=5)
    http.sendall(b"GET /v1/unknown HTTP/1.1\r\nHost: x\r\n\r\n")
    assert http.recv(64).startswith(b"HTTP/1.1 404"), "the HTTP connection is served"
    http.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Len")
    grpc_ = socket.create_connection(("127.0.0.1", proc.grpc_port), timeout=5)
    grpc_.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert len(grpc_.recv(9)) > 0, "the server's HTTP/2 SETTINGS: the gRPC connection is served"
    stalled = [http, grpc_]
    try:
        started = time.monotonic()
        os.killpg(proc.proc.pid, signal.SIGTERM)
        wait_for(lambda: requests.get(proc.telemetry_url("/readyz"), timeout=2).status_code == 503,
                 5, "/readyz to fail once SIGTERM arrived")
        returncode = proc.proc.wait(timeout=20)
        took = time.monotonic() - started
    finally:
        for sock in stalled:
            sock.close()
    assert returncode == 0, proc.logs()
    assert took < 8, f"exit took {took:.1f}s, more than --shutdown-timeout 8"
    assert "closing their connections" in proc.logs(), proc.logs()
    got = spans_of(read_signal(kinesalite, stream, "traces"))
    assert sorted(s.span_id for s in got) == sorted(s.span_id for s in sent)


# --------------------------------------------------------------------------- telemetry


def test_metrics_and_health_endpoints(kinesalite, exporter_process):
    stream = new_stream(kinesalite, "otlp-telemetry")
    proc = exporter_process({"kinesis": kinesis_exporter(stream, kinesalite)},
                            pipelines=all_signals_to("kinesis"))
    for path in ("/healthz", "/readyz"):
        assert requests.get(proc.telemetry_url(path), timeout=5).status_code == 200, path

    grpc_spans = send_traces("grpc", proc, {"tele-grpc": [["g-0", "g-1", "g-2"]]})
    http_spans = send_traces("http", proc, {"tele-http": [["h-0", "h-1"], ["h-2"]]})
    send_logs("http", proc, "tele-logs", [f"line {i}" for i in range(5)])
    expected_points = send_metrics("grpc", proc, "tele-metrics", "tele")

    metric = "kinesis_exporter_otlp_items_received_total"
    expected = {("traces", "grpc"): len(grpc_spans), ("traces", "http"): len(http_spans),
                ("logs", "http"): 5, ("metrics", "grpc"): sum(expected_points.values())}

    def counts_match():
        samples = proc.metrics()
        return all(samples.value(metric, signal=s, protocol=p) == n for (s, p), n in expected.items())
    try:
        wait_for(counts_match, 10, f"{metric} to count what was sent", interval=0.2)
    except TimeoutError:
        samples = proc.metrics()
        got = {k: samples.value(metric, signal=k[0], protocol=k[1]) for k in expected}
        raise AssertionError(f"{metric}: expected {expected}, got {got}\n"
                             f"{[line for line in samples.text.splitlines() if 'otlp' in line][:40]}") from None

    # Every user record in the stream has been counted as delivered, and nothing else.
    delivered = "kinesis_exporter_user_records_delivered_total"

    def delivered_matches_stream():
        in_stream = len(deaggregate_python(read_all_records(kinesalite, stream)))
        return in_stream >= 5 and proc.metrics().value(delivered, exporter="kinesis") == in_stream
    wait_for(delivered_matches_stream, 20,
             f'{delivered}{{exporter="kinesis"}} to equal the user records in the stream', interval=0.2)
    response = requests.get(proc.telemetry_url("/metrics"), timeout=5)
    # OpenMetrics text (what prometheus-client writes, ending in "# EOF"); Prometheus scrapes it.
    assert response.headers.get("Content-Type", "").startswith("application/openmetrics-text"), response.headers
    assert response.text.rstrip().endswith("# EOF")
    proc.stop()
