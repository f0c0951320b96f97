"""The operator end to end, against the real local control plane (issue #6).

The chart is installed by the real helm; the operator runs as a local process with a token of
the chart's ServiceAccount, so the chart's RBAC decides what it may do. Exporter pods run on
kwok's fake nodes in namespaces that enforce the restricted Pod Security Standard. The last
test hands the ConfigMap the operator rendered to the real exporter binary, with the
environment the Deployment declares and a real projected token, against kinesalite and moto.

Every test uses its own KinesisExporter (its own name), so the tests do not depend on each
other's order.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from .k8s_helpers import (
    GROUP_VERSION,
    Audit,
    Cluster,
    apply,
    conditions,
    degraded,
    get_kex,
    helm,
    is_ready,
    jwt_claims,
    kex_manifest,
    poll,
    role_for,
    wait_ready,
)
from .operator_fixtures import EXPORTER_IMAGE, ChartRelease, RunningOperator

pytestmark = pytest.mark.usefixtures("operator_log_on_failure")

# (kubectl resource, kind) of every child the operator makes.
CHILDREN = [
    ("serviceaccount", "ServiceAccount"),
    ("configmap", "ConfigMap"),
    ("deployment", "Deployment"),
    ("service", "Service"),
    ("poddisruptionbudget", "PodDisruptionBudget"),
]
SERVICE_PORTS = [("otlp-grpc", 4317), ("otlp-http", 4318), ("metrics", 8888)]
KWOK_NODES = {"kwok-node-0", "kwok-node-1"}
RESTART_HASH = "kinesis.otlp.dev/restart-hash"
NS_A = "kex-e2e-a"


# --------------------------------------------------------------------------- helpers


def children(cluster: Cluster, ns: str, name: str) -> dict[str, dict]:
    """{kind: object} of the children that exist (one kubectl call)."""
    refs = [f"{resource}/{name}" for resource, _ in CHILDREN]
    out = cluster.kubectl("-n", ns, "get", *refs, "-o", "json", "--ignore-not-found").stdout
    if not out.strip():
        return {}
    return {item["kind"]: item for item in json.loads(out)["items"]}


def resource_versions(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    rvs = {kind: obj["metadata"]["resourceVersion"] for kind, obj in children(cluster, ns, name).items()}
    rvs["KinesisExporter"] = get_kex(cluster, ns, name)["metadata"]["resourceVersion"]
    return rvs


def stable_resource_versions(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    """Resource versions that stayed the same over 1.5 s (nothing in flight)."""
    def stable():
        first = resource_versions(cluster, ns, name)
        time.sleep(1.5)
        return first if resource_versions(cluster, ns, name) == first else None
    return poll(f"{ns}/{name} and its children to stop changing", stable, timeout=60, interval=0.1)


def owner_uids(obj: dict) -> list[tuple[str, str, bool]]:
    return [(o["kind"], o["uid"], bool(o.get("controller")))
            for o in obj["metadata"].get("ownerReferences", [])]


def replica_sets(cluster: Cluster, ns: str, name: str) -> dict[str, dict]:
    """{pod-template-hash: ReplicaSet} of one exporter."""
    items = cluster.get_json("-n", ns, "replicasets",
                             "-l", f"app.kubernetes.io/instance={name},app.kubernetes.io/name=kinesis-exporter")["items"]
    return {rs["metadata"]["labels"]["pod-template-hash"]: rs for rs in items}


def pods(cluster: Cluster, ns: str, name: str) -> list[dict]:
    return cluster.get_json("-n", ns, "pods",
                            "-l", f"app.kubernetes.io/instance={name},app.kubernetes.io/name=kinesis-exporter")["items"]


def trigger_reconcile(cluster: Cluster, operator: RunningOperator, ns: str, name: str) -> None:
    """Make the operator reconcile ``ns/name`` once, without touching it or its children.

    A no-op re-apply writes nothing, so the API server sends no watch event and the operator
    has no reason to reconcile. Instead, a probe ConfigMap carrying a (non-controller) owner
    reference to the resource is written: the controller maps events of owned kinds to their
    owners, so the resource is reconciled. Waits for that reconcile: the ok counter grows and
    the operator logs "reconciled" for this name.
    """
    kex = get_kex(cluster, ns, name)
    before = operator.process.reconciliations("ok")
    offset = operator.process.log_size()
    probe = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{name}-reconcile-probe", "namespace": ns,
                     # The operator watches only objects carrying its label.
                     "labels": {"app.kubernetes.io/managed-by": "kinesis-operator"},
                     "ownerReferences": [{"apiVersion": GROUP_VERSION, "kind": "KinesisExporter",
                                          "name": name, "uid": kex["metadata"]["uid"]}]},
        "data": {"nonce": uuid.uuid4().hex},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(probe))

    def reconciled():
        seen = any(r.get("message") == "reconciled" and r.get("resource") == name
                   for r in operator.process.records(offset))
        return seen and operator.process.reconciliations("ok") > before
    poll(f"one reconcile of {ns}/{name} (ok counter above {before})", reconciled, timeout=30, interval=0.2)


class KexWatch:
    """``kubectl get kex NAME -w -o json``: every version of the resource, in order.

    (kubectl's jsonpath output with a ``range`` stops after the first object in watch mode,
    so the JSON stream is decoded here.)
    """

    def __init__(self, cluster: Cluster, ns: str, name: str):
        self.proc = subprocess.Popen(
            [cluster.kubectl_bin, "--kubeconfig", str(cluster.kubeconfig), "-n", ns, "get",
             "kinesisexporter", name, "-w", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.objects: list[dict] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        decoder = json.JSONDecoder()
        buffer = ""
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            buffer += chunk.decode()
            while True:
                buffer = buffer.lstrip()
                try:
                    obj, end = decoder.raw_decode(buffer)
                except json.JSONDecodeError:
                    break
                self.objects.append(obj)
                buffer = buffer[end:]

    def versions(self) -> list[dict]:
        return [{"rv": o["metadata"]["resourceVersion"], "generation": o["metadata"]["generation"],
                 "observed": o.get("status", {}).get("observedGeneration"),
                 "ready": o.get("status", {}).get("ready"),
                 "conditions": {c["type"]: c["status"] for c in o.get("status", {}).get("conditions", [])}}
                for o in self.objects]

    @property
    def lines(self) -> list[str]:
        return [f"rv={v['rv']} generation={v['generation']} observed={v['observed']} ready={v['ready']} "
                + ",".join(f"{k}={s}" for k, s in v["conditions"].items()) for v in self.versions()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def ns_a(make_namespace) -> str:
    return make_namespace(NS_A)


# --------------------------------------------------------------------------- 1. install


def test_chart_installs_and_operator_runs_as_its_service_account(
        k8s_cluster: Cluster, chart_release: ChartRelease, operator: RunningOperator) -> None:
    sa = chart_release.service_account
    assert operator.username == f"system:serviceaccount:{chart_release.namespace}:{sa}"
    # The chart's own operator pod is scheduled on a kwok node and "runs" there.
    deploy = k8s_cluster.get_json("-n", chart_release.namespace, "deployment", "-l",
                                  f"app.kubernetes.io/instance={chart_release.name}")["items"]
    assert len(deploy) == 1 and deploy[0]["status"].get("availableReplicas") == 1, deploy
    args = deploy[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--exporter-image", EXPORTER_IMAGE], args
    # The CRD came from the chart's crds/ directory.
    crd = k8s_cluster.get_json("crd", "kinesisexporters.kinesis.otlp.dev")
    assert crd["spec"]["names"]["shortNames"] == ["kex"]
    # What the chart grants the operator's ServiceAccount, as the API server judges it.
    who = f"system:serviceaccount:{chart_release.namespace}:{sa}"
    for verb, resource, allowed in [("patch", "deployments.apps", "yes"), ("delete", "poddisruptionbudgets.policy", "yes"),
                                    ("patch", "kinesisexporters.kinesis.otlp.dev --subresource=status", "yes"),
                                    ("create", "events.events.k8s.io", "yes"),
                                    ("get", "secrets", "no"), ("create", "pods", "no"),
                                    ("update", "deployments.apps", "no"), ("delete", "deployments.apps", "no"),
                                    ("delete", "services", "no"), ("patch", "kinesisexporters.kinesis.otlp.dev", "no"),
                                    ("update", "kinesisexporters.kinesis.otlp.dev --subresource=status", "no")]:
        got = k8s_cluster.kubectl("auth", "can-i", verb, *resource.split(), "--as", who, "-A",
                                  check=False).stdout.strip()
        assert got == allowed, f"can {sa} {verb} {resource}? {got}, expected {allowed}"
    log = operator.process.logs(8000)
    assert "reconciling KinesisExporter resources" in log, log
    print(f"helm install --wait: {chart_release.install_seconds:.1f}s; operator ready in {operator.start_seconds:.1f}s")


def test_the_charts_notes_sample_is_accepted_by_the_crd(
        k8s_cluster: Cluster, chart_release: ChartRelease, helm_bin: str) -> None:
    """What `helm install` tells a user to apply must pass the CRD's own rules."""
    notes = helm(helm_bin, k8s_cluster, "get", "notes", chart_release.name, "-n", chart_release.namespace).stdout
    start = notes.index("cat <<YAML | kubectl apply -f -") + len("cat <<YAML | kubectl apply -f -")
    sample = textwrap.dedent(notes[start:notes.index("\n  YAML", start)]).strip("\n")
    manifest = yaml.safe_load(sample)
    assert manifest["kind"] == "KinesisExporter", sample
    applied = k8s_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=sample, check=False)
    assert applied.returncode == 0, f"the NOTES sample is refused:\n{applied.stderr}\n{sample}"
    # The CRD's status conditions merge by type (server-side apply), as Kubernetes' own do.
    crd = k8s_cluster.get_json("crd", "kinesisexporters.kinesis.otlp.dev")
    conditions = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"][
        "properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]


