//! A hostile initiator, to try a target (`isomount serve`) with what a public portal gets from
//! the internet: malformed PDUs, oversized and endless login text, connections that never finish
//! logging in, and a session that reads its responses a byte at a time. Each function plays one
//! of them against a portal and returns the local addresses it used, so a test can find what
//! the target logged about each connection.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use isomount::iscsi::pdu::{Bhs, Framing, LoginRequest, Pdu, ScsiCommand, Stage};
use isomount::iscsi::text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::initiator::{read10, RawInitiator};

/// A login request PDU (operational stage to full feature phase) carrying `data`, with the C
/// (continue) bit as given.
fn login_pdu(data: Bytes, cont: bool) -> Bytes {
    let req = LoginRequest {
        transit: !cont,
        cont,
        csg: Stage::Operational,
        nsg: Stage::FullFeature,
        version_max: 0,
        version_min: 0,
        isid: [0x80, 0, 0, 0, 0, 7],
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    };
    Pdu::with_data(Bhs::LoginRequest(req), data).to_bytes(&Framing::default())
}

/// Read until the target closes the connection or `within` passes; whether it closed.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// How one hostile connection ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The connection's local address, as the target's log names its peer.
    pub local: SocketAddr,
    /// What this connection did.
    pub what: &'static str,
    /// Whether the target closed it within the bound given.
    pub closed: bool,
}

/// `count` connections that send half a login header and then nothing, held open; the caller
/// drops them (or waits for the target's login timeout to close them).
pub async fn half_logins(portal: &str, count: usize) -> std::io::Result<Vec<TcpStream>> {
    let header = login_pdu(
        text::encode(&[("InitiatorName", "iqn.2026-01.test:rude")]),
        false,
    );
    crate::load::descriptors_for(count).map_err(std::io::Error::other)?;
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(portal).await?;
        stream.write_all(&header[..20]).await?;
        held.push(stream);
    }
    Ok(held)
}

/// Malformed PDUs, each on its own connection: random bytes instead of a login, a login header
/// announcing a data segment far above any limit, a PDU cut off by the connection's end, and
/// after a good login a reserved opcode and then a bad header digest. Returns each connection
/// with whether the target closed it within `within` (the reserved opcode gets a Reject and the
/// session goes on until the bad digest ends it).
pub async fn malformed(
    portal: &str,
    target: &str,
    within: Duration,
) -> std::io::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut stream = TcpStream::connect(portal).await?;
    let local = stream.local_addr()?;
    stream.write_all(&junk).await?;
    out.push(Outcome {
        local,
        what: "random bytes instead of a login",
        closed: closed_within(&mut stream, within).await,
    });

    let mut huge = login_pdu(Bytes::new(), false).to_vec();
    huge[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    let mut stream = TcpStream::connect(portal).await?;
    let local = stream.local_addr()?;
    stream.write_all(&huge[..48]).await?;
    out.push(Outcome {
        local,
        what: "a login announcing a 16 MiB data segment",
        closed: closed_within(&mut stream, within).await,
    });

    let mut stream = TcpStream::connect(portal).await?;
    let local = stream.local_addr()?;
    let good = login_pdu(
        text::encode(&[("InitiatorName", "iqn.2026-01.test:rude")]),
        false,
    );
    stream.write_all(&good[..good.len() - 3]).await?;
    stream.shutdown().await?;
    out.push(Outcome {
        local,
        what: "a login cut off by the end of the connection",
        closed: closed_within(&mut stream, within).await,
    });

    let mut raw = RawInitiator::connect(portal).await.map_err(to_io)?;
    let local = raw.stream.local_addr()?;
    let status = raw.login_normal(target, true).await.map_err(to_io)?;
    if status != (0, 0) {
        return Err(std::io::Error::other(format!("login refused: {status:?}")));
    }
    let mut reserved = [0u8; 48];
    reserved[0] = 0x1c;
    let with_digest = {
        let mut v = reserved.to_vec();
        v.extend_from_slice(&[0, 0, 0, 0]); // a header digest that cannot be right
        v
    };
    raw.stream.write_all(&with_digest).await?;
    out.push(Outcome {
        local,
        what: "a bad header digest after login",
        closed: closed_within(&mut raw.stream, within).await,
    });
    Ok(out)
}

