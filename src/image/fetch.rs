//! Fetching what is not here. A chunk is fetched once however many readers want it at the same
//! time (the in-flight table); adjacent missing chunks are coalesced into runs, each read from the
//! ranked [`Sources`] and verified chunk by chunk as it lands; the runs go out concurrently, and
//! what they bring is kept ([`Cached::keep`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::watch;
use tokio::time::Instant;

use super::cached::Cached;
use super::chunks::{runs, Geometry, Run};
use super::error::ImageError;
use super::sources::{FetchError, Sources};
use super::verify::{Reference, Verified};

/// Largest run of missing chunks fetched and verified as one when no source says what suits it
/// (see [`BlockSource::run_bytes`](crate::source::BlockSource::run_bytes)): runs go out
/// concurrently and each is verified as soon as its data is in, while the others are still on
/// the wire.
pub const MAX_RUN_BYTES: u64 = 256 << 10;

/// Fetches one image's missing chunks.
pub struct Fetcher {
    /// The image's name, for errors.
    name: String,
    geometry: Geometry,
    offline: bool,
    /// The read bound, for errors that say it was reached.
    read_timeout: Duration,
    sources: Sources,
    /// Chunks being fetched, each with a receiver that wakes when its fetch ends.
    inflight: Mutex<HashMap<u64, watch::Receiver<()>>>,
    misses: AtomicU64,
}

/// Marks chunks as being fetched; dropping it wakes the tasks waiting for them.
struct InflightGuard<'a> {
    fetcher: &'a Fetcher,
    chunks: Vec<u64>,
    _done: watch::Sender<()>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.fetcher.inflight();
        for c in &self.chunks {
            map.remove(c);
        }
    }
}

impl Fetcher {
    pub fn new(
        name: &str,
        geometry: Geometry,
        offline: bool,
        read_timeout: Duration,
        sources: Sources,
    ) -> Fetcher {
        Fetcher {
            name: name.to_string(),
            geometry,
            offline,
            read_timeout,
            sources,
            inflight: Mutex::new(HashMap::new()),
            misses: AtomicU64::new(0),
        }
    }

    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// Chunks fetched (or asked for while offline) so far.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, watch::Receiver<()>>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The error of a read of `start..end` that reached the read bound.
    pub fn timed_out(&self, start: u64, end: u64, reason: Option<String>) -> ImageError {
        ImageError::TimedOut {
            image: self.name.clone(),
            start,
            end,
            secs: self.read_timeout.as_secs(),
            reason,
        }
    }

    /// Fetch `chunks` (sorted, missing) for a read of `start..end`, sharing fetches already under
    /// way; done by `deadline`. What is fetched is kept in `cached`.
    pub async fn obtain(
        &self,
        chunks: &[u64],
        (start, end): (u64, u64),
        deadline: Instant,
        cached: &Cached,
        reference: &Reference,
    ) -> Result<Vec<(u64, Verified)>, ImageError> {
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        let (done, _) = watch::channel(());
        {
            let mut map = self.inflight();
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
            fetcher: self,
            chunks: mine.clone(),
            _done: done,
        };
        let read = (start, end);
        let mut out = if mine.is_empty() {
            Vec::new()
        } else {
            self.fetch(&mine, read, deadline, cached, reference).await?
        };
        drop(guard);
        let mut leftover = Vec::new();
        for (c, mut rx) in theirs {
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
            match cached.lookup(c, reference) {
                Some(b) => out.push((c, b)),
                None => leftover.push(c),
            }
        }
        if !leftover.is_empty() {
            out.extend(
                self.fetch(&leftover, read, deadline, cached, reference)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Fetch chunks from the sources: runs of adjacent chunks, read concurrently, each chunk
    /// verified as it lands; what they bring is kept.
    async fn fetch(
        &self,
        chunks: &[u64],
        (start, end): (u64, u64),
        deadline: Instant,
        cached: &Cached,
        reference: &Reference,
    ) -> Result<Vec<(u64, Verified)>, ImageError> {
        if self.offline {
            return Err(self.offline_error(chunks, start, end));
        }
        self.misses
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        let results = join_all(
            runs(self.geometry, chunks, self.run_bytes())
                .into_iter()
                .map(|run| self.fetch_run(run, (start, end), deadline, reference)),
        )
        .await;
        let mut out = Vec::with_capacity(chunks.len());
        for r in results {
            out.extend(r?);
        }
        cached.keep(&out, reference).await;
        Ok(out)
    }

    /// Bytes per run: what suits the preferred source. An iSCSI portal takes 256 KiB READs; a
    /// web mirror wants a few MiB per range request, since each costs a round trip and is one
    /// request slot (measured through a 20 ms round trip: 256 KiB runs made 261 requests for
    /// 256 MiB, many of them 256 KiB alone, and `cat NAME` ran at a third of `curl`).
    pub(super) fn run_bytes(&self) -> u64 {
        self.sources
            .preferred()
            .map_or(MAX_RUN_BYTES, |source| source.run_bytes() as u64)
            .max(1)
    }

    async fn fetch_run(
        &self,
        run: Run,
        (start, end): (u64, u64),
        deadline: Instant,
        reference: &Reference,
    ) -> Result<Vec<(u64, Verified)>, ImageError> {
        self.sources
            .fetch(run, reference, deadline)
            .await
            .map_err(|e| self.fetch_error(e, start, end))
    }

    /// Offline: name what is missing, not the whole read: the first missing stretch, and how
    /// many others there are.
    fn offline_error(&self, chunks: &[u64], start: u64, end: u64) -> ImageError {
        let stretches = runs(self.geometry, chunks, u64::MAX);
        let cs = u64::from(self.geometry.chunk_size);
        let first = stretches.first().copied().unwrap_or(Run {
            first: start / cs,
            count: 1,
        });
        let from = (first.first * cs).max(start);
        let to = ((first.first + first.count) * cs).min(end).max(from);
        ImageError::Offline {
            image: self.name.clone(),
            start: from,
            end: to,
            more: stretches.len().saturating_sub(1),
        }
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
}
