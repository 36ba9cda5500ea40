//! Sans-IO bookkeeping of the agent's turn in an OpenAI Realtime session: which
//! response runs, which assistant item's audio the caller is hearing, how much of
//! it arrived, whether it is still playing, and what a barge-in must send.
//!
//! Owns: the rules "speech_started is a barge-in only while agent audio plays or is
//! queued", "cancel only a running response and only for a local barge-in",
//! "truncate each item at most once, never past the audio received", and "audio of
//! a cut item or response is dropped, not played". Time comes in as milliseconds
//! of the session's clock.
//!
//! Must not: do I/O, read a clock, or know about JSON; the session loop turns the
//! answers into messages and events.

#![forbid(unsafe_code)]

/// Grace after the modelled end of playout during which a provider
/// `speech_started` still counts as talking over the agent: covers the playout
/// start buffer and the server VAD's detection delay.
pub(super) const PLAYOUT_GRACE_MS: u64 = 400;

/// The assistant item whose audio the caller hears (or heard last).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    id: String,
    /// Audio bytes received for it.
    bytes: u64,
    /// When its queued audio ends if played in real time from arrival (µs).
    play_end_us: u64,
    /// Cut by a barge-in: later deltas are dropped, `AudioDone` suppressed.
    cut: bool,
    /// The cut came from the provider's `speech_started` (it cancels by itself).
    provider_cut: bool,
    /// `conversation.item.truncate` was sent.
    truncated: bool,
}

/// What a [`CallerEvent::BargeIn`](crate::provider::CallerEvent::BargeIn) must send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct BargeActions {
    /// Send `response.cancel` (for this response id, when known).
    pub cancel: Option<Option<String>>,
    /// Send `conversation.item.truncate {item_id, audio_end_ms}`.
    pub truncate: Option<(String, u32)>,
    /// The cut was voxd's own (no provider `speech_started` before it).
    pub local: bool,
}

/// The turn state of one session.
#[derive(Debug)]
pub(super) struct Turn {
    bytes_per_ms: u64,
    interrupt_response: bool,
    /// A response is running (`response.created` or audio seen, no `response.done`).
    running: bool,
    /// Its id, when the server gave one.
    response_id: Option<String>,
    /// A response whose further audio is dropped (cut by a barge-in).
    cut_response: Option<String>,
    item: Option<Item>,
    /// An item the provider cut whose `BargeIn` (and truncate) is still to come
    /// when a newer item already started.
    awaiting: Option<Item>,
}

impl Turn {
    /// State for output audio of `bytes_per_ms` bytes per millisecond;
    /// `interrupt_response` is the session's turn-detection knob (with it off the
    /// server does not interrupt, so its `speech_started` is not a barge-in).
    pub fn new(bytes_per_ms: usize, interrupt_response: bool) -> Self {
        Turn {
            bytes_per_ms: bytes_per_ms.max(1) as u64,
            interrupt_response,
            running: false,
            response_id: None,
            cut_response: None,
            item: None,
            awaiting: None,
        }
    }

    /// `response.created`.
    pub fn on_response_created(&mut self, id: Option<&str>) {
        self.running = true;
        self.response_id = id.map(str::to_owned);
    }

    /// `response.done`.
    pub fn on_response_done(&mut self, id: Option<&str>) {
        if id.is_none() || self.response_id.as_deref() == id || self.response_id.is_none() {
            self.running = false;
            self.response_id = None;
        }
    }

    /// A response is running.
    #[cfg(test)]
    pub fn running(&self) -> bool {
        self.running
    }

    fn is_cut_response(&self, response_id: Option<&str>) -> bool {
        matches!((response_id, self.cut_response.as_deref()), (Some(a), Some(b)) if a == b)
    }

