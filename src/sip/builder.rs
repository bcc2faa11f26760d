//! Building the SIP messages switchboard sends: responses to requests it
//! received (RFC 3261 s8.2.6) and in-dialog requests it originates (s12.2.1.1).
//!
//! Where it sits: the transaction layer and the call core decide *what* to send;
//! this module writes the bytes. Output goes into one `Vec` sized up front.

use super::message::{HeaderName, Method, SipMessage, Via};
use bytes::Bytes;
use std::fmt::Write as _;
use std::net::SocketAddr;

/// Methods we answer, for `Allow` (RFC 3261 s20.5).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE";

/// Everything about a response beyond status and reason.
#[derive(Default)]
pub struct ResponseParts<'a> {
    /// To-tag to add when the request's To has none (s8.2.6.2).
    pub to_tag: Option<&'a str>,
    /// Complete extra header lines, each ending in CRLF.
    pub extra_headers: &'a str,
    /// (Content-Type, body).
    pub body: Option<(&'a str, &'a [u8])>,
}

/// Writes a response to `req`, which arrived from `source`.
///
/// Via headers are copied in order; the top one gets `received` (s18.2.1) and,
/// when the client asked with a bare `rport`, the source port (RFC 3581 s4).
pub fn response(
    req: &SipMessage,
    source: SocketAddr,
    status: u16,
    reason: &str,
    server: &str,
    parts: &ResponseParts<'_>,
) -> Bytes {
    let body_len = parts.body.map_or(0, |(_, b)| b.len());
    let mut out = String::with_capacity(req.as_bytes().len() + 256 + body_len);
    let _ = write!(out, "SIP/2.0 {status} {reason}\r\n");
    let mut first = true;
    for via in req.header_values(HeaderName::Via) {
        out.push_str("Via: ");
        out.push_str(via);
        if first {
            first = false;
            if let Ok(v) = Via::parse(via) {
                push_received(&mut out, &v, source);
            }
        }
        out.push_str("\r\n");
    }
    for name in [HeaderName::From, HeaderName::CallId] {
        if let Some(v) = req.header(name) {
            out.push_str(header_label(name));
            out.push_str(v);
            out.push_str("\r\n");
        }
    }
    if let Some(to) = req.header(HeaderName::To) {
        out.push_str("To: ");
        out.push_str(to);
        let has_tag = req.to().ok().and_then(|t| t.tag()).is_some();
        if let (false, Some(tag), true) = (has_tag, parts.to_tag, status > 100) {
            out.push_str(";tag=");
            out.push_str(tag);
        }
        out.push_str("\r\n");
    }
    if let Some(v) = req.header(HeaderName::CSeq) {
        out.push_str("CSeq: ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    // s8.2.6.1: a 100 Trying copies Timestamp; harmless to omit otherwise.
    if status == 100 {
        if let Some(ts) = req.header_by_name("Timestamp") {
            let _ = write!(out, "Timestamp: {ts}\r\n");
        }
    }
    if !server.is_empty() {
        let _ = write!(out, "Server: {server}\r\n");
    }
    out.push_str(parts.extra_headers);
    finish(out, parts.body)
}

fn header_label(name: HeaderName) -> &'static str {
    match name {
        HeaderName::From => "From: ",
        HeaderName::CallId => "Call-ID: ",
        _ => "",
    }
}

fn push_received(out: &mut String, via: &Via<'_>, source: SocketAddr) {
    let ip = source.ip().to_string();
    if via.received.is_none() && (via.host != ip || via.rport.is_some()) {
        let _ = write!(out, ";received={ip}");
    }
    if via.rport == Some(None) {
        // Replace the bare ";rport" by ";rport=PORT" would need rewriting the value;
        // appending the filled-in form is what RFC 3581 s4 examples show peers accept,
        // but a duplicate parameter is not. So rewrite.
        if let Some(pos) = find_bare_rport(out) {
            out.insert_str(pos + ";rport".len(), &format!("={}", source.port()));
        }
    }
}

/// Position of a bare `;rport` (not followed by `=`) in the last Via line being written.
fn find_bare_rport(out: &str) -> Option<usize> {
    let line_start = out.rfind("\r\nVia: ").map_or(0, |p| p + 2);
    let line = &out[line_start..];
    let lower = line.to_ascii_lowercase();
    let mut from = 0;
    while let Some(p) = lower[from..].find(";rport") {
        let at = from + p;
        let after = lower.as_bytes().get(at + 6).copied();
        if matches!(after, None | Some(b';') | Some(b' ') | Some(b'\t')) {
            return Some(line_start + at);
        }
        from = at + 6;
    }
    None
}

fn finish(mut out: String, body: Option<(&str, &[u8])>) -> Bytes {
    match body {
        Some((ctype, b)) => {
            let _ = write!(
                out,
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                b.len()
            );
            let mut v = out.into_bytes();
            v.extend_from_slice(b);
            Bytes::from(v)
        }
        None => {
            out.push_str("Content-Length: 0\r\n\r\n");
            Bytes::from(out.into_bytes())
        }
    }
}

/// Where to send a response over UDP (RFC 3261 s18.2.2, RFC 3581 s4): the source
/// address when the client asked for rport, else the received address with the
/// Via port (default 5060).
pub fn response_target(req: &SipMessage, source: SocketAddr) -> SocketAddr {
    match req.top_via() {
        Ok(v) if v.rport.is_some() => source,
        Ok(v) => SocketAddr::new(source.ip(), v.port.unwrap_or(5060)),
        Err(_) => source,
    }
}

/// Where to reconnect when a stream (TCP) response finds its connection closed
/// (RFC 3261 s18.2.2): the source IP with the Via sent-by port. The driver uses
/// the request's connection first when it is still open.
pub fn stream_response_target(req: &SipMessage, source: SocketAddr) -> SocketAddr {
    match req.top_via() {
        Ok(v) => SocketAddr::new(source.ip(), v.port.unwrap_or(5060)),
        Err(_) => source,
    }
}

/// An in-dialog request we originate (BYE, re-INVITE...), s12.2.1.1.
pub struct DialogRequest<'a> {
    pub method: Method,
    pub request_uri: &'a str,
    /// Our Via sent-by and transport, e.g. ("UDP", "203.0.113.7:5060").
    pub via_transport: &'a str,
    pub via_sent_by: &'a str,
    pub branch: &'a str,
    /// From = our URI with our tag; To = theirs with their tag (already formatted values).
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub route_set: &'a [String],
    pub contact: &'a str,
    pub user_agent: &'a str,
    pub extra_headers: &'a str,
    pub body: Option<(&'a str, &'a [u8])>,
}

