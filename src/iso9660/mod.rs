//! A lazy, read-only ISO 9660 reader (ECMA-119 4th edition) with Rock Ridge (RRIP 1.12 over
//! SUSP 1.12), Joliet, and multi-extent files, for the mount's `files/` tree and
//! `isomount fetch --files`.
//!
//! Everything is read on demand through [`ReadAt`]: opening reads the volume descriptors and the
//! root directory's first sector; listing a directory reads that directory's extent (and the
//! continuation areas its records point at); reading a file reads only the requested bytes of
//! its extents. Names come from Rock Ridge when the volume has it, else from the Joliet tree,
//! else from the primary tree (version `;1` and a trailing dot stripped).
//!
//! Inode numbers are stable: the byte position of an entry's (first) directory record in the
//! image, and [`ROOT_INO`] (1) for the root, so FUSE can use them as they are. A node that has
//! dropped out of the caches is parsed again from its record.
//!
//! A hostile image gets an [`IsoError`], never a panic, a hang or unbounded memory: every length
//! is checked against its container and the image size, every loop is bounded (descriptors,
//! continuation areas, extents per file, directory size, nesting depth), and a directory whose
//! extent is already the child of another directory is reported as a loop. A file whose data
//! runs past the end of the image is still listed with the rest of its directory; reading it
//! fails.

mod record;
pub mod susp;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;

use record::{
    parse_descriptor, parse_record, short_date, Descriptor, Record, FIRST_DESCRIPTOR_SECTOR,
    FLAG_ASSOCIATED, FLAG_DIRECTORY, FLAG_MULTI_EXTENT, SECTOR,
};
use susp::{Continuation, SystemUse};

/// The inode number of the root directory.
pub const ROOT_INO: u64 = 1;

const SECTOR_U64: u64 = SECTOR as u64;
/// Volume descriptors read before giving up on finding the set terminator.
const MAX_DESCRIPTORS: u64 = 64;
/// Volume descriptors read in the first request: a primary, a Joliet, a boot record and the
/// terminator fit with room to spare, and 16 sectors lie in one 64 KiB chunk of the image.
const DESCRIPTORS_AT_ONCE: u64 = 16;
/// Largest directory extent read (bytes): about 100 000 entries with Rock Ridge names.
const MAX_DIR_BYTES: u64 = 16 << 20;
/// Records of one multi-extent file: 4096 extents of up to 4 GiB each.
const MAX_EXTENTS: usize = 4096;
/// Continuation areas followed for one record (Linux follows at most 31) and their sizes.
const MAX_CONTINUATIONS: usize = 32;
const MAX_CONTINUATION_BYTES: u32 = 64 << 10;
/// Directory nesting depth below the root.
const MAX_DEPTH: u32 = 1024;
/// Directories remembered for loop detection.
const MAX_DIRECTORIES: usize = 1 << 20;
/// Largest single `read` (FUSE asks for at most 1 MiB).
pub const MAX_READ: usize = 64 << 20;
/// Symbolic links followed while resolving one path, like Linux's limit.
const MAX_SYMLINK_HOPS: u32 = 40;

const SECTOR_CACHE: usize = 256;
const NODE_CACHE: usize = 65_536;
const DIR_CACHE: usize = 256;
/// Parsed entries kept over all cached directories.
const DIR_CACHE_ENTRIES: usize = 262_144;

/// A synchronous, random-access view of an image: the image core behind a FUSE mount, or a local
/// file in tests.
pub trait ReadAt: Send + Sync {
    /// Exactly `len` bytes at `offset`; the reader never asks past [`ReadAt::size`].
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
    /// Size of the image in bytes.
    fn size(&self) -> u64;
}

/// [`ReadAt`] over a local file.
pub struct FileReadAt {
    file: std::fs::File,
    size: u64,
}

impl FileReadAt {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }
}

impl ReadAt for FileReadAt {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// Why an ISO 9660 operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("reading {len} bytes at byte {offset} of the image failed: {source}")]
    Io {
        offset: u64,
        len: usize,
        source: std::io::Error,
    },
    #[error("not an ISO 9660 image: {0}")]
    NotIso(String),
    #[error("corrupt ISO 9660 image at byte {at}: {what}")]
    Corrupt { at: u64, what: String },
    #[error("unsupported ISO 9660 feature: {0}")]
    Unsupported(String),
    #[error("no node with inode number {0}")]
    NoSuchInode(u64),
    #[error("inode {0} is not a directory")]
    NotADirectory(u64),
    #[error("inode {0} is a directory")]
    IsADirectory(u64),
    #[error("inode {0} is not a symbolic link")]
    NotASymlink(u64),
    #[error("inode {0} is not a regular file")]
    NotARegularFile(u64),
    #[error("read of {0} bytes is over the {MAX_READ}-byte limit")]
    ReadTooLarge(usize),
    #[error("too many levels of symbolic links resolving {0}")]
    SymlinkLoop(String),
}

