//! File I/O below everything that keeps files: buffers that are page-aligned (as direct I/O
//! wants), filled by the kernel without being zeroed first and handed on as [`Bytes`] without a
//! copy; files written whole or not at all ([`write_atomic`]); and advisory locks ([`flock`]).

use std::fs::File;
use std::path::Path;

use bytes::Bytes;

/// Alignment of every buffer: the page size, which covers direct I/O's block alignment.
pub const ALIGN: usize = 4096;

/// Consecutive pieces as one buffer: the piece itself when there is one, else a copy of them all
/// into a buffer from the [`pool`] (touched before, so the copy takes no page faults).
pub fn join(mut parts: Vec<Bytes>) -> Bytes {
    if parts.len() <= 1 {
        return parts.pop().unwrap_or_default();
    }
    let len = parts.iter().map(Bytes::len).sum();
    let Some(mut joined) = pool::READS.take(len) else {
        let mut joined = bytes::BytesMut::with_capacity(len);
        parts.iter().for_each(|p| joined.extend_from_slice(p));
        return joined.freeze();
    };
    for p in &parts {
        bytes::BufMut::put_slice(&mut joined, p);
    }
    pool::READS.freeze(joined)
}

/// The first bytes of an image, read while connecting to a source (in the round trip that
/// connects), held to answer the first reads and let go once a read reaches their end.
#[derive(Default)]
pub struct HeldStart(std::sync::Mutex<Option<Bytes>>);

impl HeldStart {
    pub fn new(bytes: Option<Bytes>) -> HeldStart {
        HeldStart(std::sync::Mutex::new(bytes))
    }

    pub fn hold(&self, bytes: Bytes) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
    }

    /// The part of `len` bytes at `offset` that is held, from `offset` on (None when `offset` is
    /// past what is held, or nothing is).
    pub fn head(&self, offset: u64, len: usize) -> Option<Bytes> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = held.as_ref()?;
        let start = usize::try_from(offset)
            .ok()
            .filter(|&at| at < bytes.len())?;
        let end = start.saturating_add(len).min(bytes.len());
        let piece = bytes.slice(start..end);
        if end == bytes.len() {
            *held = None;
        }
        Some(piece)
    }
}

/// `len` bytes at `start` of `file` into a buffer that becomes the returned [`Bytes`] (never
/// zeroed first, never copied). The buffer comes from the [`pool`] and goes back to it when the
/// last `Bytes` of it is dropped. A file that ends before `len` bytes is an error.
pub fn read_fresh(file: &File, start: u64, len: usize) -> std::io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let unexpected = |what: &str| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what);
    let mut buffer = pool::READS
        .take(len.max(1))
        .ok_or_else(|| unexpected("no memory"))?;
    while buffer.filled < len {
        let at = buffer.filled;
        // SAFETY: the destination lies within the buffer's allocation, past its filled part;
        // the kernel writes at most `len - at` bytes there.
        let got = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buffer.ptr.as_ptr().add(at).cast(),
                len - at,
                (start + at as u64) as libc::off_t,
            )
        };
        match got {
            n if n > 0 => buffer.filled += n as usize,
            0 => return Err(unexpected("the file ends early")),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(pool::READS.freeze(buffer).slice(..len))
}

/// Read buffers kept for reuse (file reads, and the data segments the iSCSI reader lands). A read of a few MiB into a fresh allocation may be handed fresh
/// pages by the kernel each time, and fault every one of them in while it copies (measured with
/// perf: the largest cost of reading a cached image); a buffer from the pool has been touched
/// before. Buffers are kept by size class (powers of two from 64 KiB), at most [`pool::KEEP`]
/// bytes in all.
///
/// New buffers are carved from [`pool::SLAB`]-sized, equally aligned slabs that the system is
/// asked to back with huge pages ([`crate::platform::advise_huge_pages`]): a cold read's buffers
/// then take one page fault per slab instead of one per page, and the kernel pins them for a
/// direct write or a FUSE reply a slab at a time (measured with perf on a cold `cat NAME`: page
/// faults 8 % and page pinning 3 % of its CPU time with page-sized pages). A slab goes back to
/// the allocator when the last buffer carved from it does.
pub mod pool {
    use std::sync::{Arc, Mutex};

