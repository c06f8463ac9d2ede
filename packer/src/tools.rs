//! The build machine's helper programs: finding a program the bundle's own rootfs carries (the
//! one the nodes will run) or one on `PATH`, telling whether this machine can run it, and
//! running it with a time limit while keeping its output.
//!
//! The bundle's own program is preferred wherever it exists and runs here: kubeadm lists the
//! control-plane images the nodes will pull, and helm renders charts exactly as the installer's
//! helm will install them.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::spec::Bundle;

/// A program the bundle's rootfs carries: as the spec reaches it (`kubernetes/rootfs/usr/bin/helm`)
/// and its real path on this machine. Symlinks are followed as a node would follow them, inside
/// the rootfs trees. `rels` are tried in order (`usr/local/bin/x` before `usr/bin/x`, as a node's
/// `PATH` finds them).
pub fn in_rootfs(bundle: &Bundle, rels: &[&str]) -> Option<(String, PathBuf)> {
    let trees: Vec<(String, PathBuf)> = bundle
        .spec
        .spec
        .rootfs
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let real = bundle.resolve(&format!("spec.rootfs[{i}].path"), &item.path).ok()?;
            real.is_dir().then(|| (item.path.trim_end_matches('/').to_string(), real))
        })
        .collect();
    let roots: Vec<PathBuf> = trees.iter().map(|(_, r)| r.clone()).collect();
    for rel in rels {
        for (shown, root) in &trees {
            if std::fs::symlink_metadata(root.join(rel)).is_ok() {
                let real = follow(&roots, Path::new(rel)).unwrap_or_else(|| root.join(rel));
                return Some((format!("{shown}/{rel}"), real));
            }
        }
    }
    None
}

/// `name` in a directory of `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|c| c.is_file())
}

/// Resolves `rel` across the rootfs `roots` (laid onto the same `/`), following symlinks the way
/// the node will: absolute targets from the rootfs root. `None` when it leads nowhere.
fn follow(roots: &[PathBuf], rel: &Path) -> Option<PathBuf> {
    let mut rel = rel.to_path_buf();
    for _ in 0..16 {
        let (root, meta) =
            roots.iter().find_map(|r| std::fs::symlink_metadata(r.join(&rel)).ok().map(|m| (r.clone(), m)))?;
        let here = root.join(&rel);
        if !meta.file_type().is_symlink() {
            return Some(here);
        }
        let target = std::fs::read_link(&here).ok()?;
        let base = if target.is_absolute() { PathBuf::new() } else { rel.parent()?.to_path_buf() };
        let mut next = PathBuf::new();
        for c in base.join(&target).components() {
            match c {
                Component::Normal(n) => next.push(n),
                Component::ParentDir => {
                    if !next.pop() {
                        return None;
                    }
                }
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        rel = next;
    }
    None
}

/// Why this machine cannot run `real` (shown as `file`), or `Ok` when it looks runnable: a file,
/// executable, and of this machine's architecture when it is an ELF program.
pub fn runnable_here(file: &str, real: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(real).map_err(|e| format!("{file} cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{file} is not a file"));
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(format!("{file} is not executable (mode {:04o})", mode & 0o7777));
    }
    if let Some(machine) = elf_machine(real)
        && machine != std::env::consts::ARCH
    {
        return Err(format!("{file} is a {machine} program and this machine is {}", std::env::consts::ARCH));
    }
    Ok(())
}

/// The `uname -m` name of an ELF file's machine, when it is an ELF file of a known machine.
pub fn elf_machine(path: &Path) -> Option<&'static str> {
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" {
        return None;
    }
    let machine = match head[5] {
        1 => u16::from_le_bytes([head[18], head[19]]),
        2 => u16::from_be_bytes([head[18], head[19]]),
        _ => return None,
    };
    Some(match machine {
        3 => "x86",
        40 => "arm",
        62 => "x86_64",
        183 => "aarch64",
        21 => "powerpc64",
        22 => "s390x",
        243 => "riscv64",
        258 => "loongarch64",
        _ => return None,
    })
}

/// The outcome of running a helper program.
pub enum Ran {
    /// Exit status 0, with stdout.
    Ok(String),
    /// The program could not be started here (exec format, missing interpreter, permission).
    NotRunnable(std::io::Error),
    /// It ran and failed or hung: what happened, with the end of its stderr.
    Failed(String),
}

/// Runs `program args…` in `dir` (or here) with no stdin, for at most `limit`; a program still
/// running then is killed.
pub fn run(program: &Path, args: &[&OsStr], dir: Option<&Path>, limit: Duration) -> Ran {
    let spawn = || {
        let mut c = Command::new(program);
        c.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(d) = dir {
            c.current_dir(d);
        }
        c.spawn()
    };
    // A program written moments ago can still be open for writing in a child another thread is
    // forking (until that child execs): exec then fails with ETXTBSY for a few milliseconds.
    let mut tries = 0;
    let mut child = loop {
        match spawn() {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Ran::NotRunnable(e),
        }
    };
    // Read both pipes while waiting, so a chatty child cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = stdout.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    let tail = || {
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(6)..].join("\n  ");
        if tail.is_empty() { "(no stderr)".to_string() } else { format!("stderr:\n  {tail}") }
    };
    match status {
        None => Ran::Failed(format!("did not finish within {} s; {}", limit.as_secs(), tail())),
        Some(s) if s.success() => match String::from_utf8(out) {
            Ok(text) => Ran::Ok(text),
            Err(_) => Ran::Failed("printed output that is not UTF-8".into()),
        },
        Some(s) => Ran::Failed(format!("failed ({s}); {}", tail())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_machines() {
        let d = tempfile::tempdir().unwrap();
        let elf = |class_data: u8, machine: [u8; 2]| {
            let mut h = vec![0x7f, b'E', b'L', b'F', 2, class_data];
            h.resize(18, 0);
            h.extend(machine);
            h.resize(64, 0);
            h
        };
        let p = d.path().join("x");
        std::fs::write(&p, elf(1, 183u16.to_le_bytes())).unwrap();
        assert_eq!(elf_machine(&p), Some("aarch64"));
        std::fs::write(&p, elf(2, 22u16.to_be_bytes())).unwrap();
        assert_eq!(elf_machine(&p), Some("s390x"));
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        assert_eq!(elf_machine(&p), None);
        assert_eq!(elf_machine(Path::new("/proc/self/exe")), Some(std::env::consts::ARCH));
    }

    #[test]
    fn run_keeps_output_and_stops_what_hangs() {
        let sh = Path::new("/bin/sh");
        let args = |s: &'static str| [OsStr::new("-c"), OsStr::new(s)];
        assert!(matches!(run(sh, &args("echo hi"), None, Duration::from_secs(5)), Ran::Ok(o) if o == "hi\n"));
        let failed = run(sh, &args("echo oops >&2; exit 3"), None, Duration::from_secs(5));
        assert!(matches!(failed, Ran::Failed(ref why) if why.contains("oops") && why.contains('3')));
        let hung = run(sh, &args("sleep 30"), None, Duration::from_millis(200));
        assert!(matches!(hung, Ran::Failed(ref why) if why.contains("did not finish")));
        assert!(matches!(run(Path::new("/nonexistent/x"), &[], None, Duration::from_secs(1)), Ran::NotRunnable(_)));
    }
}
