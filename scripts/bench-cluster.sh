#!/usr/bin/env bash
# bench-cluster.sh: real Kubernetes (examples/cluster/bundle.yaml, built from Go modules by
# scripts/build-kubernetes.sh) installed on the lab, timed from `installer run` to a cluster that
# passes `check`, split by phase:
#   1 master + 2 workers (goal ≤ 180 s), then `join --workers` of a 4th host onto that cluster
#   (goal ≤ 60 s), then `reset` and 3 masters + 1 worker on the same hosts (goal ≤ 300 s);
#   and each node's peak memory during each of them.
#
# Phases come from the run's JSON summary (`seconds`: preflight, distribute, prepare, registry,
# kubeadm = node-local LB + kubeadm init/join, launch = the bundle's launch steps, total);
# `settle` is the wait for `check` to pass after that (wall time minus the summary's total).
#
# Memory: each lab host is an nspawn machine in its own memory cgroup (cgroup v1,
# /sys/fs/cgroup/memory/ferrylab/nodeI), reset before each measurement. `peak_mib` is the
# cgroup's max_usage_in_bytes: everything the host's processes charged, page cache and tmpfs
# included (so the installer file received and the images unpacked count). `peak_working_set_mib`
# is the highest usage minus inactive file cache, sampled every second (the kubelet's
# "working set": what could not be dropped under pressure).
#
# Prints `name: value` lines. Needs root, the lab (scripts/testhosts) and a release build. Takes
# the lab's session lock, waiting its turn, and takes the lab down at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FERRY=$ROOT/target/release/ferry
TH=$ROOT/scripts/testhosts
K8S=${FERRY_BENCH_K8S:-v1.37.2}
W=$(mktemp -d /var/tmp/ferry-bench-cluster.XXXXXX)
SAMPLER=
cleanup() {
  local rc=$?
  [ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
  "$TH" down >/dev/null 2>&1 || true
  if [ "$rc" = 0 ]; then rm -rf "$W"; else echo "bench-cluster: failed ($rc); its files are in $W" >&2; rm -f "$W/installer"; fi
}
trap cleanup EXIT
[ -x "$FERRY" ] || (cd "$ROOT" && cargo build --release --locked >&2)

# The installer: the real platform bundle. Every image must be in it (no missing images).
unset FERRY_ALLOW_MISSING_IMAGES
"$ROOT/scripts/build-kubernetes.sh" "$K8S" "$ROOT/examples/cluster/kubernetes" >&2
"$ROOT/examples/cluster/make-images.sh" >&2
"$FERRY" keygen -o "$W/vendor" >/dev/null
"$FERRY" build "$ROOT/examples/cluster/bundle.yaml" -o "$W/installer" --key "$W/vendor.key" >&2
I=$W/installer
echo "cluster.kubernetes: $K8S"
echo "cluster.installer_mib: $(( $(stat -c %s "$I") >> 20 ))"

# One lab per machine: hold the session lock the lab tests use (tests/src/lab.rs) while we use it,
# and tell testhosts we hold it. The lab's own processes must not inherit the lock (8>&-).
mkdir -p /run/lock
exec 8>>/run/lock/ferry-lab.session
if ! flock -n 8; then
  echo "bench-cluster: the lab is in use; waiting for it" >&2
  flock 8
fi
export FERRY_LAB_SESSION_HELD=1
"$TH" down >/dev/null 8>&- || true
"$TH" up 4 >/dev/null 8>&-
"$TH" inventory --nodes 3 > "$W/c1m2w.yaml"
IP=(- 10.88.0.11 10.88.0.12 10.88.0.13 10.88.0.14)
# 3 masters (each a registry replica) + 1 worker, in the same file shape.
sed -e '/^    - {ips:/d' -e 's/^metadata: {name: lab}/metadata: {name: ha}/' \
    -e "s/^  hosts:\$/  hosts:\n    - {ips: [${IP[1]}, ${IP[2]}, ${IP[3]}], roles: [master]}\n    - {ips: [${IP[4]}], roles: [worker]}/" \
    "$W/c1m2w.yaml" > "$W/c3m1w.yaml"
grep -q "roles: \[master\]" "$W/c3m1w.yaml" || { echo "bench-cluster: could not write the HA cluster file" >&2; exit 1; }

CG=/sys/fs/cgroup/memory/ferrylab
now() { date +%s.%N; }
sub() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.1f}')" "$1" "$2"; }
summary() { grep '"event":"summary"' "$1" | tail -1; }
sec() { python3 -c "import json,sys; print(f\"{json.loads(sys.stdin.read())['seconds'][sys.argv[1]]:.1f}\")" "$1"; }

