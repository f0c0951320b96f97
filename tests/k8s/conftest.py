"""Fixtures for the Kubernetes end-to-end tests: a real local control plane.

``controlplane.sh up`` starts etcd, kube-apiserver (TLS, RBAC, PodSecurity, service-account
token signing), kube-controller-manager, kube-scheduler and kwok with two fake nodes, all on
127.0.0.1; ``controlplane.sh down`` stops them. The binaries are built from the Go module
proxy on first use and cached outside the work tree (see ``controlplane.sh``), so the first
run takes tens of minutes on 2 cores and later runs start in seconds.

These tests are kept out of the main ``tests/`` run: they are collected only when
``tests/k8s`` (or a file in it) is named on the command line, or with KEX_K8S_E2E=1::

    tests/.venv/bin/python -m pytest tests/k8s
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from .k8s_helpers import CONTROLPLANE_SH, Cluster

# The operator suites' fixtures, registered here once so that session-scoped ones (the chart
# release, the operator process) are shared by every test module rather than set up per module.
from .operator_fixtures import (  # noqa: F401  (fixtures are used by name)
    chart_release,
    exporter_bin,
    helm_bin,
    kinesalite,
    make_namespace,
    moto,
    operator,
    operator_log_on_failure,
)

K8S_DIR = Path(__file__).resolve().parent


REAL_NODE_DIR = K8S_DIR / "realnode"


def _requested(config: pytest.Config, folder: Path) -> bool:
    """``folder`` (or something in it) was named on the command line."""
    for arg in config.args:
        path = Path(str(arg).split("::", 1)[0]).resolve()
        if path == folder or folder in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Keep tests/k8s out of a plain ``pytest tests`` run (the build alone takes minutes), and
    the real-node suite (root, a kubelet) out of a ``pytest tests/k8s`` run: each is collected
    only when named."""
    path = Path(collection_path).resolve()
    if REAL_NODE_DIR == path or REAL_NODE_DIR in path.parents:
        return True if not _requested(config, REAL_NODE_DIR) else None
    if K8S_DIR in path.parents and not (os.environ.get("KEX_K8S_E2E") == "1" or _requested(config, K8S_DIR)):
        return True
    return None


def _run_streaming(request: pytest.FixtureRequest, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run controlplane.sh with its progress lines shown live (the first build takes minutes)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with ctx:
        return subprocess.run(args, stdout=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def k8s_cluster(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("k8s-controlplane")
    # Registered before `up`, so a half-started control plane is stopped too.
    request.addfinalizer(lambda: subprocess.run(
        [str(CONTROLPLANE_SH), "down", str(state)], capture_output=True, text=True))
    up = _run_streaming(request, [str(CONTROLPLANE_SH), "up", str(state)])
    if up.returncode != 0:
        logs = "\n".join(
            f"--- {p.name} (last 20 lines)\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:])
            for p in sorted((state / "logs").glob("*.log"))) if (state / "logs").is_dir() else ""
        pytest.fail(f"controlplane.sh up failed ({up.returncode}); logs in {state}/logs\n{logs}")
    yield Cluster.from_state(state)
