//! LiveKit's RoomService over Twirp: `POST /twirp/livekit.RoomService/<Method>`
//! on the LiveKit port, as the server SDKs (`livekit-api`, `livekit-server-sdk`)
//! and agents call it to hang up a phone caller (`RemoveParticipant`), end a
//! room (`DeleteRoom`), look into one (`ListParticipants`), or set a
//! participant's attributes or the room's metadata (`UpdateParticipant`,
//! `UpdateRoomMetadata`).
//!
//! Where it sits: `runtime::livekit_http` reads the request head and body on
//! whichever shard accepted the connection, hands them to [`parse`] (token,
//! grant, method, body), and carries the [`RoomCall`] to the room's owner
//! shard, whose `SignalRooms` performs it; [`respond`] writes the answer.
//! Sans-IO: bytes in, a call or a ready response out.
//!
//! Twirp (twitchtv/twirp, protocol v7): the body is protobuf
//! (`application/protobuf`) or protojson (`application/json`), answered in
//! the same encoding; errors are JSON `{"code": ..., "msg": ...}` with the
//! HTTP status of their code. Grants as livekit-server checks them:
//! `roomAdmin` for the room named in the request (participant and metadata calls),
//! `roomCreate` for `DeleteRoom`, `roomList` or `roomAdmin` to list.

use std::fmt::Write as _;

use livekit_protocol as lk;

use super::token::{bearer_token, Claims, KeyStore};

/// Largest request body read (a RoomService request is a few dozen bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// The request path prefix of the service.
pub const PREFIX: &str = "/twirp/livekit.RoomService/";

/// What the caller asks of a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomCall {
    /// Disconnect a participant; a phone caller is hung up (BYE).
    RemoveParticipant {
        room: String,
        identity: String,
    },
    /// Disconnect everyone (phone callers hung up) and end the room.
    DeleteRoom {
        room: String,
    },
    ListParticipants {
        room: String,
    },
    /// New metadata, name (empty: unchanged) and attributes (an empty value
    /// deletes) for a participant.
    UpdateParticipant {
        room: String,
        identity: String,
        metadata: String,
        name: String,
        attributes: std::collections::HashMap<String, String>,
    },
    UpdateRoomMetadata {
        room: String,
        metadata: String,
    },
}

impl RoomCall {
    pub fn room(&self) -> &str {
        match self {
            RoomCall::RemoveParticipant { room, .. }
            | RoomCall::DeleteRoom { room }
            | RoomCall::ListParticipants { room }
            | RoomCall::UpdateParticipant { room, .. }
            | RoomCall::UpdateRoomMetadata { room, .. } => room,
        }
    }
}

/// How the body came, and so how the answer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// A checked request, ready for the room's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwirpRequest {
    pub call: RoomCall,
    pub encoding: Encoding,
}

