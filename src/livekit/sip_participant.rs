//! How a phone caller appears in a LiveKit room: identity, name, kind and
//! attributes, as livekit-sip presents an inbound caller, so agents written
//! for LiveKit (`participant.kind == PARTICIPANT_KIND_SIP`,
//! `participant.attributes["sip.phoneNumber"]`) work unchanged.
//!
//! Where it sits: when the SIP side accepts an INVITE into a room (trunk and
//! dispatch rule matched, see `routing`), the owner shard builds a
//! [`SipParticipant`] from the call's facts ([`InboundCall`]) and the room
//! announces it in participant updates; each call state change
//! ([`SipParticipant::set_status`]) is an attribute change, hence a new
//! participant version. RFC 4733 digits cross into the room as `SipDTMF` data
//! packets ([`dtmf_code`] / [`dtmf_digit`]).
//!
//! What it owns: the naming rules and attribute keys (livekit/protocol
//! `livekit/attrs.go` and `sip/sip.go`, livekit-sip's `callIDFull` and
//! `callTag`), including the "hide phone number" variant. Not the call
//! itself, not the room.
//!
//! Sans-IO, no clock, no randomness: the `sip.callID` value is made by the
//! caller (`ids::new_id(ids::SIP_CALL, ..)`).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::token::TokenKind;

/// Attribute keys (`livekit/attrs.go`; the last two from livekit-sip).
pub mod attr {
    pub const CALL_ID: &str = "sip.callID";
    pub const CALL_ID_FULL: &str = "sip.callIDFull";
    pub const CALL_TAG: &str = "sip.callTag";
    pub const TRUNK_ID: &str = "sip.trunkID";
    pub const RULE_ID: &str = "sip.ruleID";
    pub const PHONE_NUMBER: &str = "sip.phoneNumber";
    pub const TRUNK_PHONE_NUMBER: &str = "sip.trunkPhoneNumber";
    pub const HOSTNAME: &str = "sip.hostname";
    pub const CALL_STATUS: &str = "sip.callStatus";
    /// Prefix of attributes mapped from SIP headers (`sip.h.x-customer-id`).
    pub const HEADER_PREFIX: &str = "sip.h.";
}

/// `sip.callStatus` values ("SIP participant is ready when it reaches
/// active").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallStatus {
    /// Outbound: we are calling out.
    Dialing,
    /// Inbound: the INVITE is accepted, the caller hears ringing.
    Ringing,
    /// Answered by an automaton (IVR, PIN entry) before joining the room.
    Automation,
    /// Media flows.
    Active,
    /// The call has ended.
    Hangup,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Dialing => "dialing",
            CallStatus::Ringing => "ringing",
            CallStatus::Automation => "automation",
            CallStatus::Active => "active",
            CallStatus::Hangup => "hangup",
        }
    }
}

/// The facts of an inbound call that the participant is made from. Plain
/// strings so this module does not depend on the SIP or routing types.
#[derive(Clone, Copy, Debug)]
pub struct InboundCall<'a> {
    /// User part of the From URI: the caller's number.
    pub from_user: &'a str,
    /// Host part of the From URI.
    pub from_host: &'a str,
    /// User part of the To URI: the number called (the trunk's).
    pub to_user: &'a str,
    /// Our LiveKit-style call id (`SCL_...`).
    pub call_id: &'a str,
    /// The SIP Call-ID header.
    pub sip_call_id: &'a str,
    /// Our dialog tag (the To-tag we gave the caller).
    pub call_tag: &'a str,
    /// The matched trunk's id (`ST_...`).
    pub trunk_id: &'a str,
    /// The matched dispatch rule's id (`SDR_...`).
    pub rule_id: &'a str,
    /// The dispatch rule's `attributes`.
    pub rule_attributes: &'a BTreeMap<String, String>,
    /// Attributes mapped from SIP headers (keys already named, e.g.
    /// `sip.h.x-customer-id`, or whatever the trunk's mapping says).
    pub header_attributes: &'a BTreeMap<String, String>,
    /// The rule's `hide_phone_number`: no number in identity, name or
    /// attributes.
    pub hide_phone_number: bool,
}

/// A phone caller as a room participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipParticipant {
    /// `sip_<number>`, or `sip_<16 hex digits of SHA-256(number)>` when hidden.
    pub identity: String,
    /// `Phone <number>`, or `Phone <last 4 digits>` when hidden.
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    status: CallStatus,
}

