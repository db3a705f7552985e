//! Ranking and failover with scripted sources on a paused clock: dead, slow, lying, stalling and
//! protocol-breaking sources, and the bounds on every fetch.

use std::collections::VecDeque;

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::image::verify::{verified_for_test, Lie};
use crate::source::Pieces;

const CHUNK: u32 = 4096;
const SIZE: u64 = 16 * CHUNK as u64;

/// What a scripted source does with one read (or open).
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Good,
    /// Refuses connections and reads.
    Dead,
    /// Answers with one wrong byte in the first chunk.
    Lie,
    /// Answers with a protocol violation.
    Protocol,
    /// Answers correctly after this long.
    Slow(Duration),
    /// Never answers.
    Stall,
    /// Says it holds a different number of bytes.
    WrongSize,
    /// Answers half the bytes, then ends.
    Short,
}

struct Scripted {
    name: String,
    data: Bytes,
    /// Modes for the next reads, in order; `mode` once they are used up.
    script: Mutex<VecDeque<Mode>>,
    mode: Mutex<Mode>,
    reads: AtomicU64,
}

impl Scripted {
    fn new(name: &str, mode: Mode) -> Arc<Scripted> {
        Arc::new(Scripted {
            name: name.into(),
            data: image(),
            script: Mutex::new(VecDeque::new()),
            mode: Mutex::new(mode),
            reads: AtomicU64::new(0),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn then(&self, modes: &[Mode]) {
        self.script.lock().unwrap().extend(modes.iter().cloned());
    }

    fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    fn current(&self) -> Mode {
        self.mode.lock().unwrap().clone()
    }
}

#[async_trait]
impl BlockSource for Scripted {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
    async fn open(&self) -> Result<SourceIdentity, SourceError> {
        let size = match self.current() {
            Mode::Dead => return Err(SourceError::Network("connection refused".into())),
            Mode::WrongSize => SIZE + 1,
            _ => SIZE,
        };
        Ok(SourceIdentity {
            size,
            block_size: 512,
            ..Default::default()
        })
    }
    fn read(&self, offset: u64, len: usize) -> Pieces<'_> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let mode = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.current());
        let bytes = self.data.slice(offset as usize..offset as usize + len);
        // Answered in pieces of 3000 bytes, so chunks straddle pieces.
        let pieces = |bytes: Bytes| {
            let out: Vec<Result<Bytes, SourceError>> = (0..bytes.len())
                .step_by(3000)
                .map(|at| Ok(bytes.slice(at..(at + 3000).min(bytes.len()))))
                .collect();
            futures_util::stream::iter(out)
        };
        match mode {
            Mode::Good | Mode::WrongSize => pieces(bytes).boxed(),
            Mode::Dead => futures_util::stream::once(async {
                Err(SourceError::Network("connection reset".into()))
            })
            .boxed(),
            Mode::Lie => {
                let mut wrong = bytes.to_vec();
                wrong[7] ^= 0x20;
                pieces(Bytes::from(wrong)).boxed()
            }
            Mode::Protocol => futures_util::stream::once(async {
                Err(SourceError::Protocol(
                    "response for unknown ITT 0x42".into(),
                ))
            })
            .boxed(),
            Mode::Slow(delay) => futures_util::stream::once(async move {
                tokio::time::sleep(delay).await;
                pieces(bytes)
            })
            .flatten()
            .boxed(),
            Mode::Stall => futures_util::stream::pending().boxed(),
            Mode::Short => pieces(bytes.slice(..len / 2)).boxed(),
        }
    }
}

fn image() -> Bytes {
    Bytes::from((0..SIZE).map(|i| (i * 31 % 253) as u8).collect::<Vec<u8>>())
}

/// Verification against the true bytes.
struct Truth(Bytes);

#[async_trait]
impl Verify for Truth {
    async fn verify(&self, chunks: Vec<(u64, Bytes)>) -> Result<Vec<(u64, Verified)>, Lie> {
        let mut verified = Vec::new();
        for (i, bytes) in chunks {
            let at = (i * u64::from(CHUNK)) as usize;
            if bytes[..] != self.0[at..at + bytes.len()] {
                return Err(Lie {
                    verified,
                    chunk: i,
                    detail: "bytes differ".into(),
                });
            }
            verified.push((i, verified_for_test(bytes)));
        }
        Ok(verified)
    }
}

fn sources(list: &[&Arc<Scripted>]) -> Sources {
    let geometry = Geometry {
        chunk_size: CHUNK,
        image_size: SIZE,
    };
    let list = list
        .iter()
        .map(|s| (*s).clone() as Arc<dyn BlockSource>)
        .collect();
    Sources::new("test-image", geometry, None, list)
}

const RUN: Run = Run { first: 2, count: 4 };

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(90)
}

/// Fetch RUN and check that it is exactly the image's bytes.
async fn fetch_ok(sources: &Sources) {
    let got = sources.fetch(RUN, &Truth(image()), deadline()).await;
    let got = got.unwrap_or_else(|e| panic!("{e:?}"));
    let indexes: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, [2, 3, 4, 5]);
    let bytes: Vec<u8> = got.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    assert!(bytes[..] == image()[2 * CHUNK as usize..6 * CHUNK as usize]);
}

