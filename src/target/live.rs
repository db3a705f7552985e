//! A served tree kept in step with the files under it: `serve --root DIR`.
//!
//! [`TreeExporter::rescan`] compares a fresh [`crate::tree::scan`] with what is served and
//! works out the next [`Exports`]: new images are opened and exported, an image renamed over
//! (a new inode under the same path) is exported anew while sessions that have the old one keep
//! it (and its mapping) until they log out, and a removed image is withdrawn (CHECK CONDITION
//! and a logout request for its sessions). An image written in place (same inode, new size or
//! modification time) no longer shows the bytes its sessions started with: it is withdrawn too,
//! and exported again once the writing stops.
//!
//! A file is exported only once it has *settled*: its status change time (which every write
//! and rename moves, and no program can set back) is at least the settle time old. So a file
//! still being copied into the tree is not served half-written; a rename into place is served
//! after the settle time. [`keep_in_step`] runs rescans when inotify (through the `notify`
//! crate) reports a change under the root, when something waits to settle, at a fixed interval
//! as a fallback for file systems that report nothing (NFS), and when asked (SIGHUP).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, Notify};

use super::config::{AllowList, DeviceChoice};
use super::export::{export_file, ImageFile};
use super::{ChapConfig, ExportedTarget, Exports, Server, Withdrawal};
use crate::tree::{self, FileStamp, ImagePatterns, TreeError};

/// Who may see and log in to an image: its allow-list and the CHAP it demands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub allow: AllowList,
    pub chap: Option<Arc<ChapConfig>>,
}

/// Rules for a tree: one for the whole tree, and others for subtrees (the deepest one that
/// holds an image applies to it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub default: Rule,
    /// Subtree paths relative to the root, with their rules.
    pub subtrees: Vec<(PathBuf, Rule)>,
}

impl Access {
    /// The rule for the image at `relative` (a path inside the root).
    pub fn for_image(&self, relative: &Path) -> &Rule {
        self.subtrees
            .iter()
            .filter(|(subtree, _)| relative.starts_with(subtree))
            .max_by_key(|(subtree, _)| subtree.components().count())
            .map_or(&self.default, |(_, rule)| rule)
    }
}

/// What a served tree is and how it is watched.
#[derive(Debug, Clone)]
pub struct TreeSettings {
    pub root: PathBuf,
    pub patterns: ImagePatterns,
    pub iqn_prefix: String,
    pub device: DeviceChoice,
    pub access: Access,
    /// How long a file must have been left alone before it is served.
    pub settle: Duration,
    /// Rescan at least this often, whatever inotify says.
    pub rescan_interval: Duration,
}

/// One served image: the version opened, its target, and the rule it was exported under.
struct Served {
    stamp: FileStamp,
    target: Arc<ExportedTarget>,
    rule: Rule,
}

/// What one rescan changed.
#[derive(Default)]
pub struct Change {
    /// The exports to switch to (`None`: nothing changed).
    pub exports: Option<Exports>,
    pub withdraw: Vec<(Arc<ExportedTarget>, Withdrawal)>,
    pub added: usize,
    pub replaced: usize,
    pub removed: usize,
    /// Files waiting to settle, and when the first of them will have.
    pub waiting: usize,
    pub recheck_in: Option<Duration>,
}

/// The served state of one tree.
pub struct TreeExporter {
    settings: TreeSettings,
    served: HashMap<PathBuf, Served>,
    /// The last problem logged per path, so a rescan repeats none.
    reported: HashMap<PathBuf, String>,
}

impl TreeExporter {
    pub fn new(settings: TreeSettings) -> TreeExporter {
        TreeExporter {
            settings,
            served: HashMap::new(),
            reported: HashMap::new(),
        }
    }

    pub fn settings(&self) -> &TreeSettings {
        &self.settings
    }

    /// New rules, patterns or settle time (a reloaded configuration); the next rescan applies
    /// them.
    pub fn reconfigure(&mut self, settings: TreeSettings) {
        self.settings = settings;
    }

