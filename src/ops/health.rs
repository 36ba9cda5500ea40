//! The health HTTP server on `health.host:port` (default 127.0.0.1:15000), with the
//! reference engine's endpoints: `GET /live` ("ok" while the process serves
//! HTTP), `GET /ready` (200 or 503 with `{ari_connected, transport_ok, provider_ok,
//! draining, ready}`), `GET /health` (a JSON summary) and `GET /metrics`
//! (Prometheus text).
//!
//! Owns: the axum server task on the control runtime, the draining flag, and how
//! readiness is decided: listeners up, at least one provider able to serve calls,
//! ARI connected when ARI is on, and not draining.
//!
//! Must not: block (every handler reads atomics and watches), expose per-call data
//! or secrets, or keep the process alive after [`HealthServer::stop`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::sync::watch;

use super::metrics::Exposition;
use crate::ari::flow::FlowStats;
use crate::call::{BARGE_IN_BUCKETS_MS, FIRST_FRAME_BUCKETS_MS, TURN_BUCKETS_MS};
use crate::engine::bridge::EndReason;
use crate::engine::control::{ControlStats, DURATION_BUCKETS_MS};
use crate::engine::published::{Published, ShardSnapshot, DEPTH_BUCKETS_MS, JITTER_BUCKETS_MS};
use crate::loadgen::procstat::{clock_ticks_per_second, ProcSample};
use crate::provider::net::{connect_times, CONNECT_BUCKETS_MS, TIMED_PROVIDERS};

/// The ARI side, when ARI is on.
#[derive(Debug, Clone)]
pub struct AriView {
    /// `true` while the events WebSocket is connected.
    pub connected: watch::Receiver<bool>,
    /// The call flow's counters.
    pub stats: Arc<FlowStats>,
}

/// A provider as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderStatus {
    /// Name (`sim`, `openai_realtime`, ...).
    pub name: String,
    /// Whether it can take calls.
    pub ready: bool,
    /// Why not, or a short description.
    pub reason: String,
}

/// What the endpoints report, gathered at start-up.
#[derive(Debug, Clone)]
pub struct HealthInputs {
    /// voxd's version.
    pub version: &'static str,
    /// The I/O backend in use (`epoll`, `io_uring`).
    pub io_backend: &'static str,
    /// Shard threads.
    pub shards: usize,
    /// The AudioSocket listener.
    pub audiosocket: SocketAddr,
    /// The RTP socket.
    pub rtp: SocketAddr,
    /// The control side's counters.
    pub control: Arc<ControlStats>,
    /// ARI, when on.
    pub ari: Option<AriView>,
    /// The providers of this build and configuration.
    pub providers: Vec<ProviderStatus>,
    /// The shards' published counters.
    pub published: Arc<Published>,
    /// The providers of new calls (a reload swaps them), for their gauges.
    pub live: Option<crate::engine::control::LiveHandle>,
    /// `HEALTH_API_TOKEN`: with it, `/sessions` and `/reload` need
    /// `Authorization: Bearer <token>`; without it they answer loopback peers only.
    pub token: Option<String>,
    /// `logging.pii`: show peer addresses in `/sessions`.
    pub pii: bool,
    /// The audit log's counters, when `logging.audit_path` is set.
    pub audit: Option<Arc<crate::ops::audit::AuditStats>>,
    /// Where `POST /reload` sends its request (the process's reload loop answers
    /// with the outcome); `None`: reload not offered.
    pub reload: Option<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<serde_json::Value>>>,
}

struct Shared {
    inputs: HealthInputs,
    started: Instant,
    draining: AtomicBool,
}

/// The running health server.
pub struct HealthServer {
    /// Where it listens (the real port when 0 was asked for).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthServer {
    /// Bind `listen` and serve on the current runtime. Fails when the address cannot
    /// be bound (in use, not local).
    pub async fn start(listen: SocketAddr, inputs: HealthInputs) -> std::io::Result<HealthServer> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            inputs,
            started: Instant::now(),
            draining: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/live", get(live))
            .route("/ready", get(ready))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/sessions", get(sessions))
            .route("/reload", axum::routing::post(reload))
            .with_state(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let r = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "health server failed");
            }
        });
        Ok(HealthServer {
            addr,
            shared,
            stop: Some(tx),
            task,
        })
    }

    /// From now on `/ready` answers 503 (`draining: true`): shutting down.
    pub fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }

    /// Stop serving and wait for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// The readiness facts.
