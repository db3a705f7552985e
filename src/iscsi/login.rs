//! Login (RFC 7143 §6.3, §11.12–§11.13): the security stage with AuthMethod None or CHAP
//! (§12.1.3, RFC 1994: MD5, one-way and mutual), the operational stage's negotiation (§13), and
//! redirection (status class 1, §11.13.5).
//!
//! Without CHAP the login opens in the operational stage with every key offered and asks for the
//! full feature phase at once (CSG=1, NSG=3, T=1: §6.3 lets operational negotiation start with
//! the first Login Request when no security is proposed), so most targets finish the login in one
//! exchange. [`Opening::Staged`] goes through the security stage first, as CHAP must, for a
//! target that refuses the short way.
//!
//! No I/O: [`Login::start`] gives the first Login Request; [`Login::receive`] takes each Login
//! Response and says what to send next, or that the login is done or redirected.

use md5::{Digest as _, Md5};

use super::pdu::{Bhs, LoginRequest, Pdu, Stage};
use super::text::{self, Params, TextBuffer};

/// A secret that never shows itself in Debug or Display output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// CHAP credentials; mutual CHAP when the target's are given too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: Secret,
    pub target_user: Option<String>,
    pub target_secret: Option<Secret>,
}

impl Chap {
    /// libiscsi's variables: LIBISCSI_CHAP_USERNAME, LIBISCSI_CHAP_PASSWORD and, for mutual CHAP,
    /// LIBISCSI_CHAP_TARGET_USERNAME, LIBISCSI_CHAP_TARGET_PASSWORD.
    pub fn from_env() -> Option<Chap> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Chap> {
        let user = var("LIBISCSI_CHAP_USERNAME")?;
        let secret = var("LIBISCSI_CHAP_PASSWORD")?;
        Some(Chap {
            user,
            secret: Secret(secret),
            target_user: var("LIBISCSI_CHAP_TARGET_USERNAME"),
            target_secret: var("LIBISCSI_CHAP_TARGET_PASSWORD").map(Secret),
        })
    }
}

/// Why a login failed. The texts are what a user sees after "login to … failed: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("authentication failure")]
    Authentication,
    #[error("authentication failure: the target did not prove it knows the mutual CHAP secret")]
    MutualAuthentication,
    #[error("authentication failure: the target requires CHAP and no credentials were given")]
    ChapRequired,
    #[error("authorization failure")]
    Authorization,
    #[error("target not found")]
    NotFound,
    #[error("target removed")]
    Removed,
    #[error("target refused the login (status {class:#04x}/{detail:#04x})")]
    Initiator { class: u8, detail: u8 },
    #[error("target temporarily unavailable (status {class:#04x}/{detail:#04x})")]
    TargetError { class: u8, detail: u8 },
    #[error("redirected without a TargetAddress")]
    BadRedirect,
    #[error("protocol error during login: {0}")]
    Protocol(String),
}

impl From<text::TextError> for LoginError {
    fn from(e: text::TextError) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// What a login is for, and with what.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    pub initiator_name: String,
    /// `None` for a discovery session.
    pub target: Option<String>,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    pub chap: Option<Chap>,
    /// Which header and data digests we offer.
    pub digest: DigestOffer,
    /// The largest data segment we accept.
    pub max_recv_data_segment_length: u32,
    /// The MaxBurstLength we offer.
    pub max_burst_length: u32,
    /// How the first Login Request opens the login (CHAP always takes the security stage).
    pub opening: Opening,
}

/// Which stage the first Login Request is in (RFC 7143 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Opening {
    /// Straight to the operational stage with every key offered, asking for the full feature
    /// phase: one exchange when the target agrees.
    #[default]
    Direct,
    /// The security stage first (AuthMethod), then the operational stage: two exchanges.
    Staged,
}

/// Which header and data digests we offer (§13.1: a list, most preferred first). The default
/// lets the target choose, so one that requires CRC32C and one that refuses it both work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestOffer {
    /// `None,CRC32C`: no digests unless the target wants them.
    #[default]
    Either,
    /// `CRC32C,None` (`digest=crc32c`): CRC32C whenever the target allows it.
    PreferCrc32c,
    /// `None` (`digest=none`): never digests, even if the target then refuses the login.
    NoneOnly,
}

