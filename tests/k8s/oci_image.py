"""Build container images for a kubelet+containerd node from local binaries: no Docker, no registry.

The images are OCI image-layout tarballs for ``ctr -n k8s.io images import FILE.tar``:

    oci_image.py build --dockerfile exporter/Dockerfile --binary target/release/kinesis-exporter \\
        --name kinesis-exporter:dev --out exporter.tar
    oci_image.py pause --name registry.k8s.io/pause:kex --out pause.tar
    oci_image.py inspect exporter.tar

``build`` reads the final stage of the Dockerfile (USER, ENTRYPOINT, EXPOSE, ENV, WORKDIR and
where ``COPY --from=...`` puts the binary) and stands in for its distroless base with one layer:
the binary, the shared libraries ``ldd`` lists (taken from this host), passwd/group entries for
root and nonroot (65532), /tmp, /home/nonroot and the host's CA bundle. Every timestamp and
owner is fixed, so the same inputs always give the same digests.

``ctr`` names an imported image after the index's ``io.containerd.image.name`` annotation, taken
verbatim, so it holds the fully qualified name kubelet asks containerd for: a bare
``kinesis-exporter:dev`` is ``docker.io/library/kinesis-exporter:dev``. The pause image is used
only once containerd's CRI sandbox image setting names it (``registry.k8s.io/pause:kex``).

Pure functions (parsing, layer/config/manifest/index bytes) are kept apart from the I/O so the
tests can import them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import platform
import posixpath
import shlex
import stat
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# The libraries are copied from this host, so the image has the host's architecture.
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
EPOCH = "1970-01-01T00:00:00Z"  # a fixed "created" time keeps digests reproducible
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PAUSE_SOURCE = Path(__file__).resolve().with_name("pause.c")
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
NONROOT = 65532

# What distroless ships in /etc for its root and nonroot users.
PASSWD = (b"root:x:0:0:root:/root:/sbin/nologin\n"
          b"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
          b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
GROUP = b"root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
NSSWITCH = b"passwd: files\ngroup: files\nhosts: files dns\n"


class ImageError(Exception):
    """A problem with the inputs, reported to the user as one line."""


# ---------------------------------------------------------------- Dockerfile final stage


@dataclass
class FinalStage:
    """What the image build needs from the Dockerfile's last stage."""
    base: str
    user: str | None = None
    entrypoint: list[str] | None = None
    exposed_ports: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    copies_from: list[tuple[str, str]] = field(default_factory=list)  # (source, absolute dest)

    def binary_destination(self, binary_name: str) -> str:
        """Where the final stage puts the binary: the only COPY --from, or the one named alike."""
        if len(self.copies_from) == 1:
            return self.copies_from[0][1]
        named = [dest for src, dest in self.copies_from if posixpath.basename(src) == binary_name]
        if len(named) != 1:
            raise ImageError(f"cannot tell which COPY --from copies {binary_name!r}: "
                             f"{self.copies_from}")
        return named[0]


def _logical_lines(text: str) -> list[str]:
    """Instructions with backslash continuations joined; comments and blank lines dropped."""
    lines, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):  # also allowed inside a continuation
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
        else:
            lines.append(pending + stripped)
            pending = ""
    return lines + ([pending] if pending.strip() else [])


def parse_final_stage(text: str, source: str = "Dockerfile") -> FinalStage:
    """Parse the instructions after the last FROM; refuse a stage without USER/ENTRYPOINT/COPY."""
    instructions = [(line.split(None, 1) + [""])[:2] for line in _logical_lines(text)]
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword.upper() == "FROM"]
    if not starts:
        raise ImageError(f"{source}: no FROM instruction")
    from_args = [t for t in instructions[starts[-1]][1].split() if not t.startswith("--")]
    stage = FinalStage(base=from_args[0] if from_args else "?")
    for keyword, args in instructions[starts[-1] + 1:]:
        keyword, args = keyword.upper(), args.strip()
        if keyword == "USER":
            stage.user = args
        elif keyword == "ENTRYPOINT":
            try:  # not the shell form: it needs /bin/sh, which distroless lacks
                stage.entrypoint = json.loads(args)
            except ValueError:
                stage.entrypoint = None
            if not isinstance(stage.entrypoint, list) or not stage.entrypoint:
                raise ImageError(f"{source}: ENTRYPOINT must be in exec (JSON) form: {args}")
        elif keyword == "EXPOSE":
            stage.exposed_ports += [p.lower() if "/" in p else f"{p}/tcp" for p in args.split()]
        elif keyword == "ENV":
            if "=" in args.split()[0]:
                stage.env.update(item.split("=", 1) for item in shlex.split(args))
            else:  # legacy form: ENV KEY value with spaces
                key, value = args.split(None, 1)
                stage.env[key] = value
        elif keyword == "WORKDIR":
            stage.workdir = posixpath.normpath(posixpath.join(stage.workdir or "/", args))
        elif keyword == "COPY" and "--from=" in args:
            rest = args
            while rest.startswith("--"):  # --from=, --chown=, --chmod=, --link ...
                rest = rest.split(None, 1)[1] if " " in rest else ""
            paths = json.loads(rest) if rest.startswith("[") else rest.split()
            if len(paths) < 2:
                raise ImageError(f"{source}: COPY needs a source and a destination: {args}")
            *sources, dest = paths
            for src in sources:
                target = posixpath.join(stage.workdir or "/", dest)  # relative dest: from WORKDIR
                if dest.endswith("/") or len(sources) > 1:
                    target = posixpath.join(target, posixpath.basename(src))
                stage.copies_from.append((src, posixpath.normpath(target)))
    missing = [name for name, value in [("USER", stage.user), ("ENTRYPOINT", stage.entrypoint),
                                        ("COPY --from", stage.copies_from)] if not value]
    if missing:
        raise ImageError(f"{source}: final stage (FROM {stage.base}) has no "
                         f"{' / '.join(missing)} instruction")
    return stage


