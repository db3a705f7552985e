//! A scripted iSCSI target on 127.0.0.1 that misbehaves on purpose, one [`Misbehaviour`] per
//! instance: it logs in anonymously, answers the probe (TEST UNIT READY, INQUIRY and VPD pages
//! 0x00/0x80/0x83, READ CAPACITY) and serves the image's first `honest_bytes` correctly, then
//! answers every READ past them with its fault. Written from RFC 7143 §11 directly (a test
//! target needs to be independent of the initiator's codec), std only, one thread per
//! connection; dropping it closes the listener and every connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The target's name.
pub const HOSTILE_IQN: &str = "iqn.2026-11.org.isomount.test:hostile";

const BLOCK: usize = 512;
const SEGMENT: usize = 64 * 1024;
const WINDOW: u32 = 32;
const RESERVED_TAG: u32 = 0xffff_ffff;

/// What the target does to a READ past its honest bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A Data-In announcing a data segment of 16 MiB - 1, far above what was negotiated.
    OversizedSegment,
    /// More data than the command's transfer length.
    Overrun,
    /// A PDU with the reserved opcode 0x1c.
    ReservedOpcode,
    /// A Data-In for an Initiator Task Tag never issued.
    UnknownItt,
    /// 4 KiB of random bytes.
    RandomBytes,
    /// The Data-In header, then its data one byte a second.
    Trickle,
    /// GOOD status with no data.
    GoodWithoutData,
    /// A Reject (reason 0x09, invalid PDU field) of the valid command.
    RejectValidCommand,
}

impl Misbehaviour {
    pub const ALL: [Misbehaviour; 8] = [
        Misbehaviour::OversizedSegment,
        Misbehaviour::Overrun,
        Misbehaviour::ReservedOpcode,
        Misbehaviour::UnknownItt,
        Misbehaviour::RandomBytes,
        Misbehaviour::Trickle,
        Misbehaviour::GoodWithoutData,
        Misbehaviour::RejectValidCommand,
    ];
}

