"""End-to-end: the exporter authenticates the way a pod with IRSA does, against moto.

moto plays both STS and Kinesis. `kinesis-exporter put` runs with only the environment a pod
gets from IRSA (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_REGION) plus the STS endpoint.
moto's call recorder shows which STS calls were made and how each Kinesis call was signed;
moto's state dump (/moto-api/data.json, sts.AssumedRole) tells which access key id belongs to
which STS session, so "signed with the web identity (or AssumeRole) credentials" is checked
against what moto actually issued, not guessed.
"""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from conftest import (
    REGION,
    moto_iam_admin,
    start_moto_server,
    access_key_of,
    create_stream,
    deaggregate_python,
    kinesis_calls,
    moto_assumed_roles,
    moto_reset,
    read_all_records,
    run_put,
    start_recording,
    stop_recording,
    sts_calls,
    write_config,
)

WEB_IDENTITY_ROLE = "arn:aws:iam::123456789012:role/exporter"
TARGET_ROLE = "arn:aws:iam::123456789012:role/target"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dGVhbTpleHBvcnRlciJ9.c2ln"


class IrsaRun:
    """What one IRSA `put` run did, as moto saw it."""

    def __init__(self, calls, sessions):
        self.calls = calls
        self.web_identity = sts_calls(calls, "AssumeRoleWithWebIdentity")
        self.assume_role = sts_calls(calls, "AssumeRole")
        self.kinesis = kinesis_calls(calls)
        self.sessions = sessions  # moto's sts.AssumedRole instances

    def session(self, role_arn: str) -> dict:
        matching = [s for s in self.sessions if s["role_arn"] == role_arn]
        assert len(matching) == 1, f"expected one STS session for {role_arn}, moto has {self.sessions}"
        return matching[0]

    def assert_kinesis_signed_by(self, session: dict) -> None:
        assert self.kinesis, "no Kinesis call was recorded"
        targets = Counter(call.target for call in self.kinesis)
        assert targets["Kinesis_20131202.PutRecords"] + targets["Kinesis_20131202.PutRecord"] > 0, targets
        for call in self.kinesis:
            assert access_key_of(call.call) == session["access_key_id"], (
                f"{call.target} signed with {access_key_of(call.call)}, expected the "
                f"{session['role_arn']} session's {session['access_key_id']}")
            assert call.call.headers.get("X-Amz-Security-Token") == session["session_token"], (
                f"{call.target} carries another session token than the {session['role_arn']} session's")


@pytest.fixture
def irsa_put(moto, exporter_bin, tmp_path):
    """Run `put` against moto with only IRSA's environment; return an IrsaRun."""

    def run(role: str | None = None) -> IrsaRun:
        moto_reset(moto)
        stream = f"irsa-{uuid.uuid4().hex[:8]}"
        create_stream(moto, stream, 1)
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        config = write_config(tmp_path / "exporter.yaml", stream, moto, role=role)
        env = {
            "AWS_ROLE_ARN": WEB_IDENTITY_ROLE,
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_STS": moto,
        }
        records = [{"partition_key": f"key-{i % 7}", "data": f"irsa record {i}".encode()} for i in range(50)]

        start_recording(moto)
        try:
            result = run_put(exporter_bin, config, records, env=env)
        finally:
            calls = stop_recording(moto)
        assert result.returncode == 0, f"put exited {result.returncode}: {result.summary}\n{result.stderr}"

        got = Counter((u.partition_key, u.data) for u in deaggregate_python(read_all_records(moto, stream)))
        assert got == Counter((r["partition_key"], r["data"]) for r in records)
        return IrsaRun(calls, moto_assumed_roles(moto))

    return run


def assert_one_web_identity_call(run: IrsaRun) -> None:
    assert len(run.web_identity) == 1, (
        f"expected one AssumeRoleWithWebIdentity call, got {len(run.web_identity)} "
        "(credentials should be cached for the run)")
    params = run.web_identity[0].params
    assert params["WebIdentityToken"] == TOKEN
    assert params["RoleArn"] == WEB_IDENTITY_ROLE


