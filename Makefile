# kinesis-exporter: build, lint, test and demo entry points (GNU make).
#
#   make demo   build, install the test peers, push records through kinesalite, show the result;
#               then helm install + operator + exporter on a local Kubernetes control plane
#   make test   lint, chart checks, Rust tests, end-to-end tests (what CI runs through .ci/run)
#
# Nothing here is interactive; CI=true also turns colour off.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

CARGO ?= cargo
# tests/install.sh creates the venv with python3 as well.
PYTHON := python3
VENV_PYTHON := tests/.venv/bin/python

# Go (for helm and the Kubernetes control plane) is often installed in /usr/local/go.
ifeq ($(shell command -v go 2>/dev/null),)
  ifneq ($(wildcard /usr/local/go/bin/go),)
    export PATH := /usr/local/go/bin:$(PATH)
  endif
endif

# rustup installs into ~/.cargo/bin, which a fresh non-login shell may not have on PATH yet.
ifeq ($(shell command -v $(CARGO) 2>/dev/null),)
  ifneq ($(wildcard $(HOME)/.cargo/bin/cargo),)
    export PATH := $(HOME)/.cargo/bin:$(PATH)
  endif
endif

ifeq ($(CI),true)
  export CARGO_TERM_COLOR := never
  export NO_COLOR := 1
  export PIP_NO_INPUT := 1
  export PIP_PROGRESS_BAR := off
  export npm_config_color := false
  export DEBIAN_FRONTEND := noninteractive
endif

say = @printf '==> %s\n' "$(1)"

.PHONY: crds readme help deps build lint chart-lint toolchain test-rust test-e2e test-faults test-k8s images node test-node test bench bench-e2e bench-operator chart-docs demo clean distclean

help: ## List the targets
	@echo "kinesis-exporter targets:"
	@grep -E '^[a-z][a-z0-9-]*:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

deps: ## Install the e2e test peers (tests/.venv, tests/node_modules)
	$(call say,checking tools: python3 node npm cargo go openssl)
	@missing=0; \
	need() { \
	  if ! command -v "$$1" >/dev/null 2>&1; then \
	    printf 'error: %s not found on PATH; %s\n' "$$1" "$$2" >&2; missing=1; \
	  fi; \
	}; \
	need $(PYTHON) "install Python 3.10+ (Debian/Ubuntu: apt-get install python3 python3-venv)"; \
	need node "install Node.js 18+ (Debian/Ubuntu: apt-get install nodejs npm, or https://nodejs.org)"; \
	need npm "install npm (it ships with Node.js; Debian/Ubuntu: apt-get install npm)"; \
	need $(CARGO) "install Rust with rustup: https://rustup.rs"; \
	need go "install Go 1.26+ (it builds helm and the Kubernetes control plane for the tests)"; \
	need openssl "install openssl (the test control plane makes its certificates with it)"; \
	exit $$missing
	@if [ -x tests/.venv/bin/python ] && ! tests/.venv/bin/python -m pip --version >/dev/null 2>&1; then \
	  printf '==> %s\n' "tests/.venv has no working pip (an interrupted venv creation?); removing it"; \
	  rm -rf tests/.venv; \
	fi
	@if [ ! -x tests/.venv/bin/python ]; then \
	  probe="$$(mktemp -d)"; \
	  if $(PYTHON) -m venv "$$probe/venv" >/dev/null 2>&1; then \
	    rm -rf "$$probe"; \
	  else \
	    rm -rf "$$probe"; \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      printf '==> %s\n' "$(PYTHON) -m venv does not work (python3-venv missing?); installing python3-venv with apt-get"; \
	      printf '==> %s\n' "apt-get update"; \
	      DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	      printf '==> %s\n' "apt-get install -y python3-venv"; \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; \
	      probe="$$(mktemp -d)"; \
	      if ! $(PYTHON) -m venv "$$probe/venv" >/dev/null 2>&1; then \
	        rm -rf "$$probe"; \
	        echo "error: '$(PYTHON) -m venv' still fails after installing python3-venv ($$(command -v $(PYTHON)) may not be Debian's python3)" >&2; \
	        exit 1; \
	      fi; \
	      rm -rf "$$probe"; \
	    else \
	      echo "error: '$(PYTHON) -m venv' does not work. On Debian/Ubuntu install the venv module:" >&2; \
	      echo "         sudo apt-get install python3-venv" >&2; \
	      exit 1; \
	    fi; \
	  fi; \
	fi
	$(call say,installing test peers (bash tests/install.sh))
	@bash tests/install.sh

build: ## cargo build (workspace, all targets, --locked)
	$(call say,cargo build --workspace --all-targets --locked)
	@$(CARGO) build --workspace --all-targets --locked

