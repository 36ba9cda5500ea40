//! AudioSocket framing (Asterisk `res_audiosocket`): the streaming frame decoder for
//! bytes read from an AudioSocket TCP connection, typed access to frame payloads, and
//! the frame encoder for what voxd writes back.
//!
//! Owns: the wire format (1 byte kind, u16 big-endian payload length, payload), the
//! kind table (hangup, UUID, DTMF, slin at 8..192 kHz, error), the payload length
//! limit, slin little-endian sample access, UUID text formatting, and the rule of
//! which kinds voxd may send (hangup and audio only: Asterisk ends the call on
//! anything else, and on zero-length audio).
//!
//! Must not: touch sockets or the clock, copy received payloads (frames are split off
//! the read buffer with `split_to(..).freeze()`), allocate before a frame's header and
//! length have been checked, or panic on any input. Malformed input from Asterisk is
//! an [`AudioSocketError`] that is a peer fault for that one connection.

#![forbid(unsafe_code)]

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::Rate;

/// Bytes in a frame header: kind (1) + payload length (2, big-endian).
pub const HEADER_LEN: usize = 3;
/// Default payload limit of a [`Decoder`]: 8 KiB, over 20 ms at 192 kHz (7680 B).
pub const DEFAULT_MAX_PAYLOAD: usize = 8 * 1024;
/// The largest payload the format can express (the u16 length field).
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// The frame kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// 0x00: end of call (voxd -> Asterisk; Asterisk itself just closes the socket).
    Hangup,
    /// 0x01: the call's UUID, 16 raw bytes, first frame from Asterisk.
    Uuid,
    /// 0x03: one DTMF digit as one ASCII byte (Asterisk >= 20.14/21.9/22.4).
    Dtmf,
    /// 0x10: slin 8 kHz (older Asterisk tags every audio frame with this kind).
    Slin8,
    /// 0x11: slin 12 kHz.
    Slin12,
    /// 0x12: slin 16 kHz.
    Slin16,
    /// 0x13: slin 24 kHz.
    Slin24,
    /// 0x14: slin 32 kHz.
    Slin32,
    /// 0x15: slin 44.1 kHz (not a voxd [`Rate`]).
    Slin44,
    /// 0x16: slin 48 kHz.
    Slin48,
    /// 0x17: slin 96 kHz (not a voxd [`Rate`]).
    Slin96,
    /// 0x18: slin 192 kHz (not a voxd [`Rate`]).
    Slin192,
    /// 0xFF: error (defined by the protocol; not sent by current Asterisk).
    Error,
    /// Any other byte. Never holds one of the values above.
    Unknown(u8),
}

impl Kind {
    /// The kind for a kind byte read off the wire.
    pub const fn from_u8(b: u8) -> Kind {
        match b {
            0x00 => Kind::Hangup,
            0x01 => Kind::Uuid,
            0x03 => Kind::Dtmf,
            0x10 => Kind::Slin8,
            0x11 => Kind::Slin12,
            0x12 => Kind::Slin16,
            0x13 => Kind::Slin24,
            0x14 => Kind::Slin32,
            0x15 => Kind::Slin44,
            0x16 => Kind::Slin48,
            0x17 => Kind::Slin96,
            0x18 => Kind::Slin192,
            0xFF => Kind::Error,
            other => Kind::Unknown(other),
        }
    }

    /// The kind byte written on the wire.
    pub const fn as_u8(self) -> u8 {
        match self {
            Kind::Hangup => 0x00,
            Kind::Uuid => 0x01,
            Kind::Dtmf => 0x03,
            Kind::Slin8 => 0x10,
            Kind::Slin12 => 0x11,
            Kind::Slin16 => 0x12,
            Kind::Slin24 => 0x13,
            Kind::Slin32 => 0x14,
            Kind::Slin44 => 0x15,
            Kind::Slin48 => 0x16,
            Kind::Slin96 => 0x17,
            Kind::Slin192 => 0x18,
            Kind::Error => 0xFF,
            Kind::Unknown(b) => b,
        }
    }

    /// True for the slin kinds 0x10..=0x18.
    pub const fn is_audio(self) -> bool {
        matches!(self.as_u8(), 0x10..=0x18)
    }

