//! The ranking and failover of an image's sources, above the [`BlockSource`] seam and for every
//! kind of source at once (iSCSI portals, web mirrors, local files).
//!
//! A fetch asks the best source for a run of chunks and verifies each chunk as it lands:
//! - **Order of preference** is the catalog's order. The first usable source is asked; a source
//!   passed over for a while is asked again first once its rest is over.
//! - **Dead** (a [`SourceError::Network`] or [`SourceError::Io`] fault): the source rests, for
//!   [`REST_FIRST`] doubling with each fault in a row up to [`REST_MAX`], and the next one is
//!   asked. A fetch waits for a resting source at most [`WAIT_FOR_REST`]; when every source is
//!   resting longer than that, the fetch fails at once, so uncached reads fail fast while the
//!   network is down and cached ones go on.
//! - **Lying or breaking the protocol** (a chunk that fails verification, a
//!   [`SourceError::Protocol`] fault): counts against the source; after [`FAULT_BUDGET`] it is
//!   dropped for the image, and an [`SourceError::Unusable`] source at once. A chunk a source
//!   lied about is not asked of it again in the same fetch.
//! - **Slow**: a request that takes longer than [`HEDGE_FACTOR`] times the source's recent
//!   latency is sent to the next source too, and the first verified answer wins; a source that
//!   loses such a race is demoted for a while ([`SLOW_REST`], doubling).
//! - **Bounded**: every fetch ends by its deadline (the read timeout). When every source is
//!   dropped, outstanding and later fetches fail at once with one line naming each source and
//!   its last violation.
//!
//! Verification is the caller's ([`Verify`]); this module only cuts the pieces of a read into
//! chunks ([`Cutter`]) and keeps score.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::chunks::{Cutter, Geometry, Run};
use super::verify::{Verified, VerifiedChunks, Verify};
use crate::source::{BlockSource, SourceError, SourceIdentity};

/// Protocol faults and lies a source may commit before it is dropped for the image.
pub const FAULT_BUDGET: u32 = 3;
/// First rest after a network fault; it doubles with each fault in a row.
pub const REST_FIRST: Duration = Duration::from_millis(100);
/// Longest rest after network faults.
pub const REST_MAX: Duration = Duration::from_secs(30);
/// Longest a fetch waits for a resting source before it fails.
pub const WAIT_FOR_REST: Duration = Duration::from_secs(1);
/// A request is hedged after this many times the source's recent latency ...
pub const HEDGE_FACTOR: u32 = 3;
/// ... but never sooner than this ...
pub const HEDGE_FLOOR: Duration = Duration::from_millis(50);
/// ... and after this long when the source has no latency on record yet.
pub const HEDGE_UNKNOWN: Duration = Duration::from_secs(1);
/// Hedged requests in flight at most, per image (a burst of slow answers does not double the
/// load on every source).
const MAX_HEDGES: usize = 4;
/// How long a source that lost a hedge is demoted; it doubles with each loss in a row.
pub const SLOW_REST: Duration = Duration::from_secs(5);
/// Longest demotion for slowness.
const SLOW_REST_MAX: Duration = Duration::from_secs(60);
/// Longest wait for a source to connect when the image is opened.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a race of attempts gives: the verified run, or each attempt that failed.
type RaceResult = Result<VerifiedChunks, Vec<(usize, Failed)>>;

/// No source could be connected to: why each failed, and whether any of them answered (and
/// ruled itself out: no such LUN, authentication, another size) rather than not answering.
#[derive(Debug)]
pub struct NoneConnected {
    pub reasons: String,
    pub answered: bool,
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Chunk `chunk` failed verification from every source that was asked for it.
    Lie { chunk: u64, detail: String },
    /// No source answered (all resting after network faults).
    Unavailable(String),
    /// Every source has been dropped for the image: one line naming each and why.
    Dropped(String),
    /// The request was wrong (past the end).
    OutOfRange(String),
    /// No verified answer by the deadline.
    TimedOut(String),
}

