//! `rudeclient PORTAL TARGET [--half-logins N] [--pace-ms MS] [--rounds-per-second R]
//!  [--seconds S] [--within-seconds W]`
//!
//! A hostile initiator against PORTAL for S seconds (default 10), for `scripts/bench.sh`'s
//! "serve under attack" row: N connections (default 1000) that send half a login header and
//! nothing more, each opened again as soon as the target closes it; a session that reads its
//! responses one byte every MS milliseconds (default 60000); and R rounds a second (default 10)
//! of malformed PDUs, oversized and endless login text (see the harness's `rude` module). Prints `ready` once the half logins are open, then at the
//! end one `key value` line per figure: rounds played, bad connections, those the target did not
//! close within W seconds (default 20), and half logins the target closed (its login timeout).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use isomount_harness::options::Usage;
use isomount_harness::rude;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

const USAGE: Usage = Usage {
    program: "rudeclient",
    text: "usage: rudeclient PORTAL TARGET [--half-logins N] [--pace-ms MS] \
           [--rounds-per-second R] [--seconds S] [--within-seconds W]",
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [portal, target, options @ ..] = args.as_slice() else {
        USAGE.fail("PORTAL and TARGET are needed");
    };
    let mut half = 1000usize;
    let mut pace_ms = 60_000u64;
    let mut rate = 10f64;
    let mut seconds = 10f64;
    let mut within = 20f64;
    for (flag, value) in USAGE.pairs(options) {
        match flag {
            "--half-logins" => half = USAGE.number(flag, value),
            "--pace-ms" => pace_ms = USAGE.number(flag, value),
            "--rounds-per-second" => rate = USAGE.number(flag, value),
            "--seconds" => seconds = USAGE.number(flag, value),
            "--within-seconds" => within = USAGE.number(flag, value),
            other => USAGE.fail(&format!("unknown option {other}")),
        }
    }
    if !(rate > 0.0 && seconds >= 0.0 && within > 0.0) {
        USAGE.fail("--rounds-per-second and --within-seconds must be above 0");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| USAGE.fail(&format!("tokio: {e}")));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let within = Duration::from_secs_f64(within);
    runtime.block_on(async {
        // The half logins: each reopened when the target closes it, until the deadline.
        let timed_out = Arc::new(AtomicU64::new(0));
        let held = rude::half_logins(portal, half)
            .await
            .unwrap_or_else(|e| USAGE.fail(&format!("half logins: {e}")));
        let mut holders = tokio::task::JoinSet::new();
        for mut stream in held {
            let (portal, timed_out) = (portal.clone(), timed_out.clone());
            holders.spawn(async move {
                let mut sink = [0u8; 64];
                loop {
                    match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
                        Err(_) => return,
                        Ok(Ok(n)) if n > 0 => continue,
                        Ok(_) => {}
                    }
                    timed_out.fetch_add(1, Ordering::Relaxed);
                    match rude::half_logins(&portal, 1).await {
                        Ok(mut again) if !again.is_empty() => stream = again.remove(0),
                        _ => return,
                    }
                }
            });
        }
        println!("ready");

        // The byte-at-a-time reader (its end cannot be seen from here: what the target sent
        // before closing still trickles out of our socket buffer; the target's log tells).
        let (_, slow) = rude::slow_reader(portal, target, Duration::from_millis(pace_ms))
            .await
            .unwrap_or_else(|e| USAGE.fail(&format!("slow reader: {e}")));

        // Rounds of malformed PDUs and bad login text, R a second.
        let period = Duration::from_secs_f64(1.0 / rate);
        let (mut rounds, mut bad, mut open) = (0u64, 0u64, 0u64);
        let mut first_open = Vec::new();
        let mut next = Instant::now();
        while Instant::now() < deadline {
            let mut outcomes = Vec::new();
            match rude::malformed(portal, target, within).await {
                Ok(o) => outcomes.extend(o),
                Err(e) => USAGE.fail(&format!("malformed PDUs: {e}")),
            }
            match rude::oversized_text(portal, within).await {
                Ok(o) => outcomes.extend(o),
                Err(e) => USAGE.fail(&format!("oversized text: {e}")),
            }
            match rude::endless_text(portal, 10_000, within).await {
                Ok(o) => outcomes.push(o),
                Err(e) => USAGE.fail(&format!("endless text: {e}")),
            }
            rounds += 1;
            for o in outcomes {
                bad += 1;
                if !o.closed {
                    open += 1;
                    if first_open.len() < 5 {
                        first_open.push(format!("{} ({})", o.what, o.local));
                    }
                }
            }
            // A round late does not make the next ones come in a burst.
            next = (next + period).max(Instant::now());
            tokio::time::sleep_until(next).await;
        }
        slow.abort();
        while holders.join_next().await.is_some() {}
        println!("rounds {rounds}");
        println!("bad-connections {bad}");
        println!("not-closed {open}");
        for what in first_open {
            println!("not-closed-connection {what}");
        }
        println!("login-timeouts-seen {}", timed_out.load(Ordering::Relaxed));
    });
}
