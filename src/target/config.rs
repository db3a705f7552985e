//! What `isomount serve` exports and to whom: target names, device types, the CIDR allow-list
//! (LUN masking, as the NetBSD target's `targets` file does), CHAP credentials, and the
//! `serve --config` file that sets all of these for a tree, per subtree.
//!
//! iSCSI names follow RFC 7143 §4.2.7 (the `iqn.` form, lower case after RFC 3722 stringprep
//! for the ASCII subset we generate).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::live::{Access, Rule};
use super::scsi::DeviceType;
use super::{ChapConfig, Secret, TargetError};

/// The default prefix of generated target names: `iqn.2026-01.org.isomount.serve:STEM`.
pub const DEFAULT_IQN_PREFIX: &str = "iqn.2026-01.org.isomount.serve";

/// Which source addresses may see and log in to the targets. Empty: everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Parse CIDR blocks (`127.0.0.1/32`, `10.0.0.0/8`, `::1/128`); a bare address means just it.
    pub fn parse<S: AsRef<str>>(cidrs: &[S]) -> Result<AllowList, TargetError> {
        let mut nets = Vec::with_capacity(cidrs.len());
        for cidr in cidrs {
            let text = cidr.as_ref().trim();
            let net = match text.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    TargetError::Config(format!("--allow {text:?}: not a CIDR block"))
                })?,
            };
            nets.push(net);
        }
        Ok(AllowList { nets })
    }

    /// Whether `addr` may see the targets. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn allows(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nets.is_empty() || self.nets.iter().any(|net| net.contains(&addr))
    }
}

/// The target name for an image file: the prefix, a colon, and the file stem in the iSCSI name
/// character set (lower-case letters, digits, `.`, `-`; anything else becomes `-`).
pub fn target_name(prefix: &str, image: &Path) -> Result<String, TargetError> {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    target_name_for(prefix, &stem).map_err(|_| {
        TargetError::Config(format!(
            "{}: cannot make a target name from this file name",
            image.display()
        ))
    })
}

/// The target name for `word` (a file stem or a catalog name) under `prefix`.
pub fn target_name_for(prefix: &str, word: &str) -> Result<String, TargetError> {
    let prefix = prefix.trim_end_matches(':').to_ascii_lowercase();
    if !prefix.starts_with("iqn.") || prefix.len() < 5 || !prefix.bytes().all(is_name_char) {
        return Err(TargetError::Config(format!(
            "--iqn-prefix {prefix:?}: expected an iSCSI qualified name such as {DEFAULT_IQN_PREFIX}"
        )));
    }
    let word: String = word
        .to_ascii_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '-' => c,
            _ => '-',
        })
        .collect();
    let word = word.trim_matches(|c| c == '-' || c == '.');
    if word.is_empty() {
        return Err(TargetError::Config(
            "cannot make a target name from an empty name".into(),
        ));
    }
    let name = format!("{prefix}:{word}");
    if name.len() > 223 {
        return Err(TargetError::Config(format!(
            "target name {name} is longer than 223 bytes"
        )));
    }
    Ok(name)
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b':')
}

/// `--device-type`: what kind of LUN to present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Disk,
    Cd,
    /// A CD when the image has an ISO 9660 volume descriptor, else a disk.
    Auto,
}

/// Byte offset of the standard identifier of the first ISO 9660 volume descriptor
/// (sector 16 of 2048 bytes, plus the type byte).
pub const ISO9660_MAGIC_OFFSET: u64 = 16 * 2048 + 1;
pub const ISO9660_MAGIC: &[u8; 5] = b"CD001";

impl DeviceChoice {
    /// Resolve `Auto` from the 5 bytes at [`ISO9660_MAGIC_OFFSET`] (`None`: image too short).
    pub fn resolve(self, magic: Option<&[u8]>) -> DeviceType {
        match self {
            DeviceChoice::Disk => DeviceType::Disk,
            DeviceChoice::Cd => DeviceType::Cd,
            DeviceChoice::Auto if magic == Some(ISO9660_MAGIC.as_slice()) => DeviceType::Cd,
            DeviceChoice::Auto => DeviceType::Disk,
        }
    }
}

