//! SendTargets discovery (RFC 7143 §4.3, Appendix C): a discovery session, one Text Request
//! `SendTargets=All` (continued while the target sets C or clears F), then Logout.

use std::time::Duration;

use super::login::{Chap, DigestOffer, LoginConfig, Opening};
use super::session::Seq;
use super::transport::{Conn, LoginFailure};
use super::IscsiError;

/// A target and the portals it is reachable at (`host:port`, TPGT removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    pub portals: Vec<String>,
}

/// Turn SendTargets text into targets: each TargetName starts one, TargetAddress lines add its
/// portals. A target without any address is reachable where we asked.
pub fn parse_send_targets(pairs: &[(String, String)], asked: &str) -> Vec<DiscoveredTarget> {
    let mut targets: Vec<DiscoveredTarget> = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            "TargetName" => targets.push(DiscoveredTarget {
                name: value.clone(),
                portals: Vec::new(),
            }),
            "TargetAddress" => {
                if let Some(t) = targets.last_mut() {
                    let portal = super::login::strip_tpgt(value);
                    if !t.portals.contains(&portal) {
                        t.portals.push(portal);
                    }
                }
            }
            _ => {}
        }
    }
    for t in &mut targets {
        if t.portals.is_empty() {
            t.portals.push(asked.to_string());
        }
    }
    targets
}

/// Every target a portal knows of.
pub async fn discover(
    portal: &str,
    initiator_name: &str,
    chap: Option<Chap>,
) -> Result<Vec<DiscoveredTarget>, IscsiError> {
    let timeout = Duration::from_secs(10);
    let mut conn = Conn::connect(portal, timeout).await?;
    let mut isid = [0x80u8, 0, 0, 0, 0, 0];
    isid[1..].copy_from_slice(&rand::random::<[u8; 5]>());
    let cfg = LoginConfig {
        initiator_name: initiator_name.to_string(),
        target: None,
        isid,
        tsih: 0,
        cid: 0,
        chap,
        digest: DigestOffer::Either,
        max_recv_data_segment_length: 262_144,
        max_burst_length: 262_144,
        opening: Opening::Staged,
    };
    let outcome = match conn.login(cfg, 0).await {
        Ok(outcome) => outcome,
        Err(LoginFailure::Redirect(redirect)) => {
            return Err(IscsiError::Protocol {
                portal: portal.to_string(),
                reason: format!("discovery redirected to {redirect}"),
            })
        }
        Err(LoginFailure::Io(e)) => return Err(e),
        Err(LoginFailure::Refused(e)) => {
            return Err(IscsiError::Login {
                target: "discovery session".into(),
                portal: portal.to_string(),
                reason: e.to_string(),
            })
        }
    };
    let mut seq = Seq::new(&outcome, 1);
    let pairs = conn.text(&mut seq, &[("SendTargets", "All")]).await?;
    conn.logout(&mut seq).await;
    Ok(parse_send_targets(&pairs, portal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_targets_text() {
        let text = b"TargetName=iqn.a:one\0TargetAddress=127.0.0.1:3261,1\0\
TargetAddress=[::1]:3261,1\0TargetName=iqn.a:two\0";
        let pairs = crate::iscsi::text::parse(text).unwrap();
        let targets = parse_send_targets(&pairs, "127.0.0.1:3261");
        assert_eq!(
            targets,
            vec![
                DiscoveredTarget {
                    name: "iqn.a:one".into(),
                    portals: vec!["127.0.0.1:3261".into(), "[::1]:3261".into()],
                },
                DiscoveredTarget {
                    name: "iqn.a:two".into(),
                    portals: vec!["127.0.0.1:3261".into()],
                },
            ]
        );
    }
}
