//! Test installers for `installer run` on the lab: a rootfs carrying this machine's Debian
//! containerd, shim, ctr and runc with containerd's systemd unit, a busybox image built offline
//! with umoci (`docker.io/library/app:1`, with a `/hello` file), and a file of random padding so
//! distribution has something to carry.

use crate::registry::Layout;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A built, signed test installer and its key, in a directory that lives as long as it does.
pub struct RunBundle {
    /// Keeps the directory.
    pub dir: tempfile::TempDir,
    /// The installer.
    pub installer: PathBuf,
    /// The vendor's public key.
    pub public_key: PathBuf,
    /// The padding's bytes' SHA-256, hex (the file is `/opt/ferry-test/pad.bin` on the nodes,
    /// `files/opt/ferry-test/pad.bin` in the installer).
    pub pad_sha256: String,
    /// The bundle's name.
    pub name: String,
}

/// The bundle's spec: release `version`, `docker.io/library/app:1` from the layout's image `tag`.
fn spec_text(name: &str, version: &str, tag: &str) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {{name: {name}, version: {version}}}\nspec:\n  kubernetes: {{version: v1.36.3}}\n  platforms: [linux/amd64]\n  rootfs: [{{path: rootfs}}]\n  files: [{{path: pad.bin, dest: /opt/ferry-test/pad.bin}}]\n  images:\n    - {{ref: docker.io/library/app:1, source: \"oci:layout:{tag}\"}}\n"
    )
}

/// `ferry build SPEC -o OUT` signed with the bundle's key, offline, with `extra` flags.
fn build(d: &Path, spec: &Path, out: &Path, extra: &[&std::ffi::OsStr]) {
    crate::ok(
        Command::new(crate::release_bin("ferry"))
            .arg("build")
            .arg(spec)
            .arg("-o")
            .arg(out)
            .arg("--key")
            .arg(d.join("vendor.key"))
            .args(["--offline", "--allow-missing-images"])
            .args(extra),
    );
}

/// The next release of a [`run_bundle`] installer as a differential installer built on it:
/// `library/app:1` gets `hello` as its `/hello` (a new layer, config and manifest), the version
/// becomes 2.0.0, everything else stays. Returns the delta and the complete installer.
pub fn next_release(b: &RunBundle, hello: &[u8]) -> (PathBuf, PathBuf) {
    let d = b.dir.path();
    let layout = Layout::open(&d.join("layout"));
    layout.image("2", &[("/bin/busybox", None), ("/hello", Some(hello))], "amd64");
    let spec = d.join("bundle-2.yaml");
    std::fs::write(&spec, spec_text(&b.name, "2.0.0", "2")).unwrap();
    let (delta, complete) = (d.join("release-2.delta"), d.join("release-2.complete"));
    build(
        d,
        &spec,
        &delta,
        &["--base".as_ref(), b.installer.as_os_str(), "--complete-output".as_ref(), complete.as_os_str()],
    );
    (delta, complete)
}

fn copy(from: &str, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {from}: {e} (apt-get install containerd runc)"));
}

/// Builds the installer `name` with `pad_mib` MiB of padding (deterministic pseudo-random bytes).
pub fn run_bundle(name: &str, pad_mib: usize) -> RunBundle {
    let dir = crate::lasting(tempfile::Builder::new().prefix("ferry-run-").tempdir().unwrap());
    let d = dir.path();
    let rootfs = d.join("rootfs");
    for (from, to) in [
        ("/usr/bin/containerd", "usr/bin/containerd"),
        ("/usr/bin/containerd-shim-runc-v2", "usr/bin/containerd-shim-runc-v2"),
        ("/usr/bin/ctr", "usr/bin/ctr"),
        ("/usr/sbin/runc", "usr/sbin/runc"),
        ("/lib/systemd/system/containerd.service", "etc/systemd/system/containerd.service"),
    ] {
        copy(from, &rootfs.join(to));
    }
    let layout = Layout::init(&d.join("layout"));
    layout.image("1", &[("/bin/busybox", None), ("/hello", Some(b"hello from the bundle\n"))], "amd64");
    let mut pad = vec![0u8; pad_mib << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for c in pad.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    std::fs::write(d.join("pad.bin"), &pad).unwrap();
    let pad_sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&pad))
    };
    drop(pad);
    std::fs::write(d.join("bundle.yaml"), spec_text(name, "1.0.0", "1")).unwrap();
    crate::ok(Command::new(crate::release_bin("ferry")).arg("keygen").arg("-o").arg(d.join("vendor")));
    let installer = d.join("installer");
    build(d, &d.join("bundle.yaml"), &installer, &[]);
    RunBundle { public_key: d.join("vendor.pub"), installer, pad_sha256, dir, name: name.into() }
}

/// Takes back from lab nodes `1..=nodes` everything a run of a [`run_bundle`] installer put
/// there (services, binaries, configuration, ferry's state and the delivered copy), so the next
/// run starts from bare hosts.
pub fn wipe_run(lab: &crate::lab::Lab, nodes: usize) {
    for i in 1..=nodes {
        lab.ssh_ok(crate::lab::Host::Node(i), "systemctl disable --now ferry-registry containerd 2>/dev/null; rm -rf /var/lib/ferry /etc/systemd/system/ferry-registry.service /etc/containerd /usr/bin/containerd /usr/bin/ctr /usr/bin/containerd-shim-runc-v2 /usr/sbin/runc /etc/systemd/system/containerd.service /opt/ferry-test; systemctl daemon-reload; true");
    }
}
