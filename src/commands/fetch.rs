//! `isomount fetch`: pull a whole image into the cache, with a progress bar; what is cached
//! already is not fetched again.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use indicatif::HumanBytes;

use crate::config::Config;
use crate::image::{self, Image};
use crate::iso9660::{IsoFs, Kind};

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

pub fn run(config: &Config, args: FetchArgs) -> anyhow::Result<ExitCode> {
    if !args.files.is_empty() {
        return fetch_files(config, &args);
    }
    let runtime = super::streaming_runtime()?;
    runtime.block_on(async {
        let image = image::open::named(config, &args.image).await?;
        image.set_read_ahead(false);
        let whole = [(0, image.size())];
        let before = present_bytes(&image, &whole);
        let trouble = fill(&image, &whole, !config.quiet).await?;
        let after = present_bytes(&image, &whole);
        ensure_complete(config, &image, &whole, trouble)?;
        if !config.quiet {
            eprintln!(
                "{}: fetched {}, {} were cached already; {} complete and verified",
                image.name(),
                HumanBytes(after.saturating_sub(before)),
                HumanBytes(before),
                HumanBytes(image.size())
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Nodes visited under the directories named by `--files`, at most.
const MAX_FILES_NODES: usize = 1 << 20;

/// `isomount fetch NAME --files PATH…`: prefetch only these files of the image's ISO 9660 tree
/// (a directory: every file under it; symlinks followed), with a progress bar. Resolving the
/// paths reads (and so caches) just the directories on the way.
fn fetch_files(config: &Config, args: &FetchArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let image = runtime.block_on(image::open::named(config, &args.image))?;
    image.set_read_ahead(false);
    let name = image.name().to_string();
    let before = image.cached_bytes();
    // The reader blocks on the runtime for each read, so it runs here, off the runtime's threads.
    let reader = crate::fs::ImageReadAt::new(image.clone(), runtime.handle().clone());
    let fs = IsoFs::open(Arc::new(reader))
        .with_context(|| format!("while reading the ISO 9660 volume of {name}"))?;
    let mut ranges = Vec::new();
    let mut files = 0usize;
    for path in &args.files {
        let node = fs
            .resolve(path)
            .with_context(|| format!("while looking up {path} in {name}"))?
            .ok_or_else(|| anyhow::anyhow!("{name}: no {path} in its ISO 9660 tree"))?;
        files += file_extents(&fs, node.ino, &mut ranges)
            .with_context(|| format!("while listing {path} in {name}"))?;
    }
    let ranges = coalesce(ranges);
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let before_data = present_bytes(&image, &ranges);
    let trouble = runtime.block_on(fill(&image, &ranges, !config.quiet))?;
    ensure_complete(config, &image, &ranges, trouble)?;
    let fetched = present_bytes(&image, &ranges).saturating_sub(before_data);
    let metadata = image
        .cached_bytes()
        .saturating_sub(before)
        .saturating_sub(fetched);
    if !config.quiet {
        eprintln!(
            "{name}: {files} files, {} of data; fetched {} ({} were cached already), {} of directories; complete and verified",
            HumanBytes(total),
            HumanBytes(fetched),
            HumanBytes(before_data),
            HumanBytes(metadata)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Adds the data extents of `ino` (a file, or every file below a directory) to `ranges`;
/// returns the number of files.
fn file_extents(fs: &IsoFs, ino: u64, ranges: &mut Vec<(u64, u64)>) -> anyhow::Result<usize> {
    let mut files = 0;
    let mut dirs = vec![ino];
    let mut visited = 0usize;
    while let Some(dir) = dirs.pop() {
        let entries = match fs.getattr(dir)?.kind {
            Kind::Dir => fs.readdir(dir)?,
            Kind::File => {
                ranges.extend(fs.extents(dir)?);
                files += 1;
                continue;
            }
            Kind::Symlink => continue,
        };
        for entry in entries {
            visited += 1;
            if visited > MAX_FILES_NODES {
                anyhow::bail!("more than {MAX_FILES_NODES} files and directories");
            }
            match entry.kind {
                Kind::Dir => dirs.push(entry.ino),
                Kind::File => {
                    ranges.extend(fs.extents(entry.ino)?);
                    files += 1;
                }
                Kind::Symlink => {}
            }
        }
    }
    Ok(files)
}

/// Sorted, with overlapping and touching ranges merged.
fn coalesce(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, len) in ranges {
        let end = start.saturating_add(len);
        match out.last_mut() {
            Some((s, l)) if s.saturating_add(*l) >= start => *l = (*l).max(end - *s),
            _ => out.push((start, len)),
        }
    }
    out
}

/// Bytes of `ranges` whose chunks the store's index marks present.
fn present_bytes(image: &Image, ranges: &[(u64, u64)]) -> u64 {
    let present = image.present_chunks();
    let cs = u64::from(image.chunk_size());
    ranges
        .iter()
        .flat_map(|&(start, len)| {
            let end = start.saturating_add(len).min(image.size());
            let chunks = if start < end {
                start / cs..(end - 1) / cs + 1
            } else {
                0..0
            };
            chunks.map(move |c| (c, start.max(c * cs), end.min((c + 1) * cs)))
        })
        .filter(|&(c, _, _)| present.get(c as usize).copied().unwrap_or(false))
        .map(|(_, from, to)| to - from)
        .sum()
}

/// Fails, with a last line saying how much of `ranges` is missing from the cache and why, unless
/// the store's index marks every chunk of them present (after [`fill`] has checked or fetched
/// and verified each one, and the writer has flushed).
fn ensure_complete(
    config: &Config,
    image: &Image,
    ranges: &[(u64, u64)],
    trouble: Option<String>,
) -> anyhow::Result<()> {
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let missing = total.saturating_sub(present_bytes(image, ranges));
    if missing == 0 {
        return Ok(());
    }
    let why = if config.offline {
        "isomount is offline, so nothing was fetched".to_string()
    } else if let Some(off) = image.caching_off() {
        format!("chunks could not be stored: {off}")
    } else if let Some(err) = trouble {
        err
    } else if let Some(bound) = &config.cache_limit {
        format!(
            "evicted to keep the cache under --cache-size {}",
            bound.given
        )
    } else {
        "dropped from the cache while fetching (evicted by another isomount process)".to_string()
    };
    anyhow::bail!(
        "{}: {} of {} are not cached: {why}",
        image.name(),
        HumanBytes(missing),
        HumanBytes(total)
    )
}

/// Reads `ranges` through the image core in windows, `DEPTH` in flight: a cached chunk is
/// checked as any cache hit is (and dropped and fetched again when it fails), a missing one is
/// fetched, verified and stored. Goes on past a failed window (the last line reports every gap);
/// stops early when chunks can no longer be stored. Returns the first failure, if any.
async fn fill(
    image: &Arc<Image>,
    ranges: &[(u64, u64)],
    show: bool,
) -> anyhow::Result<Option<String>> {
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let bar = super::progress_bar(total, &format!("{} ", image.name()), show);
    let mut windows = ranges.iter().flat_map(|&(start, len)| {
        (0..len.div_ceil(WINDOW)).map(move |k| {
            let at = start + k * WINDOW;
            (at, (start + len - at).min(WINDOW))
        })
    });
    let mut in_flight = VecDeque::new();
    let mut trouble: Option<String> = None;
    loop {
        while in_flight.len() < DEPTH && image.caching_off().is_none() {
            let Some((at, len)) = windows.next() else {
                break;
            };
            let img = image.clone();
            in_flight.push_back((
                len,
                tokio::spawn(async move { img.read_parts(at, len as usize).await.map(drop) }),
            ));
        }
        let Some((len, handle)) = in_flight.pop_front() else {
            break;
        };
        match handle.await.context("while fetching")? {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!("{e}");
                trouble.get_or_insert_with(|| e.to_string());
            }
        }
        bar.inc(len);
    }
    image.flush().await;
    bar.finish_and_clear();
    Ok(trouble)
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn ranges_coalesce() {
        let merged = coalesce(vec![
            (100, 10),
            (0, 50),
            (50, 10),
            (105, 20),
            (200, 0),
            (40, 5),
        ]);
        assert_eq!(merged, [(0, 60), (100, 25), (200, 0)]);
    }
}