def test_web_identity_credentials_sign_kinesis_calls(irsa_put):
    run = irsa_put()
    assert_one_web_identity_call(run)
    assert run.assume_role == [], "no aws.role configured, yet AssumeRole was called"
    run.assert_kinesis_signed_by(run.session(WEB_IDENTITY_ROLE))


def test_role_is_assumed_with_web_identity_credentials(irsa_put):
    run = irsa_put(role=TARGET_ROLE)
    assert_one_web_identity_call(run)
    assert len(run.assume_role) == 1, f"expected one AssumeRole call, got {len(run.assume_role)}"
    assume = run.assume_role[0]
    assert assume.params["RoleArn"] == TARGET_ROLE
    assert run.calls.index(assume.call) > run.calls.index(run.web_identity[0].call), \
        "AssumeRole came before AssumeRoleWithWebIdentity"
    web_session = run.session(WEB_IDENTITY_ROLE)
    assert access_key_of(assume.call) == web_session["access_key_id"], \
        "AssumeRole was not signed with the web identity credentials"
    run.assert_kinesis_signed_by(run.session(TARGET_ROLE))


def test_role_equal_to_web_identity_role_is_not_assumed_again(irsa_put):
    run = irsa_put(role=WEB_IDENTITY_ROLE)
    assert_one_web_identity_call(run)
    assert run.assume_role == [], "aws.role equals AWS_ROLE_ARN, yet AssumeRole was called"
    run.assert_kinesis_signed_by(run.session(WEB_IDENTITY_ROLE))


@pytest.fixture(scope="module")
def iam_moto(tmp_path_factory):
    """moto authenticating every call (peers/moto_iam.py); yields (endpoint, admin credentials)."""
    peer, endpoint = start_moto_server(tmp_path_factory.mktemp("moto-iam"), enforce_iam=True)
    try:
        admin = moto_iam_admin(endpoint)
        yield endpoint, {k: admin[k] for k in ("aws_access_key_id", "aws_secret_access_key")}
    finally:
        peer.stop(check=False)


def test_moto_checks_the_signature_of_every_kinesis_call(iam_moto, exporter_bin, tmp_path):
    """PutRecords is signed by the exporter itself (aws-sigv4 over the body it wrote, without
    the SDK's orchestrator): moto, authenticating every call as AWS does, accepts it with the
    right secret and refuses it with a wrong one."""
    endpoint, admin = iam_moto
    stream = f"signed-{uuid.uuid4().hex[:8]}"
    create_stream(endpoint, stream, 2, credentials=admin)
    config = write_config(tmp_path / "exporter.yaml", stream, endpoint)
    records = [{"partition_key": f"key-{i % 5}", "data": f"signed record {i}".encode()} for i in range(40)]
    as_admin = {"AWS_ACCESS_KEY_ID": admin["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": admin["aws_secret_access_key"], "AWS_REGION": REGION}

    result = run_put(exporter_bin, config, records, env=as_admin)
    assert result.returncode == 0, f"put exited {result.returncode}: {result.summary}\n{result.stderr}"
    assert result.summary["put_records_calls"] >= 1, result.summary
    stored = deaggregate_python(read_all_records(endpoint, stream, credentials=admin))
    assert Counter((u.partition_key, u.data) for u in stored) == \
        Counter((r["partition_key"], r["data"]) for r in records)

    wrong_secret = dict(as_admin, AWS_SECRET_ACCESS_KEY="not-" + admin["aws_secret_access_key"])
    result = run_put(exporter_bin, config, records[:3], env=wrong_secret)
    assert result.returncode != 0, f"a wrong secret was accepted: {result.summary}"
    # The PutRecords call itself was made and refused, for its signature.
    assert result.summary["put_records_calls"] >= 1, result.summary
    assert result.summary["dropped"] == {"permanent_error": 3}, result.summary
    assert "SignatureDoesNotMatch" in result.stderr, result.stderr[-3000:]
    assert len(deaggregate_python(read_all_records(endpoint, stream, credentials=admin))) == len(records)
