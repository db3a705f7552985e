//! Image trees: which files under a root directory are images, and the catalog name and iSCSI
//! target name each one gets. `serve --root` and `publish --root` both use [`scan`], so a
//! catalog published from a tree names exactly the targets a server of the same tree exports.
//!
//! Names come from the path relative to the root, without the image's extension:
//!
//! ```text
//! ROOT/netbsd-5.0.iso            name netbsd-5.0            target PREFIX:netbsd-5.0
//! ROOT/NetBSD/5.0/i386cd.iso     name NetBSD-5.0-i386cd     target PREFIX:netbsd-5.0-i386cd
//! ROOT/lab/disk image.img        name lab-disk-image        target PREFIX:lab-disk-image
//! ```
//!
//! A `/` becomes `-`, and so does any character a catalog name cannot hold (letters, digits and
//! `._+-` remain); the target name is the name lower-cased in the iSCSI name character set
//! (RFC 7143 §4.2.7.2, via [`crate::target::config::target_name_for`]). Two files that would get
//! the same name or target are told apart by path order: the first in byte order of the relative
//! path keeps it and the other is skipped with a reason, so the outcome does not depend on which
//! was found first. Files and directories whose names start with `.` are not looked at (that is
//! where a new image is written before it is renamed into place), nor are directories reached
//! through symbolic links; a symbolic link to a file is an image like the file.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use globset::{GlobSet, GlobSetBuilder};

use crate::target::config::target_name_for;

/// The file names `--root` serves and publishes unless told otherwise.
pub const DEFAULT_PATTERNS: &[&str] = &["*.iso", "*.img"];

/// The longest catalog name (the catalog's own rule).
const MAX_NAME: usize = 128;

/// Why a tree could not be looked at, or a name could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("image pattern {pattern:?}: {why}")]
    Pattern { pattern: String, why: String },
    #[error("{}: {source}", path.display())]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: {why}", path.display())]
    Name { path: PathBuf, why: String },
}

/// Glob patterns on file names (`*.iso`), matched without regard to case.
#[derive(Debug, Clone)]
pub struct ImagePatterns {
    set: GlobSet,
    patterns: Vec<String>,
}

impl ImagePatterns {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<ImagePatterns, TreeError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            if pattern.contains('/') {
                return Err(TreeError::Pattern {
                    pattern: pattern.into(),
                    why: "patterns match file names, not paths (no '/')".into(),
                });
            }
            let glob = globset::GlobBuilder::new(pattern)
                .case_insensitive(true)
                .literal_separator(true)
                .build()
                .map_err(|e| TreeError::Pattern {
                    pattern: pattern.into(),
                    why: e.kind().to_string(),
                })?;
            builder.add(glob);
        }
        if patterns.is_empty() {
            return Err(TreeError::Pattern {
                pattern: String::new(),
                why: "at least one pattern is needed".into(),
            });
        }
        let set = builder.build().map_err(|e| TreeError::Pattern {
            pattern: patterns
                .iter()
                .map(|p| p.as_ref())
                .collect::<Vec<_>>()
                .join(" "),
            why: e.to_string(),
        })?;
        Ok(ImagePatterns {
            set,
            patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
        })
    }

    /// Whether a file of this name is an image.
    pub fn matches(&self, file_name: &OsStr) -> bool {
        self.set.is_match(Path::new(file_name))
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

impl Default for ImagePatterns {
    fn default() -> ImagePatterns {
        ImagePatterns::new(DEFAULT_PATTERNS).unwrap_or_else(|_| unreachable!())
    }
}

/// The two names of one image file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageNames {
    /// The catalog name (what users type).
    pub name: String,
    /// The iSCSI target name the image is served as.
    pub target: String,
}

/// The names of the image at `relative` (a path inside the root) under the target prefix
/// `iqn_prefix` (`iqn.2009-04.org.example.mirror`).
pub fn image_names(relative: &Path, iqn_prefix: &str) -> Result<ImageNames, TreeError> {
    let bad = |why: String| TreeError::Name {
        path: relative.to_path_buf(),
        why,
    };
    let mut parts: Vec<String> = Vec::new();
    let components: Vec<Component<'_>> = relative.components().collect();
    for (i, component) in components.iter().enumerate() {
        let Component::Normal(part) = component else {
            return Err(bad("not a plain path inside the root".into()));
        };
        let part = if i + 1 == components.len() {
            Path::new(part).file_stem().unwrap_or(part)
        } else {
            part
        };
        parts.push(part.to_string_lossy().into_owned());
    }
    let name: String = parts
        .join("/")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '+' | '-' => c,
            _ => '-',
        })
        .collect();
    let name = name.trim_start_matches(['.', '-']).to_string();
    if name.is_empty() {
        return Err(bad("cannot make a name from this path".into()));
    }
    if name.len() > MAX_NAME {
        return Err(bad(format!(
            "the name {name} is longer than {MAX_NAME} bytes"
        )));
    }
    let target = target_name_for(iqn_prefix, &name).map_err(|e| bad(e.to_string()))?;
    Ok(ImageNames { name, target })
}

