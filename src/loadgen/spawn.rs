//! `voxd loadgen --spawn CONFIG`: start the voxd under test as a child process, learn
//! where it listens, measure it by its pid, and stop it cleanly afterwards.
//!
//! Owns: the child process (its stderr is drained to ours with a `voxd| ` prefix so
//! that its pipe never fills), the parse of its "listening" line, and the SIGTERM at
//! the end. The only `unsafe` is `kill(2)`: SIGTERM to that child, and
//! [`signal_group`] for the process group of a `voxd loadgen --compare-cmd` engine.
//!
//! Must not: guess addresses (they come from the child's own start-up line), or
//! leave the child behind: dropping a [`SpawnedVoxd`] kills it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the child may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Start-up lines of the child in flight from its log thread to the waiting
/// parent.
const LOG_QUEUE: usize = 64;

/// Last start-up lines kept to explain a child that never listened.
const LOG_TAIL: usize = 5;
/// How long it may take to stop after SIGTERM (it ends its calls first).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running child voxd.
#[derive(Debug)]
pub struct SpawnedVoxd {
    child: Option<Child>,
    /// Its AudioSocket listener.
    pub audiosocket: SocketAddr,
    /// Its RTP socket.
    pub rtp: SocketAddr,
}

/// The two addresses of voxd's start-up line
/// (`voxd: AudioSocket on A (tcp), RTP on B (udp), ...`), if this is that line.
pub fn parse_listening_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.split("AudioSocket on ").nth(1)?;
    let a = rest.split_whitespace().next()?.parse().ok()?;
    let rest = rest.split("RTP on ").nth(1)?;
    let b = rest.split_whitespace().next()?.parse().ok()?;
    Some((a, b))
}

impl SpawnedVoxd {
    /// Run `exe serve --config config` and wait until it says where it listens.
    /// Errors are sentences for the operator (with the child's last output).
    pub fn start(exe: &Path, config: &Path) -> Result<SpawnedVoxd, String> {
        Self::start_with_env(exe, config, &[])
    }

    /// [`SpawnedVoxd::start`] with extra environment variables for the child (a
    /// provider simulator's URL and key, ARI credentials).
    pub fn start_with_env(
        exe: &Path,
        config: &Path,
        env: &[(&str, String)],
    ) -> Result<SpawnedVoxd, String> {
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            return Err("child voxd has no stderr pipe".into());
        };
        // Bounded: when the reader below falls behind, the log thread waits (and
        // the child's stderr pipe holds the rest) instead of queueing lines.
        let (tx, rx) = mpsc::sync_channel::<String>(LOG_QUEUE);
        std::thread::Builder::new()
            .name("loadgen-voxd-log".into())
            .spawn(move || {
                let mut ready = false;
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if !ready {
                        ready = parse_listening_line(&line).is_some();
                        if tx.send(line.clone()).is_err() {
                            ready = true;
                        }
                        if ready {
                            continue;
                        }
                    }
                    eprintln!("voxd| {line}");
                }
            })
            .map_err(|e| format!("cannot start the log thread: {e}"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((audiosocket, rtp)) = parse_listening_line(&line) {
                        return Ok(SpawnedVoxd {
                            child: Some(child),
                            audiosocket,
                            rtp,
                        });
                    }
                    if seen.len() == LOG_TAIL {
                        seen.remove(0);
                    }
                    seen.push(line);
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => "did not start listening in 15 s",
                        mpsc::RecvTimeoutError::Disconnected => "exited before listening",
                    };
                    return Err(format!(
                        "child voxd {why} (status {}); its output:\n{}",
                        status.map_or("unknown".into(), |s| s.to_string()),
                        seen.join("\n")
                    ));
                }
            }
        }
    }

    /// The child's process id (for `/proc` sampling).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then wait for it to end its calls and exit (SIGKILL after 20 s).
    pub fn stop(mut self) -> Result<ExitStatus, String> {
        let Some(mut child) = self.child.take() else {
            return Err("already stopped".into());
        };
        terminate(child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("child voxd did not stop within 20 s of SIGTERM; killed".into());
                }
                Err(e) => return Err(format!("cannot wait for child voxd: {e}")),
            }
        }
    }
}

impl Drop for SpawnedVoxd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[allow(unsafe_code)]
fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; `pid` is
    // our own child, not yet reaped (we hold its `Child`), so it names no other
    // process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// Sends `sig` to the process group `pgid` (a child started with
/// `process_group(0)`, whose group id is its pid). A group that is gone is no error.
#[allow(unsafe_code)]
pub fn signal_group(pgid: u32, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. A negative
    // pid names the process group `pgid`, the one our child was started in (a new
    // group of its own); callers signal it before they reap that child or while
    // /proc still shows members of the group, so the id names no other group.
    // pgid > 1 rules out "every process" (-1) and our own group (0).
    unsafe {
        libc::kill(-pgid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let line = "voxd: AudioSocket on 127.0.0.1:8090 (tcp), RTP on 127.0.0.1:18080 (udp), 2 shard(s), io backend io_uring, agent `sim`; Ctrl-C to stop";
        let (a, b) = parse_listening_line(line).unwrap();
        assert_eq!(a, "127.0.0.1:8090".parse().unwrap());
        assert_eq!(b, "127.0.0.1:18080".parse().unwrap());
        assert!(parse_listening_line("warning: something").is_none());
        assert!(parse_listening_line("voxd: AudioSocket on nowhere (tcp)").is_none());
    }
}
