//! Whole calls through each network provider's protocol: the ARI emulator plays
//! Asterisk, voxd's engine and call flow run here, and voxd's provider client
//! talks to voxd's protocol simulator of that provider over a real WebSocket on
//! loopback. Asserts: the caller hears the agent, the simulator saw no protocol
//! violation and the exact opening it expects, nothing is left behind, the key is
//! never logged, and provider faults end in the configured policy.

use std::sync::atomic::Ordering;

use voxd::loadgen::ari_emu::{CallSpec, CallerSignal, EmuConfig};
use voxd::loadgen::provsim::{Fault, ProviderSim, ProviderSimConfig, SimProtocol};
use voxd::loadgen::signal::SignalConfig;

mod common;
use common::rig::{assert_clean, runtime, start_rig_env, until, until_clean, Rig};

const KEY: &str = "sk-e2e-secret-0123456789";

struct Case {
    protocol: SimProtocol,
    name: &'static str,
    key_env: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        protocol: SimProtocol::OpenAi,
        name: "openai_realtime",
        key_env: "OPENAI_API_KEY",
    },
    Case {
        protocol: SimProtocol::Deepgram,
        name: "deepgram",
        key_env: "DEEPGRAM_API_KEY",
    },
    Case {
        protocol: SimProtocol::Local,
        name: "local",
        key_env: "LOCAL_AI_AUTH_TOKEN",
    },
];

async fn sim(protocol: SimProtocol, fault: Option<Fault>) -> ProviderSim {
    let mut cfg = ProviderSimConfig::for_protocol(protocol);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api_key = Some(KEY.into());
    cfg.think_ms = 200;
    cfg.reply_ms = 1200;
    cfg.greeting_ms = 0;
    cfg.fault = fault;
    cfg.fault_after_ms = 300;
    ProviderSim::start(cfg).await.expect("simulator starts")
}

fn yaml(case: &Case, url: &str, transport: &str, extra: &str) -> String {
    format!(
        "default_provider: {name}\n\
         audio_transport: {transport}\n\
         audiosocket: {{host: 127.0.0.1, format: slin16}}\n\
         external_media: {{rtp_host: 127.0.0.1, codec: ulaw}}\n\
         engine: {{shards: 2}}\n\
         providers:\n  {name}: {{enabled: true, base_url: '{url}'}}\n{extra}",
        name = case.name
    )
}

/// Callers that talk in turns (about a second of speech, then two of silence),
/// so the provider's server-side VAD sees turns end.
fn emu_cfg() -> EmuConfig {
    EmuConfig {
        default_signal: CallerSignal::Speech {
            seed: 3,
            config: SignalConfig {
                initial_pause_ms: Some(100),
                talk_ms: (800, 1000),
                pause_ms: (2000, 2500),
                ..Default::default()
            },
        },
        ..EmuConfig::default()
    }
}

async fn rig(case: &Case, url: &str, transport: &str, extra: &str) -> Rig {
    start_rig_env(
        &yaml(case, url, transport, extra),
        emu_cfg(),
        None,
        &[(case.key_env, KEY)],
    )
    .await
}

fn voiced(rig: &Rig, id: &str) -> u64 {
    rig.emu
        .media_stats(id)
        .map_or(0, |m| m.voiced_frames_received)
}

#[test]
fn a_call_through_each_provider_simulator() {
    runtime().block_on(async {
        for case in &CASES {
            for transport in ["audiosocket", "externalmedia"] {
                let sim = sim(case.protocol, None).await;
                let rig = rig(case, &sim.url(), transport, "").await;
                let id = rig.emu.place_call(CallSpec::default()).unwrap();
                // The emulated caller talks; the simulated provider answers with
                // about 1.2 s of speech: the caller hears it.
                until(
                    &format!("{} over {transport}: agent audio", case.name),
                    || voiced(&rig, &id) > 25,
                )
                .await;
                if case.protocol == SimProtocol::OpenAi {
                    // rate_limits.updated after the reply: exported as gauges.
                    let engine = rig.engine.as_ref().unwrap();
                    until("rate limits reported", || {
                        engine.live.get().registry.gauges().iter().any(|(p, n, v)| {
                            *p == "openai_realtime"
                                && *n == "rate_limit_requests_remaining"
                                && *v > 0.0
                        })
                    })
                    .await;
                }
                rig.emu.hangup_caller(&id).unwrap();
                until_clean(&rig, "nothing left").await;
                assert_clean(&rig.stop().await);
                let stats = sim.stop().await;
                assert!(
                    stats.violations.is_empty(),
                    "{} over {transport}: {:?}",
                    case.name,
                    stats.violations
                );
                assert_eq!(stats.auth_failures, 0);
                assert!(stats.turns >= 1, "{}: {stats:?}", case.name);
                let first = stats.openings[0].first().map(String::as_str);
                let want = match case.protocol {
                    SimProtocol::OpenAi => "session.update",
                    SimProtocol::Deepgram => "Settings",
                    SimProtocol::Local => "auth",
                };
                assert_eq!(first, Some(want), "{}: {:?}", case.name, stats.openings);
            }
        }
    });
}

