use std::ffi::OsStr;
use std::io::Write;

use super::*;
use crate::iso9660::IsoFs;
use crate::source::{FileSource, SourceError};

/// What [`SourceView`] reads from: a local file, or a double that fails.
#[async_trait]
trait Blocks: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn block_size(&self) -> u32;
    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, SourceError>;
}

#[async_trait]
impl Blocks for FileSource {
    fn size(&self) -> u64 {
        FileSource::size(self)
    }
    fn block_size(&self) -> u32 {
        self.block_size()
    }
    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, SourceError> {
        FileSource::read_at(self, offset, len)
    }
}

/// A test double for the image core: an [`ImageView`] straight over [`Blocks`], aligning reads
/// to the block size, with counters for `stats`.
struct SourceView<S> {
    source: S,
    reads: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

impl<S: Blocks> SourceView<S> {
    fn new(source: S) -> SourceView<S> {
        SourceView {
            source,
            reads: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl<S: Blocks> ImageView for SourceView<S> {
    fn size(&self) -> u64 {
        self.source.size()
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, ReadFailure> {
        let size = self.source.size();
        let block = u64::from(self.source.block_size().max(1));
        let end = offset.saturating_add(len as u64).min(size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let start = offset - offset % block;
        let aligned_end = end
            .checked_next_multiple_of(block)
            .map_or(size, |e| e.min(size));
        let span = usize::try_from(aligned_end - start)
            .map_err(|_| ReadFailure("read too large".to_string()))?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        match self.source.read_at(start, span).await {
            Ok(bytes) if bytes.len() == span => {
                self.bytes.fetch_add(span as u64, Ordering::Relaxed);
                let skip = (offset - start) as usize;
                Ok(bytes.slice(skip..skip + (end - offset) as usize))
            }
            Ok(bytes) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(ReadFailure(format!(
                    "source returned {} bytes, expected {span}",
                    bytes.len()
                )))
            }
            Err(err) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(ReadFailure(err.to_string()))
            }
        }
    }

    fn facts(&self) -> Vec<(String, String)> {
        vec![
            ("size".to_string(), self.source.size().to_string()),
            (
                "block-size".to_string(),
                self.source.block_size().to_string(),
            ),
        ]
    }

    fn stats(&self) -> String {
        format!(
            "reads: {}\nbytes fetched: {}\nerrors: {}",
            self.reads.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed)
        )
    }
}

fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn file_view(bytes: &[u8], block_size: u32) -> (tempfile::NamedTempFile, Arc<dyn ImageView>) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    let source = FileSource::open(file.path(), block_size).unwrap();
    (file, Arc::new(SourceView::new(source)))
}

fn iso_like(len: usize) -> Vec<u8> {
    let mut bytes = patterned(len);
    bytes[32768] = 1;
    bytes[32769..32774].copy_from_slice(b"CD001");
    bytes[32774] = 1;
    bytes
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn iso9660_is_recognised_by_its_primary_volume_descriptor() {
    let rt = runtime();
    let (_f, iso) = file_view(&iso_like(40960), 2048);
    assert!(rt.block_on(holds_iso9660(iso.as_ref())).unwrap());
    let mut not_primary = iso_like(40960);
    not_primary[32768] = 2;
    let (_g, other) = file_view(&not_primary, 2048);
    assert!(!rt.block_on(holds_iso9660(other.as_ref())).unwrap());
    let (_h, small) = file_view(&patterned(4096), 512);
    assert!(!rt.block_on(holds_iso9660(small.as_ref())).unwrap());
}

#[test]
fn root_lists_the_image_and_info() {
    let (_f, view) = file_view(&patterned(10_000), 512);
    let tree = Tree::new(view, "demo", "demo", false, None, 1000, 1000);
    let names: Vec<String> = tree
        .readdir(1)
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [".", "..", "demo.img", "info"]);
    let attr = tree.lookup(1, OsStr::new("demo.img")).unwrap();
    assert_eq!(attr.size, 10_000);
    assert_eq!(attr.kind, FileType::RegularFile);
    assert_eq!(attr.perm, 0o444);
    assert_eq!(attr.uid, 1000);
    assert!(matches!(
        tree.lookup(1, OsStr::new("demo.iso")),
        Err(FsError::NotFound)
    ));
    let info: Vec<String> = tree
        .readdir(3)
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    assert_eq!(info, [".", "..", "size", "block-size", "stats"]);
}

#[test]
fn image_reads_are_exact_and_clamped_at_the_end() {
    let rt = runtime();
    let bytes = patterned(10_000);
    let (_f, view) = file_view(&bytes, 512);
    let tree = Tree::new(view, "demo", "demo", false, None, 0, 0);
    let ino = tree.lookup(1, OsStr::new("demo.img")).unwrap().ino.0;
    let got = rt.block_on(tree.read(ino, 1000, 3000)).unwrap();
    assert_eq!(&got[..], &bytes[1000..4000]);
    let tail = rt.block_on(tree.read(ino, 9_900, 4096)).unwrap();
    assert_eq!(&tail[..], &bytes[9_900..]);
    assert!(rt
        .block_on(tree.read(ino, 10_000, 4096))
        .unwrap()
        .is_empty());
    assert!(rt
        .block_on(tree.read(ino, u64::MAX, 4096))
        .unwrap()
        .is_empty());
}

#[test]
fn info_files_hold_facts_and_live_stats() {
    let rt = runtime();
    let (_f, view) = file_view(&iso_like(40960), 2048);
    let tree = Tree::new(view, "demo", "demo", true, None, 0, 0);
    assert_eq!(tree.image_file_name(), "demo.iso");
    let size = tree.lookup(3, OsStr::new("size")).unwrap();
    assert_eq!(size.size, 6);
    let text = rt.block_on(tree.read(size.ino.0, 0, 4096)).unwrap();
    assert_eq!(&text[..], b"40960\n");
    let stats = tree.lookup(3, OsStr::new("stats")).unwrap();
    assert_eq!(tree.ttl(stats.ino.0), Duration::ZERO);
    assert_eq!(tree.open(stats.ino.0, false).unwrap(), Caching::Direct);
    let before = rt.block_on(tree.read(stats.ino.0, 0, 4096)).unwrap();
    assert!(String::from_utf8_lossy(&before).contains("reads: 0"));
    rt.block_on(tree.read(2, 0, 4096)).unwrap();
    let after = rt.block_on(tree.read(stats.ino.0, 0, 4096)).unwrap();
    assert!(String::from_utf8_lossy(&after).contains("reads: 1"));
}

#[test]
fn opening_is_read_only_and_the_image_keeps_its_cache() {
    let (_f, view) = file_view(&patterned(4096), 512);
    let tree = Tree::new(view, "demo", "demo", false, None, 0, 0);
    assert_eq!(tree.open(2, false).unwrap(), Caching::KeepCache);
    assert_eq!(tree.open(2, true).unwrap_err().errno(), fuser::Errno::EROFS);
    assert_eq!(
        tree.open(1, false).unwrap_err().errno(),
        fuser::Errno::EISDIR
    );
    assert_eq!(
        tree.open(999, false).unwrap_err().errno(),
        fuser::Errno::ENOENT
    );
    assert_eq!(tree.readdir(2).unwrap_err().errno(), fuser::Errno::ENOTDIR);
}

struct Broken;

#[async_trait]
impl Blocks for Broken {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn block_size(&self) -> u32 {
        512
    }
    async fn read_at(&self, _offset: u64, _len: usize) -> Result<Bytes, SourceError> {
        Err(SourceError::Network("target unreachable".to_string()))
    }
}

#[test]
fn a_failed_read_is_eio_naming_image_range_and_cause() {
    let rt = runtime();
    let tree = Tree::new(
        Arc::new(SourceView::new(Broken)),
        "netbsd",
        "netbsd",
        false,
        None,
        0,
        0,
    );
    let err = rt.block_on(tree.read(2, 4096, 8192)).unwrap_err();
    assert_eq!(err.errno(), fuser::Errno::EIO);
    assert_eq!(
        err.to_string(),
        "read of netbsd bytes 4096..12288 failed: target unreachable"
    );
    assert_eq!(tree.failed_reads(), 1);
    let stats = tree.lookup(3, OsStr::new("stats")).unwrap();
    let text = rt.block_on(tree.read(stats.ino.0, 0, 4096)).unwrap();
    assert!(String::from_utf8_lossy(&text).ends_with("errors: 1\nfailed reads: 1\n"));
}

#[test]
fn facts_with_hostile_names_are_made_safe() {
    struct Odd;
    #[async_trait]
    impl ImageView for Odd {
        fn size(&self) -> u64 {
            0
        }
        async fn read(&self, _offset: u64, _len: usize) -> Result<Bytes, ReadFailure> {
            Ok(Bytes::new())
        }
        fn facts(&self) -> Vec<(String, String)> {
            ["../x", "", "stats", "a", "a"]
                .iter()
                .map(|n| (n.to_string(), "v".to_string()))
                .collect()
        }
        fn stats(&self) -> String {
            String::new()
        }
    }
    let tree = Tree::new(Arc::new(Odd), "odd", "odd", false, None, 0, 0);
    let names: Vec<String> = tree
        .readdir(3)
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [".", "..", ".._x", "a", "stats"]);
}

/// A tree over fixtures/sample.iso with `files/`, the volume opened the way the mount does it.
fn sample_tree(rt: &tokio::runtime::Runtime) -> Tree {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample.iso");
    let source = FileSource::open(&path, 2048).unwrap();
    let view: Arc<dyn ImageView> = Arc::new(SourceView::new(source));
    let reader = ImageReadAt::new(view.clone(), rt.handle().clone());
    let files = IsoFs::open(Arc::new(reader)).unwrap();
    Tree::new(view, "sample", "sample", true, Some(files), 0, 0)
}

fn child(tree: &Tree, parent: u64, name: &str) -> FileAttr {
    tree.lookup(parent, OsStr::new(name)).unwrap()
}

#[test]
fn files_shows_the_iso_tree_with_modes_links_and_contents() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tree = sample_tree(&rt);
    let root: Vec<String> = tree
        .readdir(1)
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    assert_eq!(root, [".", "..", "sample.iso", "info", "files"]);
    let files = child(&tree, 1, "files");
    assert_eq!(files.kind, FileType::Directory);
    assert!(tree.in_files(files.ino.0));