# Peak memory: reset each host's max, sample the working set every second until stopped.
mem_start() {
  local h
  for h in 1 2 3 4; do echo 0 > "$CG/node$h/memory.max_usage_in_bytes" 2>/dev/null || true; done
  python3 - "$CG" "$W/ws.json" 8>&- <<'PY' &
import json, os, signal, sys, time
cg, out = sys.argv[1], sys.argv[2]
peak = {}
def dump(*_):
    with open(out, "w") as f: json.dump(peak, f)
    sys.exit(0)
signal.signal(signal.SIGTERM, dump)
while True:
    for h in ("node1", "node2", "node3", "node4"):
        try:
            usage = int(open(f"{cg}/{h}/memory.usage_in_bytes").read())
            stat = dict(l.split() for l in open(f"{cg}/{h}/memory.stat"))
            ws = usage - int(stat.get("total_inactive_file", 0))
            peak[h] = max(peak.get(h, 0), ws)
        except (OSError, ValueError):
            pass
    time.sleep(1)
PY
  SAMPLER=$!
}
# mem_stop NAME HOST…: prints each host's peak cgroup usage and peak working set.
mem_stop() {
  local name=$1 h; shift
  kill -TERM "$SAMPLER"; wait "$SAMPLER" || true; SAMPLER=
  for h in "$@"; do
    echo "$name.node$h.peak_mib: $(( $(cat "$CG/node$h/memory.max_usage_in_bytes") >> 20 ))"
    echo "$name.node$h.peak_working_set_mib: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], 0) >> 20)" "$W/ws.json" "node$h")"
  done
}

# timed NAME GOAL_S HOSTS CMD…: runs an installer command with --json (it exits 0 only once the
# cluster passes `check`), prints wall time against the goal, each phase from its summary and the settle time, then the hosts' peak memory.
timed() {
  local name=$1 goal=$2 hosts=$3; shift 3
  local out="$W/$name.json" t0 t1 s wall total p
  mem_start
  t0=$(now)
  if ! "$I" --no-progress "$@" --json --trusted-key "$W/vendor.pub" > "$out" 2> "$W/$name.err" 8>&-; then
    echo "bench-cluster: $name failed:" >&2; tail -n 30 "$out" "$W/$name.err" >&2; exit 1
  fi
  t1=$(now)
  wall=$(sub "$t1" "$t0")
  s=$(summary "$out")
  total=$(echo "$s" | sec total)
  echo "$name.total_s: $wall (goal ≤ $goal)"
  for p in preflight distribute prepare registry kubeadm launch; do echo "$name.${p}_s: $(echo "$s" | sec "$p")"; done
  echo "$name.settle_s: $(sub "$wall" "$total")"
  # shellcheck disable=SC2086
  mem_stop "$name" $hosts
}

timed cluster.1m2w 180 "1 2 3" run -f "$W/c1m2w.yaml"
timed cluster.join_worker 60 "1 2 3 4" join --workers "${IP[4]}"
t0=$(now)
"$I" --no-progress reset --json > "$W/reset.json" 2>&1 8>&- || { tail -n 30 "$W/reset.json" >&2; exit 1; }
echo "cluster.reset_4_hosts_s: $(sub "$(now)" "$t0")"
timed cluster.3m1w 300 "1 2 3 4" run -f "$W/c3m1w.yaml"
"$I" --no-progress reset -f "$W/c3m1w.yaml" > "$W/reset2.json" 2>&1 8>&- || tail -n 30 "$W/reset2.json" >&2
