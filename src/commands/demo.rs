//! `isomount demo`.

use std::process::ExitCode;

use crate::cli::GlobalOpts;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Print the tree and exit instead of waiting for Ctrl-C
    #[arg(long)]
    pub once: bool,
}

pub fn run(_global: &GlobalOpts, _args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount demo` is not implemented yet")
}
