//! `isomount serve`: export image files as read-only iSCSI targets, one LUN each; a whole tree
//! of them, kept in step with the files (`--root`); and run as a service (readiness through
//! `sd_notify`, SIGHUP reloads and rescans, SIGTERM logs sessions out and exits).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::target::config::{self, AllowList, DeviceChoice, LoadedServeFile};
use crate::target::export::{export_file, stable_hash, ImageFile};
use crate::target::live::{self, Access, Control, Rule, TreeExporter, TreeSettings};
use crate::target::mirror::ImageSource;
use crate::target::scsi::LogicalUnit;
use crate::target::{stats, ExportedTarget, Exports, Limits, LunData, Server};
use crate::tree::{ImagePatterns, DEFAULT_PATTERNS};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Image files to serve, each a target with one LUN (with --catalog: catalog names, served
    /// as a lazy mirror through the verified cache)
    #[arg(required_unless_present_any = ["root", "config", "status"])]
    pub images: Vec<String>,
    /// Serve every image under DIR, picking up added, replaced and removed images live
    #[arg(long, value_name = "DIR", conflicts_with = "images")]
    pub root: Option<PathBuf>,
    /// Settings file (TOML): the tree, masks and CHAP per subtree, limits (see the README)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Which files under --root are images (repeatable; default *.iso and *.img)
    #[arg(long = "pattern", value_name = "GLOB")]
    pub patterns: Vec<String>,
    /// Address to listen on (port 0 picks a free port; the address is printed) [default:
    /// 127.0.0.1:3260]
    #[arg(long)]
    pub listen: Option<String>,
    /// Prefix of the target names: PREFIX:NAME [default: iqn.2026-01.org.isomount.serve]
    #[arg(long)]
    pub iqn_prefix: Option<String>,
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
    /// [default: auto]
    #[arg(long, value_enum)]
    pub device_type: Option<DeviceChoice>,
    /// With --root: rescan at least this often, whatever inotify reports [default: 60]
    #[arg(long, value_name = "SECS")]
    pub rescan_interval: Option<f64>,
    /// With --root: serve a new or replaced file once it has been left alone this long
    /// [default: 1]
    #[arg(long, value_name = "SECS")]
    pub settle: Option<f64>,
    /// Write per-image sessions and bytes served to FILE at every stats interval
    #[arg(long, value_name = "FILE")]
    pub stats_file: Option<PathBuf>,
    /// How often the stats line is logged and the stats file written [default: 60]
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<f64>,
    /// Connections served at once; the file descriptor limit is raised to fit, or the number
    /// lowered with a warning [default: 16384, or as many as the hard limit allows]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// How long a connection may take to log in [default: 15]
    #[arg(long, value_name = "SECS")]
    pub login_timeout: Option<f64>,
    /// How long an initiator may stay silent after a ping, or leave responses unread
    /// [default: 30]
    #[arg(long, value_name = "SECS")]
    pub nop_timeout: Option<f64>,
    /// How long sessions have to log out when asked (shutdown, a removed image) [default: 5]
    #[arg(long, value_name = "SECS")]
    pub logout_timeout: Option<f64>,
    /// Print the stats file of a running server (--stats-file, or the one --config names)
    #[arg(long)]
    pub status: bool,
}

/// What is served.
#[derive(Debug, Clone)]
enum Images {
    /// Image files named on the command line.
    Files(Vec<PathBuf>),
    /// Catalog names, re-exported from the verified cache.
    Catalog(Vec<String>),
    /// Every image under a root, live.
    Tree(TreeSettings),
}

