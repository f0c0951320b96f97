"""Shared fixtures and helpers for the end-to-end tests.

The tests run the real `kinesis-exporter` binary against real peers:

* kinesalite (npm), an in-memory Kinesis emulator, started by ``peers/kinesalite.js``;
* moto (PyPI) in server mode, for STS (IRSA web identity, AssumeRole) and Kinesis;
* the official KPL deaggregators, PyPI ``aws_kinesis_agg`` and npm ``aws-kinesis-agg``
  (through ``peers/deagg.js``), to read back what the exporter wrote.

Everything binds to 127.0.0.1. ``tests/install.sh`` installs the peers; run the suite
with ``tests/run.sh``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import boto3
import pytest
# Import order matters: aws_kinesis_agg.deaggregator puts its own folder on sys.path, which
# its generated messages_pb2 needs to find config_pb2.
from aws_kinesis_agg.deaggregator import iter_deaggregate_records  # isort: skip
from aws_kinesis_agg import MAGIC, messages_pb2  # isort: skip
from botocore.config import Config

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
PEERS_DIR = TESTS_DIR / "peers"

REGION = "us-east-1"
DUMMY_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
# Environment for the exporter when it talks to kinesalite (static credentials).
KINESALITE_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_REGION": REGION,
}

PEER_START_TIMEOUT = 30.0
PUT_TIMEOUT = 300.0
MD5_SIZE = 16


# --------------------------------------------------------------------------- polling


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05,
             retry_errors: bool = True):
    """Poll ``condition`` until it returns a truthy value (returned) or ``timeout`` seconds
    pass (TimeoutError naming ``what`` and the last value or error).

    With ``retry_errors`` an exception from ``condition`` counts as "not yet"; without, it
    propagates at once (for conditions that check a process is still alive).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last: object = None
    while True:
        try:
            last = condition()
            if last:
                return last
        except Exception as err:  # noqa: BLE001 - any failure means "not ready yet"
            if not retry_errors:
                raise
            last_error = err
        if time.monotonic() >= deadline:
            detail = f": last error {last_error!r}" if last_error else f"; last: {last!r}"
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------- peer processes


