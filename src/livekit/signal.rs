//! The LiveKit signal protocol for one room, sans-IO: who is in the room,
//! what each SDK is told (protobuf `SignalResponse`s, `livekit_rtc.proto`),
//! and what the WebRTC and media layers must do about what the SDKs ask.
//!
//! Where it sits in the data flow (see `docs/livekit.md` section 3):
//!
//! ```text
//! :7880 listener (WebSocket, arrival shard) --connect::Admission + ConnectRequest-->
//! owner shard: RoomSignal::join -> JoinResponse --Send--> WebSocket
//!   WebSocket binary frame --handle_request--> SignalResponse frames (Send),
//!                                             MediaRequest (str0m peer, media::Room)
//!   str0m answer / candidate --send_answer / send_candidate--> Send
//!   SIP call accepted --join_sip / set_call_status--> participant updates
//!   data channel message --route_data--> which peers get which bytes
//! ```
//!
//! What it owns: the room's `Room` record (`RM_` sid, metadata), every
//! participant's `ParticipantInfo` (`PA_` sid, identity, kind, permission,
//! attributes, state, published tracks, a version that only grows), track
//! publications (`TR_` sids, audio/Opus only), subscriptions (explicit and
//! auto-subscribe) and the ping timers. Not the WebSocket (the listener), not
//! SDP or ICE (the str0m peer: offers, answers and candidates pass through
//! here untouched), not the audio (media::Room, which asks here who
//! subscribes to what).
//!
//! The poll contract (str0m's): feed an input (`join`, `join_sip`,
//! `handle_request`, `send_answer`, `handle_timeout`, ...), then drain
//! [`RoomSignal::poll_output`] until `None`, then sleep until
//! [`RoomSignal::poll_timeout`]. Time is an argument (`now: Instant`); the
//! wall clock the protocol needs (`creation_time`, `joined_at`, `pong`) is
//! derived from one anchor given to [`RoomSignal::new`]. Nothing here reads
//! the clock, touches a socket or panics on what a peer sends; every
//! collection a peer can grow is bounded by [`SignalConfig`].

mod data;
pub mod join_request;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use prost::Message as _;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::connect::{Admission, ConnectRequest, Generation};
use super::ids;
use super::sip_participant::{CallStatus, SipParticipant};

pub use data::{DataError, DataRoute};
pub use join_request::JoinRequestError;

/// A participant's sid (`PA_...`), the key of everything per participant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParticipantSid(String);

/// A published track's sid (`TR_...`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrackSid(String);

impl ParticipantSid {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TrackSid {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParticipantSid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TrackSid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Limits and what the room tells the SDKs about the server.
#[derive(Clone, Debug)]
pub struct SignalConfig {
    /// `JoinResponse.ping_interval`: how often the SDKs ping.
    pub ping_interval: Duration,
    /// `JoinResponse.ping_timeout`; also how long a silent session lives.
    pub ping_timeout: Duration,
    /// `ServerInfo.version` / `server_version`. The SDKs compare it as a
    /// livekit-server version (semver) to turn features on, so it names the
    /// livekit-server release whose protocol we follow, not our own version
    /// (which goes in `ServerInfo.debug_info`).
    pub server_version: String,
    /// `ServerInfo.protocol`. 16: at most 17 keeps the SDKs on in-band SCTP
    /// data channels (`_reliable`, `_lossy`) opened by DCEP (LIVEKIT-NOTES).
    pub protocol: i32,
    /// `ServerInfo.node_id`.
    pub node_id: String,
    /// Largest signal frame accepted (an SDP offer is ~5-15 KiB).
    pub max_frame: usize,
    /// v0 (`/rtc`) `subscriber_primary`. livekit-server sets it for a client
    /// that may subscribe: the server must then offer on the subscriber PC
    /// at once and the client waits for that PC. Off (the default), a v0
    /// client offers its publisher PC first (data channels included) exactly
    /// as v1 does, and the subscriber PC is only offered when there is
    /// something to receive: one first step for both generations.
    pub v0_subscriber_primary: bool,
    /// How long a participant whose WebSocket dropped may resume.
    pub reconnect_grace: Duration,
    /// Participants in the room, hidden ones included.
    pub max_participants: usize,
    /// Tracks one participant may publish.
    pub max_tracks: usize,
    /// Bytes of `metadata` (participant or room) and of `name`.
    pub max_metadata: usize,
    /// Bytes of all of a participant's attribute keys and values together.
    pub max_attributes: usize,
}

impl Default for SignalConfig {
    fn default() -> SignalConfig {
        SignalConfig {
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            server_version: "1.9.0".to_owned(),
            protocol: 16,
            node_id: String::new(),
            v0_subscriber_primary: false,
            reconnect_grace: Duration::from_secs(10),
            max_frame: 256 * 1024,
            max_participants: 256,
            max_tracks: 8,
            max_metadata: 64 * 1024,
            max_attributes: 64 * 1024,
        }
    }
}

/// What the room asks of its surroundings; drained with
/// [`RoomSignal::poll_output`].
#[derive(Clone, Debug, PartialEq)]
pub enum SignalOutput {
    /// Write `frame` (an encoded `SignalResponse`) as one binary WebSocket
    /// message to `to`'s connection.
    Send { to: ParticipantSid, frame: Vec<u8> },
    /// Close `pid`'s WebSocket (after the frames queued before this).
    Close {
        pid: ParticipantSid,
        reason: lk::DisconnectReason,
    },
    /// For the WebRTC peer or the media room.
    Media(MediaRequest),
    /// The last participant left: the owner shard may drop the room.
    RoomEmpty,
}

/// What the WebRTC peer (str0m) and the media room must do.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaRequest {
    /// The client offered (v1: its only PeerConnection; v0: the publisher
    /// PC): accept it and answer with [`RoomSignal::send_answer`] and the
    /// same `id`.
    AcceptOffer {
        pid: ParticipantSid,
        sdp: String,
        id: u32,
    },
    /// The client answered our offer (v0 subscriber PC).
    AcceptAnswer {
        pid: ParticipantSid,
        sdp: String,
        id: u32,
    },
    /// A trickled ICE candidate: `candidate_init` is the client's
    /// `RTCIceCandidateInit` as JSON, `target` the PC it belongs to (v0).
    RemoteCandidate {
        pid: ParticipantSid,
        candidate_init: String,
        target: lk::SignalTarget,
        last: bool,
    },
    /// Start forwarding `track` (published by `publisher`) to `subscriber`.
    Subscribe {
        subscriber: ParticipantSid,
        publisher: ParticipantSid,
        track: TrackSid,
    },
    /// Stop forwarding `track` to `subscriber`.
    Unsubscribe {
        subscriber: ParticipantSid,
        track: TrackSid,
    },
    /// The publisher muted or unmuted `track`.
    TrackMuted {
        pid: ParticipantSid,
        track: TrackSid,
        muted: bool,
    },
    /// `pid` is gone: drop its peer, or hang up the call of a SIP
    /// participant (BYE) unless the call itself ended.
    ParticipantLeft {
        pid: ParticipantSid,
        reason: lk::DisconnectReason,
    },
}

/// Why a connection cannot join.
#[derive(Debug, thiserror::Error)]
pub enum JoinRefusal {
    #[error("{0}")]
    JoinRequest(#[from] JoinRequestError),
    #[error("missing join_request")]
    MissingJoinRequest,
    #[error("admitted to room {admitted}, this is {room}")]
    WrongRoom { admitted: String, room: String },
    #[error("room is full")]
    RoomFull,
    /// `reconnect=1` for a session this room does not know: livekit-server
    /// answers with a `leave` (STATE_MISMATCH, action RECONNECT) so the SDK
    /// joins afresh; [`JoinRefusal::leave_frame`] gives it.
    #[error("no session {0} to resume")]
    StateMismatch(String),
}

impl JoinRefusal {
    /// The HTTP status to refuse the upgrade with (livekit-server: 400 for
    /// a bad join request).
    pub fn http_status(&self) -> u16 {
        match self {
            JoinRefusal::JoinRequest(_) | JoinRefusal::MissingJoinRequest => 400,
            JoinRefusal::WrongRoom { .. } => 500,
            JoinRefusal::RoomFull => 503,
            JoinRefusal::StateMismatch(_) => 409,
        }
    }

