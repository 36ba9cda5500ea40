//! RTP (RFC 3550) for the ARI ExternalMedia leg: zero-copy header parsing, header
//! building into caller buffers, sequence-number and timestamp extension, and the
//! outbound header generator.
//!
//! Owns: the 12-byte fixed header, CSRC list, header extension and padding rules of
//! RFC 3550 section 5.1/5.3.1; [`SeqExtender`] / [`TsExtender`] (16/32-bit wrap
//! handling after appendix A.1); [`RtpSender`] (SSRC, sequence +1, timestamp
//! +samples per packet, marker at talk-spurt start).
//!
//! Must not: touch sockets, read the clock, pick random numbers (the engine supplies
//! SSRC and initial sequence/timestamp), allocate per packet, or trust any length
//! field it reads: every length is checked against the buffer, and bad input from the
//! network is an [`RtpError`], never a panic. No RTCP and no DTMF here (the
//! ExternalMedia leg has neither).

#![forbid(unsafe_code)]

use bytes::{BufMut, BytesMut};

/// The only RTP version voxd speaks.
pub const RTP_VERSION: u8 = 2;
/// Length of the fixed RTP header (no CSRCs, no extension).
pub const HEADER_LEN: usize = 12;
/// Static payload type for G.711 mu-law, 8 kHz (RFC 3551).
pub const PT_PCMU: u8 = 0;
/// Static payload type for G.711 A-law, 8 kHz (RFC 3551).
pub const PT_PCMA: u8 = 8;

/// Why an RTP packet was refused or could not be built.
///
/// Parse errors are peer faults (a malformed datagram from Asterisk or whoever sent
/// to the RTP port): drop the packet and count it. Build errors are internal faults
/// (a voxd bug: a too-small buffer or a header voxd cannot write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Fewer than 12 bytes.
    #[error("RTP packet of {len} bytes is shorter than the 12-byte header")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// Version field is not 2.
    #[error("RTP version {version}, expected 2")]
    BadVersion {
        /// The version bits found.
        version: u8,
    },
    /// The CSRC count says more identifiers than the datagram holds.
    #[error("RTP CSRC count {count} needs {needed} bytes but the packet has {len}")]
    CsrcOverflow {
        /// CC field.
        count: u8,
        /// Bytes the header would need.
        needed: usize,
        /// Datagram length.
        len: usize,
    },
    /// The X bit is set but the 4-byte extension header does not fit.
    #[error("RTP extension header truncated: needs 4 bytes at offset {offset}, packet has {len}")]
    ExtensionHeaderTruncated {
        /// Where the extension header starts.
        offset: usize,
        /// Datagram length.
        len: usize,
    },
    /// The extension length (in 32-bit words) runs past the end of the datagram.
    #[error("RTP extension of {words} words ({bytes} bytes) at offset {offset} overruns the {len}-byte packet")]
    ExtensionOverflow {
        /// Extension length field, in 32-bit words.
        words: u16,
        /// That length in bytes.
        bytes: usize,
        /// Where the extension data starts.
        offset: usize,
        /// Datagram length.
        len: usize,
    },
    /// The P bit is set but the final padding count is zero.
    #[error("RTP padding bit set but the padding count is 0")]
    ZeroPadding,
    /// The padding count is larger than what follows the header.
    #[error("RTP padding of {padding} bytes exceeds the {available} bytes after the header")]
    PaddingOverflow {
        /// Last byte of the packet.
        padding: u8,
        /// Bytes after the header, CSRCs and extension.
        available: usize,
    },
    /// `build`: the output buffer cannot hold header + payload.
    #[error("RTP output buffer of {capacity} bytes cannot hold {needed}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
    /// `build`: the header asks for something `build` does not write (version other
    /// than 2, padding, extension, CSRCs, or a payload type above 127).
    #[error("RTP build supports only a plain v2 header with payload type <= 127: {what}")]
    Unsupported {
        /// What was wrong.
        what: &'static str,
    },
}

