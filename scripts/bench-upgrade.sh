#!/usr/bin/env bash
# bench-upgrade.sh: `installer upgrade` of real Kubernetes on the lab, from the oldest tree to the
# newest (default v1.36.3 → v1.37.2, both built from Go modules by scripts/build-kubernetes.sh and
# cached): 1 master + 2 workers made by the old installer, then upgraded by the new one, timed in
# total, per phase (from the upgrade's JSON summary: preflight, stage = keeping the previous
# registry + the etcd snapshot, distribute, registry, nodes, finish, launch) and per node (drain
# to uncordon), plus the wait for `check`. There is no peer baseline to run here: sealos and
# sealer upgrade by rerunning kubeadm on each host by hand, k0sctl has no kubeadm.
#
# Prints `name: value` lines. Needs root, the lab (scripts/testhosts) and a release build. Takes
# the lab's session lock, waiting its turn, and takes the lab down at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FERRY=$ROOT/target/release/ferry
TH=$ROOT/scripts/testhosts
FROM=${FERRY_BENCH_K8S_FROM:-v1.36.3}
TO=${FERRY_BENCH_K8S_TO:-v1.37.2}
W=$(mktemp -d /var/tmp/ferry-bench-upgrade.XXXXXX)
cleanup() {
  local rc=$?
  "$TH" down >/dev/null 2>&1 || true
  if [ "$rc" = 0 ]; then rm -rf "$W"; else echo "bench-upgrade: failed ($rc); its files are in $W" >&2; rm -f "$W"/installer-*; fi
}
trap cleanup EXIT
[ -x "$FERRY" ] || (cd "$ROOT" && cargo build --release --locked >&2)

unset FERRY_ALLOW_MISSING_IMAGES
"$FERRY" keygen -o "$W/vendor" >/dev/null
for v in "$FROM" "$TO"; do
  "$ROOT/scripts/build-kubernetes.sh" "$v" "$W/k8s-$v" >&2
  "$FERRY" --no-progress build "$W/k8s-$v/bundle.yaml" -o "$W/installer-$v" --key "$W/vendor.key" --offline >&2
done
echo "upgrade.from: $FROM"
echo "upgrade.to: $TO"
echo "upgrade.installer_mib: $(( $(stat -c %s "$W/installer-$TO") >> 20 ))"

mkdir -p /run/lock
exec 8>>/run/lock/ferry-lab.session
if ! flock -n 8; then
  echo "bench-upgrade: the lab is in use; waiting for it" >&2
  flock 8
fi
export FERRY_LAB_SESSION_HELD=1
"$TH" down >/dev/null 8>&- || true
"$TH" up 3 >/dev/null 8>&-
"$TH" inventory --nodes 3 > "$W/cluster.yaml"

now() { date +%s.%N; }
sub() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.1f}')" "$1" "$2"; }
"$W/installer-$FROM" --no-progress run -f "$W/cluster.yaml" --trusted-key "$W/vendor.pub" > "$W/run.log" 2>&1 8>&- \
  || { echo "bench-upgrade: run of $FROM failed:" >&2; tail -n 30 "$W/run.log" >&2; exit 1; }
t0=$(now)
"$W/installer-$TO" --no-progress upgrade -f "$W/cluster.yaml" --json --trusted-key "$W/vendor.pub" > "$W/upgrade.json" 2> "$W/upgrade.err" 8>&- \
  || { echo "bench-upgrade: the upgrade failed:" >&2; tail -n 30 "$W/upgrade.json" "$W/upgrade.err" >&2; exit 1; }
wall=$(sub "$(now)" "$t0")
grep '"event":"summary"' "$W/upgrade.json" | tail -1 | python3 -c '
import json, sys
s = json.loads(sys.stdin.read())
wall = float(sys.argv[1])
print(f"upgrade.1m2w.total_s: {wall:.1f}")
for k, v in s["seconds"].items():
    if k != "total":
        print(f"upgrade.1m2w.{k}_s: {v:.1f}")
settle = wall - s["seconds"]["total"]
print(f"upgrade.1m2w.settle_s: {settle:.1f}")
for ip, secs in sorted(s["per_node"].items()):
    print(f"upgrade.1m2w.node.{ip}_s: {secs:.1f}")
' "$wall"
python3 - "$W/upgrade.json" <<'PY'
import json, sys
steps = {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("phase") == "upgrade" and e.get("event") == "done" and "steps" in e:
        for k, v in e["steps"].items():
            steps.setdefault(k, []).append(v)
for k, v in sorted(steps.items()):
    print(f"upgrade.1m2w.step.{k}_max_s: {max(v):.1f}")
PY
