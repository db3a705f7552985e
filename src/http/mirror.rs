//! One web mirror of one image: reads become range requests, at most
//! [`WebOptions::max_in_flight`] at a time; reads waiting for a slot that are adjacent are
//! coalesced into one range (up to [`WebOptions::max_range`]), so a reader that keeps many reads
//! in flight gets ranges that grow to a few MiB while a lone small read goes out alone, at
//! once. Each read gets its bytes piece by piece as the body streams in ([`RangeBody`]).
//!
//! The first answer fixes what the file is (its size must be the image's; its ETag and
//! Last-Modified are kept). A later answer for another file, a server that ignores Range (a 200
//! is dropped unread, not downloaded), or a refused redirect stops the mirror for this image:
//! every later read fails at once with [`HttpError::Stopped`].
//!
//! At trace level (`-vvv`) each request logs its timeline: when it goes out (with the reads in
//! it, the requests in flight and the reads still waiting), its head, its first body bytes and
//! its last; `cat` logs each read it writes out in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::header::{
    HeaderMap, ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LAST_MODIFIED, RANGE,
};
use reqwest::{Url, Version};
use tokio::sync::mpsc;

use super::range::{self, Head, Validators};
use super::{client, url_label, Fault, HttpError, WebOptions};

/// One mirror URL of one image.
pub struct WebMirror {
    /// As the catalog gives it.
    url: Url,
    label: String,
    size: u64,
    client: reqwest::Client,
    options: WebOptions,
    state: Mutex<State>,
    queue: Mutex<Queue>,
}

/// What the mirror is known to serve.
enum State {
    /// Not asked anything yet.
    Untried,
    /// Serves ranges of the image: where redirects led (asked directly from then on, until a
    /// request there fails), and what the file there is.
    Serving {
        location: Url,
        validators: Validators,
        version: Version,
    },
    /// Not used again for this image.
    Stopped { reason: String },
}

/// Reads waiting for a request slot, and the number of requests in flight.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Wanted>,
    in_flight: usize,
}

/// A read waiting for its bytes.
struct Wanted {
    offset: u64,
    len: u64,
    tx: mpsc::UnboundedSender<Result<Bytes, HttpError>>,
    /// When it began to wait.
    since: std::time::Instant,
}

/// The bytes of one read, as they arrive: consecutive pieces adding up to the length asked,
/// or an error. Dropping it abandons the read (a request serving only it is cut short).
pub struct RangeBody {
    rx: mpsc::UnboundedReceiver<Result<Bytes, HttpError>>,
    left: u64,
    label: String,
}

impl RangeBody {
    fn failed(err: HttpError) -> RangeBody {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Err(err));
        RangeBody {
            rx,
            left: 1,
            label: String::new(),
        }
    }

    /// The next piece; None once every byte of the read has come.
    pub async fn next(&mut self) -> Option<Result<Bytes, HttpError>> {
        if self.left == 0 {
            return None;
        }
        match self.rx.recv().await {
            Some(Ok(piece)) => {
                self.left = self.left.saturating_sub(piece.len() as u64);
                Some(Ok(piece))
            }
            Some(Err(e)) => {
                self.left = 0;
                Some(Err(e))
            }
            None => {
                self.left = 0;
                Some(Err(HttpError::Transport {
                    url: self.label.clone(),
                    detail: "the request ended without its bytes".into(),
                    fault: Fault::Network,
                }))
            }
        }
    }

    /// Every piece, in order.
    pub async fn all(mut self) -> Result<Vec<Bytes>, HttpError> {
        let mut out = Vec::new();
        while let Some(piece) = self.next().await {
            out.push(piece?);
        }
        Ok(out)
    }
}

