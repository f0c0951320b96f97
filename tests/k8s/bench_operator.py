#!/usr/bin/env python3
"""`make bench-operator`: the operator at platform scale on the local control plane (kwok's
fake nodes), every request it makes counted from the API server's audit log.

Creates N KinesisExporters (default 1000) in M namespaces (default 100) as fast as kubectl
sends them, then prints: time to all Ready and the Ready curve, and to all settled (Ready, no
longer Progressing and not Degraded: the Services exist too); when the last Deployment was
applied after the last create; per resource, Ready after its Deployment became available
(p50/p99), both by the Deployment's own condition times and by when a second watch of ours
first saw it complete; requests by verb and resource, 429 and 5xx answers; the operator's CPU seconds and
peak RSS; writes per minute at rest; and the same figures for an update of all N.

The operator is the release binary, run locally with the chart's arguments and a token of
the chart's ServiceAccount, so the chart's RBAC, admission policies and rate limits apply.
The built-in controllers' rate limits are raised (KEX_K8S_CONTROLLER_QPS, printed) so that the
cluster's own controllers are not what is measured.

    tests/.venv/bin/python tests/k8s/bench_operator.py [--resources 1000] [--namespaces 100]
                                                        [--rest-seconds 180]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import yaml

TESTS_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS_DIR))

from conftest import cargo_target_dir  # noqa: E402
from k8s.k8s_helpers import (  # noqa: E402
    CHART_DIR,
    CONTROLPLANE_SH,
    OPERATOR_NAMESPACE,
    WRITE_VERBS,
    RELEASE,
    Audit,
    Cluster,
    conditions,
    helm,
    is_ready,
    kex_manifest,
)
from k8s.operator_fixtures import (  # noqa: E402
    OperatorProcess,
    chart_operator_args,
    ensure_helm,
    token_kubeconfig,
)

CONTROLLER_QPS = 500
GOALS = {
    "last Deployment after the last create": 30.0,
    "Ready after its Deployment is available, p99": 2.0,
    "writes per minute at rest": 0,
}


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def summarise(events: list[dict]) -> dict:
    by = Counter()
    codes = Counter()
    for e in events:
        ref = e.get("objectRef", {})
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        by[(e["verb"], resource)] += 1
        codes[e.get("responseStatus", {}).get("code", 0)] += 1
    return {"total": len(events), "by": by, "429": codes[429],
            "5xx": sum(n for c, n in codes.items() if c >= 500),
            "writes": sum(n for (verb, _), n in by.items() if verb in WRITE_VERBS)}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def all_kex(cluster: Cluster) -> list[dict]:
    return cluster.get_json("kinesisexporters", "-A")["items"]


def wait_all_ready(cluster: Cluster, count: int, generation: int, started: float, timeout: float,
                   curve: list[tuple[float, int, int]]) -> float | None:
    """Polls every second, adding (seconds, Ready, settled) to ``curve``; returns seconds from
    ``started`` to all settled, None on timeout."""
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while time.monotonic() < deadline:
        items = all_kex(cluster)
        ready = sum(1 for k in items if k["metadata"]["generation"] == generation
                    and (k.get("status") or {}).get("observedGeneration") == generation
                    and conditions(k).get("Ready", {}).get("status") == "True")
        settled = sum(1 for k in items if is_ready(k, generation))
        elapsed = time.monotonic() - started
        curve.append((elapsed, ready, settled))
        if elapsed - last_print >= 10:
            print(f"    {elapsed:5.0f}s: {ready}/{count} Ready, {settled} settled", flush=True)
            last_print = elapsed
        if settled == count:
            return elapsed
        time.sleep(1)  # a sampling period: this is the curve's resolution, not a wait for a condition
    return None


def sample_until_all_ready(cluster: Cluster, count: int, generation: int, started: float, timeout: float,
                           curve: list[tuple[float, int, int]]):
    """Samples the Ready curve from now on, beside whatever the caller does meanwhile (the
    creation itself); returns a function that waits for the end and gives what
    ``wait_all_ready`` gives."""
    result: list[float | None] = []
    sampler = threading.Thread(
        target=lambda: result.append(wait_all_ready(cluster, count, generation, started, timeout, curve)),
        daemon=True)
    sampler.start()

    def finish() -> float | None:
        sampler.join()
        return result[0] if result else None
    return finish


def apply_all(cluster: Cluster, manifests: list[dict], threads: int = 4) -> None:
    """Server-side apply, ten objects per kubectl call, several calls at once."""
    batches = [manifests[i:i + 10] for i in range(0, len(manifests), 10)]
    errors: list[str] = []

    def worker(mine: list[list[dict]]) -> None:
        for batch in mine:
            out = cluster.kubectl("apply", "--server-side", "--field-manager=kex-bench", "-f", "-",
                                  input=json.dumps({"apiVersion": "v1", "kind": "List", "items": batch}),
                                  check=False, timeout=300)
            if out.returncode != 0:
                errors.append(out.stderr)
    workers = [threading.Thread(target=worker, args=(batches[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(f"{len(errors)} kubectl apply calls failed:\n{errors[0]}")


def managed(cluster: Cluster, resource: str) -> dict[tuple[str, str], dict]:
    """The operator's children of one kind, by (namespace, name)."""
    return {(o["metadata"]["namespace"], o["metadata"]["name"]): o
            for o in cluster.get_json(resource, "-A", "-l", "app.kubernetes.io/managed-by=kinesis-operator")["items"]}


