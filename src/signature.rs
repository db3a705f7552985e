//! Signed, expiring catalogs, in minisign's formats (Ed25519; <https://jedisct1.github.io/minisign/>).
//! The `minisign` crate makes keys and signs, `minisign-verify` checks; no cryptography here.
//!
//! A publisher signs a catalog with `isomount publish … --sign KEY`, which writes
//! `CATALOG.minisig` beside it (the reference tool checks it: `minisign -Vm CATALOG -p KEY.pub`).
//! Its trusted comment, signed together with the catalog, says which catalog it is, its version
//! and when it stops being valid:
//! ```text
//! trusted comment: isomount-catalog name=mirror.toml version=1767225600 expires=2026-12-29T13:00:00Z
//! ```
//! - `name`: the catalog's file name when it was signed. A catalog found under another name (a
//!   file or the last segment of a URL) is refused, so one of a publisher's catalogs cannot stand
//!   in for another, and versions are tracked per key and name.
//! - `version`: grows with every signing (the time in seconds, or one more than the version
//!   before when the clock is behind it). One older than the newest already seen for that key
//!   and name is refused (a rollback).
//! - `expires`: RFC 3339, UTC. Past it the catalog is refused for fetching; for [`GRACE`] more,
//!   its images stay readable from the cache alone (offline), with a warning.
//!
//! Users trust publishers with `--pubkey FILE` and with `*.pub` files in their catalog folders;
//! once any key is trusted, every catalog must carry a good signature by one of them.
//!
//! Newest versions seen are kept in the cache directory, one file per key and catalog name:
//! `CACHE/catalog-versions/KEYID.NAME` holding the version in decimal and a newline (KEYID as
//! minisign prints it: 16 upper-case hex digits), replaced atomically under the folder's `lock`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long past its expiry a catalog's cached images stay readable (offline only).
pub const GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a signature lasts unless `--expires` says otherwise (as `--expires` takes it).
pub const DEFAULT_VALIDITY: &str = "30d";
/// The first word of every trusted comment isomount writes and reads.
pub const COMMENT_TAG: &str = "isomount-catalog";
/// The environment variable that may hold a secret key's passphrase.
pub const PASSPHRASE_ENV: &str = "ISOMOUNT_PASSPHRASE";

/// Why a signature could not be made, or a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a minisign {what}")]
    Format { path: String, what: &'static str },
    #[error(
        "{0} is protected by a passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV}"
    )]
    NeedsPassphrase(String),
    #[error("{0}: wrong passphrase")]
    WrongPassphrase(String),
    #[error("{path} may be read by others (mode {mode:o}): chmod 600 {path}")]
    Exposed { path: String, mode: u32 },
    #[error("{0} exists; pass --force to replace it")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Why a catalog's signature is refused. Each says what a user needs to know, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not signed (no {0}), but publisher keys are trusted")]
    Unsigned(String),
    #[error("its signature is unreadable: {0}")]
    Malformed(String),
    #[error("signed by key {signed}, which is not trusted (trusted: {trusted})")]
    UnknownKey { signed: String, trusted: String },
    #[error("the signature by key {0} does not match: the catalog or its signature was altered")]
    Tampered(String),
    #[error("signed as `{signed}`, found as `{found}`: a catalog must keep the name it was signed under")]
    WrongName { signed: String, found: String },
    #[error(
        "version {version} is older than version {newest} already seen from key {key} (a rollback)"
    )]
    RolledBack {
        version: u64,
        newest: u64,
        key: String,
    },
    #[error("expired on {}, and its cached images could be read only until {}", rfc3339(*.expired), rfc3339(*.grace_ended))]
    Expired {
        expired: SystemTime,
        grace_ended: SystemTime,
    },
}

/// What a signature's trusted comment claims about the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The catalog's file name when signed.
    pub name: String,
    pub version: u64,
    pub expires: SystemTime,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whether `name` can stand in a trusted comment and a file name: no spaces, no `/`, no `=`.
pub fn valid_catalog_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | '\\' | '='))
}

