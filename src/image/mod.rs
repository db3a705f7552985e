//! The image core: byte ranges → chunks → cache hit or fetch → verification → [`Verified`] bytes.
//!
//! An [`Image`] is one published image: its mirrors (each a [`Mirror`] that yields a
//! [`BlockSource`]), its manifest when it has one, and its cache [`Store`]. A read splits into
//! chunks; hits are re-hashed from the store; misses coalesce into large READs that run
//! concurrently, are verified chunk by chunk (a failing chunk is fetched again from the next
//! mirror, then the read fails naming image and chunk), and are written to the store. Sequential
//! reads grow a read-ahead window. Offline, or when no portal answers, only cached chunks read.
//!
//! Nothing in this module speaks iSCSI: `remote` adapts [`crate::iscsi::IscsiLun`] to [`Mirror`].

pub mod identity;
mod open;
mod remote;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use tokio::sync::watch;

use crate::cache::{Cache, Geometry, Record, Store};
use crate::manifest::{sha256, Hash, Manifest};
use crate::source::{BlockSource, SourceError};

pub use open::open;

/// Largest run of missing chunks fetched and verified as one: runs go out concurrently and each
/// is verified as soon as its data is in, while the others are still on the wire.
const MAX_RUN_BYTES: u64 = 256 << 10;
/// Read-ahead grows to this many bytes past a sequential reader.
const MAX_READAHEAD: u64 = 8 << 20;
/// Verified chunks kept in memory (read-ahead lands here first).
const RECENT_BYTES: u64 = 32 << 20;
/// How long to wait for a connection attempt to one portal.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After every portal failed, how long reads go straight to "unavailable".
const DOWN_PAUSE: Duration = Duration::from_secs(5);
/// Rounds over all mirrors before a read gives up.
const ROUNDS: u32 = 3;
/// Reads of the store while checking it for passthrough, in bytes (sequential, through the page
/// cache, which the kernel's reads then find warm).
const PASSTHROUGH_CHECK_READ: u64 = 8 << 20;
/// Longest wait for another task's fetch of the same chunk.
const INFLIGHT_WAIT: Duration = Duration::from_secs(120);

/// Bytes that matched the manifest (or the hash recorded on first fetch). Only this module
/// constructs it, so unverified bytes cannot reach a reader by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified(Bytes);

impl Verified {
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl std::ops::Deref for Verified {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verified({} bytes)", self.0.len())
    }
}

/// Why a read failed. Every variant names the image and the byte range; FUSE answers EIO.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{image}: bytes {start}..{end}: chunk {chunk} failed verification ({detail})")]
    Verification {
        image: String,
        start: u64,
        end: u64,
        chunk: u64,
        detail: String,
    },
    /// `start..end` is the first missing stretch of the read; `more` counts the others.
    #[error("{image}: bytes {start}..{end}{} are not cached and isomount is offline", more_ranges(*.more))]
    Offline {
        image: String,
        start: u64,
        end: u64,
        more: usize,
    },
    #[error("{image}: bytes {start}..{end} are not cached and no portal is reachable: {reason}")]
    Unavailable {
        image: String,
        start: u64,
        end: u64,
        reason: String,
    },
}

fn more_ranges(more: usize) -> String {
    match more {
        0 => String::new(),
        1 => " and one more range".to_string(),
        n => format!(" and {n} more ranges"),
    }
}

impl ImageError {
    /// The errno a file system reports for this error.
    pub fn errno(&self) -> i32 {
        libc::EIO
    }
}

/// Why a mirror could not be used.
#[derive(Debug)]
enum Unusable {
    /// No answer: refused, reset, timed out, or every portal was found down a moment ago.
    Unreachable(String),
    /// It answered, and what it answered rules it out: no such target or LUN, authentication
    /// failed, another size or serial.
    Refused(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Unreachable(why) | Unusable::Refused(why) => f.write_str(why),
        }
    }
}