impl IsoError {
    /// The errno a file system caller should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            IsoError::NoSuchInode(_) => libc::ESTALE,
            IsoError::NotADirectory(_) => libc::ENOTDIR,
            IsoError::IsADirectory(_) => libc::EISDIR,
            IsoError::NotASymlink(_) | IsoError::NotARegularFile(_) => libc::EINVAL,
            IsoError::ReadTooLarge(_) => libc::EINVAL,
            IsoError::SymlinkLoop(_) => libc::ELOOP,
            IsoError::Unsupported(_) => libc::EOPNOTSUPP,
            IsoError::Io { .. } | IsoError::NotIso(_) | IsoError::Corrupt { .. } => libc::EIO,
        }
    }
}

fn corrupt(at: u64, what: impl Into<String>) -> IsoError {
    IsoError::Corrupt {
        at,
        what: what.into(),
    }
}

/// Where names come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// Rock Ridge NM entries in the primary tree (with POSIX modes, owners, links, times).
    RockRidge,
    /// The Joliet tree's UCS-2 names.
    Joliet,
    /// The primary tree's identifiers, version and trailing dot stripped.
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// The attributes of a node, as `stat` would show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    /// Permission bits (`st_mode & 0o7777`); the file type is `kind`.
    pub mode: u32,
    /// Bytes of data; for a symlink, the length of its target.
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A named node, as `lookup` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub ino: u64,
    pub name: OsString,
    pub attr: Attr,
}

/// One directory entry; `.` and `..` are not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: Kind,
}

#[derive(Debug)]
struct Entry {
    name: OsString,
    attr: Attr,
    /// Byte ranges of the data in the image, in file order (a directory: its records).
    extents: Vec<(u64, u64)>,
    link: Option<OsString>,
    content: Content,
}

/// Whether a file's data can be read as recorded. A file that cannot is still listed, so that
/// the rest of its directory is; only reading it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Readable,
    /// zisofs-compressed (Rock Ridge ZF): refused rather than shown compressed.
    Zisofs,
    /// An extent (`start`, `len` in bytes) runs past the end of the image: a truncated or
    /// damaged image.
    PastEnd {
        start: u64,
        len: u64,
    },
}

impl Entry {
    fn node(&self) -> Node {
        Node {
            ino: self.attr.ino,
            name: self.name.clone(),
            attr: self.attr.clone(),
        }
    }

    /// The error for data that runs past the end of a `size`-byte image, naming the file.
    fn past_end(&self, size: u64) -> Option<IsoError> {
        let Content::PastEnd { start, len } = self.content else {
            return None;
        };
        Some(corrupt(
            self.attr.ino,
            format!(
                "file `{}`: its data at bytes {start}..{} runs past the end of the {size}-byte \
                 image",
                self.name.to_string_lossy(),
                start.saturating_add(len)
            ),
        ))
    }
}

