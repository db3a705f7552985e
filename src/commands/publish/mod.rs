//! `isomount publish`: a manifest and a catalog entry for one image ([`image`]), or for every
//! image under a tree with `--root` ([`tree`]); the options both take ([`args`]) and the
//! catalog both write, signed or not ([`signed`]).

mod args;
mod image;
mod signed;
mod tree;

use std::process::ExitCode;

use crate::config::Config;

pub use args::PublishArgs;

pub fn run(config: &Config, args: PublishArgs) -> anyhow::Result<ExitCode> {
    match args.tree.root {
        Some(_) => tree::run(config, args),
        None => image::run(args),
    }
}