#[test]
fn provider_faults_end_in_the_failure_policy() {
    runtime().block_on(async {
        // Every session of the simulator fails: the first attempt and the one
        // reconnect; then voxd plays the failure prompt and hangs up.
        for fault in [
            Fault::CloseMidResponse,
            Fault::MalformedJson,
            Fault::Oversize,
            Fault::ErrorEvent { fatal: true },
        ] {
            let case = &CASES[0];
            let sim = sim(case.protocol, Some(fault)).await;
            let rig = rig(case, &sim.url(), "audiosocket", "").await;
            let id = rig.emu.place_call(CallSpec::default()).unwrap();
            until(&format!("{fault:?}: caller hung up by voxd"), || {
                rig.emu.channel_json(&id).is_none() && rig.emu.counters().live_channels == 0
            })
            .await;
            let reqs = rig.emu.requests();
            assert!(
                reqs.iter()
                    .any(|r| r.path == format!("/ari/channels/{id}/play")),
                "{fault:?}: failure prompt"
            );
            let c = &rig.engine.as_ref().unwrap().control_stats;
            assert_eq!(
                c.provider_reconnects.load(Ordering::Relaxed),
                1,
                "{fault:?}"
            );
            assert_eq!(
                c.failure_policy_applied.load(Ordering::Relaxed),
                1,
                "{fault:?}"
            );
            until_clean(&rig, "nothing left").await;
            assert_clean(&rig.stop().await);
            let stats = sim.stop().await;
            assert_eq!(
                stats.connections, 2,
                "{fault:?}: first try and one reconnect"
            );
        }
    });
}

/// A provider message that never completes (a frame header, a few bytes, then
/// nothing, the socket open): the read deadline (`read_timeout_ms`, pings
/// unanswered) ends the session, for each protocol; then the failure policy.
#[test]
fn a_message_that_never_completes_is_ended_by_the_read_deadline() {
    runtime().block_on(async {
        for case in &CASES {
            let sim = sim(case.protocol, Some(Fault::EndlessMessage)).await;
            let yaml = yaml(case, &sim.url(), "audiosocket", "")
                .replace("enabled: true,", "enabled: true, read_timeout_ms: 600,");
            let rig = start_rig_env(&yaml, emu_cfg(), None, &[(case.key_env, KEY)]).await;
            let id = rig.emu.place_call(CallSpec::default()).unwrap();
            until(&format!("{}: caller hung up by voxd", case.name), || {
                rig.emu.channel_json(&id).is_none() && rig.emu.counters().live_channels == 0
            })
            .await;
            let c = &rig.engine.as_ref().unwrap().control_stats;
            assert_eq!(
                c.provider_reconnects.load(Ordering::Relaxed),
                1,
                "{}",
                case.name
            );
            assert_eq!(
                c.failure_policy_applied.load(Ordering::Relaxed),
                1,
                "{}",
                case.name
            );
            until_clean(&rig, "nothing left").await;
            assert_clean(&rig.stop().await);
            let stats = sim.stop().await;
            assert_eq!(stats.faults_injected, 2, "{}: {stats:?}", case.name);
            assert_eq!(
                stats.connections, 2,
                "{}: first try and one reconnect",
                case.name
            );
        }
    });
}

#[test]
fn a_wrong_key_is_refused_and_the_caller_not_left_in_silence() {
    runtime().block_on(async {
        let case = &CASES[0];
        // A wrong key: the provider refuses the upgrade (401); voxd does not retry
        // forever and the caller is not left in silence.
        let sim = sim(case.protocol, None).await;
        let yaml = yaml(case, &sim.url(), "audiosocket", "");
        let rig = start_rig_env(&yaml, emu_cfg(), None, &[(case.key_env, "sk-wrong-key")]).await;
        let id = rig.emu.place_call(CallSpec::default()).unwrap();
        until("caller hung up after the refusal", || {
            rig.emu.channel_json(&id).is_none()
        })
        .await;
        until_clean(&rig, "nothing left").await;
        assert_clean(&rig.stop().await);
        let stats = sim.stop().await;
        assert_eq!(stats.auth_failures, 2, "first try and one reconnect");
    });
}

#[test]
fn a_stalled_or_slow_reading_provider_leaves_nothing_behind() {
    runtime().block_on(async {
        for case in &CASES {
            for fault in [Fault::Stall, Fault::SlowRead] {
                let sim = sim(case.protocol, Some(fault)).await;
                let rig = rig(case, &sim.url(), "audiosocket", "").await;
                let id = rig.emu.place_call(CallSpec::default()).unwrap();
                until(&format!("{} {fault:?}: media flows", case.name), || {
                    rig.emu.media_stats(&id).is_some_and(|m| m.frames_sent > 50)
                })
                .await;
                rig.emu.hangup_caller(&id).unwrap();
                until_clean(&rig, "nothing left").await;
                assert_clean(&rig.stop().await);
                let stats = sim.stop().await;
                assert_eq!(stats.connections, 1, "{} {fault:?}", case.name);
                assert!(stats.violations.is_empty(), "{:?}", stats.violations);
            }
        }
    });
}
