//! Integration tests of `engine::io` over real loopback sockets: both readiness
//! backends (io_uring where this machine allows it, epoll always), `SO_REUSEPORT`
//! sockets, `recvmmsg`/`sendmmsg` batches, TCP accept/read/hang-up readiness and the
//! wait timeout. No timing asserts: waits are bounded by turn counts only.
//!
//! Must not: depend on io_uring being available (it is skipped with a reason instead)
//! or on any other module of the engine.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;

use voxd::engine::io::{
    open, recv_batch, send_batch, tcp_listener_reuseport, udp_socket_reuseport, AnyBackend,
    Backend, BackendChoice, BackendKind, Event, Events, Interest, UdpBatch, UringBackend,
};

/// Every backend this machine can open: epoll always; io_uring if `open(Auto)` picked
/// it (otherwise the fallback note is checked and the skip reported).
fn backends() -> Vec<AnyBackend> {
    let (epoll, note) = open(BackendChoice::Epoll).expect("epoll opens");
    assert_eq!(epoll.kind(), BackendKind::Epoll);
    assert!(note.is_none());
    let mut out = vec![epoll];
    let (auto, note) = open(BackendChoice::Auto).expect("auto opens something");
    match auto.kind() {
        BackendKind::IoUring => {
            assert!(note.is_none(), "no fallback note when io_uring opened");
            eprintln!("open(Auto) picked io_uring: {auto:?}");
            out.push(auto);
            // Also cover the one-shot re-arm path (pre-5.13 kernels).
            let oneshot = UringBackend::with_multishot(false).expect("io_uring opened once");
            assert!(!oneshot.is_multishot());
            out.push(AnyBackend::IoUring(Box::new(oneshot)));
        }
        BackendKind::Epoll => {
            let note = note.expect("fallback to epoll must come with a note");
            assert!(note.contains("io_uring"), "{note}");
            let err = open(BackendChoice::IoUring).expect_err("explicit io_uring must fail");
            assert!(err.to_string().contains("io_uring"), "{err}");
            eprintln!("io_uring backend test skipped: {note}");
        }
    }
    out
}

/// Waits (bounded number of turns, 100 ms each), handing each turn's events to
/// `step`, until `step` returns true. `step` is first called with no events, so it also
/// acts as the "already done?" check. Panics if not done within the bound.
fn run_until(
    backend: &mut AnyBackend,
    events: &mut Events,
    mut step: impl FnMut(&[Event]) -> bool,
) {
    if step(&[]) {
        return;
    }
    for _ in 0..300 {
        backend.wait(Some(100), events).expect("wait");
        if step(events.as_slice()) {
            return;
        }
    }
    panic!("{}: condition not reached", backend.kind().as_str());
}

fn payload(seq: u32) -> Vec<u8> {
    let len = 8 + (seq as usize * 37) % 1400;
    let mut p = vec![0u8; len];
    p[..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(len as u32).to_be_bytes());
    for (i, b) in p[8..].iter_mut().enumerate() {
        *b = (seq as usize + i) as u8;
    }
    p
}

/// Drains `sock` until EAGAIN (the edge-triggered contract), recording datagrams.
fn drain(sock: &UdpSocket, batch: &mut UdpBatch, got: &mut Vec<(Vec<u8>, SocketAddr)>) {
    loop {
        let n = recv_batch(sock, batch).expect("recv_batch");
        if n == 0 {
            return;
        }
        for i in 0..n {
            assert!(!batch.is_truncated(i));
            let (bytes, from) = batch.get(i);
            got.push((bytes.to_vec(), from));
        }
    }
}

