//! `voxd serve`'s health endpoints, from outside the process: `/live`, `/ready`
//! (including `ari_connected: false` while Asterisk is away, and true once it is
//! back), `/health` and `/metrics` (checked by Prometheus' own `promtool`).

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use voxd::loadgen::ari_emu::{AriEmulator, EmuConfig};

const LIMIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Voxd(Child);

impl Drop for Voxd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, yaml: &str, env: &[(&str, &str)]) -> Voxd {
    let cfg = dir.join("voxd.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxd"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("ASTERISK_ARI_USERNAME")
        .env_remove("ASTERISK_ARI_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Voxd(cmd.spawn().expect("voxd starts"))
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.ok()?))
}

/// Poll `url` until `ok` holds for its answer.
async fn until(url: &str, what: &str, ok: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some((code, body)) = get(url).await {
            if ok(code, &body) {
                return (code, body);
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} at {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn yaml_with(health: u16, as_port: u16, extra: &str) -> String {
    format!(
        "audiosocket: {{host: 127.0.0.1, port: {as_port}}}\n\
         external_media: {{rtp_host: 127.0.0.1, rtp_port: {}}}\n\
         health: {{host: 127.0.0.1, port: {health}}}\n\
         engine: {{shards: 1}}\n\
         logging: {{level: warn}}\n{extra}",
        free_port()
    )
}

fn yaml(health: u16, extra: &str) -> String {
    yaml_with(health, free_port(), extra)
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected /metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn endpoints_answer_and_metrics_pass_promtool() {
    let dir = std::env::temp_dir().join(format!("voxd-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let health = free_port();
    let _voxd = serve(&dir, &yaml(health, ""), &[]);
    let base = format!("http://127.0.0.1:{health}");
    let (_, live) = until(&format!("{base}/live"), "live", |c, _| c == 200).await;
    assert_eq!(live, "ok");
    let (code, ready) = until(&format!("{base}/ready"), "ready", |c, _| c == 200).await;
    assert_eq!(code, 200);
    let r: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(r["ready"], true);
    assert_eq!(
        r["ari_enabled"], false,
        "no ARI credentials: AudioSocket-only"
    );
    assert_eq!(r["provider_ok"], true);
    assert_eq!(r["draining"], false);
    let (_, h) = until(&format!("{base}/health"), "health", |c, _| c == 200).await;
    let h: serde_json::Value = serde_json::from_str(&h).unwrap();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["shards"], 1);
    assert_eq!(h["active_calls"], 0);
    assert_eq!(h["io_backend"], "epoll");
    assert_eq!(h["providers"]["sim"]["ready"], true);
    assert!(h["ari"].is_null());
    let (_, m) = until(&format!("{base}/metrics"), "metrics", |c, _| c == 200).await;
    assert!(m.contains("ai_agent_active_calls 0"), "{m}");
    assert!(
        !m.contains("voxd_ari_connected"),
        "no ARI series without ARI"
    );
    for name in EXPORTED {
        if name.starts_with("voxd_ari_") {
            continue;
        }
        assert!(
            m.contains(&format!("# TYPE {name} ")),
            "/metrics lacks {name} (deploy/ alerts and dashboard use it)"
        );
    }
    promtool_check(&m);
}

/// Every metric family deploy/prometheus and deploy/grafana rely on
/// (tests/deploy_files.rs checks they use no other).
const EXPORTED: [&str; 33] = [
    "voxd_draining",
    "voxd_up",
    "voxd_ready",
    "voxd_uptime_seconds",
    "voxd_ari_connected",
    "voxd_ari_reconnects_total",
    "ai_agent_active_calls",
    "ai_agent_calls_total",
    "ai_agent_call_duration_seconds",
    "ai_agent_turn_response_seconds",
    "ai_agent_barge_in_reaction_seconds",
    "ai_agent_barge_in_events_total",
    "ai_agent_stream_frames_sent_total",
    "ai_agent_stream_underflow_events_total",
    "ai_agent_audiosocket_active_connections",
    "ai_agent_audiosocket_rx_bytes_total",
    "ai_agent_audiosocket_tx_bytes_total",
    "voxd_rtp_packets_total",
    "voxd_rtp_lost_packets_total",
    "voxd_rtp_late_packets_total",
    "voxd_rtp_jitter_seconds",
    "voxd_ring_drops_total",
    "voxd_shard_calls",
    "voxd_shard_busy_ratio",
    "voxd_provider_errors_total",
    "voxd_provider_reconnects_total",
    "voxd_provider_connect_seconds",
    "voxd_caller_audio_dropped_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "voxd_rtp_reordered_packets_total",
    "voxd_caller_to_provider_seconds",
];

#[tokio::test]
async fn ready_follows_the_ari_connection() {
    let dir = std::env::temp_dir().join(format!("voxd-health-ari-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let health = free_port();
    let ari_port = free_port();
    let extra = format!("asterisk: {{enabled: true, host: 127.0.0.1, port: {ari_port}}}\n");
    let _voxd = serve(
        &dir,
        &yaml(health, &extra),
        &[
            ("ASTERISK_ARI_USERNAME", "asterisk"),
            ("ASTERISK_ARI_PASSWORD", "asterisk"),
        ],
    );
    let base = format!("http://127.0.0.1:{health}");
    // Asterisk is not there: not ready, and it says why.
    let (code, body) = until(&format!("{base}/ready"), "a /ready answer", |_, _| true).await;
    assert_eq!(code, 503, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["ari_connected"], false);
    assert_eq!(r["ari_enabled"], true);
    assert_eq!(r["ready"], false);
    let (_, m) = until(&format!("{base}/metrics"), "metrics", |c, _| c == 200).await;
    assert!(m.contains("voxd_ari_connected 0"), "{m}");
    assert!(m.contains("voxd_ari_reconnects_total 0"), "{m}");
    promtool_check(&m);

    // Asterisk comes up on that port: voxd reconnects (backoff) and is ready.
    let emu = AriEmulator::start(EmuConfig {
        bind: format!("127.0.0.1:{ari_port}").parse().unwrap(),
        ..EmuConfig::default()
    })
    .await
    .expect("emulator on the configured port");
    let (_, body) = until(
        &format!("{base}/ready"),
        "ready after ARI connects",
        |c, _| c == 200,
    )
    .await;
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["ari_connected"], true);
    let (_, h) = until(&format!("{base}/health"), "health", |c, _| c == 200).await;
    let h: serde_json::Value = serde_json::from_str(&h).unwrap();
    assert_eq!(h["ari"]["connected"], true);
    emu.stop().await;
}

/// An AudioSocket caller: UUID, then 20 ms slin16 frames of a tone.
fn audiosocket_call(port: u16, uuid: u8) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut hello = vec![0x01, 0, 16];
    hello.extend_from_slice(&[uuid; 16]);
    s.write_all(&hello).unwrap();
    s
}

fn send_frame(s: &mut std::net::TcpStream) -> std::io::Result<()> {
    let mut f = vec![0x12, 0x02, 0x80];
    f.extend((0..320).flat_map(|i: i32| (((i % 40) - 20) as i16 * 500).to_le_bytes()));
    s.write_all(&f)
}

/// Reads one frame header + payload; `None` at EOF.
fn read_frame(s: &mut std::net::TcpStream) -> Option<(u8, usize)> {
    use std::io::Read;
    let mut h = [0u8; 3];
    s.read_exact(&mut h).ok()?;
    let len = usize::from(u16::from_be_bytes([h[1], h[2]]));
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).ok()?;
    Some((h[0], len))
}

#[tokio::test]
async fn sigterm_drains_then_exits_zero() {
    let dir = std::env::temp_dir().join(format!("voxd-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (health, as_port) = (free_port(), free_port());
    let mut voxd = serve(
        &dir,
        &yaml_with(health, as_port, "shutdown: {drain_seconds: 60}\n"),
        &[],
    );
    let base = format!("http://127.0.0.1:{health}");
    until(&format!("{base}/ready"), "ready", |c, _| c == 200).await;
    let mut call = tokio::task::spawn_blocking(move || {
        let mut c = audiosocket_call(as_port, 7);
        send_frame(&mut c).unwrap();
        assert!(read_frame(&mut c).is_some(), "voxd answers the call");
        c
    })
    .await
    .unwrap();
    until(&format!("{base}/health"), "one active call", |_, b| {
        b.contains("\"active_calls\":1")
    })
    .await;

    // SIGTERM: not ready any more, new calls refused, the call in progress goes on.
    let pid = voxd.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (code, body) = until(&format!("{base}/ready"), "draining", |c, _| c == 503).await;
    assert_eq!(code, 503);
    assert!(body.contains("\"draining\":true"), "{body}");
    let (call, refused) = tokio::task::spawn_blocking(move || {
        let mut late = audiosocket_call(as_port, 9);
        let _ = send_frame(&mut late);
        // A hangup frame (kind 0x00) then the close, or just the close.
        let refused = match read_frame(&mut late) {
            None => true,
            Some((0x00, 0)) => read_frame(&mut late).is_none(),
            Some(_) => false,
        };
        for _ in 0..10 {
            send_frame(&mut call).unwrap();
            assert!(
                read_frame(&mut call).is_some(),
                "the call in progress goes on"
            );
        }
        (call, refused)
    })
    .await
    .unwrap();
    assert!(refused, "a new call while draining is closed at once");
    assert!(voxd.0.try_wait().unwrap().is_none(), "still draining");

    // The last call ends: voxd exits 0 without waiting out drain_seconds.
    call.shutdown(std::net::Shutdown::Both).unwrap();
    drop(call);
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(st) = voxd.0.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "voxd did not exit after its last call"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn admin_endpoints_need_the_token_and_list_sessions_and_reload() {
    let dir = std::env::temp_dir().join(format!("voxd-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (health, as_port) = (free_port(), free_port());
    let _voxd = serve(
        &dir,
        &yaml_with(health, as_port, "default_provider: echo\n"),
        &[("HEALTH_API_TOKEN", "t0ken")],
    );
    let base = format!("http://127.0.0.1:{health}");
    until(&format!("{base}/ready"), "ready", |c, _| c == 200).await;
    let call = tokio::task::spawn_blocking(move || {
        let mut c = audiosocket_call(as_port, 5);
        send_frame(&mut c).unwrap();
        assert!(read_frame(&mut c).is_some());
        c
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    // Without the token: refused, even from loopback.
    let r = client.get(format!("{base}/sessions")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(format!("{base}/sessions"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let deadline = Instant::now() + LIMIT;
    let list = loop {
        let r = client
            .get(format!("{base}/sessions"))
            .bearer_auth("t0ken")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        if v["count"] == 1 {
            break v;
        }
        assert!(Instant::now() < deadline, "the call never listed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let s = &list["sessions"][0];
    assert_eq!(s["provider"], "echo");
    assert_eq!(s["transport"], "audiosocket");
    assert_eq!(s["remote"], "[redacted]");
    // Reload through HTTP: nothing changed in the file.
    let r = client.post(format!("{base}/reload")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .post(format!("{base}/reload"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // A file that does not validate: refused with the reason.
    std::fs::write(dir.join("voxd.yaml"), "default_provider: nobody\n").unwrap();
    let r = client
        .post(format!("{base}/reload"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("default_provider"),
        "{v}"
    );
    drop(call);
}

/// The per-stage latency percentiles in `/health` and the "caller frame ->
/// provider write" histogram in `/metrics` come from a real call: the caller
/// talks for 1 s, then is quiet; the sim agent answers.
#[tokio::test]
async fn latency_percentiles_come_from_a_real_call() {
    let dir = std::env::temp_dir().join(format!("voxd-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (health, as_port) = (free_port(), free_port());
    let _voxd = serve(&dir, &yaml_with(health, as_port, ""), &[]);
    let base = format!("http://127.0.0.1:{health}");
    until(&format!("{base}/ready"), "ready", |c, _| c == 200).await;
    let (_, h) = until(&format!("{base}/health"), "health", |c, _| c == 200).await;
    let h: serde_json::Value = serde_json::from_str(&h).unwrap();
    assert_eq!(
        h["latency"]["caller_to_provider"]["count"], 0,
        "no call yet"
    );

    let call = std::thread::spawn(move || {
        let mut c = audiosocket_call(as_port, 9);
        let mut reader = c.try_clone().unwrap();
        let frames = std::thread::spawn(move || {
            let mut n = 0u32;
            while read_frame(&mut reader).is_some() {
                n += 1;
            }
            n
        });
        let start = Instant::now();
        for i in 0..250u32 {
            if i < 50 {
                send_frame(&mut c).unwrap();
            } else {
                let mut f = vec![0x10, 0x02, 0x80];
                f.resize(3 + 640, 0);
                c.write_all(&f).unwrap();
            }
            // Real 20 ms pacing, so the sim's detector sees a real utterance.
            let due = start + Duration::from_millis(20 * (u64::from(i) + 1));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        c.shutdown(std::net::Shutdown::Both).unwrap();
        frames.join().unwrap()
    });
    let (_, body) = until(&format!("{base}/health"), "a turn measured", |_, b| {
        serde_json::from_str::<serde_json::Value>(b)
            .is_ok_and(|h| h["latency"]["turn_response"]["count"].as_u64() >= Some(1))
    })
    .await;
    let heard = tokio::task::spawn_blocking(move || call.join().unwrap())
        .await
        .unwrap();
    assert!(heard > 0, "voxd sent frames");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c2p = &h["latency"]["caller_to_provider"];
    assert!(
        c2p["count"].as_u64().unwrap() >= 40,
        "every caller frame up to now is a sample: {c2p}"
    );
    let p50 = c2p["p50_ms"].as_f64().unwrap();
    let p99 = c2p["p99_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{c2p}");
    assert_eq!(
        h["shard_load"][0]["latency"]["caller_to_provider"]["count"], c2p["count"],
        "one shard: its samples are all of them"
    );
    let turn = &h["latency"]["turn_response"];
    assert!(
        turn["p50_ms"].as_f64().unwrap() >= 300.0,
        "the sim thinks 300 ms before it answers: {turn}"
    );
    assert!(h["latency"]["stream_first_frame"]["count"].as_u64() >= Some(1));

    let (_, m) = until(&format!("{base}/metrics"), "metrics", |c, _| c == 200).await;
    let count: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("voxd_caller_to_provider_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .expect("voxd_caller_to_provider_seconds_count in /metrics");
    assert!(count >= c2p["count"].as_u64().unwrap(), "{count} vs {c2p}");
    promtool_check(&m);
}
