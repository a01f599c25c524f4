#!/usr/bin/env bash
# Prints the absolute path of a folder holding the envtest control-plane
# binaries (kube-apiserver and etcd), getting them the quickest way it can:
#
#   1. $KUBEBUILDER_ASSETS, when it is set and holds both binaries;
#   2. binaries this script already got, cached outside the clone;
#   3. setup-envtest's prebuilt binaries for the pinned Kubernetes version,
#      when its release index can be reached (a few seconds' probe first, so
#      an offline machine loses no time; TOKENKEEPER_ENVTEST_DOWNLOAD=0 skips
#      it);
#   4. else a build from Go modules, through two small wrapper modules under
#      hack/envtest/ kept out of the project's go.mod: about 2 minutes for
#      etcd and 7 for kube-apiserver on 2 free cores, once per machine.
# It says on stderr which way it took.
#
# Where this project is built, nothing but the Go module proxy, Debian apt and
# npm is reachable, so step 4 is the one CI takes on a fresh machine.
#
# The binaries are cached outside the clone, keyed on the pinned versions, so
# a second run (or a fresh clone on the same machine) reuses them:
#   ${TOKENKEEPER_CACHE:-$HOME/.cache/tokenkeeper}/envtest/k8s-<v>-etcd-<v>/   (built)
#   ${TOKENKEEPER_CACHE:-$HOME/.cache/tokenkeeper}/envtest/k8s-<v>-prebuilt/   (setup-envtest)
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
prebuilt=$cache_root/envtest/k8s-${k8s_version}-prebuilt

log() { echo "envtest-assets: $*" >&2; }
has_binaries() { [[ -x $1/kube-apiserver && -x $1/etcd ]]; }

# 1. The caller's own binaries.
if [[ -n ${KUBEBUILDER_ASSETS:-} ]]; then
  if has_binaries "$KUBEBUILDER_ASSETS"; then
    log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
    cd "$KUBEBUILDER_ASSETS" && pwd
    exit 0
  fi
  log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver or etcd; ignoring it"
fi

# 2. Binaries got before.
for d in "$dest" "$prebuilt"; do
  if has_binaries "$d"; then
    log "using cached binaries in $d"
    echo "$d"
    exit 0
  fi
done

# 3. setup-envtest's prebuilt binaries. Its index lists the Kubernetes
# versions it has; the probe fails in seconds where the index is unreachable.
SETUP_ENVTEST_VERSION=v0.25.1
ENVTEST_INDEX=https://raw.githubusercontent.com/kubernetes-sigs/controller-tools/HEAD/envtest-releases.yaml
download() {
  if [[ ${TOKENKEEPER_ENVTEST_DOWNLOAD:-1} == 0 ]]; then
    log "TOKENKEEPER_ENVTEST_DOWNLOAD=0: not trying setup-envtest's prebuilt binaries"
    return 1
  fi
  if ! command -v curl >/dev/null; then
    log "no curl to probe setup-envtest's release index; not trying prebuilt binaries"
    return 1
  fi
  local start=$SECONDS
  if ! curl -fsS --connect-timeout 3 --max-time 5 -o /dev/null "$ENVTEST_INDEX" 2>/dev/null; then
    log "setup-envtest's release index is unreachable (probe took $((SECONDS - start))s)"
    return 1
  fi
  log "fetching prebuilt kube-apiserver and etcd ${k8s_version#v} with setup-envtest $SETUP_ENVTEST_VERSION"
  local tmp path
  mkdir -p "$(dirname "$prebuilt")"
  tmp=$(mktemp -d "$(dirname "$prebuilt")/.prebuilt.XXXXXX")
  if ! path=$(cd "$tmp" && GOWORK=off timeout 300 go run "sigs.k8s.io/controller-runtime/tools/setup-envtest@$SETUP_ENVTEST_VERSION" \
      use "${k8s_version#v}" --bin-dir "$tmp/store" -p path) || ! has_binaries "$path"; then
    log "setup-envtest has no binaries for ${k8s_version#v} here"
    rm -rf "$tmp"
    return 1
  fi
  mkdir -p "$tmp/bin"
  cp "$path/kube-apiserver" "$path/etcd" "$tmp/bin/"
  rm -rf "$prebuilt"
  mv "$tmp/bin" "$prebuilt"
  rm -rf "$tmp"
  log "got prebuilt binaries in $((SECONDS - start))s"
}
if download; then
  echo "$prebuilt"
  exit 0
fi

# 4. Build from Go modules.
mkdir -p "$dest"
log "building kube-apiserver ${k8s_version} and etcd ${etcd_version} from Go modules into $dest:" \
  "once per machine, about 2 minutes for etcd and 7 for kube-apiserver on 2 free cores"

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
