//! `isomount cat`: the whole image to stdout, read ahead with many reads in flight and written
//! in order; a progress bar on stderr when stderr is a terminal.
//!
//! [`pipe`] is independent of where bytes come from: an `iscsi://` URL reads the LUN directly;
//! catalog names go through the image core (the cache and verification).

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;

use crate::config::Config;
use crate::image::{self, Verified};
use crate::iscsi::{ConnectOptions, IscsiLun, IscsiUrl};

#[derive(Debug, clap::Args)]
pub struct CatArgs {
    /// Catalog name or iscsi:// URL
    pub image: String,
}

/// Reads in flight: enough to cover a long round trip (64 × 256 KiB = 16 MiB per RTT).
pub const DEPTH: usize = 64;

/// Bytes per read of `cat NAME`: one coalesced READ when cold, one store read when cached.
const CAT_READ: usize = 2 << 20;
/// Bytes per read of `cat NAME` when the whole image is cached: small enough that the read
/// buffer is still in the CPU's cache when its CRC32C is checked and when it is written out
/// (measured against 8 MiB reads, whose copies and checks all went to memory: 0.31 s against
/// 0.38 s for 512 MiB, `dd bs=1M` of the local file 0.27 s).
const CACHED_READ: usize = 1 << 20;
/// Reads of `cat NAME` in flight.
const CAT_DEPTH: usize = 16;
/// Reads of `cat NAME` in flight when the source wants runs larger than [`CAT_READ`] (a web
/// mirror: each run one range request). Each request pays a round trip before its bytes flow and
/// shares the link with the others while `cat` writes in order, so one slow range holds up the
/// reads behind it: through a 20 ms round trip, 16 reads of 2 MiB (each a range of its own, and
/// the mirror's request slots idle while `cat` waited for the oldest) gave way to 24 reads of
/// 4 MiB at 1.1-1.25 times the speed, on a loaded machine.
const CAT_RUNS_IN_FLIGHT: usize = 24;
/// Largest read of `cat NAME` (a source's run size beyond it is not followed).
const CAT_READ_MAX: usize = 16 << 20;

/// Bytes per read and reads in flight of a cold `cat NAME` whose source wants runs of
/// `run_bytes`: one run per read when runs are larger than [`CAT_READ`].
fn cold_reads(run_bytes: u64) -> (usize, usize) {
    let run = usize::try_from(run_bytes).unwrap_or(usize::MAX);
    if run <= CAT_READ {
        (CAT_READ, CAT_DEPTH)
    } else {
        (run.min(CAT_READ_MAX), CAT_RUNS_IN_FLIGHT)
    }
}

