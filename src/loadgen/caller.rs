//! A sans-IO emulated Asterisk caller for one call of the load generator.
//!
//! Owns: the outbound side of one call (AudioSocket: the UUID frame, then one slin
//! frame of kind 0x10 or 0x12 per 20 ms tick; RTP: one PCMU or PCMA packet per tick
//! with the marker bit on the first packet of each talk spurt), the 20 ms send
//! schedule, and the inbound side (AudioSocket stream decoding or RTP parsing of what
//! voxd sends, classification of each frame as agent audio or silence) feeding
//! [`CallStats`].
//!
//! Must not: touch sockets or read the clock (the driver passes `now_us`, its
//! monotonic clock in microseconds, and moves the bytes), or allocate per frame once
//! built (the send buffer, sample and G.711 buffers are reserved at construction; the
//! receive buffer reuses its allocation once frames have been consumed).

use bytes::{BufMut, BytesMut};

use super::signal::CallerSource;
use super::stats::{CallStats, StatsConfig, FRAME_US};
use crate::media::audiosocket::{self, AudioSocketError, Decoder, Kind};
use crate::media::g711;
use crate::media::rtp::{self, RtpError, RtpSender};
use crate::media::Rate;

/// A frame whose samples all have a magnitude at or below this is silent (voxd's
/// silence: slin 0, mu-law 0xFF = 0, A-law 0xD5 = 8).
pub const SILENCE_PEAK: i16 = 8;
/// A tick run this much after it was due counts as a load-generator late tick.
pub const LATE_TICK_US: u64 = 10_000;
/// A tick this far behind its schedule re-bases the schedule on `now` instead of
/// sending a burst of catch-up frames (which real Asterisk would never send).
pub const RESYNC_US: u64 = 5 * FRAME_US;

/// The G.711 law of an RTP call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// mu-law, payload type 0.
    Ulaw,
    /// A-law, payload type 8.
    Alaw,
}

impl Law {
    /// The RTP payload type.
    pub const fn payload_type(self) -> u8 {
        match self {
            Law::Ulaw => rtp::PT_PCMU,
            Law::Alaw => rtp::PT_PCMA,
        }
    }

    fn decode(self, code: u8) -> i16 {
        match self {
            Law::Ulaw => g711::ulaw_to_linear(code),
            Law::Alaw => g711::alaw_to_linear(code),
        }
    }
}

/// How the call reaches voxd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// AudioSocket over TCP, slin at this rate (8 kHz sends kind 0x10, 16 kHz 0x12).
    AudioSocket(Rate),
    /// ExternalMedia RTP over UDP, G.711 at 8 kHz.
    Rtp(Law),
}

impl Transport {
    /// The rate of the caller's PCM (what the signal must be generated at).
    pub const fn rate(self) -> Rate {
        match self {
            Transport::AudioSocket(r) => r,
            Transport::Rtp(_) => Rate::Hz8000,
        }
    }
}

/// Set-up of one emulated call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerConfig {
    /// Transport and format.
    pub transport: Transport,
    /// The call UUID (AudioSocket's first frame; unused for RTP).
    pub uuid: [u8; 16],
    /// RTP SSRC of the caller's stream.
    pub rtp_ssrc: u32,
    /// RTP first sequence number.
    pub rtp_initial_seq: u16,
    /// RTP first timestamp.
    pub rtp_initial_ts: u32,
    /// Peak magnitude at or below which a received frame is silent.
    pub silence_peak: i16,
    /// Measurement knobs.
    pub stats: StatsConfig,
}

