//! `isomount publish --root DIR --portal HOST:PORT… -o CATALOG`: a manifest and a catalog entry
//! for every image under a tree, hashing only the images that are new or changed since the last
//! run. Names and target IQNs come from the paths (`crate::tree`, shared with `serve --root`).
//!
//! Beside the catalog it writes `NAME.manifest` for each image (relative references, so the
//! catalog's folder can be served as it is by any web server) and a state file,
//! `CATALOG.publish-state`, recording what each image was when it was hashed:
//! ```text
//! # TOML; deleting it only costs hashing everything again.
//! version = 1
//! [[image]]
//! path = "netbsd/5.0/i386.iso"   # relative to the root
//! name = "netbsd-5.0-i386"
//! chunk_size = 65536
//! hash = "sha256"                # the chunk hash algorithm (absent: sha256)
//! manifest_sha256 = "…"          # the pin of NAME.manifest
//! [image.stat]                   # absent when the file was modified too recently to trust
//! size = 367001600               #   its timestamp (it is hashed again next time)
//! modified_ns = 1767225600123456789
//! inode = 1234
//! device = 2049
//! ```
//! An image is skipped when its size, mtime, inode and device, the chunk size, the hash algorithm
//! and its name are those recorded and its manifest still hashes to the recorded pin; `--rehash` hashes everything.
//! The catalog is all-or-nothing: it is written (atomically, entries in path order, the same
//! bytes for the same tree) only when every image was hashed; manifests of images that are gone
//! are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::args::{mirrors, PublishArgs};
use super::signed::write_catalog;
use crate::catalog::{self, PublishedEntry};
use crate::config::Config;
use crate::manifest::{self, HashAlg, Manifest};
use crate::tree::{self, FileStamp, ImagePatterns, TreeImage};

/// `--url` with `--root`: the URL of the tree's root, as a base that paths are appended to.
fn tree_url(url: &str) -> Result<reqwest::Url, String> {
    catalog::check_mirror_url(url)?;
    let mut base = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    base.set_query(None);
    base.set_fragment(None);
    Ok(base)
}

/// The URL of the image at `relative` under the tree whose root is at `root`: each path component
/// appended, percent-encoded.
fn image_url(root: &reqwest::Url, relative: &Path) -> String {
    let mut url = root.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
        segments.extend(relative.iter().map(|c| c.to_string_lossy()));
    }
    url.to_string()
}

/// A file modified less than this long before it was hashed may change again within the same
/// timestamp tick without its mtime moving: it is hashed again on the next run.
const SETTLE: Duration = Duration::from_secs(2);

const STATE_VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    version: u32,
    #[serde(default)]
    image: Vec<Recorded>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recorded {
    path: PathBuf,
    name: String,
    chunk_size: u32,
    #[serde(default, with = "hash_alg_name")]
    hash: HashAlg,
    manifest_sha256: String,
    stat: Option<Stat>,
}

/// [`HashAlg`] in the state file, by name.
mod hash_alg_name {
    use crate::manifest::HashAlg;

