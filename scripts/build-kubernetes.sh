#!/usr/bin/env bash
# build-kubernetes.sh VERSION OUTDIR [--arch amd64|arm64]
#
# Builds a real Kubernetes node rootfs, the images kubeadm needs and a CNI, from Go modules
# (the Go module proxy) and Debian packages only: no download site is ever asked. Writes the
# same shape as scripts/fetch-kubernetes.sh, so `ferry build OUTDIR/bundle.yaml` takes it:
#
#   OUTDIR/bundle.yaml
#   OUTDIR/rootfs/usr/bin/{kubeadm,kubelet,kubectl,crictl,helm}
#   OUTDIR/rootfs/usr/local/bin/{containerd,containerd-shim-runc-v2,ctr}   containerd 2.x
#   OUTDIR/rootfs/usr/local/sbin/runc                                      static, with seccomp
#   OUTDIR/rootfs/opt/cni/bin/{bridge,host-local,loopback,portmap,...}
#   OUTDIR/rootfs/etc/systemd/system/{containerd,kubelet}.service, kubelet.service.d/10-kubeadm.conf
#   OUTDIR/images/                      one OCI layout: the control-plane images, named exactly as
#                                       `kubeadm config images list` of the kubeadm built here
#                                       prints them, and the CNI's image
#   OUTDIR/manifests/kube-flannel.yaml  the CNI (flannel, VXLAN), applied as a launch step
#   OUTDIR/BUILD-INFO                   what was built, from which module versions
#
# What is built, and from where:
#   kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy
#                 k8s.io/kubernetes@VERSION, through a wrapper module whose replace lines are
#                 derived from that version's own go.mod; version-stamped, so `kubeadm version -o
#                 short` prints VERSION
#   etcd, CoreDNS, pause
#                 at the versions VERSION's kubeadm pins (read from the kubeadm just built); the
#                 nearest served version where the proxy lacks the exact one, tagged as kubeadm
#                 expects and said so. pause is kubeadm's own build/pause/linux/pause.c
#   containerd, runc, CNI plugins, crictl, helm, flannel   their Go modules (flanneld without
#                 its Tencent Cloud backend, whose SDK the proxy does not serve)
#   iptables/nft (kube-proxy's and flannel's images), busybox   Debian packages of ARCH
# conntrack and socat are not carried: kubeadm has not required conntrack since v1.32, and
# containerd's CRI does port-forwarding itself.
#
# Supported: v1.34.x (past end of life), v1.35.x, v1.36.x, v1.37.x.
#
# Cache: everything under FERRY_K8S_CACHE (default /var/cache/ferry/kubernetes): the Go module
# and build caches, each component keyed by its version and this script's own content, and the
# finished tree. A second run of the same VERSION and ARCH copies the finished tree (seconds).
#
# Component versions (override with the environment variables named):
#   CONTAINERD_VERSION (2.4.2)  RUNC_VERSION (1.5.3)  CNI_VERSION (1.10.0)  HELM_VERSION (3.22.0)
#   FLANNEL_VERSION (0.28.10)   CRICTL_VERSION (newest served v1.MINOR.x, else the newest below)
#
# --arch arm64 cross-builds: Go programs with GOARCH, pause and runc with Debian's cross
# compiler (crossbuild-essential-arm64 and libseccomp-dev:arm64, installed when missing, which
# adds the arm64 architecture to dpkg), Debian userland from arm64 packages.
set -euo pipefail
umask 022
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/node-units.sh
. "$HERE/lib/node-units.sh"
# shellcheck source=lib/gobuild.sh
. "$HERE/lib/gobuild.sh"
# shellcheck source=lib/oci-images.sh
. "$HERE/lib/oci-images.sh"

