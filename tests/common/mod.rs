//! Shared by every integration test (`mod common;`): the harness crate, plus what only a test of
//! this package can know (the path of the built `isomount` binary), and bounded runs and FUSE
//! mountpoints that clean up after themselves.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use isomount_harness::*;

pub mod serve;

/// The `isomount` binary cargo built for this test run.
pub fn isomount() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_isomount"))
}

/// Run `cmd` (stdin closed, output captured), killing it if it takes longer than `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drain the pipes while waiting, so a large output cannot block the child.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The one image store in the cache folder `cache_dir` (a test that cached a single image).
pub fn only_store(cache_dir: &Path) -> PathBuf {
    let images = cache_dir.join("images");
    let mut stores = std::fs::read_dir(&images)
        .unwrap_or_else(|e| panic!("{}: {e}", images.display()))
        .map(|entry| entry.unwrap().path());
    let store = stores.next().expect("one store");
    assert!(
        stores.next().is_none(),
        "more than one store in {}",
        images.display()
    );
    store
}

/// Whether something is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    platform::is_mounted(path)
}

/// A mountpoint that is unmounted (lazily, for sure) when dropped.
pub struct Mountpoint {
    pub path: PathBuf,
}

impl Mountpoint {
    pub fn new(dir: &Path, name: &str) -> Mountpoint {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        Mountpoint {
            path: path.canonicalize().unwrap(),
        }
    }
}

impl Drop for Mountpoint {
    fn drop(&mut self) {
        for cmd in [
            Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(&self.path),
            Command::new("umount").arg("-l").arg(&self.path),
        ] {
            if is_mounted(&self.path) {
                let _ = run_bounded(cmd, Duration::from_secs(10));
            }
        }
    }
}
