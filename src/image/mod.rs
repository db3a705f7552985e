//! The image core: byte ranges → chunks → here (memory, cache store) or fetched from the ranked
//! sources → verified → [`Verified`] bytes out.
//!
//! An [`Image`] is one published image: its sources (each a [`BlockSource`]), its manifest when
//! it has one, and its cache store. A read ([`Image::read_parts`]) walks these parts, each in a
//! file of its own:
//!
//! ```text
//!  read(offset, len)                                   mod.rs: the read, its bound, stats
//!    │ which chunks                                    chunks.rs: offset ↔ chunk, runs
//!    ├─► here? memory, then the store, checked ──────► cached.rs (+ writer.rs: write-behind)
//!    ├─► missing: one fetch per chunk at a time ─────► fetch.rs: in-flight, coalesced runs
//!    │     └─► best source, failover, hedging ───────► sources.rs ─► crate::source (iSCSI, …)
//!    │           └─► each chunk as it lands ─────────► verify.rs: the manifest, Verified
//!    ├─► sequential? fetch ahead ────────────────────► readahead.rs
//!    └─► verified bytes out
//! ```
//! [`Image::read_here`] is the same read for a caller that streams a whole cached image from
//! a thread of its own (`cat`): memory and the store only, on the calling thread, falling back
//! to [`Image::read_parts`] for what is not here.
//! A complete, verified store can be handed to the kernel (passthrough.rs). Opening an image
//! from a catalog name or a URL is open.rs, its cache identity identity.rs; errors error.rs.
//!
//! Offline, or when no source answers, only what is here reads. No read waits longer than the
//! image's read timeout. Nothing in this module speaks iSCSI or HTTP.

mod cached;
pub mod chunks;
mod error;
mod fetch;
pub mod identity;
pub mod open;
mod passthrough;
mod readahead;
pub mod sources;
pub mod verify;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cache::Cache;
use crate::manifest::Manifest;
use crate::source::BlockSource;

use cached::Cached;
use chunks::{Geometry, Span};
pub use error::ImageError;
use fetch::Fetcher;
use passthrough::Passthrough;
use readahead::ReadAhead;
use sources::Sources;
use verify::Reference;
pub use verify::Verified;

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
    /// The longest any read waits ([`crate::config::DEFAULT_READ_TIMEOUT`] unless the user says
    /// otherwise).
    pub read_timeout: Duration,
    /// Facts for `info/` (target, lun, vendor, …); size, manifest and portal are added.
    pub facts: Vec<(String, String)>,
    /// Serial the LUN must report (images with no manifest).
    pub expect_serial: Option<String>,
}

/// One image: what it is, where its bytes come from, and what of it is here.
pub struct Image {
    name: String,
    size: u64,
    geometry: Geometry,
    offline: bool,
    read_timeout: Duration,
    /// Facts for `info/` given when the image was opened.
    facts: Vec<(String, String)>,
    manifest_pin: Option<String>,
    /// What its chunks must hash to.
    reference: Arc<Reference>,
    cached: Arc<Cached>,
    /// Fetches what is missing from the image's sources.
    fetcher: Arc<Fetcher>,
    readahead: Arc<ReadAhead>,
    passthrough: Passthrough,
    /// Reads answered so far (for [`Image::release_when_idle`]).
    reads: AtomicU64,
    /// Reads that failed.
    errors: AtomicU64,
    warned_unreachable: AtomicBool,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish()
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
        let cached = Cached::open(
            &spec.name,
            &spec.identity,
            geometry,
            spec.manifest_bytes.as_deref(),
            cache,
        );
        let manifest_pin = spec.identity.strip_prefix("manifest:").map(str::to_string);
        let sources = Sources::new(&spec.name, geometry, spec.expect_serial, spec.sources);
        let fetcher = Fetcher::new(
            &spec.name,
            geometry,
            spec.offline,
            spec.read_timeout,
            sources,
        );
        Arc::new(Image {
            name: spec.name,
            size: spec.size,
            geometry,
            offline: spec.offline,
            read_timeout: spec.read_timeout,
            facts: spec.facts,
            manifest_pin,
            reference: Arc::new(Reference::new(spec.manifest)),
            cached: Arc::new(cached),
            fetcher: Arc::new(fetcher),
            readahead: Arc::new(ReadAhead::default()),
            passthrough: Passthrough::default(),
            reads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            warned_unreachable: AtomicBool::new(false),
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
        out.push(("chunk-hash".into(), self.chunk_hash()));
        out.push(("portal".into(), self.current_portal()));
        out.push(("source".into(), self.current_kind()));
        if !self.offline {
            if let Some(source) = self.sources().preferred() {
                for (k, v) in source.facts() {
                    if !out.iter().any(|(have, _)| *have == k) {
                        out.push((k, v));
                    }
                }
            }
        }
        out
    }

    /// The chunk hash algorithm ("sha256", "blake3"), and for an image with no manifest where
    /// its hashes come from.
    fn chunk_hash(&self) -> String {
        let alg = self.reference.hash_alg();
        match self.manifest_pin {
            Some(_) => alg.to_string(),
            None => format!("{alg} (recorded on first fetch)"),
        }
    }

    /// The kind of the source in use ("iscsi", "http"), "offline" or "none".
    fn current_kind(&self) -> String {
        if self.offline {
            return "offline".into();
        }
        self.sources()
            .preferred()
            .map_or_else(|| "none".into(), |s| s.kind().to_string())
    }

    fn current_portal(&self) -> String {
        if self.offline {
            return "offline".into();
        }
        self.sources()
            .preferred()
            .map_or_else(|| "none".into(), |s| s.describe())
    }

    fn sources(&self) -> &Sources {
        self.fetcher.sources()
    }

    fn note_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counters for `info/stats`, and what connecting to the current mirror took.
    pub fn stats(&self) -> String {
        let connect = self
            .facts()
            .into_iter()
            .find(|(k, _)| k == "connect")
            .map_or_else(|| "-".to_string(), |(_, v)| v);
        format!(
            "hits: {}\nmisses: {}\nbytes fetched: {}\nerrors: {}\nverification failures: {}\nportal: {}\nsource: {}\nconnect: {connect}\ncaching: {}\nsealed: {}\npassthrough: {}\n",
            self.cached.hits(),
            self.fetcher.misses(),
            self.sources().bytes_fetched(),
            self.errors.load(Ordering::Relaxed),
            self.reference.failures(),
            self.current_portal(),
            self.current_kind(),
            if self.cached.caching() { "on" } else { "off" },
            if self.cached.sealed() { "yes (whole and unchanged since verified)" } else { "no" },
            if self.pinned() { "on (the kernel reads the verified cache directly)" } else { "off" },
        )
    }

    /// Bytes of this image present in the cache (by the index; not re-checked).
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
        self.cached.caching_off()
    }

