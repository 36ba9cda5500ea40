//! The in-process providers (`echo`, `sim`) run as real tokio sessions with bounded
//! channels, exactly as the glue will run them. No test asserts wall-clock timing:
//! timeouts are only a safety net against a hung session.

#![forbid(unsafe_code)]

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use voxd::call::Codec;
use voxd::config::Config;
use voxd::media::Rate;
use voxd::provider::{
    self, AgentEvent, CallerEvent, EndReason, Provider, Role, SessionIo, SessionMeta, SimConfig,
    SimProvider, EVENTS_CAPACITY, OUT_CAPACITY,
};

const SAFETY: Duration = Duration::from_secs(20);

fn meta(call_id: u64, codec: Codec) -> SessionMeta {
    SessionMeta {
        call_id,
        caller_codec: codec,
        agent: None,
        started_at_ms: 0,
        attempt: 0,
        history: Vec::new(),
    }
}

fn frame(codec: Codec, amp: f32) -> Bytes {
    let n = codec.rate().samples_per_frame();
    let hz = codec.rate().hz() as f32;
    let pcm: Vec<i16> = (0..n)
        .map(|i| (amp * (std::f32::consts::TAU * 440.0 * i as f32 / hz).sin()) as i16)
        .collect();
    let mut out = vec![0u8; n * codec.bytes_per_sample()];
    codec.encode(&pcm, &mut out);
    Bytes::from(out)
}

/// Plays the caller: `loud` frames of tone then `quiet` frames of silence, one per
/// 20 ms, then stops (keeping the channel open).
async fn caller(tx: mpsc::Sender<CallerEvent>, codec: Codec, loud: usize, quiet: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0..loud + quiet {
        tick.tick().await;
        let f = frame(codec, if i < loud { 8000.0 } else { 0.0 });
        if tx
            .send(CallerEvent::Audio(f, std::time::Instant::now()))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Receives events until `stop` says so; panics on a closed channel or after the
/// safety timeout.
async fn collect(
    out: &mut mpsc::Receiver<AgentEvent>,
    mut stop: impl FnMut(&AgentEvent) -> bool,
) -> Vec<AgentEvent> {
    let mut events = Vec::new();
    loop {
        let ev = tokio::time::timeout(SAFETY, out.recv())
            .await
            .expect("session hung")
            .expect("session closed its channel");
        let done = stop(&ev);
        events.push(ev);
        if done {
            return events;
        }
    }
}

fn audio_bytes(events: &[AgentEvent]) -> usize {
    events
        .iter()
        .map(|e| match e {
            AgentEvent::Audio(b) => b.len(),
            _ => 0,
        })
        .sum()
}

fn fast_sim(reply_ms: u32) -> SimProvider {
    SimProvider::new(SimConfig {
        think_ms: 50,
        reply_ms,
        silence_ms: 200,
        ..SimConfig::default()
    })
}

#[tokio::test]
async fn echo_is_bit_exact_and_ends_on_hangup() {
    let registry = provider::from_config(&Config::default()).unwrap();
    let echo = registry.get("echo").unwrap();
    let codec = Codec::Slin(Rate::Hz16000);
    assert_eq!(echo.formats(codec).output, codec);
    let (io, mut peer) = SessionIo::pair(EVENTS_CAPACITY, OUT_CAPACITY);
    let task = echo.start(meta(1, codec), io);

    let mut seed = 0x1234_5678u32;
    for i in 0..100 {
        let chunk: Vec<u8> = (0..640)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 24) as u8
            })
            .collect();
        let chunk = Bytes::from(chunk);
        peer.events
            .send(CallerEvent::Audio(chunk.clone(), std::time::Instant::now()))
            .await
            .unwrap();
        if i % 10 == 0 {
            peer.events.send(CallerEvent::Dtmf('5')).await.unwrap();
            peer.events
                .send(CallerEvent::BargeIn { played_ms: 0 })
                .await
                .unwrap();
        }
        assert_eq!(peer.out.recv().await.unwrap(), AgentEvent::Audio(chunk));
    }
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    let end = task.await.unwrap();
    assert_eq!(end.reason, EndReason::CallerHangup);
    assert!(end.error.is_none());
    assert!(peer.out.recv().await.is_none(), "nothing after the end");
}

