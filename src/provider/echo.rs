//! The `echo` provider: the caller's audio comes straight back.
//!
//! Owns: a session that returns each [`CallerEvent::Audio`] chunk unchanged as an
//! [`AgentEvent::Audio`], in the caller's own codec both ways, so a call through
//! `echo` is bit-exact end to end (fidelity and latency tests, load generation).
//!
//! Must not: decode, resample, buffer or reorder audio, or invent events (no
//! transcripts, no `AudioDone`: an echo has no utterances).

#![forbid(unsafe_code)]

use super::{
    AgentEvent, AudioFormats, CallerEvent, EndReason, Provider, SessionEnd, SessionFuture,
    SessionIo, SessionMeta,
};
use crate::call::Codec;

/// The echo provider (stateless; one session per call).
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoProvider;

impl Provider for EchoProvider {
    fn name(&self) -> &'static str {
        "echo"
    }

    /// Input = output = the caller's codec: no conversion anywhere.
    fn formats(&self, caller: Codec) -> AudioFormats {
        AudioFormats {
            input: caller,
            output: caller,
        }
    }

    fn session(&self, meta: SessionMeta, io: SessionIo) -> SessionFuture {
        Box::pin(run(meta, io))
    }
}

/// Echo until hang-up or a closed channel. DTMF and barge-in are ignored (nothing is
/// queued in the session, so there is nothing to cut).
async fn run(meta: SessionMeta, mut io: SessionIo) -> SessionEnd {
    tracing::debug!(call_id = meta.call_id, "echo session started");
    let end = loop {
        match io.events.recv().await {
            Some(CallerEvent::Audio(chunk, at)) => {
                // In-process: taking the frame is the write.
                io.record_write(at);
                if io.out.send(AgentEvent::Audio(chunk)).await.is_err() {
                    break SessionEnd::new(EndReason::ChannelClosed);
                }
            }
            Some(CallerEvent::Dtmf(_)) | Some(CallerEvent::BargeIn { .. }) => {}
            Some(CallerEvent::Hangup) => break SessionEnd::new(EndReason::CallerHangup),
            None => break SessionEnd::new(EndReason::ChannelClosed),
        }
    };
    tracing::debug!(
        call_id = meta.call_id,
        reason = end.reason.as_str(),
        "echo session ended"
    );
    end
}
