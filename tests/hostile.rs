//! The initiator against a hostile target (harness `HostileTarget`, one misbehaviour each): the
//! first MiB is served honestly, every READ past it breaks the protocol. `isomount cat` must end
//! within the bound with a non-zero exit and one clear line naming the portal, no panic, bounded
//! memory, and what it wrote must be a true prefix of the image.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;
/// The bound every mode must end within (the default read bound is 90 s).
const BOUND: Duration = Duration::from_secs(90);

/// Run `isomount cat` against a target misbehaving this way and check how it ends.
fn cat_against(misbehaviour: Misbehaviour) {
    let dir = tempfile::tempdir().unwrap();
    let image = std::fs::read(random_file(dir.path(), "hostile.img", 2 * MIB as u64, 61)).unwrap();
    let target = HostileTarget::start(image.clone(), MIB as u64, misbehaviour);
    let started = Instant::now();
    let mut child = isomount()
        .args(["cat", &target.url()])
        .env_remove("ISOMOUNT_DIGEST")
        .env_remove("LIBISCSI_CHAP_USERNAME")
        .env_remove("LIBISCSI_CHAP_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run isomount");
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = stderr.read_to_string(&mut buf);
        buf
    });
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOUND + Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{misbehaviour:?}: cat still running after {:?}",
                started.elapsed()
            );
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let written = out.join().unwrap();
    let stderr = err.join().unwrap();
    eprintln!("{misbehaviour:?}: ended in {elapsed:?}, peak RSS {peak_kib} KiB: {stderr}");
    assert!(!status.success(), "{misbehaviour:?}: cat succeeded");
    assert_eq!(status.code(), Some(1), "{misbehaviour:?}: {status}");
    assert!(elapsed <= BOUND, "{misbehaviour:?}: took {elapsed:?}");
    assert!(!stderr.contains("panicked"), "{misbehaviour:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{misbehaviour:?}: {stderr}");
    assert!(
        lines[0].contains(&target.portal()),
        "{misbehaviour:?}: the line does not name the portal: {stderr}"
    );
    assert!(written.len() < image.len(), "{misbehaviour:?}");
    assert!(
        written[..] == image[..written.len()],
        "{misbehaviour:?}: output is not a prefix of the image"
    );
    assert!(
        peak_kib < 256 * 1024,
        "{misbehaviour:?}: peak RSS {peak_kib} KiB"
    );
    assert!(target.logins() >= 1);
}

#[test]
fn an_oversized_data_segment() {
    cat_against(Misbehaviour::OversizedSegment);
}

#[test]
fn data_in_past_the_transfer_length() {
    cat_against(Misbehaviour::Overrun);
}

#[test]
fn a_reserved_opcode() {
    cat_against(Misbehaviour::ReservedOpcode);
}

#[test]
fn a_response_for_an_itt_never_issued() {
    cat_against(Misbehaviour::UnknownItt);
}

#[test]
fn random_bytes() {
    cat_against(Misbehaviour::RandomBytes);
}

#[test]
fn data_in_trickling_a_byte_a_second() {
    cat_against(Misbehaviour::Trickle);
}

#[test]
fn good_status_without_data() {
    cat_against(Misbehaviour::GoodWithoutData);
}

#[test]
fn a_reject_of_a_valid_command() {
    cat_against(Misbehaviour::RejectValidCommand);
}
