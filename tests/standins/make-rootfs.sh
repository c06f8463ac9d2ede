#!/bin/sh
# make-rootfs.sh OUTDIR [KUBERNETES_VERSION]
#
# Assembles the TEST rootfs for lab runs: the ferry STAND-INS for kubeadm, kubelet and kubectl
# (this directory; not Kubernetes, see README.md) plus a real container runtime copied from this
# Debian build machine (containerd, containerd-shim-runc-v2, ctr, runc — `apt-get install
# containerd runc busybox-static`), containerd's unit, and the kubelet unit with kubeadm's
# drop-in exactly as the official packages ship them (so the production path that starts the
# kubelet is the real one). A real rootfs comes from scripts/fetch-kubernetes.sh instead.
#
# Layout written under OUTDIR:
#   usr/bin/{kubeadm,kubelet,kubectl}               stand-ins
#   usr/lib/ferry-standin/{lib.sh,apiserver.cgi,busybox,version,pki/,README.md}
#   usr/bin/{containerd,containerd-shim-runc-v2,ctr}, usr/sbin/runc   (Debian's, as run.rs does)
#   etc/systemd/system/{containerd,kubelet}.service, kubelet.service.d/10-kubeadm.conf
set -eu
OUT=${1:?usage: make-rootfs.sh OUTDIR [KUBERNETES_VERSION]}
VERSION=${2:-v1.33.4}
HERE=$(cd "$(dirname "$0")" && pwd)

need() { [ -e "$1" ] || { echo "make-rootfs.sh: $1 is missing on this machine ($2)" >&2; exit 1; }; }
need /usr/bin/containerd "apt-get install containerd"
need /usr/sbin/runc "apt-get install runc"
need /bin/busybox "apt-get install busybox-static"

mkdir -p "$OUT/usr/bin" "$OUT/usr/sbin" "$OUT/usr/lib/ferry-standin/pki" "$OUT/etc/systemd/system/kubelet.service.d"
for t in kubeadm kubelet kubectl; do install -m 0755 "$HERE/$t" "$OUT/usr/bin/$t"; done
install -m 0644 "$HERE/lib.sh" "$HERE/README.md" "$OUT/usr/lib/ferry-standin/"
install -m 0755 "$HERE/apiserver.cgi" "$OUT/usr/lib/ferry-standin/apiserver.cgi"
install -m 0755 /bin/busybox "$OUT/usr/lib/ferry-standin/busybox"
install -m 0644 "$HERE/pki/ca.crt" "$HERE/pki/admin.crt" "$OUT/usr/lib/ferry-standin/pki/"
install -m 0600 "$HERE/pki/ca.key" "$HERE/pki/admin.key" "$OUT/usr/lib/ferry-standin/pki/"
echo "$VERSION" > "$OUT/usr/lib/ferry-standin/version"

for f in /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/bin/ctr; do install -m 0755 "$f" "$OUT$f"; done
install -m 0755 /usr/sbin/runc "$OUT/usr/sbin/runc"

# The kubelet unit and kubeadm's drop-in, as every ferry node rootfs carries them (so the
# production path that starts the kubelet is the real one).
. "$HERE/../../scripts/lib/node-units.sh"
write_node_units "$OUT" /usr/bin/containerd /usr/bin/kubelet
echo "make-rootfs.sh: test rootfs with Kubernetes STAND-INS ($VERSION) in $OUT"
