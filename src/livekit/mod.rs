//! The LiveKit-compatible side of a room: what unmodified LiveKit SDKs (Python
//! `livekit`, `livekit-client` in a browser, voice agents) speak to.
//!
//! Where it sits in the data flow (issue 5, see `docs/livekit.md` for the plan):
//!
//! ```text
//! SDK --HTTP GET /rtc[/v1][/validate] + token--> any shard's :7880 listener
//!     token::KeyStore::verify (this module, sans-IO) -> 401 with LiveKit's words, or
//!     Claims::authorize_join -> the room -> owner shard (hash(room) % shards)
//! owner shard: signal session (protobuf SignalRequest/SignalResponse over WebSocket)
//!     -> str0m Rtc per participant on the shard's WebRTC UDP port
//!     -> media::Room (ParticipantKind::WebRtc beside ParticipantKind::Sip)
//! ```
//!
//! What it owns today:
//! - [`token`]: access tokens, HS256 JWT verification against the configured
//!   API keys, LiveKit's claim names and grant defaults, the refusal messages
//!   the SDKs show;
//! - [`connect`]: the HTTP side of a connection attempt (`/rtc`, `/rtc/v1` and
//!   their `validate` endpoints): query options, where the token comes from,
//!   admission, the validate answer;
//! - [`http`]: the `:7880` front door: one bounded HTTP/1.1 request head ->
//!   an answer (validate, CORS preflight, 4xx) or a WebSocket upgrade (the
//!   socket side is `runtime::livekit_http`);
//! - [`sip_participant`]: how a phone caller appears in a room (identity,
//!   name, kind SIP, `sip.*` attributes, call status) and DTMF codes;
//! - [`ids`]: LiveKit-style ids (`RM_`, `PA_`, `TR_`, `SCL_`).
//!
//! - [`signal`]: one room's LiveKit signal state (`RoomSignal`), sans-IO;
//! - [`peer`]: one participant's WebRTC session over str0m (ICE-lite, Opus,
//!   data channels), and `PeerSet` to demultiplex a shard's UDP port.
//!
//! Wired to the shards by `runtime::signal_rooms` (signal and WebRTC
//! connection); media through the room is not routed yet (docs/livekit.md
//! section 0 says what works end to end).
//!
//! Like the rest of the protocol cores it never reads the clock or touches a
//! socket: the time of a check is an argument (`now_unix`).

pub mod connect;
pub mod http;
pub mod ids;
pub mod peer;
pub mod signal;
pub mod sip_participant;
pub mod token;
pub mod twirp;
