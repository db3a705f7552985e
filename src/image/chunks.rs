//! Offset ↔ chunk arithmetic: which chunks a byte range touches ([`Span`]), runs of adjacent
//! chunks fetched with one read ([`Run`], [`runs`]), and the cutting of a read's pieces into
//! chunks as they land ([`Cutter`]).
//!
//! An image is cut into chunks of the manifest's chunk size (the last one may be short); chunk
//! `i` holds bytes `i * chunk size ..` ([`Geometry`]).

use bytes::{BufMut, Bytes};

use crate::iobuf::{pool, AlignedBuffer};

pub use crate::cache::Geometry;

/// The chunks a byte range touches, and where the range lies in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first: u64,
    pub last: u64,
    /// Bytes of the first chunk before the range.
    pub skip: usize,
    /// Bytes in the range.
    pub len: usize,
}

impl Span {
    /// The chunks of `offset..end`, a non-empty range within the image.
    pub fn of(geometry: Geometry, offset: u64, end: u64) -> Span {
        let cs = u64::from(geometry.chunk_size);
        let first = offset / cs;
        Span {
            first,
            last: (end - 1) / cs,
            skip: (offset - first * cs) as usize,
            len: (end - offset) as usize,
        }
    }

    pub fn chunks(&self) -> std::ops::RangeInclusive<u64> {
        self.first..=self.last
    }

    /// How many chunks.
    pub fn count(&self) -> usize {
        (self.last - self.first + 1) as usize
    }
}

/// Adjacent chunks `first..first + count`, fetched with one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub count: u64,
}

impl Run {
    /// The part of the run after its first `done` chunks.
    pub fn after(self, done: u64) -> Run {
        Run {
            first: self.first + done,
            count: self.count.saturating_sub(done),
        }
    }

    pub fn chunks(self) -> std::ops::Range<u64> {
        self.first..self.first + self.count
    }

    /// Where the run lies in the image: its first byte and its length.
    pub fn bytes(self, geometry: Geometry) -> (u64, usize) {
        let offset = self.first * u64::from(geometry.chunk_size);
        let len = self.chunks().map(|c| geometry.chunk_len(c)).sum();
        (offset, len)
    }
}

/// Sorted chunk numbers as runs of adjacent chunks, each at most `max_bytes` (and at least one
/// chunk).
pub fn runs(geometry: Geometry, chunks: &[u64], max_bytes: u64) -> Vec<Run> {
    let per_run = (max_bytes / u64::from(geometry.chunk_size)).max(1);
    let mut runs: Vec<Run> = Vec::new();
    for &c in chunks {
        match runs.last_mut() {
            Some(run) if run.first + run.count == c && run.count < per_run => run.count += 1,
            _ => runs.push(Run { first: c, count: 1 }),
        }
    }
    runs
}

/// Consecutive pieces of a read cut into chunks: a chunk that lies within one piece is a slice
/// of it; only a chunk that straddles pieces is copied, into a page-aligned buffer (so that the
/// cache writes it with direct I/O from where it lies, like a slice of a READ's data).
pub struct Cutter {
    /// Lengths of the chunks still to come, next last (for popping).
    lens: Vec<usize>,
    next: u64,
    /// The chunk being put together from pieces, when one is.
    partial: Option<AlignedBuffer>,
}

impl Cutter {
    /// Chunks numbered from `first`, of these lengths.
    pub fn new(first: u64, lens: impl IntoIterator<Item = usize>) -> Cutter {
        let mut lens: Vec<usize> = lens.into_iter().collect();
        lens.reverse();
        Cutter {
            lens,
            next: first,
            partial: None,
        }
    }

    /// The chunks of `run`.
    pub fn for_run(geometry: Geometry, run: Run) -> Cutter {
        Cutter::new(run.first, run.chunks().map(|c| geometry.chunk_len(c)))
    }

