//! AudioSocket decoder under arbitrary input and arbitrary read chunking.
//!
//! Input: byte 0 picks the chunk size (1..=64) and the payload limit; the rest is the
//! TCP byte stream. Invariants: no panic; chunked decoding yields exactly the frames
//! (and the error) that decoding the whole stream at once does; every frame respects
//! the limit; every sendable frame re-encodes to the bytes it was decoded from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use voxd::media::audiosocket::{self, AudioSocketError, Decoder, Frame, Kind};

fn run(stream: &[u8], chunk: usize, limit: usize) -> (Vec<Frame>, Option<AudioSocketError>) {
    let mut dec = Decoder::with_max_payload(limit);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = (first & 0x3F) as usize + 1;
    let limit = match first >> 6 {
        0 => audiosocket::DEFAULT_MAX_PAYLOAD,
        1 => 320,
        2 => 16,
        _ => audiosocket::MAX_PAYLOAD,
    };

    let (chunked, chunked_err) = run(stream, chunk, limit);
    let (whole, whole_err) = run(stream, stream.len().max(1), limit);
    assert_eq!(chunked, whole, "chunking changed the frames");
    assert_eq!(chunked_err, whole_err, "chunking changed the error");
    if let Some(e) = &whole_err {
        assert!(matches!(e, AudioSocketError::PayloadTooLarge { .. }));
        assert!(e.is_peer_fault());
    }

    let mut offset = 0;
    for f in &whole {
        assert!(f.payload.len() <= limit);
        let wire = &stream[offset..offset + 3 + f.payload.len()];
        offset += wire.len();
        assert_eq!(Kind::from_u8(wire[0]), f.kind);

        // Typed accessors never panic and agree with each other.
        let _ = f.uuid();
        let _ = f.dtmf();
        let mut out = [0i16; 512];
        match (f.sample_count(), f.copy_samples_into(&mut out)) {
            (Ok(n), Ok(m)) => {
                assert_eq!(n, m);
                assert!(f.samples().unwrap().eq(out[..n].iter().copied()));
            }
            (Ok(n), Err(AudioSocketError::OutputTooSmall { needed, .. })) => assert_eq!(n, needed),
            (Err(a), Err(b)) => assert_eq!(a, b),
            other => panic!("sample_count and copy_samples_into disagree: {other:?}"),
        }

        // What voxd may send re-encodes to the same bytes.
        let mut re = BytesMut::new();
        if audiosocket::encode_raw(f.kind, &f.payload, &mut re).is_ok() {
            assert_eq!(&re[..], wire);
        } else {
            assert!(re.is_empty());
        }
    }
});
