//! Cross-checks `voxd::media::g711` against ffmpeg's `pcm_mulaw` / `pcm_alaw` on every
//! 16-bit input and every 8-bit code, and reports (without failing) where sox differs.
//!
//! ffmpeg is required: without it this test fails and says to install it (CI does).
//! sox is optional: when present, its decodes must match ffmpeg's and its encodes are
//! compared and the disagreement count is printed (sox rounds before quantising).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use voxd::media::g711;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "voxd-g711-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        let mut f = std::fs::File::create(&p).expect("create temp file");
        f.write_all(contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a tool and returns its stdout; `None` if the tool is not installed.
fn run(tool: &str, args: &[&str]) -> Option<Vec<u8>> {
    let out = match Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("could not run {tool}: {e}"),
    };
    assert!(
        out.status.success(),
        "{tool} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

fn ffmpeg(args: &[&str]) -> Vec<u8> {
    run("ffmpeg", args).unwrap_or_else(|| {
        panic!(
            "ffmpeg not found on PATH: this test compares voxd's G.711 with ffmpeg's and \
             needs it installed (Debian/Ubuntu: `apt-get install ffmpeg`; CI installs it)"
        )
    })
}

fn ramp() -> Vec<u8> {
    (i16::MIN..=i16::MAX)
        .flat_map(|s| s.to_le_bytes())
        .collect()
}

fn codes() -> Vec<u8> {
    (0..=255u8).collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp path is UTF-8")
}

fn check_encode(format: &str, encode: fn(i16) -> u8) {
    let dir = TempDir::new(format);
    let input = dir.file("ramp.raw", &ramp());
    let out = ffmpeg(&[
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "s16le",
        "-ar",
        "8000",
        "-ac",
        "1",
        "-i",
        path_str(&input),
        "-f",
        format,
        "-",
    ]);
    assert_eq!(out.len(), 65_536, "ffmpeg {format} output length");
    let mut mismatches = Vec::new();
    for (i, s) in (i16::MIN..=i16::MAX).enumerate() {
        let ours = encode(s);
        if ours != out[i] {
            mismatches.push((s, ours, out[i]));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of 65536 {format} encodes differ from ffmpeg; first (sample, voxd, ffmpeg): {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
}

fn check_decode(format: &str, decode: fn(u8) -> i16) {
    let dir = TempDir::new(format);
    let input = dir.file("codes.raw", &codes());
    let out = ffmpeg(&[
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        format,
        "-ar",
        "8000",
        "-ac",
        "1",
        "-i",
        path_str(&input),
        "-f",
        "s16le",
        "-",
    ]);
    assert_eq!(out.len(), 512, "ffmpeg {format} decode output length");
    for code in 0..=255u8 {
        let i = code as usize * 2;
        let theirs = i16::from_le_bytes([out[i], out[i + 1]]);
        assert_eq!(
            decode(code),
            theirs,
            "{format} code {code:#04x}: voxd vs ffmpeg"
        );
    }
}

#[test]
fn ulaw_encode_matches_ffmpeg_on_all_65536_samples() {
    check_encode("mulaw", g711::linear_to_ulaw);
}

#[test]
fn alaw_encode_matches_ffmpeg_on_all_65536_samples() {
    check_encode("alaw", g711::linear_to_alaw);
}

#[test]
fn ulaw_decode_matches_ffmpeg_on_all_256_codes() {
    check_decode("mulaw", g711::ulaw_to_linear);
}

#[test]
fn alaw_decode_matches_ffmpeg_on_all_256_codes() {
    check_decode("alaw", g711::alaw_to_linear);
}

#[test]
fn slice_functions_match_single_sample_functions() {
    let samples: Vec<i16> = (i16::MIN..=i16::MAX).collect();
    let mut u = vec![0u8; samples.len()];
    let mut a = vec![0u8; samples.len()];
    assert_eq!(g711::ulaw_encode(&samples, &mut u), samples.len());
    assert_eq!(g711::alaw_encode(&samples, &mut a), samples.len());
    for (i, &s) in samples.iter().enumerate() {
        assert_eq!(u[i], g711::linear_to_ulaw(s));
        assert_eq!(a[i], g711::linear_to_alaw(s));
    }
}

/// sox is a second opinion: decodes must agree with ffmpeg; encodes are known to
/// differ at decision boundaries (sox rounds, ffmpeg truncates to 14 bits), so the
/// count is printed, and bounded to one step each.
#[test]
fn sox_cross_check() {
    for (enc, dec_name, decode, encode) in [
        (
            "u-law",
            "ulaw",
            g711::ulaw_to_linear as fn(u8) -> i16,
            g711::linear_to_ulaw as fn(i16) -> u8,
        ),
        ("a-law", "alaw", g711::alaw_to_linear, g711::linear_to_alaw),
    ] {
        let dir = TempDir::new("sox");
        let codes_path = dir.file("codes.raw", &codes());
        let Some(dec) = run(
            "sox",
            &[
                "-D",
                "-t",
                "raw",
                "-r",
                "8000",
                "-e",
                enc,
                "-b",
                "8",
                "-c",
                "1",
                path_str(&codes_path),
                "-t",
                "raw",
                "-e",
                "signed",
                "-b",
                "16",
                "-",
            ],
        ) else {
            eprintln!("sox not installed; skipping the sox cross-check");
            return;
        };
        assert_eq!(dec.len(), 512);
        for code in 0..=255u8 {
            let i = code as usize * 2;
            assert_eq!(
                decode(code),
                i16::from_le_bytes([dec[i], dec[i + 1]]),
                "sox {dec_name} decode of {code:#04x}"
            );
        }
        let ramp_path = dir.file("ramp.raw", &ramp());
        let out = run(
            "sox",
            &[
                "-D",
                "-t",
                "raw",
                "-r",
                "8000",
                "-e",
                "signed",
                "-b",
                "16",
                "-c",
                "1",
                path_str(&ramp_path),
                "-t",
                "raw",
                "-e",
                enc,
                "-",
            ],
        )
        .expect("sox vanished");
        assert_eq!(out.len(), 65_536);
        let mut differ = 0;
        for (i, s) in (i16::MIN..=i16::MAX).enumerate() {
            let ours = encode(s);
            if ours != out[i] {
                differ += 1;
                // One quantisation step apart: neighbouring decoded levels.
                let (a, b) = (decode(ours) as i32, decode(out[i]) as i32);
                let step = (a - b).abs();
                assert!(
                    step <= 2048,
                    "sox {dec_name} encode of {s}: voxd {ours:#04x} ({a}) vs sox {:#04x} ({b})",
                    out[i]
                );
            }
        }
        eprintln!("sox {dec_name} encode differs from voxd/ffmpeg on {differ} of 65536 samples (boundary rounding)");
    }
}
