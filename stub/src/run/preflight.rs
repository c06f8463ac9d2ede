//! Preflight judgement: pure functions from each host's [`Facts`] to a list of problems, so the
//! rules are unit-tested without hosts. Gathering the facts is [`super::phases::preflight`]'s.

use crate::cluster::{Host, Role};
use crate::protocol::Facts;
use std::collections::BTreeMap;

/// How bad a problem is: errors stop the run, warnings are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Shown, run continues.
    Warning,
    /// Run stops after the table.
    Error,
}

/// One row of the preflight table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Host address.
    pub host: String,
    /// Error or warning.
    pub severity: Severity,
    /// Which check.
    pub check: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Everything known about one host when judging it.
pub struct HostFacts<'a> {
    /// The host.
    pub host: &'a Host,
    /// Its facts.
    pub facts: &'a Facts,
    /// Bytes this host will receive and unpack (for the disk check).
    pub disk_needed: u64,
    /// Operator clock minus host clock, milliseconds, measured around the facts call.
    pub skew_ms: i64,
    /// Whether ferry already prepared this host for this cluster (then its containerd is ours).
    pub ours: bool,
}

/// Limits.
pub struct Rules {
    /// `uname -m` the installer's programs (and so its agent) are built for.
    pub arch: String,
    /// The bundle's platforms (`linux/amd64`, …, from its index); empty when it names none.
    pub platforms: Vec<String>,
    /// Registry port.
    pub registry_port: u16,
    /// API load-balancer port on every node.
    pub lb_port: u16,
    /// Refuse an existing runtime unless this is set.
    pub force: bool,
    /// Max clock skew.
    pub max_skew_ms: i64,
}

/// Minimums for masters (kubeadm's own).
pub const MASTER_CPUS: u64 = 2;
/// 1700 MiB, as kubeadm checks.
pub const MASTER_MEM: u64 = 1700 << 20;

/// Judges every host and the set as a whole.
pub fn judge(hosts: &[HostFacts], rules: &Rules) -> Vec<Problem> {
    let mut out = Vec::new();
    for hf in hosts {
        let mut p = Rows { host: &hf.host.ip, out: &mut out };
        platform(hf, rules, &mut p);
        system(hf, &mut p);
        ports(hf, rules, &mut p);
        condition(hf, rules, &mut p);
    }
    duplicates(hosts, &mut out);
    out.sort_by(|a, b| (&a.host, b.severity, &a.check).cmp(&(&b.host, a.severity, &b.check)));
    out
}

/// The problems of one host, as they are found.
struct Rows<'a> {
    host: &'a str,
    out: &'a mut Vec<Problem>,
}

impl Rows<'_> {
    fn add(&mut self, severity: Severity, check: &str, message: String) {
        self.out.push(Problem { host: self.host.to_string(), severity, check: check.to_string(), message });
    }
}

/// The host's platform against the bundle's and the installer's.
fn platform(hf: &HostFacts, rules: &Rules, p: &mut Rows) {
    let f = hf.facts;
    let host_platform = format!("linux/{}", go_arch(&f.arch));
    let fits = |p: &String| p == &host_platform || p.starts_with(&format!("{host_platform}/"));
    if !rules.platforms.is_empty() && !rules.platforms.iter().any(fits) {
        p.add(
            Severity::Error,
            "arch",
            format!("the host is {} ({host_platform}), the bundle is for {}", f.arch, rules.platforms.join(", ")),
        );
    } else if f.arch != rules.arch {
        p.add(
            Severity::Error,
            "arch",
            format!(
                "the host is {} ({host_platform}), this installer's programs are built for {} (linux/{})",
                f.arch,
                rules.arch,
                go_arch(&rules.arch)
            ),
        );
    }
}

