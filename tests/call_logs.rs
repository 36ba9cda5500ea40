//! One log line per call start and end, with the summary operators need, and peer
//! addresses redacted unless `logging.pii: true` (JSON log lines from a real
//! `voxd serve`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run voxd, make one AudioSocket call of 10 frames, stop voxd; its JSON log lines.
fn one_call_logs(pii: bool) -> Vec<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("voxd-logs-{}-{pii}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let yaml = format!(
        "default_provider: echo\n\
         audiosocket: {{host: 127.0.0.1, port: {port}}}\n\
         external_media: {{rtp_host: 127.0.0.1, rtp_port: {}}}\n\
         health: {{host: 127.0.0.1, port: {}}}\n\
         engine: {{shards: 1}}\n\
         logging: {{level: info, format: json, pii: {pii}}}\n",
        free_port(),
        free_port()
    );
    let cfg = dir.join("voxd.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_voxd"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("ASTERISK_ARI_USERNAME")
        .env_remove("VOXD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        assert!(Instant::now() < deadline, "voxd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = vec![0x01, 0, 16];
    hello.extend_from_slice(&[0x42; 16]);
    s.write_all(&hello).unwrap();
    for _ in 0..10 {
        let mut f = vec![0x12, 0x02, 0x80];
        f.extend(std::iter::repeat_n([0x10u8, 0x27], 320).flatten());
        s.write_all(&f).unwrap();
        let mut h = [0u8; 3];
        s.read_exact(&mut h).unwrap();
        let mut p = vec![0u8; usize::from(u16::from_be_bytes([h[1], h[2]]))];
        s.read_exact(&mut p).unwrap();
    }
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success());
    err.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

fn find<'a>(lines: &'a [serde_json::Value], message: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["fields"]["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
}

#[test]
fn call_start_and_end_lines_summarise_and_redact() {
    let lines = one_call_logs(false);
    let start = &find(&lines, "call started")["fields"];
    assert_eq!(start["provider"], "echo");
    assert_eq!(start["transport"], "AudioSocket");
    assert_eq!(start["remote"], "[redacted]");
    let end = &find(&lines, "call ended")["fields"];
    assert_eq!(end["provider"], "echo");
    assert_eq!(end["reason"], "caller_hangup");
    assert!(end["duration_ms"].as_u64().unwrap() > 0, "{end}");
    for k in ["turns", "barge_ins", "underflows", "rtp_lost", "late_ticks"] {
        assert!(end[k].is_u64(), "{k} missing: {end}");
    }
    // voxd's own listening addresses may be logged; a peer's never (without pii).
    let calls: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] != "voxd").collect();
    let text = serde_json::to_string(&calls).unwrap();
    assert!(
        !text.contains("127.0.0.1:"),
        "a peer address leaked: {text}"
    );

    let lines = one_call_logs(true);
    let start = &find(&lines, "call started")["fields"];
    assert!(
        start["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{start}"
    );
}

/// Lines of a child's stderr, collected by a thread.
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>);

impl Lines {
    fn start(stderr: std::process::ChildStderr) -> Lines {
        let v = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = v.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(j) = serde_json::from_str::<serde_json::Value>(&line) {
                    w.lock().unwrap().push(j);
                }
            }
        });
        Lines(v)
    }

    /// Wait for the `n`-th line (1-based) with this message; its fields.
    fn wait(&self, message: &str, n: usize) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found: Vec<serde_json::Value> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l["fields"]["message"] == message)
                .map(|l| l["fields"].clone())
                .collect();
            if found.len() >= n {
                return found[n - 1].clone();
            }
            assert!(Instant::now() < deadline, "no {message:?} #{n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn short_call(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = vec![0x01, 0, 16];
    hello.extend_from_slice(&[0x43; 16]);
    s.write_all(&hello).unwrap();
    let mut f = vec![0x12, 0x02, 0x80];
    f.extend(std::iter::repeat_n([0x10u8, 0x27], 320).flatten());
    s.write_all(&f).unwrap();
    let mut h = [0u8; 3];
    s.read_exact(&mut h).unwrap();
}

