//! LiveKit access tokens: HS256 JSON Web Tokens signed with an API key's secret.
//!
//! Where it sits: the first thing a LiveKit SDK's connection meets. The HTTP edge
//! takes the token from `Authorization: Bearer <jwt>` (Python SDK, Twirp clients,
//! see [`bearer_token`]) or the `access_token=` query parameter (JS SDK), calls
//! [`KeyStore::verify`] with the wall-clock time, then
//! [`Claims::authorize_join`] for `/rtc`, `/rtc/v1` and their `validate`
//! endpoints. A refusal is a [`TokenError`]: its [`TokenError::http_status`]
//! and its `Display` text are the response (the SDKs show that text to the
//! user, e.g. `could not establish signal connection: no permissions to access
//! the room`).
//!
//! What it owns: the [`KeyStore`] (API key -> secret), the claim set under
//! LiveKit's names ([`Claims`], [`VideoGrant`], [`SipGrant`]) with LiveKit's
//! defaults for absent grants, and [`encode`] for tests and tools.
//!
//! Rules, and where they come from:
//! - JWS compact serialization (RFC 7515 s7.1): three base64url parts (s2, no
//!   padding; padding is tolerated since the signature covers the text as sent).
//! - The header's `alg` must be exactly `HS256` (RFC 7518 s3.2). `none`
//!   (RFC 7518 s3.6) and every other algorithm are refused *before* any key is
//!   looked at, so a token cannot choose how it is checked. A `crit` header is
//!   refused (RFC 7515 s4.1.11: we understand no extension).
//! - The signature is compared in constant time (`hmac`'s `verify_slice`, built
//!   on `subtle`), over the header and payload text exactly as received.
//! - `iss` names the API key; `sub` is the identity (`jti` when `sub` is empty,
//!   as livekit-server does). `exp` is required (LiveKit's own verifier demands
//!   it since a signed token without one would be valid forever); `nbf` and `iat`
//!   are checked when present. All three with [`LEEWAY_SECS`] of clock skew, as
//!   go-jose (livekit-server) and the Python SDK's verifier allow (RFC 7519
//!   s4.1.4-4.1.6 leave the leeway to the implementation).
//! - Unknown claims (`agent`, `inference`, `roomPreset`, ...) are ignored, as
//!   livekit-server ignores them; JSON `null` for a string or flag reads as absent.
//!
//! Sans-IO: nothing here reads the clock; `now_unix` (seconds since the Unix
//! epoch) is an argument. Verification allocates (JSON), once per connection,
//! never per packet; input is bounded by [`MAX_TOKEN_LEN`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Clock skew tolerated on `exp`, `nbf` and `iat`: go-jose's default (used by
/// livekit-server) and the Python SDK's `TokenVerifier` default.
pub const LEEWAY_SECS: i64 = 60;

/// Longest token accepted, in bytes. Real tokens are a few hundred bytes; a
/// `roomConfig` claim makes them a few KiB. The bound keeps a hostile query
/// string from making us decode and parse megabytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The only header we write. `typ` is optional on input (RFC 7519 s5.1).
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// An HMAC-SHA256 tag is 32 bytes: 43 base64url characters unpadded.
const SIGNATURE_LEN: usize = 32;
/// Room for the signature part with padding or noise before we decode it.
const MAX_SIGNATURE_B64: usize = 64;

/// base64url (RFC 4648 s5); JWTs are unpadded (RFC 7515 s2), but padding is
/// harmless, so accept both.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a token or a join was refused.
///
/// `Display` is the text the client gets in the HTTP response body, worded as
/// livekit-server words it so users and SDK logs read the same thing; the
/// fields carry the detail for our own logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("invalid authorization header. Must start with Bearer ")]
    NotBearer,
    /// Not a JWS compact token, or its JSON does not have LiveKit's shapes.
    #[error("invalid authorization token: {0}")]
    Malformed(Malformed),
    /// `alg` other than `HS256`, including `none`.
    #[error("invalid token: unsupported signing algorithm {0:?}, expected \"HS256\"")]
    UnsupportedAlgorithm(String),
    /// `iss` names no configured API key (empty when `iss` is missing).
    #[error("invalid API key: {0}")]
    UnknownKey(String),
    /// The HMAC does not match: wrong secret, or a changed header or payload.
    #[error("invalid token: signature is invalid")]
    BadSignature,
    /// No `exp` claim.
    #[error("invalid token: token has no expiry (exp)")]
    MissingExpiry,
    /// `now_unix` is past `exp` by more than the leeway.
    #[error("invalid token: token is expired (exp)")]
    Expired { exp: i64, now: i64 },
    /// `now_unix` is before `nbf` by more than the leeway.
    #[error("invalid token: token not valid yet (nbf)")]
    NotYetValid { nbf: i64, now: i64 },
    /// `iat` is later than `now_unix` by more than the leeway.
    #[error("invalid token: token issued in the future (iat)")]
    IssuedInFuture { iat: i64, now: i64 },
    /// No video grant, or `roomJoin` not granted.
    #[error("no permissions to access the room")]
    NoJoinPermission,
    /// The token is for one room and the client asked for another.
    #[error(
        "no permissions to access the room: the token is for room {granted:?}, not {requested:?}"
    )]
    WrongRoom { granted: String, requested: String },
    /// Neither `sub` nor `jti` names the participant.
    #[error("identity cannot be empty")]
    MissingIdentity,
    /// The grant allows any room and the client named none.
    #[error("no room name")]
    NoRoomName,
}

impl TokenError {
    /// The HTTP status for this refusal: 401 for anything about the token or its
    /// permissions, 400 for a token that is valid but names no one or no room
    /// (livekit-server's split, `rtcservice.go`).
    pub fn http_status(&self) -> u16 {
        match self {
            TokenError::MissingIdentity | TokenError::NoRoomName => 400,
            _ => 401,
        }
    }
}

/// What exactly is wrong with a token that does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("token is empty")]
    Empty,
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("expected three dot-separated parts")]
    NotThreeParts,
    #[error("{0} is not valid base64url")]
    Base64(Part),
    #[error("{0} is not the expected JSON")]
    Json(Part),
    #[error("signature is not {SIGNATURE_LEN} bytes")]
    SignatureLength,
    #[error("header has a crit parameter we do not understand")]
    Critical,
}

