"""Tenancy end to end (issue #14): what a tenant can get through KinesisExporters, and what the
operator's own token can do, each judged by the real API server.

* The tenant is a ServiceAccount whose only rights are KinesisExporters in its namespace (real
  RBAC; ``kubectl auth can-i`` says no to pods, Deployments, Services and secrets). Every
  escalation a tenant tried against the first operator is applied as that user and must be
  refused by the operator's guardrails (the chart's default ``tenancy`` values) with the reason
  in the resource's Degraded condition, and nothing deployed.
* Objects of other workloads named like a KinesisExporter are left untouched: no owner
  reference added, spec unchanged, not garbage-collected with the resource.
* The operator's token (the chart's ServiceAccount) is refused by the chart's
  ValidatingAdmissionPolicies or by its RBAC when it tries what a stolen token would: a
  Deployment in kube-system, other images, other ServiceAccounts, secrets, host access,
  adopting pods, taking over or deleting objects it did not create.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from .k8s_helpers import (
    GROUP_VERSION,
    Cluster,
    apply,
    conditions,
    degraded,
    get_kex,
    kex_manifest,
    poll,
    role_for,
    wait_ready,
)
from .operator_fixtures import EXPORTER_IMAGE, RunningOperator, token_kubeconfig

pytestmark = pytest.mark.usefixtures("operator_log_on_failure")

NS = "kex-tenant"
CHILD_RESOURCES = ["serviceaccount", "configmap", "deployment", "service", "poddisruptionbudget"]


class User:
    """kubectl as one user (a token kubeconfig); failures are returned, not raised."""

    def __init__(self, cluster: Cluster, kubeconfig: Path):
        self.as_user = cluster._replace(kubeconfig=kubeconfig)

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.as_user.kubectl(*args, input=input, check=False)

    def can_i(self, verb: str, resource: str, ns: str = NS) -> str:
        return self.kubectl("auth", "can-i", verb, resource, "-n", ns).stdout.strip()

    def apply(self, manifest: dict) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "--server-side", "--field-manager=tenant", "-f", "-",
                            input=json.dumps(manifest))


@pytest.fixture(scope="module")
def tenant_ns(make_namespace, k8s_cluster: Cluster) -> str:
    """The tenant's namespace, with other workloads' objects in it: a ServiceAccount that may
    read secrets, and a ServiceAccount, ConfigMap and Service named ``payments``."""
    ns = make_namespace(NS)
    objects = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "secret-reader", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "secret-reader", "namespace": ns},
         "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "secret-reader", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "secret-reader", "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "payments", "namespace": ns}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "payments", "namespace": ns},
         "data": {"owner": "the payments team"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "payments", "namespace": ns},
         "spec": {"selector": {"app": "payments"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
    ]
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    return ns


@pytest.fixture(scope="module")
def tenant(k8s_cluster: Cluster, tenant_ns: str, tmp_path_factory: pytest.TempPathFactory) -> User:
    """A user who may only manage KinesisExporters in the tenant namespace."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "kinesisexporter-editor", "namespace": tenant_ns},
            "rules": [{"apiGroups": ["kinesis.otlp.dev"], "resources": ["kinesisexporters"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "tenant", "namespace": tenant_ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kinesisexporter-editor"},
               "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": tenant_ns}]}
    k8s_cluster.kubectl("-n", tenant_ns, "create", "serviceaccount", "tenant")
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                              "items": [role, binding]}))
    token = k8s_cluster.kubectl("-n", tenant_ns, "create", "token", "tenant", "--duration", "1h").stdout.strip()
    user = User(k8s_cluster, token_kubeconfig(tmp_path_factory.mktemp("tenant") / "kubeconfig",
                                              k8s_cluster, token, "tenant"))
    # The tenant's rights, as the API server judges them.
    assert user.can_i("create", "kinesisexporters.kinesis.otlp.dev") == "yes"
    for verb, resource in [("create", "pods"), ("create", "deployments.apps"), ("patch", "services"),
                           ("create", "serviceaccounts"), ("get", "secrets")]:
        assert user.can_i(verb, resource) == "no", f"the tenant may {verb} {resource}"
    return user


