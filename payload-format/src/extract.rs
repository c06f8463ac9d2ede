//! Extracts entries to a directory: every byte checked against the signed index before it is
//! written, files written under a temporary name and renamed into place, nothing overwritten
//! unless asked, and free space checked first.

use crate::{Compression, Entry, EntryKind, Error, Payload, Result};
use rayon::prelude::*;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What to extract and where.
#[derive(Clone, Debug, Default)]
pub struct ExtractOptions {
    /// Destination directory (created if missing).
    pub dest: PathBuf,
    /// Entry paths or path prefixes; empty means everything.
    pub selection: Vec<String>,
    /// Replace existing files.
    pub force: bool,
}

/// What an extraction wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Regular files written.
    pub files: usize,
    /// Directories created or kept.
    pub dirs: usize,
    /// Symlinks created.
    pub symlinks: usize,
    /// Uncompressed bytes written.
    pub bytes: u64,
}

/// Raw entries are handled in pieces of this many chunks, so extraction of one large layer is
/// still spread over all cores.
const RAW_CHUNKS_PER_PIECE: u64 = 4;

/// Per-thread buffers and decoder, reused for every piece and frame the thread handles: a fresh
/// buffer per frame would touch new memory each time (with musl's allocator, a fresh mapping),
/// which costs more than the decompression on some machines.
struct Buffers {
    stored: Vec<u8>,
    plain: Vec<u8>,
    decoder: zstd::bulk::Decompressor<'static>,
}

fn with_buffers<T>(f: impl FnOnce(&mut Buffers) -> Result<T>) -> Result<T> {
    thread_local! {
        static BUFFERS: std::cell::RefCell<Option<Buffers>> = const { std::cell::RefCell::new(None) };
    }
    BUFFERS.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let decoder = zstd::bulk::Decompressor::new().map_err(|e| Error::Decompress {
                path: PathBuf::new(),
                entry: String::new(),
                detail: format!("starting a zstd decoder: {e}"),
            })?;
            *slot = Some(Buffers { stored: Vec::new(), plain: Vec::new(), decoder });
        }
        f(slot.as_mut().unwrap())
    })
}

impl Payload {
    /// Entries selected by `selection` (exact paths or directory prefixes). Each selector must
    /// match something.
    pub fn select(&self, selection: &[String]) -> Result<Vec<&Entry>> {
        let entries = &self.index().entries;
        if selection.is_empty() {
            return Ok(entries.iter().collect());
        }
        let mut out = Vec::new();
        for sel in selection {
            let sel = sel.trim_end_matches('/');
            let before = out.len();
            out.extend(entries.iter().filter(|e| e.path == sel || e.path.starts_with(&format!("{sel}/"))));
            if out.len() == before {
                return Err(Error::Extract(format!("no entry in {} matches `{sel}`", self.path().display())));
            }
        }
        out.sort_by_key(|e| e.offset);
        out.dedup_by(|a, b| a.path == b.path);
        Ok(out)
    }