    let docs = child(&tree, files.ino.0, "docs");
    let history = child(&tree, docs.ino.0, "history");
    let text = child(&tree, history.ino.0, "iscsifs.txt");
    let got = rt.block_on(tree.read(text.ino.0, 0, 4096)).unwrap();
    assert!(got.starts_with(b"The idea comes from the NetBSD portable iSCSI initiator"));
    assert_eq!(got.len() as u64, text.size);

    let script = child(&tree, child(&tree, files.ino.0, "bin").ino.0, "hello.sh");
    assert_eq!(script.perm, 0o755);
    let link = child(&tree, files.ino.0, "USAGE");
    assert_eq!(link.kind, FileType::Symlink);
    assert_eq!(tree.readlink(link.ino.0).unwrap(), b"docs/usage.txt");

    let pattern = child(
        &tree,
        child(&tree, files.ino.0, "data").ino.0,
        "pattern.bin",
    );
    assert_eq!(pattern.size, 1280 * 32);
    let middle = rt.block_on(tree.read(pattern.ino.0, 32 * 700, 32)).unwrap();
    assert_eq!(&middle[..], b"block 00000700/sample-data-line\n");

    assert_eq!(
        tree.lookup(files.ino.0, OsStr::new("missing"))
            .unwrap_err()
            .errno(),
        fuser::Errno::ENOENT
    );
    assert_eq!(
        tree.readdir(text.ino.0).unwrap_err().errno(),
        fuser::Errno::ENOTDIR
    );
    assert_eq!(
        tree.open(text.ino.0, true).unwrap_err().errno(),
        fuser::Errno::EROFS
    );
}

