//! Catalog files: TOML files that map the names users type to iSCSI targets, mirrors and pinned
//! manifests (format in SPEC.md, "Catalog files"; an annotated example in `catalogs/`).
//!
//! Parsing is strict: an unknown key, a duplicate name or a malformed value is an error naming
//! the file, the line and the key. Catalogs come from `--catalog` (a file, a folder of `*.toml`,
//! or an https URL whose last good copy is kept for offline use) or the default search path
//! `$ISOMOUNT_CATALOGS`, `$XDG_CONFIG_HOME/isomount/catalogs/`, `/etc/isomount/catalogs/`.
//!
//! Signed catalogs (`crate::signature`): when publisher keys are trusted (`--pubkey FILE`, or
//! `*.pub` files in a catalog folder that is read), every catalog must come with a good
//! signature, `CATALOG.minisig` beside it (or at URL.minisig). A catalog that fails is left out
//! with one warning naming it and the reason, and a name that is then not found says so.

pub use crate::iobuf::{write_atomic, write_atomic_all};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::iscsi::DigestOffer;
use crate::signature::{
    signature_path, Freshness, KeyError, Refusal, SeenVersions, Trust, TrustedKeys,
};

/// Largest catalog or manifest fetched over https.
const MAX_DOWNLOAD: u64 = 256 << 20;
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why catalogs could not be loaded or a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: key `{key}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{file}:{line}: key `name`: duplicate image name `{name}` (first defined at {first})")]
    Duplicate {
        file: String,
        line: usize,
        name: String,
        first: String,
    },
    #[error("no image named `{name}` in the catalogs{}{}", suggest(.suggestions), refused_note(.refused))]
    NotFound {
        name: String,
        suggestions: Vec<String>,
        /// Catalogs left out, each "SOURCE: reason".
        refused: Vec<String>,
    },
    #[error("no catalogs found (searched {0}); pass --catalog or set ISOMOUNT_CATALOGS")]
    NoCatalogs(String),
    #[error("{0}: plain http is refused; use an https URL")]
    PlainHttp(String),
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    /// What was fetched (or kept) failed its check, and no copy that passes is at hand.
    #[error("{url}: {reason}")]
    Refused { url: String, reason: String },
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn refused_note(refused: &[String]) -> String {
    if refused.is_empty() {
        String::new()
    } else {
        format!(" (refused: {})", refused.join("; "))
    }
}

fn suggest(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        format!("; did you mean {}?", quoted.join(" or "))
    }
}

/// Where an entry's manifest lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestLocation {
    Path(PathBuf),
    Url(String),
}

/// A pinned manifest reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRef {
    pub location: ManifestLocation,
    /// 64 lowercase hex digits.
    pub sha256: String,
}

impl ManifestRef {
    /// The manifest's bytes from where the catalog says it is: a file's as they are (the caller
    /// checks them against the pin); an https URL's only when they match the pin. The last copy
    /// fetched that matches is kept at `kept` and serves offline, or when the fetch fails or
    /// what is fetched does not match.
    pub fn read(&self, kept: &Path, offline: bool) -> Result<Vec<u8>, CatalogError> {
        match &self.location {
            ManifestLocation::Path(p) => std::fs::read(p).map_err(|source| CatalogError::Io {
                path: p.display().to_string(),
                source,
            }),
            ManifestLocation::Url(u) => {
                let pinned = |bytes: &[u8]| {
                    crate::manifest::Manifest::parse_pinned(bytes, &self.sha256)
                        .map(drop)
                        .map_err(|e| e.to_string())
                };
                fetch_kept(u, Some(kept), offline, &pinned)
            }
        }
    }

    /// The file or URL, for messages.
    pub fn describe(&self) -> String {
        match &self.location {
            ManifestLocation::Path(p) => p.display().to_string(),
            ManifestLocation::Url(u) => u.clone(),
        }
    }
}

/// CHAP settings: the secret stays in its own file and is read only when logging in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapRef {
    pub user: String,
    pub secret_file: PathBuf,
}

/// An image's iSCSI mirrors: one target and LUN, reached on each portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiMirrors {
    pub target: String,
    pub lun: u64,
    /// "host:port", mirrors in order of preference.
    pub portals: Vec<String>,
    pub chap: Option<ChapRef>,
    /// `digest = "crc32c"` or `"none"`; unset leaves the choice to the target.
    pub digest: Option<DigestOffer>,
}

/// One `[[image]]` entry, validated: it has iSCSI mirrors, web mirrors or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub description: Option<String>,
    /// `target`, `lun`, `portals` (and CHAP, digests): None when the image has only web mirrors.
    pub iscsi: Option<IscsiMirrors>,
    /// `urls`: the image file on web mirrors (http or https), in order of preference after the
    /// portals. An entry with URLs always has a manifest.
    pub urls: Vec<String>,
    pub size: u64,
    pub manifest: Option<ManifestRef>,
    /// "file:line" of the entry, for messages.
    pub origin: String,
    /// Whether its catalog may still be used to fetch (an expired signed catalog's images are
    /// read from the cache alone during the grace period).
    pub freshness: Freshness,
}

impl Entry {
    /// The iSCSI portals, none when the image has only web mirrors.
    pub fn portals(&self) -> &[String] {
        self.iscsi.as_ref().map_or(&[], |i| &i.portals)
    }

    /// Every mirror in order of preference: portals, then URLs (without user or query).
    pub fn mirrors(&self) -> Vec<String> {
        let urls = self.urls.iter().map(|u| match reqwest::Url::parse(u) {
            Ok(url) => crate::http::url_label(&url),
            Err(_) => u.clone(),
        });
        self.portals().iter().cloned().chain(urls).collect()
    }
}

/// All entries of all catalogs that were loaded.
#[derive(Debug, Default)]
pub struct Catalog {
    pub entries: Vec<Entry>,
    /// Catalogs left out because their signature was refused, each "SOURCE: reason".
    pub refused: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    image: Vec<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Spanned<String>,
    description: Option<String>,
    target: Option<Spanned<String>>,
    lun: Option<Spanned<u64>>,
    portals: Option<Spanned<Vec<Spanned<String>>>>,
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    size: Spanned<u64>,
    manifest: Option<Spanned<String>>,
    manifest_sha256: Option<Spanned<String>>,
    chap_user: Option<Spanned<String>>,
    chap_secret_file: Option<Spanned<String>>,
    digest: Option<Spanned<String>>,
}

/// Where a catalog's text came from: relative paths inside it resolve against this.
#[derive(Debug, Clone)]
pub enum Origin {
    File(PathBuf),
    Url(reqwest::Url),
}

impl Origin {
    fn label(&self) -> String {
        match self {
            Origin::File(p) => p.display().to_string(),
            Origin::Url(u) => u.to_string(),
        }
    }
}

pub(crate) fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key a TOML error is about: named in the message, else the `key =` on its line.
pub(crate) fn key_of(text: &str, at: usize, message: &str) -> String {
    if let Some(rest) = message.split("field `").nth(1) {
        if let Some(key) = rest.split('`').next() {
            return key.to_string();
        }
    }
    let start = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) => key.trim().trim_matches('"').to_string(),
        None => line.trim().trim_matches(['[', ']']).to_string(),
    }
}