/// One way to reach the image: a portal of a mirror.
#[async_trait]
pub trait Mirror: Send + Sync {
    /// "host:port" or another short description, for messages and `info/portal`.
    fn describe(&self) -> String;
    /// Connect (or reconnect). Called again after a failure.
    async fn connect(&self) -> Result<Arc<dyn BlockSource>, SourceError>;
    /// What the connected LUN says about itself (vendor, product, serial, block-size, …).
    fn facts(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// A mirror that is an already-open source (a file, a test double, a LUN opened by URL).
pub struct SourceMirror {
    pub label: String,
    pub source: Arc<dyn BlockSource>,
}

#[async_trait]
impl Mirror for SourceMirror {
    fn describe(&self) -> String {
        self.label.clone()
    }
    async fn connect(&self) -> Result<Arc<dyn BlockSource>, SourceError> {
        Ok(self.source.clone())
    }
}

/// Everything needed to build an [`Image`].
pub struct ImageSpec {
    pub name: String,
    pub size: u64,
    /// The manifest's chunk size when there is one.
    pub chunk_size: u32,
    pub manifest: Option<Manifest>,
    /// The pinned manifest's bytes, kept with the store for offline use.
    pub manifest_bytes: Option<Vec<u8>>,
    /// Cache identity (see [`crate::cache`]).
    pub identity: String,
    pub mirrors: Vec<Box<dyn Mirror>>,
    pub offline: bool,
    /// Facts for `info/` (target, lun, vendor, …); size, manifest and portal are added.
    pub facts: Vec<(String, String)>,
    /// Serial the LUN must report (images with no manifest).
    pub expect_serial: Option<String>,
}

#[derive(Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_fetched: AtomicU64,
    errors: AtomicU64,
    verify_failures: AtomicU64,
}

struct Connections {
    sources: Vec<Option<Arc<dyn BlockSource>>>,
    down_until: Option<Instant>,
    last_error: String,
}

struct Sequential {
    next: u64,
    window: u64,
    ahead_until: u64,
}

/// One image: mirrors, manifest, cache store.
pub struct Image {
    me: Weak<Image>,
    name: String,
    size: u64,
    geometry: Geometry,
    manifest: Option<Manifest>,
    manifest_pin: Option<String>,
    mirrors: Vec<Box<dyn Mirror>>,
    offline: bool,
    expect_serial: Option<String>,
    facts: Vec<(String, String)>,
    store: Option<Arc<Store>>,
    caching: Arc<AtomicBool>,
    /// Why chunks are not being stored, when they are not.
    caching_off: Arc<Mutex<Option<String>>>,
    writer: Option<writer::Writer>,
    conns: tokio::sync::Mutex<Connections>,
    preferred: AtomicUsize,
    warned_unreachable: AtomicBool,
    /// Hashes first seen this session (images with no manifest and no store).
    first_seen: Mutex<HashMap<u64, Hash>>,
    recent: Mutex<lru::LruCache<u64, Bytes>>,
    inflight: Mutex<HashMap<u64, watch::Receiver<()>>>,
    sequential: Mutex<Sequential>,
    readahead_busy: AtomicBool,
    readahead: AtomicBool,
    stats: Stats,
    /// Chunks this process has verified (fetched and hashed, or read back and checked).
    verified: Mutex<Vec<bool>>,
    /// Held while the kernel reads the store's data file directly (see [`Image::passthrough_file`]).
    pin: Mutex<Option<std::fs::File>>,
    /// A data file has been handed out for passthrough (read by `stats` without waiting on `pin`,
    /// which a check in progress holds).
    passing_through: AtomicBool,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish()
    }
}

/// Marks chunks as being fetched; dropping it wakes the tasks waiting for them.
struct InflightGuard<'a> {
    image: &'a Image,
    chunks: Vec<u64>,
    _done: watch::Sender<()>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self
            .image
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for c in &self.chunks {
            map.remove(c);
        }
    }
}

