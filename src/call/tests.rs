//! Call state machine tests on a virtual clock: minutes of call per test, run in
//! milliseconds.

use super::*;
use crate::media::playout::PlayoutConfig;
use crate::media::vad::VadConfig;
use crate::media::{g711, Rate};

fn cfg(caller: Codec, provider: Codec) -> CallConfig {
    CallConfig {
        caller,
        provider,
        provider_out: provider,
        playout: PlayoutConfig {
            jitter_buffer_ms: 2000,
            min_start_ms: 60,
            low_watermark_ms: 40,
            provider_grace_ms: 200,
        },
        vad: VadConfig {
            initial_protection_ms: 0,
            ..VadConfig::default()
        },
        jitter_depth_ms: 60,
    }
}

/// Everything one poll round produced, owned.
#[derive(Debug, Default)]
struct Round {
    to_caller: Vec<(Vec<u8>, bool)>,
    to_provider: Vec<u8>,
    barge_ins: Vec<(u32, BargeInSource)>,
    wake: Option<u64>,
}

fn poll_all(call: &mut Call) -> Round {
    let mut r = Round::default();
    while let Some(o) = call.poll_output() {
        match o {
            Output::SendToCaller { payload, marker } => {
                r.to_caller.push((payload.to_vec(), marker))
            }
            Output::SendToProvider(b) => r.to_provider.extend_from_slice(b),
            Output::BargeIn { played_ms, source } => r.barge_ins.push((played_ms, source)),
            Output::WakeAt(t) => r.wake = Some(t),
        }
    }
    r
}

fn tone(rate: Rate, freq: f64, amp: f64, n: usize, start: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = (start + i) as f64 / f64::from(rate.hz());
            (amp * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
        })
        .collect()
}