impl Claim {
    /// The trusted comment (module docs).
    pub fn to_comment(&self) -> String {
        format!(
            "{COMMENT_TAG} name={} version={} expires={}",
            self.name,
            self.version,
            rfc3339(self.expires)
        )
    }

    /// Read a trusted comment written by [`Claim::to_comment`] (or by hand, for `minisign -t`).
    /// Unknown `key=value` words are passed over, so later versions can add some.
    pub fn parse(comment: &str) -> Result<Claim, String> {
        let mut words = comment.split_ascii_whitespace();
        if words.next() != Some(COMMENT_TAG) {
            return Err(format!(
                "its trusted comment does not start with `{COMMENT_TAG}`"
            ));
        }
        let (mut name, mut version, mut expires) = (None, None, None);
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!("`{word}` in its trusted comment is not KEY=VALUE"));
            };
            match key {
                "name" if valid_catalog_name(value) => name = Some(value.to_string()),
                "name" => return Err(format!("`{value}` is not a catalog file name")),
                "version" => {
                    version = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| format!("version `{value}` is not a whole number"))?,
                    )
                }
                "expires" => {
                    expires =
                        Some(humantime::parse_rfc3339(value).map_err(|e| {
                            format!("expires `{value}` is not an RFC 3339 time: {e}")
                        })?)
                }
                _ => {}
            }
        }
        let missing = |key: &str| format!("its trusted comment has no {key}=");
        Ok(Claim {
            name: name.ok_or_else(|| missing("name"))?,
            version: version.ok_or_else(|| missing("version"))?,
            expires: expires.ok_or_else(|| missing("expires"))?,
        })
    }
}

/// A key ID as minisign prints it.
fn key_id(keynum: &[u8]) -> String {
    let mut le = [0u8; 8];
    let n = keynum.len().min(8);
    le[..n].copy_from_slice(&keynum[..n]);
    format!("{:016X}", u64::from_le_bytes(le))
}

/// One publisher key a user trusts.
#[derive(Debug, Clone)]
struct TrustedKey {
    id: String,
    key: minisign_verify::PublicKey,
}

/// The publisher keys a user trusts. Empty: catalogs are not checked.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    /// Read minisign public key files (`KEY.pub`, as `isomount keygen` and `minisign -G` write).
    pub fn load(files: &[PathBuf]) -> Result<TrustedKeys, KeyError> {
        let mut trusted = TrustedKeys::default();
        for file in files {
            let text = std::fs::read_to_string(file).map_err(|source| KeyError::Io {
                path: file.display().to_string(),
                source,
            })?;
            trusted.add(&text).ok_or_else(|| KeyError::Format {
                path: file.display().to_string(),
                what: "public key",
            })?;
        }
        Ok(trusted)
    }

    /// Add the key in `text` (the two lines of a `.pub` file, or its base64 line alone).
    fn add(&mut self, text: &str) -> Option<()> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))?;
        let key = minisign_verify::PublicKey::from_base64(line).ok()?;
        let id = minisign::PublicKey::from_base64(line)
            .ok()
            .map(|k| key_id(k.keynum()))?;
        if !self.keys.iter().any(|k| k.id == id && k.key == key) {
            self.keys.push(TrustedKey { id, key });
        }
        Some(())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key IDs, for messages.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Check `catalog` against `signature` (the text of its `.minisig`, `None` when there is
    /// none): by a trusted key, matching, with a well-formed claim for the name `found_as`.
    /// Rollback and expiry are [`Signed::judge`]'s.
    pub fn verify(
        &self,
        found_as: &str,
        catalog: &[u8],
        signature: Option<&str>,
    ) -> Result<Signed, Refusal> {
        let Some(text) = signature else {
            return Err(Refusal::Unsigned(format!("{found_as}.minisig")));
        };
        let malformed = || Refusal::Malformed("not in minisign's signature format".into());
        let sig = minisign_verify::Signature::decode(text).map_err(|_| malformed())?;
        let signed_by = minisign::SignatureBox::from_string(text)
            .map(|b| key_id(b.keynum()))
            .map_err(|_| malformed())?;
        let Some(key) = self.keys.iter().find(|k| k.id == signed_by) else {
            return Err(Refusal::UnknownKey {
                signed: signed_by,
                trusted: self.ids().join(", "),
            });
        };
        key.key
            .verify(catalog, &sig, true)
            .map_err(|_| Refusal::Tampered(key.id.clone()))?;
        let claim = Claim::parse(sig.trusted_comment()).map_err(Refusal::Malformed)?;
        if claim.name != found_as {
            return Err(Refusal::WrongName {
                signed: claim.name,
                found: found_as.to_string(),
            });
        }
        Ok(Signed {
            key: key.id.clone(),
            claim,
        })
    }
}

