//! `voxd loadgen --ramp START:STEP:MAX` (or `--ramp N1,N2,...`): capacity search. Runs one ordinary load run
//! ([`driver::run`], or [`via_ari::run`]) per step of concurrent calls, against the
//! same kind of engine each time, until a step breaks the timing SLO; the capacity
//! is the last step before that which met it. With `--compare-cmd` a second engine
//! (started by a shell command) gets the same steps, interleaved with voxd's
//! (voxd N, other N, voxd N + STEP, ...) so that drift on a shared machine hits both
//! alike.
//!
//! Owns: the ramp plan ([`RampSpec`], [`RampPlan`]), the stop rule
//! ([`EngineRamp::record`]), one step's figures ([`StepResult`]), the engines' life
//! per step (a `--spawn`ed voxd or the `--compare-cmd` command is started afresh for
//! every step, so no step inherits calls or memory from the one before; an engine
//! already running gets `--ramp-pause` seconds between steps instead), `/proc`
//! sampling of a command's whole process tree, and the report ([`RampReport`]:
//! terminal table, `report.md`, `ramp.json`; the plot is [`super::plot`]).
//!
//! Must not: measure anything itself that the driver measures (the step figures are
//! the driver's [`Outcome`]), or judge timing in tests (the SLO verdict is data).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::driver::{self, DriverConfig, Outcome};
use super::procstat::{ProcSample, ProcSummary};
use super::spawn::SpawnedVoxd;
use super::stats::SloLimits;
use super::via_ari::{self, AriSettings};

/// How long a `--compare-cmd` engine may take to accept a TCP connection.
const COMMAND_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an RTP `--compare-cmd` engine is given to start (UDP cannot be probed).
const COMMAND_RTP_START: Duration = Duration::from_secs(1);
/// How long a `--compare-cmd` engine may take to stop after SIGTERM.
const COMMAND_STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The call counts of a ramp: `START:STEP:MAX` (START, START + STEP, ... up to MAX)
/// or a list `N1,N2,...` (strictly increasing, e.g. `100,200,400,800`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RampSpec {
    /// Calls of the first step.
    pub start: usize,
    /// Calls added per step (`None` for a list).
    pub step: Option<usize>,
    /// Calls of the last step.
    pub max: usize,
    /// Every step's calls, in order.
    pub steps: Vec<usize>,
}

impl RampSpec {
    /// Parses `START:STEP:MAX` (all positive, `MAX >= START`) or `N1,N2,...` (all
    /// positive, strictly increasing); a sentence on error.
    pub fn parse(s: &str) -> Result<RampSpec, String> {
        let num = |what: &str, v: &str| -> Result<usize, String> {
            match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("`{s}`: {what} must be a positive whole number")),
            }
        };
        if s.contains(',') || !s.contains(':') {
            let steps = s
                .split(',')
                .map(|v| num("every step", v))
                .collect::<Result<Vec<usize>, String>>()
                .map_err(|e| {
                    format!("{e} (expected START:STEP:MAX, e.g. 100:100:1000, or a list, e.g. 100,200,400)")
                })?;
            if steps.windows(2).any(|w| w[1] <= w[0]) {
                return Err(format!("`{s}`: the steps must increase"));
            }
            return Ok(RampSpec {
                start: steps[0],
                step: None,
                max: steps[steps.len() - 1],
                steps,
            });
        }
        let parts: Vec<&str> = s.split(':').collect();
        let [a, b, c] = parts.as_slice() else {
            return Err(format!(
                "`{s}`: expected START:STEP:MAX, e.g. 100:100:1000, or a list, e.g. 100,200,400"
            ));
        };
        let (start, step, max) = (num("START", a)?, num("STEP", b)?, num("MAX", c)?);
        if max < start {
            return Err(format!("`{s}`: MAX must be at least START"));
        }
        Ok(RampSpec {
            start,
            step: Some(step),
            max,
            steps: (start..=max).step_by(step).collect(),
        })
    }

    /// The call counts of every step.
    pub fn steps(&self) -> Vec<usize> {
        self.steps.clone()
    }

    /// The ramp as typed: `START:STEP:MAX` or the list.
    pub fn describe(&self) -> String {
        match self.step {
            Some(step) => format!("{}:{step}:{}", self.start, self.max),
            None => self
                .steps
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The smallest distance between two steps (the plot's x padding); 1 for a
    /// single step.
    pub fn min_step(&self) -> usize {
        self.steps
            .windows(2)
            .map(|w| w[1] - w[0])
            .min()
            .unwrap_or(1)
    }
}

/// What a ramp runs and when it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RampPlan {
    /// The call counts.
    pub spec: RampSpec,
    /// Steps run after the first failing one (to show the knee), at most.
    pub continue_after_fail: usize,
    /// The SLO a step must meet.
    pub limits: SloLimits,
}

/// The figures of one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepResult {
    /// Concurrent calls.
    pub calls: usize,
    /// Why the step has no figures (setup error, engine did not start), if so.
    pub error: Option<String>,
    /// Inter-arrival deviation p50, ms.
    pub p50_dev_ms: f64,
    /// p99, ms.
    pub p99_dev_ms: f64,
    /// p99.9, ms.
    pub p999_dev_ms: f64,
    /// Largest, ms.
    pub max_dev_ms: f64,
    /// p99 over the steady window only (from one second after the ramp: call
    /// set-up left out), ms; `None` when the window was empty.
    pub steady_p99_dev_ms: Option<f64>,
    /// p99.9 over the steady window only, ms.
    pub steady_p999_dev_ms: Option<f64>,
    /// Intervals measured.
    pub intervals: u64,
    /// Gaps (late in speech + silent gaps).
    pub gaps: u64,
    /// Frames over 30 ms after the one before.
    pub late_frames: u64,
    /// Calls that received no frame.
    pub calls_without_frames: u64,
    /// Engine CPU microseconds per call-second over the window.
    pub cpu_us_per_call_second: Option<f64>,
    /// Engine CPU over the window, cores.
    pub cores: Option<f64>,
    /// Engine RSS at the end of the window, MiB.
    pub rss_mib: Option<f64>,
    /// Engine RSS growth from before the step's first call to the end of the
    /// window, per call, KiB.
    pub rss_kib_per_call: Option<f64>,
    /// The load generator's own CPU over the window, cores.
    pub loadgen_cores: Option<f64>,
    /// Caller ticks the load generator ran over 10 ms late (non-zero: the step's
    /// timing figures are suspect).
    pub loadgen_late_ticks: u64,
    /// The step met the SLO.
    pub slo_pass: bool,
}