impl Image {
    /// Build an image; with a cache, open (or create) its store. A store that cannot be opened
    /// means uncached operation, with a warning.
    pub fn new(spec: ImageSpec, cache: Option<Arc<Cache>>) -> Arc<Image> {
        let geometry = Geometry {
            chunk_size: spec.chunk_size,
            image_size: spec.size,
        };
        let caching_off = Arc::new(Mutex::new(None));
        let store = cache.as_ref().and_then(|c| {
            match c.open_store(
                &spec.name,
                &spec.identity,
                geometry,
                spec.manifest_bytes.as_deref(),
            ) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::warn!("{}: cache unavailable ({e}); reading without it", spec.name);
                    *caching_off.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("cache unavailable ({e})"));
                    None
                }
            }
        });
        if let Some(store) = &store {
            if tracing::enabled!(tracing::Level::INFO) {
                let present = store
                    .records()
                    .map(|r| r.iter().filter(|r| r.present()).count())
                    .unwrap_or(0);
                tracing::info!(
                    "{}: cache store {}: {present} of {} chunks of {} bytes present",
                    spec.name,
                    store.dir().display(),
                    geometry.chunks(),
                    geometry.chunk_size
                );
            }
        }
        let caching = Arc::new(AtomicBool::new(store.is_some()));
        let writer = store.as_ref().and_then(|store| {
            writer::Writer::start(writer::Target {
                name: spec.name.clone(),
                store: store.clone(),
                cache: cache.clone(),
                caching: caching.clone(),
                caching_off: caching_off.clone(),
            })
        });
        let recent_entries = (RECENT_BYTES / u64::from(spec.chunk_size)).max(4) as usize;
        let manifest_pin = spec.identity.strip_prefix("manifest:").map(str::to_string);
        let sources = spec.mirrors.iter().map(|_| None).collect();
        Arc::new_cyclic(|me| Image {
            me: me.clone(),
            name: spec.name,
            size: spec.size,
            geometry,
            manifest: spec.manifest,
            manifest_pin,
            mirrors: spec.mirrors,
            offline: spec.offline,
            expect_serial: spec.expect_serial,
            facts: spec.facts,
            caching,
            caching_off,
            writer,
            store,
            conns: tokio::sync::Mutex::new(Connections {
                sources,
                down_until: None,
                last_error: String::new(),
            }),
            preferred: AtomicUsize::new(0),
            warned_unreachable: AtomicBool::new(false),
            first_seen: Mutex::new(HashMap::new()),
            recent: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(recent_entries).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            inflight: Mutex::new(HashMap::new()),
            sequential: Mutex::new(Sequential {
                next: u64::MAX,
                window: 0,
                ahead_until: 0,
            }),
            readahead_busy: AtomicBool::new(false),
            readahead: AtomicBool::new(true),
            stats: Stats::default(),
            verified: Mutex::new(vec![false; geometry.chunks() as usize]),
            pin: Mutex::new(None),
            passing_through: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunk_size(&self) -> u32 {
        self.geometry.chunk_size
    }

    /// Facts for `info/`: one (name, value) per file.
    pub fn facts(&self) -> Vec<(String, String)> {
        let mut out = self.facts.clone();
        out.push(("size".into(), self.size.to_string()));
        out.push((
            "manifest".into(),
            self.manifest_pin
                .clone()
                .unwrap_or_else(|| "none (chunk hashes recorded on first fetch)".into()),
        ));
        out.push(("portal".into(), self.current_portal()));
        if !self.offline {
            if let Some(m) = self.mirrors.get(self.preferred.load(Ordering::Relaxed)) {
                for (k, v) in m.facts() {
                    if !out.iter().any(|(have, _)| *have == k) {
                        out.push((k, v));
                    }
                }
            }
        }
        out
    }

    fn current_portal(&self) -> String {
        if self.offline {
            return "offline".into();
        }
        self.mirrors
            .get(self.preferred.load(Ordering::Relaxed))
            .map_or_else(|| "none".into(), |m| m.describe())
    }

    /// Counters for `info/stats`.
    pub fn stats(&self) -> String {
        let s = &self.stats;
        format!(
            "hits: {}\nmisses: {}\nbytes fetched: {}\nerrors: {}\nverification failures: {}\nportal: {}\ncaching: {}\npassthrough: {}\n",
            s.hits.load(Ordering::Relaxed),
            s.misses.load(Ordering::Relaxed),
            s.bytes_fetched.load(Ordering::Relaxed),
            s.errors.load(Ordering::Relaxed),
            s.verify_failures.load(Ordering::Relaxed),
            self.current_portal(),
            if self.caching.load(Ordering::Relaxed) { "on" } else { "off" },
            if self.pinned() { "on (the kernel reads the verified cache directly)" } else { "off" },
        )
    }

    /// Bytes of this image present in the cache (by the index; not re-hashed).
    pub fn cached_bytes(&self) -> u64 {
        self.present_chunks()
            .iter()
            .enumerate()
            .filter(|(_, p)| **p)
            .map(|(i, _)| self.geometry.chunk_len(i as u64) as u64)
            .sum()
    }

    /// Why verified chunks are not being stored (a full disk, no store), when they are not.
    pub fn caching_off(&self) -> Option<String> {
        if self.caching.load(Ordering::Relaxed) {
            return None;
        }
        let why = self.caching_off.lock().unwrap_or_else(|e| e.into_inner());
        Some(why.clone().unwrap_or_else(|| "no cache".to_string()))
    }

    /// Which chunks the store's index marks present (not re-hashed).
    pub fn present_chunks(&self) -> Vec<bool> {
        let n = self.geometry.chunks() as usize;
        match self.store.as_ref().map(|s| s.records()) {
            Some(Ok(records)) => records.iter().map(|r| r.present()).collect(),
            _ => vec![false; n],
        }
    }

    /// Read `len` bytes at `offset` (clamped at the image's end): verified, or an error.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Verified, ImageError> {
        let parts = self.read_parts(offset, len).await?;
        Ok(Verified(crate::iobuf::join(
            parts.into_iter().map(Verified::into_bytes).collect(),
        )))
    }

    /// Like [`Image::read`], but the bytes come as consecutive pieces (chunk-sized or larger),
    /// so a caller that writes them out (`cat`) never has them copied into one buffer.
    pub async fn read_parts(&self, offset: u64, len: usize) -> Result<Vec<Verified>, ImageError> {
        if offset >= self.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(len as u64).min(self.size);
        let cs = u64::from(self.geometry.chunk_size);
        let first = offset / cs;
        let last = (end - 1) / cs;
        let skip = (offset - first * cs) as usize;
        let want = (end - offset) as usize;
        let mut parts = match self.cached(first, last).await {
            Ok(all) => {
                self.after_read(offset, end);
                return Ok(vec![Verified(all.slice(skip..skip + want))]);
            }
            Err(parts) => parts,
        };
        let missing: Vec<u64> = (first..=last)
            .zip(&parts)
            .filter(|(_, p)| p.is_none())
            .map(|(i, _)| i)
            .collect();
        tracing::debug!(
            "{}: bytes {offset}..{end}: {} of {} chunks cached, fetching the rest",
            self.name,
            parts.len() - missing.len(),
            parts.len()
        );
        if !missing.is_empty() {
            let fetched = self.obtain(&missing, offset, end).await.inspect_err(|_| {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            })?;
            for (i, bytes) in fetched {
                parts[(i - first) as usize] = Some(bytes);
            }
        }
        self.after_read(offset, end);
        let mut out = Vec::with_capacity(parts.len());
        let mut skip = skip;
        let mut left = want;
        for p in parts.into_iter().flatten() {
            let take = (p.len() - skip).min(left);
            out.push(Verified(p.slice(skip..skip + take)));
            left -= take;
            skip = 0;
        }
        if left != 0 {
            // Every chunk was found or fetched above; never hand out a range with a hole in it.
            return Err(ImageError::Unavailable {
                image: self.name.clone(),
                start: offset,
                end,
                reason: "a chunk went missing between fetch and read".into(),
            });
        }
        Ok(out)
    }

    /// Make sure every chunk of `offset..offset+len` is in the cache, fetching what is missing
    /// (present chunks are not re-hashed). Returns the bytes fetched.
    pub async fn prefetch(&self, offset: u64, len: u64) -> Result<u64, ImageError> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(0);
        }
        let cs = u64::from(self.geometry.chunk_size);
        let (first, last) = (offset / cs, (end - 1) / cs);
        let missing: Vec<u64> = match &self.store {
            Some(store) => (first..=last)
                .filter(|&i| !store.record(i).map(|r| r.present()).unwrap_or(false))
                .collect(),
            None => (first..=last).collect(),
        };
        if missing.is_empty() {
            return Ok(0);
        }
        let got = self.obtain(&missing, offset, end).await?;
        Ok(got.iter().map(|(_, b)| b.len() as u64).sum())
    }

    fn expected_hash(&self, index: u64) -> Option<Hash> {
        match &self.manifest {
            Some(m) => m.hash(index).copied(),
            None => self
                .first_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&index)
                .copied(),
        }
    }

    /// Whether bytes read back from the store for chunk `index` are the ones verified when they
    /// were stored. The record must name the hash the chunk is expected to have, and the bytes
    /// must match the CRC32C recorded beside it; when either disagrees (a torn record), the bytes
    /// are re-hashed with sha256 instead. Returns the hash the chunk was verified as.
    fn stored_ok(&self, index: u64, bytes: &[u8], record: &Record) -> Option<Hash> {
        let expected = match &self.manifest {
            Some(m) => *m.hash(index)?,
            None => record.hash,
        };
        let ok = (record.hash == expected && crc32c::crc32c(bytes) == record.crc)
            || sha256(bytes) == expected;
        ok.then_some(expected)
    }

    /// Note a chunk served from the store: its hash for refetches, its use for LRU, a hit.
    fn note_hit(&self, store: &Store, index: u64, record: &Record, hash: Hash) {
        if self.manifest.is_none() {
            self.first_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(index, hash);
        }
        let _ = store.touch(index, record);
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        self.mark_verified(index);
    }

    fn mark_verified(&self, index: u64) {
        if let Some(v) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(index as usize)
        {
            *v = true;
        }
    }

    /// The store's data file, for the kernel to read the image from directly (FUSE passthrough),
    /// when the store holds every chunk and each has been verified: by this process already, or
    /// now, reading back at most `check_at_most` bytes and checking each chunk as a cache hit is
    /// checked. Blocks (it flushes the cache writer and may read). None when the store is
    /// incomplete, a chunk fails (it is dropped, to be fetched again), or there is no store.
    ///
    /// While a file is handed out, the store is pinned: LRU eviction by other processes passes
    /// it by, so the chunks the kernel reads stay where they were verified.
    pub fn passthrough_file(&self, check_at_most: u64) -> Option<std::fs::File> {
        let store = self.store.as_ref()?;
        if let Some(writer) = &self.writer {
            writer.flush_blocking();
        }
        if !self.caching.load(Ordering::Relaxed) {
            return None;
        }
        // Pinned before anything is checked; unpinned again (dropped) unless it all verifies.
        let mut held = self.pin.lock().unwrap_or_else(|e| e.into_inner());
        let pin = match held.take() {
            Some(pin) => pin,
            None => store.pin().ok()?,
        };
        let records = store.records().ok()?;
        if !records.iter().all(Record::present) {
            return None;
        }
        let unverified: Vec<u64> = {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            (0..records.len() as u64)
                .filter(|&i| !verified.get(i as usize).copied().unwrap_or(false))
                .collect()
        };
        let bytes: u64 = unverified
            .iter()
            .map(|&i| self.geometry.chunk_len(i) as u64)
            .sum();
        if bytes > check_at_most {
            return None;
        }
        for (first, count) in self.runs(&unverified, PASSTHROUGH_CHECK_READ) {
            if self.lookup_range(first, first + count - 1).is_none()
                && (first..first + count).any(|i| self.lookup(i).is_none())
            {
                return None;
            }
        }
        let file = store.data_file().ok()?;
        *held = Some(pin);
        self.passing_through.store(true, Ordering::Relaxed);
        Some(file)
    }

    /// Sorted chunk numbers as runs (first, count) of adjacent chunks, each at most `max_bytes`.
    fn runs(&self, chunks: &[u64], max_bytes: u64) -> Vec<(u64, u64)> {
        let per_run = (max_bytes / u64::from(self.geometry.chunk_size)).max(1);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &c in chunks {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == c && *count < per_run => *count += 1,
                _ => runs.push((c, 1)),
            }
        }
        runs
    }

    /// Whether the kernel reads this image directly from the cache (see [`Image::passthrough_file`]).
    pub fn pinned(&self) -> bool {
        self.passing_through.load(Ordering::Relaxed)
    }

    /// Chunks `first..=last` from the store in one read when all are present and verify: no
    /// copies beyond the read itself. None sends the caller down the chunk-by-chunk path.
    fn lookup_range(&self, first: u64, last: u64) -> Option<Bytes> {
        if first == last {
            return None;
        }
        let store = self.store.as_ref()?;
        let (bytes, records) = store.get_range(first, last).ok()??;
        let cs = self.geometry.chunk_size as usize;
        let mut hashes = Vec::with_capacity(records.len());
        for (k, record) in records.iter().enumerate() {
            let i = first + k as u64;
            let at = k * cs;
            hashes.push(self.stored_ok(i, &bytes[at..at + self.geometry.chunk_len(i)], record)?);
        }
        for (k, (record, hash)) in records.iter().zip(hashes).enumerate() {
            self.note_hit(store, first + k as u64, record, hash);
        }
        Some(bytes)
    }

    /// A verified chunk from memory (None when it is not there).
    fn lookup_recent(&self, index: u64) -> Option<Bytes> {
        let hit = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
            .cloned();
        if hit.is_some() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// A verified chunk from memory or the store.
    fn lookup(&self, index: u64) -> Option<Bytes> {
        if let Some(b) = self.lookup_recent(index) {
            return Some(b);
        }
        let store = self.store.as_ref()?;
        let (bytes, record) = match store.get(index) {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!("{}: cache read of chunk {index} failed: {e}", self.name);
                return None;
            }
        };
        if let Some(hash) = self.stored_ok(index, &bytes, &record) {
            self.note_hit(store, index, &record, hash);
            return Some(bytes);
        }
        // Another process may have evicted it between our reads of record and data.
        if store.record(index).map(|r| r.present()).unwrap_or(false) {
            tracing::warn!(
                "{}: cached chunk {index} failed verification; dropping it and fetching again",
                self.name
            );
            let _ = store.drop_chunks(&[index]);
        }
        None
    }

    /// Chunks `first..=last` from memory and the store: one buffer when the store has them all
    /// (the whole range in one read), else each chunk found, None where missing. Reading the
    /// store blocks, so it runs on the blocking pool: disk reads of many readers overlap, and the
    /// async workers stay free for the network.
    async fn cached(&self, first: u64, last: u64) -> Result<Bytes, Vec<Option<Bytes>>> {
        let in_memory: Vec<Option<Bytes>> = (first..=last).map(|i| self.lookup_recent(i)).collect();
        if in_memory.iter().all(Option::is_some) || self.store.is_none() {
            return Err(in_memory);
        }
        let Some(me) = self.me.upgrade() else {
            return Err(in_memory);
        };
        let gather = move || {
            if in_memory.iter().all(Option::is_none) {
                if let Some(all) = me.lookup_range(first, last) {
                    return Ok(all);
                }
            }
            Err((first..=last)
                .zip(in_memory)
                .map(|(i, m)| m.or_else(|| me.lookup(i)))
                .collect())
        };
        match tokio::task::spawn_blocking(gather).await {
            Ok(found) => found,
            Err(_) => Err(vec![None; (last - first + 1) as usize]),
        }
    }

    /// Fetch `chunks` (sorted, missing), sharing fetches already under way.
    async fn obtain(
        &self,
        chunks: &[u64],
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, Bytes)>, ImageError> {
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        let (done, _) = watch::channel(());
        {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            for &c in chunks {
                match map.get(&c) {
                    Some(rx) => theirs.push((c, rx.clone())),
                    None => {
                        map.insert(c, done.subscribe());
                        mine.push(c);
                    }
                }
            }
        }
        let guard = InflightGuard {
            image: self,
            chunks: mine.clone(),
            _done: done,
        };
        let mut out = if mine.is_empty() {
            Vec::new()
        } else {
            self.fetch(&mine, start, end).await?
        };
        drop(guard);
        let mut leftover = Vec::new();
        for (c, mut rx) in theirs {
            let _ = tokio::time::timeout(INFLIGHT_WAIT, rx.changed()).await;
            match self.lookup(c) {
                Some(b) => out.push((c, b)),
                None => leftover.push(c),
            }
        }
        if !leftover.is_empty() {
            out.extend(self.fetch(&leftover, start, end).await?);
        }
        Ok(out)
    }

    /// Fetch chunks from the network: runs of adjacent chunks become one READ each, issued
    /// concurrently; results are verified and stored.
    async fn fetch(
        &self,
        chunks: &[u64],
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, Bytes)>, ImageError> {
        if self.offline {
            // Name what is missing, not the whole read: the first missing stretch, and how many
            // others there are.
            let runs = self.runs(chunks, u64::MAX);
            let cs = u64::from(self.geometry.chunk_size);
            let (first, count) = runs.first().copied().unwrap_or((start / cs, 1));
            let from = (first * cs).max(start);
            let to = ((first + count) * cs).min(end).max(from);
            return Err(ImageError::Offline {
                image: self.name.clone(),
                start: from,
                end: to,
                more: runs.len().saturating_sub(1),
            });
        }
        let runs = self.runs(chunks, MAX_RUN_BYTES);
        self.stats
            .misses
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        let results = join_all(
            runs.iter()
                .map(|&(first, count)| self.fetch_run(first, count, start, end)),
        )
        .await;
        let mut out = Vec::with_capacity(chunks.len());
        for r in results {
            out.extend(r?);
        }
        self.keep(&out).await;
        Ok(out)
    }

    /// Put verified chunks in memory and (unless caching is off) queue them for the store.
    async fn keep(&self, chunks: &[(u64, Bytes)]) {
        // Memory holds what read-ahead brings in; a reader that keeps its own reads in flight
        // has no use for it (and a smaller working set faults in fewer fresh pages).
        if self.readahead.load(Ordering::Relaxed) {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            for (i, b) in chunks {
                recent.put(*i, b.clone());
            }
        }
        let Some(writer) = &self.writer else {
            return;
        };
        if !self.caching.load(Ordering::Relaxed) || chunks.is_empty() {
            return;
        }
        let items: Vec<(u64, Bytes, Hash)> = chunks
            .iter()
            .filter_map(|(i, b)| self.expected_hash(*i).map(|h| (*i, b.clone(), h)))
            .collect();
        writer.write(items).await;
    }

    /// Turn read-ahead off for a reader that keeps its own reads in flight (`cat`, `fetch`).
    pub fn set_read_ahead(&self, on: bool) {
        self.readahead.store(on, Ordering::Relaxed);
    }

    /// Wait until every chunk fetched so far has been written to the cache.
    pub async fn flush(&self) {
        if let Some(writer) = &self.writer {
            writer.flush().await;
        }
    }

    /// Fetch `count` chunks from `first` with one READ, verify each, and fetch failing chunks
    /// again from the other mirrors.
    async fn fetch_run(
        &self,
        first: u64,
        count: u64,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, Bytes)>, ImageError> {
        let cs = u64::from(self.geometry.chunk_size);
        let offset = first * cs;
        let len = ((first + count) * cs).min(self.size) - offset;
        let (mirror, pieces) = self
            .read_any(offset, len as usize, None, start, end)
            .await?;
        let lens = (first..first + count).map(|i| self.geometry.chunk_len(i));
        let chunks = split(pieces, lens);
        // Hashing runs on the blocking pool: a worker busy hashing would hold up the session's
        // own task (Data-In waiting in the socket) until it yields.
        let to_hash = chunks.clone();
        let hashes: Vec<Hash> =
            tokio::task::spawn_blocking(move || to_hash.iter().map(|b| sha256(b)).collect())
                .await
                .unwrap_or_default();
        let mut out = Vec::with_capacity(count as usize);
        if hashes.len() != chunks.len() {
            return Err(ImageError::Unavailable {
                image: self.name.clone(),
                start,
                end,
                reason: "hashing was cancelled".into(),
            });
        }
        for ((i, chunk), actual) in (first..).zip(chunks).zip(hashes) {
            let chunk = match self.check_hash(i, actual) {
                Ok(()) => chunk,
                Err(detail) => self.refetch(i, mirror, detail, start, end).await?,
            };
            self.mark_verified(i);
            out.push((i, chunk));
        }
        Ok(out)
    }

    /// Verify chunk `index` (recording its hash on first sight when there is no manifest).
    fn check(&self, index: u64, bytes: &Bytes) -> Result<(), String> {
        self.check_hash(index, sha256(bytes))
    }

    /// [`Image::check`] given the chunk's sha256.
    fn check_hash(&self, index: u64, actual: Hash) -> Result<(), String> {
        match self.expected_hash(index) {
            Some(expected) if expected == actual => Ok(()),
            Some(expected) => {
                self.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "sha256 {} where {} expected",
                    &hex::encode(actual)[..16],
                    &hex::encode(expected)[..16]
                ))
            }
            None => {
                self.first_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(index, actual);
                Ok(())
            }
        }
    }

    /// A chunk failed verification from `failed_mirror`: try every other mirror, then that one
    /// once more; then give up naming the chunk.
    async fn refetch(
        &self,
        index: u64,
        failed_mirror: usize,
        mut detail: String,
        start: u64,
        end: u64,
    ) -> Result<Bytes, ImageError> {
        let n = self.mirrors.len();
        let cs = u64::from(self.geometry.chunk_size);
        for step in 1..=n {
            let mirror = (failed_mirror + step) % n;
            let from = self.mirrors[mirror].describe();
            match self
                .read_any(
                    index * cs,
                    self.geometry.chunk_len(index),
                    Some(mirror),
                    start,
                    end,
                )
                .await
            {
                Ok((_, pieces)) => {
                    let data = split(pieces, [self.geometry.chunk_len(index)])
                        .pop()
                        .unwrap_or_default();
                    match self.check(index, &data) {
                        Ok(()) => return Ok(data),
                        Err(d) => detail = format!("{d} from {from}"),
                    }
                }
                Err(e) => {
                    tracing::debug!("{}: refetch of chunk {index} from {from}: {e}", self.name)
                }
            }
        }
        Err(ImageError::Verification {
            image: self.name.clone(),
            start,
            end,
            chunk: index,
            detail,
        })
    }

    /// Read from the preferred mirror (or `only`), failing over in order with backoff.
    async fn read_any(
        &self,
        offset: u64,
        len: usize,
        only: Option<usize>,
        start: u64,
        end: u64,
    ) -> Result<(usize, Vec<Bytes>), ImageError> {
        let n = self.mirrors.len();
        let unavailable = |reason: String| ImageError::Unavailable {
            image: self.name.clone(),
            start,
            end,
            reason,
        };
        if n == 0 {
            return Err(unavailable("the image has no portals".into()));
        }
        let attempts = match only {
            Some(_) => 1,
            None => n as u32 * ROUNDS,
        };
        let mut last_error = String::new();
        for attempt in 0..attempts {
            let mirror = only
                .unwrap_or_else(|| (self.preferred.load(Ordering::Relaxed) + attempt as usize) % n);
            if only.is_none() && attempt > 0 && attempt % n as u32 == 0 {
                tokio::time::sleep(Duration::from_millis(200 << (attempt / n as u32))).await;
            }
            let source = match self.source(mirror, only.is_some()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!("{}: {e}; trying the next portal", self.name);
                    last_error = e.to_string();
                    if only.is_none() && self.is_down().await {
                        break;
                    }
                    continue;
                }
            };
            match source.read_pieces(offset, len).await {
                Ok(data) if data.iter().map(Bytes::len).sum::<usize>() == len => {
                    self.preferred.store(mirror, Ordering::Relaxed);
                    self.stats
                        .bytes_fetched
                        .fetch_add(len as u64, Ordering::Relaxed);
                    return Ok((mirror, data));
                }
                Ok(data) => {
                    last_error = format!(
                        "{}: short read ({} of {len} bytes)",
                        self.mirrors[mirror].describe(),
                        data.iter().map(Bytes::len).sum::<usize>()
                    );
                }
                Err(e) => {
                    last_error = format!("{}: {e}", self.mirrors[mirror].describe());
                    if matches!(e, SourceError::OutOfRange(_)) {
                        return Err(unavailable(last_error));
                    }
                    tracing::info!("{}: {last_error}; failing over", self.name);
                    self.conns.lock().await.sources[mirror] = None;
                }
            }
        }
        self.note_down(&last_error).await;
        Err(unavailable(last_error))
    }

    async fn is_down(&self) -> bool {
        let c = self.conns.lock().await;
        c.down_until.is_some_and(|t| Instant::now() < t)
    }

    async fn note_down(&self, reason: &str) {
        let mut c = self.conns.lock().await;
        if c.sources.iter().all(Option::is_none) {
            c.down_until = Some(Instant::now() + DOWN_PAUSE);
            c.last_error = reason.to_string();
        }
    }

    /// The connected source of `mirror`, connecting when needed. While every portal is known
    /// to be down, fails at once unless `force`.
    async fn source(&self, mirror: usize, force: bool) -> Result<Arc<dyn BlockSource>, Unusable> {
        let mut c = self.conns.lock().await;
        if let Some(s) = &c.sources[mirror] {
            return Ok(s.clone());
        }
        if !force && c.down_until.is_some_and(|t| Instant::now() < t) {
            return Err(Unusable::Unreachable(c.last_error.clone()));
        }
        let m = &self.mirrors[mirror];
        let named = |e: &SourceError| {
            let text = e.to_string();
            if text.contains(&m.describe()) {
                text
            } else {
                format!("{}: {text}", m.describe())
            }
        };
        let source = match tokio::time::timeout(CONNECT_TIMEOUT, m.connect()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e @ SourceError::Unavailable(_))) => {
                return Err(Unusable::Unreachable(named(&e)))
            }
            Ok(Err(e)) => return Err(Unusable::Refused(named(&e))),
            Err(_) => {
                return Err(Unusable::Unreachable(format!(
                    "{}: connect timed out",
                    m.describe()
                )))
            }
        };
        if source.size() != self.size {
            return Err(Unusable::Refused(format!(
                "{}: LUN is {} bytes, the image is {} bytes; refusing it",
                m.describe(),
                source.size(),
                self.size
            )));
        }
        if let Some(serial) = &self.expect_serial {
            if source.identity().serial.as_ref() != Some(serial) {
                return Err(Unusable::Refused(format!(
                    "{}: LUN serial differs from the one cached; refusing it",
                    m.describe()
                )));
            }
        }
        tracing::info!("{}: connected to {}", self.name, m.describe());
        c.sources[mirror] = Some(source.clone());
        c.down_until = None;
        Ok(source)
    }

    /// Try to connect to a mirror now (for `open`): a one-line warning when none answers.
    pub async fn connect_now(&self) -> bool {
        if self.offline {
            return false;
        }
        let n = self.mirrors.len();
        let mut errors = Vec::new();
        let mut answered = false;
        for step in 0..n {
            let mirror = (self.preferred.load(Ordering::Relaxed) + step) % n;
            match self.source(mirror, true).await {
                Ok(_) => {
                    self.preferred.store(mirror, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    if step + 1 < n {
                        // Passed over, not given up: a later failover may come back to it.
                        tracing::warn!("{}: {e}; trying the next portal", self.name);
                    }
                    answered |= matches!(e, Unusable::Refused(_));
                    errors.push(e.to_string());
                }
            }
        }
        if !self.warned_unreachable.swap(true, Ordering::Relaxed) {
            let what = if answered {
                "no portal serves it"
            } else {
                "no portal reachable"
            };
            tracing::warn!(
                "{}: {what} ({}); serving cached chunks only",
                self.name,
                errors.join("; ")
            );
        }
        self.note_down(&errors.join("; ")).await;
        false
    }

    /// Detect sequential reading and keep a growing window of chunks fetched ahead.
    fn after_read(&self, offset: u64, end: u64) {
        if self.offline || !self.readahead.load(Ordering::Relaxed) {
            return;
        }
        let (from, to) = {
            let mut s = self.sequential.lock().unwrap_or_else(|e| e.into_inner());
            let sequential = offset == s.next;
            s.next = end;
            if !sequential {
                s.window = 0;
                s.ahead_until = end;
                return;
            }
            let cs = u64::from(self.geometry.chunk_size);
            s.window = (s.window.max(cs * 4) * 2).min(MAX_READAHEAD.max(cs));
            let target = end.saturating_add(s.window).min(self.size);
            if s.ahead_until >= end.saturating_add(s.window / 2).min(self.size)
                || self.readahead_busy.swap(true, Ordering::Acquire)
            {
                return;
            }
            let from = s.ahead_until.max(end);
            s.ahead_until = target;
            (from, target)
        };
        if from >= to {
            self.readahead_busy.store(false, Ordering::Release);
            return;
        }
        let Some(me) = self.me.upgrade() else {
            self.readahead_busy.store(false, Ordering::Release);
            return;
        };
        tokio::spawn(async move {
            let cs = u64::from(me.geometry.chunk_size);
            let missing: Vec<u64> = (from / cs..to.div_ceil(cs))
                .filter(|&i| me.lookup_quiet(i))
                .collect();
            if !missing.is_empty() {
                if let Err(e) = me.obtain(&missing, from, to).await {
                    tracing::debug!("read-ahead: {e}");
                }
            }
            me.readahead_busy.store(false, Ordering::Release);
        });
    }

    /// True when chunk `index` is neither in memory nor marked present in the store.
    fn lookup_quiet(&self, index: u64) -> bool {
        if self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&index)
        {
            return false;
        }
        !self
            .store
            .as_ref()
            .is_some_and(|s| s.record(index).map(|r| r.present()).unwrap_or(false))
    }
}

/// Cut consecutive `pieces` into consecutive parts of the given lengths: slices of a piece where
/// a part lies within one, a copy only where a part straddles two. Parts the pieces do not cover
/// come out short (the caller's verification rejects them).
fn split(pieces: Vec<Bytes>, lens: impl IntoIterator<Item = usize>) -> Vec<Bytes> {
    let mut pieces = pieces.into_iter().filter(|p| !p.is_empty());
    let mut current = pieces.next().unwrap_or_default();
    let mut out = Vec::new();
    for len in lens {
        if current.len() >= len {
            out.push(current.split_to(len));
        } else {
            let mut joined = BytesMut::with_capacity(len);
            while joined.len() < len {
                if current.is_empty() {
                    match pieces.next() {
                        Some(p) => current = p,
                        None => break,
                    }
                }
                let take = current.len().min(len - joined.len());
                joined.extend_from_slice(&current.split_to(take));
            }
            out.push(joined.freeze());
        }
        if current.is_empty() {
            current = pieces.next().unwrap_or_default();
        }
    }
    out
}

#[cfg(test)]
mod tests;
