//! PDU decoder ([`isomount::iscsi::pdu`]): never panics, bounds allocations, and what it decodes
//! re-encodes to itself. The first byte chooses the framing (bit 0: header digest, bit 1: data
//! digest); the rest is what arrives on the connection, decoded PDU after PDU.

use bytes::BytesMut;
use isomount::iscsi::pdu::{decode, split_sense, Framing, Pdu};

/// The framing the first byte asks for.
pub fn framing(mode: u8) -> Framing {
    Framing {
        header_digest: mode & 1 != 0,
        data_digest: mode & 2 != 0,
        max_recv_data: 65536,
    }
}

/// The PDUs the input decodes to, up to the first incomplete or malformed one.
fn decode_all(data: &[u8], each: impl Fn(&Pdu, &Framing)) -> usize {
    let Some((&mode, wire)) = data.split_first() else {
        return 0;
    };
    let framing = framing(mode);
    let mut buf = BytesMut::from(wire);
    let mut decoded = 0;
    while decoded < 64 {
        match decode(&mut buf, &framing) {
            Ok(Some(pdu)) => {
                each(&pdu, &framing);
                decoded += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    decoded
}

pub fn run(data: &[u8]) {
    decode_all(data, |pdu, framing| {
        let _ = split_sense(&pdu.data);
        let mut again = BytesMut::new();
        pdu.encode(framing, &mut again);
        let back = decode(&mut again, framing)
            .expect("re-encoded PDU decodes")
            .expect("re-encoded PDU is complete");
        assert_eq!(&back, pdu);
    });
}

pub fn accepts(data: &[u8]) -> bool {
    decode_all(data, |_, _| {}) > 0
}
