"""The real-node platform, shared by the real-node tests and `make demo`: bring a kubelet node
up and down, import the images built here, install the chart with its operator as real pods,
and deploy a KinesisExporter onto the node with its AWS peers on the node's bridge.

Everything here talks to a running control plane (tests/k8s/controlplane.sh) through kubectl and
helm, and to the machine through tests/k8s/node.sh; nothing here asserts (the callers do).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import NamedTuple

import yaml

from conftest import cargo_target_dir

from ..k8s_helpers import (
    CHART_DIR,
    OPERATOR_NAMESPACE,
    RELEASE,
    Cluster,
    apply,
    helm,
    kex_manifest,
    poll,
    read_env_file,
    wait_ready,
)

NODE_SH = Path(__file__).resolve().parents[1] / "node.sh"
IMAGES_DIR = cargo_target_dir() / "images"
EXPORTER_IMAGE = "kinesis-exporter:dev"
OPERATOR_IMAGE = "kinesis-operator:dev"


class RealNode(NamedTuple):
    name: str
    ip: str            # the bridge address: pods reach the node (and our peers) here
    taint_key: str

    def placement(self) -> dict:
        """Spec fields that put a pod on this node (it is tainted so nothing else lands there)."""
        return {"nodeSelector": {"kex.dev/node": "real"},
                "tolerations": [{"key": self.taint_key, "operator": "Exists", "effect": "NoSchedule"}]}


def node_sh(*args: str, timeout: float = 3600, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run node.sh; with ``capture=False`` its progress lines go straight to the terminal."""
    out = subprocess.PIPE if capture else None
    return subprocess.run([str(NODE_SH), *args], stdout=out, stderr=subprocess.STDOUT if capture else None,
                          text=True, timeout=timeout)


def node_up(cluster: Cluster) -> RealNode:
    """Join the real node to ``cluster`` (node.sh up); raises with the output if it fails."""
    up = node_sh("up", str(cluster.dir), capture=False)
    if up.returncode != 0:
        raise RuntimeError(f"node.sh up failed ({up.returncode}); logs in /var/lib/kex-node/logs")
    env = read_env_file(cluster.dir / "node.env")
    return RealNode(env["KEX_NODE_NAME"], env["KEX_NODE_IP"], env["KEX_NODE_TAINT"])


def load_images() -> dict[str, Path]:
    """Import the images `make images` built into the node's containerd."""
    tars = {EXPORTER_IMAGE: IMAGES_DIR / "kinesis-exporter.tar",
            OPERATOR_IMAGE: IMAGES_DIR / "kinesis-operator.tar"}
    missing = [str(t) for t in tars.values() if not t.is_file()]
    if missing:
        raise RuntimeError(f"images not built: {missing}; run `make images`")
    load = node_sh("load", *map(str, tars.values()), timeout=300)
    if load.returncode != 0:
        raise RuntimeError(f"node.sh load failed:\n{load.stdout}")
    return tars


def install_operator(helm_bin: str, cluster: Cluster, node: RealNode, workdir: Path) -> dict:
    """The chart as a platform team installs it, the operator as two real pods (leader
    election on) from the image built here; returns the values used."""
    values = {
        "replicaCount": 2,
        "image": {"repository": OPERATOR_IMAGE.split(":")[0], "tag": OPERATOR_IMAGE.split(":")[1],
                  "pullPolicy": "Never"},
        "exporterImage": {"repository": EXPORTER_IMAGE.split(":")[0], "tag": EXPORTER_IMAGE.split(":")[1]},
        # Exporters may tolerate the real node's taint, and nothing else (the tenancy default).
        "tenancy": {"allowedTolerationKeys": [node.taint_key]},
        # Delivery verdicts within seconds rather than the default half minute.
        "controller": {"deliveryProbeIntervalSeconds": 5},
        **node.placement(),
    }
    values_file = workdir / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm(helm_bin, cluster, "install", RELEASE, str(CHART_DIR), "--namespace", OPERATOR_NAMESPACE,
         "--create-namespace", "-f", str(values_file), "--wait", "--timeout", "3m")
    return values


def uninstall_operator(helm_bin: str, cluster: Cluster) -> None:
    subprocess.run([helm_bin, "--kubeconfig", str(cluster.kubeconfig), "uninstall", RELEASE,
                    "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "2m"],
                   capture_output=True, text=True, timeout=180)


class ServiceTarget:
    """An exporter's ClusterIP Service, shaped like ExporterProcess for the OTLP helpers."""

    def __init__(self, cluster_ip: str):
        self.cluster_ip = cluster_ip

    @property
    def grpc_target(self) -> str:
        return f"{self.cluster_ip}:4317"

    def http_url(self, path: str) -> str:
        return f"http://{self.cluster_ip}:4318{path}"


def exporter_selector(name: str) -> str:
    return f"app.kubernetes.io/name=kinesis-exporter,app.kubernetes.io/instance={name}"


def deploy_exporter(cluster: Cluster, node: RealNode, kinesis: str, sts: str, ns: str, name: str,
                    stream: str, replicas: int, **spec) -> ServiceTarget:
    """Apply a traces KinesisExporter placed on the real node, with Kinesis and STS at the given
    endpoints; wait until it is Ready and return its Service."""
    apply(cluster, kex_manifest(
        ns, name, stream,
        aws={"region": "us-east-1", "kinesisEndpoint": kinesis, "stsEndpoint": sts},
        kpl={"flushIntervalSeconds": 1, **spec.pop("kpl", {})},
        signals=["traces"], replicas=replicas, **node.placement(), **spec))
    wait_ready(cluster, ns, name, timeout=180)
    return ServiceTarget(cluster.get_json("-n", ns, "service", name)["spec"]["clusterIP"])


def pods(cluster: Cluster, ns: str, selector: str) -> list[dict]:
    return cluster.get_json("-n", ns, "pods", "-l", selector)["items"]


def wait_pods_ready(cluster: Cluster, ns: str, selector: str, count: int, timeout: float = 120) -> list[dict]:
    """``count`` pods matching ``selector``, all Ready and none terminating."""
    def ready():
        items = [p for p in pods(cluster, ns, selector) if not p["metadata"].get("deletionTimestamp")]
        good = [p for p in items if any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in p.get("status", {}).get("conditions", []))]
        return good if len(good) == count == len(items) else None
    return poll(f"{count} Ready pods {selector} in {ns}", ready, timeout=timeout, interval=1)
