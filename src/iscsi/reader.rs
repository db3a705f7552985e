//! The one PDU read loop, shared by the initiator and the target: bytes from a stream into
//! whole PDUs (RFC 7143 §11: BHS, AHS, data segment, padding, digests), decoded by
//! [`pdu::decode`] without copying the data segment.
//!
//! [`PduReader::read`] is cancel safe (received bytes stay in the reader), so callers put it in
//! a `select!` beside their timers. A frame whose length is sound but whose content is not (a
//! data digest mismatch, a reserved field) is dropped whole and reported with its header, so a
//! target can answer with a Reject (§11.17) and go on; a frame whose length cannot be trusted
//! (a header digest mismatch, a data segment above our limit) ends the connection.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::pdu::{self, Framing, Pdu, PduError, BHS_LEN};

/// Why no PDU could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection in the middle of a PDU.
    #[error("connection closed in the middle of a PDU")]
    Truncated,
    /// Bytes that are not a PDU; where the next one starts is unknown.
    #[error("{0}")]
    Malformed(#[from] PduError),
    /// A frame of sound length with bad content, dropped whole; its header is kept for a Reject.
    #[error("{error}")]
    Dropped {
        error: PduError,
        header: [u8; BHS_LEN],
    },
}

/// How a reader allocates its receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffering {
    /// Room for whole PDUs ahead, 4 MiB at a time, so a PDU that straddles two reads is rarely
    /// moved (the initiator's stream of Data-In).
    Streaming,
    /// Small allocations; a PDU gets its room once its header has arrived (a target's many,
    /// mostly idle, connections).
    Frugal,
}

/// Reads PDUs off a byte stream with the framing in effect (digests, our data segment limit).
#[derive(Debug)]
pub struct PduReader {
    buf: BytesMut,
    framing: Framing,
    buffering: Buffering,
}

impl PduReader {
    pub fn new(framing: Framing, buffering: Buffering) -> Self {
        Self {
            buf: BytesMut::new(),
            framing,
            buffering,
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The framing changes at the end of login (digests, MaxRecvDataSegmentLength).
    pub fn set_framing(&mut self, framing: Framing) {
        self.framing = framing;
    }

    /// The next PDU among the bytes already received, without reading.
    pub fn buffered(&mut self) -> Result<Option<Pdu>, ReadError> {
        match pdu::decode(&mut self.buf, &self.framing) {
            Ok(found) => Ok(found),
            Err(error @ (PduError::DataDigest | PduError::Malformed(_))) => {
                let total = pdu::frame_len(&self.buf, &self.framing)?
                    .unwrap_or(self.buf.len())
                    .min(self.buf.len());
                let mut header = [0u8; BHS_LEN];
                header.copy_from_slice(&self.buf[..BHS_LEN]);
                let _ = self.buf.split_to(total);
                Err(ReadError::Dropped { error, header })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The next PDU, reading as needed. `Ok(None)`: the peer closed the connection between PDUs.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<Option<Pdu>, ReadError> {
        loop {
            if let Some(pdu) = self.buffered()? {
                return Ok(Some(pdu));
            }
            if self.fill(reader).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// One read from the stream into the buffer (cancel safe): the bytes received, 0 when the
    /// peer closed the connection between PDUs. Take the PDUs with [`PduReader::buffered`].
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<usize, ReadError> {
        let (room, allocation) = match self.buffering {
            Buffering::Streaming => {
                let room = self.framing.max_recv_data as usize + 4096;
                (room, (4 << 20).max(2 * room))
            }
            Buffering::Frugal => (1024, 16 * 1024),
        };
        if self.buf.capacity() - self.buf.len() < room {
            self.buf.reserve(allocation);
        }
        match reader.read_buf(&mut self.buf).await? {
            0 if self.buf.is_empty() => Ok(0),
            0 => Err(ReadError::Truncated),
            n => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{Bhs, NopIn};
    use bytes::Bytes;

    fn nop(itt: u32, data: &'static [u8]) -> Pdu {
        Pdu::with_data(
            Bhs::NopIn(NopIn {
                itt,
                ..NopIn::default()
            }),
            Bytes::from_static(data),
        )
    }

    #[tokio::test]
    async fn pdus_split_across_reads_and_a_dropped_frame() {
        let framing = Framing {
            data_digest: true,
            ..Framing::default()
        };
        let mut wire = BytesMut::new();
        nop(1, b"first").encode(&framing, &mut wire);
        let mut bad = BytesMut::new();
        nop(2, b"digest").encode(&framing, &mut bad);
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        wire.extend_from_slice(&bad);
        nop(3, b"").encode(&framing, &mut wire);
        // One byte per read: every PDU straddles reads.
        let mut stream = one_byte_at_a_time(&wire);
        let mut reader = PduReader::new(framing, Buffering::Frugal);
        let first = reader.read(&mut stream).await.unwrap().unwrap();
        assert_eq!((first.bhs.itt(), &first.data[..]), (Some(1), &b"first"[..]));
        match reader.read(&mut stream).await {
            Err(ReadError::Dropped { error, header }) => {
                assert_eq!(error, PduError::DataDigest);
                assert_eq!(header[0], 0x20);
            }
            other => panic!("{other:?}"),
        }
        let third = reader.read(&mut stream).await.unwrap().unwrap();
        assert_eq!(third.bhs.itt(), Some(3));
        assert!(reader.read(&mut stream).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_truncated_pdu_and_an_oversized_one() {
        let mut wire = BytesMut::new();
        nop(1, b"abcd").encode(&Framing::default(), &mut wire);
        let mut stream = one_byte_at_a_time(&wire[..wire.len() - 2]);
        let mut reader = PduReader::new(Framing::default(), Buffering::Streaming);
        assert!(matches!(
            reader.read(&mut stream).await,
            Err(ReadError::Truncated)
        ));
        let mut big = [0u8; BHS_LEN];
        big[0] = 0x20;
        big[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        let mut stream = one_byte_at_a_time(&big);
        let mut reader = PduReader::new(Framing::default(), Buffering::Frugal);
        assert!(matches!(
            reader.read(&mut stream).await,
            Err(ReadError::Malformed(PduError::DataTooLong { .. }))
        ));
    }

    /// A stream that yields `bytes` one at a time, then end of file.
    fn one_byte_at_a_time(bytes: &[u8]) -> OneByOne {
        OneByOne {
            bytes: bytes.to_vec(),
            at: 0,
        }
    }

    struct OneByOne {
        bytes: Vec<u8>,
        at: usize,
    }

    impl AsyncRead for OneByOne {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(&byte) = self.bytes.get(self.at) {
                buf.put_slice(&[byte]);
                self.at += 1;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }
}