pub fn run(config: &Config, args: CatArgs) -> anyhow::Result<ExitCode> {
    if !args.image.starts_with("iscsi://") {
        return cat_name(config, &args.image);
    }
    let url: IscsiUrl = args.image.parse()?;
    // One thread runs the session and every read: no cross-thread wake-ups on the data path
    // (stdout is written from a thread of its own).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut opts = ConnectOptions::from_url(&url);
        opts.read_timeout = config.read_timeout;
        let lun = IscsiLun::connect(opts)
            .await
            .with_context(|| format!("while connecting to {url}"))?;
        // One READ per chunk: each comes back as a single Data-In segment, never copied.
        let chunk = lun.max_read() as usize;
        let result = cat_lun(lun.clone(), chunk, config.read_timeout).await;
        lun.logout().await;
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `isomount cat NAME`: the image through the cache and verification, in order, to stdout.
/// On a failed read what was written is a true prefix of the image.
fn cat_name(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let runtime = super::streaming_runtime()?;
    runtime.block_on(async {
        let image = image::open::named_unconnected(config, name).await?;
        image.set_read_ahead(false);
        if image.cached_bytes() == image.size() {
            // A fully cached image is read as one sequential stream on one thread, as `dd`
            // reads a file: the page cache's read-ahead then runs ahead of it (which many
            // concurrent reads would defeat), and no read waits on a hand-off between threads.
            // It needs no mirror to start: the connection is made meanwhile (for a chunk that
            // fails its check), and seen through before the end (so that an unreachable mirror
            // is still reported).
            let connecting = tokio::spawn({
                let image = image.clone();
                async move { image.connect_now().await }
            });
            let reader = image.clone();
            let handle = tokio::runtime::Handle::current();
            let result = tokio::task::spawn_blocking(move || stream_here(&reader, &handle))
                .await
                .context("while reading")?;
            let _ = connecting.await;
            image.flush().await;
            result?;
            return Ok(ExitCode::SUCCESS);
        }
        image.connect_now().await;
        let reader = image.clone();
        let (read, depth) = cold_reads(image.run_bytes());
        let result = pipe(image.size(), read, depth, move |offset, len| {
            let image = reader.clone();
            async move {
                let parts = image.read_parts(offset, len).await?;
                Ok(parts.into_iter().map(Verified::into_bytes).collect())
            }
        })
        .await;
        image.flush().await;
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The whole image to stdout in order, `CACHED_READ` bytes at a time, each read from the cache
/// on this thread ([`image::Image::read_here`]); a read the cache cannot answer (a chunk that
/// failed its check, or was evicted meanwhile) goes the ordinary way, on `runtime`. On a failed
/// read what was written is a true prefix of the image.
fn stream_here(image: &image::Image, runtime: &tokio::runtime::Handle) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let mut out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let progress = super::progress_bar(image.size(), "", true);
    let mut offset = 0u64;
    while offset < image.size() {
        let len = (image.size() - offset).min(CACHED_READ as u64) as usize;
        let parts = match image.read_here(offset, len) {
            Some(parts) => parts,
            None => runtime.block_on(image.read_parts(offset, len))?,
        };
        let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        match crate::iobuf::write_all_vectored(&mut out, &slices) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            written => written.context("while writing to stdout")?,
        }
        offset += len as u64;
        progress.inc(len as u64);
    }
    progress.finish_and_clear();
    Ok(())
}

/// Read `size` bytes as `chunk`-sized reads, `depth` of them in flight, and write them to stdout
/// in order from a writer thread. A read may answer in pieces (written one after another, never
/// joined). A closed stdout (`| head`) ends quietly.
pub async fn pipe<F, Fut>(size: u64, chunk: usize, depth: usize, read: F) -> anyhow::Result<()>
where
    F: Fn(u64, usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<Bytes>>> + Send + 'static,
{
    let progress = super::progress_bar(size, "", true);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(4);
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        // Straight to the descriptor, each read's pieces in one vectored write: std's stdout is
        // line-buffered, which splits every piece at its last newline (two writes per piece and
        // a copy of its tail).
        use std::os::fd::AsFd;
        let mut out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
        while let Some(parts) = rx.blocking_recv() {
            let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
            crate::iobuf::write_all_vectored(&mut out, &slices)?;
        }
        Ok(())
    });
    let chunk = chunk.max(1) as u64;
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = 0u64;
    let mut delivered = 0u64;
    let result: anyhow::Result<()> = async {
        loop {
            while in_flight.len() < depth.max(1) && next < size {
                let len = (size - next).min(chunk) as usize;
                in_flight.push_back(tokio::spawn(read(next, len)));
                next += len as u64;
            }
            let Some(handle) = in_flight.pop_front() else {
                return Ok(());
            };
            let parts = handle.await.context("while reading")??;
            let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
            delivered += len;
            tracing::trace!("cat: {delivered} bytes of {size} read, in order");
            if tx.send(parts).await.is_err() {
                // The writer stopped: its result says why.
                return Ok(());
            }
            progress.inc(len);
        }
    }
    .await;
    for handle in in_flight {
        handle.abort();
    }
    drop(tx);
    progress.finish_and_clear();
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the stdout writer panicked"))?;
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => return Err(e).context("while writing to stdout"),
        Ok(()) => {}
    }
    result
}

/// The whole LUN to stdout in `chunk`-sized reads, none waiting longer than `timeout`.
async fn cat_lun(lun: Arc<IscsiLun>, chunk: usize, timeout: Duration) -> anyhow::Result<()> {
    let size = lun.size();
    pipe(size, chunk, DEPTH, move |offset, len| {
        let lun = lun.clone();
        async move {
            let context = || format!("while reading {len} bytes at offset {offset}");
            match tokio::time::timeout(timeout, lun.read_range(offset, len)).await {
                Ok(read) => read.with_context(context),
                Err(_) => Err(anyhow::anyhow!("no answer within {} s", timeout.as_secs()))
                    .with_context(context),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cold_cat_reads_whole_runs_of_a_source_with_large_runs() {
        // An iSCSI portal's 256 KiB runs: 2 MiB reads, each a few READs coalesced.
        assert_eq!(cold_reads(256 << 10), (CAT_READ, CAT_DEPTH));
        // A web mirror's 4 MiB ranges: one range per read, more of them in flight.
        assert_eq!(cold_reads(4 << 20), (4 << 20, CAT_RUNS_IN_FLIGHT));
        // A source asking for more than cat will hold per read is not followed.
        assert_eq!(cold_reads(1 << 30), (CAT_READ_MAX, CAT_RUNS_IN_FLIGHT));
    }
}
