//! Integration tests of the ARI emulator (`voxd::loadgen::ari_emu`) over real
//! loopback sockets, driven like an ARI client would: raw reqwest for REST,
//! tokio-tungstenite for the events WebSocket, a tiny AudioSocket server (tokio
//! TcpListener) and a UDP socket standing in for voxd's media side.
//!
//! Owns: the emulator's contract as voxd's ARI code sees it (auth, event shapes and
//! order, status codes, media legs, faults, request log, leak counters).
//!
//! Must not: assert on timing (timeouts are generous and only stop hangs), or depend
//! on anything outside loopback.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use voxd::loadgen::ari_emu::{
    AriEmulator, CallSpec, CallerSignal, EmuConfig, EmuError, DEFAULT_APP,
};

/// Only to stop a broken test from hanging; never a performance bound.
const T: Duration = Duration::from_secs(10);
const APP: &str = DEFAULT_APP;
const UUID: &str = "c0ffee00-1234-4abc-8def-0123456789ab";

fn uuid_bytes() -> [u8; 16] {
    voxd::media::audiosocket::parse_uuid(UUID).unwrap()
}

struct Client {
    http: reqwest::Client,
    base: String,
    user: String,
    pass: String,
}

impl Client {
    fn new(emu: &AriEmulator) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: format!("http://{}", emu.addr()),
            user: emu.config().username.clone(),
            pass: emu.config().password.clone(),
        }
    }

    /// `path` includes `/ari/...` and the query. Returns status and JSON body
    /// (`Null` when empty).
    async fn call(&self, method: Method, path: &str) -> (u16, Value) {
        self.call_body(method, path, None).await
    }

    async fn call_body(&self, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .basic_auth(&self.user, Some(&self.pass));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = tokio::time::timeout(T, req.send()).await.unwrap().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    async fn get(&self, p: &str) -> (u16, Value) {
        self.call(Method::GET, p).await
    }
    async fn post(&self, p: &str) -> (u16, Value) {
        self.call(Method::POST, p).await
    }
    async fn delete(&self, p: &str) -> (u16, Value) {
        self.call(Method::DELETE, p).await
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect_ws(emu: &AriEmulator, app: &str) -> Ws {
    let mut req = emu.events_url(app).into_client_request().unwrap();
    let cfg = emu.config();
    let token = base64_basic(&cfg.username, &cfg.password);
    req.headers_mut()
        .insert("authorization", token.parse().unwrap());
    let (ws, resp) = tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

fn base64_basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// The next text frame (pings skipped); panics on timeout or end.
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("timed out waiting for an event")
            .expect("events WebSocket ended")
            .expect("events WebSocket error");
        match msg {
            Message::Text(t) => return t,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn next_event(ws: &mut Ws) -> Value {
    let t = next_text(ws).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad event JSON {t:?}: {e}"))
}

/// Events up to and including the first one `stop` accepts.
async fn events_until(ws: &mut Ws, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let ev = next_event(ws).await;
        let done = stop(&ev);
        out.push(ev);
        if done {
            return out;
        }
    }
}

/// The first event of `kind` for channel `id` (others skipped).
async fn wait_event(ws: &mut Ws, kind: &str, id: &str) -> Value {
    let evs = events_until(ws, |e| e["type"] == kind && e["channel"]["id"] == id).await;
    evs.into_iter().last().unwrap()
}

/// The types of the events for channel `id`, up to its ChannelDestroyed.
async fn types_until_destroyed(ws: &mut Ws, id: &str) -> Vec<String> {
    events_until(ws, |e| {
        e["type"] == "ChannelDestroyed" && e["channel"]["id"] == id
    })
    .await
    .into_iter()
    .filter(|e| e["channel"]["id"] == id)
    .map(|e| e["type"].as_str().unwrap().to_string())
    .collect()
}

fn check_envelope(ev: &Value, kind: &str) {
    assert_eq!(ev["type"], kind);
    assert_eq!(ev["application"], APP);
    assert_eq!(ev["asterisk_id"], "02:42:ac:11:00:02");
    let ts = ev["timestamp"].as_str().unwrap();
    // 2026-11-22T10:00:00.000+0000
    assert_eq!(ts.len(), 28, "{ts}");
    assert_eq!(&ts[10..11], "T");
    assert_eq!(&ts[19..20], ".");
    assert!(ts.ends_with("+0000"), "{ts}");
}

fn check_channel_shape(ch: &Value) {
    for k in [
        "id",
        "name",
        "state",
        "protocol_id",
        "accountcode",
        "creationtime",
        "language",
    ] {
        assert!(ch[k].is_string(), "channel.{k} in {ch}");
    }
    for k in ["name", "number"] {
        assert!(ch["caller"][k].is_string());
        assert!(ch["connected"][k].is_string());
    }
    for k in ["context", "exten", "app_name", "app_data"] {
        assert!(ch["dialplan"][k].is_string());
    }
    assert!(ch["dialplan"]["priority"].is_i64());
}

async fn poll_until(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads one AudioSocket frame: (kind, payload); `None` on EOF.
async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 3];
    match tokio::time::timeout(T, s.read_exact(&mut h)).await.unwrap() {
        Ok(_) => {}
        Err(_) => return None,
    }
    let len = u16::from_be_bytes([h[1], h[2]]) as usize;
    let mut p = vec![0u8; len];
    tokio::time::timeout(T, s.read_exact(&mut p))
        .await
        .unwrap()
        .ok()?;
    Some((h[0], p))
}

/// Accepts one AudioSocket connection and checks its UUID frame.
async fn accept_leg(l: &TcpListener) -> TcpStream {
    let (mut s, _) = tokio::time::timeout(T, l.accept()).await.unwrap().unwrap();
    let (kind, payload) = read_frame(&mut s).await.expect("UUID frame");
    assert_eq!(kind, 0x01);
    assert_eq!(payload, uuid_bytes());
    s
}

fn tone_frame(kind: u8, samples: usize) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&((samples * 2) as u16).to_be_bytes());
    for i in 0..samples {
        let v = ((i as f64 * 0.3).sin() * 6000.0) as i16;
        f.extend_from_slice(&v.to_le_bytes());
    }
    f
}

