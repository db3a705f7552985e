//! `isomount [mount] NAME|URL MOUNTPOINT` and `isomount unmount MOUNTPOINT`.
//!
//! Like mount(8), the command returns only once the mount is usable, or fails with a message. It
//! forks before any thread exists; the child opens the image, mounts, and writes "ready" (or the
//! error) down a pipe; the parent waits for that line and exits 0 or 1 accordingly. `-f` stays in
//! the foreground. SIGINT and SIGTERM unmount cleanly; so does an external `umount`.
//!
//! `-o` takes mount(8)-style options so that `mount -t fuse.isomount NAME DIR` works (mount(8)
//! runs `mount.fuse3`, which runs `isomount NAME DIR -o OPTIONS`).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use fuser::{MountOption, SessionACL};

use crate::config::{CacheLimit, Config};
use crate::fs::fuse::FuseAdapter;
use crate::fs::{holds_iso9660, ImageReadAt, ImageView, Tree};
use crate::iso9660::IsoFs;
use crate::platform;

#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Catalog name or iscsi:// URL
    pub image: String,
    /// Where to mount
    pub mountpoint: PathBuf,
    /// Stay in the foreground
    #[arg(short, long)]
    pub foreground: bool,
    /// mount(8)-style options, comma-separated (ro, allow_other, ...)
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Seconds without a read before the mount lets go of the memory its reads left behind
    #[arg(long, value_name = "SECONDS", env = "ISOMOUNT_IDLE_RELEASE", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_release: u64,
    /// Test hook: IMAGE is a local file, served without catalog, cache or network.
    #[arg(long, hide = true)]
    pub local_file: bool,
}

#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    /// The mountpoint
    pub mountpoint: PathBuf,
}

/// How long the parent waits for the mount to come up before giving up on it.
const READY_DEADLINE: Duration = Duration::from_secs(300);
/// How long an unmount waits for the FUSE threads to finish.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// `-o` options, validated: what goes to the kernel/fusermount and what isomount itself uses.
#[derive(Debug, Default, PartialEq)]
struct MountConfig {
    kernel: Vec<MountOption>,
    acl: SessionACL,
    catalogs: Vec<String>,
    cache_dir: Option<PathBuf>,
    cache_limit: Option<CacheLimit>,
    offline: bool,
    read_timeout: Option<Duration>,
    log: Option<PathBuf>,
    nonempty: bool,
}

