#!/usr/bin/env bash
# bench-run.sh: `installer run` on 3 lab hosts with a ~500 MB installer, split by phase; a
# re-run after success; and the same distribution done with scp for comparison.
# DELIVERY ONLY: the bundle carries no Kubernetes (no kubeadm in its rootfs), so `run` ends after
# the registry phase, before kubeadm. Real Kubernetes from `run` to `check` is bench-cluster.sh.
# Prints `name: value` lines. Needs root, the lab (scripts/testhosts) and a release build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FERRY=$ROOT/target/release/ferry
TH=$ROOT/scripts/testhosts
W=$(mktemp -d /var/tmp/ferry-bench-run.XXXXXX)
trap '"$TH" down >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
[ -x "$FERRY" ] || (cd "$ROOT" && cargo build --release >&2)

# Bundle: Debian's containerd/runc, a busybox image, and ~480 MB of incompressible files.
. "$ROOT/scripts/lib/run-bundle.sh"
make_run_bundle "$W" bench-run 480
echo "installer_mb: $(( $(stat -c %s "$W/installer") >> 20 ))"

# One lab per machine: take the session lock the lab tests use (tests/src/lab.rs), waiting our
# turn, and tell testhosts we hold it.
mkdir -p /run/lock
exec 8>>/run/lock/ferry-lab.session
if ! flock -n 8; then
  echo "bench-run: the lab is in use; waiting for it" >&2
  flock 8
fi
export FERRY_LAB_SESSION_HELD=1
"$TH" up 3 >/dev/null
"$TH" inventory > "$W/cluster.yaml"
LAB=${FERRY_LAB_DIR:-/srv/ferry-lab}

summary() { grep '"event":"summary"' "$1" | tail -1; }
sub() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.2f}')" "$1" "$2"; }
field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(eval('d'+sys.argv[1]))" "$1"; }

# The same distribution with scp: the whole installer to each host, in parallel. Timed before
# and after ferry's run and averaged, since the load on a shared machine drifts.
scp_all() {
  local t0 t1
  t0=$(date +%s.%N)
  for i in 1 2 3; do scp -q -F "$LAB/ssh_config" "$W/installer" "10.88.0.1$i:/var/tmp/installer.scp" & done
  wait
  t1=$(date +%s.%N)
  for i in 1 2 3; do "$TH" ssh "$i" rm -f /var/tmp/installer.scp >/dev/null 2>&1 || true; done
  sub "$t1" "$t0"
}
scp1_s=$(scp_all)

t0=$(date +%s.%N)
"$W/installer" --no-progress run --json -f "$W/cluster.yaml" --trusted-key "$W/vendor.pub" > "$W/run1.json"
t1=$(date +%s.%N)
s=$(summary "$W/run1.json")
echo "run_wall_s: $(sub "$t1" "$t0")"
for p in preflight distribute prepare registry; do echo "run_${p}_s: $(echo "$s" | field "['seconds']['$p']")"; done
distribute_s=$(echo "$s" | field "['seconds']['distribute']")
distribute_bytes=$(echo "$s" | field "['distribute_bytes']")
echo "run_bytes_sent_mb: $(( $(echo "$s" | field "['bytes_sent']") >> 20 ))"
# With relays, this machine sends about one copy (the registry host's); the other hosts pull
# from each other.
echo "run_distribute_operator_mb: $(( distribute_bytes >> 20 ))"

t0=$(date +%s.%N)
"$W/installer" --no-progress run --json -f "$W/cluster.yaml" --trusted-key "$W/vendor.pub" > "$W/run2.json"
t1=$(date +%s.%N)
s=$(summary "$W/run2.json")
echo "rerun_wall_s: $(sub "$t1" "$t0")"
echo "rerun_bytes_sent: $(echo "$s" | field "['bytes_sent']")"
echo "rerun_distribute_bytes: $(echo "$s" | field "['distribute_bytes']")"

scp2_s=$(scp_all)
scp_s=$(python3 -c "import sys; print(f'{(float(sys.argv[1]) + float(sys.argv[2])) / 2:.2f}')" "$scp1_s" "$scp2_s")
echo "scp_before_s: $scp1_s"
echo "scp_after_s: $scp2_s"
echo "scp_whole_installer_3_hosts_s: $scp_s"
echo "scp_bytes_mb: $(( 3 * $(stat -c %s "$W/installer") >> 20 ))"
echo "scp_mb_per_s_per_host: $(python3 -c "import sys; print(f'{float(sys.argv[1]) / 1e6 / float(sys.argv[2]):.1f}')" "$(stat -c %s "$W/installer")" "$scp_s")"
# The figure that matters: ferry's distribution phase against scp of the whole installer, side by
# side on the same lab (≤ 1.0: ferry is at least as fast).
echo "run.distribute_vs_scp: $(python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$distribute_s" "$scp_s")"