    /// Compare the tree with what is served (see the module doc). `now` is the wall clock the
    /// settle time is measured on.
    pub fn rescan(&mut self, now: SystemTime) -> Result<Change, TreeError> {
        let s = &self.settings;
        let scan = tree::scan(&s.root, &s.patterns, &s.iqn_prefix)?;
        let mut reported: HashMap<PathBuf, String> = HashMap::new();
        for skipped in scan.skipped {
            self.report(&mut reported, skipped.path, skipped.why);
        }
        let now_ns = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let settle_ns = self.settings.settle.as_nanos() as i128;
        let mut change = Change::default();
        let mut changed = false;
        let mut next: HashMap<PathBuf, Served> = HashMap::with_capacity(scan.images.len());
        for image in scan.images {
            let rule = self.settings.access.for_image(&image.relative).clone();
            let old = match self.served.remove(&image.relative) {
                Some(old)
                    if old.stamp.same_version(&image.stamp)
                        && old.target.name == image.names.target
                        && old.rule == rule =>
                {
                    next.insert(image.relative, old);
                    continue;
                }
                // Written in place: what the old mapping shows is no longer what was served.
                Some(old)
                    if old.stamp.same_file(&image.stamp)
                        && !old.stamp.same_version(&image.stamp) =>
                {
                    change
                        .withdraw
                        .push((old.target.clone(), Withdrawal::ModifiedInPlace));
                    change.removed += 1;
                    changed = true;
                    None
                }
                other => other,
            };
            let age_ns = now_ns - image.stamp.changed_ns;
            if age_ns < settle_ns {
                let wait = Duration::from_nanos(u64::try_from(settle_ns - age_ns).unwrap_or(0));
                change.recheck_in = Some(change.recheck_in.map_or(wait, |w| w.min(wait)));
                change.waiting += 1;
                if let Some(old) = old {
                    // The old version serves on until the new one has settled.
                    next.insert(image.relative, old);
                }
                continue;
            }
            let file = ImageFile {
                path: &image.path,
                target_name: &image.names.target,
                product: &image.names.name,
            };
            match export_file(&file, self.settings.device, &rule.allow, rule.chap.clone()) {
                Ok((target, stamp)) => {
                    if old.is_some() {
                        change.replaced += 1;
                    } else {
                        change.added += 1;
                    }
                    changed = true;
                    next.insert(
                        image.relative,
                        Served {
                            stamp,
                            target: Arc::new(target),
                            rule,
                        },
                    );
                }
                Err(e) => {
                    self.report(&mut reported, image.path, e.to_string());
                    if let Some(old) = old {
                        next.insert(image.relative, old);
                    }
                }
            }
        }
        for (_, gone) in self.served.drain() {
            change.withdraw.push((gone.target, Withdrawal::Removed));
            change.removed += 1;
            changed = true;
        }
        self.served = next;
        self.reported = reported;
        if changed {
            let targets = self.served.values().map(|s| s.target.clone()).collect();
            change.exports = Some(Exports::new(targets).map_err(|e| TreeError::Name {
                path: self.settings.root.clone(),
                why: e.to_string(),
            })?);
        }
        Ok(change)
    }

    /// Log a problem with `path` unless the last rescan logged the same one.
    fn report(&self, reported: &mut HashMap<PathBuf, String>, path: PathBuf, why: String) {
        if self.reported.get(&path) != Some(&why) {
            tracing::warn!("{}: not served: {why}", path.display());
        }
        reported.insert(path, why);
    }

    /// How many images are served.
    pub fn served(&self) -> usize {
        self.served.len()
    }
}

/// Asks [`keep_in_step`] for something.
#[derive(Debug)]
pub enum Control {
    /// Rescan now (SIGHUP).
    Rescan,
    /// Rescan with new settings (a reloaded configuration file).
    Reconfigure(Box<TreeSettings>),
}

/// Rescan once and switch the server to the result; logs what changed.
pub async fn rescan_into(
    server: &Server,
    exporter: &mut TreeExporter,
) -> Result<Change, TreeError> {
    let started = Instant::now();
    let mut change = tokio::task::block_in_place(|| exporter.rescan(SystemTime::now()))?;
    if let Some(exports) = change.exports.take() {
        let count = exports.len();
        server.replace_exports(exports, &change.withdraw);
        tracing::info!(
            "{}: {count} images served ({} added, {} replaced, {} removed) in {:.0?}",
            exporter.settings.root.display(),
            change.added,
            change.replaced,
            change.removed,
            started.elapsed()
        );
    }
    Ok(change)
}

