//! Where bytes come from: the seam below the image core.
//!
//! A [`BlockSource`] is one place an image's bytes can be read from: a portal of an iSCSI
//! mirror ([`iscsi`]), a web mirror over HTTP range requests ([`http`], on the protocol layer in
//! [`crate::http`]), a local file or bytes in memory ([`local`]). Sources are untrusted: the image
//! core verifies every chunk they deliver against the manifest, and ranks them
//! (`image::sources`): a dead, slow or lying source is passed over, a source that keeps breaking
//! its protocol is dropped for the image.
//!
//! ## What a source promises
//! - [`BlockSource::open`] connects when needed and says what the source holds (size, identity);
//!   the image core calls it before reads and refuses a source whose size or serial differs.
//! - [`BlockSource::read`] yields the requested bytes as consecutive pieces, in order, **as they
//!   land** (one READ's Data-In, a slice of an HTTP body): the image core cuts them into chunks
//!   and verifies each chunk while the rest is still on the wire.
//! - Every failure is a [`SourceError`] whose variant says what the image core does with it.
//!
//! ## Adding a kind of source
//! Write `source/KIND.rs` with a type that implements [`BlockSource`] (see `http.rs`, the
//! smallest of the network ones): `kind()` and `describe()` (never a secret); `open()` connects
//! or asks once and returns a [`SourceIdentity`], cheaply when already connected; `read()` maps
//! the protocol's data as it lands to [`Pieces`]; every failure sorted into the [`SourceError`]
//! classes; `run_bytes()` says how large a read suits it. Then let `image::open` build one per
//! catalog entry's mirror. Ranking, hedging, the fault budget, read deadlines and verification
//! need nothing more.

pub mod http;
pub mod iscsi;
pub mod local;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::TryStreamExt;

pub use local::{map_file, FileSource, MemorySource};

/// Why a source could not deliver. The variant is the fault's class: it decides whether the
/// image core retries, counts the fault against the source, or fails the read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Unreachable, refused, reset, stalled, restarting, timed out: retried later with backoff;
    /// does not count against the source.
    #[error("{0}")]
    Network(String),
    /// The source broke its protocol (a PDU against RFC 7143 or the negotiated limits, a reply
    /// contradicting its request; on HTTP a 200 to a Range request, a wrong Content-Range):
    /// counts against the source, which is dropped for the image after a few.
    #[error("{0}")]
    Protocol(String),
    /// The source can never serve this image (a different size or serial, authentication
    /// refused, a file changed under us): dropped for the image at once.
    #[error("{0}")]
    Unusable(String),
    /// The request itself is wrong (past the end): the read fails, the source is not blamed.
    #[error("{0}")]
    OutOfRange(String),
    /// Any other I/O failure (a local file, a secret file): retried later like a network fault.
    #[error("{0}")]
    Io(String),
}

/// What a source holds, used to check that it is the image (size, serial) and to key the cache
/// of images with no manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceIdentity {
    pub size: u64,
    pub block_size: u32,
    /// VPD 0x80 unit serial number, trimmed (an HTTP source may give its ETag).
    pub serial: Option<String>,
    /// VPD 0x83 designators, raw, concatenated.
    pub device_id: Option<Vec<u8>>,
}

/// The bytes of one read as they land: consecutive pieces, in order.
pub type Pieces<'a> = BoxStream<'a, Result<Bytes, SourceError>>;

/// Read size for sources that do not say (a quarter MiB: one or two iSCSI READs).
pub const DEFAULT_RUN_BYTES: usize = 256 << 10;

/// One place an image's bytes can be read from. See the module documentation.
#[async_trait]
pub trait BlockSource: Send + Sync {
    /// What kind of source this is ("iscsi", "http", "file", "memory"), for `info/`.
    fn kind(&self) -> &'static str;
    /// How messages and `info/portal` name it: "host:port", a URL or a path, never a secret.
    fn describe(&self) -> String;
    /// Connect when not connected (again after a fault) and say what the source holds. Cheap
    /// when connected.
    async fn open(&self) -> Result<SourceIdentity, SourceError>;
    /// `len` bytes at `offset` as [`Pieces`], each yielded as soon as it has landed; together
    /// exactly `len` bytes. `offset + len` must not exceed the size. Connects first if needed.
    fn read(&self, offset: u64, len: usize) -> Pieces<'_>;
    /// The read size that suits this source; the image core coalesces misses into runs of
    /// about this many bytes.
    fn run_bytes(&self) -> usize {
        DEFAULT_RUN_BYTES
    }
    /// What the source says about itself for `info/` (vendor, product, serial, …).
    fn facts(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The attempts of a source to connect, made one at a time: a caller that waited while an
/// attempt was under way gets that attempt's failure instead of making another at once (an
/// open started early and an open that waits for it cost one connect timeout, not two).
#[derive(Default)]
pub struct Attempts(std::sync::Mutex<(u64, Option<SourceError>)>);

impl Attempts {
    /// Attempts ended so far: read before waiting for the one under way.
    pub fn ended(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The failure of the last attempt, when it failed and ended after `before` attempts had.
    pub fn failed_since(&self, before: u64) -> Option<SourceError> {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 > before {
            state.1.clone()
        } else {
            None
        }
    }

    /// An attempt ended, with this failure or none.
    pub fn end<T>(&self, result: &Result<T, SourceError>) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.0 += 1;
        state.1 = result.as_ref().err().cloned();
    }
}

/// All of one [`BlockSource::read`] as one buffer (the pieces joined: a copy unless it came in
/// one piece).
pub async fn read_all(
    source: &dyn BlockSource,
    offset: u64,
    len: usize,
) -> Result<Bytes, SourceError> {
    let pieces: Vec<Bytes> = source.read(offset, len).try_collect().await?;
    let got: usize = pieces.iter().map(Bytes::len).sum();
    if got != len {
        return Err(SourceError::Protocol(format!(
            "{}: short read: {got} of {len} bytes at {offset}",
            source.describe()
        )));
    }
    Ok(crate::iobuf::join(pieces))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_shares_the_failure_of_the_attempt_it_waited_for() {
        let attempts = std::sync::Arc::new(Attempts::default());
        let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
        // An attempt under way (holding the lock) while another caller starts waiting.
        let held = lock.clone().lock_owned().await;
        let waiter = {
            let (attempts, lock) = (attempts.clone(), lock.clone());
            tokio::spawn(async move {
                let before = attempts.ended();
                let _turn = lock.lock().await;
                attempts.failed_since(before)
            })
        };
        tokio::task::yield_now().await;
        attempts.end::<()>(&Err(SourceError::Network("refused".into())));
        drop(held);
        assert_eq!(
            waiter.await.unwrap(),
            Some(SourceError::Network("refused".into()))
        );
        // A caller that comes after the failure makes its own attempt; a success is not shared
        // as a failure.
        let before = attempts.ended();
        assert_eq!(attempts.failed_since(before), None);
        attempts.end(&Ok(()));
        assert_eq!(attempts.failed_since(before), None);
    }
}
