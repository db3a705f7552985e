//! The persistent, verified chunk cache: one [`Store`] per image identity under the cache
//! directory, bounded by `--cache-size` with least-recently-used eviction across images.
//!
//! ```text
//! CACHE_DIR/
//!   lock                    flock: held exclusive while sizing and evicting
//!   images/<id>/            id = first 32 hex digits of sha256(identity)
//!     lock                  flock: shared while in use, exclusive for `cache evict`/`clear`
//!     label                 "name=…" and "identity=…" lines, for `cache list`
//!     manifest              copy of the pinned manifest (images that have one)
//!     pin                   flock: shared while the kernel reads `data` directly (passthrough);
//!                           LRU eviction passes such a store by
//!     index, data           see [`store`]
//!   catalogs/, manifests/   last good copies of https catalogs and manifests
//! ```
//! An identity is `manifest:<sha256 pin>` for an image with a manifest, else
//! `lun:<iqn>:<lun>:<size>:<serial>:<device id>` (chunk hashes are then recorded on first fetch).
//! The cache knows nothing of networks or FUSE: it stores bytes the image core has verified and
//! hands back bytes the image core will verify again.

pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use store::{Geometry, Record, Store};

use crate::manifest::{sha256, HashAlg, Manifest};

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: damaged cache index")]
    Damaged { path: String },
    #[error("`{0}` is in use by another isomount process")]
    Busy(String),
    #[error("no cached image named `{0}`")]
    NotCached(String),
    #[error("`{0}` is not a size (use a number with an optional K, M, G or T suffix)")]
    BadSize(String),
}

impl CacheError {
    /// True when the error means the disk (or quota) is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, CacheError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

/// Parse "10G", "512M", "4096", "1.5G" (binary multiples).
pub fn parse_size(text: &str) -> Result<u64, CacheError> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (number, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let bad = || CacheError::BadSize(text.to_string());
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let bytes = value * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// The cache directory: `--cache-dir`, else `$XDG_CACHE_HOME/isomount`, else `~/.cache/isomount`.
pub fn default_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_path_buf();
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("isomount")
}

/// A store as `cache list` shows it.
#[derive(Debug, Clone)]
pub struct StoreSummary {
    pub id: String,
    pub dir: PathBuf,
    pub name: String,
    pub identity: String,
    pub geometry: Geometry,
    pub present_chunks: u64,
    pub present_bytes: u64,
}

/// What `cache verify` found of one store's copy of its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestCopy {
    /// The store's image has no manifest (a LUN reached by URL): each chunk is checked against
    /// the hash recorded when it was first fetched.
    NotPinned,
    /// The copy matches the store's pin.
    Intact,
    /// The copy did not match its pin (`damage`) and was replaced by the manifest read from
    /// `from`, which does.
    Repaired { damage: String, from: String },
    /// The copy does not match its pin and no manifest that does could be read (`unrepaired`
    /// says why): the store's chunks were kept, unchecked.
    Damaged {
        path: PathBuf,
        damage: String,
        unrepaired: String,
    },
}

/// `cache verify`'s findings for one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreCheck {
    pub name: String,
    pub manifest: ManifestCopy,
    /// Chunks re-hashed.
    pub checked: usize,
    /// Chunks present but not checked (their manifest copy is damaged).
    pub unchecked: usize,
    /// Chunks that failed and were dropped.
    pub corrupt: Vec<u64>,
}

/// A fresh copy of the manifest pinned by a sha256 (hex) and where it was read from, or why
/// there is none. `cache verify` asks for one when a store's copy is damaged; the cache itself
/// knows no catalogs or networks.
pub type ManifestSource<'a> = &'a dyn Fn(&str) -> Result<(Vec<u8>, String), String>;

/// The cache root and its size bound.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    limit: Option<u64>,
    /// Bytes this process believes the cache holds; refreshed from disk when it passes the limit.
    used: Mutex<Option<u64>>,
}

