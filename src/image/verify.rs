//! Verification: bytes become [`Verified`] here and nowhere else.
//!
//! - From a source: each chunk's hash, in the manifest's algorithm ([`HashAlg`]: sha256 or
//!   BLAKE3), must equal the manifest's ([`Reference`]); an image with no manifest (a LUN reached
//!   by URL) records the sha256 a chunk had when first seen, and later copies must match it.
//! - From the store: the chunk's record must name the hash the chunk is expected to have, and
//!   the bytes must match the CRC32C recorded beside it when they were verified and stored; where
//!   either disagrees the bytes are hashed again, in the manifest's algorithm (see the README on
//!   why CRC32C is enough for the user's own disk). A record is only ever compared with a hash of
//!   the expected algorithm: a store filled under a sha256 manifest and opened under a BLAKE3 one
//!   (or the other way round) holds records that name no expected hash, so each chunk is hashed
//!   again before it is believed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use crate::cache::Record;
use crate::manifest::{Hash, HashAlg, Manifest};

/// Bytes of chunks hashed in place, on the worker that asks, at most (about 150 µs of sha256):
/// handing a batch to the blocking pool and back costs wake-ups of two threads, and with one
/// handoff per READ that was 7 % of a cold `cat NAME`'s CPU time (1.464 against 1.356 CPU-s per
/// GiB), with no change in its speed on loopback or through a 20 ms link.
pub const HASH_IN_PLACE_BYTES: usize = 256 << 10;

/// Bytes that matched the manifest (or the hash recorded on first fetch). Only this module
/// constructs it, so unverified bytes cannot reach a reader by accident.
#[derive(Clone)]
pub struct Verified {
    bytes: Bytes,
    /// The CRC32C of `bytes`, when it was taken right after they were hashed (a chunk from a
    /// source), while they were still in the CPU's cache: the store records it beside the chunk,
    /// and taking it later, from memory, cost twice as much (6 % of a cold `cat NAME`).
    crc: Option<u32>,
}

impl Verified {
    fn new(bytes: Bytes) -> Verified {
        Verified { bytes, crc: None }
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The CRC32C of these bytes: the one taken when they were verified, or taken now.
    pub fn crc32c(&self) -> u32 {
        self.crc.unwrap_or_else(|| crc32c::crc32c(&self.bytes))
    }

    /// A part of verified bytes (verified too).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Verified {
        let whole = range.start == 0 && range.end == self.bytes.len();
        Verified {
            bytes: self.bytes.slice(range),
            crc: self.crc.filter(|_| whole),
        }
    }

    /// Consecutive verified parts as one buffer: the part itself when there is one, else a copy.
    pub fn join(mut parts: Vec<Verified>) -> Verified {
        if parts.len() == 1 {
            return parts.remove(0);
        }
        Verified::new(crate::iobuf::join(
            parts.into_iter().map(Verified::into_bytes).collect(),
        ))
    }
}

impl PartialEq for Verified {
    fn eq(&self, other: &Verified) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Verified {}

impl std::ops::Deref for Verified {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verified({} bytes)", self.bytes.len())
    }
}

/// Verified chunks of a run, in order, with their numbers.
pub type VerifiedChunks = Vec<(u64, Verified)>;

/// A chunk that failed verification.
#[derive(Debug)]
pub struct Lie {
    /// The chunks before it, verified.
    pub verified: VerifiedChunks,
    pub chunk: u64,
    pub detail: String,
}

/// Verification of chunks from a source as they land.
#[async_trait]
pub trait Verify: Send + Sync {
    /// Check complete chunks (in order): all of them verified, or those before the first that
    /// failed and why it failed.
    async fn verify(&self, chunks: Vec<(u64, Bytes)>) -> Result<VerifiedChunks, Lie>;
}

/// What an image's chunks must hash to: its manifest, or the hashes first seen.
pub struct Reference {
    manifest: Option<Manifest>,
    /// Hashes first seen (images with no manifest): fetched, or read from the store.
    first_seen: Mutex<HashMap<u64, Hash>>,
    failures: AtomicU64,
}

impl Reference {
    pub fn new(manifest: Option<Manifest>) -> Reference {
        Reference {
            manifest,
            first_seen: Mutex::new(HashMap::new()),
            failures: AtomicU64::new(0),
        }
    }

