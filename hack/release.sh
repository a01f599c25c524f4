#!/usr/bin/env bash
# Builds a release into dist/ (make release VERSION=x.y.z):
#
#   dist/image/oci/, dist/image/tokenkeeper-<v>.tar   the manager image (hack/image), and its digest
#   dist/install.yaml          config/default (CRD, RBAC, namespace under the restricted Pod
#                              Security Standard, manager, metrics Service) with the image
#                              pinned as <IMAGE_REPO>:<v>@<digest>
#   dist/tokenkeeper-<v>.tgz   charts/tokenkeeper packaged with version and appVersion <v>
#                              and image.repository/image.digest set to the same image
#   dist/SHA256SUMS            checksums of the three files above
#
# Every file carries the commit's time, not the build's, so running it twice
# on one commit with the same toolchain gives the same bytes.
#
# Environment: VERSION (required, semantic version without a leading v),
# IMAGE_REPO (default ghcr.io/tokenkeeper/tokenkeeper), REVISION (default: the
# git commit, with -dirty for a modified tree), SOURCE_DATE_EPOCH (default:
# the commit's time), DIST (default dist), HELM (default: built by
# hack/tools.sh). Progress goes to stderr; nothing else is printed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "release: $*" >&2; }
die() { log "$*"; exit 1; }

version=${VERSION:-}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] ||
  die "VERSION=${version:-<unset>}: want a semantic version such as 0.1.0 or 0.2.0-rc.1 (no leading v): make release VERSION=0.1.0"
repo=${IMAGE_REPO:-ghcr.io/tokenkeeper/tokenkeeper}
dist=${DIST:-$root/dist}
if [[ -z ${REVISION:-} ]]; then
  REVISION=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
  if [[ $REVISION != unknown && -n $(git -C "$root" status --porcelain 2>/dev/null) ]]; then
    REVISION+=-dirty
  fi
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}
helm=${HELM:-$("$root/hack/tools.sh" helm)}
command -v kubectl >/dev/null || die "kubectl is needed (kubectl kustomize renders config/default)"

start=$SECONDS
mkdir -p "$dist"
rm -rf "$dist/install.yaml" "$dist/SHA256SUMS" "$dist"/tokenkeeper-*.tgz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. The image.
log "building the image $repo:$version (revision $REVISION)"
digest=$(go -C "$root/hack/image" run . --root "$root" --out "$dist/image" \
  --repository "$repo" --version "$version" --revision "$REVISION")
[[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || die "hack/image printed $digest, not a digest"
image="$repo:$version@$digest"

# 2. install.yaml: config/default with the image pinned by kustomize.
overlay=$work/install
mkdir -p "$overlay"
cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $(realpath --relative-to="$overlay" "$root/config/default")
images:
- name: controller
  newName: $repo
  newTag: "$version"
  digest: $digest
EOF
{
  echo "# tokenkeeper $version: CRD, RBAC, namespace tokenkeeper-system and the manager ($image)."
  echo "#   kubectl apply --server-side -f install.yaml"
  kubectl kustomize "$overlay"
} >"$dist/install.yaml"
grep -q "image: $image\$" "$dist/install.yaml" || die "install.yaml does not reference $image"

# 3. The chart, with the same image.
stage=$work/chart/tokenkeeper
mkdir -p "$(dirname "$stage")"
cp -R "$root/charts/tokenkeeper" "$stage"
# Exactly one line each in values.yaml; checked below.
sed -i -e "s#^  repository: tokenkeeper\$#  repository: $repo#" -e "s#^  digest: \"\"\$#  digest: \"$digest\"#" "$stage/values.yaml"
grep -q "^  repository: $repo\$" "$stage/values.yaml" && grep -q "^  digest: \"$digest\"\$" "$stage/values.yaml" ||
  die "could not set image.repository and image.digest in the chart's values.yaml"
"$helm" lint --strict "$stage" >&2
"$helm" package "$stage" --version "$version" --app-version "$version" --destination "$dist" >&2
chart=tokenkeeper-$version.tgz
[[ -f $dist/$chart ]] || die "helm package wrote no $dist/$chart"
# helm package stamps every entry with the current time; repack with the
# commit's time, sorted and without owner names, so the same inputs give the
# same archive (and checksum).
mkdir "$work/repack"
tar -xzf "$dist/$chart" -C "$work/repack"
(cd "$work/repack" && tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
  --mode=u=rwX,go=rX -cf - tokenkeeper | gzip -n -9) >"$dist/$chart"

# 4. Checksums.
(cd "$dist" && sha256sum install.yaml "$chart" "image/tokenkeeper-$version.tar" >SHA256SUMS)

log "done in $((SECONDS - start))s:"
log "  image     $image"
log "  manifest  $dist/install.yaml"
log "  chart     $dist/$chart"
log "  sums      $dist/SHA256SUMS"
