//! A differential installer's base taken from the cluster: when the operator's machine holds no
//! copy, the registry hosts do (each keeps the whole installer of the last run at
//! `/var/lib/ferry/installer`). Each is asked, over the cluster's own SSH settings, for the size
//! and trailer of its copy; the first whose index digest is the base's is copied here.
//!
//! Owns the asking and the copy, nothing else: the copy is trusted no more than a file the
//! operator gave with `--base`, since completing checks it by digest and checks every chunk
//! taken from it against the signed index of the complete installer.

use crate::cluster::locate::Where;
use crate::node::INSTALLER_PATH;
use crate::printer::Printer;
use crate::ssh::RemoteHost;
use anyhow::{Context, Result, anyhow, bail};
use payload_format::{DeltaRecord, TRAILER_LEN, Trailer};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use tokio::io::AsyncReadExt;

/// What one registry host holds, for the message when none holds the base.
enum Holding {
    /// The base itself.
    Base,
    /// Another installer, or none.
    Other(String),
}

/// Copies the base `record` names from the first registry host of the cluster `w` points at that
/// holds it, into `dest` (an empty file, named `dest_path` in messages). Fails naming every host
/// asked and what it holds.
pub fn fetch(w: &Where, record: &DeltaRecord, dest: File, dest_path: &Path, printer: &Printer) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the SSH runtime")?;
    rt.block_on(fetch_async(w, record, dest, dest_path, printer))
}

async fn fetch_async(w: &Where, record: &DeltaRecord, dest: File, dest_path: &Path, printer: &Printer) -> Result<()> {
    let found = crate::cluster::locate::locate_listed(w).await?;
    let mut asked = Vec::new();
    for host in found.cluster.registry_hosts() {
        let ip = &host.ip;
        let probed = match found.connect_one(ip).await {
            Ok(h) => probe(h.as_ref(), ip, record).await.map(|held| (h, held)),
            Err(e) => Err(e.into()),
        };
        match probed {
            Ok((h, Holding::Base)) => {
                printer.note(format!(
                    "copying the base {} {} ({}) from {ip}:{INSTALLER_PATH}",
                    record.base.name, record.base.version, record.base.digest
                ));
                return copy(h.as_ref(), record.base.size, dest, dest_path, printer).await.with_context(|| {
                    format!("copying the base from {ip}:{INSTALLER_PATH} into {}", dest_path.display())
                });
            }
            Ok((_, Holding::Other(what))) => asked.push(format!("{ip} holds {what}")),
            Err(e) => asked.push(format!("{ip}: {e:#}")),
        }
    }
    if asked.is_empty() {
        bail!("cluster {} lists no registry host, and only those keep the whole installer", found.cluster.name);
    }
    bail!("no registry host of cluster {} holds it: {}", found.cluster.name, asked.join("; "))
}

/// Reads the size and trailer of the installer on `h` (at `ip`) and tells whether it is the base.
async fn probe(h: &impl RemoteHost, ip: &str, record: &DeltaRecord) -> Result<Holding> {
    let cmd = format!(
        "test -f {INSTALLER_PATH} || exit 3; stat -c %s {INSTALLER_PATH} && tail -c {TRAILER_LEN} {INSTALLER_PATH}"
    );
    let out = h.run(&cmd, b"").await?;
    if out.status == 3 {
        return Ok(Holding::Other("no installer".into()));
    }
    if !out.ok() {
        bail!("reading {INSTALLER_PATH}: {}", out.tail(3));
    }
    let (size, trailer) = parse_probe(&out.stdout, ip)?;
    let digest = format!("sha256:{}", hex::encode(trailer.index_sha256));
    if size == record.base.size && digest == record.base.digest {
        return Ok(Holding::Base);
    }
    Ok(Holding::Other(format!("another installer (index {digest}, {size} bytes)")))
}

/// `SIZE\n` and the file's last [`TRAILER_LEN`] bytes, decoded.
fn parse_probe(stdout: &[u8], ip: &str) -> Result<(u64, Trailer)> {
    let nl = stdout.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("no size in the answer"))?;
    let size: u64 = std::str::from_utf8(&stdout[..nl])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| anyhow!("no size in the answer"))?;
    let bytes: &[u8; TRAILER_LEN] =
        stdout[nl + 1..].try_into().map_err(|_| anyhow!("{INSTALLER_PATH} is shorter than an installer's trailer"))?;
    let trailer = Trailer::decode(bytes, size, Path::new(&format!("{ip}:{INSTALLER_PATH}")))?;
    Ok((size, trailer))
}

/// Streams the installer on `h` (`size` bytes) into `file` (at `path`), flushed to disk.
async fn copy(h: &impl RemoteHost, size: u64, mut file: File, path: &Path, printer: &Printer) -> Result<()> {
    let mut exec = h.open(&format!("cat {INSTALLER_PATH}")).await?;
    let progress = printer.progress(size, "base");
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = exec.stdout.read(&mut buf).await.context("reading from the host")?;
        if n == 0 {
            break;
        }
        got += n as u64;
        if got > size {
            bail!("the host sent more than the {size} bytes it said the file holds");
        }
        file.write_all(&buf[..n]).with_context(|| format!("writing {}", path.display()))?;
        progress.inc(n as u64);
    }
    progress.finish();
    let (status, stderr) = exec.wait().await;
    if status != 0 {
        bail!("cat exited with {status}: {}", String::from_utf8_lossy(&stderr).trim());
    }
    if got != size {
        bail!("the copy ended after {got} of {size} bytes");
    }
    file.sync_all().with_context(|| format!("flushing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_answer_is_a_size_and_a_trailer() {
        let e = parse_probe(b"12\nshort", "10.0.0.1").unwrap_err();
        assert!(e.to_string().contains("shorter than an installer's trailer"), "{e}");
        let e = parse_probe(b"", "10.0.0.1").unwrap_err();
        assert_eq!(e.to_string(), "no size in the answer");
        let mut answer = b"4096\n".to_vec();
        answer.extend([0u8; TRAILER_LEN]);
        let e = parse_probe(&answer, "10.0.0.1").unwrap_err();
        assert!(format!("{e:#}").contains("10.0.0.1:/var/lib/ferry/installer"), "{e:#}");
    }
}
