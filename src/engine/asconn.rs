//! One AudioSocket connection's protocol state, without the socket.
//!
//! Owns: the receive buffer and frame decoder of one TCP connection from Asterisk,
//! the rule that the UUID comes first and only once, the mapping from frame kinds to
//! the call's codec (`audiosocket.format`), and the kind voxd answers with (it
//! mirrors the kind Asterisk uses, so older Asterisk that tags every frame 0x10 gets
//! 0x10 back, and `c(slin16)` legs that send 0x12 get 0x12).
//!
//! Must not: read or write the socket (the shard reads into `rx()` and writes what
//! `encode_audio` produced in one write), read the clock, or allocate per frame once
//! the buffers have grown to one frame.

#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::call::Codec;
use crate::media::audiosocket::{self, AudioSocketError, Decoder, Kind};

/// What a connection said, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsEvent {
    /// The first frame: the call's UUID (the ARI `data`, or the dial string's UUID).
    Uuid([u8; 16]),
    /// Caller audio in the connection's codec (zero-copy slice of the receive buffer).
    Audio(Bytes),
    /// A DTMF digit (Asterisk >= 20.14 / 21.9 / 22.4).
    Dtmf(char),
    /// Asterisk sent a hangup frame (it normally just closes the socket).
    Hangup,
    /// A kind voxd does not know (a newer Asterisk): ignored and counted.
    Unknown(u8),
    /// An error frame (0xFF) from the peer, with its payload length.
    PeerError(usize),
}

/// Why a connection must be closed. All are faults of the peer (Asterisk or
/// whatever connected to the port).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AsConnError {
    /// The framing itself is broken (oversize length, odd audio, ...).
    #[error("AudioSocket framing: {0}")]
    Frame(#[from] AudioSocketError),
    /// Something other than the UUID frame came first.
    #[error("AudioSocket: first frame must be the UUID (0x01), got {0}")]
    NoUuidFirst(Kind),
    /// A second UUID frame on the same connection.
    #[error("AudioSocket: second UUID frame on one connection")]
    DuplicateUuid,
    /// Audio at a rate other than the configured one.
    #[error("AudioSocket: audio kind {got} does not match audiosocket.format ({configured} Hz); set audiosocket.format to the channel's format")]
    RateMismatch {
        /// The kind received.
        got: Kind,
        /// The configured rate in Hz.
        configured: u32,
    },
}

impl AsConnError {
    /// Bounded label for the protocol-error metric.
    pub fn label(&self) -> &'static str {
        match self {
            AsConnError::Frame(e) => e.label(),
            AsConnError::NoUuidFirst(_) => "no_uuid_first",
            AsConnError::DuplicateUuid => "duplicate_uuid",
            AsConnError::RateMismatch { .. } => "rate_mismatch",
        }
    }
}

/// Protocol state of one AudioSocket connection.
#[derive(Debug)]
pub struct AsConn {
    rx: BytesMut,
    decoder: Decoder,
    codec: Codec,
    uuid: Option<[u8; 16]>,
    out_kind: Kind,
}

impl AsConn {
    /// A fresh connection whose audio is `codec` (from `audiosocket.format`) and
    /// whose frames may carry at most `max_payload` bytes.
    pub fn new(codec: Codec, max_payload: usize) -> Self {
        AsConn {
            rx: BytesMut::with_capacity(4096),
            decoder: Decoder::with_max_payload(max_payload),
            codec,
            uuid: None,
            out_kind: Kind::Slin8,
        }
    }

    /// The receive buffer: the shard appends what it read from the socket.
    pub fn rx(&mut self) -> &mut BytesMut {
        &mut self.rx
    }

    /// The call's UUID, once received.
    pub fn uuid(&self) -> Option<[u8; 16]> {
        self.uuid
    }

    /// The codec of the audio on this connection.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The next complete event from the bytes received so far, `Ok(None)` when more
    /// bytes are needed, or an error after which the connection must be closed.
    pub fn poll_event(&mut self) -> Result<Option<AsEvent>, AsConnError> {
        let Some(frame) = self.decoder.decode(&mut self.rx)? else {
            return Ok(None);
        };
        if self.uuid.is_none() && frame.kind != Kind::Uuid {
            return Err(AsConnError::NoUuidFirst(frame.kind));
        }
        let ev = match frame.kind {
            Kind::Uuid => {
                if self.uuid.is_some() {
                    return Err(AsConnError::DuplicateUuid);
                }
                let uuid = frame.uuid()?;
                self.uuid = Some(uuid);
                AsEvent::Uuid(uuid)
            }
            Kind::Dtmf => AsEvent::Dtmf(frame.dtmf()?),
            Kind::Hangup => AsEvent::Hangup,
            Kind::Error => AsEvent::PeerError(frame.payload.len()),
            Kind::Unknown(k) => AsEvent::Unknown(k),
            kind if kind.is_audio() => {
                self.check_rate(kind)?;
                if frame.payload.is_empty() {
                    return Err(AudioSocketError::EmptyAudio { kind }.into());
                }
                if self.codec.bytes_per_sample() == 2 && frame.payload.len() % 2 != 0 {
                    return Err(AudioSocketError::OddAudioLength {
                        kind,
                        len: frame.payload.len(),
                    }
                    .into());
                }
                self.out_kind = kind;
                AsEvent::Audio(frame.payload)
            }
            other => AsEvent::Unknown(other.as_u8()),
        };
        Ok(Some(ev))
    }

    /// Kind 0x10 is accepted at the configured rate (older Asterisk tags every frame
    /// 0x10); an explicit rate kind must match the configuration.
    fn check_rate(&self, kind: Kind) -> Result<(), AsConnError> {
        if kind == Kind::Slin8 {
            return Ok(());
        }
        let configured = self.codec.rate().hz();
        match kind.sample_rate_hz() {
            Some(hz) if hz == configured && self.codec.bytes_per_sample() == 2 => Ok(()),
            _ => Err(AsConnError::RateMismatch {
                got: kind,
                configured,
            }),
        }
    }

