//! What a running server tells its operator: per-image sessions and bytes served, as a periodic
//! log line and as a stats file that `isomount serve --status` prints.
//!
//! The stats file is plain text, rewritten whole (temp file and rename) at every interval:
//!
//! ```text
//! # isomount serve stats
//! written-unix 1767225600
//! pid 4242
//! listening 0.0.0.0:3260
//! interval-seconds 10
//! targets 1000
//! sessions 12
//! discovery-sessions 1
//! # target sessions logins bytes-read state
//! iqn.2026-01.org.isomount.serve:netbsd-5.0 3 10 734003200 served
//! iqn.2026-01.org.isomount.serve:old 1 1 65536 withdrawn
//! ```
//!
//! One line per target exported now or still used by a session (`state` is `served`,
//! `replaced`: a newer file took its name and this one lives on for its sessions, or
//! `withdrawn`); numbers count since the server started.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Availability, ExportedTarget, Server};

/// Counters of one exported target, updated by its sessions.
#[derive(Debug, Default)]
pub struct TargetStats {
    sessions: AtomicUsize,
    logins: AtomicU64,
    bytes_read: AtomicU64,
}

impl TargetStats {
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    pub(crate) fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.logins.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_ended(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }
}

/// What one target looks like in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    Served,
    Replaced,
    Withdrawn,
}

impl RowState {
    fn label(self) -> &'static str {
        match self {
            RowState::Served => "served",
            RowState::Replaced => "replaced",
            RowState::Withdrawn => "withdrawn",
        }
    }
}

/// One target's counters at one moment.
#[derive(Debug, Clone)]
pub struct Row {
    pub target: Arc<ExportedTarget>,
    pub state: RowState,
    pub sessions: usize,
    pub logins: u64,
    pub bytes_read: u64,
}

/// The server's counters at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken: SystemTime,
    pub rows: Vec<Row>,
    pub sessions: usize,
    pub discovery_sessions: usize,
}

impl Server {
    /// Every exported target, and every other target a session still uses, with its counters.
    pub fn snapshot(&self) -> Snapshot {
        let exports = self.exports();
        let (in_use, discovery_sessions, sessions) = self.session_targets();
        let row = |target: &Arc<ExportedTarget>, state: RowState| Row {
            target: target.clone(),
            state,
            sessions: target.stats.sessions(),
            logins: target.stats.logins(),
            bytes_read: target.stats.bytes_read(),
        };
        let mut rows: Vec<Row> = exports.iter().map(|t| row(t, RowState::Served)).collect();
        for target in in_use {
            if exports
                .find(&target.name)
                .is_some_and(|t| Arc::ptr_eq(t, &target))
            {
                continue;
            }
            let state = match target.availability() {
                Availability::Served => RowState::Replaced,
                Availability::Withdrawn(_) => RowState::Withdrawn,
            };
            rows.push(row(&target, state));
        }
        rows.sort_by(|a, b| a.target.name.cmp(&b.target.name));
        Snapshot {
            taken: SystemTime::now(),
            rows,
            sessions,
            discovery_sessions,
        }
    }
}

/// The stats file's text (layout in the module doc).
pub fn render(snapshot: &Snapshot, listening: &str, interval: Duration) -> String {
    use std::fmt::Write;
    let unix = snapshot
        .taken
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = String::new();
    let _ = writeln!(out, "# isomount serve stats");
    let _ = writeln!(out, "written-unix {unix}");
    let _ = writeln!(out, "pid {}", std::process::id());
    let _ = writeln!(out, "listening {listening}");
    let _ = writeln!(out, "interval-seconds {}", interval.as_secs().max(1));
    let served = snapshot
        .rows
        .iter()
        .filter(|r| r.state == RowState::Served)
        .count();
    let _ = writeln!(out, "targets {served}");
    let _ = writeln!(out, "sessions {}", snapshot.sessions);
    let _ = writeln!(out, "discovery-sessions {}", snapshot.discovery_sessions);
    let _ = writeln!(out, "# target sessions logins bytes-read state");
    for r in &snapshot.rows {
        let _ = writeln!(
            out,
            "{} {} {} {} {}",
            r.target.name,
            r.sessions,
            r.logins,
            r.bytes_read,
            r.state.label()
        );
    }
    out
}

