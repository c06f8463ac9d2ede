#!/usr/bin/env bash
# The main job, on one fresh Debian 12 machine (as root):
#   1. installs what it needs and builds ferry;
#   2. builds the example installer (examples/demo/lab-bundle.yaml), then verifies and inspects it;
#   3. boots 3 lab hosts (scripts/testhosts: systemd, sshd, private disks, no route out);
#   4. runs `./installer run` onto them, which ends with `check`;
#   5. leaves the hosts up and says how to get in and how to tear down.
#
# STAND-INS: kubeadm, kubelet, kubectl and the API server in this demo are ferry's test stand-ins
# (tests/standins/), because those binaries cannot be obtained on machines without internet.
# Everything else is real: sshd, systemd, containerd, runc, the built-in registry, ferry's load
# balancer. For a real cluster, build the rootfs with scripts/fetch-kubernetes.sh on a connected
# machine and point spec.rootfs at it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/testhosts deps
scripts/testhosts rootfs
cargo build --release --locked
examples/demo/make-images.sh
rm -rf examples/demo/standins-rootfs
tests/standins/make-rootfs.sh examples/demo/standins-rootfs

out="$PWD/target/demo"
mkdir -p "$out"
ferry="$PWD/target/release/ferry"
[[ -f "$out/vendor.key" ]] || "$ferry" keygen -o "$out/vendor"
"$ferry" build examples/demo/lab-bundle.yaml -o "$out/installer" --key "$out/vendor.key"
echo
"$out/installer" verify --key "$out/vendor.pub"
echo
"$out/installer" inspect | head -20
echo

scripts/testhosts up 3
scripts/testhosts inventory > "$out/cluster.yaml"
echo "cluster file: $out/cluster.yaml"
cat "$out/cluster.yaml"
echo
"$out/installer" run -f "$out/cluster.yaml" --trusted-key "$out/vendor.pub"

cat <<MSG

The lab hosts are still up (kubeadm/kubelet/kubectl/apiserver on them are STAND-INS, see above).
  get in:        scripts/testhosts ssh 1 kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes
                 (or ssh -F /srv/ferry-lab/ssh_config node1)
  re-check:      $out/installer check --master 10.88.0.11 -f $out/cluster.yaml
  take it down:  $out/installer reset -f $out/cluster.yaml; scripts/testhosts down
MSG
