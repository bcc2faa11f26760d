//! Inbound call routing: trunk, then dispatch rule, then room, with LiveKit's
//! semantics (livekit/protocol `sip/sip.go`: `MatchTrunk`,
//! `MatchDispatchRule`, `EvaluateDispatchRule`).
//!
//! Where it sits: the SIP endpoint calls [`match_trunk`] for a new INVITE (after
//! parsing, before digest authentication, which needs the trunk's
//! credentials), then [`dispatch`] to learn the room, whose name decides the
//! owner shard. A [`Refusal`] maps to the final response the endpoint sends.
//!
//! Pure functions over the configuration: no clock, no IO; the random room
//! suffix comes from the caller's RNG so tests (and shards) are deterministic.

pub mod dispatch;
pub mod trunk;

use std::net::IpAddr;

pub use dispatch::{
    dispatch, dispatch_with_pin, select_rule, Dispatch, DispatchRule, PinEntry, RuleKind,
};
pub use trunk::{
    match_trunk, numbers_match, AddressRange, AddressRangeError, AuthChallenge, Trunk, TrunkAuth,
};

/// What routing needs to know of a new INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboundCall<'a> {
    /// Where the INVITE came from (the transport source, not a header).
    pub source: IpAddr,
    /// From user part, e.g. `+15550123`.
    pub caller: &'a str,
    /// Request-URI (else To) user part, e.g. `+15550100`.
    pub callee: &'a str,
    pub call_id: &'a str,
}

/// Why a call is not routed; each maps to the SIP final response livekit-sip
/// gives in the same case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// No trunk serves the called number (livekit-sip: 404 "Does not match
    /// any SIP Trunks").
    #[error("no trunk serves the called number")]
    NoTrunk,
    /// Trunks serve the number, but none allows the source address.
    /// (livekit-sip drops such INVITEs silently as flood; we answer 403 so an
    /// operator's mistake is visible to the sender.)
    #[error("source address not allowed by any trunk for the number")]
    AddressNotAllowed,
    /// Trunks serve the number from this address, but none allows the caller.
    #[error("caller number not allowed by any trunk for the number")]
    CallerNotAllowed,
    /// The trunk matched but no dispatch rule applies (livekit-sip: 404 "Does
    /// not match Trunks or Dispatch Rules").
    #[error("no dispatch rule applies to the call")]
    NoRule,
    /// The caller entered a PIN that no applicable rule has.
    #[error("wrong PIN")]
    WrongPin,
}

impl Refusal {
    /// The SIP status code for the final response (RFC 3261 s21).
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NoTrunk | Refusal::NoRule => 404,
            Refusal::AddressNotAllowed | Refusal::CallerNotAllowed | Refusal::WrongPin => 403,
        }
    }

    /// The reason phrase. Address and caller refusals say only "Forbidden":
    /// a stranger learns nothing about the allow-lists.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoTrunk => "Does not match any SIP Trunks",
            Refusal::NoRule => "Does not match Trunks or Dispatch Rules",
            Refusal::AddressNotAllowed | Refusal::CallerNotAllowed => "Forbidden",
            Refusal::WrongPin => "Wrong PIN",
        }
    }

    /// A stable short name for logs and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoTrunk => "no-trunk",
            Refusal::AddressNotAllowed => "address-not-allowed",
            Refusal::CallerNotAllowed => "caller-not-allowed",
            Refusal::NoRule => "no-rule",
            Refusal::WrongPin => "wrong-pin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_wire_mapping() {
        let cases = [
            (Refusal::NoTrunk, 404, "no-trunk"),
            (Refusal::AddressNotAllowed, 403, "address-not-allowed"),
            (Refusal::CallerNotAllowed, 403, "caller-not-allowed"),
            (Refusal::NoRule, 404, "no-rule"),
            (Refusal::WrongPin, 403, "wrong-pin"),
        ];
        for (r, status, code) in cases {
            assert_eq!(r.status(), status, "{r:?}");
            assert_eq!(r.code(), code);
            assert!(!r.reason().is_empty());
            assert!(r
                .reason()
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' '));
        }
    }
}
