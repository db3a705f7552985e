//! Chunks already here: the most recent verified chunks in memory (where read-ahead lands), and
//! the image's cache [`Store`] on disk, each chunk checked on the way out ([`Reference::stored`]).
//! Newly verified chunks go to both, the store's share through the write-behind [`Writer`].
//!
//! Reading the store blocks, so it runs on the blocking pool ([`Cached::get`]): disk reads of
//! many readers overlap, and the async workers stay free for the network.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::chunks::{Geometry, Span};
use super::verify::{Reference, Verified};
use super::writer::{Target, Writer};
use crate::cache::store::now_micros;
use crate::cache::{Cache, Store};
use crate::manifest::Hash;

/// Verified chunks kept in memory (read-ahead lands here first).
const RECENT_BYTES: u64 = 32 << 20;
/// A chunk read from the store counts as used again (for LRU eviction) when its recorded use is
/// older than this: recency is coarse, and a reader that goes over a fresh image writes nothing.
const USE_GRAIN_MICROS: u64 = 60_000_000;
/// Uses recorded in memory before they are handed to the writer thread.
const USE_BATCH: usize = 1024;
/// Uses kept in memory at most while the writer's queue is full (the rest are forgotten).
const USES_KEPT: usize = 64 * USE_BATCH;

/// What is here of one image: memory and the store.
pub struct Cached {
    name: String,
    geometry: Geometry,
    store: Option<Arc<Store>>,
    recent: Mutex<lru::LruCache<u64, Verified>>,
    /// Whether fetched chunks are kept in memory (off for readers that keep their own reads in
    /// flight: they have no use for it).
    keep_recent: AtomicBool,
    /// Cleared, with one warning, when the store cannot be written: reads go on uncached.
    caching: Arc<AtomicBool>,
    /// Why chunks are not being stored, when they are not.
    caching_off: Arc<Mutex<Option<String>>>,
    writer: Option<Writer>,
    hits: AtomicU64,
    /// Chunks this process has verified (fetched and hashed, or read back and checked).
    verified: Mutex<Vec<bool>>,
    /// Chunks read from the store whose use is not recorded yet (the writer records them).
    uses: Mutex<Vec<u64>>,
    /// This process found the store sealed or sealed it (no need to look again).
    sealed_here: AtomicBool,
}

impl Cached {
    /// Memory, and with a cache the store for `identity` (opened or created). A store that cannot
    /// be opened means uncached operation, with a warning.
    pub fn open(
        name: &str,
        identity: &str,
        geometry: Geometry,
        manifest_bytes: Option<&[u8]>,
        cache: Option<Arc<Cache>>,
    ) -> Cached {
        let caching_off = Arc::new(Mutex::new(None));
        let store = cache.as_ref().and_then(|c| {
            match c.open_store(name, identity, geometry, manifest_bytes) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::warn!("{name}: cache unavailable ({e}); reading without it");
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
                    "{name}: cache store {}: {present} of {} chunks of {} bytes present",
                    store.dir().display(),
                    geometry.chunks(),
                    geometry.chunk_size
                );
            }
        }
        let caching = Arc::new(AtomicBool::new(store.is_some()));
        let writer = store.as_ref().and_then(|store| {
            Writer::start(Target {
                name: name.to_string(),
                store: store.clone(),
                cache: cache.clone(),
                caching: caching.clone(),
                caching_off: caching_off.clone(),
            })
        });
        let recent_entries = (RECENT_BYTES / u64::from(geometry.chunk_size)).max(4) as usize;
        Cached {
            name: name.to_string(),
            geometry,
            store,
            recent: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(recent_entries).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            keep_recent: AtomicBool::new(true),
            caching,
            caching_off,
            writer,
            hits: AtomicU64::new(0),
            verified: Mutex::new(vec![false; geometry.chunks() as usize]),
            uses: Mutex::new(Vec::new()),
            sealed_here: AtomicBool::new(false),
        }
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Chunks found here so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Whether verified chunks are being stored.
    pub fn caching(&self) -> bool {
        self.caching.load(Ordering::Relaxed)
    }