fn tone_signal() -> CallerSignal {
    CallerSignal::Tone {
        hz: 440.0,
        level: 6000,
    }
}

fn caller(number: &str) -> CallSpec {
    CallSpec {
        caller_number: number.into(),
        caller_name: "Alice".into(),
        agent: Some("sales".into()),
        provider: Some("openai_realtime".into()),
        args: vec!["inbound".into(), "x".into()],
        signal: Some(tone_signal()),
        ..CallSpec::default()
    }
}

#[tokio::test]
async fn auth_is_required_and_info_and_unknown_routes() {
    let emu = AriEmulator::start(EmuConfig::default()).await.unwrap();
    let c = Client::new(&emu);
    let http = reqwest::Client::new();
    let url = format!("{}/asterisk/info", emu.base_url());

    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].is_string());

    let r = http
        .get(&url)
        .basic_auth("asterisk", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let (s, v) = c.get("/ari/asterisk/info").await;
    assert_eq!(s, 200);
    assert_eq!(v["system"]["version"], "22.7.0");
    assert_eq!(v["system"]["entity_id"], "02:42:ac:11:00:02");
    assert!(v["status"]["startup_time"].is_string());

    let r = http
        .get(format!("{url}?api_key=asterisk:asterisk"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let (s, v) = c.get("/ari/no/such/thing").await;
    assert_eq!(s, 404);
    assert_eq!(v["message"], "Resource not found");
    let (s, _) = c.get("/not-ari").await;
    assert_eq!(s, 404);

    // WebSocket: no credentials -> 401; credentials -> app registered.
    let req = emu.events_url(APP).into_client_request().unwrap();
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(!emu.is_app_registered(APP));
    assert_eq!(
        emu.place_call(caller("1")),
        Err(EmuError::AppNotRegistered(APP.into()))
    );
    let mut req = format!(
        "ws://{}/ari/events?app={APP}&api_key=asterisk:asterisk",
        emu.addr()
    )
    .into_client_request()
    .unwrap();
    req.headers_mut().remove("authorization");
    let (_ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert!(emu.is_app_registered(APP));

    // Version is configurable.
    let emu2 = AriEmulator::start(EmuConfig {
        asterisk_version: "20.14.0".into(),
        ..EmuConfig::default()
    })
    .await
    .unwrap();
    let (s, v) = Client::new(&emu2)
        .get("/ari/asterisk/info?only=system")
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["system"]["version"], "20.14.0");
    assert!(v.get("build").is_none());

    let log: Vec<(String, String, u16)> = emu
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.status))
        .collect();
    let s = |m: &str, p: &str, st: u16| (m.to_string(), p.to_string(), st);
    assert_eq!(
        log,
        vec![
            s("GET", "/ari/asterisk/info", 401),
            s("GET", "/ari/asterisk/info", 401),
            s("GET", "/ari/asterisk/info", 200),
            s("GET", "/ari/asterisk/info", 200),
            s("GET", "/ari/no/such/thing", 404),
            s("GET", "/not-ari", 404),
            s("GET", "/ari/events", 401),
            s("GET", "/ari/events", 101),
        ]
    );
    let api = &emu.requests()[3];
    assert_eq!(api.query.get("api_key").map(String::as_str), Some("***"));
    assert_eq!(emu.counters().rest_errors, 5);
}

