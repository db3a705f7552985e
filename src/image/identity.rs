//! Cache identities of images: `manifest:<pin>`, or for a LUN with no manifest
//! `lun:<iqn> <lun> <size> <serial> <device id>` (space-separated: IQNs hold colons).

use crate::cache::Cache;
use crate::catalog::Entry;
use crate::source::SourceIdentity;

/// The cache identity of a LUN with no manifest.
pub fn lun_identity(target: &str, lun: u64, id: &SourceIdentity) -> String {
    format!(
        "lun:{target} {lun} {} {} {}",
        id.size,
        id.serial.as_deref().unwrap_or("-"),
        id.device_id
            .as_deref()
            .map_or_else(|| "-".into(), hex::encode)
    )
}

/// The cache identity of a catalog entry, when it can be known without the network.
pub fn entry_identity(cache: &Cache, entry: &Entry) -> Option<String> {
    match (&entry.manifest, &entry.iscsi) {
        (Some(m), _) => Some(format!("manifest:{}", m.sha256)),
        (None, Some(iscsi)) => {
            offline_lun_identity(cache, &iscsi.target, iscsi.lun, Some(entry.size))
        }
        (None, None) => None,
    }
}

/// The one cached LUN identity for `target`/`lun` (and size), for offline use.
pub fn offline_lun_identity(
    cache: &Cache,
    target: &str,
    lun: u64,
    size: Option<u64>,
) -> Option<String> {
    let prefix = match size {
        Some(size) => format!("lun:{target} {lun} {size} "),
        None => format!("lun:{target} {lun} "),
    };
    let mut found: Vec<String> = cache
        .stores()
        .into_iter()
        .map(|s| s.identity)
        .filter(|i| i.starts_with(&prefix))
        .collect();
    found.dedup();
    (found.len() == 1).then(|| found.remove(0))
}

pub fn serial_of(identity: &str) -> Option<String> {
    identity
        .split(' ')
        .nth(3)
        .filter(|s| *s != "-")
        .map(str::to_string)
}
