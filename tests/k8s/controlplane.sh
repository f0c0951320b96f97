#!/usr/bin/env bash
# A real, local Kubernetes control plane for end-to-end tests, built from published Go modules.
#
#   tests/k8s/controlplane.sh build        build + cache etcd, kube-apiserver,
#                                          kube-controller-manager, kube-scheduler, kubectl, kwok
#   tests/k8s/controlplane.sh up DIR       start them on 127.0.0.1 (free ports), state in DIR,
#                                          admin kubeconfig in DIR/kubeconfig, logs in DIR/logs/
#   tests/k8s/controlplane.sh down DIR     stop everything `up DIR` started (safe to repeat)
#   tests/k8s/controlplane.sh kill-apiserver DIR   kill -9 the apiserver (a crash)
#   (KEX_K8S_CONTROLLER_QPS raises the built-in controllers' API rate limits, KEX_K8S_NODE_PODS
#   the pods each fake node takes: both for the operator benchmark)
#   tests/k8s/controlplane.sh start-apiserver DIR  start it again as before; waits for /readyz
#   tests/k8s/controlplane.sh bin NAME     print the cached path of one binary (builds if needed)
#
# Binaries are cached outside the work tree, keyed by version:
#   ${KEX_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kinesis-exporter/k8s}/<component>-<version>/
# Only the first `build` pays (tens of minutes on 2 cores); later runs reuse the cache at once.
# Builds run under `nice -n 19`, one package at a time except under CI (KEX_GO_PARALLELISM).
#
# Pods run on kwok's fake nodes: no kubelet, no container runtime, no root needed. The
# apiserver has real TLS, RBAC, service-account token signing and the PodSecurity admission
# plugin, so manifests are checked as a real cluster checks them.
set -euo pipefail
# Go build parallelism: 1 (and nice) on a developer's machine, so builds leave the CPU to
# cargo and tests; every core under CI, where nothing else runs.
KEX_GO_PARALLELISM="${KEX_GO_PARALLELISM:-$([ "${CI:-}" = true ] && nproc || echo 1)}"

K8S_VERSION="${KEX_K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${KEX_ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KEX_KWOK_VERSION:-v0.8.0}"
CONTAINERD_VERSION="${KEX_CONTAINERD_VERSION:-v2.4.2}"
CACHE="${KEX_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kinesis-exporter/k8s}"

K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
ALL_BINS=(etcd kwok "${K8S_BINS[@]}")
# The real node (node.sh): kubelet and kube-proxy from the same Kubernetes version, containerd.
NODE_BINS=(kubelet kube-proxy containerd ctr containerd-shim-runc-v2)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'controlplane: error: %s\n' "$*" >&2; exit 1; }

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    if [ -x /usr/local/go/bin/go ]; then export PATH="/usr/local/go/bin:$PATH"
    else die "go (1.26+) is needed to build the control plane: not found on PATH"; fi
  fi
}

# Version of a component, and the cache path of its binary.
version_of() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) echo "$K8S_VERSION" ;;
    containerd|ctr|containerd-shim-runc-v2) echo "$CONTAINERD_VERSION" ;;
    *) die "unknown component: $1" ;;
  esac
}
bin_path() { echo "$CACHE/$1-$(version_of "$1")/$1"; }

# Go environment for every build: low priority, one package at a time, static binaries.
gobuild() {
  env CGO_ENABLED=0 GOFLAGS="-p=${KEX_GO_PARALLELISM} -buildvcs=false -mod=mod" nice -n 19 go "$@"
}

