//! Sources on this machine: a file read with `pread` ([`FileSource`]) and bytes in memory or a
//! read-only mapping ([`MemorySource`], [`map_file`]). `serve` exports them, the demo and the
//! tests read them; each answers a read in one piece.

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlockSource, Pieces, SourceError, SourceIdentity};

fn out_of_range(offset: u64, len: usize, size: u64) -> SourceError {
    SourceError::OutOfRange(format!(
        "read of {len} bytes at {offset} past the end ({size})"
    ))
}

/// A local file, read through the page cache into fresh buffers.
pub struct FileSource {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    block_size: u32,
}

impl FileSource {
    pub fn open(path: &std::path::Path, block_size: u32) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Self::from_file(path, file, size, block_size))
    }

    /// `file`, opened from `path`, whose size the caller has taken.
    pub fn from_file(
        path: &std::path::Path,
        file: std::fs::File,
        size: u64,
        block_size: u32,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            file,
            size,
            block_size,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// `len` bytes at `offset`.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, SourceError> {
        offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| out_of_range(offset, len, self.size))?;
        crate::iobuf::read_fresh(&self.file, offset, len)
            .map_err(|e| SourceError::Io(format!("{}: {e}", self.path.display())))
    }
}

impl Local for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, SourceError> {
        FileSource::read_at(self, offset, len)
    }
}

/// An open file mapped read-only, as [`Bytes`]: slices of it are the page cache itself, so
/// `serve` answers a READ with one copy (into the socket) where `pread` takes two. If the file
/// shrinks while mapped, touching a page past its new end from user space kills the process
/// with SIGBUS: `serve` hands mapped bytes only to the kernel (see `target::export`).
pub fn map_file(file: &std::fs::File) -> std::io::Result<Bytes> {
    // SAFETY: a read-only shared mapping; see above on files that shrink.
    let map = unsafe { memmap2::Mmap::map(file)? };
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Bytes::from_owner(map))
}

/// An image held in memory (the demo's embedded sample, tests) or mapped (`serve`'s files, see
/// [`map_file`]).
pub struct MemorySource {
    bytes: Bytes,
    block_size: u32,
    label: String,
}

impl MemorySource {
    pub fn new(bytes: Bytes, block_size: u32) -> MemorySource {
        MemorySource {
            bytes,
            block_size,
            label: "memory".into(),
        }
    }

    /// The same, named `label` in messages and `info/portal`.
    pub fn labelled(bytes: Bytes, block_size: u32, label: &str) -> MemorySource {
        MemorySource {
            label: label.to_string(),
            ..MemorySource::new(bytes, block_size)
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// `len` bytes at `offset`: a slice of the bytes, never a copy.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, SourceError> {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= self.bytes.len())
            .ok_or_else(|| out_of_range(offset, len, self.size()))?;
        Ok(self.bytes.slice(range))
    }
}

impl Local for MemorySource {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn describe(&self) -> String {
        self.label.clone()
    }
    fn size(&self) -> u64 {
        MemorySource::size(self)
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, SourceError> {
        MemorySource::read_at(self, offset, len)
    }
}

/// What a source on this machine needs to say; it is then a [`BlockSource`] that is always
/// open and answers each read in one piece.
trait Local: Send + Sync {
    fn kind(&self) -> &'static str;
    fn describe(&self) -> String;
    fn size(&self) -> u64;
    fn block_size(&self) -> u32;
    fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, SourceError>;
}

#[async_trait]
impl<T: Local> BlockSource for T {
    fn kind(&self) -> &'static str {
        Local::kind(self)
    }
    fn describe(&self) -> String {
        Local::describe(self)
    }
    async fn open(&self) -> Result<SourceIdentity, SourceError> {
        Ok(SourceIdentity {
            size: Local::size(self),
            block_size: Local::block_size(self),
            ..Default::default()
        })
    }
    fn read(&self, offset: u64, len: usize) -> Pieces<'_> {
        Box::pin(futures_util::stream::once(async move {
            Local::read_at(self, offset, len)
        }))
    }
    fn facts(&self) -> Vec<(String, String)> {
        vec![("block-size".into(), Local::block_size(self).to_string())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::read_all;

    #[tokio::test]
    async fn mapped_and_read_sources_agree_and_refuse_reads_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let open = |p: &std::path::Path| std::fs::File::open(p).unwrap();
        let mapped = MemorySource::new(map_file(&open(&path)).unwrap(), 512);
        let read = FileSource::open(&path, 512).unwrap();
        assert_eq!(mapped.size(), read.size());
        assert_eq!(mapped.open().await.unwrap(), read.open().await.unwrap());
        for (at, len) in [(0u64, 512usize), (19_999, 1), (1234, 5000), (20_000, 0)] {
            let a = read_all(&mapped, at, len).await.unwrap();
            let b = read_all(&read, at, len).await.unwrap();
            assert_eq!(a, b, "{at}+{len}");
            assert_eq!(&a[..], &data[at as usize..at as usize + len]);
        }
        assert!(read_all(&mapped, 19_999, 2).await.is_err());
        assert!(read_all(&mapped, u64::MAX, 1).await.is_err());
        assert!(read_all(&read, 19_999, 2).await.is_err());
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let empty = MemorySource::new(map_file(&open(&dir.path().join("empty"))).unwrap(), 512);
        assert_eq!(empty.size(), 0);
        assert!(read_all(&empty, 0, 1).await.is_err());
    }

    #[tokio::test]
    async fn memory_source_reads_are_bounded() {
        let source = MemorySource::new(Bytes::from_static(b"0123456789"), 2);
        assert_eq!(&source.read_at(2, 3).unwrap()[..], b"234");
        assert_eq!(source.read_at(10, 0).unwrap().len(), 0);
        assert!(source.read_at(9, 2).is_err());
        assert!(source.read_at(u64::MAX, 1).is_err());
    }
}
