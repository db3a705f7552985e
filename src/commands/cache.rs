//! `isomount cache list|verify|evict NAME|clear`.

use std::process::ExitCode;

use anyhow::Context;
use indicatif::HumanBytes;

use crate::cache::{Cache, ManifestCopy};
use crate::catalog::Catalog;
use crate::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Every cached image and how much of it is present
    List,
    /// Re-hash every cached chunk; drop and name the corrupt ones (a damaged manifest copy is
    /// repaired from its catalog's source, or named, and its chunks kept)
    Verify,
    /// Drop one image from the cache
    Evict { name: String },
    /// Drop everything
    Clear,
}

pub fn run(config: &Config, cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    let cache = config.cache();
    match cmd {
        CacheCommand::List => {
            let stores = cache.stores();
            println!(
                "{:<24}  {:>12}  {:>12}  {:>8}  ID",
                "NAME", "CACHED", "SIZE", "CHUNKS"
            );
            let mut total = 0;
            for s in &stores {
                total += s.present_bytes;
                println!(
                    "{:<24}  {:>12}  {:>12}  {:>8}  {}",
                    s.name,
                    HumanBytes(s.present_bytes).to_string(),
                    HumanBytes(s.geometry.image_size).to_string(),
                    s.present_chunks,
                    s.id
                );
            }
            println!(
                "{} image(s), {} in {}",
                stores.len(),
                HumanBytes(total),
                cache.root().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Verify => verify(config, &cache),
        CacheCommand::Evict { name } => {
            cache
                .evict(&name)
                .with_context(|| format!("while evicting `{name}`"))?;
            println!("evicted {name}");
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Clear => {
            let n = cache.clear().context("while clearing the cache")?;
            println!("cleared {n} image(s) from {}", cache.root().display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `cache verify`: every store's manifest copy against its pin (repaired from the catalog's
/// source when damaged), then every chunk. Exits non-zero when anything was damaged.
fn verify(config: &Config, cache: &Cache) -> anyhow::Result<ExitCode> {
    let catalog = std::cell::OnceCell::new();
    let fresh = |pin: &str| -> Result<(Vec<u8>, String), String> {
        let loaded = catalog.get_or_init(|| {
            Catalog::load(
                &config.catalogs,
                &config.pubkeys,
                Some(cache.root()),
                config.offline,
            )
            .map_err(|e| format!("cannot load the catalogs: {e}"))
        });
        let mref = loaded
            .as_ref()
            .map_err(Clone::clone)?
            .entries
            .iter()
            .filter_map(|e| e.manifest.as_ref())
            .find(|m| m.sha256.eq_ignore_ascii_case(pin))
            .ok_or("no catalog names a manifest with this pin")?;
        let bytes = mref
            .read(&cache.kept_manifest(pin), config.offline)
            .map_err(|e| e.to_string())?;
        Ok((bytes, mref.describe()))
    };
    let checks = cache.verify(&fresh).context("while verifying the cache")?;
    let mut damaged_manifests = 0;
    let mut repaired = 0;
    for check in &checks {
        match &check.manifest {
            ManifestCopy::NotPinned | ManifestCopy::Intact => {}
            ManifestCopy::Repaired { damage, from } => {
                damaged_manifests += 1;
                repaired += 1;
                eprintln!(
                    "isomount: {}: the cache's copy of its manifest was damaged ({damage}); \
                     repaired from {from}",
                    check.name
                );
            }
            ManifestCopy::Damaged {
                path,
                damage,
                unrepaired,
            } => {
                damaged_manifests += 1;
                eprintln!(
                    "isomount: {}: the cache's copy of its manifest, {}, is damaged ({damage}) and \
                     was not repaired ({unrepaired}); its {} cached chunk(s) were kept unchecked. \
                     Run `isomount --catalog CATALOG cache verify` with the catalog that publishes \
                     it to repair the copy, or `isomount cache evict {}`",
                    check.name,
                    path.display(),
                    check.unchecked,
                    check.name
                );
            }
        }
        for chunk in &check.corrupt {
            eprintln!(
                "isomount: {}: chunk {chunk} is corrupt; dropped",
                check.name
            );
        }
    }
    let checked: usize = checks.iter().map(|c| c.checked).sum();
    let corrupt: usize = checks.iter().map(|c| c.corrupt.len()).sum();
    let unchecked: usize = checks.iter().map(|c| c.unchecked).sum();
    let mut summary = format!("{checked} cached chunk(s) checked, {corrupt} corrupt");
    if damaged_manifests > 0 {
        summary.push_str(&format!(
            "; {damaged_manifests} damaged manifest cop(ies), {repaired} repaired"
        ));
    }
    if unchecked > 0 {
        summary.push_str(&format!("; {unchecked} chunk(s) unchecked"));
    }
    println!("{summary}");
    Ok(if corrupt == 0 && damaged_manifests == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
