//! One image's chunk store: a sparse data file and an index of what it holds.
//!
//! Chunk `i` lives at byte `i * chunk size` of `data`. The index says which chunks are present,
//! with the hash the bytes were verified as, their CRC32C and when each was last used. Index layout,
//! version 2 (integers big-endian):
//! ```text
//!  offset  size  field
//!  ------  ----  -----------------------------------------------------------
//!       0     8  magic "ISOMCIDX"
//!       8     2  version (2)
//!      10     2  reserved, zero
//!      12     4  chunk size in bytes
//!      16     8  image size in bytes
//!      24     8  chunk count
//!      32     4  CRC32C of bytes 0..32 (header checksum)
//!      36    28  reserved, zero
//!      64  48*n  one record per chunk:
//!                  +0  32  hash of the chunk's bytes as written (what they were verified as:
//!                          the manifest's hash, sha256 or BLAKE3 as the manifest says; sha256
//!                          for an image with no manifest)
//!                  +32  4  CRC32C of the same bytes
//!                  +36  4  reserved, zero
//!                  +40  8  last use, microseconds since the Unix epoch; 0 = absent
//! ```
//! Crash safety: a chunk's bytes are written and `fdatasync`ed before its record is written, so
//! after `kill -9` or power loss every record that says "present" describes bytes on disk. Dropping
//! a chunk clears its record and syncs the index before the bytes are discarded. Readers check
//! what they read against the record's CRC32C, and re-hash in the manifest's algorithm when it or
//! the record's hash disagrees (a torn record or a damaged disk shows up as a mismatch and a miss;
//! see `image::verify`). Version 1 (no CRC) stores are
//! started afresh. Whoever writes records holds an exclusive flock on `index` meanwhile, so uses
//! can be recorded by reading a run of records and writing it back whole.
//!
//! **The seal.** Once every chunk is present and this process has verified each one, the store is
//! sealed: a `seal` file records the data file's identity (device, inode, size, mtime, ctime) and
//! a sha256 of the index's records (hash and CRC32C of every chunk). Layout, version 1
//! (integers big-endian):
//! ```text
//!  offset  size  field
//!  ------  ----  -----------------------------------------------------------
//!       0     8  magic "ISOMSEAL"
//!       8     2  version (1)
//!      10     2  reserved, zero
//!      12     4  chunk size in bytes
//!      16     8  image size in bytes
//!      24     8  data file: device
//!      32     8  data file: inode
//!      40     8  data file: size
//!      48     8  data file: mtime, nanoseconds since the Unix epoch
//!      56     8  data file: ctime, nanoseconds since the Unix epoch
//!      64    32  sha256 of bytes 0..36 of every record, in chunk order
//!      96     4  CRC32C of bytes 0..96 (header checksum)
//! ```
//! A seal is valid while all of that still holds ([`Store::sealed`]): any write to the data file
//! moves its ctime, and dropping a chunk removes the seal before it clears the record (the
//! records' digest would no longer match either). A valid seal says the store is complete and
//! unchanged since it was last verified whole; it does not say the bytes on disk are still good
//! (a bad sector moves no timestamp), so readers go on checking every chunk they read (see
//! `image::passthrough` for what the image core does with a seal).
//!
//! A dropped chunk's space goes back to the file system by punching a hole where the system can
//! ([`crate::platform::punch_hole`]); where it cannot, [`Store::reclaim`] rewrites `data` with only
//! the present chunks (`data.new`, synced, renamed over `data`) while no one else has the store
//! open. The index is not touched: chunks keep their offsets.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

pub use crate::iobuf::flock;
use crate::iobuf::{read_fresh, AlignedBuffer};

use super::CacheError;
use crate::manifest::{chunk_count, Hash, HASH_LEN};

pub const INDEX_MAGIC: [u8; 8] = *b"ISOMCIDX";
pub const INDEX_VERSION: u16 = 2;
pub const INDEX_HEADER_LEN: u64 = 64;
pub const RECORD_LEN: u64 = 48;
/// Where `last use` sits in a record.
const LAST_USE_AT: usize = 40;
/// Adjacent records whose uses are written together, at most.
const USE_RUN: usize = 1024;

pub const SEAL_MAGIC: [u8; 8] = *b"ISOMSEAL";
pub const SEAL_VERSION: u16 = 1;
pub const SEAL_LEN: usize = 100;
/// Where the seal's header checksum sits (it covers every byte before it).
const SEAL_CRC_AT: usize = 96;

/// Alignment of direct I/O: offsets, lengths and buffers (the page size covers every common
/// logical block size).
const DIRECT_ALIGN: usize = 4096;
/// Adjacent chunks written with one direct write, at most.
const DIRECT_RUN_CHUNKS: usize = 64;
/// The bounce buffer for direct writes, in bytes.
const DIRECT_BUFFER: usize = 2 << 20;
/// A data file is rewritten when it holds at least this many bytes more than its present chunks
/// need (and a quarter more).
const RECLAIM_AT_LEAST: u64 = 1 << 20;

/// The data file opened for direct I/O, and an aligned buffer to write from (made on the first
/// write: a store that is only read, as a cached one mostly is, never pays for it). Writing
/// around the page cache spares the copy into it and the file system's per-page work (a third of
/// the cache writer's CPU time, measured with perf), and leaves the page cache to the reader's
/// data.
struct Direct {
    file: File,
    buffer: Option<AlignedBuffer>,
}

impl Direct {
    fn open(path: &Path) -> Option<Direct> {
        let file = crate::platform::open_direct(path)?;
        Some(Direct { file, buffer: None })
    }

    /// Whether `parts` written back to back at `at` meet direct I/O's alignment.
    fn aligned(parts: &[&[u8]], at: u64) -> bool {
        at % DIRECT_ALIGN as u64 == 0 && parts.iter().all(|p| p.len() % DIRECT_ALIGN == 0)
    }

    /// Write aligned `parts` back to back at `at` with direct I/O. Parts that lie page-aligned
    /// in memory (as the iSCSI reader lands a READ's data, and as store reads come) are written
    /// from where they lie, in one vectored write; others are copied into the bounce buffer
    /// first. False when the file system refused: the caller writes them the usual way.
    fn write(&mut self, parts: &[&[u8]], at: u64) -> bool {
        if parts
            .iter()
            .all(|p| p.as_ptr() as usize % DIRECT_ALIGN == 0)
        {
            return self.write_in_place(parts, at);
        }
        self.write_through_bounce(parts, at)
    }