/// Byte access to the image with bounds checks and a small sector cache (volume descriptors,
/// continuation areas, re-parsed records).
struct Reader {
    src: Arc<dyn ReadAt>,
    size: u64,
    sectors: Mutex<LruCache<u64, Arc<Vec<u8>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Reader {
    fn check_range(&self, offset: u64, len: u64) -> Result<(), IsoError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(corrupt(
                offset,
                format!("{len} bytes past the end of the {}-byte image", self.size),
            )),
        }
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, IsoError> {
        self.check_range(offset, len as u64)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let io = |source| IsoError::Io {
            offset,
            len,
            source,
        };
        let buf = self.src.read_at(offset, len).map_err(io)?;
        if buf.len() != len {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("short read of {} bytes", buf.len()),
            )));
        }
        Ok(buf)
    }

    /// One 2048-byte sector (shorter at the end of an image that is not a whole number of them).
    fn sector(&self, n: u64) -> Result<Arc<Vec<u8>>, IsoError> {
        if let Some(s) = lock(&self.sectors).get(&n) {
            return Ok(s.clone());
        }
        let offset = n
            .checked_mul(SECTOR_U64)
            .filter(|&o| o < self.size)
            .ok_or_else(|| corrupt(n, "sector past the end of the image"))?;
        let len = (self.size - offset).min(SECTOR_U64) as usize;
        let s = Arc::new(self.read(offset, len)?);
        lock(&self.sectors).put(n, s.clone());
        Ok(s)
    }

    /// Reads up to `count` whole sectors from sector `first` in one request into the cache: one
    /// round trip, and one read rather than a sequence the image core would take for a
    /// streaming reader and read ahead of.
    fn load_sectors(&self, first: u64, count: u64) -> Result<(), IsoError> {
        let offset = first.saturating_mul(SECTOR_U64);
        let whole = self.size.saturating_sub(offset) / SECTOR_U64;
        let count = count.min(whole);
        if count == 0 {
            return Ok(());
        }
        let bytes = self.read(offset, (count * SECTOR_U64) as usize)?;
        let mut cache = lock(&self.sectors);
        for (i, s) in bytes.chunks_exact(SECTOR).enumerate() {
            cache.put(first + i as u64, Arc::new(s.to_vec()));
        }
        Ok(())
    }

    /// Bytes that usually lie in one sector (continuation areas) go through the sector cache.
    fn small(&self, offset: u64, len: usize) -> Result<Vec<u8>, IsoError> {
        self.check_range(offset, len as u64)?;
        let within = (offset % SECTOR_U64) as usize;
        if len == 0 || within + len > SECTOR {
            return self.read(offset, len);
        }
        let s = self.sector(offset / SECTOR_U64)?;
        Ok(s[within..within + len].to_vec())
    }
}

/// How records of this volume are read.
struct Layout {
    naming: Naming,
    /// SP's LEN_SKP: bytes at the start of each system use area before the SUSP entries.
    su_skip: usize,
}

/// A parsed directory: its entries in record order, and an index by name (the first of
/// duplicates wins) so that each lookup in a large directory is not a scan.
struct Listing {
    entries: Vec<Arc<Entry>>,
    by_name: HashMap<OsString, usize>,
}

impl Listing {
    fn new(entries: Vec<Arc<Entry>>) -> Listing {
        let mut by_name = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            by_name.entry(e.name.clone()).or_insert(i);
        }
        Listing { entries, by_name }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

struct State {
    nodes: LruCache<u64, Arc<Entry>>,
    dirs: LruCache<u64, Arc<Listing>>,
    dir_cache_entries: usize,
    /// Directory extent start → (parent's extent start, depth); a second parent is a loop.
    tree: HashMap<u64, (u64, u32)>,
}

/// An opened ISO 9660 volume. `Send + Sync`: callers may share it between threads.
pub struct IsoFs {
    reader: Reader,
    layout: Layout,
    root: Arc<Entry>,
    state: Mutex<State>,
}

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

impl IsoFs {
    /// Reads the volume descriptors and the root directory record.
    pub fn open(src: Arc<dyn ReadAt>) -> Result<IsoFs, IsoError> {
        let reader = Reader {
            size: src.size(),
            src,
            sectors: Mutex::new(LruCache::new(cap(SECTOR_CACHE))),
        };
        let (primary, joliet) = read_descriptors(&reader)?;
        let primary_root = parse_record(&primary).map_err(|w| {
            IsoError::NotIso(format!("primary volume descriptor's root record: {w}"))
        })?;
        let (dot_pos, dot) = root_dot_record(&reader, &primary_root)?;
        let dot_record = parse_record(&dot).map_err(|w| corrupt(dot_pos, w))?;
        let su = read_system_use(&reader, dot_record.system_use, dot_pos)?;
        let rock_ridge = su.sp_skip.is_some() && (su.rrip_extension || su.rock_ridge);
        let layout = match (rock_ridge, &joliet) {
            (true, _) => Layout {
                naming: Naming::RockRidge,
                su_skip: su.sp_skip.map_or(0, usize::from),
            },
            (false, Some(_)) => Layout {
                naming: Naming::Joliet,
                su_skip: 0,
            },
            (false, None) => Layout {
                naming: Naming::Plain,
                su_skip: 0,
            },
        };
        let (dot_pos, dot) = match (&layout.naming, &joliet) {
            (Naming::Joliet, Some(root)) => {
                let joliet_root = parse_record(root).map_err(|w| {
                    corrupt(dot_pos, format!("Joliet descriptor's root record: {w}"))
                })?;
                root_dot_record(&reader, &joliet_root)?
            }
            _ => (dot_pos, dot),
        };
        let dot_record = parse_record(&dot).map_err(|w| corrupt(dot_pos, w))?;
        let root = build_entry(&reader, &layout, ROOT_INO, dot_pos, &[dot_record], true)?
            .ok_or_else(|| corrupt(dot_pos, "root directory record is hidden"))?;
        let root_start = root.extents.first().map_or(0, |e| e.0);
        let mut tree = HashMap::new();
        tree.insert(root_start, (root_start, 0));
        Ok(IsoFs {
            reader,
            layout,
            root: Arc::new(root),
            state: Mutex::new(State {
                nodes: LruCache::new(cap(NODE_CACHE)),
                dirs: LruCache::new(cap(DIR_CACHE)),
                dir_cache_entries: 0,
                tree,
            }),
        })
    }

