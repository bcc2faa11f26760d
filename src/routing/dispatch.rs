//! Dispatch rules: which room a call on a matched trunk joins, LiveKit's
//! `SIPDispatchRuleInfo` semantics.
//!
//! Where it sits: after trunk matching and digest authentication of a new
//! INVITE, before the call is handed to the room's owner shard (the room name
//! decides the shard). It owns the rule data, rule selection and room naming.
//!
//! Selection follows `MatchDispatchRule` in livekit/protocol `sip/sip.go`:
//! - a rule applies if its `inbound_numbers` (callers) and `numbers` (called
//!   numbers) lists are empty or contain the call's number, and its PIN fits
//!   the PIN state ([`PinEntry`]);
//! - rules naming the trunk in `trunk_ids` beat rules with empty `trunk_ids`;
//! - within a group the lowest [`DispatchRule::priority`] wins: PIN-protected
//!   before open, then direct < individual < callee, and a rule naming callers
//!   before one that takes any caller; ties go to the smaller room name/prefix
//!   (LiveKit's tie-break), then to file order.
//!
//! Room names follow `EvaluateDispatchRule`:
//! - direct: `room_name`;
//! - individual: `<prefix>_<caller>_<suffix>`, or `<prefix>_<caller>` with
//!   `no_randomness` (the `_` is written even when the prefix is empty);
//! - callee: `<prefix>_<callee>`, or `<callee>` when the prefix is empty, plus
//!   `_<suffix>` with `randomize`.
//!
//! The suffix is 12 characters of LiveKit's guid alphabet (base 57, no
//! look-alike characters). With `hide_phone_number` the caller part of an
//! individual room is masked to the last 4 characters, as LiveKit does.

use std::collections::BTreeMap;

use rand::Rng;

use super::trunk::{numbers_match, Trunk};
use super::{InboundCall, Refusal};

/// LiveKit's guid alphabet (shortuuid's default): digits and letters without
/// `0`, `1`, `I`, `O` and `l`.
pub const ROOM_SUFFIX_ALPHABET: &[u8; 57] =
    b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
/// Length of the random room suffix (LiveKit `guid.Size`).
pub const ROOM_SUFFIX_LEN: usize = 12;
/// Longest PIN a caller may enter (livekit-sip's `pinLimit`).
pub const MAX_PIN_LEN: usize = 16;

/// How the rule names the room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// Every call joins one room (LiveKit `SIPDispatchRuleDirect`).
    Direct { room_name: String },
    /// Each call gets its own room (LiveKit `SIPDispatchRuleIndividual`).
    Individual {
        room_prefix: String,
        no_randomness: bool,
    },
    /// Calls to the same number share a room (LiveKit `SIPDispatchRuleCallee`).
    Callee {
        room_prefix: String,
        randomize: bool,
    },
}

impl RuleKind {
    /// The configuration spelling of the type.
    pub fn type_name(&self) -> &'static str {
        match self {
            RuleKind::Direct { .. } => "direct",
            RuleKind::Individual { .. } => "individual",
            RuleKind::Callee { .. } => "callee",
        }
    }

    /// Room name (direct) or prefix (individual, callee): LiveKit's tie-break key.
    fn room_key(&self) -> &str {
        match self {
            RuleKind::Direct { room_name } => room_name,
            RuleKind::Individual { room_prefix, .. } | RuleKind::Callee { room_prefix, .. } => {
                room_prefix
            }
        }
    }
}

/// One dispatch rule (LiveKit `SIPDispatchRuleInfo`), as resolved from the
/// `[[dispatch_rules]]` tables of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchRule {
    /// Unique; LiveKit ids start with `SDR_`.
    pub id: String,
    pub name: String,
    pub kind: RuleKind,
    /// Digits the caller must enter (DTMF) before joining; `None` = open.
    pub pin: Option<String>,
    /// Trunks this rule is for; empty = every trunk.
    pub trunk_ids: Vec<String>,
    /// Called numbers this rule is for; empty = any.
    pub numbers: Vec<String>,
    /// Caller numbers this rule is for; empty = any.
    pub inbound_numbers: Vec<String>,
    pub hide_phone_number: bool,
    pub metadata: String,
    /// Added to the SIP participant's attributes.
    pub attributes: BTreeMap<String, String>,
}

