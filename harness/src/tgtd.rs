//! tgtd, the Linux SCSI target framework daemon, as a per-test iSCSI target on loopback.
//!
//! Each instance gets its own iSCSI port and its own control port (tgtd's management socket is
//! `/var/run/tgtd/socket.<control port>`, guarded by a lock file), so any number of instances run
//! side by side. tgtd ignores SIGTERM while it has targets: it is stopped with SIGKILL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::{free_control_port, free_tcp_port};
use crate::process::{kill_and_reap, run_bounded, spawn_tied, WorkDir};
use crate::IscsiTarget;

const START_ATTEMPTS: usize = 10;
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const TGTADM_TIMEOUT: Duration = Duration::from_secs(30);

/// One iSCSI target: a name, its LUNs (numbered 1, 2, … in order; tgtd's LUN 0 is its
/// controller), and optional CHAP: `chap` is the (user, secret) the initiator logs in with,
/// `mutual` the (user, secret) the target answers with.
#[derive(Clone)]
pub struct TargetSpec {
    pub iqn: String,
    pub luns: Vec<LunSpec>,
    pub chap: Option<(String, String)>,
    pub mutual: Option<(String, String)>,
}

impl TargetSpec {
    /// An anonymous target.
    pub fn new(iqn: impl Into<String>, luns: Vec<LunSpec>) -> TargetSpec {
        TargetSpec {
            iqn: iqn.into(),
            luns,
            chap: None,
            mutual: None,
        }
    }

    /// Requires one-way CHAP: the initiator proves it knows `secret` for `user`.
    pub fn with_chap(mut self, user: &str, secret: &str) -> TargetSpec {
        self.chap = Some((user.into(), secret.into()));
        self
    }

    /// Adds mutual CHAP: the target proves it knows `secret` for `user`. Needs `with_chap` too.
    pub fn with_mutual(mut self, user: &str, secret: &str) -> TargetSpec {
        self.mutual = Some((user.into(), secret.into()));
        self
    }
}

/// A LUN backed by a file. `cd`: tgtd device type cd (MMC, 2048-byte blocks); else a disk.
#[derive(Clone, Debug)]
pub struct LunSpec {
    pub path: PathBuf,
    pub cd: bool,
}

impl LunSpec {
    pub fn disk(path: impl Into<PathBuf>) -> LunSpec {
        LunSpec {
            path: path.into(),
            cd: false,
        }
    }

    pub fn cd(path: impl Into<PathBuf>) -> LunSpec {
        LunSpec {
            path: path.into(),
            cd: true,
        }
    }
}

/// A running tgtd on 127.0.0.1. Dropping it SIGKILLs and reaps it; if the test is panicking its
/// logs (`tgtd.log`, `tgtadm.log`) are kept under `test-logs/<test>/`.
pub struct Tgtd {
    child: Option<Child>,
    port: u16,
    control: u16,
    targets: Vec<TargetSpec>,
    work: WorkDir,
}

