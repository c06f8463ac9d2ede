//! The phases of `installer reset`, which takes ferry's cluster off some or all of its hosts.
//!
//! Owns the teardown: [`Leave`] (the hosts going are drained and their Node objects deleted
//! through a master that stays), [`Teardown`] (workers, then masters, each host in parallel:
//! `kubeadm reset -f`, then what kubeadm leaves behind by its own account — CNI config and
//! state, iptables and IPVS rules, kubeconfigs — then ferry's units, the rootfs binaries and
//! `spec.files` it laid down, containerd's config when ferry installed it, sysctl and module
//! drop-ins, the `/etc/hosts` block, ferry's registry and state directories), and [`Forget`]
//! (the cluster's description loses the hosts, or goes with the whole cluster).
//!
//! Every step tolerates "already gone", so a reset that stopped continues by running it again,
//! and a host ferry never installed is left untouched with a note. The engine runs these
//! phases unrecorded ([`Engine::unrecorded`]): a teardown removes the records it would write.

use crate::cluster::Role;
use crate::run::Ctx;
use crate::run::engine::{BoxFuture, Decision, Engine, Outcome, Phase};
use crate::ssh::RemoteHost;
use anyhow::{Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// What the teardown script prints on a host ferry never installed.
const NEVER: &str = "ferry-reset: nothing to do";

/// What the teardown left on each host, for the summary.
pub type Tally = Arc<Mutex<BTreeMap<String, Torn>>>;

/// What the teardown did on one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Torn {
    /// ferry's cluster was taken off it.
    Reset,
    /// ferry never installed it: nothing was touched.
    NeverInstalled,
}

impl Torn {
    /// The summary line's words for it.
    pub fn words(self) -> &'static str {
        match self {
            Torn::Reset => "reset",
            Torn::NeverInstalled => "nothing to do (note: ferry never installed this host)",
        }
    }
}

/// Which hosts a reset takes: all of the cluster, or some while the rest stays.
#[derive(Clone, Debug)]
pub struct Going {
    /// The hosts torn down.
    pub hosts: BTreeSet<String>,
    /// Whether they are the whole cluster.
    pub whole: bool,
    /// Whether the cluster is one ferry has a description of (not bare hosts from the flags).
    pub known: bool,
}

/// Phase leave: through the first master that stays, the going hosts are drained and their Node
/// objects deleted, so the cluster does not list them NotReady forever. Best effort: a cluster
/// that is already broken can still be reset, with a warning.
pub struct Leave(pub Arc<Going>);

impl<H: RemoteHost> Phase<H> for Leave {
    fn name(&self) -> &'static str {
        "leave"
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, _todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(keeper) = keeper(&engine.ctx, &self.0) else { return Ok(()) };
            let (ctx, h) = (engine.ctx.clone(), engine.hosts[keeper].clone());
            let ip = ctx.cluster.hosts[keeper].ip.clone();
            match self.run_host(ctx.clone(), h, keeper).await {
                Ok(_) => ctx.rep.event(&ip, "leave", "done", "the reset hosts left the cluster", serde_json::json!({})),
                Err(e) => ctx.rep.line(
                    "warning",
                    &format!("warning: the cluster could not be told through {ip} that the reset hosts leave ({e:#}); their Node objects may remain"),
                    serde_json::json!({"host": ip}),
                ),
            }
            Ok(())
        })
    }

    fn run_host(self: Arc<Self>, _ctx: Arc<Ctx>, h: Arc<H>, _i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let kc = crate::node::ADMIN_CONF;
            let list = format!(
                "kubectl --kubeconfig {kc} get nodes -o jsonpath='{{range .items[*]}}{{.metadata.name}} {{.status.addresses[?(@.type==\"InternalIP\")].address}}{{\"\\n\"}}{{end}}'"
            );
            let out = h.run(&list, b"").await?;
            if !out.ok() {
                bail!("listing nodes: {}", out.tail(3));
            }
            for line in out.text().lines() {
                let Some((name, ip)) = line.split_once(' ') else { continue };
                if !self.0.hosts.contains(ip.trim()) {
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
            Ok(Outcome::Quiet)
        })
    }
}

