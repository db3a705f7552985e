//! Passthrough: a complete, verified store handed to the kernel, which then reads the image
//! straight from the cache's data file (FUSE passthrough) at the speed of a local file.
//!
//! The store is pinned while its file is handed out: LRU eviction by other processes passes it
//! by, so the chunks the kernel reads stay where they were verified.
//!
//! Before that, every chunk must have been verified by this process:
//! - a **sealed** store (see `cache::store`: whole and unchanged since it was verified whole) is
//!   not read back at open. Its first open goes the ordinary way, each chunk checked against its
//!   record and the manifest as it is read (the check spread over the reads, where fs-verity
//!   would have the kernel check each page); once reads have checked every chunk, a later open
//!   passes through. Remounted after drop_caches, `dd` of a 256 MiB image read this way took
//!   173 ms where checking all of it at open and then passing through took 211 ms and `dd` of
//!   the local file 135 ms (medians of 9, a loaded machine): the store's reads run as one
//!   stream (`Store::read_data`) and the checks overlap them, where the check at open reads the
//!   whole store and `dd` then reads the page cache again;
//! - any other whole store has the chunks this process has not seen yet read back and checked
//!   when the image is opened (up to a bound; more goes the ordinary way), one sequential stream
//!   of reads.
//!
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
}

impl Passthrough {
    /// The store's data file, when the store holds every chunk and each has been verified: by
    /// this process already, or now, reading back at most `check_at_most` bytes and checking them
    /// as a cache hit is checked (none on a sealed store, whose reads check themselves). Blocks (it flushes the cache writer and may read). None when the
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
        if !unverified.is_empty() && cached.sealed() {
            // Sealed: whole and unchanged since it was verified whole. Nothing is read back
            // while this open waits: it goes the ordinary way, each chunk checked as it is
            // read, and an open after every chunk has been read passes through.
            return None;
        }
        let bytes: u64 = unverified
            .iter()
            .map(|&i| geometry.chunk_len(i) as u64)
            .sum();
        if bytes > check_at_most {
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
