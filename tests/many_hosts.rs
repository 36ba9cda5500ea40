//! Many hosts, tested (issue 6 item 7): two `voxd serve` processes behind a real
//! HAProxy on loopback, configured with the `defaults` and `backend
//! voxd_audiosocket` settings of `deploy/haproxy/haproxy.cfg` (leastconn, health
//! check on `/ready`). AudioSocket calls run through HAProxy; one voxd gets SIGTERM
//! while calls run on it. The test shows: its running calls keep getting audio
//! until they end, every call made after HAProxy has seen its 503 lands on the
//! other voxd, the drained voxd exits 0 once its calls have ended, and no call is
//! lost (each call hears back all the audio it sent, and no connection is reset or
//! closed by voxd).
//!
//! Needs `haproxy` (Debian package `haproxy`; `.ci/run` installs it). No timing
//! asserts: every wait is an until-deadline for liveness only.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Generous deadline of every wait.
const LIMIT: Duration = Duration::from_secs(45);
/// Samples in one 20 ms slin16 frame.
const FRAME_SAMPLES: usize = 320;
/// Calls opened in each phase.
const CALLS: usize = 4;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, however it ends.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {}", self.name);
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Poll `f` until it returns `Some`, or fail naming `what`.
fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.0 GET on loopback: status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        code,
        if chunked {
            dechunk(body)?
        } else {
            body.to_string()
        },
    ))
}

/// The body of a `Transfer-Encoding: chunked` response (HAProxy's stats page uses
/// it even for HTTP/1.0 requests).
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(after.get(..n)?);
        rest = after.get(n..)?.strip_prefix("\r\n")?;
    }
}

// ---------------------------------------------------------------------------
// voxd

struct Voxd {
    proc: Proc,
    audiosocket: u16,
    health: u16,
}

impl Voxd {
    fn start(dir: &Path, name: &'static str) -> Voxd {
        let (audiosocket, health) = (free_port(), free_port());
        let yaml = format!(
            "default_provider: echo\n\
             audiosocket: {{host: 127.0.0.1, port: {audiosocket}, format: slin16}}\n\
             external_media: {{rtp_host: 127.0.0.1, rtp_port: {}}}\n\
             health: {{host: 127.0.0.1, port: {health}}}\n\
             engine: {{shards: 1, control_threads: 1}}\n\
             barge_in: {{enabled: false}}\n\
             logging: {{level: warn}}\n\
             shutdown: {{drain_seconds: 60}}\n",
            free_port()
        );
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(&cfg, yaml).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_voxd"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env_remove("ASTERISK_ARI_USERNAME")
            .env_remove("ASTERISK_ARI_PASSWORD")
            .env_remove("VOXD_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("voxd starts");
        let v = Voxd {
            proc: Proc { child, name },
            audiosocket,
            health,
        };
        until(&format!("{name} ready"), || {
            http_get(v.health, "/ready").filter(|(c, _)| *c == 200)
        });
        v
    }

    /// `active_calls` from `/health`.
    fn active_calls(&self) -> Option<u64> {
        let (_, body) = http_get(self.health, "/health")?;
        let h: serde_json::Value = serde_json::from_str(&body).ok()?;
        h["active_calls"].as_u64()
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = &mut self.proc.child;
        until(&format!("{} to exit", self.proc.name), || {
            child.try_wait().unwrap()
        })
    }
}

// ---------------------------------------------------------------------------
// HAProxy

/// The body lines (no comments, no blank lines) of section `header` in an HAProxy
/// configuration.
fn section(cfg: &str, header: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in cfg.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            inside = trimmed == header;
            continue;
        }
        if inside {
            out.push(trimmed.to_string());
        }
    }
    assert!(!out.is_empty(), "deploy/haproxy/haproxy.cfg: no `{header}`");
    out
}

struct Haproxy {
    _proc: Proc,
    frontend: u16,
    stats: u16,
}

