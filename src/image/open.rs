//! Opening an image: from a catalog name or an iscsi:// URL to an [`ImageSpec`] (manifest,
//! sources, cache identity) and then an [`Image`] with its cache store ([`named`]); or an image
//! read from one given source ([`one_source`]). Takes a [`Config`], no command-line types.

use std::sync::Arc;

use anyhow::Context;

use super::sources::CONNECT_TIMEOUT;
use super::{Image, ImageSpec};
use crate::cache::Cache;
use crate::catalog::{Catalog, Entry, ManifestRef};
use crate::config::Config;
use crate::manifest::{Manifest, DEFAULT_CHUNK_SIZE};
use crate::signature::Freshness;
use crate::source::http::WebClient;
use crate::source::iscsi::{self, IscsiSource};
use crate::source::{BlockSource, SourceIdentity};

use super::identity::{lun_identity, offline_lun_identity, serial_of};

/// Bytes from the start of an image that a mirror reads while connecting, in the round trip of
/// its probe: an ISO's volume descriptors (from 32 KiB) and, on images as xorriso makes them, its
/// path tables and root directory, which a mount reads before it is usable; `cat` and `fetch`
/// start there too. The image core still asks for them and verifies them like any fetch. Not
/// read when the cache holds them already.
pub const FIRST_READ: u32 = 256 << 10;

/// Open `name_or_url`: a catalog name (with its pinned manifest) or an iscsi:// URL (no
/// manifest: chunk hashes are recorded on first fetch). Unless `--offline`, connects to the
/// first answering portal; when none answers, warns once and serves what is cached.
pub async fn named(config: &Config, name_or_url: &str) -> anyhow::Result<Arc<Image>> {
    let image = named_unconnected(config, name_or_url).await?;
    image.connect_now().await;
    Ok(image)
}

/// [`named`] without waiting for a source: the first one starts connecting in the background,
/// and the caller calls [`Image::connect_now`] before it needs one (which also warns, once,
/// when none answers). For a reader of a fully cached image, which needs none to start.
pub async fn named_unconnected(config: &Config, name_or_url: &str) -> anyhow::Result<Arc<Image>> {
    let cache = Arc::new(config.cache());
    let read_timeout = config.read_timeout;
    if name_or_url.starts_with("iscsi://") {
        return open_url(config.offline, read_timeout, cache, name_or_url).await;
    }
    let (catalogs, pubkeys) = (config.catalogs.clone(), config.pubkeys.clone());
    let root = cache.root().to_path_buf();
    let offline = config.offline;
    let catalog = tokio::task::spawn_blocking(move || {
        Catalog::load(&catalogs, &pubkeys, Some(&root), offline)
    })
    .await
    .context("while loading catalogs")??;
    let entry = catalog.find(name_or_url)?.clone();
    // An expired signed catalog, in its grace period, still names what is cached; nothing more.
    let offline = offline || matches!(entry.freshness, Freshness::InGrace { .. });
    open_entry(offline, read_timeout, cache, entry).await
}

/// Read, check against its pin, and keep the manifest of an entry. A copy kept with the cache
/// store (or from an earlier https fetch) serves when the original is out of reach.
fn load_manifest(
    cache: &Cache,
    entry: &Entry,
    mref: &ManifestRef,
    offline: bool,
) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let pinned = |bytes: Vec<u8>| Manifest::parse_pinned(&bytes, &mref.sha256).map(|m| (m, bytes));
    let store_copy = cache
        .store_dir(&format!("manifest:{}", mref.sha256))
        .join("manifest");
    if let Some(found) = std::fs::read(&store_copy).ok().and_then(|b| pinned(b).ok()) {
        return Ok(found);
    }
    let bytes = mref
        .read(&cache.kept_manifest(&mref.sha256), offline)
        .with_context(|| format!("{}: manifest of `{}`", entry.origin, entry.name))?;
    pinned(bytes).with_context(|| {
        format!(
            "{}: manifest of `{}` ({}) refused",
            entry.origin,
            entry.name,
            mref.describe()
        )
    })
}

