//! The engine end to end over real loopback sockets, with the echo agent: caller
//! audio goes in over AudioSocket or RTP, through a shard, the bridge, the echo
//! session on the control runtime, back through playout, and out again. No timing
//! asserts: only what arrives, and that a bad connection harms nobody else.

mod common;
use common::{frame, signal};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use voxd::engine::runner::Engine;
use voxd::media::{audiosocket, rtp};
use voxd::provider::Registry;

const YAML: &str = "
default_provider: echo
audiosocket: {host: 127.0.0.1, format: slin16}
external_media: {rtp_host: 127.0.0.1, codec: ulaw}
engine: {shards: 2, io_backend: auto}
barge_in: {enabled: false}
";

fn start(rt: &tokio::runtime::Runtime) -> Engine {
    let mut cfg = voxd::config::parse_str(YAML).expect("test config").config;
    // Any free port (the engine binds every shard to the port the first bind got).
    cfg.audiosocket.port = 0;
    cfg.external_media.rtp_port = 0;
    let reg = Arc::new(Registry::from_config(&cfg).expect("registry"));
    rt.block_on(async { Engine::start(&cfg, reg).expect("engine starts") })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Run one AudioSocket call: send `samples` as slin16 frames, collect what comes back
/// until all of it (minus silence frames) has arrived or `limit` passes.
fn audiosocket_call(
    addr: SocketAddr,
    uuid: [u8; 16],
    samples: &[i16],
    limit: Duration,
) -> Vec<i16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut out = frame(0x01, &uuid);
    for f in samples.chunks(320) {
        let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.extend(frame(0x12, &bytes));
    }
    s.write_all(&out).unwrap();
    let mut dec = audiosocket::Decoder::new();
    let mut buf = bytes::BytesMut::new();
    let mut got = Vec::new();
    let mut tmp = [0u8; 8192];
    let t0 = Instant::now();
    while got.len() < samples.len() && t0.elapsed() < limit {
        match s.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(_) => continue,
        }
        while let Ok(Some(f)) = dec.decode(&mut buf) {
            assert!(f.kind.is_audio(), "voxd sent a non-audio kind {:?}", f.kind);
            let pcm: Vec<i16> = f
                .payload
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            if pcm.iter().any(|&v| v != 0) {
                got.extend(pcm);
            }
        }
    }
    got
}

#[test]
fn audiosocket_echo_is_bit_exact_and_garbage_harms_only_its_connection() {
    let rt = runtime();
    let engine = start(&rt);
    let addr = engine.audiosocket_addr;

    // A garbage connection and an oversize frame, at the same time as a good call.
    let bad = std::thread::spawn(move || {
        let mut g = TcpStream::connect(addr).unwrap();
        let _ = g.write_all(&[0x10, 0xFF, 0xFF, 1, 2, 3]); // audio before UUID, oversize
        g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 64];
        // voxd closes it: EOF (or reset), never a hang.
        matches!(g.read(&mut b), Ok(0) | Err(_))
    });
    let sent = signal(16 * 1000, 7); // 1 s at 16 kHz
    let got = audiosocket_call(addr, [0x42; 16], &sent, Duration::from_secs(10));
    assert!(
        bad.join().unwrap(),
        "the garbage connection was closed by voxd"
    );
    assert_eq!(got.len(), sent.len(), "all audio came back");
    assert_eq!(got, sent, "echo over AudioSocket slin16 is bit-exact");
    rt.block_on(engine.stop());
}

#[test]
fn rtp_echo_is_g711_exact_with_sequential_packets() {
    let rt = runtime();
    let engine = start(&rt);
    let voxd = engine.rtp_addr;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // mu-law codes without 0x7F (the second zero code, which comes back as 0xFF).
    let codes: Vec<u8> = (0..160 * 50)
        .map(|i| [0x12u8, 0x80, 0x33, 0xE5, 0x01, 0xFE][i % 6] ^ ((i / 6) as u8 & 0x0F))
        .map(|c| if c == 0x7F || c == 0xFF { 0x7E } else { c })
        .collect();
    let mut pkt = [0u8; 200];
    for (i, p) in codes.chunks(160).enumerate() {
        let h = rtp::RtpHeader::new(rtp::PT_PCMU, 1000 + i as u16, 160 * i as u32, 0xABCD);
        let n = rtp::build(&h, p, &mut pkt).unwrap();
        sock.send_to(&pkt[..n], voxd).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    let mut seqs = Vec::new();
    while got.len() < codes.len() && t0.elapsed() < Duration::from_secs(10) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(from, voxd, "replies come from the address Asterisk sent to");
        let p = rtp::parse(&buf[..n]).expect("voxd sends valid RTP");
        assert_eq!(p.header.payload_type, rtp::PT_PCMU);
        assert_eq!(p.payload.len(), 160);
        seqs.push(p.header.sequence);
        if p.payload.iter().any(|&b| b != 0xFF) {
            got.extend_from_slice(p.payload);
        }
    }
    assert_eq!(got, codes, "echo over RTP PCMU is G.711-exact");
    for w in seqs.windows(2) {
        assert_eq!(
            w[1],
            w[0].wrapping_add(1),
            "outbound sequence +1 per packet"
        );
    }
    rt.block_on(engine.stop());
}

#[test]
fn rtp_from_a_source_outside_the_allowlist_is_dropped() {
    let rt = runtime();
    let mut cfg = voxd::config::parse_str(YAML).expect("test config").config;
    cfg.audiosocket.port = 0;
    cfg.external_media.rtp_port = 0;
    cfg.external_media.allowed_remote_hosts = vec!["127.0.0.2".into()];
    let reg = Arc::new(Registry::from_config(&cfg).unwrap());
    let engine = rt.block_on(async { Engine::start(&cfg, reg).unwrap() });
    let voxd = engine.rtp_addr;
    let send_some = |sock: &UdpSocket| {
        let mut pkt = [0u8; 200];
        for i in 0..10u16 {
            let h = rtp::RtpHeader::new(rtp::PT_PCMU, i, 160 * u32::from(i), 7);
            let n = rtp::build(&h, &[0x55; 160], &mut pkt).unwrap();
            sock.send_to(&pkt[..n], voxd).unwrap();
        }
    };
    let foreign = UdpSocket::bind("127.0.0.1:0").unwrap();
    foreign
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    send_some(&foreign);
    let mut buf = [0u8; 2048];
    assert!(
        foreign.recv_from(&mut buf).is_err(),
        "no call for a source outside the allowlist"
    );
    // The same packets from an allowed source start a call that answers.
    let allowed = UdpSocket::bind("127.0.0.2:0").unwrap();
    allowed
        .set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    send_some(&allowed);
    let (n, from) = allowed
        .recv_from(&mut buf)
        .expect("an allowed source gets frames");
    assert_eq!(from, voxd);
    assert!(rtp::parse(&buf[..n]).is_ok());
    let stats = rt.block_on(engine.stop());
    assert_eq!(stats.iter().map(|s| s.calls_started).sum::<u64>(), 1);
    assert!(stats.iter().map(|s| s.refused).sum::<u64>() >= 10);
}
