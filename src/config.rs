//! The settings every command shares, validated. The command line (`cli.rs`) builds a
//! [`Config`] from its options (and a mount from its `-o` options); commands and the image core
//! take it and know nothing of clap.

use std::path::PathBuf;
use std::time::Duration;

use crate::cache::{parse_size, Cache, CacheError};

/// The longest a read of an image may wait, unless the user says otherwise.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(90);

/// A bound on the cache's size: as the user wrote it (for messages) and in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLimit {
    pub given: String,
    pub bytes: u64,
}

impl CacheLimit {
    pub fn parse(given: &str) -> Result<CacheLimit, CacheError> {
        Ok(CacheLimit {
            given: given.to_string(),
            bytes: parse_size(given)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Catalog files, folders of `*.toml` or https URLs; empty means the default search path.
    pub catalogs: Vec<String>,
    /// Minisign public keys whose signed catalogs are trusted.
    pub pubkeys: Vec<PathBuf>,
    /// The cache directory; None means the default (`$XDG_CACHE_HOME/isomount`).
    pub cache_dir: Option<PathBuf>,
    pub cache_limit: Option<CacheLimit>,
    /// Never touch the network.
    pub offline: bool,
    /// The bound on every read of an image.
    pub read_timeout: Duration,
    /// How much to log: 0 warnings, 1 decisions, 2 every command.
    pub verbose: u8,
    /// Only errors.
    pub quiet: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            catalogs: Vec::new(),
            pubkeys: Vec::new(),
            cache_dir: None,
            cache_limit: None,
            offline: false,
            read_timeout: DEFAULT_READ_TIMEOUT,
            verbose: 0,
            quiet: false,
        }
    }
}

impl Config {
    /// The cache these settings name.
    pub fn cache(&self) -> Cache {
        Cache::new(
            crate::cache::default_dir(self.cache_dir.as_deref()),
            self.cache_limit.as_ref().map(|l| l.bytes),
        )
    }
}