impl CallerConfig {
    /// A configuration whose UUID and RTP identifiers are derived from `seed`
    /// (deterministic, different per seed).
    pub fn new(transport: Transport, seed: u64) -> Self {
        let a = mix(seed);
        let b = mix(a);
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&a.to_be_bytes());
        uuid[8..].copy_from_slice(&b.to_be_bytes());
        uuid[6] = (uuid[6] & 0x0F) | 0x40; // version 4
        uuid[8] = (uuid[8] & 0x3F) | 0x80; // RFC 4122 variant
        CallerConfig {
            transport,
            uuid,
            rtp_ssrc: (b >> 32) as u32,
            rtp_initial_seq: (b >> 16) as u16,
            rtp_initial_ts: a as u32,
            silence_peak: SILENCE_PEAK,
            stats: StatsConfig::default(),
        }
    }
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Why a call could not be set up or a receive was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    /// The source's frames do not fit the transport (e.g. a 16 kHz signal on RTP).
    #[error("caller source gives {got}-sample frames but {transport:?} needs {want}")]
    FrameSize {
        /// Transport.
        transport: Transport,
        /// Samples per frame of the source.
        got: usize,
        /// Samples per frame the transport needs.
        want: usize,
    },
    /// The AudioSocket stream from voxd is broken (out of sync); close the call.
    #[error("AudioSocket stream from voxd: {0}")]
    AudioSocket(#[from] AudioSocketError),
    /// An RTP datagram from voxd was malformed; it was dropped and counted.
    #[error("RTP from voxd: {0}")]
    Rtp(#[from] RtpError),
}

impl CallerError {
    /// True if the connection should be closed (the AudioSocket stream is out of
    /// sync); false for a dropped RTP datagram.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CallerError::Rtp(_))
    }
}

/// One emulated Asterisk call.
#[derive(Debug)]
pub struct Caller {
    cfg: CallerConfig,
    source: CallerSource,
    stats: CallStats,
    frame_len: usize,
    next_due_us: u64,
    uuid_sent: bool,
    prev_talking: bool,
    sender: RtpSender,
    tx: BytesMut,
    pcm: Vec<i16>,
    g711: Vec<u8>,
    decoder: Decoder,
    rx: BytesMut,
    hung_up: bool,
    broken: bool,
    last_refusal: Option<&'static str>,
}

impl Caller {
    /// A call that connects at `start_us` (its first tick is due then). Errors if the
    /// source's frame length does not match the transport's rate.
    pub fn new(
        cfg: CallerConfig,
        source: CallerSource,
        start_us: u64,
    ) -> Result<Self, CallerError> {
        let rate = cfg.transport.rate();
        let frame_len = rate.samples_per_frame();
        if source.frame_len() != frame_len {
            return Err(CallerError::FrameSize {
                transport: cfg.transport,
                got: source.frame_len(),
                want: frame_len,
            });
        }
        let pt = match cfg.transport {
            Transport::Rtp(law) => law.payload_type(),
            Transport::AudioSocket(_) => 0,
        };
        Ok(Caller {
            sender: RtpSender::new(
                cfg.rtp_ssrc,
                cfg.rtp_initial_seq,
                cfg.rtp_initial_ts,
                pt,
                frame_len as u32,
            ),
            stats: CallStats::with_config(start_us, cfg.stats),
            cfg,
            source,
            frame_len,
            next_due_us: start_us,
            uuid_sent: false,
            prev_talking: false,
            // UUID frame + one audio frame at 16 kHz, or one RTP packet.
            tx: BytesMut::with_capacity(2 * audiosocket::HEADER_LEN + 16 + 2 * frame_len),
            pcm: vec![0; frame_len],
            g711: vec![0; frame_len],
            decoder: Decoder::new(),
            rx: BytesMut::with_capacity(4 * 1024),
            hung_up: false,
            broken: false,
            last_refusal: None,
        })
    }

    /// When the next frame is due (microseconds); the driver calls
    /// [`Caller::on_tick`] at or after it.
    pub fn next_tick_us(&self) -> u64 {
        self.next_due_us
    }

    /// The configuration.
    pub fn config(&self) -> &CallerConfig {
        &self.cfg
    }

    /// Measurements so far.
    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// True once voxd sent an AudioSocket hangup frame.
    pub fn is_hung_up(&self) -> bool {
        self.hung_up
    }

