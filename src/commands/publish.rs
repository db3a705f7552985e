//! `isomount publish`: hash an image into a manifest and add or replace its catalog entry; with
//! `--root`, a whole tree (see `publish_tree`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;

use crate::catalog::{self, PublishedEntry};
use crate::config::Config;
use crate::iscsi::lun::{list_luns, LunSummary};
use crate::iscsi::{ConnectOptions, IscsiError};
use crate::manifest::{HashAlg, Manifest, DEFAULT_CHUNK_SIZE};
use crate::signature::{self, SigningKey};

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The image file to publish
    #[arg(required_unless_present = "root", conflicts_with = "root")]
    pub image: Option<std::path::PathBuf>,
    /// Name users type
    #[arg(long, required_unless_present = "root", conflicts_with = "root")]
    pub name: Option<String>,
    /// Target IQN serving the image on the portals
    #[arg(long, conflicts_with = "root")]
    pub target: Option<String>,
    /// LUN number on the target [default: the LUN of the image's size, asked of the first
    /// portal that answers (REPORT LUNS); 0, the LUN `isomount serve` exports, when none does]
    #[arg(long)]
    pub lun: Option<u64>,
    /// iSCSI portal HOST:PORT (repeatable; mirrors in order)
    #[arg(long = "portal", value_name = "HOST:PORT")]
    pub portals: Vec<String>,
    /// Web mirror: the image file's http(s) URL (repeatable; after the portals, in order). With
    /// --root, the URL of the tree's root: each image is at URL/PATH
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Catalog file to add the entry to
    #[arg(short = 'o', long = "output")]
    pub output: Option<std::path::PathBuf>,
    /// Where to write the manifest (default: NAME.manifest beside the catalog, else beside IMAGE)
    #[arg(long, conflicts_with = "root")]
    pub manifest: Option<PathBuf>,
    /// One-line description for the catalog
    #[arg(long, conflicts_with = "root")]
    pub description: Option<String>,
    /// Chunk size in bytes (a power of two, 4 KiB to 64 MiB)
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// Chunk hash algorithm of the manifest: sha256 (version 1 manifests, which every isomount
    /// reads) or blake3 (version 2: about a quarter of the CPU time to verify, read by isomount
    /// from this version on). The catalog pins the manifest by sha256 either way
    #[arg(long = "hash", value_name = "ALG", default_value_t = HashAlg::Sha256)]
    pub hash: HashAlg,
    #[command(flatten)]
    pub tree: super::publish_tree::TreeArgs,
    #[command(flatten)]
    pub sign: SignArgs,
}

/// The options that sign the catalog publish writes.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// Sign the catalog with this minisign secret key (from `isomount keygen`): writes
    /// CATALOG.minisig, carrying the catalog's version and expiry
    #[arg(long = "sign", value_name = "KEY", requires = "output")]
    pub key: Option<PathBuf>,
    /// With --sign: how long the signature holds, a duration (30d, 12h) or an RFC 3339 time
    #[arg(long, value_name = "WHEN", default_value = signature::DEFAULT_VALIDITY)]
    pub expires: String,
    /// With --sign: the secret key's passphrase is this file's first line (else
    /// ISOMOUNT_PASSPHRASE)
    #[arg(long, value_name = "FILE", requires = "key")]
    pub passphrase_file: Option<PathBuf>,
}

/// A catalog signer, made before any hashing starts so that a bad key or passphrase fails first.
pub struct Signer {
    key: SigningKey,
    expires: std::time::SystemTime,
}

impl SignArgs {
    pub fn signer(&self) -> anyhow::Result<Option<Signer>> {
        let Some(path) = &self.key else {
            return Ok(None);
        };
        let expires = signature::parse_expiry(&self.expires, std::time::SystemTime::now())
            .map_err(anyhow::Error::msg)?;
        let passphrase = signature::passphrase(self.passphrase_file.as_deref())?;
        let key = SigningKey::load(path, passphrase)?;
        Ok(Some(Signer { key, expires }))
    }
}

