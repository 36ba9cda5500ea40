//! The load generator's socket driver: runs many emulated Asterisk calls against a
//! running voxd on real 20 ms pacing and collects their measurements.
//!
//! Owns: the per-thread driver loop (one [`AnyBackend`](crate::engine::io::AnyBackend)
//! in edge-triggered mode, one [`TimerWheel`] keyed by call slot for every call's
//! 20 ms tick, non-blocking sockets: one TCP connection per AudioSocket call, one
//! connected UDP socket per RTP call), the ramp (`rate` calls/s), call churn
//! (exponential hold times from a seeded PRNG), the measured window and its `/proc`
//! samples of voxd and of the load generator itself, the progress line, and the
//! [`Outcome`] (report, table, JSON).
//!
//! Must not: start a thread or task per call, sleep anywhere but in the backend wait
//! or the paced loop's sleep to the next tick (`tick_ms`; on the coordinating thread,
//! in the channel wait), busy-wait for sub-ms
//! precision (pacing uses the ms wheel), or parse/build protocol bytes itself (that
//! is [`Caller`]'s job). Setup errors (nothing listening, bad arguments) are
//! returned as [`DriverError`]; a call that fails later is counted, not fatal.

use std::io::{self, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::Serialize;

use super::caller::{Caller, CallerConfig, CallerError, Transport};
use super::procstat::{ProcSample, ProcSummary};
use super::rxstamp::{self, StampClock, StampedUdp};
use super::signal::{CallerSource, SignalConfig, SpeechSignal, WavLoop};
use super::stats::{Aggregate, CallStats, Report};
use crate::engine::io::{self as eio, AnyBackend, Backend, BackendChoice, Events, Interest};
use crate::engine::timer::TimerWheel;

/// Most unsent AudioSocket bytes kept for one call (about 1 s of slin16) before
/// frames are dropped and counted as send stalls.
pub const PENDING_MAX: usize = 32 * 1024;
/// Calls keep running this long after the measured window ends, so that the final
/// `/proc` samples are taken with every call still up.
pub const END_GRACE_US: u64 = 100_000;
/// The steady window starts this long after the ramp ([`super::stats::StatsConfig::steady_from_us`]).
pub const STEADY_AFTER_RAMP_US: u64 = 1_000_000;
/// Refused sends/receives (ICMP port unreachable) with no frame ever received that
/// make a thread give up: nothing is listening.
const REFUSED_LIMIT: u64 = 3;
/// Readiness events per wait.
const EVENTS_PER_WAIT: usize = 1024;
/// Longest backend wait, so that an abort is noticed.
const MAX_WAIT_MS: u64 = 100;
/// How often a driver thread in ARI mode looks for new legs when idle (ms).
const LEG_POLL_MS: u64 = 5;
/// Timeout of one blocking TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Transport and format of every call.
    pub transport: Transport,
    /// voxd's AudioSocket (TCP) or RTP (UDP) address.
    pub target: SocketAddr,
    /// Concurrent calls.
    pub calls: usize,
    /// Calls started per second during the ramp.
    pub rate: f64,
    /// Length of the measured window (after the ramp), seconds.
    pub seconds: f64,
    /// Mean call length in ms (exponential); `None`: calls last until the end.
    pub hold_ms: Option<u64>,
    /// Seed of every PRNG (signals, UUIDs, SSRCs, hold times).
    pub seed: u64,
    /// The simulated agent's think time, subtracted from turn latency.
    pub think_ms: u32,
    /// Driver threads (each runs its own loop over its share of the calls).
    pub threads: usize,
    /// A clip each caller loops (at the transport's rate) instead of the synthetic
    /// speech signal.
    pub wav: Option<Arc<[i16]>>,
    /// Knobs of the synthetic speech signal (ignored with `wav`).
    pub signal: SignalConfig,
    /// voxd's process id, sampled from `/proc` over the measured window.
    pub pid: Option<u32>,
    /// Print a progress line on stderr every second.
    pub progress: bool,
    /// Loop pacing while calls are up, as in voxd's shards: sleep to the next
    /// `tick_ms` boundary, then read every socket that has data, fire the due timers
    /// and send, in one pass (0: wake on every readiness event). Arrival times come
    /// from the kernel's receive stamps either way ([`super::rxstamp`]).
    pub tick_ms: u32,
}

impl DriverConfig {
    /// The transport's name as on the command line.
    pub fn transport_name(&self) -> &'static str {
        match self.transport {
            Transport::AudioSocket(_) => "audiosocket (tcp)",
            Transport::Rtp(_) => "rtp (udp)",
        }
    }

    /// Seconds the ramp takes (`calls / rate`).
    pub fn ramp_seconds(&self) -> f64 {
        self.calls as f64 / self.rate
    }
}

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// voxd cannot be reached.
    #[error("cannot reach voxd over {transport} at {addr}: {reason} (is `voxd serve` running with that port and transport?)")]
    Connect {
        /// Transport name.
        transport: &'static str,
        /// Address tried.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// Arguments or local resources are wrong (bad numbers, WAV rate, /proc, fds).
    #[error("{0}")]
    Setup(String),
}

