//! `isomount discover`.

use std::process::ExitCode;

use crate::cli::GlobalOpts;

#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    /// Portal to ask: HOST[:PORT]
    pub portal: String,
    /// Also list each target's LUNs
    #[arg(short = 'l', long = "luns")]
    pub luns: bool,
}

pub fn run(_global: &GlobalOpts, _args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount discover` is not implemented yet")
}
