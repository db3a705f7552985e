//! The read-only iSCSI target behind `isomount serve`.
//!
//! - [`scsi`]: a read-only disk or CD-ROM logical unit (SPC-4, SBC-3, MMC-6), without I/O.
//! - [`config`]: target names, device types, the CIDR allow-list (LUN masking) and CHAP secrets.
//! - [`login`]: the login phase (RFC 7143 §6, §12.1.3, §13), without I/O.
//! - [`session`]: one connection's full feature phase over tokio.
//! - [`mirror`]: a catalog image (verified, cached) as an exported LUN's source.
//!
//! Each exported image is one target with one LUN (LUN 0). The PDU, text and digest codec is
//! the initiator's (`crate::iscsi`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

pub use crate::iscsi::Secret;
use crate::source::BlockSource;
/// Where `serve` and the demo keep image bytes (re-exported for their callers).
pub use crate::source::MemorySource;

pub mod config;
pub mod login;
pub mod mirror;
pub mod scsi;
pub mod session;

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
#[derive(Debug, Clone)]
pub struct ChapConfig {
    pub user: String,
    pub secret: Secret,
    pub target: Option<(String, Secret)>,
}

/// One exported image: a target name, its single LUN (LUN 0) and who may see it.
pub struct ExportedTarget {
    pub name: String,
    pub lun: scsi::LogicalUnit,
    pub source: Arc<dyn BlockSource>,
    pub allow: config::AllowList,
}

impl std::fmt::Debug for ExportedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedTarget")
            .field("name", &self.name)
            .field("lun", &self.lun)
            .field("allow", &self.allow)
            .finish()
    }
}

/// The target: what it exports and the state shared by its connections.
pub struct Server {
    targets: Vec<Arc<ExportedTarget>>,
    chap: Option<Arc<ChapConfig>>,
    next_tsih: AtomicU16,
    connections: Arc<tokio::sync::Semaphore>,
}

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 128;

impl Server {
    pub fn new(targets: Vec<ExportedTarget>, chap: Option<ChapConfig>) -> Arc<Server> {
        Arc::new(Server {
            targets: targets.into_iter().map(Arc::new).collect(),
            chap: chap.map(Arc::new),
            next_tsih: AtomicU16::new(1),
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    pub fn targets(&self) -> &[Arc<ExportedTarget>] {
        &self.targets
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

    /// Accept connections until the listener fails.
    pub async fn run(self: Arc<Self>, listener: TcpListener) -> Result<(), TargetError> {
        loop {
            let permit = self
                .connections
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| TargetError::Config(e.to_string()))?;
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on accepting.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
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
