//! `faultproxy UPSTREAM [--latency-ms N] [--reset-every BYTES] [--stall-after BYTES --stall-ms N]
//! [--counts FILE]`
//!
//! Runs the harness's fault-injecting TCP proxy for scripts (`scripts/bench.sh`): prints the
//! portal it listens on (`127.0.0.1:PORT`) as its first line of stdout, then forwards until it
//! is killed. With `--counts FILE` it keeps FILE holding `CONNECTIONS TURNS` (connections
//! accepted, turns of request and response: together the round trips made through it), rewritten
//! every 10 ms.

use std::io::Write;
use std::time::Duration;

use isomount_harness::{FaultProxy, Faults};

const USAGE: &str = "usage: faultproxy HOST:PORT [--latency-ms N] [--reset-every BYTES] \
                     [--stall-after BYTES --stall-ms N] [--counts FILE]";

fn main() {
    match parse(std::env::args().skip(1)) {
        Ok((upstream, faults, counts)) => {
            let proxy = FaultProxy::start(&upstream, faults);
            println!("{}", proxy.portal());
            let _ = std::io::stdout().flush();
            loop {
                match &counts {
                    Some(path) => {
                        let line = format!("{} {}\n", proxy.connections(), proxy.client_turns());
                        let next = path.with_extension("new");
                        if std::fs::write(&next, line).is_ok() {
                            let _ = std::fs::rename(&next, path);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    None => std::thread::park(),
                }
            }
        }
        Err(msg) => {
            eprintln!("faultproxy: {msg}\n{USAGE}");
            std::process::exit(2);
        }
    }
}

type Parsed = (String, Faults, Option<std::path::PathBuf>);

fn parse(mut args: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut upstream = None;
    let mut counts = None;
    let mut faults = Faults::default();
    let mut stall_after = None;
    let mut stall_ms = None;
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let value = args.next().ok_or(format!("{name} needs a value"))?;
            value
                .parse()
                .map_err(|_| format!("{name}: {value:?} is not a number"))
        };
        match arg.as_str() {
            "--latency-ms" => {
                faults.latency = Some(Duration::from_millis(number("--latency-ms")?));
            }
            "--reset-every" => faults.reset_every = Some(number("--reset-every")?),
            "--stall-after" => stall_after = Some(number("--stall-after")?),
            "--stall-ms" => stall_ms = Some(number("--stall-ms")?),
            "--counts" => counts = Some(args.next().ok_or("--counts needs a file")?.into()),
            "-h" | "--help" => return Err("help".into()),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            other if upstream.is_none() => upstream = Some(other.to_string()),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    match (stall_after, stall_ms) {
        (Some(after), Some(ms)) => {
            faults.stall_after = Some((after, Duration::from_millis(ms)));
        }
        (None, None) => {}
        _ => return Err("--stall-after and --stall-ms go together".into()),
    }
    Ok((upstream.ok_or("no upstream HOST:PORT")?, faults, counts))
}
