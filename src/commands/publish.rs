//! `isomount publish`.

use std::process::ExitCode;

use crate::cli::GlobalOpts;

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The image file to publish
    pub image: std::path::PathBuf,
    /// Name users type
    #[arg(long)]
    pub name: String,
    /// Target IQN serving the image
    #[arg(long)]
    pub target: String,
    /// LUN number on the target
    #[arg(long, default_value_t = 1)]
    pub lun: u64,
    /// Portal HOST:PORT (repeatable; mirrors in order)
    #[arg(long = "portal", required = true)]
    pub portals: Vec<String>,
    /// Catalog file to add the entry to
    #[arg(short = 'o', long = "output")]
    pub output: Option<std::path::PathBuf>,
}

pub fn run(_global: &GlobalOpts, _args: PublishArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount publish` is not implemented yet")
}
