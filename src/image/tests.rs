//! Image core tests over in-memory sources with injected faults.

use std::sync::atomic::AtomicU32;

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::fetch::MAX_RUN_BYTES;
use super::*;
use crate::config::DEFAULT_READ_TIMEOUT;
use crate::manifest::HashAlg;
use crate::source::{Pieces, SourceError, SourceIdentity};

/// A source over bytes in memory that counts reads and can fail or lie.
struct FaultySource {
    data: Vec<u8>,
    reads: AtomicU64,
    fail_next: AtomicU32,
    /// Flip a bit in every byte range that overlaps this offset.
    corrupt_at: Mutex<Option<u64>>,
    /// Answer reads in pieces of this many bytes (as a LUN does, one per command).
    piece: Option<usize>,
    /// The read size it says suits it (the default when None).
    run_bytes: Option<usize>,
    label: String,
}

impl FaultySource {
    fn new(data: Vec<u8>) -> Arc<FaultySource> {
        Arc::new(FaultySource {
            data,
            reads: AtomicU64::new(0),
            fail_next: AtomicU32::new(0),
            corrupt_at: Mutex::new(None),
            piece: None,
            run_bytes: None,
            label: "a".into(),
        })
    }
    fn with_run_bytes(data: Vec<u8>, run_bytes: usize) -> Arc<FaultySource> {
        Arc::new(FaultySource {
            run_bytes: Some(run_bytes),
            ..Arc::into_inner(FaultySource::new(data)).unwrap()
        })
    }
    fn in_pieces(data: Vec<u8>, piece: usize) -> Arc<FaultySource> {
        Arc::new(FaultySource {
            piece: Some(piece),
            ..Arc::into_inner(FaultySource::new(data)).unwrap()
        })
    }
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
}

/// `source` named `label` (in messages and `info/portal`).
fn mirror(label: &str, source: &Arc<FaultySource>) -> Arc<dyn BlockSource> {
    Arc::new(Named {
        label: label.into(),
        source: source.clone(),
    })
}

/// A source under another name.
struct Named {
    label: String,
    source: Arc<FaultySource>,
}

#[async_trait]
impl BlockSource for Named {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn describe(&self) -> String {
        self.label.clone()
    }
    async fn open(&self) -> Result<SourceIdentity, SourceError> {
        self.source.open().await
    }
    fn read(&self, offset: u64, len: usize) -> Pieces<'_> {
        self.source.read(offset, len)
    }
    fn run_bytes(&self) -> usize {
        self.source.run_bytes()
    }
}

impl FaultySource {
    fn read_now(&self, offset: u64, len: usize) -> Result<Vec<Bytes>, SourceError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SourceError::Network("injected failure".into()));
        }
        let end = offset as usize + len;
        if end > self.data.len() {
            return Err(SourceError::OutOfRange("past end".into()));
        }
        let mut out = self.data[offset as usize..end].to_vec();
        if let Some(at) = *self.corrupt_at.lock().unwrap() {
            if (offset..end as u64).contains(&at) {
                out[(at - offset) as usize] ^= 0x01;
            }
        }
        let all = Bytes::from(out);
        let Some(piece) = self.piece else {
            return Ok(vec![all]);
        };
        Ok((0..all.len())
            .step_by(piece)
            .map(|at| all.slice(at..(at + piece).min(all.len())))
            .collect())
    }
}

#[async_trait]
impl BlockSource for FaultySource {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn describe(&self) -> String {
        self.label.clone()
    }
    async fn open(&self) -> Result<SourceIdentity, SourceError> {
        Ok(SourceIdentity {
            size: self.data.len() as u64,
            block_size: 512,
            serial: Some("SERIAL1".into()),
            device_id: None,
        })
    }
    fn read(&self, offset: u64, len: usize) -> Pieces<'_> {
        let pieces = self.read_now(offset, len);
        let stream = match pieces {
            Ok(pieces) => futures_util::stream::iter(pieces.into_iter().map(Ok)).boxed(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        };
        stream
    }
    fn run_bytes(&self) -> usize {
        self.run_bytes.unwrap_or(crate::source::DEFAULT_RUN_BYTES)
    }
}

