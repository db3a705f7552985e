//! The seeds made from isomount's own encoders: valid manifests and index headers (with their
//! CRC32C), PDUs, text, SCSI responses and CDBs, target sessions, URLs and system use areas. The
//! ISO 9660 seeds are cut from images (`fixtures/sample.iso`, and the ones
//! `seeds/make-iso-seeds.sh` builds with xorriso). `tests/replay.rs` writes these into
//! `seeds/NAME/` when asked (`UPDATE_SEEDS=1`), and checks that every shipped seed still gets
//! past its target's first checks.

use bytes::{Bytes, BytesMut};
use isomount::cache::Geometry;
use isomount::iscsi::login::{DigestOffer, Login, LoginConfig, Opening};
use isomount::iscsi::pdu::{
    sense_segment, AsyncMessage, Bhs, DataIn, DataOut, LoginResponse, LogoutRequest,
    LogoutResponse, NopIn, NopOut, Pdu, R2t, Reject, ScsiCommand, ScsiResponse, SnackRequest,
    Stage, TaskMgmtRequest, TaskMgmtResponse, TextRequest, TextResponse,
};
use isomount::iscsi::text;
use isomount::manifest::{HashAlg, Manifest};
use isomount::scsi;
use isomount::target::scsi::{DeviceType, LogicalUnit, Outcome, Sense};

use crate::target_session::{DIGESTS, IQN, LOG_IN};

/// One generated seed: its target, its file name in `seeds/TARGET/`, its bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: &str, bytes: impl Into<Vec<u8>>) -> Seed {
    Seed {
        target,
        name: name.to_string(),
        bytes: bytes.into(),
    }
}

/// Every generated seed; `sample_iso` is `fixtures/sample.iso`.
pub fn generated(sample_iso: &[u8]) -> Vec<Seed> {
    let mut all = Vec::new();
    all.extend(manifests(sample_iso));
    all.extend(cache_indexes());
    all.extend(pdus());
    all.extend(texts());
    all.extend(send_targets());
    all.extend(target_sessions());
    all.extend(cdbs());
    all.extend(scsi_responses());
    all.extend(urls());
    all.extend(catalogs());
    all.extend(system_use_areas());
    all.extend(http_ranges());
    all.push(seed(
        "iso9660",
        "sample",
        sample_from_descriptors(sample_iso),
    ));
    all
}

/// Sectors of `fixtures/sample.iso` kept in its seed: from the first volume descriptor (16) up
/// to and with the last file's data (90); the padding after it only makes mutations slower.
/// (Cutting file data off too would make the reader refuse the directories naming those files.)
const SAMPLE_SECTORS: std::ops::Range<usize> = 16..91;

fn sample_from_descriptors(iso: &[u8]) -> Vec<u8> {
    let range = SAMPLE_SECTORS.start * 2048..SAMPLE_SECTORS.end * 2048;
    iso.get(range).unwrap_or_default().to_vec()
}

fn manifests(sample_iso: &[u8]) -> Vec<Seed> {
    let pattern: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let build = |data: &[u8], chunk| {
        Manifest::build(data, chunk, HashAlg::Sha256)
            .expect("manifest")
            .to_bytes()
    };
    let blake3 = Manifest::build(&pattern[..], 4096, HashAlg::Blake3)
        .expect("manifest")
        .to_bytes();
    vec![
        seed("manifest", "three-chunks", build(&pattern, 4096)),
        seed("manifest", "three-chunks-blake3", blake3),
        seed("manifest", "one-chunk", build(&pattern[..100], 65536)),
        seed("manifest", "sample-iso", build(sample_iso, 65536)),
    ]
}

