# Ambient Lite. `make demo` runs the mesh on a local cluster; `make test` runs every test.
# Both install what they need first (make setup). See README.md.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

include tools/versions.env

GO ?= go
# Links to the pinned tools (the binaries are cached in $TOOLS_CACHE, see tools/build.sh).
BIN := $(CURDIR)/.bin
OUT := $(CURDIR)/out
export AMBIENT_LITE_BIN_DIR := $(BIN)
export PATH := $(BIN):$(PATH)
# Where `make cluster-up` keeps the control plane's state, logs and kubeconfig.
CLUSTER_DIR ?= $(or $(TMPDIR),/tmp)/ambient-lite-cluster
# Packages under test; override to narrow: make test PKGS=./tests/cluster/...
PKGS ?= ./...
TEST_TIMEOUT ?= 30m
# Nodes of `make cluster-up` (0: a control plane only, on loopback; at most 8).
NODES ?= 2
# Images `make images` builds and loads into the nodes (default: the whole catalog).
IMAGES ?=
CLUSTER_TOOLS := etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy \
	bridge host-local loopback portmap coredns echo-server echo-client fortio

.PHONY: setup tools build generate generate-check lint test demo cluster-up cluster-down images bench bench-l4 bench-l7 bench-xds bench-cni clean

## setup: install system packages (apt) and build the pinned tools; idempotent
setup:
	tools/setup.sh

## tools: build the pinned tools missing from the cache (no apt)
tools:
	tools/build.sh

## build: compile every package and the commands into out/bin
build:
	$(GO) build ./...
	$(GO) build -o $(OUT)/bin/ ./tests/cmd/...

## generate: regenerate committed generated files (CRD copies, later bpf2go and protobuf)
generate:
	$(GO) generate ./...

## generate-check: fail if `go generate` changes anything
generate-check:
	tools/generate-check.sh

## lint: gofmt, go vet, staticcheck and the architecture (import rule) test
lint:
	tools/build.sh staticcheck >/dev/null
	@unformatted=$$(gofmt -l .); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...
	$(GO) test -count=1 ./tests/arch/

## test: what CI runs: setup, lint, generated-code check, then every test
test: setup
	$(MAKE) --no-print-directory lint generate-check
	gotestsum --format pkgname-and-test-fails --format-hide-empty-pkg -- -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

## bench: run every benchmark (each prints its own baseline ratios)
bench: setup
	$(GO) test -run '^$$' -bench . -benchtime 1x $(PKGS)

## bench-l4: iperf3 and fortio through (a) direct TCP, (b) two ztunnels, (c) an stunnel pair, (d) an HAProxy mTLS pair, (e) an HAProxy plain TCP pair (splice); prints a table (root)
bench-l4: setup
	$(GO) test -count=1 -timeout 20m -run '^$$' -bench '^BenchmarkL4$$' -benchtime 1x ./tests/netns/

## bench-l7: fortio HTTP/1.1 via (a) direct, (b) ztunnel, waypoint, ztunnel, (c) caddy; a table with the goals (root); BENCH_L7_FLAGS="-bench-l7-duration=5s -bench-l7-profile=DIR"
bench-l7: setup
	$(GO) test -count=1 -timeout 30m -run '^$$' -bench '^BenchmarkL7$$' -benchtime 1x ./tests/netns/ $(BENCH_L7_FLAGS)

## bench-xds: 10,000 pods and 1,000 services; one-pod changes to 100 delta xDS streams; p50/p99 and istiod-lite RSS
bench-xds: setup
	$(GO) test -count=1 -timeout 30m -run '^$$' -bench '^BenchmarkXDSPush$$' -benchtime 1x ./tests/integration/

## bench-cni: what in-pod redirection adds to a pod's CNI ADD, and its kernel memory per pod
bench-cni: setup
	$(GO) test -count=1 -timeout 10m -run '^$$' -bench '^BenchmarkCNIAdd$$' -benchtime 1x ./tests/cni/
	$(GO) test -count=1 -run '^$$' -bench '^BenchmarkInstall$$' ./cni/internal/redirect/