/// The first master that is not going: the cluster's voice while the others leave.
pub fn keeper(ctx: &Ctx, going: &Going) -> Option<usize> {
    ctx.cluster.hosts.iter().position(|h| h.is(Role::Master) && !going.hosts.contains(&h.ip))
}

/// Phase reset: the teardown script on every going host of one kind (workers, or masters),
/// in parallel. Workers go first, so nodes leave while the control plane is still there.
pub struct Teardown {
    going: Arc<Going>,
    masters: bool,
    /// The rootfs and `spec.files` paths the installer laid down, one per line.
    paths: Arc<String>,
    containerd_ours: bool,
    tally: Tally,
}

impl Teardown {
    /// The teardown of the going workers, then of the going masters, both removing what `ctx`'s
    /// installer laid down (listed once, shared); each host's result goes to `tally`.
    pub fn workers_then_masters(ctx: &Ctx, going: Arc<Going>, tally: Tally) -> [Teardown; 2] {
        let paths: Vec<String> = ctx
            .payload
            .index()
            .entries
            .iter()
            .filter_map(|e| {
                e.path.strip_prefix("rootfs/").or_else(|| e.path.strip_prefix("files/")).map(|p| format!("/{p}"))
            })
            .collect();
        let containerd_ours = paths.iter().any(|p| p.ends_with("/bin/containerd"));
        let paths = Arc::new(paths.join("\n"));
        [false, true].map(|masters| Teardown {
            going: going.clone(),
            masters,
            paths: paths.clone(),
            containerd_ours,
            tally: tally.clone(),
        })
    }
}

impl<H: RemoteHost> Phase<H> for Teardown {
    fn name(&self) -> &'static str {
        "reset"
    }

    fn should_run(&self, ctx: &Ctx, i: usize, _state: &crate::run::records::State) -> Decision {
        let host = &ctx.cluster.hosts[i];
        if self.going.hosts.contains(&host.ip) && host.is(Role::Master) == self.masters {
            Decision::Run
        } else {
            Decision::Pass
        }
    }

    fn run_host(self: Arc<Self>, _ctx: Arc<Ctx>, h: Arc<H>, _i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let out = h.run(&script(self.containerd_ours), self.paths.as_bytes()).await?;
            if !out.ok() {
                bail!("{}", out.tail(6));
            }
            let torn = if out.text().contains(NEVER) { Torn::NeverInstalled } else { Torn::Reset };
            self.tally.lock().unwrap_or_else(|e| e.into_inner()).insert(h.addr().to_string(), torn);
            Ok(match torn {
                Torn::Reset => Outcome::Done { record: None, message: "reset".into(), data: serde_json::json!({}) },
                Torn::NeverInstalled => Outcome::Skipped(torn.words().into()),
            })
        })
    }
}

/// Phase forget: the whole cluster gone, its description beside the installer goes too; some
/// hosts gone from a known cluster, the description no longer lists them, here and on the
/// first master that stays, so `check`, `join` and `run` no longer expect them.
pub struct Forget(pub Arc<Going>);

impl<H: RemoteHost> Phase<H> for Forget {
    fn name(&self) -> &'static str {
        "forget"
    }

    fn clock(&self) -> Option<&'static str> {
        None
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, _todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let ctx = &engine.ctx;
            if self.0.whole {
                return match std::fs::remove_dir_all(&ctx.local_state) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        bail!("removing the cluster's saved state {}: {e}", ctx.local_state.display())
                    }
                    _ => Ok(()),
                };
            }
            let Some(keeper) = keeper(ctx, &self.0).filter(|_| self.0.known) else { return Ok(()) };
            let mut cluster = ctx.cluster.clone();
            cluster.hosts.retain(|h| !self.0.hosts.contains(&h.ip));
            let text = crate::cluster::to_file(&cluster);
            crate::cluster::locate::save_local(&ctx.local_state, &text)?;
            crate::run::put_file(engine.hosts[keeper].as_ref(), crate::node::CLUSTER_FILE, "0644", text.as_bytes())
                .await
        })
    }

    fn run_host(self: Arc<Self>, _ctx: Arc<Ctx>, _h: Arc<H>, _i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async { bail!("forget works on the cluster's description, not on one host") })
    }
}

