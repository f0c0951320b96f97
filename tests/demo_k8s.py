#!/usr/bin/env python3
"""`make demo`, Kubernetes part: the whole product, from `helm install` to records in Kinesis.

1. Starts the local control plane (tests/k8s/controlplane.sh up: etcd, kube-apiserver with
   TLS, RBAC and PodSecurity, controller-manager, scheduler, kwok with two fake nodes) in a
   temporary directory, plus kinesalite (Kinesis) and moto (STS) on 127.0.0.1.
2. Installs the chart (charts/kinesis-operator) with the real helm, and runs
   target/debug/kinesis-operator locally, authenticated as the chart's ServiceAccount.
3. Creates namespace team-a (restricted Pod Security Standard) and applies the sample
   operator/examples/kinesisexporter.yaml, adapted: kinesisEndpoint is kinesalite. Waits for
   Ready and shows `kubectl get kex` and the children the operator made.
4. Runs target/debug/kinesis-exporter locally with the ConfigMap the operator rendered (only
   the listen addresses moved to free 127.0.0.1 ports) and the environment the Deployment
   declares (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE holding a real `kubectl create token`
   token for sts.amazonaws.com), with STS pointed at moto. Sends traces (over gRPC and HTTP) with the
   OpenTelemetry Python SDK, SIGTERMs the exporter, reads the stream back and summarises it.

Everything is stopped at exit, also on errors and Ctrl-C (the control plane with
`controlplane.sh down`). Needs the control plane binaries (`tests/k8s/controlplane.sh build`,
which `make demo` runs first), tests/.venv (tests/install.sh) and a cargo build.

    tests/.venv/bin/python tests/demo_k8s.py
"""

from __future__ import annotations

import base64
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
    moto_assumed_roles,
    read_all_records,
    shard_ranges,
    start_moto_server,
    start_recording,
    stop_recording,
    sts_calls,
)
from k8s.k8s_helpers import Cluster, poll  # noqa: E402
from k8s.operator_fixtures import (  # noqa: E402
    CHART_DIR,
    OPERATOR_NAMESPACE,
    RELEASE,
    RESTRICTED_LABELS,
    OperatorProcess,
    token_kubeconfig,
)
from otlp_helpers import (  # noqa: E402
    ExporterProcess,
    GotSpan,
    decode_user_record,
    send_traces,
    spans_of,
)

K8S_DIR = TESTS_DIR / "k8s"
CONTROLPLANE = K8S_DIR / "controlplane.sh"
SAMPLE = REPO_DIR / "operator" / "examples" / "kinesisexporter.yaml"

NAMESPACE = "team-a"
ROLE = "arn:aws:iam::123456789012:role/team-a-kinesis"
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
    out_chunks: list[str] = []
    # stderr carries the progress; stdout is short (a path, an export line), read afterwards.
    for line in proc.stderr:
        print(f"    {line.rstrip()}", flush=True)
    out_chunks.append(proc.stdout.read())
    if proc.wait() != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode})")
    return "".join(out_chunks)


# --------------------------------------------------------------------------- peers


def start_kinesalite(workdir: Path, stack: contextlib.ExitStack) -> str:
    from demo import start_kinesalite as start  # demo.py owns the kinesalite start-up
    peer, endpoint = start(workdir)
    stack.callback(peer.stop)
    return endpoint


def start_moto(workdir: Path, stack: contextlib.ExitStack) -> str:
    """moto_server on a free 127.0.0.1 port, recorder on (the test fixture's starter)."""
    motodir = workdir / "moto"
    motodir.mkdir()
    peer, endpoint = start_moto_server(motodir)
    stack.callback(peer.stop)
    return endpoint


# --------------------------------------------------------------------------- cluster


def cluster_of(state: Path) -> Cluster:
    env = dict(line.split("=", 1) for line in (state / "env").read_text().splitlines() if "=" in line)
    return Cluster(dir=state, kubeconfig=state / "kubeconfig", kubectl_bin=env["KUBECTL"],
                   server=env["KEX_K8S_APISERVER"], ca_file=Path(env["KEX_K8S_CA_FILE"]),
                   admin_token=(state / "admin.token").read_text().strip())


