//! The `voxd` command line: `serve` runs the media server, `check` validates a
//! configuration, `loadgen` plays Asterisk towards a running voxd and measures it.
//! Later subcommands (`call`, `demo`) arrive with their issues.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// voxd: media server for AI voice agents on Asterisk.
#[derive(Debug, Parser)]
#[command(name = "voxd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the media server (AudioSocket, ExternalMedia RTP, ARI, providers).
    Serve {
        /// Configuration file. Default: $VOXD_CONFIG, else ./config/voxd.yaml if it
        /// exists, else built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration: print the effective configuration (secrets masked)
    /// and exit 0, or list every problem with its key path and exit 1.
    Check {
        /// Configuration file (same default search as `serve`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Play Asterisk towards a running voxd: open N concurrent calls over AudioSocket
    /// or RTP, send a speech-like caller signal on real 20 ms pacing, and measure
    /// voxd's frame timing, gaps, latencies, loss, CPU and memory.
    ///
    /// Prints a progress line every second on stderr and a summary table on stdout.
    /// Exit 0 when the run completed (whatever the timing SLO verdict), 1 on a setup
    /// error (cannot connect, bad arguments).
    Loadgen(Box<LoadgenArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LoadTransport {
    /// AudioSocket over TCP (slin, `--rate-hz`).
    Audiosocket,
    /// ExternalMedia RTP over UDP (G.711, `--codec`).
    Rtp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LoadCodec {
    /// G.711 mu-law (PT 0).
    Ulaw,
    /// G.711 A-law (PT 8).
    Alaw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Via {
    /// The load generator dials voxd itself.
    Direct,
    /// Through an ARI emulator, like Asterisk.
    Ari,
}

#[derive(Debug, clap::Args)]
struct LoadgenArgs {
    /// How the calls reach voxd.
    #[arg(long, value_enum, default_value = "audiosocket")]
    transport: LoadTransport,
    /// voxd's host (its audiosocket.host or external_media.rtp_host).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// voxd's port. Default: 8090 for audiosocket, 18080 for rtp (voxd's defaults).
    #[arg(long)]
    port: Option<u16>,
    /// Concurrent calls.
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Calls started per second while ramping up.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Measured window after the ramp (all calls up), in seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Call churn: mean call length in ms (exponential); each ended call is replaced
    /// at once. Default: calls last until the end.
    #[arg(long, value_name = "MS")]
    hold: Option<u64>,
    /// Seed of the signals, call ids and hold times (runs are repeatable).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The agent's think time (sim provider `think_ms`), subtracted from turn latency.
    #[arg(long, default_value_t = 300)]
    think_ms: u32,
    /// RTP payload: must match voxd's external_media.codec.
    #[arg(long, value_enum, default_value = "ulaw")]
    codec: LoadCodec,
    /// AudioSocket slin rate: 8000 (kind 0x10, voxd `audiosocket.format: slin`) or
    /// 16000 (kind 0x12, `format: slin16`). Must match voxd's audiosocket.format.
    #[arg(long, default_value_t = 16000, value_parser = parse_rate_hz)]
    rate_hz: u32,
    /// Loop this WAV file (mono 16-bit PCM at the transport's rate: 8 kHz for rtp,
    /// --rate-hz for audiosocket) instead of the synthetic speech signal.
    #[arg(long)]
    wav: Option<PathBuf>,
    /// Pause before each call's first talk spurt, in ms. Default: drawn like every
    /// other pause (2-6 s), which staggers the calls.
    #[arg(long, value_name = "MS")]
    initial_pause_ms: Option<u32>,
    /// voxd's process id: its CPU per call-second and RSS are read from /proc over
    /// the measured window.
    #[arg(long, conflicts_with = "spawn")]
    pid: Option<u32>,
    /// Start `voxd serve --config CONFIG` (this binary) for the run: its addresses
    /// (unless --host/--port are given) and pid are taken from it, and it is stopped
    /// with SIGTERM at the end.
    #[arg(long, value_name = "CONFIG")]
    spawn: Option<PathBuf>,
    /// Driver threads (each runs one event loop over its share of the calls).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Driver loop pacing while calls are up, like voxd's `engine.tick_ms`: sleep to
    /// the next N ms boundary, then read every socket with data, fire the due timers
    /// and send in one pass (0: wake on every readiness event, costlier at high call
    /// counts). Arrival times are the kernel's receive stamps either way.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=5))]
    tick_ms: u32,
    /// How calls reach voxd: `direct` (dial its AudioSocket / send RTP to it) or
    /// `ari` (run an ARI emulator that places callers into voxd's Stasis app; voxd
    /// originates the media legs; configure voxd's asterisk.host/port to --ari-listen
    /// and ASTERISK_ARI_USERNAME / ASTERISK_ARI_PASSWORD, default asterisk/asterisk).
    #[arg(long, value_enum, default_value = "direct")]
    via: Via,
    /// With --via ari: where the ARI emulator listens.
    #[arg(long, default_value = "127.0.0.1:8088")]
    ari_listen: std::net::SocketAddr,
    /// With --via ari: the Stasis application voxd registers.
    #[arg(long, default_value = "asterisk-ai-voice-agent")]
    ari_app: String,
    /// Run this provider's protocol simulator for the run (`openai_realtime`,
    /// `deepgram`, `local`). A --spawn'ed voxd gets its URL in VOXD_SIM_URL and the
    /// provider's key variable set; its config names them (perf/configs/*.yaml use
    /// `base_url: ${VOXD_SIM_URL}`). Without --spawn the URL is printed.
    #[arg(long, value_name = "PROVIDER")]
    provider: Option<String>,
    /// With --provider: where the simulator listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    sim_listen: std::net::SocketAddr,
    /// With --provider: length of each simulated reply, ms.
    #[arg(long, default_value_t = 1500)]
    reply_ms: u32,
    /// With --provider: the simulator's worker threads.
    #[arg(long, default_value_t = 1)]
    sim_threads: usize,
    /// Also write the report as JSON to this file (with --ramp: the ramp's JSON).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Capacity ramp: run START, START+STEP, ... up to MAX concurrent calls (or the
    /// listed counts, e.g. 100,200,400), one load run of --seconds per step (after
    /// the ramp-up at --rate calls/s), until a step breaks the timing SLO; prints a
    /// line per step, then a table and the capacity (the last step that met the
    /// SLO). With --spawn every step gets a fresh voxd; a voxd already running gets
    /// --ramp-pause seconds between steps. --calls is not used.
    #[arg(long, value_name = "START:STEP:MAX|N1,N2,..", value_parser = parse_ramp, conflicts_with = "calls")]
    ramp: Option<voxd::loadgen::ramp::RampSpec>,
    /// With --ramp: steps to run after the first that breaks the SLO (shows the knee).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "ramp")]
    ramp_continue: usize,
    /// With --ramp against a voxd that is already running (no --spawn): seconds
    /// between steps, for it to end the calls of the step before (RTP calls end by
    /// external_media.idle_timeout_ms).
    #[arg(long, value_name = "SECONDS", default_value_t = 6.0, requires = "ramp")]
    ramp_pause: f64,
    /// With --ramp: write report.md (tables, capacity, command line, machine),
    /// ramp.json and ramp.png (deviation percentiles with the SLO lines, gaps, CPU
    /// per call-second and RSS against calls) into this directory.
    #[arg(long, value_name = "DIR", requires = "ramp")]
    report: Option<PathBuf>,
    /// With --ramp: also ramp another engine, started afresh for each step by
    /// `sh -c CMD` (in its own process group, stopped with SIGTERM), dialled at
    /// --compare-host:--compare-port with the same load; its CPU and RSS are those
    /// of CMD's whole process tree. Steps alternate between voxd and it. The
    /// provider simulator's VOXD_SIM_URL and key are in its environment too.
    #[arg(long, value_name = "CMD", requires_all = ["ramp", "compare_port"])]
    compare_cmd: Option<String>,
    /// With --compare-cmd: the other engine's AudioSocket (TCP) or RTP (UDP) port.
    #[arg(long, requires = "compare_cmd")]
    compare_port: Option<u16>,
    /// With --compare-cmd: the other engine's host. Default: --host.
    #[arg(long, requires = "compare_cmd")]
    compare_host: Option<String>,
    /// With --compare-cmd: its name in the report.
    #[arg(long, default_value = "compare")]
    compare_name: String,
    /// Timing SLO override: largest p99 inter-arrival deviation that passes, ms
    /// (default 2, targets.md).
    #[arg(long, value_name = "MS")]
    slo_p99_ms: Option<f64>,
    /// Timing SLO override: largest p99.9 inter-arrival deviation that passes, ms
    /// (default 5).
    #[arg(long, value_name = "MS")]
    slo_p999_ms: Option<f64>,
    /// Timing SLO override: most gaps that pass (default 0).
    #[arg(long, value_name = "N")]
    slo_max_gaps: Option<u64>,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(config),
        Command::Serve { config } => serve(config),
        Command::Loadgen(args) => loadgen(*args),
    }
}

fn parse_ramp(s: &str) -> Result<voxd::loadgen::ramp::RampSpec, String> {
    voxd::loadgen::ramp::RampSpec::parse(s)
}

/// The SLO limits: targets.md's, with the operator's overrides.
fn slo_limits(a: &LoadgenArgs) -> Result<voxd::loadgen::stats::SloLimits, String> {
    let mut l = voxd::loadgen::stats::SloLimits::default();
    let us = |name: &str, ms: f64| {
        if ms.is_finite() && ms >= 0.0 {
            Ok((ms * 1_000.0).round() as u64)
        } else {
            Err(format!("{name} must be a number of ms, at least 0"))
        }
    };
    if let Some(ms) = a.slo_p99_ms {
        l.p99_dev_us = us("--slo-p99-ms", ms)?;
    }
    if let Some(ms) = a.slo_p999_ms {
        l.p999_dev_us = us("--slo-p999-ms", ms)?;
    }
    if let Some(n) = a.slo_max_gaps {
        l.max_gaps = n;
    }
    Ok(l)
}

/// This process's command line, shell-quoted where needed.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_rate_hz(s: &str) -> Result<u32, String> {
    match s {
        "8000" => Ok(8000),
        "16000" => Ok(16000),
        _ => Err("must be 8000 or 16000".into()),
    }
}

fn loadgen(a: LoadgenArgs) -> ExitCode {
    use voxd::loadgen::caller::{Law, Transport};
    use voxd::loadgen::driver::{self, DriverConfig};
    use voxd::media::Rate;

    let fail = |m: String| {
        eprintln!("error: {m}");
        ExitCode::from(1)
    };
    let rate = if a.rate_hz == 8000 {
        Rate::Hz8000
    } else {
        Rate::Hz16000
    };
    let (transport, default_port) = match a.transport {
        LoadTransport::Audiosocket => (Transport::AudioSocket(rate), 8090),
        LoadTransport::Rtp => (
            Transport::Rtp(match a.codec {
                LoadCodec::Ulaw => Law::Ulaw,
                LoadCodec::Alaw => Law::Alaw,
            }),
            18080,
        ),
    };
    let mut child_env: Vec<(&str, String)> = Vec::new();
    if a.via == Via::Ari && a.spawn.is_some() {
        // The spawned voxd logs in to our emulator with these; defaults when the
        // operator set none.
        for var in ["ASTERISK_ARI_USERNAME", "ASTERISK_ARI_PASSWORD"] {
            if std::env::var_os(var).is_none() {
                child_env.push((var, "asterisk".into()));
            }
        }
    }
    let sim = match &a.provider {
        None => None,
        Some(name) => {
            use voxd::loadgen::provider_run::{RunningSim, SimKind, SimRunConfig};
            let Some(kind) = SimKind::parse(name) else {
                return fail(format!(
                    "--provider {name}: no simulator for it (openai_realtime, deepgram, local)"
                ));
            };
            let cfg = SimRunConfig {
                kind,
                listen: a.sim_listen,
                think_ms: a.think_ms,
                reply_ms: a.reply_ms,
                seed: a.seed,
                threads: a.sim_threads,
            };
            match RunningSim::start(cfg) {
                Ok(s) => {
                    eprintln!("provider simulator ({name}) at {}", s.url());
                    child_env.extend(s.env());
                    Some((kind, s))
                }
                Err(e) => return fail(e),
            }
        }
    };
    let wav = match &a.wav {
        None => None,
        Some(path) => match voxd::loadgen::signal::load_wav(path) {
            Ok((samples, hz)) if hz == transport.rate().hz() => Some(samples.into()),
            Ok((_, hz)) => {
                return fail(format!(
                    "{}: {hz} Hz, but this transport sends {} Hz",
                    path.display(),
                    transport.rate().hz()
                ))
            }
            Err(e) => return fail(format!("{}: {e}", path.display())),
        },
    };
    let limits = match slo_limits(&a) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if let Some(spec) = a.ramp.clone() {
        let port = a.port.unwrap_or(default_port);
        let target = match std::net::ToSocketAddrs::to_socket_addrs(&(a.host.as_str(), port))
            .ok()
            .and_then(|mut it| it.next())
        {
            Some(t) => t,
            None => return fail(format!("cannot resolve --host {}:{port}", a.host)),
        };
        let code = loadgen_ramp(
            &a,
            spec,
            limits,
            (transport, target, wav),
            &child_env,
            sim.as_ref().map(|s| s.0),
        );
        if let Some((kind, s)) = sim {
            println!("{}", voxd::loadgen::provider_run::summary(kind, &s.stop()));
        }
        return code;
    }
    let spawned = match &a.spawn {
        None => None,
        Some(config) => {
            let exe = match std::env::current_exe() {
                Ok(e) => e,
                Err(e) => return fail(format!("cannot find this program's path: {e}")),
            };
            match voxd::loadgen::spawn::SpawnedVoxd::start_with_env(&exe, config, &child_env) {
                Ok(s) => Some(s),
                Err(e) => return fail(e),
            }
        }
    };
    let spawned_port = spawned.as_ref().map(|s| match a.transport {
        LoadTransport::Audiosocket => s.audiosocket.port(),
        LoadTransport::Rtp => s.rtp.port(),
    });
    let port = a.port.or(spawned_port).unwrap_or(default_port);
    let target = match std::net::ToSocketAddrs::to_socket_addrs(&(a.host.as_str(), port))
        .ok()
        .and_then(|mut it| it.next())
    {
        Some(t) => t,
        None => return fail(format!("cannot resolve --host {}:{port}", a.host)),
    };
    let cfg = DriverConfig {
        transport,
        target,
        calls: a.calls,
        rate: a.rate,
        seconds: a.seconds,
        hold_ms: a.hold,
        seed: a.seed,
        think_ms: a.think_ms,
        threads: a.threads,
        wav,
        signal: voxd::loadgen::signal::SignalConfig {
            initial_pause_ms: a.initial_pause_ms,
            ..Default::default()
        },
        pid: a.pid.or(spawned.as_ref().map(|s| s.pid())),
        progress: !a.quiet,
        tick_ms: a.tick_ms,
    };
    let (out, ari) = match a.via {
        Via::Direct => (driver::run(&cfg), None),
        Via::Ari => {
            if a.hold.is_some() {
                return fail("--hold (call churn) is not supported with --via ari yet".into());
            }
            let settings = voxd::loadgen::via_ari::AriSettings {
                listen: a.ari_listen,
                username: std::env::var("ASTERISK_ARI_USERNAME")
                    .unwrap_or_else(|_| "asterisk".into()),
                password: std::env::var("ASTERISK_ARI_PASSWORD")
                    .unwrap_or_else(|_| "asterisk".into()),
                app: a.ari_app.clone(),
            };
            match voxd::loadgen::via_ari::run(&cfg, &settings) {
                Ok((o, s)) => (Ok(o), Some(s)),
                Err(e) => (Err(e), None),
            }
        }
    };
    if let Some(s) = spawned {
        match s.stop() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("warning: the spawned voxd exited with {status}"),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    let sim_line = sim.map(|(kind, s)| {
        let stats = s.stop();
        voxd::loadgen::provider_run::summary(kind, &stats)
    });
    let mut out = match out {
        Ok(o) => o,
        Err(e) => return fail(e.to_string()),
    };
    out.report.slo_limits = limits;
    print!("{}", out.to_table());
    if let Some(line) = &sim_line {
        println!("{line}");
    }
    if let Some(s) = &ari {
        println!(
            "ari: callers placed {}, media legs originated {}, left behind: {} channel(s), {} bridge(s)",
            s.calls_placed, s.legs_originated, s.leaked_channels, s.leaked_bridges
        );
    }
    if let Some(path) = &a.json {
        if let Err(e) = std::fs::write(path, out.to_json()) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    ExitCode::SUCCESS
}

/// `voxd loadgen --ramp`: the steps for voxd (and the --compare-cmd engine), the
/// table on stdout, the report directory.
fn loadgen_ramp(
    a: &LoadgenArgs,
    spec: voxd::loadgen::ramp::RampSpec,
    limits: voxd::loadgen::stats::SloLimits,
    (transport, target, wav): (
        voxd::loadgen::caller::Transport,
        std::net::SocketAddr,
        Option<std::sync::Arc<[i16]>>,
    ),
    child_env: &[(&str, String)],
    sim: Option<voxd::loadgen::provider_run::SimKind>,
) -> ExitCode {
    use voxd::loadgen::ramp::{self, EngineSpec, EngineTarget, RampPlan, RampReport};
    let fail = |m: String| {
        eprintln!("error: {m}");
        ExitCode::from(1)
    };
    if !(a.ramp_pause.is_finite() && a.ramp_pause >= 0.0) {
        return fail("--ramp-pause must be a number of seconds, at least 0".into());
    }
    let base = voxd::loadgen::driver::DriverConfig {
        transport,
        target,
        calls: spec.start,
        rate: a.rate,
        seconds: a.seconds,
        hold_ms: a.hold,
        seed: a.seed,
        think_ms: a.think_ms,
        threads: a.threads,
        wav,
        signal: voxd::loadgen::signal::SignalConfig {
            initial_pause_ms: a.initial_pause_ms,
            ..Default::default()
        },
        pid: None,
        progress: !a.quiet,
        tick_ms: a.tick_ms,
    };
    let env: Vec<(String, String)> = child_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut engines = Vec::new();
    let voxd_target = match &a.spawn {
        Some(config) => match std::env::current_exe() {
            Ok(exe) => EngineTarget::Spawn {
                exe,
                config: config.clone(),
                env: env.clone(),
                port: a.port,
            },
            Err(e) => return fail(format!("cannot find this program's path: {e}")),
        },
        None => EngineTarget::Running {
            pid: a.pid,
            pause: std::time::Duration::from_secs_f64(a.ramp_pause),
        },
    };
    engines.push(EngineSpec {
        name: "voxd".into(),
        target: voxd_target,
    });
    if let (Some(cmd), Some(port)) = (&a.compare_cmd, a.compare_port) {
        let host = a.compare_host.as_deref().unwrap_or(a.host.as_str());
        let Some(t) = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .ok()
            .and_then(|mut it| it.next())
        else {
            return fail(format!("cannot resolve --compare-host {host}:{port}"));
        };
        if a.compare_name == "voxd" {
            return fail("--compare-name must differ from `voxd`".into());
        }
        engines.push(EngineSpec {
            name: a.compare_name.clone(),
            target: EngineTarget::Command {
                cmd: cmd.clone(),
                target: t,
                env,
                log: a.report.as_ref().map(|d| {
                    let _ = std::fs::create_dir_all(d);
                    d.join(format!("{}.log", a.compare_name))
                }),
            },
        });
    }
    let via = match a.via {
        Via::Direct => ramp::Via::Direct,
        Via::Ari => {
            if a.hold.is_some() {
                return fail("--hold (call churn) is not supported with --via ari yet".into());
            }
            ramp::Via::Ari(voxd::loadgen::via_ari::AriSettings {
                listen: a.ari_listen,
                username: std::env::var("ASTERISK_ARI_USERNAME")
                    .unwrap_or_else(|_| "asterisk".into()),
                password: std::env::var("ASTERISK_ARI_PASSWORD")
                    .unwrap_or_else(|_| "asterisk".into()),
                app: a.ari_app.clone(),
            })
        }
    };
    let plan = RampPlan {
        spec: spec.clone(),
        continue_after_fail: a.ramp_continue,
        limits,
    };
    let agent = match (sim, &a.spawn) {
        (Some(kind), _) => format!("{kind:?} protocol simulator"),
        (None, Some(cfg)) => match voxd::config::load(Some(cfg)) {
            Ok(l) => format!(
                "{} (from {})",
                l.config.default_provider.as_str(),
                cfg.display()
            ),
            Err(_) => format!("from {}", cfg.display()),
        },
        (None, None) => "as configured in the running voxd".into(),
    };
    eprintln!(
        "ramp {}, {} s per step, SLO: {}",
        spec.describe(),
        a.seconds,
        limits.describe()
    );
    let engines_run = ramp::run_ramp(
        &plan,
        &engines,
        |e, calls| ramp::run_step(&base, &via, e, calls, limits),
        |r| eprintln!("{}", ramp::step_line(r)),
    );
    let report = RampReport {
        command_line: command_line(),
        machine: ramp::Machine::detect(),
        transport: base.transport_name().to_string(),
        via: match a.via {
            Via::Direct => "direct".into(),
            Via::Ari => "ari".into(),
        },
        agent,
        seconds_per_step: a.seconds,
        rate: a.rate,
        ramp: spec,
        slo: limits,
        engines: engines_run,
    };
    print!("{}", report.to_table());
    if let Some(path) = &a.json {
        if let Err(e) = std::fs::write(path, report.to_json()) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    if let Some(dir) = &a.report {
        match report.write_dir(dir) {
            Ok(warnings) => {
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                println!("report: {} (report.md, ramp.json, ramp.png)", dir.display());
            }
            Err(e) => return fail(e),
        }
    }
    // A first step with no figures is a setup error (nothing listening, bad config).
    if let Some(e) = report
        .engines
        .iter()
        .find_map(|e| e.steps.first().and_then(|s| s.error.clone()))
    {
        return fail(format!("the ramp could not run: {e}"));
    }
    ExitCode::SUCCESS
}

fn load(config: Option<PathBuf>) -> Result<voxd::config::Loaded, ExitCode> {
    match voxd::config::load(config.as_deref()) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            Ok(loaded)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(1))
        }
    }
}

fn check(config: Option<PathBuf>) -> ExitCode {
    match load(config) {
        Ok(loaded) => {
            if let Some(p) = &loaded.source {
                eprintln!("configuration: {} (valid)", p.display());
            } else {
                eprintln!("configuration: built-in defaults (valid)");
            }
            for note in deployment_notes(&loaded.config) {
                eprintln!("note: {note}");
            }
            print!("{}", loaded.config.to_masked_yaml());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Advice about the surroundings that is not a configuration error.
fn deployment_notes(cfg: &voxd::config::Config) -> Vec<String> {
    let mut notes = Vec::new();
    let port = cfg.external_media.rtp_port;
    if (5000..=31000).contains(&port) {
        notes.push(format!(
            "external_media.rtp_port {port} lies inside Asterisk's default RTP port range \
             (rtp.conf rtpstart=5000, rtpend=31000): move Asterisk's range or voxd's port so \
             Asterisk never allocates it to a call"
        ));
    }
    notes
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let loaded = match load(config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let set_log_level = init_logging(&loaded.config);
    let source = loaded
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    tracing::info!(config = %source, "configuration loaded");
    let registry = match voxd::provider::Registry::from_config(&loaded.config) {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            loaded
                .config
                .engine
                .control_workers(voxd::engine::runner::shard_count(&loaded.config)),
        )
        .thread_name("voxd-control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the control runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let provider_names: Vec<String> = registry.names().map(str::to_string).collect();
    rt.block_on(async move {
        let cfg = &loaded.config;
        let ari_mode = cfg.ari_enabled().then(|| voxd::engine::control::AriMode {
            bindings: std::sync::Arc::new(voxd::engine::bind::Bindings::default()),
            accept_unoriginated: cfg.audiosocket.accept_unoriginated,
        });
        let engine =
            match voxd::engine::runner::Engine::start_with(cfg, registry, ari_mode.clone()) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
        let flow = match &ari_mode {
            None => None,
            Some(m) => match voxd::ari::flow::AriFlow::start(
                cfg,
                m.bindings.clone(),
                engine.peers.clone(),
                engine.audiosocket_addr.port(),
                engine.rtp_addr.port(),
            ) {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("error: ARI: {e}");
                    engine.stop().await;
                    return ExitCode::from(1);
                }
            },
        };
        if let Some(note) = &engine.backend_note {
            tracing::warn!("{note}");
        }
        let health_addr = match std::net::ToSocketAddrs::to_socket_addrs(&(
            cfg.health.host.as_str(),
            cfg.health.port,
        ))
        .ok()
        .and_then(|mut a| a.next())
        {
            Some(a) => a,
            None => {
                eprintln!("error: health.host `{}` does not resolve", cfg.health.host);
                return ExitCode::from(1);
            }
        };
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<
            tokio::sync::oneshot::Sender<serde_json::Value>,
        >(4);
        let inputs = voxd::ops::health::HealthInputs {
            version: env!("CARGO_PKG_VERSION"),
            io_backend: engine.backend.as_str(),
            shards: engine.shards,
            audiosocket: engine.audiosocket_addr,
            rtp: engine.rtp_addr,
            control: engine.control_stats.clone(),
            published: engine.published.clone(),
            live: Some(engine.live.clone()),
            token: cfg.health.api_token.expose().map(str::to_string),
            pii: cfg.logging.pii,
            audit: engine.audit.clone(),
            reload: Some(reload_tx),
            ari: flow.as_ref().map(|f| voxd::ops::health::AriView {
                connected: f.connected.clone(),
                stats: f.stats.clone(),
            }),
            providers: provider_names
                .iter()
                .map(|n| voxd::ops::health::ProviderStatus {
                    name: n.clone(),
                    ready: true,
                    reason: "configured".into(),
                })
                .collect(),
        };
        let health = match voxd::ops::health::HealthServer::start(health_addr, inputs).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: health endpoint on {health_addr}: {e} (health.host / health.port)");
                if let Some(f) = flow {
                    f.stop().await;
                }
                engine.stop().await;
                return ExitCode::from(1);
            }
        };
        tracing::info!(
            audiosocket = %engine.audiosocket_addr,
            rtp = %engine.rtp_addr,
            shards = engine.shards,
            io_backend = engine.backend.as_str(),
            provider = loaded.config.default_provider.as_str(),
            "voxd listening"
        );
        eprintln!(
            "voxd: AudioSocket on {} (tcp), RTP on {} (udp), {} shard(s), io backend {}, agent `{}`; Ctrl-C to stop",
            engine.audiosocket_addr,
            engine.rtp_addr,
            engine.shards,
            engine.backend.as_str(),
            loaded.config.default_provider.as_str()
        );
        if flow.is_some() {
            eprintln!(
                "voxd: ARI call flow on for Stasis app `{}` at {}:{} ({} media legs)",
                cfg.asterisk.app_name,
                cfg.asterisk.host,
                cfg.asterisk.port,
                match cfg.audio_transport {
                    voxd::config::AudioTransport::Audiosocket => "AudioSocket",
                    voxd::config::AudioTransport::Externalmedia => "ExternalMedia RTP",
                }
            );
        }
        eprintln!(
            "voxd: health on http://{}/ (live, ready, health, metrics)",
            health.addr
        );
        let notifier = std::sync::Arc::new(voxd::ops::sdnotify::Notifier::from_env());
        if let Some(f) = &flow {
            // READY once Asterisk is reachable too, but never hold start-up hostage
            // to it: after 10 s voxd reports ready-but-degraded (/ready says why).
            let mut c = f.connected.clone();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), c.wait_for(|v| *v))
                .await;
        }
        notifier.notify("READY=1");
        let status = tokio::spawn(status_loop(
            notifier.clone(),
            engine.lifecycle.clone(),
            engine.control_stats.clone(),
            flow.as_ref().map(|f| f.connected.clone()),
        ));
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut running = cfg.clone();
        loop {
            tokio::select! {
                _ = wait_for_shutdown() => break,
                _ = async {
                    match hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    notifier.notify("RELOADING=1");
                    reload_config(loaded.source.as_deref(), &mut running, &engine, set_log_level.as_ref());
                    notifier.notify("READY=1");
                }
                Some(reply) = reload_rx.recv() => {
                    notifier.notify("RELOADING=1");
                    let outcome = reload_config(loaded.source.as_deref(), &mut running, &engine, set_log_level.as_ref());
                    notifier.notify("READY=1");
                    let _ = reply.send(outcome);
                }
            }
        }
        notifier.notify("STOPPING=1");
        health.set_draining();
        engine.lifecycle.drain();
        if let Some(f) = &flow {
            f.drain();
        }
        let drain = std::time::Duration::from_secs(u64::from(cfg.shutdown.drain_seconds));
        let active = engine.active_calls();
        if active > 0 && !drain.is_zero() {
            tracing::info!(active, drain_seconds = cfg.shutdown.drain_seconds, "draining: no new calls; waiting for calls to end (signal again to stop now)");
            notifier.notify(&format!("STATUS=draining: {active} active calls"));
            let wait = async {
                while engine.active_calls() > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            };
            tokio::select! {
                _ = tokio::time::timeout(drain, wait) => {}
                _ = wait_for_shutdown() => tracing::info!("second signal: stopping now"),
            }
        }
        status.abort();
        tracing::info!(active = engine.active_calls(), "stopping: ending calls");
        if let Some(f) = flow {
            f.stop().await;
        }
        let stats = engine.stop().await;
        let calls: u64 = stats.iter().map(|s| s.calls_started).sum();
        health.stop().await;
        tracing::info!(calls, "stopped");
        ExitCode::SUCCESS
    })
}

/// systemd STATUS every 5 s, and WATCHDOG pings while every shard loop turns.
async fn status_loop(
    notifier: std::sync::Arc<voxd::ops::sdnotify::Notifier>,
    life: std::sync::Arc<voxd::engine::lifecycle::Lifecycle>,
    control: std::sync::Arc<voxd::engine::control::ControlStats>,
    ari: Option<tokio::sync::watch::Receiver<bool>>,
) {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let watchdog = voxd::ops::sdnotify::watchdog_interval();
    let tick = watchdog
        .map(|w| (w / 2).min(Duration::from_secs(5)))
        .unwrap_or(Duration::from_secs(5));
    let mut every = tokio::time::interval(tick);
    let mut last_status = std::time::Instant::now() - Duration::from_secs(10);
    let mut withheld = false;
    loop {
        every.tick().await;
        if let Some(w) = watchdog {
            let stale = life.stalest_ms(voxd::engine::io::monotonic_ms());
            if u128::from(stale) < w.as_millis() / 2 {
                notifier.notify("WATCHDOG=1");
                withheld = false;
            } else if !withheld {
                tracing::error!(
                    stale_ms = stale,
                    "a shard loop has not turned; withholding the systemd watchdog ping"
                );
                withheld = true;
            }
        }
        if last_status.elapsed() >= Duration::from_secs(5) {
            last_status = std::time::Instant::now();
            let active = control
                .sessions_started
                .load(Ordering::Relaxed)
                .saturating_sub(control.sessions_ended.load(Ordering::Relaxed));
            let ari = match &ari {
                None => String::new(),
                Some(c) if *c.borrow() => "; ARI connected".into(),
                Some(_) => "; ARI disconnected".into(),
            };
            notifier.notify(&format!("STATUS={active} active calls{ari}"));
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn wait_for_shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Changes the log level of the running process (reload).
type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Crates that write whole requests and WebSocket messages in their debug and
/// trace lines (tungstenite: the handshake with its `Authorization` header, every
/// ARI event with the caller's number, every provider message): only their
/// `info` and more severe lines are written, whatever the filter says (`VOXD_LOG`
/// included), so no log level shows a secret.
const PAYLOAD_LOGGING_CRATES: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Whether a line may be written at all: not a debug or trace line of one of
/// [`PAYLOAD_LOGGING_CRATES`].
fn not_a_payload_dump(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    *meta.level() <= tracing::Level::INFO
        || !PAYLOAD_LOGGING_CRATES.iter().any(|k| {
            target
                .strip_prefix(k)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// The filter for `logging.level`: voxd's own lines at that level, other crates'
/// at `info` at most (their verbose lines are for debugging them, and some carry
/// request headers and bodies).
fn level_filter(level: &str) -> tracing_subscriber::EnvFilter {
    match level {
        "trace" | "debug" => tracing_subscriber::EnvFilter::new(format!("info,voxd={level}")),
        other => tracing_subscriber::EnvFilter::new(other),
    }
}

/// Logging from `logging.level` / `logging.format` (`VOXD_LOG`, a full filter
/// such as `debug,hyper=trace`, overrides the level); returns how to change the
/// level later, unless `VOXD_LOG` pins it.
fn init_logging(cfg: &voxd::config::Config) -> Option<SetLogLevel> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::EnvFilter;
    let pinned = std::env::var_os("VOXD_LOG").is_some();
    let filter = EnvFilter::try_from_env("VOXD_LOG")
        .unwrap_or_else(|_| level_filter(cfg.logging.level.as_str()));
    let guard = tracing_subscriber::filter::filter_fn(not_a_payload_dump);
    let base = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let set: SetLogLevel = match cfg.logging.format {
        voxd::config::LogFormat::Json => {
            let b = base.json().with_filter_reloading();
            let h = b.reload_handle();
            if b.finish().with(guard).try_init().is_err() {
                return None;
            }
            Box::new(move |level: &str| h.reload(level_filter(level)).map_err(|e| e.to_string()))
        }
        _ => {
            let b = base.with_filter_reloading();
            let h = b.reload_handle();
            if b.finish().with(guard).try_init().is_err() {
                return None;
            }
            Box::new(move |level: &str| h.reload(level_filter(level)).map_err(|e| e.to_string()))
        }
    };
    if pinned {
        return None;
    }
    Some(set)
}

/// SIGHUP: read the configuration file again; apply what can change while calls
/// run (to new calls), report what needs a restart. A file that does not validate,
/// or whose providers cannot be built, changes nothing.
fn reload_config(
    source: Option<&std::path::Path>,
    current: &mut voxd::config::Config,
    engine: &voxd::engine::runner::Engine,
    set_log_level: Option<&SetLogLevel>,
) -> serde_json::Value {
    let refused = |why: String| serde_json::json!({"ok": false, "error": why});
    let new = match voxd::config::load(source) {
        Ok(l) => l.config,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the configuration does not validate; nothing changed");
            return refused(format!("the configuration does not validate: {e}"));
        }
    };
    let plan = voxd::ops::reload::diff(current, &new);
    if plan.is_empty() {
        tracing::info!("reload: configuration unchanged");
        return serde_json::json!({"ok": true, "applied": [], "needs_restart": []});
    }
    let registry = match voxd::provider::Registry::from_config(&new) {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => {
            tracing::error!(error = %e, "reload refused: providers cannot be built; nothing changed");
            return refused(format!("providers cannot be built: {e}"));
        }
    };
    engine.reload(&new, registry);
    if plan.applied.iter().any(|k| k == "logging.level") {
        if let Some(set) = set_log_level {
            if let Err(e) = set(new.logging.level.as_str()) {
                tracing::warn!(error = %e, "reload: cannot change the log level");
            }
        }
    }
    if !plan.needs_restart.is_empty() {
        tracing::warn!(keys = ?plan.needs_restart, "reload: these changes need a restart and were not applied");
    }
    tracing::info!(applied = ?plan.applied, "reload: applied to new calls");
    // What runs now: the applied blocks from the file, the rest as started.
    current.barge_in = new.barge_in.clone();
    current.streaming = new.streaming.clone();
    current.providers = new.providers.clone();
    current.agents = new.agents.clone();
    current.provider_failure = new.provider_failure.clone();
    current.default_provider = new.default_provider;
    current.logging.level = new.logging.level;
    serde_json::json!({"ok": true, "applied": plan.applied, "needs_restart": plan.needs_restart})
}
