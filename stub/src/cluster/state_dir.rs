//! Where the operator keeps a cluster's state on its own machine: the saved description, each
//! host's records and the cluster's keys.
//!
//! Beside the installer (`.ferry/<cluster>/`) when that directory can be written, so the state
//! travels with the file; otherwise the user's state directory (`$XDG_STATE_HOME/ferry/<cluster>/`,
//! else `~/.local/state/ferry/<cluster>/`), as when the installer runs from a read-only USB
//! stick; or only `--state-dir DIR` (`DIR/<cluster>/`) when it is given. Commands that find an
//! existing cluster look in the same places, in the same order.
//!
//! Owns the candidates, the writability proof and [`StateDirError`]; it touches only the local
//! file system.

use std::path::{Path, PathBuf};

/// Why no state directory can be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// No candidate could be created and written.
    #[error(
        "no writable place for the state of cluster {cluster}: {}; give --state-dir DIR",
        tried.iter().map(|(p, why)| format!("{}: {why}", p.display())).collect::<Vec<_>>().join("; ")
    )]
    NoneWritable {
        /// The cluster.
        cluster: String,
        /// Each candidate and why it failed.
        tried: Vec<(PathBuf, String)>,
    },
}

/// Which kind of place a state directory is, for the line that says where the state goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `.ferry/` beside the installer.
    BesideInstaller,
    /// The user's state directory (XDG).
    UserState,
    /// `--state-dir`.
    Given,
}

impl Origin {
    fn words(self) -> &'static str {
        match self {
            Origin::BesideInstaller => "beside the installer",
            Origin::UserState => "in the user's state directory",
            Origin::Given => "as --state-dir says",
        }
    }
}

/// A directory that holds one cluster directory per cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// The directory (`…/.ferry`, `…/ferry`, or `--state-dir`'s).
    pub dir: PathBuf,
    /// What kind of place it is.
    pub origin: Origin,
}

/// The places state may be, in the order they are tried: `given` alone when there is one.
/// `env` reads an environment variable (the real environment, or a test's).
pub fn bases(installer: &Path, given: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Vec<Base> {
    if let Some(dir) = given {
        return vec![Base { dir: dir.to_path_buf(), origin: Origin::Given }];
    }
    let exe = if installer == Path::new(crate::node::SELF_EXE) {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("installer"))
    } else {
        installer.to_path_buf()
    };
    let beside = exe.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join(".ferry");
    let mut out = vec![Base { dir: beside, origin: Origin::BesideInstaller }];
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from).filter(|p| p.is_absolute());
    let user = nonempty("XDG_STATE_HOME").or_else(|| nonempty("HOME").map(|h| h.join(".local/state")));
    if let Some(user) = user {
        out.push(Base { dir: user.join("ferry"), origin: Origin::UserState });
    }
    out
}

/// The process environment, for [`bases`].
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// A cluster's chosen state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// `<base>/<cluster>/`.
    pub dir: PathBuf,
    /// What kind of place it is.
    pub origin: Origin,
}

impl Chosen {
    /// The line that tells the operator where the state goes.
    pub fn describe(&self) -> String {
        format!("state: {} ({})", self.dir.display(), self.origin.words())
    }
}

/// The existing state of `cluster` (a directory holding its `cluster.yaml`), first found.
pub fn find(bases: &[Base], cluster: &str) -> Option<Chosen> {
    bases
        .iter()
        .map(|b| Chosen { dir: b.dir.join(cluster), origin: b.origin })
        .find(|c| c.dir.join("cluster.yaml").is_file())
}

/// Every saved description under `bases`, in order (`<base>/*/cluster.yaml`).
pub fn saved(bases: &[Base]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for b in bases {
        let mut here: Vec<PathBuf> = std::fs::read_dir(&b.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("cluster.yaml"))
            .filter(|p| p.is_file())
            .collect();
        here.sort();
        found.extend(here);
    }
    found
}

/// The state directory `cluster`'s operation writes to, proven writable: the one already
/// holding its state when that can be written (so a resumed run keeps its records), else the
/// first candidate that can be created and written. Directories made here are private (0700):
/// they hold the cluster's keys.
pub fn choose_writable(bases: &[Base], cluster: &str) -> Result<Chosen, StateDirError> {
    let existing = find(bases, cluster);
    let order =
        existing.iter().cloned().chain(bases.iter().map(|b| Chosen { dir: b.dir.join(cluster), origin: b.origin }));
    let mut tried: Vec<(PathBuf, String)> = Vec::new();
    for c in order {
        if tried.iter().any(|(p, _)| *p == c.dir) {
            continue;
        }
        match prove_writable(&c.dir) {
            Ok(()) => return Ok(c),
            Err(e) => tried.push((c.dir.clone(), e.to_string())),
        }
    }
    Err(StateDirError::NoneWritable { cluster: cluster.to_string(), tried })
}

