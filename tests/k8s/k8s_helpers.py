"""Helpers for the Kubernetes end-to-end tests (the cluster handle and a polling helper).

Test files import these with ``from .k8s_helpers import ...`` (tests/k8s is a package so
that its conftest.py does not shadow tests/conftest.py, whose helpers the main suite imports
as ``from conftest import ...``).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Callable, NamedTuple


class Cluster(NamedTuple):
    dir: Path
    kubeconfig: Path
    kubectl_bin: str
    server: str
    ca_file: Path
    admin_token: str

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
    """Call ``fn`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
