//! `voxd loadgen --via ari`: the same measured load, but every call goes through
//! ARI the way Asterisk sends it: the ARI emulator places callers into voxd's Stasis
//! app, voxd answers, bridges and originates the media leg, and the emulator hands
//! each leg's socket to the load driver's threads, which play the caller and measure
//! exactly as in a direct run.
//!
//! Owns: the hand-off [`MediaDriver`] (legs -> driver threads), the emulator's
//! runtime for the run, the call placement schedule, and the end-of-run check that
//! no channel or bridge was left behind.
//!
//! Must not: measure anything itself (the driver does), or guess voxd's ARI
//! settings: voxd must be configured to reach the emulator's address.

#![forbid(unsafe_code)]

use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::ari_emu::{
    AriEmulator, CallSpec, EmuConfig, LegClose, LegFormat, LegTransport, MediaDriver, MediaLeg,
};
use super::caller::{Law, Transport};
use super::driver::{self, DriverConfig, DriverError, ExternalLeg, LegConn, Outcome};
use crate::media::Rate;

/// How long voxd may take to subscribe to the emulator's events (its reconnect
/// backoff is capped at 30 s).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(40);
/// How long the teardown after the run may take before leftovers count as leaks.
const CLEAN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the emulator listens and who may log in.
#[derive(Debug, Clone)]
pub struct AriSettings {
    /// The emulator's address (voxd's `asterisk.host:port`).
    pub listen: SocketAddr,
    /// ARI user voxd logs in as.
    pub username: String,
    /// Its password.
    pub password: String,
    /// The Stasis application voxd registers (`asterisk.app_name`).
    pub app: String,
}

/// What the ARI side saw over the run.
#[derive(Debug, Clone, Default)]
pub struct AriSummary {
    /// Callers placed into Stasis.
    pub calls_placed: u64,
    /// Media legs voxd originated.
    pub legs_originated: u64,
    /// Channels still alive after the teardown.
    pub leaked_channels: usize,
    /// Bridges still alive after the teardown.
    pub leaked_bridges: usize,
}

/// Hands each leg voxd originates to a driver thread, round-robin.
struct HandOff {
    /// One per driver thread, each bounded by that thread's share of the calls
    /// (legs are dealt round-robin, so a thread is never owed more at once).
    senders: Vec<mpsc::SyncSender<ExternalLeg>>,
    next: AtomicUsize,
    transport: Transport,
}

fn format_matches(t: Transport, f: LegFormat) -> bool {
    matches!(
        (t, f),
        (Transport::AudioSocket(Rate::Hz16000), LegFormat::Slin16)
            | (Transport::AudioSocket(Rate::Hz8000), LegFormat::Slin8)
            | (Transport::Rtp(Law::Ulaw), LegFormat::Ulaw)
            | (Transport::Rtp(Law::Alaw), LegFormat::Alaw)
    )
}

impl MediaDriver for HandOff {
    fn start_leg(&self, leg: MediaLeg) -> io::Result<Option<SocketAddr>> {
        if !format_matches(self.transport, leg.format) {
            let why = format!(
                "voxd originated a {:?} leg but the load generator sends {:?} (match --transport/--rate-hz/--codec to voxd's audio_transport and format)",
                leg.format, self.transport
            );
            leg.link.connect_failed(why.clone());
            return Err(io::Error::other(why));
        }
        let (conn, uuid, local) = match leg.transport {
            LegTransport::AudioSocket { remote, uuid } => {
                let s = TcpStream::connect_timeout(&remote, Duration::from_secs(2))?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                (LegConn::Tcp(s), uuid, None)
            }
            LegTransport::Rtp { remote, bind_ip } => {
                let s = UdpSocket::bind((bind_ip, 0))?;
                s.connect(remote)?;
                s.set_nonblocking(true)?;
                let local = s.local_addr()?;
                (LegConn::Udp(s), [0; 16], Some(local))
            }
        };
        leg.link.connected();
        let link = leg.link.clone();
        let out = ExternalLeg {
            conn,
            uuid,
            // voxd ended it (EOF or hangup frame), or the caller did: either way the
            // leg is gone on Asterisk's side too.
            on_end: Box::new(move |_by_voxd| link.closed(LegClose::RemoteClosed)),
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len().max(1);
        match self.senders[i].try_send(out) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(out)) => {
                // More legs than the thread has calls: voxd or the emulator
                // misbehaves; the driver would refuse it too.
                (out.on_end)(false);
                return Err(io::Error::other(
                    "the load driver thread has no free call slot for this leg",
                ));
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(io::Error::other("the load driver has finished"))
            }
        }
        Ok(local)
    }
}

