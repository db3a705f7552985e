//! The target's CDB decoding ([`LogicalUnit::execute`], what `isomount serve` does with each SCSI
//! command): any CDB gives an outcome, never a panic, and what it asks the image for lies within
//! the LUN. The first byte chooses the LUN (a disk with a partial last block, a CD, a one-block
//! disk, a disk at the edge of 64-bit addressing, or no LUN at all); the rest is the CDB.

use isomount::target::scsi::{
    execute_without_lun, DeviceType, LogicalUnit, Outcome, Sense, MAX_TRANSFER_BYTES,
};

/// The largest data a command outside READ may return (allocation lengths are 16 or 32 bits, but
/// no page this target has comes near this).
const MAX_DATA: usize = 64 * 1024;

fn lun(choice: u8) -> Option<LogicalUnit> {
    let (device, size) = match choice % 5 {
        0 => (DeviceType::Disk, 64 * 1024 + 100),
        1 => (DeviceType::Cd, 2048 * 300),
        2 => (DeviceType::Disk, 1),
        3 => (DeviceType::Disk, u64::MAX - 511),
        _ => return None,
    };
    Some(LogicalUnit::new(
        device,
        size,
        "fuzz",
        "serial-1",
        "iqn.2026-01.org.isomount.fuzz:lun",
    ))
}

pub fn run(data: &[u8]) {
    let Some((&choice, cdb)) = data.split_first() else {
        return;
    };
    let Some(lun) = lun(choice) else {
        let outcome = execute_without_lun(cdb);
        assert!(
            matches!(outcome, Outcome::Data(_) | Outcome::Check(_)),
            "{outcome:?}"
        );
        return;
    };
    let block = u64::from(lun.block_size());
    let capacity = lun.blocks() * block;
    let outcome = lun.execute(cdb);
    match &outcome {
        Outcome::Good => {}
        Outcome::Data(d) => assert!(d.len() <= MAX_DATA, "{} bytes of data", d.len()),
        Outcome::Read { offset, len } | Outcome::Compare { offset, len } => {
            assert_eq!(offset % block, 0, "{outcome:?}");
            assert!(*len > 0 && len % block == 0, "{outcome:?}");
            assert!(*len <= MAX_TRANSFER_BYTES, "{outcome:?}");
            assert!(
                offset.checked_add(*len).is_some_and(|end| end <= capacity),
                "{outcome:?} past the LUN's {capacity} bytes"
            );
        }
        Outcome::Check(sense) => assert!(sense.key <= 0x0f),
    }
    assert_eq!(lun.execute(cdb), outcome, "the same CDB, the same outcome");
}

/// Whether the CDB decodes: an outcome other than an unknown opcode or a bad field (a WRITE's
/// DATA PROTECT counts: the target understood it).
pub fn accepts(data: &[u8]) -> bool {
    let Some((&choice, cdb)) = data.split_first() else {
        return false;
    };
    let outcome = match lun(choice) {
        Some(lun) => lun.execute(cdb),
        None => execute_without_lun(cdb),
    };
    !matches!(
        outcome,
        Outcome::Check(Sense::INVALID_OPCODE | Sense::INVALID_FIELD_IN_CDB)
    )
}
