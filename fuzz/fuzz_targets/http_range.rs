//! Range answers of web mirrors: Content-Range parsing and the check of a response head never
//! panic, and an accepted 206 is exactly the range asked of a file of the image's size.
#![no_main]

use isomount::http::range::{check_answer, ContentRange, Head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 26 {
        return;
    }
    let number = |at: usize| u64::from_be_bytes(data[at..at + 8].try_into().unwrap());
    let (offset, len, size) = (number(0) >> 1, (number(8) >> 40).max(1), number(16) >> 1);
    let status = u16::from(data[24]) + 100 * u16::from(data[25] % 5 + 1);
    let Ok(text) = std::str::from_utf8(&data[26..]) else {
        return;
    };
    if let Some(range) = ContentRange::parse(text) {
        assert!(range.first <= range.last);
        assert!(range.complete.is_none_or(|c| range.last < c));
    }
    let Some(end) = offset.checked_add(len) else {
        return;
    };
    let head = Head {
        status,
        content_range: Some(text),
        content_length: Some(len),
        etag: None,
        last_modified: None,
    };
    if let Ok(answer) = check_answer(offset, len, size, &head) {
        assert_eq!(answer.validators.size, size);
        if status == 206 {
            let range = ContentRange::parse(text).expect("an accepted 206 has a Content-Range");
            assert_eq!((range.first, range.last + 1), (offset, end));
        } else {
            assert_eq!((status, offset, len), (200, 0, size));
        }
    }
});
