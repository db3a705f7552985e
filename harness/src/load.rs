//! A light load client: thousands of logged-in sessions from one process, each reading its own
//! region of one LUN, or idle (answering the target's pings), so a test or `scripts/bench.sh`
//! can measure what a target does with many sessions: aggregate throughput, and memory per
//! idle session ([`rss_kib`] of the target's process before and after).
//!
//! Every session is its own connection and its own tokio task; one command at a time each, so
//! the load is the number of sessions, not a deep queue on a few. Read data that is compared
//! with the image lands in one buffer per thread; data that is not is taken off the socket
//! unseen: a client sharing the target's cores should cost as little as one on its own machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::initiator::{read10, RawError, RawInitiator};
use crate::platform::{memory_kib, Memory};

/// The sessions of one load run, logged in to one target.
pub struct Fleet {
    sessions: Vec<RawInitiator>,
    block_size: u32,
    blocks: u64,
    /// Logins that failed, and the first few reasons.
    pub failed: usize,
    pub failures: Vec<String>,
    /// How long logging everyone in took.
    pub login_time: Duration,
}

/// What a reading period did.
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    pub readers: usize,
    pub bytes: u64,
    pub commands: u64,
    pub elapsed: Duration,
    /// Commands that ended in error or bad status, and sessions lost, with the first reasons.
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Data-In bytes that differed from the expected image.
    pub mismatched_bytes: u64,
    /// Sessions still logged in at the end (readers and idle ones).
    pub alive: usize,
}

impl ReadReport {
    pub fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / 1_048_576.0 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What one session's task gives back.
#[derive(Default)]
struct SessionEnd {
    session: Option<RawInitiator>,
    bytes: u64,
    commands: u64,
    errors: u64,
    first_error: Option<String>,
    mismatched: u64,
}

impl Fleet {
    /// Log `count` sessions in to `target` at `portal`, at most `at_once` logins in flight;
    /// they read LUN `lun`.
    pub async fn log_in(
        portal: &str,
        target: &str,
        lun: u64,
        count: usize,
        at_once: usize,
    ) -> Fleet {
        let started = Instant::now();
        let mut fleet = Fleet {
            sessions: Vec::with_capacity(count),
            block_size: 512,
            blocks: 0,
            failed: 0,
            failures: Vec::new(),
            login_time: Duration::ZERO,
        };
        if let Err(why) = descriptors_for(count) {
            fleet.fail(why);
        }
        let gate = Arc::new(Semaphore::new(at_once.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let (portal, target, gate) = (portal.to_string(), target.to_string(), gate.clone());
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await;
                let mut session = RawInitiator::connect(&portal).await?;
                session.lun = lun;
                // As real initiators do (libiscsi, isomount): a READ's data in few PDUs.
                session.max_recv = 256 * 1024;
                match session.login_normal(&target, false).await? {
                    (0, _) => {
                        session.clear_unit_attention().await?;
                        Ok(session)
                    }
                    (class, detail) => Err(RawError::Protocol(format!(
                        "login refused: class {class} detail {detail}"
                    ))),
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(session)) => fleet.sessions.push(session),
                Ok(Err(e)) => fleet.fail(e.to_string()),
                Err(e) => fleet.fail(e.to_string()),
            }
        }
        if let Some(first) = fleet.sessions.first_mut() {
            // READ CAPACITY(10): the last LBA and the block size.
            match first.command(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8).await {
                Ok((done, data)) if done.status == 0 && data.len() == 8 => {
                    let last = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                    fleet.blocks = u64::from(last) + 1;
                    fleet.block_size = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                }
                Ok((done, _)) => fleet.fail(format!("READ CAPACITY: status {}", done.status)),
                Err(e) => fleet.fail(format!("READ CAPACITY: {e}")),
            }
        }
        fleet.login_time = started.elapsed();
        fleet
    }

    fn fail(&mut self, why: String) {
        self.failed += 1;
        if self.failures.len() < 5 {
            self.failures.push(why);
        }
    }

    pub fn logged_in(&self) -> usize {
        self.sessions.len()
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// For `duration`, the first `readers` sessions read their own regions (`read_size` bytes
    /// per READ, sequentially, wrapping) while the others stay idle and answer pings. With
    /// `expected` (the image's bytes), every byte read is compared with it.
    pub async fn read_for(
        &mut self,
        readers: usize,
        read_size: u32,
        duration: Duration,
        expected: Option<Bytes>,
    ) -> ReadReport {
        let readers = readers.min(self.sessions.len());
        let block = u64::from(self.block_size.max(1));
        let per_read = (u64::from(read_size) / block).clamp(1, u64::from(u16::MAX));
        let region = (self.blocks / readers.max(1) as u64).max(per_read);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, session) in self.sessions.drain(..).enumerate() {
            let expected = expected.clone();
            let blocks = self.blocks;
            tasks.spawn(async move {
                if i < readers {
                    let start = (i as u64 * region) % blocks.max(1);
                    read_region(
                        session, start, region, per_read, blocks, block, deadline, expected,
                    )
                    .await
                } else {
                    stay_idle(session, deadline).await
                }
            });
        }
        let mut report = ReadReport {
            readers,
            ..ReadReport::default()
        };
        while let Some(joined) = tasks.join_next().await {
            let Ok(end) = joined else {
                report.errors += 1;
                continue;
            };
            report.bytes += end.bytes;
            report.commands += end.commands;
            report.errors += end.errors;
            report.mismatched_bytes += end.mismatched;
            if let Some(why) = end.first_error {
                if report.first_errors.len() < 5 {
                    report.first_errors.push(why);
                }
            }
            if let Some(session) = end.session {
                self.sessions.push(session);
            }
        }
        report.elapsed = started.elapsed();
        report.alive = self.sessions.len();
        report
    }

