#!/usr/bin/env bash
# The registry benchmark: `installer registry serve` against Debian's `docker-registry` (distribution)
# serving the same images, side by side in one run. Prints one `registry.NAME: value` line each.
# Both serve HTTPS with one certificate from `installer registry pki` (the cluster CA a `run` makes),
# and clients trust that CA alone; the installer also requires the pull credential, as on a cluster
# (docker-registry runs without auth: its htpasswd needs bcrypt tooling this machine does not carry).
# The credential reaches skopeo and curl through files, never a command line.
#
#   scripts/bench-registry.sh            (scripts/bench.sh registry calls it)
#
# * images: FERRY_BENCH_IMAGES (default 8) images of one 128 MiB random-data gzip layer each
#   (about 1 GiB), built offline as an OCI layout, carried by `ferry build` and loaded into
#   docker-registry with skopeo;
# * pull-all: `skopeo copy` of every image to a directory, from each registry; the ratio is
#   installer / docker-registry (target <= 1.0). The installer's first pull includes its
#   first-use chunk verification;
# * time to first manifest: `installer registry serve` started on the installer file -> first
#   manifest answered 200, printed beside the time docker-registry needs to start, be loaded
#   with the images and answer the same manifest;
# * 32 concurrent pulls of one image from a freshly started server: failed pulls plus 5xx
#   responses, and the server's peak memory: `peak_rss_anon` (the process's own memory, sampled
#   every 10 ms, KiB) and `peak_rss` (VmHWM, MiB, which also counts the page cache of the mapped installer
#   that the kernel can drop at will).
#
# Only loopback addresses are used. Every process started here is stopped on exit.
# Needs: docker-registry, skopeo, curl, python3 (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
dir="${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}/registry"
n_images="${FERRY_BENCH_IMAGES:-8}"
layer_mib=128
ferry="$root/target/release/ferry"
[[ -x "$ferry" ]] || cargo build --release --locked -q

started_pids=()
cleanup() {
  local p
  for p in "${started_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$dir" "/dev/shm/ferry-bench-pulls-$$" "/dev/shm/ferry-bench-concurrent-$$"
}
trap cleanup EXIT
rm -rf "$dir"; mkdir -p "$dir"

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
skopeo_() { skopeo --insecure-policy --registries-conf /dev/null "$@"; }

# --- images: an OCI layout with tags img1..imgN, one random 128 MiB gzip layer each ----------
python3 - "$dir/layout" "$n_images" "$layer_mib" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
layout, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)
open(os.path.join(layout, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d, len(data)
index = []
for i in range(1, n + 1):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(f"data/img{i}.bin"); info.size = mib << 20; info.mode = 0o644
        t.addfile(info, io.BytesIO(os.urandom(info.size)))
    tar = raw.getvalue()
    layer, lsize = put(gzip.compress(tar, compresslevel=1, mtime=0))
    config, csize = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]}}).encode())
    manifest, msize = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": csize},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": lsize}]}).encode())
    index.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": msize,
                  "annotations": {"org.opencontainers.image.ref.name": f"img{i}"}})
json.dump({"schemaVersion": 2, "manifests": index}, open(os.path.join(layout, "index.json"), "w"))
PY
echo "registry.images: $n_images"
echo "registry.images_bytes: $(du -sb "$dir/layout/blobs" | cut -f1)"

# --- the installer: the real packer, offline (control-plane images are recorded as missing) ---
{
  printf 'apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {name: bench-registry, version: 1.0.0}\n'
  printf 'spec:\n  kubernetes: {version: v1.36.3}\n  platforms: [linux/amd64]\n  images:\n'
  for i in $(seq 1 "$n_images"); do printf '    - {ref: docker.io/bench/img%s:1, source: "oci:layout:img%s"}\n' "$i" "$i"; done
} > "$dir/bundle.yaml"
"$ferry" keygen -o "$dir/key" >/dev/null
"$ferry" build "$dir/bundle.yaml" -o "$dir/installer" --key "$dir/key.key" --offline --allow-missing-images \
  >"$dir/build.log" 2>&1 || { cat "$dir/build.log" >&2; exit 1; }