impl SipParticipant {
    /// The participant for an inbound call, starting at `status` (usually
    /// [`CallStatus::Ringing`]). Attributes are layered as livekit-sip layers
    /// them: the rule's, then the mapped headers, then the `sip.*` facts, so
    /// a rule cannot spoof `sip.phoneNumber`.
    pub fn inbound(call: &InboundCall<'_>, status: CallStatus) -> SipParticipant {
        let mut attributes = call.rule_attributes.clone();
        attributes.extend(
            call.header_attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let mut set = |k: &str, v: &str| {
            if !v.is_empty() {
                attributes.insert(k.to_owned(), v.to_owned());
            }
        };
        set(attr::CALL_ID, call.call_id);
        set(attr::CALL_ID_FULL, call.sip_call_id);
        set(attr::CALL_TAG, call.call_tag);
        set(attr::TRUNK_ID, call.trunk_id);
        set(attr::RULE_ID, call.rule_id);
        let (identity, name) = if call.hide_phone_number {
            // livekit/protocol sip.go: hash the number for the identity, keep
            // its last 4 digits for the name (1 when it is that short).
            let digest = Sha256::digest(call.from_user.as_bytes());
            let mut identity = String::with_capacity(4 + 16);
            identity.push_str("sip_");
            for b in &digest[..8] {
                identity.push(hex_digit(b >> 4));
                identity.push(hex_digit(b & 0xf));
            }
            let keep = if call.from_user.len() <= 4 {
                call.from_user.len().min(1)
            } else {
                4
            };
            (
                identity,
                format!("Phone {}", last_chars(call.from_user, keep)),
            )
        } else {
            set(attr::PHONE_NUMBER, call.from_user);
            set(attr::HOSTNAME, call.from_host);
            set(attr::TRUNK_PHONE_NUMBER, call.to_user);
            (
                format!("sip_{}", call.from_user),
                format!("Phone {}", call.from_user),
            )
        };
        attributes.insert(attr::CALL_STATUS.to_owned(), status.as_str().to_owned());
        SipParticipant {
            identity,
            name,
            attributes,
            status,
        }
    }

    /// Participant kind: SIP.
    pub fn kind(&self) -> TokenKind {
        TokenKind::Sip
    }

    pub fn status(&self) -> CallStatus {
        self.status
    }

    /// Move to `status`; true when it changed (the room then sends a
    /// participant update with a new version).
    pub fn set_status(&mut self, status: CallStatus) -> bool {
        if self.status == status {
            return false;
        }
        self.status = status;
        self.attributes
            .insert(attr::CALL_STATUS.to_owned(), status.as_str().to_owned());
        true
    }
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(n & 0xf)])
}

/// The last `n` characters of `s` (characters, not bytes: a From user part is
/// peer input and may hold any UTF-8).
fn last_chars(s: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    match s.char_indices().rev().nth(n - 1) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}

/// The `SipDTMF.code` of a digit (RFC 4733 s3.2 event codes): `0`-`9` -> 0-9,
/// `*` -> 10, `#` -> 11, `A`-`D` -> 12-15.
pub fn dtmf_code(digit: char) -> Option<u32> {
    match digit {
        '0'..='9' => Some(u32::from(digit) - u32::from('0')),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(u32::from(digit) - u32::from('A') + 12),
        'a'..='d' => Some(u32::from(digit) - u32::from('a') + 12),
        _ => None,
    }
}

/// The digit of an RFC 4733 event code 0-15 (upper-case `A`-`D`).
pub fn dtmf_digit(code: u32) -> Option<char> {
    const DIGITS: &[u8; 16] = b"0123456789*#ABCD";
    DIGITS
        .get(usize::try_from(code).ok()?)
        .map(|&b| char::from(b))
}

