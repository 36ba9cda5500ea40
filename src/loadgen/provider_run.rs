//! `voxd loadgen --provider openai_realtime|deepgram|local`: run the protocol
//! simulator of that provider ([`super::provsim`]) for the length of a load run, on
//! its own small tokio runtime, and tell the voxd under test where it is.
//!
//! Owns: the simulator's runtime and lifetime, and the environment a spawned voxd
//! reads it from: `VOXD_SIM_URL` (use it in the config as
//! `base_url: ${VOXD_SIM_URL}`, as `perf/configs/*.yaml` do) and the provider's
//! credential variable (`OPENAI_API_KEY`, `DEEPGRAM_API_KEY`,
//! `LOCAL_AI_AUTH_TOKEN`) set to the simulator's key.
//!
//! Must not: talk to a real provider, or leave the simulator running after the run.

use std::net::SocketAddr;

use super::provsim::{ProviderSim, ProviderSimConfig, SimProtocol, SimStatsSnapshot};

/// The key the simulators expect (and a spawned voxd sends). Not a secret.
pub const SIM_KEY: &str = "voxd-sim-key";

/// The environment variable a config names the simulator's URL with.
pub const URL_ENV: &str = "VOXD_SIM_URL";

/// Which simulator a load run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimKind {
    /// OpenAI Realtime GA.
    OpenAi,
    /// Deepgram Voice Agent v1.
    Deepgram,
    /// The reference engine's local-ai-server.
    Local,
}

impl SimKind {
    /// From a provider name (`openai_realtime`, `deepgram`, `local`).
    pub fn parse(name: &str) -> Option<SimKind> {
        match name {
            "openai_realtime" | "openai" => Some(SimKind::OpenAi),
            "deepgram" => Some(SimKind::Deepgram),
            "local" => Some(SimKind::Local),
            _ => None,
        }
    }

    /// The environment variable voxd reads this provider's credential from.
    pub fn key_env(self) -> &'static str {
        match self {
            SimKind::OpenAi => "OPENAI_API_KEY",
            SimKind::Deepgram => "DEEPGRAM_API_KEY",
            SimKind::Local => "LOCAL_AI_AUTH_TOKEN",
        }
    }

    fn protocol(self) -> SimProtocol {
        match self {
            SimKind::OpenAi => SimProtocol::OpenAi,
            SimKind::Deepgram => SimProtocol::Deepgram,
            SimKind::Local => SimProtocol::Local,
        }
    }
}

/// Knobs of the simulated provider for a load run.
#[derive(Debug, Clone, Copy)]
pub struct SimRunConfig {
    /// Which protocol.
    pub kind: SimKind,
    /// Where it listens (port 0: any free port).
    pub listen: SocketAddr,
    /// End of caller turn to first reply audio (ms).
    pub think_ms: u32,
    /// Length of each reply (ms).
    pub reply_ms: u32,
    /// Seed of its synthesizer.
    pub seed: u64,
    /// Tokio worker threads of the simulator.
    pub threads: usize,
}

/// A simulator running for a load run.
pub struct RunningSim {
    rt: tokio::runtime::Runtime,
    sim: Option<ProviderSim>,
    url: String,
    kind: SimKind,
}

impl RunningSim {
    /// Start the simulator. Errors are sentences for the operator.
    pub fn start(cfg: SimRunConfig) -> Result<RunningSim, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads.max(1))
            .thread_name("provider-sim")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the provider simulator's runtime: {e}"))?;
        let sim_cfg = ProviderSimConfig {
            protocol: cfg.kind.protocol(),
            listen: cfg.listen,
            api_key: Some(SIM_KEY.to_string()),
            think_ms: cfg.think_ms,
            reply_ms: cfg.reply_ms,
            seed: cfg.seed,
            ..ProviderSimConfig::default()
        };
        let sim = rt
            .block_on(ProviderSim::start(sim_cfg))
            .map_err(|e| format!("cannot start the provider simulator on {}: {e}", cfg.listen))?;
        let url = sim.url();
        Ok(RunningSim {
            rt,
            sim: Some(sim),
            url,
            kind: cfg.kind,
        })
    }

    /// The URL a voxd config's `base_url` must name.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `(variable, value)` pairs a spawned voxd needs: the URL and the credential.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            (URL_ENV, self.url.clone()),
            (self.kind.key_env(), SIM_KEY.to_string()),
        ]
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStatsSnapshot {
        match &self.sim {
            Some(s) => s.stats(),
            None => SimStatsSnapshot::default(),
        }
    }

    /// Stop the simulator and return its final counters.
    pub fn stop(mut self) -> SimStatsSnapshot {
        match self.sim.take() {
            Some(s) => self.rt.block_on(s.stop()),
            None => SimStatsSnapshot::default(),
        }
    }
}

/// One line for the run's report.
pub fn summary(kind: SimKind, s: &SimStatsSnapshot) -> String {
    let v = if s.violations.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{} (first: {})",
            s.violations.len(),
            s.violations.first().map_or("", String::as_str)
        )
    };
    format!(
        "provider sim ({kind:?}): connections {}, turns {}, barge-ins {}, audio in {} KiB, out {} KiB, protocol violations: {v}",
        s.connections,
        s.turns,
        s.barge_ins,
        s.audio_bytes_in / 1024,
        s.audio_bytes_out / 1024,
    )
}