impl MountConfig {
    fn parse(options: &[String]) -> anyhow::Result<MountConfig> {
        let mut config = MountConfig::default();
        for option in options.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
            let (key, value) = match option.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (option, None),
            };
            let need = |value: Option<&str>| {
                value
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .with_context(|| format!("mount option {key} needs a value ({key}=...)"))
            };
            match key {
                "ro" | "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "owner"
                | "group" | "_netdev" | "nofail" | "dev" | "suid" | "async" => {}
                "rw" => tracing::warn!("the image is read-only; mounting read-only"),
                "nodev" | "nosuid" => {}
                "noexec" => config.kernel.push(MountOption::NoExec),
                "exec" => config.kernel.push(MountOption::Exec),
                "noatime" => config.kernel.push(MountOption::NoAtime),
                "atime" => config.kernel.push(MountOption::Atime),
                "allow_other" => config.acl = SessionACL::All,
                "allow_root" => config.acl = SessionACL::RootAndOwner,
                "default_permissions" => config.kernel.push(MountOption::DefaultPermissions),
                "fsname" => config.kernel.push(MountOption::FSName(need(value)?)),
                "subtype" => config
                    .kernel
                    .push(MountOption::CUSTOM(format!("subtype={}", need(value)?))),
                "catalog" => config.catalogs.push(need(value)?),
                "cache_dir" => config.cache_dir = Some(PathBuf::from(need(value)?)),
                "cache_size" => {
                    let limit = CacheLimit::parse(&need(value)?)
                        .with_context(|| format!("mount option `{option}`"))?;
                    config.cache_limit = Some(limit);
                }
                "offline" => config.offline = true,
                "read_timeout" => {
                    let text = need(value)?;
                    let secs = text
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=86_400).contains(s))
                        .with_context(|| {
                            format!("mount option read_timeout=`{text}`: seconds, 1 to 86400")
                        })?;
                    config.read_timeout = Some(Duration::from_secs(secs));
                }
                "log" => config.log = Some(PathBuf::from(need(value)?)),
                "nonempty" => config.nonempty = true,
                _ if key.starts_with("x-") || key == "comment" => {}
                _ => bail!("unknown mount option `{option}`"),
            }
        }
        Ok(config)
    }

    /// The global options with this mount's `-o catalog=`, `cache_dir=`, ... applied.
    fn global(&self, global: &Config) -> Config {
        let mut global = global.clone();
        global.catalogs.extend(self.catalogs.iter().cloned());
        if self.cache_dir.is_some() {
            global.cache_dir.clone_from(&self.cache_dir);
        }
        if self.cache_limit.is_some() {
            global.cache_limit.clone_from(&self.cache_limit);
        }
        global.offline |= self.offline;
        if let Some(timeout) = self.read_timeout {
            global.read_timeout = timeout;
        }
        global
    }

    /// The same options as `fusermount3 -o` text.
    fn fusermount_options(&self, image: &str) -> String {
        let config = self.fuser_config(image);
        let mut words: Vec<String> = config
            .mount_options
            .iter()
            .map(|option| match option {
                MountOption::RO => "ro".to_string(),
                MountOption::NoDev => "nodev".to_string(),
                MountOption::NoSuid => "nosuid".to_string(),
                MountOption::NoExec => "noexec".to_string(),
                MountOption::Exec => "exec".to_string(),
                MountOption::NoAtime => "noatime".to_string(),
                MountOption::Atime => "atime".to_string(),
                MountOption::DefaultPermissions => "default_permissions".to_string(),
                MountOption::FSName(name) => format!("fsname={}", name.replace(',', "_")),
                MountOption::Subtype(subtype) => format!("subtype={subtype}"),
                MountOption::CUSTOM(custom) => custom.clone(),
                MountOption::AutoUnmount => "auto_unmount".to_string(),
                MountOption::Dev => "dev".to_string(),
                MountOption::Suid => "suid".to_string(),
                MountOption::RW => "rw".to_string(),
                MountOption::DirSync => "dirsync".to_string(),
                MountOption::Sync => "sync".to_string(),
                MountOption::Async => "async".to_string(),
            })
            .collect();
        match self.acl {
            SessionACL::All => words.push("allow_other".to_string()),
            SessionACL::RootAndOwner => words.push("allow_root".to_string()),
            SessionACL::Owner => {}
        }
        words.join(",")
    }

    fn fuser_config(&self, image: &str) -> fuser::Config {
        let mut options = platform::fixed_mount_options();
        if !self
            .kernel
            .iter()
            .any(|o| matches!(o, MountOption::FSName(_)))
        {
            options.push(MountOption::FSName(format!("isomount:{image}")));
        }
        // As a kernel option (not fuser's Subtype, which only fusermount sees), so the mount
        // table says fuse.isomount whichever way the mount is made.
        if !self.kernel.iter().any(|o| match o {
            MountOption::CUSTOM(custom) => custom.starts_with("subtype="),
            _ => false,
        }) {
            options.extend(platform::subtype_option("isomount"));
        }
        options.extend(self.kernel.iter().cloned());
        let session = platform::fuse_session();
        let mut config = fuser::Config::default();
        config.mount_options = options;
        config.acl = self.acl;
        config.n_threads = Some(session.threads);
        config.clone_fd = session.clone_fd;
        config
    }
}