# ---------------------------------------------------------------- pure image building


@dataclass(frozen=True)
class LayerEntry:
    """One file (data is bytes) or directory (data is None) at an absolute path in the image."""
    path: str
    data: bytes | None
    mode: int
    uid: int = 0
    gid: int = 0


def parse_ldd(output: str) -> list[str]:
    """The absolute paths of the libraries and the loader in ``ldd`` output (vdso has none)."""
    paths = []
    for line in output.splitlines():
        name, arrow, target = line.strip().partition("=>")
        candidate = (target if arrow else name).strip()
        if candidate.startswith("not found"):
            raise ImageError(f"ldd: {name.strip()} not found")
        if candidate.startswith("/"):
            paths.append(candidate.split(" (")[0])
    return paths


def qualify_image_name(name: str) -> tuple[str, str]:
    """(fully qualified name, tag) the way containerd's CRI resolves an image reference."""
    if "@" in name:
        raise ImageError(f"digest references are not supported: {name}")
    repository, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "")
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = "docker.io", repository
    if host == "docker.io" and "/" not in path:
        path = f"library/{path}"  # kubelet's `busybox` means docker.io/library/busybox
    return f"{host}/{path}:{tag or 'latest'}", tag or "latest"


def build_layer(entries: list[LayerEntry]) -> bytes:
    """An uncompressed, reproducible layer tar: parents added, sorted, mtime 0, owner by entry."""
    by_path = {entry.path: entry for entry in entries}
    for entry in entries:
        parent = posixpath.dirname(entry.path)
        while parent != "/":
            by_path.setdefault(parent, LayerEntry(parent, None, 0o755))
            parent = posixpath.dirname(parent)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(by_path):
            entry = by_path[path]
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, 0
            if entry.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def _descriptor(media_type: str, blob: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            "size": len(blob), **extra}


def _json_bytes(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build_image(layer_tar: bytes, name: str, user: str, entrypoint: list[str],
                exposed_ports: list[str] = (), env: dict[str, str] | None = None,
                workdir: str | None = None, created_by: str = "oci_image.py"
                ) -> tuple[bytes, str]:
    """The OCI image-layout tarball for one layer, and its manifest digest."""
    layer_gz = gzip.compress(layer_tar, compresslevel=6, mtime=0)
    env_list = [f"{k}={v}" for k, v in {"PATH": DEFAULT_PATH, **(env or {})}.items()]
    runtime = {"User": user, "Entrypoint": entrypoint, "Env": env_list}
    if exposed_ports:
        runtime["ExposedPorts"] = {port: {} for port in exposed_ports}
    if workdir:
        runtime["WorkingDir"] = workdir
    config = _json_bytes({
        "architecture": ARCH, "os": "linux", "created": EPOCH, "config": runtime,
        # diff_ids name the UNcompressed layer; containerd and umoci check them after unpacking.
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
        "history": [{"created": EPOCH, "created_by": created_by}],
    })
    manifest = _json_bytes({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                            "config": _descriptor(MEDIA_CONFIG, config),
                            "layers": [_descriptor(MEDIA_LAYER, layer_gz)]})
    full_name, tag = qualify_image_name(name)
    index = _json_bytes({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [
        _descriptor(MEDIA_MANIFEST, manifest, platform={"architecture": ARCH, "os": "linux"},
                    # ctr import takes io.containerd.image.name verbatim as the image name;
                    # ref.name (the tag only, per the OCI spec) is what umoci/skopeo select by.
                    annotations={"io.containerd.image.name": full_name,
                                 "org.opencontainers.image.ref.name": tag})]})
    blobs = {"blobs/sha256/" + hashlib.sha256(b).hexdigest(): b
             for b in (layer_gz, config, manifest)}
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index, **blobs}
    entries = [LayerEntry("/" + p, d, 0o644) for p, d in files.items()]
    return build_layer(entries), _descriptor(MEDIA_MANIFEST, manifest)["digest"]


def base_entries() -> list[LayerEntry]:
    """What the distroless nonroot base would have provided, minus libraries."""
    return [LayerEntry("/etc/passwd", PASSWD, 0o644), LayerEntry("/etc/group", GROUP, 0o644),
            LayerEntry("/etc/nsswitch.conf", NSSWITCH, 0o644),
            LayerEntry("/tmp", None, 0o1777),
            LayerEntry("/home/nonroot", None, 0o700, NONROOT, NONROOT)]