say() { echo "build-kubernetes: $*" >&2; }
die() { say "$*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
now() { date +%s; }

ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH=${2:?--arch needs amd64 or arm64}; shift ;;
    --arch=*) ARCH=${1#--arch=} ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "build-kubernetes.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
[ ${#ARGS[@]} -eq 2 ] || { echo "usage: build-kubernetes.sh VERSION OUTDIR [--arch amd64|arm64] (see --help)" >&2; exit 2; }
VERSION=${ARGS[0]} OUT=${ARGS[1]}
[[ "$VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "version $VERSION is not of the form v1.MINOR.PATCH"
MINOR=${BASH_REMATCH[1]} PATCH=${BASH_REMATCH[2]}
case "$MINOR" in
  34|35|36|37) ;;
  *) die "Kubernetes $VERSION is not supported: ferry builds v1.34.x (past end of life) to v1.37.x" ;;
esac
case "$ARCH" in
  amd64) TRIPLE=x86_64-linux-gnu ;;
  arm64) TRIPLE=aarch64-linux-gnu ;;
  *) die "architecture $ARCH is not supported (amd64, arm64)" ;;
esac
HOST_ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)

CONTAINERD_VERSION=${CONTAINERD_VERSION:-2.4.2}
RUNC_VERSION=${RUNC_VERSION:-1.5.3}
CNI_VERSION=${CNI_VERSION:-1.10.0}
HELM_VERSION=${HELM_VERSION:-3.22.0}
FLANNEL_VERSION=${FLANNEL_VERSION:-0.28.10}

CACHE=${FERRY_K8S_CACHE:-/var/cache/ferry/kubernetes}
command -v go >/dev/null || die "needs Go (go version: not found)"
command -v umoci >/dev/null || die "needs umoci (apt-get install umoci; scripts/setup.sh installs it)"
command -v python3 >/dev/null || die "needs python3"
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct} GOARCH=$ARCH GOOS=linux
mkdir -p "$GOMODCACHE" "$GOCACHE" "$CACHE/parts" "$CACHE/logs" "$CACHE/work" "$CACHE/trees"

# Cache keys. A finished tree is keyed by this script and its libraries and the Go toolchain; a
# component by the code that builds it (its function, the Go build library, the toolchain), so
# that a change to how images are assembled does not rebuild Kubernetes.
GO_VERSION=$(go version)
KEY=$( { cat "$0" "$HERE/lib/gobuild.sh" "$HERE/lib/oci-images.sh" "$HERE/lib/node-units.sh" \
           "$HERE/lib/kube-flannel.yaml"; echo "$GO_VERSION $CONTAINERD_VERSION $RUNC_VERSION $CNI_VERSION"
         echo "$HELM_VERSION $FLANNEL_VERSION ${CRICTL_VERSION:-}"; } | sha256sum | cut -c1-12)
TREE=$CACHE/trees/$VERSION-$ARCH-$KEY
T0=$(now)

# Writes OUTDIR from a finished tree: next to it first, then renamed into place, so OUTDIR is
# either the old one or the whole new one.
publish() {
  local parent tmp old
  parent=$(dirname "$OUT"); mkdir -p "$parent"
  tmp=$(mktemp -d "$parent/.$(basename "$OUT").tmp.XXXXXX")
  cp -a --reflink=auto "$TREE/." "$tmp/" || { rm -rf "$tmp"; die "copying the tree to $parent failed; $OUT is unchanged"; }
  chmod 0755 "$tmp"
  if [ -e "$OUT" ]; then
    old="$parent/.$(basename "$OUT").old.$$"
    mv "$OUT" "$old"
    mv "$tmp" "$OUT"
    rm -rf "$old"
  else
    mv "$tmp" "$OUT"
  fi
}

# ---------------------------------------------------------------------------------- versions
say "checking $VERSION against the Go module proxy ($GOPROXY)"
if ! gomod_served k8s.io/kubernetes "$VERSION"; then
  served=$(gomod_versions k8s.io/kubernetes | grep -E '^v1\.(3[4-9])\.[0-9]+$' | tr '\n' ' ')
  die "k8s.io/kubernetes $VERSION is not served by $GOPROXY; served v1.34 and later: ${served:-none}"
fi
STAGING=v0.$MINOR.$PATCH    # the staging modules (k8s.io/api, ...) follow Kubernetes as v0.MINOR.PATCH
K8S_TIME=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Time"])' \
  "$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$VERSION.info")