impl StepResult {
    /// A step that produced no figures.
    pub fn failed(calls: usize, error: String) -> StepResult {
        StepResult {
            calls,
            error: Some(error),
            p50_dev_ms: 0.0,
            p99_dev_ms: 0.0,
            p999_dev_ms: 0.0,
            max_dev_ms: 0.0,
            steady_p99_dev_ms: None,
            steady_p999_dev_ms: None,
            intervals: 0,
            gaps: 0,
            late_frames: 0,
            calls_without_frames: 0,
            cpu_us_per_call_second: None,
            cores: None,
            rss_mib: None,
            rss_kib_per_call: None,
            loadgen_cores: None,
            loadgen_late_ticks: 0,
            slo_pass: false,
        }
    }

    /// The figures of a finished run: the engine's process figures from `process`
    /// (the window), its RSS growth against `idle` (sampled before the first call).
    pub fn from_outcome(
        out: &Outcome,
        limits: SloLimits,
        process: Option<&ProcSummary>,
        idle: Option<&ProcSample>,
    ) -> StepResult {
        let mut report = out.report.clone();
        report.slo_limits = limits;
        let d = &report.inter_arrival_dev_us;
        let ms = |us: u64| us as f64 / 1_000.0;
        let calls = out.calls.max(1) as f64;
        StepResult {
            calls: out.calls,
            error: None,
            p50_dev_ms: ms(d.p50),
            p99_dev_ms: ms(d.p99),
            p999_dev_ms: ms(d.p999),
            max_dev_ms: ms(d.max),
            steady_p99_dev_ms: report.steady_dev_us.map(|p| ms(p.p99)),
            steady_p999_dev_ms: report.steady_dev_us.map(|p| ms(p.p999)),
            intervals: d.count,
            gaps: report.gaps,
            late_frames: report.counts.late_frames,
            calls_without_frames: out.calls_without_frames,
            cpu_us_per_call_second: process.map(|p| p.cpu_us_per_call_second),
            cores: process.map(|p| p.cores_busy),
            rss_mib: process.map(|p| p.after.rss_bytes as f64 / 1_048_576.0),
            rss_kib_per_call: process
                .zip(idle)
                .map(|(p, i)| (p.after.rss_bytes as f64 - i.rss_bytes as f64) / calls / 1024.0),
            loadgen_cores: out.loadgen.as_ref().map(|p| p.cores_busy),
            loadgen_late_ticks: report.counts.caller_late_ticks,
            slo_pass: report.slo().pass,
        }
    }
}

/// One engine's ramp so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineRamp {
    /// `voxd`, or the `--compare-name`.
    pub name: String,
    /// How it was run (the spawned config, the command, or the address).
    pub how: String,
    /// Steps in order.
    pub steps: Vec<StepResult>,
    /// The last step that met the SLO before the first that did not (`None`: the
    /// first step failed).
    pub capacity_calls: Option<usize>,
    /// Why the ramp ended (`None` while it runs).
    pub stopped: Option<String>,
    /// Failing steps still to run after the first failure.
    #[serde(skip)]
    remaining_after_fail: Option<usize>,
}

