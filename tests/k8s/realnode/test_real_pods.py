"""The product on a real node: the operator and its exporters as real pods (images built here,
kubelet + containerd + runc), real probes, a real projected token traded at moto's STS, OTLP
through a ClusterIP Service (kube-proxy) into kinesalite, and rollouts under load that must
lose no acknowledged span.

The tests run in file order and share one node; the last one kills the node's daemons with
SIGKILL and checks that `node.sh down` still leaves the machine clean.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path


import boto3
import requests

from conftest import create_stream, moto_iam_admin, start_recording, stop_recording, sts_calls
from otlp_helpers import one_span_traces, read_signal, send_traces, spans_of
from span_load import HEADER, SpanLoad

from ..k8s_helpers import (
    WRITE_VERBS,
    Cluster,
    apply,
    conditions,
    get_kex,
    jwt_claims,
    kex_manifest,
    make_namespace,
    poll,
    role_for,
    wait_ready,
)
from .conftest import BridgePeers
from .platform import (
    EXPORTER_IMAGE,
    NODE_SH,
    OPERATOR_IMAGE,
    RealNode,
    ServiceTarget,
    deploy_exporter,
    exporter_selector,
    pods,
    wait_pods_ready,
)

RESULTS = Path(os.environ.get("KEX_ROLLOUT_RESULTS", "/tmp/kex-rollout-results.md"))


# --------------------------------------------------------------------------- the node and the operator


def test_the_node_is_real_and_runs_containerd(k8s_cluster: Cluster, real_node: RealNode) -> None:
    node = k8s_cluster.get_json("node", real_node.name)
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://"), info
    server = json.loads(k8s_cluster.kubectl("get", "--raw", "/version").stdout)["gitVersion"]
    assert info["kubeletVersion"] == server, (info, server)
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == real_node.ip
    assert {"key": real_node.taint_key, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    # The Node authorizer: the node's own identity may not read secrets at large.
    can = k8s_cluster.kubectl("auth", "can-i", "list", "secrets", "--all-namespaces",
                              f"--as=system:node:{real_node.name}", "--as-group=system:nodes", check=False)
    assert can.returncode != 0 and can.stdout.startswith("no"), can.stdout + can.stderr
    print(k8s_cluster.kubectl("get", "nodes", "-o", "wide").stdout)


def test_the_chart_runs_the_operator_as_two_real_pods_with_one_leader(
        k8s_cluster: Cluster, real_node: RealNode, operator_release: str) -> None:
    ns = operator_release
    operator_pods = wait_pods_ready(k8s_cluster, ns, "app.kubernetes.io/name=kinesis-operator", 2)
    names = {p["metadata"]["name"] for p in operator_pods}
    for pod in operator_pods:
        assert pod["spec"]["nodeName"] == real_node.name
        status = pod["status"]["containerStatuses"][0]
        assert status["imageID"], status  # a real container from the imported image
        assert status["image"].endswith(OPERATOR_IMAGE), status
    holder = poll("the operator Lease to have a holder",
                  lambda: k8s_cluster.get_json("-n", ns, "lease", "kinesis-operator")
                  .get("spec", {}).get("holderIdentity"), timeout=60)
    # The holder identity is the pod name and a per-process suffix.
    holder = holder.rsplit("_", 1)[0]
    assert holder in names, f"lease held by {holder}, operator pods {names}"
    # kubectl logs and exec go through the apiserver to the kubelet (client certificates both ways).
    poll(f"the leader {holder} to log that it reconciles",
         lambda: "reconciling KinesisExporter resources" in k8s_cluster.kubectl("-n", ns, "logs", holder).stdout,
         timeout=30)
    version = k8s_cluster.kubectl("-n", ns, "exec", holder, "--", "/usr/local/bin/kinesis-operator",
                                  "--version").stdout
    assert version.startswith("kinesis-operator "), version


def lease_spec(cluster: Cluster, ns: str) -> dict:
    return cluster.get_json("-n", ns, "lease", "kinesis-operator").get("spec", {})


def pod_of(identity: str) -> str:
    return identity.rsplit("_", 1)[0]


def operator_pid(pod: str) -> int:
    """The host PID of the operator process in ``pod`` (its container runs on this machine)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"kinesis-operator" not in (proc / "cmdline").read_bytes().split(b"\0")[0]:
                continue
            if f"POD_NAME={pod}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no kinesis-operator process for pod {pod}")


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def writes_by(cluster: Cluster, pod: str, since: datetime) -> list[dict]:
    """Write requests the API server's audit log holds from the operator in ``pod`` (its bound
    token names the pod) received at or after ``since``."""
    out = []
    for line in (cluster.dir / "logs" / "audit.log").read_text().splitlines():
        event = json.loads(line)
        pods_ = event.get("user", {}).get("extra", {}).get("authentication.kubernetes.io/pod-name", [])
        if pod in pods_ and event["verb"] in WRITE_VERBS \
                and datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")) >= since:
            out.append(event)
    return out