    use super::{AlignedBuffer, Slab};

    /// Bytes of buffers kept for reuse, at most.
    pub const KEEP: usize = 64 << 20;
    const SMALLEST: usize = 64 << 10;
    /// Bytes of a slab, and its alignment: the size of a huge page on x86-64 and arm64.
    pub const SLAB: usize = 2 << 20;

    /// Free buffers by capacity, and their bytes in all; the slab being carved for each class.
    pub struct Pool {
        kept: Mutex<Kept>,
        limit: usize,
    }

    struct Kept {
        free: Vec<AlignedBuffer>,
        bytes: usize,
        /// Per class below [`SLAB`]: the slab buffers of that class are carved from, and how
        /// many bytes of it are carved already.
        carving: Vec<(usize, Arc<Slab>, usize)>,
    }

    /// The pool every read of [`super::read_fresh`] takes from.
    pub static READS: Pool = Pool::new(KEEP);

    fn class(len: usize) -> usize {
        len.max(SMALLEST).next_power_of_two()
    }

    impl Pool {
        pub const fn new(limit: usize) -> Pool {
            Pool {
                kept: Mutex::new(Kept {
                    free: Vec::new(),
                    bytes: 0,
                    carving: Vec::new(),
                }),
                limit,
            }
        }

        /// An empty buffer of at least `len` bytes: a kept one when there is one of its class.
        pub fn take(&self, len: usize) -> Option<AlignedBuffer> {
            let capacity = class(len);
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            // The most recently given back: its lines may still be in the CPU's cache.
            if let Some(at) = kept.free.iter().rposition(|b| b.capacity == capacity) {
                kept.bytes -= capacity;
                let mut buffer = kept.free.remove(at);
                buffer.filled = 0;
                return Some(buffer);
            }
            if capacity >= SLAB {
                drop(kept);
                return AlignedBuffer::huge(capacity);
            }
            kept.carve(capacity)
        }

        /// `buffer` owned so that it comes back to this pool when dropped.
        pub fn lend(&'static self, buffer: AlignedBuffer) -> Pooled {
            Pooled {
                buffer: Some(buffer),
                pool: self,
            }
        }

        /// The filled part of `buffer` as [`bytes::Bytes`] (no copy); the buffer comes back to
        /// this pool when the last of them is dropped.
        pub fn freeze(&'static self, buffer: AlignedBuffer) -> bytes::Bytes {
            bytes::Bytes::from_owner(self.lend(buffer))
        }

        /// Let go of every buffer kept for reuse and of the slabs being carved: a slab goes back
        /// to the allocator once its last buffer lent out comes back (for an idle process).
        pub fn release(&self) {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.free.clear();
            kept.bytes = 0;
            kept.carving.clear();
        }

        /// Bytes of free buffers kept now.
        pub fn kept_bytes(&self) -> usize {
            self.kept.lock().unwrap_or_else(|e| e.into_inner()).bytes
        }

        fn give(&self, buffer: AlignedBuffer) {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if kept.bytes + buffer.capacity <= self.limit {
                kept.bytes += buffer.capacity;
                kept.free.push(buffer);
            }
        }
    }

    impl Kept {
        /// A new buffer of `capacity` (a power of two below [`SLAB`]) from its class's slab,
        /// starting a new slab when that one is all carved.
        fn carve(&mut self, capacity: usize) -> Option<AlignedBuffer> {
            let at = match self.carving.iter().position(|(c, _, _)| *c == capacity) {
                Some(at) if self.carving[at].2 + capacity <= SLAB => at,
                found => {
                    let slab = Arc::new(Slab::new()?);
                    match found {
                        Some(at) => self.carving[at] = (capacity, slab, 0),
                        None => self.carving.push((capacity, slab, 0)),
                    }
                    found.unwrap_or(self.carving.len() - 1)
                }
            };
            let (_, slab, carved) = &mut self.carving[at];
            let buffer = AlignedBuffer::carved(slab.clone(), *carved, capacity);
            *carved += capacity;
            Some(buffer)
        }
    }

    /// A buffer that goes back to its pool when dropped (the owner of a [`bytes::Bytes`]).
    pub struct Pooled {
        buffer: Option<AlignedBuffer>,
        pool: &'static Pool,
    }

