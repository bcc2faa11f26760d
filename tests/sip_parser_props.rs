//! Property tests of the SIP parser (`sip::message`) against hostile input.
//!
//! Where it sits: the parser is the first code every datagram from the network
//! meets, so it must never panic on peer input (DESIGN.md, STYLE.md habit 6). These
//! tests throw at it random bytes, SIP-shaped noise, and valid messages (a trunk
//! INVITE and the RFC 4475 corpus) mutated: bytes flipped, truncated at every length,
//! lines duplicated, removed or swapped, values made huge. Every entry point and
//! accessor runs on each input; a few invariants are checked on the way:
//! - `validate_request() == Ok` promises `call_id`, `cseq`, `top_via`, `from` and
//!   `to` succeed (its doc says so);
//! - `frame_len` never claims more bytes than it was given, and every strict prefix
//!   of a complete frame is `Partial`;
//! - the body is a slice of the input.
//!
//! Bounded: about 2,000 generated cases in all plus a few thousand deterministic
//! truncations; a few seconds in a debug build. `fuzz/` runs the same calls
//! unbounded under libFuzzer.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::Config;
use switchboard::sip::message::*;

/// A typical trunk INVITE (Twilio-like), the shape the gateway sees most.
const INVITE: &str = "INVITE sip:+15550100@gw.example.com:5060;transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK2f8a.1c3e;rport\r\n\
Max-Forwards: 69\r\n\
From: \"+1 555 0123\" <sip:+15550123@198.51.100.7>;tag=73a9c2e1_6772d868_5b5d\r\n\
To: <sip:+15550100@gw.example.com>\r\n\
Call-ID: 7f1c5e0a2b6d4e3f9a8b7c6d5e4f3a2b@198.51.100.7\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:+15550123@198.51.100.7:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY\r\n\
Supported: timer, replaces\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

/// Valid messages to mutate: the INVITE above and the whole RFC 4475 corpus.
fn seeds() -> Vec<Vec<u8>> {
    let dir = format!("{}/tests/data/rfc4475", env!("CARGO_MANIFEST_DIR"));
    let mut v = vec![INVITE.as_bytes().to_vec()];
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .collect();
    files.sort();
    v.extend(files.iter().map(|p| std::fs::read(p).unwrap()));
    assert!(v.len() > 40, "RFC 4475 corpus missing from {dir}");
    v
}

const NAMES: [HeaderName; 19] = [
    HeaderName::Via,
    HeaderName::From,
    HeaderName::To,
    HeaderName::CallId,
    HeaderName::CSeq,
    HeaderName::Contact,
    HeaderName::ContentLength,
    HeaderName::ContentType,
    HeaderName::MaxForwards,
    HeaderName::Route,
    HeaderName::RecordRoute,
    HeaderName::Authorization,
    HeaderName::ProxyAuthorization,
    HeaderName::Supported,
    HeaderName::Require,
    HeaderName::Allow,
    HeaderName::Expires,
    HeaderName::UserAgent,
    HeaderName::Other,
];

/// Every free-standing value parser on one string.
fn exercise_str(s: &str) {
    let _ = split_list(s).count();
    let _ = params(s).count();
    let _ = param(s, "tag");
    let _ = phone_number(s);
    let _ = split_host_port(s);
    let _ = CSeq::parse(s);
    if let Ok(v) = Via::parse(s) {
        assert!(s.contains(v.host), "Via host not from its input");
    }
    if let Some(u) = SipUri::parse(s) {
        if let Some(user) = u.user {
            let _ = phone_number(user);
        }
        let _ = params(u.params).count();
    }
    if let Some(na) = NameAddr::parse(s) {
        let _ = na.tag();
        let _ = SipUri::parse(na.uri);
    }
}