def existing_children(cluster: Cluster, ns: str, name: str) -> list[str]:
    out = cluster.kubectl("-n", ns, "get", *(f"{r}/{name}" for r in CHILD_RESOURCES), "-o", "name",
                          "--ignore-not-found").stdout
    return out.split()


# --------------------------------------------------------------------------- the tenant


ESCALATIONS = {
    # id: (spec fields the tenant adds, the field the refusal names)
    "any-image": ({"image": "busybox:latest"}, "spec.image"),
    "secret-reading-service-account": ({"serviceAccountName": "secret-reader"}, "spec.serviceAccountName"),
    "another-teams-role": ({"aws": {"role": role_for("team-b")}}, "spec.aws.role"),
    "another-teams-base-role": ({"identity": {"mode": "ProjectedToken", "baseRoleArn": role_for("team-b")}},
                                "spec.identity.baseRoleArn"),
    "join-another-service": ({"podLabels": {"app": "payments"}}, 'spec.podLabels["app"]'),
    "node-critical-priority": ({"priorityClassName": "system-node-critical"}, "spec.priorityClassName"),
    "control-plane-node": ({"tolerations": [{"operator": "Exists"}],
                            "nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}, "spec.tolerations[0]"),
}


@pytest.mark.parametrize("escalation", list(ESCALATIONS))
def test_a_tenants_escalation_is_refused_with_the_reason_and_nothing_deployed(
        k8s_cluster: Cluster, operator: RunningOperator, tenant: User, tenant_ns: str, escalation: str) -> None:
    extra, field = ESCALATIONS[escalation]
    name = f"esc-{escalation}"[:52]
    manifest = kex_manifest(tenant_ns, name, "tenant-stream")
    for key, value in copy.deepcopy(extra).items():
        if key == "aws":
            manifest["spec"]["aws"].update(value)
        else:
            manifest["spec"][key] = value
    applied = tenant.apply(manifest)
    assert applied.returncode == 0, applied.stderr  # the CRD accepts it: the policy is the operator's
    cond = degraded(k8s_cluster, tenant_ns, name, "NotAllowed")
    assert field in cond["message"] and "refused by the platform's tenancy policy" in cond["message"], cond
    kex = get_kex(k8s_cluster, tenant_ns, name)
    assert conditions(kex)["Ready"]["status"] == "False", kex["status"]
    assert existing_children(k8s_cluster, tenant_ns, name) == [], "a refused resource got children"
    # kubectl describe shows it too: a Warning event with the reason.
    def warned():
        events = k8s_cluster.get_json("-n", tenant_ns, "events", "--field-selector",
                                      f"involvedObject.name={name}")["items"]
        return any(e["reason"] == "NotAllowed" and e["type"] == "Warning" for e in events)
    poll(f"a NotAllowed Warning event for {name}", warned, timeout=30, interval=0.25)


def test_a_refused_resource_deploys_once_the_tenant_fixes_it(
        k8s_cluster: Cluster, operator: RunningOperator, tenant: User, tenant_ns: str) -> None:
    name = "fixed-later"
    manifest = kex_manifest(tenant_ns, name, "tenant-stream", image="busybox:latest")
    assert tenant.apply(manifest).returncode == 0
    degraded(k8s_cluster, tenant_ns, name, "NotAllowed")
    del manifest["spec"]["image"]
    manifest["spec"]["podLabels"] = {"kinesis.otlp.dev/team": "tenant"}
    assert tenant.apply(manifest).returncode == 0
    kex = wait_ready(k8s_cluster, tenant_ns, name, generation=2)
    assert sorted(existing_children(k8s_cluster, tenant_ns, name)) == sorted(
        f"{r}/{name}" for r in ["serviceaccount", "configmap", "deployment.apps", "service"]), kex["status"]
    pod = k8s_cluster.get_json("-n", tenant_ns, "deployment", name)["spec"]["template"]
    assert pod["spec"]["containers"][0]["image"] == EXPORTER_IMAGE
    assert pod["metadata"]["labels"]["kinesis.otlp.dev/team"] == "tenant"


def test_objects_of_other_workloads_are_never_taken_over(
        k8s_cluster: Cluster, operator: RunningOperator, tenant: User, tenant_ns: str) -> None:
    def snapshot() -> dict[str, dict]:
        out = json.loads(k8s_cluster.kubectl("-n", tenant_ns, "get", "serviceaccount/payments", "configmap/payments",
                                             "service/payments", "-o", "json").stdout)["items"]
        return {o["kind"]: o for o in out}
    before = snapshot()
    assert tenant.apply(kex_manifest(tenant_ns, "payments", "tenant-stream")).returncode == 0
    cond = degraded(k8s_cluster, tenant_ns, "payments", "NameTaken")
    for kind in ("ServiceAccount", "ConfigMap", "Service"):
        assert f"{kind} payments exists and is not managed by this KinesisExporter" in cond["message"], cond
    after = snapshot()
    for kind, obj in after.items():
        assert obj["metadata"]["resourceVersion"] == before[kind]["metadata"]["resourceVersion"], \
            f"{kind} payments was written"
        assert "ownerReferences" not in obj["metadata"], obj["metadata"]
    assert after["Service"]["spec"]["selector"] == {"app": "payments"}
    assert k8s_cluster.kubectl("-n", tenant_ns, "get", "deployment", "payments", "--ignore-not-found",
                               "-o", "name").stdout.strip() == "", "a Deployment was created beside the taken names"

    # Deleting the resource leaves them be (they never got its owner reference).
    assert tenant.kubectl("-n", tenant_ns, "delete", "kinesisexporter", "payments", "--wait=true").returncode == 0
    assert {k: o["metadata"]["uid"] for k, o in snapshot().items()} == \
        {k: o["metadata"]["uid"] for k, o in before.items()}


def test_an_object_controlled_by_something_else_is_not_taken_over(
        k8s_cluster: Cluster, operator: RunningOperator, tenant: User, tenant_ns: str) -> None:
    owner = k8s_cluster.get_json("-n", tenant_ns, "serviceaccount", "secret-reader")
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "orders", "namespace": tenant_ns,
                     "labels": {"app.kubernetes.io/managed-by": "kinesis-operator"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "ServiceAccount", "name": "secret-reader",
                                          "uid": owner["metadata"]["uid"], "controller": True}]},
        "data": {"owner": "someone else"}}))
    assert tenant.apply(kex_manifest(tenant_ns, "orders", "tenant-stream")).returncode == 0
    cond = degraded(k8s_cluster, tenant_ns, "orders", "NameTaken")
    assert "ConfigMap orders exists" in cond["message"] and "its controller is ServiceAccount secret-reader" \
        in cond["message"], cond
    cm = k8s_cluster.get_json("-n", tenant_ns, "configmap", "orders")
    assert cm["data"] == {"owner": "someone else"}
    assert [o["kind"] for o in cm["metadata"]["ownerReferences"]] == ["ServiceAccount"]