    /// Page-aligned `parts` back to back at `at`, from where they lie.
    fn write_in_place(&mut self, parts: &[&[u8]], at: u64) -> bool {
        use std::io::{Seek, SeekFrom};
        self.file.seek(SeekFrom::Start(at)).is_ok()
            && crate::iobuf::write_all_vectored(&mut self.file, parts).is_ok()
    }

    /// `parts` back to back at `at`, each copied into the aligned bounce buffer first.
    fn write_through_bounce(&mut self, parts: &[&[u8]], at: u64) -> bool {
        if self.buffer.is_none() {
            let Some(mut buffer) = AlignedBuffer::new(DIRECT_BUFFER) else {
                return false;
            };
            buffer.zero();
            self.buffer = Some(buffer);
        }
        let Some(buffer) = self.buffer.as_mut() else {
            return false;
        };
        let mut at = at;
        let mut filled = 0;
        for part in parts {
            let mut part: &[u8] = part;
            while !part.is_empty() {
                let take = (buffer.len() - filled).min(part.len());
                buffer.as_mut_slice()[filled..filled + take].copy_from_slice(&part[..take]);
                filled += take;
                part = &part[take..];
                if filled == buffer.len() {
                    if self.file.write_all_at(buffer.as_slice(), at).is_err() {
                        return false;
                    }
                    at += filled as u64;
                    filled = 0;
                }
            }
        }
        filled == 0
            || self
                .file
                .write_all_at(&buffer.as_slice()[..filled], at)
                .is_ok()
    }
}

/// Geometry of a store, as its index header records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub chunk_size: u32,
    pub image_size: u64,
}

impl Geometry {
    pub fn chunks(&self) -> u64 {
        chunk_count(self.image_size, self.chunk_size)
    }

    /// Byte length of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: u64) -> usize {
        let start = index.saturating_mul(u64::from(self.chunk_size));
        self.image_size
            .saturating_sub(start)
            .min(u64::from(self.chunk_size)) as usize
    }

    fn index_len(&self) -> Option<u64> {
        self.chunks()
            .checked_mul(RECORD_LEN)
            .and_then(|n| n.checked_add(INDEX_HEADER_LEN))
    }

    pub fn header(&self) -> [u8; INDEX_HEADER_LEN as usize] {
        let mut h = [0u8; INDEX_HEADER_LEN as usize];
        h[0..8].copy_from_slice(&INDEX_MAGIC);
        h[8..10].copy_from_slice(&INDEX_VERSION.to_be_bytes());
        h[12..16].copy_from_slice(&self.chunk_size.to_be_bytes());
        h[16..24].copy_from_slice(&self.image_size.to_be_bytes());
        h[24..32].copy_from_slice(&self.chunks().to_be_bytes());
        let crc = crc32c::crc32c(&h[..32]);
        h[32..36].copy_from_slice(&crc.to_be_bytes());
        h
    }

    /// Parse an index header; None when it is not a valid header of this version.
    pub fn parse_header(h: &[u8]) -> Option<Geometry> {
        if h.len() < INDEX_HEADER_LEN as usize || h[0..8] != INDEX_MAGIC {
            return None;
        }
        let be32 = |at: usize| u32::from_be_bytes(h[at..at + 4].try_into().unwrap_or([0; 4]));
        let be64 = |at: usize| u64::from_be_bytes(h[at..at + 8].try_into().unwrap_or([0; 8]));
        if u16::from_be_bytes([h[8], h[9]]) != INDEX_VERSION || be32(32) != crc32c::crc32c(&h[..32])
        {
            return None;
        }
        if h[10..12].iter().chain(&h[36..64]).any(|&b| b != 0) {
            return None;
        }
        let g = Geometry {
            chunk_size: be32(12),
            image_size: be64(16),
        };
        (g.chunk_size > 0 && g.image_size > 0 && be64(24) == g.chunks()).then_some(g)
    }
}

/// One record of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub hash: Hash,
    /// CRC32C of the stored bytes: the cheap check a cache hit makes.
    pub crc: u32,
    /// Microseconds since the epoch; 0 = absent.
    pub last_use: u64,
}

impl Record {
    pub fn present(&self) -> bool {
        self.last_use != 0
    }

    fn parse(b: &[u8]) -> Record {
        let mut hash = [0u8; HASH_LEN];
        hash.copy_from_slice(&b[..HASH_LEN]);
        let crc = u32::from_be_bytes(b[HASH_LEN..HASH_LEN + 4].try_into().unwrap_or([0; 4]));
        let last_use =
            u64::from_be_bytes(b[LAST_USE_AT..LAST_USE_AT + 8].try_into().unwrap_or([0; 8]));
        Record {
            hash,
            crc,
            last_use,
        }
    }
}

pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1)
}

fn record_offset(index: u64) -> u64 {
    INDEX_HEADER_LEN + index * RECORD_LEN
}

/// An open store. Many processes may hold the same store open; each record and chunk is
/// written whole, and every reader re-checks what it reads.
pub struct Store {
    dir: PathBuf,
    geometry: Geometry,
    index: File,
    data: File,
    /// The data file opened for direct I/O (None where the file system refuses it).
    direct: std::sync::Mutex<Option<Direct>>,
    /// Reads of the data file that continue one another, in order (see [`Store::read_data`]).
    stream: Stream,
    /// Held shared while open, so `cache evict`/`clear` (exclusive) cannot pull the store away.
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("geometry", &self.geometry)
            .finish()
    }
}

fn io(path: &Path, source: std::io::Error) -> CacheError {
    CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn open_lock(dir: &Path) -> Result<File, CacheError> {
    let path = dir.join("lock");
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io(&path, e))
}

/// Reads of a store's data file that continue one another (a stream: a mount's read-ahead, a
/// `cat`), made one at a time and lowest offset first. The kernel's read-ahead of the file
/// follows one reader going forward; the many reads a mount has in flight arrive out of order
/// (threads race), and read concurrently they defeat it. Measured on a virtio disk, 256 MiB in
/// 1 MiB reads after drop_caches: one reader 108-120 ms, four concurrent readers 206-277 ms.
struct Stream {
    state: std::sync::Mutex<StreamState>,
    turn: std::sync::Condvar,
    /// The longest a stream read waits for a lower one to go first, once none runs.
    patience: std::time::Duration,
}

impl Default for Stream {
    fn default() -> Stream {
        Stream {
            state: Default::default(),
            turn: Default::default(),
            patience: STREAM_PATIENCE,
        }
    }
}

#[derive(Default)]
struct StreamState {
    /// Where the last stream read ended.
    end: u64,
    /// Starts of the stream reads waiting for their turn.
    waiting: std::collections::BTreeSet<u64>,
    /// A stream read is running.
    busy: bool,
}

