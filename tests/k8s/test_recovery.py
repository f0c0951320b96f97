"""The operator after an API server crash (issue #13): kill -9 the real kube-apiserver while
KinesisExporters are being created, start it again, and every resource, including those
created while the operator's watches were re-listing, must become Ready within 30 s of the
restart. The first operator came back after 1 to 6 minutes and dropped resources announced
during the re-list."""

from __future__ import annotations

import json
import subprocess
import threading
import time

from .k8s_helpers import CONTROLPLANE_SH, Cluster, is_ready, kex_manifest, poll
from .operator_fixtures import RunningOperator

RESOURCES = 16
RESTART_BUDGET_SECONDS = 30


def controlplane(*args: str) -> None:
    proc = subprocess.run([str(CONTROLPLANE_SH), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"controlplane.sh {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"


def test_every_resource_is_ready_within_30s_of_an_apiserver_restart(
        k8s_cluster: Cluster, operator: RunningOperator, make_namespace) -> None:
    ns = make_namespace("kex-recovery")
    created: list[str] = []
    failures = {"count": 0}

    def create_all() -> None:
        # Each apply is retried until the API server takes it: some land before the crash,
        # some while it is down (they wait), the rest while the operator re-lists.
        for i in range(RESOURCES):
            name = f"r{i:02d}"
            while True:
                result = k8s_cluster.kubectl("apply", "--server-side", "--field-manager=kex-e2e", "-f", "-",
                                             input=json.dumps(kex_manifest(ns, name, "recovery")),
                                             check=False)
                if result.returncode == 0:
                    created.append(name)
                    break
                failures["count"] += 1
                time.sleep(0.2)  # a client's retry interval, not a synchronisation

    creator = threading.Thread(target=create_all, daemon=True)
    creator.start()
    poll("a few resources created before the crash", lambda: len(created) >= 4, timeout=60, interval=0.05)
    controlplane("kill-apiserver", str(k8s_cluster.dir))
    controlplane("start-apiserver", str(k8s_cluster.dir))
    restarted = time.monotonic()
    creator.join(timeout=120)
    assert not creator.is_alive() and len(created) == RESOURCES, created
    assert failures["count"] > 0, "no apply ever failed: the API server was never down while creating"

    def all_ready():
        items = k8s_cluster.get_json("-n", ns, "kinesisexporters")["items"]
        ready = [k["metadata"]["name"] for k in items if is_ready(k)]
        return ready if len(ready) == RESOURCES else None
    poll(f"all {RESOURCES} KinesisExporters Ready within {RESTART_BUDGET_SECONDS}s of the restart",
         all_ready, timeout=max(1.0, RESTART_BUDGET_SECONDS - (time.monotonic() - restarted)), interval=0.25)
    print(f"all {RESOURCES} Ready {time.monotonic() - restarted:.1f}s after the API server was back; "
          f"{failures['count']} applies failed while it was down")
    operator.process.check_running()
