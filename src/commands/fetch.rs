//! `isomount fetch`: pull a whole image into the cache, with a progress bar; what is cached
//! already is not fetched again. Also the catalog-name path of `isomount cat`.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use indicatif::HumanBytes;

use crate::cli::GlobalOpts;
use crate::image::{self, Image};
use crate::iso9660::{IsoFs, ReadAt};

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Catalog name or iscsi:// URL
    pub image: String,
    /// Prefetch only these files of the ISO 9660 tree
    #[arg(long, num_args = 1..)]
    pub files: Vec<String>,
}

/// Bytes per prefetch request.
const WINDOW: u64 = 8 << 20;
/// Prefetch requests in flight.
const DEPTH: usize = 4;
/// Bytes per read of `cat NAME`: one coalesced READ when cold, one store read when cached.
const CAT_READ: usize = 2 << 20;
/// Reads of `cat NAME` in flight.
const CAT_DEPTH: usize = 16;

pub fn run(global: &GlobalOpts, args: FetchArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let image = image::open(global, &args.image).await?;
        image.set_read_ahead(false);
        let size = image.size();
        let before = image.cached_bytes();
        if !args.files.is_empty() {
            let fetched = fetch_files(&image, args.files.clone()).await?;
            if !global.quiet {
                eprintln!(
                    "{}: fetched {} for {} file(s)",
                    image.name(),
                    HumanBytes(fetched),
                    args.files.len()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if global.offline {
            if before < size {
                anyhow::bail!(
                    "{}: offline, nothing fetched; {} of {} cached",
                    image.name(),
                    HumanBytes(before),
                    HumanBytes(size)
                );
            }
            eprintln!(
                "{}: complete in the cache ({})",
                image.name(),
                HumanBytes(size)
            );
            return Ok(ExitCode::SUCCESS);
        }
        let fetched = fetch_all(&image, !global.quiet).await?;
        if !global.quiet {
            eprintln!(
                "{}: fetched {}, {} were cached already; {} complete",
                image.name(),
                HumanBytes(fetched),
                HumanBytes(size.saturating_sub(fetched)),
                HumanBytes(size)
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Prefetch every missing chunk, `DEPTH` windows in flight. Returns the bytes fetched.
async fn fetch_all(image: &Arc<Image>, show: bool) -> anyhow::Result<u64> {
    let size = image.size();
    let bar = if show && std::io::stderr().is_terminal() {
        indicatif::ProgressBar::with_draw_target(
            Some(size),
            indicatif::ProgressDrawTarget::stderr(),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(image.name().to_string());
    let mut in_flight = VecDeque::new();
    let mut next = 0u64;
    let mut fetched = 0u64;
    loop {
        while in_flight.len() < DEPTH && next < size {
            let len = (size - next).min(WINDOW);
            let img = image.clone();
            let at = next;
            in_flight.push_back((
                len,
                tokio::spawn(async move { img.prefetch(at, len).await }),
            ));
            next += len;
        }
        let Some((len, handle)) = in_flight.pop_front() else {
            break;
        };
        match handle.await.context("while fetching") {
            Ok(Ok(n)) => fetched += n,
            Ok(Err(e)) => {
                for (_, h) in in_flight {
                    h.abort();
                }
                bar.abandon();
                return Err(e.into());
            }
            Err(e) => return Err(e),
        }
        bar.inc(len);
    }
    image.flush().await;
    bar.finish_and_clear();
    Ok(fetched)
}

/// The image core as the ISO 9660 reader's synchronous source (used off the runtime's threads).
struct ImageReadAt {
    image: Arc<Image>,
    runtime: tokio::runtime::Handle,
}

impl ReadAt for ImageReadAt {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.runtime
            .block_on(self.image.read(offset, len))
            .map(|v| v.to_vec())
            .map_err(std::io::Error::other)
    }
    fn size(&self) -> u64 {
        self.image.size()
    }
}

/// Prefetch the data of some files of the image's ISO 9660 tree. Returns the bytes fetched.
async fn fetch_files(image: &Arc<Image>, files: Vec<String>) -> anyhow::Result<u64> {
    let view = ImageReadAt {
        image: image.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let ranges = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(u64, u64)>> {
        let fs = IsoFs::open(Arc::new(view)).context("while reading the ISO 9660 tree")?;
        let mut ranges = Vec::new();
        for f in &files {
            let node = fs
                .resolve(f)
                .with_context(|| format!("while looking up {f}"))?
                .with_context(|| format!("{f}: no such file in the image"))?;
            ranges.extend(fs.extents(node.ino)?);
        }
        Ok(ranges)
    })
    .await??;
    let mut fetched = 0;
    for (offset, len) in ranges {
        fetched += image.prefetch(offset, len).await?;
    }
    image.flush().await;
    Ok(fetched)
}

/// `isomount cat NAME`: the image through the cache and verification, in order, to stdout.
/// On a failed read what was written is a true prefix of the image.
pub fn cat_name(global: &GlobalOpts, name: &str) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let image = image::open(global, name).await?;
        image.set_read_ahead(false);
        let reader = image.clone();
        let result = super::cat::pipe(image.size(), CAT_READ, CAT_DEPTH, move |offset, len| {
            let image = reader.clone();
            async move { Ok(image.read(offset, len).await?.into_bytes()) }
        })
        .await;
        image.flush().await;
        result?;
        Ok(ExitCode::SUCCESS)
    })
}
