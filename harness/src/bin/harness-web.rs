//! `harness-web nginx [--tls] ROOT`
//!
//! Starts the harness's nginx for scripts (`scripts/bench.sh`), serving the files under ROOT on
//! a free loopback port: over http, or with `--tls` over https (HTTP/2) with a test CA made now.
//! Prints `BASE_URL` (with `--tls`, `BASE_URL CA_PEM`) on stdout, then serves until its stdin
//! reaches end of file, and stops nginx (which also dies if this process is killed).

use std::io::{Read, Write};
use std::path::Path;

use isomount_harness::{Nginx, TestCa};

const USAGE: &str = "usage: harness-web nginx [--tls] ROOT";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (tls, root) = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["nginx", root] => (false, root),
        ["nginx", "--tls", root] => (true, root),
        _ => fail("expected `nginx [--tls] ROOT`"),
    };
    let root = Path::new(root);
    let ca = tls.then(TestCa::generate);
    let nginx = match &ca {
        Some(ca) => Nginx::start_tls("harness-web", root, ca),
        None => Nginx::start("harness-web", root),
    };
    match &ca {
        Some(ca) => println!("{} {}", nginx.base_url(), ca.ca_pem().display()),
        None => println!("{}", nginx.base_url()),
    }
    let _ = std::io::stdout().flush();
    let mut sink = [0u8; 4096];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    drop(nginx);
}

fn fail(msg: &str) -> ! {
    eprintln!("harness-web: {msg}\n{USAGE}");
    std::process::exit(2);
}
