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
    /// Target IQN serving the image
    #[arg(long, required_unless_present = "root", conflicts_with = "root")]
    pub target: Option<String>,
    /// LUN number on the target
    #[arg(long, default_value_t = 1)]
    pub lun: u64,
    /// Portal HOST:PORT (repeatable; mirrors in order)
    #[arg(long = "portal", required = true)]
    pub portals: Vec<String>,
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
    let (Some(image), Some(name), Some(target)) = (&args.image, &args.name, &args.target) else {
        anyhow::bail!("publish needs IMAGE, --name and --target, or --root DIR");
    };
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
        target: target.clone(),
        lun: args.lun,
        portals: args.portals.clone(),
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

fn tempfile_in(beside: &Path) -> anyhow::Result<PathBuf> {
    let dir = beside.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!(".isomount-publish-{}.toml", std::process::id())))
}