/// Counters of the driver itself (not of voxd's media).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DriverCounters {
    /// Calls started (connected / socket opened), churn included.
    pub calls_started: u64,
    /// Calls ended by hold-time churn.
    pub calls_churned: u64,
    /// Connects that failed after the first call was up.
    pub connect_failures: u64,
    /// Calls voxd ended (AudioSocket EOF or hangup frame).
    pub closed_by_voxd: u64,
    /// Calls ended by a socket error or a broken AudioSocket stream.
    pub call_errors: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Frames received and measured.
    pub frames_in: u64,
    /// Frames not sent because the socket was full (loadgen-side stall).
    pub send_stalls: u64,
    /// UDP sends/receives refused (ICMP port unreachable).
    pub refused: u64,
}

impl DriverCounters {
    fn add(&mut self, o: &DriverCounters) {
        self.calls_started += o.calls_started;
        self.calls_churned += o.calls_churned;
        self.connect_failures += o.connect_failures;
        self.closed_by_voxd += o.closed_by_voxd;
        self.call_errors += o.call_errors;
        self.frames_out += o.frames_out;
        self.frames_in += o.frames_in;
        self.send_stalls += o.send_stalls;
        self.refused += o.refused;
    }
}

/// Progress of one driver thread, published once per loop turn.
#[derive(Debug, Default)]
struct ThreadProgress {
    calls_up: AtomicU64,
    frames_out: AtomicU64,
    frames_in: AtomicU64,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Media measurements of every call, with voxd's process summary.
    pub report: Report,
    /// Driver counters.
    pub counters: DriverCounters,
    /// Calls that received no frame at all.
    pub calls_without_frames: u64,
    /// The load generator's own CPU and memory over the measured window.
    pub loadgen: Option<ProcSummary>,
    /// Transport name.
    pub transport: &'static str,
    /// voxd's address.
    pub target: SocketAddr,
    /// Concurrent calls asked for.
    pub calls: usize,
    /// Driver threads.
    pub threads: usize,
    /// Ramp length, seconds.
    pub ramp_seconds: f64,
    /// Measured window, seconds (as sampled).
    pub window_seconds: f64,
}

impl Outcome {
    /// The report as pretty JSON: [`Report::to_json`] plus a `loadgen` object.
    pub fn to_json(&self) -> String {
        let mut v: serde_json::Value =
            serde_json::from_str(&self.report.to_json()).expect("report JSON parses");
        let lg = serde_json::json!({
            "transport": self.transport,
            "target": self.target.to_string(),
            "calls": self.calls,
            "threads": self.threads,
            "ramp_seconds": self.ramp_seconds,
            "window_seconds": self.window_seconds,
            "calls_without_frames": self.calls_without_frames,
            "counters": self.counters,
            "process": self.loadgen,
        });
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("loadgen".into(), lg);
        }
        serde_json::to_string_pretty(&v).expect("JSON serialises")
    }

    /// The human summary: [`Report::to_table`] plus the driver's own lines.
    pub fn to_table(&self) -> String {
        let c = &self.counters;
        let mut s = format!(
            "loadgen: {} calls over {} to {}, ramp {:.1} s, window {:.1} s, {} thread(s)\n",
            self.calls,
            self.transport,
            self.target,
            self.ramp_seconds,
            self.window_seconds,
            self.threads
        );
        s.push_str(&self.report.to_table());
        s.push_str(&format!(
            "loadgen: calls started {} (churned {}), connect failures {}, closed by voxd {}, \
             call errors {}, send stalls {}, refused {}, calls without frames {}\n",
            c.calls_started,
            c.calls_churned,
            c.connect_failures,
            c.closed_by_voxd,
            c.call_errors,
            c.send_stalls,
            c.refused,
            self.calls_without_frames
        ));
        if let Some(p) = &self.loadgen {
            s.push_str(&format!(
                "loadgen cpu {:.1} us/call-second ({:.2} cores), rss {:.1} MiB\n",
                p.cpu_us_per_call_second,
                p.cores_busy,
                p.after.rss_bytes as f64 / 1_048_576.0
            ));
        }
        s
    }
}

/// Runs the load: ramps up, holds for the window, closes every call, reports.
pub fn run(cfg: &DriverConfig) -> Result<Outcome, DriverError> {
    run_with_legs(cfg, Vec::new())
}

