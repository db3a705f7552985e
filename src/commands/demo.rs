//! `isomount demo`: the whole path on one machine with no mirror anywhere.
//!
//! Serves the bundled sample CD (fixtures/sample.iso, built by fixtures/make-sample-iso.sh and
//! compiled into the binary) with the read-only target on a loopback port, writes a temporary
//! catalog and manifest for it, mounts it by name like any published image, prints the tree,
//! and waits for Ctrl-C (`--once`: prints and exits). Everything temporary is removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;

use crate::catalog::{upsert_entry, PublishedEntry};
use crate::config::Config;
use crate::fs::{ImageReadAt, ImageView};
use crate::iso9660::{IsoFs, Kind, ReadAt, ROOT_INO};
use crate::manifest::{HashAlg, Manifest, DEFAULT_CHUNK_SIZE};
use crate::source::iscsi::IscsiSource;
use crate::target::config::AllowList;
use crate::target::scsi::{DeviceType, LogicalUnit};
use crate::target::{ExportedTarget, LunData, MemorySource, Server};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Print the tree and exit instead of waiting for Ctrl-C
    #[arg(long)]
    pub once: bool,
}

/// The sample CD.
pub const SAMPLE_ISO: &[u8] = include_bytes!("../../fixtures/sample.iso");
/// The catalog name and target name the demo publishes it under.
pub const DEMO_NAME: &str = "sample";
pub const DEMO_IQN: &str = "iqn.2026-01.org.isomount.demo:sample";

pub fn run(config: &Config, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let work = WorkDir::create()?;
    let runtime = super::runtime()?;
    // Caught from the start: SIGTERM (timeout, a service manager) and SIGHUP (a closed terminal)
    // end the demo as Ctrl-C does, with the mount, its daemon and the folder gone.
    let mut stop = runtime
        .block_on(async { super::mount::StopSignals::register() })
        .context("while installing signal handlers")?;
    let portal = runtime.block_on(start_target())?;
    println!("serving the sample CD as {DEMO_IQN} on {portal}");

    let catalog = write_catalog(work.path(), &portal)?;
    println!("catalog: {}", catalog.display());
    let mountpoint = work.path().join("mnt");
    std::fs::create_dir(&mountpoint).context("while creating the mountpoint")?;
    let mountpoint = mountpoint
        .canonicalize()
        .context("while resolving the mountpoint")?;
    let cache = work.path().join("cache");

    // The mount runs as its own process (it forks, like mount(8)); the target keeps serving in
    // this one's runtime threads meanwhile. The guard unmounts whatever came up, even when the
    // mount command itself was interrupted.
    let mounted = Mounted(mountpoint.clone());
    let status = isomount_command(config)
        .args(["--catalog"])
        .arg(&catalog)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["mount", DEMO_NAME])
        .arg(&mountpoint)
        .status()
        .context("while starting the mount")?;
    if status.success() {
        println!("mounted {DEMO_NAME} at {}", mountpoint.display());
        print!("{}", tree(&mountpoint)?);
    } else {
        // The mount could not come up (no FUSE here, say): show the same CD read over iSCSI by
        // the initiator and the ISO 9660 reader instead.
        println!("mount unavailable; reading the CD over iSCSI from {portal} instead:");
        print!(
            "{}",
            runtime.block_on(iso_tree_over_iscsi(
                &portal,
                config.read_timeout,
                runtime.handle().clone()
            ))?
        );
    }

    if !args.once {
        println!("press Ctrl-C to unmount and stop");
        std::io::Write::flush(&mut std::io::stdout())?;
        let name = runtime.block_on(stop.recv());
        tracing::info!("{name}: stopping the demo");
    }
    drop(mounted);
    Ok(ExitCode::SUCCESS)
}

/// The sample's file tree, read through our initiator from the served LUN.
async fn iso_tree_over_iscsi(
    portal: &str,
    read_timeout: std::time::Duration,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<String> {
    let lun = Arc::new(IscsiSource::new(portal, DEMO_IQN, 0, None, None));
    let view: Arc<dyn ImageView> = crate::image::open::one_source(DEMO_IQN, lun, read_timeout)
        .await
        .with_context(|| format!("while logging in to {DEMO_IQN} at {portal}"))?;
    let reader: Arc<dyn ReadAt> = Arc::new(ImageReadAt::new(view, runtime));
    // The ISO reader waits on the runtime for each read: run it on the blocking pool.
    let listing = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let iso = IsoFs::open(reader).context("while reading the ISO 9660 volume")?;
        let mut out = String::from("/\n");
        let mut budget = 10_000usize;
        iso_walk(&iso, ROOT_INO, 1, &mut budget, &mut out)?;
        Ok(out)
    })
    .await
    .context("while listing the CD")??;
    Ok(listing)
}

fn iso_walk(
    iso: &IsoFs,
    dir: u64,
    depth: usize,
    budget: &mut usize,
    out: &mut String,
) -> anyhow::Result<()> {
    let mut entries = iso.readdir(dir)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let indent = "  ".repeat(depth);
    for entry in entries {
        if *budget == 0 {
            out.push_str(&format!("{indent}…\n"));
            return Ok(());
        }
        *budget -= 1;
        let name = entry.name.to_string_lossy();
        match entry.kind {
            Kind::Dir => {
                out.push_str(&format!("{indent}{name}/\n"));
                if depth < 16 {
                    iso_walk(iso, entry.ino, depth + 1, budget, out)?;
                }
            }
            Kind::Symlink => {
                let to = iso.readlink(entry.ino)?;
                out.push_str(&format!("{indent}{name} -> {}\n", to.to_string_lossy()));
            }
            Kind::File => {
                let size = iso.getattr(entry.ino)?.size;
                out.push_str(&format!("{indent}{name}  ({size} bytes)\n"));
            }
        }
    }
    Ok(())
}

