//! Command-line definitions (clap) and dispatch. Raw arguments are parsed here and turned into a
//! validated [`Config`]; each command's module takes it and its own arguments and does the work.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::commands;
use crate::config::{CacheLimit, Config, DEFAULT_READ_TIMEOUT};

/// Mount published disk and CD images over iSCSI, verified and cached.
#[derive(Debug, Parser)]
#[command(
    name = "isomount",
    version,
    about,
    long_about = None,
    after_help = "`isomount NAME MOUNTPOINT` is short for `isomount mount NAME MOUNTPOINT`."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts (shown under their own heading in every command's help).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// Catalog file, folder of *.toml, or https URL (repeatable; replaces the search path)
    #[arg(long = "catalog", global = true, value_name = "PATH")]
    pub catalogs: Vec<String>,
    /// Trust catalogs signed by this minisign public key (repeatable; *.pub files in catalog
    /// folders count too). Once a key is trusted, unsigned catalogs are refused
    #[arg(long = "pubkey", global = true, value_name = "FILE")]
    pub pubkeys: Vec<PathBuf>,
    /// Cache directory (default $XDG_CACHE_HOME/isomount)
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Bound on the cache's size, e.g. 10G, 512M
    #[arg(long, global = true, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Never touch the network; serve only what is cached
    #[arg(long, global = true)]
    pub offline: bool,
    /// Longest any read of an image waits before it fails, in seconds (default 90)
    #[arg(long, global = true, value_name = "SECONDS", env = "ISOMOUNT_READ_TIMEOUT",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub read_timeout: Option<u64>,
    /// More log output: -v connections, logins, failover and cache decisions; -vv every command
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl GlobalOpts {
    /// The options as a validated configuration.
    pub fn config(&self) -> anyhow::Result<Config> {
        let cache_limit = self
            .cache_size
            .as_deref()
            .map(CacheLimit::parse)
            .transpose()
            .context("--cache-size")?;
        Ok(Config {
            catalogs: self.catalogs.clone(),
            pubkeys: self.pubkeys.clone(),
            cache_dir: self.cache_dir.clone(),
            cache_limit,
            offline: self.offline,
            read_timeout: self
                .read_timeout
                .map_or(DEFAULT_READ_TIMEOUT, std::time::Duration::from_secs),
            verbose: self.verbose,
            quiet: self.quiet,
        })
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
    /// Write an image's manifest and its catalog entry (or a whole tree's), signed if asked
    Publish(Box<commands::publish::PublishArgs>),
    /// Make a minisign key pair for signing catalogs (publish --sign)
    Keygen(commands::keygen::KeygenArgs),
    /// Serve image files as read-only iSCSI LUNs
    Serve(Box<commands::serve::ServeArgs>),
    /// Serve the bundled sample image on loopback and mount it
    Demo(commands::demo::DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(CompletionsArgs),
    /// Print the manual page (roff), made from the same definitions as --help
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write isomount.1 and a page per subcommand (isomount-fetch.1, …) into DIR instead
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    pub shell: clap_complete::Shell,
}

/// What the first word on the command line is.
#[derive(Debug, PartialEq, Eq)]
enum FirstWord {
    /// A subcommand (or none at all): parse as given.
    Subcommand,
    /// `isomount NAME MOUNTPOINT`: insert `mount` at this position.
    ImageName,
    /// Not a subcommand, but one letter or two from these: a typo, not an image name.
    NearMiss { word: String, close: Vec<String> },
}

/// The subcommands (and their aliases) clap knows, `help` included.
fn subcommand_names() -> Vec<String> {
    let command = <Cli as clap::CommandFactory>::command();
    let mut names: Vec<String> = command
        .get_subcommands()
        .flat_map(|c| std::iter::once(c.get_name()).chain(c.get_all_aliases()))
        .map(str::to_string)
        .collect();
    names.push("help".to_string());
    names
}

/// Subcommands `word` is a near miss of: an edit or two away (one for short commands), a
/// transposition counting as one. Words with digits or punctuation other than `-` are image
/// names or paths, never typos.
fn near_misses(word: &str, names: &[String]) -> Vec<String> {
    if word.len() < 2 || !word.chars().all(|c| c.is_ascii_alphabetic() || c == '-') {
        return Vec::new();
    }
    let word = word.to_ascii_lowercase();
    names
        .iter()
        .filter(|name| {
            let allowed = if name.len() <= 4 { 1 } else { 2 };
            let distance = strsim::damerau_levenshtein(&word, name);
            distance <= allowed && distance < word.len()
        })
        .cloned()
        .collect()
}

/// `isomount NAME MOUNTPOINT` means `isomount mount NAME MOUNTPOINT`, unless NAME is a near miss
/// of a subcommand. Returns what the first positional word is and where it stands.
fn classify(args: &[OsString], names: &[String]) -> (FirstWord, usize) {
    let takes_value = |s: &str| {
        matches!(
            s,
            "--catalog" | "--pubkey" | "--cache-dir" | "--cache-size" | "--read-timeout" | "-o"
        )
    };
    let mut i = 1;
    while i < args.len() {
        let word = args[i].to_string_lossy();
        if word == "--" {
            break;
        }
        if !word.starts_with('-') {
            if names.iter().any(|n| *n == word) {
                return (FirstWord::Subcommand, i);
            }
            let close = near_misses(&word, names);
            if !close.is_empty() {
                let word = word.into_owned();
                return (FirstWord::NearMiss { word, close }, i);
            }
            return (FirstWord::ImageName, i);
        }
        i += if takes_value(&word) { 2 } else { 1 };
    }
    (FirstWord::Subcommand, i)
}

/// The arguments with `mount` inserted where the default command applies.
fn with_default_command(args: Vec<OsString>) -> Vec<OsString> {
    match classify(&args, &subcommand_names()) {
        (FirstWord::ImageName, _) => {
            // Right after the program name, so options before NAME (global or mount's) stay valid.
            let mut out = args;
            out.insert(1, OsString::from("mount"));
            out
        }
        _ => args,
    }
}

/// The message for a mistyped subcommand: what was meant, and how to mount a name like it.
fn near_miss_message(word: &str, close: &[String]) -> String {
    let quoted: Vec<String> = close.iter().map(|c| format!("`{c}`")).collect();
    format!(
        "unknown command `{word}`; did you mean {}?\n\n  (to mount an image named `{word}`: \
         isomount mount {word} MOUNTPOINT)",
        quoted.join(" or ")
    )
}

/// Entry point of the binary.
pub fn run() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let (FirstWord::NearMiss { word, close }, _) = classify(&args, &subcommand_names()) {
        <Cli as clap::CommandFactory>::command()
            .error(
                clap::error::ErrorKind::InvalidSubcommand,
                near_miss_message(&word, &close),
            )
            .exit();
    }
    let cli = Cli::parse_from(with_default_command(args));
    init_logging(&cli.global);
    let result = cli
        .global
        .config()
        .and_then(|config| dispatch(&config, cli.command));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("isomount: {}", commands::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// Run one command.
fn dispatch(config: &Config, command: Command) -> anyhow::Result<ExitCode> {
    use commands::*;
    match command {
        Command::Mount(args) => mount::run(config, args),
        Command::Unmount(args) => mount::unmount(args),
        Command::Cat(args) => cat::run(config, args),
        Command::Fetch(args) => fetch::run(config, args),
        Command::List(args) => list::run(config, args),
        Command::Info(args) => info::run(config, args),
        Command::Discover(args) => discover::run(args),
        Command::Cache(cmd) => cache::run(config, cmd),
        Command::Publish(args) => publish::run(config, *args),
        Command::Keygen(args) => keygen::run(args),
        Command::Serve(args) => serve::run(config, *args),
        Command::Demo(args) => demo::run(config, args),
        Command::Completions(args) => print_completions(args.shell),
        Command::Man(args) => print_man(args),
    }
}

/// `isomount completions SHELL`: the completion script for SHELL, from the clap definitions.
pub fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "isomount", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// `isomount man`: the manual page as roff, from the same clap definitions as `--help`; with
/// `--dir`, every page written into that folder.
pub fn print_man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let command = <Cli as clap::CommandFactory>::command();
    if let Some(dir) = args.dir {
        clap_mangen::generate_to(command, &dir)
            .with_context(|| format!("while writing manual pages into {}", dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut out)
        .context("while rendering the manual page")?;
    std::io::Write::write_all(&mut std::io::stdout(), &out).context("while writing stdout")?;
    Ok(ExitCode::SUCCESS)
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
    fn near_misses_of_subcommands_are_typos_not_names() {
        let names = subcommand_names();
        for (typo, meant) in [
            ("fecth", "fetch"),
            ("lsit", "list"),
            ("unmont", "unmount"),
            ("mout", "mount"),
            ("publsh", "publish"),
            ("cahce", "cache"),
            ("completion", "completions"),
        ] {
            let args = words(&["isomount", typo, "x"]);
            match classify(&args, &names) {
                (FirstWord::NearMiss { close, .. }, 1) => {
                    assert!(close.iter().any(|c| c == meant), "{typo}: {close:?}")
                }
                other => panic!("{typo} taken as {other:?}"),
            }
        }
        for name in [
            "netbsd-5.0",
            "sample",
            "debian",
            "/srv/x.iso",
            "cd2",
            "freebsd",
        ] {
            let args = words(&["isomount", name, "/mnt"]);
            assert_eq!(classify(&args, &names).0, FirstWord::ImageName, "{name}");
        }
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
