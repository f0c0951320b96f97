"""Acknowledged delivery (``delivery: acknowledged``): the OTLP answer waits until every record
of the request is stored in Kinesis, so a SIGKILL of the exporter at any moment loses nothing it
acknowledged; the client's retries carry the rest. Buffered delivery (the default) answers once
the records are queued: the same SIGKILL then loses what it acknowledged and still held, which
is what this test shows first, so that it is known to catch a loss.

The client is the OpenTelemetry SDK's gRPC span exporter (it retries UNAVAILABLE), sending
uniquely named spans; kinesalite stores what the exporter wrote and every record is read back.
Records linger 3 s before they are sent, so that a kill always finds some in the exporter.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections import Counter

import pytest

from conftest import create_stream, wait_for
from otlp_helpers import kinesis_exporter, read_signal, spans_of
from span_load import SpanLoad

LINGER = {"flush_interval_seconds": 3, "linger_ms": 3000}


def holding(proc) -> bool:
    with urllib.request.urlopen(proc.telemetry_url("/status"), timeout=5) as response:
        (exporter,) = json.load(response)["exporters"]
    return exporter["records_received"] > exporter["records_delivered"]


def kill_under_load(kinesalite: str, exporter_process, delivery: str):
    stream = f"delivery-{uuid.uuid4().hex[:8]}"
    create_stream(kinesalite, stream, 2)
    proc = exporter_process({"kinesis": kinesis_exporter(stream, kinesalite, kpl=LINGER, delivery=delivery)})
    load = SpanLoad(proc.grpc_target, delivery, batch=200, interval=0.02, timeout=5).start()
    try:
        # Past one linger, so that records were stored; then kill while the exporter holds
        # records it received and has not stored (its own /status says so).
        load.wait_acknowledged(more_than=400, timeout=60)
        wait_for(lambda: holding(proc), 30, "the exporter to hold records not yet stored")
        proc.sigkill()
    finally:
        load.stop()
    stored = Counter(s.name for s in spans_of(read_signal(kinesalite, stream, "traces")))
    return load.report(stored)


def test_buffered_delivery_loses_what_it_held_when_killed(kinesalite, exporter_process):
    report = kill_under_load(kinesalite, exporter_process, "buffered")
    print(report.row("buffered, SIGKILL"))
    assert report.lost > 0, f"a SIGKILL 3 s into a linger should lose acknowledged spans: {report}"


@pytest.mark.parametrize("attempt", [1, 2])
def test_acknowledged_delivery_loses_nothing_it_acknowledged_when_killed(kinesalite, exporter_process,
                                                                         attempt):
    report = kill_under_load(kinesalite, exporter_process, "acknowledged")
    print(report.row(f"acknowledged, SIGKILL ({attempt})"))
    assert report.acknowledged > 400, report
    assert report.refused > 0, f"the kill should catch a request under way: {report}"
    assert report.lost == 0, f"acknowledged spans lost: {report}"
    assert report.delivered == report.acknowledged, report