impl EngineRamp {
    /// An engine's empty ramp.
    pub fn new(name: &str, how: &str) -> EngineRamp {
        EngineRamp {
            name: name.to_string(),
            how: how.to_string(),
            steps: Vec::new(),
            capacity_calls: None,
            stopped: None,
            remaining_after_fail: None,
        }
    }

    /// Whether the ramp wants another step.
    pub fn running(&self) -> bool {
        self.stopped.is_none()
    }

    /// Records a step and applies the stop rule: the first failing step ends the
    /// ramp, after `plan.continue_after_fail` more steps; an error (no figures)
    /// ends it at once; `last` (MAX reached) ends it too.
    pub fn record(&mut self, plan: &RampPlan, step: StepResult, last: bool) {
        let calls = step.calls;
        let pass = step.slo_pass;
        let error = step.error.clone();
        self.steps.push(step);
        let first_failure = self.steps.iter().position(|s| !s.slo_pass);
        self.capacity_calls = match first_failure {
            Some(0) => None,
            Some(i) => Some(self.steps[i - 1].calls),
            None => Some(calls),
        };
        if let Some(e) = error {
            self.stopped = Some(format!("error at {calls} calls: {e}"));
            return;
        }
        if !pass && self.remaining_after_fail.is_none() {
            self.remaining_after_fail = Some(plan.continue_after_fail);
        } else if let Some(n) = self.remaining_after_fail.as_mut() {
            *n = n.saturating_sub(1);
        }
        let first_fail_calls = first_failure.map(|i| self.steps[i].calls);
        if self.remaining_after_fail == Some(0) {
            self.stopped = Some(format!(
                "SLO broken at {} calls",
                first_fail_calls.unwrap_or(calls)
            ));
        } else if last {
            self.stopped = Some(match first_fail_calls {
                Some(n) => format!("SLO broken at {n} calls; reached MAX {calls}"),
                None => format!("reached MAX {calls} calls with the SLO met"),
            });
        }
    }
}

/// The machine a ramp ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cores: usize,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description (unknown fields are `"unknown"`).
    pub fn detect() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel,
        }
    }
}

/// The whole ramp: settings, machine, every engine's steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RampReport {
    /// The command line as typed.
    pub command_line: String,
    /// Where it ran.
    pub machine: Machine,
    /// Transport name.
    pub transport: String,
    /// `direct` or `ari`.
    pub via: String,
    /// The agent (`sim` of the spawned config, or the provider simulator).
    pub agent: String,
    /// Measured window per step, seconds.
    pub seconds_per_step: f64,
    /// Calls started per second while a step ramps up.
    pub rate: f64,
    /// The call counts.
    pub ramp: RampSpec,
    /// The SLO a step must meet.
    pub slo: SloLimits,
    /// voxd first, then the compared engine.
    pub engines: Vec<EngineRamp>,
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.decimals$}"))
}

fn verdict(s: &StepResult) -> String {
    match (&s.error, s.slo_pass) {
        (Some(_), _) => "error".into(),
        (None, true) if s.loadgen_late_ticks > 0 => "pass (loadgen late)".into(),
        (None, true) => "pass".into(),
        (None, false) if s.loadgen_late_ticks > 0 => "FAIL (loadgen late)".into(),
        (None, false) => "FAIL".into(),
    }
}

/// The column heads of a step table.
const STEP_HEAD: &str = "| calls | p50 dev ms | p99 dev ms | p99.9 dev ms | steady p99 / p99.9 ms | gaps | cpu us/call-s | cores | rss KiB/call | rss MiB | loadgen cores | loadgen late ticks | SLO |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

fn step_row(s: &StepResult) -> String {
    if let Some(e) = &s.error {
        return format!(
            "| {} | error: {} | | | | | | | | | | | error |\n",
            s.calls,
            e.replace('|', "/").replace('\n', " ")
        );
    }
    format!(
        "| {} | {:.3} | {:.3} | {:.3} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        s.calls,
        s.p50_dev_ms,
        s.p99_dev_ms,
        s.p999_dev_ms,
        opt(s.steady_p99_dev_ms, 3),
        opt(s.steady_p999_dev_ms, 3),
        s.gaps,
        opt(s.cpu_us_per_call_second, 0),
        opt(s.cores, 2),
        opt(s.rss_kib_per_call, 1),
        opt(s.rss_mib, 1),
        opt(s.loadgen_cores, 2),
        s.loadgen_late_ticks,
        verdict(s)
    )
}

