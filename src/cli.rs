//! Command-line definitions (clap) and dispatch. Raw arguments are parsed here; each command's
//! module turns them into a validated configuration and does the work.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::commands;

/// Mount published disk and CD images over iSCSI, verified and cached.
#[derive(Debug, Parser)]
#[command(name = "isomount", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalOpts {
    /// Catalog file, folder of *.toml, or https URL (repeatable; replaces the search path)
    #[arg(long = "catalog", global = true, value_name = "PATH")]
    pub catalogs: Vec<String>,
    /// Cache directory (default $XDG_CACHE_HOME/isomount)
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Bound on the cache's size, e.g. 10G, 512M
    #[arg(long, global = true, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Never touch the network; serve only what is cached
    #[arg(long, global = true)]
    pub offline: bool,
    /// Longest any read of an image waits before it fails, in seconds
    #[arg(long, global = true, value_name = "SECONDS", env = "ISOMOUNT_READ_TIMEOUT",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub read_timeout: Option<u64>,
    /// More log output (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl GlobalOpts {
    /// The bound on every read of an image (`--read-timeout`, default 90 s).
    pub fn read_timeout(&self) -> std::time::Duration {
        self.read_timeout.map_or(
            crate::image::DEFAULT_READ_TIMEOUT,
            std::time::Duration::from_secs,
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount NAME or URL at MOUNTPOINT (the default command)
    Mount(commands::mount::MountArgs),
    /// Unmount a mount made by isomount
    Unmount(commands::mount::UnmountArgs),
    /// Write the whole image to stdout
    Cat(commands::cat::CatArgs),
    /// Prefetch an image (or some of its files) into the cache
    Fetch(commands::fetch::FetchArgs),
    /// List catalog entries and how much of each is cached
    List(commands::list::ListArgs),
    /// Show what a LUN is: inquiry data, capacity, negotiated parameters
    Info(commands::info::InfoArgs),
    /// SendTargets discovery against a portal
    Discover(commands::discover::DiscoverArgs),
    /// Inspect and manage the cache
    #[command(subcommand)]
    Cache(commands::cache::CacheCommand),
    /// Write an image's manifest and its catalog entry
    Publish(commands::publish::PublishArgs),
    /// Serve image files as read-only iSCSI LUNs
    Serve(commands::serve::ServeArgs),
    /// Serve the bundled sample image on loopback and mount it
    Demo(commands::demo::DemoArgs),
}

const SUBCOMMANDS: &[&str] = &[
    "mount", "unmount", "cat", "fetch", "list", "info", "discover", "cache", "publish", "serve",
    "demo", "help",
];

/// `isomount NAME MOUNTPOINT` means `isomount mount NAME MOUNTPOINT`: insert the subcommand when
/// the first positional argument is not one.
fn with_default_command(args: Vec<OsString>) -> Vec<OsString> {
    let takes_value = |s: &str| {
        matches!(
            s,
            "--catalog" | "--cache-dir" | "--cache-size" | "--read-timeout" | "-o"
        )
    };
    let mut i = 1;
    while i < args.len() {
        let word = args[i].to_string_lossy();
        if word == "--" {
            break;
        }
        if !word.starts_with('-') {
            if SUBCOMMANDS.contains(&word.as_ref()) {
                return args;
            }
            // Right after the program name, so options before NAME (global or mount's) stay valid.
            let mut out = args;
            out.insert(1, OsString::from("mount"));
            return out;
        }
        i += if takes_value(&word) { 2 } else { 1 };
    }
    args
}

/// Entry point of the binary.
pub fn run() -> ExitCode {
    let cli = Cli::parse_from(with_default_command(std::env::args_os().collect()));
    init_logging(&cli.global);
    match commands::dispatch(&cli.global, cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("isomount: {}", commands::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(global: &GlobalOpts) {
    let level = if global.quiet {
        "error"
    } else {
        match global.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ISOMOUNT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("isomount={level}")));
    // Colour only on a terminal: a log file or a pipe gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn bare_name_and_mountpoint_mean_mount() {
        let out = with_default_command(words(&["isomount", "netbsd-5.0", "/mnt/cd"]));
        assert_eq!(out, words(&["isomount", "mount", "netbsd-5.0", "/mnt/cd"]));
    }

    #[test]
    fn subcommands_and_option_values_are_left_alone() {
        let cat = words(&["isomount", "cat", "x"]);
        assert_eq!(with_default_command(cat.clone()), cat);
        let out = with_default_command(words(&["isomount", "--catalog", "cat.toml", "n", "/m"]));
        assert_eq!(
            out,
            words(&["isomount", "mount", "--catalog", "cat.toml", "n", "/m"])
        );
    }
}
