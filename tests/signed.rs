//! Signed, expiring catalogs through the binary: `keygen`, `publish --sign`, `--pubkey` and
//! catalog folders' `*.pub`, each refusal with its reason, interoperation with the reference
//! `minisign` tool both ways, and the grace period against an image served by a real tgtd.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use common::*;
use isomount::signature::Claim;

const MIB: u64 = 1 << 20;
const IQN: &str = "iqn.2026-11.org.isomount.test:signed";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", text(&out.stderr));
}

/// Run the reference minisign tool; it must succeed.
fn minisign(args: &[&str]) -> Output {
    minisign_fed(args, b"")
}

/// Run the reference minisign tool with `input` on its stdin (passphrases); it must succeed.
fn minisign_fed(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new("minisign")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("minisign (package minisign) is installed");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, &format!("minisign {args:?}"));
    out
}

/// A publisher's folder (`pub/`: the catalog, its manifests and signature), a key pair made by
/// `isomount keygen`, and a user's cache.
struct Publisher {
    dir: tempfile::TempDir,
    image: PathBuf,
    key: PathBuf,
}

impl Publisher {
    fn new(test: &str, size: u64, seed: u64) -> Publisher {
        let dir = test_dir(test);
        let image = random_file(dir.path(), "image.img", size, seed);
        let key = dir.path().join("keys/publisher.key");
        std::fs::create_dir_all(key.parent().unwrap()).unwrap();
        let out = isomount()
            .arg("keygen")
            .arg("-o")
            .arg(&key)
            .output()
            .unwrap();
        assert_ok(&out, "keygen");
        Publisher { dir, image, key }
    }

    fn pubkey(&self) -> PathBuf {
        self.dir.path().join("keys/publisher.key.pub")
    }

    fn catalog(&self) -> PathBuf {
        self.dir.path().join("pub/mirror.toml")
    }

    fn signature(&self) -> PathBuf {
        self.dir.path().join("pub/mirror.toml.minisig")
    }

    /// `publish IMAGE … -o pub/mirror.toml` with `extra` (e.g. `--sign KEY`).
    fn publish(&self, portal: &str, extra: &[&str]) -> Output {
        let out = isomount()
            .arg("publish")
            .arg(&self.image)
            .args([
                "--name", "img", "--target", IQN, "--lun", "1", "--portal", portal,
            ])
            .arg("-o")
            .arg(self.catalog())
            .args(extra)
            .output()
            .unwrap();
        assert_ok(&out, "publish");
        out
    }

    fn publish_signed(&self, portal: &str) -> Output {
        let key = self.key.to_str().unwrap().to_string();
        self.publish(portal, &["--sign", &key])
    }