/// [`run`], with the calls' media set up elsewhere: each thread takes legs from its
/// receiver (`legs.len()` threads) instead of dialling voxd itself. Used by
/// `voxd loadgen --via ari`, where the ARI emulator hands over the legs voxd
/// originates.
pub fn run_with_legs(cfg: &DriverConfig, legs: Vec<LegReceiver>) -> Result<Outcome, DriverError> {
    validate(cfg)?;
    // As in the engine: no multi-millisecond huge page faults in the measuring loop.
    let _ = eio::disable_huge_pages();
    if let Some(pid) = cfg.pid {
        ProcSample::read(pid).map_err(|e| {
            DriverError::Setup(format!("cannot read /proc/{pid} (voxd's --pid): {e}"))
        })?;
    }
    let threads = if legs.is_empty() {
        cfg.threads.clamp(1, cfg.calls)
    } else {
        legs.len()
    };
    let mut legs = legs.into_iter();
    let cfg = Arc::new(cfg.clone());
    let ramp_us = (cfg.ramp_seconds() * 1e6) as u64;
    let window_start_us = ramp_us;
    let end_us = ramp_us + (cfg.seconds * 1e6) as u64;
    let abort = Arc::new(AtomicBool::new(false));
    // One message per ended call; room for every call at once, so the end of the
    // run (all calls end together) never blocks a driver thread.
    let (tx, rx) = mpsc::sync_channel::<CallStats>(cfg.calls.max(1));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(threads);
    let mut progress = Vec::with_capacity(threads);
    for idx in 0..threads {
        let p = Arc::new(ThreadProgress::default());
        progress.push(p.clone());
        let ctx = ThreadCtx {
            idx,
            threads,
            cfg: cfg.clone(),
            t0,
            end_us: end_us + END_GRACE_US,
            progress: p,
            tx: tx.clone(),
            abort: abort.clone(),
            legs: legs.next(),
        };
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{idx}"))
            .spawn(move || Worker::new(ctx).and_then(Worker::run))
            .map_err(|e| DriverError::Setup(format!("cannot start a driver thread: {e}")))?;
        handles.push(h);
    }
    drop(tx);

    let mut agg = Aggregate::new();
    let mut calls_without_frames = 0u64;
    let mut merge = |s: CallStats, agg: &mut Aggregate| {
        calls_without_frames += u64::from(s.counts().frames_received == 0);
        agg.merge(&s);
    };
    let mut before: Option<(ProcSample, Option<ProcSample>, u64)> = None;
    let mut after: Option<(ProcSample, Option<ProcSample>, u64)> = None;
    let sample = |now: u64| {
        let me = ProcSample::read_self().unwrap_or_default();
        let voxd = cfg.pid.and_then(|p| ProcSample::read(p).ok());
        (me, voxd, now)
    };
    let mut ticker = Ticker::new(cfg.pid, end_us as f64 / 1e6, cfg.progress);
    let mut next_progress_us = 1_000_000u64;
    loop {
        let now = elapsed_us(t0);
        if before.is_none() && now >= window_start_us {
            before = Some(sample(now));
        }
        if after.is_none() && now >= end_us {
            after = Some(sample(now));
        }
        if now >= next_progress_us {
            if cfg.progress && after.is_none() {
                ticker.print(now, cfg.calls, &progress);
            }
            next_progress_us += 1_000_000;
        }
        let mut next = next_progress_us;
        if before.is_none() {
            next = next.min(window_start_us);
        }
        if after.is_none() {
            next = next.min(end_us);
        }
        let wait = Duration::from_micros(next.saturating_sub(now).max(1));
        match rx.recv_timeout(wait) {
            Ok(s) => merge(s, &mut agg),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    ticker.finish();
    let mut counters = DriverCounters::default();
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(c)) => counters.add(&c),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(DriverError::Setup("a driver thread panicked".into()));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }

    let mut report = agg.report(cfg.think_ms);
    let mut loadgen = None;
    let mut window_seconds = 0.0;
    if let (Some((me0, vx0, t_a)), Some((me1, vx1, t_b))) = (before, after) {
        window_seconds = (t_b - t_a) as f64 / 1e6;
        let calls = cfg.calls as u64;
        if let (Some(a), Some(b)) = (vx0, vx1) {
            report.process = Some(ProcSummary::new(a, b, calls, window_seconds));
        }
        loadgen = Some(ProcSummary::new(me0, me1, calls, window_seconds));
    }
    Ok(Outcome {
        report,
        counters,
        calls_without_frames,
        loadgen,
        transport: cfg.transport_name(),
        target: cfg.target,
        calls: cfg.calls,
        threads,
        ramp_seconds: ramp_us as f64 / 1e6,
        window_seconds,
    })
}