#[tokio::test]
async fn audiosocket_call_flow_end_to_end() {
    let emu = AriEmulator::start(EmuConfig {
        auto_answer: false,
        channelvars: vec!["AI_AGENT".into()],
        ..EmuConfig::default()
    })
    .await
    .unwrap();
    let c = Client::new(&emu);
    let mut ws = connect_ws(&emu, APP).await;

    // Caller enters Stasis.
    let id = emu.place_call(caller("15551230001")).unwrap();
    let ev = next_event(&mut ws).await;
    check_envelope(&ev, "StasisStart");
    assert_eq!(ev["args"], serde_json::json!(["inbound", "x"]));
    let ch = &ev["channel"];
    check_channel_shape(ch);
    assert_eq!(ch["id"], id.as_str());
    assert_eq!(ch["state"], "Ring");
    assert_eq!(ch["caller"]["number"], "15551230001");
    assert_eq!(ch["caller"]["name"], "Alice");
    assert_eq!(ch["dialplan"]["app_name"], "Stasis");
    assert_eq!(ch["dialplan"]["app_data"], format!("{APP},inbound,x"));
    assert_eq!(ch["channelvars"]["AI_AGENT"], "sales");
    assert!(ch["name"]
        .as_str()
        .unwrap()
        .starts_with("PJSIP/15551230001-"));

    // Variables.
    let (s, v) = c
        .get(&format!("/ari/channels/{id}/variable?variable=AI_AGENT"))
        .await;
    assert_eq!((s, v["value"].as_str()), (200, Some("sales")));
    let (s, v) = c
        .get(&format!("/ari/channels/{id}/variable?variable=AI_PROVIDER"))
        .await;
    assert_eq!((s, v["value"].as_str()), (200, Some("openai_realtime")));
    let (s, v) = c
        .get(&format!("/ari/channels/{id}/variable?variable=NOPE"))
        .await;
    assert_eq!(s, 404);
    assert_eq!(v["message"], "Provided variable was not found");
    // Dialplan functions are evaluated, as Asterisk does (the reference engine
    // reads the caller's codec this way).
    let (s, v) = c
        .get(&format!(
            "/ari/channels/{id}/variable?variable=CHANNEL(audionativeformat)"
        ))
        .await;
    assert_eq!((s, v["value"].as_str()), (200, Some("ulaw")));
    let (s, v) = c
        .get(&format!(
            "/ari/channels/{id}/variable?variable=CALLERID(num)"
        ))
        .await;
    assert_eq!((s, v["value"].as_str()), (200, Some("15551230001")));
    let (s, _) = c.get(&format!("/ari/channels/{id}/variable")).await;
    assert_eq!(s, 400);

    // Answer.
    let (s, _) = c.post(&format!("/ari/channels/{id}/answer")).await;
    assert_eq!(s, 204);
    let ev = next_event(&mut ws).await;
    check_envelope(&ev, "ChannelStateChange");
    assert_eq!(ev["channel"]["state"], "Up");
    let (s, v) = c.get(&format!("/ari/channels/{id}")).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("Up")));

    // Bridge.
    let (s, v) = c.post("/ari/bridges?type=mixing&bridgeId=br1").await;
    assert_eq!(s, 200);
    assert_eq!(v["id"], "br1");
    assert_eq!(v["bridge_type"], "mixing");
    assert_eq!(v["channels"], serde_json::json!([]));

    // Originate the AudioSocket leg towards our AudioSocket server.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let endpoint = format!("AudioSocket/127.0.0.1:{port}/{UUID}/c(slin16)");
    let path = format!(
        "/ari/channels?endpoint={}&app={APP}&channelId=leg1&formats=slin16",
        urlencode(&endpoint)
    );
    let (s, v) = c.post(&path).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], "leg1");
    assert!(v["name"]
        .as_str()
        .unwrap()
        .starts_with(&format!("AudioSocket/127.0.0.1:{port}-")));
    let mut sock = accept_leg(&l).await;

    // The leg has not entered Stasis yet: 422.
    let (s, v) = c
        .post(&format!("/ari/bridges/br1/addChannel?channel={id},leg1"))
        .await;
    assert_eq!(s, 422);
    assert_eq!(v["message"], "Channel not in Stasis application");

    emu.answer_leg("leg1").unwrap();
    let evs = events_until(&mut ws, |e| {
        e["type"] == "StasisStart" && e["channel"]["id"] == "leg1"
    })
    .await;
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ChannelStateChange", "StasisStart"]);
    assert_eq!(evs[1]["channel"]["state"], "Up");

    let (s, _) = c
        .post(&format!("/ari/bridges/br1/addChannel?channel={id},leg1"))
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        emu.bridge_members("br1").unwrap(),
        vec![id.clone(), "leg1".to_string()]
    );
    let ev = next_event(&mut ws).await;
    assert_eq!(ev["type"], "ChannelEnteredBridge");
    assert_eq!(ev["bridge"]["id"], "br1");

    // Media: slin16 frames (kind 0x12, 640 B); once bridged, the caller's tone.
    let mut voiced = false;
    for _ in 0..500 {
        let (kind, p) = read_frame(&mut sock).await.expect("audio frame");
        assert_eq!((kind, p.len()), (0x12, 640));
        if p.chunks_exact(2)
            .any(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs() > 100)
        {
            voiced = true;
            break;
        }
    }
    assert!(voiced, "caller tone never reached the leg");
    for _ in 0..10 {
        sock.write_all(&tone_frame(0x12, 320)).await.unwrap();
    }
    poll_until(|| {
        emu.media_stats(&id)
            .is_some_and(|m| m.voiced_frames_received >= 10)
    })
    .await;
    let m = emu.media_stats(&id).unwrap();
    assert_eq!(m.legs, 1);
    assert_eq!(m.bytes_received, 6400);
    assert!(m.voiced_frames_sent >= 1);
    assert_eq!(emu.media_stats("leg1").unwrap().frames_received, 10);

    // DTMF and playback.
    emu.send_dtmf(&id, '5').unwrap();
    let ev = wait_event(&mut ws, "ChannelDtmfReceived", &id).await;
    check_envelope(&ev, "ChannelDtmfReceived");
    assert_eq!(ev["digit"], "5");
    assert_eq!(ev["duration_ms"], 100);
    assert_eq!(emu.send_dtmf(&id, 'x'), Err(EmuError::BadDigit('x')));
    let (s, v) = c
        .post(&format!(
            "/ari/channels/{id}/play?media=sound:hello-world&playbackId=pb1"
        ))
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["id"], "pb1");
    assert_eq!(v["target_uri"], format!("channel:{id}"));
    let evs = events_until(&mut ws, |e| e["type"] == "PlaybackFinished").await;
    assert!(evs.iter().any(|e| e["type"] == "PlaybackStarted"));
    assert_eq!(evs.last().unwrap()["playback"]["id"], "pb1");

    // The caller hangs up.
    emu.hangup_caller(&id).unwrap();
    let evs = events_until(&mut ws, |e| {
        e["type"] == "ChannelDestroyed" && e["channel"]["id"] == id.as_str()
    })
    .await;
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "ChannelHangupRequest",
            "ChannelLeftBridge",
            "StasisEnd",
            "ChannelDestroyed"
        ]
    );
    assert_eq!(evs[0]["cause"], 16);
    assert_eq!(evs[3]["cause"], 16);
    assert_eq!(evs[3]["cause_txt"], "Normal Clearing");
    assert_eq!(
        emu.hangup_caller(&id),
        Err(EmuError::NoSuchChannel(id.clone()))
    );

    // voxd's side cleans up: DELETE the leg (its socket closes), then the bridge.
    let (s, _) = c.delete("/ari/channels/leg1?reason=normal").await;
    assert_eq!(s, 204);
    let evs = events_until(&mut ws, |e| {
        e["type"] == "ChannelDestroyed" && e["channel"]["id"] == "leg1"
    })
    .await;
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "ChannelHangupRequest",
            "ChannelLeftBridge",
            "StasisEnd",
            "ChannelDestroyed"
        ]
    );
    assert_eq!(evs[0]["soft"], true);
    loop {
        if read_frame(&mut sock).await.is_none() {
            break; // EOF: the emulator closed the leg's media
        }
    }
    let (s, _) = c.delete("/ari/bridges/br1").await;
    assert_eq!(s, 204);
    let (s, v) = c.delete("/ari/bridges/br1").await;
    assert_eq!((s, v["message"].as_str()), (404, Some("Bridge not found")));

    let k = emu.counters();
    assert_eq!((k.live_channels, k.live_bridges, k.live_legs), (0, 0, 0));
    assert_eq!(
        (k.calls_placed, k.originated_legs, k.stasis_starts),
        (1, 1, 2)
    );
    assert_eq!(k.rest_hangups, 1);

    // The request log holds the exact sequence.
    let log: Vec<(String, String, u16)> = emu
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.status))
        .collect();
    let s = |m: &str, p: String, st: u16| (m.to_string(), p, st);
    assert_eq!(
        log,
        vec![
            s("GET", "/ari/events".into(), 101),
            s("GET", format!("/ari/channels/{id}/variable"), 200),
            s("GET", format!("/ari/channels/{id}/variable"), 200),
            s("GET", format!("/ari/channels/{id}/variable"), 404),
            s("GET", format!("/ari/channels/{id}/variable"), 200),
            s("GET", format!("/ari/channels/{id}/variable"), 200),
            s("GET", format!("/ari/channels/{id}/variable"), 400),
            s("POST", format!("/ari/channels/{id}/answer"), 204),
            s("GET", format!("/ari/channels/{id}"), 200),
            s("POST", "/ari/bridges".into(), 200),
            s("POST", "/ari/channels".into(), 200),
            s("POST", "/ari/bridges/br1/addChannel".into(), 422),
            s("POST", "/ari/bridges/br1/addChannel".into(), 204),
            s("POST", format!("/ari/channels/{id}/play"), 201),
            s("DELETE", "/ari/channels/leg1".into(), 204),
            s("DELETE", "/ari/bridges/br1".into(), 204),
            s("DELETE", "/ari/bridges/br1".into(), 404),
        ]
    );
    let orig = &emu.requests()[10];
    assert_eq!(orig.query["endpoint"], endpoint);
    assert_eq!(orig.query["channelId"], "leg1");

    let report = emu.stop().await;
    assert!(report.leaked_channels.is_empty() && report.leaked_bridges.is_empty());
    assert_eq!(emu.counters().leaked_channels_at_stop, 0);
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn leg_media_end_on_voxd_side_hangs_up_the_leg() {
    let emu = AriEmulator::start(EmuConfig::default()).await.unwrap();
    let c = Client::new(&emu);
    let mut ws = connect_ws(&emu, APP).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();

    // (how voxd ends the media, leg id)
    for (how, leg) in [("hangup-frame", "l1"), ("eof", "l2"), ("bad-kind", "l3")] {
        let endpoint = urlencode(&format!("AudioSocket/127.0.0.1:{port}/{UUID}/c(slin)"));
        let (s, _) = c
            .post(&format!(
                "/ari/channels?endpoint={endpoint}&app={APP}&channelId={leg}"
            ))
            .await;
        assert_eq!(s, 200);
        let mut sock = accept_leg(&l).await;
        wait_event(&mut ws, "StasisStart", leg).await;
        // Not bridged: slin 8 kHz silence (kind 0x10, 320 B of zeros).
        let (kind, p) = read_frame(&mut sock).await.unwrap();
        assert_eq!((kind, p.len()), (0x10, 320));
        assert!(p.iter().all(|&b| b == 0));
        match how {
            "hangup-frame" => sock.write_all(&[0x00, 0x00, 0x00]).await.unwrap(),
            "eof" => drop(sock),
            _ => sock.write_all(&[0x01, 0x00, 0x01, 0x41]).await.unwrap(),
        }
        let types = types_until_destroyed(&mut ws, leg).await;
        assert_eq!(
            types,
            ["ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"]
        );
        let (s, _) = c.delete(&format!("/ari/channels/{leg}")).await;
        assert_eq!(s, 404);
    }
    let k = emu.counters();
    assert_eq!((k.legs_closed_by_peer, k.live_channels), (3, 0));
    assert_eq!(emu.media_stats("l1").unwrap().hangup_frames, 1);
    assert_eq!(emu.media_stats("l3").unwrap().rejected, 1);
    assert_eq!(emu.media_stats("l2").unwrap().closed_legs, 1);
}