/// The name the image file gets: the catalog name, or for a URL the target's last word.
fn file_stem(image: &str) -> String {
    let stem = match image.strip_prefix("iscsi://") {
        Some(rest) => {
            let path = rest.split_once('/').map_or("", |(_, path)| path);
            let target = path.split('/').next().unwrap_or("");
            let lun = path.split('/').nth(1).unwrap_or("0");
            let word = target.rsplit(':').next().unwrap_or(target);
            if lun == "0" {
                word.to_string()
            } else {
                format!("{word}-lun{lun}")
            }
        }
        None => {
            let name = Path::new(image)
                .file_name()
                .map_or_else(|| image.to_string(), |n| n.to_string_lossy().into_owned());
            let bare = name
                .strip_suffix(".iso")
                .or_else(|| name.strip_suffix(".img"));
            bare.map_or(name.clone(), str::to_string)
        }
    };
    let stem = stem.replace(['/', '\0'], "_");
    if stem.is_empty() || stem == "." || stem == ".." {
        "image".to_string()
    } else {
        stem
    }
}

/// Unmount `path`, with the error saying where.
fn unmount_at(path: &Path, busy: platform::Busy) -> anyhow::Result<()> {
    platform::unmount(path, busy).map_err(|err| {
        let reason = err.to_string();
        anyhow::anyhow!("unmounting {} failed: {}", path.display(), reason.trim())
    })
}

/// `path` made absolute with its parent resolved: a stale mountpoint cannot itself be resolved.
fn resolve_parent(path: &Path) -> anyhow::Result<PathBuf> {
    let abs =
        std::path::absolute(path).with_context(|| format!("while resolving {}", path.display()))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .with_context(|| format!("while resolving {}", parent.display()))?
            .join(name)),
        _ => Ok(abs),
    }
}

/// A stale mount at `path` (its daemon gone): cleared when it is an isomount mount, else an
/// error saying how to clear it.
fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let at = resolve_parent(path)?;
    match platform::mounted_at(&at) {
        Some(kind) if platform::is_isomount_type(&kind) => {
            tracing::warn!(
                "{}: a stale isomount mount (its daemon is gone); clearing it",
                at.display()
            );
            unmount_at(&at, platform::Busy::GoAnyway)
        }
        kind => bail!(
            "{} is a stale mount{} whose daemon is gone (it no longer answers); \
             clear it with `isomount unmount {}` or `{}`",
            at.display(),
            kind.map(|k| format!(" ({k})")).unwrap_or_default(),
            at.display(),
            platform::manual_unmount_command(&at)
        ),
    }
}

/// The mountpoint, made absolute, after the checks mount(8) users expect. A stale isomount
/// mount there is cleared first.
fn check_mountpoint(path: &Path, nonempty: bool) -> anyhow::Result<PathBuf> {
    if platform::is_stale_mount(path) {
        clear_stale(path)?;
    }
    let meta = std::fs::metadata(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("mountpoint {} does not exist", path.display())
        }
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("no permission to reach mountpoint {}", path.display())
        }
        _ => anyhow::Error::new(err).context(format!("while checking {}", path.display())),
    })?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", path.display());
    }
    let path = path
        .canonicalize()
        .with_context(|| format!("while resolving {}", path.display()))?;
    if let Some(kind) = platform::mounted_at(&path) {
        bail!("{} is already mounted ({kind})", path.display());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    if !root && unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } != 0 {
        bail!(
            "no permission to mount on {} (it must be writable by you)",
            path.display()
        );
    }
    let mut entries = std::fs::read_dir(&path)
        .with_context(|| format!("no permission to read mountpoint {}", path.display()))?;
    if !nonempty && entries.next().is_some() {
        bail!(
            "mountpoint {} is not empty (use -o nonempty to mount over it)",
            path.display()
        );
    }
    Ok(path)
}

/// Where the mount reports "ready" or its error.
enum Ready {
    Foreground,
    /// The write end of the pipe the waiting parent reads, and where the log goes afterwards.
    Parent {
        pipe: std::fs::File,
        log: Option<PathBuf>,
    },
}