fn validate(cfg: &DriverConfig) -> Result<(), DriverError> {
    let bad = |m: &str| Err(DriverError::Setup(m.to_string()));
    if cfg.calls == 0 {
        return bad("--calls must be at least 1");
    }
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        return bad("--rate must be a positive number of calls per second");
    }
    if !(cfg.seconds.is_finite() && cfg.seconds > 0.0) {
        return bad("--seconds must be positive");
    }
    if cfg.hold_ms == Some(0) {
        return bad("--hold must be at least 1 ms");
    }
    if cfg.calls > u32::MAX as usize / 2 {
        return bad("--calls is too large");
    }
    if let Some(clip) = &cfg.wav {
        if clip.is_empty() {
            return bad("the WAV file has no samples");
        }
    }
    Ok(())
}

/// The progress display's state: previous CPU samples for the per-second CPU
/// shares, and the progress bar (on a terminal; elsewhere one line per second).
struct Ticker {
    pid: Option<u32>,
    prev: Option<(u64, Option<ProcSample>, ProcSample)>,
    bar: Option<indicatif::ProgressBar>,
}

impl Ticker {
    /// `total_s`: ramp plus window, the bar's length. `show`: draw at all.
    fn new(pid: Option<u32>, total_s: f64, show: bool) -> Self {
        let bar = show
            .then(|| {
                let bar = indicatif::ProgressBar::with_draw_target(
                    Some((total_s * 10.0).ceil() as u64),
                    indicatif::ProgressDrawTarget::stderr_with_hz(2),
                );
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{elapsed:>4} [{bar:24}] {percent:>3}% {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar
            })
            .filter(|b| !b.is_hidden());
        Ticker {
            pid,
            prev: None,
            bar,
        }
    }

    /// Remove the bar before the summary is printed.
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    fn print(&mut self, now_us: u64, calls: usize, progress: &[Arc<ThreadProgress>]) {
        let (mut up, mut out, mut inn) = (0, 0, 0);
        for p in progress {
            up += p.calls_up.load(Ordering::Relaxed);
            out += p.frames_out.load(Ordering::Relaxed);
            inn += p.frames_in.load(Ordering::Relaxed);
        }
        let voxd = self.pid.and_then(|p| ProcSample::read(p).ok());
        let me = ProcSample::read_self().unwrap_or_default();
        let tps = super::procstat::clock_ticks_per_second().max(1) as f64;
        let mut line = format!("calls {up}/{calls}  frames out {out} in {inn}");
        if let Some((t, pv, pm)) = &self.prev {
            let dt = (now_us - t) as f64 / 1e6;
            if dt > 0.0 {
                if let (Some(a), Some(b)) = (pv, &voxd) {
                    let cpu = b.cpu_ticks().saturating_sub(a.cpu_ticks()) as f64 / tps / dt;
                    line.push_str(&format!(
                        "  voxd cpu {:.0}% rss {:.1} MiB",
                        cpu * 100.0,
                        b.rss_bytes as f64 / 1_048_576.0
                    ));
                }
                let cpu = me.cpu_ticks().saturating_sub(pm.cpu_ticks()) as f64 / tps / dt;
                line.push_str(&format!("  loadgen cpu {:.0}%", cpu * 100.0));
            }
        }
        match &self.bar {
            Some(b) => {
                b.set_position(now_us / 100_000);
                b.set_message(line);
            }
            None => eprintln!("[{:>6.1}s] {line}", now_us as f64 / 1e6),
        }
        self.prev = Some((now_us, voxd, me));
    }
}

fn elapsed_us(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// splitmix64 step.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An exponentially distributed hold time with mean `mean_ms`, in microseconds,
/// from the 64-bit random `r` (at least one frame).
pub fn exp_hold_us(mean_ms: u64, r: u64) -> u64 {
    // u in (0, 1]: never ln(0).
    let u = ((r >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let us = -(mean_ms as f64 * 1_000.0) * u.ln();
    (us as u64).max(super::stats::FRAME_US)
}

/// A call whose media socket someone else set up (the ARI emulator, when voxd
/// originated the leg): the worker plays the caller on it and measures it like its
/// own calls. `on_end(closed_by_voxd)` runs when the call ends.
pub struct ExternalLeg {
    /// The connected AudioSocket stream, or the RTP socket connected to voxd.
    pub conn: LegConn,
    /// The AudioSocket UUID voxd put in the dial string (sent in the first frame).
    pub uuid: [u8; 16],
    /// Called once when the call ends; `true` when voxd ended it.
    pub on_end: Box<dyn FnOnce(bool) + Send>,
}

impl std::fmt::Debug for ExternalLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalLeg")
            .field("fd", &self.conn.fd())
            .finish()
    }
}

/// Where external legs reach the driver threads (one receiver per thread).
pub type LegReceiver = mpsc::Receiver<ExternalLeg>;

struct ThreadCtx {
    idx: usize,
    threads: usize,
    cfg: Arc<DriverConfig>,
    t0: Instant,
    end_us: u64,
    progress: Arc<ThreadProgress>,
    tx: mpsc::SyncSender<CallStats>,
    abort: Arc<AtomicBool>,
    /// External legs for this thread (ARI mode): no ramp of its own.
    legs: Option<LegReceiver>,
}

/// A call's media socket (non-blocking).
#[derive(Debug)]
pub enum LegConn {
    /// AudioSocket over TCP.
    Tcp(TcpStream),
    /// RTP over UDP (connected to voxd's address).
    Udp(UdpSocket),
}

use LegConn as Conn;

impl LegConn {
    fn fd(&self) -> RawFd {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Udp(s) => s.as_raw_fd(),
        }
    }
}

struct Slot {
    caller: Caller,
    conn: Conn,
    hangup_at_us: u64,
    pending: BytesMut,
    on_end: Option<Box<dyn FnOnce(bool) + Send>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EndReason {
    /// Hold time over or end of run: send a hangup frame.
    Ours,
    /// voxd closed or hung up.
    Voxd,
    /// Socket error or broken stream.
    Error,
}

/// One driver thread: its share of the calls, one backend, one wheel.
struct Worker {
    ctx: ThreadCtx,
    backend: AnyBackend,
    wheel: TimerWheel,
    slots: Vec<Option<Slot>>,
    /// Slots ended by churn, to be restarted next turn.
    restart: Vec<u32>,
    /// Next slot of the ramp.
    next_ramp: usize,
    rng: u64,
    generation: u64,
    counters: DriverCounters,
    calls_up: u64,
    rbuf: Vec<u8>,
    /// Datagrams of one RTP leg per `recvmmsg`, with their kernel stamps: a short
    /// batch means the socket is empty, so a frame costs one call instead of a
    /// receive plus an `EAGAIN`.
    ubatch: StampedUdp,
    /// This turn's pairing of the driver clock with the kernel's stamp clock.
    stamps: StampClock,
}

impl Worker {
    fn new(ctx: ThreadCtx) -> Result<Self, DriverError> {
        let n = (ctx.cfg.calls - ctx.idx).div_ceil(ctx.threads);
        let (backend, _) = eio::open(BackendChoice::Epoll)
            .map_err(|e| DriverError::Setup(format!("cannot open epoll: {e}")))?;
        let rng = mix(ctx.cfg.seed ^ mix(ctx.idx as u64 + 1));
        Ok(Worker {
            backend,
            wheel: TimerWheel::new(0, n.max(1)),
            slots: (0..n).map(|_| None).collect(),
            restart: Vec::with_capacity(n),
            next_ramp: 0,
            rng,
            generation: 0,
            counters: DriverCounters::default(),
            calls_up: 0,
            rbuf: vec![0; 64 * 1024],
            ubatch: StampedUdp::new(),
            stamps: StampClock::at(0),
            ctx,
        })
    }

