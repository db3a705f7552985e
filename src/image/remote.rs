//! The glue between the image core and the iSCSI initiator: a [`Mirror`] per portal that logs
//! in to the catalog's target and LUN (with CHAP when the catalog names a secret file).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;

use super::Mirror;
use crate::catalog::ChapRef;
use crate::iscsi::{Chap, ConnectOptions, DigestOffer, IscsiLun, IscsiUrl, Secret};
use crate::source::{BlockSource, SourceError, SourceIdentity};

/// How long one mirror's session keeps retrying before the image core tries the next mirror.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// One portal of a mirror.
pub struct IscsiMirror {
    portal: String,
    target: String,
    lun: u64,
    chap: ChapSource,
    /// The catalog's or URL's digest choice; `None` leaves it to `ISOMOUNT_DIGEST`.
    digest: Option<DigestOffer>,
    /// A session opened ahead of use (by `open`), handed out by the next `connect`.
    spare: Mutex<Option<Arc<IscsiLun>>>,
    /// The last session, for `facts`.
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
        return Err(SourceError::Io(format!(
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

impl IscsiMirror {
    pub fn new(
        portal: &str,
        target: &str,
        lun: u64,
        chap: Option<ChapRef>,
        digest: Option<DigestOffer>,
    ) -> IscsiMirror {
        IscsiMirror {
            portal: portal.to_string(),
            target: target.to_string(),
            lun,
            chap: chap.map_or(ChapSource::None, ChapSource::File),
            digest,
            spare: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    pub fn from_url(url: &IscsiUrl) -> IscsiMirror {
        IscsiMirror {
            portal: url.portal(),
            target: url.target.clone(),
            lun: url.lun,
            chap: url.chap.clone().map_or(ChapSource::None, ChapSource::Given),
            digest: url.digest,
            spare: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// Connect now (the URL path needs the LUN's identity before the cache can be chosen).
    pub async fn connect_url(url: &IscsiUrl) -> anyhow::Result<(IscsiMirror, SourceIdentity)> {
        let mirror = IscsiMirror::from_url(url);
        let lun = mirror
            .login()
            .await
            .with_context(|| format!("while connecting to {}", url_label(url)))?;
        let id = lun.identity();
        *mirror.spare.lock().unwrap_or_else(|e| e.into_inner()) = Some(lun);
        Ok((mirror, id))
    }

    async fn login(&self) -> Result<Arc<IscsiLun>, SourceError> {
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
        // Fail over to the next mirror rather than wait long on a dead one.
        opts.give_up_after = GIVE_UP_AFTER;
        let lun = IscsiLun::connect(opts)
            .await
            .map_err(|e| e.to_source_error())?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(lun.clone());
        Ok(lun)
    }
}

#[async_trait]
impl Mirror for IscsiMirror {
    fn describe(&self) -> String {
        self.portal.clone()
    }

    async fn connect(&self) -> Result<Arc<dyn BlockSource>, SourceError> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        match spare {
            Some(lun) => Ok(lun),
            None => Ok(self.login().await?),
        }
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
        ]
    }
}