def test_one_leader_a_paused_leader_writes_nothing_and_the_lease_is_handed_over(
        k8s_cluster: Cluster, real_node: RealNode, operator_release: str) -> None:
    """Two operator replicas: a leader paused longer than the lease (SIGSTOP) is replaced within
    the lease duration and, once woken, writes nothing and exits; a leader stopped with SIGTERM
    (a rollout) releases the lease, so the other takes over at once; a leader killed with
    SIGKILL is replaced within the lease duration. Writes are counted in the audit log."""
    ns = operator_release
    wait_pods_ready(k8s_cluster, ns, "app.kubernetes.io/name=kinesis-operator", 2)
    kex_ns = make_namespace(k8s_cluster, "kex-real-leader")
    manifest = kex_manifest(kex_ns, "leader", "leader-stream", replicas=0)
    apply(k8s_cluster, manifest)
    wait_ready(k8s_cluster, kex_ns, "leader", generation=1)
    first = lease_spec(k8s_cluster, ns)
    leader = pod_of(first["holderIdentity"])
    pid = operator_pid(leader)

    # 1. SIGSTOP: the other replica takes over after the lease duration (15 s, plus one retry
    #    period of 2 s), counts a transition, and applies a change made meanwhile.
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        manifest["spec"]["kpl"] = {"maxConnections": 8}
        apply(k8s_cluster, manifest)
        second = poll("another replica to take the lease from the paused leader",
                      lambda: (lambda s: s if pod_of(s.get("holderIdentity", "")) != leader else None)(
                          lease_spec(k8s_cluster, ns)), timeout=40, interval=0.25)
        took = time.monotonic() - stopped
        # The follower times the lease from when it saw the last renewal, which the leader
        # may have made up to one retry period (2 s) before it was paused.
        assert 15 - 2 <= took <= 15 + 2 + 2, f"taken over after {took:.1f}s (lease 15 s, retry 2 s)"
        assert second["leaseTransitions"] == first.get("leaseTransitions", 0) + 1, second
        wait_ready(k8s_cluster, kex_ns, "leader", generation=2)
    finally:
        woke = datetime.now(timezone.utc)
        os.kill(pid, signal.SIGCONT)
    # Woken after more than the lease: it stops leading without a write, and exits.
    poll("the woken leader to exit", lambda: not running(pid), timeout=30, interval=0.25)
    assert writes_by(k8s_cluster, leader, woke) == [], "the paused leader wrote after it woke"
    poll("the woken leader's log (its container restarted) to say it stopped leading",
         lambda: "stopped leading" in k8s_cluster.kubectl("-n", ns, "logs", leader, "--previous",
                                                           check=False).stdout, timeout=60, interval=0.5)
    print(f"SIGSTOP: taken over in {took:.1f}s, transitions {second['leaseTransitions']}")
    # Its restarted container is a candidate again.
    wait_pods_ready(k8s_cluster, ns, "app.kubernetes.io/name=kinesis-operator", 2, timeout=120)

    # 2. SIGTERM (what a rollout or a pod deletion sends): the lease is released and taken at
    #    once, well within a lease duration.
    leader = pod_of(second["holderIdentity"])
    deleted = time.monotonic()
    k8s_cluster.kubectl("-n", ns, "delete", "pod", leader, "--wait=false")
    third = poll("the lease to be taken after the leader released it",
                 lambda: (lambda s: s if s.get("holderIdentity") and pod_of(s["holderIdentity"]) != leader
                          else None)(lease_spec(k8s_cluster, ns)), timeout=15, interval=0.1)
    handover = time.monotonic() - deleted
    assert handover < 6, f"handed over after {handover:.1f}s: the lease was not released"

    # 3. SIGKILL: nothing is released; another candidate takes over within the lease duration.
    identity = third["holderIdentity"]
    wait_pods_ready(k8s_cluster, ns, "app.kubernetes.io/name=kinesis-operator", 2, timeout=120)
    killed = time.monotonic()
    os.kill(operator_pid(pod_of(identity)), signal.SIGKILL)
    poll("a new holder after the leader was killed",
         lambda: lease_spec(k8s_cluster, ns).get("holderIdentity") not in (None, "", identity),
         timeout=30, interval=0.25)
    replaced = time.monotonic() - killed
    assert replaced <= 15 + 2 + 2, f"replaced after {replaced:.1f}s"
    wait_pods_ready(k8s_cluster, ns, "app.kubernetes.io/name=kinesis-operator", 2, timeout=120)
    print(f"SIGTERM hand-over {handover:.1f}s; SIGKILL replacement {replaced:.1f}s")