    /// Sign the catalog with the reference tool (and this publisher's secret key), claiming
    /// `version` and `expires`.
    fn sign_with_minisign(&self, version: u64, expires: SystemTime) {
        let claim = Claim {
            name: "mirror.toml".into(),
            version,
            expires,
        };
        minisign(&[
            "-S",
            "-s",
            self.key.to_str().unwrap(),
            "-m",
            self.catalog().to_str().unwrap(),
            "-t",
            &claim.to_comment(),
        ]);
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// A user's command with the catalog, this publisher's key trusted, and the user's cache.
    fn run(&self, args: &[&str]) -> Output {
        isomount()
            .arg("--catalog")
            .arg(self.catalog())
            .arg("--pubkey")
            .arg(self.pubkey())
            .arg("--cache-dir")
            .arg(self.cache_dir())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `list`: whether it succeeded, whether `img` is listed, and the warnings.
    fn listed(&self) -> (bool, bool, String) {
        let out = self.run(&["list"]);
        (
            out.status.success(),
            text(&out.stdout).lines().any(|l| l.starts_with("img ")),
            text(&out.stderr),
        )
    }

    /// The version in the current signature's trusted comment.
    fn version(&self) -> u64 {
        let sig = std::fs::read_to_string(self.signature()).unwrap();
        isomount::signature::previous_version(&sig).expect("a version in the signature")
    }
}

/// `list` leaves the catalog out, says why, naming it, and fails; `cat` fails with the same
/// reason.
fn assert_refused(p: &Publisher, reason: &str) {
    let (succeeded, listed, warnings) = p.listed();
    assert!(!listed, "refused catalog listed anyway ({reason})");
    assert!(
        !succeeded && warnings.contains("isomount: 1 catalog(s) refused"),
        "list succeeded with a refused catalog ({reason}): {warnings}"
    );
    let source = p.catalog().display().to_string();
    assert!(
        warnings
            .lines()
            .any(|l| l.contains(&format!("{source}: refused: ")) && l.contains(reason)),
        "wanted `{source}: refused: …{reason}` in: {warnings}"
    );
    let cat = p.run(&["--offline", "cat", "img"]);
    assert!(!cat.status.success());
    assert!(cat.stdout.is_empty());
    assert!(text(&cat.stderr).contains(reason), "{}", text(&cat.stderr));
}

#[test]
fn a_signed_catalog_is_read_and_the_minisign_tool_verifies_it() {
    let p = Publisher::new("signed_good", 3 * MIB + 512, 21);
    let tgtd = Tgtd::start(
        "signed_good",
        &[TargetSpec::new(IQN, vec![LunSpec::disk(&p.image)])],
    );
    let out = p.publish_signed(&tgtd.portal());
    assert!(
        text(&out.stderr).contains("signed "),
        "{}",
        text(&out.stderr)
    );

    let verified = minisign(&[
        "-V",
        "-p",
        p.pubkey().to_str().unwrap(),
        "-m",
        p.catalog().to_str().unwrap(),
    ]);
    let said = text(&verified.stdout);
    assert!(
        said.contains("Signature and comment signature verified"),
        "{said}"
    );
    assert!(
        said.contains("isomount-catalog name=mirror.toml version="),
        "{said}"
    );

    let cat = p.run(&["cat", "img"]);
    assert_ok(&cat, "cat through a signed catalog");
    assert!(cat.stdout == std::fs::read(&p.image).unwrap());
    assert!(text(&cat.stderr).is_empty(), "{}", text(&cat.stderr));

    // The key in the catalog folder is trusted as --pubkey is, and then an unsigned catalog
    // beside the signed one is refused.
    let folder = p.catalog().parent().unwrap().to_path_buf();
    std::fs::copy(p.pubkey(), folder.join("publisher.pub")).unwrap();
    std::fs::write(
        folder.join("local.toml"),
        format!(
            "[[image]]\nname = \"local\"\ntarget = \"{IQN}\"\nportals = [\"127.0.0.1:9\"]\nsize = 4096\n"
        ),
    )
    .unwrap();
    let list = isomount()
        .arg("--catalog")
        .arg(&folder)
        .arg("--cache-dir")
        .arg(p.cache_dir())
        .arg("list")
        .output()
        .unwrap();
    // The good catalog is listed, the refused one named with its reason, and `list` fails.
    let listing = text(&list.stdout);
    let warnings = text(&list.stderr);
    assert!(
        !list.status.success(),
        "list accepts a refused catalog: {warnings}"
    );
    assert!(listing.lines().any(|l| l.starts_with("img ")), "{listing}");
    assert!(!listing.contains("local"), "{listing}");
    assert!(
        warnings.contains(
            "local.toml: refused: not signed (no local.toml.minisig), but publisher keys are trusted"
        ),
        "{warnings}"
    );
    assert!(
        warnings.lines().any(|l| l.starts_with("isomount: ")
            && l.contains("local.toml: not signed (no local.toml.minisig)")
            && l.ends_with("(refused: its images are not listed)"))
            && warnings.contains("isomount: 1 catalog(s) refused"),
        "{warnings}"
    );
}

#[test]
fn tampered_foreign_unsigned_renamed_and_rolled_back_catalogs_are_refused() {
    let p = Publisher::new("signed_refusals", MIB, 22);
    p.publish_signed("127.0.0.1:9");
    let (succeeded, listed, warnings) = p.listed();
    assert!(succeeded && listed && warnings.is_empty(), "{warnings}");
    let good = std::fs::read(p.catalog()).unwrap();
    let good_sig = std::fs::read(p.signature()).unwrap();
    let restore = || {
        std::fs::write(p.catalog(), &good).unwrap();
        std::fs::write(p.signature(), &good_sig).unwrap();
    };

    // Tampered: one byte of the catalog changed (a portal moved elsewhere).
    let tampered = text(&good).replace("127.0.0.1:9", "127.0.0.2:9");
    std::fs::write(p.catalog(), tampered).unwrap();
    assert_refused(
        &p,
        "does not match: the catalog or its signature was altered",
    );
    restore();

    // Signed by another key.
    let other = p.dir.path().join("keys/other.key");
    assert_ok(
        &isomount()
            .arg("keygen")
            .arg("-o")
            .arg(&other)
            .output()
            .unwrap(),
        "keygen other",
    );
    let other_key = other.to_str().unwrap().to_string();
    p.publish("127.0.0.1:9", &["--sign", &other_key]);
    assert_refused(&p, "which is not trusted (trusted: ");
    restore();

    // Unsigned while a key is trusted.
    std::fs::remove_file(p.signature()).unwrap();
    assert_refused(
        &p,
        "not signed (no mirror.toml.minisig), but publisher keys are trusted",
    );
    restore();

    // Renamed: signed as mirror.toml, found as other.toml.
    let renamed = p.dir.path().join("pub/other.toml");
    std::fs::copy(p.catalog(), &renamed).unwrap();
    std::fs::copy(p.signature(), p.dir.path().join("pub/other.toml.minisig")).unwrap();
    let out = isomount()
        .arg("--catalog")
        .arg(&renamed)
        .arg("--pubkey")
        .arg(p.pubkey())
        .arg("--cache-dir")
        .arg(p.cache_dir())
        .arg("list")
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && text(&out.stderr)
                .contains("other.toml: refused: signed as `mirror.toml`, found as `other.toml`"),
        "{}",
        text(&out.stderr)
    );

    // Rolled back: a newer version was seen, then the old one comes back.
    let old_version = p.version();
    p.publish_signed("127.0.0.1:9");
    let new_version = p.version();
    assert!(new_version > old_version);
    let (succeeded, listed, warnings) = p.listed();
    assert!(
        succeeded && listed,
        "the newer catalog is read (and its version recorded): {warnings}"
    );
    restore();
    assert_refused(
        &p,
        &format!("version {old_version} is older than version {new_version} already seen"),
    );

    // Expired past the grace period.
    p.sign_with_minisign(new_version + 1, SystemTime::now() - 40 * DAY);
    assert_refused(&p, "expired on ");
}

#[test]
fn signatures_made_by_the_minisign_tool_are_accepted() {
    let p = Publisher::new("signed_by_minisign", MIB, 23);
    p.publish("127.0.0.1:9", &[]);
    let dir = p.dir.path().join("minisign");
    std::fs::create_dir_all(&dir).unwrap();
    let (public, secret) = (dir.join("m.pub"), dir.join("m.key"));
    minisign(&[
        "-G",
        "-W",
        "-p",
        public.to_str().unwrap(),
        "-s",
        secret.to_str().unwrap(),
    ]);
    let claim = Claim {
        name: "mirror.toml".into(),
        version: 1,
        expires: SystemTime::now() + 10 * DAY,
    };
    let user = |extra: &[&str]| {
        isomount()
            .arg("--catalog")
            .arg(p.catalog())
            .arg("--pubkey")
            .arg(&public)
            .arg("--cache-dir")
            .arg(p.cache_dir())
            .args(extra)
            .arg("list")
            .output()
            .unwrap()
    };
    // Prehashed (minisign's default) and legacy signatures alike.
    for (legacy, version) in [(false, 1u64), (true, 2)] {
        let comment = Claim {
            version,
            ..claim.clone()
        }
        .to_comment();
        let mut args = vec!["-S", "-s", secret.to_str().unwrap()];
        if legacy {
            args.push("-l");
        }
        let catalog = p.catalog().display().to_string();
        args.extend(["-m", &catalog, "-t", &comment]);
        minisign(&args);
        let out = user(&[]);
        assert_ok(&out, "list");
        assert!(
            text(&out.stdout).lines().any(|l| l.starts_with("img ")),
            "legacy={legacy}: {}",
            text(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    }

    // A key minisign encrypted with a passphrase signs through publish --passphrase-file.
    let (epub, ekey) = (dir.join("e.pub"), dir.join("e.key"));
    minisign_fed(
        &[
            "-G",
            "-p",
            epub.to_str().unwrap(),
            "-s",
            ekey.to_str().unwrap(),
        ],
        b"correct horse\ncorrect horse\n",
    );
    let ekey_arg = ekey.to_str().unwrap().to_string();
    let publish = |extra: &[&str]| {
        isomount()
            .arg("publish")
            .arg(&p.image)
            .args([
                "--name",
                "img",
                "--target",
                IQN,
                "--portal",
                "127.0.0.1:9",
                "-o",
            ])
            .arg(p.catalog())
            .args(["--sign", &ekey_arg])
            .args(extra)
            .env_remove("ISOMOUNT_PASSPHRASE")
            .output()
            .unwrap()
    };
    let refused = publish(&[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("is protected by a passphrase: give --passphrase-file"),
        "{}",
        text(&refused.stderr)
    );
    let pass = dir.join("passphrase");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let pass_arg = pass.to_str().unwrap();
    let exposed = publish(&["--passphrase-file", pass_arg]);
    assert!(
        !exposed.status.success(),
        "a passphrase file others can read"
    );
    assert!(
        text(&exposed.stderr).contains("chmod 600"),
        "{}",
        text(&exposed.stderr)
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert_ok(
        &publish(&["--passphrase-file", pass_arg]),
        "publish --sign with --passphrase-file",
    );
    minisign(&[
        "-V",
        "-p",
        epub.to_str().unwrap(),
        "-m",
        p.catalog().to_str().unwrap(),
    ]);
}

#[test]
fn past_expiry_cached_images_stay_readable_offline_for_the_grace_period() {
    let p = Publisher::new("signed_grace", 2 * MIB + 4096, 24);
    let mut tgtd = Tgtd::start(
        "signed_grace",
        &[TargetSpec::new(IQN, vec![LunSpec::disk(&p.image)])],
    );
    let want = std::fs::read(&p.image).unwrap();
    p.publish_signed(&tgtd.portal());
    assert_ok(
        &p.run(&["fetch", "img"]),
        "fetch while the catalog is fresh",
    );

    // Expired a day ago: the cached image reads, from the cache alone, with a warning.
    let version = p.version();
    p.sign_with_minisign(version + 1, SystemTime::now() - DAY);
    let cat = p.run(&["cat", "img"]);
    assert_ok(&cat, "cat within the grace period");
    assert!(cat.stdout == want);
    let warned = text(&cat.stderr);
    assert!(
        warned.contains("mirror.toml: expired on ")
            && warned.contains("its images are read from the cache alone, until "),
        "{warned}"
    );
    assert!(
        !warned.contains("no portal reachable"),
        "never went online: {warned}"
    );

    // Nothing is fetched for it any more, though the target is up.
    assert_ok(&p.run(&["cache", "evict", "img"]), "evict");
    let miss = p.run(&["cat", "img"]);
    assert!(!miss.status.success(), "an expired catalog fetches nothing");
    assert!(
        text(&miss.stderr).contains("not cached"),
        "{}",
        text(&miss.stderr)
    );
    assert!(miss.stdout.is_empty());

    // Signed afresh, the image is fetched again; then with the target gone and the catalog a
    // day past expiry, what is cached still reads.
    p.publish_signed(&tgtd.portal());
    assert_ok(&p.run(&["fetch", "img"]), "fetch after re-signing");
    tgtd.kill();
    let version = p.version();
    p.sign_with_minisign(version + 1, SystemTime::now() - DAY);
    let offline = p.run(&["--offline", "cat", "img"]);
    assert_ok(&offline, "offline cat within the grace period");
    assert!(offline.stdout == want);

    // Past the grace period, refused.
    p.sign_with_minisign(version + 2, SystemTime::now() - 31 * DAY);
    assert_refused(&p, "expired on ");
}

#[test]
fn keygen_keeps_the_secret_key_private_and_asks_for_a_passphrase_only_when_told() {
    use std::os::unix::fs::PermissionsExt;
    let dir = test_dir("signed_keygen");
    let key = dir.path().join("k");
    let out = isomount()
        .arg("keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert_ok(&out, "keygen");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let said = text(&out.stderr);
    assert!(
        said.contains("not encrypted") && said.contains("key ID "),
        "{said}"
    );
    let secret = std::fs::read_to_string(&key).unwrap();
    let secret_line = secret.lines().nth(1).unwrap();
    assert!(
        !said.contains(secret_line),
        "the secret never reaches output"
    );

    let again = isomount()
        .arg("keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("pass --force"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        secret,
        "not overwritten"
    );

    let locked = dir.path().join("locked");
    let out = isomount()
        .arg("keygen")
        .arg("-o")
        .arg(&locked)
        .env("ISOMOUNT_PASSPHRASE", "from the environment")
        .output()
        .unwrap();
    assert_ok(&out, "keygen with a passphrase");
    assert!(text(&out.stderr).contains("encrypted with the passphrase in $ISOMOUNT_PASSPHRASE"));
    assert!(!text(&out.stderr).contains("from the environment"));
    // minisign opens it with the same passphrase and signs.
    let data = dir.path().join("data");
    std::fs::write(&data, "x").unwrap();
    minisign_fed(
        &[
            "-S",
            "-s",
            locked.to_str().unwrap(),
            "-m",
            data.to_str().unwrap(),
        ],
        b"from the environment\n",
    );
    minisign(&[
        "-V",
        "-p",
        Path::new(&format!("{}.pub", locked.display()))
            .to_str()
            .unwrap(),
        "-m",
        data.to_str().unwrap(),
    ]);
}

#[test]
fn an_https_catalog_keeps_its_signature_beside_the_kept_copy() {
    let p = Publisher::new("signed_https", MIB, 25);
    p.publish_signed("127.0.0.1:9");
    let good = std::fs::read(p.catalog()).unwrap();
    let good_sig = std::fs::read(p.signature()).unwrap();
    let ca = TestCa::generate();
    let mut nginx = Nginx::start_tls("signed_https", &p.dir.path().join("pub"), &ca);
    let url = nginx.url("mirror.toml");
    let user = |extra: &[&str]| {
        isomount()
            .env("ISOMOUNT_CA_FILE", ca.ca_pem())
            .arg("--catalog")
            .arg(&url)
            .arg("--pubkey")
            .arg(p.pubkey())
            .arg("--cache-dir")
            .arg(p.cache_dir())
            .args(extra)
            .arg("list")
            .output()
            .unwrap()
    };
    let listed = |out: &Output| text(&out.stdout).lines().any(|l| l.starts_with("img "));

    let first = user(&[]);
    assert_ok(&first, "list over https");
    assert!(
        listed(&first) && first.stderr.is_empty(),
        "{}",
        text(&first.stderr)
    );
    let kept: Vec<PathBuf> = std::fs::read_dir(p.cache_dir().join("catalogs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let kept_catalog = kept
        .iter()
        .find(|k| k.extension().is_some_and(|x| x == "toml"))
        .expect("a kept copy")
        .clone();
    let kept_sig = PathBuf::from(format!("{}.minisig", kept_catalog.display()));
    assert_eq!(std::fs::read(&kept_catalog).unwrap(), good);
    assert_eq!(
        std::fs::read(&kept_sig).unwrap(),
        good_sig,
        "signature kept beside it"
    );

    // The mirror now serves a tampered catalog: refused, the kept copy is used and stays.
    std::fs::write(
        p.catalog(),
        text(&good).replace("127.0.0.1:9", "127.0.0.2:9"),
    )
    .unwrap();
    let tampered = user(&[]);
    assert_ok(&tampered, "list with a tampered catalog served");
    assert!(listed(&tampered));
    assert!(
        text(&tampered.stderr).contains("what it serves now is refused (the signature by key")
            && text(&tampered.stderr).contains("using the copy kept from before"),
        "{}",
        text(&tampered.stderr)
    );
    assert_eq!(std::fs::read(&kept_catalog).unwrap(), good);
    assert_eq!(std::fs::read(&kept_sig).unwrap(), good_sig);

    // With the mirror gone, and offline, the kept pair is checked and used.
    nginx.kill();
    let offline = user(&["--offline"]);
    assert_ok(&offline, "offline list");
    assert!(
        listed(&offline) && offline.stderr.is_empty(),
        "{}",
        text(&offline.stderr)
    );
    std::fs::write(&kept_sig, "untrusted comment: x\nnot a signature\n").unwrap();
    let damaged = user(&["--offline"]);
    assert!(!listed(&damaged) && !damaged.status.success());
    assert!(
        text(&damaged.stderr).contains("refused: its signature is unreadable"),
        "{}",
        text(&damaged.stderr)
    );
}