    /// Why the last refused frame or packet from voxd was refused (for a log line).
    pub fn last_refusal(&self) -> Option<&'static str> {
        self.last_refusal
    }

    /// Produces the bytes to send for the tick due now: one socket write for
    /// AudioSocket (the first one also carries the UUID frame), one datagram for
    /// RTP. The slice lives in the caller's own buffer until the next call.
    pub fn on_tick(&mut self, now_us: u64) -> &[u8] {
        let mut tx = std::mem::take(&mut self.tx);
        tx.clear();
        self.on_tick_into(now_us, &mut tx);
        self.tx = tx;
        &self.tx
    }

    /// [`Caller::on_tick`] appending to `out` instead; returns the bytes appended.
    /// With RTP, append one tick per buffer (each tick is one datagram).
    pub fn on_tick_into(&mut self, now_us: u64, out: &mut BytesMut) -> usize {
        let start = out.len();
        let due = self.next_due_us;
        if now_us > due + LATE_TICK_US {
            self.stats.on_caller_late_tick();
        }
        if now_us >= due + RESYNC_US {
            // Skip the missed slots, as time passed for a real caller too.
            let missed = (now_us - due) / FRAME_US;
            if let Transport::Rtp(_) = self.cfg.transport {
                self.sender
                    .skip_samples((missed as u32).wrapping_mul(self.frame_len as u32));
            }
            self.next_due_us = now_us + FRAME_US;
        } else {
            self.next_due_us = due + FRAME_US;
        }

        let talking = self.source.next_frame(&mut self.pcm);
        let spurt_start = talking && !self.prev_talking;
        self.prev_talking = talking;
        self.stats.on_caller_frame(now_us, talking);

        match self.cfg.transport {
            Transport::AudioSocket(rate) => {
                if !self.uuid_sent {
                    self.uuid_sent = true;
                    // Written by hand: `encode_raw` refuses UUID frames, which only
                    // Asterisk sends.
                    out.put_u8(Kind::Uuid.as_u8());
                    out.put_u16(16);
                    out.put_slice(&self.cfg.uuid);
                }
                audiosocket::encode_audio(Kind::for_rate(rate), &self.pcm, out)
                    .expect("a 20 ms slin frame is always encodable");
            }
            Transport::Rtp(law) => {
                match law {
                    Law::Ulaw => g711::ulaw_encode(&self.pcm, &mut self.g711),
                    Law::Alaw => g711::alaw_encode(&self.pcm, &mut self.g711),
                };
                let header = self.sender.next_header(spurt_start);
                rtp::build_into(&header, &self.g711, out)
                    .expect("a plain RTP header is always buildable");
            }
        }
        out.len() - start
    }

    /// Feeds bytes received from voxd at `now_us`: any slice of the AudioSocket TCP
    /// stream, or exactly one RTP datagram. Returns how many 20 ms frames were
    /// measured. Frames of the wrong kind, rate or size are counted as bad (see
    /// [`Caller::last_refusal`]) and skipped. An `Err` that
    /// [`is_fatal`](CallerError::is_fatal) means the AudioSocket stream is out of sync:
    /// later bytes are ignored and the driver should close the connection.
    pub fn on_received(&mut self, now_us: u64, bytes: &[u8]) -> Result<usize, CallerError> {
        match self.cfg.transport {
            Transport::AudioSocket(rate) => self.on_audiosocket(now_us, bytes, rate),
            Transport::Rtp(law) => self.on_rtp(now_us, bytes, law),
        }
    }

    fn refuse(&mut self, why: &'static str) {
        self.stats.on_bad_frame();
        self.last_refusal = Some(why);
    }

    fn on_audiosocket(
        &mut self,
        now_us: u64,
        bytes: &[u8],
        rate: Rate,
    ) -> Result<usize, CallerError> {
        if self.broken {
            return Ok(0);
        }
        self.rx.extend_from_slice(bytes);
        let mut measured = 0;
        loop {
            let frame = match self.decoder.decode(&mut self.rx) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.refuse(e.label());
                    self.broken = true;
                    self.rx.clear();
                    return Err(e.into());
                }
            };
            match frame.kind {
                Kind::Hangup => {
                    self.hung_up = true;
                    self.stats.on_hangup();
                }
                k if k.is_audio() => {
                    if k != Kind::for_rate(rate) {
                        self.refuse("audio kind does not match the call's rate");
                    } else if frame.payload.len() != 2 * self.frame_len {
                        self.refuse("audio frame is not 20 ms");
                    } else {
                        let peak = i32::from(self.cfg.silence_peak);
                        let audio = frame
                            .payload
                            .chunks_exact(2)
                            .any(|c| i32::from(i16::from_le_bytes([c[0], c[1]])).abs() > peak);
                        self.stats.on_frame(now_us, audio);
                        measured += 1;
                    }
                }
                _ => self.refuse("kind voxd must not send (uuid, dtmf, error, unknown)"),
            }
        }
        Ok(measured)
    }

    fn on_rtp(&mut self, now_us: u64, bytes: &[u8], law: Law) -> Result<usize, CallerError> {
        let pkt = match rtp::parse(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.refuse(e.label());
                return Err(e.into());
            }
        };
        if pkt.header.payload_type != law.payload_type() {
            self.refuse("RTP payload type does not match the call's codec");
            return Ok(0);
        }
        self.stats.on_rtp(pkt.header.ssrc, pkt.header.sequence);
        if pkt.payload.len() != self.frame_len {
            self.refuse("RTP payload is not 20 ms");
            return Ok(0);
        }
        let peak = i32::from(self.cfg.silence_peak);
        let audio = pkt
            .payload
            .iter()
            .any(|&c| i32::from(law.decode(c)).abs() > peak);
        self.stats.on_frame(now_us, audio);
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::signal::{SignalConfig, SpeechSignal};
    use crate::loadgen::stats::Aggregate;

    const MS: u64 = 1_000;

    fn speech(seed: u64, rate: Rate, cfg: SignalConfig) -> CallerSource {
        CallerSource::Speech(SpeechSignal::with_config(seed, rate, cfg))
    }

    fn quick_talker() -> SignalConfig {
        SignalConfig {
            initial_pause_ms: Some(40),
            talk_ms: (200, 200),
            pause_ms: (300, 300),
            ..SignalConfig::default()
        }
    }

    #[test]
    fn audiosocket_sends_uuid_then_slin_of_the_rate() {
        for (rate, kind, payload) in [
            (Rate::Hz8000, Kind::Slin8, 320),
            (Rate::Hz16000, Kind::Slin16, 640),
        ] {
            let cfg = CallerConfig::new(Transport::AudioSocket(rate), 5);
            let mut c = Caller::new(cfg, speech(1, rate, quick_talker()), 0).unwrap();
            let mut reference = SpeechSignal::with_config(1, rate, quick_talker());
            let mut want = vec![0i16; rate.samples_per_frame()];
            let mut stream = BytesMut::new();
            for i in 0..20u64 {
                assert_eq!(c.next_tick_us(), i * FRAME_US);
                stream.extend_from_slice(c.on_tick(i * FRAME_US));
            }
            let mut dec = Decoder::new();
            let first = dec.decode(&mut stream).unwrap().unwrap();
            assert_eq!(first.kind, Kind::Uuid);
            assert_eq!(first.uuid().unwrap(), cfg.uuid);
            for _ in 0..20 {
                let f = dec.decode(&mut stream).unwrap().unwrap();
                assert_eq!((f.kind, f.payload.len()), (kind, payload));
                reference.next_frame(&mut want);
                assert!(f.samples().unwrap().eq(want.iter().copied()));
            }
            assert!(stream.is_empty());
            assert_eq!(c.stats().counts().frames_sent, 20);
            assert_eq!(c.stats().counts().caller_spurts, 1);
        }
    }

    #[test]
    fn rtp_sends_g711_with_marker_at_spurt_start() {
        for law in [Law::Ulaw, Law::Alaw] {
            let cfg = CallerConfig::new(Transport::Rtp(law), 9);
            let mut c = Caller::new(cfg, speech(2, Rate::Hz8000, quick_talker()), 0).unwrap();
            let mut reference = SpeechSignal::with_config(2, Rate::Hz8000, quick_talker());
            let mut pcm = [0i16; 160];
            let mut enc = [0u8; 160];
            let mut markers = Vec::new();
            for i in 0..60u64 {
                let pkt = c.on_tick(i * FRAME_US).to_vec();
                let p = rtp::parse(&pkt).unwrap();
                assert_eq!(p.header.payload_type, law.payload_type());
                assert_eq!(p.header.ssrc, cfg.rtp_ssrc);
                assert_eq!(
                    p.header.sequence,
                    cfg.rtp_initial_seq.wrapping_add(i as u16)
                );
                assert_eq!(
                    p.header.timestamp,
                    cfg.rtp_initial_ts.wrapping_add(160 * i as u32)
                );
                let talking = reference.next_frame(&mut pcm);
                match law {
                    Law::Ulaw => g711::ulaw_encode(&pcm, &mut enc),
                    Law::Alaw => g711::alaw_encode(&pcm, &mut enc),
                };
                assert_eq!(p.payload, &enc[..]);
                if p.header.marker {
                    assert!(talking);
                    markers.push(i);
                }
            }
            // 40 ms pause, 200 ms talk, 300 ms pause, ...: spurts start at frames 2, 27, 52.
            assert_eq!(markers, vec![2, 27, 52]);
        }
    }

    #[test]
    fn source_must_match_transport_rate() {
        let cfg = CallerConfig::new(Transport::Rtp(Law::Ulaw), 1);
        let err = Caller::new(cfg, speech(1, Rate::Hz16000, quick_talker()), 0).unwrap_err();
        assert!(matches!(
            err,
            CallerError::FrameSize {
                got: 320,
                want: 160,
                ..
            }
        ));
        assert!(err.is_fatal());
        assert_ne!(
            CallerConfig::new(Transport::Rtp(Law::Ulaw), 1).uuid,
            CallerConfig::new(Transport::Rtp(Law::Ulaw), 2).uuid
        );
    }

    #[test]
    fn late_ticks_counted_and_resynced() {
        let cfg = CallerConfig::new(Transport::Rtp(Law::Ulaw), 3);
        let mut c = Caller::new(cfg, speech(1, Rate::Hz8000, quick_talker()), 1_000).unwrap();
        c.on_tick(1_000);
        c.on_tick(21_000 + 5 * MS); // 5 ms late: fine
        assert_eq!(c.next_tick_us(), 41_000);
        c.on_tick(41_000 + 15 * MS); // 15 ms late: counted, schedule kept
        assert_eq!(c.next_tick_us(), 61_000);
        assert_eq!(c.stats().counts().caller_late_ticks, 1);
        let before = rtp::parse(c.on_tick(61_000)).unwrap().header;
        // 200 ms behind: counted and re-based, the timestamp skips the missed slots.
        let now = 81_000 + 200 * MS;
        let after = rtp::parse(c.on_tick(now)).unwrap().header;
        assert_eq!(c.next_tick_us(), now + FRAME_US);
        assert_eq!(c.stats().counts().caller_late_ticks, 2);
        assert_eq!(after.sequence, before.sequence.wrapping_add(1));
        assert_eq!(after.timestamp, before.timestamp.wrapping_add(160 * 11));
    }

    fn voxd_frame(kind: Kind, value: i16, n: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        audiosocket::encode_audio(kind, &vec![value; n], &mut out).unwrap();
        out.to_vec()
    }

    #[test]
    fn audiosocket_receive_classifies_and_measures() {
        let cfg = CallerConfig::new(Transport::AudioSocket(Rate::Hz8000), 1);
        let mut c = Caller::new(cfg, speech(1, Rate::Hz8000, quick_talker()), 0).unwrap();
        // Ten frames: silence, silence, then audio; delivered in odd-sized pieces.
        let mut stream = Vec::new();
        for i in 0..10 {
            let v = if i < 2 { 0 } else { 1000 };
            stream.extend_from_slice(&voxd_frame(Kind::Slin8, v, 160));
        }
        let frame_len = stream.len() / 10;
        let mut measured = 0;
        for i in 0..10u64 {
            let f = &stream[i as usize * frame_len..(i as usize + 1) * frame_len];
            let (a, b) = f.split_at(7);
            measured += c.on_received(100 * MS + i * FRAME_US, a).unwrap();
            measured += c.on_received(100 * MS + i * FRAME_US, b).unwrap();
        }
        assert_eq!(measured, 10);
        let n = c.stats().counts();
        assert_eq!(
            (n.frames_received, n.agent_audio_frames, n.silent_frames),
            (10, 8, 2)
        );
        assert_eq!(c.stats().first_audio_us(), Some(140 * MS));
        // Quiet frames at the silence threshold stay silent.
        c.on_received(400 * MS, &voxd_frame(Kind::Slin8, SILENCE_PEAK, 160))
            .unwrap();
        assert_eq!(c.stats().counts().silent_frames, 3);
        // Wrong rate, wrong size, a DTMF frame: counted as bad, not measured.
        let mut bad = voxd_frame(Kind::Slin16, 1000, 320);
        bad.extend_from_slice(&voxd_frame(Kind::Slin8, 1000, 80));
        bad.extend_from_slice(&[0x03, 0x00, 0x01, b'5']);
        assert_eq!(c.on_received(420 * MS, &bad).unwrap(), 0);
        assert_eq!(c.stats().counts().bad_frames, 3);
        assert!(c.last_refusal().unwrap().contains("uuid, dtmf"));
        // Hangup.
        let mut h = BytesMut::new();
        audiosocket::encode_hangup(&mut h);
        c.on_received(440 * MS, &h).unwrap();
        assert!(c.is_hung_up());
        assert_eq!(c.stats().counts().hangups, 1);
        // An oversize header breaks the stream: error, then everything ignored.
        let err = c.on_received(460 * MS, &[0x10, 0xFF, 0xFF]).unwrap_err();
        assert!(err.is_fatal());
        assert_eq!(
            c.on_received(480 * MS, &voxd_frame(Kind::Slin8, 1, 160))
                .unwrap(),
            0
        );
    }

    #[test]
    fn rtp_receive_measures_loss_and_refuses_garbage() {
        let cfg = CallerConfig::new(Transport::Rtp(Law::Ulaw), 4);
        let mut c = Caller::new(cfg, speech(1, Rate::Hz8000, quick_talker()), 0).unwrap();
        let mut voxd = RtpSender::new(77, 65_534, 0, rtp::PT_PCMU, 160);
        let tone = [g711::linear_to_ulaw(2000); 160];
        let silence = [g711::ULAW_SILENCE; 160];
        let mut buf = [0u8; 200];
        for i in 0..6u64 {
            let h = voxd.next_header(false);
            let payload = if i < 3 { &silence } else { &tone };
            let n = rtp::build(&h, payload, &mut buf).unwrap();
            if i == 4 {
                continue; // lost in the network
            }
            assert_eq!(c.on_received(i * FRAME_US, &buf[..n]).unwrap(), 1);
        }
        let mut agg = Aggregate::new();
        agg.merge(c.stats());
        let r = agg.report(0);
        assert_eq!((r.counts.rtp_expected, r.counts.rtp_lost), (6, 1));
        assert_eq!(
            (r.counts.silent_frames, r.counts.agent_audio_frames),
            (3, 2)
        );
        assert_eq!(
            r.counts.late_in_speech, 1,
            "the lost packet is a hole in speech"
        );
        // A-law silence is silent too; wrong payload type and garbage are refused.
        let err = c.on_received(200 * MS, &[0x80, 0x00]).unwrap_err();
        assert!(!err.is_fatal());
        let h = RtpSender::new(77, 0, 0, rtp::PT_PCMA, 160).next_header(false);
        let n = rtp::build(&h, &[g711::ALAW_SILENCE; 160], &mut buf).unwrap();
        assert_eq!(c.on_received(220 * MS, &buf[..n]).unwrap(), 0);
        assert_eq!(c.stats().counts().bad_frames, 2);
        let mut a = Caller::new(
            CallerConfig::new(Transport::Rtp(Law::Alaw), 4),
            speech(1, Rate::Hz8000, quick_talker()),
            0,
        )
        .unwrap();
        a.on_received(0, &buf[..n]).unwrap();
        assert_eq!(a.stats().counts().silent_frames, 1);
    }

    /// A whole conversation against a scripted fake voxd, driven on a virtual clock:
    /// voxd sends a frame every 20 ms (with 1 ms of delivery delay), silence unless
    /// replying; it replies with 1 s of audio 500 ms after the caller's last talking
    /// frame, and stops 40 ms after the caller talks over it.
    #[test]
    fn conversation_against_a_scripted_voxd() {
        let sig = SignalConfig {
            initial_pause_ms: Some(1_000),
            talk_ms: (1_000, 1_000),
            pause_ms: (3_000, 3_000),
            ..SignalConfig::default()
        };
        let cfg = CallerConfig::new(Transport::AudioSocket(Rate::Hz16000), 11);
        let mut c = Caller::new(cfg, speech(8, Rate::Hz16000, sig), 0).unwrap();
        let mut dec = Decoder::new();
        let mut up = BytesMut::new();
        let mut caller_talking_last_us = None;
        let mut reply_from = u64::MAX;
        let mut reply_until = 0;
        let mut caller_was_talking = false;
        let mut out = BytesMut::new();
        for slot in 0..1_000u64 {
            let now = slot * FRAME_US;
            // Caller tick.
            assert!(c.next_tick_us() <= now);
            up.extend_from_slice(c.on_tick(now));
            while let Some(f) = dec.decode(&mut up).unwrap() {
                if f.kind != Kind::Slin16 {
                    continue;
                }
                let talking = f.samples().unwrap().any(|s| s != 0);
                if talking {
                    caller_talking_last_us = Some(now);
                    if !caller_was_talking && now < reply_until && now >= reply_from {
                        reply_until = now + 40 * MS; // barge-in
                    }
                } else if let Some(t) = caller_talking_last_us.take() {
                    reply_from = t + 500 * MS;
                    reply_until = reply_from + 1_000 * MS;
                }
                caller_was_talking = talking;
            }
            // voxd tick, 1 ms later on the wire.
            let speaking = now >= reply_from && now < reply_until;
            out.clear();
            audiosocket::encode_audio(
                Kind::Slin16,
                &[if speaking { 3_000 } else { 0 }; 320],
                &mut out,
            )
            .unwrap();
            c.on_received(now + MS, &out).unwrap();
        }
        let s = c.stats();
        assert_eq!(s.counts().frames_sent, 1_000);
        assert_eq!(s.counts().caller_spurts, 5); // at 1, 5, 9, 13, 17 s
                                                 // Replies start 500 ms after each spurt's last talking frame (+1 ms wire).
        assert!(s.turn_latencies_us().len() >= 4);
        assert!(s.turn_latencies_us().iter().all(|&t| t == 501 * MS));
        assert_eq!(s.gaps(), 0);
        assert_eq!(s.counts().late_frames, 0);
        let mut agg = Aggregate::new();
        agg.merge(s);
        let r = agg.report(500);
        assert!(r.slo().pass, "{}", r.to_table());
        assert!(r.turn_minus_think_us.p50 <= 2 * MS);
    }
}
