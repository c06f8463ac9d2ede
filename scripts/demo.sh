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

cat <<'MSG'
ferry demo. STAND-INS: kubeadm, kubelet, kubectl and the Kubernetes API server cannot be
downloaded on a machine without internet, so this demo's node rootfs carries ferry's clearly
named stand-ins for them (tests/standins/README.md): they take the same commands and configs
and produce the same files and outputs. Everything else is real: sshd, systemd, containerd,
runc, the built-in registry, ferry's load balancer. For a real cluster, run
scripts/fetch-kubernetes.sh VERSION ARCH OUTDIR on a connected machine and build from its
bundle.yaml.

MSG

scripts/setup.sh
scripts/testhosts deps
scripts/testhosts rootfs
cargo build --release --locked
examples/demo/make-images.sh
rm -rf examples/demo/standins-rootfs
tests/standins/make-rootfs.sh examples/demo/standins-rootfs v1.36.3

out="$PWD/target/demo"
mkdir -p "$out"
ferry="$PWD/target/release/ferry"
[[ -f "$out/vendor.key" ]] || "$ferry" keygen -o "$out/vendor"
"$ferry" build examples/demo/lab-bundle.yaml -o "$out/installer" --key "$out/vendor.key"
echo
"$out/installer" verify --key "$out/vendor.pub"
echo
# Not `| head`: inspect would be cut off mid-write, and pipefail would end the demo here.
"$out/installer" inspect | sed -n 1,25p
echo

# One lab per machine: a test run using it holds the session lock; wait for it, then hold the
# lock ourselves until the run is done (no test can take the lab down under the demo). The lab's
# own processes must not inherit the lock (9>&-), or it would outlive this script.
lock=/run/lock/ferry-lab.session
mkdir -p "${lock%/*}"
exec 9>>"$lock"
if ! flock -n 9; then
  echo "waiting for the test run that is using the lab to finish ($lock)…"
  flock 9
fi
export FERRY_LAB_SESSION_HELD=1
scripts/testhosts up 3 9>&-
scripts/testhosts inventory > "$out/cluster.yaml"
echo "cluster file: $out/cluster.yaml"
cat "$out/cluster.yaml"
echo
"$out/installer" run -f "$out/cluster.yaml" --trusted-key "$out/vendor.pub" 9>&-
exec 9>&-
unset FERRY_LAB_SESSION_HELD

cat <<MSG

The lab hosts are still up (kubeadm/kubelet/kubectl/apiserver on them are STAND-INS, see above).
  get in:        scripts/testhosts ssh 1          (or: ssh -F /srv/ferry-lab/ssh_config 10.88.0.11)
  look:          scripts/testhosts ssh 1 kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json
                 (the stand-in kubectl answers only -o json)
  re-check:      $out/installer check --master 10.88.0.11 -f $out/cluster.yaml
  take it down:  $out/installer reset -f $out/cluster.yaml; scripts/testhosts down
MSG
