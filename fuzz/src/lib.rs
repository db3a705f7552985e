//! The bodies of isomount's fuzz targets, as plain functions, one module per target.
//!
//! `fuzz_targets/NAME.rs` hands libFuzzer's input to `NAME::run` (`cargo fuzz run NAME`, which
//! needs nightly or `RUSTC_BOOTSTRAP=1`; see `fuzz/README.md`). `tests/replay.rs` runs every
//! target on stable: over its shipped seeds (`seeds/NAME/`), its regression inputs
//! (`regressions/NAME/`) and a fixed number of deterministic mutations of the seeds
//! ([`mutate`]). A target's longest useful input (`-max_len`) is in `seeds/NAME.options`, which
//! both read.
//!
//! A target returns normally on any input; a panic is a bug it found: a panic in isomount, or a
//! broken invariant the target asserts (an accepted manifest re-serializes to itself, a READ the
//! target serves lies within the LUN, …).

pub mod cache_index;
pub mod catalog;
pub mod cdb;
pub mod http_range;
pub mod iso9660;
pub mod manifest;
pub mod mutate;
pub mod pdu;
pub mod scsi_response;
pub mod seeds;
pub mod send_targets;
pub mod susp;
pub mod target_session;
pub mod text;
pub mod url;

/// One fuzz target.
pub struct Target {
    /// The name of its `fuzz_targets/` binary, its seed folder and its options file.
    pub name: &'static str,
    /// Runs one input; panics only on a bug.
    pub run: fn(&[u8]),
    /// Whether an input gets past the target's first checks (a well-formed header, a complete
    /// PDU, a volume that opens): every shipped seed must, or the fuzzer starts at the door.
    pub accepts: fn(&[u8]) -> bool,
}

/// Every target, in the order `fuzz/run.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "pdu",
        run: pdu::run,
        accepts: pdu::accepts,
    },
    Target {
        name: "text",
        run: text::run,
        accepts: text::accepts,
    },
    Target {
        name: "catalog",
        run: catalog::run,
        accepts: catalog::accepts,
    },
    Target {
        name: "manifest",
        run: manifest::run,
        accepts: manifest::accepts,
    },
    Target {
        name: "cache_index",
        run: cache_index::run,
        accepts: cache_index::accepts,
    },
    Target {
        name: "iso9660",
        run: iso9660::run,
        accepts: iso9660::accepts,
    },
    Target {
        name: "target_session",
        run: target_session::run,
        accepts: target_session::accepts,
    },
    Target {
        name: "scsi_response",
        run: scsi_response::run,
        accepts: scsi_response::accepts,
    },
    Target {
        name: "url",
        run: url::run,
        accepts: url::accepts,
    },
    Target {
        name: "send_targets",
        run: send_targets::run,
        accepts: send_targets::accepts,
    },
    Target {
        name: "cdb",
        run: cdb::run,
        accepts: cdb::accepts,
    },
    Target {
        name: "susp",
        run: susp::run,
        accepts: susp::accepts,
    },
    Target {
        name: "http_range",
        run: http_range::run,
        accepts: http_range::accepts,
    },
];

/// The input with the CRC32C of its first 32 bytes written at bytes 32..36 (big-endian), the
/// header checksum that manifests and cache indexes share; `None` when the input is too short
/// or already right. Lets a mutated header field reach the checks behind the checksum.
pub fn with_header_crc(data: &[u8]) -> Option<Vec<u8>> {
    let crc = crc32c::crc32c(data.get(..32)?).to_be_bytes();
    if data.get(32..36)? == crc {
        return None;
    }
    let mut fixed = data.to_vec();
    fixed[32..36].copy_from_slice(&crc);
    Some(fixed)
}
