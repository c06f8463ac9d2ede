#!/usr/bin/env bash
# Builds the app image offline, as the OCI layout ./images: docker.io/library/busybox:1.36 made
# from Debian's busybox-static (no public image can be pulled where ferry is built and tested).
# It is real busybox with the applets the demo and the tests use (httpd, wget, nslookup, ping,
# timeout; not `wget -T`, which segfaults in Debian's busybox-static 1.35).
set -euo pipefail
cd "$(dirname "$0")"
out=images
applets=(sh echo cat ls sleep httpd hostname mkdir wget nslookup ping ip timeout)
stamp="busybox-1.36 ${applets[*]} $(sha256sum /bin/busybox 2>/dev/null | cut -c1-16)"
[[ -f "$out/index.json" && "$(cat "$out/.made-from" 2>/dev/null)" == "$stamp" && "${1:-}" != "--force" ]] && exit 0
command -v umoci >/dev/null && [[ -x /bin/busybox ]] || {
  echo "make-images.sh needs umoci and busybox-static (scripts/setup.sh installs them)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umoci init --layout "$work/layout"
umoci new --image "$work/layout:base"
umoci unpack --rootless --image "$work/layout:base" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for applet in "${applets[@]}"; do ln -sf busybox "$work/bundle/rootfs/bin/$applet"; done
# Reproducible: the same busybox gives the same layer digest on every machine.
find "$work/bundle/rootfs" -exec touch -h -d @0 {} +
umoci repack --history.created 1970-01-01T00:00:00Z --image "$work/layout:base" "$work/bundle"
umoci config --no-history --image "$work/layout:base" --config.cmd /bin/sh --config.env PATH=/bin --created 1970-01-01T00:00:00Z
umoci tag --image "$work/layout:base" busybox-1.36
umoci rm --image "$work/layout:base"
echo "$stamp" > "$work/layout/.made-from"
rm -rf "$out.tmp" && cp -r "$work/layout" "$out.tmp" && rm -rf "$out" && mv "$out.tmp" "$out"
echo "app image: examples/cluster/$out"
