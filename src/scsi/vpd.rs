//! Vital product data pages (SPC-4 §7.8): their codes, the page the target builds around a body,
//! and the initiator's parsers of the pages it asks for.

use super::ScsiError;

/// VPD 0x00: the pages supported (SPC-4 §7.8.16).
pub const SUPPORTED_PAGES: u8 = 0x00;
/// VPD 0x80: unit serial number (SPC-4 §7.8.18).
pub const UNIT_SERIAL_NUMBER: u8 = 0x80;
/// VPD 0x83: device identification (SPC-4 §7.8.6).
pub const DEVICE_IDENTIFICATION: u8 = 0x83;
/// VPD 0xB0: block limits (SBC-3 §6.5.3).
pub const BLOCK_LIMITS: u8 = 0xb0;

/// A VPD page: the 4-byte header (peripheral device type, page code, length) and `body`.
pub fn page(peripheral_type: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut d = vec![peripheral_type, code];
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&body[..usize::from(len)]);
    d
}

/// The payload of a VPD page (after its 4-byte header), checked against the page code.
pub fn vpd_payload(page: u8, data: &[u8]) -> Result<&[u8], ScsiError> {
    super::need("VPD page", data, 4)?;
    if data[1] != page {
        return Err(ScsiError::Malformed(format!(
            "asked for VPD page {page:#04x}, got {:#04x}",
            data[1]
        )));
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    Ok(&data[4..data.len().min(4 + len)])
}

/// VPD 0x00: the pages supported.
pub fn parse_supported_pages(data: &[u8]) -> Result<Vec<u8>, ScsiError> {
    Ok(vpd_payload(SUPPORTED_PAGES, data)?.to_vec())
}

/// VPD 0x80: unit serial number, trimmed.
pub fn parse_serial(data: &[u8]) -> Result<String, ScsiError> {
    Ok(super::ascii(vpd_payload(UNIT_SERIAL_NUMBER, data)?))
}

/// VPD 0x83: the designation descriptors, raw (each: 4-byte header + identifier), checked to be
/// well formed.
pub fn parse_device_id(data: &[u8]) -> Result<Vec<u8>, ScsiError> {
    let payload = vpd_payload(DEVICE_IDENTIFICATION, data)?;
    let mut at = 0usize;
    while at < payload.len() {
        let header = payload
            .get(at..at + 4)
            .ok_or_else(|| ScsiError::Malformed("truncated designation descriptor".into()))?;
        let end = at + 4 + usize::from(header[3]);
        if end > payload.len() {
            return Err(ScsiError::Malformed(
                "designation descriptor past the page end".into(),
            ));
        }
        at = end;
    }
    Ok(payload.to_vec())
}