/// Takes one off the in-flight count when a request ends, however it ends, and sends the next
/// waiting reads.
struct Slot(Arc<WebMirror>);

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.0.queue).in_flight -= 1;
        self.0.dispatch();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn header(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl WebMirror {
    /// A mirror serving the image of `size` bytes at `url` (http or https). No request is made
    /// until the first read.
    pub fn new(
        url: &str,
        size: u64,
        client: reqwest::Client,
        options: WebOptions,
    ) -> Result<Arc<WebMirror>, HttpError> {
        let parsed = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| HttpError::Setup(format!("`{url}` is not an http(s) URL")))?;
        Ok(Arc::new(WebMirror {
            label: url_label(&parsed),
            url: parsed,
            size,
            client,
            options,
            state: Mutex::new(State::Untried),
            queue: Mutex::default(),
        }))
    }

    /// The URL without credentials or query, for messages and `info/`.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Why the mirror is stopped for this image, if it is.
    pub fn stopped(&self) -> Option<String> {
        match &*lock(&self.state) {
            State::Stopped { reason } => Some(reason.clone()),
            _ => None,
        }
    }

    /// What the file is, once the mirror has answered (None before, and once stopped).
    pub fn validators(&self) -> Option<Validators> {
        match &*lock(&self.state) {
            State::Serving { validators, .. } => Some(validators.clone()),
            _ => None,
        }
    }

    /// What the last answer said about the file: the URL it came from after redirects, the HTTP
    /// version, ETag and Last-Modified.
    pub fn facts(&self) -> Vec<(String, String)> {
        let mut out = vec![("url".to_string(), self.label.clone())];
        if let State::Serving {
            location,
            validators,
            version,
        } = &*lock(&self.state)
        {
            if *location != self.url {
                out.push(("location".into(), url_label(location)));
            }
            out.push(("http-version".into(), format!("{version:?}")));
            if let Some(etag) = &validators.etag {
                out.push(("etag".into(), etag.clone()));
            }
            if let Some(lm) = &validators.last_modified {
                out.push(("last-modified".into(), lm.clone()));
            }
        }
        out
    }

    /// Ask for the first byte: the mirror answers, with ranges, for a file of the image's size.
    pub async fn probe(self: &Arc<Self>) -> Result<(), HttpError> {
        self.read(0, self.size.min(1)).all().await.map(drop)
    }

    /// Read `len` bytes at `offset`. The request goes out when a slot is free, coalesced with
    /// adjacent reads waiting then.
    pub fn read(self: &Arc<Self>, offset: u64, len: u64) -> RangeBody {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return RangeBody::failed(HttpError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        if let Some(reason) = self.stopped() {
            return RangeBody::failed(HttpError::Stopped {
                url: self.label.clone(),
                reason,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if len > 0 {
            lock(&self.queue).waiting.push_back(Wanted {
                offset,
                len,
                tx,
                since: std::time::Instant::now(),
            });
            self.dispatch();
        }
        RangeBody {
            rx,
            left: len,
            label: self.label.clone(),
        }
    }

    /// Send waiting reads while slots are free: the lowest (or one that has waited past
    /// [`WebOptions::in_order_at_most`]) with every waiting read adjacent to it, up to
    /// `max_range`, as one request. (The reads of `cat`'s 24 in flight reached the mirror in the
    /// order their tasks ran: its first requests went out for 52-80 MiB while the read at 4 MiB,
    /// which its output waited for, went out 60 ms later.)
    fn dispatch(self: &Arc<Self>) {
        loop {
            let group = {
                let mut q = lock(&self.queue);
                q.waiting.retain(|w| !w.tx.is_closed());
                if q.in_flight >= self.options.max_in_flight.max(1) {
                    return;
                }
                let overdue = q
                    .waiting
                    .front()
                    .is_some_and(|w| w.since.elapsed() >= self.options.in_order_at_most);
                let next = match overdue {
                    true => Some(0),
                    false => (0..q.waiting.len()).min_by_key(|&i| q.waiting[i].offset),
                };
                let Some(first) = next.and_then(|i| q.waiting.remove(i)) else {
                    return;
                };
                let (mut start, mut end) = (first.offset, first.offset + first.len);
                let mut group = VecDeque::from([first]);
                let room =
                    |start: u64, end: u64, len: u64| end - start + len <= self.options.max_range;
                loop {
                    if let Some(i) = q
                        .waiting
                        .iter()
                        .position(|w| w.offset == end && room(start, end, w.len))
                    {
                        let w = q.waiting.remove(i).expect("position is in range");
                        end += w.len;
                        group.push_back(w);
                    } else if let Some(i) = q
                        .waiting
                        .iter()
                        .position(|w| w.offset + w.len == start && room(start, end, w.len))
                    {
                        let w = q.waiting.remove(i).expect("position is in range");
                        start = w.offset;
                        group.push_front(w);
                    } else {
                        break;
                    }
                }
                q.in_flight += 1;
                tracing::trace!(
                    "{}: range {start}+{} goes out, {} reads in it, {} in flight, {} waiting",
                    self.label,
                    end - start,
                    group.len(),
                    q.in_flight,
                    q.waiting.len()
                );
                group
            };
            let slot = Slot(self.clone());
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                for w in group {
                    let _ = w.tx.send(Err(HttpError::Setup(
                        "a web mirror was read outside a Tokio runtime".into(),
                    )));
                }
                continue;
            };
            runtime.spawn(async move {
                let mirror = slot.0.clone();
                let mut group: Vec<Wanted> = group.into();
                if let Err(e) = mirror.fetch(&mut group).await {
                    if e.fault() == Fault::Stopped {
                        mirror.stop(&e);
                    }
                    // One broken answer is one fault, however many reads it carried.
                    for (k, w) in group.into_iter().enumerate() {
                        let err = match e.fault() {
                            Fault::Protocol if k > 0 => HttpError::Shared {
                                url: mirror.label.clone(),
                                detail: e.to_string(),
                            },
                            _ => e.clone(),
                        };
                        let _ = w.tx.send(Err(err));
                    }
                }
                drop(slot);
            });
        }
    }

    fn stop(&self, why: &HttpError) {
        let mut state = lock(&self.state);
        if !matches!(*state, State::Stopped { .. }) {
            tracing::warn!("{}: not used again for this image: {why}", self.label);
            *state = State::Stopped {
                reason: why.to_string(),
            };
        }
    }

    /// Where to send the next request: where the last redirect led, or the catalog's URL.
    fn location(&self) -> Result<Url, HttpError> {
        match &*lock(&self.state) {
            State::Untried => Ok(self.url.clone()),
            State::Serving { location, .. } => Ok(location.clone()),
            State::Stopped { reason } => Err(HttpError::Stopped {
                url: self.label.clone(),
                reason: reason.clone(),
            }),
        }
    }

    /// After a failed request, follow the catalog's URL afresh next time.
    fn forget_location(&self) {
        if let State::Serving { location, .. } = &mut *lock(&self.state) {
            location.clone_from(&self.url);
        }
    }

    /// Note a usable answer from `location`: the file there must be the one seen there before.
    fn note_answer(
        &self,
        location: &Url,
        validators: Validators,
        version: Version,
    ) -> Result<(), HttpError> {
        let mut state = lock(&self.state);
        if let State::Serving {
            location: known,
            validators: before,
            ..
        } = &*state
        {
            if known == location {
                if let Some(what) = before.changed(&validators) {
                    return Err(HttpError::Changed {
                        url: url_label(location),
                        what,
                    });
                }
            }
        }
        if let State::Stopped { reason } = &*state {
            return Err(HttpError::Stopped {
                url: self.label.clone(),
                reason: reason.clone(),
            });
        }
        *state = State::Serving {
            location: location.clone(),
            validators,
            version,
        };
        Ok(())
    }

    /// One request for the reads of `group` (adjacent, in order), streaming each its bytes. On
    /// an error, `group` keeps the reads that have not had all their bytes.
    async fn fetch(&self, group: &mut Vec<Wanted>) -> Result<(), HttpError> {
        let start = group[0].offset;
        let len: u64 = group.iter().map(|w| w.len).sum();
        let target = self.location()?;
        let stall = self.options.stall;
        let stalled = |url: &Url| HttpError::Stalled {
            url: url_label(url),
            secs: stall.as_secs(),
        };
        let request = self
            .client
            .get(target.clone())
            .header(RANGE, range::range_header(start, len))
            .header(ACCEPT_ENCODING, "identity")
            .send();
        let response = match tokio::time::timeout(stall, request).await {
            Err(_) => {
                self.forget_location();
                return Err(stalled(&target));
            }
            Ok(Err(e)) => {
                self.forget_location();
                let (detail, fault) = client::describe(e);
                return Err(HttpError::Transport {
                    url: url_label(&target),
                    detail,
                    fault,
                });
            }
            Ok(Ok(r)) => r,
        };
        tracing::trace!("{}: range {start}+{len}: head in", self.label);
        let location = response.url().clone();
        let headers = response.headers();
        let head = Head {
            status: response.status().as_u16(),
            content_range: header(headers, CONTENT_RANGE),
            content_length: header(headers, CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
            etag: header(headers, ETAG),
            last_modified: header(headers, LAST_MODIFIED),
        };
        let answer = match range::check_answer(start, len, self.size, &head) {
            Ok(answer) => answer,
            Err(refusal) => {
                // Dropped unread: a 200 with the whole file is not downloaded.
                drop(response);
                self.forget_location();
                return Err(HttpError::Refused {
                    url: url_label(&location),
                    refusal,
                });
            }
        };
        self.note_answer(&location, answer.validators, response.version())?;
        let mut response = response;
        let mut got = 0u64;
        // Bytes still owed to group[0]; served reads leave the front of `group`.
        let mut owed = group[0].len;
        loop {
            let piece = match tokio::time::timeout(stall, response.chunk()).await {
                Err(_) => return Err(stalled(&location)),
                Ok(Err(e)) => {
                    self.forget_location();
                    if e.is_body() || e.is_decode() {
                        tracing::debug!("{}: {}", self.label, client::describe(e).0);
                        return Err(HttpError::Truncated {
                            url: url_label(&location),
                            got,
                            want: len,
                        });
                    }
                    let (detail, fault) = client::describe(e);
                    return Err(HttpError::Transport {
                        url: url_label(&location),
                        detail,
                        fault,
                    });
                }
                Ok(Ok(None)) if got < len => {
                    return Err(HttpError::Truncated {
                        url: url_label(&location),
                        got,
                        want: len,
                    })
                }
                Ok(Ok(None)) => {
                    tracing::trace!("{}: range {start}+{len}: body in", self.label);
                    return Ok(());
                }
                Ok(Ok(Some(piece))) => piece,
            };
            if got == 0 {
                tracing::trace!("{}: range {start}+{len}: first body bytes", self.label);
            }
            if got + piece.len() as u64 > len {
                return Err(HttpError::Overlong {
                    url: url_label(&location),
                    want: len,
                });
            }
            got += piece.len() as u64;
            let mut piece = piece;
            while !piece.is_empty() {
                let take = piece.len().min(owed as usize);
                let part = piece.split_to(take);
                let _ = group[0].tx.send(Ok(part));
                owed -= take as u64;
                if owed == 0 {
                    group.remove(0);
                    match group.first() {
                        Some(next) => owed = next.len,
                        None => break,
                    }
                }
            }
            if !group.is_empty() && group.iter().all(|w| w.tx.is_closed()) {
                // Nobody wants the rest: dropping the response cuts the request short.
                return Ok(());
            }
        }
    }
}
