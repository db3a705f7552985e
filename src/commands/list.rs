//! `isomount list`: every catalog entry with its size, how much of it is cached, and its mirrors
//! by kind (`iscsi` portals, `web` URLs).

use std::process::ExitCode;

use indicatif::HumanBytes;

use crate::cache::Cache;
use crate::catalog::Catalog;
use crate::cli::GlobalOpts;
use crate::image::identity::entry_identity;

#[derive(Debug, clap::Args)]
pub struct ListArgs {}

pub fn run(global: &GlobalOpts, _args: ListArgs) -> anyhow::Result<ExitCode> {
    let cache = Cache::from_options(global.cache_dir.as_deref(), global.cache_size.as_deref())?;
    let catalog = Catalog::load(&global.catalogs, Some(cache.root()), global.offline)?;
    let stores = cache.stores();
    let rows: Vec<[String; 4]> = catalog
        .entries
        .iter()
        .map(|e| {
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
    Ok(ExitCode::SUCCESS)
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
