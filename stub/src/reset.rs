//! `installer reset [--hosts …]`: takes ferry's cluster off its hosts, leaving each ready for a
//! fresh `run`.
//!
//! Owns the teardown, per host in parallel: `kubeadm reset -f`, then what kubeadm leaves behind
//! (it says so itself): CNI config and state, iptables and IPVS rules, kubeconfigs; then ferry's
//! own units (ferry-lb, ferry-registry, and containerd when the bundle's rootfs installed it),
//! the rootfs binaries and `spec.files` ferry laid down (the installer's index lists them), containerd's config,
//! sysctl/module drop-ins, the `/etc/hosts` block, and ferry's registry and state directories.
//! Every step tolerates "already gone", so it is idempotent; a host with no trace of ferry is left
//! untouched with a note.
//!
//! [`reset`] is three steps: leave (the hosts going are drained and deleted through a master that
//! stays), teardown (every host in parallel, workers first), forget (the description loses them,
//! or is removed with the whole cluster). It does not go through `run`'s phase engine on purpose:
//! it records nothing (it removes the records), reaches hosts that may belong to no known
//! cluster, and reports each host in a fixed order once all are done.

use crate::cluster::Role;
use crate::cluster::locate::Found;
use crate::ssh::RemoteHost;
use anyhow::{Result, bail};
use payload_format::Payload;
use std::sync::Arc;

const NEVER: &str = "ferry-reset: nothing to do";