/// What identifies one version of a file: a rename over it changes the inode, an edit in place
/// changes the size or modification time. `changed_ns` (ctime) moves with every write and
/// rename and cannot be set back by a program: it tells whether a file is still being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub device: u64,
    pub inode: u64,
    pub size: u64,
    pub modified_ns: i128,
    pub changed_ns: i128,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        FileStamp {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.len(),
            modified_ns: ns(meta.mtime(), meta.mtime_nsec()),
            changed_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The same file (device and inode).
    pub fn same_file(&self, other: &FileStamp) -> bool {
        self.device == other.device && self.inode == other.inode
    }

    /// The same file with the same content as far as size and modification time tell.
    pub fn same_version(&self, other: &FileStamp) -> bool {
        self.same_file(other) && self.size == other.size && self.modified_ns == other.modified_ns
    }
}

/// One image found in a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeImage {
    /// The path to open: the root joined with `relative`.
    pub path: PathBuf,
    /// The path inside the root.
    pub relative: PathBuf,
    pub names: ImageNames,
    pub stamp: FileStamp,
}

/// A file that looks like an image but is not served or published, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: String,
}

/// Everything a scan found, in order of relative path.
#[derive(Debug, Default)]
pub struct TreeScan {
    pub images: Vec<TreeImage>,
    pub skipped: Vec<Skipped>,
}

