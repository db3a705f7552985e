//! `isomount cat`.

use std::process::ExitCode;

use crate::cli::GlobalOpts;

#[derive(Debug, clap::Args)]
pub struct CatArgs {
    /// Catalog name or iscsi:// URL
    pub image: String,
}

pub fn run(_global: &GlobalOpts, _args: CatArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount cat` is not implemented yet")
}