    /// The algorithm chunks are hashed with: the manifest's, or sha256 for the hashes first seen
    /// of an image with no manifest.
    pub fn hash_alg(&self) -> HashAlg {
        self.manifest
            .as_ref()
            .map_or(HashAlg::Sha256, Manifest::hash_alg)
    }

    /// Chunks from sources that failed verification so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn first_seen(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Hash>> {
        self.first_seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hash chunk `index` must have, when it is known.
    pub fn expected(&self, index: u64) -> Option<Hash> {
        match &self.manifest {
            Some(m) => m.hash(index).copied(),
            None => self.first_seen().get(&index).copied(),
        }
    }

    /// Check chunk `index` given its hash in [`Reference::hash_alg`] (recording it on first sight
    /// when there is no manifest).
    fn check(&self, index: u64, actual: Hash) -> Result<(), String> {
        match self.expected(index) {
            Some(expected) if expected == actual => Ok(()),
            Some(expected) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "{} {} where {} expected",
                    self.hash_alg(),
                    &hex::encode(actual)[..16],
                    &hex::encode(expected)[..16]
                ))
            }
            None => {
                self.first_seen().insert(index, actual);
                Ok(())
            }
        }
    }

    /// Bytes of chunk `index` read back from the store, verified when they are the ones verified
    /// when they were stored (see the module documentation).
    pub fn stored(&self, index: u64, bytes: Bytes, record: &Record) -> Option<Verified> {
        self.stored_intact(index, &bytes, record)
            .then(|| Verified::new(bytes))
    }

    /// Whether bytes of chunk `index` read back from the store (or seen in place, in a mapping
    /// of its data file) are the ones verified when they were stored: [`Reference::stored`]
    /// without handing them on.
    pub fn stored_intact(&self, index: u64, bytes: &[u8], record: &Record) -> bool {
        let expected = match &self.manifest {
            Some(m) => match m.hash(index) {
                Some(hash) => *hash,
                None => return false,
            },
            None => record.hash,
        };
        let ok = (record.hash == expected && crc32c::crc32c(bytes) == record.crc)
            || self.hash_alg().hash_chunk(bytes) == expected;
        if ok && self.manifest.is_none() {
            // What a refetch must match from now on.
            self.first_seen().insert(index, expected);
        }
        ok
    }

    /// Chunks `first..` read back from the store in one buffer (`lens` bytes each, `records`
    /// theirs): verified when every chunk is.
    pub fn stored_run(
        &self,
        first: u64,
        bytes: Bytes,
        lens: impl Iterator<Item = usize>,
        records: &[Record],
    ) -> Option<Verified> {
        let mut at = 0;
        for ((k, record), len) in records.iter().enumerate().zip(lens) {
            self.stored(first + k as u64, bytes.slice(at..at + len), record)?;
            at += len;
        }
        Some(Verified::new(bytes))
    }
}

#[async_trait]
impl Verify for Reference {
    /// A batch of up to [`HASH_IN_PLACE_BYTES`] (one READ's Data-In, as a rule) is hashed on
    /// the task's own worker; a larger one runs on the blocking pool, as a worker busy hashing
    /// holds up the other tasks queued on it (a session's, with Data-In waiting in the socket).
    async fn verify(&self, chunks: Vec<(u64, Bytes)>) -> Result<VerifiedChunks, Lie> {
        let alg = self.hash_alg();
        let bytes: usize = chunks.iter().map(|(_, b)| b.len()).sum();
        let hash = move |b: Bytes| hash_aligned(alg, b);
        let (indices, pieces): (Vec<u64>, Vec<Bytes>) = chunks.into_iter().unzip();
        let hashed: Vec<(Hash, u32, Bytes)> = if bytes <= HASH_IN_PLACE_BYTES {
            pieces.into_iter().map(hash).collect()
        } else {
            tokio::task::spawn_blocking(move || pieces.into_iter().map(hash).collect())
                .await
                .unwrap_or_default()
        };
        let mut hashed = hashed.into_iter();
        let mut verified = Vec::with_capacity(indices.len());
        for i in indices {
            let checked = match hashed.next() {
                Some((actual, crc, bytes)) => self.check(i, actual).map(|()| (crc, bytes)),
                None => Err("hashing was cancelled".to_string()),
            };
            match checked {
                Ok((crc, bytes)) => verified.push((
                    i,
                    Verified {
                        bytes,
                        crc: Some(crc),
                    },
                )),
                Err(detail) => {
                    return Err(Lie {
                        verified,
                        chunk: i,
                        detail,
                    })
                }
            }
        }
        Ok(verified)
    }
}

