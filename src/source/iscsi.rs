//! One portal of an iSCSI mirror as a [`BlockSource`]: logs in to the catalog's target and LUN
//! (with CHAP when the catalog names a secret file, or from an `iscsi://` URL), reads with as
//! many commands in flight as the range needs, and sorts the initiator's failures into the
//! seam's fault classes ([`classify`]).
//!
//! The session itself ([`crate::iscsi::IscsiLun`]) survives short outages on its own (it logs in
//! again and reissues); when it gives up, this adapter forgets it and the next read logs in anew.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures_util::stream::{FuturesOrdered, StreamExt, TryStreamExt};

use super::{Attempts, BlockSource, Pieces, SourceError, SourceIdentity};
use crate::catalog::ChapRef;
use crate::iscsi::{Chap, ConnectOptions, DigestOffer, IscsiError, IscsiLun, IscsiUrl, Secret};
use crate::scsi::ScsiError;

/// How long one portal's session keeps retrying before its reads fail and the image core tries
/// another source.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// The seam's class of an initiator failure.
pub fn classify(err: &IscsiError) -> SourceError {
    let text = err.to_string();
    match err {
        IscsiError::Connect { .. }
        | IscsiError::Lost { .. }
        | IscsiError::GaveUp { .. }
        | IscsiError::TimedOut { .. }
        | IscsiError::Closed => SourceError::Network(text),
        IscsiError::Protocol { .. }
        | IscsiError::Rejected { .. }
        | IscsiError::ShortRead { .. }
        | IscsiError::Scsi(ScsiError::Short { .. } | ScsiError::Malformed(_)) => {
            SourceError::Protocol(text)
        }
        IscsiError::NoSuchLun { .. } | IscsiError::IdentityChanged { .. } => {
            SourceError::Unusable(text)
        }
        IscsiError::OutOfRange => SourceError::OutOfRange(text),
        // A target that answered and refused (authentication, no such target) may be restarting:
        // retried later, like a network fault, but it answered.
        IscsiError::Login { .. } | IscsiError::Scsi(ScsiError::Status { .. }) => {
            SourceError::Io(text)
        }
    }
}

/// One portal of a mirror.
pub struct IscsiSource {
    portal: String,
    target: String,
    lun: u64,
    chap: ChapSource,
    /// The catalog's or URL's digest choice; `None` leaves it to `ISOMOUNT_DIGEST`.
    digest: Option<DigestOffer>,
    /// Bytes from the start of the LUN to read while connecting (`ConnectOptions::first_read`).
    first_read: Option<u32>,
    /// The session's bound on one read, reconnects included (`--read-timeout`).
    read_timeout: Duration,
    /// Bound on connecting and logging in: short when other mirrors can be tried instead.
    login_timeout: Duration,
    /// The live session; None before the first read and after the session gave up.
    session: tokio::sync::Mutex<Option<Arc<IscsiLun>>>,
    /// Logins ended, and how the last one failed.
    logins: Attempts,
    /// The last session, for `facts` (which must not wait).
    last: Mutex<Option<Arc<IscsiLun>>>,
}

enum ChapSource {
    None,
    File(ChapRef),
    Given(Chap),
}

/// Parse an iscsi:// URL (CHAP from the URL, else from libiscsi's environment variables).
pub fn parse_url(url: &str) -> anyhow::Result<IscsiUrl> {
    let mut parsed: IscsiUrl = url.parse().context("while parsing the iscsi:// URL")?;
    if parsed.chap.is_none() {
        parsed.chap = Chap::from_env();
    }
    Ok(parsed)
}

/// How a URL is named in messages and the cache: never with its secret.
pub fn url_label(url: &IscsiUrl) -> String {
    format!("{}/{}/{}", url.portal(), url.target, url.lun)
}

