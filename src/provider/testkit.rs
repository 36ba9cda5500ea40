//! Test support shared by the network providers' session tests: a scripted
//! WebSocket server on 127.0.0.1 and the waits every test needs. Test-only.
//!
//! Owns: nothing at run time (compiled for `cargo test` only). Must not: assert
//! timings; every deadline is a liveness limit ([`LIMIT`]).

// tungstenite's handshake callback returns `Result<Response, ErrorResponse>`.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{
    AgentEvent, Provider, SessionEnd, SessionIo, SessionMeta, SessionPeer, EVENTS_CAPACITY,
    OUT_CAPACITY,
};

/// Liveness limit for anything a test waits on.
pub const LIMIT: Duration = Duration::from_secs(10);

/// The server side of a scripted connection.
pub type ServerWs = WebSocketStream<TcpStream>;

/// Binds 127.0.0.1:0 and runs `script` on the first connection; when `auth` is
/// given, the `Authorization` header must equal it. Returns `ws://ADDR{path}` and
/// the script's task (await it: a failed assertion in the script fails the test).
pub async fn serve<F, Fut>(
    path: &str,
    auth: Option<&'static str>,
    script: F,
) -> (String, JoinHandle<()>)
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}{path}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut got = None;
        let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
            got = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string());
            Ok(resp)
        })
        .await
        .unwrap();
        if let Some(want) = auth {
            assert_eq!(got.as_deref(), Some(want));
        }
        script(ws).await;
    });
    (url, task)
}

/// Start `p`'s session for `meta` on the current runtime.
pub fn start(p: &dyn Provider, meta: SessionMeta) -> (SessionPeer, JoinHandle<SessionEnd>) {
    let (io, peer): (SessionIo, SessionPeer) = SessionIo::pair(EVENTS_CAPACITY, OUT_CAPACITY);
    (peer, p.start(meta, io))
}

/// The next data message from the client (pings and pongs skipped).
pub async fn next_msg(ws: &mut ServerWs) -> Message {
    loop {
        let m = tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("client message in time")
            .expect("socket open")
            .expect("socket ok");
        match m {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// The next message, which must be JSON text.
pub async fn next_json(ws: &mut ServerWs) -> Value {
    match next_msg(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a JSON text message, got {other:?}"),
    }
}

/// Send `v` as a text message.
pub async fn send_json(ws: &mut ServerWs, v: Value) {
    ws.send(Message::Text(v.to_string())).await.unwrap();
}

/// The client closed: a close frame or the end of the stream.
pub async fn expect_close(ws: &mut ServerWs) {
    loop {
        match tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("close in time")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("expected close, got {other:?}"),
        }
    }
}

/// The session's next agent event.
pub async fn next_event(peer: &mut SessionPeer) -> AgentEvent {
    tokio::time::timeout(LIMIT, peer.out.recv())
        .await
        .expect("agent event in time")
        .expect("session running")
}

/// How the session ended.
pub async fn end_of(task: JoinHandle<SessionEnd>) -> SessionEnd {
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("session ended in time")
        .unwrap()
}

/// Waits until the session has taken every queued caller event.
pub async fn drained(peer: &SessionPeer) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while peer.events.capacity() < EVENTS_CAPACITY {
        assert!(tokio::time::Instant::now() < deadline, "events not taken");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Property-test inputs for the server-message parsers of the network providers:
/// garbage, mutated real messages, and well-formed messages whose fields hold
/// JSON values of any type.
pub mod inputs {
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
    use serde_json::{Map, Value};

    /// Bytes that JSON punctuation and literals are made of, so that mutations
    /// often keep a message almost valid.
    const JSONISH: &[u8] = b"{}[]\":,0123456789.-+eE truefalsn\\u";

    /// Any text: arbitrary bytes read as (lossy) UTF-8, or arbitrary characters.
    pub fn garbage() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            any::<String>(),
            "[{}\\[\\]\":,a-z0-9 ]{0,64}",
        ]
    }

    /// One of `seeds` with 1 to 5 byte edits (replace, insert, delete, rarely
    /// truncate), read back as (lossy) UTF-8.
    pub fn mutated(seeds: &'static [&'static str]) -> impl Strategy<Value = String> {
        let byte = prop_oneof![any::<u8>(), select(JSONISH)];
        let edit = (0u8..10, any::<Index>(), byte);
        (0..seeds.len(), proptest::collection::vec(edit, 1..6)).prop_map(move |(i, edits)| {
            let mut b = seeds[i].as_bytes().to_vec();
            for (op, at, byte) in edits {
                let pos = at.index(b.len() + 1);
                match op {
                    0..=3 if pos < b.len() => b[pos] = byte,
                    4..=6 => b.insert(pos, byte),
                    7 | 8 if pos < b.len() => {
                        b.remove(pos);
                    }
                    9 => b.truncate(pos),
                    _ => {}
                }
            }
            String::from_utf8_lossy(&b).into_owned()
        })
    }

    /// Any JSON value, nested up to three levels.
    pub fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-zA-Z0-9+/=\\\\\"é ]{0,24}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A JSON object with `type` one of `kinds` and some of `fields` set to any
    /// JSON value.
    pub fn typed_message(
        kinds: &'static [&'static str],
        fields: &'static [&'static str],
    ) -> impl Strategy<Value = String> {
        (
            select(kinds),
            proptest::collection::vec((select(fields), json_value()), 0..5),
        )
            .prop_map(|(kind, fields)| {
                let mut m = Map::new();
                m.insert("type".into(), Value::from(kind));
                for (k, v) in fields {
                    m.insert(k.to_string(), v);
                }
                Value::Object(m).to_string()
            })
    }

    /// The `type` of `text` when it is a JSON object with a string `type` (the
    /// test oracle).
    pub fn type_of(text: &str) -> Option<String> {
        let v: Value = serde_json::from_str(text).ok()?;
        v.get("type")?.as_str().map(str::to_string)
    }

    /// Whether `text` cannot be a JSON object (first and last non-blank
    /// characters are not braces): every parser must refuse it.
    pub fn not_an_object(text: &str) -> bool {
        let t = text.trim_matches([' ', '\t', '\n', '\r']);
        !(t.starts_with('{') && t.ends_with('}'))
    }
}
