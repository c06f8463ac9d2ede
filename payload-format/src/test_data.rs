//! Deterministic content for the crate's tests.

/// `len` deterministic bytes from `seed`: compressible text when `text`, otherwise noise (which,
/// like image layers, does not compress).
pub(crate) fn bytes(len: usize, seed: u64, text: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|i| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if text { b"kubelet containerd etcd\n"[(i + (x >> 60) as usize) % 24] } else { (x >> 33) as u8 }
        })
        .collect()
}
