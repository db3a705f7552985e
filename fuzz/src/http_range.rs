//! Answers of web mirrors to range requests ([`isomount::http::range`]): Content-Range parsing
//! and the check of a response head never panic, and an accepted answer is exactly the range
//! asked of a file of the image's size (a 206 naming it, or a 200 when the whole file was asked).
//!
//! Input: offset, length and image size (big-endian u64 each), two bytes that make the status
//! (100 to 655), then the Content-Range value as text.

use isomount::http::range::{check_answer, ContentRange, Head};

/// Bytes before the Content-Range text.
const FIXED: usize = 26;

/// The request (offset, len, size) and the status an input encodes.
fn request(data: &[u8]) -> Option<(u64, u64, u64, u16)> {
    let number = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(data.get(at..at + 8)?.try_into().ok()?))
    };
    let (offset, len, size) = (number(0)?, number(8)?, number(16)?);
    let status = u16::from(*data.get(24)?) + 100 * u16::from(data.get(25)? % 6 + 1);
    Some((offset, len.max(1), size, status))
}

/// Input bytes for a request and an answer, the inverse of [`request`] (for seeds).
pub fn encode(offset: u64, len: u64, size: u64, status: u16, content_range: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for n in [offset, len, size] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.push((status % 100) as u8);
    out.push((status / 100 - 1) as u8);
    out.extend_from_slice(content_range.as_bytes());
    out
}

pub fn run(data: &[u8]) {
    let Some((offset, len, size, status)) = request(data) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(&data[FIXED..]) else {
        return;
    };
    if let Some(range) = ContentRange::parse(text) {
        assert!(range.first <= range.last, "{text}");
        assert!(range.complete.is_none_or(|c| range.last < c), "{text}");
    }
    let Some(end) = offset.checked_add(len) else {
        return;
    };
    for content_length in [Some(len), None] {
        let head = Head {
            status,
            content_range: Some(text),
            content_length,
            etag: None,
            last_modified: None,
        };
        let Ok(answer) = check_answer(offset, len, size, &head) else {
            continue;
        };
        assert_eq!(answer.validators.size, size);
        if status == 206 {
            let range = ContentRange::parse(text).expect("an accepted 206 has a Content-Range");
            assert_eq!((range.first, range.last + 1), (offset, end), "{text}");
            assert!(range.complete.is_none_or(|c| c == size), "{text}");
        } else {
            assert_eq!(
                (status, offset, len),
                (200, 0, size),
                "an accepted 200 is the whole file"
            );
        }
    }
}

/// Whether the input is a request and a Content-Range that parses.
pub fn accepts(data: &[u8]) -> bool {
    request(data).is_some()
        && std::str::from_utf8(&data[FIXED..]).is_ok_and(|t| ContentRange::parse(t).is_some())
}