#[tokio::test]
async fn echo_ends_when_either_channel_closes() {
    let echo = provider::EchoProvider;
    let (io, peer) = SessionIo::pair(4, 4);
    let task = echo.start(meta(2, Codec::Pcmu), io);
    drop(peer.events);
    assert_eq!(task.await.unwrap().reason, EndReason::ChannelClosed);

    // The call side stopped reading: the next echo fails and the session ends.
    let (io, peer) = SessionIo::pair(4, 4);
    let session = echo.session(meta(3, Codec::Pcmu), io); // run in place, not spawned
    drop(peer.out);
    peer.events
        .send(CallerEvent::Audio(
            frame(Codec::Pcmu, 1000.0),
            std::time::Instant::now(),
        ))
        .await
        .unwrap();
    assert_eq!(session.await.reason, EndReason::ChannelClosed);
}

#[tokio::test]
async fn sim_answers_a_turn_then_hangs_up() {
    let codec = Codec::Pcmu;
    let sim = fast_sim(600);
    assert_eq!(sim.formats(codec).input, Codec::Pcmu);
    let (io, mut peer) = SessionIo::pair(EVENTS_CAPACITY, OUT_CAPACITY);
    let task = sim.start(meta(7, codec), io);
    let talker = tokio::spawn(caller(peer.events.clone(), codec, 20, 40));

    let events = collect(&mut peer.out, |e| *e == AgentEvent::ResponseDone).await;
    assert!(matches!(
        &events[0],
        AgentEvent::Transcript {
            role: Role::User,
            is_final: true,
            ..
        }
    ));
    assert!(matches!(
        &events[1],
        AgentEvent::Transcript {
            role: Role::Agent,
            ..
        }
    ));
    assert!(matches!(events[2], AgentEvent::Audio(_)));
    // 600 ms of PCMU: 4800 bytes, in bursts bigger than a 20 ms frame.
    assert_eq!(audio_bytes(&events), 600 * 8);
    let chunks = events
        .iter()
        .filter(|e| matches!(e, AgentEvent::Audio(_)))
        .count();
    assert_eq!(chunks, 4, "160 ms bursts");
    let n = events.len();
    assert_eq!(events[n - 2], AgentEvent::AudioDone);
    assert!(!events.contains(&AgentEvent::SpeechStarted));

    // The reply is speech-like, not silence: loud enough after decoding.
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Audio(b) => Some(b.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    let mut pcm = vec![0i16; bytes.len()];
    codec.decode(&bytes, &mut pcm);
    let rms = (pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt();
    assert!(rms > 1000.0, "rms {rms}");

    talker.await.unwrap();
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    let end = task.await.unwrap();
    assert_eq!(end.reason, EndReason::CallerHangup);
}

#[tokio::test]
async fn sim_speaks_slin16_to_a_slin16_caller() {
    let codec = Codec::Slin(Rate::Hz16000);
    let sim = fast_sim(400);
    let f = sim.formats(codec);
    assert_eq!((f.input, f.output), (codec, codec));
    let (io, mut peer) = SessionIo::pair(EVENTS_CAPACITY, OUT_CAPACITY);
    let task = sim.start(meta(8, codec), io);
    tokio::spawn(caller(peer.events.clone(), codec, 15, 30));
    let events = collect(&mut peer.out, |e| *e == AgentEvent::ResponseDone).await;
    assert_eq!(audio_bytes(&events), 400 * 16 * 2);
    drop(peer.events);
    assert_eq!(task.await.unwrap().reason, EndReason::ChannelClosed);
}

#[tokio::test]
async fn sim_caller_barge_in_gives_speech_started_and_stops_the_reply() {
    let codec = Codec::Pcmu;
    let reply_ms = 20_000;
    let sim = fast_sim(reply_ms);
    let (io, mut peer) = SessionIo::pair(EVENTS_CAPACITY, OUT_CAPACITY);
    let task = sim.start(meta(9, codec), io);
    caller(peer.events.clone(), codec, 20, 0).await;
    let before = collect(&mut peer.out, |e| matches!(e, AgentEvent::Audio(_))).await;
    // The caller talks over the reply.
    let talker = tokio::spawn(caller(peer.events.clone(), codec, 15, 0));
    let mut events = collect(&mut peer.out, |e| *e == AgentEvent::SpeechStarted).await;
    events.extend(collect(&mut peer.out, |e| *e == AgentEvent::ResponseDone).await);
    let ss = events
        .iter()
        .position(|e| *e == AgentEvent::SpeechStarted)
        .unwrap();
    assert_eq!(events[ss + 1], AgentEvent::ResponseDone, "reply cancelled");
    assert!(
        !events.contains(&AgentEvent::AudioDone),
        "reply was not completed"
    );
    assert!(audio_bytes(&before) + audio_bytes(&events) < reply_ms as usize * 8);
    talker.await.unwrap();
    // The interruption is a turn of its own: it gets the next reply.
    let next = collect(&mut peer.out, |e| matches!(e, AgentEvent::Audio(_))).await;
    assert!(matches!(
        next[0],
        AgentEvent::Transcript {
            role: Role::User,
            ..
        }
    ));
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(task.await.unwrap().reason, EndReason::CallerHangup);
}

#[tokio::test]
async fn sim_local_barge_in_stops_the_reply() {
    let codec = Codec::Pcmu;
    let reply_ms = 20_000;
    let sim = fast_sim(reply_ms);
    let (io, mut peer) = SessionIo::pair(EVENTS_CAPACITY, OUT_CAPACITY);
    let task = sim.start(meta(10, codec), io);
    caller(peer.events.clone(), codec, 20, 0).await;
    let before = collect(&mut peer.out, |e| matches!(e, AgentEvent::Audio(_))).await;
    peer.events
        .send(CallerEvent::BargeIn { played_ms: 40 })
        .await
        .unwrap();
    let after = collect(&mut peer.out, |e| *e == AgentEvent::ResponseDone).await;
    assert!(!after.contains(&AgentEvent::AudioDone));
    assert!(!after.contains(&AgentEvent::SpeechStarted));
    assert!(audio_bytes(&before) + audio_bytes(&after) < reply_ms as usize * 8);
    // Nothing more without new caller speech.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), peer.out.recv())
            .await
            .is_err(),
        "no events after the cut"
    );
    drop(peer.events);
    assert_eq!(task.await.unwrap().reason, EndReason::ChannelClosed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sim_calls_each_get_their_own_reply() {
    let sim = std::sync::Arc::new(fast_sim(300));
    let mut calls = Vec::new();
    for id in 0..32u64 {
        let sim = sim.clone();
        calls.push(tokio::spawn(async move {
            let codec = Codec::Pcmu;
            let (io, mut peer) = SessionIo::pair(EVENTS_CAPACITY, OUT_CAPACITY);
            let task = sim.start(meta(id, codec), io);
            tokio::spawn(caller(peer.events.clone(), codec, 15, 25));
            let events = collect(&mut peer.out, |e| *e == AgentEvent::ResponseDone).await;
            peer.events.send(CallerEvent::Hangup).await.unwrap();
            assert_eq!(task.await.unwrap().reason, EndReason::CallerHangup);
            assert_eq!(audio_bytes(&events), 300 * 8);
            events
                .into_iter()
                .filter_map(|e| match e {
                    AgentEvent::Audio(b) => Some(b),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut replies = Vec::new();
    for c in calls {
        replies.push(c.await.unwrap());
    }
    // Seeds differ per call id.
    assert_ne!(replies[0], replies[1]);
}
