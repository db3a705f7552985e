//! One module per command: its arguments (clap) and its work, given the shared [`crate::config::Config`]. `cli.rs` dispatches here; nothing here reaches back into it.

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
