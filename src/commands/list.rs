//! `isomount list`.

use std::process::ExitCode;

use crate::cli::GlobalOpts;

#[derive(Debug, clap::Args)]
pub struct ListArgs {}

pub fn run(_global: &GlobalOpts, _args: ListArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount list` is not implemented yet")
}
