"""Tests for oci_image.py: images built without Docker that ctr and kubelet can use.

A tiny dynamically linked C program (libc and libm) stands in for the Rust binaries, so these
tests need only gcc, ldd and, for the unpack-and-run check, umoci. No cluster is involved.

    python3 -m pytest -q -p no:cacheprovider tests/k8s/test_images.py
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from . import oci_image

REPO = Path(__file__).resolve().parents[2]
OCI_IMAGE = Path(oci_image.__file__).resolve()
BINARY_DEST = "/usr/local/bin/kinesis-exporter"
LOADER = "/lib64/ld-linux-x86-64.so.2"
EXPECTED_OUTPUT = "oci-image test binary: cbrt(8) = 2.0\n"
HELLO_C = r"""
#include <math.h>
#include <stdio.h>
int main(int argc, char **argv) {
    (void)argv;
    /* cbrt of a runtime value cannot be folded away, so the binary really needs libm. */
    printf("oci-image test binary: cbrt(%d) = %.1f\n", argc + 7, cbrt(argc + 7.0));
    return 0;
}
"""


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(OCI_IMAGE), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def build_exporter_image(binary: Path, out: Path) -> subprocess.CompletedProcess[str]:
    proc = run_tool("build", "--dockerfile", "exporter/Dockerfile", "--binary", str(binary),
                    "--name", "kinesis-exporter:dev", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return proc


def ldd_paths(binary: Path) -> list[str]:
    """Every absolute path ldd prints (libraries and loader), parsed here, not by oci_image."""
    output = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                            check=True).stdout
    return re.findall(r"(/\S+) \(0x", output)


def read_layout(archive: Path, into: Path) -> SimpleNamespace:
    """Extract an OCI layout tarball and follow index -> manifest -> config/layer, checking
    every descriptor's digest and size against the blob it names."""
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")

    def blob(descriptor: dict) -> bytes:
        algorithm, hex_digest = descriptor["digest"].split(":")
        data = (into / "blobs" / algorithm / hex_digest).read_bytes()
        assert algorithm == "sha256" and hashlib.sha256(data).hexdigest() == hex_digest
        assert len(data) == descriptor["size"], descriptor
        return data

    assert json.loads((into / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((into / "index.json").read_text())
    assert index["schemaVersion"] == 2 and len(index["manifests"]) == 1
    manifest_descriptor = index["manifests"][0]
    assert manifest_descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    manifest = json.loads(blob(manifest_descriptor))
    assert manifest["mediaType"] == manifest_descriptor["mediaType"]
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    [layer_descriptor] = manifest["layers"]
    assert layer_descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    config = json.loads(blob(manifest["config"]))
    layer_gz = blob(layer_descriptor)
    assert layer_gz[4:8] == b"\0\0\0\0", "gzip header mtime is not 0: builds would differ"
    layer_tar = gzip.decompress(layer_gz)
    assert config["rootfs"] == {"type": "layers",
                                "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]}
    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as layer:
        members = {"/" + m.name: m for m in layer.getmembers()}
        files = {name: layer.extractfile(m).read() for name, m in members.items() if m.isfile()}
    return SimpleNamespace(index=index, descriptor=manifest_descriptor, manifest=manifest,
                           config=config, members=members, files=files)


@pytest.fixture(scope="module")
def test_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scratch = tmp_path_factory.mktemp("binary")
    (scratch / "hello.c").write_text(HELLO_C)
    binary = scratch / "kinesis-exporter"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(scratch / "hello.c"), "-lm"],
                   check=True, timeout=120)
    assert any("libc.so" in path for path in ldd_paths(binary)), "not dynamically linked"
    return binary


@pytest.fixture(scope="module")
def exporter_image(test_binary: Path, tmp_path_factory: pytest.TempPathFactory):
    scratch = tmp_path_factory.mktemp("exporter-image")
    proc = build_exporter_image(test_binary, scratch / "image.tar")
    layout = read_layout(scratch / "image.tar", scratch / "layout")
    return SimpleNamespace(tar=scratch / "image.tar", proc=proc, layout=layout,
                           layout_dir=scratch / "layout")


# ---------------------------------------------------------------- Dockerfile parsing


@pytest.mark.parametrize("component, ports", [
    ("exporter", ["4317/tcp", "4318/tcp", "8888/tcp"]),
    ("operator", ["8080/tcp"]),
])
def test_real_dockerfile_final_stage(component: str, ports: list[str]) -> None:
    dockerfile = REPO / component / "Dockerfile"
    stage = oci_image.parse_final_stage(dockerfile.read_text(), str(dockerfile))
    destination = stage.binary_destination(f"kinesis-{component}")
    assert stage.user == "65532:65532"
    assert destination == f"/usr/local/bin/kinesis-{component}"
    assert stage.entrypoint == [destination]
    assert stage.exposed_ports == ports
    assert stage.base.startswith("gcr.io/distroless/")


def test_final_stage_only_and_instruction_forms() -> None:
    stage = oci_image.parse_final_stage(
        "FROM builder AS build\nUSER root\nEXPOSE 1/udp\nENV EARLY=1\n"
        "# comment\nfrom --platform=linux/amd64 base:1 AS final\n"
        "workdir /app\nENV A=1 B=\"two words\"\nENV LEGACY value with spaces\n"
        "COPY --from=build --chown=1:1 /out/tool /out/other \\\n"
        "  # a comment inside a continuation\n"
        "  bin/\n"
        "copy --from=build [\"/out/kinesis-exporter\", \"/opt/exporter\"]\n"
        "expose 9000 9001/UDP\nuser 10:20\nEXPOSE 9002/tcp\n"
        "ENTRYPOINT [\"/opt/exporter\", \"--flag\"]\n")
    assert stage.base == "base:1"
    assert stage.user == "10:20"
    assert stage.entrypoint == ["/opt/exporter", "--flag"]
    assert stage.exposed_ports == ["9000/tcp", "9001/udp", "9002/tcp"]
    assert stage.env == {"A": "1", "B": "two words", "LEGACY": "value with spaces"}
    assert stage.workdir == "/app"
    assert stage.copies_from == [("/out/tool", "/app/bin/tool"), ("/out/other", "/app/bin/other"),
                                 ("/out/kinesis-exporter", "/opt/exporter")]
    assert stage.binary_destination("kinesis-exporter") == "/opt/exporter"
    with pytest.raises(oci_image.ImageError, match="cannot tell which COPY"):
        stage.binary_destination("unknown")


@pytest.mark.parametrize("missing", ["USER", "ENTRYPOINT", "COPY"])
def test_final_stage_without_required_instruction_is_refused(missing: str) -> None:
    lines = {"USER": "USER 65532:65532", "ENTRYPOINT": 'ENTRYPOINT ["/bin/x"]',
             "COPY": "COPY --from=build /out/x /bin/x"}
    # The first stage has everything: only the final stage may count.
    text = "FROM a AS build\n" + "\n".join(lines.values()) + "\nFROM b\n" + "\n".join(
        line for name, line in lines.items() if name != missing)
    with pytest.raises(oci_image.ImageError, match=rf"FROM b\) has no {missing}"):
        oci_image.parse_final_stage(text)


def test_build_cli_refuses_dockerfile_without_user(test_binary: Path, tmp_path: Path) -> None:
    exporter = (REPO / "exporter" / "Dockerfile").read_text()
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(exporter.replace("USER 65532:65532\n", ""))
    out = tmp_path / "image.tar"
    proc = run_tool("build", "--dockerfile", str(dockerfile), "--binary", str(test_binary),
                    "--name", "x:dev", "--out", str(out))
    assert proc.returncode == 1
    assert "has no USER instruction" in proc.stderr
    assert proc.stdout == "" and not out.exists()


def test_shell_form_entrypoint_is_refused() -> None:
    with pytest.raises(oci_image.ImageError, match="exec \\(JSON\\) form"):
        oci_image.parse_final_stage("FROM b\nUSER 1\nCOPY --from=a /x /x\nENTRYPOINT /x --y\n")


def test_parse_ldd() -> None:
    output = ("\tlinux-vdso.so.1 (0x00007ffd)\n\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 "
              "(0x00007f1)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f2)\n")
    assert oci_image.parse_ldd(output) == ["/lib/x86_64-linux-gnu/libm.so.6", LOADER]
    with pytest.raises(oci_image.ImageError, match="libmissing.so.1 not found"):
        oci_image.parse_ldd("\tlibmissing.so.1 => not found\n")


@pytest.mark.parametrize("name, qualified, tag", [
    ("kinesis-exporter:dev", "docker.io/library/kinesis-exporter:dev", "dev"),
    ("kinesis-exporter", "docker.io/library/kinesis-exporter:latest", "latest"),
    ("team/tool:1.2", "docker.io/team/tool:1.2", "1.2"),
    ("registry.k8s.io/pause:kex", "registry.k8s.io/pause:kex", "kex"),
    ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1", "v1"),
])
def test_qualify_image_name(name: str, qualified: str, tag: str) -> None:
    assert oci_image.qualify_image_name(name) == (qualified, tag)


# ---------------------------------------------------------------- the built exporter image


def test_cli_prints_progress_and_manifest_digest(exporter_image) -> None:
    assert exporter_image.proc.stdout == exporter_image.layout.descriptor["digest"] + "\n"
    assert len(exporter_image.proc.stderr.splitlines()) >= 4  # one line per step


def test_index_names_the_image_for_ctr_and_kubelet(exporter_image) -> None:
    descriptor = exporter_image.layout.descriptor
    assert descriptor["annotations"] == {
        "io.containerd.image.name": "docker.io/library/kinesis-exporter:dev",
        "org.opencontainers.image.ref.name": "dev"}
    assert descriptor["platform"] == {"architecture": "amd64", "os": "linux"}


def test_config_matches_the_dockerfile(exporter_image) -> None:
    stage = oci_image.parse_final_stage((REPO / "exporter" / "Dockerfile").read_text())
    config = exporter_image.layout.config
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"]["User"] == stage.user == "65532:65532"
    assert config["config"]["Entrypoint"] == stage.entrypoint == [BINARY_DEST]
    assert config["config"]["ExposedPorts"] == {"4317/tcp": {}, "4318/tcp": {}, "8888/tcp": {}}
    assert any(entry.startswith("PATH=/") for entry in config["config"]["Env"])
    assert config["history"]


def test_layer_holds_binary_libraries_and_base_files(exporter_image, test_binary: Path) -> None:
    members, files = exporter_image.layout.members, exporter_image.layout.files
    binary = members[BINARY_DEST]
    assert binary.isfile() and binary.mode == 0o755
    assert files[BINARY_DEST] == test_binary.read_bytes()
    libraries = ldd_paths(test_binary)
    assert LOADER in libraries and any("libm.so" in path for path in libraries)
    for library in libraries:
        assert files.get(library) == Path(library).resolve().read_bytes(), library
    passwd = files["/etc/passwd"].decode()
    assert "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" in passwd.splitlines()
    assert passwd.startswith("root:x:0:0:")
    assert "nonroot:x:65532:" in files["/etc/group"].decode().splitlines()
    assert "hosts: files dns" in files["/etc/nsswitch.conf"].decode()
    assert members["/tmp"].isdir() and members["/tmp"].mode == 0o1777
    assert members["/home/nonroot"].isdir()
    assert (members["/home/nonroot"].uid, members["/home/nonroot"].gid) == (65532, 65532)
    if Path(oci_image.CA_BUNDLE).exists():
        assert files[oci_image.CA_BUNDLE] == Path(oci_image.CA_BUNDLE).read_bytes()


def test_layer_is_reproducible_tar(exporter_image) -> None:
    members = exporter_image.layout.members
    names = list(members)
    assert names == sorted(names)
    for name, member in members.items():
        parent = name.rsplit("/", 1)[0]
        assert parent == "" or members[parent].isdir(), f"{name} has no parent entry"
        assert member.mtime == 0, name
        if name != "/home/nonroot":
            assert (member.uid, member.gid) == (0, 0), name


def test_two_builds_give_identical_images(exporter_image, test_binary: Path,
                                          tmp_path: Path) -> None:
    again = build_exporter_image(test_binary, tmp_path / "again.tar")
    assert again.stdout == exporter_image.proc.stdout
    assert (tmp_path / "again.tar").read_bytes() == exporter_image.tar.read_bytes()


def test_inspect_prints_config_and_files(exporter_image) -> None:
    proc = run_tool("inspect", str(exporter_image.tar))
    assert proc.returncode == 0, proc.stderr
    assert '"User": "65532:65532"' in proc.stdout
    lines = proc.stdout.splitlines()
    assert f"-rwxr-xr-x 0:0 {BINARY_DEST}" in lines
    assert "drwx------ 65532:65532 /home/nonroot" in lines


def test_unpacked_image_runs_with_only_its_own_libraries(exporter_image, tmp_path: Path) -> None:
    if shutil.which("umoci") is None:
        # make test-k8s installs it where it can; CI must not pass without this check.
        message = "umoci is not installed (apt package umoci): cannot unpack the image"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image",
                    f"{exporter_image.layout_dir}:dev", str(bundle)],
                   check=True, capture_output=True, timeout=120)
    rootfs = bundle / "rootfs"
    runtime = json.loads((bundle / "config.json").read_text())["process"]
    assert runtime["args"] == [BINARY_DEST]
    assert (runtime["user"]["uid"], runtime["user"]["gid"]) == (65532, 65532)
    loader = [str(rootfs / LOADER.lstrip("/")), "--inhibit-cache", "--library-path",
              f"{rootfs}/lib/x86_64-linux-gnu:{rootfs}/usr/lib/x86_64-linux-gnu"]
    binary = str(rootfs / BINARY_DEST.lstrip("/"))
    ran = subprocess.run([*loader, binary], capture_output=True, text=True, timeout=30)
    assert (ran.returncode, ran.stdout) == (0, EXPECTED_OUTPUT), ran.stderr
    # Every library the loader resolved came out of the image, none from the host.
    listed = subprocess.run([*loader, "--list", binary], capture_output=True, text=True,
                            check=True, timeout=30).stdout
    resolved = re.findall(r"=> (\S+) \(0x", listed)
    assert resolved and all(path.startswith(str(rootfs)) for path in resolved), listed


