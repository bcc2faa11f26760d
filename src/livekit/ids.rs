//! LiveKit-style resource ids: a type prefix and 12 random characters
//! (`RM_` rooms, `PA_` participants, `TR_` tracks, `SCL_` SIP calls).
//!
//! Where it sits: the room and signal layers name what they create with these,
//! so SDKs, logs and tools see ids shaped like livekit-server's (some clients
//! and dashboards check the prefix). The characters come from the shortuuid
//! alphabet livekit-server uses (57 symbols, no look-alikes `0 O 1 I l`):
//! 12 of them are ~70 bits, ample for ids that only need to be unique per
//! process lifetime and unguessable enough not to be enumerated.
//!
//! Sans-IO: the caller passes the random source (a seeded one in tests).

use rand::RngCore;

/// Room sid prefix.
pub const ROOM: &str = "RM_";
/// Participant sid prefix.
pub const PARTICIPANT: &str = "PA_";
/// Track sid prefix.
pub const TRACK: &str = "TR_";
/// LiveKit SIP call id prefix (`sip.callID`).
pub const SIP_CALL: &str = "SCL_";

/// Random characters after the prefix (livekit-server's `guid.Size`).
pub const ID_CHARS: usize = 12;

/// shortuuid's default alphabet, as livekit-server's `guid.IDAlphabet`.
const ALPHABET: &[u8; 57] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// A new id: `prefix` and [`ID_CHARS`] characters drawn uniformly from the
/// alphabet (6 random bits at a time, values past the alphabet rejected, so
/// no character is more likely than another).
pub fn new_id(prefix: &str, rng: &mut impl RngCore) -> String {
    let mut id = String::with_capacity(prefix.len() + ID_CHARS);
    id.push_str(prefix);
    let mut left = ID_CHARS;
    while left > 0 {
        let mut r = rng.next_u64();
        for _ in 0..10 {
            let i = (r & 0x3f) as usize;
            r >>= 6;
            if let Some(&c) = ALPHABET.get(i) {
                id.push(char::from(c));
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
    }
    id
}

/// Whether `id` has `prefix` and the shape [`new_id`] gives (for ids that
/// come back from clients, e.g. `sid=` on reconnect).
pub fn is_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == ID_CHARS && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn shape_and_prefix() {
        let mut rng = SmallRng::seed_from_u64(1);
        for prefix in [ROOM, PARTICIPANT, TRACK, SIP_CALL] {
            let id = new_id(prefix, &mut rng);
            assert!(id.starts_with(prefix));
            assert_eq!(id.len(), prefix.len() + ID_CHARS);
            assert!(is_id(prefix, &id), "{id}");
        }
    }

    #[test]
    fn ids_differ_and_are_reproducible_with_a_seed() {
        let a: Vec<String> = {
            let mut rng = SmallRng::seed_from_u64(7);
            (0..1000).map(|_| new_id(PARTICIPANT, &mut rng)).collect()
        };
        let mut uniq = a.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), a.len());
        let mut rng = SmallRng::seed_from_u64(7);
        assert_eq!(new_id(PARTICIPANT, &mut rng), a[0]);
    }

    #[test]
    fn every_character_is_drawn_evenly() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counts = [0u32; 57];
        for _ in 0..5000 {
            for b in new_id("", &mut rng).bytes() {
                let i = ALPHABET.iter().position(|&c| c == b).unwrap();
                counts[i] += 1;
            }
        }
        // 60000 draws over 57 symbols: ~1053 each; a biased modulo would
        // show a symbol near 2x.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 900 && *max < 1200, "{min}..{max}");
    }

    #[test]
    fn is_id_refuses_other_shapes() {
        assert!(is_id(ROOM, "RM_23456789ABCD"));
        assert!(!is_id(ROOM, "PA_23456789ABCD"));
        assert!(!is_id(ROOM, "RM_23456789ABC"));
        assert!(!is_id(ROOM, "RM_23456789ABC0"), "0 is not in the alphabet");
        assert!(!is_id(ROOM, "RM_23456789ABCDE"));
        assert!(!is_id(ROOM, ""));
    }
}
