//! Media legs of the ARI emulator: the pluggable [`MediaDriver`] that plays Asterisk's
//! side of an AudioSocket or ExternalMedia RTP leg, the [`LegLink`] through which a
//! driver reports to the emulator and learns which caller is bridged to its leg, the
//! per-leg [`MediaCounters`], and the default tokio driver [`TokioMediaDriver`].
//!
//! Owns: the default driver's sockets (one TCP connection per AudioSocket leg, one
//! UDP socket per RTP leg), its 20 ms send schedule (UUID frame first, then one
//! audio frame per tick: kind 0x10 slin 320 B, kind 0x12 slin16 640 B, G.711 under
//! 0x10; RTP PCMU/PCMA 160 B), the caller signal it sends while the leg is bridged
//! with a caller (silence otherwise), and the reading and counting of what voxd sends
//! back (ending the leg on EOF, on a 0x00 hangup frame, and on anything real
//! Asterisk would refuse).
//!
//! Must not: touch the emulator's channel state directly (it reports through
//! [`LegLink`], which takes the emulator's lock), block the runtime, or keep
//! unbounded buffers (reads go through the AudioSocket decoder's payload limit).

#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::MissedTickBehavior;

use crate::loadgen::signal::{SignalConfig, SpeechSignal};
use crate::media::audiosocket::{self, Decoder, Kind};
use crate::media::{g711, rtp, Rate};
use crate::rng::SplitMix64;

use super::Inner;

/// A frame whose samples all stay at or below this magnitude counts as silence.
const SILENCE_PEAK: i16 = 8;
/// Dynamic payload type Asterisk uses for slin16 on ExternalMedia RTP.
pub const PT_SLIN16: u8 = 118;
/// Dynamic payload type the emulator uses for 8 kHz slin on ExternalMedia RTP.
pub const PT_SLIN8: u8 = 117;

/// The audio format of a media leg (`c(..)` of an AudioSocket dial string, `format=`
/// of `externalMedia`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegFormat {
    /// slin, 8 kHz: AudioSocket kind 0x10, 320 B per 20 ms.
    Slin8,
    /// slin16: AudioSocket kind 0x12, 640 B per 20 ms; RTP dynamic PT 118 big-endian.
    Slin16,
    /// G.711 mu-law: 160 B per 20 ms (under kind 0x10 on AudioSocket, PT 0 on RTP).
    Ulaw,
    /// G.711 A-law: 160 B per 20 ms (under kind 0x10 on AudioSocket, PT 8 on RTP).
    Alaw,
}

impl LegFormat {
    /// Parses an Asterisk format name (`slin`, `slin8`, `slin16`, `ulaw`, `alaw`);
    /// `None` for anything else.
    pub fn parse(name: &str) -> Option<LegFormat> {
        match name.trim().to_ascii_lowercase().as_str() {
            "slin" | "slin8" => Some(LegFormat::Slin8),
            "slin16" => Some(LegFormat::Slin16),
            "ulaw" | "mulaw" | "pcmu" => Some(LegFormat::Ulaw),
            "alaw" | "pcma" => Some(LegFormat::Alaw),
            _ => None,
        }
    }

    /// The Asterisk name of the format.
    pub fn name(self) -> &'static str {
        match self {
            LegFormat::Slin8 => "slin",
            LegFormat::Slin16 => "slin16",
            LegFormat::Ulaw => "ulaw",
            LegFormat::Alaw => "alaw",
        }
    }

    /// The sample rate of the format.
    pub fn rate(self) -> Rate {
        match self {
            LegFormat::Slin16 => Rate::Hz16000,
            _ => Rate::Hz8000,
        }
    }

    /// Payload bytes of one 20 ms frame.
    pub fn frame_bytes(self) -> usize {
        match self {
            LegFormat::Slin8 => 320,
            LegFormat::Slin16 => 640,
            LegFormat::Ulaw | LegFormat::Alaw => 160,
        }
    }

    /// The AudioSocket kind Asterisk 22 uses for this format.
    pub fn audiosocket_kind(self) -> Kind {
        match self {
            LegFormat::Slin16 => Kind::Slin16,
            _ => Kind::Slin8,
        }
    }

    /// The RTP payload type of this format.
    pub fn rtp_payload_type(self) -> u8 {
        match self {
            LegFormat::Ulaw => rtp::PT_PCMU,
            LegFormat::Alaw => rtp::PT_PCMA,
            LegFormat::Slin16 => PT_SLIN16,
            LegFormat::Slin8 => PT_SLIN8,
        }
    }
}

