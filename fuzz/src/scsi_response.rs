//! The initiator's SCSI response parsers ([`isomount::scsi`]): INQUIRY, the VPD pages, READ
//! CAPACITY (10)/(16), REPORT LUNS and sense data. Every parser sees every input (they are
//! cheap); none panics, and what they accept is consistent with the bytes.

use isomount::scsi::{
    parse_device_id, parse_inquiry, parse_read_capacity10, parse_read_capacity16,
    parse_report_luns, parse_sense, parse_serial, parse_supported_pages, vpd_payload, Lun,
};

pub fn run(data: &[u8]) {
    if let Ok(inq) = parse_inquiry(data) {
        assert!(inq.vendor.len() <= 8 * 3 && inq.product.len() <= 16 * 3);
        assert!(!inq.vendor.chars().any(char::is_control));
        assert!(inq.device_type <= 0x1f && inq.qualifier <= 7);
    }
    for page in [0x00, 0x80, 0x83, 0xb0] {
        if let Ok(payload) = vpd_payload(page, data) {
            assert_eq!(data[1], page);
            assert_eq!(payload, &data[4..4 + payload.len()]);
        }
    }
    if let Ok(pages) = parse_supported_pages(data) {
        assert!(pages.len() + 4 <= data.len());
    }
    if let Ok(serial) = parse_serial(data) {
        assert!(!serial.chars().any(char::is_control));
    }
    if let Ok(ids) = parse_device_id(data) {
        let mut at = 0;
        while at < ids.len() {
            at += 4 + usize::from(ids[at + 3]);
        }
        assert_eq!(
            at,
            ids.len(),
            "designation descriptors fill the page exactly"
        );
    }
    for capacity in [parse_read_capacity10(data), parse_read_capacity16(data)]
        .into_iter()
        .flatten()
    {
        assert!(capacity.blocks > 0 && capacity.block_size > 0);
        assert!(capacity.bytes().is_some());
    }
    if let Ok(luns) = parse_report_luns(data) {
        assert!(luns.len() <= (data.len() - 8) / 8);
        for (lun, field) in luns.into_iter().zip(data[8..].chunks_exact(8)) {
            let raw = u64::from_be_bytes(field.try_into().expect("8-byte LUN field"));
            assert_eq!(lun.to_wire(), raw, "every LUN field round-trips");
            if let Some(number) = lun.number() {
                assert_eq!(Lun::from_number(number), lun);
            }
        }
    }
    if let Ok(sense) = parse_sense(data) {
        assert!(sense.key <= 0x0f);
        assert!(!sense.to_string().is_empty());
    }
}

/// Whether some parser accepts the input.
pub fn accepts(data: &[u8]) -> bool {
    parse_inquiry(data).is_ok()
        || parse_supported_pages(data).is_ok()
        || parse_serial(data).is_ok()
        || parse_device_id(data).is_ok()
        || parse_read_capacity10(data).is_ok()
        || parse_read_capacity16(data).is_ok()
        || parse_report_luns(data).is_ok()
        || parse_sense(data).is_ok()
}
