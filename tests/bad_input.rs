//! The bad-input suite (issue 7): voxd runs as a child process (`voxd serve`, ARI
//! on against the ARI emulator, the echo agent by default, an OpenAI Realtime
//! protocol simulator for provider faults) while one healthy "canary" call runs
//! over AudioSocket. Every kind of bad input is thrown at it in turn:
//!
//! * AudioSocket: random bytes, oversize lengths, a UUID then a stall, a partial
//!   frame then a stall, a frame trickled a byte at a time (slowloris: the read
//!   deadline closes them), wrong kinds, 10,000 connects that send nothing;
//! * RTP: truncated, padded, wrong-version, wrong payload type, header-only and
//!   foreign-source packets, and a flood from one source (the per-call rate cap);
//! * ARI: event frames with missing fields or broken JSON;
//! * provider: malformed JSON, an 8 MiB message, a message that never completes.
//!
//! For each: the counter in `/metrics` moved by what was thrown, and a clear log
//! line appeared. At the end: the canary's audio came back bit-exact (its frame
//! timing is printed like loadgen's, never asserted), voxd's open fds came back
//! down, and its RSS grew less than 32 MiB over the whole suite. A summary table
//! of what was thrown and the counters is printed.
//!
//! The suite runs once per I/O backend (`engine.io_backend`: epoll, and io_uring
//! where the kernel allows it), one after the other.
//!
//! No timing asserts: every wait is a condition with a generous limit.

mod common;
use common::{frame, signal};

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use voxd::loadgen::ari_emu::{AriEmulator, CallSpec, CallerSignal, EmuConfig};
use voxd::loadgen::procstat::ProcSample;
use voxd::loadgen::provsim::{Fault, ProviderSim, ProviderSimConfig, SimProtocol};
use voxd::loadgen::signal::SignalConfig;
use voxd::media::{audiosocket, rtp};

/// Liveness limit of every wait (never a timing assertion).
const LIMIT: Duration = Duration::from_secs(30);
/// `audiosocket.read_timeout_ms` of the voxd under test.
const READ_TIMEOUT_MS: u64 = 1000;
/// `external_media.max_packets_per_second` of the voxd under test.
const MAX_PPS: u64 = 200;
/// RSS growth allowed over the whole suite.
const RSS_BOUND: u64 = 32 << 20;
const KEY: &str = "sk-bad-input-0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- voxd as a child ----------------------------------------------------------------

struct Voxd {
    child: Child,
    log: PathBuf,
    health: u16,
    audiosocket: SocketAddr,
    rtp: SocketAddr,
}

