//! PDU decoder: never panics, bounds allocations, and what it decodes re-encodes to itself.
#![no_main]

use bytes::BytesMut;
use isomount::iscsi::pdu::{decode, split_sense, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, wire)) = data.split_first() else {
        return;
    };
    let framing = Framing {
        header_digest: mode & 1 != 0,
        data_digest: mode & 2 != 0,
        max_recv_data: 65536,
    };
    let mut buf = BytesMut::from(wire);
    for _ in 0..64 {
        match decode(&mut buf, &framing) {
            Ok(Some(pdu)) => {
                let _ = split_sense(&pdu.data);
                let mut again = BytesMut::new();
                pdu.encode(&framing, &mut again);
                let back = decode(&mut again, &framing)
                    .expect("re-encoded PDU decodes")
                    .expect("re-encoded PDU is complete");
                assert_eq!(back, pdu);
            }
            Ok(None) | Err(_) => break,
        }
    }
});