impl EngineRamp {
    /// `capacity: N calls (...)` line.
    pub fn capacity_line(&self) -> String {
        let cap = match self.capacity_calls {
            Some(n) => format!("{n} calls"),
            None => match self.steps.first() {
                Some(s) => format!("none (below the first step, {} calls)", s.calls),
                None => "none (no step ran)".into(),
            },
        };
        format!(
            "{} capacity: {cap} (the last step that met the SLO); {}",
            self.name,
            self.stopped.as_deref().unwrap_or("still running")
        )
    }
}

impl RampReport {
    /// The terminal summary: one Markdown table per engine and its capacity line.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "ramp {} over {} (via {}), {} s per step, SLO: {}\n",
            self.ramp.describe(),
            self.transport,
            self.via,
            self.seconds_per_step,
            self.slo.describe()
        );
        for e in &self.engines {
            s.push_str(&format!("\n{} ({})\n", e.name, e.how));
            s.push_str(STEP_HEAD);
            for st in &e.steps {
                s.push_str(&step_row(st));
            }
            s.push_str(&e.capacity_line());
            s.push('\n');
        }
        s
    }

    /// `report.md`: settings, machine, tables, capacity, side by side when two
    /// engines ran, and the plot (`ramp.png` beside it).
    pub fn to_markdown(&self, plot: Option<&str>) -> String {
        let mut s = String::from("# voxd capacity ramp\n\n");
        for e in &self.engines {
            s.push_str(&format!("* **{}**\n", e.capacity_line()));
        }
        s.push_str(&format!(
            "\nCapacity is the last step that met the timing SLO ({}) before the first \
             step that did not. Steps whose load generator ran late (late ticks > 0) \
             have suspect timing figures.\n\n",
            self.slo.describe()
        ));
        s.push_str("## Run\n\n");
        s.push_str(&format!("* command: `{}`\n", self.command_line));
        s.push_str(&format!(
            "* machine: {}, {} cores, Linux {}\n",
            self.machine.cpu_model, self.machine.cores, self.machine.kernel
        ));
        s.push_str(&format!(
            "* transport: {} via {}, agent: {}\n* steps: {} calls, {} s measured per \
             step after a ramp-up at {} calls/s\n",
            self.transport,
            self.via,
            self.agent,
            self.ramp.describe(),
            self.seconds_per_step,
            self.rate
        ));
        for e in &self.engines {
            s.push_str(&format!("* {}: {}\n", e.name, e.how));
        }
        if let Some(p) = plot {
            s.push_str(&format!("\n![ramp]({p})\n"));
        }
        for e in &self.engines {
            s.push_str(&format!("\n## {}\n\n", e.name));
            s.push_str(STEP_HEAD);
            for st in &e.steps {
                s.push_str(&step_row(st));
            }
            s.push_str(&format!("\n{}\n", e.capacity_line()));
        }
        if self.engines.len() == 2 {
            s.push_str(&self.side_by_side());
        }
        s.push_str(
            "\nColumns: deviation of the engine's frame inter-arrival from 20 ms at the \
             caller (ms), over each call's whole life (what the SLO judges) and, beside \
             it, over the steady window only (from 1 s after the ramp, call set-up left \
             out); gaps: agent audio that stopped while the agent had audio \
             queued; cpu: engine CPU per call-second over the window (process tree for \
             a command); rss KiB/call: RSS growth from before the step's first call to \
             the end of the window, per call; loadgen: the load generator's own CPU and \
             late ticks.\n",
        );
        s
    }

    fn side_by_side(&self) -> String {
        let (a, b) = (&self.engines[0], &self.engines[1]);
        let (na, nb) = (&a.name, &b.name);
        let mut s = format!(
            "\n## Side by side\n\n| calls | {na} p99 ms | {nb} p99 ms | {na} p99.9 ms | {nb} p99.9 ms \
             | {na} gaps | {nb} gaps | {na} cpu us/call-s | {nb} cpu us/call-s | {na} rss KiB/call \
             | {nb} rss KiB/call | {na} SLO | {nb} SLO |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        );
        let mut calls: Vec<usize> = a.steps.iter().chain(&b.steps).map(|s| s.calls).collect();
        calls.sort_unstable();
        calls.dedup();
        let find = |e: &EngineRamp, n: usize| e.steps.iter().find(|s| s.calls == n).cloned();
        let cell = |st: &Option<StepResult>, f: &dyn Fn(&StepResult) -> String| {
            st.as_ref().map_or("-".into(), |s| {
                if s.error.is_some() {
                    "error".into()
                } else {
                    f(s)
                }
            })
        };
        for n in calls {
            let (x, y) = (find(a, n), find(b, n));
            let p99 = |s: &StepResult| format!("{:.3}", s.p99_dev_ms);
            let p999 = |s: &StepResult| format!("{:.3}", s.p999_dev_ms);
            let gaps = |s: &StepResult| s.gaps.to_string();
            let cpu = |s: &StepResult| opt(s.cpu_us_per_call_second, 0);
            let rss = |s: &StepResult| opt(s.rss_kib_per_call, 1);
            let slo = |s: &StepResult| verdict(s);
            s.push_str(&format!(
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                cell(&x, &p99),
                cell(&y, &p99),
                cell(&x, &p999),
                cell(&y, &p999),
                cell(&x, &gaps),
                cell(&y, &gaps),
                cell(&x, &cpu),
                cell(&y, &cpu),
                cell(&x, &rss),
                cell(&y, &rss),
                cell(&x, &slo),
                cell(&y, &slo),
            ));
        }
        s
    }

    /// `ramp.json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("ramp report serialises")
    }

    /// Writes `report.md`, `ramp.json` and `ramp.png` into `dir` (created if
    /// missing). A plot that cannot be drawn is a warning in the returned list, not
    /// an error: the tables are the result.
    pub fn write_dir(&self, dir: &Path) -> Result<Vec<String>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut warnings = Vec::new();
        let png = dir.join("ramp.png");
        let plot = match super::plot::ramp_png(self, &png) {
            Ok(note) => {
                warnings.extend(note);
                Some("ramp.png")
            }
            Err(e) => {
                warnings.push(format!("no plot: {e}"));
                None
            }
        };
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
        };
        write("report.md", self.to_markdown(plot))?;
        write("ramp.json", self.to_json())?;
        Ok(warnings)
    }
}