/// Every entry point and accessor of the parser on one input.
fn exercise(input: &[u8]) {
    match frame_len(input) {
        Framing::Complete(n) => assert!(
            n > 0 && n <= input.len(),
            "Complete({n}) of {}",
            input.len()
        ),
        Framing::KeepAlive(n) => assert!(n > 0 && n <= input.len()),
        Framing::Partial | Framing::Invalid(_) => {}
    }
    let Ok(m) = SipMessage::parse(Bytes::copy_from_slice(input)) else {
        return;
    };
    let _ = format!("{m:?}");
    let body = m.body();
    assert!(body.len() <= input.len());
    assert_eq!(m.body_bytes().len(), body.len());
    let _ = (
        m.method(),
        m.method_str(),
        m.status(),
        m.reason(),
        m.is_request(),
    );
    if let Some(ru) = m.request_uri() {
        exercise_str(ru);
    }
    for h in m.headers() {
        let _ = m.header_name(h);
        exercise_str(m.header_value(h));
    }
    for name in NAMES {
        let _ = m.header(name);
        for v in m.header_values(name) {
            exercise_str(v);
        }
        let _ = m.header_values_raw(name).count();
    }
    let _ = m.header_by_name("x-unknown");
    let _ = m.header_by_name("");
    let (call_id, cseq, via, from, to) = (m.call_id(), m.cseq(), m.top_via(), m.from(), m.to());
    for na in [&from, &to].into_iter().flatten() {
        let _ = na.tag();
        if let Some(u) = SipUri::parse(na.uri) {
            if let Some(user) = u.user {
                let _ = phone_number(user);
            }
        }
    }
    let _ = m.validate_response();
    // validate_request's documented promise (it returns Ok for any response).
    if m.is_request() && m.validate_request().is_ok() {
        assert!(call_id.is_some(), "validated request without Call-ID");
        assert!(cseq.is_ok(), "validated request with bad CSeq: {cseq:?}");
        assert!(via.is_ok(), "validated request with bad Via: {via:?}");
        assert!(from.is_ok(), "validated request with bad From: {from:?}");
        assert!(to.is_ok(), "validated request with bad To: {to:?}");
    }
}

fn cfg(cases: u32) -> Config {
    Config {
        cases,
        // Keep the repository clean: a failure prints its minimal input instead.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Bytes that make SIP structure: separators, line ends, quotes, digits, tokens.
fn sipish_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(b"\r\n :;,<>\"\\@/=?%.-+ \t0123456789".to_vec()),
        3 => prop::sample::select(b"SIPsipVvaiftlmcTOFROMINVITEBYE".to_vec()),
        1 => any::<u8>(),
    ]
}

