//! The image core: byte ranges → chunks → cache hit or fetch → verification → [`Verified`] bytes.
//!
//! An [`Image`] is one published image: its sources (each a [`BlockSource`], ranked by
//! [`sources`]), its manifest when it has one, and its cache [`Store`]. A read splits into
//! chunks; hits are checked from the store; misses coalesce into runs that go out concurrently,
//! each verified chunk by chunk as it lands (a failing chunk is fetched again from another
//! source, then the read fails naming image and chunk), and are written to the store.
//! Sequential reads grow a read-ahead window. Offline, or when no source answers, only cached
//! chunks read. No read waits longer than the image's read timeout.
//!
//! Nothing in this module speaks iSCSI: sources come from [`crate::source`].

pub mod identity;
mod open;
pub mod sources;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::{Cache, Geometry, Record, Store};
use crate::manifest::{sha256, Hash, Manifest};
use crate::source::BlockSource;

pub use open::{open, open_source};
use sources::{FetchError, Lie, Run, Sources, Verify};

/// Largest run of missing chunks fetched and verified as one: runs go out concurrently and each
/// is verified as soon as its data is in, while the others are still on the wire.
const MAX_RUN_BYTES: u64 = 256 << 10;
/// Read-ahead grows to this many bytes past a sequential reader.
const MAX_READAHEAD: u64 = 8 << 20;
/// Read-ahead starts once this many bytes have been read back to back.
const READAHEAD_AFTER: u64 = 256 << 10;
/// Verified chunks kept in memory (read-ahead lands here first).
const RECENT_BYTES: u64 = 32 << 20;
/// The longest a read may wait, unless the image is given another bound.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(90);
/// Reads of the store while checking it for passthrough, in bytes (sequential, through the page
/// cache, which the kernel's reads then find warm).
const PASSTHROUGH_CHECK_READ: u64 = 8 << 20;

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
    #[error("{image}: bytes {start}..{end} are not cached and {reason}")]
    NoSource {
        image: String,
        start: u64,
        end: u64,
        reason: String,
    },
    #[error("{image}: bytes {start}..{end}: no answer within {secs} s{}", .reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    TimedOut {
        image: String,
        start: u64,
        end: u64,
        secs: u64,
        reason: Option<String>,
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
    /// Where the bytes come from, in order of preference.
    pub sources: Vec<Arc<dyn BlockSource>>,
    pub offline: bool,
    /// The longest any read waits ([`DEFAULT_READ_TIMEOUT`] unless the user says otherwise).
    pub read_timeout: Duration,
    /// Facts for `info/` (target, lun, vendor, …); size, manifest and portal are added.
    pub facts: Vec<(String, String)>,
    /// Serial the LUN must report (images with no manifest).
    pub expect_serial: Option<String>,
}

#[derive(Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    verify_failures: AtomicU64,
}

