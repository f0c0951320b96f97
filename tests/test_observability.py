"""What the exporter tells operators: its /status and /metrics, and the chart's alerts and
Grafana dashboard evaluated by a real Prometheus (built from the Go module proxy by
tests/k8s/tools.sh) scraping a real exporter.

One exporter process runs two exporters that take the same traces: ``kinesis/ok`` writes to a
stream that exists in kinesalite, ``kinesis/missing`` to one that does not. So every alert can be
checked both ways at once: the drop and not-delivering alerts must fire for the second and only
for it, the others for neither; every dashboard query must return series.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import ChildProcess, child_env, create_stream, wait_for
from otlp_helpers import kinesis_exporter, send_traces

REPO = Path(__file__).resolve().parent.parent
CHART_FILES = REPO / "charts" / "kinesis-operator" / "files"
ALERTS = CHART_FILES / "kinesis-exporter-alerts.yaml"
DASHBOARD = CHART_FILES / "kinesis-exporter-dashboard.json"
METRIC_NAME = re.compile(r"\bkinesis_exporter_[a-z_]+\b")

# Labelled by the error code Kinesis answers, so no series exists before the first retry (and
# prometheus_client prints no family without one).
OPEN_ENDED = {"kinesis_exporter_kinesis_records_retried_total"}

# The alerts a missing stream must raise for its exporter, and only for it.
EXPECTED_FIRING = {"KinesisExporterDroppingRecords", "KinesisExporterNotDelivering"}


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    built = subprocess.run(["bash", str(REPO / "tests" / "k8s" / "tools.sh"), "ensure_prometheus"],
                           capture_output=True, text=True, timeout=3600)
    if built.returncode != 0:
        pytest.fail(f"cannot build prometheus:\n{built.stderr}", pytrace=False)
    return built.stdout.strip().splitlines()[-1]


def start_prometheus(binary: str, workdir: Path, target: str) -> tuple[ChildProcess, str]:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "kinesis-exporter", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    peer = ChildProcess("prometheus", workdir / "prometheus.log").spawn(
        [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         "--web.listen-address=127.0.0.1:0"], env=child_env(workdir), cwd=workdir)
    listening = re.compile(r'msg="Listening on".*address=(127\.0\.0\.1:\d+)')

    def bound():
        peer.check_running()
        match = listening.search(peer.logs())
        return match.group(1) if match else None
    try:
        url = "http://" + wait_for(bound, 30, "prometheus to log the address it bound")
    except BaseException:
        peer.stop(check=False)
        raise
    return peer, url


def api(url: str, path: str, **params) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


SAMPLE_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                   "gauge": [""], "info": ["_info"]}


def served_names(text: str) -> set[str]:
    """The sample names of every metric family declared in an OpenMetrics text, whether or not
    it has a series yet (a family labelled by error code has none until the first error)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names.update(family + suffix for suffix in SAMPLE_SUFFIXES.get(kind, [""]))
    return names


