//! The mounted tree: a read-only filesystem over one image (FUSE protocol, `fuse(4)`;
//! ECMA-119 §8.4 for the primary volume descriptor that decides `.iso` versus `.img`).
//!
//! ```text
//! MOUNTPOINT/
//!   NAME.iso | NAME.img   the image, byte for byte (".iso" when sector 16 is an ISO 9660 PVD)
//!   info/                 one small text file per fact, and a live `stats`
//!   files/                the ISO 9660 tree inside the image, read lazily (ISO images only)
//! ```
//!
//! Inode numbers: 1 root, 2 the image, 3 `info/`, 16.. the info files, and ISO 9660 node `n`
//! (the iso9660 reader's own stable number) is `FILES_BASE + n`.
//!
//! [`Tree`] is the core: inode numbers, attributes, directory listings and reads, with no
//! knowledge of `/dev/fuse`, so unit tests drive it directly. [`fuse`] is the thin adapter that
//! hands each request to the core on a tokio runtime and never blocks the FUSE loop on the network.
//! The image arrives through the small [`ImageView`] trait: the verified image core
//! ([`crate::image::Image`]) in production, test doubles in the unit tests. Reads are bounded by
//! the image core (its read timeout), not here.

pub mod fuse;

use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use fuser::{FileAttr, FileType, INodeNo};

use crate::iso9660::{IsoError, IsoFs, ReadAt};

/// A read that cannot be satisfied, with its cause chain already flattened to text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ReadFailure(pub String);

/// What the mount needs from an image: its size, verified bytes, and the facts for `info/`.
#[async_trait]
pub trait ImageView: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Up to `len` bytes at `offset`, clamped at the end of the image; only bytes that passed
    /// verification (the image core's guarantee).
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, ReadFailure>;
    /// `info/` files: name and content (without the trailing newline).
    fn facts(&self) -> Vec<(String, String)>;
    /// The live `info/stats` text.
    fn stats(&self) -> String;
    /// A local file holding the whole image byte for byte, every byte verified, for the kernel to
    /// read directly (FUSE passthrough); None when there is none. May block: it may check the
    /// cache first.
    fn passthrough_file(&self) -> Option<std::fs::File> {
        None
    }
    /// The image file was closed: write what is pending to the cache (and seal a cache that has
    /// become whole and verified). May block.
    fn settle(&self) {}
}

/// Cached bytes the mount checks when the image file is opened, at most, before letting the
/// kernel read a fully cached image straight from the cache (a CD's worth: a second or so).
pub const PASSTHROUGH_CHECK_AT_MOST: u64 = 1 << 30;

/// Why an operation on the tree failed; [`FsError::errno`] is what the kernel is told.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("read-only file system")]
    ReadOnly,
    #[error("read of {image} bytes {start}..{end} failed: {cause}")]
    Read {
        image: String,
        start: u64,
        end: u64,
        cause: String,
    },
    #[error("{image} files/: {source}")]
    Iso { image: String, source: IsoError },
}

impl FsError {
    pub fn errno(&self) -> fuser::Errno {
        match self {
            FsError::NotFound => fuser::Errno::ENOENT,
            FsError::NotDirectory => fuser::Errno::ENOTDIR,
            FsError::IsDirectory => fuser::Errno::EISDIR,
            FsError::ReadOnly => fuser::Errno::EROFS,
            FsError::Read { .. } => fuser::Errno::EIO,
            FsError::Iso { source, .. } => fuser::Errno::from_i32(source.errno()),
        }
    }
}

/// The byte offset of the first volume descriptor (ECMA-119 §6.2.1: system area is 16 sectors).
const VOLUME_DESCRIPTOR_OFFSET: u64 = 16 * 2048;

/// Whether the image holds ISO 9660: a primary volume descriptor (type 1, "CD001", version 1)
/// in sector 16. An image too small to hold one is not ISO 9660.
pub async fn holds_iso9660(image: &dyn ImageView) -> Result<bool, ReadFailure> {
    if image.size() < VOLUME_DESCRIPTOR_OFFSET + 2048 {
        return Ok(false);
    }
    let sector = image.read(VOLUME_DESCRIPTOR_OFFSET, 2048).await?;
    Ok(sector.len() >= 7 && sector[0] == 1 && &sector[1..6] == b"CD001" && sector[6] == 1)
}

/// How long the kernel may cache names and attributes: the image never changes.
pub const STATIC_TTL: Duration = Duration::from_secs(24 * 60 * 60);

