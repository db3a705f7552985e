//! Deterministic mutations for the stable replay: a seeded PRNG (SplitMix64) and a few of
//! libFuzzer's mutation kinds (bit flips, interesting integers, inserted, erased, copied and
//! spliced bytes), stacked. The same seed gives the same inputs on every machine and every run.

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Values that sit on the edges of checks: zero, one, sign bits, all ones, sector and page sizes.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x800,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
];

/// `input` changed by one to four stacked mutations, `other` (another seed of the same target)
/// as the source of spliced bytes, at most `max_len` bytes long.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8], max_len: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, &mut out, other);
    }
    out.truncate(max_len);
    out
}

fn mutate_once(rng: &mut Rng, out: &mut Vec<u8>, other: &[u8]) {
    let len = out.len();
    match rng.below(10) {
        0 if len > 0 => {
            let at = rng.below(len);
            out[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            out[at] = rng.next_u64() as u8;
        }
        2..=4 if len > 0 => {
            // An interesting integer of 1, 2, 4 or 8 bytes, either byte order.
            let width = [1, 2, 4, 8][rng.below(4)].min(len);
            let at = rng.below(len - width + 1);
            let value = match rng.below(3) {
                0 => INTERESTING[rng.below(INTERESTING.len())],
                1 => INTERESTING[rng.below(INTERESTING.len())].wrapping_sub(1),
                _ => len as u64,
            };
            let bytes = if rng.below(2) == 0 {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            };
            let field = if bytes[0] == 0 || rng.below(2) == 0 {
                &bytes[8 - width..]
            } else {
                &bytes[..width]
            };
            out[at..at + width].copy_from_slice(field);
        }
        5 => {
            let at = rng.below(len + 1);
            let count = 1 + rng.below(16);
            let fill: Vec<u8> = (0..count).map(|_| rng.next_u64() as u8).collect();
            out.splice(at..at, fill);
        }
        6 if len > 0 => {
            let at = rng.below(len);
            let count = 1 + rng.below((len - at).min(64));
            out.drain(at..at + count);
        }
        7 if len > 0 => {
            // Copy a run of the input over (or into) another place of it.
            let from = rng.below(len);
            let count = 1 + rng.below((len - from).min(256));
            let run = out[from..from + count].to_vec();
            let to = rng.below(len);
            if rng.below(2) == 0 {
                out.splice(to..to, run);
            } else {
                let end = (to + count).min(len);
                out[to..end].copy_from_slice(&run[..end - to]);
            }
        }
        8 if !other.is_empty() => {
            // Splice: a prefix of the input, then the rest of the other seed.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            out.truncate(cut);
            out.extend_from_slice(&other[from..]);
        }
        _ if len > 0 => {
            out.truncate(rng.below(len));
        }
        _ => out.push(rng.next_u64() as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_deterministic_and_bounded() {
        let seed = b"TargetName=iqn.2026-01.org.example:disk\0".to_vec();
        let run = |s: u64| {
            let mut rng = Rng::new(s);
            (0..200)
                .map(|_| mutate(&mut rng, &seed, b"TargetAddress=[::1]:3260,1", 48))
                .collect::<Vec<_>>()
        };
        let first = run(7);
        assert_eq!(first, run(7));
        assert_ne!(first, run(8));
        assert!(first.iter().all(|m| m.len() <= 48));
        assert!(first.iter().filter(|m| **m != seed).count() > 150);
    }
}