/// How a media leg reaches voxd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegTransport {
    /// Asterisk connects to voxd's AudioSocket listener and sends `uuid` first.
    AudioSocket {
        /// voxd's AudioSocket address (from the dial string or `external_host`).
        remote: SocketAddr,
        /// The call UUID sent in the 0x01 frame.
        uuid: [u8; 16],
    },
    /// Asterisk sends RTP from a local UDP port to voxd's `external_host`.
    Rtp {
        /// voxd's RTP address (`external_host`).
        remote: SocketAddr,
        /// The IP address the driver binds its UDP socket to (port chosen by the OS).
        bind_ip: IpAddr,
    },
}

/// What the caller bridged with a leg sounds like.
#[derive(Debug, Clone, PartialEq)]
pub enum CallerSignal {
    /// Digital silence.
    Silence,
    /// A steady sine tone.
    Tone {
        /// Frequency in Hz.
        hz: f64,
        /// Peak amplitude (full scale 32767).
        level: i16,
    },
    /// The load generator's speech-like signal ([`SpeechSignal`]).
    Speech {
        /// Per-call seed.
        seed: u64,
        /// Talk/pause and voice knobs.
        config: SignalConfig,
    },
}

impl Default for CallerSignal {
    /// A 1 kHz tone at about -12 dBFS: never silent, so every bridged frame is
    /// caller audio.
    fn default() -> Self {
        CallerSignal::Tone {
            hz: 1_000.0,
            level: 8_000,
        }
    }
}

/// The caller a leg is bridged with, published to the leg's driver whenever the
/// bridge membership changes.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerFeed {
    /// The caller's channel id.
    pub caller_id: String,
    /// What the caller says.
    pub signal: CallerSignal,
}

/// Why a leg's media ended on the driver's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegClose {
    /// voxd closed the socket (EOF).
    RemoteClosed,
    /// voxd sent an AudioSocket hangup frame (0x00).
    HangupFrame,
    /// voxd sent something real Asterisk ends the call on (a kind other than
    /// 0x00/0x10..0x18, an empty or odd audio frame, an oversized frame).
    ProtocolError(String),
    /// A socket error.
    Io(String),
}

/// Live counters of one media leg. Drivers update them; the emulator sums them per
/// caller in [`MediaStats`].
#[derive(Debug, Default)]
pub struct MediaCounters {
    /// Set once the leg's media is up (AudioSocket: UUID frame written).
    pub connected: AtomicBool,
    /// Set once the leg's media has ended.
    pub closed: AtomicBool,
    /// Audio frames (or RTP packets) sent to voxd.
    pub frames_sent: AtomicU64,
    /// Payload bytes sent to voxd.
    pub bytes_sent: AtomicU64,
    /// Frames sent that carried the bridged caller's non-silent audio.
    pub voiced_frames_sent: AtomicU64,
    /// Audio frames (or RTP packets) received from voxd.
    pub frames_received: AtomicU64,
    /// Payload bytes received from voxd.
    pub bytes_received: AtomicU64,
    /// Frames received that were not silence.
    pub voiced_frames_received: AtomicU64,
    /// AudioSocket hangup frames received.
    pub hangup_frames: AtomicU64,
    /// Frames or packets Asterisk would refuse (bad kind, empty/odd audio, bad RTP,
    /// dynamic payload types, packets from an address other than `external_host`).
    pub rejected: AtomicU64,
    /// Socket write errors.
    pub send_errors: AtomicU64,
}

