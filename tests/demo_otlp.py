#!/usr/bin/env python3
"""`make demo`, OTLP part: traces, metrics and logs in over gRPC and HTTP, out in Kinesis.

Starts `kinesis-exporter` with a sample Collector-style config: three named exporters
(kinesis/traces, kinesis/metrics, kinesis/logs), each with its own kinesalite stream, and
pipelines routing each signal to its exporter. Sends sample telemetry with the real
OpenTelemetry Python SDK (half over gRPC, half over HTTP/protobuf), SIGTERMs the exporter
(which drains), reads every shard back, deaggregates with the official PyPI aws_kinesis_agg,
decodes the OTLP payloads and prints a summary per stream and per shard.

Called by tests/demo.py after the `put` demo, on the same kinesalite; also runs on its own
(starting its own kinesalite): tests/.venv/bin/python tests/demo_otlp.py
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import (  # noqa: E402
    built_binary,
    create_stream,
    deaggregate_python,
    read_all_records,
    shard_ranges,
)
from otlp_helpers import (  # noqa: E402
    ExporterProcess,
    data_points_of,
    decode_user_record,
    kinesis_exporter,
    log_bodies_of,
    send_logs,
    send_metrics,
    send_traces,
    spans_of,
)

STREAMS = {"traces": ("demo-otlp-traces", 4), "metrics": ("demo-otlp-metrics", 2), "logs": ("demo-otlp-logs", 2)}
TRACES_PER_SERVICE = 40
SPANS_PER_TRACE = 6
LOG_LINES = 300


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def sample_config(endpoint: str) -> tuple[dict, dict]:
    """Exporters and pipelines: each signal to its own stream; traces keyed by trace id."""
    exporters = {
        "kinesis/traces": kinesis_exporter(STREAMS["traces"][0], endpoint, encoding="otlp_proto",
                                           compression="zstd", partition_key={"traces": "trace_id"}),
        "kinesis/metrics": kinesis_exporter(STREAMS["metrics"][0], endpoint, encoding="otlp_json",
                                            compression="gzip"),
        "kinesis/logs": kinesis_exporter(STREAMS["logs"][0], endpoint, encoding="otlp_proto",
                                         compression="gzip", partition_key={"logs": "service.name"}),
    }
    pipelines = {signal_: {"receivers": ["otlp"], "exporters": [f"kinesis/{signal_}"]} for signal_ in STREAMS}
    return exporters, pipelines


def trace_plan(service: str) -> dict[str, list[list[str]]]:
    operations = ["GET /cart", "SELECT cart", "GET /price", "redis GET", "POST /checkout", "publish order"]
    return {service: [[f"{service} {operations[s % len(operations)]} #{t}" for s in range(SPANS_PER_TRACE)]
                      for t in range(TRACES_PER_SERVICE)]}


def run_otlp_demo(binary: Path, endpoint: str, workdir: Path) -> bool:
    """The OTLP demo against kinesalite at ``endpoint``; True when everything came back."""
    for signal_, (stream, shards) in STREAMS.items():
        step(f"creating stream {stream} with {shards} shards (for {signal_})")
        create_stream(endpoint, stream, shards)

    exporters, pipelines = sample_config(endpoint)
    proc = ExporterProcess(binary, workdir, exporters, pipelines=pipelines, name="otlp-demo-exporter")
    step(f"starting kinesis-exporter (config {proc.config_path})")
    proc.start()
    try:
        proc.wait_ready()
        print(f"    OTLP gRPC on {proc.grpc_target}, OTLP HTTP on 127.0.0.1:{proc.http_port}, "
              f"/metrics on 127.0.0.1:{proc.metrics_port}")

        started = time.monotonic()
        step(f"sending traces with the OpenTelemetry SDK: {2 * TRACES_PER_SERVICE} traces of "
             f"{SPANS_PER_TRACE} spans, half over gRPC, half over HTTP")
        sent_spans = send_traces("grpc", proc, trace_plan("checkout"))
        sent_spans += send_traces("http", proc, trace_plan("cart"), gzip_=True)

        step("sending metrics (counter, up-down counter, histogram) over gRPC and HTTP")
        sent_points = send_metrics("grpc", proc, "checkout", "shop")
        sent_points += send_metrics("http", proc, "cart", "cart")

        step(f"sending {LOG_LINES} log records over gRPC and HTTP")
        bodies = [f"order {i} {'accepted' if i % 7 else 'rejected: card declined'}" for i in range(LOG_LINES)]
        send_logs("grpc", proc, "checkout", bodies[: LOG_LINES // 2])
        send_logs("http", proc, "cart", bodies[LOG_LINES // 2:])
        print(f"    sent in {time.monotonic() - started:.1f}s")

        samples = proc.metrics()
        received = {(s, p): int(samples.value("kinesis_exporter_otlp_items_received_total", signal=s, protocol=p) or 0)
                    for s in STREAMS for p in ("grpc", "http")}
        print("    exporter's /metrics, items received: "
              + ", ".join(f"{s}/{p} {n}" for (s, p), n in received.items()))

        step("stopping the exporter with SIGTERM (it flushes what it holds)")
        proc.stop()
    except BaseException:
        proc.kill()
        print(f"    exporter log ({proc.log_path}):\n{proc.logs()}", file=sys.stderr)
        raise

    ok = True
    print()
    print("OTLP summary")
    sent = {"traces": Counter((s.name, s.span_id) for s in sent_spans), "metrics": sent_points,
            "logs": Counter(bodies)}
    units = {"traces": "spans", "metrics": "data points", "logs": "log records"}
    for signal_, (stream, _) in STREAMS.items():
        settings = exporters[f"kinesis/{signal_}"]
        kinesis_records = read_all_records(endpoint, stream)
        users = deaggregate_python(kinesis_records)
        decoded = [decode_user_record(u, signal_, settings["encoding"], settings["compression"]) for u in users]
        if signal_ == "traces":
            got = Counter((s.name, s.span_id) for s in spans_of(decoded))
        elif signal_ == "metrics":
            got = data_points_of(decoded)
        else:
            got = log_bodies_of(decoded)
        per_record_items = Counter()
        for record, user in zip(decoded, users):
            items = (len(spans_of([record])) if signal_ == "traces" else
                     sum(data_points_of([record]).values()) if signal_ == "metrics" else
                     sum(log_bodies_of([record]).values()))
            per_record_items[user.shard_id] += items
        ratio = len(users) / len(kinesis_records) if kinesis_records else 0.0
        print(f"  {signal_} -> {stream} ({settings['encoding']}, {settings['compression']})")
        print(f"    Kinesis records {len(kinesis_records)}, user records {len(users)}, "
              f"aggregation ratio {ratio:.1f}, {units[signal_]} decoded {sum(got.values())} "
              f"of {sum(sent[signal_].values())} sent")
        per_shard_kinesis = Counter(r.shard_id for r in kinesis_records)
        per_shard_users = Counter(u.shard_id for u in users)
        print(f"    {'shard':<22} {'Kinesis records':>15} {'user records':>13} {units[signal_]:>12}")
        for shard_id in sorted(shard_ranges(endpoint, stream)):
            print(f"    {shard_id:<22} {per_shard_kinesis[shard_id]:>15} {per_shard_users[shard_id]:>13} "
                  f"{per_record_items[shard_id]:>12}")
        if got != sent[signal_]:
            ok = False
            missing, extra = sent[signal_] - got, got - sent[signal_]
            print(f"    FAILED: {sum(missing.values())} {units[signal_]} missing, {sum(extra.values())} unexpected")
    print()
    if ok:
        print("OK: every span, data point and log record sent over OTLP came back from Kinesis exactly once.")
    return ok


def main() -> int:
    from demo import start_kinesalite  # demo.py owns the kinesalite start-up

    try:
        binary = built_binary("kinesis-exporter")
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="kinesis-exporter-otlp-demo-"))
    step("starting kinesalite on 127.0.0.1")
    peer, endpoint = start_kinesalite(workdir)
    ok = False
    try:
        ok = run_otlp_demo(binary, endpoint, workdir)
        return 0 if ok else 1
    finally:
        step("stopping kinesalite")
        peer.stop(check=False)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"    configs and logs kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
