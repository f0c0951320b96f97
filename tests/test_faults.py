"""The fault matrix: what a client that retries (the OpenTelemetry SDK's gRPC span exporter) loses
when Kinesis throttles, fails, goes away or stalls, and when the exporter is stopped or killed
under load, in both delivery modes.

Each scenario runs the real exporter against kinesalite through ``peers/fault_proxy.py`` (the
real Kinesis protocol, with faults on demand), sends uniquely named spans with
:class:`span_load.SpanLoad` during the fault, waits until the exporter has settled everything it
holds (its ``/status``) or has exited, reads every span back from the stream and prints one row:
sent / acknowledged / refused / delivered / lost / duplicated. Rows are also appended to
``$KEX_FAULT_TABLE`` when set (``make test-faults`` prints that file at the end).

What is promised, and asserted: no acknowledged span is lost while Kinesis comes back within the
retry budget, in either mode; in ``delivery: acknowledged`` none is lost at all, whatever
happens (a client is told to retry what was not stored); in ``buffered`` mode an outage beyond
the retry budget loses acknowledged spans, and every one of them is counted as dropped. Every
scenario also asserts that its fault was actually hit (proxy counters, the exporter's status),
so that none passes vacuously.

A short, deterministic selection runs in ``make test``; ``KEX_FAULTS=full`` (``make
test-faults``) runs the whole matrix. Faults last a few seconds each; their durations are
waits by design, everything else waits for a condition.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from conftest import create_stream, wait_for
from otlp_helpers import ExporterProcess, kinesis_exporter, read_signal, spans_of
from peers.fault_proxy import FaultProxy
from span_load import HEADER, LoadReport, SpanLoad

FULL = os.environ.get("KEX_FAULTS") == "full"
full_only = pytest.mark.skipif(not FULL, reason="full fault matrix only (KEX_FAULTS=full, make test-faults)")
BUFFERED, ACKNOWLEDGED = "buffered", "acknowledged"


def modes(*short: str):
    """Both delivery modes as parameters; those not in ``short`` run in the full matrix only."""
    return pytest.mark.parametrize("delivery", [
        pytest.param(mode, marks=() if mode in short else full_only) for mode in (BUFFERED, ACKNOWLEDGED)])


# The producer's retry delays (exporter/src/kpl/backoff.rs): before retry n, uniformly random in
# the upper half of min(100 ms * 2^(n-1), max_backoff_seconds).
BASE_BACKOFF = 0.1


def retry_budget(max_retries: int, max_backoff_seconds: float) -> tuple[float, float]:
    """(shortest, longest) total backoff a record gets before it is dropped, for these kpl
    settings: how long Kinesis may stay away for sure, and at most (attempt times add to it)."""
    ceilings = [min(BASE_BACKOFF * 2 ** (n - 1), max_backoff_seconds) for n in range(1, max_retries + 1)]
    return sum(ceilings) / 2, sum(ceilings)


# Clients sending at once. An acknowledged request waits until its records are stored, so one
# client has one PutRecords under way at a time, and a failing one holds it through every
# backoff; more clients keep several batches, and their retries, going as a real fleet does.
CLIENTS = {BUFFERED: 1, ACKNOWLEDGED: 4}

# SIGTERM / SIGKILL scenarios: records linger 3 s, so that the signal always finds some held.
LINGER = {"flush_interval_seconds": 3, "linger_ms": 3000}


# --------------------------------------------------------------------------- the table


def emit(label: str, report: LoadReport) -> None:
    """Print the row under the header, and append it to $KEX_FAULT_TABLE (header first)."""
    row = report.row(label)
    print(f"\n{HEADER}\n{row}")
    table = os.environ.get("KEX_FAULT_TABLE")
    if table:
        path = Path(table)
        with path.open("a") as out:
            if out.tell() == 0:
                out.write(HEADER + "\n")
            out.write(row + "\n")


def total(reports: list[LoadReport]) -> LoadReport:
    return LoadReport(*(sum(values) for values in zip(*reports)))


# --------------------------------------------------------------------------- one scenario


@pytest.fixture
def proxy(kinesalite):
    """A fault proxy in front of the session's kinesalite (stopped after the exporter). Its
    random faults are seeded, so that a run is repeatable: unseeded, a run whose records were
    aggregated into only 22 entries once saw none of them throttled at 30% (a 1-in-2,500 draw)."""
    with FaultProxy(kinesalite, seed=0) as proxy:
        yield proxy


@pytest.fixture
def scenario(kinesalite, proxy, exporter_process):
    """Factory: ``scenario(slug, label, delivery, **Run options)`` -> :class:`Run`. At teardown,
    before the exporter is stopped (it must flush), every fault is cleared and every load
    still running is stopped, so that a failed test leaves nothing behind."""
    runs: list[Run] = []

    def start(slug: str, label: str, delivery: str, **options) -> Run:
        runs.append(Run(kinesalite, proxy, exporter_process, slug, label, delivery, **options))
        return runs[-1]
    yield start
    proxy.restore()
    for run in runs:
        run.stop_loads()


class Run:
    """One row: a stream behind the proxy, an exporter writing to it through the proxy, and
    the span loads sent to that exporter."""

    def __init__(self, kinesalite: str, proxy: FaultProxy, exporter_process, slug: str, label: str,
                 delivery: str, *, shards: int = 2, kpl: dict | None = None, args: tuple = (), **extra):
        self.kinesalite, self.delivery = kinesalite, delivery
        self.slug, self.label = f"{slug}-{delivery}", f"{label}, {delivery}"
        self.stream = f"faults-{uuid.uuid4().hex[:8]}"
        create_stream(kinesalite, self.stream, shards)
        self.proc: ExporterProcess = exporter_process(
            {"kinesis": kinesis_exporter(self.stream, proxy.endpoint, kpl=kpl, delivery=delivery, **extra)},
            args=list(args))
        self.loads: list[SpanLoad] = []
        self.loads_stopped = False

    def start_load(self, batch: int = 50, interval: float = 0.05, timeout: float = 60,
                   clients: int | None = None) -> "Run":
        """``clients`` SpanLoads (default: CLIENTS for the mode), each one request at a time;
        ``timeout``: how long the SDK keeps retrying one export before it counts it refused."""
        clients = clients or CLIENTS[self.delivery]
        for i in range(clients):
            name = self.slug if clients == 1 else f"{self.slug}-c{i}"
            self.loads.append(SpanLoad(self.proc.grpc_target, name, batch=batch, interval=interval,
                                       timeout=timeout).start())
        return self

    def acknowledged(self) -> int:
        return sum(len(load.acknowledged) for load in self.loads)

    def wait_flowing(self, more: int = 200, timeout: float = 60) -> None:
        """Until ``more`` spans past the current count are acknowledged: the load flows."""
        target = self.acknowledged() + more
        wait_for(lambda: self.proc.check_running() or self.acknowledged() >= target, timeout,
                 f"{self.label}: {more} more spans acknowledged", retry_errors=False)

    def settled(self) -> bool:
        """The exporter holds nothing: every record it took is stored or dropped."""
        status = self.proc.status()
        done = status["records_delivered"] + sum(status["records_dropped"].values())
        return status["backlog_records"] == 0 and done >= status["records_received"]

    def stop_loads(self) -> None:
        """Stop the loads (once); each export under way ends first (answered, or given up on)."""
        if not self.loads_stopped:
            self.loads_stopped = True
            for load in self.loads:
                load.stop()

    def finish(self, running: bool = True, label: str | Callable[[], str] | None = None) -> LoadReport:
        """Stop the loads, wait until the exporter settled (``running``), read the stream back,
        print and return the row (``label``: the row's name, or a function giving it once the
        exporter settled)."""
        self.stop_loads()
        if running:
            wait_for(self.settled, 120, f"{self.label}: the exporter to store or drop all it holds",
                     interval=0.2)
        stored = Counter(span.name for span in spans_of(read_signal(self.kinesalite, self.stream, "traces")))
        report = total([load.report(stored) for load in self.loads])
        emit((label() if callable(label) else label) or self.label, report)
        return report


def hold(seconds: float, since: float | None = None) -> None:
    """Keep a fault in place for its duration, counted from ``since`` (time.monotonic()) if
    given (the duration is the scenario, not a wait for something to happen)."""
    time.sleep(max(0.0, seconds - (time.monotonic() - since if since is not None else 0.0)))


def assert_nothing_lost(report: LoadReport, at_least: int = 100) -> None:
    assert report.acknowledged >= at_least, f"too little load to tell: {report}"
    assert report.lost == 0, f"acknowledged spans lost: {report}"
    assert report.delivered == report.acknowledged, report


def dropped(status: dict) -> int:
    return sum(status["records_dropped"].values())


# --------------------------------------------------------------------------- 1-3: throttling, bursts


@modes(BUFFERED)
def test_entry_throttling_throughout(scenario, proxy, delivery):
    """30% of PutRecords entries throttled for the whole run: each throttled record is sent
    again until it is stored. (Throttling spends no retry; were it counted against the default
    10, 11 throttles in a row at 30% would still be a 2-in-a-million event per record.)"""
    run = scenario("throttle30", "30% of entries throttled throughout", delivery)
    proxy.throttle_entries(0.3)
    run.start_load().wait_flowing(1000)
    report = run.finish()
    status = run.proc.status()
    assert proxy.count("entries_throttled") > 0, proxy.stats()
    # Every entry the proxy throttled was seen as throttled by the exporter, and retried.
    assert status["records_throttled"] == proxy.count("entries_throttled"), (status, proxy.stats())
    assert dropped(status) == 0, status
    assert_nothing_lost(report)


# A burst of at most max_retries failed requests cannot exhaust any record's retries, however
# the requests fall on batches; backoff capped at 1 s, so that a batch that takes every failure
# in turn is through it in under 8 s (0.1 + 0.2 + 0.4 + 0.8 + 6 x 1 s at most).
BURST = {"max_retries": 10, "max_backoff_seconds": 1}


@full_only
@modes()
def test_request_throttling_burst(scenario, proxy, delivery):
    """10 PutRecords in a row refused whole with 400 ProvisionedThroughputExceededException."""
    run = scenario("throttle-burst", "burst of 10 request throttles (400)", delivery, kpl=BURST)
    run.start_load().wait_flowing()
    proxy.fail_requests(400, 10)
    wait_for(lambda: proxy.count("requests_failed") == 10, 30, "10 PutRecords throttled")
    run.wait_flowing()
    report = run.finish()
    status = run.proc.status()
    assert status["records_throttled"] > 0 and status["last_throttle_age_seconds"] is not None, status
    assert dropped(status) == 0, status
    assert_nothing_lost(report)


@modes(ACKNOWLEDGED)
def test_5xx_burst(scenario, proxy, delivery):
    """5 PutRecords answered 500 InternalFailure, then 5 answered 503 ServiceUnavailable."""
    run = scenario("5xx-burst", "burst of 5 x 500 then 5 x 503", delivery, kpl=BURST)
    run.start_load().wait_flowing()
    proxy.fail_requests(500, 5)
    wait_for(lambda: proxy.count("requests_failed") == 5, 30, "5 PutRecords failed with 500")
    proxy.fail_requests(503, 5)
    wait_for(lambda: proxy.count("requests_failed") == 10, 30, "5 more failed with 503")
    run.wait_flowing()
    report = run.finish()
    status = run.proc.status()
    assert status["last_error"] and status["last_error"]["code"] == "ServiceUnavailable", status
    assert status["last_error"]["retryable"], status
    assert dropped(status) == 0, status
    assert_nothing_lost(report)


# --------------------------------------------------------------------------- 4-6: outages, stalls


# Within the budget: 12 retries capped at 2 s give every record at least 8.55 s of backoff
# (0.05 + 0.1 + 0.2 + 0.4 + 0.8 + 7 x 1 s), more than the 5 s outage.
WITHIN = {"max_retries": 12, "max_backoff_seconds": 2}
OUTAGE_WITHIN = 5.0


@modes(BUFFERED)
def test_outage_within_the_retry_budget(scenario, proxy, delivery):
    """Every connection reset for 5 s, every operation; the retry budget covers it."""
    assert retry_budget(**WITHIN)[0] > OUTAGE_WITHIN + 1
    run = scenario("outage-within", f"{OUTAGE_WITHIN:.0f} s outage within the retry budget",
                   delivery, kpl=WITHIN)
    run.start_load().wait_flowing()
    proxy.outage()
    hold(OUTAGE_WITHIN)
    assert proxy.count("connections_reset") > 0, proxy.stats()
    proxy.restore()
    run.wait_flowing()
    report = run.finish()
    status = run.proc.status()
    assert status["last_error"] and status["last_error"]["code"] in ("ConnectionError", "ResponseError"), status
    assert dropped(status) == 0, status
    assert_nothing_lost(report)


# Beyond the budget: one retry after 50-100 ms, then the record is dropped.
BEYOND = {"max_retries": 1, "max_backoff_seconds": 1}
OUTAGE_BEYOND = 3.0


@modes(ACKNOWLEDGED)
def test_outage_beyond_the_retry_budget(scenario, proxy, delivery):
    """A 3 s outage against a budget of 0.1 s: records are dropped, and counted. Buffered mode
    had acknowledged them: those spans are lost, each one counted. Acknowledged mode told the
    client to retry instead: nothing acknowledged is lost."""
    assert retry_budget(**BEYOND)[1] < OUTAGE_BEYOND / 10
    run = scenario("outage-beyond", f"{OUTAGE_BEYOND:.0f} s outage beyond the retry budget",
                   delivery, kpl=BEYOND)
    run.start_load().wait_flowing()
    proxy.outage()
    began = time.monotonic()
    wait_for(lambda: run.proc.status()["records_dropped"]["retries_exhausted"] > 0, 30,
             "records dropped after their retries", interval=0.2)
    hold(OUTAGE_BEYOND, since=began)
    proxy.restore()
    run.wait_flowing()
    report = run.finish(label=lambda: f"{run.label} ({dropped(run.proc.status())} records dropped, counted)")
    status = run.proc.status()
    exhausted = status["records_dropped"]["retries_exhausted"]
    metric = run.proc.metrics().value("kinesis_exporter_user_records_dropped_total", reason="retries_exhausted")
    assert metric == exhausted > 0, f"/metrics {metric}, /status {status}"
    if delivery == BUFFERED:
        # One span per trace, so one user record per span: every lost span is a counted
        # drop, and every drop a lost span (buffered mode had acknowledged them all).
        assert report.lost > 0, report
        assert report.lost == exhausted, f"spans lost and records dropped differ: {report}, {status}"
        assert report.delivered == report.acknowledged - report.lost, report
    else:
        assert_nothing_lost(report)


@modes(ACKNOWLEDGED)
def test_stall_longer_than_the_request_timeout(scenario, proxy, delivery):
    """PutRecords held unanswered for 4 s against a 1 s per-attempt timeout: attempts time out
    and are retried; the held requests are then answered late (stored, so the retry of the same
    records may duplicate them: at least once)."""
    run = scenario("stall", "4 s stall, 1 s request timeout (held requests stored late)", delivery,
                   kpl={"request_timeout_seconds": 1})
    run.start_load().wait_flowing()
    proxy.stall()
    began = time.monotonic()
    wait_for(lambda: run.proc.status()["last_error"], 30, "a PutRecords attempt to time out", interval=0.2)
    hold(4, since=began)
    proxy.restore()
    run.wait_flowing()
    report = run.finish()
    status = run.proc.status()
    assert proxy.count("requests_stalled") > 0, proxy.stats()
    assert status["last_error"]["code"] == "Timeout", status
    assert dropped(status) == 0, status
    assert_nothing_lost(report)


# --------------------------------------------------------------------------- 7-8: signals under load


def holding(run: Run) -> bool:
    status = run.proc.status()
    return status["records_received"] > status["records_delivered"]


@modes(BUFFERED, ACKNOWLEDGED)
def test_sigterm_under_load(scenario, delivery):
    """SIGTERM while records linger: the exporter drains, flushes and exits 0 within
    --shutdown-timeout; nothing it acknowledged is lost."""
    shutdown_timeout = 10
    run = scenario("sigterm", "SIGTERM under load", delivery, kpl=LINGER,
                   args=("--shutdown-timeout", str(shutdown_timeout)))
    run.start_load(batch=200, interval=0.02, timeout=5).wait_flowing(400)
    wait_for(lambda: holding(run), 30, "the exporter to hold records not yet stored")
    started = time.monotonic()
    run.proc.stop(timeout=shutdown_timeout + 5)  # asserts exit status 0
    took = time.monotonic() - started
    report = run.finish(running=False, label=f"{run.label} (exit 0 in {took:.1f} s)")
    assert took < shutdown_timeout, f"exit took {took:.1f}s, --shutdown-timeout is {shutdown_timeout}"
    assert '"abandoned":0' in run.proc.logs(tail=10**9).replace(" ", ""), run.proc.logs()
    assert_nothing_lost(report, at_least=400)


@modes(ACKNOWLEDGED)
def test_sigkill_under_load(scenario, delivery):
    """SIGKILL while the exporter holds records: buffered loses what it held (asserted in the
    full run), acknowledged loses nothing it acknowledged."""
    run = scenario("sigkill", "SIGKILL under load", delivery, kpl=LINGER)
    run.start_load(batch=200, interval=0.02, timeout=5).wait_flowing(400)
    wait_for(lambda: holding(run), 30, "the exporter to hold records not yet stored")
    run.proc.sigkill()
    report = run.finish(running=False)
    if delivery == BUFFERED:
        assert report.lost > 0, f"a SIGKILL 3 s into a linger should lose acknowledged spans: {report}"
    else:
        assert report.refused > 0, f"the kill should catch a request under way: {report}"
        assert_nothing_lost(report, at_least=400)


# --------------------------------------------------------------------------- 9: overload


# One connection, at most 100 user records per PutRecords (5 aggregates of 20), each answered
# 0.3 s late: the exporter drains about 330 records a second, 30% of them throttled on top.
OVERLOAD = {"backlog_count": 300, "max_connections": 1, "batch_count": 5, "aggregate_batch_count": 20}


@full_only
@modes()
def test_overload(scenario, proxy, delivery):
    """Six clients sending 150 spans a request as fast as they can into a backlog of 300 that a
    slow Kinesis drains: requests wait for room, then are answered UNAVAILABLE; clients retry,
    or give up and know it (refused). Nothing acknowledged is lost."""
    run = scenario("overload",
                   "overload: 6 fast clients, backlog 300, slow Kinesis, 30% throttled", delivery,
                   kpl=OVERLOAD, enqueue_timeout_seconds=1)
    proxy.delay(0.3)
    proxy.throttle_entries(0.3)
    run.start_load(batch=150, interval=0, timeout=10, clients=6)

    def unavailable() -> float:
        return run.proc.metrics().value("kinesis_exporter_otlp_requests_total", outcome="unavailable") or 0
    wait_for(unavailable, 60, "requests answered UNAVAILABLE (the backlog stayed full)", interval=0.2)
    run.wait_flowing(1000, timeout=120)
    proxy.restore()
    report = run.finish()
    status = run.proc.status()
    assert proxy.count("entries_throttled") > 0 and proxy.count("requests_delayed") > 0, proxy.stats()
    assert dropped(status) == 0, status
    assert_nothing_lost(report, at_least=1000)


# --------------------------------------------------------------------------- 10: stalled clients


@modes(BUFFERED)
def test_stalled_clients_at_shutdown(scenario, delivery):
    """SIGTERM under load with two clients that never finish (half an HTTP request head, a gRPC
    connection that sent only its preface): the drain gives up on them after --drain-timeout,
    the exporter flushes and exits 0 within --shutdown-timeout, nothing acknowledged is lost."""
    shutdown_timeout, drain_timeout = 8, 2
    run = scenario("stalled-clients", "stalled clients at SIGTERM, under load", delivery, kpl=LINGER,
                   args=("--shutdown-timeout", str(shutdown_timeout), "--drain-timeout", str(drain_timeout)))
    run.start_load(batch=200, interval=0.02, timeout=5).wait_flowing(400)
    # Each stalled connection first gets an answer, so it is surely accepted (not still in the
    # listen queue) when SIGTERM comes.
    http = socket.create_connection(("127.0.0.1", run.proc.http_port), timeout=5)
    grpc_ = socket.create_connection(("127.0.0.1", run.proc.grpc_port), timeout=5)
    try:
        http.sendall(b"GET /v1/unknown HTTP/1.1\r\nHost: x\r\n\r\n")
        assert http.recv(64).startswith(b"HTTP/1.1 404"), "the HTTP connection is served"
        http.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Len")
        grpc_.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert len(grpc_.recv(9)) > 0, "the server's HTTP/2 SETTINGS: the gRPC connection is served"
        wait_for(lambda: holding(run), 30, "the exporter to hold records not yet stored")
        started = time.monotonic()
        run.proc.stop(timeout=shutdown_timeout + 10)  # asserts exit status 0
        took = time.monotonic() - started
    finally:
        http.close()
        grpc_.close()
    report = run.finish(running=False, label=f"{run.label} (exit 0 in {took:.1f} s)")
    assert took < shutdown_timeout, f"exit took {took:.1f}s, --shutdown-timeout is {shutdown_timeout}"
    assert "closing their connections" in run.proc.logs(tail=10**9), run.proc.logs()
    assert_nothing_lost(report, at_least=400)


# --------------------------------------------------------------------------- 11: one hot shard


# 20 retries capped at 2 s: at least 1.55 + 16 x 1 = 17.55 s of backoff, more than the 10 s window.
ONE_SHARD = {"max_retries": 20, "max_backoff_seconds": 2}
SHARD_WINDOW = 10.0


@full_only
@modes()
def test_one_shard_throttled_hard(scenario, proxy, delivery):
    """Every entry for shard 0 of 4 throttled for 10 s while the other shards could take
    theirs; then restored. Nothing acknowledged is lost, and in buffered mode the other shards
    go on storing all along. The row tells how many user records were stored meanwhile (all on
    the other shards), in the window's first and second half."""
    assert retry_budget(**ONE_SHARD)[0] > SHARD_WINDOW + 2
    run = scenario("hot-shard", "shard 0 of 4 throttled 10 s", delivery, shards=4, kpl=ONE_SHARD)
    run.start_load().wait_flowing()
    delivered = [run.proc.status()["records_delivered"]]
    proxy.throttle_shard(0, 1.0)
    hold(SHARD_WINDOW / 2)
    delivered.append(run.proc.status()["records_delivered"])
    hold(SHARD_WINDOW / 2)
    delivered.append(run.proc.status()["records_delivered"])
    throttled = proxy.count("entries_throttled")
    proxy.restore()
    run.wait_flowing()
    first, second = delivered[1] - delivered[0], delivered[2] - delivered[1]
    report = run.finish(label=f"{run.label} ({first} + {second} stored meanwhile)")
    status = run.proc.status()
    assert throttled > 0, proxy.stats()
    assert dropped(status) == 0, status
    assert_nothing_lost(report)
    if delivery == BUFFERED:
        # The other shards flow all along. (An acknowledged request waits for all its records,
        # shard 0's too, so there every client waits for the throttle to end.)
        assert second > 0, f"nothing stored in the second half of the throttled window: {first} + {second}"
