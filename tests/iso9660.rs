//! The ISO 9660 reader against images made by xorriso: Rock Ridge + Joliet, Joliet only, plain
//! level 1, and a multi-extent file over 4 GiB. Every node is compared with the source tree it was
//! made from (names, kinds, contents, symlink targets, and with Rock Ridge modes, owners, mtimes
//! and file link counts); mutated images must give errors, never panics.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isomount::iso9660::{FileReadAt, IsoError, IsoFs, Kind, Naming, ReadAt, ROOT_INO};

/// A ReadAt that counts the bytes asked of it.
struct Counting<R> {
    inner: R,
    bytes: AtomicU64,
}

impl<R: ReadAt> ReadAt for Counting<R> {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.inner.read_at(offset, len)
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
}

struct Mem(Vec<u8>);

impl ReadAt for Mem {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        self.0
            .get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::Error::other("read past the end"))
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

/// Deterministic bytes (xorshift) so that content mismatches are caught.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(path: &Path, data: &[u8], mode: u32, mtime_secs: u64) {
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(path, mtime_secs);
}

fn set_mtime(path: &Path, secs: u64) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

fn mkdir(path: &Path, mode: u32) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with everything Rock Ridge can say: nesting deeper than ECMA-119's 8 levels, long and
/// non-ASCII names, symlinks (relative, absolute, dangling, to a directory), modes, owners, times.
fn posix_tree(root: &Path) {
    mkdir(root, 0o755);
    write(&root.join("empty"), b"", 0o644, 1_000_000_000);
    write(
        &root.join("one sector.bin"),
        &noise(2048, 1),
        0o600,
        1_100_000_000,
    );
    write(
        &root.join("sector plus one"),
        &noise(2049, 2),
        0o640,
        1_200_000_000,
    );
    write(
        &root.join("setuid-tool"),
        &noise(4000, 3),
        0o4755,
        1_300_000_000,
    );
    write(
        &root.join("big.bin"),
        &noise(300_003, 4),
        0o444,
        1_400_000_000,
    );
    let long = format!("{}.txt", "long-name-".repeat(24));
    write(&root.join(long), b"a long name\n", 0o644, 1_500_000_000);
    write(
        &root.join("ünïcödé ☃ name.txt"),
        b"snow\n",
        0o644,
        1_600_000_000,
    );
    write(&root.join("trailing.dot."), b"dot\n", 0o644, 1_600_000_001);
    write(&root.join(".hidden"), b"hidden\n", 0o600, 1_600_000_002);
    let owned = root.join("owned");
    write(&owned, b"owned\n", 0o640, 1_600_000_003);
    std::os::unix::fs::chown(&owned, Some(1234), Some(5678)).unwrap();
    let mut deep = root.join("deep");
    for level in 0..11 {
        deep = deep.join(format!("level{level}"));
    }
    mkdir(&deep, 0o755);
    write(&deep.join("leaf.txt"), b"deep leaf\n", 0o644, 1_700_000_000);
    mkdir(&root.join("sticky"), 0o1777);
    mkdir(&root.join("private"), 0o700);
    write(
        &root.join("private/secret"),
        &noise(10, 5),
        0o600,
        1_700_000_001,
    );
    std::os::unix::fs::symlink("big.bin", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../nowhere/at all", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("deep/level0/./level1", root.join("dir-link")).unwrap();
    for dir in ["deep", "sticky", "private"] {
        set_mtime(&root.join(dir), 1_650_000_000);
    }
}

/// Names Joliet keeps as they are (up to 64 UCS-2 characters), no symlinks.
fn joliet_tree(root: &Path) {
    mkdir(&root.join("Mixed Case Dir/Inner dir"), 0o755);
    write(
        &root.join("Mixed Case Dir/Inner dir/Ünïcödé file.txt"),
        b"uni\n",
        0o644,
        1,
    );
    write(
        &root.join("Mixed Case Dir/data.BIN"),
        &noise(70_000, 6),
        0o644,
        1,
    );
    write(&root.join("lower.txt"), b"lower\n", 0o644, 1);
    write(&root.join("no extension"), &noise(5000, 7), 0o644, 1);
}

/// Names level 1 keeps as they are: 8.3, upper case.
fn level1_tree(root: &Path) {
    mkdir(&root.join("DIR1/DIR2"), 0o755);
    write(&root.join("README.TXT"), b"readme\n", 0o644, 1);
    write(&root.join("NOEXT"), b"no extension\n", 0o644, 1);
    write(&root.join("DIR1/DATA.BIN"), &noise(10_000, 8), 0o644, 1);
    write(&root.join("DIR1/DIR2/DEEP.TXT"), b"deep\n", 0o644, 1);
}

fn xorriso(args: &[&str], src: &Path, out: &Path) {
    let status = Command::new("xorriso")
        .arg("-as")
        .arg("mkisofs")
        .args(args)
        .arg("-quiet")
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .expect("xorriso is installed (scripts/test.sh installs it)");
    assert!(status.success(), "xorriso {args:?} failed");
}

fn open(path: &Path) -> IsoFs {
    IsoFs::open(Arc::new(FileReadAt::open(path).unwrap())).unwrap()
}

fn secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Compares directory `ino` with `dir` recursively; returns the number of nodes compared.
fn compare(fs: &IsoFs, ino: u64, dir: &Path, posix: bool) -> usize {
    let mut expected: BTreeSet<OsString> = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        expected.insert(e.unwrap().file_name());
    }
    let entries = fs.readdir(ino).unwrap();
    let listed: BTreeSet<OsString> = entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(listed, expected, "names in {}", dir.display());
    assert_eq!(
        listed.len(),
        entries.len(),
        "duplicate names in {}",
        dir.display()
    );
    let mut compared = 0;
    for e in entries {
        let path = dir.join(&e.name);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let attr = fs.getattr(e.ino).unwrap();
        let looked_up = fs
            .lookup(ino, &e.name)
            .unwrap()
            .expect("listed name looks up");
        assert_eq!(looked_up.attr, attr, "{}", path.display());
        compared += 1;
        if posix {
            assert_eq!(
                attr.mode,
                meta.mode() & 0o7777,
                "mode of {}",
                path.display()
            );
            assert_eq!(
                (attr.uid, attr.gid),
                (meta.uid(), meta.gid()),
                "{}",
                path.display()
            );
            if !meta.file_type().is_symlink() {
                assert_eq!(
                    secs(attr.mtime),
                    meta.mtime(),
                    "mtime of {}",
                    path.display()
                );
            }
        }
        if meta.is_dir() {
            assert_eq!(attr.kind, Kind::Dir, "{}", path.display());
            compared += compare(fs, e.ino, &path, posix);
        } else if meta.file_type().is_symlink() {
            assert_eq!(attr.kind, Kind::Symlink, "{}", path.display());
            let target = std::fs::read_link(&path).unwrap();
            assert_eq!(fs.readlink(e.ino).unwrap(), target.as_os_str());
            assert_eq!(attr.size, target.as_os_str().len() as u64);
        } else {
            assert_eq!(attr.kind, Kind::File, "{}", path.display());
            if posix {
                assert_eq!(
                    u64::from(attr.nlink),
                    meta.nlink(),
                    "nlink of {}",
                    path.display()
                );
            }
            let data = std::fs::read(&path).unwrap();
            assert_eq!(attr.size, data.len() as u64, "size of {}", path.display());
            let mut read = Vec::new();
            while (read.len() as u64) < attr.size {
                let chunk = fs.read(e.ino, read.len() as u64, 65_536).unwrap();
                assert!(!chunk.is_empty());
                read.extend(chunk);
            }
            assert!(read == data, "contents of {}", path.display());
            assert!(fs.read(e.ino, attr.size, 10).unwrap().is_empty());
            let extent_bytes: u64 = fs.extents(e.ino).unwrap().iter().map(|x| x.1).sum();
            assert_eq!(extent_bytes, attr.size);
        }
    }
    compared
}