# Wrapper module for k8s.io/kubernetes: it requires its staging modules at v0.0.0 with
# replace directives into ./staging, which `go install` refuses; pin each staging module to
# its published v0.X.Y instead (the list read from kubernetes' own go.mod).
k8s_wrapper() {
  local dir="$CACHE/.src/kubernetes-$K8S_VERSION" gomod staging
  if [ -f "$dir/.ready" ]; then echo "$dir"; return 0; fi
  mkdir -p "$dir"
  gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
           | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
  [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
  staging="v0.${K8S_VERSION#v1.}"   # v1.37.2 -> v0.37.2
  {
    echo "module kex.local/k8s-wrapper"
    echo
    echo "go $(awk '$1 == "go" {print $2; exit}' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$gomod" \
      | sort -u | while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
    echo ")"
  } > "$dir/go.mod"
  : > "$dir/go.sum"
  touch "$dir/.ready"
  echo "$dir"
}

# Wrapper module for etcd: its server module carries replace directives too.
etcd_wrapper() {
  local dir="$CACHE/.src/etcd-$ETCD_VERSION"
  if [ -f "$dir/.ready" ]; then echo "$dir"; return 0; fi
  mkdir -p "$dir"
  cat > "$dir/go.mod" <<EOF
module kex.local/etcd-wrapper

go 1.26.0

require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
EOF
  : > "$dir/go.sum"
  touch "$dir/.ready"
  echo "$dir"
}

k8s_ldflags() {
  local v="$K8S_VERSION" major minor now
  major="$(echo "${v#v}" | cut -d. -f1)"; minor="$(echo "${v#v}" | cut -d. -f2)"
  now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local f="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f="$f -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    f="$f -X $pkg.gitTreeState=clean -X $pkg.buildDate=$now"
  done
  echo "$f"
}

# build_one NAME: build NAME into its cache directory unless already there.
build_one() {
  local name="$1" ver out dir tmp start wrap
  ver="$(version_of "$name")"; out="$(bin_path "$name")"; dir="$(dirname "$out")"
  if [ -x "$out" ]; then say "$name $ver: cached ($out)"; return 0; fi
  need_go
  mkdir -p "$dir"
  tmp="$(mktemp -d "$dir/.build.XXXXXX")"
  start=$(date +%s)
  say "building $name $ver (first run only, takes minutes)"
  local ok=0
  case "$name" in
    etcd)
      wrap="$(etcd_wrapper)"
      (cd "$wrap" && gobuild build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3) && ok=1
      ;;
    kwok)
      (cd "$tmp" && GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="-p=${KEX_GO_PARALLELISM} -buildvcs=false" nice -n 19 \
         go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION") && ok=1
      ;;
    containerd|ctr|containerd-shim-runc-v2)
      # Static, no cgo: the same tags containerd's own static release build uses.
      (cd "$tmp" && GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="-p=${KEX_GO_PARALLELISM} -buildvcs=false" nice -n 19 \
         go install -trimpath -tags "no_btrfs osusergo netgo static_build" \
           -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
           "github.com/containerd/containerd/v2/cmd/$name@$CONTAINERD_VERSION") && ok=1
      ;;
    *)
      wrap="$(k8s_wrapper)"
      (cd "$wrap" && gobuild build -trimpath -ldflags "$(k8s_ldflags)" -o "$tmp/$name" \
         "k8s.io/kubernetes/cmd/$name") && ok=1
      ;;
  esac
  if [ "$ok" != 1 ] || [ ! -x "$tmp/$name" ]; then
    rm -rf "$tmp"; die "building $name $ver failed"
  fi
  mv -f "$tmp/$name" "$out"; rm -rf "$tmp"
  say "built $name $ver in $(( $(date +%s) - start ))s -> $out"
}

# build [--node]: the control plane; with --node also the real node's binaries (node.sh).
cmd_build() {
  local start=$(date +%s) b bins=("${ALL_BINS[@]}")
  [ "${1:-}" = --node ] && bins+=("${NODE_BINS[@]}")
  for b in "${bins[@]}"; do build_one "$b"; done
  kwok_stages_file >/dev/null
  say "Kubernetes binaries ready in $(( $(date +%s) - start ))s (cache: $CACHE)"
}