/// One of the three parts of a JWS compact token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Header,
    Payload,
    Signature,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Payload => "payload",
            Part::Signature => "signature",
        })
    }
}

/// API key -> secret, as configured (`--dev`: `devkey` / `secret`).
///
/// `Debug` lists the keys, never the secrets.
#[derive(Clone, Default)]
pub struct KeyStore {
    secrets: HashMap<String, Box<[u8]>>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&str> = self.secrets.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_struct("KeyStore").field("api_keys", &keys).finish()
    }
}

impl KeyStore {
    /// The key `livekit-server --dev` uses.
    pub const DEV_API_KEY: &'static str = "devkey";
    /// The secret `livekit-server --dev` uses.
    pub const DEV_API_SECRET: &'static str = "secret";
    /// Shortest secret livekit-server accepts outside `--dev`; the lead's config
    /// validation should refuse (or warn about) shorter ones. RFC 7518 s3.2 asks
    /// for a key at least as long as the hash output.
    pub const MIN_SECRET_LEN: usize = 32;

    pub fn new() -> KeyStore {
        KeyStore::default()
    }

    /// The `--dev` key store: `devkey` / `secret`.
    pub fn dev() -> KeyStore {
        let mut keys = KeyStore::new();
        keys.insert(Self::DEV_API_KEY, Self::DEV_API_SECRET.as_bytes());
        keys
    }

    /// Add or replace a key.
    pub fn insert(&mut self, api_key: impl Into<String>, secret: impl AsRef<[u8]>) {
        self.secrets
            .insert(api_key.into(), secret.as_ref().to_vec().into_boxed_slice());
    }

    pub fn contains(&self, api_key: &str) -> bool {
        self.secrets.contains_key(api_key)
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Check `token` completely (shape, algorithm, key, signature, times) at
    /// `now_unix` and return its claims. Permissions for a particular use are a
    /// separate step ([`Claims::authorize_join`]).
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Malformed(Malformed::Empty));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(Malformed::TooLong));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(Malformed::NotThreeParts));
        };

        // The algorithm first: nothing a token says may change how it is checked.
        let header: Header = decode_json(header_b64, Part::Header)?;
        if header.alg != "HS256" {
            return Err(TokenError::UnsupportedAlgorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(TokenError::Malformed(Malformed::Critical));
        }

        // The key is named inside the payload, so the payload is parsed before
        // the signature is checked (as every JWT verifier with several keys
        // must); nothing from it is trusted until the check below.
        let mut claims: Claims = decode_json(payload_b64, Part::Payload)?;
        let secret = self
            .secrets
            .get(&claims.api_key)
            .ok_or_else(|| TokenError::UnknownKey(claims.api_key.clone()))?;

        let mut signature = [0u8; MAX_SIGNATURE_B64];
        if signature_b64.len() > MAX_SIGNATURE_B64 {
            return Err(TokenError::Malformed(Malformed::SignatureLength));
        }
        let n = B64URL
            .decode_slice(signature_b64, &mut signature)
            .map_err(|_| TokenError::Malformed(Malformed::Base64(Part::Signature)))?;
        if n != SIGNATURE_LEN {
            return Err(TokenError::Malformed(Malformed::SignatureLength));
        }
        // The signing input is the first two parts as sent (RFC 7515 s5.2 step 8).
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        let mut mac = HmacSha256::new_from_slice(secret)
            .expect("HMAC takes a key of any length (RFC 2104 s2)");
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature[..n])
            .map_err(|_| TokenError::BadSignature)?;

        let exp = claims.expires_at.ok_or(TokenError::MissingExpiry)?;
        if now_unix.saturating_sub(LEEWAY_SECS) > exp {
            return Err(TokenError::Expired { exp, now: now_unix });
        }
        if let Some(nbf) = claims.not_before {
            if now_unix.saturating_add(LEEWAY_SECS) < nbf {
                return Err(TokenError::NotYetValid { nbf, now: now_unix });
            }
        }
        if let Some(iat) = claims.issued_at {
            if now_unix.saturating_add(LEEWAY_SECS) < iat {
                return Err(TokenError::IssuedInFuture { iat, now: now_unix });
            }
        }
        if claims.identity.is_empty() {
            // livekit-server: "if v.identity == "" { v.identity = out.ID }".
            claims.identity = std::mem::take(&mut claims.jwt_id);
        }
        Ok(claims)
    }
}

/// The token in an `Authorization` header value (`Bearer <token>`, RFC 6750
/// s2.1). The scheme is matched as livekit-server matches it: `Bearer ` exactly.
pub fn bearer_token(authorization: &str) -> Result<&str, TokenError> {
    authorization
        .strip_prefix("Bearer ")
        .ok_or(TokenError::NotBearer)
}

/// Sign `claims` with `secret` (HS256). For tests and tools: the server itself
/// only verifies. Claims that are empty are left out, as the SDKs do.
pub fn encode(claims: &Claims, secret: &[u8]) -> String {
    let payload = serde_json::to_vec(claims).expect("Claims serialize: strings, numbers and maps");
    let mut token = String::with_capacity(64 + payload.len() * 4 / 3);
    B64URL.encode_string(HEADER_JSON, &mut token);
    token.push('.');
    B64URL.encode_string(&payload, &mut token);
    let mut mac =
        HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length (RFC 2104 s2)");
    mac.update(token.as_bytes());
    let tag = mac.finalize().into_bytes();
    token.push('.');
    B64URL.encode_string(tag, &mut token);
    token
}

#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "null_as_default")]
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

fn decode_json<T: for<'de> Deserialize<'de>>(b64: &str, part: Part) -> Result<T, TokenError> {
    let bytes = B64URL
        .decode(b64)
        .map_err(|_| TokenError::Malformed(Malformed::Base64(part)))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(Malformed::Json(part)))
}