#[test]
fn rock_ridge_and_joliet_image_matches_its_source_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    posix_tree(&src);
    let iso = tmp.path().join("rr.iso");
    xorriso(&["-R", "-J", "-joliet-long"], &src, &iso);
    let fs = open(&iso);
    assert_eq!(fs.naming(), Naming::RockRidge);
    let nodes = compare(&fs, ROOT_INO, &src, true);
    assert!(nodes >= 30, "compared {nodes} nodes");
    let root = fs.getattr(ROOT_INO).unwrap();
    // libisofs records 1 link for every directory (Rock Ridge PX), which `find` reads as "unknown".
    assert_eq!((root.kind, root.mode, root.nlink), (Kind::Dir, 0o755, 1));

    let leaf = fs
        .resolve("/dir-link/level2/../level2/level3/level4/level5/level6/level7/level8/level9/level10/leaf.txt")
        .unwrap()
        .expect("path through a symlink resolves");
    assert_eq!(fs.read(leaf.ino, 0, 100).unwrap(), b"deep leaf\n");
    assert!(fs.resolve("/dangling").unwrap().is_none());
    assert!(matches!(
        fs.resolve("/big.bin/x"),
        Err(IsoError::NotADirectory(_))
    ));
}

#[test]
fn joliet_only_image_has_joliet_names() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    joliet_tree(&src);
    let iso = tmp.path().join("joliet.iso");
    xorriso(&["--norock", "-J"], &src, &iso);
    let fs = open(&iso);
    assert_eq!(fs.naming(), Naming::Joliet);
    assert_eq!(compare(&fs, ROOT_INO, &src, false), 6);
    let f = fs.resolve("lower.txt").unwrap().unwrap();
    assert_eq!((f.attr.mode, f.attr.nlink, f.attr.uid), (0o444, 1, 0));
}