/// Parse one catalog's text. `origin` names it in errors and anchors relative paths.
pub fn parse(text: &str, origin: &Origin) -> Result<Vec<Entry>, CatalogError> {
    let file = origin.label();
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        CatalogError::Invalid {
            file: file.clone(),
            line: line_of(text, at),
            key: key_of(text, at, e.message()),
            message: e.message().trim().to_string(),
        }
    })?;
    let invalid =
        |span: std::ops::Range<usize>, key: &str, message: String| CatalogError::Invalid {
            file: file.clone(),
            line: line_of(text, span.start),
            key: key.to_string(),
            message,
        };
    let mut out: Vec<Entry> = Vec::new();
    for spanned in raw.image {
        let entry_line = line_of(text, spanned.span().start);
        let raw = spanned.into_inner();
        let name = raw.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(invalid(
                raw.name.span(),
                "name",
                format!("`{name}` is not a valid name (letters, digits, '.', '_', '+', '-'; not starting with '.' or '-')"),
            ));
        }
        if let Some(first) = out.iter().find(|e| e.name == name) {
            return Err(CatalogError::Duplicate {
                file: file.clone(),
                line: line_of(text, raw.name.span().start),
                name,
                first: first.origin.clone(),
            });
        }
        let size = *raw.size.get_ref();
        if size == 0 {
            return Err(invalid(
                raw.size.span(),
                "size",
                "must be more than 0".into(),
            ));
        }
        // Keys that only make sense together: the error sits at the one given, naming the other.
        let paired =
            |first: &Option<Spanned<String>>,
             second: &Option<Spanned<String>>,
             [first_key, second_key, first_needs, second_needs]: [&str; 4]| {
                match (first, second) {
                    (Some(f), None) => Err(invalid(f.span(), second_key, first_needs.into())),
                    (None, Some(s)) => Err(invalid(s.span(), first_key, second_needs.into())),
                    _ => Ok(()),
                }
            };
        paired(
            &raw.manifest,
            &raw.manifest_sha256,
            [
                "manifest",
                "manifest_sha256",
                "a manifest needs its manifest_sha256 pin",
                "manifest_sha256 given without a manifest",
            ],
        )?;
        paired(
            &raw.chap_user,
            &raw.chap_secret_file,
            [
                "chap_user",
                "chap_secret_file",
                "chap_user needs chap_secret_file",
                "chap_secret_file needs chap_user",
            ],
        )?;
        let manifest = match (&raw.manifest, &raw.manifest_sha256) {
            (Some(m), Some(s)) => {
                let pin = s.get_ref();
                if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        s.span(),
                        "manifest_sha256",
                        "must be 64 hex digits".into(),
                    ));
                }
                let location = resolve(origin, m.get_ref())
                    .map_err(|message| invalid(m.span(), "manifest", message))?;
                Some(ManifestRef {
                    location,
                    sha256: pin.to_ascii_lowercase(),
                })
            }
            _ => None,
        };
        let urls = match &raw.urls {
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(invalid(
                        list.span(),
                        "urls",
                        "at least one URL is needed".into(),
                    ));
                }
                if manifest.is_none() {
                    return Err(invalid(
                        list.span(),
                        "urls",
                        "web mirrors need a manifest (every chunk from them is checked against it)"
                            .into(),
                    ));
                }
                let mut urls = Vec::new();
                for u in list.get_ref() {
                    check_mirror_url(u.get_ref())
                        .map_err(|message| invalid(u.span(), "urls", message))?;
                    urls.push(u.get_ref().clone());
                }
                urls
            }
            None => Vec::new(),
        };
        let Some(portal_list) = &raw.portals else {
            // Keys that only iSCSI mirrors use, given without any: the error names the first.
            let iscsi_only = [
                ("target", raw.target.as_ref().map(Spanned::span)),
                ("lun", raw.lun.as_ref().map(Spanned::span)),
                ("chap_user", raw.chap_user.as_ref().map(Spanned::span)),
                ("digest", raw.digest.as_ref().map(Spanned::span)),
            ];
            if let Some((key, Some(span))) = iscsi_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(invalid(
                    span,
                    key,
                    "is for iSCSI portals, and this image has no `portals`".into(),
                ));
            }
            if urls.is_empty() {
                return Err(CatalogError::Invalid {
                    file: file.clone(),
                    line: entry_line,
                    key: "portals".into(),
                    message: "an image needs `portals` (iSCSI), `urls` (web mirrors) or both"
                        .into(),
                });
            }
            out.push(Entry {
                name,
                description: raw.description,
                iscsi: None,
                urls,
                size,
                manifest,
                origin: format!("{file}:{entry_line}"),
                freshness: Freshness::Fresh,
            });
            continue;
        };
        let Some(target) = &raw.target else {
            return Err(invalid(
                portal_list.span(),
                "target",
                "portals need the target's iSCSI name (`target`)".into(),
            ));
        };
        let target = target.get_ref().clone();
        if !valid_iqn(&target) {
            let span = raw.target.as_ref().map_or(0..0, Spanned::span);
            return Err(invalid(
                span,
                "target",
                format!("`{target}` is not an iSCSI name (iqn., eui. or naa.)"),
            ));
        }
        let lun = raw.lun.as_ref().map_or(0, |l| *l.get_ref());
        if portal_list.get_ref().is_empty() {
            return Err(invalid(
                portal_list.span(),
                "portals",
                "at least one portal is needed".into(),
            ));
        }
        let mut portals = Vec::new();
        for p in portal_list.get_ref() {
            let portal = normalize_portal(p.get_ref()).ok_or_else(|| {
                invalid(
                    p.span(),
                    "portals",
                    format!("`{}` is not HOST[:PORT] or [IPv6][:PORT]", p.get_ref()),
                )
            })?;
            portals.push(portal);
        }
        let chap = match (&raw.chap_user, &raw.chap_secret_file) {
            (Some(u), Some(f)) => {
                let secret_file = match resolve(origin, f.get_ref()) {
                    Ok(ManifestLocation::Path(p)) => p,
                    _ => {
                        return Err(invalid(
                            f.span(),
                            "chap_secret_file",
                            "must be a local file (absolute when the catalog is a URL)".into(),
                        ))
                    }
                };
                Some(ChapRef {
                    user: u.get_ref().clone(),
                    secret_file,
                })
            }
            _ => None,
        };
        let digest = match &raw.digest {
            Some(d) => Some(DigestOffer::parse(d.get_ref()).ok_or_else(|| {
                invalid(
                    d.span(),
                    "digest",
                    format!("`{}` is not crc32c or none", d.get_ref()),
                )
            })?),
            None => None,
        };
        out.push(Entry {
            name,
            description: raw.description,
            iscsi: Some(IscsiMirrors {
                target,
                lun,
                portals,
                chap,
                digest,
            }),
            urls,
            size,
            manifest,
            origin: format!("{file}:{entry_line}"),
            freshness: Freshness::Fresh,
        });
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// A web mirror's URL: http or https (plain http is fine: every chunk is checked against the
/// pinned manifest, which itself comes from the catalog's folder or over https), with a host,
/// and no user or password (catalogs are not secret).
pub fn check_mirror_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
        return Err(format!("`{url}` is not an http:// or https:// URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "`{}` carries a user or password; catalogs are not secret",
            crate::http::url_label(&parsed)
        ));
    }
    Ok(())
}

