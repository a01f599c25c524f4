# tokenkeeper Makefile, in kubebuilder's layout.
#
# The two commands a newcomer needs:
#   make demo   runs the operator for real on a local control plane
#   make test   runs every test against a real kube-apiserver and etcd
#
# The control-plane binaries are built from Go modules by
# hack/envtest-assets.sh and cached under ~/.cache/tokenkeeper (no downloads).

IMG ?= tokenkeeper:latest
# Release identity: stamped into the binaries (internal/version), the image's
# labels and tag, install.yaml and the chart. `make release` needs VERSION=x.y.z.
VERSION ?= dev
IMAGE_REPO ?= ghcr.io/tokenkeeper/tokenkeeper
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(if $(shell git status --porcelain 2>/dev/null | head -1),-dirty)
# Every time inside the image is the commit's, so the same commit gives the same digest.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
VERSION_PKG = github.com/tokenkeeper/tokenkeeper/internal/version
LDFLAGS = -X $(VERSION_PKG).version=$(VERSION) -X $(VERSION_PKG).revision=$(REVISION)
GO ?= go
CONTROLLER_GEN ?= $(GO) tool controller-gen
# Tests run one package at a time per core; the whole suite takes a few
# minutes once the control-plane binaries are cached.
GOTEST_FLAGS ?= -count=1 -timeout 25m
# make bench: how many ManagedTokens, and more flags (bin/tokenkeeper-bench -h).
N ?= 1000
BENCH_FLAGS ?=

SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Display this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: ## Generate the CRD and RBAC manifests from the markers, and the chart's copies.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./api/...;./controllers/..." output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	cp config/crd/bases/tokens.tokenkeeper.dev_managedtokens.yaml charts/tokenkeeper/crds/
	cp config/rbac/role.yaml charts/tokenkeeper/files/manager-role.yaml
	cp config/prometheus/rules.yaml charts/tokenkeeper/files/rules.yaml
	cp config/prometheus/dashboard.json charts/tokenkeeper/files/dashboard.json

.PHONY: generate
generate: ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: fmt
fmt: ## Run go fmt.
	$(GO) fmt ./...

.PHONY: vet
vet: ## Run go vet (also on hack/image, a module of its own).
	$(GO) vet ./...
	$(GO) -C hack/image vet ./...

.PHONY: envtest-assets
envtest-assets: ## Build (once) and print the folder holding kube-apiserver and etcd.
	@hack/envtest-assets.sh

.PHONY: tools
tools: ## Build (once) helm and promtool for the manifest tests; cached like the envtest binaries.
	@hack/tools.sh helm >/dev/null
	@hack/tools.sh promtool >/dev/null

.PHONY: test
test: manifests generate fmt vet tools ## Run all tests against a real control plane.
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets.sh)" $(GO) test $(GOTEST_FLAGS) -v ./... 2>&1 | hack/test-summary.sh

.PHONY: verify
verify: ## Fail if generated files or formatting are out of date.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	@git diff --exit-code -- api config charts || { echo "generated files are out of date: run make manifests generate"; exit 1; }

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the manager, the kubectl plugin and the demo sandbox.
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/manager ./cmd
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/kubectl-tokenkeeper ./cmd/kubectl-tokenkeeper
	$(GO) build -o bin/tokenkeeper-sandbox ./hack/sandbox

.PHONY: image
image: ## Build the manager image into dist/image (OCI layout + tarball) without a container engine; prints its digest.
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) -C hack/image run . --root "$(CURDIR)" --out "$(CURDIR)/dist/image" \
		--repository $(IMAGE_REPO) --version $(VERSION) --revision $(REVISION)

.PHONY: release
release: ## VERSION=x.y.z: the image, dist/install.yaml, dist/tokenkeeper-x.y.z.tgz and dist/SHA256SUMS.
	VERSION=$(VERSION) IMAGE_REPO=$(IMAGE_REPO) REVISION=$(REVISION) SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) hack/release.sh

.PHONY: docker-build
docker-build: ## Build the manager image $(IMG) with a container engine (make image needs none).
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMG) .

.PHONY: run
run: manifests generate fmt vet ## Run the manager against the cluster in your kubeconfig.
	$(GO) run ./cmd

.PHONY: demo
demo: ## Run the operator on a local control plane against sandbox providers (Ctrl-C stops it).
	$(GO) build -o bin/tokenkeeper-demo ./hack/demo
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets.sh)" bin/tokenkeeper-demo

.PHONY: bench
bench: ## Measure N ManagedTokens on a local control plane (N=1000; make bench N=10000) and print a table.
	$(GO) build -o bin/tokenkeeper-bench ./hack/bench
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets.sh)" bin/tokenkeeper-bench -n $(N) $(BENCH_FLAGS)

##@ Deployment

.PHONY: install
install: manifests ## Install the CRDs into the cluster in your kubeconfig.
	kubectl apply -k config/crd

.PHONY: uninstall
uninstall: ## Remove the CRDs (and so every ManagedToken) from the cluster.
	kubectl delete -k config/crd --ignore-not-found

.PHONY: deploy
deploy: manifests ## Deploy the operator (image $(IMG)) to the cluster in your kubeconfig.
	cd config/manager && kubectl kustomize . >/dev/null
	kubectl kustomize config/default | sed "s#image: controller:latest#image: $(IMG)#" | kubectl apply -f -

.PHONY: undeploy
undeploy: ## Remove the operator from the cluster.
	kubectl kustomize config/default | kubectl delete --ignore-not-found -f -