class ChildProcess:
    """A child process of the tests, in its own process group, its output in ``log_path``.

    Peers (kinesalite, moto) are started with ``spawn`` and stopped without caring how they
    exit; the processes under test (the exporter, the operator) are stopped with
    ``stop(check=True)``, which asserts that SIGTERM made them exit 0 in time.
    """

    def __init__(self, name: str, log_path: Path):
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._log = None

    def spawn(self, argv: list[str], env: dict | None = None, cwd: Path | None = None,
              stdout_pipe: bool = False) -> "ChildProcess":
        """Start ``argv``; with ``stdout_pipe`` its stdout is kept for :meth:`read_line` and
        only stderr goes to the log."""
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log if stdout_pipe else subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def logs(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def read_line(self, timeout: float) -> str:
        """The first line the process prints on stdout (used to learn a peer's port)."""
        deadline = time.monotonic() + timeout
        buffer = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail(f"printed no line within {timeout:.0f}s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.fail("closed stdout before printing its port")
                buffer += chunk
        return buffer.split(b"\n", 1)[0].decode().strip()

    def check_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with status {self.proc.returncode}; "
                                 f"log {self.log_path}:\n{self.logs()}")

    def fail(self, why: str):
        self.stop(check=False)
        raise RuntimeError(f"{self.name} {why}; log {self.log_path}:\n{self.logs(4000)}")

    def stop(self, timeout: float = 30, check: bool = True) -> int:
        """SIGTERM the process group and wait up to ``timeout`` s, then SIGKILL. With ``check``,
        assert it exited 0 in time. Idempotent."""
        if self.proc is None or self.returncode is not None:
            return self.returncode or 0
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.returncode = self.proc.wait(timeout=timeout)
            killed = False
        except subprocess.TimeoutExpired:
            self.kill()
            self.returncode, killed = -9, True
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        if check and killed:
            raise AssertionError(f"{self.name} did not exit within {timeout:.0f}s of SIGTERM "
                                 f"(killed); log:\n{self.logs()}")
        if check:
            assert self.returncode == 0, \
                f"{self.name} exited {self.returncode} after SIGTERM; log:\n{self.logs()}"
        return self.returncode

    def sigkill(self) -> None:
        """SIGKILL now, as a kubelet does at the end of a grace period, or the OOM killer; the
        process is then stopped for good (stop() asserts nothing more)."""
        self.kill()
        self.returncode = self.proc.returncode
        if self._log:
            self._log.close()

    def kill(self) -> None:
        """Last-resort cleanup (no assertion)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)


def _answers_kinesis(endpoint: str) -> bool:
    kinesis_client(endpoint).list_streams()
    return True


def _answers_http(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def start_kinesalite(workdir: Path, host: str = "127.0.0.1") -> tuple[ChildProcess, str]:
    """Starts an in-memory kinesalite on a port the OS picks on ``host``; returns the peer
    (stop it with ``stop(check=False)``) and its endpoint URL once it answers ListStreams."""
    peer = ChildProcess("kinesalite", workdir / "kinesalite.log").spawn(
        ["node", str(PEERS_DIR / "kinesalite.js"), "0", host], cwd=TESTS_DIR, stdout_pipe=True)
    try:
        port = int(peer.read_line(PEER_START_TIMEOUT))
        endpoint = f"http://{host}:{port}"
        wait_for(lambda: peer.check_running() or _answers_kinesis(endpoint),
                 PEER_START_TIMEOUT, "kinesalite to answer ListStreams")
    except BaseException:
        peer.stop(check=False)
        raise
    return peer, endpoint


@pytest.fixture(scope="session")
def kinesalite(tmp_path_factory) -> Iterator[str]:
    """Endpoint URL of an in-memory kinesalite on 127.0.0.1, for the whole session."""
    peer, endpoint = start_kinesalite(tmp_path_factory.mktemp("kinesalite"))
    try:
        yield endpoint
    finally:
        peer.stop(check=False)


def moto_server_path() -> Path:
    """moto_server from the interpreter's own environment (tests/.venv)."""
    path = Path(sys.executable).parent / "moto_server"
    if not path.exists():
        raise RuntimeError(f"{path} not found: run tests/install.sh and use tests/.venv/bin/python")
    return path


# The calls moto_iam_admin makes before IAM is enforced.
MOTO_SETUP_CALLS = 3


def start_moto_server(workdir: Path, host: str = "127.0.0.1",
                      enforce_iam: bool = False) -> tuple[ChildProcess, str]:
    """Starts moto_server on ``host``, on a port the OS picks (werkzeug logs the one it bound),
    with its call recorder writing into ``workdir``; returns the peer (stop it with
    ``stop(check=False)``) and its endpoint URL once it answers.

    With ``enforce_iam``, moto authenticates every call and evaluates IAM policies, as AWS
    does (peers/moto_iam.py), after the first MOTO_SETUP_CALLS: make them with
    ``moto_iam_admin`` and use the admin credentials it returns for the rest of the setup."""
    env = child_env(workdir, MOTO_RECORDER_FILEPATH=str(workdir / "recording.jsonl"))
    command = [str(moto_server_path()), "-H", host, "-p", "0"]
    if enforce_iam:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(MOTO_SETUP_CALLS)
        command = [sys.executable, str(PEERS_DIR / "moto_iam.py"), "-H", host, "-p", "0"]
    peer = ChildProcess("moto_server", workdir / "moto.log").spawn(command, env=env, cwd=workdir)
    bound = re.compile(r"Running on http://" + re.escape(host) + r":(\d+)")

    def logged_port() -> int | None:
        peer.check_running()
        match = bound.search(peer.logs())
        return int(match.group(1)) if match else None
    try:
        port = wait_for(logged_port, PEER_START_TIMEOUT, "moto_server to log the port it bound")
        endpoint = f"http://{host}:{port}"
        wait_for(lambda: peer.check_running() or _answers_http(f"{endpoint}/moto-api/data.json"),
                 PEER_START_TIMEOUT, "moto_server to answer /moto-api/data.json")
    except BaseException:
        peer.stop(check=False)
        raise
    return peer, endpoint


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> Iterator[str]:
    """Endpoint URL of a moto server (all services) on 127.0.0.1, for the whole session.

    Its call recorder writes to a file in the fixture's temporary directory.
    """
    peer, endpoint = start_moto_server(tmp_path_factory.mktemp("moto"))
    try:
        yield endpoint
    finally:
        peer.stop(check=False)


def moto_iam_admin(endpoint: str, region: str = "us-east-1") -> dict:
    """On a moto started with ``enforce_iam``: an IAM user allowed everything, made with the
    unauthenticated setup calls; returns boto3 client arguments that act as that user."""
    anonymous = dict(endpoint_url=endpoint, region_name=region,
                     aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="setup")
    iam = boto3.client("iam", **anonymous)
    iam.create_user(UserName="admin")
    iam.put_user_policy(UserName="admin", PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    return dict(endpoint_url=endpoint, region_name=region,
                aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])


# --------------------------------------------------------------------------- moto API


def moto_api(endpoint: str, path: str, method: str = "GET") -> bytes:
    """Call moto's own management API (``/moto-api/...``) and return the body."""
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def moto_reset(endpoint: str) -> None:
    """Forget every resource and every model instance moto holds."""
    moto_api(endpoint, "reset", "POST")


class RecordedCall(NamedTuple):
    """One request that moto's recorder saw."""

    method: str
    url: str
    headers: dict
    body: bytes


def start_recording(endpoint: str) -> None:
    """Clear moto's call recording and start recording."""
    moto_api(endpoint, "recorder/reset-recording", "POST")
    moto_api(endpoint, "recorder/start-recording", "POST")


def stop_recording(endpoint: str) -> list[RecordedCall]:
    """Stop recording and return every request recorded since ``start_recording``."""
    moto_api(endpoint, "recorder/stop-recording", "POST")
    calls = []
    for line in moto_api(endpoint, "recorder/download-recording").decode().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        body = entry.get("body") or ""
        body = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
        calls.append(RecordedCall(entry["method"], entry["url"], entry["headers"], body))
    return calls


class StsCall(NamedTuple):
    action: str
    params: dict  # the form-encoded request parameters, one value each
    call: RecordedCall


class KinesisCall(NamedTuple):
    target: str  # X-Amz-Target, e.g. "Kinesis_20131202.PutRecords"
    call: RecordedCall


def sts_calls(calls: Iterable[RecordedCall], action: str | None = None) -> list[StsCall]:
    """The recorded STS Query-protocol calls (form body with ``Action=``), optionally one action."""
    out = []
    for call in calls:
        if call.headers.get("X-Amz-Target") or call.method != "POST":
            continue
        params = {k: v[0] for k, v in urllib.parse.parse_qs(call.body.decode(errors="replace")).items()}
        if "Action" in params and (action is None or params["Action"] == action):
            out.append(StsCall(params["Action"], params, call))
    return out


def kinesis_calls(calls: Iterable[RecordedCall]) -> list[KinesisCall]:
    """The recorded Kinesis calls (JSON 1.1 protocol, ``X-Amz-Target: Kinesis_20131202.*``)."""
    return [KinesisCall(call.headers["X-Amz-Target"], call) for call in calls
            if call.headers.get("X-Amz-Target", "").startswith("Kinesis_")]


def access_key_of(call: RecordedCall) -> str | None:
    """The access key id a SigV4-signed call was signed with (``Credential=AKID/...``)."""
    match = re.search(r"Credential=([^/,\s]+)/", call.headers.get("Authorization", ""))
    return match.group(1) if match else None


def moto_assumed_roles(endpoint: str) -> list[dict]:
    """The STS sessions moto has issued (AssumeRole and AssumeRoleWithWebIdentity alike).

    Read from moto's backend state dump ``/moto-api/data.json`` (``sts`` → ``AssumedRole``);
    each dict has ``role_arn``, ``session_name``, ``access_key_id``, ``session_token``, ...
    """
    state = json.loads(moto_api(endpoint, "data.json"))
    return state.get("sts", {}).get("AssumedRole", [])


# --------------------------------------------------------------------------- Kinesis helpers


def kinesis_client(endpoint: str, credentials: dict | None = None):
    """A boto3 Kinesis client for an emulator, with dummy static credentials unless
    ``credentials`` (``aws_access_key_id`` and ``aws_secret_access_key``) are given."""
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name=REGION,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        **(credentials or DUMMY_CREDENTIALS),
    )