/// A catalog whose signature is good: who signed it and what they claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub key: String,
    pub claim: Claim,
}

/// Whether a catalog may be used to fetch, or only to read what is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Unsigned with no key trusted, or signed and not expired.
    Fresh,
    /// Expired less than [`GRACE`] ago: its images are read from the cache alone.
    InGrace {
        expired: SystemTime,
        grace_ends: SystemTime,
    },
}

impl Signed {
    /// Refuse a rollback (`newest_seen` is the highest version seen before for this key and
    /// name) and an expiry older than [`GRACE`]; otherwise say how fresh the catalog is at `now`.
    pub fn judge(&self, newest_seen: Option<u64>, now: SystemTime) -> Result<Freshness, Refusal> {
        if let Some(newest) = newest_seen.filter(|&n| n > self.claim.version) {
            return Err(Refusal::RolledBack {
                version: self.claim.version,
                newest,
                key: self.key.clone(),
            });
        }
        let expired = self.claim.expires;
        if now <= expired {
            return Ok(Freshness::Fresh);
        }
        let grace_ends = expired.checked_add(GRACE).unwrap_or(expired);
        if now <= grace_ends {
            Ok(Freshness::InGrace {
                expired,
                grace_ends,
            })
        } else {
            Err(Refusal::Expired {
                expired,
                grace_ended: grace_ends,
            })
        }
    }
}

/// How catalogs are checked as they are loaded: the keys trusted, the versions seen, the time.
#[derive(Debug, Clone)]
pub struct Trust {
    pub keys: TrustedKeys,
    /// Where the newest versions seen are kept (none: rollback is not tracked).
    pub seen: Option<SeenVersions>,
    pub now: SystemTime,
}

impl Trust {
    /// Check the catalog `label` (a path or URL, for messages), found under the file name
    /// `found_as`, against its signature. With no key trusted every catalog is fresh. A catalog
    /// that passes has its version recorded; one in its grace period gets a warning.
    pub fn check(
        &self,
        label: &str,
        found_as: &str,
        catalog: &[u8],
        signature: Option<&str>,
    ) -> Result<Freshness, Refusal> {
        if self.keys.is_empty() {
            return Ok(Freshness::Fresh);
        }
        let signed = self.keys.verify(found_as, catalog, signature)?;
        let name = &signed.claim.name;
        let newest = self.seen.as_ref().and_then(|s| s.newest(&signed.key, name));
        let freshness = signed.judge(newest, self.now)?;
        if let Some(seen) = &self.seen {
            if let Err(e) = seen.record(&signed.key, name, signed.claim.version) {
                tracing::warn!(
                    "could not record the version of {label} in {}: {e}",
                    seen.dir.display()
                );
            }
        }
        if let Freshness::InGrace {
            expired,
            grace_ends,
        } = freshness
        {
            tracing::warn!(
                "{label}: expired on {}; its images are read from the cache alone, until {}",
                rfc3339(expired),
                rfc3339(grace_ends)
            );
        }
        Ok(freshness)
    }
}

/// The newest catalog version seen per key and catalog name (module docs for the layout).
#[derive(Debug, Clone)]
pub struct SeenVersions {
    dir: PathBuf,
}