/// How a source stands with this image.
#[derive(Debug, Clone)]
enum Health {
    /// Asked in its turn.
    Ready,
    /// After `failures` network faults in a row: passed over until `until`.
    Resting {
        until: Instant,
        failures: u32,
        last: String,
    },
    /// Lost `strikes` hedges in a row: asked only when no other source is ready, until `until`.
    Slow { until: Instant, strikes: u32 },
    /// Never asked again for this image.
    Dropped { reason: String },
}

struct State {
    health: Health,
    /// Protocol faults and lies so far.
    faults: u32,
    /// Recent time to complete a request (exponentially weighted).
    latency: Option<Duration>,
}

/// Which source to ask next.
#[derive(Debug, PartialEq, Eq)]
enum Pick {
    Source(usize),
    /// Every usable source rests until then.
    Wait(Instant),
    /// Every source is dropped (or excluded).
    None,
}

/// Why one attempt failed, with the chunks it had verified before.
struct Failed {
    verified: Vec<(u64, Verified)>,
    fault: Fault,
}

enum Fault {
    Source(SourceError),
    Lie {
        chunk: u64,
        detail: String,
    },
    /// Dropped (for faults elsewhere) while this attempt was outstanding.
    Dropped(String),
    TimedOut,
}

/// The sources of one image and how each stands.
pub struct Sources {
    /// The image's name, for messages.
    image: String,
    geometry: Geometry,
    expect_serial: Option<String>,
    list: Vec<Arc<dyn BlockSource>>,
    states: Mutex<Vec<State>>,
    /// Bumped whenever a source is dropped, so outstanding attempts on it end at once.
    drops: watch::Sender<u64>,
    /// The source that answered last (for `info/portal` and facts).
    preferred: AtomicUsize,
    hedges: AtomicUsize,
    bytes_fetched: AtomicU64,
}

fn ewma(old: Option<Duration>, new: Duration) -> Duration {
    match old {
        Some(old) => old.mul_f64(0.875) + new.mul_f64(0.125),
        None => new,
    }
}

impl Sources {
    pub fn new(
        image: &str,
        geometry: Geometry,
        expect_serial: Option<String>,
        list: Vec<Arc<dyn BlockSource>>,
    ) -> Sources {
        let states = list
            .iter()
            .map(|_| State {
                health: Health::Ready,
                faults: 0,
                latency: None,
            })
            .collect();
        Sources {
            image: image.to_string(),
            geometry,
            expect_serial,
            list,
            states: Mutex::new(states),
            drops: watch::channel(0).0,
            preferred: AtomicUsize::new(0),
            hedges: AtomicUsize::new(0),
            bytes_fetched: AtomicU64::new(0),
        }
    }

    fn states(&self) -> MutexGuard<'_, Vec<State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The source that answered last (the first one before any did).
    pub fn preferred(&self) -> Option<&Arc<dyn BlockSource>> {
        self.list.get(self.preferred.load(Ordering::Relaxed))
    }