def create_stream(endpoint: str, name: str, shards: int, credentials: dict | None = None) -> None:
    """Create a provisioned stream with ``shards`` shards and wait until it is ACTIVE."""
    client = kinesis_client(endpoint, credentials)
    client.create_stream(StreamName=name, ShardCount=shards)
    wait_for(
        lambda: client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE",
        60, f"stream {name} to become ACTIVE",
    )


def list_shards(endpoint: str, stream: str, credentials: dict | None = None) -> list[dict]:
    client = kinesis_client(endpoint, credentials)
    shards, token = [], None
    while True:
        response = client.list_shards(NextToken=token) if token else client.list_shards(StreamName=stream)
        shards.extend(response["Shards"])
        token = response.get("NextToken")
        if not token:
            return shards


def shard_ranges(endpoint: str, stream: str) -> dict[str, tuple[int, int]]:
    """{shard_id: (starting_hash_key, ending_hash_key)} as ints, both ends inclusive."""
    return {
        shard["ShardId"]: (int(shard["HashKeyRange"]["StartingHashKey"]),
                           int(shard["HashKeyRange"]["EndingHashKey"]))
        for shard in list_shards(endpoint, stream)
    }


class KinesisRecord(NamedTuple):
    """A record as GetRecords returned it (GetRecords never returns an ExplicitHashKey)."""

    shard_id: str
    sequence_number: str
    partition_key: str
    explicit_hash_key: str | None
    data: bytes


