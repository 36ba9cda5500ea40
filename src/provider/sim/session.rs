//! The `sim` provider's tokio session: the thin async shell around [`SimAgent`].
//!
//! Owns: one task per call that decodes caller audio (`Codec::decode`), feeds the
//! agent with the session's elapsed milliseconds, sleeps until the agent's
//! `next_wakeup`, encodes reply audio and sends [`AgentEvent`]s, exactly like a
//! network provider's loop over its socket and `io.events`.
//!
//! Must not: make turn-taking decisions (that is `agent.rs`), resample (the session
//! speaks the caller's codec both ways, so a sim call never resamples: the agent
//! synthesizes at the caller's rate, PCMU for an RTP caller, slin16 for an
//! AudioSocket slin16 caller), or block the runtime.

#![forbid(unsafe_code)]

use std::time::Duration;

use tokio::time::Instant;

use super::agent::{mix_seed, SimAction, SimAgent, SimConfig};
use crate::call::Codec;
use crate::media::slab::FrameSlab;
use crate::provider::{
    AgentEvent, AudioFormats, CallerEvent, EndReason, Provider, SessionEnd, SessionFuture,
    SessionIo, SessionMeta,
};

/// The simulated agent as a [`Provider`].
#[derive(Debug, Clone)]
pub struct SimProvider {
    cfg: SimConfig,
}

impl SimProvider {
    /// A provider whose sessions use these knobs (each call mixes its call id into
    /// `cfg.seed`, so calls differ but a call id always gives the same audio).
    pub fn new(cfg: SimConfig) -> Self {
        super::agent::Bank::warm_in_background();
        SimProvider { cfg }
    }

    /// The knobs sessions use.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }
}

impl Provider for SimProvider {
    fn name(&self) -> &'static str {
        "sim"
    }

    /// The caller's codec both ways: no resampling (see the module docs).
    fn formats(&self, caller: Codec) -> AudioFormats {
        AudioFormats {
            input: caller,
            output: caller,
        }
    }

    fn session(&self, meta: SessionMeta, io: SessionIo) -> SessionFuture {
        Box::pin(run(self.cfg, meta, io))
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Bytes of encoded reply audio per refill of a session's output slab. Replies sit
/// in voxd's playout backlog until played, so a slab is reused only once the caller
/// has heard all of it; 16 KiB keeps that to one allocation per 0.5 s (slin16) to
/// 2 s (G.711) of reply.
const OUT_SLAB_BYTES: usize = 16 * 1024;

fn to_event(
    action: SimAction,
    codec: Codec,
    agent: &mut SimAgent,
    slab: &mut FrameSlab,
) -> AgentEvent {
    match action {
        SimAction::Audio(pcm) => {
            let len = pcm.len() * codec.bytes_per_sample();
            let bytes = slab.fill(len, |dst| {
                codec.encode(&pcm, dst);
            });
            agent.recycle(pcm);
            AgentEvent::Audio(bytes)
        }
        SimAction::AudioDone => AgentEvent::AudioDone,
        SimAction::SpeechStarted => AgentEvent::SpeechStarted,
        SimAction::Transcript { role, text } => AgentEvent::Transcript {
            role,
            text,
            is_final: true,
        },
        SimAction::ResponseDone => AgentEvent::ResponseDone,
    }
}

/// The session loop: drain the agent, then wait for a caller event or the agent's
/// next wake-up, until hang-up or a closed channel.
async fn run(mut cfg: SimConfig, meta: SessionMeta, mut io: SessionIo) -> SessionEnd {
    let codec = meta.caller_codec;
    cfg.seed = mix_seed(cfg.seed, meta.call_id);
    let mut agent = SimAgent::new(cfg, codec);
    let epoch = Instant::now();
    let mut pcm: Vec<i16> = Vec::new();
    let mut slab = FrameSlab::new(OUT_SLAB_BYTES);
    tracing::debug!(call_id = meta.call_id, ?codec, "sim session started");
    let end = 'session: loop {
        let now = ms_since(epoch);
        while let Some(action) = agent.poll(now) {
            let ev = to_event(action, codec, &mut agent, &mut slab);
            if io.out.send(ev).await.is_err() {
                break 'session SessionEnd::new(EndReason::ChannelClosed);
            }
        }
        let event = match agent.next_wakeup() {
            Some(t) => {
                let at = epoch + Duration::from_millis(t);
                tokio::select! {
                    ev = io.events.recv() => Some(ev),
                    () = tokio::time::sleep_until(at) => None,
                }
            }
            None => Some(io.events.recv().await),
        };
        match event {
            None => {} // timer: poll again
            Some(None) => break SessionEnd::new(EndReason::ChannelClosed),
            Some(Some(CallerEvent::Audio(bytes, at))) => {
                // In-process: the agent taking the frame is the write.
                io.record_write(at);
                let n = bytes.len() / codec.bytes_per_sample();
                pcm.resize(n, 0);
                let n = codec.decode(&bytes[..n * codec.bytes_per_sample()], &mut pcm);
                agent.on_caller_audio(ms_since(epoch), &pcm[..n]);
            }
            Some(Some(CallerEvent::BargeIn { played_ms })) => {
                agent.on_barge_in(ms_since(epoch), played_ms);
            }
            Some(Some(CallerEvent::Dtmf(digit))) => {
                tracing::trace!(call_id = meta.call_id, %digit, "sim ignores DTMF");
            }
            Some(Some(CallerEvent::Hangup)) => break SessionEnd::new(EndReason::CallerHangup),
        }
    };
    let stats = agent.stats();
    tracing::debug!(
        call_id = meta.call_id,
        reason = end.reason.as_str(),
        utterances = stats.utterances,
        replies = stats.replies_started,
        cut = stats.replies_cut,
        "sim session ended"
    );
    end
}
