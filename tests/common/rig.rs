//! An ARI emulator + voxd engine + call flow in one process, for the tests that
//! drive whole calls through ARI.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use voxd::ari::flow::AriFlow;
use voxd::config::{Config, Secret};
use voxd::engine::bind::Bindings;
use voxd::engine::control::AriMode;
use voxd::engine::runner::Engine;
use voxd::loadgen::ari_emu::{AriEmulator, EmuConfig};
use voxd::provider::Registry;

/// Liveness limit of every wait (never a timing assertion).
pub const LIMIT: Duration = Duration::from_secs(15);

pub struct Rig {
    pub emu: AriEmulator,
    pub engine: Option<Engine>,
    pub flow: Option<AriFlow>,
    pub cfg: Config,
}

pub fn config(yaml: &str, emu: &AriEmulator) -> Config {
    config_env(yaml, emu, &[])
}

/// [`config`] with environment variables (provider keys) for the YAML.
pub fn config_env(yaml: &str, emu: &AriEmulator, env: &[(&str, &str)]) -> Config {
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let mut cfg = voxd::config::parse_str_with_env(yaml, &lookup)
        .expect("test config")
        .config;
    cfg.audiosocket.port = 0;
    cfg.external_media.rtp_port = 0;
    cfg.asterisk.enabled = Some(true);
    cfg.asterisk.host = "127.0.0.1".into();
    cfg.asterisk.port = emu.addr().port();
    cfg.asterisk.username = Secret::new("asterisk");
    cfg.asterisk.password = Secret::new("asterisk");
    cfg
}

pub async fn start_rig(yaml: &str, emu_cfg: EmuConfig) -> Rig {
    start_rig_with(yaml, emu_cfg, None).await
}

/// [`start_rig`] with an extra provider in the registry.
pub async fn start_rig_with(
    yaml: &str,
    emu_cfg: EmuConfig,
    extra: Option<Arc<dyn voxd::provider::Provider>>,
) -> Rig {
    start_rig_env(yaml, emu_cfg, extra, &[]).await
}

/// [`start_rig_with`] with environment variables for the configuration.
pub async fn start_rig_env(
    yaml: &str,
    emu_cfg: EmuConfig,
    extra: Option<Arc<dyn voxd::provider::Provider>>,
    env: &[(&str, &str)],
) -> Rig {
    let emu = AriEmulator::start(emu_cfg).await.expect("emulator starts");
    let cfg = config_env(yaml, &emu, env);
    let mode = AriMode {
        bindings: Arc::new(Bindings::default()),
        accept_unoriginated: cfg.audiosocket.accept_unoriginated,
    };
    let mut reg = Registry::from_config(&cfg).expect("registry");
    if let Some(p) = extra {
        reg = reg.with_provider(p);
    }
    let reg = Arc::new(reg);
    let engine = Engine::start_with(&cfg, reg, Some(mode.clone())).expect("engine starts");
    let flow = AriFlow::start(
        &cfg,
        mode.bindings.clone(),
        engine.peers.clone(),
        engine.audiosocket_addr.port(),
        engine.rtp_addr.port(),
    )
    .expect("flow starts");
    let mut connected = flow.connected.clone();
    tokio::time::timeout(LIMIT, connected.wait_for(|c| *c))
        .await
        .expect("ARI connects")
        .unwrap();
    assert!(emu.wait_app_registered(&cfg.asterisk.app_name, LIMIT).await);
    Rig {
        emu,
        engine: Some(engine),
        flow: Some(flow),
        cfg,
    }
}

impl Rig {
    pub async fn stop(mut self) -> voxd::loadgen::ari_emu::StopReport {
        if let Some(f) = self.flow.take() {
            f.stop().await;
        }
        if let Some(e) = self.engine.take() {
            e.stop().await;
        }
        self.emu.stop().await
    }
}

/// Poll `cond` every 20 ms until it holds (or fail after LIMIT).
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until the emulator holds no channel and no bridge.
pub async fn until_clean(rig: &Rig, what: &str) {
    until(what, || {
        let c = rig.emu.counters();
        c.live_channels == 0 && c.live_bridges == 0
    })
    .await;
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The emulator's stop report shows no leaked channel or bridge.
pub fn assert_clean(report: &voxd::loadgen::ari_emu::StopReport) {
    assert!(report.leaked_channels.is_empty(), "{report:?}");
    assert!(report.leaked_bridges.is_empty(), "{report:?}");
    assert!(report.leaked_legs.is_empty(), "{report:?}");
}
