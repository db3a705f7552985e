//! The one PDU read loop, shared by the initiator and the target: bytes from a stream into
//! whole PDUs (RFC 7143 §11: BHS, AHS, data segment, padding, digests), decoded by
//! [`pdu::decode`] without copying the data segment.
//!
//! [`PduReader::read`] is cancel safe (received bytes stay in the reader), so callers put it in
//! a `select!` beside their timers. A frame whose length is sound but whose content is not (a
//! data digest mismatch, a reserved field) is dropped whole and reported with its header, so a
//! target can answer with a Reject (§11.17) and go on; a frame whose length cannot be trusted
//! (a header digest mismatch, a data segment above our limit) ends the connection.
//!
//! The initiator's reader ([`Buffering::Aligned`]) reads each header on its own and lands every
//! data segment of [`ALIGN`] bytes or more straight in a page-aligned buffer from
//! [`iobuf::pool`]: a READ's data then reaches the cache's direct writes and the reader as it
//! left the socket, with no copy.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::pdu::{self, Framing, Layout, Pdu, PduError, BHS_LEN};
use crate::iobuf::{self, AlignedBuffer, ALIGN};

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

/// How a reader allocates its receive buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffering {
    /// Headers read on their own, and each data segment of at least [`ALIGN`] bytes landed in
    /// a page-aligned buffer of its own from [`iobuf::pool`] (the initiator's stream of
    /// Data-In: its bytes go on to direct writes and to readers without being copied).
    Aligned,
    /// Small allocations; a PDU gets its room once its header has arrived (a target's many,
    /// mostly idle, connections).
    Frugal,
}

/// Reads PDUs off a byte stream with the framing in effect (digests, our data segment limit).
#[derive(Debug)]
pub struct PduReader {
    /// Received bytes: whole frames, or the header (and after the data, the data digest) of a
    /// frame whose data segment lands in `landing`.
    buf: BytesMut,
    framing: Framing,
    buffering: Buffering,
    /// The data segment of the frame whose header is in `buf`, with its padding, as it lands
    /// ([`Buffering::Aligned`], segments of [`ALIGN`] bytes or more).
    landing: Option<AlignedBuffer>,
}

/// What an aligned reader reads next.
enum Next {
    /// Up to this many more bytes into `buf` (never past the current frame).
    Buf(usize),
    /// Up to this many more bytes into the landing buffer.
    Landing(usize),
}