    /// Verified bytes delivered by sources.
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_fetched.load(Ordering::Relaxed)
    }

    /// One line per source that is not simply ready: resting, slow or dropped, and why.
    pub fn standing(&self) -> String {
        let states = self.states();
        let mut out = Vec::new();
        for (source, state) in self.list.iter().zip(states.iter()) {
            let what = match &state.health {
                Health::Ready => continue,
                Health::Resting { last, .. } => format!("resting after: {last}"),
                Health::Slow { .. } => "passed over as slow".to_string(),
                Health::Dropped { reason } => format!("dropped: {reason}"),
            };
            out.push(format!("{}: {what}", source.describe()));
        }
        out.join("; ")
    }

    fn pick(&self, now: Instant, exclude: &[usize]) -> Pick {
        let states = self.states();
        let mut slow = None;
        let mut earliest: Option<Instant> = None;
        for (i, state) in states.iter().enumerate() {
            if exclude.contains(&i) {
                continue;
            }
            match &state.health {
                Health::Ready => return Pick::Source(i),
                Health::Resting { until, .. } | Health::Slow { until, .. } if *until <= now => {
                    return Pick::Source(i)
                }
                Health::Resting { until, .. } => {
                    earliest = Some(earliest.map_or(*until, |e| e.min(*until)));
                }
                Health::Slow { .. } => {
                    slow.get_or_insert(i);
                }
                Health::Dropped { .. } => {}
            }
        }
        match (slow, earliest) {
            (Some(i), _) => Pick::Source(i),
            (None, Some(until)) => Pick::Wait(until),
            (None, None) => Pick::None,
        }
    }

    /// A source ready now to take a hedged request, other than `busy` and `exclude`.
    fn pick_hedge(&self, now: Instant, busy: usize, exclude: &[usize]) -> Option<usize> {
        let mut skip = exclude.to_vec();
        skip.push(busy);
        match self.pick(now, &skip) {
            Pick::Source(i) => {
                let states = self.states();
                let ready = match &states[i].health {
                    Health::Ready => true,
                    Health::Resting { until, .. } | Health::Slow { until, .. } => *until <= now,
                    Health::Dropped { .. } => false,
                };
                ready.then_some(i)
            }
            _ => None,
        }
    }

    fn hedge_delay(&self, i: usize) -> Duration {
        match self.states()[i].latency {
            Some(latency) => (latency * HEDGE_FACTOR).max(HEDGE_FLOOR),
            None => HEDGE_UNKNOWN,
        }
    }

    fn dropped_reason(&self, i: usize) -> Option<String> {
        match &self.states()[i].health {
            Health::Dropped { reason } => Some(reason.clone()),
            _ => None,
        }
    }

    /// "source: why" for each source whose health `why` describes, joined with "; ".
    fn reasons(&self, why: impl Fn(&Health) -> Option<&String>) -> String {
        let states = self.states();
        let reasons: Vec<String> = self
            .list
            .iter()
            .zip(states.iter())
            .filter_map(|(source, state)| {
                why(&state.health).map(|reason| format!("{}: {reason}", source.describe()))
            })
            .collect();
        reasons.join("; ")
    }

    /// Every source dropped: one line naming each and why.
    fn all_dropped(&self) -> String {
        let reasons = self.reasons(|health| match health {
            Health::Dropped { reason } => Some(reason),
            _ => None,
        });
        format!("every source was dropped ({reasons})")
    }

    /// The last network fault of each resting source.
    fn resting_reason(&self) -> String {
        self.reasons(|health| match health {
            Health::Resting { last, .. } => Some(last),
            _ => None,
        })
    }

    /// Resolves with the reason once source `i` is dropped.
    async fn until_dropped(&self, i: usize) -> String {
        let mut rx = self.drops.subscribe();
        loop {
            if let Some(reason) = self.dropped_reason(i) {
                return reason;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Drop source `i` for this image. A warning when others remain to fail over to; the last
    /// one's drop is told by the reads that fail for it, in one line each.
    fn drop_source(&self, states: &mut [State], i: usize, reason: String) {
        let others = states
            .iter()
            .enumerate()
            .any(|(j, s)| j != i && !matches!(s.health, Health::Dropped { .. }));
        let source = self.list[i].describe();
        if others {
            tracing::warn!(
                "{}: dropping source {source} for this image: {reason}",
                self.image
            );
        } else {
            tracing::info!(
                "{}: dropping source {source} for this image: {reason}",
                self.image
            );
        }
        states[i].health = Health::Dropped { reason };
        self.drops.send_modify(|n| *n += 1);
    }

    fn rest(health: &Health, now: Instant, last: String) -> Health {
        let failures = match health {
            Health::Resting { failures, .. } => failures.saturating_add(1),
            _ => 1,
        };
        let rest = REST_FIRST
            .saturating_mul(1 << (failures - 1).min(16))
            .min(REST_MAX);
        Health::Resting {
            until: now + rest,
            failures,
            last,
        }
    }

    /// Score one failed attempt of source `i`.
    fn failed(&self, i: usize, fault: &Fault) {
        let now = Instant::now();
        let mut states = self.states();
        if matches!(states[i].health, Health::Dropped { .. }) {
            return;
        }
        let counted = match fault {
            Fault::Source(SourceError::Network(e) | SourceError::Io(e)) => {
                tracing::info!(
                    "{}: {}: {e}; passing it over for a while",
                    self.image,
                    self.list[i].describe()
                );
                states[i].health = Self::rest(&states[i].health, now, e.clone());
                return;
            }
            Fault::TimedOut => {
                states[i].health = Self::rest(&states[i].health, now, "no answer in time".into());
                return;
            }
            Fault::Source(SourceError::Unusable(e)) => {
                self.drop_source(&mut states, i, e.clone());
                return;
            }
            Fault::Source(SourceError::OutOfRange(_)) | Fault::Dropped(_) => return,
            Fault::Source(SourceError::Protocol(e)) => e.clone(),
            Fault::Lie { chunk, detail } => format!("chunk {chunk} failed verification ({detail})"),
        };
        states[i].faults += 1;
        if states[i].faults >= FAULT_BUDGET {
            let reason = format!("{} faults, the last: {counted}", states[i].faults);
            self.drop_source(&mut states, i, reason);
        } else {
            states[i].health = Self::rest(&states[i].health, now, counted);
        }
    }

    /// Score a verified answer of source `i` that took `took`.
    fn succeeded(&self, i: usize, took: Duration) {
        let mut states = self.states();
        let state = &mut states[i];
        if !matches!(state.health, Health::Dropped { .. }) {
            state.health = Health::Ready;
        }
        state.latency = Some(ewma(state.latency, took));
        self.preferred.store(i, Ordering::Relaxed);
    }

    /// Source `i` lost a hedge: demote it for a while.
    fn was_slow(&self, i: usize) {
        let now = Instant::now();
        let mut states = self.states();
        let strikes = match &states[i].health {
            Health::Dropped { .. } => return,
            Health::Slow { strikes, .. } => strikes.saturating_add(1),
            _ => 1,
        };
        let rest = SLOW_REST
            .saturating_mul(1 << (strikes - 1).min(8))
            .min(SLOW_REST_MAX);
        tracing::debug!(
            "{}: {} was slower than another source",
            self.image,
            self.list[i].describe()
        );
        states[i].health = Health::Slow {
            until: now + rest,
            strikes,
        };
    }

    /// Whether `id` is this image: its size, and its serial when one is expected.
    fn check_identity(&self, i: usize, id: &SourceIdentity) -> Result<(), SourceError> {
        let describe = || self.list[i].describe();
        if id.size != self.geometry.image_size {
            return Err(SourceError::Unusable(format!(
                "{} holds {} bytes, the image is {} bytes",
                describe(),
                id.size,
                self.geometry.image_size
            )));
        }
        if let Some(serial) = &self.expect_serial {
            if id.serial.as_ref() != Some(serial) {
                return Err(SourceError::Unusable(format!(
                    "{}: LUN serial differs from the one cached",
                    describe()
                )));
            }
        }
        Ok(())
    }

    /// Connect to the first source that answers and is this image (when the image is opened);
    /// each one passed over is named in a warning.
    pub async fn connect_any(&self) -> Result<(), NoneConnected> {
        let mut errors = Vec::new();
        let mut answered = false;
        let mut tried = Vec::new();
        while let Pick::Source(i) = self.pick(Instant::now(), &tried) {
            tried.push(i);
            let source = &self.list[i];
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, source.open()).await;
            let result = match opened {
                Ok(Ok(id)) => self.check_identity(i, &id),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(SourceError::Network("connect timed out".into())),
            };
            let err = match result {
                Ok(()) => {
                    tracing::info!("{}: connected to {}", self.image, source.describe());
                    self.succeeded_to_connect(i);
                    return Ok(());
                }
                Err(e) => e,
            };
            // A source that answered and ruled itself out, rather than one that did not answer.
            answered |= !matches!(err, SourceError::Network(_));
            let text = err.to_string();
            let text = if text.contains(&source.describe()) {
                text
            } else {
                format!("{}: {text}", source.describe())
            };
            if tried.len() < self.list.len() {
                // Passed over, not given up: a later fetch may come back to it.
                tracing::warn!("{}: {text}; trying the next portal", self.image);
            }
            errors.push(text);
            self.failed(i, &Fault::Source(err));
        }
        if errors.is_empty() {
            errors.push(if self.list.is_empty() {
                "the image has no sources".to_string()
            } else {
                self.all_dropped()
            });
        }
        Err(NoneConnected {
            reasons: errors.join("; "),
            answered,
        })
    }

    fn succeeded_to_connect(&self, i: usize) {
        self.states()[i].health = Health::Ready;
        self.preferred.store(i, Ordering::Relaxed);
    }

    /// Fetch `run` from the best source, verifying each chunk as it lands; fail over, hedge and
    /// keep score as the module documentation says. Ends by `deadline`.
    pub async fn fetch(
        &self,
        run: Run,
        verify: &dyn Verify,
        deadline: Instant,
    ) -> Result<VerifiedChunks, FetchError> {
        let mut have: Vec<(u64, Verified)> = Vec::with_capacity(run.count as usize);
        // Sources that lied in this fetch are not asked again for it.
        let mut liars: Vec<usize> = Vec::new();
        let mut lie: Option<(u64, String)> = None;
        let mut last_error = String::new();
        loop {
            let left = run.after(have.len() as u64);
            if left.count == 0 {
                return Ok(have);
            }
            let now = Instant::now();
            let primary = match self.pick(now, &liars) {
                Pick::Source(i) => i,
                Pick::Wait(until) => {
                    if until > deadline || until - now > WAIT_FOR_REST {
                        let reason = self.resting_reason();
                        return Err(FetchError::Unavailable(if reason.is_empty() {
                            last_error
                        } else {
                            reason
                        }));
                    }
                    tokio::time::sleep_until(until).await;
                    continue;
                }
                Pick::None => {
                    return Err(match lie {
                        Some((chunk, detail)) if !self.list.is_empty() => {
                            FetchError::Lie { chunk, detail }
                        }
                        _ if self.list.is_empty() => {
                            FetchError::Unavailable("the image has no sources".into())
                        }
                        _ => FetchError::Dropped(self.all_dropped()),
                    })
                }
            };
            let failures = match self.race(primary, left, verify, deadline, &liars).await {
                Ok(chunks) => {
                    have.extend(chunks);
                    continue;
                }
                Err(failures) => failures,
            };
            for (i, failed) in failures {
                let from = self.list[i].describe();
                // Chunks verified before the fault are kept when they continue what we have.
                let next = run.first + have.len() as u64;
                if failed.verified.first().map(|(c, _)| *c) == Some(next) {
                    have.extend(failed.verified);
                }
                match failed.fault {
                    Fault::Lie { chunk, detail } => {
                        liars.push(i);
                        lie = Some((chunk, format!("{detail} from {from}")));
                    }
                    Fault::Source(SourceError::OutOfRange(e)) => {
                        return Err(FetchError::OutOfRange(format!("{from}: {e}")))
                    }
                    Fault::Source(e) => last_error = format!("{from}: {e}"),
                    Fault::Dropped(reason) => last_error = format!("{from}: {reason}"),
                    Fault::TimedOut => {
                        return Err(FetchError::TimedOut(format!("no answer from {from}")))
                    }
                }
            }
        }
    }

    /// Ask `primary` for `run`; when it is slower than its recent latency, ask another source
    /// too. The first verified answer wins. Err holds every attempt that failed.
    async fn race(
        &self,
        primary: usize,
        run: Run,
        verify: &dyn Verify,
        deadline: Instant,
        exclude: &[usize],
    ) -> RaceResult {
        let started = Instant::now();
        let first = self.attempt(primary, run, verify, deadline);
        tokio::pin!(first);
        let hedge_at = (started + self.hedge_delay(primary)).min(deadline);
        tokio::select! {
            result = &mut first => return self.settle(primary, started, result),
            _ = tokio::time::sleep_until(hedge_at) => {}
        }
        let second = match self.pick_hedge(Instant::now(), primary, exclude) {
            Some(j) if self.hedges.fetch_add(1, Ordering::AcqRel) < MAX_HEDGES => j,
            Some(_) => {
                self.hedges.fetch_sub(1, Ordering::AcqRel);
                return self.settle(primary, started, first.await);
            }
            None => return self.settle(primary, started, first.await),
        };
        let _hedge = HedgeSlot(&self.hedges);
        tracing::debug!(
            "{}: {} is slow; asking {} too",
            self.image,
            self.list[primary].describe(),
            self.list[second].describe()
        );
        let hedged_at = Instant::now();
        let other = self.attempt(second, run, verify, deadline);
        tokio::pin!(other);
        let (winner, loser, result) = tokio::select! {
            result = &mut first => (primary, second, result),
            result = &mut other => (second, primary, result),
        };
        let began = |i: usize| if i == primary { started } else { hedged_at };
        match result {
            Ok(chunks) => {
                self.succeeded(winner, Instant::now() - began(winner));
                if winner == second {
                    self.was_slow(primary);
                }
                Ok(chunks)
            }
            Err(failed) => {
                self.failed(winner, &failed.fault);
                let rest = if loser == primary {
                    first.await
                } else {
                    other.await
                };
                match self.settle(loser, began(loser), rest) {
                    Ok(chunks) => Ok(chunks),
                    Err(mut more) => {
                        more.insert(0, (winner, failed));
                        Err(more)
                    }
                }
            }
        }
    }

    fn settle(
        &self,
        i: usize,
        started: Instant,
        result: Result<VerifiedChunks, Failed>,
    ) -> RaceResult {
        match result {
            Ok(chunks) => {
                self.succeeded(i, Instant::now() - started);
                Ok(chunks)
            }
            Err(failed) => {
                self.failed(i, &failed.fault);
                Err(vec![(i, failed)])
            }
        }
    }

    /// One read of `run` from source `i`, each chunk verified as it lands; ends early when the
    /// source is dropped meanwhile or the deadline passes.
    async fn attempt(
        &self,
        i: usize,
        run: Run,
        verify: &dyn Verify,
        deadline: Instant,
    ) -> Result<VerifiedChunks, Failed> {
        let work = self.read_verified(i, run, verify);
        tokio::select! {
            result = tokio::time::timeout_at(deadline, work) => match result {
                Ok(result) => result,
                Err(_) => Err(Failed { verified: Vec::new(), fault: Fault::TimedOut }),
            },
            reason = self.until_dropped(i) => Err(Failed {
                verified: Vec::new(),
                fault: Fault::Dropped(reason),
            }),
        }
    }

    async fn read_verified(
        &self,
        i: usize,
        run: Run,
        verify: &dyn Verify,
    ) -> Result<VerifiedChunks, Failed> {
        let source = &self.list[i];
        let mut verified: Vec<(u64, Verified)> = Vec::with_capacity(run.count as usize);
        let fail = |verified, e: SourceError| Failed {
            verified,
            fault: Fault::Source(e),
        };
        match source.open().await {
            Ok(id) => {
                if let Err(e) = self.check_identity(i, &id) {
                    return Err(fail(verified, e));
                }
            }
            Err(e) => return Err(fail(verified, e)),
        }
        let (offset, len) = run.bytes(self.geometry);
        let mut cutter = Cutter::for_run(self.geometry, run);
        let mut pieces = source.read(offset, len);
        while let Some(piece) = pieces.next().await {
            let chunks = match piece.map(|p| cutter.push(p)) {
                Ok(Ok(chunks)) => chunks,
                Ok(Err(overrun)) => {
                    return Err(fail(
                        verified,
                        SourceError::Protocol(format!(
                            "read of {len} bytes at {offset}: {overrun}"
                        )),
                    ))
                }
                Err(e) => return Err(fail(verified, e)),
            };
            if chunks.is_empty() {
                continue;
            }
            let bytes: u64 = chunks.iter().map(|(_, b)| b.len() as u64).sum();
            match verify.verify(chunks).await {
                Ok(good) => {
                    self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
                    verified.extend(good);
                }
                Err(lie) => {
                    verified.extend(lie.verified);
                    return Err(Failed {
                        verified,
                        fault: Fault::Lie {
                            chunk: lie.chunk,
                            detail: lie.detail,
                        },
                    });
                }
            }
        }
        if let Some(partial) = cutter.finish() {
            let got: usize = verified.iter().map(|(_, v)| v.len()).sum::<usize>() + partial.len();
            return Err(fail(
                verified,
                SourceError::Protocol(format!("short read: {got} of {len} bytes at {offset}")),
            ));
        }
        Ok(verified)
    }
}

/// A hedge in flight, counted against [`MAX_HEDGES`] until dropped.
struct HedgeSlot<'a>(&'a AtomicUsize);

impl Drop for HedgeSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
