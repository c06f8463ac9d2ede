#!/usr/bin/env bash
# The main job, on one fresh Debian 12 machine (as root): a real Kubernetes cluster, installed
# from one signed file onto three hosts over SSH.
#   1. installs what it needs and builds ferry;
#   2. builds Kubernetes v1.37.2 from Go modules (scripts/build-kubernetes.sh: kubeadm, kubelet,
#      kubectl, the control-plane images, etcd, CoreDNS, flannel, containerd, runc, helm; the
#      first time takes tens of minutes on two cores, then seconds from its cache);
#   3. builds the platform installer (examples/cluster/bundle.yaml: that Kubernetes, a web app
#      with its Service, a Helm chart and a site file), then verifies and inspects it;
#   4. boots 3 lab hosts (scripts/testhosts: systemd, sshd, private disks, no route out);
#   5. runs `./installer run` onto them (1 master + 2 workers), which waits for the cluster to
#      pass `check` and prints its table;
#   6. looks at the cluster with the real kubectl, fetches the web app through its Service,
#      and says how to get in and how to tear down (the hosts stay up).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S=v1.37.2

scripts/setup.sh
scripts/testhosts deps
scripts/testhosts rootfs
cargo build --release --locked

echo
echo "== Kubernetes $K8S, built from Go modules (cached under ${FERRY_K8S_CACHE:-/var/cache/ferry/kubernetes})"
# A real directory, not a link: ferry build refuses symlinks that leave the bundle's directory.
scripts/build-kubernetes.sh "$K8S" examples/cluster/kubernetes
examples/cluster/make-images.sh

out="$PWD/target/demo"
mkdir -p "$out"
ferry="$PWD/target/release/ferry"
[[ -f "$out/vendor.key" ]] || "$ferry" keygen -o "$out/vendor"
echo
echo "== the installer"
"$ferry" build examples/cluster/bundle.yaml -o "$out/installer" --key "$out/vendor.key"
echo
"$out/installer" verify --key "$out/vendor.pub"
echo
# Not `| head`: inspect would be cut off mid-write, and pipefail would end the demo here.
"$out/installer" inspect | sed -n 1,30p
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
echo "== three lab hosts"
scripts/testhosts up 3 9>&-
scripts/testhosts inventory > "$out/cluster.yaml"
echo "cluster file: $out/cluster.yaml"
cat "$out/cluster.yaml"
echo
echo "== installer run (1 master + 2 workers; it waits for check to pass)"
"$out/installer" run -f "$out/cluster.yaml" --trusted-key "$out/vendor.pub" 9>&-

kubectl=(scripts/testhosts ssh 1 kubectl --kubeconfig /etc/kubernetes/admin.conf)
echo
echo "== the cluster, as the real kubectl on the master sees it"
"${kubectl[@]}" get nodes -o wide 9>&-
echo
"${kubectl[@]}" -n demo get pods,svc -o wide 9>&-
echo
# Through the Services by name: CoreDNS, kube-proxy and flannel between the nodes.
echo "web app (http://web.demo.svc.cluster.local, from a web pod):"
"${kubectl[@]}" -n demo exec deploy/web -- wget -qO- http://web.demo.svc.cluster.local 9>&-
echo "Helm chart (http://hello.hello.svc.cluster.local, from a web pod):"
"${kubectl[@]}" -n demo exec deploy/web -- wget -qO- http://hello.hello.svc.cluster.local 9>&-
exec 9>&-
unset FERRY_LAB_SESSION_HELD

cat <<MSG

A real Kubernetes $K8S cluster is up on the lab hosts (node1 = 10.88.0.11 master, node2 and
node3 workers). They have no route out: everything came from $out/installer.
  get in:        scripts/testhosts ssh 1          (or: ssh -F /srv/ferry-lab/ssh_config 10.88.0.11)
  nodes:         scripts/testhosts ssh 1 kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes
  web app:       scripts/testhosts ssh 1 kubectl --kubeconfig /etc/kubernetes/admin.conf -n demo get pods,svc -o wide
                 scripts/testhosts ssh 1 kubectl --kubeconfig /etc/kubernetes/admin.conf -n demo exec deploy/web -- wget -qO- http://web.demo.svc.cluster.local
  re-check:      $out/installer check -f $out/cluster.yaml
  take it down:  $out/installer reset -f $out/cluster.yaml; scripts/testhosts down
MSG
