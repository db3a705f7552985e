//! Publishing: `publish --root` over a tree of images, through the binary, checked against a
//! real tgtd serving one of them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use common::*;

const PORTAL: &str = "127.0.0.1:3260";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", text(&out.stderr));
}

/// Set a file's mtime `ago` in the past, so that its timestamp is trusted (publish hashes a file
/// modified within the last seconds again on the next run).
fn age(path: &Path, ago: Duration) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

/// A tree of images under `root`: `count` small images in five folders, all an hour old.
fn make_tree(root: &Path, count: u64) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let rel = PathBuf::from(format!("set{}/disk-{i:02}.img", i % 5));
            std::fs::create_dir_all(root.join(rel.parent().unwrap())).unwrap();
            let size = (64 << 10) * (1 + i % 4) + 512 * (i % 3);
            random_file(root, rel.to_str().unwrap(), size, 1000 + i);
            age(&root.join(&rel), Duration::from_secs(3600));
            rel
        })
        .collect()
}

fn publish_root(root: &Path, catalog: &Path, extra: &[&str]) -> Output {
    let out = isomount()
        .arg("publish")
        .arg("--root")
        .arg(root)
        .args(["--portal", PORTAL, "--lun", "1", "-o"])
        .arg(catalog)
        .args(extra)
        .output()
        .unwrap();
    assert_ok(&out, "publish --root");
    out
}

/// Lines of `stderr` starting with `word `.
fn lines_starting<'a>(stderr: &'a str, word: &str) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{word} ")))
        .collect()
}

#[test]
fn publish_root_hashes_only_new_or_changed_images() {
    let dir = test_dir("publish_root");
    let root = dir.path().join("tree");
    let images = make_tree(&root, 50);
    std::fs::write(root.join("README.txt"), "not an image").unwrap();
    std::fs::write(
        root.join("set0/.disk-00.img.partial"),
        "rsync's temporary file",
    )
    .unwrap();
    std::fs::write(root.join("empty.iso"), "").unwrap();
    std::fs::create_dir_all(root.join("set1/disk")).unwrap();
    random_file(&root, "set1/disk/01.img", 4096, 7);
    let catalog = dir.path().join("www/mirror.toml");

    let first = text(&publish_root(&root, &catalog, &[]).stderr);
    assert_eq!(lines_starting(&first, "hashed").len(), 50, "{first}");
    assert!(
        first.contains("skipped empty.iso: empty"),
        "an empty image is passed over: {first}"
    );
    assert!(
        first.contains(
            "skipped set1/disk/01.img: its name set1-disk-01 is already taken by set1/disk-01.img"
        ),
        "a clash is refused, naming both paths: {first}"
    );
    let catalog_text = std::fs::read_to_string(&catalog).unwrap();
    assert_eq!(catalog_text.matches("[[image]]").count(), 50);
    assert!(
        catalog_text.contains("name = \"set3-disk-08\"")
            && catalog_text.contains("target = \"iqn.2026-01.org.isomount.serve:set3-disk-08\"")
            && catalog_text.contains("manifest = \"set3-disk-08.manifest\""),
        "{catalog_text}"
    );
    let names: Vec<&str> = catalog_text
        .lines()
        .filter_map(|l| l.strip_prefix("name = "))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries in a stable (path) order");
    let listing = isomount()
        .arg("--catalog")
        .arg(&catalog)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("list")
        .output()
        .unwrap();
    assert_ok(&listing, "list");
    assert_eq!(text(&listing.stdout).lines().count(), 51);

    // Nothing changed: nothing is hashed, everything is named as skipped, the same bytes.
    let second = text(&publish_root(&root, &catalog, &[]).stderr);
    assert!(lines_starting(&second, "hashed").is_empty(), "{second}");
    assert_eq!(
        second.matches(": unchanged since the last run").count(),
        50,
        "{second}"
    );
    for rel in &images {
        assert!(
            second.contains(&format!("skipped {}: unchanged", rel.display())),
            "{second}"
        );
    }
    assert_eq!(std::fs::read_to_string(&catalog).unwrap(), catalog_text);

    // One image changes in place (same size): only it is hashed, only its pin changes.
    let changed = &images[17];
    let changed_path = root.join(changed);
    random_file(
        &root,
        changed.to_str().unwrap(),
        std::fs::metadata(&changed_path).unwrap().len(),
        9,
    );
    age(&changed_path, Duration::from_secs(1800));
    let third = text(&publish_root(&root, &catalog, &[]).stderr);
    assert_eq!(
        lines_starting(&third, "hashed"),
        [format!(
            "hashed {} as set2-disk-17 (changed)",
            changed.display()
        )],
        "{third}"
    );
    let after = std::fs::read_to_string(&catalog).unwrap();
    let differing: Vec<(&str, &str)> = catalog_text
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(differing.len(), 1, "{differing:?}");
    assert!(differing[0].0.starts_with("manifest_sha256 = "));

    // The changed image reads back byte-exact through its new manifest, from a real target.
    let iqn = "iqn.2026-01.org.isomount.serve:set2-disk-17";
    let tgtd = Tgtd::start(
        "publish_root",
        &[TargetSpec::new(iqn, vec![LunSpec::disk(&changed_path)])],
    );
    let served = dir.path().join("served.toml");
    std::fs::write(
        &served,
        after.replace(PORTAL, &tgtd.portal()).replace(
            "manifest = \"",
            &format!("manifest = \"{}/", catalog.parent().unwrap().display()),
        ),
    )
    .unwrap();
    let cat = isomount()
        .arg("--catalog")
        .arg(&served)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["cat", "set2-disk-17"])
        .output()
        .unwrap();
    assert_ok(&cat, "cat the changed image");
    assert!(cat.stdout == std::fs::read(&changed_path).unwrap());

    // --rehash hashes everything again, to the same catalog.
    let forced = text(&publish_root(&root, &catalog, &["--rehash"]).stderr);
    assert_eq!(lines_starting(&forced, "hashed").len(), 50, "{forced}");
    assert_eq!(std::fs::read_to_string(&catalog).unwrap(), after);

    // A removed image leaves the catalog and its manifest is removed.
    std::fs::remove_file(root.join(&images[3])).unwrap();
    let fourth = text(&publish_root(&root, &catalog, &[]).stderr);
    assert!(lines_starting(&fourth, "hashed").is_empty(), "{fourth}");
    assert!(
        fourth.contains("set3-disk-03.manifest (set3/disk-03.img is gone)"),
        "{fourth}"
    );
    assert!(!catalog.with_file_name("set3-disk-03.manifest").exists());
    let last = std::fs::read_to_string(&catalog).unwrap();
    assert_eq!(last.matches("[[image]]").count(), 49);
    assert!(!last.contains("set3-disk-03"));
}