impl DigestOffer {
    /// The value of HeaderDigest and DataDigest in our offer.
    pub fn offer(self) -> &'static str {
        match self {
            Self::Either => "None,CRC32C",
            Self::PreferCrc32c => "CRC32C,None",
            Self::NoneOnly => "None",
        }
    }

    /// `crc32c` or `none` (any case), as in `?digest=`, `ISOMOUNT_DIGEST` and catalogs.
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("crc32c") {
            Some(Self::PreferCrc32c)
        } else if text.eq_ignore_ascii_case("none") {
            Some(Self::NoneOnly)
        } else {
            None
        }
    }

    /// The word [`DigestOffer::parse`] takes, for an explicit choice.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Self::Either => None,
            Self::PreferCrc32c => Some("crc32c"),
            Self::NoneOnly => Some("none"),
        }
    }
}

/// What to do after a Login Response.
#[derive(Debug)]
pub enum LoginStep {
    Send(Pdu),
    Done(LoginOutcome),
    /// Log in at this address instead (`host:port`, TPGT removed).
    Redirect(String),
}

/// A successful login: what the full-feature phase starts from.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub params: Params,
    pub tsih: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
    pub target_alias: Option<String>,
    /// Login Request/Response exchanges it took.
    pub exchanges: u32,
}

enum ChapState {
    /// AuthMethod=CHAP offered; waiting for the target to pick it.
    Offered,
    /// CHAP_A sent; waiting for CHAP_I/CHAP_C.
    AlgorithmSent,
    /// Our CHAP_R sent (and, for mutual CHAP, our challenge); waiting for the transition.
    ResponseSent { mutual: Option<(u8, [u8; 16])> },
}

enum State {
    Security(Option<ChapState>),
    Operational { offered: Vec<(String, String)> },
}

/// The login state machine of one connection.
pub struct Login {
    cfg: LoginConfig,
    state: State,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    params: Params,
    text: TextBuffer,
    rounds: u32,
    target_alias: Option<String>,
}

/// Bound on Login Request/Response exchanges.
const MAX_ROUNDS: u32 = 32;
/// Longest CHAP challenge (RFC 7143 §12.1.3).
const MAX_CHALLENGE: usize = 1024;

impl Login {
    /// The state machine and the first Login Request.
    pub fn start(cfg: LoginConfig, itt: u32, cmd_sn: u32) -> (Self, Pdu) {
        let mut keys = vec![
            ("InitiatorName".to_string(), cfg.initiator_name.clone()),
            (
                "SessionType".to_string(),
                if cfg.target.is_some() {
                    "Normal"
                } else {
                    "Discovery"
                }
                .to_string(),
            ),
        ];
        if let Some(target) = &cfg.target {
            keys.push(("TargetName".into(), target.clone()));
        }
        let chap = cfg.chap.is_some();
        let direct = !chap && cfg.opening == Opening::Direct;
        let mut login = Self {
            params: Params {
                max_recv_data_segment_length: cfg.max_recv_data_segment_length,
                ..Params::default()
            },
            cfg,
            state: State::Security(chap.then_some(ChapState::Offered)),
            itt,
            cmd_sn,
            exp_stat_sn: 0,
            text: TextBuffer::default(),
            rounds: 0,
            target_alias: None,
        };
        if direct {
            let offer = login.operational_offer();
            keys.extend(offer.iter().cloned());
            let pdu = login.request(Stage::Operational, Stage::FullFeature, true, &keys);
            login.state = State::Operational { offered: offer };
            return (login, pdu);
        }
        keys.push((
            "AuthMethod".into(),
            if chap { "CHAP" } else { "None" }.to_string(),
        ));
        let pdu = login.request(Stage::Security, Stage::Operational, !chap, &keys);
        (login, pdu)
    }

    fn request(&self, csg: Stage, nsg: Stage, transit: bool, keys: &[(String, String)]) -> Pdu {
        Pdu::with_data(
            Bhs::LoginRequest(LoginRequest {
                transit,
                cont: false,
                csg,
                nsg: if transit { nsg } else { Stage::Security },
                version_max: 0,
                version_min: 0,
                isid: self.cfg.isid,
                tsih: self.cfg.tsih,
                itt: self.itt,
                cid: self.cfg.cid,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            }),
            text::encode(keys),
        )
    }

