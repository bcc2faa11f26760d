//! The HTTP side of a LiveKit SDK's connection attempt: which endpoint, which
//! token, which options, and whether it is admitted.
//!
//! Where it sits: the `:7880` listener reads one HTTP/1.1 request line and its
//! `Authorization` header, then calls [`ConnectRequest::parse`] and [`admit`].
//! For `/rtc/validate` and `/rtc/v1/validate` that is the whole job
//! ([`validate`] gives the [`HttpAnswer`] to write). For `/rtc` and `/rtc/v1`
//! an [`Admission`] (room, identity, effective claims) goes on to the room's
//! owner shard and the WebSocket upgrade; a [`Refusal`] is answered *before*
//! the upgrade, because the SDKs read the HTTP status and body and show them
//! (`could not establish signal connection: <body>`).
//!
//! What it owns: the endpoint table, query-string decoding
//! (`application/x-www-form-urlencoded`, WHATWG URL s5.1), where the token may
//! come from (`Authorization: Bearer`, RFC 6750 s2.1, or `access_token=`,
//! RFC 6750 s2.3), the connect options the SDKs send, and the rules
//! livekit-server applies on top of the token (`rtcservice.go`
//! `validateInternal`): `publish=` needs `canPublish`, `attributes=` needs
//! `canUpdateOwnMetadata`. The v1 `join_request=` (a protobuf
//! `WrappedJoinRequest`) is only carried here; the signal layer decodes it with
//! the `livekit-protocol` types.
//!
//! Sans-IO: strings in, values out; `now_unix` is an argument.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;

use super::token::{bearer_token, Claims, KeyStore, TokenError};

/// Which generation of the signal protocol an endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// `/rtc`: publisher and subscriber PeerConnections; the server offers on
    /// the subscriber.
    V0,
    /// `/rtc/v1`: one PeerConnection, the client always offers; the join
    /// request travels in the query (`join_request=`).
    V1,
}

/// The endpoints of a connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The WebSocket.
    Signal(Generation),
    /// Plain HTTP GET the SDKs call after a failed connect, to show why.
    Validate(Generation),
}

impl Endpoint {
    /// The endpoint at `path` (no query), if any. One trailing `/` is
    /// tolerated (`ws://host:7880/` joined with `rtc` by hand).
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.strip_suffix('/').unwrap_or(path);
        match path {
            "/rtc" => Some(Endpoint::Signal(Generation::V0)),
            "/rtc/validate" => Some(Endpoint::Validate(Generation::V0)),
            "/rtc/v1" => Some(Endpoint::Signal(Generation::V1)),
            "/rtc/v1/validate" => Some(Endpoint::Validate(Generation::V1)),
            _ => None,
        }
    }

    pub fn generation(self) -> Generation {
        match self {
            Endpoint::Signal(g) | Endpoint::Validate(g) => g,
        }
    }

    pub fn is_validate(self) -> bool {
        matches!(self, Endpoint::Validate(_))
    }
}

/// What the client says about itself (v0 query; v1 has it in the join
/// request's `client_info`). Informational: logs and `ClientInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientParams {
    /// `js`, `python`, `rust`, `reactnative`, ...
    pub sdk: String,
    pub version: String,
    /// The signal protocol revision the client speaks.
    pub protocol: Option<i32>,
    pub os: String,
    pub os_version: String,
    pub browser: String,
    pub browser_version: String,
    pub device_model: String,
}

/// One connection attempt as the request line and headers describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    pub endpoint: Endpoint,
    /// From `Authorization: Bearer`, else `access_token=`.
    pub token: Option<String>,
    /// `room=`: only used when the token allows any room.
    pub room: Option<String>,
    /// `auto_subscribe=` (default on).
    pub auto_subscribe: bool,
    /// `reconnect=1`: resume the participant named by `sid=`.
    pub reconnect: bool,
    /// `reconnect_reason=` (`livekit.ReconnectReason`; 0 when absent).
    pub reconnect_reason: i32,
    /// `sid=`: the participant to resume.
    pub participant_sid: Option<String>,
    pub adaptive_stream: bool,
    pub subscriber_allow_pause: Option<bool>,
    pub disable_ice_lite: bool,
    /// `publish=<name>`: an extra, publish-only connection of a participant.
    pub publish_only: Option<String>,
    /// `attributes=`: base64url of a JSON object of extra attributes.
    pub attributes: Option<String>,
    /// v1 `join_request=`: base64url of a protobuf `WrappedJoinRequest`.
    pub join_request: Option<String>,
    pub client: ClientParams,
}

