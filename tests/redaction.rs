//! Redaction over everything voxd writes: a real `voxd serve` at `trace` level
//! (`logging.level: trace` in the JSON format; `VOXD_LOG=trace`, every crate
//! included, in the human format), with the audit log on, runs whole calls through the ARI emulator and the OpenAI
//! protocol simulator; its admin endpoints are used with right and wrong tokens, a
//! stray AudioSocket connection is refused, and it drains on SIGTERM. Then all of
//! its stdout, stderr and audit log is searched: no secret (the provider key, the
//! ARI user and password, the admin token, the basic-auth header built from them)
//! and, with `logging.pii: false`, no caller number or name and no peer address
//! (the only `ip:port` pairs allowed are voxd's own configured listeners and the
//! configured ARI and provider addresses). The same run with `logging.pii: true`
//! must show the caller number and a peer address (so the search can fail) and
//! still no secret.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use voxd::loadgen::ari_emu::{AriEmulator, CallSpec, CallerSignal, EmuConfig};
use voxd::loadgen::provsim::{ProviderSim, ProviderSimConfig, SimProtocol};
use voxd::loadgen::signal::SignalConfig;

const BIN: &str = env!("CARGO_BIN_EXE_voxd");
const LIMIT: Duration = Duration::from_secs(30);

const KEY: &str = "sk-redact-7f3a9c1e5b2d8e4f";
const ARI_USER: &str = "ari-user-q8z3";
const ARI_PASS: &str = "ari-pass-J4k9w2Xv";
const TOKEN: &str = "admin-token-M3n7p1Rt";
const CALLER_NUMBER: &str = "+15557654321";
const CALLER_NAME: &str = "Zelda Quixote";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The secrets that must appear nowhere, whatever `logging.pii` says, with what
/// each is.
fn secrets() -> Vec<(String, &'static str)> {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{ARI_USER}:{ARI_PASS}"));
    vec![
        (KEY.into(), "the provider API key"),
        // A fragment too: a truncated key in an error message is still a leak.
        (KEY[3..15].into(), "part of the provider API key"),
        (ARI_USER.into(), "the ARI user"),
        (ARI_PASS.into(), "the ARI password"),
        (basic, "the ARI basic-auth header"),
        (TOKEN.into(), "the admin token"),
    ]
}

/// The caller data that must appear nowhere with `logging.pii: false`.
fn caller_data() -> Vec<(String, &'static str)> {
    vec![
        (CALLER_NUMBER.into(), "the caller number"),
        (CALLER_NUMBER[2..].into(), "the caller number's digits"),
        (CALLER_NAME.into(), "the caller name"),
        ("Zelda".into(), "the caller's first name"),
    ]
}

fn forbidden() -> Vec<(String, &'static str)> {
    let mut all = secrets();
    all.extend(caller_data());
    all
}

/// Every `a.b.c.d:port` in `text` whose port is not in `allowed`, with its line.
fn peer_addresses(text: &str, allowed: &[u16]) -> Vec<String> {
    let mut bad = Vec::new();
    for line in text.lines() {
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if !b[i].is_ascii_digit() || (i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.'))
            {
                i += 1;
                continue;
            }
            // Try to read an IPv4 address at i.
            let mut j = i;
            let mut dots = 0;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                if b[j] == b'.' {
                    dots += 1;
                }
                j += 1;
            }
            let ip = &line[i..j];
            if dots == 3 && ip.parse::<std::net::Ipv4Addr>().is_ok() && b.get(j) == Some(&b':') {
                let mut k = j + 1;
                while k < b.len() && b[k].is_ascii_digit() {
                    k += 1;
                }
                let port = line[j + 1..k].parse::<u16>().ok();
                if !port.is_some_and(|p| allowed.contains(&p)) {
                    bad.push(format!("{}: {line}", &line[i..k]));
                }
            }
            i = j.max(i + 1);
        }
    }
    bad
}

/// What one run wrote.
struct Run {
    /// stdout and stderr.
    output: String,
    /// The audit log.
    audit: String,
    allowed_ports: Vec<u16>,
}