impl SeenVersions {
    /// The record kept under the cache directory `cache_root`.
    pub fn in_cache(cache_root: &Path) -> SeenVersions {
        SeenVersions {
            dir: cache_root.join("catalog-versions"),
        }
    }

    fn file(&self, key: &str, name: &str) -> PathBuf {
        self.dir.join(format!("{key}.{name}"))
    }

    /// The newest version seen for `key` and `name`.
    pub fn newest(&self, key: &str, name: &str) -> Option<u64> {
        let path = self.file(key, name);
        let text = std::fs::read_to_string(&path).ok()?;
        match text.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(
                    "{}: damaged (not a version number); it is written again",
                    path.display()
                );
                None
            }
        }
    }

    /// Record `version` for `key` and `name` unless a newer one is recorded.
    pub fn record(&self, key: &str, name: &str, version: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))?;
        crate::iobuf::flock(&lock, true, true)?;
        if self.newest(key, name).is_some_and(|n| n >= version) {
            return Ok(());
        }
        crate::iobuf::write_atomic(&self.file(key, name), format!("{version}\n").as_bytes())
    }
}

/// Refuse a file of secrets that group or others may read.
fn check_private(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// A passphrase for a secret key: from a file (its first line; mode 0600) or [`PASSPHRASE_ENV`].
pub fn passphrase(file: Option<&Path>) -> Result<Option<String>, KeyError> {
    if let Some(file) = file {
        check_private(file)?;
        let text = std::fs::read_to_string(file).map_err(|source| KeyError::Io {
            path: file.display().to_string(),
            source,
        })?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(KeyError::Invalid(format!(
                "{}: the passphrase (its first line) is empty",
                file.display()
            )));
        }
        return Ok(Some(line));
    }
    Ok(std::env::var(PASSPHRASE_ENV).ok().filter(|p| !p.is_empty()))
}

/// Write a new key pair: the secret key at `secret` (mode 0600, encrypted when `passphrase` is
/// given) and the public key at `secret` + `.pub`. Returns the public key's path and key ID.
pub fn keygen(
    secret: &Path,
    passphrase: Option<String>,
    force: bool,
) -> Result<(PathBuf, String), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let public = public_key_path(secret);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| KeyError::Io { path, source }
    };
    for path in [secret, public.as_path()] {
        if path.exists() && !force {
            return Err(KeyError::Exists(path.display().to_string()));
        }
    }
    let encrypted = passphrase.is_some();
    let pair = match passphrase {
        Some(p) => minisign::KeyPair::generate_encrypted_keypair(Some(p)),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|e| KeyError::Sign(e.to_string()))?;
    let comment = if encrypted {
        "isomount secret key (passphrase-protected)"
    } else {
        "isomount secret key"
    };
    let secret_text = pair
        .sk
        .to_box(Some(comment))
        .map_err(|e| KeyError::Sign(e.to_string()))?
        .into_string();
    let public_text = pair
        .pk
        .to_box()
        .map_err(|e| KeyError::Sign(e.to_string()))?
        .into_string();
    let id = key_id(pair.pk.keynum());
    if force {
        match std::fs::remove_file(secret) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(secret)(e)),
            _ => {}
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(secret)
        .map_err(io(secret))?;
    file.write_all(secret_text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(secret))?;
    crate::iobuf::write_atomic(&public, public_text.as_bytes()).map_err(io(&public))?;
    Ok((public, id))
}

/// `CATALOG.minisig`.
pub fn signature_path(catalog: &Path) -> PathBuf {
    let mut name = catalog.as_os_str().to_os_string();
    name.push(".minisig");
    PathBuf::from(name)
}

/// `KEY.pub`.
pub fn public_key_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

/// A secret key ready to sign. Deliberately not `Debug` (the crate's `Debug` prints the key).
pub struct SigningKey {
    secret: minisign::SecretKey,
    id: String,
}