impl StreamState {
    /// Whether a read at `start` belongs to the stream: near where the last stream read ended,
    /// or near one waiting for its turn.
    fn continues(&self, start: u64) -> bool {
        let near = |at: u64| at.abs_diff(start) <= STREAM_REACH;
        near(self.end) || self.waiting.iter().any(|&w| near(w))
    }
}

/// A stream read's turn, to be handed back with [`Stream::done`].
struct Turn;

/// How far from where the last stream read ended a read still belongs to the stream: a mount
/// keeps up to 64 reads of 1 MiB in flight.
const STREAM_REACH: u64 = 64 << 20;

/// The longest a stream read waits for a lower one to go first once no stream read runs (one
/// that is waiting goes as soon as the running read ends; this only bounds a waiter that is
/// slow to wake, or an announced read that never comes).
const STREAM_PATIENCE: std::time::Duration = std::time::Duration::from_millis(20);

impl Stream {
    /// Wait until a read at `start` may go: None at once when it does not continue the stream,
    /// else its turn once no stream read runs and none lower waits (or waited too long).
    fn wait_turn(&self, start: u64) -> Option<Turn> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.waiting.contains(&start) && !state.continues(start) {
            state.end = start;
            return None;
        }
        state.waiting.insert(start);
        // Patience runs only while no stream read runs and a lower one has yet to take its turn.
        let mut deadline = None;
        while state.busy || state.waiting.first() != Some(&start) {
            let wait = if state.busy {
                deadline = None;
                self.patience
            } else {
                let now = std::time::Instant::now();
                let left = deadline
                    .get_or_insert(now + self.patience)
                    .saturating_duration_since(now);
                if left.is_zero() {
                    break;
                }
                left
            };
            state = self
                .turn
                .wait_timeout(state, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.waiting.remove(&start);
        state.busy = true;
        Some(Turn)
    }

    /// A read at `start` is on its way: reads above it wait for it (it takes its place in the
    /// queue as its request arrives, not when its thread gets to run).
    fn expect(&self, start: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.continues(start) {
            state.waiting.insert(start);
        }
    }

    /// The read [`Stream::expect`]ed at `start` is not coming (or has been made).
    fn forget(&self, start: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.waiting.remove(&start) {
            drop(state);
            self.turn.notify_all();
        }
    }

    /// The stream read that had `turn` has ended at `end`: the next may go.
    fn done(&self, _turn: Turn, end: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.busy = false;
        state.end = end;
        drop(state);
        self.turn.notify_all();
    }
}

impl Store {
    /// Open the store in `dir`, creating it for `geometry` when missing or unusable. `label`
    /// (text for `cache list`) and `manifest` (a copy for offline use and `cache verify`) are
    /// written when the store is created.
    pub fn open_or_create(
        dir: &Path,
        geometry: Geometry,
        label: &str,
        manifest: Option<&[u8]>,
    ) -> Result<Store, CacheError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let lock = open_lock(dir)?;
        flock(&lock, false, true).map_err(|e| io(dir, e))?;
        if Self::index_matches(dir, geometry) {
            return Self::open_locked(dir, lock);
        }
        // Upgrading may wait for other users; bounded, so a store held open elsewhere (even by
        // this process) gives a clear error instead of a hang.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !flock(&lock, true, false).map_err(|e| io(dir, e))? {
            if std::time::Instant::now() > deadline {
                return Err(CacheError::Busy(dir.display().to_string()));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !Self::index_matches(dir, geometry) {
            if dir.join("index").exists() {
                tracing::warn!(
                    "cache store {} has a damaged or different index; starting it afresh",
                    dir.display()
                );
            }
            Self::create(dir, geometry, label, manifest)?;
        }
        flock(&lock, false, true).map_err(|e| io(dir, e))?;
        Self::open_locked(dir, lock)
    }

    fn index_matches(dir: &Path, geometry: Geometry) -> bool {
        let mut header = [0u8; INDEX_HEADER_LEN as usize];
        let Ok(f) = File::open(dir.join("index")) else {
            return false;
        };
        let len = f.metadata().map(|m| m.len()).ok();
        f.read_exact_at(&mut header, 0).is_ok()
            && Geometry::parse_header(&header) == Some(geometry)
            && len == geometry.index_len()
            && dir.join("data").is_file()
    }

    /// Open an existing store without creating anything (for `cache` commands).
    pub fn open_existing(dir: &Path) -> Result<Store, CacheError> {
        let lock = open_lock(dir)?;
        flock(&lock, false, true).map_err(|e| io(dir, e))?;
        Self::open_locked(dir, lock)
    }