fn cache_indexes() -> Vec<Seed> {
    let header = |chunk_size, image_size| Geometry {
        chunk_size,
        image_size,
    };
    let mut with_records = header(4096, 10_000).header().to_vec();
    for i in 0..3u8 {
        let mut record = [0u8; 48];
        record[..32].fill(i + 1);
        record[32..36].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        record[40..48].copy_from_slice(&1_767_225_600_000_000u64.to_be_bytes());
        with_records.extend_from_slice(&record);
    }
    vec![
        seed("cache_index", "header-64k", header(65536, 524_288).header()),
        seed(
            "cache_index",
            "header-short-last-chunk",
            header(4096, 10_000).header(),
        ),
        seed("cache_index", "header-and-records", with_records),
    ]
}

fn login_config(digest: DigestOffer, target: Option<&str>) -> LoginConfig {
    LoginConfig {
        initiator_name: "iqn.2026-01.org.isomount:fuzz".into(),
        target: target.map(str::to_string),
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 0,
        cid: 0,
        chap: None,
        digest,
        max_recv_data_segment_length: 262_144,
        max_burst_length: 262_144,
        opening: Opening::default(),
    }
}

/// Our initiator's first Login Request.
fn first_login(digest: DigestOffer, target: Option<&str>) -> Pdu {
    Login::start(login_config(digest, target), 0, 1).1
}

/// The Login Request that follows [`first_login`] once the target has answered it (StatSN 1).
fn operational_login() -> Pdu {
    crate::target_session::operational_login(
        2,
        &[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "4096"),
        ],
    )
}

fn wire(mode: u8, pdus: &[Pdu]) -> Vec<u8> {
    let framing = crate::pdu::framing(mode);
    let mut out = BytesMut::new();
    out.extend_from_slice(&[mode]);
    for pdu in pdus {
        pdu.encode(&framing, &mut out);
    }
    out.to_vec()
}

fn command(itt: u32, cmd_sn: u32, cdb: scsi::Cdb, expected_length: u32) -> Pdu {
    Pdu::new(Bhs::ScsiCommand(ScsiCommand {
        fin: true,
        read: expected_length > 0,
        attr: 1,
        itt,
        expected_length,
        cmd_sn,
        exp_stat_sn: 1,
        cdb,
        ..ScsiCommand::default()
    }))
}

