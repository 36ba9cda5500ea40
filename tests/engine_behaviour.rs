//! The engine's required behaviour over real loopback sockets: duplicate UUIDs, DTMF,
//! malformed AudioSocket frames, mixed frame kinds, malformed and reordered RTP, the
//! RTP idle timeout, shutdown with calls up, `limits.max_calls`, and the `sim` agent
//! end to end.
//!
//! No timing asserts: only generous "arrives within N s" guards, and "nothing
//! arrives within 1 s" where a negative cannot be observed otherwise.

mod common;
use common::{frame, signal};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use voxd::config::Config;
use voxd::engine::runner::Engine;
use voxd::engine::shard::ShardStats;
use voxd::media::{audiosocket, rtp};
use voxd::provider::Registry;

const ECHO_YAML: &str = "
default_provider: echo
audiosocket: {host: 127.0.0.1, format: slin16}
external_media: {rtp_host: 127.0.0.1, codec: ulaw}
engine: {shards: 2, io_backend: auto}
barge_in: {enabled: false}
";

/// slin16: 20 ms = 320 samples = 640 bytes.
const FRAME_SAMPLES: usize = 320;
/// Guard for "voxd closes it": generous.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);
/// Guard for "the echo comes back".
const ECHO_LIMIT: Duration = Duration::from_secs(15);

// ---- engine harness -------------------------------------------------------------

struct Harness {
    rt: tokio::runtime::Runtime,
    engine: Option<Engine>,
}

impl Harness {
    fn start(yaml: &str, tweak: impl FnOnce(&mut Config)) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut cfg = voxd::config::parse_str(yaml).expect("test config").config;
        // Any free port (the engine binds every shard to the port the first bind got).
        cfg.audiosocket.port = 0;
        cfg.external_media.rtp_port = 0;
        tweak(&mut cfg);
        let reg = Arc::new(Registry::from_config(&cfg).expect("registry"));
        let engine = rt.block_on(async { Engine::start(&cfg, reg).expect("engine starts") });
        Harness {
            rt,
            engine: Some(engine),
        }
    }

    fn echo() -> Harness {
        Harness::start(ECHO_YAML, |_| {})
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }

    fn as_addr(&self) -> SocketAddr {
        self.engine().audiosocket_addr
    }

    fn rtp_addr(&self) -> SocketAddr {
        self.engine().rtp_addr
    }

    fn sessions_started(&self) -> u64 {
        self.engine()
            .control_stats
            .sessions_started
            .load(Ordering::Relaxed)
    }

    /// `engine.stop()`, which must return (guarded), and the shards' counters.
    fn stop(&mut self) -> Vec<ShardStats> {
        let engine = self.engine.take().expect("engine running");
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), engine.stop())
                .await
                .expect("engine.stop() returns")
        })
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), engine.stop()).await
            });
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    started: u64,
    ended: u64,
    refused: u64,
    protocol_errors: u64,
    rtp_dropped: u64,
}

fn totals(stats: &[ShardStats]) -> Totals {
    let mut t = Totals::default();
    for s in stats {
        t.started += s.calls_started;
        t.ended += s.calls_ended;
        t.refused += s.refused;
        t.protocol_errors += s.protocol_errors;
        t.rtp_dropped += s.rtp_dropped;
    }
    t
}

// ---- signals ----------------------------------------------------------------------

fn random_bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 11) as u8
        })
        .collect()
}

fn le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn uuid(n: u8) -> [u8; 16] {
    let mut u = [0xA5u8; 16];
    u[0] = n;
    u[15] = n.wrapping_mul(31);
    u
}

/// mu-law codes without the two zero codes (0x7F comes back as 0xFF, 0xFF is
/// silence), so echoed audio is told apart byte by byte.
fn ulaw_codes(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| [0x12u8, 0x80, 0x33, 0xE5, 0x01, 0xFE][i % 6] ^ ((i / 6) as u8 & 0x0F) ^ salt)
        .map(|c| if c == 0x7F || c == 0xFF { 0x7E } else { c })
        .collect()
}

// ---- AudioSocket client -----------------------------------------------------------

/// One AudioSocket connection playing Asterisk.
struct AsClient {
    s: TcpStream,
    buf: BytesMut,
    dec: audiosocket::Decoder,
    closed: bool,
    /// The close was a reset (voxd closed with bytes of ours unread), not a FIN.
    reset: bool,
    /// Kinds of every frame received.
    kinds: Vec<u8>,
}

impl AsClient {
    fn connect(addr: SocketAddr) -> AsClient {
        let s = TcpStream::connect(addr).expect("connect to voxd");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s.set_nodelay(true).unwrap();
        AsClient {
            s,
            buf: BytesMut::new(),
            dec: audiosocket::Decoder::new(),
            closed: false,
            reset: false,
            kinds: Vec::new(),
        }
    }

    /// Connect and send the UUID frame.
    fn call(addr: SocketAddr, id: [u8; 16]) -> AsClient {
        let mut c = AsClient::connect(addr);
        c.send(&frame(0x01, &id));
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        // A write may fail once voxd has closed the connection: that is observed on
        // the read side.
        let _ = self.s.write_all(bytes);
    }

    /// slin frames of `samples` (320 samples each) under `kind`, in one write.
    fn send_audio(&mut self, kind: u8, samples: &[i16]) {
        let mut out = Vec::new();
        for f in samples.chunks(FRAME_SAMPLES) {
            out.extend(frame(kind, &le_bytes(f)));
        }
        self.send(&out);
    }

