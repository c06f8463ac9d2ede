//! Seeding a new copy from the installer a host already holds: when a run delivers a new release
//! (an upgrade, or a differential release completed on the operator's machine), every entry the
//! previous installer holds with the same path and shape (image blobs are named by digest, so an
//! unchanged image always matches) is copied from it into the new copy before the host says
//! what it lacks. Only what changed then crosses the network.
//!
//! Nothing copied is trusted: the receiver checks every wanted chunk against the new installer's
//! signed index afterwards, and a chunk that does not match (same path and size, other bytes) is
//! simply asked for.
//!
//! Owns also telling the never-written parts (holes) of a sparse copy, which both seeding and
//! the receiver's check of what a copy lacks skip without reading.

use payload_format::{Entry, Payload};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes copied per read and write, and the granularity at which holes are skipped.
const PIECE: u64 = 1 << 20;

/// Copies into `part` (the new installer's copy being filled, described by `new`) the stored
/// bytes of each entry that covers a wanted chunk and that the installer at `previous` holds in
/// the same shape. Best effort: a previous file that is missing, unreadable or not an installer
/// seeds nothing, and parts of it that were never delivered (holes) are not copied.
pub fn from_previous(previous: &Path, new: &Payload, part: &File, want: &[u64]) {
    let Ok(old) = Payload::open(previous) else { return };
    let held: HashMap<&str, &Entry> = old.index().entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut wanted = vec![false; new.chunk_count() as usize];
    for &n in want {
        if let Some(w) = wanted.get_mut(n as usize) {
            *w = true;
        }
    }
    let mut buf = vec![0u8; PIECE as usize];
    for e in new.index().entries.iter().filter(|e| e.stored_len > 0) {
        let (first, last) = (new.chunk_of(e.offset), new.chunk_of(e.offset + e.stored_len - 1));
        if !(first..=last).any(|n| wanted.get(n as usize).copied().unwrap_or(false)) {
            continue;
        }
        let Some(o) = held.get(e.path.as_str()).filter(|o| o.same_shape(e)) else { continue };
        // An entry that cannot be copied is simply asked for.
        let _ = copy_entry(old.file(), o.offset, part, e.offset, e.stored_len, &mut buf);
    }
}

/// Copies `len` bytes from `from` at `src` to `to` at `dst`, piece by piece, skipping pieces
/// `from` holds no data for.
fn copy_entry(from: &File, src: u64, to: &File, dst: u64, len: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < len {
        let n = (len - at).min(PIECE);
        if !is_hole(from, src + at, src + at + n) {
            from.read_exact_at(&mut buf[..n as usize], src + at)?;
            to.write_all_at(&buf[..n as usize], dst + at)?;
        }
        at += n;
    }
    Ok(())
}

/// Whether `start..end` of `file` holds no data at all (`SEEK_DATA` finds none before `end`).
/// False whenever the filesystem cannot tell, so the caller reads and checks.
pub(super) fn is_hole(file: &File, start: u64, end: u64) -> bool {
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    // SAFETY: lseek on an fd we own; every read and write here is positional (pread/pwrite), so
    // moving the file offset changes nothing else.
    let r = unsafe { libc::lseek(fd, start as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        // ENXIO: no data at or after `start`.
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    }
    r as u64 >= end
}
