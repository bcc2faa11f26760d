//! The front door of the LiveKit port (`:7880`): one HTTP/1.1 request head in,
//! one decision out.
//!
//! Where it sits: a shard's listener (`runtime::livekit_http`) reads bytes
//! until [`parse_head`] has a whole request head, then asks [`route`] what to
//! do. The answer is either a complete HTTP response to write before closing
//! ([`Reply::Answer`]: validate, CORS preflight, 4xx), or a WebSocket upgrade
//! ([`Reply::Upgrade`]) for an admitted `/rtc` or `/rtc/v1` connection, carrying
//! the `101 Switching Protocols` head and the [`Admission`] the signal session
//! starts from.
//!
//! What it owns: the HTTP rules of livekit-server's `rtcservice.go` as the SDKs
//! observe them: a token refusal is answered with its HTTP status *before* the
//! upgrade (the SDKs read the status and body and show them), a GET of `/rtc`
//! without `Upgrade: websocket` is a 404, `validate` answers carry
//! `Access-Control-Allow-Origin: *` and a CORS preflight (`OPTIONS`, Fetch
//! standard s3.2.2) is answered, because livekit-client calls them from a web
//! page. The WebSocket opening handshake checks of RFC 6455 s4.2.1 and the
//! `Sec-WebSocket-Accept` value (s4.2.2, via tungstenite's
//! `derive_accept_key`).
//!
//! Sans-IO: bytes and `now_unix` in, bytes and decisions out; no socket, no
//! clock. The request head is bounded by the caller's `max` (peer input).

use std::fmt::Write as _;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use base64::Engine as _;

use super::connect::{admit, validate, Admission, ConnectRequest, Endpoint, HttpAnswer, Refusal};
use super::token::KeyStore;

/// Headers read at most per request; more is a 431-worthy request, answered 400.
pub const MAX_HEADERS: usize = 64;

/// Why a request head cannot be served. Every variant is answered 400 (or 431)
/// and the connection closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("only HTTP/1.1 is served here")]
    Version,
}

impl HeadError {
    /// RFC 6585 s5 for an oversized head, else RFC 9110 s15.5.1.
    pub fn http_status(&self) -> u16 {
        match self {
            HeadError::TooLarge(_) => 431,
            _ => 400,
        }
    }

    /// The response to write before closing.
    pub fn answer(&self) -> Vec<u8> {
        Response::text(self.http_status(), &self.to_string()).to_bytes()
    }
}

/// The parts of a request head that matter here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Path and query, as sent (`/rtc/v1?join_request=...`).
    pub target: String,
    pub authorization: Option<String>,
    /// `Upgrade` lists the `websocket` token (RFC 6455 s4.2.1 item 3).
    pub upgrade_websocket: bool,
    /// `Connection` lists the `upgrade` token (item 4).
    pub connection_upgrade: bool,
    pub websocket_key: Option<String>,
    pub websocket_version: Option<String>,
    /// `Access-Control-Request-Headers` of a preflight.
    pub cors_request_headers: Option<String>,
    /// For a request with a body (Twirp).
    pub content_type: Option<String>,
    pub content_length: Option<usize>,
}

