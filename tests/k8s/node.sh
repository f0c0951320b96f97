#!/usr/bin/env bash
# A real Kubernetes node for the test control plane: kubelet + containerd + runc + CNI bridge,
# with kube-proxy, joined to a cluster started by controlplane.sh. Real pods, real probes,
# real Services; nothing can leave the machine.
#
#   tests/k8s/node.sh build              build + cache kubelet, kube-proxy, containerd (Go modules),
#                                        install runc, CNI plugins, iptables, conntrack (apt)
#   tests/k8s/node.sh up CPDIR           join a node to the control plane whose state is in CPDIR
#   tests/k8s/node.sh load IMAGE.tar     import an OCI image into the node's containerd
#   tests/k8s/node.sh down               stop the node and leave the machine as it was found
#   tests/k8s/node.sh check-clean        exit 1 (saying what) if anything of a node is left
#
# Needs root (containers, a bridge, iptables). Everything listens on 127.0.0.1 or on the
# node's bridge address ($NODE_IP); pods get a route to the bridge and the Service range only,
# no default route and no masquerading. The node is tainted kex.dev/real-node=true:NoSchedule
# so that only pods that ask for it (tests, the demo) land on it; kwok's nodes take the rest.
#
# Node state lives in one fixed directory ($KEX_NODE_DIR, default /var/lib/kex-node), so
# `down` finds everything even after a kill -9 of any part, or of the shell that ran `up`.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=controlplane.sh
source "$HERE/controlplane.sh"
# shellcheck source=tools.sh
source "$HERE/tools.sh"

NODE_DIR="${KEX_NODE_DIR:-/var/lib/kex-node}"
NODE_NAME="kex-node"
BRIDGE="kex0"
NODE_IP="10.244.200.1"
POD_SUBNET="10.244.200.0/24"
SERVICE_CIDR="10.96.0.0/16"   # controlplane.sh's --service-cluster-ip-range
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
PROXY_HEALTHZ_PORT=10256
PROXY_METRICS_PORT=10249
APISERVER_PROXY_PORT=6443     # pods reach the apiserver here (socat -> 127.0.0.1)
TAINT_KEY="kex.dev/real-node"
PAUSE_IMAGE="registry.k8s.io/pause:kex"
# Sysctls kubelet, kube-proxy or the bridge plugin may change; saved by `up`, restored by `down`.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
         net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom kernel.panic
         kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
NODE_PROCS=(kube-proxy kubelet socat containerd)
APT_PACKAGES=(runc containernetworking-plugins iptables conntrack socat)

need_root() { [ "$(id -u)" = 0 ] || die "the real node needs root (containers, a bridge, iptables)"; }

cni_bin_dir() {
  local d
  for d in /usr/lib/cni /opt/cni/bin; do [ -x "$d/bridge" ] && { echo "$d"; return 0; }; done
  die "CNI plugins not found (apt-get install containernetworking-plugins)"
}

# The pause (sandbox) image, from a few lines of C, so nothing is ever pulled.
pause_image() {
  local out="$CACHE/pause-kex/pause.tar"
  if [ ! -s "$out" ]; then
    mkdir -p "$(dirname "$out")"
    say "building the pause image $PAUSE_IMAGE (gcc -static)"
    python3 "$HERE/oci_image.py" pause --name "$PAUSE_IMAGE" --out "$out.tmp" >/dev/null
    mv -f "$out.tmp" "$out"
  fi
  echo "$out"
}

cmd_node_build() {
  local start=$(date +%s) b
  need_root
  # Debian's runc and CNI plugins (PEERS.md: the versions tried).
  ensure_apt_packages "${APT_PACKAGES[@]}"
  for b in "${NODE_BINS[@]}"; do build_one "$b"; done
  pause_image >/dev/null
  say "node binaries ready in $(( $(date +%s) - start ))s (cache: $CACHE)"
}

ctr_cmd() { "$(bin_path ctr)" --address "$NODE_DIR/containerd.sock" -n k8s.io "$@"; }