    /// Where this volume's names come from.
    pub fn naming(&self) -> Naming {
        self.layout.naming
    }

    /// The entry named `name` in directory `parent`, or `None`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Option<Node>, IsoError> {
        let list = self.dir_list(parent)?;
        Ok(list
            .by_name
            .get(name)
            .and_then(|&i| list.entries.get(i))
            .map(|e| e.node()))
    }

    /// The entries of directory `ino`, without `.` and `..`.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, IsoError> {
        let list = self.dir_list(ino)?;
        Ok(list
            .entries
            .iter()
            .map(|e| DirEntry {
                name: e.name.clone(),
                ino: e.attr.ino,
                kind: e.attr.kind,
            })
            .collect())
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, IsoError> {
        Ok(self.entry(ino)?.attr.clone())
    }

    /// The target of symbolic link `ino`.
    pub fn readlink(&self, ino: u64) -> Result<OsString, IsoError> {
        self.entry(ino)?
            .link
            .clone()
            .ok_or(IsoError::NotASymlink(ino))
    }

    /// Up to `len` bytes of file `ino` from `offset`; fewer only at the end of the file.
    pub fn read(&self, ino: u64, offset: u64, len: usize) -> Result<Vec<u8>, IsoError> {
        let entry = self.entry(ino)?;
        match entry.attr.kind {
            Kind::Dir => return Err(IsoError::IsADirectory(ino)),
            Kind::Symlink => return Err(IsoError::NotARegularFile(ino)),
            Kind::File => {}
        }
        if entry.content == Content::Zisofs {
            return Err(IsoError::Unsupported(format!(
                "inode {ino} is zisofs-compressed"
            )));
        }
        if let Some(err) = entry.past_end(self.reader.size) {
            return Err(err);
        }
        if len > MAX_READ {
            return Err(IsoError::ReadTooLarge(len));
        }
        let end = offset.saturating_add(len as u64).min(entry.attr.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut file_pos = 0u64;
        for &(start, ext_len) in &entry.extents {
            let ext_end = file_pos + ext_len;
            let from = offset.max(file_pos);
            let to = end.min(ext_end);
            if from < to {
                let bytes = self
                    .reader
                    .read(start + (from - file_pos), (to - from) as usize)?;
                out.extend_from_slice(&bytes);
            }
            file_pos = ext_end;
            if file_pos >= end {
                break;
            }
        }
        Ok(out)
    }

    /// The byte ranges of the image holding node `ino`'s data, in file order (a directory: its
    /// records; a symlink: none), for prefetching exactly what reading it will need.
    pub fn extents(&self, ino: u64) -> Result<Vec<(u64, u64)>, IsoError> {
        let entry = self.entry(ino)?;
        match entry.past_end(self.reader.size) {
            Some(err) => Err(err),
            None => Ok(entry.extents.clone()),
        }
    }

    /// The node at `path` (absolute or relative to the root), following symbolic links the way
    /// `open` would, or `None` when a component does not exist.
    pub fn resolve(&self, path: &str) -> Result<Option<Node>, IsoError> {
        let mut todo: Vec<OsString> = components(path.as_bytes());
        let mut stack: Vec<Node> = vec![self.root.node()];
        let mut hops = 0u32;
        while let Some(name) = todo.pop() {
            let current = stack.last().map_or(ROOT_INO, |n| n.ino);
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let Some(node) = self.lookup(current, &name)? else {
                return Ok(None);
            };
            match node.attr.kind {
                Kind::Symlink => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(IsoError::SymlinkLoop(path.to_owned()));
                    }
                    let target = self.readlink(node.ino)?;
                    if target.as_bytes().starts_with(b"/") {
                        stack.truncate(1);
                    }
                    todo.extend(components(target.as_bytes()));
                }
                Kind::Dir => stack.push(node),
                Kind::File if todo.is_empty() => stack.push(node),
                Kind::File => return Err(IsoError::NotADirectory(node.ino)),
            }
        }
        Ok(stack.pop())
    }

    fn entry(&self, ino: u64) -> Result<Arc<Entry>, IsoError> {
        if ino == ROOT_INO {
            return Ok(self.root.clone());
        }
        if let Some(e) = lock(&self.state).nodes.get(&ino) {
            return Ok(e.clone());
        }
        let e = Arc::new(self.reparse(ino)?);
        lock(&self.state).nodes.put(ino, e.clone());
        Ok(e)
    }

    /// Parses the entry whose first record is at byte `pos` again, following its multi-extent
    /// records (which are consecutive in the directory, a sector's zero padding aside).
    fn reparse(&self, pos: u64) -> Result<Entry, IsoError> {
        if pos < FIRST_DESCRIPTOR_SECTOR * SECTOR_U64 || pos >= self.reader.size {
            return Err(IsoError::NoSuchInode(pos));
        }
        let mut raw: Vec<Vec<u8>> = Vec::new();
        let mut at = pos;
        loop {
            let sector = self.reader.sector(at / SECTOR_U64)?;
            let within = (at % SECTOR_U64) as usize;
            let rec =
                parse_record(sector.get(within..).unwrap_or(&[])).map_err(|w| corrupt(at, w))?;
            if rec.is_self_or_parent() {
                return Err(IsoError::NoSuchInode(pos));
            }
            let more = rec.flags & FLAG_MULTI_EXTENT != 0;
            raw.push(sector[within..within + rec.len].to_vec());
            if !more {
                break;
            }
            if raw.len() >= MAX_EXTENTS {
                return Err(corrupt(pos, "too many multi-extent records"));
            }
            let next = within + rec.len;
            at = if next >= sector.len() || sector[next] == 0 {
                (at / SECTOR_U64 + 1) * SECTOR_U64
            } else {
                at + rec.len as u64
            };
        }
        let records = raw
            .iter()
            .map(|r| parse_record(r).map_err(|w| corrupt(pos, w)))
            .collect::<Result<Vec<_>, _>>()?;
        if records.iter().any(|r| r.ident != records[0].ident) {
            return Err(corrupt(pos, "multi-extent records with different names"));
        }
        build_entry(&self.reader, &self.layout, pos, pos, &records, false)?
            .ok_or(IsoError::NoSuchInode(pos))
    }

    fn dir_list(&self, ino: u64) -> Result<Arc<Listing>, IsoError> {
        if let Some(list) = lock(&self.state).dirs.get(&ino) {
            return Ok(list.clone());
        }
        let dir = self.entry(ino)?;
        if dir.attr.kind != Kind::Dir {
            return Err(IsoError::NotADirectory(ino));
        }
        let list = Arc::new(Listing::new(self.parse_dir(&dir)?));
        let mut state = lock(&self.state);
        let dir_start = dir.extents.first().map_or(0, |e| e.0);
        for child in list.entries.iter().filter(|e| e.attr.kind == Kind::Dir) {
            if let Some(&(child_start, _)) = child.extents.first() {
                check_tree(&mut state.tree, dir_start, child_start, child.attr.ino)?;
            }
        }
        for e in &list.entries {
            state.nodes.put(e.attr.ino, e.clone());
        }
        state.dir_cache_entries += list.len();
        if let Some((_, old)) = state.dirs.push(ino, list.clone()) {
            state.dir_cache_entries -= old.len();
        }
        while state.dir_cache_entries > DIR_CACHE_ENTRIES && state.dirs.len() > 1 {
            if let Some((_, old)) = state.dirs.pop_lru() {
                state.dir_cache_entries -= old.len();
            }
        }
        Ok(list)
    }

    fn parse_dir(&self, dir: &Entry) -> Result<Vec<Arc<Entry>>, IsoError> {
        let Some(&(start, size)) = dir.extents.first() else {
            return Ok(Vec::new());
        };
        let buf = self.reader.read(start, size as usize)?;
        let mut entries = Vec::new();
        let mut group: Vec<(u64, Record<'_>)> = Vec::new();
        let mut off = 0usize;
        while off < buf.len() {
            let sector_end = ((off / SECTOR + 1) * SECTOR).min(buf.len());
            if buf[off] == 0 {
                off = sector_end;
                continue;
            }
            let pos = start + off as u64;
            let rec = parse_record(&buf[off..sector_end]).map_err(|w| corrupt(pos, w))?;
            off += rec.len;
            if rec.is_self_or_parent() {
                if !group.is_empty() {
                    return Err(corrupt(pos, "multi-extent file without its final record"));
                }
                continue;
            }
            if let Some((_, first)) = group.first() {
                if first.ident != rec.ident {
                    return Err(corrupt(pos, "multi-extent records with different names"));
                }
            }
            if group.len() >= MAX_EXTENTS {
                return Err(corrupt(pos, "too many multi-extent records"));
            }
            let more = rec.flags & FLAG_MULTI_EXTENT != 0;
            group.push((pos, rec));
            if more {
                continue;
            }
            let ino = group[0].0;
            let records: Vec<Record<'_>> = group.drain(..).map(|(_, r)| r).collect();
            if let Some(e) = build_entry(&self.reader, &self.layout, ino, ino, &records, false)? {
                entries.push(Arc::new(e));
            }
        }
        if let Some(&(pos, _)) = group.first() {
            return Err(corrupt(pos, "multi-extent file without its final record"));
        }
        Ok(entries)
    }
}

