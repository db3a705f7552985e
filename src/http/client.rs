//! The HTTP client web mirrors share: rustls with the bundled Mozilla roots plus any in
//! `ISOMOUNT_CA_FILE`, HTTP/2 by ALPN, bounded redirects that never go from https to http,
//! and the proxies the environment names.
//!
//! Proxies: `https_proxy` / `HTTPS_PROXY` for https URLs (a CONNECT tunnel, so the proxy sees
//! only the host), `http_proxy` / `HTTP_PROXY` for http URLs (not under CGI, where a request's
//! `Proxy:` header would set it), `all_proxy` / `ALL_PROXY` for both, and `no_proxy` /
//! `NO_PROXY` (comma-separated hosts, domains and CIDRs, `*` for all) for what goes direct:
//! reqwest's reading of these variables, which follows curl's.

use std::path::PathBuf;
use std::time::Duration;

use super::HttpError;

/// Environment variable naming a PEM file of extra certificate authorities to trust (beside the
/// bundled Mozilla roots): for a mirror with a private CA, a TLS-inspecting proxy, or tests.
pub const CA_FILE_ENV: &str = "ISOMOUNT_CA_FILE";

/// How web mirrors are reached and how long a request may take.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// Extra trusted CA certificates (PEM); [`CA_FILE_ENV`] by default.
    pub ca_file: Option<PathBuf>,
    /// Longest wait for a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer, head or body.
    pub stall: Duration,
    /// Redirects followed for one request.
    pub max_redirects: usize,
    /// Requests in flight to one mirror (connections, for HTTP/1.1).
    pub max_in_flight: usize,
    /// Largest range asked in one request when queued reads are coalesced.
    pub max_range: u64,
    /// Reads waiting for a request slot go out lowest offset first (a reader that keeps many
    /// in flight takes them in order, and they reach the mirror in any order), except one that
    /// has waited this long: it goes next, so a stray read is not held up by a long stream.
    pub in_order_at_most: Duration,
}

impl Default for WebOptions {
    fn default() -> WebOptions {
        WebOptions {
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            stall: Duration::from_secs(15),
            max_redirects: 5,
            max_in_flight: 8,
            max_range: 4 << 20,
            in_order_at_most: Duration::from_millis(250),
        }
    }
}

impl WebOptions {
    /// The defaults, with `ca_file` from [`CA_FILE_ENV`].
    pub fn from_env() -> WebOptions {
        WebOptions {
            ca_file: std::env::var_os(CA_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ..WebOptions::default()
        }
    }
}

/// The certificates of `ISOMOUNT_CA_FILE` (none when it is not set); an error names the file.
pub fn extra_roots(
    ca_file: Option<&std::path::Path>,
) -> Result<Vec<reqwest::Certificate>, HttpError> {
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    let setup =
        |what: String| HttpError::Setup(format!("{CA_FILE_ENV}={}: {what}", path.display()));
    let pem = std::fs::read(path).map_err(|e| setup(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| setup(e.to_string()))?;
    if certs.is_empty() {
        return Err(setup("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The redirect policy: at most `max` hops, and none from https to plain http (a downgrade
/// anyone on the path could have asked for).
fn redirects(max: usize) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            let to = super::url_label(attempt.url());
            attempt.error(format!("redirect from https to plain http ({to}) refused"))
        } else if attempt.previous().len() > max {
            attempt.error(format!("more than {max} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// A client for web mirrors.
pub fn build(options: &WebOptions) -> Result<reqwest::Client, HttpError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(concat!("isomount/", env!("CARGO_PKG_VERSION")))
        .redirect(redirects(options.max_redirects))
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.stall)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .http2_adaptive_window(true);
    for cert in extra_roots(options.ca_file.as_deref())? {
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| HttpError::Setup(format!("cannot set up the HTTP client: {e}")))
}

/// The message of a reqwest error and its causes, without the URL (which may hold credentials),
/// and what the failure means.
pub fn describe(err: reqwest::Error) -> (String, super::Fault) {
    use super::Fault;
    let fault = if err.is_redirect() || err.is_builder() {
        Fault::Stopped
    } else {
        Fault::Network
    };
    let err = err.without_url();
    let mut parts = vec![err.to_string()];
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    (parts.join(": "), fault)
}
