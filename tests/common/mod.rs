//! Helpers shared by the engine integration tests.

#![allow(dead_code)]

pub mod rig;

/// A deterministic signal with no zero samples, so silence is told apart sample by
/// sample (the playout pads a partial last frame with zeros).
pub fn signal(n: usize, seed: u32) -> Vec<i16> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = (x % 20000) as i16 - 10000;
            if v == 0 {
                1
            } else {
                v
            }
        })
        .collect()
}

/// One AudioSocket frame: kind, big-endian length, payload.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, (payload.len() >> 8) as u8, payload.len() as u8];
    v.extend_from_slice(payload);
    v
}