#[test]
fn level1_image_has_plain_names() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    level1_tree(&src);
    let iso = tmp.path().join("plain.iso");
    xorriso(&["--norock", "-iso-level", "1"], &src, &iso);
    let fs = open(&iso);
    assert_eq!(fs.naming(), Naming::Plain);
    assert_eq!(compare(&fs, ROOT_INO, &src, false), 6);
    let d = fs.resolve("DIR1").unwrap().unwrap();
    assert_eq!(
        (d.attr.kind, d.attr.mode, d.attr.nlink),
        (Kind::Dir, 0o555, 2)
    );
}

#[test]
fn cold_read_of_one_small_file_touches_a_few_sectors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    posix_tree(&src);
    let iso = tmp.path().join("rr.iso");
    xorriso(&["-R", "-J"], &src, &iso);
    let counting = Arc::new(Counting {
        inner: FileReadAt::open(&iso).unwrap(),
        bytes: AtomicU64::new(0),
    });
    let fs = IsoFs::open(counting.clone()).unwrap();
    let opened = counting.bytes.load(Ordering::Relaxed);
    let path = "deep/level0/level1/level2/level3/level4/level5/level6/level7/level8/level9/level10/leaf.txt";
    let leaf = fs.resolve(path).unwrap().unwrap();
    assert_eq!(fs.read(leaf.ino, 0, 4096).unwrap(), b"deep leaf\n");
    let total = counting.bytes.load(Ordering::Relaxed);
    let image = std::fs::metadata(&iso).unwrap().len();
    eprintln!("open read {opened} bytes; open + 13-level path + read read {total} of {image}");
    // 16 sectors of descriptors in one request, then one small directory per level.
    assert!(opened <= 17 * 2048, "open read {opened} bytes");
    assert!(total <= 48 * 2048, "read {total} bytes");
}

