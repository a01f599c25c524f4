#!/usr/bin/env bash
# Builds the envtest control-plane binaries (kube-apiserver and etcd) from Go
# modules and prints the absolute path of the folder that holds them.
#
# Why: setup-envtest downloads prebuilt binaries, and nothing but the Go
# module proxy, Debian apt and npm is reachable where this project is built.
# So we build them from source through two small wrapper modules under
# hack/envtest/, kept out of the project's own go.mod.
#
# The finished binaries are cached outside the clone, keyed on the versions
# pinned in the wrapper modules, so a second run (or a fresh clone on the same
# machine) reuses them:
#   ${TOKENKEEPER_CACHE:-$HOME/.cache/tokenkeeper}/envtest/k8s-<v>-etcd-<v>/
# Only the binaries are kept; Go's build cache is left to Go.
#
# Everything except the final path goes to stderr, so
#   KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)
# works.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
api_mod=$here/envtest/kube-apiserver
etcd_mod=$here/envtest/etcd

# The version a wrapper module requires of MODULE (go mod edit reads go.mod
# without touching the network).
required_version() {
  (cd "$1" && go mod edit -json) | awk -v m="\"$2\"" '$1=="\"Path\":" && $2==m"," {getline; gsub(/[",]/, "", $2); print $2; exit}'
}
k8s_version=$(required_version "$api_mod" k8s.io/kubernetes)
etcd_version=$(required_version "$etcd_mod" go.etcd.io/etcd/server/v3)
[[ -n $k8s_version && -n $etcd_version ]] || { echo "envtest-assets: cannot read pinned versions" >&2; exit 1; }

cache_root=${TOKENKEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenkeeper}
dest=$cache_root/envtest/k8s-${k8s_version}-etcd-${etcd_version}
mkdir -p "$dest"

log() { echo "envtest-assets: $*" >&2; }

# ldflags that stamp a real version: without them the server reports
# v0.0.0-master+$Format:%H$ and anything that parses it (kubectl included) fails.
version_ldflags() {
  local v=$1 major minor
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  local f=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    f+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$f"
}

# build NAME MODULE_DIR PACKAGE LDFLAGS: builds into a temp file and renames it
# into place, so an interrupted build never leaves a half-written binary that a
# later run would trust.
build() {
  local name=$1 dir=$2 pkg=$3 ldflags=$4
  if [[ -x $dest/$name ]]; then
    return 0
  fi
  log "building $name ($pkg) into $dest; a cold build takes several minutes"
  local start=$SECONDS tmp
  tmp=$(mktemp "$dest/.$name.XXXXXX")
  (cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp" "$pkg") >&2
  chmod +x "$tmp"
  mv -f "$tmp" "$dest/$name"
  log "built $name in $((SECONDS - start))s"
}

build etcd "$etcd_mod" go.etcd.io/etcd/server/v3 ""
build kube-apiserver "$api_mod" k8s.io/kubernetes/cmd/kube-apiserver "$(version_ldflags "$k8s_version")"

echo "$dest"