/// The claims of a LiveKit access token, under LiveKit's JSON names
/// (`livekit/protocol` `auth/grants.go` `ClaimGrants`, plus the registered JWT
/// claims of RFC 7519 s4.1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// `iss`: the API key that signed the token.
    #[serde(rename = "iss", default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_key: String,
    /// `sub`: the participant identity (after [`KeyStore::verify`], `jti` when
    /// `sub` was empty).
    #[serde(rename = "sub", default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub identity: String,
    /// `jti`: livekit-server's fallback identity (older JS SDKs set it).
    #[serde(rename = "jti", default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub jwt_id: String,
    /// `nbf`, seconds since the Unix epoch.
    #[serde(rename = "nbf", default, deserialize_with = "numeric_date")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
    /// `exp`, seconds since the Unix epoch. Required by [`KeyStore::verify`].
    #[serde(rename = "exp", default, deserialize_with = "numeric_date")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// `iat`, seconds since the Unix epoch.
    #[serde(rename = "iat", default, deserialize_with = "numeric_date")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<i64>,
    /// Display name.
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Participant metadata (opaque to us, usually JSON text).
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    /// Participant attributes.
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Participant kind.
    #[serde(default)]
    #[serde(skip_serializing_if = "TokenKind::is_standard")]
    pub kind: TokenKind,
    /// SHA-256 of a webhook body, base64 (webhooks only).
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoGrant>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sip: Option<SipGrant>,
    /// Room configuration applied if this participant creates the room
    /// (protobuf JSON of `livekit.RoomConfiguration`; kept as JSON here so this
    /// module needs no protobuf types).
    #[serde(rename = "roomConfig", default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_config: Option<serde_json::Value>,
    /// LiveKit Cloud's room preset name; carried, not used.
    #[serde(rename = "roomPreset", default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub room_preset: String,
}

/// Permissions on rooms and within one room (`VideoGrant` in LiveKit's
/// `auth/grants.go`). Flags LiveKit keeps tri-state (absent means a default)
/// are `Option`s here; read them through the methods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "is_false")]
    pub room_create: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "is_false")]
    pub room_list: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "is_false")]
    pub room_record: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "is_false")]
    pub room_admin: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "is_false")]
    pub room_join: bool,
    /// The room this grant is for; empty means any room (for `roomJoin`, the
    /// client then names it).
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    /// Track sources (`camera`, `microphone`, `screen_share`,
    /// `screen_share_audio`) this participant may publish; empty means all.
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub can_publish_sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_update_own_metadata: Option<bool>,
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "is_false")]
    pub ingress_admin: bool,
    /// Not visible to the other participants (bots, recorders).
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "is_false")]
    pub hidden: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "is_false")]
    pub recorder: bool,
    /// May register as an agent worker.
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "is_false")]
    pub agent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe_metrics: Option<bool>,
    #[serde(default, deserialize_with = "null_as_default")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_room: String,
}

impl VideoGrant {
    /// `canPublish`, true when absent (LiveKit: a grant that sets no
    /// permission grants publish and subscribe).
    pub fn can_publish(&self) -> bool {
        self.can_publish.unwrap_or(true)
    }

    /// `canSubscribe`, true when absent.
    pub fn can_subscribe(&self) -> bool {
        self.can_subscribe.unwrap_or(true)
    }

    /// `canPublishData`, following `canPublish` when absent.
    pub fn can_publish_data(&self) -> bool {
        self.can_publish_data.unwrap_or_else(|| self.can_publish())
    }

    /// `canUpdateOwnMetadata`, false when absent.
    pub fn can_update_own_metadata(&self) -> bool {
        self.can_update_own_metadata.unwrap_or(false)
    }

    /// `canSubscribeMetrics`, false when absent.
    pub fn can_subscribe_metrics(&self) -> bool {
        self.can_subscribe_metrics.unwrap_or(false)
    }

    /// Whether a track from `source` (LiveKit's lower-case source name, e.g.
    /// `microphone`) may be published: `canPublish`, then `canPublishSources`
    /// if it lists any.
    pub fn can_publish_source(&self, source: &str) -> bool {
        self.can_publish()
            && (self.can_publish_sources.is_empty()
                || self
                    .can_publish_sources
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(source)))
    }
}

/// SIP permissions (`SIPGrant`): the Twirp SIP service checks these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SipGrant {
    /// Manage trunks and dispatch rules.
    #[serde(default, deserialize_with = "null_as_default")]
    pub admin: bool,
    /// Place outbound calls.
    #[serde(default, deserialize_with = "null_as_default")]
    pub call: bool,
}

/// The participant kind a token asks for (`kind` claim).
///
/// Unknown names read as [`TokenKind::Standard`], as livekit-server reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TokenKind {
    #[default]
    Standard,
    Ingress,
    Egress,
    Sip,
    Agent,
    Connector,
    Bridge,
}

impl TokenKind {
    /// The claim's text.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Standard => "standard",
            TokenKind::Ingress => "ingress",
            TokenKind::Egress => "egress",
            TokenKind::Sip => "sip",
            TokenKind::Agent => "agent",
            TokenKind::Connector => "connector",
            TokenKind::Bridge => "bridge",
        }
    }

    /// Read a claim's text, case-insensitively; unknown is standard.
    pub fn from_claim(s: &str) -> TokenKind {
        [
            TokenKind::Ingress,
            TokenKind::Egress,
            TokenKind::Sip,
            TokenKind::Agent,
            TokenKind::Connector,
            TokenKind::Bridge,
        ]
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(s))
        .unwrap_or(TokenKind::Standard)
    }

    /// The `livekit.ParticipantInfo.Kind` protobuf value
    /// (`livekit_models.proto`), so the signal layer can fill
    /// `ParticipantInfo.kind` without this module depending on the wire types.
    pub fn proto_value(self) -> i32 {
        match self {
            TokenKind::Standard => 0,
            TokenKind::Ingress => 1,
            TokenKind::Egress => 2,
            TokenKind::Sip => 3,
            TokenKind::Agent => 4,
            TokenKind::Connector => 7,
            TokenKind::Bridge => 8,
        }
    }

    fn is_standard(&self) -> bool {
        *self == TokenKind::Standard
    }
}

impl Serialize for TokenKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TokenKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        Ok(s.map_or(TokenKind::Standard, |s| TokenKind::from_claim(&s)))
    }
}