    /// Extracts the selected entries. `progress` receives uncompressed bytes as they are written.
    pub fn extract(&self, opts: &ExtractOptions, progress: &(dyn Fn(u64) + Sync)) -> Result<ExtractSummary> {
        let selected = self.select(&opts.selection)?;
        let dest = &opts.dest;
        fs::create_dir_all(dest).map_err(Error::io("creating", dest))?;

        let mut conflicts = Vec::new();
        for e in &selected {
            let target = dest.join(&e.path);
            if let Ok(meta) = fs::symlink_metadata(&target) {
                let dir_onto_dir = e.kind == EntryKind::Dir && meta.is_dir();
                if !dir_onto_dir && !opts.force {
                    conflicts.push(target.display().to_string());
                }
            }
        }
        if !conflicts.is_empty() {
            let shown = conflicts.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            let more = if conflicts.len() > 5 { format!(" and {} more", conflicts.len() - 5) } else { String::new() };
            return Err(Error::Extract(format!(
                "refusing to overwrite {shown}{more}; pass --force to replace existing files"
            )));
        }

        let needed: u64 = selected.iter().map(|e| e.size).sum();
        let available = free_space(dest)?;
        if needed.saturating_add(1 << 20) > available {
            return Err(Error::Extract(format!(
                "not enough free space in {}: the selected entries need {} bytes, {} are available",
                dest.display(),
                needed,
                available
            )));
        }

        let mut summary = ExtractSummary::default();
        // Directories first, files next, symlinks last: a file is never written through a link
        // this extraction created.
        let dirs: Vec<&&Entry> = selected.iter().filter(|e| e.kind == EntryKind::Dir).collect();
        for e in &dirs {
            let p = dest.join(&e.path);
            ensure_no_symlink_parent(dest, &e.path)?;
            fs::create_dir_all(&p).map_err(Error::io("creating", &p))?;
            summary.dirs += 1;
        }
        let files: Vec<&Entry> = selected.iter().copied().filter(|e| e.kind == EntryKind::File).collect();
        files.par_iter().try_for_each(|e| self.extract_file(dest, e, progress))?;
        summary.files = files.len();
        summary.bytes = files.iter().map(|e| e.size).sum();
        for e in selected.iter().filter(|e| e.kind == EntryKind::Symlink) {
            ensure_no_symlink_parent(dest, &e.path)?;
            let p = dest.join(&e.path);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
            }
            let tmp = temp_name(&p);
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&e.link_target, &tmp).map_err(Error::io("creating symlink", &tmp))?;
            fs::rename(&tmp, &p).map_err(Error::io("renaming into place", &p))?;
            summary.symlinks += 1;
        }
        // Modes last, deepest first, so a read-only directory does not block its own contents.
        for e in dirs.iter().rev() {
            let p = dest.join(&e.path);
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode)).map_err(Error::io("setting mode of", &p))?;
        }
        Ok(summary)
    }

    fn extract_file(&self, dest: &Path, e: &Entry, progress: &(dyn Fn(u64) + Sync)) -> Result<()> {
        ensure_no_symlink_parent(dest, &e.path)?;
        let target = dest.join(&e.path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
        }
        let tmp = temp_name(&target);
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&tmp)
            .map_err(Error::io("creating", &tmp))?;
        let result = self.write_entry(&file, &tmp, e, progress).and_then(|_| {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(e.mode))
                .map_err(Error::io("setting mode of", &tmp))?;
            fs::rename(&tmp, &target).map_err(Error::io("renaming into place", &target))
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_entry(&self, file: &File, tmp: &Path, e: &Entry, progress: &(dyn Fn(u64) + Sync)) -> Result<()> {
        file.set_len(e.size).map_err(Error::io("sizing", tmp))?;
        match e.compression {
            Compression::Raw => {
                let piece = self.index().chunk_size as u64 * RAW_CHUNKS_PER_PIECE;
                let start = e.offset;
                let end = e.offset + e.stored_len;
                // Piece boundaries fall on chunk boundaries so no chunk is read twice.
                let mut bounds = vec![start];
                let mut next = self.chunk_range(self.chunk_of(start)).0 + piece;
                while next < end {
                    bounds.push(next);
                    next += piece;
                }
                bounds.push(end);
                bounds.par_windows(2).try_for_each(|w| {
                    with_buffers(|b| {
                        let range = self.read_verified_into(w[0], w[1], &mut b.stored)?;
                        let data = &b.stored[range];
                        file.write_all_at(data, w[0] - start).map_err(Error::io("writing", tmp))?;
                        progress(data.len() as u64);
                        Ok(())
                    })
                })
            }
            Compression::Zstd => (0..e.frames.len()).into_par_iter().try_for_each(|i| {
                with_buffers(|b| {
                    let (s, end) = e.frame_range(i);
                    let range = self.read_verified_into(s, end, &mut b.stored)?;
                    let out_off = i as u64 * e.frame_size as u64;
                    let expect = (e.size - out_off).min(e.frame_size as u64) as usize;
                    let bad = |detail: String| Error::Decompress {
                        path: self.path().into(),
                        entry: e.path.clone(),
                        detail: format!("frame {i}: {detail}"),
                    };
                    // One spare byte: a frame that decodes to more than it should is caught, not cut.
                    b.plain.resize(expect + 1, 0);
                    let n = b
                        .decoder
                        .decompress_to_buffer(&b.stored[range], &mut b.plain[..])
                        .map_err(|err| bad(err.to_string()))?;
                    if n != expect {
                        return Err(bad(format!("holds {n} bytes, expected {expect}")));
                    }
                    file.write_all_at(&b.plain[..n], out_off).map_err(Error::io("writing", tmp))?;
                    progress(n as u64);
                    Ok(())
                })
            }),
        }
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

fn temp_name(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".{name}.ferry-tmp"))
}

/// Refuses to write through a symlink that sits between `dest` and the entry.
fn ensure_no_symlink_parent(dest: &Path, entry: &str) -> Result<()> {
    let mut p = dest.to_path_buf();
    let parts: Vec<&str> = entry.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        p.push(part);
        if fs::symlink_metadata(&p).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
            return Err(Error::Extract(format!(
                "refusing to extract {entry}: {} is a symlink, and writing through it could escape {}",
                p.display(),
                dest.display()
            )));
        }
    }
    Ok(())
}

pub(crate) fn free_space(dir: &Path) -> Result<u64> {
    use std::ffi::CString;
    let c = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Extract(format!("{} contains a NUL byte", dir.display())))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::io("checking free space in", dir)(std::io::Error::last_os_error()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