/// A file over 4 GiB becomes several extents (`-iso-level 3`). The source is sparse and the
/// image is written through `cp --sparse=always`, so this costs seconds of CPU, not 4 GiB of disk.
#[test]
fn multi_extent_file_over_4_gib() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let huge = src.join("huge.bin");
    let size: u64 = (4 << 30) + 123_457;
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&huge)
        .unwrap();
    file.set_len(size).unwrap();
    let marks: [(u64, &[u8]); 4] = [
        (0, b"first bytes"),
        ((4 << 30) - 4096, b"just before the 4 GiB extent limit"),
        ((4 << 30) - 7, b"across the extent boundary"),
        (size - 9, b"last byte"),
    ];
    {
        use std::os::unix::fs::FileExt;
        for (at, bytes) in marks {
            file.write_all_at(bytes, at).unwrap();
        }
    }
    write(&src.join("small.txt"), b"small\n", 0o644, 1);
    let iso = tmp.path().join("huge.iso");
    let script = format!(
        "xorriso -as mkisofs -quiet -R -iso-level 3 -o - '{}' | cp --sparse=always /dev/stdin '{}'",
        src.display(),
        iso.display()
    );
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success());
    let fs = open(&iso);
    let node = fs.resolve("huge.bin").unwrap().unwrap();
    assert_eq!(node.attr.size, size);
    let extents = fs.extents(node.ino).unwrap();
    assert!(extents.len() >= 2, "extents {extents:?}");
    assert_eq!(extents.iter().map(|e| e.1).sum::<u64>(), size);
    use std::os::unix::fs::FileExt;
    for (at, bytes) in marks {
        let from = at.saturating_sub(100);
        let got = fs.read(node.ino, from, bytes.len() + 200).unwrap();
        let mut want = vec![0u8; got.len()];
        file.read_exact_at(&mut want, from).unwrap();
        assert!(got == want, "bytes near {at}");
        let inner = (at - from) as usize;
        assert_eq!(&got[inner..inner + bytes.len()], bytes);
    }
    let boundary = extents[0].1;
    let across = fs.read(node.ino, boundary - 1000, 2000).unwrap();
    let mut want = vec![0u8; 2000];
    file.read_exact_at(&mut want, boundary - 1000).unwrap();
    assert_eq!(across, want);
    assert_eq!(fs.read(node.ino, size - 3, 100).unwrap(), b"yte");
    let small = fs.resolve("small.txt").unwrap().unwrap();
    assert_eq!(fs.read(small.ino, 0, 100).unwrap(), b"small\n");
}