/// `publish --root --hash blake3`: version 2 manifests, still pinned by their sha256; a run with
/// another algorithm hashes everything again; a state file from before `--hash` (no `hash` key)
/// stands for sha256.
#[test]
fn publish_root_hash_algorithm_is_recorded_and_a_change_rehashes() {
    let dir = test_dir("publish_root_hash");
    let root = dir.path().join("tree");
    let images = make_tree(&root, 3);
    let catalog = dir.path().join("www/mirror.toml");
    let manifest_of = |rel: &Path| {
        let name = rel.to_str().unwrap().replace('/', "-").replace(".img", "");
        catalog.with_file_name(format!("{name}.manifest"))
    };

    let first = text(&publish_root(&root, &catalog, &["--hash", "blake3"]).stderr);
    assert_eq!(lines_starting(&first, "hashed").len(), 3, "{first}");
    let catalog_text = std::fs::read_to_string(&catalog).unwrap();
    for rel in &images {
        let manifest = std::fs::read(manifest_of(rel)).unwrap();
        assert_eq!(
            &manifest[8..12],
            &[0, 2, 0, 2],
            "{}: version 2, BLAKE3",
            rel.display()
        );
        let pin = isomount::manifest::sha256(&manifest);
        assert!(
            catalog_text.contains(&hex(&pin)),
            "pinned by sha256: {catalog_text}"
        );
    }
    let again = text(&publish_root(&root, &catalog, &["--hash", "blake3"]).stderr);
    assert!(lines_starting(&again, "hashed").is_empty(), "{again}");

    let sha = text(&publish_root(&root, &catalog, &[]).stderr);
    assert_eq!(
        sha.matches("(the hash algorithm changed)").count(),
        3,
        "{sha}"
    );
    for rel in &images {
        assert_eq!(
            &std::fs::read(manifest_of(rel)).unwrap()[8..12],
            &[0, 1, 0, 0]
        );
    }
    let state = catalog.with_file_name("mirror.toml.publish-state");
    let recorded = std::fs::read_to_string(&state).unwrap();
    assert_eq!(
        recorded.matches("hash = \"sha256\"").count(),
        3,
        "{recorded}"
    );
    let older: String = recorded
        .lines()
        .filter(|l| !l.starts_with("hash = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&state, older).unwrap();
    let old_state = text(&publish_root(&root, &catalog, &[]).stderr);
    assert!(
        lines_starting(&old_state, "hashed").is_empty(),
        "{old_state}"
    );

    let out = isomount()
        .arg("publish")
        .arg("--root")
        .arg(&root)
        .args(["--portal", PORTAL, "--hash", "md5", "-o"])
        .arg(&catalog)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("`md5`"), "{}", text(&out.stderr));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn publish_root_refuses_bad_arguments_clearly() {
    let dir = test_dir("publish_root_args");
    let root = dir.path().join("tree");
    make_tree(&root, 2);
    let catalog = dir.path().join("c.toml");
    let run = |args: &[&str]| isomount().arg("publish").args(args).output().unwrap();
    let root_arg = root.to_str().unwrap();
    let out = run(&["--root", root_arg, "--portal", PORTAL]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--output"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "--root",
        root_arg,
        "--portal",
        "host:99999",
        "-o",
        catalog.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--portal `host:99999`: not HOST[:PORT]"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "--root",
        dir.path().join("missing").to_str().unwrap(),
        "--portal",
        PORTAL,
        "-o",
        catalog.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("missing: No such file or directory"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "x.img", "--root", root_arg, "--portal", PORTAL, "-o", "c.toml",
    ]);
    assert!(
        !out.status.success(),
        "IMAGE and --root together are refused"
    );
    assert!(!catalog.exists());
}

#[test]
fn publish_root_signs_the_tree_catalog_and_renews_only_the_signature() {
    let dir = test_dir("publish_root_sign");
    let root = dir.path().join("tree");
    make_tree(&root, 3);
    let key = dir.path().join("publisher.key");
    assert!(isomount()
        .arg("keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap()
        .status
        .success());
    let catalog = dir.path().join("www/mirror.toml");
    let sign = ["--sign", key.to_str().unwrap(), "--expires", "7d"];
    let first = text(&publish_root(&root, &catalog, &sign).stderr);
    assert!(first.contains("signed "), "{first}");
    let signature = dir.path().join("www/mirror.toml.minisig");
    let version = |sig: &Path| {
        isomount::signature::previous_version(&std::fs::read_to_string(sig).unwrap()).unwrap()
    };
    let (bytes, modified) = (
        std::fs::read(&catalog).unwrap(),
        std::fs::metadata(&catalog).unwrap().modified().unwrap(),
    );
    let v1 = version(&signature);
    publish_root(&root, &catalog, &sign);
    assert_eq!(std::fs::read(&catalog).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&catalog).unwrap().modified().unwrap(),
        modified,
        "an unchanged catalog is not rewritten, only signed again"
    );
    assert!(version(&signature) > v1);
    let verified = std::process::Command::new("minisign")
        .arg("-Vm")
        .arg(&catalog)
        .arg("-p")
        .arg(dir.path().join("publisher.key.pub"))
        .output()
        .unwrap();
    assert_ok(&verified, "minisign -V");
    let list = isomount()
        .arg("--catalog")
        .arg(&catalog)
        .arg("--pubkey")
        .arg(dir.path().join("publisher.key.pub"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("list")
        .output()
        .unwrap();
    assert_ok(&list, "list");
    assert_eq!(
        text(&list.stdout).lines().count(),
        4,
        "{}",
        text(&list.stderr)
    );

    // Published again unsigned after a change, the old signature is said not to match.
    random_file(&root, "new.iso", 4096, 99);
    let unsigned = text(&publish_root(&root, &catalog, &[]).stderr);
    assert!(
        unsigned.contains("mirror.toml.minisig no longer matches"),
        "{unsigned}"
    );
}
