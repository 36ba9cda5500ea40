//! RTP parser under arbitrary datagrams.
//!
//! Invariants: no panic; an accepted packet's parts add up to the datagram; rebuilding
//! its header (as a plain header) and payload and parsing again gives the same header
//! fields and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxd::media::rtp::{self, RtpHeader};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = rtp::parse(data) else {
        return;
    };
    let ext_len = p.extension.map_or(0, |(_, d)| 4 + d.len());
    assert_eq!(
        12 + p.csrcs.len() + ext_len + p.payload.len() + p.padding_len as usize,
        data.len()
    );
    assert_eq!(p.csrc_ids().len(), p.header.csrc_count as usize);
    assert_eq!(p.extension.is_some(), p.header.extension);
    assert_eq!(p.padding_len != 0, p.header.padding);

    let plain = RtpHeader {
        padding: false,
        extension: false,
        csrc_count: 0,
        ..p.header
    };
    let mut out = vec![0u8; 12 + p.payload.len()];
    let n = rtp::build(&plain, p.payload, &mut out).expect("a parsed header rebuilds");
    let q = rtp::parse(&out[..n]).expect("a rebuilt packet parses");
    assert_eq!(q.header, plain);
    assert_eq!(q.payload, p.payload);

    let mut bm = bytes::BytesMut::new();
    rtp::build_into(&plain, p.payload, &mut bm).unwrap();
    assert_eq!(&bm[..], &out[..n]);
});
