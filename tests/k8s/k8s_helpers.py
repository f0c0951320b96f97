"""Helpers for the Kubernetes end-to-end tests: the cluster handle, a polling helper, and
KinesisExporter manifests and readiness.

Test files import these with ``from .k8s_helpers import ...`` (tests/k8s is a package so
that its conftest.py does not shadow tests/conftest.py, whose helpers the main suite imports
as ``from conftest import ...``).
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Callable, NamedTuple

from conftest import wait_for


REPO_DIR = Path(__file__).resolve().parents[2]
CONTROLPLANE_SH = Path(__file__).resolve().parent / "controlplane.sh"
CHART_DIR = REPO_DIR / "charts" / "kinesis-operator"
RELEASE = "kex"
OPERATOR_NAMESPACE = "kex-system"
RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
GROUP_VERSION = "kinesis.otlp.dev/v1alpha1"
FIELD_MANAGER = "kex-e2e"
# The verbs that change something, as the API server's audit log names them.
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})


def role_for(ns: str) -> str:
    """A role the chart's default tenancy policy allows in ``ns``: under the IAM path ``/ns/``."""
    return f"arn:aws:iam::123456789012:role/{ns}/kinesis-writer"


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines controlplane.sh and node.sh write (env, node.env)."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def jwt_claims(token: str) -> dict:
    """The claims of a JWT (a service-account token), unverified."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class Audit:
    """The requests of ``username`` in the API server's audit log (controlplane.sh logs those of
    the kex-system ServiceAccounts), read incrementally: each read returns what came since."""

    def __init__(self, path: Path, username: str):
        self.path = path
        self.username = username
        self.offset = 0

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        events = []
        for line in data[:end].splitlines():
            event = json.loads(line)
            if event.get("user", {}).get("username") == self.username:
                events.append(event)
        return events


class Cluster(NamedTuple):
    dir: Path
    kubeconfig: Path
    kubectl_bin: str
    server: str
    ca_file: Path
    admin_token: str

    @classmethod
    def from_state(cls, state: Path) -> "Cluster":
        """The cluster `controlplane.sh up STATE` started."""
        env = read_env_file(state / "env")
        return cls(dir=state, kubeconfig=state / "kubeconfig", kubectl_bin=env["KUBECTL"],
                   server=env["KEX_K8S_APISERVER"], ca_file=Path(env["KEX_K8S_CA_FILE"]),
                   admin_token=(state / "admin.token").read_text().strip())

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise with its stderr if ``check`` and it fails."""
        proc = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def poll(what: str, fn: Callable[[], object], timeout: float = 90, interval: float = 0.5):
    """:func:`conftest.wait_for` with the Kubernetes tests' defaults: an error in ``fn`` fails
    at once, and a timeout is a test failure (AssertionError)."""
    try:
        return wait_for(fn, timeout, what, interval, retry_errors=False)
    except TimeoutError as err:
        raise AssertionError(str(err)) from None


def make_namespace(cluster: Cluster, name: str, restricted: bool = True) -> str:
    """Create namespace ``name`` (enforcing the restricted Pod Security Standard unless told
    otherwise) and wait for its default ServiceAccount, which pods need to be admitted."""
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": name, "labels": RESTRICTED_LABELS if restricted else {}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(ns))
    poll(f"ServiceAccount default in {name}",
         lambda: cluster.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0,
         timeout=60)
    return name


def helm(helm_bin: str, cluster: Cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run helm against ``cluster``; raise with its output if it fails."""
    proc = subprocess.run([helm_bin, "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


# --------------------------------------------------------------------------- KinesisExporters


def kex_manifest(ns: str, name: str, stream: str, **spec) -> dict:
    aws = {"streamName": stream, "region": "eu-west-1", "role": role_for(ns), **spec.pop("aws", {})}
    return {"apiVersion": GROUP_VERSION, "kind": "KinesisExporter",
            "metadata": {"name": name, "namespace": ns}, "spec": {"aws": aws, **spec}}


def apply(cluster: Cluster, manifest: dict, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Server-side apply with one field manager, so re-applying the same manifest is a no-op."""
    return cluster.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
                           input=json.dumps(manifest), check=check)


def get_kex(cluster: Cluster, ns: str, name: str) -> dict:
    return cluster.get_json("-n", ns, "kinesisexporter", name)


def conditions(kex: dict) -> dict[str, dict]:
    return {c["type"]: c for c in kex.get("status", {}).get("conditions", [])}


def is_ready(kex: dict, generation: int | None = None) -> bool:
    """Ready=True, Progressing=False, Degraded=False, for the resource's current generation."""
    gen = kex["metadata"]["generation"]
    status = kex.get("status") or {}
    conds = conditions(kex)
    return (status.get("observedGeneration") == gen
            and (generation is None or gen == generation)
            and conds.get("Ready", {}).get("status") == "True"
            and conds.get("Progressing", {}).get("status") == "False"
            and conds.get("Degraded", {}).get("status") == "False"
            and all(c.get("observedGeneration") == gen for c in conds.values()))


def degraded(cluster: Cluster, ns: str, name: str, reason: str) -> dict:
    """Waits for Degraded=True with ``reason`` for the resource's current generation."""
    def check():
        kex = get_kex(cluster, ns, name)
        cond = conditions(kex).get("Degraded", {})
        return cond if (cond.get("status") == "True" and cond.get("reason") == reason
                        and cond.get("observedGeneration") == kex["metadata"]["generation"]) else None
    return poll(f"{ns}/{name} Degraded ({reason})", check, timeout=60, interval=0.25)


def wait_ready(cluster: Cluster, ns: str, name: str, generation: int | None = None,
               timeout: float = 90) -> dict:
    return poll(f"KinesisExporter {ns}/{name} Ready (generation {generation or 'current'})",
                lambda: (lambda k: k if is_ready(k, generation) else None)(get_kex(cluster, ns, name)),
                timeout=timeout)
