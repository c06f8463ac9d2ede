# shellcheck shell=bash
# Container images assembled offline into one OCI image layout with umoci, for
# scripts/build-kubernetes.sh. Each image is a single layer made from a directory tree, with
# every timestamp at the epoch so that the same files give the same digests on every machine.

# oci_layout_init LAYOUT: an empty OCI image layout.
oci_layout_init() {
  rm -rf "$1"
  umoci init --layout "$1"
}

# oci_image LAYOUT TAG ARCH TREE [ENTRYPOINT...]
# Adds an image tagged TAG to LAYOUT whose only layer is TREE, for linux/ARCH. With ENTRYPOINT,
# it becomes the image's entrypoint; PATH covers /usr/local/bin, where kubeadm's static pods
# expect the control-plane programs (their manifests name bare commands).
oci_image() {
  local layout=$1 tag=$2 arch=$3 tree=$4; shift 4
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-oci.XXXXXX")
  umoci new --image "$layout:$tag"
  umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
  cp -a "$tree/." "$work/bundle/rootfs/"
  find "$work/bundle/rootfs" -exec touch -h -d @0 {} +
  umoci repack --history.created 1970-01-01T00:00:00Z --image "$layout:$tag" "$work/bundle"
  local cfg=(--no-history --image "$layout:$tag" --created 1970-01-01T00:00:00Z
             --os linux --architecture "$arch"
             --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  if [ $# -gt 0 ]; then
    local e; for e in "$@"; do cfg+=(--config.entrypoint "$e"); done
  fi
  umoci config "${cfg[@]}"
  rm -rf "$work"
}

# oci_layout_gc LAYOUT: drop blobs no tag refers to any more (umoci keeps superseded ones).
oci_layout_gc() {
  umoci gc --layout "$1"
}