fn label_value(label: &str, key: &str) -> String {
    label
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("")
        .to_string()
}

impl Cache {
    pub fn new(root: PathBuf, limit: Option<u64>) -> Cache {
        Cache {
            root,
            limit,
            used: Mutex::new(None),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a kept copy of an https manifest with this pin lives.
    pub fn kept_manifest(&self, pin: &str) -> PathBuf {
        self.root.join("manifests").join(pin)
    }

    fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The directory of the store for `identity`.
    pub fn store_dir(&self, identity: &str) -> PathBuf {
        self.images()
            .join(&hex::encode(sha256(identity.as_bytes()))[..32])
    }

    /// Whether the store for `identity` holds the image's first `bytes`, by its records (not
    /// checked: a chunk that fails its check later is fetched like any other). False when there
    /// is no such store or it cannot be read.
    pub fn holds_start(&self, identity: &str, bytes: u64) -> bool {
        let dir = self.store_dir(identity);
        if !dir.join("index").is_file() {
            return false;
        }
        let Ok(store) = Store::open_existing(&dir) else {
            return false;
        };
        let geometry = store.geometry();
        let bytes = bytes.min(geometry.image_size);
        if bytes == 0 {
            return true;
        }
        let last = (bytes - 1) / u64::from(geometry.chunk_size.max(1));
        store
            .records_range(0, last)
            .is_ok_and(|records| records.iter().all(Record::present))
    }

    /// Open (creating when needed) the store for `identity`.
    pub fn open_store(
        &self,
        name: &str,
        identity: &str,
        geometry: Geometry,
        manifest: Option<&[u8]>,
    ) -> Result<Store, CacheError> {
        let label = format!("name={name}\nidentity={identity}\n");
        // A cache hit is checked with the CRC32C recorded when the chunk was verified, which
        // catches damage, not forgery: the cache is private to its owner.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(|source| CacheError::Io {
                    path: self.root.display().to_string(),
                    source,
                })?;
        }
        Store::open_or_create(&self.store_dir(identity), geometry, &label, manifest)
    }

    /// Every store with a readable index.
    pub fn stores(&self) -> Vec<StoreSummary> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.images()) else {
            return out;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("index").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let Ok(store) = Store::open_existing(&dir) else {
                continue;
            };
            let Ok(records) = store.records() else {
                continue;
            };
            let geometry = store.geometry();
            let mut present_chunks = 0;
            let mut present_bytes = 0;
            for (i, r) in records.iter().enumerate() {
                if r.present() {
                    present_chunks += 1;
                    present_bytes += geometry.chunk_len(i as u64) as u64;
                }
            }
            let label = store.label();
            out.push(StoreSummary {
                id: dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                dir: dir.clone(),
                name: label_value(&label, "name"),
                identity: label_value(&label, "identity"),
                geometry,
                present_chunks,
                present_bytes,
            });
        }
        out
    }

    /// Bytes cached for `identity`.
    pub fn cached_bytes(&self, identity: &str) -> u64 {
        let dir = self.store_dir(identity);
        self.stores()
            .into_iter()
            .find(|s| s.dir == dir)
            .map_or(0, |s| s.present_bytes)
    }

    /// Remove the stores named `name` (or whose id starts with it).
    pub fn evict(&self, name: &str) -> Result<usize, CacheError> {
        let matching: Vec<StoreSummary> = self
            .stores()
            .into_iter()
            .filter(|s| s.name == name || (name.len() >= 8 && s.id.starts_with(name)))
            .collect();
        if matching.is_empty() {
            return Err(CacheError::NotCached(name.to_string()));
        }
        for s in &matching {
            self.remove_store(&s.dir, &s.name)?;
        }
        Ok(matching.len())
    }

    /// Remove every store and kept copy.
    pub fn clear(&self) -> Result<usize, CacheError> {
        let stores = self.stores();
        for s in &stores {
            self.remove_store(&s.dir, &s.name)?;
        }
        for sub in ["images", "catalogs", "manifests"] {
            let p = self.root.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|source| CacheError::Io {
                    path: p.display().to_string(),
                    source,
                })?;
            }
        }
        Ok(stores.len())
    }

    fn remove_store(&self, dir: &Path, name: &str) -> Result<(), CacheError> {
        let io = |source| CacheError::Io {
            path: dir.display().to_string(),
            source,
        };
        let lock = std::fs::File::open(dir.join("lock")).map_err(io)?;
        if !store::flock(&lock, true, false).map_err(io)? {
            return Err(CacheError::Busy(name.to_string()));
        }
        let trash = self.root.join(format!(
            ".trash-{}-{}",
            std::process::id(),
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        std::fs::rename(dir, &trash).map_err(io)?;
        std::fs::remove_dir_all(&trash).map_err(io)
    }

    /// Re-hash every present chunk of every store (in its manifest's chunk hash algorithm; sha256
    /// for an image with no manifest); drop and report the corrupt ones. A store's
    /// manifest copy is checked against its pin first: a damaged copy is replaced from `fresh`
    /// when that gives one matching the pin, else named, and its chunks are kept unchecked
    /// (only a manifest that matches its pin may condemn a chunk).
    pub fn verify(&self, fresh: ManifestSource<'_>) -> Result<Vec<StoreCheck>, CacheError> {
        let mut out = Vec::new();
        for summary in self.stores() {
            let store = Store::open_existing(&summary.dir)?;
            let usable = |bytes: &[u8], pin: &str| -> Result<Manifest, String> {
                let m = Manifest::parse_pinned(bytes, pin).map_err(|e| e.to_string())?;
                if m.chunk_size() != summary.geometry.chunk_size
                    || m.image_size() != summary.geometry.image_size
                {
                    return Err("it describes another chunk size or image size".into());
                }
                Ok(m)
            };
            let (manifest, verdict) = match summary.identity.strip_prefix("manifest:") {
                None => (None, ManifestCopy::NotPinned),
                Some(pin) => {
                    let copy = match store.manifest_bytes() {
                        Some(bytes) => usable(&bytes, pin),
                        None => Err("it is missing".to_string()),
                    };
                    match copy {
                        Ok(m) => (Some(m), ManifestCopy::Intact),
                        Err(damage) => match fresh(pin).and_then(|(bytes, from)| {
                            let m = usable(&bytes, pin).map_err(|e| format!("{from}: {e}"))?;
                            store.replace_manifest(&bytes).map_err(|e| e.to_string())?;
                            Ok((m, from))
                        }) {
                            Ok((m, from)) => (Some(m), ManifestCopy::Repaired { damage, from }),
                            Err(unrepaired) => (
                                None,
                                ManifestCopy::Damaged {
                                    path: store.manifest_path(),
                                    damage,
                                    unrepaired,
                                },
                            ),
                        },
                    }
                }
            };
            let mut check = StoreCheck {
                name: summary.name.clone(),
                manifest: verdict,
                checked: 0,
                unchecked: 0,
                corrupt: Vec::new(),
            };
            let unusable = matches!(check.manifest, ManifestCopy::Damaged { .. });
            for (i, record) in store.records()?.iter().enumerate() {
                let i = i as u64;
                if !record.present() {
                    continue;
                }
                if unusable {
                    check.unchecked += 1;
                    continue;
                }
                check.checked += 1;
                let ok = match store.get(i) {
                    Ok(Some((bytes, rec))) => {
                        let h = manifest
                            .as_ref()
                            .map_or(HashAlg::Sha256, Manifest::hash_alg)
                            .hash_chunk(&bytes);
                        rec.hash == h && manifest.as_ref().is_none_or(|m| m.hash(i) == Some(&h))
                    }
                    Ok(None) => true,
                    Err(_) => false,
                };
                if !ok {
                    check.corrupt.push(i);
                }
            }
            if !check.corrupt.is_empty() {
                store.drop_chunks(&check.corrupt)?;
            }
            out.push(check);
        }
        Ok(out)
    }

    /// Account for `bytes` just stored; when over `--cache-size`, evict least recently used
    /// chunks across all images until under it.
    pub fn note_stored(&self, bytes: u64) -> Result<(), CacheError> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let now = match *used {
            Some(u) => u.saturating_add(bytes),
            None => self.stores().iter().map(|s| s.present_bytes).sum(),
        };
        *used = Some(now);
        if now > limit {
            *used = Some(self.enforce_limit(limit)?);
        }
        Ok(())
    }

    /// Evict least recently used chunks until the cache holds at most `limit` bytes; returns
    /// the bytes left.
    pub fn enforce_limit(&self, limit: u64) -> Result<u64, CacheError> {
        std::fs::create_dir_all(&self.root).map_err(|source| CacheError::Io {
            path: self.root.display().to_string(),
            source,
        })?;
        let lock_path = self.root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| CacheError::Io {
                path: lock_path.display().to_string(),
                source,
            })?;
        store::flock(&lock, true, true).map_err(|source| CacheError::Io {
            path: lock_path.display().to_string(),
            source,
        })?;
        let mut stores = Vec::new();
        let mut chunks: Vec<(u64, usize, u64, u64)> = Vec::new();
        let mut total = 0u64;
        for summary in self.stores() {
            let Ok(store) = Store::open_existing(&summary.dir) else {
                continue;
            };
            // A pinned store (its data file read by the kernel directly) counts, but keeps its
            // chunks; the others stay unpinnable until their chunks are dropped.
            let unpinned = store.hold_unpinned()?;
            let pinned = unpinned.is_none();
            let g = store.geometry();
            for (i, r) in store.records()?.iter().enumerate() {
                if r.present() {
                    let len = g.chunk_len(i as u64) as u64;
                    total += len;
                    if !pinned {
                        chunks.push((r.last_use, stores.len(), i as u64, len));
                    }
                }
            }
            stores.push((store, unpinned));
        }
        chunks.sort_unstable();
        let mut order = lru::LruCache::unbounded();
        for (_, store, chunk, len) in chunks {
            order.put((store, chunk), len);
        }
        let mut victims: Vec<Vec<u64>> = vec![Vec::new(); stores.len()];
        while total > limit {
            let Some(((store, chunk), len)) = order.pop_lru() else {
                break;
            };
            victims[store].push(chunk);
            total -= len;
        }
        for ((store, _unpinned), list) in stores.into_iter().zip(&victims) {
            if !list.is_empty() {
                tracing::debug!(
                    "evicting {} chunks from {}",
                    list.len(),
                    store.dir().display()
                );
                store.drop_chunks(list)?;
                // Where the system cannot punch holes, the space comes back by a rewrite.
                let dir = store.dir().to_path_buf();
                if let Err(err) = store.reclaim() {
                    tracing::warn!("could not give back the space of {}: {err}", dir.display());
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    fn put(store: &Store, i: u64, byte: u8) {
        let c = vec![byte; store.geometry().chunk_len(i)];
        store.put(&[(i, &c, sha256(&c))]).unwrap();
    }

    /// Stores "a" and "b" of `chunks` 4 KiB chunks, the first two of each cached, b's later.
    fn two_images(cache: &Cache, chunks: u64) -> (Store, Store) {
        let g = Geometry {
            chunk_size: 4096,
            image_size: chunks * 4096,
        };
        let a = cache.open_store("a", "lun:a", g, None).unwrap();
        let b = cache.open_store("b", "lun:b", g, None).unwrap();
        put(&a, 0, 1);
        put(&a, 1, 2);
        std::thread::sleep(std::time::Duration::from_millis(2));
        put(&b, 0, 3);
        put(&b, 1, 4);
        (a, b)
    }

    #[test]
    fn lru_eviction_spans_images_and_spares_recent_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), Some(3 * 4096));
        let (a, b) = two_images(&cache, 4);
        cache.note_stored(4 * 4096).unwrap();
        let left: u64 = cache.stores().iter().map(|s| s.present_bytes).sum();
        assert_eq!(left, 3 * 4096);
        assert!(a.get(0).unwrap().is_none(), "oldest chunk goes first");
        assert!(a.get(1).unwrap().is_some());
        assert!(b.get(1).unwrap().is_some());
    }

    /// Evicted chunks' space goes back to the file system: by punched holes, or (where the
    /// system has none, as with ISOMOUNT_FORCE_PORTABLE=1) by rewriting the store.
    #[test]
    fn eviction_gives_the_space_back() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), Some(4 * 65536));
        let g = Geometry {
            chunk_size: 65536,
            image_size: 64 * 65536,
        };
        let store = cache.open_store("big", "lun:big", g, None).unwrap();
        let chunks: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 65536]).collect();
        let all: Vec<(u64, &[u8], _)> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, c.as_slice(), sha256(c)))
            .collect();
        store.put(&all).unwrap();
        drop(store);
        assert_eq!(cache.enforce_limit(4 * 65536).unwrap(), 4 * 65536);
        let data = cache.store_dir("lun:big").join("data");
        let allocated = std::fs::metadata(&data).unwrap().blocks() * 512;
        assert!(allocated <= 8 * 65536, "{allocated} bytes still allocated");
    }

    #[test]
    fn verify_names_and_drops_corrupt_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), None);
        let g = Geometry {
            chunk_size: 4096,
            image_size: 2 * 4096,
        };
        let s = cache.open_store("img", "lun:x", g, None).unwrap();
        put(&s, 0, 1);
        put(&s, 1, 2);
        let data = cache.store_dir("lun:x").join("data");
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[4096 + 5] ^= 0x40;
        std::fs::write(&data, &bytes).unwrap();
        // The damage comes with a matching CRC32C (what a cache hit checks): verify re-hashes with
        // sha256 and is not fooled.
        let index = cache.store_dir("lun:x").join("index");
        let mut raw = std::fs::read(&index).unwrap();
        let at = (store::INDEX_HEADER_LEN + store::RECORD_LEN) as usize + 32;
        raw[at..at + 4].copy_from_slice(&crc32c::crc32c(&bytes[4096..]).to_be_bytes());
        std::fs::write(&index, &raw).unwrap();
        let none = |_: &str| Err("no source".to_string());
        let checks = cache.verify(&none).unwrap();
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].name, "img");
        assert_eq!(checks[0].checked, 2);
        assert_eq!(checks[0].corrupt, vec![1]);
        assert!(s.get(1).unwrap().is_none());
        let again = cache.verify(&none).unwrap();
        assert_eq!((again[0].checked, again[0].corrupt.len()), (1, 0));
    }

    #[test]
    fn lru_eviction_passes_a_pinned_store_by() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), Some(2 * 4096));
        let (a, b) = two_images(&cache, 2);
        let pin = a.pin().unwrap();
        assert!(a.pinned().unwrap() && !b.pinned().unwrap());
        cache.note_stored(4 * 4096).unwrap();
        assert!(a.get(0).unwrap().is_some() && a.get(1).unwrap().is_some());
        assert!(b.get(0).unwrap().is_none() && b.get(1).unwrap().is_none());
        drop(pin);
        assert!(!a.pinned().unwrap());
        cache.note_stored(0).unwrap();
        let left: u64 = cache.stores().iter().map(|s| s.present_bytes).sum();
        assert_eq!(left, 2 * 4096);
    }

    #[test]
    fn evict_refuses_a_store_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), None);
        let g = Geometry {
            chunk_size: 4096,
            image_size: 4096,
        };
        let s = cache.open_store("img", "lun:y", g, None).unwrap();
        assert!(matches!(cache.evict("img"), Err(CacheError::Busy(_))));
        drop(s);
        assert_eq!(cache.evict("img").unwrap(), 1);
        assert!(matches!(cache.evict("img"), Err(CacheError::NotCached(_))));
    }
}
