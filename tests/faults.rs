//! The fault suite: a real `voxd serve` (the built binary, a child process) against
//! the ARI emulator and the provider protocol simulators running in this test, with
//! the faults production sees: the ARI WebSocket dropped (with and without a close
//! frame) and Asterisk "restarting" (every channel and bridge forgotten), providers
//! that close, stall, send garbage or errors mid-response, and voxd itself SIGKILLed
//! under load and started again on the same ports, and an audit log on a full disk
//! (`/dev/full`: every write fails with ENOSPC).
//!
//! Each case ends by checking that nothing leaked, from outside the process:
//! `/metrics` (active calls, ARI calls, AudioSocket connections, shard calls, tokio
//! tasks), `/sessions`, the emulator (no channel, bridge or media leg left), and
//! voxd's own `/proc/<pid>/fd` back to the baseline taken before the faults (sockets
//! to ARI are counted apart: the REST client's keep-alive pool may hold a varying
//! number of idle connections, each with its connection task). Behaviour only:
//! waits are bounded by generous limits; the restart-to-ready time is printed for
//! perf/RESULTS.md and only bounded loosely.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use voxd::loadgen::ari_emu::{AriEmulator, CallSpec, CallerSignal, EmuConfig};
use voxd::loadgen::provsim::{Fault, ProviderSim, ProviderSimConfig, SimProtocol};
use voxd::loadgen::signal::SignalConfig;

const BIN: &str = env!("CARGO_BIN_EXE_voxd");
/// Liveness limit of every wait (never a timing assertion).
const LIMIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "fault-suite-admin-token";
const KEY: &str = "sk-fault-suite-0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("voxd-faults-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `voxd serve` child; killed (SIGKILL) when dropped.
struct Voxd {
    child: Child,
    health: u16,
    log: PathBuf,
}

impl Voxd {
    fn spawn(dir: &Path, name: &str, yaml: &str, health: u16, env: &[(&str, &str)]) -> Voxd {
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(&cfg, yaml).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&cfg)
            .env_remove("ASTERISK_ARI_USERNAME")
            .env_remove("ASTERISK_ARI_PASSWORD")
            .env_remove("OPENAI_API_KEY")
            .env_remove("VOXD_LOG")
            .env("HEALTH_API_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Voxd {
            child: cmd.spawn().expect("voxd starts"),
            health,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.health)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Voxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client that keeps no idle connection (so voxd's count of HTTP
/// connections is the same at every sample).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn get(url: &str, token: bool) -> Option<(u16, String)> {
    let mut req = http().get(url);
    if token {
        req = req.bearer_auth(TOKEN);
    }
    let r = req.send().await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.ok()?))
}