def helm(helm_bin: str, cluster: Cluster | None, *args: str, timeout: float = 300) -> str:
    kubeconfig = ["--kubeconfig", str(cluster.kubeconfig)] if cluster else []
    proc = subprocess.run([helm_bin, *kubeconfig, *args],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def kex_ready(kex: dict) -> bool:
    """Ready=True, Progressing=False, Degraded=False for the current generation."""
    status = kex.get("status") or {}
    conds = {c["type"]: c["status"] for c in status.get("conditions", [])}
    return (status.get("observedGeneration") == kex["metadata"]["generation"]
            and conds.get("Ready") == "True" and conds.get("Progressing") == "False"
            and conds.get("Degraded") == "False")


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# --------------------------------------------------------------------------- reading back


# --------------------------------------------------------------------------- the demo


def main() -> int:
    exporter_bin = Path(os.environ.get("KINESIS_EXPORTER_BIN") or REPO_DIR / "target" / "debug" / "kinesis-exporter")
    operator_bin = Path(os.environ.get("KEX_OPERATOR_BIN") or REPO_DIR / "target" / "debug" / "kinesis-operator")
    for binary in (exporter_bin, operator_bin):
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            print(f"error: {binary} not found; run `make build` first", file=sys.stderr)
            return 1

    demo_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="kinesis-exporter-k8s-demo-"))
    state = workdir / "controlplane"
    ok = False
    with contextlib.ExitStack() as stack:
        # The very last thing on a failure or Ctrl-C: where the logs are.
        stack.callback(lambda: ok or print(
            f"    logs kept in {workdir} (control plane: controlplane/logs/, operator/operator.log, "
            f"exporter/, moto/)", file=sys.stderr))
        # Registered first, so it runs last: the control plane goes down whatever happens
        # (also after a half-finished `up`; `down` is safe to repeat).
        def down():
            step("stopping the control plane (controlplane.sh down)")
            subprocess.run([str(CONTROLPLANE), "down", str(state)], capture_output=True, text=True, timeout=120)
        stack.callback(down)
        # Cleanup must finish: ignore a second Ctrl-C / SIGTERM while it runs.
        stack.callback(lambda: (signal.signal(signal.SIGINT, signal.SIG_IGN),
                                signal.signal(signal.SIGTERM, signal.SIG_IGN)))
        try:
            ok = run(stack, workdir, state, exporter_bin, operator_bin)
        except Exception as err:  # noqa: BLE001 - report, clean up (the stack), exit 1
            print(f"\nerror: {err}", file=sys.stderr)
            ok = False
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
        step(f"Kubernetes demo done in {time.monotonic() - demo_start:.0f}s")
    return 0 if ok else 1