impl RtpError {
    /// True for malformed input from the network (drop the packet, count it); false
    /// for a voxd bug found while building.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(
            self,
            RtpError::BufferTooSmall { .. } | RtpError::Unsupported { .. }
        )
    }

    /// A short, bounded label for metrics (`rtp_dropped_total{reason=..}`).
    pub fn label(&self) -> &'static str {
        match self {
            RtpError::TooShort { .. } => "too_short",
            RtpError::BadVersion { .. } => "bad_version",
            RtpError::CsrcOverflow { .. } => "csrc_overflow",
            RtpError::ExtensionHeaderTruncated { .. } => "extension_truncated",
            RtpError::ExtensionOverflow { .. } => "extension_overflow",
            RtpError::ZeroPadding => "zero_padding",
            RtpError::PaddingOverflow { .. } => "padding_overflow",
            RtpError::BufferTooSmall { .. } => "buffer_too_small",
            RtpError::Unsupported { .. } => "unsupported_header",
        }
    }
}

/// The fixed part of an RTP header, as parsed or as to be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RtpHeader {
    /// V: always 2 for accepted packets.
    pub version: u8,
    /// P: the packet ends in padding (already stripped from [`RtpPacket::payload`]).
    pub padding: bool,
    /// X: a header extension follows the CSRCs.
    pub extension: bool,
    /// CC: number of CSRC identifiers (0..=15).
    pub csrc_count: u8,
    /// M: for audio, the first packet of a talk spurt.
    pub marker: bool,
    /// PT: payload type (0..=127); [`PT_PCMU`] or [`PT_PCMA`] on this leg.
    pub payload_type: u8,
    /// Sequence number (wraps at 2^16; see [`SeqExtender`]).
    pub sequence: u16,
    /// Media timestamp in samples of the payload clock (wraps; see [`TsExtender`]).
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

impl RtpHeader {
    /// A plain v2 header (no padding, extension or CSRCs), as [`build`] writes.
    pub const fn new(payload_type: u8, sequence: u16, timestamp: u32, ssrc: u32) -> Self {
        RtpHeader {
            version: RTP_VERSION,
            padding: false,
            extension: false,
            csrc_count: 0,
            marker: false,
            payload_type,
            sequence,
            timestamp,
            ssrc,
        }
    }
}

/// A parsed RTP packet borrowing from the datagram it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The fixed header.
    pub header: RtpHeader,
    /// The CSRC list, `4 * csrc_count` raw big-endian bytes; see [`RtpPacket::csrc_ids`].
    pub csrcs: &'a [u8],
    /// The header extension, if X was set: (profile-defined 16 bits, data whose length
    /// is the extension length field times 4).
    pub extension: Option<(u16, &'a [u8])>,
    /// The payload, with any padding removed.
    pub payload: &'a [u8],
    /// Padding bytes removed from the end (0 if P was clear).
    pub padding_len: u8,
}

