//! `isomount list`: every catalog entry with its size, how much of it is cached, and its mirrors
//! by kind (`iscsi` portals, `web` URLs). It exits non-zero when a catalog is refused (its
//! signature) or an entry's manifest is, after listing everything else and naming each fault.

use std::process::ExitCode;

use indicatif::HumanBytes;

use crate::cache::Cache;
use crate::catalog::{Catalog, CatalogError, Entry, ManifestLocation};
use crate::config::Config;
use crate::image::identity::entry_identity;
use crate::manifest::Manifest;

#[derive(Debug, clap::Args)]
pub struct ListArgs {}

pub fn run(config: &Config, _args: ListArgs) -> anyhow::Result<ExitCode> {
    let cache = config.cache();
    let catalog = Catalog::load(
        &config.catalogs,
        &config.pubkeys,
        Some(cache.root()),
        config.offline,
    )?;
    let stores = cache.stores();
    let mut faults = 0usize;
    let rows: Vec<[String; 4]> = catalog
        .entries
        .iter()
        .map(|e| {
            if let Err(fault) = check_manifest(&cache, e) {
                faults += 1;
                eprintln!("isomount: {}: `{}`: {fault}", e.origin, e.name);
                let mut name = e.name.clone();
                name.push_str(" (manifest refused)");
                return [
                    name,
                    HumanBytes(e.size).to_string(),
                    "-".to_string(),
                    mirrors(e),
                ];
            }
            let cached = entry_identity(&cache, e)
                .and_then(|id| {
                    let dir = cache.store_dir(&id);
                    stores
                        .iter()
                        .find(|s| s.dir == dir)
                        .map(|s| s.present_bytes)
                })
                .unwrap_or(0);
            let percent = cached.saturating_mul(100) / e.size.max(1);
            [
                e.name.clone(),
                HumanBytes(e.size).to_string(),
                format!("{} ({percent}%)", HumanBytes(cached)),
                mirrors(e),
            ]
        })
        .collect();
    let header = ["NAME", "SIZE", "CACHED", "MIRRORS"].map(String::from);
    let mut widths = [0usize; 3];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    for refused in &catalog.refused {
        eprintln!("isomount: {refused} (refused: its images are not listed)");
    }
    let mut failures = Vec::new();
    if faults > 0 {
        failures.push(format!(
            "{faults} catalog entr(ies) cannot be used as published"
        ));
    }
    if !catalog.refused.is_empty() {
        failures.push(format!("{} catalog(s) refused", catalog.refused.len()));
    }
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("isomount: {}", failures.join("; "));
    Ok(ExitCode::FAILURE)
}

/// `iscsi HOST:PORT, …; web URL, …`: each kind of mirror the entry has, in order of preference.
fn mirrors(entry: &crate::catalog::Entry) -> String {
    let mut kinds = Vec::new();
    if !entry.portals().is_empty() {
        kinds.push(format!("iscsi {}", entry.portals().join(", ")));
    }
    let urls = entry.mirrors().split_off(entry.portals().len());
    if !urls.is_empty() {
        kinds.push(format!("web {}", urls.join(", ")));
    }
    kinds.join("; ")
}

/// Whether the entry's manifest, where it can be read without the network (a file, or the kept
/// copy of an https one), matches the catalog's pin and size.
fn check_manifest(cache: &Cache, entry: &Entry) -> Result<(), String> {
    let Some(mref) = &entry.manifest else {
        return Ok(());
    };
    let bytes = match mref.read(&cache.kept_manifest(&mref.sha256), true) {
        Ok(bytes) => bytes,
        // An https manifest never fetched yet is checked when it is first used.
        Err(CatalogError::Fetch { .. }) if matches!(mref.location, ManifestLocation::Url(_)) => {
            return Ok(())
        }
        Err(e) => return Err(format!("manifest {}: {e}", mref.describe())),
    };
    let manifest = Manifest::parse_pinned(&bytes, &mref.sha256)
        .map_err(|e| format!("manifest {}: {e}", mref.describe()))?;
    manifest
        .check_size(entry.size)
        .map_err(|e| format!("manifest {}: {e}", mref.describe()))
}