/// Every image under `root` whose file name matches `patterns`, with its names under
/// `iqn_prefix`. Only a missing or unreadable root is an error; what cannot be read below it is
/// reported in [`TreeScan::skipped`].
pub fn scan(
    root: &Path,
    patterns: &ImagePatterns,
    iqn_prefix: &str,
) -> Result<TreeScan, TreeError> {
    let meta = std::fs::metadata(root).map_err(|source| TreeError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(TreeError::NotADirectory(root.to_path_buf()));
    }
    // Checked before walking: a bad prefix would otherwise be reported once per image.
    target_name_for(iqn_prefix, "x").map_err(|e| TreeError::Name {
        path: root.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut out = TreeScan::default();
    let walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().cmp(b.file_name()))
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().as_encoded_bytes().starts_with(b"."));
    let mut found: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    for entry in walk {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                out.skipped.push(Skipped {
                    path,
                    why: e
                        .io_error()
                        .map_or_else(|| e.to_string(), |io| io.to_string()),
                });
                continue;
            }
        };
        if entry.file_type().is_dir() || !patterns.matches(entry.file_name()) {
            continue;
        }
        let path = entry.into_path();
        // A symbolic link counts as the file it points to.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => found.push((path, meta)),
            Ok(_) => {}
            Err(e) => out.skipped.push(Skipped {
                path,
                why: e.to_string(),
            }),
        }
    }
    // Names are handed out in byte order of the relative path, whatever order the walk took.
    let relative_of = |path: &Path| path.strip_prefix(root).unwrap_or(path).to_path_buf();
    found.sort_by(|(a, _), (b, _)| {
        let (a, b) = (relative_of(a), relative_of(b));
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    let mut taken_names: HashMap<String, PathBuf> = HashMap::new();
    let mut taken_targets: HashMap<String, PathBuf> = HashMap::new();
    for (path, meta) in found {
        let relative = relative_of(&path);
        let names = match image_names(&relative, iqn_prefix) {
            Ok(names) => names,
            Err(e) => {
                out.skipped.push(Skipped {
                    path,
                    why: match e {
                        TreeError::Name { why, .. } => why,
                        other => other.to_string(),
                    },
                });
                continue;
            }
        };
        let clash = taken_targets
            .get(&names.target)
            .or_else(|| taken_names.get(&names.name.to_ascii_lowercase()));
        if let Some(first) = clash {
            out.skipped.push(Skipped {
                path,
                why: format!(
                    "its name {} is already taken by {}",
                    names.name,
                    first.display()
                ),
            });
            continue;
        }
        taken_names.insert(names.name.to_ascii_lowercase(), relative.clone());
        taken_targets.insert(names.target.clone(), relative.clone());
        out.images.push(TreeImage {
            path,
            relative,
            names,
            stamp: FileStamp::of(&meta),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "iqn.2009-04.org.example.mirror";

    #[test]
    fn names_follow_the_path_inside_the_root() {
        let names = image_names(Path::new("netbsd-5.0.iso"), PREFIX).unwrap();
        assert_eq!(names.name, "netbsd-5.0");
        assert_eq!(names.target, "iqn.2009-04.org.example.mirror:netbsd-5.0");
        let names = image_names(Path::new("NetBSD/5.0/i386cd.iso"), PREFIX).unwrap();
        assert_eq!(names.name, "NetBSD-5.0-i386cd");
        assert_eq!(names.target, format!("{PREFIX}:netbsd-5.0-i386cd"));
        let names = image_names(Path::new("lab/disk image+x_1.img"), PREFIX).unwrap();
        assert_eq!(names.name, "lab-disk-image+x_1");
        assert_eq!(names.target, format!("{PREFIX}:lab-disk-image-x-1"));
        assert!(image_names(Path::new("../x.iso"), PREFIX).is_err());
        assert!(image_names(Path::new("/abs/x.iso"), PREFIX).is_err());
        assert!(image_names(Path::new("---.iso"), PREFIX).is_err());
        assert!(image_names(Path::new("a.iso"), "not-an-iqn").is_err());
        let long = format!("{}.iso", "a".repeat(200));
        assert!(image_names(Path::new(&long), PREFIX).is_err());
    }

    #[test]
    fn patterns_match_file_names_without_case() {
        let p = ImagePatterns::default();
        assert!(p.matches(OsStr::new("x.iso")));
        assert!(p.matches(OsStr::new("X.ISO")));
        assert!(p.matches(OsStr::new("disk.img")));
        assert!(!p.matches(OsStr::new("x.iso.part")));
        assert!(!p.matches(OsStr::new("x.manifest")));
        let p = ImagePatterns::new(&["*.raw", "cd-??.bin"]).unwrap();
        assert!(p.matches(OsStr::new("a.raw")));
        assert!(p.matches(OsStr::new("cd-01.bin")));
        assert!(!p.matches(OsStr::new("cd-1.bin")));
        assert!(ImagePatterns::new(&["a/*.iso"]).is_err());
        assert!(ImagePatterns::new(&["[x"]).is_err());
        assert!(ImagePatterns::new::<&str>(&[]).is_err());
    }

    #[test]
    fn a_scan_finds_images_skips_hidden_files_and_settles_clashes_by_path_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join(".partial")).unwrap();
        for file in [
            "top.iso",
            "a/b/deep.img",
            "a/notes.txt",
            ".hidden.iso",
            ".partial/x.iso",
            "a-b-deep.img",
            "TOP.iso",
        ] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        std::os::unix::fs::symlink(root.join("top.iso"), root.join("link.iso")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("loop")).unwrap();
        let scan = scan(root, &ImagePatterns::default(), PREFIX).unwrap();
        let found: Vec<(&str, &str)> = scan
            .images
            .iter()
            .map(|i| (i.relative.to_str().unwrap(), i.names.name.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("TOP.iso", "TOP"),
                ("a-b-deep.img", "a-b-deep"),
                ("link.iso", "link"),
            ]
        );
        let skipped: Vec<&str> = scan
            .skipped
            .iter()
            .map(|s| s.path.strip_prefix(root).unwrap().to_str().unwrap())
            .collect();
        assert_eq!(skipped, ["a/b/deep.img", "top.iso"], "{:?}", scan.skipped);
        assert!(
            scan.skipped[0].why.contains("a-b-deep.img"),
            "{:?}",
            scan.skipped
        );
        let link = &scan.images[2];
        let top = std::fs::metadata(root.join("top.iso")).unwrap();
        assert_eq!(
            link.stamp,
            FileStamp::of(&top),
            "a link is the file it names"
        );
        assert!(super::scan(&root.join("missing"), &ImagePatterns::default(), PREFIX).is_err());
        assert!(super::scan(&root.join("top.iso"), &ImagePatterns::default(), PREFIX).is_err());
    }

    #[test]
    fn stamps_tell_a_rename_over_from_an_edit_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.img");
        std::fs::write(&path, b"one").unwrap();
        let first = FileStamp::of(&std::fs::metadata(&path).unwrap());
        let tmp = dir.path().join(".x.img.new");
        std::fs::write(&tmp, b"two").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let renamed = FileStamp::of(&std::fs::metadata(&path).unwrap());
        assert!(!renamed.same_file(&first));
        std::fs::write(&path, b"three").unwrap();
        let edited = FileStamp::of(&std::fs::metadata(&path).unwrap());
        assert!(edited.same_file(&renamed));
        assert!(!edited.same_version(&renamed));
        assert!(edited.same_version(&edited));
    }
}