impl Tgtd {
    /// Starts tgtd with `targets` (target ids 1, 2, … in order), every target open to every
    /// initiator address. Panics with the daemon's log if it cannot be started.
    pub fn start(test: &str, targets: &[TargetSpec]) -> Tgtd {
        let work = WorkDir::new(test, "tgtd");
        let mut last_failure = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_tcp_port();
            let control = free_control_port();
            match launch(&work, port, control) {
                Ok(child) => {
                    let tgtd = Tgtd {
                        child: Some(child),
                        port,
                        control,
                        targets: targets.to_vec(),
                        work,
                    };
                    tgtd.configure();
                    return tgtd;
                }
                Err(why) => {
                    work.note(
                        "tgtd.log",
                        &format!("harness: attempt {attempt} failed: {why}"),
                    );
                    last_failure = why;
                }
            }
        }
        panic!(
            "tgtd did not start after {START_ATTEMPTS} attempts: {last_failure}\n{}",
            work.read("tgtd.log")
        );
    }

    /// `127.0.0.1:PORT`
    pub fn portal(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `iscsi://127.0.0.1:PORT/IQN/LUN`, without credentials.
    pub fn url(&self, iqn: &str, lun: u64) -> String {
        format!("iscsi://{}/{iqn}/{lun}", self.portal())
    }

    /// Runs `tgtadm --lld iscsi -C <control> ARGS…` against this instance and returns its output;
    /// panics if it fails. For settings `TargetSpec` does not cover (e.g. `--mode target --op
    /// update --tid 1 --name HeaderDigest --value CRC32C`).
    pub fn tgtadm(&self, args: &[&str]) -> String {
        match self.try_tgtadm(args) {
            Ok(out) => out,
            Err(out) => panic!("tgtadm {} failed: {out}", redact(args).join(" ")),
        }
    }

    /// Like `tgtadm`, but a failure is returned (with its output) instead of panicking.
    pub fn try_tgtadm(&self, args: &[&str]) -> Result<String, String> {
        tgtadm(&self.work, self.control, args)
    }

    /// What tgtd has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.work.read("tgtd.log")
    }

    /// Kills tgtd (SIGKILL): connections drop, the portal refuses new ones until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
            self.work.note("tgtd.log", "harness: killed");
        }
    }

    /// Kills tgtd if it runs, then starts it again on the same portal with the same targets.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match launch(&self.work, self.port, self.control) {
                Ok(child) => {
                    self.child = Some(child);
                    self.configure();
                    return;
                }
                Err(why) if Instant::now() >= deadline => {
                    panic!(
                        "tgtd did not restart on {}: {why}\n{}",
                        self.portal(),
                        self.log()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn configure(&self) {
        let mut accounts: Vec<(String, String)> = Vec::new();
        for (i, target) in self.targets.iter().enumerate() {
            let tid = (i + 1).to_string();
            self.tgtadm(&[
                "--mode",
                "target",
                "--op",
                "new",
                "--tid",
                &tid,
                "--targetname",
                &target.iqn,
            ]);
            for (j, lun) in target.luns.iter().enumerate() {
                let lun_no = (j + 1).to_string();
                let path = lun.path.to_str().expect("LUN paths must be UTF-8");
                let mut args = vec![
                    "--mode",
                    "logicalunit",
                    "--op",
                    "new",
                    "--tid",
                    &tid,
                    "--lun",
                    &lun_no,
                    "--backing-store",
                    path,
                ];
                if lun.cd {
                    args.extend(["--device-type", "cd"]);
                }
                self.tgtadm(&args);
            }
            self.tgtadm(&[
                "--mode",
                "target",
                "--op",
                "bind",
                "--tid",
                &tid,
                "--initiator-address",
                "ALL",
            ]);
            for (account, outgoing) in [(&target.chap, false), (&target.mutual, true)] {
                let Some((user, secret)) = account else {
                    continue;
                };
                match accounts.iter().find(|(u, _)| u == user) {
                    Some((_, known)) => assert!(
                        known == secret,
                        "CHAP user {user} is used with two different secrets; tgtd accounts are \
                         global, use distinct user names"
                    ),
                    None => {
                        self.tgtadm(&[
                            "--mode",
                            "account",
                            "--op",
                            "new",
                            "--user",
                            user,
                            "--password",
                            secret,
                        ]);
                        accounts.push((user.clone(), secret.clone()));
                    }
                }
                let mut bind = vec![
                    "--mode", "account", "--op", "bind", "--tid", &tid, "--user", user,
                ];
                if outgoing {
                    bind.push("--outgoing");
                }
                self.tgtadm(&bind);
            }
        }
    }
}

impl IscsiTarget for Tgtd {
    fn portal(&self) -> String {
        Tgtd::portal(self)
    }

    fn lun(&self, index: usize) -> u64 {
        index as u64 + 1
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts tgtd in the foreground on `port` and waits until it answers on its control socket with
/// exactly our portal. On failure the process is killed and the reason returned.
fn launch(work: &WorkDir, port: u16, control: u16) -> Result<Child, String> {
    let mut cmd = Command::new("tgtd");
    cmd.args(["-f", "-C", &control.to_string(), "--iscsi"])
        .arg(format!("portal=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(work.log("tgtd.log"))
        .stderr(work.log("tgtd.log"));
    work.note(
        "tgtd.log",
        &format!("harness: tgtd -f -C {control} --iscsi portal=127.0.0.1:{port}"),
    );
    let mut child = spawn_tied(cmd).map_err(|e| format!("cannot run tgtd: {e}"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let want = format!("127.0.0.1:{port},");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("tgtd exited early ({status})"));
        }
        // A tgtd that failed to bind our portal falls back to 0.0.0.0:3260, and a control port
        // clash could make us talk to another instance: only our exact portal counts as ready.
        if let Ok(out) = tgtadm(work, control, &["--mode", "portal", "--op", "show"]) {
            if out.contains(&want) && matches!(child.try_wait(), Ok(None)) {
                return Ok(child);
            }
            if !out.trim().is_empty() {
                kill_and_reap(&mut child);
                return Err(format!("tgtd is not listening on 127.0.0.1:{port}: {out}"));
            }
        }
        if Instant::now() >= deadline {
            kill_and_reap(&mut child);
            return Err(format!("tgtd not ready after {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tgtadm(work: &WorkDir, control: u16, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("tgtadm");
    cmd.args(["--lld", "iscsi", "-C", &control.to_string()])
        .args(args);
    let (ok, out) = run_bounded(cmd, TGTADM_TIMEOUT);
    work.note(
        "tgtadm.log",
        &format!(
            "$ tgtadm -C {control} {}\n{}{}",
            redact(args).join(" "),
            out,
            if ok { "" } else { "(failed)\n" }
        ),
    );
    if ok {
        Ok(out)
    } else {
        Err(out)
    }
}

/// The arguments with every `--password` value replaced, for logs and panic messages.
fn redact<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for arg in args {
        out.push(if hide_next { "<redacted>" } else { arg });
        hide_next = *arg == "--password";
    }
    out
}
