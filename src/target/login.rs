//! The target's side of the login phase (RFC 7143 §6.3 login stages, §11.12–11.13 Login
//! Request/Response, §12.1.3 CHAP, §13 operational keys), without I/O.
//!
//! [`Login::step`] takes one Login Request and its data segment and returns the Login Response
//! to send and whether the connection goes on to the full feature phase or is refused.
//! Negotiation answers come from the shared codec's [`text::respond`]; CHAP (one-way and mutual,
//! MD5 only) checks the initiator's response and answers the initiator's challenge.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::{ChapConfig, ExportedTarget, Exports};
use crate::iscsi::login::chap_response;
use crate::iscsi::pdu::{Bhs, LoginRequest, LoginResponse, Pdu, Stage};
use crate::iscsi::text::{self, TextBuffer};

/// How far MaxCmdSN runs ahead of ExpCmdSN: the command window each session gets.
pub const CMD_WINDOW: u32 = 128;
/// The largest data segment this target accepts (its MaxRecvDataSegmentLength).
pub const MAX_RECV_DATA: u32 = 256 * 1024;
/// The largest Data-In sequence this target will agree to (MaxBurstLength).
const MAX_BURST: u32 = (1 << 24) - 1024;
/// The most login PDUs one connection may send before it must be done.
const MAX_LOGIN_PDUS: u32 = 64;

/// Login status classes and details (§11.13.5).
mod status {
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0x00);
    pub const AUTH_FAILURE: (u8, u8) = (2, 0x01);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (2, 0x02);
    pub const NOT_FOUND: (u8, u8) = (2, 0x03);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 0x05);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 0x07);
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (2, 0x09);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 0x0a);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 0x0b);
}

/// What the login produced once it reaches the full feature phase.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// `None`: a discovery session.
    pub target: Option<Arc<ExportedTarget>>,
    pub initiator_name: String,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: the largest data segment we may send.
    pub max_xmit_data: u32,
    /// MaxBurstLength: the largest Data-In sequence.
    pub max_burst: u32,
    pub tsih: u16,
    /// CmdSN of the last login request: the first command's CmdSN.
    pub exp_cmd_sn: u32,
    /// The next StatSN to use.
    pub stat_sn: u32,
}

/// The result of one login step.
#[derive(Debug)]
pub enum Step {
    /// Send this response and wait for the next request.
    Continue(Pdu),
    /// Send this response; the full feature phase starts.
    Done(Pdu, Box<Negotiated>),
    /// Send this response and close the connection.
    Refused(Pdu, &'static str),
}

/// Where CHAP stands (§12.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// Nothing agreed yet.
    Start,
    /// AuthMethod=None agreed, or nothing to authenticate.
    NotRequired,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    ChapAlgorithm,
    /// Challenge sent; waiting for CHAP_N and CHAP_R.
    ChapResponse { id: u8, challenge: [u8; 16] },
    /// The initiator proved its identity.
    Authenticated,
}

/// One connection's login, from the first Login Request to the full feature phase.
pub struct Login {
    peer: IpAddr,
    exports: Arc<Exports>,
    /// CHAP demanded: the discovery setting, then the target's once it is named.
    chap: Option<Arc<ChapConfig>>,
    stage: Stage,
    auth: Auth,
    text: TextBuffer,
    first: bool,
    pdus: u32,
    initiator_name: Option<String>,
    target: Option<Arc<ExportedTarget>>,
    discovery: bool,
    params: text::Params,
    declared_limits: bool,
    stat_sn: u32,
    tsih: u16,
    challenge: [u8; 17],
}

impl Login {
    /// `exports` are the targets a normal session may name; `discovery_chap` what a discovery
    /// session must prove (a normal session proves its target's [`ExportedTarget::chap`]).
    /// `tsih` is the session handle to hand out; `challenge` the random CHAP identifier byte
    /// and challenge to use if CHAP is negotiated.
    pub fn new(
        peer: IpAddr,
        exports: Arc<Exports>,
        discovery_chap: Option<Arc<ChapConfig>>,
        tsih: u16,
        challenge: [u8; 17],
    ) -> Login {
        Login {
            peer,
            exports,
            chap: discovery_chap,
            stage: Stage::Security,
            auth: Auth::Start,
            text: TextBuffer::default(),
            first: true,
            pdus: 0,
            initiator_name: None,
            target: None,
            discovery: false,
            params: text::Params::default(),
            declared_limits: false,
            stat_sn: 1,
            tsih,
            challenge,
        }
    }

