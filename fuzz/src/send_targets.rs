//! SendTargets text ([`isomount::iscsi::discovery::parse_send_targets`]): the data of a
//! discovery session's Text Response, parsed as text and turned into targets. Never panics; there
//! is one target per TargetName, and each has at least one portal, each listed once.

use isomount::iscsi::discovery::parse_send_targets;
use isomount::iscsi::text::parse;

const ASKED: &str = "127.0.0.1:3260";

pub fn run(data: &[u8]) {
    let Ok(pairs) = parse(data) else {
        return;
    };
    let targets = parse_send_targets(&pairs, ASKED);
    let names = pairs.iter().filter(|(k, _)| k == "TargetName").count();
    assert_eq!(targets.len(), names, "one target per TargetName");
    for t in &targets {
        assert!(!t.portals.is_empty());
        for (i, p) in t.portals.iter().enumerate() {
            assert!(!t.portals[..i].contains(p), "portal {p} listed twice");
        }
    }
}

pub fn accepts(data: &[u8]) -> bool {
    parse(data).is_ok_and(|pairs| !parse_send_targets(&pairs, ASKED).is_empty())
}
