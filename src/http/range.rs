//! Range requests and what their answers mean, without I/O: RFC 9110 §14.1.2 (byte ranges),
//! §14.4 (Content-Range), §15.3.7 (206 Partial Content), §15.5.17 (416 Range Not Satisfiable),
//! and §8.8 (the validators ETag and Last-Modified, which say whether a file changed).
//!
//! Everything here is checked before it is believed: a 206 must carry a Content-Range naming
//! exactly the bytes asked, of a file exactly the image's size; a Content-Length, when there is
//! one, must be that range's length; a 200 is accepted only when the whole file was asked for.

/// The `Range` header value asking for `len` bytes at `offset` (`len` > 0).
pub fn range_header(offset: u64, len: u64) -> String {
    format!("bytes={offset}-{}", offset + len.max(1) - 1)
}

/// A `Content-Range: bytes FIRST-LAST/COMPLETE` header (COMPLETE may be `*`, unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub complete: Option<u64>,
}

impl ContentRange {
    /// Parses the header value; None when it is not a satisfied byte range.
    pub fn parse(value: &str) -> Option<ContentRange> {
        let rest = value.trim().strip_prefix("bytes")?;
        let rest = rest.strip_prefix(' ')?.trim_start();
        let (range, complete) = rest.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        let number = |s: &str| -> Option<u64> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let (first, last) = (number(first)?, number(last)?);
        let complete = match complete.trim() {
            "*" => None,
            c => Some(number(c)?),
        };
        if first > last || complete.is_some_and(|c| last >= c) {
            return None;
        }
        Some(ContentRange {
            first,
            last,
            complete,
        })
    }
}

/// What identifies the file a mirror serves: its size, and its ETag and Last-Modified when the
/// server gives them. A later answer with other values is another file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// What differs between the file `self` described and the one `now` describes, if any. A
    /// validator one answer has and the other lacks is not compared (proxies drop headers); a
    /// weak and a strong form of the same tag are the same tag.
    pub fn changed(&self, now: &Validators) -> Option<String> {
        if self.size != now.size {
            return Some(format!("size {} where it was {}", now.size, self.size));
        }
        let bare = |t: &str| t.trim_start_matches("W/").to_string();
        if let (Some(a), Some(b)) = (&self.etag, &now.etag) {
            if bare(a) != bare(b) {
                return Some(format!("ETag {b} where it was {a}"));
            }
        }
        if let (Some(a), Some(b)) = (&self.last_modified, &now.last_modified) {
            if a != b {
                return Some(format!("Last-Modified {b} where it was {a}"));
            }
        }
        None
    }
}

/// The parts of a response head that decide what it means.
#[derive(Debug, Clone, Copy, Default)]
pub struct Head<'a> {
    pub status: u16,
    pub content_range: Option<&'a str>,
    pub content_length: Option<u64>,
    pub etag: Option<&'a str>,
    pub last_modified: Option<&'a str>,
}

/// Why an answer to a range request cannot be used, by what it means for the mirror.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 200 and the whole file for a part of it: the server ignores Range.
    #[error("answered a range request with 200 and the whole file: the server ignores Range")]
    IgnoresRange,
    /// A 206 that is not the range asked, or whose lengths disagree.
    #[error("{0}")]
    BadPartial(String),
    /// The file is not the image's size (416 says it is shorter than the range asked).
    #[error("{0}")]
    WrongSize(String),
    /// Another status.
    #[error("HTTP {0}")]
    Status(u16),
}

/// A usable answer to a range request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub validators: Validators,
}

