#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what it needs, builds real
# Kubernetes from Go modules (cached), checks that dependencies point one way
# (scripts/check-architecture.sh), lints every crate (clippy, warnings are errors), builds ferry in release mode, runs unit and integration
# tests (real processes, registries, containerd, lab hosts and a real kubelet), then fuzzes the
# payload parser for a bounded time.
#
#   FERRY_TEST_K8S_VERSIONS  the Kubernetes versions the real-Kubernetes tests use
#                            (default "v1.36.3 v1.37.2"; the newest also runs on the lab)
#   FERRY_K8S_CACHE          build-kubernetes.sh's cache (default /var/cache/ferry/kubernetes)
#   FERRY_GO_TOOLS_CACHE     build-go-tools.sh's cache (default /var/cache/ferry/go-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

scripts/setup.sh
if [[ -x scripts/testhosts ]]; then
  scripts/testhosts deps
  scripts/testhosts rootfs
fi

# Real Kubernetes for the tests that need it: the first run builds it (tens of minutes on two
# cores), later runs copy it from the cache in seconds.
real=()
for v in ${FERRY_TEST_K8S_VERSIONS:-v1.36.3 v1.37.2}; do
  scripts/build-kubernetes.sh "$v" "target/real-k8s/$v"
  real+=("$PWD/target/real-k8s/$v")
done
FERRY_REAL_K8S=$(IFS=:; echo "${real[*]}")
export FERRY_REAL_K8S
# A second registry implementation for the push/pull tests (distribution v3, from Go modules,
# cached like Kubernetes).
scripts/build-go-tools.sh target/go-tools registry
export FERRY_REGISTRY_V3=$PWD/target/go-tools/registry
t_k8s=$(date +%s)

tests/fixtures/standin-bundle/make-images.sh
scripts/check-architecture.sh
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo build --release --locked
cargo test --release --locked --workspace
scripts/fuzz.sh "${FERRY_FUZZ_SECONDS:-60}"
echo "test.sh: all tests passed in $(( $(date +%s) - t0 )) s (real Kubernetes ready after $(( t_k8s - t0 )) s)"
