//! Inbound trunks: which carrier (or PBX) an INVITE came from, LiveKit's
//! `SIPInboundTrunkInfo` semantics.
//!
//! Where it sits: first step of routing a new INVITE, after the SIP parser and
//! before digest authentication (the matched trunk holds the credentials) and the
//! dispatch rules. It owns the trunk data (numbers, source address ranges, caller
//! allow-list, credentials, codec preference), the address-range type and the
//! phone-number comparison shared with the dispatch rules.
//!
//! Matching follows `MatchTrunk` in livekit/protocol `sip/sip.go`:
//! 1. a trunk is a candidate only if the source address is in its
//!    `allowed_addresses` and the caller is in its `allowed_numbers` (empty = any);
//! 2. a candidate listing the called number beats a candidate with no `numbers`
//!    (a wildcard trunk).
//!
//! Where LiveKit answers "multiple trunks matched" (a conflict its API refuses
//! to create), we take the first such trunk in file order, and config loading
//! warns about the overlap. Nothing here allocates per call.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::sdp::CodecPrefs;

use super::{InboundCall, Refusal};

/// A source address allow-list entry: `a.b.c.d/nn`, `x:y::/nn`, or a bare
/// address (= /32 or /128). Host bits below the prefix are ignored, as Go's
/// `netip.Prefix.Contains` does for LiveKit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddressRange {
    /// The network address, host bits cleared.
    network: IpAddr,
    prefix_len: u8,
}

/// Why an `allowed_addresses` entry could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressRangeError {
    #[error("not an IP address (host names are not supported)")]
    BadAddress,
    #[error("prefix length is not a number")]
    BadPrefixLength,
    #[error("prefix length {len} is longer than {max}")]
    PrefixTooLong { len: u32, max: u8 },
}

impl AddressRange {
    /// A range of exactly one address.
    pub fn single(addr: IpAddr) -> AddressRange {
        let addr = addr.to_canonical();
        AddressRange {
            network: addr,
            prefix_len: max_prefix(addr),
        }
    }

    pub fn parse(text: &str) -> Result<AddressRange, AddressRangeError> {
        let text = text.trim();
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        // Accept the bracketed IPv6 form LiveKit documents ("[::1]", "[::]/8").
        let addr_text = addr_text
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr_text);
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| AddressRangeError::BadAddress)?;
        let max = max_prefix(addr);
        let prefix_len = match len_text {
            None => max,
            Some(l) => {
                if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(AddressRangeError::BadPrefixLength);
                }
                let len: u32 = l
                    .parse()
                    .map_err(|_| AddressRangeError::PrefixTooLong { len: u32::MAX, max })?;
                if len > u32::from(max) {
                    return Err(AddressRangeError::PrefixTooLong { len, max });
                }
                len as u8
            }
        };
        Ok(AddressRange {
            network: mask(addr, prefix_len),
            prefix_len,
        })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is inside the range. An IPv4-mapped IPv6 source
    /// (`::ffff:a.b.c.d`, what a dual-stack socket reports) counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix_len) == self.network
            }
            _ => false,
        }
    }

    /// Whether some address is in both ranges: for two prefixes, exactly when
    /// the shorter one contains the other's network address.
    pub fn overlaps(&self, other: &AddressRange) -> bool {
        if self.prefix_len <= other.prefix_len {
            self.contains(other.network)
        } else {
            other.contains(self.network)
        }
    }
}

impl FromStr for AddressRange {
    type Err = AddressRangeError;
    fn from_str(s: &str) -> Result<AddressRange, AddressRangeError> {
        AddressRange::parse(s)
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Clear the host bits below `len`.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Digest credentials a trunk must present (RFC 3261 s22). `Debug` hides the
/// password so a logged `Config` never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct TrunkAuth {
    pub username: String,
    pub password: String,
    /// How the challenge is sent: `401`/`WWW-Authenticate` as a user agent
    /// server does (RFC 3261 s22.2), or `407`/`Proxy-Authenticate` as a proxy
    /// (s22.3), which is what trunks that register with livekit-sip expect.
    pub challenge: AuthChallenge,
}

/// The status and header of a digest challenge (RFC 3261 s22.2 vs s22.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthChallenge {
    /// `401 Unauthorized` with `WWW-Authenticate`.
    #[default]
    Www,
    /// `407 Proxy Authentication Required` with `Proxy-Authenticate`.
    Proxy,
}

