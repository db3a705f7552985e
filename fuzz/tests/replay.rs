//! Every fuzz target on stable Rust, with no libFuzzer: over its shipped seeds (`seeds/NAME/`),
//! its regression inputs (`regressions/NAME/`) and a fixed number of deterministic mutations
//! of the seeds. A panic is a bug found; the input is saved under `target/replay-failures/`.
//! `REPLAY_MUTANTS=N` runs N mutations per target instead of the default; `UPDATE_SEEDS=1`
//! writes the generated seeds ([`isomount_fuzz::seeds`]) into `seeds/` first.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use isomount_fuzz::mutate::{mutate, Rng};
use isomount_fuzz::{Target, TARGETS};

/// Mutations per target unless `REPLAY_MUTANTS` says otherwise: enough to pass every seed
/// through each kind of mutation many times, few enough that all targets take seconds.
const DEFAULT_MUTANTS: usize = 3000;
/// Mutations applied one on top of another before starting again from a seed.
const MAX_WALK: usize = 8;
/// An input that runs this long is a hang (the slowest seed runs in milliseconds).
const HANG: Duration = Duration::from_secs(60);

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = read
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read a seed"))
        })
        .collect();
    out.sort();
    out
}

/// The `max_len` in `seeds/NAME.options` (libFuzzer's options file format).
fn max_len(name: &str) -> usize {
    let path = fuzz_dir().join("seeds").join(format!("{name}.options"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (every target needs one)", path.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == "max_len")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}: no max_len = N line", path.display()))
}

fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"))
}

fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    let seeds = files(&fuzz_dir().join("seeds").join(name));
    assert!(!seeds.is_empty(), "target {name} ships no seeds");
    seeds
}

/// Runs `inputs` through the target in a thread of its own; panics naming the first input that
/// panicked or hung, saved under `target/replay-failures/`.
fn run_all(name: &str, inputs: impl Iterator<Item = (String, Vec<u8>)> + Send + 'static) {
    let run = target(name).run;
    let (progress, watch) = mpsc::channel::<(String, Vec<u8>)>();
    let (done, finished) = mpsc::channel::<Result<usize, (String, Vec<u8>)>>();
    std::thread::spawn(move || {
        let mut count = 0;
        for (label, input) in inputs {
            let _ = progress.send((label.clone(), input.clone()));
            if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
                let _ = done.send(Err((label, input)));
                return;
            }
            count += 1;
        }
        let _ = done.send(Ok(count));
    });
    let mut current = (String::new(), Vec::new());
    loop {
        match finished.try_recv() {
            Ok(Ok(count)) => {
                assert!(count > 0, "{name}: no input ran");
                return;
            }
            Ok(Err((label, input))) => fail(name, "panicked on", &label, &input),
            Err(_) => {}
        }
        match watch.recv_timeout(HANG) {
            Ok(next) => current = next,
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(result) = finished.try_recv() {
                    match result {
                        Ok(_) => return,
                        Err((label, input)) => fail(name, "panicked on", &label, &input),
                    }
                }
                fail(name, "hung on", &current.0, &current.1);
            }
        }
    }
}

fn fail(name: &str, what: &str, label: &str, input: &[u8]) -> ! {
    let dir = fuzz_dir().join("target").join("replay-failures");
    std::fs::create_dir_all(&dir).expect("create target/replay-failures");
    let path = dir.join(format!("{name}-{}", label.replace('/', "_")));
    std::fs::write(&path, input).expect("save the failing input");
    panic!(
        "target {name} {what} {label}; input saved as {} (reproduce: cargo fuzz run {name} {})",
        path.display(),
        path.display()
    );
}

/// The deterministic mutants of a target's seeds: a random walk of stacked mutations that
/// starts again from a seed every few steps.
fn mutants(name: &str, seeds: Vec<(String, Vec<u8>)>) -> impl Iterator<Item = (String, Vec<u8>)> {
    let count = std::env::var("REPLAY_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MUTANTS);
    let limit = max_len(name);
    let mut rng = Rng::new(name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }));
    let mut current: Vec<u8> = Vec::new();
    let mut steps = MAX_WALK;
    (0..count).map(move |i| {
        if steps >= MAX_WALK || rng.below(3) == 0 {
            current = seeds[i % seeds.len()].1.clone();
            steps = 0;
        }
        let other = &seeds[rng.below(seeds.len())].1;
        current = mutate(&mut rng, &current, other, limit);
        steps += 1;
        (format!("mutant-{i}"), current.clone())
    })
}

fn replay(name: &str) {
    if std::env::var_os("UPDATE_SEEDS").is_some() {
        write_generated_seeds();
    }
    let seeds = seeds(name);
    let regressions = files(&fuzz_dir().join("regressions").join(name));
    let inputs: Vec<(String, Vec<u8>)> = seeds
        .iter()
        .map(|(n, b)| (format!("seed-{n}"), b.clone()))
        .chain(
            regressions
                .into_iter()
                .map(|(n, b)| (format!("regression-{n}"), b)),
        )
        .collect();
    run_all(name, inputs.into_iter().chain(mutants(name, seeds)));
}

fn write_generated_seeds() {
    let sample = std::fs::read(fuzz_dir().join("../fixtures/sample.iso")).expect("sample.iso");
    for seed in isomount_fuzz::seeds::generated(&sample) {
        let dir = fuzz_dir().join("seeds").join(seed.target);
        std::fs::create_dir_all(&dir).expect("create a seed folder");
        std::fs::write(dir.join(&seed.name), &seed.bytes).expect("write a seed");
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*

        /// The targets that have a test here.
        const REPLAYED: &[&str] = &[$(stringify!($name)),*];
    };
}

replay_tests!(
    pdu,
    text,
    catalog,
    manifest,
    cache_index,
    iso9660,
    target_session,
    scsi_response,
    url,
    send_targets,
    cdb,
    susp,
    http_range,
);

#[test]
fn every_target_is_replayed_and_has_a_fuzz_binary() {
    for t in TARGETS {
        assert!(REPLAYED.contains(&t.name), "no replay test for {}", t.name);
        let bin = fuzz_dir()
            .join("fuzz_targets")
            .join(format!("{}.rs", t.name));
        assert!(bin.is_file(), "{} is missing", bin.display());
    }
    assert_eq!(REPLAYED.len(), TARGETS.len());
}

/// Every shipped seed gets past its target's first checks and fits its max_len, and every seed
/// the generators make is shipped.
#[test]
fn seeds_are_shipped_valid_and_within_max_len() {
    if std::env::var_os("UPDATE_SEEDS").is_some() {
        write_generated_seeds();
    }
    for t in TARGETS {
        let limit = max_len(t.name);
        for (file, bytes) in seeds(t.name) {
            assert!(
                bytes.len() <= limit,
                "seeds/{}/{file} is over max_len {limit}",
                t.name
            );
            assert!(
                (t.accepts)(&bytes),
                "seeds/{}/{file} is refused at the door",
                t.name
            );
        }
    }
    let sample = std::fs::read(fuzz_dir().join("../fixtures/sample.iso")).expect("sample.iso");
    for seed in isomount_fuzz::seeds::generated(&sample) {
        let path = fuzz_dir().join("seeds").join(seed.target).join(&seed.name);
        assert!(
            path.is_file(),
            "{} missing: run with UPDATE_SEEDS=1",
            path.display()
        );
    }
}