def read_all_records(endpoint: str, stream: str, max_calls_per_shard: int = 10_000,
                     credentials: dict | None = None) -> list[KinesisRecord]:
    """Every record in every shard of ``stream``, read from TRIM_HORIZON to the tip."""
    client = kinesis_client(endpoint, credentials)
    records: list[KinesisRecord] = []
    for shard in list_shards(endpoint, stream, credentials):
        shard_id = shard["ShardId"]
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for _ in range(max_calls_per_shard):
            response = client.get_records(ShardIterator=iterator, Limit=10_000)
            for record in response["Records"]:
                records.append(KinesisRecord(
                    shard_id=shard_id,
                    sequence_number=record["SequenceNumber"],
                    partition_key=record["PartitionKey"],
                    explicit_hash_key=record.get("ExplicitHashKey"),
                    data=record["Data"],
                ))
            caught_up = not response["Records"] and response.get("MillisBehindLatest", 0) == 0
            iterator = response.get("NextShardIterator")
            if caught_up or iterator is None:
                break
        else:
            raise AssertionError(f"shard {shard_id} of {stream}: not caught up after {max_calls_per_shard} GetRecords")
    return records


def partition_key_hash(partition_key: str) -> int:
    """The hash key Kinesis derives from a partition key: MD5 as a big-endian 128-bit int."""
    return int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest(), "big")


# --------------------------------------------------------------------------- deaggregation


class UserRecord(NamedTuple):
    shard_id: str
    partition_key: str
    explicit_hash_key: str | None
    data: bytes


class SubRecord(NamedTuple):
    """A user record inside a KPL aggregate, decoded independently of aws_kinesis_agg."""

    partition_key: str
    explicit_hash_key: str | None  # None when the sub-record has no explicit_hash_key_index
    data: bytes


def parse_aggregate(data: bytes) -> list[SubRecord] | None:
    """Decode a KPL aggregated record strictly; None when ``data`` is not one (no magic).

    Unlike aws_kinesis_agg, which passes a damaged aggregate through as one plain record,
    this fails loudly on a bad MD5, bad protobuf or an out-of-range key index. Explicit hash
    key presence is read from the field itself (as the KCL does), not from a default of 0.
    """
    if not data.startswith(MAGIC):
        return None
    body, digest = data[len(MAGIC):-MD5_SIZE], data[-MD5_SIZE:]
    assert len(data) > len(MAGIC) + MD5_SIZE, f"aggregate of {len(data)} bytes is too short"
    assert hashlib.md5(body).digest() == digest, "aggregate's trailing MD5 does not match its protobuf bytes"
    aggregate = messages_pb2.AggregatedRecord()
    aggregate.ParseFromString(body)  # raises DecodeError on bad protobuf
    pks, ehks = aggregate.partition_key_table, aggregate.explicit_hash_key_table
    subs = []
    for i, record in enumerate(aggregate.records):
        assert record.partition_key_index < len(pks), f"sub-record {i}: partition_key_index out of range"
        ehk = None
        if record.HasField("explicit_hash_key_index"):
            assert record.explicit_hash_key_index < len(ehks), f"sub-record {i}: explicit_hash_key_index out of range"
            ehk = ehks[record.explicit_hash_key_index]
        subs.append(SubRecord(pks[record.partition_key_index], ehk, record.data))
    assert subs, "aggregate holds no user records"
    return subs