impl<'a> RtpPacket<'a> {
    /// The CSRC identifiers, in order.
    pub fn csrc_ids(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.csrcs
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Parses one RTP datagram without copying. Called by the engine's RTP receive path
/// for each datagram; returns the header and borrowed CSRCs / extension / payload, or
/// a peer-fault [`RtpError`] saying what was malformed.
pub fn parse(buf: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    let len = buf.len();
    if len < HEADER_LEN {
        return Err(RtpError::TooShort { len });
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let version = b0 >> 6;
    if version != RTP_VERSION {
        return Err(RtpError::BadVersion { version });
    }
    let header = RtpHeader {
        version,
        padding: b0 & 0x20 != 0,
        extension: b0 & 0x10 != 0,
        csrc_count: b0 & 0x0F,
        marker: b1 & 0x80 != 0,
        payload_type: b1 & 0x7F,
        sequence: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
    };

    let csrc_end = HEADER_LEN + 4 * header.csrc_count as usize;
    if csrc_end > len {
        return Err(RtpError::CsrcOverflow {
            count: header.csrc_count,
            needed: csrc_end,
            len,
        });
    }
    let csrcs = &buf[HEADER_LEN..csrc_end];

    let mut offset = csrc_end;
    let extension = if header.extension {
        if len - offset < 4 {
            return Err(RtpError::ExtensionHeaderTruncated { offset, len });
        }
        let profile = u16::from_be_bytes([buf[offset], buf[offset + 1]]);
        let words = u16::from_be_bytes([buf[offset + 2], buf[offset + 3]]);
        let bytes = 4 * words as usize;
        let data_start = offset + 4;
        if bytes > len - data_start {
            return Err(RtpError::ExtensionOverflow {
                words,
                bytes,
                offset: data_start,
                len,
            });
        }
        offset = data_start + bytes;
        Some((profile, &buf[data_start..offset]))
    } else {
        None
    };

    let mut end = len;
    let mut padding_len = 0;
    if header.padding {
        let pad = buf[len - 1];
        let available = len - offset;
        if pad == 0 {
            return Err(RtpError::ZeroPadding);
        }
        if pad as usize > available {
            return Err(RtpError::PaddingOverflow {
                padding: pad,
                available,
            });
        }
        end -= pad as usize;
        padding_len = pad;
    }

    Ok(RtpPacket {
        header,
        csrcs,
        extension,
        payload: &buf[offset..end],
        padding_len,
    })
}

fn check_buildable(header: &RtpHeader) -> Result<(), RtpError> {
    let what = if header.version != RTP_VERSION {
        "version must be 2"
    } else if header.padding {
        "padding is not written"
    } else if header.extension {
        "extensions are not written"
    } else if header.csrc_count != 0 {
        "CSRCs are not written"
    } else if header.payload_type > 0x7F {
        "payload type above 127"
    } else {
        return Ok(());
    };
    Err(RtpError::Unsupported { what })
}

#[inline]
fn header_bytes(header: &RtpHeader) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = RTP_VERSION << 6;
    h[1] = (u8::from(header.marker) << 7) | header.payload_type;
    h[2..4].copy_from_slice(&header.sequence.to_be_bytes());
    h[4..8].copy_from_slice(&header.timestamp.to_be_bytes());
    h[8..12].copy_from_slice(&header.ssrc.to_be_bytes());
    h
}

/// Writes a plain 12-byte header (no padding, extension or CSRCs) followed by
/// `payload` at the start of `out`. Called by the outbound path once per 20 ms packet;
/// returns the number of bytes written (`12 + payload.len()`), or an internal-fault
/// error if `out` is too small or the header asks for padding/extension/CSRCs.
pub fn build(header: &RtpHeader, payload: &[u8], out: &mut [u8]) -> Result<usize, RtpError> {
    check_buildable(header)?;
    let needed = HEADER_LEN + payload.len();
    if out.len() < needed {
        return Err(RtpError::BufferTooSmall {
            needed,
            capacity: out.len(),
        });
    }
    out[..HEADER_LEN].copy_from_slice(&header_bytes(header));
    out[HEADER_LEN..needed].copy_from_slice(payload);
    Ok(needed)
}

/// Like [`build`], but appends header and payload to `out` (growing it only if its
/// spare capacity is short). Returns the number of bytes appended.
pub fn build_into(
    header: &RtpHeader,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<usize, RtpError> {
    check_buildable(header)?;
    out.reserve(HEADER_LEN + payload.len());
    out.put_slice(&header_bytes(header));
    out.put_slice(payload);
    Ok(HEADER_LEN + payload.len())
}

/// Extends 16-bit RTP sequence numbers to 64 bits, one instance per received stream.
///
/// Each number is placed at the extended value nearest the highest seen so far: a
/// forward step of less than half the space (32768) advances, anything else is a late
/// or duplicate packet, so a small number after a large one is a wrap forward and a
/// large number after a wrap is a late packet from the previous cycle (RFC 3550 A.1).
/// The first number maps to `65536 + seq` (cycle 1) so that packets older than it
/// still map below it; only differences between extended values carry meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqExtender {
    inner: Unwrapper<16>,
}

impl SeqExtender {
    /// A fresh extender for a new stream (or after an SSRC change).
    pub const fn new() -> Self {
        SeqExtender {
            inner: Unwrapper { highest: None },
        }
    }

    /// Called for every received packet, in arrival order; returns its extended
    /// sequence number. Duplicates return the same value as the original.
    pub fn extend(&mut self, seq: u16) -> u64 {
        self.inner.extend(u64::from(seq))
    }

    /// The highest extended sequence number seen, if any packet was seen.
    pub const fn highest(&self) -> Option<u64> {
        self.inner.highest
    }
}

/// Extends 32-bit RTP timestamps to 64 bits, with the same rule as [`SeqExtender`]
/// (half the 2^32 space forward is a wrap; the first value maps to `2^32 + ts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TsExtender {
    inner: Unwrapper<32>,
}

impl TsExtender {
    /// A fresh extender for a new stream.
    pub const fn new() -> Self {
        TsExtender {
            inner: Unwrapper { highest: None },
        }
    }