/// A portal that refuses every connection.
struct DeadSource;

#[async_trait]
impl BlockSource for DeadSource {
    fn kind(&self) -> &'static str {
        "iscsi"
    }
    fn describe(&self) -> String {
        "127.0.0.1:1".into()
    }
    async fn open(&self) -> Result<SourceIdentity, SourceError> {
        Err(SourceError::Network("connection refused".into()))
    }
    fn read(&self, _offset: u64, _len: usize) -> Pieces<'_> {
        futures_util::stream::once(async { Err(SourceError::Network("connection refused".into())) })
            .boxed()
    }
}

const CHUNK: u32 = 64 << 10;

fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn spec(
    bytes: &[u8],
    with_manifest: bool,
    sources: Vec<Arc<dyn BlockSource>>,
    offline: bool,
) -> ImageSpec {
    spec_hashed(bytes, HashAlg::Sha256, with_manifest, sources, offline)
}

/// [`spec`] with a manifest of chunk hashes in `hash_alg`.
fn spec_hashed(
    bytes: &[u8],
    hash_alg: HashAlg,
    with_manifest: bool,
    sources: Vec<Arc<dyn BlockSource>>,
    offline: bool,
) -> ImageSpec {
    let manifest = Manifest::build(bytes, CHUNK, hash_alg).unwrap();
    let identity = if with_manifest {
        format!("manifest:{}", manifest.pin())
    } else {
        "lun:iqn.test:1".into()
    };
    ImageSpec {
        name: "test-image".into(),
        size: bytes.len() as u64,
        chunk_size: CHUNK,
        manifest_bytes: with_manifest.then(|| manifest.to_bytes()),
        manifest: with_manifest.then_some(manifest),
        identity,
        sources,
        offline,
        read_timeout: DEFAULT_READ_TIMEOUT,
        facts: vec![("target".into(), "iqn.test".into())],
        expect_serial: None,
    }
}

fn cache(dir: &std::path::Path, limit: Option<u64>) -> Option<Arc<Cache>> {
    Some(Arc::new(Cache::new(dir.to_path_buf(), limit)))
}