#[test]
fn udp_reuseport_receive_1000_datagrams_from_4_sources() {
    for mut backend in backends() {
        let kind = backend.kind().as_str();
        let rx_a = udp_socket_reuseport("127.0.0.1:0".parse().unwrap()).expect("first bind");
        let port_addr = rx_a.local_addr().unwrap();
        let rx_b = udp_socket_reuseport(port_addr).expect("second bind on the same port");
        assert_eq!(rx_b.local_addr().unwrap(), port_addr);
        let rx = [rx_a, rx_b];
        for (i, s) in rx.iter().enumerate() {
            backend
                .register(s.as_raw_fd(), i as u64, Interest::READABLE)
                .unwrap();
        }
        let senders: Vec<UdpSocket> = (0..4)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut batch = UdpBatch::new(64);
        let mut events = Events::with_capacity(16);
        let mut got = Vec::new();
        let mut per_socket = [0usize; 2];
        for burst in 0..20u32 {
            for seq in burst * 50..(burst + 1) * 50 {
                let s = &senders[seq as usize % 4];
                s.send_to(&payload(seq), port_addr).unwrap();
            }
            let want = ((burst + 1) * 50) as usize;
            run_until(&mut backend, &mut events, |evs| {
                for ev in evs {
                    assert!(!ev.error, "{kind}: error event");
                    if ev.readable {
                        let before = got.len();
                        drain(&rx[ev.token as usize], &mut batch, &mut got);
                        per_socket[ev.token as usize] += got.len() - before;
                    }
                }
                got.len() >= want
            });
        }
        assert_eq!(got.len(), 1000, "{kind}");
        let mut seen = vec![false; 1000];
        for (bytes, from) in &got {
            let seq = u32::from_be_bytes(bytes[..4].try_into().unwrap());
            assert!(seq < 1000, "{kind}: bad seq {seq}");
            assert!(!seen[seq as usize], "{kind}: duplicate {seq}");
            seen[seq as usize] = true;
            assert_eq!(bytes, &payload(seq), "{kind}: bytes of {seq}");
            assert_eq!(
                *from,
                senders[seq as usize % 4].local_addr().unwrap(),
                "{kind}: source of {seq}"
            );
        }
        eprintln!("{kind}: reuseport split {per_socket:?}");
        for s in &rx {
            backend.deregister(s.as_raw_fd()).unwrap();
        }
    }
}

#[test]
fn send_batch_64_datagrams_to_2_destinations() {
    for mut backend in backends() {
        let kind = backend.kind().as_str();
        let dst = [
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        ];
        for (i, s) in dst.iter().enumerate() {
            s.set_nonblocking(true).unwrap();
            backend
                .register(s.as_raw_fd(), 10 + i as u64, Interest::READABLE)
                .unwrap();
        }
        let tx = udp_socket_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut out = UdpBatch::new(64);
        for seq in 0..64u32 {
            let d = dst[seq as usize % 2].local_addr().unwrap();
            assert!(out.push(&payload(seq), d));
        }
        assert!(out.is_full());
        assert!(!out.push(b"x", dst[0].local_addr().unwrap()));
        let outcome = send_batch(&tx, &mut out).expect("send_batch");
        assert_eq!(outcome.sent, 64, "{kind}: {outcome:?}");
        assert_eq!(outcome.dropped, 0);
        assert!(!outcome.would_block);
        assert!(out.is_empty(), "sent datagrams leave the batch");

        let mut rx = UdpBatch::new(16);
        let mut events = Events::with_capacity(8);
        let mut got = [Vec::new(), Vec::new()];
        run_until(&mut backend, &mut events, |evs| {
            for ev in evs {
                if ev.readable {
                    let i = (ev.token - 10) as usize;
                    drain(&dst[i], &mut rx, &mut got[i]);
                }
            }
            got.iter().map(Vec::len).sum::<usize>() >= 64
        });
        let from = tx.local_addr().unwrap();
        for (i, list) in got.iter().enumerate() {
            assert_eq!(list.len(), 32, "{kind}: destination {i}");
            for (bytes, src) in list {
                let seq = u32::from_be_bytes(bytes[..4].try_into().unwrap());
                assert_eq!(seq as usize % 2, i);
                assert_eq!(bytes, &payload(seq));
                assert_eq!(*src, from);
            }
        }
    }
}