def test_excluded_namespaces_get_nothing(k8s_cluster: Cluster, operator: RunningOperator) -> None:
    name = "in-kube-system"
    apply(k8s_cluster, kex_manifest("kube-system", name, "tenant-stream"))
    try:
        cond = degraded(k8s_cluster, "kube-system", name, "NotAllowed")
        assert 'namespace "kube-system" is excluded by the platform' in cond["message"], cond
        assert existing_children(k8s_cluster, "kube-system", name) == []
    finally:
        k8s_cluster.kubectl("-n", "kube-system", "delete", "kinesisexporter", name, "--ignore-not-found")


# --------------------------------------------------------------------------- the operator's token


@pytest.fixture(scope="module")
def operator_user(k8s_cluster: Cluster, operator: RunningOperator) -> User:
    return User(k8s_cluster, operator.kubeconfig)


@pytest.fixture(scope="module")
def good_deployment(k8s_cluster: Cluster, operator: RunningOperator, tenant_ns: str) -> dict:
    """A Deployment exactly as the operator writes it, renamed to ``forged`` (with a matching
    owner reference, labels and selector): the admission policies allow it, so each variant
    below is refused for what it changes, not for its shape."""
    name = "forge-source"
    apply(k8s_cluster, kex_manifest(tenant_ns, name, "tenant-stream"))
    wait_ready(k8s_cluster, tenant_ns, name)
    text = k8s_cluster.kubectl("-n", tenant_ns, "get", "deployment", name, "-o", "json").stdout
    deploy = json.loads(text.replace(f'"{name}"', '"forged"'))
    meta = deploy["metadata"]
    deploy["metadata"] = {k: meta[k] for k in ("name", "namespace", "labels", "ownerReferences")}
    deploy.pop("status", None)
    return deploy