    /// Which chunks the store's index marks present (not re-checked).
    pub fn present_chunks(&self) -> Vec<bool> {
        self.cached.present_chunks()
    }

    /// Read `len` bytes at `offset` (clamped at the image's end): verified, or an error.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Verified, ImageError> {
        Ok(Verified::join(self.read_parts(offset, len).await?))
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
                self.note_error();
                Err(self.fetcher.timed_out(offset, end, None))
            }
        }
    }

    /// [`Image::read_parts`] of `offset..end` (within the image), done by `deadline`.
    async fn read_parts_by(
        &self,
        offset: u64,
        end: u64,
        deadline: Instant,
    ) -> Result<Vec<Verified>, ImageError> {
        let span = Span::of(self.geometry, offset, end);
        let mut parts = match self.cached.get(span, &self.reference).await {
            Ok(all) => {
                self.after_read(offset, end);
                return Ok(vec![all.slice(span.skip..span.skip + span.len)]);
            }
            Err(parts) => parts,
        };
        let missing: Vec<u64> = span
            .chunks()
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
                .obtain(&missing, (offset, end), deadline)
                .await
                .inspect_err(|_| self.note_error())?;
            for (i, bytes) in fetched {
                parts[(i - span.first) as usize] = Some(bytes);
            }
        }
        self.after_read(offset, end);
        // Every chunk was found or fetched above; never hand out a range with a hole in it.
        pieces(span, parts).ok_or_else(|| ImageError::Unavailable {
            image: self.name.clone(),
            start: offset,
            end,
            reason: "a chunk went missing between fetch and read".into(),
        })
    }

    /// `offset..offset+len` when every chunk of it is here (memory or the store, checked as
    /// any cache hit is), read on the calling thread; None when any is not (the caller then
    /// reads the ordinary way, [`Image::read_parts`], which fetches). Blocks on the store: for
    /// a caller that streams a whole cached image from a thread of its own (`cat`).
    pub fn read_here(&self, offset: u64, len: usize) -> Option<Vec<Verified>> {
        if offset >= self.size || len == 0 {
            return Some(Vec::new());
        }
        let end = offset.saturating_add(len as u64).min(self.size);
        let span = Span::of(self.geometry, offset, end);
        let found = match self.cached.get_blocking(span, &self.reference) {
            Ok(all) => Some(vec![all.slice(span.skip..span.skip + span.len)]),
            Err(parts) => pieces(span, parts),
        };
        if found.is_some() {
            self.after_read(offset, end);
        }
        found
    }

    /// Make sure every chunk of `offset..offset+len` is in the cache, fetching what is missing
    /// (present chunks are not re-checked). Returns the bytes fetched.
    pub async fn prefetch(&self, offset: u64, len: u64) -> Result<u64, ImageError> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(0);
        }
        let missing: Vec<u64> = Span::of(self.geometry, offset, end)
            .chunks()
            .filter(|&i| !self.cached.stored(i))
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let deadline = Instant::now() + self.read_timeout;
        let got = self.obtain(&missing, (offset, end), deadline).await?;
        Ok(got.iter().map(|(_, b)| b.len() as u64).sum())
    }

    async fn obtain(
        &self,
        chunks: &[u64],
        read: (u64, u64),
        deadline: Instant,
    ) -> Result<Vec<(u64, Verified)>, ImageError> {
        self.fetcher
            .obtain(chunks, read, deadline, &self.cached, &self.reference)
            .await
    }

    /// After a read of `offset..end`: when it goes on from the last one, fetch a window ahead in
    /// the background (see [`readahead`]).
    fn after_read(&self, offset: u64, end: u64) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if self.offline || !self.readahead.is_on() {
            return;
        }
        let cs = u64::from(self.geometry.chunk_size);
        let Some((from, to)) = self.readahead.window_after(offset, end, cs, self.size) else {
            return;
        };
        let readahead = self.readahead.clone();
        let (fetcher, cached) = (self.fetcher.clone(), self.cached.clone());
        let reference = self.reference.clone();
        let deadline = Instant::now() + self.read_timeout;
        tokio::spawn(async move {
            let missing: Vec<u64> = (from / cs..to.div_ceil(cs))
                .filter(|&i| cached.is_missing(i))
                .collect();
            if !missing.is_empty() {
                let read = (from, to);
                let fetched = fetcher.obtain(&missing, read, deadline, &cached, &reference);
                if let Err(e) = fetched.await {
                    tracing::debug!("read-ahead: {e}");
                }
            }
            readahead.done();
        });
    }

    /// Once no read has come for `idle`, let go of the memory reads left behind: the chunks
    /// kept in memory and the read buffers kept for reuse (a mount that read an image whole
    /// would otherwise hold tens of MiB while it sits idle). Reads after that fetch or read the
    /// store as usual. Runs in the background while the image lives; call within the runtime.
    pub fn release_when_idle(self: &Arc<Self>, idle: Duration) {
        let image = Arc::downgrade(self);
        let tick = (idle / 4).max(Duration::from_millis(50));
        tokio::spawn(async move {
            let (mut seen, mut quiet_since, mut released) = (u64::MAX, Instant::now(), false);
            loop {
                tokio::time::sleep(tick).await;
                let Some(image) = image.upgrade() else {
                    return;
                };
                let reads = image.reads.load(Ordering::Relaxed);
                if reads != seen {
                    (seen, quiet_since, released) = (reads, Instant::now(), false);
                } else if !released && quiet_since.elapsed() >= idle {
                    image.cached.forget_recent();
                    crate::iobuf::pool::READS.release();
                    crate::platform::release_free_memory();
                    tracing::debug!("{}: idle; memory let go", image.name);
                    released = true;
                }
            }
        });
    }

    /// Bytes per fetch that suit the source in use (see
    /// [`crate::source::BlockSource::run_bytes`]): what a reader that keeps
    /// its own reads in flight (`cat`) reads at a time at least.
    pub fn run_bytes(&self) -> u64 {
        self.fetcher.run_bytes()
    }

    /// Turn read-ahead off for a reader that keeps its own reads in flight (`cat`, `fetch`):
    /// nothing is fetched ahead, and fetched chunks are not kept in memory.
    pub fn set_read_ahead(&self, on: bool) {
        self.readahead.set(on);
        self.cached.set_keep_recent(on);
    }

    /// Wait until every chunk fetched so far has been written to the cache.
    pub async fn flush(&self) {
        self.cached.flush().await;
    }

    /// [`Image::flush`] for a thread that is not running async code (the image file closed).
    pub fn settle(&self) {
        self.cached.flush_blocking();
    }

    /// The store's data file, for the kernel to read the image from directly (FUSE passthrough),
    /// when the store holds every chunk and each has been verified (reading back and checking
    /// at most `check_at_most` bytes now). See `image/passthrough.rs`.
    pub fn passthrough_file(&self, check_at_most: u64) -> Option<std::fs::File> {
        self.passthrough
            .file(&self.cached, &self.reference, self.geometry, check_at_most)
    }

    /// Whether the kernel reads this image directly from the cache.
    pub fn pinned(&self) -> bool {
        self.passthrough.on()
    }

    /// Try to connect to a source now (for `open`): a one-line warning when none answers.
    pub async fn connect_now(&self) -> bool {
        if self.offline {
            return false;
        }
        match self.sources().connect_any().await {
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
}

/// The bytes of `span` out of its chunks (`parts`, one per chunk), without joining them; None
/// when a chunk is missing.
fn pieces(span: Span, parts: Vec<Option<Verified>>) -> Option<Vec<Verified>> {
    let mut out = Vec::with_capacity(parts.len());
    let mut skip = span.skip;
    let mut left = span.len;
    for p in parts {
        let p = p?;
        let take = (p.len() - skip).min(left);
        out.push(p.slice(skip..skip + take));
        left -= take;
        skip = 0;
    }
    (left == 0).then_some(out)
}

#[cfg(test)]
mod tests;
