#!/usr/bin/env bash
# fetch-kubernetes.sh VERSION ARCH OUTDIR [--dry-run]
#
# NOT RUN HERE: this project's machines have no internet access, so this script has never been
# run on them. It was written from the upstream release layouts (dl.k8s.io, GitHub releases of
# containerd, runc, CNI plugins, cri-tools and flannel, get.helm.sh) and is kept honest by a
# test of its --dry-run plan (tests/integration/fetch_script.rs), which checks every URL it
# would fetch and that a dry run touches no network and writes nothing.
#
# On a machine WITH internet access it assembles a real Kubernetes rootfs and a bundle.yaml for
# `ferry build`:
#
#   OUTDIR/bundle.yaml
#   OUTDIR/rootfs/usr/bin/{kubeadm,kubelet,kubectl,crictl,helm}
#   OUTDIR/rootfs/usr/local/bin/{containerd,containerd-shim-runc-v2,ctr}   (containerd 2.x, static)
#   OUTDIR/rootfs/usr/local/sbin/runc
#   OUTDIR/rootfs/opt/cni/bin/*                                            (CNI plugins)
#   OUTDIR/rootfs/etc/systemd/system/{containerd,kubelet}.service, kubelet.service.d/10-kubeadm.conf
#   OUTDIR/manifests/kube-flannel.yml                                      (default CNI; its images
#                                                                           are found by ferry build)
#
# Every download is checked against its published sha256 before it is used:
#   kubeadm/kubelet/kubectl  dl.k8s.io/release/VERSION/bin/linux/ARCH/NAME(.sha256)
#   containerd               github.com/containerd/containerd/releases/download/vV/containerd-static-V-linux-ARCH.tar.gz(.sha256sum)
#   runc                     github.com/opencontainers/runc/releases/download/vV/runc.ARCH + runc.sha256sum
#   CNI plugins              github.com/containernetworking/plugins/releases/download/vV/cni-plugins-linux-ARCH-vV.tgz(.sha256)
#   crictl                   github.com/kubernetes-sigs/cri-tools/releases/download/vV/crictl-vV-linux-ARCH.tar.gz(.sha256)
#   helm                     get.helm.sh/helm-vV-linux-ARCH.tar.gz(.sha256sum)
#   flannel manifest         github.com/flannel-io/flannel/releases/download/vV/kube-flannel.yml
#     flannel publishes no checksum for its manifest, so its sha256 must be given (pinned) with
#     --flannel-sha256 HEX or FLANNEL_SHA256; without it the script stops after downloading and
#     prints the digest for you to review and pin.
#
# Supported Kubernetes versions: v1.34.x (past end of life), v1.35.x, v1.36.x, v1.37.x. crictl
# follows the Kubernetes minor (v1.MINOR.0). Without internet, scripts/build-kubernetes.sh builds
# the same tree from Go modules.
#
# Component versions (override with the environment variables named; the defaults are those
# scripts/build-kubernetes.sh builds):
#   CONTAINERD_VERSION (2.4.2)  RUNC_VERSION (1.5.3)  CNI_VERSION (1.10.0)
#   HELM_VERSION (3.22.0)       FLANNEL_VERSION (0.28.10) CRICTL_VERSION (v1.MINOR.0)
#
# ARCH: amd64 or arm64.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
FLANNEL_SHA256=${FLANNEL_SHA256:-}
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --flannel-sha256) FLANNEL_SHA256=${2:?--flannel-sha256 needs a value}; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "fetch-kubernetes.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
if [ ${#ARGS[@]} -ne 3 ]; then
  echo "usage: fetch-kubernetes.sh VERSION ARCH OUTDIR [--dry-run] [--flannel-sha256 HEX] (see --help)" >&2
  exit 2
fi
VERSION=${ARGS[0]} ARCH=${ARGS[1]} OUT=${ARGS[2]}

case "$VERSION" in
  v1.34.*|v1.35.*|v1.36.*|v1.37.*) ;;
  *) echo "fetch-kubernetes.sh: Kubernetes $VERSION is not supported; ferry supports v1.34.x (past end of life) to v1.37.x" >&2; exit 2 ;;
esac
if ! [[ "$VERSION" =~ ^v1\.[0-9]+\.[0-9]+$ ]]; then
  echo "fetch-kubernetes.sh: version $VERSION is not of the form v1.MINOR.PATCH" >&2; exit 2
fi
case "$ARCH" in
  amd64|arm64) ;;
  *) echo "fetch-kubernetes.sh: architecture $ARCH is not supported (amd64, arm64)" >&2; exit 2 ;;
