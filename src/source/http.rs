//! A web mirror as a [`BlockSource`]: the image file on an HTTP(S) server, read with range
//! requests by [`crate::http::WebMirror`] (queued reads coalesced, bodies streamed piece by
//! piece), and its faults sorted into the seam's classes ([`classify`]).
//!
//! `open` makes one request the first time, which learns whether the server answers ranges for
//! a file of the image's size; after that it is free. That request asks for the image's first
//! bytes ([`HttpSource::reading_first`]), which the image core asks for first: it still asks,
//! and verifies them like any fetch, but they are answered from memory without a round trip
//! (the head of a read that runs past them too), and let go once read to their end.
//! The image core ranks web mirrors with the iSCSI portals: nothing here retries, rests or
//! hedges.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Attempts, BlockSource, Pieces, SourceError, SourceIdentity};
use crate::http::{client, Fault, HttpError, WebMirror, WebOptions};
use crate::iobuf::HeldStart;

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
            first_read: 1,
            first: HeldStart::default(),
            opening: tokio::sync::Mutex::new(()),
            attempts: Attempts::default(),
        })
    }
}

/// One web mirror of one image.
pub struct HttpSource {
    mirror: Arc<WebMirror>,
    run_bytes: usize,
    /// Bytes from the start of the image the first request asks for.
    first_read: u64,
    /// What that request brought.
    first: HeldStart,
    /// Held by an `open` while it makes the first request.
    opening: tokio::sync::Mutex<()>,
    attempts: Attempts,
}

impl HttpSource {
    /// Ask for the image's first `bytes` with the first request (in `open`), and answer reads
    /// within them from memory.
    pub fn reading_first(mut self, bytes: u32) -> HttpSource {
        self.first_read = u64::from(bytes).max(1);
        self
    }
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
        // One first request at a time: an open while another is under way waits for it, and
        // shares its failure.
        let before = self.attempts.ended();
        let _opening = self.opening.lock().await;
        if self.mirror.validators().is_none() {
            if let Some(err) = self.attempts.failed_since(before) {
                return Err(err);
            }
            let len = self.first_read.min(self.mirror.size());
            let read = self.mirror.read(0, len).all().await;
            let read = read.map_err(|e| classify(&e));
            self.attempts.end(&read);
            self.first.hold(crate::iobuf::join(read?));
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
        let head = self.first.head(offset, len).filter(|h| !h.is_empty());
        let held = head.as_ref().map_or(0, Bytes::len);
        let head = futures_util::stream::iter(head.map(Ok));
        if held == len {
            return head.boxed();
        }
        let body = self.mirror.read(offset + held as u64, (len - held) as u64);
        let rest = futures_util::stream::unfold(body, |mut body| async move {
            let piece = body.next().await?;
            Some((piece.map_err(|e| classify(&e)), body))
        });
        head.chain(rest).boxed()
    }

    fn run_bytes(&self) -> usize {
        self.run_bytes
    }

    fn facts(&self) -> Vec<(String, String)> {
        self.mirror.facts()
    }
}
