//! Fuzz target: the SIP parser (`sip::message`) on arbitrary bytes.
//!
//! The same calls as `tests/sip_parser_props.rs`, unbounded: framing, parsing,
//! validation and every accessor, plus the invariants those tests check
//! (`frame_len` never claims more than it got; a validated request has a usable
//! Call-ID, CSeq, Via, From and To). Seed corpus: `tests/data/rfc4475/*.dat`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchboard::sip::message::*;

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

fn value(s: &str) {
    let _ = split_list(s).count();
    let _ = params(s).count();
    let _ = param(s, "tag");
    let _ = phone_number(s);
    let _ = split_host_port(s);
    let _ = CSeq::parse(s);
    let _ = Via::parse(s);
    if let Some(u) = SipUri::parse(s) {
        if let Some(user) = u.user {
            let _ = phone_number(user);
        }
    }
    if let Some(na) = NameAddr::parse(s) {
        let _ = na.tag();
        let _ = SipUri::parse(na.uri);
    }
}

fuzz_target!(|data: &[u8]| {
    match frame_len(data) {
        Framing::Complete(n) | Framing::KeepAlive(n) => assert!(n > 0 && n <= data.len()),
        Framing::Partial | Framing::Invalid(_) => {}
    }
    if let Ok(s) = std::str::from_utf8(data) {
        value(s);
    }
    let Ok(m) = SipMessage::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let _ = format!("{m:?}");
    assert!(m.body().len() <= data.len());
    let _ = (m.method(), m.method_str(), m.status(), m.reason());
    if let Some(ru) = m.request_uri() {
        value(ru);
    }
    for h in m.headers() {
        let _ = m.header_name(h);
        value(m.header_value(h));
    }
    for name in NAMES {
        let _ = m.header(name);
        m.header_values(name).for_each(value);
    }
    let (call_id, cseq, via, from, to) = (m.call_id(), m.cseq(), m.top_via(), m.from(), m.to());
    let _ = m.validate_response();
    if m.is_request() && m.validate_request().is_ok() {
        assert!(call_id.is_some());
        assert!(cseq.is_ok());
        assert!(via.is_ok());
        assert!(from.is_ok());
        assert!(to.is_ok());
    }
});
