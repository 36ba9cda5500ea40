//! ARI client against small in-process servers on 127.0.0.1:0.
//!
//! An axum server plays Asterisk's REST routes and the events WebSocket (checking the
//! basic-auth header everywhere); a rustls server thread plays ARI over HTTPS/WSS.
//! Checked: requests carry auth and the right paths and URL-encoded queries, status
//! codes map to typed errors (404, 422, 401, unreachable, timeout), events arrive
//! typed with unknown and bad ones skipped, pings are answered, a dropped events
//! connection is noticed and re-established (`connected` goes false, then true), and
//! TLS trusts `ca_file`, refuses an unknown CA and accepts anything only with
//! `ssl_verify: false`. No timing asserts: timeouts only bound hangs.

use std::collections::HashMap;
use std::net::TcpListener as StdTcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::json;
use tokio::sync::{mpsc, watch, Notify};
use voxd::ari::{
    AriError, AriEvent, AriRest, Backoff, EventsClient, EventsOptions, ExternalMedia, Fault,
    HangupReason, RestOptions,
};
use voxd::config::{AriScheme, AsteriskConfig, Secret};

const USER: &str = "voxd";
const PASS: &str = "p@ss:word";
const APP: &str = "voxd-test";
const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    auth_ok: bool,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    ws_connections: AtomicUsize,
    ws_queries: Mutex<Vec<String>>,
    pong_seen: AtomicBool,
    kick: Notify,
    release_second: Notify,
}

fn expected_auth() -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    format!("Basic {token}")
}

fn auth_ok(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected_auth())
}

fn err(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

fn channel_json(id: &str, name: &str) -> serde_json::Value {
    json!({
        "id": id, "name": name, "state": "Down",
        "caller": {"name": "", "number": ""},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {"context": "default", "exten": "s", "priority": 1},
        "creationtime": "2025-01-01T00:00:00.000+0000",
        "language": "en"
    })
}

async fn rest(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ok = auth_ok(&headers);
    s.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        auth_ok: ok,
    });
    if !ok {
        return err(StatusCode::UNAUTHORIZED, "Authentication required");
    }
    let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let q = |k: &str| q.get(k).cloned().unwrap_or_default();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["ari", "asterisk", "info"]) => Json(json!({
            "system": {"version": "22.7.0", "entity_id": "00:11:22:33:44:55"},
            "build": {"os": "Linux"}
        }))
        .into_response(),
        ("POST", ["ari", "channels", "gone", "answer"]) => {
            err(StatusCode::NOT_FOUND, "Channel not found")
        }
        ("POST", ["ari", "channels", "slow", "answer"]) => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["ari", "channels", _, "answer" | "redirect" | "continue"]) => {
            StatusCode::NO_CONTENT.into_response()
        }
        ("GET", ["ari", "channels", _, "variable"]) => match q("variable").as_str() {
            "AI_AGENT" => Json(json!({"value": "sales"})).into_response(),
            "EMPTY" => Json(json!({"value": ""})).into_response(),
            _ => err(StatusCode::NOT_FOUND, "Provided variable was not found"),
        },
        ("POST", ["ari", "bridges"]) => Json(json!({
            "id": q("bridgeId"), "technology": "simple_bridge",
            "bridge_type": q("type"), "name": "", "channels": []
        }))
        .into_response(),
        ("POST", ["ari", "bridges", _, "addChannel"]) => {
            if q("channel").contains("early") {
                err(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Channel not in Stasis application",
                )
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        ("DELETE", ["ari", "bridges", _]) | ("DELETE", ["ari", "channels", _]) => {
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["ari", "channels"]) => {
            Json(channel_json(&q("channelId"), &q("endpoint"))).into_response()
        }
        ("POST", ["ari", "channels", "externalMedia"]) => {
            let mut ch = channel_json(&q("channelId"), "UnicastRTP/127.0.0.1:18080-0x1");
            ch["channelvars"] = json!({
                "UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1",
                "UNICASTRTP_LOCAL_PORT": "14002"
            });
            Json(ch).into_response()
        }
        ("POST", ["ari", "channels", id, "play"]) => Json(json!({
            "id": q("playbackId"), "media_uri": q("media"),
            "state": "queued", "target_uri": format!("channel:{id}")
        }))
        .into_response(),
        _ => err(StatusCode::BAD_REQUEST, "no such route in the test server"),
    }
}