const ROOT: u64 = 1;
const IMAGE: u64 = 2;
const INFO_DIR: u64 = 3;
/// Info files are numbered from here, in the order of `Tree::info`.
const INFO_FIRST: u64 = 16;
/// ISO 9660 node `n` is inode `FILES_BASE + n` (the reader's numbers are byte positions in the
/// image, far below this).
const FILES_BASE: u64 = 1 << 56;
const FILES_ROOT: u64 = FILES_BASE + crate::iso9660::ROOT_INO;

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
}

/// How the kernel should cache an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    /// Immutable content: keep the page cache across opens.
    KeepCache,
    /// Content that changes (stats): every read comes to us.
    Direct,
}

/// What an info file shows, read afresh each time: facts can change while mounted (the portal
/// after a failover), and the stats always do.
enum InfoContent {
    /// The image's fact of this name.
    Fact(String),
    Stats,
}

struct InfoFile {
    name: String,
    content: InfoContent,
}

/// The filesystem core: inode table, attributes and reads for one mounted image.
pub struct Tree {
    image: Arc<dyn ImageView>,
    /// What log lines call the image (its catalog name or URL).
    label: String,
    /// `NAME.iso` or `NAME.img`.
    image_file: String,
    info: Vec<InfoFile>,
    /// The ISO 9660 tree behind `files/`; its calls may block on image reads.
    files: Option<Arc<IsoFs>>,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    failures: AtomicU64,
}

impl Tree {
    /// A tree for `image`, whose file is called `file_stem` + `.iso` (or `.img` when `is_iso` is
    /// false), with `files/` when `files` is given. Files belong to `uid`:`gid`.
    pub fn new(
        image: Arc<dyn ImageView>,
        label: &str,
        file_stem: &str,
        is_iso: bool,
        files: Option<IsoFs>,
        uid: u32,
        gid: u32,
    ) -> Tree {
        let extension = if is_iso { "iso" } else { "img" };
        let mut info: Vec<InfoFile> = Vec::new();
        for (fact, _) in image.facts() {
            let name = fact.replace(['/', '\0'], "_");
            if name.is_empty() || name == "stats" || info.iter().any(|f| f.name == name) {
                continue;
            }
            info.push(InfoFile {
                name,
                content: InfoContent::Fact(fact),
            });
        }
        info.push(InfoFile {
            name: "stats".to_string(),
            content: InfoContent::Stats,
        });
        Tree {
            image,
            label: label.to_string(),
            image_file: format!("{}.{extension}", file_stem.replace(['/', '\0'], "_")),
            info,
            files: files.map(Arc::new),
            uid,
            gid,
            mounted_at: SystemTime::now(),
            failures: AtomicU64::new(0),
        }
    }

    /// The image file's name in the root directory.
    pub fn image_file_name(&self) -> &str {
        &self.image_file
    }

    /// The image's size in bytes.
    pub fn image_size(&self) -> u64 {
        self.image.size()
    }

    /// Reads that failed with EIO since the mount.
    pub fn failed_reads(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Whether `ino` is in `files/`, whose operations may block on image reads.
    pub fn in_files(&self, ino: u64) -> bool {
        ino >= FILES_BASE
    }

    /// The ISO 9660 volume and node number behind `ino`.
    fn iso(&self, ino: u64) -> Result<(&Arc<IsoFs>, u64), FsError> {
        match (&self.files, ino.checked_sub(FILES_BASE)) {
            (Some(files), Some(node)) => Ok((files, node)),
            _ => Err(FsError::NotFound),
        }
    }

    fn iso_error(&self, source: IsoError) -> FsError {
        let err = FsError::Iso {
            image: self.label.clone(),
            source,
        };
        if err.errno() == fuser::Errno::EIO {
            tracing::error!("{err}");
        }
        err
    }

    fn iso_attr(&self, attr: crate::iso9660::Attr) -> Result<FileAttr, FsError> {
        let ino = attr
            .ino
            .checked_add(FILES_BASE)
            .ok_or_else(|| self.iso_error(IsoError::NoSuchInode(attr.ino)))?;
        let kind = match attr.kind {
            crate::iso9660::Kind::File => FileType::RegularFile,
            crate::iso9660::Kind::Dir => FileType::Directory,
            crate::iso9660::Kind::Symlink => FileType::Symlink,
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: attr.size,
            blocks: attr.size.div_ceil(512),
            atime: attr.atime,
            mtime: attr.mtime,
            ctime: attr.ctime,
            crtime: attr.ctime,
            kind,
            // The set-id bits mean nothing on a nosuid mount; owners become the mounting user,
            // as for removable media, so that the files are readable by whoever mounted them.
            perm: (attr.mode & 0o1777) as u16,
            nlink: attr.nlink.max(1),
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        })
    }

