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

pub fn run(global: &GlobalOpts, args: FetchArgs) -> anyhow::Result<ExitCode> {
    if !args.files.is_empty() {
        anyhow::bail!("`fetch --files` is not supported yet; fetch the whole image");
    }
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let image = image::open(global, &args.image).await?;
        let size = image.size();
        let before = image.cached_bytes();
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
    bar.finish_and_clear();
    Ok(fetched)
}

/// `isomount cat NAME`: the image through the cache and verification, in order, to stdout.
/// On a failed read what was written is a true prefix of the image.
pub fn cat_name(global: &GlobalOpts, name: &str) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let image = image::open(global, name).await?;
        let reader = image.clone();
        super::cat::pipe(
            image.size(),
            super::cat::CHUNK * 4,
            8,
            move |offset, len| {
                let image = reader.clone();
                async move { Ok(image.read(offset, len).await?.into_bytes()) }
            },
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}
