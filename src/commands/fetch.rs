//! `isomount fetch`.

use std::process::ExitCode;

use crate::cli::GlobalOpts;

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Catalog name or iscsi:// URL
    pub image: String,
    /// Prefetch only these files of the ISO 9660 tree
    #[arg(long, num_args = 1..)]
    pub files: Vec<String>,
}

pub fn run(_global: &GlobalOpts, _args: FetchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount fetch` is not implemented yet")
}