    /// One read (up to the 50 ms read timeout); decoded frames go to `on_frame`.
    fn read_once(&mut self, mut on_frame: impl FnMut(u8, &[u8])) {
        if self.closed {
            thread::sleep(Duration::from_millis(10));
            return;
        }
        let mut tmp = [0u8; 16384];
        match self.s.read(&mut tmp) {
            Ok(0) => self.closed = true,
            Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Reset / aborted: closed by voxd (a close with unread bytes is a RST).
            Err(_) => {
                self.closed = true;
                self.reset = true;
            }
        }
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(f)) => {
                    let k = f.kind.as_u8();
                    if k == 0x00 {
                        // A hangup frame: voxd refuses or closes this connection.
                        self.kinds.push(k);
                        continue;
                    }
                    assert!(
                        f.kind.is_audio(),
                        "voxd sent a frame of kind {k:#04x}, which Asterisk refuses"
                    );
                    assert!(!f.payload.is_empty(), "voxd sent a zero-length audio frame");
                    self.kinds.push(k);
                    on_frame(k, &f.payload);
                }
                Ok(None) => break,
                Err(e) => panic!("voxd sent an undecodable frame: {e}"),
            }
        }
    }

    /// Read until `want` non-zero samples have arrived (zero samples are silence),
    /// EOF, or `limit`. Returns the non-zero samples in order.
    fn collect_nonzero(&mut self, want: usize, limit: Duration) -> Vec<i16> {
        let mut got = Vec::with_capacity(want);
        let t0 = Instant::now();
        while got.len() < want && t0.elapsed() < limit && !self.closed {
            self.read_once(|_, p| {
                got.extend(
                    p.chunks_exact(2)
                        .map(|c| i16::from_le_bytes([c[0], c[1]]))
                        .filter(|&v| v != 0),
                )
            });
        }
        got
    }

    /// Send `samples` in one burst and read their echo back.
    fn echo_round(&mut self, kind: u8, samples: &[i16]) -> Vec<i16> {
        self.send_audio(kind, samples);
        self.collect_nonzero(samples.len(), ECHO_LIMIT)
    }

    /// True when voxd closes the connection (EOF or reset) within `limit`; frames
    /// received meanwhile are discarded.
    fn closed_within(&mut self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while !self.closed && t0.elapsed() < limit {
            self.read_once(|_, _| {});
        }
        self.closed
    }

    /// True when voxd closes the connection with a clean EOF (FIN) within `limit`.
    fn eof_within(&mut self, limit: Duration) -> bool {
        self.closed_within(limit) && !self.reset
    }

    /// True when the connection is still open after reading for `d`.
    fn open_after(&mut self, d: Duration) -> bool {
        let t0 = Instant::now();
        while !self.closed && t0.elapsed() < d {
            self.read_once(|_, _| {});
        }
        !self.closed
    }
}

/// Like Asterisk: one frame per 20 ms on the given connection (a clone of the
/// client's stream), then silence frames of the same size until `stop`.
fn paced_writer(
    mut s: TcpStream,
    frames: Vec<Vec<u8>>,
    silence: Option<Vec<u8>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let t0 = Instant::now();
        let mut i = 0u32;
        let mut frames = frames.into_iter();
        while !stop.load(Ordering::Relaxed) {
            let bytes = match frames.next() {
                Some(f) => f,
                None => match &silence {
                    Some(s) => s.clone(),
                    None => return,
                },
            };
            if s.write_all(&bytes).is_err() {
                return;
            }
            i += 1;
            let due = t0 + Duration::from_millis(20 * u64::from(i));
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                thread::sleep(d);
            }
        }
    })
}

/// A whole good call in its own thread: UUID, `samples` paced at 20 ms under
/// `kind`, then silence; returns the non-zero samples echoed back and the kinds of
/// the frames received.
fn paced_echo_call(
    addr: SocketAddr,
    id: [u8; 16],
    kind: u8,
    samples: Vec<i16>,
) -> JoinHandle<(Vec<i16>, Vec<u8>)> {
    thread::spawn(move || {
        let mut c = AsClient::call(addr, id);
        let frames: Vec<Vec<u8>> = samples
            .chunks(FRAME_SAMPLES)
            .map(|f| frame(kind, &le_bytes(f)))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let w = paced_writer(
            c.s.try_clone().unwrap(),
            frames,
            Some(frame(kind, &[0u8; 2 * FRAME_SAMPLES])),
            stop.clone(),
        );
        let got = c.collect_nonzero(samples.len(), ECHO_LIMIT);
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
        (got, std::mem::take(&mut c.kinds))
    })
}

fn assert_exact(got: &[i16], sent: &[i16], what: &str) {
    assert_eq!(
        got.len(),
        sent.len(),
        "{what}: {} of {} samples came back",
        got.len(),
        sent.len()
    );
    assert!(got == sent, "{what}: the echo is not bit-exact");
}

// ---- RTP client -------------------------------------------------------------------

fn rtp_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

fn rtp_packet(pt: u8, seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let h = rtp::RtpHeader::new(pt, seq, 160 * u32::from(seq), ssrc);
    let mut pkt = vec![0u8; 12 + payload.len()];
    let n = rtp::build(&h, payload, &mut pkt).unwrap();
    pkt.truncate(n);
    pkt
}

/// Read RTP from voxd until `want` non-silent mu-law bytes arrived or `limit`;
/// checks every packet is valid PCMU from `voxd`. Returns the non-0xFF bytes.
fn rtp_collect(sock: &UdpSocket, voxd: SocketAddr, want: usize, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    while got.len() < want && t0.elapsed() < limit {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(from, voxd, "replies come from the address Asterisk sent to");
        let p = rtp::parse(&buf[..n]).expect("voxd sends valid RTP");
        assert_eq!(p.header.payload_type, rtp::PT_PCMU);
        assert_eq!(p.payload.len(), 160);
        got.extend(p.payload.iter().copied().filter(|&b| b != 0xFF));
    }
    got
}