# ---------------------------------------------------------------- the pause image


def test_pause_image(tmp_path: Path) -> None:
    proc = run_tool("pause", "--out", str(tmp_path / "pause.tar"),
                    "--name", "registry.k8s.io/pause:kex")
    assert proc.returncode == 0, proc.stderr
    layout = read_layout(tmp_path / "pause.tar", tmp_path / "layout")
    assert proc.stdout == layout.descriptor["digest"] + "\n"
    assert layout.descriptor["annotations"]["io.containerd.image.name"] == \
        "registry.k8s.io/pause:kex"
    assert layout.config["config"]["User"] == "65535:65535"
    assert layout.config["config"]["Entrypoint"] == ["/pause"]
    assert list(layout.members) == ["/pause"] and layout.members["/pause"].mode == 0o755
    pause = tmp_path / "pause"
    pause.write_bytes(layout.files["/pause"])
    pause.chmod(0o755)
    ldd = subprocess.run(["ldd", str(pause)], capture_output=True, text=True)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr  # static: the image has no libc
    for signo in (signal.SIGTERM, signal.SIGINT):
        assert run_pause_until(pause, signo) == 0


def run_pause_until(pause: Path, signo: int) -> int:
    """Start pause, wait until it has installed its handlers, signal it, return its exit code."""
    process = subprocess.Popen([str(pause)])
    try:
        bit = 1 << (signo - 1)
        deadline = time.monotonic() + 10
        # SigCgt lists the caught signals: signalling earlier would kill it before the handler.
        while not int(Path(f"/proc/{process.pid}/status").read_text().split("SigCgt:")[1]
                      .split()[0], 16) & bit:
            assert time.monotonic() < deadline, "pause never installed its signal handlers"
        process.send_signal(signo)
        return process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
