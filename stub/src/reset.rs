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

use crate::cluster::Role;
use crate::ssh::RemoteHost;
use anyhow::{Result, bail};
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

/// Entry point of `installer reset`.
pub fn run(args: &crate::cli::ClusterCommandArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let only: Vec<String> = args
            .run
            .hosts
            .iter()
            .flat_map(|h| h.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        // `--hosts` alone: those hosts, reached with the flags' SSH settings (a cluster may
        // be gone or half-made, so nothing else is needed); otherwise the located cluster.
        let found = if only.is_empty() || args.master.is_some() {
            crate::run::locate(args).await?
        } else {
            let a = &args.run;
            let cluster = crate::cluster::resolve(None, &crate::run::locate::overrides(a, only.clone()))?;
            let opts = crate::ssh::client::SshOptions {
                known_hosts: cluster.known_hosts.clone(),
                accept_new: a.accept_new_host_keys,
                connect_timeout: std::time::Duration::from_secs(a.connect_timeout),
                keepalive: std::time::Duration::from_secs(a.keepalive.max(1)),
                secrets: crate::run::secrets(a)?,
            };
            let jump = crate::run::locate::jump_for(&cluster, &opts).await?;
            let local_state = crate::run::local_state_dir(&a.installer, &cluster.name);
            crate::run::locate::Found { cluster, opts, jump, local_state }
        };
        let targets: Vec<String> =
            if only.is_empty() { found.cluster.hosts.iter().map(|h| h.ip.clone()).collect() } else { only.clone() };
        let payload = crate::verify::open_payload(&args.run.installer)?;
        let rootfs: Vec<String> = payload
            .index()
            .entries
            .iter()
            .filter_map(|e| e.path.strip_prefix("rootfs/").or_else(|| e.path.strip_prefix("files/")).map(|p| format!("/{p}")))
            .collect();
        let containerd_ours = rootfs.iter().any(|p| p.ends_with("/bin/containerd"));
        let list = rootfs.join("\n");
        // Workers first, masters last: nodes leave while the control plane is still there.
        let mut order: Vec<String> = targets.clone();
        order.sort_by_key(|ip| found.cluster.hosts.iter().any(|h| &h.ip == ip && h.is(Role::Master)));
        let found = Arc::new(found);
        let results = crate::run::parallel(order.len(), args.run.parallel, |i| {
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
        // The whole cluster is gone: so is its saved description beside the installer.
        if only.is_empty() {
            let _ = std::fs::remove_dir_all(&found.local_state);
        }
        Ok(())
    })
}