fn components(path: &[u8]) -> Vec<OsString> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .rev()
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect()
}

/// Records that directory `child` hangs under `parent`; a directory reached from a second
/// parent, or from itself, makes a loop.
fn check_tree(
    tree: &mut HashMap<u64, (u64, u32)>,
    parent: u64,
    child: u64,
    at: u64,
) -> Result<(), IsoError> {
    if child == parent {
        return Err(corrupt(at, "directory loop: a directory contains itself"));
    }
    let depth = tree.get(&parent).map_or(0, |&(_, d)| d);
    match tree.get(&child) {
        Some(&(known_parent, _)) if known_parent != parent => Err(corrupt(
            at,
            "directory loop: a directory is reached from two parents",
        )),
        Some(_) => Ok(()),
        None if depth >= MAX_DEPTH => Err(corrupt(
            at,
            format!("directories nested deeper than {MAX_DEPTH} levels"),
        )),
        None if tree.len() >= MAX_DIRECTORIES => Err(corrupt(
            at,
            format!("more than {MAX_DIRECTORIES} directories"),
        )),
        None => {
            tree.insert(child, (parent, depth + 1));
            Ok(())
        }
    }
}

/// The primary descriptor's root record and the Joliet one, if any.
type RootRecords = ([u8; 34], Option<[u8; 34]>);

