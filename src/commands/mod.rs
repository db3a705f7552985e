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

/// A progress bar on stderr for `total` bytes with `label` before the counts, drawn only when
/// `show` and stderr is a terminal; otherwise hidden (its updates then cost next to nothing).
pub fn progress_bar(total: u64, label: &str, show: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg}{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_string());
    bar
}

/// A multi-threaded tokio runtime for commands that do network I/O.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A runtime for a command that streams a whole image through verification (`cat NAME`,
/// `fetch`): one worker fewer than the machine has cores, and at least one. What reads the
/// stream (the other end of a pipe), the cache's writer thread and the kernel's share of the
/// network need a core too, and on a small machine a worker per core only fights them for it:
/// on 2 cores with the target on the same machine, one worker (the session, and each READ's
/// data hashed as it lands) took 5 % less CPU per byte than two, and finished 8 % sooner
/// (medians of 20 runs each of a cold 256 MiB `cat NAME`: 249 against 262 ms of CPU, 342
/// against 370 ms). Larger verification batches still go to the blocking pool.
pub fn streaming_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(streaming_workers(cores))
        .enable_all()
        .build()?)
}

/// Workers of [`streaming_runtime`] on a machine of `cores` cores.
fn streaming_workers(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streaming_command_leaves_a_core_to_the_rest_of_the_machine() {
        assert_eq!(streaming_workers(1), 1);
        assert_eq!(streaming_workers(2), 1);
        assert_eq!(streaming_workers(8), 7);
        assert_eq!(streaming_workers(0), 1);
    }
}
