//! systemd/voxd.service, checked by systemd's own tools: `systemd-analyze verify`
//! (syntax, directives, the executable) and `systemd-analyze security --offline=yes`
//! (the hardening score must stay at or below 2.0).

use std::process::Command;

/// The shipped unit with ExecStart pointing at the binary under test (verify
/// checks that the executable exists).
fn unit_under_test() -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/voxd.service"))
            .expect("systemd/voxd.service");
    assert!(text.contains("ExecStart=/usr/local/bin/voxd serve"));
    let text = text.replace("/usr/local/bin/voxd", env!("CARGO_BIN_EXE_voxd"));
    let dir = std::env::temp_dir().join(format!("voxd-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("voxd.service");
    std::fs::write(&path, text).unwrap();
    path
}

fn analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn unit_verifies_and_is_hardened() {
    let unit = unit_under_test();
    let unit = unit.to_str().unwrap();
    let (ok, text) = analyze(&["verify", unit]);
    assert!(ok, "systemd-analyze verify failed:\n{text}");
    assert!(!text.contains("Unknown"), "unknown directive:\n{text}");

    let (_, text) = analyze(&["security", "--offline=yes", unit]);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score from {line:?}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

#[test]
fn unit_has_what_operations_rely_on() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/voxd.service"))
            .unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "LimitNOFILE=",
        "DynamicUser=yes",
        "ConfigurationDirectory=voxd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(
            text.contains(needed),
            "systemd/voxd.service lacks {needed:?}"
        );
    }
}
