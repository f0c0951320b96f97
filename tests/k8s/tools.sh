#!/usr/bin/env bash
# Kubernetes tooling for the chart checks, built from the Go module proxy and cached outside
# the work tree, keyed by version, so only the first run pays for the build.
#
#   source tests/k8s/tools.sh; ensure_helm     sets HELM to the cached binary (builds it once)
#   bash tests/k8s/tools.sh ensure_helm         same, prints the binary's path
#   source tests/k8s/tools.sh; ensure_helm_docs   sets HELM_DOCS (helm-docs: the chart README)
#   source tests/k8s/tools.sh; ensure_prometheus  sets PROMETHEUS (runs the chart's dashboard
#                                                 queries and alert rules in the tests)
#   source tests/k8s/tools.sh; ensure_otelcol     sets OTELCOL (the Collector with the contrib
#                                                 awskinesisexporter, built with ocb: make bench-e2e)
#   bash tests/k8s/tools.sh ensure_apt_packages PKG...  installs the Debian packages among PKG
#                                                 that are missing (apt-get, as root)
#
# Cache: ${KINESIS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kinesis-exporter/bin}
# Needs: go (1.26+, as helm's go.mod asks) on PATH. Builds run under `nice -n 19` with
# GOFLAGS=-p=1 so they leave the CPU to anything else running (cargo, tests).

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
HELM_DOCS_VERSION="${HELM_DOCS_VERSION:-v1.14.2}"
# The Go module's v0.X.Y is Prometheus 3.X.Y.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
# The newest awskinesisexporter the Go module proxy serves here; ocb and the core modules match.
OTELCOL_VERSION="${OTELCOL_VERSION:-v0.161.0}"
# Go build parallelism: 1 on a developer's machine, so builds leave the CPU to cargo and
# tests; every core under CI, where nothing else runs.
KEX_GO_PARALLELISM="${KEX_GO_PARALLELISM:-$([ "${CI:-}" = true ] && nproc || echo 1)}"
KINESIS_TOOLS_DIR="${KINESIS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kinesis-exporter/bin}"

_tools_say() { printf '==> %s\n' "$*" >&2; }

_tools_need_go() {
  if ! command -v go >/dev/null 2>&1; then
    if [ -x /usr/local/go/bin/go ]; then
      export PATH="/usr/local/go/bin:$PATH"
    else
      echo "error: go not found on PATH; install Go 1.26+ (https://go.dev/dl or apt-get install golang-go)" >&2
      return 1
    fi
  fi
}

# _tools_cached BIN ARGS...: true when a cached BIN exists and answers ARGS (it works).
_tools_cached() {
  local bin="$1"
  shift
  [ -x "$bin" ] && "$bin" "$@" >/dev/null 2>&1
}

# _tools_prepare: go on PATH and the cache directory, before a build.
_tools_prepare() {
  _tools_need_go && mkdir -p "$KINESIS_TOOLS_DIR"
}

# _tools_go_install BIN PACKAGE@VERSION LDFLAGS: go install into a scratch GOBIN, then move the
# binary (named like the package's last element) to BIN, so a failed build leaves no binary.
_tools_go_install() {
  local bin="$1" package="$2" ldflags="$3" work
  work="$(mktemp -d "$KINESIS_TOOLS_DIR/.build.XXXXXX")" || return 1
  if ! GOBIN="$work" CGO_ENABLED=0 GOFLAGS="-p=${KEX_GO_PARALLELISM} -buildvcs=false" \
       nice -n 19 go install -trimpath -ldflags "$ldflags" "$package"; then
    rm -rf "$work"
    echo "error: building $package failed" >&2
    return 1
  fi
  local name="${package%@*}"
  mv -f "$work/${name##*/}" "$bin" && rm -rf "$work"
}

# ensure_helm: sets HELM to ${KINESIS_TOOLS_DIR}/helm-${HELM_VERSION}, building it on first use.
ensure_helm() {
  local bin="$KINESIS_TOOLS_DIR/helm-$HELM_VERSION"
  if _tools_cached "$bin" version --short; then
    HELM="$bin"
    return 0
  fi
  _tools_prepare || return 1

  local gomod client_go k8s_minor ldflags start
  start=$(date +%s)
  _tools_say "building helm $HELM_VERSION from the Go module proxy (once; cached in $KINESIS_TOOLS_DIR; takes minutes on 2 cores)"
  # helm's own Makefile stamps the version and the Kubernetes version that `helm lint` and
  # `helm template` assume (client-go v0.X.Y -> Kubernetes 1.X); do the same.
  gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')" || return 1
  client_go="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")"
  k8s_minor="$(printf '%s\n' "$client_go" | cut -d. -f2)"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  if [ -n "$k8s_minor" ]; then
    ldflags="$ldflags -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"
    ldflags="$ldflags -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
  fi
  _tools_go_install "$bin" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$ldflags" || return 1
  _tools_say "built $("$bin" version --short) in $(( $(date +%s) - start ))s: $bin"
  HELM="$bin"
}

