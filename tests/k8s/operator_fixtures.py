"""Fixtures for the operator end-to-end tests (``test_operator.py``).

* ``chart_release``: the chart in ``charts/kinesis-operator`` installed by the real helm into
  ``kex-system`` (replicaCount 1, exporter image kinesis-exporter:test; its operator pod "runs"
  on a kwok node), with its RBAC and admission policies.
* ``operator``: ``target/debug/kinesis-operator`` (or ``$KEX_OPERATOR_BIN``) as a LOCAL
  process with the arguments of the chart's Deployment (tenancy flags included) and a
  kubeconfig holding a token of the chart's ServiceAccount, so every call it makes is
  authorised by the chart's RBAC and checked by its admission policies. Stopped with SIGTERM at the end of the session (it must
  exit 0); its log is printed under each failing test (``operator_log_on_failure``).
* ``kinesalite``, ``moto``, ``exporter_bin``: the main suite's fixtures from tests/conftest.py,
  re-exported. tests/ is on sys.path (tests/k8s is a package, so pytest puts its parent
  there) and tests/conftest.py is importable as ``conftest`` without being loaded as this
  run's conftest, so collection stays as tests/k8s/conftest.py arranges it.

tests/k8s/conftest.py registers these fixtures once for every module under tests/k8s.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
import yaml

# Re-exported fixtures of the main suite (see the module docstring).
from conftest import ChildProcess, built_binary, child_env, exporter_bin, kinesalite, moto  # noqa: F401

from .k8s_helpers import CHART_DIR, OPERATOR_NAMESPACE, RELEASE, Cluster, helm, poll
from .k8s_helpers import make_namespace as create_namespace

K8S_DIR = Path(__file__).resolve().parent
EXPORTER_IMAGE = "kinesis-exporter:test"


# --------------------------------------------------------------------------- helm + chart


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """The cached helm binary (tests/k8s/tools.sh builds it once)."""
    try:
        return ensure_helm()
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)


def ensure_helm() -> str:
    """The path of the cached helm binary, built by tests/k8s/tools.sh on first use."""
    proc = subprocess.run(["bash", str(K8S_DIR / "tools.sh"), "ensure_helm"],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"tools.sh ensure_helm failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


class ChartRelease(NamedTuple):
    name: str
    namespace: str
    service_account: str
    cluster_role: str
    manifest: list  # the rendered objects helm installed
    install_seconds: float

    def operator_args(self) -> list[str]:
        return chart_operator_args(self.manifest)


def chart_operator_args(manifest: list[dict]) -> list[str]:
    """The arguments the chart (as rendered in ``manifest``) gives its operator container."""
    (deployment,) = [d for d in manifest if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.fixture(scope="session")
def chart_release(k8s_cluster: Cluster, helm_bin: str) -> Iterator[ChartRelease]:
    """``helm install kex charts/kinesis-operator -n kex-system --set replicaCount=1 --wait``,
    with the exporter image these tests use."""
    start = time.monotonic()
    repository, tag = EXPORTER_IMAGE.split(":")
    helm(helm_bin, k8s_cluster, "install", RELEASE, str(CHART_DIR), "--namespace", OPERATOR_NAMESPACE,
         "--create-namespace", "--set", "replicaCount=1", "--set", f"exporterImage.repository={repository}",
         "--set", f"exporterImage.tag={tag}", "--wait", "--timeout", "3m")
    took = time.monotonic() - start
    manifest = [doc for doc in yaml.safe_load_all(
        helm(helm_bin, k8s_cluster, "get", "manifest", RELEASE, "-n", OPERATOR_NAMESPACE).stdout) if doc]
    by_kind: dict[str, list[dict]] = {}
    for doc in manifest:
        by_kind.setdefault(doc["kind"], []).append(doc)
    accounts = by_kind.get("ServiceAccount", [])
    roles = by_kind.get("ClusterRole", [])
    assert len(accounts) == 1, f"the chart should render one ServiceAccount, got {accounts}"
    assert len(roles) == 1, f"the chart (cluster-wide mode) should render one ClusterRole, got {roles}"
    yield ChartRelease(RELEASE, OPERATOR_NAMESPACE, accounts[0]["metadata"]["name"],
                       roles[0]["metadata"]["name"], manifest, took)
    subprocess.run([helm_bin, "--kubeconfig", str(k8s_cluster.kubeconfig), "uninstall", RELEASE,
                    "-n", OPERATOR_NAMESPACE], capture_output=True, text=True, timeout=120)


def token_kubeconfig(path: Path, cluster: Cluster, token: str, user: str) -> Path:
    """A self-contained kubeconfig: the apiserver, its CA, and a bearer token."""
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kex-test", "cluster": {
            "server": cluster.server,
            "certificate-authority-data": base64.b64encode(cluster.ca_file.read_bytes()).decode(),
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kex-test", "context": {"cluster": "kex-test", "user": user}}],
        "current-context": "kex-test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- the operator


class OperatorProcess(ChildProcess):
    """``kinesis-operator`` running locally with a ServiceAccount-token kubeconfig."""

    def __init__(self, binary: Path, kubeconfig: Path, workdir: Path, chart_args: list[str]):
        super().__init__("kinesis-operator", workdir / "operator.log")
        self.binary = binary
        self.chart_args = chart_args
        self.kubeconfig = kubeconfig
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The metrics port the operator logged it bound (it is started on port 0)."""
        if self._port is None:
            def logged():
                self.check_running()
                return next((int(r["address"].rsplit(":", 1)[1]) for r in self.records()
                             if r.get("message", "").startswith("serving /metrics")), None)
            self._port = poll("kinesis-operator to log its metrics address", logged, timeout=60, interval=0.1)
        return self._port

    @property
    def argv(self) -> list[str]:
        """The chart's arguments, with the metrics address moved to a free local port."""
        args = list(self.chart_args)
        args[args.index("--metrics-address") + 1] = "127.0.0.1:0"
        return [str(self.binary), *args]

    def start(self) -> "OperatorProcess":
        env = child_env(
            self.log_path.parent,
            KUBECONFIG=str(self.kubeconfig),
            POD_NAMESPACE=OPERATOR_NAMESPACE,
            # info, plus the controller's per-object "reconciled" lines (the tests count them).
            RUST_LOG=os.environ.get("KEX_OPERATOR_RUST_LOG", "info,kinesis_operator=debug"),
        )
        return self.spawn(self.argv, env=env)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def records(self, since: int = 0) -> list[dict]:
        """The JSON log lines written after byte offset ``since`` (other lines skipped)."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, ""
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 60) -> None:
        def ready():
            self.check_running()
            return self._get("/readyz")[0] == 200
        poll("kinesis-operator /readyz", ready, timeout=timeout, interval=0.25)

    def metrics_text(self) -> str:
        self.check_running()
        status, text = self._get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return text

    def child_applies(self, result: str) -> float:
        """kinesis_operator_child_applies_total{result=...}, summed over kinds."""
        pattern = re.compile(r'^kinesis_operator_child_applies_total\{(.*)\}\s+(\S+)', re.M)
        return sum(float(value) for labels, value in pattern.findall(self.metrics_text())
                   if f'result="{result}"' in labels)

    def reconciliations(self, result: str = "ok") -> float:
        """kinesis_operator_reconciliations_total{result=...} (0 before the first one)."""
        pattern = re.compile(r'^kinesis_operator_reconciliations_total\{result="%s"\}\s+(\S+)' % re.escape(result), re.M)
        match = pattern.search(self.metrics_text())
        return float(match.group(1)) if match else 0.0


class RunningOperator(NamedTuple):
    process: OperatorProcess
    kubeconfig: Path        # the ServiceAccount-token kubeconfig the operator uses
    username: str           # who the apiserver says that token is
    start_seconds: float


def operator_bin() -> Path:
    try:
        return built_binary("kinesis-operator")
    except FileNotFoundError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def operator(k8s_cluster: Cluster, chart_release: ChartRelease,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    """The operator as a local process, authenticated as the chart's ServiceAccount."""
    workdir = tmp_path_factory.mktemp("operator")
    token = k8s_cluster.kubectl("-n", chart_release.namespace, "create", "token",
                                chart_release.service_account, "--duration", "2h").stdout.strip()
    kubeconfig = token_kubeconfig(workdir / "kubeconfig", k8s_cluster, token, chart_release.service_account)
    whoami = subprocess.run([k8s_cluster.kubectl_bin, "--kubeconfig", str(kubeconfig), "auth", "whoami",
                             "-o", "json"], capture_output=True, text=True, timeout=30)
    assert whoami.returncode == 0, whoami.stderr
    username = json.loads(whoami.stdout)["status"]["userInfo"]["username"]

    process = OperatorProcess(operator_bin(), kubeconfig, workdir, chart_release.operator_args())
    start = time.monotonic()
    process.start()
    try:
        process.wait_ready()
    except AssertionError as err:
        process.kill()
        detail = "" if process.proc.poll() is not None and "exited with status" in str(err) \
            else f"\n--- operator log ({process.log_path}):\n{process.logs(8000)}"
        pytest.fail(f"{err}{detail}", pytrace=False)
    yield RunningOperator(process, kubeconfig, username, time.monotonic() - start)
    process.stop()


@pytest.fixture(autouse=False)
def operator_log_on_failure(request: pytest.FixtureRequest, operator: RunningOperator) -> Iterator[None]:
    """Print the operator's log tail when the test failed (shown under 'Captured stdout teardown')."""
    failed_before = request.session.testsfailed
    offset = operator.process.log_size()
    yield
    if request.session.testsfailed > failed_before:
        with open(operator.process.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        print(f"--- kinesis-operator log during this test ({operator.process.log_path}):\n{text[-12000:]}")


# --------------------------------------------------------------------------- namespaces


@pytest.fixture(scope="module")
def make_namespace(k8s_cluster: Cluster):
    """Factory: ``make_namespace(name, restricted=True)`` creates a namespace (labelled for the
    restricted Pod Security Standard) and waits for its default ServiceAccount."""

    def make(name: str, restricted: bool = True) -> str:
        return create_namespace(k8s_cluster, name, restricted)

    return make
