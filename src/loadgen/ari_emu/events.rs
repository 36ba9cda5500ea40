//! The events WebSocket of the ARI emulator (`GET /ari/events?app=..`): registers
//! the client's applications before the upgrade completes (so a call placed right
//! after the handshake already finds its app), then forwards the events queued for
//! it and watches for the client going away.
//!
//! Owns: one task per WebSocket, its bounded event queue's receiving end, and the
//! subscriber's removal when the socket ends.
//!
//! Must not: build events (the state does, under its lock) or block on a slow
//! client (the state drops a subscriber whose queue is full).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::rest::error;
use super::state::{Subscriber, WsOut};
use super::Inner;

/// Handles `/ari/events`: 400 without `app`, 400 when not a WebSocket upgrade,
/// otherwise 101 and a subscriber for each named app (comma-separated).
pub(crate) async fn ws_handler(
    State(inner): State<Arc<Inner>>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if method != Method::GET {
        return error(405, "Invalid method");
    }
    let apps: Vec<String> = q
        .get("app")
        .map(|a| {
            a.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if apps.is_empty() {
        return error(400, "Missing parameter app");
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => return error(400, "WebSocket upgrade required"),
    };
    let (tx, rx) = mpsc::channel(inner.cfg.event_queue.max(1));
    let id = {
        let mut st = inner.lock();
        let id = st.next_sub;
        st.next_sub += 1;
        st.subscribers.push(Subscriber { id, apps, tx });
        st.counters.ws_connections += 1;
        id
    };
    let task_inner = inner.clone();
    ws.on_upgrade(move |socket| run(socket, rx, task_inner, id))
        .into_response()
}

async fn run(socket: WebSocket, mut rx: mpsc::Receiver<WsOut>, inner: Arc<Inner>, id: u64) {
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(WsOut::Text(t)) => {
                    if sink.send(Message::Text(t)).await.is_err() {
                        break;
                    }
                }
                Some(WsOut::Close(code, reason)) => {
                    let frame = CloseFrame { code, reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
                Some(WsOut::Abort) => break,
                None => {
                    // Dropped by the emulator (queue overflow or drop fault).
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            },
            msg = stream.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    inner.lock().subscribers.retain(|s| s.id != id);
}