class CompletionWatch:
    """A watch of the operator's Deployments of its own (kubectl --watch), beside the
    operator's: when each Deployment was first seen complete for a generation (rolled out and
    available, the controller's NewReplicaSetAvailable), by this process's clock. A Deployment's
    conditions carry the time the controller computed them, and its status can reach watchers
    seconds later while the cluster is busy; this says when the API told a client. A busy API
    server may end a watch (a consumer too slow for it); kubectl then exits and is started
    again, and its first list counts as seen then, which only makes the figure larger."""

    FIELDS = ('{.metadata.namespace} {.metadata.name} {.metadata.generation} {.status.observedGeneration} '
              '{.status.conditions[?(@.type=="Progressing")].reason}{"\\n"}')

    def __init__(self, cluster: Cluster) -> None:
        self.seen: dict[tuple[str, str, int], float] = {}
        self.restarts = 0
        self.argv = [cluster.kubectl_bin, "--kubeconfig", str(cluster.kubeconfig), "get", "deployments", "-A",
                     "-l", "app.kubernetes.io/managed-by=kinesis-operator", "--watch", "--request-timeout=0",
                     "-o", f"jsonpath={self.FIELDS}"]
        self.stopping = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopping.is_set():
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         text=True, bufsize=1)
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                parts = line.split()
                if len(parts) == 5 and parts[4] == "NewReplicaSetAvailable" and parts[2] == parts[3]:
                    self.seen.setdefault((parts[0], parts[1], int(parts[2])), time.time())
            self.proc.wait()
            if not self.stopping.is_set():
                self.restarts += 1

    def stop(self) -> None:
        self.stopping.set()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.thread.join(timeout=10)


