//! Web mirrors: an image file on any HTTP(S) server, read with range requests (RFC 9110 §14)
//! over HTTP/1.1 or HTTP/2 (chosen by ALPN on https), with reqwest and rustls.
//!
//! Nothing a web server sends is trusted: every chunk is verified against the pinned manifest by
//! the image core, which is why plain `http://` mirrors are allowed (catalogs and manifests
//! themselves still need https). What this layer checks is that each answer is the range asked
//! of the same file ([`range`]), and it sorts what goes wrong by what it means ([`Fault`]).
//!
//! - [`range`]: Range and Content-Range, validators, what an answer means; no I/O.
//! - [`client`]: the reqwest client: trusted roots (plus `ISOMOUNT_CA_FILE`), redirects (at
//!   most a few, never from https to http), proxies from `https_proxy`/`http_proxy`/`no_proxy`,
//!   connect and stall bounds.
//! - [`mirror`]: one mirror URL: requests queued, adjacent ones coalesced into one range of up
//!   to a few MiB, several in flight over reused connections, each body handed on piece by
//!   piece as it streams in; the mirror stopped for the image when its file changes.

pub mod client;
pub mod mirror;
pub mod range;

pub use client::WebOptions;
pub use mirror::{RangeBody, WebMirror};

/// What a fault means for the mirror that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Unreachable, refused, reset, timed out, stalled, a body cut short, 5xx, 408, 429: try
    /// again later, with backoff; it does not count against the mirror.
    Network,
    /// An answer that contradicts the request (a Content-Range other than the one asked, a body
    /// longer than the range, a 4xx): counts against the mirror.
    Protocol,
    /// The mirror cannot serve this image: it ignores Range, its file is another size or
    /// changed (ETag, Last-Modified), or a redirect was refused. Not used again for the image.
    Stopped,
    /// The request itself is wrong (past the end of the image).
    OutOfRange,
}

/// Why a request to a web mirror failed. URLs in messages carry no user, password or query.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    /// The client could not be set up (a CA file that cannot be read).
    #[error("{0}")]
    Setup(String),
    /// The request did not get an answer: connection refused or reset, TLS, timeout, redirect.
    #[error("{url}: {detail}")]
    Transport {
        url: String,
        detail: String,
        fault: Fault,
    },
    /// The answer's head cannot be used.
    #[error("{url}: {refusal}")]
    Refused {
        url: String,
        refusal: range::Refusal,
    },
    /// The file is not the one the mirror served before.
    #[error("{url}: the file changed under us ({what})")]
    Changed { url: String, what: String },
    /// The body ended before the range did.
    #[error("{url}: the body ended after {got} of {want} bytes")]
    Truncated { url: String, got: u64, want: u64 },
    /// The body ran past the range asked.
    #[error("{url}: the body runs past the {want} bytes asked")]
    Overlong { url: String, want: u64 },
    /// No byte arrived for the stall bound.
    #[error("{url}: no data for {secs} s")]
    Stalled { url: String, secs: u64 },
    /// The request this read was coalesced into broke the protocol; the fault is counted once,
    /// against the first read of the request, and the others are retried.
    #[error("{url}: the request this read shared failed ({detail})")]
    Shared { url: String, detail: String },
    /// An earlier fault stopped the mirror for this image.
    #[error("{url}: not used again for this image ({reason})")]
    Stopped { url: String, reason: String },
    #[error("read of {len} bytes at {offset} is past the end of the image ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
}

impl HttpError {
    /// What this fault means for the mirror.
    pub fn fault(&self) -> Fault {
        use range::Refusal;
        match self {
            HttpError::Setup(_) | HttpError::Changed { .. } | HttpError::Stopped { .. } => {
                Fault::Stopped
            }
            HttpError::Transport { fault, .. } => *fault,
            HttpError::Refused { refusal, .. } => match refusal {
                Refusal::IgnoresRange | Refusal::WrongSize(_) => Fault::Stopped,
                Refusal::BadPartial(_) => Fault::Protocol,
                Refusal::Status(408 | 429) | Refusal::Status(500..=599) => Fault::Network,
                Refusal::Status(_) => Fault::Protocol,
            },
            HttpError::Truncated { .. } | HttpError::Stalled { .. } | HttpError::Shared { .. } => {
                Fault::Network
            }
            HttpError::Overlong { .. } => Fault::Protocol,
            HttpError::OutOfRange { .. } => Fault::OutOfRange,
        }
    }
}

/// How a URL is named in messages, `info/` and `list`: scheme, host, port and path, never a user,
/// password or query (which may hold a token).
pub fn url_label(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_hide_credentials_and_queries() {
        let url =
            reqwest::Url::parse("https://u:secret@cdn.example.org:8443/a/b.iso?token=t#x").unwrap();
        assert_eq!(url_label(&url), "https://cdn.example.org:8443/a/b.iso");
    }

    #[test]
    fn faults_are_classified_by_meaning() {
        use range::Refusal;
        let refused = |refusal| HttpError::Refused {
            url: "u".into(),
            refusal,
        };
        assert_eq!(refused(Refusal::IgnoresRange).fault(), Fault::Stopped);
        assert_eq!(
            refused(Refusal::WrongSize("x".into())).fault(),
            Fault::Stopped
        );
        assert_eq!(
            refused(Refusal::BadPartial("x".into())).fault(),
            Fault::Protocol
        );
        assert_eq!(refused(Refusal::Status(503)).fault(), Fault::Network);
        assert_eq!(refused(Refusal::Status(429)).fault(), Fault::Network);
        assert_eq!(refused(Refusal::Status(404)).fault(), Fault::Protocol);
        let truncated = HttpError::Truncated {
            url: "u".into(),
            got: 1,
            want: 2,
        };
        assert_eq!(truncated.fault(), Fault::Network);
        let changed = HttpError::Changed {
            url: "u".into(),
            what: "ETag".into(),
        };
        assert_eq!(changed.fault(), Fault::Stopped);
    }
}