    /// Called for every received packet; returns its extended timestamp.
    pub fn extend(&mut self, ts: u32) -> u64 {
        self.inner.extend(u64::from(ts))
    }

    /// The highest extended timestamp seen, if any.
    pub const fn highest(&self) -> Option<u64> {
        self.inner.highest
    }
}

/// The shared unwrapping rule for a `BITS`-bit counter (16 for sequence numbers, 32
/// for timestamps): place each value at the extended value nearest the highest seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Unwrapper<const BITS: u32> {
    highest: Option<u64>,
}

impl<const BITS: u32> Unwrapper<BITS> {
    fn extend(&mut self, value: u64) -> u64 {
        let span = 1u64 << BITS;
        let Some(highest) = self.highest else {
            let ext = span | value;
            self.highest = Some(ext);
            return ext;
        };
        // Forward distance modulo the counter space, then signed: less than half the
        // space forward advances, anything else is behind (late or duplicate).
        let forward = value.wrapping_sub(highest) & (span - 1);
        let delta = if forward < span / 2 {
            forward as i64
        } else {
            forward as i64 - span as i64
        };
        // highest >= span and delta >= -span/2, so this never goes below zero.
        let ext = (highest as i64 + delta) as u64;
        if ext > highest {
            self.highest = Some(ext);
        }
        ext
    }
}

/// Generates headers for one outbound RTP stream (voxd -> Asterisk).
///
/// The engine creates it with a random SSRC and random initial sequence/timestamp;
/// the call calls [`RtpSender::next_header`] once per packet it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpSender {
    ssrc: u32,
    seq: u16,
    ts: u32,
    pt: u8,
    samples_per_packet: u32,
}

impl RtpSender {
    /// A sender starting at `initial_seq` / `initial_ts`, with payload type
    /// `payload_type` (masked to 7 bits) and a timestamp step of `samples_per_packet`
    /// (160 for 20 ms at 8 kHz).
    pub const fn new(
        ssrc: u32,
        initial_seq: u16,
        initial_ts: u32,
        payload_type: u8,
        samples_per_packet: u32,
    ) -> Self {
        RtpSender {
            ssrc,
            seq: initial_seq,
            ts: initial_ts,
            pt: payload_type & 0x7F,
            samples_per_packet,
        }
    }

    /// The header for the next packet; then advances sequence by 1 and timestamp by
    /// the samples per packet (both wrapping). Set `marker` on the first packet of a
    /// talk spurt.
    pub fn next_header(&mut self, marker: bool) -> RtpHeader {
        let mut h = RtpHeader::new(self.pt, self.seq, self.ts, self.ssrc);
        h.marker = marker;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(self.samples_per_packet);
        h
    }