/// Kernel, init system, and the room a master and the delivery need.
fn system(hf: &HostFacts, p: &mut Rows) {
    let f = hf.facts;
    let major_minor: Vec<u64> = f.kernel.split(['.', '-']).take(2).filter_map(|x| x.parse().ok()).collect();
    if major_minor.len() == 2 && (major_minor[0], major_minor[1]) < (4, 19) {
        p.add(Severity::Error, "kernel", format!("kernel {} is older than 4.19", f.kernel));
    }
    if !f.systemd {
        let os = if f.os.is_empty() { "the host" } else { &f.os };
        p.add(Severity::Error, "os", format!("{os} does not run systemd; ferry installs systemd units"));
    }
    if hf.host.is(Role::Master) {
        if f.cpus < MASTER_CPUS {
            p.add(Severity::Error, "cpu", format!("{} CPU(s); a master needs at least {MASTER_CPUS}", f.cpus));
        }
        if f.mem_bytes < MASTER_MEM {
            p.add(
                Severity::Error,
                "memory",
                format!("{} MiB of memory; a master needs at least {} MiB", f.mem_bytes >> 20, MASTER_MEM >> 20),
            );
        }
    }
    if f.disk_free < hf.disk_needed {
        p.add(
            Severity::Error,
            "disk",
            format!(
                "{} ({} bytes) free under /var/lib/ferry; this host needs {} ({} bytes)",
                crate::units::bytes(f.disk_free),
                f.disk_free,
                crate::units::bytes(hf.disk_needed),
                hf.disk_needed
            ),
        );
    }
}

/// The ports the host's roles will listen on, which must be free.
fn ports(hf: &HostFacts, rules: &Rules, p: &mut Rows) {
    let f = hf.facts;
    let mut ports: Vec<(u16, &str)> = vec![(10250, "kubelet"), (rules.lb_port, "API load balancer")];
    if hf.host.is(Role::Master) {
        ports.extend([
            (crate::node::APISERVER_PORT, "kube-apiserver"),
            (2379, "etcd"),
            (2380, "etcd peers"),
            (10257, "kube-controller-manager"),
            (10259, "kube-scheduler"),
        ]);
    }
    if hf.host.is(Role::Registry) && !f.ferry_registry_active {
        ports.push((rules.registry_port, "built-in registry"));
    }
    for (port, what) in ports {
        if f.listening.contains(&port) {
            let by = f.listeners.get(&port).map(|o| format!(" by {o}")).unwrap_or_default();
            p.add(Severity::Error, "ports", format!("port {port} ({what}) is already in use{by}"));
        }
    }
}

/// Swap, clock, an existing runtime, cgroups and tools.
fn condition(hf: &HostFacts, rules: &Rules, p: &mut Rows) {
    let f = hf.facts;
    if f.swap_bytes > 0 {
        p.add(
            Severity::Warning,
            "swap",
            format!("{} MiB of swap is on; prepare turns it off and fixes /etc/fstab", f.swap_bytes >> 20),
        );
    }
    if hf.skew_ms.abs() > rules.max_skew_ms {
        p.add(
            Severity::Error,
            "clock",
            format!(
                "the clock is {:.1} s off this machine's; certificates need clocks within {} s",
                hf.skew_ms as f64 / 1000.0,
                rules.max_skew_ms / 1000
            ),
        );
    }
    if !hf.ours && !f.runtimes.is_empty() && !rules.force {
        p.add(
            Severity::Error,
            "runtime",
            format!(
                "a container runtime or kubelet is already here ({}); remove it, or pass --force to install over it",
                f.runtimes.join(", ")
            ),
        );
    }
    // The agent runs only where the arch matches; elsewhere its other facts are stand-ins.
    let agent_ran = f.arch == rules.arch;
    if agent_ran && f.cgroup.is_empty() {
        p.add(
            Severity::Warning,
            "cgroup",
            "/sys/fs/cgroup is neither cgroup v2 (cgroup2fs) nor v1 (tmpfs); the kubelet needs a cgroup hierarchy there"
                .into(),
        );
    }
    for (severity, message) in kernel_feature_problems(f) {
        p.add(severity, "kernel", message);
    }
    if !f.tools_missing.is_empty() {
        p.add(
            Severity::Warning,
            "tools",
            format!("the kubelet needs {} and neither the host nor the bundle has it", f.tools_missing.join(", ")),
        );
    }
}