/// The teardown script: `$1` = 1 when ferry installed containerd. Rootfs paths arrive on stdin.
/// A state directory that is a mount point (a data disk at `/var/lib/ferry` or
/// `/var/lib/kubelet`) cannot be removed, only emptied (`rm -rf` does that, then fails on the
/// directory itself), so "never installed" means `/var/lib/ferry` is missing *or empty*.
fn script(containerd_ours: bool) -> String {
    format!(
        r#"set -u
if [ -z "$(ls -A /var/lib/ferry 2>/dev/null)" ] && [ ! -e /etc/ferry ] && [ ! -e /etc/systemd/system/ferry-lb.service ] && [ ! -e /etc/systemd/system/ferry-registry.service ]; then
  echo "{NEVER}: ferry never installed this host"; exit 0
fi
paths=$(cat)
if command -v kubeadm >/dev/null 2>&1; then kubeadm reset -f >/tmp/ferry-reset.log 2>&1 || {{ echo "kubeadm reset -f failed:"; tail -n 5 /tmp/ferry-reset.log; exit 1; }}; fi
for u in kubelet ferry-lb ferry-registry ferry-service-route{ctd}; do systemctl disable --now $u.service >/dev/null 2>&1; done
rm -rf /etc/cni/net.d /var/lib/cni /run/flannel
if command -v iptables >/dev/null 2>&1; then for t in filter nat mangle raw; do iptables -t $t -F 2>/dev/null; iptables -t $t -X 2>/dev/null; done; fi
command -v ipvsadm >/dev/null 2>&1 && ipvsadm --clear
for ip in $(ip -o link show 2>/dev/null | awk -F': ' '/ (cni0|flannel\.1|kube-ipvs0)[:@]/{{print $2}}' | cut -d@ -f1); do ip link delete "$ip" 2>/dev/null; done
echo "$paths" | while IFS= read -r f; do [ -n "$f" ] && rm -f "$f"; done
# Unit drop-in directories the rootfs brought (kubelet.service.d) go once empty.
echo "$paths" | while IFS= read -r f; do case "$f" in /etc/systemd/system/*.d/*) rmdir "${{f%/*}}" 2>/dev/null;; esac; done
rm -f /etc/systemd/system/ferry-lb.service /etc/systemd/system/ferry-registry.service /etc/systemd/system/ferry-service-route.service /etc/modules-load.d/ferry.conf /etc/sysctl.d/99-ferry.conf
rm -rf /etc/kubernetes /var/lib/kubelet /var/lib/etcd /root/.kube /etc/ferry /var/lib/ferry{ctd_dirs}
if grep -q '^# BEGIN ferry$' /etc/hosts; then sed '/^# BEGIN ferry$/,/^# END ferry$/d' /etc/hosts > /tmp/ferry-hosts && cat /tmp/ferry-hosts > /etc/hosts; rm -f /tmp/ferry-hosts; fi
systemctl daemon-reload
echo "ferry-reset: done"
"#,
        ctd = if containerd_ours { " containerd" } else { "" },
        ctd_dirs = if containerd_ours { " /etc/containerd /var/lib/containerd /run/containerd" } else { "" },
    )
}

/// Takes ferry off `found`'s hosts, or only the `only` ones: they leave the cluster first (when
/// some stay), then are torn down (workers first), then the cluster forgets them. `known` says
/// whether `found` is a cluster ferry knows (rather than bare hosts from the flags).
pub async fn reset(found: Found, only: Vec<String>, known: bool, payload: &Payload, limit: usize) -> Result<()> {
    let targets: Vec<String> =
        if only.is_empty() { found.cluster.hosts.iter().map(|h| h.ip.clone()).collect() } else { only.clone() };
    if !only.is_empty() {
        leave_cluster(&found, &targets).await;
    }
    let found = Arc::new(found);
    teardown(&found, &targets, payload, limit).await?;
    // The whole cluster is gone: so is its saved description beside the installer. Some
    // hosts gone: the description no longer lists them, here and on the first master.
    if only.is_empty() {
        let _ = std::fs::remove_dir_all(&found.local_state);
    } else if known {
        forget_hosts(&found, &only).await?;
    }
    Ok(())
}

/// The teardown on every target in parallel, workers first, masters last: nodes leave while
/// the control plane is still there.
async fn teardown(found: &Arc<Found>, targets: &[String], payload: &Payload, limit: usize) -> Result<()> {
    let rootfs: Vec<String> = payload
        .index()
        .entries
        .iter()
        .filter_map(|e| {
            e.path.strip_prefix("rootfs/").or_else(|| e.path.strip_prefix("files/")).map(|p| format!("/{p}"))
        })
        .collect();
    let containerd_ours = rootfs.iter().any(|p| p.ends_with("/bin/containerd"));
    let list = rootfs.join("\n");
    let mut order: Vec<String> = targets.to_vec();
    order.sort_by_key(|ip| found.cluster.hosts.iter().any(|h| &h.ip == ip && h.is(Role::Master)));
    let results = crate::run::parallel(order.len(), limit, |i| {
        let (found, ip, list) = (found.clone(), order[i].clone(), list.clone());
        async move {
            let h = found.connect_one(&ip).await?;
            let out = h.run(&script(containerd_ours), list.as_bytes()).await?;
            if !out.ok() {
                bail!("{ip}: reset failed: {}", out.tail(6));
            }
            Ok(out.text().trim().to_string())
        }
    })
    .await;
    let mut errs = Vec::new();
    for (ip, r) in order.iter().zip(results) {
        match r {
            Ok(t) if t.contains(NEVER) => println!("{ip}: nothing to do (note: ferry never installed this host)"),
            Ok(_) => println!("{ip}: reset"),
            Err(e) => errs.push(format!("{e:#}")),
        }
    }
    if !errs.is_empty() {
        bail!("reset failed on {} host(s):\n  {}", errs.len(), errs.join("\n  "));
    }
    Ok(())
}

/// Drains the `targets` and deletes their Node objects through a master that stays, so the
/// cluster forgets them instead of listing them NotReady forever. Best effort: a cluster that is
/// already broken can still be reset, with a warning.
async fn leave_cluster(found: &Found, targets: &[String]) {
    let Some(keeper) = found.cluster.hosts.iter().find(|h| h.is(Role::Master) && !targets.contains(&h.ip)) else {
        return;
    };
    let kc = crate::node::ADMIN_CONF;
    let result: Result<()> = async {
        let h = found.connect_one(&keeper.ip).await?;
        let out = h
            .run(&format!("kubectl --kubeconfig {kc} get nodes -o jsonpath='{{range .items[*]}}{{.metadata.name}} {{.status.addresses[?(@.type==\"InternalIP\")].address}}{{\"\\n\"}}{{end}}'"), b"")
            .await?;
        if !out.ok() {
            bail!("listing nodes: {}", out.tail(3));
        }
        for line in out.text().lines() {
            let Some((name, ip)) = line.split_once(' ') else { continue };
            if !targets.iter().any(|t| t == ip.trim()) {
                continue;
            }
            let name = crate::ssh::quote(name);
            let cmd = format!(
                "kubectl --kubeconfig {kc} drain {name} --ignore-daemonsets --delete-emptydir-data --force --timeout=120s >/dev/null 2>&1; \
                 kubectl --kubeconfig {kc} delete node {name} --wait=false"
            );
            let out = h.run(&cmd, b"").await?;
            if !out.ok() {
                bail!("deleting node {name}: {}", out.tail(3));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!(
            "warning: the cluster could not be told through {} that the reset hosts leave ({e:#}); their Node objects may remain",
            keeper.ip
        );
    }
}

/// Removes `gone` from the cluster description, beside the installer and on the first master
/// that remains, so that `check`, `join` and `run` no longer expect them.
async fn forget_hosts(found: &Found, gone: &[String]) -> Result<()> {
    let mut cluster = found.cluster.clone();
    cluster.hosts.retain(|h| !gone.contains(&h.ip));
    let Some(m0) = cluster.hosts.iter().find(|h| h.is(Role::Master)).map(|h| h.ip.clone()) else {
        return Ok(());
    };
    let text = crate::cluster::to_file(&cluster);
    crate::cluster::locate::save_local(&found.local_state, &text)?;
    let h = found.connect_one(&m0).await?;
    crate::run::put_file(h.as_ref(), crate::node::CLUSTER_FILE, "0644", text.as_bytes()).await
}