    /// Why verified chunks are not being stored (a full disk, no store), when they are not.
    pub fn caching_off(&self) -> Option<String> {
        if self.caching() {
            return None;
        }
        let why = self.caching_off.lock().unwrap_or_else(|e| e.into_inner());
        Some(why.clone().unwrap_or_else(|| "no cache".to_string()))
    }

    /// Keep fetched chunks in memory, or not.
    pub fn set_keep_recent(&self, on: bool) {
        self.keep_recent.store(on, Ordering::Relaxed);
    }

    /// Which chunks the store's index marks present (not re-checked).
    pub fn present_chunks(&self) -> Vec<bool> {
        match self.store.as_ref().map(|s| s.records()) {
            Some(Ok(records)) => records.iter().map(|r| r.present()).collect(),
            _ => vec![false; self.geometry.chunks() as usize],
        }
    }

    /// Whether the store's index marks chunk `index` present (not re-checked).
    pub fn stored(&self, index: u64) -> bool {
        self.store
            .as_ref()
            .is_some_and(|s| s.record(index).map(|r| r.present()).unwrap_or(false))
    }

    /// True when chunk `index` is neither in memory nor marked present in the store.
    pub fn is_missing(&self, index: u64) -> bool {
        let in_memory = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&index);
        !in_memory && !self.stored(index)
    }

    pub fn mark_verified(&self, index: u64) {
        if let Some(v) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(index as usize)
        {
            *v = true;
        }
    }

    /// Chunks this process has not verified yet.
    pub fn unverified(&self) -> Vec<u64> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        (0..verified.len() as u64)
            .filter(|&i| !verified[i as usize])
            .collect()
    }

    /// A verified chunk from memory (None when it is not there).
    pub fn recent(&self, index: u64) -> Option<Verified> {
        let hit = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
            .cloned();
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// A chunk served from the store: a hit, verified this session, and (when its recorded use
    /// is old) a use to record, in memory until a batch is full.
    fn note_hit(&self, index: u64, record: &crate::cache::Record, now: u64) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.mark_verified(index);
        if now.saturating_sub(record.last_use) < USE_GRAIN_MICROS {
            return;
        }
        let batch = {
            let mut uses = self.uses.lock().unwrap_or_else(|e| e.into_inner());
            uses.push(index);
            if uses.len() < USE_BATCH {
                return;
            }
            std::mem::take(&mut *uses)
        };
        self.hand_over_uses(batch);
    }

    /// Give recorded uses to the writer; kept for later when its queue is full, up to a bound
    /// (recency is advice: a chunk read again and again while the writer is busy would otherwise
    /// be queued again and again).
    fn hand_over_uses(&self, batch: Vec<u64>) {
        let Some(writer) = &self.writer else {
            return;
        };
        if let Err(batch) = writer.note_uses(batch) {
            let mut uses = self.uses.lock().unwrap_or_else(|e| e.into_inner());
            if uses.len() + batch.len() <= USES_KEPT {
                uses.extend(batch);
            }
        }
    }

    fn hand_over_all_uses(&self) {
        let batch = std::mem::take(&mut *self.uses.lock().unwrap_or_else(|e| e.into_inner()));
        if !batch.is_empty() {
            self.hand_over_uses(batch);
        }
    }

    /// A verified chunk from memory or the store. A stored chunk that fails its check is
    /// dropped from the store (it is fetched again).
    pub fn lookup(&self, index: u64, reference: &Reference) -> Option<Verified> {
        if let Some(b) = self.recent(index) {
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
        if let Some(verified) = reference.stored(index, bytes, &record) {
            self.note_hit(index, &record, now_micros());
            return Some(verified);
        }
        // Another process may have evicted it between our reads of record and data.
        if self.stored(index) {
            tracing::warn!(
                "{}: cached chunk {index} failed verification; dropping it and fetching again",
                self.name
            );
            let _ = store.drop_chunks(&[index]);
            self.sealed_here.store(false, Ordering::Relaxed);
        }
        None
    }

    /// Chunks `first..=last` from the store in one read when all are present and verify: no
    /// copies beyond the read itself. None sends the caller down the chunk-by-chunk path.
    pub fn lookup_run(&self, first: u64, last: u64, reference: &Reference) -> Option<Verified> {
        if first == last {
            return None;
        }
        let store = self.store.as_ref()?;
        let (bytes, records) = store.get_range(first, last).ok()??;
        let lens = (first..=last).map(|i| self.geometry.chunk_len(i));
        let verified = reference.stored_run(first, bytes, lens, &records)?;
        let now = now_micros();
        for (k, record) in records.iter().enumerate() {
            self.note_hit(first + k as u64, record, now);
        }
        Some(verified)
    }

    /// The chunks of `span` that are here: all of them as one buffer when the store has them all
    /// (one read), else each chunk found, None where missing.
    pub async fn get(
        self: &Arc<Self>,
        span: Span,
        reference: &Arc<Reference>,
    ) -> Result<Verified, Vec<Option<Verified>>> {
        // A cold read goes on to fetching at once, in the order reads arrive: by way of the
        // blocking pool, a burst of cold reads reached the sources in any order (a web mirror's
        // first ranges went out for 0, 4, 56-72 and 92 MiB while 8-52 waited).
        let (in_memory, stored) = self.to_gather(span)?;
        let (me, reference) = (self.clone(), reference.clone());
        // Its place among the store's reads is taken now, in the order requests arrive.
        let _coming = self
            .store
            .as_ref()
            .map(|store| ReadComing::new(store, span.first * u64::from(self.geometry.chunk_size)));
        tokio::task::spawn_blocking(move || me.gather(span, in_memory, stored, &reference))
            .await
            .unwrap_or_else(|_| Err(vec![None; span.count()]))
    }

    /// Which chunks of `span` the store's records say it holds: one small read of the index,
    /// which the page cache nearly always holds (made on the caller's thread). All true when the
    /// records cannot be read (each chunk is then looked up, and checked, on its own).
    fn stored_in(&self, span: Span) -> Vec<bool> {
        match self
            .store
            .as_ref()
            .map(|s| s.records_range(span.first, span.last))
        {
            Some(Ok(records)) => records.iter().map(|r| r.present()).collect(),
            _ => vec![true; span.count()],
        }
    }

    /// [`Cached::get`] on the calling thread (it reads the store): for a caller that reads
    /// a whole cached image in order and would otherwise wait on a thread hand-off per read.
    pub fn get_blocking(
        &self,
        span: Span,
        reference: &Reference,
    ) -> Result<Verified, Vec<Option<Verified>>> {
        let (in_memory, stored) = self.to_gather(span)?;
        self.gather(span, in_memory, stored, reference)
    }

    /// What [`Cached::get`] finds of `span` without reading the store's data: in memory, and
    /// which chunks the store's records hold. Err with the answer when nothing is left to read
    /// from the store (all in memory, no store, or none of it here at all).
    fn to_gather(&self, span: Span) -> Result<(Found, Vec<bool>), Found> {
        let in_memory: Found = span.chunks().map(|i| self.recent(i)).collect();
        if in_memory.iter().all(Option::is_some) || self.store.is_none() {
            return Err(in_memory);
        }
        let stored = self.stored_in(span);
        if !stored.iter().any(|&s| s) && in_memory.iter().all(Option::is_none) {
            return Err(in_memory);
        }
        Ok((in_memory, stored))
    }

    /// The rest of [`Cached::get`]: what memory lacks, from the store.
    fn gather(
        &self,
        span: Span,
        in_memory: Vec<Option<Verified>>,
        stored: Vec<bool>,
        reference: &Reference,
    ) -> Result<Verified, Vec<Option<Verified>>> {
        if in_memory.iter().all(Option::is_none) && stored.iter().all(|&s| s) {
            if let Some(all) = self.lookup_run(span.first, span.last, reference) {
                return Ok(all);
            }
        }
        Err(span
            .chunks()
            .zip(in_memory)
            .zip(stored)
            .map(|((i, m), stored)| {
                m.or_else(|| stored.then(|| self.lookup(i, reference)).flatten())
            })
            .collect())
    }

    /// Keep newly verified chunks: in memory (unless turned off), and queued for the store
    /// (unless caching is off).
    pub async fn keep(&self, chunks: &[(u64, Verified)], reference: &Reference) {
        for (i, _) in chunks {
            self.mark_verified(*i);
        }
        if self.keep_recent.load(Ordering::Relaxed) {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            for (i, b) in chunks {
                recent.put(*i, b.clone());
            }
        }
        let Some(writer) = &self.writer else {
            return;
        };
        if !self.caching() || chunks.is_empty() {
            return;
        }
        let items: Vec<(u64, Bytes, Hash, u32)> = chunks
            .iter()
            .filter_map(|(i, b)| {
                reference
                    .expected(*i)
                    .map(|h| (*i, b.clone().into_bytes(), h, b.crc32c()))
            })
            .collect();
        writer.write(items).await;
    }

    /// Wait until every chunk kept so far has been written to the store (and the uses seen
    /// so far recorded); then seal the store if it has become whole and verified.
    pub async fn flush(self: &Arc<Self>) {
        self.hand_over_all_uses();
        if let Some(writer) = &self.writer {
            writer.flush().await;
        }
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.seal_when_whole()).await;
    }

    /// [`Cached::flush`] for a thread that is not running async code.
    pub fn flush_blocking(&self) {
        self.hand_over_all_uses();
        if let Some(writer) = &self.writer {
            writer.flush_blocking();
        }
        self.seal_when_whole();
    }

    /// Seal the store (see [`Store::seal`]) when every chunk is in it and this process has
    /// verified each one, unless it is sealed already. Call after a flush.
    pub fn seal_when_whole(&self) {
        let Some(store) = &self.store else {
            return;
        };
        if self.sealed_here.load(Ordering::Relaxed) || !self.caching() {
            return;
        }
        if !self.unverified().is_empty() {
            return;
        }
        let sealed = store.sealed() || {
            match store.seal() {
                Ok(sealed) => sealed,
                Err(err) => {
                    tracing::debug!("{}: sealing the cache store: {err}", self.name);
                    false
                }
            }
        };
        if sealed {
            tracing::debug!(
                "{}: cache store {} sealed",
                self.name,
                store.dir().display()
            );
            self.sealed_here.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the store has a valid seal now (see [`Store::sealed`]).
    pub fn sealed(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.sealed())
    }

    /// Forget the chunks kept in memory (the store and the sources still have them): for an
    /// idle image, and for tests that damage the store underneath.
    pub fn forget_recent(&self) {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for Cached {
    /// The uses not yet recorded go to the writer, which finishes its queue before it exits.
    fn drop(&mut self) {
        self.hand_over_all_uses();
    }
}

/// A span's chunks as found: each verified, or None where missing.
type Found = Vec<Option<Verified>>;

/// A store read announced as its request arrives ([`Store::read_coming`]), and forgotten when
/// this is dropped (made, failed or abandoned alike).
struct ReadComing {
    store: Arc<Store>,
    start: u64,
}

impl ReadComing {
    fn new(store: &Arc<Store>, start: u64) -> ReadComing {
        store.read_coming(start);
        ReadComing {
            store: store.clone(),
            start,
        }
    }
}

impl Drop for ReadComing {
    fn drop(&mut self) {
        self.store.read_arrived(self.start);
    }
}