impl MediaCounters {
    /// Counts one frame sent with `bytes` of payload; `voiced` when it carried
    /// non-silent caller audio.
    pub fn add_sent(&self, bytes: usize, voiced: bool) {
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        if voiced {
            self.voiced_frames_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one frame received with `bytes` of payload; `voiced` when not silent.
    pub fn add_received(&self, bytes: usize, voiced: bool) {
        self.frames_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if voiced {
            self.voiced_frames_received.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one refused frame or packet.
    pub fn add_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy for one leg.
    pub fn snapshot(&self) -> MediaStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MediaStats {
            legs: 1,
            connected_legs: u32::from(self.connected.load(Ordering::Relaxed)),
            closed_legs: u32::from(self.closed.load(Ordering::Relaxed)),
            frames_sent: l(&self.frames_sent),
            bytes_sent: l(&self.bytes_sent),
            voiced_frames_sent: l(&self.voiced_frames_sent),
            frames_received: l(&self.frames_received),
            bytes_received: l(&self.bytes_received),
            voiced_frames_received: l(&self.voiced_frames_received),
            hangup_frames: l(&self.hangup_frames),
            rejected: l(&self.rejected),
            send_errors: l(&self.send_errors),
        }
    }
}

/// Media totals of one channel: for a caller, summed over every leg that was ever
/// bridged with it; for a leg, that leg alone. Returned by
/// [`AriEmulator::media_stats`](super::AriEmulator::media_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MediaStats {
    /// Legs summed.
    pub legs: u32,
    /// Legs whose media came up.
    pub connected_legs: u32,
    /// Legs whose media has ended.
    pub closed_legs: u32,
    /// See [`MediaCounters::frames_sent`].
    pub frames_sent: u64,
    /// See [`MediaCounters::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`MediaCounters::voiced_frames_sent`].
    pub voiced_frames_sent: u64,
    /// See [`MediaCounters::frames_received`].
    pub frames_received: u64,
    /// See [`MediaCounters::bytes_received`].
    pub bytes_received: u64,
    /// See [`MediaCounters::voiced_frames_received`].
    pub voiced_frames_received: u64,
    /// See [`MediaCounters::hangup_frames`].
    pub hangup_frames: u64,
    /// See [`MediaCounters::rejected`].
    pub rejected: u64,
    /// See [`MediaCounters::send_errors`].
    pub send_errors: u64,
}

impl MediaStats {
    /// Adds another leg's totals to these.
    pub fn merge(&mut self, o: &MediaStats) {
        self.legs += o.legs;
        self.connected_legs += o.connected_legs;
        self.closed_legs += o.closed_legs;
        self.frames_sent += o.frames_sent;
        self.bytes_sent += o.bytes_sent;
        self.voiced_frames_sent += o.voiced_frames_sent;
        self.frames_received += o.frames_received;
        self.bytes_received += o.bytes_received;
        self.voiced_frames_received += o.voiced_frames_received;
        self.hangup_frames += o.hangup_frames;
        self.rejected += o.rejected;
        self.send_errors += o.send_errors;
    }
}

/// The emulator's side of one leg, shared by its [`LegLink`]s.
pub(crate) struct LegShared {
    pub(crate) channel_id: String,
    pub(crate) counters: Arc<MediaCounters>,
    pub(crate) feed: watch::Sender<Option<Arc<CallerFeed>>>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) outcome: Mutex<Option<oneshot::Sender<Result<(), String>>>>,
    pub(crate) emu: Weak<Inner>,
}

impl LegShared {
    /// Asks the driver to close the leg's media (idempotent).
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Publishes the bridged caller (or `None`) if it changed.
    pub(crate) fn set_feed(&self, feed: Option<Arc<CallerFeed>>) {
        self.feed.send_if_modified(|cur| {
            if *cur == feed {
                false
            } else {
                *cur = feed;
                true
            }
        });
    }
}

/// A driver's handle on one leg: report the media's fate, learn what the bridged
/// caller says, see when the emulator wants the media closed, and count frames.
/// Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct LegLink {
    pub(crate) shared: Arc<LegShared>,
}