/// Creates `dir` (0700) and writes, syncs and removes a probe file in it.
pub fn prove_writable(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(b"ferry")?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn candidates_are_beside_the_installer_then_the_users_state() {
        let b = bases(Path::new("/media/usb/installer"), None, &env_of(&[("HOME", "/root")]));
        assert_eq!(b[0], Base { dir: "/media/usb/.ferry".into(), origin: Origin::BesideInstaller });
        assert_eq!(b[1], Base { dir: "/root/.local/state/ferry".into(), origin: Origin::UserState });
        let b = bases(Path::new("/media/usb/installer"), None, &env_of(&[("HOME", "/root"), ("XDG_STATE_HOME", "/s")]));
        assert_eq!(b[1].dir, PathBuf::from("/s/ferry"));
        // A relative XDG path is ignored, as the XDG rules say.
        let b = bases(Path::new("/m/installer"), None, &env_of(&[("HOME", "/h"), ("XDG_STATE_HOME", "rel")]));
        assert_eq!(b[1].dir, PathBuf::from("/h/.local/state/ferry"));
        let b = bases(Path::new("/m/installer"), Some(Path::new("/given")), &env_of(&[("HOME", "/h")]));
        assert_eq!(b, vec![Base { dir: "/given".into(), origin: Origin::Given }]);
        let b = bases(Path::new("installer"), None, &env_of(&[]));
        assert_eq!(b, vec![Base { dir: "./.ferry".into(), origin: Origin::BesideInstaller }]);
    }

    /// A directory nobody can write, root included (the lab test uses a real read-only mount).
    const UNWRITABLE: &str = "/proc/self/ferry-read-only";

    #[test]
    fn a_read_only_installer_directory_falls_back_and_the_state_is_found_again() {
        let t = tempfile::tempdir().unwrap();
        let stick = t.path().join("stick");
        let user = t.path().join("home");
        let b = vec![
            Base { dir: stick.join(".ferry"), origin: Origin::BesideInstaller },
            Base { dir: user.join("ferry"), origin: Origin::UserState },
        ];
        // Writable: beside the installer, private.
        let c = choose_writable(&b, "lab").unwrap();
        assert_eq!((c.dir.clone(), c.origin), (stick.join(".ferry/lab"), Origin::BesideInstaller));
        assert_eq!(std::fs::metadata(&c.dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(&c.dir).unwrap().count(), 0, "the probe is gone");
        // Read-only: the user's state directory, where it is found again.
        let b = vec![
            Base { dir: Path::new(UNWRITABLE).join(".ferry"), origin: Origin::BesideInstaller },
            Base { dir: user.join("ferry"), origin: Origin::UserState },
        ];
        let c = choose_writable(&b, "lab").unwrap();
        assert_eq!((c.dir.clone(), c.origin), (user.join("ferry/lab"), Origin::UserState));
        assert!(c.describe().contains("user's state directory"), "{}", c.describe());
        std::fs::write(c.dir.join("cluster.yaml"), "x").unwrap();
        assert_eq!(find(&b, "lab").unwrap().dir, user.join("ferry/lab"));
        assert_eq!(saved(&b), vec![user.join("ferry/lab/cluster.yaml")]);
        // Nowhere to write: the error names every place and why.
        let b = vec![
            Base { dir: Path::new(UNWRITABLE).join(".ferry"), origin: Origin::BesideInstaller },
            Base { dir: Path::new(UNWRITABLE).join("state"), origin: Origin::UserState },
        ];
        let err = choose_writable(&b, "other").unwrap_err().to_string();
        assert!(err.contains(&format!("{UNWRITABLE}/.ferry/other: ")), "{err}");
        assert!(err.contains(&format!("{UNWRITABLE}/state/other: ")), "{err}");
        assert!(err.contains("--state-dir"), "{err}");
    }

    #[test]
    fn existing_state_wins_when_it_can_be_written() {
        let t = tempfile::tempdir().unwrap();
        let b = vec![
            Base { dir: t.path().join("a"), origin: Origin::BesideInstaller },
            Base { dir: t.path().join("b"), origin: Origin::UserState },
        ];
        std::fs::create_dir_all(t.path().join("b/lab")).unwrap();
        std::fs::write(t.path().join("b/lab/cluster.yaml"), "x").unwrap();
        assert_eq!(choose_writable(&b, "lab").unwrap().dir, t.path().join("b/lab"));
        assert_eq!(choose_writable(&b, "new").unwrap().dir, t.path().join("a/new"));
    }
}
