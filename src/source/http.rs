//! A web mirror as a [`BlockSource`]: the image file on an HTTP(S) server, read with range
//! requests by [`crate::http::WebMirror`] (queued reads coalesced, bodies streamed piece by
//! piece), and its faults sorted into the seam's classes ([`classify`]).
//!
//! `open` makes one request (the first byte) the first time, which learns whether the server
//! answers ranges for a file of the image's size; after that it is free. The image core ranks
//! web mirrors with the iSCSI portals: nothing here retries, rests or hedges.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{BlockSource, Pieces, SourceError, SourceIdentity};
use crate::http::{client, Fault, HttpError, WebMirror, WebOptions};

/// The seam's class of a web mirror's failure.
pub fn classify(err: &HttpError) -> SourceError {
    let text = err.to_string();
    match err.fault() {
        Fault::Network => SourceError::Network(text),
        Fault::Protocol => SourceError::Protocol(text),
        Fault::Stopped => SourceError::Unusable(text),
        Fault::OutOfRange => SourceError::OutOfRange(text),
    }
}

/// One HTTP client (connection pools, TLS roots, proxies) for the web mirrors of an image.
pub struct WebClient {
    client: reqwest::Client,
    options: WebOptions,
}

impl WebClient {
    /// A client with the default options and `ISOMOUNT_CA_FILE`.
    pub fn from_env() -> Result<WebClient, HttpError> {
        WebClient::new(WebOptions::from_env())
    }

    pub fn new(options: WebOptions) -> Result<WebClient, HttpError> {
        Ok(WebClient {
            client: client::build(&options)?,
            options,
        })
    }

    /// The web mirror at `url` of an image of `size` bytes.
    pub fn source(&self, url: &str, size: u64) -> Result<HttpSource, HttpError> {
        Ok(HttpSource {
            mirror: WebMirror::new(url, size, self.client.clone(), self.options.clone())?,
            run_bytes: usize::try_from(self.options.max_range).unwrap_or(usize::MAX),
        })
    }
}

/// One web mirror of one image.
pub struct HttpSource {
    mirror: Arc<WebMirror>,
    run_bytes: usize,
}

#[async_trait]
impl BlockSource for HttpSource {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn describe(&self) -> String {
        self.mirror.label().to_string()
    }

    async fn open(&self) -> Result<SourceIdentity, SourceError> {
        if self.mirror.validators().is_none() {
            self.mirror.probe().await.map_err(|e| classify(&e))?;
        }
        if let Some(reason) = self.mirror.stopped() {
            return Err(SourceError::Unusable(format!(
                "{}: not used again for this image ({reason})",
                self.mirror.label()
            )));
        }
        let validators = self.mirror.validators();
        Ok(SourceIdentity {
            size: self.mirror.size(),
            block_size: 1,
            serial: validators.and_then(|v| v.etag),
            device_id: None,
        })
    }

    fn read(&self, offset: u64, len: usize) -> Pieces<'_> {
        let body = self.mirror.read(offset, len as u64);
        futures_util::stream::unfold(body, |mut body| async move {
            let piece = body.next().await?;
            Some((piece.map_err(|e| classify(&e)), body))
        })
        .boxed()
    }

    fn run_bytes(&self) -> usize {
        self.run_bytes
    }

    fn facts(&self) -> Vec<(String, String)> {
        self.mirror.facts()
    }
}
