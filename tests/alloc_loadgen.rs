//! Zero heap allocations per frame over a real load: the engine (shards, bridge,
//! control dispatch, provider sessions) runs in this test binary with a counting
//! global allocator, `voxd loadgen`'s driver runs calls against it over loopback,
//! and once every call is up and the agents have spoken, allocations are counted per
//! thread class for a steady window: shard threads (`voxd-shard-*`), the control
//! runtime (`voxd-control`), and the load generator (`loadgen-*`, reported only).
//! `ALLOC_TRACE=1` prints where the first allocations of each voxd class happen
//! (the tracing itself then inflates the counts).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use voxd::engine::runner::Engine;
use voxd::loadgen::caller::{Law, Transport};
use voxd::loadgen::driver::{self, DriverConfig};
use voxd::loadgen::signal::SignalConfig;
use voxd::provider::Registry;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Allocations per class: 0 shard, 1 control, 2 loadgen, 3 other.
static ALLOCS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

const UNKNOWN: u8 = u8::MAX;

thread_local! {
    static CLASS: Cell<u8> = const { Cell::new(UNKNOWN) };
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

fn class_of(name: Option<&str>) -> u8 {
    match name {
        Some(n) if n.starts_with("voxd-shard") => 0,
        Some(n) if n.starts_with("voxd-control") => 1,
        Some(n) if n.starts_with("loadgen") => 2,
        _ => 3,
    }
}

fn note() {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    let class = CLASS
        .try_with(|c| {
            if c.get() == UNKNOWN {
                // `thread::current()` may allocate the first time on a thread: guard
                // against counting (and recursing into) our own lookup.
                if BUSY.with(|b| b.replace(true)) {
                    return 3;
                }
                let k = class_of(std::thread::current().name());
                c.set(k);
                BUSY.with(|b| b.set(false));
            }
            c.get()
        })
        .unwrap_or(3);
    let n = ALLOCS[usize::from(class.min(3))].fetch_add(1, Ordering::Relaxed);
    if class < 2 && n < 3 && TRACE.load(Ordering::Relaxed) {
        trace(class);
    }
}

/// `ALLOC_TRACE=1`: print where the first allocations of each voxd class happen.
static TRACE: AtomicBool = AtomicBool::new(false);

fn trace(class: u8) {
    if BUSY.with(|b| b.replace(true)) {
        return;
    }
    eprintln!(
        "allocation on class {class}:\n{}",
        std::backtrace::Backtrace::force_capture()
    );
    BUSY.with(|b| b.set(false));
}

// SAFETY: forwards every call unchanged to the system allocator; the extra work
// (an atomic add, a thread-local read) does not allocate except on the guarded
// first lookup of a thread's name.
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

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Counts {
    shard: u64,
    control: u64,
    loadgen: u64,
    frames: u64,
}

/// Run `calls` calls for `warm + window` seconds; count allocations in the window.
fn run(provider: &str, transport: &str, calls: usize, warm: f64, window: f64) -> Counts {
    let yaml = format!(
        "default_provider: {provider}
audiosocket: {{host: 127.0.0.1, format: slin16}}
external_media: {{rtp_host: 127.0.0.1, codec: ulaw, idle_timeout_ms: 2000}}
engine: {{shards: 2, io_backend: auto}}
providers: {{sim: {{think_ms: 200, reply_ms: 1200}}}}
logging: {{level: warn}}
"
    );
    let mut cfg = voxd::config::parse_str(&yaml).expect("test config").config;
    cfg.audiosocket.port = 0;
    cfg.external_media.rtp_port = 0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("voxd-control")
        .enable_all()
        .build()
        .unwrap();
    let reg = Arc::new(Registry::from_config(&cfg).expect("registry"));
    let engine = rt.block_on(async { Engine::start(&cfg, reg).expect("engine starts") });
    let (transport, target) = match transport {
        "rtp" => (Transport::Rtp(Law::Ulaw), engine.rtp_addr),
        _ => (
            Transport::AudioSocket(voxd::media::Rate::Hz16000),
            engine.audiosocket_addr,
        ),
    };
    let rate = 400.0;
    let dcfg = DriverConfig {
        transport,
        target,
        calls,
        rate,
        seconds: warm + window + 1.0,
        hold_ms: None,
        seed: 7,
        think_ms: 200,
        threads: 1,
        wav: None,
        signal: SignalConfig {
            // Talk early and often so every call has had replies and barge-ins
            // before the window opens.
            initial_pause_ms: Some(200),
            talk_ms: (600, 1_200),
            pause_ms: (1_500, 2_500),
            ..SignalConfig::default()
        },
        pid: None,
        progress: false,
        tick_ms: 1,
    };
    let lg = std::thread::spawn(move || driver::run(&dcfg));
    std::thread::sleep(Duration::from_secs_f64(calls as f64 / rate + warm));
    for a in &ALLOCS {
        a.store(0, Ordering::Relaxed);
    }
    TRACE.store(std::env::var_os("ALLOC_TRACE").is_some(), Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(window));
    COUNTING.store(false, Ordering::Relaxed);
    let counts = Counts {
        shard: ALLOCS[0].load(Ordering::Relaxed),
        control: ALLOCS[1].load(Ordering::Relaxed),
        loadgen: ALLOCS[2].load(Ordering::Relaxed),
        // Both directions, 50 frames per second each.
        frames: (calls as f64 * window * 100.0) as u64,
    };
    let out = lg.join().expect("loadgen thread").expect("loadgen run");
    rt.block_on(engine.stop());
    assert_eq!(out.counters.call_errors, 0, "loadgen saw call errors");
    assert!(out.counters.frames_in > 0, "no audio came back");
    eprintln!(
        "{provider}/{}: window {window} s, ~{} frames: allocations shard {} control {} loadgen {}",
        out.transport, counts.frames, counts.shard, counts.control, counts.loadgen
    );
    counts
}

#[test]
fn steady_state_allocates_nothing_per_frame() {
    let cases = [
        ("echo", "audiosocket"),
        ("echo", "rtp"),
        ("sim", "audiosocket"),
        ("sim", "rtp"),
    ];
    let counts: Vec<Counts> = cases.iter().map(|(p, t)| run(p, t, 40, 4.0, 3.0)).collect();
    for ((provider, transport), c) in cases.iter().zip(counts) {
        // The media path itself: not one allocation on a shard in the window.
        assert_eq!(
            c.shard, 0,
            "{provider}/{transport}: shard threads allocated"
        );
        // The control side moves every caller frame to its session and every agent
        // chunk to the shard: one allocation per frame would be ~12,000 here. Echo
        // has no per-turn work at all; a handful is tokio's channel blocks, which
        // are recycled but may occasionally be replaced.
        let per_frame_bound = match *provider {
            "echo" => 4,
            // The sim agent allocates per turn (a transcript line, a reply), like a
            // network provider's JSON events: ~40 turns in the window, a few each.
            _ => c.frames / 20,
        };
        assert!(
            c.control <= per_frame_bound,
            "{provider}/{transport}: control runtime made {} allocations over {} frames (bound {per_frame_bound})",
            c.control,
            c.frames
        );
    }
}