fn slin_bytes(s: &[i16]) -> Vec<u8> {
    s.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn slin_samples(b: &[u8]) -> Vec<i16> {
    b.chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn ulaw(s: &[i16]) -> Vec<u8> {
    let mut out = vec![0; s.len()];
    g711::ulaw_encode(s, &mut out);
    out
}

/// Power of `freq` in `x` relative to full scale, by Goertzel.
fn goertzel_amp(x: &[i16], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let p = s1 * s1 + s2 * s2 - c * s1 * s2;
    2.0 * p.sqrt() / x.len() as f64
}

#[test]
fn first_output_is_a_wake_and_each_tick_sends_one_frame_and_rearms() {
    let mut call = Call::new(cfg(Codec::Pcmu, Codec::Pcmu), 1000);
    assert_eq!(poll_all(&mut call).wake, Some(1000));
    for i in 0..10u64 {
        let t = 1000 + 20 * i;
        call.handle_input(Input::Tick { at_ms: t }).unwrap();
        let r = poll_all(&mut call);
        assert_eq!(r.to_caller.len(), 1);
        assert_eq!(r.to_caller[0].0.len(), 160);
        assert!(
            r.to_caller[0].0.iter().all(|&b| b == 0xFF),
            "mu-law silence"
        );
        assert_eq!(r.wake, Some(t + 20));
    }
    // Early wake-up: no frame, same deadline.
    call.handle_input(Input::Tick { at_ms: 1195 }).unwrap();
    let r = poll_all(&mut call);
    assert!(r.to_caller.is_empty());
    assert_eq!(r.wake, Some(1200));
}

#[test]
fn late_ticks_do_not_burst() {
    let mut call = Call::new(cfg(Codec::Pcmu, Codec::Pcmu), 0);
    poll_all(&mut call);
    call.handle_input(Input::Tick { at_ms: 0 }).unwrap();
    poll_all(&mut call);
    // The loop stalled for a second: one frame, and the schedule restarts from now.
    call.handle_input(Input::Tick { at_ms: 1000 }).unwrap();
    let r = poll_all(&mut call);
    assert_eq!(r.to_caller.len(), 1);
    assert_eq!(r.wake, Some(1020));
    assert_eq!(call.stats().late_ticks, 1);
}

#[test]
fn pcmu_both_sides_passes_caller_bytes_through_unchanged() {
    let mut call = Call::new(cfg(Codec::Pcmu, Codec::Pcmu), 0);
    poll_all(&mut call);
    let audio = ulaw(&tone(Rate::Hz8000, 440.0, 3000.0, 160 * 50, 0));
    let mut got = Vec::new();
    for (i, f) in audio.chunks(160).enumerate() {
        call.handle_input(Input::CallerAudio {
            at_ms: i as u64 * 20,
            payload: f,
        })
        .unwrap();
        got.extend(poll_all(&mut call).to_provider);
    }
    assert_eq!(got, audio);
}

#[test]
fn provider_audio_is_paced_one_frame_per_tick_after_min_start() {
    let mut call = Call::new(cfg(Codec::Pcmu, Codec::Pcmu), 0);
    poll_all(&mut call);
    let pcm = tone(Rate::Hz8000, 1000.0, 8000.0, 8 * 1000, 0); // 1 s
    let audio = ulaw(&pcm);
    // Provider delivers in 100 ms bursts every 100 ms.
    let mut played = Vec::new();
    let mut markers = 0;
    let mut offset = 0;
    for tick in 0..80u64 {
        let t = tick * 20;
        if tick % 5 == 0 && offset < audio.len() {
            let end = (offset + 800).min(audio.len());
            let n = call
                .handle_input(Input::ProviderAudio {
                    payload: &audio[offset..end],
                })
                .unwrap();
            assert_eq!(n, end - offset);
            offset = end;
            if offset == audio.len() {
                call.handle_input(Input::ProviderAudioDone).unwrap();
            }
        }
        call.handle_input(Input::Tick { at_ms: t }).unwrap();
        let r = poll_all(&mut call);
        assert_eq!(r.to_caller.len(), 1, "exactly one frame per tick");
        let (frame, marker) = &r.to_caller[0];
        if frame.iter().any(|&b| b != 0xFF) {
            played.extend_from_slice(frame);
        }
        markers += usize::from(*marker);
    }
    assert_eq!(
        played, audio,
        "every byte of agent audio reaches the caller, in order"
    );
    assert_eq!(markers, 1, "one talk spurt");
    assert_eq!(call.stats().playout.underflow_events, 0);
}

#[test]
fn provider_barge_in_stops_agent_audio_on_the_next_frame() {
    let mut call = Call::new(cfg(Codec::Pcmu, Codec::Pcmu), 0);
    poll_all(&mut call);
    let audio = ulaw(&tone(Rate::Hz8000, 1000.0, 8000.0, 8 * 1500, 0)); // 1.5 s
    assert_eq!(
        call.handle_input(Input::ProviderAudio { payload: &audio })
            .unwrap(),
        audio.len()
    );
    let mut t = 0;
    for _ in 0..50 {
        call.handle_input(Input::Tick { at_ms: t }).unwrap();
        poll_all(&mut call);
        t += 20;
    }
    // speech_started reached voxd 7 ms before the next pacing slot.
    call.handle_input(Input::ProviderSpeechStarted { at_ms: t - 7 })
        .unwrap();
    let r = poll_all(&mut call);
    assert_eq!(
        r.barge_ins,
        vec![(1000, BargeInSource::Provider)],
        "50 frames were heard"
    );
    assert_eq!(call.stats().barge_in_reaction.count(), 0);
    call.handle_input(Input::Tick { at_ms: t }).unwrap();
    let h = call.stats().barge_in_reaction;
    assert_eq!(
        (h.count(), h.sum_ms),
        (1, 7),
        "reaction = to the next frame"
    );
    assert_eq!(h.buckets[1], 1, "in the 5-10 ms bucket");
    let s = call.take_latency_samples();
    assert_eq!(
        s.barge_in_reaction_ms,
        Some(7),
        "the same sample for the shard"
    );
    assert_eq!(
        call.take_latency_samples(),
        Default::default(),
        "taken once"
    );
    let r = poll_all(&mut call);
    assert!(
        r.to_caller[0].0.iter().all(|&b| b == 0xFF),
        "next frame is silence"
    );
    assert!(!call.agent_speaking());
    // A second speech_started with nothing playing is not a barge-in.
    call.handle_input(Input::ProviderSpeechStarted { at_ms: t })
        .unwrap();
    assert!(poll_all(&mut call).barge_ins.is_empty());
    call.handle_input(Input::Tick { at_ms: t + 20 }).unwrap();
    assert_eq!(call.stats().barge_in_reaction.count(), 1, "not measured");
}

#[test]
fn local_barge_in_fires_when_the_caller_talks_over_the_agent() {
    let mut c = cfg(Codec::Pcmu, Codec::Pcmu);
    c.playout.jitter_buffer_ms = 6000;
    let mut call = Call::new(c, 0);
    poll_all(&mut call);
    let agent = ulaw(&tone(Rate::Hz8000, 1000.0, 8000.0, 8 * 5000, 0));
    assert_eq!(
        call.handle_input(Input::ProviderAudio { payload: &agent })
            .unwrap(),
        agent.len()
    );
    let caller_quiet = ulaw(&[0i16; 160]);
    let caller_loud = ulaw(&tone(Rate::Hz8000, 300.0, 6000.0, 160, 0));
    let mut fired_at = None;
    let mut heard_after = 0;
    for i in 0..150u64 {
        let t = i * 20;
        let f = if i >= 100 {
            &caller_loud
        } else {
            &caller_quiet
        };
        call.handle_input(Input::CallerAudio {
            at_ms: t,
            payload: f,
        })
        .unwrap();
        call.handle_input(Input::Tick { at_ms: t }).unwrap();
        let r = poll_all(&mut call);
        if let Some(&(played, src)) = r.barge_ins.first() {
            assert_eq!(src, BargeInSource::Local);
            // Playout started at t=0 (min_start 60 ms already queued): i frames heard.
            assert_eq!(played, i as u32 * 20);
            fired_at = Some(i);
        }
        if fired_at.is_some() && r.to_caller[0].0.iter().any(|&b| b != 0xFF) {
            heard_after += 1;
        }
    }
    // min_ms 150 => the 8th loud frame (i = 107) fires.
    assert_eq!(fired_at, Some(107));
    assert_eq!(heard_after, 0, "no agent audio after the barge-in frame");
    assert_eq!(call.stats().local_barge_ins, 1);
}

#[test]
fn backpressure_keeps_every_sample() {
    let mut c = cfg(Codec::Pcmu, Codec::Pcmu);
    c.playout.jitter_buffer_ms = 200;
    let mut call = Call::new(c, 0);
    poll_all(&mut call);
    let audio = ulaw(&tone(Rate::Hz8000, 700.0, 5000.0, 8 * 2000, 0));
    let first = call
        .handle_input(Input::ProviderAudio { payload: &audio })
        .unwrap();
    assert!(first < audio.len(), "a full queue takes only part");
    let mut offset = first;
    let mut played = Vec::new();
    let mut t = 0;
    while played.len() < audio.len() && t < 10_000 {
        if offset < audio.len() {
            offset += call
                .handle_input(Input::ProviderAudio {
                    payload: &audio[offset..],
                })
                .unwrap();
            if offset == audio.len() {
                call.handle_input(Input::ProviderAudioDone).unwrap();
            }
        }
        call.handle_input(Input::Tick { at_ms: t }).unwrap();
        for (f, _) in poll_all(&mut call).to_caller {
            if f.iter().any(|&b| b != 0xFF) {
                played.extend(f);
            }
        }
        t += 20;
    }
    assert_eq!(played, audio);
}

#[test]
fn resampled_tone_keeps_its_frequency_both_ways() {
    // Caller slin16 (AudioSocket c(slin16)), provider PCM 24 kHz (OpenAI audio/pcm).
    let mut call = Call::new(
        cfg(Codec::Slin(Rate::Hz16000), Codec::Slin(Rate::Hz24000)),
        0,
    );
    poll_all(&mut call);
    let up = tone(Rate::Hz16000, 1000.0, 10000.0, 16 * 2000, 0);
    let mut at_provider = Vec::new();
    for (i, f) in slin_bytes(&up).chunks(640).enumerate() {
        call.handle_input(Input::CallerAudio {
            at_ms: i as u64 * 20,
            payload: f,
        })
        .unwrap();
        at_provider.extend(poll_all(&mut call).to_provider);
    }
    let at_provider = slin_samples(&at_provider);
    assert_eq!(
        at_provider.len(),
        24 * 2000,
        "16k -> 24k keeps the duration exactly"
    );
    let body = &at_provider[2400..];
    let a = goertzel_amp(body, 24_000, 1000.0);
    assert!(
        (a - 10000.0).abs() < 50.0,
        "1 kHz amplitude at the provider: {a}"
    );

    let down = tone(Rate::Hz24000, 1000.0, 10000.0, 24 * 1000, 0);
    let n = call
        .handle_input(Input::ProviderAudio {
            payload: &slin_bytes(&down),
        })
        .unwrap();
    assert_eq!(n, down.len() * 2);
    call.handle_input(Input::ProviderAudioDone).unwrap();
    let mut at_caller = Vec::new();
    for i in 0..60u64 {
        call.handle_input(Input::Tick {
            at_ms: 40_000 + i * 20,
        })
        .unwrap();
        for (f, _) in poll_all(&mut call).to_caller {
            at_caller.extend(slin_samples(&f));
        }
    }
    let body = &at_caller[1600..16 * 900];
    let a = goertzel_amp(body, 16_000, 1000.0);
    assert!(
        (a - 10000.0).abs() < 50.0,
        "1 kHz amplitude at the caller: {a}"
    );
}

#[test]
fn rtp_reordering_reaches_the_provider_in_order() {
    let mut call = Call::new(cfg(Codec::Pcmu, Codec::Slin(Rate::Hz8000)), 0);
    poll_all(&mut call);
    let frames: Vec<Vec<i16>> = (0..30).map(|i| vec![(i as i16 + 1) * 100; 160]).collect();
    let order = [0usize, 2, 1, 3, 5, 4, 6, 7, 9, 8];
    let mut got = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let payload = ulaw(&frames[i]);
        call.handle_input(Input::CallerRtp {
            at_ms: k as u64 * 20,
            seq: 1000 + i as u64,
            payload: &payload,
        })
        .unwrap();
        got.extend(slin_samples(&poll_all(&mut call).to_provider));
    }
    assert_eq!(got.len(), 160 * 10);
    for (i, f) in got.chunks(160).enumerate() {
        let want = g711::ulaw_to_linear(g711::linear_to_ulaw(frames[i][0]));
        assert!(f.iter().all(|&s| s == want), "frame {i} in order");
    }
    assert_eq!(call.stats().jitter.reordered, 3);
    assert_eq!(call.stats().jitter.lost, 0);
}

#[test]
fn bad_caller_payloads_are_errors_not_panics() {
    let mut call = Call::new(cfg(Codec::Slin(Rate::Hz16000), Codec::Pcmu), 0);
    assert_eq!(
        call.handle_input(Input::CallerAudio {
            at_ms: 0,
            payload: &[1, 2, 3]
        }),
        Err(CallError::OddCallerPayload(3))
    );
    assert_eq!(
        call.handle_input(Input::CallerAudio {
            at_ms: 0,
            payload: &[]
        }),
        Err(CallError::EmptyCallerPayload)
    );
    // Oversize AudioSocket payloads are split into blocks, not refused.
    let big = vec![0u8; 65534];
    assert!(call
        .handle_input(Input::CallerAudio {
            at_ms: 0,
            payload: &big
        })
        .is_ok());
    // RTP frames of the wrong size are dropped and counted.
    let mut rtp = Call::new(cfg(Codec::Pcmu, Codec::Pcmu), 0);
    rtp.handle_input(Input::CallerRtp {
        at_ms: 0,
        seq: 1,
        payload: &[0xFF; 80],
    })
    .unwrap();
    rtp.handle_input(Input::CallerRtp {
        at_ms: 0,
        seq: 2,
        payload: &[0xFF; 5000],
    })
    .unwrap();
    assert_eq!(rtp.stats().jitter.wrong_size, 2);
}

#[test]
fn ten_minutes_of_conversation_on_a_virtual_clock() {
    // Caller PCMU over RTP, provider PCMU; the agent answers each caller turn.
    let mut call = Call::new(cfg(Codec::Pcmu, Codec::Pcmu), 0);
    poll_all(&mut call);
    let speech = ulaw(&tone(Rate::Hz8000, 300.0, 6000.0, 160, 0));
    let quiet = ulaw(&[0i16; 160]);
    let reply = ulaw(&tone(Rate::Hz8000, 1000.0, 8000.0, 8 * 2000, 0)); // 2 s replies
    let mut to_caller = 0u64;
    let mut to_provider = 0usize;
    for tick in 0..30_000u64 {
        let seq = tick;
        let t = tick * 20;
        let phase = tick % 500; // 10 s cycle: 2 s caller talk, reply at 3 s
        let f = if phase < 100 { &speech } else { &quiet };
        call.handle_input(Input::CallerRtp {
            at_ms: t,
            seq,
            payload: f,
        })
        .unwrap();
        if phase == 150 {
            call.handle_input(Input::ProviderAudio { payload: &reply })
                .unwrap();
            call.handle_input(Input::ProviderAudioDone).unwrap();
        }
        call.handle_input(Input::Tick { at_ms: t }).unwrap();
        let r = poll_all(&mut call);
        to_caller += r.to_caller.len() as u64;
        to_provider += r.to_provider.len();
        assert!(r.barge_ins.is_empty());
    }
    let s = call.stats();
    assert_eq!(to_caller, 30_000);
    assert_eq!(to_provider, 30_000 * 160);
    assert_eq!(s.playout.utterances, 60);
    assert_eq!(s.playout.frames_played, 60 * 100);
    assert_eq!(s.playout.underflow_events, 0);
    assert_eq!(s.jitter.lost, 0);
}

mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Caller(Vec<u8>),
        Rtp(i16, Vec<u8>),
        Provider(Vec<u8>),
        Done,
        SpeechStarted,
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            vec(any::<u8>(), 0..2000).prop_map(Op::Caller),
            (any::<i16>(), vec(any::<u8>(), 0..400)).prop_map(|(d, b)| Op::Rtp(d, b)),
            vec(any::<u8>(), 0..6000).prop_map(Op::Provider),
            Just(Op::Done),
            Just(Op::SpeechStarted),
            (0u16..200).prop_map(Op::Advance),
        ]
    }

    const CODECS: [Codec; 5] = [
        Codec::Pcmu,
        Codec::Pcma,
        Codec::Slin(Rate::Hz8000),
        Codec::Slin(Rate::Hz16000),
        Codec::Slin(Rate::Hz24000),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any sequence of inputs, with garbage payloads: no panic, inputs never
        /// report more bytes taken than given, and every due tick sends exactly one
        /// caller frame of the right size.
        #[test]
        fn any_input_sequence_is_handled(
            ops in vec(op(), 0..120),
            c in 0usize..5,
            p in 0usize..5,
        ) {
            let (caller, provider) = (CODECS[c], CODECS[p]);
            let mut call = Call::new(cfg(caller, provider), 0);
            let mut now = 0u64;
            let mut seq = 1_000_000u64;
            let mut due = 0u64;
            for o in ops {
                let taken = match &o {
                    Op::Caller(b) => call.handle_input(Input::CallerAudio { at_ms: now, payload: b }),
                    Op::Rtp(d, b) => {
                        seq = seq.saturating_add_signed(i64::from(*d));
                        call.handle_input(Input::CallerRtp { at_ms: now, seq, payload: b })
                    }
                    Op::Provider(b) => call.handle_input(Input::ProviderAudio { payload: b }),
                    Op::Done => call.handle_input(Input::ProviderAudioDone),
                    Op::SpeechStarted => call.handle_input(Input::ProviderSpeechStarted { at_ms: now }),
                    Op::Advance(ms) => {
                        now += u64::from(*ms);
                        call.handle_input(Input::Tick { at_ms: now })
                    }
                };
                let given = match &o {
                    Op::Caller(b) | Op::Rtp(_, b) | Op::Provider(b) => b.len(),
                    _ => 0,
                };
                if let Ok(n) = taken {
                    prop_assert!(n <= given);
                }
                let r = poll_all(&mut call);
                if matches!(o, Op::Advance(_)) {
                    let expect = usize::from(now >= due);
                    prop_assert_eq!(r.to_caller.len(), expect);
                    for (f, _) in &r.to_caller {
                        prop_assert_eq!(f.len(), caller.frame_bytes());
                    }
                }
                if let Some(w) = r.wake {
                    due = w;
                }
            }
        }
    }
}