# ensure_helm_docs: sets HELM_DOCS to ${KINESIS_TOOLS_DIR}/helm-docs-${HELM_DOCS_VERSION}, which
# writes charts/*/README.md from Chart.yaml, values.yaml's "# --" comments and README.md.gotmpl.
ensure_helm_docs() {
  local bin="$KINESIS_TOOLS_DIR/helm-docs-$HELM_DOCS_VERSION" start
  if _tools_cached "$bin" --help; then
    HELM_DOCS="$bin"
    return 0
  fi
  _tools_prepare || return 1
  start=$(date +%s)
  _tools_say "building helm-docs $HELM_DOCS_VERSION from the Go module proxy (once; cached in $KINESIS_TOOLS_DIR)"
  _tools_go_install "$bin" "github.com/norwoodj/helm-docs/cmd/helm-docs@$HELM_DOCS_VERSION" "-s -w" || return 1
  _tools_say "built helm-docs $HELM_DOCS_VERSION in $(( $(date +%s) - start ))s: $bin"
  HELM_DOCS="$bin"
}

# ensure_prometheus: sets PROMETHEUS to ${KINESIS_TOOLS_DIR}/prometheus-${PROMETHEUS_VERSION}, the
# server itself (scrapes, PromQL, rule evaluation), built on first use (minutes on 2 cores).
ensure_prometheus() {
  local bin="$KINESIS_TOOLS_DIR/prometheus-$PROMETHEUS_VERSION" start release
  if _tools_cached "$bin" --version; then
    PROMETHEUS="$bin"
    return 0
  fi
  _tools_prepare || return 1
  start=$(date +%s)
  # Module v0.316.0 is release 3.16.0 (the minor is offset by 300).
  release="${PROMETHEUS_VERSION#v0.}"
  release="3.$(( ${release%%.*} - 300 )).${release#*.}"
  _tools_say "building prometheus $release ($PROMETHEUS_VERSION) from the Go module proxy (once; cached in $KINESIS_TOOLS_DIR; takes minutes on 2 cores)"
  _tools_go_install "$bin" "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
    "-s -w -X github.com/prometheus/common/version.Version=$release" || return 1
  _tools_say "built prometheus $release in $(( $(date +%s) - start ))s: $bin"
  PROMETHEUS="$bin"
}

# ensure_otelcol: sets OTELCOL to ${KINESIS_TOOLS_DIR}/otelcol-kinesis-${OTELCOL_VERSION}: the
# OpenTelemetry Collector Builder (ocb) of that release builds a Collector with the OTLP
# receiver, the batch processor and the contrib awskinesisexporter.
ensure_otelcol() {
  local bin="$KINESIS_TOOLS_DIR/otelcol-kinesis-$OTELCOL_VERSION" start work
  if _tools_cached "$bin" --version; then
    OTELCOL="$bin"
    return 0
  fi
  _tools_prepare || return 1
  start=$(date +%s)
  _tools_say "building the Collector $OTELCOL_VERSION with ocb (otlpreceiver, batchprocessor, awskinesisexporter; once; cached in $KINESIS_TOOLS_DIR; takes minutes on 2 cores)"
  work="$(mktemp -d "$KINESIS_TOOLS_DIR/.build.XXXXXX")" || return 1
  cat > "$work/manifest.yaml" <<MANIFEST
dist:
  name: otelcol-kinesis
  description: OpenTelemetry Collector with the contrib Kinesis exporter (make bench-e2e)
  output_path: $work/dist
  version: ${OTELCOL_VERSION#v}
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver $OTELCOL_VERSION
processors:
  - gomod: go.opentelemetry.io/collector/processor/batchprocessor $OTELCOL_VERSION
exporters:
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/exporter/awskinesisexporter $OTELCOL_VERSION
MANIFEST
  if ! GOBIN="$work/bin" GOFLAGS="-p=${KEX_GO_PARALLELISM} -buildvcs=false" \
       nice -n 19 go install "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION" \
     || ! (cd "$work" && GOFLAGS="-p=${KEX_GO_PARALLELISM} -buildvcs=false" \
           nice -n 19 ./bin/builder --config manifest.yaml >"$work/ocb.log" 2>&1); then
    cat "$work/ocb.log" >&2 2>/dev/null
    rm -rf "$work"
    echo "error: building the Collector with ocb failed" >&2
    return 1
  fi
  mv -f "$work/dist/otelcol-kinesis" "$bin" && rm -rf "$work"
  _tools_say "built the Collector $OTELCOL_VERSION in $(( $(date +%s) - start ))s: $bin"
  OTELCOL="$bin"
}

# Debian packages the tests use (the real node's runc and CNI plugins, umoci for the image
# test), installed once: those of "$@" dpkg does not know, with apt-get, as root.
ensure_apt_packages() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
    _tools_say "error: missing packages ${missing[*]}, and no apt-get as root to install them"
    return 1
  fi
  _tools_say "installing ${missing[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    ensure_helm) ensure_helm; printf '%s\n' "$HELM" ;;
    ensure_helm_docs) ensure_helm_docs; printf '%s\n' "$HELM_DOCS" ;;
    ensure_prometheus) ensure_prometheus; printf '%s\n' "$PROMETHEUS" ;;
    ensure_otelcol) ensure_otelcol; printf '%s\n' "$OTELCOL" ;;
    ensure_apt_packages) shift; ensure_apt_packages "$@" ;;
    *) echo "usage: $0 ensure_helm|ensure_helm_docs|ensure_prometheus|ensure_otelcol|ensure_apt_packages PKG..." >&2; exit 2 ;;
  esac
fi