/// Why an attempt is refused; `Display` is the response body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not one of our endpoints (livekit-server answers 404 to a non-upgrade
    /// request on `/rtc` too; the caller decides that, it knows the headers).
    #[error("404 page not found")]
    NotFound,
    /// No token in the header or the query: livekit-server finds no grants and
    /// answers with its permission error.
    #[error("no permissions to access the room")]
    MissingToken,
    #[error("{0}")]
    Token(#[from] TokenError),
    /// `publish=` without `canPublish`.
    #[error("no permissions to access the room")]
    PublishNotAllowed,
    /// `attributes=` without `canUpdateOwnMetadata`.
    #[error("no permissions to access the room")]
    AttributesNotAllowed,
    /// `attributes=` that is not base64url of a JSON object of strings
    /// (refused on validate; ignored on connect, as livekit-server does).
    #[error("cannot decode attributes")]
    BadAttributes,
}

impl Refusal {
    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::NotFound => 404,
            Refusal::MissingToken | Refusal::PublishNotAllowed | Refusal::AttributesNotAllowed => {
                401
            }
            Refusal::Token(e) => e.http_status(),
            Refusal::BadAttributes => 400,
        }
    }
}

impl ConnectRequest {
    /// Read a request target (`/rtc?access_token=...`) and the value of its
    /// `Authorization` header, if any. A header that is present wins over
    /// `access_token=` and must be `Bearer` (livekit-server's rule).
    pub fn parse(target: &str, authorization: Option<&str>) -> Result<ConnectRequest, Refusal> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let endpoint = Endpoint::from_path(path).ok_or(Refusal::NotFound)?;
        let q = Query::parse(query);
        let token = match authorization {
            Some(h) => Some(bearer_token(h)?.to_owned()),
            None => q.get("access_token").map(Cow::into_owned),
        }
        .filter(|t| !t.is_empty());
        let text = |k: &str| q.get(k).map(Cow::into_owned).unwrap_or_default();
        Ok(ConnectRequest {
            endpoint,
            token,
            room: q.get("room").map(Cow::into_owned).filter(|r| !r.is_empty()),
            auto_subscribe: q.get("auto_subscribe").is_none_or(|v| truthy(&v)),
            reconnect: q.get("reconnect").is_some_and(|v| truthy(&v)),
            reconnect_reason: q
                .get("reconnect_reason")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            participant_sid: q.get("sid").map(Cow::into_owned).filter(|s| !s.is_empty()),
            adaptive_stream: q.get("adaptive_stream").is_some_and(|v| truthy(&v)),
            subscriber_allow_pause: q.get("subscriber_allow_pause").map(|v| truthy(&v)),
            disable_ice_lite: q.get("disable_ice_lite").is_some_and(|v| truthy(&v)),
            publish_only: q
                .get("publish")
                .map(Cow::into_owned)
                .filter(|p| !p.is_empty()),
            attributes: q
                .get("attributes")
                .map(Cow::into_owned)
                .filter(|a| !a.is_empty()),
            join_request: q
                .get("join_request")
                .map(Cow::into_owned)
                .filter(|j| !j.is_empty()),
            client: ClientParams {
                sdk: text("sdk"),
                version: text("version"),
                protocol: q.get("protocol").and_then(|v| v.parse().ok()),
                os: text("os"),
                os_version: text("os_version"),
                browser: text("browser"),
                browser_version: text("browser_version"),
                device_model: text("device_model"),
            },
        })
    }
}

/// An admitted connection: who joins which room with which permissions.
#[derive(Clone, Debug, PartialEq)]
pub struct Admission {
    pub room: String,
    /// The token's identity, with `#<name>` appended for a publish-only
    /// connection (livekit-server's convention).
    pub identity: String,
    /// The verified claims with the connection's adjustments applied: extra
    /// `attributes=` merged in, `canSubscribe` off for a publish-only
    /// connection. Permissions are read from here.
    pub claims: Claims,
}