impl AuthChallenge {
    pub fn status(self) -> u16 {
        match self {
            AuthChallenge::Www => 401,
            AuthChallenge::Proxy => 407,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            AuthChallenge::Www => "Unauthorized",
            AuthChallenge::Proxy => "Proxy Authentication Required",
        }
    }

    /// The header that carries the challenge.
    pub fn header(self) -> &'static str {
        match self {
            AuthChallenge::Www => "WWW-Authenticate",
            AuthChallenge::Proxy => "Proxy-Authenticate",
        }
    }

    /// From the config's `auth_challenge` value.
    pub fn from_status(status: i64) -> Option<AuthChallenge> {
        match status {
            401 => Some(AuthChallenge::Www),
            407 => Some(AuthChallenge::Proxy),
            _ => None,
        }
    }
}

impl fmt::Debug for TrunkAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrunkAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("challenge", &self.challenge)
            .finish()
    }
}

/// One inbound trunk (LiveKit `SIPInboundTrunkInfo`), as resolved from the
/// `[[trunks]]` tables of the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Trunk {
    /// Unique; LiveKit ids start with `ST_`.
    pub id: String,
    pub name: String,
    /// Called numbers this trunk serves; empty = any number (a wildcard trunk).
    pub numbers: Vec<String>,
    /// Source addresses allowed to use this trunk; empty = any.
    pub allowed_addresses: Vec<AddressRange>,
    /// Caller numbers allowed; empty = any.
    pub allowed_numbers: Vec<String>,
    /// Digest credentials the caller must present; `None` = no authentication.
    pub auth: Option<TrunkAuth>,
    /// Codec preference for our SDP answer, most preferred first.
    pub codecs: CodecPrefs,
    pub metadata: String,
    /// Extra attributes for the SIP participant.
    pub attributes: BTreeMap<String, String>,
}