/// What must differ between hosts: hostnames, MACs, machine-ids (and, as a warning, product UUIDs).
fn duplicates(hosts: &[HostFacts], out: &mut Vec<Problem>) {
    let dup = |what: &str, key: &dyn Fn(&Facts) -> Vec<String>, sev: Severity, out: &mut Vec<Problem>| {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for hf in hosts {
            for k in key(hf.facts) {
                let hs = seen.entry(k.clone()).or_default();
                if !k.is_empty() && !hs.contains(&hf.host.ip) {
                    hs.push(hf.host.ip.clone());
                }
            }
        }
        for (k, hs) in seen.into_iter().filter(|(_, hs)| hs.len() > 1) {
            for h in &hs {
                out.push(Problem {
                    host: h.clone(),
                    severity: sev,
                    check: format!("unique {what}"),
                    message: format!("{what} {k} is shared by {}", hs.join(", ")),
                });
            }
        }
    };
    dup("hostname", &|f| vec![f.hostname.clone()], Severity::Error, out);
    dup("MAC", &|f| f.macs.clone(), Severity::Error, out);
    dup("machine-id", &|f| vec![f.machine_id.clone()], Severity::Error, out);
    // Containers and some hypervisors share the DMI product_uuid; kubeadm itself only warns.
    dup("product_uuid", &|f| vec![f.product_uuid.clone()], Severity::Warning, out);
}

/// The GOARCH name of a `uname -m` machine (as platforms spell it: `linux/amd64`).
pub fn go_arch(machine: &str) -> &str {
    match machine {
        "x86_64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "i386" | "i486" | "i586" | "i686" | "x86" => "386",
        m if m.starts_with("armv") => "arm",
        "loongarch64" => "loong64",
        "mips64" => "mips64",
        other => other,
    }
}

/// The table, one row per problem.
pub fn table(problems: &[Problem]) -> String {
    let w = problems.iter().map(|p| p.host.len()).max().unwrap_or(4).max(4);
    let c = problems.iter().map(|p| p.check.len()).max().unwrap_or(5).max(5);
    let mut s = format!("{:<w$}  {:<7}  {:<c$}  PROBLEM\n", "HOST", "LEVEL", "CHECK");
    for p in problems {
        let lvl = if p.severity == Severity::Error { "error" } else { "warning" };
        s.push_str(&format!("{:<w$}  {:<7}  {:<c$}  {}\n", p.host, lvl, p.check, p.message));
    }
    s
}

