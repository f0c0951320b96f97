"""Fixtures for the real-node suite: a kubelet + containerd node joined to the test control
plane, the exporter and operator images built here and imported into it, the chart installed
with its operator running as real pods, and the AWS peers on the node's bridge address.

Run as root with ``tests/.venv/bin/python -m pytest tests/k8s/realnode`` after ``make images``
(``make test-node`` does both). The node comes up once per session; a finalizer takes it down.
"""

from __future__ import annotations

import os
from typing import Iterator, NamedTuple

import pytest

from conftest import start_kinesalite, start_moto_server

from ..k8s_helpers import OPERATOR_NAMESPACE, Cluster
from . import platform
from .platform import RealNode


@pytest.fixture(scope="session")
def real_node(request: pytest.FixtureRequest, k8s_cluster: Cluster) -> Iterator[RealNode]:
    if os.geteuid() != 0:
        pytest.fail("the real-node suite needs root (containers, a bridge, iptables)", pytrace=False)
    request.addfinalizer(lambda: platform.node_sh("down", timeout=300))
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        try:
            node = platform.node_up(k8s_cluster)
        except RuntimeError as err:
            pytest.fail(str(err), pytrace=False)
    yield node


@pytest.fixture(scope="session")
def images(real_node: RealNode) -> dict:
    try:
        return platform.load_images()
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)


class BridgePeers(NamedTuple):
    kinesis: str   # kinesalite endpoint on the node's bridge address
    sts: str       # moto (STS) endpoint on the node's bridge address


@pytest.fixture(scope="session")
def bridge_peers(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgePeers]:
    """kinesalite and moto listening on the bridge, where pods (and only they and we) reach them."""
    kinesalite, kinesis = start_kinesalite(tmp_path_factory.mktemp("kinesalite-bridge"), real_node.ip)
    try:
        moto, sts = start_moto_server(tmp_path_factory.mktemp("moto-bridge"), real_node.ip)
    except BaseException:
        kinesalite.stop(check=False)
        raise
    yield BridgePeers(kinesis, sts)
    moto.stop(check=False)
    kinesalite.stop(check=False)


@pytest.fixture(scope="session")
def iam_moto(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto with IAM enforced (peers/moto_iam.py) on the bridge: STS and Kinesis where a role
    may do only what its policies allow."""
    moto, endpoint = start_moto_server(tmp_path_factory.mktemp("moto-iam"), real_node.ip, enforce_iam=True)
    yield endpoint
    moto.stop(check=False)


@pytest.fixture(scope="session")
def operator_release(k8s_cluster: Cluster, real_node: RealNode, images: dict, helm_bin: str,  # noqa: F811
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The chart's operator as two real pods; yields its namespace."""
    platform.install_operator(helm_bin, k8s_cluster, real_node, tmp_path_factory.mktemp("chart"))
    yield OPERATOR_NAMESPACE
    platform.uninstall_operator(helm_bin, k8s_cluster)
