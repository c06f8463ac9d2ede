//! Feeds arbitrary bytes to the trailer and index parsers, the parts of a reader that see
//! untrusted input before any signature has been checked. They must never panic, loop, or
//! allocate by a size the input merely claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payload_format::{Index, Trailer, TRAILER_LEN};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz");
    // As a whole file: trailer at the end, then the index it points at.
    if data.len() >= TRAILER_LEN {
        let tail: &[u8; TRAILER_LEN] = data[data.len() - TRAILER_LEN..].try_into().unwrap();
        if let Ok(t) = Trailer::decode(tail, data.len() as u64, path) {
            let start = t.index_offset as usize;
            let end = start.saturating_add(t.index_len as usize);
            if let Some(index) = data.get(start..end) {
                let _ = Index::decode(index, (t.data_offset, t.index_offset), path);
            }
        }
    }
    // As an index on its own, against a plausible data region.
    let _ = Index::decode(data, (4096, 4096 + (data.len() as u64) * 4096), path);
});