# --------------------------------------------------------------------------- 2. children + status


def test_exporter_children_pods_and_status(k8s_cluster: Cluster, operator: RunningOperator, ns_a: str) -> None:
    name = "telemetry"
    apply(k8s_cluster, kex_manifest(ns_a, name, "team-a-telemetry", replicas=2, kpl={"flushIntervalSeconds": 2}))
    kex = wait_ready(k8s_cluster, ns_a, name, generation=1)
    uid = kex["metadata"]["uid"]
    status = kex["status"]
    assert status["observedGeneration"] == kex["metadata"]["generation"] == 1
    assert (status["replicas"], status["readyReplicas"], status["ready"]) == (2, 2, "2/2"), status
    assert status["selector"] == f"app.kubernetes.io/instance={name},app.kubernetes.io/name=kinesis-exporter"

    got = children(k8s_cluster, ns_a, name)
    assert sorted(got) == sorted(kind for _, kind in CHILDREN), sorted(got)
    for kind, obj in got.items():
        assert owner_uids(obj) == [("KinesisExporter", uid, True)], (kind, obj["metadata"].get("ownerReferences"))
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kinesis-operator", kind
    assert got["ServiceAccount"].get("automountServiceAccountToken") is False
    config = yaml.safe_load(got["ConfigMap"]["data"]["config.yaml"])
    assert config["exporters"]["kinesis"]["aws"]["stream_name"] == "team-a-telemetry"
    assert config["exporters"]["kinesis"]["kpl"]["flush_interval_seconds"] == 2
    assert [(p["name"], p["port"]) for p in got["Service"]["spec"]["ports"]] == SERVICE_PORTS
    assert got["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    deploy = got["Deployment"]
    assert deploy["spec"]["replicas"] == 2
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == EXPORTER_IMAGE

    # The pods were admitted by the restricted Pod Security Standard and "run" on kwok nodes.
    ns_labels = k8s_cluster.get_json("namespace", ns_a)["metadata"]["labels"]
    assert ns_labels["pod-security.kubernetes.io/enforce"] == "restricted"
    running = pods(k8s_cluster, ns_a, name)
    assert len(running) == 2, [p["metadata"]["name"] for p in running]
    for pod in running:
        assert pod["spec"]["nodeName"] in KWOK_NODES, pod["spec"].get("nodeName")
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["serviceAccountName"] == name

    # kubectl get kex: the printer columns.
    table = k8s_cluster.kubectl("-n", ns_a, "get", "kex", name).stdout.splitlines()
    assert table[0].split() == ["NAME", "STREAM", "REGION", "READY", "DELIVERY", "AGE"], table
    # kwok's pods run nothing, so none answers the operator's delivery probe.
    assert table[1].split()[:5] == [name, "team-a-telemetry", "eu-west-1", "2/2", "NoReport"], table
    # ... and the stream name is a selectable field.
    selected = k8s_cluster.kubectl("-n", ns_a, "get", "kex", "--field-selector",
                                   "spec.aws.streamName=team-a-telemetry", "-o", "name").stdout.split()
    assert selected == [f"kinesisexporter.kinesis.otlp.dev/{name}"], selected


# --------------------------------------------------------------------------- 3. rollout + idempotence


def test_kpl_change_rolls_the_pods(k8s_cluster: Cluster, operator: RunningOperator, ns_a: str) -> None:
    name = "rollout"
    manifest = kex_manifest(ns_a, name, "rollout-stream", replicas=2, kpl={"flushIntervalSeconds": 2})
    apply(k8s_cluster, manifest)
    wait_ready(k8s_cluster, ns_a, name, generation=1)
    old_sets = replica_sets(k8s_cluster, ns_a, name)
    assert len(old_sets) == 1, list(old_sets)
    old_hash = children(k8s_cluster, ns_a, name)["Deployment"]["spec"]["template"]["metadata"]["annotations"][RESTART_HASH]

    watch = KexWatch(k8s_cluster, ns_a, name)
    try:
        poll("kubectl get -w to print the resource", lambda: watch.objects, timeout=20, interval=0.1)
        manifest["spec"]["kpl"]["flushIntervalSeconds"] = 3
        apply(k8s_cluster, manifest)

        def rolled():
            sets = replica_sets(k8s_cluster, ns_a, name)
            new = [rs for h, rs in sets.items() if h not in old_sets]
            old_gone = all(sets[h]["spec"]["replicas"] == 0 for h in old_sets if h in sets)
            return new if (len(new) == 1 and new[0]["status"].get("readyReplicas") == 2 and old_gone) else None
        poll("a new ReplicaSet with 2 ready pods, the old one scaled to 0", rolled, timeout=90)
        kex = wait_ready(k8s_cluster, ns_a, name, generation=2)
    finally:
        time.sleep(0.5)
        watch.stop()

    got = children(k8s_cluster, ns_a, name)
    new_hash = got["Deployment"]["spec"]["template"]["metadata"]["annotations"][RESTART_HASH]
    assert new_hash != old_hash
    assert yaml.safe_load(got["ConfigMap"]["data"]["config.yaml"])["exporters"]["kinesis"]["kpl"]["flush_interval_seconds"] == 3
    assert kex["status"]["ready"] == "2/2"

    # Every status write was seen by the watch: the rollout of generation 2 passed through
    # Progressing=True (and Ready=False) before Ready=True came back.
    gen2 = [v for v in watch.versions() if v["observed"] == 2]
    assert gen2, f"no status for generation 2 seen: {watch.lines}"
    progressing = [i for i, v in enumerate(gen2) if v["conditions"].get("Progressing") == "True"]
    assert progressing, f"Progressing=True never written for generation 2: {watch.lines}"
    assert gen2[progressing[0]]["conditions"].get("Ready") == "False", watch.lines
    assert gen2[-1]["conditions"] == {"Ready": "True", "Progressing": "False", "Degraded": "False",
                                         "Delivering": "Unknown"}, watch.lines
    print("status versions during the rollout:\n  " + "\n  ".join(watch.lines))


def test_reapplying_the_same_spec_changes_nothing(k8s_cluster: Cluster, operator: RunningOperator,
                                                  ns_a: str) -> None:
    name = "idempotent"
    manifest = kex_manifest(ns_a, name, "idempotent-stream", replicas=2)
    apply(k8s_cluster, manifest)
    wait_ready(k8s_cluster, ns_a, name, generation=1)
    before = stable_resource_versions(k8s_cluster, ns_a, name)
    assert sorted(before) == sorted(["KinesisExporter"] + [kind for _, kind in CHILDREN])

    out = apply(k8s_cluster, manifest).stdout
    assert "serverside-applied" in out, out
    # Two reconciles with nothing to change: neither the resource (its status) nor any child
    # may be written.
    applied = operator.process.child_applies("applied")
    unchanged = operator.process.child_applies("unchanged")
    trigger_reconcile(k8s_cluster, operator, ns_a, name)
    trigger_reconcile(k8s_cluster, operator, ns_a, name)
    after = resource_versions(k8s_cluster, ns_a, name)
    changed = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
    assert not changed, f"resourceVersion changed (before, after) with nothing to do: {changed}"
    assert get_kex(k8s_cluster, ns_a, name)["metadata"]["generation"] == 1
    # Quiet at rest: not even a no-op apply is sent (each is a PATCH request the API server
    # must process); the operator compares with what it last applied instead.
    assert operator.process.child_applies("applied") == applied, "children were re-applied at rest"
    assert operator.process.child_applies("unchanged") >= unchanged + 2 * len(CHILDREN)
    metrics = operator.process.metrics_text()
    count = re.search(r"^kinesis_operator_reconcile_duration_seconds_count (\S+)", metrics, re.M)
    assert count and float(count.group(1)) >= 2, "no reconcile duration histogram"


# --------------------------------------------------------------------------- 4. validation


@pytest.mark.parametrize("spec_patch, field, message", [
    ({"aws": {"streamName": "bad stream!"}}, "spec.aws.streamName",
     "streamName must be 1 to 128 characters of letters, digits, '_', '.' and '-'"),
    # The kpl bounds are OpenAPI minimum/maximum from the exporter's settings table.
    ({"kpl": {"batchCount": 2000}}, "spec.kpl.batchCount", "should be less than or equal to 1000"),
    ({"aws": {"role": "arn:aws:iam::12345:role/short-account"}}, "spec.aws.role",
     "role must be an IAM role ARN, e.g. arn:aws:iam::123456789012:role/name"),
], ids=["stream-name", "kpl-batch-count", "role-arn"])
def test_invalid_resources_are_rejected_with_the_rule(
        k8s_cluster: Cluster, operator: RunningOperator, ns_a: str, spec_patch, field, message) -> None:
    manifest = kex_manifest(ns_a, "invalid", "valid-stream")
    for key, value in spec_patch.items():
        if key == "aws":
            manifest["spec"]["aws"].update(value)
        else:
            manifest["spec"][key] = value
    proc = k8s_cluster.kubectl("create", "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0, proc.stdout
    assert f'The KinesisExporter "invalid" is invalid: {field}: Invalid value' in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert k8s_cluster.kubectl("-n", ns_a, "get", "kex", "invalid", check=False).returncode != 0


# --------------------------------------------------------------------------- 5. self-healing + GC


def test_a_new_resource_costs_one_write_per_child_and_one_read(
        k8s_cluster: Cluster, operator: RunningOperator, ns_a: str) -> None:
    """Each child is created by one create-only apply. The one read is of the Service's name,
    checked before the Deployment while the Service itself is created in the background; any
    other read follows a create that found the name taken (a 409), which for a fresh name
    happens only when the watch cache lags behind the operator's own create."""
    name = "one-write-each"
    audit = Audit(k8s_cluster.dir / "logs" / "audit.log", operator.username)
    audit.read()
    apply(k8s_cluster, kex_manifest(ns_a, name, "one-write-stream", replicas=2))
    wait_ready(k8s_cluster, ns_a, name, generation=1)
    # wait_ready also waits for Progressing=False, and that waits for the Service.
    made = {kind: f"{resource}s" for resource, kind in CHILDREN if kind in children(k8s_cluster, ns_a, name)}
    assert len(made) == len(CHILDREN), f"children made: {sorted(made)}"
    requests = [e for e in audit.read()
                if e["objectRef"].get("namespace") == ns_a and e["objectRef"].get("name") == name
                and e["objectRef"].get("resource") in made.values()]
    seen = sorted((e["verb"], e["objectRef"]["resource"], e["responseStatus"]["code"]) for e in requests)
    created = sorted(("patch", resource, 201) for resource in made.values())
    assert [r for r in seen if r[2] == 201] == created, seen
    assert not [r for r in seen if r[0] == "patch" and r[2] == 200], f"a child was applied twice: {seen}"
    assert ("get", "services", 404) in seen, f"the Service's name was not checked: {seen}"
    taken = [r for r in seen if r[2] == 409]
    reads = [r for r in seen if r[0] == "get"]
    assert len(reads) <= 1 + len(taken), f"children read without a reason: {seen}"


def test_deleted_children_are_restored(k8s_cluster: Cluster, operator: RunningOperator, ns_a: str) -> None:
    name = "heal-delete"
    apply(k8s_cluster, kex_manifest(ns_a, name, "heal-stream"))
    wait_ready(k8s_cluster, ns_a, name, generation=1)
    before = children(k8s_cluster, ns_a, name)
    for resource, kind in [("configmap", "ConfigMap"), ("service", "Service")]:
        old_uid = before[kind]["metadata"]["uid"]
        k8s_cluster.kubectl("-n", ns_a, "delete", resource, name, "--wait=true")

        def restored():
            obj = children(k8s_cluster, ns_a, name).get(kind)
            return obj if obj and obj["metadata"]["uid"] != old_uid else None
        obj = poll(f"{kind} {name} to be re-created", restored, timeout=30, interval=0.2)
        if kind == "ConfigMap":
            assert obj["data"] == before[kind]["data"]
        else:
            assert [(p["name"], p["port"]) for p in obj["spec"]["ports"]] == SERVICE_PORTS
    wait_ready(k8s_cluster, ns_a, name, generation=1)


def test_unschedulable_pods_are_reported_at_once(k8s_cluster: Cluster, operator: RunningOperator,
                                                ns_a: str) -> None:
    """The Deployment would say only "RolloutStuck" after its 10-minute progress deadline; the
    pods say why now."""
    name = "nowhere"
    apply(k8s_cluster, kex_manifest(ns_a, name, "nowhere-stream", nodeSelector={"kex.dev/no-such-node": "x"}))

    def degraded_now():
        cond = conditions(get_kex(k8s_cluster, ns_a, name)).get("Degraded", {})
        return cond if cond.get("status") == "True" else None
    cond = poll(f"{name} Degraded", degraded_now, timeout=45, interval=0.5)
    assert cond["reason"] == "PodsUnschedulable", cond
    assert "cannot be scheduled" in cond["message"] and "node" in cond["message"], cond
    assert conditions(get_kex(k8s_cluster, ns_a, name))["Ready"]["status"] == "False"
    k8s_cluster.kubectl("-n", ns_a, "delete", "kinesisexporter", name)


def test_a_refused_service_is_reported_and_retried(
        k8s_cluster: Cluster, operator: RunningOperator, make_namespace) -> None:
    """With its Service refused, a resource whose pods are available is Ready (its pods are) but
    still Progressing, and Degraded says why; the Service is created once the API server lets
    it, and then the resource settles."""
    ns = make_namespace("kex-no-services")
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-services", "namespace": ns},
             "spec": {"hard": {"services": "0"}}}
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(quota))
    poll("the quota's status", lambda: k8s_cluster.get_json("-n", ns, "resourcequota", "no-services")
         .get("status", {}).get("hard"), timeout=30, interval=0.2)
    name = "quota"
    apply(k8s_cluster, kex_manifest(ns, name, "quota-stream"))
    cond = degraded(k8s_cluster, ns, name, "ServiceNotCreated")
    assert "exceeded quota" in cond["message"], cond

    def ready_and_progressing():
        conds = conditions(get_kex(k8s_cluster, ns, name))
        return [(conds.get(t, {}).get("status"), conds.get(t, {}).get("reason")) for t in ("Ready", "Progressing")]
    poll(f"{name} Ready with its pods available, Progressing while its Service is refused",
         lambda: ready_and_progressing() == [("True", "PodsAvailable"), ("True", "CreatingService")],
         timeout=45, interval=0.25)
    assert conditions(get_kex(k8s_cluster, ns, name))["Degraded"]["reason"] == "ServiceNotCreated"

    k8s_cluster.kubectl("-n", ns, "delete", "resourcequota", "no-services", "--wait=true")
    kex = wait_ready(k8s_cluster, ns, name, generation=1)
    assert conditions(kex)["Degraded"]["status"] == "False", kex["status"]
    assert k8s_cluster.kubectl("-n", ns, "get", "service", name, "-o", "name").stdout.strip() == f"service/{name}"