def _lambda_shaped(record: KinesisRecord) -> dict:
    """A record in the shape aws_kinesis_agg expects (a Lambda Kinesis event record)."""
    kinesis = {
        "kinesisSchemaVersion": "1.0",
        "sequenceNumber": record.sequence_number,
        "partitionKey": record.partition_key,
        "approximateArrivalTimestamp": 0,
        "data": base64.b64encode(record.data).decode("ascii"),
    }
    if record.explicit_hash_key is not None:
        kinesis["explicitHashKey"] = record.explicit_hash_key
    return {"kinesis": kinesis}


def deaggregate_python(records: Iterable[KinesisRecord]) -> list[UserRecord]:
    """User records per PyPI aws_kinesis_agg, cross-checked record by record.

    Each aggregate is also decoded by :func:`parse_aggregate` (MD5 verified, loud on
    damage) and the library must yield exactly the same sub-records, so its silent
    pass-through of a bad aggregate cannot hide a broken record.
    """
    out: list[UserRecord] = []
    for record in records:
        expected = parse_aggregate(record.data)
        users = list(iter_deaggregate_records([_lambda_shaped(record)]))
        got = [(u["kinesis"]["partitionKey"], base64.b64decode(u["kinesis"]["data"])) for u in users]
        where = f"shard {record.shard_id} sequence {record.sequence_number}"
        if expected is None:
            assert got == [(record.partition_key, record.data)], f"{where}: plain record changed by deaggregation"
            out.append(UserRecord(record.shard_id, record.partition_key, record.explicit_hash_key, record.data))
            continue
        assert len(got) == len(expected), f"{where}: aws_kinesis_agg yielded {len(got)} user records, aggregate holds {len(expected)}"
        assert got == [(s.partition_key, s.data) for s in expected], f"{where}: aws_kinesis_agg disagrees with the aggregate's contents"
        # The library reports ehk_table[0] for a sub-record without an index; take presence
        # from the field itself.
        out.extend(UserRecord(record.shard_id, s.partition_key, s.explicit_hash_key, s.data) for s in expected)
    return out


def deaggregate_node(records: Iterable[KinesisRecord]) -> list[UserRecord]:
    """User records per npm aws-kinesis-agg (``peers/deagg.js``, checksums verified)."""
    lines = "".join(
        json.dumps({
            "shard_id": r.shard_id,
            "sequence_number": r.sequence_number,
            "partition_key": r.partition_key,
            "explicit_hash_key": r.explicit_hash_key,
            "data": base64.b64encode(r.data).decode("ascii"),
        }) + "\n"
        for r in records
    )
    result = subprocess.run(
        ["node", str(PEERS_DIR / "deagg.js")],
        input=lines.encode(), capture_output=True, cwd=TESTS_DIR, timeout=300,
    )
    if result.returncode != 0:
        raise AssertionError(f"deagg.js failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
    out = []
    for line in result.stdout.decode().splitlines():
        if line.strip():
            user = json.loads(line)
            out.append(UserRecord(user["shard_id"], user["partition_key"], user["explicit_hash_key"],
                                  base64.b64decode(user["data"])))
    return out


# --------------------------------------------------------------------------- the exporter


def cargo_target_dir() -> Path:
    """Where cargo builds: $CARGO_TARGET_DIR (CI keeps it outside the work tree), else target/."""
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO_DIR / "target")


BINARY_OVERRIDES = {"kinesis-exporter": "KINESIS_EXPORTER_BIN", "kinesis-operator": "KEX_OPERATOR_BIN"}


def built_binary(name: str) -> Path:
    """A binary of the workspace: $KINESIS_EXPORTER_BIN / $KEX_OPERATOR_BIN, else debug/NAME
    in cargo's target directory; raises with how to get it when it is missing."""
    variable = BINARY_OVERRIDES[name]
    path = Path(os.environ.get(variable) or cargo_target_dir() / "debug" / name)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"{name} not found at {path}: run `make build` (cargo build "
                                f"--workspace) or set {variable}")
    return path