    /// When the ramp starts slot `k` (global call `idx + k * threads`).
    fn ramp_us(&self, k: usize) -> u64 {
        let j = self.ctx.idx + k * self.ctx.threads;
        (j as f64 * 1e6 / self.ctx.cfg.rate) as u64
    }

    fn run(mut self) -> Result<DriverCounters, DriverError> {
        let r = self.run_loop();
        if r.is_err() {
            self.ctx.abort.store(true, Ordering::Relaxed);
        }
        for k in 0..self.slots.len() {
            self.end_call(k, EndReason::Ours);
        }
        self.publish();
        r.map(|()| self.counters)
    }

    fn run_loop(&mut self) -> Result<(), DriverError> {
        let mut events = Events::with_capacity(EVENTS_PER_WAIT);
        let mut due: Vec<u32> = Vec::with_capacity(self.slots.len());
        let mut full = false;
        loop {
            let now_us = elapsed_us(self.ctx.t0);
            if now_us >= self.ctx.end_us || self.ctx.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.take_legs(now_us)?;
            while self.ctx.legs.is_none()
                && self.next_ramp < self.slots.len()
                && self.ramp_us(self.next_ramp) <= now_us
            {
                self.start_call(self.next_ramp, now_us)?;
                self.next_ramp += 1;
            }
            while let Some(k) = self.restart.pop() {
                self.start_call(k as usize, now_us)?;
            }
            self.publish();

            let now_ms = now_us / 1_000;
            let mut next_ms = self.ctx.end_us.div_ceil(1_000).min(now_ms + MAX_WAIT_MS);
            if let Some(d) = self.wheel.next_deadline() {
                next_ms = next_ms.min(d);
            }
            if self.ctx.legs.is_some() {
                // Legs arrive on a channel: look at it every few ms.
                next_ms = next_ms.min(now_ms + LEG_POLL_MS);
            } else if self.next_ramp < self.slots.len() {
                next_ms = next_ms.min(self.ramp_us(self.next_ramp).div_ceil(1_000));
            }
            let paced = self.ctx.cfg.tick_ms > 0 && self.calls_up > 0;
            let timeout = if full {
                0
            } else if paced {
                // As voxd's shards: one pass per tick, so a burst of arriving frames
                // costs one wake-up instead of one per readiness event.
                eio::sleep_to_next_tick(u64::from(self.ctx.cfg.tick_ms));
                0
            } else {
                u32::try_from(next_ms.saturating_sub(now_ms)).unwrap_or(u32::MAX)
            };
            self.backend
                .wait(Some(timeout), &mut events)
                .map_err(|e| DriverError::Setup(format!("epoll wait failed: {e}")))?;
            full = events.len() >= events.capacity();

            // One clock read per turn, as in the engine's shard loop; received frames
            // are dated by their kernel stamps against it.
            let now_us = elapsed_us(self.ctx.t0);
            self.stamps = StampClock::at(now_us);
            for i in 0..events.len() {
                let ev = events.as_slice()[i];
                let k = ev.token as usize;
                if ev.writable {
                    self.flush(k);
                }
                if ev.readable || ev.hup || ev.error {
                    self.read(k, ev.hup || ev.error)?;
                }
            }
            due.clear();
            self.wheel.expire(now_us / 1_000, &mut due);
            for &k in &due {
                self.tick(k as usize, now_us)?;
            }
        }
    }