def test_a_removed_owner_reference_is_restored_at_once(
        k8s_cluster: Cluster, operator: RunningOperator, ns_a: str) -> None:
    """Removing the owner reference (which would orphan the child from garbage collection) is
    repaired on the watch event, not at the next periodic resync (300 s)."""
    name = "heal-owner"
    apply(k8s_cluster, kex_manifest(ns_a, name, "heal-stream"))
    kex = wait_ready(k8s_cluster, ns_a, name, generation=1)
    uid = kex["metadata"]["uid"]
    for resource, kind in [("deployment", "Deployment"), ("configmap", "ConfigMap")]:
        k8s_cluster.kubectl("-n", ns_a, "patch", resource, name, "--type=json",
                            "-p", json.dumps([{"op": "remove", "path": "/metadata/ownerReferences"}]))
        poll(f"{kind} {name}'s owner reference restored",
             lambda: owner_uids(children(k8s_cluster, ns_a, name)[kind]) == [("KinesisExporter", uid, True)],
             timeout=20, interval=0.2)
    # An orphaned child is still the resource's own: no NameTaken.
    wait_ready(k8s_cluster, ns_a, name, generation=1)


def test_edited_deployment_is_restored(k8s_cluster: Cluster, operator: RunningOperator, ns_a: str) -> None:
    name = "heal-deploy"
    apply(k8s_cluster, kex_manifest(ns_a, name, "heal-stream"))
    wait_ready(k8s_cluster, ns_a, name, generation=1)
    deploy = children(k8s_cluster, ns_a, name)["Deployment"]
    good = deploy["spec"]["template"]["metadata"]["annotations"][RESTART_HASH]
    k8s_cluster.kubectl("-n", ns_a, "patch", "deployment", name, "-p", json.dumps(
        {"spec": {"template": {"metadata": {"annotations": {RESTART_HASH: "tampered"}}}}}))

    def back():
        d = children(k8s_cluster, ns_a, name)["Deployment"]
        value = d["spec"]["template"]["metadata"]["annotations"][RESTART_HASH]
        return d if value == good and d["metadata"]["generation"] > deploy["metadata"]["generation"] else None
    poll("the restart-hash annotation to be restored", back, timeout=30, interval=0.2)
    wait_ready(k8s_cluster, ns_a, name, generation=1)