async fn open_entry(
    offline: bool,
    read_timeout: std::time::Duration,
    cache: Arc<Cache>,
    entry: Entry,
) -> anyhow::Result<Arc<Image>> {
    let manifest = match &entry.manifest {
        Some(mref) => {
            let (c, e, m) = (cache.clone(), entry.clone(), mref.clone());
            let (manifest, bytes) =
                tokio::task::spawn_blocking(move || load_manifest(&c, &e, &m, offline)).await??;
            manifest.check_size(entry.size).with_context(|| {
                format!(
                    "{}: manifest of `{}` refused (catalog size)",
                    entry.origin, entry.name
                )
            })?;
            Some((manifest, bytes, mref.sha256.clone()))
        }
        None => None,
    };
    // A store that holds the image's first bytes already needs no mirror to bring them while
    // connecting: a mount or `cat` of a cached image would pay 256 KiB on the wire for nothing
    // (and wait for it on a slow link before the mount is usable).
    let first_read = match &manifest {
        Some((_, _, pin)) => {
            let (c, identity) = (cache.clone(), format!("manifest:{pin}"));
            let held = tokio::task::spawn_blocking(move || {
                c.holds_start(&identity, u64::from(FIRST_READ))
            });
            (!held.await.unwrap_or(false)).then_some(FIRST_READ)
        }
        None => Some(FIRST_READ),
    };
    let mut sources: Vec<Arc<dyn BlockSource>> = Vec::new();
    let mut facts = Vec::new();
    if let Some(iscsi) = &entry.iscsi {
        let alone = iscsi.portals.len() == 1 && entry.urls.is_empty();
        sources.extend(iscsi.portals.iter().map(|p| {
            let source = IscsiSource::new(
                p,
                &iscsi.target,
                iscsi.lun,
                iscsi.chap.clone(),
                iscsi.digest,
            )
            .bounding_reads(read_timeout);
            let source = match first_read {
                Some(bytes) => source.reading_first(bytes),
                None => source,
            };
            let source = if alone { source } else { source.among_others() };
            Arc::new(source) as Arc<dyn BlockSource>
        }));
        facts.push(("target".to_string(), iscsi.target.clone()));
        facts.push(("lun".to_string(), iscsi.lun.to_string()));
    }
    if !entry.urls.is_empty() {
        let web = WebClient::from_env().context("while setting up web mirrors")?;
        for url in &entry.urls {
            let source = web
                .source(url, entry.size)
                .with_context(|| format!("web mirror of `{}`", entry.name))?
                // A web source's open is itself a ranged GET (it learns the file's size and
                // validators from it): one byte is the least it can ask for.
                .reading_first(first_read.unwrap_or(1));
            sources.push(Arc::new(source));
        }
    }
    if let Some(d) = &entry.description {
        facts.push(("description".into(), d.clone()));
    }
    let spec = match manifest {
        Some((manifest, bytes, pin)) => ImageSpec {
            name: entry.name.clone(),
            size: entry.size,
            chunk_size: manifest.chunk_size(),
            manifest: Some(manifest),
            manifest_bytes: Some(bytes),
            identity: format!("manifest:{pin}"),
            sources,
            offline,
            read_timeout,
            facts,
            expect_serial: None,
        },
        None => {
            // The catalog gives web mirrors only with a manifest: this image has a LUN.
            let (target, lun) = match &entry.iscsi {
                Some(iscsi) => (iscsi.target.as_str(), iscsi.lun),
                None => anyhow::bail!("`{}` has neither a manifest nor portals", entry.name),
            };
            let identity = if offline {
                offline_lun_identity(&cache, target, lun, Some(entry.size))
            } else {
                match probe(&sources).await {
                    Some(id) => Some(lun_identity(target, lun, &id)),
                    None => offline_lun_identity(&cache, target, lun, Some(entry.size)),
                }
            };
            let identity =
                identity.unwrap_or_else(|| format!("lun:{target} {lun} {} ? ?", entry.size));
            ImageSpec {
                name: entry.name.clone(),
                size: entry.size,
                chunk_size: DEFAULT_CHUNK_SIZE,
                manifest: None,
                manifest_bytes: None,
                expect_serial: serial_of(&identity),
                identity,
                sources,
                offline,
                read_timeout,
                facts,
            }
        }
    };
    finish(spec, cache).await
}