/// Start the target on a free loopback port; it serves until the runtime is dropped.
async fn start_target() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("while listening on a loopback port")?;
    let addr = listener.local_addr()?;
    let size = SAMPLE_ISO.len() as u64;
    let target = ExportedTarget::new(
        DEMO_IQN.to_string(),
        LogicalUnit::new(
            DeviceType::Cd,
            size,
            "sample CD",
            "isomount-demo-1",
            DEMO_IQN,
        ),
        LunData::Source(Arc::new(MemorySource::new(
            Bytes::from_static(SAMPLE_ISO),
            2048,
        ))),
        AllowList::parse(&["127.0.0.0/8", "::1/128"])?,
        None,
    );
    let server = Server::new(vec![target], None)?;
    tokio::spawn(async move {
        if let Err(e) = server.run(listener).await {
            tracing::error!("demo target stopped: {e}");
        }
    });
    Ok(addr.to_string())
}

/// The manifest and catalog entry for the sample, as `isomount publish` would write them.
fn write_catalog(dir: &Path, portal: &str) -> anyhow::Result<PathBuf> {
    let manifest = Manifest::build(SAMPLE_ISO, DEFAULT_CHUNK_SIZE, HashAlg::default())
        .context("while building the sample's manifest")?;
    let manifest_path = dir.join("sample.manifest");
    std::fs::write(&manifest_path, manifest.to_bytes()).context("while writing the manifest")?;
    let catalog = dir.join("demo.toml");
    let entry = PublishedEntry {
        name: DEMO_NAME.to_string(),
        description: Some("isomount sample CD (isomount demo)".to_string()),
        target: Some(DEMO_IQN.to_string()),
        lun: 0,
        portals: vec![portal.to_string()],
        urls: Vec::new(),
        size: SAMPLE_ISO.len() as u64,
        manifest: "sample.manifest".to_string(),
        manifest_sha256: manifest.pin(),
    };
    upsert_entry(&catalog, &entry).context("while writing the demo catalog")?;
    Ok(catalog)
}

/// This binary with the caller's verbosity.
fn isomount_command(config: &Config) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("isomount"));
    let mut cmd = Command::new(exe);
    if config.quiet {
        cmd.arg("--quiet");
    }
    for _ in 0..config.verbose {
        cmd.arg("-v");
    }
    cmd
}

/// Unmounts on drop, when something is mounted there.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if crate::platform::mounted_at(&self.0).is_none() {
            return;
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("isomount"));
        match Command::new(exe).arg("unmount").arg(&self.0).status() {
            Ok(s) if s.success() => println!("unmounted {}", self.0.display()),
            _ => eprintln!("isomount: could not unmount {}", self.0.display()),
        }
    }
}

/// A private temporary folder, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let path = base.join(format!("isomount-demo-{}-{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(WorkDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("while creating a temporary folder"),
            }
        }
        anyhow::bail!("could not create a temporary folder in {}", base.display())
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tree under `root`, one line per entry: indented name, size or link target. Bounded in
/// depth and entries, so a strange mount cannot make it run away.
pub fn tree(root: &Path) -> anyhow::Result<String> {
    let mut out = format!("{}/\n", root.display());
    let mut budget = 10_000usize;
    walk(root, 1, &mut budget, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, depth: usize, budget: &mut usize, out: &mut String) -> anyhow::Result<()> {
    const MAX_DEPTH: usize = 16;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("while listing {}", dir.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    let indent = "  ".repeat(depth);
    for entry in entries {
        if *budget == 0 {
            out.push_str(&format!("{indent}…\n"));
            return Ok(());
        }
        *budget -= 1;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(entry.path())?;
        if meta.file_type().is_symlink() {
            let to = std::fs::read_link(entry.path()).unwrap_or_default();
            out.push_str(&format!("{indent}{name} -> {}\n", to.display()));
        } else if meta.is_dir() {
            out.push_str(&format!("{indent}{name}/\n"));
            if depth < MAX_DEPTH {
                walk(&entry.path(), depth + 1, budget, out)?;
            }
        } else {
            out.push_str(&format!("{indent}{name}  ({} bytes)\n", meta.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_a_small_iso9660_cd() {
        assert!(SAMPLE_ISO.len() < 1 << 20);
        assert_eq!(SAMPLE_ISO.len() % 2048, 0);
        assert_eq!(&SAMPLE_ISO[32769..32774], b"CD001");
    }

    #[test]
    fn tree_lists_in_name_order_with_sizes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/inner.txt"), "xyz").unwrap();
        std::fs::write(dir.path().join("a.txt"), "hello").unwrap();
        std::os::unix::fs::symlink("a.txt", dir.path().join("c")).unwrap();
        let text = tree(dir.path()).unwrap();
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "  a.txt  (5 bytes)",
                "  b/",
                "    inner.txt  (3 bytes)",
                "  c -> a.txt"
            ]
        );
    }
}