/// Run the measured load through the ARI emulator. Errors are sentences for the
/// operator (voxd never subscribed, the emulator cannot listen, ...).
pub fn run(cfg: &DriverConfig, ari: &AriSettings) -> Result<(Outcome, AriSummary), DriverError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| DriverError::Setup(format!("{what}: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loadgen-ari")
        .enable_all()
        .build()
        .map_err(|e| setup("cannot start the ARI emulator's runtime", &e))?;
    let threads = cfg.threads.clamp(1, cfg.calls.max(1));
    // Thread `t` is dealt legs t, t + threads, ...: at most this many of --calls.
    let per_thread = cfg.calls.div_ceil(threads).max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::sync_channel(per_thread)).unzip();
    let handoff = HandOff {
        senders,
        next: AtomicUsize::new(0),
        transport: cfg.transport,
    };
    let emu_cfg = EmuConfig {
        bind: ari.listen,
        username: ari.username.clone(),
        password: ari.password.clone(),
        app: ari.app.clone(),
        driver: Some(Arc::new(handoff)),
        ..EmuConfig::default()
    };
    let emu = rt.block_on(AriEmulator::start(emu_cfg)).map_err(|e| {
        setup(
            &format!("the ARI emulator cannot listen on {}", ari.listen),
            &e,
        )
    })?;
    if !rt.block_on(emu.wait_app_registered(&ari.app, REGISTER_TIMEOUT)) {
        let _ = rt.block_on(emu.stop());
        return Err(DriverError::Setup(format!(
            "voxd did not subscribe to Stasis app `{}` on the ARI emulator at {} within 40 s: set voxd's asterisk.host/port to it and ASTERISK_ARI_USERNAME / ASTERISK_ARI_PASSWORD to {} / (the password given)",
            ari.app, ari.listen, ari.username
        )));
    }
    let dcfg = cfg.clone();
    let driver = std::thread::Builder::new()
        .name("loadgen-main".into())
        .spawn(move || driver::run_with_legs(&dcfg, receivers))
        .map_err(|e| setup("cannot start the load driver", &e))?;
    let t0 = Instant::now();
    let mut callers = Vec::with_capacity(cfg.calls);
    let mut placement_error = None;
    for i in 0..cfg.calls {
        let at = t0 + Duration::from_secs_f64(i as f64 / cfg.rate);
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        match emu.place_call(CallSpec::default()) {
            Ok(id) => callers.push(id),
            Err(e) => {
                placement_error = Some(e.to_string());
                break;
            }
        }
    }
    let outcome = driver
        .join()
        .map_err(|_| DriverError::Setup("the load driver panicked".into()))?;
    // The driver hung up its calls; whatever voxd left up goes now.
    for id in &callers {
        let _ = emu.hangup_caller(id);
    }
    let deadline = Instant::now() + CLEAN_TIMEOUT;
    while Instant::now() < deadline {
        let c = emu.counters();
        if c.live_channels == 0 && c.live_bridges == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let counters = emu.counters();
    let report = rt.block_on(emu.stop());
    if let Some(e) = placement_error {
        return Err(DriverError::Setup(format!(
            "placing calls on the ARI emulator failed after {}: {e}",
            callers.len()
        )));
    }
    let outcome = outcome?;
    Ok((
        outcome,
        AriSummary {
            calls_placed: counters.calls_placed,
            legs_originated: counters.originated_legs + counters.external_media_legs,
            leaked_channels: report.leaked_channels.len(),
            leaked_bridges: report.leaked_bridges.len(),
        },
    ))
}