impl Haproxy {
    /// HAProxy with the shipped `defaults` and backend options, the two voxd as
    /// servers (checked every 200 ms on their health port), and a stats page.
    fn start(dir: &Path, a: &Voxd, b: &Voxd) -> Haproxy {
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg"),
        )
        .unwrap();
        let defaults = section(&shipped, "defaults");
        // The shipped backend as is (its default-server line included), then a
        // short check period, and the two voxd as servers with the shipped server
        // options (`check port 15000` pointed at each one's health port).
        let mut backend = Vec::new();
        let mut server_opts = None;
        for l in section(&shipped, "backend voxd_audiosocket") {
            if l.starts_with("server ") {
                let words: Vec<&str> = l.split_whitespace().collect();
                server_opts.get_or_insert(words[3..].join(" "));
            } else {
                backend.push(l);
            }
        }
        assert!(backend.iter().any(|l| l == "option httpchk GET /ready"));
        let opts = server_opts.expect("deploy/haproxy/haproxy.cfg has servers");
        assert!(opts.contains("port 15000"), "server options: {opts}");
        backend.push("default-server inter 200 fall 2 rise 2".into());
        for (name, v) in [("a", a), ("b", b)] {
            let o = opts.replace("port 15000", &format!("port {}", v.health));
            backend.push(format!("server {name} 127.0.0.1:{} {o}", v.audiosocket));
        }
        let (frontend, stats) = (free_port(), free_port());
        let indent = |ls: &[String]| ls.iter().map(|l| format!("    {l}\n")).collect::<String>();
        let cfg = format!(
            "global\n    maxconn 1000\n\
             defaults\n{}\
             frontend audiosocket\n    bind 127.0.0.1:{frontend}\n    default_backend voxd_audiosocket\n\
             backend voxd_audiosocket\n{}\
             frontend stats\n    mode http\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /stats\n",
            indent(&defaults),
            indent(&backend),
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("haproxy (Debian package haproxy; .ci/run installs it)");
        let h = Haproxy {
            _proc: Proc {
                child,
                name: "haproxy",
            },
            frontend,
            stats,
        };
        until("haproxy to see both voxd up", || {
            let s = h.servers()?;
            let up = |n: &str| s.iter().any(|r| r.name == n && r.status == "UP");
            (up("a") && up("b")).then_some(())
        });
        h
    }

    /// The backend's servers from the stats CSV.
    fn servers(&self) -> Option<Vec<ServerStat>> {
        let (code, csv) = http_get(self.stats, "/stats;csv")?;
        if code != 200 {
            return None;
        }
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = |n: &str| header.iter().position(|h| *h == n);
        let (px, sv, status, stot) = (col("pxname")?, col("svname")?, col("status")?, col("stot")?);
        let mut out = Vec::new();
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            if f.len() > stot && f[px] == "voxd_audiosocket" && (f[sv] == "a" || f[sv] == "b") {
                out.push(ServerStat {
                    name: f[sv].to_string(),
                    status: f[status].to_string(),
                    sessions_total: f[stot].parse().ok()?,
                });
            }
        }
        (out.len() == 2).then_some(out)
    }

    fn server(&self, name: &str) -> Option<ServerStat> {
        self.servers()?.into_iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone)]
struct ServerStat {
    name: String,
    /// `UP`, `DOWN`, `UP 1/2` (going down), ...
    status: String,
    /// Connections HAProxy ever sent to this server.
    sessions_total: u64,
}

// ---------------------------------------------------------------------------
// An AudioSocket caller, as Asterisk: UUID, then one 20 ms slin16 frame every 20 ms.

/// What one call saw.
#[derive(Debug)]
struct CallResult {
    id: usize,
    /// Samples of the (never zero) caller tone sent.
    tone_sent: u64,
    /// Non-zero samples voxd sent back (the echo agent returns the tone).
    tone_back: u64,
    /// Frames received.
    frames: u64,
    /// What went wrong, if anything (reset, early close by voxd, bad frame, stall).
    error: Option<String>,
}

struct Call {
    /// Set by the test: stop talking, wait for the echo to come back, hang up.
    hang_up: Arc<AtomicBool>,
    /// Frames received so far.
    frames: Arc<AtomicU64>,
    thread: JoinHandle<CallResult>,
}

/// One frame of the tone: a square wave, never zero, so voxd's silence frames
/// are told apart.
fn tone_frame() -> Vec<u8> {
    let mut f = vec![0x12, 0x02, 0x80];
    for i in 0..FRAME_SAMPLES {
        let v: i16 = if (i / 20) % 2 == 0 { 2000 } else { -2000 };
        f.extend_from_slice(&v.to_le_bytes());
    }
    f
}

fn silence_frame() -> Vec<u8> {
    let mut f = vec![0x12, 0x02, 0x80];
    f.resize(3 + 2 * FRAME_SAMPLES, 0);
    f
}