    /// `response.output_audio.delta` of `len` decoded bytes at `now_ms`: `true` if
    /// the audio goes to the caller, `false` if it belongs to a cut item or
    /// response and is dropped.
    pub fn on_audio(
        &mut self,
        now_ms: u64,
        response_id: Option<&str>,
        item_id: &str,
        len: usize,
    ) -> bool {
        if self.is_cut_response(response_id) {
            return false;
        }
        if !self.running {
            // Audio without `response.created` (or after a lost one): a response runs.
            self.running = true;
            self.response_id = response_id.map(str::to_owned);
        }
        let now_us = now_ms.saturating_mul(1000);
        match &mut self.item {
            Some(item) if item.id == item_id => {
                if item.cut {
                    return false;
                }
            }
            _ => {
                if let Some(old) = self.item.take() {
                    if old.provider_cut && !old.truncated {
                        self.awaiting = Some(old);
                    }
                }
                self.item = Some(Item {
                    id: item_id.to_owned(),
                    bytes: 0,
                    play_end_us: now_us,
                    cut: false,
                    provider_cut: false,
                    truncated: false,
                });
            }
        }
        let bpm = self.bytes_per_ms;
        if let Some(item) = &mut self.item {
            item.bytes = item.bytes.saturating_add(len as u64);
            let dur_us = (len as u64).saturating_mul(1000) / bpm;
            item.play_end_us = item.play_end_us.max(now_us).saturating_add(dur_us);
        }
        true
    }

    /// `response.output_audio.done` for `item_id`: `true` to pass `AudioDone` on
    /// (suppressed for a cut item or response: the playout was flushed).
    pub fn on_audio_done(&self, response_id: Option<&str>, item_id: Option<&str>) -> bool {
        if self.is_cut_response(response_id) {
            return false;
        }
        match (&self.item, item_id) {
            (Some(item), Some(id)) if item.id == id => !item.cut,
            _ => true,
        }
    }

    /// Whether agent audio of the current item is playing or queued at `now_ms`.
    pub fn playing(&self, now_ms: u64) -> bool {
        self.item.as_ref().is_some_and(|i| {
            !i.cut && now_ms.saturating_mul(1000) < i.play_end_us + PLAYOUT_GRACE_MS * 1000
        })
    }

    /// `input_audio_buffer.speech_started` at `now_ms`: `true` if it is a
    /// provider barge-in to report as `SpeechStarted` (agent audio playing and the
    /// server interrupts); then the item and running response are cut.
    pub fn on_speech_started(&mut self, now_ms: u64) -> bool {
        if !self.interrupt_response || !self.playing(now_ms) {
            return false;
        }
        if let Some(item) = &mut self.item {
            item.cut = true;
            item.provider_cut = true;
        }
        if self.running {
            self.cut_response.clone_from(&self.response_id);
        }
        true
    }