async fn events(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !auth_ok(&headers) {
        return err(StatusCode::UNAUTHORIZED, "Authentication required");
    }
    s.ws_queries
        .lock()
        .unwrap()
        .push(uri.query().unwrap_or("").to_string());
    let n = s.ws_connections.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 2 {
        // Hold the reconnect until the test has seen `connected == false`.
        s.release_second.notified().await;
    }
    ws.on_upgrade(move |sock| serve_events(sock, s, n))
}

fn text(v: serde_json::Value) -> WsMessage {
    WsMessage::Text(v.to_string())
}

async fn serve_events(mut sock: WebSocket, s: Arc<Shared>, n: usize) {
    if n == 1 {
        let msgs = vec![
            WsMessage::Ping(b"are you there".to_vec()),
            text(json!({
                "type": "StasisStart", "application": APP,
                "timestamp": "2025-01-01T00:00:00.000+0000",
                "args": ["agent=sales", "provider=openai"],
                "channel": channel_json("caller-1", "PJSIP/100-00000001"),
            })),
            text(json!({"type": "BridgeCreated", "bridge": {"id": "b"}})),
            WsMessage::Text("this is not json".to_string()),
            text(json!({"type": "StasisStart", "args": []})),
            text(json!({
                "type": "ChannelDtmfReceived", "digit": "5", "duration_ms": 100,
                "channel": channel_json("caller-1", "PJSIP/100-00000001"),
            })),
        ];
        for m in msgs {
            if sock.send(m).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = s.kick.notified() => return, // drop the socket without a close frame
                m = sock.recv() => match m {
                    Some(Ok(WsMessage::Pong(p))) if p == b"are you there" => {
                        s.pong_seen.store(true, Ordering::SeqCst);
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    } else {
        let end = text(json!({
            "type": "StasisEnd",
            "channel": channel_json("caller-1", "PJSIP/100-00000001"),
        }));
        if sock.send(end).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = sock.recv().await {}
    }
}

async fn start_server() -> (u16, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    let app = Router::new()
        .route("/ari/events", get(events))
        .fallback(rest)
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, shared)
}

fn cfg(port: u16) -> AsteriskConfig {
    AsteriskConfig {
        host: "127.0.0.1".to_string(),
        port,
        app_name: APP.to_string(),
        username: Secret::new(USER),
        password: Secret::new(PASS),
        ..AsteriskConfig::default()
    }
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_carry_auth_paths_and_encoded_queries() {
    let (port, shared) = start_server().await;
    let ari = AriRest::new(&cfg(port)).unwrap();

    let info = ari.asterisk_info().await.unwrap();
    assert_eq!(info.version.raw, "22.7.0");
    assert!(info.version.supports_slin16_audiosocket_kinds());
    assert_eq!(info.entity_id.as_deref(), Some("00:11:22:33:44:55"));

    ari.answer("1735.42").await.unwrap();
    assert_eq!(
        ari.get_variable("1735.42", "AI_AGENT").await.unwrap(),
        Some("sales".to_string())
    );
    assert_eq!(
        ari.get_variable("1735.42", "AI_PROVIDER").await.unwrap(),
        None
    );
    assert_eq!(ari.get_variable("1735.42", "EMPTY").await.unwrap(), None);

    let bridge = ari.create_bridge("br-1", "mixing").await.unwrap();
    assert_eq!(
        (bridge.id.as_str(), bridge.bridge_type.as_str()),
        ("br-1", "mixing")
    );
    ari.add_channels("br-1", &["1735.42", "media-1"])
        .await
        .unwrap();

    let endpoint = "AudioSocket/127.0.0.1:8090/0f8fad5b-d9cb-469f-a165-70867728950e/c(slin16)";
    let ch = ari
        .originate("media-1", endpoint, APP, Some("slin16"))
        .await
        .unwrap();
    assert_eq!(ch.id, "media-1");
    assert_eq!(
        ch.name, endpoint,
        "the server decoded what the client encoded"
    );

    let em = ari
        .external_media(&ExternalMedia::rtp("em-1", APP, "127.0.0.1:18080", "ulaw"))
        .await
        .unwrap();
    assert_eq!(em.id, "em-1");
    assert_eq!(
        em.unicast_rtp_local(),
        Some("127.0.0.1:14002".parse().unwrap())
    );
    let em = ari
        .external_media(&ExternalMedia::audiosocket(
            "em-2",
            APP,
            "127.0.0.1:8090",
            "slin16",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
        ))
        .await
        .unwrap();
    assert_eq!(em.id, "em-2");

    let pb = ari
        .play("1735.42", "sound:hello-world", "pb-1")
        .await
        .unwrap();
    assert_eq!(
        (pb.id.as_str(), pb.media_uri.as_str()),
        ("pb-1", "sound:hello-world")
    );
    ari.redirect("1735.42", "PJSIP/200").await.unwrap();
    ari.continue_in_dialplan("1735.42", Some("from-ai"), Some("s"), Some(2))
        .await
        .unwrap();
    ari.destroy_bridge("br-1").await.unwrap();
    ari.hangup("1735.42", HangupReason::Normal).await.unwrap();

    let seen = shared.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|s| s.auth_ok),
        "every request carried auth: {seen:#?}"
    );
    let reqs: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}?{}", s.method, s.path, s.query))
        .collect();
    let want = [
        "GET /ari/asterisk/info?only=system",
        "POST /ari/channels/1735.42/answer?",
        "GET /ari/channels/1735.42/variable?variable=AI_AGENT",
        "GET /ari/channels/1735.42/variable?variable=AI_PROVIDER",
        "GET /ari/channels/1735.42/variable?variable=EMPTY",
        "POST /ari/bridges?type=mixing&bridgeId=br-1",
        "POST /ari/bridges/br-1/addChannel?channel=1735.42%2Cmedia-1",
        "POST /ari/channels?endpoint=AudioSocket%2F127.0.0.1%3A8090%2F0f8fad5b-d9cb-469f-a165-70867728950e%2Fc%28slin16%29&app=voxd-test&channelId=media-1&formats=slin16",
        "POST /ari/channels/externalMedia?channelId=em-1&app=voxd-test&external_host=127.0.0.1%3A18080&format=ulaw&encapsulation=rtp&transport=udp",
        "POST /ari/channels/externalMedia?channelId=em-2&app=voxd-test&external_host=127.0.0.1%3A8090&format=slin16&encapsulation=audiosocket&transport=tcp&data=0f8fad5b-d9cb-469f-a165-70867728950e",
        "POST /ari/channels/1735.42/play?media=sound%3Ahello-world&playbackId=pb-1",
        "POST /ari/channels/1735.42/redirect?endpoint=PJSIP%2F200",
        "POST /ari/channels/1735.42/continue?context=from-ai&extension=s&priority=2",
        "DELETE /ari/bridges/br-1?",
        "DELETE /ari/channels/1735.42?reason=normal",
    ];
    assert_eq!(reqs, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_are_classified() {
    let (port, shared) = start_server().await;
    let ari = AriRest::new(&cfg(port)).unwrap();

    let e = ari.answer("gone").await.unwrap_err();
    assert!(
        matches!(e, AriError::NotFound { ref message, .. } if message == "Channel not found"),
        "{e:?}"
    );
    assert_eq!(e.fault(), Fault::Asterisk);

    let e = ari
        .add_channels("br-1", &["early-media"])
        .await
        .unwrap_err();
    assert!(matches!(e, AriError::Unprocessable { .. }), "{e:?}");
    assert_eq!(e.as_label(), "unprocessable");

    // Channel ids are single path segments: a '/' in one cannot reach another route,
    // and ids that would vanish from the path are refused before sending.
    ari.answer("x/../../bridges").await.unwrap();
    assert!(shared
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.path == "/ari/channels/x%2F..%2F..%2Fbridges/answer"));
    let e = ari.answer("..").await.unwrap_err();
    assert_eq!(e.fault(), Fault::Internal);

    let mut bad = cfg(port);
    bad.password = Secret::new("wrong");
    let e = AriRest::new(&bad)
        .unwrap()
        .asterisk_info()
        .await
        .unwrap_err();
    assert!(matches!(e, AriError::Auth { status: 401, .. }), "{e:?}");
    assert_eq!(e.fault(), Fault::Config);
    assert!(!e.to_string().contains("wrong"));

    let e = EventsClient::new(&bad, EventsOptions::default())
        .unwrap()
        .connect_once()
        .await
        .unwrap_err();
    assert!(matches!(e, AriError::Auth { status: 401, .. }), "{e:?}");

    let slow = AriRest::with_options(
        &cfg(port),
        RestOptions {
            request_timeout: Duration::from_millis(200),
            ..RestOptions::default()
        },
    )
    .unwrap();
    let e = slow.answer("slow").await.unwrap_err();
    assert!(matches!(e, AriError::Timeout { .. }), "{e:?}");
    assert!(e.is_retryable());

    let closed = StdTcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = AriRest::new(&cfg(dead_port))
        .unwrap()
        .asterisk_info()
        .await
        .unwrap_err();
    assert!(matches!(e, AriError::AsteriskUnreachable { .. }), "{e:?}");
    assert_eq!(e.fault(), Fault::Network);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_typed_and_the_connection_comes_back() {
    let (port, shared) = start_server().await;
    let client = EventsClient::new(
        &cfg(port),
        EventsOptions {
            backoff: Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(200),
                Duration::from_secs(10),
            ),
            connect_timeout: Duration::from_secs(30),
            jitter_seed: Some(7),
            ..EventsOptions::default()
        },
    )
    .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let (connected_tx, mut connected) = watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(client.run(tx, connected_tx, async move {
        let _ = stop_rx.await;
    }));

    within("connected", connected.wait_for(|c| *c))
        .await
        .unwrap();

    let ev = within("StasisStart", rx.recv()).await.unwrap();
    let AriEvent::StasisStart(start) = ev else {
        panic!("expected StasisStart, got {ev:?}");
    };
    assert_eq!(start.channel.id, "caller-1");
    assert_eq!(start.arg("agent"), Some("sales"));
    assert_eq!(start.arg("provider"), Some("openai"));
    // BridgeCreated (unknown), a non-JSON frame and a StasisStart without a channel
    // were skipped; the next event is the DTMF.
    let ev = within("DTMF", rx.recv()).await.unwrap();
    let AriEvent::ChannelDtmfReceived(dtmf) = ev else {
        panic!("expected ChannelDtmfReceived, got {ev:?}");
    };
    assert_eq!((dtmf.digit.as_str(), dtmf.duration_ms), ("5", 100));

    within("pong", async {
        while !shared.pong_seen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // The server drops the connection; the reconnect is held until we saw `false`.
    shared.kick.notify_one();
    within("disconnected", connected.wait_for(|c| !*c))
        .await
        .unwrap();
    shared.release_second.notify_one();
    within("reconnected", connected.wait_for(|c| *c))
        .await
        .unwrap();
    let ev = within("StasisEnd", rx.recv()).await.unwrap();
    assert!(
        matches!(ev, AriEvent::StasisEnd(ref e) if e.channel.id == "caller-1"),
        "{ev:?}"
    );
    assert!(shared.ws_connections.load(Ordering::SeqCst) >= 2);
    for q in shared.ws_queries.lock().unwrap().iter() {
        assert_eq!(q, "app=voxd-test&subscribeAll=false");
    }

    stop_tx.send(()).unwrap();
    within("task end", task).await.unwrap().unwrap();
    assert!(!*connected.borrow());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_task_ends_when_the_receiver_is_dropped() {
    let (port, _shared) = start_server().await;
    let (tx, rx) = mpsc::channel(1);
    let (connected_tx, mut connected) = watch::channel(false);
    let task = tokio::spawn(voxd::ari::run_events(
        cfg(port),
        tx,
        connected_tx,
        std::future::pending::<()>(),
    ));
    within("connected", connected.wait_for(|c| *c))
        .await
        .unwrap();
    drop(rx);
    within("task end", task).await.unwrap().unwrap();
}

// ---- TLS: a rustls server on a std thread, HTTP or WebSocket per connection. ----

const CA_PEM: &str = include_str!("../src/ari/testdata/test_ca.pem");
const SERVER_CERT_PEM: &str = include_str!("../src/ari/testdata/test_server.pem");
const SERVER_KEY_PEM: &str = include_str!("../src/ari/testdata/test_server.key");

// The handshake callback's error type (an HTTP response) is tungstenite's.
#[allow(clippy::result_large_err)]
fn tls_server(websocket: bool) -> u16 {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{BufRead, BufReader, Write};

    let certs = vec![CertificateDer::from_pem_slice(SERVER_CERT_PEM.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY_PEM.as_bytes()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(WAIT));
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                if websocket {
                    use tokio_tungstenite::tungstenite;
                    let check =
                        |req: &tungstenite::handshake::server::Request,
                         resp: tungstenite::handshake::server::Response| {
                            if auth_ok(req.headers()) {
                                Ok(resp)
                            } else {
                                Err(tungstenite::http::Response::builder()
                                    .status(401)
                                    .body(None)
                                    .unwrap())
                            }
                        };
                    let Ok(mut ws) = tungstenite::accept_hdr(tls, check) else {
                        return;
                    };
                    let ev = json!({"type": "StasisStart", "args": [],
                                    "channel": {"id": "tls-1"}});
                    let _ = ws.send(tungstenite::Message::Text(ev.to_string()));
                    while ws.read().is_ok() {}
                } else {
                    let mut reader = BufReader::new(&mut tls);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let body = r#"{"system":{"version":"20.17.0"}}"#;
                    let _ = write!(
                        tls,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.flush();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            });
        }
    });
    port
}

fn tls_cfg(port: u16) -> AsteriskConfig {
    AsteriskConfig {
        scheme: AriScheme::Https,
        ..cfg(port)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_trusts_ca_file_and_refuses_unknown_ca() {
    let https = tls_server(false);
    let wss = tls_server(true);
    let ca_path = std::env::temp_dir().join(format!("voxd-ari-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_path, CA_PEM).unwrap();

    // Default roots do not know the test CA.
    let e = AriRest::new(&tls_cfg(https))
        .unwrap()
        .asterisk_info()
        .await
        .unwrap_err();
    assert!(matches!(e, AriError::Tls { .. }), "{e:?}");
    assert_eq!(e.fault(), Fault::Config);

    // ca_file adds it; one config serves REST and the events WebSocket.
    let mut c = tls_cfg(https);
    c.ca_file = Some(ca_path.to_string_lossy().into_owned());
    let tls = voxd::ari::tls::client_config(&c).unwrap();
    let ari = AriRest::with_options(
        &c,
        RestOptions {
            tls: Some(tls.clone()),
            ..RestOptions::default()
        },
    )
    .unwrap();
    let info = ari.asterisk_info().await.unwrap();
    assert_eq!(info.version.raw, "20.17.0");

    let mut wc = c.clone();
    wc.port = wss;
    let events = EventsClient::new(
        &wc,
        EventsOptions {
            tls: Some(tls),
            ..EventsOptions::default()
        },
    )
    .unwrap();
    assert!(events.url().starts_with("wss://127.0.0.1:"));
    let (tx, mut rx) = mpsc::channel(4);
    let (connected_tx, _connected) = watch::channel(false);
    let task = tokio::spawn(events.run(tx, connected_tx, std::future::pending::<()>()));
    let ev = within("wss event", rx.recv()).await.unwrap();
    assert_eq!(ev.channel().unwrap().id, "tls-1");
    drop(rx);
    task.abort();

    // Without the CA, the WebSocket handshake fails as a TLS error too.
    let mut nc = tls_cfg(wss);
    nc.ca_file = None;
    let e = EventsClient::new(&nc, EventsOptions::default())
        .unwrap()
        .connect_once()
        .await
        .unwrap_err();
    assert!(matches!(e, AriError::Tls { .. }), "{e:?}");

    // ssl_verify: false accepts the unknown CA.
    let mut insecure = tls_cfg(https);
    insecure.ssl_verify = false;
    let info = AriRest::new(&insecure)
        .unwrap()
        .asterisk_info()
        .await
        .unwrap();
    assert!(info.version.supports_slin16_audiosocket_kinds());

    let _ = std::fs::remove_file(&ca_path);
}