#[tokio::test]
async fn external_media_rtp_and_audiosocket() {
    let emu = AriEmulator::start(EmuConfig::default()).await.unwrap();
    let c = Client::new(&emu);
    let mut ws = connect_ws(&emu, APP).await;
    let id = emu.place_call(caller("200")).unwrap();
    wait_event(&mut ws, "StasisStart", &id).await;

    let voxd_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let host = voxd_rtp.local_addr().unwrap();
    let (s, v) = c
        .post(&format!(
            "/ari/channels/externalMedia?app={APP}&external_host={host}&format=ulaw&channelId=em1"
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    check_channel_shape(&v);
    assert_eq!(v["id"], "em1");
    assert!(v["name"].as_str().unwrap().starts_with("UnicastRTP/"));
    let addr = v["channelvars"]["UNICASTRTP_LOCAL_ADDRESS"]
        .as_str()
        .unwrap();
    let port: u16 = v["channelvars"]["UNICASTRTP_LOCAL_PORT"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let emu_rtp: SocketAddr = format!("{addr}:{port}").parse().unwrap();
    let (s, v) = c
        .get("/ari/channels/em1/variable?variable=UNICASTRTP_LOCAL_PORT")
        .await;
    assert_eq!(
        (s, v["value"].as_str()),
        (200, Some(port.to_string().as_str()))
    );
    wait_event(&mut ws, "StasisStart", "em1").await;

    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(T, voxd_rtp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, emu_rtp);
    assert_eq!(n, 12 + 160);
    assert_eq!(buf[0] >> 6, 2, "RTP version 2");
    assert_eq!(buf[1] & 0x7f, 0, "PCMU");

    // Bridged: the caller's tone arrives as non-silent mu-law.
    c.post("/ari/bridges?bridgeId=b2").await;
    let (s, _) = c
        .post(&format!("/ari/bridges/b2/addChannel?channel={id},em1"))
        .await;
    assert_eq!(s, 204);
    let mut voiced = false;
    for _ in 0..500 {
        let (n, _) = tokio::time::timeout(T, voxd_rtp.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if buf[12..n].iter().any(|&b| b != 0xFF && b != 0x7F) {
            voiced = true;
            break;
        }
    }
    assert!(voiced);

    // voxd's replies from the learned address count; others are dropped.
    let mut pkt = vec![0x80, 0x00, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
    pkt.extend(std::iter::repeat_n(0x20u8, 160));
    for i in 0..5u8 {
        pkt[3] = i;
        voxd_rtp.send_to(&pkt, emu_rtp).await.unwrap();
    }
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(&pkt, emu_rtp).await.unwrap();
    poll_until(|| {
        emu.media_stats(&id)
            .is_some_and(|m| m.frames_received >= 5 && m.rejected >= 1)
    })
    .await;
    let m = emu.media_stats("em1").unwrap();
    assert_eq!((m.frames_received, m.voiced_frames_received), (5, 5));

    // ExternalMedia over AudioSocket.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ahost = l.local_addr().unwrap();
    let (s, v) = c
        .post(&format!(
            "/ari/channels/externalMedia?app={APP}&external_host={ahost}&format=slin16\
             &encapsulation=audiosocket&transport=tcp&data={UUID}&channelId=em2"
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["name"].as_str().unwrap().starts_with("AudioSocket/"));
    let mut sock = accept_leg(&l).await;
    let (kind, p) = read_frame(&mut sock).await.unwrap();
    assert_eq!((kind, p.len()), (0x12, 640));
    wait_event(&mut ws, "StasisStart", "em2").await;

    // Parameter checks.
    let bad = [
        (format!("/ari/channels/externalMedia?app={APP}&format=ulaw"), 400),
        (format!("/ari/channels/externalMedia?app={APP}&external_host={host}"), 400),
        (format!("/ari/channels/externalMedia?external_host={host}&format=ulaw"), 400),
        (
            format!("/ari/channels/externalMedia?app={APP}&external_host={host}&format=ulaw&encapsulation=audiosocket&transport=tcp"),
            400,
        ),
        (
            format!("/ari/channels/externalMedia?app={APP}&external_host={host}&format=ulaw&transport=tcp"),
            501,
        ),
    ];
    for (path, want) in bad {
        let (s, v) = c.post(&path).await;
        assert_eq!(s, want, "{path}: {v}");
        assert!(v["message"].is_string());
    }

    for leg in ["em1", "em2"] {
        let (s, _) = c.delete(&format!("/ari/channels/{leg}")).await;
        assert_eq!(s, 204);
    }
    assert!(read_frame_until_eof(&mut sock).await);
    emu.hangup_caller(&id).unwrap();
    c.delete("/ari/bridges/b2").await;
    let k = emu.counters();
    assert_eq!(
        (k.live_channels, k.live_bridges, k.external_media_legs),
        (0, 0, 2)
    );
}

async fn read_frame_until_eof(sock: &mut TcpStream) -> bool {
    for _ in 0..10_000 {
        if read_frame(sock).await.is_none() {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn originate_errors_and_validation() {
    let emu = AriEmulator::start(EmuConfig {
        connect_timeout: Duration::from_secs(3),
        ..EmuConfig::default()
    })
    .await
    .unwrap();
    let c = Client::new(&emu);
    let mut ws = connect_ws(&emu, APP).await;

    // Nothing listening: the AudioSocket channel request fails.
    let closed_port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = urlencode(&format!(
        "AudioSocket/127.0.0.1:{closed_port}/{UUID}/c(slin16)"
    ));
    let (s, v) = c
        .post(&format!(
            "/ari/channels?endpoint={endpoint}&app={APP}&channelId=x1"
        ))
        .await;
    assert_eq!((s, v["message"].as_str()), (500, Some("Allocation failed")));
    assert_eq!(emu.counters().live_channels, 0);
    assert_eq!(emu.counters().originate_failures, 1);
    // Bad UUID in the dial string.
    let endpoint = urlencode("AudioSocket/127.0.0.1:1/not-a-uuid/c(slin16)");
    let (s, _) = c
        .post(&format!("/ari/channels?endpoint={endpoint}&app={APP}"))
        .await;
    assert_eq!(s, 500);

    let (s, _) = c.post(&format!("/ari/channels?app={APP}")).await;
    assert_eq!(s, 400);
    let (s, _) = c.post("/ari/channels?endpoint=PJSIP/200").await;
    assert_eq!(s, 400);
    let (s, _) = c
        .post(&format!("/ari/channels?endpoint=nonsense&app={APP}"))
        .await;
    assert_eq!(s, 400);

    // A plain originate enters Stasis; the id is then taken.
    let (s, v) = c
        .post(&format!(
            "/ari/channels?endpoint=PJSIP/200&app={APP}&channelId=p1&appArgs=a,b"
        ))
        .await;
    assert_eq!((s, v["id"].as_str()), (200, Some("p1")));
    let ev = wait_event(&mut ws, "StasisStart", "p1").await;
    assert_eq!(ev["args"], serde_json::json!(["a", "b"]));
    let (s, _) = c
        .post(&format!(
            "/ari/channels?endpoint=PJSIP/200&app={APP}&channelId=p1"
        ))
        .await;
    assert_eq!(s, 409);
    // originate with the id in the path, variables in a JSON body.
    let (s, _) = c
        .call_body(
            Method::POST,
            &format!("/ari/channels/p2?endpoint=PJSIP/201&app={APP}"),
            Some(r#"{"variables": {"AI_AGENT": "support"}}"#),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = c.get("/ari/channels/p2/variable?variable=AI_AGENT").await;
    assert_eq!((s, v["value"].as_str()), (200, Some("support")));
    let (s, _) = c
        .call_body(Method::POST, "/ari/channels/p3", Some("{not json"))
        .await;
    assert_eq!(s, 400);

    // Bridges.
    let (s, _) = c.post("/ari/bridges?type=bogus").await;
    assert_eq!(s, 400);
    let (s, v) = c.post("/ari/bridges/nob/addChannel?channel=p1").await;
    assert_eq!((s, v["message"].as_str()), (404, Some("Bridge not found")));
    c.post("/ari/bridges?bridgeId=b1").await;
    let (s, _) = c.post("/ari/bridges?bridgeId=b1").await;
    assert_eq!(s, 409);
    let (s, v) = c.post("/ari/bridges/b1/addChannel").await;
    assert_eq!(
        (s, v["message"].as_str()),
        (400, Some("Missing parameter channel"))
    );
    let (s, v) = c.post("/ari/bridges/b1/addChannel?channel=ghost").await;
    assert_eq!((s, v["message"].as_str()), (400, Some("Channel not found")));
    let (s, _) = c.post("/ari/bridges/b1/removeChannel?channel=p1").await;
    assert_eq!(s, 422);
    let (s, v) = c.get("/ari/bridges").await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(1)));

    // Channels.
    let (s, _) = c.delete("/ari/channels/ghost").await;
    assert_eq!(s, 404);
    let (s, _) = c.delete("/ari/channels/p1?reason=bogus").await;
    assert_eq!(s, 400);
    let (s, _) = c.post("/ari/channels/ghost/answer").await;
    assert_eq!(s, 404);
    let (s, _) = c.post("/ari/channels/p1/redirect").await;
    assert_eq!(s, 400);
    let (s, v) = c.get("/ari/channels").await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(2)));

    // continue / redirect: StasisEnd, the channel leaves.
    let (s, _) = c
        .post("/ari/channels/p1/continue?context=default&extension=s&priority=1")
        .await;
    assert_eq!(s, 204);
    let types = events_until(&mut ws, |e| {
        e["type"] == "StasisEnd" && e["channel"]["id"] == "p1"
    })
    .await;
    assert_eq!(types.last().unwrap()["type"], "StasisEnd");
    let (s, _) = c.post("/ari/channels/p2/redirect?endpoint=PJSIP/300").await;
    assert_eq!(s, 204);
    wait_event(&mut ws, "StasisEnd", "p2").await;
    let (s, _) = c.delete("/ari/bridges/b1").await;
    assert_eq!(s, 204);

    // A hangup with a reason maps to its cause.
    let (s, _) = c
        .post(&format!(
            "/ari/channels?endpoint=PJSIP/202&app={APP}&channelId=p4"
        ))
        .await;
    assert_eq!(s, 200);
    wait_event(&mut ws, "StasisStart", "p4").await;
    let (s, _) = c.delete("/ari/channels/p4?reason=busy").await;
    assert_eq!(s, 204);
    let ev = wait_event(&mut ws, "ChannelDestroyed", "p4").await;
    assert_eq!(
        (ev["cause"].as_u64(), ev["cause_txt"].as_str()),
        (Some(17), Some("User busy"))
    );

    let report = emu.stop().await;
    assert_eq!(report, Default::default());
}

#[tokio::test]
async fn faults_refuse_delay_unknown_events_drop_and_restart() {
    let emu = AriEmulator::start(EmuConfig::default()).await.unwrap();
    let c = Client::new(&emu);
    let mut ws = connect_ws(&emu, APP).await;

    // Refused originates.
    emu.set_refuse_originate(Some(500));
    let (s, v) = c
        .post(&format!("/ari/channels?endpoint=PJSIP/1&app={APP}"))
        .await;
    assert_eq!((s, v["message"].as_str()), (500, Some("Allocation failed")));
    emu.set_refuse_originate(Some(400));
    let (s, _) = c
        .post(&format!(
            "/ari/channels/externalMedia?app={APP}&external_host=127.0.0.1:9&format=ulaw"
        ))
        .await;
    assert_eq!(s, 400);
    emu.set_refuse_originate(None);
    emu.refuse_next_originates(500, 1);
    let (s, _) = c
        .post(&format!(
            "/ari/channels?endpoint=PJSIP/1&app={APP}&channelId=o1"
        ))
        .await;
    assert_eq!(s, 500);
    let (s, _) = c
        .post(&format!(
            "/ari/channels?endpoint=PJSIP/1&app={APP}&channelId=o1"
        ))
        .await;
    assert_eq!(s, 200);
    wait_event(&mut ws, "StasisStart", "o1").await;
    assert_eq!(emu.counters().originates_refused, 3);

    // Delayed responses (a lower bound only: the delay is a sleep).
    emu.set_rest_delay(Duration::from_millis(150));
    let (s, _) = c.get("/ari/asterisk/info").await;
    assert_eq!(s, 200);
    emu.set_rest_delay(Duration::ZERO);
    let last = emu.requests().pop().unwrap();
    assert!(last.elapsed >= Duration::from_millis(150), "{last:?}");

    // Unknown event types and malformed JSON reach the client as sent.
    assert_eq!(emu.send_unknown_event(APP, "ChannelTalkingStarted"), 1);
    let ev = next_event(&mut ws).await;
    check_envelope(&ev, "ChannelTalkingStarted");
    assert_eq!(emu.send_malformed_json(APP), 1);
    let t = next_text(&mut ws).await;
    assert!(serde_json::from_str::<Value>(&t).is_err());
    emu.set_unknown_event_noise(true);
    let id = emu.place_call(caller("300")).unwrap();
    let e1 = next_event(&mut ws).await;
    let e2 = next_event(&mut ws).await;
    assert_eq!(e1["type"], "EmulatorNoise");
    assert_eq!(
        (e2["type"].as_str(), e2["channel"]["id"].as_str()),
        (Some("StasisStart"), Some(id.as_str()))
    );
    emu.set_unknown_event_noise(false);

    // Dropped WebSocket: close frame; the client reconnects and events flow again.
    assert_eq!(emu.drop_websockets(), 1);
    let end = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end, Some(1001));
    assert!(!emu.is_app_registered(APP));
    emu.send_dtmf(&id, '1').unwrap(); // lost: nobody subscribed
    assert!(emu.counters().events_dropped >= 1);
    let mut ws = connect_ws(&emu, APP).await;
    emu.send_dtmf(&id, '2').unwrap();
    let ev = wait_event(&mut ws, "ChannelDtmfReceived", &id).await;
    assert_eq!(ev["digit"], "2");

    // Aborted WebSocket: the stream just ends (no close frame).
    assert_eq!(emu.abort_websockets(), 1);
    let end = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) => return false,
                Some(Ok(_)) => continue,
                _ => return true,
            }
        }
    })
    .await
    .unwrap();
    assert!(end, "abort must not send a close frame");

    // Restart: WebSocket dropped, channels/bridges/media gone, then back.
    let mut ws = connect_ws(&emu, APP).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let endpoint = urlencode(&format!("AudioSocket/127.0.0.1:{port}/{UUID}/c(slin16)"));
    let (s, _) = c
        .post(&format!(
            "/ari/channels?endpoint={endpoint}&app={APP}&channelId=rl"
        ))
        .await;
    assert_eq!(s, 200);
    let mut sock = accept_leg(&l).await;
    c.post("/ari/bridges?bridgeId=rb").await;
    emu.restart(Duration::from_millis(200)).await.unwrap();
    assert!(
        read_frame_until_eof(&mut sock).await,
        "media closed by the restart"
    );
    let closed = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap();
    assert!(closed);
    let k = emu.counters();
    assert_eq!((k.live_channels, k.live_bridges, k.restarts), (0, 0, 1));
    let (s, v) = c.get("/ari/channels").await;
    assert_eq!((s, v), (200, serde_json::json!([])));
    let mut ws = connect_ws(&emu, APP).await;
    let id = emu.place_call(caller("301")).unwrap();
    wait_event(&mut ws, "StasisStart", &id).await;
    ws.send(Message::Close(None)).await.unwrap();

    // A caller left behind counts as a leak at stop.
    let report = emu.stop().await;
    assert_eq!(report.leaked_channels, vec![id]);
    assert_eq!(emu.counters().leaked_channels_at_stop, 1);
    assert_eq!(emu.place_call(caller("302")), Err(EmuError::Down));
}

#[tokio::test]
async fn json_body_parameters_like_the_reference_engine() {
    let emu = AriEmulator::start(EmuConfig::default()).await.unwrap();
    let c = Client::new(&emu);
    let mut ws = connect_ws(&emu, APP).await;
    let id = emu.place_call(caller("400")).unwrap();
    wait_event(&mut ws, "StasisStart", &id).await;
    let post = |p: String, b: String| {
        let c = &c;
        async move { c.call_body(Method::POST, &p, Some(&b)).await }
    };

    let (s, v) = post(
        "/ari/bridges".into(),
        r#"{"type":"mixing","name":"bridge_ab"}"#.into(),
    )
    .await;
    assert_eq!((s, v["name"].as_str()), (200, Some("bridge_ab")));
    let bid = v["id"].as_str().unwrap().to_string();

    let voxd_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let host = voxd_rtp.local_addr().unwrap();
    let body = format!(
        r#"{{"app":"{APP}","external_host":"{host}","format":"ulaw","direction":"both","encapsulation":"rtp"}}"#
    );
    let (s, v) = post("/ari/channels/externalMedia".into(), body).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["channelvars"]["UNICASTRTP_LOCAL_PORT"].is_string());
    let em = v["id"].as_str().unwrap().to_string();
    wait_event(&mut ws, "StasisStart", &em).await;

    for ch in [&id, &em] {
        let (s, _) = post(
            format!("/ari/bridges/{bid}/addChannel"),
            format!(r#"{{"channel":"{ch}"}}"#),
        )
        .await;
        assert_eq!(s, 204);
    }
    let (s, v) = post(
        format!("/ari/bridges/{bid}/play"),
        r#"{"media":"sound:ai-generated/greeting","playbackId":"pbb"}"#.into(),
    )
    .await;
    assert_eq!((s, v["id"].as_str()), (201, Some("pbb")));
    assert_eq!(v["target_uri"], format!("bridge:{bid}"));
    let evs = events_until(&mut ws, |e| e["type"] == "PlaybackFinished").await;
    assert!(evs.iter().any(|e| e["type"] == "PlaybackStarted"));

    let (s, _) = post(
        format!("/ari/channels/{id}/variable"),
        r#"{"variable":"TALK_DETECT(set)","value":""}"#.into(),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = post(
        format!("/ari/channels/{id}/variable"),
        r#"{"variable":"X","value":1}"#.into(),
    )
    .await;
    assert_eq!(s, 204);
    let (s, v) = c
        .get(&format!("/ari/channels/{id}/variable?variable=X"))
        .await;
    assert_eq!((s, v["value"].as_str()), (200, Some("1")));
    let (s, v) = c
        .post(&format!(
            "/ari/channels/{id}/record?name=call-{id}&format=wav&ifExists=overwrite"
        ))
        .await;
    assert_eq!((s, v["state"].as_str()), (201, Some("queued")));
    let (s, _) = c.delete("/ari/playbacks/ghost").await;
    assert_eq!(s, 404);

    // Deleting the bridge takes both members out of it.
    let (s, _) = c.delete(&format!("/ari/bridges/{bid}")).await;
    assert_eq!(s, 204);
    let evs = events_until(&mut ws, |e| {
        e["type"] == "ChannelLeftBridge" && e["channel"]["id"] == em.as_str()
    })
    .await;
    assert!(evs
        .iter()
        .any(|e| e["type"] == "ChannelLeftBridge" && e["channel"]["id"] == id.as_str()));
    let (s, _) = c.delete(&format!("/ari/channels/{em}")).await;
    assert_eq!(s, 204);
    emu.hangup_caller(&id).unwrap();
    assert_eq!(emu.stop().await, Default::default());
}

/// A driver that starts nothing: it records legs and reports them up at once.
#[derive(Default)]
struct FakeDriver {
    legs: std::sync::Mutex<Vec<voxd::loadgen::ari_emu::MediaLeg>>,
}

impl voxd::loadgen::ari_emu::MediaDriver for FakeDriver {
    fn start_leg(
        &self,
        leg: voxd::loadgen::ari_emu::MediaLeg,
    ) -> std::io::Result<Option<SocketAddr>> {
        leg.link.connected();
        let local = match leg.transport {
            voxd::loadgen::ari_emu::LegTransport::Rtp { .. } => {
                Some("127.0.0.1:40000".parse().unwrap())
            }
            _ => None,
        };
        self.legs.lock().unwrap().push(leg);
        Ok(local)
    }
}

#[tokio::test]
async fn custom_media_driver_gets_legs_caller_feed_and_stop() {
    use voxd::loadgen::ari_emu::{LegClose, LegFormat, LegTransport};
    let driver = std::sync::Arc::new(FakeDriver::default());
    let emu = AriEmulator::start(EmuConfig {
        driver: Some(driver.clone()),
        ..EmuConfig::default()
    })
    .await
    .unwrap();
    let c = Client::new(&emu);
    let mut ws = connect_ws(&emu, APP).await;
    let id = emu.place_call(caller("500")).unwrap();
    wait_event(&mut ws, "StasisStart", &id).await;

    // No listener is needed: the fake driver never connects.
    let endpoint = urlencode(&format!("AudioSocket/127.0.0.1:9/{UUID}/c(slin16)"));
    let (s, _) = c
        .post(&format!(
            "/ari/channels?endpoint={endpoint}&app={APP}&channelId=fa"
        ))
        .await;
    assert_eq!(s, 200);
    let (s, v) = c
        .post(&format!(
            "/ari/channels/externalMedia?app={APP}&external_host=127.0.0.1:18080&format=alaw&channelId=fr"
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["channelvars"]["UNICASTRTP_LOCAL_PORT"], "40000");
    wait_event(&mut ws, "StasisStart", "fa").await;
    wait_event(&mut ws, "StasisStart", "fr").await;

    let (a, r) = {
        let legs = driver.legs.lock().unwrap();
        assert_eq!(legs.len(), 2);
        assert_eq!(legs[0].channel_id, "fa");
        assert_eq!(legs[0].format, LegFormat::Slin16);
        assert_eq!(
            legs[0].transport,
            LegTransport::AudioSocket {
                remote: "127.0.0.1:9".parse().unwrap(),
                uuid: uuid_bytes()
            }
        );
        assert_eq!(legs[1].format, LegFormat::Alaw);
        assert!(matches!(legs[1].transport, LegTransport::Rtp { .. }));
        (legs[0].link.clone(), legs[1].link.clone())
    };
    assert!(a.caller_feed().borrow().is_none());

    // Bridged with the caller: the feed names it and carries its signal.
    c.post("/ari/bridges?bridgeId=fb").await;
    let (s, _) = c
        .post(&format!("/ari/bridges/fb/addChannel?channel={id},fa"))
        .await;
    assert_eq!(s, 204);
    let feed = a.caller_feed().borrow().clone().unwrap();
    assert_eq!(feed.caller_id, id);
    assert_eq!(feed.signal, tone_signal());
    a.counters().add_sent(640, true);
    assert_eq!(emu.media_stats(&id).unwrap().voiced_frames_sent, 1);

    // DELETE stops the leg; voxd ending the media hangs the other one up.
    assert!(!a.is_stopped());
    let (s, _) = c.delete("/ari/channels/fa").await;
    assert_eq!(s, 204);
    assert!(a.is_stopped());
    r.closed(LegClose::RemoteClosed);
    let types = types_until_destroyed(&mut ws, "fr").await;
    assert_eq!(
        types,
        ["ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"]
    );
    assert!(r.is_stopped());
    c.delete("/ari/bridges/fb").await;
    emu.hangup_caller(&id).unwrap();
    assert_eq!(emu.counters().live_channels, 0);
}