impl DispatchRule {
    /// A rule of `kind` for every trunk, number and caller, without PIN.
    pub fn open(id: &str, kind: RuleKind) -> DispatchRule {
        DispatchRule {
            id: id.to_string(),
            name: String::new(),
            kind,
            pin: None,
            trunk_ids: Vec::new(),
            numbers: Vec::new(),
            inbound_numbers: Vec::new(),
            hide_phone_number: false,
            metadata: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    /// LiveKit's `DispatchRulePriority`, lower wins: 0-2 for PIN-protected
    /// direct/individual/callee, 100-102 for open ones, plus 1000 when the rule
    /// takes any caller (empty `inbound_numbers`).
    pub fn priority(&self) -> u32 {
        let kind = match self.kind {
            RuleKind::Direct { .. } => 0,
            RuleKind::Individual { .. } => 1,
            RuleKind::Callee { .. } => 2,
        };
        let open = if self.pin.is_some() { 0 } else { 100 };
        let any_caller = if self.inbound_numbers.is_empty() {
            1000
        } else {
            0
        };
        kind + open + any_caller
    }

    /// Whether the rule names `trunk` explicitly (`Some(true)`), applies to
    /// every trunk (`Some(false)`), or not to this trunk (`None`).
    fn trunk_specific(&self, trunk: &Trunk) -> Option<bool> {
        if self.trunk_ids.is_empty() {
            Some(false)
        } else if self.trunk_ids.contains(&trunk.id) {
            Some(true)
        } else {
            None
        }
    }

    fn applies_to(&self, call: &InboundCall<'_>, pin: PinEntry<'_>) -> bool {
        if !self.inbound_numbers.is_empty()
            && !self
                .inbound_numbers
                .iter()
                .any(|n| numbers_match(n, call.caller))
        {
            return false;
        }
        if !self.numbers.is_empty() && !self.numbers.iter().any(|n| numbers_match(n, call.callee)) {
            return false;
        }
        match (pin, self.pin.as_deref()) {
            (PinEntry::NotAsked, _) => true,
            // The caller pressed '#' without digits: open rules only.
            (PinEntry::Skipped, rule_pin) => rule_pin.is_none(),
            // A PIN was entered: only rules with that PIN (never a fallback to
            // open rules, as in LiveKit).
            (PinEntry::Entered(p), Some(rule_pin)) => p == rule_pin,
            (PinEntry::Entered(_), None) => false,
        }
    }
}

/// Where the caller is in PIN entry (livekit-sip asks for a PIN when the
/// selected rule has one, then dispatches again with what was typed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinEntry<'a> {
    /// First dispatch of the call: every rule applies.
    NotAsked,
    /// The caller ended PIN entry with `#` and no digits: only open rules.
    Skipped,
    /// The digits the caller entered: only rules with exactly this PIN.
    Entered(&'a str),
}

/// The decision for one call: the rule, the room, and what the participant
/// carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    pub rule_id: String,
    pub rule_name: String,
    pub room: String,
    /// `Some(pin)` when the rule is PIN-protected and the caller has not yet
    /// entered it: answer, prompt for the PIN, then call [`dispatch_with_pin`]
    /// with [`PinEntry::Entered`] before joining `room`. `None` = join now.
    pub pin: Option<String>,
    /// Participant attributes: the trunk's, then the rule's (the rule wins on a
    /// shared key), then `sip.trunkID`, `sip.ruleID` and, unless the number is
    /// hidden, `sip.phoneNumber` (caller) and `sip.trunkPhoneNumber` (callee).
    pub attributes: BTreeMap<String, String>,
    pub hide_phone_number: bool,
    pub metadata: String,
}

/// Attribute names LiveKit sets on SIP participants (`livekit/attrs.go`).
pub mod attr {
    pub const TRUNK_ID: &str = "sip.trunkID";
    pub const RULE_ID: &str = "sip.ruleID";
    pub const PHONE_NUMBER: &str = "sip.phoneNumber";
    pub const TRUNK_PHONE_NUMBER: &str = "sip.trunkPhoneNumber";
}

/// Pick the rule and name the room for a call on `trunk`, first dispatch
/// (no PIN entered yet). See the module doc for the selection order.
pub fn dispatch(
    rules: &[DispatchRule],
    trunk: &Trunk,
    call: &InboundCall<'_>,
    rng: &mut impl Rng,
) -> Result<Dispatch, Refusal> {
    dispatch_with_pin(rules, trunk, call, PinEntry::NotAsked, rng)
}

/// [`dispatch`] with the caller's PIN state. Refuses with
/// [`Refusal::WrongPin`] when a PIN was entered and no rule has it, and with
/// [`Refusal::NoRule`] when no rule applies at all.
pub fn dispatch_with_pin(
    rules: &[DispatchRule],
    trunk: &Trunk,
    call: &InboundCall<'_>,
    pin: PinEntry<'_>,
    rng: &mut impl Rng,
) -> Result<Dispatch, Refusal> {
    let rule = select_rule(rules, trunk, call, pin).ok_or(match pin {
        PinEntry::Entered(_) => Refusal::WrongPin,
        _ => Refusal::NoRule,
    })?;
    Ok(evaluate(rule, trunk, call, pin, rng))
}

/// The rule that applies, per the module doc, or `None`.
pub fn select_rule<'r>(
    rules: &'r [DispatchRule],
    trunk: &Trunk,
    call: &InboundCall<'_>,
    pin: PinEntry<'_>,
) -> Option<&'r DispatchRule> {
    // (trunk-specific group first, priority, room key); file order breaks the
    // remaining ties because only a strictly better rule replaces the best.
    let mut best: Option<(bool, u32, &str, &DispatchRule)> = None;
    for rule in rules {
        let Some(specific) = rule.trunk_specific(trunk) else {
            continue;
        };
        if !rule.applies_to(call, pin) {
            continue;
        }
        let cand = (specific, rule.priority(), rule.kind.room_key(), rule);
        let better = match &best {
            None => true,
            Some((b_specific, b_prio, b_key, _)) => {
                (!specific, cand.1, cand.2) < (!*b_specific, *b_prio, *b_key)
            }
        };
        if better {
            best = Some(cand);
        }
    }
    best.map(|(_, _, _, r)| r)
}