# One build at a time per cache: two would fight over the same work directories.
exec 8>"$CACHE/.lock"
flock -n 8 || { say "another build-kubernetes.sh holds $CACHE/.lock; waiting"; flock 8; }

if [ -f "$TREE/BUILD-INFO" ]; then
  publish
  took=$(sed -n 's/^build-seconds: //p' "$TREE/BUILD-INFO")
  built=$(sed -n 's/^components-built: //p' "$TREE/BUILD-INFO")
  say "Kubernetes $VERSION linux/$ARCH: cached tree copied to $OUT"
  say "time: warm $(( $(now) - T0 )) s (the tree itself took ${took:-?} s, compiling ${built:-?} components)"
  exit 0
fi

# nearest_served MODULE WANT: WANT if the proxy serves it, else the newest listed version of the
# same major.minor at or below WANT, else the oldest above it. Prints the chosen version.
nearest_served() {
  local module=$1 want=$2 majmin best=""
  if gomod_served "$module" "$want"; then echo "$want"; return; fi
  majmin=$(echo "$want" | cut -d. -f1,2)
  best=$(gomod_versions "$module" | grep -E "^${majmin//./\\.}\.[0-9]+$" | python3 -c '
import sys
want = tuple(int(x) for x in sys.argv[1].lstrip("v").split("."))
vs = [l.strip() for l in sys.stdin if l.strip()]
key = lambda v: tuple(int(x) for x in v.lstrip("v").split("."))
below = [v for v in vs if key(v) <= want]
above = [v for v in vs if key(v) > want]
print(max(below, key=key) if below else (min(above, key=key) if above else ""))' "$want")
  [ -n "$best" ] || return 1
  echo "$best"
}

# ---------------------------------------------------------------------------- build machinery
STEP=0 STEPS=12 BUILT=0
NOTES=()   # lines for BUILD-INFO and the summary

# prune_beside KEEP PREFIX: removes the cache entries PREFIX* other than KEEP (those of the same
# component or tree built by other versions of this script), so the cache does not grow with
# every change to it.
prune_beside() {
  local d
  for d in "$2"*; do
    [ "$d" = "$1" ] || [ ! -d "$d" ] || rm -rf "$d"
  done
}

# part NAME VERSION BUILDER: runs BUILDER DIR (a function) into a fresh directory unless a part
# of that name, version, arch and key is cached, then sets PART to its directory. Output goes to
# a log; a failure names the part and prints the log's last lines.
part() {
  local name=$1 version=$2 builder=$3 dir t log key
  STEP=$((STEP + 1))
  key=$( { declare -f "$builder" go_build_into gobuild_wrapper cross_cc runner; cat "$HERE/lib/gobuild.sh"
           echo "$GO_VERSION $DEB_PACKAGES"; } |
         sha256sum | cut -c1-12)
  dir=$CACHE/parts/$ARCH/$name-$version-$key
  PART=$dir
  if [ -f "$dir/.done" ]; then
    printf 'build-kubernetes: [%2d/%d] %-26s cached\n' "$STEP" "$STEPS" "$name $version" >&2
    return 0
  fi
  printf 'build-kubernetes: [%2d/%d] %-26s building…\n' "$STEP" "$STEPS" "$name $version" >&2
  t=$(now); log=$CACHE/logs/$name-$version-$ARCH.log
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
  if ! ( set -euo pipefail; "$builder" "$dir.tmp" ) >"$log" 2>&1; then
    say "FAILED: $name $version for linux/$ARCH; the last lines of its build log ($log):"
    tail -n 25 "$log" | sed 's/^/    /' >&2
    rm -rf "$dir.tmp"
    exit 1
  fi
  touch "$dir.tmp/.done"
  BUILT=$((BUILT + 1))
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
  prune_beside "$dir" "$CACHE/parts/$ARCH/$name-$version-"
  printf 'build-kubernetes: [%2d/%d] %-26s built in %d s\n' "$STEP" "$STEPS" "$name $version" "$(( $(now) - t ))" >&2
}

# go_build_into OUT MODULE VERSION SIBLING "LDFLAGS" PKG...: a static, trimmed build of PKG...
# from MODULE@VERSION into OUT.
go_build_into() {
  local out=$1 module=$2 version=$3 sibling=$4 ldflags=$5; shift 5
  local w=$CACHE/work/$ARCH/$(echo "$module" | tr '/' '_')@$version
  gobuild_wrapper "$w" "$module" "$version" "$sibling" "$@"
  (cd "$w" && CGO_ENABLED=${CGO_ENABLED:-0} go build -trimpath ${GO_TAGS:+-tags "$GO_TAGS"} \
     -ldflags "-s -w -buildid= $ldflags" -o "$out/" "$@")
}

cross_cc() {
  if [ "$ARCH" = "$HOST_ARCH" ]; then echo gcc; else echo "$TRIPLE-gcc"; fi
}

need_cross_toolchain() {
  [ "$ARCH" != "$HOST_ARCH" ] || { command -v gcc >/dev/null || die "needs gcc (apt-get install gcc)"; return 0; }
  if ! command -v "$TRIPLE-gcc" >/dev/null || ! dpkg-query -W -f='${Status}' "libseccomp-dev:$ARCH" 2>/dev/null | grep -q "ok installed"; then
    say "installing the $ARCH cross compiler and libseccomp-dev:$ARCH (dpkg --add-architecture $ARCH)"
    dpkg --add-architecture "$ARCH"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "crossbuild-essential-$ARCH" "libseccomp-dev:$ARCH" >/dev/null
  fi
}

# ------------------------------------------------------------------------------- components
build_kubernetes() {
  local ld="" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean -X $p.buildDate=$K8S_TIME"
  done
  go_build_into "$1" k8s.io/kubernetes "$VERSION" "$STAGING" "$ld" \
    k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
  [ "$("$(runner)" "$1/kubeadm" version -o short)" = "$VERSION" ] || { echo "kubeadm does not report $VERSION"; exit 1; }
}

# runner: how to run a program built for ARCH on this machine.
runner() {
  if [ "$ARCH" = "$HOST_ARCH" ]; then echo env
  else command -v "qemu-$( [ "$ARCH" = arm64 ] && echo aarch64 || echo x86_64 )-static" || die "needs qemu-user-static to run $ARCH programs"
  fi
}

build_etcd() {
  go_build_into "$1" go.etcd.io/etcd/server/v3 "$ETCD_MOD" "$ETCD_MOD" \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=ferry-build" go.etcd.io/etcd/server/v3
  mv "$1/server" "$1/etcd"   # go names a /vN module's program after the element before /vN
  go_build_into "$1" go.etcd.io/etcd/etcdctl/v3 "$ETCD_MOD" "$ETCD_MOD" "" go.etcd.io/etcd/etcdctl/v3
}

build_coredns() {
  go_build_into "$1" github.com/coredns/coredns "$COREDNS_MOD" "$COREDNS_MOD" \
    "-X github.com/coredns/coredns/coremain.GitCommit=ferry-build" github.com/coredns/coredns
}

build_pause() {
  local src; src=$(gomod_source k8s.io/kubernetes "$VERSION")
  "$(cross_cc)" -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-ferry" -o "$1/pause" "$src/build/pause/linux/pause.c"
  strip "$1/pause" 2>/dev/null || "$TRIPLE-strip" "$1/pause"
}

build_containerd() {
  local m=github.com/containerd/containerd/v2 v=v$CONTAINERD_VERSION
  GO_TAGS="no_btrfs no_devmapper no_zfs" go_build_into "$1" "$m" "$v" "$v" \
    "-X $m/version.Version=$v -X $m/version.Revision=ferry-build -X $m/version.Package=github.com/containerd/containerd/v2" \
    "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
}

build_runc() {
  # runc applies the seccomp profiles Kubernetes asks for (kubeadm's static pods use
  # RuntimeDefault), and its seccomp support is cgo with libseccomp: linked statically.
  local v=v$RUNC_VERSION
  CGO_ENABLED=1 CC=$(cross_cc) GO_TAGS="seccomp urfave_cli_no_docs" go_build_into "$1" \
    github.com/opencontainers/runc "$v" "$v" \
    "-X main.version=$RUNC_VERSION -X main.gitCommit=ferry-build -extldflags -static" github.com/opencontainers/runc
}

build_cni() {
  local m=github.com/containernetworking/plugins v=v$CNI_VERSION p pkgs=()
  for p in main/bridge main/loopback main/ptp main/host-device main/macvlan main/ipvlan main/vlan \
           ipam/host-local ipam/static meta/portmap meta/bandwidth meta/firewall meta/tuning; do
    pkgs+=("$m/plugins/$p")
  done
  go_build_into "$1" "$m" "$v" "$v" "-X $m/pkg/utils/buildversion.BuildVersion=$v" "${pkgs[@]}"
}

build_crictl() {
  go_build_into "$1" sigs.k8s.io/cri-tools "$CRICTL_VERSION" "$CRICTL_VERSION" \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
}

build_helm() {
  local v=v$HELM_VERSION
  go_build_into "$1" helm.sh/helm/v3 "$v" "$v" \
    "-X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    helm.sh/helm/v3/cmd/helm
}

# flanneld is flannel's own main.go, built in a wrapper module without its Tencent Cloud VPC
# backend: that backend's SDK modules are not served by the Go module proxy, and main.go is the
# only place that pulls it in. Its UDP backend is cgo, hence a static cgo build.
build_flannel() {
  local m=github.com/flannel-io/flannel v=v$FLANNEL_VERSION w src
  w=$CACHE/work/$ARCH/flanneld@$v
  rm -rf "$w"; mkdir -p "$w"
  src=$(gomod_source "$m" "$v")
  grep -v "\"$m/pkg/backend/tencentvpc\"" "$src/main.go" > "$w/main.go"
  if grep -q tencentvpc "$w/main.go"; then echo "flannel $v's main.go names its Tencent backend in a way this script does not know"; exit 1; fi
  (cd "$w" && go mod init ferry.build/flanneld && go mod edit -go=1.26.0 -require="$m@$v" &&
     CGO_ENABLED=1 CC=$(cross_cc) go build -trimpath -tags "netgo osusergo" \
       -ldflags "-s -w -buildid= -X $m/pkg/version.Version=$v -extldflags -static" -o "$1/flanneld" .)
}

# Debian's iptables (nft and legacy), nft and busybox, with every library they load, unpacked
# from ARCH's packages: kube-proxy and flannel program the node's firewall from their images.
DEB_PACKAGES="iptables nftables busybox-static"
build_userland() {
  local pkgs p
  pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
           --no-replaces --no-enhances $(for p in $DEB_PACKAGES; do echo "$p:$ARCH"; done) |
         grep -E '^[a-z0-9]' | sed "s/:$ARCH\$//" | sort -u)
  mkdir -p "$1/debs" "$1/tree"
  download() { (cd "$1/debs" && apt-get download $(for p in $pkgs; do echo "$p:$ARCH"; done)); }
  download "$1" || { apt-get update -qq && download "$1"; }
  for p in "$1"/debs/*.deb; do dpkg-deb -x "$p" "$1/tree"; done
  (cd "$1/debs" && ls) > "$1/packages"
  rm -rf "$1/debs" "$1/tree/usr/share/doc" "$1/tree/usr/share/man" "$1/tree/usr/share/info" "$1/tree/usr/share/lintian"
  # The alternatives the packages' scripts would set: iptables is the nft backend, as on the
  # hosts Debian installs.
  for p in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf "${p/tables/tables-nft}" "$1/tree/usr/sbin/$p"
  done
  for p in sh cat echo ls mkdir mv rm sleep test cp chmod grep sed ipcalc; do ln -sf busybox "$1/tree/bin/$p"; done
  [ -x "$1/tree/usr/sbin/xtables-nft-multi" ] && [ -x "$1/tree/bin/busybox" ] ||
    { echo "iptables or busybox missing from the unpacked packages"; exit 1; }
}

# ------------------------------------------------------------------------------------- build
say "Kubernetes $VERSION for linux/$ARCH into $OUT (cache $CACHE, key $KEY)"
need_cross_toolchain

part kubernetes "$VERSION" build_kubernetes; K8S_BIN=$PART

# kubeadm is the authority on the images it pulls.
mapfile -t KUBEADM_IMAGES < <("$(runner)" "$K8S_BIN/kubeadm" config images list --kubernetes-version "$VERSION")
image_tag() { local i; for i in "${KUBEADM_IMAGES[@]}"; do case "$i" in "registry.k8s.io/$1:"*) echo "${i##*:}"; return;; esac; done; die "kubeadm $VERSION lists no $1 image (it lists: ${KUBEADM_IMAGES[*]})"; }
ETCD_TAG=$(image_tag etcd) COREDNS_TAG=$(image_tag coredns/coredns) PAUSE_TAG=$(image_tag pause)
say "kubeadm $VERSION pins etcd $ETCD_TAG, CoreDNS $COREDNS_TAG, pause $PAUSE_TAG"

want="v${ETCD_TAG%-*}"
ETCD_MOD=$(nearest_served go.etcd.io/etcd/server/v3 "$want") || die "etcd: no version near $want is served"
[ "$ETCD_MOD" = "$want" ] || { NOTES+=("etcd: $want is not served; built $ETCD_MOD, tagged $ETCD_TAG as kubeadm expects"); say "${NOTES[-1]}"; }
COREDNS_MOD=$(nearest_served github.com/coredns/coredns "$COREDNS_TAG") || die "CoreDNS: no version near $COREDNS_TAG is served"
[ "$COREDNS_MOD" = "$COREDNS_TAG" ] || { NOTES+=("CoreDNS: $COREDNS_TAG is not served; built $COREDNS_MOD, tagged $COREDNS_TAG as kubeadm expects"); say "${NOTES[-1]}"; }
if [ -z "${CRICTL_VERSION:-}" ]; then
  CRICTL_VERSION=$(nearest_served sigs.k8s.io/cri-tools "v1.$MINOR.0") || die "crictl: no cri-tools version near v1.$MINOR is served"
  [ "$CRICTL_VERSION" = "v1.$MINOR.0" ] || CRICTL_VERSION=$(gomod_versions sigs.k8s.io/cri-tools | grep -E '^v1\.[0-9]+\.[0-9]+$' | python3 -c '
import sys
m = int(sys.argv[1])
vs = [l.strip() for l in sys.stdin if l.strip()]
k = lambda v: tuple(int(x) for x in v[1:].split("."))
below = [v for v in vs if k(v)[1] <= m]
print(max(below, key=k) if below else min(vs, key=k))' "$MINOR")
  [ "$CRICTL_VERSION" = "v1.$MINOR.0" ] || { NOTES+=("crictl: cri-tools v1.$MINOR.x is not served; built $CRICTL_VERSION (crictl talks CRI v1 to any containerd)"); say "${NOTES[-1]}"; }
fi

part etcd "$ETCD_MOD" build_etcd; ETCD_BIN=$PART
part coredns "$COREDNS_MOD" build_coredns; COREDNS_BIN=$PART
part pause "$PAUSE_TAG" build_pause; PAUSE_BIN=$PART
part containerd "v$CONTAINERD_VERSION" build_containerd; CONTAINERD_BIN=$PART
part runc "v$RUNC_VERSION" build_runc; RUNC_BIN=$PART
part cni-plugins "v$CNI_VERSION" build_cni; CNI_BIN=$PART
part crictl "$CRICTL_VERSION" build_crictl; CRICTL_BIN=$PART
part helm "v$HELM_VERSION" build_helm; HELM_BIN=$PART
part flannel "v$FLANNEL_VERSION" build_flannel; FLANNEL_BIN=$PART
part debian-userland "bookworm" build_userland; USERLAND=$PART

# ----------------------------------------------------------------------------- node rootfs
assemble_rootfs() {
  local r=$1/rootfs
  mkdir -p "$r/usr/bin" "$r/usr/local/bin" "$r/usr/local/sbin" "$r/opt/cni/bin" "$r/etc/cni/net.d"
  install -m 0755 "$K8S_BIN/kubeadm" "$K8S_BIN/kubelet" "$K8S_BIN/kubectl" "$CRICTL_BIN/crictl" "$HELM_BIN/helm" "$r/usr/bin/"
  install -m 0755 "$CONTAINERD_BIN/containerd" "$CONTAINERD_BIN/containerd-shim-runc-v2" "$CONTAINERD_BIN/ctr" "$r/usr/local/bin/"
  install -m 0755 "$RUNC_BIN/runc" "$r/usr/local/sbin/runc"
  install -m 0755 "$CNI_BIN"/* "$r/opt/cni/bin/"
  printf 'runtime-endpoint: unix:///run/containerd/containerd.sock\nimage-endpoint: unix:///run/containerd/containerd.sock\n' > "$r/etc/crictl.yaml"
  write_node_units "$r" /usr/local/bin/containerd /usr/bin/kubelet
}

# ---------------------------------------------------------------------------------- images
# image_tree DIR PROGRAM...: DIR/usr/local/bin/PROGRAM for each, plus /etc/passwd and /tmp.
image_tree() {
  local d=$1; shift
  mkdir -p "$d/usr/local/bin" "$d/etc" "$d/tmp"
  chmod 1777 "$d/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' > "$d/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$d/etc/group"
  local p; for p in "$@"; do install -m 0755 "$p" "$d/usr/local/bin/"; done
}

assemble_images() {
  local out=$1 w=$1/.image-trees layout=$1/images
  mkdir -p "$w"
  oci_layout_init "$layout"
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    image_tree "$w/$c" "$K8S_BIN/$c"
    oci_image "$layout" "$c-$VERSION" "$ARCH" "$w/$c"
  done
  # kube-proxy runs /usr/local/bin/kube-proxy and programs the node's firewall with iptables or
  # nft, so its image carries Debian's (the backend Debian hosts use: nft).
  mkdir -p "$w/kube-proxy"; cp -a "$USERLAND/tree/." "$w/kube-proxy/"
  image_tree "$w/kube-proxy" "$K8S_BIN/kube-proxy"
  oci_image "$layout" "kube-proxy-$VERSION" "$ARCH" "$w/kube-proxy"
  image_tree "$w/etcd" "$ETCD_BIN/etcd" "$ETCD_BIN/etcdctl"
  oci_image "$layout" "etcd-$ETCD_TAG" "$ARCH" "$w/etcd"
  # CoreDNS's Deployment passes only arguments: the entrypoint is the image's.
  mkdir -p "$w/coredns"; install -m 0755 "$COREDNS_BIN/coredns" "$w/coredns/coredns"
  oci_image "$layout" "coredns-$COREDNS_TAG" "$ARCH" "$w/coredns" /coredns
  mkdir -p "$w/pause"; install -m 0755 "$PAUSE_BIN/pause" "$w/pause/pause"
  oci_image "$layout" "pause-$PAUSE_TAG" "$ARCH" "$w/pause" /pause
  mkdir -p "$w/flannel"; cp -a "$USERLAND/tree/." "$w/flannel/"
  image_tree "$w/flannel" "$FLANNEL_BIN/flanneld"
  mkdir -p "$w/flannel/opt/bin"; ln -sf /usr/local/bin/flanneld "$w/flannel/opt/bin/flanneld"
  oci_image "$layout" "flannel-v$FLANNEL_VERSION" "$ARCH" "$w/flannel" /usr/local/bin/flanneld
  oci_layout_gc "$layout"
  rm -rf "$w"
}

write_bundle() {
  local out=$1 i ref tag images=""
  mkdir -p "$out/manifests"
  sed -e "s|@FLANNEL_IMAGE@|$FLANNEL_IMAGE|g" "$HERE/lib/kube-flannel.yaml" > "$out/manifests/kube-flannel.yaml"
  for i in "${KUBEADM_IMAGES[@]}"; do
    ref=${i%:*} tag=${i##*:}
    images+="    - {ref: $i, source: \"oci:images:${ref##*/}-$tag\"}"$'\n'
  done
  images+="    - {ref: $FLANNEL_IMAGE, source: \"oci:images:flannel-v$FLANNEL_VERSION\"}"$'\n'
  cat > "$out/bundle.yaml" <<EOF