/// Write the catalog at `path` (unless `unchanged`), and its signature when `signer` is given.
/// Unsigned, a signature left beside a changed catalog no longer matches it: that is said.
pub fn write_catalog(
    signer: Option<&Signer>,
    path: &Path,
    text: &[u8],
    unchanged: bool,
) -> anyhow::Result<()> {
    if let Some(signer) = signer {
        return signer.write(path, text, unchanged);
    }
    if unchanged {
        return Ok(());
    }
    catalog::write_atomic(path, text)
        .with_context(|| format!("while writing {}", path.display()))?;
    let stale = signature::signature_path(path);
    if stale.exists() {
        tracing::warn!(
            "{} no longer matches {}: sign it again with --sign KEY, or remove it",
            stale.display(),
            path.display()
        );
    }
    Ok(())
}

impl Signer {
    /// Write the catalog at `path` (unless `unchanged`) and its signature, one rename after the
    /// other. The version grows past that of the signature it replaces.
    fn write(&self, path: &Path, text: &[u8], unchanged: bool) -> anyhow::Result<()> {
        let sig_path = signature::signature_path(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let previous = std::fs::read_to_string(&sig_path)
            .ok()
            .and_then(|t| signature::previous_version(&t));
        let now = std::time::SystemTime::now();
        let claim = signature::next_claim(&name, previous, now, self.expires);
        let sig = self.key.sign(text, &claim)?;
        let files: Vec<(&Path, &[u8])> = if unchanged {
            vec![(&sig_path, sig.as_bytes())]
        } else {
            vec![(path, text), (&sig_path, sig.as_bytes())]
        };
        catalog::write_atomic_all(&files)
            .with_context(|| format!("while writing {}", sig_path.display()))?;
        eprintln!(
            "signed {} with key {}: version {}, expires {}",
            path.display(),
            self.key.id(),
            claim.version,
            humantime::format_rfc3339_seconds(claim.expires)
        );
        Ok(())
    }
}

pub fn run(config: &Config, args: PublishArgs) -> anyhow::Result<ExitCode> {
    if args.tree.root.is_some() {
        return super::publish_tree::run(config, args);
    }
    let (Some(image), Some(name)) = (&args.image, &args.name) else {
        anyhow::bail!("publish needs IMAGE and --name, or --root DIR");
    };
    let (portals, urls) = mirrors(&args)?;
    let target = match (&args.target, portals.is_empty()) {
        (Some(_), true) => anyhow::bail!("--target is for --portal (iSCSI mirrors); none given"),
        (None, false) => anyhow::bail!("--portal needs --target (the IQN serving the image)"),
        (target, _) => target.clone(),
    };
    for url in &urls {
        catalog::check_mirror_url(url).map_err(|e| anyhow::anyhow!("--url: {e}"))?;
    }
    let signer = args.sign.signer()?;
    let file =
        std::fs::File::open(image).with_context(|| format!("while opening {}", image.display()))?;
    let manifest = Manifest::build(
        std::io::BufReader::with_capacity(1 << 20, file),
        args.chunk_size,
        args.hash,
    )
    .with_context(|| format!("while hashing {}", image.display()))?;
    let bytes = manifest.to_bytes();
    let pin = manifest.pin();
    let manifest_path = args.manifest.clone().unwrap_or_else(|| {
        let dir = match &args.output {
            Some(out) => out.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => image.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        dir.join(format!("{name}.manifest"))
    });
    catalog::write_atomic(&manifest_path, &bytes)
        .with_context(|| format!("while writing {}", manifest_path.display()))?;
    let reference = match &args.output {
        Some(out) if manifest_path.parent() == out.parent() => manifest_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        _ => std::path::absolute(&manifest_path)
            .unwrap_or(manifest_path.clone())
            .display()
            .to_string(),
    };
    let lun = match (args.lun, &target) {
        (Some(lun), _) => lun,
        (None, Some(target)) => ask_lun(target, &portals, manifest.image_size())?,
        (None, None) => 0,
    };
    let entry = PublishedEntry {
        name: name.clone(),
        description: args.description.clone(),
        target,
        lun,
        portals,
        urls,
        size: manifest.image_size(),
        manifest: reference,
        manifest_sha256: pin.clone(),
    };
    match &args.output {
        Some(out) => {
            let text = catalog::with_entry(out, &entry)
                .with_context(|| format!("while updating {}", out.display()))?;
            write_catalog(signer.as_ref(), out, text.as_bytes(), false)?;
            eprintln!(
                "published {} ({} bytes, {} chunks of {}, {} hashes) in {}",
                name,
                manifest.image_size(),
                manifest.chunks(),
                manifest.chunk_size(),
                manifest.hash_alg(),
                out.display()
            );
        }
        None => {
            let tmp = tempfile_in(&manifest_path)?;
            catalog::upsert_entry(&tmp, &entry)?;
            let text = std::fs::read_to_string(&tmp)?;
            let _ = std::fs::remove_file(&tmp);
            print!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The portals (normalized) and URLs given: at least one of either.
pub fn mirrors(args: &PublishArgs) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    if args.portals.is_empty() && args.urls.is_empty() {
        anyhow::bail!("publish needs --portal HOST:PORT (iSCSI), --url URL (web) or both");
    }
    let portals = args
        .portals
        .iter()
        .map(|p| {
            catalog::normalize_portal(p)
                .with_context(|| format!("--portal `{p}`: not HOST[:PORT] or [IPv6][:PORT]"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((portals, args.urls.clone()))
}

/// How long `publish` waits for one portal to say which LUN holds the image.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// The LUN of `target` whose capacity is `size`, asked of the first portal that answers (REPORT
/// LUNS, then READ CAPACITY of each); 0, the LUN `isomount serve` exports, when none answers. An
/// answer that rules the entry out (no such target, authentication, no LUN of that size, several)
/// is an error naming which.
fn ask_lun(target: &str, portals: &[String], size: u64) -> anyhow::Result<u64> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let mut silent = Vec::new();
        for given in portals {
            let portal = catalog::normalize_portal(given).unwrap_or_else(|| given.clone());
            let opts = ConnectOptions::new(vec![portal.clone()], target, 0);
            let luns = match tokio::time::timeout(ASK_TIMEOUT, list_luns(&opts)).await {
                Ok(Ok(luns)) => luns,
                Ok(Err(e @ (IscsiError::Connect { .. } | IscsiError::Closed))) => {
                    silent.push(e.to_string());
                    continue;
                }
                Ok(Err(e)) => anyhow::bail!(
                    "asking {portal} which LUN of {target} holds the image: {e} \
                     (pass --lun N to publish without asking)"
                ),
                Err(_) => {
                    silent.push(format!("{portal}: no answer within {ASK_TIMEOUT:?}"));
                    continue;
                }
            };
            let describe = |l: &LunSummary| match l.capacity.and_then(|c| c.bytes()) {
                Some(bytes) => format!("LUN {}: {bytes} bytes", l.lun),
                None => format!(
                    "LUN {}: {}",
                    l.lun,
                    crate::scsi::device_type_name(l.device_type)
                ),
            };
            let fits: Vec<crate::scsi::Lun> = luns
                .iter()
                .filter(|l| l.capacity.and_then(|c| c.bytes()) == Some(size))
                .map(|l| l.lun)
                .collect();
            return match fits[..] {
                [lun] => {
                    let number = lun.number().with_context(|| {
                        format!(
                            "LUN {lun} of {target} at {portal} is {size} bytes, but a catalog \
                             cannot name it by number"
                        )
                    })?;
                    eprintln!("LUN {lun} (the LUN of {target} at {portal} that is {size} bytes)");
                    Ok(number)
                }
                [] => {
                    let all: Vec<String> = luns.iter().map(describe).collect();
                    anyhow::bail!(
                        "target {target} at {portal} has no LUN of the image's size, {size} bytes \
                         ({}); pass --lun N to publish anyway",
                        if all.is_empty() {
                            "it reports no LUNs".to_string()
                        } else {
                            all.join("; ")
                        }
                    )
                }
                _ => {
                    let all: Vec<String> = fits.iter().map(ToString::to_string).collect();
                    anyhow::bail!(
                        "LUNs {} of {target} at {portal} are all {size} bytes; pass --lun N",
                        all.join(", ")
                    )
                }
            };
        }
        eprintln!(
            "LUN 0, the LUN `isomount serve` exports: no portal answered to ask ({}); \
             pass --lun N to choose",
            silent.join("; ")
        );
        Ok(0)
    })
}

fn tempfile_in(beside: &Path) -> anyhow::Result<PathBuf> {
    let dir = beside.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!(".isomount-publish-{}.toml", std::process::id())))
}