    /// Stay logged in, answering pings, for `duration`; returns how many sessions are left.
    pub async fn idle_for(&mut self, duration: Duration) -> usize {
        self.read_for(0, 512, duration, None).await.alive
    }

    /// Log every session out; returns how many logged out cleanly.
    pub async fn log_out(self) -> usize {
        let mut tasks = tokio::task::JoinSet::new();
        for mut session in self.sessions {
            tasks.spawn(async move { matches!(session.logout().await, Ok(0)) });
        }
        let mut clean = 0;
        while let Some(joined) = tasks.join_next().await {
            clean += usize::from(matches!(joined, Ok(true)));
        }
        clean
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_region(
    mut session: RawInitiator,
    start: u64,
    region: u64,
    per_read: u64,
    blocks: u64,
    block: u64,
    deadline: tokio::time::Instant,
    expected: Option<Bytes>,
) -> SessionEnd {
    let mut end = SessionEnd::default();
    let mut at = 0u64;
    while tokio::time::Instant::now() < deadline {
        let lba = (start + at) % blocks.max(1);
        let count = per_read.min(blocks - lba).min(region - at);
        let want = (count * block) as u32;
        let offset = lba * block;
        let mut mismatched = 0u64;
        let cdb = read10(lba as u32, count as u16);
        let result = match &expected {
            // Bytes no one looks at are not copied out of the socket.
            None => session.command_discarding(&cdb, want).await,
            Some(image) => {
                session
                    .command_streamed(&cdb, want, |at, data| {
                        let from = (offset + u64::from(at)) as usize;
                        let same = image
                            .get(from..from + data.len())
                            .is_some_and(|want| want == data);
                        if !same {
                            mismatched += data.len() as u64;
                        }
                    })
                    .await
            }
        };
        end.mismatched += mismatched;
        match result {
            Ok(done) if done.status == 0 && done.data_len == want as usize => {
                end.bytes += u64::from(want);
                end.commands += 1;
            }
            Ok(done) => {
                end.errors += 1;
                end.first_error.get_or_insert(format!(
                    "READ at {lba}: status {} with {} bytes",
                    done.status, done.data_len
                ));
            }
            Err(e) => {
                end.errors += 1;
                end.first_error.get_or_insert(format!("READ at {lba}: {e}"));
                return end;
            }
        }
        at = (at + count) % region.max(1);
    }
    end.session = Some(session);
    end
}

async fn stay_idle(mut session: RawInitiator, deadline: tokio::time::Instant) -> SessionEnd {
    let mut end = SessionEnd::default();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            end.session = Some(session);
            return end;
        }
        match session.wait_event(left).await {
            Err(RawError::Timeout) => {}
            Ok(Some(_event)) => {}
            Ok(None) => {
                end.errors += 1;
                end.first_error = Some("an idle session was closed by the target".into());
                return end;
            }
            Err(e) => {
                end.errors += 1;
                end.first_error = Some(format!("idle session: {e}"));
                return end;
            }
        }
    }
}

/// Resident memory of process `pid` in KiB, where the system tells (the harness's platform
/// module reads it).
pub fn rss_kib(pid: u32) -> Option<u64> {
    memory_kib(pid, Memory::Resident)
}

/// Descriptors this process keeps for itself besides the connections it is asked for.
const SPARE_DESCRIPTORS: u64 = 256;

/// Raise this process's soft file descriptor limit to its hard limit (a fresh machine's soft
/// limit is often 1024, below a thousand connections and the rest); an error naming the limit
/// when even that leaves no room for `connections` more.
pub fn descriptors_for(connections: usize) -> Result<u64, String> {
    let wanted = connections as u64 + SPARE_DESCRIPTORS;
    // As far as the hard limit goes, not just to `wanted`: tests running at once in one process
    // each ask for their own connections.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit >= wanted => Ok(limit),
        Ok(limit) => Err(format!(
            "file descriptor limit {limit} (the hard limit) is too low for {connections} \
             connections: raise it (ulimit -Hn)"
        )),
        Err(e) => Err(format!("cannot raise the file descriptor limit: {e}")),
    }
}
