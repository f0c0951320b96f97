#!/usr/bin/env python3
"""`make demo`: the producer and the OTLP ingress end to end against a local Kinesis emulator.

Starts kinesalite on 127.0.0.1, creates a 4-shard stream, pipes ~20000 generated user
records (200 bytes, ~1000 partition keys) into `kinesis-exporter put`, reads every shard
back, deaggregates with the official PyPI aws_kinesis_agg, checks that exactly what was sent
came back, and prints a short summary. Then tests/demo_otlp.py runs the exporter as a
service, sends traces, metrics and logs with the OpenTelemetry SDK over gRPC and HTTP, and
summarises what landed in Kinesis. kinesalite is stopped on exit, whatever happens.

Run with the test venv: tests/.venv/bin/python tests/demo.py (after tests/install.sh and a
cargo build). The binary is $KINESIS_EXPORTER_BIN or target/debug/kinesis-exporter.
"""

from __future__ import annotations

import atexit
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import (  # noqa: E402 - needs the sys.path entry above
    KINESALITE_ENV,
    REGION,
    ChildProcess,
    built_binary,
    create_stream,
    deaggregate_python,
    partition_key_hash,
    read_all_records,
    run_put,
    shard_ranges,
    start_kinesalite as start_test_kinesalite,
    write_config,
)

STREAM = "demo-stream"
SHARDS = 4
USER_RECORDS = 20_000
RECORD_BYTES = 200
PARTITION_KEYS = 1_000


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def make_records(seed: int = 2024) -> list[dict]:
    rng = random.Random(seed)
    keys = [f"device-{i:04d}" for i in range(PARTITION_KEYS)]
    return [{"partition_key": rng.choice(keys), "data": rng.randbytes(RECORD_BYTES)}
            for _ in range(USER_RECORDS)]


def start_kinesalite(workdir: Path) -> tuple[ChildProcess, str]:
    """kinesalite on 127.0.0.1 (the test fixture's starter), stopped at exit."""
    peer, endpoint = start_test_kinesalite(workdir)
    atexit.register(peer.stop, check=False)
    return peer, endpoint


def main() -> int:
    try:
        binary = built_binary("kinesis-exporter")
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="kinesis-exporter-demo-"))

    step("starting kinesalite on 127.0.0.1")
    peer, endpoint = start_kinesalite(workdir)
    finished = False
    try:
        print(f"    kinesalite at {endpoint}")

        step(f"creating stream {STREAM} with {SHARDS} shards")
        create_stream(endpoint, STREAM, SHARDS)

        config = write_config(workdir / "exporter.yaml", STREAM, endpoint, region=REGION,
                              flush_interval_seconds=1)
        records = make_records()
        step(f"kinesis-exporter put: {USER_RECORDS} user records of {RECORD_BYTES} bytes, "
             f"{PARTITION_KEYS} partition keys (config {config})")
        started = time.monotonic()
        put = run_put(binary, config, records, env=KINESALITE_ENV)
        elapsed = time.monotonic() - started
        if put.returncode != 0 or put.summary is None:
            print(f"error: kinesis-exporter put exited {put.returncode}\n{put.stderr[-4000:]}", file=sys.stderr)
            return 1
        print(f"    done in {elapsed:.1f}s; put summary: {json.dumps(put.summary)}")

        step("reading every shard back from TRIM_HORIZON")
        kinesis_records = read_all_records(endpoint, STREAM)

        step("deaggregating with aws_kinesis_agg (the official PyPI deaggregator)")
        users = deaggregate_python(kinesis_records)

        sent = Counter((r["partition_key"], r["data"]) for r in records)
        got = Counter((u.partition_key, u.data) for u in users)
        missing, extra = sent - got, got - sent
        ranges = shard_ranges(endpoint, STREAM)
        misplaced = [u for u in users
                     if not ranges[u.shard_id][0] <= partition_key_hash(u.partition_key) <= ranges[u.shard_id][1]]

        per_shard_kinesis = Counter(r.shard_id for r in kinesis_records)
        per_shard_users = Counter(u.shard_id for u in users)
        aggregated = sum(1 for r in kinesis_records if r.data.startswith(b"\xf3\x89\x9a\xc2"))
        ratio = len(users) / len(kinesis_records) if kinesis_records else 0.0

        print()
        print("Summary")
        print(f"  user records sent       {USER_RECORDS}")
        print(f"  user records read back  {len(users)}")
        print(f"  Kinesis records         {len(kinesis_records)} ({aggregated} KPL aggregates, "
              f"{len(kinesis_records) - aggregated} raw)")
        print(f"  aggregation ratio       {ratio:.0f} user records per Kinesis record")
        print(f"  PutRecords calls        {put.summary.get('put_records_calls')}")
        print(f"  {'shard':<22} {'Kinesis records':>15} {'user records':>13}")
        for shard_id in sorted(ranges):
            print(f"  {shard_id:<22} {per_shard_kinesis[shard_id]:>15} {per_shard_users[shard_id]:>13}")
        print()

        ok = True
        if missing or extra:
            ok = False
            print(f"FAILED: {sum(missing.values())} user records missing, {sum(extra.values())} unexpected")
        if misplaced:
            ok = False
            print(f"FAILED: {len(misplaced)} user records read from a shard their hash key is not in "
                  "(a KCL consumer would drop them)")
        if ok:
            print("OK: every user record came back exactly once, each in the shard its partition key hashes to.")
        print()

        # Part two: the OTLP ingress, on the same kinesalite (tests/demo_otlp.py).
        from demo_otlp import run_otlp_demo
        ok = run_otlp_demo(binary, endpoint, workdir) and ok
        finished = ok
        return 0 if ok else 1
    finally:
        step("stopping kinesalite")
        peer.stop(check=False)
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"    config and kinesalite log kept in {workdir}", file=sys.stderr)


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