impl Ready {
    fn ok(self) -> anyhow::Result<()> {
        if let Ready::Parent { mut pipe, log } = self {
            detach_stdio(log.as_deref())?;
            pipe.write_all(b"ready\n")?;
        }
        Ok(())
    }

    fn fail(self, err: &anyhow::Error) {
        if let Ready::Parent { mut pipe, .. } = self {
            let _ = writeln!(pipe, "error: {}", super::one_line(err));
        }
    }
}

/// Point stdin and stdout at /dev/null and stderr at the log (or /dev/null), so that whoever ran
/// `isomount` (a shell pipeline, mount(8)) is not kept waiting on our copies of its pipes.
fn detach_stdio(log: Option<&Path>) -> anyhow::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let err = match log {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("while opening log {}", path.display()))?,
        None => null.try_clone()?,
    };
    for (from, to) in [(&null, 0), (&null, 1), (&err, 2)] {
        // SAFETY: both descriptors are open; dup2 replaces `to` atomically.
        if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
            return Err(std::io::Error::last_os_error()).context("while detaching from terminal");
        }
    }
    Ok(())
}

pub fn run(global: &Config, mut args: MountArgs) -> anyhow::Result<ExitCode> {
    platform::can_mount().map_err(anyhow::Error::msg)?;
    if args.local_file {
        args.image = std::path::absolute(&args.image)?
            .to_string_lossy()
            .into_owned();
    }
    let mut config = MountConfig::parse(&args.options)?;
    let global = absolute_paths(config.global(global));
    config.log = config
        .log
        .map(|log| std::path::absolute(&log).unwrap_or(log));
    let mountpoint = check_mountpoint(&args.mountpoint, config.nonempty)?;
    if args.foreground {
        serve(&global, &args, &config, &mountpoint, Ready::Foreground)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (read_end, write_end) = platform::pipe().context("while creating a pipe")?;
    // SAFETY: no thread has been started yet (the runtime is built after this point), so the
    // child may run arbitrary code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("while forking the mount daemon"),
        0 => {
            drop(read_end);
            // SAFETY: setsid has no preconditions; failure only means we already lead a session.
            unsafe { libc::setsid() };
            // Hold no directory busy; every path in use was made absolute above.
            let _ = std::env::set_current_dir("/");
            let ready = Ready::Parent {
                pipe: std::fs::File::from(write_end),
                log: config.log.clone(),
            };
            // Errors before "ready" went to the parent, later ones to the log.
            let code = i32::from(serve(&global, &args, &config, &mountpoint, ready).is_err());
            std::process::exit(code)
        }
        child => {
            drop(write_end);
            wait_ready(std::fs::File::from(read_end), child)
        }
    }
}

/// The daemon leaves its working directory, so relative catalog, key and cache paths become
/// absolute.
fn absolute_paths(mut global: Config) -> Config {
    for catalog in &mut global.catalogs {
        if !catalog.contains("://") {
            if let Ok(path) = std::path::absolute(Path::new(catalog.as_str())) {
                *catalog = path.to_string_lossy().into_owned();
            }
        }
    }
    for key in &mut global.pubkeys {
        if let Ok(path) = std::path::absolute(&*key) {
            *key = path;
        }
    }
    global.cache_dir = global
        .cache_dir
        .map(|dir| std::path::absolute(&dir).unwrap_or(dir));
    global
}