/// True when `sock` receives nothing within `d`.
fn rtp_silent_for(sock: &UdpSocket, d: Duration) -> bool {
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    while t0.elapsed() < d {
        if sock.recv_from(&mut buf).is_ok() {
            return false;
        }
    }
    true
}

/// Send each bad packet 10 times from its own source while a good call runs: the
/// good call echoes G.711-exact and no bad source hears anything back.
fn bad_sources_beside_a_good_call(voxd: SocketAddr, cases: &[(&str, Vec<u8>)], salt: u8) {
    let socks: Vec<UdpSocket> = cases
        .iter()
        .map(|(_, bytes)| {
            let s = rtp_socket();
            for _ in 0..10 {
                s.send_to(bytes, voxd).unwrap();
            }
            s
        })
        .collect();
    let (got, codes) = rtp_good_call(voxd, salt);
    assert_eq!(got.len(), codes.len(), "all the RTP audio came back");
    assert!(got == codes, "echo over RTP PCMU is G.711-exact");
    for ((what, _), s) in cases.iter().zip(&socks) {
        assert!(
            rtp_silent_for(s, Duration::from_millis(100)),
            "{what}: voxd sent frames to that source"
        );
    }
}

/// A good RTP call: 50 in-order packets in a burst; returns the echoed codes.
fn rtp_good_call(voxd: SocketAddr, salt: u8) -> (Vec<u8>, Vec<u8>) {
    let sock = rtp_socket();
    let codes = ulaw_codes(160 * 50, salt);
    for (i, p) in codes.chunks(160).enumerate() {
        sock.send_to(&rtp_packet(rtp::PT_PCMU, 1000 + i as u16, 0xABCD, p), voxd)
            .unwrap();
    }
    let got = rtp_collect(&sock, voxd, codes.len(), ECHO_LIMIT);
    (got, codes)
}

// ---- 1. duplicate UUID ------------------------------------------------------------

fn duplicate_uuid_replaces(shards: u32) {
    let mut h = Harness::start(ECHO_YAML, |c| c.engine.shards = shards);
    let addr = h.as_addr();
    let id = uuid(1);

    let mut first = AsClient::call(addr, id);
    let sent = signal(16 * 300, 11);
    assert_exact(&first.echo_round(0x12, &sent), &sent, "first connection");

    // The same UUID again (a transfer): it replaces the first.
    let mut second = AsClient::call(addr, id);
    assert!(
        first.eof_within(CLOSE_LIMIT),
        "voxd closes the replaced connection"
    );
    let sent = signal(16 * 1000, 12);
    assert_exact(&second.echo_round(0x12, &sent), &sent, "second connection");
    // And again: each replacement closes the previous one.
    let mut third = AsClient::call(addr, id);
    assert!(
        second.eof_within(CLOSE_LIMIT),
        "voxd closes the replaced second connection"
    );
    let sent = signal(16 * 500, 13);
    assert_exact(&third.echo_round(0x12, &sent), &sent, "third connection");
    drop(third);

    let t = totals(&h.stop());
    assert_eq!(t.started, 3);
    assert_eq!(t.ended, 3);
    assert_eq!(
        t.protocol_errors, 0,
        "a replacement is not a protocol error"
    );
}

#[test]
fn duplicate_uuid_replaces_the_first_connection() {
    duplicate_uuid_replaces(1);
}

/// With several shards, SO_REUSEPORT spreads connections by 4-tuple hash: the same
/// UUID may land on another shard. 8 reconnects: a per-shard UUID map passes this
/// by luck with probability 1/256.
#[test]
fn duplicate_uuid_replaces_across_shards() {
    let h = Harness::start(ECHO_YAML, |c| c.engine.shards = 2);
    let addr = h.as_addr();
    let id = uuid(2);
    let mut prev = AsClient::call(addr, id);
    let sent = signal(16 * 200, 21);
    assert_exact(&prev.echo_round(0x12, &sent), &sent, "first connection");
    for i in 0..8 {
        let mut next = AsClient::call(addr, id);
        let sent = signal(16 * 200, 22 + i);
        assert_exact(&next.echo_round(0x12, &sent), &sent, "replacement");
        assert!(
            prev.eof_within(CLOSE_LIMIT),
            "reconnect {i}: the replaced connection was not closed (another shard?)"
        );
        prev = next;
    }
}

// ---- 2. DTMF ----------------------------------------------------------------------