# --------------------------------------------------------------------------- exporters on real pods


def test_exporter_pods_become_ready_and_carry_otlp_through_the_service(
        k8s_cluster: Cluster, real_node: RealNode, operator_release: str,
        bridge_peers: BridgePeers) -> None:
    ns = make_namespace(k8s_cluster, "kex-real-irsa")
    name = "traces"
    stream = f"kex-real-{uuid.uuid4().hex[:8]}"
    create_stream(bridge_peers.kinesis, stream, 2)
    start_recording(bridge_peers.sts)
    try:
        service = deploy_exporter(k8s_cluster, real_node, bridge_peers.kinesis, bridge_peers.sts, ns, name, stream, replicas=2)
        exporter_pods = wait_pods_ready(k8s_cluster, ns, exporter_selector(name), 2)
        for pod in exporter_pods:
            assert pod["spec"]["nodeName"] == real_node.name
            status = pod["status"]["containerStatuses"][0]
            assert status["ready"] and status["restartCount"] == 0, status
            assert status["image"].endswith(EXPORTER_IMAGE), status
        print(k8s_cluster.kubectl("-n", ns, "get", "pods", "-o", "wide").stdout)
        print(k8s_cluster.kubectl("-n", ns, "get", "kex").stdout)

        sent = send_traces("grpc", service, {"checkout": [["GET /cart", "SELECT cart", "render"]]})
        sent += send_traces("http", service, {"payments": [["charge", "POST /psp"], ["refund"]]})

        def arrived():
            spans = spans_of(read_signal(bridge_peers.kinesis, stream, "traces"))
            return spans if len(spans) >= len(sent) else None
        spans = poll("the spans in kinesalite", arrived, timeout=60, interval=1)
    finally:
        calls = stop_recording(bridge_peers.sts)
    assert sorted((s.trace_id, s.span_id, s.name, s.service) for s in spans) == \
        sorted((s.trace_id, s.span_id, s.name, s.service) for s in sent)

    # Each pod traded its own projected token (audience sts.amazonaws.com) for the role.
    web = sts_calls(calls, "AssumeRoleWithWebIdentity")
    assert web, "no AssumeRoleWithWebIdentity call reached moto"
    pod_names = {p["metadata"]["name"] for p in exporter_pods}
    for call in web:
        assert call.params["RoleArn"] == role_for(ns)
        claims = jwt_claims(call.params["WebIdentityToken"])
        assert claims["aud"] == ["sts.amazonaws.com"], claims
        assert claims["sub"] == f"system:serviceaccount:{ns}:{name}", claims
        assert claims["kubernetes.io"]["pod"]["name"] in pod_names, claims


# --------------------------------------------------------------------------- memory bounded by the pod's limit