# ---------------------------------------------------------------- I/O: host files and tools


def progress(message: str) -> None:
    print(f"oci_image: {message}", file=sys.stderr, flush=True)


def shared_libraries(binary: Path) -> list[str]:
    """The libraries and loader ``ldd`` resolves for the binary; none for a static one."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if "not a dynamic executable" in output or "statically linked" in output:
        return []
    if proc.returncode != 0:
        raise ImageError(f"ldd {binary} failed: {output.strip()}")
    return parse_ldd(proc.stdout)


def host_file(path: str, mode: int) -> LayerEntry:
    # Symlinks are followed: the image gets the real contents under the name ldd printed.
    return LayerEntry(path, Path(path).resolve().read_bytes(), mode)


def write_archive(archive: bytes, out: Path) -> None:
    temporary = out.with_name(out.name + ".partial")  # never leave a half-written image
    temporary.write_bytes(archive)
    temporary.replace(out)


def build_command(args: argparse.Namespace) -> str:
    progress(f"reading the final stage of {args.dockerfile}")
    stage = parse_final_stage(Path(args.dockerfile).read_text(), str(args.dockerfile))
    destination = stage.binary_destination(args.binary.name)
    progress(f"listing shared libraries of {args.binary} with ldd")
    libraries = shared_libraries(args.binary)
    entries = base_entries() + [LayerEntry(destination, args.binary.read_bytes(), 0o755)]
    entries += [host_file(library, 0o755) for library in libraries]
    env = dict(stage.env)
    if Path(CA_BUNDLE).exists():  # rustls/OpenSSL need it for TLS to AWS
        entries.append(host_file(CA_BUNDLE, 0o644))
        env.setdefault("SSL_CERT_FILE", CA_BUNDLE)  # as distroless sets it
    progress(f"building the layer: {destination} and {len(entries) - 1} more entries")
    archive, digest = build_image(
        build_layer(entries), args.name, stage.user, stage.entrypoint, stage.exposed_ports,
        env, stage.workdir, created_by=f"oci_image.py build --dockerfile {args.dockerfile}")
    progress(f"writing {args.out} ({len(archive) / 2**20:.1f} MiB)")
    write_archive(archive, args.out)
    return digest


def pause_command(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        binary = Path(scratch) / "pause"
        progress(f"compiling {PAUSE_SOURCE} statically")
        compiled = subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(PAUSE_SOURCE)],
                                  capture_output=True, text=True)
        if compiled.returncode != 0:
            raise ImageError(f"gcc failed: {compiled.stderr.strip()}")
        layer = build_layer([LayerEntry("/pause", binary.read_bytes(), 0o755)])
    progress("building the image")
    archive, digest = build_image(layer, args.name, "65535:65535", ["/pause"],
                                  created_by="oci_image.py pause")
    progress(f"writing {args.out}")
    write_archive(archive, args.out)
    return digest


def read_image(archive: Path) -> tuple[dict, list[tarfile.TarInfo]]:
    """The image config and the layer's members, checking every blob against its digest."""
    with tarfile.open(archive) as outer:
        def blob(descriptor: dict) -> bytes:
            algorithm, hex_digest = descriptor["digest"].split(":", 1)
            data = outer.extractfile(f"blobs/{algorithm}/{hex_digest}").read()
            if hashlib.sha256(data).hexdigest() != hex_digest or len(data) != descriptor["size"]:
                raise ImageError(f"blob {descriptor['digest']} does not match its descriptor")
            return data
        index = json.loads(outer.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]))
        config = json.loads(blob(manifest["config"]))
        layer = gzip.decompress(blob(manifest["layers"][0]))
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        return config, inner.getmembers()


def inspect_command(args: argparse.Namespace) -> None:
    config, members = read_image(args.archive)
    keys = ("User", "Entrypoint", "ExposedPorts", "Env", "WorkingDir")
    print(json.dumps({k: config["config"][k] for k in keys if k in config["config"]}, indent=2))
    for member in members:
        kind = stat.S_IFDIR if member.isdir() else stat.S_IFREG
        print(f"{stat.filemode(kind | member.mode)} {member.uid}:{member.gid} /{member.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\nPure functions")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="image of a binary, per its Dockerfile final stage")
    build.add_argument("--dockerfile", type=Path, required=True)
    build.add_argument("--binary", type=Path, required=True, help="the locally built binary")
    build.add_argument("--name", required=True, help="e.g. kinesis-exporter:dev")
    build.add_argument("--out", type=Path, required=True, help="OCI layout tarball to write")
    pause = commands.add_parser("pause", help="pod sandbox image from pause.c")
    pause.add_argument("--name", default="registry.k8s.io/pause:kex")
    pause.add_argument("--out", type=Path, required=True)
    inspect = commands.add_parser("inspect", help="print an image's config and layer files")
    inspect.add_argument("archive", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            inspect_command(args)
        else:
            print(build_command(args) if args.command == "build" else pause_command(args))
    except (ImageError, OSError) as error:
        print(f"oci_image: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