    fn info_index(&self, ino: u64) -> Option<usize> {
        let index = usize::try_from(ino.checked_sub(INFO_FIRST)?).ok()?;
        (index < self.info.len()).then_some(index)
    }

    fn info_bytes(&self, index: usize) -> Bytes {
        match &self.info[index].content {
            InfoContent::Fact(fact) => {
                let value = self
                    .image
                    .facts()
                    .into_iter()
                    .find(|(name, _)| name == fact);
                Bytes::from(value.map_or_else(String::new, |(_, value)| format!("{value}\n")))
            }
            InfoContent::Stats => {
                let mut text = self.image.stats();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&format!("failed reads: {}\n", self.failed_reads()));
                Bytes::from(text)
            }
        }
    }

    fn attr(&self, ino: u64, kind: FileType, size: u64) -> FileAttr {
        let (perm, nlink) = match kind {
            FileType::Directory => (0o555, 2),
            _ => (0o444, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<FileAttr, FsError> {
        match ino {
            ROOT | INFO_DIR => Ok(self.attr(ino, FileType::Directory, 0)),
            IMAGE => Ok(self.attr(ino, FileType::RegularFile, self.image.size())),
            _ if self.in_files(ino) => {
                let (iso, node) = self.iso(ino)?;
                let attr = iso.getattr(node).map_err(|e| self.iso_error(e))?;
                self.iso_attr(attr)
            }
            _ => {
                let index = self.info_index(ino).ok_or(FsError::NotFound)?;
                let size = self.info_bytes(index).len() as u64;
                Ok(self.attr(ino, FileType::RegularFile, size))
            }
        }
    }

    /// How long the kernel may keep `ino`'s attributes (and a name that leads to it).
    pub fn ttl(&self, ino: u64) -> Duration {
        match self.info_index(ino) {
            Some(_) => Duration::ZERO,
            None => STATIC_TTL,
        }
    }

    /// The entry `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        if self.in_files(parent) {
            let (iso, node) = self.iso(parent)?;
            let found = iso.lookup(node, name).map_err(|e| self.iso_error(e))?;
            return self.iso_attr(found.ok_or(FsError::NotFound)?.attr);
        }
        let entry = self
            .readdir(parent)?
            .into_iter()
            .skip(2)
            .find(|entry| entry.name == name)
            .ok_or(FsError::NotFound)?;
        self.getattr(entry.ino)
    }

    /// The entries of directory `ino`, starting with `.` and `..`.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let dir = |ino, name: &str| DirEntry {
            ino,
            kind: FileType::Directory,
            name: name.into(),
        };
        let file = |ino, name: &str| DirEntry {
            ino,
            kind: FileType::RegularFile,
            name: name.into(),
        };
        match ino {
            ROOT => {
                let mut entries = vec![
                    dir(ROOT, "."),
                    dir(ROOT, ".."),
                    file(IMAGE, &self.image_file),
                    dir(INFO_DIR, "info"),
                ];
                if self.files.is_some() {
                    entries.push(dir(FILES_ROOT, "files"));
                }
                Ok(entries)
            }
            _ if self.in_files(ino) => {
                let (iso, node) = self.iso(ino)?;
                let listing = iso.readdir(node).map_err(|e| self.iso_error(e))?;
                let parent = if ino == FILES_ROOT { ROOT } else { FILES_ROOT };
                let mut entries = vec![dir(ino, "."), dir(parent, "..")];
                for entry in listing {
                    let Some(ino) = entry.ino.checked_add(FILES_BASE) else {
                        continue;
                    };
                    let kind = match entry.kind {
                        crate::iso9660::Kind::File => FileType::RegularFile,
                        crate::iso9660::Kind::Dir => FileType::Directory,
                        crate::iso9660::Kind::Symlink => FileType::Symlink,
                    };
                    entries.push(DirEntry {
                        ino,
                        kind,
                        name: entry.name,
                    });
                }
                Ok(entries)
            }
            INFO_DIR => {
                let mut entries = vec![dir(INFO_DIR, "."), dir(ROOT, "..")];
                entries.extend(
                    self.info
                        .iter()
                        .zip(INFO_FIRST..)
                        .map(|(info, ino)| file(ino, &info.name)),
                );
                Ok(entries)
            }
            _ => {
                self.getattr(ino)?;
                Err(FsError::NotDirectory)
            }
        }
    }

    /// Check that `ino` may be opened (read-only) and say how the kernel should cache it.
    pub fn open(&self, ino: u64, write: bool) -> Result<Caching, FsError> {
        let attr = self.getattr(ino)?;
        if attr.kind == FileType::Directory {
            return Err(FsError::IsDirectory);
        }
        if write {
            return Err(FsError::ReadOnly);
        }
        Ok(if self.ttl(ino).is_zero() {
            Caching::Direct
        } else {
            Caching::KeepCache
        })
    }

    /// Whether `ino` is the image file.
    pub fn is_image(&self, ino: u64) -> bool {
        ino == IMAGE
    }

    /// For the image file: the local file the kernel may read it from directly (see
    /// [`ImageView::passthrough_file`]).
    pub fn passthrough_file(&self, ino: u64) -> Option<std::fs::File> {
        (ino == IMAGE)
            .then(|| self.image.passthrough_file())
            .flatten()
    }

    /// `ino` was closed: for the image file, see [`ImageView::settle`]. May block.
    pub fn closed(&self, ino: u64) {
        if ino == IMAGE {
            self.image.settle();
        }
    }

    /// The target of symbolic link `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (iso, node) = self.iso(ino)?;
        let target = iso.readlink(node).map_err(|e| self.iso_error(e))?;
        Ok(target.into_encoded_bytes())
    }

    /// Up to `size` bytes of `ino` at `offset` (fewer at the end of the file).
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        match ino {
            IMAGE => self.read_image(offset, size).await,
            _ if self.in_files(ino) => {
                let (iso, node) = self.iso(ino)?;
                let iso = iso.clone();
                let read = move || iso.read(node, offset, size as usize);
                match tokio::task::spawn_blocking(read).await {
                    Ok(Ok(bytes)) => Ok(Bytes::from(bytes)),
                    Ok(Err(err)) => Err(self.iso_error(err)),
                    Err(err) => Err(self.iso_error(IsoError::Io {
                        offset,
                        len: size as usize,
                        source: std::io::Error::other(err.to_string()),
                    })),
                }
            }
            ROOT | INFO_DIR => Err(FsError::IsDirectory),
            _ => {
                let index = self.info_index(ino).ok_or(FsError::NotFound)?;
                let bytes = self.info_bytes(index);
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                Ok(bytes.slice(start..end))
            }
        }
    }

    async fn read_image(&self, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let image_size = self.image.size();
        if offset >= image_size || size == 0 {
            return Ok(Bytes::new());
        }
        let len = u64::from(size).min(image_size - offset);
        let end = offset + len;
        let failure = match self.image.read(offset, len as usize).await {
            Ok(bytes) if bytes.len() as u64 == len => return Ok(bytes),
            Ok(bytes) => format!("image returned {} bytes, expected {len}", bytes.len()),
            Err(err) => err.0,
        };
        self.failures.fetch_add(1, Ordering::Relaxed);
        let err = FsError::Read {
            image: self.label.clone(),
            start: offset,
            end,
            cause: failure,
        };
        tracing::error!("{err}");
        Err(err)
    }
}