    /// A `leave` frame for a refusal found after the upgrade (a resume).
    pub fn leave_frame(&self) -> Vec<u8> {
        let (reason, action) = match self {
            JoinRefusal::StateMismatch(_) => (
                lk::DisconnectReason::StateMismatch,
                lk::leave_request::Action::Reconnect,
            ),
            _ => (
                lk::DisconnectReason::JoinFailure,
                lk::leave_request::Action::Disconnect,
            ),
        };
        encode(Resp::Leave(lk::LeaveRequest {
            can_reconnect: action != lk::leave_request::Action::Disconnect,
            reason: reason as i32,
            action: action as i32,
            regions: None,
        }))
    }
}

/// A signal frame that cannot be handled.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("no participant {0} with a signal connection in this room")]
    UnknownParticipant(ParticipantSid),
    /// The session was closed.
    #[error("signal frame of {len} bytes, more than {limit}")]
    FrameTooLarge { len: usize, limit: usize },
    /// Not a `SignalRequest`: the session was closed.
    #[error("cannot decode SignalRequest: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Timers, one table keyed by what they are for (quinn-proto's
/// `connection/timer.rs` habit): the room keeps one wake-up.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The client has been silent for `ping_timeout`: close it.
    PingTimeout(ParticipantSid),
    /// The WebSocket dropped `reconnect_grace` ago and the SDK has not
    /// resumed: the participant leaves.
    ReconnectGrace(ParticipantSid),
}

/// How a participant reaches the room.
#[derive(Clone, Debug)]
enum Link {
    /// An SDK over WebSocket; `connected` is false between a dropped
    /// socket and the SDK's resume (or the grace period's end).
    Signal {
        generation: Generation,
        connected: bool,
    },
    /// A phone caller, joined by the SIP side (no socket of its own).
    Sip(Box<SipParticipant>),
}

#[derive(Clone, Debug)]
struct Participant {
    info: lk::ParticipantInfo,
    link: Link,
    auto_subscribe: bool,
}

impl Participant {
    fn hidden(&self) -> bool {
        self.info.permission.as_ref().is_some_and(|p| p.hidden)
    }

    fn permission(&self) -> lk::ParticipantPermission {
        self.info.permission.clone().unwrap_or_default()
    }

    /// Whether its WebSocket is up (frames can be sent to it).
    fn has_socket(&self) -> bool {
        matches!(
            self.link,
            Link::Signal {
                connected: true,
                ..
            }
        )
    }

    /// A change others must see: the version only grows (LIVEKIT-NOTES;
    /// the SDKs drop an update whose version is not newer).
    fn bump(&mut self) {
        self.info.version = self.info.version.saturating_add(1);
    }
}

/// A publication: whose it is, the client's `cid` for it, and who receives it.
#[derive(Clone, Debug)]
struct Publication {
    publisher: ParticipantSid,
    cid: String,
    subscribers: BTreeSet<ParticipantSid>,
}

/// The signal side of one room (livekit-server's `rtc.Room` minus media).
pub struct RoomSignal {
    config: SignalConfig,
    room: lk::Room,
    participants: BTreeMap<ParticipantSid, Participant>,
    tracks: BTreeMap<TrackSid, Publication>,
    timers: BTreeMap<Timer, Instant>,
    /// How many phone callers are in the room.
    sip_participants: usize,
    /// Who was last reported speaking, and how loud.
    speakers: BTreeMap<ParticipantSid, f32>,
    out: VecDeque<SignalOutput>,
    /// The last participant left during this input (see `poll_output`).
    empty_pending: bool,
    rng: SmallRng,
    /// The wall-clock anchor: `created_unix_ms` is the time at `created_at`.
    created_at: Instant,
    created_unix_ms: i64,
}

/// A `SignalResponse` frame.
fn encode(message: Resp) -> Vec<u8> {
    lk::SignalResponse {
        message: Some(message),
    }
    .encode_to_vec()
}

/// The `SignalRequest` field name of a request this room ignores (logs).
fn ignored_name(request: &Req) -> &'static str {
    #[allow(deprecated)]
    match request {
        Req::TrackSetting(_) => "track_setting",
        Req::UpdateLayers(_) => "update_layers",
        Req::SubscriptionPermission(_) => "subscription_permission",
        Req::SyncState(_) => "sync_state",
        Req::Simulate(_) => "simulate",
        Req::UpdateAudioTrack(_) => "update_audio_track",
        Req::UpdateVideoTrack(_) => "update_video_track",
        Req::PublishDataTrackRequest(_) => "publish_data_track_request",
        Req::UnpublishDataTrackRequest(_) => "unpublish_data_track_request",
        Req::UpdateDataSubscription(_) => "update_data_subscription",
        Req::StoreDataBlobRequest(_) => "store_data_blob_request",
        Req::GetDataBlobRequest(_) => "get_data_blob_request",
        _ => "other",
    }
}

/// `TrackSource` of LiveKit's lower-case source names in grants.
fn source_of_name(name: &str) -> Option<lk::TrackSource> {
    match name.to_ascii_lowercase().as_str() {
        "camera" => Some(lk::TrackSource::Camera),
        "microphone" => Some(lk::TrackSource::Microphone),
        "screen_share" => Some(lk::TrackSource::ScreenShare),
        "screen_share_audio" => Some(lk::TrackSource::ScreenShareAudio),
        _ => None,
    }
}

/// Set what changed of a participant's metadata (empty: unchanged), name
/// (empty: unchanged) and attributes; a new version when anything did.
fn apply_update(
    p: &mut Participant,
    metadata: String,
    name: String,
    attributes: HashMap<String, String>,
) -> bool {
    let mut changed = false;
    if !metadata.is_empty() && metadata != p.info.metadata {
        p.info.metadata = metadata;
        changed = true;
    }
    if !name.is_empty() && name != p.info.name {
        p.info.name = name;
        changed = true;
    }
    if attributes != p.info.attributes {
        p.info.attributes = attributes;
        changed = true;
    }
    if changed {
        p.bump();
    }
    changed
}

