//! The read-only iSCSI target behind `isomount serve`.
//!
//! - [`scsi`]: a read-only disk or CD-ROM logical unit (SPC-4, SBC-3, MMC-6), without I/O.
//! - [`config`]: target names, device types, the CIDR allow-list (LUN masking), CHAP secrets and
//!   the `serve --config` file.
//! - [`login`]: the login phase (RFC 7143 §6, §12.1.3, §13), without I/O.
//! - [`session`]: one connection's full feature phase over tokio.
//! - [`export`]: an image file as an exported LUN (mapped, safe against truncation).
//! - [`live`]: a served tree kept in step with the files under it (rescans, inotify).
//! - [`stats`]: per-image sessions and bytes, the periodic log line and the stats file.
//! - [`mirror`]: a catalog image (verified, cached) as an exported LUN's source.
//!
//! Each exported image is one target with one LUN (LUN 0). The PDU, text and digest codec is
//! the initiator's (`crate::iscsi`). What a server exports is an [`Exports`] set, replaced whole
//! when a served tree changes: a login finds its target in the set of that moment and keeps it
//! (and the image's mapping) for the session's life, so a replaced image serves its old bytes to
//! the sessions that have it until they log out. A removed image is *withdrawn*: its sessions
//! get CHECK CONDITION for new commands and an asynchronous logout request (§11.9.1, event 1).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use crate::iscsi::Secret;
/// Where `serve` and the demo keep image bytes (re-exported for their callers).
pub use crate::source::MemorySource;

pub mod config;
pub mod export;
pub mod live;
pub mod login;
pub mod mirror;
pub mod scsi;
pub mod session;
pub mod stats;

pub use export::LunData;
pub use stats::TargetStats;

/// Why the target could not be set up or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A bad `serve` option or image.
    #[error("{0}")]
    Config(String),
    /// Socket I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// CHAP credentials the target demands (`user`, `secret`) and, for mutual CHAP, the name and
/// secret it answers an initiator's challenge with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapConfig {
    pub user: String,
    pub secret: Secret,
    pub target: Option<(String, Secret)>,
}

/// Whether an exported target still serves commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Served,
    /// Its image file is gone (or was changed in place): new commands get CHECK CONDITION.
    Withdrawn(Withdrawal),
}

/// Why a target was withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// The image file was removed (or renamed away).
    Removed,
    /// The image file was written in place: its mapping no longer shows the served version.
    ModifiedInPlace,
}

impl std::fmt::Display for Withdrawal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Withdrawal::Removed => "removed",
            Withdrawal::ModifiedInPlace => "modified in place",
        })
    }
}

/// [`Availability`] in one atomic byte, read on every command.
#[derive(Debug, Default)]
struct AvailabilityCell(AtomicU8);

impl AvailabilityCell {
    const SERVED: u8 = 0;
    const REMOVED: u8 = 1;
    const MODIFIED: u8 = 2;

    fn load(&self) -> Availability {
        match self.0.load(Ordering::Acquire) {
            Self::SERVED => Availability::Served,
            Self::MODIFIED => Availability::Withdrawn(Withdrawal::ModifiedInPlace),
            _ => Availability::Withdrawn(Withdrawal::Removed),
        }
    }