esac
MINOR=$(echo "$VERSION" | cut -d. -f2)

CONTAINERD_VERSION=${CONTAINERD_VERSION:-2.4.2}
RUNC_VERSION=${RUNC_VERSION:-1.5.3}
CNI_VERSION=${CNI_VERSION:-1.10.0}
HELM_VERSION=${HELM_VERSION:-3.22.0}
FLANNEL_VERSION=${FLANNEL_VERSION:-0.28.10}
CRICTL_VERSION=${CRICTL_VERSION:-v1.${MINOR}.0}

K8S=https://dl.k8s.io/release/$VERSION/bin/linux/$ARCH
GH=https://github.com
CONTAINERD_TGZ=containerd-static-$CONTAINERD_VERSION-linux-$ARCH.tar.gz
CNI_TGZ=cni-plugins-linux-$ARCH-v$CNI_VERSION.tgz
CRICTL_TGZ=crictl-$CRICTL_VERSION-linux-$ARCH.tar.gz
HELM_TGZ=helm-v$HELM_VERSION-linux-$ARCH.tar.gz

# The plan: NAME URL CHECKSUM-URL (CHECKSUM-URL "-" = pinned by --flannel-sha256).
PLAN=(
  "kubeadm $K8S/kubeadm $K8S/kubeadm.sha256"
  "kubelet $K8S/kubelet $K8S/kubelet.sha256"
  "kubectl $K8S/kubectl $K8S/kubectl.sha256"
  "$CONTAINERD_TGZ $GH/containerd/containerd/releases/download/v$CONTAINERD_VERSION/$CONTAINERD_TGZ $GH/containerd/containerd/releases/download/v$CONTAINERD_VERSION/$CONTAINERD_TGZ.sha256sum"
  "runc.$ARCH $GH/opencontainers/runc/releases/download/v$RUNC_VERSION/runc.$ARCH $GH/opencontainers/runc/releases/download/v$RUNC_VERSION/runc.sha256sum"
  "$CNI_TGZ $GH/containernetworking/plugins/releases/download/v$CNI_VERSION/$CNI_TGZ $GH/containernetworking/plugins/releases/download/v$CNI_VERSION/$CNI_TGZ.sha256"
  "$CRICTL_TGZ $GH/kubernetes-sigs/cri-tools/releases/download/$CRICTL_VERSION/$CRICTL_TGZ $GH/kubernetes-sigs/cri-tools/releases/download/$CRICTL_VERSION/$CRICTL_TGZ.sha256"
  "$HELM_TGZ https://get.helm.sh/$HELM_TGZ https://get.helm.sh/$HELM_TGZ.sha256sum"
  "kube-flannel.yml $GH/flannel-io/flannel/releases/download/v$FLANNEL_VERSION/kube-flannel.yml -"
)

if [ "$DRY_RUN" = 1 ]; then
  echo "fetch-kubernetes.sh --dry-run: Kubernetes $VERSION for linux/$ARCH into $OUT (nothing is downloaded or written)"
  for entry in "${PLAN[@]}"; do
    read -r name url sum <<<"$entry"
    if [ "$sum" = - ]; then
      echo "fetch $url"
      echo "  verify sha256 ${FLANNEL_SHA256:-<pin with --flannel-sha256; flannel publishes no checksum>}"
    else
      echo "fetch $url"
      echo "  verify against $sum"
    fi
  done
  echo "write $OUT/rootfs (kubeadm kubelet kubectl crictl helm -> usr/bin; containerd $CONTAINERD_VERSION -> usr/local/bin; runc $RUNC_VERSION -> usr/local/sbin; CNI plugins v$CNI_VERSION -> opt/cni/bin; systemd units)"
  echo "write $OUT/manifests/kube-flannel.yml (flannel v$FLANNEL_VERSION; its images are collected by ferry build)"
  echo "write $OUT/bundle.yaml"
  exit 0
fi

command -v curl >/dev/null || { echo "fetch-kubernetes.sh: needs curl" >&2; exit 1; }
command -v sha256sum >/dev/null || { echo "fetch-kubernetes.sh: needs sha256sum (coreutils)" >&2; exit 1; }
DL=$OUT/downloads
mkdir -p "$DL"