impl Trunk {
    /// A trunk that takes any number from anywhere, without authentication.
    pub fn open(id: &str, name: &str) -> Trunk {
        Trunk {
            id: id.to_string(),
            name: name.to_string(),
            numbers: Vec::new(),
            allowed_addresses: Vec::new(),
            allowed_numbers: Vec::new(),
            auth: None,
            codecs: CodecPrefs::default(),
            metadata: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    /// `(username, password)` when the trunk requires digest authentication.
    pub fn auth(&self) -> Option<(&str, &str)> {
        self.auth
            .as_ref()
            .map(|a| (a.username.as_str(), a.password.as_str()))
    }

    /// The codec preference for the SDP answer (a copy: once per call).
    pub fn codec_prefs(&self) -> CodecPrefs {
        self.codecs.clone()
    }

    /// A wildcard trunk lists no numbers and serves every called number.
    pub fn is_wildcard(&self) -> bool {
        self.numbers.is_empty()
    }

    /// Whether the trunk lists `callee` (a wildcard trunk lists none).
    pub fn lists_number(&self, callee: &str) -> bool {
        self.numbers.iter().any(|n| numbers_match(n, callee))
    }

    /// Whether `callee` is served: listed, or the trunk is a wildcard.
    pub fn serves_number(&self, callee: &str) -> bool {
        self.is_wildcard() || self.lists_number(callee)
    }

    pub fn allows_address(&self, source: IpAddr) -> bool {
        self.allowed_addresses.is_empty()
            || self.allowed_addresses.iter().any(|r| r.contains(source))
    }

    pub fn allows_caller(&self, caller: &str) -> bool {
        self.allowed_numbers.is_empty()
            || self
                .allowed_numbers
                .iter()
                .any(|n| numbers_match(n, caller))
    }
}

/// Find the trunk a call arrived on.
///
/// A trunk listing the called number beats a wildcard trunk; among equals the
/// first in file order wins (LiveKit refuses such overlapping trunks at creation
/// and fails the call; a configuration file cannot be half-applied, so we warn
/// at load instead, see `config`). The refusal says why nothing matched:
/// - no trunk serves the called number: [`Refusal::NoTrunk`] (404);
/// - some serve it, but the source address is not allowed by any of them:
///   [`Refusal::AddressNotAllowed`] (403);
/// - some serve it from this address, but not for this caller:
///   [`Refusal::CallerNotAllowed`] (403).
///
/// The address is checked before the caller so that an unknown source learns
/// nothing about the caller allow-lists.
pub fn match_trunk<'t>(trunks: &'t [Trunk], call: &InboundCall<'_>) -> Result<&'t Trunk, Refusal> {
    let mut wildcard: Option<&Trunk> = None;
    let mut number_served = false;
    let mut caller_refused = false;
    for t in trunks {
        let listed = t.lists_number(call.callee);
        if !listed && !t.is_wildcard() {
            continue;
        }
        number_served = true;
        if !t.allows_address(call.source) {
            continue;
        }
        if !t.allows_caller(call.caller) {
            caller_refused = true;
            continue;
        }
        if listed {
            // The first trunk listing the number wins outright.
            return Ok(t);
        }
        wildcard.get_or_insert(t);
    }
    match wildcard {
        Some(t) => Ok(t),
        None if !number_served => Err(Refusal::NoTrunk),
        None if caller_refused => Err(Refusal::CallerNotAllowed),
        None => Err(Refusal::AddressNotAllowed),
    }
}

/// Whether a number looks like a phone number to LiveKit's `NormalizeNumber`:
/// an optional leading `+`, then digits and the formatting characters
/// `-`, space, `(`, `)`. We also require one digit, so `"+"` or `"()"` stay
/// literal.
fn is_phone_number(s: &str) -> bool {
    let rest = s.strip_prefix('+').unwrap_or(s);
    let mut digit = false;
    for b in rest.bytes() {
        match b {
            b'0'..=b'9' => digit = true,
            b'-' | b' ' | b'(' | b')' => {}
            _ => return false,
        }
    }
    digit
}

/// The digits of a phone number, formatting and the leading `+` dropped.
fn digits(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.bytes().filter(u8::is_ascii_digit)
}

/// Compare two numbers as LiveKit does: equal as written, or equal once
/// normalized (formatting removed, a leading `+` added when missing), so
/// `+15550100`, `15550100` and `+1 (555) 0100` are one number. Names that are
/// not phone numbers (`alice`, `agent`) compare exactly. Does not allocate.
pub fn numbers_match(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    is_phone_number(a) && is_phone_number(b) && digits(a).eq(digits(b))
}

/// The normalized form used to detect overlapping entries at load time:
/// `+` and the digits for a phone number, the text itself otherwise.
pub fn normalize_number(s: &str) -> String {
    if is_phone_number(s) {
        let mut out = String::with_capacity(s.len() + 1);
        out.push('+');
        out.extend(digits(s).map(char::from));
        out
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_ranges_parse_and_contain() {
        let cases: &[(&str, &str, bool)] = &[
            ("203.0.113.0/24", "203.0.113.200", true),
            ("203.0.113.0/24", "203.0.114.1", false),
            ("203.0.113.77/24", "203.0.113.1", true), // host bits ignored
            ("198.51.100.7", "198.51.100.7", true),   // bare = /32
            ("198.51.100.7", "198.51.100.8", false),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("0.0.0.0/0", "2001:db8::1", false), // families never mix
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("2001:db8::5", "2001:db8::5", true), // bare = /128
            ("2001:db8::5", "2001:db8::6", false),
            ("[2001:db8::]/32", "2001:db8::1", true),
            ("::/0", "::1", true),
            // A dual-stack socket reports IPv4 peers as mapped IPv6.
            ("203.0.113.0/24", "::ffff:203.0.113.9", true),
        ];
        for (range, addr, want) in cases {
            let r: AddressRange = range.parse().unwrap();
            assert_eq!(r.contains(ip(addr)), *want, "{range} contains {addr}");
        }
    }

    #[test]
    fn address_range_errors() {
        let cases: &[(&str, AddressRangeError)] = &[
            ("sip.example.com", AddressRangeError::BadAddress),
            ("203.0.113.0/", AddressRangeError::BadPrefixLength),
            ("203.0.113.0/x", AddressRangeError::BadPrefixLength),
            ("203.0.113.0/-1", AddressRangeError::BadPrefixLength),
            (
                "203.0.113.0/33",
                AddressRangeError::PrefixTooLong { len: 33, max: 32 },
            ),
            (
                "2001:db8::/129",
                AddressRangeError::PrefixTooLong { len: 129, max: 128 },
            ),
            ("203.0.113.0/24/8", AddressRangeError::BadPrefixLength),
            ("", AddressRangeError::BadAddress),
        ];
        for (text, want) in cases {
            assert_eq!(AddressRange::parse(text).unwrap_err(), *want, "{text:?}");
        }
    }

    #[test]
    fn address_range_display_and_overlap() {
        let r: AddressRange = "203.0.113.77/24".parse().unwrap();
        assert_eq!(r.to_string(), "203.0.113.0/24");
        assert_eq!(
            AddressRange::single(IpAddr::V6(Ipv6Addr::LOCALHOST)).to_string(),
            "::1/128"
        );
        let wide: AddressRange = "10.0.0.0/8".parse().unwrap();
        let narrow: AddressRange = "10.1.2.0/24".parse().unwrap();
        let other: AddressRange = "192.0.2.0/24".parse().unwrap();
        assert!(wide.overlaps(&narrow) && narrow.overlaps(&wide));
        assert!(!wide.overlaps(&other));
        let v6: AddressRange = "::/0".parse().unwrap();
        assert!(!v6.overlaps(&wide));
        assert!(AddressRange::single(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9))).overlaps(&wide));
    }

    #[test]
    fn numbers_compare_like_livekit() {
        let cases: &[(&str, &str, bool)] = &[
            ("+15550100", "+15550100", true),
            ("+15550100", "15550100", true),
            ("15550100", "+15550100", true),
            ("+1 (555) 010-0", "+15550100", true),
            ("+15550100", "+15550101", false),
            ("alice", "alice", true),
            ("alice", "Alice", false),
            ("agent", "+agent", false),
            ("+", "", false),
            ("1555x", "1555", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(numbers_match(a, b), *want, "{a:?} vs {b:?}");
        }
        assert_eq!(normalize_number("1 555 0100"), "+15550100");
        assert_eq!(normalize_number("alice"), "alice");
    }

    fn call<'a>(source: &str, caller: &'a str, callee: &'a str) -> InboundCall<'a> {
        InboundCall {
            source: ip(source),
            caller,
            callee,
            call_id: "c1@test",
        }
    }

    fn trunk(id: &str, numbers: &[&str], addrs: &[&str], callers: &[&str]) -> Trunk {
        let mut t = Trunk::open(id, id);
        t.numbers = numbers.iter().map(|s| s.to_string()).collect();
        t.allowed_addresses = addrs.iter().map(|s| s.parse().unwrap()).collect();
        t.allowed_numbers = callers.iter().map(|s| s.to_string()).collect();
        t
    }

    #[test]
    fn trunk_matching_table() {
        let trunks = vec![
            trunk("ST_wild", &[], &["192.0.2.0/24"], &[]),
            trunk(
                "ST_sales",
                &["+15550100"],
                &["203.0.113.0/24", "2001:db8::/32"],
                &[],
            ),
            trunk("ST_vip", &["+15550199"], &[], &["+15550123"]),
            trunk("ST_pbx", &["+15550155"], &["198.51.100.7"], &[]),
            trunk("ST_sales2", &["15550100"], &[], &[]),
        ];
        // (source, caller, callee, expected)
        let cases: &[(&str, &str, &str, Result<&str, Refusal>)] = &[
            // specific trunk listing the number, source in range
            ("203.0.113.9", "+15559999", "+15550100", Ok("ST_sales")),
            // the same number without '+' still matches
            ("203.0.113.9", "+15559999", "15550100", Ok("ST_sales")),
            // IPv6 source in the range
            ("2001:db8::42", "+15559999", "+15550100", Ok("ST_sales")),
            // a specific trunk beats the wildcard even when listed later
            ("192.0.2.5", "+15559999", "+15550100", Ok("ST_sales2")),
            // unlisted number: the wildcard trunk, if the address fits
            ("192.0.2.5", "+15559999", "+15550111", Ok("ST_wild")),
            (
                "203.0.113.9",
                "+15559999",
                "+15550111",
                Err(Refusal::AddressNotAllowed),
            ),
            // bare-IP allow-list
            ("198.51.100.7", "+1", "+15550155", Ok("ST_pbx")),
            (
                "198.51.100.8",
                "+1",
                "+15550155",
                Err(Refusal::AddressNotAllowed),
            ),
            // caller allow-list
            ("203.0.113.9", "+15550123", "+15550199", Ok("ST_vip")),
            ("203.0.113.9", "15550123", "+15550199", Ok("ST_vip")),
            (
                "203.0.113.9",
                "+15550124",
                "+15550199",
                Err(Refusal::CallerNotAllowed),
            ),
        ];
        for (src, caller, callee, want) in cases {
            let got = match_trunk(&trunks, &call(src, caller, callee)).map(|t| t.id.as_str());
            assert_eq!(got, *want, "{src} {caller} -> {callee}");
        }
    }

    #[test]
    fn no_trunk_for_the_number() {
        let trunks = vec![trunk("ST_a", &["+15550100"], &[], &[])];
        assert_eq!(
            match_trunk(&trunks, &call("192.0.2.1", "+1", "+15550101")).unwrap_err(),
            Refusal::NoTrunk
        );
        assert_eq!(
            match_trunk(&[], &call("192.0.2.1", "+1", "+1")).unwrap_err(),
            Refusal::NoTrunk
        );
    }

    #[test]
    fn ambiguous_trunks_take_the_first_in_file_order() {
        let trunks = vec![
            trunk("ST_first", &[], &[], &[]),
            trunk("ST_second", &[], &[], &[]),
            trunk("ST_n1", &["+1555"], &[], &[]),
            trunk("ST_n2", &["+1555"], &[], &[]),
        ];
        let c = call("192.0.2.1", "+1", "+1999");
        assert_eq!(match_trunk(&trunks, &c).unwrap().id, "ST_first");
        let c = call("192.0.2.1", "+1", "+1555");
        assert_eq!(match_trunk(&trunks, &c).unwrap().id, "ST_n1");
    }

    #[test]
    fn address_refusal_wins_over_caller_refusal_only_per_trunk() {
        // The address is checked first: a source outside every range gets
        // AddressNotAllowed even if the caller is also not allowed.
        let trunks = vec![trunk("ST_a", &[], &["192.0.2.0/24"], &["+1"])];
        assert_eq!(
            match_trunk(&trunks, &call("198.51.100.1", "+2", "+3")).unwrap_err(),
            Refusal::AddressNotAllowed
        );
        assert_eq!(
            match_trunk(&trunks, &call("192.0.2.1", "+2", "+3")).unwrap_err(),
            Refusal::CallerNotAllowed
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use std::net::{Ipv4Addr, Ipv6Addr};

        fn any_ip() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                any::<u32>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
                any::<u128>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            ]
        }

        proptest! {
            #[test]
            fn a_range_contains_the_address_it_was_written_with(ip in any_ip(), len in 0u8..=128) {
                let len = len.min(max_prefix(ip));
                let r = AddressRange::parse(&format!("{ip}/{len}")).unwrap();
                prop_assert!(r.contains(ip));
                prop_assert!(r.contains(r.network()));
                // Display round-trips.
                prop_assert_eq!(r.to_string().parse::<AddressRange>().unwrap(), r);
            }

            #[test]
            fn containment_agrees_with_overlap(a in any_ip(), la in 0u8..=128, b in any_ip(), lb in 0u8..=128) {
                let ra = AddressRange::parse(&format!("{a}/{}", la.min(max_prefix(a)))).unwrap();
                let rb = AddressRange::parse(&format!("{b}/{}", lb.min(max_prefix(b)))).unwrap();
                prop_assert_eq!(ra.overlaps(&rb), rb.overlaps(&ra));
                if ra.contains(b) {
                    prop_assert!(ra.overlaps(&rb));
                }
                if !ra.overlaps(&rb) {
                    prop_assert!(!ra.contains(b) && !rb.contains(a));
                }
            }

            #[test]
            fn parsing_never_panics(text in "\\PC{0,48}") {
                let _ = AddressRange::parse(&text);
            }

            #[test]
            fn number_matching_is_normalized_equality(a in "[+]?[0-9a-c ()-]{0,8}", b in "[+]?[0-9a-c ()-]{0,8}") {
                let m = numbers_match(&a, &b);
                prop_assert_eq!(m, numbers_match(&b, &a));
                let by_norm = a == b || (is_phone_number(&a) && is_phone_number(&b)
                    && normalize_number(&a) == normalize_number(&b));
                prop_assert_eq!(m, by_norm);
            }
        }
    }

    #[test]
    fn auth_and_debug_redaction() {
        let mut t = Trunk::open("ST_a", "a");
        assert_eq!(t.auth(), None);
        t.auth = Some(TrunkAuth {
            username: "user".into(),
            password: "hunter2".into(),
            challenge: AuthChallenge::Www,
        });
        assert_eq!(t.auth(), Some(("user", "hunter2")));
        let dbg = format!("{t:?}");
        assert!(dbg.contains("user") && !dbg.contains("hunter2"), "{dbg}");
    }
}
