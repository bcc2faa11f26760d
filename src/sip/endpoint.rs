//! The SIP endpoint of one shard: routing to the owner shard, transactions, and
//! the inbound call (UAS) core. Sans-IO.
//!
//! Where it sits: the shard's driver (`runtime::shard`) feeds it every SIP
//! message its sockets or the shard mesh deliver ([`Endpoint::handle_inbound`]),
//! fires its timers ([`Endpoint::handle_timeout`]) and then drains
//! [`Endpoint::poll_output`] until it returns [`Output::Idle`] with the next
//! deadline. It never reads the clock, sleeps or touches a socket.
//!
//! Ownership (docs/architecture.md, "shards"): a call lives on the shard that owns
//! its room, `hash(room) % shards`. Which shard that is cannot be known before
//! the INVITE has been matched to a trunk and a dispatch rule, so the first
//! decision is taken on the Call-ID's *home* shard (`hash(Call-ID) % shards`):
//! every INVITE or CANCEL without a To-tag goes there first. The home shard
//! answers refusals itself and hands accepted INVITEs to the owner, remembering
//! the owner for later retransmissions and CANCELs. Requests inside a dialog
//! carry our To-tag and responses to our requests carry our Via branch; both
//! name the owner shard (`sb<shard>-...`), so they go there in one hop.

use super::builder::{self, DialogRequest, ResponseParts, ALLOW};
use super::digest::{self, NonceCheck, NonceSource};
use super::message::{phone_number, HeaderName, Method, ParseError, SipMessage, SipUri};
use super::transaction::{RequestMatch, Transactions, TxKey, TxOutput, T1, T2};
use crate::config::Config;
use crate::routing::{self, Dispatch, InboundCall, Refusal, TrunkAuth};
use crate::sdp;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// Which TCP connection, on which shard, a message came in on or must go out on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: usize,
    pub id: u64,
}

/// The other end of a SIP message, and the flow it travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub conn: Option<ConnRef>,
}

impl Peer {
    /// Reliable transports need no retransmissions (RFC 3261 s17.1.1.2).
    pub fn is_reliable(&self) -> bool {
        self.transport == Transport::Tcp
    }
}

/// One SIP message as it arrived, possibly after crossing the shard mesh.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub peer: Peer,
    pub data: Bytes,
    /// Driver's clock when the bytes were received.
    pub received: Instant,
    /// How many shards handed this message on already (bounded, no loops).
    pub hops: u8,
    /// Set by the home shard when it hands an accepted INVITE to the owner.
    pub routed: Option<Box<RoutedCall>>,
}

impl Inbound {
    pub fn new(peer: Peer, data: Bytes, received: Instant) -> Inbound {
        Inbound {
            peer,
            data,
            received,
            hops: 0,
            routed: None,
        }
    }
}

/// The decision the home shard took for a new INVITE: trunk, rule and room.
#[derive(Clone, Debug)]
pub struct RoutedCall {
    pub trunk_id: String,
    pub trunk_index: usize,
    pub dispatch: Dispatch,
    pub caller: String,
    pub callee: String,
}

#[derive(Clone, Debug)]
pub struct Transmit {
    pub peer: Peer,
    pub data: Bytes,
}

/// Prefix of the room a call waits in while its PIN is entered (`pin:<call-id>`):
/// it hears no one, and no one (LiveKit participants included) sees it.
pub const PIN_ROOM_PREFIX: &str = "pin:";

/// Identifies a call on its owner shard. An `Arc<str>`: the media engine tags
/// every packet it sends with its call, and cloning this is a refcount, not an
/// allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(pub Arc<str>);

impl fmt::Display for CallKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug)]
pub enum Output {
    /// Send. UDP: from this shard's SIP socket. TCP: over `peer.conn` (the driver
    /// hands it to the shard owning the connection, or connects anew).
    Transmit(Transmit),
    /// Hand this message to another shard.
    Forward { shard: usize, msg: Inbound },
    /// Bind the call's RTP socket (and RTCP on the next port) on this shard.
    MediaOpen { call: CallKey, local: SocketAddr },
    /// The call was answered: start its media in its room with what was negotiated.
    /// Sent again when a re-INVITE or a late-offer ACK changes it.
    MediaStart(MediaSpec),
    /// The call ended: release its media and write the call record.
    MediaClose { call: CallKey, record: CallRecord },
    /// Nothing more now; call `handle_timeout` at this instant.
    Idle(Option<Instant>),
}

/// What the media layer needs to carry a call's audio.
#[derive(Clone, Debug)]
pub struct MediaSpec {
    pub call: CallKey,
    pub room: String,
    pub local: SocketAddr,
    /// Where the SDP says to send RTP (symmetric RTP may latch elsewhere).
    pub remote: SocketAddr,
    pub codec: sdp::Codec,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    pub ptime_ms: u16,
    /// Our negotiated direction (RFC 3264 s6.1): hold is a re-INVITE that
    /// changes it (s8.4).
    pub direction: sdp::Direction,
    /// Caller number, trunk and rule, for the participant's identity and attributes.
    pub caller: String,
    pub callee: String,
    pub trunk_id: String,
    pub rule_id: String,
}

/// The signaling half of a call record; the driver adds the media half and logs it
/// (one structured line per call, see [`CallRecord::log`]).
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub call_id: String,
    pub trunk: String,
    pub rule: String,
    pub room: String,
    pub shard: usize,
    pub caller: String,
    pub callee: String,
    pub duration_ms: u64,
    pub setup_ms: u64,
    pub codec: &'static str,
    pub hangup_by: &'static str,
    pub reason: &'static str,
}

/// The media half of a call record (from the media engine), kept here as plain
/// numbers so the log line has one shape.
#[derive(Clone, Debug, Default)]
pub struct MediaFigures {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub foreign_dropped: u64,
    pub jitter_p50_us: u64,
    pub jitter_p99_us: u64,
    pub jitter_max_us: u64,
    pub dtmf_digits: u64,
    /// Round-trip time from the caller's RTCP receiver reports (RFC 3550 s6.4.1),
    /// 0 when none came.
    pub rtt_ms: u64,
}

impl CallRecord {
    /// The call record: one line per call at hangup.
    pub fn log(&self, m: &MediaFigures) {
        info!(
            call_id = %self.call_id,
            trunk = %self.trunk,
            rule = %self.rule,
            room = %self.room,
            shard = self.shard,
            caller = %self.caller,
            callee = %self.callee,
            duration_ms = self.duration_ms,
            setup_ms = self.setup_ms,
            codec = self.codec,
            packets_in = m.packets_in,
            packets_out = m.packets_out,
            bytes_in = m.bytes_in,
            bytes_out = m.bytes_out,
            lost = m.lost,
            reordered = m.reordered,
            duplicates = m.duplicates,
            foreign_dropped = m.foreign_dropped,
            jitter_p50_us = m.jitter_p50_us,
            jitter_p99_us = m.jitter_p99_us,
            jitter_max_us = m.jitter_max_us,
            dtmf_digits = m.dtmf_digits,
            rtt_ms = m.rtt_ms,
            hangup_by = self.hangup_by,
            reason = self.reason,
            "call record"
        );
    }
}