def test_edited_service_port_is_restored(k8s_cluster: Cluster, operator: RunningOperator, ns_a: str) -> None:
    name = "heal-svc"
    apply(k8s_cluster, kex_manifest(ns_a, name, "heal-stream"))
    wait_ready(k8s_cluster, ns_a, name, generation=1)
    k8s_cluster.kubectl("-n", ns_a, "patch", "service", name, "--type", "json",
                        "-p", '[{"op": "replace", "path": "/spec/ports/0/port", "value": 9999}]')
    try:
        def ports():
            svc = children(k8s_cluster, ns_a, name)["Service"]
            return [(p["name"], p["port"]) for p in svc["spec"]["ports"]]
        try:
            poll("the Service ports to be restored", lambda: ports() == SERVICE_PORTS, timeout=30, interval=0.5)
        except AssertionError:
            degraded = conditions(get_kex(k8s_cluster, ns_a, name)).get("Degraded", {})
            raise AssertionError(
                f"Service ports still {ports()}, expected {SERVICE_PORTS}; the resource's Degraded "
                f"condition: {degraded.get('status')} {degraded.get('reason')}: {degraded.get('message', '')[:400]}") from None
        wait_ready(k8s_cluster, ns_a, name, generation=1)
    finally:
        # Leave no resource failing its reconciles behind.
        k8s_cluster.kubectl("-n", ns_a, "patch", "service", name, "--type", "json",
                            "-p", '[{"op": "replace", "path": "/spec/ports/0/port", "value": 4317}]', check=False)