    /// Process one Login Request.
    pub fn step(&mut self, req: &LoginRequest, data: &[u8]) -> Step {
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return self.refuse(req, status::INITIATOR_ERROR, "too many login PDUs");
        }
        if req.version_min > 0 {
            return self.refuse(req, status::UNSUPPORTED_VERSION, "unsupported version");
        }
        if req.tsih != 0 {
            return self.refuse(
                req,
                status::SESSION_DOES_NOT_EXIST,
                "adding a connection to a session is not supported",
            );
        }
        if self.first && req.csg == Stage::Operational {
            // The initiator skips the security stage (allowed when no authentication is due).
            self.stage = Stage::Operational;
        }
        if req.csg != self.stage || req.csg == Stage::FullFeature {
            return self.refuse(req, status::INVALID_DURING_LOGIN, "unexpected login stage");
        }
        if self.text.push(data).is_err() {
            return self.refuse(req, status::INITIATOR_ERROR, "login text too long");
        }
        if req.cont {
            // More text follows: acknowledge with an empty response (§6.6).
            return Step::Continue(self.response(req, false, Bytes::new()));
        }
        let pairs = match self.text.take() {
            Ok(pairs) => pairs,
            Err(_) => return self.refuse(req, status::INITIATOR_ERROR, "malformed login text"),
        };
        let mut answer: Vec<(String, String)> = Vec::new();

        if self.first {
            self.first = false;
            if let Err((status, why)) = self.leading_keys(&pairs) {
                return self.refuse(req, status, why);
            }
            if self.target.is_some() {
                answer.push(("TargetPortalGroupTag".into(), "1".into()));
            }
            if req.csg == Stage::Operational && self.chap.is_some() {
                return self.refuse(req, status::AUTH_FAILURE, "authentication required");
            }
        }

        let mut chap_keys: Vec<(String, String)> = Vec::new();
        for (key, value) in &pairs {
            match key.as_str() {
                "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias" => {}
                "AuthMethod" => {
                    if self.stage != Stage::Security {
                        answer.push((key.clone(), "Irrelevant".into()));
                        continue;
                    }
                    let ours = if self.chap.is_some() { "CHAP" } else { "None" };
                    let chosen = text::respond(key, value, ours).unwrap_or_default();
                    match chosen.as_str() {
                        "CHAP" => self.auth = Auth::ChapAlgorithm,
                        "None" => self.auth = Auth::NotRequired,
                        _ => {
                            return self.refuse(
                                req,
                                status::AUTH_FAILURE,
                                "no acceptable AuthMethod",
                            )
                        }
                    }
                    answer.push((key.clone(), chosen));
                }
                k if k.starts_with("CHAP_") => chap_keys.push((key.clone(), value.clone())),
                "MaxRecvDataSegmentLength" => {
                    if self.params.set(key, value).is_err() {
                        return self.refuse(
                            req,
                            status::INITIATOR_ERROR,
                            "bad MaxRecvDataSegmentLength",
                        );
                    }
                }
                _ => {
                    if let Some(reply) = text::respond(key, value, &our_value(key)) {
                        if !matches!(reply.as_str(), "Reject" | "NotUnderstood" | "Irrelevant") {
                            // The value is within range (respond checked it).
                            let _ = self.params.set(key, &reply);
                        }
                        answer.push((key.clone(), reply));
                    }
                }
            }
        }

        if self.stage == Stage::Security {
            if let Err(why) = self.chap_step(&chap_keys, &mut answer) {
                return self.refuse(req, status::AUTH_FAILURE, why);
            }
        } else if !chap_keys.is_empty() {
            return self.refuse(
                req,
                status::INVALID_DURING_LOGIN,
                "CHAP keys outside the security stage",
            );
        }

        let mut transit = false;
        if req.transit {
            if req.nsg == Stage::Security
                || (req.csg == Stage::Operational && req.nsg == Stage::Operational)
            {
                return self.refuse(req, status::INVALID_DURING_LOGIN, "invalid next stage");
            }
            transit = match self.stage {
                Stage::Security => match &self.auth {
                    Auth::Authenticated | Auth::NotRequired => true,
                    Auth::Start => self.chap.is_none(),
                    _ => false,
                },
                _ => true,
            };
        }
        // Declare our limit once the operational stage is reached (or skipped).
        let entering_ffp = transit && req.nsg == Stage::FullFeature;
        if !self.declared_limits && (self.stage == Stage::Operational || entering_ffp) {
            self.declared_limits = true;
            answer.push(("MaxRecvDataSegmentLength".into(), MAX_RECV_DATA.to_string()));
        }