/// Counters of one shard's SIP traffic (exported by the metrics module).
#[derive(Clone, Debug, Default)]
pub struct EndpointStats {
    pub received: u64,
    /// Garbage no response could be addressed to.
    pub dropped: u64,
    pub bad_requests: u64,
    pub forwarded: u64,
    pub retransmissions_absorbed: u64,
    pub calls_total: u64,
    pub calls_answered: u64,
    pub calls_refused: u64,
    /// Ended calls by reason (`EndReason::as_str`).
    pub ended: HashMap<&'static str, u64>,
    /// Responses sent, by status code.
    pub responses: HashMap<u16, u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallState {
    /// 180 sent, 200 not yet.
    Ringing,
    /// 200 sent, waiting for ACK (s13.3.1.4).
    Answered,
    /// ACK received.
    Confirmed,
    /// We sent BYE; waiting for its final response.
    Ending,
}

/// Why a call ended, for the call record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    CallerHangup,
    Cancelled,
    NoAck,
    ShutdownBeforeAnswer,
    Shutdown,
    ByeTimeout,
    MediaFailed,
    MediaTimeout,
    WrongPin,
    /// The LiveKit side removed the caller's participant (RoomService).
    ParticipantRemoved,
    /// The LiveKit side deleted the caller's room (RoomService).
    RoomDeleted,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::CallerHangup => "caller-bye",
            EndReason::Cancelled => "caller-cancel",
            EndReason::NoAck => "no-ack",
            EndReason::ShutdownBeforeAnswer => "shutdown-before-answer",
            EndReason::Shutdown => "shutdown",
            EndReason::ByeTimeout => "bye-timeout",
            EndReason::MediaFailed => "media-failed",
            EndReason::MediaTimeout => "media-timeout",
            EndReason::WrongPin => "wrong-pin",
            EndReason::ParticipantRemoved => "participant-removed",
            EndReason::RoomDeleted => "room-deleted",
        }
    }
    fn by(self) -> &'static str {
        match self {
            EndReason::CallerHangup | EndReason::Cancelled => "caller",
            _ => "switchboard",
        }
    }
}

/// One inbound call: its dialog (s12) and what was negotiated for it.
struct Call {
    state: CallState,
    invite_key: TxKey,
    invite: SipMessage,
    peer: Peer,
    local_tag: String,
    /// Our URI as the caller addressed it (To, without tag).
    local_uri: String,
    /// The caller's From value, with their tag.
    remote: String,
    remote_target: String,
    route_set: Vec<String>,
    remote_cseq: u32,
    local_cseq: u32,
    rtp: SocketAddr,
    negotiated: Option<sdp::Negotiated>,
    /// `o=` session id and version of our description (RFC 3264 s8: the id stays,
    /// the version grows with each new answer in the dialog).
    sdp_session: (u64, u64),
    routed: RoutedCall,
    created: Instant,
    answered: Option<Instant>,
    /// 2xx retransmission (s13.3.1.4): bytes, interval, next, give-up.
    ok: Option<Bytes>,
    ok_interval: Duration,
    ok_next: Option<Instant>,
    ok_give_up: Option<Instant>,
    answer_at: Option<Instant>,
    end_reason: Option<EndReason>,
    bye_key: Option<TxKey>,
    /// RTP ports tried after the first could not be bound.
    port_retries: u8,
    /// PIN still to be entered (direct rule with `pin`): the caller waits in a
    /// room of its own until the digits match.
    pin: Option<PinWait>,
}

/// A caller entering a dispatch rule's PIN with DTMF.
struct PinWait {
    expected: String,
    entered: String,
    attempts: u8,
}

/// Other RTP ports tried when the one picked is held by another process.
const MAX_PORT_RETRIES: u8 = 8;

/// Wrong PINs a caller may enter before we hang up (livekit-sip also gives up
/// after a few tries).
const PIN_ATTEMPTS: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum CallTimer {
    Answer,
    RetransmitOk,
    OkGiveUp,
}

/// Everything the endpoint needs from the configuration, resolved once.
struct Settings {
    shard: usize,
    shards: usize,
    sip_port: u16,
    advertise: Option<IpAddr>,
    user_agent: String,
    realm: String,
    answer_delay: Duration,
    rtp_ip_fallback: IpAddr,
}

/// How long a home shard remembers which shard owns a Call-ID: long enough for
/// an INVITE transaction with CANCEL and retransmissions (s17.2.1: 64*T1 after
/// the final response, plus ringing time).
const FORWARD_TTL: Duration = Duration::from_secs(300);
const MAX_FORWARDS: usize = 200_000;
const MAX_CALLS: usize = 100_000;
/// Stateless nonces stay valid this long (RFC 7616 s3.3: server's choice).
const NONCE_MAX_AGE_S: u64 = 300;

pub struct Endpoint {
    cfg: Arc<Config>,
    s: Settings,
    tx: Transactions,
    calls: HashMap<CallKey, Call>,
    call_timers: BinaryHeap<Reverse<(Instant, u64, CallKey, CallTimer)>>,
    timer_seq: u64,
    forwards: HashMap<String, (usize, Instant)>,
    forward_expiry: VecDeque<(Instant, String)>,
    out: VecDeque<Output>,
    tx_out: Vec<TxOutput>,
    rng: SmallRng,
    nonces: NonceSource,
    wall_base: (SystemTime, Instant),
    rtp_ports: VecDeque<u16>,
    shutting_down: bool,
    stats: EndpointStats,
}

/// FNV-1a: the same on every shard and every run, cheap for short strings.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard that owns a room.
pub fn room_shard(room: &str, shards: usize) -> usize {
    (stable_hash(room) % shards.max(1) as u64) as usize
}

/// The shard that takes the first decision for a Call-ID.
pub fn home_shard(call_id: &str, shards: usize) -> usize {
    (stable_hash(call_id) % shards.max(1) as u64) as usize
}

/// The shard named in one of our tags or branches (`sb<shard>-...`).
fn shard_in_token(token: &str) -> Option<usize> {
    let t = token.strip_prefix("z9hG4bK-").unwrap_or(token);
    let rest = t.strip_prefix("sb")?;
    let (n, _) = rest.split_once('-')?;
    n.parse().ok()
}

/// The slice of the RTP port range this shard owns: even ports (RTCP is +1).
pub fn rtp_slice(min: u16, max: u16, shard: usize, shards: usize) -> Vec<u16> {
    let shards = shards.max(1) as u32;
    let total = u32::from(max.saturating_sub(min)) + 1;
    let per = total / shards;
    let start = u32::from(min) + per * shard as u32;
    let end = start + per; // exclusive
    (start..end)
        .filter(|p| p % 2 == 0 && p + 1 < end)
        .map(|p| p as u16)
        .collect()
}