#[test]
fn dtmf_frames_keep_the_call_and_malformed_dtmf_closes_only_its_connection() {
    let h = Harness::echo();
    let addr = h.as_addr();

    let mut call = AsClient::call(addr, uuid(3));
    let a = signal(16 * 400, 31);
    assert_exact(&call.echo_round(0x12, &a), &a, "before DTMF");
    // Every digit Asterisk can send, between audio frames.
    let b = signal(16 * 600, 32);
    let mut out = Vec::new();
    for (i, f) in b.chunks(FRAME_SAMPLES).enumerate() {
        out.extend(frame(0x12, &le_bytes(f)));
        let digits = b"0123456789*#ABCD";
        if i < digits.len() {
            out.extend(frame(0x03, &digits[i..i + 1]));
        }
    }
    call.send(&out);
    let got = call.collect_nonzero(b.len(), ECHO_LIMIT);
    assert_exact(&got, &b, "audio around DTMF frames");

    // Malformed DTMF, each on its own connection (with a UUID first).
    let bad: [(&str, Vec<u8>); 4] = [
        ("two-byte DTMF", frame(0x03, b"12")),
        ("empty DTMF", frame(0x03, b"")),
        ("non-DTMF char 'x'", frame(0x03, b"x")),
        ("non-DTMF byte 0x00", frame(0x03, &[0])),
    ];
    for (i, (what, bytes)) in bad.iter().enumerate() {
        let mut c = AsClient::call(addr, uuid(40 + i as u8));
        c.send(bytes);
        assert!(c.eof_within(CLOSE_LIMIT), "{what}: voxd closes it");
    }
    // DTMF before the UUID.
    let mut c = AsClient::connect(addr);
    c.send(&frame(0x03, b"5"));
    assert!(c.eof_within(CLOSE_LIMIT), "DTMF before UUID: closed");

    // The good call is unharmed.
    let d = signal(16 * 400, 33);
    assert_exact(
        &call.echo_round(0x12, &d),
        &d,
        "after the bad DTMF connections",
    );
}

// ---- 3. malformed frames ----------------------------------------------------------

#[test]
fn malformed_frames_close_only_their_own_connection() {
    let mut h = Harness::echo();
    let addr = h.as_addr();

    // A good call, paced like Asterisk, running the whole time.
    let sent = signal(16 * 3000, 51);
    let good = paced_echo_call(addr, uuid(50), 0x12, sent.clone());
    thread::sleep(Duration::from_millis(200));

    let with_uuid = |n: u8, rest: &[u8]| {
        let mut v = frame(0x01, &uuid(n));
        v.extend_from_slice(rest);
        v
    };
    let mut oversize = vec![0x10, 0xFF, 0xFF];
    oversize.extend(vec![0x55; 4000]);
    let mut second_uuid = frame(0x12, &[1u8; 640]);
    second_uuid.extend(frame(0x01, &uuid(99)));
    let mut random = random_bytes(4096, 0xBAD5EED);
    random[0] = 0x7A; // not a UUID frame, whatever the seed gives
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversize length header", with_uuid(60, &oversize)),
        ("oversize length header before UUID", oversize.clone()),
        (
            "odd-length slin16 audio",
            with_uuid(61, &frame(0x12, &[1u8; 641])),
        ),
        (
            "odd-length audio under 0x10",
            with_uuid(62, &frame(0x10, &[1u8; 3])),
        ),
        ("zero-length audio", with_uuid(63, &frame(0x12, &[]))),
        (
            "zero-length audio under 0x10",
            with_uuid(64, &frame(0x10, &[])),
        ),
        ("non-UUID first frame", frame(0x12, &[1u8; 640])),
        ("short UUID frame", frame(0x01, &[7u8; 15])),
        ("second UUID frame", with_uuid(65, &second_uuid)),
        ("random bytes", random),
    ];
    for (what, bytes) in &cases {
        let mut c = AsClient::connect(addr);
        c.send(bytes);
        assert!(c.eof_within(CLOSE_LIMIT), "{what}: voxd closes it");
    }
    // A bad frame after some good audio, while both run.
    let mut late = AsClient::call(addr, uuid(66));
    let x = signal(16 * 200, 52);
    assert_exact(
        &late.echo_round(0x12, &x),
        &x,
        "second caller before its bad frame",
    );
    late.send(&frame(0x12, &[2u8; 5]));
    assert!(
        late.eof_within(CLOSE_LIMIT),
        "odd audio mid-call: voxd closes it"
    );

    let (got, _) = good.join().unwrap();
    assert_exact(&got, &sent, "the good call during the bad connections");
    let t = totals(&h.stop());
    assert_eq!(
        t.protocol_errors,
        cases.len() as u64 + 1,
        "each bad connection is one protocol error"
    );
    assert_eq!(t.started, t.ended);
}

// ---- 4. mixed kinds ---------------------------------------------------------------

#[test]
fn old_asterisk_0x10_frames_take_the_configured_rate_and_get_0x10_back() {
    let h = Harness::echo(); // audiosocket.format: slin16
    let addr = h.as_addr();
    let sent = signal(16 * 1000, 71);
    // 640-byte frames (20 ms at 16 kHz) tagged 0x10, as older Asterisk does.
    let (got, kinds) = paced_echo_call(addr, uuid(70), 0x10, sent.clone())
        .join()
        .unwrap();
    assert_exact(&got, &sent, "0x10-tagged slin16 call");
    assert!(!kinds.is_empty());
    assert!(
        kinds.iter().all(|&k| k == 0x10),
        "voxd answers a 0x10 caller with 0x10 frames only, got {:?}",
        kinds
            .iter()
            .filter(|&&k| k != 0x10)
            .take(5)
            .collect::<Vec<_>>()
    );

    // A modern leg (0x12) gets 0x12 back once its first audio frame arrived.
    let mut c = AsClient::call(addr, uuid(72));
    let s = signal(16 * 400, 73);
    assert_exact(&c.echo_round(0x12, &s), &s, "0x12 call");
    let k0 = c.kinds.len();
    let s = signal(16 * 400, 74);
    assert_exact(&c.echo_round(0x12, &s), &s, "0x12 call, second round");
    assert!(
        c.kinds[k0..].iter().all(|&k| k == 0x12),
        "frames to a 0x12 caller are 0x12"
    );
}