fn read_descriptors(reader: &Reader) -> Result<RootRecords, IsoError> {
    let mut primary = None;
    let mut joliet = None;
    reader.load_sectors(FIRST_DESCRIPTOR_SECTOR, DESCRIPTORS_AT_ONCE)?;
    for i in 0..MAX_DESCRIPTORS {
        let n = FIRST_DESCRIPTOR_SECTOR + i;
        let at = n * SECTOR_U64;
        if at + SECTOR_U64 > reader.size {
            return Err(if i == 0 {
                IsoError::NotIso(format!(
                    "{} bytes is too small for a volume descriptor",
                    reader.size
                ))
            } else {
                corrupt(at, "volume descriptor set has no terminator")
            });
        }
        let sector = reader.sector(n)?;
        let descriptor = parse_descriptor(&sector).map_err(|w| {
            if i == 0 {
                IsoError::NotIso(w.to_owned())
            } else {
                corrupt(at, w)
            }
        })?;
        match descriptor {
            Descriptor::Terminator => {
                let primary = primary
                    .ok_or_else(|| IsoError::NotIso("no primary volume descriptor".into()))?;
                return Ok((primary, joliet));
            }
            Descriptor::Primary { block_size, root } if primary.is_none() => {
                check_block_size(block_size)?;
                primary = Some(root);
            }
            Descriptor::Joliet { block_size, root } if joliet.is_none() => {
                check_block_size(block_size)?;
                joliet = Some(root);
            }
            _ => {}
        }
    }
    Err(corrupt(
        FIRST_DESCRIPTOR_SECTOR * SECTOR_U64,
        format!("no volume descriptor set terminator in {MAX_DESCRIPTORS} descriptors"),
    ))
}

fn check_block_size(block_size: u16) -> Result<(), IsoError> {
    if usize::from(block_size) == SECTOR {
        Ok(())
    } else {
        Err(IsoError::Unsupported(format!(
            "logical block size {block_size} (only 2048 is read)"
        )))
    }
}