    fn publish(&self) {
        let p = &self.ctx.progress;
        p.calls_up.store(self.calls_up, Ordering::Relaxed);
        p.frames_out
            .store(self.counters.frames_out, Ordering::Relaxed);
        p.frames_in
            .store(self.counters.frames_in, Ordering::Relaxed);
    }

    fn connect_error(&self, reason: String) -> DriverError {
        DriverError::Connect {
            transport: self.ctx.cfg.transport_name(),
            addr: self.ctx.cfg.target,
            reason,
        }
    }

    /// ARI mode: start a call for every leg waiting (slots are taken as free).
    fn take_legs(&mut self, now_us: u64) -> Result<(), DriverError> {
        let Some(rx) = self.ctx.legs.as_ref() else {
            return Ok(());
        };
        let mut got = Vec::new();
        while let Ok(leg) = rx.try_recv() {
            got.push(leg);
        }
        for leg in got {
            match self.slots.iter().position(Option::is_none) {
                Some(k) => self.start_call_on(k, now_us, Some(leg))?,
                None => {
                    // More legs than --calls: voxd or the emulator misbehaves.
                    self.counters.refused += 1;
                    (leg.on_end)(false);
                }
            }
        }
        Ok(())
    }

    fn start_call(&mut self, k: usize, now_us: u64) -> Result<(), DriverError> {
        self.start_call_on(k, now_us, None)
    }

    fn start_call_on(
        &mut self,
        k: usize,
        now_us: u64,
        leg: Option<ExternalLeg>,
    ) -> Result<(), DriverError> {
        let cfg = self.ctx.cfg.clone();
        self.generation += 1;
        let j = (self.ctx.idx + k * self.ctx.threads) as u64;
        let seed = mix(cfg.seed ^ mix(j) ^ mix(self.generation << 32));
        let rate = cfg.transport.rate();
        let source = match &cfg.wav {
            Some(clip) => {
                let offset = (seed % clip.len() as u64) as usize;
                let w = WavLoop::new(clip.clone(), rate, offset)
                    .ok_or_else(|| DriverError::Setup("the WAV clip is empty".into()))?;
                CallerSource::Wav(w)
            }
            None => CallerSource::Speech(SpeechSignal::with_config(seed, rate, cfg.signal)),
        };
        let mut ccfg = CallerConfig::new(cfg.transport, seed);
        // The steady window: from one second after the ramp (every call up and past
        // its set-up) to the end.
        ccfg.stats.steady_from_us = Some((cfg.ramp_seconds() * 1e6) as u64 + STEADY_AFTER_RAMP_US);
        let (leg_conn, on_end) = match leg {
            Some(l) => {
                ccfg.uuid = l.uuid;
                (Some(l.conn), Some(l.on_end))
            }
            None => (None, None),
        };
        let caller =
            Caller::new(ccfg, source, now_us).map_err(|e| DriverError::Setup(e.to_string()))?;
        let opened = match leg_conn {
            Some(c) => Ok(c),
            None => self.open(&cfg),
        };
        let conn = match opened {
            Ok(c) => c,
            Err(e) => {
                if self.counters.calls_started == 0 {
                    return Err(self.connect_error(e.to_string()));
                }
                if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE)
                {
                    return Err(DriverError::Setup(format!(
                        "out of file descriptors after {} calls: raise `ulimit -n`",
                        self.calls_up
                    )));
                }
                self.counters.connect_failures += 1;
                return Ok(());
            }
        };
        // Without stamps (an old kernel) frames are dated when read: still correct,
        // only quantised to the loop's tick.
        let _ = rxstamp::enable(conn.fd());
        let interest = match conn {
            Conn::Tcp(_) => Interest::BOTH,
            Conn::Udp(_) => Interest::READABLE,
        };
        self.backend
            .register(conn.fd(), k as u64, interest)
            .map_err(|e| DriverError::Setup(format!("cannot register a socket: {e}")))?;
        let hangup_at_us = match cfg.hold_ms {
            Some(mean) => {
                self.rng = mix(self.rng);
                now_us + exp_hold_us(mean, self.rng)
            }
            None => u64::MAX,
        };
        self.slots[k] = Some(Slot {
            caller,
            conn,
            hangup_at_us,
            pending: BytesMut::new(),
            on_end,
        });
        self.calls_up += 1;
        self.counters.calls_started += 1;
        // First tick now: the UUID frame and the first audio frame.
        self.tick(k, now_us)
    }