/// The digit a `SipDTMF` packet means: its `digit` when that is one valid
/// character, else its `code` (SDKs set both; a client may set either).
pub fn dtmf_from_packet(code: u32, digit: &str) -> Option<char> {
    let mut chars = digit.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if dtmf_code(c).is_some() => Some(c.to_ascii_uppercase()),
        _ => dtmf_digit(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        rule: &'a BTreeMap<String, String>,
        headers: &'a BTreeMap<String, String>,
        hide: bool,
    ) -> InboundCall<'a> {
        InboundCall {
            from_user: "+15550100",
            from_host: "trunk.example.net",
            to_user: "+15550199",
            call_id: "SCL_abcdefghijkm",
            sip_call_id: "a84b4c76e66710@pc33",
            call_tag: "sb0-1f2e",
            trunk_id: "ST_dev",
            rule_id: "SDR_dev",
            rule_attributes: rule,
            header_attributes: headers,
            hide_phone_number: hide,
        }
    }

    #[test]
    fn inbound_caller_looks_like_livekit_sip() {
        let rule = BTreeMap::from([("team".to_owned(), "support".to_owned())]);
        let headers = BTreeMap::from([("sip.h.x-customer".to_owned(), "42".to_owned())]);
        let p = SipParticipant::inbound(&facts(&rule, &headers, false), CallStatus::Ringing);
        assert_eq!(p.identity, "sip_+15550100");
        assert_eq!(p.name, "Phone +15550100");
        assert_eq!(p.kind(), TokenKind::Sip);
        assert_eq!(p.kind().proto_value(), 3);
        let a = &p.attributes;
        assert_eq!(a[attr::CALL_ID], "SCL_abcdefghijkm");
        assert_eq!(a[attr::CALL_ID_FULL], "a84b4c76e66710@pc33");
        assert_eq!(a[attr::CALL_TAG], "sb0-1f2e");
        assert_eq!(a[attr::TRUNK_ID], "ST_dev");
        assert_eq!(a[attr::RULE_ID], "SDR_dev");
        assert_eq!(a[attr::PHONE_NUMBER], "+15550100");
        assert_eq!(a[attr::HOSTNAME], "trunk.example.net");
        assert_eq!(a[attr::TRUNK_PHONE_NUMBER], "+15550199");
        assert_eq!(a[attr::CALL_STATUS], "ringing");
        assert_eq!(a["team"], "support");
        assert_eq!(a["sip.h.x-customer"], "42");
        assert_eq!(a.len(), 11);
    }

    #[test]
    fn a_rule_cannot_spoof_the_sip_facts() {
        let rule = BTreeMap::from([
            (attr::PHONE_NUMBER.to_owned(), "+10000000000".to_owned()),
            (attr::CALL_STATUS.to_owned(), "active".to_owned()),
        ]);
        let none = BTreeMap::new();
        let p = SipParticipant::inbound(&facts(&rule, &none, false), CallStatus::Ringing);
        assert_eq!(p.attributes[attr::PHONE_NUMBER], "+15550100");
        assert_eq!(p.attributes[attr::CALL_STATUS], "ringing");
    }

    #[test]
    fn hidden_number_is_hashed_and_left_out() {
        let none = BTreeMap::new();
        let p = SipParticipant::inbound(&facts(&none, &none, true), CallStatus::Ringing);
        // sha256("+15550100")[..8] in hex, computed independently:
        // python3 -c 'import hashlib;print(hashlib.sha256(b"+15550100").hexdigest()[:16])'
        assert_eq!(p.identity, "sip_602cd7fbbe41688e");
        assert_eq!(p.name, "Phone 0100");
        for k in [attr::PHONE_NUMBER, attr::HOSTNAME, attr::TRUNK_PHONE_NUMBER] {
            assert!(!p.attributes.contains_key(k), "{k}");
        }
        assert!(p.attributes.contains_key(attr::CALL_ID));
    }

    #[test]
    fn hidden_short_or_odd_numbers() {
        let none = BTreeMap::new();
        let mut f = facts(&none, &none, true);
        f.from_user = "123";
        assert_eq!(
            SipParticipant::inbound(&f, CallStatus::Ringing).name,
            "Phone 3"
        );
        f.from_user = "";
        assert_eq!(
            SipParticipant::inbound(&f, CallStatus::Ringing).name,
            "Phone "
        );
        f.from_user = "ünïcødé";
        assert_eq!(
            SipParticipant::inbound(&f, CallStatus::Ringing).name,
            "Phone cødé"
        );
    }

    #[test]
    fn empty_facts_are_left_out() {
        let none = BTreeMap::new();
        let mut f = facts(&none, &none, false);
        f.call_tag = "";
        f.from_host = "";
        let p = SipParticipant::inbound(&f, CallStatus::Ringing);
        assert!(!p.attributes.contains_key(attr::CALL_TAG));
        assert!(!p.attributes.contains_key(attr::HOSTNAME));
    }

    #[test]
    fn status_changes_are_attribute_changes() {
        let none = BTreeMap::new();
        let mut p = SipParticipant::inbound(&facts(&none, &none, false), CallStatus::Ringing);
        assert!(!p.set_status(CallStatus::Ringing));
        assert!(p.set_status(CallStatus::Active));
        assert_eq!(p.attributes[attr::CALL_STATUS], "active");
        assert!(p.set_status(CallStatus::Hangup));
        assert_eq!(p.status(), CallStatus::Hangup);
        assert_eq!(p.attributes[attr::CALL_STATUS], "hangup");
        for s in [
            CallStatus::Dialing,
            CallStatus::Automation,
            CallStatus::Ringing,
            CallStatus::Active,
            CallStatus::Hangup,
        ] {
            assert!(!s.as_str().is_empty());
        }
    }

    #[test]
    fn dtmf_codes_follow_rfc_4733() {
        let all = "0123456789*#ABCD";
        for (code, digit) in all.chars().enumerate() {
            assert_eq!(dtmf_code(digit), Some(code as u32));
            assert_eq!(dtmf_digit(code as u32), Some(digit));
        }
        assert_eq!(dtmf_code('b'), Some(13));
        assert_eq!(dtmf_code('E'), None);
        assert_eq!(dtmf_code(' '), None);
        assert_eq!(dtmf_digit(16), None);
        assert_eq!(dtmf_digit(u32::MAX), None);
    }

    #[test]
    fn dtmf_packets_prefer_the_digit() {
        assert_eq!(dtmf_from_packet(5, "5"), Some('5'));
        assert_eq!(dtmf_from_packet(0, "#"), Some('#'), "digit wins");
        assert_eq!(dtmf_from_packet(11, ""), Some('#'), "code when no digit");
        assert_eq!(dtmf_from_packet(12, "a"), Some('A'));
        assert_eq!(dtmf_from_packet(3, "xx"), Some('3'));
        assert_eq!(dtmf_from_packet(99, "?"), None);
    }
}