# expected_sum FILE-NAME CHECKSUM-FILE: the hex digest for FILE-NAME. Accepts both published
# formats: a bare digest (dl.k8s.io, cri-tools) and `digest  name` lines (sha256sum output,
# possibly listing several files, like runc.sha256sum).
expected_sum() {
  local name=$1 file=$2 line
  line=$(awk -v n="$name" '{ f=$2; sub(/^\*/, "", f); if (f == n || f ~ ("/" n "$")) { print $1; exit } }' "$file")
  if [ -z "$line" ] && [ "$(wc -w < "$file")" -eq 1 ]; then line=$(tr -d ' \n' < "$file"); fi
  if ! [[ "$line" =~ ^[0-9a-f]{64}$ ]]; then
    echo "fetch-kubernetes.sh: no sha256 for $name in $(basename "$file")" >&2; return 1
  fi
  echo "$line"
}

fetch() {
  local name=$1 url=$2 sum=$3 want got
  echo "fetch $url"
  curl -fsSL --retry 3 -o "$DL/$name.part" "$url"
  if [ "$sum" = - ]; then
    got=$(sha256sum "$DL/$name.part" | cut -d' ' -f1)
    if [ -z "$FLANNEL_SHA256" ]; then
      echo "fetch-kubernetes.sh: $url has no published checksum. Its sha256 is $got;" >&2
      echo "  review $DL/$name.part, then re-run with --flannel-sha256 $got" >&2
      exit 1
    fi
    want=$FLANNEL_SHA256
  else
    curl -fsSL --retry 3 -o "$DL/$name.sha256.txt" "$sum"
    want=$(expected_sum "$name" "$DL/$name.sha256.txt")
    got=$(sha256sum "$DL/$name.part" | cut -d' ' -f1)
  fi
  if [ "$want" != "$got" ]; then
    echo "fetch-kubernetes.sh: $name: sha256 $got does not match the published $want ($url)" >&2
    rm -f "$DL/$name.part"
    exit 1
  fi
  mv "$DL/$name.part" "$DL/$name"
  echo "  sha256 ok $got"
}

for entry in "${PLAN[@]}"; do
  read -r name url sum <<<"$entry"
  fetch "$name" "$url" "$sum"
done

R=$OUT/rootfs
mkdir -p "$R/usr/bin" "$R/usr/local/bin" "$R/usr/local/sbin" "$R/opt/cni/bin" "$R/etc/systemd/system/kubelet.service.d" "$OUT/manifests"
install -m 0755 "$DL/kubeadm" "$DL/kubelet" "$DL/kubectl" "$R/usr/bin/"
tar -xzf "$DL/$CONTAINERD_TGZ" -C "$R/usr/local" bin/containerd bin/containerd-shim-runc-v2 bin/ctr
install -m 0755 "$DL/runc.$ARCH" "$R/usr/local/sbin/runc"
tar -xzf "$DL/$CNI_TGZ" -C "$R/opt/cni/bin"
tar -xzf "$DL/$CRICTL_TGZ" -C "$R/usr/bin" crictl
tar -xzf "$DL/$HELM_TGZ" -C "$DL" "linux-$ARCH/helm" && install -m 0755 "$DL/linux-$ARCH/helm" "$R/usr/bin/helm"
install -m 0644 "$DL/kube-flannel.yml" "$OUT/manifests/kube-flannel.yml"

# containerd's and the kubelet's units, as every ferry node rootfs carries them.
# shellcheck source=lib/node-units.sh
. "$(dirname "$0")/lib/node-units.sh"
write_node_units "$R" /usr/local/bin/containerd /usr/bin/kubelet

cat > "$OUT/bundle.yaml" <<EOF
# Written by scripts/fetch-kubernetes.sh: Kubernetes $VERSION, linux/$ARCH, containerd $CONTAINERD_VERSION,
# runc $RUNC_VERSION, CNI plugins v$CNI_VERSION, crictl $CRICTL_VERSION, helm v$HELM_VERSION, flannel v$FLANNEL_VERSION.
apiVersion: ferry.dev/v1alpha1
kind: Bundle
metadata: {name: kubernetes-$ARCH, version: ${VERSION#v}}
spec:
  kubernetes: {version: $VERSION}
  platforms: [linux/$ARCH]
  rootfs: [{path: rootfs}]
  manifests: [{path: manifests}]
  # Applied on master0 once kubeadm is done: without a CNI no node becomes Ready.
  launch:
    - manifests: manifests/kube-flannel.yml
EOF
rm -rf "$DL"
echo "done: $OUT/bundle.yaml — build it with: ferry build $OUT/bundle.yaml -o installer --key vendor.key"