/// A watch on a tree: changes under it are noted in `changed` (a permit is kept when nobody
/// waits, so a change made before anyone looks is not lost). Dropping it stops the watch.
pub struct TreeWatch {
    changed: Arc<Notify>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl TreeWatch {
    /// Start watching `settings.root`; started before the first scan, it misses nothing that
    /// changes after that scan.
    pub fn start(settings: &TreeSettings) -> TreeWatch {
        let changed = Arc::new(Notify::new());
        let watcher = watch_tree(settings, changed.clone());
        TreeWatch {
            changed,
            _watcher: watcher,
        }
    }
}

/// Keep `server`'s exports in step with the tree until `control` closes. The first rescan has
/// been done by the caller (so that a server starts with its images), with `watch` already
/// started.
pub async fn keep_in_step(
    server: Arc<Server>,
    mut exporter: TreeExporter,
    mut watch: TreeWatch,
    mut control: mpsc::Receiver<Control>,
    first_recheck: Option<Duration>,
) {
    let mut recheck = first_recheck.map(|d| tokio::time::Instant::now() + d);
    let mut periodic = tokio::time::Instant::now() + exporter.settings.rescan_interval;
    loop {
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
        let changed = watch.changed.clone();
        tokio::select! {
            _ = changed.notified() => {
                // Let a burst of events (a copy, a tar extraction) end before looking.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ = tokio::time::sleep_until(recheck.unwrap_or(far)), if recheck.is_some() => {}
            _ = tokio::time::sleep_until(periodic) => {}
            asked = control.recv() => match asked {
                None => return,
                Some(Control::Rescan) => {
                    tracing::info!("{}: rescan requested", exporter.settings.root.display());
                }
                Some(Control::Reconfigure(settings)) => {
                    let settings = *settings;
                    let moved = settings.root != exporter.settings.root;
                    exporter.reconfigure(settings);
                    if moved {
                        watch = TreeWatch::start(&exporter.settings);
                    }
                    tracing::info!("{}: configuration reloaded", exporter.settings.root.display());
                }
            },
        }
        periodic = tokio::time::Instant::now() + exporter.settings.rescan_interval;
        match rescan_into(&server, &mut exporter).await {
            Ok(change) => {
                recheck = change
                    .recheck_in
                    .map(|d| tokio::time::Instant::now() + d + Duration::from_millis(10));
            }
            Err(e) => {
                tracing::warn!("rescan failed, serving what was there: {e}");
                recheck = None;
            }
        }
    }
}

/// Watch the tree for changes (inotify on Linux, through `notify`); `None` with a warning
/// when it cannot be watched (the periodic rescan still runs).
fn watch_tree(settings: &TreeSettings, changed: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let root = settings.root.clone();
    let patterns = settings.patterns.clone();
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            if event.need_rescan() || event.paths.iter().any(|p| relevant(&root, &patterns, p)) {
                changed.notify_one();
            }
        }
        Err(e) => {
            tracing::debug!("tree watch: {e}");
            changed.notify_one();
        }
    };
    let result = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(&settings.root, RecursiveMode::Recursive)?;
        Ok(watcher)
    });
    match result {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!(
                "{}: cannot watch for changes ({e}); rescanning every {:?}",
                settings.root.display(),
                settings.rescan_interval
            );
            None
        }
    }
}