def test_a_pod_with_a_memory_limit_survives_huge_requests(
        k8s_cluster: Cluster, real_node: RealNode, operator_release: str,
        bridge_peers: BridgePeers) -> None:
    """A 256Mi memory limit makes the operator give the exporter a 128 MiB request budget. The
    19.8 MB request of 600k one-span traces that once took an exporter to 1.37 GB (an OOM kill
    under this limit) is refused whole with 413, naming the key; two 3.5 MB ones at once are
    admitted in turn and stored; the container is never OOM-killed or restarted."""
    ns = make_namespace(k8s_cluster, "kex-real-memory")
    name = "big"
    stream = f"kex-real-{uuid.uuid4().hex[:8]}"
    create_stream(bridge_peers.kinesis, stream, 2)
    service = deploy_exporter(k8s_cluster, real_node, bridge_peers.kinesis, bridge_peers.sts, ns, name,
                              stream, replicas=1, kpl={"backlogCount": 300_000},
                              resources={"limits": {"memory": "256Mi"}, "requests": {"memory": "256Mi"}})
    (pod,) = wait_pods_ready(k8s_cluster, ns, exporter_selector(name), 1)
    config = k8s_cluster.get_json("-n", ns, "configmap", name)["data"]["config.yaml"]
    assert "request_memory_limit_mib: 128" in config, config

    huge = one_span_traces(600_000)
    response = requests.post(service.http_url("/v1/traces"), data=huge,
                             headers={"Content-Type": "application/x-protobuf"}, timeout=120)
    assert response.status_code == 413, (response.status_code, response.text[:300])
    assert "request_memory_limit_mib" in response.text, response.text[:300]

    large = one_span_traces(105_000)  # 3.5 MB, counted at 110 MiB: one at a time
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: requests.post(
            service.http_url("/v1/traces"), data=large,
            headers={"Content-Type": "application/x-protobuf"}, timeout=120).status_code, range(2)))
    assert answers == [200, 200], answers

    status_url = f"http://{pod['status']['podIP']}:8888/status"
    poll("the 210k records stored", lambda: requests.get(status_url, timeout=5).json()["exporters"][0]
         ["records_delivered"] >= 210_000, timeout=120, interval=1)
    (after,) = pods(k8s_cluster, ns, exporter_selector(name))
    container = after["status"]["containerStatuses"][0]
    assert after["metadata"]["name"] == pod["metadata"]["name"]
    assert container["restartCount"] == 0 and "terminated" not in container.get("lastState", {}), container
    print(f"\n256Mi pod: the 19.8 MB request refused with 413; two 3.5 MB requests stored; "
          f"restarts {container['restartCount']}")


# --------------------------------------------------------------------------- status from the data plane


def delivering(cluster: Cluster, ns: str, name: str) -> dict:
    return conditions(get_kex(cluster, ns, name)).get("Delivering", {})


