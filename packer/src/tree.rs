//! Walks a directory tree the way a node's filesystem should receive it: modes kept, setuid
//! refused, device files refused, and symlinks accepted only when they stay inside the tree.

use anyhow::{Context, Result, bail};
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

/// Lists `root` recursively in sorted order. `label` names the tree in errors.
pub fn walk(root: &Path, label: &str) -> Result<Vec<TreeItem>> {
    let mut out = Vec::new();
    walk_into(root, root, label, &mut out)?;
    Ok(out)
}

/// Describes a single file (not a directory) the same way `walk` would.
pub fn single_file(path: &Path, rel: &str, label: &str) -> Result<TreeItem> {
    let meta = std::fs::metadata(path).with_context(|| format!("{label}: reading {}", path.display()))?;
    check_type(&meta, path, label)?;
    if !meta.is_file() {
        bail!("{label}: {} is not a regular file", path.display());
    }
    Ok(TreeItem {
        rel: rel.into(),
        source: path.into(),
        kind: ItemKind::File,
        mode: meta.permissions().mode() & 0o7777,
        size: meta.len(),
    })
}

fn check_type(meta: &std::fs::Metadata, path: &Path, label: &str) -> Result<()> {
    let ft = meta.file_type();
    if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
        bail!(
            "{label}: {} is a device, FIFO or socket; only files, directories and symlinks can be bundled",
            path.display()
        );
    }
    if meta.permissions().mode() & 0o6000 != 0 && !ft.is_symlink() {
        bail!("{label}: {} is setuid or setgid; ferry refuses to deliver such files", path.display());
    }
    Ok(())
}

fn walk_into(root: &Path, dir: &Path, label: &str, out: &mut Vec<TreeItem>) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{label}: reading directory {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("{label}: reading directory {}", dir.display()))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel_path = path.strip_prefix(root).expect("inside root");
        let rel =
            rel_path.to_str().with_context(|| format!("{label}: {} is not valid UTF-8", path.display()))?.to_string();
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("{label}: reading {}", path.display()))?;
        check_type(&meta, &path, label)?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target =
                std::fs::read_link(&path).with_context(|| format!("{label}: reading link {}", path.display()))?;
            let target_str = target
                .to_str()
                .with_context(|| format!("{label}: link target of {} is not UTF-8", path.display()))?
                .to_string();
            if !link_stays_inside(rel_path, &target) {
                bail!("{label}: symlink {} points to `{target_str}`, outside the tree", path.display());
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
    if target.is_relative() {
        if let Some(parent) = link_rel.parent() {
            stack.extend(parent.components().filter(|c| matches!(c, Component::Normal(_))));
        }
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