/// Whether a change to `path` can change what is served: not under a hidden name (where new
/// images are written before they are renamed into place), and an image or not a plain file
/// (a directory, or something already gone).
fn relevant(root: &Path, patterns: &ImagePatterns, path: &Path) -> bool {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let hidden = relative
        .components()
        .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b"."));
    if hidden {
        return false;
    }
    match path.file_name() {
        Some(name) if patterns.matches(name) => true,
        _ => !path.is_file(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Availability;

    const PREFIX: &str = "iqn.2026-01.test.live";

    fn settings(root: &Path, settle: Duration) -> TreeSettings {
        TreeSettings {
            root: root.to_path_buf(),
            patterns: ImagePatterns::default(),
            iqn_prefix: PREFIX.into(),
            device: DeviceChoice::Auto,
            access: Access::default(),
            settle,
            rescan_interval: Duration::from_secs(60),
        }
    }

    fn names(change: &Change) -> Vec<String> {
        change
            .exports
            .as_ref()
            .map(|e| e.iter().map(|t| t.name.clone()).collect())
            .unwrap_or_default()
    }

    /// A time `secs` after now: files written now have settled by then.
    fn later(secs: u64) -> SystemTime {
        SystemTime::now() + Duration::from_secs(secs)
    }

    #[test]
    fn rescans_add_replace_and_remove_and_keep_what_did_not_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.img"), vec![1u8; 4096]).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/b.iso"), vec![2u8; 4096]).unwrap();
        let mut exporter = TreeExporter::new(settings(root, Duration::from_secs(1)));

        let first = exporter.rescan(later(5)).unwrap();
        assert_eq!(
            names(&first),
            [format!("{PREFIX}:a"), format!("{PREFIX}:sub-b")]
        );
        assert_eq!((first.added, first.replaced, first.removed), (2, 0, 0));
        let a = first
            .exports
            .as_ref()
            .unwrap()
            .find(&format!("{PREFIX}:a"))
            .unwrap()
            .clone();

        let again = exporter.rescan(later(5)).unwrap();
        assert!(again.exports.is_none(), "nothing changed");

        // Renamed over: a new target for new logins; the old one is not withdrawn.
        std::fs::write(root.join(".a.img.new"), vec![3u8; 8192]).unwrap();
        std::fs::rename(root.join(".a.img.new"), root.join("a.img")).unwrap();
        std::fs::remove_file(root.join("sub/b.iso")).unwrap();
        let next = exporter.rescan(later(5)).unwrap();
        assert_eq!((next.added, next.replaced, next.removed), (0, 1, 1));
        assert_eq!(names(&next), [format!("{PREFIX}:a")]);
        let new_a = next
            .exports
            .as_ref()
            .unwrap()
            .find(&format!("{PREFIX}:a"))
            .unwrap();
        assert!(!Arc::ptr_eq(new_a, &a));
        assert_eq!(new_a.lun.size(), 8192);
        assert_eq!(next.withdraw.len(), 1);
        assert_eq!(next.withdraw[0].0.name, format!("{PREFIX}:sub-b"));
        assert_eq!(next.withdraw[0].1, Withdrawal::Removed);
        assert_eq!(a.availability(), Availability::Served);
    }

    #[test]
    fn unsettled_files_wait_and_edits_in_place_withdraw_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.img"), vec![1u8; 4096]).unwrap();
        let mut exporter = TreeExporter::new(settings(root, Duration::from_secs(30)));
        let now = exporter.rescan(SystemTime::now()).unwrap();
        assert!(now.exports.is_none(), "a file written just now waits");
        assert_eq!(now.waiting, 1);
        let wait = now.recheck_in.unwrap();
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        let settled = exporter.rescan(later(31)).unwrap();
        assert_eq!(settled.added, 1);

        // Written in place: withdrawn now, served again once settled.
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(root.join("a.img"))
            .unwrap();
        file.set_len(8192).unwrap();
        drop(file);
        let edited = exporter.rescan(SystemTime::now()).unwrap();
        assert_eq!(edited.withdraw.len(), 1);
        assert_eq!(edited.withdraw[0].1, Withdrawal::ModifiedInPlace);
        assert_eq!(names(&edited), Vec::<String>::new());
        assert_eq!(edited.waiting, 1);
        let back = exporter.rescan(later(31)).unwrap();
        assert_eq!(back.added, 1);
        let exports = back.exports.unwrap();
        assert_eq!(exports.iter().next().unwrap().lun.size(), 8192);
    }

    #[test]
    fn subtree_rules_apply_to_the_deepest_subtree() {
        let lab = Rule {
            allow: AllowList::parse(&["10.0.0.0/8"]).unwrap(),
            chap: None,
        };
        let inner = Rule {
            allow: AllowList::parse(&["10.1.0.0/16"]).unwrap(),
            chap: None,
        };
        let access = Access {
            default: Rule::default(),
            subtrees: vec![
                ("lab/inner".into(), inner.clone()),
                ("lab".into(), lab.clone()),
            ],
        };
        assert_eq!(access.for_image(Path::new("x.iso")), &Rule::default());
        assert_eq!(access.for_image(Path::new("lab/x.iso")), &lab);
        assert_eq!(access.for_image(Path::new("lab/inner/deep/x.iso")), &inner);
        assert_eq!(
            access.for_image(Path::new("laboratory/x.iso")),
            &Rule::default()
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lab")).unwrap();
        std::fs::write(dir.path().join("lab/x.img"), vec![0u8; 512]).unwrap();
        let mut s = settings(dir.path(), Duration::ZERO);
        s.access = access.clone();
        let mut exporter = TreeExporter::new(s.clone());
        let first = exporter.rescan(SystemTime::now()).unwrap();
        let t = first.exports.unwrap().iter().next().unwrap().clone();
        assert_eq!(t.allow, lab.allow);
        // A changed rule re-exports the image under the new rule.
        s.access.subtrees.retain(|(p, _)| p != Path::new("lab"));
        exporter.reconfigure(s);
        let next = exporter.rescan(SystemTime::now()).unwrap();
        assert_eq!(next.replaced, 1);
        assert_eq!(
            next.exports.unwrap().iter().next().unwrap().allow,
            AllowList::default()
        );
    }

    #[test]
    fn only_changes_to_visible_images_and_directories_count() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let p = ImagePatterns::default();
        std::fs::write(root.join("notes.txt"), b"x").unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        assert!(relevant(root, &p, &root.join("a.iso")));
        assert!(relevant(root, &p, &root.join("d")));
        assert!(
            relevant(root, &p, &root.join("gone")),
            "a removed path may have been a directory"
        );
        assert!(!relevant(root, &p, &root.join("notes.txt")));
        assert!(!relevant(root, &p, &root.join(".a.iso.part")));
        assert!(!relevant(root, &p, &root.join(".tmp/a.iso")));
    }
}