#[test]
fn a_12khz_frame_on_a_slin16_listener_is_refused() {
    let h = Harness::echo();
    let addr = h.as_addr();
    let mut good = AsClient::call(addr, uuid(80));
    let mut bad = AsClient::call(addr, uuid(81));
    // 20 ms at 12 kHz = 240 samples.
    bad.send(&frame(0x11, &le_bytes(&signal(240, 82))));
    assert!(
        bad.eof_within(CLOSE_LIMIT),
        "rate mismatch (0x11 on slin16): voxd closes it"
    );
    let s = signal(16 * 500, 83);
    assert_exact(&good.echo_round(0x12, &s), &s, "the other call");
}

// ---- 5. RTP -----------------------------------------------------------------------

/// Packets that do not parse as RTP start no call.
#[test]
fn unparseable_rtp_starts_no_call_and_a_good_call_still_echoes() {
    let mut h = Harness::echo();
    let voxd = h.rtp_addr();
    let good_pkt = rtp_packet(rtp::PT_PCMU, 1, 9, &[0x55; 160]);
    let mut wrong_version = good_pkt.clone();
    wrong_version[0] = (wrong_version[0] & 0x3F) | (1 << 6);
    let mut version0 = good_pkt.clone();
    version0[0] &= 0x3F;
    let mut csrc_overflow = good_pkt[..20].to_vec();
    csrc_overflow[0] |= 0x0F; // 15 CSRCs in a 20-byte packet
    let mut bad_padding = good_pkt.clone();
    bad_padding[0] |= 0x20;
    *bad_padding.last_mut().unwrap() = 200; // more padding than the packet holds
    let mut ext_overflow = good_pkt.clone();
    ext_overflow[0] |= 0x10;
    ext_overflow[12..16].copy_from_slice(&[0xBE, 0xDE, 0xFF, 0xFF]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated (8 bytes)", good_pkt[..8].to_vec()),
        ("truncated (11 bytes)", good_pkt[..11].to_vec()),
        ("empty datagram", Vec::new()),
        ("version 1", wrong_version),
        ("version 0", version0),
        ("CSRC count past the end", csrc_overflow),
        ("padding longer than the packet", bad_padding),
        ("extension longer than the packet", ext_overflow),
    ];
    bad_sources_beside_a_good_call(voxd, &cases, 0);
    let t = totals(&h.stop());
    assert_eq!(t.started, 1, "only the good source started a call");
    assert!(t.rtp_dropped >= 10 * cases.len() as u64);
}

/// Packets that parse but carry the wrong payload type, or nothing but padding,
/// must not start a call either.
#[test]
fn wrong_payload_type_or_padding_only_rtp_starts_no_call() {
    let mut h = Harness::echo();
    let voxd = h.rtp_addr();
    let pcma = rtp_packet(rtp::PT_PCMA, 1, 9, &[0xD5; 160]);
    let mut padding_only = rtp_packet(rtp::PT_PCMU, 1, 9, &[0, 0, 0, 4]);
    padding_only[0] |= 0x20; // P bit: the 4 bytes are all padding
    let dynamic = rtp_packet(118, 1, 9, &[0; 640]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("PT 8 on a ulaw leg", pcma),
        ("padding-only packet", padding_only),
        ("PT 118 (slin16)", dynamic),
    ];
    bad_sources_beside_a_good_call(voxd, &cases, 1);
    assert_eq!(
        h.sessions_started(),
        1,
        "provider sessions: only the good source"
    );
    let t = totals(&h.stop());
    assert_eq!(t.started, 1, "only the good source started a call");
    assert!(t.rtp_dropped >= 10 * cases.len() as u64);
}

/// With `max_calls: 1`, one stray PCMA packet must not take the only slot. (The
/// good call sends its audio in one burst, so the idle timeout stays at its
/// default: a 300 ms timeout would end it before its echo has played out.)
#[test]
fn a_stray_wrong_payload_type_packet_does_not_hold_a_call_slot() {
    let h = Harness::start(ECHO_YAML, |c| {
        c.engine.shards = 1;
        c.limits.max_calls = 1;
    });
    let voxd = h.rtp_addr();
    let stray = rtp_socket();
    stray
        .send_to(&rtp_packet(rtp::PT_PCMA, 1, 9, &[0xD5; 160]), voxd)
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let (got, codes) = rtp_good_call(voxd, 2);
    assert_eq!(
        got.len(),
        codes.len(),
        "the good call gets the slot and echoes"
    );
    assert!(got == codes, "G.711-exact");
}

/// Pairs swapped after the first packet: the jitter buffer puts them back in order.
#[test]
fn rtp_swapped_pairs_come_back_in_order() {
    let h = Harness::echo();
    let voxd = h.rtp_addr();
    let sock = rtp_socket();
    let codes = ulaw_codes(160 * 51, 3);
    let pkts: Vec<Vec<u8>> = codes
        .chunks(160)
        .enumerate()
        .map(|(i, p)| rtp_packet(rtp::PT_PCMU, 65500u16.wrapping_add(i as u16), 77, p))
        .collect();
    // 0, 2, 1, 4, 3, ... (and the sequence wraps through 65535 -> 0 on the way).
    let mut order = vec![0usize];
    let mut i = 1;
    while i + 1 < pkts.len() {
        order.push(i + 1);
        order.push(i);
        i += 2;
    }
    if i < pkts.len() {
        order.push(i);
    }
    for &k in &order {
        sock.send_to(&pkts[k], voxd).unwrap();
    }
    let got = rtp_collect(&sock, voxd, codes.len(), ECHO_LIMIT);
    assert_eq!(got.len(), codes.len(), "every packet's audio came back");
    assert!(got == codes, "the echo is in sequence order, G.711-exact");
}

