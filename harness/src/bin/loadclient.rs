//! `loadclient PORTAL TARGET [--lun N] [--sessions N] [--readers M] [--read-kib K] [--seconds S]
//!  [--logins-at-once L] [--server-pid PID]`
//!
//! Logs N sessions in to TARGET (default 4096), lets M of them (default all) read their own
//! regions K KiB at a time (default 256; the data is taken off the socket unseen, so the client's
//! CPU goes to the protocol, as on a machine of its own) for S seconds (default 10) while the
//! rest idle, and
//! prints one `key value` line per figure: sessions logged in, login time, aggregate MiB/s,
//! errors; with --server-pid, the target process's resident memory before the logins, with
//! the sessions logged in and idle, and per session. Then logs everyone out.

use std::time::Duration;

use isomount_harness::load::{rss_kib, Fleet};
use isomount_harness::options::Usage;

const USAGE: Usage = Usage {
    program: "loadclient",
    text: "usage: loadclient PORTAL TARGET [--lun N] [--sessions N] [--readers M] [--read-kib K] \
           [--seconds S] [--logins-at-once L] [--server-pid PID]",
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [portal, target, options @ ..] = args.as_slice() else {
        USAGE.fail("missing PORTAL or TARGET");
    };
    let mut sessions = 4096usize;
    let mut readers: Option<usize> = None;
    let mut read_kib = 256u32;
    let mut seconds = 10f64;
    let mut at_once = 256usize;
    let mut server_pid: Option<u32> = None;
    let mut lun = 0u64;
    for (flag, value) in USAGE.pairs(options) {
        match flag {
            "--sessions" => sessions = USAGE.number(flag, value),
            "--readers" => readers = Some(USAGE.number(flag, value)),
            "--read-kib" => read_kib = USAGE.number(flag, value),
            "--seconds" => seconds = USAGE.number(flag, value),
            "--logins-at-once" => at_once = USAGE.number(flag, value),
            "--server-pid" => server_pid = Some(USAGE.number(flag, value)),
            "--lun" => lun = USAGE.number(flag, value),
            other => USAGE.fail(&format!("unknown option {other}")),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| USAGE.fail(&format!("tokio: {e}")));
    runtime.block_on(async {
        let before = server_pid.and_then(rss_kib);
        let mut fleet = Fleet::log_in(portal, target, lun, sessions, at_once).await;
        println!("sessions {}", fleet.logged_in());
        println!("login-failures {}", fleet.failed);
        for why in &fleet.failures {
            println!("login-failure {why}");
        }
        println!("login-seconds {:.2}", fleet.login_time.as_secs_f64());
        if let (Some(pid), Some(before)) = (server_pid, before) {
            // Give the target a moment to settle its buffers after the login burst.
            fleet.idle_for(Duration::from_secs(1)).await;
            if let Some(after) = rss_kib(pid) {
                println!("server-rss-kib-before {before}");
                println!("server-rss-kib-idle {after}");
                let per = after.saturating_sub(before) as f64 / fleet.logged_in().max(1) as f64;
                println!("server-kib-per-idle-session {per:.1}");
            }
        }
        let readers = readers.unwrap_or(fleet.logged_in());
        let report = fleet
            .read_for(
                readers,
                read_kib * 1024,
                Duration::from_secs_f64(seconds),
                None,
            )
            .await;
        println!("readers {}", report.readers);
        println!("mib-per-second {:.1}", report.mib_per_second());
        println!("read-errors {}", report.errors);
        for why in &report.first_errors {
            println!("read-error {why}");
        }
        println!("alive {}", report.alive);
        let clean = fleet.log_out().await;
        println!("logged-out {clean}");
    });
}