/// The identity of the first source that answers.
async fn probe(sources: &[Arc<dyn BlockSource>]) -> Option<SourceIdentity> {
    for source in sources {
        match tokio::time::timeout(CONNECT_TIMEOUT, source.open()).await {
            Ok(Ok(id)) => return Some(id),
            Ok(Err(e)) => tracing::debug!("{}: {e}", source.describe()),
            Err(_) => tracing::debug!("{}: connect timed out", source.describe()),
        }
    }
    None
}

async fn finish(spec: ImageSpec, cache: Arc<Cache>) -> anyhow::Result<Arc<Image>> {
    let offline = spec.offline;
    // The first mirror starts connecting (and reading the image's first bytes) while the cache
    // store is opened or created (which syncs a few files): its round trips overlap that work.
    // `connect_now` then finds it connected, or waits for it, or tries it again and says why.
    if let Some(first) = spec.sources.first().filter(|_| !offline).cloned() {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, first.open()).await;
        });
    }
    tokio::task::spawn_blocking(move || Image::new(spec, Some(cache)))
        .await
        .context("while opening the cache")
}

async fn open_url(
    offline: bool,
    read_timeout: std::time::Duration,
    cache: Arc<Cache>,
    url: &str,
) -> anyhow::Result<Arc<Image>> {
    let parsed = iscsi::parse_url(url)?;
    let label = iscsi::url_label(&parsed);
    let source = IscsiSource::from_url(&parsed)
        .reading_first(FIRST_READ)
        .bounding_reads(read_timeout);
    let identity = if offline {
        offline_lun_identity(&cache, &parsed.target, parsed.lun, None)
            .with_context(|| format!("{label} is not in the cache (offline)"))?
    } else {
        // The LUN's identity keys the cache, so it is needed before the store is chosen.
        let id = source
            .open()
            .await
            .with_context(|| format!("while connecting to {label}"))?;
        lun_identity(&parsed.target, parsed.lun, &id)
    };
    let size: u64 = identity
        .split(' ')
        .nth(2)
        .and_then(|s| s.parse().ok())
        .context("damaged cache label")?;
    let spec = ImageSpec {
        name: label,
        size,
        chunk_size: DEFAULT_CHUNK_SIZE,
        manifest: None,
        manifest_bytes: None,
        expect_serial: serial_of(&identity),
        identity,
        sources: vec![Arc::new(source)],
        offline,
        read_timeout,
        facts: vec![
            ("target".into(), parsed.target.clone()),
            ("lun".into(), parsed.lun.to_string()),
        ],
    };
    finish(spec, cache).await
}

/// An image read from one source with no manifest and no cache (a local file for the mount's
/// `--local-file` test hook, the demo's LUN): chunk hashes are recorded on first read, as for a
/// LUN reached by URL.
pub async fn one_source(
    name: &str,
    source: Arc<dyn BlockSource>,
    read_timeout: std::time::Duration,
) -> anyhow::Result<Arc<Image>> {
    let id = source
        .open()
        .await
        .with_context(|| format!("while opening {}", source.describe()))?;
    let spec = ImageSpec {
        name: name.to_string(),
        size: id.size,
        chunk_size: DEFAULT_CHUNK_SIZE,
        manifest: None,
        manifest_bytes: None,
        identity: format!("{}:{}", source.kind(), source.describe()),
        sources: vec![source],
        offline: false,
        read_timeout,
        facts: Vec::new(),
        expect_serial: None,
    };
    Ok(Image::new(spec, None))
}
