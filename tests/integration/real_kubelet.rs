//! A real kubelet on a lab host. node1 gets containerd, runc, crictl and the kubelet built from Go
//! modules (`scripts/build-kubernetes.sh`), the built-in registry serving a real installer, and a
//! static pod: etcd, from the installer's control-plane images. The lab has no route out, so the
//! images can only have come from the built-in registry, under their original references.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_tests::lab::{Host, LAB_NODES, Lab};
use ferry_tests::real_k8s;
use ferry_tests::text;

const NODE: Host = Host::Node(1);
const DIR: &str = "/opt/ferry-kubelet-test";

/// The kubelet runs on its own, without an API server: its pods come from `staticPodPath`.
/// `failCgroupV1: false` because the lab's machine has only cgroup v1 (refused from v1.35 on
/// otherwise); eviction and image GC thresholds off because the lab's disks are shared and small.
const KUBELET_CONFIG: &str = "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
failCgroupV1: false
failSwapOn: false
staticPodPath: /etc/kubernetes/manifests
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: 127.0.0.1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
imageGCHighThresholdPercent: 100
evictionHard: {nodefs.available: \"0%\", nodefs.inodesFree: \"0%\", imagefs.available: \"0%\"}
";

/// Takes everything the test put on the host away again, also when the test fails.
struct Cleanup<'a>(&'a Lab);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let out = self.0.ssh(
            NODE,
            &format!(
                "systemctl stop ferry-test-kubelet 2>/dev/null; \
                 crictl rmp -af >/dev/null 2>&1; \
                 systemctl stop containerd ferry-test-registry 2>/dev/null; \
                 systemctl reset-failed ferry-test-kubelet ferry-test-registry 2>/dev/null; \
                 for m in $(awk '$2 ~ \"^/(var/lib/kubelet|run/containerd|var/lib/containerd)/\" {{print $2}}' /proc/mounts | sort -r); do umount -l $m; done; \
                 rm -rf {DIR} /etc/kubernetes /etc/containerd /etc/crictl.yaml /var/lib/kubelet/* /var/lib/containerd/* /run/containerd \
                   /usr/local/bin/containerd /usr/local/bin/containerd-shim-runc-v2 /usr/local/bin/ctr /usr/local/sbin/runc \
                   /usr/bin/kubelet /usr/bin/crictl /etc/systemd/system/containerd.service /var/lib/etcd/ferry-test; \
                 systemctl daemon-reload; true"
            ),
        );
        if !out.status.success() {
            eprintln!("real_kubelet: cleanup of node1 failed:\n{}", text(&out));
        }
    }
}

/// Pipes `input` into `cmd` on the node.
fn ssh_stdin(lab: &Lab, cmd: &str, input: impl FnOnce(&mut std::process::ChildStdin)) -> String {
    let mut c = lab.ssh_command("root", NODE, &[]);
    c.arg(cmd).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("ssh");
    let mut stdin = child.stdin.take().unwrap();
    input(&mut stdin);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "on node1: `{cmd}` failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn lab_real_kubelet_runs_a_static_pod_from_the_builtin_registry() {
    let lab = Lab::shared(LAB_NODES, true);
    let real = real_k8s::newest_installer();
    let k8s = &real.kubernetes;
    let kubeadm_images = k8s.kubeadm_images();
    let image_of = |name: &str| -> String {
        kubeadm_images
            .iter()
            .find(|i| i.starts_with(&format!("registry.k8s.io/{name}:")))
            .unwrap_or_else(|| panic!("kubeadm lists no {name} image: {kubeadm_images:?}"))
            .clone()
    };
    let etcd = image_of("etcd");
    let pause = image_of("pause");

    // Installs on node1 conflict with the tests that expect bare hosts.
    let _ex = lab.exclusive();
    let _cleanup = Cleanup(lab);

    // The node's programs, as the installer lays them: containerd, runc, crictl and the kubelet.
    let rootfs = k8s.rootfs();
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args([
            "-c",
            "usr/local/bin",
            "usr/local/sbin",
            "usr/bin/kubelet",
            "usr/bin/crictl",
            "etc/crictl.yaml",
            "etc/systemd/system/containerd.service",
        ])
        .output()
        .unwrap();
    assert!(tar.status.success(), "tar: {}", text(&tar));
    ssh_stdin(lab, "tar -C / -x", |s| s.write_all(&tar.stdout).unwrap());
    lab.ssh_ok(NODE, &format!("mkdir -p {DIR}"));
    let installer = std::fs::read(&real.installer).unwrap();
    ssh_stdin(lab, &format!("cat > {DIR}/installer && chmod 0755 {DIR}/installer"), |s| {
        s.write_all(&installer).unwrap()
    });
    drop(installer);
    let key = std::fs::read(&real.public_key).unwrap();
    ssh_stdin(lab, &format!("cat > {DIR}/vendor.pub"), |s| s.write_all(&key).unwrap());

    // The built-in registry, read-only, out of the installer file, over TLS with a credential
    // (`registry pki` makes them as `run` does), and containerd pointed at it.
    lab.ssh_ok(
        NODE,
        &format!(
            "{DIR}/installer registry pki --dir {DIR}/pki --name 127.0.0.1 && \
             systemd-run --quiet --unit=ferry-test-registry {DIR}/installer registry serve \
               --listen 127.0.0.1:5000 --file {DIR}/installer --key {DIR}/vendor.pub --tls-dir {DIR}/pki && \
             {DIR}/installer registry config --endpoint https://127.0.0.1:5000 --out /etc/containerd \
               --ca-file {DIR}/pki/registry-ca.crt --credential-file {DIR}/pki/registry-credential \
               --file {DIR}/installer --key {DIR}/vendor.pub && \
             systemctl daemon-reload && systemctl start containerd"
        ),
    );
    let config = lab.ssh_ok(NODE, "cat /etc/containerd/config.toml");
    assert!(config.contains(&pause), "containerd's sandbox image is kubeadm's pause ({pause}):\n{config}");

    let manifest = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: etcd-test, namespace: kube-system}}
