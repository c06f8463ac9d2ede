//! Walks a directory tree the way a node's filesystem should receive it: modes kept, setuid
//! refused, device files refused, and symlinks accepted only when they stay inside the tree.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// One item of a tree.
#[derive(Debug, Clone)]
pub struct TreeItem {
    /// Slash-separated path relative to the tree root.
    pub rel: String,
    /// Where the item is on the build machine.
    pub source: PathBuf,
    /// What it is.
    pub kind: ItemKind,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes, for files.
    pub size: u64,
}

/// The kinds of item a tree may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink with this target.
    Symlink(String),
}

/// Why a tree or file cannot be bundled. `label` names the spec field it came from.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A file, directory or link could not be read.
    #[error("{label}: reading {what}{}", path.display())]
    Io {
        /// The spec field.
        label: String,
        /// `` (a file), `directory ` or `link `.
        what: &'static str,
        /// What was read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A name or link target that is not UTF-8.
    #[error("{label}: {what}{} is not {utf8}", path.display())]
    NotUtf8 {
        /// The spec field.
        label: String,
        /// `` (a name) or `link target of `.
        what: &'static str,
        /// The item.
        path: PathBuf,
        /// `valid UTF-8` or `UTF-8`.
        utf8: &'static str,
    },
    /// A single file that is something else.
    #[error("{label}: {} is not a regular file", path.display())]
    NotFile {
        /// The spec field.
        label: String,
        /// The item.
        path: PathBuf,
    },
    /// A device, FIFO or socket.
    #[error(
        "{label}: {} is a device, FIFO or socket; only files, directories and symlinks can be bundled",
        path.display()
    )]
    Special {
        /// The spec field.
        label: String,
        /// The item.
        path: PathBuf,
    },
    /// A setuid or setgid file.
    #[error("{label}: {} is setuid or setgid; ferry refuses to deliver such files", path.display())]
    Setuid {
        /// The spec field.
        label: String,
        /// The item.
        path: PathBuf,
    },
    /// A symlink leading out of the tree.
    #[error("{label}: symlink {} points to `{target}`, outside the tree", path.display())]
    Escapes {
        /// The spec field.
        label: String,
        /// The link.
        path: PathBuf,
        /// Its target.
        target: String,
    },
}

fn io(label: &str, what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TreeError {
    let (label, path) = (label.to_string(), path.to_path_buf());
    move |source| TreeError::Io { label, what, path, source }
}

fn not_utf8(label: &str, what: &'static str, path: &Path, utf8: &'static str) -> TreeError {
    TreeError::NotUtf8 { label: label.into(), what, path: path.into(), utf8 }
}

/// Lists `root` recursively in sorted order. `label` names the tree in errors.
pub fn walk(root: &Path, label: &str) -> Result<Vec<TreeItem>, TreeError> {
    let mut out = Vec::new();
    walk_into(root, root, label, &mut out)?;
    Ok(out)
}

/// Describes a single file (not a directory) the same way `walk` would.
pub fn single_file(path: &Path, rel: &str, label: &str) -> Result<TreeItem, TreeError> {
    let meta = std::fs::metadata(path).map_err(io(label, "", path))?;
    check_type(&meta, path, label)?;
    if !meta.is_file() {
        return Err(TreeError::NotFile { label: label.into(), path: path.into() });
    }
    Ok(TreeItem {
        rel: rel.into(),
        source: path.into(),
        kind: ItemKind::File,
        mode: meta.permissions().mode() & 0o7777,
        size: meta.len(),
    })
}

fn check_type(meta: &std::fs::Metadata, path: &Path, label: &str) -> Result<(), TreeError> {
    let ft = meta.file_type();
    if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
        return Err(TreeError::Special { label: label.into(), path: path.into() });
    }
    if meta.permissions().mode() & 0o6000 != 0 && !ft.is_symlink() {
        return Err(TreeError::Setuid { label: label.into(), path: path.into() });
    }
    Ok(())
}

fn walk_into(root: &Path, dir: &Path, label: &str, out: &mut Vec<TreeItem>) -> Result<(), TreeError> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(label, "directory ", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(io(label, "directory ", dir))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel_path = path.strip_prefix(root).expect("inside root");
        let rel = rel_path.to_str().ok_or_else(|| not_utf8(label, "", &path, "valid UTF-8"))?.to_string();
        let meta = std::fs::symlink_metadata(&path).map_err(io(label, "", &path))?;
        check_type(&meta, &path, label)?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(label, "link ", &path))?;
            let target_str =
                target.to_str().ok_or_else(|| not_utf8(label, "link target of ", &path, "UTF-8"))?.to_string();
            if !link_stays_inside(rel_path, &target) {
                return Err(TreeError::Escapes { label: label.into(), path, target: target_str });
            }
            out.push(TreeItem { rel, source: path, kind: ItemKind::Symlink(target_str), mode: 0o777, size: 0 });
        } else if ft.is_dir() {
            out.push(TreeItem { rel, source: path.clone(), kind: ItemKind::Dir, mode, size: 0 });
            walk_into(root, &path, label, out)?;
        } else {
            out.push(TreeItem { rel, source: path, kind: ItemKind::File, mode, size: meta.len() });
        }
    }
    Ok(())
}

/// Whether a link at `link_rel` (relative to the tree root) with `target` resolves inside the
/// tree. Absolute targets are read relative to the tree root, since the tree is laid onto `/`.
pub fn link_stays_inside(link_rel: &Path, target: &Path) -> bool {
    let mut stack: Vec<Component> = Vec::new();
    if target.is_relative()
        && let Some(parent) = link_rel.parent()
    {
        stack.extend(parent.components().filter(|c| matches!(c, Component::Normal(_))));
    }
    for c in target.components() {
        match c {
            Component::Normal(_) => stack.push(c),
            Component::ParentDir => {
                if stack.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_and_outside() {
        assert!(link_stays_inside(Path::new("usr/bin/x"), Path::new("../lib/y")));
        assert!(link_stays_inside(Path::new("bin"), Path::new("usr/bin")));
        assert!(link_stays_inside(Path::new("usr/bin/x"), Path::new("/usr/lib/y")));
        assert!(!link_stays_inside(Path::new("usr/x"), Path::new("../../etc/passwd")));
        assert!(!link_stays_inside(Path::new("x"), Path::new("/../../etc")));
    }
}