    impl AsRef<[u8]> for Pooled {
        fn as_ref(&self) -> &[u8] {
            self.buffer.as_ref().map_or(&[], |b| b.as_slice())
        }
    }

    impl Drop for Pooled {
        fn drop(&mut self) {
            if let Some(buffer) = self.buffer.take() {
                self.pool.give(buffer);
            }
        }
    }
}

/// [`pool::SLAB`] bytes, equally aligned, asked to be backed by huge pages; buffers are carved
/// from it, and it is freed when the last of them is dropped.
pub struct Slab {
    ptr: std::ptr::NonNull<u8>,
}

// SAFETY: plain owned memory; the buffers carved from it are disjoint.
unsafe impl Send for Slab {}
// SAFETY: as above; the slab itself is never read or written through a shared reference.
unsafe impl Sync for Slab {}

impl Slab {
    fn layout() -> Option<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(pool::SLAB, pool::SLAB).ok()
    }

    fn new() -> Option<Slab> {
        // SAFETY: the layout has a non-zero size.
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc(Self::layout()?) })?;
        crate::platform::advise_huge_pages(ptr.as_ptr(), pool::SLAB);
        Some(Slab { ptr })
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout() {
            // SAFETY: allocated in `new` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// An [`ALIGN`]-aligned heap buffer of which the first `filled` bytes are initialised
/// (aligned for direct writes; for reads, page alignment costs nothing).
pub struct AlignedBuffer {
    ptr: std::ptr::NonNull<u8>,
    capacity: usize,
    filled: usize,
    /// The slab this buffer was carved from (its memory is the slab's), or None when the
    /// buffer owns its allocation.
    slab: Option<std::sync::Arc<Slab>>,
}

// SAFETY: the buffer is plain owned memory; shared access is read-only (AsRef).
unsafe impl Send for AlignedBuffer {}
// SAFETY: as above.
unsafe impl Sync for AlignedBuffer {}

impl AlignedBuffer {
    /// Buffers of a slab's size or more are aligned like slabs (and asked for huge pages).
    fn layout(capacity: usize) -> Option<std::alloc::Layout> {
        let align = if capacity >= pool::SLAB {
            pool::SLAB
        } else {
            ALIGN
        };
        std::alloc::Layout::from_size_align(capacity, align).ok()
    }

    /// An uninitialised buffer (nothing filled).
    pub fn new(capacity: usize) -> Option<AlignedBuffer> {
        let layout = Self::layout(capacity).filter(|l| l.size() > 0)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        Some(AlignedBuffer {
            ptr,
            capacity,
            filled: 0,
            slab: None,
        })
    }

    /// An uninitialised buffer of at least a slab's size, asked to be backed by huge pages.
    fn huge(capacity: usize) -> Option<AlignedBuffer> {
        let buffer = Self::new(capacity)?;
        crate::platform::advise_huge_pages(buffer.ptr.as_ptr(), capacity);
        Some(buffer)
    }

    /// The `capacity` bytes at `offset` of `slab` as a buffer (the caller hands out each part of
    /// a slab once).
    fn carved(slab: std::sync::Arc<Slab>, offset: usize, capacity: usize) -> AlignedBuffer {
        debug_assert!(offset + capacity <= pool::SLAB);
        // SAFETY: offset + capacity lies within the slab's allocation, which `slab` keeps alive.
        let ptr = unsafe { slab.ptr.add(offset) };
        AlignedBuffer {
            ptr,
            capacity,
            filled: 0,
            slab: Some(slab),
        }
    }

    /// Fill the whole buffer with zeroes.
    pub fn zero(&mut self) {
        // SAFETY: the allocation is `capacity` bytes long.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), 0, self.capacity) };
        self.filled = self.capacity;
    }

    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `filled` bytes are initialised and owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.filled) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.filled) }
    }
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AlignedBuffer({} of {} bytes)",
            self.filled, self.capacity
        )
    }
}