fn attributes_size(attrs: &HashMap<String, String>) -> usize {
    attrs.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// A v0 client's `ClientInfo` from the query (`sdk=js&version=...`).
fn client_info_from_query(request: &ConnectRequest) -> lk::ClientInfo {
    let c = &request.client;
    let sdk = match c.sdk.to_ascii_lowercase().as_str() {
        "reactnative" => lk::client_info::Sdk::ReactNative,
        "unityweb" => lk::client_info::Sdk::UnityWeb,
        other => lk::client_info::Sdk::from_str_name(&other.to_ascii_uppercase())
            .unwrap_or(lk::client_info::Sdk::Unknown),
    };
    lk::ClientInfo {
        sdk: sdk as i32,
        version: c.version.clone(),
        protocol: c.protocol.unwrap_or(0),
        os: c.os.clone(),
        os_version: c.os_version.clone(),
        device_model: c.device_model.clone(),
        browser: c.browser.clone(),
        browser_version: c.browser_version.clone(),
        ..Default::default()
    }
}

impl RoomSignal {
    /// A room named `name`, created at `now`, which is `created_unix_ms` on
    /// the wall clock. `seed` seeds the id generator (give it OS entropy; a
    /// fixed one in tests).
    pub fn new(
        name: &str,
        config: SignalConfig,
        seed: u64,
        created_unix_ms: i64,
        now: Instant,
    ) -> RoomSignal {
        let mut rng = SmallRng::seed_from_u64(seed);
        let room = lk::Room {
            sid: ids::new_id(ids::ROOM, &mut rng),
            name: name.to_owned(),
            creation_time: created_unix_ms.div_euclid(1000),
            creation_time_ms: created_unix_ms,
            enabled_codecs: vec![lk::Codec {
                mime: "audio/opus".to_owned(),
                fmtp_line: String::new(),
            }],
            ..Default::default()
        };
        RoomSignal {
            config,
            room,
            participants: BTreeMap::new(),
            tracks: BTreeMap::new(),
            timers: BTreeMap::new(),
            speakers: BTreeMap::new(),
            sip_participants: 0,
            out: VecDeque::new(),
            empty_pending: false,
            rng,
            created_at: now,
            created_unix_ms,
        }
    }

    /// The room as the SDKs see it (`RM_` sid, name, metadata).
    pub fn room(&self) -> &lk::Room {
        &self.room
    }

    /// A participant as the SDKs see it.
    pub fn participant(&self, pid: &ParticipantSid) -> Option<&lk::ParticipantInfo> {
        self.participants.get(pid).map(|p| &p.info)
    }

    /// The participant with `identity`.
    pub fn find_identity(&self, identity: &str) -> Option<&ParticipantSid> {
        self.participants
            .iter()
            .find(|(_, p)| p.info.identity == identity)
            .map(|(sid, _)| sid)
    }

    /// Everyone's sid, hidden participants included.
    pub fn participant_sids(&self) -> impl Iterator<Item = &ParticipantSid> {
        self.participants.keys()
    }

    /// Everyone in the room, hidden participants included.
    pub fn participants(&self) -> impl Iterator<Item = &lk::ParticipantInfo> {
        self.participants.values().map(|p| &p.info)
    }

    /// Who receives `track` (for the media layer's forwarding table).
    pub fn subscribers(&self, track: &TrackSid) -> impl Iterator<Item = &ParticipantSid> {
        self.tracks
            .get(track)
            .into_iter()
            .flat_map(|p| p.subscribers.iter())
    }

    /// The tracks `pid` receives.
    pub fn subscriptions<'a>(
        &'a self,
        pid: &'a ParticipantSid,
    ) -> impl Iterator<Item = &'a TrackSid> + 'a {
        self.tracks
            .iter()
            .filter(move |(_, p)| p.subscribers.contains(pid))
            .map(|(t, _)| t)
    }

    /// Which signal protocol `pid` speaks (the WebRTC layer builds one
    /// PeerConnection for v1, publisher and subscriber for v0); `None` for a
    /// SIP participant or an unknown sid.
    pub fn generation(&self, pid: &ParticipantSid) -> Option<Generation> {
        match self.participants.get(pid)?.link {
            Link::Signal { generation, .. } => Some(generation),
            Link::Sip(_) => None,
        }
    }

    /// `pid`'s publication whose client id is `cid` (the track id in the
    /// `a=msid` of its offer).
    pub fn track_by_cid(&self, pid: &ParticipantSid, cid: &str) -> Option<&TrackSid> {
        self.tracks
            .iter()
            .find(|(_, t)| &t.publisher == pid && t.cid == cid && !cid.is_empty())
            .map(|(sid, _)| sid)
    }

    /// Whether a phone caller is in the room (someone to mix tracks for).
    /// Asked per media packet: a count kept by `count_participants`, which
    /// every join and leave runs.
    pub fn has_sip_participant(&self) -> bool {
        self.sip_participants > 0
    }

    /// The published track whose sid is `track`.
    pub fn track_sid(&self, track: &str) -> Option<TrackSid> {
        self.tracks.keys().find(|sid| sid.0 == track).cloned()
    }

    /// Who published the track with sid `track`.
    pub fn publisher_of(&self, track: &str) -> Option<&ParticipantSid> {
        self.tracks
            .iter()
            .find(|(sid, _)| sid.0 == track)
            .map(|(_, p)| &p.publisher)
    }

    /// Who published `track`.
    pub fn publisher(&self, track: &TrackSid) -> Option<&ParticipantSid> {
        self.tracks.get(track).map(|p| &p.publisher)
    }

    /// Next thing to do, in order. [`SignalOutput::RoomEmpty`] comes last,
    /// and only when the room is still empty once everything else is out.
    pub fn poll_output(&mut self) -> Option<SignalOutput> {
        if let Some(o) = self.out.pop_front() {
            return Some(o);
        }
        let empty = std::mem::take(&mut self.empty_pending) && self.participants.is_empty();
        empty.then_some(SignalOutput::RoomEmpty)
    }

    /// When [`RoomSignal::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.values().min().copied()
    }

    /// Fire the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, &at)| at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for timer in due {
            self.timers.remove(&timer);
            match timer {
                Timer::PingTimeout(pid) => {
                    tracing::info!(room = %self.room.name, %pid, "signal ping timeout");
                    self.remove(&pid, lk::DisconnectReason::ConnectionTimeout, true);
                }
                Timer::ReconnectGrace(pid) => {
                    tracing::info!(room = %self.room.name, %pid, "no resume within the grace period");
                    self.remove(&pid, lk::DisconnectReason::SignalClose, false);
                }
            }
        }
    }

    fn unix_ms(&self, now: Instant) -> i64 {
        let since = now.saturating_duration_since(self.created_at).as_millis();
        self.created_unix_ms
            .saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
    }

    fn send(&mut self, to: &ParticipantSid, message: Resp) {
        if self
            .participants
            .get(to)
            .is_some_and(Participant::has_socket)
        {
            self.out.push_back(SignalOutput::Send {
                to: to.clone(),
                frame: encode(message),
            });
        }
    }

    /// Send `message` to every connected participant except `skip`.
    fn broadcast(&mut self, message: Resp, skip: Option<&ParticipantSid>) {
        let frame = encode(message);
        for (sid, p) in &self.participants {
            if p.has_socket() && Some(sid) != skip {
                self.out.push_back(SignalOutput::Send {
                    to: sid.clone(),
                    frame: frame.clone(),
                });
            }
        }
    }

    /// Tell the room about `pid`'s current state. A hidden participant's
    /// changes go to itself only (livekit-server hides it from everyone).
    fn announce(&mut self, pid: &ParticipantSid, to_self: bool) {
        let Some(p) = self.participants.get(pid) else {
            return;
        };
        let update = Resp::Update(lk::ParticipantUpdate {
            participants: vec![p.info.clone()],
        });
        if p.hidden() {
            if to_self {
                self.send(pid, update);
            }
        } else {
            self.broadcast(update, (!to_self).then_some(pid));
        }
    }

    fn request_refused(
        &mut self,
        pid: &ParticipantSid,
        request_id: u32,
        reason: lk::request_response::Reason,
        message: &str,
        request: Option<lk::request_response::Request>,
    ) {
        tracing::debug!(%pid, ?reason, message, "signal request refused");
        self.send(
            pid,
            Resp::RequestResponse(lk::RequestResponse {
                request_id,
                reason: reason as i32,
                message: message.to_owned(),
                request,
            }),
        );
    }

    fn arm_ping_timer(&mut self, pid: &ParticipantSid, now: Instant) {
        self.timers.insert(
            Timer::PingTimeout(pid.clone()),
            now + self.config.ping_timeout,
        );
    }

    fn new_participant_sid(&mut self) -> ParticipantSid {
        loop {
            let sid = ParticipantSid(ids::new_id(ids::PARTICIPANT, &mut self.rng));
            if !self.participants.contains_key(&sid) {
                return sid;
            }
        }
    }

    /// `Room.num_participants` / `num_publishers`: visible ones only.
    fn count_participants(&mut self) {
        let visible = || self.participants.values().filter(|p| !p.hidden());
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let participants = count(visible().count());
        let publishers = count(visible().filter(|p| !p.info.tracks.is_empty()).count());
        self.room.num_participants = participants;
        self.room.num_publishers = publishers;
        self.sip_participants = self
            .participants
            .values()
            .filter(|p| matches!(p.link, Link::Sip(_)))
            .count();
    }

    /// The tracks `pid` may receive: others', of visible publishers.
    fn tracks_for(&self, pid: &ParticipantSid) -> Vec<TrackSid> {
        self.tracks
            .iter()
            .filter(|(_, t)| {
                &t.publisher != pid
                    && self
                        .participants
                        .get(&t.publisher)
                        .is_some_and(|p| !p.hidden())
            })
            .map(|(sid, _)| sid.clone())
            .collect()
    }

    /// An SDK's WebSocket joins: `admission` from `connect::admit`, `request`
    /// the parsed connection request (v1: its `join_request=`; v0: the query
    /// options). On success the JoinResponse is queued for the new
    /// participant, the others get a ParticipantUpdate, and a publisher
    /// offer carried in the v1 join request comes out as
    /// [`MediaRequest::AcceptOffer`].
    ///
    /// An identity already in the room is replaced: the old session gets a
    /// `leave` with DUPLICATE_IDENTITY and is closed (livekit-server does
    /// the same, so a reloaded browser tab takes over).
    pub fn join(
        &mut self,
        admission: &Admission,
        request: &ConnectRequest,
        now: Instant,
    ) -> Result<ParticipantSid, JoinRefusal> {
        if admission.room != self.room.name {
            return Err(JoinRefusal::WrongRoom {
                admitted: admission.room.clone(),
                room: self.room.name.clone(),
            });
        }
        let generation = request.endpoint.generation();
        let join = match generation {
            Generation::V1 => {
                let encoded = request
                    .join_request
                    .as_deref()
                    .ok_or(JoinRefusal::MissingJoinRequest)?;
                join_request::decode(encoded)?
            }
            Generation::V0 => lk::JoinRequest {
                client_info: Some(client_info_from_query(request)),
                connection_settings: Some(lk::ConnectionSettings {
                    auto_subscribe: request.auto_subscribe,
                    adaptive_stream: request.adaptive_stream,
                    subscriber_allow_pause: request.subscriber_allow_pause,
                    disable_ice_lite: request.disable_ice_lite,
                    auto_subscribe_data_track: None,
                }),
                reconnect: request.reconnect,
                reconnect_reason: request.reconnect_reason,
                participant_sid: request.participant_sid.clone().unwrap_or_default(),
                ..Default::default()
            },
        };
        if join.reconnect {
            return self.resume(admission, join, now);
        }
        if let Some(old) = self.find_identity(&admission.identity).cloned() {
            tracing::info!(room = %self.room.name, identity = %admission.identity, %old,
                "duplicate identity: replacing the old session");
            self.send(
                &old,
                Resp::Leave(lk::LeaveRequest {
                    can_reconnect: false,
                    reason: lk::DisconnectReason::DuplicateIdentity as i32,
                    action: lk::leave_request::Action::Disconnect as i32,
                    regions: None,
                }),
            );
            self.remove(&old, lk::DisconnectReason::DuplicateIdentity, true);
        }
        if self.participants.len() >= self.config.max_participants {
            return Err(JoinRefusal::RoomFull);
        }

        let claims = &admission.claims;
        let video = claims.video.clone().unwrap_or_default();
        let permission = lk::ParticipantPermission {
            can_subscribe: video.can_subscribe(),
            can_publish: video.can_publish(),
            can_publish_data: video.can_publish_data(),
            can_publish_sources: video
                .can_publish_sources
                .iter()
                .filter_map(|s| source_of_name(s))
                .map(|s| s as i32)
                .collect(),
            hidden: video.hidden,
            can_update_metadata: video.can_update_own_metadata(),
            can_subscribe_metrics: video.can_subscribe_metrics(),
            ..Default::default()
        };
        #[allow(deprecated)]
        let permission = lk::ParticipantPermission {
            recorder: video.recorder,
            agent: video.agent,
            ..permission
        };
        let mut attributes: HashMap<String, String> = claims
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut metadata = claims.metadata.clone();
        // The join request's metadata and attributes override the token's,
        // as `attributes=` does on v0 (connect::admit): only with
        // canUpdateOwnMetadata, ignored otherwise.
        if permission.can_update_metadata {
            if !join.metadata.is_empty() && join.metadata.len() <= self.config.max_metadata {
                metadata = join.metadata.clone();
            }
            for (k, v) in &join.participant_attributes {
                if !v.is_empty() {
                    attributes.insert(k.clone(), v.clone());
                }
            }
            if attributes_size(&attributes) > self.config.max_attributes {
                attributes = claims
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
            }
        }
        let client = join.client_info.clone().unwrap_or_default();
        let auto_subscribe = join
            .connection_settings
            .as_ref()
            .is_none_or(|s| s.auto_subscribe);
        let now_ms = self.unix_ms(now);
        let pid = self.new_participant_sid();
        let info = lk::ParticipantInfo {
            sid: pid.0.clone(),
            identity: admission.identity.clone(),
            state: lk::participant_info::State::Joined as i32,
            metadata,
            joined_at: now_ms.div_euclid(1000),
            joined_at_ms: now_ms,
            name: claims.name.clone(),
            version: 1,
            permission: Some(permission.clone()),
            kind: claims.kind.proto_value(),
            attributes,
            client_protocol: client.client_protocol,
            capabilities: client.capabilities.clone(),
            ..Default::default()
        };
        tracing::info!(room = %self.room.name, %pid, identity = %info.identity,
            sdk = ?client.sdk(), version = %client.version, ?generation, "participant joins");
        self.participants.insert(
            pid.clone(),
            Participant {
                info,
                link: Link::Signal {
                    generation,
                    connected: true,
                },
                auto_subscribe,
            },
        );
        self.count_participants();

        let response = self.join_response(&pid, generation);
        self.send(&pid, Resp::Join(response));
        self.announce(&pid, false);
        self.arm_ping_timer(&pid, now);
        if auto_subscribe && permission.can_subscribe {
            for track in self.tracks_for(&pid) {
                self.subscribe(&pid, &track);
            }
        }
        for add in join.add_track_requests {
            self.add_track(&pid, add, now);
        }
        if let Some(offer) = join.publisher_offer {
            self.out
                .push_back(SignalOutput::Media(MediaRequest::AcceptOffer {
                    pid: pid.clone(),
                    sdp: offer.sdp,
                    id: offer.id,
                }));
        }
        Ok(pid)
    }

    fn server_info(&self) -> lk::ServerInfo {
        lk::ServerInfo {
            edition: lk::server_info::Edition::Standard as i32,
            version: self.config.server_version.clone(),
            protocol: self.config.protocol,
            node_id: self.config.node_id.clone(),
            debug_info: concat!("switchboard ", env!("CARGO_PKG_VERSION")).to_owned(),
            ..Default::default()
        }
    }

    fn join_response(&self, pid: &ParticipantSid, generation: Generation) -> lk::JoinResponse {
        let me = self
            .participants
            .get(pid)
            .expect("join_response is built right after the participant is inserted");
        let others = self
            .participants
            .iter()
            .filter(|(sid, p)| *sid != pid && !p.hidden())
            .map(|(_, p)| p.info.clone())
            .collect();
        let secs = |d: Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
        lk::JoinResponse {
            room: Some(self.room.clone()),
            participant: Some(me.info.clone()),
            other_participants: others,
            server_version: self.config.server_version.clone(),
            // v1 has one PC and the client always offers. v0: see
            // `SignalConfig::v0_subscriber_primary`.
            subscriber_primary: generation == Generation::V0
                && self.config.v0_subscriber_primary
                && me.permission().can_subscribe,
            ping_timeout: secs(self.config.ping_timeout),
            ping_interval: secs(self.config.ping_interval),
            server_info: Some(self.server_info()),
            enabled_publish_codecs: self.room.enabled_codecs.clone(),
            ..Default::default()
        }
    }

    /// `reconnect=1` / `JoinRequest.reconnect`: the SDK resumes a session
    /// whose WebSocket dropped. Same participant, a `reconnect` response
    /// instead of `join`.
    fn resume(
        &mut self,
        admission: &Admission,
        join: lk::JoinRequest,
        now: Instant,
    ) -> Result<ParticipantSid, JoinRefusal> {
        let pid = ParticipantSid(join.participant_sid.clone());
        // The same identity, over a socket (connected still when we have
        // not noticed the old one die: the new socket replaces it).
        match self.participants.get_mut(&pid) {
            Some(Participant {
                info,
                link: Link::Signal { connected, .. },
                ..
            }) if info.identity == admission.identity => *connected = true,
            _ => return Err(JoinRefusal::StateMismatch(join.participant_sid)),
        }
        self.timers.remove(&Timer::ReconnectGrace(pid.clone()));
        tracing::info!(room = %self.room.name, %pid, "participant resumes");
        self.send(
            &pid,
            Resp::Reconnect(lk::ReconnectResponse {
                server_info: Some(self.server_info()),
                ..Default::default()
            }),
        );
        // What it may have missed: everyone as they are now (livekit-server
        // sends the same on resume).
        let everyone = self
            .participants
            .iter()
            .filter(|(sid, p)| **sid == pid || !p.hidden())
            .map(|(_, p)| p.info.clone())
            .collect();
        self.send(
            &pid,
            Resp::Update(lk::ParticipantUpdate {
                participants: everyone,
            }),
        );
        self.arm_ping_timer(&pid, now);
        if let Some(offer) = join.publisher_offer {
            self.out
                .push_back(SignalOutput::Media(MediaRequest::AcceptOffer {
                    pid: pid.clone(),
                    sdp: offer.sdp,
                    id: offer.id,
                }));
        }
        Ok(pid)
    }

    /// A phone caller joins (the SIP side accepted its INVITE into this
    /// room): kind SIP, the `sip.*` attributes, one published audio track
    /// (the call's audio, Opus-encoded by the media room for WebRTC
    /// subscribers). `hidden` keeps it out of everyone's participant list.
    /// Returns the participant and its track.
    pub fn join_sip(
        &mut self,
        sip: SipParticipant,
        hidden: bool,
        now: Instant,
    ) -> Result<(ParticipantSid, TrackSid), JoinRefusal> {
        if let Some(old) = self.find_identity(&sip.identity).cloned() {
            self.send(
                &old,
                Resp::Leave(lk::LeaveRequest {
                    can_reconnect: false,
                    reason: lk::DisconnectReason::DuplicateIdentity as i32,
                    action: lk::leave_request::Action::Disconnect as i32,
                    regions: None,
                }),
            );
            self.remove(&old, lk::DisconnectReason::DuplicateIdentity, true);
        }
        if self.participants.len() >= self.config.max_participants {
            return Err(JoinRefusal::RoomFull);
        }
        let now_ms = self.unix_ms(now);
        let pid = self.new_participant_sid();
        let info = lk::ParticipantInfo {
            sid: pid.0.clone(),
            identity: sip.identity.clone(),
            state: lk::participant_info::State::Active as i32,
            joined_at: now_ms.div_euclid(1000),
            joined_at_ms: now_ms,
            name: sip.name.clone(),
            version: 1,
            permission: Some(lk::ParticipantPermission {
                can_subscribe: true,
                can_publish: true,
                can_publish_data: true,
                hidden,
                ..Default::default()
            }),
            kind: sip.kind().proto_value(),
            attributes: sip
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        };
        tracing::info!(room = %self.room.name, %pid, identity = %info.identity, "SIP participant joins");
        self.participants.insert(
            pid.clone(),
            Participant {
                info,
                link: Link::Sip(Box::new(sip)),
                auto_subscribe: true,
            },
        );
        self.count_participants();
        let track = self.publish(
            &pid,
            String::new(),
            lk::TrackInfo {
                name: "phone".to_owned(),
                source: lk::TrackSource::Microphone as i32,
                ..Default::default()
            },
            false,
            now,
        );
        // `publish` announced the participant with its track (version 2).
        // It hears the room's mix: it subscribes to every other track.
        for t in self.tracks_for(&pid) {
            self.subscribe(&pid, &t);
        }
        Ok((pid, track))
    }

    /// The SIP call behind `pid` changed state (`sip.callStatus`): a new
    /// version to everyone. False when nothing changed or `pid` is not SIP.
    pub fn set_call_status(&mut self, pid: &ParticipantSid, status: CallStatus) -> bool {
        let Some(p) = self.participants.get_mut(pid) else {
            return false;
        };
        let Link::Sip(sip) = &mut p.link else {
            return false;
        };
        if !sip.set_status(status) {
            return false;
        }
        p.info.attributes = sip
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        p.bump();
        self.announce(pid, true);
        true
    }

    /// The media layer's peer for `pid` is connected: state ACTIVE.
    pub fn set_active(&mut self, pid: &ParticipantSid) {
        let Some(p) = self.participants.get_mut(pid) else {
            return;
        };
        if p.info.state == lk::participant_info::State::Active as i32 {
            return;
        }
        p.info.state = lk::participant_info::State::Active as i32;
        p.bump();
        self.announce(pid, true);
    }

    /// Mute or unmute a published track from the server side (RoomService
    /// `MutePublishedTrack`): the publisher's SDK is told with a `mute`
    /// (it then mutes its sender), the room sees the update. False when
    /// `pid` did not publish `track` or nothing changed.
    pub fn mute_published_track(
        &mut self,
        pid: &ParticipantSid,
        track: &TrackSid,
        muted: bool,
    ) -> bool {
        let Some(p) = self.participants.get_mut(pid) else {
            return false;
        };
        let Some(info) = p.info.tracks.iter_mut().find(|t| t.sid == track.0) else {
            return false;
        };
        if info.muted == muted {
            return false;
        }
        info.muted = muted;
        p.bump();
        self.send(
            pid,
            Resp::Mute(lk::MuteTrackRequest {
                sid: track.0.clone(),
                muted,
            }),
        );
        self.announce(pid, true);
        self.out
            .push_back(SignalOutput::Media(MediaRequest::TrackMuted {
                pid: pid.clone(),
                track: track.clone(),
                muted,
            }));
        true
    }

    /// Room metadata changed (RoomService): `room_update` to everyone.
    pub fn set_room_metadata(&mut self, metadata: &str) {
        if self.room.metadata == metadata {
            return;
        }
        self.room.metadata = metadata.to_owned();
        self.broadcast(
            Resp::RoomUpdate(lk::RoomUpdate {
                room: Some(self.room.clone()),
            }),
            None,
        );
    }

    /// Audio levels the media layer measured this period (0.0-1.0; RFC 6464
    /// levels of WebRTC publishers, PCM energy of SIP callers); a
    /// participant missing or at 0 is silent. `speakers_changed` goes out
    /// only when who speaks changed, with the changed speakers (livekit's
    /// behaviour: an inactive one listed with `active = false`).
    pub fn report_levels(&mut self, levels: &[(ParticipantSid, f32)]) {
        let now: BTreeMap<ParticipantSid, f32> = levels
            .iter()
            .filter(|(sid, level)| {
                *level > 0.0 && self.participants.get(sid).is_some_and(|p| !p.hidden())
            })
            .map(|(sid, level)| (sid.clone(), level.min(1.0)))
            .collect();
        let mut changed: Vec<lk::SpeakerInfo> = now
            .iter()
            .filter(|(sid, _)| !self.speakers.contains_key(*sid))
            .map(|(sid, &level)| lk::SpeakerInfo {
                sid: sid.0.clone(),
                level,
                active: true,
            })
            .collect();
        changed.extend(
            self.speakers
                .keys()
                .filter(|sid| !now.contains_key(*sid))
                .map(|sid| lk::SpeakerInfo {
                    sid: sid.0.clone(),
                    level: 0.0,
                    active: false,
                }),
        );
        self.speakers = now;
        if !changed.is_empty() {
            changed.sort_by(|a, b| b.level.total_cmp(&a.level));
            self.broadcast(
                Resp::SpeakersChanged(lk::SpeakersChanged { speakers: changed }),
                None,
            );
        }
    }

    /// The str0m peer's answer to [`MediaRequest::AcceptOffer`] `id`,
    /// with the transceiver mids mapped to the tracks they carry.
    pub fn send_answer(
        &mut self,
        pid: &ParticipantSid,
        sdp: String,
        id: u32,
        mid_to_track_id: HashMap<String, String>,
    ) -> Result<(), SignalError> {
        self.send_description(pid, "answer", Resp::Answer, sdp, id, mid_to_track_id)
    }

    /// Our offer (v0 subscriber PC).
    pub fn send_offer(
        &mut self,
        pid: &ParticipantSid,
        sdp: String,
        id: u32,
        mid_to_track_id: HashMap<String, String>,
    ) -> Result<(), SignalError> {
        self.send_description(pid, "offer", Resp::Offer, sdp, id, mid_to_track_id)
    }

    /// A `SessionDescription` of `kind` ("answer" or "offer") to `pid`, in
    /// the response field `wrap` puts it in.
    fn send_description(
        &mut self,
        pid: &ParticipantSid,
        kind: &str,
        wrap: fn(lk::SessionDescription) -> Resp,
        sdp: String,
        id: u32,
        mid_to_track_id: HashMap<String, String>,
    ) -> Result<(), SignalError> {
        self.connected(pid)?;
        let description = lk::SessionDescription {
            r#type: kind.to_owned(),
            sdp,
            id,
            mid_to_track_id,
        };
        self.send(pid, wrap(description));
        Ok(())
    }

    /// One of our ICE candidates (`RTCIceCandidateInit` JSON) for `target`.
    pub fn send_candidate(
        &mut self,
        pid: &ParticipantSid,
        candidate_init: String,
        target: lk::SignalTarget,
    ) -> Result<(), SignalError> {
        self.connected(pid)?;
        self.send(
            pid,
            Resp::Trickle(lk::TrickleRequest {
                candidate_init,
                target: target as i32,
                r#final: false,
            }),
        );
        Ok(())
    }

    /// v1: the client must add receive sections before we can send it more
    /// tracks (`media_sections_requirement`); it re-offers.
    pub fn require_media_sections(
        &mut self,
        pid: &ParticipantSid,
        num_audios: u32,
    ) -> Result<(), SignalError> {
        self.connected(pid)?;
        self.send(
            pid,
            Resp::MediaSectionsRequirement(lk::MediaSectionsRequirement {
                num_audios,
                num_videos: 0,
            }),
        );
        Ok(())
    }

    /// The subscriber's down track for `track` is bound (`track_subscribed`).
    pub fn track_subscribed(
        &mut self,
        pid: &ParticipantSid,
        track: &TrackSid,
    ) -> Result<(), SignalError> {
        self.connected(pid)?;
        self.send(
            pid,
            Resp::TrackSubscribed(lk::TrackSubscribed {
                track_sid: track.0.clone(),
            }),
        );
        Ok(())
    }

    fn connected(&self, pid: &ParticipantSid) -> Result<(), SignalError> {
        if self
            .participants
            .get(pid)
            .is_some_and(Participant::has_socket)
        {
            Ok(())
        } else {
            Err(SignalError::UnknownParticipant(pid.clone()))
        }
    }

    /// One binary WebSocket message from `pid`'s SDK. A frame that is too
    /// large or not a `SignalRequest` closes that session (and only it:
    /// everyone else merely sees the participant leave) and is returned as
    /// the error.
    pub fn handle_request(
        &mut self,
        pid: &ParticipantSid,
        frame: &[u8],
        now: Instant,
    ) -> Result<(), SignalError> {
        self.connected(pid)?;
        if frame.len() > self.config.max_frame {
            self.remove(pid, lk::DisconnectReason::UnknownReason, true);
            return Err(SignalError::FrameTooLarge {
                len: frame.len(),
                limit: self.config.max_frame,
            });
        }
        let request = match lk::SignalRequest::decode(frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(room = %self.room.name, %pid, error = %e, "undecodable signal frame");
                self.remove(pid, lk::DisconnectReason::UnknownReason, true);
                return Err(SignalError::Decode(e));
            }
        };
        // Any message shows the client alive (livekit-server resets its
        // read deadline on every message, not only pings).
        self.arm_ping_timer(pid, now);
        let Some(message) = request.message else {
            return Ok(());
        };
        match message {
            Req::Ping(_) => {
                let pong = self.unix_ms(now);
                self.send(pid, Resp::Pong(pong));
            }
            Req::PingReq(ping) => {
                let timestamp = self.unix_ms(now);
                self.send(
                    pid,
                    Resp::PongResp(lk::Pong {
                        last_ping_timestamp: ping.timestamp,
                        timestamp,
                    }),
                );
            }
            Req::Offer(sd) => self
                .out
                .push_back(SignalOutput::Media(MediaRequest::AcceptOffer {
                    pid: pid.clone(),
                    sdp: sd.sdp,
                    id: sd.id,
                })),
            Req::Answer(sd) => {
                self.out
                    .push_back(SignalOutput::Media(MediaRequest::AcceptAnswer {
                        pid: pid.clone(),
                        sdp: sd.sdp,
                        id: sd.id,
                    }))
            }
            Req::Trickle(t) => {
                let target = lk::SignalTarget::try_from(t.target).unwrap_or_default();
                self.out
                    .push_back(SignalOutput::Media(MediaRequest::RemoteCandidate {
                        pid: pid.clone(),
                        candidate_init: t.candidate_init,
                        target,
                        last: t.r#final,
                    }));
            }
            Req::AddTrack(add) => self.add_track(pid, add, now),
            Req::Mute(m) => self.mute(pid, m),
            Req::Subscription(s) => self.update_subscription(pid, s),
            Req::UpdateMetadata(u) => self.update_metadata(pid, u),
            Req::Leave(l) => {
                // The others are told CLIENT_INITIATED whatever reason the
                // client gives (it could claim DUPLICATE_IDENTITY, say).
                tracing::info!(room = %self.room.name, %pid, client_reason = l.reason, "participant leaves");
                self.remove(pid, lk::DisconnectReason::ClientInitiated, true);
            }
            other => {
                // Video layers, track settings, subscription permissions,
                // sync state, simulations, data tracks, blobs: nothing to do
                // for an audio-only room (yet).
                tracing::debug!(room = %self.room.name, %pid, request = ignored_name(&other),
                    "signal request ignored");
            }
        }
        Ok(())
    }

    /// The WebSocket of `pid` is gone (closed or broken). The SDKs resume
    /// after a network change (`reconnect=1&sid=...`), so the participant
    /// stays, unannounced, for [`SignalConfig::reconnect_grace`]; frames
    /// for it meanwhile are dropped (the SDK syncs its state on resume).
    pub fn connection_lost(&mut self, pid: &ParticipantSid, now: Instant) {
        let grace = self.config.reconnect_grace;
        let Some(p) = self.participants.get_mut(pid) else {
            return;
        };
        let Link::Signal { connected, .. } = &mut p.link else {
            return;
        };
        if !*connected {
            return;
        }
        if grace.is_zero() {
            self.remove(pid, lk::DisconnectReason::SignalClose, false);
            return;
        }
        *connected = false;
        self.timers.remove(&Timer::PingTimeout(pid.clone()));
        self.timers
            .insert(Timer::ReconnectGrace(pid.clone()), now + grace);
    }

    /// Remove a participant from the room (RoomService `RemoveParticipant`,
    /// or the SIP call ended: `CLIENT_INITIATED` for the caller's BYE).
    pub fn remove_participant(&mut self, pid: &ParticipantSid, reason: lk::DisconnectReason) {
        if self.participants.contains_key(pid) {
            if reason != lk::DisconnectReason::ClientInitiated {
                self.send(
                    pid,
                    Resp::Leave(lk::LeaveRequest {
                        can_reconnect: false,
                        reason: reason as i32,
                        action: lk::leave_request::Action::Disconnect as i32,
                        regions: None,
                    }),
                );
            }
            self.remove(pid, reason, true);
        }
    }

    /// Take `pid` out: the others see it DISCONNECTED (a last version),
    /// its tracks are unpublished, its timers cancelled; `close` asks the
    /// listener to close its socket.
    fn remove(&mut self, pid: &ParticipantSid, reason: lk::DisconnectReason, close: bool) {
        let Some(mut p) = self.participants.remove(pid) else {
            return;
        };
        self.timers.remove(&Timer::PingTimeout(pid.clone()));
        self.timers.remove(&Timer::ReconnectGrace(pid.clone()));
        self.speakers.remove(pid);
        p.info.state = lk::participant_info::State::Disconnected as i32;
        p.info.disconnect_reason = reason as i32;
        p.bump();
        // Its publications go, with their subscriptions.
        let gone: Vec<TrackSid> = self
            .tracks
            .iter()
            .filter(|(_, t)| &t.publisher == pid)
            .map(|(t, _)| t.clone())
            .collect();
        for track in gone {
            if let Some(publication) = self.tracks.remove(&track) {
                for subscriber in publication.subscribers {
                    self.out
                        .push_back(SignalOutput::Media(MediaRequest::Unsubscribe {
                            subscriber,
                            track: track.clone(),
                        }));
                }
            }
        }
        for publication in self.tracks.values_mut() {
            publication.subscribers.remove(pid);
        }
        self.count_participants();
        let had_socket = p.has_socket();
        if !p.hidden() {
            self.broadcast(
                Resp::Update(lk::ParticipantUpdate {
                    participants: vec![p.info],
                }),
                None,
            );
        }
        if close && had_socket {
            self.out.push_back(SignalOutput::Close {
                pid: pid.clone(),
                reason,
            });
        }
        self.out
            .push_back(SignalOutput::Media(MediaRequest::ParticipantLeft {
                pid: pid.clone(),
                reason,
            }));
        // Reported once the queue drains, and only if still empty then: a
        // duplicate identity replaces the last participant in one input.
        self.empty_pending = self.participants.is_empty();
    }

    /// Publish a track for `pid` (already checked): `TR_` sid, audio,
    /// Opus. With `reply`, the publisher gets `track_published` first (its
    /// SDK waits for it, keyed by `cid`); then everyone sees the update
    /// (livekit-server includes the publisher) and auto-subscribers get it.
    fn publish(
        &mut self,
        pid: &ParticipantSid,
        cid: String,
        mut track: lk::TrackInfo,
        reply: bool,
        now: Instant,
    ) -> TrackSid {
        let sid = loop {
            let sid = TrackSid(ids::new_id(ids::TRACK, &mut self.rng));
            if !self.tracks.contains_key(&sid) {
                break sid;
            }
        };
        let unix_micro = self.unix_ms(now).saturating_mul(1000);
        track.sid = sid.0.clone();
        track.r#type = lk::TrackType::Audio as i32;
        track.mime_type = "audio/opus".to_owned();
        track.version = Some(lk::TimedVersion {
            unix_micro,
            ticks: 0,
        });
        self.tracks.insert(
            sid.clone(),
            Publication {
                publisher: pid.clone(),
                cid: cid.clone(),
                subscribers: BTreeSet::new(),
            },
        );
        if reply {
            self.send(
                pid,
                Resp::TrackPublished(lk::TrackPublishedResponse {
                    cid,
                    track: Some(track.clone()),
                }),
            );
        }
        if let Some(p) = self.participants.get_mut(pid) {
            p.info.tracks.push(track);
            p.info.is_publisher = true;
            p.bump();
        }
        self.count_participants();
        self.announce(pid, true);
        // A hidden publisher's tracks are forwarded to nobody: its
        // subscribers would get media from a participant they never heard of.
        let hidden = self.participants.get(pid).is_some_and(Participant::hidden);
        let auto: Vec<ParticipantSid> = self
            .participants
            .iter()
            .filter(|(sid, p)| {
                !hidden && *sid != pid && p.auto_subscribe && p.permission().can_subscribe
            })
            .map(|(sid, _)| sid.clone())
            .collect();
        for subscriber in auto {
            self.subscribe(&subscriber, &sid);
        }
        sid
    }

    /// The publisher stopped `track` (the WebRTC layer saw its transceiver
    /// stop or its sender removed in a renegotiation): `track_unpublished`
    /// to the publisher, an update to the others, subscriptions dropped.
    /// False when `pid` did not publish `track`.
    pub fn unpublish_track(&mut self, pid: &ParticipantSid, track: &TrackSid) -> bool {
        if self.tracks.get(track).is_none_or(|t| &t.publisher != pid) {
            return false;
        }
        if let Some(publication) = self.tracks.remove(track) {
            for subscriber in publication.subscribers {
                self.out
                    .push_back(SignalOutput::Media(MediaRequest::Unsubscribe {
                        subscriber,
                        track: track.clone(),
                    }));
            }
        }
        if let Some(p) = self.participants.get_mut(pid) {
            p.info.tracks.retain(|t| t.sid != track.0);
            p.info.is_publisher = !p.info.tracks.is_empty();
            p.bump();
        }
        self.count_participants();
        self.send(
            pid,
            Resp::TrackUnpublished(lk::TrackUnpublishedResponse {
                track_sid: track.0.clone(),
            }),
        );
        self.announce(pid, true);
        true
    }

    fn add_track(&mut self, pid: &ParticipantSid, add: lk::AddTrackRequest, now: Instant) {
        use lk::request_response::{Reason, Request};
        let Some(p) = self.participants.get(pid) else {
            return;
        };
        let permission = p.permission();
        let source = add.source;
        let allowed = permission.can_publish
            && (permission.can_publish_sources.is_empty()
                || permission.can_publish_sources.contains(&source));
        if !allowed {
            self.request_refused(
                pid,
                0,
                Reason::NotAllowed,
                "does not have permission to publish this track",
                Some(Request::AddTrack(add)),
            );
            return;
        }
        if add.r#type != lk::TrackType::Audio as i32 {
            // We never forward video (every peer is built Opus-only): say so
            // instead of leaving the SDK waiting for `track_published`.
            self.request_refused(
                pid,
                0,
                Reason::UnsupportedType,
                "only audio tracks are supported",
                Some(Request::AddTrack(add)),
            );
            return;
        }
        // The same cid again (a retry): answer with the same publication.
        if let Some((sid, _)) = self
            .tracks
            .iter()
            .find(|(_, t)| &t.publisher == pid && t.cid == add.cid && !add.cid.is_empty())
        {
            let track = p.info.tracks.iter().find(|t| t.sid == sid.0).cloned();
            self.send(
                pid,
                Resp::TrackPublished(lk::TrackPublishedResponse {
                    cid: add.cid,
                    track,
                }),
            );
            return;
        }
        if p.info.tracks.len() >= self.config.max_tracks {
            self.request_refused(
                pid,
                0,
                Reason::LimitExceeded,
                "too many tracks",
                Some(Request::AddTrack(add)),
            );
            return;
        }
        let info = lk::TrackInfo {
            name: add.name,
            muted: add.muted,
            source,
            disable_red: add.disable_red,
            encryption: add.encryption,
            stream: add.stream,
            audio_features: add.audio_features,
            ..Default::default()
        };
        let sid = self.publish(pid, add.cid, info, true, now);
        tracing::debug!(room = %self.room.name, %pid, track = %sid, "track published");
    }

    fn mute(&mut self, pid: &ParticipantSid, m: lk::MuteTrackRequest) {
        use lk::request_response::{Reason, Request};
        let Some(p) = self.participants.get_mut(pid) else {
            return;
        };
        let Some(track) = p.info.tracks.iter_mut().find(|t| t.sid == m.sid) else {
            self.request_refused(
                pid,
                0,
                Reason::NotFound,
                "no such track",
                Some(Request::Mute(m)),
            );
            return;
        };
        if track.muted == m.muted {
            return;
        }
        track.muted = m.muted;
        p.bump();
        self.announce(pid, true);
        self.out
            .push_back(SignalOutput::Media(MediaRequest::TrackMuted {
                pid: pid.clone(),
                track: TrackSid(m.sid),
                muted: m.muted,
            }));
    }

    fn update_metadata(&mut self, pid: &ParticipantSid, u: lk::UpdateParticipantMetadata) {
        use lk::request_response::{Reason, Request};
        let max_metadata = self.config.max_metadata;
        let max_attributes = self.config.max_attributes;
        let Some(p) = self.participants.get_mut(pid) else {
            return;
        };
        if !p.permission().can_update_metadata {
            let id = u.request_id;
            self.request_refused(
                pid,
                id,
                Reason::NotAllowed,
                "does not have permission to update own metadata",
                Some(Request::UpdateMetadata(u)),
            );
            return;
        }
        // livekit-server: an empty metadata or name leaves it as is; an
        // attribute with an empty value is deleted.
        let mut attributes = p.info.attributes.clone();
        for (k, v) in &u.attributes {
            if v.is_empty() {
                attributes.remove(k);
            } else {
                attributes.insert(k.clone(), v.clone());
            }
        }
        if u.metadata.len() > max_metadata
            || u.name.len() > max_metadata
            || attributes_size(&attributes) > max_attributes
        {
            let id = u.request_id;
            self.request_refused(
                pid,
                id,
                Reason::LimitExceeded,
                "metadata or attributes too large",
                Some(Request::UpdateMetadata(u)),
            );
            return;
        }
        if apply_update(p, u.metadata, u.name, attributes) {
            // Everyone, the participant included: its SDK updates the local
            // participant from this update.
            self.announce(pid, true);
        }
    }

    /// The server side (RoomService `UpdateParticipant`): new metadata, name
    /// (empty: unchanged) and attributes (an empty value deletes), with the
    /// same size limits as a participant's own update but no permission
    /// needed. A phone caller keeps them across its call status changes.
    pub fn update_participant(
        &mut self,
        pid: &ParticipantSid,
        metadata: String,
        name: String,
        changes: &HashMap<String, String>,
    ) -> Result<(), &'static str> {
        let (max_metadata, max_attributes) = (self.config.max_metadata, self.config.max_attributes);
        let Some(p) = self.participants.get_mut(pid) else {
            return Err("participant not found");
        };
        let mut attributes = p.info.attributes.clone();
        for (k, v) in changes {
            if v.is_empty() {
                attributes.remove(k);
            } else {
                attributes.insert(k.clone(), v.clone());
            }
        }
        if metadata.len() > max_metadata
            || name.len() > max_metadata
            || attributes_size(&attributes) > max_attributes
        {
            return Err("metadata or attributes too large");
        }
        if let Link::Sip(sip) = &mut p.link {
            sip.attributes = attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        if apply_update(p, metadata, name, attributes) {
            self.announce(pid, true);
        }
        Ok(())
    }

    fn update_subscription(&mut self, pid: &ParticipantSid, u: lk::UpdateSubscription) {
        let can_subscribe = self
            .participants
            .get(pid)
            .is_some_and(|p| p.permission().can_subscribe);
        let sids = u
            .track_sids
            .into_iter()
            .chain(u.participant_tracks.into_iter().flat_map(|t| t.track_sids));
        for sid in sids.take(self.config.max_participants * self.config.max_tracks) {
            let track = TrackSid(sid);
            let known = self.tracks.get(&track).is_some_and(|t| {
                &t.publisher != pid
                    && self
                        .participants
                        .get(&t.publisher)
                        .is_some_and(|p| !p.hidden())
            });
            if !known {
                self.send(
                    pid,
                    Resp::SubscriptionResponse(lk::SubscriptionResponse {
                        track_sid: track.0,
                        err: lk::SubscriptionError::SeTrackNotfound as i32,
                    }),
                );
            } else if u.subscribe && can_subscribe {
                self.subscribe(pid, &track);
            } else if !u.subscribe {
                self.unsubscribe(pid, &track);
            }
        }
    }

    fn subscribe(&mut self, subscriber: &ParticipantSid, track: &TrackSid) {
        if let Some(publication) = self.tracks.get_mut(track) {
            if publication.subscribers.insert(subscriber.clone()) {
                let publisher = publication.publisher.clone();
                self.out
                    .push_back(SignalOutput::Media(MediaRequest::Subscribe {
                        subscriber: subscriber.clone(),
                        publisher,
                        track: track.clone(),
                    }));
            }
        }
    }

    fn unsubscribe(&mut self, subscriber: &ParticipantSid, track: &TrackSid) {
        if let Some(publication) = self.tracks.get_mut(track) {
            if publication.subscribers.remove(subscriber) {
                self.out
                    .push_back(SignalOutput::Media(MediaRequest::Unsubscribe {
                        subscriber: subscriber.clone(),
                        track: track.clone(),
                    }));
            }
        }
    }
}

#[cfg(test)]
mod tests;