    /// The glue's `BargeIn {played_ms}`: cancel the response if it runs and the
    /// barge-in was local, truncate the current item to `played_ms` (clamped to
    /// the audio received) unless it was truncated already.
    pub fn on_barge_in(&mut self, played_ms: u32) -> BargeActions {
        let mut act = BargeActions::default();
        let bpm = self.bytes_per_ms;
        let truncate = |item: &Item| {
            let heard_ms = u32::try_from(item.bytes / bpm).unwrap_or(u32::MAX);
            (item.id.clone(), played_ms.min(heard_ms))
        };
        if let Some(item) = self.awaiting.take() {
            act.truncate = Some(truncate(&item));
            return act;
        }
        let Some(item) = &mut self.item else {
            return act;
        };
        let local = !item.provider_cut && !item.cut;
        act.local = local;
        item.cut = true;
        if self.running && local {
            act.cancel = Some(self.response_id.clone());
            self.cut_response.clone_from(&self.response_id);
        }
        if !item.truncated {
            item.truncated = true;
            act.truncate = Some(truncate(item));
        }
        act
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPM: usize = 8; // PCMU

    #[test]
    fn speech_started_counts_only_while_audio_plays() {
        let mut t = Turn::new(BPM, true);
        assert!(!t.on_speech_started(0), "nothing played yet: a caller turn");
        t.on_response_created(Some("r1"));
        assert!(t.on_audio(1000, Some("r1"), "i1", 8000)); // 1 s of audio at t=1 s
        assert!(t.playing(1500));
        assert!(t.playing(2000 + PLAYOUT_GRACE_MS - 1));
        assert!(!t.playing(2000 + PLAYOUT_GRACE_MS));
        assert!(!t.on_speech_started(2000 + PLAYOUT_GRACE_MS + 10));
        assert!(t.on_speech_started(1500));
        // The cut item's later audio and done are dropped.
        assert!(!t.on_audio(1510, Some("r1"), "i1", 800));
        assert!(!t.on_audio(1510, Some("r1"), "i2", 800), "same response");
        assert!(!t.on_audio_done(Some("r1"), Some("i1")));
        assert!(!t.on_speech_started(1520), "already cut");
    }

    #[test]
    fn queued_audio_extends_playout() {
        let mut t = Turn::new(BPM, true);
        // Five seconds arrive within 100 ms: playout ends near t=5 s.
        for k in 0..5 {
            assert!(t.on_audio(k * 20, Some("r"), "i", 8000));
        }
        assert!(t.playing(4900));
        assert!(!t.playing(5000 + PLAYOUT_GRACE_MS));
    }

    #[test]
    fn interrupt_off_means_no_provider_barge_in() {
        let mut t = Turn::new(BPM, false);
        t.on_audio(0, Some("r"), "i", 8000);
        assert!(!t.on_speech_started(10));
    }

    #[test]
    fn provider_barge_in_truncates_without_cancel_once() {
        let mut t = Turn::new(BPM, true);
        t.on_response_created(Some("r1"));
        t.on_audio(0, Some("r1"), "i1", 16000); // 2 s
        assert!(t.on_speech_started(500));
        let a = t.on_barge_in(480);
        assert_eq!(a.cancel, None);
        assert_eq!(a.truncate, Some(("i1".into(), 480)));
        assert_eq!(t.on_barge_in(600), BargeActions::default(), "never twice");
    }

    #[test]
    fn local_barge_in_cancels_a_running_response_and_clamps() {
        let mut t = Turn::new(BPM, true);
        t.on_response_created(Some("r1"));
        t.on_audio(0, Some("r1"), "i1", 4000); // 500 ms received so far
        let a = t.on_barge_in(900);
        assert_eq!(a.cancel, Some(Some("r1".into())));
        assert_eq!(
            a.truncate,
            Some(("i1".into(), 500)),
            "clamped to audio received"
        );
        assert!(!t.on_audio(10, Some("r1"), "i1", 800));
        t.on_response_done(Some("r1"));
        assert!(!t.running());
        // The next response plays normally.
        t.on_response_created(Some("r2"));
        assert!(t.on_audio(2000, Some("r2"), "i2", 800));
        assert!(t.on_audio_done(Some("r2"), Some("i2")));
    }

    #[test]
    fn barge_in_after_response_done_only_truncates() {
        let mut t = Turn::new(BPM, true);
        t.on_response_created(Some("r1"));
        t.on_audio(0, Some("r1"), "i1", 8000);
        t.on_response_done(Some("r1"));
        let a = t.on_barge_in(300);
        assert_eq!(a.cancel, None);
        assert_eq!(a.truncate, Some(("i1".into(), 300)));
        assert_eq!(Turn::new(BPM, true).on_barge_in(5), BargeActions::default());
    }

    #[test]
    fn provider_cut_item_is_truncated_even_if_a_new_item_started() {
        let mut t = Turn::new(BPM, true);
        t.on_response_created(Some("r1"));
        t.on_audio(0, Some("r1"), "i1", 8000);
        assert!(t.on_speech_started(100));
        t.on_response_done(Some("r1"));
        t.on_response_created(Some("r2"));
        assert!(t.on_audio(150, Some("r2"), "i2", 800));
        let a = t.on_barge_in(90);
        assert_eq!(a.truncate, Some(("i1".into(), 90)));
        assert_eq!(a.cancel, None);
        assert!(t.playing(160), "the new item plays on");
    }
}