impl Drop for Voxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Voxd {
    fn start(emu: &AriEmulator, sim_url: &str, backend: &str) -> Voxd {
        let dir =
            std::env::temp_dir().join(format!("voxd-bad-input-{}-{backend}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (health, as_port, rtp_port) = (free_port(), free_port(), free_port());
        let yaml = format!(
            "default_provider: echo\n\
             audiosocket: {{host: 127.0.0.1, port: {as_port}, format: slin16, read_timeout_ms: {READ_TIMEOUT_MS}, accept_unoriginated: true}}\n\
             external_media: {{rtp_host: 127.0.0.1, rtp_port: {rtp_port}, codec: ulaw, max_packets_per_second: {MAX_PPS}}}\n\
             health: {{host: 127.0.0.1, port: {health}}}\n\
             asterisk: {{host: 127.0.0.1, port: {}}}\n\
             engine: {{shards: 2, io_backend: {backend}}}\n\
             barge_in: {{enabled: false}}\n\
             logging: {{level: warn}}\n\
             providers:\n  openai_realtime: {{enabled: true, base_url: '{sim_url}', read_timeout_ms: 600}}\n",
            emu.addr().port()
        );
        let cfg = dir.join("voxd.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let log = dir.join("voxd.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_voxd"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("ASTERISK_ARI_USERNAME", "asterisk")
            .env("ASTERISK_ARI_PASSWORD", "asterisk")
            .env("OPENAI_API_KEY", KEY)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("voxd starts");
        Voxd {
            child,
            log,
            health,
            audiosocket: SocketAddr::from(([127, 0, 0, 1], as_port)),
            rtp: SocketAddr::from(([127, 0, 0, 1], rtp_port)),
        }
    }

    fn metrics(&self) -> Option<Metrics> {
        let mut s = TcpStream::connect(("127.0.0.1", self.health)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: voxd\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.starts_with("HTTP/1.1 200").then_some(Metrics(body))
    }

    /// `/metrics`, waiting for voxd to answer.
    fn wait_metrics(&self) -> Metrics {
        let t0 = Instant::now();
        loop {
            if let Some(m) = self.metrics() {
                return m;
            }
            assert!(t0.elapsed() < LIMIT, "voxd's /metrics never answered");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until `cond` holds for a fresh `/metrics` (shards publish 4 times a
    /// second); returns that scrape.
    fn until(&self, what: &str, cond: impl Fn(&Metrics) -> bool) -> Metrics {
        let t0 = Instant::now();
        loop {
            let m = self.wait_metrics();
            if cond(&m) {
                return m;
            }
            assert!(t0.elapsed() < LIMIT, "timed out waiting for: {what}");
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn proc(&self) -> ProcSample {
        ProcSample::read(self.child.id()).expect("voxd's /proc entry")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One `/metrics` scrape.
struct Metrics(String);

impl Metrics {
    /// Sum of every series of family `name` (or the one series when `name` has
    /// labels).
    fn get(&self, name: &str) -> u64 {
        let exact = name.contains('{');
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let hit = if exact {
                    series == name
                } else {
                    series == name || series.starts_with(&format!("{name}{{"))
                };
                hit.then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum::<f64>() as u64
    }
}

/// The counters the suite watches.
const WATCHED: &[&str] = &[
    "voxd_protocol_errors_total",
    "voxd_audiosocket_read_timeouts_total",
    "voxd_audiosocket_ignored_frames_total",
    "voxd_refused_calls_total",
    "voxd_rtp_packets_total{direction=\"in\"}",
    "voxd_rtp_dropped_packets_total",
    "voxd_rtp_rate_limited_packets_total",
    "voxd_ari_bad_events_total",
    "voxd_provider_errors_total",
    "voxd_provider_failures_total",
];

fn snapshot(m: &Metrics) -> BTreeMap<&'static str, u64> {
    WATCHED.iter().map(|n| (*n, m.get(n))).collect()
}

// ---- the canary -------------------------------------------------------------------

const FRAME_SAMPLES: usize = 320;

fn canary_frame(i: u64) -> Vec<i16> {
    signal(
        FRAME_SAMPLES,
        0xC0FFEE ^ (i as u32).wrapping_mul(2_654_435_761),
    )
}

fn le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|v| v.to_le_bytes()).collect()
}

struct Canary {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<i16>>>,
    closed: Arc<AtomicBool>,
    writer: JoinHandle<()>,
    reader: JoinHandle<Vec<Instant>>,
}

/// What the canary saw.
struct CanaryReport {
    frames_sent: u64,
    samples_back: usize,
    exact: bool,
    arrivals: Vec<Instant>,
}

impl Canary {
    /// A call like Asterisk's: UUID, then one slin16 frame every 20 ms on a
    /// monotonic schedule (known signal, no zero sample), then silence once
    /// stopped; the reader keeps the non-zero samples that come back and the
    /// arrival time of every frame.
    fn start(addr: SocketAddr) -> Canary {
        let s = TcpStream::connect(addr).expect("canary connects");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let mut w = s.try_clone().unwrap();
        w.write_all(&frame(0x01, &[0xCA; 16])).unwrap();
        let writer = {
            let (stop, done, sent) = (stop.clone(), done.clone(), sent.clone());
            thread::spawn(move || {
                let t0 = Instant::now();
                let silence = frame(0x12, &[0u8; 2 * FRAME_SAMPLES]);
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let bytes = if stop.load(Ordering::Relaxed) {
                        silence.clone()
                    } else {
                        let f = frame(0x12, &le_bytes(&canary_frame(sent.load(Ordering::Relaxed))));
                        sent.fetch_add(1, Ordering::Relaxed);
                        f
                    };
                    if w.write_all(&bytes).is_err() {
                        return;
                    }
                    i += 1;
                    let due = t0 + Duration::from_millis(20 * i);
                    if let Some(d) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(d);
                    }
                }
            })
        };
        let reader = {
            let (done, received, closed) = (done.clone(), received.clone(), closed.clone());
            let mut r = s;
            thread::spawn(move || {
                let mut arrivals = Vec::new();
                let mut dec = audiosocket::Decoder::new();
                let mut buf = BytesMut::new();
                let mut tmp = [0u8; 16384];
                while !done.load(Ordering::Relaxed) {
                    match r.read(&mut tmp) {
                        Ok(0) => {
                            closed.store(true, Ordering::Relaxed);
                            break;
                        }
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::WouldBlock
                                    | ErrorKind::TimedOut
                                    | ErrorKind::Interrupted
                            ) =>
                        {
                            continue
                        }
                        Err(_) => {
                            closed.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                    let now = Instant::now();
                    while let Ok(Some(f)) = dec.decode(&mut buf) {
                        if !f.kind.is_audio() {
                            // A hangup frame: the canary is being closed.
                            closed.store(true, Ordering::Relaxed);
                            continue;
                        }
                        arrivals.push(now);
                        let mut got = received.lock().unwrap();
                        got.extend(
                            f.payload
                                .chunks_exact(2)
                                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                                .filter(|&v| v != 0),
                        );
                    }
                }
                arrivals
            })
        };
        Canary {
            stop,
            done,
            sent,
            received,
            closed,
            writer,
            reader,
        }
    }

    fn samples_back(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Stop the signal, wait for its echo, and compare sample by sample.
    fn finish(self) -> CanaryReport {
        self.stop.store(true, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(100));
        let frames_sent = self.sent.load(Ordering::Relaxed);
        let want = frames_sent as usize * FRAME_SAMPLES;
        let t0 = Instant::now();
        while self.samples_back() < want
            && t0.elapsed() < LIMIT
            && !self.closed.load(Ordering::Relaxed)
        {
            thread::sleep(Duration::from_millis(20));
        }
        self.done.store(true, Ordering::Relaxed);
        self.writer.join().unwrap();
        let arrivals = self.reader.join().unwrap();
        let got = self.received.lock().unwrap();
        let mut exact = got.len() == want;
        if exact {
            for (i, chunk) in got.chunks(FRAME_SAMPLES).enumerate() {
                if chunk != canary_frame(i as u64).as_slice() {
                    exact = false;
                    break;
                }
            }
        }
        CanaryReport {
            frames_sent,
            samples_back: got.len(),
            exact,
            arrivals,
        }
    }
}

/// Inter-arrival of the canary's frames at the caller, loadgen style: deviation
/// from 20 ms, percentiles in ms.
fn timing_line(arrivals: &[Instant]) -> String {
    let mut dev: Vec<f64> = arrivals
        .windows(2)
        .map(|w| ((w[1] - w[0]).as_secs_f64() * 1000.0 - 20.0).abs())
        .collect();
    if dev.is_empty() {
        return "no frames".into();
    }
    dev.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| dev[((dev.len() - 1) as f64 * p).round() as usize];
    format!(
        "{} frames; inter-arrival deviation from 20 ms: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {} over 5 ms, {} over 20 ms",
        arrivals.len(),
        q(0.5),
        q(0.99),
        q(0.999),
        dev[dev.len() - 1],
        dev.iter().filter(|&&d| d > 5.0).count(),
        dev.iter().filter(|&&d| d > 20.0).count(),
    )
}

// ---- AudioSocket bad inputs -----------------------------------------------------------

fn xorshift_bytes(n: usize, seed: u32) -> Vec<u8> {
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

fn uuid(n: u32) -> [u8; 16] {
    let mut u = [0x5Au8; 16];
    u[..4].copy_from_slice(&n.to_be_bytes());
    u
}

/// Connect and send `bytes` (the peer may close at once: write errors ignored).
fn bad_conn(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect to voxd");
    let _ = s.write_all(bytes);
    s
}

/// Read until voxd closes `s` (EOF or reset); the kinds of the frames received on
/// the way, or `None` if it is still open after `limit`.
fn closed_by_voxd(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut dec = audiosocket::Decoder::new();
    let mut buf = BytesMut::new();
    let mut kinds = Vec::new();
    let mut tmp = [0u8; 8192];
    let t0 = Instant::now();
    loop {
        match s.read(&mut tmp) {
            Ok(0) => return Some(kinds),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return Some(kinds),
        }
        while let Ok(Some(f)) = dec.decode(&mut buf) {
            kinds.push(f.kind.as_u8());
        }
        if t0.elapsed() > limit {
            return None;
        }
    }
}

/// All of `conns` closed by voxd (checked in parallel groups); returns how many
/// ended with a hangup frame (kind 0x00) as their last frame.
fn all_closed(what: &str, conns: Vec<TcpStream>) -> usize {
    let handles: Vec<JoinHandle<Vec<Option<Vec<u8>>>>> = {
        let mut groups: Vec<Vec<TcpStream>> = (0..8).map(|_| Vec::new()).collect();
        for (i, c) in conns.into_iter().enumerate() {
            groups[i % 8].push(c);
        }
        groups
            .into_iter()
            .map(|g| {
                thread::spawn(move || {
                    g.into_iter()
                        .map(|mut c| closed_by_voxd(&mut c, LIMIT))
                        .collect()
                })
            })
            .collect()
    };
    let mut hangups = 0;
    for h in handles {
        for r in h.join().unwrap() {
            let kinds = r.unwrap_or_else(|| panic!("{what}: a connection voxd never closed"));
            if kinds.last() == Some(&0x00) {
                hangups += 1;
            }
        }
    }
    hangups
}

// ---- RTP bad inputs -------------------------------------------------------------------

fn rtp_packet(pt: u8, seq: u16, ssrc: u32) -> Vec<u8> {
    let h = rtp::RtpHeader::new(pt, seq, 160 * u32::from(seq), ssrc);
    let mut pkt = vec![0u8; 12 + 160];
    let n = rtp::build(&h, &[0x55; 160], &mut pkt).unwrap();
    pkt.truncate(n);
    pkt
}

/// Bad RTP of each kind (name, bytes); none of them must start a call.
fn bad_rtp() -> Vec<(&'static str, Vec<u8>)> {
    let good = rtp_packet(rtp::PT_PCMU, 7, 0xBAD);
    let mut wrong_version = good.clone();
    wrong_version[0] = (wrong_version[0] & 0x3F) | 0x40; // V=1
    let mut bad_padding = good.clone();
    bad_padding[0] |= 0x20; // P, with a padding count larger than the packet
    *bad_padding.last_mut().unwrap() = 0xFF;
    let mut padding_only = good[..12].to_vec();
    padding_only[0] |= 0x20;
    padding_only.extend_from_slice(&[0, 0, 0, 4]);
    let mut csrc_overflow = good[..16].to_vec();
    csrc_overflow[0] |= 0x0F; // 15 CSRCs announced, one present
    let mut ext_overflow = good[..16].to_vec();
    ext_overflow[0] |= 0x10; // X, extension of 0xFFFF words
    ext_overflow[14] = 0xFF;
    ext_overflow[15] = 0xFF;
    vec![
        ("truncated (5 bytes)", good[..5].to_vec()),
        ("header only", good[..12].to_vec()),
        ("wrong version", wrong_version),
        ("padding past the packet", bad_padding),
        ("padding only", padding_only),
        ("CSRC count past the packet", csrc_overflow),
        ("extension past the packet", ext_overflow),
        (
            "wrong payload type (PCMA on a PCMU port)",
            rtp_packet(rtp::PT_PCMA, 7, 0xBAD),
        ),
    ]
}

// ---- the suite ------------------------------------------------------------------------

/// One row of the summary.
struct Row {
    input: String,
    thrown: u64,
    counters: &'static [&'static str],
    delta: u64,
    /// voxd's RSS at the end of the phase.
    rss: u64,
}

/// The phases so far and the counters at the end of the last one.
struct Phases {
    rows: Vec<Row>,
    last: BTreeMap<&'static str, u64>,
}

impl Phases {
    /// Wait until the sum of `counters` moved by at least `want` since the last
    /// phase; record the row.
    fn phase(
        &mut self,
        voxd: &Voxd,
        input: &str,
        thrown: u64,
        counters: &'static [&'static str],
        want: u64,
    ) -> u64 {
        let sum = |m: &BTreeMap<&'static str, u64>| counters.iter().map(|c| m[c]).sum::<u64>();
        let base = sum(&self.last);
        let m = voxd.until(&format!("{input}: {counters:?} +{want}"), |m| {
            counters.iter().map(|c| m.get(c)).sum::<u64>() >= base + want
        });
        let now = snapshot(&m);
        let delta = sum(&now) - base;
        self.rows.push(Row {
            input: input.to_string(),
            thrown,
            counters,
            delta,
            rss: voxd.proc().rss_bytes,
        });
        self.last = now;
        delta
    }
}

const PROTOCOL: &[&str] = &["voxd_protocol_errors_total"];
const DEADLINE: &[&str] = &["voxd_audiosocket_read_timeouts_total"];

/// The two runs share the machine's cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn bad_input_is_refused_counted_and_logged_while_a_canary_call_stays_exact_epoll() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    suite("epoll");
}

#[test]
fn bad_input_is_refused_counted_and_logged_while_a_canary_call_stays_exact_io_uring() {
    use voxd::engine::io::{open, BackendChoice};
    if let Err(e) = open(BackendChoice::IoUring) {
        eprintln!("io_uring refused here ({e}): the io_uring run of the suite is skipped");
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    suite("io_uring");
}

/// Every bad input in turn, against a voxd on `backend`, while the canary runs.
fn suite(backend: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let emu = rt
        .block_on(AriEmulator::start(EmuConfig {
            default_signal: CallerSignal::Speech {
                seed: 3,
                config: SignalConfig {
                    initial_pause_ms: Some(100),
                    talk_ms: (800, 1000),
                    pause_ms: (2000, 2500),
                    ..Default::default()
                },
            },
            ..EmuConfig::default()
        }))
        .expect("emulator starts");
    let sim = rt
        .block_on(ProviderSim::start({
            let mut c = ProviderSimConfig::for_protocol(SimProtocol::OpenAi);
            c.listen = "127.0.0.1:0".parse().unwrap();
            c.api_key = Some(KEY.into());
            c.think_ms = 200;
            c.reply_ms = 1200;
            c.greeting_ms = 0;
            c.fault_after_ms = 300;
            c
        }))
        .expect("provider simulator starts");
    let voxd = Voxd::start(&emu, &sim.url(), backend);
    let m = voxd.wait_metrics();
    assert!(
        m.0.lines()
            .any(|l| l.starts_with("voxd_up{") && l.contains(&format!("io_backend=\"{backend}\""))),
        "voxd runs on {backend}"
    );
    assert!(
        rt.block_on(emu.wait_app_registered(&emu.config().app, LIMIT)),
        "voxd's ARI client connects to the emulator"
    );

    let canary = Canary::start(voxd.audiosocket);
    let t0 = Instant::now();
    while canary.samples_back() < 50 * FRAME_SAMPLES {
        assert!(t0.elapsed() < LIMIT, "the canary's echo never came back");
        thread::sleep(Duration::from_millis(20));
    }
    let before = voxd.proc();
    let start = snapshot(&voxd.wait_metrics());
    let as_addr = voxd.audiosocket;
    let mut p = Phases {
        rows: Vec::new(),
        last: start.clone(),
    };

    // 1. Random bytes: 200 connections, 64..2048 bytes each.
    let conns: Vec<TcpStream> = (0..200u32)
        .map(|i| {
            let n = 64 + (i as usize * 97) % 1985;
            let mut b = xorshift_bytes(n, 0xBAD0 + i);
            if b[0] == 0x01 {
                b[0] = 0x7E; // never a lucky UUID frame: garbage from the first byte
            }
            bad_conn(as_addr, &b)
        })
        .collect();
    all_closed("random bytes", conns);
    // (Garbage that happens to hold a plausible frame header waits for its
    // payload: the read deadline ends those.)
    p.phase(
        &voxd,
        "random bytes (64..2048 B)",
        200,
        &[
            "voxd_protocol_errors_total",
            "voxd_audiosocket_read_timeouts_total",
        ],
        200,
    );

    // 2. Oversize lengths: a 65535-byte UUID frame; a UUID then a 65535-byte audio
    //    frame (audiosocket.max_frame_bytes is 8192).
    let mut conns = Vec::new();
    for i in 0..100u32 {
        let mut b = if i % 2 == 0 {
            vec![0x01, 0xFF, 0xFF]
        } else {
            let mut v = frame(0x01, &uuid(i));
            v.extend_from_slice(&[0x12, 0xFF, 0xFF]);
            v
        };
        b.extend_from_slice(&[0x11; 64]);
        conns.push(bad_conn(as_addr, &b));
    }
    all_closed("oversize", conns);
    p.phase(
        &voxd,
        "oversize length (65535 > max_frame_bytes)",
        100,
        PROTOCOL,
        100,
    );

    // 3. Slowloris: a UUID then a stall; a partial frame then a stall; a frame
    //    trickled one byte per 100 ms (bytes keep coming, no frame completes).
    let mut conns = Vec::new();
    for i in 0..100u32 {
        conns.push(bad_conn(as_addr, &frame(0x01, &uuid(1000 + i))));
    }
    for i in 0..100u32 {
        let mut b = frame(0x01, &uuid(2000 + i));
        b.extend_from_slice(&frame(0x12, &[3u8; 640])[..200]);
        conns.push(bad_conn(as_addr, &b));
    }
    let mut trickle: Vec<TcpStream> = (0..20u32)
        .map(|i| bad_conn(as_addr, &frame(0x01, &uuid(3000 + i))))
        .collect();
    let partial = frame(0x12, &[4u8; 640]);
    let trickle_start = Instant::now();
    let mut sent_bytes = 0;
    while trickle_start.elapsed() < Duration::from_millis(3 * READ_TIMEOUT_MS) {
        for t in &mut trickle {
            let _ = t.write_all(&partial[sent_bytes..sent_bytes + 1]);
        }
        sent_bytes += 1;
        thread::sleep(Duration::from_millis(100));
    }
    conns.extend(trickle);
    let hangups = all_closed("slowloris", conns);
    assert_eq!(
        hangups, 220,
        "every slowloris connection got a hangup frame first"
    );
    p.phase(
        &voxd,
        "slowloris: UUID then stall, partial frame then stall, 1 B/100 ms trickle",
        220,
        DEADLINE,
        220,
    );

    // 4. Wrong kinds: DTMF before the UUID, a 12 kHz frame on a slin16 listener,
    //    a second UUID (all close the connection); unknown kind 0x42 and an error
    //    frame 0xFF after the UUID (ignored and counted; the deadline closes it).
    let mut conns = Vec::new();
    for i in 0..50u32 {
        conns.push(bad_conn(as_addr, &frame(0x03, b"5")));
        let mut b = frame(0x01, &uuid(4000 + i));
        b.extend(frame(0x11, &[1u8; 480]));
        conns.push(bad_conn(as_addr, &b));
        let mut b = frame(0x01, &uuid(5000 + i));
        b.extend(frame(0x01, &uuid(5000 + i)));
        conns.push(bad_conn(as_addr, &b));
    }
    all_closed("wrong kinds", conns);
    p.phase(
        &voxd,
        "wrong kinds: DTMF before UUID, slin12 on slin16, second UUID",
        150,
        PROTOCOL,
        150,
    );
    let conns: Vec<TcpStream> = (0..50u32)
        .map(|i| {
            let mut b = frame(0x01, &uuid(6000 + i));
            b.extend(frame(0x42, &[0u8; 8]));
            b.extend(frame(0xFF, &[]));
            bad_conn(as_addr, &b)
        })
        .collect();
    all_closed("unknown kinds", conns);
    p.phase(
        &voxd,
        "unknown kind 0x42 and error kind 0xFF after UUID (50 connections, then the deadline)",
        100,
        &[
            "voxd_audiosocket_ignored_frames_total",
            "voxd_audiosocket_read_timeouts_total",
        ],
        150,
    );

    // 5. 10,000 connects that send nothing, 1,000 at a time (the test's own fd
    //    limit), each closed by the read deadline.
    let fds_before = voxd.proc().fds;
    let mut fds_peak = 0;
    for batch in 0..10 {
        let conns: Vec<TcpStream> = (0..1000)
            .map(|_| TcpStream::connect(as_addr).expect("connect"))
            .collect();
        if batch == 0 {
            // All accepted and waiting for their UUID: none holds a call slot (the
            // canary is the only call).
            let m = voxd.until("1,000 silent connections accepted", |m| {
                m.get("ai_agent_audiosocket_active_connections") >= 1001
            });
            assert_eq!(
                m.get("voxd_shard_calls"),
                1,
                "connections without a UUID took call slots"
            );
            fds_peak = voxd.proc().fds;
        }
        all_closed("silent connects", conns);
    }
    p.phase(
        &voxd,
        "connects that send nothing (10 x 1,000)",
        10_000,
        DEADLINE,
        10_000,
    );
    let t0 = Instant::now();
    while voxd.proc().fds > fds_before + 4 {
        assert!(
            t0.elapsed() < LIMIT,
            "voxd's fds did not come back down ({} before, {} now)",
            fds_before,
            voxd.proc().fds
        );
        thread::sleep(Duration::from_millis(100));
    }
    let fds_after = voxd.proc().fds;

    // 6. Bad RTP, 200 packets of each kind, each kind from its own socket; and
    //    valid PCMU from a source outside the allowlist (127.0.0.2).
    let bad = bad_rtp();
    let socks: Vec<UdpSocket> = bad
        .iter()
        .map(|(_, pkt)| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            for n in 0..200 {
                s.send_to(pkt, voxd.rtp).unwrap();
                if n % 50 == 49 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            s
        })
        .collect();
    let thrown = 200 * bad.len() as u64;
    p.phase(
        &voxd,
        &format!(
            "RTP: {}",
            bad.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ),
        thrown,
        &["voxd_rtp_dropped_packets_total"],
        thrown,
    );
    let foreign = UdpSocket::bind("127.0.0.2:0").unwrap();
    for seq in 0..200u16 {
        foreign
            .send_to(&rtp_packet(rtp::PT_PCMU, seq, 0xF0E), voxd.rtp)
            .unwrap();
        if seq % 50 == 49 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    p.phase(
        &voxd,
        "RTP from a foreign source (127.0.0.2)",
        200,
        &["voxd_refused_calls_total"],
        200,
    );
    let mut buf = [0u8; 2048];
    for s in socks.iter().chain(std::iter::once(&foreign)) {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(s.recv_from(&mut buf).is_err(), "voxd answered bad RTP");
    }

    // 7. An RTP flood from one source: 20,000 valid packets as fast as the socket
    //    goes. The cap lets through a burst of MAX_PPS and MAX_PPS a second.
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    const RTP_IN: &str = "voxd_rtp_packets_total{direction=\"in\"}";
    let in_before = p.last[RTP_IN];
    let flood_start = Instant::now();
    for seq in 0..20_000u32 {
        let _ = flood.send_to(&rtp_packet(rtp::PT_PCMU, seq as u16, 0xF1D), voxd.rtp);
        if seq % 1000 == 999 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let flood_secs = flood_start.elapsed().as_secs_f64();
    // Wait until voxd has read all of it (the count stops moving).
    let mut seen = voxd.wait_metrics().get(RTP_IN);
    loop {
        thread::sleep(Duration::from_millis(600));
        let now = voxd.wait_metrics().get(RTP_IN);
        if now == seen {
            break;
        }
        seen = now;
    }
    let limited = p.phase(
        &voxd,
        "RTP flood from one source (20,000 packets)",
        20_000,
        &["voxd_rtp_rate_limited_packets_total"],
        1,
    );
    let flood_in = p.last[RTP_IN] - in_before;
    assert!(
        limited + 2 * MAX_PPS + (MAX_PPS as f64 * (flood_secs + 2.0)) as u64 >= flood_in,
        "the cap let through {} of {flood_in} packets received in {flood_secs:.2} s",
        flood_in - limited
    );

    // 8. ARI event frames with missing fields or broken JSON, 10 of each.
    let app = emu.config().app.clone();
    let events = [
        r#"{"type":"StasisStart"}"#,
        r#"{"type":"StasisStart","application":"x","channel":{}}"#,
        r#"{"type":"StasisEnd","channel":{"name":"PJSIP/1"}}"#,
        r#"{"type":"ChannelDtmfReceived"}"#,
        r#"{"type":"ChannelDestroyed"}"#,
        r#"{"channel":{"id":"1.1"}}"#,
        r#"{"type":"StasisStart","channel":{"id":"1.1""#,
        r#"[1,2,3]"#,
        r#"{"type":42}"#,
    ];
    for e in events {
        assert!(
            voxd::ari::events::parse_event(e.as_bytes()).is_err(),
            "a bad event the parser takes: {e}"
        );
    }
    for _ in 0..10 {
        for e in events {
            assert_eq!(emu.send_raw_text(&app, e), 1, "voxd's events socket got it");
        }
    }
    let n = 10 * events.len() as u64;
    p.phase(
        &voxd,
        "ARI events with missing fields / broken JSON",
        n,
        &["voxd_ari_bad_events_total"],
        n,
    );
    let m = voxd.wait_metrics();
    assert_eq!(
        m.get("voxd_ari_connected"),
        1,
        "the ARI connection stayed up"
    );
    assert_eq!(
        m.get("voxd_ari_reconnects_total"),
        0,
        "and was never replaced"
    );

    // 9. Provider frames: malformed JSON, an 8 MiB message, a message that never
    //    completes (read_timeout_ms: 600). Each call gets the failure policy: one
    //    reconnect, then the prompt and a hang-up.
    for (fault, name) in [
        (Fault::MalformedJson, "provider: malformed JSON"),
        (Fault::Oversize, "provider: 8 MiB message (limit 4 MiB)"),
        (
            Fault::EndlessMessage,
            "provider: a message that never completes",
        ),
    ] {
        sim.set_fault(Some(fault));
        let id = emu
            .place_call(CallSpec {
                provider: Some("openai_realtime".into()),
                ..CallSpec::default()
            })
            .expect("call placed");
        let t0 = Instant::now();
        while emu.channel_json(&id).is_some() || emu.counters().live_channels > 0 {
            assert!(t0.elapsed() < LIMIT, "{name}: the caller was never hung up");
            thread::sleep(Duration::from_millis(50));
        }
        assert!(
            emu.requests()
                .iter()
                .any(|r| r.path == format!("/ari/channels/{id}/play")),
            "{name}: the failure prompt played"
        );
        p.phase(&voxd, name, 1, &["voxd_provider_errors_total"], 2);
    }
    sim.set_fault(None);

    // The canary: bit-exact, never closed, its timing printed.
    thread::sleep(Duration::from_millis(500));
    let report = canary.finish();
    let after = voxd.proc();
    let end = snapshot(&voxd.wait_metrics());
    let log = voxd.log_text();

    println!();
    println!("bad-input suite ({backend}): what was thrown at voxd while one canary call ran");
    println!("| bad input | thrown | counter | counter moved by | voxd RSS after |");
    println!("|---|---:|---|---:|---:|");
    for r in &p.rows {
        let names: Vec<String> = r.counters.iter().map(|c| format!("`{c}`")).collect();
        println!(
            "| {} | {} | {} | {} | {:.1} MiB |",
            r.input,
            r.thrown,
            names.join(" + "),
            r.delta,
            r.rss as f64 / 1048576.0
        );
    }
    println!(
        "total bad inputs thrown: {}",
        p.rows.iter().map(|r| r.thrown).sum::<u64>()
    );
    println!();
    println!("counters over the whole suite:");
    for n in WATCHED {
        println!("  {n}: {} -> {} (+{})", start[n], end[n], end[n] - start[n]);
    }
    println!(
        "canary: {} frames sent, {} samples echoed, bit-exact: {}; {}",
        report.frames_sent,
        report.samples_back,
        report.exact,
        timing_line(&report.arrivals)
    );
    println!(
        "voxd fds: {} before the 10,000 connects, {} with the first 1,000 up, {} after",
        fds_before, fds_peak, fds_after
    );
    println!(
        "voxd RSS: {:.1} MiB before, {:.1} MiB after ({:+.1} MiB; bound {} MiB)",
        before.rss_bytes as f64 / 1048576.0,
        after.rss_bytes as f64 / 1048576.0,
        (after.rss_bytes as f64 - before.rss_bytes as f64) / 1048576.0,
        RSS_BOUND >> 20
    );
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    for needle in [
        "AudioSocket protocol error",
        "AudioSocket read deadline passed",
        "AudioSocket frame ignored",
        "RTP packet dropped",
        "RTP source over its rate cap",
        "bad ARI event skipped",
        "provider session failed",
        "malformed event",
        "message over the size limit",
        "provider read deadline passed",
    ] {
        println!("log lines \"{needle}\": {}", lines(needle));
    }

    assert!(report.exact, "the canary's audio came back bit-exact");
    assert!(report.frames_sent > 500, "the canary ran through the suite");
    assert!(
        after.rss_bytes < before.rss_bytes + RSS_BOUND,
        "voxd's RSS grew by more than {} MiB",
        RSS_BOUND >> 20
    );
    for needle in [
        "AudioSocket protocol error",
        "AudioSocket read deadline passed",
        "AudioSocket frame ignored",
        "RTP packet dropped",
        "RTP source over its rate cap",
        "bad ARI event skipped",
        "provider session failed",
        "malformed event",
        "message over the size limit",
        "provider read deadline passed",
    ] {
        assert!(lines(needle) > 0, "no log line \"{needle}\"");
    }
    // Repeated bad input is logged at most about once a second per shard and kind.
    for (needle, counter) in [
        (
            "AudioSocket read deadline passed",
            "voxd_audiosocket_read_timeouts_total",
        ),
        ("AudioSocket protocol error", "voxd_protocol_errors_total"),
        ("RTP packet dropped", "voxd_rtp_dropped_packets_total"),
    ] {
        let n = lines(needle) as u64;
        assert!(
            n < (end[counter] - start[counter]) / 4,
            "{n} lines \"{needle}\" for +{} {counter}: not rate-limited",
            end[counter] - start[counter]
        );
    }
    let dir = voxd.log.parent().map(PathBuf::from);
    drop(voxd);
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    rt.block_on(async {
        sim.stop().await;
        emu.stop().await;
    });
}
