"""Smoke tests of the local control plane itself (tests/k8s/controlplane.sh).

They check what the chart and operator tests will rely on: Deployments become Available on
kwok's fake nodes, the restricted Pod Security Standard is enforced, and service-account
tokens are issued and accepted over the apiserver's real TLS.

Run: tests/.venv/bin/python -m pytest tests/k8s
"""

from __future__ import annotations

import json
import ssl
import urllib.request

import pytest

from .k8s_helpers import Cluster, make_namespace, poll

RESTRICTED_CONTAINER = {
    "name": "app",
    "image": "registry.k8s.io/pause:3.10",
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
}


@pytest.fixture(scope="module")
def restricted_ns(k8s_cluster: Cluster) -> str:
    return make_namespace(k8s_cluster, "kex-smoke-restricted")


def test_nodes_are_kwok_and_ready(k8s_cluster: Cluster) -> None:
    nodes = k8s_cluster.get_json("nodes")["items"]
    names = sorted(n["metadata"]["name"] for n in nodes)
    assert names == ["kwok-node-0", "kwok-node-1"]
    for n in nodes:
        assert n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", n["status"]["conditions"]
        assert n["status"]["allocatable"]["pods"] == "110"


def test_restricted_deployment_becomes_available(k8s_cluster: Cluster, restricted_ns: str) -> None:
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "smoke", "namespace": restricted_ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "smoke"}},
            "template": {
                "metadata": {"labels": {"app": "smoke"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [RESTRICTED_CONTAINER],
                },
            },
        },
    }
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(deploy))

    def available():
        d = k8s_cluster.get_json("-n", restricted_ns, "deployment", "smoke")
        conds = {c["type"]: c["status"] for c in d.get("status", {}).get("conditions", [])}
        ok = conds.get("Available") == "True" and d["status"].get("availableReplicas") == 2
        return d if ok else None

    poll("Deployment smoke to be Available with 2 replicas", available, timeout=120)

    pods = k8s_cluster.get_json("-n", restricted_ns, "pods", "-l", "app=smoke")["items"]
    assert len(pods) == 2
    for p in pods:
        assert p["spec"]["nodeName"] in ("kwok-node-0", "kwok-node-1")
        assert p["status"]["phase"] == "Running"
        assert p["status"].get("podIP"), p["status"]
        # The ServiceAccount admission plugin mounted a projected service-account token.
        projected = [v for v in p["spec"]["volumes"] if "projected" in v]
        assert any("serviceAccountToken" in s for v in projected for s in v["projected"]["sources"])


def test_privileged_pod_rejected_by_pod_security(k8s_cluster: Cluster, restricted_ns: str) -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": restricted_ns},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                 "securityContext": {"privileged": True}}]},
    }
    proc = k8s_cluster.kubectl("create", "-f", "-", input=json.dumps(pod), check=False)
    assert proc.returncode != 0, proc.stdout
    assert 'violates PodSecurity "restricted:latest"' in proc.stderr, proc.stderr
    assert "privileged" in proc.stderr
    got = k8s_cluster.kubectl("-n", restricted_ns, "get", "pod", "privileged", check=False)
    assert got.returncode != 0  # nothing was created


def _whoami(k8s_cluster: Cluster, token: str) -> dict:
    """POST a SelfSubjectReview with a bearer token, verifying the apiserver's TLS (127.0.0.1 SAN)."""
    ctx = ssl.create_default_context(cafile=str(k8s_cluster.ca_file))
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    req = urllib.request.Request(
        f"{k8s_cluster.server}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        data=body.encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.load(resp)["status"]["userInfo"]


def test_tokens_over_tls(k8s_cluster: Cluster, restricted_ns: str) -> None:
    admin = _whoami(k8s_cluster, k8s_cluster.admin_token)
    assert "system:masters" in admin["groups"]

    token = k8s_cluster.kubectl("-n", restricted_ns, "create", "token", "default",
                                "--duration", "10m").stdout.strip()
    assert token.count(".") == 2  # a signed JWT
    user = _whoami(k8s_cluster, token)
    assert user["username"] == f"system:serviceaccount:{restricted_ns}:default"