    fn open_locked(dir: &Path, lock: File) -> Result<Store, CacheError> {
        let index_path = dir.join("index");
        let data_path = dir.join("data");
        let rw = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| io(p, e))
        };
        let index = rw(&index_path)?;
        let data = rw(&data_path)?;
        // Whole-image reads (a check at open, `cat`) go in order: read further ahead.
        crate::platform::advise_sequential(&data);
        let mut header = [0u8; INDEX_HEADER_LEN as usize];
        index
            .read_exact_at(&mut header, 0)
            .map_err(|e| io(&index_path, e))?;
        let geometry = Geometry::parse_header(&header).ok_or_else(|| CacheError::Damaged {
            path: index_path.display().to_string(),
        })?;
        let len = index.metadata().map_err(|e| io(&index_path, e))?.len();
        if Some(len) != geometry.index_len() {
            return Err(CacheError::Damaged {
                path: index_path.display().to_string(),
            });
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            geometry,
            index,
            direct: std::sync::Mutex::new(Direct::open(&data_path)),
            stream: Stream::default(),
            data,
            _lock: lock,
        })
    }

    fn create(
        dir: &Path,
        geometry: Geometry,
        label: &str,
        manifest: Option<&[u8]>,
    ) -> Result<(), CacheError> {
        let index_len = geometry.index_len().ok_or_else(|| CacheError::Damaged {
            path: dir.display().to_string(),
        })?;
        let data_path = dir.join("data");
        let data = File::create(&data_path).map_err(|e| io(&data_path, e))?;
        data.set_len(geometry.image_size)
            .map_err(|e| io(&data_path, e))?;
        let tmp = dir.join("index.tmp");
        let index = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        index.set_len(index_len).map_err(|e| io(&tmp, e))?;
        index
            .write_all_at(&geometry.header(), 0)
            .map_err(|e| io(&tmp, e))?;
        index.sync_all().map_err(|e| io(&tmp, e))?;
        if let Some(m) = manifest {
            crate::iobuf::write_atomic(&dir.join("manifest"), m).map_err(|e| io(dir, e))?;
        }
        crate::iobuf::write_atomic(&dir.join("label"), label.as_bytes()).map_err(|e| io(dir, e))?;
        std::fs::rename(&tmp, dir.join("index")).map_err(|e| io(dir, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The record of chunk `index`, read fresh (another process may have changed it).
    pub fn record(&self, index: u64) -> Result<Record, CacheError> {
        let mut b = [0u8; RECORD_LEN as usize];
        self.index
            .read_exact_at(&mut b, record_offset(index))
            .map_err(|e| io(&self.dir.join("index"), e))?;
        Ok(Record::parse(&b))
    }

    /// Every record, in chunk order.
    pub fn records(&self) -> Result<Vec<Record>, CacheError> {
        let n = self.geometry.chunks();
        let mut all = vec![0u8; (n * RECORD_LEN) as usize];
        self.index
            .read_exact_at(&mut all, INDEX_HEADER_LEN)
            .map_err(|e| io(&self.dir.join("index"), e))?;
        Ok(all
            .chunks_exact(RECORD_LEN as usize)
            .map(Record::parse)
            .collect())
    }

    /// The records of chunks `first..=last` (within the image), read fresh in one read.
    pub fn records_range(&self, first: u64, last: u64) -> Result<Vec<Record>, CacheError> {
        let count = last.saturating_sub(first).saturating_add(1) as usize;
        let mut raw = vec![0u8; count * RECORD_LEN as usize];
        self.index
            .read_exact_at(&mut raw, record_offset(first))
            .map_err(|e| io(&self.dir.join("index"), e))?;
        Ok(raw
            .chunks_exact(RECORD_LEN as usize)
            .map(Record::parse)
            .collect())
    }

    /// Chunks `first..=last` in one read, when every one of them is present: the bytes (from
    /// the start of `first`) and their records. Unchecked: the caller hashes them.
    pub fn get_range(
        &self,
        first: u64,
        last: u64,
    ) -> Result<Option<(Bytes, Vec<Record>)>, CacheError> {
        if first > last || last >= self.geometry.chunks() {
            return Ok(None);
        }
        let records = self.records_range(first, last)?;
        if !records.iter().all(Record::present) {
            return Ok(None);
        }
        let cs = u64::from(self.geometry.chunk_size);
        let start = first * cs;
        let end = (last * cs).saturating_add(self.geometry.chunk_len(last) as u64);
        let bytes = self.read_data(start, (end - start) as usize)?;
        Ok(Some((bytes, records)))
    }

    /// The stored bytes and recorded hash of chunk `index`, if present. Unchecked: the caller
    /// hashes them.
    pub fn get(&self, index: u64) -> Result<Option<(Bytes, Record)>, CacheError> {
        if index >= self.geometry.chunks() {
            return Ok(None);
        }
        let record = self.record(index)?;
        if !record.present() {
            return Ok(None);
        }
        let len = self.geometry.chunk_len(index);
        let bytes = self.read_data(index * u64::from(self.geometry.chunk_size), len)?;
        Ok(Some((bytes, record)))
    }

    /// A read of the data file at byte `start` is coming (a request that has just arrived): a
    /// read above it that gets to run first waits for it. Call [`Store::read_arrived`] after.
    pub fn read_coming(&self, start: u64) {
        self.stream.expect(start);
    }

    /// The read announced with [`Store::read_coming`] has been made, or will not be.
    pub fn read_arrived(&self, start: u64) {
        self.stream.forget(start);
    }

    /// `len` bytes of the data file at `start`, through the page cache. (Direct reads were
    /// measured too: on a virtio disk they reached two thirds of the page cache's sequential
    /// read-ahead, so the page cache it is.)
    ///
    /// Reads near where the last one ended (a stream, such as a mount's read-ahead with many
    /// reads in flight) run one at a time, lowest offset first ([`Stream`]). Reads elsewhere
    /// run concurrently.
    fn read_data(&self, start: u64, len: usize) -> Result<Bytes, CacheError> {
        let turn = self.stream.wait_turn(start);
        let read = read_fresh(&self.data, start, len).map_err(|e| io(&self.dir.join("data"), e));
        if let Some(turn) = turn {
            self.stream.done(turn, start.saturating_add(len as u64));
        }
        read
    }

    /// The data file, opened read-only (for the kernel to read from directly).
    pub fn data_file(&self) -> Result<File, CacheError> {
        let path = self.dir.join("data");
        File::open(&path).map_err(|e| io(&path, e))
    }

    /// Pin the store: LRU eviction ([`super::Cache::enforce_limit`]) leaves a pinned store alone
    /// for as long as the returned file (a shared lock) is held.
    pub fn pin(&self) -> Result<File, CacheError> {
        let (file, path) = self.pin_file()?;
        flock(&file, false, true).map_err(|e| io(&path, e))?;
        Ok(file)
    }

    /// Whether some process (this one included) has the store pinned.
    pub fn pinned(&self) -> Result<bool, CacheError> {
        Ok(self.hold_unpinned()?.is_none())
    }

    /// When no one has the store pinned: the pin held exclusively, so no one can pin it until
    /// the returned file is dropped (eviction holds it while it drops chunks). None when pinned.
    pub fn hold_unpinned(&self) -> Result<Option<File>, CacheError> {
        let (file, path) = self.pin_file()?;
        let free = flock(&file, true, false).map_err(|e| io(&path, e))?;
        Ok(free.then_some(file))
    }

    fn pin_file(&self) -> Result<(File, PathBuf), CacheError> {
        let path = self.dir.join("pin");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        Ok((file, path))
    }

    /// Hold the right to change records: every writer of records (this process's threads and
    /// other processes alike) takes it, so records read, changed and written back in one go
    /// ([`Store::note_uses`]) lose no one else's change. Released when dropped.
    fn lock_records(&self) -> Result<File, CacheError> {
        let path = self.dir.join("index");
        // A description of its own: flock then excludes this process's other holders too.
        let file = File::open(&path).map_err(|e| io(&path, e))?;
        flock(&file, true, true).map_err(|e| io(&path, e))?;
        Ok(file)
    }

    /// Record that `chunks` were used now (for LRU eviction): the last-use field of each present
    /// record among them. Adjacent records are read and written back together (up to
    /// `USE_RUN` at a time), so a batch of uses costs a few writes, not one per chunk.
    pub fn note_uses(&self, chunks: &[u64]) -> Result<(), CacheError> {
        let index_path = || self.dir.join("index");
        let mut chunks: Vec<u64> = chunks
            .iter()
            .copied()
            .filter(|&i| i < self.geometry.chunks())
            .collect();
        chunks.sort_unstable();
        chunks.dedup();
        let now = now_micros().to_be_bytes();
        let _held = self.lock_records()?;
        let mut rest = &chunks[..];
        while let Some(&first) = rest.first() {
            let count = rest
                .iter()
                .zip(first..)
                .take(USE_RUN)
                .take_while(|(&c, expected)| c == *expected)
                .count();
            rest = &rest[count..];
            let mut raw = vec![0u8; count * RECORD_LEN as usize];
            self.index
                .read_exact_at(&mut raw, record_offset(first))
                .map_err(|e| io(&index_path(), e))?;
            for record in raw.chunks_exact_mut(RECORD_LEN as usize) {
                if Record::parse(record).present() {
                    record[LAST_USE_AT..].copy_from_slice(&now);
                }
            }
            self.index
                .write_all_at(&raw, record_offset(first))
                .map_err(|e| io(&index_path(), e))?;
        }
        Ok(())
    }

    /// Store verified chunks: write all bytes, fdatasync, then mark them present.
    pub fn put(&self, chunks: &[(u64, &[u8], Hash)]) -> Result<(), CacheError> {
        let checked: Vec<(u64, &[u8], Hash, u32)> = chunks
            .iter()
            .map(|&(i, bytes, hash)| (i, bytes, hash, crc32c::crc32c(bytes)))
            .collect();
        self.put_checked(&checked)
    }

    /// [`Store::put`] of chunks whose CRC32C the caller has taken (as it hashed them, while they
    /// were in the CPU's cache): recorded as given, not taken again.
    pub fn put_checked(&self, chunks: &[(u64, &[u8], Hash, u32)]) -> Result<(), CacheError> {
        let data_path = || self.dir.join("data");
        let fits = |index: u64, bytes: &[u8]| {
            index < self.geometry.chunks() && bytes.len() == self.geometry.chunk_len(index)
        };
        let cs = u64::from(self.geometry.chunk_size);
        let mut direct = self.direct.lock().unwrap_or_else(|e| e.into_inner());
        let mut run: Vec<&[u8]> = Vec::new();
        let mut run_at = 0u64;
        let mut pending = chunks.iter().filter(|(i, b, _, _)| fits(*i, b)).peekable();
        while let Some((index, bytes, _, _)) = pending.next() {
            if run.is_empty() {
                run_at = index * cs;
            }
            run.push(bytes);
            let next_adjacent = pending
                .peek()
                .is_some_and(|(next, _, _, _)| *next == index + 1 && run.len() < DIRECT_RUN_CHUNKS);
            if next_adjacent {
                continue;
            }
            // An unaligned run (the image's short last chunk) goes through the page cache; a
            // refused direct write turns direct writes off for good.
            let written = match direct.as_mut() {
                Some(d) if Direct::aligned(&run, run_at) => d.write(&run, run_at),
                _ => false,
            };
            if !written {
                if Direct::aligned(&run, run_at) && direct.take().is_some() {
                    tracing::debug!(
                        "{}: direct writes refused; writing through the page cache",
                        self.dir.display()
                    );
                }
                let mut at = run_at;
                for part in &run {
                    self.data
                        .write_all_at(part, at)
                        .map_err(|e| io(&data_path(), e))?;
                    at += part.len() as u64;
                }
            }
            run.clear();
        }
        drop(direct);
        self.data.sync_data().map_err(|e| io(&data_path(), e))?;
        let now = now_micros();
        let _held = self.lock_records()?;
        // The records of adjacent chunks go out in one write (each record stands on its own: a
        // write torn between them leaves whole records, checked like any other).
        let mut records: Vec<u8> = Vec::new();
        let mut first = 0u64;
        let mut written = chunks.iter().filter(|(i, b, _, _)| fits(*i, b)).peekable();
        while let Some((index, _, hash, crc)) = written.next() {
            if records.is_empty() {
                first = *index;
            }
            let mut rec = [0u8; RECORD_LEN as usize];
            rec[..HASH_LEN].copy_from_slice(hash);
            rec[HASH_LEN..HASH_LEN + 4].copy_from_slice(&crc.to_be_bytes());
            rec[LAST_USE_AT..].copy_from_slice(&now.to_be_bytes());
            records.extend_from_slice(&rec);
            if written
                .peek()
                .is_some_and(|(next, _, _, _)| *next == index + 1)
            {
                continue;
            }
            self.index
                .write_all_at(&records, record_offset(first))
                .map_err(|e| io(&self.dir.join("index"), e))?;
            records.clear();
        }
        Ok(())
    }

    /// The seal this store's data file and index have now: None while a chunk is absent.
    fn seal_now(&self) -> Result<Option<[u8; SEAL_LEN]>, CacheError> {
        use sha2::Digest;
        use std::os::unix::fs::MetadataExt;
        let data_path = self.dir.join("data");
        // The data file's identity first: a change after this moment moves its ctime.
        let meta = self.data.metadata().map_err(|e| io(&data_path, e))?;
        let records = self.records()?;
        if !records.iter().all(Record::present) {
            return Ok(None);
        }
        let mut digest = sha2::Sha256::new();
        for record in &records {
            digest.update(record.hash);
            digest.update(record.crc.to_be_bytes());
        }
        let nanos = |secs: i64, nsec: i64| (secs as i128 * 1_000_000_000 + nsec as i128) as u64;
        let mut seal = [0u8; SEAL_LEN];
        seal[0..8].copy_from_slice(&SEAL_MAGIC);
        seal[8..10].copy_from_slice(&SEAL_VERSION.to_be_bytes());
        seal[12..16].copy_from_slice(&self.geometry.chunk_size.to_be_bytes());
        seal[16..24].copy_from_slice(&self.geometry.image_size.to_be_bytes());
        seal[24..32].copy_from_slice(&meta.dev().to_be_bytes());
        seal[32..40].copy_from_slice(&meta.ino().to_be_bytes());
        seal[40..48].copy_from_slice(&meta.size().to_be_bytes());
        seal[48..56].copy_from_slice(&nanos(meta.mtime(), meta.mtime_nsec()).to_be_bytes());
        seal[56..64].copy_from_slice(&nanos(meta.ctime(), meta.ctime_nsec()).to_be_bytes());
        seal[64..96].copy_from_slice(&digest.finalize());
        let crc = crc32c::crc32c(&seal[..SEAL_CRC_AT]);
        seal[SEAL_CRC_AT..].copy_from_slice(&crc.to_be_bytes());
        Ok(Some(seal))
    }

    /// Seal the store (see the module doc). The caller vouches that every chunk has been
    /// verified and written (synced) by now. False when a chunk is absent (nothing is written).
    pub fn seal(&self) -> Result<bool, CacheError> {
        let Some(seal) = self.seal_now()? else {
            return Ok(false);
        };
        let path = self.dir.join("seal");
        crate::iobuf::write_atomic(&path, &seal).map_err(|e| io(&path, e))?;
        Ok(true)
    }

    /// Whether the store has a seal that still holds: complete, and neither the data file nor
    /// any record changed since it was sealed. A damaged, foreign or stale seal is no seal.
    pub fn sealed(&self) -> bool {
        let Ok(recorded) = std::fs::read(self.dir.join("seal")) else {
            return false;
        };
        matches!(self.seal_now(), Ok(Some(now)) if recorded[..] == now[..])
    }

    /// Remove the seal before the store changes.
    fn unseal(&self) -> Result<(), CacheError> {
        let path = self.dir.join("seal");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, e)),
            _ => Ok(()),
        }
    }

    /// Forget chunks: unseal the store, clear their records, sync the index, then release their
    /// space.
    pub fn drop_chunks(&self, indexes: &[u64]) -> Result<(), CacheError> {
        self.unseal()?;
        self.clear_records(indexes)?;
        for &i in indexes {
            if i < self.geometry.chunks() {
                self.punch(i);
            }
        }
        Ok(())
    }

    /// Clear the records of `indexes` and sync the index.
    fn clear_records(&self, indexes: &[u64]) -> Result<(), CacheError> {
        let index_path = || self.dir.join("index");
        let _held = self.lock_records()?;
        for &i in indexes {
            if i < self.geometry.chunks() {
                self.index
                    .write_all_at(&[0u8; RECORD_LEN as usize], record_offset(i))
                    .map_err(|e| io(&index_path(), e))?;
            }
        }
        self.index.sync_data().map_err(|e| io(&index_path(), e))
    }

    /// Give back the space of dropped chunks that holes could not (see the module doc): rewrite
    /// the data file with only the present chunks, when it holds noticeably more than they need
    /// and no other process or store has this store open. True when it was rewritten.
    pub fn reclaim(self) -> Result<bool, CacheError> {
        use std::os::unix::fs::MetadataExt;
        let data_path = self.dir.join("data");
        let records = self.records()?;
        let present: u64 = records
            .iter()
            .enumerate()
            .filter(|(_, record)| record.present())
            .map(|(i, _)| self.geometry.chunk_len(i as u64) as u64)
            .sum();
        let allocated = self
            .data
            .metadata()
            .map_err(|e| io(&data_path, e))?
            .blocks()
            .saturating_mul(512);
        let waste = allocated.saturating_sub(present);
        if waste < RECLAIM_AT_LEAST || waste < present / 4 {
            return Ok(false);
        }
        // Everyone who has the store open holds its lock shared: exclusive means no one else.
        if !flock(&self._lock, true, false).map_err(|e| io(&self.dir, e))? {
            return Ok(false);
        }
        let new_path = self.dir.join("data.new");
        let copy = || -> Result<(), CacheError> {
            let new = File::create(&new_path).map_err(|e| io(&new_path, e))?;
            new.set_len(self.geometry.image_size)
                .map_err(|e| io(&new_path, e))?;
            let mut chunk = vec![0u8; self.geometry.chunk_size as usize];
            for (i, record) in records.iter().enumerate() {
                if !record.present() {
                    continue;
                }
                let at = i as u64 * u64::from(self.geometry.chunk_size);
                let bytes = &mut chunk[..self.geometry.chunk_len(i as u64)];
                self.data
                    .read_exact_at(bytes, at)
                    .map_err(|e| io(&data_path, e))?;
                new.write_all_at(bytes, at).map_err(|e| io(&new_path, e))?;
            }
            new.sync_all().map_err(|e| io(&new_path, e))?;
            std::fs::rename(&new_path, &data_path).map_err(|e| io(&data_path, e))
        };
        if let Err(err) = copy() {
            let _ = std::fs::remove_file(&new_path);
            return Err(err);
        }
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        tracing::debug!(
            "rewrote {}: {waste} bytes of dropped chunks given back",
            data_path.display()
        );
        Ok(true)
    }

    fn punch(&self, index: u64) {
        let offset = index * u64::from(self.geometry.chunk_size);
        let len = self.geometry.chunk_len(index) as u64;
        if let Err(err) = crate::platform::punch_hole(&self.data, offset, len) {
            tracing::debug!(
                "could not release chunk {index} of {}: {err}",
                self.dir.display()
            );
        }
    }

    /// The label written at creation ("name=…", "identity=…" lines).
    pub fn label(&self) -> String {
        std::fs::read_to_string(self.dir.join("label")).unwrap_or_default()
    }

    /// The manifest copy kept with the store, if any.
    pub fn manifest_bytes(&self) -> Option<Vec<u8>> {
        std::fs::read(self.manifest_path()).ok()
    }

    /// Where the store keeps its copy of the manifest.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest")
    }

    /// Replace the manifest copy (a damaged one, with bytes the caller checked against the pin).
    pub fn replace_manifest(&self, bytes: &[u8]) -> Result<(), CacheError> {
        let path = self.manifest_path();
        crate::iobuf::write_atomic(&path, bytes).map_err(|e| io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::sha256;

    fn geometry() -> Geometry {
        Geometry {
            chunk_size: 4096,
            image_size: 10_000,
        }
    }

    /// Stream reads go one at a time, lowest offset first, whatever order their threads run
    /// in; a read far from the stream does not wait for it.
    #[test]
    fn stream_reads_take_turns_lowest_first_and_others_pass() {
        use std::sync::{Arc, Mutex};
        const MIB: u64 = 1 << 20;
        // Patient enough that a loaded machine's slow wake-ups cannot reorder the turns.
        let stream = Arc::new(Stream {
            patience: std::time::Duration::from_secs(30),
            ..Stream::default()
        });
        let order = Arc::new(Mutex::new(Vec::new()));
        // The first read of the stream holds its turn while the others arrive.
        let first = stream
            .wait_turn(0)
            .expect("the first read starts the stream");
        for at in [MIB, 2 * MIB, 3 * MIB] {
            stream.expect(at);
        }
        let threads: Vec<_> = [3 * MIB, 2 * MIB, MIB]
            .into_iter()
            .map(|at| {
                let (stream, order) = (stream.clone(), order.clone());
                let thread = std::thread::spawn(move || {
                    let turn = stream.wait_turn(at).expect("a stream read");
                    order.lock().unwrap().push(at);
                    stream.done(turn, at + MIB);
                });
                std::thread::sleep(std::time::Duration::from_millis(5));
                thread
            })
            .collect();
        assert!(
            stream.wait_turn(1 << 40).is_none(),
            "a read far away goes at once"
        );
        assert!(order.lock().unwrap().is_empty(), "all wait for the first");
        stream.done(first, MIB);
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![MIB, 2 * MIB, 3 * MIB]);
    }

    #[test]
    fn put_get_drop_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path(), geometry(), "name=t\n", None).unwrap();
        assert!(store.get(0).unwrap().is_none());
        let direct_before = store.direct.lock().unwrap().is_some();
        let last = vec![7u8; 10_000 - 8192];
        store.put(&[(2, &last, sha256(&last))]).unwrap();
        assert_eq!(
            store.direct.lock().unwrap().is_some(),
            direct_before,
            "a short last chunk goes through the page cache without turning direct writes off"
        );
        let (bytes, rec) = store.get(2).unwrap().unwrap();
        assert_eq!(&bytes[..], &last[..]);
        assert_eq!(rec.hash, sha256(&last));
        let short = vec![1u8; 10];
        store.put(&[(0, &short, sha256(&short))]).unwrap();
        assert!(
            store.get(0).unwrap().is_none(),
            "wrong-length chunk must not be stored"
        );
        store.drop_chunks(&[2]).unwrap();
        assert!(store.get(2).unwrap().is_none());
        drop(store);
        let again = Store::open_existing(dir.path()).unwrap();
        assert_eq!(again.geometry(), geometry());
        assert_eq!(again.label(), "name=t\n");
    }

    /// A store of geometry() holding every chunk.
    fn whole_store(dir: &Path) -> Store {
        let store = Store::open_or_create(dir, geometry(), "", None).unwrap();
        let chunks: Vec<Vec<u8>> = (0..3u64)
            .map(|i| vec![i as u8 + 1; geometry().chunk_len(i)])
            .collect();
        let items: Vec<(u64, &[u8], Hash)> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, &c[..], sha256(c)))
            .collect();
        store.put(&items).unwrap();
        store
    }

    #[test]
    fn records_carry_the_crc_of_what_was_written_whichever_way_it_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = whole_store(dir.path());
        for (i, record) in store.records().unwrap().iter().enumerate() {
            let (bytes, _) = store.get(i as u64).unwrap().unwrap();
            assert_eq!(record.crc, crc32c::crc32c(&bytes), "chunk {i}");
            assert_eq!(record.hash, sha256(&bytes), "chunk {i}");
        }
    }

    #[test]
    fn a_crc32c_given_with_a_chunk_is_recorded_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry {
            chunk_size: 4096,
            image_size: 2 * 4096,
        };
        let store = Store::open_or_create(dir.path(), g, "", None).unwrap();
        let mut landed = crate::iobuf::pool::READS.take(2 * 4096).unwrap();
        bytes::BufMut::put_bytes(&mut landed, 9, 2 * 4096);
        let landed = crate::iobuf::pool::READS.freeze(landed);
        let (a, b) = (&landed[..4096], &landed[4096..]);
        // The caller's word is taken: a CRC that is not the bytes' is recorded all the same
        // (and the chunk then fails its check on the way out and is hashed again).
        let wrong = crc32c::crc32c(b) ^ 1;
        store
            .put_checked(&[
                (0, a, sha256(a), crc32c::crc32c(a)),
                (1, b, sha256(b), wrong),
            ])
            .unwrap();
        let records = store.records().unwrap();
        assert_eq!(records[0].crc, crc32c::crc32c(a));
        assert_eq!(records[1].crc, wrong);
        assert_eq!(&store.get(1).unwrap().unwrap().0[..], b);
    }

    #[test]
    fn chunks_aligned_in_memory_are_written_in_place_and_others_through_the_bounce_buffer() {
        use bytes::BufMut;
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry {
            chunk_size: 4096,
            image_size: 8 * 4096,
        };
        let store = Store::open_or_create(dir.path(), g, "", None).unwrap();
        let pattern: Vec<u8> = (0..8 * 4096)
            .map(|i: usize| (i * 7 + i / 4096) as u8)
            .collect();
        // Chunks 0..4 as slices of one aligned buffer (as the iSCSI reader lands a READ).
        let mut landed = crate::iobuf::pool::READS.take(4 * 4096).unwrap();
        landed.put_slice(&pattern[..4 * 4096]);
        let landed = crate::iobuf::pool::READS.freeze(landed);
        let aligned: Vec<(u64, &[u8], Hash)> = (0..4)
            .map(|i| {
                let bytes = &landed[i * 4096..(i + 1) * 4096];
                (i as u64, bytes, sha256(bytes))
            })
            .collect();
        store.put(&aligned).unwrap();
        let bounce_made = |store: &Store| {
            store
                .direct
                .lock()
                .unwrap()
                .as_ref()
                .map(|d| d.buffer.is_some())
        };
        assert_ne!(
            bounce_made(&store),
            Some(true),
            "aligned chunks need no bounce buffer"
        );
        // Chunks 4..8 from memory one byte off alignment.
        let mut shifted = vec![0u8; 4 * 4096 + 1];
        shifted[1..].copy_from_slice(&pattern[4 * 4096..]);
        let unaligned: Vec<(u64, &[u8], Hash)> = (0..4)
            .map(|i| {
                let bytes = &shifted[1 + i * 4096..1 + (i + 1) * 4096];
                (4 + i as u64, bytes, sha256(bytes))
            })
            .collect();
        store.put(&unaligned).unwrap();
        if store.direct.lock().unwrap().is_some() {
            assert_eq!(bounce_made(&store), Some(true), "copied to be written");
        }
        for (i, record) in store.records().unwrap().iter().enumerate() {
            let expected = &pattern[i * 4096..(i + 1) * 4096];
            let (bytes, _) = store.get(i as u64).unwrap().unwrap();
            assert_eq!(&bytes[..], expected, "chunk {i}");
            assert_eq!(record.crc, crc32c::crc32c(expected), "chunk {i}");
        }
    }

    #[test]
    fn uses_touch_only_the_last_use_of_present_records() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry {
            chunk_size: 4096,
            image_size: 8 * 4096,
        };
        let store = Store::open_or_create(dir.path(), g, "", None).unwrap();
        let chunk = vec![3u8; 4096];
        let present = [0u64, 1, 2, 5];
        let items: Vec<(u64, &[u8], Hash)> = present
            .iter()
            .map(|&i| (i, &chunk[..], sha256(&chunk)))
            .collect();
        store.put(&items).unwrap();
        let before = store.records().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        store.note_uses(&[5, 1, 2, 3, 1, 99]).unwrap();
        let after = store.records().unwrap();
        for i in 0..8 {
            let (b, a) = (before[i], after[i]);
            assert_eq!((a.hash, a.crc), (b.hash, b.crc), "chunk {i}");
            match i {
                1 | 2 | 5 => assert!(a.last_use > b.last_use, "chunk {i}: use recorded"),
                3 => assert!(!a.present(), "an absent chunk stays absent"),
                _ => assert_eq!(a.last_use, b.last_use, "chunk {i}: not used"),
            }
        }
    }

    #[test]
    fn only_a_whole_store_is_sealed_and_the_seal_holds_while_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path(), geometry(), "", None).unwrap();
        let one = vec![1u8; 4096];
        store.put(&[(0, &one, sha256(&one))]).unwrap();
        assert!(!store.seal().unwrap(), "two chunks are missing");
        assert!(!dir.path().join("seal").exists());
        assert!(!store.sealed());
        drop(store);

        let store = whole_store(dir.path());
        assert!(!store.sealed(), "not sealed until asked");
        assert!(store.seal().unwrap());
        assert!(store.sealed());
        let seal = std::fs::read(dir.path().join("seal")).unwrap();
        assert_eq!(seal.len(), SEAL_LEN);
        assert_eq!(&seal[..8], b"ISOMSEAL");
        // Uses recorded since do not break it: only hashes and CRCs are sealed.
        store.note_uses(&[0, 1, 2]).unwrap();
        drop(store);
        let again = Store::open_existing(dir.path()).unwrap();
        assert!(again.sealed(), "a seal outlives the process that made it");
    }

    #[test]
    fn a_changed_data_file_record_or_seal_breaks_the_seal() {
        // A write to the data file (its ctime moves).
        let dir = tempfile::tempdir().unwrap();
        let store = whole_store(dir.path());
        assert!(store.seal().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let data = OpenOptions::new()
            .write(true)
            .open(dir.path().join("data"))
            .unwrap();
        data.write_all_at(&[1], 5).unwrap();
        assert!(!store.sealed(), "a write to the data file unseals");

        // A dropped chunk: the seal is removed before the record is cleared.
        let dir = tempfile::tempdir().unwrap();
        let store = whole_store(dir.path());
        assert!(store.seal().unwrap());
        store.drop_chunks(&[1]).unwrap();
        assert!(!dir.path().join("seal").exists());
        assert!(!store.sealed());

        // A record changed behind the store's back (the CRC of chunk 2).
        let dir = tempfile::tempdir().unwrap();
        let store = whole_store(dir.path());
        assert!(store.seal().unwrap());
        let index = OpenOptions::new()
            .write(true)
            .open(dir.path().join("index"))
            .unwrap();
        index
            .write_all_at(&[0xff], record_offset(2) + HASH_LEN as u64)
            .unwrap();
        assert!(!store.sealed(), "the records' digest no longer matches");

        // A damaged seal file.
        let dir = tempfile::tempdir().unwrap();
        let store = whole_store(dir.path());
        assert!(store.seal().unwrap());
        let path = dir.path().join("seal");
        let mut seal = std::fs::read(&path).unwrap();
        seal[70] ^= 1;
        std::fs::write(&path, &seal).unwrap();
        assert!(!store.sealed());
        std::fs::write(&path, b"ISOMSEAL").unwrap();
        assert!(!store.sealed(), "a short seal is no seal");
    }

    /// A data file's allocated bytes.
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn reclaim_rewrites_a_store_no_one_else_holds_and_keeps_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry {
            chunk_size: 65536,
            image_size: 64 * 65536 - 100,
        };
        let chunks: Vec<Vec<u8>> = (0..64u64).map(|i| vec![i as u8; g.chunk_len(i)]).collect();
        let all: Vec<(u64, &[u8], Hash)> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, c.as_slice(), sha256(c)))
            .collect();
        let store = Store::open_or_create(dir.path(), g, "name=x\n", None).unwrap();
        store.put(&all).unwrap();
        // What dropping leaves where no hole can be punched.
        let dropped: Vec<u64> = (0..64).filter(|i| i % 4 != 3).collect();
        store.clear_records(&dropped).unwrap();
        let data = dir.path().join("data");
        assert!(allocated(&data) >= 63 * 65536);
        let busy = Store::open_existing(dir.path()).unwrap();
        assert!(!busy.reclaim().unwrap(), "another holder keeps the file");
        drop(store);
        let alone = Store::open_existing(dir.path()).unwrap();
        assert!(alone.reclaim().unwrap());
        assert!(allocated(&data) <= 20 * 65536, "{}", allocated(&data));
        assert!(!dir.path().join("data.new").exists());
        let store = Store::open_existing(dir.path()).unwrap();
        for (i, chunk) in chunks.iter().enumerate() {
            match store.get(i as u64).unwrap() {
                Some((bytes, _)) => {
                    assert_eq!(i % 4, 3, "chunk {i} was dropped");
                    assert!(bytes[..] == chunk[..], "chunk {i}");
                }
                None => assert_ne!(i % 4, 3, "chunk {i} was kept"),
            }
        }
        assert!(!store.reclaim().unwrap(), "nothing left to give back");
    }

    #[test]
    fn damaged_index_header_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path(), geometry(), "", None).unwrap();
        let c = vec![3u8; 4096];
        store.put(&[(0, &c, sha256(&c))]).unwrap();
        drop(store);
        let idx = dir.path().join("index");
        let mut b = std::fs::read(&idx).unwrap();
        b[20] ^= 0xff;
        std::fs::write(&idx, &b).unwrap();
        assert!(matches!(
            Store::open_existing(dir.path()),
            Err(CacheError::Damaged { .. })
        ));
        let store = Store::open_or_create(dir.path(), geometry(), "", None).unwrap();
        assert!(store.get(0).unwrap().is_none());
    }

    #[test]
    fn header_parser_refuses_garbage() {
        assert_eq!(Geometry::parse_header(&[0u8; 64]), None);
        assert_eq!(Geometry::parse_header(&geometry().header()[..10]), None);
        assert_eq!(
            Geometry::parse_header(&geometry().header()),
            Some(geometry())
        );
    }

    /// Found by the `cache_index` fuzz target: a byte set in the reserved tail (outside the
    /// header CRC32C) was accepted as a header that does not re-encode to itself.
    #[test]
    fn header_with_reserved_bytes_set_is_refused() {
        let mut h = geometry().header();
        h[37] = 4;
        assert_eq!(Geometry::parse_header(&h), None);
        let mut h = geometry().header();
        h[10] = 1;
        let crc = crc32c::crc32c(&h[..32]);
        h[32..36].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(Geometry::parse_header(&h), None);
    }
}
