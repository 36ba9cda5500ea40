//! `voxd check --config <file>` end to end: the built binary, a real file, a child
//! environment. Checks exit codes, masked output and that every problem is listed
//! with its key path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Variables voxd reads; removed from the child so the host environment cannot
/// change the outcome.
const VOXD_ENV: &[&str] = &[
    "VOXD_CONFIG",
    "ASTERISK_HOST",
    "ASTERISK_ARI_USERNAME",
    "ASTERISK_ARI_PASSWORD",
    "AUDIOSOCKET_HOST",
    "AUDIOSOCKET_PORT",
    "EXTERNAL_MEDIA_RTP_HOST",
    "EXTERNAL_MEDIA_RTP_PORT",
    "HEALTH_BIND_HOST",
    "HEALTH_BIND_PORT",
    "OPENAI_API_KEY",
    "DEEPGRAM_API_KEY",
    "LOCAL_AI_AUTH_TOKEN",
];

const SECRET: &str = "sk-test-secret";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn check(config: &Path, extra_env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxd"));
    cmd.arg("check").arg("--config").arg(config);
    for name in VOXD_ENV {
        cmd.env_remove(name);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run voxd");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A temp file removed on drop.
struct TempYaml(PathBuf);

impl TempYaml {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("voxd-{}-{name}.yaml", std::process::id()));
        std::fs::write(&path, text).expect("write temp config");
        TempYaml(path)
    }
}

impl Drop for TempYaml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn check_shipped_config_exits_0_with_masked_output() {
    let (code, stdout, stderr) = check(
        &repo_file("config/voxd.yaml"),
        &[
            ("OPENAI_API_KEY", SECRET),
            ("ASTERISK_ARI_PASSWORD", "hunter2-secret"),
        ],
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        !stderr.contains("warning:"),
        "config/voxd.yaml must load without warnings:\n{stderr}"
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains(SECRET), "secret leaked:\n{text}");
        assert!(!text.contains("hunter2-secret"), "secret leaked:\n{text}");
    }
    // The effective configuration, secrets masked.
    assert!(stdout.contains("jitter_buffer_ms: 950"), "{stdout}");
    assert!(
        stdout.contains("app_name: asterisk-ai-voice-agent"),
        "{stdout}"
    );
    assert!(
        stdout.contains("***"),
        "set secrets print as ***:\n{stdout}"
    );
    assert!(
        stdout.contains("(unset)"),
        "unset secrets print as (unset):\n{stdout}"
    );
}

#[test]
fn check_reference_engine_file_exits_0_with_warnings() {
    let (code, stdout, stderr) = check(&repo_file("config/ai-agent.example.yaml"), &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for expected in [
        "warning: contexts: top-level key not used by voxd; ignored",
        "warning: providers.google_live: provider not supported",
        "warning: streaming: ignoring reference-engine keys",
        "warning: asterisk.password: ignored",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        stdout.contains("audio_transport: externalmedia"),
        "{stdout}"
    );
}

#[test]
fn check_bad_file_exits_1_listing_every_problem_with_its_path() {
    let bad = TempYaml::new(
        "bad",
        "\
streaming:
  min_start_ms: 5000
audiosocket:
  prot: 8090
health:
  port: 70000
",
    );
    let (code, stdout, stderr) = check(&bad.0, &[("OPENAI_API_KEY", SECRET)]);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for expected in [
        "streaming.min_start_ms: 5000 is above jitter_buffer_ms (950); allowed 0..=950",
        "audiosocket.prot: unknown key; known keys:",
        "health.port:",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("1..=65535"),
        "port message names the range:\n{stderr}"
    );
    assert!(
        !stdout.contains("streaming:"),
        "no configuration printed on failure"
    );
    assert!(!stderr.contains(SECRET) && !stdout.contains(SECRET));
}

#[test]
fn check_missing_file_exits_1() {
    let (code, _stdout, stderr) = check(Path::new("/nonexistent/voxd.yaml"), &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/voxd.yaml"), "{stderr}");
}