struct Readiness {
    ari_enabled: bool,
    ari_connected: bool,
    transport_ok: bool,
    provider_ok: bool,
    draining: bool,
}

impl Readiness {
    fn of(s: &Shared) -> Readiness {
        let i = &s.inputs;
        let ari_connected = i.ari.as_ref().is_some_and(|a| *a.connected.borrow());
        Readiness {
            ari_enabled: i.ari.is_some(),
            ari_connected,
            // The listeners are bound before the server starts and live as long as
            // the engine; a stopped engine stops this server first.
            transport_ok: true,
            provider_ok: i.providers.iter().any(|p| p.ready),
            draining: s.draining.load(Ordering::Relaxed),
        }
    }

    fn ready(&self) -> bool {
        self.transport_ok
            && self.provider_ok
            && !self.draining
            && (!self.ari_enabled || self.ari_connected)
    }
}

fn active_calls(c: &ControlStats) -> u64 {
    c.sessions_started
        .load(Ordering::Relaxed)
        .saturating_sub(c.sessions_ended.load(Ordering::Relaxed))
}

/// `None` when the admin request may proceed, else the refusal.
fn admin_refusal(
    s: &Shared,
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
) -> Option<Response> {
    match &s.inputs.token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let ok = given.is_some_and(|g| {
                g.len() == token.len()
                    && g.bytes().zip(token.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
            });
            (!ok).then(|| {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "needs Authorization: Bearer <HEALTH_API_TOKEN>"})),
                )
                    .into_response()
            })
        }
        None => (!peer.ip().is_loopback()).then(|| {
            (
                StatusCode::FORBIDDEN,
                axum::Json(json!({"error": "admin endpoints answer loopback only; set HEALTH_API_TOKEN to allow others"})),
            )
                .into_response()
        }),
    }
}

async fn sessions(
    State(s): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(r) = admin_refusal(&s, peer, &headers) {
        return r;
    }
    let list: Vec<serde_json::Value> = s
        .inputs
        .control
        .sessions
        .lock()
        .map(|m| {
            let mut v: Vec<_> = m
                .iter()
                .map(|(k, i)| {
                    json!({
                        "call": k.to_string(),
                        "provider": i.provider,
                        "agent": i.agent,
                        "transport": i.transport,
                        "caller_channel": i.caller_channel,
                        "remote": if s.inputs.pii { i.remote.to_string() } else { "[redacted]".to_string() },
                        "duration_seconds": i.started.elapsed().as_secs(),
                    })
                })
                .collect();
            v.sort_by(|a, b| a["call"].as_str().cmp(&b["call"].as_str()));
            v
        })
        .unwrap_or_default();
    axum::Json(json!({"count": list.len(), "sessions": list})).into_response()
}

async fn reload(
    State(s): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(r) = admin_refusal(&s, peer, &headers) {
        return r;
    }
    let Some(tx) = &s.inputs.reload else {
        return (
            StatusCode::NOT_IMPLEMENTED,
            axum::Json(json!({"error": "this process does not reload"})),
        )
            .into_response();
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if tx.send(reply).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "shutting down"})),
        )
            .into_response();
    }
    match answer.await {
        Ok(outcome) => {
            let code = if outcome["ok"] == true {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            (code, axum::Json(outcome)).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "reload did not answer"})),
        )
            .into_response(),
    }
}