fn pdus() -> Vec<Seed> {
    let target_keys = text::encode(&[
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("TargetPortalGroupTag", "1"),
    ]);
    let login_response = Pdu::with_data(
        Bhs::LoginResponse(LoginResponse {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_active: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 7,
            itt: 0,
            stat_sn: 1,
            exp_cmd_sn: 1,
            max_cmd_sn: 32,
            status_class: 0,
            status_detail: 0,
        }),
        target_keys,
    );
    let sector: Bytes = (0..512u32).map(|i| i as u8).collect::<Vec<u8>>().into();
    let data_in = |status: Option<u8>, data: Bytes| {
        Pdu::with_data(
            Bhs::DataIn(DataIn {
                fin: true,
                status,
                itt: 5,
                ttt: 0xffff_ffff,
                stat_sn: 2,
                exp_cmd_sn: 3,
                max_cmd_sn: 34,
                ..DataIn::default()
            }),
            data,
        )
    };
    let check_condition = Pdu::with_data(
        Bhs::ScsiResponse(ScsiResponse {
            status: scsi::status::CHECK_CONDITION,
            itt: 6,
            stat_sn: 3,
            exp_cmd_sn: 4,
            max_cmd_sn: 35,
            ..ScsiResponse::default()
        }),
        sense_segment(&Sense::LBA_OUT_OF_RANGE.fixed()),
    );
    let underflow = Pdu::new(Bhs::ScsiResponse(ScsiResponse {
        underflow: true,
        itt: 7,
        stat_sn: 4,
        residual: 1536,
        ..ScsiResponse::default()
    }));
    let mut extended_cdb = command(8, 5, scsi::read_capacity16(32), 32);
    // An Extended CDB AHS (§11.2.2.3): length 4 (3 + reserved), type 1, reserved, 3 CDB bytes.
    extended_cdb.ahs = Bytes::from_static(&[0, 4, 1, 0, 0xaa, 0xbb, 0xcc, 0]);
    let send_targets = Pdu::with_data(
        Bhs::TextResponse(TextResponse {
            fin: true,
            itt: 9,
            ttt: 0xffff_ffff,
            stat_sn: 5,
            ..TextResponse::default()
        }),
        text::encode(&[
            ("TargetName", "iqn.2026-01.org.example:disk"),
            ("TargetAddress", "127.0.0.1:3260,1"),
        ]),
    );
    let reject = Pdu::with_data(
        Bhs::Reject(Reject {
            reason: 0x09,
            stat_sn: 6,
            ..Reject::default()
        }),
        Bytes::copy_from_slice(&command(10, 6, scsi::test_unit_ready(), 0).bhs.to_bytes()),
    );
    let target_side = vec![
        login_response.clone(),
        data_in(None, sector.clone()),
        data_in(Some(scsi::status::GOOD), sector.clone()),
        check_condition.clone(),
        underflow.clone(),
        send_targets,
        Pdu::new(Bhs::NopIn(NopIn {
            itt: 0xffff_ffff,
            ttt: 0x10,
            stat_sn: 7,
            ..NopIn::default()
        })),
        Pdu::new(Bhs::R2t(R2t {
            itt: 11,
            ttt: 0x20,
            desired_length: 4096,
            ..R2t::default()
        })),
        Pdu::new(Bhs::AsyncMessage(AsyncMessage {
            event: 1,
            parameter3: 2,
            ..AsyncMessage::default()
        })),
        reject,
        Pdu::new(Bhs::TaskMgmtResponse(TaskMgmtResponse {
            itt: 12,
            ..TaskMgmtResponse::default()
        })),
        Pdu::new(Bhs::LogoutResponse(LogoutResponse {
            itt: 13,
            time2wait: 2,
            time2retain: 20,
            ..LogoutResponse::default()
        })),
    ];
    let initiator_side = vec![
        first_login(DigestOffer::PreferCrc32c, Some(IQN)),
        command(
            5,
            1,
            scsi::read(scsi::ReadKind::Disk, 16, 4).expect("cdb"),
            2048,
        ),
        extended_cdb,
        Pdu::with_data(
            Bhs::TextRequest(TextRequest {
                fin: true,
                itt: 9,
                ttt: 0xffff_ffff,
                ..TextRequest::default()
            }),
            text::encode(&[("SendTargets", "All")]),
        ),
        Pdu::new(Bhs::NopOut(NopOut {
            immediate: true,
            itt: 14,
            ttt: 0xffff_ffff,
            ..NopOut::default()
        })),
        Pdu::with_data(
            Bhs::DataOut(DataOut {
                fin: true,
                itt: 11,
                ttt: 0x20,
                ..DataOut::default()
            }),
            sector.clone(),
        ),
        Pdu::new(Bhs::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: 1,
            itt: 15,
            referenced_tag: 5,
            ..TaskMgmtRequest::default()
        })),
        Pdu::new(Bhs::SnackRequest(SnackRequest {
            kind: 1,
            itt: 16,
            run_length: 1,
            ..SnackRequest::default()
        })),
        Pdu::new(Bhs::LogoutRequest(LogoutRequest {
            immediate: true,
            itt: 17,
            ..LogoutRequest::default()
        })),
    ];
    let mut seeds = Vec::new();
    for (i, pdu) in target_side.iter().chain(&initiator_side).enumerate() {
        let name = format!("{i:02}-{:?}", pdu.opcode()).to_lowercase();
        seeds.push(seed("pdu", &name, wire(0, std::slice::from_ref(pdu))));
    }
    seeds.push(seed(
        "pdu",
        "digests-read-stream",
        wire(
            3,
            &[
                data_in(None, sector.clone()),
                data_in(Some(scsi::status::GOOD), sector),
                check_condition,
                underflow,
            ],
        ),
    ));
    seeds.push(seed(
        "pdu",
        "header-digest-login",
        wire(1, &[login_response]),
    ));
    seeds
}

