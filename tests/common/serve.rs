//! A running `isomount serve` for tests: started on a free loopback port, its log kept in a file
//! (printed when the test fails), killed on drop.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant};

/// The default target name prefix of `serve`.
pub const PREFIX: &str = "iqn.2026-01.org.isomount.serve";

pub struct Serve {
    child: Child,
    pub portal: String,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
    /// Kept open: serve writes its target list after the first line.
    _stdout: BufReader<ChildStdout>,
}

impl Serve {
    /// `isomount serve IMAGE… EXTRA…` on 127.0.0.1:0.
    pub fn start(images: &[&Path], extra: &[&str]) -> Serve {
        let mut args: Vec<&OsStr> = images.iter().map(|p| p.as_os_str()).collect();
        args.extend(extra.iter().map(OsStr::new));
        Serve::start_args(&args, &[])
    }

    /// `isomount -v serve ARGS… --listen 127.0.0.1:0` with `env` set.
    pub fn start_args<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &OsStr)]) -> Serve {
        Serve::spawn(super::isomount(), args, env)
    }

    /// [`Serve::start`] with the file descriptor limit (soft and hard) set to `nofile` first,
    /// by the shell's `ulimit`.
    pub fn start_with_nofile(images: &[&Path], extra: &[&str], nofile: u64) -> Serve {
        let mut args: Vec<&OsStr> = images.iter().map(|p| p.as_os_str()).collect();
        args.extend(extra.iter().map(OsStr::new));
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_isomount"));
        Serve::spawn(sh, &args, &[])
    }

    fn spawn<S: AsRef<OsStr>>(
        mut cmd: std::process::Command,
        args: &[S],
        env: &[(&str, &OsStr)],
    ) -> Serve {
        let log_dir = tempfile::tempdir().expect("log dir");
        let log = log_dir.path().join("serve.log");
        cmd.args(["-v", "serve"])
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn isomount serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout
            .read_line(&mut first)
            .expect("read the listening line");
        let Some(portal) = first.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("serve did not start: {first:?}\n{log_text}");
        };
        Serve {
            portal: portal.to_string(),
            child,
            log,
            _log_dir: log_dir,
            _stdout: stdout,
        }
    }

    pub fn url(&self, stem: &str) -> String {
        format!("iscsi://{}/{PREFIX}:{stem}/0", self.portal)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What serve has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log has a line containing `text`.
    pub fn wait_for_log(&self, text: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Send a signal (`libc::SIGTERM`, …).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the process to exit; its status, or None when it did not within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- isomount serve log ---\n{}", self.log());
        }
    }
}
