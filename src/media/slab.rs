//! A reused byte slab that turns short audio frames into [`Bytes`] without a heap
//! allocation per frame.
//!
//! Owns: one growable buffer per user (a call's caller-audio path, a provider
//! session's output). Each [`FrameSlab::copy`] appends the frame to the buffer and
//! splits it off as a frozen, reference-counted [`Bytes`] that shares the buffer.
//! Once every frame handed out has been dropped, the next refill reuses the same
//! memory in place (`BytesMut::reserve` reclaims a buffer it owns alone), so a
//! steady stream of frames consumed promptly allocates nothing. A consumer that holds
//! frames for long only costs a fresh buffer, never a wrong byte.
//!
//! Must not: hand out overlapping views, or hold more than one buffer of its own.

#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};

/// Default slab size: 32 KiB is 1 s of 16 kHz slin (640 B frames) or 4 s of G.711.
pub const DEFAULT_SLAB_BYTES: usize = 32 * 1024;

/// Copies frames into a reused buffer; see the module docs.
#[derive(Debug)]
pub struct FrameSlab {
    buf: BytesMut,
    slab_bytes: usize,
}

impl Default for FrameSlab {
    fn default() -> Self {
        FrameSlab::new(DEFAULT_SLAB_BYTES)
    }
}

impl FrameSlab {
    /// A slab that refills `slab_bytes` at a time (at least 1 KiB). Allocates nothing
    /// until the first frame.
    pub fn new(slab_bytes: usize) -> Self {
        FrameSlab {
            buf: BytesMut::new(),
            slab_bytes: slab_bytes.max(1024),
        }
    }

    /// `data` as an owned [`Bytes`]; allocates only when the slab is exhausted while
    /// earlier frames are still held (or on first use).
    pub fn copy(&mut self, data: &[u8]) -> Bytes {
        self.fill(data.len(), |dst| dst.copy_from_slice(data))
    }

    /// An owned [`Bytes`] of `len` bytes written by `write` (which gets exactly `len`
    /// zeroed bytes); the same allocation rule as [`FrameSlab::copy`].
    pub fn fill(&mut self, len: usize, write: impl FnOnce(&mut [u8])) -> Bytes {
        if self.buf.capacity() < len {
            self.buf.reserve(self.slab_bytes.max(len));
        }
        self.buf.resize(len, 0);
        write(&mut self.buf[..len]);
        self.buf.split_to(len).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_independent_copies() {
        let mut s = FrameSlab::new(1024);
        let a = s.copy(&[1, 2, 3]);
        let b = s.copy(&[4, 5]);
        let c = s.fill(4, |d| d.copy_from_slice(&[9, 9, 9, 9]));
        assert_eq!(&a[..], &[1, 2, 3]);
        assert_eq!(&b[..], &[4, 5]);
        assert_eq!(&c[..], &[9, 9, 9, 9]);
    }

    #[test]
    fn frames_outlive_refills_unchanged() {
        let mut s = FrameSlab::new(1024);
        let held: Vec<Bytes> = (0..100u8).map(|i| s.copy(&[i; 100])).collect();
        for (i, b) in held.iter().enumerate() {
            assert_eq!(&b[..], &[i as u8; 100][..]);
        }
    }

    #[test]
    fn oversize_frame_fits() {
        let mut s = FrameSlab::new(1024);
        let big = vec![7u8; 5000];
        assert_eq!(&s.copy(&big)[..], &big[..]);
        assert_eq!(s.copy(&[]).len(), 0);
    }

    #[test]
    fn buffer_is_reused_once_frames_are_dropped() {
        let mut s = FrameSlab::new(4096);
        let first = s.copy(&[1; 640]);
        let base = first.as_ptr();
        drop(first);
        // Fill the slab a few times over, dropping each frame at once: every frame
        // lands inside the first buffer (reclaimed, never reallocated).
        for _ in 0..100 {
            let f = s.copy(&[2; 640]);
            let off = f.as_ptr() as usize - base as usize;
            assert!(off + 640 <= 4096, "frame outside the original buffer");
        }
    }
}