# Written by scripts/build-kubernetes.sh from Go modules: Kubernetes $VERSION, linux/$ARCH,
# etcd $ETCD_TAG, CoreDNS $COREDNS_TAG, pause $PAUSE_TAG, containerd $CONTAINERD_VERSION, runc $RUNC_VERSION,
# CNI plugins v$CNI_VERSION, crictl $CRICTL_VERSION, helm v$HELM_VERSION, flannel v$FLANNEL_VERSION.
apiVersion: ferry.dev/v1alpha1
kind: Bundle
metadata: {name: kubernetes-$ARCH, version: ${VERSION#v}}
spec:
  kubernetes: {version: $VERSION}
  platforms: [linux/$ARCH]
  rootfs: [{path: rootfs}]
  manifests: [{path: manifests}]
  # Every image kubeadm pulls for $VERSION (\`kubeadm config images list\`) and the CNI's, built here.
  images:
$images  # Applied on master0 once kubeadm is done: without a CNI no node becomes Ready.
  launch:
    - manifests: manifests/kube-flannel.yaml
EOF
}

FLANNEL_IMAGE=ghcr.io/flannel-io/flannel:v$FLANNEL_VERSION
STEP=$((STEP + 1))
printf 'build-kubernetes: [%2d/%d] %-26s ' "$STEP" "$STEPS" "rootfs and images" >&2
t=$(now)
STAGE=$CACHE/trees/.stage-$VERSION-$ARCH-$$
rm -rf "$STAGE"; mkdir -p "$STAGE"
trap 'rm -rf "$STAGE"' EXIT
assemble_rootfs "$STAGE"
if ! assemble_images "$STAGE" > "$CACHE/logs/images-$VERSION-$ARCH.log" 2>&1; then
  echo >&2; say "FAILED: the images; the last lines of $CACHE/logs/images-$VERSION-$ARCH.log:"
  tail -n 25 "$CACHE/logs/images-$VERSION-$ARCH.log" | sed 's/^/    /' >&2; exit 1
fi
write_bundle "$STAGE"
echo "done in $(( $(now) - t )) s" >&2

COLD=$(( $(now) - T0 ))
{
  echo "kubernetes: $VERSION"
  echo "arch: $ARCH"
  echo "built-by: scripts/build-kubernetes.sh (key $KEY, $(go version | cut -d' ' -f3))"
  echo "kubeadm-images:"; for i in "${KUBEADM_IMAGES[@]}"; do echo "  - $i"; done
  echo "modules:"
  echo "  - k8s.io/kubernetes $VERSION (staging $STAGING)"
  echo "  - go.etcd.io/etcd/server/v3 $ETCD_MOD"
  echo "  - github.com/coredns/coredns $COREDNS_MOD"
  echo "  - github.com/containerd/containerd/v2 v$CONTAINERD_VERSION"
  echo "  - github.com/opencontainers/runc v$RUNC_VERSION"
  echo "  - github.com/containernetworking/plugins v$CNI_VERSION"
  echo "  - sigs.k8s.io/cri-tools $CRICTL_VERSION"
  echo "  - helm.sh/helm/v3 v$HELM_VERSION"
  echo "  - github.com/flannel-io/flannel v$FLANNEL_VERSION"
  echo "debian-packages: $(tr '\n' ' ' < "$USERLAND/packages")"
  echo "notes:"; for i in "${NOTES[@]}"; do echo "  - $i"; done
  echo "build-seconds: $COLD"
  echo "components-built: $BUILT of 11"
} > "$STAGE/BUILD-INFO"
rm -rf "$TREE"; mv "$STAGE" "$TREE"; trap - EXIT
prune_beside "$TREE" "$CACHE/trees/$VERSION-$ARCH-"
publish
say "Kubernetes $VERSION linux/$ARCH written to $OUT"
for i in "${NOTES[@]}"; do say "note: $i"; done
say "time: $COLD s, $BUILT of 11 components built in this run, the others from the cache (a second run copies the finished tree)"
say "next: ferry build $OUT/bundle.yaml -o installer --key vendor.key"
