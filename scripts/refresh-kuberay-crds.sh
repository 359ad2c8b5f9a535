#!/usr/bin/env bash
# Replace clusters/kuberay/crds/*.yaml with the CRDs of KubeRay release REF (a tag such as v1.7.0, or a commit):
#   bash scripts/refresh-kuberay-crds.sh v1.7.0
# Then run tests/test_clusters.py and record REF in clusters/kuberay/crds/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: refresh-kuberay-crds.sh REF (a KubeRay tag or commit)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$tmp" init -q
git -C "$tmp" remote add origin https://github.com/ray-project/kuberay.git
git -C "$tmp" fetch -q --depth 1 origin "$ref"
for kind in rayclusters rayjobs raycronjobs; do
  git -C "$tmp" show "FETCH_HEAD:ray-operator/config/crd/bases/ray.io_$kind.yaml" >"clusters/kuberay/crds/ray.io_$kind.yaml"
done
echo "refresh-kuberay-crds: clusters/kuberay/crds/ now holds KubeRay $ref ($(git -C "$tmp" rev-parse FETCH_HEAD))"
