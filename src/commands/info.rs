//! `isomount info`.

use std::process::ExitCode;

use crate::cli::GlobalOpts;

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Catalog name or iscsi:// URL
    pub image: String,
}

pub fn run(_global: &GlobalOpts, _args: InfoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount info` is not implemented yet")
}