impl fmt::Debug for LegLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegLink")
            .field("channel_id", &self.shared.channel_id)
            .finish()
    }
}

impl LegLink {
    /// The leg's ARI channel id.
    pub fn channel_id(&self) -> &str {
        &self.shared.channel_id
    }

    /// The leg's counters (update them as frames move).
    pub fn counters(&self) -> &MediaCounters {
        &self.shared.counters
    }

    /// Called by the driver once the media is up (AudioSocket: connected and UUID
    /// frame written; RTP: socket bound). The originate request that created the leg
    /// answers 200 only after this (like Asterisk, whose AudioSocket channel connects
    /// during the channel request).
    pub fn connected(&self) {
        self.shared
            .counters
            .connected
            .store(true, Ordering::Relaxed);
        if let Ok(mut o) = self.shared.outcome.lock() {
            if let Some(tx) = o.take() {
                let _ = tx.send(Ok(()));
            }
        }
    }

    /// Called by the driver when the media could not be set up (connection refused
    /// or timed out): the originate request fails with 500 and the channel vanishes.
    pub fn connect_failed(&self, why: impl Into<String>) {
        self.shared.counters.closed.store(true, Ordering::Relaxed);
        let why = why.into();
        let pending = self.shared.outcome.lock().ok().and_then(|mut o| o.take());
        match pending {
            Some(tx) => {
                let _ = tx.send(Err(why));
            }
            None => self.closed(LegClose::Io(why)),
        }
    }

    /// Called by the driver when the media ended on voxd's side (EOF, hangup frame,
    /// protocol error): the emulator hangs the leg's channel up and emits its
    /// ChannelHangupRequest, StasisEnd and ChannelDestroyed. Safe to call more than
    /// once and after the emulator stopped the leg.
    pub fn closed(&self, why: LegClose) {
        self.shared.counters.closed.store(true, Ordering::Relaxed);
        if let Some(inner) = self.shared.emu.upgrade() {
            inner.media_closed(&self.shared.channel_id, &why);
        }
    }

    /// A receiver of the bridged caller: `Some` while the leg shares a bridge with an
    /// emulated caller, `None` otherwise (send silence then).
    pub fn caller_feed(&self) -> watch::Receiver<Option<Arc<CallerFeed>>> {
        self.shared.feed.subscribe()
    }

    /// A receiver that turns `true` when the emulator wants the media closed (the
    /// leg was hung up through ARI, the emulator restarted or stopped).
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.shared.stop.subscribe()
    }

    /// True once the emulator wants the media closed.
    pub fn is_stopped(&self) -> bool {
        *self.shared.stop.borrow()
    }
}

/// One media leg handed to a [`MediaDriver`].
#[derive(Debug, Clone)]
pub struct MediaLeg {
    /// The leg's ARI channel id (`channelId=` of the originate).
    pub channel_id: String,
    /// Where the media goes.
    pub transport: LegTransport,
    /// The audio format.
    pub format: LegFormat,
    /// The leg's link to the emulator.
    pub link: LegLink,
}

/// Plays Asterisk's media side of the legs voxd creates. The emulator calls
/// [`MediaDriver::start_leg`] from the REST handler of the originate or
/// `externalMedia` request, on the emulator's tokio runtime.
pub trait MediaDriver: Send + Sync + 'static {
    /// Starts one leg and returns at once. For RTP the driver binds its UDP socket
    /// here and returns its address (it goes into `UNICASTRTP_LOCAL_ADDRESS/PORT`);
    /// for AudioSocket it returns `None` and connects in the background. Either way
    /// it must later call [`LegLink::connected`] or [`LegLink::connect_failed`]
    /// (the originate waits up to the emulator's connect timeout for one of them),
    /// and [`LegLink::closed`] if voxd ends the media. When
    /// [`LegLink::stop_signal`] turns true it closes the leg's socket. An `Err`
    /// fails the originate with 500.
    fn start_leg(&self, leg: MediaLeg) -> io::Result<Option<SocketAddr>>;
}

