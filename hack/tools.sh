#!/usr/bin/env bash
# Builds (once) a command-line tool the manifest tests need and prints the
# absolute path of its binary:
#
#   hack/tools.sh promtool   # Prometheus' promtool: check and unit-test alert rules
#   hack/tools.sh helm       # Helm 3: render charts/tokenkeeper
#
# Why: release binaries cannot be downloaded where this project is built; only
# the Go module proxy, Debian apt and npm are reachable. Both tools are Go
# programs whose modules carry no replace directives, so a plain
# `go install PACKAGE@VERSION` builds them from the module proxy, without a
# wrapper module and without touching the project's go.mod.
#
# The binaries are cached outside the clone, keyed on the pinned version, so a
# second run (or a fresh clone on the same machine) reuses them at once:
#   ${TOKENKEEPER_CACHE:-$HOME/.cache/tokenkeeper}/tools/<name>-<version>/<name>
# Only the binary is kept; Go's module and build caches are left to Go.
#
# Everything except the final path goes to stderr, so
#   PROMTOOL=$(hack/tools.sh promtool)
# works. To bump a tool, change its version below.
set -euo pipefail

# Module versions. github.com/prometheus/prometheus v0.316.0 is Prometheus
# 3.16.0 (Prometheus tags its Go module v0.<major><minor>.<patch>).
PROMTOOL_MODULE_VERSION=v0.316.0
PROMTOOL_VERSION=3.16.0
HELM_VERSION=v3.22.0
# Helm stamps the Kubernetes version .Capabilities reports from the client-go
# it is built with (v0.37 for Helm 3.22), as its own Makefile does.
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=37

log() { echo "tools: $*" >&2; }
usage() { echo "usage: $0 promtool|helm" >&2; exit 2; }

[[ $# -eq 1 ]] || usage
name=$1
tags=""
case $name in
  promtool)
    version=$PROMTOOL_VERSION
    pkg=github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_MODULE_VERSION
    # Leave out the cloud service-discovery plugins (AWS, Azure, GCE, ...):
    # promtool's rule checks and tests never use them, and they are most of
    # its build time.
    tags=remove_all_sd
    ldflags="-X github.com/prometheus/common/version.Version=$PROMTOOL_VERSION"
    ldflags+=" -X github.com/prometheus/common/version.Branch=HEAD"
    ldflags+=" -X github.com/prometheus/common/version.Revision=$PROMTOOL_MODULE_VERSION"
    ;;
  helm)
    version=${HELM_VERSION#v}
    pkg=helm.sh/helm/v3/cmd/helm@$HELM_VERSION
    ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags+=" -X $p.k8sVersionMajor=$HELM_K8S_MAJOR -X $p.k8sVersionMinor=$HELM_K8S_MINOR"
    done
    ;;
  *) usage ;;
esac

cache_root=${TOKENKEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenkeeper}
dest=$cache_root/tools/$name-$version
bin=$dest/$name

if [[ ! -x $bin ]]; then
  mkdir -p "$dest"
  log "building $name $version ($pkg) into $dest; a cold build takes a few minutes"
  start=$SECONDS
  # go install writes into GOBIN; a private temporary GOBIN inside $dest and a
  # final rename mean an interrupted or concurrent build never leaves a
  # half-written binary that a later run would trust.
  tmp=$(mktemp -d "$dest/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # Run from the temporary folder so no go.mod or go.work around the caller
  # is consulted: PACKAGE@VERSION uses only the tool's own go.mod.
  (cd "$tmp" && GOWORK=off GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go install -trimpath -tags "$tags" -ldflags "-s -w $ldflags" "$pkg") >&2
  mv -f "$tmp/$name" "$bin"
  log "built $name in $((SECONDS - start))s"
fi

echo "$bin"