impl Endpoint {
    /// `wall` and `now` are the same moment on the wall clock and the monotonic
    /// clock (nonces carry wall time so any shard can check them).
    pub fn new(
        cfg: Arc<Config>,
        shard: usize,
        shards: usize,
        nonce_secret: [u8; 16],
        seed: u64,
        wall: SystemTime,
        now: Instant,
    ) -> Endpoint {
        let advertise = cfg
            .sip
            .external_ip
            .or_else(|| (!cfg.sip.bind.is_unspecified()).then_some(cfg.sip.bind));
        let s = Settings {
            shard,
            shards: shards.max(1),
            sip_port: cfg.sip.port,
            advertise,
            user_agent: cfg.sip.user_agent.clone(),
            realm: cfg.sip.realm.clone(),
            answer_delay: Duration::from_millis(cfg.sip.answer_delay_ms),
            rtp_ip_fallback: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let rtp_ports = rtp_slice(cfg.rtp.port_min, cfg.rtp.port_max, shard, s.shards).into();
        Endpoint {
            cfg,
            s,
            tx: Transactions::new(),
            calls: HashMap::new(),
            call_timers: BinaryHeap::new(),
            timer_seq: 0,
            forwards: HashMap::new(),
            forward_expiry: VecDeque::new(),
            out: VecDeque::new(),
            tx_out: Vec::new(),
            rng: SmallRng::seed_from_u64(seed ^ shard as u64),
            nonces: NonceSource::new(nonce_secret),
            wall_base: (wall, now),
            rtp_ports,
            shutting_down: false,
            stats: EndpointStats::default(),
        }
    }

    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    pub fn shard(&self) -> usize {
        self.s.shard
    }

    fn unix_secs(&self, now: Instant) -> u64 {
        let (wall, base) = self.wall_base;
        let t = wall + now.saturating_duration_since(base);
        t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    fn token(&mut self) -> String {
        format!("sb{}-{:016x}", self.s.shard, self.rng.gen::<u64>())
    }

    // ----- the poll contract -------------------------------------------------

    pub fn poll_output(&mut self, _now: Instant) -> Output {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        Output::Idle(self.next_deadline())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let calls = self.call_timers.peek().map(|Reverse((t, ..))| *t);
        let fwd = self.forward_expiry.front().map(|(t, _)| *t);
        [self.tx.next_deadline(), calls, fwd]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut tx_out = std::mem::take(&mut self.tx_out);
        self.tx.handle_timeout(now, &mut tx_out);
        for o in tx_out.drain(..) {
            match o {
                TxOutput::Retransmit { peer, data } => self.send(peer, data),
                TxOutput::NoAck { call_id } => {
                    // Non-2xx final never acknowledged: nothing left to do but forget.
                    debug!(call_id = %call_id, "no ACK for final response");
                }
                TxOutput::ClientTimeout { call_id, .. } => {
                    let key = CallKey(call_id.into());
                    if self.calls.contains_key(&key) {
                        self.finish_call(now, &key, EndReason::ByeTimeout);
                    }
                }
            }
        }
        self.tx_out = tx_out;
        while let Some(Reverse((at, ..))) = self.call_timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, _, key, kind))) = self.call_timers.pop() else {
                break;
            };
            self.fire_call_timer(now, at, &key, kind);
        }
        while let Some((at, _)) = self.forward_expiry.front() {
            if *at > now {
                break;
            }
            let Some((_, cid)) = self.forward_expiry.pop_front() else {
                break;
            };
            if self.forwards.get(&cid).is_some_and(|(_, exp)| *exp <= now) {
                self.forwards.remove(&cid);
            }
        }
    }

    fn arm_call(&mut self, at: Instant, key: &CallKey, kind: CallTimer) {
        self.timer_seq += 1;
        self.call_timers
            .push(Reverse((at, self.timer_seq, key.clone(), kind)));
    }

    fn send(&mut self, peer: Peer, data: Bytes) {
        self.out
            .push_back(Output::Transmit(Transmit { peer, data }));
    }

    fn count_response(&mut self, status: u16) {
        *self.stats.responses.entry(status).or_default() += 1;
    }

    // ----- input -------------------------------------------------------------

    pub fn handle_inbound(&mut self, now: Instant, msg: Inbound) {
        self.stats.received += 1;
        let sip = match SipMessage::parse(msg.data.clone()) {
            Ok(m) => m,
            Err(e) => {
                // Nothing addressable survived: drop and count (no response can be built).
                self.stats.dropped += 1;
                debug!(remote = %msg.peer.remote, error = %e, "dropped unparsable message");
                return;
            }
        };
        if sip.is_request() {
            self.handle_request(now, msg, sip);
        } else {
            self.handle_response(now, msg, sip);
        }
    }

    fn forward(&mut self, shard: usize, mut msg: Inbound) {
        if msg.hops >= 2 {
            // Home -> owner is the longest legitimate path; more is a loop.
            self.stats.dropped += 1;
            warn!(shard, "dropping message that crossed the mesh twice");
            return;
        }
        msg.hops += 1;
        self.stats.forwarded += 1;
        self.out.push_back(Output::Forward { shard, msg });
    }

    fn handle_response(&mut self, now: Instant, msg: Inbound, sip: SipMessage) {
        if sip.validate_response().is_err() {
            self.stats.dropped += 1;
            return;
        }
        let Some(branch) = sip.top_via().ok().and_then(|v| v.branch) else {
            self.stats.dropped += 1;
            return;
        };
        if let Some(owner) = shard_in_token(branch) {
            if owner != self.s.shard && owner < self.s.shards {
                self.forward(owner, msg);
                return;
            }
        }
        let Some(key) = TxKey::for_response(&sip) else {
            self.stats.dropped += 1;
            return;
        };
        let status = sip.status().unwrap_or(0);
        if let Some(call_id) = self.tx.on_response(now, &key, status) {
            let ck = CallKey(call_id.into());
            if self
                .calls
                .get(&ck)
                .is_some_and(|c| c.state == CallState::Ending)
            {
                let reason = self.calls[&ck].end_reason.unwrap_or(EndReason::Shutdown);
                self.finish_call(now, &ck, reason);
            }
        }
    }

    fn handle_request(&mut self, now: Instant, msg: Inbound, sip: SipMessage) {
        if let Err(e) = sip.validate_request() {
            self.reject_malformed(&msg, &sip, e);
            return;
        }
        let method = sip.method().unwrap_or(Method::Other);
        let to_tag = sip.to().ok().and_then(|t| t.tag());
        let call_id = sip.call_id().unwrap_or_default().to_string();

        // 1. Route to the owner shard.
        if let Some(tag) = to_tag {
            if let Some(owner) = shard_in_token(tag) {
                if owner != self.s.shard && owner < self.s.shards {
                    self.forward(owner, msg);
                    return;
                }
            }
        } else if matches!(method, Method::Invite | Method::Cancel | Method::Ack) {
            if let Some((owner, _)) = self.forwards.get(&call_id) {
                let owner = *owner;
                if owner != self.s.shard {
                    self.forward(owner, msg);
                    return;
                }
            } else if msg.routed.is_none() {
                let home = home_shard(&call_id, self.s.shards);
                if home != self.s.shard && msg.hops == 0 {
                    self.forward(home, msg);
                    return;
                }
            }
        }

        // 2. Transactions: absorb retransmissions.
        let key = match self.tx.on_request(now, &sip, msg.peer) {
            RequestMatch::New(key) => key,
            RequestMatch::Retransmission { resend } => {
                self.stats.retransmissions_absorbed += 1;
                if let Some((peer, data)) = resend {
                    self.send(peer, data);
                }
                return;
            }
            RequestMatch::AckAbsorbed => return,
            RequestMatch::AckForDialog => {
                self.on_ack(&sip);
                return;
            }
            RequestMatch::Overloaded => {
                self.stateless_response(
                    &msg,
                    &sip,
                    503,
                    "Service Unavailable",
                    "Retry-After: 5\r\n",
                );
                return;
            }
        };

        // 3. The UAS core (s8.2): extensions we do not support (s8.2.2.3).
        if let Some(unsupported) = unsupported_require(&sip) {
            let extra = format!("Unsupported: {unsupported}\r\n");
            self.respond(now, &key, &sip, 420, "Bad Extension", &extra, None, None);
            return;
        }
        match method {
            Method::Invite if to_tag.is_none() => self.on_invite(now, key, msg, sip),
            Method::Invite | Method::Update => self.on_reinvite(now, key, &sip),
            Method::Cancel => self.on_cancel(now, key, &sip),
            Method::Bye => self.on_bye(now, key, &sip),
            Method::Options => {
                let extra = format!("Allow: {ALLOW}\r\nAccept: application/sdp\r\nSupported: \r\n");
                let extra = extra.replace("Supported: \r\n", "");
                self.respond(now, &key, &sip, 200, "OK", &extra, None, None);
            }
            Method::Info => {
                // In-dialog INFO (e.g. application/dtmf-relay) is accepted; out of dialog it has no call.
                let status = if self.find_dialog(&sip).is_some() {
                    200
                } else {
                    481
                };
                self.respond(
                    now,
                    &key,
                    &sip,
                    status,
                    reason_phrase(status),
                    "",
                    None,
                    None,
                );
            }
            Method::Other => {
                let extra = format!("Allow: {ALLOW}\r\n");
                self.respond(now, &key, &sip, 501, "Not Implemented", &extra, None, None);
            }
            _ => {
                // REGISTER, SUBSCRIBE, NOTIFY, MESSAGE, REFER, PUBLISH, PRACK: known, not offered here.
                let extra = format!("Allow: {ALLOW}\r\n");
                self.respond(
                    now,
                    &key,
                    &sip,
                    405,
                    "Method Not Allowed",
                    &extra,
                    None,
                    None,
                );
            }
        }
    }

    /// A request we could read but not accept: 400 (or 505) with the reason in the
    /// reason phrase, sent statelessly; dropped when no response can be addressed
    /// (no usable Via) or when it is an ACK (never answered, s17.2.1).
    fn reject_malformed(&mut self, msg: &Inbound, sip: &SipMessage, e: ParseError) {
        // A 505 goes back to the source even when the Via carries the unknown
        // version too; other errors need a readable Via to be addressed.
        let addressable = sip.top_via().is_ok() || e == ParseError::Version;
        if sip.method() == Some(Method::Ack) || !addressable {
            self.stats.dropped += 1;
            debug!(remote = %msg.peer.remote, error = %e, "dropped malformed request");
            return;
        }
        self.stats.bad_requests += 1;
        debug!(remote = %msg.peer.remote, call_id = sip.call_id().unwrap_or(""), error = %e, "malformed request");
        self.stateless_response(msg, sip, e.status(), e.reason(), "");
    }

    fn stateless_response(
        &mut self,
        msg: &Inbound,
        sip: &SipMessage,
        status: u16,
        reason: &str,
        extra: &str,
    ) {
        let tag = self.token();
        let data = builder::response(
            sip,
            msg.peer.remote,
            status,
            reason,
            &self.s.user_agent,
            &ResponseParts {
                to_tag: Some(&tag),
                extra_headers: extra,
                body: None,
            },
        );
        self.count_response(status);
        let mut peer = msg.peer;
        if peer.transport == Transport::Udp {
            peer.remote = builder::response_target(sip, msg.peer.remote);
        }
        self.send(peer, data);
    }

    /// A response with the standard reason phrase and nothing else.
    fn reply(&mut self, now: Instant, key: &TxKey, req: &SipMessage, status: u16) {
        self.respond(now, key, req, status, reason_phrase(status), "", None, None);
    }

    /// Send a response on a server transaction.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        now: Instant,
        key: &TxKey,
        req: &SipMessage,
        status: u16,
        reason: &str,
        extra: &str,
        to_tag: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> Option<Bytes> {
        let owned_tag;
        let to_tag = match to_tag {
            Some(t) => Some(t),
            None if status > 100 => {
                owned_tag = self.token();
                Some(owned_tag.as_str())
            }
            None => None,
        };
        let data = builder::response(
            req,
            self.tx_peer_remote(key),
            status,
            reason,
            &self.s.user_agent,
            &ResponseParts {
                to_tag,
                extra_headers: extra,
                body,
            },
        );
        let mut peer = self.tx.respond(now, key, status, data.clone())?;
        self.count_response(status);
        peer.remote = match peer.transport {
            Transport::Udp => builder::response_target(req, peer.remote),
            Transport::Tcp => builder::stream_response_target(req, peer.remote),
        };
        self.send(peer, data.clone());
        Some(data)
    }

    fn tx_peer_remote(&self, key: &TxKey) -> SocketAddr {
        // The transaction stored the peer; responses carry its source in `received`.
        self.tx_peer(key)
            .map_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0), |p| {
                p.remote
            })
    }

    fn tx_peer(&self, key: &TxKey) -> Option<Peer> {
        self.tx.peer(key)
    }

    // ----- INVITE: a new call ------------------------------------------------

    fn on_invite(&mut self, now: Instant, key: TxKey, msg: Inbound, sip: SipMessage) {
        let call_id = sip.call_id().unwrap_or_default().to_string();
        if self.shutting_down {
            self.respond(
                now,
                &key,
                &sip,
                503,
                "Service Unavailable",
                "Retry-After: 30\r\n",
                None,
                None,
            );
            return;
        }
        if self.calls.contains_key(&CallKey(call_id.as_str().into())) {
            // A second INVITE without To-tag for a live call: a fork or a loop (s8.2.2.2).
            self.reply(now, &key, &sip, 482);
            return;
        }
        if self.calls.len() >= MAX_CALLS {
            self.respond(
                now,
                &key,
                &sip,
                503,
                "Service Unavailable",
                "Retry-After: 5\r\n",
                None,
                None,
            );
            return;
        }
        // Routing decision: taken here unless the home shard already took it.
        let routed = match msg.routed.clone() {
            Some(r) => *r,
            None => match self.route_invite(now, &key, &msg, &sip) {
                Some(r) => r,
                None => return, // refused, already answered
            },
        };
        let owner = room_shard(&routed.dispatch.room, self.s.shards);
        if owner != self.s.shard {
            // Hand over to the room's shard: it runs the transaction from here on.
            self.tx.forget(&key);
            self.remember_forward(now, &call_id, owner);
            let mut m = msg;
            m.routed = Some(Box::new(routed));
            self.forward(owner, m);
            return;
        }
        self.start_call(now, key, msg, sip, routed);
    }

    fn remember_forward(&mut self, now: Instant, call_id: &str, owner: usize) {
        if self.forwards.len() >= MAX_FORWARDS {
            if let Some((_, old)) = self.forward_expiry.pop_front() {
                self.forwards.remove(&old);
            }
        }
        let exp = now + FORWARD_TTL;
        self.forwards.insert(call_id.to_string(), (owner, exp));
        self.forward_expiry.push_back((exp, call_id.to_string()));
    }

    /// Trunk, digest auth and dispatch rule for a new INVITE. Answers refusals.
    fn route_invite(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Inbound,
        sip: &SipMessage,
    ) -> Option<RoutedCall> {
        let call_id = sip.call_id().unwrap_or_default();
        let from = sip.from().ok()?;
        let caller = SipUri::parse(from.uri)
            .and_then(|u| u.user)
            .map(phone_number)
            .unwrap_or_default();
        // The called number: the Request-URI user, else the To user (s8.2.2.1).
        let ruri_user = sip
            .request_uri()
            .and_then(SipUri::parse)
            .and_then(|u| u.user)
            .map(phone_number);
        let callee = match ruri_user {
            Some(u) if !u.is_empty() => u,
            _ => sip
                .to()
                .ok()
                .and_then(|t| SipUri::parse(t.uri))
                .and_then(|u| u.user)
                .map(phone_number)
                .unwrap_or_default(),
        };
        if sip.request_uri().and_then(SipUri::parse).is_none() {
            let extra = "";
            self.respond(
                now,
                key,
                sip,
                416,
                "Unsupported URI Scheme",
                extra,
                None,
                None,
            );
            return None;
        }
        let cfg = Arc::clone(&self.cfg);
        let call = InboundCall {
            source: msg.peer.remote.ip(),
            caller: &caller,
            callee: &callee,
            call_id,
        };
        let trunk = match routing::match_trunk(&cfg.trunks, &call) {
            Ok(t) => t,
            Err(r) => {
                self.refuse(now, key, sip, &r, &caller, &callee);
                return None;
            }
        };
        if let Some(auth) = &trunk.auth {
            if !self.check_digest(now, key, sip, auth) {
                return None;
            }
        }
        let dispatch = match routing::dispatch(&cfg.dispatch_rules, trunk, &call, &mut self.rng) {
            Ok(d) => d,
            Err(r) => {
                self.refuse(now, key, sip, &r, &caller, &callee);
                return None;
            }
        };
        let trunk_index = cfg
            .trunks
            .iter()
            .position(|t| t.id == trunk.id)
            .unwrap_or(0);
        Some(RoutedCall {
            trunk_id: trunk.id.clone(),
            trunk_index,
            dispatch,
            caller,
            callee,
        })
    }

    fn refuse(
        &mut self,
        now: Instant,
        key: &TxKey,
        sip: &SipMessage,
        r: &Refusal,
        caller: &str,
        callee: &str,
    ) {
        self.stats.calls_refused += 1;
        info!(
            call_id = sip.call_id().unwrap_or(""),
            caller,
            callee,
            status = r.status(),
            reason = r.reason(),
            "call refused"
        );
        self.respond(now, key, sip, r.status(), r.reason(), "", None, None);
    }

    /// RFC 3261 s22.2/s22.3, RFC 2617: challenge, or check the credentials.
    /// Credentials are taken from either header whichever challenge was sent:
    /// a trunk configured for 401 that answers with Proxy-Authorization (or the
    /// reverse) is common enough in the field to be worth not refusing.
    fn check_digest(
        &mut self,
        now: Instant,
        key: &TxKey,
        sip: &SipMessage,
        auth: &TrunkAuth,
    ) -> bool {
        let (user, pass) = (auth.username.as_str(), auth.password.as_str());
        let realm = self.s.realm.clone();
        let now_unix = self.unix_secs(now);
        let creds_value = sip
            .header(HeaderName::Authorization)
            .or_else(|| sip.header(HeaderName::ProxyAuthorization));
        let mut stale = false;
        if let Some(value) = creds_value {
            match digest::parse_credentials(value) {
                Ok(c) => {
                    let nonce_state = self
                        .nonces
                        .check(c.nonce, now_unix, &realm, NONCE_MAX_AGE_S);
                    match nonce_state {
                        NonceCheck::Valid => {
                            // RFC 2617 s3.2.2.5: the digest-uri names this request.
                            if c.username_unescaped() == user
                                && digest::unquote(c.realm) == realm.as_str()
                                && sip.request_uri() == Some(digest::unquote(c.uri).as_ref())
                                && digest::verify(&c, sip.method_str(), pass)
                            {
                                return true;
                            }
                            info!(
                                call_id = sip.call_id().unwrap_or(""),
                                username = c.username,
                                "digest authentication failed"
                            );
                            self.stats.calls_refused += 1;
                            self.reply(now, key, sip, 403);
                            return false;
                        }
                        NonceCheck::Stale => stale = true,
                        NonceCheck::Invalid => {}
                    }
                }
                Err(_) => {
                    self.stats.calls_refused += 1;
                    self.reply(now, key, sip, 403);
                    return false;
                }
            }
        }
        let nonce = self.nonces.issue(now_unix, &realm);
        let chal = digest::challenge(&realm, &nonce, stale);
        let ch = auth.challenge;
        let extra = format!("{}: {chal}\r\n", ch.header());
        self.respond(now, key, sip, ch.status(), ch.reason(), &extra, None, None);
        false
    }

    fn local_ip(&self, peer: &Peer) -> IpAddr {
        self.s.advertise.unwrap_or_else(|| {
            if peer.local.ip().is_unspecified() {
                self.s.rtp_ip_fallback
            } else {
                peer.local.ip()
            }
        })
    }

    fn start_call(
        &mut self,
        now: Instant,
        key: TxKey,
        msg: Inbound,
        sip: SipMessage,
        routed: RoutedCall,
    ) {
        let call_id = sip.call_id().unwrap_or_default().to_string();
        let ck = CallKey(call_id.as_str().into());
        let local_ip = self.local_ip(&msg.peer);
        let trunk = self.cfg.trunks.get(routed.trunk_index);
        let prefs = trunk.map(|t| t.codec_prefs()).unwrap_or_default();
        // SDP offer/answer (RFC 3264). An INVITE without body (late offer) gets our
        // offer in the 200 and the answer in the ACK.
        let Some(port) = self.rtp_ports.pop_front() else {
            warn!(call_id = %call_id, room = %routed.dispatch.room, "no free RTP port on this shard");
            self.respond(
                now,
                &key,
                &sip,
                503,
                "Service Unavailable",
                "Retry-After: 5\r\n",
                None,
                None,
            );
            return;
        };
        let rtp = SocketAddr::new(local_ip, port);
        let session_id = self.rng.gen::<u32>() as u64;
        let negotiated = if sip.body().is_empty() {
            None
        } else {
            let offer = match sdp::parse_offer(sip.body()) {
                Ok(o) => o,
                Err(e) => {
                    self.rtp_ports.push_back(port);
                    warn!(call_id = %call_id, error = %e, "malformed SDP offer");
                    let reason = format!("Bad Request - Malformed SDP: {e}");
                    self.respond(
                        now,
                        &key,
                        &sip,
                        400,
                        &sanitize_reason(&reason),
                        "",
                        None,
                        None,
                    );
                    return;
                }
            };
            let params = sdp::AnswerParams {
                local_ip,
                rtp_port: port,
                session_id,
                session_version: session_id,
                prefs: &prefs,
                user_agent: &self.s.user_agent,
            };
            match sdp::answer(&offer, &params) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.rtp_ports.push_back(port);
                    self.stats.calls_refused += 1;
                    info!(call_id = %call_id, room = %routed.dispatch.room, error = %e, "no common codec");
                    // RFC 3261 s13.3.1.1 / RFC 3264 s6: 488 with a Warning (s20.43, code 305).
                    let extra = format!(
                        "Warning: 305 {} \"Incompatible media format\"\r\n",
                        self.warn_agent()
                    );
                    self.respond(
                        now,
                        &key,
                        &sip,
                        488,
                        "Not Acceptable Here",
                        &extra,
                        None,
                        None,
                    );
                    return;
                }
            }
        };
        let local_tag = self.token();
        let to = sip.to().ok();
        let from_value = sip.header(HeaderName::From).unwrap_or_default().to_string();
        let remote_target = sip
            .header_values(HeaderName::Contact)
            .next()
            .and_then(super::message::NameAddr::parse)
            .map(|c| c.uri.to_string())
            .unwrap_or_else(|| sip.from().map(|f| f.uri.to_string()).unwrap_or_default());
        let route_set: Vec<String> = sip
            .header_values(HeaderName::RecordRoute)
            .map(str::to_string)
            .collect();
        let routed_for_pin = routed.dispatch.pin.clone();
        let call = Call {
            state: CallState::Ringing,
            invite_key: key.clone(),
            local_uri: to.map(|t| format!("<{}>", t.uri)).unwrap_or_default(),
            remote: from_value,
            remote_target,
            route_set,
            remote_cseq: sip.cseq().map(|c| c.seq).unwrap_or(0),
            local_cseq: 0,
            rtp,
            negotiated,
            sdp_session: (session_id, session_id),
            routed,
            created: now,
            answered: None,
            ok: None,
            ok_interval: T1,
            ok_next: None,
            ok_give_up: None,
            answer_at: Some(now + self.s.answer_delay),
            end_reason: None,
            bye_key: None,
            port_retries: 0,
            pin: routed_for_pin.map(|expected| PinWait {
                expected,
                entered: String::new(),
                attempts: 0,
            }),
            invite: sip.clone(),
            peer: msg.peer,
            local_tag: local_tag.clone(),
        };
        self.stats.calls_total += 1;
        info!(
            call_id = %call_id,
            room = %call.routed.dispatch.room,
            trunk = %call.routed.trunk_id,
            rule = %call.routed.dispatch.rule_id,
            shard = self.s.shard,
            caller = %call.routed.caller,
            callee = %call.routed.callee,
            "incoming call"
        );
        let answer_at = call.answer_at;
        self.calls.insert(ck.clone(), call);
        self.out.push_back(Output::MediaOpen {
            call: ck.clone(),
            local: SocketAddr::new(rtp_bind_ip(&msg.peer), port),
        });
        // s8.2.6.1 / s17.2.1: 100 Trying at once, then 180 Ringing with our tag.
        self.reply(now, &key, &sip, 100);
        let contact = self.contact(&msg.peer);
        let extra = format!("Contact: {contact}\r\nAllow: {ALLOW}\r\n");
        self.respond(
            now,
            &key,
            &sip,
            180,
            "Ringing",
            &extra,
            Some(&local_tag),
            None,
        );
        // Answer from the timer, even with no delay: the driver binds the RTP
        // port (MediaOpen) first, and a port some other process holds is
        // replaced before the SDP answer goes out (`handle_media_failed`).
        if let Some(at) = answer_at {
            self.arm_call(at, &ck, CallTimer::Answer);
        }
    }

    fn warn_agent(&self) -> String {
        // warn-agent is a hostport or pseudonym (s20.43).
        self.s
            .advertise
            .map(|ip| format!("{}", SocketAddr::new(ip, self.s.sip_port)))
            .unwrap_or_else(|| "switchboard".to_string())
    }

    fn contact(&self, peer: &Peer) -> String {
        let ip = self.local_ip(peer);
        let port = if peer.local.port() != 0 {
            peer.local.port()
        } else {
            self.s.sip_port
        };
        let host = match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        match peer.transport {
            Transport::Udp => format!("<sip:{host}:{port}>"),
            Transport::Tcp => format!("<sip:{host}:{port};transport=tcp>"),
        }
    }

    /// Send the 200 OK (s13.3.1.4) and start its retransmission until ACK.
    fn answer(&mut self, now: Instant, ck: &CallKey) {
        let Some(call) = self.calls.get(ck) else {
            return;
        };
        if call.state != CallState::Ringing {
            return;
        }
        let key = call.invite_key.clone();
        let invite = call.invite.clone();
        let tag = call.local_tag.clone();
        let peer = call.peer;
        let body = match &call.negotiated {
            Some(n) => n.answer.clone(),
            None => {
                // Late offer: we offer (RFC 3264 s5), the ACK carries the answer.
                let ip = self.local_ip(&peer);
                let prefs = self
                    .cfg
                    .trunks
                    .get(call.routed.trunk_index)
                    .map(|t| t.codec_prefs())
                    .unwrap_or_default();
                sdp::offer(
                    ip,
                    call.rtp.port(),
                    call.sdp_session.0,
                    &prefs,
                    &self.s.user_agent,
                )
            }
        };
        let contact = self.contact(&peer);
        let extra = format!("Contact: {contact}\r\nAllow: {ALLOW}\r\nSupported: \r\n")
            .replace("Supported: \r\n", "");
        let data = self.respond(
            now,
            &key,
            &invite,
            200,
            "OK",
            &extra,
            Some(&tag),
            Some(("application/sdp", body.as_bytes())),
        );
        let Some(call) = self.calls.get_mut(ck) else {
            return;
        };
        call.state = CallState::Answered;
        call.answered = Some(now);
        self.stats.calls_answered += 1;
        info!(call_id = %ck, room = %call.routed.dispatch.room, "call answered");
        if let Some(spec) = media_spec(ck, call) {
            self.out.push_back(Output::MediaStart(spec));
        }
        let Some(call) = self.calls.get_mut(ck) else {
            return;
        };
        if let Some(data) = data {
            call.ok = Some(data);
            call.ok_give_up = Some(now + 64 * T1);
            let give_up = now + 64 * T1;
            if !peer.is_reliable() {
                call.ok_interval = T1;
                call.ok_next = Some(now + T1);
                self.arm_call(now + T1, ck, CallTimer::RetransmitOk);
            }
            self.arm_call(give_up, ck, CallTimer::OkGiveUp);
        }
    }

    fn fire_call_timer(&mut self, now: Instant, at: Instant, ck: &CallKey, kind: CallTimer) {
        let Some(call) = self.calls.get_mut(ck) else {
            return;
        };
        match kind {
            CallTimer::Answer => {
                if call.answer_at == Some(at) {
                    call.answer_at = None;
                    self.answer(now, ck);
                }
            }
            CallTimer::RetransmitOk => {
                if call.state != CallState::Answered || call.ok_next != Some(at) {
                    return;
                }
                let data = call.ok.clone();
                let mut peer = call.peer;
                // s13.3.1.4: T1, doubling up to T2.
                call.ok_interval = (call.ok_interval * 2).min(T2);
                let next = now + call.ok_interval;
                call.ok_next = Some(next);
                if peer.transport == Transport::Udp {
                    peer.remote = builder::response_target(&call.invite, peer.remote);
                }
                if let Some(d) = data {
                    self.send(peer, d);
                }
                self.arm_call(next, ck, CallTimer::RetransmitOk);
            }
            CallTimer::OkGiveUp => {
                if call.state == CallState::Answered && call.ok_give_up == Some(at) {
                    // s13.3.1.4: no ACK in 64*T1: confirm and end the session with BYE.
                    warn!(call_id = %ck, room = %call.routed.dispatch.room, "no ACK for 200 OK; ending call");
                    self.send_bye(now, ck, EndReason::NoAck);
                }
            }
        }
    }

    // ----- in-dialog ---------------------------------------------------------

    /// The call a request inside a dialog belongs to: Call-ID, our tag, their tag (s12.2.2).
    fn find_dialog(&self, sip: &SipMessage) -> Option<CallKey> {
        let ck = CallKey(sip.call_id()?.into());
        let call = self.calls.get(&ck)?;
        let to_tag = sip.to().ok()?.tag()?;
        let from_tag = sip.from().ok()?.tag();
        let remote_tag = NameAddrTag::of(&call.remote);
        (to_tag == call.local_tag && from_tag == remote_tag.as_deref()).then_some(ck)
    }

    fn on_ack(&mut self, sip: &SipMessage) {
        let Some(ck) = self.find_dialog(sip) else {
            debug!(
                call_id = sip.call_id().unwrap_or(""),
                "ACK for no dialog ignored"
            );
            return;
        };
        let Some(call) = self.calls.get_mut(&ck) else {
            return;
        };
        if call.state == CallState::Answered {
            call.state = CallState::Confirmed;
            call.ok_next = None;
            call.ok_give_up = None;
            // Late offer: the ACK carries the answer (RFC 3264 s5, s13.2.1).
            if call.negotiated.is_none() && !sip.body().is_empty() {
                let prefs = self
                    .cfg
                    .trunks
                    .get(call.routed.trunk_index)
                    .map(|t| t.codec_prefs())
                    .unwrap_or_default();
                match sdp::parse_answer(sip.body()).map(|a| sdp::accept_answer(&a, &prefs)) {
                    Ok(Ok(n)) => {
                        call.negotiated = Some(n);
                        if let Some(spec) = media_spec(&ck, call) {
                            self.out.push_back(Output::MediaStart(spec));
                        }
                    }
                    _ => warn!(call_id = %ck, "unusable SDP answer in ACK"),
                }
            }
            debug!(call_id = %ck, room = %call.routed.dispatch.room, "call confirmed");
        }
    }

    fn on_bye(&mut self, now: Instant, key: TxKey, sip: &SipMessage) {
        let Some(ck) = self.find_dialog(sip) else {
            self.reply(now, &key, sip, 481);
            return;
        };
        self.reply(now, &key, sip, 200);
        // A BYE before the 200 was acknowledged also ends the INVITE's 2xx retransmission.
        self.finish_call(now, &ck, EndReason::CallerHangup);
    }

    fn on_cancel(&mut self, now: Instant, key: TxKey, sip: &SipMessage) {
        // s9.2: the CANCEL matches the INVITE server transaction by branch.
        let invite_key = TxKey::invite_for_cancel(sip);
        let ck = CallKey(sip.call_id().unwrap_or_default().into());
        let matched = invite_key
            .as_ref()
            .is_some_and(|k| self.tx.request(k).is_some());
        if !matched {
            self.reply(now, &key, sip, 481);
            return;
        }
        self.reply(now, &key, sip, 200);
        let Some(invite_key) = invite_key else { return };
        if self.tx.final_status(&invite_key).is_some() {
            return; // already answered: CANCEL has no effect (s9.2)
        }
        let (invite, tag) = match self.calls.get(&ck) {
            Some(c) if c.invite_key == invite_key => (c.invite.clone(), Some(c.local_tag.clone())),
            _ => match self.tx.request(&invite_key) {
                Some(r) => (r.clone(), None),
                None => return,
            },
        };
        self.respond(
            now,
            &invite_key,
            &invite,
            487,
            "Request Terminated",
            "",
            tag.as_deref(),
            None,
        );
        if self.calls.contains_key(&ck) {
            self.finish_call(now, &ck, EndReason::Cancelled);
        }
    }

    fn on_reinvite(&mut self, now: Instant, key: TxKey, sip: &SipMessage) {
        let Some(ck) = self.find_dialog(sip) else {
            self.reply(now, &key, sip, 481);
            return;
        };
        let Some(call) = self.calls.get(&ck) else {
            return;
        };
        let cseq = sip.cseq().map(|c| c.seq).unwrap_or(0);
        if cseq <= call.remote_cseq {
            // s12.2.2: lower CSeq than the last one inside the dialog.
            self.respond(
                now,
                &key,
                sip,
                500,
                "Server Internal Error - CSeq Out Of Order",
                "",
                None,
                None,
            );
            return;
        }
        // Session refresh or hold: answer with our current session, renegotiated
        // against the new offer when there is one.
        let prefs = self
            .cfg
            .trunks
            .get(call.routed.trunk_index)
            .map(|t| t.codec_prefs())
            .unwrap_or_default();
        let local_ip = call.rtp.ip();
        let port = call.rtp.port();
        let tag = call.local_tag.clone();
        let contact = self.contact(&call.peer);
        let body = if sip.body().is_empty() {
            call.negotiated.as_ref().map(|n| n.answer.clone())
        } else {
            let (session_id, version) = call.sdp_session;
            let version = version + 1;
            let parsed = sdp::parse_offer(sip.body());
            match parsed.ok().and_then(|o| {
                sdp::answer(
                    &o,
                    &sdp::AnswerParams {
                        local_ip,
                        rtp_port: port,
                        session_id,
                        session_version: version,
                        prefs: &prefs,
                        user_agent: &self.s.user_agent,
                    },
                )
                .ok()
            }) {
                Some(n) => {
                    let text = n.answer.clone();
                    if let Some(c) = self.calls.get_mut(&ck) {
                        c.negotiated = Some(n);
                        c.sdp_session.1 = version;
                        if c.state != CallState::Ringing {
                            if let Some(spec) = media_spec(&ck, c) {
                                self.out.push_back(Output::MediaStart(spec));
                            }
                        }
                    }
                    Some(text)
                }
                None => {
                    self.reply(now, &key, sip, 488);
                    return;
                }
            }
        };
        if let Some(c) = self.calls.get_mut(&ck) {
            c.remote_cseq = cseq;
        }
        let extra = format!("Contact: {contact}\r\nAllow: {ALLOW}\r\n");
        let body_ref = body.as_deref().map(|b| ("application/sdp", b.as_bytes()));
        self.respond(now, &key, sip, 200, "OK", &extra, Some(&tag), body_ref);
    }

    /// End the call from our side with BYE (s15.1.1).
    fn send_bye(&mut self, now: Instant, ck: &CallKey, reason: EndReason) {
        let Some(call) = self.calls.get_mut(ck) else {
            return;
        };
        if call.state == CallState::Ending {
            return;
        }
        call.state = CallState::Ending;
        call.end_reason = Some(reason);
        call.local_cseq += 1;
        let cseq = call.local_cseq;
        let mut peer = call.peer;
        if peer.transport == Transport::Tcp {
            // Over TCP the INVITE's connection is used while it is open; should it
            // have closed, connect to the remote target (the Contact), which names
            // the caller's listening port, not the ephemeral source port.
            if let Some(addr) = literal_addr(&call.remote_target) {
                peer.remote = addr;
            }
        }
        let from = format!("{};tag={}", call.local_uri, call.local_tag);
        let to = call.remote.clone();
        let ruri = call.remote_target.clone();
        let route_set = call.route_set.clone();
        let call_id = ck.0.clone();
        let branch = format!("z9hG4bK-{}", self.token());
        let local_ip = self.local_ip(&peer);
        let port = if peer.local.port() != 0 {
            peer.local.port()
        } else {
            self.s.sip_port
        };
        let sent_by = match local_ip {
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            IpAddr::V4(v4) => format!("{v4}:{port}"),
        };
        let data = builder::request(&DialogRequest {
            method: Method::Bye,
            request_uri: &ruri,
            via_transport: peer.transport.as_str(),
            via_sent_by: &sent_by,
            branch: &branch,
            from: &from,
            to: &to,
            call_id: &call_id,
            cseq,
            route_set: &route_set,
            contact: "",
            user_agent: &self.s.user_agent,
            extra_headers: "",
            body: None,
        });
        // In-dialog requests follow the flow the INVITE came on (the source
        // address, which is right behind NAT and for trunks that send from their
        // signaling address), not a DNS lookup of the Contact.
        let key = TxKey::client(&branch, Method::Bye);
        self.tx
            .start_client(now, key.clone(), peer, data.clone(), &call_id);
        if let Some(c) = self.calls.get_mut(ck) {
            c.bye_key = Some(key);
        }
        self.send(peer, data);
    }

    /// Release everything a call holds and write its call record.
    fn finish_call(&mut self, now: Instant, ck: &CallKey, reason: EndReason) {
        let Some(call) = self.calls.remove(ck) else {
            return;
        };
        self.rtp_ports.push_back(call.rtp.port());
        let duration = call
            .answered
            .map_or(Duration::ZERO, |a| now.saturating_duration_since(a));
        let reason = call.end_reason.unwrap_or(reason);
        let codec = call
            .negotiated
            .as_ref()
            .map(|n| n.codec.name())
            .unwrap_or("none");
        *self.stats.ended.entry(reason.as_str()).or_default() += 1;
        let record = CallRecord {
            call_id: ck.0.to_string(),
            trunk: call.routed.trunk_id,
            rule: call.routed.dispatch.rule_id.clone(),
            room: call.routed.dispatch.room.clone(),
            shard: self.s.shard,
            caller: call.routed.caller,
            callee: call.routed.callee,
            duration_ms: duration.as_millis() as u64,
            setup_ms: call.answered.map_or(0, |a| {
                a.saturating_duration_since(call.created).as_millis() as u64
            }),
            codec,
            hangup_by: reason.by(),
            reason: reason.as_str(),
        };
        self.out.push_back(Output::MediaClose {
            call: ck.clone(),
            record,
        });
    }

    // ----- shutdown ----------------------------------------------------------

    /// SIGINT/SIGTERM: refuse new calls with 503 + Retry-After, end the ringing
    /// ones with 503 and the answered ones with BYE.
    pub fn begin_shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let keys: Vec<CallKey> = self.calls.keys().cloned().collect();
        info!(
            shard = self.s.shard,
            calls = keys.len(),
            "shutting down: ending calls"
        );
        for ck in keys {
            let Some(call) = self.calls.get(&ck) else {
                continue;
            };
            match call.state {
                CallState::Ringing => {
                    let (k, inv, tag) = (
                        call.invite_key.clone(),
                        call.invite.clone(),
                        call.local_tag.clone(),
                    );
                    self.respond(
                        now,
                        &k,
                        &inv,
                        503,
                        "Service Unavailable",
                        "Retry-After: 30\r\n",
                        Some(&tag),
                        None,
                    );
                    self.finish_call(now, &ck, EndReason::ShutdownBeforeAnswer);
                }
                CallState::Answered | CallState::Confirmed => {
                    self.send_bye(now, &ck, EndReason::Shutdown)
                }
                CallState::Ending => {}
            }
        }
    }

    /// Shutdown begun and every call ended (BYEs answered or timed out).
    pub fn is_drained(&self) -> bool {
        self.shutting_down && self.calls.is_empty() && self.tx.client_pending() == 0
    }

    /// A DTMF digit from the caller (RFC 4733, via the media engine). Used for
    /// the dispatch rule's PIN; `#` ends an entry early.
    pub fn handle_dtmf(&mut self, now: Instant, call: &CallKey, digit: char) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let Some(pin) = c.pin.as_mut() else { return };
        if digit != '#' {
            pin.entered.push(digit);
        }
        if digit != '#' && pin.entered.len() < pin.expected.len() {
            return;
        }
        if pin.entered == pin.expected {
            c.pin = None;
            info!(call_id = %call, room = %c.routed.dispatch.room, "PIN accepted; joining the room");
            if c.state != CallState::Ringing {
                if let Some(spec) = media_spec(call, c) {
                    self.out.push_back(Output::MediaStart(spec));
                }
            }
            return;
        }
        pin.attempts += 1;
        pin.entered.clear();
        warn!(call_id = %call, room = %c.routed.dispatch.room, attempts = pin.attempts, "wrong PIN");
        if pin.attempts >= PIN_ATTEMPTS {
            self.send_bye(now, call, EndReason::WrongPin);
        }
    }

    /// No RTP from the caller for the media timeout: end the call with BYE.
    pub fn handle_media_timeout(&mut self, now: Instant, call: &CallKey) {
        if let Some(c) = self.calls.get(call) {
            warn!(call_id = %call, room = %c.routed.dispatch.room, "media timeout: no RTP from the caller");
            self.send_bye(now, call, EndReason::MediaTimeout);
        }
    }

    /// The room side ended the call (its participant was removed, or its
    /// room deleted): BYE, as livekit-sip does when the SIP participant
    /// leaves. A call not yet answered is not in a room, so never asked.
    pub fn hang_up(&mut self, now: Instant, call: &CallKey, reason: EndReason) {
        if let Some(c) = self.calls.get(call) {
            info!(call_id = %call, room = %c.routed.dispatch.room, reason = reason.as_str(), "hanging up from the room side");
            self.send_bye(now, call, reason);
        }
    }

    /// The driver could not bind the call's RTP port: end the call.
    pub fn handle_media_failed(&mut self, now: Instant, call: &CallKey) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        warn!(call_id = %call, room = %c.routed.dispatch.room, "RTP port could not be bound");
        match c.state {
            CallState::Ringing
                if c.port_retries < MAX_PORT_RETRIES && !self.rtp_ports.is_empty() =>
            {
                // Not answered yet: take another port of the slice and redo the
                // SDP answer with it. The failed port goes to the back of the pool
                // (whoever holds it may let go).
                let Some(port) = self.rtp_ports.pop_front() else {
                    return;
                };
                let Some(c) = self.calls.get_mut(call) else {
                    return;
                };
                self.rtp_ports.push_back(c.rtp.port());
                c.port_retries += 1;
                c.rtp = SocketAddr::new(c.rtp.ip(), port);
                if c.negotiated.is_some() {
                    let prefs = self
                        .cfg
                        .trunks
                        .get(c.routed.trunk_index)
                        .map(|t| t.codec_prefs())
                        .unwrap_or_default();
                    let (session_id, version) = c.sdp_session;
                    let params = sdp::AnswerParams {
                        local_ip: c.rtp.ip(),
                        rtp_port: port,
                        session_id,
                        session_version: version,
                        prefs: &prefs,
                        user_agent: &self.s.user_agent,
                    };
                    // The offer parsed and matched once already; it still does.
                    if let Ok(n) = sdp::parse_offer(c.invite.body())
                        .map_err(|_| ())
                        .and_then(|o| sdp::answer(&o, &params).map_err(|_| ()))
                    {
                        c.negotiated = Some(n);
                    }
                }
                self.out.push_back(Output::MediaOpen {
                    call: call.clone(),
                    local: SocketAddr::new(rtp_bind_ip(&c.peer), port),
                });
            }
            CallState::Ringing => {
                let (k, inv, tag) = (c.invite_key.clone(), c.invite.clone(), c.local_tag.clone());
                self.respond(
                    now,
                    &k,
                    &inv,
                    503,
                    "Service Unavailable",
                    "Retry-After: 5\r\n",
                    Some(&tag),
                    None,
                );
                self.finish_call(now, call, EndReason::MediaFailed);
            }
            CallState::Answered | CallState::Confirmed => {
                self.send_bye(now, call, EndReason::MediaFailed)
            }
            CallState::Ending => {}
        }
    }
}