/// How an engine is reached and run for each step.
#[derive(Debug, Clone)]
pub enum EngineTarget {
    /// `voxd serve --config CONFIG` (this binary), started afresh for each step and
    /// stopped with SIGTERM after it; dialled where its start-up line says, or on
    /// `port` of the base target's host when given.
    Spawn {
        /// This program.
        exe: PathBuf,
        /// Its configuration.
        config: PathBuf,
        /// Extra environment (provider simulator URL and key, ARI credentials).
        env: Vec<(String, String)>,
        /// `--port`, overriding the child's own.
        port: Option<u16>,
    },
    /// An engine that is already running at the base target (`pid` for `/proc`);
    /// steps are `pause` apart so that it can end the calls of the step before.
    Running {
        /// Its process id, if known.
        pid: Option<u32>,
        /// Rest between steps.
        pause: Duration,
    },
    /// `sh -c CMD`, started afresh for each step in its own process group, dialled
    /// at `target`, measured over its whole process tree, stopped with SIGTERM to
    /// the group.
    Command {
        /// The shell command.
        cmd: String,
        /// Where the load goes.
        target: SocketAddr,
        /// Extra environment (the provider simulator's URL and key).
        env: Vec<(String, String)>,
        /// Its stdout and stderr go here (appended), else nowhere.
        log: Option<PathBuf>,
    },
}

impl EngineTarget {
    /// A short description for the report.
    pub fn describe(&self) -> String {
        match self {
            EngineTarget::Spawn { config, .. } => {
                format!("voxd serve --config {} (fresh per step)", config.display())
            }
            EngineTarget::Running { pid: Some(p), .. } => format!("running engine, pid {p}"),
            EngineTarget::Running { pid: None, .. } => "running engine (no pid: no CPU/RSS)".into(),
            EngineTarget::Command { cmd, target, .. } => {
                format!("`{cmd}` at {target} (fresh per step)")
            }
        }
    }
}

/// One engine to ramp.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    /// Its name in the report.
    pub name: String,
    /// How it runs.
    pub target: EngineTarget,
}

/// How the steps' load reaches the engines.
#[derive(Debug, Clone)]
pub enum Via {
    /// The load generator dials the engine.
    Direct,
    /// Through the ARI emulator.
    Ari(AriSettings),
}

/// A `sh -c CMD` engine in its own process group.
struct CommandEngine {
    child: Child,
}

