//! Passthrough: a complete, verified store handed to the kernel, which then reads the image
//! straight from the cache's data file (FUSE passthrough) at the speed of a local file.
//!
//! The store is pinned while its file is handed out: LRU eviction by other processes passes it
//! by, so the chunks the kernel reads stay where they were verified.
//!
//! Before that, every chunk must have been verified by this process. Chunks it has not seen yet
//! are read back and checked when the image is opened (up to a bound), one sequential stream of
//! reads: the kernel's read-ahead then fills the page cache in large pieces, which the kernel's
//! own reads of the file go through fastest. Measured on a 512 MiB image, that open plus `dd` of
//! the image took about as long as `dd` of a local file, where an open that checked nothing and
//! left the checking to the reads (the ordinary path) took a third longer, and left the data
//! file's pages in 4 KiB pieces that a later passthrough read 3 times slower. So a sealed store
//! (see `cache::store`) is checked at open like any other; only one too large to check while an
//! open waits has its check run behind that open, in a thread of its own, so that a later open
//! can pass through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::cached::Cached;
use super::chunks::{runs, Geometry};
use super::verify::Reference;
use crate::cache::Record;

/// Reads of the store while checking it, in bytes: small enough that the buffer is still in the
/// CPU's cache when its chunks' CRC32Cs are checked.
const CHECK_READ: u64 = 1 << 20;

#[derive(Default)]
pub struct Passthrough {
    /// Held while the kernel reads the store's data file directly.
    pin: Mutex<Option<std::fs::File>>,
    /// A data file has been handed out (read by `stats` without waiting on `pin`, which a check
    /// in progress holds).
    handed_out: AtomicBool,
    /// The check of a sealed store behind its first reads has been started.
    checking_behind: AtomicBool,
}

impl Passthrough {
    /// The store's data file, when the store holds every chunk and each has been verified: by
    /// this process already, or now, reading back at most `check_at_most` bytes and checking them
    /// as a cache hit is checked (more than that, on a sealed store, starts the check behind this
    /// open, which gets None). Blocks (it flushes the cache writer and may read). None when the
    /// store is incomplete, a chunk fails (it is dropped, to be fetched again), or there is no
    /// store.
    pub fn file(
        &self,
        cached: &Arc<Cached>,
        reference: &Arc<Reference>,
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
        let bytes: u64 = unverified
            .iter()
            .map(|&i| geometry.chunk_len(i) as u64)
            .sum();
        if bytes > check_at_most {
            if cached.sealed() {
                // Sealed: whole and unchanged since it was verified whole. Too much to check
                // while this open waits, and the kernel cannot check what it reads, so this open
                // goes the ordinary way (each chunk checked as it is first read) and the check
                // runs behind it.
                self.check_behind(cached, reference, geometry, unverified);
            }
            return None;
        }
        if !check(cached, reference, geometry, &unverified) {
            return None;
        }
        let file = store.data_file().ok()?;
        cached.seal_when_whole();
        *held = Some(pin);
        self.handed_out.store(true, Ordering::Relaxed);
        Some(file)
    }

    /// Check `chunks` in a thread of its own (once per image), so that a later open can pass
    /// through; reads meanwhile check what they read themselves.
    fn check_behind(
        &self,
        cached: &Arc<Cached>,
        reference: &Arc<Reference>,
        geometry: Geometry,
        chunks: Vec<u64>,
    ) {
        if self.checking_behind.swap(true, Ordering::AcqRel) {
            return;
        }
        let (cached, reference) = (cached.clone(), reference.clone());
        let started = std::thread::Builder::new()
            .name("isomount-check".into())
            .spawn(move || {
                if check(&cached, &reference, geometry, &chunks) {
                    cached.seal_when_whole();
                }
            });
        if started.is_err() {
            self.checking_behind.store(false, Ordering::Release);
        }
    }

    /// Whether the kernel reads this image directly from the cache.
    pub fn on(&self) -> bool {
        self.handed_out.load(Ordering::Relaxed)
    }
}

/// Read back and check stored `chunks` (sorted), in order; each that passes is marked verified
/// (a cache hit), the first that fails is dropped (to be fetched again) and the answer is false.
fn check(cached: &Cached, reference: &Reference, geometry: Geometry, chunks: &[u64]) -> bool {
    runs(geometry, chunks, CHECK_READ).into_iter().all(|run| {
        let last = run.first + run.count - 1;
        cached.lookup_run(run.first, last, reference).is_some()
            || run.chunks().all(|i| cached.lookup(i, reference).is_some())
    })
}
