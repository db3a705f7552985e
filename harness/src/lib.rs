//! Test and benchmark harness for isomount.
//!
//! Real parts, not mocks: [`Tgtd`] starts the Linux SCSI target daemon on loopback ports of its
//! own, configured through `tgtadm`; [`FaultProxy`] sits between an initiator and a target and
//! injects resets, stalls and latency (into any TCP: iSCSI or HTTP); [`Nginx`], [`PythonHttp`],
//! [`OddServer`] and [`ForwardProxy`] are the web mirrors and the proxy of the HTTP(S) source.
//! [`HostileTarget`] is a scripted target that breaks the protocol on purpose, one way per
//! instance. [`initiator::RawInitiator`] is a raw iSCSI initiator on isomount's own codec, and
//! [`load::Fleet`] thousands of its sessions at once (the `loadclient` binary); [`rude`] plays a
//! hostile initiator (malformed PDUs, endless logins, a byte-at-a-time reader). Every wait is
//! bounded and every daemon dies with its owner. Integration tests use it through
//! `tests/common/mod.rs`; `scripts/bench.sh` uses the `faultproxy`, `harness-target`,
//! `harness-web`, `loadclient` and `rudeclient` binaries.

mod fixtures;
mod hostile;
pub mod initiator;
mod istgt;
pub mod load;
pub mod options;
pub mod platform;
mod ports;
mod process;
mod proxy;
pub mod rude;
mod tgtd;
mod web;

pub use fixtures::{iso_from_dir, random_file, test_dir, IsoFlavour};
pub use hostile::{HostileTarget, Misbehaviour, HOSTILE_IQN};
pub use istgt::Istgt;
pub use ports::free_tcp_port;
pub use process::logs_root;
pub use proxy::{FaultProxy, Faults};
pub use tgtd::{LunSpec, TargetSpec, Tgtd};
pub use web::{
    corrupt_copy, dead_portal, ForwardProxy, Nginx, OddServer, PythonHttp, Quirk, Served, TestCa,
};

/// What tests need from any target the harness runs, so one test body can cover tgtd and istgt.
pub trait IscsiTarget {
    /// `127.0.0.1:PORT`
    fn portal(&self) -> String;

    /// The LUN number the target gives the LUN at `index` in its `TargetSpec` (tgtd counts from
    /// 1 because its LUN 0 is a controller; istgt counts from 0).
    fn lun(&self, index: usize) -> u64;

    /// `iscsi://127.0.0.1:PORT/IQN/LUN` for the LUN at `index` of target `iqn`.
    fn lun_url(&self, iqn: &str, index: usize) -> String {
        format!("iscsi://{}/{iqn}/{}", self.portal(), self.lun(index))
    }
}