    /// The sample rate in Hz of an audio kind (44100 for 0x15); `None` otherwise.
    pub const fn sample_rate_hz(self) -> Option<u32> {
        Some(match self {
            Kind::Slin8 => 8_000,
            Kind::Slin12 => 12_000,
            Kind::Slin16 => 16_000,
            Kind::Slin24 => 24_000,
            Kind::Slin32 => 32_000,
            Kind::Slin44 => 44_100,
            Kind::Slin48 => 48_000,
            Kind::Slin96 => 96_000,
            Kind::Slin192 => 192_000,
            _ => return None,
        })
    }

    /// The voxd [`Rate`] of an audio kind, if voxd supports it; `None` for 44.1, 96
    /// and 192 kHz and for non-audio kinds. Remember that older Asterisk tags all
    /// audio 0x10: the configured rate wins over this.
    pub const fn rate(self) -> Option<Rate> {
        match self {
            Kind::Slin8 => Some(Rate::Hz8000),
            Kind::Slin12 => Some(Rate::Hz12000),
            Kind::Slin16 => Some(Rate::Hz16000),
            Kind::Slin24 => Some(Rate::Hz24000),
            Kind::Slin32 => Some(Rate::Hz32000),
            Kind::Slin48 => Some(Rate::Hz48000),
            _ => None,
        }
    }

    /// The audio kind voxd sends for slin at `rate`.
    pub const fn for_rate(rate: Rate) -> Kind {
        match rate {
            Rate::Hz8000 => Kind::Slin8,
            Rate::Hz12000 => Kind::Slin12,
            Rate::Hz16000 => Kind::Slin16,
            Rate::Hz24000 => Kind::Slin24,
            Rate::Hz32000 => Kind::Slin32,
            Rate::Hz48000 => Kind::Slin48,
        }
    }

    /// True for the kinds Asterisk accepts from voxd: hangup and audio. Asterisk ends
    /// the call on anything else.
    pub const fn is_sendable(self) -> bool {
        matches!(self, Kind::Hangup) || self.is_audio()
    }

    /// A bounded, human-readable name ("slin16", "unknown").
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Hangup => "hangup",
            Kind::Uuid => "uuid",
            Kind::Dtmf => "dtmf",
            Kind::Slin8 => "slin",
            Kind::Slin12 => "slin12",
            Kind::Slin16 => "slin16",
            Kind::Slin24 => "slin24",
            Kind::Slin32 => "slin32",
            Kind::Slin44 => "slin44",
            Kind::Slin48 => "slin48",
            Kind::Slin96 => "slin96",
            Kind::Slin192 => "slin192",
            Kind::Error => "error",
            Kind::Unknown(_) => "unknown",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:02x})", self.name(), self.as_u8())
    }
}

