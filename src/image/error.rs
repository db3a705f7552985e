//! Why a read of an image failed: every error names the image and the byte range, and what a
//! file system answers for it.

/// Why a read failed. Every variant names the image and the byte range; FUSE answers EIO.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{image}: bytes {start}..{end}: chunk {chunk} failed verification ({detail})")]
    Verification {
        image: String,
        start: u64,
        end: u64,
        chunk: u64,
        detail: String,
    },
    /// `start..end` is the first missing stretch of the read; `more` counts the others.
    #[error("{image}: bytes {start}..{end}{} are not cached and isomount is offline", more_ranges(*.more))]
    Offline {
        image: String,
        start: u64,
        end: u64,
        more: usize,
    },
    #[error("{image}: bytes {start}..{end} are not cached and no portal is reachable: {reason}")]
    Unavailable {
        image: String,
        start: u64,
        end: u64,
        reason: String,
    },
    #[error("{image}: bytes {start}..{end} are not cached and {reason}")]
    NoSource {
        image: String,
        start: u64,
        end: u64,
        reason: String,
    },
    #[error("{image}: bytes {start}..{end}: no answer within {secs} s{}", .reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    TimedOut {
        image: String,
        start: u64,
        end: u64,
        secs: u64,
        reason: Option<String>,
    },
}

fn more_ranges(more: usize) -> String {
    match more {
        0 => String::new(),
        1 => " and one more range".to_string(),
        n => format!(" and {n} more ranges"),
    }
}

impl ImageError {
    /// The errno a file system reports for this error.
    pub fn errno(&self) -> i32 {
        libc::EIO
    }
}