    pub fn serialize<S: serde::Serializer>(alg: &HashAlg, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(alg.name())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashAlg, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The part of a [`FileStamp`] that tells one version of an image from another, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stat {
    size: u64,
    modified_ns: i64,
    inode: u64,
    device: u64,
}

impl Stat {
    /// `None` when the file was modified less than [`SETTLE`] before `now` (or its time is
    /// past 2262): its mtime cannot be trusted to move with the next change.
    fn settled(stamp: &FileStamp, now: SystemTime) -> Option<Stat> {
        let modified_ns = i64::try_from(stamp.modified_ns).ok()?;
        let now_ns = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .and_then(|d| i128::try_from(d.as_nanos()).ok())?;
        (now_ns - stamp.modified_ns >= SETTLE.as_nanos() as i128).then_some(Stat {
            size: stamp.size,
            modified_ns,
            inode: stamp.inode,
            device: stamp.device,
        })
    }

    fn describes(&self, stamp: &FileStamp) -> bool {
        self.size == stamp.size
            && i128::from(self.modified_ns) == stamp.modified_ns
            && self.inode == stamp.inode
            && self.device == stamp.device
    }
}

/// What happens to one image in this run.
enum Plan {
    Unchanged(Recorded, u64),
    Hash(Option<String>),
}

/// The outcome for one image that was hashed.
struct Hashed {
    size: u64,
    recorded: Recorded,
}

pub fn run(config: &Config, args: PublishArgs) -> anyhow::Result<ExitCode> {
    let (Some(root), Some(out)) = (&args.tree.root, &args.output) else {
        anyhow::bail!("publish --root needs -o CATALOG");
    };
    let signer = args.sign.signer()?;
    let (portals, url_roots) = mirrors(&args)?;
    let url_roots = url_roots
        .iter()
        .map(|u| tree_url(u).map_err(|e| anyhow::anyhow!("--url: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let say = |line: String| {
        if !config.quiet {
            eprintln!("{line}");
        }
    };
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("while creating {}", dir.display()))?;
    let _lock = lock_dir(&dir)?;
    let state_path = state_path(out);
    let old = load_state(&state_path)?;
    let patterns = ImagePatterns::new(&args.tree.patterns)?;
    let tree = tree::scan(root, &patterns, &args.tree.iqn_prefix)?;
    for skipped in &tree.skipped {
        let path = skipped.path.strip_prefix(root).unwrap_or(&skipped.path);
        say(format!("skipped {}: {}", path.display(), skipped.why));
    }
    let recorded: BTreeMap<&Path, &Recorded> =
        old.image.iter().map(|r| (r.path.as_path(), r)).collect();

    // Decide, image by image, what to hash.
    let mut images: Vec<(TreeImage, Plan)> = Vec::new();
    let mut empty = 0usize;
    for image in tree.images {
        if image.stamp.size == 0 {
            say(format!("skipped {}: empty", image.relative.display()));
            empty += 1;
            continue;
        }
        let plan = match recorded.get(image.relative.as_path()) {
            _ if args.tree.rehash => Plan::Hash(None),
            None => Plan::Hash(None),
            Some(r) => match unchanged(r, &image, args.chunk_size, args.hash, &dir) {
                Ok(()) => Plan::Unchanged((*r).clone(), image.stamp.size),
                Err(why) => Plan::Hash(Some(why)),
            },
        };
        images.push((image, plan));
    }

    // Hash what needs it, every core busy, one progress bar for the whole tree.
    let total: u64 = images
        .iter()
        .filter_map(|(image, plan)| match plan {
            Plan::Hash(_) => Some(image.stamp.size),
            Plan::Unchanged(..) => None,
        })
        .sum();
    let bar = crate::commands::progress_bar(total, "hashing ", !config.quiet && total > 0);
    let failures = Mutex::new(Vec::new());
    let hashed: Vec<Option<Hashed>> = images
        .par_iter()
        .map(|(image, plan)| {
            let Plan::Hash(why) = plan else {
                return None;
            };
            match hash_image(image, args.chunk_size, args.hash, &dir, &|n| bar.inc(n)) {
                Ok(done) => {
                    let why = why.as_deref().map_or(String::new(), |w| format!(" ({w})"));
                    bar.suspend(|| {
                        say(format!(
                            "hashed {} as {}{why}",
                            image.relative.display(),
                            image.names.name
                        ))
                    });
                    Some(done)
                }
                Err(e) => {
                    let line = format!(
                        "{}: {}",
                        image.relative.display(),
                        crate::commands::one_line(&e)
                    );
                    failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line);
                    None
                }
            }
        })
        .collect();
    bar.finish_and_clear();

    let mut state = State {
        version: STATE_VERSION,
        image: Vec::new(),
    };
    let mut entries = Vec::new();
    let (mut count_hashed, mut count_unchanged) = (0usize, 0usize);
    for ((image, plan), hashed) in images.into_iter().zip(hashed) {
        let (recorded, size) = match (plan, hashed) {
            (Plan::Unchanged(recorded, size), _) => {
                say(format!(
                    "skipped {}: unchanged since the last run",
                    image.relative.display()
                ));
                count_unchanged += 1;
                (recorded, size)
            }
            (Plan::Hash(_), Some(done)) => {
                count_hashed += 1;
                (done.recorded, done.size)
            }
            (Plan::Hash(_), None) => continue,
        };
        entries.push(PublishedEntry {
            name: image.names.name.clone(),
            description: None,
            target: (!portals.is_empty()).then(|| image.names.target.clone()),
            lun: args.lun.unwrap_or(0),
            portals: portals.clone(),
            urls: url_roots
                .iter()
                .map(|root| image_url(root, &image.relative))
                .collect(),
            size,
            manifest: manifest_file(&image.names.name),
            manifest_sha256: recorded.manifest_sha256.clone(),
        });
        state.image.push(recorded);
    }
    // Images that failed keep their old record, so their manifests are not removed.
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if !failures.is_empty() {
        let kept: BTreeSet<PathBuf> = state.image.iter().map(|r| r.path.clone()).collect();
        state.image.extend(
            old.image
                .iter()
                .filter(|r| !kept.contains(&r.path))
                .cloned(),
        );
        save_state(&state_path, &mut state)?;
        anyhow::bail!(
            "{} image(s) could not be published, so {} was left as it was: {}",
            failures.len(),
            out.display(),
            failures.join("; ")
        );
    }

    let header = "Written by `isomount publish --root`: edits are overwritten by the next run.";
    let text = catalog::render(out, header, &entries)?;
    let unchanged = std::fs::read(out).ok().as_deref() == Some(text.as_bytes());
    write_catalog(signer.as_ref(), out, text.as_bytes(), unchanged)?;
    let mut removed = 0usize;
    let current: BTreeSet<&str> = state.image.iter().map(|r| r.name.as_str()).collect();
    for gone in old
        .image
        .iter()
        .filter(|r| !current.contains(r.name.as_str()))
    {
        let manifest = dir.join(manifest_file(&gone.name));
        match std::fs::remove_file(&manifest) {
            Ok(()) => {
                removed += 1;
                say(format!(
                    "removed {} ({} is gone)",
                    manifest.display(),
                    gone.path.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("could not remove {}: {e}", manifest.display()),
        }
    }
    save_state(&state_path, &mut state)?;
    eprintln!(
        "published {} image(s) in {}: {count_hashed} hashed, {count_unchanged} unchanged, \
         {removed} removed, {} skipped",
        entries.len(),
        out.display(),
        tree.skipped.len() + empty
    );
    Ok(ExitCode::SUCCESS)
}

/// `NAME.manifest`, beside the catalog.
fn manifest_file(name: &str) -> String {
    format!("{name}.manifest")
}

/// `CATALOG.publish-state`.
fn state_path(catalog: &Path) -> PathBuf {
    let mut name = catalog.file_name().unwrap_or_default().to_os_string();
    name.push(".publish-state");
    catalog.with_file_name(name)
}

/// Why `recorded` no longer describes `image`, if it does not.
fn unchanged(
    recorded: &Recorded,
    image: &TreeImage,
    chunk_size: u32,
    hash: HashAlg,
    dir: &Path,
) -> Result<(), String> {
    match recorded.stat {
        None => return Err("modified just before the last run".into()),
        Some(stat) if !stat.describes(&image.stamp) => return Err("changed".into()),
        Some(_) => {}
    }
    if recorded.name != image.names.name {
        return Err("its name changed".into());
    }
    if recorded.chunk_size != chunk_size {
        return Err("the chunk size changed".into());
    }
    if recorded.hash != hash {
        return Err("the hash algorithm changed".into());
    }
    let manifest = std::fs::read(dir.join(manifest_file(&image.names.name)))
        .map_err(|_| "its manifest is missing".to_string())?;
    if hex::encode(manifest::sha256(&manifest)) != recorded.manifest_sha256 {
        return Err("its manifest was changed".into());
    }
    Ok(())
}

/// Hash one image into its manifest beside the catalog. The file must be the same before and
/// after (size, mtime, inode), or it was changed while it was read.
fn hash_image(
    image: &TreeImage,
    chunk_size: u32,
    hash: HashAlg,
    dir: &Path,
    hashed: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Hashed> {
    let file = std::fs::File::open(&image.path).context("while opening it")?;
    let before = FileStamp::of(&file.metadata()?);
    let manifest = Manifest::hash_file(&file, before.size, chunk_size, hash, hashed)
        .context("while hashing it")?;
    let after = FileStamp::of(&std::fs::metadata(&image.path)?);
    if !after.same_version(&before) {
        anyhow::bail!("it changed while it was being hashed; publish again once it is complete");
    }
    let manifest_path = dir.join(manifest_file(&image.names.name));
    catalog::write_atomic(&manifest_path, &manifest.to_bytes())
        .with_context(|| format!("while writing {}", manifest_path.display()))?;
    Ok(Hashed {
        size: before.size,
        recorded: Recorded {
            path: image.relative.clone(),
            name: image.names.name.clone(),
            chunk_size,
            hash,
            manifest_sha256: manifest.pin(),
            stat: Stat::settled(&before, SystemTime::now()),
        },
    })
}

fn load_state(path: &Path) -> anyhow::Result<State> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(e).with_context(|| format!("while reading {}", path.display())),
    };
    match toml::from_str::<State>(&text) {
        Ok(state) if state.version == STATE_VERSION => Ok(state),
        Ok(state) => {
            tracing::warn!(
                "{}: version {} is not this isomount's; hashing everything again",
                path.display(),
                state.version
            );
            Ok(State::default())
        }
        Err(e) => {
            tracing::warn!(
                "{}: {}; hashing everything again",
                path.display(),
                e.message().trim()
            );
            Ok(State::default())
        }
    }
}

fn save_state(path: &Path, state: &mut State) -> anyhow::Result<()> {
    state.image.sort_by(|a, b| a.path.cmp(&b.path));
    let text = format!(
        "# Written by `isomount publish --root`: what each image was when it was hashed, so an\n\
         # unchanged image is not hashed again. Deleting it only costs hashing everything again.\n\n{}",
        toml::to_string(state).context("while writing the publish state")?
    );
    catalog::write_atomic(path, text.as_bytes())
        .with_context(|| format!("while writing {}", path.display()))
}

/// One `publish --root` at a time per catalog folder.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let handle =
        std::fs::File::open(dir).with_context(|| format!("while opening {}", dir.display()))?;
    if !crate::cache::store::flock(&handle, true, false)? {
        anyhow::bail!(
            "another `isomount publish` is writing into {}; try again when it is done",
            dir.display()
        );
    }
    Ok(handle)
}
