//! The catalog `publish` writes, and its minisign signature when the catalog is signed.

use std::path::Path;

use anyhow::Context;

use crate::catalog;
use crate::signature::{self, SigningKey};

/// A catalog signer, made before any hashing starts so that a bad key or passphrase fails first.
pub struct Signer {
    pub(super) key: SigningKey,
    pub(super) expires: std::time::SystemTime,
}

/// Write the catalog at `path` (unless `unchanged`), and its signature when `signer` is given.
/// Unsigned, a signature left beside a changed catalog no longer matches it: that is said.
pub fn write_catalog(
    signer: Option<&Signer>,
    path: &Path,
    text: &[u8],
    unchanged: bool,
) -> anyhow::Result<()> {
    if let Some(signer) = signer {
        return signer.write(path, text, unchanged);
    }
    if unchanged {
        return Ok(());
    }
    catalog::write_atomic(path, text)
        .with_context(|| format!("while writing {}", path.display()))?;
    let stale = signature::signature_path(path);
    if stale.exists() {
        tracing::warn!(
            "{} no longer matches {}: sign it again with --sign KEY, or remove it",
            stale.display(),
            path.display()
        );
    }
    Ok(())
}

impl Signer {
    /// Write the catalog at `path` (unless `unchanged`) and its signature, one rename after the
    /// other. The version grows past that of the signature it replaces.
    fn write(&self, path: &Path, text: &[u8], unchanged: bool) -> anyhow::Result<()> {
        let sig_path = signature::signature_path(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let previous = std::fs::read_to_string(&sig_path)
            .ok()
            .and_then(|t| signature::previous_version(&t));
        let now = std::time::SystemTime::now();
        let claim = signature::next_claim(&name, previous, now, self.expires);
        let sig = self.key.sign(text, &claim)?;
        let files: Vec<(&Path, &[u8])> = if unchanged {
            vec![(&sig_path, sig.as_bytes())]
        } else {
            vec![(path, text), (&sig_path, sig.as_bytes())]
        };
        catalog::write_atomic_all(&files)
            .with_context(|| format!("while writing {}", sig_path.display()))?;
        eprintln!(
            "signed {} with key {}: version {}, expires {}",
            path.display(),
            self.key.id(),
            claim.version,
            humantime::format_rfc3339_seconds(claim.expires)
        );
        Ok(())
    }
}
