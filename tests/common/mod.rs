//! Shared by every integration test (`mod common;`): the harness crate, plus what only a test of
//! this package can know (the path of the built `isomount` binary).
#![allow(dead_code, unused_imports)]

pub use isomount_harness::*;

pub mod serve;

/// The `isomount` binary cargo built for this test run.
pub fn isomount() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_isomount"))
}