/// The byte position and bytes of the `.` record that starts the directory `root` points at.
fn root_dot_record(reader: &Reader, root: &Record<'_>) -> Result<(u64, Vec<u8>), IsoError> {
    let (start, _) = directory_extent(reader, root, 0)?;
    let sector = reader.sector(start / SECTOR_U64)?;
    let rec = parse_record(&sector).map_err(|w| corrupt(start, w))?;
    if rec.ident != [0] {
        return Err(corrupt(
            start,
            "root directory does not start with its `.` record",
        ));
    }
    Ok((start, sector[..rec.len].to_vec()))
}

/// The checked byte range of a directory's records.
fn directory_extent(reader: &Reader, rec: &Record<'_>, at: u64) -> Result<(u64, u64), IsoError> {
    let start = (u64::from(rec.lba) + u64::from(rec.xattr_len)) * SECTOR_U64;
    let size = u64::from(rec.size);
    if start < FIRST_DESCRIPTOR_SECTOR * SECTOR_U64 {
        return Err(corrupt(at, "directory extent inside the system area"));
    }
    if size > MAX_DIR_BYTES {
        return Err(corrupt(
            at,
            format!("directory of {size} bytes is over the {MAX_DIR_BYTES}-byte limit"),
        ));
    }
    reader
        .check_range(start, size)
        .map_err(|_| corrupt(at, "directory extent past the end of the image"))?;
    Ok((start, size))
}

/// The system use entries of a record: its own area (after SP's skip) and the continuation
/// areas it chains to, bounded in number and size, a repeated area being a loop.
fn read_system_use(reader: &Reader, area: &[u8], at: u64) -> Result<SystemUse, IsoError> {
    read_system_use_skipping(reader, area, 0, at)
}

fn read_system_use_skipping(
    reader: &Reader,
    area: &[u8],
    skip: usize,
    at: u64,
) -> Result<SystemUse, IsoError> {
    let mut su = SystemUse::default();
    let mut next = su
        .parse_area(area.get(skip..).unwrap_or(&[]))
        .map_err(|w| corrupt(at, w))?;
    let mut seen: Vec<Continuation> = Vec::new();
    while let Some(ce) = next {
        if seen.contains(&ce) {
            return Err(corrupt(at, "continuation area loop"));
        }
        if seen.len() >= MAX_CONTINUATIONS {
            return Err(corrupt(
                at,
                format!("more than {MAX_CONTINUATIONS} continuation areas"),
            ));
        }
        if ce.len > MAX_CONTINUATION_BYTES {
            return Err(corrupt(at, "continuation area too long"));
        }
        seen.push(ce);
        let offset = u64::from(ce.block) * SECTOR_U64 + u64::from(ce.offset);
        let bytes = reader.small(offset, ce.len as usize).map_err(|e| match e {
            IsoError::Corrupt { .. } => corrupt(at, "continuation area past the end of the image"),
            other => other,
        })?;
        next = su.parse_area(&bytes).map_err(|w| corrupt(offset, w))?;
    }
    Ok(su)
}

fn to_system_time(secs: Option<i64>) -> SystemTime {
    match secs {
        Some(s) if s >= 0 => UNIX_EPOCH.checked_add(Duration::from_secs(s.unsigned_abs())),
        Some(s) => UNIX_EPOCH.checked_sub(Duration::from_secs(s.unsigned_abs())),
        None => None,
    }
    .unwrap_or(UNIX_EPOCH)
}

