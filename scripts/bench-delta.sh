#!/usr/bin/env bash
# bench-delta.sh: a release that changes one image of twenty, shipped as a differential
# installer (`ferry build --base r1.installer`), against the goal the issue names: no bigger
# than the changed blobs plus 1% of the complete installer. And the time to put the complete
# installer back together on site (`./delta complete --base r1.installer`) against copying the
# complete installer (cp, then sync: the same durability), both from a cold page cache.
#
#   delta.bytes               the delta's size
#   delta.changed_blob_bytes  the stored bytes of the blobs release 2 has and release 1 lacks
#   delta.goal_bytes          changed blobs + 1% of the complete installer
#   delta.size_ratio          delta / goal (goal <= 1.0)
#   delta.program_bytes       the installer program every delta carries to run on its own (~20 MB,
#                             which is more than 1% of a complete installer under ~2 GB)
#   delta.complete_ratio      `complete` / cp + sync of the complete installer
#
# Prints `name: value` lines. Scratch data in $FERRY_BENCH_DIR (default /var/tmp/ferry-bench).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FERRY=$ROOT/target/release/ferry
W=$(mktemp -d "${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}.delta.XXXXXX")
trap 'rm -rf "$W"' EXIT
[ -x "$FERRY" ] || (cd "$ROOT" && cargo build --release --locked >&2)
IMAGES=${FERRY_BENCH_DELTA_IMAGES:-20}
LAYER_MIB=${FERRY_BENCH_DELTA_LAYER_MIB:-128}
free=$(df -Pk "$W" | awk 'NR==2 {print $4}')
(( free > 6 * IMAGES * LAYER_MIB * 1024 )) || { echo "bench-delta: needs $((6 * IMAGES * LAYER_MIB)) MiB free in $W" >&2; exit 1; }

python3 "$ROOT/scripts/lib/bench-releases.py" "$W" "$IMAGES" "$LAYER_MIB" bench-delta
"$FERRY" keygen -o "$W/vendor" >/dev/null
build() { FERRY_OFFLINE=1 FERRY_ALLOW_MISSING_IMAGES=1 "$FERRY" --no-progress build "$@" --key "$W/vendor.key" >/dev/null 2>&1; }
build "$W/r1/bundle.yaml" -o "$W/r1.installer"
build "$W/r2/bundle.yaml" -o "$W/r2.delta" --base "$W/r1.installer" --complete-output "$W/r2.installer"
rm -rf "$W/r1/layout" "$W/r2/layout"

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.2f}')" "$2" "$1"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "$1" "$2"; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

changed=$(python3 - "$W/r1.installer" "$W/r2.installer" <<'PY'
import json, subprocess, sys
def blobs(path):
    doc = json.loads(subprocess.run([path, "inspect", "--json"], check=True, capture_output=True).stdout)
    return {e["path"]: e["stored_len"] for e in doc["entries"] if e["path"].startswith("blobs/")}
old, new = blobs(sys.argv[1]), blobs(sys.argv[2])
print(sum(size for path, size in new.items() if path not in old))
PY
)
delta=$(stat -c %s "$W/r2.delta")
complete=$(stat -c %s "$W/r2.installer")
goal=$((changed + complete / 100))

mkdir -p "$W/site"
cold; t=$(now); "$W/r2.delta" --no-progress complete --base "$W/r1.installer" -o "$W/site/r2.installer" --key "$W/vendor.pub" >/dev/null; completed=$(secs "$t" "$(now)")
cmp -s "$W/site/r2.installer" "$W/r2.installer" || { echo "bench-delta: the completed installer differs" >&2; exit 1; }
rm -f "$W/site/r2.installer"
cold; t=$(now); cp "$W/r2.installer" "$W/site/copy" && sync "$W/site/copy"; copied=$(secs "$t" "$(now)")

echo "delta.complete_mib: $((complete >> 20))"
echo "delta.bytes: $delta"
echo "delta.changed_blob_bytes: $changed"
echo "delta.goal_bytes: $goal"
echo "delta.size_ratio: $(ratio "$delta" "$goal")"
echo "delta.program_bytes: $(python3 -c 'import json,subprocess,sys; print(json.loads(subprocess.run([sys.argv[1], "inspect", "--json"], check=True, capture_output=True).stdout)["sizes"]["stub"])' "$W/r2.delta")"
echo "delta.size_vs_complete: $(ratio "$delta" "$complete")"
echo "delta.complete_s: $completed"
echo "delta.copy_s: $copied"
echo "delta.complete_ratio: $(ratio "$completed" "$copied")"