# rustfmt and clippy ship as rustup components; add them when a toolchain lacks them.
toolchain:
	@if ! $(CARGO) fmt --version >/dev/null 2>&1 || ! $(CARGO) clippy --version >/dev/null 2>&1; then \
	  if command -v rustup >/dev/null 2>&1; then \
	    printf '==> %s\n' "rustfmt/clippy missing; rustup component add rustfmt clippy"; \
	    rustup component add rustfmt clippy; \
	  else \
	    echo "error: cargo fmt / cargo clippy unavailable and rustup not found; install the rustfmt and clippy components" >&2; \
	    exit 1; \
	  fi; \
	fi

lint: toolchain ## cargo fmt --check and cargo clippy -D warnings
	$(call say,cargo fmt --all -- --check)
	@$(CARGO) fmt --all -- --check
	$(call say,cargo clippy --workspace --all-targets --locked -- -D warnings)
	@$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

chart-docs: ## Regenerate charts/kinesis-operator/README.md from values.yaml (helm-docs)
	$(call say,helm-docs: charts/kinesis-operator/README.md)
	@bash -c 'source tests/k8s/tools.sh && ensure_helm_docs && cd charts && "$$HELM_DOCS" --chart-search-root . --log-level warning'

crds: ## Regenerate crds/kinesisexporters.yaml (and the chart's copy) with crdgen
	$(call say,cargo run -p kinesis-operator --bin crdgen)
	@$(CARGO) run -q --locked -p kinesis-operator --bin crdgen > crds/kinesisexporters.yaml
	@cp crds/kinesisexporters.yaml charts/kinesis-operator/crds/kinesisexporters.yaml

readme: ## Regenerate README.md's configuration tables from the settings table
	$(call say,cargo test -p kinesis-exporter-config (KEX_UPDATE_README=1))
	@KEX_UPDATE_README=1 $(CARGO) test -q --locked -p kinesis-exporter-config --lib the_readme_tables

# helm is built from the Go module proxy once and cached outside the work tree (tests/k8s/tools.sh).
chart-lint: deps ## Helm chart: CRD copy, helm lint --strict, schema, kubernetes-validate --strict
	$(call say,chart checks (bash tests/k8s/chart_checks.sh))
	@bash tests/k8s/chart_checks.sh

test-rust: ## cargo test (workspace, --locked)
	$(call say,cargo test --workspace --locked)
	@$(CARGO) test --workspace --locked

