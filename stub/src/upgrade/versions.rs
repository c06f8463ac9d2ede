//! Which Kubernetes upgrades are allowed: the rules kubeadm enforces, checked before anything
//! changes so that a refusal names both versions instead of failing half-way.
//!
//! Owns version parsing and the judgement of a cluster's versions against the installer's. Pure:
//! no I/O, so every rule is unit-tested.

use std::cmp::Ordering;
use std::fmt;

/// A Kubernetes release, `vMAJOR.MINOR.PATCH` (any pre-release or build suffix ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl Version {
    /// Parses `v1.36.3`, `1.36.3`, `v1.37.0-rc.1` or `v1.36.3+k3s1`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches('v');
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version { major: parts.next()??, minor: parts.next()??, patch: parts.next()?? };
        parts.next().is_none().then_some(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// How many minor versions a kubelet may lag the control plane (Kubernetes' skew policy since
/// v1.28).
pub const KUBELET_MAX_LAG: u32 = 3;

/// What the upgrade will do, when it is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A newer minor, or a newer patch of the same minor.
    Upgrade,
    /// The cluster's control plane is at the target already: a resumed upgrade, or nodes
    /// still to follow.
    Continue,
}

/// Judges an upgrade of a cluster whose control plane is at `cluster` and whose kubelets are
/// at `kubelets` (node name, version) to `target`. Every refusal is one line naming both
/// versions; an empty list of refusals means the upgrade may go.
pub fn judge(cluster: Version, kubelets: &[(String, Version)], target: Version) -> Result<Step, Vec<String>> {
    let mut refusals = Vec::new();
    let step = match target.cmp(&cluster) {
        Ordering::Less => {
            refusals.push(format!(
                "the cluster runs Kubernetes {cluster} and this installer brings {target}: a downgrade, which kubeadm \
                 does not support; use an installer of {cluster} or newer"
            ));
            Step::Upgrade
        }
        Ordering::Equal => Step::Continue,
        Ordering::Greater => Step::Upgrade,
    };
    if target.major != cluster.major {
        refusals.push(format!(
            "the cluster runs Kubernetes {cluster} and this installer brings {target}: another major version"
        ));
    } else if target.minor > cluster.minor + 1 {
        let next = Version { major: cluster.major, minor: cluster.minor + 1, patch: 0 };
        refusals.push(format!(
            "the cluster runs Kubernetes {cluster} and this installer brings {target}: that skips a minor version, \
             which kubeadm refuses; upgrade to v{}.{}.x first with that release's installer",
            next.major, next.minor
        ));
    }
    for (node, kubelet) in kubelets {
        if *kubelet > target {
            refusals
                .push(format!("node {node}'s kubelet is {kubelet}, newer than this installer's {target}: a downgrade"));
        } else if kubelet.major != target.major || target.minor.saturating_sub(kubelet.minor) > KUBELET_MAX_LAG {
            refusals.push(format!(
                "node {node}'s kubelet is {kubelet}: more than {KUBELET_MAX_LAG} minor versions behind {target}, which \
                 the control plane would not serve; upgrade that node with an older installer first"
            ));
        }
    }
    if refusals.is_empty() { Ok(step) } else { Err(refusals) }
}

/// The installer that last changed the cluster, as its own index says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// The bundle's `metadata.name`.
    pub bundle: String,
    /// The bundle's `metadata.version`.
    pub version: String,
    /// Build time, seconds since the Unix epoch.
    pub created: u64,
    /// The installer build (hex SHA-256 of its trailer).
    pub id: String,
}

/// Refuses an installer built before the one that last changed the cluster (`installed`): its
/// rootfs and images would be older than what runs, whatever its Kubernetes version says.
pub fn judge_release(installed: &Release, new: &Release) -> Result<(), String> {
    if installed.id == new.id || new.created >= installed.created {
        return Ok(());
    }
    Err(format!(
        "this installer ({} {}, built {}) is older than the one that last changed the cluster ({} {}, built {}); \
         use the newer installer",
        new.bundle,
        new.version,
        ferry_core::units::rfc3339(new.created),
        installed.bundle,
        installed.version,
        ferry_core::units::rfc3339(installed.created),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_what_kubernetes_prints() {
        assert_eq!(v("v1.36.3"), Version { major: 1, minor: 36, patch: 3 });
        assert_eq!(v("1.37.0-rc.1"), Version { major: 1, minor: 37, patch: 0 });
        assert_eq!(v("v1.36.3+k3s1"), Version { major: 1, minor: 36, patch: 3 });
        for bad in ["", "v1.36", "latest", "v1.36.3.4", "v1.x.3"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert_eq!(v("v1.36.3").to_string(), "v1.36.3");
    }

    #[test]
    fn next_minor_and_patch_are_upgrades() {
        let k = |s: &str| vec![("n1".to_string(), v(s))];
        assert_eq!(judge(v("v1.36.3"), &k("v1.36.3"), v("v1.37.2")), Ok(Step::Upgrade));
        assert_eq!(judge(v("v1.37.1"), &k("v1.37.1"), v("v1.37.2")), Ok(Step::Upgrade));
        // Resumed: the control plane is done, a node is still on the old kubelet.
        assert_eq!(judge(v("v1.37.2"), &k("v1.36.3"), v("v1.37.2")), Ok(Step::Continue));
    }

    #[test]
    fn downgrade_and_skipped_minor_are_refused_naming_both_versions() {
        let down = judge(v("v1.37.2"), &[], v("v1.36.3")).unwrap_err();
        assert_eq!(down.len(), 1);
        assert!(
            down[0].contains("v1.37.2") && down[0].contains("v1.36.3") && down[0].contains("downgrade"),
            "{down:?}"
        );
        let skip = judge(v("v1.35.1"), &[], v("v1.37.2")).unwrap_err();
        assert!(
            skip[0].contains("skips a minor") && skip[0].contains("v1.36.x") && skip[0].contains("v1.35.1"),
            "{skip:?}"
        );
        let major = judge(v("v1.37.2"), &[], v("v2.0.0")).unwrap_err();
        assert!(major[0].contains("another major"), "{major:?}");
    }

    #[test]
    fn kubelet_skew_is_judged_per_node() {
        let kubelets = vec![
            ("old".to_string(), v("v1.33.9")),
            ("ok".to_string(), v("v1.34.0")),
            ("new".to_string(), v("v1.38.0")),
        ];
        let r = judge(v("v1.37.0"), &kubelets, v("v1.37.2")).unwrap_err();
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].contains("node old") && r[0].contains("v1.33.9") && r[0].contains("more than 3"), "{r:?}");
        assert!(r[1].contains("node new") && r[1].contains("newer"), "{r:?}");
    }

    #[test]
    fn an_older_build_is_refused() {
        let rel = |id: &str, created| Release { bundle: "p".into(), version: "1".into(), created, id: id.into() };
        assert!(judge_release(&rel("a", 100), &rel("b", 200)).is_ok());
        assert!(judge_release(&rel("a", 100), &rel("a", 100)).is_ok());
        let e = judge_release(&rel("a", 200), &rel("b", 100)).unwrap_err();
        assert!(e.contains("older than the one that last changed the cluster"), "{e}");
    }
}
