//! What a call does when its provider fails (ARI emulator + engine + call flow over
//! real loopback): one fast reconnect with the conversation so far, then the
//! `provider_failure.on_provider_failure` policy (announce and hang up, back to the
//! dialplan, or leave open); and a provider whose codecs differ from the shard's
//! default gets them per call. Asserts behaviour only.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use voxd::call::Codec;
use voxd::loadgen::ari_emu::{CallSpec, EmuConfig};
use voxd::media::Rate;
use voxd::provider::{
    AgentEvent, AudioFormats, CallerEvent, EndReason, Provider, ProviderError, Role, SessionEnd,
    SessionFuture, SessionIo, SessionMeta,
};

mod common;
use common::rig::{assert_clean, runtime, start_rig_with, until, until_clean, Rig};

/// An echo agent that says one final transcript line, then fails after
/// `fail_after[attempt]` caller frames (`None`: never), recording each session's
/// meta.
#[derive(Clone)]
struct Flaky {
    fail_after: Vec<Option<usize>>,
    formats: Option<AudioFormats>,
    metas: Arc<Mutex<Vec<SessionMeta>>>,
}

impl Flaky {
    fn new(fail_after: Vec<Option<usize>>) -> Flaky {
        Flaky {
            fail_after,
            formats: None,
            metas: Arc::default(),
        }
    }
    fn metas(&self) -> Vec<SessionMeta> {
        self.metas.lock().unwrap().clone()
    }
}

impl Provider for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn formats(&self, caller: Codec) -> AudioFormats {
        self.formats.unwrap_or(AudioFormats {
            input: caller,
            output: caller,
        })
    }
    fn session(&self, meta: SessionMeta, mut io: SessionIo) -> SessionFuture {
        let fail_after = self
            .fail_after
            .get(meta.attempt as usize)
            .copied()
            .flatten();
        let attempt = meta.attempt;
        self.metas.lock().unwrap().push(meta);
        Box::pin(async move {
            let line = AgentEvent::Transcript {
                role: Role::User,
                text: format!("caller line of attempt {attempt}"),
                is_final: true,
            };
            if io.out.send(line).await.is_err() {
                return SessionEnd::new(EndReason::ChannelClosed);
            }
            let mut frames = 0usize;
            while let Some(ev) = io.events.recv().await {
                match ev {
                    CallerEvent::Audio(a, _) => {
                        frames += 1;
                        if fail_after.is_some_and(|n| frames > n) {
                            return SessionEnd::failed(ProviderError::Protocol {
                                name: "flaky".into(),
                                message: "socket closed mid-response".into(),
                            });
                        }
                        if io.out.send(AgentEvent::Audio(a)).await.is_err() {
                            break;
                        }
                    }
                    CallerEvent::Hangup => return SessionEnd::new(EndReason::CallerHangup),
                    _ => {}
                }
            }
            SessionEnd::new(EndReason::ChannelClosed)
        })
    }
}

const BASE: &str = "
default_provider: echo
audio_transport: audiosocket
audiosocket: {host: 127.0.0.1, format: slin16}
external_media: {rtp_host: 127.0.0.1, codec: ulaw}
engine: {shards: 2}
barge_in: {enabled: false}
";

async fn rig(extra_yaml: &str, flaky: &Flaky) -> Rig {
    let yaml = format!("{BASE}{extra_yaml}");
    start_rig_with(&yaml, EmuConfig::default(), Some(Arc::new(flaky.clone()))).await
}

fn spec() -> CallSpec {
    CallSpec {
        provider: Some("flaky".into()),
        ..CallSpec::default()
    }
}

fn voiced(rig: &Rig, id: &str) -> u64 {
    rig.emu
        .media_stats(id)
        .map_or(0, |m| m.voiced_frames_received)
}

fn posts(rig: &Rig, path_end: &str) -> Vec<voxd::loadgen::ari_emu::RequestRecord> {
    rig.emu
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with(path_end))
        .collect()
}

#[test]
fn mid_call_drop_reconnects_once_with_the_conversation_so_far() {
    runtime().block_on(async {
        let flaky = Flaky::new(vec![Some(25), None]);
        let rig = rig("", &flaky).await;
        let id = rig.emu.place_call(spec()).unwrap();
        until("the second session runs", || flaky.metas().len() == 2).await;
        let before = voiced(&rig, &id);
        until("agent audio flows again after the reconnect", || {
            voiced(&rig, &id) > before + 25
        })
        .await;
        let metas = flaky.metas();
        assert_eq!(metas[0].attempt, 0);
        assert!(metas[0].history.is_empty());
        assert_eq!(metas[1].attempt, 1);
        assert_eq!(
            metas[1].history,
            vec![(Role::User, "caller line of attempt 0".to_string())]
        );
        let engine = rig.engine.as_ref().unwrap();
        assert_eq!(
            engine
                .control_stats
                .provider_reconnects
                .load(Ordering::Relaxed),
            1
        );
        assert!(posts(&rig, "/play").is_empty(), "no failure prompt");
        rig.emu.hangup_caller(&id).unwrap();
        until_clean(&rig, "nothing left").await;
        assert_clean(&rig.stop().await);
    });
}

