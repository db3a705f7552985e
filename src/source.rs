//! The seam between the protocol and everything above it: a read-only source of bytes.
//!
//! The iSCSI initiator implements [`BlockSource`]; the image core, the FUSE layer and the target
//! consume it, so tests can inject a file, a slow link, or faults without a network.

use async_trait::async_trait;
use bytes::Bytes;

/// Why a read from a source failed. Each variant says what the layer above should do.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source is unreachable (network down, target gone past the retry budget).
    #[error("{0}")]
    Unavailable(String),
    /// The request itself is wrong (past the end, misaligned).
    #[error("{0}")]
    OutOfRange(String),
    /// Any other I/O or protocol failure.
    #[error("{0}")]
    Io(String),
}

/// Identity facts of a LUN, used to check that a reconnect reached the same device and to key
/// the cache for images with no manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceIdentity {
    pub size: u64,
    pub block_size: u32,
    /// VPD 0x80 unit serial number, trimmed.
    pub serial: Option<String>,
    /// VPD 0x83 designators, raw, concatenated.
    pub device_id: Option<Vec<u8>>,
}

/// A read-only, random-access source of bytes (an iSCSI LUN, a file, a test double).
#[async_trait]
pub trait BlockSource: Send + Sync {
    /// Size in bytes; reads never extend past it.
    fn size(&self) -> u64;
    /// Preferred alignment of reads (the LUN's logical block size).
    fn block_size(&self) -> u32;
    /// Identity facts (size, serial, device id).
    fn identity(&self) -> SourceIdentity;
    /// Read exactly `len` bytes at `offset`. `offset + len` must not exceed `size()`.
    /// Implementations may require `offset` and `len` to be multiples of `block_size()`, except
    /// that a read may end at `size()`.
    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, SourceError>;
    /// The same bytes as [`BlockSource::read_at`], as consecutive pieces in the order read, so a
    /// large read made of several commands is never copied into one buffer.
    async fn read_pieces(&self, offset: u64, len: usize) -> Result<Vec<Bytes>, SourceError> {
        Ok(vec![self.read_at(offset, len).await?])
    }
}

/// A [`BlockSource`] backed by a local file: for tests, `serve`, and `publish`.
pub struct FileSource {
    file: std::fs::File,
    size: u64,
    block_size: u32,
}

impl FileSource {
    pub fn open(path: &std::path::Path, block_size: u32) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            size,
            block_size,
        })
    }
}

#[async_trait]
impl BlockSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn identity(&self) -> SourceIdentity {
        SourceIdentity {
            size: self.size,
            block_size: self.block_size,
            ..Default::default()
        }
    }
    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, SourceError> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| {
                SourceError::OutOfRange(format!(
                    "read of {len} bytes at {offset} past end {}",
                    self.size
                ))
            })?;
        let _ = end;
        crate::iobuf::read_fresh(&self.file, offset, len)
            .map_err(|e| SourceError::Io(e.to_string()))
    }
}
