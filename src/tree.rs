//! Image trees: which files under a root directory are images, and the catalog name and target
//! IQN each one gets from its path. `publish --root` and `serve --root` both use this module, so a
//! published catalog names exactly the targets a served tree offers.
//!
//! The derivation, for an image at `REL` (its path relative to the root, `/`-separated):
//! - **Images** are regular files (symlinks followed) whose extension is one of the configured
//!   ones ([`DEFAULT_EXTENSIONS`], compared without regard to case). Entries whose name starts
//!   with `.` (hidden files, and the temporary files of rsync, `cp --backup`, editors) are
//!   passed over, and so is everything under a hidden directory.
//! - **Name** ([`name_for`]): `REL` without the image extension, its directories joined with `-`,
//!   every character outside letters, digits, `.`, `_`, `+`, `-` replaced by `-`, leading `.` and
//!   `-` dropped. `netbsd/5.0/i386.iso` → `netbsd-5.0-i386`; `Fedora 40.iso` → `Fedora-40`.
//! - **Target IQN** ([`target_for`]): `PREFIX:` and the name in the iSCSI name alphabet (RFC 7143
//!   §4.2.7: lower case, `_` and `+` become `-`), through [`config::target_name_for`].
//!   `netbsd/5.0/i386.iso` → `iqn.2026-01.org.isomount.serve:netbsd-5.0-i386`.
//! - **Clashes**: two paths can give one name (`a/b.iso` and `a-b.iso`) or one IQN (`A.iso` and
//!   `a.iso`). [`resolve`] takes the paths in path order (component by component, each in byte
//!   order, as `Path`'s `Ord`: `a/b.iso` before `a-b.iso`); the first keeps the name and each later
//!   one is refused with a reason naming the path that holds it. A path's name never depends on
//!   anything but its own path, except that it can be refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::target::config;

/// Extensions of image files unless configured otherwise.
pub const DEFAULT_EXTENSIONS: &[&str] = &["iso", "img"];

/// Longest catalog name (as `catalog.rs` accepts).
const MAX_NAME: usize = 128;

/// An image found under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeImage {
    /// Path relative to the root.
    pub rel: PathBuf,
    /// The catalog name users type.
    pub name: String,
    /// The target IQN it is served as.
    pub target: String,
}

/// An image file that gets no name, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Path relative to the root.
    pub rel: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rel.display(), self.reason)
    }
}

/// The images of a tree, in path order, and the image files that were refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub images: Vec<TreeImage>,
    pub refused: Vec<Refused>,
}

/// Why a tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a directory")]
    NotDirectory(String),
}

/// Whether `rel` names an image file by its extension (the path is not looked at on disk).
pub fn is_image(rel: &Path, extensions: &[impl AsRef<str>]) -> bool {
    let hidden = rel.components().any(|c| {
        c.as_os_str()
            .to_str()
            .is_none_or(|s| s.starts_with('.') && s != "." && s != "..")
    });
    !hidden
        && rel.extension().and_then(|x| x.to_str()).is_some_and(|x| {
            extensions
                .iter()
                .any(|e| e.as_ref().trim_start_matches('.').eq_ignore_ascii_case(x))
        })
}

/// The catalog name of the image at `rel` (module docs: "Name"), or why it gets none.
pub fn name_for(rel: &Path) -> Result<String, String> {
    let without_ext = rel.with_extension("");
    let mut name = String::new();
    for part in without_ext.components() {
        let std::path::Component::Normal(part) = part else {
            return Err("not a plain relative path".into());
        };
        if !name.is_empty() {
            name.push('-');
        }
        name.extend(part.to_string_lossy().chars().map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') {
                c
            } else {
                '-'
            }
        }));
    }
    let name = name.trim_start_matches(['.', '-']);
    if name.is_empty() {
        return Err("no letters or digits to make a name from".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "its name would be longer than {MAX_NAME} characters"
        ));
    }
    Ok(name.to_string())
}

/// The target IQN of the image named `name` (from [`name_for`]) under `prefix`.
pub fn target_for(prefix: &str, name: &str) -> Result<String, String> {
    config::target_name_for(prefix, name).map_err(|e| e.to_string())
}

/// Names and IQNs for `paths` (relative to the root), each derived from its
/// own path, sorted in path order, later paths refused where they clash with an earlier one.
pub fn resolve(prefix: &str, mut paths: Vec<PathBuf>) -> Tree {
    paths.sort();
    paths.dedup();
    let mut tree = Tree::default();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut targets: HashMap<String, usize> = HashMap::new();
    for rel in paths {
        let derived = name_for(&rel).and_then(|name| Ok((target_for(prefix, &name)?, name)));
        let (target, name) = match derived {
            Ok(found) => found,
            Err(reason) => {
                tree.refused.push(Refused { rel, reason });
                continue;
            }
        };
        let holder = names
            .get(&name)
            .map(|&i| ("name", &name, i))
            .or_else(|| targets.get(&target).map(|&i| ("target", &target, i)));
        if let Some((what, value, i)) = holder {
            let reason = format!(
                "its {what} `{value}` is already taken by {} (rename one of them)",
                tree.images[i].rel.display()
            );
            tree.refused.push(Refused { rel, reason });
            continue;
        }
        names.insert(name.clone(), tree.images.len());
        targets.insert(target.clone(), tree.images.len());
        tree.images.push(TreeImage { rel, name, target });
    }
    tree
}