    /// Advances the timestamp by `samples` without sending (time passes in silence
    /// suppression); the sequence number does not move.
    pub fn skip_samples(&mut self, samples: u32) {
        self.ts = self.ts.wrapping_add(samples);
    }

    /// The SSRC of this stream.
    pub const fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The sequence number the next header will carry.
    pub const fn next_sequence(&self) -> u16 {
        self.seq
    }

    /// The timestamp the next header will carry.
    pub const fn next_timestamp(&self) -> u32 {
        self.ts
    }

    /// The payload type of this stream.
    pub const fn payload_type(&self) -> u8 {
        self.pt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(b0: u8, rest_after_header: &[u8]) -> Vec<u8> {
        let mut v = vec![
            b0,
            0x80 | PT_PCMU,
            0x12,
            0x34,
            0,
            0,
            0x01,
            0x40,
            0xDE,
            0xAD,
            0xBE,
            0xEF,
        ];
        v.extend_from_slice(rest_after_header);
        v
    }

    #[test]
    fn parses_plain_packet() {
        let p = packet(0x80, &[1, 2, 3]);
        let pkt = parse(&p).unwrap();
        assert_eq!(
            pkt.header,
            RtpHeader {
                marker: true,
                ..RtpHeader::new(PT_PCMU, 0x1234, 320, 0xDEADBEEF)
            }
        );
        assert_eq!(pkt.payload, &[1, 2, 3]);
        assert!(pkt.csrcs.is_empty());
        assert_eq!(pkt.extension, None);
        assert_eq!(pkt.padding_len, 0);
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut rest = vec![];
        rest.extend_from_slice(&1u32.to_be_bytes());
        rest.extend_from_slice(&0xCAFEBABEu32.to_be_bytes());
        rest.extend_from_slice(&[0xBE, 0xDE, 0, 2]); // profile 0xBEDE, 2 words
        rest.extend_from_slice(&[9; 8]);
        rest.extend_from_slice(&[7, 7, 7]); // payload
        rest.extend_from_slice(&[0, 0, 3]); // 3 bytes padding
        let p = packet(0x80 | 0x20 | 0x10 | 2, &rest);
        let pkt = parse(&p).unwrap();
        assert_eq!(pkt.header.csrc_count, 2);
        assert!(pkt.header.padding && pkt.header.extension);
        assert_eq!(pkt.csrc_ids().collect::<Vec<_>>(), vec![1, 0xCAFEBABE]);
        assert_eq!(pkt.extension, Some((0xBEDE, &[9u8; 8][..])));
        assert_eq!(pkt.payload, &[7, 7, 7]);
        assert_eq!(pkt.padding_len, 3);
    }

    #[test]
    fn empty_extension_and_all_padding_are_valid() {
        let p = packet(0x80 | 0x10, &[0, 1, 0, 0]);
        let pkt = parse(&p).unwrap();
        assert_eq!(pkt.extension, Some((1, &[][..])));
        assert!(pkt.payload.is_empty());
        let p = packet(0x80 | 0x20, &[0, 0, 0, 4]);
        let pkt = parse(&p).unwrap();
        assert!(pkt.payload.is_empty());
        assert_eq!(pkt.padding_len, 4);
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(parse(&[0x80; 11]), Err(RtpError::TooShort { len: 11 }));
        assert_eq!(parse(&[]), Err(RtpError::TooShort { len: 0 }));
        assert_eq!(
            parse(&packet(0x40, &[])),
            Err(RtpError::BadVersion { version: 1 })
        );
        assert_eq!(
            parse(&packet(0x80 | 3, &[0; 8])),
            Err(RtpError::CsrcOverflow {
                count: 3,
                needed: 24,
                len: 20
            })
        );
        assert_eq!(
            parse(&packet(0x80 | 0x10, &[0, 0, 0])),
            Err(RtpError::ExtensionHeaderTruncated {
                offset: 12,
                len: 15
            })
        );
        assert_eq!(
            parse(&packet(0x80 | 0x10, &[0, 0, 0, 2, 1, 2, 3, 4])),
            Err(RtpError::ExtensionOverflow {
                words: 2,
                bytes: 8,
                offset: 16,
                len: 20
            })
        );
        // Huge extension length must not overflow or be trusted.
        assert!(matches!(
            parse(&packet(0x80 | 0x10, &[0, 0, 0xFF, 0xFF])),
            Err(RtpError::ExtensionOverflow { words: 0xFFFF, .. })
        ));
        assert_eq!(
            parse(&packet(0x80 | 0x20, &[1, 2, 0])),
            Err(RtpError::ZeroPadding)
        );
        assert_eq!(
            parse(&packet(0x80 | 0x20, &[1, 2, 4])),
            Err(RtpError::PaddingOverflow {
                padding: 4,
                available: 3
            })
        );
        // Padding may not eat into the extension.
        assert_eq!(
            parse(&packet(0x80 | 0x30, &[0, 0, 0, 1, 0, 0, 0, 5])),
            Err(RtpError::PaddingOverflow {
                padding: 5,
                available: 0
            })
        );
        // The padding bit with only a header: the count byte is the header's last.
        assert!(parse(&packet(0x80 | 0x20, &[])).is_err());
        for e in [RtpError::ZeroPadding, RtpError::TooShort { len: 0 }] {
            assert!(e.is_peer_fault());
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn build_then_parse_round_trips() {
        let mut h = RtpHeader::new(PT_PCMA, 65535, u32::MAX, 42);
        h.marker = true;
        let payload = [0xD5u8; 160];
        let mut out = [0u8; 172];
        let n = build(&h, &payload, &mut out).unwrap();
        assert_eq!(n, 172);
        let pkt = parse(&out[..n]).unwrap();
        assert_eq!(pkt.header, h);
        assert_eq!(pkt.payload, &payload[..]);

        let mut bm = BytesMut::with_capacity(200);
        bm.extend_from_slice(b"xx");
        assert_eq!(build_into(&h, &payload, &mut bm).unwrap(), 172);
        assert_eq!(&bm[2..], &out[..]);
    }

    #[test]
    fn build_refuses_small_buffer_and_unsupported_headers() {
        let h = RtpHeader::new(PT_PCMU, 1, 2, 3);
        let mut out = [0u8; 20];
        let e = build(&h, &[0; 9], &mut out).unwrap_err();
        assert_eq!(
            e,
            RtpError::BufferTooSmall {
                needed: 21,
                capacity: 20
            }
        );
        assert!(!e.is_peer_fault());
        for bad in [
            RtpHeader { csrc_count: 1, ..h },
            RtpHeader { padding: true, ..h },
            RtpHeader {
                extension: true,
                ..h
            },
            RtpHeader { version: 1, ..h },
            RtpHeader {
                payload_type: 128,
                ..h
            },
        ] {
            assert!(matches!(
                build(&bad, &[], &mut out),
                Err(RtpError::Unsupported { .. })
            ));
            let mut bm = BytesMut::new();
            assert!(build_into(&bad, &[], &mut bm).is_err());
            assert!(bm.is_empty());
        }
    }

    #[test]
    fn seq_extender_wraps_forward_and_handles_late_and_duplicates() {
        let mut x = SeqExtender::new();
        assert_eq!(x.highest(), None);
        let base = x.extend(65534);
        assert_eq!(x.extend(65535), base + 1);
        assert_eq!(x.extend(0), base + 2); // wrap forward
        assert_eq!(x.extend(1), base + 3);
        assert_eq!(x.extend(65535), base + 1); // late, from before the wrap
        assert_eq!(x.extend(1), base + 3); // duplicate
        assert_eq!(x.highest(), Some(base + 3));
        // A forward jump under half the space is forward.
        assert_eq!(x.extend(1 + 30000), base + 3 + 30000);
    }

    #[test]
    fn seq_extender_reorder_across_wrap() {
        let mut x = SeqExtender::new();
        let a = x.extend(65533);
        assert_eq!(x.extend(1), a + 4); // arrives before 65534..0
        assert_eq!(x.extend(65534), a + 1);
        assert_eq!(x.extend(0), a + 3);
        assert_eq!(x.extend(65535), a + 2);
        assert_eq!(x.highest(), Some(a + 4));
        // A packet sent before the very first one does not underflow.
        let mut y = SeqExtender::new();
        let first = y.extend(0);
        assert_eq!(y.extend(65535), first - 1);
    }

    #[test]
    fn ts_extender_wraps() {
        let mut x = TsExtender::new();
        let a = x.extend(u32::MAX - 159);
        assert_eq!(x.extend(0), a + 160);
        assert_eq!(x.extend(160), a + 320);
        assert_eq!(x.extend(u32::MAX - 159), a); // late
        assert_eq!(x.extend(160), a + 320); // duplicate
        assert_eq!(x.highest(), Some(a + 320));
    }

    #[test]
    fn sender_advances_and_wraps() {
        let mut s = RtpSender::new(0xABCD, 65535, u32::MAX - 100, PT_PCMU, 160);
        let h1 = s.next_header(true);
        assert_eq!(
            (h1.sequence, h1.timestamp, h1.marker),
            (65535, u32::MAX - 100, true)
        );
        assert_eq!(h1.ssrc, 0xABCD);
        assert_eq!(h1.payload_type, PT_PCMU);
        let h2 = s.next_header(false);
        assert_eq!((h2.sequence, h2.timestamp, h2.marker), (0, 59, false));
        s.skip_samples(320);
        assert_eq!(s.next_timestamp(), 59 + 160 + 320);
        assert_eq!(s.next_sequence(), 1);
        let mut out = [0u8; 12];
        assert_eq!(build(&h2, &[], &mut out), Ok(12));
    }

    fn arb_header() -> impl Strategy<Value = RtpHeader> {
        (
            any::<bool>(),
            0u8..128,
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(marker, pt, seq, ts, ssrc)| RtpHeader {
                marker,
                ..RtpHeader::new(pt, seq, ts, ssrc)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..128),
                              b0 in any::<u8>()) {
            let _ = parse(&buf);
            // Also with a version-2 first byte so the deeper checks are reached.
            let mut v = buf;
            if !v.is_empty() {
                v[0] = 0x80 | (b0 & 0x3F);
            }
            if let Ok(p) = parse(&v) {
                let total = 12 + p.csrcs.len()
                    + p.extension.map_or(0, |(_, d)| d.len() + 4)
                    + p.payload.len() + p.padding_len as usize;
                prop_assert_eq!(total, v.len());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn build_parse_round_trip(h in arb_header(),
                                  payload in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut out = vec![0u8; 12 + payload.len()];
            let n = build(&h, &payload, &mut out).unwrap();
            let p = parse(&out[..n]).unwrap();
            prop_assert_eq!(p.header, h);
            prop_assert_eq!(p.payload, &payload[..]);
        }

        #[test]
        fn seq_extender_tracks_a_random_walk(start in any::<u16>(),
                                            steps in proptest::collection::vec(-200i64..=300, 1..500)) {
            // A sender's true extended sequence does a random walk (reorder, loss,
            // duplicates) that never jumps 2^15 away from the highest so far.
            let mut x = SeqExtender::new();
            let base = x.extend(start) as i64;
            let mut truth = 0i64;
            let mut highest = 0i64;
            let mut prev_highest = x.highest().unwrap();
            for step in steps {
                truth = (truth + step).max(highest - 1000);
                highest = highest.max(truth);
                let seq = (start as i64 + truth).rem_euclid(65536) as u16;
                let ext = x.extend(seq) as i64;
                prop_assert_eq!(ext - base, truth);
                let h = x.highest().unwrap();
                prop_assert!(h >= prev_highest);
                prop_assert_eq!(h as i64 - base, highest);
                prev_highest = h;
            }
        }
    }
}