impl AsRef<[u8]> for AlignedBuffer {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

// SAFETY: `chunk_mut` is the unfilled rest of the allocation, and `advance_mut` only counts bytes
// the caller has written there (the trait's contract), never past the capacity.
unsafe impl bytes::BufMut for AlignedBuffer {
    fn remaining_mut(&self) -> usize {
        self.capacity - self.filled
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(
            cnt <= self.remaining_mut(),
            "advanced past the buffer's end"
        );
        self.filled += cnt;
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        // SAFETY: the bytes from `filled` to `capacity` lie within the allocation and belong to
        // self; they may be uninitialised, which `UninitSlice` allows.
        unsafe {
            bytes::buf::UninitSlice::from_raw_parts_mut(
                self.ptr.as_ptr().add(self.filled),
                self.capacity - self.filled,
            )
        }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        if self.slab.is_some() {
            return; // the slab's memory: freed with the slab
        }
        if let Some(layout) = Self::layout(self.capacity) {
            // SAFETY: allocated in `new` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// Write all of `parts`, back to back, with as few vectored writes as the writer takes.
pub fn write_all_vectored<W: std::io::Write>(out: &mut W, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::{ErrorKind, IoSlice};
    /// Slices per call: IOV_MAX on every system we run on is at least this.
    const PER_CALL: usize = 1024;
    let mut slices: Vec<IoSlice> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut left = &mut slices[..];
    while !left.is_empty() {
        let n = left.len().min(PER_CALL);
        match out.write_vectored(&left[..n]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut left, written),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_all(&[(path, bytes)])
}

/// Write several files, each through a temporary file that is written and fsynced first; the
/// renames come last, one right after the other, so a reader sees the old set or the new one
/// but for the moment between two renames (a catalog and its signature).
pub fn write_atomic_all(files: &[(&Path, &[u8])]) -> std::io::Result<()> {
    use std::io::Write;
    let mut staged = Vec::with_capacity(files.len());
    for &(path, bytes) in files {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id()
        ));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        staged.push((tmp, path, dir));
    }
    for (tmp, path, _) in &staged {
        std::fs::rename(tmp, path)?;
    }
    for (_, _, dir) in &staged {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// flock(2) on a file: exclusive or shared, blocking or not.
pub fn flock(file: &File, exclusive: bool, wait: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_start_answers_heads_until_a_read_reaches_its_end() {
        let held = HeldStart::new(Some(Bytes::from_static(b"0123456789")));
        assert_eq!(held.head(2, 3).as_deref(), Some(&b"234"[..]));
        assert_eq!(held.head(8, 100).as_deref(), Some(&b"89"[..]));
        // Let go once read to its end.
        assert_eq!(held.head(0, 1), None);
        held.hold(Bytes::from_static(b"abc"));
        assert_eq!(held.head(3, 1), None);
        assert_eq!(held.head(u64::MAX, 1), None);
        assert_eq!(held.head(0, usize::MAX).as_deref(), Some(&b"abc"[..]));
        assert_eq!(held.head(0, 1), None);
    }

    #[test]
    fn reads_exactly_and_refuses_to_read_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let got = read_fresh(&file, 1234, 5000).unwrap();
        assert_eq!(&got[..], &data[1234..6234]);
        assert_eq!(got.as_ptr() as usize % ALIGN, 0, "the buffer is aligned");
        assert!(read_fresh(&file, 0, 0).unwrap().is_empty());
        let err = read_fresh(&file, 9000, 2000).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn buffers_go_back_to_their_pool_and_are_reused_within_its_limit() {
        static POOL: pool::Pool = pool::Pool::new(256 << 10);
        let mut first = POOL.take(200_000).unwrap();
        first.zero();
        let at = first.ptr;
        let owner = Bytes::from_owner(POOL.lend(first));
        let slice = owner.slice(10..20);
        drop(owner);
        assert_eq!(
            POOL.kept_bytes(),
            0,
            "a slice keeps the buffer out of the pool"
        );
        drop(slice);
        assert_eq!(
            POOL.kept_bytes(),
            256 << 10,
            "back when the last slice goes"
        );
        let again = POOL.take(150_000).unwrap();
        assert_eq!(again.ptr, at, "the kept buffer of that class is reused");
        assert_eq!(again.len(), 0, "handed out empty");
        let other = POOL.take(200_000).unwrap();
        assert_ne!(other.ptr, at);
        drop(POOL.lend(again));
        drop(POOL.lend(other));
        assert_eq!(
            POOL.kept_bytes(),
            256 << 10,
            "no more than the limit is kept"
        );
    }

    #[test]
    fn the_buffer_given_back_last_is_taken_first() {
        static POOL: pool::Pool = pool::Pool::new(1 << 20);
        let (older, newer) = (POOL.take(100_000).unwrap(), POOL.take(100_000).unwrap());
        let newer_at = newer.ptr;
        drop(POOL.lend(older));
        drop(POOL.lend(newer));
        assert_eq!(POOL.take(100_000).unwrap().ptr, newer_at);
    }

    #[test]
    fn new_buffers_of_a_class_are_carved_from_one_slab_freed_with_its_last_buffer() {
        static POOL: pool::Pool = pool::Pool::new(0);
        let per_slab = pool::SLAB / (256 << 10);
        let buffers: Vec<AlignedBuffer> =
            (0..per_slab).map(|_| POOL.take(200_000).unwrap()).collect();
        let base = buffers[0].ptr.as_ptr() as usize;
        assert_eq!(base % pool::SLAB, 0, "a slab is aligned to its size");
        for (k, b) in buffers.iter().enumerate() {
            assert_eq!(
                b.ptr.as_ptr() as usize,
                base + k * (256 << 10),
                "side by side"
            );
            assert_eq!(b.capacity, 256 << 10);
        }
        let slab = std::sync::Arc::downgrade(buffers[0].slab.as_ref().unwrap());
        let next = POOL.take(200_000).unwrap();
        assert_eq!(next.ptr.as_ptr() as usize % pool::SLAB, 0, "a new slab");
        assert_ne!(next.ptr.as_ptr() as usize, base);
        let mut buffers = buffers;
        buffers.pop();
        drop(POOL.lend(buffers.remove(3)));
        assert!(slab.upgrade().is_some(), "alive while a buffer of it is");
        drop(buffers);
        assert!(slab.upgrade().is_none(), "freed with its last buffer");
        // Buffers of a slab or more are aligned like slabs and own their memory.
        let big = POOL.take(3 << 20).unwrap();
        assert_eq!(big.capacity, 4 << 20);
        assert_eq!(big.ptr.as_ptr() as usize % pool::SLAB, 0);
        assert!(big.slab.is_none());
    }

    #[test]
    fn carved_buffers_hold_what_is_written_to_them() {
        static POOL: pool::Pool = pool::Pool::new(1 << 20);
        let written: Vec<Bytes> = (0..40u8)
            .map(|k| {
                let mut b = POOL.take(65536 + usize::from(k)).unwrap();
                bytes::BufMut::put_bytes(&mut b, k, 65536 + usize::from(k));
                POOL.freeze(b)
            })
            .collect();
        for (k, b) in written.iter().enumerate() {
            assert_eq!(b.len(), 65536 + k);
            assert!(b.iter().all(|&x| x == k as u8), "buffer {k} intact");
        }
    }

    #[test]
    fn reads_into_reused_buffers_hold_the_new_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        for start in [0usize, 100_000, 7] {
            let got = read_fresh(&file, start as u64, 200_000).unwrap();
            assert_eq!(&got[..], &data[start..start + 200_000]);
        }
    }

    #[test]
    fn a_join_is_the_piece_itself_or_an_exact_copy_into_an_aligned_buffer() {
        let one = Bytes::from_static(b"only");
        assert_eq!(join(vec![one.clone()]).as_ptr(), one.as_ptr(), "not copied");
        assert!(join(Vec::new()).is_empty());
        let pieces: Vec<Bytes> = (0..5u8)
            .map(|k| Bytes::from(vec![k; 1000 + usize::from(k)]))
            .collect();
        let joined = join(pieces.clone());
        assert_eq!(joined.as_ptr() as usize % ALIGN, 0);
        assert_eq!(joined.to_vec(), pieces.concat());
    }

    #[test]
    fn a_zeroed_buffer_is_all_there() {
        let mut b = AlignedBuffer::new(8192).unwrap();
        assert!(b.is_empty());
        b.zero();
        assert_eq!(b.len(), 8192);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[5] = 1;
        assert_eq!(b.as_ref()[5], 1);
    }
}
