//! Passthrough: a complete, verified store handed to the kernel, which then reads the image
//! straight from the cache's data file (FUSE passthrough) at the speed of a local file.
//!
//! The store is pinned while its file is handed out: LRU eviction by other processes passes it
//! by, so the chunks the kernel reads stay where they were verified.
//!
//! Before that, every chunk must have been verified by this process. Chunks it has not seen yet
//! are checked when the image is opened: in place, in a mapping of the data file (no copy; the
//! pages stay in the page cache for the kernel's reads), or read back where mapping is not to be
//! had. A sealed store (see `cache::store`) is not read back at open: its chunks are checked as
//! they are first read, and a later open passes through once all have been.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::cached::Cached;
use super::chunks::{runs, Geometry};
use super::verify::Reference;
use crate::cache::Record;

/// Reads of the store while checking it for passthrough where it cannot be checked in place, in
/// bytes (sequential, through the page cache, which the kernel's reads then find warm).
const CHECK_READ: u64 = 8 << 20;

#[derive(Default)]
pub struct Passthrough {
    /// Held while the kernel reads the store's data file directly.
    pin: Mutex<Option<std::fs::File>>,
    /// A data file has been handed out (read by `stats` without waiting on `pin`, which a check
    /// in progress holds).
    handed_out: AtomicBool,
}

impl Passthrough {
    /// The store's data file, when the store holds every chunk and each has been verified: by
    /// this process already, or now, checking at most `check_at_most` bytes (in place where it
    /// can) as a cache hit is checked, unless the store is sealed. Blocks (it flushes the cache
    /// writer and may read). None when the store is incomplete, sealed with chunks this process
    /// has not seen yet, a chunk fails (it is dropped, to be fetched again), or there is no store.
    pub fn file(
        &self,
        cached: &Cached,
        reference: &Reference,
        geometry: Geometry,
        check_at_most: u64,
    ) -> Option<std::fs::File> {
        let store = cached.store()?;
        cached.flush_blocking();
        if !cached.caching() {
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
        let unverified = cached.unverified();
        if !unverified.is_empty() && cached.sealed() {
            // Sealed: the store is whole and unchanged since it was verified whole, so nothing
            // is read back now. The kernel cannot check what it reads itself, so this open goes
            // the ordinary way, each chunk checked as it is first read; once all have been, a
            // later open passes through.
            return None;
        }
        let bytes: u64 = unverified
            .iter()
            .map(|&i| geometry.chunk_len(i) as u64)
            .sum();
        if bytes > check_at_most {
            return None;
        }
        match cached.check_in_place(&unverified, reference) {
            Some(true) => return self.hand_out(cached, store, held, pin),
            Some(false) => return None,
            None => {}
        }
        for run in runs(geometry, &unverified, CHECK_READ) {
            let last = run.first + run.count - 1;
            if cached.lookup_run(run.first, last, reference).is_none()
                && run.chunks().any(|i| cached.lookup(i, reference).is_none())
            {
                return None;
            }
        }
        self.hand_out(cached, store, held, pin)
    }

    /// Every chunk verified: seal the store when it is not, keep the pin, and hand out its file.
    fn hand_out(
        &self,
        cached: &Cached,
        store: &crate::cache::Store,
        mut held: std::sync::MutexGuard<'_, Option<std::fs::File>>,
        pin: std::fs::File,
    ) -> Option<std::fs::File> {
        let file = store.data_file().ok()?;
        cached.seal_when_whole();
        *held = Some(pin);
        self.handed_out.store(true, Ordering::Relaxed);
        Some(file)
    }

    /// Whether the kernel reads this image directly from the cache.
    pub fn on(&self) -> bool {
        self.handed_out.load(Ordering::Relaxed)
    }
}