/// What the owner made of a [`RoomCall`].
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Removed,
    Deleted,
    Participants(Vec<lk::ParticipantInfo>),
    Participant(Box<lk::ParticipantInfo>),
    Room(Box<lk::Room>),
    /// Twirp `not_found` with this message.
    NotFound(&'static str),
    /// Twirp `invalid_argument` with this message.
    Invalid(&'static str),
}

/// An HTTP response with a binary body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwirpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl TwirpResponse {
    /// A Twirp error (its JSON body, the status its code maps to).
    pub fn error(code: &'static str, msg: &str) -> TwirpResponse {
        // Twirp's error codes and their HTTP statuses (twirp spec v7).
        let status = match code {
            "malformed" | "invalid_argument" => 400,
            "bad_route" => 404,
            "unavailable" => 503,
            "unauthenticated" => 401,
            "permission_denied" => 403,
            "not_found" => 404,
            "unimplemented" => 501,
            _ => 500,
        };
        let body = serde_json::json!({ "code": code, "msg": msg }).to_string();
        TwirpResponse {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = String::with_capacity(160);
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n",
            self.status,
            super::http::reason(self.status),
            self.content_type,
            self.body.len()
        );
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// The method and path alone: a Twirp route of this server called with
/// POST (checked before the body is read).
pub fn check_route(method: &str, path: &str) -> Result<(), TwirpResponse> {
    if !path.starts_with(PREFIX) {
        return Err(TwirpResponse::error("bad_route", "no such service"));
    }
    if method != "POST" {
        return Err(TwirpResponse::error(
            "bad_route",
            "Twirp methods are called with POST",
        ));
    }
    Ok(())
}

/// Check and decode one request: `path` without the query, the
/// `Content-Type` and `Authorization` headers, and the body.
pub fn parse(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    authorization: Option<&str>,
    body: &[u8],
    keys: &KeyStore,
    now_unix: i64,
) -> Result<TwirpRequest, TwirpResponse> {
    check_route(method, path)?;
    let name = path.strip_prefix(PREFIX).unwrap_or_default();
    // Twirp's own rule: the media type without parameters.
    let encoding = match content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .as_deref()
    {
        Some("application/protobuf") => Encoding::Protobuf,
        Some("application/json") => Encoding::Json,
        _ => {
            return Err(TwirpResponse::error(
                "bad_route",
                "Content-Type must be application/protobuf or application/json",
            ))
        }
    };
    let claims = match authorization.map(bearer_token) {
        Some(Ok(token)) => keys.verify(token, now_unix),
        _ => {
            return Err(TwirpResponse::error(
                "unauthenticated",
                "authorization header is missing or not a bearer token",
            ))
        }
    };
    let claims = claims.map_err(|e| TwirpResponse::error("unauthenticated", &e.to_string()))?;
    let call = match name {
        "RemoveParticipant" => {
            let r: lk::RoomParticipantIdentity = decode(encoding, body)?;
            RoomCall::RemoveParticipant {
                room: r.room,
                identity: r.identity,
            }
        }
        "DeleteRoom" => {
            let r: lk::DeleteRoomRequest = decode(encoding, body)?;
            RoomCall::DeleteRoom { room: r.room }
        }
        "ListParticipants" => {
            let r: lk::ListParticipantsRequest = decode(encoding, body)?;
            RoomCall::ListParticipants { room: r.room }
        }
        "UpdateParticipant" => {
            let r: lk::UpdateParticipantRequest = decode(encoding, body)?;
            RoomCall::UpdateParticipant {
                room: r.room,
                identity: r.identity,
                metadata: r.metadata,
                name: r.name,
                attributes: r.attributes,
            }
        }
        "UpdateRoomMetadata" => {
            let r: lk::UpdateRoomMetadataRequest = decode(encoding, body)?;
            RoomCall::UpdateRoomMetadata {
                room: r.room,
                metadata: r.metadata,
            }
        }
        _ => {
            return Err(TwirpResponse::error(
                "bad_route",
                "method not implemented by this server",
            ))
        }
    };
    if call.room().is_empty() {
        return Err(TwirpResponse::error("invalid_argument", "room is required"));
    }
    authorize(&claims, &call)?;
    Ok(TwirpRequest { call, encoding })
}

fn decode<M>(encoding: Encoding, body: &[u8]) -> Result<M, TwirpResponse>
where
    M: prost::Message + Default + for<'de> serde::Deserialize<'de>,
{
    match encoding {
        Encoding::Protobuf => M::decode(body)
            .map_err(|e| TwirpResponse::error("malformed", &format!("bad protobuf body: {e}"))),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| TwirpResponse::error("malformed", &format!("bad JSON body: {e}"))),
    }
}

/// The grant each call needs (livekit-server's `RoomService` checks).
fn authorize(claims: &Claims, call: &RoomCall) -> Result<(), TwirpResponse> {
    let grant = claims.video.clone().unwrap_or_default();
    let admin_of_room = grant.room_admin && grant.room == call.room();
    let ok = match call {
        RoomCall::RemoveParticipant { .. }
        | RoomCall::UpdateParticipant { .. }
        | RoomCall::UpdateRoomMetadata { .. } => admin_of_room,
        RoomCall::DeleteRoom { .. } => grant.room_create,
        RoomCall::ListParticipants { .. } => admin_of_room || grant.room_list,
    };
    if ok {
        Ok(())
    } else {
        Err(TwirpResponse::error(
            "permission_denied",
            "the token's grant does not allow this call on this room",
        ))
    }
}

/// The answer to `req` once its room's owner has carried it out.
pub fn respond(req: &TwirpRequest, outcome: Outcome) -> TwirpResponse {
    let encode = |m: &dyn Fn(Encoding) -> Vec<u8>| TwirpResponse {
        status: 200,
        content_type: match req.encoding {
            Encoding::Protobuf => "application/protobuf",
            Encoding::Json => "application/json",
        },
        body: m(req.encoding),
    };
    match outcome {
        Outcome::NotFound(msg) => TwirpResponse::error("not_found", msg),
        Outcome::Invalid(msg) => TwirpResponse::error("invalid_argument", msg),
        Outcome::Participant(p) => encode(&|e| body(e, &*p)),
        Outcome::Room(r) => encode(&|e| body(e, &*r)),
        Outcome::Removed => encode(&|e| body(e, &lk::RemoveParticipantResponse {})),
        Outcome::Deleted => encode(&|e| body(e, &lk::DeleteRoomResponse {})),
        Outcome::Participants(participants) => {
            let list = lk::ListParticipantsResponse { participants };
            encode(&|e| body(e, &list))
        }
    }
}

fn body<M: prost::Message + serde::Serialize>(encoding: Encoding, m: &M) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => m.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(m).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::livekit::token::{encode, VideoGrant};
    use prost::Message as _;

    const NOW: i64 = 1_800_000_000;

    fn keys() -> KeyStore {
        KeyStore::dev()
    }

    fn bearer(grant: VideoGrant) -> String {
        let mut c = Claims::new("devkey", "agent", NOW - 5, 600);
        c.video = Some(grant);
        format!("Bearer {}", encode(&c, b"secret"))
    }

    fn admin(room: &str) -> VideoGrant {
        VideoGrant {
            room_admin: true,
            room: room.into(),
            ..VideoGrant::default()
        }
    }

    fn remove_body(room: &str, identity: &str) -> Vec<u8> {
        lk::RoomParticipantIdentity {
            room: room.into(),
            identity: identity.into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn call(path: &str, ct: &str, auth: &str, body: &[u8]) -> Result<TwirpRequest, TwirpResponse> {
        parse("POST", path, Some(ct), Some(auth), body, &keys(), NOW)
    }

    #[test]
    fn remove_participant_needs_room_admin_of_that_room() {
        let path = "/twirp/livekit.RoomService/RemoveParticipant";
        let body = remove_body("call-1", "sip_+1555");
        let ok = call(
            path,
            "application/protobuf",
            &bearer(admin("call-1")),
            &body,
        )
        .expect("admin of the room");
        assert_eq!(
            ok.call,
            RoomCall::RemoveParticipant {
                room: "call-1".into(),
                identity: "sip_+1555".into()
            }
        );
        assert_eq!(ok.encoding, Encoding::Protobuf);
        let other = call(
            path,
            "application/protobuf",
            &bearer(admin("call-2")),
            &body,
        )
        .expect_err("admin of another room");
        assert_eq!(other.status, 403);
        let join_only = VideoGrant {
            room_join: true,
            room: "call-1".into(),
            ..VideoGrant::default()
        };
        let e = call(path, "application/protobuf", &bearer(join_only), &body).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(String::from_utf8_lossy(&e.body).contains("\"code\":\"permission_denied\""));
    }

    #[test]
    fn updates_need_room_admin_and_carry_their_fields() {
        let body = lk::UpdateParticipantRequest {
            room: "r".into(),
            identity: "sip_+1555".into(),
            attributes: [("crm.ticket".to_owned(), "T-1".to_owned())].into(),
            ..Default::default()
        }
        .encode_to_vec();
        let path = "/twirp/livekit.RoomService/UpdateParticipant";
        let req = call(path, "application/protobuf", &bearer(admin("r")), &body).unwrap();
        assert!(matches!(
            &req.call,
            RoomCall::UpdateParticipant { identity, attributes, .. }
                if identity == "sip_+1555" && attributes["crm.ticket"] == "T-1"
        ));
        let e = call(path, "application/protobuf", &bearer(admin("other")), &body).unwrap_err();
        assert_eq!(e.status, 403);
        let path = "/twirp/livekit.RoomService/UpdateRoomMetadata";
        let req = call(
            path,
            "application/json",
            &bearer(admin("r")),
            br#"{"room":"r","metadata":"m"}"#,
        )
        .unwrap();
        assert_eq!(
            req.call,
            RoomCall::UpdateRoomMetadata {
                room: "r".into(),
                metadata: "m".into()
            }
        );
        let r = respond(&req, Outcome::Invalid("metadata or attributes too large"));
        assert_eq!(r.status, 400);
        let room = lk::Room {
            name: "r".into(),
            metadata: "m".into(),
            ..Default::default()
        };
        let r = respond(&req, Outcome::Room(Box::new(room.clone())));
        let back: lk::Room = serde_json::from_slice(&r.body).expect("protojson Room");
        assert_eq!(back, room);
    }

    #[test]
    fn bad_tokens_and_routes_get_twirp_errors() {
        let path = "/twirp/livekit.RoomService/RemoveParticipant";
        let body = remove_body("r", "x");
        let e = parse(
            "POST",
            path,
            Some("application/protobuf"),
            None,
            &body,
            &keys(),
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.status, 401);
        let mut c = Claims::new("devkey", "agent", NOW - 5, 600);
        c.video = Some(admin("r"));
        let forged = format!("Bearer {}", encode(&c, b"not-the-secret"));
        let e = call(path, "application/protobuf", &forged, &body).unwrap_err();
        assert_eq!(e.status, 401);
        let e = call(
            "/twirp/livekit.RoomService/UpdateSubscriptions",
            "application/protobuf",
            &bearer(admin("r")),
            &body,
        )
        .unwrap_err();
        assert_eq!(e.status, 404);
        let e = call(path, "text/plain", &bearer(admin("r")), &body).unwrap_err();
        assert_eq!(e.status, 404);
        let e = call(
            path,
            "application/protobuf",
            &bearer(admin("r")),
            &[0xff, 0xff],
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse(
            "GET",
            path,
            Some("application/protobuf"),
            Some(&bearer(admin("r"))),
            &body,
            &keys(),
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.status, 404);
    }

    #[test]
    fn json_in_json_out() {
        let path = "/twirp/livekit.RoomService/DeleteRoom";
        let grant = VideoGrant {
            room_create: true,
            ..VideoGrant::default()
        };
        let req = call(
            path,
            "application/json; charset=utf-8",
            &bearer(grant),
            br#"{"room":"call-9"}"#,
        )
        .expect("JSON body");
        assert_eq!(
            req.call,
            RoomCall::DeleteRoom {
                room: "call-9".into()
            }
        );
        let r = respond(&req, Outcome::Deleted);
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        let r = respond(&req, Outcome::NotFound("room not found"));
        assert_eq!(r.status, 404);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap(),
            serde_json::json!({"code": "not_found", "msg": "room not found"})
        );
    }

    proptest::proptest! {
        /// Whatever comes (path, content type, token, body), the answer is a
        /// call or a Twirp error with a status of its code; never a panic.
        #[test]
        fn any_request_gets_a_call_or_a_twirp_error(
            method in "(POST|GET|PUT)",
            name in "(RemoveParticipant|DeleteRoom|ListParticipants|[A-Za-z]{0,12})",
            ct in proptest::option::of("(application/(protobuf|json)|text/plain)(; charset=utf-8)?"),
            admin in proptest::bool::ANY,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            let auth = if admin { bearer(admin_grant_any()) } else { "Bearer x.y.z".to_owned() };
            let path = format!("{PREFIX}{name}");
            match parse(&method, &path, ct.as_deref(), Some(&auth), &body, &keys(), NOW) {
                Ok(req) => proptest::prop_assert!(!req.call.room().is_empty()),
                Err(r) => {
                    proptest::prop_assert!([400, 401, 403, 404].contains(&r.status), "{}", r.status);
                    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
                    proptest::prop_assert!(v["code"].is_string() && v["msg"].is_string());
                }
            }
        }
    }

    /// Admin of every room it could be asked about, and allowed to create
    /// and list (the property test's valid token).
    fn admin_grant_any() -> VideoGrant {
        VideoGrant {
            room_admin: true,
            room_create: true,
            room_list: true,
            room: String::new(),
            ..VideoGrant::default()
        }
    }

    #[test]
    fn participants_are_listed_in_the_request_encoding() {
        let path = "/twirp/livekit.RoomService/ListParticipants";
        let body = lk::ListParticipantsRequest { room: "r".into() }.encode_to_vec();
        let req = call(path, "application/protobuf", &bearer(admin("r")), &body).unwrap();
        let p = lk::ParticipantInfo {
            identity: "sip_+1555".into(),
            kind: lk::participant_info::Kind::Sip as i32,
            ..Default::default()
        };
        let r = respond(&req, Outcome::Participants(vec![p.clone()]));
        let back = lk::ListParticipantsResponse::decode(&*r.body).unwrap();
        assert_eq!(back.participants, vec![p]);
        let bytes = r.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", r.body.len())));
    }
}