/// The default driver: one tokio task per leg on the current runtime, real 20 ms
/// pacing, the bridged caller's [`CallerSignal`] (silence while not bridged).
#[derive(Debug, Clone)]
pub struct TokioMediaDriver {
    /// TCP connect timeout of AudioSocket legs (Asterisk uses 2 s).
    pub connect_timeout: Duration,
}

impl Default for TokioMediaDriver {
    fn default() -> Self {
        TokioMediaDriver {
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl MediaDriver for TokioMediaDriver {
    fn start_leg(&self, leg: MediaLeg) -> io::Result<Option<SocketAddr>> {
        match leg.transport {
            LegTransport::AudioSocket { remote, uuid } => {
                let timeout = self.connect_timeout;
                tokio::spawn(run_audiosocket(remote, uuid, leg.format, leg.link, timeout));
                Ok(None)
            }
            LegTransport::Rtp { remote, bind_ip } => {
                let std_sock = std::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0))?;
                std_sock.set_nonblocking(true)?;
                let sock = tokio::net::UdpSocket::from_std(std_sock)?;
                let local = sock.local_addr()?;
                leg.link.connected();
                tokio::spawn(run_rtp(sock, remote, leg.format, leg.link));
                Ok(Some(local))
            }
        }
    }
}

/// Produces the caller's samples for one leg at the leg's rate.
enum SignalGen {
    Silence,
    Tone { phase: f64, step: f64, level: f64 },
    Speech(Box<SpeechSignal>),
}

impl SignalGen {
    fn new(signal: &CallerSignal, rate: Rate) -> SignalGen {
        match signal {
            CallerSignal::Silence => SignalGen::Silence,
            CallerSignal::Tone { hz, level } => SignalGen::Tone {
                phase: 0.0,
                step: std::f64::consts::TAU * hz / f64::from(rate.hz()),
                level: f64::from(*level),
            },
            CallerSignal::Speech { seed, config } => {
                SignalGen::Speech(Box::new(SpeechSignal::with_config(*seed, rate, *config)))
            }
        }
    }

    /// Fills `out`; true when the frame is not silence.
    fn fill(&mut self, out: &mut [i16]) -> bool {
        match self {
            SignalGen::Silence => {
                out.fill(0);
                false
            }
            SignalGen::Tone { phase, step, level } => {
                for s in out.iter_mut() {
                    *s = (phase.sin() * *level) as i16;
                    *phase += *step;
                    if *phase > std::f64::consts::TAU {
                        *phase -= std::f64::consts::TAU;
                    }
                }
                *level >= f64::from(SILENCE_PEAK)
            }
            SignalGen::Speech(s) => s.next_frame(out),
        }
    }
}

/// The caller side of one leg: follows the feed and produces 20 ms frames.
struct Source {
    feed: watch::Receiver<Option<Arc<CallerFeed>>>,
    current: Option<(String, SignalGen)>,
    rate: Rate,
    samples: Vec<i16>,
}

impl Source {
    fn new(link: &LegLink, rate: Rate) -> Source {
        Source {
            feed: link.caller_feed(),
            current: None,
            rate,
            samples: vec![0; rate.samples_per_frame()],
        }
    }

    /// The next frame into `self.samples`; true when it carries caller audio.
    fn next(&mut self) -> bool {
        let feed = self.feed.borrow_and_update().clone();
        match feed {
            None => {
                self.current = None;
                self.samples.fill(0);
                false
            }
            Some(f) => {
                let same = matches!(&self.current, Some((id, _)) if *id == f.caller_id);
                if !same {
                    self.current =
                        Some((f.caller_id.clone(), SignalGen::new(&f.signal, self.rate)));
                }
                match &mut self.current {
                    Some((_, g)) => g.fill(&mut self.samples),
                    None => false,
                }
            }
        }
    }
}

fn is_voiced(samples: impl Iterator<Item = i16>) -> bool {
    samples
        .into_iter()
        .any(|s| s.unsigned_abs() > SILENCE_PEAK as u16)
}

fn pacing() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    tick
}