/// What a participant may do in the room it joins (the fields of
/// `livekit.ParticipantPermission`, with LiveKit's defaults applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission<'a> {
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
    /// Empty: any source (subject to `can_publish`).
    pub can_publish_sources: &'a [String],
    pub can_update_metadata: bool,
    pub hidden: bool,
    pub recorder: bool,
    pub agent: bool,
    pub can_subscribe_metrics: bool,
}

/// A verified token's permission to join one room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinGrant<'a> {
    /// The room to join: the token's, or the client's choice when the token
    /// allows any room.
    pub room: &'a str,
    pub identity: &'a str,
    pub kind: TokenKind,
    pub permission: Permission<'a>,
}

impl Claims {
    /// Claims for `identity`, signed by `api_key`, valid from `now_unix` for
    /// `ttl_secs` (the SDKs' default TTL is 6 hours). For tests and tools.
    pub fn new(api_key: &str, identity: &str, now_unix: i64, ttl_secs: i64) -> Claims {
        Claims {
            api_key: api_key.to_owned(),
            identity: identity.to_owned(),
            not_before: Some(now_unix),
            expires_at: Some(now_unix.saturating_add(ttl_secs)),
            ..Claims::default()
        }
    }

    /// May these (verified) claims join a room, and which one?
    /// `requested_room` is the room the client named (`room=` query parameter,
    /// if any).
    ///
    /// livekit-server silently uses the token's room whatever the client asks
    /// for; we refuse a conflicting request instead ([`TokenError::WrongRoom`]),
    /// so a client pointed at the wrong room learns it. The SDKs never send
    /// `room=` themselves, so they are unaffected.
    pub fn authorize_join<'a>(
        &'a self,
        requested_room: Option<&'a str>,
    ) -> Result<JoinGrant<'a>, TokenError> {
        let video = match &self.video {
            Some(v) if v.room_join => v,
            _ => return Err(TokenError::NoJoinPermission),
        };
        if self.identity.is_empty() {
            return Err(TokenError::MissingIdentity);
        }
        let requested = requested_room.filter(|r| !r.is_empty());
        let room = match (video.room.as_str(), requested) {
            ("", None) => return Err(TokenError::NoRoomName),
            ("", Some(r)) => r,
            (granted, Some(r)) if r != granted => {
                return Err(TokenError::WrongRoom {
                    granted: granted.to_owned(),
                    requested: r.to_owned(),
                })
            }
            (granted, _) => granted,
        };
        Ok(JoinGrant {
            room,
            identity: &self.identity,
            kind: self.kind,
            permission: Permission {
                can_publish: video.can_publish(),
                can_subscribe: video.can_subscribe(),
                can_publish_data: video.can_publish_data(),
                can_publish_sources: &video.can_publish_sources,
                can_update_metadata: video.can_update_own_metadata(),
                hidden: video.hidden,
                recorder: video.recorder,
                agent: video.agent,
                can_subscribe_metrics: video.can_subscribe_metrics(),
            },
        })
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// JSON `null` reads as the type's default (Go's `encoding/json`, which
/// livekit-server uses, leaves the zero value for `null`).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A NumericDate (RFC 7519 s2): seconds, possibly with a fraction, which is
/// dropped (go-jose does the same). Out-of-range values saturate.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.map(|secs| secs as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by the Python SDK (`livekit-api` 1.2.2, `AccessToken("devkey",
    /// "secret")`, identity `sip_+15550100`, kind sip, name, metadata, two
    /// attributes, video grant for `call-5550199` with canPublishData false,
    /// SIP grant call, TTL 6 h): the exact bytes an SDK user's token server sends.
    const PYTHON_SDK_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJuYW1lIjoiUGhvbmUgKzE1NTUwMTAwIiwia2luZCI6InNpcCIsIm1ldGFkYXRhIjoie1widHJ1bmtcIjpcIlNUX2RldlwifSIsInZpZGVvIjp7InJvb21Kb2luIjp0cnVlLCJyb29tIjoiY2FsbC01NTUwMTk5IiwiY2FuUHVibGlzaCI6dHJ1ZSwiY2FuU3Vic2NyaWJlIjp0cnVlLCJjYW5QdWJsaXNoRGF0YSI6ZmFsc2UsImhpZGRlbiI6ZmFsc2V9LCJzaXAiOnsiYWRtaW4iOmZhbHNlLCJjYWxsIjp0cnVlfSwiYXR0cmlidXRlcyI6eyJzaXAuY2FsbElEIjoiU0NMX2FiYzEyMyIsInNpcC5waG9uZU51bWJlciI6IisxNTU1MDEwMCJ9LCJzdWIiOiJzaXBfKzE1NTUwMTAwIiwiaXNzIjoiZGV2a2V5IiwibmJmIjoxNzk1NjAzOTYwLCJleHAiOjE3OTU2MjU1NjB9.ksqqYv-Jh0qlIaICztnixNGOGyaom6Rm-ogNfp2fhi8";
    const PYTHON_NBF: i64 = 1_795_603_960;
    const PYTHON_EXP: i64 = 1_795_625_560;

    /// Made by the JS server SDK (`livekit-server-sdk` 2.19.2, `AccessToken(
    /// "devkey", "secret", { identity: "browser-1", name, ttl: "10m", metadata,
    /// attributes })` + `addGrant({ roomJoin, room: "call-5550199", canPublish,
    /// canSubscribe, canPublishData, canUpdateOwnMetadata })`): header without
    /// `typ`, claims in another order than the Python SDK's.
    const JS_SDK_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJtZXRhZGF0YSI6Im0iLCJhdHRyaWJ1dGVzIjp7ImEiOiJiIn0sIm5hbWUiOiJCcm93c2VyIE9uZSIsInZpZGVvIjp7InJvb21Kb2luIjp0cnVlLCJyb29tIjoiY2FsbC01NTUwMTk5IiwiY2FuUHVibGlzaCI6dHJ1ZSwiY2FuU3Vic2NyaWJlIjp0cnVlLCJjYW5QdWJsaXNoRGF0YSI6dHJ1ZSwiY2FuVXBkYXRlT3duTWV0YWRhdGEiOnRydWV9LCJpc3MiOiJkZXZrZXkiLCJleHAiOjE3OTU2MDUzMjEsIm5iZiI6MTc5NTYwNDcyMSwic3ViIjoiYnJvd3Nlci0xIn0.tovGJArE1QfxKJv2NzLjrYSJBs8IxMi0Gsq49_fFZBg";
    const JS_NBF: i64 = 1_795_604_721;

    /// Built by hand with Python's hmac/hashlib/base64/json: header without
    /// `typ`, identity only in `jti`, a fractional `exp`, an `iat`, a null
    /// `metadata`, kind agent, canPublish false; key `APIabc`.
    const HAND_MADE_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJqdGkiOiJhZ2VudC03IiwiaXNzIjoiQVBJYWJjIiwibmJmIjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDM2MDAuNSwiaWF0IjoxNzAwMDAwMDAwLCJ2aWRlbyI6eyJyb29tSm9pbiI6dHJ1ZSwicm9vbSI6ImxvYmJ5IiwiY2FuUHVibGlzaCI6ZmFsc2V9LCJraW5kIjoiYWdlbnQiLCJtZXRhZGF0YSI6bnVsbH0.y3hkgPGWH2JoAtVGOTfDZ6XtWmTU8mRGJjq24wyTHls";
    const HAND_MADE_SECRET: &str = "a-much-longer-secret-of-32-bytes!!";

    const NOW: i64 = 1_800_000_000;

    fn join_claims(room: &str) -> Claims {
        let mut c = Claims::new("devkey", "alice", NOW, 3600);
        c.video = Some(VideoGrant {
            room_join: true,
            room: room.to_owned(),
            ..VideoGrant::default()
        });
        c
    }

    fn dev_token(claims: &Claims) -> String {
        encode(claims, KeyStore::DEV_API_SECRET.as_bytes())
    }

    /// A token with the given header and payload JSON, signed with `secret`.
    fn forge(header: &str, payload: &str, secret: &[u8]) -> String {
        let mut t = B64URL.encode(header);
        t.push('.');
        t.push_str(&B64URL.encode(payload));
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(t.as_bytes());
        t.push('.');
        t.push_str(&B64URL.encode(mac.finalize().into_bytes()));
        t
    }

    #[test]
    fn round_trip_keeps_every_claim() {
        let mut c = join_claims("call-1");
        c.name = "Alice".into();
        c.metadata = r#"{"a":1}"#.into();
        c.attributes.insert("sip.callID".into(), "SCL_1".into());
        c.kind = TokenKind::Sip;
        c.sha256 = "abc".into();
        c.sip = Some(SipGrant {
            admin: true,
            call: false,
        });
        c.room_config = Some(serde_json::json!({"emptyTimeout": 30}));
        let v = c.video.as_mut().unwrap();
        v.can_publish = Some(true);
        v.can_subscribe = Some(false);
        v.can_publish_sources = vec!["microphone".into()];
        v.hidden = true;
        let token = dev_token(&c);
        assert_eq!(KeyStore::dev().verify(&token, NOW + 10), Ok(c));
    }

    #[test]
    fn encode_writes_the_sdk_header_and_leaves_out_empty_claims() {
        let token = dev_token(&Claims::new("devkey", "bob", 100, 60));
        let mut parts = token.split('.');
        assert_eq!(parts.next(), Some("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"));
        let payload = B64URL.decode(parts.next().unwrap()).unwrap();
        assert_eq!(
            std::str::from_utf8(&payload).unwrap(),
            r#"{"iss":"devkey","sub":"bob","nbf":100,"exp":160}"#
        );
        assert_eq!(parts.next().map(str::len), Some(43));
    }

    #[test]
    fn python_sdk_token_verifies_with_all_its_grants() {
        let c = KeyStore::dev()
            .verify(PYTHON_SDK_TOKEN, PYTHON_NBF + 5)
            .expect("the Python SDK's token verifies");
        assert_eq!(c.api_key, "devkey");
        assert_eq!(c.identity, "sip_+15550100");
        assert_eq!(c.name, "Phone +15550100");
        assert_eq!(c.metadata, r#"{"trunk":"ST_dev"}"#);
        assert_eq!(c.kind, TokenKind::Sip);
        assert_eq!(c.kind.proto_value(), 3);
        assert_eq!(c.attributes["sip.callID"], "SCL_abc123");
        assert_eq!(c.attributes["sip.phoneNumber"], "+15550100");
        assert_eq!(c.not_before, Some(PYTHON_NBF));
        assert_eq!(c.expires_at, Some(PYTHON_EXP));
        assert_eq!(
            c.sip,
            Some(SipGrant {
                admin: false,
                call: true
            })
        );
        let grant = c.authorize_join(None).unwrap();
        assert_eq!(grant.room, "call-5550199");
        assert_eq!(grant.identity, "sip_+15550100");
        assert!(grant.permission.can_publish);
        assert!(grant.permission.can_subscribe);
        assert!(!grant.permission.can_publish_data);
        assert!(!grant.permission.hidden);
        assert!(!grant.permission.can_update_metadata);
    }

    #[test]
    fn js_server_sdk_token_verifies() {
        let c = KeyStore::dev().verify(JS_SDK_TOKEN, JS_NBF + 30).unwrap();
        assert_eq!(c.identity, "browser-1");
        assert_eq!(c.name, "Browser One");
        assert_eq!(c.metadata, "m");
        assert_eq!(c.attributes["a"], "b");
        assert_eq!(c.kind, TokenKind::Standard);
        assert_eq!(c.expires_at, Some(JS_NBF + 600));
        let g = c.authorize_join(None).unwrap();
        assert_eq!(g.room, "call-5550199");
        assert!(g.permission.can_publish && g.permission.can_subscribe);
        assert!(g.permission.can_publish_data && g.permission.can_update_metadata);
        assert!(matches!(
            KeyStore::dev().verify(JS_SDK_TOKEN, JS_NBF + 600 + LEEWAY_SECS + 1),
            Err(TokenError::Expired { .. })
        ));
    }

    #[test]
    fn hand_made_token_jti_fraction_null_and_no_typ() {
        let mut keys = KeyStore::new();
        keys.insert("APIabc", HAND_MADE_SECRET);
        let c = keys.verify(HAND_MADE_TOKEN, 1_700_000_100).unwrap();
        assert_eq!(c.identity, "agent-7", "jti stands in for an empty sub");
        assert_eq!(c.expires_at, Some(1_700_003_600), "fraction dropped");
        assert_eq!(c.issued_at, Some(1_700_000_000));
        assert_eq!(c.metadata, "", "null reads as empty");
        assert_eq!(c.kind, TokenKind::Agent);
        let g = c.authorize_join(None).unwrap();
        assert_eq!(g.room, "lobby");
        assert!(!g.permission.can_publish);
        assert!(!g.permission.can_publish_data, "follows canPublish");
        assert!(g.permission.can_subscribe, "absent means allowed");
    }

    #[test]
    fn expiry_with_leeway() {
        let keys = KeyStore::dev();
        let t = dev_token(&join_claims("r"));
        let exp = NOW + 3600;
        assert!(keys.verify(&t, exp).is_ok());
        assert!(keys.verify(&t, exp + LEEWAY_SECS).is_ok());
        let e = keys.verify(&t, exp + LEEWAY_SECS + 1).unwrap_err();
        assert_eq!(
            e,
            TokenError::Expired {
                exp,
                now: exp + LEEWAY_SECS + 1
            }
        );
        assert_eq!(e.to_string(), "invalid token: token is expired (exp)");
        assert_eq!(e.http_status(), 401);
        // The Python SDK's token, a day after it ran out.
        assert!(matches!(
            keys.verify(PYTHON_SDK_TOKEN, PYTHON_EXP + 86_400),
            Err(TokenError::Expired { .. })
        ));
    }

    #[test]
    fn not_yet_valid_with_leeway() {
        let keys = KeyStore::dev();
        let t = dev_token(&join_claims("r"));
        assert!(keys.verify(&t, NOW - LEEWAY_SECS).is_ok());
        let e = keys.verify(&t, NOW - LEEWAY_SECS - 1).unwrap_err();
        assert!(matches!(e, TokenError::NotYetValid { nbf: NOW, .. }));
        assert_eq!(e.to_string(), "invalid token: token not valid yet (nbf)");
    }

    #[test]
    fn issued_in_the_future_is_refused() {
        let mut c = join_claims("r");
        c.not_before = None;
        c.issued_at = Some(NOW + 3000);
        let e = KeyStore::dev().verify(&dev_token(&c), NOW).unwrap_err();
        assert!(matches!(e, TokenError::IssuedInFuture { .. }));
    }

    #[test]
    fn missing_expiry_is_refused() {
        let mut c = join_claims("r");
        c.expires_at = None;
        let e = KeyStore::dev().verify(&dev_token(&c), NOW).unwrap_err();
        assert_eq!(e, TokenError::MissingExpiry);
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let t = encode(&join_claims("r"), b"not the secret");
        let e = KeyStore::dev().verify(&t, NOW).unwrap_err();
        assert_eq!(e, TokenError::BadSignature);
        assert_eq!(e.to_string(), "invalid token: signature is invalid");
        // And a secret that is a prefix of the right one.
        let t = encode(&join_claims("r"), b"secre");
        assert_eq!(
            KeyStore::dev().verify(&t, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn changed_payload_or_header_breaks_the_signature() {
        let t = dev_token(&join_claims("r"));
        let (head, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.rsplit_once('.').unwrap();
        let mut more = join_claims("r");
        more.video.as_mut().unwrap().room_admin = true;
        let more_b64 = B64URL.encode(serde_json::to_vec(&more).unwrap());
        let tampered = format!("{head}.{more_b64}.{sig}");
        assert_eq!(
            KeyStore::dev().verify(&tampered, NOW),
            Err(TokenError::BadSignature)
        );
        // An equivalent header, re-encoded differently, is not the signed text.
        let other_head = B64URL.encode(r#"{"typ":"JWT","alg":"HS256"}"#);
        let (_, body) = t.split_once('.').unwrap();
        assert_eq!(
            KeyStore::dev().verify(&format!("{other_head}.{body}"), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let mut c = join_claims("r");
        c.api_key = "APIother".into();
        let e = KeyStore::dev().verify(&dev_token(&c), NOW).unwrap_err();
        assert_eq!(e, TokenError::UnknownKey("APIother".into()));
        assert_eq!(e.to_string(), "invalid API key: APIother");
        c.api_key.clear();
        assert_eq!(
            KeyStore::dev().verify(&dev_token(&c), NOW),
            Err(TokenError::UnknownKey(String::new()))
        );
        assert_eq!(
            KeyStore::new().verify(PYTHON_SDK_TOKEN, PYTHON_NBF),
            Err(TokenError::UnknownKey("devkey".into()))
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let payload = serde_json::to_string(&join_claims("r")).unwrap();
        let b = |s: &str| B64URL.encode(s);
        // The classic: alg none and an empty signature (RFC 7518 s3.6).
        let none = format!("{}.{}.", b(r#"{"alg":"none","typ":"JWT"}"#), b(&payload));
        assert_eq!(
            KeyStore::dev().verify(&none, NOW),
            Err(TokenError::UnsupportedAlgorithm("none".into()))
        );
        // Signed correctly with HS256 but labelled otherwise: still refused.
        for alg in [
            "None", "NONE", "HS384", "HS512", "RS256", "ES256", "hs256", "",
        ] {
            let header = format!(r#"{{"alg":"{alg}"}}"#);
            let t = forge(&header, &payload, b"secret");
            assert_eq!(
                KeyStore::dev().verify(&t, NOW),
                Err(TokenError::UnsupportedAlgorithm(alg.into())),
                "{alg}"
            );
        }
        let no_alg = forge(r#"{"typ":"JWT"}"#, &payload, b"secret");
        assert!(matches!(
            KeyStore::dev().verify(&no_alg, NOW),
            Err(TokenError::UnsupportedAlgorithm(_))
        ));
        let crit = forge(r#"{"alg":"HS256","crit":["b64"]}"#, &payload, b"secret");
        assert_eq!(
            KeyStore::dev().verify(&crit, NOW),
            Err(TokenError::Malformed(Malformed::Critical))
        );
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let keys = KeyStore::dev();
        let good = dev_token(&join_claims("r"));
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let m = |e| Err(TokenError::Malformed(e));
        assert_eq!(keys.verify("", NOW), m(Malformed::Empty));
        assert_eq!(keys.verify("abc", NOW), m(Malformed::NotThreeParts));
        assert_eq!(keys.verify("a.b", NOW), m(Malformed::NotThreeParts));
        assert_eq!(
            keys.verify(&format!("{good}.x"), NOW),
            m(Malformed::NotThreeParts)
        );
        assert_eq!(
            keys.verify(&format!("{h}!.{p}.{s}"), NOW),
            m(Malformed::Base64(Part::Header))
        );
        assert_eq!(
            keys.verify(&format!("{h}.{p}*.{s}"), NOW),
            m(Malformed::Base64(Part::Payload))
        );
        assert_eq!(
            keys.verify(&format!("{h}.{p}.{s}$"), NOW),
            m(Malformed::Base64(Part::Signature))
        );
        assert_eq!(
            keys.verify(&format!("{h}.{p}.{}", &s[..20]), NOW),
            m(Malformed::SignatureLength)
        );
        assert_eq!(
            keys.verify(&format!("{h}.{p}.{s}{s}{s}"), NOW),
            m(Malformed::SignatureLength)
        );
        let not_json = B64URL.encode("{not json");
        assert_eq!(
            keys.verify(&format!("{not_json}.{p}.{s}"), NOW),
            m(Malformed::Json(Part::Header))
        );
        assert_eq!(
            keys.verify(&format!("{h}.{not_json}.{s}"), NOW),
            m(Malformed::Json(Part::Payload))
        );
        // JSON of the wrong shape: a string exp, a numeric name, an array.
        for payload in [
            r#"{"iss":"devkey","exp":"soon"}"#,
            r#"{"iss":"devkey","name":5}"#,
            r#"[1,2]"#,
            r#"{"iss":"devkey","attributes":{"a":1}}"#,
            r#"{"iss":"devkey","video":{"roomJoin":"yes"}}"#,
        ] {
            let t = forge(r#"{"alg":"HS256"}"#, payload, b"secret");
            assert_eq!(
                keys.verify(&t, NOW),
                m(Malformed::Json(Part::Payload)),
                "{payload}"
            );
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(keys.verify(&long, NOW), m(Malformed::TooLong));
        let e = keys.verify("abc", NOW).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid authorization token: expected three dot-separated parts"
        );
        assert_eq!(e.http_status(), 401);
    }

    #[test]
    fn padded_base64_is_accepted() {
        let t = dev_token(&join_claims("r"));
        let padded: Vec<String> = t
            .split('.')
            .map(|p| format!("{p}{}", "=".repeat((4 - p.len() % 4) % 4)))
            .collect();
        // Padding changes the signed text, so sign the padded parts.
        let input = format!("{}.{}", padded[0], padded[1]);
        let mut mac = HmacSha256::new_from_slice(b"secret").unwrap();
        mac.update(input.as_bytes());
        let sig = base64::engine::general_purpose::URL_SAFE.encode(mac.finalize().into_bytes());
        assert!(KeyStore::dev()
            .verify(&format!("{input}.{sig}"), NOW)
            .is_ok());
    }

    #[test]
    fn join_uses_the_tokens_room_and_refuses_another() {
        let c = join_claims("call-1");
        assert_eq!(c.authorize_join(None).unwrap().room, "call-1");
        assert_eq!(c.authorize_join(Some("")).unwrap().room, "call-1");
        assert_eq!(c.authorize_join(Some("call-1")).unwrap().room, "call-1");
        let e = c.authorize_join(Some("call-2")).unwrap_err();
        assert_eq!(
            e,
            TokenError::WrongRoom {
                granted: "call-1".into(),
                requested: "call-2".into()
            }
        );
        assert!(e
            .to_string()
            .starts_with("no permissions to access the room"));
        assert_eq!(e.http_status(), 401);
    }

    #[test]
    fn join_any_room_takes_the_clients_choice() {
        let c = join_claims("");
        assert_eq!(c.authorize_join(Some("lobby")).unwrap().room, "lobby");
        let e = c.authorize_join(None).unwrap_err();
        assert_eq!(e, TokenError::NoRoomName);
        assert_eq!(e.http_status(), 400);
    }

    #[test]
    fn join_needs_room_join_and_an_identity() {
        let mut c = join_claims("r");
        c.video.as_mut().unwrap().room_join = false;
        c.video.as_mut().unwrap().room_admin = true;
        let e = c.authorize_join(None).unwrap_err();
        assert_eq!(e, TokenError::NoJoinPermission);
        assert_eq!(e.to_string(), "no permissions to access the room");
        c.video = None;
        assert_eq!(c.authorize_join(None), Err(TokenError::NoJoinPermission));
        let mut c = join_claims("r");
        c.identity.clear();
        let e = c.authorize_join(None).unwrap_err();
        assert_eq!(e, TokenError::MissingIdentity);
        assert_eq!(e.http_status(), 400);
    }

    #[test]
    fn grant_defaults_follow_livekit() {
        let v = VideoGrant::default();
        assert!(v.can_publish() && v.can_subscribe() && v.can_publish_data());
        assert!(!v.can_update_own_metadata() && !v.can_subscribe_metrics());
        let v = VideoGrant {
            can_publish: Some(false),
            ..VideoGrant::default()
        };
        assert!(!v.can_publish_data(), "data follows publish when absent");
        assert!(!v.can_publish_source("microphone"));
        let v = VideoGrant {
            can_publish: Some(false),
            can_publish_data: Some(true),
            ..VideoGrant::default()
        };
        assert!(v.can_publish_data());
        let v = VideoGrant {
            can_publish_sources: vec!["microphone".into()],
            ..VideoGrant::default()
        };
        assert!(v.can_publish_source("microphone"));
        assert!(v.can_publish_source("MICROPHONE"));
        assert!(!v.can_publish_source("camera"));
    }

    #[test]
    fn grants_parse_under_livekits_names() {
        let payload = r#"{"iss":"devkey","sub":"x","exp":1900000000,
            "video":{"roomCreate":true,"roomList":true,"roomRecord":true,"roomAdmin":true,
                "roomJoin":true,"room":"r","canPublish":false,"canSubscribe":true,
                "canPublishData":true,"canPublishSources":["microphone","camera"],
                "canUpdateOwnMetadata":true,"ingressAdmin":true,"hidden":true,"recorder":true,
                "agent":true,"canSubscribeMetrics":true,"destinationRoom":"d","unknownFlag":1},
            "sip":{"admin":true,"call":null},
            "agent":{"admin":true},"inference":{"perform":true},
            "roomPreset":"p","roomConfig":{"name":"r","maxParticipants":3},
            "kind":"EGRESS","sha256":"h"}"#;
        let c = KeyStore::dev()
            .verify(&forge(r#"{"alg":"HS256"}"#, payload, b"secret"), NOW)
            .unwrap();
        let v = c.video.as_ref().unwrap();
        assert!(v.room_create && v.room_list && v.room_record && v.room_admin && v.room_join);
        assert_eq!(v.room, "r");
        assert_eq!(v.can_publish, Some(false));
        assert_eq!(v.can_subscribe, Some(true));
        assert_eq!(v.can_publish_data, Some(true));
        assert_eq!(v.can_publish_sources, ["microphone", "camera"]);
        assert!(v.can_update_own_metadata() && v.ingress_admin && v.hidden && v.recorder);
        assert!(v.agent && v.can_subscribe_metrics());
        assert_eq!(v.destination_room, "d");
        assert_eq!(
            c.sip,
            Some(SipGrant {
                admin: true,
                call: false
            })
        );
        assert_eq!(c.kind, TokenKind::Egress);
        assert_eq!(c.room_preset, "p");
        assert_eq!(c.room_config.as_ref().unwrap()["maxParticipants"], 3);
        assert_eq!(c.sha256, "h");
        let p = c.authorize_join(None).unwrap().permission;
        assert!(!p.can_publish && p.can_subscribe && p.can_publish_data && p.hidden);
        assert!(p.can_update_metadata && p.recorder && p.agent && p.can_subscribe_metrics);
        assert_eq!(p.can_publish_sources.len(), 2);
    }

    #[test]
    fn kinds_read_like_livekit() {
        for (s, k) in [
            ("", TokenKind::Standard),
            ("standard", TokenKind::Standard),
            ("ingress", TokenKind::Ingress),
            ("egress", TokenKind::Egress),
            ("sip", TokenKind::Sip),
            ("SIP", TokenKind::Sip),
            ("agent", TokenKind::Agent),
            ("connector", TokenKind::Connector),
            ("bridge", TokenKind::Bridge),
            ("martian", TokenKind::Standard),
        ] {
            assert_eq!(TokenKind::from_claim(s), k, "{s}");
        }
        for k in [TokenKind::Sip, TokenKind::Agent, TokenKind::Bridge] {
            assert_eq!(TokenKind::from_claim(k.as_str()), k);
        }
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Ok("abc.def.ghi"));
        let e = bearer_token("Basic dXNlcjpwdw==").unwrap_err();
        assert_eq!(e, TokenError::NotBearer);
        assert_eq!(
            e.to_string(),
            "invalid authorization header. Must start with Bearer "
        );
        assert_eq!(bearer_token("bearer x"), Err(TokenError::NotBearer));
        assert_eq!(bearer_token(""), Err(TokenError::NotBearer));
    }

    #[test]
    fn key_store_debug_hides_secrets() {
        let mut keys = KeyStore::dev();
        keys.insert("APIprod", "very-secret-value-that-must-not-leak");
        let s = format!("{keys:?}");
        assert!(s.contains("APIprod") && s.contains("devkey"));
        assert!(!s.contains("very-secret") && !s.contains("\"secret\""));
        assert_eq!(keys.len(), 2);
        assert!(keys.contains("APIprod") && !keys.is_empty());
    }

    #[test]
    fn extreme_times_saturate_instead_of_overflowing() {
        let mut c = join_claims("r");
        c.not_before = Some(i64::MAX);
        c.expires_at = Some(i64::MIN);
        let t = dev_token(&c);
        assert!(KeyStore::dev().verify(&t, i64::MAX).is_err());
        assert!(KeyStore::dev().verify(&t, i64::MIN).is_err());
        let huge = forge(
            r#"{"alg":"HS256"}"#,
            r#"{"iss":"devkey","sub":"x","exp":1e300,"nbf":-1e300}"#,
            b"secret",
        );
        let c = KeyStore::dev().verify(&huge, NOW).unwrap();
        assert_eq!(c.expires_at, Some(i64::MAX));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn garbage_never_panics(s in ".{0,300}") {
                let _ = KeyStore::dev().verify(&s, NOW);
                let _ = bearer_token(&s);
            }

            #[test]
            fn three_parts_of_random_bytes_never_panic(
                h in proptest::collection::vec(any::<u8>(), 0..80),
                p in proptest::collection::vec(any::<u8>(), 0..200),
                s in proptest::collection::vec(any::<u8>(), 0..40),
            ) {
                let t = format!("{}.{}.{}", B64URL.encode(h), B64URL.encode(p), B64URL.encode(s));
                let _ = KeyStore::dev().verify(&t, NOW);
            }

            #[test]
            fn signed_json_of_any_shape_never_panics(
                payload in r#"\{("[a-z]{1,8}":(-?[0-9]{1,20}(\.[0-9]+)?(e[0-9]{1,3})?|"[ -~]{0,10}"|null|true|\[\]|\{\}),?){0,6}\}"#,
                now in any::<i64>(),
            ) {
                let t = forge(r#"{"alg":"HS256"}"#, &payload, b"secret");
                if let Ok(c) = KeyStore::dev().verify(&t, now) {
                    let _ = c.authorize_join(Some("x"));
                }
            }

            #[test]
            fn any_claims_round_trip(
                identity in "[ -~]{1,30}",
                room in "[ -~]{0,30}",
                name in ".{0,20}",
                attrs in proptest::collection::btree_map("[a-z.]{1,10}", ".{0,10}", 0..4),
                publish in proptest::option::of(any::<bool>()),
                ttl in 1i64..1_000_000,
            ) {
                let mut c = join_claims(&room);
                c.identity = identity;
                c.name = name;
                c.attributes = attrs;
                c.video.as_mut().unwrap().can_publish = publish;
                c.expires_at = Some(NOW + ttl);
                let t = dev_token(&c);
                prop_assert_eq!(KeyStore::dev().verify(&t, NOW), Ok(c));
            }
        }
    }
}