/// The very first pair swapped: the first packet to arrive (seq n+1) must not make
/// seq n "late".
#[test]
fn rtp_first_pair_swapped_comes_back_in_order() {
    let h = Harness::echo();
    let voxd = h.rtp_addr();
    let sock = rtp_socket();
    let codes = ulaw_codes(160 * 50, 4);
    let pkts: Vec<Vec<u8>> = codes
        .chunks(160)
        .enumerate()
        .map(|(i, p)| rtp_packet(rtp::PT_PCMU, 3000 + i as u16, 78, p))
        .collect();
    for pair in pkts.chunks(2) {
        for p in pair.iter().rev() {
            sock.send_to(p, voxd).unwrap();
        }
    }
    let got = rtp_collect(&sock, voxd, codes.len(), ECHO_LIMIT);
    assert_eq!(got.len(), codes.len(), "every packet's audio came back");
    assert!(got == codes, "the echo is in sequence order, G.711-exact");
}

// ---- 6. RTP idle timeout ----------------------------------------------------------

#[test]
fn rtp_call_stops_sending_after_the_idle_timeout() {
    let mut h = Harness::start(ECHO_YAML, |c| c.external_media.idle_timeout_ms = 300);
    let voxd = h.rtp_addr();
    let sock = rtp_socket();
    for i in 0..10u16 {
        sock.send_to(&rtp_packet(rtp::PT_PCMU, i, 5, &[0x55; 160]), voxd)
            .unwrap();
    }
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    let first = loop {
        if let Ok(r) = sock.recv_from(&mut buf) {
            break Some(r);
        }
        if t0.elapsed() > Duration::from_secs(5) {
            break None;
        }
    };
    let (_, from) = first.expect("the call answers");
    assert_eq!(from, voxd);
    // Quiet period: drain whatever voxd still sends.
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_millis(1500) {
        let _ = sock.recv_from(&mut buf);
    }
    assert!(
        rtp_silent_for(&sock, Duration::from_secs(1)),
        "voxd still sends frames to a caller silent for 1.5 s (idle_timeout_ms: 300)"
    );
    let t = totals(&h.stop());
    assert_eq!(t.started, 1);
    assert_eq!(t.ended, 1);

    // (A later packet from the same source would start a new call: not asserted.)
}

// ---- 7. shutdown ------------------------------------------------------------------

#[test]
fn stop_with_20_calls_up_closes_them_all() {
    let mut h = Harness::echo();
    let addr = h.as_addr();
    // Each call in its own thread that reads all the time, as Asterisk does (voxd
    // ends a call whose peer leaves 64 KiB unread).
    let (up_tx, up_rx) = std::sync::mpsc::channel::<usize>();
    let stopped: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    let calls: Vec<JoinHandle<Option<Duration>>> = (0..20usize)
        .map(|i| {
            let up_tx = up_tx.clone();
            let stopped = stopped.clone();
            thread::spawn(move || {
                let mut c = AsClient::call(addr, uuid(100 + i as u8));
                let s = signal(16 * 200, 200 + i as u32);
                assert_exact(&c.echo_round(0x12, &s), &s, "call up before stop");
                up_tx.send(i).unwrap();
                // Keep the call going until voxd closes it.
                let t0 = Instant::now();
                while !c.closed && t0.elapsed() < Duration::from_secs(60) {
                    c.read_once(|_, _| {});
                }
                assert!(!c.reset, "call {i}: closed with a reset, not an EOF");
                // How long after engine.stop() was called the EOF came.
                stopped.get().map(|t| t.elapsed())
            })
        })
        .collect();
    drop(up_tx);
    let mut up = 0;
    while up < 20 {
        up_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("all 20 calls up");
        up += 1;
    }
    assert_eq!(h.sessions_started(), 20);
    stopped.set(Instant::now()).unwrap();
    let stats = h.stop();
    for (i, c) in calls.into_iter().enumerate() {
        let after = c.join().expect("call thread");
        let after = after.unwrap_or_else(|| panic!("call {i} was closed before engine.stop()"));
        assert!(
            after < Duration::from_secs(25),
            "call {i}: no EOF after engine.stop()"
        );
    }
    let t = totals(&stats);
    assert_eq!(t.started, 20, "calls started");
    assert_eq!(t.ended, 20, "calls ended");
    assert_eq!(t.protocol_errors, 0);
}

// ---- 8. max_calls -----------------------------------------------------------------

#[test]
fn max_calls_refuses_the_third_connection_and_keeps_the_first_two() {
    let mut h = Harness::start(ECHO_YAML, |c| {
        c.engine.shards = 1;
        c.limits.max_calls = 2;
    });
    let addr = h.as_addr();
    let mut a = AsClient::call(addr, uuid(1));
    let mut b = AsClient::call(addr, uuid(2));
    let s = signal(16 * 300, 301);
    assert_exact(&a.echo_round(0x12, &s), &s, "call 1");
    assert_exact(&b.echo_round(0x12, &s), &s, "call 2");

    let mut c = AsClient::call(addr, uuid(3));
    c.send_audio(0x12, &signal(16 * 100, 302));
    assert!(c.closed_within(CLOSE_LIMIT), "the third call is closed");
    assert_eq!(c.kinds, [0x00], "a hangup frame, then the close");

    let s = signal(16 * 500, 303);
    assert_exact(&a.echo_round(0x12, &s), &s, "call 1 after the refusal");
    assert_exact(&b.echo_round(0x12, &s), &s, "call 2 after the refusal");

    // A slot frees when a call hangs up: a new call is then accepted.
    drop(a);
    let mut d = None;
    let t0 = Instant::now();
    while d.is_none() && t0.elapsed() < CLOSE_LIMIT {
        let mut n = AsClient::call(addr, uuid(4));
        if n.open_after(Duration::from_millis(300)) {
            d = Some(n);
        }
    }
    let mut d = d.expect("a call is accepted after one hung up");
    let s = signal(16 * 300, 304);
    assert_exact(&d.echo_round(0x12, &s), &s, "call after a slot freed");
    let t = totals(&h.stop());
    assert!(t.refused >= 1);
}