fn read_secret(chap: &ChapRef) -> Result<Chap, SourceError> {
    use std::os::unix::fs::MetadataExt;
    let path = &chap.secret_file;
    let meta = std::fs::metadata(path)
        .map_err(|e| SourceError::Io(format!("CHAP secret file {}: {e}", path.display())))?;
    if meta.mode() & 0o077 != 0 {
        return Err(SourceError::Unusable(format!(
            "CHAP secret file {} is readable by others; chmod 600 it",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| SourceError::Io(format!("CHAP secret file {}: {e}", path.display())))?;
    Ok(Chap {
        user: chap.user.clone(),
        secret: Secret::new(text.trim_end_matches(['\n', '\r']).to_string()),
        target_user: None,
        target_secret: None,
    })
}

fn identity_of(lun: &IscsiLun) -> SourceIdentity {
    let info = lun.info();
    SourceIdentity {
        size: info.capacity,
        block_size: info.block_size,
        serial: info.serial,
        device_id: info.device_id,
    }
}

impl IscsiSource {
    pub fn new(
        portal: &str,
        target: &str,
        lun: u64,
        chap: Option<ChapRef>,
        digest: Option<DigestOffer>,
    ) -> IscsiSource {
        let chap = chap.map_or(ChapSource::None, ChapSource::File);
        IscsiSource::with(portal, target, lun, chap, digest)
    }

    pub fn from_url(url: &IscsiUrl) -> IscsiSource {
        let chap = url.chap.clone().map_or(ChapSource::None, ChapSource::Given);
        IscsiSource::with(&url.portal(), &url.target, url.lun, chap, url.digest)
    }

    fn with(
        portal: &str,
        target: &str,
        lun: u64,
        chap: ChapSource,
        digest: Option<DigestOffer>,
    ) -> IscsiSource {
        IscsiSource {
            portal: portal.to_string(),
            target: target.to_string(),
            lun,
            chap,
            digest,
            first_read: None,
            read_timeout: crate::iscsi::lun::DEFAULT_READ_TIMEOUT,
            login_timeout: crate::iscsi::lun::SOLE_LOGIN_TIMEOUT,
            session: tokio::sync::Mutex::new(None),
            logins: Attempts::default(),
            last: Mutex::new(None),
        }
    }

    /// Read the LUN's first `bytes` while connecting, in the probe's round trip: what the image
    /// core asks for first. It still asks, and verifies them like any fetch.
    pub fn reading_first(mut self, bytes: u32) -> IscsiSource {
        self.first_read = Some(bytes);
        self
    }

    /// Other mirrors can serve the image: a portal slow to log in is passed over for them after
    /// [`LOGIN_TIMEOUT`](crate::iscsi::lun::LOGIN_TIMEOUT) instead of being waited for.
    pub fn among_others(mut self) -> IscsiSource {
        self.login_timeout = crate::iscsi::lun::LOGIN_TIMEOUT;
        self
    }

    /// No read of the session waits longer than `limit`, reconnects included.
    pub fn bounding_reads(mut self, limit: Duration) -> IscsiSource {
        self.read_timeout = limit;
        self
    }

    /// The live session, logging in when there is none.
    async fn session(&self) -> Result<Arc<IscsiLun>, SourceError> {
        let before = self.logins.ended();
        let mut session = self.session.lock().await;
        if let Some(lun) = &*session {
            return Ok(lun.clone());
        }
        // A login that failed while we waited for it is our answer too.
        if let Some(err) = self.logins.failed_since(before) {
            return Err(err);
        }
        let mut opts =
            ConnectOptions::new(vec![self.portal.clone()], self.target.clone(), self.lun);
        match &self.chap {
            ChapSource::None => {}
            ChapSource::File(c) => opts.chap = Some(read_secret(c)?),
            ChapSource::Given(c) => opts.chap = Some(c.clone()),
        }
        if let Some(digest) = self.digest {
            opts.digest = digest;
        }
        opts.give_up_after = GIVE_UP_AFTER;
        opts.first_read = self.first_read;
        opts.read_timeout = self.read_timeout;
        opts.login_timeout = self.login_timeout;
        let lun = IscsiLun::connect(opts).await.map_err(|e| classify(&e));
        self.logins.end(&lun);
        let lun = lun?;
        *session = Some(lun.clone());
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(lun.clone());
        Ok(lun)
    }

    /// Classify a failure of `lun`; a session that has given up is forgotten, so the next read
    /// logs in again.
    async fn failed(&self, lun: &Arc<IscsiLun>, err: &IscsiError) -> SourceError {
        let class = classify(err);
        if matches!(class, SourceError::Network(_)) {
            let mut session = self.session.lock().await;
            if session.as_ref().is_some_and(|s| Arc::ptr_eq(s, lun)) {
                *session = None;
            }
        }
        class
    }
}

#[async_trait]
impl BlockSource for IscsiSource {
    fn kind(&self) -> &'static str {
        "iscsi"
    }

    fn describe(&self) -> String {
        self.portal.clone()
    }

    async fn open(&self) -> Result<SourceIdentity, SourceError> {
        let lun = self.session().await?;
        Ok(identity_of(&lun))
    }

    /// One READ per `max_read` bytes (the negotiated MaxBurstLength), all in flight at once,
    /// each yielded as soon as it and the ones before it are in.
    fn read(&self, offset: u64, len: usize) -> Pieces<'_> {
        let reads = async move {
            let lun = self.session().await?;
            let step = u64::from(lun.max_read().max(1));
            let end = offset
                .checked_add(len as u64)
                .ok_or_else(|| SourceError::OutOfRange(format!("read at {offset} overflows")))?;
            let mut reads = FuturesOrdered::new();
            let mut at = offset;
            while at < end {
                let next = (at / step + 1).saturating_mul(step).min(end);
                let lun = lun.clone();
                reads.push_back(async move {
                    match lun.read_range(at, (next - at) as usize).await {
                        Ok(pieces) => Ok(futures_util::stream::iter(pieces.into_iter().map(Ok))),
                        Err(e) => Err(self.failed(&lun, &e).await),
                    }
                });
                at = next;
            }
            Ok::<_, SourceError>(reads.try_flatten())
        };
        futures_util::stream::once(reads).try_flatten().boxed()
    }

    fn facts(&self) -> Vec<(String, String)> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(lun) = last else {
            return Vec::new();
        };
        let info = lun.info();
        vec![
            ("vendor".into(), info.vendor.clone()),
            ("product".into(), info.product.clone()),
            ("serial".into(), info.serial.clone().unwrap_or_default()),
            ("block-size".into(), info.block_size.to_string()),
            ("connect".into(), info.connect.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_classified_for_the_image_core() {
        let portal = || "127.0.0.1:3260".to_string();
        let cases = [
            (
                IscsiError::Connect {
                    portal: portal(),
                    reason: "refused".into(),
                },
                "network",
            ),
            (
                IscsiError::GaveUp {
                    secs: 10,
                    last: "reset".into(),
                },
                "network",
            ),
            (IscsiError::Closed, "network"),
            (
                IscsiError::Lost {
                    portal: portal(),
                    reason: "reset".into(),
                },
                "network",
            ),
            (IscsiError::TimedOut { secs: 8 }, "network"),
            (
                IscsiError::Protocol {
                    portal: portal(),
                    reason: "unknown ITT".into(),
                },
                "protocol",
            ),
            (IscsiError::Rejected { reason: 4 }, "protocol"),
            (
                IscsiError::ShortRead {
                    wanted: 4096,
                    got: 0,
                },
                "protocol",
            ),
            (
                IscsiError::Scsi(ScsiError::Malformed("bad".into())),
                "protocol",
            ),
            (
                IscsiError::NoSuchLun {
                    target: "iqn.x".into(),
                    portal: portal(),
                    lun: 3,
                    available: Some(vec![
                        crate::scsi::Lun::from_number(0),
                        crate::scsi::Lun::from_number(1),
                    ]),
                },
                "unusable",
            ),
            (
                IscsiError::Login {
                    target: "iqn.x".into(),
                    portal: portal(),
                    reason: "authentication failure".into(),
                },
                "io",
            ),
            (
                IscsiError::IdentityChanged {
                    portal: portal(),
                    reason: "serial".into(),
                },
                "unusable",
            ),
            (IscsiError::OutOfRange, "out of range"),
            (
                IscsiError::Scsi(ScsiError::Status {
                    status: 2,
                    sense: None,
                }),
                "io",
            ),
        ];
        for (err, want) in cases {
            let class = match classify(&err) {
                SourceError::Network(_) => "network",
                SourceError::Protocol(_) => "protocol",
                SourceError::Unusable(_) => "unusable",
                SourceError::OutOfRange(_) => "out of range",
                SourceError::Io(_) => "io",
            };
            assert_eq!(class, want, "{err}");
            assert_eq!(classify(&err).to_string(), err.to_string());
        }
    }
}