#[test]
fn rtp_jitter_follows_rfc_3550() {
    let mut call = Call::new(cfg(Codec::Pcmu, Codec::Pcmu), 0);
    let f = ulaw(&[0i16; 160]);
    // On time: every packet exactly 20 ms after the previous one.
    for seq in 0..100u64 {
        call.handle_input(Input::CallerRtp {
            at_ms: 1000 + seq * 20,
            seq,
            payload: &f,
        })
        .unwrap();
        poll_all(&mut call);
    }
    assert_eq!(call.rtp_jitter_ms(), 0.0);
    // Then every other packet 5 ms late: |D| = 5 ms each time, J -> 5 ms.
    for seq in 100..400u64 {
        let late = if seq % 2 == 1 { 5 } else { 0 };
        call.handle_input(Input::CallerRtp {
            at_ms: 1000 + seq * 20 + late,
            seq,
            payload: &f,
        })
        .unwrap();
        poll_all(&mut call);
    }
    let j = call.rtp_jitter_ms();
    assert!((j - 5.0).abs() < 0.5, "jitter {j} ms");
}

#[test]
fn turn_response_is_caller_silence_to_agent_answer() {
    let mut call = Call::new(cfg(Codec::Pcmu, Codec::Pcmu), 0);
    let loud = ulaw(&tone(Rate::Hz8000, 300.0, 6000.0, 160, 0));
    let quiet = ulaw(&[0i16; 160]);
    let mut t = 0;
    // No caller speech before the greeting: a greeting is not a turn response.
    let greeting = ulaw(&tone(Rate::Hz8000, 1000.0, 8000.0, 8 * 200, 0));
    call.handle_input(Input::ProviderAudio { payload: &greeting })
        .unwrap();
    call.handle_input(Input::ProviderAudioDone).unwrap();
    for _ in 0..30 {
        call.handle_input(Input::Tick { at_ms: t }).unwrap();
        poll_all(&mut call);
        t += 20;
    }
    assert_eq!(call.stats().turn_response.count(), 0);
    // The caller talks for 400 ms (last loud frame at `spoke`), then is quiet.
    let mut spoke = 0;
    for i in 0..40 {
        let f = if i < 20 { &loud } else { &quiet };
        if i < 20 {
            spoke = t;
        }
        call.handle_input(Input::CallerAudio {
            at_ms: t,
            payload: f,
        })
        .unwrap();
        call.handle_input(Input::Tick { at_ms: t }).unwrap();
        poll_all(&mut call);
        t += 20;
    }
    // The answer arrives and plays from the next tick on.
    let answer = ulaw(&tone(Rate::Hz8000, 1000.0, 8000.0, 8 * 500, 0));
    call.handle_input(Input::ProviderAudio { payload: &answer })
        .unwrap();
    call.handle_input(Input::Tick { at_ms: t }).unwrap();
    poll_all(&mut call);
    let h = call.stats().turn_response;
    assert_eq!(h.count(), 1);
    assert_eq!(h.sum_ms, t - spoke);
    assert_eq!(
        h.buckets[1],
        1,
        "{} ms is in the 250-500 ms bucket",
        t - spoke
    );
}
