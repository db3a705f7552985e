//! `isomount publish IMAGE --name NAME`: hash an image into a manifest and add or replace its
//! catalog entry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;

use crate::catalog::{self, PublishedEntry};
use crate::iscsi::lun::{list_luns, LunSummary};
use crate::iscsi::{ConnectOptions, IscsiError};
use crate::manifest::Manifest;

use super::args::{mirrors, PublishArgs};
use super::signed::write_catalog;

pub fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let (Some(image), Some(name)) = (&args.image, &args.name) else {
        anyhow::bail!("publish needs IMAGE and --name, or --root DIR");
    };
    let (portals, urls) = mirrors(&args)?;
    let target = match (&args.target, portals.is_empty()) {
        (Some(_), true) => anyhow::bail!("--target is for --portal (iSCSI mirrors); none given"),
        (None, false) => anyhow::bail!("--portal needs --target (the IQN serving the image)"),
        (target, _) => target.clone(),
    };
    for url in &urls {
        catalog::check_mirror_url(url).map_err(|e| anyhow::anyhow!("--url: {e}"))?;
    }
    let signer = args.sign.signer()?;
    let file =
        std::fs::File::open(image).with_context(|| format!("while opening {}", image.display()))?;
    let manifest = Manifest::build(
        std::io::BufReader::with_capacity(1 << 20, file),
        args.chunk_size,
        args.hash,
    )
    .with_context(|| format!("while hashing {}", image.display()))?;
    let bytes = manifest.to_bytes();
    let pin = manifest.pin();
    let manifest_path = args.manifest.clone().unwrap_or_else(|| {
        let dir = match &args.output {
            Some(out) => out.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => image.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        dir.join(format!("{name}.manifest"))
    });
    catalog::write_atomic(&manifest_path, &bytes)
        .with_context(|| format!("while writing {}", manifest_path.display()))?;
    let reference = match &args.output {
        Some(out) if manifest_path.parent() == out.parent() => manifest_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        _ => std::path::absolute(&manifest_path)
            .unwrap_or(manifest_path.clone())
            .display()
            .to_string(),
    };
    let lun = match (args.lun, &target) {
        (Some(lun), _) => lun,
        (None, Some(target)) => ask_lun(target, &portals, manifest.image_size())?,
        (None, None) => 0,
    };
    let entry = PublishedEntry {
        name: name.clone(),
        description: args.description.clone(),
        target,
        lun,
        portals,
        urls,
        size: manifest.image_size(),
        manifest: reference,
        manifest_sha256: pin.clone(),
    };
    match &args.output {
        Some(out) => {
            let text = catalog::with_entry(out, &entry)
                .with_context(|| format!("while updating {}", out.display()))?;
            write_catalog(signer.as_ref(), out, text.as_bytes(), false)?;
            eprintln!(
                "published {} ({} bytes, {} chunks of {}, {} hashes) in {}",
                name,
                manifest.image_size(),
                manifest.chunks(),
                manifest.chunk_size(),
                manifest.hash_alg(),
                out.display()
            );
        }
        None => {
            let tmp = tempfile_in(&manifest_path)?;
            catalog::upsert_entry(&tmp, &entry)?;
            let text = std::fs::read_to_string(&tmp)?;
            let _ = std::fs::remove_file(&tmp);
            print!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `publish` waits for one portal to say which LUN holds the image.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// The LUN of `target` whose capacity is `size`, asked of the first portal that answers (REPORT
/// LUNS, then READ CAPACITY of each); 0, the LUN `isomount serve` exports, when none answers. An
/// answer that rules the entry out (no such target, authentication, no LUN of that size, several)
/// is an error naming which.
fn ask_lun(target: &str, portals: &[String], size: u64) -> anyhow::Result<u64> {
    let runtime = crate::commands::runtime()?;
    runtime.block_on(async {
        let mut silent = Vec::new();
        for given in portals {
            let portal = catalog::normalize_portal(given).unwrap_or_else(|| given.clone());
            let opts = ConnectOptions::new(vec![portal.clone()], target, 0);
            let luns = match tokio::time::timeout(ASK_TIMEOUT, list_luns(&opts)).await {
                Ok(Ok(luns)) => luns,
                Ok(Err(e @ (IscsiError::Connect { .. } | IscsiError::Closed))) => {
                    silent.push(e.to_string());
                    continue;
                }
                Ok(Err(e)) => anyhow::bail!(
                    "asking {portal} which LUN of {target} holds the image: {e} \
                     (pass --lun N to publish without asking)"
                ),
                Err(_) => {
                    silent.push(format!("{portal}: no answer within {ASK_TIMEOUT:?}"));
                    continue;
                }
            };
            let describe = |l: &LunSummary| match l.capacity.and_then(|c| c.bytes()) {
                Some(bytes) => format!("LUN {}: {bytes} bytes", l.lun),
                None => format!(
                    "LUN {}: {}",
                    l.lun,
                    crate::scsi::device_type_name(l.device_type)
                ),
            };
            let fits: Vec<crate::scsi::Lun> = luns
                .iter()
                .filter(|l| l.capacity.and_then(|c| c.bytes()) == Some(size))
                .map(|l| l.lun)
                .collect();
            return match fits[..] {
                [lun] => {
                    let number = lun.number().with_context(|| {
                        format!(
                            "LUN {lun} of {target} at {portal} is {size} bytes, but a catalog \
                             cannot name it by number"
                        )
                    })?;
                    eprintln!("LUN {lun} (the LUN of {target} at {portal} that is {size} bytes)");
                    Ok(number)
                }
                [] => {
                    let all: Vec<String> = luns.iter().map(describe).collect();
                    anyhow::bail!(
                        "target {target} at {portal} has no LUN of the image's size, {size} bytes \
                         ({}); pass --lun N to publish anyway",
                        if all.is_empty() {
                            "it reports no LUNs".to_string()
                        } else {
                            all.join("; ")
                        }
                    )
                }
                _ => {
                    let all: Vec<String> = fits.iter().map(ToString::to_string).collect();
                    anyhow::bail!(
                        "LUNs {} of {target} at {portal} are all {size} bytes; pass --lun N",
                        all.join(", ")
                    )
                }
            };
        }
        eprintln!(
            "LUN 0, the LUN `isomount serve` exports: no portal answered to ask ({}); \
             pass --lun N to choose",
            silent.join("; ")
        );
        Ok(0)
    })
}

fn tempfile_in(beside: &Path) -> anyhow::Result<PathBuf> {
    let dir = beside.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!(".isomount-publish-{}.toml", std::process::id())))
}