#[test]
fn second_failure_plays_the_prompt_then_hangs_up() {
    runtime().block_on(async {
        let flaky = Flaky::new(vec![Some(10), Some(10)]);
        let rig = rig("", &flaky).await;
        let id = rig.emu.place_call(spec()).unwrap();
        until("caller hung up by voxd, nothing left", || {
            rig.emu.channel_json(&id).is_none()
                && rig.emu.counters().live_channels == 0
                && rig.emu.counters().live_bridges == 0
        })
        .await;
        assert_eq!(flaky.metas().len(), 2, "one reconnect, not more");
        let plays = posts(&rig, "/play");
        assert_eq!(plays.len(), 1, "{plays:?}");
        assert_eq!(plays[0].path, format!("/ari/channels/{id}/play"));
        assert_eq!(
            plays[0].query.get("media").map(String::as_str),
            Some("sound:an-error-has-occurred")
        );
        let reqs = rig.emu.requests();
        let play_at = reqs.iter().position(|r| r.path.ends_with("/play")).unwrap();
        let hangup_at = reqs
            .iter()
            .position(|r| r.method == "DELETE" && r.path == format!("/ari/channels/{id}"))
            .expect("voxd hung the caller up");
        assert!(play_at < hangup_at, "prompt first, then the hang-up");
        let engine = rig.engine.as_ref().unwrap();
        let s = &engine.control_stats;
        assert_eq!(s.provider_failures.load(Ordering::Relaxed), 2);
        assert_eq!(s.failure_policy_applied.load(Ordering::Relaxed), 1);
        assert_clean(&rig.stop().await);
    });
}

#[test]
fn dialplan_redirect_policy_continues_in_the_configured_context() {
    runtime().block_on(async {
        let flaky = Flaky::new(vec![Some(10)]);
        let yaml = "provider_failure: {reconnect: false, on_provider_failure: dialplan_redirect, context: operators, extension: '0'}\n";
        let rig = rig(yaml, &flaky).await;
        let id = rig.emu.place_call(spec()).unwrap();
        until("redirected", || !posts(&rig, "/continue").is_empty()).await;
        let c = &posts(&rig, "/continue")[0];
        assert_eq!(c.path, format!("/ari/channels/{id}/continue"));
        assert_eq!(
            c.query.get("context").map(String::as_str),
            Some("operators")
        );
        assert_eq!(c.query.get("extension").map(String::as_str), Some("0"));
        until_clean(&rig, "nothing left after the redirect").await;
        assert_eq!(flaky.metas().len(), 1, "no reconnect when it is off");
        assert_clean(&rig.stop().await);
    });
}

#[test]
fn leave_open_policy_keeps_the_caller_until_it_hangs_up() {
    runtime().block_on(async {
        let flaky = Flaky::new(vec![Some(10)]);
        let yaml = "provider_failure: {reconnect: false, on_provider_failure: leave_open}\n";
        let rig = rig(yaml, &flaky).await;
        let id = rig.emu.place_call(spec()).unwrap();
        let engine = rig.engine.as_ref().unwrap();
        until("the policy ran", || {
            engine
                .control_stats
                .failure_policy_applied
                .load(Ordering::Relaxed)
                == 1
        })
        .await;
        // The call goes on without an agent: the caller still gets frames (silence).
        let frames = |rig: &Rig| rig.emu.media_stats(&id).map_or(0, |m| m.frames_received);
        let before = frames(&rig);
        until("frames keep coming", || frames(&rig) > before + 25).await;
        assert!(rig.emu.channel_json(&id).is_some(), "caller still up");
        assert!(!rig
            .emu
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path == format!("/ari/channels/{id}")));
        rig.emu.hangup_caller(&id).unwrap();
        until_clean(&rig, "nothing left").await;
        assert_clean(&rig.stop().await);
    });
}

#[test]
fn provider_codecs_are_chosen_per_call() {
    runtime().block_on(async {
        // A provider at 24 kHz slin behind a PCMU RTP leg and a slin16 AudioSocket
        // leg: the shard converts both ways per call.
        let mut flaky = Flaky::new(vec![None]);
        flaky.formats = Some(AudioFormats {
            input: Codec::Slin(Rate::Hz24000),
            output: Codec::Slin(Rate::Hz24000),
        });
        for transport in ["audiosocket", "externalmedia"] {
            let yaml = format!("audio_transport: {transport}\n");
            let yaml = BASE.replace("audio_transport: audiosocket\n", "") + &yaml;
            let rig =
                start_rig_with(&yaml, EmuConfig::default(), Some(Arc::new(flaky.clone()))).await;
            let id = rig.emu.place_call(spec()).unwrap();
            until("echo through the 24 kHz provider", || {
                voiced(&rig, &id) > 50
            })
            .await;
            rig.emu.hangup_caller(&id).unwrap();
            until_clean(&rig, "nothing left").await;
            assert_clean(&rig.stop().await);
        }
    });
}