def test_kubectl_get_kex_shows_whose_data_does_not_reach_its_stream(
        k8s_cluster: Cluster, real_node: RealNode, operator_release: str,
        bridge_peers: BridgePeers, iam_moto: str) -> None:
    """Three teams' exporters, all Ready: one delivers; one names a stream that does not exist;
    one runs as a role whose policy (evaluated by moto's IAM) allows ListShards but not
    PutRecords. The pods' own reports reach each resource's status and `kubectl get kex`."""
    ns = make_namespace(k8s_cluster, "kex-real-delivery")
    stream = f"kex-real-{uuid.uuid4().hex[:8]}"
    create_stream(bridge_peers.kinesis, stream, 1)
    admin = moto_iam_admin(iam_moto)
    iam = boto3.client("iam", **admin)
    _, path, role_name = role_for(ns).rsplit("/", 2)
    iam.create_role(RoleName=role_name, Path=f"/{path}/", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
                                                "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/kex"}}]}))
    iam.put_role_policy(RoleName=role_name, PolicyName="read-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*",
                                                "Action": ["kinesis:ListShards", "kinesis:DescribeStream*"]}]}))
    boto3.client("kinesis", **admin).create_stream(StreamName="orders", ShardCount=1)

    endpoints = {"delivering": (bridge_peers.kinesis, bridge_peers.sts, stream),
                 "missing-stream": (bridge_peers.kinesis, bridge_peers.sts, "no-such-stream"),
                 "denied": (iam_moto, iam_moto, "orders")}
    for name, (kinesis, sts, stream_name) in endpoints.items():
        apply(k8s_cluster, kex_manifest(
            ns, name, stream_name, aws={"region": "us-east-1", "kinesisEndpoint": kinesis, "stsEndpoint": sts},
            kpl={"flushIntervalSeconds": 1}, signals=["traces"], replicas=1, **real_node.placement()))
    services = {}
    for name in endpoints:
        wait_ready(k8s_cluster, ns, name, timeout=180)
        services[name] = ServiceTarget(k8s_cluster.get_json("-n", ns, "service", name)["spec"]["clusterIP"])

    # Ready pods, and yet nothing known about delivery until data flows (or a call fails).
    send_traces("grpc", services["delivering"], {"checkout": [["GET /cart", "render"]]})
    send_traces("grpc", services["denied"], {"orders": [["POST /order", "INSERT order"]]})

    def verdict(name: str, status: str, reason: str) -> dict:
        seen: list[dict] = []

        def matches():
            seen.append(delivering(k8s_cluster, ns, name))
            return seen[-1] if (seen[-1].get("status"), seen[-1].get("reason")) == (status, reason) else None
        try:
            return poll(f"{name}: Delivering={status} ({reason})", matches, timeout=90)
        except AssertionError as err:
            raise AssertionError(f"{err}; the condition was {seen[-1] if seen else None}") from None

    ok = verdict("delivering", "True", "Delivering")
    missing = verdict("missing-stream", "False", "StreamNotFound")
    denied = verdict("denied", "False", "AccessDenied")
    print(k8s_cluster.kubectl("-n", ns, "get", "kex").stdout)
    assert ok["message"] == f"records reach stream {stream}", ok
    role = role_for(ns)
    assert f"ListShards on stream no-such-stream as role {role} failed: ResourceNotFoundException" \
        in missing["message"], missing
    # moto's IAM names the principal (the role the pod's token was traded for) and the action.
    assert f"PutRecords on stream orders as role {role} failed: AccessDenied" in denied["message"], denied
    assert f"assumed-role/{role_name}/" in denied["message"], denied
    assert "kinesis:PutRecords" in denied["message"], denied

    delivered = poll("status.delivery of delivering counts every span's record",
                     lambda: (lambda d: d if d.get("recordsDelivered", 0) >= 1 else None)(
                         get_kex(k8s_cluster, ns, "delivering")["status"].get("delivery", {})), timeout=60)
    assert delivered["podsReporting"] == 1 and delivered["recordsReceived"] >= 1, delivered
    dropped = get_kex(k8s_cluster, ns, "denied")["status"]["delivery"]["recordsDropped"]
    assert dropped.get("permanent_error", 0) >= 1, dropped

    # What a team sees: every exporter Ready 1/1, and the Delivery column says which one works.
    table = k8s_cluster.kubectl("-n", ns, "get", "kex", "--no-headers", "-o",
                                "custom-columns=NAME:.metadata.name,READY:.status.ready").stdout
    assert sorted(table.split()) == sorted(["delivering", "1/1", "missing-stream", "1/1", "denied", "1/1"]), table
    rows = {line.split()[0]: line.split() for line in k8s_cluster.kubectl("-n", ns, "get", "kex").stdout.splitlines()[1:]}
    assert "Delivering" in rows["delivering"], rows
    assert "StreamNotFound" in rows["missing-stream"], rows
    assert "AccessDenied" in rows["denied"], rows
    # A Warning event says so too, once.
    events = k8s_cluster.get_json("-n", ns, "events", "--field-selector", "type=Warning")["items"]
    reasons = Counter((e["regarding"]["name"] if "regarding" in e else e["involvedObject"]["name"], e["reason"])
                      for e in events)
    assert reasons[("denied", "AccessDenied")] == 1, reasons
    assert reasons[("missing-stream", "StreamNotFound")] == 1, reasons


# --------------------------------------------------------------------------- rollouts under load


def stored_span_names(peers: BridgePeers, stream: str) -> Counter:
    return Counter(s.name for s in spans_of(read_signal(peers.kinesis, stream, "traces")))