/// Parse a request head from the start of `buf`: `Ok(None)` while it is
/// incomplete and within `max` bytes; `Ok(Some((head, len)))` once the blank
/// line is in, `len` being where the head ends (bytes after it belong to the
/// next protocol). Header names are matched case-insensitively (RFC 9110
/// s5.1); a repeated `Authorization` is refused (which one would win?).
pub fn parse_head(buf: &[u8], max: usize) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max => return Err(HeadError::TooLarge(max)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > max {
        return Err(HeadError::TooLarge(max));
    }
    if req.version != Some(1) {
        return Err(HeadError::Version);
    }
    let mut head = RequestHead {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        ..RequestHead::default()
    };
    for h in req.headers.iter() {
        let value = || {
            std::str::from_utf8(h.value)
                .map(|v| v.trim().to_owned())
                .map_err(|_| HeadError::Malformed(format!("{} is not UTF-8", h.name)))
        };
        let name = h.name;
        if name.eq_ignore_ascii_case("authorization") {
            if head.authorization.is_some() {
                return Err(HeadError::Malformed("two Authorization headers".into()));
            }
            head.authorization = Some(value()?);
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket |= has_token(&value()?, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            head.connection_upgrade |= has_token(&value()?, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.websocket_key = Some(value()?);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.websocket_version = Some(value()?);
        } else if name.eq_ignore_ascii_case("access-control-request-headers") {
            head.cors_request_headers = Some(value()?);
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value()?);
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = value()?
                .parse()
                .map_err(|_| HeadError::Malformed("bad Content-Length".into()))?;
            if head.content_length.replace(n).is_some() {
                return Err(HeadError::Malformed("two Content-Length headers".into()));
            }
        }
    }
    Ok(Some((head, len)))
}

/// A comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What to do with a request.
#[derive(Debug)]
pub enum Reply {
    /// Write this response, then close.
    Answer(Response),
    /// Write [`Upgrade::response`], then speak WebSocket.
    Upgrade(Box<Upgrade>),
}

/// An admitted WebSocket connection.
#[derive(Debug)]
pub struct Upgrade {
    pub request: ConnectRequest,
    pub admission: Admission,
    /// `Sec-WebSocket-Accept` (RFC 6455 s4.2.2 item 5.4).
    pub accept: String,
}

impl Upgrade {
    /// The `101 Switching Protocols` head.
    pub fn response(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            self.accept
        )
        .into_bytes()
    }
}

/// Decide what `head` gets at `now_unix`. Order, as livekit-server: the path
/// (404), the method (405, preflight), then for `validate` the token; for the
/// signal endpoints the upgrade request itself (404 without one), the token
/// (its refusal, before any upgrade), and only then the WebSocket handshake
/// fields (400, or 426 for a version other than 13, RFC 6455 s4.4).
pub fn route(head: &RequestHead, keys: &KeyStore, now_unix: i64) -> Reply {
    let path = head
        .target
        .split_once('?')
        .map_or(&*head.target, |(p, _)| p);
    let Some(endpoint) = Endpoint::from_path(path) else {
        return Reply::Answer(Response::refusal(&Refusal::NotFound));
    };
    match head.method.as_str() {
        "GET" => {}
        "OPTIONS" => return Reply::Answer(preflight(head)),
        _ => {
            return Reply::Answer(
                Response::text(405, "method not allowed").header("Allow", "GET, OPTIONS"),
            )
        }
    }
    if endpoint.is_validate() {
        let answer = validate(&head.target, head.authorization.as_deref(), keys, now_unix);
        return Reply::Answer(Response::from_answer(&answer));
    }
    if !head.upgrade_websocket {
        return Reply::Answer(Response::refusal(&Refusal::NotFound));
    }
    let admitted = ConnectRequest::parse(&head.target, head.authorization.as_deref())
        .and_then(|req| admit(&req, keys, now_unix, false).map(|a| (req, a)));
    let (request, admission) = match admitted {
        Ok(x) => x,
        Err(refusal) => return Reply::Answer(Response::refusal(&refusal)),
    };
    if !head.connection_upgrade {
        return Reply::Answer(Response::text(400, "Connection header must list upgrade"));
    }
    if head.websocket_version.as_deref() != Some("13") {
        return Reply::Answer(
            Response::text(426, "unsupported WebSocket version (13 is)")
                .header("Sec-WebSocket-Version", "13"),
        );
    }
    // s4.2.1 item 5: base64 of a 16-byte nonce.
    let key = head.websocket_key.as_deref().unwrap_or_default();
    let nonce_ok = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|n| n.len() == 16);
    if !nonce_ok {
        return Reply::Answer(Response::text(400, "bad Sec-WebSocket-Key"));
    }
    Reply::Upgrade(Box::new(Upgrade {
        request,
        admission,
        accept: derive_accept_key(key.as_bytes()),
    }))
}