impl Call {
    fn start(id: usize, port: u16) -> Call {
        let hang_up = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let (h, fr) = (hang_up.clone(), frames.clone());
        let thread = std::thread::spawn(move || run_call(id, port, h, fr));
        Call {
            hang_up,
            frames,
            thread,
        }
    }

    fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

fn run_call(id: usize, port: u16, hang_up: Arc<AtomicBool>, frames: Arc<AtomicU64>) -> CallResult {
    let mut result = CallResult {
        id,
        tone_sent: 0,
        tone_back: 0,
        frames: 0,
        error: None,
    };
    let mut sock = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => {
            result.error = Some(format!("connect: {e}"));
            return result;
        }
    };
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = sock.try_clone().unwrap();
    let tone_sent = Arc::new(AtomicU64::new(0));
    let tone_back = Arc::new(AtomicU64::new(0));
    let hung_up = Arc::new(AtomicBool::new(false));

    // Writer: UUID, tone frames until told to hang up, then silence until the echo
    // of all the tone is back (or no more of it came for 3 s), then close the write
    // side (EOF is Asterisk's hang-up).
    let w = {
        let (sent, back, hung_up) = (tone_sent.clone(), tone_back.clone(), hung_up.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut hello = vec![0x01, 0x00, 0x10];
            hello.extend_from_slice(&[0x5a; 15]);
            hello.push(id as u8);
            writer
                .write_all(&hello)
                .map_err(|e| format!("write uuid: {e}"))?;
            let (tone, silence) = (tone_frame(), silence_frame());
            let mut next = Instant::now();
            // After the hang-up request: (echo received so far, when it last grew).
            let mut tail: Option<(u64, Instant)> = None;
            loop {
                let talking = !hang_up.load(Ordering::Relaxed);
                if !talking {
                    let got = back.load(Ordering::Relaxed);
                    let (seen, since) = tail.get_or_insert((got, Instant::now()));
                    if got > *seen {
                        (*seen, *since) = (got, Instant::now());
                    }
                    let all_back = got >= sent.load(Ordering::Relaxed);
                    if all_back || since.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                }
                let f = if talking { &tone } else { &silence };
                writer
                    .write_all(f)
                    .map_err(|e| format!("write frame: {e}"))?;
                if talking {
                    sent.fetch_add(FRAME_SAMPLES as u64, Ordering::Relaxed);
                }
                next += Duration::from_millis(20);
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else if now - next > Duration::from_millis(100) {
                    next = now; // late (busy machine): no burst to catch up
                }
            }
            hung_up.store(true, Ordering::Relaxed);
            writer
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("hang up: {e}"))
        })
    };

    // Reader: every frame voxd sends, until it closes after our hang-up.
    let mut header = [0u8; 3];
    let mut payload = vec![0u8; 65535];
    loop {
        match sock.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                if !hung_up.load(Ordering::Relaxed) {
                    result.error = Some("voxd closed the call before the caller hung up".into());
                }
                break;
            }
            Err(e) => {
                result.error = Some(format!("read: {e}"));
                break;
            }
        }
        let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
        if let Err(e) = sock.read_exact(&mut payload[..len]) {
            result.error = Some(format!("read payload: {e}"));
            break;
        }
        if header[0] == 0x00 {
            if !hung_up.load(Ordering::Relaxed) {
                result.error = Some("voxd sent a hang-up frame".into());
            }
            break;
        }
        if !(0x10..=0x18).contains(&header[0]) || len == 0 || len % 2 != 0 {
            result.error = Some(format!("bad frame: kind {:#04x}, {len} bytes", header[0]));
            break;
        }
        let nonzero = payload[..len]
            .chunks_exact(2)
            .filter(|s| s[0] != 0 || s[1] != 0)
            .count() as u64;
        tone_back.fetch_add(nonzero, Ordering::Relaxed);
        result.frames += 1;
        frames.fetch_add(1, Ordering::Relaxed);
    }
    // A reader that stopped early makes the writer fail or run out its tail.
    let _ = sock.shutdown(Shutdown::Both);
    if let Err(e) = w.join().expect("writer thread") {
        result.error.get_or_insert(e);
    }
    result.tone_sent = tone_sent.load(Ordering::Relaxed);
    result.tone_back = tone_back.load(Ordering::Relaxed);
    result
}

/// Hang up `calls` and collect what they saw.
fn hang_up(calls: Vec<Call>) -> Vec<CallResult> {
    for c in &calls {
        c.hang_up.store(true, Ordering::Relaxed);
    }
    calls
        .into_iter()
        .map(|c| c.thread.join().expect("call thread"))
        .collect()
}

