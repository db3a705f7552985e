//! Test and benchmark harness for isomount.
//!
//! Real parts, not mocks: [`Tgtd`] starts the Linux SCSI target daemon on loopback ports of its
//! own, configured through `tgtadm`; [`FaultProxy`] sits between an initiator and a target and
//! injects resets, stalls and latency. Every wait is bounded and every daemon dies with its owner.
//! Integration tests use it through `tests/common/mod.rs`; `scripts/bench.sh` uses the
//! `faultproxy` binary.

mod fixtures;
mod ports;
mod process;
mod proxy;
mod tgtd;

pub use fixtures::random_file;
pub use ports::free_tcp_port;
pub use process::logs_root;
pub use proxy::{FaultProxy, Faults};
pub use tgtd::{LunSpec, TargetSpec, Tgtd};
