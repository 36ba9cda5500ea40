//! CPU time and memory of a process (the voxd under test) from Linux `/proc`.
//!
//! Owns: [`ProcSample`] (user/system CPU ticks and thread count from
//! `/proc/<pid>/stat`, resident set size from `/proc/<pid>/status`, open descriptors
//! from `/proc/<pid>/fd`), the text parsers for those files, the clock tick rate, and
//! [`cpu_us_per_call_second`], the capacity figure of `targets.md`.
//!
//! Must not: read the clock or hold files open between samples; the driver decides
//! when to sample. The only `unsafe` is the single `sysconf(_SC_CLK_TCK)` call.

use std::io;
use std::sync::OnceLock;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcSample {
    /// User-mode CPU time in clock ticks (`stat` field 14).
    pub utime_ticks: u64,
    /// Kernel-mode CPU time in clock ticks (`stat` field 15).
    pub stime_ticks: u64,
    /// Resident set size in bytes (`status` `VmRSS`).
    pub rss_bytes: u64,
    /// Threads (`stat` field 20).
    pub threads: u64,
    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fds: u64,
}

/// The fields of `/proc/<pid>/stat` the load generator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// Field 14, user CPU ticks.
    pub utime_ticks: u64,
    /// Field 15, system CPU ticks.
    pub stime_ticks: u64,
    /// Field 20, thread count.
    pub threads: u64,
    /// Field 4, parent process id.
    pub ppid: u32,
    /// Field 5, process group id.
    pub pgrp: u32,
}

impl ProcSample {
    /// Reads `/proc/<pid>/{stat,status,fd}`. Errors if the process is gone, the
    /// files are unreadable (another user's `fd` directory), or a file does not parse
    /// (`InvalidData`).
    pub fn read(pid: u32) -> io::Result<ProcSample> {
        Self::read_dir(&format!("/proc/{pid}"))
    }

    /// [`ProcSample::read`] for the calling process (`/proc/self`).
    pub fn read_self() -> io::Result<ProcSample> {
        Self::read_dir("/proc/self")
    }

    fn read_dir(dir: &str) -> io::Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
        let s = parse_stat(&stat).ok_or_else(|| invalid("/proc/<pid>/stat"))?;
        let status = std::fs::read_to_string(format!("{dir}/status"))?;
        let rss_bytes =
            parse_status_rss(&status).ok_or_else(|| invalid("/proc/<pid>/status VmRSS"))?;
        let fds = std::fs::read_dir(format!("{dir}/fd"))?.count() as u64;
        Ok(ProcSample {
            utime_ticks: s.utime_ticks,
            stime_ticks: s.stime_ticks,
            rss_bytes,
            threads: s.threads,
            fds,
        })
    }

    /// [`ProcSample::read`] summed over `pid` and all its descendants (found by the
    /// parent field of every `/proc/<n>/stat`): for an engine that runs as a process
    /// tree (`voxd loadgen --compare-cmd`, started through `sh -c`). A descendant
    /// that vanishes between the scan and the read is skipped; the root must exist.
    pub fn read_tree(pid: u32) -> io::Result<ProcSample> {
        let mut total = ProcSample::read(pid)?;
        for child in descendants(pid)? {
            if let Ok(s) = ProcSample::read(child) {
                total.utime_ticks += s.utime_ticks;
                total.stime_ticks += s.stime_ticks;
                total.rss_bytes += s.rss_bytes;
                total.threads += s.threads;
                total.fds += s.fds;
            }
        }
        Ok(total)
    }

    /// User + system ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime_ticks + self.stime_ticks
    }
}

/// `(pid, stat fields)` of every process, from one scan of `/proc` (processes that
/// vanish during the scan are left out).
fn all_processes() -> io::Result<Vec<(u32, StatFields)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(f) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            out.push((pid, f));
        }
    }
    Ok(out)
}

/// The processes of process group `pgid`.
pub fn group_members(pgid: u32) -> io::Result<Vec<u32>> {
    Ok(all_processes()?
        .into_iter()
        .filter(|(_, f)| f.pgrp == pgid)
        .map(|(p, _)| p)
        .collect())
}

