//! Test data: deterministic pseudo-random files, images built from directories.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// SplitMix64 step: fast, well mixed, and every seed gives a different stream.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `dir/name` with `size` pseudo-random bytes determined by `seed` and returns its path.
/// The same (size, seed) always gives the same bytes; no two 8-byte words of a file repeat in
/// practice, so a read from the wrong offset never compares equal.
pub fn random_file(dir: &Path, name: &str, size: u64, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let file = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut state = seed;
    let mut left = size;
    let mut block = vec![0u8; 1 << 20];
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            word.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        left -= n as u64;
    }
    out.flush()
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Which ISO 9660 extensions `iso_from_dir` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsoFlavour {
    /// Rock Ridge (POSIX names, modes, symlinks) plus a Joliet tree: what distributions ship.
    RockRidgeJoliet,
    /// A Joliet tree beside the plain one, no Rock Ridge.
    JolietOnly,
    /// Plain ISO 9660 level 1: 8.3 upper-case names, no extensions.
    Level1,
}

/// Builds an ISO image of directory `src` at `out` with xorriso (volume id `ISOMOUNT_TEST`)
/// and returns `out`. Panics with xorriso's output if it fails.
pub fn iso_from_dir(src: &Path, out: &Path, flavour: IsoFlavour) -> PathBuf {
    let extensions: &[&str] = match flavour {
        IsoFlavour::RockRidgeJoliet => &["-R", "-J"],
        IsoFlavour::JolietOnly => &["-J", "--norock"],
        IsoFlavour::Level1 => &["-iso-level", "1", "--norock"],
    };
    let mut cmd = std::process::Command::new("xorriso");
    cmd.args(["-as", "mkisofs"])
        .args(extensions)
        .args(["-V", "ISOMOUNT_TEST", "-o"])
        .arg(out)
        .arg(src);
    let (ok, output) = crate::process::run_bounded(cmd, std::time::Duration::from_secs(300));
    assert!(ok, "xorriso failed to build {}: {output}", out.display());
    out.to_path_buf()
}

/// A fresh temporary directory for one test, named after it, removed when dropped.
pub fn test_dir(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("isomount-test-{test}-"))
        .tempdir()
        .expect("create a test directory")
}
