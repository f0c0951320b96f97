"""A Kinesis fault proxy: sits between the exporter and kinesalite and breaks Kinesis on demand.

kinesalite speaks the real Kinesis protocol (AWS JSON 1.1: ``POST /``, ``X-Amz-Target:
Kinesis_20131202.<Op>``, a JSON body) and stores what it is given, but it never throttles, fails
or stalls. This proxy forwards every request to it unchanged and relays its answer unchanged,
except while a fault is set:

* ``throttle_entries(fraction)``: PutRecords entries are withheld at random and answered
  ``ProvisionedThroughputExceededException``; the rest go upstream as a smaller PutRecords and
  the two answers are merged in the original order (a partial failure, as Kinesis gives one);
* ``throttle_shard(shard, fraction=1.0)``: the same, for the entries of one shard only (by hash
  key: ExplicitHashKey, else the MD5 of the partition key), the others flow;
* ``fail_requests(status, count=None)``: the next ``count`` PutRecords (or all) get a whole-request
  error, 500 InternalFailure, 503 ServiceUnavailable or 400 request-level throttling;
* ``outage()``: every request (every operation) has its connection reset, never answered;
* ``stall(seconds=None)``: PutRecords requests are held unanswered (until ``restore()`` or for
  ``seconds``), then forwarded: a late answer to a client that has usually given up by then,
  so its retry stores the same records again, as with a slow Kinesis (at least once);
* ``delay(seconds)``: every PutRecords is answered ``seconds`` late (a slow Kinesis, within the
  client's request timeout): with few connections, a slow drain;
* ``restore()`` clears every fault and releases stalled requests.

Counters (``stats()``, ``count(name)``) say whether a fault was actually hit, so a test can wait
for that condition instead of sleeping: ``requests.<Op>``, ``entries_forwarded``,
``entries_throttled``, ``requests_failed``, ``connections_reset``, ``requests_stalled``,
``requests_delayed``.

In-process (the tests)::

    proxy = FaultProxy(kinesalite_url).start()   # listens on 127.0.0.1, a port the OS picks
    ... exporter with kinesis_endpoint = proxy.endpoint ...
    proxy.throttle_entries(0.3); ...; proxy.restore(); proxy.stop()

Stand-alone: ``python tests/peers/fault_proxy.py --upstream http://127.0.0.1:4567`` prints its
endpoint on one line and serves until SIGTERM/SIGINT; faults are set with
``POST /__fault {"fault": "throttle_entries", "fraction": 0.3}`` (any method below by name,
its arguments as keys) and counters read with ``GET /__stats``. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import random
import signal
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AMZ_JSON = "application/x-amz-json-1.1"
TARGET_PREFIX = "Kinesis_20131202."
ADMIN_FAULT, ADMIN_STATS = "/__fault", "/__stats"
# Headers that describe one hop's connection or framing; the proxy sets its own.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
              "upgrade", "content-length"}
# Whole-request errors as Kinesis sends them (the SDK reads the error code from __type).
REQUEST_ERRORS = {
    500: {"__type": "InternalFailure"},
    503: {"__type": "ServiceUnavailable"},
    400: {"__type": "ProvisionedThroughputExceededException", "message": "Rate exceeded"},
}
UPSTREAM_TIMEOUT = 30.0
# Faults that the admin path may call.
FAULTS = {"throttle_entries", "throttle_shard", "fail_requests", "outage", "stall", "delay", "restore"}


def hash_key(entry: dict) -> int:
    """Where Kinesis puts an entry: its ExplicitHashKey, else the MD5 of its partition key as
    a big-endian 128-bit number (the same as conftest.partition_key_hash)."""
    if entry.get("ExplicitHashKey") is not None:
        return int(entry["ExplicitHashKey"])
    return int.from_bytes(hashlib.md5(entry["PartitionKey"].encode("utf-8")).digest(), "big")


class FaultProxy:
    """The proxy; every public method is safe to call from any thread while it serves."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0, seed: int | None = None):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port or 80)
        self._random = random.Random(seed)
        self._lock = threading.Condition()
        self._counters: Counter = Counter()
        self._shards: dict[str, list[tuple[str, int, int]]] = {}  # stream -> sorted shard ranges
        self._clear()
        # Bound here, port 0 by default: the port is known before anyone is told to use it.
        self._server = _Server((host, port), _Handler)
        self._server.proxy = self
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    def _clear(self) -> None:
        self._throttle_fraction = 0.0
        self._throttle_shard: tuple[int | tuple[int, int], float] | None = None
        self._fail: tuple[int, int | None] | None = None  # (status, requests left or None: all)
        self._outage = False
        self._stall_until: float | None = None  # monotonic deadline, math.inf until restore()
        self._delay = 0.0

    # ---- lifecycle

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.restore()  # stalled handlers return
        self._server.shutdown()
        self._server.server_close()
        # Keep-alive connections would otherwise go on being served by their handler threads.
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- faults

    def throttle_entries(self, fraction: float) -> None:
        """Withhold each PutRecords entry with probability ``fraction`` (throttled)."""
        with self._lock:
            self._throttle_fraction = float(fraction)

    def throttle_shard(self, shard, fraction: float = 1.0) -> None:
        """Withhold with probability ``fraction`` the entries whose hash key lies in ``shard``:
        an index into the stream's shards sorted by starting hash key (learned with ListShards
        from upstream on the next PutRecords), or a ``(start, end)`` range, both ends inclusive."""
        shard = shard if isinstance(shard, int) else (int(shard[0]), int(shard[1]))
        with self._lock:
            self._throttle_shard = (shard, float(fraction))

    def fail_requests(self, status: int, count: int | None = None) -> None:
        """Answer the next ``count`` PutRecords requests (all with None) with ``status``
        (500, 503 or 400 = request-level throttling), without forwarding them."""
        if status not in REQUEST_ERRORS:
            raise ValueError(f"status {status}: one of {sorted(REQUEST_ERRORS)}")
        with self._lock:
            self._fail = (status, count)

    def outage(self) -> None:
        """Reset the connection of every request, of every operation, without an answer."""
        with self._lock:
            self._outage = True

    def stall(self, seconds: float | None = None) -> None:
        """Hold PutRecords requests unanswered for ``seconds`` (None: until restore()), then
        forward them."""
        with self._lock:
            self._stall_until = math.inf if seconds is None else time.monotonic() + seconds

    def delay(self, seconds: float) -> None:
        """Answer every PutRecords ``seconds`` late."""
        with self._lock:
            self._delay = float(seconds)

    def restore(self) -> None:
        """Clear every fault; held requests go on."""
        with self._lock:
            self._clear()
            self._lock.notify_all()

    # ---- counters

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def count(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    # ---- decisions, made by the handler threads

    def _take_failure(self) -> int | None:
        """The status to fail this PutRecords with, if a failure is due (and count it down)."""
        with self._lock:
            if self._fail is None:
                return None
            status, left = self._fail
            if left is not None:
                self._fail = (status, left - 1) if left > 1 else None
            self._counters["requests_failed"] += 1
            return status

    def _wait_out_stall(self) -> bool:
        """Blocks while a stall is set; True when this request was held."""
        with self._lock:
            held = False
            while self._stall_until is not None and time.monotonic() < self._stall_until:
                if not held:
                    held = True
                    self._counters["requests_stalled"] += 1
                remaining = self._stall_until - time.monotonic()
                self._lock.wait(None if remaining == math.inf else remaining)
            return held

    def _withhold(self, stream: str, entries: list[dict]) -> list[str | None]:
        """Per entry: None to forward it, else the shard id to name in its throttling error."""
        with self._lock:
            fraction, by_shard = self._throttle_fraction, self._throttle_shard
        ranges = self._shard_ranges(stream) if by_shard is not None or fraction else []
        out: list[str | None] = []
        for entry in entries:
            key = hash_key(entry)
            shard_id = next((sid for sid, lo, hi in ranges if lo <= key <= hi), "shardId-000000000000")
            withhold = fraction > 0 and self._random.random() < fraction
            if by_shard is not None and not withhold:
                shard, shard_fraction = by_shard
                lo, hi = ranges[shard][1:] if isinstance(shard, int) else shard
                withhold = lo <= key <= hi and self._random.random() < shard_fraction
            out.append(shard_id if withhold else None)
        return out

    def _shard_ranges(self, stream: str) -> list[tuple[str, int, int]]:
        """The stream's shards (id, start, end) sorted by start, read once from upstream."""
        with self._lock:
            known = self._shards.get(stream)
        if known is not None:
            return known
        shards, token = [], None
        while True:
            body = {"NextToken": token} if token else {"StreamName": stream}
            status, _, data = self._upstream_call("ListShards", json.dumps(body).encode())
            if status != 200:
                raise RuntimeError(f"ListShards {stream}: {status} {data[:300]!r}")
            page = json.loads(data)
            shards += [(s["ShardId"], int(s["HashKeyRange"]["StartingHashKey"]),
                        int(s["HashKeyRange"]["EndingHashKey"]))
                       for s in page["Shards"] if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
            token = page.get("NextToken")
            if not token:
                break
        shards.sort(key=lambda s: s[1])
        with self._lock:
            self._shards[stream] = shards
        return shards

    def _upstream_call(self, operation: str, body: bytes) -> tuple[int, list, bytes]:
        """A call of the proxy's own (ListShards). kinesalite wants a signature's shape, not a
        valid signature."""
        headers = {
            "Content-Type": AMZ_JSON, "X-Amz-Target": TARGET_PREFIX + operation,
            "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
            "Authorization": "AWS4-HMAC-SHA256 Credential=test/20200101/us-east-1/kinesis/aws4_request, "
                             "SignedHeaders=host;x-amz-date, Signature=0",
        }
        return self.forward("/", headers, body)

    def forward(self, path: str, headers: dict, body: bytes) -> tuple[int, list, bytes]:
        """One request upstream on a fresh connection (kinesalite is local; a pooled one could
        have been closed by node's keep-alive timeout and would need retrying)."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.request("POST", path, body=body, headers={**headers, "Content-Length": str(len(body))})
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler held by a stall never blocks the test's exit
    request_queue_size = 128  # a burst of reconnects (after resets or timeouts) is not refused

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up with getfqdn(), which can wait on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    """One client connection (HTTP/1.1 keep-alive: several requests in turn)."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.server.proxy._lock:
            self.server.proxy._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.proxy._lock:
            self.server.proxy._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass  # one line per request would drown the test output

    # ---- requests

    def do_GET(self) -> None:
        if self.path == ADMIN_STATS:
            return self._answer(200, [("Content-Type", "application/json")],
                                json.dumps(self.server.proxy.stats()).encode())
        self._answer(404, [], b"")

    def do_POST(self) -> None:
        proxy: FaultProxy = self.server.proxy
        body = self._read_body()
        if self.path == ADMIN_FAULT:
            return self._admin(proxy, body)
        operation = self.headers.get("X-Amz-Target", "").removeprefix(TARGET_PREFIX)
        proxy._add(f"requests.{operation}")
        if proxy._outage:
            return self._reset(proxy)
        if operation == "PutRecords":
            status = proxy._take_failure()
            if status is not None:
                return self._answer_json(status, REQUEST_ERRORS[status])
            proxy._wait_out_stall()
            if proxy._delay:
                proxy._add("requests_delayed")
                time.sleep(proxy._delay)  # the latency is the fault
            if proxy._outage:  # an outage that began while the request was held
                return self._reset(proxy)
            return self._put_records(proxy, body)
        self._relay(proxy, body)

    def _put_records(self, proxy: FaultProxy, body: bytes) -> None:
        with proxy._lock:
            throttling = proxy._throttle_fraction > 0 or proxy._throttle_shard is not None
        if not throttling:
            return self._relay(proxy, body, entries=None)
        request = json.loads(body)
        entries = request["Records"]
        stream = request.get("StreamName") or request.get("StreamARN", "").rsplit("/", 1)[-1]
        withheld = proxy._withhold(stream, entries)
        kept = [entry for entry, shard in zip(entries, withheld) if shard is None]
        if len(kept) == len(entries):
            return self._relay(proxy, body, entries=len(entries))
        proxy._add("entries_throttled", len(entries) - len(kept))
        headers, answer = [("Content-Type", AMZ_JSON), ("x-amzn-RequestId", str(uuid.uuid4()))], {}
        if kept:
            status, headers, data = proxy.forward(self.path, self._upstream_headers(),
                                                  json.dumps({**request, "Records": kept}).encode())
            if status != 200:  # the smaller request failed whole: that is the answer
                return self._answer(status, headers, data)
            proxy._add("entries_forwarded", len(kept))
            answer = json.loads(data)
        stored = iter(answer.get("Records", []))
        results = [next(stored) if shard is None else {
            "ErrorCode": "ProvisionedThroughputExceededException",
            "ErrorMessage": f"Rate exceeded for shard {shard} in stream {stream} under account 000000000000.",
        } for shard in withheld]
        answer.update(FailedRecordCount=sum(1 for r in results if "ErrorCode" in r), Records=results)
        self._answer(200, headers, json.dumps(answer).encode())

    def _relay(self, proxy: FaultProxy, body: bytes, entries: int | None = None) -> None:
        """Forward as received and answer what upstream answered."""
        status, headers, data = proxy.forward(self.path, self._upstream_headers(), body)
        if entries is None and self.headers.get("X-Amz-Target", "").endswith(".PutRecords"):
            entries = len(json.loads(body).get("Records", []))
        if entries and status == 200:
            proxy._add("entries_forwarded", entries)
        self._answer(status, headers, data)

    def _admin(self, proxy: FaultProxy, body: bytes) -> None:
        args = json.loads(body or b"{}")
        fault = args.pop("fault", None)
        if fault not in FAULTS:
            return self._answer_json(400, {"error": f"fault must be one of {sorted(FAULTS)}"})
        getattr(proxy, fault)(**args)
        self._answer_json(200, {"ok": fault})

    # ---- wire

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]  # each chunk ends with CRLF
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _upstream_headers(self) -> dict:
        # Host stays as received: it is signed, and kinesalite does not mind.
        return {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}

    def _answer(self, status: int, headers: list, body: bytes) -> None:
        try:
            self.send_response_only(status)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client left (e.g. it timed out a stalled request)

    def _answer_json(self, status: int, obj: dict) -> None:
        headers = [("Content-Type", AMZ_JSON), ("x-amzn-RequestId", str(uuid.uuid4()))]
        if "__type" in obj:
            headers.append(("x-amzn-ErrorType", obj["__type"]))
        self._answer(status, headers, json.dumps(obj).encode())

    def _reset(self, proxy: FaultProxy) -> None:
        """Close with RST (SO_LINGER 0): no answer at all, as when a front end dies."""
        proxy._add("connections_reset")
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="kinesalite's URL, e.g. http://127.0.0.1:4567")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a port the OS picks")
    args = parser.parse_args()
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    proxy = FaultProxy(args.upstream, args.host, args.port).start()
    print(proxy.endpoint, flush=True)  # the line to wait for: serving from now on
    stopped.wait()
    proxy.stop()


if __name__ == "__main__":
    main()
