#!/usr/bin/env bash
# Installs everything ferry's build, demo and tests need on a fresh Debian 12 machine:
# Debian packages and the Rust musl target (the installer stub is a static musl executable).
# Idempotent; run as root.
set -euo pipefail

PACKAGES=(
  # building the static stub
  musl-tools file binutils pkg-config
  # building real Kubernetes from Go modules (scripts/build-kubernetes.sh): pause and runc are
  # static C/cgo builds, runc with seccomp; nftables is the node's and kube-proxy's firewall tool
  gcc libc6-dev libseccomp-dev nftables
  # tests and benchmarks of the file format
  openssh-client zstd tar coreutils python3 python3-yaml
  # images: an upstream registry, offline image building, a real containerd client
  docker-registry skopeo umoci containerd runc busybox-static apache2-utils openssl
  # the lab of real hosts (scripts/testhosts)
  systemd-container debootstrap iproute2 iputils-ping bridge-utils vde2 tini sshpass
  openssh-server iptables ca-certificates
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  echo "setup: adding the Rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi
if ! cargo clippy --version >/dev/null 2>&1; then
  echo "setup: adding the Rust component clippy (the tests lint with it)"
  rustup component add clippy
fi