struct Sequential {
    next: u64,
    /// Bytes read back to back up to `next`.
    streamed: u64,
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
    sources: Sources,
    offline: bool,
    read_timeout: Duration,
    facts: Vec<(String, String)>,
    store: Option<Arc<Store>>,
    caching: Arc<AtomicBool>,
    /// Why chunks are not being stored, when they are not.
    caching_off: Arc<Mutex<Option<String>>>,
    writer: Option<writer::Writer>,
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
        let sources = Sources::new(&spec.name, geometry, spec.expect_serial, spec.sources);
        Arc::new_cyclic(|me| Image {
            me: me.clone(),
            name: spec.name,
            size: spec.size,
            geometry,
            manifest: spec.manifest,
            manifest_pin,
            sources,
            offline: spec.offline,
            read_timeout: spec.read_timeout,
            facts: spec.facts,
            caching,
            caching_off,
            writer,
            store,
            warned_unreachable: AtomicBool::new(false),
            first_seen: Mutex::new(HashMap::new()),
            recent: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(recent_entries).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            inflight: Mutex::new(HashMap::new()),
            sequential: Mutex::new(Sequential {
                next: u64::MAX,
                streamed: 0,
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
        out.push(("source".into(), self.current_kind()));
        if !self.offline {
            if let Some(source) = self.sources.preferred() {
                for (k, v) in source.facts() {
                    if !out.iter().any(|(have, _)| *have == k) {
                        out.push((k, v));
                    }
                }
            }
        }
        out
    }

    /// The kind of the source in use ("iscsi", "http"), "offline" or "none".
    fn current_kind(&self) -> String {
        if self.offline {
            return "offline".into();
        }
        self.sources
            .preferred()
            .map_or_else(|| "none".into(), |s| s.kind().to_string())
    }

    fn current_portal(&self) -> String {
        if self.offline {
            return "offline".into();
        }
        self.sources
            .preferred()
            .map_or_else(|| "none".into(), |s| s.describe())
    }

    /// Counters for `info/stats`, and what connecting to the current mirror took.
    pub fn stats(&self) -> String {
        let s = &self.stats;
        let connect = self
            .facts()
            .into_iter()
            .find(|(k, _)| k == "connect")
            .map_or_else(|| "-".to_string(), |(_, v)| v);
        format!(
            "hits: {}\nmisses: {}\nbytes fetched: {}\nerrors: {}\nverification failures: {}\nportal: {}\nsource: {}\nconnect: {connect}\ncaching: {}\npassthrough: {}\n",
            s.hits.load(Ordering::Relaxed),
            s.misses.load(Ordering::Relaxed),
            self.sources.bytes_fetched(),
            s.errors.load(Ordering::Relaxed),
            s.verify_failures.load(Ordering::Relaxed),
            self.current_portal(),
            self.current_kind(),
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
        let deadline = Instant::now() + self.read_timeout;
        let read = self.read_parts_by(offset, end, deadline);
        match tokio::time::timeout_at(deadline, read).await {
            Ok(result) => result,
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(self.timed_out(offset, end, None))
            }
        }
    }

    fn timed_out(&self, start: u64, end: u64, reason: Option<String>) -> ImageError {
        ImageError::TimedOut {
            image: self.name.clone(),
            start,
            end,
            secs: self.read_timeout.as_secs(),
            reason,
        }
    }

    /// [`Image::read_parts`] of `offset..end` (within the image), done by `deadline`.
    async fn read_parts_by(
        &self,
        offset: u64,
        end: u64,
        deadline: Instant,
    ) -> Result<Vec<Verified>, ImageError> {
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
            let fetched = self
                .obtain(&missing, offset, end, deadline)
                .await
                .inspect_err(|_| {
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
        let deadline = Instant::now() + self.read_timeout;
        let got = self.obtain(&missing, offset, end, deadline).await?;
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
        deadline: Instant,
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
            self.fetch(&mine, start, end, deadline).await?
        };
        drop(guard);
        let mut leftover = Vec::new();
        for (c, mut rx) in theirs {
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
            match self.lookup(c) {
                Some(b) => out.push((c, b)),
                None => leftover.push(c),
            }
        }
        if !leftover.is_empty() {
            out.extend(self.fetch(&leftover, start, end, deadline).await?);
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
        deadline: Instant,
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
                .map(|&(first, count)| self.fetch_run(Run { first, count }, start, end, deadline)),
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

    /// Fetch one run of chunks from the sources, each chunk verified as it lands.
    async fn fetch_run(
        &self,
        run: Run,
        start: u64,
        end: u64,
        deadline: Instant,
    ) -> Result<Vec<(u64, Bytes)>, ImageError> {
        let fetched = self
            .sources
            .fetch(run, self, deadline)
            .await
            .map_err(|e| self.fetch_error(e, start, end))?;
        Ok(fetched
            .into_iter()
            .map(|(i, verified)| {
                self.mark_verified(i);
                (i, verified.into_bytes())
            })
            .collect())
    }

    fn fetch_error(&self, err: FetchError, start: u64, end: u64) -> ImageError {
        let image = self.name.clone();
        match err {
            FetchError::Lie { chunk, detail } => ImageError::Verification {
                image,
                start,
                end,
                chunk,
                detail,
            },
            FetchError::Unavailable(reason) | FetchError::OutOfRange(reason) => {
                ImageError::Unavailable {
                    image,
                    start,
                    end,
                    reason,
                }
            }
            FetchError::Dropped(reason) => ImageError::NoSource {
                image,
                start,
                end,
                reason,
            },
            FetchError::TimedOut(reason) => self.timed_out(start, end, Some(reason)),
        }
    }

    /// Verify chunk `index` given its sha256 (recording it on first sight when there is no
    /// manifest).
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

    /// Try to connect to a source now (for `open`): a one-line warning when none answers.
    pub async fn connect_now(&self) -> bool {
        if self.offline {
            return false;
        }
        match self.sources.connect_any().await {
            Ok(()) => true,
            Err(failed) => {
                if !self.warned_unreachable.swap(true, Ordering::Relaxed) {
                    let what = if failed.answered {
                        "no portal serves it"
                    } else {
                        "no portal reachable"
                    };
                    tracing::warn!(
                        "{}: {what} ({}); serving cached chunks only",
                        self.name,
                        failed.reasons
                    );
                }
                false
            }
        }
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
            s.streamed = if sequential {
                s.streamed + (end - offset)
            } else {
                end - offset
            };
            // A few small reads that happen to follow each other (an ISO's directories, read
            // one after another) are not a stream: reading ahead of them would cost a small
            // file half a MiB on the wire.
            if !sequential || s.streamed < READAHEAD_AFTER {
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
                let deadline = Instant::now() + me.read_timeout;
                if let Err(e) = me.obtain(&missing, from, to, deadline).await {
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

#[async_trait]
impl Verify for Image {
    /// Hashing runs on the blocking pool: a worker busy hashing would hold up a session's own
    /// task (Data-In waiting in the socket) until it yields.
    async fn verify(&self, chunks: Vec<(u64, Bytes)>) -> Result<Vec<(u64, Verified)>, Lie> {
        let to_hash: Vec<Bytes> = chunks.iter().map(|(_, b)| b.clone()).collect();
        let hashes: Vec<Hash> =
            tokio::task::spawn_blocking(move || to_hash.iter().map(|b| sha256(b)).collect())
                .await
                .unwrap_or_default();
        let mut verified = Vec::with_capacity(chunks.len());
        for (k, (i, bytes)) in chunks.into_iter().enumerate() {
            let checked = match hashes.get(k) {
                Some(actual) => self.check_hash(i, *actual),
                None => Err("hashing was cancelled".to_string()),
            };
            match checked {
                Ok(()) => verified.push((i, Verified(bytes))),
                Err(detail) => {
                    return Err(Lie {
                        verified,
                        chunk: i,
                        detail,
                    })
                }
            }
        }
        Ok(verified)
    }
}

#[cfg(test)]
mod tests;
