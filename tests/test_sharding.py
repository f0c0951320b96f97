"""Shard-aware aggregation against kinesalite: KCL safety, aggregation ratio, resharding.

KCL 2.x silently drops every sub-record of an aggregate whose hash key lies outside the hash
key range of the shard it was read from. These tests read every shard back, deaggregate with
the official deaggregators and apply exactly that check, on streams of 1, 4 and 16 shards and
across a shard split made while records flow.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from conftest import (
    KINESALITE_ENV,
    create_stream,
    deaggregate_node,
    deaggregate_python,
    kinesis_client,
    parse_aggregate,
    partition_key_hash,
    read_all_records,
    shard_ranges,
    wait_for,
    write_config,
)

RECORD_BYTES = 200


class PutProcess:
    """`kinesis-exporter put` fed over time, so that records flow while the test acts."""

    def __init__(self, exporter_bin: Path, config: Path):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/nonexistent"),
            "AWS_CONFIG_FILE": str(config.parent / "missing"),
            "AWS_SHARED_CREDENTIALS_FILE": str(config.parent / "missing"),
            "AWS_EC2_METADATA_DISABLED": "true",
            **KINESALITE_ENV,
        }
        self.process = subprocess.Popen(
            [str(exporter_bin), "put", "--config", str(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )

    def send(self, records: list[dict]) -> None:
        lines = "".join(
            json.dumps({"partition_key": r["partition_key"],
                        "data": base64.b64encode(r["data"]).decode()}) + "\n"
            for r in records
        )
        self.process.stdin.write(lines.encode())
        self.process.stdin.flush()

    def finish(self) -> tuple[dict, str]:
        stdout, stderr = self.process.communicate(timeout=120)
        stderr_text = stderr.decode(errors="replace")
        assert self.process.returncode == 0, f"put exited {self.process.returncode}:\n{stderr_text}"
        return json.loads(stdout), stderr_text


def make_records(count: int, keys: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    key_names = [f"device-{i:05d}-{rng.getrandbits(24):06x}" for i in range(keys)]
    return [{"partition_key": rng.choice(key_names), "data": rng.randbytes(RECORD_BYTES)}
            for _ in range(count)]


def check_as_a_kcl_consumer(endpoint: str, stream: str, sent: list[dict],
                            misplaced_allowed: bool = False) -> tuple[int, int]:
    """Reads every shard back, deaggregates with both official deaggregators, drops what KCL
    2.x would drop (sub-records outside the range of the shard they were read from) and asserts
    that every sent record is still there. Unless `misplaced_allowed` (a reshard, where the
    producer resends what it misplaced), nothing may be misplaced at all.
    Returns (user records read inside aggregates, Kinesis records)."""
    raw = read_all_records(endpoint, stream)
    ranges = shard_ranges(endpoint, stream)
    aggregated_users = sum(len(subs) for r in raw if (subs := parse_aggregate(r.data)) is not None)
    want = Counter((r["partition_key"], r["data"]) for r in sent)
    for reader, users in (("aws_kinesis_agg", deaggregate_python(raw)),
                          ("aws-kinesis-agg", deaggregate_node(raw))):
        def in_range(user) -> bool:
            start, end = ranges[user.shard_id]
            return start <= partition_key_hash(user.partition_key) <= end
        misplaced = [(u.partition_key, u.shard_id) for u in users if not in_range(u)]
        if not misplaced_allowed:
            assert not misplaced, (f"{reader}: {len(misplaced)} user records outside their shard's "
                                   f"range; KCL would drop them: {misplaced[:5]}")
        kept = Counter((u.partition_key, u.data) for u in users if in_range(u))
        missing = want - kept
        assert not missing, (f"{reader}: {sum(missing.values())} user records missing after the "
                             f"KCL's range check ({len(misplaced)} misplaced)")
    return aggregated_users, len(raw)


@pytest.mark.parametrize("shards", [1, 4, 16])
def test_aggregates_never_mix_shards_and_most_records_travel_aggregated(
        kinesalite, exporter_bin, tmp_path, shards):
    """Default kpl settings, 200-byte records from 2000 keys at a steady rate."""
    stream = f"shards-{shards}-{uuid.uuid4().hex[:8]}"
    create_stream(kinesalite, stream, shards)
    config = write_config(tmp_path / "exporter.yaml", stream, kinesalite, flush_interval_seconds=5)
    records = make_records(count=12_000, keys=2000, seed=shards)

    put = PutProcess(exporter_bin, config)
    for i in range(0, len(records), 1000):  # about 4000 records/s for 3 s
        put.send(records[i:i + 1000])
        time.sleep(0.25)  # pacing the load, not synchronisation
    summary, stderr = put.finish()
    assert f"shards={shards}" in stderr, "the shard map was not loaded"
    assert summary["user_records_delivered"] == len(records)

    aggregated, kinesis_records = check_as_a_kcl_consumer(kinesalite, stream, records)
    ratio = aggregated / len(records)
    print(f"\n{shards} shard(s): {len(records)} user records in {kinesis_records} Kinesis records; "
          f"{ratio:.1%} travelled inside aggregates "
          f"({len(records) / kinesis_records:.1f} user records per Kinesis record)")
    if shards == 4:
        assert ratio >= 0.90, f"only {ratio:.1%} of user records were aggregated"


def test_a_shard_split_while_records_flow_loses_nothing(kinesalite, exporter_bin, tmp_path):
    stream = f"split-{uuid.uuid4().hex[:8]}"
    create_stream(kinesalite, stream, 2)
    config = write_config(tmp_path / "exporter.yaml", stream, kinesalite, flush_interval_seconds=1)
    records = make_records(count=6000, keys=1000, seed=7)
    client = kinesis_client(kinesalite)

    put = PutProcess(exporter_bin, config)
    put.send(records[:3000])
    # Wait until the first records are in the stream under the original shard map.
    wait_for(lambda: len(read_all_records(kinesalite, stream)) > 0, 30, "the first records")

    parent = client.list_shards(StreamName=stream)["Shards"][0]
    start = int(parent["HashKeyRange"]["StartingHashKey"])
    end = int(parent["HashKeyRange"]["EndingHashKey"])
    client.split_shard(StreamName=stream, ShardToSplit=parent["ShardId"],
                       NewStartingHashKey=str((start + end) // 2))
    wait_for(lambda: client.describe_stream_summary(StreamName=stream)
             ["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE", 30, "the split to finish")

    put.send(records[3000:])
    summary, stderr = put.finish()
    assert summary["user_records_delivered"] == len(records), summary
    assert "landed on an unexpected shard" in stderr, "the producer never noticed the split"

    # The aggregates in flight at the split land on a child shard with some sub-records of the
    # other child; KCL drops those, and the producer has resent them: nothing may be missing.
    check_as_a_kcl_consumer(kinesalite, stream, records, misplaced_allowed=True)
