#!/usr/bin/env python3
"""`make demo`, Kubernetes part: the whole product on a real node, from `helm install` to
records in Kinesis.

1. Starts the local control plane (tests/k8s/controlplane.sh up) and joins a real node to it
   (tests/k8s/node.sh up: kubelet + containerd + runc + a CNI bridge + kube-proxy), imports the
   images `make images` built (no registry, no Docker), and starts kinesalite (Kinesis) and
   moto (STS) on the node's bridge address, where pods reach them.
2. Installs the chart with the real helm: the operator runs as two real pods (leader election).
3. Creates namespace team-a (restricted Pod Security Standard) and applies the sample
   operator/examples/kinesisexporter.yaml, adapted: Kinesis and STS endpoints on the bridge,
   placed on the real node. The exporter pods become Ready through their real probes and
   trade their projected service-account token for the role at moto's STS.
4. Sends traces with the OpenTelemetry Python SDK, over gRPC and HTTP, to the exporter's
   ClusterIP Service (kube-proxy picks a pod), reads the stream back and summarises it per shard.

Everything is stopped at exit, also on errors and Ctrl-C (node.sh down leaves the machine as it
was found; controlplane.sh down). Needs root, the Kubernetes binaries (`make node`), the images
(`make images`) and tests/.venv (tests/install.sh); `make demo` does all of that first.

    sudo tests/.venv/bin/python tests/demo_k8s.py
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))

import yaml  # noqa: E402

from conftest import (  # noqa: E402 - needs the sys.path entry above
    REPO_DIR,
    create_stream,
    deaggregate_python,
    read_all_records,
    shard_ranges,
    start_kinesalite,
    start_moto_server,
    start_recording,
    stop_recording,
    sts_calls,
)
from k8s.k8s_helpers import (  # noqa: E402
    CONTROLPLANE_SH,
    OPERATOR_NAMESPACE,
    RELEASE,
    Cluster,
    is_ready,
    jwt_claims,
    make_namespace,
    poll,
)
from k8s.realnode import platform  # noqa: E402
from otlp_helpers import decode_user_record, send_traces, spans_of  # noqa: E402

K8S_DIR = TESTS_DIR / "k8s"
SAMPLE = REPO_DIR / "operator" / "examples" / "kinesisexporter.yaml"

NAMESPACE = "team-a"
ROLE = f"arn:aws:iam::123456789012:role/{NAMESPACE}/kinesis-writer"
REPLICAS = 2
SHARDS = 4
TRACES = {"checkout": 30, "payments": 20}  # service -> traces of SPANS_PER_TRACE spans
SPANS_PER_TRACE = 5


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def indent(text: str, prefix: str = "    ") -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"{prefix}{line}")
    sys.stdout.flush()


def run_streaming(argv: list[str], what: str) -> str:
    """Run a script whose progress lines go to stderr: show them indented, as they come.
    Returns its stdout; raises with ``what`` on a non-zero exit."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        print(f"    {line.rstrip()}", flush=True)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode})")
    return out


def main() -> int:
    if os.geteuid() != 0:
        print("error: the Kubernetes demo runs a real node (containers, a bridge, iptables): run it as root",
              file=sys.stderr)
        return 1
    demo_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="kinesis-exporter-k8s-demo-"))
    state = workdir / "controlplane"
    ok = False
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: ok or print(
            f"    logs kept in {workdir} (control plane: controlplane/logs/; node: /var/lib/kex-node/logs "
            f"until node.sh down)", file=sys.stderr))

        def down():
            step("stopping the node (node.sh down: processes, mounts, rules, bridge, sysctls) "
                 "and the control plane")
            platform.node_sh("down", timeout=300)
            subprocess.run([str(CONTROLPLANE_SH), "down", str(state)], capture_output=True, text=True, timeout=120)
        stack.callback(down)
        # Cleanup must finish: ignore a second Ctrl-C / SIGTERM while it runs.
        stack.callback(lambda: (signal.signal(signal.SIGINT, signal.SIG_IGN),
                                signal.signal(signal.SIGTERM, signal.SIG_IGN)))
        try:
            ok = run(stack, workdir, state)
        except Exception as err:  # noqa: BLE001 - report, clean up (the stack), exit 1
            print(f"\nerror: {err}", file=sys.stderr)
            ok = False
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
        step(f"Kubernetes demo done in {time.monotonic() - demo_start:.0f}s")
    return 0 if ok else 1


