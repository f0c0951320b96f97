"""Tests of the test harness itself, without the exporter.

They prove the peers start and answer, that both official deaggregators read back what the
reference Python aggregator (aws_kinesis_agg.RecordAggregator) wrote through kinesalite,
that a damaged aggregate fails loudly, and that moto's recorder plus its state dump reveal
the access key an STS web identity session was given (the method test_irsa_moto relies on).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter

import boto3
import pytest
from aws_kinesis_agg.aggregator import RecordAggregator

from conftest import (
    DUMMY_CREDENTIALS,
    KinesisRecord,
    REGION,
    create_stream,
    deaggregate_node,
    deaggregate_python,
    kinesis_client,
    moto_assumed_roles,
    moto_reset,
    parse_aggregate,
    partition_key_hash,
    read_all_records,
    shard_ranges,
    start_recording,
    stop_recording,
    access_key_of,
    kinesis_calls,
    sts_calls,
)


def _aggregate(user_records):
    """KPL aggregates of ``user_records`` [(pk, data, ehk|None)] by the reference aggregator."""
    aggregator = RecordAggregator()
    aggregates = []
    for pk, data, ehk in user_records:
        full = aggregator.add_user_record(pk, data, ehk)
        if full is not None:
            aggregates.append(full.get_contents())
    last = aggregator.clear_and_get()
    if last is not None:
        aggregates.append(last.get_contents())
    return aggregates


def test_kinesalite_and_both_deaggregators_agree(kinesalite):
    rng = random.Random(7)
    stream = f"harness-{uuid.uuid4().hex[:8]}"
    create_stream(kinesalite, stream, 4)
    ranges = shard_ranges(kinesalite, stream)
    assert len(ranges) == 4

    user_records = [(f"pk-{rng.randrange(50)}", rng.randbytes(rng.randrange(1, 3000)), None)
                    for _ in range(600)]
    # A block of records carrying explicit hash keys, aggregated on their own.
    with_ehk = [(f"ehk-{i}", rng.randbytes(100), str(rng.randrange(2**128))) for i in range(20)]
    plain = [("plain-key", b"not aggregated")]

    client = kinesis_client(kinesalite)
    entries = [
        {"PartitionKey": pk, "Data": data, **({"ExplicitHashKey": ehk} if ehk else {})}
        for pk, ehk, data in _aggregate(user_records) + _aggregate(with_ehk)
    ] + [{"PartitionKey": pk, "Data": data} for pk, data in plain]
    for start in range(0, len(entries), 500):
        response = client.put_records(StreamName=stream, Records=entries[start:start + 500])
        assert response["FailedRecordCount"] == 0

    raw = read_all_records(kinesalite, stream)
    assert len(raw) == len(entries)
    assert len({r.shard_id for r in raw}) > 1, "records should spread over several shards"

    sent = Counter((pk, data) for pk, data, _ in user_records + with_ehk) + Counter(plain)
    py = deaggregate_python(raw)
    node = deaggregate_node(raw)
    assert Counter((u.partition_key, u.data) for u in py) == sent
    assert Counter((u.partition_key, u.data) for u in node) == sent
    assert sorted(py) == sorted(node)

    sent_ehk = {(pk, data): ehk for pk, data, ehk in with_ehk}
    for user in py:
        assert user.explicit_hash_key == sent_ehk.get((user.partition_key, user.data))
    # The shard map covers the whole 128-bit hash key space without gaps or overlaps.
    bounds = sorted(ranges.values())
    assert bounds[0][0] == 0 and bounds[-1][1] == 2**128 - 1
    assert all(prev[1] + 1 == cur[0] for prev, cur in zip(bounds, bounds[1:]))
    assert 0 <= partition_key_hash("plain-key") < 2**128


def test_damaged_aggregate_fails_loudly():
    (pk, _, data), = _aggregate([("k", b"payload-1", None), ("k", b"payload-2", None)])
    assert len(parse_aggregate(data)) == 2
    damaged = data[:-1] + bytes([data[-1] ^ 0xFF])
    record = KinesisRecord("shardId-000000000000", "1", pk, None, damaged)
    with pytest.raises(AssertionError, match="MD5"):
        deaggregate_python([record])
    with pytest.raises(AssertionError, match="checksum"):
        deaggregate_node([record])


def test_moto_reveals_web_identity_access_key(moto, tmp_path):
    """boto3 plays the exporter: web identity -> AssumeRole -> Kinesis, all against moto."""
    moto_reset(moto)
    create_stream(moto, "harness-irsa", 1)
    start_recording(moto)

    sts = boto3.client("sts", endpoint_url=moto, region_name=REGION, **DUMMY_CREDENTIALS)
    web = sts.assume_role_with_web_identity(
        RoleArn="arn:aws:iam::123456789012:role/exporter",
        RoleSessionName="harness",
        WebIdentityToken="header.payload.signature",
    )["Credentials"]
    web_sts = boto3.client(
        "sts", endpoint_url=moto, region_name=REGION,
        aws_access_key_id=web["AccessKeyId"], aws_secret_access_key=web["SecretAccessKey"],
        aws_session_token=web["SessionToken"],
    )
    target = web_sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/target",
                                 RoleSessionName="harness-target")["Credentials"]
    kinesis = boto3.client(
        "kinesis", endpoint_url=moto, region_name=REGION,
        aws_access_key_id=target["AccessKeyId"], aws_secret_access_key=target["SecretAccessKey"],
        aws_session_token=target["SessionToken"],
    )
    kinesis.put_record(StreamName="harness-irsa", PartitionKey="k", Data=b"x")
    calls = stop_recording(moto)

    roles = {role["role_arn"]: role for role in moto_assumed_roles(moto)}
    assert roles["arn:aws:iam::123456789012:role/exporter"]["access_key_id"] == web["AccessKeyId"]
    assert roles["arn:aws:iam::123456789012:role/target"]["access_key_id"] == target["AccessKeyId"]
    assert roles["arn:aws:iam::123456789012:role/target"]["session_token"] == target["SessionToken"]

    web_calls = sts_calls(calls, "AssumeRoleWithWebIdentity")
    assert len(web_calls) == 1
    assert web_calls[0].params["WebIdentityToken"] == "header.payload.signature"
    assert web_calls[0].params["RoleArn"] == "arn:aws:iam::123456789012:role/exporter"
    assume_calls = sts_calls(calls, "AssumeRole")
    assert [access_key_of(c.call) for c in assume_calls] == [web["AccessKeyId"]]

    put_calls = kinesis_calls(calls)
    assert [c.target for c in put_calls] == ["Kinesis_20131202.PutRecord"]
    assert access_key_of(put_calls[0].call) == target["AccessKeyId"]
    assert put_calls[0].call.headers.get("X-Amz-Security-Token") == target["SessionToken"]