/// Every image under `root` (module docs), resolved to names and IQNs under `prefix`.
pub fn scan(root: &Path, prefix: &str, extensions: &[impl AsRef<str>]) -> Result<Tree, TreeError> {
    if !root.is_dir() {
        return Err(TreeError::NotDirectory(root.display().to_string()));
    }
    let mut paths = Vec::new();
    let walk = walkdir::WalkDir::new(root)
        .follow_links(true)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0 || !e.file_name().to_str().is_none_or(|s| s.starts_with('.'))
        });
    for entry in walk {
        let entry = entry.map_err(|e| TreeError::Io {
            path: e.path().unwrap_or(root).display().to_string(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("symlink loop")),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap_or(entry.path())
            .to_path_buf();
        if is_image(&rel, extensions) {
            paths.push(rel);
        }
    }
    Ok(resolve(prefix, paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = config::DEFAULT_IQN_PREFIX;

    #[test]
    fn names_and_targets_come_from_the_path() {
        let cases = [
            ("netbsd-5.0.iso", "netbsd-5.0"),
            ("netbsd/5.0/i386.iso", "netbsd-5.0-i386"),
            ("Fedora 40 (x86_64).ISO", "Fedora-40--x86_64-"),
            ("c++/tools_1.img", "c++-tools_1"),
            ("-odd.iso", "odd"),
            ("dir/ünï.iso", "dir--n-"),
        ];
        for (path, name) in cases {
            assert_eq!(name_for(Path::new(path)).as_deref(), Ok(name), "{path}");
        }
        assert_eq!(
            target_for(PREFIX, "netbsd-5.0-i386").unwrap(),
            "iqn.2026-01.org.isomount.serve:netbsd-5.0-i386"
        );
        assert_eq!(
            target_for("iqn.2009-04.org.example", "Fedora-40_x86+64").unwrap(),
            "iqn.2009-04.org.example:fedora-40-x86-64"
        );
        assert!(name_for(Path::new("---.iso")).is_err());
        assert!(name_for(Path::new(&format!("{}.iso", "a".repeat(129)))).is_err());
    }

    #[test]
    fn images_are_told_by_extension_and_hidden_ones_passed_over() {
        let exts = DEFAULT_EXTENSIONS;
        assert!(is_image(Path::new("a/b.iso"), exts));
        assert!(is_image(Path::new("b.IMG"), exts));
        assert!(!is_image(Path::new("b.iso.part"), exts));
        assert!(!is_image(Path::new(".b.iso.Xy12"), exts));
        assert!(!is_image(Path::new(".b.iso"), exts));
        assert!(!is_image(Path::new(".cache/b.iso"), exts));
        assert!(!is_image(Path::new("README"), exts));
        assert!(is_image(Path::new("disk.raw"), &["raw"]));
    }

    #[test]
    fn clashes_are_refused_in_byte_order_and_other_names_do_not_move() {
        let paths = ["a/b.iso", "a-b.iso", "c.iso", "a-b.img"]
            .map(PathBuf::from)
            .to_vec();
        let tree = resolve(PREFIX, paths);
        let names: Vec<(&str, &str)> = tree
            .images
            .iter()
            .map(|i| (i.rel.to_str().unwrap(), i.name.as_str()))
            .collect();
        assert_eq!(names, [("a/b.iso", "a-b"), ("c.iso", "c")]);
        let refused: Vec<String> = tree.refused.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            refused,
            [
                "a-b.img: its name `a-b` is already taken by a/b.iso (rename one of them)",
                "a-b.iso: its name `a-b` is already taken by a/b.iso (rename one of them)",
            ]
        );
        let alone = resolve(PREFIX, vec![PathBuf::from("c.iso")]);
        assert_eq!(alone.images[0], tree.images[1]);
    }

    #[test]
    fn clashing_targets_are_refused_too() {
        let tree = resolve(PREFIX, ["X.iso", "x.img"].map(PathBuf::from).to_vec());
        assert_eq!(tree.images.len(), 1);
        assert_eq!(
            tree.refused[0].to_string(),
            "x.img: its target `iqn.2026-01.org.isomount.serve:x` is already taken by X.iso (rename one of them)"
        );
    }

    #[test]
    fn scan_walks_the_tree_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "b.iso",
            "a/z.img",
            "a/y.iso",
            ".hidden/h.iso",
            "a/.tmp.iso",
            "notes.txt",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x").unwrap();
        }
        std::fs::create_dir_all(root.join("dir.iso")).unwrap();
        std::os::unix::fs::symlink(root.join("b.iso"), root.join("link.iso")).unwrap();
        let tree = scan(root, PREFIX, DEFAULT_EXTENSIONS).unwrap();
        let rels: Vec<&str> = tree
            .images
            .iter()
            .map(|i| i.rel.to_str().unwrap())
            .collect();
        assert_eq!(rels, ["a/y.iso", "a/z.img", "b.iso", "link.iso"]);
        assert!(tree.refused.is_empty());
        assert!(matches!(
            scan(&root.join("b.iso"), PREFIX, DEFAULT_EXTENSIONS),
            Err(TreeError::NotDirectory(_))
        ));
    }
}