impl PduReader {
    pub fn new(framing: Framing, buffering: Buffering) -> Self {
        Self {
            buf: BytesMut::new(),
            framing,
            buffering,
            landing: None,
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The framing changes at the end of login (digests, MaxRecvDataSegmentLength).
    pub fn set_framing(&mut self, framing: Framing) {
        self.framing = framing;
    }

    /// The layout of the frame whose header is in `buf`, when its data segment lands in an
    /// aligned buffer of its own.
    fn landing_layout(&self) -> Result<Option<Layout>, PduError> {
        if self.buffering != Buffering::Aligned {
            return Ok(None);
        }
        Ok(pdu::layout(&self.buf, &self.framing)?.filter(|l| l.data_len >= ALIGN))
    }

    /// The next PDU among the bytes already received, without reading.
    pub fn buffered(&mut self) -> Result<Option<Pdu>, ReadError> {
        if let Some(layout) = self.landing_layout()? {
            return self.landed(&layout);
        }
        match pdu::decode(&mut self.buf, &self.framing) {
            Ok(found) => Ok(found),
            Err(error @ (PduError::DataDigest | PduError::Malformed(_))) => {
                let total = pdu::frame_len(&self.buf, &self.framing)?
                    .unwrap_or(self.buf.len())
                    .min(self.buf.len());
                let header = header_of(&self.buf);
                let _ = self.buf.split_to(total);
                Err(ReadError::Dropped { error, header })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The PDU whose data segment landed in the aligned buffer, once all of it is here.
    fn landed(&mut self, layout: &Layout) -> Result<Option<Pdu>, ReadError> {
        let complete = self.buf.len() == layout.data_start + layout.data_digest_len
            && self
                .landing
                .as_ref()
                .is_some_and(|l| l.len() == layout.padded_len);
        if !complete {
            return Ok(None);
        }
        let Some(landing) = self.landing.take() else {
            return Ok(None);
        };
        let frame = self.buf.split();
        let padded = iobuf::pool::READS.freeze(landing);
        let (header, data_digest) = frame.split_at(layout.data_start);
        match pdu::decode_parts(header, padded, data_digest, layout, &self.framing) {
            Ok(pdu) => Ok(Some(pdu)),
            Err(error @ (PduError::DataDigest | PduError::Malformed(_))) => {
                Err(ReadError::Dropped {
                    error,
                    header: header_of(&frame),
                })
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
        let got = match self.buffering {
            Buffering::Aligned => match self.next()? {
                Next::Buf(want) => {
                    self.buf.reserve(want);
                    reader.read_buf(&mut (&mut self.buf).limit(want)).await?
                }
                Next::Landing(want) => match self.landing.as_mut() {
                    Some(landing) => reader.read_buf(&mut landing.limit(want)).await?,
                    None => 0,
                },
            },
            Buffering::Frugal => {
                if self.buf.capacity() - self.buf.len() < 1024 {
                    self.buf.reserve(16 * 1024);
                }
                reader.read_buf(&mut self.buf).await?
            }
        };
        match got {
            0 if self.buf.is_empty() => Ok(0),
            0 => Err(ReadError::Truncated),
            n => Ok(n),
        }
    }

    /// What an aligned reader reads next: the rest of the current frame's header (the BHS, then
    /// what it announces), its data segment (into a landing buffer taken from the pool when the
    /// segment is large enough to be worth one), then its data digest, or a small frame whole.
    fn next(&mut self) -> Result<Next, ReadError> {
        let Some(layout) = pdu::layout(&self.buf, &self.framing)? else {
            return Ok(Next::Buf(BHS_LEN - self.buf.len()));
        };
        if layout.data_len < ALIGN {
            return Ok(Next::Buf(layout.total().saturating_sub(self.buf.len())));
        }
        if self.buf.len() < layout.data_start {
            return Ok(Next::Buf(layout.data_start - self.buf.len()));
        }
        let landing = match self.landing.take() {
            Some(landing) => landing,
            None => iobuf::pool::READS
                .take(layout.padded_len)
                .ok_or_else(|| ReadError::Io(std::io::ErrorKind::OutOfMemory.into()))?,
        };
        let landed = landing.len();
        self.landing = Some(landing);
        if landed < layout.padded_len {
            return Ok(Next::Landing(layout.padded_len - landed));
        }
        Ok(Next::Buf(
            (layout.data_start + layout.data_digest_len).saturating_sub(self.buf.len()),
        ))
    }
}

/// The BHS at the start of a frame (zeroes past what there is of it), for a Reject.
fn header_of(frame: &[u8]) -> [u8; BHS_LEN] {
    let mut header = [0u8; BHS_LEN];
    let n = frame.len().min(BHS_LEN);
    header[..n].copy_from_slice(&frame[..n]);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{Bhs, DataIn, NopIn};
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
        let mut reader = PduReader::new(Framing::default(), Buffering::Aligned);
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

    /// A Data-In of `len` bytes (a pattern that differs from one PDU to the next).
    fn data_in(itt: u32, len: usize) -> Pdu {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + itt as usize) as u8).collect();
        Pdu::with_data(
            Bhs::DataIn(DataIn {
                itt,
                ..DataIn::default()
            }),
            Bytes::from(data),
        )
    }

    #[tokio::test]
    async fn large_data_segments_land_aligned_and_exact_however_they_arrive() {
        let framing = Framing {
            header_digest: true,
            data_digest: true,
            max_recv_data: 262_144,
        };
        let mut with_ahs = data_in(4, ALIGN + 2);
        with_ahs.ahs = Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let pdus = vec![
            data_in(1, 262_144),
            nop(2, b"small, read whole"),
            data_in(3, 65_536 + 3),
            with_ahs,
            data_in(5, ALIGN - 1),
        ];
        let mut wire = BytesMut::new();
        for pdu in &pdus {
            pdu.encode(&framing, &mut wire);
        }
        for step in [1, 7, 4096, 100_000, wire.len()] {
            let mut stream = in_reads_of(&wire, step);
            let mut reader = PduReader::new(framing, Buffering::Aligned);
            for sent in &pdus {
                let got = reader.read(&mut stream).await.unwrap().unwrap();
                assert_eq!(&got, sent, "reads of {step} bytes");
                if got.data.len() >= ALIGN {
                    assert_eq!(got.data.as_ptr() as usize % ALIGN, 0, "landed aligned");
                }
            }
            assert!(reader.read(&mut stream).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_landed_segment_with_a_bad_digest_is_dropped_and_the_next_pdu_read() {
        let framing = Framing {
            data_digest: true,
            max_recv_data: 262_144,
            ..Framing::default()
        };
        let mut wire = BytesMut::new();
        let mut bad = BytesMut::new();
        data_in(1, 65_536).encode(&framing, &mut bad);
        bad[BHS_LEN + 1000] ^= 0x01;
        wire.extend_from_slice(&bad);
        data_in(2, 65_536).encode(&framing, &mut wire);
        let mut stream = in_reads_of(&wire, 5000);
        let mut reader = PduReader::new(framing, Buffering::Aligned);
        match reader.read(&mut stream).await {
            Err(ReadError::Dropped { error, header }) => {
                assert_eq!(error, PduError::DataDigest);
                assert_eq!(header[0] & 0x3f, 0x25, "the Data-In's own header");
            }
            other => panic!("{other:?}"),
        }
        let next = reader.read(&mut stream).await.unwrap().unwrap();
        assert_eq!(next, data_in(2, 65_536));
    }

    #[tokio::test]
    async fn a_connection_closed_while_a_segment_lands_is_truncated() {
        let framing = Framing {
            max_recv_data: 262_144,
            ..Framing::default()
        };
        let mut wire = BytesMut::new();
        data_in(1, 65_536).encode(&framing, &mut wire);
        let mut stream = in_reads_of(&wire[..BHS_LEN + 30_000], 4096);
        let mut reader = PduReader::new(framing, Buffering::Aligned);
        assert!(matches!(
            reader.read(&mut stream).await,
            Err(ReadError::Truncated)
        ));
    }

    /// A stream that yields `bytes` one at a time, then end of file.
    fn one_byte_at_a_time(bytes: &[u8]) -> InReads {
        in_reads_of(bytes, 1)
    }

    /// A stream that yields `bytes` at most `step` at a time, then end of file.
    fn in_reads_of(bytes: &[u8], step: usize) -> InReads {
        InReads {
            bytes: bytes.to_vec(),
            at: 0,
            step,
        }
    }

    struct InReads {
        bytes: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for InReads {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let at = self.at;
            let end = (at + self.step)
                .min(self.bytes.len())
                .min(at + buf.remaining());
            buf.put_slice(&self.bytes[at..end]);
            self.at = end;
            std::task::Poll::Ready(Ok(()))
        }
    }
}
