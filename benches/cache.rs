//! Cache and image-core figures, each beside its peer from the same run (nothing is asserted):
//! cold `isomount cat NAME` beside `iscsi-perf` on the same tgtd LUN, warm `cat NAME` (from the
//! cache) beside reading the image file, for several chunk sizes, plus the wire cost of reading
//! one small file (one chunk).
//!
//! `cargo bench --bench cache` (as root: it starts tgtd). `ISOMOUNT_BENCH_MIB` sets the image size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use isomount_harness::{random_file, LunSpec, TargetSpec, Tgtd};

const IQN: &str = "iqn.2026-11.org.isomount.bench:cache";

fn isomount() -> Command {
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/isomount");
    Command::new(exe)
}

fn timed(mut cmd: Command) -> f64 {
    let started = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("run");
    assert!(status.success(), "{cmd:?} failed");
    started.elapsed().as_secs_f64()
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// iscsi-perf's own figure (it reads the LUN sequentially with many requests in flight).
fn iscsi_perf(url: &str) -> String {
    let out = Command::new("iscsi-perf")
        .args(["-m", "32", "-b", "256", "-t", "10", url])
        .output()
        .expect("iscsi-perf");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("/s"))
        .collect();
    lines.last().copied().unwrap_or("no figure").to_string()
}

fn main() {
    // `cargo test --all-targets` runs benches without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mib: u64 = std::env::var("ISOMOUNT_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = mib << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let image = random_file(dir.path(), "bench.img", size, 7);
    let tgtd = Tgtd::start(
        "bench_cache",
        &[TargetSpec::new(IQN, vec![LunSpec::disk(&image)])],
    );
    let url = tgtd.url(IQN, 1);
    println!("image: {mib} MiB on tgtd {}", tgtd.portal());
    println!("iscsi-perf (peer): {}", iscsi_perf(&url));
    let mut direct = isomount();
    direct.args(["cat", &url]);
    println!(
        "isomount cat URL, no cache or verification (peer): {:.0} MB/s",
        mb_s(size, timed(direct))
    );
    let cat_file = || {
        let mut c = Command::new("cat");
        c.arg(&image);
        c
    };
    timed(cat_file());
    let disk = mb_s(size, timed(cat_file()));
    println!("cat IMAGE from disk (peer): {disk:.0} MB/s");
    for chunk in [16u32 << 10, 64 << 10, 256 << 10, 1 << 20] {
        let catalog = dir.path().join(format!("c{chunk}.toml"));
        let cache = dir.path().join(format!("cache{chunk}"));
        let mut publish = isomount();
        publish
            .arg("publish")
            .arg(&image)
            .args([
                "--name",
                "bench",
                "--target",
                IQN,
                "--portal",
                &tgtd.portal(),
            ])
            .args(["--chunk-size", &chunk.to_string(), "-o"])
            .arg(&catalog);
        let publish_secs = timed(publish);
        let cat = || {
            let mut c = isomount();
            c.arg("--catalog")
                .arg(&catalog)
                .arg("--cache-dir")
                .arg(&cache)
                .args(["cat", "bench"]);
            c
        };
        let cold = mb_s(size, timed(cat()));
        let warm = mb_s(size, timed(cat()));
        println!(
            "chunk {:>5} KiB: publish {:>6.0} MB/s, cold cat {cold:>6.0} MB/s, cached cat {warm:>6.0} MB/s ({:.2}x disk), one small file costs {} KiB on the wire",
            chunk >> 10,
            mb_s(size, publish_secs),
            warm / disk,
            chunk >> 10
        );
    }
}