/// What was wrong with an AudioSocket frame or request.
///
/// All variants but [`OutputTooSmall`](AudioSocketError::OutputTooSmall),
/// [`NotSendable`](AudioSocketError::NotSendable),
/// [`EncodeTooLarge`](AudioSocketError::EncodeTooLarge) (voxd bugs) and
/// [`BadUuidText`](AudioSocketError::BadUuidText) (voxd's own input) are peer faults
/// (bad bytes from Asterisk); see [`AudioSocketError::is_peer_fault`]. After a decoder error the
/// stream is out of sync or hostile: close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioSocketError {
    /// The header announces a payload over the decoder's limit (checked before any
    /// buffer is grown).
    #[error(
        "AudioSocket {kind} frame announces a {len}-byte payload, over the {limit}-byte limit"
    )]
    PayloadTooLarge {
        /// Kind of the refused frame.
        kind: Kind,
        /// Announced payload length.
        len: usize,
        /// The decoder's limit.
        limit: usize,
    },
    /// An audio payload with an odd number of bytes (slin samples are 2 bytes).
    #[error("AudioSocket {kind} frame has an odd payload length {len}")]
    OddAudioLength {
        /// Kind of the frame.
        kind: Kind,
        /// Payload length.
        len: usize,
    },
    /// An audio frame with no payload.
    #[error("AudioSocket {kind} frame has an empty payload")]
    EmptyAudio {
        /// Kind of the frame.
        kind: Kind,
    },
    /// A UUID frame whose payload is not exactly 16 bytes.
    #[error("AudioSocket UUID frame has {len} bytes, expected 16")]
    BadUuidLength {
        /// Payload length.
        len: usize,
    },
    /// A DTMF frame whose payload is not exactly one byte.
    #[error("AudioSocket DTMF frame has {len} bytes, expected 1")]
    BadDtmfLength {
        /// Payload length.
        len: usize,
    },
    /// A DTMF frame whose byte is not one of `0-9 * # A-D`.
    #[error("AudioSocket DTMF frame carries byte 0x{byte:02x}, not a DTMF digit")]
    BadDtmfDigit {
        /// The byte.
        byte: u8,
    },
    /// A typed accessor was called on a frame of another kind.
    #[error("AudioSocket {kind} frame read as {expected}")]
    WrongKind {
        /// Kind of the frame.
        kind: Kind,
        /// What the accessor expected ("audio", "uuid", "dtmf").
        expected: &'static str,
    },
    /// Text that is not an 8-4-4-4-12 hex UUID.
    #[error("not a UUID (expected 8-4-4-4-12 hex digits): {text:?}")]
    BadUuidText {
        /// The text, cut to 64 characters.
        text: String,
    },
    /// `copy_samples_into` got a buffer shorter than the frame (internal fault).
    #[error("sample buffer of {capacity} samples cannot hold the frame's {needed}")]
    OutputTooSmall {
        /// Samples in the frame.
        needed: usize,
        /// Samples the buffer holds.
        capacity: usize,
    },
    /// voxd tried to send a kind Asterisk refuses (UUID, DTMF, error, unknown), or a
    /// payload with hangup (internal fault).
    #[error("refusing to send AudioSocket {kind} frame to Asterisk")]
    NotSendable {
        /// The refused kind.
        kind: Kind,
    },
    /// voxd tried to send a payload over 65535 bytes (internal fault).
    #[error("AudioSocket payload of {len} bytes does not fit the 16-bit length")]
    EncodeTooLarge {
        /// Payload length.
        len: usize,
    },
}

impl AudioSocketError {
    /// True if the error is Asterisk's (malformed input), false if it is voxd's own
    /// (a bug, or a bad UUID in voxd's input).
    pub fn is_peer_fault(&self) -> bool {
        !matches!(
            self,
            AudioSocketError::OutputTooSmall { .. }
                | AudioSocketError::NotSendable { .. }
                | AudioSocketError::EncodeTooLarge { .. }
                | AudioSocketError::BadUuidText { .. }
        )
    }

    /// A short, bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AudioSocketError::PayloadTooLarge { .. } => "payload_too_large",
            AudioSocketError::OddAudioLength { .. } => "odd_audio_length",
            AudioSocketError::EmptyAudio { .. } => "empty_audio",
            AudioSocketError::BadUuidLength { .. } => "bad_uuid_length",
            AudioSocketError::BadDtmfLength { .. } => "bad_dtmf_length",
            AudioSocketError::BadDtmfDigit { .. } => "bad_dtmf_digit",
            AudioSocketError::WrongKind { .. } => "wrong_kind",
            AudioSocketError::BadUuidText { .. } => "bad_uuid_text",
            AudioSocketError::OutputTooSmall { .. } => "output_too_small",
            AudioSocketError::NotSendable { .. } => "not_sendable",
            AudioSocketError::EncodeTooLarge { .. } => "encode_too_large",
        }
    }
}

/// One decoded frame. The payload shares the connection's read buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The kind byte; unknown kinds are passed through as [`Kind::Unknown`].
    pub kind: Kind,
    /// The payload exactly as received.
    pub payload: Bytes,
}

impl Frame {
    /// The call UUID of a [`Kind::Uuid`] frame (exactly 16 bytes).
    pub fn uuid(&self) -> Result<[u8; 16], AudioSocketError> {
        if self.kind != Kind::Uuid {
            return Err(AudioSocketError::WrongKind {
                kind: self.kind,
                expected: "uuid",
            });
        }
        <[u8; 16]>::try_from(&self.payload[..]).map_err(|_| AudioSocketError::BadUuidLength {
            len: self.payload.len(),
        })
    }