#[test]
fn info_files_follow_a_fact_that_changes() {
    struct Failover(AtomicU64);
    #[async_trait]
    impl ImageView for Failover {
        fn size(&self) -> u64 {
            0
        }
        async fn read(&self, _offset: u64, _len: usize) -> Result<Bytes, ReadFailure> {
            Ok(Bytes::new())
        }
        fn facts(&self) -> Vec<(String, String)> {
            let portal = format!("mirror-{}:3260", self.0.load(Ordering::Relaxed));
            vec![("portal".to_string(), portal)]
        }
        fn stats(&self) -> String {
            String::new()
        }
    }
    let rt = runtime();
    let view = Arc::new(Failover(AtomicU64::new(1)));
    let tree = Tree::new(view.clone(), "f", "f", false, None, 0, 0);
    let portal = tree.lookup(3, OsStr::new("portal")).unwrap();
    assert_eq!(tree.ttl(portal.ino.0), Duration::ZERO);
    assert_eq!(tree.open(portal.ino.0, false).unwrap(), Caching::Direct);
    let before = rt.block_on(tree.read(portal.ino.0, 0, 100)).unwrap();
    assert_eq!(&before[..], b"mirror-1:3260\n");
    view.0.store(2, Ordering::Relaxed);
    let after = rt.block_on(tree.read(portal.ino.0, 0, 100)).unwrap();
    assert_eq!(&after[..], b"mirror-2:3260\n");
}