    /// Append one outbound audio frame (header and payload contiguous, for one
    /// write) carrying `payload` in the connection's codec.
    pub fn encode_audio(&self, payload: &[u8], out: &mut BytesMut) -> Result<(), AsConnError> {
        audiosocket::encode_raw(self.out_kind, payload, out)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Rate;

    const UUID: [u8; 16] = [7; 16];

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![kind, (payload.len() >> 8) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    fn events(conn: &mut AsConn, bytes: &[u8]) -> Result<Vec<AsEvent>, AsConnError> {
        conn.rx().extend_from_slice(bytes);
        let mut v = Vec::new();
        while let Some(e) = conn.poll_event()? {
            v.push(e);
        }
        Ok(v)
    }

    #[test]
    fn uuid_then_audio_dtmf_unknown() {
        let mut c = AsConn::new(Codec::Slin(Rate::Hz16000), 8192);
        let mut bytes = frame(0x01, &UUID);
        bytes.extend(frame(0x12, &[1; 640]));
        bytes.extend(frame(0x03, b"5"));
        bytes.extend(frame(0x42, &[0; 3]));
        bytes.extend(frame(0x10, &[2; 640]));
        let ev = events(&mut c, &bytes).unwrap();
        assert_eq!(ev[0], AsEvent::Uuid(UUID));
        assert_eq!(ev[1], AsEvent::Audio(Bytes::from(vec![1u8; 640])));
        assert_eq!(ev[2], AsEvent::Dtmf('5'));
        assert_eq!(ev[3], AsEvent::Unknown(0x42));
        assert!(matches!(ev[4], AsEvent::Audio(_)));
        assert_eq!(c.uuid(), Some(UUID));
    }

    #[test]
    fn reply_mirrors_the_peer_kind() {
        let mut c = AsConn::new(Codec::Slin(Rate::Hz16000), 8192);
        let mut out = BytesMut::new();
        c.encode_audio(&[0; 640], &mut out).unwrap();
        assert_eq!(
            out[0], 0x10,
            "before any audio: 0x10, understood by every Asterisk"
        );
        let mut bytes = frame(0x01, &UUID);
        bytes.extend(frame(0x12, &[1; 640]));
        events(&mut c, &bytes).unwrap();
        out.clear();
        c.encode_audio(&[0; 640], &mut out).unwrap();
        assert_eq!(&out[..3], &[0x12, 0x02, 0x80]);
        assert_eq!(out.len(), 643);
    }

    #[test]
    fn protocol_errors_close_the_connection() {
        let mut c = AsConn::new(Codec::Slin(Rate::Hz8000), 8192);
        assert_eq!(
            events(&mut c, &frame(0x10, &[0; 320])),
            Err(AsConnError::NoUuidFirst(Kind::Slin8))
        );

        let mut c = AsConn::new(Codec::Slin(Rate::Hz8000), 8192);
        let mut b = frame(0x01, &UUID);
        b.extend(frame(0x01, &UUID));
        assert_eq!(events(&mut c, &b), Err(AsConnError::DuplicateUuid));

        let mut c = AsConn::new(Codec::Slin(Rate::Hz8000), 8192);
        let mut b = frame(0x01, &UUID);
        b.extend(frame(0x12, &[0; 640]));
        assert_eq!(
            events(&mut c, &b),
            Err(AsConnError::RateMismatch {
                got: Kind::Slin16,
                configured: 8000
            })
        );

        let mut c = AsConn::new(Codec::Slin(Rate::Hz8000), 8192);
        let mut b = frame(0x01, &UUID);
        b.extend(frame(0x10, &[0; 3]));
        assert!(matches!(events(&mut c, &b), Err(AsConnError::Frame(_))));

        let mut c = AsConn::new(Codec::Slin(Rate::Hz8000), 1024);
        let mut b = frame(0x01, &UUID);
        b.extend_from_slice(&[0x10, 0xFF, 0xFF]);
        let e = events(&mut c, &b).unwrap_err();
        assert_eq!(
            e.label(),
            AsConnError::Frame(AudioSocketError::PayloadTooLarge {
                kind: Kind::Slin8,
                len: 65535,
                limit: 1024
            })
            .label()
        );
    }

    #[test]
    fn ulaw_legs_send_mulaw_bytes_under_0x10() {
        let mut c = AsConn::new(Codec::Pcmu, 8192);
        let mut b = frame(0x01, &UUID);
        b.extend(frame(0x10, &[0xFF; 161]));
        let ev = events(&mut c, &b).unwrap();
        assert_eq!(
            ev[1],
            AsEvent::Audio(Bytes::from(vec![0xFFu8; 161])),
            "odd length is fine for mu-law"
        );
        let mut out = BytesMut::new();
        c.encode_audio(&[0xFF; 160], &mut out).unwrap();
        assert_eq!(&out[..3], &[0x10, 0, 160]);
    }

    #[test]
    fn byte_by_byte_delivery_gives_the_same_events() {
        let mut whole = AsConn::new(Codec::Slin(Rate::Hz16000), 8192);
        let mut bytes = frame(0x01, &UUID);
        for i in 0..20u8 {
            bytes.extend(frame(0x12, &[i; 640]));
        }
        let want = events(&mut whole, &bytes).unwrap();
        let mut slow = AsConn::new(Codec::Slin(Rate::Hz16000), 8192);
        let mut got = Vec::new();
        for b in &bytes {
            got.extend(events(&mut slow, std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, want);
    }
}