fn texts() -> Vec<Seed> {
    vec![
        seed(
            "text",
            "initiator-offer",
            first_login(DigestOffer::PreferCrc32c, Some(IQN))
                .data
                .to_vec(),
        ),
        seed(
            "text",
            "discovery-offer",
            first_login(DigestOffer::Either, None).data.to_vec(),
        ),
        seed(
            "text",
            "target-answer",
            text::encode(&[
                ("HeaderDigest", "CRC32C"),
                ("DataDigest", "None"),
                ("MaxRecvDataSegmentLength", "262144"),
                ("MaxBurstLength", "1048576"),
                ("FirstBurstLength", "65536"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "Yes"),
                ("MaxOutstandingR2T", "1"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("ErrorRecoveryLevel", "0"),
                ("DefaultTime2Wait", "2"),
                ("DefaultTime2Retain", "20"),
                ("MaxConnections", "1"),
                ("TargetPortalGroupTag", "1"),
                ("TargetAlias", "fuzz disk"),
            ])
            .to_vec(),
        ),
        seed(
            "text",
            "chap",
            text::encode(&[
                ("AuthMethod", "CHAP,None"),
                ("CHAP_A", "5"),
                ("CHAP_I", "17"),
                ("CHAP_C", "0x0123456789abcdef0123456789abcdef"),
                ("CHAP_N", "reader"),
                ("CHAP_R", "0xfedcba9876543210fedcba9876543210"),
            ])
            .to_vec(),
        ),
        seed(
            "text",
            "redirect-and-irrelevant",
            text::encode(&[
                ("TargetAddress", "[::1]:3261,1"),
                ("X-com.example.Vendor", "NotUnderstood"),
                ("OFMarker", "Irrelevant"),
                ("MaxBurstLength", "0x10000"),
            ])
            .to_vec(),
        ),
    ]
}

fn send_targets() -> Vec<Seed> {
    vec![
        seed(
            "send_targets",
            "two-targets",
            text::encode(&[
                ("TargetName", "iqn.2026-01.org.example:one"),
                ("TargetAddress", "127.0.0.1:3261,1"),
                ("TargetAddress", "[::1]:3261,1"),
                ("TargetName", "iqn.2026-01.org.example:two"),
            ])
            .to_vec(),
        ),
        seed(
            "send_targets",
            "tgtd-style",
            text::encode(&[
                (
                    "TargetName",
                    "iqn.2009-04.org.example.mirror:netbsd-5.0-i386",
                ),
                ("TargetAddress", "192.0.2.10:3260,1"),
                ("TargetAddress", "192.0.2.10:3260,1"),
                ("TargetAddress", "mirror.example.org,2"),
            ])
            .to_vec(),
        ),
    ]
}

/// The SCSI commands a mount sends, as Command PDUs from CmdSN `cmd_sn` on.
fn mount_commands(cmd_sn: u32) -> Vec<Pdu> {
    let cdbs: [(scsi::Cdb, u32); 8] = [
        (scsi::inquiry(false, 0, 96), 96),
        (scsi::inquiry(true, 0x80, 255), 255),
        (scsi::inquiry(true, 0x83, 255), 255),
        (scsi::read_capacity10(), 8),
        (scsi::read_capacity16(32), 32),
        (scsi::report_luns(256), 256),
        (scsi::read(scsi::ReadKind::Disk, 0, 8).expect("cdb"), 4096),
        (scsi::test_unit_ready(), 0),
    ];
    cdbs.into_iter()
        .zip(0u32..)
        .map(|((cdb, len), i)| command(i + 1, cmd_sn + i, cdb, len))
        .collect()
}

fn logout(itt: u32, cmd_sn: u32) -> Pdu {
    Pdu::new(Bhs::LogoutRequest(LogoutRequest {
        immediate: false,
        reason: 0,
        itt,
        cmd_sn,
        exp_stat_sn: 2,
        ..LogoutRequest::default()
    }))
}

fn target_sessions() -> Vec<Seed> {
    let mut commands = mount_commands(1);
    commands.push(logout(100, 9));
    let mut others = vec![
        Pdu::with_data(
            Bhs::TextRequest(TextRequest {
                fin: true,
                itt: 1,
                ttt: 0xffff_ffff,
                cmd_sn: 1,
                exp_stat_sn: 2,
                ..TextRequest::default()
            }),
            text::encode(&[("SendTargets", "All")]),
        ),
        Pdu::new(Bhs::NopOut(NopOut {
            immediate: true,
            itt: 2,
            ttt: 0xffff_ffff,
            cmd_sn: 2,
            exp_stat_sn: 3,
            ..NopOut::default()
        })),
        Pdu::new(Bhs::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: 1,
            itt: 3,
            referenced_tag: 1,
            cmd_sn: 2,
            exp_stat_sn: 3,
            ..TaskMgmtRequest::default()
        })),
        command(
            4,
            2,
            scsi::read(scsi::ReadKind::Disk, 8, 1).expect("cdb"),
            512,
        ),
    ];
    // WRITE(10) of one block with immediate data (refused: the LUN is read-only), then VERIFY(10)
    // with BYTCHK=1 of block 0, its bytes sent unsolicited in a Data-Out.
    let block0: Bytes = (0..512usize).map(|i| i as u8).collect::<Vec<u8>>().into();
    let mut write = command(5, 3, [0u8; 16], 0);
    if let Bhs::ScsiCommand(c) = &mut write.bhs {
        c.cdb[..10].copy_from_slice(&[0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0]);
        c.write = true;
        c.expected_length = 512;
    }
    write.data = block0.clone();
    let mut verify = command(6, 4, [0u8; 16], 0);
    if let Bhs::ScsiCommand(c) = &mut verify.bhs {
        c.cdb[..10].copy_from_slice(&[0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0]);
        c.fin = false;
        c.write = true;
        c.expected_length = 512;
    }
    let data_out = Pdu::with_data(
        Bhs::DataOut(DataOut {
            fin: true,
            itt: 6,
            ttt: 0xffff_ffff,
            exp_stat_sn: 4,
            ..DataOut::default()
        }),
        block0,
    );
    others.extend([write, verify, data_out, logout(101, 5)]);
    // The target session's first byte is its mode, not a framing: digests only with DIGESTS.
    let stream = |mode: u8, pdus: &[Pdu]| {
        let digests = if mode & DIGESTS != 0 { 3 } else { 0 };
        let mut bytes = wire(digests, pdus);
        bytes[0] = mode;
        bytes
    };
    // A whole login of our own initiator, then commands.
    let mut own_login = vec![
        first_login(DigestOffer::Either, Some(IQN)),
        operational_login(),
    ];
    own_login.extend(mount_commands(1));
    vec![
        seed(
            "target_session",
            "mount-commands",
            stream(LOG_IN, &commands),
        ),
        seed(
            "target_session",
            "mount-commands-digests",
            stream(LOG_IN | DIGESTS, &commands),
        ),
        seed(
            "target_session",
            "text-nop-tmf-write-verify",
            stream(LOG_IN, &others),
        ),
        seed("target_session", "own-login", stream(0, &own_login)),
        seed(
            "target_session",
            "discovery",
            stream(
                0,
                &[
                    first_login(DigestOffer::Either, None),
                    operational_login(),
                    others[0].clone(),
                ],
            ),
        ),
    ]
}

