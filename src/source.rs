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
        Ok(Self::from_file(file, size, block_size))
    }

    /// An open file whose size the caller has taken.
    pub fn from_file(file: std::fs::File, size: u64, block_size: u32) -> Self {
        Self {
            file,
            size,
            block_size,
        }
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
        offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| {
                SourceError::OutOfRange(format!(
                    "read of {len} bytes at {offset} past end {}",
                    self.size
                ))
            })?;
        crate::iobuf::read_fresh(&self.file, offset, len)
            .map_err(|e| SourceError::Io(e.to_string()))
    }
}

/// A file mapped read-only, as [`Bytes`]: slices of it are the page cache itself, so `serve`
/// answers a READ with one copy (into the socket) where `pread` takes two. If the file shrinks
/// while mapped, touching a page past its new end from user space kills the process with
/// SIGBUS: `serve` hands mapped bytes only to the kernel (see `target::export`).
pub fn map_file(file: &std::fs::File) -> std::io::Result<Bytes> {
    // SAFETY: a read-only shared mapping; see above on files that shrink.
    let map = unsafe { memmap2::Mmap::map(file)? };
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Bytes::from_owner(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mapped_and_read_sources_agree_and_refuse_reads_past_the_end() {
        use crate::target::MemorySource;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let open = |p: &std::path::Path| std::fs::File::open(p).unwrap();
        let mapped = MemorySource::new(map_file(&open(&path)).unwrap(), 512);
        let read = FileSource::open(&path, 512).unwrap();
        assert_eq!(mapped.size(), read.size());
        for (at, len) in [(0u64, 512usize), (19_999, 1), (1234, 5000), (20_000, 0)] {
            let a = mapped.read_at(at, len).await.unwrap();
            let b = read.read_at(at, len).await.unwrap();
            assert_eq!(a, b, "{at}+{len}");
            assert_eq!(&a[..], &data[at as usize..at as usize + len]);
        }
        assert!(mapped.read_at(19_999, 2).await.is_err());
        assert!(mapped.read_at(u64::MAX, 1).await.is_err());
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let empty = MemorySource::new(map_file(&open(&dir.path().join("empty"))).unwrap(), 512);
        assert_eq!(empty.size(), 0);
        assert!(empty.read_at(0, 1).await.is_err());
    }
}