/// Fetch RUN, which must fail.
async fn fetch_err(sources: &Sources) -> FetchError {
    let result = sources.fetch(RUN, &Truth(image()), deadline()).await;
    result.map(|_| ()).unwrap_err()
}

fn describe_preferred(sources: &Sources) -> String {
    sources.preferred().unwrap().describe()
}

#[tokio::test(start_paused = true)]
async fn a_dead_source_is_passed_over_and_used_again_once_healthy() {
    let a = Scripted::new("a", Mode::Dead);
    let b = Scripted::new("b", Mode::Good);
    let sources = sources(&[&a, &b]);
    fetch_ok(&sources).await;
    assert_eq!(describe_preferred(&sources), "b");
    assert!(sources
        .standing()
        .contains("a: resting after: connection refused"));
    // While it rests, a is passed over without being asked.
    fetch_ok(&sources).await;
    assert_eq!(b.reads(), 2);
    a.set(Mode::Good);
    tokio::time::advance(REST_FIRST).await;
    fetch_ok(&sources).await;
    assert_eq!((a.reads(), b.reads()), (1, 2), "a is preferred again");
    assert_eq!(describe_preferred(&sources), "a");
    assert_eq!(sources.standing(), "");
}

#[tokio::test(start_paused = true)]
async fn a_lying_source_is_passed_over_then_dropped_after_three_lies() {
    let a = Scripted::new("a", Mode::Lie);
    let b = Scripted::new("b", Mode::Good);
    let sources = sources(&[&a, &b]);
    for round in 1..=FAULT_BUDGET as u64 {
        fetch_ok(&sources).await;
        assert_eq!((a.reads(), b.reads()), (round, round));
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    let standing = sources.standing();
    assert!(
        standing.contains("a: dropped: 3 faults, the last: chunk 2 failed verification"),
        "{standing}"
    );
    fetch_ok(&sources).await;
    assert_eq!(a.reads(), 3, "a dropped source is never asked again");
}

#[tokio::test(start_paused = true)]
async fn a_lie_with_no_other_source_fails_naming_the_chunk_and_the_source() {
    let a = Scripted::new("a", Mode::Lie);
    let sources = sources(&[&a]);
    let err = fetch_err(&sources).await;
    assert_eq!(
        err,
        FetchError::Lie {
            chunk: 2,
            detail: "bytes differ from a".into()
        }
    );
    assert_eq!(
        a.reads(),
        1,
        "the liar is not asked again for the same chunk"
    );
    a.set(Mode::Good);
    tokio::time::advance(REST_FIRST).await;
    fetch_ok(&sources).await;
}

#[tokio::test(start_paused = true)]
async fn with_every_source_dropped_reads_fail_at_once_naming_source_and_violation() {
    let a = Scripted::new("a", Mode::Protocol);
    let b = Scripted::new("b", Mode::WrongSize);
    let sources = sources(&[&a, &b]);
    let err = fetch_err(&sources).await;
    let FetchError::Dropped(line) = err else {
        panic!("{err:?}")
    };
    assert!(
        line.contains("a: 3 faults, the last: response for unknown ITT 0x42"),
        "{line}"
    );
    assert!(
        line.contains("b: b holds 65537 bytes, the image is 65536 bytes"),
        "{line}"
    );
    assert!(!line.contains('\n'));
    assert_eq!((a.reads(), b.reads()), (3, 0));
    let before = Instant::now();
    let again = sources.fetch(RUN, &Truth(image()), deadline()).await;
    assert!(matches!(again, Err(FetchError::Dropped(_))));
    assert_eq!(Instant::now(), before, "fails at once");
    assert_eq!(a.reads(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_outstanding_read_ends_when_its_source_is_dropped() {
    let a = Scripted::new("a", Mode::Protocol);
    a.then(&[Mode::Stall]);
    let sources = sources(&[&a]);
    let started = Instant::now();
    let truth = Truth(image());
    let stalled = sources.fetch(RUN, &truth, deadline());
    let others = async {
        // Let the stalled read go out first.
        tokio::task::yield_now().await;
        sources
            .fetch(Run { first: 8, count: 1 }, &truth, deadline())
            .await
    };
    let (stalled, other) = tokio::join!(stalled, others);
    assert!(matches!(other, Err(FetchError::Dropped(_))), "{other:?}");
    assert!(
        matches!(stalled, Err(FetchError::Dropped(_))),
        "{stalled:?}"
    );
    assert!(
        Instant::now() - started < Duration::from_secs(5),
        "the stalled read ended with the drop, long before its deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_source_is_hedged_and_the_first_verified_answer_wins() {
    let a = Scripted::new("a", Mode::Slow(Duration::from_secs(5)));
    let b = Scripted::new("b", Mode::Good);
    let sources = sources(&[&a, &b]);
    // No latency on record: hedged after HEDGE_UNKNOWN.
    let started = Instant::now();
    fetch_ok(&sources).await;
    assert_eq!(Instant::now() - started, HEDGE_UNKNOWN);
    assert_eq!((a.reads(), b.reads()), (1, 1));
    assert!(sources.standing().contains("a: passed over as slow"));
    // Demoted: b is asked first for a while, then a again.
    fetch_ok(&sources).await;
    assert_eq!((a.reads(), b.reads()), (1, 2));
    a.set(Mode::Slow(Duration::from_millis(10)));
    tokio::time::advance(SLOW_REST).await;
    for _ in 0..4 {
        fetch_ok(&sources).await;
    }
    assert_eq!((a.reads(), b.reads()), (5, 2));
    // With 10 ms on record, an answer that takes 2 s is hedged after HEDGE_FLOOR.
    a.then(&[Mode::Slow(Duration::from_secs(2))]);
    let started = Instant::now();
    fetch_ok(&sources).await;
    assert_eq!(Instant::now() - started, HEDGE_FLOOR);
    assert_eq!(b.reads(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_lone_slow_source_is_waited_for() {
    let a = Scripted::new("a", Mode::Slow(Duration::from_secs(3)));
    let sources = sources(&[&a]);
    fetch_ok(&sources).await;
    assert_eq!(a.reads(), 1, "nothing to hedge with; nothing asked twice");
}

#[tokio::test(start_paused = true)]
async fn every_fetch_ends_by_its_deadline() {
    let a = Scripted::new("a", Mode::Stall);
    let sources = sources(&[&a]);
    let deadline = Instant::now() + Duration::from_secs(7);
    let err = sources
        .fetch(RUN, &Truth(image()), deadline)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::TimedOut("no answer from a".into()));
    assert_eq!(Instant::now(), deadline);
}

#[tokio::test(start_paused = true)]
async fn a_network_outage_fails_fast_and_is_retried_later() {
    let a = Scripted::new("a", Mode::Dead);
    let sources = sources(&[&a]);
    let started = Instant::now();
    let err = fetch_err(&sources).await;
    assert_eq!(err, FetchError::Unavailable("a: connection refused".into()));
    assert!(Instant::now() - started <= 2 * WAIT_FOR_REST);
    // Resting longer than a read may wait: the next read fails without asking.
    let before = Instant::now();
    assert!(sources
        .fetch(RUN, &Truth(image()), deadline())
        .await
        .is_err());
    assert_eq!(Instant::now(), before);
    a.set(Mode::Good);
    tokio::time::advance(REST_MAX).await;
    fetch_ok(&sources).await;
}

#[tokio::test(start_paused = true)]
async fn a_transient_fault_is_retried_within_the_read() {
    let a = Scripted::new("a", Mode::Good);
    a.then(&[Mode::Dead, Mode::Short]);
    let sources = sources(&[&a]);
    fetch_ok(&sources).await;
    assert_eq!(a.reads(), 3);
    // The short read counted: two more faults drop the source.
    a.then(&[Mode::Protocol, Mode::Protocol]);
    let err = fetch_err(&sources).await;
    let FetchError::Dropped(line) = err else {
        panic!("{err:?}")
    };
    assert!(line.contains("a: 3 faults"), "{line}");
}

#[tokio::test(start_paused = true)]
async fn connecting_finds_the_first_source_that_is_the_image() {
    let a = Scripted::new("a", Mode::Dead);
    let b = Scripted::new("b", Mode::WrongSize);
    let c = Scripted::new("c", Mode::Good);
    let sources = sources(&[&a, &b, &c]);
    sources.connect_any().await.unwrap();
    assert_eq!(describe_preferred(&sources), "c");
    let standing = sources.standing();
    assert!(
        standing.contains("a: resting after: connection refused"),
        "{standing}"
    );
    assert!(
        standing.contains("b: dropped: b holds 65537 bytes"),
        "{standing}"
    );
}
