//! Text parameters (RFC 7143 §6: `key=value` pairs, each ended by a NUL) and the negotiation
//! rules of the login and operational keys (§6.2, §13).
//!
//! No I/O. [`parse`] and [`encode`] move between bytes and pairs; [`TextBuffer`] joins the data
//! segments of a PDU sequence sent with the C (continue) bit, bounded; [`respond`] is the
//! responder's side of a negotiation (the target) and [`accept`] checks and resolves a
//! responder's answer (the initiator); [`Params`] holds the session's resulting values.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest key (§6.1: 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value we accept. Long binary values (a 1024-byte CHAP challenge is 2050 characters in
/// hex) stay far below.
pub const MAX_VALUE_LEN: usize = 8192;
/// Most text we collect across one PDU sequence (C bit) before giving up.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Most pairs in one text.
pub const MAX_PAIRS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("malformed text parameter: {0}")]
    Malformed(String),
    #[error("text parameters exceed {MAX_TEXT_LEN} bytes")]
    TooLong,
    #[error("invalid value for {key}: {value:?}")]
    BadValue { key: String, value: String },
    #[error("target answered {key}={value} to our {offered}")]
    BadAnswer {
        key: String,
        offered: String,
        value: String,
    },
}

/// Decode `key=value\0…`. Empty items (padding NULs) are skipped; an unterminated last item is
/// taken as it is.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    if data.len() > MAX_TEXT_LEN {
        return Err(TextError::TooLong);
    }
    let mut out = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        if out.len() >= MAX_PAIRS {
            return Err(TextError::TooLong);
        }
        let eq = item
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| TextError::Malformed(format!("no '=' in {:?}", lossy(item))))?;
        let (key, value) = (&item[..eq], &item[eq + 1..]);
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.iter().all(|&b| is_key_char(b)) {
            return Err(TextError::Malformed(format!("bad key {:?}", lossy(key))));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(TextError::Malformed(format!(
                "value of {} is {} bytes long",
                lossy(key),
                value.len()
            )));
        }
        let value = std::str::from_utf8(value)
            .map_err(|_| TextError::Malformed(format!("value of {} is not UTF-8", lossy(key))))?;
        out.push((lossy(key), value.to_string()));
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned()
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_')
}

/// Encode pairs as `key=value\0…`.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Bytes {
    let mut out = BytesMut::new();
    for (k, v) in pairs {
        out.put_slice(k.as_ref().as_bytes());
        out.put_u8(b'=');
        out.put_slice(v.as_ref().as_bytes());
        out.put_u8(0);
    }
    out.freeze()
}

/// Joins the data segments of a text or login PDU sequence (C bit set on all but the last).
#[derive(Debug, Default)]
pub struct TextBuffer {
    buf: BytesMut,
}

impl TextBuffer {
    pub fn push(&mut self, segment: &[u8]) -> Result<(), TextError> {
        if self.buf.len().saturating_add(segment.len()) > MAX_TEXT_LEN {
            return Err(TextError::TooLong);
        }
        self.buf.put_slice(segment);
        Ok(())
    }

    /// Parse what was collected and start over.
    pub fn take(&mut self) -> Result<Vec<(String, String)>, TextError> {
        let data = self.buf.split();
        parse(&data)
    }
}

/// How a key's value is negotiated (§6.2, §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Each side states its own value; no answer is expected.
    Declarative,
    /// The lower of the two numbers, each within `lo..=hi`.
    Min(u32, u32),
    /// The higher of the two numbers.
    Max(u32, u32),
    /// Boolean AND.
    And,
    /// Boolean OR.
    Or,
    /// The first value of the proposer's list that the responder supports.
    List,
}

/// The rule for a key we know.
pub fn rule(key: &str) -> Option<Rule> {
    const MAX24: u32 = (1 << 24) - 1;
    Some(match key {
        "HeaderDigest" | "DataDigest" | "AuthMethod" => Rule::List,
        "MaxConnections" => Rule::Min(1, 65535),
        "InitialR2T" | "DataPDUInOrder" | "DataSequenceInOrder" => Rule::Or,
        "ImmediateData" | "IFMarker" | "OFMarker" => Rule::And,
        "MaxBurstLength" | "FirstBurstLength" => Rule::Min(512, MAX24),
        "DefaultTime2Wait" => Rule::Max(0, 3600),
        "DefaultTime2Retain" => Rule::Min(0, 3600),
        "MaxOutstandingR2T" => Rule::Min(1, 65535),
        "ErrorRecoveryLevel" => Rule::Min(0, 2),
        "MaxRecvDataSegmentLength"
        | "TargetAlias"
        | "InitiatorAlias"
        | "TargetAddress"
        | "TargetPortalGroupTag"
        | "TargetName"
        | "InitiatorName"
        | "SessionType"
        | "SendTargets" => Rule::Declarative,
        _ => return None,
    })
}

