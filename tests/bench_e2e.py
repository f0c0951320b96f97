#!/usr/bin/env python3
"""make bench-e2e: kinesis-exporter and the OpenTelemetry Collector's awskinesisexporter (built
with ocb, tests/k8s/tools.sh ensure_otelcol), side by side on the same load, in one run.

Both receive OTLP/gRPC from the same load generator (tests/bench: otlp-load, 512 spans of a few
attributes per request, 8 requests in flight, every span id unique) and write to the same
Kinesis stand-in (tests/bench: kinesis-standin, 4 shards, never throttles, checks every span it
stores: KPL checksum, shard range, OTLP decode, duplicates). Both run with their defaults and
otlp_proto records; the Collector with its batch processor, as its README recommends.

Per load (fixed rates, then full speed) the runs are interleaved (ours, theirs, theirs, ours, ...),
each in a fresh process, and the table gives medians over the runs: CPU seconds (of every thread
of the process, from its own cgroup where the machine has one, else utime + stime; from the first
request until the last span is stored) per million spans, and
ours / theirs; response latency p50 and p99; peak RSS; spans stored / acknowledged; Kinesis
records and bytes per million spans; the time from the last response to the last span stored.
A run that loses or duplicates an acknowledged span is reported as a failure, not a time.
A second table times, on our bytes per million spans, the hashing the wire formats require
(tests/bench: hash-floor), as a share of the Collector's CPU per span: no exporter that writes
KPL aggregates through the JSON API with SigV4 can cost less than that share.

    tests/.venv/bin/python tests/bench_e2e.py [--loads 5000,20000,0] [--seconds 15] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


class CpuClock:
    """CPU seconds of one process, every thread it ever ran included. From a cgroup of its own
    (nanoseconds) where this machine has one; else utime + stime from /proc, counted in ticks of
    10 ms: a run at 5k spans/s takes about fifteen, too coarse for a ratio."""

    # Each cgroup version's hierarchy, by the file that holds a group's CPU time.
    HIERARCHIES = ((Path("/sys/fs/cgroup/cpuacct"), "cpuacct.usage"), (Path("/sys/fs/cgroup"), "cpu.stat"))

    def __init__(self, pid: int, name: str):
        self.pid, self.usage = pid, None
        for root, usage in self.HIERARCHIES:
            if not (root / usage).exists():
                continue
            group = root / f"kex-bench-{name}-{pid}"
            try:
                group.mkdir()
                (group / "cgroup.procs").write_text(str(pid))
                self.usage = group / usage
                return
            except OSError:
                try:
                    group.rmdir()
                except OSError:
                    pass

    @property
    def source(self) -> str:
        return "cgroup" if self.usage else "utime + stime (10 ms ticks)"

    def read(self) -> float:
        if self.usage is None:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        if self.usage.name == "cpuacct.usage":
            return int(self.usage.read_text()) / 1e9  # nanoseconds
        return int(re.search(r"^usage_usec (\d+)", self.usage.read_text(), re.M).group(1)) / 1e6

    def close(self) -> None:
        """Removes the cgroup (once the process has exited)."""
        if self.usage is not None:
            try:
                self.usage.parent.rmdir()
            except OSError:
                pass


def peak_rss_mib(pid: int) -> float:
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def listening_ports(pid: int) -> set[int]:
    """The TCP ports `pid` listens on, from its socket inodes and /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def wait_for(what: str, condition, timeout: float = 30, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_json(url: str, method: str = "GET") -> dict:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    try:
        return json.loads(body)
    except ValueError:
        return {}


class Contender:
    """One of the two exporters: how to start it listening for OTLP/gRPC on a port it picks."""

    def __init__(self, name: str, argv: list[str], config: str, workdir: Path):
        self.name, self.argv, self.workdir = name, argv, workdir
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(config)
        self.process: subprocess.Popen | None = None

    def start(self, env: dict) -> int:
        log = open(self.workdir / f"{self.name}.log", "ab")
        self.process = subprocess.Popen(self.argv + ["--config", str(self.config)], env=env,
                                        stdout=log, stderr=log, start_new_session=True)
        pid = self.process.pid
        # Each listens on one port for OTLP/gRPC (ours also on its HTTP and telemetry ports,
        # whose addresses it logs).
        if self.name == "kinesis-exporter":
            pattern = re.compile(r'"grpc":"127\.0\.0\.1:(\d+)"')
            return int(wait_for("kinesis-exporter to log its gRPC address", lambda: (
                (m := pattern.search((self.workdir / f"{self.name}.log").read_text())) and m.group(1))))
        ports = wait_for(f"{self.name} to listen", lambda: self.alive() and listening_ports(pid))
        return min(ports)

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited: see {self.workdir / (self.name + '.log')}")
        return True

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Log files reopened per run; the previous run's address must not be read again.
        (self.workdir / f"{self.name}.log").write_bytes(b"")


def run_once(contender: Contender, env: dict, standin: str, load_bin: Path, rate: int, seconds: int,
             in_flight: int) -> dict:
    http_json(f"{standin}/reset", "POST")
    port = contender.start(env)
    pid = contender.process.pid
    clock = CpuClock(pid, contender.name)
    try:
        cpu_before = clock.read()
        load = subprocess.run([str(load_bin), "--target", f"127.0.0.1:{port}", "--rate", str(rate),
                               "--seconds", str(seconds), "--in-flight", str(in_flight)],
                              capture_output=True, text=True, timeout=seconds + 300)
        if load.returncode != 0:
            raise RuntimeError(f"otlp-load failed: {load.stderr}")
        sent = json.loads(load.stdout)
        acknowledged = sent["spans_acknowledged"]
        try:
            stored = wait_for("every acknowledged span in the stand-in", lambda: (
                (s := http_json(f"{standin}/stats"))["distinct_spans"] >= acknowledged and s), timeout=60,
                interval=0.02)
        except TimeoutError:
            stored = http_json(f"{standin}/stats")
        cpu = clock.read() - cpu_before
        rss = peak_rss_mib(pid)
    finally:
        contender.stop()
        clock.close()
    lost = max(0, acknowledged - stored["distinct_spans"])
    return {
        "cpu_per_million": cpu / acknowledged * 1e6 if acknowledged else float("nan"),
        "p50_ms": sent["latency_p50_ms"], "p99_ms": sent["latency_p99_ms"],
        "rss_mib": rss, "sent": sent["spans_sent"], "acknowledged": acknowledged,
        "stored": stored["distinct_spans"], "lost": lost, "duplicates": stored["duplicates"],
        "bad_records": stored["bad_records"], "problem": stored["first_problem"],
        "records_per_million": stored["records"] / max(1, stored["distinct_spans"]) * 1e6,
        "mib_per_million": stored["bytes"] / 2**20 / max(1, stored["distinct_spans"]) * 1e6,
        "tail_ms": stored["last_store_unix_ms"] - sent["last_response_unix_ms"],
        "spans_per_second": acknowledged / sent["seconds"],
        "failed_attempts": sent["failed_attempts"],
        "cpu_source": clock.source,
    }


def hashing_floor(binary: Path, loads: list[int], results: dict[tuple[int, str], list[dict]]) -> list[str]:
    """What the wire formats alone cost us per span, beside the Collector's whole CPU per span:
    the MD5 of every KPL aggregate, and the base64 and SigV4 SHA-256 of every PutRecords body
    (the Collector's exporter does the last two for its own records; it writes no KPL
    aggregates). Timed by hash-floor over our median bytes and records per million spans."""
    lines = ["", "| load | hashing the formats require, CPU s per M spans: MD5 + base64 + SHA-256 | "
             "as a share of the Collector's CPU per span |", "|---|---|---|"]
    for rate in loads:
        ours = [r for r in results[(rate, "kinesis-exporter")] if r["lost"] == 0]
        theirs = [r for r in results[(rate, "otelcol")] if r["lost"] == 0]
        if not ours or not theirs:
            continue
        out = subprocess.run(
            [str(binary),
             "--bytes-per-million", str(int(statistics.median(r["mib_per_million"] for r in ours) * 2**20)),
             "--records-per-million", str(int(statistics.median(r["records_per_million"] for r in ours)))],
            capture_output=True, text=True, check=True, timeout=300)
        floor = json.loads(out.stdout)
        collector = statistics.median(r["cpu_per_million"] for r in theirs)
        label = f"{rate // 1000}k spans/s" if rate else "full speed"
        lines.append(f"| {label} | {floor['total_seconds']:.2f} = {floor['md5_seconds']:.2f} + "
                     f"{floor['base64_seconds']:.2f} + {floor['sha256_seconds']:.2f} "
                     f"({floor['record_bytes'] / 1024:.0f} KiB records) | "
                     f"{floor['total_seconds'] / collector:.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", default="5000,20000,0", help="spans per second, comma-separated; 0 = full speed")
    parser.add_argument("--seconds", type=int, default=15, help="load duration of each run")
    parser.add_argument("--runs", type=int, default=3, help="runs per load and exporter (medians are reported)")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--otelcol", required=True, help="the Collector built with ocb")
    parser.add_argument("--results", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()

    release = target_dir() / "release"
    workdir = Path(tempfile.mkdtemp(prefix="kex-bench-e2e-"))
    standin_proc = subprocess.Popen([str(release / "kinesis-standin")], stdout=subprocess.PIPE, text=True,
                                    start_new_session=True)
    standin = f"http://127.0.0.1:{standin_proc.stdout.readline().strip()}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir),
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(workdir / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "none"),
           "GOMAXPROCS": str(os.cpu_count())}
    ours = Contender("kinesis-exporter", [str(release / "kinesis-exporter"), "--log-format", "json"], f"""
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}, http: {{endpoint: "127.0.0.1:0"}}}}}}}}
exporters:
  kinesis: {{aws: {{stream_name: bench, region: us-east-1, kinesis_endpoint: "{standin}"}}, encoding: otlp_proto}}
service: {{telemetry: {{metrics: {{address: "127.0.0.1:0"}}}}}}
""", workdir)
    theirs = Contender("otelcol", [args.otelcol], f"""
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
processors: {{batch: {{}}}}
exporters:
  awskinesis:
    aws: {{stream_name: bench, region: us-east-1, kinesis_endpoint: "{standin}"}}
    encoding: {{name: otlp_proto}}
service:
  telemetry: {{metrics: {{level: none}}}}
  pipelines: {{traces: {{receivers: [otlp], processors: [batch], exporters: [awskinesis]}}}}
""", workdir)
    loads = [int(x) for x in args.loads.split(",")]
    results: dict[tuple[int, str], list[dict]] = {}
    try:
        for rate in loads:
            label = f"{rate} spans/s" if rate else "full speed"
            for run in range(args.runs):
                order = (ours, theirs) if run % 2 == 0 else (theirs, ours)
                for contender in order:
                    say(f"{label}, run {run + 1}/{args.runs}: {contender.name} ({args.seconds} s)")
                    r = run_once(contender, env, standin, release / "otlp-load", rate, args.seconds,
                                 args.in_flight)
                    results.setdefault((rate, contender.name), []).append(r)
                    print(f"    {r['acknowledged']} spans acknowledged ({r['spans_per_second']:.0f}/s), "
                          f"{r['stored']} stored, lost {r['lost']}, duplicated {r['duplicates']}, "
                          f"cpu {r['cpu_per_million']:.2f} s/M, p99 {r['p99_ms']:.1f} ms, "
                          f"peak RSS {r['rss_mib']:.0f} MiB, tail {r['tail_ms']} ms", flush=True)
    finally:
        ours.stop()
        theirs.stop()
        os.killpg(standin_proc.pid, signal.SIGTERM)

    cpu_source = next(iter(results.values()))[0]["cpu_source"] if results else "none"
    lines = [
        f"`make bench-e2e`: {args.runs} interleaved runs of {args.seconds} s per load, medians; "
        f"512 spans per request, {args.in_flight} in flight; ours / Collector in brackets; "
        f"CPU time from {cpu_source}.",
        "",
        "| load | exporter | CPU s per M spans | p50 / p99 latency ms | peak RSS MiB | stored / acknowledged | "
        "records per M spans | MiB per M spans | last response to last stored, ms | failed runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    failed_any = False
    for rate in loads:
        label = f"{rate // 1000}k spans/s" if rate else "full speed"
        med = {}
        for name in ("kinesis-exporter", "otelcol"):
            runs = results[(rate, name)]
            good = [r for r in runs if r["lost"] == 0 and r["duplicates"] == 0 and r["bad_records"] == 0]
            failed = len(runs) - len(good)
            failed_any |= failed > 0
            m = lambda k: statistics.median(r[k] for r in good) if good else float("nan")  # noqa: E731
            med[name] = {k: m(k) for k in ("cpu_per_million", "p50_ms", "p99_ms", "rss_mib",
                                           "records_per_million", "mib_per_million", "tail_ms",
                                           "spans_per_second")}
            med[name]["stored"] = sum(r["stored"] for r in runs)
            med[name]["acknowledged"] = sum(r["acknowledged"] for r in runs)
            med[name]["failed"] = failed
        for name in ("kinesis-exporter", "otelcol"):
            d = med[name]
            ratio = ""
            if name == "kinesis-exporter":
                ratio = f" ({d['cpu_per_million'] / med['otelcol']['cpu_per_million']:.2f})"
            speed = f" at {d['spans_per_second'] / 1000:.0f}k/s" if rate == 0 else ""
            lines.append(
                f"| {label}{speed} | {name} | {d['cpu_per_million']:.2f}{ratio} | {d['p50_ms']:.1f} / {d['p99_ms']:.1f} | "
                f"{d['rss_mib']:.0f} | {d['stored']} / {d['acknowledged']} | {d['records_per_million']:.0f} | "
                f"{d['mib_per_million']:.0f} | {d['tail_ms']:.0f} | {d['failed']} |")
    lines += hashing_floor(release / "hash-floor", loads, results)
    table = "\n".join(lines)
    print()
    print(table)
    if args.results:
        args.results.write_text(table + "\n")
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
