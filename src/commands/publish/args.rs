//! What `publish` takes: the options for one image, for a tree (`--root`), and for signing the
//! catalog it writes; and the mirrors they name.

use std::path::PathBuf;

use anyhow::Context;

use super::signed::Signer;
use crate::catalog;
use crate::manifest::{HashAlg, DEFAULT_CHUNK_SIZE};
use crate::signature::{self, SigningKey};
use crate::target::config;
use crate::tree;

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
    pub tree: TreeArgs,
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

/// The options `publish` takes for a tree.
#[derive(Debug, clap::Args)]
pub struct TreeArgs {
    /// Publish every image under DIR: names and target IQNs come from the paths (as `serve
    /// --root` serves them); needs -o CATALOG
    #[arg(long, value_name = "DIR", requires = "output")]
    pub root: Option<PathBuf>,
    /// With --root: prefix of the target IQNs, PREFIX:NAME (the same as `serve --iqn-prefix`)
    #[arg(long, value_name = "IQN", default_value = config::DEFAULT_IQN_PREFIX)]
    pub iqn_prefix: String,
    /// With --root: which file names are images, a glob without '/' (repeatable; the same as
    /// `serve --root`'s)
    #[arg(
        long = "pattern",
        value_name = "GLOB",
        default_values_t = tree::DEFAULT_PATTERNS.iter().map(|p| p.to_string())
    )]
    pub patterns: Vec<String>,
    /// With --root: hash every image again, changed or not
    #[arg(long, requires = "root")]
    pub rehash: bool,
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
