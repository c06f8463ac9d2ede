# Shared by the ferry test STAND-INS for kubeadm, kubelet and kubectl (see README.md).
# Installed as /usr/lib/ferry-standin/lib.sh. Not Kubernetes: a model of what ferry observes.
STANDIN_LIB=${STANDIN_LIB:-/usr/lib/ferry-standin}   # kubeadm finds it next to itself (see there)
STATE=/var/lib/ferry-standin            # records (calls.log, configs/) and the modelled cluster
API=$STATE/apiserver                    # the "etcd" of the model: nodes, tokens, keys (on the leader)
BB=$STANDIN_LIB/busybox                 # static busybox: httpd (the stand-in apiserver), wget
K8S_VERSION=$(cat "$STANDIN_LIB/version" 2>/dev/null || echo v1.36.3)

# Questions only (`kubeadm version`, `kubeadm config images list`) are also asked on the build
# machine, where `ferry build` runs the rootfs's kubeadm: they leave nothing behind.
[ -n "${STANDIN_NO_STATE:-}" ] || mkdir -p "$STATE/configs"

# record TOOL ARGS…: one line per call in calls.log.
record() { printf '%s %s\n' "$(date +%s)" "$*" >> "$STATE/calls.log"; }

# save_config TOOL FILE: a numbered copy of a config file a tool was given.
save_config() {
  n=$(ls "$STATE/configs" | wc -l)
  cp "$2" "$STATE/configs/$(printf %03d "$n")-$1-$(basename "$2")"
}

# yaml_get KEY FILE: the first `KEY: value` in FILE, quotes removed.
yaml_get() { sed -n "s/^[[:space:]-]*$1:[[:space:]]*//p" "$2" | head -n1 | tr -d "\"'"; }

# rand_hex N: N random hex digits.
rand_hex() { od -An -N"$(( ($1 + 1) / 2 ))" -tx1 /dev/urandom | tr -d ' \n' | cut -c1-"$1"; }
# rand_token: [a-z0-9]{6}.[a-z0-9]{16}
rand_token() { a=$(tr -dc 'a-z0-9' < /dev/urandom | head -c 22); echo "$(echo "$a" | cut -c1-6).$(echo "$a" | cut -c7-22)"; }

# host_ip NAME: NAME resolved through /etc/hosts (busybox's resolver cannot be trusted with NSS).
host_ip() {
  case "$1" in *[!0-9.]*) ip=$(awk -v n="$1" '{for (i = 2; i <= NF; i++) if ($i == n) {print $1; exit}}' /etc/hosts); echo "${ip:-$1}" ;; *) echo "$1" ;; esac
}

# bb_get URL: GET with a 5-second limit, body on stdout. Not `wget -T`: Debian 12's busybox
# 1.35 wget segfaults on -T (every call fails, so `kubeadm init` never saw the apiserver).
bb_get() { "$BB" timeout 5 "$BB" wget -q -O - "$1" 2>/dev/null; }

# api_get HOST:PORT PATH: GET from a stand-in apiserver (plain HTTP), body on stdout.
api_get() {
  h=${1%:*} p=${1##*:}
  bb_get "http://$(host_ip "$h"):$p$2"
}

# ca_hash FILE: kubeadm's discovery hash of a CA certificate (needs openssl).
ca_hash() { echo "sha256:$(openssl x509 -pubkey -noout -in "$1" | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1)"; }

# images for the modelled control plane (kubeadm's constants, as packer/src/images/controlplane.rs's
# TABLE; `ferry build` takes the bundle's list from this stand-in when the rootfs carries it).
etcd_tag() { case "$1" in v1.33.*) echo 3.5.21-0 ;; v1.34.*) echo 3.6.5-0 ;; v1.35.*) echo 3.6.6-0 ;; v1.36.*) echo 3.6.8-0 ;; *) echo 3.7.0-0 ;; esac; }
coredns_tag() { case "$1" in v1.33.*) echo v1.12.0 ;; v1.34.*) echo v1.12.1 ;; v1.35.*) echo v1.13.1 ;; v1.36.*) echo v1.14.2 ;; *) echo v1.14.6 ;; esac; }
pause_tag() { case "$1" in v1.33.*) echo 3.10 ;; v1.34.*|v1.35.*) echo 3.10.1 ;; *) echo 3.10.2 ;; esac; }