@pytest.fixture(scope="session")
def exporter_bin() -> Path:
    """The kinesis-exporter binary (see :func:`built_binary`)."""
    try:
        return built_binary("kinesis-exporter")
    except FileNotFoundError as err:
        pytest.fail(str(err), pytrace=False)


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a child process of the tests: PATH, HOME in the test's own
    directory, no AWS profile or credentials file of the developer's, backtraces on; plus
    ``extra``."""
    missing = str(home / "no-such-aws-file")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "RUST_BACKTRACE": "1",
        **extra,
    }


def write_config(path: Path, stream: str, endpoint: str, role: str | None = None,
                 region: str = REGION, **kpl: int) -> Path:
    """Write an exporter config for one Kinesis stream; ``kpl`` keys go under ``kpl:``."""
    kpl.setdefault("flush_interval_seconds", 1)
    lines = [
        "exporters:",
        "  kinesis:",
        "    aws:",
        f"      stream_name: {stream}",
        f"      region: {region}",
        f"      kinesis_endpoint: {endpoint}",
    ]
    if role:
        lines.append(f"      role: {role}")
    lines.append("    kpl:")
    lines.extend(f"      {key}: {value}" for key, value in kpl.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class PutResult(NamedTuple):
    returncode: int
    summary: dict | None
    stderr: str


def run_put(exporter_bin: Path, config_path: Path, records: Iterable[dict], env: dict | None = None,
            timeout: float = PUT_TIMEOUT) -> PutResult:
    """Run ``kinesis-exporter put --config CONFIG`` with ``records`` on stdin.

    Each record is ``{"partition_key": str, "data": bytes, "explicit_hash_key": int|str}``
    (the last optional). The child gets a clean environment: PATH, HOME, AWS config files
    pointing nowhere, IMDS disabled, plus ``env``. Returns (returncode, the parsed summary
    line or None if stdout is not exactly one JSON line, stderr).
    """
    missing = str(config_path.parent / "no-such-aws-file")
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/nonexistent"),
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        # Never let the credential chain reach for the EC2 metadata service (off-host address).
        "AWS_EC2_METADATA_DISABLED": "true",
        "RUST_BACKTRACE": "1",
    }
    child_env.update(env or {})
    stdin = "".join(_put_line(record) for record in records).encode()
    result = subprocess.run(
        [str(exporter_bin), "put", "--config", str(config_path)],
        input=stdin, capture_output=True, env=child_env, timeout=timeout,
    )
    stdout = result.stdout.decode(errors="replace").strip()
    stderr = result.stderr.decode(errors="replace")
    summary = None
    if stdout and "\n" not in stdout:
        try:
            summary = json.loads(stdout)
        except json.JSONDecodeError:
            pass
    if summary is None:
        stderr = f"[run_put: stdout was not one JSON line: {stdout[:2000]!r}]\n{stderr}"
    return PutResult(result.returncode, summary, stderr)


def _put_line(record: dict) -> str:
    line = {
        "partition_key": record["partition_key"],
        "data": base64.b64encode(record["data"]).decode("ascii"),
    }
    if record.get("explicit_hash_key") is not None:
        line["explicit_hash_key"] = str(record["explicit_hash_key"])
    return json.dumps(line) + "\n"


# --------------------------------------------------------------------------- the exporter, long-running


@pytest.fixture
def exporter_process(exporter_bin, tmp_path):
    """Factory: ``exporter_process(exporters, pipelines=..., grpc_options=..., ...)``.

    Writes a Collector-style config with free 127.0.0.1 ports (gRPC, HTTP, telemetry), starts
    ``kinesis-exporter --config FILE --log-format json``, waits for ``/readyz`` (or
    ``ready_path``; ``ready_path=None`` skips the wait) and returns the
    :class:`otlp_helpers.ExporterProcess`. At teardown every exporter still running gets
    SIGTERM and must exit 0 within 30 s; its log is shown otherwise.
    """
    from otlp_helpers import ExporterProcess  # OTel packages only load for the tests that use them

    started: list[ExporterProcess] = []

    def start(exporters: dict, *, ready_path: str | None = "/readyz", **kwargs) -> ExporterProcess:
        proc = ExporterProcess(exporter_bin, tmp_path / "exporter", exporters,
                               name=f"exporter-{len(started)}", **kwargs)
        started.append(proc)
        proc.start()
        if ready_path:
            proc.wait_ready(ready_path)
        return proc

    yield start
    failures = []
    for proc in started:
        try:
            proc.stop()
        except AssertionError as err:
            failures.append(str(err))
        finally:
            proc.kill()
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)