/// Write the stats file whole (temp file and rename: a reader never sees half of it).
pub fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    crate::iobuf::write_atomic(path, text.as_bytes())
}

/// How old a stats file is by its own `written-unix` line, and its text; an error names the
/// file and what is wrong with it.
pub fn read_file(path: &Path) -> Result<(Duration, String), String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let written = text
        .lines()
        .find_map(|l| l.strip_prefix("written-unix "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("{shown}: not an isomount serve stats file"))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok((Duration::from_secs(now.saturating_sub(written)), text))
}

/// The periodic log line: totals, then one line per target read since the last line.
#[derive(Debug, Default)]
pub struct Reporter {
    last: HashMap<usize, u64>,
}

impl Reporter {
    /// The lines for this interval.
    pub fn lines(&mut self, snapshot: &Snapshot) -> Vec<String> {
        let mut seen: HashMap<usize, u64> = HashMap::with_capacity(snapshot.rows.len());
        let mut busy = Vec::new();
        let mut total = 0u64;
        for r in &snapshot.rows {
            let key = Arc::as_ptr(&r.target) as usize;
            let before = self.last.get(&key).copied().unwrap_or(0);
            let delta = r.bytes_read.saturating_sub(before);
            seen.insert(key, r.bytes_read);
            total = total.saturating_add(delta);
            if delta > 0 || r.sessions > 0 {
                busy.push(format!(
                    "{}: {} sessions, {} read{}",
                    r.target.name,
                    r.sessions,
                    mib(delta),
                    match r.state {
                        RowState::Served => "",
                        RowState::Replaced => " (replaced)",
                        RowState::Withdrawn => " (withdrawn)",
                    }
                ));
            }
        }
        self.last = seen;
        let served = snapshot
            .rows
            .iter()
            .filter(|r| r.state == RowState::Served)
            .count();
        let mut lines = vec![format!(
            "serving {served} targets, {} sessions ({} discovery), {} read",
            snapshot.sessions,
            snapshot.discovery_sessions,
            mib(total)
        )];
        lines.extend(busy);
        lines
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::config::AllowList;
    use crate::target::scsi::{DeviceType, LogicalUnit};
    use crate::target::{Exports, Limits, LunData, MemorySource, Withdrawal};

    fn target(name: &str) -> Arc<ExportedTarget> {
        let lun = LogicalUnit::new(DeviceType::Disk, 512, "t", "s", name);
        let source = MemorySource::new(bytes::Bytes::from(vec![0u8; 512]), 512);
        Arc::new(ExportedTarget::new(
            name.into(),
            lun,
            LunData::Source(Arc::new(source)),
            AllowList::default(),
            None,
        ))
    }

    #[test]
    fn the_stats_file_and_log_lines_count_per_target() {
        let a = target("iqn.x:a");
        let b = target("iqn.x:b");
        let server = Server::with_exports(
            Exports::new(vec![a.clone(), b.clone()]).unwrap(),
            None,
            Limits::default(),
        );
        a.stats.session_started();
        a.stats.add_bytes_read(3 << 20);
        let mut reporter = Reporter::default();
        let lines = reporter.lines(&server.snapshot());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("serving 2 targets"), "{lines:?}");
        assert!(lines[0].ends_with("3.0 MiB read"), "{lines:?}");
        assert_eq!(lines[1], "iqn.x:a: 1 sessions, 3.0 MiB read");
        a.stats.session_ended();
        let lines = reporter.lines(&server.snapshot());
        assert_eq!(
            lines,
            ["serving 2 targets, 0 sessions (0 discovery), 0.0 MiB read"]
        );

        server.replace_exports(
            Exports::new(vec![b.clone()]).unwrap(),
            &[(a.clone(), Withdrawal::Removed)],
        );
        let text = render(&server.snapshot(), "127.0.0.1:3260", Duration::from_secs(5));
        assert!(text.contains("\ntargets 1\n"), "{text}");
        assert!(text.contains("\niqn.x:b 0 0 0 served\n"), "{text}");
        assert!(!text.contains("iqn.x:a"), "no session holds a: {text}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats");
        write_file(&path, &text).unwrap();
        let (age, read) = read_file(&path).unwrap();
        assert!(age < Duration::from_secs(60));
        assert_eq!(read, text);
        std::fs::write(&path, "something else\n").unwrap();
        assert!(read_file(&path).unwrap_err().contains("not an isomount"));
    }
}