    fn operational_offer(&self) -> Vec<(String, String)> {
        let digest = self.cfg.digest.offer();
        let mut keys = vec![
            ("HeaderDigest", digest.to_string()),
            ("DataDigest", digest.to_string()),
            (
                "MaxRecvDataSegmentLength",
                self.cfg.max_recv_data_segment_length.to_string(),
            ),
        ];
        if self.cfg.target.is_some() {
            let burst = self.cfg.max_burst_length.to_string();
            keys.extend([
                ("MaxConnections", "1".to_string()),
                ("InitialR2T", "Yes".to_string()),
                ("ImmediateData", "Yes".to_string()),
                ("MaxBurstLength", burst),
                ("FirstBurstLength", "65536".to_string()),
                ("DefaultTime2Wait", "2".to_string()),
                ("DefaultTime2Retain", "0".to_string()),
                ("MaxOutstandingR2T", "1".to_string()),
                ("DataPDUInOrder", "Yes".to_string()),
                ("DataSequenceInOrder", "Yes".to_string()),
                ("ErrorRecoveryLevel", "0".to_string()),
            ]);
        }
        keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Take one Login Response.
    pub fn receive(&mut self, pdu: Pdu) -> Result<LoginStep, LoginError> {
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(LoginError::Protocol(format!(
                "no agreement after {MAX_ROUNDS} exchanges"
            )));
        }
        let Bhs::LoginResponse(resp) = &pdu.bhs else {
            return Err(LoginError::Protocol(format!(
                "expected a Login Response, got {:?}",
                pdu.opcode()
            )));
        };
        if resp.itt != self.itt {
            return Err(LoginError::Protocol(
                "Login Response for another task".into(),
            ));
        }
        self.exp_stat_sn = resp.stat_sn.wrapping_add(1);
        match resp.status_class {
            0 => {}
            1 => {
                let keys = text::parse(&pdu.data)?;
                let addr = keys
                    .iter()
                    .find(|(k, _)| k == "TargetAddress")
                    .map(|(_, v)| strip_tpgt(v))
                    .ok_or(LoginError::BadRedirect)?;
                return Ok(LoginStep::Redirect(addr));
            }
            2 => {
                return Err(match resp.status_detail {
                    0x01 if self.cfg.chap.is_none() => LoginError::ChapRequired,
                    0x01 => LoginError::Authentication,
                    0x02 => LoginError::Authorization,
                    0x03 => LoginError::NotFound,
                    0x04 => LoginError::Removed,
                    detail => LoginError::Initiator { class: 2, detail },
                })
            }
            class => {
                return Err(LoginError::TargetError {
                    class,
                    detail: resp.status_detail,
                })
            }
        }
        self.text.push(&pdu.data)?;
        if resp.cont {
            // More text follows: ask for it with an empty request (§6.3.3).
            let (csg, nsg) = (resp.csg, resp.nsg);
            return Ok(LoginStep::Send(self.request(csg, nsg, false, &[])));
        }
        let keys = self.text.take()?;
        let tsih = resp.tsih;
        let (transit, csg, nsg) = (resp.transit, resp.csg, resp.nsg);
        let (exp_cmd_sn, max_cmd_sn) = (resp.exp_cmd_sn, resp.max_cmd_sn);
        for (k, v) in &keys {
            if k == "TargetAlias" {
                self.target_alias = Some(v.clone());
            }
        }
        match &mut self.state {
            State::Security(chap) => {
                let chap = chap.take();
                let reply = self.security(chap, &keys)?;
                let authenticated = matches!(self.state, State::Security(None));
                if transit {
                    if !authenticated {
                        return Err(LoginError::Protocol(
                            "target ended the security stage before CHAP completed".into(),
                        ));
                    }
                    return self.next_stage(csg, nsg, tsih, exp_cmd_sn, max_cmd_sn);
                }
                let ready = authenticated
                    || matches!(
                        self.state,
                        State::Security(Some(ChapState::ResponseSent { .. }))
                    );
                Ok(LoginStep::Send(self.request(
                    Stage::Security,
                    Stage::Operational,
                    ready,
                    &reply,
                )))
            }
            State::Operational { offered } => {
                let offered = std::mem::take(offered);
                let reply = self.operational(&offered, &keys)?;
                if transit && nsg == Stage::FullFeature {
                    return self.next_stage(csg, nsg, tsih, exp_cmd_sn, max_cmd_sn);
                }
                self.state = State::Operational { offered };
                Ok(LoginStep::Send(self.request(
                    Stage::Operational,
                    Stage::FullFeature,
                    true,
                    &reply,
                )))
            }
        }
    }