cmd_bin() {
  [ $# -eq 1 ] || die "usage: $0 bin NAME"
  build_one "$1" >&2
  bin_path "$1"
}

# ---------------------------------------------------------------------------------------------
# kwok's stage configs: kwok itself ships none by default (kwokctl writes them); the same ones
# kwokctl uses: node-initialize + node-heartbeat-with-lease for nodes, pod-ready/-complete/
# -delete for pods. Copied from the kwok module at build time, next to the binary.
kwok_stages_file() {
  local dir="$CACHE/kwok-$KWOK_VERSION" out src
  out="$dir/stages.yaml"
  if [ -s "$out" ]; then echo "$out"; return 0; fi
  need_go
  src="$(cd "$dir" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
         | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
  [ -d "$src/kustomize/stage" ] || die "kwok $KWOK_VERSION module has no kustomize/stage"
  local f first=1
  {
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      [ -f "$src/kustomize/stage/$f" ] || die "kwok stage missing: $f"
      [ "$first" = 1 ] || echo "---"
      first=0
      cat "$src/kustomize/stage/$f"
    done
  } > "$out.tmp"
  mv -f "$out.tmp" "$out"
  echo "$out"
}

free_port() {
  python3 - <<'PY' 2>/dev/null && return 0
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  die "no free port found"
}

# wait_until SECONDS WHAT CMD...: retry CMD every 0.25 s until it succeeds. Gives up early,
# showing the log's tail, when a component named in $WATCH (started in $WATCH_DIR) has exited.
WATCH=""; WATCH_DIR=""
wait_until() {
  local secs="$1" what="$2"; shift 2
  local deadline=$(( $(date +%s) + secs )) n
  until "$@" >/dev/null 2>&1; do
    for n in $WATCH; do check_alive "$WATCH_DIR" "$n" || return 1; done
    if [ "$(date +%s)" -ge "$deadline" ]; then
      printf 'controlplane: error: timed out after %ss waiting for %s\n' "$secs" "$what" >&2
      return 1
    fi
    sleep 0.25
  done
}

# --- PKI (openssl) ---------------------------------------------------------------------------
pki() {
  local p="$1/pki"
  mkdir -p "$p"; chmod 700 "$p"
  (
    cd "$p"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=kinesis-exporter-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    # apiserver serving cert: 127.0.0.1 IP SAN plus the in-cluster names.
    cat > apiserver.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1
EXT
    sign apiserver "/CN=kube-apiserver" apiserver.ext
    cat > client.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EXT
    sign admin "/O=system:masters/CN=kex-admin" client.ext
    sign controller-manager "/CN=system:kube-controller-manager" client.ext
    sign scheduler "/CN=system:kube-scheduler" client.ext
    sign kwok "/O=system:masters/CN=kwok" client.ext
    # The apiserver's client identity towards kubelets (kubectl logs/exec on the real node).
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client.ext
    # front-proxy CA + client: the apiserver's request-header authentication, which the
    # aggregation layer (and the controllers' delegated authentication) expect.
    openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt \
      -days 3650 -subj "/CN=kinesis-exporter-test-front-proxy-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -keyout front-proxy-client.key -out front-proxy-client.csr \
      -subj "/CN=front-proxy-client" 2>/dev/null
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key \
      -CAcreateserial -days 3650 -extfile client.ext -out front-proxy-client.crt 2>/dev/null
    # service-account token signing key pair
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr ./*.ext ./*.srl
  )
}
sign() { # in the pki dir: sign NAME SUBJECT EXTFILE
  openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile "$3" -out "$1.crt" 2>/dev/null
}

# kubeconfig FILE SERVER USER CERT KEY [TOKEN]: credentials embedded, so the file is self-contained.
kubeconfig() {
  local file="$1" server="$2" user="$3" crt="$4" key="$5" p="$(dirname "$4")"
  cat > "$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kex-test
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 < "$p/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 < "$crt")
    client-key-data: $(base64 -w0 < "$key")
contexts:
- name: kex-test
  context:
    cluster: kex-test
    user: $user
current-context: kex-test
KC
  chmod 600 "$file"
}

# start NAME DIR BIN ARGS...: start a component in its own session, log to DIR/logs/NAME.log,
# record its pid in DIR/pids/NAME.pid.
start() {
  local name="$1" dir="$2"; shift 2
  mkdir -p "$dir/logs" "$dir/pids" "$dir/cmd"
  # The command line, NUL-separated, so a component can be started again (start-apiserver).
  printf '%s\0' "$@" > "$dir/cmd/$name"
  setsid "$@" >> "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/pids/$name.pid"
  WATCH_DIR="$dir"; WATCH="$WATCH $name"
}

alive() { kill -0 "$(cat "$1/pids/$2.pid" 2>/dev/null)" 2>/dev/null; }

# check_alive DIR NAME: fail (with the log's tail) if NAME has exited.
check_alive() {
  if ! alive "$1" "$2"; then
    echo "controlplane: error: $2 exited; last lines of $1/logs/$2.log:" >&2
    tail -n 30 "$1/logs/$2.log" >&2 || true
    return 1
  fi
}

etcd_healthy() { curl -sS --max-time 2 "$1" 2>/dev/null | grep -q '"health":"true"'; }

healthy() { # URL: a 200 "ok" from a component's health endpoint (self-signed: -k)
  [ "$(curl -ksS --max-time 2 "$1" 2>/dev/null)" = ok ]
}

cmd_up() {
  [ $# -eq 1 ] || die "usage: $0 up DIR"
  local dir t0 b
  mkdir -p "$1"; dir="$(cd "$1" && pwd)"
  if [ -d "$dir/pids" ] && ls "$dir"/pids/*.pid >/dev/null 2>&1; then
    for b in "$dir"/pids/*.pid; do
      if kill -0 "$(cat "$b")" 2>/dev/null; then die "$dir already has a running control plane (run: $0 down $dir)"; fi
    done
  fi
  t0=$(date +%s)
  for b in "${ALL_BINS[@]}"; do build_one "$b"; done
  local ETCD KAS KCM KSCHED KUBECTL KWOK STAGES
  ETCD="$(bin_path etcd)"; KAS="$(bin_path kube-apiserver)"; KCM="$(bin_path kube-controller-manager)"
  KSCHED="$(bin_path kube-scheduler)"; KUBECTL="$(bin_path kubectl)"; KWOK="$(bin_path kwok)"
  STAGES="$(kwok_stages_file)"

  # From here on, a failure tears down what was started.
  trap 'rc=$?; if [ $rc -ne 0 ]; then echo "controlplane: up failed; stopping what was started (logs: '"$dir"'/logs)" >&2; cmd_down "'"$dir"'" >&2 || true; fi' EXIT

  rm -rf "$dir/pki" "$dir/etcd" "$dir/kwok" "$dir/pids" "$dir/logs"
  mkdir -p "$dir/logs" "$dir/pids"
  local p_etcd p_peer p_kas p_kcm p_sched
  p_etcd=$(free_port); p_peer=$(free_port); p_kas=$(free_port); p_kcm=$(free_port); p_sched=$(free_port)
  local server="https://127.0.0.1:$p_kas"

  say "generating CA, apiserver serving cert (IP SAN 127.0.0.1), client certs and service-account key"
  pki "$dir"
  local P="$dir/pki"
  local token; token="$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)"
  printf '%s,kex-admin-token,kex-admin-token,"system:masters"\n' "$token" > "$P/tokens.csv"
  printf '%s\n' "$token" > "$dir/admin.token"; chmod 600 "$P/tokens.csv" "$dir/admin.token"
  kubeconfig "$dir/kubeconfig" "$server" kex-admin "$P/admin.crt" "$P/admin.key"
  kubeconfig "$dir/controller-manager.kubeconfig" "$server" system:kube-controller-manager "$P/controller-manager.crt" "$P/controller-manager.key"
  kubeconfig "$dir/scheduler.kubeconfig" "$server" system:kube-scheduler "$P/scheduler.crt" "$P/scheduler.key"
  kubeconfig "$dir/kwok.kubeconfig" "$server" kwok "$P/kwok.crt" "$P/kwok.key"

  say "starting etcd $ETCD_VERSION on 127.0.0.1:$p_etcd"
  start etcd "$dir" "$ETCD" --name kex --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$p_etcd" --advertise-client-urls "http://127.0.0.1:$p_etcd" \
    --listen-peer-urls "http://127.0.0.1:$p_peer" --initial-advertise-peer-urls "http://127.0.0.1:$p_peer" \
    --initial-cluster "kex=http://127.0.0.1:$p_peer" --initial-cluster-state new \
    --unsafe-no-fsync --log-level warn
  wait_until 60 "etcd /health" etcd_healthy "http://127.0.0.1:$p_etcd/health" \
    || exit 1

  # An audit log of every request the operator's ServiceAccounts (namespace kex-system) make,
  # at Metadata level: who (with the pod name of a bound token), verb, object, answer code.
  # The operator tests count its writes from it (leadership, quiet at rest, the benchmark).
  cat > "$dir/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts:kex-system"]
  - level: None
YAML
  say "starting kube-apiserver $K8S_VERSION on $server (TLS, RBAC, PodSecurity, audit log)"
  start kube-apiserver "$dir" "$KAS" \
    --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/logs/audit.log" \
    --audit-log-format json --audit-log-mode blocking \
    --etcd-servers "http://127.0.0.1:$p_etcd" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$p_kas" \
    --endpoint-reconciler-type none \
    --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
    --client-ca-file "$P/ca.crt" --token-auth-file "$P/tokens.csv" \
    --service-account-issuer "https://kubernetes.default.svc.cluster.local" \
    --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,ResourceQuota,PodSecurity,NodeRestriction \
    --requestheader-client-ca-file "$P/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$P/front-proxy-client.crt" --proxy-client-key-file "$P/front-proxy-client.key" \
    --allow-privileged=true \
    --kubelet-client-certificate "$P/apiserver-kubelet-client.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --kubelet-client-key "$P/apiserver-kubelet-client.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --profiling=false --v=1
  wait_until 180 "kube-apiserver /readyz" "$KUBECTL" --kubeconfig "$dir/kubeconfig" get --raw /readyz \
    || exit 1
  say "kube-apiserver ready ($(( $(date +%s) - t0 ))s)"

  # The built-in controllers' client rate limits (20 QPS for the controller-manager, 50 for
  # the scheduler) and sync concurrency, unless KEX_K8S_CONTROLLER_QPS raises them (the
  # operator benchmark does, so that the cluster rather than the operator is not the limit).
  local controller_limits=() scheduler_limits=()
  if [ -n "${KEX_K8S_CONTROLLER_QPS:-}" ]; then
    controller_limits=(--kube-api-qps "$KEX_K8S_CONTROLLER_QPS" --kube-api-burst "$(( KEX_K8S_CONTROLLER_QPS * 2 ))"
                       --concurrent-deployment-syncs 20 --concurrent-replicaset-syncs 20)
    scheduler_limits=(--kube-api-qps "$KEX_K8S_CONTROLLER_QPS" --kube-api-burst "$(( KEX_K8S_CONTROLLER_QPS * 2 ))")
    say "controller-manager and scheduler: --kube-api-qps $KEX_K8S_CONTROLLER_QPS (KEX_K8S_CONTROLLER_QPS)"
  fi
  say "starting kube-controller-manager on 127.0.0.1:$p_kcm"
  start kube-controller-manager "$dir" "$KCM" \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$p_kcm" --cert-dir "$dir/pki/controller-manager-serving" \
    --service-account-private-key-file "$P/sa.key" --root-ca-file "$P/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file "$P/ca.crt" --cluster-signing-key-file "$P/ca.key" \
    --controllers '*' --leader-elect=false --v=1 "${controller_limits[@]}"
  say "starting kube-scheduler on 127.0.0.1:$p_sched"
  start kube-scheduler "$dir" "$KSCHED" \
    --kubeconfig "$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$p_sched" --cert-dir "$dir/pki/scheduler-serving" \
    --leader-elect=false --v=1 "${scheduler_limits[@]}"
  wait_until 90 "kube-controller-manager /healthz" healthy "https://127.0.0.1:$p_kcm/healthz" \
    || exit 1
  say "kube-controller-manager healthy"
  wait_until 90 "kube-scheduler /healthz" healthy "https://127.0.0.1:$p_sched/healthz" \
    || exit 1
  say "kube-scheduler healthy"

  say "starting kwok $KWOK_VERSION (fake nodes annotated kwok.x-k8s.io/node=fake)"
  mkdir -p "$dir/kwok"
  # HOME points at DIR/kwok so a developer's ~/.kwok/kwok.yaml is not merged in.
  start kwok "$dir" env HOME="$dir/kwok" "$KWOK" \
    --kubeconfig "$dir/kwok.kubeconfig" --config "$STAGES" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-ip 127.0.0.1 --cidr 10.244.0.0/16 --node-lease-duration-seconds 40
  local i
  for i in 0 1; do
    cat <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "8", memory: 32Gi, pods: "${KEX_K8S_NODE_PODS:-110}", ephemeral-storage: 100Gi}
  capacity: {cpu: "8", memory: 32Gi, pods: "${KEX_K8S_NODE_PODS:-110}", ephemeral-storage: 100Gi}
---
NODE
  done > "$dir/nodes.yaml"
  "$KUBECTL" --kubeconfig "$dir/kubeconfig" apply -f "$dir/nodes.yaml" >/dev/null
  wait_until 60 "kwok nodes Ready" "$KUBECTL" --kubeconfig "$dir/kubeconfig" wait --for=condition=Ready \
      node/kwok-node-0 node/kwok-node-1 --timeout=2s \
    || exit 1
  say "nodes kwok-node-0, kwok-node-1 Ready"
  wait_until 60 "the default ServiceAccount" "$KUBECTL" --kubeconfig "$dir/kubeconfig" -n default get serviceaccount default

  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do check_alive "$dir" "$b"; done
  cat > "$dir/env" <<ENV
KUBECONFIG=$dir/kubeconfig
KUBECTL=$KUBECTL
KEX_K8S_APISERVER=$server
KEX_K8S_TOKEN_FILE=$dir/admin.token
KEX_K8S_CA_FILE=$P/ca.crt
KEX_K8S_APISERVER_PORT=$p_kas
ENV
  trap - EXIT
  say "control plane up in $(( $(date +%s) - t0 ))s (state: $dir, logs: $dir/logs/)"
  echo "export KUBECONFIG=$dir/kubeconfig"
}

# stop_group DIR NAME...: TERM the recorded processes together, KILL whatever is left after
# 15 s, and remove their pid files. A pid is only signalled while it still runs the binary
# that was started (guards against pid reuse after a crash).
stop_group() {
  local dir="$1"; shift
  local n pid pids=() i left
  for n in "$@"; do
    [ -f "$dir/pids/$n.pid" ] || continue
    pid="$(cat "$dir/pids/$n.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && ours "$pid" "$n"; then
      say "stopping $n (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for i in $(seq 1 60); do
    left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.25
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid did not stop on TERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for n in "$@"; do rm -f "$dir/pids/$n.pid"; done
}

# ours PID NAME: PID still runs the component NAME (its command line names the binary).
ours() {
  local cmdline
  cmdline="$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null || true)"
  [ -z "$cmdline" ] && return 0  # no /proc (not Linux): trust the pid file
  case "$cmdline" in *"/$2 "*|*"/$2") return 0 ;; *) return 1 ;; esac
}

cmd_down() {
  [ $# -eq 1 ] || die "usage: $0 down DIR"
  local dir="$1"
  [ -d "$dir/pids" ] || return 0
  # Clients first (together), then the apiserver, then its storage.
  stop_group "$dir" kwok kube-scheduler kube-controller-manager
  stop_group "$dir" kube-apiserver
  stop_group "$dir" etcd
  rmdir "$dir/pids" 2>/dev/null || true
}

# A crash of the apiserver (kill -9, no graceful shutdown), for the operator's recovery tests.
cmd_kill_apiserver() {
  [ $# -eq 1 ] || die "usage: $0 kill-apiserver DIR"
  local dir="$1" pid
  pid="$(cat "$dir/pids/kube-apiserver.pid")"
  ours "$pid" kube-apiserver || die "pid $pid is not the kube-apiserver"
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  say "kube-apiserver (pid $pid) killed"
}

# The apiserver again, with the command line `up` gave it (same port, certificates, etcd).
cmd_start_apiserver() {
  [ $# -eq 1 ] || die "usage: $0 start-apiserver DIR"
  local dir="$1" t0 args=()
  t0=$(date +%s)
  ! alive "$dir" kube-apiserver || die "kube-apiserver is running"
  mapfile -d '' args < "$dir/cmd/kube-apiserver"
  start kube-apiserver "$dir" "${args[@]}"
  KUBECTL="$(bin_path kubectl)"
  wait_until 180 "kube-apiserver /readyz" "$KUBECTL" --kubeconfig "$dir/kubeconfig" get --raw /readyz \
    || exit 1
  say "kube-apiserver ready again ($(( $(date +%s) - t0 ))s)"
}

main() {
  local sub="${1:-}"; shift || true
  case "$sub" in
    build) cmd_build "$@" ;;
    bin) cmd_bin "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    kill-apiserver) cmd_kill_apiserver "$@" ;;
    start-apiserver) cmd_start_apiserver "$@" ;;
    *) echo "usage: $0 {build|up DIR|down DIR|kill-apiserver DIR|start-apiserver DIR|bin NAME}" >&2; exit 2 ;;
  esac
}
# node.sh sources this file for its helpers (build_one, start, stop_group, sign, kubeconfig...).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