    /// The digit of a [`Kind::Dtmf`] frame: one of `0-9 * # A-D`.
    pub fn dtmf(&self) -> Result<char, AudioSocketError> {
        if self.kind != Kind::Dtmf {
            return Err(AudioSocketError::WrongKind {
                kind: self.kind,
                expected: "dtmf",
            });
        }
        let [byte] = self.payload[..] else {
            return Err(AudioSocketError::BadDtmfLength {
                len: self.payload.len(),
            });
        };
        match byte {
            b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D' => Ok(byte as char),
            _ => Err(AudioSocketError::BadDtmfDigit { byte }),
        }
    }

    /// Checks an audio frame: audio kind, non-empty, even length. Returns the number
    /// of 16-bit samples.
    pub fn sample_count(&self) -> Result<usize, AudioSocketError> {
        if !self.kind.is_audio() {
            return Err(AudioSocketError::WrongKind {
                kind: self.kind,
                expected: "audio",
            });
        }
        let len = self.payload.len();
        if len == 0 {
            return Err(AudioSocketError::EmptyAudio { kind: self.kind });
        }
        if len & 1 != 0 {
            return Err(AudioSocketError::OddAudioLength {
                kind: self.kind,
                len,
            });
        }
        Ok(len / 2)
    }

    /// The samples of a valid audio frame (see [`Frame::sample_count`]), decoded from
    /// little-endian, without allocating.
    pub fn samples(&self) -> Result<impl ExactSizeIterator<Item = i16> + '_, AudioSocketError> {
        self.sample_count()?;
        Ok(self
            .payload
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]])))
    }

    /// Copies the samples of a valid audio frame into the start of `out` and returns
    /// how many were written. Errors (writing nothing) if the frame is not valid
    /// audio or `out` is too short.
    pub fn copy_samples_into(&self, out: &mut [i16]) -> Result<usize, AudioSocketError> {
        let n = self.sample_count()?;
        if out.len() < n {
            return Err(AudioSocketError::OutputTooSmall {
                needed: n,
                capacity: out.len(),
            });
        }
        for (d, c) in out[..n].iter_mut().zip(self.payload.chunks_exact(2)) {
            *d = i16::from_le_bytes([c[0], c[1]]);
        }
        Ok(n)
    }
}

/// Incremental frame decoder for one AudioSocket connection, in the style of
/// tokio-util's `LengthDelimitedCodec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    max_payload: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder with the [`DEFAULT_MAX_PAYLOAD`] limit.
    pub const fn new() -> Self {
        Decoder {
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }

    /// A decoder refusing payloads over `max_payload` bytes (capped at 65535).
    pub const fn with_max_payload(max_payload: usize) -> Self {
        Decoder {
            max_payload: if max_payload > MAX_PAYLOAD {
                MAX_PAYLOAD
            } else {
                max_payload
            },
        }
    }

    /// The payload limit in bytes.
    pub const fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Called after each read into `buf`, repeatedly until it returns `Ok(None)`.
    ///
    /// Returns `Ok(Some(frame))` and removes the frame's bytes from the front of `buf`
    /// (the payload is split off, not copied); `Ok(None)` when `buf` does not yet hold
    /// a whole frame, after reserving room for the rest of it (at most the limit);
    /// `Err` when the header announces a payload over the limit, checked before `buf`
    /// grows. After an error `buf` is left as it was: close the connection. Unknown
    /// kinds and malformed payloads (odd/empty audio, short UUID) are returned as
    /// frames; the typed accessors on [`Frame`] report those.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, AudioSocketError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = Kind::from_u8(buf[0]);
        let len = u16::from_be_bytes([buf[1], buf[2]]) as usize;
        if len > self.max_payload {
            return Err(AudioSocketError::PayloadTooLarge {
                kind,
                len,
                limit: self.max_payload,
            });
        }
        let total = HEADER_LEN + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total);
        let _ = frame.split_to(HEADER_LEN);
        Ok(Some(Frame {
            kind,
            payload: frame.freeze(),
        }))
    }
}

/// Appends one frame header (kind + big-endian length) to `out`.
#[inline]
fn put_header(kind: Kind, len: usize, out: &mut BytesMut) {
    out.put_u8(kind.as_u8());
    out.put_u16(len as u16);
}