#[test]
fn tcp_accept_read_and_hangup_readiness() {
    for mut backend in backends() {
        let kind = backend.kind().as_str();
        let listener = tcp_listener_reuseport("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let addr = listener.local_addr().unwrap();
        backend
            .register(listener.as_raw_fd(), 1, Interest::READABLE)
            .unwrap();
        let mut events = Events::with_capacity(8);

        let mut client = TcpStream::connect(addr).unwrap();
        let mut accept_ready = false;
        run_until(&mut backend, &mut events, |evs| {
            accept_ready |= evs.iter().any(|ev| ev.token == 1 && ev.readable);
            accept_ready
        });
        let (mut conn, peer) = listener.accept().expect("accept after readiness");
        assert_eq!(peer, client.local_addr().unwrap());
        conn.set_nonblocking(true).unwrap();
        backend
            .register(conn.as_raw_fd(), 2, Interest::READABLE)
            .unwrap();
        assert!(
            backend
                .register(conn.as_raw_fd(), 3, Interest::READABLE)
                .is_err(),
            "{kind}: double registration must fail"
        );

        client.write_all(b"hello voxd").unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 64];
        let mut read_until_block = |conn: &mut std::net::TcpStream, received: &mut Vec<u8>| loop {
            match conn.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) => panic!("read: {e}"),
            }
        };
        run_until(&mut backend, &mut events, |evs| {
            for ev in evs {
                if ev.token == 2 && ev.readable {
                    let eof = read_until_block(&mut conn, &mut received);
                    assert!(!eof, "{kind}: unexpected EOF");
                }
            }
            received.len() >= 10
        });
        assert_eq!(received, b"hello voxd");

        // Writable interest added on the fly is reported (the socket has room).
        backend
            .reregister(conn.as_raw_fd(), 2, Interest::BOTH)
            .unwrap();
        let mut writable = false;
        run_until(&mut backend, &mut events, |evs| {
            writable |= evs.iter().any(|ev| ev.token == 2 && ev.writable);
            writable
        });

        drop(client);
        let mut hup = false;
        let mut eof = false;
        run_until(&mut backend, &mut events, |evs| {
            for ev in evs.iter().filter(|ev| ev.token == 2) {
                hup |= ev.hup;
                if ev.readable {
                    let mut sink = Vec::new();
                    eof |= read_until_block(&mut conn, &mut sink);
                }
            }
            hup
        });
        assert!(hup, "{kind}: hup after client close");
        if !eof {
            // The event may carry hup before the read; EOF must be there now.
            let mut sink = Vec::new();
            assert!(read_until_block(&mut conn, &mut sink), "{kind}: EOF");
        }
        backend.deregister(conn.as_raw_fd()).unwrap();
        backend.deregister(listener.as_raw_fd()).unwrap();
        assert!(backend.deregister(conn.as_raw_fd()).is_err());
    }
}

#[test]
fn timeout_with_nothing_registered_returns_no_events() {
    for mut backend in backends() {
        let mut events = Events::with_capacity(4);
        backend.wait(Some(10), &mut events).unwrap();
        assert!(events.is_empty(), "{}", backend.kind().as_str());
        backend.wait(Some(0), &mut events).unwrap();
        assert!(events.is_empty());
    }
}

#[test]
fn deregistered_socket_reports_nothing_and_fd_reuse_is_clean() {
    for mut backend in backends() {
        let kind = backend.kind().as_str();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        backend
            .register(a.as_raw_fd(), 7, Interest::READABLE)
            .unwrap();
        backend.deregister(a.as_raw_fd()).unwrap();
        let fd = a.as_raw_fd();
        drop(a);
        // Likely reuses the same fd number: only the new token may be reported.
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        backend
            .register(b.as_raw_fd(), 8, Interest::READABLE)
            .unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"ping", b.local_addr().unwrap()).unwrap();
        let mut tokens: HashMap<u64, usize> = HashMap::new();
        let mut events = Events::with_capacity(4);
        let mut batch = UdpBatch::new(4);
        let mut got = Vec::new();
        run_until(&mut backend, &mut events, |evs| {
            for ev in evs {
                *tokens.entry(ev.token).or_default() += 1;
                if ev.token == 8 && ev.readable {
                    drain(&b, &mut batch, &mut got);
                }
            }
            !got.is_empty()
        });
        assert_eq!(got[0].0, b"ping");
        assert!(
            tokens.keys().all(|t| *t == 8),
            "{kind} (fd {fd}): {tokens:?}"
        );
    }
}

#[test]
fn more_ready_sockets_than_event_capacity_are_all_reported() {
    for mut backend in backends() {
        let kind = backend.kind().as_str();
        let socks: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, s) in socks.iter().enumerate() {
            s.set_nonblocking(true).unwrap();
            backend
                .register(s.as_raw_fd(), 100 + i as u64, Interest::READABLE)
                .unwrap();
        }
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in &socks {
            tx.send_to(b"x", s.local_addr().unwrap()).unwrap();
        }
        let mut events = Events::with_capacity(2);
        let mut batch = UdpBatch::new(4);
        let mut got = vec![Vec::new(); 8];
        run_until(&mut backend, &mut events, |evs| {
            assert!(evs.len() <= 2, "{kind}: capacity exceeded");
            for ev in evs {
                if ev.readable {
                    let i = (ev.token - 100) as usize;
                    drain(&socks[i], &mut batch, &mut got[i]);
                }
            }
            got.iter().all(|g| g.len() == 1)
        });
        for s in &socks {
            backend.deregister(s.as_raw_fd()).unwrap();
        }
    }
}
