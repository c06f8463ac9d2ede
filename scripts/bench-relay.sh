#!/usr/bin/env bash
# bench-relay.sh: the relay delivery benchmark. A 1 GiB installer delivered to N = 1, 4 and 8 lab
# hosts, every host's link and this machine's uplink into the lab shaped to 100 Mbit/s, timed
# side by side for:
#   - ferry: the distribute phase of `installer run` (relay chains: the installer feeds one host,
#     every other host pulls from the one before it, each hop verifying every chunk);
#   - the naive baseline: parallel `scp` of the installer from this machine to each host.
# Prints `name: value` lines; the last two are the issue's targets (at N = 8: ferry ≤ 1.5× its
# own N = 1 time, and ≤ 0.3× the baseline).
#
# Needs root, the lab (scripts/testhosts) and a release build. Takes about 25 minutes at the
# issue's size (the baseline at N = 8 alone moves 8 GiB through one 100 Mbit/s uplink);
# FERRY_BENCH_RELAY_MB (default 1024) and FERRY_BENCH_RELAY_RATE (default 100mbit) scale it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FERRY=$ROOT/target/release/ferry
TH=$ROOT/scripts/testhosts
MB=${FERRY_BENCH_RELAY_MB:-1024}
RATE=${FERRY_BENCH_RELAY_RATE:-100mbit}
NS=(1 4 8)
W=$(mktemp -d /var/tmp/ferry-bench-relay.XXXXXX)
trap '"$TH" down >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
[ -x "$FERRY" ] || (cd "$ROOT" && cargo build --release >&2)
export FERRY_OFFLINE=1 FERRY_ALLOW_MISSING_IMAGES=1

# Bundle: Debian's containerd/runc (the run prepares nodes after delivering), a busybox image,
# and MB of incompressible files that every host receives.
pad_mb=$((MB - 45)); [ "$pad_mb" -gt 0 ] || pad_mb=$MB
. "$ROOT/scripts/lib/run-bundle.sh"
make_run_bundle "$W" bench-relay "$pad_mb"
echo "relay.installer_mib: $(( $(stat -c %s "$W/installer") >> 20 ))"
echo "relay.link_rate: $RATE"

# One lab per machine: take the session lock the lab tests use (tests/src/lab.rs), waiting our
# turn, and tell testhosts we hold it.
mkdir -p /run/lock
exec 8>>/run/lock/ferry-lab.session
if ! flock -n 8; then
  echo "bench-relay: the lab is in use; waiting for it" >&2
  flock 8
fi
export FERRY_LAB_SESSION_HELD=1
"$TH" up 8 >/dev/null
LAB=${FERRY_LAB_DIR:-/srv/ferry-lab}
for i in $(seq 1 8); do "$TH" shape "$i" "$RATE"; done
"$TH" shape operator "$RATE"

sub() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.2f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(eval('d'+sys.argv[1]))" "$1"; }

# Every host back to bare for the next delivery (the copy, the agent's state, ferry's services).
wipe() {
  for i in $(seq 1 8); do
    "$TH" ssh "$i" 'systemctl disable --now ferry-registry containerd >/dev/null 2>&1; rm -rf /var/lib/ferry /var/tmp/installer.scp /opt/bench /etc/containerd /etc/systemd/system/ferry-registry.service /etc/systemd/system/containerd.service /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/bin/ctr /usr/sbin/runc; systemctl daemon-reload' >/dev/null 2>&1 || true
  done
  rm -rf "$W/.ferry"
}

for n in "${NS[@]}"; do
  wipe
  "$TH" inventory --nodes "$n" > "$W/cluster-$n.yaml"
  if ! "$W/installer" --no-progress run --json -f "$W/cluster-$n.yaml" --trusted-key "$W/vendor.pub" > "$W/run-$n.json"; then
    grep -v '"event":"progress"' "$W/run-$n.json" | tail -20 >&2
    exit 1
  fi
  s=$(grep '"event":"summary"' "$W/run-$n.json" | tail -1)
  ferry_s=$(echo "$s" | field "['seconds']['distribute']")
  echo "relay.ferry_n${n}_seconds: $ferry_s"
  echo "relay.ferry_n${n}_uplink_mib: $(( $(echo "$s" | field "['distribute_bytes']") >> 20 ))"
  eval "ferry_$n=$ferry_s"

  t0=$(date +%s.%N)
  for i in $(seq 1 "$n"); do
    scp -q -F "$LAB/ssh_config" "$W/installer" "10.88.0.$((10 + i)):/var/tmp/installer.scp" &
  done
  wait
  t1=$(date +%s.%N)
  scp_s=$(sub "$t1" "$t0")
  echo "relay.scp_n${n}_seconds: $scp_s"
  eval "scp_$n=$scp_s"
done
wipe
"$TH" unshape operator

echo "relay.ferry_n8_vs_ferry_n1: $(ratio "$ferry_8" "$ferry_1")"
echo "relay.ferry_n8_vs_scp_n8: $(ratio "$ferry_8" "$scp_8")"