impl SigningKey {
    /// Read a minisign secret key (`isomount keygen`'s or `minisign -G`'s). It must not be
    /// readable by group or others; an encrypted one needs `passphrase`.
    pub fn load(path: &Path, passphrase: Option<String>) -> Result<SigningKey, KeyError> {
        let label = path.display().to_string();
        check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: label.clone(),
            source,
        })?;
        let not_a_key = || KeyError::Format {
            path: label.clone(),
            what: "secret key",
        };
        // The second line is the key itself, base64; its KDF field says whether it is encrypted.
        let raw = text
            .lines()
            .nth(1)
            .and_then(|line| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(line.trim())
                    .ok()
            })
            .and_then(|bytes| minisign::SecretKey::from_bytes(&bytes).ok())
            .ok_or_else(not_a_key)?;
        let boxed = minisign::SecretKeyBox::from_string(&text).map_err(|_| not_a_key())?;
        let secret = if raw.is_encrypted() {
            let Some(passphrase) = passphrase else {
                return Err(KeyError::NeedsPassphrase(label));
            };
            minisign::SecretKey::from_box(boxed, Some(passphrase)).map_err(|e| match e.kind() {
                minisign::ErrorKind::Verify => KeyError::WrongPassphrase(label.clone()),
                _ => not_a_key(),
            })?
        } else {
            minisign::SecretKey::from_unencrypted_box(boxed).map_err(|_| not_a_key())?
        };
        let id = key_id(secret.keynum());
        Ok(SigningKey { secret, id })
    }

    /// The key ID, as minisign prints it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The text of a `.minisig` for `catalog` carrying `claim`.
    pub fn sign(&self, catalog: &[u8], claim: &Claim) -> Result<String, KeyError> {
        if !valid_catalog_name(&claim.name) {
            return Err(KeyError::Invalid(format!(
                "a signed catalog's file name must have no spaces, '/' or '=': `{}`",
                claim.name
            )));
        }
        let signature = minisign::sign(
            None,
            &self.secret,
            catalog,
            Some(&claim.to_comment()),
            Some(&format!("signature from isomount secret key {}", self.id)),
        )
        .map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok(signature.into_string())
    }
}

/// The claim for the next signing of the catalog called `name`: a version above `previous` (the
/// version of the signature being replaced, if any), valid until `expires`.
pub fn next_claim(
    name: &str,
    previous: Option<u64>,
    now: SystemTime,
    expires: SystemTime,
) -> Claim {
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let version = previous.map_or(seconds, |p| seconds.max(p.saturating_add(1)));
    Claim {
        name: name.to_string(),
        version,
        expires,
    }
}

/// The version in an existing `.minisig`'s trusted comment, read without checking it (only to
/// make the next version larger).
pub fn previous_version(signature_text: &str) -> Option<u64> {
    let sig = minisign_verify::Signature::decode(signature_text).ok()?;
    Claim::parse(sig.trusted_comment()).ok().map(|c| c.version)
}