async fn run_audiosocket(
    remote: SocketAddr,
    uuid: [u8; 16],
    format: LegFormat,
    link: LegLink,
    connect_timeout: Duration,
) {
    let mut stop = link.stop_signal();
    if *stop.borrow_and_update() {
        link.connect_failed("leg stopped before connecting");
        return;
    }
    let connect = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(remote));
    let stream = tokio::select! {
        r = connect => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                link.connect_failed(format!("connect {remote}: {e}"));
                return;
            }
            Err(_) => {
                link.connect_failed(format!("connect {remote}: timed out"));
                return;
            }
        },
        _ = stop.changed() => {
            link.connect_failed("leg stopped while connecting");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut out = BytesMut::with_capacity(1024);
    out.put_u8(Kind::Uuid.as_u8());
    out.put_u16(16);
    out.put_slice(&uuid);
    if let Err(e) = wr.write_all(&out).await {
        link.connect_failed(format!("write UUID frame: {e}"));
        return;
    }
    link.connected();

    let mut source = Source::new(&link, format.rate());
    let mut g711_buf = vec![0u8; format.frame_bytes()];
    let mut inbuf = BytesMut::with_capacity(8 * 1024);
    let mut decoder = Decoder::new();
    let mut decoded = vec![0i16; 4096];
    let mut tick = pacing();
    let kind = format.audiosocket_kind();
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break; // dropping the socket closes it: voxd sees EOF
                }
            }
            _ = tick.tick() => {
                let voiced = source.next();
                out.clear();
                let encoded = match format {
                    LegFormat::Slin8 | LegFormat::Slin16 => {
                        audiosocket::encode_audio(kind, &source.samples, &mut out)
                    }
                    LegFormat::Ulaw => {
                        let n = g711::ulaw_encode(&source.samples, &mut g711_buf);
                        audiosocket::encode_raw(kind, &g711_buf[..n], &mut out)
                    }
                    LegFormat::Alaw => {
                        let n = g711::alaw_encode(&source.samples, &mut g711_buf);
                        audiosocket::encode_raw(kind, &g711_buf[..n], &mut out)
                    }
                };
                if encoded.is_err() {
                    continue;
                }
                if let Err(e) = wr.write_all(&out).await {
                    link.counters().send_errors.fetch_add(1, Ordering::Relaxed);
                    link.closed(LegClose::Io(format!("write: {e}")));
                    break;
                }
                link.counters().add_sent(out.len() - audiosocket::HEADER_LEN, voiced);
            }
            r = rd.read_buf(&mut inbuf) => {
                match r {
                    Ok(0) => {
                        link.closed(LegClose::RemoteClosed);
                        break;
                    }
                    Ok(_) => {
                        if let Some(why) = drain_frames(&mut decoder, &mut inbuf, format, &mut decoded, &link) {
                            link.closed(why);
                            break;
                        }
                    }
                    Err(e) => {
                        link.closed(LegClose::Io(format!("read: {e}")));
                        break;
                    }
                }
            }
        }
    }
}

/// Decodes every whole frame in `inbuf`; returns why the leg must end, if it must.
fn drain_frames(
    decoder: &mut Decoder,
    inbuf: &mut BytesMut,
    format: LegFormat,
    decoded: &mut [i16],
    link: &LegLink,
) -> Option<LegClose> {
    loop {
        let frame = match decoder.decode(inbuf) {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(e) => {
                link.counters().add_rejected();
                return Some(LegClose::ProtocolError(e.to_string()));
            }
        };
        match frame.kind {
            Kind::Hangup => {
                link.counters()
                    .hangup_frames
                    .fetch_add(1, Ordering::Relaxed);
                return Some(LegClose::HangupFrame);
            }
            k if k.is_audio() => {
                if frame.payload.is_empty() {
                    link.counters().add_rejected();
                    return Some(LegClose::ProtocolError(format!(
                        "empty audio frame of kind {}",
                        k.name()
                    )));
                }
                let voiced = match format {
                    LegFormat::Ulaw => {
                        let n = g711::ulaw_decode(&frame.payload, decoded);
                        is_voiced(decoded[..n].iter().copied())
                    }
                    LegFormat::Alaw => {
                        let n = g711::alaw_decode(&frame.payload, decoded);
                        is_voiced(decoded[..n].iter().copied())
                    }
                    LegFormat::Slin8 | LegFormat::Slin16 => match frame.samples() {
                        Ok(it) => is_voiced(it),
                        Err(e) => {
                            link.counters().add_rejected();
                            return Some(LegClose::ProtocolError(e.to_string()));
                        }
                    },
                };
                link.counters().add_received(frame.payload.len(), voiced);
            }
            other => {
                link.counters().add_rejected();
                return Some(LegClose::ProtocolError(format!(
                    "Asterisk refuses AudioSocket kind 0x{:02x} ({})",
                    other.as_u8(),
                    other.name()
                )));
            }
        }
    }
}