def test_deleting_the_resource_garbage_collects_every_child(
        k8s_cluster: Cluster, operator: RunningOperator, ns_a: str) -> None:
    name = "collected"
    apply(k8s_cluster, kex_manifest(ns_a, name, "collected-stream", replicas=2))
    wait_ready(k8s_cluster, ns_a, name, generation=1)
    assert len(children(k8s_cluster, ns_a, name)) == len(CHILDREN)
    assert pods(k8s_cluster, ns_a, name)
    k8s_cluster.kubectl("-n", ns_a, "delete", "kex", name, "--wait=false")

    left: list[str] = []

    def gone():
        left[:] = sorted(children(k8s_cluster, ns_a, name))
        left.extend(f"ReplicaSet/{h}" for h in replica_sets(k8s_cluster, ns_a, name))
        left.extend(f"Pod/{p['metadata']['name']}" for p in pods(k8s_cluster, ns_a, name))
        return not left
    try:
        poll(f"every child of {name} to be garbage-collected", gone, timeout=90, interval=0.5)
    except AssertionError as err:
        raise AssertionError(f"{err}; still there: {left}") from None
    assert k8s_cluster.kubectl("-n", ns_a, "get", "kex", name, check=False).returncode != 0


# --------------------------------------------------------------------------- 6. scale subresource


