//! The fuser adapter: each FUSE request goes to the [`Tree`] on a tokio runtime, so a slow image
//! read never holds a FUSE worker thread (`FUSE_ASYNC_READ`; replies are sent from the task).

use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{
    BackingId, FileHandle, Filesystem, FopenFlags, INodeNo, KernelConfig, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, Request,
};

use super::{Caching, Tree};

/// The largest read the kernel may send us (and its read-ahead window), in bytes. The kernel caps
/// it by its own `max_pages_limit` (256 pages by default).
pub const MAX_READ: u32 = 1 << 20;

/// The kernel read-ahead window root sets for the mount, in bytes: a sequential reader then has
/// 16 requests of [`MAX_READ`] in flight, which keeps the image core fetching and verifying chunks
/// in parallel (measured: twice the throughput of a 1 MiB window from the persistent cache).
pub const READ_AHEAD: u32 = 16 << 20;

/// How many FUSE requests the kernel keeps in flight in the background (read-ahead).
const MAX_BACKGROUND: u16 = 64;

/// File handles: how a file was opened, so `release` can tell.
const FH_CACHED: u64 = 0;
const FH_PASSTHROUGH: u64 = 1;

/// A [`fuser::Filesystem`] over a [`Tree`].
pub struct FuseAdapter {
    tree: Arc<Tree>,
    runtime: tokio::runtime::Handle,
    passthrough: Arc<Passthrough>,
}

/// FUSE passthrough of a fully cached, verified image: the kernel reads the cache's data file
/// directly, at the speed of a local file, with no request reaching us (Linux 6.9, root only).
/// The kernel refuses a passthrough open while the file is open the ordinary way, so: none is
/// asked for while ordinary opens are live, and once one is granted every later open is one.
#[derive(Default)]
struct Passthrough {
    /// Negotiated at init.
    enabled: bool,
    state: Mutex<PassthroughState>,
    /// Ordinary opens of the image file still live (counted up under `state`).
    cached_opens: AtomicUsize,
}

#[derive(Default)]
struct PassthroughState {
    /// The backing file's id, kept for the life of the mount once granted.
    backing: Option<BackingId>,
}

impl FuseAdapter {
    /// `runtime` runs the reads; it must outlive the session.
    pub fn new(tree: Arc<Tree>, runtime: tokio::runtime::Handle) -> FuseAdapter {
        FuseAdapter {
            tree,
            runtime,
            passthrough: Arc::new(Passthrough::default()),
        }
    }

    /// Open the image file: by passthrough when it can be had, else the ordinary way.
    fn open_image(&self, ino: INodeNo, reply: ReplyOpen) {
        let tree = self.tree.clone();
        let passthrough = self.passthrough.clone();
        self.runtime.spawn_blocking(move || {
            let mut state = passthrough.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.backing.is_none() && passthrough.cached_opens.load(Ordering::Acquire) == 0 {
                // Checking the cache may take a while; opens of the image wait for it.
                if let Some(file) = tree.passthrough_file(ino.0) {
                    match reply.open_backing(&file) {
                        Ok(id) => state.backing = Some(id),
                        Err(err) => tracing::debug!("no passthrough for the image: {err}"),
                    }
                }
            }
            if let Some(id) = &state.backing {
                reply.opened_passthrough(FileHandle(FH_PASSTHROUGH), FopenFlags::empty(), id);
                return;
            }
            passthrough.cached_opens.fetch_add(1, Ordering::AcqRel);
            reply.opened(FileHandle(FH_CACHED), FopenFlags::FOPEN_KEEP_CACHE);
        });
    }

    /// Answer a request about `ino`: at once for the fixed nodes, on the blocking pool for
    /// `files/`, whose metadata may have to be read from the network first.
    fn answer(&self, ino: INodeNo, work: impl FnOnce(&Tree) + Send + 'static) {
        if self.tree.in_files(ino.0) {
            let tree = self.tree.clone();
            self.runtime.spawn_blocking(move || work(&tree));
        } else {
            work(&self.tree);
        }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each setter reports the kernel's limit when asked for more; take the limit then.
        if let Err(limit) = config.set_max_readahead(MAX_READ) {
            let _ = config.set_max_readahead(limit);
        }
        if let Err(limit) = config.set_max_write(MAX_READ) {
            let _ = config.set_max_write(limit);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        let session = crate::platform::fuse_session();
        // Registering a backing file takes CAP_SYS_ADMIN: ask for passthrough only as root.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root
            && session.passthrough
            && config
                .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
                .is_ok()
        {
            if let Some(p) = Arc::get_mut(&mut self.passthrough) {
                p.enabled = config.set_max_stack_depth(1).is_ok();
            }
        }
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        let mut wanted = fuser::InitFlags::FUSE_ASYNC_READ
            | fuser::InitFlags::FUSE_PARALLEL_DIROPS
            | fuser::InitFlags::FUSE_CACHE_SYMLINKS;
        if session.max_pages {
            wanted |= fuser::InitFlags::FUSE_MAX_PAGES;
        }
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_os_string();
        self.answer(parent, move |tree| match tree.lookup(parent.0, &name) {
            Ok(attr) => reply.entry(&tree.ttl(attr.ino.0), &attr, fuser::Generation(0)),
            Err(err) => reply.error(err.errno()),
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.answer(ino, move |tree| match tree.getattr(ino.0) {
            Ok(attr) => reply.attr(&tree.ttl(ino.0), &attr),
            Err(err) => reply.error(err.errno()),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.answer(ino, move |tree| match tree.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(err) => reply.error(err.errno()),
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if self.passthrough.enabled && !write && self.tree.is_image(ino.0) {
            return self.open_image(ino, reply);
        }
        self.answer(ino, move |tree| match tree.open(ino.0, write) {
            Ok(Caching::KeepCache) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(Caching::Direct) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(err) => reply.error(err.errno()),
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if self.passthrough.enabled && fh.0 == FH_CACHED && self.tree.is_image(ino.0) {
            let _ = self.passthrough.cached_opens.fetch_update(
                Ordering::AcqRel,
                Ordering::Acquire,
                |n| n.checked_sub(1),
            );
        }
        reply.ok();
        if fh.0 == FH_CACHED && self.tree.is_image(ino.0) {
            let tree = self.tree.clone();
            self.runtime.spawn_blocking(move || tree.closed(ino.0));
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let tree = self.tree.clone();
        self.runtime.spawn(async move {
            match tree.read(ino.0, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(err) => reply.error(err.errno()),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.tree.readdir(ino.0) {
            Ok(entries) => entries,
            Err(err) => return reply.error(err.errno()),
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, entry) in entries.iter().enumerate().skip(skip) {
            if reply.add(
                INodeNo(entry.ino),
                index as u64 + 1,
                entry.kind,
                &entry.name,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let size = self.tree.image_size();
        reply.statfs(size.div_ceil(2048), 0, 0, 0, 0, 2048, 255, 2048);
    }
}