/// `--expires`: a duration from now (`30d`, `12h`, `2w`) or an RFC 3339 time, in the future.
pub fn parse_expiry(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(_) => {
            let span = humantime::parse_duration(text).map_err(|e| {
                format!("--expires `{text}`: not a duration (30d, 12h) or an RFC 3339 time: {e}")
            })?;
            now.checked_add(span)
                .ok_or_else(|| format!("--expires `{text}`: too far away"))?
        }
    };
    if at <= now {
        return Err(format!("--expires `{text}`: that is not in the future"));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    /// A fresh key pair, as `keygen` writes it, and the trust in its public half.
    fn pair(dir: &Path, name: &str) -> (SigningKey, TrustedKeys) {
        let secret = dir.join(name);
        let (public, id) = keygen(&secret, None, false).unwrap();
        let key = SigningKey::load(&secret, None).unwrap();
        assert_eq!(key.id(), id);
        (key, TrustedKeys::load(&[public]).unwrap())
    }

    fn claim(version: u64, expires: &str) -> Claim {
        Claim {
            name: "mirror.toml".into(),
            version,
            expires: at(expires),
        }
    }

    #[test]
    fn a_claim_round_trips_through_its_trusted_comment() {
        let c = claim(1767225600, "2026-12-29T13:00:00Z");
        assert_eq!(
            c.to_comment(),
            "isomount-catalog name=mirror.toml version=1767225600 expires=2026-12-29T13:00:00Z"
        );
        assert_eq!(Claim::parse(&c.to_comment()).unwrap(), c);
        let later = format!("{} mirrors=3", c.to_comment());
        assert_eq!(
            Claim::parse(&later).unwrap(),
            c,
            "unknown words are passed over"
        );
        for (bad, why) in [
            (
                "timestamp:1767225600 file:mirror.toml",
                "does not start with",
            ),
            (
                "isomount-catalog name=m.toml version=x expires=2026-12-29T13:00:00Z",
                "version `x`",
            ),
            (
                "isomount-catalog name=m.toml version=1 expires=tomorrow",
                "expires `tomorrow`",
            ),
            ("isomount-catalog name=m.toml version=1", "no expires="),
            (
                "isomount-catalog name=../x version=1 expires=2026-12-29T13:00:00Z",
                "not a catalog file name",
            ),
            ("isomount-catalog name=m.toml version", "not KEY=VALUE"),
        ] {
            let err = Claim::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn good_signatures_pass_and_every_fault_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (key, trusted) = pair(dir.path(), "k");
        let (other, _) = pair(dir.path(), "other");
        let catalog = b"[[image]]\nname = \"x\"\n".to_vec();
        let c = claim(7, "2026-12-29T13:00:00Z");
        let sig = key.sign(&catalog, &c).unwrap();
        let signed = trusted.verify("mirror.toml", &catalog, Some(&sig)).unwrap();
        assert_eq!(signed.claim, c);
        assert_eq!(signed.key, key.id());

        assert_eq!(
            trusted.verify("mirror.toml", &catalog, None),
            Err(Refusal::Unsigned("mirror.toml.minisig".into()))
        );
        let mut tampered = catalog.clone();
        tampered[0] = b'#';
        assert_eq!(
            trusted.verify("mirror.toml", &tampered, Some(&sig)),
            Err(Refusal::Tampered(key.id().to_string()))
        );
        let by_other = other.sign(&catalog, &c).unwrap();
        let err = trusted
            .verify("mirror.toml", &catalog, Some(&by_other))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "signed by key {}, which is not trusted (trusted: {})",
                other.id(),
                key.id()
            )
        );
        assert!(matches!(
            trusted.verify("other.toml", &catalog, Some(&sig)),
            Err(Refusal::WrongName { .. })
        ));
        assert!(matches!(
            trusted.verify("mirror.toml", &catalog, Some("junk\n")),
            Err(Refusal::Malformed(_))
        ));
        // A signed comment changed after signing is caught by the global signature.
        let forged = sig.replace("version=7", "version=9");
        assert!(matches!(
            trusted.verify("mirror.toml", &catalog, Some(&forged)),
            Err(Refusal::Tampered(_))
        ));
    }

    #[test]
    fn rollback_and_expiry_are_judged_on_a_given_clock() {
        let signed = Signed {
            key: "ABCD".into(),
            claim: claim(7, "2026-12-01T00:00:00Z"),
        };
        let before = at("2026-11-30T00:00:00Z");
        assert_eq!(signed.judge(None, before), Ok(Freshness::Fresh));
        assert_eq!(signed.judge(Some(7), before), Ok(Freshness::Fresh));
        assert_eq!(
            signed.judge(Some(8), before).unwrap_err().to_string(),
            "version 7 is older than version 8 already seen from key ABCD (a rollback)"
        );
        assert_eq!(
            signed.judge(Some(6), at("2026-12-20T00:00:00Z")),
            Ok(Freshness::InGrace {
                expired: at("2026-12-01T00:00:00Z"),
                grace_ends: at("2026-12-31T00:00:00Z"),
            })
        );
        assert_eq!(
            signed.judge(None, at("2027-01-01T00:00:00Z")).unwrap_err().to_string(),
            "expired on 2026-12-01T00:00:00Z, and its cached images could be read only until 2026-12-31T00:00:00Z"
        );
    }

    #[test]
    fn versions_grow_even_when_the_clock_goes_back() {
        let now = at("2026-12-01T00:00:00Z");
        let expires = at("2026-12-31T00:00:00Z");
        let first = next_claim("m.toml", None, now, expires);
        assert_eq!(first.version, 1796083200);
        assert_eq!(first.expires, expires);
        let behind = next_claim("m.toml", Some(1796083200 + 50), now, expires);
        assert_eq!(behind.version, 1796083200 + 51);
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = pair(dir.path(), "k");
        let sig = key.sign(b"x", &first).unwrap();
        assert_eq!(previous_version(&sig), Some(first.version));
        assert_eq!(previous_version("junk"), None);
    }

    #[test]
    fn seen_versions_only_go_up() {
        let dir = tempfile::tempdir().unwrap();
        let seen = SeenVersions::in_cache(dir.path());
        assert_eq!(seen.newest("ABCD", "m.toml"), None);
        seen.record("ABCD", "m.toml", 5).unwrap();
        seen.record("ABCD", "m.toml", 3).unwrap();
        assert_eq!(seen.newest("ABCD", "m.toml"), Some(5));
        assert_eq!(seen.newest("ABCD", "n.toml"), None);
        std::fs::write(dir.path().join("catalog-versions/ABCD.m.toml"), "garbage").unwrap();
        assert_eq!(seen.newest("ABCD", "m.toml"), None);
        seen.record("ABCD", "m.toml", 6).unwrap();
        assert_eq!(seen.newest("ABCD", "m.toml"), Some(6));
    }

    #[test]
    fn keys_are_private_and_passphrases_are_asked_for_only_when_needed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("k");
        keygen(&secret, None, false).unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            keygen(&secret, None, false),
            Err(KeyError::Exists(_))
        ));
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SigningKey::load(&secret, None).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let damaged = dir.path().join("damaged");
        keygen(&damaged, None, false).unwrap();
        std::fs::write(&damaged, "untrusted comment: x\nbm90IGEga2V5\n").unwrap();
        assert!(matches!(
            SigningKey::load(&damaged, None),
            Err(KeyError::Format { .. })
        ));

        let locked = dir.path().join("locked");
        keygen(&locked, Some("correct horse".into()), false).unwrap();
        assert!(matches!(
            SigningKey::load(&locked, None),
            Err(KeyError::NeedsPassphrase(_))
        ));
        assert!(matches!(
            SigningKey::load(&locked, Some("wrong".into())),
            Err(KeyError::WrongPassphrase(_))
        ));
        let key = SigningKey::load(&locked, Some("correct horse".into())).unwrap();
        let trusted = TrustedKeys::load(&[public_key_path(&locked)]).unwrap();
        let c = claim(1, "2030-01-01T00:00:00Z");
        let sig = key.sign(b"catalog", &c).unwrap();
        assert!(trusted
            .verify("mirror.toml", b"catalog", Some(&sig))
            .is_ok());
        let text = std::fs::read_to_string(&locked).unwrap();
        assert!(!text.contains("correct horse"));
    }

    #[test]
    fn expiry_is_a_duration_or_a_time_in_the_future() {
        let now = at("2026-12-01T00:00:00Z");
        assert_eq!(parse_expiry("30d", now), Ok(at("2026-12-31T00:00:00Z")));
        assert_eq!(parse_expiry("12h", now), Ok(at("2026-12-01T12:00:00Z")));
        assert_eq!(
            parse_expiry("2027-01-01T00:00:00Z", now),
            Ok(at("2027-01-01T00:00:00Z"))
        );
        assert!(parse_expiry("2020-01-01T00:00:00Z", now)
            .unwrap_err()
            .contains("not in the future"));
        assert!(parse_expiry("soon", now).is_err());
    }
}
