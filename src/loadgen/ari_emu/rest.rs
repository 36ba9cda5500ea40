//! The REST half of the ARI emulator: the gate every request passes (auth, restart
//! window, delay fault, request log) and the handlers of the ARI resources the
//! AI-agent call flow uses, with Asterisk's paths, status codes and error messages.
//!
//! Owns: parameter parsing (query string, plus a JSON body whose top-level fields
//! count as parameters and whose `variables` object sets channel variables, as ARI
//! accepts), dial-string parsing of `AudioSocket/host:port/<uuid>/c(fmt)` and
//! `UnicastRTP/host:port/c(fmt)`, leg creation through the media driver, and the
//! mapping of each outcome to a status and a `{"message": ..}` body.
//!
//! Must not: panic on any request (bad input is a 4xx with a JSON message), hold the
//! state lock across an await, or answer an originate before the leg's media is up
//! (Asterisk's AudioSocket channel connects during the channel request).

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use super::media::{LegFormat, LegLink, LegShared, LegTransport, MediaCounters, MediaLeg};
use super::state::{
    ari_timestamp, reason_cause, Bridge, ChanState, Channel, Phase, Playback, Role,
};
use super::{Inner, RequestRecord};
use crate::media::audiosocket::{format_uuid, parse_uuid};

/// A JSON response with `status`.
pub(crate) fn json_response(status: u16, v: Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(v)).into_response()
}

/// An ARI error: `status` with `{"message": msg}`.
pub(crate) fn error(status: u16, msg: &str) -> Response {
    json_response(status, json!({ "message": msg }))
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn query_pairs(uri: &Uri) -> Option<Vec<(String, String)>> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .ok()
        .map(|q| q.0)
}

/// The middleware in front of every route: 503 while "restarting", 401 without
/// valid credentials (basic auth or `api_key=user:pass`), the REST delay fault, and
/// one [`RequestRecord`] per request.
pub(crate) async fn gate(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let at = SystemTime::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let pairs = query_pairs(req.uri()).unwrap_or_default();
    let api_key = pairs
        .iter()
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v.clone());
    let query: BTreeMap<String, String> = pairs
        .into_iter()
        .map(|(k, v)| {
            if k == "api_key" {
                (k, "***".to_string())
            } else {
                (k, v)
            }
        })
        .collect();

    let resp = if inner.is_down() {
        let mut r = error(503, "Asterisk is restarting");
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    } else if !authorized(&inner, req.headers(), api_key.as_deref()) {
        let mut r = error(401, "Authentication required");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Asterisk REST Interface\""),
        );
        r
    } else {
        for caller in inner.faults.take_hangups(&method, &path) {
            let _ = inner.hangup_caller(&caller);
        }
        if path != "/ari/events" {
            let d = inner.faults.rest_delay();
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
        }
        next.run(req).await
    };
    let status = resp.status().as_u16();
    inner.record(RequestRecord {
        method,
        path,
        query,
        status,
        at,
        since_start: started.duration_since(inner.started),
        elapsed: started.elapsed(),
    });
    resp
}