spec:
  hostNetwork: true
  containers:
    - name: etcd
      image: {etcd}
      command: [etcd, --name=test, --data-dir=/var/lib/etcd/ferry-test,
                --listen-client-urls=http://127.0.0.1:2399, --advertise-client-urls=http://127.0.0.1:2399,
                --listen-peer-urls=http://127.0.0.1:2398, --initial-advertise-peer-urls=http://127.0.0.1:2398,
                --initial-cluster=test=http://127.0.0.1:2398]
      volumeMounts: [{{name: data, mountPath: /var/lib/etcd}}]
  volumes:
    - {{name: data, hostPath: {{path: /var/lib/etcd, type: DirectoryOrCreate}}}}
"
    );
    ssh_stdin(lab, "mkdir -p /etc/kubernetes/manifests && cat > /etc/kubernetes/manifests/etcd-test.yaml", |s| {
        s.write_all(manifest.as_bytes()).unwrap()
    });
    ssh_stdin(lab, &format!("cat > {DIR}/kubelet.yaml"), |s| s.write_all(KUBELET_CONFIG.as_bytes()).unwrap());
    lab.ssh_ok(
        NODE,
        &format!("systemd-run --quiet --unit=ferry-test-kubelet /usr/bin/kubelet --config={DIR}/kubelet.yaml"),
    );

    // A bound on a hang, not on speed: the kubelet, the pulls and etcd's start on a loaded machine.
    let t0 = Instant::now();
    let health = loop {
        let out = lab.ssh(
            NODE,
            "id=$(crictl ps --name '^etcd$' --state running -q 2>/dev/null | head -1); \
             [ -n \"$id\" ] && crictl exec \"$id\" etcdctl --endpoints=http://127.0.0.1:2399 endpoint health 2>&1",
        );
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if t0.elapsed() > Duration::from_secs(300) {
            let diag = lab.ssh(
                NODE,
                "systemctl status --no-pager ferry-test-kubelet | tail -5; journalctl -u ferry-test-kubelet --no-pager | tail -40; \
                 crictl pods; crictl ps -a; journalctl -u containerd --no-pager | tail -20; journalctl -u ferry-test-registry --no-pager | tail -10",
            );
            panic!("the static pod did not become healthy within 300 s:\n{}", text(&diag));
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(health.contains("is healthy"), "{health}");

    // containerd holds both images under their original references, and the registry served them.
    let images = lab.ssh_ok(NODE, "ctr -n k8s.io images ls -q");
    for image in [&etcd, &pause] {
        assert!(images.lines().any(|l| l == image.as_str()), "{image} not among containerd's images:\n{images}");
    }
    let hosts = lab.ssh_ok(NODE, "cat /etc/containerd/certs.d/registry.k8s.io/hosts.toml");
    assert!(hosts.contains("127.0.0.1:5000"), "{hosts}");
    let log = lab.ssh_ok(NODE, "journalctl -u ferry-test-registry --no-pager -o cat");
    let etcd_tag = etcd.rsplit_once(':').unwrap().1;
    assert!(
        log.lines().any(|l| l.contains(&format!("/v2/etcd/manifests/{etcd_tag}?ns=registry.k8s.io"))),
        "the registry's log shows no pull of {etcd}:\n{log}"
    );
    let kubelet = lab.ssh_ok(NODE, "kubelet --version");
    assert_eq!(kubelet, format!("Kubernetes {}", k8s.version));
}