/// Verify the token of `req` at `now_unix` and apply livekit-server's
/// connection rules. `strict` is true for the validate endpoints, where an
/// undecodable `attributes=` is an error rather than ignored.
pub fn admit(
    req: &ConnectRequest,
    keys: &KeyStore,
    now_unix: i64,
    strict: bool,
) -> Result<Admission, Refusal> {
    let token = req.token.as_deref().ok_or(Refusal::MissingToken)?;
    let mut claims = keys.verify(token, now_unix)?;
    let grant = claims.authorize_join(req.room.as_deref())?;
    let room = grant.room.to_owned();
    let mut identity = grant.identity.to_owned();
    let can_publish = grant.permission.can_publish;
    let can_update_metadata = grant.permission.can_update_metadata;
    let video = claims
        .video
        .as_mut()
        .expect("authorize_join succeeded, so there is a video grant");
    if let Some(name) = &req.publish_only {
        if !can_publish {
            return Err(Refusal::PublishNotAllowed);
        }
        video.can_subscribe = Some(false);
        identity.push('#');
        identity.push_str(name);
    }
    if let Some(encoded) = &req.attributes {
        if !can_update_metadata {
            return Err(Refusal::AttributesNotAllowed);
        }
        match decode_attributes(encoded) {
            Some(extra) => {
                // Empty values never delete an attribute the token set.
                for (k, v) in extra.into_iter().filter(|(_, v)| !v.is_empty()) {
                    claims.attributes.insert(k, v);
                }
            }
            None if strict => return Err(Refusal::BadAttributes),
            None => {}
        }
    }
    Ok(Admission {
        room,
        identity,
        claims,
    })
}

/// The answer to `GET /rtc/validate` or `/rtc/v1/validate` (or to any refused
/// connect): 200 `success`, or the refusal's status and text.
pub fn validate(
    target: &str,
    authorization: Option<&str>,
    keys: &KeyStore,
    now_unix: i64,
) -> HttpAnswer {
    let answer = ConnectRequest::parse(target, authorization)
        .and_then(|req| admit(&req, keys, now_unix, true).map(|_| ()));
    match answer {
        Ok(()) => HttpAnswer::ok("success"),
        Err(refusal) => HttpAnswer::refusal(&refusal),
    }
}

/// A small HTTP/1.1 response with a text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

impl HttpAnswer {
    pub fn ok(body: &str) -> HttpAnswer {
        HttpAnswer {
            status: 200,
            body: body.to_owned(),
        }
    }

    pub fn refusal(refusal: &Refusal) -> HttpAnswer {
        HttpAnswer {
            status: refusal.http_status(),
            body: refusal.to_string(),
        }
    }

    /// Append the response to `out`. `Access-Control-Allow-Origin: *` because
    /// the JS SDK fetches validate from whatever page it runs in (livekit-server
    /// sets it for the same reason); the connection closes after the answer.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(160);
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nAccess-Control-Allow-Origin: *\r\n\
             Connection: close\r\n\r\n",
            self.status,
            super::http::reason(self.status),
            self.body.len()
        );
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(self.body.as_bytes());
    }
}

/// livekit-server's `boolValue`: `1` or `true`.
fn truthy(v: &str) -> bool {
    v == "1" || v == "true"
}

/// `attributes=`: base64url (padded, as Go's `base64.URLEncoding`; unpadded
/// tolerated) of a JSON object of strings.
fn decode_attributes(encoded: &str) -> Option<BTreeMap<String, String>> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let json = engine.decode(encoded).ok()?;
    serde_json::from_slice(&json).ok()
}

/// A decoded query string: the first value of each name wins (Go's
/// `FormValue`); a pair whose escapes are broken is skipped, as Go skips it.
struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    fn parse(query: &'a str) -> Query<'a> {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Some((form_decode(k)?, form_decode(v)?))
            })
            .collect();
        Query { pairs }
    }

    fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// `application/x-www-form-urlencoded` decoding of one name or value: `+` is