impl CommandEngine {
    fn start(
        cmd: &str,
        target: SocketAddr,
        tcp: bool,
        env: &[(String, String)],
        log: Option<&Path>,
    ) -> Result<CommandEngine, String> {
        use std::os::unix::process::CommandExt;
        let (out, err) = match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("cannot open {}: {e}", p.display()))?;
                let g = f
                    .try_clone()
                    .map_err(|e| format!("cannot open {}: {e}", p.display()))?;
                (Stdio::from(f), Stdio::from(g))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run `{cmd}`: {e}"))?;
        let mut eng = CommandEngine { child };
        let deadline = Instant::now() + COMMAND_READY_TIMEOUT;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = eng.child.try_wait() {
                return Err(format!("`{cmd}` exited before it was ready ({status})"));
            }
            if tcp {
                if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
                    return Ok(eng);
                }
                if Instant::now() >= deadline {
                    eng.stop();
                    return Err(format!(
                        "`{cmd}` did not accept a connection on {target} within {} s",
                        COMMAND_READY_TIMEOUT.as_secs()
                    ));
                }
            } else if started.elapsed() >= COMMAND_RTP_START {
                return Ok(eng);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM to the group, then waits until every process of the group has
    /// exited (a shell may end before the engine it started); SIGKILL to whatever
    /// is left after the timeout. A warning if it had to kill.
    fn stop(&mut self) -> Option<String> {
        let pgid = self.child.id();
        super::spawn::signal_group(pgid, libc::SIGTERM);
        let mut deadline = Instant::now() + COMMAND_STOP_TIMEOUT;
        let mut killed = false;
        loop {
            let _ = self.child.try_wait();
            let left = super::procstat::group_members(pgid).unwrap_or_default();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                if killed {
                    break;
                }
                super::spawn::signal_group(pgid, libc::SIGKILL);
                killed = true;
                deadline = Instant::now() + Duration::from_secs(2);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        killed.then(|| "the compared engine did not stop on SIGTERM; killed".into())
    }
}

impl Drop for CommandEngine {
    fn drop(&mut self) {
        if !super::procstat::group_members(self.child.id())
            .unwrap_or_default()
            .is_empty()
        {
            super::spawn::signal_group(self.child.id(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Samples a process tree over the driver's measured window from its own thread
/// (the driver samples one pid; an engine started through `sh -c` is a tree).
struct TreeSampler {
    stop: mpsc::SyncSender<()>,
    handle: std::thread::JoinHandle<Option<ProcSummary>>,
}

impl TreeSampler {
    fn start(pid: u32, calls: usize, ramp: Duration, window: Duration) -> io::Result<Self> {
        let (stop, rx) = mpsc::sync_channel::<()>(1);
        let handle = std::thread::Builder::new()
            .name("loadgen-ramp-sampler".into())
            .spawn(move || {
                let t0 = Instant::now();
                // True when the time came (no stop: the run is still going).
                let wait_until = |t: Instant| {
                    matches!(
                        rx.recv_timeout(t.saturating_duration_since(Instant::now())),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    )
                };
                if !wait_until(t0 + ramp) {
                    return None;
                }
                let a = ProcSample::read_tree(pid).ok()?;
                let ta = Instant::now();
                if !wait_until(t0 + ramp + window) {
                    return None;
                }
                let b = ProcSample::read_tree(pid).ok()?;
                let secs = ta.elapsed().as_secs_f64();
                Some(ProcSummary::new(a, b, calls as u64, secs))
            })?;
        Ok(TreeSampler { stop, handle })
    }

    /// The window's summary (`None` if the run ended before the window did).
    fn finish(self) -> Option<ProcSummary> {
        drop(self.stop);
        self.handle.join().ok().flatten()
    }
}

/// Runs one step of one engine: start it (if it is started per step), load it with
/// `calls` calls, measure, stop it. Progress and warnings go to stderr.
pub fn run_step(
    base: &DriverConfig,
    via: &Via,
    engine: &EngineSpec,
    calls: usize,
    limits: SloLimits,
) -> StepResult {
    let mut cfg = base.clone();
    cfg.calls = calls;
    cfg.pid = None;
    let tcp = matches!(cfg.transport, super::caller::Transport::AudioSocket(_));
    let run = |cfg: &DriverConfig| -> Result<Outcome, String> {
        match via {
            Via::Direct => driver::run(cfg).map_err(|e| e.to_string()),
            Via::Ari(s) => via_ari::run(cfg, s)
                .map(|(o, summary)| {
                    if summary.leaked_channels > 0 || summary.leaked_bridges > 0 {
                        eprintln!(
                            "warning: {calls} calls: ARI left behind {} channel(s), {} bridge(s)",
                            summary.leaked_channels, summary.leaked_bridges
                        );
                    }
                    o
                })
                .map_err(|e| e.to_string()),
        }
    };
    let ramp = Duration::from_secs_f64(cfg.ramp_seconds());
    let window = Duration::from_secs_f64(cfg.seconds);
    match &engine.target {
        EngineTarget::Spawn {
            exe,
            config,
            env,
            port,
        } => {
            let env: Vec<(&str, String)> =
                env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            let child = match SpawnedVoxd::start_with_env(exe, config, &env) {
                Ok(c) => c,
                Err(e) => return StepResult::failed(calls, e),
            };
            let p = port.unwrap_or(if tcp {
                child.audiosocket.port()
            } else {
                child.rtp.port()
            });
            cfg.target = SocketAddr::new(cfg.target.ip(), p);
            cfg.pid = Some(child.pid());
            let idle = ProcSample::read(child.pid()).ok();
            let out = run(&cfg);
            match child.stop() {
                Ok(st) if st.success() => {}
                Ok(st) => eprintln!("warning: {calls} calls: the spawned voxd exited with {st}"),
                Err(e) => eprintln!("warning: {calls} calls: {e}"),
            }
            match out {
                Ok(o) => {
                    StepResult::from_outcome(&o, limits, o.report.process.as_ref(), idle.as_ref())
                }
                Err(e) => StepResult::failed(calls, e),
            }
        }
        EngineTarget::Running { pid, pause } => {
            std::thread::sleep(*pause);
            cfg.pid = *pid;
            let idle = pid.and_then(|p| ProcSample::read(p).ok());
            match run(&cfg) {
                Ok(o) => {
                    StepResult::from_outcome(&o, limits, o.report.process.as_ref(), idle.as_ref())
                }
                Err(e) => StepResult::failed(calls, e),
            }
        }
        EngineTarget::Command {
            cmd,
            target,
            env,
            log,
        } => {
            cfg.target = *target;
            let mut eng = match CommandEngine::start(cmd, *target, tcp, env, log.as_deref()) {
                Ok(e) => e,
                Err(e) => return StepResult::failed(calls, e),
            };
            let idle = ProcSample::read_tree(eng.pid()).ok();
            let sampler = TreeSampler::start(eng.pid(), calls, ramp, window).ok();
            let out = run(&cfg);
            let process = sampler.and_then(TreeSampler::finish);
            if let Some(w) = eng.stop() {
                eprintln!("warning: {calls} calls: {w}");
            }
            match out {
                Ok(o) => StepResult::from_outcome(&o, limits, process.as_ref(), idle.as_ref()),
                Err(e) => StepResult::failed(calls, e),
            }
        }
    }
}

/// Runs the ramp for every engine, steps interleaved, with `step` doing one step
/// (normally [`run_step`]; tests pass a fake). `on_step` sees each result as it
/// comes (progress on the terminal).
pub fn run_ramp(
    plan: &RampPlan,
    engines: &[EngineSpec],
    mut step: impl FnMut(&EngineSpec, usize) -> StepResult,
    mut on_step: impl FnMut(&EngineRamp),
) -> Vec<EngineRamp> {
    let mut ramps: Vec<EngineRamp> = engines
        .iter()
        .map(|e| EngineRamp::new(&e.name, &e.target.describe()))
        .collect();
    let steps = plan.spec.steps();
    for (i, &calls) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        for (spec, ramp) in engines.iter().zip(ramps.iter_mut()) {
            if !ramp.running() {
                continue;
            }
            let r = step(spec, calls);
            ramp.record(plan, r, last);
            on_step(ramp);
        }
        if ramps.iter().all(|r| !r.running()) {
            break;
        }
    }
    ramps
}

/// One progress line for a finished step.
pub fn step_line(ramp: &EngineRamp) -> String {
    let Some(s) = ramp.steps.last() else {
        return String::new();
    };
    if let Some(e) = &s.error {
        return format!("ramp {}: {} calls: error: {e}", ramp.name, s.calls);
    }
    format!(
        "ramp {}: {} calls: p50 {:.3} p99 {:.3} p99.9 {:.3} ms, gaps {}, cpu {} us/call-s, rss {} KiB/call, loadgen late ticks {} => {}",
        ramp.name,
        s.calls,
        s.p50_dev_ms,
        s.p99_dev_ms,
        s.p999_dev_ms,
        s.gaps,
        opt(s.cpu_us_per_call_second, 0),
        opt(s.rss_kib_per_call, 1),
        s.loadgen_late_ticks,
        verdict(s)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_lists_steps() {
        let s = RampSpec::parse("100:100:350").unwrap();
        assert_eq!(s.steps(), vec![100, 200, 300]);
        assert_eq!(RampSpec::parse("5:5:5").unwrap().steps(), vec![5]);
        let l = RampSpec::parse("100,200,400").unwrap();
        assert_eq!(l.steps(), vec![100, 200, 400]);
        assert_eq!((l.start, l.step, l.max), (100, None, 400));
        assert_eq!(
            (l.describe(), l.min_step()),
            ("100,200,400".to_string(), 100)
        );
        assert_eq!(RampSpec::parse("7").unwrap().steps(), vec![7]);
        assert_eq!(s.describe(), "100:100:350");
        for bad in [
            "", "1:2", "0:1:5", "5:0:10", "10:1:5", "a:b:c", "1:2:3:4", "100,50", "1,1", "0,5",
            "5,", "1,2:3",
        ] {
            assert!(RampSpec::parse(bad).is_err(), "{bad}");
        }
    }

    fn fake(calls: usize, pass: bool) -> StepResult {
        StepResult {
            slo_pass: pass,
            error: None,
            p99_dev_ms: if pass { 0.5 } else { 9.0 },
            ..StepResult::failed(calls, String::new())
        }
    }

    fn engines(n: usize) -> Vec<EngineSpec> {
        (0..n)
            .map(|i| EngineSpec {
                name: format!("e{i}"),
                target: EngineTarget::Running {
                    pid: None,
                    pause: Duration::ZERO,
                },
            })
            .collect()
    }

    fn plan(spec: &str, cont: usize) -> RampPlan {
        RampPlan {
            spec: RampSpec::parse(spec).unwrap(),
            continue_after_fail: cont,
            limits: SloLimits::default(),
        }
    }

    #[test]
    fn stops_at_the_first_failing_step() {
        let p = plan("10:10:100", 0);
        let r = run_ramp(&p, &engines(1), |_, n| fake(n, n < 40), |_| {});
        let e = &r[0];
        assert_eq!(
            e.steps.iter().map(|s| s.calls).collect::<Vec<_>>(),
            [10, 20, 30, 40]
        );
        assert_eq!(e.capacity_calls, Some(30));
        assert_eq!(e.stopped.as_deref(), Some("SLO broken at 40 calls"));
    }

    #[test]
    fn continues_past_the_knee_and_keeps_the_capacity() {
        let p = plan("10:10:100", 2);
        // Fails at 40, passes again at 50 (noise), fails at 60.
        let r = run_ramp(&p, &engines(1), |_, n| fake(n, n < 40 || n == 50), |_| {});
        let e = &r[0];
        assert_eq!(e.steps.len(), 6);
        assert_eq!(e.capacity_calls, Some(30));
        assert_eq!(e.stopped.as_deref(), Some("SLO broken at 40 calls"));
    }

    #[test]
    fn reaching_max_and_failing_first_and_errors() {
        let r = run_ramp(
            &plan("10:10:30", 0),
            &engines(1),
            |_, n| fake(n, true),
            |_| {},
        );
        assert_eq!(r[0].capacity_calls, Some(30));
        assert!(r[0]
            .stopped
            .as_deref()
            .unwrap()
            .starts_with("reached MAX 30"));
        let r = run_ramp(
            &plan("10:10:30", 0),
            &engines(1),
            |_, n| fake(n, false),
            |_| {},
        );
        assert_eq!((r[0].capacity_calls, r[0].steps.len()), (None, 1));
        let r = run_ramp(
            &plan("10:10:30", 5),
            &engines(1),
            |_, n| {
                if n == 20 {
                    StepResult::failed(n, "no fds".into())
                } else {
                    fake(n, true)
                }
            },
            |_| {},
        );
        assert_eq!(r[0].steps.len(), 2);
        assert_eq!(r[0].capacity_calls, Some(10));
        assert!(r[0].stopped.as_deref().unwrap().contains("no fds"));
    }

    #[test]
    fn engines_are_interleaved_and_stop_on_their_own() {
        let mut order = Vec::new();
        let r = run_ramp(
            &plan("1:1:4", 0),
            &engines(2),
            |e, n| {
                order.push(format!("{}:{n}", e.name));
                fake(n, e.name == "e0" || n < 2)
            },
            |_| {},
        );
        assert_eq!(order, ["e0:1", "e1:1", "e0:2", "e1:2", "e0:3", "e0:4"]);
        assert_eq!(
            (r[0].capacity_calls, r[1].capacity_calls),
            (Some(4), Some(1))
        );
    }

    #[test]
    fn report_renders_tables_markdown_and_json() {
        let p = plan("10:10:30", 0);
        let engines = run_ramp(&p, &engines(2), |_, n| fake(n, n < 30), |_| {});
        let rep = RampReport {
            command_line: "voxd loadgen --ramp 10:10:30".into(),
            machine: Machine::detect(),
            transport: "rtp (udp)".into(),
            via: "direct".into(),
            agent: "sim".into(),
            seconds_per_step: 2.0,
            rate: 50.0,
            ramp: p.spec.clone(),
            slo: p.limits,
            engines,
        };
        let t = rep.to_table();
        assert!(t.contains("e0 capacity: 20 calls"), "{t}");
        assert!(t.contains("| 30 | 0.000 | 9.000 |"), "{t}");
        let md = rep.to_markdown(Some("ramp.png"));
        assert!(md.contains("![ramp](ramp.png)"));
        assert!(md.contains("## Side by side"));
        assert!(md.contains("--ramp 10:10:30"));
        let v: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
        assert_eq!(v["engines"][0]["steps"].as_array().unwrap().len(), 3);
        assert_eq!(v["engines"][1]["capacity_calls"], 20);
        assert_eq!(v["slo"]["p99_dev_us"], 2000);
        assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
    }
}