/// Read a CHAP secret from a file: the first line, without its line ending. The file must not
/// be readable or writable by group or others, and the secret must not be empty.
pub fn read_secret_file(path: &Path) -> Result<String, TargetError> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| TargetError::Config(format!("CHAP secret file {shown}: {e}")))?;
    if meta.mode() & 0o077 != 0 {
        return Err(TargetError::Config(format!(
            "CHAP secret file {shown} is accessible by group or others (mode {:o}); chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    if meta.len() > 4096 {
        return Err(TargetError::Config(format!(
            "CHAP secret file {shown} is larger than 4096 bytes"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| TargetError::Config(format!("CHAP secret file {shown}: {e}")))?;
    let secret = text.lines().next().unwrap_or("").to_string();
    if secret.is_empty() {
        return Err(TargetError::Config(format!(
            "CHAP secret file {shown} has an empty first line"
        )));
    }
    Ok(secret)
}

/// CHAP settings from their four options (or keys): the initiator's user and secret file, and
/// for mutual CHAP the target's. Secret files are read (and their modes checked) here.
pub fn chap_config(
    user: Option<&str>,
    secret_file: Option<&Path>,
    target_user: Option<&str>,
    target_secret_file: Option<&Path>,
) -> Result<Option<ChapConfig>, TargetError> {
    let (user, file) = match (user, secret_file) {
        (None, None) => {
            if target_user.is_some() || target_secret_file.is_some() {
                return Err(TargetError::Config(
                    "mutual CHAP needs the initiator's CHAP user and secret file too".into(),
                ));
            }
            return Ok(None);
        }
        (Some(user), Some(file)) => (user, file),
        _ => {
            return Err(TargetError::Config(
                "a CHAP user needs a secret file, and a secret file a user".into(),
            ))
        }
    };
    let secret = Secret::new(read_secret_file(file)?);
    let target = match (target_user, target_secret_file) {
        (Some(name), Some(file)) => {
            let target_secret = Secret::new(read_secret_file(file)?);
            if target_secret.expose() == secret.expose() {
                return Err(TargetError::Config(
                    "the mutual CHAP secret must differ from the initiator's secret".into(),
                ));
            }
            Some((name.to_string(), target_secret))
        }
        (None, None) => None,
        _ => {
            return Err(TargetError::Config(
                "a mutual CHAP user needs a secret file, and a secret file a user".into(),
            ))
        }
    };
    Ok(Some(ChapConfig {
        user: user.to_string(),
        secret,
        target,
    }))
}

/// The `serve --config` file (TOML). Every key is optional, and one given on the command line
/// wins over the file's; relative paths are relative to the file's folder.
///
/// ```toml
/// root = "/srv/images"                 # serve every image under it, live
/// patterns = ["*.iso", "*.img"]        # which files are images
/// listen = "0.0.0.0:3260"
/// iqn_prefix = "iqn.2009-04.org.example.mirror"
/// device_type = "auto"                 # or "disk", "cd"
/// allow = ["0.0.0.0/0", "::/0"]        # who sees the tree (default: everyone)
/// # chap_user, chap_secret_file, chap_target_user, chap_target_secret_file: CHAP for the tree
/// rescan_seconds = 60                  # rescan at least this often, whatever inotify says
/// settle_seconds = 1                   # serve a file once it has been left alone this long
/// stats_file = "/run/isomount/serve.stats"
/// stats_seconds = 60                   # how often the stats file and the log line are written
/// max_connections = 16384
/// login_timeout_seconds = 15
///
/// [[subtree]]                          # rules for the images under ROOT/lab (deepest wins)
/// path = "lab"
/// allow = ["10.0.0.0/8"]
/// chap_user = "lab"
/// chap_secret_file = "lab.secret"
/// # anonymous = true                   # no CHAP here, even if the tree has it
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub root: Option<Spanned<PathBuf>>,
    pub patterns: Option<Spanned<Vec<String>>>,
    pub listen: Option<String>,
    pub iqn_prefix: Option<Spanned<String>>,
    pub device_type: Option<DeviceChoice>,
    pub allow: Option<Spanned<Vec<String>>>,
    pub chap_user: Option<Spanned<String>>,
    pub chap_secret_file: Option<Spanned<PathBuf>>,
    pub chap_target_user: Option<Spanned<String>>,
    pub chap_target_secret_file: Option<Spanned<PathBuf>>,
    pub rescan_seconds: Option<Spanned<f64>>,
    pub settle_seconds: Option<Spanned<f64>>,
    pub stats_file: Option<PathBuf>,
    pub stats_seconds: Option<Spanned<f64>>,
    pub max_connections: Option<Spanned<usize>>,
    pub login_timeout_seconds: Option<Spanned<f64>>,
    #[serde(default)]
    pub subtree: Vec<Spanned<SubtreeFile>>,
}

/// One `[[subtree]]` of the `serve --config` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtreeFile {
    pub path: Spanned<PathBuf>,
    pub allow: Option<Spanned<Vec<String>>>,
    pub chap_user: Option<Spanned<String>>,
    pub chap_secret_file: Option<Spanned<PathBuf>>,
    pub chap_target_user: Option<Spanned<String>>,
    pub chap_target_secret_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub anonymous: bool,
}

/// A loaded `serve --config` file: its keys, and where it is, for messages and relative paths.
#[derive(Debug)]
pub struct LoadedServeFile {
    pub path: PathBuf,
    text: String,
    pub keys: ServeFile,
}

impl LoadedServeFile {
    /// Read and parse; an error names the file, the line and the key.
    pub fn load(path: &Path) -> Result<LoadedServeFile, TargetError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TargetError::Config(format!("{}: {e}", path.display())))?;
        let keys: ServeFile = toml::from_str(&text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            TargetError::Config(format!(
                "{}:{}: key `{}`: {}",
                path.display(),
                crate::catalog::line_of(&text, at),
                crate::catalog::key_of(&text, at, e.message()),
                e.message().trim()
            ))
        })?;
        Ok(LoadedServeFile {
            path: path.to_path_buf(),
            text,
            keys,
        })
    }

    /// An error about the value at `span` of key `key`.
    pub fn invalid(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        why: impl std::fmt::Display,
    ) -> TargetError {
        TargetError::Config(format!(
            "{}:{}: key `{key}`: {why}",
            self.path.display(),
            crate::catalog::line_of(&self.text, span.start)
        ))
    }

    /// A path from the file, relative to the file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// A duration in seconds at `key`, which must be positive (or zero when `zero_ok`).
    pub fn seconds(
        &self,
        value: &Spanned<f64>,
        key: &str,
        zero_ok: bool,
    ) -> Result<std::time::Duration, TargetError> {
        let v = *value.get_ref();
        if !v.is_finite() || v < 0.0 || (v == 0.0 && !zero_ok) || v > 1e9 {
            return Err(self.invalid(
                value.span(),
                key,
                format!("{v} is not a usable number of seconds"),
            ));
        }
        Ok(std::time::Duration::from_secs_f64(v))
    }

    /// The access rules of the file: the tree's (over `base`, the command line's) and each
    /// subtree's.
    pub fn access(&self, base: Rule) -> Result<Access, TargetError> {
        let k = &self.keys;
        let mut default = base;
        if let Some(allow) = &k.allow {
            default.allow = self.allow_list(allow)?;
        }
        if let Some(chap) = self.chap_keys(
            &k.chap_user,
            &k.chap_secret_file,
            &k.chap_target_user,
            &k.chap_target_secret_file,
        )? {
            default.chap = Some(Arc::new(chap));
        }
        let mut subtrees: Vec<(PathBuf, Rule)> = Vec::new();
        // Shallow subtrees first, so a deeper one starts from the rule above it.
        let mut entries: Vec<&Spanned<SubtreeFile>> = k.subtree.iter().collect();
        entries.sort_by_key(|e| e.get_ref().path.get_ref().components().count());
        for entry in entries {
            let sub = entry.get_ref();
            let path = sub.path.get_ref();
            let plain = path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || path.as_os_str().is_empty() {
                return Err(self.invalid(
                    sub.path.span(),
                    "path",
                    "a subtree is a relative path inside the root, without `..`",
                ));
            }
            if subtrees.iter().any(|(p, _)| p == path) {
                return Err(self.invalid(
                    sub.path.span(),
                    "path",
                    "this subtree is already listed",
                ));
            }
            // A subtree starts from the rule of the deepest subtree above it (or the tree's).
            let above = Access {
                default: default.clone(),
                subtrees: subtrees.clone(),
            };
            let mut rule = above.for_image(path).clone();
            if let Some(allow) = &sub.allow {
                rule.allow = self.allow_list(allow)?;
            }
            let chap = self.chap_keys(
                &sub.chap_user,
                &sub.chap_secret_file,
                &sub.chap_target_user,
                &sub.chap_target_secret_file,
            )?;
            match (sub.anonymous, chap) {
                (true, Some(_)) => {
                    return Err(self.invalid(
                        entry.span(),
                        "anonymous",
                        "a subtree cannot be anonymous and have CHAP keys",
                    ))
                }
                (true, None) => rule.chap = None,
                (false, Some(chap)) => rule.chap = Some(Arc::new(chap)),
                (false, None) => {}
            }
            subtrees.push((path.clone(), rule));
        }
        Ok(Access { default, subtrees })
    }

    fn allow_list(&self, allow: &Spanned<Vec<String>>) -> Result<AllowList, TargetError> {
        AllowList::parse(allow.get_ref()).map_err(|e| self.invalid(allow.span(), "allow", e))
    }

    fn chap_keys(
        &self,
        user: &Option<Spanned<String>>,
        secret_file: &Option<Spanned<PathBuf>>,
        target_user: &Option<Spanned<String>>,
        target_secret_file: &Option<Spanned<PathBuf>>,
    ) -> Result<Option<ChapConfig>, TargetError> {
        let span = [
            user.as_ref().map(|s| s.span()),
            secret_file.as_ref().map(|s| s.span()),
            target_user.as_ref().map(|s| s.span()),
            target_secret_file.as_ref().map(|s| s.span()),
        ]
        .into_iter()
        .flatten()
        .next();
        let Some(span) = span else {
            return Ok(None);
        };
        let secret_file = secret_file.as_ref().map(|f| self.resolve(f.get_ref()));
        let target_secret_file = target_secret_file
            .as_ref()
            .map(|f| self.resolve(f.get_ref()));
        chap_config(
            user.as_ref().map(|u| u.get_ref().as_str()),
            secret_file.as_deref(),
            target_user.as_ref().map(|u| u.get_ref().as_str()),
            target_secret_file.as_deref(),
        )
        .map_err(|e| self.invalid(span, "chap_user", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (tempfile::TempDir, Result<LoadedServeFile, TargetError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, text).unwrap();
        let loaded = LoadedServeFile::load(&path);
        (dir, loaded)
    }

    fn secret(dir: &Path, name: &str, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn the_config_file_gives_each_subtree_its_rule_and_names_lines_at_fault() {
        let (dir, file) = load(
            "root = \"tree\"\nallow = [\"10.0.0.0/8\"]\n\n\
             [[subtree]]\npath = \"lab/inner\"\nanonymous = true\n\n\
             [[subtree]]\npath = \"lab\"\nchap_user = \"lab\"\nchap_secret_file = \"lab.secret\"\n",
        );
        secret(dir.path(), "lab.secret", "lab-secret-value\n");
        let file = file.unwrap();
        assert_eq!(
            file.resolve(file.keys.root.as_ref().unwrap().get_ref()),
            dir.path().join("tree")
        );
        let access = file.access(Rule::default()).unwrap();
        let ten = AllowList::parse(&["10.0.0.0/8"]).unwrap();
        assert_eq!(access.default.allow, ten);
        assert!(access.default.chap.is_none());
        let lab = access.for_image(Path::new("lab/x.iso"));
        assert_eq!(
            lab.allow, ten,
            "a subtree keeps the tree's mask unless it sets one"
        );
        assert_eq!(lab.chap.as_ref().unwrap().user, "lab");
        let inner = access.for_image(Path::new("lab/inner/x.iso"));
        assert!(
            inner.chap.is_none(),
            "anonymous under a CHAP subtree, listed first"
        );

        let (_dir, bad) = load("root = \"t\"\nsettle_seconds = \"soon\"\n");
        let err = bad.unwrap_err().to_string();
        assert!(err.contains("serve.toml:2: key `settle_seconds`"), "{err}");
        let (_dir, bad) = load("rot = \"t\"\n");
        let err = bad.unwrap_err().to_string();
        assert!(err.contains(":1: key `rot`"), "{err}");
        let (_dir, bad) = load("allow = [\"x\"]\n");
        let err = bad
            .unwrap()
            .access(Rule::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1: key `allow`"), "{err}");
        let (_dir, bad) = load("[[subtree]]\npath = \"../up\"\n");
        let err = bad
            .unwrap()
            .access(Rule::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2: key `path`"), "{err}");
        let (_dir, bad) = load("[[subtree]]\npath = \"a\"\nchap_user = \"u\"\n");
        let err = bad
            .unwrap()
            .access(Rule::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a secret file"), "{err}");
        let (_dir, bad) = load("stats_seconds = -1\n");
        let bad = bad.unwrap();
        let err = bad
            .seconds(
                bad.keys.stats_seconds.as_ref().unwrap(),
                "stats_seconds",
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1: key `stats_seconds`"), "{err}");
    }

    #[test]
    fn allow_list_masks_by_source_address() {
        let allow = AllowList::parse(&["127.0.0.1/32"]).unwrap();
        assert!(allow.allows("127.0.0.1".parse().unwrap()));
        assert!(!allow.allows("127.0.0.2".parse().unwrap()));
        assert!(
            allow.allows("::ffff:127.0.0.1".parse().unwrap()),
            "v4-mapped"
        );
        let wide = AllowList::parse(&["10.1.2.3/8", "::1"]).unwrap();
        assert!(wide.allows("10.200.0.1".parse().unwrap()));
        assert!(wide.allows("::1".parse().unwrap()));
        assert!(!wide.allows("11.0.0.1".parse().unwrap()));
        assert!(AllowList::default().allows("192.0.2.1".parse().unwrap()));
        assert!(AllowList::parse(&["127.0.0.1/33"]).is_err());
        assert!(AllowList::parse(&["localhost"]).is_err());
    }

    #[test]
    fn target_names_from_stems() {
        let name = target_name(DEFAULT_IQN_PREFIX, Path::new("/srv/NetBSD 5.0_i386.iso")).unwrap();
        assert_eq!(name, "iqn.2026-01.org.isomount.serve:netbsd-5.0-i386");
        let name = target_name("iqn.2009-04.org.example.mirror:", Path::new("a.img")).unwrap();
        assert_eq!(name, "iqn.2009-04.org.example.mirror:a");
        assert!(target_name("eui.0123", Path::new("a.img")).is_err());
        assert!(target_name("iqn.x y", Path::new("a.img")).is_err());
        assert!(target_name(DEFAULT_IQN_PREFIX, Path::new("/srv/__.iso")).is_err());
        assert_eq!(
            target_name_for(DEFAULT_IQN_PREFIX, "netbsd-5.0").unwrap(),
            "iqn.2026-01.org.isomount.serve:netbsd-5.0"
        );
    }

    #[test]
    fn device_type_auto_detects_iso9660() {
        assert_eq!(DeviceChoice::Auto.resolve(Some(b"CD001")), DeviceType::Cd);
        assert_eq!(
            DeviceChoice::Auto.resolve(Some(b"\0\0\0\0\0")),
            DeviceType::Disk
        );
        assert_eq!(DeviceChoice::Auto.resolve(None), DeviceType::Disk);
        assert_eq!(DeviceChoice::Cd.resolve(None), DeviceType::Cd);
        assert_eq!(DeviceChoice::Disk.resolve(Some(b"CD001")), DeviceType::Disk);
    }

    #[test]
    fn secret_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret-for-chap\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(
            !err.contains("s3cret"),
            "the secret never appears in errors"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), "s3cret-for-chap");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret_file(&path).is_err());
    }
}
