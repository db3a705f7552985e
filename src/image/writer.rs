//! Write-behind for the cache store: batches of verified chunks queue up, and one thread writes
//! everything queued with a single `fdatasync` (group commit) before marking it present. Readers
//! never wait for the disk unless the queue is full. The same thread records which chunks were
//! used (for LRU eviction), in batches, so that a read from the cache writes nothing itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::cache::{Cache, Store};
use crate::manifest::Hash;

/// Batches that may wait for the writer (each one fetch: a read's missing chunks, a few MiB).
/// Small, so a fast reader works in memory it has touched before.
const QUEUE: usize = 8;
/// Bytes written per `fdatasync` at most.
const GROUP_BYTES: usize = 32 << 20;

enum Job {
    /// Verified chunks: number, bytes, hash and CRC32C.
    Chunks(Vec<(u64, Bytes, Hash, u32)>),
    /// Chunks read from the store since the last batch.
    Uses(Vec<u64>),
    Flush(oneshot::Sender<()>),
}

/// The sending side; dropping it lets the thread finish what is queued and exit.
pub(super) struct Writer {
    tx: mpsc::Sender<Job>,
}

/// What the writer thread needs, none of it the image itself (no reference cycle).
pub(super) struct Target {
    pub name: String,
    pub store: Arc<Store>,
    pub cache: Option<Arc<Cache>>,
    /// Cleared, with one warning, when a write fails (a full disk): reads go on uncached.
    pub caching: Arc<AtomicBool>,
    /// Why caching was turned off (the write's error), for commands that report it.
    pub caching_off: Arc<Mutex<Option<String>>>,
}

impl Writer {
    pub fn start(target: Target) -> Option<Writer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("isomount-cache-writer".into())
            .spawn(move || run(rx, target))
            .ok()?;
        Some(Writer { tx })
    }

    /// Queue verified chunks (waits only when the queue is full).
    pub async fn write(&self, chunks: Vec<(u64, Bytes, Hash, u32)>) {
        let _ = self.tx.send(Job::Chunks(chunks)).await;
    }

    /// Queue a batch of chunks used; false (and nothing queued) when the queue is full.
    pub fn note_uses(&self, chunks: Vec<u64>) -> Result<(), Vec<u64>> {
        self.tx
            .try_send(Job::Uses(chunks))
            .map_err(|e| match e.into_inner() {
                Job::Uses(chunks) => chunks,
                _ => Vec::new(),
            })
    }

    /// Wait until everything queued before this call is on disk and marked present.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// [`Writer::flush`] for a thread that is not running async code.
    pub fn flush_blocking(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.blocking_send(Job::Flush(done)).is_ok() {
            let _ = wait.blocking_recv();
        }
    }
}

fn run(mut rx: mpsc::Receiver<Job>, target: Target) {
    while let Some(job) = rx.blocking_recv() {
        let mut items = Vec::new();
        let mut uses = Vec::new();
        let mut acks = Vec::new();
        let mut bytes = 0usize;
        let mut take = |job: Job, bytes: &mut usize| match job {
            Job::Chunks(c) => {
                *bytes += c.iter().map(|(_, b, _, _)| b.len()).sum::<usize>();
                items.extend(c);
            }
            Job::Uses(u) => uses.extend(u),
            Job::Flush(ack) => acks.push(ack),
        };
        take(job, &mut bytes);
        while bytes < GROUP_BYTES {
            match rx.try_recv() {
                Ok(job) => take(job, &mut bytes),
                Err(_) => break,
            }
        }
        if !items.is_empty() && target.caching.load(Ordering::Relaxed) {
            let refs: Vec<(u64, &[u8], Hash, u32)> = items
                .iter()
                .map(|(i, b, h, crc)| (*i, &b[..], *h, *crc))
                .collect();
            let result = target
                .store
                .put_checked(&refs)
                .and_then(|()| match &target.cache {
                    Some(c) => c.note_stored(bytes as u64),
                    None => Ok(()),
                });
            if let Err(err) = result {
                *target.caching_off.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(err.to_string());
                if target.caching.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "{}: cannot write the cache ({err}); continuing without caching",
                        target.name
                    );
                }
            }
        }
        if !uses.is_empty() {
            // Advisory (eviction order): a failure costs nothing but precision.
            if let Err(err) = target.store.note_uses(&uses) {
                tracing::debug!("{}: recording chunk uses: {err}", target.name);
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}
