//! The `iscsi://` URL parser ([`isomount::iscsi::url`]): never panics, an accepted URL without
//! CHAP prints as a URL that parses back to it, and a CHAP secret given in the URL appears in
//! no output: not in the URL's Display or Debug, not in an error, not in [`redact`].

use isomount::iscsi::url::{format_portal, redact, split_host_port, IscsiUrl};

/// The secret of `iscsi://user%secret@…`, as the parser finds it.
fn secret_in(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("iscsi://")?;
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    let authority = rest.split_once('/')?.0;
    let userinfo = authority.rsplit_once('@')?.0;
    Some(userinfo.split_once('%')?.1)
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A secret that also stands elsewhere in the input (or is too short to tell apart) could be
    // printed legitimately as part of the host or the target name.
    let secret = secret_in(text).filter(|s| s.len() >= 4 && text.matches(*s).count() == 1);
    let shown = match text.parse::<IscsiUrl>() {
        Ok(url) => {
            if url.chap.is_none() {
                let again: IscsiUrl = url.to_string().parse().expect("a printed URL parses");
                assert_eq!(again, url, "a printed URL parses back to itself");
            }
            format!("{url} {url:?}")
        }
        Err(err) => err.to_string(),
    };
    if let Some(secret) = secret {
        assert!(!shown.contains(secret), "the secret leaked: {shown}");
        assert!(!redact(text).contains(secret), "redact leaked the secret");
    }
    if let Ok((host, port)) = split_host_port(text) {
        assert!(!host.is_empty());
        let portal = format_portal(&host, port);
        assert_eq!(split_host_port(&portal), Ok((host, port)), "{portal}");
    }
}

pub fn accepts(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|text| text.parse::<IscsiUrl>().is_ok())
}
