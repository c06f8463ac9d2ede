#!/bin/sh
# STAND-IN apiserver endpoint (CGI under busybox httpd on :6443; ferry tests only). Ops:
#   ?op=leader                                  the master holding the modelled cluster state
#   ?op=join&name=N&ip=I&role=R&token=T[&key=K] register a node; checks token and certificate key
# Masters that are not the leader forward to it, as apiservers share one etcd.
. /usr/lib/ferry-standin/lib.sh
printf 'Content-Type: text/plain\r\n\r\n'
q() { echo "$QUERY_STRING" | tr '&' '\n' | sed -n "s/^$1=//p" | head -n1; }
leader=$(cat "$API/leader" 2>/dev/null)
case "$(q op)" in
  leader) echo "$leader" ;;
  join)
    if [ ! -d "$API/nodes" ]; then
      bb_get "http://$leader:6443/cgi-bin/api?$QUERY_STRING" || echo "error: the leader $leader does not answer"
      exit 0
    fi
    grep -qx "$(q token)" "$API/tokens" 2>/dev/null || { echo "error: token id \"$(q token | cut -d. -f1)\" is invalid for this cluster or it has expired"; exit 0; }
    if [ "$(q role)" = control-plane ]; then
      read -r key t < "$API/certificate-key" 2>/dev/null
      if [ "$(q key)" != "$key" ] || [ $(( $(date +%s) - ${t:-0} )) -gt 7200 ]; then
        echo "error: Secret \"kubeadm-certs\" was not found in the \"kube-system\" Namespace. This Secret might have expired. Please, run \`kubeadm init phase upload-certs --upload-certs\` on a control plane to generate a new one"
        exit 0
      fi
    fi
    echo "$(q name) $(q ip) $(q role)" > "$API/nodes/$(q name)"
    echo ok ;;
  *) echo "error: unknown op" ;;
esac
