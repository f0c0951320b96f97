"""Continuous OTLP load for the rollout and delivery tests: a client that retries as the
OpenTelemetry SDK does (it *is* the SDK's gRPC span exporter), and a ledger of what the server
acknowledged.

Every span has a unique name, so what reached the stream can be compared span by span with
what the client was told was accepted: lost = acknowledged and never stored; duplicated =
stored more than once (a retried request whose first attempt had in fact been kept).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import NamedTuple

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult


class _Collect(SpanProcessor):
    """Hands each finished span to the load loop instead of a batch processor."""

    def __init__(self):
        self.finished: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.finished.append(span)


class LoadReport(NamedTuple):
    sent: int          # spans the client tried to export
    acknowledged: int  # spans in requests answered OK (after the SDK's own retries)
    refused: int       # spans in requests that failed for good (the client knows)
    delivered: int     # acknowledged spans found on the stream
    lost: int          # acknowledged spans not on the stream
    duplicated: int    # extra copies on the stream

    def row(self, scenario: str) -> str:
        return (f"| {scenario} | {self.sent} | {self.acknowledged} | {self.refused} | "
                f"{self.delivered} | {self.lost} | {self.duplicated} |")


HEADER = ("| scenario | spans sent | acknowledged | refused | delivered | lost | duplicated |\n"
          "|---|---|---|---|---|---|---|")


class SpanLoad:
    """Sends ``batch`` spans every ``interval`` seconds to ``target`` (host:port, OTLP/gRPC)
    from a background thread until ``stop()``; records which span names were acknowledged."""

    def __init__(self, target: str, scenario: str, batch: int = 50, interval: float = 0.05,
                 timeout: float = 60):
        self.scenario = scenario
        self.batch = batch
        self.interval = interval
        # ``timeout``: how long the SDK keeps retrying one export before it gives up.
        self.exporter = OTLPSpanExporter(endpoint=f"http://{target}", insecure=True, timeout=timeout)
        self.collector = _Collect()
        provider = TracerProvider(resource=Resource.create({"service.name": f"rollout-{scenario}"}))
        provider.add_span_processor(self.collector)
        self.tracer = provider.get_tracer("kex.rollout", "1.0")
        self.acknowledged: list[str] = []
        self.refused: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load-{scenario}", daemon=True)

    def start(self) -> "SpanLoad":
        self._thread.start()
        return self

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            names = []
            for _ in range(self.batch):
                name = f"{self.scenario}-{seq}"
                seq += 1
                self.tracer.start_span(name).end()
                names.append(name)
            spans, self.collector.finished = self.collector.finished, []
            self.sent += len(spans)
            result = self.exporter.export(spans)
            (self.acknowledged if result == SpanExportResult.SUCCESS else self.refused).extend(names)
            self._stop.wait(self.interval)

    def wait_acknowledged(self, more_than: int, timeout: float = 60) -> None:
        """Block until more than ``more_than`` spans were acknowledged (the load is flowing)."""
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) <= more_than:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError(f"{self.scenario}: load not acknowledged "
                                     f"({len(self.acknowledged)} acked, {len(self.refused)} refused)")
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), f"{self.scenario}: the load thread did not stop"
        self.exporter.shutdown()

    def report(self, stored_names: Counter) -> LoadReport:
        """Compare the ledger with the span names found on the stream (this scenario's only)."""
        acked = set(self.acknowledged)
        delivered = sum(1 for name in acked if stored_names[name] > 0)
        duplicated = sum(count - 1 for name, count in stored_names.items()
                         if name.startswith(f"{self.scenario}-") and count > 1)
        return LoadReport(self.sent, len(acked), len(self.refused), delivered, len(acked) - delivered,
                          duplicated)
