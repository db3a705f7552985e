//! What `isomount serve` exports and to whom: target names, device types, the CIDR allow-list
//! (LUN masking, as the NetBSD target's `targets` file does) and CHAP credentials.
//!
//! iSCSI names follow RFC 7143 §4.2.7 (the `iqn.` form, lower case after RFC 3722 stringprep
//! for the ASCII subset we generate).

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::scsi::DeviceType;
use super::TargetError;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
