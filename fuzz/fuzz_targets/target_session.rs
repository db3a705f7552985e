//! The target's connection handling (`isomount serve`): any bytes from an initiator, before or
//! after a valid login, end in responses or a closed connection, never a panic or a hang.
#![no_main]

use std::net::SocketAddr;

use bytes::Bytes;
use isomount::iscsi::pdu::{Bhs, Framing, LoginRequest, Pdu, Stage};
use isomount::iscsi::text;
use isomount::target::config::AllowList;
use isomount::target::scsi::{DeviceType, LogicalUnit};
use isomount::target::{session, ExportedTarget, LunData, MemorySource, Server};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IQN: &str = "iqn.2026-01.org.isomount.fuzz:disk";

/// A login straight to the full feature phase, so the fuzzer reaches commands quickly.
fn login(digests: bool) -> Bytes {
    let digest = if digests { "CRC32C" } else { "None" };
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
        exp_stat_sn: 0,
    };
    let keys = text::encode(&[
        ("InitiatorName", "iqn.2026-01.test:fuzz"),
        ("TargetName", IQN),
        ("HeaderDigest", digest),
        ("DataDigest", digest),
        ("MaxRecvDataSegmentLength", "4096"),
    ]);
    Pdu::with_data(Bhs::LoginRequest(req), keys).to_bytes(&Framing::default())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, wire)) = data.split_first() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let disk = Bytes::from((0..64 * 1024).map(|i| i as u8).collect::<Vec<u8>>());
        let target = ExportedTarget::new(
            IQN.to_string(),
            LogicalUnit::new(DeviceType::Disk, disk.len() as u64, "fuzz", "f1", IQN),
            LunData::Source(std::sync::Arc::new(MemorySource::new(disk, 512))),
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
        });
        if mode & 1 != 0 {
            let _ = to_target.write_all(&login(mode & 2 != 0)).await;
        }
        let _ = to_target.write_all(wire).await;
        let _ = to_target.shutdown().await;
        drop(to_target);
        let _ = serving.await;
        let _ = drain.await;
    });
});