/// Checks the head of the answer to a request for `len` bytes at `offset` of an image of
/// `size` bytes.
pub fn check_answer(offset: u64, len: u64, size: u64, head: &Head) -> Result<Answer, Refusal> {
    let validators = |file_size: u64| Validators {
        size: file_size,
        etag: head.etag.map(str::to_string),
        last_modified: head.last_modified.map(str::to_string),
    };
    let last = offset + len.max(1) - 1;
    match head.status {
        206 => {
            let value = head
                .content_range
                .ok_or_else(|| Refusal::BadPartial("206 without a Content-Range".into()))?;
            let range = ContentRange::parse(value)
                .ok_or_else(|| Refusal::BadPartial(format!("malformed Content-Range `{value}`")))?;
            if let Some(complete) = range.complete {
                if complete != size {
                    return Err(Refusal::WrongSize(format!(
                        "the file is {complete} bytes, the image {size}"
                    )));
                }
            }
            if (range.first, range.last) != (offset, last) {
                return Err(Refusal::BadPartial(format!(
                    "Content-Range `{value}` where bytes {offset}-{last} were asked"
                )));
            }
            if let Some(cl) = head.content_length {
                if cl != len {
                    return Err(Refusal::BadPartial(format!(
                        "Content-Length {cl} for a range of {len} bytes"
                    )));
                }
            }
            Ok(Answer {
                validators: validators(size),
            })
        }
        200 => {
            if let Some(cl) = head.content_length {
                if cl != size {
                    return Err(Refusal::WrongSize(format!(
                        "the file is {cl} bytes, the image {size}"
                    )));
                }
            }
            if offset == 0 && len == size {
                Ok(Answer {
                    validators: validators(size),
                })
            } else {
                Err(Refusal::IgnoresRange)
            }
        }
        416 => Err(Refusal::WrongSize(match head.content_range {
            Some(v) => format!("416 Range Not Satisfiable (`{v}`): the file is not the image"),
            None => "416 Range Not Satisfiable: the file is shorter than the image".into(),
        })),
        other => Err(Refusal::Status(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses_only_satisfied_byte_ranges() {
        let ok = |v: &str, first, last, complete| {
            assert_eq!(
                ContentRange::parse(v),
                Some(ContentRange {
                    first,
                    last,
                    complete
                }),
                "{v}"
            )
        };
        ok("bytes 0-0/1", 0, 0, Some(1));
        ok("bytes 42-1233/1234", 42, 1233, Some(1234));
        ok(
            "bytes 4294967296-4294967297/5368709120",
            1 << 32,
            (1 << 32) + 1,
            Some(5 << 30),
        );
        ok("bytes 7-9/*", 7, 9, None);
        for bad in [
            "",
            "bytes",
            "bytes */1234",
            "bytes 9-7/100",
            "bytes 0-100/100",
            "bytes -1-5/10",
            "bytes 1-5",
            "items 1-5/10",
            "bytes=1-5/10",
            "bytes 1-5/ten",
            "bytes +1-5/10",
            "bytes 1-99999999999999999999999/10",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad}");
        }
    }

    fn head(status: u16, range: Option<&str>, length: Option<u64>) -> Head<'_> {
        Head {
            status,
            content_range: range,
            content_length: length,
            etag: Some("\"abc\""),
            last_modified: None,
        }
    }

    #[test]
    fn a_206_must_be_exactly_the_range_asked_of_a_file_of_the_image_size() {
        let ok = check_answer(
            100,
            50,
            1000,
            &head(206, Some("bytes 100-149/1000"), Some(50)),
        );
        assert_eq!(ok.unwrap().validators.etag.as_deref(), Some("\"abc\""));
        // No Content-Length (chunked or close-delimited) and an unknown complete length are
        // fine: the body is counted as it comes.
        assert!(check_answer(100, 50, 1000, &head(206, Some("bytes 100-149/*"), None)).is_ok());
        let cases: &[(Head, &str)] = &[
            (head(206, None, Some(50)), "206 without a Content-Range"),
            (
                head(206, Some("bytes 0-49/1000"), Some(50)),
                "where bytes 100-149 were asked",
            ),
            (
                head(206, Some("bytes 100-148/1000"), Some(49)),
                "where bytes 100-149 were asked",
            ),
            (
                head(206, Some("bytes 100-149/1000"), Some(51)),
                "Content-Length 51 for a range of 50",
            ),
            (
                head(206, Some("bytes 100-149/999"), Some(50)),
                "the file is 999 bytes, the image 1000",
            ),
            (
                head(206, Some("octets"), Some(50)),
                "malformed Content-Range",
            ),
        ];
        for (h, want) in cases {
            let err = check_answer(100, 50, 1000, h).unwrap_err().to_string();
            assert!(err.contains(want), "{h:?}: {err}");
        }
    }

    #[test]
    fn a_200_is_refused_unless_the_whole_file_was_asked() {
        assert_eq!(
            check_answer(100, 50, 1000, &head(200, None, Some(1000))),
            Err(Refusal::IgnoresRange)
        );
        assert_eq!(
            check_answer(0, 50, 1000, &head(200, None, None)),
            Err(Refusal::IgnoresRange)
        );
        assert!(check_answer(0, 1000, 1000, &head(200, None, Some(1000))).is_ok());
        assert!(matches!(
            check_answer(0, 1000, 1000, &head(200, None, Some(999))),
            Err(Refusal::WrongSize(_))
        ));
    }

    #[test]
    fn other_statuses_are_named() {
        assert!(matches!(
            check_answer(0, 10, 1000, &head(416, Some("bytes */5"), None)),
            Err(Refusal::WrongSize(m)) if m.contains("416")
        ));
        for status in [404, 500, 503, 302, 204] {
            assert_eq!(
                check_answer(0, 10, 1000, &head(status, None, None)),
                Err(Refusal::Status(status))
            );
        }
    }

    #[test]
    fn validators_say_what_changed() {
        let v = |size, etag: Option<&str>, lm: Option<&str>| Validators {
            size,
            etag: etag.map(str::to_string),
            last_modified: lm.map(str::to_string),
        };
        let first = v(10, Some("\"a\""), Some("Sat, 01 Jan 2000 00:00:00 GMT"));
        assert_eq!(first.changed(&first.clone()), None);
        assert_eq!(first.changed(&v(10, Some("W/\"a\""), None)), None);
        assert_eq!(first.changed(&v(10, None, None)), None);
        assert!(first
            .changed(&v(11, Some("\"a\""), None))
            .unwrap()
            .contains("size 11"));
        assert!(first
            .changed(&v(10, Some("\"b\""), None))
            .unwrap()
            .contains("ETag \"b\""));
        assert!(first
            .changed(&v(10, None, Some("Sun, 02 Jan 2000 00:00:00 GMT")))
            .unwrap()
            .contains("Last-Modified"));
    }

    #[test]
    fn range_headers_name_the_last_byte() {
        assert_eq!(range_header(0, 1), "bytes=0-0");
        assert_eq!(range_header(1 << 32, 65536), "bytes=4294967296-4295032831");
    }
}
