"""End-to-end: `kinesis-exporter put` into kinesalite, read back with both official deaggregators.

For a 1-shard and a 4-shard stream, ~3000 user records of random sizes (some past the
aggregation threshold, one at the 1 MiB record limit) and ~500 partition keys go in through
the exporter's `put` subcommand. Every shard is then read from TRIM_HORIZON and the records
are deaggregated by PyPI aws_kinesis_agg and npm aws-kinesis-agg. Asserted:

* exactly what was sent came back (multiset of (partition key, data): none missing, none extra);
* aggregation happened (fewer Kinesis records than user records), nothing was dropped;
* KCL safety: every user record inside an aggregate hashes into the range of the shard it was
  read from (KCL 2.x silently drops those that do not).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections import Counter

import pytest

from conftest import (
    KINESALITE_ENV,
    create_stream,
    deaggregate_node,
    deaggregate_python,
    parse_aggregate,
    partition_key_hash,
    read_all_records,
    run_put,
    shard_ranges,
    write_config,
)

MIB = 1024 * 1024
AGGREGATION_THRESHOLD = 51200  # kpl.aggregate_batch_size default: records this big go out raw
USER_RECORDS = 3000
PARTITION_KEYS = 500


def make_user_records(seed: int) -> list[dict]:
    """Deterministic test input: sizes 1 B..20 KiB, some past the threshold, one at 1 MiB."""
    rng = random.Random(seed)
    keys = [f"pk-{i}-{rng.getrandbits(32):08x}" for i in range(PARTITION_KEYS)]
    # One partition key in 20 always travels with the same explicit hash key.
    explicit = {key: rng.getrandbits(128) for key in keys[::20]}

    sizes = [rng.randint(1, 20 * 1024) for _ in range(USER_RECORDS - 31)]
    sizes += [rng.randint(AGGREGATION_THRESHOLD, 300 * 1024) for _ in range(30)]
    records = []
    for size in sizes:
        key = rng.choice(keys)
        records.append({"partition_key": key, "data": rng.randbytes(size),
                        "explicit_hash_key": explicit.get(key)})
    # The largest record Kinesis accepts: data + partition key = 1 MiB.
    big_key = keys[1]
    records.append({"partition_key": big_key, "data": rng.randbytes(MIB - len(big_key.encode())),
                    "explicit_hash_key": explicit.get(big_key)})
    rng.shuffle(records)
    return records


def _describe(pk: str, data: bytes) -> str:
    return f"({pk!r}, {len(data)} bytes, md5 {hashlib.md5(data).hexdigest()[:12]})"


def assert_same_records(got: Counter, sent: Counter, reader: str) -> None:
    """Multisets of (partition_key, data) must be equal; report a readable difference."""
    if got == sent:
        return
    missing, extra = sent - got, got - sent
    lines = [f"{reader}: {sum(missing.values())} user records missing, {sum(extra.values())} extra"]
    lines += [f"  missing {_describe(*item)} x{n}" for item, n in list(missing.items())[:10]]
    lines += [f"  extra   {_describe(*item)} x{n}" for item, n in list(extra.items())[:10]]
    raise AssertionError("\n".join(lines))


@pytest.mark.parametrize("shards", [1, 4])
def test_put_roundtrip_through_kinesalite(kinesalite, exporter_bin, tmp_path, shards):
    stream = f"producer-{shards}-{uuid.uuid4().hex[:8]}"
    create_stream(kinesalite, stream, shards)
    config = write_config(tmp_path / "exporter.yaml", stream, kinesalite)
    records = make_user_records(seed=shards)

    result = run_put(exporter_bin, config, records, env=KINESALITE_ENV)

    assert result.summary is not None, result.stderr
    summary = result.summary
    assert result.returncode == 0, f"put exited {result.returncode}: {summary}\n{result.stderr}"
    assert not any(summary.get("dropped", {}).values()), f"records dropped: {summary['dropped']}"
    assert summary["user_records"] == len(records)
    assert summary["kinesis_records"] < summary["user_records"], "no aggregation happened"
    # The producer must have read the shard map (ListShards), not fallen back to safe mode.
    assert f"shards={shards}" in result.stderr and "shard map loaded" in result.stderr, result.stderr

    raw = read_all_records(kinesalite, stream)
    assert len(raw) == summary["kinesis_records"]
    assert summary["put_records_calls"] >= -(-len(raw) // 500)

    sent = Counter((r["partition_key"], r["data"]) for r in records)
    python_users = deaggregate_python(raw)
    node_users = deaggregate_node(raw)
    assert_same_records(Counter((u.partition_key, u.data) for u in python_users), sent, "aws_kinesis_agg (PyPI)")
    assert_same_records(Counter((u.partition_key, u.data) for u in node_users), sent, "aws-kinesis-agg (npm)")

    # ---- KCL-safety property -------------------------------------------------------------
    # KCL 2.x drops, without any error, each sub-record of an aggregate whose effective hash
    # key (its explicit hash key, else MD5 of its partition key) lies outside the hash key
    # range of the shard the aggregate was read from. Every sub-record must be inside.
    ranges = shard_ranges(kinesalite, stream)
    sent_ehk = {r["partition_key"]: r["explicit_hash_key"] for r in records}
    outside = []
    for record in raw:
        start, end = ranges[record.shard_id]
        subs = parse_aggregate(record.data)
        if subs is None:
            # A raw record: GetRecords does not return its ExplicitHashKey; use the one sent.
            ehk = sent_ehk[record.partition_key]
            entries = [(record.partition_key, None if ehk is None else str(ehk))]
        else:
            entries = [(sub.partition_key, sub.explicit_hash_key) for sub in subs]
        for pk, ehk in entries:
            if ehk is not None:
                assert int(ehk) == sent_ehk[pk], f"explicit hash key of {pk!r} changed: {ehk}"
            hash_key = int(ehk) if ehk is not None else partition_key_hash(pk)
            if not start <= hash_key <= end:
                outside.append(f"{pk!r} hash {hash_key} in {record.shard_id} [{start}, {end}]"
                               f" (sequence {record.sequence_number})")
    assert not outside, (f"KCL-safety violated: {len(outside)} user records outside their shard's "
                         f"HashKeyRange; KCL would drop them:\n" + "\n".join(outside[:10]))