/// a space, `%XX` a byte; the result must be UTF-8. Borrows when nothing is
/// escaped (the common case: tokens are base64url and dots).
fn form_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_value(bytes.next()?)?;
                let lo = hex_value(bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::token::{encode, VideoGrant};
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn token(video: VideoGrant) -> String {
        let mut c = Claims::new("devkey", "alice", NOW, 3600);
        c.attributes.insert("team".into(), "blue".into());
        c.video = Some(video);
        encode(&c, b"secret")
    }

    fn join(room: &str) -> VideoGrant {
        VideoGrant {
            room_join: true,
            room: room.into(),
            ..VideoGrant::default()
        }
    }

    fn attrs_b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE.encode(json)
    }

    #[test]
    fn endpoints() {
        use Generation::*;
        assert_eq!(Endpoint::from_path("/rtc"), Some(Endpoint::Signal(V0)));
        assert_eq!(Endpoint::from_path("/rtc/"), Some(Endpoint::Signal(V0)));
        assert_eq!(
            Endpoint::from_path("/rtc/validate"),
            Some(Endpoint::Validate(V0))
        );
        assert_eq!(Endpoint::from_path("/rtc/v1"), Some(Endpoint::Signal(V1)));
        assert_eq!(
            Endpoint::from_path("/rtc/v1/validate"),
            Some(Endpoint::Validate(V1))
        );
        for p in [
            "",
            "/",
            "/rtc/v2",
            "/rtcx",
            "/twirp/livekit.RoomService/ListRooms",
            "/rtc//",
        ] {
            assert_eq!(Endpoint::from_path(p), None, "{p}");
        }
        assert!(Endpoint::Validate(V1).is_validate());
        assert_eq!(Endpoint::Signal(V1).generation(), V1);
    }

    #[test]
    fn js_sdk_v0_query_is_read() {
        let t = token(join("call-1"));
        let target = format!(
            "/rtc?access_token={t}&auto_subscribe=0&sdk=js&version=2.23.0&protocol=16\
             &os=Linux&browser=Chrome&browser_version=156.0&adaptive_stream=1\
             &reconnect=1&sid=PA_abc&reconnect_reason=2&device_model=x+y"
        );
        let r = ConnectRequest::parse(&target, None).unwrap();
        assert_eq!(r.endpoint, Endpoint::Signal(Generation::V0));
        assert_eq!(r.token.as_deref(), Some(t.as_str()));
        assert!(!r.auto_subscribe && r.adaptive_stream && r.reconnect);
        assert_eq!(r.participant_sid.as_deref(), Some("PA_abc"));
        assert_eq!(r.reconnect_reason, 2);
        assert_eq!(r.client.sdk, "js");
        assert_eq!(r.client.version, "2.23.0");
        assert_eq!(r.client.protocol, Some(16));
        assert_eq!(r.client.browser_version, "156.0");
        assert_eq!(r.client.device_model, "x y");
        assert_eq!(r.join_request, None);
    }

    #[test]
    fn defaults_when_the_query_is_empty() {
        let r = ConnectRequest::parse("/rtc/v1", None).unwrap();
        assert!(r.auto_subscribe, "auto-subscribe is on unless turned off");
        assert!(!r.reconnect && !r.adaptive_stream && !r.disable_ice_lite);
        assert_eq!(r.token, None);
        assert_eq!(r.subscriber_allow_pause, None);
        assert_eq!(r.client, ClientParams::default());
    }

    #[test]
    fn v1_join_request_is_carried_decoded_from_the_query() {
        let r = ConnectRequest::parse(
            "/rtc/v1?join_request=CAES%2BAB_-x%3D%3D&access_token=a.b.c",
            None,
        )
        .unwrap();
        assert_eq!(r.join_request.as_deref(), Some("CAES+AB_-x=="));
        assert_eq!(r.token.as_deref(), Some("a.b.c"));
    }

    /// The `join_request=` value the Python SDK 1.2.1 sent (captured on
    /// loopback): percent-encoded, padded base64url of a `WrappedJoinRequest`
    /// with `compression = GZIP` (field 1 = 1), whose field 2 holds gzip.
    #[test]
    fn python_sdk_join_request_decodes_to_a_gzip_wrapped_request() {
        let value = include_str!("testdata/python-sdk-1.2.1-join-request.txt").trim();
        let r = ConnectRequest::parse(
            &format!("/rtc/v1?join_request={value}"),
            Some("Bearer a.b.c"),
        )
        .unwrap();
        assert_eq!(r.endpoint, Endpoint::Signal(Generation::V1));
        let b64 = r.join_request.unwrap();
        assert!(b64.ends_with("=="), "padding arrives percent-encoded");
        let raw = base64::engine::general_purpose::URL_SAFE
            .decode(&b64)
            .unwrap();
        // Protobuf: tag 1 varint = 1 (GZIP), tag 2 length-delimited.
        assert_eq!(&raw[..3], &[0x08, 0x01, 0x12]);
        let gzip_at = raw.windows(2).position(|w| w == [0x1f, 0x8b]).unwrap();
        assert!(gzip_at < 8, "gzip member right after the length");
    }

    #[test]
    fn bearer_header_wins_and_must_be_bearer() {
        let r = ConnectRequest::parse(
            "/rtc?access_token=from.query.x",
            Some("Bearer from.header.y"),
        )
        .unwrap();
        assert_eq!(r.token.as_deref(), Some("from.header.y"));
        let e = ConnectRequest::parse("/rtc", Some("Basic abc")).unwrap_err();
        assert_eq!(e, Refusal::Token(TokenError::NotBearer));
        assert_eq!(e.http_status(), 401);
    }

    #[test]
    fn query_decoding_follows_form_rules() {
        let q = Query::parse("a=1&a=2&b=x%20y+z&c&=v&d=%E2%82%AC&bad=%zz&e=%4&f=%41");
        assert_eq!(q.get("a").as_deref(), Some("1"), "first value wins");
        assert_eq!(q.get("b").as_deref(), Some("x y z"));
        assert_eq!(q.get("c").as_deref(), Some(""));
        assert_eq!(q.get("d").as_deref(), Some("\u{20ac}"));
        assert_eq!(q.get("bad"), None, "broken escape: pair skipped");
        assert_eq!(q.get("e"), None);
        assert_eq!(q.get("f").as_deref(), Some("A"));
        assert_eq!(form_decode("%FF"), None, "not UTF-8");
        assert!(matches!(form_decode("plain"), Some(Cow::Borrowed("plain"))));
    }

    #[test]
    fn admitted_with_the_tokens_room() {
        let req = ConnectRequest::parse(
            &format!("/rtc?access_token={}", token(join("call-1"))),
            None,
        )
        .unwrap();
        let a = admit(&req, &KeyStore::dev(), NOW, false).unwrap();
        assert_eq!(a.room, "call-1");
        assert_eq!(a.identity, "alice");
        assert_eq!(a.claims.attributes["team"], "blue");
    }

    #[test]
    fn refusals_and_their_answers() {
        let keys = KeyStore::dev();
        let check = |target: &str, status: u16, body: &str| {
            let a = validate(target, None, &keys, NOW);
            assert_eq!((a.status, a.body.as_str()), (status, body), "{target}");
        };
        check("/rtc/validate", 401, "no permissions to access the room");
        check(
            "/rtc/v1/validate?access_token=",
            401,
            "no permissions to access the room",
        );
        check(
            "/rtc/validate?access_token=garbage",
            401,
            "invalid authorization token: expected three dot-separated parts",
        );
        let expired = {
            let mut c = Claims::new("devkey", "alice", NOW - 7200, 3600);
            c.video = Some(join("r"));
            encode(&c, b"secret")
        };
        check(
            &format!("/rtc/validate?access_token={expired}"),
            401,
            "invalid token: token is expired (exp)",
        );
        let other_key = {
            let mut c = Claims::new("APIx", "alice", NOW, 3600);
            c.video = Some(join("r"));
            encode(&c, b"secret")
        };
        check(
            &format!("/rtc/v1/validate?access_token={other_key}"),
            401,
            "invalid API key: APIx",
        );
        let wrong = token(join("call-1"));
        let a = validate(
            &format!("/rtc/validate?access_token={wrong}&room=call-2"),
            None,
            &keys,
            NOW,
        );
        assert_eq!(a.status, 401);
        assert!(a.body.starts_with("no permissions to access the room"));
        let no_join = token(VideoGrant {
            room_admin: true,
            room: "r".into(),
            ..VideoGrant::default()
        });
        check(
            &format!("/rtc/validate?access_token={no_join}"),
            401,
            "no permissions to access the room",
        );
        let any_room = token(join(""));
        check(
            &format!("/rtc/validate?access_token={any_room}"),
            400,
            "no room name",
        );
        check(
            &format!("/rtc/validate?access_token={any_room}&room=lobby"),
            200,
            "success",
        );
        check("/nope", 404, "404 page not found");
        check(
            &format!("/rtc/v1/validate?access_token={wrong}"),
            200,
            "success",
        );
        let with_header = validate(
            "/rtc/validate",
            Some(&format!("Bearer {wrong}")),
            &keys,
            NOW,
        );
        assert_eq!(with_header, HttpAnswer::ok("success"));
    }

    #[test]
    fn publish_only_connections_need_can_publish() {
        let keys = KeyStore::dev();
        let t = token(join("r"));
        let req =
            ConnectRequest::parse(&format!("/rtc?access_token={t}&publish=screen"), None).unwrap();
        let a = admit(&req, &keys, NOW, false).unwrap();
        assert_eq!(a.identity, "alice#screen");
        assert_eq!(a.claims.video.as_ref().unwrap().can_subscribe, Some(false));
        let t = token(VideoGrant {
            can_publish: Some(false),
            ..join("r")
        });
        let req =
            ConnectRequest::parse(&format!("/rtc?access_token={t}&publish=screen"), None).unwrap();
        assert_eq!(
            admit(&req, &keys, NOW, false),
            Err(Refusal::PublishNotAllowed)
        );
    }

    #[test]
    fn attributes_need_permission_and_merge_without_deleting() {
        let keys = KeyStore::dev();
        let extra = attrs_b64(r#"{"team":"","mood":"calm"}"#);
        let allowed = token(VideoGrant {
            can_update_own_metadata: Some(true),
            ..join("r")
        });
        let req = ConnectRequest::parse(
            &format!("/rtc?access_token={allowed}&attributes={extra}"),
            None,
        )
        .unwrap();
        let a = admit(&req, &keys, NOW, true).unwrap();
        assert_eq!(
            a.claims.attributes["team"], "blue",
            "empty value deletes nothing"
        );
        assert_eq!(a.claims.attributes["mood"], "calm");

        let denied = token(join("r"));
        let req = ConnectRequest::parse(
            &format!("/rtc?access_token={denied}&attributes={extra}"),
            None,
        )
        .unwrap();
        assert_eq!(
            admit(&req, &keys, NOW, false),
            Err(Refusal::AttributesNotAllowed)
        );

        let bad = attrs_b64("[1,2]");
        let req = ConnectRequest::parse(
            &format!("/rtc?access_token={allowed}&attributes={bad}"),
            None,
        )
        .unwrap();
        assert_eq!(admit(&req, &keys, NOW, true), Err(Refusal::BadAttributes));
        assert_eq!(Refusal::BadAttributes.http_status(), 400);
        let a = admit(&req, &keys, NOW, false).expect("ignored on connect");
        assert_eq!(a.claims.attributes.len(), 1);
    }

    #[test]
    fn http_answer_bytes() {
        let mut out = Vec::new();
        HttpAnswer::refusal(&Refusal::Token(TokenError::BadSignature)).write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 35\r\nAccess-Control-Allow-Origin: *\r\n\
             Connection: close\r\n\r\ninvalid token: signature is invalid"
        );
        let mut out = Vec::new();
        HttpAnswer::ok("success").write_to(&mut out);
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(out.ends_with(b"\r\n\r\nsuccess"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_target_never_panics(target in "(/rtc(/v1)?(/validate)?)?[ -~]{0,200}", auth in proptest::option::of("[ -~]{0,40}")) {
                let _ = validate(&target, auth.as_deref(), &KeyStore::dev(), NOW);
            }

            #[test]
            fn form_decode_round_trips_escaped_text(s in "\\PC{0,40}") {
                let escaped: String = s
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect();
                let decoded = form_decode(&escaped);
                prop_assert_eq!(decoded.as_deref(), Some(s.as_str()));
            }
        }
    }
}