    /// Withdraw; false when it already was.
    fn withdraw(&self, why: Withdrawal) -> bool {
        let code = match why {
            Withdrawal::Removed => Self::REMOVED,
            Withdrawal::ModifiedInPlace => Self::MODIFIED,
        };
        self.0
            .compare_exchange(Self::SERVED, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// One exported image: a target name, its single LUN (LUN 0) and who may see it.
pub struct ExportedTarget {
    pub name: String,
    pub lun: scsi::LogicalUnit,
    pub data: LunData,
    pub allow: config::AllowList,
    /// CHAP this target demands (`None`: anonymous).
    pub chap: Option<Arc<ChapConfig>>,
    pub stats: TargetStats,
    availability: AvailabilityCell,
}

impl ExportedTarget {
    pub fn new(
        name: String,
        lun: scsi::LogicalUnit,
        data: LunData,
        allow: config::AllowList,
        chap: Option<Arc<ChapConfig>>,
    ) -> ExportedTarget {
        ExportedTarget {
            name,
            lun,
            data,
            allow,
            chap,
            stats: TargetStats::default(),
            availability: AvailabilityCell::default(),
        }
    }

    pub fn availability(&self) -> Availability {
        self.availability.load()
    }
}

impl std::fmt::Debug for ExportedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedTarget")
            .field("name", &self.name)
            .field("lun", &self.lun)
            .field("allow", &self.allow)
            .field("chap", &self.chap.is_some())
            .field("availability", &self.availability())
            .finish()
    }
}

/// The targets a server exports at one moment, in name order; looked up by name without regard
/// to case (iSCSI names are compared case-insensitively, RFC 7143 §4.2.7.1).
#[derive(Debug, Default)]
pub struct Exports {
    targets: Vec<Arc<ExportedTarget>>,
    by_name: HashMap<String, usize>,
}

impl Exports {
    /// Fails when two targets have the same name.
    pub fn new(mut targets: Vec<Arc<ExportedTarget>>) -> Result<Exports, TargetError> {
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        let mut by_name = HashMap::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            if by_name.insert(t.name.to_ascii_lowercase(), i).is_some() {
                return Err(TargetError::Config(format!(
                    "two images would both be served as {}: rename one of them",
                    t.name
                )));
            }
        }
        Ok(Exports { targets, by_name })
    }

    pub fn find(&self, name: &str) -> Option<&Arc<ExportedTarget>> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.targets[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ExportedTarget>> {
        self.targets.iter()
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// Bounds on what one connection may cost, and how long the server waits for things.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once (logging in or logged in); more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a connection may take to finish its login.
    pub login_timeout: Duration,
    /// Idle time before the target pings the initiator with a NOP-In.
    pub nop_interval: Duration,
    /// How long the initiator has to show life after a ping, or to take a batch of responses.
    pub nop_timeout: Duration,
    /// How long a logout request (shutdown, a removed image) waits before the connection closes.
    pub logout_within: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 16_384,
            login_timeout: Duration::from_secs(15),
            nop_interval: Duration::from_secs(15),
            nop_timeout: Duration::from_secs(30),
            logout_within: Duration::from_secs(5),
        }
    }
}

/// Where the server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Serving,
    /// No more connections; sessions were asked to log out.
    ShuttingDown,
}

/// The target: what it exports and the state shared by its connections.
pub struct Server {
    exports: RwLock<Arc<Exports>>,
    /// CHAP for discovery sessions (a normal session uses its target's).
    discovery_chap: Option<Arc<ChapConfig>>,
    limits: Limits,
    next_tsih: AtomicU16,
    connections: Arc<Semaphore>,
    sessions: Mutex<HashMap<u64, session::SessionHandle>>,
    next_session: AtomicU64,
    lifecycle: watch::Sender<Lifecycle>,
}

impl Server {
    /// A server of fixed targets, default limits, one CHAP setting for everything.
    pub fn new(
        targets: Vec<ExportedTarget>,
        chap: Option<ChapConfig>,
    ) -> Result<Arc<Server>, TargetError> {
        let chap = chap.map(Arc::new);
        let targets = targets
            .into_iter()
            .map(|mut t| {
                if t.chap.is_none() {
                    t.chap = chap.clone();
                }
                Arc::new(t)
            })
            .collect();
        let exports = Exports::new(targets)?;
        Ok(Server::with_exports(exports, chap, Limits::default()))
    }

    pub fn with_exports(
        exports: Exports,
        discovery_chap: Option<Arc<ChapConfig>>,
        limits: Limits,
    ) -> Arc<Server> {
        Arc::new(Server {
            exports: RwLock::new(Arc::new(exports)),
            discovery_chap,
            limits,
            next_tsih: AtomicU16::new(1),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            lifecycle: watch::Sender::new(Lifecycle::Serving),
        })
    }