def dashboard_queries() -> list[tuple[str, list[str]]]:
    """(panel title, its PromQL targets), with the dashboard's variables set to "all"."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        exprs = []
        for target in panel["targets"]:
            expr = target["expr"]
            for variable in ("$namespace", "$pod", "$exporter"):
                expr = expr.replace(variable, ".*")
            exprs.append(expr.replace("$__rate_interval", "1m"))
        queries.append((panel["title"], exprs))
    return queries


def working_and_failing(kinesalite: str, exporter_process):
    """One exporter process taking traces into two exporters: ``kinesis/ok`` to a stream that
    exists, ``kinesis/missing`` to one that does not. Returns the stream and the process."""
    stream = f"obs-{uuid.uuid4().hex[:8]}"
    create_stream(kinesalite, stream, 1)
    proc = exporter_process(
        {"kinesis/ok": kinesis_exporter(stream, kinesalite),
         "kinesis/missing": kinesis_exporter("no-such-stream", kinesalite)},
        pipelines={"traces": {"receivers": ["otlp"], "exporters": ["kinesis/ok", "kinesis/missing"]}})
    return stream, proc


def test_status_reports_what_the_operator_needs(kinesalite, exporter_process):
    stream, proc = working_and_failing(kinesalite, exporter_process)
    send_traces("grpc", proc, {"checkout": [["GET /cart", "render"]]})

    def status():
        with urllib.request.urlopen(proc.telemetry_url("/status"), timeout=5) as response:
            body = json.load(response)
        by_name = {e["exporter"]: e for e in body["exporters"]}
        settled = all(e["records_delivered"] + sum(e["records_dropped"].values()) >= 1
                      for e in by_name.values())
        return by_name if settled else None
    exporters = wait_for(status, 30, "both exporters to settle their records")
    ok, missing = exporters["kinesis/ok"], exporters["kinesis/missing"]
    assert ok["stream"] == stream and ok["records_received"] == ok["records_delivered"] >= 1, ok
    assert ok["last_delivery_age_seconds"] is not None and ok["last_error"] is None, ok
    assert set(ok["records_dropped"]) >= {"retries_exhausted", "permanent_error", "shutdown_deadline"}, ok
    assert missing["records_delivered"] == 0 and missing["records_dropped"]["permanent_error"] >= 1, missing
    error = missing["last_error"]
    assert error["code"] == "ResourceNotFoundException" and error["retryable"] is False, error
    assert error["operation"] in ("ListShards", "PutRecords"), error
    assert missing["last_drop"]["reason"] == "permanent_error", missing
    assert missing["backlog_capacity_records"] > 0, missing


def test_alerts_and_dashboard_run_against_the_exporters_real_metrics(
        kinesalite, exporter_process, prometheus_bin, tmp_path):
    _, proc = working_and_failing(kinesalite, exporter_process)
    with urllib.request.urlopen(proc.telemetry_url("/metrics"), timeout=5) as response:
        served = served_names(response.read().decode()) | OPEN_ENDED

    # Every metric the alerts and the dashboard name is one the exporter serves, from the start.
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    for rule in rules:
        unknown = set(METRIC_NAME.findall(rule["expr"])) - served
        assert not unknown, f"alert {rule['alert']} uses metrics the exporter does not serve: {unknown}"
    for title, exprs in dashboard_queries():
        unknown = set(METRIC_NAME.findall(" ".join(exprs))) - served
        assert not unknown, f"panel {title!r} uses metrics the exporter does not serve: {unknown}"

    prometheus, url = start_prometheus(prometheus_bin, tmp_path, f"127.0.0.1:{proc.metrics_port}")
    try:
        wait_for(lambda: api(url, "query", query='up{job="kinesis-exporter"} == 1')["result"], 30,
                 "prometheus to scrape the exporter")
        for i in range(3):
            send_traces("grpc", proc, {f"svc-{i}": [["GET /a", "b"], ["c"]]})

        def alerts_settled():
            groups = api(url, "rules", type="alert")["groups"]
            alert_rules = {r["name"]: r for g in groups for r in g["rules"]}
            firing = {name for name, r in alert_rules.items() if r["alerts"]}
            return alert_rules if firing >= EXPECTED_FIRING else None
        alert_rules = wait_for(alerts_settled, 60, f"prometheus to raise {sorted(EXPECTED_FIRING)}", interval=0.5)

        assert {r["alert"] for r in rules} == set(alert_rules), "prometheus loaded every rule"
        for name, rule in alert_rules.items():
            assert rule["health"] == "ok", rule
            exporters = {a["labels"].get("exporter") for a in rule["alerts"]}
            if name in EXPECTED_FIRING:
                assert exporters == {"kinesis/missing"}, (name, rule["alerts"])
            else:
                assert not rule["alerts"], f"{name} raised without cause: {rule['alerts']}"
        dropping = alert_rules["KinesisExporterDroppingRecords"]["alerts"][0]
        assert dropping["labels"]["reason"] == "permanent_error", dropping

        # Every dashboard query runs, and every panel shows series now that records flowed
        # through both exporters (a line by error code appears with the first retry).
        for title, exprs in dashboard_queries():
            results = [api(url, "query", query=expr)["result"] for expr in exprs]
            assert any(results), f"panel {title!r} shows nothing: {exprs}"
    finally:
        prometheus.stop(check=False)