def run(stack: contextlib.ExitStack, workdir: Path, state: Path) -> bool:
    # ---- 1. the control plane, the real node, the images, the AWS stand-ins
    step(f"starting the local Kubernetes control plane (controlplane.sh up {state})")
    run_streaming([str(CONTROLPLANE_SH), "up", str(state)], "controlplane.sh up")
    cluster = Cluster.from_state(state)
    step("joining a real node: kubelet + containerd + runc + CNI bridge + kube-proxy (node.sh up)")
    node = platform.node_up(cluster)
    step("kubectl get nodes -o wide (kwok's two fake nodes, and the real one)")
    indent(cluster.kubectl("get", "nodes", "-o", "wide").stdout)
    step("importing the images built from the release binaries (make images) into containerd")
    for name, tar in platform.load_images().items():
        print(f"    {name} <- {tar} ({tar.stat().st_size / 1e6:.1f} MB)")

    step(f"starting kinesalite (Kinesis) and moto (STS) on the node's bridge address {node.ip}")
    (workdir / "kinesalite").mkdir()
    (workdir / "moto").mkdir()
    kinesalite_peer, kinesalite = start_kinesalite(workdir / "kinesalite", node.ip)
    stack.callback(kinesalite_peer.stop, check=False)
    moto_peer, moto = start_moto_server(workdir / "moto", node.ip)
    stack.callback(moto_peer.stop, check=False)
    print(f"    kinesalite {kinesalite}, moto {moto}")
    sample = yaml.safe_load(SAMPLE.read_text())
    stream = sample["spec"]["aws"]["streamName"]
    step(f"creating Kinesis stream {stream} with {SHARDS} shards")
    create_stream(kinesalite, stream, SHARDS)

    # ---- 2. the chart: the operator as real pods
    step("helm (tests/k8s/tools.sh ensure_helm; built from Go modules on first use)")
    helm_bin = run_streaming(["bash", str(K8S_DIR / "tools.sh"), "ensure_helm"],
                             "tools.sh ensure_helm").strip().splitlines()[-1]
    step(f"helm install {RELEASE} charts/kinesis-operator -n {OPERATOR_NAMESPACE} "
         f"(replicaCount 2, image {platform.OPERATOR_IMAGE}, on the real node) --wait")
    started = time.monotonic()
    chart_dir = workdir / "chart"
    chart_dir.mkdir()
    platform.install_operator(helm_bin, cluster, node, chart_dir)
    print(f"    installed and Ready in {time.monotonic() - started:.1f}s")
    indent(cluster.kubectl("-n", OPERATOR_NAMESPACE, "get", "pods", "-o", "wide").stdout)
    lease = cluster.get_json("-n", OPERATOR_NAMESPACE, "lease", "kinesis-operator")
    print(f"    leader (Lease kinesis-operator): {lease['spec'].get('holderIdentity')}")

    # ---- 3. a team's KinesisExporter
    step(f"creating namespace {NAMESPACE} (Pod Security Standard: restricted, enforced)")
    make_namespace(cluster, NAMESPACE)
    name = sample["metadata"]["name"]
    sample["metadata"]["namespace"] = NAMESPACE
    sample["spec"]["aws"].update({"kinesisEndpoint": kinesalite, "stsEndpoint": moto, "role": ROLE})
    sample["spec"].update({"replicas": REPLICAS, **node.placement()})
    step(f"kubectl apply: {SAMPLE.relative_to(REPO_DIR)}, with Kinesis and STS on the bridge, "
         f"role {ROLE}, replicas {REPLICAS}, on the real node")
    indent(yaml.safe_dump({"spec": sample["spec"]}, sort_keys=False), prefix="    | ")
    start_recording(moto)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(sample))
    step(f"waiting for KinesisExporter {NAMESPACE}/{name} to be Ready (real readiness probes)")
    started = time.monotonic()
    poll(f"KinesisExporter {NAMESPACE}/{name} Ready",
         lambda: is_ready(cluster.get_json("-n", NAMESPACE, "kex", name)), timeout=180, interval=1)
    print(f"    Ready after {time.monotonic() - started:.1f}s")
    indent(cluster.kubectl("get", "kex", "-n", NAMESPACE).stdout)
    step(f"kubectl get pods -n {NAMESPACE} -o wide (real containers on {node.name})")
    indent(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide").stdout)
    service = platform.ServiceTarget(cluster.get_json("-n", NAMESPACE, "service", name)["spec"]["clusterIP"])

    # ---- 4. OTLP through the Service, and what reached the stream
    n_spans = sum(TRACES.values()) * SPANS_PER_TRACE
    step(f"sending {sum(TRACES.values())} traces ({n_spans} spans) with the OpenTelemetry Python SDK to "
         f"Service {NAMESPACE}/{name} ({service.cluster_ip}), half over gRPC :4317, half over HTTP :4318")
    plans = [{svc: [[f"{svc} op{s} #{t} via {protocol}" for s in range(SPANS_PER_TRACE)]
                    for t in range(count // 2 + (count % 2 if protocol == "grpc" else 0))]
              for svc, count in TRACES.items()} for protocol in ("grpc", "http")]
    sent = send_traces("grpc", service, plans[0]) + send_traces("http", service, plans[1])

    settings = sample["spec"]
    encoding, compression = settings.get("encoding", "otlp_proto"), settings.get("compression", "none")
    step(f"reading {stream} back (every shard, official deaggregator, OTLP classes)")

    def everything_arrived():
        records = read_all_records(kinesalite, stream)
        users = deaggregate_python(records)
        decoded = [(u, decode_user_record(u, "traces", encoding, compression)) for u in users]
        got = spans_of([r for _, r in decoded])
        return (records, decoded, got) if len(got) >= len(sent) else None
    kinesis_records, decoded, got_spans = poll("every span in the stream", everything_arrived, timeout=60,
                                               interval=1)
    calls = stop_recording(moto)

    # ---- 5. what the team sees: the pods' own account of their delivery, in the resource
    step(f"waiting for the operator's probe of the pods' /status: {NAMESPACE}/{name} Delivering")

    def delivering():
        kex = cluster.get_json("-n", NAMESPACE, "kex", name)
        shown = {c["type"]: c for c in kex.get("status", {}).get("conditions", [])}.get("Delivering", {})
        return kex if shown.get("status") == "True" else None
    kex = poll("the Delivering condition", delivering, timeout=90, interval=1)
    indent(cluster.kubectl("get", "kex", "-n", NAMESPACE).stdout)
    indent("status.delivery: " + json.dumps(kex["status"].get("delivery", {})))

    per_shard = {shard: Counter() for shard in shard_ranges(kinesalite, stream)}
    for record in kinesis_records:
        per_shard[record.shard_id]["kinesis"] += 1
    for user, record in decoded:
        per_shard[user.shard_id]["users"] += 1
        per_shard[user.shard_id]["spans"] += len(spans_of([record]))
    web = sts_calls(calls, "AssumeRoleWithWebIdentity")
    print()
    print(f"Kubernetes demo summary: {NAMESPACE}/{name} on real pods -> {stream} ({encoding}, {compression})")
    print(f"  Kinesis records {len(kinesis_records)}, user records {len(decoded)}")
    print(f"  spans decoded   {len(got_spans)} of {len(sent)} sent")
    print(f"  {'shard':<22} {'Kinesis records':>15} {'user records':>13} {'spans':>6}")
    for shard_id, counts in sorted(per_shard.items()):
        print(f"  {shard_id:<22} {counts['kinesis']:>15} {counts['users']:>13} {counts['spans']:>6}")
    for call in web:
        claims = jwt_claims(call.params.get("WebIdentityToken", "x.e30.x"))
        print(f"  STS AssumeRoleWithWebIdentity from pod {claims.get('kubernetes.io', {}).get('pod', {}).get('name')}: "
              f"RoleArn {call.params.get('RoleArn')}, token sub {claims.get('sub')}, aud {claims.get('aud')}")
    print()
    problems = []
    if sorted((s.trace_id, s.span_id, s.name) for s in got_spans) != \
            sorted((s.trace_id, s.span_id, s.name) for s in sent):
        problems.append(f"spans: read back {len(got_spans)}, sent {len(sent)}, or they differ")
    if not web or any(c.params.get("RoleArn") != ROLE for c in web):
        problems.append(f"expected the pods' AssumeRoleWithWebIdentity calls for {ROLE}, "
                        f"got {[c.params.get('RoleArn') for c in web]}")
    for problem in problems:
        print(f"FAILED: {problem}")
    if not problems:
        print("OK: real exporter pods, with their projected IRSA tokens, carried every span sent through "
              "the Service into Kinesis exactly once.")
    print()
    return not problems


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("==> interrupted; everything the demo started has been stopped", file=sys.stderr)
        sys.exit(130)