/// Bytes copied at a time by [`hash_aligned`]: the piece is hashed right after it is copied,
/// while it is in the CPU's nearest caches.
const COPY_PIECE: usize = 16 << 10;

/// The hash and CRC32C of a fetched `chunk`, and the chunk in page-aligned memory: where it
/// already lies, or else a copy made piece by piece, each piece hashed right after it is
/// copied, so the copy costs little beside the hash. A chunk cut from an HTTP body lies wherever
/// the client's buffer put it, and the cache writes only page-aligned memory with direct I/O:
/// it had copied such chunks again itself, through a bounce buffer (a sixth of a cold `cat`
/// from a web mirror, measured with perf).
fn hash_aligned(alg: HashAlg, chunk: Bytes) -> (Hash, u32, Bytes) {
    let aligned = chunk.as_ptr() as usize % crate::iobuf::ALIGN == 0;
    let copy = match aligned {
        true => None,
        false => crate::iobuf::pool::READS.take(chunk.len()),
    };
    let Some(mut copy) = copy else {
        return (alg.hash_chunk(&chunk), crc32c::crc32c(&chunk), chunk);
    };
    let mut hasher = alg.hasher();
    let mut crc = 0;
    for piece in chunk.chunks(COPY_PIECE) {
        let at = copy.len();
        bytes::BufMut::put_slice(&mut copy, piece);
        let copied = &copy.as_slice()[at..];
        hasher.update(copied);
        crc = crc32c::crc32c_append(crc, copied);
    }
    (hasher.finish(), crc, crate::iobuf::pool::READS.freeze(copy))
}