    /// What is exported now.
    pub fn exports(&self) -> Arc<Exports> {
        self.exports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Export `next` from now on. Targets in the old set that are not in the new one (by
    /// identity) and that `withdraw` names are withdrawn and their sessions asked to log out.
    pub fn replace_exports(&self, next: Exports, withdraw: &[(Arc<ExportedTarget>, Withdrawal)]) {
        *self.exports.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        for (target, why) in withdraw {
            if target.availability.withdraw(*why) {
                tracing::info!("{}: withdrawn ({why})", target.name);
                self.request_logout(|t| t.is_some_and(|t| Arc::ptr_eq(t, target)));
            }
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn lifecycle(&self) -> Lifecycle {
        *self.lifecycle.borrow()
    }

    /// Sessions in the full feature phase now.
    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The targets sessions use now (each once), how many sessions are discovery sessions,
    /// and how many sessions there are.
    fn session_targets(&self) -> (Vec<Arc<ExportedTarget>>, usize, usize) {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut targets: HashMap<*const ExportedTarget, Arc<ExportedTarget>> = HashMap::new();
        let mut discovery = 0;
        for handle in sessions.values() {
            match handle.target() {
                Some(t) => {
                    targets.entry(Arc::as_ptr(t)).or_insert_with(|| t.clone());
                }
                None => discovery += 1,
            }
        }
        (targets.into_values().collect(), discovery, sessions.len())
    }

    /// A fresh, nonzero session handle.
    fn next_tsih(&self) -> u16 {
        loop {
            let tsih = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if tsih != 0 {
                return tsih;
            }
        }
    }

    fn register(&self, handle: session::SessionHandle) -> u64 {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.insert(id, handle);
        id
    }

    fn unregister(&self, id: u64) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Ask every session whose target (`None`: discovery) `which` picks to log out.
    fn request_logout(&self, which: impl Fn(Option<&Arc<ExportedTarget>>) -> bool) {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for handle in sessions.values() {
            if which(handle.target()) {
                handle.request_logout(self.limits.logout_within);
            }
        }
    }

    /// Stop accepting, ask every session to log out, and wait (at most the limits'
    /// `logout_within`) until they have; returns how many were still there.
    pub async fn shut_down(&self) -> usize {
        self.lifecycle.send_replace(Lifecycle::ShuttingDown);
        self.request_logout(|_| true);
        let deadline = tokio::time::Instant::now() + self.limits.logout_within;
        loop {
            let left = self.session_count();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Accept connections until the listener fails or the server shuts down.
    pub async fn run(self: Arc<Self>, listener: TcpListener) -> Result<(), TargetError> {
        let mut lifecycle = self.lifecycle.subscribe();
        loop {
            let permit = tokio::select! {
                permit = self.connections.clone().acquire_owned() => {
                    permit.map_err(|e| TargetError::Config(e.to_string()))?
                }
                _ = lifecycle.wait_for(|l| *l == Lifecycle::ShuttingDown) => return Ok(()),
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = lifecycle.wait_for(|l| *l == Lifecycle::ShuttingDown) => return Ok(()),
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on accepting.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let local = stream
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 3260)));
            let server = self.clone();
            tokio::spawn(async move {
                session::serve_connection(stream, peer, local, server).await;
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn target(name: &str) -> Arc<ExportedTarget> {
        let lun = scsi::LogicalUnit::new(scsi::DeviceType::Disk, 512, "t", "s", name);
        let data = LunData::Source(Arc::new(MemorySource::new(
            Bytes::from(vec![0u8; 512]),
            512,
        )));
        Arc::new(ExportedTarget::new(
            name.into(),
            lun,
            data,
            config::AllowList::default(),
            None,
        ))
    }

    #[test]
    fn exports_are_found_by_name_without_case_and_refuse_twins() {
        let exports = Exports::new(vec![target("iqn.x:b"), target("iqn.x:a")]).unwrap();
        let names: Vec<&str> = exports.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["iqn.x:a", "iqn.x:b"]);
        assert!(exports.find("IQN.X:B").is_some());
        assert!(exports.find("iqn.x:c").is_none());
        assert!(Exports::new(vec![target("iqn.x:a"), target("IQN.x:A")]).is_err());
    }

    #[test]
    fn a_target_is_withdrawn_once() {
        let t = target("iqn.x:a");
        assert_eq!(t.availability(), Availability::Served);
        assert!(t.availability.withdraw(Withdrawal::Removed));
        assert!(!t.availability.withdraw(Withdrawal::ModifiedInPlace));
        assert_eq!(
            t.availability(),
            Availability::Withdrawn(Withdrawal::Removed)
        );
    }
}
