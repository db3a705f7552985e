//! `harness-target tgtd|istgt [--cd] IQN IMAGE…`
//!
//! Starts a harness target for scripts (`scripts/bench.sh`): one anonymous target `IQN` whose
//! LUNs are the IMAGE files (disk LUNs, or CD LUNs with `--cd`), prints the portal
//! (`127.0.0.1:PORT`) and the first LUN's number as `PORTAL LUN` on stdout, then serves until
//! its stdin reaches end of file, and stops the target (it also dies if this process is killed).

use std::io::{Read, Write};

use isomount_harness::{IscsiTarget, Istgt, LunSpec, TargetSpec, Tgtd};

const USAGE: &str = "usage: harness-target tgtd|istgt [--cd] IQN IMAGE...";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((kind, rest)) = args.split_first() else {
        fail("missing target kind");
    };
    let cd = rest.first().is_some_and(|a| a == "--cd");
    let rest = if cd { &rest[1..] } else { rest };
    let Some((iqn, images)) = rest.split_first() else {
        fail("missing IQN");
    };
    if images.is_empty() {
        fail("missing IMAGE");
    }
    let luns = images
        .iter()
        .map(|p| if cd { LunSpec::cd(p) } else { LunSpec::disk(p) })
        .collect();
    let spec = [TargetSpec::new(iqn.clone(), luns)];
    let target: Box<dyn IscsiTarget> = match kind.as_str() {
        "tgtd" => Box::new(Tgtd::start("harness-target", &spec)),
        "istgt" => Box::new(Istgt::start("harness-target", &spec)),
        other => fail(&format!("unknown target kind {other}")),
    };
    println!("{} {}", target.portal(), target.lun(0));
    let _ = std::io::stdout().flush();
    let mut sink = [0u8; 4096];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
}

fn fail(msg: &str) -> ! {
    eprintln!("harness-target: {msg}\n{USAGE}");
    std::process::exit(2);
}