/// A running hostile target.
pub struct HostileTarget {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    image: Vec<u8>,
    honest_bytes: u64,
    misbehaviour: Misbehaviour,
    stop: AtomicBool,
    logins: AtomicU64,
    open: Mutex<Vec<TcpStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl HostileTarget {
    /// Serves `image` (a multiple of 512 bytes) as LUN 0 of [`HOSTILE_IQN`].
    pub fn start(image: Vec<u8>, honest_bytes: u64, misbehaviour: Misbehaviour) -> HostileTarget {
        assert_eq!(image.len() % BLOCK, 0, "the image must be whole blocks");
        let listener = TcpListener::bind("127.0.0.1:0").expect("hostile target: listen");
        let port = listener
            .local_addr()
            .expect("hostile target: address")
            .port();
        let shared = Arc::new(Shared {
            image,
            honest_bytes,
            misbehaviour,
            stop: AtomicBool::new(false),
            logins: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("hostile-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if accepting.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let _ = stream.set_nodelay(true);
                    if let Ok(copy) = stream.try_clone() {
                        lock(&accepting.open).push(copy);
                    }
                    let serving = accepting.clone();
                    if let Ok(worker) = std::thread::Builder::new()
                        .name("hostile-conn".into())
                        .spawn(move || {
                            let _ = Connection::new(stream, serving).serve();
                        })
                    {
                        lock(&accepting.workers).push(worker);
                    }
                }
            })
            .expect("hostile target: spawn");
        HostileTarget {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn portal(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `iscsi://127.0.0.1:PORT/IQN/0`
    pub fn url(&self) -> String {
        format!("iscsi://{}/{HOSTILE_IQN}/0", self.portal())
    }

    /// Logins that reached the full-feature phase so far.
    pub fn logins(&self) -> u64 {
        self.shared.logins.load(Ordering::SeqCst)
    }
}

impl Drop for HostileTarget {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in lock(&self.shared.open).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One received PDU's BHS (its data segment is read and dropped: login keys are not looked at).
struct Received {
    bhs: [u8; 48],
}

impl Received {
    fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.bhs[at],
            self.bhs[at + 1],
            self.bhs[at + 2],
            self.bhs[at + 3],
        ])
    }
    fn itt(&self) -> u32 {
        self.u32_at(16)
    }
}

struct Connection {
    stream: TcpStream,
    shared: Arc<Shared>,
    stat_sn: u32,
    exp_cmd_sn: u32,
}

impl Connection {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> Self {
        Connection {
            stream,
            shared,
            stat_sn: 1,
            exp_cmd_sn: 1,
        }
    }

    fn serve(mut self) -> io::Result<()> {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(120)))?;
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let pdu = self.receive()?;
            match pdu.opcode() {
                0x03 => self.login(&pdu)?,
                0x01 => {
                    self.exp_cmd_sn = pdu.u32_at(24).wrapping_add(1);
                    self.command(&pdu)?;
                }
                0x00 if pdu.itt() != RESERVED_TAG => {
                    let mut bhs = self.header(0x20, 0x80, pdu.itt());
                    bhs[20..24].copy_from_slice(&RESERVED_TAG.to_be_bytes());
                    self.send(bhs, &[])?;
                }
                0x06 => {
                    let bhs = self.header(0x26, 0x80, pdu.itt());
                    self.send(bhs, &[])?;
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    fn receive(&mut self) -> io::Result<Received> {
        let mut bhs = [0u8; 48];
        self.stream.read_exact(&mut bhs)?;
        let ahs = usize::from(bhs[4]) * 4;
        let len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let mut rest = vec![0u8; ahs + len.div_ceil(4) * 4];
        self.stream.read_exact(&mut rest)?;
        Ok(Received { bhs })
    }

    /// A response BHS with the sequence numbers filled in.
    fn header(&mut self, opcode: u8, flags: u8, itt: u32) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0] = opcode;
        b[1] = flags;
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[24..28].copy_from_slice(&self.stat_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_cmd_sn.to_be_bytes());
        let max = self.exp_cmd_sn.wrapping_add(WINDOW);
        b[32..36].copy_from_slice(&max.to_be_bytes());
        b
    }

    fn send(&mut self, mut bhs: [u8; 48], data: &[u8]) -> io::Result<()> {
        let len = data.len() as u32;
        bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
        let mut out = Vec::with_capacity(48 + data.len() + 3);
        out.extend_from_slice(&bhs);
        out.extend_from_slice(data);
        out.resize(out.len() + (4 - data.len() % 4) % 4, 0);
        self.stream.write_all(&out)
    }

    fn login(&mut self, req: &Received) -> io::Result<()> {
        let flags = req.bhs[1];
        let csg = (flags >> 2) & 3;
        let nsg = flags & 3;
        let transit = flags & 0x80 != 0;
        let mut keys = String::new();
        if csg == 0 {
            keys.push_str("AuthMethod=None\0");
        }
        let full_feature = transit && nsg == 3;
        if full_feature || csg == 1 {
            keys.push_str(
                "HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=65536\0\
                 MaxBurstLength=262144\0FirstBurstLength=65536\0ErrorRecoveryLevel=0\0\
                 TargetAlias=hostile\0",
            );
        }
        let next = if transit { nsg } else { csg };
        let mut bhs = self.header(0x23, 0, req.itt());
        bhs[1] = if transit { 0x80 } else { 0 } | (csg << 2) | next;
        bhs[8..14].copy_from_slice(&req.bhs[8..14]);
        if transit && nsg == 3 {
            bhs[14..16].copy_from_slice(&1u16.to_be_bytes());
            self.shared.logins.fetch_add(1, Ordering::SeqCst);
        }
        self.exp_cmd_sn = req.u32_at(24);
        bhs[28..32].copy_from_slice(&self.exp_cmd_sn.to_be_bytes());
        let max = self.exp_cmd_sn.wrapping_add(WINDOW);
        bhs[32..36].copy_from_slice(&max.to_be_bytes());
        self.send(bhs, keys.as_bytes())?;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        Ok(())
    }

    fn command(&mut self, cmd: &Received) -> io::Result<()> {
        let cdb = &cmd.bhs[32..48];
        let itt = cmd.itt();
        let expected = cmd.u32_at(20) as usize;
        let blocks = (self.shared.image.len() / BLOCK) as u64;
        let reply: Vec<u8> = match cdb[0] {
            0x00 => Vec::new(),
            0x12 if cdb[1] & 1 == 0 => {
                let mut d = vec![0u8; 36];
                d[2] = 5;
                d[3] = 2;
                d[4] = 31;
                d[8..16].copy_from_slice(b"HOSTILE ");
                d[16..32].copy_from_slice(b"scripted target ");
                d[32..36].copy_from_slice(b"0001");
                d
            }
            0x12 => match cdb[2] {
                0x00 => vec![0, 0x00, 0, 3, 0x00, 0x80, 0x83],
                0x80 => [&[0, 0x80, 0, 8][..], b"HOSTILE1"].concat(),
                0x83 => vec![0, 0x83, 0, 12, 1, 3, 0, 8, 0x60, 1, 2, 3, 4, 5, 6, 7],
                _ => return self.check_condition(itt),
            },
            0x25 => {
                let last = (blocks - 1) as u32;
                [last.to_be_bytes(), (BLOCK as u32).to_be_bytes()].concat()
            }
            0x9e if cdb[1] & 0x1f == 0x10 => {
                let mut d = vec![0u8; 32];
                d[..8].copy_from_slice(&(blocks - 1).to_be_bytes());
                d[8..12].copy_from_slice(&(BLOCK as u32).to_be_bytes());
                d
            }
            0x28 | 0x88 => {
                let (lba, count) = if cdb[0] == 0x28 {
                    let lba = u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]]) as u64;
                    (lba, u64::from(u16::from_be_bytes([cdb[7], cdb[8]])))
                } else {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&cdb[2..10]);
                    let n = u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]]);
                    (u64::from_be_bytes(l), u64::from(n))
                };
                let start = lba * BLOCK as u64;
                let end = (lba + count) * BLOCK as u64;
                if end > self.shared.image.len() as u64 {
                    return self.check_condition(itt);
                }
                if end > self.shared.honest_bytes {
                    return self.misbehave(cmd, expected);
                }
                self.shared.image[start as usize..end as usize].to_vec()
            }
            _ => return self.check_condition(itt),
        };
        let data = &reply[..reply.len().min(expected)];
        self.data_in(itt, data, 0)
    }

    /// Data-In PDUs of `data` at `offset`, the status in the last.
    fn data_in(&mut self, itt: u32, data: &[u8], offset: usize) -> io::Result<()> {
        if data.is_empty() {
            let bhs = self.header(0x21, 0x80, itt);
            self.send(bhs, &[])?;
            self.stat_sn = self.stat_sn.wrapping_add(1);
            return Ok(());
        }
        let pieces: Vec<&[u8]> = data.chunks(SEGMENT).collect();
        for (sn, piece) in pieces.iter().enumerate() {
            let last = sn + 1 == pieces.len();
            let mut bhs = self.header(0x25, if last { 0x81 } else { 0 }, itt);
            bhs[20..24].copy_from_slice(&RESERVED_TAG.to_be_bytes());
            bhs[36..40].copy_from_slice(&(sn as u32).to_be_bytes());
            let at = (offset + sn * SEGMENT) as u32;
            bhs[40..44].copy_from_slice(&at.to_be_bytes());
            self.send(bhs, piece)?;
        }
        self.stat_sn = self.stat_sn.wrapping_add(1);
        Ok(())
    }

    fn check_condition(&mut self, itt: u32) -> io::Result<()> {
        let mut bhs = self.header(0x21, 0x80, itt);
        bhs[3] = 2;
        let mut sense = vec![0u8, 18, 0x70, 0, 5, 0, 0, 0, 0, 10];
        sense.resize(20, 0);
        sense[14] = 0x20;
        self.send(bhs, &sense)?;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        Ok(())
    }

    fn misbehave(&mut self, cmd: &Received, expected: usize) -> io::Result<()> {
        let itt = cmd.itt();
        match self.shared.misbehaviour {
            Misbehaviour::OversizedSegment => {
                let mut bhs = self.header(0x25, 0x81, itt);
                bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
                self.stream.write_all(&bhs)?;
                self.stream.write_all(&vec![0u8; 64 * 1024])
            }
            Misbehaviour::Overrun => self.data_in(itt, &vec![0x5a; expected + 4096], 0),
            Misbehaviour::ReservedOpcode => {
                let bhs = self.header(0x1c, 0x80, itt);
                self.send(bhs, &[])
            }
            Misbehaviour::UnknownItt => self.data_in(itt.wrapping_add(0x1000), &[0x5a; 512], 0),
            Misbehaviour::RandomBytes => {
                let mut x = u64::from(itt) | 1;
                let noise: Vec<u8> = (0..4096)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                self.stream.write_all(&noise)
            }
            Misbehaviour::Trickle => {
                let mut bhs = self.header(0x25, 0x81, itt);
                bhs[5..8].copy_from_slice(&(expected as u32).to_be_bytes()[1..]);
                self.stream.write_all(&bhs)?;
                for _ in 0..expected {
                    if self.shared.stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    self.stream.write_all(&[0x5a])?;
                }
                Ok(())
            }
            Misbehaviour::GoodWithoutData => self.data_in(itt, &[], 0),
            Misbehaviour::RejectValidCommand => {
                let mut bhs = self.header(0x3f, 0x80, RESERVED_TAG);
                bhs[2] = 0x09;
                self.send(bhs, &cmd.bhs)?;
                self.stat_sn = self.stat_sn.wrapping_add(1);
                Ok(())
            }
        }
    }
}