/// Appends one slin audio frame (header and little-endian samples, contiguous) to
/// `out`, for a single socket write. Allocates only if `out` lacks
/// `3 + 2 * samples.len()` bytes of spare capacity. Refuses non-audio kinds, empty
/// frames and frames over 65535 bytes (internal faults), leaving `out` unchanged.
pub fn encode_audio(
    kind: Kind,
    samples: &[i16],
    out: &mut BytesMut,
) -> Result<(), AudioSocketError> {
    if !kind.is_audio() {
        return Err(AudioSocketError::NotSendable { kind });
    }
    if samples.is_empty() {
        return Err(AudioSocketError::EmptyAudio { kind });
    }
    let len = samples.len() * 2;
    if len > MAX_PAYLOAD {
        return Err(AudioSocketError::EncodeTooLarge { len });
    }
    out.reserve(HEADER_LEN + len);
    put_header(kind, len, out);
    let start = out.len();
    out.resize(start + len, 0);
    for (d, s) in out[start..].chunks_exact_mut(2).zip(samples) {
        d.copy_from_slice(&s.to_le_bytes());
    }
    Ok(())
}

/// Appends a hangup frame (0x00, empty payload) to `out`: voxd ends the call.
pub fn encode_hangup(out: &mut BytesMut) {
    out.reserve(HEADER_LEN);
    put_header(Kind::Hangup, 0, out);
}

/// Appends one frame with a raw payload (e.g. mu-law bytes under 0x10 on a
/// `c(ulaw)` leg) to `out`, header and payload contiguous. Refuses kinds Asterisk
/// does not accept from voxd (UUID, DTMF, error, unknown), a hangup with a payload,
/// an empty audio payload and payloads over 65535 bytes, leaving `out` unchanged.
pub fn encode_raw(kind: Kind, payload: &[u8], out: &mut BytesMut) -> Result<(), AudioSocketError> {
    if !kind.is_sendable() || (kind == Kind::Hangup && !payload.is_empty()) {
        return Err(AudioSocketError::NotSendable { kind });
    }
    if kind.is_audio() && payload.is_empty() {
        return Err(AudioSocketError::EmptyAudio { kind });
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(AudioSocketError::EncodeTooLarge { len: payload.len() });
    }
    out.reserve(HEADER_LEN + payload.len());
    put_header(kind, payload.len(), out);
    out.put_slice(payload);
    Ok(())
}

/// Formats a 16-byte UUID as lowercase 8-4-4-4-12 hex (as ARI and the dialplan show
/// it), e.g. to look up the call a [`Kind::Uuid`] frame belongs to.
pub fn format_uuid(uuid: [u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0x0F) as usize] as char);
    }
    s
}

