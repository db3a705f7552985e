//! `isomount cache list|verify|evict NAME|clear`.

use std::process::ExitCode;

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

pub fn run(_global: &GlobalOpts, _cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount cache` is not implemented yet")
}