/// Builds one entry from its records (several for a multi-extent file). `None` for entries that
/// are hidden: associated files and Rock Ridge directories relocated elsewhere (RE).
fn build_entry(
    reader: &Reader,
    layout: &Layout,
    ino: u64,
    at: u64,
    records: &[Record<'_>],
    is_root: bool,
) -> Result<Option<Entry>, IsoError> {
    let Some(first) = records.first() else {
        return Err(corrupt(at, "entry without records"));
    };
    if first.flags & FLAG_ASSOCIATED != 0 && !is_root {
        return Ok(None);
    }
    let su = match layout.naming {
        Naming::RockRidge => {
            let skip = if is_root { 0 } else { layout.su_skip };
            read_system_use_skipping(reader, first.system_use, skip, at)?
        }
        Naming::Joliet | Naming::Plain => SystemUse::default(),
    };
    if su.relocated && !is_root {
        return Ok(None);
    }
    let name = if is_root {
        OsString::from("/")
    } else {
        let name = match (layout.naming, &su.name) {
            (Naming::RockRidge, Some(nm)) => OsString::from_vec(nm.clone()),
            (Naming::Joliet, _) => joliet_name(first.ident),
            _ => plain_name(first.ident),
        };
        check_name(&name).map_err(|w| corrupt(at, w))?;
        name
    };
    if records.iter().any(|r| r.interleaved) {
        return Err(IsoError::Unsupported(format!(
            "interleaved file at byte {at}"
        )));
    }
    let file_type = su.px.map(|p| p.mode & 0o170_000);
    let kind = if first.flags & FLAG_DIRECTORY != 0 || su.child_link.is_some() {
        Kind::Dir
    } else if file_type == Some(0o120_000) {
        Kind::Symlink
    } else {
        Kind::File
    };
    let mut extents = Vec::new();
    let mut link = None;
    let mut content = if su.zisofs {
        Content::Zisofs
    } else {
        Content::Readable
    };
    let size = match kind {
        Kind::Dir => {
            if records.len() != 1 {
                return Err(corrupt(at, "multi-extent directory"));
            }
            let extent = match su.child_link {
                Some(block) => {
                    let start = u64::from(block) * SECTOR_U64;
                    let sector = reader.sector(block.into())?;
                    let dot = parse_record(&sector).map_err(|w| corrupt(start, w))?;
                    if dot.ident != [0] {
                        return Err(corrupt(at, "relocated directory has no `.` record"));
                    }
                    directory_extent(reader, &dot, start)?
                }
                None => directory_extent(reader, first, at)?,
            };
            if extent.1 > 0 {
                extents.push(extent);
            }
            extent.1
        }
        Kind::Symlink => {
            let target = su
                .link
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| corrupt(at, "symbolic link without a target"))?;
            let len = target.len() as u64;
            link = Some(OsString::from_vec(target));
            len
        }
        Kind::File => {
            let mut total = 0u64;
            for r in records {
                let start = (u64::from(r.lba) + u64::from(r.xattr_len)) * SECTOR_U64;
                let len = u64::from(r.size);
                if reader.check_range(start, len).is_err() && content == Content::Readable {
                    content = Content::PastEnd { start, len };
                }
                if len > 0 {
                    extents.push((start, len));
                }
                total += len;
            }
            total
        }
    };
    let px = su.px;
    let default_mode = match kind {
        Kind::Dir => 0o555,
        Kind::File => 0o444,
        Kind::Symlink => 0o777,
    };
    let recorded = short_date(&first.date);
    let mtime = su.mtime.or(recorded);
    Ok(Some(Entry {
        name,
        attr: Attr {
            ino,
            kind,
            mode: px.map_or(default_mode, |p| p.mode & 0o7777),
            size,
            mtime: to_system_time(mtime),
            atime: to_system_time(su.atime.or(mtime)),
            ctime: to_system_time(su.ctime.or(mtime)),
            nlink: px.map_or(if kind == Kind::Dir { 2 } else { 1 }, |p| p.nlink.max(1)),
            uid: px.map_or(0, |p| p.uid),
            gid: px.map_or(0, |p| p.gid),
        },
        extents,
        link,
        content,
    }))
}

/// Strips a `;N` version suffix.
fn strip_version(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&b| b == b';') {
        Some(p) if name[p + 1..].iter().all(u8::is_ascii_digit) => &name[..p],
        _ => name,
    }
}

fn strip_trailing_dot(name: &[u8]) -> &[u8] {
    match name {
        [head @ .., b'.'] if !head.is_empty() => head,
        _ => name,
    }
}

/// A primary-tree identifier: d-characters, `FILE.EXT;1`, shown as `FILE.EXT` (Latin-1 beyond
/// ASCII).
fn plain_name(ident: &[u8]) -> OsString {
    let name = strip_trailing_dot(strip_version(ident));
    OsString::from(name.iter().map(|&b| char::from(b)).collect::<String>())
}

/// A Joliet identifier: UCS-2 big-endian, version stripped like the primary tree's.
fn joliet_name(ident: &[u8]) -> OsString {
    let units = ident
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]));
    let name: String = char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    let stripped = strip_trailing_dot(strip_version(name.as_bytes()));
    OsString::from_vec(stripped.to_vec())
}

fn check_name(name: &OsStr) -> Result<(), &'static str> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." {
        return Err("empty, `.` or `..` file name");
    }
    if b.contains(&b'/') || b.contains(&0) {
        return Err("file name with a slash or NUL byte");
    }
    if b.len() > susp::MAX_NAME {
        return Err("file name too long");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