/// Polls `cond` every 25 ms until it holds; fails after LIMIT, printing `detail`.
async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut next_note = start + Duration::from_secs(10);
    loop {
        match cond().await {
            Ok(()) => return,
            Err(detail) => {
                assert!(
                    start.elapsed() < LIMIT,
                    "timed out waiting for {what}: {detail}"
                );
                if Instant::now() >= next_note {
                    eprintln!(
                        "still waiting for {what} after {:?}: {detail}",
                        start.elapsed()
                    );
                    next_note += Duration::from_secs(5);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_ready(v: &Voxd) {
    let url = format!("{}/ready", v.base());
    until("/ready 200", || async {
        match get(&url, false).await {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// `/metrics` as family name -> value summed over labels.
async fn metrics(v: &Voxd) -> BTreeMap<String, f64> {
    let (code, text) = get(&format!("{}/metrics", v.base()), false)
        .await
        .expect("/metrics answers");
    assert_eq!(code, 200);
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap().to_string();
        if let Ok(x) = value.parse::<f64>() {
            *out.entry(name).or_insert(0.0) += x;
        }
    }
    out
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// The socket inode -> (local port, remote port, TCP state) of every TCP socket
/// in voxd's network namespace.
fn tcp_table(pid: u32) -> BTreeMap<u64, (u16, u16, u8)> {
    let mut t = BTreeMap::new();
    for f in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let port =
                |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0);
            let state = u8::from_str_radix(cols[3], 16).unwrap_or(0);
            if let Ok(inode) = cols[9].parse::<u64>() {
                t.insert(inode, (port(cols[1]), port(cols[2]), state));
            }
        }
    }
    t
}

/// voxd's open file descriptors, sorted by what they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fds {
    total: usize,
    /// TCP sockets to Asterisk's ARI port (events WebSocket + REST pool).
    ari: usize,
    /// TCP sockets on the AudioSocket port other than the listener.
    audiosocket: usize,
    /// TCP sockets to the provider simulator.
    provider: usize,
    /// TCP sockets on the health port other than the listener (our own scrapes).
    health: usize,
}

impl Fds {
    /// The descriptors that must come back exactly: everything but ARI's pool and
    /// our own HTTP scrapes.
    fn fixed(&self) -> usize {
        self.total - self.ari - self.health
    }
}

struct Ports {
    audiosocket: u16,
    health: u16,
    ari: u16,
    provider: u16,
}

fn fds(pid: u32, p: &Ports) -> Fds {
    let table = tcp_table(pid);
    let mut out = Fds::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        out.total += 1;
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        let Some(inode) = t
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(&(local, remote, state)) = table.get(&inode) else {
            continue;
        };
        const LISTEN: u8 = 0x0A;
        if state == LISTEN {
            continue;
        }
        if remote == p.ari && p.ari != 0 {
            out.ari += 1;
        } else if local == p.audiosocket {
            out.audiosocket += 1;
        } else if remote == p.provider && p.provider != 0 {
            out.provider += 1;
        } else if local == p.health {
            out.health += 1;
        }
    }
    out
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What must be back where it was once every call has ended.
#[derive(Debug, Clone)]
struct EndState {
    fds: Fds,
    threads: usize,
    tasks: f64,
}

async fn end_state(v: &Voxd, p: &Ports) -> EndState {
    let m = metrics(v).await;
    EndState {
        fds: fds(v.pid(), p),
        threads: threads(v.pid()),
        tasks: metric(&m, "voxd_tokio_alive_tasks"),
    }
}

/// The idle state of voxd once no call is up: no call in the metrics, no media or
/// provider socket, and the same figures in two samples 300 ms apart.
async fn baseline(v: &Voxd, p: &Ports) -> EndState {
    let mut last: Option<EndState> = None;
    let deadline = Instant::now() + LIMIT;
    loop {
        let m = metrics(v).await;
        let idle = metric(&m, "ai_agent_active_calls") == 0.0
            && metric(&m, "voxd_ari_calls") == 0.0
            && metric(&m, "ai_agent_audiosocket_active_connections") == 0.0;
        let now = end_state(v, p).await;
        if idle && now.fds.audiosocket == 0 && now.fds.provider == 0 {
            if let Some(l) = &last {
                if l.fds.fixed() == now.fds.fixed()
                    && l.threads == now.threads
                    && l.tasks - l.fds.ari as f64 == now.tasks - now.fds.ari as f64
                {
                    return now;
                }
            }
            last = Some(now);
        } else {
            last = None;
        }
        assert!(Instant::now() < deadline, "voxd never idle: {m:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until no call, session, connection, channel or bridge is left and voxd's
/// descriptors, threads and tasks are back at `base`; returns what it saw.
async fn assert_nothing_leaked(
    what: &str,
    v: &Voxd,
    p: &Ports,
    emu: Option<&AriEmulator>,
    base: &EndState,
) -> EndState {
    let sessions_url = format!("{}/sessions", v.base());
    until(&format!("{what}: nothing left"), || async {
        let mut problems = Vec::new();
        if let Some(emu) = emu {
            let c = emu.counters();
            if c.live_channels + c.live_bridges + c.live_legs != 0 {
                problems.push(format!(
                    "emulator: {} channel(s), {} bridge(s), {} leg(s)",
                    c.live_channels, c.live_bridges, c.live_legs
                ));
            }
        }
        let m = metrics(v).await;
        for name in [
            "ai_agent_active_calls",
            "voxd_ari_calls",
            "ai_agent_audiosocket_active_connections",
            "voxd_shard_calls",
        ] {
            if metric(&m, name) != 0.0 {
                problems.push(format!("{name} = {}", metric(&m, name)));
            }
        }
        match get(&sessions_url, true).await {
            Some((200, body)) if body.contains("\"count\":0") => {}
            other => problems.push(format!("/sessions: {other:?}")),
        }
        let now = end_state(v, p).await;
        if now.fds.audiosocket != 0 || now.fds.provider != 0 {
            problems.push(format!("sockets left: {:?}", now.fds));
        }
        if now.fds.fixed() != base.fds.fixed() {
            problems.push(format!("fds {:?}, baseline {:?}", now.fds, base.fds));
        }
        if now.threads != base.threads {
            problems.push(format!(
                "threads {}, baseline {}",
                now.threads, base.threads
            ));
        }
        // Each pooled ARI connection has its connection task; everything else
        // must be back exactly.
        let pool_delta = now.fds.ari as f64 - base.fds.ari as f64;
        if now.tasks - pool_delta != base.tasks {
            problems.push(format!(
                "tokio tasks {} (ARI sockets {}), baseline {} (ARI sockets {})",
                now.tasks, now.fds.ari, base.tasks, base.fds.ari
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    })
    .await;
    let now = end_state(v, p).await;
    eprintln!("{what}: clean: {now:?} (baseline {base:?})");
    now
}

/// Callers that talk in turns (about a second of speech, then two of silence),
/// so a provider's server-side VAD sees turns end.
fn emu_cfg() -> EmuConfig {
    EmuConfig {
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
    }
}

fn voxd_yaml(as_port: u16, health: u16, ari: u16, extra: &str) -> String {
    voxd_yaml_logging(as_port, health, ari, "{level: info}", extra)
}

/// [`voxd_yaml`] with its own `logging` block.
fn voxd_yaml_logging(as_port: u16, health: u16, ari: u16, logging: &str, extra: &str) -> String {
    format!(
        "audio_transport: audiosocket\n\
         audiosocket: {{host: 127.0.0.1, port: {as_port}, format: slin16}}\n\
         external_media: {{rtp_host: 127.0.0.1, rtp_port: {}, codec: ulaw}}\n\
         health: {{host: 127.0.0.1, port: {health}}}\n\
         asterisk: {{enabled: true, host: 127.0.0.1, port: {ari}}}\n\
         engine: {{shards: 1}}\n\
         barge_in: {{enabled: false}}\n\
         logging: {logging}\n{extra}",
        free_port()
    )
}

const ARI_ENV: [(&str, &str); 2] = [
    ("ASTERISK_ARI_USERNAME", "asterisk"),
    ("ASTERISK_ARI_PASSWORD", "asterisk"),
];

fn voiced(emu: &AriEmulator, id: &str) -> u64 {
    emu.media_stats(id).map_or(0, |m| m.voiced_frames_received)
}

async fn until_emu(what: &str, mut cond: impl FnMut() -> bool) {
    until(what, || {
        let ok = cond();
        async move {
            if ok {
                Ok(())
            } else {
                Err(String::new())
            }
        }
    })
    .await;
}

/// Places `n` callers and waits until each hears the agent.
async fn calls_up(emu: &AriEmulator, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n)
        .map(|_| emu.place_call(CallSpec::default()).expect("call placed"))
        .collect();
    for id in &ids {
        until_emu("agent audio reaches the caller", || voiced(emu, id) > 10).await;
    }
    ids
}

async fn ari_connected(v: &Voxd, want: bool, reconnects: f64) {
    until("voxd_ari_connected", || async {
        let m = metrics(v).await;
        let c = metric(&m, "voxd_ari_connected") == 1.0;
        let r = metric(&m, "voxd_ari_reconnects_total");
        if c == want && r >= reconnects {
            Ok(())
        } else {
            Err(format!("connected {c}, reconnects {r}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_drops_and_an_asterisk_restart_leak_nothing() {
    let dir = temp_dir("ari");
    let emu = AriEmulator::start(emu_cfg()).await.expect("emulator");
    let ports = Ports {
        audiosocket: free_port(),
        health: free_port(),
        ari: emu.addr().port(),
        provider: 0,
    };
    let yaml = voxd_yaml(
        ports.audiosocket,
        ports.health,
        ports.ari,
        "default_provider: echo\n",
    );
    let v = Voxd::spawn(&dir, "voxd", &yaml, ports.health, &ARI_ENV);
    wait_ready(&v).await;
    assert!(
        emu.wait_app_registered("asterisk-ai-voice-agent", LIMIT)
            .await
    );

    // Warm up (first call, REST pool), then the baseline.
    let ids = calls_up(&emu, 1).await;
    emu.hangup_caller(&ids[0]).unwrap();
    until_emu("warm-up call gone", || emu.counters().live_channels == 0).await;
    let base = baseline(&v, &ports).await;
    eprintln!("baseline: {base:?}");

    // 1. The events WebSocket closes (close frame), then breaks (no close frame):
    // calls keep their media, voxd reconnects, hang-ups still tear down.
    for (round, graceful) in [(1.0, true), (2.0, false)] {
        let ids = calls_up(&emu, 4).await;
        let n = if graceful {
            emu.drop_websockets()
        } else {
            emu.abort_websockets()
        };
        assert!(n >= 1);
        ari_connected(&v, true, round).await;
        for id in &ids {
            let before = voiced(&emu, id);
            until_emu("audio flows across the ARI drop", || {
                voiced(&emu, id) > before + 10
            })
            .await;
        }
        for id in &ids {
            emu.hangup_caller(id).unwrap();
        }
        let what = if graceful {
            "ARI WebSocket closed"
        } else {
            "ARI WebSocket broken"
        };
        assert_nothing_leaked(what, &v, &ports, Some(&emu), &base).await;
    }

    // 2. Asterisk restarts: every channel and bridge is gone, no event says so.
    // voxd reconnects, finds its callers gone and ends their calls.
    let ids = calls_up(&emu, 4).await;
    let torn_before = metric(&metrics(&v).await, "ai_agent_calls_total");
    emu.restart(Duration::from_millis(500)).await.unwrap();
    ari_connected(&v, true, 3.0).await;
    until("the lost calls are ended", || async {
        let m = metrics(&v).await;
        let ended = metric(&m, "ai_agent_calls_total") - torn_before;
        if ended >= ids.len() as f64 && metric(&m, "voxd_ari_calls") == 0.0 {
            Ok(())
        } else {
            Err(format!(
                "ended {ended}, ari calls {}",
                metric(&m, "voxd_ari_calls")
            ))
        }
    })
    .await;
    assert_nothing_leaked("Asterisk restarted", &v, &ports, Some(&emu), &base).await;

    // 3. The restarted Asterisk's calls work.
    let ids = calls_up(&emu, 2).await;
    for id in &ids {
        emu.hangup_caller(id).unwrap();
    }
    assert_nothing_leaked("after the restart", &v, &ports, Some(&emu), &base).await;
    let report = emu.stop().await;
    assert!(report.leaked_channels.is_empty(), "{report:?}");
    assert!(report.leaked_bridges.is_empty(), "{report:?}");
    let log = v.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

async fn provider_sim() -> ProviderSim {
    let mut cfg = ProviderSimConfig::for_protocol(SimProtocol::OpenAi);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api_key = Some(KEY.into());
    cfg.think_ms = 200;
    cfg.reply_ms = 1200;
    cfg.greeting_ms = 0;
    cfg.fault_after_ms = 300;
    ProviderSim::start(cfg).await.expect("simulator starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_faults_mid_response_leak_nothing() {
    let dir = temp_dir("provider");
    let emu = AriEmulator::start(emu_cfg()).await.expect("emulator");
    let sim = provider_sim().await;
    let ports = Ports {
        audiosocket: free_port(),
        health: free_port(),
        ari: emu.addr().port(),
        provider: sim.local_addr().port(),
    };
    let extra = format!(
        "default_provider: openai_realtime\n\
         providers: {{sim: {{enabled: false}}, openai_realtime: {{enabled: true, base_url: '{}'}}}}\n",
        sim.url()
    );
    let yaml = voxd_yaml(ports.audiosocket, ports.health, ports.ari, &extra);
    let mut env = ARI_ENV.to_vec();
    env.push(("OPENAI_API_KEY", KEY));
    let v = Voxd::spawn(&dir, "voxd", &yaml, ports.health, &env);
    wait_ready(&v).await;
    assert!(
        emu.wait_app_registered("asterisk-ai-voice-agent", LIMIT)
            .await
    );

    let ids = calls_up(&emu, 1).await;
    emu.hangup_caller(&ids[0]).unwrap();
    until_emu("warm-up call gone", || emu.counters().live_channels == 0).await;
    let base = baseline(&v, &ports).await;
    eprintln!("baseline: {base:?}");

    // (fault, whether voxd itself ends the calls: one reconnect fails the same way,
    // then the failure policy announces and hangs up)
    let faults = [
        (Fault::CloseMidResponse, true),
        (Fault::MalformedJson, true),
        (Fault::Oversize, true),
        (Fault::ErrorEvent { fatal: true }, true),
        (Fault::ErrorEvent { fatal: false }, false),
        (Fault::Stall, false),
        (Fault::SlowRead, false),
    ];
    let mut survived = 0;
    for (fault, voxd_hangs_up) in faults {
        sim.set_fault(Some(fault));
        let t = Instant::now();
        let conns_before = sim.stats().connections;
        let ids: Vec<String> = (0..3)
            .map(|_| emu.place_call(CallSpec::default()).unwrap())
            .collect();
        if voxd_hangs_up {
            until_emu(&format!("{fault:?}: voxd hangs the callers up"), || {
                ids.iter().all(|id| emu.channel_json(id).is_none())
            })
            .await;
            let played = emu
                .requests()
                .iter()
                .filter(|r| r.path.ends_with("/play") && ids.iter().any(|id| r.path.contains(id)))
                .count();
            assert_eq!(played, ids.len(), "{fault:?}: the failure prompt per call");
            eprintln!("{fault:?}: hung up after {} ms", t.elapsed().as_millis());
            assert_eq!(
                sim.stats().connections - conns_before,
                2 * ids.len() as u64,
                "{fault:?}: first try and one reconnect per call"
            );
        } else {
            for id in &ids {
                until_emu(&format!("{fault:?}: media flows"), || {
                    emu.media_stats(id).is_some_and(|m| m.frames_received > 150)
                })
                .await;
            }
            for id in &ids {
                // voxd may have ended it already (a provider timeout): either is fine.
                let _ = emu.hangup_caller(id);
            }
        }
        assert_nothing_leaked(&format!("{fault:?}"), &v, &ports, Some(&emu), &base).await;
        eprintln!("{fault:?}: {} ms", t.elapsed().as_millis());
        survived += 1;
    }
    sim.set_fault(None);
    let ids = calls_up(&emu, 1).await;
    emu.hangup_caller(&ids[0]).unwrap();
    assert_nothing_leaked(
        "a healthy call after the faults",
        &v,
        &ports,
        Some(&emu),
        &base,
    )
    .await;
    eprintln!("provider faults survived: {survived} kinds x 3 calls");
    let stats = sim.stop().await;
    assert_eq!(stats.auth_failures, 0);
    emu.stop().await;
    let log = v.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains(KEY), "the key reached the log");
}

/// One AudioSocket call from this test: UUID, then `frames` 20 ms slin16 frames,
/// each answered by a frame from voxd.
fn audiosocket_call(port: u16, uuid: u8, frames: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut hello = vec![0x01, 0, 16];
    hello.extend_from_slice(&[uuid; 16]);
    s.write_all(&hello).unwrap();
    for _ in 0..frames {
        let mut f = vec![0x12, 0x02, 0x80];
        f.extend((0..320).flat_map(|i: i32| (((i % 40) - 20) as i16 * 500).to_le_bytes()));
        s.write_all(&f).unwrap();
        let mut h = [0u8; 3];
        s.read_exact(&mut h).expect("voxd answers the call");
        let mut p = vec![0u8; usize::from(u16::from_be_bytes([h[1], h[2]]))];
        s.read_exact(&mut p).unwrap();
        assert_ne!(h[0], 0x00, "voxd hung up the new call");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_then_a_restart_is_ready_and_takes_calls() {
    let dir = temp_dir("sigkill");
    let ports = Ports {
        audiosocket: free_port(),
        health: free_port(),
        ari: 0,
        provider: 0,
    };
    let yaml = format!(
        "default_provider: sim\n\
         audiosocket: {{host: 127.0.0.1, port: {}, format: slin16}}\n\
         external_media: {{rtp_host: 127.0.0.1, rtp_port: {}, codec: ulaw}}\n\
         health: {{host: 127.0.0.1, port: {}}}\n\
         providers: {{sim: {{think_ms: 100, reply_ms: 600}}}}\n\
         engine: {{shards: 1}}\n\
         logging: {{level: info}}\n",
        ports.audiosocket,
        free_port(),
        ports.health
    );
    let calls = 50;
    let mut v = Voxd::spawn(&dir, "voxd-0", &yaml, ports.health, &[]);
    wait_ready(&v).await;
    let mut times = Vec::new();
    for round in 1..=3 {
        // Calls in flight, with churn.
        let mut loadgen = Command::new(BIN)
            .args(["loadgen", "--port"])
            .arg(ports.audiosocket.to_string())
            .args(["--calls", &calls.to_string(), "--rate", "200"])
            .args(["--seconds", "120", "--hold", "3000", "-q"])
            .args(["--think-ms", "100", "--seed", &round.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("loadgen starts");
        until("calls in flight", || async {
            let a = metric(&metrics(&v).await, "ai_agent_active_calls");
            if a >= (calls - 5) as f64 {
                Ok(())
            } else {
                Err(format!("{a} active"))
            }
        })
        .await;

        // SIGKILL: no drain, the calls in flight are lost. Then the same command
        // on the same ports.
        v.kill();
        let t0 = Instant::now();
        v = Voxd::spawn(&dir, &format!("voxd-{round}"), &yaml, ports.health, &[]);
        let url = format!("{}/ready", v.base());
        let ready_after = loop {
            if let Some((200, _)) = get(&url, false).await {
                break t0.elapsed();
            }
            if let Ok(Some(st)) = v.child.try_wait() {
                panic!("voxd exited on restart: {st:?}: {}", v.log_text());
            }
            assert!(t0.elapsed() < LIMIT, "never ready: {}", v.log_text());
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        eprintln!(
            "round {round}: SIGKILL with {calls} calls in flight; restart to /ready 200 in {} ms",
            ready_after.as_millis()
        );
        times.push(ready_after);
        assert!(
            ready_after <= Duration::from_secs(10),
            "restart to ready took {ready_after:?}"
        );

        // A new call works end to end while the load generator goes on.
        let port = ports.audiosocket;
        tokio::task::spawn_blocking(move || audiosocket_call(port, 0x70 + round, 25))
            .await
            .unwrap();
        let _ = loadgen.kill();
        let _ = loadgen.wait();
    }
    // After the last restart: once the load is gone the process is idle, and a
    // call on it leaves nothing behind.
    let base = baseline(&v, &ports).await;
    let port = ports.audiosocket;
    tokio::task::spawn_blocking(move || audiosocket_call(port, 0x7f, 25))
        .await
        .unwrap();
    assert_nothing_leaked("after the SIGKILL restarts", &v, &ports, None, &base).await;
    eprintln!(
        "restart to ready, ms: {:?}",
        times.iter().map(|t| t.as_millis()).collect::<Vec<_>>()
    );
    let log = v.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// The audit log on a full disk (`/dev/full`: every write fails with ENOSPC):
/// voxd keeps answering calls, says so in one warning (at most one a minute),
/// counts every lost record, stays ready, leaks nothing and drains on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_on_a_full_disk_voxd_keeps_serving() {
    let dir = temp_dir("audit-full");
    let emu = AriEmulator::start(emu_cfg()).await.expect("emulator");
    let ports = Ports {
        audiosocket: free_port(),
        health: free_port(),
        ari: emu.addr().port(),
        provider: 0,
    };
    let yaml = voxd_yaml_logging(
        ports.audiosocket,
        ports.health,
        ports.ari,
        "{level: info, audit_path: /dev/full}",
        "default_provider: echo\n",
    );
    let started = Instant::now();
    let mut v = Voxd::spawn(&dir, "voxd", &yaml, ports.health, &ARI_ENV);
    wait_ready(&v).await;
    assert!(
        emu.wait_app_registered("asterisk-ai-voice-agent", LIMIT)
            .await
    );
    let ids = calls_up(&emu, 1).await;
    emu.hangup_caller(&ids[0]).unwrap();
    until_emu("warm-up call gone", || emu.counters().live_channels == 0).await;
    let base = baseline(&v, &ports).await;

    // Three waves of three calls, each heard the agent, each writing two records
    // that are lost.
    let mut calls = 1;
    for wave in 1..=3 {
        let ids = calls_up(&emu, 3).await;
        calls += ids.len();
        let (code, body) = get(&format!("{}/ready", v.base()), false)
            .await
            .expect("/ready answers");
        assert_eq!(
            code, 200,
            "wave {wave}: /ready with a failing audit log: {body}"
        );
        for id in &ids {
            emu.hangup_caller(id).unwrap();
        }
        assert_nothing_leaked(
            &format!("audit on a full disk, wave {wave}"),
            &v,
            &ports,
            Some(&emu),
            &base,
        )
        .await;
    }
    let lost = (2 * calls) as f64;
    until("every lost audit record counted", || async {
        let m = metrics(&v).await;
        let failed = metric(&m, "voxd_audit_write_errors_total");
        if failed == lost {
            Ok(())
        } else {
            Err(format!("{failed} of {lost}"))
        }
    })
    .await;
    let m = metrics(&v).await;
    assert_eq!(metric(&m, "voxd_audit_records_written_total"), 0.0);
    assert_eq!(metric(&m, "voxd_audit_records_dropped_total"), 0.0);
    assert_eq!(metric(&m, "voxd_ready"), 1.0);
    assert!(metric(&m, "ai_agent_calls_total") >= calls as f64, "{m:?}");

    // One clear warning, not one per record (at most one a minute).
    let log = v.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("audit log write failed"))
        .collect();
    let allowed = 1 + (started.elapsed().as_secs() / 60) as usize;
    assert!(
        !warnings.is_empty() && warnings.len() <= allowed,
        "{} warnings for {lost} lost records (at most {allowed}): {warnings:#?}",
        warnings.len()
    );
    assert!(warnings[0].contains("/dev/full"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("No space left on device"),
        "{}",
        warnings[0]
    );
    assert!(!log.contains("panicked"), "{log}");

    // The failing audit log does not hold up the drain.
    let pid = v.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = v.child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < LIMIT, "voxd did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(status.success(), "{status:?}: {}", v.log_text());
    let report = emu.stop().await;
    assert!(report.leaked_channels.is_empty(), "{report:?}");
    eprintln!(
        "audit on a full disk: {calls} calls served, {lost} records lost and counted, {} warning(s)",
        warnings.len()
    );
}
