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

fn sim_config(dir: &Path, name: &str) -> (PathBuf, u16) {
    let (as_port, rtp_port, health) = (free_tcp_port(), free_udp_port(), free_tcp_port());
    let cfg = dir.join(format!("{name}.yaml"));
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
    (cfg, as_port)
}

fn ramp_cmd(cfg: &Path, ramp: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["loadgen", "--transport", "audiosocket", "--spawn"])
        .arg(cfg)
        .args(["--ramp", ramp, "--rate", "50", "--seconds", "2"])
        .args(["--think-ms", "100", "--initial-pause-ms", "200", "-q"]);
    c
}

fn check_png(path: &Path) {
    let bytes = std::fs::read(path).expect("ramp.png written");
    assert!(bytes.len() > 1_000, "{} bytes", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
}

/// Two steps of a tiny ramp, voxd against a second voxd started by --compare-cmd,
/// with an SLO loose enough that no step of a busy build machine can break it (no
/// timing is asserted): both engines run both steps and the report is complete.
#[test]
fn ramp_runs_every_step_for_voxd_and_a_compared_engine_and_writes_the_report() {
    let dir = temp_dir("ramp");
    let (cfg, _) = sim_config(&dir, "voxd");
    let (other, other_port) = sim_config(&dir, "other");
    let report = dir.join("report");
    let out = ramp_cmd(&cfg, "5:5:10")
        .args(["--slo-p99-ms", "60000", "--slo-p999-ms", "60000"])
        .args(["--slo-max-gaps", "1000000"])
        .arg("--compare-cmd")
        .arg(format!("exec {BIN} serve --config {}", other.display()))
        .args(["--compare-port", &other_port.to_string()])
        .args(["--compare-name", "other"])
        .arg("--report")
        .arg(&report)
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "exit {:?}", out.status);
    assert!(stdout.contains("voxd capacity: 10 calls"), "{stdout}");
    assert!(stdout.contains("other capacity: 10 calls"), "{stdout}");
    assert!(stdout.contains("reached MAX 10 calls with the SLO met"));

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("ramp.json")).unwrap()).unwrap();
    assert_eq!(v["ramp"]["start"], 5);
    assert_eq!(v["slo"]["p99_dev_us"], 60_000_000);
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
    for (i, name) in ["voxd", "other"].iter().enumerate() {
        let e = &v["engines"][i];
        assert_eq!(e["name"], *name);
        assert_eq!(e["capacity_calls"], 10, "{e}");
        let steps = e["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 2, "{e}");
        for (s, calls) in steps.iter().zip([5, 10]) {
            assert_eq!(s["calls"], calls);
            assert!(s["error"].is_null(), "{s}");
            assert!(s["intervals"].as_u64().unwrap() > 0, "{s}");
            assert_eq!(s["calls_without_frames"], 0, "{s}");
            assert_eq!(s["slo_pass"], true);
            // CPU and RSS of the engine (the command's process tree for `other`).
            assert!(s["cpu_us_per_call_second"].is_number(), "{name}: {s}");
            assert!(s["rss_mib"].as_f64().unwrap() > 1.0, "{name}: {s}");
        }
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for want in [
        "# voxd capacity ramp",
        "voxd capacity: 10 calls",
        "## Side by side",
        "![ramp](ramp.png)",
        "--ramp 5:5:10",
        "machine:",
    ] {
        assert!(md.contains(want), "{want}: {md}");
    }
    check_png(&report.join("ramp.png"));
    // Both engines were stopped: their ports are free again.
    assert!(TcpListener::bind(("127.0.0.1", other_port)).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An impossible SLO (`--slo-p99-ms 0`) breaks the first step: the ramp stops there
/// with no capacity, and `--ramp-continue 1` runs exactly one more step.
#[test]
fn ramp_stops_at_the_first_step_that_breaks_the_slo() {
    let dir = temp_dir("ramp-break");
    let (cfg, _) = sim_config(&dir, "voxd");
    let json = dir.join("ramp.json");
    let out = ramp_cmd(&cfg, "3,6,12")
        .args(["--slo-p99-ms", "0", "--ramp-continue", "1"])
        .arg("--json")
        .arg(&json)
        .arg("--report")
        .arg(dir.join("report"))
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(
        stdout.contains("voxd capacity: none (below the first step, 3 calls)"),
        "{stdout}"
    );
    assert!(stdout.contains("SLO broken at 3 calls"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let steps = v["engines"][0]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{v}");
    assert!(steps.iter().all(|s| s["slo_pass"] == false));
    assert!(v["engines"][0]["capacity_calls"].is_null());
    check_png(&dir.join("report/ramp.png"));

    // Bad ramp specs are refused by the command line.
    let out = Command::new(BIN)
        .args(["loadgen", "--ramp", "10:0:5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