/// Every descendant of `root` (children, their children, ...), from one scan of
/// `/proc`.
pub fn descendants(root: u32) -> io::Result<Vec<u32>> {
    let parent_of: Vec<(u32, u32)> = all_processes()?
        .into_iter()
        .map(|(p, f)| (p, f.ppid))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && child != root && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    Ok(out)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse {what}"))
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted
/// from the last `)`. `None` if the text is malformed.
pub fn parse_stat(text: &str) -> Option<StatFields> {
    let after = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first token after the command name.
    let mut fields = after.split_ascii_whitespace();
    let mut nth = |n: usize| -> Option<u64> { fields.nth(n)?.parse().ok() };
    // Tokens are fields 3, 4, ...: field k is token k - 3.
    let ppid = u32::try_from(nth(4 - 3)?).ok()?;
    let pgrp = u32::try_from(nth(0)?).ok()?; // field 5
    let utime_ticks = nth(14 - 5 - 1)?;
    let stime_ticks = nth(0)?; // field 15
    let threads = nth(20 - 15 - 1)?;
    Some(StatFields {
        utime_ticks,
        stime_ticks,
        threads,
        ppid,
        pgrp,
    })
}

/// The `VmRSS` line of `/proc/<pid>/status`, in bytes. `None` if absent (kernel
/// threads, zombies) or malformed.
pub fn parse_status_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let mult = match parts.next() {
        Some("kB") | None => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        Some(_) => return None,
    };
    Some(value * mult)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on every mainstream Linux),
/// read once; 100 if `sysconf` fails.
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        let t = sysconf_clk_tck();
        if t > 0 {
            t as u64
        } else {
            100
        }
    })
}

#[allow(unsafe_code)]
fn sysconf_clk_tck() -> libc::c_long {
    // SAFETY: sysconf takes an integer name, reads no caller memory and has no
    // preconditions; an unknown name returns -1, which the caller handles.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
}

/// CPU microseconds the process used per call-second between two samples:
/// `(cpu ticks after - before) / ticks per second * 1e6 / (calls * seconds)`.
/// Returns 0 when `calls` or `seconds` is zero. Tick resolution is 10 ms, so measure
/// over enough call-seconds (2,000 calls for 10 s resolve 0.5 us).
pub fn cpu_us_per_call_second(
    before: &ProcSample,
    after: &ProcSample,
    calls: u64,
    seconds: f64,
) -> f64 {
    cpu_us_per_call_second_with(before, after, calls, seconds, clock_ticks_per_second())
}

/// [`cpu_us_per_call_second`] with an explicit tick rate.
pub fn cpu_us_per_call_second_with(
    before: &ProcSample,
    after: &ProcSample,
    calls: u64,
    seconds: f64,
    ticks_per_second: u64,
) -> f64 {
    let call_seconds = calls as f64 * seconds;
    if call_seconds <= 0.0 || ticks_per_second == 0 {
        return 0.0;
    }
    let ticks = after.cpu_ticks().saturating_sub(before.cpu_ticks());
    ticks as f64 * 1e6 / ticks_per_second as f64 / call_seconds
}

/// What the report says about voxd's process over a measured window.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ProcSummary {
    /// Sample at the start of the window.
    pub before: ProcSample,
    /// Sample at the end of the window.
    pub after: ProcSample,
    /// Concurrent calls during the window.
    pub calls: u64,
    /// Window length in seconds.
    pub seconds: f64,
    /// CPU microseconds per call-second (target <= 250 us, 2 cores).
    pub cpu_us_per_call_second: f64,
    /// CPU use over the window as a share of one core (1.0 = one core busy).
    pub cores_busy: f64,
    /// RSS growth over the window per call, in bytes (negative if it shrank).
    pub rss_growth_per_call_bytes: f64,
}