    fn next_stage(
        &mut self,
        csg: Stage,
        nsg: Stage,
        tsih: u16,
        exp_cmd_sn: u32,
        max_cmd_sn: u32,
    ) -> Result<LoginStep, LoginError> {
        match nsg {
            Stage::FullFeature => {
                if csg == Stage::Security {
                    // Straight to full feature from the security stage: RFC defaults apply.
                    self.params.max_recv_data_segment_length = 8192;
                }
                Ok(LoginStep::Done(LoginOutcome {
                    params: self.params.clone(),
                    tsih,
                    cmd_sn: exp_cmd_sn,
                    exp_stat_sn: self.exp_stat_sn,
                    max_cmd_sn,
                    target_alias: self.target_alias.clone(),
                    exchanges: self.rounds,
                }))
            }
            Stage::Operational => {
                let offer = self.operational_offer();
                let pdu = self.request(Stage::Operational, Stage::FullFeature, true, &offer);
                self.state = State::Operational { offered: offer };
                Ok(LoginStep::Send(pdu))
            }
            Stage::Security => Err(LoginError::Protocol(
                "target asked to go back to the security stage".into(),
            )),
        }
    }

    /// Security-stage keys: AuthMethod and the CHAP exchange. Leaves `self.state` at
    /// `Security(None)` once authentication (if any) is complete.
    fn security(
        &mut self,
        chap: Option<ChapState>,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String)>, LoginError> {
        let get = |name: &str| {
            keys.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(method) = get("AuthMethod") {
            match (method, &chap) {
                ("None", None) => {}
                ("CHAP", Some(ChapState::Offered)) => {}
                (_, None) => return Err(LoginError::ChapRequired),
                _ => {
                    return Err(LoginError::Protocol(format!(
                        "target answered AuthMethod={method} to our CHAP offer"
                    )))
                }
            }
        }
        let Some(creds) = self.cfg.chap.clone() else {
            self.state = State::Security(None);
            return Ok(Vec::new());
        };
        match chap {
            None => {
                self.state = State::Security(None);
                Ok(Vec::new())
            }
            Some(ChapState::Offered) => {
                if get("AuthMethod") != Some("CHAP") {
                    return Err(LoginError::Protocol(
                        "target did not choose an AuthMethod".into(),
                    ));
                }
                self.state = State::Security(Some(ChapState::AlgorithmSent));
                Ok(vec![("CHAP_A".into(), "5".into())])
            }
            Some(ChapState::AlgorithmSent) => {
                if get("CHAP_A") != Some("5") {
                    return Err(LoginError::Protocol(
                        "target did not accept CHAP MD5".into(),
                    ));
                }
                let id = get("CHAP_I")
                    .and_then(text::parse_number)
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(|| LoginError::Protocol("missing or bad CHAP_I".into()))?;
                let challenge = get("CHAP_C")
                    .and_then(decode_binary)
                    .filter(|c| !c.is_empty() && c.len() <= MAX_CHALLENGE)
                    .ok_or_else(|| LoginError::Protocol("missing or bad CHAP_C".into()))?;
                let response = chap_response(id, creds.secret.expose().as_bytes(), &challenge);
                let mut reply = vec![
                    ("CHAP_N".to_string(), creds.user.clone()),
                    ("CHAP_R".to_string(), format!("0x{}", hex::encode(response))),
                ];
                let mutual = match creds.target_secret {
                    Some(_) => {
                        let our_id: u8 = rand::random();
                        let mut our_challenge: [u8; 16] = rand::random();
                        if our_challenge[..] == challenge[..] {
                            our_challenge[0] ^= 0xff;
                        }
                        reply.push(("CHAP_I".into(), our_id.to_string()));
                        reply.push(("CHAP_C".into(), format!("0x{}", hex::encode(our_challenge))));
                        Some((our_id, our_challenge))
                    }
                    None => None,
                };
                self.state = State::Security(Some(ChapState::ResponseSent { mutual }));
                Ok(reply)
            }
            Some(ChapState::ResponseSent { mutual: None }) => {
                self.state = State::Security(None);
                Ok(Vec::new())
            }
            Some(ChapState::ResponseSent {
                mutual: Some((id, challenge)),
            }) => {
                let secret = creds
                    .target_secret
                    .as_ref()
                    .map(Secret::expose)
                    .unwrap_or("");
                let want = chap_response(id, secret.as_bytes(), &challenge);
                let got = get("CHAP_R").and_then(decode_binary);
                let name_ok = match (&creds.target_user, get("CHAP_N")) {
                    (Some(expected), Some(name)) => expected == name,
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                if !name_ok || got.as_deref() != Some(&want[..]) {
                    return Err(LoginError::MutualAuthentication);
                }
                self.state = State::Security(None);
                Ok(Vec::new())
            }
        }
    }

    /// Operational-stage keys: results of our offers, and answers to the target's own offers.
    fn operational(
        &mut self,
        offered: &[(String, String)],
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String)>, LoginError> {
        let mut reply = Vec::new();
        for (key, value) in keys {
            if let Some((_, ours)) = offered.iter().find(|(k, _)| k == key) {
                if let Some(result) = text::accept(key, ours, value)? {
                    self.params.set(key, &result)?;
                }
                continue;
            }
            match text::rule(key) {
                Some(text::Rule::Declarative) => self.params.set(key, value)?,
                _ => {
                    let ours = self.our_value(key);
                    if let Some(answer) = text::respond(key, value, &ours) {
                        if answer != "NotUnderstood" && answer != "Reject" {
                            self.params.set(key, &answer)?;
                        }
                        reply.push((key.clone(), answer));
                    }
                }
            }
        }
        Ok(reply)
    }

    /// What we would have offered for a key the target proposes on its own.
    fn our_value(&self, key: &str) -> String {
        self.operational_offer()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| match key {
                "IFMarker" | "OFMarker" => "No".to_string(),
                _ => String::new(),
            })
    }
}

/// `host:port,tpgt` → `host:port`.
pub fn strip_tpgt(address: &str) -> String {
    match address.rsplit_once(',') {
        Some((addr, tpgt)) if tpgt.bytes().all(|b| b.is_ascii_digit()) => addr.to_string(),
        _ => address.to_string(),
    }
}

/// CHAP response (RFC 1994 §4.1): MD5 over the identifier, the secret and the challenge.
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update([id]);
    md5.update(secret);
    md5.update(challenge);
    md5.finalize().into()
}