/// A mutation of a valid message.
#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: prop::sample::Index,
        byte: u8,
    },
    Remove {
        at: prop::sample::Index,
    },
    Insert {
        at: prop::sample::Index,
        byte: u8,
    },
    Truncate {
        at: prop::sample::Index,
    },
    DupLine {
        line: prop::sample::Index,
    },
    DropLine {
        line: prop::sample::Index,
    },
    SwapLines {
        a: prop::sample::Index,
        b: prop::sample::Index,
    },
    /// A header with a value of `len` copies of `fill`.
    HugeValue {
        name: &'static str,
        fill: u8,
        len: usize,
    },
    /// Replace every run of digits in one line with a huge number.
    HugeNumber {
        line: prop::sample::Index,
        digits: usize,
    },
    ManyHeaders {
        count: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<prop::sample::Index>;
    prop_oneof![
        4 => (idx(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        2 => idx().prop_map(|at| Mutation::Remove { at }),
        2 => (idx(), sipish_byte()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        1 => idx().prop_map(|at| Mutation::Truncate { at }),
        2 => idx().prop_map(|line| Mutation::DupLine { line }),
        2 => idx().prop_map(|line| Mutation::DropLine { line }),
        1 => (idx(), idx()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        1 => (
            prop::sample::select(vec!["Via", "v", "From", "To", "Call-ID", "CSeq", "Contact", "X-Junk", "Content-Length"]),
            prop::sample::select(b"a,;<>\"9 %".to_vec()),
            0usize..70_000,
        )
            .prop_map(|(name, fill, len)| Mutation::HugeValue { name, fill, len }),
        1 => (idx(), 10usize..400).prop_map(|(line, digits)| Mutation::HugeNumber { line, digits }),
        1 => (100usize..300).prop_map(|count| Mutation::ManyHeaders { count }),
    ]
}

fn lines(b: &[u8]) -> Vec<Vec<u8>> {
    b.split_inclusive(|c| *c == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn apply(mut b: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = b.len();
    match m {
        Mutation::Flip { at, byte } if n > 0 => b[at.index(n)] = *byte,
        Mutation::Remove { at } if n > 0 => {
            b.remove(at.index(n));
        }
        Mutation::Insert { at, byte } => b.insert(at.index(n + 1), *byte),
        Mutation::Truncate { at } => b.truncate(at.index(n + 1)),
        Mutation::DupLine { line } => {
            let mut l = lines(&b);
            if !l.is_empty() {
                let i = line.index(l.len());
                l.insert(i, l[i].clone());
            }
            b = l.concat();
        }
        Mutation::DropLine { line } => {
            let mut l = lines(&b);
            if !l.is_empty() {
                l.remove(line.index(l.len()));
            }
            b = l.concat();
        }
        Mutation::SwapLines { a, b: c } => {
            let mut l = lines(&b);
            if !l.is_empty() {
                let (i, j) = (a.index(l.len()), c.index(l.len()));
                l.swap(i, j);
            }
            b = l.concat();
        }
        Mutation::HugeValue { name, fill, len } => {
            let mut l = lines(&b);
            let mut h = format!("{name}: ").into_bytes();
            h.extend(std::iter::repeat_n(*fill, *len));
            h.extend_from_slice(b"\r\n");
            l.insert(1.min(l.len()), h);
            b = l.concat();
        }
        Mutation::HugeNumber { line, digits } => {
            let mut l = lines(&b);
            if !l.is_empty() {
                let i = line.index(l.len());
                let mut out = Vec::new();
                let mut in_digits = false;
                for &c in &l[i] {
                    if c.is_ascii_digit() {
                        if !in_digits {
                            out.extend(std::iter::repeat_n(b'9', *digits));
                        }
                        in_digits = true;
                    } else {
                        in_digits = false;
                        out.push(c);
                    }
                }
                l[i] = out;
            }
            b = l.concat();
        }
        Mutation::ManyHeaders { count } => {
            let mut l = lines(&b);
            let extra = b"Via: SIP/2.0/UDP h;branch=z9hG4bKx\r\n".to_vec();
            for _ in 0..*count {
                l.insert(1.min(l.len()), extra.clone());
            }
            b = l.concat();
        }
        _ => {}
    }
    b
}

proptest! {
    #![proptest_config(cfg(600))]

    /// Arbitrary bytes.
    #[test]
    fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..1500)) {
        exercise(&b);
    }

    /// SIP-shaped noise behind a plausible start line, to get past the first checks.
    #[test]
    fn sipish_noise_never_panics(
        start in prop::sample::select(vec![
            "INVITE sip:a@b SIP/2.0\r\n", "OPTIONS sip:x SIP/2.0\r\n", "SIP/2.0 200 OK\r\n",
            "BYE sip:+1555@h:5060;transport=tcp SIP/2.0\r\n", "", "\r\n\r\n",
        ]),
        rest in prop::collection::vec(sipish_byte(), 0..800),
    ) {
        let mut b = start.as_bytes().to_vec();
        b.extend(rest);
        exercise(&b);
    }

    /// Values made of the characters the list, param and URI splitters care about.
    #[test]
    fn value_parsers_never_panic(s in "[ -~\\t\u{80}-\u{10FFFF}]{0,200}") {
        exercise_str(&s);
    }
}

proptest! {
    #![proptest_config(cfg(800))]

    /// Valid messages, mutated one to four times.
    #[test]
    fn mutated_valid_messages_never_panic(
        seed in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..5),
    ) {
        let seeds = seeds();
        let mut b = seeds[seed.index(seeds.len())].clone();
        for m in &muts {
            b = apply(b, m);
        }
        exercise(&b);
    }
}

/// Every prefix of every seed (what a TCP reader sees while bytes trickle in): no
/// panic, and every strict prefix of a complete frame is `Partial`.
#[test]
fn truncation_at_every_length() {
    for seed in seeds() {
        let full = frame_len(&seed);
        for k in 0..=seed.len() {
            let p = &seed[..k];
            exercise(p);
            if let Framing::Complete(n) = full {
                if k < n {
                    assert_eq!(
                        frame_len(p),
                        Framing::Partial,
                        "prefix {k} of a {n}-byte frame: {:?}",
                        String::from_utf8_lossy(p)
                    );
                }
            }
        }
    }
}

/// Two messages back to back on a stream: the first frame is cut exactly, and the
/// second is found after it.
#[test]
fn back_to_back_frames() {
    let one = INVITE.as_bytes();
    let two = [one, one].concat();
    assert_eq!(frame_len(&two), Framing::Complete(one.len()));
    assert_eq!(frame_len(&two[one.len()..]), Framing::Complete(one.len()));
    let m = SipMessage::parse(Bytes::copy_from_slice(&two[..one.len()])).unwrap();
    m.validate_request().unwrap();
    assert_eq!(m.body(), b"v=0\n");
}

/// Limits hold at their edges: a 64 KiB datagram, 128 header lines.
#[test]
fn limits() {
    let big = vec![b'a'; MAX_MESSAGE + 1];
    assert_eq!(
        SipMessage::parse(Bytes::from(big.clone())).unwrap_err(),
        ParseError::TooLarge
    );
    assert!(matches!(frame_len(&big), Framing::Invalid(_)));
    // Too many header lines: the table stays bounded (extra lines are dropped,
    // but for the few a 400 needs), and the request is refused as such.
    let mut many =
        String::from("OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n");
    for _ in 0..(4 * MAX_HEADERS) {
        many.push_str("X: y\r\n");
    }
    many.push_str(
        "From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    );
    let m = SipMessage::parse(Bytes::from(many)).unwrap();
    assert!(m.headers().len() <= MAX_HEADERS + 16);
    assert_eq!(m.call_id(), Some("c"), "core headers past the limit kept");
    assert_eq!(m.validate_request(), Err(ParseError::TooManyHeaders));
}
