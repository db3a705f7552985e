//! Daemons that die with the test process, and the logs they leave behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel SIGKILLs it when this process dies, even by SIGKILL, where
/// the system can ([`crate::platform::die_with_parent`]).
///
/// The parent-death signal fires when the *thread* that forked the child exits, and test threads
/// come and go, so every child is forked by one spawner thread that lives as long as the process.
pub(crate) fn spawn_tied(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: die_with_parent makes async-signal-safe calls only.
                    unsafe {
                        cmd.pre_exec(crate::platform::die_with_parent);
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the harness spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("harness spawner thread is gone"))?;
    reply_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| io::Error::other("harness spawner thread did not answer"))?
}

/// SIGKILL and reap. Idempotent.
pub(crate) fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A per-instance working directory holding config files and logs. When dropped during a panic
/// (or with `ISOMOUNT_KEEP_LOGS` set) its `*.log` files are copied to `test-logs/<test>/<label>/`.
pub(crate) struct WorkDir {
    dir: tempfile::TempDir,
    test: String,
    label: String,
}

impl WorkDir {
    pub(crate) fn new(test: &str, kind: &str) -> WorkDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let label = format!(
            "{kind}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("isomount-{label}-"))
            .tempdir()
            .expect("create a harness work directory");
        WorkDir {
            dir,
            test: sanitize(test),
            label,
        }
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A log file in append mode (created if missing).
    pub(crate) fn log(&self, name: &str) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .expect("open a harness log file")
    }

    /// Appends one line to `name`.
    pub(crate) fn note(&self, name: &str, line: &str) {
        let _ = writeln!(self.log(name), "{line}");
    }

    pub(crate) fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("ISOMOUNT_KEEP_LOGS").is_none() {
            return;
        }
        let dest = logs_root().join(&self.test).join(&self.label);
        if fs::create_dir_all(&dest).is_err() {
            return;
        }
        let Ok(entries) = fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log" || e == "conf") {
                let _ = fs::copy(&path, dest.join(entry.file_name()));
            }
        }
        eprintln!("harness: logs kept in {}", dest.display());
    }
}

/// `$ISOMOUNT_TEST_LOGS`, else `test-logs/` in the current directory (cargo runs integration tests
/// in the package root).
pub fn logs_root() -> PathBuf {
    std::env::var_os("ISOMOUNT_TEST_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("test-logs"))
}

fn sanitize(test: &str) -> String {
    let s: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "unnamed".into()
    } else {
        s
    }
}

/// Runs `cmd` to completion with a deadline; returns (success, stdout+stderr).
pub(crate) fn run_bounded(mut cmd: Command, timeout: Duration) -> (bool, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("spawn failed: {e}")),
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                kill_and_reap(&mut child);
                return (false, format!("timed out after {timeout:?}"));
            }
        }
    }
    match child.wait_with_output() {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text)
        }
        Err(e) => (false, format!("wait failed: {e}")),
    }
}
