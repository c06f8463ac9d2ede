//! The route to the cluster's service subnet on hosts that have none.
//!
//! kube-proxy reaches a Service by rewriting the destination (DNAT) after the kernel has routed
//! the packet; a host-network process (flannel, CoreDNS's clients on the host, the kubelet's
//! probes) that dials `10.96.0.1` on a host with no route to it fails with "network is
//! unreachable" before kube-proxy's rule is ever consulted. Connected hosts have a default route
//! that covers it; air-gapped hosts often have none. There, ferry installs a link-scope route for
//! the service subnet on the interface that carries the node's own address, through a oneshot
//! unit so that it is back after a reboot. Hosts that already route the subnet are left alone.

use crate::registry::config::ConfigError;
use std::net::{AddrParseError, Ipv4Addr};
use std::path::Path;
use std::process::Command;

/// A program the agent runs that could not be started or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (not installed, not executable).
    #[error("running {cmd}")]
    Spawn {
        /// The program.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("{cmd} {args} failed: {tail}")]
    Failed {
        /// The program.
        cmd: String,
        /// Its arguments, space-separated.
        args: String,
        /// The last lines of its stderr.
        tail: String,
    },
}

/// Why the Service subnet cannot be routed on this host.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The subnet has no `/PREFIX`.
    #[error("`{cidr}` is not a CIDR (ADDRESS/PREFIX)")]
    NotCidr {
        /// The subnet as given.
        cidr: String,
    },
    /// The subnet's address is not IPv4.
    #[error("`{cidr}`: `{addr}` is not an IPv4 address")]
    Address {
        /// The subnet as given.
        cidr: String,
        /// Its address part.
        addr: String,
        /// Why.
        source: AddrParseError,
    },
    /// The prefix is not a number from 0 to 32.
    #[error("`{cidr}`: bad prefix")]
    Prefix {
        /// The subnet as given.
        cidr: String,
    },
    /// `ip addr show` could not be run.
    #[error("running ip addr show")]
    AddrShow(#[source] std::io::Error),
    /// No interface holds the node's address.
    #[error("no interface of this host holds {node_ip}, the address the cluster knows it by")]
    NoInterface {
        /// The node's address.
        node_ip: String,
    },
    /// The unit file cannot be written.
    #[error(transparent)]
    Write(#[from] ConfigError),
    /// systemctl failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The unit ran and the kernel still has no route.
    #[error("{} ran, but {cidr} is still not routable here", UNIT)]
    StillUnroutable {
        /// The subnet.
        cidr: String,
    },
}

/// Runs a program, failing with its last lines of stderr; returns its stdout.
pub(super) fn sh(cmd: &str, args: &[&str]) -> Result<String, CommandError> {
    let out =
        Command::new(cmd).args(args).output().map_err(|source| CommandError::Spawn { cmd: cmd.to_string(), source })?;
    if !out.status.success() {
        return Err(CommandError::Failed {
            cmd: cmd.to_string(),
            args: args.join(" "),
            tail: crate::ssh::tail_lines(&String::from_utf8_lossy(&out.stderr), 3),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The unit ferry writes on hosts without a route to the service subnet (`reset` removes it).
pub const UNIT: &str = "ferry-service-route.service";

/// `(network, prefix)` of an IPv4 CIDR.
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), RouteError> {
    let (addr, prefix) = cidr.split_once('/').ok_or_else(|| RouteError::NotCidr { cidr: cidr.to_string() })?;
    let addr: Ipv4Addr = addr.parse().map_err(|source| RouteError::Address {
        cidr: cidr.to_string(),
        addr: addr.to_string(),
        source,
    })?;
    let prefix: u8 =
        prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| RouteError::Prefix { cidr: cidr.to_string() })?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    Ok((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

/// The first address of the subnet: the API server's Service address.
pub fn first_address(cidr: &str) -> Result<Ipv4Addr, RouteError> {
    let (net, _) = parse_cidr(cidr)?;
    Ok(Ipv4Addr::from(u32::from(net) + 1))
}

/// The interface holding `ip`, from `ip -o -4 addr show` output.
pub fn interface_of(addr_show: &str, ip: &str) -> Option<String> {
    addr_show.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let _index = f.next()?;
        let dev = f.next()?;
        let _family = f.next()?;
        let cidr = f.next()?;
        (cidr.split('/').next() == Some(ip)).then(|| dev.split('@').next().unwrap_or(dev).to_string())
    })
}

/// The unit's text.
pub fn unit_text(cidr: &str, dev: &str, ip: &str) -> String {
    format!(
        "# Written by ferry: this host has no route to the Kubernetes service subnet (no default route),\n\
         # and kube-proxy needs one to exist before it can rewrite a Service address.\n\
         [Unit]\n\
         Description=ferry: route to the Kubernetes service subnet {cidr}\n\
         After=network.target\n\
         Before=containerd.service kubelet.service\n\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/bin/sh -c 'ip route replace {cidr} dev {dev} scope link src {ip}'\n\
         ExecStop=/bin/sh -c 'ip route del {cidr} dev {dev} 2>/dev/null || true'\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Whether the kernel can route to `addr` now.
fn routable(addr: Ipv4Addr) -> bool {
    Command::new("ip").args(["route", "get", &addr.to_string()]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Makes `cidr` routable on this host (see the module docs). Returns what it did, if anything.
pub fn ensure(units_dir: &Path, cidr: &str, node_ip: &str) -> Result<Option<String>, RouteError> {
    let unit_path = units_dir.join(UNIT);
    let ours = unit_path.exists();
    if !ours && routable(first_address(cidr)?) {
        return Ok(None);
    }
    let show = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().map_err(RouteError::AddrShow)?;
    let dev = interface_of(&String::from_utf8_lossy(&show.stdout), node_ip)
        .ok_or_else(|| RouteError::NoInterface { node_ip: node_ip.to_string() })?;
    let text = unit_text(cidr, &dev, node_ip);
    let changed = std::fs::read_to_string(&unit_path).ok().as_deref() != Some(text.as_str());
    if changed {
        crate::registry::config::write_atomic(&unit_path, text.as_bytes())?;
        sh("systemctl", &["daemon-reload"])?;
    }
    sh("systemctl", &["enable", UNIT])?;
    if changed {
        sh("systemctl", &["restart", UNIT])?;
    } else {
        sh("systemctl", &["start", UNIT])?;
    }
    if !routable(first_address(cidr)?) {
        return Err(RouteError::StillUnroutable { cidr: cidr.to_string() });
    }
    Ok(changed.then(|| format!("{cidr} routed to {dev} ({UNIT}): this host has no default route")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_address_is_the_subnets_first() {
        assert_eq!(first_address("10.96.0.0/12").unwrap(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(first_address("10.100.7.9/16").unwrap(), Ipv4Addr::new(10, 100, 0, 1));
        assert!(first_address("10.96.0.0").is_err());
        assert!(first_address("10.96.0.0/33").is_err());
        assert!(first_address("fd00::/108").is_err());
    }

    #[test]
    fn interface_found_by_address() {
        let show = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                    2: eth0    inet 10.88.0.11/24 brd 10.88.0.255 scope global eth0\\       valid_lft forever\n\
                    3: ens5    inet 10.88.0.111/24 scope global ens5\n";
        assert_eq!(interface_of(show, "10.88.0.11").as_deref(), Some("eth0"));
        assert_eq!(interface_of(show, "10.88.0.111").as_deref(), Some("ens5"));
        assert_eq!(interface_of(show, "10.88.0.1"), None);
    }

    #[test]
    fn unit_routes_on_the_nodes_interface() {
        let u = unit_text("10.96.0.0/12", "eth0", "10.88.0.11");
        assert!(u.contains("ip route replace 10.96.0.0/12 dev eth0 scope link src 10.88.0.11"));
        assert!(u.contains("Before=containerd.service kubelet.service"));
    }
}