/// The parent's side: wait (bounded) for the child's "ready" or error line.
fn wait_ready(mut pipe: std::fs::File, child: libc::pid_t) -> anyhow::Result<ExitCode> {
    let mut poll = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout_ms = READY_DEADLINE.as_millis() as libc::c_int;
    let mut message = Vec::new();
    loop {
        // SAFETY: `poll` points at one valid pollfd.
        let n = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            // SAFETY: `child` is our own child process.
            unsafe { libc::kill(child, libc::SIGTERM) };
            bail!(
                "the mount did not become ready within {} s",
                READY_DEADLINE.as_secs()
            );
        }
        let mut buf = [0u8; 4096];
        let got = pipe.read(&mut buf)?;
        message.extend_from_slice(&buf[..got]);
        if got == 0 || message.contains(&b'\n') || message.len() > 64 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&message);
    let line = text.lines().next().unwrap_or("").trim();
    if line == "ready" {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(err) = line.strip_prefix("error: ") {
        bail!("{err}");
    }
    let mut status = 0;
    // SAFETY: `child` is our child; WNOHANG never blocks.
    unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
    bail!("the mount process exited before the mount was ready (status {status})")
}

/// Open the image, mount it, report ready, and serve until unmounted or signalled.
fn serve(
    global: &Config,
    args: &MountArgs,
    config: &MountConfig,
    mountpoint: &Path,
    ready: Ready,
) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    // Registered before mounting, so a signal that comes while the mount is made still ends in
    // an unmount rather than a stale mount.
    let stop = match runtime.block_on(async { StopSignals::register() }) {
        Ok(stop) => stop,
        Err(err) => {
            let err = anyhow::Error::new(err).context("while installing signal handlers");
            ready.fail(&err);
            return Err(err);
        }
    };
    let mounted = match mount(global, args, config, mountpoint, &runtime) {
        Ok(mounted) => mounted,
        Err(err) => {
            ready.fail(&err);
            return Err(err);
        }
    };
    let (session, mut unmounter) = mounted;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let worker = std::thread::Builder::new()
        .name("fuse-session".to_string())
        .spawn(move || {
            let result = session.run();
            let _ = done_tx.send(());
            result
        })
        .context("while starting the FUSE session")?;
    platform::raise_readahead(mountpoint, crate::fs::fuse::READ_AHEAD);
    // The daemon's code stays mapped in: a read after drop_caches or memory pressure would
    // otherwise stall on faults that read the binary back (two or three faults of 8 MiB each
    // in the first open of the image after drop_caches, measured).
    platform::keep_code_resident();
    if let Err(err) = ready.ok() {
        let _ = unmounter.unmount();
        return Err(err);
    }
    tracing::info!("mounted {} at {}", args.image, mountpoint.display());
    let signalled = runtime.block_on(wait_for_end(stop, done_rx));
    if signalled {
        tracing::info!("unmounting {}", mountpoint.display());
        if let Err(err) = unmounter.unmount() {
            tracing::error!("unmounting {} failed: {err}", mountpoint.display());
        }
    }
    let deadline = std::time::Instant::now() + SHUTDOWN_DEADLINE;
    while !worker.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if worker.is_finished() {
        if let Ok(Err(err)) = worker.join() {
            tracing::warn!("FUSE session ended with an error: {err}");
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

type Mounted = (fuser::Session<FuseAdapter>, Unmounter);

fn mount(
    global: &Config,
    args: &MountArgs,
    config: &MountConfig,
    mountpoint: &Path,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Mounted> {
    let view = runtime.block_on(open_view(global, args))?;
    // Like mount(8) with a dead device: fail now rather than on the first read when the image
    // is neither reachable nor cached.
    let first = (view.size().min(2048)) as usize;
    runtime
        .block_on(view.read(0, first))
        .with_context(|| format!("while reading the start of {}", args.image))?;
    let is_iso = runtime
        .block_on(holds_iso9660(view.as_ref()))
        .with_context(|| format!("while reading {}'s volume descriptor", args.image))?;
    // A volume the reader cannot make sense of still mounts, as the image alone.
    let files = is_iso
        .then(|| {
            let reader = ImageReadAt::new(view.clone(), runtime.handle().clone());
            IsoFs::open(Arc::new(reader))
                .map_err(|err| tracing::warn!("{}: no files/ view: {err}", args.image))
                .ok()
        })
        .flatten();
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let tree = Arc::new(Tree::new(
        view,
        &args.image,
        &file_stem(&args.image),
        is_iso,
        files,
        uid,
        gid,
    ));
    let adapter = FuseAdapter::new(tree, runtime.handle().clone());
    let failed = |err: std::io::Error| {
        let reason = match err.kind() {
            std::io::ErrorKind::PermissionDenied => format!("no permission: {err}"),
            _ => err.to_string(),
        };
        anyhow::anyhow!(
            "mounting {} failed: {}",
            mountpoint.display(),
            reason.trim()
        )
    };
    let fuser_config = config.fuser_config(&args.image);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 || !platform::mounts_through_helper() {
        let mut session =
            fuser::Session::new(adapter, mountpoint, &fuser_config).map_err(failed)?;
        let unmounter = Unmounter::Kernel(session.unmount_callable(), mountpoint.to_path_buf());
        return Ok((session, unmounter));
    }
    let fd = platform::helper_mount(mountpoint, &config.fusermount_options(&args.image))
        .map_err(failed)?;
    let session = fuser::Session::from_fd(adapter, fd, config.acl, fuser_config);
    match session {
        Ok(session) => Ok((session, Unmounter::Helper(mountpoint.to_path_buf()))),
        Err(err) => {
            let _ = platform::helper_unmount(mountpoint);
            Err(failed(err))
        }
    }
}

/// How this mount is undone: by `umount(2)` through fuser or by the helper.
enum Unmounter {
    Kernel(fuser::SessionUnmounter, PathBuf),
    Helper(PathBuf),
}

impl Unmounter {
    fn unmount(&mut self) -> std::io::Result<()> {
        match self {
            // A file still open makes umount(2) fail with EBUSY.
            Unmounter::Kernel(unmounter, mountpoint) => unmounter.unmount().or_else(|err| {
                if err.raw_os_error() != Some(libc::EBUSY) {
                    return Err(err);
                }
                platform::unmount_busy(mountpoint)
            }),
            Unmounter::Helper(mountpoint) => platform::helper_unmount(mountpoint),
        }
    }
}

async fn open_view(global: &Config, args: &MountArgs) -> anyhow::Result<Arc<dyn ImageView>> {
    let image = if args.local_file {
        let path = Path::new(&args.image);
        let file = crate::source::FileSource::open(path, 2048)
            .with_context(|| format!("while opening {}", args.image))?;
        crate::image::open::one_source(&args.image, Arc::new(file), global.read_timeout).await?
    } else {
        crate::image::open::named(global, &args.image).await?
    };
    image.release_when_idle(std::time::Duration::from_secs(args.idle_release));
    Ok(image)
}

/// SIGINT, SIGTERM and SIGHUP, caught: each means "unmount cleanly and exit".
pub(crate) struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Catch the three signals from now on (inside a tokio runtime).
    pub(crate) fn register() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Wait for one of them (or one that came since [`StopSignals::register`]); returns its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// Wait for a stop signal (true) or the end of the session (false: unmounted from outside).
async fn wait_for_end(mut stop: StopSignals, done: tokio::sync::oneshot::Receiver<()>) -> bool {
    tokio::select! {
        name = stop.recv() => {
            tracing::info!("{name}: unmounting");
            true
        }
        _ = done => false,
    }
}

pub fn unmount(args: UnmountArgs) -> anyhow::Result<ExitCode> {
    let stale = platform::is_stale_mount(&args.mountpoint);
    let path = if stale {
        resolve_parent(&args.mountpoint)?
    } else {
        args.mountpoint
            .canonicalize()
            .with_context(|| format!("while resolving {}", args.mountpoint.display()))?
    };
    if platform::mounted_at(&path).is_none() {
        bail!("{} is not mounted", path.display());
    }
    if stale {
        tracing::info!(
            "{}: stale (its daemon is gone); detaching it",
            path.display()
        );
        unmount_at(&path, platform::Busy::GoAnyway)?;
    } else {
        unmount_when_closed(&path)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `isomount unmount` waits for files being closed (a reader that has just finished,
/// the kernel's release still on its way) before it says the mount is busy.
const BUSY_GRACE: Duration = Duration::from_secs(2);

/// Unmount `path`, refusing while files in it are open, but giving files being closed
/// [`BUSY_GRACE`] to go.
fn unmount_when_closed(path: &Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_GRACE;
    loop {
        match platform::unmount(path, platform::Busy::Refuse) {
            Ok(()) => return Ok(()),
            Err(err) if platform::is_busy(&err) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) if platform::is_busy(&err) => bail!(
                "unmounting {} failed: files in it are still open (close them, or see which \
                 with `fuser -m {}`)",
                path.display(),
                path.display()
            ),
            Err(err) => {
                let reason = err.to_string();
                bail!("unmounting {} failed: {}", path.display(), reason.trim())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn mount_fuse3_options_are_understood() {
        // What mount.fuse3 passes for an fstab line "NAME /mnt/cd fuse.isomount ro,allow_other".
        let config =
            MountConfig::parse(&options(&["ro", "allow_other", "defaults", "dev", "suid"]))
                .unwrap();
        assert_eq!(config.acl, SessionACL::All);
        assert!(config.kernel.is_empty());
        let fuser = config.fuser_config("netbsd");
        assert!(fuser.mount_options.contains(&MountOption::RO));
        assert!(fuser.mount_options.contains(&MountOption::NoSuid));
        assert!(fuser
            .mount_options
            .contains(&MountOption::FSName("isomount:netbsd".to_string())));
        assert_eq!(
            config.fusermount_options("netbsd"),
            "ro,nodev,nosuid,fsname=isomount:netbsd,subtype=isomount,allow_other"
        );
    }

    #[test]
    fn isomount_options_reach_the_global_options() {
        let config = MountConfig::parse(&options(&[
            "catalog=/etc/x.toml",
            "cache_dir=/var/cache/iso",
            "offline",
            "log=/tmp/l",
        ]))
        .unwrap();
        let global = config.global(&Config::default());
        assert_eq!(global.catalogs, ["/etc/x.toml"]);
        assert_eq!(global.cache_dir, Some(PathBuf::from("/var/cache/iso")));
        assert!(global.offline);
        assert_eq!(config.log, Some(PathBuf::from("/tmp/l")));
    }

    #[test]
    fn bad_options_are_named() {
        let err = MountConfig::parse(&options(&["ro", "frobnicate"])).unwrap_err();
        assert_eq!(err.to_string(), "unknown mount option `frobnicate`");
        let err = MountConfig::parse(&options(&["catalog="])).unwrap_err();
        assert!(err.to_string().contains("catalog needs a value"));
    }

    #[test]
    fn file_stems_come_from_names_and_urls() {
        assert_eq!(file_stem("netbsd-5.0"), "netbsd-5.0");
        assert_eq!(
            file_stem("iscsi://127.0.0.1:3260/iqn.2009-04.org.example:netbsd-5.0/0"),
            "netbsd-5.0"
        );
        assert_eq!(
            file_stem("iscsi://h/iqn.2009-04.org.example:disk/2"),
            "disk-lun2"
        );
        assert_eq!(file_stem("/srv/images/x.iso"), "x");
        assert_eq!(file_stem(".."), "image");
    }

    #[test]
    fn mountpoint_problems_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = check_mountpoint(&missing, false).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let err = check_mountpoint(dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("is not empty"), "{err}");
        assert!(check_mountpoint(dir.path(), true).is_ok());
        let err = check_mountpoint(&dir.path().join("f"), false).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let err = check_mountpoint(Path::new("/"), true).unwrap_err();
        assert!(err.to_string().contains("/ is already mounted ("), "{err}");
    }
}
