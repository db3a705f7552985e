//! The target's connection handling (`isomount serve`, [`isomount::target::session`]): any bytes
//! from an initiator, before or after a valid login, end in responses or a closed connection,
//! never a panic or a hang. The first byte chooses: bit 0, log in first (straight to the full
//! feature phase, so the fuzzer reaches commands at once); bit 1, with CRC32C digests. The rest
//! is what the initiator sends.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use isomount::iscsi::pdu::{decode, Bhs, Framing, LoginRequest, Pdu, Stage};
use isomount::iscsi::text;
use isomount::target::config::AllowList;
use isomount::target::scsi::{DeviceType, LogicalUnit};
use isomount::target::{session, ExportedTarget, LunData, MemorySource, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The name of the one target served.
pub const IQN: &str = "iqn.2026-01.org.isomount.fuzz:disk";
/// Bytes of the disk served: 128 blocks of 512.
pub const DISK_BYTES: usize = 64 * 1024;
/// Mode bits of the first byte.
pub const LOG_IN: u8 = 1;
pub const DIGESTS: u8 = 2;
/// The MaxRecvDataSegmentLength the login offers.
pub const MAX_RECV: u32 = 4096;

/// A Login Request of the operational stage, to the full feature phase, with `keys`.
pub fn operational_login(exp_stat_sn: u32, keys: &[(&str, &str)]) -> Pdu {
    let req = LoginRequest {
        transit: true,
        cont: false,
        csg: Stage::Operational,
        nsg: Stage::FullFeature,
        version_max: 0,
        version_min: 0,
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn,
    };
    Pdu::with_data(Bhs::LoginRequest(req), text::encode(keys))
}

/// A login straight to the full feature phase.
pub fn login(digests: bool) -> Bytes {
    let digest = if digests { "CRC32C" } else { "None" };
    let max_recv = MAX_RECV.to_string();
    let keys = [
        ("InitiatorName", "iqn.2026-01.test:fuzz"),
        ("TargetName", IQN),
        ("HeaderDigest", digest),
        ("DataDigest", digest),
        ("MaxRecvDataSegmentLength", max_recv.as_str()),
    ];
    operational_login(0, &keys).to_bytes(&Framing::default())
}

/// Everything the target sent back for this input.
pub fn serve(data: &[u8]) -> Vec<u8> {
    let Some((&mode, wire)) = data.split_first() else {
        return Vec::new();
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let disk = Bytes::from((0..DISK_BYTES).map(|i| i as u8).collect::<Vec<u8>>());
        let target = ExportedTarget::new(
            IQN.to_string(),
            LogicalUnit::new(DeviceType::Disk, disk.len() as u64, "fuzz", "f1", IQN),
            LunData::Source(Arc::new(MemorySource::new(disk, 512))),
            AllowList::default(),
            None,
        );
        let server = Server::new(vec![target], None).expect("one target");
        let (client, conn) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:3260".parse().expect("addr");
        let serving = tokio::spawn(session::serve_connection(conn, peer, local, server));
        let (mut from_target, mut to_target) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = from_target.read_to_end(&mut sink).await;
            sink
        });
        if mode & LOG_IN != 0 {
            let _ = to_target.write_all(&login(mode & DIGESTS != 0)).await;
        }
        let _ = to_target.write_all(wire).await;
        let _ = to_target.shutdown().await;
        drop(to_target);
        let _ = serving.await;
        drain.await.unwrap_or_default()
    })
}

pub fn run(data: &[u8]) {
    serve(data);
}

/// Whether the target answered something in the full feature phase: the input got past login.
pub fn accepts(data: &[u8]) -> bool {
    let Some(&mode) = data.first() else {
        return false;
    };
    let mut out = BytesMut::from(&serve(data)[..]);
    let login = Framing {
        max_recv_data: MAX_RECV,
        ..Framing::default()
    };
    let full_feature = Framing {
        header_digest: mode & DIGESTS != 0,
        data_digest: mode & DIGESTS != 0,
        max_recv_data: MAX_RECV,
    };
    let mut framing = login;
    let mut logged_in = false;
    while let Ok(Some(pdu)) = decode(&mut out, &framing) {
        match pdu.bhs {
            Bhs::LoginResponse(r) if r.transit && r.nsg == Stage::FullFeature => {
                framing = full_feature;
                logged_in = true;
            }
            Bhs::LoginResponse(_) | Bhs::Reject(_) => {}
            _ if logged_in => return true,
            _ => {}
        }
    }
    false
}
