//! One module per command. Each turns its clap arguments into a validated configuration and runs.

use std::process::ExitCode;

use crate::cli::{Command, GlobalOpts};

pub mod cache;
pub mod cat;
pub mod demo;
pub mod discover;
pub mod fetch;
pub mod info;
pub mod keygen;
pub mod list;
pub mod mount;
pub mod publish;
pub mod publish_tree;
pub mod serve;

/// Run one command.
pub fn dispatch(global: &GlobalOpts, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Mount(args) => mount::run(global, args),
        Command::Unmount(args) => mount::unmount(global, args),
        Command::Cat(args) => cat::run(global, args),
        Command::Fetch(args) => fetch::run(global, args),
        Command::List(args) => list::run(global, args),
        Command::Info(args) => info::run(global, args),
        Command::Discover(args) => discover::run(global, args),
        Command::Cache(cmd) => cache::run(global, cmd),
        Command::Publish(args) => publish::run(global, *args),
        Command::Keygen(args) => keygen::run(global, args),
        Command::Serve(args) => serve::run(global, *args),
        Command::Demo(args) => demo::run(global, args),
        Command::Completions(args) => crate::cli::print_completions(args.shell),
        Command::Man(args) => crate::cli::print_man(args),
    }
}

/// An error and its causes on one line: "login to iqn… at 127.0.0.1:3260 failed: authentication
/// failure". Causes that repeat their parent's text are dropped.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

/// A multi-threaded tokio runtime for commands that do network I/O.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