pub fn request(r: &DialogRequest<'_>) -> Bytes {
    let mut out = String::with_capacity(512);
    let m = r.method.as_str();
    let _ = write!(
        out,
        "{m} {} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={};rport\r\nMax-Forwards: 70\r\n",
        r.request_uri, r.via_transport, r.via_sent_by, r.branch
    );
    for route in r.route_set {
        let _ = write!(out, "Route: {route}\r\n");
    }
    let _ = write!(
        out,
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {m}\r\n",
        r.from, r.to, r.call_id, r.cseq
    );
    if !r.contact.is_empty() {
        let _ = write!(out, "Contact: {}\r\n", r.contact);
    }
    if !r.user_agent.is_empty() {
        let _ = write!(out, "User-Agent: {}\r\n", r.user_agent);
    }
    out.push_str(r.extra_headers);
    finish(out, r.body)
}

/// ACK for a non-2xx final response to an INVITE we sent is part of the client
/// transaction (s17.1.1.3); we never send INVITEs yet, so only this helper for
/// CANCEL-less cases is absent on purpose.
#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> SipMessage {
        SipMessage::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn response_copies_and_fills_rport() {
        let r = req("OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5061;rport;branch=z9hG4bK1, SIP/2.0/UDP p\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c1\r\nCSeq: 7 OPTIONS\r\n\r\n");
        let src: SocketAddr = "192.0.2.9:40000".parse().unwrap();
        let out = response(
            &r,
            src,
            200,
            "OK",
            "switchboard",
            &ResponseParts {
                to_tag: Some("t1"),
                ..Default::default()
            },
        );
        let s = std::str::from_utf8(&out).unwrap();
        assert!(s.starts_with("SIP/2.0 200 OK\r\n"), "{s}");
        assert!(
            s.contains(
                "Via: SIP/2.0/UDP 10.0.0.1:5061;rport=40000;branch=z9hG4bK1;received=192.0.2.9\r\n"
            ),
            "{s}"
        );
        assert!(s.contains("Via: SIP/2.0/UDP p\r\n"));
        assert!(s.contains("To: <sip:x@y>;tag=t1\r\n"));
        assert!(s.contains("CSeq: 7 OPTIONS\r\n"));
        assert!(s.ends_with("Content-Length: 0\r\n\r\n"));
        let parsed = SipMessage::parse(out).unwrap();
        parsed.validate_response().unwrap();
        assert_eq!(response_target(&r, src), src);
    }

    #[test]
    fn response_target_without_rport_uses_via_port() {
        let r = req("OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c1\r\nCSeq: 7 OPTIONS\r\n\r\n");
        let src: SocketAddr = "192.0.2.9:40000".parse().unwrap();
        assert_eq!(
            response_target(&r, src),
            "192.0.2.9:5061".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn request_shape() {
        let out = request(&DialogRequest {
            method: Method::Bye,
            request_uri: "sip:alice@10.0.0.1:5061",
            via_transport: "UDP",
            via_sent_by: "127.0.0.1:5060",
            branch: "z9hG4bK-sb0-1",
            from: "<sip:+15550100@127.0.0.1>;tag=sb0-x",
            to: "<sip:+15550123@10.0.0.1>;tag=abc",
            call_id: "c1",
            cseq: 1,
            route_set: &["<sip:proxy;lr>".to_string()],
            contact: "<sip:127.0.0.1:5060>",
            user_agent: "switchboard",
            extra_headers: "",
            body: None,
        });
        let m = SipMessage::parse(out).unwrap();
        m.validate_request().unwrap();
        assert_eq!(m.method(), Some(Method::Bye));
        assert_eq!(m.cseq().unwrap().seq, 1);
        assert_eq!(m.top_via().unwrap().branch, Some("z9hG4bK-sb0-1"));
        assert_eq!(m.header(HeaderName::Route), Some("<sip:proxy;lr>"));
    }
}