    /// The chunks `piece` completes. Bytes past the last chunk are an error.
    pub fn push(&mut self, mut piece: Bytes) -> Result<Vec<(u64, Bytes)>, String> {
        let mut out = Vec::new();
        while !piece.is_empty() {
            let Some(&len) = self.lens.last() else {
                return Err(format!("{} bytes more than asked for", piece.len()));
            };
            let chunk = match self.partial.take() {
                None if piece.len() >= len => piece.split_to(len),
                partial => {
                    let mut partial = match partial {
                        Some(partial) => partial,
                        None => pool::READS
                            .take(len)
                            .ok_or_else(|| format!("no memory for a chunk of {len} bytes"))?,
                    };
                    let take = (len - partial.len()).min(piece.len());
                    partial.put_slice(&piece.split_to(take));
                    if partial.len() < len {
                        self.partial = Some(partial);
                        continue;
                    }
                    pool::READS.freeze(partial)
                }
            };
            self.lens.pop();
            out.push((self.next, chunk));
            self.next += 1;
        }
        Ok(out)
    }

    /// The bytes of an incomplete chunk when the pieces ended early (None when nothing was
    /// missing).
    pub fn finish(self) -> Option<Bytes> {
        (!self.lens.is_empty()).then(|| {
            self.partial
                .map(|p| pool::READS.freeze(p))
                .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry {
            chunk_size: 100,
            image_size: 1050,
        }
    }

    #[test]
    fn spans_name_the_chunks_and_where_the_range_lies() {
        let span = Span::of(geometry(), 250, 420);
        assert_eq!(
            span,
            Span {
                first: 2,
                last: 4,
                skip: 50,
                len: 170
            }
        );
        assert_eq!(span.count(), 3);
        assert_eq!(Span::of(geometry(), 1000, 1050).chunks(), 10..=10);
    }

    #[test]
    fn runs_join_adjacent_chunks_up_to_a_size() {
        let found = runs(geometry(), &[0, 1, 2, 3, 5, 7, 8], 300);
        let want = [(0, 3), (3, 1), (5, 1), (7, 2)].map(|(first, count)| Run { first, count });
        assert_eq!(found, want);
        assert_eq!(Run { first: 9, count: 2 }.bytes(geometry()), (900, 150));
        assert_eq!(
            Run { first: 3, count: 4 }.after(3),
            Run { first: 6, count: 1 }
        );
    }

    /// Cut `pieces` into parts of `lens` (what the pieces lack comes out as a short last part).
    fn split(pieces: Vec<Bytes>, lens: impl IntoIterator<Item = usize>) -> Vec<Bytes> {
        let mut cutter = Cutter::new(0, lens);
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(cutter.push(piece).unwrap().into_iter().map(|(_, b)| b));
        }
        out.extend(cutter.finish());
        out
    }

    #[test]
    fn split_slices_pieces_and_copies_only_what_straddles() {
        let whole = Bytes::from((0..1000u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
        let pieces = vec![
            whole.slice(0..300),
            whole.slice(300..300),
            whole.slice(300..1000),
        ];
        let parts = split(pieces, [100, 100, 100, 250, 450]);
        let lens: Vec<usize> = parts.iter().map(Bytes::len).collect();
        assert_eq!(lens, [100, 100, 100, 250, 450]);
        assert_eq!(parts.concat(), &whole[..]);
        // Slices share the pieces' memory; only a part spanning two pieces would be a copy.
        assert_eq!(parts[1].as_ptr(), whole[100..].as_ptr());
        assert_eq!(parts[4].as_ptr(), whole[550..].as_ptr());
        let short = split(vec![whole.slice(0..150)], [100, 100]);
        assert_eq!(short[1].len(), 50, "what the pieces lack comes out short");
        let mut cutter = Cutter::new(7, [10]);
        assert!(
            cutter.push(whole.slice(0..11)).is_err(),
            "bytes past the last chunk"
        );
    }
}