fn authorized(inner: &Inner, headers: &HeaderMap, api_key: Option<&str>) -> bool {
    let want = format!("{}:{}", inner.cfg.username, inner.cfg.password);
    if api_key == Some(want.as_str()) {
        return true;
    }
    let Some(h) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = h
        .strip_prefix("Basic ")
        .or_else(|| h.strip_prefix("basic "))
    else {
        return false;
    };
    match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
        Ok(raw) => raw == want.as_bytes(),
        Err(_) => false,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Request parameters: query string, then JSON body fields that the query did not
/// set; `variables` from the body.
struct Params {
    map: HashMap<String, String>,
    vars: BTreeMap<String, String>,
}

impl Params {
    /// A non-empty parameter.
    fn get(&self, k: &str) -> Option<&str> {
        self.map
            .get(k)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

fn json_scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// An error status and message, turned into a response by [`error`].
type Refusal = (u16, &'static str);

fn parse_params(uri: &Uri, body: &Bytes) -> Result<Params, Refusal> {
    let pairs = query_pairs(uri).ok_or((400, "Invalid query string"))?;
    let mut map: HashMap<String, String> = pairs.into_iter().collect();
    let mut vars = BTreeMap::new();
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace());
    if let Some(start) = trimmed {
        if body[start] == b'{' {
            let v: Value =
                serde_json::from_slice(body).map_err(|_| (400, "Malformed JSON body"))?;
            if let Value::Object(m) = v {
                for (k, v) in m {
                    if k == "variables" {
                        if let Value::Object(vm) = &v {
                            for (vk, vv) in vm {
                                vars.insert(vk.clone(), json_scalar(vv));
                            }
                        }
                    } else {
                        map.entry(k).or_insert_with(|| json_scalar(&v));
                    }
                }
            }
        }
    }
    Ok(Params { map, vars })
}

/// The fallback handler: every `/ari/...` REST route.
pub(crate) async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let params = match parse_params(&uri, &body) {
        Ok(p) => p,
        Err((s, m)) => return error(s, m),
    };
    let Some(rest) = uri.path().strip_prefix("/ari/") else {
        return error(404, "Resource not found");
    };
    let segs: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = &method;
    match segs.as_slice() {
        ["asterisk", "info"] if m == Method::GET => asterisk_info(&inner, &params),
        ["channels"] if m == Method::GET => list_channels(&inner),
        ["channels"] if m == Method::POST => originate(&inner, &params, None).await,
        ["channels", "externalMedia"] if m == Method::POST => external_media(&inner, &params).await,
        ["channels", id] if m == Method::POST => originate(&inner, &params, Some(id)).await,
        ["channels", id] if m == Method::GET => get_channel(&inner, id),
        ["channels", id] if m == Method::DELETE => hangup(&inner, &params, id),
        ["channels", id, "answer"] if m == Method::POST => answer(&inner, id),
        ["channels", id, "variable"] if m == Method::GET => get_var(&inner, &params, id),
        ["channels", id, "variable"] if m == Method::POST => set_var(&inner, &params, id),
        ["channels", id, "play"] if m == Method::POST => play(&inner, &params, id, None),
        ["channels", id, "play", pid] if m == Method::POST => play(&inner, &params, id, Some(pid)),
        ["channels", id, "redirect"] if m == Method::POST => redirect(&inner, &params, id),
        ["channels", id, "continue"] if m == Method::POST => continue_dialplan(&inner, id),
        ["channels", id, "dtmf"] if m == Method::POST => send_dtmf(&inner, &params, id),
        ["channels", id, "record"] if m == Method::POST => record(&inner, &params, id),
        ["bridges"] if m == Method::GET => list_bridges(&inner),
        ["bridges"] if m == Method::POST => create_bridge(&inner, &params, None),
        ["bridges", bid] if m == Method::POST => create_bridge(&inner, &params, Some(bid)),
        ["bridges", bid] if m == Method::GET => get_bridge(&inner, bid),
        ["bridges", bid] if m == Method::DELETE => destroy_bridge(&inner, bid),
        ["bridges", bid, "addChannel"] if m == Method::POST => add_channel(&inner, &params, bid),
        ["bridges", bid, "removeChannel"] if m == Method::POST => {
            remove_channel(&inner, &params, bid)
        }
        ["bridges", bid, "play"] if m == Method::POST => play_bridge(&inner, &params, bid, None),
        ["bridges", bid, "play", pid] if m == Method::POST => {
            play_bridge(&inner, &params, bid, Some(pid))
        }
        ["playbacks", pid] if m == Method::GET => get_playback(&inner, pid),
        ["playbacks", pid] if m == Method::DELETE => stop_playback(&inner, pid),
        ["applications"] if m == Method::GET => list_apps(&inner),
        _ => error(404, "Resource not found"),
    }
}

fn asterisk_info(inner: &Inner, params: &Params) -> Response {
    let st = inner.lock();
    let mut v = json!({
        "build": {
            "os": "Linux",
            "kernel": "6.8.0-emulated",
            "machine": "x86_64",
            "options": "BUILD_NATIVE, OPTIONAL_API",
            "date": "2026-01-01 00:00:00 UTC",
            "user": "voxd-ari-emu",
        },
        "system": {
            "version": inner.cfg.asterisk_version,
            "entity_id": st.asterisk_id,
        },
        "config": {
            "name": "",
            "default_language": "en",
            "setid": {"user": "", "group": ""},
        },
        "status": {
            "startup_time": st.startup_time,
            "last_reload_time": st.startup_time,
        },
    });
    if let (Some(only), Value::Object(m)) = (params.get("only"), &mut v) {
        let keep: Vec<&str> = only.split(',').map(str::trim).collect();
        m.retain(|k, _| keep.contains(&k.as_str()));
    }
    json_response(200, v)
}

fn list_channels(inner: &Inner) -> Response {
    let st = inner.lock();
    let mut chans: Vec<&Channel> = st.channels.values().collect();
    chans.sort_by(|a, b| a.creationtime.cmp(&b.creationtime).then(a.id.cmp(&b.id)));
    let list: Vec<Value> = chans.into_iter().map(|c| st.channel_json(c)).collect();
    json_response(200, Value::Array(list))
}

fn get_channel(inner: &Inner, id: &str) -> Response {
    let st = inner.lock();
    match st.channels.get(id) {
        Some(ch) => json_response(200, st.channel_json(ch)),
        None => error(404, "Channel not found"),
    }
}

fn answer(inner: &Inner, id: &str) -> Response {
    let mut st = inner.lock();
    match st.channels.get(id).map(|c| c.phase) {
        None => error(404, "Channel not found"),
        Some(Phase::Pending) => error(409, "Channel not in Stasis application"),
        Some(Phase::In) => {
            st.set_up(id);
            no_content()
        }
    }
}

fn get_var(inner: &Inner, params: &Params, id: &str) -> Response {
    let Some(name) = params.get("variable") else {
        return error(400, "Variable name is required");
    };
    let st = inner.lock();
    let Some(ch) = st.channels.get(id) else {
        return error(404, "Channel or variable not found");
    };
    if let Some(v) = ch.vars.get(name) {
        return json_response(200, json!({ "value": v }));
    }
    // Dialplan functions Asterisk evaluates on a variable read (the reference
    // engine asks the caller's codec this way).
    let func = name.trim();
    let value = match func {
        "CHANNEL(audionativeformat)" | "CHANNEL(audioreadformat)" | "CHANNEL(audiowriteformat)" => {
            Some(channel_format(ch).to_string())
        }
        "CHANNEL(name)" => Some(ch.name.clone()),
        "CHANNEL(language)" => Some(ch.language.clone()),
        "CHANNEL(uniqueid)" => Some(ch.id.clone()),
        "CALLERID(num)" => Some(ch.caller.1.clone()),
        "CALLERID(name)" => Some(ch.caller.0.clone()),
        _ => None,
    };
    match value {
        Some(v) => json_response(200, json!({ "value": v })),
        None => error(404, "Provided variable was not found"),
    }
}

/// The audio format a channel runs at: callers are ulaw phones; media legs run
/// at the format in their dial string (`c(slin16)`, `c(slin)`) or ulaw.
fn channel_format(ch: &Channel) -> &'static str {
    match ch.role {
        Role::Leg { .. } if ch.name.contains("slin16") => "slin16",
        Role::Leg { .. } if ch.name.contains("slin") => "slin",
        _ => "ulaw",
    }
}

fn set_var(inner: &Inner, params: &Params, id: &str) -> Response {
    let Some(name) = params.get("variable") else {
        return error(400, "Variable name is required");
    };
    let value = params.map.get("value").cloned().unwrap_or_default();
    let mut st = inner.lock();
    match st.channels.get_mut(id) {
        Some(ch) => {
            ch.vars.insert(name.to_string(), value);
            no_content()
        }
        None => error(404, "Channel not found"),
    }
}

fn hangup(inner: &Inner, params: &Params, id: &str) -> Response {
    let cause = if let Some(code) = params.get("reason_code") {
        match code.parse::<u32>() {
            Ok(c) => c,
            Err(_) => return error(400, "Invalid reason for hangup provided"),
        }
    } else if let Some(reason) = params.get("reason") {
        match reason_cause(reason) {
            Some(c) => c,
            None => return error(400, "Invalid reason for hangup provided"),
        }
    } else {
        16
    };
    let mut st = inner.lock();
    if st.hangup(id, cause, Some(true)) {
        st.counters.rest_hangups += 1;
        no_content()
    } else {
        error(404, "Channel not found")
    }
}

fn continue_dialplan(inner: &Inner, id: &str) -> Response {
    let mut st = inner.lock();
    match st.channels.get(id).map(|c| c.phase) {
        None => error(404, "Channel not found"),
        Some(Phase::Pending) => error(409, "Channel not in Stasis application"),
        Some(Phase::In) => {
            st.leave_stasis(id);
            st.counters.continued += 1;
            no_content()
        }
    }
}

fn redirect(inner: &Inner, params: &Params, id: &str) -> Response {
    if params.get("endpoint").is_none() {
        return error(400, "Required parameter 'endpoint' not provided");
    }
    let mut st = inner.lock();
    match st.channels.get(id).map(|c| c.phase) {
        None => error(404, "Channel not found"),
        Some(Phase::Pending) => error(409, "Channel not in Stasis application"),
        Some(Phase::In) => {
            st.leave_stasis(id);
            st.counters.redirected += 1;
            no_content()
        }
    }
}

fn send_dtmf(inner: &Inner, params: &Params, id: &str) -> Response {
    if params.get("dtmf").is_none() {
        return error(400, "DTMF is required");
    }
    let st = inner.lock();
    match st.channels.get(id).map(|c| c.phase) {
        None => error(404, "Channel not found"),
        Some(Phase::Pending) => error(409, "Channel not in Stasis application"),
        Some(Phase::In) => no_content(),
    }
}

/// `POST /ari/channels/{id}/play[/{playbackId}]`.
fn play(inner: &Arc<Inner>, params: &Params, id: &str, pid: Option<&str>) -> Response {
    let Some(media) = params.get("media") else {
        return error(400, "Missing parameter media");
    };
    let st = inner.lock();
    let (app, lang) = match st.channels.get(id) {
        None => return error(404, "Channel not found"),
        Some(c) if c.phase != Phase::In => return error(409, "Channel not in Stasis application"),
        Some(c) => (c.app.clone(), c.language.clone()),
    };
    start_playback(
        inner,
        st,
        params,
        media,
        pid,
        format!("channel:{id}"),
        app,
        lang,
    )
}

/// `POST /ari/bridges/{id}/play[/{playbackId}]`: events go to the application of
/// the bridge's first member (or the default app of an empty bridge).
fn play_bridge(inner: &Arc<Inner>, params: &Params, bid: &str, pid: Option<&str>) -> Response {
    let Some(media) = params.get("media") else {
        return error(400, "Missing parameter media");
    };
    let st = inner.lock();
    let Some(b) = st.bridges.get(bid) else {
        return error(404, "Bridge not found");
    };
    let app = b
        .channels
        .iter()
        .find_map(|c| st.channels.get(c).map(|c| c.app.clone()))
        .unwrap_or_else(|| inner.cfg.app.clone());
    start_playback(
        inner,
        st,
        params,
        media,
        pid,
        format!("bridge:{bid}"),
        app,
        "en".into(),
    )
}

/// Registers a playback, answers 201 with its JSON (state `queued`), emits
/// PlaybackStarted now and PlaybackFinished after the configured duration.
#[allow(clippy::too_many_arguments)]
fn start_playback(
    inner: &Arc<Inner>,
    mut st: std::sync::MutexGuard<'_, super::state::State>,
    params: &Params,
    media: &str,
    pid: Option<&str>,
    target_uri: String,
    app: String,
    lang: String,
) -> Response {
    let pid = match pid.or(params.get("playbackId")) {
        Some(p) => p.to_string(),
        None => {
            let (n, _) = st.next_id();
            format!("playback-{n}")
        }
    };
    if st.playbacks.contains_key(&pid) {
        return error(409, "Playback with given id already exists");
    }
    let media_uris: Vec<&str> = media.split(',').collect();
    let mut pb = json!({
        "id": pid,
        "media_uri": media_uris[0],
        "target_uri": target_uri,
        "language": params.get("lang").unwrap_or(&lang),
        "state": "queued",
    });
    if media_uris.len() > 1 {
        pb["next_media_uri"] = Value::String(media_uris[1].to_string());
    }
    let response = json_response(201, pb.clone());
    pb["state"] = Value::String("playing".into());
    st.playbacks.insert(
        pid.clone(),
        Playback {
            json: pb.clone(),
            app: app.clone(),
        },
    );
    st.counters.playbacks += 1;
    st.emit(&app, json!({"type": "PlaybackStarted", "playback": pb}));
    drop(st);
    let inner = inner.clone();
    let dur = inner.cfg.playback_duration;
    tokio::spawn(async move {
        tokio::time::sleep(dur).await;
        finish_playback(&inner, &pid);
    });
    response
}

/// `POST /ari/channels/{id}/record`: answers 201 with a LiveRecording and emits
/// RecordingStarted (nothing is recorded).
fn record(inner: &Inner, params: &Params, id: &str) -> Response {
    let (Some(name), Some(format)) = (params.get("name"), params.get("format")) else {
        return error(400, "Missing parameter name or format");
    };
    let mut st = inner.lock();
    let app = match st.channels.get(id) {
        None => return error(404, "Channel not found"),
        Some(c) if c.phase != Phase::In => return error(409, "Channel not in Stasis application"),
        Some(c) => c.app.clone(),
    };
    let rec = json!({
        "name": name,
        "format": format,
        "target_uri": format!("channel:{id}"),
        "state": "queued",
    });
    let mut started = rec.clone();
    started["state"] = Value::String("recording".into());
    st.emit(
        &app,
        json!({"type": "RecordingStarted", "recording": started}),
    );
    json_response(201, rec)
}

fn finish_playback(inner: &Inner, pid: &str) -> bool {
    let mut st = inner.lock();
    let Some(mut pb) = st.playbacks.remove(pid) else {
        return false;
    };
    pb.json["state"] = Value::String("done".into());
    st.emit(
        &pb.app,
        json!({"type": "PlaybackFinished", "playback": pb.json}),
    );
    true
}

fn get_playback(inner: &Inner, pid: &str) -> Response {
    let st = inner.lock();
    match st.playbacks.get(pid) {
        Some(p) => json_response(200, p.json.clone()),
        None => error(404, "Playback not found"),
    }
}

fn stop_playback(inner: &Inner, pid: &str) -> Response {
    if finish_playback(inner, pid) {
        no_content()
    } else {
        error(404, "Playback not found")
    }
}

fn list_apps(inner: &Inner) -> Response {
    let st = inner.lock();
    let mut apps: Vec<&str> = st
        .subscribers
        .iter()
        .flat_map(|s| s.apps.iter().map(String::as_str))
        .collect();
    apps.sort_unstable();
    apps.dedup();
    let list: Vec<Value> = apps
        .into_iter()
        .map(|a| {
            let chans: Vec<String> = st
                .channels
                .values()
                .filter(|c| c.app == a)
                .map(|c| format!("channel:{}", c.id))
                .collect();
            json!({"name": a, "channel_ids": chans, "bridge_ids": [], "endpoint_ids": [], "device_names": [], "events_allowed": [], "events_disallowed": []})
        })
        .collect();
    json_response(200, Value::Array(list))
}

const BRIDGE_TYPES: [&str; 7] = [
    "mixing",
    "holding",
    "dtmf_events",
    "proxy_media",
    "video_sfu",
    "video_single",
    "sdp_label",
];

fn create_bridge(inner: &Inner, params: &Params, path_id: Option<&str>) -> Response {
    let bridge_type = params.get("type").unwrap_or("mixing").to_string();
    if bridge_type
        .split(',')
        .any(|t| !BRIDGE_TYPES.contains(&t.trim()))
    {
        return error(400, "Invalid bridge type");
    }
    let mut st = inner.lock();
    let id = match path_id.or(params.get("bridgeId")) {
        Some(id) => id.to_string(),
        None => {
            let (n, _) = st.next_id();
            format!("bridge-{n}")
        }
    };
    if st.bridges.contains_key(&id) {
        return error(409, "Bridge with this id already exists");
    }
    let b = Bridge {
        id: id.clone(),
        name: params.get("name").unwrap_or("").to_string(),
        bridge_type,
        creationtime: ari_timestamp(SystemTime::now()),
        channels: Vec::new(),
    };
    let v = st.bridge_json(&b);
    st.bridges.insert(id, b);
    st.counters.bridges_created += 1;
    json_response(200, v)
}

fn list_bridges(inner: &Inner) -> Response {
    let st = inner.lock();
    let mut list: Vec<&Bridge> = st.bridges.values().collect();
    list.sort_by(|a, b| a.creationtime.cmp(&b.creationtime).then(a.id.cmp(&b.id)));
    let v: Vec<Value> = list.into_iter().map(|b| st.bridge_json(b)).collect();
    json_response(200, Value::Array(v))
}

fn get_bridge(inner: &Inner, bid: &str) -> Response {
    let st = inner.lock();
    match st.bridges.get(bid) {
        Some(b) => json_response(200, st.bridge_json(b)),
        None => error(404, "Bridge not found"),
    }
}

fn destroy_bridge(inner: &Inner, bid: &str) -> Response {
    if inner.lock().destroy_bridge(bid) {
        no_content()
    } else {
        error(404, "Bridge not found")
    }
}

/// The channel ids of a bridge membership request, checked like Asterisk:
/// 404 unknown bridge, 400 no channel or unknown channel, 422 not in Stasis.
fn bridge_members(
    st: &super::state::State,
    params: &Params,
    bid: &str,
) -> Result<Vec<String>, Refusal> {
    if !st.bridges.contains_key(bid) {
        return Err((404, "Bridge not found"));
    }
    let ids: Vec<String> = params
        .get("channel")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if ids.is_empty() {
        return Err((400, "Missing parameter channel"));
    }
    for id in &ids {
        match st.channels.get(id).map(|c| c.phase) {
            None => return Err((400, "Channel not found")),
            Some(Phase::Pending) => return Err((422, "Channel not in Stasis application")),
            Some(Phase::In) => {}
        }
    }
    Ok(ids)
}

fn add_channel(inner: &Inner, params: &Params, bid: &str) -> Response {
    let mut st = inner.lock();
    let ids = match bridge_members(&st, params, bid) {
        Ok(ids) => ids,
        Err((s, m)) => return error(s, m),
    };
    for id in ids {
        st.join_bridge(bid, &id);
    }
    no_content()
}

fn remove_channel(inner: &Inner, params: &Params, bid: &str) -> Response {
    let mut st = inner.lock();
    let ids = match bridge_members(&st, params, bid) {
        Ok(ids) => ids,
        Err((s, m)) => return error(s, m),
    };
    if ids
        .iter()
        .any(|id| st.channels.get(id).and_then(|c| c.bridge.as_deref()) != Some(bid))
    {
        return error(422, "Channel not in this bridge");
    }
    for id in ids {
        st.leave_bridge(&id);
    }
    no_content()
}

/// Resolves `host:port` (a literal address first, then DNS).
async fn resolve(hostport: &str) -> Option<SocketAddr> {
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Some(a);
    }
    tokio::net::lookup_host(hostport).await.ok()?.next()
}