/// Connections that have not sent their UUID hold no call slot: with
/// `max_calls: 2`, two silent connections leave room for two real calls; the
/// table of waiting connections is bounded (as many as free slots plus
/// `max_calls`), so a fifth connection is refused with a hangup frame; the read
/// deadline then closes the silent ones, and the calls keep echoing exactly.
#[test]
fn connections_waiting_for_their_uuid_take_no_call_slot_and_are_bounded() {
    let mut h = Harness::start(ECHO_YAML, |c| {
        c.engine.shards = 1;
        c.limits.max_calls = 2;
        c.audiosocket.read_timeout_ms = 4000;
    });
    let addr = h.as_addr();
    let mut silent: Vec<AsClient> = (0..2).map(|_| AsClient::connect(addr)).collect();
    for s in &mut silent {
        assert!(
            s.open_after(Duration::from_millis(100)),
            "a silent connection is kept until its deadline"
        );
    }
    let mut a = AsClient::call(addr, uuid(11));
    let mut b = AsClient::call(addr, uuid(12));
    let s = signal(16 * 300, 1101);
    assert_exact(
        &a.echo_round(0x12, &s),
        &s,
        "call 1 beside two silent connections",
    );
    assert_exact(
        &b.echo_round(0x12, &s),
        &s,
        "call 2 beside two silent connections",
    );

    let mut fifth = AsClient::connect(addr);
    assert!(
        fifth.eof_within(CLOSE_LIMIT),
        "the fifth connection is closed"
    );
    assert_eq!(fifth.kinds, [0x00], "a hangup frame, then the close");
    for s in &mut silent {
        assert!(s.eof_within(CLOSE_LIMIT), "silent: closed by the deadline");
        assert_eq!(s.kinds, [0x00], "silent: a hangup frame, then the close");
    }
    let s = signal(16 * 300, 1102);
    assert_exact(&a.echo_round(0x12, &s), &s, "call 1 after");
    assert_exact(&b.echo_round(0x12, &s), &s, "call 2 after");
    let stats = h.stop();
    let t = totals(&stats);
    assert_eq!(t.started, 2, "only the two real connections became calls");
    assert_eq!(t.refused, 1, "the fifth connection was refused");
    let timeouts: u64 = stats.iter().map(|s| s.read_timeouts).sum();
    assert_eq!(timeouts, 2, "the silent ones were closed by the deadline");
}

// ---- 9. sim agent -----------------------------------------------------------------

const SIM_YAML: &str = "
default_provider: sim
audiosocket: {host: 127.0.0.1, format: slin16}
external_media: {rtp_host: 127.0.0.1, codec: ulaw}
engine: {shards: 1, io_backend: auto}
providers: {sim: {enabled: true, think_ms: 100, reply_ms: 500}}
barge_in: {enabled: false}
";

/// Speech-like caller audio: a 150 Hz harmonic buzz, 4 Hz syllables, loud.
fn speech(n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = i as f32 / 16000.0;
            let env = 0.6 + 0.4 * (std::f32::consts::TAU * 4.0 * t).sin();
            let mut v = 0.0;
            for k in 1..6 {
                v += (std::f32::consts::TAU * 150.0 * k as f32 * t).sin() / k as f32;
            }
            (9000.0 * env * v / 2.3) as i16
        })
        .collect()
}

