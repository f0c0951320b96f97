#!/usr/bin/env bash
# Offline checks of the operator's Helm chart (charts/kinesis-operator), run by `make chart-lint`:
#   1. the chart's CRD is a byte-identical copy of crds/kinesisexporters.yaml, and its README
#      is what helm-docs generates from values.yaml;
#   2. `helm lint --strict` with the default values and with ci/namespaced-values.yaml
#      (namespaced RBAC, leader election, ServiceMonitor);
#   3. values.schema.json rejects bad values (unknown key, replicaCount 0, bad enum, ...);
#   4. `helm template` of each variant validated with `kubernetes-validate --strict` against the
#      Kubernetes OpenAPI schemas (the ServiceMonitor is a CRD type those schemas lack: it is
#      skipped there, with a note, and checked structurally below instead);
#   5. the rendered objects: the restricted Pod Security Standard on the Deployment, the
#      operator's arguments, least-privilege RBAC per mode, the Lease Role only with leader
#      election, the metrics Service and ServiceMonitor selecting the right objects.
# Needs: go (helm is built once and cached, see tools.sh) and tests/.venv (make deps).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
# shellcheck source=tests/k8s/tools.sh
source tests/k8s/tools.sh

say() { printf '==> %s\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

chart=charts/kinesis-operator
release=kex
namespace=kinesis-system
kube_version=1.37.0   # kubernetes-validate 1.37.0 ships schemas up to 1.37; helm v3.22 defaults to it too
py="$root/tests/.venv/bin/python"
validate="$root/tests/.venv/bin/kubernetes-validate"
[ -x "$py" ] && [ -x "$validate" ] \
  || fail "tests/.venv lacks kubernetes-validate (pinned in tests/requirements.txt); run make deps"

# 1. The CRD: crdgen writes crds/kinesisexporters.yaml; the chart carries the same bytes.
say "CRD: $chart/crds/kinesisexporters.yaml is identical to crds/kinesisexporters.yaml"
[ -f crds/kinesisexporters.yaml ] || fail "crds/kinesisexporters.yaml is missing; run make crds"
if ! cmp -s crds/kinesisexporters.yaml "$chart/crds/kinesisexporters.yaml"; then
  diff -u crds/kinesisexporters.yaml "$chart/crds/kinesisexporters.yaml" | head -n 40 >&2 || true
  fail "$chart/crds/kinesisexporters.yaml differs from crds/kinesisexporters.yaml; run make crds"
fi

ensure_helm
say "helm: $HELM ($("$HELM" version --short))"

# The chart README is generated from values.yaml by helm-docs (make chart-docs).
ensure_helm_docs
say "chart README: $chart/README.md is what helm-docs $HELM_DOCS_VERSION writes from values.yaml"
readme_tmp="$(mktemp -d)"
cp -r "$chart" "$readme_tmp/"
(cd "$readme_tmp" && "$HELM_DOCS" --chart-search-root . --log-level warning)
if ! cmp -s "$readme_tmp/$(basename "$chart")/README.md" "$chart/README.md"; then
  diff -u "$chart/README.md" "$readme_tmp/$(basename "$chart")/README.md" | head -n 40 >&2 || true
  rm -rf "$readme_tmp"
  fail "$chart/README.md is stale; run make chart-docs"
fi
rm -rf "$readme_tmp"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# variants: name, then helm value arguments
variants=(default namespaced replicas2)
variant_args() {
  case "$1" in
    default) ;;
    namespaced) printf '%s\n' -f "$chart/ci/namespaced-values.yaml" ;;
    replicas2) printf '%s\n' --set replicaCount=2 ;;
  esac
}

# 2. helm lint --strict
for v in default namespaced; do
  mapfile -t args < <(variant_args "$v")
  say "helm lint --strict $chart ($v values)"
  "$HELM" lint --strict "$chart" --namespace "$namespace" "${args[@]}" >"$tmp/lint-$v.log" 2>&1 \
    || { cat "$tmp/lint-$v.log" >&2; fail "helm lint --strict failed ($v values)"; }
  grep -E '^\[(WARNING|ERROR)\]' "$tmp/lint-$v.log" >&2 && fail "helm lint reported problems ($v values)"
  tail -n 1 "$tmp/lint-$v.log"
done

# 3. values.schema.json must reject bad values.
say "values.schema.json rejects bad values"
bad_values=(
  "unknownKey=1"
  "replicaCount=0"
  "replicaCount=1.5"
  "image.pullPolicy=Sometimes"
  "image.registry=x"
  "watchNamespaces[0]=Not_A_Namespace"
  "leaderElection.enabled=yes"
  "serviceMonitor.interval=soon"
  "metricsService.port=70000"
  "resources.requests.cpu=lots"
  "tenancy.excludedNamespaces[0]=Not_A_Namespace"
  "tenancy.allowServiceAccountName=yes"
  "tenancy.allowedImages[0]=a\\,b"
  "tenancy.unknownGuardrail=1"
  "admissionPolicy.enabled=yes"
  "controller.concurrency=0"
  "controller.apiQps=0.5"
)
for kv in "${bad_values[@]}"; do
  setflag=--set
  case "$kv" in leaderElection.enabled=*|serviceMonitor.interval=*|resources.*|*=yes) setflag=--set-string ;; esac
  if "$HELM" template "$release" "$chart" --namespace "$namespace" "$setflag" "$kv" >"$tmp/bad.out" 2>&1; then
    fail "values.schema.json accepted $setflag $kv"
  fi
  grep -qi 'schema' "$tmp/bad.out" || { cat "$tmp/bad.out" >&2; fail "$setflag $kv failed, but not on the schema"; }
  printf '  rejected: %s %s\n' "$setflag" "$kv"
done

# 4 + 5. Render, validate against the Kubernetes schemas, check the objects.

for v in "${variants[@]}"; do
  mapfile -t args < <(variant_args "$v")
  say "helm template $chart ($v values) | kubernetes-validate --strict -k $kube_version, then object checks"
  "$HELM" template "$release" "$chart" --namespace "$namespace" --include-crds \
    --kube-version "$kube_version" "${args[@]}" >"$tmp/$v.yaml" \
    || fail "helm template failed ($v values)"
  "$py" tests/k8s/chart_objects.py "$v" "$tmp/$v.yaml" "$tmp/$v.validate.yaml" "$release" "$namespace" \
    || fail "rendered objects failed the checks ($v values)"
  if ! "$validate" --strict --quiet -k "$kube_version" "$tmp/$v.validate.yaml" >"$tmp/$v.validate.log" 2>&1; then
    cat "$tmp/$v.validate.log" >&2
    fail "kubernetes-validate --strict rejected the rendered chart ($v values)"
  fi
  # An object of a kind without a schema is only a warning there (exit 0): every such kind
  # must be on the explicit skip list above instead.
  if grep -q . "$tmp/$v.validate.log"; then
    cat "$tmp/$v.validate.log" >&2
    fail "kubernetes-validate could not check every object ($v values)"
  fi
  printf '  kubernetes-validate --strict: all objects valid\n'
done

say "chart checks passed"