/// A numeric value: decimal or `0x` hexadecimal (§6.1).
pub fn parse_number(value: &str) -> Option<u64> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()
    } else if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse().ok()
    } else {
        None
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

fn number_in(key: &str, value: &str, lo: u32, hi: u32) -> Result<u32, TextError> {
    parse_number(value)
        .filter(|&n| n >= u64::from(lo) && n <= u64::from(hi))
        .map(|n| n as u32)
        .ok_or_else(|| TextError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
        })
}

fn boolean(key: &str, value: &str) -> Result<bool, TextError> {
    parse_bool(value).ok_or_else(|| TextError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// The responder's answer to `key=offered` given its own value or list `ours` (a list is
/// comma-separated, most preferred first). `None` for declarative keys (no answer is due).
/// An unknown key gets `NotUnderstood`; an offer outside the key's range gets `Reject`.
pub fn respond(key: &str, offered: &str, ours: &str) -> Option<String> {
    let Some(rule) = rule(key) else {
        return Some("NotUnderstood".to_string());
    };
    let reject = || "Reject".to_string();
    Some(match rule {
        Rule::Declarative => return None,
        Rule::Min(lo, hi) | Rule::Max(lo, hi) => {
            match (
                number_in(key, offered, lo, hi),
                number_in(key, ours, lo, hi),
            ) {
                (Ok(a), Ok(b)) if matches!(rule, Rule::Min(..)) => a.min(b).to_string(),
                (Ok(a), Ok(b)) => a.max(b).to_string(),
                _ => reject(),
            }
        }
        Rule::And | Rule::Or => match (parse_bool(offered), parse_bool(ours)) {
            (Some(a), Some(b)) if rule == Rule::And => yes_no(a && b),
            (Some(a), Some(b)) => yes_no(a || b),
            _ => reject(),
        },
        Rule::List => offered
            .split(',')
            .find(|o| ours.split(',').any(|s| s == *o))
            .map(str::to_string)
            .unwrap_or_else(reject),
    })
}

/// The negotiated result when we offered `key=offered` and the responder answered `answer`.
/// `Ok(None)`: the answer leaves the key at its default (`Irrelevant`, `NotUnderstood`).
/// An answer the rules do not allow is an error.
pub fn accept(key: &str, offered: &str, answer: &str) -> Result<Option<String>, TextError> {
    let bad = || TextError::BadAnswer {
        key: key.to_string(),
        offered: offered.to_string(),
        value: answer.to_string(),
    };
    if matches!(answer, "Irrelevant" | "NotUnderstood") {
        return Ok(None);
    }
    match rule(key) {
        None | Some(Rule::Declarative) => Ok(Some(answer.to_string())),
        Some(Rule::Min(lo, hi)) => {
            let (ours, theirs) = (
                number_in(key, offered, lo, hi)?,
                number_in(key, answer, lo, hi)?,
            );
            if theirs > ours {
                return Err(bad());
            }
            Ok(Some(theirs.to_string()))
        }
        Some(Rule::Max(lo, hi)) => {
            let (ours, theirs) = (
                number_in(key, offered, lo, hi)?,
                number_in(key, answer, lo, hi)?,
            );
            if theirs < ours {
                return Err(bad());
            }
            Ok(Some(theirs.to_string()))
        }
        Some(Rule::And) => Ok(Some(yes_no(
            boolean(key, offered)? && boolean(key, answer)?,
        ))),
        Some(Rule::Or) => Ok(Some(yes_no(
            boolean(key, offered)? || boolean(key, answer)?,
        ))),
        Some(Rule::List) => {
            if offered.split(',').any(|o| o == answer) {
                Ok(Some(answer.to_string()))
            } else {
                Err(bad())
            }
        }
    }
}

/// Header or data digest in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Digest {
    #[default]
    None,
    Crc32c,
}

impl Digest {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Crc32c => "CRC32C",
        }
    }
}