        let data = text::encode(&answer);
        if transit {
            let next = req.nsg;
            let resp = self.response_to(req, true, next, data);
            self.stage = next;
            if next == Stage::FullFeature {
                return Step::Done(resp, Box::new(self.negotiated(req)));
            }
            Step::Continue(resp)
        } else {
            Step::Continue(self.response(req, false, data))
        }
    }

    /// The keys of the first request: who is logging in, to what, and whether it may.
    fn leading_keys(&mut self, pairs: &[(String, String)]) -> Result<(), ((u8, u8), &'static str)> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let Some(name) = get("InitiatorName").filter(|n| !n.is_empty()) else {
            return Err((status::MISSING_PARAMETER, "InitiatorName missing"));
        };
        self.initiator_name = Some(name.to_string());
        match get("SessionType").unwrap_or("Normal") {
            "Discovery" => {
                self.discovery = true;
                Ok(())
            }
            "Normal" => {
                let Some(wanted) = get("TargetName") else {
                    return Err((status::MISSING_PARAMETER, "TargetName missing"));
                };
                let target = self
                    .exports
                    .find(wanted)
                    .ok_or((status::NOT_FOUND, "no such target"))?;
                if !target.allow.allows(self.peer) {
                    return Err((
                        status::AUTHORIZATION_FAILURE,
                        "initiator address not allowed",
                    ));
                }
                self.chap = target.chap.clone();
                self.target = Some(target.clone());
                Ok(())
            }
            _ => Err((status::SESSION_TYPE_NOT_SUPPORTED, "unknown SessionType")),
        }
    }

    /// CHAP in the security stage: answer CHAP_A with a challenge, then check CHAP_N/CHAP_R and
    /// answer a mutual challenge.
    fn chap_step(
        &mut self,
        keys: &[(String, String)],
        answer: &mut Vec<(String, String)>,
    ) -> Result<(), &'static str> {
        let get = |k: &str| {
            keys.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let Some(chap) = self.chap.clone() else {
            return if keys.is_empty() {
                Ok(())
            } else {
                Err("CHAP keys without AuthMethod=CHAP")
            };
        };
        match self.auth.clone() {
            Auth::ChapAlgorithm => {
                let Some(algorithms) = get("CHAP_A") else {
                    return if keys.is_empty() {
                        Ok(())
                    } else {
                        Err("CHAP keys before CHAP_A")
                    };
                };
                if !algorithms.split(',').any(|a| a.trim() == "5") {
                    return Err("CHAP_A offers no MD5 (5)");
                }
                let id = self.challenge[0];
                let mut challenge = [0u8; 16];
                challenge.copy_from_slice(&self.challenge[1..]);
                answer.push(("CHAP_A".into(), "5".into()));
                answer.push(("CHAP_I".into(), id.to_string()));
                answer.push(("CHAP_C".into(), format!("0x{}", hex::encode(challenge))));
                self.auth = Auth::ChapResponse { id, challenge };
                Ok(())
            }
            Auth::ChapResponse { id, challenge } => {
                let (Some(user), Some(response)) = (get("CHAP_N"), get("CHAP_R")) else {
                    return Err("CHAP_N and CHAP_R expected");
                };
                let response = decode_binary(response).ok_or("CHAP_R is not a hex value")?;
                let expected = chap_response(id, chap.secret.expose().as_bytes(), &challenge);
                if user != chap.user || !constant_time_eq(&response, &expected) {
                    return Err("CHAP authentication failed");
                }
                match (get("CHAP_I"), get("CHAP_C")) {
                    (None, None) => {}
                    (Some(id), Some(challenge)) => {
                        let Some((name, secret)) = &chap.target else {
                            return Err("mutual CHAP requested but no target credentials set");
                        };
                        let id: u8 = id.parse().map_err(|_| "bad CHAP_I")?;
                        let theirs = decode_binary(challenge).ok_or("CHAP_C is not a hex value")?;
                        if theirs.is_empty() || theirs.len() > 1024 || theirs == self.challenge[1..]
                        {
                            return Err("unacceptable mutual CHAP challenge");
                        }
                        let ours = chap_response(id, secret.expose().as_bytes(), &theirs);
                        answer.push(("CHAP_N".into(), name.clone()));
                        answer.push(("CHAP_R".into(), format!("0x{}", hex::encode(ours))));
                    }
                    _ => return Err("CHAP_I and CHAP_C must come together"),
                }
                self.auth = Auth::Authenticated;
                Ok(())
            }
            Auth::Authenticated | Auth::NotRequired => {
                if keys.is_empty() {
                    Ok(())
                } else {
                    Err("unexpected CHAP keys")
                }
            }
            Auth::Start => {
                if keys.is_empty() {
                    Ok(())
                } else {
                    Err("CHAP keys before AuthMethod")
                }
            }
        }
    }

    fn negotiated(&self, req: &LoginRequest) -> Negotiated {
        use crate::iscsi::text::Digest;
        Negotiated {
            target: self.target.clone(),
            initiator_name: self.initiator_name.clone().unwrap_or_default(),
            header_digest: self.params.header_digest == Digest::Crc32c,
            data_digest: self.params.data_digest == Digest::Crc32c,
            max_xmit_data: self.params.max_xmit_data_segment_length,
            max_burst: self.params.max_burst_length,
            tsih: self.tsih,
            exp_cmd_sn: req.cmd_sn,
            stat_sn: self.stat_sn,
        }
    }

    fn response(&mut self, req: &LoginRequest, transit: bool, data: Bytes) -> Pdu {
        self.response_to(req, transit, Stage::Security, data)
    }

    fn response_to(&mut self, req: &LoginRequest, transit: bool, nsg: Stage, data: Bytes) -> Pdu {
        let final_response = transit && nsg == Stage::FullFeature;
        let resp = LoginResponse {
            transit,
            cont: false,
            csg: req.csg,
            nsg: if transit { nsg } else { Stage::Security },
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih: if final_response { self.tsih } else { 0 },
            itt: req.itt,
            stat_sn: self.stat_sn,
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: req.cmd_sn.wrapping_add(CMD_WINDOW - 1),
            status_class: 0,
            status_detail: 0,
        };
        self.stat_sn = self.stat_sn.wrapping_add(1);
        Pdu::with_data(Bhs::LoginResponse(resp), data)
    }

    fn refuse(&mut self, req: &LoginRequest, (class, detail): (u8, u8), why: &'static str) -> Step {
        let mut pdu = self.response(req, false, Bytes::new());
        if let Bhs::LoginResponse(r) = &mut pdu.bhs {
            r.status_class = class;
            r.status_detail = detail;
        }
        Step::Refused(pdu, why)
    }
}