async fn live() -> &'static str {
    "ok"
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    let r = Readiness::of(&s);
    let body = json!({
        "ari_connected": r.ari_connected,
        "ari_enabled": r.ari_enabled,
        "transport_ok": r.transport_ok,
        "provider_ok": r.provider_ok,
        "draining": r.draining,
        "ready": r.ready(),
    });
    let code = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    let r = Readiness::of(&s);
    let i = &s.inputs;
    let providers: serde_json::Map<String, serde_json::Value> = i
        .providers
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                json!({"ready": p.ready, "reason": p.reason}),
            )
        })
        .collect();
    let ari = i.ari.as_ref().map(|a| {
        let st = &a.stats;
        json!({
            "connected": *a.connected.borrow(),
            "asterisk_version": st.asterisk_version.lock().map(|v| v.clone()).unwrap_or(None),
            "callers": st.callers.load(Ordering::Relaxed),
            "setup_failures": st.setup_failures.load(Ordering::Relaxed),
        })
    });
    let active = active_calls(&i.control);
    let lat = Latencies::gather(i);
    let shards: Vec<serde_json::Value> = i
        .published
        .shards()
        .iter()
        .enumerate()
        .map(|(n, s)| {
            json!({
                "shard": n,
                "calls": s.active_calls,
                "busy_ratio": (s.busy_ratio * 1000.0).round() / 1000.0,
                "latency": lat.per_shard.get(n).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let body = json!({
        "status": if r.ready() { "healthy" } else { "degraded" },
        "version": i.version,
        "io_backend": i.io_backend,
        "shards": i.shards,
        "shard_load": shards,
        "active_calls": active,
        "uptime_seconds": s.started.elapsed().as_secs(),
        "draining": r.draining,
        "audiosocket": {"listening": true, "address": i.audiosocket.to_string(), "active_connections": active},
        "external_media": {"listening": true, "address": i.rtp.to_string()},
        "ari": ari,
        "providers": providers,
        "latency": lat.total,
    });
    axum::Json(body).into_response()
}

/// Percentiles of every latency stage, per shard and over all shards, from the
/// shards' hdrhistograms.
struct Latencies {
    per_shard: Vec<serde_json::Value>,
    total: serde_json::Value,
    /// All shards' "caller frame -> provider write" samples.
    caller_to_provider: hdrhistogram::Histogram<u64>,
}

impl Latencies {
    fn gather(i: &HealthInputs) -> Latencies {
        use crate::ops::latency::empty;
        let shard_lat = i.published.latency();
        let mut total = crate::engine::published::ShardLatency::default();
        let mut c2p_total = empty();
        let mut per_shard = Vec::with_capacity(shard_lat.len());
        for (n, l) in shard_lat.iter().enumerate() {
            total.add(l);
            let mut c2p = empty();
            if let Some(st) = i.control.caller_to_provider.get(n) {
                st.merge_into(&mut c2p);
            }
            let _ = c2p_total.add(&c2p);
            per_shard.push(Self::json(&c2p, l));
        }
        let json_total = Self::json(&c2p_total, &total);
        Latencies {
            per_shard,
            total: json_total,
            caller_to_provider: c2p_total,
        }
    }

    fn json(
        c2p: &hdrhistogram::Histogram<u64>,
        l: &crate::engine::published::ShardLatency,
    ) -> serde_json::Value {
        use crate::ops::latency::Summary;
        json!({
            "caller_to_provider": Summary::of(c2p).to_json(),
            "stream_first_frame": Summary::of(&l.first_frame).to_json(),
            "turn_response": Summary::of(&l.turn_response).to_json(),
            "barge_in_reaction": Summary::of(&l.barge_in_reaction).to_json(),
        })
    }
}

/// Upper bounds (s) of the "caller frame -> provider write" buckets.
const CALLER_TO_PROVIDER_BOUNDS_S: [f64; 10] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
];

/// Seconds from a ms count.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn ms_bounds(b: &[u64]) -> Vec<f64> {
    b.iter().map(|&x| secs(x)).collect()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let i = &s.inputs;
    let c = &i.control;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let shards = i.published.shards();
    let mut t = ShardSnapshot::default();
    for sh in &shards {
        t.add(sh);
    }
    let st = &t.stats;
    let mut e = Exposition::new();
    e.gauge(
        "voxd_up",
        "1 while voxd serves.",
        &[(&[("version", i.version), ("io_backend", i.io_backend)], 1.0)],
    );
    e.gauge(
        "voxd_uptime_seconds",
        "Seconds since start.",
        &[(&[], s.started.elapsed().as_secs_f64())],
    );
    let r = Readiness::of(&s);
    e.gauge(
        "voxd_ready",
        "1 when /ready answers 200.",
        &[(&[], if r.ready() { 1.0 } else { 0.0 })],
    );
    e.gauge(
        "voxd_draining",
        "1 while voxd drains (SIGTERM: no new calls).",
        &[(&[], if r.draining { 1.0 } else { 0.0 })],
    );
    e.gauge(
        "ai_agent_active_calls",
        "Calls with an agent session now.",
        &[(&[], active_calls(c) as f64)],
    );
    let reasons: Vec<(Vec<(&str, &str)>, u64)> = EndReason::ALL
        .iter()
        .enumerate()
        .map(|(n, r)| (vec![("reason", r.as_str())], load(&c.ends_by_reason[n])))
        .collect();
    e.counter("ai_agent_calls_total", "Calls ended, by reason.", &reasons);
    let d = *c.call_duration.lock().unwrap_or_else(|p| p.into_inner());
    e.histogram(
        "ai_agent_call_duration_seconds",
        "Call length.",
        &ms_bounds(&DURATION_BUCKETS_MS),
        &d.buckets,
        secs(d.sum_ms),
    );
    e.histogram(
        "ai_agent_turn_response_seconds",
        "Caller's last loud frame to the first frame of the agent's answer on the wire.",
        &ms_bounds(&TURN_BUCKETS_MS),
        &st.turn_response.buckets,
        secs(st.turn_response.sum_ms),
    );
    e.histogram(
        "ai_agent_barge_in_reaction_seconds",
        "Barge-in (provider speech_started or local detection) to silence on the wire.",
        &ms_bounds(&BARGE_IN_BUCKETS_MS),
        &st.barge_in_reaction.buckets,
        secs(st.barge_in_reaction.sum_ms),
    );
    e.histogram(
        "ai_agent_stream_first_frame_seconds",
        "Provider audio of a new utterance received by the shard to its first frame on the wire (includes streaming.min_start_ms).",
        &ms_bounds(&FIRST_FRAME_BUCKETS_MS),
        &st.first_frame.buckets,
        secs(st.first_frame.sum_ms),
    );
    {
        let lat = Latencies::gather(i);
        let (counts, sum) =
            crate::ops::latency::buckets(&lat.caller_to_provider, &CALLER_TO_PROVIDER_BOUNDS_S);
        e.histogram(
            "voxd_caller_to_provider_seconds",
            "Caller frame received by a shard to the bytes written to the provider's socket (per write, its oldest frame; in-process agents: taken by the agent).",
            &CALLER_TO_PROVIDER_BOUNDS_S,
            &counts,
            sum,
        );
    }
    e.histogram(
        "voxd_playout_depth_seconds",
        "Agent audio queued per live call, sampled 4 times a second.",
        &ms_bounds(&DEPTH_BUCKETS_MS),
        &t.playout_depth.buckets,
        secs(t.playout_depth.sum_ms),
    );
    e.counter(
        "ai_agent_barge_in_events_total",
        "Barge-ins (local and provider-driven).",
        &[(&[], load(&c.barge_ins))],
    );
    e.counter(
        "ai_agent_stream_frames_sent_total",
        "20 ms frames sent to callers (audio and silence).",
        &[(&[], st.frames_to_caller)],
    );
    e.counter(
        "ai_agent_stream_underflow_events_total",
        "Times the agent's audio ran dry mid-utterance.",
        &[(&[], st.underflows)],
    );
    e.gauge(
        "ai_agent_audiosocket_active_connections",
        "AudioSocket connections up.",
        &[(&[], t.audiosocket_connections as f64)],
    );
    e.counter(
        "ai_agent_audiosocket_rx_bytes_total",
        "AudioSocket bytes read.",
        &[(&[], st.as_rx_bytes)],
    );
    e.counter(
        "ai_agent_audiosocket_tx_bytes_total",
        "AudioSocket bytes written.",
        &[(&[], st.as_tx_bytes)],
    );
    e.counter(
        "voxd_rtp_packets_total",
        "RTP datagrams received and sent.",
        &[
            (&[("direction", "in")], st.rtp_in),
            (&[("direction", "out")], st.rtp_out),
        ],
    );
    e.counter(
        "voxd_rtp_lost_packets_total",
        "RTP packets never received (sequence gaps).",
        &[(&[], st.rtp_lost)],
    );
    e.counter(
        "voxd_rtp_late_packets_total",
        "RTP packets that arrived after their playout slot.",
        &[(&[], st.rtp_late)],
    );
    e.counter(
        "voxd_rtp_reordered_packets_total",
        "RTP packets that arrived out of order.",
        &[(&[], st.rtp_reordered)],
    );
    e.counter(
        "voxd_rtp_dropped_packets_total",
        "RTP datagrams dropped (bad, wrong payload type, not allowed).",
        &[(&[], st.rtp_dropped)],
    );
    e.histogram(
        "voxd_rtp_jitter_seconds",
        "RFC 3550 interarrival jitter of live RTP calls, sampled 4 times a second.",
        &ms_bounds(&JITTER_BUCKETS_MS),
        &t.rtp_jitter.buckets,
        secs(t.rtp_jitter.sum_ms),
    );
    e.counter(
        "voxd_ring_drops_total",
        "Caller audio dropped because a shard-to-control ring was full.",
        &[(&[], st.bridge_dropped)],
    );
    e.counter(
        "voxd_refused_calls_total",
        "Calls refused by a shard (max_calls, allowlist, draining).",
        &[(&[], st.refused)],
    );
    e.counter(
        "voxd_protocol_errors_total",
        "Calls ended because the peer broke the protocol.",
        &[(&[], st.protocol_errors)],
    );
    e.counter(
        "voxd_audiosocket_read_timeouts_total",
        "AudioSocket connections closed by the read deadline (no complete frame for audiosocket.read_timeout_ms).",
        &[(&[], st.read_timeouts)],
    );
    e.counter(
        "voxd_audiosocket_ignored_frames_total",
        "AudioSocket frames of an unknown kind (or peer error frames), ignored.",
        &[(&[], st.as_ignored_frames)],
    );
    e.counter(
        "voxd_rtp_rate_limited_packets_total",
        "RTP packets over a call's rate cap (external_media.max_packets_per_second), dropped.",
        &[(&[], st.rtp_rate_limited)],
    );
    let idx: Vec<String> = (0..shards.len()).map(|n| n.to_string()).collect();
    let calls: Vec<(Vec<(&str, &str)>, f64)> = shards
        .iter()
        .zip(&idx)
        .map(|(sh, n)| (vec![("shard", n.as_str())], sh.active_calls as f64))
        .collect();
    let busy: Vec<(Vec<(&str, &str)>, f64)> = shards
        .iter()
        .zip(&idx)
        .map(|(sh, n)| (vec![("shard", n.as_str())], sh.busy_ratio))
        .collect();
    e.gauge("voxd_shard_calls", "Calls on each shard.", &calls);
    e.gauge(
        "voxd_shard_busy_ratio",
        "Share of the last quarter second each shard loop spent working.",
        &busy,
    );
    let errs: Vec<((&str, &str), u64)> = c
        .provider_errors
        .lock()
        .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
        .unwrap_or_default();
    let err_labels: Vec<(Vec<(&str, &str)>, u64)> = errs
        .iter()
        .map(|((p, k), v)| (vec![("provider", *p), ("class", *k)], *v))
        .collect();
    e.counter(
        "voxd_provider_errors_total",
        "Provider errors by provider and kind.",
        &err_labels,
    );
    if let Some(live) = &i.live {
        let g = live.get().registry.gauges();
        let labels: Vec<(Vec<(&str, &str)>, f64)> = g
            .iter()
            .map(|(p, n, v)| (vec![("provider", *p), ("name", *n)], *v))
            .collect();
        e.gauge(
            "voxd_provider_gauge",
            "Provider-wide gauges (OpenAI rate_limits.updated: requests / tokens remaining and limit).",
            &labels,
        );
    }
    e.counter(
        "voxd_provider_reconnects_total",
        "Fast reconnects after a provider failure.",
        &[(&[], load(&c.provider_reconnects))],
    );
    e.counter(
        "voxd_provider_failures_total",
        "Provider sessions that failed mid-call.",
        &[(&[], load(&c.provider_failures))],
    );
    e.counter(
        "voxd_sessions_failed_total",
        "Calls that found no provider.",
        &[(&[], load(&c.sessions_failed))],
    );
    e.counter(
        "voxd_caller_audio_dropped_total",
        "Caller audio chunks dropped because a provider session did not keep up.",
        &[(&[], load(&c.caller_audio_dropped))],
    );
    e.counter(
        "voxd_media_refused_total",
        "Media sessions refused because voxd did not originate them.",
        &[(&[], load(&c.media_refused))],
    );
    // Connect times of the providers this configuration uses, one family.
    let mut conn_counts = [0u64; 8];
    let mut conn_sum = 0.0;
    for name in TIMED_PROVIDERS {
        if i.providers.iter().any(|p| p.name == name) {
            if let Some((counts, sum)) = connect_times(name) {
                for (a, b) in conn_counts.iter_mut().zip(counts) {
                    *a += b;
                }
                conn_sum += sum;
            }
        }
    }
    e.histogram(
        "voxd_provider_connect_seconds",
        "TCP + TLS + WebSocket handshake time of provider sessions.",
        &ms_bounds(&CONNECT_BUCKETS_MS),
        &conn_counts,
        conn_sum,
    );
    if let Some(a) = &i.ari {
        e.gauge(
            "voxd_ari_connected",
            "1 while the ARI events WebSocket is connected.",
            &[(&[], if *a.connected.borrow() { 1.0 } else { 0.0 })],
        );
        e.counter(
            "voxd_ari_reconnects_total",
            "Times the ARI events WebSocket came back after a loss.",
            &[(&[], load(&a.stats.reconnects))],
        );
        e.counter(
            "voxd_ari_callers_total",
            "Callers that entered the Stasis app.",
            &[(&[], load(&a.stats.callers))],
        );
        e.counter(
            "voxd_ari_setup_failures_total",
            "Calls whose set-up failed.",
            &[(&[], load(&a.stats.setup_failures))],
        );
        e.gauge(
            "voxd_ari_calls",
            "Callers the ARI call flow holds now (entered Stasis, not yet torn down).",
            &[(
                &[],
                load(&a.stats.callers).saturating_sub(load(&a.stats.torn_down)) as f64,
            )],
        );
        e.counter(
            "voxd_ari_refused_callers_total",
            "Callers sent back to the dialplan with VOXD_REFUSED set, by reason.",
            &[
                (&[("reason", "max_calls")], load(&a.stats.refused_max_calls)),
                (&[("reason", "draining")], load(&a.stats.refused_draining)),
            ],
        );
        e.counter(
            "voxd_ari_bad_events_total",
            "ARI event frames that could not be parsed (skipped).",
            &[(&[], load(&a.stats.bad_events))],
        );
    }
    if let Some(a) = &i.audit {
        e.counter(
            "voxd_audit_records_written_total",
            "Records written to the audit log (logging.audit_path).",
            &[(&[], load(&a.written))],
        );
        e.counter(
            "voxd_audit_records_dropped_total",
            "Audit records dropped because the audit writer's queue was full.",
            &[(&[], load(&a.dropped))],
        );
        e.counter(
            "voxd_audit_write_errors_total",
            "Audit records lost because the write failed (disk full, file gone).",
            &[(&[], load(&a.failed))],
        );
    }
    e.gauge(
        "voxd_tokio_alive_tasks",
        "Tasks alive on the control runtime (provider sessions, ARI, HTTP connections).",
        &[(
            &[],
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as f64,
        )],
    );
    if let Ok(p) = ProcSample::read_self() {
        e.counter_f64(
            "process_cpu_seconds_total",
            "User and system CPU time.",
            p.cpu_ticks() as f64 / clock_ticks_per_second().max(1) as f64,
        );
        e.gauge(
            "process_resident_memory_bytes",
            "Resident memory.",
            &[(&[], p.rss_bytes as f64)],
        );
        e.gauge(
            "process_open_fds",
            "Open file descriptors.",
            &[(&[], p.fds as f64)],
        );
        e.gauge("process_threads", "Threads.", &[(&[], p.threads as f64)]);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        e.finish(),
    )
        .into_response()
}
