//! `isomount publish`: hash an image into a manifest and add or replace its catalog entry; with
//! `--root`, a whole tree (see `publish_tree`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::catalog::{self, PublishedEntry};
use crate::cli::GlobalOpts;
use crate::manifest::{Manifest, DEFAULT_CHUNK_SIZE};

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
    /// LUN number on the target
    #[arg(long, default_value_t = 1)]
    pub lun: u64,
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
    #[command(flatten)]
    pub tree: super::publish_tree::TreeArgs,
}

pub fn run(global: &GlobalOpts, args: PublishArgs) -> anyhow::Result<ExitCode> {
    if args.tree.root.is_some() {
        return super::publish_tree::run(global, args);
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
    let file =
        std::fs::File::open(image).with_context(|| format!("while opening {}", image.display()))?;
    let manifest = Manifest::build(
        std::io::BufReader::with_capacity(1 << 20, file),
        args.chunk_size,
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
    let entry = PublishedEntry {
        name: name.clone(),
        description: args.description.clone(),
        target,
        lun: args.lun,
        portals,
        urls,
        size: manifest.image_size(),
        manifest: reference,
        manifest_sha256: pin.clone(),
    };
    match &args.output {
        Some(out) => {
            catalog::upsert_entry(out, &entry)
                .with_context(|| format!("while updating {}", out.display()))?;
            eprintln!(
                "published {} ({} bytes, {} chunks of {}) in {}",
                name,
                manifest.image_size(),
                manifest.chunks(),
                manifest.chunk_size(),
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

fn tempfile_in(beside: &Path) -> anyhow::Result<PathBuf> {
    let dir = beside.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!(".isomount-publish-{}.toml", std::process::id())))
}