/// A login whose text is far longer than the target takes: one PDU whose data segment exceeds
/// any MaxRecvDataSegmentLength, and a sequence of continued PDUs past the text limit.
pub async fn oversized_text(portal: &str, within: Duration) -> std::io::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    let big = Bytes::from(vec![b'a'; 1 << 20]);
    let mut stream = TcpStream::connect(portal).await?;
    let local = stream.local_addr()?;
    // The target may close while we still write: that is the point.
    let _ = stream.write_all(&login_pdu(big, false)).await;
    out.push(Outcome {
        local,
        what: "a 1 MiB login text in one PDU",
        closed: closed_within(&mut stream, within).await,
    });

    let mut stream = TcpStream::connect(portal).await?;
    let local = stream.local_addr()?;
    let value = "x".repeat(8000);
    let piece = text::encode(&[("X-Filler", value.as_str())]);
    for _ in 0..16 {
        if stream
            .write_all(&login_pdu(piece.clone(), true))
            .await
            .is_err()
        {
            break;
        }
    }
    out.push(Outcome {
        local,
        what: "128 KB of continued login text",
        closed: closed_within(&mut stream, within).await,
    });
    Ok(out)
}

/// Login PDUs with the C bit set, a few bytes each, sent for as long as the target takes them
/// (at most `limit`): text that never ends.
pub async fn endless_text(
    portal: &str,
    limit: usize,
    within: Duration,
) -> std::io::Result<Outcome> {
    let mut stream = TcpStream::connect(portal).await?;
    let local = stream.local_addr()?;
    let piece = login_pdu(Bytes::from_static(b"X-More=yes"), true);
    let mut sink = vec![0u8; 4096];
    for _ in 0..limit {
        if stream.write_all(&piece).await.is_err() {
            break;
        }
        // The target answers each continued PDU with an empty response, or closes.
        match tokio::time::timeout(within, stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            _ => {}
        }
    }
    Ok(Outcome {
        local,
        what: "login text that never ends",
        closed: closed_within(&mut stream, within).await,
    })
}

/// A session that asks for much more than fits in the socket buffers, READ after READ, and then
/// reads one byte of the answers every `pace`, in a task of its own until it is aborted (or
/// sees the end of the connection). Returns the connection's local address and the task.
pub async fn slow_reader(
    portal: &str,
    target: &str,
    pace: Duration,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let mut raw = RawInitiator::connect(portal).await.map_err(to_io)?;
    let local = raw.stream.local_addr()?;
    let status = raw.login_normal(target, false).await.map_err(to_io)?;
    if status != (0, 0) {
        return Err(std::io::Error::other(format!("login refused: {status:?}")));
    }
    // 128 READs of 1 MiB (the whole command window), written without waiting for answers.
    let mut requests = Vec::new();
    for i in 0..128u32 {
        let (itt, cmd_sn) = raw.next_ids();
        let mut cdb = [0u8; 16];
        cdb[..10].copy_from_slice(&read10((i % 16) * 2048, 2048));
        let cmd = ScsiCommand {
            fin: true,
            read: true,
            attr: 1,
            itt,
            expected_length: 1 << 20,
            cmd_sn,
            cdb,
            ..Default::default()
        };
        requests.extend_from_slice(&Pdu::new(Bhs::ScsiCommand(cmd)).to_bytes(&raw.framing));
    }
    let (mut read_half, mut write_half) = raw.stream.into_split();
    let task = tokio::spawn(async move {
        // The target stops reading once its window is full, so this write may never finish.
        let writing = async {
            let _ = write_half.write_all(&requests).await;
            std::future::pending::<()>().await
        };
        let reading = async {
            let mut byte = [0u8; 1];
            while let Ok(1) = read_half.read(&mut byte).await {
                tokio::time::sleep(pace).await;
            }
        };
        tokio::select! {
            _ = reading => {}
            _ = writing => {}
        }
    });
    Ok((local, task))
}

fn to_io(e: crate::initiator::RawError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
