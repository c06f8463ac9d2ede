//! `installer upgrade --revert-node HOST`: puts a node whose upgrade did not finish back as it
//! was before the upgrade touched it.
//!
//! Owns the reversal of one node: the programs and configuration kept under
//! [`PREVIOUS_DIR`] copied back, containerd and the kubelet restarted on them, the
//! node Ready and uncordoned. A node whose upgrade finished is refused: the cluster's control
//! plane may already rely on it, and the way back from a finished upgrade is the etcd snapshot.

use super::stage::PREVIOUS_DIR;
use crate::node::ADMIN_KUBECTL as KUBECTL;
use crate::run::checked;
use crate::ssh::{RemoteHost, quote};
use anyhow::{Result, bail};
use std::time::{Duration, Instant};

/// What the reversal needs to know about the node.
pub struct Target<'a> {
    /// The host's address.
    pub ip: &'a str,
    /// Its Node's name.
    pub node: &'a str,
    /// Whether the host's records say its upgrade finished.
    pub finished: bool,
}

/// Reverses the upgrade of `target` on `h`, with kubectl run on `speaker` (a master).
pub async fn revert<H: RemoteHost>(h: &H, speaker: &H, target: &Target<'_>) -> Result<String> {
    if target.finished {
        bail!(
            "{} finished its upgrade; --revert-node only puts back a node that has not (the etcd snapshot beside \
             the operator's state is the way back for the cluster)",
            target.ip
        );
    }
    let script = format!(
        r#"set -eo pipefail
B={PREVIOUS_DIR}
[ -d $B/root ] || {{ echo "nothing was kept on this node: its upgrade had not begun changing it" >&2; exit 3; }}
# A kubeadm that a cut-off upgrade left running finishes first.
mkdir -p /run/ferry; exec 9>/run/ferry/kubeadm-upgrade.lock; flock -w 3600 9
# Each file is copied beside its place and renamed over it: a running program (containerd) cannot
# be overwritten in place, and a half-copied file is never seen. The copy's name starts with a
# dot so that the kubelet, which reads every other file in its manifest directory, ignores it.
cd $B/root
find . ! -type d -print0 | while IFS= read -r -d '' f; do
  d=/${{f#./}}; t=$(dirname "$d")/.$(basename "$d").ferry-revert
  mkdir -p "$(dirname "$d")"
  cp -a "$f" "$t" || exit 1
  mv -f "$t" "$d" || exit 1
done
systemctl daemon-reload
systemctl restart containerd.service
systemctl restart kubelet.service
cat $B/for
"#
    );
    let out = h.run(&format!("bash -c {}", quote(&script)), b"").await?;
    if out.status == 3 {
        bail!("{}: {}", target.ip, out.tail(1));
    }
    if !out.ok() {
        bail!("putting back the old programs on {} exited with status {}: {}", target.ip, out.status, out.tail(4));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let get = format!("{KUBECTL} get node {} -o json", quote(target.node));
    loop {
        let o = speaker.run(&get, b"").await?;
        let ready = o.ok() && super::survey::parse_node(&o.text()).is_some_and(|n| n.ready);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} ({}) was not Ready within 300 s of getting its old programs back", target.ip, target.node);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    checked(speaker, &format!("{KUBECTL} uncordon {} 2>&1", quote(target.node)), b"", "kubectl uncordon").await?;
    let version = speaker.run(&get, b"").await?;
    let kubelet = super::survey::parse_node(&version.text()).map(|n| n.kubelet).unwrap_or_default();
    Ok(kubelet)
}