/// The format in `c(fmt)` of a dial-string option, if any.
fn dial_format(opts: &str) -> Option<&str> {
    opts.strip_prefix("c(")?.strip_suffix(')')
}

fn refusal(inner: &Inner) -> Option<Response> {
    let status = inner.faults.take_refusal()?;
    inner.lock().counters.originates_refused += 1;
    Some(if status == 500 {
        error(500, "Allocation failed")
    } else {
        error(status, "Invalid endpoint")
    })
}

/// What a new channel will be.
struct NewChannel {
    id: String,
    name: String,
    app: String,
    args: Vec<String>,
    caller: (String, String),
    vars: BTreeMap<String, String>,
}

/// `POST /ari/channels` and `POST /ari/channels/{channelId}`.
async fn originate(inner: &Arc<Inner>, params: &Params, path_id: Option<&str>) -> Response {
    if let Some(r) = refusal(inner) {
        return r;
    }
    let Some(endpoint) = params.get("endpoint") else {
        return error(400, "Endpoint must be specified");
    };
    let app = params.get("app");
    if app.is_none() && params.get("extension").is_none() {
        return error(400, "Application or extension must be specified");
    }
    let Some((tech, resource)) = endpoint.split_once('/') else {
        return error(
            400,
            "Endpoint parameter must be in the format Tech/Resource",
        );
    };
    let id = match path_id.or(params.get("channelId")) {
        Some(id) => id.to_string(),
        None => inner.lock().next_id().0,
    };
    if inner.lock().channels.contains_key(&id) {
        return error(409, "Channel with given unique ID already exists");
    }
    let args: Vec<String> = params
        .get("appArgs")
        .map(|a| a.split(',').map(String::from).collect())
        .unwrap_or_default();
    let caller = parse_caller_id(params.get("callerId").unwrap_or(""));
    let formats = params.get("formats");
    let seq = inner.lock().next_id().1;
    let Some(app) = app else {
        // Originate into the dialplan: the channel runs there, not in Stasis; the
        // emulator ends it at once.
        let mut st = inner.lock();
        st.counters.dialplan_originates += 1;
        let ch = plain_channel(
            &NewChannel {
                id,
                name: format!("{tech}/{resource}-{seq:08x}"),
                app: String::new(),
                args,
                caller,
                vars: params.vars.clone(),
            },
            Role::Plain,
        );
        return json_response(200, st.channel_json(&ch));
    };
    let new = |name: String| NewChannel {
        id: id.clone(),
        name,
        app: app.to_string(),
        args: args.clone(),
        caller: caller.clone(),
        vars: params.vars.clone(),
    };
    match tech {
        t if t.eq_ignore_ascii_case("AudioSocket") => {
            // AudioSocket/host:port/<uuid>[/c(fmt)]
            let mut parts = resource.split('/');
            let hostport = parts.next().unwrap_or("");
            let uuid_text = parts.next().unwrap_or("");
            let fmt = parts
                .next()
                .and_then(dial_format)
                .or(formats.and_then(|f| f.split(',').next()))
                .unwrap_or("slin");
            let (Some(remote), Ok(uuid), Some(format)) = (
                resolve(hostport).await,
                parse_uuid(uuid_text),
                LegFormat::parse(fmt),
            ) else {
                inner.lock().counters.originate_failures += 1;
                return error(500, "Allocation failed");
            };
            let name = format!("AudioSocket/{hostport}-{}", format_uuid(uuid));
            create_leg(
                inner,
                new(name),
                LegTransport::AudioSocket { remote, uuid },
                format,
                false,
            )
            .await
        }
        t if t.eq_ignore_ascii_case("UnicastRTP") => {
            // UnicastRTP/host:port[/c(fmt)]
            let mut parts = resource.split('/');
            let hostport = parts.next().unwrap_or("");
            let fmt = parts
                .next()
                .and_then(dial_format)
                .or(formats.and_then(|f| f.split(',').next()))
                .unwrap_or("ulaw");
            let (Some(remote), Some(format)) = (resolve(hostport).await, LegFormat::parse(fmt))
            else {
                inner.lock().counters.originate_failures += 1;
                return error(500, "Allocation failed");
            };
            let name = format!("UnicastRTP/{hostport}-0x{:012x}", 0x7f00_0000_0000u64 + seq);
            let transport = LegTransport::Rtp {
                remote,
                bind_ip: inner.cfg.media_ip,
            };
            create_leg(inner, new(name), transport, format, false).await
        }
        _ => {
            let mut st = inner.lock();
            let ch = plain_channel(&new(format!("{tech}/{resource}-{seq:08x}")), Role::Plain);
            let v = st.channel_json(&ch);
            st.channels.insert(ch.id.clone(), ch);
            st.counters.plain_originates += 1;
            drop(st);
            schedule_answer(inner, &id);
            json_response(200, v)
        }
    }
}