/// One run of voxd in `format`, its key in the environment or (`key_from_file`)
/// in an owner-only file, at `logging.level: trace` or (`voxd_log`) with
/// `VOXD_LOG=trace` (every crate at trace).
async fn run(format: &str, key_from_file: bool, pii: bool, voxd_log: bool) -> Run {
    let dir = std::env::temp_dir().join(format!(
        "voxd-redaction-{format}-{pii}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    let emu = AriEmulator::start(EmuConfig {
        username: ARI_USER.into(),
        password: ARI_PASS.into(),
        default_signal: CallerSignal::Speech {
            seed: 5,
            config: SignalConfig {
                initial_pause_ms: Some(100),
                talk_ms: (800, 1000),
                pause_ms: (1500, 2000),
                ..Default::default()
            },
        },
        ..EmuConfig::default()
    })
    .await
    .expect("emulator");
    let mut sc = ProviderSimConfig::for_protocol(SimProtocol::OpenAi);
    sc.listen = "127.0.0.1:0".parse().unwrap();
    sc.api_key = Some(KEY.into());
    sc.think_ms = 100;
    sc.reply_ms = 800;
    sc.greeting_ms = 0;
    let sim = ProviderSim::start(sc).await.expect("simulator");
    let (as_port, rtp_port, health) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "default_provider: openai_realtime\n\
         audio_transport: audiosocket\n\
         audiosocket: {{host: 127.0.0.1, port: {as_port}, format: slin16}}\n\
         external_media: {{rtp_host: 127.0.0.1, rtp_port: {rtp_port}, codec: ulaw}}\n\
         health: {{host: 127.0.0.1, port: {health}}}\n\
         asterisk: {{enabled: true, host: 127.0.0.1, port: {}}}\n\
         providers: {{sim: {{enabled: false}}, openai_realtime: {{enabled: true, base_url: '{}'}}}}\n\
         engine: {{shards: 1}}\n\
         shutdown: {{drain_seconds: 1}}\n\
         logging: {{level: trace, format: {format}, pii: {pii}, audit_path: '{}'}}\n",
        emu.addr().port(),
        sim.url(),
        audit.display()
    );
    let cfg = dir.join("voxd.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_API_KEY_FILE")
        .env("ASTERISK_ARI_USERNAME", ARI_USER)
        .env("ASTERISK_ARI_PASSWORD", ARI_PASS)
        .env("HEALTH_API_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if voxd_log {
        cmd.env("VOXD_LOG", "trace");
    } else {
        cmd.env_remove("VOXD_LOG");
    }
    if key_from_file {
        use std::os::unix::fs::PermissionsExt as _;
        let key_file: PathBuf = dir.join("openai.key");
        std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        cmd.env("OPENAI_API_KEY_FILE", &key_file);
    } else {
        cmd.env("OPENAI_API_KEY", KEY);
    }
    let mut child = cmd.spawn().expect("voxd starts");
    // Drain both pipes from the start (trace output fills a pipe quickly).
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });

    assert!(
        emu.wait_app_registered("asterisk-ai-voice-agent", LIMIT)
            .await
    );
    let spec = || CallSpec {
        caller_number: CALLER_NUMBER.into(),
        caller_name: CALLER_NAME.into(),
        ..CallSpec::default()
    };
    // Two calls: one the caller hangs up, one still up at SIGTERM (the drain's
    // hang-up path logs too).
    let a = emu.place_call(spec()).unwrap();
    let b = emu.place_call(spec()).unwrap();
    for id in [&a, &b] {
        until("the agent answers", || {
            emu.media_stats(id)
                .is_some_and(|m| m.voiced_frames_received > 25)
        })
        .await;
    }
    emu.send_dtmf(&a, '5').unwrap();
    let base = format!("http://127.0.0.1:{health}");
    let http = reqwest::Client::new();
    for token in [Some(TOKEN), Some("wrong-token"), None] {
        for (method, path) in [("GET", "/sessions"), ("POST", "/reload")] {
            let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            assert!(r.status().as_u16() < 500, "{method} {path}: {}", r.status());
        }
    }
    for p in ["/health", "/metrics", "/ready"] {
        let body = http
            .get(format!("{base}{p}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for (s, what) in forbidden() {
            assert!(!body.contains(&s), "{p} shows {what}");
        }
    }
    emu.hangup_caller(&a).unwrap();
    until("the first call ends", || emu.channel_json(&a).is_none()).await;
    // An AudioSocket connection voxd did not originate (refused and logged).
    let mut stray = std::net::TcpStream::connect(("127.0.0.1", as_port)).unwrap();
    let mut hello = vec![0x01, 0, 16];
    hello.extend_from_slice(&[0x99; 16]);
    std::io::Write::write_all(&mut stray, &hello).unwrap();
    drop(stray);

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut output = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    output.push_str(&String::from_utf8_lossy(&err_t.join().unwrap()));
    // Kept for a look when the test fails.
    std::fs::write(dir.join("output.log"), &output).unwrap();
    let allowed_ports = vec![
        as_port,
        rtp_port,
        health,
        emu.addr().port(),
        sim.local_addr().port(),
    ];
    emu.stop().await;
    let stats = sim.stop().await;
    assert_eq!(stats.auth_failures, 0, "voxd sent the key it was given");
    assert!(stats.connections >= 2);
    Run {
        output,
        audit: std::fs::read_to_string(&audit).expect("the audit log was written"),
        allowed_ports,
    }
}