/// Bytes taken as verified without a check, for tests of the layers that pass verified bytes on.
#[cfg(test)]
pub fn verified_for_test(bytes: Bytes) -> Verified {
    Verified::new(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::sha256;

    fn chunks(data: &[u8], size: usize) -> Vec<(u64, Bytes)> {
        data.chunks(size)
            .enumerate()
            .map(|(i, c)| (i as u64, Bytes::copy_from_slice(c)))
            .collect()
    }

    #[tokio::test]
    async fn chunks_are_checked_against_the_manifest_or_their_first_hash() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 241) as u8).collect();
        let manifest = Manifest::build(&data[..], 4096, HashAlg::Sha256).unwrap();
        let reference = Reference::new(Some(manifest));
        let good = reference.verify(chunks(&data, 4096)).await.unwrap();
        assert_eq!(good.len(), 3);
        let mut bad = data.clone();
        bad[5000] ^= 1;
        let lie = reference.verify(chunks(&bad, 4096)).await.unwrap_err();
        assert_eq!((lie.verified.len(), lie.chunk), (1, 1));
        assert!(lie.detail.contains("expected"), "{}", lie.detail);
        assert_eq!(reference.failures(), 1);

        let first_use = Reference::new(None);
        assert!(first_use.verify(chunks(&data, 4096)).await.is_ok());
        assert_eq!(first_use.expected(2), Some(sha256(&data[8192..])));
        assert_eq!(
            first_use.hash_alg(),
            HashAlg::Sha256,
            "first-seen hashes are sha256"
        );
        assert!(first_use.verify(chunks(&bad, 4096)).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_hashed_in_place_and_on_the_blocking_pool_are_checked_alike() {
        let size = 64 << 10;
        let data: Vec<u8> = (0..HASH_IN_PLACE_BYTES * 2)
            .map(|i| (i % 251) as u8)
            .collect();
        let manifest = Manifest::build(&data[..], size as u32, HashAlg::Sha256).unwrap();
        let reference = Reference::new(Some(manifest));
        let small = chunks(&data[..HASH_IN_PLACE_BYTES], size);
        assert_eq!(reference.verify(small).await.unwrap().len(), 4);
        let mut bad = data.clone();
        bad[HASH_IN_PLACE_BYTES + 3 * size + 1] ^= 1;
        for (at, batch) in [(0, &data), (1, &bad)] {
            let all = chunks(batch, size);
            assert!(all.iter().map(|(_, b)| b.len()).sum::<usize>() > HASH_IN_PLACE_BYTES);
            match reference.verify(all).await {
                Ok(good) if at == 0 => assert_eq!(good.len(), 8),
                Err(lie) if at == 1 => assert_eq!((lie.verified.len(), lie.chunk), (7, 7)),
                other => panic!("{:?}", other.map(|v| v.len()).map_err(|l| l.chunk)),
            }
        }
    }

    /// Chunks that lie anywhere in memory (as an HTTP body's pieces do) are handed on in
    /// page-aligned memory, as the cache's direct writes want, with the hash and CRC32C of
    /// their bytes under either algorithm; chunks that lie page-aligned already (a READ's data)
    /// are handed on where they lie. A lie is still caught.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetched_chunks_are_handed_on_page_aligned_with_their_hash_and_crc() {
        let size = 64 << 10;
        let data: Vec<u8> = (0..8 * size).map(|i| (i % 241) as u8).collect();
        for alg in [HashAlg::Sha256, HashAlg::Blake3] {
            let manifest = Manifest::build(&data[..], size as u32, alg).unwrap();
            let reference = Reference::new(Some(manifest));
            // One body of the whole run, one byte into an allocation: no chunk is aligned.
            let mut body = vec![0u8; data.len() + 1];
            body[1..].copy_from_slice(&data);
            let body = Bytes::from(body).slice(1..);
            let cut: Vec<(u64, Bytes)> = (0..8)
                .map(|i| (i as u64, body.slice(i * size..(i + 1) * size)))
                .collect();
            assert!(cut.iter().all(|(_, b)| b.as_ptr() as usize % 4096 != 0));
            for (i, v) in reference.verify(cut).await.unwrap() {
                let expected = &data[i as usize * size..][..size];
                assert!(&v[..] == expected, "{alg:?} chunk {i}");
                assert_eq!(v.as_ptr() as usize % 4096, 0, "{alg:?} chunk {i}: aligned");
                assert_eq!(v.crc, Some(crc32c::crc32c(expected)));
            }
            let mut bad = body.to_vec();
            bad[5 * size + 77] ^= 4;
            let bad = Bytes::from(bad);
            let cut: Vec<(u64, Bytes)> = (0..8)
                .map(|i| (i as u64, bad.slice(i * size..(i + 1) * size)))
                .collect();
            let lie = reference.verify(cut).await.unwrap_err();
            assert_eq!((lie.verified.len(), lie.chunk), (5, 5), "{alg:?}");
        }
        let mut landed = crate::iobuf::pool::READS.take(2 * size).unwrap();
        bytes::BufMut::put_slice(&mut landed, &data[..2 * size]);
        let landed = crate::iobuf::pool::READS.freeze(landed);
        let manifest = Manifest::build(&data[..], size as u32, HashAlg::Sha256).unwrap();
        let reference = Reference::new(Some(manifest));
        let cut = vec![(0, landed.slice(..size)), (1, landed.slice(size..))];
        let got = reference.verify(cut).await.unwrap();
        assert_eq!(
            got[1].1.as_ptr(),
            landed[size..].as_ptr(),
            "left where it lies"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_from_a_source_carry_the_crc32c_taken_as_they_were_hashed() {
        let size = 64 << 10;
        let data: Vec<u8> = (0..HASH_IN_PLACE_BYTES * 2)
            .map(|i| (i % 253) as u8)
            .collect();
        let manifest = Manifest::build(&data[..], size as u32, HashAlg::Sha256).unwrap();
        let reference = Reference::new(Some(manifest));
        // One batch hashed in place, one on the blocking pool.
        for batch in [&data[..HASH_IN_PLACE_BYTES], &data[..]] {
            for (i, v) in reference.verify(chunks(batch, size)).await.unwrap() {
                let expected = crc32c::crc32c(&data[i as usize * size..][..size]);
                assert_eq!(v.crc, Some(expected), "chunk {i}: taken as it was hashed");
                assert_eq!(v.crc32c(), expected);
                assert_eq!(v.slice(0..size).crc, Some(expected), "the whole of it");
                let part = v.slice(1..size);
                assert_eq!(part.crc, None, "a part has a CRC of its own");
                assert_eq!(part.crc32c(), crc32c::crc32c(&v[1..]));
            }
        }
        let joined = Verified::join(vec![
            verified_for_test(Bytes::from_static(b"ab")),
            verified_for_test(Bytes::from_static(b"cd")),
        ]);
        assert_eq!(joined.crc32c(), crc32c::crc32c(b"abcd"));
    }

    #[test]
    fn stored_chunks_need_their_crc_or_their_hash() {
        let data = Bytes::from(vec![7u8; 4096]);
        let manifest = Manifest::build(&data[..], 4096, HashAlg::Sha256).unwrap();
        let reference = Reference::new(Some(manifest));
        let record = Record {
            hash: sha256(&data),
            crc: crc32c::crc32c(&data),
            last_use: 1,
        };
        assert!(reference.stored(0, data.clone(), &record).is_some());
        let torn = Record { crc: 0, ..record };
        assert!(
            reference.stored(0, data.clone(), &torn).is_some(),
            "sha256 agrees"
        );
        let mut damaged = data.to_vec();
        damaged[9] = 0;
        assert!(reference.stored(0, Bytes::from(damaged), &record).is_none());
        let other = Record {
            hash: [1; 32],
            ..record
        };
        assert!(
            reference.stored(0, data.clone(), &other).is_some(),
            "a record naming another hash falls back to sha256"
        );
    }

    #[tokio::test]
    async fn blake3_manifests_verify_fetched_chunks_with_blake3() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 239) as u8).collect();
        let manifest = Manifest::build(&data[..], 4096, HashAlg::Blake3).unwrap();
        let reference = Reference::new(Some(manifest));
        assert_eq!(reference.hash_alg(), HashAlg::Blake3);
        assert_eq!(
            reference.verify(chunks(&data, 4096)).await.unwrap().len(),
            3
        );
        let mut bad = data.clone();
        bad[9000] ^= 0x40;
        let lie = reference.verify(chunks(&bad, 4096)).await.unwrap_err();
        assert_eq!((lie.verified.len(), lie.chunk), (2, 2));
        assert!(lie.detail.starts_with("blake3 "), "{}", lie.detail);
    }

    /// Records written under a sha256 manifest, read under a BLAKE3 manifest of the same image
    /// (republished): none is believed on its record alone. Intact bytes pass by their BLAKE3
    /// hash; bytes that differ from the manifest's are refused, however well their record (hash
    /// and CRC32C of those very bytes) agrees with them.
    #[test]
    fn records_of_another_algorithm_are_checked_against_the_manifest() {
        let data = Bytes::from((0..4096u32).map(|i| (i % 13) as u8).collect::<Vec<u8>>());
        let reference = Reference::new(Some(
            Manifest::build(&data[..], 4096, HashAlg::Blake3).unwrap(),
        ));
        let sha_record = |bytes: &[u8]| Record {
            hash: sha256(bytes),
            crc: crc32c::crc32c(bytes),
            last_use: 1,
        };
        assert!(reference
            .stored(0, data.clone(), &sha_record(&data))
            .is_some());
        let mut other = data.to_vec();
        other[100] ^= 1;
        assert!(
            reference
                .stored(0, Bytes::from(other.clone()), &sha_record(&other))
                .is_none(),
            "a self-consistent sha256 record of other bytes"
        );
        // And the other way round: BLAKE3 records under a sha256 manifest.
        let sha_reference = Reference::new(Some(
            Manifest::build(&data[..], 4096, HashAlg::Sha256).unwrap(),
        ));
        let blake3_record = |bytes: &[u8]| Record {
            hash: HashAlg::Blake3.hash_chunk(bytes),
            crc: crc32c::crc32c(bytes),
            last_use: 1,
        };
        assert!(sha_reference
            .stored(0, data.clone(), &blake3_record(&data))
            .is_some());
        assert!(sha_reference
            .stored(0, Bytes::from(other.clone()), &blake3_record(&other))
            .is_none());
    }

    #[test]
    fn a_torn_record_under_a_blake3_manifest_falls_back_to_blake3() {
        let data = Bytes::from(vec![5u8; 4096]);
        let manifest = Manifest::build(&data[..], 4096, HashAlg::Blake3).unwrap();
        let expected = *manifest.hash(0).unwrap();
        let reference = Reference::new(Some(manifest));
        let torn = Record {
            hash: expected,
            crc: 0,
            last_use: 1,
        };
        assert!(reference.stored(0, data.clone(), &torn).is_some());
        let mut damaged = data.to_vec();
        damaged[7] = 6;
        let record = Record {
            crc: crc32c::crc32c(&data),
            ..torn
        };
        assert!(reference.stored(0, Bytes::from(damaged), &record).is_none());
    }
}