#[test]
fn sighup_applies_live_keys_to_new_calls_and_reports_the_rest() {
    let dir = std::env::temp_dir().join(format!("voxd-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let (rtp, health) = (free_port(), free_port());
    let yaml = |provider: &str, as_port: u16| {
        format!(
            "default_provider: {provider}\n\
             audiosocket: {{host: 127.0.0.1, port: {as_port}}}\n\
             external_media: {{rtp_host: 127.0.0.1, rtp_port: {rtp}}}\n\
             health: {{host: 127.0.0.1, port: {health}}}\n\
             engine: {{shards: 1}}\n\
             logging: {{level: info, format: json}}\n"
        )
    };
    let cfg = dir.join("voxd.yaml");
    std::fs::write(&cfg, yaml("sim", port)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_voxd"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("ASTERISK_ARI_USERNAME")
        .env_remove("VOXD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::start(child.stderr.take().unwrap());
    lines.wait("voxd listening", 1);
    let pid = child.id().to_string();
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };

    short_call(port);
    assert_eq!(lines.wait("call started", 1)["provider"], "sim");

    // A new default provider (live) and a new port (needs a restart).
    std::fs::write(&cfg, yaml("echo", free_port())).unwrap();
    hup();
    let applied = lines.wait("reload: applied to new calls", 1);
    assert!(
        applied["applied"]
            .as_str()
            .unwrap()
            .contains("default_provider"),
        "{applied}"
    );
    let restart = lines.wait(
        "reload: these changes need a restart and were not applied",
        1,
    );
    assert!(
        restart["keys"].as_str().unwrap().contains("audiosocket"),
        "{restart}"
    );
    short_call(port);
    assert_eq!(
        lines.wait("call started", 2)["provider"],
        "echo",
        "new calls: echo"
    );

    // A file that does not validate changes nothing.
    std::fs::write(&cfg, "default_provider: nobody\n").unwrap();
    hup();
    lines.wait(
        "reload refused: the configuration does not validate; nothing changed",
        1,
    );
    short_call(port);
    assert_eq!(lines.wait("call started", 3)["provider"], "echo");

    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(child.wait().unwrap().success());
}

/// voxd with `logging.audit_path: audit`; one short call; its stderr lines.
fn audited_call(audit: &std::path::Path) -> Lines {
    let dir = std::env::temp_dir().join(format!("voxd-audit-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let yaml = format!(
        "default_provider: echo\n\
         audiosocket: {{host: 127.0.0.1, port: {port}}}\n\
         external_media: {{rtp_host: 127.0.0.1, rtp_port: {}}}\n\
         health: {{host: 127.0.0.1, port: {}}}\n\
         engine: {{shards: 1}}\n\
         logging: {{level: info, format: json, audit_path: '{}'}}\n",
        free_port(),
        free_port(),
        audit.display()
    );
    let cfg = dir.join("voxd.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_voxd"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("ASTERISK_ARI_USERNAME")
        .env_remove("VOXD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::start(child.stderr.take().unwrap());
    lines.wait("voxd listening", 1);
    short_call(port);
    lines.wait("call ended", 1);
    // A second call works whatever happened to the audit log.
    short_call(port);
    lines.wait("call ended", 2);
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(child.wait().unwrap().success());
    lines
}

#[test]
fn audit_log_records_the_call_lifecycle_and_survives_a_full_disk() {
    let dir = std::env::temp_dir().join(format!("voxd-audit-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&path);
    audited_call(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = recs.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["call_started", "call_ended", "call_started", "call_ended"]
    );
    assert_eq!(recs[1]["provider"], "echo");
    assert_eq!(recs[1]["reason"], "caller_hangup");
    assert!(recs[0]["ts"].is_string());
    assert!(
        !text.contains("127.0.0.1"),
        "no peer addresses in the audit log"
    );

    // /dev/full: every write fails (ENOSPC); voxd keeps serving and says so once.
    let lines = audited_call(std::path::Path::new("/dev/full"));
    lines.wait(
        "audit log write failed; calls go on, records are lost until it works again",
        1,
    );
}
