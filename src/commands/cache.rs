//! `isomount cache list|verify|evict NAME|clear`.

use std::process::ExitCode;

use anyhow::Context;
use indicatif::HumanBytes;

use crate::cache::Cache;
use crate::cli::GlobalOpts;

#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Every cached image and how much of it is present
    List,
    /// Re-hash every cached chunk; drop and name the corrupt ones
    Verify,
    /// Drop one image from the cache
    Evict { name: String },
    /// Drop everything
    Clear,
}

pub fn run(global: &GlobalOpts, cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    let cache = Cache::from_options(global.cache_dir.as_deref(), global.cache_size.as_deref())?;
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
        CacheCommand::Verify => {
            let (checked, corrupt) = cache.verify().context("while verifying the cache")?;
            for c in &corrupt {
                eprintln!(
                    "isomount: {}: chunk {} is corrupt; dropped",
                    c.name, c.chunk
                );
            }
            println!(
                "{checked} cached chunk(s) checked, {} corrupt",
                corrupt.len()
            );
            Ok(if corrupt.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
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