/// The media description of an answered call; `None` until an SDP answer exists
/// (late offer before its ACK).
fn media_spec(ck: &CallKey, call: &Call) -> Option<MediaSpec> {
    let n = call.negotiated.as_ref()?;
    // Until the PIN is right the caller hears no one and no one hears it.
    let room = match call.pin {
        Some(_) => format!("{PIN_ROOM_PREFIX}{ck}"),
        None => call.routed.dispatch.room.clone(),
    };
    Some(MediaSpec {
        call: ck.clone(),
        room,
        local: call.rtp,
        remote: n.remote_rtp,
        codec: n.codec,
        payload_type: n.payload_type,
        telephone_event: n.telephone_event,
        ptime_ms: n.ptime_ms,
        direction: n.direction,
        caller: call.routed.caller.clone(),
        callee: call.routed.callee.clone(),
        trunk_id: call.routed.trunk_id.clone(),
        rule_id: call.routed.dispatch.rule_id.clone(),
    })
}

/// The address to bind a call's RTP socket on: the address its SIP arrived on,
/// or every address when the SIP socket is bound to the wildcard.
fn rtp_bind_ip(peer: &Peer) -> IpAddr {
    if peer.local.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        peer.local.ip()
    }
}

/// The socket address of a SIP URI whose host is an IP literal (no DNS here).
fn literal_addr(uri: &str) -> Option<SocketAddr> {
    let u = SipUri::parse(uri)?;
    let host = u.host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
}

/// Extracts the tag of a stored From value.
struct NameAddrTag;
impl NameAddrTag {
    fn of(value: &str) -> Option<String> {
        super::message::NameAddr::parse(value)
            .and_then(|n| n.tag())
            .map(str::to_string)
    }
}

/// Option-tags in Require we do not support (s8.2.2.3). We support none.
fn unsupported_require(sip: &SipMessage) -> Option<String> {
    if matches!(sip.method(), Some(Method::Ack) | Some(Method::Cancel)) {
        return None;
    }
    let tags: Vec<&str> = sip.header_values(HeaderName::Require).collect();
    (!tags.is_empty()).then(|| tags.join(", "))
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        200 => "OK",
        403 => "Forbidden",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        _ => "",
    }
}

/// Reason phrases cannot carry CR/LF (s25.1).
fn sanitize_reason(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(120).collect()
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
