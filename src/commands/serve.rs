//! `isomount serve`: export image files as read-only iSCSI targets, one LUN each.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::source::{map_file, BlockSource, FileSource};
use crate::target::config::{self, AllowList, DeviceChoice};
use crate::target::mirror::ImageSource;
use crate::target::scsi::LogicalUnit;
use crate::target::{ChapConfig, ExportedTarget, MemorySource, Secret, Server};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Image files to serve, each a target with one LUN (with --catalog: catalog names, served
    /// as a lazy mirror through the verified cache)
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Address to listen on (port 0 picks a free port; the address is printed)
    #[arg(long, default_value = "127.0.0.1:3260")]
    pub listen: String,
    /// Prefix of the target names: PREFIX:STEM
    #[arg(long, default_value = config::DEFAULT_IQN_PREFIX)]
    pub iqn_prefix: String,
    /// Only initiators from these CIDR blocks see and may log in to the targets (repeatable)
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<String>,
    /// Require CHAP: the initiator's user name
    #[arg(long, requires = "chap_secret_file")]
    pub chap_user: Option<String>,
    /// File holding the initiator's CHAP secret (first line; mode 0600)
    #[arg(long, requires = "chap_user")]
    pub chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the name the target answers with
    #[arg(long, requires_all = ["chap_target_secret_file", "chap_user"])]
    pub chap_target_user: Option<String>,
    /// File holding the target's mutual CHAP secret (first line; mode 0600)
    #[arg(long, requires = "chap_target_user")]
    pub chap_target_secret_file: Option<PathBuf>,
    /// LUN type: a disk (512-byte blocks), a CD-ROM (2048), or auto (CD when ISO 9660)
    #[arg(long, value_enum, default_value = "auto")]
    pub device_type: DeviceChoice,
}

pub fn run(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let allow = AllowList::parse(&args.allow)?;
    let chap = chap_config(&args)?;
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let mut targets: Vec<ExportedTarget> = Vec::new();
        for image in &args.images {
            // With --catalog the arguments are catalog names: a lazy mirror of each.
            let target = if config.catalogs.is_empty() {
                export_file(Path::new(image), &args.iqn_prefix, args.device_type, &allow)
            } else {
                export_catalog_image(config, image, &args.iqn_prefix, args.device_type, &allow)
                    .await
            }
            .with_context(|| format!("while exporting {image}"))?;
            if targets.iter().any(|t| t.name == target.name) {
                anyhow::bail!(
                    "two images would both be served as {}: rename one of them",
                    target.name
                );
            }
            targets.push(target);
        }
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("while listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let server = Server::new(targets, chap);
        announce(&server, addr)?;
        tokio::select! {
            result = server.run(listener) => result.context("while serving")?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A catalog image as a target: reads go through the image core (cache, verification, upstream
/// fetch on a miss).
async fn export_catalog_image(
    config: &Config,
    name: &str,
    iqn_prefix: &str,
    device: DeviceChoice,
    allow: &AllowList,
) -> anyhow::Result<ExportedTarget> {
    let target_name = config::target_name_for(iqn_prefix, name)?;
    let image = crate::image::open::named(config, name).await?;
    let magic = if device == DeviceChoice::Auto {
        let at = config::ISO9660_MAGIC_OFFSET;
        let bytes = image
            .read(at, config::ISO9660_MAGIC.len())
            .await
            .with_context(|| format!("while reading the volume descriptor of {name}"))?;
        (bytes.len() == config::ISO9660_MAGIC.len()).then(|| bytes.to_vec())
    } else {
        None
    };
    let device = device.resolve(magic.as_deref());
    let size = image.size();
    if size == 0 {
        anyhow::bail!("{name} is empty");
    }
    let source = ImageSource::new(image, device.block_size());
    let serial = source.serial().unwrap_or_else(|| {
        format!(
            "{:016x}",
            stable_hash(&[target_name.as_bytes(), &size.to_be_bytes()])
        )
    });
    Ok(ExportedTarget {
        lun: LogicalUnit::new(device, size, name, &serial, &target_name),
        name: target_name,
        source: Arc::new(source),
        allow: allow.clone(),
    })
}

/// Print the listening address and each target on stdout (the first line is what scripts and
/// tests read: `listening on ADDR`).
fn announce(server: &Server, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    for t in server.targets() {
        writeln!(
            out,
            "{}  lun 0  {:?}  {} bytes",
            t.name,
            t.lun.device(),
            t.lun.size()
        )?;
    }
    out.flush()?;
    Ok(())
}

/// An image file as a target.
pub fn export_file(
    path: &Path,
    iqn_prefix: &str,
    device: DeviceChoice,
    allow: &AllowList,
) -> anyhow::Result<ExportedTarget> {
    let name = config::target_name(iqn_prefix, path)?;
    let device = device.resolve(iso9660_magic(path)?.as_ref().map(|m| m.as_slice()));
    let source = FileSource::open(path, device.block_size())
        .with_context(|| format!("while opening {}", path.display()))?;
    let size = source.size();
    if size == 0 {
        anyhow::bail!("{} is empty", path.display());
    }
    // Served from a mapping (one copy per READ, not two), through pread where it cannot be mapped.
    let source: Arc<dyn BlockSource> = match map_file(path) {
        Ok(mapped) if mapped.len() as u64 == size => {
            Arc::new(MemorySource::new(mapped, device.block_size()))
        }
        _ => Arc::new(source),
    };
    if size % u64::from(device.block_size()) != 0 {
        tracing::warn!(
            "{}: size {size} is not a multiple of {} bytes; the last block is padded with zeros",
            path.display(),
            device.block_size()
        );
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let serial = format!(
        "{:016x}",
        stable_hash(&[name.as_bytes(), &size.to_be_bytes()])
    );
    Ok(ExportedTarget {
        lun: LogicalUnit::new(device, size, &stem, &serial, &name),
        name,
        source,
        allow: allow.clone(),
    })
}

/// The 5 bytes where an ISO 9660 image has "CD001", if the file is long enough.
fn iso9660_magic(path: &Path) -> anyhow::Result<Option<[u8; 5]>> {
    use std::os::unix::fs::FileExt;
    let file =
        std::fs::File::open(path).with_context(|| format!("while opening {}", path.display()))?;
    let mut magic = [0u8; 5];
    match file.read_exact_at(&mut magic, config::ISO9660_MAGIC_OFFSET) {
        Ok(()) => Ok(Some(magic)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e).with_context(|| format!("while reading {}", path.display())),
    }
}

fn chap_config(args: &ServeArgs) -> anyhow::Result<Option<ChapConfig>> {
    let (Some(user), Some(file)) = (&args.chap_user, &args.chap_secret_file) else {
        return Ok(None);
    };
    let secret = Secret::new(config::read_secret_file(file)?);
    let target = match (&args.chap_target_user, &args.chap_target_secret_file) {
        (Some(name), Some(file)) => {
            let target_secret = Secret::new(config::read_secret_file(file)?);
            if target_secret.expose() == secret.expose() {
                anyhow::bail!("the mutual CHAP secret must differ from the initiator's secret");
            }
            Some((name.clone(), target_secret))
        }
        _ => None,
    };
    Ok(Some(ChapConfig {
        user: user.clone(),
        secret,
        target,
    }))
}

/// FNV-1a over several byte strings: a stable serial number for an exported image.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}