/// `Name <number>` or a bare number.
fn parse_caller_id(s: &str) -> (String, String) {
    match (s.find('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => (
            s[..a].trim().trim_matches('"').to_string(),
            s[a + 1..b].trim().to_string(),
        ),
        _ => (String::new(), s.trim().to_string()),
    }
}

fn plain_channel(n: &NewChannel, role: Role) -> Channel {
    Channel {
        id: n.id.clone(),
        name: n.name.clone(),
        state: ChanState::Down,
        protocol_id: String::new(),
        caller: n.caller.clone(),
        connected: (String::new(), String::new()),
        dialplan: (
            "default".into(),
            "s".into(),
            1,
            String::new(),
            String::new(),
        ),
        creationtime: ari_timestamp(SystemTime::now()),
        language: "en".into(),
        vars: n.vars.clone(),
        shown_vars: Vec::new(),
        app: n.app.clone(),
        phase: Phase::Pending,
        args: n.args.clone(),
        bridge: None,
        role,
    }
}

/// After the answer delay (unless legs are answered by hand): Up, then StasisStart.
fn schedule_answer(inner: &Arc<Inner>, id: &str) {
    if !inner.auto_answer() {
        return;
    }
    let inner = inner.clone();
    let id = id.to_string();
    let delay = inner.cfg.answer_delay;
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut st = inner.lock();
        st.set_up(&id);
        st.start_stasis(&id);
    });
}