fn valid_iqn(name: &str) -> bool {
    (name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa."))
        && name.len() <= 223
        && name.bytes().all(|b| b.is_ascii_graphic())
}

/// "host:port" with the default port added; None when malformed.
pub fn normalize_portal(p: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = p.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => "3260",
            _ => after.strip_prefix(':')?,
        };
        (format!("[{v6}]"), port)
    } else {
        match p.rsplit_once(':') {
            Some((h, port)) => (h.to_string(), port),
            None => (p.to_string(), "3260"),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_[]:".contains(&b));
    let port: u16 = port.parse().ok().filter(|&n| n > 0)?;
    host_ok.then(|| format!("{host}:{port}"))
}

fn resolve(origin: &Origin, reference: &str) -> Result<ManifestLocation, String> {
    if reference.starts_with("http://") {
        return Err(format!("{reference}: plain http is refused; use https"));
    }
    if reference.starts_with("https://") {
        reqwest::Url::parse(reference).map_err(|e| format!("`{reference}`: {e}"))?;
        return Ok(ManifestLocation::Url(reference.to_string()));
    }
    match origin {
        Origin::File(file) => {
            let base = file.parent().unwrap_or(Path::new("."));
            Ok(ManifestLocation::Path(base.join(reference)))
        }
        Origin::Url(url) if Path::new(reference).is_absolute() => {
            Ok(ManifestLocation::Path(PathBuf::from(reference)))
        }
        Origin::Url(url) => url
            .join(reference)
            .map(|u| ManifestLocation::Url(u.to_string()))
            .map_err(|e| format!("`{reference}`: {e}")),
    }
}

/// What a fetched or kept copy must pass before it is used: `Err` says why it does not.
pub type Check<'a> = &'a dyn Fn(&[u8]) -> Result<(), String>;

/// Fetch an https URL whose content must pass `check`, keeping the last copy that passed at
/// `keep` for offline use. A download that fails `check` never replaces the kept copy. Offline,
/// or when the fetch fails or what it brings fails `check`, the kept copy is used when it passes
/// (with a warning when online).
pub fn fetch_kept(
    url: &str,
    keep: Option<&Path>,
    offline: bool,
    check: Check<'_>,
) -> Result<Vec<u8>, CatalogError> {
    if !url.starts_with("https://") {
        return Err(CatalogError::PlainHttp(url.to_string()));
    }
    let fault = if offline {
        Unusable::Unreachable("offline".to_string())
    } else {
        match download(url) {
            Err(message) => Unusable::Unreachable(format!("fetching failed ({message})")),
            Ok(bytes) => match check(&bytes) {
                Err(why) => Unusable::Refused(format!("what it serves now is refused ({why})")),
                Ok(()) => {
                    if let Some(path) = keep {
                        if let Err(e) = write_atomic(path, &bytes) {
                            tracing::warn!(
                                "could not keep a copy of {url} at {}: {e}",
                                path.display()
                            );
                        }
                    }
                    return Ok(bytes);
                }
            },
        }
    };
    let Some(kept) = keep.and_then(|p| std::fs::read(p).ok()) else {
        return Err(match fault {
            Unusable::Unreachable(why) if offline => CatalogError::Fetch {
                url: url.to_string(),
                message: format!("{why} and no copy kept"),
            },
            Unusable::Unreachable(why) => CatalogError::Fetch {
                url: url.to_string(),
                message: why,
            },
            Unusable::Refused(why) => CatalogError::Refused {
                url: url.to_string(),
                reason: format!("{why}, and no copy is kept"),
            },
        });
    };
    let (Unusable::Unreachable(why) | Unusable::Refused(why)) = fault;
    match check(&kept) {
        Ok(()) => {
            if !offline {
                tracing::warn!("{url}: {why}; using the copy kept from before");
            }
            Ok(kept)
        }
        Err(damage) => Err(CatalogError::Refused {
            url: url.to_string(),
            reason: format!("{why}, and the copy kept from before is refused ({damage})"),
        }),
    }
}

/// Why a fresh copy of an https file cannot be used.
enum Unusable {
    /// Not fetched: offline, or the fetch failed.
    Unreachable(String),
    /// Fetched, and it failed its check.
    Refused(String),
}

fn download(url: &str) -> Result<Vec<u8>, String> {
    download_if_there(url)?.ok_or_else(|| "HTTP status 404 Not Found".to_string())
}

/// The body at `url`, or `None` when the server says there is nothing there (404, 410).
fn download_if_there(url: &str) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let mut builder = reqwest::blocking::Client::builder()
        .https_only(true)
        .timeout(DOWNLOAD_TIMEOUT);
    // Catalogs and manifests trust the same extra CAs as web mirrors (`ISOMOUNT_CA_FILE`).
    let ca_file = crate::http::client::WebOptions::from_env().ca_file;
    for cert in crate::http::client::extra_roots(ca_file.as_deref()).map_err(|e| e.to_string())? {
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let response = client.get(url).send().map_err(|e| e.to_string())?;
    if matches!(
        response.status(),
        reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE
    ) {
        return Ok(None);
    }
    let response = response.error_for_status().map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    response
        .take(MAX_DOWNLOAD + 1)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    if body.len() as u64 > MAX_DOWNLOAD {
        return Err(format!("larger than {MAX_DOWNLOAD} bytes"));
    }
    Ok(Some(body))
}

/// The default search path, in order.
pub fn default_search_path() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(list) = std::env::var_os("ISOMOUNT_CATALOGS") {
        out.extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(config) = config {
        out.push(config.join("isomount/catalogs"));
    }
    out.push(PathBuf::from("/etc/isomount/catalogs"));
    out
}

/// Where catalogs are read from.
enum Source {
    Path(PathBuf),
    Url(String),
}

/// A catalog's bytes and its signature's text, as read or fetched.
struct Copy {
    text: Vec<u8>,
    signature: Option<String>,
}

/// What came of checking one catalog's signature and parsing it.
enum Verdict {
    Accepted(Vec<Entry>),
    Refused(Refusal),
}

/// The `*.pub` files in `dir`, in name order.
fn keys_in(dir: &Path) -> Vec<PathBuf> {
    let mut keys: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub") && p.is_file())
        .collect();
    keys.sort();
    keys
}

impl Catalog {
    /// Load `--catalog` arguments (each must exist) or, when there are none, the default search
    /// path (missing folders are skipped), checking signatures against `pubkeys` and the `*.pub`
    /// files of the folders read. `keep_dir` (the cache directory) holds copies of https catalogs
    /// and the newest catalog versions seen.
    pub fn load(
        explicit: &[String],
        pubkeys: &[PathBuf],
        keep_dir: Option<&Path>,
        offline: bool,
    ) -> Result<Catalog, CatalogError> {
        let mut sources = Vec::new();
        if explicit.is_empty() {
            let path = default_search_path();
            sources.extend(
                path.iter()
                    .filter(|p| p.exists())
                    .cloned()
                    .map(Source::Path),
            );
            if sources.is_empty() {
                let searched: Vec<String> = path.iter().map(|p| p.display().to_string()).collect();
                return Err(CatalogError::NoCatalogs(searched.join(", ")));
            }
        }
        for arg in explicit {
            if arg.starts_with("http://") {
                return Err(CatalogError::PlainHttp(arg.clone()));
            }
            sources.push(if arg.starts_with("https://") {
                Source::Url(arg.clone())
            } else {
                Source::Path(PathBuf::from(arg))
            });
        }
        let mut key_files = pubkeys.to_vec();
        for source in &sources {
            if let Source::Path(dir) = source {
                key_files.extend(keys_in(dir));
            }
        }
        let trust = Trust {
            keys: TrustedKeys::load(&key_files)?,
            seen: keep_dir.map(SeenVersions::in_cache),
            now: std::time::SystemTime::now(),
        };
        let mut catalog = Catalog::default();
        for source in &sources {
            match source {
                Source::Path(path) => catalog.add_path(path, &trust)?,
                Source::Url(url) => catalog.add_url(url, keep_dir, offline, &trust)?,
            }
        }
        Ok(catalog)
    }

    fn add_path(&mut self, path: &Path, trust: &Trust) -> Result<(), CatalogError> {
        let io = |source| CatalogError::Io {
            path: path.display().to_string(),
            source,
        };
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            files.sort();
            for f in files {
                self.add_file(&f, trust)?;
            }
            Ok(())
        } else {
            self.add_file(path, trust)
        }
    }

    fn add_file(&mut self, path: &Path, trust: &Trust) -> Result<(), CatalogError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| CatalogError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let text = read(path)?;
        let signature = if trust.keys.is_empty() {
            None
        } else {
            let sig_path = signature_path(path);
            match std::fs::read(&sig_path) {
                Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(_) => Some(String::from_utf8_lossy(&read(&sig_path)?).into_owned()),
            }
        };
        let found_as = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let copy = Copy { text, signature };
        let origin = Origin::File(path.to_path_buf());
        match check(trust, &origin, found_as.as_deref().unwrap_or(""), &copy)? {
            Verdict::Accepted(entries) => self.add(entries),
            Verdict::Refused(refusal) => {
                self.refuse(&origin.label(), &refusal);
                Ok(())
            }
        }
    }

    /// An https catalog (and its signature, when keys are trusted). The last copy that passed
    /// is kept under `keep_dir` and used offline, when the fetch fails, or when what is fetched
    /// now is refused (a rollback served by a mirror leaves the newer kept copy in use).
    fn add_url(
        &mut self,
        arg: &str,
        keep_dir: Option<&Path>,
        offline: bool,
        trust: &Trust,
    ) -> Result<(), CatalogError> {
        let url = reqwest::Url::parse(arg).map_err(|e| CatalogError::Fetch {
            url: arg.to_string(),
            message: e.to_string(),
        })?;
        let origin = Origin::Url(url.clone());
        let found_as = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or("")
            .to_string();
        let keep = keep_dir.map(|d| {
            d.join("catalogs").join(format!(
                "{}.toml",
                &hex::encode(crate::manifest::sha256(arg.as_bytes()))[..16]
            ))
        });
        let keep_sig = keep.as_deref().map(signature_path);
        let kept = || {
            let text = std::fs::read(keep.as_ref()?).ok()?;
            let signature = keep_sig
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok());
            Some(Copy { text, signature })
        };
        let fetched = if offline {
            Err("offline and no copy kept".to_string())
        } else {
            download(arg).and_then(|text| {
                let signature = if trust.keys.is_empty() {
                    None
                } else {
                    download_if_there(&format!("{arg}.minisig"))?
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                };
                Ok(Copy { text, signature })
            })
        };
        let from_kept = |why: String| -> Result<(Copy, Verdict), CatalogError> {
            let copy = kept().ok_or_else(|| CatalogError::Fetch {
                url: arg.to_string(),
                message: why.clone(),
            })?;
            if !offline {
                tracing::warn!("{arg}: {why}; using the copy kept from before");
            }
            let verdict = check(trust, &origin, &found_as, &copy)?;
            Ok((copy, verdict))
        };
        let verdict = match fetched {
            Ok(copy) => match check(trust, &origin, &found_as, &copy)? {
                Verdict::Accepted(entries) => {
                    if let (Some(keep), Some(keep_sig)) = (&keep, &keep_sig) {
                        keep_copy(arg, keep, keep_sig, &copy);
                    }
                    Verdict::Accepted(entries)
                }
                Verdict::Refused(refusal) if kept().is_some() => {
                    from_kept(format!("what it serves now is refused ({refusal})"))?.1
                }
                refused => refused,
            },
            Err(message) if offline => from_kept(message)?.1,
            Err(message) => from_kept(format!("fetching failed ({message})"))?.1,
        };
        match verdict {
            Verdict::Accepted(entries) => self.add(entries),
            Verdict::Refused(refusal) => {
                self.refuse(arg, &refusal);
                Ok(())
            }
        }
    }

    fn refuse(&mut self, source: &str, refusal: &Refusal) {
        tracing::warn!("{source}: refused: {refusal}");
        self.refused.push(format!("{source}: {refusal}"));
    }

    fn add(&mut self, entries: Vec<Entry>) -> Result<(), CatalogError> {
        for e in entries {
            if let Some(first) = self.entries.iter().find(|x| x.name == e.name) {
                let (file, line) = e.origin.rsplit_once(':').unwrap_or((&e.origin, "0"));
                return Err(CatalogError::Duplicate {
                    file: file.to_string(),
                    line: line.parse().unwrap_or(0),
                    name: e.name.clone(),
                    first: first.origin.clone(),
                });
            }
            self.entries.push(e);
        }
        Ok(())
    }

    /// The entry called `name`, or an error listing the closest names.
    pub fn find(&self, name: &str) -> Result<&Entry, CatalogError> {
        if let Some(e) = self.entries.iter().find(|e| e.name == name) {
            return Ok(e);
        }
        let mut scored: Vec<(f64, &str)> = self
            .entries
            .iter()
            .map(|e| {
                let score = strsim::normalized_damerau_levenshtein(
                    &name.to_lowercase(),
                    &e.name.to_lowercase(),
                );
                let contains = e.name.to_lowercase().contains(&name.to_lowercase());
                (
                    if contains { score.max(0.5) } else { score },
                    e.name.as_str(),
                )
            })
            .filter(|(s, _)| *s >= 0.4)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Err(CatalogError::NotFound {
            name: name.to_string(),
            suggestions: scored.iter().take(3).map(|(_, n)| n.to_string()).collect(),
            refused: self.refused.clone(),
        })
    }
}

