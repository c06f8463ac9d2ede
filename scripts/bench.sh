#!/usr/bin/env bash
# Benchmarks, each a ratio measured side by side in one run against the baseline its issue names.
# Prints one `name: value` line per figure. Absolute times on a shared VM are noise; ratios are not.
#
#   scripts/bench.sh [format|registry|run|relay|cluster|upgrade|publish|delta|all]...   (default: all; `relay` takes ~25 min)
#
#   format    the file format: build/verify/extract against tar+zstd and sha256sum
#   registry  the built-in registry (HTTPS with the pull credential) against docker-registry
#   run       delivery only (preflight → distribute → prepare → registry) on 3 lab hosts,
#             against scp; its bundle carries no Kubernetes, so `run` stops before kubeadm
#   relay     relays: delivery to 1, 4 and 8 lab hosts on 100 Mbit/s links, relay vs scp
#   cluster   real Kubernetes (examples/cluster, built from Go modules) from `run` to a passing
#             `check` on the lab, per phase: 1 master + 2 workers, `join` of a worker, 3 masters
#             + 1 worker, and each node's peak memory, against the issue's goals (~5 min)
#   upgrade   `installer upgrade` of real Kubernetes (v1.36.3 → v1.37.2) on 1 master + 2 workers:
#             total, per phase and per node (~8 min)
#   publish   `ferry push` / `ferry pull` of a ~2 GiB installer against `oras` on docker-registry,
#             and a second release that changes one image of eight
#   delta     a release that changes one image of twenty as a differential installer: its size
#             against the changed blobs + 1%, and `complete` on site against copying the file
#
# Scratch data goes to $FERRY_BENCH_DIR (default /var/tmp/ferry-bench), removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
dir="${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}"
measure() { python3 "$root/scripts/lib/measure.py" "$@"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }

cargo build --release --locked -q
# Benchmarks never reach out: image sources are local, and anything else is recorded as missing.
export FERRY_OFFLINE=1 FERRY_ALLOW_MISSING_IMAGES=1
ferry="$root/target/release/ferry"

bench_format() {
  # About 1 GiB incompressible (like image layers, stored raw) and about 1 GiB of
  # compressible binaries, in one bundle.
  local b="$dir/format"
  rm -rf "$b"; mkdir -p "$b/bundle/rootfs/layers" "$b/bundle/rootfs/bin"
  for i in $(seq 1 8); do head -c $((128 << 20)) /dev/urandom > "$b/bundle/rootfs/layers/layer$i.bin"; done
  local total=0 n=0
  while ((total < (1 << 30))); do
    for f in /usr/bin/* /usr/lib/x86_64-linux-gnu/*.so*; do
      [[ -f "$f" && ! -L "$f" ]] || continue
      n=$((n + 1)); cp "$f" "$b/bundle/rootfs/bin/$n-$(basename "$f")"; chmod 0755 "$b/bundle/rootfs/bin/$n-$(basename "$f")"
      total=$((total + $(stat -c %s "$f")))
      ((total < (1 << 30))) || break
    done
  done
  chmod -R u-s,g-s "$b/bundle/rootfs"
  cat > "$b/bundle/bundle.yaml" <<'YAML'
apiVersion: ferry.dev/v1alpha1
kind: Bundle
metadata: {name: bench, version: 1.0.0}
spec:
  kubernetes: {version: v1.36.3}
  rootfs: [{path: rootfs}]
YAML
  echo "format.input_bytes: $(du -sb "$b/bundle" | cut -f1)"
  "$ferry" keygen -o "$b/key" >/dev/null
  sync; cat "$b"/bundle/rootfs/*/* > /dev/null

  read -r t_build _ < <(measure "$ferry" build "$b/bundle/bundle.yaml" -o "$b/installer" --key "$b/key.key")
  read -r t_tar _ < <(measure sh -c "tar -C '$b/bundle' -cf - . | zstd -q -T0 -3 -o '$b/bundle.tar.zst'")
  echo "format.build_seconds: $t_build"
  echo "format.tar_zstd_seconds: $t_tar"
  echo "format.build_vs_tar_zstd: $(ratio "$t_build" "$t_tar")"
  echo "format.installer_bytes: $(stat -c %s "$b/installer")"
  echo "format.tar_zstd_bytes: $(stat -c %s "$b/bundle.tar.zst")"

  cat "$b/installer" > /dev/null
  read -r t_verify rss_verify < <(measure "$b/installer" verify --key "$b/key.pub")
  read -r t_sha _ < <(measure sha256sum "$b/installer")
  echo "format.verify_seconds: $t_verify"
  echo "format.sha256sum_seconds: $t_sha"
  echo "format.verify_vs_sha256sum: $(ratio "$t_verify" "$t_sha")"

  rm -rf "$b/x1" "$b/x2"; mkdir -p "$b/x1" "$b/x2"
  read -r t_extract rss_extract < <(measure "$b/installer" extract --to "$b/x1")
  read -r t_untar _ < <(measure sh -c "zstd -q -dc '$b/bundle.tar.zst' | tar -x -C '$b/x2'")
  echo "format.extract_seconds: $t_extract"
  echo "format.untar_zstd_seconds: $t_untar"
  echo "format.extract_vs_untar_zstd: $(ratio "$t_extract" "$t_untar")"
  echo "format.verify_peak_rss_anon_mib: $((rss_verify / 1024))"
  echo "format.extract_peak_rss_anon_mib: $((rss_extract / 1024))"
  rm -rf "$b"
}

for what in "${@:-all}"; do
case "$what" in
  format) bench_format ;;
  registry) scripts/bench-registry.sh ;;
  # `installer run` on 3 lab hosts, delivery only (takes the lab's session lock, waiting
  # its turn).
  run) scripts/bench-run.sh ;;
  # Delivery to 1, 4 and 8 lab hosts on 100 Mbit/s links, relay vs parallel scp.
  relay) scripts/bench-relay.sh ;;
  # Real Kubernetes on 3-4 lab hosts, from `run` to a passing `check` (session lock as above).
  cluster) scripts/bench-cluster.sh ;;
  # `installer upgrade` of real Kubernetes, 1 master + 2 workers, per phase and per node.
  upgrade) scripts/bench-upgrade.sh ;;
  publish) scripts/bench-publish.sh ;;
  delta) scripts/bench-delta.sh ;;
  all)
    bench_format
    [[ ! -x scripts/bench-registry.sh ]] || scripts/bench-registry.sh
    [[ ! -x scripts/bench-run.sh ]] || scripts/bench-run.sh
    [[ ! -x scripts/bench-relay.sh ]] || scripts/bench-relay.sh
    [[ ! -x scripts/bench-cluster.sh ]] || scripts/bench-cluster.sh
    [[ ! -x scripts/bench-upgrade.sh ]] || scripts/bench-upgrade.sh
    [[ ! -x scripts/bench-publish.sh ]] || scripts/bench-publish.sh
    [[ ! -x scripts/bench-delta.sh ]] || scripts/bench-delta.sh
    ;;
  *) echo "usage: scripts/bench.sh [format|registry|run|relay|cluster|upgrade|publish|delta|all]..." >&2; exit 2 ;;
esac
done