#[test]
fn sim_agent_answers_over_audiosocket() {
    let h = Harness::start(SIM_YAML, |_| {});
    let addr = h.as_addr();
    let mut c = AsClient::call(addr, uuid(9));
    let frames: Vec<Vec<u8>> = speech(16000)
        .chunks(FRAME_SAMPLES)
        .map(|f| frame(0x12, &le_bytes(f)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let w = paced_writer(
        c.s.try_clone().unwrap(),
        frames,
        Some(frame(0x12, &[0u8; 2 * FRAME_SAMPLES])),
        stop.clone(),
    );
    // 1 s of speech, then silence: the reply must start within 5 s after that.
    let mut nonzero = 0usize;
    let mut first_voiced: Option<usize> = None;
    let mut last_voiced = 0usize;
    let mut frames_seen = 0usize;
    let t0 = Instant::now();
    let limit = Duration::from_secs(1) + Duration::from_secs(5);
    while t0.elapsed() < limit && !c.closed {
        c.read_once(|_, p| {
            let nz = p
                .chunks_exact(2)
                .filter(|s| i16::from_le_bytes([s[0], s[1]]) != 0)
                .count();
            if nz > 0 {
                first_voiced.get_or_insert(frames_seen);
                last_voiced = frames_seen;
            }
            nonzero += nz;
            frames_seen += 1;
        });
        // Done once the reply has been followed by 1 s of silent frames.
        if first_voiced.is_some() && frames_seen > last_voiced + 50 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert!(!c.closed, "voxd closed the call");
    let first = first_voiced.expect("non-silent agent audio within 5 s of the end of speech");
    let span_ms = (last_voiced + 1 - first) * 20;
    let nonzero_ms = nonzero / 16;
    eprintln!("sim reply: {nonzero_ms} ms of non-zero samples over {span_ms} ms");
    assert!(
        nonzero_ms >= 400,
        "reply_ms 500: only {nonzero_ms} ms of non-zero samples came back (span {span_ms} ms)"
    );
    assert!(
        span_ms <= 500 + 200,
        "one reply of about 500 ms, not {span_ms} ms"
    );
}

#[test]
fn a_second_engine_on_the_same_ports_refuses_to_start() {
    let h = Harness::echo();
    for (which, port) in [
        ("audiosocket", h.as_addr().port()),
        ("rtp", h.rtp_addr().port()),
    ] {
        let mut cfg = voxd::config::parse_str(ECHO_YAML)
            .expect("test config")
            .config;
        // The port the first engine holds; the other listener on a free port.
        cfg.audiosocket.port = 0;
        cfg.external_media.rtp_port = 0;
        match which {
            "audiosocket" => cfg.audiosocket.port = port,
            _ => cfg.external_media.rtp_port = port,
        }
        let reg = Arc::new(Registry::from_config(&cfg).expect("registry"));
        let second = h.rt.block_on(async { Engine::start(&cfg, reg) });
        match second {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("already in use"), "{which}: {msg}");
            }
            Ok(_) => panic!("{which}: a second engine bound port {port} beside the first"),
        }
    }
    // The first engine still carries calls.
    let mut s = TcpStream::connect(h.as_addr()).unwrap();
    s.write_all(&frame(0x01, &uuid(9))).unwrap();
}

// ---- 11. read deadline and RTP rate cap --------------------------------------------

/// Slowloris on AudioSocket: a connection that sends nothing, one that sends its
/// UUID and then nothing, and one that trickles a frame one byte at a time (bytes
/// keep coming, no frame completes) are all closed by the read deadline with a
/// hangup frame, while a paced call beside them echoes bit-exact.
#[test]
fn read_deadline_closes_silent_uuid_only_and_trickling_connections() {
    let mut h = Harness::start(ECHO_YAML, |c| c.audiosocket.read_timeout_ms = 400);
    let addr = h.as_addr();
    let good = paced_echo_call(addr, uuid(90), 0x12, signal(16 * 2000, 900));
    let mut silent = AsClient::connect(addr);
    let mut uuid_only = AsClient::call(addr, uuid(91));
    let mut trickle = AsClient::call(addr, uuid(92));
    // One 640-byte frame, one byte every 50 ms: 8 bytes per deadline, never whole.
    let partial = frame(0x12, &[1u8; 640]);
    let mut next = 0;
    let t0 = Instant::now();
    while !trickle.closed && t0.elapsed() < CLOSE_LIMIT {
        if next < partial.len() {
            trickle.send(&partial[next..next + 1]);
            next += 1;
        }
        trickle.read_once(|_, _| {});
    }
    assert!(trickle.closed, "the trickling connection is closed");
    assert!(next > 8, "it kept sending bytes past the deadline ({next})");
    assert!(silent.eof_within(CLOSE_LIMIT), "silent: closed by voxd");
    assert_eq!(
        silent.kinds,
        [0x00],
        "silent: a hangup frame, then the close"
    );
    assert!(
        uuid_only.eof_within(CLOSE_LIMIT),
        "uuid only: closed by voxd"
    );
    // (Silence frames keep Asterisk's side alive until then.)
    assert_eq!(
        uuid_only.kinds.last(),
        Some(&0x00),
        "uuid only: a hangup frame"
    );
    assert_eq!(trickle.kinds.last(), Some(&0x00), "trickle: a hangup frame");
    let (got, _) = good.join().unwrap();
    assert_exact(&got, &signal(16 * 2000, 900), "the paced call beside them");
    let stats = h.stop();
    let timeouts: u64 = stats.iter().map(|s| s.read_timeouts).sum();
    assert_eq!(timeouts, 3, "three read deadlines passed");
    assert_eq!(totals(&stats).protocol_errors, 0);
}

/// An RTP flood from one source: packets over `max_packets_per_second` are
/// dropped and counted; a good call from another source echoes G.711-exact.
#[test]
fn rtp_flood_from_one_source_is_capped_and_harms_nobody() {
    let mut h = Harness::start(ECHO_YAML, |c| c.external_media.max_packets_per_second = 100);
    let voxd = h.rtp_addr();
    let flood = rtp_socket();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = {
        let stop = stop.clone();
        let flood = flood.try_clone().unwrap();
        thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) || n < 2000 {
                let p = rtp_packet(rtp::PT_PCMU, n as u16, 0xF100D, &[0x55; 160]);
                let _ = flood.send_to(&p, voxd);
                n += 1;
                if n % 200 == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            n
        })
    };
    let (got, codes) = rtp_good_call(voxd, 9);
    stop.store(true, Ordering::Relaxed);
    let sent = sent.join().unwrap();
    assert_eq!(
        got.len(),
        codes.len(),
        "all the good call's audio came back"
    );
    assert!(got == codes, "the good call's echo is G.711-exact");
    let stats = h.stop();
    let limited: u64 = stats.iter().map(|s| s.rtp_rate_limited).sum();
    let rtp_in: u64 = stats.iter().map(|s| s.rtp_in).sum();
    assert!(
        limited > 0 && limited < u64::from(sent),
        "{limited} of {sent} flood packets dropped by the cap"
    );
    // What the cap let through: the burst (100) plus 100 per second, far below the
    // flood (packets the kernel dropped never reached voxd: compare with rtp_in).
    assert!(
        limited + 50 + 1000 > rtp_in / 2,
        "limited {limited}, rtp_in {rtp_in}"
    );
}
