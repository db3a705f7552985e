//! Fetching what is not here. A chunk is fetched once however many readers want it at the same
//! time ([`Inflight`]); adjacent missing chunks are coalesced into runs, each one read from the
//! ranked sources ([`super::sources`]) and verified chunk by chunk as it lands; the runs go out
//! concurrently, and what they bring is kept ([`super::cached`]).

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::join_all;
use tokio::sync::watch;
use tokio::time::Instant;

use super::chunks::{runs, Run};
use super::sources::FetchError;
use super::verify::Verified;
use super::{Image, ImageError};

/// Largest run of missing chunks fetched and verified as one: runs go out concurrently and each
/// is verified as soon as its data is in, while the others are still on the wire.
pub const MAX_RUN_BYTES: u64 = 256 << 10;

/// Chunks being fetched, each with a receiver that wakes when its fetch ends.
#[derive(Default)]
pub struct Inflight(Mutex<HashMap<u64, watch::Receiver<()>>>);

/// Marks chunks as being fetched; dropping it wakes the tasks waiting for them.
struct InflightGuard<'a> {
    inflight: &'a Inflight,
    chunks: Vec<u64>,
    _done: watch::Sender<()>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.inflight.0.lock().unwrap_or_else(|e| e.into_inner());
        for c in &self.chunks {
            map.remove(c);
        }
    }
}

impl Image {
    /// Fetch `chunks` (sorted, missing) for a read of `start..end`, sharing fetches already under
    /// way; done by `deadline`.
    pub(super) async fn obtain(
        &self,
        chunks: &[u64],
        start: u64,
        end: u64,
        deadline: Instant,
    ) -> Result<Vec<(u64, Verified)>, ImageError> {
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        let (done, _) = watch::channel(());
        {
            let mut map = self.inflight.0.lock().unwrap_or_else(|e| e.into_inner());
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
            inflight: &self.inflight,
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
            match self.cached.lookup(c, &self.reference) {
                Some(b) => out.push((c, b)),
                None => leftover.push(c),
            }
        }
        if !leftover.is_empty() {
            out.extend(self.fetch(&leftover, start, end, deadline).await?);
        }
        Ok(out)
    }

    /// Fetch chunks from the sources: runs of adjacent chunks, read concurrently, each chunk
    /// verified as it lands; what they bring is kept.
    async fn fetch(
        &self,
        chunks: &[u64],
        start: u64,
        end: u64,
        deadline: Instant,
    ) -> Result<Vec<(u64, Verified)>, ImageError> {
        if self.offline {
            return Err(self.offline_error(chunks, start, end));
        }
        self.stats.note_misses(chunks.len());
        let results = join_all(
            runs(self.geometry, chunks, MAX_RUN_BYTES)
                .into_iter()
                .map(|run| self.fetch_run(run, start, end, deadline)),
        )
        .await;
        let mut out = Vec::with_capacity(chunks.len());
        for r in results {
            out.extend(r?);
        }
        self.cached.keep(&out, &self.reference).await;
        Ok(out)
    }

    async fn fetch_run(
        &self,
        run: Run,
        start: u64,
        end: u64,
        deadline: Instant,
    ) -> Result<Vec<(u64, Verified)>, ImageError> {
        self.sources
            .fetch(run, self.reference.as_ref(), deadline)
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
