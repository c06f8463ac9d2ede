#!/usr/bin/env bash
# bench-publish.sh: `ferry push` and `ferry pull` against `oras` (built from Go modules by
# scripts/build-go-tools.sh), side by side on the same ~2 GiB installer and the same kind of
# registry (Debian's docker-registry, plain http on loopback, an empty storage for each run).
#
#   publish.push_ratio     ferry push / oras push of the whole file (goal <= 1.0)
#   publish.pull_ratio     ferry pull (the file put back, its sha256 checked, fsynced, renamed) /
#                          oras pull followed by a sync of its file (the same durability)
#   publish.second_*       a second release that changes one image of eight, pushed after the
#                          first: bytes and time against oras pushing that file whole
#
# Prints `name: value` lines. Scratch data in $FERRY_BENCH_DIR (default /var/tmp/ferry-bench).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FERRY=$ROOT/target/release/ferry
W=$(mktemp -d "${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}.publish.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
[ -x "$FERRY" ] || (cd "$ROOT" && cargo build --release --locked >&2)
free=$(df -Pk "$W" | awk 'NR==2 {print $4}')
(( free > 12 * 1024 * 1024 )) || { echo "bench-publish: needs 12 GiB free in $W (two releases, a registry's copy, a pulled file)" >&2; exit 1; }
"$ROOT/scripts/build-go-tools.sh" "$W/bin" oras
ORAS=$W/bin/oras
IMAGES=${FERRY_BENCH_PUBLISH_IMAGES:-8}
LAYER_MIB=${FERRY_BENCH_PUBLISH_LAYER_MIB:-256}

# Two releases: eight images of one uncompressed layer of noise each; the second changes one.
python3 "$ROOT/scripts/lib/bench-releases.py" "$W" "$IMAGES" "$LAYER_MIB" bench-publish
for rel in r1 r2; do
  FERRY_OFFLINE=1 FERRY_ALLOW_MISSING_IMAGES=1 "$FERRY" --no-progress build "$W/$rel/bundle.yaml" -o "$W/$rel.installer" --unsigned >/dev/null 2>&1
  rm -rf "$W/$rel/layout"
done
size=$(stat -c %s "$W/r1.installer")
echo "publish.installer_mib: $((size >> 20))"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Starts an empty docker-registry; sets $reg.
start_registry() {
  local port data
  port=$(free_port); data=$W/data-$1; rm -rf "$data"; mkdir -p "$data"
  printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$data" "$port" > "$W/reg-$1.yml"
  docker-registry serve "$W/reg-$1.yml" >"$W/reg-$1.log" 2>&1 &
  pids+=($!)
  reg=127.0.0.1:$port
  for _ in $(seq 1 500); do curl -fs "http://$reg/v2/" >/dev/null 2>&1 && return 0; sleep 0.02; done
  echo "docker-registry did not start" >&2; exit 1
}
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.2f}')" "$2" "$1"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
# Every timed command starts with the files out of the page cache, as on a machine that did not
# just write them.
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

start_registry ferry
cold; t=$(now); "$FERRY" --no-progress push "$W/r1.installer" "oci://$reg/bench/platform:1" --plain-http --no-resume --json > "$W/push1.json"; ferry_push=$(secs "$t" "$(now)")
cold; t=$(now); "$FERRY" --no-progress push "$W/r2.installer" "oci://$reg/bench/platform:2" --plain-http --no-resume --json > "$W/push2.json"; ferry_push2=$(secs "$t" "$(now)")
cold; t=$(now); "$FERRY" --no-progress pull "oci://$reg/bench/platform:1" -o "$W/pulled-ferry" --plain-http --json > /dev/null; ferry_pull=$(secs "$t" "$(now)")
cmp -s "$W/pulled-ferry" "$W/r1.installer" || { echo "bench-publish: ferry pull is not byte-identical" >&2; exit 1; }
rm -f "$W/pulled-ferry"
kill "${pids[-1]}" 2>/dev/null || true; rm -rf "$W/data-ferry"

start_registry oras
cd "$W"
cold; t=$(now); "$ORAS" push --plain-http "$reg/bench/platform:1" r1.installer:application/octet-stream >/dev/null; oras_push=$(secs "$t" "$(now)")
cold; t=$(now); "$ORAS" push --plain-http "$reg/bench/platform:2" r2.installer:application/octet-stream >/dev/null; oras_push2=$(secs "$t" "$(now)")
mkdir -p "$W/oras-out"
cold; t=$(now); "$ORAS" pull --plain-http "$reg/bench/platform:1" -o "$W/oras-out" >/dev/null && sync "$W/oras-out/r1.installer"; oras_pull=$(secs "$t" "$(now)")
cmp -s "$W/oras-out/r1.installer" "$W/r1.installer" || { echo "bench-publish: oras pull is not byte-identical" >&2; exit 1; }

sent2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' "$W/push2.json")
echo "publish.ferry_push_s: $ferry_push"
echo "publish.oras_push_s: $oras_push"
echo "publish.push_ratio: $(ratio "$ferry_push" "$oras_push")"
echo "publish.ferry_pull_s: $ferry_pull"
echo "publish.oras_pull_s: $oras_pull"
echo "publish.pull_ratio: $(ratio "$ferry_pull" "$oras_pull")"
echo "publish.second_ferry_sent_mib: $((sent2 >> 20))"
echo "publish.second_oras_sent_mib: $(( $(stat -c %s "$W/r2.installer") >> 20 ))"
echo "publish.second_ferry_push_s: $ferry_push2"
echo "publish.second_oras_push_s: $oras_push2"
echo "publish.second_push_ratio: $(ratio "$ferry_push2" "$oras_push2")"
