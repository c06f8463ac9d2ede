#!/usr/bin/env bash
# Builds the demo's container images offline, as an OCI layout in images/standins, from Debian's
# busybox-static. They are STAND-INS: the demo runs where no public image can be pulled, so every
# image the demo bundle names (its web app and the Kubernetes control plane) is the same small
# busybox image under the upstream name. A real bundle pulls the real images (spec.images,
# registryMirrors) or takes layouts made with `skopeo copy --all docker://… oci:…`.
set -euo pipefail
cd "$(dirname "$0")"
out=images/standins
# Every tag the demo bundles, the cluster test and the lab name (the control plane of v1.36.3).
tags=(busybox-1.36 kube-apiserver-v1.36.3 kube-controller-manager-v1.36.3 kube-scheduler-v1.36.3
      kube-proxy-v1.36.3 etcd-3.6.8-0 coredns-v1.14.2 pause-3.10.2)
# Done already, unless a tag is missing (a layout made for another version) or --force.
if [[ -f "$out/index.json" && "${1:-}" != "--force" ]]; then
  missing=0
  for tag in "${tags[@]}"; do grep -q "\"org.opencontainers.image.ref.name\":\"$tag\"" "$out/index.json" || missing=1; done
  [[ $missing == 0 ]] && exit 0
fi
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
for tag in "${tags[@]}"; do
  umoci tag --image "$work/layout:base" "$tag"
done
umoci rm --image "$work/layout:base"
mkdir -p images
rm -rf "$out.tmp" && cp -r "$work/layout" "$out.tmp" && rm -rf "$out" && mv "$out.tmp" "$out"
echo "demo images: $out"