cmd_load() {
  [ $# -ge 1 ] || die "usage: $0 load IMAGE.tar..."
  local f
  for f in "$@"; do
    say "importing $(basename "$f") into the node's containerd"
    # ctr warns on every call that cgroup v1 is deprecated: keep the progress readable.
    ctr_cmd images import "$f" 2> >(grep -v 'DEPRECATION: The support for cgroup v1' >&2) >/dev/null
  done
}

# --- up --------------------------------------------------------------------------------------

write_configs() {
  local cp="$1" P="$NODE_DIR/pki" server="$2" cni
  cni="$(cni_bin_dir)"
  mkdir -p "$P" "$NODE_DIR/cni/net.d" "$NODE_DIR/logs" "$NODE_DIR/pids"
  chmod 700 "$P"
  cp "$cp/pki/ca.crt" "$P/ca.crt"
  (
    cd "$P"
    cat > client.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EXT
    # sign() reads ca.crt/ca.key from the working directory: give it the control plane's CA.
    ln -sf "$cp/pki/ca.key" ca.key
    # The Node authorizer and NodeRestriction apply to exactly this identity.
    sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" client.ext
    sign kube-proxy "/CN=system:kube-proxy" client.ext
    rm -f ca.key ./*.csr ./*.srl client.ext
  )
  kubeconfig "$NODE_DIR/kubelet.kubeconfig" "$server" "system:node:$NODE_NAME" "$P/kubelet.crt" "$P/kubelet.key"
  kubeconfig "$NODE_DIR/kube-proxy.kubeconfig" "$server" system:kube-proxy "$P/kube-proxy.crt" "$P/kube-proxy.key"

  # containerd: all state under NODE_DIR, cgroupfs, no NRI, a sandbox image that is never
  # pulled; restrict_oom_score_adj because root here lacks CAP_SYS_RESOURCE.
  cat > "$NODE_DIR/containerd.toml" <<TOML
version = 4
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
# Nothing from the host's /etc/containerd.
imports = []
oom_score = 0
disabled_plugins = ["io.containerd.nri.v1.nri"]

[plugins.'io.containerd.server.v1.grpc']
  address = "$NODE_DIR/containerd.sock"

[plugins.'io.containerd.server.v1.ttrpc']
  address = "$NODE_DIR/containerd.sock.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  # Pod network namespaces under NODE_DIR, not /run/netns, so that down finds every one.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$NODE_DIR/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$cni"]
    conf_dir = "$NODE_DIR/cni/net.d"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML

  # Pods: one bridge, host-local addresses, a route to the Service range via the node and no
  # default route, no masquerading: a pod can reach the node and Services, nothing else.
  cat > "$NODE_DIR/cni/net.d/10-kex.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "kex",
  "plugins": [{
    "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
      "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP",
                   "rangeStart": "10.244.200.10", "rangeEnd": "10.244.200.250"}]],
      "routes": [{"dst": "$SERVICE_CIDR"}]
    }
  }]
}
JSON

  cat > "$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
registerWithTaints:
- {key: $TAINT_KEY, value: "true", effect: NoSchedule}
maxPods: 40
resolvConf: /etc/resolv.conf
# This machine's disk and memory are shared with the build: never evict or GC images here.
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
containerLogMaxSize: 10Mi
shutdownGracePeriod: 0s
YAML

  cat > "$NODE_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $NODE_DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_SUBNET
bindAddress: $NODE_IP
healthzBindAddress: $NODE_IP:$PROXY_HEALTHZ_PORT
metricsBindAddress: $NODE_IP:$PROXY_METRICS_PORT
oomScoreAdj: 0
# Node ports on the bridge only (never localhost: that would need route_localnet).
nodePortAddresses: ["$POD_SUBNET"]
# Leave the host's conntrack table sizes alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

# The nftables tables that exist before `up`: kube-proxy and iptables-nft create empty base
# tables (ip nat, ip filter...) that `down` removes again only if they were not there before.
save_nft_tables() {
  if command -v nft >/dev/null; then nft list tables 2>/dev/null > "$NODE_DIR/nft-tables.saved" || true; fi
}

remove_new_nft_tables() {
  [ -f "$NODE_DIR/nft-tables.saved" ] && command -v nft >/dev/null || return 0
  local line
  nft list tables 2>/dev/null | while IFS= read -r line; do
    grep -qxF "$line" "$NODE_DIR/nft-tables.saved" && continue
    # Only an empty table: a rule in it is someone else's.
    if ! nft list ${line} 2>/dev/null | grep -qvE '^\s*(table|chain|type|policy|\}|$)'; then
      nft delete $line 2>/dev/null || true
    fi
  done
}

save_sysctls() {
  local k v
  : > "$NODE_DIR/sysctls.saved"
  for k in "${SYSCTLS[@]}"; do
    v="$(sysctl -n "$k" 2>/dev/null)" || continue
    printf '%s=%s\n' "$k" "$v" >> "$NODE_DIR/sysctls.saved"
  done
}

make_bridge() {
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service traffic that no rule rewrites must die on the bridge, never take the default route.
  ip route add "$SERVICE_CIDR" dev "$BRIDGE"
  # Routed pod -> Service -> pod traffic, and bridged replies seen by conntrack.
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
}

# Pods (the operator) reach the apiserver through the `kubernetes` Service: its endpoint is
# this forwarder on the bridge, which relays to the apiserver on 127.0.0.1.
apiserver_endpoint() {
  local kubectl="$1" kc="$2"
  "$kubectl" --kubeconfig "$kc" apply -f - >/dev/null <<YAML
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-kex-node
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: kex.dev-node-sh
addressType: IPv4
endpoints:
- addresses: ["$NODE_IP"]
  conditions: {ready: true}
ports:
- {name: https, port: $APISERVER_PROXY_PORT, protocol: TCP}
YAML
}

node_ready() {
  "$1" --kubeconfig "$2" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

cmd_node_up() {
  [ $# -eq 1 ] || die "usage: $0 up CPDIR"
  need_root
  local cp t0 server port kubectl kc
  cp="$(cd "$1" && pwd)"; t0=$(date +%s)
  [ -f "$cp/env" ] || die "$cp has no running control plane (controlplane.sh up $cp)"
  server="$(sed -n 's/^KEX_K8S_APISERVER=//p' "$cp/env")"
  port="$(sed -n 's/^KEX_K8S_APISERVER_PORT=//p' "$cp/env")"
  kubectl="$(bin_path kubectl)"; kc="$cp/kubeconfig"
  if [ -f "$NODE_DIR/owner" ] && any_node_process_alive; then
    die "a node is already running (control plane $(cat "$NODE_DIR/owner")): $0 down first"
  fi
  cmd_node_build
  cleanup_host  # whatever an earlier node left behind (a kill -9, a lost shell)

  trap 'rc=$?; if [ $rc -ne 0 ]; then echo "node: up failed; cleaning up (logs: '"$NODE_DIR"'/logs)" >&2; cmd_node_down >&2 || true; fi' EXIT
  mkdir -p "$NODE_DIR"
  echo "$cp" > "$NODE_DIR/owner"
  save_nft_tables
  # containerd keeps shim sockets and fifos under /run/containerd whatever its config says.
  [ -e /run/containerd ] || touch "$NODE_DIR/made-run-containerd"
  save_sysctls
  say "node $NODE_NAME: bridge $BRIDGE $NODE_IP/24, pods $POD_SUBNET, Service range $SERVICE_CIDR via the bridge"
  make_bridge
  write_configs "$cp" "$server"

  say "starting containerd $CONTAINERD_VERSION"
  # The shim and runc must be found on PATH.
  start containerd "$NODE_DIR" env PATH="$(dirname "$(bin_path containerd-shim-runc-v2)"):$PATH" \
    "$(bin_path containerd)" --config "$NODE_DIR/containerd.toml" --log-level warn
  wait_until 60 "containerd" ctr_cmd version || exit 1
  cmd_load "$(pause_image)"

  say "starting the apiserver forwarder $NODE_IP:$APISERVER_PROXY_PORT -> 127.0.0.1:$port"
  start socat "$NODE_DIR" "$(command -v socat)" "TCP-LISTEN:$APISERVER_PROXY_PORT,bind=$NODE_IP,fork,reuseaddr" \
    "TCP:127.0.0.1:$port"
  apiserver_endpoint "$kubectl" "$kc"

  say "starting kubelet $K8S_VERSION ($NODE_NAME, $NODE_IP:$KUBELET_PORT)"
  start kubelet "$NODE_DIR" "$(bin_path kubelet)" --config "$NODE_DIR/kubelet.yaml" \
    --kubeconfig "$NODE_DIR/kubelet.kubeconfig" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --node-labels "kex.dev/node=real" \
    --container-runtime-endpoint "unix://$NODE_DIR/containerd.sock" \
    --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/kubelet-pki" --v=1
  say "starting kube-proxy $K8S_VERSION (iptables mode)"
  start kube-proxy "$NODE_DIR" "$(bin_path kube-proxy)" --config "$NODE_DIR/kube-proxy.yaml" --v=1
  wait_until 120 "node $NODE_NAME Ready" node_ready "$kubectl" "$kc" || exit 1
  for b in "${NODE_PROCS[@]}"; do check_alive "$NODE_DIR" "$b"; done
  cat > "$cp/node.env" <<ENV
KEX_NODE_NAME=$NODE_NAME
KEX_NODE_IP=$NODE_IP
KEX_NODE_TAINT=$TAINT_KEY
KEX_NODE_DIR=$NODE_DIR
ENV
  trap - EXIT
  say "node $NODE_NAME Ready in $(( $(date +%s) - t0 ))s (state: $NODE_DIR, logs: $NODE_DIR/logs/)"
}

# --- down ------------------------------------------------------------------------------------

any_node_process_alive() {
  local n
  for n in "${NODE_PROCS[@]}"; do alive "$NODE_DIR" "$n" && return 0; done
  return 1
}

# The cgroups of the node's containers: kubelet's pods (kubepods) and anything else containerd
# ran in its k8s.io namespace (cgroup /k8s.io/<id>).
CGROUP_ROOTS=(kubepods kubepods.slice k8s.io)

# Every process that belongs to the node: the containerd shims (they outlive containerd) and the
# processes in the containers' cgroups.
node_pids() {
  local f r
  {
    pgrep -f -- "containerd-shim-runc-v2 .*-address $NODE_DIR/containerd.sock" || true
    for r in "${CGROUP_ROOTS[@]}"; do
      for f in /sys/fs/cgroup/*/"$r"; do
        if [ -d "$f" ]; then find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
      done
    done
  } | sort -u
}

remove_cgroups() {
  local r root
  for r in "${CGROUP_ROOTS[@]}"; do
    for root in /sys/fs/cgroup/*/"$r"; do
      [ -d "$root" ] || continue
      find "$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
  done
}

# iptables chains and nft tables of kube-proxy, kubelet and the CNI plugins (all prefixed).
remove_rules() {
  local tool table chain
  "$(bin_path kube-proxy)" --cleanup >/dev/null 2>&1 || true
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    for table in filter nat mangle raw; do
      # Rules that jump to our chains, then the chains themselves.
      { "$tool-save" -t "$table" 2>/dev/null | grep -E '^-A .* -j (KUBE-|CNI-)' || true; } | sed 's/^-A /-D /' |
        while read -r rule; do eval "$tool -t $table $rule" 2>/dev/null || true; done
      for chain in $("$tool-save" -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\).*/\1/p'); do
        "$tool" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$tool-save" -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\).*/\1/p'); do
        "$tool" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  if command -v nft >/dev/null; then
    for table in "ip kube-proxy" "ip6 kube-proxy"; do nft delete table $table 2>/dev/null || true; done
  fi
}

restore_sysctls() {
  [ -f "$NODE_DIR/sysctls.saved" ] || return 0
  local kv
  while IFS= read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done < "$NODE_DIR/sysctls.saved"
}

# Mounts under the node's directory (kubelet's pod volumes, containerd's snapshots and shm,
# the pods' network namespaces), deepest first.
node_mounts() {
  awk -v d="$NODE_DIR" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r
}

# cleanup_host: remove whatever a node left on this machine; safe when there is nothing.
cleanup_host() {
  local pids m i
  # Kubelet first (it would restart pods), kube-proxy, the forwarder, then containerd.
  if [ -d "$NODE_DIR/pids" ]; then
    stop_group "$NODE_DIR" kubelet kube-proxy socat
    stop_group "$NODE_DIR" containerd
  fi
  # Containers and shims that survive containerd: a few rounds, since a shim may respawn nothing
  # but its children exit only when they see the signal.
  for i in 1 2 3 4 5; do
    pids="$(node_pids)"
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
  done
  remove_cgroups
  for m in $(node_mounts); do umount -l "$m" 2>/dev/null || true; done
  remove_rules
  remove_new_nft_tables
  if [ -f "$NODE_DIR/made-run-containerd" ]; then rm -rf /run/containerd; fi
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
  ip route del "$SERVICE_CIDR" 2>/dev/null || true
  restore_sysctls
}

cmd_node_down() {
  local cp=""
  [ -f "$NODE_DIR/owner" ] && cp="$(cat "$NODE_DIR/owner")"
  [ -d "$NODE_DIR" ] || return 0
  say "stopping node $NODE_NAME and cleaning the machine"
  cleanup_host
  [ -n "$cp" ] && rm -f "$cp/node.env"
  # The kubelet's root holds read-only files (projected volumes): unmounted above, so this works.
  rm -rf "$NODE_DIR"
  cmd_check_clean >&2 || die "the machine is not clean after down (see above)"
  say "node down; machine clean"
}

# check-clean: nothing of a node is left (processes, mounts, rules, bridge, route).
cmd_check_clean() {
  local problems=()
  [ -n "$(node_pids)" ] && problems+=("processes: $(node_pids | tr '\n' ' ')")
  pgrep -x kubelet >/dev/null && problems+=("a kubelet process")
  pgrep -f "$NODE_DIR/containerd.toml" >/dev/null && problems+=("a containerd process")
  [ -n "$(node_mounts)" ] && problems+=("mounts: $(node_mounts | tr '\n' ' ')")
  ip link show "$BRIDGE" >/dev/null 2>&1 && problems+=("the bridge $BRIDGE")
  ip route show "$SERVICE_CIDR" 2>/dev/null | grep -q . && problems+=("a route to $SERVICE_CIDR")
  if command -v iptables-save >/dev/null && iptables-save 2>/dev/null | grep -qE '^:(KUBE|CNI)-'; then
    problems+=("iptables chains: $(iptables-save | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\).*/\1/p' | tr '\n' ' ')")
  fi
  if command -v nft >/dev/null && nft list tables 2>/dev/null | grep -q kube-proxy; then
    problems+=("nft table kube-proxy")
  fi
  if [ ${#problems[@]} -gt 0 ]; then
    printf 'node: left on the machine: %s\n' "${problems[@]}"
    return 1
  fi
}

node_main() {
  local sub="${1:-}"; shift || true
  case "$sub" in
    build) cmd_node_build "$@" ;;
    up) cmd_node_up "$@" ;;
    load) cmd_load "$@" ;;
    down) cmd_node_down "$@" ;;
    check-clean) cmd_check_clean "$@" ;;
    -h|--help|help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "usage: $0 {build|up CPDIR|load IMAGE.tar...|down|check-clean|--help}" >&2; exit 2 ;;
  esac
}
if [ "${BASH_SOURCE[0]}" = "$0" ]; then node_main "$@"; fi