/// Parses 8-4-4-4-12 hex text (either case) into 16 bytes, e.g. the `data` voxd passes
/// to ARI `externalMedia` so it can match the UUID frame that comes back.
pub fn parse_uuid(text: &str) -> Result<[u8; 16], AudioSocketError> {
    let bad = || AudioSocketError::BadUuidText {
        text: text.chars().take(64).collect(),
    };
    let b = text.as_bytes();
    if b.len() != 36 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return Err(bad());
            }
            i += 1;
            continue;
        }
        let hi = hex_val(b[i]).ok_or_else(bad)?;
        let lo = hex_val(b[i + 1]).ok_or_else(bad)?;
        out[n] = (hi << 4) | lo;
        n += 1;
        i += 2;
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(dec: &mut Decoder, buf: &mut BytesMut) -> Result<Vec<Frame>, AudioSocketError> {
        let mut v = Vec::new();
        while let Some(f) = dec.decode(buf)? {
            v.push(f);
        }
        Ok(v)
    }

    fn sample_stream() -> (BytesMut, Vec<Frame>) {
        let uuid = [0x11u8; 16];
        let samples: Vec<i16> = (0..320).map(|i| (i * 97 - 15000) as i16).collect();
        let mut out = BytesMut::new();
        out.extend_from_slice(&[0x01, 0, 16]);
        out.extend_from_slice(&uuid);
        encode_audio(Kind::Slin16, &samples, &mut out).unwrap();
        out.extend_from_slice(&[0x03, 0, 1, b'#']);
        out.extend_from_slice(&[0x42, 0, 2, 9, 9]);
        encode_hangup(&mut out);
        let payload: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let frames = vec![
            Frame {
                kind: Kind::Uuid,
                payload: Bytes::copy_from_slice(&uuid),
            },
            Frame {
                kind: Kind::Slin16,
                payload: Bytes::from(payload),
            },
            Frame {
                kind: Kind::Dtmf,
                payload: Bytes::from_static(b"#"),
            },
            Frame {
                kind: Kind::Unknown(0x42),
                payload: Bytes::from_static(&[9, 9]),
            },
            Frame {
                kind: Kind::Hangup,
                payload: Bytes::new(),
            },
        ];
        (out, frames)
    }

    #[test]
    fn kinds_round_trip_and_map_rates() {
        for b in 0..=255u8 {
            let k = Kind::from_u8(b);
            assert_eq!(k.as_u8(), b);
            assert_eq!(k.is_audio(), (0x10..=0x18).contains(&b));
            assert_eq!(k.sample_rate_hz().is_some(), k.is_audio());
            if let Some(r) = k.rate() {
                assert_eq!(Some(r.hz()), k.sample_rate_hz());
                assert_eq!(Kind::for_rate(r), k);
            }
        }
        assert_eq!(Kind::from_u8(0x12).rate(), Some(Rate::Hz16000));
        assert_eq!(Kind::Slin44.rate(), None);
        assert_eq!(Kind::Slin96.rate(), None);
        assert_eq!(Kind::Slin192.rate(), None);
        assert_eq!(Kind::Slin44.sample_rate_hz(), Some(44_100));
        for r in Rate::ALL {
            assert_eq!(Kind::for_rate(r).rate(), Some(r));
        }
        assert_eq!(Kind::Slin16.to_string(), "slin16 (0x12)");
    }

    #[test]
    fn decodes_a_stream_and_accessors_work() {
        let (mut buf, want) = sample_stream();
        let frames = decode_all(&mut Decoder::new(), &mut buf).unwrap();
        assert_eq!(frames, want);
        assert!(buf.is_empty());
        assert_eq!(frames[0].uuid().unwrap(), [0x11; 16]);
        let mut out = [0i16; 400];
        assert_eq!(frames[1].copy_samples_into(&mut out).unwrap(), 320);
        assert_eq!(out[0], -15000);
        assert_eq!(out[319], (319 * 97 - 15000) as i16);
        assert!(frames[1].samples().unwrap().eq(out[..320].iter().copied()));
        assert_eq!(frames[1].kind.rate(), Some(Rate::Hz16000));
        assert_eq!(frames[2].dtmf().unwrap(), '#');
        assert_eq!(frames[3].kind, Kind::Unknown(0x42));
        assert!(matches!(
            frames[0].dtmf(),
            Err(AudioSocketError::WrongKind {
                expected: "dtmf",
                ..
            })
        ));
        assert!(frames[2].uuid().is_err());
        assert!(frames[0].sample_count().is_err());
    }

    #[test]
    fn byte_by_byte_delivery_gives_the_same_frames() {
        let (all, want) = sample_stream();
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in all.iter() {
            buf.extend_from_slice(&[b]);
            got.extend(decode_all(&mut dec, &mut buf).unwrap());
        }
        assert_eq!(got, want);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_is_refused_before_allocating() {
        let mut dec = Decoder::new();
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&[0x10, 0xFF, 0xFF, 1, 2]);
        let cap = buf.capacity();
        let err = dec.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            AudioSocketError::PayloadTooLarge {
                kind: Kind::Slin8,
                len: 65535,
                limit: 8192
            }
        );
        assert!(err.to_string().contains("65535") && err.to_string().contains("8192"));
        assert!(err.is_peer_fault());
        assert_eq!(
            buf.capacity(),
            cap,
            "decoder grew the buffer for a refused frame"
        );
        assert_eq!(buf.len(), 5, "decoder consumed bytes of a refused frame");

        // At the limit is fine and reserves the missing room (bounded by the limit).
        let mut dec = Decoder::with_max_payload(100);
        let mut buf = BytesMut::with_capacity(8);
        buf.extend_from_slice(&[0x10, 0, 100]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(buf.capacity() >= 103);
        buf.extend_from_slice(&[0; 101]);
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap().payload.len(), 100);
        assert_eq!(buf.len(), 1);
        buf.extend_from_slice(&[0, 101]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(AudioSocketError::PayloadTooLarge {
                len: 101,
                limit: 100,
                ..
            })
        ));
        assert_eq!(
            Decoder::with_max_payload(1 << 20).max_payload(),
            MAX_PAYLOAD
        );
    }

    #[test]
    fn decoded_payload_is_not_copied() {
        let mut buf = BytesMut::new();
        encode_raw(Kind::Slin8, &[1, 2, 3, 4], &mut buf).unwrap();
        let payload_ptr = buf[HEADER_LEN..].as_ptr();
        let f = Decoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.payload.as_ptr(), payload_ptr);
    }

    #[test]
    fn odd_and_empty_audio_are_errors() {
        let mut buf = BytesMut::from(&[0x10, 0, 3, 1, 2, 3, 0x12, 0, 0][..]);
        let frames = decode_all(&mut Decoder::new(), &mut buf).unwrap();
        assert_eq!(
            frames[0].sample_count(),
            Err(AudioSocketError::OddAudioLength {
                kind: Kind::Slin8,
                len: 3
            })
        );
        let mut out = [7i16; 4];
        assert!(frames[0].copy_samples_into(&mut out).is_err());
        assert_eq!(out, [7; 4]);
        assert_eq!(
            frames[1].copy_samples_into(&mut out),
            Err(AudioSocketError::EmptyAudio { kind: Kind::Slin16 })
        );
        let f = Frame {
            kind: Kind::Slin8,
            payload: Bytes::from_static(&[0; 10]),
        };
        assert_eq!(
            f.copy_samples_into(&mut out),
            Err(AudioSocketError::OutputTooSmall {
                needed: 5,
                capacity: 4
            })
        );
    }

    #[test]
    fn bad_uuid_and_dtmf_payloads() {
        let f = Frame {
            kind: Kind::Uuid,
            payload: Bytes::from_static(&[0; 15]),
        };
        assert_eq!(f.uuid(), Err(AudioSocketError::BadUuidLength { len: 15 }));
        let f = Frame {
            kind: Kind::Uuid,
            payload: Bytes::from_static(&[0; 17]),
        };
        assert_eq!(f.uuid(), Err(AudioSocketError::BadUuidLength { len: 17 }));
        let f = Frame {
            kind: Kind::Dtmf,
            payload: Bytes::from_static(b"12"),
        };
        assert_eq!(f.dtmf(), Err(AudioSocketError::BadDtmfLength { len: 2 }));
        let f = Frame {
            kind: Kind::Dtmf,
            payload: Bytes::from_static(b"E"),
        };
        assert_eq!(f.dtmf(), Err(AudioSocketError::BadDtmfDigit { byte: b'E' }));
        for c in "0123456789*#ABCD".chars() {
            let f = Frame {
                kind: Kind::Dtmf,
                payload: Bytes::from(c.to_string()),
            };
            assert_eq!(f.dtmf(), Ok(c));
        }
    }

    #[test]
    fn encoder_refuses_what_asterisk_refuses() {
        let mut out = BytesMut::new();
        for k in [Kind::Uuid, Kind::Dtmf, Kind::Error, Kind::Unknown(0x42)] {
            assert_eq!(
                encode_raw(k, &[1], &mut out),
                Err(AudioSocketError::NotSendable { kind: k })
            );
            assert!(encode_audio(k, &[1], &mut out).is_err());
        }
        assert!(encode_audio(Kind::Hangup, &[1], &mut out).is_err());
        assert!(encode_raw(Kind::Hangup, &[1], &mut out).is_err());
        assert_eq!(
            encode_audio(Kind::Slin8, &[], &mut out),
            Err(AudioSocketError::EmptyAudio { kind: Kind::Slin8 })
        );
        assert!(encode_raw(Kind::Slin8, &[], &mut out).is_err());
        let big = vec![0i16; 32768];
        assert_eq!(
            encode_audio(Kind::Slin8, &big, &mut out),
            Err(AudioSocketError::EncodeTooLarge { len: 65536 })
        );
        assert!(!AudioSocketError::NotSendable { kind: Kind::Uuid }.is_peer_fault());
        assert!(out.is_empty());
        // The largest legal frame.
        encode_audio(Kind::Slin8, &big[..32767], &mut out).unwrap();
        assert_eq!(&out[..3], &[0x10, 0xFF, 0xFE]);
        encode_raw(Kind::Hangup, &[], &mut out).unwrap();
    }

    #[test]
    fn encoder_writes_one_contiguous_frame_without_allocating() {
        let mut out = BytesMut::with_capacity(1024);
        let ptr = out.as_ptr();
        encode_audio(Kind::Slin16, &[1, -2, 0x1234], &mut out).unwrap();
        assert_eq!(&out[..], &[0x12, 0, 6, 1, 0, 0xFE, 0xFF, 0x34, 0x12]);
        encode_raw(Kind::Slin8, &[0xFF; 160], &mut out).unwrap();
        encode_hangup(&mut out);
        assert_eq!(out.as_ptr(), ptr);
        assert_eq!(out.capacity(), 1024);
        assert_eq!(out.len(), 9 + 163 + 3);
        assert_eq!(&out[out.len() - 3..], &[0, 0, 0]);
    }

    #[test]
    fn uuid_text_round_trips() {
        let u = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54,
            0x32, 0x10,
        ];
        let s = format_uuid(u);
        assert_eq!(s, "01234567-89ab-cdef-fedc-ba9876543210");
        assert_eq!(parse_uuid(&s), Ok(u));
        assert_eq!(parse_uuid("01234567-89AB-CDEF-FEDC-BA9876543210"), Ok(u));
        for bad in [
            "",
            "01234567-89ab-cdef-fedc-ba987654321",
            "01234567-89ab-cdef-fedc-ba98765432100",
            "0123456789ab-cdef-fedc-ba9876543210-",
            "01234567-89ab-cdef-fedc-ba987654321g",
            "01234567+89ab-cdef-fedc-ba9876543210",
            "0123456\u{e9}-89ab-cdef-fedc-ba98765432",
        ] {
            assert!(parse_uuid(bad).is_err(), "{bad:?}");
        }
    }

    fn audio_kind() -> impl Strategy<Value = Kind> {
        (0x10u8..=0x18).prop_map(Kind::from_u8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn decoder_never_panics_on_any_chunking(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            chunks in proptest::collection::vec(1usize..64, 1..32),
            limit in prop_oneof![Just(DEFAULT_MAX_PAYLOAD), 0usize..300],
        ) {
            let mut dec = Decoder::with_max_payload(limit);
            let mut buf = BytesMut::new();
            let mut pos = 0;
            let mut i = 0;
            'feed: while pos < data.len() {
                let n = chunks[i % chunks.len()].min(data.len() - pos);
                i += 1;
                buf.extend_from_slice(&data[pos..pos + n]);
                pos += n;
                loop {
                    match dec.decode(&mut buf) {
                        Ok(Some(f)) => {
                            prop_assert!(f.payload.len() <= limit);
                            let _ = (f.uuid(), f.dtmf(), f.sample_count());
                            let mut out = [0i16; 256];
                            let _ = f.copy_samples_into(&mut out);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let is_too_large = matches!(e, AudioSocketError::PayloadTooLarge { .. });
                            prop_assert!(is_too_large);
                            break 'feed;
                        }
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn encode_decode_round_trips(
            frames in proptest::collection::vec(
                (audio_kind(), proptest::collection::vec(any::<i16>(), 1..400)), 1..8),
            chunk in 1usize..700,
        ) {
            let mut wire = BytesMut::new();
            for (k, s) in &frames {
                encode_audio(*k, s, &mut wire).unwrap();
            }
            let mut dec = Decoder::new();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got.len(), frames.len());
            for (f, (k, s)) in got.iter().zip(&frames) {
                prop_assert_eq!(f.kind, *k);
                let back: Vec<i16> = f.samples().unwrap().collect();
                prop_assert_eq!(&back, s);
            }
        }

        #[test]
        fn uuid_format_parse_round_trips(u in any::<[u8; 16]>()) {
            let s = format_uuid(u);
            prop_assert_eq!(s.len(), 36);
            prop_assert_eq!(parse_uuid(&s), Ok(u));
        }
    }
}
