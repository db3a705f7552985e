//! istgt (Debian's port of the FreeBSD iSCSI target) as a second, independent target on loopback.
//!
//! Each instance has its own configuration, auth file (mode 0600), pid file and media directory
//! in a private work directory, and its own port. istgt numbers LUNs from 0 and gives each target
//! one unit type, so a `TargetSpec` for istgt must not mix disk and CD LUNs.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_tcp_port;
use crate::process::{kill_and_reap, spawn_tied, WorkDir};
use crate::tgtd::TargetSpec;
use crate::IscsiTarget;

const START_ATTEMPTS: usize = 10;
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running istgt on 127.0.0.1. Dropping it SIGKILLs and reaps it; if the test is panicking its
/// log and configuration (not the auth file) are kept under `test-logs/<test>/`.
pub struct Istgt {
    child: Option<Child>,
    port: u16,
    work: WorkDir,
}

impl Istgt {
    /// Starts istgt with `targets`, each open to every initiator on 127.0.0.0/8; LUN `i` of a
    /// spec is istgt's LUN `i` (0-based). Panics with the daemon's log if it cannot start.
    pub fn start(test: &str, targets: &[TargetSpec]) -> Istgt {
        let work = WorkDir::new(test, "istgt");
        let mut last_failure = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_tcp_port();
            write_config(&work, port, targets);
            match launch(&work, port) {
                Ok(child) => {
                    return Istgt {
                        child: Some(child),
                        port,
                        work,
                    }
                }
                Err(why) => {
                    work.note(
                        "istgt.log",
                        &format!("harness: attempt {attempt} failed: {why}"),
                    );
                    last_failure = why;
                }
            }
        }
        panic!(
            "istgt did not start after {START_ATTEMPTS} attempts: {last_failure}\n{}",
            work.read("istgt.log")
        );
    }

    /// `127.0.0.1:PORT`
    pub fn portal(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `iscsi://127.0.0.1:PORT/IQN/LUN`, without credentials (istgt's LUNs start at 0).
    pub fn url(&self, iqn: &str, lun: u64) -> String {
        format!("iscsi://{}/{iqn}/{lun}", self.portal())
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What istgt has written so far.
    pub fn log(&self) -> String {
        self.work.read("istgt.log")
    }

    /// Kills istgt (SIGKILL): connections drop, the portal refuses new ones until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
            self.work.note("istgt.log", "harness: killed");
        }
    }

    /// Kills istgt if it runs, then starts it again on the same portal with the same targets.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match launch(&self.work, self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(why) if Instant::now() >= deadline => {
                    panic!(
                        "istgt did not restart on port {}: {why}\n{}",
                        self.port,
                        self.log()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl IscsiTarget for Istgt {
    fn portal(&self) -> String {
        Istgt::portal(self)
    }

    fn lun(&self, index: usize) -> u64 {
        index as u64
    }
}

impl Drop for Istgt {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_config(work: &WorkDir, port: u16, targets: &[TargetSpec]) {
    let dir = work.path().display().to_string();
    let mut conf = String::new();
    let mut auth = String::new();
    let _ = write!(
        conf,
        r#"[Global]
  NodeBase "iqn.2026-11.org.isomount.harness"
  PidFile "{dir}/istgt.pid"
  AuthFile "{dir}/auth.secret"
  MediaDirectory "{dir}"
  LogFacility "local7"
  Timeout 30
  NopInInterval 20
  DiscoveryAuthMethod None
  MaxSessions 64
  MaxConnections 4
  MaxR2T 32
  MaxOutstandingR2T 16
  DefaultTime2Wait 2
  DefaultTime2Retain 60
  FirstBurstLength 262144
  MaxBurstLength 1048576
  MaxRecvDataSegmentLength 262144
  InitialR2T Yes
  ImmediateData Yes
  DataPDUInOrder Yes
  DataSequenceInOrder Yes
  ErrorRecoveryLevel 0
[UnitControl]
  AuthMethod CHAP Mutual
  AuthGroup AuthGroup10000
[PortalGroup1]
  Portal DA1 127.0.0.1:{port}
[InitiatorGroup1]
  InitiatorName "ALL"
  Netmask 127.0.0.0/8
"#
    );
    // istgt refuses an auth file without the unit controller's group; nothing listens for it.
    let _ = writeln!(
        auth,
        "[AuthGroup10000]\n  Auth \"harness-ctl\" \"harness-ctl-unused\""
    );
    for (i, target) in targets.iter().enumerate() {
        let tag = i + 1;
        let cd = target.luns.first().is_some_and(|l| l.cd);
        assert!(
            target.luns.iter().all(|l| l.cd == cd),
            "istgt target {}: one target cannot mix disk and CD LUNs",
            target.iqn
        );
        assert!(
            !target.luns.is_empty(),
            "istgt target {} needs a LUN",
            target.iqn
        );
        assert!(
            target.luns.len() <= 16,
            "istgt allows at most 16 LUNs per target"
        );
        assert!(
            target.mutual.is_none() || target.chap.is_some(),
            "istgt target {}: mutual CHAP needs chap too",
            target.iqn
        );
        let method = match (&target.chap, &target.mutual) {
            (None, _) => "None",
            (Some(_), None) => "CHAP",
            (Some(_), Some(_)) => "CHAP Mutual",
        };
        let _ = write!(
            conf,
            "[LogicalUnit{tag}]\n  TargetName {}\n  Mapping PortalGroup1 InitiatorGroup1\n  \
             AuthMethod {method}\n  AuthGroup AuthGroup{tag}\n  UseDigest Auto\n  ReadOnly Yes\n  \
             UnitType {}\n",
            target.iqn,
            // istgt's DVD unit rejects every command when command queuing is on.
            if cd { "DVD" } else { "Disk\n  QueueDepth 32" }
        );
        for (j, lun) in target.luns.iter().enumerate() {
            let path = lun.path.display();
            if cd {
                let _ = writeln!(conf, "  LUN{j} Removable ro \"{path}\" Auto");
            } else {
                let _ = writeln!(conf, "  LUN{j} Storage \"{path}\" Auto");
            }
        }
        if let Some((user, secret)) = &target.chap {
            let _ = write!(auth, "[AuthGroup{tag}]\n  Auth \"{user}\" \"{secret}\"");
            if let Some((muser, msecret)) = &target.mutual {
                let _ = write!(auth, " \"{muser}\" \"{msecret}\"");
            }
            auth.push('\n');
        }
    }
    fs::write(work.path().join("istgt.conf"), conf).expect("write istgt.conf");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(work.path().join("auth.secret"))
        .expect("write istgt's auth file");
    file.write_all(auth.as_bytes())
        .expect("write istgt's auth file");
}

/// Starts istgt in the foreground and waits until it has written its pid file and accepts
/// connections on our port. On failure the process is killed and the reason returned.
fn launch(work: &WorkDir, port: u16) -> Result<Child, String> {
    let dir = work.path();
    let pidfile = dir.join("istgt.pid");
    let _ = fs::remove_file(&pidfile);
    let mut cmd = Command::new("istgt");
    cmd.arg("-D")
        .arg("-c")
        .arg(dir.join("istgt.conf"))
        .arg("-p")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(work.log("istgt.log"))
        .stderr(work.log("istgt.log"));
    work.note(
        "istgt.log",
        &format!("harness: istgt -D on 127.0.0.1:{port}"),
    );
    let mut child = spawn_tied(cmd).map_err(|e| format!("cannot run istgt: {e}"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let addr = format!("127.0.0.1:{port}");
    let ours = child.id().to_string();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("istgt exited early ({status})"));
        }
        let pid_written = fs::read_to_string(&pidfile).is_ok_and(|p| p.trim() == ours);
        if pid_written && TcpStream::connect(&addr).is_ok() {
            // istgt exits when it cannot listen; a brief look rules out another listener.
            std::thread::sleep(Duration::from_millis(50));
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            kill_and_reap(&mut child);
            return Err(format!("istgt not ready after {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