def ready_after_seen_complete(cluster: Cluster, watch: CompletionWatch, generation: int) -> list[float]:
    """Per resource: its Ready transition minus when the other watch first saw its Deployment
    complete for ``generation`` (Ready's time has 1 s resolution, the API's)."""
    out = []
    for kex in all_kex(cluster):
        ready = next((c for c in kex.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
        seen = watch.seen.get((kex["metadata"]["namespace"], kex["metadata"]["name"], generation))
        if ready and seen is not None:
            out.append(max(0.0, parse_time(ready["lastTransitionTime"]) + 1 - seen))
    return out


def ready_after_available(cluster: Cluster) -> list[float]:
    """Per resource: its Ready transition minus when its Deployment became complete, by the
    Deployment's own condition times. 1 s resolution, the API's."""
    deployments = managed(cluster, "deployments")
    out = []
    for kex in all_kex(cluster):
        key = (kex["metadata"]["namespace"], kex["metadata"]["name"])
        deploy = deployments.get(key)
        ready = next((c for c in kex.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
        if not deploy or not ready:
            continue
        available = next((c for c in deploy.get("status", {}).get("conditions", [])
                          if c["type"] == "Available" and c["status"] == "True"), None)
        progressing = next((c for c in deploy.get("status", {}).get("conditions", [])
                            if c["type"] == "Progressing" and c.get("reason") == "NewReplicaSetAvailable"), None)
        complete = max(parse_time(c["lastUpdateTime"]) for c in (available, progressing) if c) \
            if (available or progressing) else None
        if complete is not None:
            out.append(max(0.0, parse_time(ready["lastTransitionTime"]) - complete))
    return out


def seen_line(lag: list[float]) -> str:
    return (f"  Ready after another watch saw its Deployment complete: p50 {percentile(lag, 50):.1f}s, "
            f"p99 {percentile(lag, 99):.1f}s, max {max(lag, default=float('nan')):.1f}s "
            f"({len(lag)} seen; Ready's time rounded up to the next second)")


def seen_line_of(cluster: Cluster, watch: CompletionWatch, generation: int) -> str:
    return seen_line(ready_after_seen_complete(cluster, watch, generation)) + \
        (f"; that watch ended and was started again {watch.restarts} times" if watch.restarts else "")


def phase_table(name: str, seconds: float | None, curve: list[tuple[float, int, int]], events: list[dict],
                cpu: float, count: int) -> list[str]:
    s = summarise(events)
    all_ready = next((t for t, ready, _ in curve if ready == count), None)
    lines = [f"{name}: all {count} Ready in {all_ready:.1f}s, settled (Services too) in {seconds:.1f}s"
             if seconds is not None and all_ready is not None else f"{name}: NOT all settled (timeout)",
             f"  operator requests {s['total']} ({s['total'] / count:.1f} per resource), writes {s['writes']}, "
             f"429: {s['429']}, 5xx: {s['5xx']}, operator CPU {cpu:.1f}s"]
    for (verb, resource), n in sorted(s["by"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {verb:7s} {resource:40s} {n}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--rest-seconds", type=int, default=180)
    parser.add_argument("--timeout", type=int, default=900, help="seconds to wait for all Ready, per phase")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a chart value for the install, e.g. controller.apiQps=100 (repeatable)")
    args = parser.parse_args()
    binary = cargo_target_dir() / "release" / "kinesis-operator"
    if not binary.is_file():
        print(f"error: {binary} is missing; run `cargo build --release -p kinesis-operator`", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="kex-bench-operator-"))
    state = workdir / "controlplane"
    env = dict(os.environ, KEX_K8S_CONTROLLER_QPS=str(CONTROLLER_QPS),
               KEX_K8S_NODE_PODS=str(args.resources * 2))
    step(f"starting the control plane (controller-manager and scheduler --kube-api-qps {CONTROLLER_QPS}, "
         f"2 fake nodes of {args.resources * 2} pods)")
    up = subprocess.run([str(CONTROLPLANE_SH), "up", str(state)], env=env)
    operator = None
    completions = None
    try:
        if up.returncode != 0:
            return 1
        cluster = Cluster.from_state(state)
        helm_bin = ensure_helm()
        step("helm install the chart (its RBAC, admission policies, controller.concurrency and apiQps)")
        helm(helm_bin, cluster, "install", RELEASE, str(CHART_DIR), "--namespace", OPERATOR_NAMESPACE,
             "--create-namespace", "--set", "replicaCount=1", *(a for kv in args.set for a in ("--set", kv)),
             "--wait", "--timeout", "3m")
        manifest = [d for d in yaml.safe_load_all(
            helm(helm_bin, cluster, "get", "manifest", RELEASE, "-n", OPERATOR_NAMESPACE).stdout) if d]
        chart_args = chart_operator_args(manifest)
        account = next(d for d in manifest if d["kind"] == "ServiceAccount")["metadata"]["name"]
        token = cluster.kubectl("-n", OPERATOR_NAMESPACE, "create", "token", account, "--duration", "3h").stdout.strip()
        kubeconfig = token_kubeconfig(workdir / "operator.kubeconfig", cluster, token, account)
        username = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account}"

        namespaces = [f"bench-{i:03d}" for i in range(args.namespaces)]
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces]}))
        for ns in namespaces:
            cluster.kubectl("wait", "-n", ns, "--for=jsonpath={.metadata.name}=default", "serviceaccount/default",
                            "--timeout=60s")

        step(f"starting the operator (release build) with the chart's arguments: {' '.join(chart_args)}")
        operator = OperatorProcess(binary, kubeconfig, workdir, chart_args)
        operator.start()
        operator.wait_ready(timeout=60)
        pid = operator.proc.pid
        audit = Audit(state / "logs" / "audit.log", username)
        audit.read()  # start counting from here
        completions = CompletionWatch(cluster)

        manifests = [kex_manifest(namespaces[i % args.namespaces], f"kex-{i:04d}", f"stream-{i:04d}")
                     for i in range(args.resources)]
        results: list[str] = []

        # -- create
        step(f"creating {args.resources} KinesisExporters in {args.namespaces} namespaces")
        cpu0 = cpu_seconds(pid)
        started = time.monotonic()
        curve: list[tuple[float, int, int]] = []
        ready_sampler = sample_until_all_ready(cluster, args.resources, 1, started, args.timeout, curve)
        apply_all(cluster, manifests)
        created = time.monotonic() - started
        last_create_wall = time.time()
        print(f"    created in {created:.1f}s", flush=True)
        took = ready_sampler()
        cpu_create = cpu_seconds(pid) - cpu0
        events = audit.read()
        created_at = {kind: max(parse_time(o["metadata"]["creationTimestamp"]) for o in managed(cluster, kind).values())
                      for kind in ("deployments", "services")}
        lag = ready_after_available(cluster)
        results += phase_table("create", took, curve, events, cpu_create, args.resources)
        results.append(f"  last Deployment applied {created_at['deployments'] - last_create_wall:+.1f}s after the "
                       f"last create (goal <= {GOALS['last Deployment after the last create']:.0f}s; 1 s resolution); "
                       f"last Service {created_at['services'] - last_create_wall:+.1f}s")
        results.append(f"  Ready after its Deployment became available: p50 {percentile(lag, 50):.0f}s, "
                       f"p99 {percentile(lag, 99):.0f}s, max {max(lag, default=float('nan')):.0f}s "
                       f"(goal p99 <= {GOALS['Ready after its Deployment is available, p99']:.0f}s)")
        results.append(seen_line_of(cluster, completions, 1))
        marks = (10, 20, 30, 45, 60, 90, 120, 180, 240, 300)
        results.append("  Ready curve (Ready / settled): " + ", ".join(
            f"{t}s {max((n for s, n, _ in curve if s <= t), default=0)} / {max((n for s, _, n in curve if s <= t), default=0)}"
            for t in marks if curve and t <= curve[-1][0] + 10))

        # -- at rest
        step(f"at rest for {args.rest_seconds}s: counting the operator's writes")
        rest_start = time.monotonic()
        cpu_rest0 = cpu_seconds(pid)
        minutes: list[int] = []
        while time.monotonic() - rest_start < args.rest_seconds:
            time.sleep(min(60, args.rest_seconds - (time.monotonic() - rest_start)))  # a measuring window
            minutes.append(summarise(audit.read())["writes"])
            print(f"    minute {len(minutes)}: {minutes[-1]} writes", flush=True)
        cpu_rest = cpu_seconds(pid) - cpu_rest0
        results.append(f"at rest: writes per minute {minutes} (goal 0), operator CPU {cpu_rest:.1f}s "
                       f"over {args.rest_seconds}s")

        # -- update all
        step(f"updating all {args.resources} (kpl.flushIntervalSeconds: 2)")
        for m in manifests:
            m["spec"]["kpl"] = {"flushIntervalSeconds": 2}
        cpu1 = cpu_seconds(pid)
        started = time.monotonic()
        curve = []
        ready_sampler = sample_until_all_ready(cluster, args.resources, 2, started, args.timeout, curve)
        apply_all(cluster, manifests)
        took = ready_sampler()
        results += phase_table("update", took, curve, audit.read(), cpu_seconds(pid) - cpu1, args.resources)
        lag = ready_after_available(cluster)
        results.append(f"  Ready after its Deployment became available: p50 {percentile(lag, 50):.0f}s, "
                       f"p99 {percentile(lag, 99):.0f}s")
        results.append(seen_line_of(cluster, completions, 2))
        results.append(f"operator: peak RSS {peak_rss_mib(pid):.0f} MiB, CPU {cpu_seconds(pid):.1f}s in all; "
                       f"controller-manager and scheduler --kube-api-qps {CONTROLLER_QPS}, "
                       f"operator {next((a for a in chart_args if a.startswith('--concurrency')), '')} "
                       f"{next((a for a in chart_args if a.startswith('--api-qps')), '')}")
        print("\n" + "\n".join(results), flush=True)
        ok = took is not None and all(m == 0 for m in minutes)
        return 0 if ok else 1
    finally:
        if completions is not None:
            completions.stop()
        if operator is not None:
            operator.stop(check=False)
        step("stopping the control plane")
        subprocess.run([str(CONTROLPLANE_SH), "down", str(state)], capture_output=True, text=True)


if __name__ == "__main__":
    sys.exit(main())