test-e2e: deps build ## End-to-end tests against real peers (tests/run.sh)
	$(call say,prometheus for the chart's alerts and dashboard (tests/k8s/tools.sh ensure_prometheus))
	@bash tests/k8s/tools.sh ensure_prometheus >/dev/null
	$(call say,end-to-end tests (bash tests/run.sh))
	@bash tests/run.sh

# The whole fault matrix (tests/test_faults.py): throttling, bursts, outages, stalls, signals,
# overload, stalled clients, through the Kinesis fault proxy (tests/peers/fault_proxy.py) in
# front of kinesalite. test-e2e runs its short selection. Prints the table, also on failure.
test-faults: deps build ## The full fault matrix (tests/test_faults.py, KEX_FAULTS=full) and its table
	$(call say,fault matrix (KEX_FAULTS=full bash tests/run.sh tests/test_faults.py))
	@table="$$(mktemp)"; status=0; \
	KEX_FAULTS=full KEX_FAULT_TABLE="$$table" bash tests/run.sh tests/test_faults.py || status=$$?; \
	printf '==> %s\n' "fault matrix: spans per scenario"; \
	cat "$$table"; rm -f "$$table"; exit $$status

# A real local control plane (tests/k8s/controlplane.sh: etcd, kube-apiserver, controller-manager,
# scheduler, kwok), the chart installed by helm, the operator run locally as the chart's
# ServiceAccount. The first `controlplane.sh build` takes tens of minutes; later runs reuse the cache.
test-k8s: deps build ## Operator + chart end-to-end tests on a local Kubernetes control plane (tests/k8s)
	$(call say,control plane binaries (tests/k8s/controlplane.sh build))
	@tests/k8s/controlplane.sh build
	@# umoci unpacks an image in test_images.py (which fails without it under CI=true).
	@command -v umoci >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || bash tests/k8s/tools.sh ensure_apt_packages umoci
	$(call say,Kubernetes end-to-end tests (pytest tests/k8s))
	@$(VENV_PYTHON) -m pytest -q -p no:cacheprovider tests/k8s

# The images of the release binaries, as OCI layouts that `ctr images import` takes: no Docker
# engine, no registry. User, entrypoint, ports and paths come from the Dockerfiles' final stage.
# cargo's target directory: $CARGO_TARGET_DIR when set (CI keeps it outside the work tree, so
# it survives between runs on one machine), else target/.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
IMAGES_DIR := $(TARGET_DIR)/images
images: ## Release binaries as OCI images (no Docker): <target dir>/images/kinesis-{exporter,operator}.tar
	$(call say,cargo build --release (kinesis-exporter, kinesis-operator))
	@$(CARGO) build --release --locked -p kinesis-exporter -p kinesis-operator --bins
	$(call say,OCI images into $(IMAGES_DIR) (tests/k8s/oci_image.py))
	@mkdir -p $(IMAGES_DIR)
	@for bin in kinesis-exporter kinesis-operator; do \
	  dir=$${bin#kinesis-}; \
	  $(PYTHON) tests/k8s/oci_image.py build --dockerfile $$dir/Dockerfile --binary $(TARGET_DIR)/release/$$bin \
	    --name $$bin:dev --out $(IMAGES_DIR)/$$bin.tar >/dev/null; \
	done

# A real node (kubelet + containerd + runc + CNI + kube-proxy, tests/k8s/node.sh) next to kwok:
# the Kubernetes node binaries and containerd are built from Go modules once and cached, runc
# and the CNI plugins come from apt. Needs root.
node: ## Build (once) and cache the real node's binaries and packages (tests/k8s/node.sh build)
	$(call say,control plane and node binaries (controlplane.sh build --node, node.sh build))
	@tests/k8s/controlplane.sh build --node
	@tests/k8s/node.sh build

test-node: deps images node ## The operator and exporters as real pods on a real node (tests/k8s/realnode)
	$(call say,real-node end-to-end tests (pytest tests/k8s/realnode))
	@$(VENV_PYTHON) -m pytest -q -p no:cacheprovider tests/k8s/realnode

# kinesis-exporter and the OpenTelemetry Collector (built with ocb, cached) side by side on the
# same OTLP load into the same checking Kinesis stand-in. Not part of `make test`.
BENCH_E2E_ARGS ?=
bench-e2e: deps ## Exporter vs the Collector's awskinesisexporter: CPU per span, latency, RSS (tests/bench_e2e.py)
	$(call say,cargo build --release (kinesis-exporter, kinesis-bench))
	@$(CARGO) build --release --locked -p kinesis-exporter -p kinesis-bench --bins
	$(call say,the Collector (tests/k8s/tools.sh ensure_otelcol))
	@otelcol="$$(bash tests/k8s/tools.sh ensure_otelcol)"; \
	  $(VENV_PYTHON) tests/bench_e2e.py --otelcol "$$otelcol" $(BENCH_E2E_ARGS)

# The operator at scale on the local control plane (kwok): 1000 KinesisExporters in 100
# namespaces, every operator request counted from the audit log. Not part of `make test`.
bench-operator: deps ## Operator benchmark: 1000 resources, Ready curve, requests, writes at rest (tests/k8s/bench_operator.py)
	$(call say,control plane binaries (tests/k8s/controlplane.sh build))
	@tests/k8s/controlplane.sh build
	$(call say,cargo build --release -p kinesis-operator)
	@$(CARGO) build --release --locked -p kinesis-operator
	$(call say,operator benchmark (tests/k8s/bench_operator.py $(BENCH_OPERATOR_ARGS)))
	@$(VENV_PYTHON) tests/k8s/bench_operator.py $(BENCH_OPERATOR_ARGS)

test: ## lint, chart-lint, test-rust, test-e2e, test-k8s, then test-node (everything CI runs)
	@all_start=$$(date +%s); \
	for step in lint chart-lint test-rust test-e2e test-k8s test-node; do \
	  start=$$(date +%s); \
	  printf '==> make %s\n' "$$step"; \
	  if ! $(MAKE) $$step; then \
	    printf '==> make %s FAILED after %ss\n' "$$step" "$$(( $$(date +%s) - start ))"; \
	    exit 1; \
	  fi; \
	  printf '==> make %s passed in %ss\n' "$$step" "$$(( $$(date +%s) - start ))"; \
	done; \
	printf '==> all tests passed in %ss\n' "$$(( $$(date +%s) - all_start ))"

bench: ## Aggregation benchmark: aggregation vs MD5-only throughput, median of 15 rounds
	$(call say,cargo bench -p kinesis-exporter --bench aggregation)
	@$(CARGO) bench -p kinesis-exporter --bench aggregation

# The last part runs on a local control plane with a real node (tests/k8s/controlplane.sh,
# tests/k8s/node.sh): the first `make node` compiles the Kubernetes binaries and containerd from
# Go modules (needs go, and root for the node); later runs reuse the cache.
demo: build deps images node ## Records and OTLP into kinesalite, then helm + operator + exporter as real pods on a real node
	$(call say,running the demo (tests/demo.py))
	@$(VENV_PYTHON) tests/demo.py
	$(call say,running the Kubernetes demo on a real node (tests/demo_k8s.py))
	@$(VENV_PYTHON) tests/demo_k8s.py

clean: ## Remove build output and Python caches
	$(call say,cargo clean)
	@$(CARGO) clean
	$(call say,removing Python caches)
	@find tests \( -path tests/.venv -o -path tests/node_modules \) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	@rm -rf tests/.pytest_cache

distclean: clean ## clean, and remove the installed test peers too
	$(call say,removing tests/.venv and tests/node_modules)
	@rm -rf tests/.venv tests/node_modules