/// A binary value (§6.1): `0x` hexadecimal or `0b` base64.
pub fn decode_binary(value: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    if let Some(h) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        let padded;
        let h = if h.len() % 2 == 1 {
            padded = format!("0{h}");
            padded.as_str()
        } else {
            h
        };
        hex::decode(h).ok()
    } else if let Some(b) = value
        .strip_prefix("0b")
        .or_else(|| value.strip_prefix("0B"))
    {
        base64::engine::general_purpose::STANDARD.decode(b).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::LoginResponse;

    fn cfg(chap: Option<Chap>) -> LoginConfig {
        LoginConfig {
            initiator_name: "iqn.2026-11.org.example:test".into(),
            target: Some("iqn.2026-11.org.example:disk".into()),
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            cid: 0,
            chap,
            digest: DigestOffer::Either,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 16_776_192,
            opening: Opening::Staged,
        }
    }

    fn response(transit: bool, csg: Stage, nsg: Stage, stat_sn: u32, keys: &[(&str, &str)]) -> Pdu {
        Pdu::with_data(
            Bhs::LoginResponse(LoginResponse {
                transit,
                cont: false,
                csg,
                nsg,
                version_max: 0,
                version_active: 0,
                isid: [0x80, 0, 0, 0, 0, 1],
                tsih: if transit && nsg == Stage::FullFeature {
                    5
                } else {
                    0
                },
                itt: 1,
                stat_sn,
                exp_cmd_sn: 1,
                max_cmd_sn: 32,
                status_class: 0,
                status_detail: 0,
            }),
            text::encode(keys),
        )
    }

    fn status(class: u8, detail: u8, keys: &[(&str, &str)]) -> Pdu {
        let mut pdu = response(false, Stage::Security, Stage::Security, 0, keys);
        if let Bhs::LoginResponse(r) = &mut pdu.bhs {
            r.status_class = class;
            r.status_detail = detail;
        }
        pdu
    }

    fn value(pdu: &Pdu, key: &str) -> Option<String> {
        text::parse(&pdu.data)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn secrets_are_redacted() {
        let chap = Chap {
            user: "u".into(),
            secret: Secret::new("hunter2hunter2"),
            target_user: None,
            target_secret: Some(Secret::new("other-secret")),
        };
        let shown = format!("{chap:?} {}", chap.secret);
        assert!(!shown.contains("hunter2") && !shown.contains("other-secret"));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn chap_from_env_vars() {
        let vars = |name: &str| match name {
            "LIBISCSI_CHAP_USERNAME" => Some("alice".to_string()),
            "LIBISCSI_CHAP_PASSWORD" => Some("s3cret".to_string()),
            _ => None,
        };
        let chap = Chap::from_vars(vars).unwrap();
        assert_eq!(chap.user, "alice");
        assert_eq!(chap.secret.expose(), "s3cret");
        assert!(chap.target_secret.is_none());
        assert!(Chap::from_vars(|_| None).is_none());
    }

    #[test]
    fn anonymous_login_negotiates_operational_keys() {
        let (mut login, first) = Login::start(cfg(None), 1, 1);
        assert_eq!(value(&first, "AuthMethod").as_deref(), Some("None"));
        assert_eq!(value(&first, "SessionType").as_deref(), Some("Normal"));
        let Bhs::LoginRequest(req) = &first.bhs else {
            panic!()
        };
        assert!(req.transit);
        let step = login
            .receive(response(
                true,
                Stage::Security,
                Stage::Operational,
                7,
                &[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")],
            ))
            .unwrap();
        let LoginStep::Send(op) = step else {
            panic!("{step:?}")
        };
        assert_eq!(value(&op, "ErrorRecoveryLevel").as_deref(), Some("0"));
        let Bhs::LoginRequest(req) = &op.bhs else {
            panic!()
        };
        assert_eq!(req.exp_stat_sn, 8);
        let step = login
            .receive(response(
                true,
                Stage::Operational,
                Stage::FullFeature,
                8,
                &[
                    ("HeaderDigest", "None"),
                    ("DataDigest", "None"),
                    ("MaxRecvDataSegmentLength", "65536"),
                    ("MaxBurstLength", "262144"),
                    ("ImmediateData", "No"),
                    ("X-com.example.Thing", "1"),
                ],
            ))
            .unwrap();
        let LoginStep::Done(done) = step else {
            panic!("{step:?}")
        };
        assert_eq!(done.tsih, 5);
        assert_eq!(done.exp_stat_sn, 9);
        assert_eq!(done.params.max_xmit_data_segment_length, 65536);
        assert_eq!(done.params.max_recv_data_segment_length, 262_144);
        assert_eq!(done.params.max_burst_length, 262_144);
        assert!(!done.params.immediate_data);
    }

    /// Without CHAP the first request is already in the operational stage with every key, and
    /// asks for the full feature phase: one exchange when the target agrees (RFC 7143 §6.3).
    #[test]
    fn a_direct_login_takes_one_exchange() {
        let direct = LoginConfig {
            opening: Opening::Direct,
            ..cfg(None)
        };
        let (mut login, first) = Login::start(direct.clone(), 1, 1);
        let Bhs::LoginRequest(req) = &first.bhs else {
            panic!()
        };
        assert!(req.transit);
        assert_eq!((req.csg, req.nsg), (Stage::Operational, Stage::FullFeature));
        assert_eq!(value(&first, "AuthMethod"), None);
        assert_eq!(
            value(&first, "TargetName").as_deref(),
            Some("iqn.2026-11.org.example:disk")
        );
        assert_eq!(
            value(&first, "HeaderDigest").as_deref(),
            Some("None,CRC32C")
        );
        assert_eq!(value(&first, "MaxBurstLength").as_deref(), Some("16776192"));
        let step = login
            .receive(response(
                true,
                Stage::Operational,
                Stage::FullFeature,
                3,
                &[
                    ("TargetPortalGroupTag", "1"),
                    ("HeaderDigest", "CRC32C"),
                    ("DataDigest", "None"),
                    ("MaxRecvDataSegmentLength", "65536"),
                    ("MaxBurstLength", "262144"),
                ],
            ))
            .unwrap();
        let LoginStep::Done(done) = step else {
            panic!("{step:?}")
        };
        assert_eq!(done.exchanges, 1);
        assert_eq!((done.tsih, done.exp_stat_sn), (5, 4));
        assert_eq!(done.params.header_digest.as_str(), "CRC32C");
        assert_eq!(done.params.max_xmit_data_segment_length, 65536);
        assert_eq!(done.params.max_burst_length, 262_144);

        // A target that proposes a key of its own stays in the stage: answered, then done.
        let (mut login, _) = Login::start(direct.clone(), 1, 1);
        let step = login
            .receive(response(
                false,
                Stage::Operational,
                Stage::Operational,
                3,
                &[("OFMarker", "Yes")],
            ))
            .unwrap();
        let LoginStep::Send(answer) = step else {
            panic!("{step:?}")
        };
        assert_eq!(value(&answer, "OFMarker").as_deref(), Some("No"));
        let step = login
            .receive(response(
                true,
                Stage::Operational,
                Stage::FullFeature,
                4,
                &[],
            ))
            .unwrap();
        assert!(matches!(
            step,
            LoginStep::Done(LoginOutcome { exchanges: 2, .. })
        ));

        // CHAP needs the security stage whatever the opening says.
        let chap = Chap {
            user: "u".into(),
            secret: Secret::new("s"),
            target_user: None,
            target_secret: None,
        };
        let (_, first) = Login::start(
            LoginConfig {
                chap: Some(chap),
                ..direct.clone()
            },
            1,
            1,
        );
        let Bhs::LoginRequest(req) = &first.bhs else {
            panic!()
        };
        assert_eq!(req.csg, Stage::Security);
        assert_eq!(value(&first, "AuthMethod").as_deref(), Some("CHAP"));

        // A target that wants CHAP refuses the direct login: named as such.
        let (mut login, _) = Login::start(direct, 1, 1);
        assert_eq!(
            login.receive(status(2, 1, &[])).unwrap_err(),
            LoginError::ChapRequired
        );
    }

    /// The digest offer goes out as a list the target picks from (§13.1), and its answer counts.
    #[test]
    fn digest_offers_and_the_targets_choice() {
        for (offer, wire, answer) in [
            (DigestOffer::Either, "None,CRC32C", "CRC32C"),
            (DigestOffer::PreferCrc32c, "CRC32C,None", "None"),
            (DigestOffer::NoneOnly, "None", "None"),
        ] {
            let mut c = cfg(None);
            c.digest = offer;
            let (mut login, _) = Login::start(c, 1, 1);
            let LoginStep::Send(op) = login
                .receive(response(true, Stage::Security, Stage::Operational, 0, &[]))
                .unwrap()
            else {
                panic!()
            };
            assert_eq!(value(&op, "HeaderDigest").as_deref(), Some(wire));
            assert_eq!(value(&op, "DataDigest").as_deref(), Some(wire));
            let step = login
                .receive(response(
                    true,
                    Stage::Operational,
                    Stage::FullFeature,
                    1,
                    &[("HeaderDigest", answer), ("DataDigest", answer)],
                ))
                .unwrap();
            let LoginStep::Done(done) = step else {
                panic!("{step:?}")
            };
            assert_eq!(done.params.header_digest.as_str(), answer);
        }
        // An answer we did not offer is refused.
        let mut c = cfg(None);
        c.digest = DigestOffer::NoneOnly;
        let (mut login, _) = Login::start(c, 1, 1);
        login
            .receive(response(true, Stage::Security, Stage::Operational, 0, &[]))
            .unwrap();
        assert!(login
            .receive(response(
                true,
                Stage::Operational,
                Stage::FullFeature,
                1,
                &[("HeaderDigest", "CRC32C")],
            ))
            .is_err());
        assert_eq!(
            DigestOffer::parse("CRC32C"),
            Some(DigestOffer::PreferCrc32c)
        );
        assert_eq!(DigestOffer::parse("none"), Some(DigestOffer::NoneOnly));
        assert_eq!(DigestOffer::parse("md5"), None);
    }

    #[test]
    fn target_proposed_keys_are_answered() {
        let (mut login, _) = Login::start(cfg(None), 1, 1);
        login
            .receive(response(true, Stage::Security, Stage::Operational, 0, &[]))
            .unwrap();
        let step = login
            .receive(response(
                false,
                Stage::Operational,
                Stage::Security,
                1,
                &[("IFMarker", "Yes"), ("X-vendor", "1")],
            ))
            .unwrap();
        let LoginStep::Send(pdu) = step else { panic!() };
        assert_eq!(value(&pdu, "IFMarker").as_deref(), Some("No"));
        assert_eq!(value(&pdu, "X-vendor").as_deref(), Some("NotUnderstood"));
    }

    /// One-way and mutual CHAP with a 1024-byte base64 challenge and a short hex one.
    #[test]
    fn chap_one_way_and_mutual() {
        for mutual in [false, true] {
            let chap = Chap {
                user: "user1".into(),
                secret: Secret::new("initiator-secret"),
                target_user: mutual.then(|| "target1".to_string()),
                target_secret: mutual.then(|| Secret::new("target-secret-1")),
            };
            let (mut login, first) = Login::start(cfg(Some(chap)), 1, 1);
            assert_eq!(value(&first, "AuthMethod").as_deref(), Some("CHAP"));
            let LoginStep::Send(alg) = login
                .receive(response(
                    false,
                    Stage::Security,
                    Stage::Security,
                    0,
                    &[("AuthMethod", "CHAP")],
                ))
                .unwrap()
            else {
                panic!()
            };
            assert_eq!(value(&alg, "CHAP_A").as_deref(), Some("5"));
            use base64::Engine as _;
            let challenge: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
            let encoded = if mutual {
                format!(
                    "0b{}",
                    base64::engine::general_purpose::STANDARD.encode(&challenge)
                )
            } else {
                format!("0x{}", hex::encode(&challenge))
            };
            let LoginStep::Send(resp) = login
                .receive(response(
                    false,
                    Stage::Security,
                    Stage::Security,
                    1,
                    &[("CHAP_A", "5"), ("CHAP_I", "42"), ("CHAP_C", &encoded)],
                ))
                .unwrap()
            else {
                panic!()
            };
            let want = chap_response(42, b"initiator-secret", &challenge);
            assert_eq!(
                value(&resp, "CHAP_R"),
                Some(format!("0x{}", hex::encode(want)))
            );
            assert_eq!(value(&resp, "CHAP_N").as_deref(), Some("user1"));
            let Bhs::LoginRequest(req) = &resp.bhs else {
                panic!()
            };
            assert!(req.transit);
            let mut answer = Vec::new();
            let target_r;
            if mutual {
                let id = value(&resp, "CHAP_I").unwrap().parse::<u8>().unwrap();
                let c = decode_binary(&value(&resp, "CHAP_C").unwrap()).unwrap();
                target_r = format!(
                    "0x{}",
                    hex::encode(chap_response(id, b"target-secret-1", &c))
                );
                answer.push(("CHAP_N", "target1"));
                answer.push(("CHAP_R", target_r.as_str()));
            }
            let step = login
                .receive(response(
                    true,
                    Stage::Security,
                    Stage::Operational,
                    2,
                    &answer,
                ))
                .unwrap();
            assert!(matches!(step, LoginStep::Send(_)), "{step:?}");
        }
    }

    #[test]
    fn mutual_chap_with_a_wrong_target_response_fails() {
        let chap = Chap {
            user: "u".into(),
            secret: Secret::new("a"),
            target_user: None,
            target_secret: Some(Secret::new("b")),
        };
        let (mut login, _) = Login::start(cfg(Some(chap)), 1, 1);
        login
            .receive(response(
                false,
                Stage::Security,
                Stage::Security,
                0,
                &[("AuthMethod", "CHAP")],
            ))
            .unwrap();
        login
            .receive(response(
                false,
                Stage::Security,
                Stage::Security,
                1,
                &[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x0102")],
            ))
            .unwrap();
        let err = login
            .receive(response(
                true,
                Stage::Security,
                Stage::Operational,
                2,
                &[
                    ("CHAP_N", "t"),
                    ("CHAP_R", "0x00112233445566778899aabbccddeeff"),
                ],
            ))
            .unwrap_err();
        assert_eq!(err, LoginError::MutualAuthentication);
        assert!(err.to_string().contains("authentication"));
    }

    #[test]
    fn failures_and_redirects() {
        let (mut login, _) = Login::start(cfg(None), 1, 1);
        assert_eq!(
            login.receive(status(2, 1, &[])).unwrap_err(),
            LoginError::ChapRequired
        );
        let chap = Chap {
            user: "u".into(),
            secret: Secret::new("wrong"),
            target_user: None,
            target_secret: None,
        };
        let (mut login, _) = Login::start(cfg(Some(chap)), 1, 1);
        let err = login.receive(status(2, 1, &[])).unwrap_err();
        assert_eq!(err.to_string(), "authentication failure");
        let (mut login, _) = Login::start(cfg(None), 1, 1);
        assert_eq!(
            login.receive(status(2, 3, &[])).unwrap_err(),
            LoginError::NotFound
        );
        let (mut login, _) = Login::start(cfg(None), 1, 1);
        assert!(matches!(
            login.receive(status(3, 1, &[])).unwrap_err(),
            LoginError::TargetError { class: 3, .. }
        ));
        let (mut login, _) = Login::start(cfg(None), 1, 1);
        let step = login
            .receive(status(1, 1, &[("TargetAddress", "127.0.0.2:3261,1")]))
            .unwrap();
        assert!(matches!(step, LoginStep::Redirect(a) if a == "127.0.0.2:3261"));
        let (mut login, _) = Login::start(cfg(None), 1, 1);
        assert_eq!(
            login.receive(status(1, 1, &[])).unwrap_err(),
            LoginError::BadRedirect
        );
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0a0B"), Some(vec![0x0a, 0x0b]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("1234"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(strip_tpgt("[::1]:3260,1"), "[::1]:3260");
        assert_eq!(strip_tpgt("host:3260"), "host:3260");
    }
}
