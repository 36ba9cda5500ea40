//! `voxd loadgen` end to end: a real `voxd serve` (the built binary, simulated agent)
//! and the load generator against it over AudioSocket and RTP. Asserts behaviour
//! only (exit codes, the JSON, that frames and agent audio arrived): no timing.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_voxd");

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("voxd-loadgen-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Kills voxd if the test panics before it stops it.
struct Voxd(Child);

impl Drop for Voxd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_voxd(dir: &Path, as_port: u16, rtp_port: u16) -> Voxd {
    let health = free_tcp_port();
    let yaml = format!(
        "default_provider: sim\n\
         audiosocket: {{host: 127.0.0.1, port: {as_port}, format: slin16}}\n\
         external_media: {{rtp_host: 127.0.0.1, rtp_port: {rtp_port}, codec: ulaw}}\n\
         health: {{host: 127.0.0.1, port: {health}}}\n\
         providers: {{sim: {{think_ms: 100, reply_ms: 600}}}}\n\
         engine: {{shards: 1}}\n"
    );
    let cfg = dir.join("voxd.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("VOXD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("voxd starts");
    let voxd = Voxd(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", as_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "voxd did not listen on {as_port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    voxd
}

fn run_loadgen(transport: &str, port: u16, pid: u32, json: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["loadgen", "--transport", transport, "--port"])
        .arg(port.to_string())
        .args(["--calls", "5", "--rate", "50", "--seconds", "4"])
        .args(["--think-ms", "100", "--initial-pause-ms", "200"])
        .arg("--json")
        .arg(json)
        .arg("--pid")
        .arg(pid.to_string())
        .output()
        .expect("loadgen runs")
}

fn check_json(path: &Path, transport: &str) {
    let text = std::fs::read_to_string(path).expect("JSON written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON parses");
    assert_eq!(v["calls"], 5, "{transport}: {text}");
    let counts = &v["counts"];
    assert!(counts["frames_sent"].as_u64().unwrap() > 0, "{transport}");
    assert!(
        counts["frames_received"].as_u64().unwrap() > 0,
        "{transport}"
    );
    // Every call received frames.
    assert_eq!(
        v["loadgen"]["calls_without_frames"], 0,
        "{transport}: {text}"
    );
    assert_eq!(v["loadgen"]["counters"]["calls_started"], 5, "{transport}");
    // The simulated agent answered.
    assert!(
        counts["agent_audio_frames"].as_u64().unwrap() > 0,
        "{transport}: no agent audio: {text}"
    );
    assert!(v["inter_arrival_dev_us"]["count"].as_u64().unwrap() > 0);
    assert!(v["slo"].is_object());
    // voxd's /proc figures were sampled.
    assert!(v["process"].is_object(), "{transport}: {text}");
    assert!(v["loadgen"]["process"].is_object(), "{transport}: {text}");
}

#[test]
fn loadgen_against_a_real_voxd_over_audiosocket_and_rtp() {
    let dir = temp_dir("run");
    let as_port = free_tcp_port();
    let rtp_port = free_udp_port();
    let mut voxd = start_voxd(&dir, as_port, rtp_port);
    let pid = voxd.0.id();

    for (transport, port) in [("audiosocket", as_port), ("rtp", rtp_port)] {
        let json = dir.join(format!("{transport}.json"));
        let out = run_loadgen(transport, port, pid, &json);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{transport}: exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        assert!(stdout.contains("timing SLO"), "{transport}: {stdout}");
        assert!(stderr.contains("calls 5/5"), "{transport}: {stderr}");
        check_json(&json, transport);
    }

    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(s) = voxd.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "voxd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "voxd exit {code:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loadgen_exits_1_naming_the_address_when_nothing_listens() {
    let port = free_tcp_port();
    let out = Command::new(BIN)
        .args(["loadgen", "--transport", "audiosocket", "--port"])
        .arg(port.to_string())
        .args(["--calls", "2", "--rate", "10", "--seconds", "1", "-q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("audiosocket"),
        "{stderr}"
    );
}

#[test]
fn loadgen_spawns_and_stops_its_own_voxd() {
    let dir = temp_dir("spawn");
    let (as_port, rtp_port, health) = (free_tcp_port(), free_udp_port(), free_tcp_port());
    let cfg = dir.join("voxd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "default_provider: sim\n\
             audiosocket: {{host: 127.0.0.1, port: {as_port}, format: slin16}}\n\
             external_media: {{rtp_host: 127.0.0.1, rtp_port: {rtp_port}, codec: ulaw}}\n\
             health: {{host: 127.0.0.1, port: {health}}}\n\
             providers: {{sim: {{think_ms: 100, reply_ms: 600}}}}\n\
             engine: {{shards: 1}}\n\
             logging: {{level: warn}}\n"
        ),
    )
    .unwrap();
    let json = dir.join("spawn.json");
    let out = Command::new(BIN)
        .args(["loadgen", "--transport", "rtp", "--spawn"])
        .arg(&cfg)
        .args(["--calls", "5", "--rate", "50", "--seconds", "4"])
        .args(["--think-ms", "100", "--initial-pause-ms", "200", "-q"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("loadgen runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    // No warning about the child's exit: it stopped cleanly on SIGTERM.
    assert!(!stderr.contains("spawned voxd exited"), "{stderr}");
    check_json(&json, "rtp (spawned)");
    // The child is gone: its port is free again.
    assert!(UdpSocket::bind(("127.0.0.1", rtp_port)).is_ok());

    // A config that cannot start is reported with the child's own words.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "audiosocket: {port: 0}\n").unwrap();
    let out = Command::new(BIN)
        .args(["loadgen", "--spawn"])
        .arg(&bad)
        .args(["--calls", "1", "--seconds", "1", "-q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exited before listening"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loadgen_via_ari_measures_calls_voxd_originated_and_leaves_nothing() {
    let dir = temp_dir("via-ari");
    let (as_port, rtp_port, health, ari) = (
        free_tcp_port(),
        free_udp_port(),
        free_tcp_port(),
        free_tcp_port(),
    );
    for transport in ["audiosocket", "rtp"] {
        let cfg = dir.join(format!("{transport}.yaml"));
        let audio_transport = if transport == "rtp" {
            "externalmedia"
        } else {
            "audiosocket"
        };
        std::fs::write(
            &cfg,
            format!(
                "default_provider: sim\n\
                 audio_transport: {audio_transport}\n\
                 asterisk: {{host: 127.0.0.1, port: {ari}, enabled: true}}\n\
                 audiosocket: {{host: 127.0.0.1, port: {as_port}, format: slin16}}\n\
                 external_media: {{rtp_host: 127.0.0.1, rtp_port: {rtp_port}, codec: ulaw}}\n\
                 health: {{host: 127.0.0.1, port: {health}}}\n\
                 providers: {{sim: {{think_ms: 100, reply_ms: 600}}}}\n\
                 engine: {{shards: 1}}\n\
                 logging: {{level: error}}\n"
            ),
        )
        .unwrap();
        let json = dir.join(format!("{transport}.json"));
        let out = Command::new(BIN)
            .args(["loadgen", "--via", "ari", "--ari-listen"])
            .arg(format!("127.0.0.1:{ari}"))
            .args(["--transport", transport, "--spawn"])
            .arg(&cfg)
            .args(["--calls", "5", "--rate", "50", "--seconds", "4"])
            .args(["--think-ms", "100", "--initial-pause-ms", "200", "-q"])
            .arg("--json")
            .arg(&json)
            .env("ASTERISK_ARI_USERNAME", "lg")
            .env("ASTERISK_ARI_PASSWORD", "secret")
            .output()
            .expect("loadgen runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{transport}: exit {:?}\n{stdout}\n{stderr}",
            out.status
        );
        assert!(
            stdout.contains(
                "ari: callers placed 5, media legs originated 5, left behind: 0 channel(s), 0 bridge(s)"
            ),
            "{transport}: {stdout}"
        );
        check_json(&json, transport);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loadgen_runs_each_provider_simulator_and_no_key_reaches_the_logs() {
    let dir = temp_dir("provider");
    for provider in ["openai_realtime", "deepgram", "local"] {
        let (as_port, rtp_port, health) = (free_tcp_port(), free_udp_port(), free_tcp_port());
        let cfg = dir.join(format!("{provider}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "default_provider: {provider}\n\
                 audiosocket: {{host: 127.0.0.1, port: {as_port}, format: slin16}}\n\
                 external_media: {{rtp_host: 127.0.0.1, rtp_port: {rtp_port}, codec: ulaw}}\n\
                 health: {{host: 127.0.0.1, port: {health}}}\n\
                 providers: {{sim: {{enabled: false}}, {provider}: {{enabled: true, base_url: '${{VOXD_SIM_URL}}'}}}}\n\
                 engine: {{shards: 1}}\n\
                 logging: {{level: debug}}\n"
            ),
        )
        .unwrap();
        let json = dir.join(format!("{provider}.json"));
        let out = Command::new(BIN)
            .args(["loadgen", "--provider", provider, "--spawn"])
            .arg(&cfg)
            .args(["--calls", "4", "--rate", "50", "--seconds", "4"])
            .args(["--think-ms", "300", "--initial-pause-ms", "200", "-q"])
            .arg("--json")
            .arg(&json)
            .env("VOXD_LOG", "debug")
            .output()
            .expect("loadgen runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{provider}: exit {:?}: {stderr}",
            out.status
        );
        // The simulator's report: it saw voxd's sessions and no protocol error.
        assert!(
            stdout.contains("protocol violations: none"),
            "{provider}: {stdout}"
        );
        assert!(stdout.contains("connections 4"), "{provider}: {stdout}");
        // The child's debug log went through our stderr: the key is in none of it.
        assert!(stderr.contains("voxd| "), "{provider}: child log missing");
        assert!(
            !stderr.contains(voxd::loadgen::provider_run::SIM_KEY),
            "{provider}: the key was logged: {stderr}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["counts"]["turns_unanswered"], 0, "{provider}: {v}");
    }
}