/// What a node's kernel lacks, worded for the operator. overlay and br_netfilter are needed by
/// containerd and kube-proxy on every node; VXLAN only by the usual overlay CNIs (flannel's
/// default backend, Calico's and Cilium's VXLAN modes), so its absence is a warning. A feature
/// that is only loadable is fine: prepare loads it.
fn kernel_feature_problems(f: &Facts) -> Vec<(Severity, String)> {
    use crate::protocol::KernelSupport::Missing;
    let needs = [
        ("overlay", Severity::Error, "containerd's overlayfs snapshotter needs it"),
        ("br_netfilter", Severity::Error, "kube-proxy and network policies need bridged pod traffic to pass iptables"),
        ("vxlan", Severity::Warning, "overlay CNIs such as flannel (its default backend) need it"),
    ];
    needs
        .iter()
        .filter(|(name, _, _)| f.kernel_features.get(*name) == Some(&Missing))
        .map(|(name, severity, why)| {
            (
                *severity,
                format!(
                    "kernel {} has no {name}: it is neither built in, loaded, nor an installed module; {why}",
                    f.kernel
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::SshTarget;

    fn host(ip: &str, roles: &[Role]) -> Host {
        Host {
            ip: ip.into(),
            roles: roles.iter().copied().collect(),
            ssh: SshTarget { user: "root".into(), port: 22, key: None, sudo: false },
            labels: Default::default(),
        }
    }
    fn good(name: &str, mac: &str) -> Facts {
        Facts {
            hostname: name.into(),
            arch: "x86_64".into(),
            kernel: "6.1.0-18-amd64".into(),
            os: "Debian 12".into(),
            systemd: true,
            cpus: 4,
            mem_bytes: 8 << 30,
            macs: vec![mac.into()],
            product_uuid: "same".into(),
            machine_id: name.into(),
            disk_free: 100 << 30,
            cgroup: "v2".into(),
            ..Default::default()
        }
    }
    fn rules() -> Rules {
        Rules {
            arch: "x86_64".into(),
            platforms: vec!["linux/amd64".into()],
            registry_port: 5050,
            lb_port: 16443,
            force: false,
            max_skew_ms: 30_000,
        }
    }

    #[test]
    fn every_problem_on_every_host_in_one_table() {
        let m = host("10.0.0.1", &[Role::Master, Role::Registry]);
        let w = host("10.0.0.2", &[Role::Worker]);
        let mut fm = good("a", "aa");
        fm.arch = "aarch64".into();
        fm.listening = vec![22, 6443, 5050];
        fm.listeners.insert(6443, "perl (pid 7)".into());
        fm.cpus = 1;
        let mut fw = good("a", "bb");
        fw.disk_free = 10 << 20;
        fw.runtimes = vec!["/usr/bin/containerd".into()];
        fw.swap_bytes = 1 << 30;
        let hs = [
            HostFacts { host: &m, facts: &fm, disk_needed: 1 << 30, skew_ms: 0, ours: false },
            HostFacts { host: &w, facts: &fw, disk_needed: 1 << 30, skew_ms: 90_000, ours: false },
        ];
        let probs = judge(&hs, &rules());
        let checks: Vec<(&str, &str)> = probs.iter().map(|p| (p.host.as_str(), p.check.as_str())).collect();
        for want in [
            ("10.0.0.1", "arch"),
            ("10.0.0.1", "cpu"),
            ("10.0.0.1", "ports"),
            ("10.0.0.2", "disk"),
            ("10.0.0.2", "runtime"),
            ("10.0.0.2", "clock"),
            ("10.0.0.2", "swap"),
            ("10.0.0.1", "unique hostname"),
            ("10.0.0.2", "unique hostname"),
        ] {
            assert!(checks.contains(&want), "{want:?} missing from {checks:?}");
        }
        assert_eq!(probs.iter().filter(|p| p.check == "ports").count(), 2, "6443 and 5050");
        let t = table(&probs);
        assert!(t.contains("port 6443 (kube-apiserver) is already in use by perl (pid 7)"), "{t}");
        assert!(t.contains("port 5050 (built-in registry) is already in use\n"), "{t}");
        assert!(t.contains("the host is aarch64 (linux/arm64), the bundle is for linux/amd64"), "{t}");
        // --force accepts an existing runtime; our own earlier install is never a problem.
        let hs2 = [HostFacts { host: &w, facts: &fw, disk_needed: 0, skew_ms: 0, ours: true }];
        assert!(!judge(&hs2, &rules()).iter().any(|p| p.check == "runtime"));
    }

    #[test]
    fn the_bundle_platform_must_fit_the_host() {
        let m = host("m", &[Role::Master, Role::Registry]);
        let f = good("m", "1");
        let hs = [HostFacts { host: &m, facts: &f, disk_needed: 1, skew_ms: 0, ours: false }];
        let arm = Rules { platforms: vec!["linux/arm64".into()], ..rules() };
        let p = judge(&hs, &arm);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].message, "the host is x86_64 (linux/amd64), the bundle is for linux/arm64");
        // Any listed platform fits; a variant of the host's architecture fits too.
        for ok in [vec!["linux/arm64".into(), "linux/amd64".into()], vec!["linux/amd64/v3".into()], vec![]] {
            assert!(judge(&hs, &Rules { platforms: ok.clone(), ..rules() }).is_empty(), "{ok:?}");
        }
        // A host the installer's own programs cannot run on.
        let mut f = good("m", "1");
        f.arch = "riscv64".into();
        let hs = [HostFacts { host: &m, facts: &f, disk_needed: 1, skew_ms: 0, ours: false }];
        let p = judge(&hs, &Rules { platforms: vec![], ..rules() });
        assert_eq!(
            p[0].message,
            "the host is riscv64 (linux/riscv64), this installer's programs are built for x86_64 (linux/amd64)"
        );
    }

    #[test]
    fn clean_hosts_pass_and_shared_product_uuid_only_warns() {
        let m = host("m", &[Role::Master, Role::Registry]);
        let w = host("w", &[Role::Worker]);
        let (fm, fw) = (good("m", "1"), good("w", "2"));
        let hs = [
            HostFacts { host: &m, facts: &fm, disk_needed: 1, skew_ms: 5, ours: false },
            HostFacts { host: &w, facts: &fw, disk_needed: 1, skew_ms: -5, ours: false },
        ];
        let p = judge(&hs, &rules());
        assert!(p.iter().all(|p| p.severity == Severity::Warning && p.check == "unique product_uuid"), "{p:?}");
    }

    #[test]
    fn cgroup_v1_passes_and_an_unknown_hierarchy_warns() {
        let m = host("m", &[Role::Master, Role::Registry]);
        let (mut v1, mut none) = (good("m", "1"), good("m", "1"));
        v1.cgroup = "v1".into();
        none.cgroup = String::new();
        // v1 is handled (run opts the kubelet in and says so), not a preflight problem.
        let hs = [HostFacts { host: &m, facts: &v1, disk_needed: 1, skew_ms: 0, ours: false }];
        assert!(judge(&hs, &rules()).is_empty());
        let hs = [HostFacts { host: &m, facts: &none, disk_needed: 1, skew_ms: 0, ours: false }];
        let p = judge(&hs, &rules());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].severity, p[0].check.as_str()), (Severity::Warning, "cgroup"));
        assert!(p[0].message.contains("neither cgroup v2"), "{}", p[0].message);
        // A host whose arch the agent cannot run on reports no cgroup; that is not a second problem.
        none.arch = "riscv64".into();
        let hs = [HostFacts { host: &m, facts: &none, disk_needed: 1, skew_ms: 0, ours: false }];
        assert!(judge(&hs, &rules()).iter().all(|p| p.check == "arch"));
    }
    #[test]
    fn missing_kernel_features_stop_the_run_and_loadable_ones_do_not() {
        use crate::protocol::KernelSupport::{Loadable, Missing, Present};
        let m = host("m", &[Role::Master, Role::Registry]);
        let mut f = good("m", "1");
        f.kernel_features = [("overlay", Loadable), ("br_netfilter", Present), ("vxlan", Present)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let hs = [HostFacts { host: &m, facts: &f, disk_needed: 1, skew_ms: 0, ours: false }];
        assert!(judge(&hs, &rules()).is_empty(), "a loadable module is prepare's to load");

        f.kernel_features.insert("br_netfilter".into(), Missing);
        f.kernel_features.insert("vxlan".into(), Missing);
        let hs = [HostFacts { host: &m, facts: &f, disk_needed: 1, skew_ms: 0, ours: false }];
        let p = judge(&hs, &rules());
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[0].severity, p[0].check.as_str()), (Severity::Error, "kernel"));
        assert!(p[0].message.contains("no br_netfilter") && p[0].message.contains(&f.kernel), "{}", p[0].message);
        assert_eq!(p[1].severity, Severity::Warning);
        assert!(p[1].message.contains("no vxlan"), "{}", p[1].message);
    }
}