def create_as(user: User, obj: dict) -> subprocess.CompletedProcess[str]:
    """``kubectl create --dry-run=server``: authorised and admitted like a real create, stored never."""
    return user.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj))


def refused_by_policy(result: subprocess.CompletedProcess[str], *messages: str) -> None:
    """Denied by one of the chart's policies with one of ``messages`` (the API server reports
    the first policy that denies, and policies are not ordered)."""
    assert result.returncode != 0, f"the API server accepted it:\n{result.stdout}"
    assert "ValidatingAdmissionPolicy" in result.stderr and any(m in result.stderr for m in messages), \
        result.stderr


def refused_by_rbac(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0, f"the API server accepted it:\n{result.stdout}"
    assert "forbidden" in result.stderr and "ValidatingAdmissionPolicy" not in result.stderr, result.stderr


def test_the_operators_token_may_write_what_the_operator_writes(
        operator_user: User, good_deployment: dict) -> None:
    result = create_as(operator_user, good_deployment)
    assert result.returncode == 0, result.stderr


def variant(deployment: dict, change) -> dict:
    forged = copy.deepcopy(deployment)
    change(forged, forged["spec"]["template"]["spec"])
    return forged


POD_ESCALATIONS = {
    # id: (change to the Deployment, the policy's message, or any of several)
    "kube-system": (lambda d, pod: d["metadata"].update(namespace="kube-system"),
                    "kinesis-operator may not write in namespace kube-system"),
    "kube-system-as-a-controller-account": (
        lambda d, pod: (d["metadata"].update(namespace="kube-system"),
                        pod.update(serviceAccountName="clusterrole-aggregation-controller")),
        ("kinesis-operator may not write in namespace kube-system",
         "exporter pods run as the ServiceAccount of their own name")),
    "any-image": (lambda d, pod: pod["containers"][0].update(image="busybox:latest"),
                  "may only run the allowed exporter images, not busybox:latest"),
    "init-container": (lambda d, pod: pod.update(initContainers=[{"name": "init", "image": EXPORTER_IMAGE}]),
                       "may only run the allowed exporter images"),
    "other-service-account": (lambda d, pod: pod.update(serviceAccountName="secret-reader"),
                              "exporter pods run as the ServiceAccount of their own name"),
    "api-token": (lambda d, pod: pod.update(automountServiceAccountToken=True), "exporter pods get no API token"),
    "secret-env": (lambda d, pod: pod["containers"][0]["env"].append(
        {"name": "STOLEN", "valueFrom": {"secretKeyRef": {"name": "any", "key": "token"}}}),
        "exporter pods get no API token and no secrets"),
    "host-path": (lambda d, pod: pod["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
                  "exporter pods get no API token and no secrets"),
    "api-audience-token": (lambda d, pod: pod["volumes"].append(
        {"name": "api", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}),
        "exporter pods get no API token and no secrets"),
    "privileged": (lambda d, pod: pod["containers"][0]["securityContext"].update(
        privileged=True, allowPrivilegeEscalation=True), "without privilege"),
    "host-network": (lambda d, pod: pod.update(hostNetwork=True), "host namespaces"),
    "adopt-other-pods": (lambda d, pod: (d["spec"]["selector"].update(matchLabels={"app": "payments"}),
                                         d["spec"]["template"]["metadata"]["labels"].update(app="payments")),
                         "selects only its own pods"),
    "node-critical-priority": (lambda d, pod: pod.update(priorityClassName="system-node-critical"),
                               "priority class system-node-critical is not allowed"),
    "tolerate-everything": (lambda d, pod: pod.update(tolerations=[{"operator": "Exists"}]),
                            "a toleration's key is not allowed"),
    "not-owned": (lambda d, pod: d["metadata"].pop("ownerReferences"),
                  "whose controller is the KinesisExporter of the same name"),
}


@pytest.mark.parametrize("escalation", list(POD_ESCALATIONS))
def test_the_operators_token_cannot_run_other_pods(
        operator_user: User, good_deployment: dict, escalation: str) -> None:
    change, messages = POD_ESCALATIONS[escalation]
    messages = messages if isinstance(messages, tuple) else (messages,)
    refused_by_policy(create_as(operator_user, variant(good_deployment, change)), *messages)


def test_the_operators_token_cannot_take_over_or_delete_what_it_did_not_create(
        k8s_cluster: Cluster, operator_user: User, tenant_ns: str) -> None:
    # A server-side apply onto the payments Service, shaped as the operator's own.
    takeover = {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "payments", "namespace": tenant_ns,
                             "labels": {"app.kubernetes.io/managed-by": "kinesis-operator"},
                             "ownerReferences": [{"apiVersion": GROUP_VERSION, "kind": "KinesisExporter",
                                                  "name": "payments", "uid": "00000000-0000-0000-0000-000000000000",
                                                  "controller": True}]},
                "spec": {"selector": {"app.kubernetes.io/name": "kinesis-exporter",
                                      "app.kubernetes.io/instance": "payments"}}}
    result = operator_user.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                                   "--field-manager=kinesis-operator", "-f", "-", input=json.dumps(takeover))
    refused_by_policy(result, "may not change or delete an object it did not create")
    refused_by_policy(operator_user.kubectl("-n", tenant_ns, "delete", "serviceaccount", "payments",
                                            "--dry-run=server"),
                      "may not change or delete an object it did not create")
    # What RBAC does not grant at all.
    refused_by_rbac(operator_user.kubectl("-n", tenant_ns, "delete", "configmap", "payments", "--dry-run=server"))
    refused_by_rbac(operator_user.kubectl("-n", tenant_ns, "delete", "service", "payments", "--dry-run=server"))
    refused_by_rbac(operator_user.kubectl("-n", tenant_ns, "run", "shell", "--image", EXPORTER_IMAGE,
                                          "--dry-run=server"))
    refused_by_rbac(operator_user.kubectl("-n", tenant_ns, "get", "secrets"))
    refused_by_rbac(operator_user.kubectl("create", "clusterrolebinding", "mine", "--clusterrole", "cluster-admin",
                                          "--user", "me", "--dry-run=server"))
    # A Service the operator may create is a ClusterIP one selecting its own pods.
    lb = copy.deepcopy(takeover)
    lb["metadata"]["name"] = "forged"
    lb["metadata"]["ownerReferences"][0]["name"] = "forged"
    lb["spec"] = {"type": "LoadBalancer", "ports": [{"port": 80}],
                  "selector": {"app.kubernetes.io/name": "kinesis-exporter", "app.kubernetes.io/instance": "forged"}}
    refused_by_policy(create_as(operator_user, lb), "ClusterIP Service selecting only its own exporter's pods")
    lb["spec"]["type"] = "ClusterIP"
    result = create_as(operator_user, lb)
    assert result.returncode == 0, result.stderr