    fn open(&self, cfg: &DriverConfig) -> io::Result<Conn> {
        match cfg.transport {
            Transport::AudioSocket(_) => {
                let s = TcpStream::connect_timeout(&cfg.target, CONNECT_TIMEOUT)?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(Conn::Tcp(s))
            }
            Transport::Rtp(_) => {
                let local: SocketAddr = if cfg.target.is_ipv4() {
                    ([127, 0, 0, 1], 0).into()
                } else {
                    (std::net::Ipv6Addr::LOCALHOST, 0).into()
                };
                let local = if cfg.target.ip().is_loopback() {
                    local
                } else if cfg.target.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(local)?;
                s.connect(cfg.target)?;
                s.set_nonblocking(true)?;
                Ok(Conn::Udp(s))
            }
        }
    }

    fn tick(&mut self, k: usize, now_us: u64) -> Result<(), DriverError> {
        let Some(slot) = self.slots[k].as_mut() else {
            return Ok(());
        };
        if now_us >= slot.hangup_at_us {
            self.counters.calls_churned += 1;
            self.end_call(k, EndReason::Ours);
            self.restart.push(k as u32);
            return Ok(());
        }
        let Slot {
            caller,
            conn,
            pending,
            ..
        } = slot;
        let bytes = caller.on_tick(now_us);
        let mut failed = false;
        let mut refused = false;
        match conn {
            Conn::Tcp(s) => {
                if pending.is_empty() {
                    match s.write(bytes) {
                        Ok(n) => pending.extend_from_slice(&bytes[n..]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            pending.extend_from_slice(bytes)
                        }
                        Err(_) => failed = true,
                    }
                } else if pending.len() + bytes.len() > PENDING_MAX {
                    self.counters.send_stalls += 1;
                } else {
                    pending.extend_from_slice(bytes);
                }
            }
            Conn::Udp(s) => match s.send(bytes) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.counters.send_stalls += 1,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    self.counters.refused += 1;
                    refused = true;
                }
                Err(_) => self.counters.send_stalls += 1,
            },
        }
        self.counters.frames_out += 1;
        if refused {
            self.check_refused()?;
        }
        if failed {
            self.counters.call_errors += 1;
            self.end_call(k, EndReason::Error);
            return Ok(());
        }
        let next_ms = slot_next_ms(self.slots[k].as_ref());
        if let Some(ms) = next_ms {
            self.wheel.schedule(k as u32, ms);
        }
        if self.slots[k]
            .as_ref()
            .is_some_and(|s| !s.pending.is_empty())
        {
            self.flush(k);
        }
        Ok(())
    }

    /// Nothing listening on the UDP port: give up while no frame ever arrived.
    fn check_refused(&self) -> Result<(), DriverError> {
        if self.counters.refused >= REFUSED_LIMIT && self.counters.frames_in == 0 {
            return Err(self.connect_error(
                "connection refused (ICMP port unreachable): nothing listening".into(),
            ));
        }
        Ok(())
    }

    fn flush(&mut self, k: usize) {
        let Some(slot) = self.slots[k].as_mut() else {
            return;
        };
        let Conn::Tcp(s) = &mut slot.conn else {
            return;
        };
        let mut failed = false;
        while !slot.pending.is_empty() {
            match s.write(&slot.pending) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    let _ = slot.pending.split_to(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.counters.call_errors += 1;
            self.end_call(k, EndReason::Error);
        }
    }

    /// Reads what leg `k` holds: until `WouldBlock`, a short read (TCP) or a short
    /// batch (UDP), which means the socket is empty (the engine's readiness contract,
    /// `engine::io`); `to_end` (the peer hung up or errored): until `WouldBlock` or EOF.
    fn read(&mut self, k: usize, to_end: bool) -> Result<(), DriverError> {
        let Some(slot) = self.slots[k].as_mut() else {
            return Ok(());
        };
        let mut end = None;
        let mut refused = false;
        match &mut slot.conn {
            Conn::Tcp(s) => loop {
                match rxstamp::recv_stream(s.as_raw_fd(), &mut self.rbuf) {
                    Ok((0, _)) => {
                        end = Some(EndReason::Voxd);
                        break;
                    }
                    Ok((n, stamp)) => match slot
                        .caller
                        .on_received(self.stamps.arrival_us(stamp), &self.rbuf[..n])
                    {
                        Ok(f) => {
                            self.counters.frames_in += f as u64;
                            if slot.caller.is_hung_up() {
                                end = Some(EndReason::Voxd);
                                break;
                            }
                            if !to_end && n < self.rbuf.len() {
                                break;
                            }
                        }
                        Err(_) => {
                            end = Some(EndReason::Error);
                            break;
                        }
                    },
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        end = Some(EndReason::Error);
                        break;
                    }
                }
            },
            Conn::Udp(s) => loop {
                match self.ubatch.recv(s.as_raw_fd()) {
                    Ok(n) => {
                        for i in 0..n {
                            let (data, stamp) = self.ubatch.get(i);
                            match slot.caller.on_received(self.stamps.arrival_us(stamp), data) {
                                Ok(f) => self.counters.frames_in += f as u64,
                                // Counted as a bad frame by the caller; keep going.
                                Err(CallerError::Rtp(_)) => {}
                                Err(_) => {}
                            }
                        }
                        if n < rxstamp::UDP_BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                        self.counters.refused += 1;
                        refused = true;
                    }
                    Err(_) => break,
                }
            },
        }
        if refused {
            self.check_refused()?;
        }
        if let Some(r) = end {
            match r {
                EndReason::Voxd => self.counters.closed_by_voxd += 1,
                EndReason::Error => self.counters.call_errors += 1,
                EndReason::Ours => {}
            }
            self.end_call(k, r);
        }
        Ok(())
    }

    /// Closes slot `k`'s call (if any) and hands its measurements to the coordinator.
    fn end_call(&mut self, k: usize, why: EndReason) {
        let Some(mut slot) = self.slots[k].take() else {
            return;
        };
        self.wheel.cancel(k as u32);
        let _ = self.backend.deregister(slot.conn.fd());
        if let (Conn::Tcp(s), EndReason::Ours) = (&mut slot.conn, why) {
            // Asterisk's hangup frame, best effort.
            let _ = s.write(&[0, 0, 0]);
        }
        self.calls_up -= 1;
        if let Some(f) = slot.on_end.take() {
            f(why == EndReason::Voxd);
        }
        // The coordinator is gone only if it is itself unwinding.
        let _ = self.ctx.tx.send(slot.caller.stats().clone());
    }
}

