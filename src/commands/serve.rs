//! `isomount serve`.

use std::process::ExitCode;

use crate::cli::GlobalOpts;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Image files (or catalog names with --catalog) to serve
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:3260")]
    pub listen: String,
}

pub fn run(_global: &GlobalOpts, _args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount serve` is not implemented yet")
}
