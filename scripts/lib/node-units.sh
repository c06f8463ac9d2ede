# shellcheck shell=sh
# write_node_units ROOT CONTAINERD_BIN KUBELET_BIN
#
# Writes the systemd units every ferry node rootfs carries, under ROOT/etc/systemd/system:
#   containerd.service    containerd's own unit, pointed at CONTAINERD_BIN
#   kubelet.service       the unit of the official kubelet packages, pointed at KUBELET_BIN
#   kubelet.service.d/10-kubeadm.conf   kubeadm's drop-in (flags from kubeadm-flags.env)
# Shared by scripts/build-kubernetes.sh, scripts/fetch-kubernetes.sh and the test rootfs, so the
# path that starts containerd and the kubelet is the same whichever way a rootfs is made.
# Sourced by sh and bash alike: POSIX only.
write_node_units() {
  _root=$1 _containerd=$2 _kubelet=$3
  mkdir -p "$_root/etc/systemd/system/kubelet.service.d"
  cat > "$_root/etc/systemd/system/containerd.service" <<UNIT
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target dbus.service

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=$_containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
UNIT
  cat > "$_root/etc/systemd/system/kubelet.service" <<UNIT
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=$_kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
  # The variables are kubelet's, expanded by systemd: keep them literal.
  cat > "$_root/etc/systemd/system/kubelet.service.d/10-kubeadm.conf" <<UNIT
# kubeadm's drop-in: the kubelet's flags come from the files kubeadm writes.
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=$_kubelet \$KUBELET_KUBECONFIG_ARGS \$KUBELET_CONFIG_ARGS \$KUBELET_KUBEADM_ARGS \$KUBELET_EXTRA_ARGS
UNIT
  unset _root _containerd _kubelet
}