## cluster-up: start the local cluster (NODES=2 kubelet nodes, CoreDNS) and print `export KUBECONFIG=...`
cluster-up:
	tools/build.sh $(CLUSTER_TOOLS) >/dev/null
	$(GO) build -o $(OUT)/bin/localcluster ./tests/cmd/localcluster
	$(OUT)/bin/localcluster up --dir $(CLUSTER_DIR) --nodes '$(NODES)'

## images: build the changed images (IMAGES=..., default all) and load them into every node of the cluster
images:
	tools/build.sh $(CLUSTER_TOOLS) >/dev/null
	$(GO) build -o $(OUT)/bin/localcluster ./tests/cmd/localcluster
	$(OUT)/bin/localcluster images --dir $(CLUSTER_DIR) $(IMAGES)

## cluster-down: stop every process of the local cluster, remove its namespaces, mounts, cgroups and directory
cluster-down:
	$(GO) build -o $(OUT)/bin/localcluster ./tests/cmd/localcluster
	$(OUT)/bin/localcluster down --dir $(CLUSTER_DIR)

## demo: the mesh end to end on a 2-node local cluster (installed with helm), with the evidence; leaves the cluster up
# The demo times itself from here, setup and builds included. It reuses a running cluster and
# cached images, so a re-run is quick; `make cluster-down` stops everything.
demo:
	@start=$$(date +%s%N); \
	  tools/setup.sh && \
	  tools/build.sh $(CLUSTER_TOOLS) helm >/dev/null && \
	  $(GO) build -o $(OUT)/bin/ ./tests/cmd/localcluster ./tests/cmd/demo && \
	  $(OUT)/bin/demo --dir $(CLUSTER_DIR) --localcluster $(OUT)/bin/localcluster --since $$start

## clean: remove build outputs (the tool cache stays; remove $TOOLS_CACHE to rebuild tools)
clean:
	rm -rf $(OUT) $(BIN)

help:
	@grep -E '^## ' Makefile | sed 's/^## //'

.PHONY: charts-test charts-golden charts-install charts-uninstall

## charts-test: helm lint, template goldens and server dry-run of the Helm charts (tests/charts)
charts-test:
	tools/build.sh etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm >/dev/null
	$(GO) test -count=1 ./tests/charts/

## charts-golden: rewrite the Helm charts' template goldens (tests/charts/testdata)
charts-golden:
	tools/build.sh helm kubectl >/dev/null
	$(GO) test -count=1 -run '^TestTemplateGolden$$' ./tests/charts/ -update

# Helm's state for charts-install/-uninstall stays in the cluster directory, not in $HOME.
CHARTS_HELM_ENV := HELM_CACHE_HOME=$(CLUSTER_DIR)/helm/cache HELM_CONFIG_HOME=$(CLUSTER_DIR)/helm/config HELM_DATA_HOME=$(CLUSTER_DIR)/helm/data

## charts-install: install base, istiod-lite, cni and ztunnel with helm into $KUBECONFIG (default: the local cluster's), namespace istio-system
charts-install:
	tools/build.sh helm kubectl >/dev/null
	export KUBECONFIG=$${KUBECONFIG:-$(CLUSTER_DIR)/kubeconfig} $(CHARTS_HELM_ENV); \
	  helm upgrade --install istio-base charts/base -n istio-system --create-namespace 2> >(grep -v 'found symbolic link' >&2) && \
	  helm upgrade --install istiod charts/istiod-lite -n istio-system --wait --timeout 3m && \
	  helm upgrade --install istio-cni charts/cni -n istio-system --wait --timeout 3m && \
	  helm upgrade --install ztunnel charts/ztunnel -n istio-system --wait --timeout 3m && \
	  kubectl -n istio-system get pods -o wide

## charts-uninstall: uninstall the four releases from $KUBECONFIG, in the reverse order
charts-uninstall:
	export KUBECONFIG=$${KUBECONFIG:-$(CLUSTER_DIR)/kubeconfig} $(CHARTS_HELM_ENV); \
	  for r in ztunnel istio-cni istiod istio-base; do helm uninstall $$r -n istio-system --ignore-not-found; done