/// Fetch all of `bytes` from `src` into a cache under `dir`; returns the store's directory.
async fn cache_everything(
    bytes: &[u8],
    src: &Arc<FaultySource>,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let image = Image::new(
        spec(bytes, true, vec![mirror("a", src)], false),
        cache(dir, None),
    );
    image.prefetch(0, bytes.len() as u64).await.unwrap();
    image.flush().await;
    drop(image);
    std::fs::read_dir(dir.join("images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_ranges_then_offline_from_cache() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(1_000_000 + 123, 1);
    let src = FaultySource::new(bytes.clone());
    let image = Image::new(
        spec(&bytes, true, vec![mirror("a", &src)], false),
        cache(dir.path(), None),
    );
    for (off, len) in [
        (0u64, 10usize),
        (65_530, 20),
        (999_000, 5000),
        (1_000_100, 100),
        (2_000_000, 10),
    ] {
        let got = image.read(off, len).await.unwrap();
        let end = (off as usize + len).min(bytes.len());
        let want = bytes.get(off as usize..end).unwrap_or(&[]);
        assert_eq!(&got[..], want, "range {off}+{len}");
    }
    let whole = image.read(0, bytes.len()).await.unwrap();
    assert!(whole[..] == bytes[..]);
    assert!(image.stats().contains("verification failures: 0"));
    image.flush().await;
    drop(image);
    let offline = Image::new(spec(&bytes, true, vec![], true), cache(dir.path(), None));
    assert!(offline.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    assert_eq!(offline.cached_bytes(), bytes.len() as u64);
}

#[tokio::test]
async fn offline_miss_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(300_000, 2);
    let image = Image::new(spec(&bytes, true, vec![], true), cache(dir.path(), None));
    let err = image.read(70_000, 10).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "test-image: bytes 70000..70010 are not cached and isomount is offline"
    );
}

#[tokio::test]
async fn misses_coalesce_into_one_read() {
    let bytes = data(1 << 20, 3);
    let src = FaultySource::new(bytes.clone());
    let image = Image::new(spec(&bytes, true, vec![mirror("a", &src)], false), None);
    let got = image.read(0, 1 << 20).await.unwrap();
    assert!(got[..] == bytes[..]);
    assert_eq!(
        src.reads(),
        (1 << 20) / MAX_RUN_BYTES,
        "16 missing chunks must be READs of {MAX_RUN_BYTES} bytes"
    );
}

/// A source that asks for larger reads (a web mirror: each range request costs a round trip)
/// gets runs of that size.
#[tokio::test]
async fn misses_coalesce_into_runs_of_the_size_the_source_asks_for() {
    let bytes = data(2 << 20, 3);
    let src = FaultySource::with_run_bytes(bytes.clone(), 1 << 20);
    let image = Image::new(spec(&bytes, true, vec![mirror("a", &src)], false), None);
    let got = image.read(0, 2 << 20).await.unwrap();
    assert!(got[..] == bytes[..]);
    assert_eq!(src.reads(), 2, "32 missing chunks must be 2 READs of 1 MiB");
}

#[tokio::test]
async fn corrupt_cache_chunk_is_refetched_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4 * CHUNK as usize, 4);
    let src = FaultySource::new(bytes.clone());
    let store_dir = cache_everything(&bytes, &src, dir.path()).await;
    let data_path = store_dir.join("data");
    let mut raw = std::fs::read(&data_path).unwrap();
    raw[CHUNK as usize + 7] ^= 0x80;
    std::fs::write(&data_path, &raw).unwrap();
    let before = src.reads();
    let image = Image::new(
        spec(&bytes, true, vec![mirror("a", &src)], false),
        cache(dir.path(), None),
    );
    assert!(image.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    assert_eq!(
        src.reads(),
        before + 1,
        "only the corrupt chunk is fetched again"
    );
    image.flush().await;
    let offline = Image::new(spec(&bytes, true, vec![], true), cache(dir.path(), None));
    assert!(
        offline.read(0, bytes.len()).await.unwrap()[..] == bytes[..],
        "healed"
    );
}