# --- TLS and the credential --------------------------------------------------------------------
pki="$dir/pki"
"$dir/installer" registry pki --dir "$pki" --name 127.0.0.1 >/dev/null
mkdir -p "$dir/certs" && cp "$pki/registry-ca.crt" "$dir/certs/ca.crt"   # skopeo: the CA alone
basic=$(base64 -w0 < <(tr -d '\n' < "$pki/registry-credential"))
(umask 077; printf 'Authorization: Basic %s\n' "$basic" > "$dir/auth-header")
# skopeo's auth file names the registry by address, known once a server listens.
auth_for() { (umask 077; printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$1" "$basic" > "$dir/auth-$1.json"); }

# --- servers ----------------------------------------------------------------------------------
# Starts the installer's registry; sets $ferry_pid and $ferry_addr.
start_ferry() {
  rm -f "$dir/ferry.out"
  "$dir/installer" registry serve --listen 127.0.0.1:0 --key "$dir/key.pub" --tls-dir "$pki" -q \
    >"$dir/ferry.out" 2>"$dir/ferry-$1.log" &
  ferry_pid=$!; started_pids+=("$ferry_pid")
  local i
  for i in $(seq 1 2000); do
    ferry_addr=$(sed -n 's|^registry listening on https://\([^ ]*\).*|\1|p' "$dir/ferry.out" 2>/dev/null || true)
    [[ -z "$ferry_addr" ]] || { auth_for "$ferry_addr"; return 0; }
    kill -0 "$ferry_pid" 2>/dev/null || { cat "$dir/ferry-$1.log" >&2; exit 1; }
    sleep 0.005
  done
  echo "installer registry did not start" >&2; exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Starts docker-registry on storage $2 (kept between restarts); sets $dr_pid and $dr_addr.
start_docker_registry() {
  dr_addr="127.0.0.1:$(free_port)"
  mkdir -p "$dir/dr-data"
  printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: %s, tls: {certificate: %s, key: %s}}\n' \
    "$dir/dr-data" "$dr_addr" "$pki/registry.crt" "$pki/registry.key" > "$dir/dr-config.yml"
  auth_for "$dr_addr"
  docker-registry serve "$dir/dr-config.yml" >"$dir/dr-$1.log" 2>&1 &
  dr_pid=$!; started_pids+=("$dr_pid")
  local i
  for i in $(seq 1 2000); do
    curl -fs --cacert "$pki/registry-ca.crt" "https://$dr_addr/v2/" >/dev/null 2>&1 && return 0
    kill -0 "$dr_pid" 2>/dev/null || { cat "$dir/dr-$1.log" >&2; exit 1; }
    sleep 0.005
  done
  echo "docker-registry did not start" >&2; exit 1
}

manifest_ok() {
  curl -fs -o /dev/null --cacert "$pki/registry-ca.crt" -H @"$dir/auth-header" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' "https://$1/v2/bench/img1/manifests/1"
}

# --- time to first manifest ---------------------------------------------------------------------
t0=$(now)
start_ferry first
until manifest_ok "$ferry_addr"; do sleep 0.002; done
t1=$(now)
echo "registry.installer_first_manifest_seconds: $(secs "$t0" "$t1")"
stop "$ferry_pid"

t0=$(now)
start_docker_registry load
t_up=$(now)
for i in $(seq 1 "$n_images"); do
  skopeo_ copy -q --dest-cert-dir "$dir/certs" "oci:$dir/layout:img$i" "docker://$dr_addr/bench/img$i:1" >/dev/null
done
t_loaded=$(now)
until manifest_ok "$dr_addr"; do sleep 0.002; done
t1=$(now)
echo "registry.docker_registry_load_seconds: $(secs "$t_up" "$t_loaded")"
echo "registry.docker_registry_first_manifest_seconds: $(secs "$t0" "$t1")"

# --- pull everything ---------------------------------------------------------------------------
# The client (skopeo: digests, disk) dominates the wall time on a small machine, so the server's
# own CPU time is printed too. Two alternating rounds; the ratio compares each server's best,
# and the installer's first (cold) round, which includes its first-use chunk verification, is
# printed on its own.
cpu_cs() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pull_all() {  # addr pid -> "seconds server_cpu_seconds"
  local addr=$1 pid=$2 i t0 t1 c0 c1
  c0=$(cpu_cs "$pid"); t0=$(now)
  for i in $(seq 1 "$n_images"); do
    skopeo_ copy -q --src-cert-dir "$dir/certs" --src-authfile "$dir/auth-$addr.json" \
      "docker://$addr/bench/img$i:1" "dir:$pulls/img$i" >/dev/null
    rm -rf "$pulls/img$i"
  done
  t1=$(now); c1=$(cpu_cs "$pid")
  echo "$(secs "$t0" "$t1") $(python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 100:.2f}')" "$c0" "$c1")"
}
min() { python3 -c "import sys; print(min(sys.argv[1:], key=float))" "$@"; }
# Pulls land on tmpfs when it has room, so the disk's noise does not dominate.
pulls="$dir/pulls"
if [[ -d /dev/shm ]] && (( $(df -k --output=avail /dev/shm | tail -1) > (layer_mib + 512) * 1024 )); then
  pulls="/dev/shm/ferry-bench-pulls-$$"
fi
mkdir -p "$pulls"
start_ferry pull
read -r f1 fc1 < <(pull_all "$ferry_addr" "$ferry_pid")
read -r d1 dc1 < <(pull_all "$dr_addr" "$dr_pid")
read -r f2 fc2 < <(pull_all "$ferry_addr" "$ferry_pid")
read -r d2 dc2 < <(pull_all "$dr_addr" "$dr_pid")
stop "$ferry_pid"; stop "$dr_pid"
rm -rf "$pulls"
t_ferry=$(min "$f1" "$f2"); t_dr=$(min "$d1" "$d2")
echo "registry.pull_all_installer_first_seconds: $f1"
echo "registry.pull_all_installer_seconds: $t_ferry"
echo "registry.pull_all_docker_registry_seconds: $t_dr"
echo "registry.pull_all_installer_vs_docker_registry: $(ratio "$t_ferry" "$t_dr")"
echo "registry.pull_all_installer_server_cpu_seconds: $(min "$fc1" "$fc2")"
echo "registry.pull_all_docker_registry_server_cpu_seconds: $(min "$dc1" "$dc2")"

# --- 32 concurrent pulls of one image --------------------------------------------------------
# Pulls land on tmpfs when it has room, so the disk does not dominate.
conc="$dir/concurrent"
if [[ -d /dev/shm ]] && (( $(df -k --output=avail /dev/shm | tail -1) > (32 * layer_mib + 512) * 1024 )); then
  conc="/dev/shm/ferry-bench-concurrent-$$"
fi
concurrent() {  # name addr pid
  local name=$1 addr=$2 pid=$3 i failed=0 t0 t1
  rm -rf "$conc"; mkdir -p "$conc"
  python3 - "$pid" > "$dir/rss-$name" <<'PY' &
import signal, sys, time
pid, peak, hwm, stop = sys.argv[1], 0, 0, False
def done(*_):
    global stop; stop = True
signal.signal(signal.SIGTERM, done)
while not stop:
    try:
        for line in open(f"/proc/{pid}/status"):
            k, v = line.split(":", 1)
            if k == "RssAnon": peak = max(peak, int(v.split()[0]))
            if k == "VmHWM": hwm = int(v.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        break
    time.sleep(0.01)
print(peak, hwm // 1024)
PY
  local sampler=$!
  local c0 c1
  c0=$(cpu_cs "$pid"); t0=$(now)
  local pulls=()
  for i in $(seq 1 32); do
    skopeo_ copy -q --src-cert-dir "$dir/certs" --src-authfile "$dir/auth-$addr.json" \
      "docker://$addr/bench/img1:1" "dir:$conc/p$i" >/dev/null 2>>"$dir/concurrent-$name.err" &
    pulls+=($!)
  done
  for p in "${pulls[@]}"; do wait "$p" || failed=$((failed + 1)); done
  t1=$(now); c1=$(cpu_cs "$pid")
  kill "$sampler"; wait "$sampler" || true
  read -r anon hwm < "$dir/rss-$name"
  echo "registry.concurrent32_${name}_failed_pulls: $failed"
  echo "registry.concurrent32_${name}_seconds: $(secs "$t0" "$t1")"
  echo "registry.concurrent32_${name}_server_cpu_seconds: $(python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 100:.2f}')" "$c0" "$c1")"
  echo "registry.concurrent32_${name}_peak_rss_anon_kib: $anon"
  echo "registry.concurrent32_${name}_peak_rss_mib: $hwm"
  rm -rf "$conc"
}
start_ferry concurrent
concurrent installer "$ferry_addr" "$ferry_pid"
stop "$ferry_pid"
echo "registry.concurrent32_installer_5xx_responses: $(grep -c '" 5[0-9][0-9] ' "$dir/ferry-concurrent.log" || true)"
start_docker_registry concurrent
concurrent docker_registry "$dr_addr" "$dr_pid"
stop "$dr_pid"
