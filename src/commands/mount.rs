//! `isomount [mount] NAME|URL MOUNTPOINT` and `isomount unmount MOUNTPOINT`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::GlobalOpts;

#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Catalog name or iscsi:// URL
    pub image: String,
    /// Where to mount
    pub mountpoint: PathBuf,
    /// Stay in the foreground
    #[arg(short, long)]
    pub foreground: bool,
    /// mount(8)-style options, comma-separated (ro, allow_other, ...)
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    /// The mountpoint
    pub mountpoint: PathBuf,
}

pub fn run(_global: &GlobalOpts, _args: MountArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount mount` is not implemented yet")
}

pub fn unmount(_global: &GlobalOpts, _args: UnmountArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`isomount unmount` is not implemented yet")
}