/// Name the room and build the participant's attributes for a selected rule.
fn evaluate(
    rule: &DispatchRule,
    trunk: &Trunk,
    call: &InboundCall<'_>,
    pin: PinEntry<'_>,
    rng: &mut impl Rng,
) -> Dispatch {
    let room = match &rule.kind {
        RuleKind::Direct { room_name } => room_name.clone(),
        RuleKind::Individual {
            room_prefix,
            no_randomness,
        } => {
            let from = if rule.hide_phone_number {
                masked_number(call.caller)
            } else {
                call.caller
            };
            let mut room = format!("{room_prefix}_{from}");
            if !no_randomness {
                room.push('_');
                push_suffix(&mut room, rng);
            }
            room
        }
        RuleKind::Callee {
            room_prefix,
            randomize,
        } => {
            // Callee rooms are prefix + number with no separator (livekit-cli's
            // listing shows `RoomPrefix + "<callee>"`, individual rooms
            // `RoomPrefix + "_<caller>_<random>"`).
            let mut room = format!("{room_prefix}{}", call.callee);
            if *randomize {
                room.push('_');
                push_suffix(&mut room, rng);
            }
            room
        }
    };
    let mut attributes = trunk.attributes.clone();
    attributes.extend(rule.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
    attributes.insert(attr::TRUNK_ID.into(), trunk.id.clone());
    attributes.insert(attr::RULE_ID.into(), rule.id.clone());
    if !rule.hide_phone_number {
        attributes.insert(attr::PHONE_NUMBER.into(), call.caller.to_string());
        attributes.insert(attr::TRUNK_PHONE_NUMBER.into(), call.callee.to_string());
    }
    let pin = match pin {
        PinEntry::NotAsked => rule.pin.clone(),
        // Entered and matched (applies_to checked it), or an open rule.
        PinEntry::Entered(_) | PinEntry::Skipped => None,
    };
    Dispatch {
        rule_id: rule.id.clone(),
        rule_name: rule.name.clone(),
        room,
        pin,
        attributes,
        hide_phone_number: rule.hide_phone_number,
        metadata: rule.metadata.clone(),
    }
}

/// LiveKit's mask for a hidden number: its last 4 characters, or the last one
/// when it has 4 or fewer.
pub fn masked_number(number: &str) -> &str {
    let n = if number.chars().count() <= 4 { 1 } else { 4 };
    match number.char_indices().rev().nth(n - 1) {
        Some((i, _)) => &number[i..],
        None => number,
    }
}

fn push_suffix(room: &mut String, rng: &mut impl Rng) {
    room.reserve(ROOM_SUFFIX_LEN);
    for _ in 0..ROOM_SUFFIX_LEN {
        let i = rng.gen_range(0..ROOM_SUFFIX_ALPHABET.len());
        room.push(char::from(ROOM_SUFFIX_ALPHABET[i]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn call<'a>(caller: &'a str, callee: &'a str) -> InboundCall<'a> {
        InboundCall {
            source: "192.0.2.1".parse().unwrap(),
            caller,
            callee,
            call_id: "c1@test",
        }
    }

    fn direct(id: &str, room: &str) -> DispatchRule {
        DispatchRule::open(
            id,
            RuleKind::Direct {
                room_name: room.into(),
            },
        )
    }

    fn individual(id: &str, prefix: &str, no_randomness: bool) -> DispatchRule {
        DispatchRule::open(
            id,
            RuleKind::Individual {
                room_prefix: prefix.into(),
                no_randomness,
            },
        )
    }

    fn callee(id: &str, prefix: &str, randomize: bool) -> DispatchRule {
        DispatchRule::open(
            id,
            RuleKind::Callee {
                room_prefix: prefix.into(),
                randomize,
            },
        )
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn is_suffix(s: &str) -> bool {
        s.len() == ROOM_SUFFIX_LEN && s.bytes().all(|b| ROOM_SUFFIX_ALPHABET.contains(&b))
    }

    #[test]
    fn room_names_per_rule_type() {
        let trunk = Trunk::open("ST_t", "t");
        let c = call("+15550123", "+15550100");
        let room = |rule: DispatchRule| dispatch(&[rule], &trunk, &c, &mut rng()).unwrap().room;

        assert_eq!(room(direct("SDR_d", "lobby")), "lobby");
        assert_eq!(room(callee("SDR_c", "call-", false)), "call-+15550100");
        assert_eq!(room(callee("SDR_c", "", false)), "+15550100");
        assert_eq!(room(individual("SDR_i", "call", true)), "call_+15550123");
        // LiveKit writes the separator even for an empty prefix.
        assert_eq!(room(individual("SDR_i", "", true)), "_+15550123");

        let r = room(individual("SDR_i", "call", false));
        let suffix = r.strip_prefix("call_+15550123_").expect(&r);
        assert!(is_suffix(suffix), "{r}");

        let r = room(callee("SDR_c", "call-", true));
        let suffix = r.strip_prefix("call-+15550100_").expect(&r);
        assert!(is_suffix(suffix), "{r}");
    }

    #[test]
    fn random_suffix_is_seeded_and_varies() {
        let trunk = Trunk::open("ST_t", "t");
        let rules = [individual("SDR_i", "p", false)];
        let c = call("+1", "+2");
        let a = dispatch(&rules, &trunk, &c, &mut rng()).unwrap().room;
        let b = dispatch(&rules, &trunk, &c, &mut rng()).unwrap().room;
        assert_eq!(a, b, "same seed, same room");
        let mut r = rng();
        let first = dispatch(&rules, &trunk, &c, &mut r).unwrap().room;
        let second = dispatch(&rules, &trunk, &c, &mut r).unwrap().room;
        assert_ne!(first, second, "each call its own room");
    }

    #[test]
    fn two_callers_of_one_number_share_the_callee_room() {
        let trunk = Trunk::open("ST_t", "t");
        let rules = [callee("SDR_c", "call", false)];
        let a = dispatch(&rules, &trunk, &call("+1111", "+15550100"), &mut rng()).unwrap();
        let b = dispatch(&rules, &trunk, &call("+2222", "+15550100"), &mut rng()).unwrap();
        assert_eq!(a.room, b.room);
    }

    #[test]
    fn hidden_number_masks_room_and_attributes() {
        let mut trunk = Trunk::open("ST_t", "t");
        trunk.attributes.insert("carrier".into(), "acme".into());
        trunk.attributes.insert("shared".into(), "trunk".into());
        let mut rule = individual("SDR_i", "call", true);
        rule.hide_phone_number = true;
        rule.attributes.insert("shared".into(), "rule".into());
        let d = dispatch(&[rule], &trunk, &call("+15550123", "+15550100"), &mut rng()).unwrap();
        assert_eq!(d.room, "call_0123");
        assert!(d.hide_phone_number);
        assert_eq!(
            d.attributes.get("carrier").map(String::as_str),
            Some("acme")
        );
        assert_eq!(d.attributes.get("shared").map(String::as_str), Some("rule"));
        assert_eq!(
            d.attributes.get(attr::TRUNK_ID).map(String::as_str),
            Some("ST_t")
        );
        assert_eq!(
            d.attributes.get(attr::RULE_ID).map(String::as_str),
            Some("SDR_i")
        );
        assert!(!d.attributes.contains_key(attr::PHONE_NUMBER));
        assert!(!d.attributes.contains_key(attr::TRUNK_PHONE_NUMBER));

        let open = dispatch(
            &[callee("SDR_c", "", false)],
            &trunk,
            &call("+15550123", "+15550100"),
            &mut rng(),
        )
        .unwrap();
        assert_eq!(
            open.attributes.get(attr::PHONE_NUMBER).map(String::as_str),
            Some("+15550123")
        );
        assert_eq!(
            open.attributes
                .get(attr::TRUNK_PHONE_NUMBER)
                .map(String::as_str),
            Some("+15550100")
        );
    }

    #[test]
    fn masked_number_keeps_last_four() {
        assert_eq!(masked_number("+15550123"), "0123");
        assert_eq!(masked_number("12345"), "2345");
        assert_eq!(masked_number("1234"), "4");
        assert_eq!(masked_number("7"), "7");
        assert_eq!(masked_number(""), "");
        assert_eq!(masked_number("ünïcödé"), "cödé");
    }

    fn with_trunks(mut r: DispatchRule, trunks: &[&str]) -> DispatchRule {
        r.trunk_ids = trunks.iter().map(|s| s.to_string()).collect();
        r
    }

    fn with_pin(mut r: DispatchRule, pin: &str) -> DispatchRule {
        r.pin = Some(pin.into());
        r
    }

    fn with_callers(mut r: DispatchRule, callers: &[&str]) -> DispatchRule {
        r.inbound_numbers = callers.iter().map(|s| s.to_string()).collect();
        r
    }

    fn with_numbers(mut r: DispatchRule, numbers: &[&str]) -> DispatchRule {
        r.numbers = numbers.iter().map(|s| s.to_string()).collect();
        r
    }

    #[test]
    fn rule_selection_table() {
        let t_a = Trunk::open("ST_a", "a");
        let t_b = Trunk::open("ST_b", "b");
        // (rules, trunk, caller, callee, pin, expected rule id or refusal)
        type Case<'a> = (
            Vec<DispatchRule>,
            &'a Trunk,
            &'a str,
            &'a str,
            PinEntry<'a>,
            Result<&'a str, Refusal>,
        );
        let cases: Vec<Case> = vec![
            // A rule naming the trunk beats a wildcard rule, even a better-ranked one.
            (
                vec![
                    direct("SDR_any", "a"),
                    with_trunks(callee("SDR_a", "c", false), &["ST_a"]),
                ],
                &t_a,
                "+1",
                "+2",
                PinEntry::NotAsked,
                Ok("SDR_a"),
            ),
            // ... but only for that trunk.
            (
                vec![
                    direct("SDR_any", "a"),
                    with_trunks(callee("SDR_a", "c", false), &["ST_a"]),
                ],
                &t_b,
                "+1",
                "+2",
                PinEntry::NotAsked,
                Ok("SDR_any"),
            ),
            // A rule for other trunks only: nothing applies.
            (
                vec![with_trunks(callee("SDR_a", "c", false), &["ST_a"])],
                &t_b,
                "+1",
                "+2",
                PinEntry::NotAsked,
                Err(Refusal::NoRule),
            ),
            (
                vec![],
                &t_a,
                "+1",
                "+2",
                PinEntry::NotAsked,
                Err(Refusal::NoRule),
            ),
            // direct < individual < callee among open rules.
            (
                vec![
                    callee("SDR_c", "c", false),
                    individual("SDR_i", "i", false),
                    direct("SDR_d", "d"),
                ],
                &t_a,
                "+1",
                "+2",
                PinEntry::NotAsked,
                Ok("SDR_d"),
            ),
            (
                vec![callee("SDR_c", "c", false), individual("SDR_i", "i", false)],
                &t_a,
                "+1",
                "+2",
                PinEntry::NotAsked,
                Ok("SDR_i"),
            ),
            // A rule naming the caller beats one for any caller.
            (
                vec![
                    direct("SDR_d", "d"),
                    with_callers(callee("SDR_vip", "v", false), &["+1"]),
                ],
                &t_a,
                "+1",
                "+2",
                PinEntry::NotAsked,
                Ok("SDR_vip"),
            ),
            (
                vec![
                    direct("SDR_d", "d"),
                    with_callers(callee("SDR_vip", "v", false), &["+1"]),
                ],
                &t_a,
                "+3",
                "+2",
                PinEntry::NotAsked,
                Ok("SDR_d"),
            ),
            // inbound_numbers tolerate the '+' difference.
            (
                vec![with_callers(callee("SDR_vip", "v", false), &["15550123"])],
                &t_a,
                "+15550123",
                "+2",
                PinEntry::NotAsked,
                Ok("SDR_vip"),
            ),
            // numbers filters the called number.
            (
                vec![with_numbers(callee("SDR_n", "n", false), &["+15550100"])],
                &t_a,
                "+1",
                "15550100",
                PinEntry::NotAsked,
                Ok("SDR_n"),
            ),
            (
                vec![with_numbers(callee("SDR_n", "n", false), &["+15550100"])],
                &t_a,
                "+1",
                "+15550101",
                PinEntry::NotAsked,
                Err(Refusal::NoRule),
            ),
            // PIN-protected rules rank first on the first dispatch.
            (
                vec![
                    direct("SDR_open", "o"),
                    with_pin(callee("SDR_pin", "p", false), "1234"),
                ],
                &t_a,
                "+1",
                "+2",
                PinEntry::NotAsked,
                Ok("SDR_pin"),
            ),
            // The right PIN selects its rule; a wrong one matches nothing, with
            // no fallback to open rules.
            (
                vec![
                    direct("SDR_open", "o"),
                    with_pin(callee("SDR_pin", "p", false), "1234"),
                ],
                &t_a,
                "+1",
                "+2",
                PinEntry::Entered("1234"),
                Ok("SDR_pin"),
            ),
            (
                vec![
                    direct("SDR_open", "o"),
                    with_pin(callee("SDR_pin", "p", false), "1234"),
                ],
                &t_a,
                "+1",
                "+2",
                PinEntry::Entered("9999"),
                Err(Refusal::WrongPin),
            ),
            // '#' alone: open rules only.
            (
                vec![
                    direct("SDR_open", "o"),
                    with_pin(callee("SDR_pin", "p", false), "1234"),
                ],
                &t_a,
                "+1",
                "+2",
                PinEntry::Skipped,
                Ok("SDR_open"),
            ),
            // Equal priority: the smaller room name wins, whatever the order.
            (
                vec![direct("SDR_z", "zeta"), direct("SDR_a", "alpha")],
                &t_a,
                "+1",
                "+2",
                PinEntry::NotAsked,
                Ok("SDR_a"),
            ),
            // Fully equal: file order.
            (
                vec![direct("SDR_1", "same"), direct("SDR_2", "same")],
                &t_a,
                "+1",
                "+2",
                PinEntry::NotAsked,
                Ok("SDR_1"),
            ),
        ];
        for (i, (rules, trunk, caller, callee, pin, want)) in cases.into_iter().enumerate() {
            let got = dispatch_with_pin(&rules, trunk, &call(caller, callee), pin, &mut rng());
            assert_eq!(
                got.as_ref().map(|d| d.rule_id.as_str()).map_err(|e| *e),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn pin_is_reported_until_entered() {
        let trunk = Trunk::open("ST_t", "t");
        let rules = [with_pin(direct("SDR_p", "conf"), "4321")];
        let c = call("+1", "+2");
        let first = dispatch(&rules, &trunk, &c, &mut rng()).unwrap();
        assert_eq!(first.pin.as_deref(), Some("4321"));
        assert_eq!(first.room, "conf");
        let second =
            dispatch_with_pin(&rules, &trunk, &c, PinEntry::Entered("4321"), &mut rng()).unwrap();
        assert_eq!(second.pin, None);
        assert_eq!(second.room, "conf");
    }

    #[test]
    fn priorities_match_livekit() {
        assert_eq!(with_pin(direct("a", "r"), "1").priority(), 1000);
        assert_eq!(
            with_callers(with_pin(individual("a", "r", false), "1"), &["+1"]).priority(),
            1
        );
        assert_eq!(
            with_callers(callee("a", "r", false), &["+1"]).priority(),
            102
        );
        assert_eq!(direct("a", "r").priority(), 1100);
    }
}
