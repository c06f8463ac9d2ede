//! Owns what the node's kernel offers Kubernetes: whether each feature a node needs (overlay for
//! containerd's snapshots, br_netfilter so bridged pod traffic passes iptables, VXLAN for the
//! usual overlay CNIs) is built in, loaded, loadable or missing.
//!
//! A built-in module shows in `/sys/module` only when it has parameters, and `/lib/modules` may be
//! absent (containers, minimal images, kernels without loadable modules), so what a feature
//! registers counts too: its filesystem in `/proc/filesystems`, or br_netfilter's `net.bridge`
//! sysctls.

use crate::protocol::KernelSupport;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The kernel features every Kubernetes node is checked for.
pub const NODE_FEATURES: &[&str] = &["overlay", "br_netfilter", "vxlan"];

/// Where the kernel's own files are, so tests can point at a made-up kernel.
pub struct KernelView {
    /// `/proc`.
    pub proc: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
    /// `/lib/modules/<release>` of the running kernel.
    pub modules: PathBuf,
}

impl KernelView {
    /// The running kernel's.
    pub fn running() -> KernelView {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        KernelView { proc: "/proc".into(), sys: "/sys".into(), modules: Path::new("/lib/modules").join(release.trim()) }
    }

    /// Whether `name` (a module name) is built in or loaded.
    pub fn present(&self, name: &str) -> bool {
        listed(&self.modules.join("modules.builtin"), name)
            || self.sys.join("module").join(name).exists()
            || (name == "br_netfilter" && self.proc.join("sys/net/bridge/bridge-nf-call-iptables").exists())
            || std::fs::read_to_string(self.proc.join("filesystems"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.split_whitespace().last() == Some(name))
    }

    /// Whether `name` is usable now, after a `modprobe`, or not at all.
    pub fn support(&self, name: &str) -> KernelSupport {
        if self.present(name) {
            KernelSupport::Present
        } else if listed(&self.modules.join("modules.dep"), name) {
            KernelSupport::Loadable
        } else {
            KernelSupport::Missing
        }
    }

    /// [`support`](Self::support) of every feature in [`NODE_FEATURES`].
    pub fn node_features(&self) -> BTreeMap<String, KernelSupport> {
        NODE_FEATURES.iter().map(|f| (f.to_string(), self.support(f))).collect()
    }
}

/// Whether a `modules.builtin` / `modules.dep` file names module `name` (`kernel/…/name.ko`,
/// compressed or not; `-` and `_` are the same in module names).
fn listed(file: &Path, name: &str) -> bool {
    let want = name.replace('-', "_");
    std::fs::read_to_string(file).unwrap_or_default().lines().any(|line| {
        let path = line.split(':').next().unwrap_or_default();
        let file = path.rsplit('/').next().unwrap_or_default();
        let module = file.split(".ko").next().unwrap_or_default();
        file.contains(".ko") && module.replace('-', "_") == want
    })
}

/// Whether a module is built in or loaded on the running kernel (no modprobe needed then).
pub fn module_present(name: &str) -> bool {
    KernelView::running().present(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(files: &[(&str, &str)]) -> (tempfile::TempDir, KernelView) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let view = KernelView {
            proc: dir.path().join("proc"),
            sys: dir.path().join("sys"),
            modules: dir.path().join("lib/modules/6.1.0"),
        };
        (dir, view)
    }

    #[test]
    fn built_in_features_count_without_lib_modules() {
        // Like the lab's kernel: nothing loadable, /lib/modules absent, everything built in.
        let (_d, k) = kernel(&[
            ("proc/filesystems", "nodev\tsysfs\nnodev\toverlay\n"),
            ("proc/sys/net/bridge/bridge-nf-call-iptables", "1\n"),
            ("sys/module/vxlan/parameters/udp_port", "4789\n"),
        ]);
        let got = k.node_features();
        assert!(got.values().all(|s| *s == KernelSupport::Present), "{got:?}");
    }

    #[test]
    fn installed_modules_are_loadable_and_others_missing() {
        let (_d, k) = kernel(&[
            ("proc/filesystems", "nodev\tsysfs\n"),
            (
                "lib/modules/6.1.0/modules.dep",
                "kernel/fs/overlayfs/overlay.ko.xz:\nkernel/net/bridge/br_netfilter.ko.zst: kernel/net/bridge/bridge.ko.zst\n",
            ),
        ]);
        assert_eq!(k.support("overlay"), KernelSupport::Loadable);
        assert_eq!(k.support("br_netfilter"), KernelSupport::Loadable);
        assert_eq!(k.support("vxlan"), KernelSupport::Missing);
    }

    #[test]
    fn modules_builtin_lists_count_as_present() {
        let (_d, k) = kernel(&[("lib/modules/6.1.0/modules.builtin", "kernel/drivers/net/vxlan/vxlan.ko\n")]);
        assert_eq!(k.support("vxlan"), KernelSupport::Present);
        assert_eq!(k.support("overlay"), KernelSupport::Missing);
    }
}
