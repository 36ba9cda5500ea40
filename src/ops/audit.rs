//! The optional audit log (`logging.audit_path`): one JSON line per call lifecycle
//! event (`call_started`, `call_ended`), appended by a dedicated thread.
//!
//! Owns: the file and its writer thread, fed through a bounded queue. Must not:
//! block the control runtime (records are queued with `try_send`; a full queue
//! drops and counts), stop voxd when the disk is full or the file goes away (write
//! errors are counted and logged at most once a minute; calls go on), or hold
//! anything but call lifecycle facts (no audio, no transcripts, no secrets).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records waiting for the writer, at most.
pub const QUEUE: usize = 4096;

/// A failing audit log is reported at most this often (the failures are counted
/// in `voxd_audit_write_errors_total` all along).
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Counters of the audit log, exported as `voxd_audit_records_written_total`,
/// `voxd_audit_records_dropped_total` and `voxd_audit_write_errors_total`.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Lines written.
    pub written: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Writes that failed (disk full, file gone).
    pub failed: AtomicU64,
}

/// A handle to the audit log; clone freely.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: SyncSender<String>,
    /// Its counters.
    pub stats: Arc<AuditStats>,
}

impl AuditLog {
    /// Open `path` for appending (created with mode 0600 if missing) and start the
    /// writer thread. Errors when the file cannot be opened at start-up.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let stats = Arc::new(AuditStats::default());
        let st = stats.clone();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("voxd-audit".into())
            .spawn(move || {
                let mut file = file;
                let mut last_warn: Option<Instant> = None;
                // Records lost since the last successful write.
                let mut lost: u64 = 0;
                for line in rx {
                    match file.write_all(line.as_bytes()) {
                        Ok(()) => {
                            st.written.fetch_add(1, Ordering::Relaxed);
                            if lost > 0 {
                                tracing::info!(path = %shown, lost, "audit log writes work again");
                                lost = 0;
                                last_warn = None;
                            }
                        }
                        Err(e) => {
                            st.failed.fetch_add(1, Ordering::Relaxed);
                            lost += 1;
                            if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                                last_warn = Some(Instant::now());
                                tracing::warn!(path = %shown, error = %e, "audit log write failed; calls go on, records are lost until it works again");
                            }
                        }
                    }
                }
            })?;
        Ok(AuditLog { tx, stats })
    }

    /// Queue one record (`event` plus `fields`, with a UTC timestamp).
    pub fn record(&self, event: &str, mut fields: serde_json::Value) {
        if let Some(m) = fields.as_object_mut() {
            m.insert("event".into(), event.into());
            m.insert(
                "ts".into(),
                crate::loadgen::ari_emu::state::ari_timestamp(std::time::SystemTime::now()).into(),
            );
        }
        let mut line = fields.to_string();
        line.push('\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_and_a_full_disk_is_survived() {
        let dir = std::env::temp_dir().join(format!("voxd-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let a = AuditLog::open(&path).unwrap();
        a.record("call_started", serde_json::json!({"call": "0/1.0"}));
        a.record(
            "call_ended",
            serde_json::json!({"call": "0/1.0", "reason": "caller_hangup"}),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.stats.written.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event"], "call_started");
        assert_eq!(lines[1]["reason"], "caller_hangup");
        assert!(lines[1]["ts"].as_str().unwrap().contains('T'));

        // /dev/full: every write fails with ENOSPC; recording goes on, counted.
        let full = AuditLog::open(Path::new("/dev/full")).unwrap();
        full.record("call_started", serde_json::json!({"call": "x"}));
        while full.stats.failed.load(Ordering::Relaxed) < 1 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        full.record("call_ended", serde_json::json!({"call": "x"}));
    }
}