/// The iso9660 reader's synchronous [`ReadAt`] over an [`ImageView`]. Each call waits on the
/// runtime, so it must run off the runtime's own threads (the mount opens the volume on its main
/// thread; `files/` operations run on the blocking pool).
pub struct ImageReadAt {
    image: Arc<dyn ImageView>,
    runtime: tokio::runtime::Handle,
}

impl ImageReadAt {
    pub fn new(image: Arc<dyn ImageView>, runtime: tokio::runtime::Handle) -> ImageReadAt {
        ImageReadAt { image, runtime }
    }
}

impl ReadAt for ImageReadAt {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        match self.runtime.block_on(self.image.read(offset, len)) {
            Ok(bytes) => Ok(bytes.to_vec()),
            Err(err) => Err(std::io::Error::other(err.0)),
        }
    }

    fn size(&self) -> u64 {
        self.image.size()
    }
}

#[async_trait]
impl ImageView for crate::image::Image {
    fn size(&self) -> u64 {
        crate::image::Image::size(self)
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, ReadFailure> {
        match crate::image::Image::read(self, offset, len).await {
            Ok(verified) => Ok(verified.into_bytes()),
            Err(err) => Err(ReadFailure(err.to_string())),
        }
    }

    fn facts(&self) -> Vec<(String, String)> {
        crate::image::Image::facts(self)
    }

    fn stats(&self) -> String {
        crate::image::Image::stats(self)
    }

    fn passthrough_file(&self) -> Option<std::fs::File> {
        crate::image::Image::passthrough_file(self, PASSTHROUGH_CHECK_AT_MOST)
    }

    fn settle(&self) {
        crate::image::Image::settle(self)
    }
}

#[cfg(test)]
mod tests;