def test_rollouts_under_load_lose_no_acknowledged_span(
        k8s_cluster: Cluster, real_node: RealNode, operator_release: str,
        bridge_peers: BridgePeers) -> None:
    ns = make_namespace(k8s_cluster, "kex-real-rollout")
    name = "rollout"
    stream = f"kex-rollout-{uuid.uuid4().hex[:8]}"
    create_stream(bridge_peers.kinesis, stream, 4)
    service = deploy_exporter(k8s_cluster, real_node, bridge_peers.kinesis, bridge_peers.sts, ns, name, stream, replicas=2)
    selector = exporter_selector(name)
    wait_pods_ready(k8s_cluster, ns, selector, 2)
    assert k8s_cluster.get_json("-n", ns, "pdb", name)["spec"]["maxUnavailable"] == 1

    def kpl_change():
        generation = get_kex(k8s_cluster, ns, name)["metadata"]["generation"]
        old = {p["metadata"]["name"] for p in pods(k8s_cluster, ns, selector)}
        k8s_cluster.kubectl("-n", ns, "patch", "kinesisexporter", name, "--type=merge",
                            "-p", json.dumps({"spec": {"kpl": {"maxConnections": 8}}}))
        wait_ready(k8s_cluster, ns, name, generation=generation + 1, timeout=240)
        new = wait_pods_ready(k8s_cluster, ns, selector, 2, timeout=240)
        assert not old & {p["metadata"]["name"] for p in new}, "the kpl change did not replace every pod"

    def delete_pod():
        victim = pods(k8s_cluster, ns, selector)[0]["metadata"]["name"]
        k8s_cluster.kubectl("-n", ns, "delete", "pod", victim, "--wait=true", timeout=120)
        survivors = wait_pods_ready(k8s_cluster, ns, selector, 2, timeout=180)
        assert victim not in {p["metadata"]["name"] for p in survivors}

    def drain():
        # One real node: the first eviction goes through, its replacement cannot be scheduled
        # (the node is cordoned), and the PDB then refuses the second: one replica keeps serving.
        before = {p["metadata"]["name"] for p in pods(k8s_cluster, ns, selector)}
        out = k8s_cluster.kubectl("drain", real_node.name, "--pod-selector", selector,
                                  "--ignore-daemonsets", "--timeout=40s", check=False, timeout=120)
        text = out.stdout + out.stderr
        assert out.returncode != 0 and "disruption budget" in text, text
        running = [p for p in pods(k8s_cluster, ns, selector)
                   if p["metadata"]["name"] in before and not p["metadata"].get("deletionTimestamp")]
        assert len(running) == 1, "the PDB should have kept exactly one of the old pods"
        k8s_cluster.kubectl("uncordon", real_node.name)
        wait_pods_ready(k8s_cluster, ns, selector, 2, timeout=180)

    reports = []
    for scenario, disrupt in [("kpl-change", kpl_change), ("delete-pod", delete_pod), ("drain", drain)]:
        load = SpanLoad(service.grpc_target, scenario).start()
        try:
            load.wait_acknowledged(500)
            disrupt()
            # Keep the load on the new pods for a moment, then stop and let the last flush land.
            load.wait_acknowledged(len(load.acknowledged) + 500)
        finally:
            load.stop()
        acked = set(load.acknowledged)
        poll(f"{scenario}: every acknowledged span on the stream",
             lambda: acked <= set(stored_span_names(bridge_peers, stream)), timeout=30, interval=1) \
            if acked else None
        reports.append((scenario, load.report(stored_span_names(bridge_peers, stream))))

    table = "\n".join([HEADER, *(report.row(scenario) for scenario, report in reports)])
    RESULTS.write_text(table + "\n")
    print("\n" + table)
    for scenario, report in reports:
        assert report.acknowledged > 1000, (scenario, report)
        assert report.lost == 0, f"{scenario}: {report.lost} acknowledged spans lost\n{table}"


# --------------------------------------------------------------------------- teardown


def test_down_leaves_the_machine_clean_after_kill_9(k8s_cluster: Cluster, real_node: RealNode) -> None:
    """Kill every node daemon with SIGKILL (containers keep running under their shims), then
    `node.sh down` must still remove every process, mount, rule, route and the bridge."""
    node_dir = Path("/var/lib/kex-node")
    for daemon in ["kubelet", "kube-proxy", "containerd"]:
        pid = int((node_dir / "pids" / f"{daemon}.pid").read_text())
        os.kill(pid, 9)
    shims = subprocess.run(["pgrep", "-f", "containerd-shim-runc-v2"], capture_output=True, text=True).stdout
    assert shims.strip(), "expected container shims to outlive containerd"
    down = subprocess.run([str(NODE_SH), "down"], capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    check = subprocess.run([str(NODE_SH), "check-clean"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