/// CDBs and the LUN choice byte of the `cdb` target (0 disk, 1 CD, 2 one-byte disk, 3 huge
/// disk, 4 no LUN).
fn cdbs() -> Vec<Seed> {
    let read = |kind, lba, blocks| scsi::read(kind, lba, blocks).expect("cdb").to_vec();
    let list: Vec<(&str, u8, Vec<u8>)> = vec![
        ("inquiry", 0, scsi::inquiry(false, 0, 96).to_vec()),
        ("vpd-pages", 0, scsi::inquiry(true, 0, 255).to_vec()),
        ("vpd-serial", 1, scsi::inquiry(true, 0x80, 255).to_vec()),
        ("vpd-device-id", 0, scsi::inquiry(true, 0x83, 255).to_vec()),
        (
            "vpd-block-limits",
            3,
            scsi::inquiry(true, 0xb0, 255).to_vec(),
        ),
        ("read-capacity10", 3, scsi::read_capacity10().to_vec()),
        ("read-capacity16", 0, scsi::read_capacity16(32).to_vec()),
        ("report-luns", 4, scsi::report_luns(256).to_vec()),
        ("request-sense", 4, vec![0x03, 0, 0, 0, 18, 0]),
        ("test-unit-ready", 2, scsi::test_unit_ready()[..6].to_vec()),
        ("read6", 0, vec![0x08, 0, 0, 1, 2, 0]),
        ("read10", 0, read(scsi::ReadKind::Disk, 1, 8)),
        ("read12", 1, vec![0xa8, 0, 0, 0, 0, 16, 0, 0, 0, 8, 0, 0]),
        ("read16", 3, read(scsi::ReadKind::Disk, 1 << 40, 8)),
        (
            "verify10-bytchk",
            0,
            vec![0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0],
        ),
        ("pre-fetch16", 3, {
            let mut c = read(scsi::ReadKind::Disk, 1 << 33, 4);
            c[0] = 0x90;
            c
        }),
        ("mode-sense6", 0, vec![0x1a, 0, 0x3f, 0, 0xff, 0]),
        (
            "mode-sense10",
            1,
            vec![0x5a, 0x10, 0x3f, 0, 0, 0, 0, 0x10, 0, 0],
        ),
        (
            "read-toc",
            1,
            vec![0x43, 0x02, 0, 0, 0, 0, 1, 0x03, 0x24, 0],
        ),
        (
            "get-configuration",
            1,
            vec![0x46, 0x01, 0, 0, 0, 0, 0, 0x10, 0, 0],
        ),
        ("write10", 0, vec![0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
        (
            "synchronize-cache",
            2,
            vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
    ];
    list.into_iter()
        .map(|(name, lun, cdb)| {
            let mut bytes = vec![lun];
            bytes.extend(cdb);
            seed("cdb", name, bytes)
        })
        .collect()
}

/// What `isomount serve` answers, as the initiator's parsers see it.
fn scsi_responses() -> Vec<Seed> {
    let disk = LogicalUnit::new(DeviceType::Disk, 1 << 20, "fuzz", "serial-1", IQN);
    let cd = LogicalUnit::new(DeviceType::Cd, 2048 * 300, "fuzz cd", "serial-2", IQN);
    let data = |lun: &LogicalUnit, cdb: scsi::Cdb| match lun.execute(&cdb) {
        Outcome::Data(d) => d,
        other => panic!("{cdb:02x?}: {other:?}"),
    };
    let mut tgtd_inquiry = vec![0x00, 0x00, 0x05, 0x12, 0x3b, 0, 0, 0x02];
    tgtd_inquiry.extend_from_slice(b"IET     VIRTUAL-DISK    0001");
    tgtd_inquiry.resize(66, 0);
    vec![
        seed(
            "scsi_response",
            "inquiry",
            data(&disk, scsi::inquiry(false, 0, 96)),
        ),
        seed(
            "scsi_response",
            "inquiry-cd",
            data(&cd, scsi::inquiry(false, 0, 96)),
        ),
        seed("scsi_response", "inquiry-tgtd", tgtd_inquiry),
        seed(
            "scsi_response",
            "vpd-pages",
            data(&disk, scsi::inquiry(true, 0, 255)),
        ),
        seed(
            "scsi_response",
            "vpd-serial",
            data(&disk, scsi::inquiry(true, 0x80, 255)),
        ),
        seed(
            "scsi_response",
            "vpd-device-id",
            data(&disk, scsi::inquiry(true, 0x83, 255)),
        ),
        seed(
            "scsi_response",
            "read-capacity10",
            data(&cd, scsi::read_capacity10()),
        ),
        seed(
            "scsi_response",
            "read-capacity16",
            data(&disk, scsi::read_capacity16(32)),
        ),
        seed(
            "scsi_response",
            "report-luns",
            data(&disk, scsi::report_luns(256)),
        ),
        seed(
            "scsi_response",
            "sense-fixed",
            Sense::LBA_OUT_OF_RANGE.fixed(),
        ),
        seed(
            "scsi_response",
            "sense-descriptor",
            Sense::WRITE_PROTECTED.descriptor(),
        ),
    ]
}

fn urls() -> Vec<Seed> {
    [
        (
            "plain",
            "iscsi://127.0.0.1:3260/iqn.2026-01.org.example:disk/1",
        ),
        (
            "ipv6-digest",
            "iscsi://[::1]/iqn.2026-01.org.example:disk/0?digest=crc32c",
        ),
        (
            "chap",
            "iscsi://reader%s3cr3t-passw0rd@mirror.example.org:3261/iqn.x:y/2",
        ),
        (
            "query-none",
            "iscsi://host/eui.0123456789abcdef/16383?digest=none&digest=CRC32C",
        ),
        (
            "zone-id",
            "iscsi://[fe80::1%25eth0]:3260/iqn.2026-01.org.example:disk/0",
        ),
    ]
    .into_iter()
    .map(|(name, url)| seed("url", name, url.as_bytes()))
    .collect()
}

fn catalogs() -> Vec<Seed> {
    let all_keys = r#"# Every key an entry may have.
[[image]]
name = "netbsd-5.0"
description = "NetBSD 5.0 i386 install CD"
target = "iqn.2009-04.org.example.mirror:netbsd-5.0-i386"
lun = 1
portals = ["mirror-a.example.org:3260", "[2001:db8::1]:3261", "192.0.2.7"]
size = 367001600
manifest = "netbsd-5.0.manifest"
manifest_sha256 = "6f1c2e0d4b8a9c7e5d3f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d"
chap_user = "reader"
chap_secret_file = "/etc/isomount/netbsd.secret"
digest = "crc32c"
urls = ["https://cdn.example.org/netbsd-5.0-i386.iso", "http://[2001:db8::2]:8080/a%20b.iso?x=1"]

[[image]]
name = "web-only"
urls = ["http://192.0.2.8/web.iso"]
size = 2048
manifest = "https://cdn.example.org/web.manifest"
manifest_sha256 = "6f1c2e0d4b8a9c7e5d3f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d"

[[image]]
name = "scratch_disk+1"
target = "naa.6001405abcdef012"
portals = ["[::1]"]
size = 1
"#;
    vec![seed("catalog", "all-keys", all_keys.as_bytes())]
}

/// Answers to range requests: exact 206s (one past 4 GiB, one of unknown complete length), a 200
/// for the whole file, and answers that are refused (another range, another size, a 200 for a
/// part, a 416).
fn http_ranges() -> Vec<Seed> {
    use crate::http_range::encode;
    let big = 5u64 << 30;
    [
        ("partial", encode(100, 50, 1000, 206, "bytes 100-149/1000")),
        (
            "partial-past-4gib",
            encode(
                1 << 32,
                65536,
                big,
                206,
                "bytes 4294967296-4295032831/5368709120",
            ),
        ),
        (
            "partial-unknown-length",
            encode(0, 1, 10, 206, "bytes 0-0/*"),
        ),
        ("whole", encode(0, 1000, 1000, 200, "bytes 0-999/1000")),
        (
            "other-range",
            encode(100, 50, 1000, 206, "bytes 612-661/1000"),
        ),
        (
            "other-size",
            encode(100, 50, 1000, 206, "bytes 100-149/999"),
        ),
        (
            "ignores-range",
            encode(100, 50, 1000, 200, "bytes 0-999/1000"),
        ),
        (
            "not-satisfiable",
            encode(2000, 50, 3000, 416, "bytes 0-0/1000"),
        ),
    ]
    .into_iter()
    .map(|(name, bytes)| seed("http_range", name, bytes))
    .collect()
}

/// A SUSP entry: signature, length, version 1, body.
fn entry(sig: &[u8; 2], body: &[u8]) -> Vec<u8> {
    let mut e = vec![sig[0], sig[1], (body.len() + 4) as u8, 1];
    e.extend_from_slice(body);
    e
}

fn both32(v: u32) -> Vec<u8> {
    let mut b = v.to_le_bytes().to_vec();
    b.extend_from_slice(&v.to_be_bytes());
    b
}

/// System use areas: the first byte is the length of the record's own area, the rest after it
/// its continuation area.
fn system_use_areas() -> Vec<Seed> {
    let px: Vec<u8> = [0o100644, 1, 1000, 100, 7]
        .into_iter()
        .flat_map(both32)
        .collect();
    let ce: Vec<u8> = [30, 0, 237].into_iter().flat_map(both32).collect();
    let mut er = vec![10, 84, 135, 1];
    er.extend_from_slice(b"RRIP_1991ATHE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICSPLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.");
    let tf_short = [
        0x0e, 126, 1, 1, 0, 0, 0, 0, 126, 1, 1, 0, 0, 0, 0, 126, 1, 1, 0, 0, 0, 0,
    ];
    let mut tf_long = vec![0x82];
    tf_long.extend_from_slice(b"2026010100000000\x00");
    let root = [
        entry(b"SP", &[0xbe, 0xef, 0]),
        entry(b"PX", &px),
        entry(b"TF", &tf_short),
        entry(b"CE", &ce),
    ]
    .concat();
    let file = [
        entry(b"RR", &[0x89]),
        entry(b"NM", b"\x01a-rather-long-rock-ridge-"),
        entry(b"NM", b"\x00name.txt"),
        entry(b"PX", &px[..32]),
        entry(b"TF", &tf_long),
        entry(b"ZF", b"pz\x04\x0f\x00\x00\x10\x00"),
    ]
    .concat();
    let link = [
        entry(b"SL", b"\x00\x08\x00\x00\x03usr\x04\x00"),
        entry(b"SL", b"\x00\x01\x02li\x00\x01b\x02\x00"),
        entry(b"NM", b"\x02"),
    ]
    .concat();
    let relocated = [
        entry(b"CL", &both32(40)),
        entry(b"PL", &both32(23)),
        entry(b"RE", &[]),
        entry(b"ST", &[]),
    ]
    .concat();
    let with_continuation = |own: &[u8], more: &[u8]| {
        let mut s = vec![own.len() as u8];
        s.extend_from_slice(own);
        s.extend_from_slice(more);
        s
    };
    vec![
        seed(
            "susp",
            "root-with-er",
            with_continuation(&root, &entry(b"ER", &er)),
        ),
        seed("susp", "file", with_continuation(&file, &[])),
        seed("susp", "symlink-continued", {
            let first_entry = usize::from(link[2]);
            with_continuation(&link[..first_entry], &link[first_entry..])
        }),
        seed("susp", "relocated", with_continuation(&relocated, &[])),
    ]
}