/// Session and connection parameters (§13), RFC defaults until negotiated.
/// `max_recv_data_segment_length` is what we accept per PDU (our declaration);
/// `max_xmit_data_segment_length` is what the peer declared it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub header_digest: Digest,
    pub data_digest: Digest,
    pub max_connections: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_recv_data_segment_length: u32,
    pub max_xmit_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            header_digest: Digest::None,
            data_digest: Digest::None,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_recv_data_segment_length: 8192,
            max_xmit_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

impl Params {
    /// Record a negotiated (or, for MaxRecvDataSegmentLength, the peer's declared) value.
    /// Keys that carry no session parameter are ignored.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), TextError> {
        const MAX24: u32 = (1 << 24) - 1;
        let digest = |v: &str| match v {
            "None" => Ok(Digest::None),
            "CRC32C" => Ok(Digest::Crc32c),
            _ => Err(TextError::BadValue {
                key: key.to_string(),
                value: v.to_string(),
            }),
        };
        match key {
            "HeaderDigest" => self.header_digest = digest(value)?,
            "DataDigest" => self.data_digest = digest(value)?,
            "MaxConnections" => self.max_connections = number_in(key, value, 1, 65535)?,
            "InitialR2T" => self.initial_r2t = boolean(key, value)?,
            "ImmediateData" => self.immediate_data = boolean(key, value)?,
            "MaxRecvDataSegmentLength" => {
                self.max_xmit_data_segment_length = number_in(key, value, 512, MAX24)?
            }
            "MaxBurstLength" => self.max_burst_length = number_in(key, value, 512, MAX24)?,
            "FirstBurstLength" => self.first_burst_length = number_in(key, value, 512, MAX24)?,
            "DefaultTime2Wait" => self.default_time2wait = number_in(key, value, 0, 3600)?,
            "DefaultTime2Retain" => self.default_time2retain = number_in(key, value, 0, 3600)?,
            "MaxOutstandingR2T" => self.max_outstanding_r2t = number_in(key, value, 1, 65535)?,
            "DataPDUInOrder" => self.data_pdu_in_order = boolean(key, value)?,
            "DataSequenceInOrder" => self.data_sequence_in_order = boolean(key, value)?,
            "ErrorRecoveryLevel" => self.error_recovery_level = number_in(key, value, 0, 2)?,
            _ => {}
        }
        Ok(())
    }

    /// The negotiated values as `key=value` lines, for `info`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HeaderDigest", self.header_digest.as_str().to_string()),
            ("DataDigest", self.data_digest.as_str().to_string()),
            (
                "MaxRecvDataSegmentLength",
                self.max_recv_data_segment_length.to_string(),
            ),
            (
                "TargetMaxRecvDataSegmentLength",
                self.max_xmit_data_segment_length.to_string(),
            ),
            ("MaxBurstLength", self.max_burst_length.to_string()),
            ("FirstBurstLength", self.first_burst_length.to_string()),
            ("ImmediateData", yes_no(self.immediate_data)),
            ("InitialR2T", yes_no(self.initial_r2t)),
            ("MaxOutstandingR2T", self.max_outstanding_r2t.to_string()),
            ("DataPDUInOrder", yes_no(self.data_pdu_in_order)),
            ("DataSequenceInOrder", yes_no(self.data_sequence_in_order)),
            ("ErrorRecoveryLevel", self.error_recovery_level.to_string()),
            ("DefaultTime2Wait", self.default_time2wait.to_string()),
            ("DefaultTime2Retain", self.default_time2retain.to_string()),
            ("MaxConnections", self.max_connections.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode_roundtrip() {
        let wire = b"TargetName=iqn.2001-04.com.example:disk\0MaxBurstLength=262144\0\0";
        let pairs = parse(wire).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("TargetName".into(), "iqn.2001-04.com.example:disk".into()),
                ("MaxBurstLength".into(), "262144".into())
            ]
        );
        assert_eq!(&encode(&pairs)[..], &wire[..wire.len() - 1]);
    }

    #[test]
    fn values_may_contain_equals_and_be_empty() {
        let pairs = parse(b"CHAP_C=0xab=\0TargetAlias=\0").unwrap();
        assert_eq!(pairs[0], ("CHAP_C".into(), "0xab=".into()));
        assert_eq!(pairs[1], ("TargetAlias".into(), String::new()));
    }

    #[test]
    fn malformed_text_is_an_error() {
        assert!(parse(b"novalue\0").is_err());
        assert!(parse(b"=x\0").is_err());
        assert!(parse(b"bad key=1\0").is_err());
        assert!(parse(&[b'k', b'=', 0xff, 0]).is_err());
        let long_key = format!("{}=1", "k".repeat(64));
        assert!(parse(long_key.as_bytes()).is_err());
        assert_eq!(
            parse(&vec![b'a'; MAX_TEXT_LEN + 1]),
            Err(TextError::TooLong)
        );
    }

    #[test]
    fn text_buffer_joins_and_bounds_continued_segments() {
        let mut buf = TextBuffer::default();
        buf.push(b"SendTargets=Al").unwrap();
        buf.push(b"l\0").unwrap();
        assert_eq!(
            buf.take().unwrap(),
            vec![("SendTargets".into(), "All".into())]
        );
        assert!(buf.take().unwrap().is_empty());
        let big = vec![b'x'; MAX_TEXT_LEN];
        buf.push(&big).unwrap();
        assert_eq!(buf.push(b"y"), Err(TextError::TooLong));
    }

    #[test]
    fn responder_rules() {
        assert_eq!(
            respond("MaxBurstLength", "1048576", "262144").unwrap(),
            "262144"
        );
        assert_eq!(respond("DefaultTime2Wait", "0", "2").unwrap(), "2");
        assert_eq!(respond("ImmediateData", "Yes", "No").unwrap(), "No");
        assert_eq!(respond("InitialR2T", "No", "Yes").unwrap(), "Yes");
        assert_eq!(respond("DataPDUInOrder", "No", "No").unwrap(), "No");
        assert_eq!(
            respond("HeaderDigest", "CRC32C,None", "None,CRC32C").unwrap(),
            "CRC32C"
        );
        assert_eq!(respond("HeaderDigest", "CRC32C", "None").unwrap(), "Reject");
        assert_eq!(respond("AuthMethod", "CHAP,None", "None").unwrap(), "None");
        assert_eq!(respond("ErrorRecoveryLevel", "3", "0").unwrap(), "Reject");
        assert_eq!(
            respond("MaxBurstLength", "0x100000", "262144").unwrap(),
            "262144"
        );
        assert_eq!(
            respond("X-com.example.Foo", "1", "").unwrap(),
            "NotUnderstood"
        );
        assert_eq!(respond("MaxRecvDataSegmentLength", "65536", "8192"), None);
    }

    #[test]
    fn initiator_accepts_only_legal_answers() {
        assert_eq!(
            accept("MaxBurstLength", "16776192", "262144").unwrap(),
            Some("262144".into())
        );
        assert!(accept("MaxBurstLength", "262144", "1048576").is_err());
        assert!(accept("DefaultTime2Wait", "2", "1").is_err());
        assert_eq!(
            accept("ImmediateData", "No", "Yes").unwrap(),
            Some("No".into())
        );
        assert_eq!(
            accept("InitialR2T", "No", "Yes").unwrap(),
            Some("Yes".into())
        );
        assert_eq!(
            accept("DataDigest", "CRC32C,None", "None").unwrap(),
            Some("None".into())
        );
        assert!(accept("DataDigest", "None", "CRC32C").is_err());
        assert_eq!(accept("IFMarker", "No", "Irrelevant").unwrap(), None);
        assert!(accept("MaxOutstandingR2T", "1", "0").is_err());
    }

    #[test]
    fn params_record_results() {
        let mut p = Params::default();
        p.set("MaxRecvDataSegmentLength", "65536").unwrap();
        p.set("HeaderDigest", "CRC32C").unwrap();
        p.set("ImmediateData", "No").unwrap();
        assert_eq!(p.max_xmit_data_segment_length, 65536);
        assert_eq!(p.max_recv_data_segment_length, 8192);
        assert_eq!(p.header_digest, Digest::Crc32c);
        assert!(!p.immediate_data);
        assert!(p.set("MaxBurstLength", "100").is_err());
        assert!(p.set("DataDigest", "MD5").is_err());
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("-1"), None);
    }
}