fn assert_no_call_lost(results: &[CallResult], logs: &Path) {
    for r in results {
        assert!(
            r.error.is_none(),
            "call {}: {} (logs in {})",
            r.id,
            r.error.as_deref().unwrap_or(""),
            logs.display()
        );
        assert!(r.tone_sent > 0 && r.frames > 0, "call {}: {r:?}", r.id);
        // The echo agent returns the caller's audio bit for bit; allow 5% for
        // anything trimmed at the edges.
        assert!(
            r.tone_back * 100 >= r.tone_sent * 95,
            "call {}: heard back {} of {} tone samples",
            r.id,
            r.tone_back,
            r.tone_sent
        );
    }
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("voxd-many-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn draining_one_host_behind_haproxy_loses_no_call() {
    let dir = scratch();
    let mut a = Voxd::start(&dir, "voxd-a");
    let mut b = Voxd::start(&dir, "voxd-b");
    let lb = Haproxy::start(&dir, &a, &b);

    // Phase 1: calls through HAProxy spread over both hosts (leastconn).
    let first: Vec<Call> = (0..CALLS).map(|i| Call::start(i, lb.frontend)).collect();
    let (a1, b1) = until("the first calls to be up on the two hosts", || {
        let (x, y) = (a.active_calls()?, b.active_calls()?);
        (x + y == CALLS as u64).then_some((x, y))
    });
    assert!(
        a1 > 0 && b1 > 0,
        "leastconn spreads the calls: a {a1}, b {b1}"
    );
    until("audio on every first call", || {
        first.iter().all(|c| c.frames() >= 25).then_some(())
    });

    // Drain host a while its calls run.
    let at_term: Vec<u64> = first.iter().map(Call::frames).collect();
    a.proc.sigterm();
    until("a's /ready to answer 503", || {
        http_get(a.health, "/ready")
            .filter(|(c, body)| *c == 503 && body.contains("\"draining\":true"))
    });
    until("haproxy to take a out", || {
        lb.server("a").filter(|s| s.status.starts_with("DOWN"))
    });
    let a_sessions = lb.server("a").unwrap().sessions_total;
    let b_sessions = lb.server("b").unwrap().sessions_total;

    // Phase 2: new calls all land on b.
    let second: Vec<Call> = (CALLS..2 * CALLS)
        .map(|i| Call::start(i, lb.frontend))
        .collect();
    until("the new calls to be up on b", || {
        (b.active_calls()? == b1 + CALLS as u64).then_some(())
    });
    until("audio on every new call", || {
        second.iter().all(|c| c.frames() >= 25).then_some(())
    });
    assert_eq!(
        a.active_calls(),
        Some(a1),
        "a took no new call and lost none"
    );
    assert_eq!(
        lb.server("a").unwrap().sessions_total,
        a_sessions,
        "haproxy sent nothing to the draining host"
    );
    assert!(lb.server("b").unwrap().sessions_total >= b_sessions + CALLS as u64);

    // The calls on the draining host go on: every first call keeps getting audio.
    until("audio on every first call after the SIGTERM", || {
        first
            .iter()
            .zip(&at_term)
            .all(|(c, t)| c.frames() >= t + 50)
            .then_some(())
    });
    assert!(a.proc.running(), "a drains while it has calls");

    // The first calls end; a exits 0 (well before its 60 s drain limit: it leaves
    // when its last call ends).
    let mut results = hang_up(first);
    let status = a.wait_exit();
    assert!(status.success(), "the drained voxd exits 0: {status:?}");

    // b carries on alone; its calls end normally.
    results.extend(hang_up(second));
    for r in &results {
        eprintln!(
            "call {}: {} frames back, tone {}/{} samples{}",
            r.id,
            r.frames,
            r.tone_back,
            r.tone_sent,
            r.error
                .as_deref()
                .map(|e| format!(", {e}"))
                .unwrap_or_default()
        );
    }
    eprintln!(
        "a had {a1} calls when drained; b {b1} + {CALLS} new; haproxy sessions a {a_sessions}, b {b_sessions} -> {:?}",
        lb.server("b").map(|s| s.sessions_total)
    );
    assert_no_call_lost(&results, &dir);
    until("b to have no call left", || {
        (b.active_calls()? == 0).then_some(())
    });
    b.proc.sigterm();
    let status = b.wait_exit();
    assert!(status.success(), "b exits 0: {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