/// Random byte mutations of the metadata of a real Rock Ridge + Joliet image: each opened image
/// is walked completely; every outcome is a value or an error, never a panic or a hang.
#[test]
fn mutated_images_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    posix_tree(&src);
    let iso = tmp.path().join("rr.iso");
    xorriso(&["-R", "-J"], &src, &iso);
    let pristine = std::fs::read(&iso).unwrap();
    let metadata_end = 40 * 2048;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut opened, mut failed) = (0, 0);
    for _ in 0..400 {
        let mut img = pristine.clone();
        for _ in 0..1 + next() % 6 {
            let at = (16 * 2048 + next() % (metadata_end - 16 * 2048)) as usize;
            img[at] = match next() % 4 {
                0 => 0,
                1 => 0xFF,
                _ => next() as u8,
            };
        }
        let Ok(fs) = IsoFs::open(Arc::new(Mem(img))) else {
            failed += 1;
            continue;
        };
        opened += 1;
        let mut todo = vec![ROOT_INO];
        let mut budget = 10_000;
        while let Some(dir) = todo.pop() {
            let Ok(entries) = fs.readdir(dir) else {
                failed += 1;
                continue;
            };
            for e in entries {
                budget -= 1;
                assert!(budget > 0, "walk of a mutated image does not end");
                let _ = fs.getattr(e.ino);
                match e.kind {
                    Kind::Dir => todo.push(e.ino),
                    Kind::Symlink => drop(fs.readlink(e.ino)),
                    Kind::File => drop(fs.read(e.ino, 0, 1 << 20)),
                }
            }
        }
    }
    eprintln!("{opened} mutated images opened, {failed} errors seen");
    assert!(opened > 0);
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `isomount fetch NAME --files PATH…` against an ISO served by tgtd as a CD: only the named
/// files (and the directories on their paths) end up in the cache, which `--offline` proves.
#[test]
fn fetch_files_prefetches_only_those_files() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    mkdir(&src.join("dir/sub"), 0o755);
    write(&src.join("big1.bin"), &noise(6 << 20, 11), 0o644, 1);
    write(&src.join("big2.bin"), &noise(6 << 20, 12), 0o644, 1);
    write(&src.join("dir/small.txt"), b"small\n", 0o644, 1);
    write(
        &src.join("dir/sub/other.txt"),
        &noise(100_000, 13),
        0o644,
        1,
    );
    std::os::unix::fs::symlink("dir/sub", src.join("shortcut")).unwrap();
    let iso = tmp.path().join("files.iso");
    xorriso(&["-R", "-J"], &src, &iso);
    const IQN: &str = "iqn.2026-11.org.isomount.test:iso-files";
    let tgtd = common::Tgtd::start(
        "fetch_files",
        &[common::TargetSpec::new(
            IQN,
            vec![common::LunSpec::cd(&iso)],
        )],
    );
    let proxy = common::FaultProxy::start(&tgtd.portal(), common::Faults::default());
    let catalog = tmp.path().join("catalog.toml");
    for (name, portal) in [("files", tgtd.portal()), ("counted", proxy.portal())] {
        let out = common::isomount()
            .arg("publish")
            .arg(&iso)
            .args(["--name", name, "--target", IQN, "--lun", "1", "--portal"])
            .arg(portal)
            .arg("-o")
            .arg(&catalog)
            .output()
            .unwrap();
        assert!(out.status.success(), "publish: {}", text(&out.stderr));
    }
    let run = |args: &[&str]| {
        common::isomount()
            .arg("--catalog")
            .arg(&catalog)
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stderr)
    };
    let fails = |args: &[&str]| {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        text(&out.stderr)
    };

    let said = ok(&[
        "fetch",
        "files",
        "--files",
        "/dir/small.txt",
        "shortcut/other.txt",
    ]);
    assert!(said.contains("2 files"), "{said}");
    ok(&[
        "--offline",
        "fetch",
        "files",
        "--files",
        "dir/small.txt",
        "/dir/sub",
    ]);
    let err = fails(&["--offline", "fetch", "files", "--files", "big1.bin"]);
    assert!(err.contains("not cached"), "{err}");
    ok(&["fetch", "files", "--files", "big1.bin"]);
    let again = ok(&["fetch", "files", "--files", "/big1.bin"]);
    assert!(again.contains("fetched 0 B"), "{again}");
    ok(&["--offline", "fetch", "files", "--files", "big1.bin", "dir"]);
    fails(&["--offline", "fetch", "files", "--files", "big2.bin"]);
    fails(&["--offline", "fetch", "files"]);
    let missing = fails(&["fetch", "files", "--files", "/dir/nope.txt"]);
    assert!(missing.contains("no /dir/nope.txt"), "{missing}");

    // A cold cache: one small file costs the descriptors, two directories and one chunk.
    let out = common::isomount()
        .arg("--catalog")
        .arg(&catalog)
        .arg("--cache-dir")
        .arg(tmp.path().join("cold-cache"))
        .args(["fetch", "counted", "--files", "/dir/small.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let wire = proxy.bytes_to_client();
    eprintln!("cold fetch of one small file: {wire} bytes from the target");
    assert!(wire <= 512 << 10, "{wire} bytes on the wire");
}