/// Every line of `text` that holds one of `what`, named.
fn leaks_in(text: &str, what: &[(String, &'static str)]) -> Vec<String> {
    let mut leaks = Vec::new();
    for (s, name) in what {
        for line in text.lines().filter(|l| l.contains(s.as_str())) {
            leaks.push(format!("{name}: {line}"));
        }
    }
    leaks
}

/// With `logging.pii: false`: nothing secret or personal in the output or the
/// audit log, and both really hold the calls (at least `min_lines` of output).
fn check(format: &str, run: &Run, min_lines: usize) {
    let text = &run.output;
    let lines = text.lines().count();
    // The run really logged at trace level, calls included.
    assert!(lines >= min_lines, "{format}: only {lines} lines");
    assert!(text.contains("TRACE"), "{format}: no trace line");
    assert!(text.contains("caller entered Stasis"), "{format}");
    assert!(text.contains("call started"), "{format}");
    assert!(text.contains("call ended"), "{format}");
    let audit_events: Vec<String> = run
        .audit
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("audit lines are JSON");
            v["event"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        audit_events.iter().filter(|e| *e == "call_started").count(),
        2,
        "{format}: audit {audit_events:?}"
    );
    assert_eq!(
        audit_events.iter().filter(|e| *e == "call_ended").count(),
        2,
        "{format}: audit {audit_events:?}"
    );
    let mut leaks = leaks_in(text, &forbidden());
    for a in peer_addresses(text, &run.allowed_ports) {
        leaks.push(format!("a peer address: {a}"));
    }
    for l in leaks_in(&run.audit, &forbidden()) {
        leaks.push(format!("audit log: {l}"));
    }
    for a in peer_addresses(&run.audit, &run.allowed_ports) {
        leaks.push(format!("audit log: a peer address: {a}"));
    }
    let shown: Vec<&String> = leaks.iter().take(20).collect();
    assert!(
        leaks.is_empty(),
        "{format}: {} leak(s) in {lines} lines of output:\n{shown:#?}",
        leaks.len()
    );
    eprintln!(
        "{format}: {lines} lines of trace output and {} audit records, no secret, caller data or peer address",
        audit_events.len()
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn nothing_secret_or_personal_in_any_log_line() {
    let rt = runtime();
    // voxd's own lines at trace: a few dozen; every crate at trace: more.
    for (format, key_from_file, voxd_log, min_lines) in
        [("json", false, false, 25), ("human", true, true, 100)]
    {
        let run = rt.block_on(run(format, key_from_file, false, voxd_log));
        check(format, &run, min_lines);
    }
}

/// The control: with `logging.pii: true` the same search finds the caller number
/// and peer addresses (so the test above can fail), and still no secret.
#[test]
fn with_pii_on_the_caller_shows_but_no_secret_does() {
    let run = runtime().block_on(run("json", false, true, false));
    let text = &run.output;
    assert!(
        text.lines()
            .any(|l| l.contains("caller entered Stasis") && l.contains(CALLER_NUMBER)),
        "the caller number is logged with pii: true"
    );
    assert!(
        !peer_addresses(text, &run.allowed_ports).is_empty(),
        "peer addresses are logged with pii: true"
    );
    let leaks = leaks_in(text, &secrets());
    let mut audit_leaks = leaks_in(&run.audit, &secrets());
    audit_leaks.extend(leaks_in(&run.audit, &caller_data()));
    assert!(leaks.is_empty(), "{:#?}", &leaks[..leaks.len().min(20)]);
    assert!(audit_leaks.is_empty(), "audit log: {audit_leaks:#?}");
}

#[test]
fn the_address_finder_finds_addresses() {
    let text =
        "a 127.0.0.1:8090 b\nremote=10.1.2.3:40000 x\n1.2.3.4 no port\n1.2.3.4.5:6 not an address";
    let bad = peer_addresses(text, &[8090]);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("10.1.2.3:40000"), "{bad:?}");
}
