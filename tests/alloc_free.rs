//! Zero heap allocations on the per-frame path: a counting global allocator watches a
//! call state machine for 10,000 steady-state 20 ms steps (caller audio in, provider
//! audio in, barge-ins, ticks, every output polled) after a warm-up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use voxd::call::{Call, CallConfig, Codec, Input, Output};
use voxd::media::playout::PlayoutConfig;
use voxd::media::vad::VadConfig;
use voxd::media::{g711, Rate};

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call unchanged to the system allocator; the only extra work
// is bumping a thread-local counter, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note() {
    let _ = ON.try_with(|on| {
        if on.get() {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
    });
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn tone(n: usize, freq: f64, amp: f64, rate: f64) -> Vec<i16> {
    (0..n)
        .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin()) as i16)
        .collect()
}

/// Runs `steps` 20 ms steps and returns (allocations, frames sent to the caller).
fn run(
    call: &mut Call,
    caller: &[u8],
    loud: &[u8],
    agent: &[u8],
    rtp: bool,
    from: u64,
    steps: u64,
) -> (u64, u64) {
    let mut sent = 0u64;
    let mut sink = 0usize;
    ALLOCS.with(|a| a.set(0));
    ON.with(|on| on.set(true));
    let mut offset = 0usize;
    for i in from..from + steps {
        let t = i * 20;
        // The caller talks over the agent for a while every 10 s: barge-ins happen.
        let f = if i % 500 > 150 && i % 500 < 170 {
            loud
        } else {
            caller
        };
        if rtp {
            call.handle_input(Input::CallerRtp {
                at_ms: t,
                seq: i,
                payload: f,
            })
            .unwrap();
        } else {
            call.handle_input(Input::CallerAudio {
                at_ms: t,
                payload: f,
            })
            .unwrap();
        }
        // The provider streams replies in odd-sized chunks, faster than real time.
        if i % 500 == 100 {
            offset = 0;
        }
        if offset < agent.len() {
            let end = (offset + 1234).min(agent.len());
            offset += call
                .handle_input(Input::ProviderAudio {
                    payload: &agent[offset..end],
                })
                .unwrap();
            if offset == agent.len() {
                call.handle_input(Input::ProviderAudioDone).unwrap();
            }
        }
        if i % 500 == 200 {
            call.handle_input(Input::ProviderSpeechStarted { at_ms: t })
                .unwrap();
        }
        call.handle_input(Input::Tick { at_ms: t }).unwrap();
        while let Some(o) = call.poll_output() {
            match o {
                Output::SendToCaller { payload, .. } => {
                    sink += payload.len();
                    sent += 1;
                }
                Output::SendToProvider(b) => sink += b.len(),
                Output::BargeIn { played_ms, .. } => sink += played_ms as usize,
                Output::WakeAt(w) => sink += w as usize,
            }
        }
    }
    ON.with(|on| on.set(false));
    std::hint::black_box(sink);
    (ALLOCS.with(|a| a.get()), sent)
}

#[test]
fn the_counter_sees_allocations() {
    ALLOCS.with(|a| a.set(0));
    ON.with(|on| on.set(true));
    let v: Vec<u8> = std::hint::black_box(Vec::with_capacity(64));
    ON.with(|on| on.set(false));
    drop(v);
    assert_eq!(ALLOCS.with(|a| a.get()), 1);
}

#[test]
fn call_path_allocates_nothing_in_steady_state() {
    let cases = [
        ("rtp pcmu <-> openai pcmu", Codec::Pcmu, Codec::Pcmu, true),
        (
            "rtp pcma <-> pcm24k",
            Codec::Pcma,
            Codec::Slin(Rate::Hz24000),
            true,
        ),
        (
            "audiosocket slin16 <-> pcm24k",
            Codec::Slin(Rate::Hz16000),
            Codec::Slin(Rate::Hz24000),
            false,
        ),
        (
            "audiosocket slin8 <-> pcmu",
            Codec::Slin(Rate::Hz8000),
            Codec::Pcmu,
            false,
        ),
    ];
    for (name, caller, provider, rtp) in cases {
        let cfg = CallConfig {
            caller,
            provider,
            provider_out: provider,
            playout: PlayoutConfig::default(),
            vad: VadConfig::default(),
            jitter_depth_ms: 60,
        };
        let crate_rate = f64::from(caller.rate().hz());
        let enc = |s: &[i16], c: Codec| -> Vec<u8> {
            let mut b = vec![0u8; s.len() * c.bytes_per_sample()];
            c.encode(s, &mut b);
            b
        };
        let frame = caller.rate().samples_per_frame();
        let quiet = enc(&tone(frame, 200.0, 50.0, crate_rate), caller);
        let loud = enc(&tone(frame, 300.0, 9000.0, crate_rate), caller);
        let prate = f64::from(provider.rate().hz());
        let agent = enc(
            &tone(
                provider.rate().samples_per_ms() * 3000,
                1000.0,
                8000.0,
                prate,
            ),
            provider,
        );
        let _ = g711::ulaw_to_linear(0);

        let mut call = Call::new(cfg, 0);
        let (warm, _) = run(&mut call, &quiet, &loud, &agent, rtp, 0, 1_000);
        let (allocs, sent) = run(&mut call, &quiet, &loud, &agent, rtp, 1_000, 10_000);
        assert_eq!(sent, 10_000, "{name}: one frame per step");
        let s = call.stats();
        assert!(
            s.local_barge_ins + s.provider_barge_ins > 0,
            "{name}: barge-ins exercised"
        );
        assert!(
            s.playout.frames_played > 1_000,
            "{name}: agent audio exercised"
        );
        assert_eq!(
            allocs, 0,
            "{name}: {allocs} allocations in 10,000 steady-state steps (warm-up had {warm})"
        );
    }
}