async fn run_rtp(
    sock: tokio::net::UdpSocket,
    remote: SocketAddr,
    format: LegFormat,
    link: LegLink,
) {
    let mut stop = link.stop_signal();
    if *stop.borrow_and_update() {
        return;
    }
    let mut rng = SplitMix64(
        link.channel_id()
            .bytes()
            .fold(0x5EED_u64, |h, b| h.rotate_left(5) ^ u64::from(b))
            ^ (remote.port() as u64) << 32,
    );
    let r = rng.next_u64();
    let samples_per_packet = format.rate().samples_per_frame() as u32;
    let mut sender = rtp::RtpSender::new(
        r as u32,
        (r >> 32) as u16,
        (r >> 16) as u32,
        format.rtp_payload_type(),
        samples_per_packet,
    );
    let mut source = Source::new(&link, format.rate());
    let mut payload = vec![0u8; format.frame_bytes()];
    let mut out = BytesMut::with_capacity(rtp::HEADER_LEN + format.frame_bytes());
    let mut inbuf = vec![0u8; 2048];
    let mut decoded = vec![0i16; 2048];
    let mut was_voiced = false;
    let mut tick = pacing();
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
            _ = tick.tick() => {
                let voiced = source.next();
                let n = match format {
                    LegFormat::Ulaw => g711::ulaw_encode(&source.samples, &mut payload),
                    LegFormat::Alaw => g711::alaw_encode(&source.samples, &mut payload),
                    LegFormat::Slin8 | LegFormat::Slin16 => {
                        for (d, s) in payload.chunks_exact_mut(2).zip(&source.samples) {
                            d.copy_from_slice(&s.to_be_bytes());
                        }
                        source.samples.len() * 2
                    }
                };
                let header = sender.next_header(voiced && !was_voiced);
                was_voiced = voiced;
                out.clear();
                if rtp::build_into(&header, &payload[..n], &mut out).is_err() {
                    continue;
                }
                match sock.send_to(&out, remote).await {
                    Ok(_) => link.counters().add_sent(n, voiced),
                    Err(_) => {
                        link.counters().send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            r = sock.recv_from(&mut inbuf) => {
                let Ok((len, from)) = r else { continue };
                if from != remote {
                    // Strict RTP: Asterisk drops packets from an unlearned source.
                    link.counters().add_rejected();
                    continue;
                }
                let Ok(pkt) = rtp::parse(&inbuf[..len]) else {
                    link.counters().add_rejected();
                    continue;
                };
                let voiced = match pkt.header.payload_type {
                    rtp::PT_PCMU => {
                        let n = g711::ulaw_decode(pkt.payload, &mut decoded);
                        is_voiced(decoded[..n].iter().copied())
                    }
                    rtp::PT_PCMA => {
                        let n = g711::alaw_decode(pkt.payload, &mut decoded);
                        is_voiced(decoded[..n].iter().copied())
                    }
                    _ => {
                        // No SDP on this leg: Asterisk drops dynamic payload types.
                        link.counters().add_rejected();
                        continue;
                    }
                };
                link.counters().add_received(pkt.payload.len(), voiced);
            }
        }
    }
}