/// The teardown script; `containerd_ours` (ferry's rootfs brought containerd) takes containerd,
/// its config and its state too. The paths to remove arrive on stdin, one per line.
/// A state directory that is a mount point (a data disk at `/var/lib/ferry` or
/// `/var/lib/kubelet`) cannot be removed, only emptied (`rm -rf` does that, then fails on the
/// directory itself), so "never installed" means `/var/lib/ferry` is missing *or empty*.
pub fn script(containerd_ours: bool) -> String {
    format!(
        r#"set -u
if [ -z "$(ls -A /var/lib/ferry 2>/dev/null)" ] && [ ! -e /etc/ferry ] && [ ! -e /etc/systemd/system/ferry-lb.service ] && [ ! -e /etc/systemd/system/ferry-registry.service ]; then
  echo "{NEVER}: ferry never installed this host"; exit 0
fi
paths=$(cat)
if command -v kubeadm >/dev/null 2>&1; then kubeadm reset -f >/tmp/ferry-reset.log 2>&1 || {{ echo "kubeadm reset -f failed:"; tail -n 5 /tmp/ferry-reset.log; exit 1; }}; fi
for u in kubelet ferry-lb ferry-registry ferry-registry-previous ferry-service-route{ctd}; do systemctl disable --now $u.service >/dev/null 2>&1; done
rm -rf /etc/cni/net.d /var/lib/cni /run/flannel
if command -v iptables >/dev/null 2>&1; then for t in filter nat mangle raw; do iptables -t $t -F 2>/dev/null; iptables -t $t -X 2>/dev/null; done; fi
command -v ipvsadm >/dev/null 2>&1 && ipvsadm --clear
for ip in $(ip -o link show 2>/dev/null | awk -F': ' '/ (cni0|flannel\.1|kube-ipvs0)[:@]/{{print $2}}' | cut -d@ -f1); do ip link delete "$ip" 2>/dev/null; done
echo "$paths" | while IFS= read -r f; do [ -n "$f" ] && rm -f "$f"; done
# Unit drop-in directories the rootfs brought (kubelet.service.d) go once empty.
echo "$paths" | while IFS= read -r f; do case "$f" in /etc/systemd/system/*.d/*) rmdir "${{f%/*}}" 2>/dev/null;; esac; done
rm -f /etc/systemd/system/ferry-lb.service /etc/systemd/system/ferry-registry.service /etc/systemd/system/ferry-registry-previous.service /etc/systemd/system/ferry-service-route.service /etc/modules-load.d/ferry.conf /etc/sysctl.d/99-ferry.conf
rm -rf /etc/kubernetes /var/lib/kubelet /var/lib/etcd /root/.kube /etc/ferry /var/lib/ferry{ctd_dirs}
if grep -q '^# BEGIN ferry$' /etc/hosts; then sed '/^# BEGIN ferry$/,/^# END ferry$/d' /etc/hosts > /tmp/ferry-hosts && cat /tmp/ferry-hosts > /etc/hosts; rm -f /tmp/ferry-hosts; fi
systemctl daemon-reload
echo "ferry-reset: done"
"#,
        ctd = if containerd_ours { " containerd" } else { "" },
        ctd_dirs = if containerd_ours { " /etc/containerd /var/lib/containerd /run/containerd" } else { "" },
    )
}