def run(stack: contextlib.ExitStack, workdir: Path, state: Path, exporter_bin: Path, operator_bin: Path) -> bool:
    # ---- 1. the control plane and the AWS stand-ins
    step(f"starting the local Kubernetes control plane (controlplane.sh up {state})")
    started = time.monotonic()
    run_streaming([str(CONTROLPLANE), "up", str(state)], "controlplane.sh up")
    cluster = cluster_of(state)
    print(f"    API server {cluster.server}; kubeconfig {cluster.kubeconfig} ({time.monotonic() - started:.0f}s)")
    indent(cluster.kubectl("get", "nodes").stdout)

    step("starting kinesalite (Kinesis) and moto (STS) on 127.0.0.1")
    kinesalite = start_kinesalite(workdir, stack)
    moto = start_moto(workdir, stack)
    stack.callback(step, "stopping kinesalite and moto")
    print(f"    kinesalite {kinesalite}, moto {moto}")

    sample = yaml.safe_load(SAMPLE.read_text())
    stream = sample["spec"]["aws"]["streamName"]
    step(f"creating Kinesis stream {stream} with {SHARDS} shards")
    create_stream(kinesalite, stream, SHARDS)

    # ---- 2. the chart and the operator
    step("helm (tests/k8s/tools.sh ensure_helm; built from Go modules on first use, a few minutes)")
    helm_bin = run_streaming(["bash", str(K8S_DIR / "tools.sh"), "ensure_helm"], "tools.sh ensure_helm").strip().splitlines()[-1]
    print(f"    {helm(helm_bin, None, 'version', '--short').strip()} ({helm_bin})")
    step(f"helm install {RELEASE} charts/kinesis-operator -n {OPERATOR_NAMESPACE} --set replicaCount=1 --wait")
    started = time.monotonic()
    helm(helm_bin, cluster, "install", RELEASE, str(CHART_DIR), "--namespace", OPERATOR_NAMESPACE,
         "--create-namespace", "--set", "replicaCount=1", "--wait", "--timeout", "3m")
    print(f"    installed in {time.monotonic() - started:.1f}s")
    indent(helm(helm_bin, cluster, "list", "-n", OPERATOR_NAMESPACE))
    manifest = [d for d in yaml.safe_load_all(helm(helm_bin, cluster, "get", "manifest", RELEASE,
                                                   "-n", OPERATOR_NAMESPACE)) if d]
    service_account = next(d["metadata"]["name"] for d in manifest if d["kind"] == "ServiceAccount")
    indent(cluster.kubectl("-n", OPERATOR_NAMESPACE, "get", "deploy,sa").stdout)

    step(f"running kinesis-operator locally as the chart's ServiceAccount {OPERATOR_NAMESPACE}/{service_account}")
    opdir = workdir / "operator"
    opdir.mkdir()
    token = cluster.kubectl("-n", OPERATOR_NAMESPACE, "create", "token", service_account,
                            "--duration", "2h").stdout.strip()
    kubeconfig = token_kubeconfig(opdir / "kubeconfig", cluster, token, service_account)
    whoami = subprocess.run([cluster.kubectl_bin, "--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json"],
                            capture_output=True, text=True, timeout=30, check=True)
    operator = OperatorProcess(operator_bin, kubeconfig, opdir)
    stack.callback(operator.kill)
    operator.start()
    operator.wait_ready()
    print(f"    authenticated as {json.loads(whoami.stdout)['status']['userInfo']['username']}; "
          f"/readyz on 127.0.0.1:{operator.port}; log {operator.log_path}")

    # ---- 3. a team's KinesisExporter
    step(f"creating namespace {NAMESPACE} (Pod Security Standard: restricted, enforced)")
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": RESTRICTED_LABELS}}))
    poll(f"ServiceAccount default in {NAMESPACE}",
         lambda: cluster.kubectl("-n", NAMESPACE, "get", "serviceaccount", "default", check=False).returncode == 0,
         timeout=60)

    name = sample["metadata"]["name"]
    sample["metadata"]["namespace"] = NAMESPACE
    sample["spec"]["aws"]["kinesisEndpoint"] = kinesalite
    sample["spec"]["aws"]["role"] = ROLE
    sample["spec"]["replicas"] = REPLICAS
    step(f"kubectl apply: {SAMPLE.relative_to(REPO_DIR)}, with kinesisEndpoint {kinesalite}, "
         f"role {ROLE}, replicas {REPLICAS}")
    indent(yaml.safe_dump({"spec": sample["spec"]}, sort_keys=False), prefix="    | ")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(sample))

    step(f"waiting for KinesisExporter {NAMESPACE}/{name} to be Ready")
    started = time.monotonic()
    poll(f"KinesisExporter {NAMESPACE}/{name} Ready",
         lambda: (operator.check_running(), kex_ready(cluster.get_json("-n", NAMESPACE, "kex", name)))[1],
         timeout=120)
    print(f"    Ready after {time.monotonic() - started:.1f}s")
    step(f"kubectl get kex -n {NAMESPACE}")
    indent(cluster.kubectl("get", "kex", "-n", NAMESPACE).stdout)
    step(f"kubectl get deploy,svc,cm,sa,pdb -n {NAMESPACE}")
    indent(cluster.kubectl("get", "deploy,svc,cm,sa,pdb", "-n", NAMESPACE).stdout)
    step(f"kubectl get pods -n {NAMESPACE} -o wide (admitted under 'restricted', on kwok's fake nodes)")
    indent(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide").stdout)

    # ---- 4. the exporter, as the pod would run it
    configmap = cluster.get_json("-n", NAMESPACE, "configmap", name)
    deployment = cluster.get_json("-n", NAMESPACE, "deployment", name)
    rendered = yaml.safe_load(configmap["data"]["config.yaml"])
    pod_spec = deployment["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    projection = next(v["projected"]["sources"][0]["serviceAccountToken"]
                      for v in pod_spec["volumes"] if v["name"] == "aws-iam-token")
    step(f"the ConfigMap {NAMESPACE}/{name} the operator rendered (config.yaml)")
    indent(configmap["data"]["config.yaml"], prefix="    | ")
    print(f"    container args: {' '.join(container['args'])}")
    print("    container env:  " + ", ".join(f"{k}={v}" for k, v in env.items()))

    step(f"kubectl create token {pod_spec['serviceAccountName']} --audience {projection['audience']} "
         f"(the pod's projected token)")
    pod_token = cluster.kubectl("-n", NAMESPACE, "create", "token", pod_spec["serviceAccountName"],
                                "--audience", projection["audience"], "--duration", "1h").stdout.strip()
    claims = jwt_claims(pod_token)
    print(f"    iss {claims['iss']}, sub {claims['sub']}, aud {claims['aud']}")
    exdir = workdir / "exporter"
    exdir.mkdir()
    token_file = exdir / "token"
    token_file.write_text(pod_token)
    env["AWS_WEB_IDENTITY_TOKEN_FILE"] = str(token_file)
    env["AWS_ENDPOINT_URL_STS"] = moto

    # ExporterProcess passes --config (its own copy) and --log-format json; keep the rest.
    args = container["args"]
    if args[:4] != ["--config", "/etc/kinesis-exporter/config.yaml", "--log-format", "json"]:
        raise RuntimeError(f"unexpected container args {args}")
    extra_args = args[4:]
    proc = ExporterProcess(exporter_bin, exdir, {}, args=extra_args, env=env, name="exporter-from-configmap")
    stack.callback(proc.kill)
    protocols = rendered["receivers"]["otlp"]["protocols"]
    protocols["grpc"]["endpoint"] = proc.grpc_target
    protocols["http"]["endpoint"] = f"127.0.0.1:{proc.http_port}"
    rendered["service"]["telemetry"]["metrics"]["address"] = f"127.0.0.1:{proc.metrics_port}"
    proc.config_path.write_text(yaml.safe_dump(rendered, sort_keys=False))
    step(f"starting kinesis-exporter with that config (listen addresses moved to 127.0.0.1 ports "
         f"{proc.grpc_port}/{proc.http_port}/{proc.metrics_port}) and the pod's env, STS at moto")
    start_recording(moto)
    proc.start()
    try:
        proc.wait_ready()
        print(f"    ready: OTLP gRPC {proc.grpc_target}, OTLP HTTP 127.0.0.1:{proc.http_port}")
        n_spans = sum(TRACES.values()) * SPANS_PER_TRACE
        step(f"sending {sum(TRACES.values())} traces ({n_spans} spans), half over gRPC and half over "
             f"HTTP, with the OpenTelemetry Python SDK")
        plans = [{service: [[f"{service} op{s} #{t} via {protocol}" for s in range(SPANS_PER_TRACE)]
                            for t in range(count // 2 + (count % 2 if protocol == "grpc" else 0))]
                  for service, count in TRACES.items()} for protocol in ("grpc", "http")]
        sent_spans = send_traces("grpc", proc, plans[0]) + send_traces("http", proc, plans[1])
        step("stopping the exporter with SIGTERM (it flushes what it holds)")
        proc.stop()
    except BaseException:
        proc.kill()
        print(f"    exporter log ({proc.log_path}):\n{proc.logs()}", file=sys.stderr)
        raise
    finally:
        calls = stop_recording(moto)

    step("stopping kinesis-operator (SIGTERM)")
    operator.stop()

    # ---- 5. what reached the stream
    step(f"reading {stream} back (every shard, official deaggregator, OTLP classes)")
    settings = rendered["exporters"]["kinesis"]
    encoding, compression = settings.get("encoding", "otlp_proto"), settings.get("compression", "none")
    kinesis_records = read_all_records(kinesalite, stream)
    users = deaggregate_python(kinesis_records)
    # The resource takes traces only (signals: [traces]): one signal per stream, so a
    # consumer knows what each record is.
    decoded = [(user, decode_user_record(user, "traces", encoding, compression)) for user in users]
    got_spans: list[GotSpan] = spans_of([r for _, r in decoded])
    per_shard = {shard: Counter() for shard in shard_ranges(kinesalite, stream)}
    for record in kinesis_records:
        per_shard[record.shard_id]["kinesis"] += 1
    for user, record in decoded:
        per_shard[user.shard_id]["users"] += 1
        per_shard[user.shard_id]["spans"] += len(spans_of([record]))

    web = sts_calls(calls, "AssumeRoleWithWebIdentity")
    hops = sts_calls(calls, "AssumeRole")
    sessions = [s for s in moto_assumed_roles(moto) if s.get("role_arn") == ROLE]

    ratio = len(users) / len(kinesis_records) if kinesis_records else 0.0
    print()
    print(f"Kubernetes demo summary: {NAMESPACE}/{name} -> {stream} ({encoding}, {compression})")
    print(f"  Kinesis records {len(kinesis_records)}, user records {len(users)}, aggregation ratio {ratio:.1f}")
    print(f"  spans decoded   {len(got_spans)} of {len(sent_spans)} sent")
    print(f"  {'shard':<22} {'Kinesis records':>15} {'user records':>13} {'spans':>6}")
    for shard_id, counts in sorted(per_shard.items()):
        print(f"  {shard_id:<22} {counts['kinesis']:>15} {counts['users']:>13} {counts['spans']:>6}")
    for call in web:
        print(f"  STS AssumeRoleWithWebIdentity (moto's recorder): RoleArn {call.params.get('RoleArn')}, "
              f"RoleSessionName {call.params.get('RoleSessionName')}, token sub "
              f"{jwt_claims(call.params.get('WebIdentityToken', 'x.e30.x')).get('sub')}")
    print(f"  STS AssumeRole calls: {len(hops)} (aws.role equals AWS_ROLE_ARN: no second hop); "
          f"moto sessions for {ROLE}: {len(sessions)}")
    print()

    problems = []
    if sorted((s.trace_id, s.span_id, s.name) for s in got_spans) != \
            sorted((s.trace_id, s.span_id, s.name) for s in sent_spans):
        problems.append(f"spans: read back {len(got_spans)}, sent {len(sent_spans)}, or they differ")
    if len(web) != 1 or web[0].params.get("WebIdentityToken") != pod_token or web[0].params.get("RoleArn") != ROLE:
        problems.append(f"expected one AssumeRoleWithWebIdentity with the pod's token for {ROLE}, "
                        f"got {[(c.params.get('RoleArn')) for c in web]}")
    for problem in problems:
        print(f"FAILED: {problem}")
    if not problems:
        print("OK: the operator's rendered configuration and the pod's IRSA identity carried every span "
              "into Kinesis exactly once.")
    print()
    return not problems


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("==> interrupted; everything the demo started has been stopped", file=sys.stderr)
        sys.exit(130)