/// Creates a media leg channel, starts its media through the driver, waits until
/// the media is up, and answers with the channel JSON (or 500 "Allocation failed").
async fn create_leg(
    inner: &Arc<Inner>,
    new: NewChannel,
    transport: LegTransport,
    format: LegFormat,
    external_media: bool,
) -> Response {
    let (outcome_tx, outcome_rx) = oneshot::channel();
    let counters = Arc::new(MediaCounters::default());
    let shared = Arc::new(LegShared {
        channel_id: new.id.clone(),
        counters: counters.clone(),
        feed: watch::channel(None).0,
        stop: watch::channel(false).0,
        outcome: Mutex::new(Some(outcome_tx)),
        emu: Arc::downgrade(inner),
    });
    {
        let mut st = inner.lock();
        if st.channels.contains_key(&new.id) {
            return error(409, "Channel with given unique ID already exists");
        }
        let ch = plain_channel(
            &new,
            Role::Leg {
                link: shared.clone(),
            },
        );
        st.channels.insert(new.id.clone(), ch);
        st.stats.insert(new.id.clone(), vec![counters]);
        if external_media {
            st.counters.external_media_legs += 1;
        } else {
            st.counters.originated_legs += 1;
        }
    }
    let leg = MediaLeg {
        channel_id: new.id.clone(),
        transport,
        format,
        link: LegLink {
            shared: shared.clone(),
        },
    };
    let fail = |inner: &Inner| {
        shared.stop();
        let mut st = inner.lock();
        st.remove_quietly(&new.id);
        st.counters.originate_failures += 1;
        error(500, "Allocation failed")
    };
    let local = match inner.driver.start_leg(leg) {
        Ok(local) => local,
        Err(_) => return fail(inner),
    };
    let wait = inner.cfg.connect_timeout + std::time::Duration::from_millis(500);
    match tokio::time::timeout(wait, outcome_rx).await {
        Ok(Ok(Ok(()))) => {}
        _ => return fail(inner),
    }
    let v = {
        let mut st = inner.lock();
        let Some(ch) = st.channels.get_mut(&new.id) else {
            // voxd closed the media before the originate even answered.
            st.counters.originate_failures += 1;
            return error(500, "Allocation failed");
        };
        if let Some(local) = local {
            ch.vars
                .insert("UNICASTRTP_LOCAL_ADDRESS".into(), local.ip().to_string());
            ch.vars
                .insert("UNICASTRTP_LOCAL_PORT".into(), local.port().to_string());
            if external_media {
                ch.shown_vars = vec![
                    "UNICASTRTP_LOCAL_ADDRESS".into(),
                    "UNICASTRTP_LOCAL_PORT".into(),
                ];
            }
        }
        let ch = &st.channels[&new.id];
        st.channel_json(ch)
    };
    schedule_answer(inner, &new.id);
    json_response(200, v)
}