fn slot_next_ms(slot: Option<&Slot>) -> Option<u64> {
    slot.map(|s| s.caller.next_tick_us().div_ceil(1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_hold_has_the_requested_mean_and_a_floor() {
        let mut r = 7u64;
        let n = 20_000;
        let mut sum = 0u64;
        for _ in 0..n {
            r = mix(r);
            let h = exp_hold_us(1_000, r);
            assert!(h >= super::super::stats::FRAME_US);
            sum += h;
        }
        let mean_ms = sum as f64 / n as f64 / 1_000.0;
        assert!((mean_ms - 1_000.0).abs() < 50.0, "mean {mean_ms}");
        assert_eq!(exp_hold_us(1_000, u64::MAX), super::super::stats::FRAME_US);
    }

    /// One RTP call at one call per second for one second, to `target`.
    fn rtp_cfg(target: SocketAddr) -> DriverConfig {
        DriverConfig {
            transport: Transport::Rtp(super::super::caller::Law::Ulaw),
            target,
            calls: 1,
            rate: 1.0,
            seconds: 1.0,
            hold_ms: None,
            seed: 1,
            think_ms: 0,
            threads: 1,
            wav: None,
            signal: SignalConfig::default(),
            pid: None,
            progress: false,
            tick_ms: 1,
        }
    }

    #[test]
    fn validate_refuses_nonsense() {
        let cfg = rtp_cfg("127.0.0.1:9".parse().unwrap());
        assert!(validate(&cfg).is_ok());
        assert!(validate(&DriverConfig {
            calls: 0,
            ..cfg.clone()
        })
        .is_err());
        assert!(validate(&DriverConfig {
            rate: 0.0,
            ..cfg.clone()
        })
        .is_err());
        assert!(validate(&DriverConfig {
            seconds: f64::NAN,
            ..cfg.clone()
        })
        .is_err());
        assert!(validate(&DriverConfig {
            hold_ms: Some(0),
            ..cfg
        })
        .is_err());
    }

    #[test]
    fn rtp_against_a_closed_port_is_a_setup_error() {
        // Bind then drop: the port is (very likely) closed.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cfg = DriverConfig {
            calls: 2,
            rate: 100.0,
            seconds: 2.0,
            ..rtp_cfg(port)
        };
        match run(&cfg) {
            Err(DriverError::Connect { addr, .. }) => assert_eq!(addr, port),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}
