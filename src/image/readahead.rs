//! Read-ahead: a reader that goes on where its last read ended, having read at least two chunks'
//! worth back to back, gets a window of chunks fetched ahead of it, doubling with each
//! sequential read up to [`MAX_READAHEAD`]; one window is fetched at a time, in the background
//! (by the image, `Image::after_read`), and what it brings lands in memory first. A few small
//! reads that happen to follow each other (an ISO's directories, read one after another) are not
//! a stream: reading ahead of them would cost a small file of `files/` half a MiB on the wire.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Read-ahead grows to this many bytes past a sequential reader.
pub const MAX_READAHEAD: u64 = 8 << 20;

/// How far out of order the reads of a stream may arrive and still count as that stream: the
/// kernel sends its read-ahead requests in order, several threads take them, and a read's
/// turn here can come a request or two early or late. (A jump further than this starts over.)
const REORDER: u64 = 4 << 20;

struct Sequential {
    /// Where the last read ended.
    next: u64,
    /// Bytes read back to back up to `next`.
    streamed: u64,
    window: u64,
    /// What is fetched (or being fetched) up to.
    ahead_until: u64,
}

/// The read-ahead state of one image.
pub struct ReadAhead {
    on: AtomicBool,
    busy: AtomicBool,
    sequential: Mutex<Sequential>,
}

impl Default for ReadAhead {
    fn default() -> ReadAhead {
        ReadAhead {
            on: AtomicBool::new(true),
            busy: AtomicBool::new(false),
            sequential: Mutex::new(Sequential {
                next: u64::MAX,
                streamed: 0,
                window: 0,
                ahead_until: 0,
            }),
        }
    }
}

impl ReadAhead {
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// After a read of `offset..end`: the bytes to fetch ahead now, if any (then the caller owns
    /// the one window in flight until [`ReadAhead::done`]).
    pub fn window_after(
        &self,
        offset: u64,
        end: u64,
        chunk_size: u64,
        size: u64,
    ) -> Option<(u64, u64)> {
        let mut s = self.sequential.lock().unwrap_or_else(|e| e.into_inner());
        let streaming = s.next != u64::MAX && s.streamed >= 2 * chunk_size;
        // A read of the stream that arrives after one beyond it: the stream is past it already.
        if streaming && offset < s.next && offset.saturating_add(REORDER) >= s.next {
            if end <= s.next {
                return None;
            }
            let new = end - s.next;
            s.next = end;
            s.streamed = s.streamed.saturating_add(new);
        } else {
            // In order, or a little ahead of a read of the stream still to arrive.
            let sequential =
                offset == s.next || (streaming && offset > s.next && offset - s.next <= REORDER);
            s.next = end;
            s.streamed = (end - offset).saturating_add(if sequential { s.streamed } else { 0 });
        }
        let sequential = s.streamed > end - offset;
        if !sequential || s.streamed < 2 * chunk_size {
            s.window = 0;
            s.ahead_until = end;
            return None;
        }
        s.window = (s.window.max(chunk_size * 4) * 2).min(MAX_READAHEAD.max(chunk_size));
        let target = end.saturating_add(s.window).min(size);
        if s.ahead_until >= end.saturating_add(s.window / 2).min(size)
            || self.busy.swap(true, Ordering::Acquire)
        {
            return None;
        }
        let from = s.ahead_until.max(end);
        s.ahead_until = target;
        if from >= target {
            self.done();
            return None;
        }
        Some((from, target))
    }

    /// The window in flight has been fetched (or given up).
    pub fn done(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_grows_with_sequential_reads_and_resets_on_a_jump() {
        let ahead = ReadAhead::default();
        let cs = 64 << 10;
        let size = 1 << 30;
        assert_eq!(ahead.window_after(0, cs, cs, size), None, "first read");
        let (from, to) = ahead.window_after(cs, 2 * cs, cs, size).unwrap();
        assert_eq!((from, to), (2 * cs, 2 * cs + 8 * cs));
        assert_eq!(
            ahead.window_after(2 * cs, 3 * cs, cs, size),
            None,
            "one window at a time"
        );
        ahead.done();
        let (from, to) = ahead.window_after(3 * cs, 4 * cs, cs, size).unwrap();
        assert_eq!(
            (from, to - 4 * cs),
            (10 * cs, 32 * cs),
            "doubled twice, from where it was"
        );
        ahead.done();
        assert_eq!(
            ahead.window_after(100 * cs, 101 * cs, cs, size),
            None,
            "a jump"
        );
        let mut end = 101 * cs;
        for _ in 0..20 {
            if let Some((_, to)) = ahead.window_after(end, end + cs, cs, size) {
                assert!(to - (end + cs) <= MAX_READAHEAD);
                ahead.done();
            }
            end += cs;
        }
    }

    /// Reads of a stream that arrive a little shuffled (1 MiB requests taken by several threads)
    /// keep the stream: the window still grows to its bound. A read far back, or far ahead,
    /// starts over.
    #[test]
    fn a_stream_read_out_of_order_is_still_a_stream() {
        let ahead = ReadAhead::default();
        let cs = 64 << 10;
        let mib = 1 << 20;
        let size = 1 << 30;
        let mut windows = Vec::new();
        for pair in 0..16u64 {
            for k in [1, 0] {
                let at = (2 * pair + k) * mib;
                if let Some((from, to)) = ahead.window_after(at, at + mib, cs, size) {
                    windows.push((from, to));
                    ahead.done();
                }
            }
        }
        assert!(windows.len() >= 8, "{windows:?}");
        let (_, last_to) = *windows.last().unwrap();
        assert!(
            windows.iter().any(|&(from, to)| to - from >= 4 * mib),
            "the window grew: {windows:?}"
        );
        assert!(last_to >= 32 * mib, "kept ahead of the reader: {windows:?}");
        assert_eq!(
            ahead.window_after(200 * mib, 201 * mib, cs, size),
            None,
            "a jump"
        );
        let (from, _) = ahead.window_after(201 * mib, 202 * mib, cs, size).unwrap();
        assert_eq!(from, 202 * mib, "a new stream from there");
        ahead.done();
        assert_eq!(
            ahead.window_after(2 * mib, 3 * mib, cs, size),
            None,
            "far back"
        );
    }

    #[test]
    fn small_reads_that_follow_each_other_are_not_a_stream_until_two_chunks() {
        let ahead = ReadAhead::default();
        let cs = 64 << 10;
        let size = 1 << 30;
        // An ISO's directory sectors, read one after another.
        let mut at = 43_008;
        for _ in 0..20 {
            assert_eq!(ahead.window_after(at, at + 2048, cs, size), None, "at {at}");
            at += 2048;
        }
        // Read on: two chunks' worth back to back is a stream.
        let mut streamed = 20 * 2048;
        while streamed + 16_384 < 2 * cs {
            assert_eq!(ahead.window_after(at, at + 16_384, cs, size), None);
            at += 16_384;
            streamed += 16_384;
        }
        assert!(ahead.window_after(at, at + 16_384, cs, size).is_some());
    }
}