/// `POST /ari/channels/externalMedia`.
async fn external_media(inner: &Arc<Inner>, params: &Params) -> Response {
    if let Some(r) = refusal(inner) {
        return r;
    }
    let Some(app) = params.get("app") else {
        return error(400, "app cannot be empty");
    };
    let Some(host) = params.get("external_host") else {
        return error(400, "external_host cannot be empty");
    };
    let Some(fmt) = params.get("format") else {
        return error(400, "format cannot be empty");
    };
    let Some(format) = LegFormat::parse(fmt) else {
        return error(422, "Format is not supported");
    };
    let encapsulation = params.get("encapsulation").unwrap_or("rtp");
    let transport_name = params.get("transport").unwrap_or(match encapsulation {
        "audiosocket" => "tcp",
        _ => "udp",
    });
    let Some(remote) = resolve(host).await else {
        return error(400, "external_host must be host:port");
    };
    let (id, seq) = match params.get("channelId") {
        Some(id) => (id.to_string(), inner.lock().next_id().1),
        None => inner.lock().next_id(),
    };
    let new = |name: String| NewChannel {
        id: id.clone(),
        name,
        app: app.to_string(),
        args: Vec::new(),
        caller: (String::new(), String::new()),
        vars: params.vars.clone(),
    };
    match (encapsulation, transport_name) {
        ("rtp", "udp") => {
            let name = format!("UnicastRTP/{host}-0x{:012x}", 0x7f00_0000_0000u64 + seq);
            let transport = LegTransport::Rtp {
                remote,
                bind_ip: inner.cfg.media_ip,
            };
            create_leg(inner, new(name), transport, format, true).await
        }
        ("audiosocket", "tcp") => {
            let Some(data) = params.get("data") else {
                return error(400, "data can not be empty");
            };
            let Ok(uuid) = parse_uuid(data) else {
                inner.lock().counters.originate_failures += 1;
                return error(500, "Allocation failed");
            };
            let name = format!("AudioSocket/{host}-{}", format_uuid(uuid));
            let transport = LegTransport::AudioSocket { remote, uuid };
            create_leg(inner, new(name), transport, format, true).await
        }
        ("rtp" | "audiosocket", t) => error(
            501,
            &format!("The '{t}' transport is not supported with encapsulation '{encapsulation}'"),
        ),
        (e, _) => error(501, &format!("The '{e}' encapsulation is not supported")),
    }
}