def test_kubectl_scale_drives_the_deployment(k8s_cluster: Cluster, operator: RunningOperator, ns_a: str) -> None:
    name = "scaled"
    apply(k8s_cluster, kex_manifest(ns_a, name, "scaled-stream"))
    wait_ready(k8s_cluster, ns_a, name, generation=1)
    assert "PodDisruptionBudget" not in children(k8s_cluster, ns_a, name)  # one replica: no PDB
    sets_before = set(replica_sets(k8s_cluster, ns_a, name))

    k8s_cluster.kubectl("-n", ns_a, "scale", "kex", name, "--replicas=3")
    kex = wait_ready(k8s_cluster, ns_a, name, generation=2)
    assert kex["spec"]["replicas"] == 3
    assert (kex["status"]["replicas"], kex["status"]["readyReplicas"], kex["status"]["ready"]) == (3, 3, "3/3")
    got = children(k8s_cluster, ns_a, name)
    assert got["Deployment"]["spec"]["replicas"] == 3
    assert "PodDisruptionBudget" in got  # more than one replica now
    scale = json.loads(k8s_cluster.kubectl("get", "--raw",
                                           f"/apis/{GROUP_VERSION}/namespaces/{ns_a}/kinesisexporters/{name}/scale").stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3, scale
    assert scale["status"]["selector"] == kex["status"]["selector"]
    # Replicas are not part of the restart hash: no rollout.
    assert set(replica_sets(k8s_cluster, ns_a, name)) == sets_before

    # The operator keeps what the scale subresource set, reconcile after reconcile.
    trigger_reconcile(k8s_cluster, operator, ns_a, name)
    trigger_reconcile(k8s_cluster, operator, ns_a, name)
    assert children(k8s_cluster, ns_a, name)["Deployment"]["spec"]["replicas"] == 3
    kex = get_kex(k8s_cluster, ns_a, name)
    assert kex["spec"]["replicas"] == 3 and kex["status"]["replicas"] == 3 and is_ready(kex)


# --------------------------------------------------------------------------- 7. two teams


def test_two_teams_get_children_only_in_their_own_namespace(
        k8s_cluster: Cluster, operator: RunningOperator, make_namespace) -> None:
    name = "team-telemetry"
    teams = {make_namespace("kex-e2e-team-a"): "team-a-stream", make_namespace("kex-e2e-team-b"): "team-b-stream"}
    for ns, stream in teams.items():
        apply(k8s_cluster, kex_manifest(ns, name, stream, replicas=2))
    uids = {ns: wait_ready(k8s_cluster, ns, name, generation=1)["metadata"]["uid"] for ns in teams}

    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by=kinesis-operator"
    for resource, kind in CHILDREN:
        items = k8s_cluster.get_json(resource, "-A", "-l", selector)["items"]
        where = sorted(i["metadata"]["namespace"] for i in items)
        assert where == sorted(teams), f"{kind}s of {name} live in {where}, expected one in each of {sorted(teams)}"
        for item in items:
            ns = item["metadata"]["namespace"]
            assert owner_uids(item) == [("KinesisExporter", uids[ns], True)], (kind, ns, item["metadata"])
            if kind == "ConfigMap":
                config = yaml.safe_load(item["data"]["config.yaml"])
                assert config["exporters"]["kinesis"]["aws"]["stream_name"] == teams[ns]
    for ns in teams:
        for pod in pods(k8s_cluster, ns, name):
            assert pod["metadata"]["namespace"] == ns and pod["spec"]["serviceAccountName"] == name


# --------------------------------------------------------------------------- 8. the rendered config, run


def test_rendered_config_runs_the_exporter_with_the_pod_identity(
        k8s_cluster: Cluster, operator: RunningOperator, make_namespace, kinesalite: str, moto: str,
        exporter_bin: Path, tmp_path: Path) -> None:
    from conftest import create_stream, moto_assumed_roles, start_recording, stop_recording, sts_calls
    from otlp_helpers import ExporterProcess, read_signal, send_traces, spans_of

    ns = make_namespace("kex-e2e-irsa")
    name = "irsa"
    stream = f"kex-e2e-{uuid.uuid4().hex[:8]}"
    create_stream(kinesalite, stream, 2)
    apply(k8s_cluster, kex_manifest(ns, name, stream, aws={"region": "us-east-1", "kinesisEndpoint": kinesalite},
                                    kpl={"flushIntervalSeconds": 1}, signals=["traces"]))
    wait_ready(k8s_cluster, ns, name, generation=1)
    got = children(k8s_cluster, ns, name)

    # The configuration exactly as the operator rendered it; only the three listen addresses
    # are moved to free 127.0.0.1 ports.
    rendered = yaml.safe_load(got["ConfigMap"]["data"]["config.yaml"])
    assert rendered["exporters"]["kinesis"]["aws"]["kinesis_endpoint"] == kinesalite
    assert rendered["exporters"]["kinesis"]["aws"]["role"] == role_for(ns)
    protocols = rendered["receivers"]["otlp"]["protocols"]
    telemetry = rendered["service"]["telemetry"]["metrics"]
    assert (protocols["grpc"]["endpoint"], protocols["http"]["endpoint"], telemetry["address"]) == \
        ("0.0.0.0:4317", "0.0.0.0:4318", "0.0.0.0:8888")

    # The environment the pod spec declares; the token file path points at a real projected
    # token of the exporter's ServiceAccount for the audience the volume asks for.
    pod_spec = got["Deployment"]["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AWS_ROLE_ARN"] == role_for(ns)
    projection = next(v["projected"]["sources"][0]["serviceAccountToken"]
                      for v in pod_spec["volumes"] if v["name"] == "aws-iam-token")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "aws-iam-token")
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == f"{mount['mountPath']}/{projection['path']}"
    token = k8s_cluster.kubectl("-n", ns, "create", "token", pod_spec["serviceAccountName"],
                                "--audience", projection["audience"], "--duration", "1h").stdout.strip()
    claims = jwt_claims(token)
    assert claims["aud"] == ["sts.amazonaws.com"], claims
    assert claims["sub"] == f"system:serviceaccount:{ns}:{name}", claims
    token_file = tmp_path / "token"
    token_file.write_text(token)
    env["AWS_WEB_IDENTITY_TOKEN_FILE"] = str(token_file)
    env["AWS_ENDPOINT_URL_STS"] = moto
    args = container["args"]
    assert args[:4] == ["--config", "/etc/kinesis-exporter/config.yaml", "--log-format", "json"], args

    proc = ExporterProcess(exporter_bin, tmp_path / "exporter", {}, args=args[4:], env=env, name="from-configmap")
    protocols["grpc"]["endpoint"] = protocols["http"]["endpoint"] = telemetry["address"] = "127.0.0.1:0"
    proc.config_path.write_text(yaml.safe_dump(rendered, sort_keys=False))

    start_recording(moto)
    try:
        proc.start()
        proc.wait_ready()
        sent = send_traces("grpc", proc, {"checkout": [["GET /cart", "SELECT cart", "render"]],
                                          "payments": [["charge", "POST /psp"], ["refund"]]})

        def arrived():
            spans = spans_of(read_signal(kinesalite, stream, "traces"))
            return spans if len(spans) >= len(sent) else None
        spans = poll("the spans in kinesalite", arrived, timeout=60, interval=1)
        proc.stop()
    finally:
        proc.kill()
        calls = stop_recording(moto)

    assert sorted((s.trace_id, s.span_id, s.name, s.service) for s in spans) == \
        sorted((s.trace_id, s.span_id, s.name, s.service) for s in sent)
    web = sts_calls(calls, "AssumeRoleWithWebIdentity")
    assert len(web) == 1, f"expected one AssumeRoleWithWebIdentity call, got {[c.params for c in web]}"
    assert web[0].params["WebIdentityToken"] == token
    assert web[0].params["RoleArn"] == role_for(ns)
    # aws.role equals AWS_ROLE_ARN: no second hop.
    assert sts_calls(calls, "AssumeRole") == []
    assert any(s["role_arn"] == role_for(ns) for s in moto_assumed_roles(moto))


# --------------------------------------------------------------------------- the operator's own log


def test_operator_was_never_denied_by_the_chart_rbac(operator: RunningOperator) -> None:
    # A quota's refusal (test_a_refused_service_is_reported_and_retried) is a 403 too.
    denied = [r for r in operator.process.records()
              if "forbidden" in json.dumps(r).lower() and "exceeded quota" not in json.dumps(r)]
    assert not denied, "the operator hit RBAC denials:\n" + "\n".join(json.dumps(r) for r in denied[:5])
    operator.process.check_running()