/// The CORS preflight answer (Fetch standard s3.2.3): any origin, GET, and
/// the request headers asked for. `Access-Control-Allow-Headers: *` would not
/// cover `Authorization` (Fetch s3.2.3, "CORS-non-wildcard request-header
/// name"), so the asked-for list is echoed.
fn preflight(head: &RequestHead) -> Response {
    let allow_headers = head
        .cors_request_headers
        .as_deref()
        .filter(|h| is_header_list(h))
        .unwrap_or("Authorization")
        .to_owned();
    Response::empty(204)
        .header("Access-Control-Allow-Methods", "GET, OPTIONS")
        .header("Access-Control-Allow-Headers", &allow_headers)
        .header("Access-Control-Max-Age", "86400")
}

/// Only header names and commas, so echoing it cannot split our response.
fn is_header_list(v: &str) -> bool {
    v.len() <= 512
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b))
}

/// A small HTTP/1.1 response; every one carries
/// `Access-Control-Allow-Origin: *` and closes the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    fn empty(status: u16) -> Response {
        Response::text(status, "")
    }

    pub fn from_answer(a: &HttpAnswer) -> Response {
        Response::text(a.status, &a.body)
    }

    pub fn refusal(r: &Refusal) -> Response {
        Response::from_answer(&HttpAnswer::refusal(r))
    }

    fn header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = String::with_capacity(256);
        // Writing to a String cannot fail.
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if self.status != 204 {
            let _ = write!(
                head,
                "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
                self.body.len()
            );
        }
        head.push_str("Access-Control-Allow-Origin: *\r\n");
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut out = head.into_bytes();
        if self.status != 204 {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The reason phrase of `status`: RFC 9110 s15 (and RFC 6585 s5 for 431).
/// One table for every answer of the LiveKit port.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::super::token::{encode, Claims, VideoGrant};
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const MAX: usize = 16 * 1024;
    /// RFC 6455 s1.3's example nonce and its accept value.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn token(room: &str, secret: &[u8], iat: i64) -> String {
        let mut c = Claims::new("devkey", "alice", iat, 3600);
        c.video = Some(VideoGrant {
            room_join: true,
            room: room.into(),
            ..VideoGrant::default()
        });
        encode(&c, secret)
    }

    fn head(text: &str) -> RequestHead {
        let (h, len) = parse_head(text.as_bytes(), MAX).unwrap().unwrap();
        assert_eq!(len, text.len());
        h
    }

    fn ws_request(target: &str, auth: Option<&str>) -> String {
        let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:7880\r\nUpgrade: WebSocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{auth}\r\n"
        )
    }

    fn answer(r: Reply) -> Response {
        match r {
            Reply::Answer(a) => a,
            Reply::Upgrade(u) => panic!("upgraded: {u:?}"),
        }
    }

    fn text(r: &Response) -> String {
        String::from_utf8(r.to_bytes()).unwrap()
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes: a head, "more", or an error; never a panic, never
            /// a head longer than the bound.
            #[test]
            fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                if let Ok(Some((_, len))) = parse_head(&bytes, 1024) {
                    prop_assert!(len <= 1024 && len <= bytes.len());
                }
            }

            /// Any target and header values the parser lets through: `route`
            /// answers without panicking, and only an admitted token upgrades.
            #[test]
            fn any_request_routes_without_panic(
                method in "(GET|OPTIONS|POST|HEAD)",
                target in "/[a-z/]{0,12}(\\?[ -~]{0,64})?",
                auth in proptest::option::of("[ -~]{0,64}"),
                upgrade in any::<bool>(),
            ) {
                let head = RequestHead {
                    method,
                    target,
                    authorization: auth,
                    upgrade_websocket: upgrade,
                    connection_upgrade: upgrade,
                    websocket_key: Some(KEY.into()),
                    websocket_version: Some("13".into()),
                    cors_request_headers: None,
                    ..RequestHead::default()
                };
                match route(&head, &KeyStore::dev(), NOW) {
                    Reply::Answer(a) => prop_assert!(a.status != 101),
                    Reply::Upgrade(_) => prop_assert!(false, "upgraded without a valid token"),
                }
            }
        }
    }

    #[test]
    fn head_is_read_whole_split_anywhere_and_bounded() {
        let req = ws_request("/rtc/v1?x=1", Some("a.b.c"));
        for cut in 0..req.len() {
            assert_eq!(parse_head(&req.as_bytes()[..cut], MAX), Ok(None), "{cut}");
        }
        let mut with_frame = req.clone().into_bytes();
        with_frame.extend_from_slice(&[0x82, 0x80]);
        let (h, len) = parse_head(&with_frame, MAX).unwrap().unwrap();
        assert_eq!(len, req.len(), "bytes after the head are not the head's");
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/rtc/v1?x=1");
        assert_eq!(h.authorization.as_deref(), Some("Bearer a.b.c"));
        assert!(h.upgrade_websocket && h.connection_upgrade);
        assert_eq!(h.websocket_key.as_deref(), Some(KEY));
        assert_eq!(h.websocket_version.as_deref(), Some("13"));
        // Endless headers: refused at the bound, not buffered.
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(5000));
        assert_eq!(
            parse_head(endless.as_bytes(), 1024),
            Err(HeadError::TooLarge(1024))
        );
        assert_eq!(HeadError::TooLarge(1).http_status(), 431);
    }

    #[test]
    fn malformed_heads_are_errors_not_panics() {
        for bad in [
            &b"GET /rtc HTTP/1.0\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET /rtc HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
            b"GET /rtc HTTP/1.1\r\nAuthorization: \xff\xfe\r\n\r\n",
            b"GET\x00/ HTTP/1.1\r\n\r\n",
        ] {
            let e = parse_head(bad, MAX).unwrap_err();
            assert_eq!(e.http_status(), 400, "{e}");
            assert!(String::from_utf8_lossy(&e.answer()).starts_with("HTTP/1.1 400 "));
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            parse_head(many.as_bytes(), MAX),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn validate_answers_with_cors_and_the_sdk_message() {
        let keys = KeyStore::dev();
        let good = token("room-1", b"secret", NOW);
        let r = answer(route(
            &head(&format!(
                "GET /rtc/v1/validate?access_token={good} HTTP/1.1\r\n\r\n"
            )),
            &keys,
            NOW,
        ));
        let t = text(&r);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(t.contains("\r\nAccess-Control-Allow-Origin: *\r\n"));
        assert!(t.ends_with("\r\n\r\nsuccess"));
        let forged = token("room-1", b"not-the-secret", NOW);
        let r = answer(route(
            &head(&format!(
                "GET /rtc/validate HTTP/1.1\r\nAuthorization: Bearer {forged}\r\n\r\n"
            )),
            &keys,
            NOW,
        ));
        assert_eq!(r.status, 401);
        assert_eq!(r.body, "invalid token: signature is invalid");
        let t = text(&r);
        assert!(t.contains(&format!("Content-Length: {}\r\n", r.body.len())));
        assert!(t.contains("Access-Control-Allow-Origin: *"));
    }

    #[test]
    fn preflight_echoes_asked_headers_and_allows_get() {
        let keys = KeyStore::dev();
        let r = answer(route(
            &head(
                "OPTIONS /rtc/v1/validate HTTP/1.1\r\nOrigin: http://x\r\n\
                 Access-Control-Request-Method: GET\r\n\
                 Access-Control-Request-Headers: authorization\r\n\r\n",
            ),
            &keys,
            NOW,
        ));
        let t = text(&r);
        assert!(t.starts_with("HTTP/1.1 204 No Content\r\n"), "{t}");
        assert!(t.contains("Access-Control-Allow-Origin: *\r\n"));
        assert!(t.contains("Access-Control-Allow-Methods: GET, OPTIONS\r\n"));
        assert!(t.contains("Access-Control-Allow-Headers: authorization\r\n"));
        assert!(
            !t.contains("Content-Length"),
            "204 has no body (RFC 9110 s8.6)"
        );
        // A list that could split the response is not echoed.
        let r = answer(route(
            &head(
                "OPTIONS /rtc/validate HTTP/1.1\r\nAccess-Control-Request-Headers: a;b=c\r\n\r\n",
            ),
            &keys,
            NOW,
        ));
        assert!(text(&r).contains("Access-Control-Allow-Headers: Authorization\r\n"));
    }

    #[test]
    fn unknown_paths_other_methods_and_plain_gets_of_rtc() {
        let keys = KeyStore::dev();
        let good = token("r", b"secret", NOW);
        let status = |req: &str| answer(route(&head(req), &keys, NOW)).status;
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(
            status("GET /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\n\r\n"),
            404
        );
        assert_eq!(status("POST /rtc/validate HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status("DELETE /rtc HTTP/1.1\r\n\r\n"), 405);
        // livekit-server: /rtc without an upgrade request is a 404, token or not.
        assert_eq!(
            status(&format!("GET /rtc?access_token={good} HTTP/1.1\r\n\r\n")),
            404
        );
        let r = answer(route(&head("PUT /rtc HTTP/1.1\r\n\r\n"), &keys, NOW));
        assert!(text(&r).contains("\r\nAllow: GET, OPTIONS\r\n"));
    }

    #[test]
    fn upgrade_is_refused_with_the_token_status_before_switching() {
        let keys = KeyStore::dev();
        let check = |target: &str, auth: Option<&str>, status: u16, body: &str| {
            let r = answer(route(&head(&ws_request(target, auth)), &keys, NOW));
            assert_eq!((r.status, r.body.as_str()), (status, body), "{target}");
        };
        check("/rtc/v1", None, 401, "no permissions to access the room");
        let expired = token("r", b"secret", NOW - 7200);
        check(
            "/rtc/v1",
            Some(&expired),
            401,
            "invalid token: token is expired (exp)",
        );
        let forged = token("r", b"other", NOW);
        check(
            &format!("/rtc?access_token={forged}"),
            None,
            401,
            "invalid token: signature is invalid",
        );
        let good = token("room-1", b"secret", NOW);
        let r = answer(route(
            &head(&ws_request(
                &format!("/rtc?access_token={good}&room=room-2"),
                None,
            )),
            &keys,
            NOW,
        ));
        assert_eq!(r.status, 401);
        assert!(r.body.starts_with("no permissions to access the room"));
    }

    #[test]
    fn admitted_upgrade_answers_101_with_the_rfc6455_accept() {
        let keys = KeyStore::dev();
        let good = token("room-1", b"secret", NOW);
        let Reply::Upgrade(u) = route(&head(&ws_request("/rtc/v1", Some(&good))), &keys, NOW)
        else {
            panic!("not upgraded");
        };
        assert_eq!(u.accept, ACCEPT);
        assert_eq!(u.admission.room, "room-1");
        assert_eq!(u.admission.identity, "alice");
        assert_eq!(
            u.request.endpoint,
            Endpoint::Signal(super::super::connect::Generation::V1)
        );
        let r = String::from_utf8(u.response()).unwrap();
        assert_eq!(
            r,
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
            )
        );
    }

    #[test]
    fn handshake_fields_are_checked_after_the_token() {
        let keys = KeyStore::dev();
        let good = token("r", b"secret", NOW);
        let base = ws_request("/rtc/v1", Some(&good));
        let status = |req: String| answer(route(&head(&req), &keys, NOW));
        let r = status(base.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"));
        assert_eq!(r.status, 426);
        assert!(text(&r).contains("Sec-WebSocket-Version: 13\r\n"));
        let r = status(base.replace(KEY, "c2hvcnQ="));
        assert_eq!((r.status, r.body.as_str()), (400, "bad Sec-WebSocket-Key"));
        let r = status(base.replace("keep-alive, Upgrade", "keep-alive"));
        assert_eq!(r.status, 400);
    }
}
