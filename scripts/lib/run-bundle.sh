# shellcheck shell=bash
# Sourced by the lab benchmarks. make_run_bundle DIR NAME PAD_MIB builds DIR/installer (signed by
# DIR/vendor.key, public key DIR/vendor.pub) from a bundle that `installer run` can carry through
# every phase without a Kubernetes rootfs: Debian's containerd and runc from this machine, a
# busybox image built offline with umoci, and PAD_MIB MiB of random bytes as a file every node
# receives. Needs FERRY (the release packer).
make_run_bundle() {
  local w=$1 name=$2 pad_mib=$3
  mkdir -p "$w/b/rootfs/usr/bin" "$w/b/rootfs/usr/sbin" "$w/b/rootfs/etc/systemd/system"
  cp /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/bin/ctr "$w/b/rootfs/usr/bin/"
  cp /usr/sbin/runc "$w/b/rootfs/usr/sbin/"
  cp /lib/systemd/system/containerd.service "$w/b/rootfs/etc/systemd/system/"
  umoci init --layout "$w/b/layout" >/dev/null
  umoci new --image "$w/b/layout:1" >/dev/null
  mkdir -p "$w/img/bin" && cp /bin/busybox "$w/img/bin/" && tar -C "$w/img" -cf "$w/layer.tar" .
  umoci raw add-layer --image "$w/b/layout:1" "$w/layer.tar" >/dev/null
  umoci config --image "$w/b/layout:1" --os linux --architecture amd64 --config.cmd /bin/sh >/dev/null
  head -c $((pad_mib << 20)) /dev/urandom > "$w/b/pad.bin"
  cat > "$w/b/bundle.yaml" <<YAML
apiVersion: ferry.dev/v1alpha1
kind: Bundle
metadata: {name: $name, version: 1.0.0}
spec:
  kubernetes: {version: v1.36.3}
  platforms: [linux/amd64]
  rootfs: [{path: rootfs}]
  files: [{path: pad.bin, dest: /opt/bench/pad.bin}]
  images:
    - {ref: docker.io/library/app:1, source: "oci:layout:1"}
YAML
  "$FERRY" keygen -o "$w/vendor" >/dev/null
  "$FERRY" build "$w/b/bundle.yaml" -o "$w/installer" --key "$w/vendor.key" --offline --allow-missing-images >/dev/null
  rm -f "$w/b/pad.bin"
}