/// Check a catalog's signature (when keys are trusted), then parse it; every entry carries the
/// catalog's freshness.
fn check(
    trust: &Trust,
    origin: &Origin,
    found_as: &str,
    copy: &Copy,
) -> Result<Verdict, CatalogError> {
    let label = origin.label();
    let freshness = match trust.check(&label, found_as, &copy.text, copy.signature.as_deref()) {
        Ok(freshness) => freshness,
        Err(refusal) => return Ok(Verdict::Refused(refusal)),
    };
    let text = std::str::from_utf8(&copy.text).map_err(|_| CatalogError::Invalid {
        file: label.clone(),
        line: 1,
        key: "-".into(),
        message: "not UTF-8 text".into(),
    })?;
    let mut entries = parse(text, origin)?;
    for entry in &mut entries {
        entry.freshness = freshness;
    }
    Ok(Verdict::Accepted(entries))
}

/// Keep a fetched catalog that passed, with its signature (or none), for later offline use.
fn keep_copy(url: &str, keep: &Path, keep_sig: &Path, copy: &Copy) {
    let kept = match &copy.signature {
        Some(sig) => write_atomic_all(&[(keep, &copy.text), (keep_sig, sig.as_bytes())]),
        None => {
            write_atomic(keep, &copy.text).and_then(|()| match std::fs::remove_file(keep_sig) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
        }
    };
    if let Err(e) = kept {
        tracing::warn!("could not keep a copy of {url} at {}: {e}", keep.display());
    }
}

/// Add or replace the entry `entry.name` in the catalog file at `path` (created when missing),
/// keeping the file's comments and other entries.
pub fn upsert_entry(path: &Path, entry: &PublishedEntry) -> Result<(), CatalogError> {
    let out = with_entry(path, entry)?;
    write_atomic(path, out.as_bytes()).map_err(|source| CatalogError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The text [`upsert_entry`] would write, without writing it.
pub fn with_entry(path: &Path, entry: &PublishedEntry) -> Result<String, CatalogError> {
    use toml_edit::{ArrayOfTables, DocumentMut, Item};
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(CatalogError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    parse(&text, &Origin::File(path.to_path_buf()))?;
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| CatalogError::Invalid {
                file: path.display().to_string(),
                line: 1,
                key: "-".into(),
                message: e.to_string(),
            })?;
    let table = entry_table(entry);
    if !doc.contains_key("image") {
        doc["image"] = Item::ArrayOfTables(ArrayOfTables::new());
    }
    let images = doc["image"]
        .as_array_of_tables_mut()
        .ok_or_else(|| CatalogError::Invalid {
            file: path.display().to_string(),
            line: 1,
            key: "image".into(),
            message: "must be an array of tables ([[image]])".into(),
        })?;
    let existing = images
        .iter()
        .position(|t| t.get("name").and_then(|n| n.as_str()) == Some(entry.name.as_str()));
    match existing.and_then(|i| images.get_mut(i)) {
        Some(existing) => {
            // The keys publish writes are replaced (or removed when it has none); others, such
            // as CHAP settings, stay.
            for key in PUBLISHED_KEYS {
                match table.get(key) {
                    Some(v) => existing[key] = v.clone(),
                    None => {
                        existing.remove(key);
                    }
                }
            }
        }
        None => images.push(table),
    }
    let out = doc.to_string();
    parse(&out, &Origin::File(path.to_path_buf()))?;
    Ok(out)
}

/// The keys of an `[[image]]` table that `publish` writes.
const PUBLISHED_KEYS: [&str; 9] = [
    "name",
    "description",
    "target",
    "lun",
    "portals",
    "urls",
    "size",
    "manifest",
    "manifest_sha256",
];

/// The `[[image]]` table of a published entry.
fn entry_table(entry: &PublishedEntry) -> toml_edit::Table {
    use toml_edit::{value, Array, Table};
    let mut table = Table::new();
    table["name"] = value(entry.name.as_str());
    if let Some(d) = &entry.description {
        table["description"] = value(d.as_str());
    }
    if let Some(target) = &entry.target {
        table["target"] = value(target.as_str());
        table["lun"] = value(i64::try_from(entry.lun).unwrap_or(i64::MAX));
        let mut portals = Array::new();
        for p in &entry.portals {
            portals.push(p.as_str());
        }
        table["portals"] = value(portals);
    }
    if !entry.urls.is_empty() {
        let mut urls = Array::new();
        for u in &entry.urls {
            urls.push(u.as_str());
        }
        table["urls"] = value(urls);
    }
    table["size"] = value(i64::try_from(entry.size).unwrap_or(i64::MAX));
    table["manifest"] = value(entry.manifest.as_str());
    table["manifest_sha256"] = value(entry.manifest_sha256.as_str());
    table
}

/// The text of a whole catalog file at `path` holding `entries` in the order given, under
/// `header` (each line becomes a `#` comment). The same entries always give the same bytes. The
/// text is checked by [`parse`] before it is returned.
pub fn render(
    path: &Path,
    header: &str,
    entries: &[PublishedEntry],
) -> Result<String, CatalogError> {
    use toml_edit::{ArrayOfTables, DocumentMut, Item};
    let mut images = ArrayOfTables::new();
    for entry in entries {
        images.push(entry_table(entry));
    }
    let mut doc = DocumentMut::new();
    if !entries.is_empty() {
        doc["image"] = Item::ArrayOfTables(images);
    }
    let comments: String = header.lines().map(|l| format!("# {l}\n")).collect();
    let out = format!("{comments}\n{doc}");
    parse(&out, &Origin::File(path.to_path_buf()))?;
    Ok(out)
}

/// What `publish` writes into a catalog.
#[derive(Debug, Clone)]
pub struct PublishedEntry {
    pub name: String,
    pub description: Option<String>,
    /// The iSCSI target on `portals` (with `lun`); None for an image on web mirrors only.
    pub target: Option<String>,
    pub lun: u64,
    pub portals: Vec<String>,
    /// Web mirrors of the image file.
    pub urls: Vec<String>,
    pub size: u64,
    pub manifest: String,
    pub manifest_sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn good() -> String {
        format!(
            r#"# a comment
[[image]]
name = "netbsd-5.0"
description = "NetBSD 5.0"
target = "iqn.2009-04.org.example:netbsd"
lun = 1
portals = ["127.0.0.1:3260", "[::1]", "mirror.example.org"]
size = 367001600
manifest = "netbsd.manifest"
manifest_sha256 = "{PIN}"

[[image]]
name = "freebsd-14"
target = "iqn.2009-04.org.example:freebsd"
portals = ["127.0.0.1:3261"]
size = 4096
digest = "CRC32C"

[[image]]
name = "debian-12"
urls = [
    "https://cdn.example.org/debian-12.iso",
    "http://mirror.example.org:8080/pub/debian%2012.iso?x=1",
]
size = 8192
manifest = "https://cdn.example.org/debian-12.manifest"
manifest_sha256 = "{PIN}"
"#
        )
    }

    fn origin() -> Origin {
        Origin::File(PathBuf::from("/etc/isomount/catalogs/main.toml"))
    }

    #[test]
    fn parses_a_good_catalog() {
        let entries = parse(&good(), &origin()).unwrap();
        assert_eq!(entries.len(), 3);
        let e = &entries[0];
        let iscsi = |i: usize| entries[i].iscsi.as_ref().unwrap();
        assert_eq!(e.name, "netbsd-5.0");
        assert_eq!(iscsi(0).lun, 1);
        assert_eq!(
            e.portals(),
            ["127.0.0.1:3260", "[::1]:3260", "mirror.example.org:3260"]
        );
        assert!(e.urls.is_empty());
        assert_eq!(
            e.manifest.as_ref().unwrap().location,
            ManifestLocation::Path(PathBuf::from("/etc/isomount/catalogs/netbsd.manifest"))
        );
        assert_eq!(e.origin, "/etc/isomount/catalogs/main.toml:2");
        assert_eq!(iscsi(1).lun, 0);
        assert!(entries[1].manifest.is_none());
        assert_eq!(iscsi(0).digest, None);
        assert_eq!(iscsi(1).digest, Some(DigestOffer::PreferCrc32c));
        let web = &entries[2];
        assert!(web.iscsi.is_none() && web.portals().is_empty());
        assert_eq!(web.urls.len(), 2);
        assert_eq!(
            web.mirrors(),
            [
                "https://cdn.example.org/debian-12.iso",
                "http://mirror.example.org:8080/pub/debian%2012.iso"
            ]
        );
    }

    /// Each malformed catalog, and the message it must produce.
    #[test]
    fn malformed_catalogs_name_file_line_and_key() {
        let base = "[[image]]\nname = \"a\"\ntarget = \"iqn.2000-01.x:a\"\nportals = [\"h:1\"]\nsize = 10\n";
        let web = format!("[[image]]\nname = \"a\"\nurls = [\"https://h/a.iso\"]\nsize = 10\nmanifest = \"a.m\"\nmanifest_sha256 = \"{PIN}\"\n");
        let cases: &[(String, &str)] = &[
            (format!("{base}colour = \"red\"\n"), "main.toml:6: key `colour`: unknown field `colour`"),
            (base.replace("size = 10", "size = \"ten\""), "main.toml:5: key `size`: invalid type: string \"ten\", expected u64"),
            (base.replace("size = 10", "size = -1"), "main.toml:5: key `size`: invalid value: integer `-1`, expected u64"),
            (base.replace("size = 10", "size = 0"), "main.toml:5: key `size`: must be more than 0"),
            (base.replace("size = 10\n", ""), "key `size`: missing field `size`"),
            (base.replace("\"iqn.2000-01.x:a\"", "\"target-a\""), "main.toml:3: key `target`: `target-a` is not an iSCSI name"),
            (base.replace("[\"h:1\"]", "[]"), "main.toml:4: key `portals`: at least one portal is needed"),
            (base.replace("[\"h:1\"]", "[\"h:99999\"]"), "main.toml:4: key `portals`: `h:99999` is not HOST[:PORT]"),
            (base.replace("\"a\"", "\"-a\""), "main.toml:2: key `name`: `-a` is not a valid name"),
            (format!("{base}{base}"), "main.toml:7: key `name`: duplicate image name `a` (first defined at /etc/isomount/catalogs/main.toml:1)"),
            (format!("{base}manifest = \"a.m\"\n"), "main.toml:6: key `manifest_sha256`: a manifest needs its manifest_sha256 pin"),
            (format!("{base}manifest = \"a.m\"\nmanifest_sha256 = \"abc\"\n"), "main.toml:7: key `manifest_sha256`: must be 64 hex digits"),
            (format!("{base}manifest = \"http://x/a.m\"\nmanifest_sha256 = \"{PIN}\"\n"), "main.toml:6: key `manifest`: http://x/a.m: plain http is refused"),
            (format!("{base}chap_user = \"u\"\n"), "main.toml:6: key `chap_secret_file`: chap_user needs chap_secret_file"),
            (format!("{base}chap_secret_file = \"/s\"\n"), "main.toml:6: key `chap_user`: chap_secret_file needs chap_user"),
            (format!("{base}manifest_sha256 = \"{PIN}\"\n"), "main.toml:6: key `manifest`: manifest_sha256 given without a manifest"),
            (format!("{base}lun = 1\nlun = 2\n"), "main.toml:7: key `lun`: duplicate key"),
            (format!("{base}digest = \"md5\"\n"), "main.toml:6: key `digest`: `md5` is not crc32c or none"),
            ("[[image]\n".to_string(), "main.toml:1: key `"),
            (base.replace("portals = [\"h:1\"]\n", ""), "main.toml:3: key `target`: is for iSCSI portals, and this image has no `portals`"),
            (base.replace("target = \"iqn.2000-01.x:a\"\n", ""), "main.toml:3: key `target`: portals need the target's iSCSI name"),
            (web.replace("urls = [\"https://h/a.iso\"]\n", ""), "main.toml:1: key `portals`: an image needs `portals` (iSCSI), `urls` (web mirrors) or both"),
            (web.replace("[\"https://h/a.iso\"]", "[]"), "main.toml:3: key `urls`: at least one URL is needed"),
            (web.replace(&format!("manifest = \"a.m\"\nmanifest_sha256 = \"{PIN}\"\n"), ""), "main.toml:3: key `urls`: web mirrors need a manifest"),
            (web.replace("[\"https://h/a.iso\"]", "[\"https://h/a.iso\",\n  \"ftp://h/a.iso\"]"), "main.toml:4: key `urls`: `ftp://h/a.iso` is not an http:// or https:// URL"),
            (web.replace("https://h/a.iso", "https://u:pw@h/a.iso"), "main.toml:3: key `urls`: `https://h/a.iso` carries a user or password"),
            (web.replace("https://h/a.iso", "a.iso"), "main.toml:3: key `urls`: `a.iso` is not a URL"),
            (format!("{web}lun = 2\n"), "main.toml:7: key `lun`: is for iSCSI portals"),
            (format!("{web}chap_user = \"u\"\nchap_secret_file = \"/s\"\n"), "main.toml:7: key `chap_user`: is for iSCSI portals"),
            ("[something]\nx = 1\n".to_string(), "main.toml:1: key `something`: unknown field `something`"),
        ];
        for (text, expected) in cases {
            let err = parse(text, &origin()).expect_err(text).to_string();
            assert!(
                err.contains(expected),
                "for\n{text}\ngot: {err}\nwanted: {expected}"
            );
            assert!(
                err.starts_with("/etc/isomount/catalogs/main.toml:"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_shipped_example_catalog_parses() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("catalogs/example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let entries = parse(&text, &Origin::File(path)).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].portals(), ["[::1]:3260"]);
        assert!(entries.iter().any(|e| !e.urls.is_empty()));
    }

    #[test]
    fn unknown_names_get_suggestions() {
        let catalog = Catalog {
            entries: parse(&good(), &origin()).unwrap(),
            refused: Vec::new(),
        };
        let err = catalog.find("netbsd-5").unwrap_err().to_string();
        assert!(err.contains("did you mean `netbsd-5.0`"), "{err}");
        let err = catalog.find("zzzzzzzz").unwrap_err().to_string();
        assert_eq!(err, "no image named `zzzzzzzz` in the catalogs");
        assert_eq!(catalog.find("freebsd-14").unwrap().size, 4096);
    }

    #[test]
    fn folders_load_in_order_and_duplicates_across_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), good()).unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "junk").unwrap();
        let c = Catalog::load(&[dir.path().display().to_string()], &[], None, true).unwrap();
        assert_eq!(c.entries.len(), 3);
        std::fs::write(dir.path().join("b.toml"), good()).unwrap();
        let err = Catalog::load(&[dir.path().display().to_string()], &[], None, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.toml:2: key `name`: duplicate image name `netbsd-5.0`"),
            "{err}"
        );
        assert!(err.contains("a.toml:2"), "{err}");
    }

    #[test]
    fn plain_http_catalogs_are_refused() {
        let err =
            Catalog::load(&["http://127.0.0.1:1/c.toml".into()], &[], None, false).unwrap_err();
        assert!(matches!(err, CatalogError::PlainHttp(_)));
        let err =
            Catalog::load(&["https://127.0.0.1:1/c.toml".into()], &[], None, true).unwrap_err();
        assert!(
            err.to_string().contains("offline and no copy kept"),
            "{err}"
        );
    }

    #[test]
    fn upsert_adds_then_replaces_and_keeps_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, good()).unwrap();
        let mut e = PublishedEntry {
            name: "new".into(),
            description: None,
            target: Some("iqn.2000-01.x:new".into()),
            lun: 1,
            portals: vec!["127.0.0.1:3260".into()],
            urls: Vec::new(),
            size: 8192,
            manifest: "new.manifest".into(),
            manifest_sha256: PIN.into(),
        };
        upsert_entry(&path, &e).unwrap();
        e.size = 16384;
        e.urls = vec!["http://127.0.0.1:8080/new.iso".into()];
        upsert_entry(&path, &e).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# a comment"));
        let entries = parse(&text, &Origin::File(path.clone())).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[3].size, 16384);
        assert_eq!(entries[3].portals(), ["127.0.0.1:3260"]);
        assert_eq!(entries[3].urls, ["http://127.0.0.1:8080/new.iso"]);
        // Published again with web mirrors only: the iSCSI keys go.
        e.target = None;
        e.portals.clear();
        upsert_entry(&path, &e).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let entries = parse(&text, &Origin::File(path.clone())).unwrap();
        assert!(entries[3].iscsi.is_none(), "{text}");
        assert_eq!(entries[3].urls.len(), 1);
        assert!(!text.contains("iqn.2000-01.x:new"), "{text}");
    }
}