/// `serve`'s validated settings: the command line over the configuration file over defaults.
#[derive(Debug, Clone)]
struct ServeSettings {
    listen: String,
    images: Images,
    iqn_prefix: String,
    device: DeviceChoice,
    /// Who may see the targets (a tree's subtrees may say otherwise).
    rule: Rule,
    limits: Limits,
    /// Whether the connection limit was asked for (else it is the default, fitted quietly).
    connections_asked: bool,
    stats_file: Option<PathBuf>,
    stats_interval: Duration,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:3260";

pub fn run(global: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.status {
        return status(&args);
    }
    let settings = resolve(global, &args)?;
    let runtime = super::runtime()?;
    runtime.block_on(serve(global, args, settings))
}

/// Read the command line and the configuration file into settings.
fn resolve(global: &Config, args: &ServeArgs) -> anyhow::Result<ServeSettings> {
    let file = args
        .config
        .as_deref()
        .map(LoadedServeFile::load)
        .transpose()?;
    let keys = file.as_ref().map(|f| &f.keys);
    let seconds = |cli: Option<f64>,
                   key: &str,
                   from_file: Option<&toml::Spanned<f64>>,
                   default: f64,
                   zero_ok: bool|
     -> anyhow::Result<Duration> {
        if let Some(v) = cli {
            if !v.is_finite() || v < 0.0 || (v == 0.0 && !zero_ok) || v > 1e9 {
                anyhow::bail!(
                    "--{}: {v} is not a usable number of seconds",
                    key.replace('_', "-")
                );
            }
            return Ok(Duration::from_secs_f64(v));
        }
        match (file.as_ref(), from_file) {
            (Some(f), Some(v)) => Ok(f.seconds(v, key, zero_ok)?),
            _ => Ok(Duration::from_secs_f64(default)),
        }
    };
    let listen = args
        .listen
        .clone()
        .or_else(|| keys.and_then(|k| k.listen.clone()))
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let iqn_prefix = args
        .iqn_prefix
        .clone()
        .or_else(|| keys.and_then(|k| k.iqn_prefix.as_ref().map(|p| p.get_ref().clone())))
        .unwrap_or_else(|| config::DEFAULT_IQN_PREFIX.to_string());
    config::target_name_for(&iqn_prefix, "x")?;
    let device = args
        .device_type
        .or_else(|| keys.and_then(|k| k.device_type))
        .unwrap_or(DeviceChoice::Auto);
    let cli_chap = config::chap_config(
        args.chap_user.as_deref(),
        args.chap_secret_file.as_deref(),
        args.chap_target_user.as_deref(),
        args.chap_target_secret_file.as_deref(),
    )?
    .map(Arc::new);
    let cli_rule = Rule {
        allow: AllowList::parse(&args.allow)?,
        chap: cli_chap.clone(),
    };
    // The file's rules, then the command line's over the whole tree.
    let mut access = match &file {
        Some(f) => f.access(Rule::default())?,
        None => Access::default(),
    };
    if !args.allow.is_empty() {
        access.default.allow = cli_rule.allow.clone();
    }
    if cli_chap.is_some() {
        access.default.chap = cli_chap;
    }
    let rule = access.default.clone();

    let nop_timeout = seconds(args.nop_timeout, "nop_timeout", None, 30.0, false)?;
    let asked_connections = args
        .max_connections
        .or_else(|| keys.and_then(|k| k.max_connections.as_ref().map(|m| *m.get_ref())));
    let limits = Limits {
        max_connections: asked_connections
            .unwrap_or(Limits::default().max_connections)
            .max(1),
        login_timeout: seconds(
            args.login_timeout,
            "login_timeout_seconds",
            keys.and_then(|k| k.login_timeout_seconds.as_ref()),
            Limits::default().login_timeout.as_secs_f64(),
            false,
        )?,
        nop_interval: (nop_timeout / 2).min(Limits::default().nop_interval),
        nop_timeout,
        logout_within: seconds(args.logout_timeout, "logout_timeout", None, 5.0, true)?,
    };
    let stats_interval = seconds(
        args.stats_interval,
        "stats_seconds",
        keys.and_then(|k| k.stats_seconds.as_ref()),
        60.0,
        false,
    )?;
    let stats_file = args.stats_file.clone().or_else(|| {
        let f = file.as_ref()?;
        f.keys.stats_file.as_deref().map(|p| f.resolve(p))
    });

    let root = match (&args.root, file.as_ref()) {
        (Some(root), _) => Some(root.clone()),
        (None, Some(f)) => f.keys.root.as_ref().map(|r| f.resolve(r.get_ref())),
        (None, None) => None,
    };
    let images = match root {
        Some(_) if !args.images.is_empty() => {
            anyhow::bail!("serve either IMAGE files or a --root tree, not both")
        }
        Some(root) => {
            let pattern_list: Vec<String> = if !args.patterns.is_empty() {
                args.patterns.clone()
            } else if let Some(p) = keys.and_then(|k| k.patterns.as_ref()) {
                p.get_ref().clone()
            } else {
                DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect()
            };
            let patterns = ImagePatterns::new(&pattern_list)?;
            Images::Tree(TreeSettings {
                root,
                patterns,
                iqn_prefix: iqn_prefix.clone(),
                device,
                access,
                settle: seconds(
                    args.settle,
                    "settle_seconds",
                    keys.and_then(|k| k.settle_seconds.as_ref()),
                    1.0,
                    true,
                )?,
                rescan_interval: seconds(
                    args.rescan_interval,
                    "rescan_seconds",
                    keys.and_then(|k| k.rescan_seconds.as_ref()),
                    60.0,
                    false,
                )?,
            })
        }
        None if args.images.is_empty() => {
            anyhow::bail!("nothing to serve: name IMAGE files, or a tree with --root DIR")
        }
        None => {
            if !access.subtrees.is_empty() {
                anyhow::bail!(
                    "[[subtree]] rules need a tree: give --root DIR or `root` in the file"
                );
            }
            if global.catalogs.is_empty() {
                Images::Files(args.images.iter().map(PathBuf::from).collect())
            } else {
                Images::Catalog(args.images.clone())
            }
        }
    };
    Ok(ServeSettings {
        listen,
        images,
        iqn_prefix,
        device,
        rule,
        limits,
        connections_asked: asked_connections.is_some(),
        stats_file,
        stats_interval,
    })
}

async fn serve(
    global: &Config,
    args: ServeArgs,
    mut settings: ServeSettings,
) -> anyhow::Result<ExitCode> {
    fit_file_descriptor_limit(&mut settings);
    // Signals are set up before anything else, so that none arriving early kills the server.
    let mut hangups = signal(SignalKind::hangup()).context("while setting up SIGHUP")?;
    let mut terminations = signal(SignalKind::terminate()).context("while setting up SIGTERM")?;
    let mut interrupts = signal(SignalKind::interrupt()).context("while setting up SIGINT")?;

    let mut tree: Option<(TreeExporter, live::TreeWatch, Option<Duration>)> = None;
    let exports = match &settings.images {
        Images::Files(paths) => {
            let mut targets = Vec::with_capacity(paths.len());
            for path in paths {
                targets
                    .push(Arc::new(export_named_file(path, &settings).with_context(
                        || format!("while exporting {}", path.display()),
                    )?));
            }
            Exports::new(targets)?
        }
        Images::Catalog(names) => {
            let mut targets = Vec::with_capacity(names.len());
            for name in names {
                targets.push(Arc::new(
                    export_catalog_image(global, name, &settings)
                        .await
                        .with_context(|| format!("while exporting {name}"))?,
                ));
            }
            Exports::new(targets)?
        }
        Images::Tree(tree_settings) => {
            let mut exporter = TreeExporter::new(tree_settings.clone());
            // Watched before it is scanned: an image added in between is not missed.
            let watch = live::TreeWatch::start(tree_settings);
            let started = std::time::Instant::now();
            let mut change =
                tokio::task::block_in_place(|| exporter.rescan(std::time::SystemTime::now()))
                    .with_context(|| format!("while scanning {}", tree_settings.root.display()))?;
            tracing::info!(
                "{}: {} images served in {:.0?}{}",
                tree_settings.root.display(),
                exporter.served(),
                started.elapsed(),
                if change.waiting > 0 {
                    format!(", {} settling", change.waiting)
                } else {
                    String::new()
                }
            );
            let exports = change.exports.take().unwrap_or_default();
            tree = Some((exporter, watch, change.recheck_in));
            exports
        }
    };
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("while listening on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let server = Server::with_exports(exports, settings.rule.chap.clone(), settings.limits);
    announce(&server, addr)?;

    let (control, control_rx) = tokio::sync::mpsc::channel::<Control>(4);
    if let Some((exporter, watch, recheck)) = tree {
        tokio::spawn(live::keep_in_step(
            server.clone(),
            exporter,
            watch,
            control_rx,
            recheck,
        ));
    }
    tokio::spawn(report_stats(
        server.clone(),
        addr.to_string(),
        settings.stats_file.clone(),
        settings.stats_interval,
    ));
    let serving = tokio::spawn(server.clone().run(listener));
    notify_service_manager(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "serving {} targets on {addr}",
            server.exports().len()
        )),
    ]);

    let why = loop {
        tokio::select! {
            _ = hangups.recv() => reload(global, &args, &settings, &control).await,
            _ = terminations.recv() => break "SIGTERM",
            _ = interrupts.recv() => break "SIGINT",
        }
    };
    notify_service_manager(&[sd_notify::NotifyState::Stopping]);
    let sessions = server.session_count();
    tracing::info!("{why}: asking {sessions} sessions to log out");
    let left = server.shut_down().await;
    if left > 0 {
        tracing::info!(
            "{left} sessions did not log out within {:?}; closing them",
            settings.limits.logout_within
        );
    }
    let _ = serving.await;
    if let Some(path) = &settings.stats_file {
        let text = stats::render(
            &server.snapshot(),
            &addr.to_string(),
            settings.stats_interval,
        );
        let _ = stats::write_file(path, &text);
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: read the configuration again and rescan the tree with it (listening address and
/// limits need a restart).
async fn reload(
    global: &Config,
    args: &ServeArgs,
    current: &ServeSettings,
    control: &tokio::sync::mpsc::Sender<Control>,
) {
    let fresh = match resolve(global, args) {
        Ok(fresh) => fresh,
        Err(e) => {
            tracing::warn!(
                "SIGHUP: configuration not reloaded: {}",
                super::one_line(&e)
            );
            let _ = control.send(Control::Rescan).await;
            return;
        }
    };
    if fresh.listen != current.listen {
        tracing::warn!("SIGHUP: a new listening address takes a restart");
    }
    match fresh.images {
        Images::Tree(tree) => {
            let _ = control.send(Control::Reconfigure(Box::new(tree))).await;
        }
        _ => tracing::info!("SIGHUP: a fixed list of images has nothing to rescan (see --root)"),
    }
}

/// Raise the soft file descriptor limit as far as the hard limit allows, and lower the
/// connection limit when even that is too few for it: with a warning when the limit was asked
/// for or ends up low.
fn fit_file_descriptor_limit(settings: &mut ServeSettings) {
    /// Fewer connections than this is worth a warning even when nobody asked for more.
    const LOW: usize = 1024;
    // Descriptors that are not connections: images (one each), the listener, the watch, logs.
    let images = match &settings.images {
        Images::Files(f) => f.len(),
        Images::Catalog(c) => c.len(),
        Images::Tree(_) => 4096,
    };
    let reserve = 64 + images;
    let wanted = (settings.limits.max_connections + reserve) as u64;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => {
            let fits = (limit as usize).saturating_sub(reserve).max(16);
            if settings.connections_asked || fits < LOW {
                tracing::warn!(
                    "file descriptor limit {limit} (the hard limit) leaves room for {fits} \
                     connections, not {}: raise it (ulimit -Hn, or LimitNOFILE= in the unit file)",
                    settings.limits.max_connections
                );
            } else {
                tracing::info!("file descriptor limit {limit}: up to {fits} connections");
            }
            settings.limits.max_connections = fits;
        }
        Ok(limit) => tracing::debug!("file descriptor limit {limit}"),
        Err(e) => tracing::warn!("cannot read or raise the file descriptor limit: {e}"),
    }
}

/// Tell a service manager how things stand (no-op without `NOTIFY_SOCKET`).
fn notify_service_manager(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Every stats interval: the log line, and the stats file.
async fn report_stats(
    server: Arc<Server>,
    listening: String,
    file: Option<PathBuf>,
    interval: Duration,
) {
    let mut reporter = stats::Reporter::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        if let Some(path) = &file {
            let text = stats::render(&server.snapshot(), &listening, interval);
            if let Err(e) = stats::write_file(path, &text) {
                tracing::warn!("stats file {}: {e}", path.display());
            }
        }
        ticks.tick().await;
        for line in reporter.lines(&server.snapshot()) {
            tracing::info!("{line}");
        }
    }
}

/// `serve --status`: print a running server's stats file, and say how old it is.
fn status(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let path = match (&args.stats_file, &args.config) {
        (Some(path), _) => path.clone(),
        (None, Some(config)) => {
            let file = LoadedServeFile::load(config)?;
            let path = file.keys.stats_file.as_deref().map(|p| file.resolve(p));
            path.with_context(|| format!("{} names no stats_file", config.display()))?
        }
        (None, None) => anyhow::bail!("--status needs --stats-file FILE or --config FILE"),
    };
    let (age, text) = stats::read_file(&path).map_err(anyhow::Error::msg)?;
    let interval = text
        .lines()
        .find_map(|l| l.strip_prefix("interval-seconds "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(60);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    // Written at every interval: three missed ones mean the server is gone or stuck.
    if age > Duration::from_secs(3 * interval + 5) {
        eprintln!(
            "isomount: {} was written {}s ago (every {interval}s expected): is the server running?",
            path.display(),
            age.as_secs()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Print the listening address and each target on stdout (the first line is what scripts and
/// tests read: `listening on ADDR`).
fn announce(server: &Server, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    let exports = server.exports();
    // A big tree's list is in the stats file; the first lines are enough here.
    const SHOWN: usize = 50;
    for t in exports.iter().take(SHOWN) {
        writeln!(
            out,
            "{}  lun 0  {:?}  {} bytes",
            t.name,
            t.lun.device(),
            t.lun.size()
        )?;
    }
    if exports.len() > SHOWN {
        writeln!(out, "… and {} more targets", exports.len() - SHOWN)?;
    }
    out.flush()?;
    Ok(())
}

/// An image file named on the command line as a target `PREFIX:STEM`.
fn export_named_file(path: &Path, settings: &ServeSettings) -> anyhow::Result<ExportedTarget> {
    let name = config::target_name(&settings.iqn_prefix, path)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let image = ImageFile {
        path,
        target_name: &name,
        product: &stem,
    };
    let (target, _) = export_file(
        &image,
        settings.device,
        &settings.rule.allow,
        settings.rule.chap.clone(),
    )?;
    Ok(target)
}

/// A catalog image as a target: reads go through the image core (cache, verification, upstream
/// fetch on a miss).
async fn export_catalog_image(
    global: &Config,
    name: &str,
    settings: &ServeSettings,
) -> anyhow::Result<ExportedTarget> {
    let target_name = config::target_name_for(&settings.iqn_prefix, name)?;
    let image = crate::image::open::named(global, name).await?;
    let magic = if settings.device == DeviceChoice::Auto {
        let at = config::ISO9660_MAGIC_OFFSET;
        let bytes = image
            .read(at, config::ISO9660_MAGIC.len())
            .await
            .with_context(|| format!("while reading the volume descriptor of {name}"))?;
        (bytes.len() == config::ISO9660_MAGIC.len()).then(|| bytes.to_vec())
    } else {
        None
    };
    let device = settings.device.resolve(magic.as_deref());
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
    Ok(ExportedTarget::new(
        target_name.clone(),
        LogicalUnit::new(device, size, name, &serial, &target_name),
        LunData::Source(Arc::new(source)),
        settings.rule.allow.clone(),
        settings.rule.chap.clone(),
    ))
}