impl ProcSummary {
    /// Summarises two samples taken `seconds` apart with `calls` calls running.
    pub fn new(before: ProcSample, after: ProcSample, calls: u64, seconds: f64) -> Self {
        let tps = clock_ticks_per_second();
        let ticks = after.cpu_ticks().saturating_sub(before.cpu_ticks());
        let cores_busy = if seconds > 0.0 {
            ticks as f64 / tps as f64 / seconds
        } else {
            0.0
        };
        let rss_growth_per_call_bytes = if calls > 0 {
            (after.rss_bytes as f64 - before.rss_bytes as f64) / calls as f64
        } else {
            0.0
        };
        ProcSummary {
            before,
            after,
            calls,
            seconds,
            cpu_us_per_call_second: cpu_us_per_call_second_with(
                &before, &after, calls, seconds, tps,
            ),
            cores_busy,
            rss_growth_per_call_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = ProcSample::read_self().unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.fds > 0);
        assert!(s.threads >= 1);
        let by_pid = ProcSample::read(std::process::id()).unwrap();
        assert!(by_pid.rss_bytes > 0 && by_pid.threads >= 1);
        // CPU time never goes backwards.
        let mut x = 0u64;
        for i in 0..200_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let later = ProcSample::read_self().unwrap();
        assert!(later.cpu_ticks() >= s.cpu_ticks());
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn tree_includes_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep runs");
        let me = std::process::id();
        assert!(descendants(me).unwrap().contains(&child.id()));
        // The child has no children: its tree is itself (one thread).
        assert!(descendants(child.id()).unwrap().is_empty());
        assert_eq!(ProcSample::read_tree(child.id()).unwrap().threads, 1);
        assert!(ProcSample::read_tree(me).unwrap().threads >= 2);
        let _ = child.kill();
        let _ = child.wait();
        assert!(ProcSample::read_tree(u32::MAX - 1).is_err());
    }

    #[test]
    fn missing_process_is_an_error() {
        // PIDs are below 2^22 on Linux.
        assert!(ProcSample::read(u32::MAX - 1).is_err());
    }

    #[test]
    fn stat_with_spaces_and_parentheses_in_comm() {
        // Fields: 1 pid, 2 comm, 3 state, 4 ppid ... 14 utime, 15 stime ... 20 threads.
        let text = "4242 (voxd (shard 1)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    777 333 0 0 20 0 9 0 12345 1000000 2500 18446744073709551615";
        let f = parse_stat(text).unwrap();
        assert_eq!(
            f,
            StatFields {
                utime_ticks: 777,
                stime_ticks: 333,
                threads: 9,
                ppid: 1,
                pgrp: 4242,
            }
        );
        let odd = "1 ()) (x) R 0 0 0 0 0 0 0 0 0 0 5 6 0 0 0 0 2 0\n";
        assert_eq!(parse_stat(odd).unwrap().threads, 2);
        assert_eq!(parse_stat("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("no parens here"), None);
    }

    #[test]
    fn status_rss() {
        let text = "Name:\tvoxd\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(text), Some(5120 * 1024));
        assert_eq!(parse_status_rss("Name:\tkthreadd\n"), None);
        assert_eq!(parse_status_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn cpu_per_call_second() {
        let before = ProcSample {
            utime_ticks: 100,
            stime_ticks: 50,
            ..ProcSample::default()
        };
        let after = ProcSample {
            utime_ticks: 300,
            stime_ticks: 150,
            ..ProcSample::default()
        };
        // 300 ticks at 100/s = 3 s of CPU over 1000 calls x 10 s = 300 us.
        let v = cpu_us_per_call_second_with(&before, &after, 1000, 10.0, 100);
        assert!((v - 300.0).abs() < 1e-9);
        assert_eq!(cpu_us_per_call_second(&before, &after, 0, 10.0), 0.0);
        assert_eq!(cpu_us_per_call_second(&before, &after, 10, 0.0), 0.0);
        // A counter going backwards (wrong pid) is not negative CPU.
        assert_eq!(
            cpu_us_per_call_second_with(&after, &before, 1, 1.0, 100),
            0.0
        );
        let sum = ProcSummary::new(
            ProcSample {
                rss_bytes: 1_000_000,
                ..before
            },
            ProcSample {
                rss_bytes: 2_024_000,
                ..after
            },
            1000,
            10.0,
        );
        assert!((sum.rss_growth_per_call_bytes - 1024.0).abs() < 1e-9);
        assert!(sum.cpu_us_per_call_second > 0.0 && sum.cores_busy > 0.0);
    }
}
