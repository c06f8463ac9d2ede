#!/usr/bin/env bash
# Builds the demo's container images offline, as an OCI layout in images/standins, from Debian's
# busybox-static. They are STAND-INS: the demo runs where no public image can be pulled, so every
# image the demo bundle names (its web app and the Kubernetes control plane) is the same small
# busybox image under the upstream name. A real bundle pulls the real images (spec.images,
# registryMirrors) or takes layouts made with `skopeo copy --all docker://… oci:…`.
set -euo pipefail
cd "$(dirname "$0")"
out=images/standins
[[ -f "$out/index.json" && "${1:-}" != "--force" ]] && exit 0
command -v umoci >/dev/null && [[ -x /bin/busybox ]] || {
  echo "make-images.sh needs umoci and busybox-static (scripts/setup.sh installs them)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umoci init --layout "$work/layout"
umoci new --image "$work/layout:base"
umoci unpack --rootless --image "$work/layout:base" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for applet in sh echo cat ls sleep httpd hostname; do ln -sf busybox "$work/bundle/rootfs/bin/$applet"; done
# Reproducible: the same busybox gives the same layer digest on every machine.
find "$work/bundle/rootfs" -exec touch -h -d @0 {} +
umoci repack --history.created 1970-01-01T00:00:00Z --image "$work/layout:base" "$work/bundle"
umoci config --no-history --image "$work/layout:base" --config.cmd /bin/sh --config.env PATH=/bin --created 1970-01-01T00:00:00Z
for tag in busybox-1.36 kube-apiserver-v1.33.4 kube-controller-manager-v1.33.4 kube-scheduler-v1.33.4 \
           kube-proxy-v1.33.4 etcd-3.5.21-0 coredns-v1.12.0 pause-3.10; do
  umoci tag --image "$work/layout:base" "$tag"
done
umoci rm --image "$work/layout:base"
mkdir -p images
rm -rf "$out.tmp" && cp -r "$work/layout" "$out.tmp" && rm -rf "$out" && mv "$out.tmp" "$out"
echo "demo images: $out"