#[tokio::test]
async fn tampered_mirror_falls_back_then_fails_naming_the_chunk() {
    let bytes = data(3 * CHUNK as usize, 5);
    let bad = FaultySource::new(bytes.clone());
    *bad.corrupt_at.lock().unwrap() = Some(u64::from(CHUNK) + 100);
    let good = FaultySource::new(bytes.clone());
    let image = Image::new(
        spec(
            &bytes,
            true,
            vec![mirror("bad", &bad), mirror("good", &good)],
            false,
        ),
        None,
    );
    assert!(image.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    assert!(good.reads() >= 1);
    assert!(image.stats().contains("verification failures: 1"));

    let image = Image::new(spec(&bytes, true, vec![mirror("bad", &bad)], false), None);
    let err = image.read(0, bytes.len()).await.unwrap_err();
    assert!(
        matches!(err, ImageError::Verification { chunk: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("chunk 1 failed verification"),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EIO);
    let first = image.read(0, CHUNK as usize).await.unwrap();
    assert!(
        first[..] == bytes[..CHUNK as usize],
        "good chunks still read"
    );
}

#[tokio::test]
async fn dead_first_mirror_and_transient_errors_are_survived() {
    let bytes = data(200_000, 6);
    let src = FaultySource::new(bytes.clone());
    src.fail_next.store(1, Ordering::SeqCst);
    let image = Image::new(
        spec(
            &bytes,
            true,
            vec![Arc::new(DeadSource), mirror("b", &src)],
            false,
        ),
        None,
    );
    assert!(image.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    assert!(image.stats().contains("portal: b"), "{}", image.stats());
}

#[tokio::test(start_paused = true)]
async fn all_mirrors_dead_fails_and_warns_once() {
    let bytes = data(200_000, 7);
    let image = Image::new(spec(&bytes, true, vec![Arc::new(DeadSource)], false), None);
    assert!(!image.connect_now().await);
    let started = Instant::now();
    let err = image.read(0, 10).await.unwrap_err().to_string();
    assert!(err.contains("no portal is reachable"), "{err}");
    assert!(err.contains("connection refused"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a known-dead portal is skipped quickly"
    );
}

#[tokio::test]
async fn trust_on_first_use_detects_a_changed_lun() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 * CHUNK as usize, 8);
    let src = FaultySource::new(bytes.clone());
    let image = Image::new(
        spec(&bytes, false, vec![mirror("a", &src)], false),
        cache(dir.path(), None),
    );
    assert!(image.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    image.flush().await;
    drop(image);
    let image = Image::new(
        spec(&bytes, false, vec![mirror("a", &src)], false),
        cache(dir.path(), None),
    );
    assert!(image.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    image.cached.forget_recent();
    image.cached.store().unwrap().drop_chunks(&[0]).unwrap();
    *src.corrupt_at.lock().unwrap() = Some(10);
    let err = image.read(0, 100).await.unwrap_err();
    assert!(
        matches!(err, ImageError::Verification { chunk: 0, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_trigger_read_ahead() {
    let bytes = data(8 << 20, 9);
    let src = FaultySource::new(bytes.clone());
    let image = Image::new(spec(&bytes, true, vec![mirror("a", &src)], false), None);
    let piece = 128 << 10;
    let mut off = 0;
    while off < bytes.len() {
        let got = image.read(off as u64, piece).await.unwrap();
        assert!(got[..] == bytes[off..off + piece]);
        off += piece;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Without read-ahead every read is a READ of its own (64); with it, most find their chunks
    // fetched already, in READs of MAX_RUN_BYTES (32 in all).
    let reads = src.reads();
    assert!(
        reads <= (bytes.len() / piece) as u64 * 3 / 4,
        "{reads} READs for 64 sequential reads"
    );
}

#[tokio::test]
async fn facts_and_stats_describe_the_image() {
    let bytes = data(10_000, 10);
    let src = FaultySource::new(bytes.clone());
    let image = Image::new(
        spec(&bytes, true, vec![mirror("127.0.0.1:3260", &src)], false),
        None,
    );
    image.read(0, 100).await.unwrap();
    let facts: HashMap<String, String> = image.facts().into_iter().collect();
    assert_eq!(facts["size"], "10000");
    assert_eq!(facts["target"], "iqn.test");
    assert_eq!(facts["portal"], "127.0.0.1:3260");
    assert_eq!(facts["manifest"].len(), 64);
    assert_eq!(facts["chunk-hash"], "sha256");
    let blake3 = Image::new(
        spec_hashed(
            &bytes,
            HashAlg::Blake3,
            true,
            vec![mirror("a", &src)],
            false,
        ),
        None,
    );
    let facts: HashMap<String, String> = blake3.facts().into_iter().collect();
    assert_eq!(facts["chunk-hash"], "blake3");
    let unpinned = Image::new(spec(&bytes, false, vec![mirror("a", &src)], false), None);
    let facts: HashMap<String, String> = unpinned.facts().into_iter().collect();
    assert_eq!(facts["chunk-hash"], "sha256 (recorded on first fetch)");
    let stats = image.stats();
    assert!(stats.contains("misses: 1\n"), "{stats}");
    assert!(stats.contains("bytes fetched: 10000\n"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answered_in_odd_pieces_are_exact() {
    let bytes = data(5 * CHUNK as usize + 777, 10);
    let src = FaultySource::in_pieces(bytes.clone(), 100_001);
    let image = Image::new(spec(&bytes, true, vec![mirror("a", &src)], false), None);
    let got = image.read(0, bytes.len()).await.unwrap();
    assert!(got[..] == bytes[..]);
    let parts = image.read_parts(1000, 3 * CHUNK as usize).await.unwrap();
    let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    assert!(joined[..] == bytes[1000..1000 + 3 * CHUNK as usize]);
    assert!(image.stats().contains("verification failures: 0"));
}

#[tokio::test]
async fn a_torn_record_falls_back_to_sha256_and_damaged_bytes_are_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 * CHUNK as usize, 11);
    let src = FaultySource::new(bytes.clone());
    let store_dir = cache_everything(&bytes, &src, dir.path()).await;
    // Chunk 0: its CRC32C field damaged, its bytes intact: served (sha256 agrees), not fetched.
    // Chunk 2: one bit of its bytes flipped: the CRC32C disagrees, so does sha256: fetched again.
    let index_path = store_dir.join("index");
    let mut index = std::fs::read(&index_path).unwrap();
    let crc_at = |chunk: usize| {
        crate::cache::store::INDEX_HEADER_LEN as usize
            + chunk * crate::cache::store::RECORD_LEN as usize
            + 32
    };
    index[crc_at(0)] ^= 0xff;
    let data_path = store_dir.join("data");
    let mut raw = std::fs::read(&data_path).unwrap();
    raw[2 * CHUNK as usize + 9] ^= 0x04;
    std::fs::write(&index_path, &index).unwrap();
    std::fs::write(&data_path, &raw).unwrap();
    let before = src.reads();
    let image = Image::new(
        spec(&bytes, true, vec![mirror("a", &src)], false),
        cache(dir.path(), None),
    );
    assert!(image.read(0, CHUNK as usize).await.unwrap()[..] == bytes[..CHUNK as usize]);
    assert_eq!(src.reads(), before, "an intact chunk is not fetched again");
    assert!(image.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    assert_eq!(
        src.reads(),
        before + 1,
        "the damaged chunk is fetched again"
    );
}

/// The same image republished with BLAKE3 chunk hashes, over the store its sha256 manifest
/// filled: no record is believed without a BLAKE3 check. Intact chunks pass (hashed again, not
/// fetched); a chunk whose bytes were replaced, its record (sha256 and CRC32C) made to agree with
/// the new bytes, is fetched again.
#[tokio::test]
async fn a_store_filled_under_sha256_is_checked_again_under_a_blake3_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4 * CHUNK as usize, 13);
    let src = FaultySource::new(bytes.clone());
    let store_dir = cache_everything(&bytes, &src, dir.path()).await;
    let data_path = store_dir.join("data");
    let mut raw = std::fs::read(&data_path).unwrap();
    let chunk1 = CHUNK as usize..2 * CHUNK as usize;
    raw[chunk1.start + 77] ^= 0x10;
    let index_path = store_dir.join("index");
    let mut index = std::fs::read(&index_path).unwrap();
    let record =
        crate::cache::store::INDEX_HEADER_LEN as usize + crate::cache::store::RECORD_LEN as usize;
    index[record..record + 32].copy_from_slice(&crate::manifest::sha256(&raw[chunk1.clone()]));
    index[record + 32..record + 36]
        .copy_from_slice(&crc32c::crc32c(&raw[chunk1.clone()]).to_be_bytes());
    std::fs::write(&index_path, &index).unwrap();
    std::fs::write(&data_path, &raw).unwrap();

    let sha256_identity = spec(&bytes, true, Vec::new(), false).identity;
    let mut republished = spec_hashed(
        &bytes,
        HashAlg::Blake3,
        true,
        vec![mirror("a", &src)],
        false,
    );
    republished.identity = sha256_identity;
    let image = Image::new(republished, cache(dir.path(), None));
    assert!(image.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    let stats = image.stats();
    assert!(
        stats.contains(&format!("bytes fetched: {CHUNK}\n")),
        "intact chunks pass by their BLAKE3 hash; only the replaced one is fetched again: {stats}"
    );
    image.flush().await;
    drop(image);
    let store = crate::cache::Store::open_existing(&store_dir).unwrap();
    let blake3 = HashAlg::Blake3.hash_chunk(&bytes[chunk1]);
    assert_eq!(
        store.record(1).unwrap().hash,
        blake3,
        "refetched under BLAKE3"
    );
}

/// The CRC32C a fetched chunk is stored with is the one taken as it was verified (the store
/// does not take it again): it must be the chunk's, for the aligned chunks written directly and
/// for the short last one alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_chunks_are_stored_with_the_crc32c_of_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(5 * CHUNK as usize + 1000, 21);
    let src = FaultySource::new(bytes.clone());
    let store_dir = cache_everything(&bytes, &src, dir.path()).await;
    let index = std::fs::read(store_dir.join("index")).unwrap();
    for (chunk, expected) in bytes.chunks(CHUNK as usize).enumerate() {
        let at = crate::cache::store::INDEX_HEADER_LEN as usize
            + chunk * crate::cache::store::RECORD_LEN as usize;
        let crc = u32::from_be_bytes(index[at + 32..at + 36].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(expected), "chunk {chunk}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_the_store_write_nothing_and_uses_are_recorded_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(8 * CHUNK as usize, 12);
    let src = FaultySource::new(bytes.clone());
    let store_dir = cache_everything(&bytes, &src, dir.path()).await;
    // Every chunk last used long ago: a read is a use worth recording.
    let index_path = store_dir.join("index");
    let mut index = std::fs::read(&index_path).unwrap();
    let record = |chunk: usize| {
        crate::cache::store::INDEX_HEADER_LEN as usize
            + chunk * crate::cache::store::RECORD_LEN as usize
    };
    for chunk in 0..8 {
        index[record(chunk) + 40..record(chunk) + 48].copy_from_slice(&1u64.to_be_bytes());
    }
    std::fs::write(&index_path, &index).unwrap();
    let image = Image::new(
        spec(&bytes, true, vec![mirror("a", &src)], false),
        cache(dir.path(), None),
    );
    image.set_read_ahead(false);
    let before = src.reads();
    assert!(image.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    assert_eq!(src.reads(), before, "all from the store");
    assert_eq!(
        std::fs::read(&index_path).unwrap(),
        index,
        "the read wrote nothing to the index"
    );
    image.flush().await;
    let after = std::fs::read(&index_path).unwrap();
    for chunk in 0..8 {
        let used = u64::from_be_bytes(
            after[record(chunk) + 40..record(chunk) + 48]
                .try_into()
                .unwrap(),
        );
        assert!(used > 1, "chunk {chunk}'s use recorded at the flush");
    }
}

/// A whole store is sealed once every chunk is verified and written; with a valid seal an open
/// does not wait for a check (it is not passed through, and the check runs behind it), and a
/// chunk that went bad without any timestamp moving (bit rot, here sealed again after the
/// damage) is still caught when it is read, and fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_store_is_checked_behind_its_open_and_a_damaged_chunk_is_caught_on_read() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(8 * CHUNK as usize, 14);
    let src = FaultySource::new(bytes.clone());
    let store_dir = cache_everything(&bytes, &src, dir.path()).await;
    assert!(
        store_dir.join("seal").exists(),
        "a whole, verified store is sealed at the flush"
    );
    let data_file = std::fs::OpenOptions::new()
        .write(true)
        .open(store_dir.join("data"))
        .unwrap();
    let at = 5 * CHUNK as usize + 7;
    data_file
        .write_all_at(&[bytes[at] ^ 0x10], at as u64)
        .unwrap();
    let store = crate::cache::Store::open_existing(&store_dir).unwrap();
    assert!(!store.sealed(), "the write moved the data file's ctime");
    assert!(store.seal().unwrap());
    drop(store);

    let image = Image::new(
        spec(&bytes, true, vec![mirror("a", &src)], false),
        cache(dir.path(), None),
    );
    image.set_read_ahead(false);
    assert!(image.stats().contains("sealed: yes"), "{}", image.stats());
    let before = src.reads();
    let opener = image.clone();
    let file = tokio::task::spawn_blocking(move || opener.passthrough_file(u64::MAX))
        .await
        .unwrap();
    assert!(file.is_none(), "the kernel could not check what it reads");
    assert!(image.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    assert_eq!(
        src.reads(),
        before + 1,
        "the damaged chunk alone is fetched again"
    );

    // Every chunk checked by now (by the read, and the check behind it): the next open passes
    // through, with nothing left to read back.
    let mut file = None;
    for _ in 0..500 {
        let opener = image.clone();
        file = tokio::task::spawn_blocking(move || opener.passthrough_file(0))
            .await
            .unwrap();
        if file.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(file.is_some(), "every chunk checked: passes through");
    assert!(image.cached.unverified().is_empty());
    assert_eq!(src.reads(), before + 1, "nothing fetched twice");
    assert!(
        image.stats().contains("sealed: yes"),
        "sealed again once whole"
    );
}

/// A whole store that is not sealed is read back and checked when the image is opened for
/// passthrough: a damaged chunk is found there and dropped (that open goes the ordinary way),
/// and once it has been fetched again the store passes through and is sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsealed_store_is_checked_at_open_before_it_passes_through() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(8 * CHUNK as usize, 15);
    let src = FaultySource::new(bytes.clone());
    let store_dir = cache_everything(&bytes, &src, dir.path()).await;
    std::fs::remove_file(store_dir.join("seal")).unwrap();
    let data_file = std::fs::OpenOptions::new()
        .write(true)
        .open(store_dir.join("data"))
        .unwrap();
    let at = 6 * CHUNK as usize + 1;
    data_file
        .write_all_at(&[bytes[at] ^ 0x01], at as u64)
        .unwrap();

    let image = Image::new(
        spec(&bytes, true, vec![mirror("a", &src)], false),
        cache(dir.path(), None),
    );
    image.set_read_ahead(false);
    let open = |image: &Arc<Image>| {
        let image = image.clone();
        tokio::task::spawn_blocking(move || image.passthrough_file(u64::MAX))
    };
    assert!(open(&image).await.unwrap().is_none(), "chunk 6 fails");
    assert!(!image.present_chunks()[6], "the damaged chunk was dropped");
    assert!(image.present_chunks()[5], "the chunks before it were not");
    assert!(!store_dir.join("seal").exists());
    let before = src.reads();
    assert!(image.read(0, bytes.len()).await.unwrap()[..] == bytes[..]);
    assert_eq!(src.reads(), before + 1, "only the dropped chunk is fetched");
    let file = open(&image)
        .await
        .unwrap()
        .expect("whole and verified: passes through");
    let mut through = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut through).unwrap();
    assert!(through == bytes, "the file handed out holds the image");
    assert!(image.stats().contains("sealed: yes"));
}

/// A read of chunks the store does not hold goes on to fetching without waiting for the
/// blocking pool (where a burst of cold reads used to queue, and then reach the sources in any
/// order): it completes while the pool's only thread is busy.
#[test]
fn a_cold_read_does_not_wait_for_the_blocking_pool() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(1 << 20, 41);
    let src = FaultySource::new(bytes.clone());
    let (release, held) = std::sync::mpsc::channel::<()>();
    let got = runtime.block_on(async {
        let image = Image::new(
            spec(&bytes, true, vec![mirror("a", &src)], false),
            cache(dir.path(), None),
        );
        let busy = tokio::task::spawn_blocking(move || held.recv());
        let read = tokio::time::timeout(Duration::from_secs(10), image.read(0, 256 << 10)).await;
        release.send(()).unwrap();
        let _ = busy.await;
        image.flush().await;
        read
    });
    let got = got.expect("the cold read finished while the blocking pool was busy");
    assert!(got.unwrap()[..] == bytes[..256 << 10]);
}
