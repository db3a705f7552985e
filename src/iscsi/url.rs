//! libiscsi's and QEMU's URL form: `iscsi://[user[%secret]@]host[:port]/target-iqn/lun`, plus
//! our query `?digest=crc32c` (prefer CRC32C header and data digests) or `?digest=none`.
//!
//! [`IscsiUrl`]'s Display never shows the secret.

use std::fmt;
use std::str::FromStr;

use super::login::{Chap, DigestOffer, Secret};

pub const DEFAULT_PORT: u16 = 3260;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiUrl {
    pub host: String,
    pub port: u16,
    pub target: String,
    pub lun: u64,
    pub chap: Option<Chap>,
    /// `?digest=crc32c` or `?digest=none`; `None` when the URL does not say.
    pub digest: Option<DigestOffer>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad iSCSI URL {url}: {reason}")]
pub struct UrlError {
    /// The URL with any secret removed.
    pub url: String,
    pub reason: String,
}

impl IscsiUrl {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn portal(&self) -> String {
        format_portal(&self.host, self.port)
    }
}

/// `host:port`, bracketing IPv6 literals.
pub fn format_portal(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Split `host[:port]` or `[v6][:port]` into host and port (default 3260).
pub fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in host".to_string())?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {p:?} after IPv6 address"))?,
            ),
        };
        (host, port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (text, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    // Brackets only ever enclose an IPv6 address: a host with more of them would print as a
    // portal that does not parse back.
    if host.contains(['[', ']']) {
        return Err(format!("bad host {host:?}"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
    };
    Ok((host.to_string(), port))
}

impl FromStr for IscsiUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let shown = redact(url);
        let err = |reason: &str| UrlError {
            url: shown.clone(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("iscsi://")
            .ok_or_else(|| err("it must start with iscsi://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| err("missing /target/lun"))?;
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).map_err(|r| err(&r))?;
        let (target, lun) = path
            .rsplit_once('/')
            .ok_or_else(|| err("missing /lun after the target name"))?;
        let target = target.trim_end_matches('/');
        if target.is_empty() || target.contains('/') {
            return Err(err("bad target name"));
        }
        let lun = lun.parse().map_err(|_| err("the LUN must be a number"))?;
        let chap = match userinfo {
            None => None,
            Some(info) => {
                let (user, secret) = match info.split_once('%') {
                    Some((u, s)) => (u, Some(s)),
                    None => (info, None),
                };
                if user.is_empty() {
                    return Err(err("empty CHAP user name"));
                }
                let env = Chap::from_env();
                let secret = match (secret, &env) {
                    (Some(s), _) => Secret::new(s),
                    (None, Some(env)) => env.secret.clone(),
                    (None, None) => {
                        return Err(err(
                            "CHAP user given without a secret (set LIBISCSI_CHAP_PASSWORD)",
                        ))
                    }
                };
                Some(Chap {
                    user: user.to_string(),
                    secret,
                    target_user: env.as_ref().and_then(|e| e.target_user.clone()),
                    target_secret: env.and_then(|e| e.target_secret),
                })
            }
        };
        let mut digest = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("digest", v)) => match DigestOffer::parse(v) {
                    Some(d) => digest = Some(d),
                    None => return Err(err(&format!("digest={v}: say crc32c or none"))),
                },
                _ => return Err(err(&format!("unknown query parameter {pair:?}"))),
            }
        }
        Ok(IscsiUrl {
            host,
            port,
            target: target.to_string(),
            lun,
            chap: chap.or_else(Chap::from_env),
            digest,
        })
    }
}

/// The URL text with the secret part of `user%secret@` replaced.
pub fn redact(url: &str) -> String {
    let Some(rest) = url.strip_prefix("iscsi://") else {
        return url.chars().take(200).collect();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split('%').next().unwrap_or("");
            format!("iscsi://{user}@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

impl fmt::Display for IscsiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iscsi://")?;
        if let Some(chap) = &self.chap {
            write!(f, "{}@", chap.user)?;
        }
        write!(f, "{}/{}/{}", self.portal(), self.target, self.lun)?;
        if let Some(name) = self.digest.and_then(DigestOffer::name) {
            write!(f, "?digest={name}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libiscsi_urls() {
        let url: IscsiUrl = "iscsi://127.0.0.1:3261/iqn.2026-11.org.example:disk/1"
            .parse()
            .unwrap();
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 3261);
        assert_eq!(url.target, "iqn.2026-11.org.example:disk");
        assert_eq!(url.lun, 1);
        assert_eq!(url.digest, None);
        let v6: IscsiUrl = "iscsi://[::1]/iqn.x:y/0?digest=crc32c".parse().unwrap();
        assert_eq!(v6.portal(), "[::1]:3260");
        assert_eq!(v6.digest, Some(DigestOffer::PreferCrc32c));
        assert_eq!(v6.to_string(), "iscsi://[::1]:3260/iqn.x:y/0?digest=crc32c");
        let none: IscsiUrl = "iscsi://h/iqn.x:y/0?digest=NONE".parse().unwrap();
        assert_eq!(none.digest, Some(DigestOffer::NoneOnly));
        let host: IscsiUrl = "iscsi://mirror.example.org/iqn.x:y/3".parse().unwrap();
        assert_eq!(host.portal(), "mirror.example.org:3260");
    }

    #[test]
    fn secret_in_url_is_used_and_never_shown() {
        let text = "iscsi://alice%hunter2@127.0.0.1/iqn.x:y/0";
        let url: IscsiUrl = text.parse().unwrap();
        let chap = url.chap.as_ref().unwrap();
        assert_eq!(chap.user, "alice");
        assert_eq!(chap.secret.expose(), "hunter2");
        assert_eq!(url.to_string(), "iscsi://alice@127.0.0.1:3260/iqn.x:y/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        let err = "iscsi://alice%hunter2@127.0.0.1/iqn.x:y/zero"
            .parse::<IscsiUrl>()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("LUN"));
    }

    #[test]
    fn bad_urls() {
        for bad in [
            "http://h/t/0",
            "iscsi://h",
            "iscsi://h/t",
            "iscsi://h:99999/t/0",
            "iscsi:///t/0",
            "iscsi://h/t/0?x=1",
            "iscsi://h/t/0?digest=md5",
            "iscsi://[::1/t/0",
        ] {
            assert!(bad.parse::<IscsiUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.1").unwrap(),
            ("127.0.0.1".into(), 3260)
        );
        assert_eq!(split_host_port("[::1]:99").unwrap(), ("::1".into(), 99));
        assert_eq!(split_host_port("::1").unwrap(), ("::1".into(), 3260));
        assert!(split_host_port(":1").is_err());
    }

    /// Found by the `url` fuzz target: hosts with stray brackets were accepted and printed as
    /// portals that did not parse back (`[a]:b:1]:3260`).
    #[test]
    fn stray_brackets_in_hosts_are_refused() {
        for bad in ["a]:b:1", "[[a]", "iscsi://[::1]/t", "x]"] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
        assert!("iscsi://a]:b:1/t/0".parse::<IscsiUrl>().is_err());
    }
}