/// The values this target offers for each negotiable key (§13).
fn our_value(key: &str) -> String {
    let value = match key {
        "HeaderDigest" | "DataDigest" => "CRC32C,None",
        "MaxConnections" => "1",
        "InitialR2T" => "Yes",
        "ImmediateData" => "Yes",
        "MaxBurstLength" => return MAX_BURST.to_string(),
        "FirstBurstLength" => "262144",
        "DefaultTime2Wait" => "2",
        "DefaultTime2Retain" => "0",
        "MaxOutstandingR2T" => "1",
        "DataPDUInOrder" | "DataSequenceInOrder" => "Yes",
        "ErrorRecoveryLevel" => "0",
        "IFMarker" | "OFMarker" => "No",
        _ => "",
    };
    value.to_string()
}

/// A binary value in hex form (§6.1: `0x…`).
fn decode_binary(value: &str) -> Option<Vec<u8>> {
    let hex_digits = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))?;
    if hex_digits.len() > 2048 {
        return None;
    }
    if hex_digits.len() % 2 == 1 {
        hex::decode(format!("0{hex_digits}")).ok()
    } else {
        hex::decode(hex_digits).ok()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::config::AllowList;
    use crate::target::scsi::{DeviceType, LogicalUnit};
    use crate::target::{LunData, MemorySource, Secret};

    const IQN: &str = "iqn.2026-01.test:disk";

    fn target(allow: &[&str], chap: Option<Arc<ChapConfig>>) -> Arc<ExportedTarget> {
        let source = MemorySource::new(Bytes::from(vec![0u8; 4096]), 512);
        Arc::new(ExportedTarget::new(
            IQN.into(),
            LogicalUnit::new(DeviceType::Disk, 4096, "t", "s", IQN),
            LunData::Source(Arc::new(source)),
            AllowList::parse(allow).unwrap(),
            chap,
        ))
    }

    fn chap(mutual: bool) -> Option<Arc<ChapConfig>> {
        Some(Arc::new(ChapConfig {
            user: "alice".into(),
            secret: Secret::new("initiator-secret"),
            target: mutual.then(|| ("mirror".into(), Secret::new("target-secret-x"))),
        }))
    }

    fn login(chap: Option<Arc<ChapConfig>>, allow: &[&str]) -> Login {
        let mut challenge = [0u8; 17];
        challenge[0] = 7;
        challenge[1..].copy_from_slice(&[0xab; 16]);
        let exports = Exports::new(vec![target(allow, chap.clone())]).unwrap();
        Login::new(
            "127.0.0.1".parse().unwrap(),
            Arc::new(exports),
            chap,
            9,
            challenge,
        )
    }

    fn request(csg: Stage, nsg: Stage, transit: bool) -> LoginRequest {
        LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 5,
            cid: 0,
            cmd_sn: 100,
            exp_stat_sn: 0,
        }
    }

    fn keys(pdu: &Pdu) -> Vec<(String, String)> {
        text::parse(&pdu.data).unwrap()
    }

    fn get(pairs: &[(String, String)], key: &str) -> Option<String> {
        pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn status(step: &Step) -> (u8, u8) {
        let pdu = match step {
            Step::Continue(p) | Step::Done(p, _) | Step::Refused(p, _) => p,
        };
        match &pdu.bhs {
            Bhs::LoginResponse(r) => (r.status_class, r.status_detail),
            other => panic!("not a login response: {other:?}"),
        }
    }

    #[test]
    fn anonymous_login_negotiates_and_reaches_full_feature() {
        let mut l = login(None, &[]);
        let data = text::encode(&[
            ("InitiatorName", "iqn.2026-01.test:i"),
            ("TargetName", IQN),
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("MaxBurstLength", "1048576"),
            ("ErrorRecoveryLevel", "2"),
            ("X-vendor-key", "1"),
        ]);
        let step = l.step(
            &request(Stage::Operational, Stage::FullFeature, true),
            &data,
        );
        let Step::Done(pdu, negotiated) = step else {
            panic!("expected Done, got {step:?}")
        };
        let Bhs::LoginResponse(r) = &pdu.bhs else {
            panic!()
        };
        assert!(r.transit && r.nsg == Stage::FullFeature);
        assert_eq!((r.tsih, r.itt, r.exp_cmd_sn), (9, 5, 100));
        assert_eq!(r.max_cmd_sn, 100 + CMD_WINDOW - 1);
        let k = keys(&pdu);
        assert_eq!(get(&k, "HeaderDigest").as_deref(), Some("CRC32C"));
        assert_eq!(get(&k, "DataDigest").as_deref(), Some("None"));
        assert_eq!(get(&k, "ErrorRecoveryLevel").as_deref(), Some("0"));
        assert_eq!(get(&k, "MaxBurstLength").as_deref(), Some("1048576"));
        assert_eq!(get(&k, "X-vendor-key").as_deref(), Some("NotUnderstood"));
        assert_eq!(get(&k, "TargetPortalGroupTag").as_deref(), Some("1"));
        assert_eq!(
            get(&k, "MaxRecvDataSegmentLength"),
            Some(MAX_RECV_DATA.to_string())
        );
        assert!(negotiated.header_digest && !negotiated.data_digest);
        assert_eq!(negotiated.max_xmit_data, 65536);
        assert_eq!(negotiated.exp_cmd_sn, 100);
    }

    #[test]
    fn refusals_carry_the_right_status() {
        let first = |l: &mut Login, pairs: &[(&str, &str)]| {
            l.step(
                &request(Stage::Operational, Stage::FullFeature, true),
                &text::encode(pairs),
            )
        };
        let step = first(&mut login(None, &[]), &[("TargetName", IQN)]);
        assert_eq!(status(&step), (2, 0x07), "InitiatorName missing");
        let step = first(
            &mut login(None, &[]),
            &[("InitiatorName", "i"), ("TargetName", "iqn.nope:x")],
        );
        assert_eq!(status(&step), (2, 0x03), "no such target");
        let step = first(
            &mut login(None, &["10.0.0.0/8"]),
            &[("InitiatorName", "i"), ("TargetName", IQN)],
        );
        assert_eq!(status(&step), (2, 0x02), "masked");
        let step = first(
            &mut login(chap(false), &[]),
            &[("InitiatorName", "i"), ("TargetName", IQN)],
        );
        assert_eq!(
            status(&step),
            (2, 0x01),
            "CHAP required, security stage skipped"
        );
        let mut l = login(None, &[]);
        let mut req = request(Stage::Operational, Stage::FullFeature, true);
        req.version_min = 1;
        assert_eq!(status(&l.step(&req, b"")), (2, 0x05));
    }

    #[test]
    fn continued_text_is_acknowledged_then_joined() {
        let mut l = login(None, &[]);
        let mut req = request(Stage::Operational, Stage::FullFeature, true);
        req.cont = true;
        let step = l.step(&req, b"InitiatorName=iqn.2026-01.test:i\0Target");
        let Step::Continue(ack) = step else {
            panic!("expected an acknowledgement")
        };
        assert!(ack.data.is_empty());
        req.cont = false;
        let step = l.step(&req, format!("Name={IQN}\0").as_bytes());
        assert!(matches!(step, Step::Done(..)), "{step:?}");
    }

    /// One-way and mutual CHAP, the initiator's side computed here.
    #[test]
    fn chap_checks_the_response_and_answers_a_mutual_challenge() {
        for mutual in [false, true] {
            let mut l = login(chap(mutual), &[]);
            let sec = |transit| request(Stage::Security, Stage::Operational, transit);
            let step = l.step(
                &sec(false),
                &text::encode(&[
                    ("InitiatorName", "iqn.2026-01.test:i"),
                    ("TargetName", IQN),
                    ("AuthMethod", "CHAP,None"),
                ]),
            );
            let Step::Continue(pdu) = step else { panic!() };
            assert_eq!(get(&keys(&pdu), "AuthMethod").as_deref(), Some("CHAP"));
            let step = l.step(&sec(false), &text::encode(&[("CHAP_A", "7,5")]));
            let Step::Continue(pdu) = step else { panic!() };
            let k = keys(&pdu);
            assert_eq!(get(&k, "CHAP_A").as_deref(), Some("5"));
            let id: u8 = get(&k, "CHAP_I").unwrap().parse().unwrap();
            let challenge = decode_binary(&get(&k, "CHAP_C").unwrap()).unwrap();
            let response = chap_response(id, b"initiator-secret", &challenge);
            let mut pairs = vec![
                ("CHAP_N".to_string(), "alice".to_string()),
                ("CHAP_R".to_string(), format!("0x{}", hex::encode(response))),
            ];
            let my_challenge = [0x11u8; 16];
            if mutual {
                pairs.push(("CHAP_I".into(), "42".into()));
                pairs.push(("CHAP_C".into(), format!("0x{}", hex::encode(my_challenge))));
            }
            let step = l.step(&sec(true), &text::encode(&pairs));
            let Step::Continue(pdu) = step else {
                panic!("{step:?}")
            };
            let Bhs::LoginResponse(r) = &pdu.bhs else {
                panic!()
            };
            assert!(r.transit && r.nsg == Stage::Operational);
            let k = keys(&pdu);
            if mutual {
                let expect = chap_response(42, b"target-secret-x", &my_challenge);
                assert_eq!(get(&k, "CHAP_N").as_deref(), Some("mirror"));
                assert_eq!(
                    get(&k, "CHAP_R"),
                    Some(format!("0x{}", hex::encode(expect)))
                );
            } else {
                assert_eq!(get(&k, "CHAP_R"), None);
            }
        }
    }

    #[test]
    fn a_wrong_chap_response_is_an_authentication_failure() {
        let mut l = login(chap(false), &[]);
        let sec = request(Stage::Security, Stage::Operational, false);
        l.step(
            &sec,
            &text::encode(&[
                ("InitiatorName", "i"),
                ("TargetName", IQN),
                ("AuthMethod", "CHAP"),
                ("CHAP_A", "5"),
            ]),
        );
        let step = l.step(
            &sec,
            &text::encode(&[
                ("CHAP_N", "alice"),
                ("CHAP_R", "0x00112233445566778899aabbccddeeff"),
            ]),
        );
        assert_eq!(status(&step), (2, 0x01));
        // A reflected challenge (our own, sent back) is refused too.
        let mut l = login(chap(true), &[]);
        l.step(
            &sec,
            &text::encode(&[
                ("InitiatorName", "i"),
                ("TargetName", IQN),
                ("AuthMethod", "CHAP"),
                ("CHAP_A", "5"),
            ]),
        );
        let response = chap_response(7, b"initiator-secret", &[0xab; 16]);
        let step = l.step(
            &sec,
            &text::encode(&[
                ("CHAP_N", "alice"),
                ("CHAP_R", &format!("0x{}", hex::encode(response))),
                ("CHAP_I", "7"),
                ("CHAP_C", &format!("0x{}", hex::encode([0xab; 16]))),
            ]),
        );
        assert_eq!(status(&step), (2, 0x01));
    }
}
