//! The media engine of one shard: the calls' RTP sessions and the rooms that mix
//! them, between the RTP sockets and the SIP core.
//!
//! Where it sits in the data flow:
//!
//! ```text
//! SIP core: MediaOpen (SDP negotiated) --> MediaEngine::add_call(CallMedia)
//! RTP socket --datagram + kernel rx time--> MediaEngine::handle_packet
//!     --> session::RtpSession (latch, stats, DTMF, RTCP) --> room::Room jitter buffer
//! MediaEngine::handle_timeout every 20 ms (per room phase):
//!     Room::mix (decode, conceal, mix-minus) --> RtpSession::send_frame --> Transmit
//!     RTCP SR/RR due --> Transmit(rtcp); media timeout --> Event(MediaTimeout)
//! MediaEngine::poll_output --> Transmit | Event(Dtmf, MediaTimeout, RoomEnded) | Idle(deadline)
//! SIP core: BYE / MediaClose --> MediaEngine::remove_call --> CallMediaReport (call record)
//! ```
//!
//! What it owns: every call's [`session::RtpSession`], every room of the shard
//! ([`room::Room`]), the output queue, and the shard's media counters and jitter
//! histogram ([`ShardMediaStats`]).
//!
//! Sans-IO, like str0m's `Rtc`: it never reads the clock, sleeps or touches a
//! socket. The poll contract: feed input ([`MediaEngine::add_call`],
//! [`MediaEngine::handle_packet`], [`MediaEngine::send_dtmf`],
//! [`MediaEngine::handle_timeout`] once the deadline passed), then drain
//! [`MediaEngine::poll_output`] until it returns [`MediaOutput::Idle`] with the
//! next deadline, before feeding more.
//!
//! Allocation: none per packet except the `CallKey` clone in each
//! [`MediaOutput::Transmit`] (a `String` today; see the note there). Packet
//! bytes, in and out, are cut from arenas (`BytesMut` chunks of
//! [`ARENA_CHUNK`] bytes split into `Bytes`): one allocation per ~190 packets,
//! reclaimed in place once the driver and the jitter buffers dropped them.

pub mod room;
pub mod session;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::codec::g711::{Compander, Law};
use crate::codec::opus::{OpusEncoder, MAX_ENCODED_BYTES, RTP_TICKS_PER_FRAME};
use crate::rtp::stats::JITTER_HISTOGRAM_MAX_US;
use crate::rtp::NtpTime;

pub use room::ParticipantKind;
use room::{Decoder, ParticipantId, Room};
use session::{Inbound, RtpSession, SessionConfig, StreamSeed};

/// Default media timeout: no RTP from the caller for this long ends the call.
pub const DEFAULT_MEDIA_TIMEOUT: Duration = Duration::from_secs(30);
/// The media timeout while a call is on hold (`rtp.hold_timeout_secs`).
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bytes per arena chunk (in and out): about 190 outgoing G.711 packets.
pub const ARENA_CHUNK: usize = 32 * 1024;

/// Identifies a call on its owner shard (the SIP core's key; unified later).
/// Every packet the engine sends is tagged with it: an `Arc<str>` makes that a
/// refcount increment, not an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(pub Arc<str>);

impl fmt::Display for CallKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The negotiated audio codec of a call leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    pub const fn law(self) -> Law {
        match self {
            Codec::Pcmu => Law::Pcmu,
            Codec::Pcma => Law::Pcma,
        }
    }

    pub const fn name(self) -> &'static str {
        self.law().encoding_name()
    }
}

/// What the SIP core knows of a call's media once SDP is negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallMedia {
    pub call: CallKey,
    pub room: String,
    /// Our RTP address (the socket the driver reads for this call).
    pub local: SocketAddr,
    /// The caller's RTP address from its SDP (c= and m=).
    pub remote: SocketAddr,
    pub codec: Codec,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    /// The caller's `a=ptime`; we mix and send 20 ms frames (see `session::FRAME`).
    pub ptime_ms: u16,
    /// The negotiated direction, ours (RFC 3264 s6.1): may we send the mix, and
    /// do we expect the caller's RTP. A caller who puts us on hold offers
    /// `sendonly` (we answer `recvonly`: no mix is sent, its music on hold is
    /// received) or `inactive` (neither; the media timeout is not armed).
    pub send: bool,
    pub receive: bool,
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaOutput {
    /// Send `data` from the call's RTP socket (or its RTCP socket, RTP + 1).
    ///
    /// `call` is cloned per packet (a refcount: `CallKey` is an `Arc<str>`).
    Transmit {
        call: CallKey,
        dst: SocketAddr,
        data: Bytes,
        rtcp: bool,
    },
    Event(MediaEvent),
    /// Nothing more until this deadline (`None`: until new input).
    Idle(Option<Instant>),
}

/// What the SIP core and the room's other participants hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// A digit the caller pressed (RFC 4733), once per key press.
    Dtmf {
        call: CallKey,
        room: String,
        digit: char,
        duration_ms: u32,
    },
    /// No RTP from the caller for the media timeout: hang up (BYE), reason
    /// `media-timeout`. Emitted once per call.
    MediaTimeout { call: CallKey },
    /// The last participant left.
    RoomEnded { room: String },
    /// Who speaks in `room` changed: everyone speaking, with its level in
    /// 1/1000 of full scale (RMS). Checked every 500 ms.
    Speakers {
        room: String,
        levels: Vec<(room::ParticipantKind, u16)>,
    },
    /// One 20 ms frame of a published caller's voice, Opus at 8 kHz
    /// (`codec::opus`), for the WebRTC subscribers of the caller's track.
    /// Silence is encoded too: the stream never pauses while published.
    Published {
        call: CallKey,
        payload: Bytes,
        /// RTP timestamp, 48 kHz (RFC 7587 s4.1), 960 per frame.
        rtp_timestamp: u32,
    },
}

/// A call's media figures for its call record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallMediaReport {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Expected minus received (RFC 3550 A.3), duplicates not counted as received.
    pub lost: i64,
    pub reordered: u64,
    pub duplicates: u64,
    /// Packets from addresses other than the latched one.
    pub foreign_dropped: u64,
    pub malformed: u64,
    pub jitter_p50_us: u64,
    pub jitter_p99_us: u64,
    pub jitter_max_us: u64,
    pub dtmf_digits: u64,
    /// From the caller's receiver reports about our stream (RFC 3550 s6.4.1).
    pub rtt_ms: Option<u32>,
    /// Frames the mixer concealed for this caller (late or lost).
    pub concealed_frames: u64,
    pub codec: Codec,
    /// The caller's RTP source address, if any packet came.
    pub latched: Option<SocketAddr>,
    /// The call ended (or is ending) for a media timeout.
    pub media_timeout: bool,
}

/// The shard's media counters, for Prometheus. Counters are totals since the
/// engine started; `lost` is folded in at each RTCP report and at hangup.
#[derive(Clone, Debug)]
pub struct ShardMediaStats {
    pub shard: usize,
    pub calls_active: usize,
    pub calls_total: u64,
    pub rooms_active: usize,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub rtcp_in: u64,
    pub rtcp_out: u64,
    pub lost: i64,
    pub foreign_dropped: u64,
    pub malformed: u64,
    /// Packets for a call the engine does not know (raced a hangup).
    pub unknown_call: u64,
    pub media_timeouts: u64,
    pub dtmf_in: u64,
    pub dtmf_out: u64,
    /// Mix ticks dropped because the driver fell behind.
    pub skipped_ticks: u64,
    /// Interarrival jitter estimates (µs) of every accepted packet of every call.
    pub jitter_us: Histogram<u64>,
}

impl ShardMediaStats {
    fn new(shard: usize) -> ShardMediaStats {
        ShardMediaStats {
            shard,
            calls_active: 0,
            calls_total: 0,
            rooms_active: 0,
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
            rtcp_in: 0,
            rtcp_out: 0,
            lost: 0,
            foreign_dropped: 0,
            malformed: 0,
            unknown_call: 0,
            media_timeouts: 0,
            dtmf_in: 0,
            dtmf_out: 0,
            skipped_ticks: 0,
            jitter_us: Histogram::new_with_bounds(1, JITTER_HISTOGRAM_MAX_US, 2)
                .expect("constant bounds are valid: 1 <= low, high >= 2 * low, sigfig <= 5"),
        }
    }
}

/// The output queue and the arena outgoing packets are written into.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<MediaOutput>,
    arena: BytesMut,
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            queue: VecDeque::with_capacity(64),
            arena: BytesMut::with_capacity(ARENA_CHUNK),
        }
    }

    /// Write one packet of at most `max_len` bytes with `write` (which returns
    /// the length written, or `None` to send nothing) and queue it. Returns the
    /// length queued.
    pub fn transmit(
        &mut self,
        call: &CallKey,
        dst: SocketAddr,
        rtcp: bool,
        max_len: usize,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        let data = cut(&mut self.arena, max_len, write)?;
        let n = data.len();
        self.queue.push_back(MediaOutput::Transmit {
            call: call.clone(),
            dst,
            data,
            rtcp,
        });
        Some(n)
    }

    fn event(&mut self, ev: MediaEvent) {
        self.queue.push_back(MediaOutput::Event(ev));
    }
}

/// Cut a `Bytes` of up to `max_len` bytes, filled by `write`, from `arena`.
/// When the arena's chunk is used up, `reserve` reclaims it in place if every
/// earlier cut was dropped, else starts a new chunk.
fn cut(
    arena: &mut BytesMut,
    max_len: usize,
    write: impl FnOnce(&mut [u8]) -> Option<usize>,
) -> Option<Bytes> {
    debug_assert!(arena.is_empty(), "every cut is split off whole");
    if arena.capacity() < max_len {
        arena.reserve(ARENA_CHUNK.max(max_len));
    }
    arena.resize(max_len, 0);
    match write(&mut arena[..]) {
        Some(n) if n <= max_len => {
            arena.truncate(n);
            Some(arena.split().freeze())
        }
        _ => {
            arena.clear();
            None
        }
    }
}

struct Call {
    session: RtpSession,
    room: String,
    participant: ParticipantId,
    /// The deadline of this call's live entry in `MediaEngine::timers`.
    scheduled: Instant,
    /// Set while WebRTC participants subscribe to the caller's track.
    publisher: Option<Box<Publisher>>,
}

/// A caller's published track: its voice Opus-encoded once per tick, for all
/// of its subscribers (they share the packet).
struct Publisher {
    encoder: OpusEncoder,
    rtp_timestamp: u32,
}

/// A WebRTC participant's audio track seated in a room's mix.
struct TrackIn {
    room: Arc<str>,
    participant: ParticipantId,
}

/// What a timer entry is for. Entries are never removed from the heap; one is
/// *live* only while it matches its owner's current deadline (a room's next
/// tick, a call's `scheduled`), and stale ones are dropped when they surface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Room(Arc<str>),
    Call(CallKey),
}

type Timers = BinaryHeap<Reverse<(Instant, Due)>>;

/// One shard's RTP sessions and rooms. See the module doc for the poll contract.
pub struct MediaEngine {
    shard: usize,
    media_timeout: Duration,
    hold_timeout: Duration,
    rng: SmallRng,
    /// A moment on the monotonic clock and the wall clock (since the Unix
    /// epoch) at the same instant, for the NTP time of sender reports.
    wallclock: Option<(Instant, Duration)>,
    calls: HashMap<CallKey, Call>,
    rooms: HashMap<Arc<str>, Room>,
    /// WebRTC audio tracks mixed for the callers, by track sid.
    tracks: HashMap<Arc<str>, TrackIn>,
    /// Every room's next tick and every call's next timer, earliest first, so
    /// a wake costs O(log n) per thing due instead of a visit of every room and
    /// call (measured: `bench/media.rs` `idle_wake`).
    timers: Timers,
    out: Outbox,
    /// Arena incoming payloads are copied into for the jitter buffers.
    in_arena: BytesMut,
    stats: ShardMediaStats,
}

impl fmt::Debug for MediaEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaEngine")
            .field("shard", &self.shard)
            .field("calls", &self.calls.len())
            .field("rooms", &self.rooms.len())
            .field("queued", &self.out.queue.len())
            .finish_non_exhaustive()
    }
}

impl MediaEngine {
    /// The shard's engine; SSRCs and initial sequence numbers and timestamps
    /// are drawn from the OS's randomness (RFC 3550 s5.1, s8.1).
    pub fn new(shard: usize, media_timeout: Duration) -> Self {
        Self::with_seed(shard, media_timeout, rand::random())
    }

    /// The media timeout of held calls ([`DEFAULT_HOLD_TIMEOUT`] unless set),
    /// for calls added from now on.
    pub fn set_hold_timeout(&mut self, hold_timeout: Duration) {
        self.hold_timeout = hold_timeout;
    }

    /// Like [`new`](Self::new) with a fixed seed: reproducible SSRCs for tests.
    pub fn with_seed(shard: usize, media_timeout: Duration, seed: u64) -> Self {
        MediaEngine {
            shard,
            media_timeout,
            hold_timeout: DEFAULT_HOLD_TIMEOUT,
            rng: SmallRng::seed_from_u64(seed),
            wallclock: None,
            calls: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            timers: BinaryHeap::new(),
            out: Outbox::new(),
            in_arena: BytesMut::with_capacity(ARENA_CHUNK),
            stats: ShardMediaStats::new(shard),
        }
    }

    /// Tell the engine the wall-clock time (since the Unix epoch) at `now`, for
    /// the NTP timestamps of our sender reports. Without it, SRs count from an
    /// arbitrary origin, which still gives the peer a correct round-trip time.
    pub fn set_wallclock(&mut self, now: Instant, since_unix_epoch: Duration) {
        self.wallclock = Some((now, since_unix_epoch));
    }

    fn ntp_at(&mut self, now: Instant) -> NtpTime {
        let (at, unix) = *self.wallclock.get_or_insert((now, Duration::ZERO));
        match now.checked_duration_since(at) {
            Some(d) => NtpTime::from_unix(unix + d),
            None => NtpTime::from_unix(unix.saturating_sub(at - now)),
        }
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// A call's media is negotiated: open its session and seat it in its room
    /// (created if this is the room's first participant). Called again for the
    /// same call (a re-INVITE), it updates the session in place.
    pub fn add_call(&mut self, now: Instant, m: CallMedia) {
        let cfg = SessionConfig {
            codec: m.codec,
            payload_type: m.payload_type,
            telephone_event: m.telephone_event,
            remote: m.remote,
            media_timeout: self.media_timeout,
            hold_timeout: self.hold_timeout,
            send: m.send,
            receive: m.receive,
        };
        let decoder = Decoder::G711(Compander::new(m.codec.law()));
        if let Some(c) = self.calls.get_mut(&m.call) {
            c.session.renegotiate(now, cfg);
            Self::schedule_if_earlier(&mut self.timers, &m.call, c);
            if c.room == m.room {
                if let Some(r) = self.rooms.get_mut(c.room.as_str()) {
                    r.set_decoder(c.participant, decoder);
                }
                return;
            }
            // Moved to another room: leave the old one first.
            let (old_room, old_id) = (std::mem::take(&mut c.room), c.participant);
            Self::leave_room(
                &mut self.rooms,
                &mut self.out,
                &mut self.stats,
                &old_room,
                old_id,
            );
            let id = Self::join_room(
                &mut self.rooms,
                &mut self.timers,
                &mut self.stats,
                now,
                &m,
                decoder,
            );
            let c = self
                .calls
                .get_mut(&m.call)
                .expect("the call was found above and nothing removed it");
            c.room = m.room;
            c.participant = id;
            return;
        }
        let seed = StreamSeed {
            ssrc: self.rng.gen(),
            sequence: self.rng.gen(),
            timestamp: self.rng.gen(),
        };
        let cname = format!("switchboard-{}-{:08x}", self.shard, seed.ssrc);
        let ntp = self.ntp_at(now);
        let session = RtpSession::new(now, ntp, m.call.clone(), cfg, seed, &cname);
        let participant = Self::join_room(
            &mut self.rooms,
            &mut self.timers,
            &mut self.stats,
            now,
            &m,
            decoder,
        );
        self.stats.calls_active += 1;
        self.stats.calls_total += 1;
        let scheduled = session.poll_timeout();
        self.timers
            .push(Reverse((scheduled, Due::Call(m.call.clone()))));
        self.calls.insert(
            m.call,
            Call {
                session,
                room: m.room,
                participant,
                scheduled,
                publisher: None,
            },
        );
    }

    /// After something that may have brought a call's next timer forward (a
    /// packet, a renegotiation): give it a live entry at the new deadline. A
    /// deadline that moved later keeps its entry, which surfaces early and is
    /// rescheduled then.
    fn schedule_if_earlier(timers: &mut Timers, key: &CallKey, c: &mut Call) {
        let t = c.session.poll_timeout();
        if t < c.scheduled {
            c.scheduled = t;
            timers.push(Reverse((t, Due::Call(key.clone()))));
        }
    }

    /// Encode one tick of a published caller (silence when it said nothing)
    /// and queue it as [`MediaEvent::Published`].
    fn publish(
        out: &mut Outbox,
        call: &CallKey,
        p: &mut Publisher,
        spoken: Option<&[i16; crate::codec::g711::FRAME_SAMPLES]>,
    ) {
        const SILENCE: [i16; crate::codec::g711::FRAME_SAMPLES] =
            [0; crate::codec::g711::FRAME_SAMPLES];
        let pcm = spoken.unwrap_or(&SILENCE);
        let ts = p.rtp_timestamp;
        p.rtp_timestamp = ts.wrapping_add(RTP_TICKS_PER_FRAME);
        if let Some(payload) = cut(&mut out.arena, MAX_ENCODED_BYTES, |b| {
            p.encoder.encode(pcm, b).ok()
        }) {
            out.event(MediaEvent::Published {
                call: call.clone(),
                payload,
                rtp_timestamp: ts,
            });
        }
    }

    /// The key presses the call's session has finished, as events.
    fn report_digits(stats: &mut ShardMediaStats, out: &mut Outbox, key: &CallKey, c: &mut Call) {
        while let Some(ev) = c.session.poll_dtmf() {
            stats.dtmf_in += 1;
            out.event(MediaEvent::Dtmf {
                call: key.clone(),
                room: c.room.clone(),
                digit: ev.digit,
                duration_ms: ev.duration_ms,
            });
        }
    }

    /// Drop stale entries off the top (so `next_deadline` is a real one), and
    /// rebuild the heap if stale entries pile up (many calls ended or moved
    /// their deadlines earlier since they surfaced): memory stays O(rooms + calls).
    fn prune_timers(&mut self) {
        while let Some(Reverse((at, due))) = self.timers.peek() {
            let live = match due {
                Due::Room(name) => self.rooms.get(name).is_some_and(|r| r.next_tick() == *at),
                Due::Call(key) => self.calls.get(key).is_some_and(|c| c.scheduled == *at),
            };
            if live {
                break;
            }
            self.timers.pop();
        }
        if self.timers.len() > 4 * (self.rooms.len() + self.calls.len()) + 64 {
            self.timers.clear();
            for (name, r) in &self.rooms {
                self.timers
                    .push(Reverse((r.next_tick(), Due::Room(Arc::clone(name)))));
            }
            for (key, c) in &self.calls {
                self.timers
                    .push(Reverse((c.scheduled, Due::Call(key.clone()))));
            }
        }
    }

    fn join_room(
        rooms: &mut HashMap<Arc<str>, Room>,
        timers: &mut Timers,
        stats: &mut ShardMediaStats,
        now: Instant,
        m: &CallMedia,
        decoder: Decoder,
    ) -> ParticipantId {
        let kind = ParticipantKind::Sip(m.call.clone());
        Self::seat(rooms, timers, stats, now, &m.room, kind, decoder)
    }

    /// Seat a participant in room `name`, creating the room (and its first
    /// tick) if it is the first.
    fn seat(
        rooms: &mut HashMap<Arc<str>, Room>,
        timers: &mut Timers,
        stats: &mut ShardMediaStats,
        now: Instant,
        name: &str,
        kind: ParticipantKind,
        decoder: Decoder,
    ) -> ParticipantId {
        let room = match rooms.get_mut(name) {
            Some(r) => r,
            None => {
                stats.rooms_active += 1;
                let key: Arc<str> = name.into();
                let room = Room::new(name.to_owned(), now);
                timers.push(Reverse((room.next_tick(), Due::Room(Arc::clone(&key)))));
                rooms.entry(key).or_insert(room)
            }
        };
        room.join(kind, decoder)
    }

    /// A WebRTC participant published audio track `track` in `room`: from now
    /// on its packets ([`handle_track_packet`](Self::handle_track_packet))
    /// are decoded into the callers' mix. False if libopus made no decoder
    /// or the track is already seated.
    pub fn add_track(&mut self, now: Instant, room: &str, track: &str) -> bool {
        if self.tracks.contains_key(track) {
            return false;
        }
        let Some(decoder) = Decoder::opus() else {
            return false;
        };
        let key: Arc<str> = track.into();
        let kind = ParticipantKind::Track(Arc::clone(&key));
        let participant = Self::seat(
            &mut self.rooms,
            &mut self.timers,
            &mut self.stats,
            now,
            room,
            kind,
            decoder,
        );
        self.tracks.insert(
            key,
            TrackIn {
                room: room.into(),
                participant,
            },
        );
        true
    }

    /// The track was unpublished (or its participant left).
    pub fn remove_track(&mut self, track: &str) {
        if let Some(t) = self.tracks.remove(track) {
            Self::leave_room(
                &mut self.rooms,
                &mut self.out,
                &mut self.stats,
                &t.room,
                t.participant,
            );
            self.prune_timers();
        }
    }

    /// One Opus packet of a seated track (RTP sequence and 48 kHz timestamp
    /// as received).
    pub fn handle_track_packet(
        &mut self,
        track: &str,
        sequence: u16,
        rtp_timestamp: u32,
        arrival: Instant,
        payload: &[u8],
    ) {
        let Some(t) = self.tracks.get(track) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&t.room) else {
            return;
        };
        if let Some(payload) = cut(&mut self.in_arena, payload.len(), |b| {
            b.copy_from_slice(payload);
            Some(payload.len())
        }) {
            room.push(t.participant, sequence, rtp_timestamp, arrival, payload);
        }
    }

    /// Start or stop publishing the caller's voice as Opus
    /// ([`MediaEvent::Published`] every tick). Starting costs one Opus
    /// encoder; false if the call is unknown or libopus refused.
    pub fn set_published(&mut self, call: &CallKey, on: bool) -> bool {
        let Some(c) = self.calls.get_mut(call) else {
            return false;
        };
        if !on {
            c.publisher = None;
            return true;
        }
        if c.publisher.is_none() {
            let Ok(encoder) = OpusEncoder::new() else {
                return false;
            };
            c.publisher = Some(Box::new(Publisher {
                encoder,
                rtp_timestamp: self.rng.gen(),
            }));
        }
        true
    }

    /// Remove a participant; end the room if it was the last. Returns the
    /// frames concealed for it.
    fn leave_room(
        rooms: &mut HashMap<Arc<str>, Room>,
        out: &mut Outbox,
        stats: &mut ShardMediaStats,
        name: &str,
        id: ParticipantId,
    ) -> u64 {
        let Some(room) = rooms.get_mut(name) else {
            return 0;
        };
        let concealed = room.leave(id).map_or(0, |s| s.concealed);
        if room.is_empty() {
            if let Some(r) = rooms.remove(name) {
                stats.rooms_active -= 1;
                stats.skipped_ticks += r.skipped_ticks();
                out.event(MediaEvent::RoomEnded {
                    room: r.name().to_owned(),
                });
            }
        }
        concealed
    }

    /// The call hung up: send our RTCP BYE, take it out of its room (ending the
    /// room if it was the last) and return its figures for the call record.
    pub fn remove_call(&mut self, now: Instant, call: &CallKey) -> Option<CallMediaReport> {
        let mut c = self.calls.remove(call)?;
        let rtcp_before = c.session.counters().rtcp_out;
        c.session.send_bye(now, &mut self.out);
        self.stats.rtcp_out += c.session.counters().rtcp_out - rtcp_before;
        let concealed = Self::leave_room(
            &mut self.rooms,
            &mut self.out,
            &mut self.stats,
            &c.room,
            c.participant,
        );
        self.stats.calls_active -= 1;
        self.stats.lost += c.session.take_lost_delta();
        self.prune_timers();
        Some(c.session.report(concealed))
    }

    /// The live figures of a call (the same as [`remove_call`](Self::remove_call) returns).
    pub fn call_report(&self, call: &CallKey) -> Option<CallMediaReport> {
        let c = self.calls.get(call)?;
        let concealed = self
            .rooms
            .get(c.room.as_str())
            .and_then(|r| r.participant_stats(c.participant))
            .map_or(0, |s| s.concealed);
        Some(c.session.report(concealed))
    }

    /// One received datagram on the call's RTP port (or RTCP port = RTP+1,
    /// `rtcp`), with its kernel receive time converted by the driver to an
    /// `Instant` (`arrival`; pass `now` if the socket gave none).
    pub fn handle_packet(
        &mut self,
        now: Instant,
        call: &CallKey,
        src: SocketAddr,
        arrival: Instant,
        data: &[u8],
        rtcp: bool,
    ) {
        let Some(c) = self.calls.get_mut(call) else {
            self.stats.unknown_call += 1;
            return;
        };
        let before = c.session.counters();
        let inbound = c.session.on_rtp(now, src, arrival, data, rtcp);
        let after = c.session.counters();
        self.stats.foreign_dropped += after.foreign_dropped - before.foreign_dropped;
        self.stats.malformed += after.malformed - before.malformed;
        self.stats.rtcp_in += after.rtcp_in - before.rtcp_in;
        let jitter = match &inbound {
            Inbound::Audio { jitter_us, .. } | Inbound::Event { jitter_us } => {
                self.stats.packets_in += 1;
                self.stats.bytes_in += data.len() as u64;
                *jitter_us
            }
            Inbound::Rtcp | Inbound::Dropped(_) => None,
        };
        if let Some(j) = jitter {
            self.stats
                .jitter_us
                .saturating_record(j.min(JITTER_HISTOGRAM_MAX_US));
        }
        match inbound {
            Inbound::Audio {
                sequence,
                timestamp,
                payload,
                new_stream,
                ..
            } => {
                let Some(room) = self.rooms.get_mut(c.room.as_str()) else {
                    return;
                };
                if new_stream {
                    room.reset_stream(c.participant);
                }
                let bytes = data.get(payload).unwrap_or_default();
                if let Some(payload) = cut(&mut self.in_arena, bytes.len(), |b| {
                    b.copy_from_slice(bytes);
                    Some(bytes.len())
                }) {
                    room.push(c.participant, sequence, timestamp, arrival, payload);
                }
            }
            Inbound::Event { .. } => {
                // A key press now being tracked has an end timer.
                Self::schedule_if_earlier(&mut self.timers, call, c);
                Self::report_digits(&mut self.stats, &mut self.out, call, c);
            }
            Inbound::Rtcp | Inbound::Dropped(_) => {}
        }
    }

    /// Play `digit` to the caller (RFC 4733) for `duration_ms`, replacing its
    /// voice frames meanwhile; digits sent while one plays are queued and
    /// follow one by one, [`session::DTMF_GAP_FRAMES`] of voice apart. False
    /// if the call is unknown, has no telephone-event, the digit is not DTMF,
    /// or [`session::DTMF_QUEUE`] digits already wait.
    pub fn send_dtmf(
        &mut self,
        _now: Instant,
        call: &CallKey,
        digit: char,
        duration_ms: u32,
    ) -> bool {
        let Some(c) = self.calls.get_mut(call) else {
            return false;
        };
        let ok = c
            .session
            .send_dtmf(digit, Duration::from_millis(u64::from(duration_ms)));
        if ok {
            self.stats.dtmf_out += 1;
        }
        ok
    }

    /// Run what is due at `now`: mix ticks (each room on its own 20 ms phase),
    /// RTCP reports, DTMF end timeouts, media timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, due))) = self.timers.pop() else {
                break;
            };
            match due {
                Due::Room(name) => {
                    let Some(room) = self.rooms.get_mut(&name) else {
                        continue; // ended
                    };
                    if room.next_tick() != at {
                        continue; // stale: a recreated room of the same name
                    }
                    while let Some(tick) = room.due(now) {
                        room.mix(tick);
                        for (id, kind, pcm) in room.mixed() {
                            match kind {
                                ParticipantKind::Sip(call) => {
                                    if let Some(c) = self.calls.get_mut(call) {
                                        let before = c.session.counters();
                                        c.session.send_frame(tick, pcm, &mut self.out);
                                        let after = c.session.counters();
                                        self.stats.packets_out +=
                                            after.packets_out - before.packets_out;
                                        self.stats.bytes_out += after.bytes_out - before.bytes_out;
                                        if let Some(p) = &mut c.publisher {
                                            Self::publish(&mut self.out, call, p, room.spoken(id));
                                        }
                                    }
                                }
                                // A track hears nothing here: its subscribers
                                // get the other tracks forwarded (SFU).
                                ParticipantKind::Track(_) => {}
                            }
                        }
                        if let Some(levels) = room.take_levels() {
                            self.out.event(MediaEvent::Speakers {
                                room: room.name().to_owned(),
                                levels,
                            });
                        }
                    }
                    self.timers
                        .push(Reverse((room.next_tick(), Due::Room(name))));
                }
                Due::Call(key) => {
                    let Some(c) = self.calls.get_mut(&key) else {
                        continue; // hung up
                    };
                    if c.scheduled != at {
                        continue; // superseded by an earlier entry
                    }
                    if now >= c.session.poll_timeout() {
                        let rtcp_before = c.session.counters().rtcp_out;
                        if c.session.handle_timeout(now, &mut self.out) {
                            self.stats.media_timeouts += 1;
                            self.out
                                .event(MediaEvent::MediaTimeout { call: key.clone() });
                        }
                        if c.session.counters().rtcp_out != rtcp_before {
                            self.stats.rtcp_out += 1;
                            self.stats.lost += c.session.take_lost_delta();
                        }
                        Self::report_digits(&mut self.stats, &mut self.out, &key, c);
                    }
                    // Due, or its deadline moved later since (RTP came): either
                    // way its next one is the live entry now.
                    c.scheduled = c.session.poll_timeout();
                    self.timers.push(Reverse((c.scheduled, Due::Call(key))));
                }
            }
        }
        self.prune_timers();
    }

    /// The next thing to do: drain until `Idle(next deadline)`.
    pub fn poll_output(&mut self, _now: Instant) -> MediaOutput {
        if let Some(o) = self.out.queue.pop_front() {
            return o;
        }
        MediaOutput::Idle(self.next_deadline())
    }

    /// The earliest of every room's next tick and every session's timers.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    pub fn stats(&self) -> &ShardMediaStats {
        &self.stats
    }

    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    //! The engine driven in memory on virtual time: callers are plain structs
    //! that write RTP, the clock is an `Instant` we advance, nothing sleeps.

    use std::f64::consts::PI;

    use super::*;
    use crate::codec::g711::FRAME_SAMPLES;
    use crate::rtp::rtcp::{parse_compound, write_rr, RtcpPacket};
    use crate::rtp::{ReportBlock, RtpHeader, RtpPacket};

    const PT_PCMU: u8 = 0;
    const PT_EVENT: u8 = 101;
    const FRAME: Duration = Duration::from_millis(20);

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    /// A phone at the far end of one call.
    struct Phone {
        call: CallKey,
        /// Where its packets come from (behind NAT: not its SDP address).
        src: SocketAddr,
        ssrc: u32,
        seq: u16,
        ts: u32,
        /// Sample index of its tone generator.
        n: u64,
        tone_hz: f64,
        level: f64,
    }

    impl Phone {
        fn new(name: &str, src: &str, tone_hz: f64) -> Phone {
            Phone {
                call: CallKey(name.into()),
                src: addr(src),
                ssrc: 0x5151_0000 + name.len() as u32 * 7919 + u32::from(name.as_bytes()[0]),
                seq: 1000,
                ts: 50_000,
                n: 0,
                tone_hz,
                level: 8000.0,
            }
        }

        fn media(&self, room: &str, sdp_remote: &str) -> CallMedia {
            CallMedia {
                call: self.call.clone(),
                room: room.into(),
                local: addr("10.0.0.1:10000"),
                remote: addr(sdp_remote),
                codec: Codec::Pcmu,
                payload_type: PT_PCMU,
                telephone_event: Some(PT_EVENT),
                ptime_ms: 20,
                send: true,
                receive: true,
            }
        }

        fn packet(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8]) -> Vec<u8> {
            let h = RtpHeader {
                marker,
                payload_type: pt,
                sequence: self.seq,
                timestamp: ts,
                ssrc: self.ssrc,
            };
            self.seq = self.seq.wrapping_add(1);
            let mut out = vec![0u8; 12 + payload.len()];
            let n = h.write(payload, &mut out).expect("sized to fit");
            out.truncate(n);
            out
        }

        /// The next 20 ms of its tone as a PCMU packet.
        fn voice(&mut self) -> Vec<u8> {
            let mut pcm = [0i16; FRAME_SAMPLES];
            for s in pcm.iter_mut() {
                let t = self.n as f64 / 8000.0;
                *s = (self.level * (2.0 * PI * self.tone_hz * t).sin()) as i16;
                self.n += 1;
            }
            let mut payload = [0u8; FRAME_SAMPLES];
            Law::Pcmu.encode(&pcm, &mut payload);
            let ts = self.ts;
            self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
            self.packet(PT_PCMU, false, ts, &payload)
        }

        /// A frame of one constant sample value.
        fn constant(&mut self, code: u8) -> Vec<u8> {
            let ts = self.ts;
            self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
            self.packet(PT_PCMU, false, ts, &[code; FRAME_SAMPLES])
        }
    }

    /// What one call received from the engine.
    #[derive(Debug, Clone)]
    struct Sent {
        at: Instant,
        dst: SocketAddr,
        data: Bytes,
        rtcp: bool,
    }

    struct Net {
        eng: MediaEngine,
        now: Instant,
        sent: Vec<(CallKey, Sent)>,
        events: Vec<(Instant, MediaEvent)>,
    }

    impl Net {
        fn new() -> Net {
            Net {
                eng: MediaEngine::with_seed(0, DEFAULT_MEDIA_TIMEOUT, 7),
                now: Instant::now(),
                sent: Vec::new(),
                events: Vec::new(),
            }
        }

        fn drain(&mut self) {
            for _ in 0..100_000 {
                match self.eng.poll_output(self.now) {
                    MediaOutput::Transmit {
                        call,
                        dst,
                        data,
                        rtcp,
                    } => self.sent.push((
                        call,
                        Sent {
                            at: self.now,
                            dst,
                            data,
                            rtcp,
                        },
                    )),
                    MediaOutput::Event(e) => self.events.push((self.now, e)),
                    MediaOutput::Idle(_) => return,
                }
            }
            panic!("the engine never went idle");
        }

        /// Run every timer up to `t`, then stand at `t`.
        fn advance_to(&mut self, t: Instant) {
            while let Some(d) = self.eng.next_deadline().filter(|&d| d <= t) {
                self.now = self.now.max(d);
                self.eng.handle_timeout(self.now);
                self.drain();
            }
            self.now = self.now.max(t);
        }

        fn receive(&mut self, phone: &Phone, data: &[u8]) {
            self.receive_from(&phone.call, phone.src, data, false);
        }

        fn receive_from(&mut self, call: &CallKey, src: SocketAddr, data: &[u8], rtcp: bool) {
            let now = self.now;
            self.eng.handle_packet(now, call, src, now, data, rtcp);
            self.drain();
        }

        fn rtp_to(&self, call: &CallKey) -> Vec<Sent> {
            self.sent
                .iter()
                .filter(|(c, s)| c == call && !s.rtcp)
                .map(|(_, s)| s.clone())
                .collect()
        }

        fn rtcp_to(&self, call: &CallKey) -> Vec<Sent> {
            self.sent
                .iter()
                .filter(|(c, s)| c == call && s.rtcp)
                .map(|(_, s)| s.clone())
                .collect()
        }

        /// Every media timeout so far: (when, which call).
        fn timeouts(&self) -> Vec<(Instant, CallKey)> {
            self.events
                .iter()
                .filter_map(|(t, e)| match e {
                    MediaEvent::MediaTimeout { call } => Some((*t, call.clone())),
                    _ => None,
                })
                .collect()
        }
    }

    /// Decode the PCMU voice packets a phone received.
    fn decode(sent: &[Sent]) -> Vec<i16> {
        let mut pcm = Vec::new();
        for s in sent {
            let p = RtpPacket::parse(&s.data).expect("we send valid RTP");
            if p.payload_type() != PT_PCMU {
                continue;
            }
            let mut frame = [0i16; FRAME_SAMPLES];
            let n = Law::Pcmu.decode(p.payload(), &mut frame);
            pcm.extend_from_slice(&frame[..n]);
        }
        pcm
    }

    /// Power of `pcm` at `hz` (Goertzel), normalised by length.
    fn goertzel(pcm: &[i16], hz: f64) -> f64 {
        let w = 2.0 * PI * hz / 8000.0;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in pcm {
            let s0 = f64::from(x) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (pcm.len() as f64).powi(2)
    }

    /// Two phones in one room for `secs`, sending every 20 ms on a phase 7 ms
    /// off the room's ticks.
    fn talk(
        net: &mut Net,
        phones: &mut [Phone],
        secs: u32,
        mut skip: impl FnMut(usize, u32) -> bool,
    ) {
        let start = net.now + Duration::from_millis(7);
        for k in 0..secs * 50 {
            net.advance_to(start + FRAME * k);
            for (i, p) in phones.iter_mut().enumerate() {
                let pkt = p.voice();
                if !skip(i, k) {
                    net.receive(p, &pkt);
                }
            }
        }
        net.advance_to(start + FRAME * (secs * 50));
    }

    #[test]
    fn two_callers_hear_each_other_and_not_themselves() {
        let mut net = Net::new();
        let mut phones = [
            Phone::new("a", "192.0.2.10:4000", 1000.0),
            Phone::new("b", "198.51.100.20:5000", 600.0),
        ];
        let t0 = net.now;
        for p in &phones {
            net.eng.add_call(t0, p.media("room", &p.src.to_string()));
        }
        talk(&mut net, &mut phones, 1, |_, _| false);
        for (me, other) in [(0, 1), (1, 0)] {
            let pcm = decode(&net.rtp_to(&phones[me].call));
            // Skip the jitter buffer's start-up; judge the steady half second.
            let tail = &pcm[pcm.len() - 4000..];
            let heard = goertzel(tail, phones[other].tone_hz);
            let own = goertzel(tail, phones[me].tone_hz);
            assert!(heard > 1e5, "{me} hears {other}: power {heard}");
            assert!(
                heard > 1000.0 * own.max(1.0),
                "{me} hears itself: {own} vs {heard}"
            );
        }
        let a = net.eng.call_report(&phones[0].call).expect("call a is up");
        assert_eq!(a.packets_in, 50);
        assert_eq!(
            (a.lost, a.duplicates, a.reordered, a.foreign_dropped),
            (0, 0, 0, 0)
        );
        assert!((49..=51).contains(&a.packets_out), "{}", a.packets_out);
        assert_eq!(net.eng.stats().packets_in, 100);
        assert_eq!(
            net.eng.stats().jitter_us.len(),
            98,
            "two probation packets unsampled"
        );
    }

    /// A published caller's voice comes out as one Opus frame per tick, 960
    /// RTP ticks apart (48 kHz clock, RFC 7587 s4.1), and decodes back to its
    /// tone; unpublished, nothing more comes.
    #[test]
    fn a_published_caller_is_encoded_once_per_tick() {
        let mut net = Net::new();
        let mut phones = [Phone::new("a", "192.0.2.10:4000", 1000.0)];
        net.eng
            .add_call(net.now, phones[0].media("room", &phones[0].src.to_string()));
        assert!(net.eng.set_published(&phones[0].call, true));
        assert!(!net.eng.set_published(&CallKey("nobody".into()), true));
        talk(&mut net, &mut phones, 1, |_, _| false);
        let frames: Vec<(Bytes, u32)> = net
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                MediaEvent::Published {
                    call,
                    payload,
                    rtp_timestamp,
                } if *call == phones[0].call => Some((payload.clone(), *rtp_timestamp)),
                _ => None,
            })
            .collect();
        assert!((49..=51).contains(&frames.len()), "{}", frames.len());
        for w in frames.windows(2) {
            assert_eq!(w[1].1.wrapping_sub(w[0].1), 960);
        }
        let mut dec = crate::codec::opus::OpusDecoder::new().expect("decoder");
        let mut pcm = Vec::new();
        for (payload, _) in &frames {
            let mut out = [0i16; 960];
            let n = dec.decode(payload, &mut out).expect("our packets decode");
            assert_eq!(n, FRAME_SAMPLES);
            pcm.extend_from_slice(&out[..n]);
        }
        let tail = &pcm[pcm.len() - 4000..];
        assert!(goertzel(tail, 1000.0) > 100.0 * goertzel(tail, 1400.0).max(1.0));
        assert!(goertzel(tail, 1000.0) > 1e5);

        assert!(net.eng.set_published(&phones[0].call, false));
        let before = net.events.len();
        talk(&mut net, &mut phones, 1, |_, _| false);
        assert!(!net.events[before..]
            .iter()
            .any(|(_, e)| matches!(e, MediaEvent::Published { .. })));
    }

    /// A WebRTC participant's Opus track is decoded into the callers' mix:
    /// the caller hears its tone; removed, it leaves the room (and the room
    /// its caller still holds goes on).
    #[test]
    fn a_caller_hears_a_webrtc_track() {
        let mut net = Net::new();
        let mut phones = [Phone::new("a", "192.0.2.10:4000", 1000.0)];
        net.eng
            .add_call(net.now, phones[0].media("room", &phones[0].src.to_string()));
        assert!(net.eng.add_track(net.now, "room", "TR_browser"));
        assert!(
            !net.eng.add_track(net.now, "room", "TR_browser"),
            "seated once"
        );
        // The browser's 600 Hz, Opus at 8 kHz, 48 kHz RTP clock.
        let mut enc = crate::codec::opus::OpusEncoder::new().expect("encoder");
        let start = net.now + Duration::from_millis(3);
        let (mut seq, mut ts, mut n) = (7u16, 90_000u32, 0u64);
        for k in 0..50u32 {
            net.advance_to(start + FRAME * k);
            let pkt = phones[0].voice();
            net.receive(&phones[0], &pkt);
            let mut pcm = [0i16; FRAME_SAMPLES];
            for s in pcm.iter_mut() {
                *s = (8000.0 * (2.0 * PI * 600.0 * n as f64 / 8000.0).sin()) as i16;
                n += 1;
            }
            let mut out = [0u8; 400];
            let len = enc.encode(&pcm, &mut out).expect("encode");
            net.eng
                .handle_track_packet("TR_browser", seq, ts, net.now, &out[..len]);
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(960);
        }
        net.advance_to(start + FRAME * 50);
        let pcm = decode(&net.rtp_to(&phones[0].call));
        let tail = &pcm[pcm.len() - 4000..];
        let heard = goertzel(tail, 600.0);
        assert!(heard > 1e5, "the caller hears the track: {heard}");
        assert!(
            heard > 1000.0 * goertzel(tail, 1000.0).max(1.0),
            "not itself"
        );

        net.eng.remove_track("TR_browser");
        assert_eq!(net.eng.rooms(), 1, "the caller's room stays");
        net.eng.remove_track("TR_browser"); // twice: nothing happens
        let before = net.rtp_to(&phones[0].call).len();
        talk(&mut net, &mut phones, 1, |_, _| false);
        let pcm = decode(&net.rtp_to(&phones[0].call)[before..]);
        assert!(goertzel(&pcm[pcm.len() - 4000..], 600.0) < 1.0, "gone");
    }

    /// A call re-added with another room (the room a PIN chose) leaves its old
    /// room, which ends, and joins the new one, where it hears and is heard;
    /// its session (counters, stream) is the same one.
    #[test]
    fn a_call_moved_to_another_room_hears_its_new_room() {
        let mut net = Net::new();
        let mut phones = [
            Phone::new("a", "192.0.2.10:4000", 1000.0),
            Phone::new("b", "198.51.100.20:5000", 600.0),
        ];
        let t0 = net.now;
        net.eng
            .add_call(t0, phones[0].media("pin:a", &phones[0].src.to_string()));
        net.eng
            .add_call(t0, phones[1].media("conf", &phones[1].src.to_string()));
        talk(&mut net, &mut phones, 1, |_, _| false);
        let a_before = decode(&net.rtp_to(&phones[0].call));
        assert!(
            goertzel(&a_before[a_before.len() - 4000..], 600.0) < 1.0,
            "apart"
        );
        let sent_before = net.rtp_to(&phones[0].call).len();

        net.eng
            .add_call(net.now, phones[0].media("conf", &phones[0].src.to_string()));
        net.drain();
        assert_eq!(net.eng.rooms(), 1);
        assert!(net.events.iter().any(|(_, e)| *e
            == MediaEvent::RoomEnded {
                room: "pin:a".into()
            }));
        talk(&mut net, &mut phones, 1, |_, _| false);
        for (me, other) in [(0, 1), (1, 0)] {
            let pcm = decode(&net.rtp_to(&phones[me].call));
            let heard = goertzel(&pcm[pcm.len() - 4000..], phones[other].tone_hz);
            assert!(heard > 1e5, "{me} hears {other} in the new room: {heard}");
        }
        let a = net.eng.call_report(&phones[0].call).expect("call a is up");
        assert_eq!(a.packets_in, 100, "one session across the move");
        assert!(a.packets_out as usize >= sent_before + 45);
    }

    /// The timer heap against brute force: through random joins, hangups,
    /// moves, packets, key presses and waits, the engine's next deadline is
    /// never later than the earliest real one (a late deadline is a missed mix
    /// or timer; an early one only an extra wake), every room ticks on time,
    /// and stale entries do not pile up.
    #[test]
    fn timer_heap_never_misses_a_deadline() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let mut net = Net::new();
        let t0 = net.now;
        let mut phones: Vec<Phone> = Vec::new();
        let brute_min = |eng: &MediaEngine| {
            let rooms = eng.rooms.values().map(Room::next_tick);
            let calls = eng.calls.values().map(|c| c.session.poll_timeout());
            rooms.chain(calls).min()
        };
        for step in 0..4000u32 {
            match rng.gen_range(0..10) {
                0 | 1 => {
                    let i = phones.len();
                    let p = Phone::new(
                        &format!("p{step}"),
                        &format!("192.0.2.{}:4000", i % 250 + 1),
                        400.0,
                    );
                    let room = format!("r{}", rng.gen_range(0..6));
                    net.eng
                        .add_call(net.now, p.media(&room, &p.src.to_string()));
                    phones.push(p);
                }
                2 if !phones.is_empty() => {
                    let p = phones.swap_remove(rng.gen_range(0..phones.len()));
                    net.eng.remove_call(net.now, &p.call);
                }
                3 if !phones.is_empty() => {
                    let i = rng.gen_range(0..phones.len());
                    let room = format!("r{}", rng.gen_range(0..6));
                    let mut m = phones[i].media(&room, &phones[i].src.to_string());
                    m.send = rng.gen_bool(0.8);
                    net.eng.add_call(net.now, m);
                }
                4..=6 if !phones.is_empty() => {
                    let i = rng.gen_range(0..phones.len());
                    let pkt = if rng.gen_bool(0.1) {
                        let ts = phones[i].ts;
                        phones[i].packet(PT_EVENT, true, ts, &[5, 10, 0, 160])
                    } else {
                        phones[i].voice()
                    };
                    let p = &phones[i];
                    net.receive(p, &pkt);
                }
                _ => {
                    let t = net.now + Duration::from_millis(rng.gen_range(1..400));
                    net.advance_to(t);
                }
            }
            net.drain();
            if let Some(real) = brute_min(&net.eng) {
                let next = net
                    .eng
                    .next_deadline()
                    .expect("a deadline while rooms or calls exist");
                assert!(
                    next <= real,
                    "step {step}: next {next:?} later than {real:?}"
                );
                // Whatever was due has run.
                assert!(
                    real > net.now
                        || net
                            .eng
                            .calls
                            .values()
                            .any(|c| c.session.poll_timeout() > net.now),
                    "step {step}"
                );
            } else {
                assert_eq!(net.eng.next_deadline(), None, "step {step}: idle");
            }
            let live = net.eng.rooms.len() + net.eng.calls.len();
            assert!(
                net.eng.timers.len() <= 4 * live + 64 + 8,
                "step {step}: {} entries for {live}",
                net.eng.timers.len()
            );
        }
        assert!(
            net.now > t0 + Duration::from_secs(60),
            "the run covered RTCP and timeouts"
        );
        assert!(net.eng.stats().media_timeouts > 0);
    }

    #[test]
    fn lone_caller_gets_silence_at_fifty_packets_per_second() {
        let mut net = Net::new();
        let a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("solo", "192.0.2.10:4000"));
        net.advance_to(t0 + Duration::from_secs(1));
        let rtp = net.rtp_to(&a.call);
        assert_eq!(rtp.len(), 50);
        let first = RtpPacket::parse(&rtp[0].data).expect("valid RTP");
        assert!(first.marker());
        for (i, s) in rtp.iter().enumerate() {
            let p = RtpPacket::parse(&s.data).expect("valid RTP");
            assert_eq!(p.payload_type(), PT_PCMU);
            assert_eq!(p.ssrc(), first.ssrc());
            assert_eq!(p.sequence(), first.sequence().wrapping_add(i as u16));
            assert_eq!(
                p.timestamp(),
                first.timestamp().wrapping_add(160 * i as u32)
            );
            assert_eq!(
                s.at,
                t0 + FRAME * (i as u32 + 1),
                "on the room's 20 ms phase"
            );
            assert!(p.payload().iter().all(|&c| c == Law::Pcmu.silence()));
        }
    }

    #[test]
    fn latches_on_first_packet_and_drops_foreign_sources() {
        let mut net = Net::new();
        let mut a = Phone::new("a", "203.0.113.5:31000", 1000.0);
        let t0 = net.now;
        // The SDP says 10.1.1.1:4000 (a private address behind NAT).
        net.eng.add_call(t0, a.media("r", "10.1.1.1:4000"));
        net.advance_to(t0 + FRAME * 3);
        assert!(net
            .rtp_to(&a.call)
            .iter()
            .all(|s| s.dst == addr("10.1.1.1:4000")));
        let n_before = net.rtp_to(&a.call).len();
        let pkt = a.voice();
        net.receive(&a, &pkt);
        // Someone else sends on the port: dropped, counted, not followed.
        let mut mallory = Phone::new("m", "198.51.100.66:6666", 300.0);
        mallory.call = a.call.clone();
        for _ in 0..3 {
            let pkt = mallory.voice();
            net.receive(&mallory, &pkt);
        }
        net.advance_to(t0 + FRAME * 10);
        let after: Vec<_> = net.rtp_to(&a.call).split_off(n_before);
        assert!(!after.is_empty());
        assert!(
            after.iter().all(|s| s.dst == a.src),
            "symmetric RTP follows the NAT"
        );
        let r = net.eng.call_report(&a.call).expect("up");
        assert_eq!(r.foreign_dropped, 3);
        assert_eq!(r.packets_in, 1);
        assert_eq!(r.latched, Some(a.src));
        assert_eq!(net.eng.stats().foreign_dropped, 3);
        // RTCP goes to the latched address, port + 1 (RFC 3550 s11).
        net.advance_to(t0 + Duration::from_secs(6));
        let rtcp = net.rtcp_to(&a.call);
        assert_eq!(rtcp.len(), 1);
        assert_eq!(rtcp[0].dst, addr("203.0.113.5:31001"));
    }

    #[test]
    fn media_timeout_fires_once_after_thirty_silent_seconds() {
        let mut net = Net::new();
        let mut talker = Phone::new("talker", "192.0.2.1:4000", 500.0);
        let silent = Phone::new("silent", "192.0.2.2:4000", 500.0);
        let t0 = net.now;
        net.eng.add_call(t0, talker.media("r1", "192.0.2.1:4000"));
        net.eng.add_call(t0, silent.media("r2", "192.0.2.2:4000"));
        for k in 0..(70 * 50) {
            net.advance_to(t0 + FRAME * k + Duration::from_millis(3));
            let pkt = talker.voice();
            net.receive(&talker, &pkt);
        }
        assert_eq!(
            net.timeouts(),
            [(t0 + DEFAULT_MEDIA_TIMEOUT, silent.call.clone())]
        );
        assert_eq!(net.eng.stats().media_timeouts, 1);
        let report = net.eng.remove_call(net.now, &silent.call).expect("was up");
        net.drain();
        assert!(report.media_timeout);
        assert_eq!(report.packets_in, 0);
        assert!(net
            .events
            .iter()
            .any(|(_, e)| *e == MediaEvent::RoomEnded { room: "r2".into() }));
    }

    /// RFC 3264 s8.4 hold: a caller that re-INVITEs with `inactive` (we answer
    /// inactive) gets no mix and is not timed out however long it stays silent;
    /// its RTCP keeps going. Resumed, it gets the mix again, its counters and
    /// SSRC carry on, and the media timeout counts from the resume.
    #[test]
    fn hold_suspends_the_mix_and_the_media_timeout_resume_restores_them() {
        let mut net = Net::new();
        let mut a = Phone::new("a", "192.0.2.1:4000", 500.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "192.0.2.1:4000"));
        for k in 0..50 {
            net.advance_to(t0 + FRAME * k + Duration::from_millis(3));
            let pkt = a.voice();
            net.receive(&a, &pkt);
        }
        let before = net.rtp_to(&a.call);
        assert!(
            before.len() >= 45,
            "the lone caller gets its cadence: {}",
            before.len()
        );
        let ssrc = RtpPacket::parse(&before[0].data).expect("rtp").ssrc();

        // Hold: 100 s of silence, far past the 30 s timeout.
        let t_hold = t0 + Duration::from_secs(1);
        let mut held = a.media("r", "192.0.2.1:4000");
        (held.send, held.receive) = (false, false);
        net.eng.add_call(t_hold, held);
        let sent_at_hold = net.rtp_to(&a.call).len();
        let rtcp_at_hold = net.rtcp_to(&a.call).len();
        net.advance_to(t_hold + Duration::from_secs(100));
        assert!(
            net.timeouts().is_empty(),
            "a held call is not timed out: {:?}",
            net.events
        );
        let sent_on_hold = net.rtp_to(&a.call).len() - sent_at_hold;
        assert!(sent_on_hold <= 1, "no mix on hold: {sent_on_hold} packets");
        assert!(
            net.rtcp_to(&a.call).len() > rtcp_at_hold + 10,
            "RTCP goes on"
        );

        // Resume: the mix comes back on the same stream, the timeout re-arms.
        let t_resume = net.now;
        net.eng.add_call(t_resume, a.media("r", "192.0.2.1:4000"));
        net.advance_to(t_resume + Duration::from_secs(1));
        let after = net.rtp_to(&a.call);
        assert!(
            after.len() - sent_at_hold - sent_on_hold >= 45,
            "mix resumed"
        );
        let last = RtpPacket::parse(&after[after.len() - 1].data).expect("rtp");
        assert_eq!(last.ssrc(), ssrc, "one stream across the re-INVITEs");
        net.advance_to(t_resume + DEFAULT_MEDIA_TIMEOUT - Duration::from_millis(100));
        assert!(net.timeouts().is_empty());
        net.advance_to(t_resume + DEFAULT_MEDIA_TIMEOUT + Duration::from_millis(100));
        assert_eq!(
            net.timeouts().len(),
            1,
            "silence after the resume is trouble again"
        );
        let report = net.eng.remove_call(net.now, &a.call).expect("was up");
        assert_eq!(report.packets_in, 50, "counters survive the re-INVITEs");
    }

    /// `sendonly` from the caller (it holds us, perhaps with music): we answer
    /// `recvonly`, send no mix, and its silence is judged by the hold timeout,
    /// not the media timeout (many phones that offer `sendonly` send nothing).
    #[test]
    fn recvonly_sends_nothing_and_waits_for_the_hold_timeout() {
        let mut net = Net::new();
        net.eng.set_hold_timeout(Duration::from_secs(120));
        let a = Phone::new("a", "192.0.2.1:4000", 500.0);
        let t0 = net.now;
        let mut m = a.media("r", "192.0.2.1:4000");
        m.send = false;
        net.eng.add_call(t0, m);
        net.advance_to(t0 + Duration::from_secs(119));
        assert!(net.rtp_to(&a.call).is_empty());
        assert!(net.timeouts().is_empty(), "not at the 30 s media timeout");
        net.advance_to(t0 + Duration::from_secs(121));
        assert_eq!(
            net.timeouts(),
            [(t0 + Duration::from_secs(120), a.call.clone())]
        );
    }

    /// RFC 4733 packets of one key press: start, updates, three end packets.
    fn press(net: &mut Net, p: &mut Phone, code: u8, frames: u16) {
        let ts = p.ts;
        for k in 1..=frames + 2 {
            let end = k >= frames;
            let dur = (k.min(frames) * 160).to_be_bytes();
            let payload = [code, (u8::from(end) << 7) | 10, dur[0], dur[1]];
            let pkt = p.packet(PT_EVENT, k == 1, ts, &payload);
            net.receive(p, &pkt);
            net.advance_to(net.now + FRAME);
        }
        p.ts = p.ts.wrapping_add(u32::from(frames) * 160);
    }

    #[test]
    fn dtmf_in_is_one_event_per_key_press() {
        let mut net = Net::new();
        let mut a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("ivr", "192.0.2.10:4000"));
        for _ in 0..3 {
            let pkt = a.voice();
            net.receive(&a, &pkt);
            net.advance_to(net.now + FRAME);
        }
        press(&mut net, &mut a, 5, 5);
        press(&mut net, &mut a, 11, 4);
        net.advance_to(net.now + Duration::from_secs(1));
        let digits: Vec<_> = net
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                MediaEvent::Dtmf {
                    call,
                    room,
                    digit,
                    duration_ms,
                } => Some((call.clone(), room.clone(), *digit, *duration_ms)),
                _ => None,
            })
            .collect();
        assert_eq!(
            digits,
            vec![
                (a.call.clone(), "ivr".to_owned(), '5', 100),
                (a.call.clone(), "ivr".to_owned(), '#', 80)
            ]
        );
        let r = net.eng.remove_call(net.now, &a.call).expect("up");
        assert_eq!(r.dtmf_digits, 2);
        assert_eq!(r.lost, 0, "events share the sequence space");
        assert_eq!(net.eng.stats().dtmf_in, 2);
    }

    #[test]
    fn send_dtmf_plays_rfc4733_events_in_place_of_voice() {
        let mut net = Net::new();
        let a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "192.0.2.10:4000"));
        net.advance_to(t0 + FRAME * 2);
        assert!(net.eng.send_dtmf(net.now, &a.call, '7', 100));
        assert!(!net.eng.send_dtmf(net.now, &a.call, 'x', 100), "not DTMF");
        assert!(
            !net.eng.send_dtmf(net.now, &a.call, '8', 10_000),
            "too long for the 16-bit duration"
        );
        assert!(!net
            .eng
            .send_dtmf(net.now, &CallKey("nobody".into()), '1', 100));
        net.advance_to(t0 + FRAME * 12);
        let pkts: Vec<_> = net
            .rtp_to(&a.call)
            .iter()
            .map(|s| {
                let p = RtpPacket::parse(&s.data).expect("valid");
                (s.at, p.header(), p.payload().to_vec())
            })
            .collect();
        let ev: Vec<_> = pkts
            .iter()
            .filter(|(_, h, _)| h.payload_type == PT_EVENT)
            .collect();
        // 100 ms = 5 frames: 5 packets, the 5th with E, then 2 more end copies.
        assert_eq!(ev.len(), 7);
        let start_ts = ev[0].1.timestamp;
        let voice_before = pkts[1].1;
        assert_eq!(start_ts, voice_before.timestamp.wrapping_add(160));
        for (i, (_, h, p)) in ev.iter().enumerate() {
            assert_eq!(h.marker, i == 0);
            assert_eq!(h.timestamp, start_ts);
            assert_eq!(p[0], 7);
            assert_eq!(p[1] & 0x80 != 0, i >= 4, "E bit on the last three");
            let dur = u16::from_be_bytes([p[2], p[3]]);
            assert_eq!(dur, (160 * (i as u16 + 1)).min(800));
        }
        // One packet per tick while the event replaces voice; sequence numbers run on.
        let seqs: Vec<u16> = pkts.iter().map(|(_, h, _)| h.sequence).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
        let times: Vec<Instant> = pkts.iter().map(|(t, _, _)| *t).collect();
        let voice_at: Vec<_> = pkts
            .iter()
            .filter(|(t, h, _)| h.payload_type == PT_PCMU && *t > ev[0].0)
            .collect();
        // Voice resumes at start + 100 ms of RTP time, beside the end copies.
        assert_eq!(voice_at[0].1.timestamp, start_ts.wrapping_add(800));
        assert_eq!(voice_at[0].0, ev[5].0);
        assert!(times.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(net.eng.stats().dtmf_out, 1);
    }

    /// The RTP a phone received, parsed: (when, header, payload).
    fn parsed(sent: &[Sent]) -> Vec<(Instant, RtpHeader, Vec<u8>)> {
        sent.iter()
            .map(|s| {
                let p = RtpPacket::parse(&s.data).expect("valid");
                (s.at, p.header(), p.payload().to_vec())
            })
            .collect()
    }

    /// An agent's "1234#" in one go: every digit is queued and played in
    /// order, each a whole RFC 4733 event of its own (marker and a new
    /// timestamp on its first packet, the same timestamp throughout, three
    /// end packets), never overlapping, with voice between and after.
    #[test]
    fn queued_dtmf_digits_play_one_after_another() {
        let mut net = Net::new();
        let a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "192.0.2.10:4000"));
        net.advance_to(t0 + FRAME * 2);
        for d in "1234#".chars() {
            assert!(net.eng.send_dtmf(net.now, &a.call, d, 100), "{d} queued");
        }
        // 5 x (5 frames of event + 3 of voice), and some voice after.
        net.advance_to(t0 + FRAME * 50);
        let pkts = parsed(&net.rtp_to(&a.call));
        assert_eq!(net.eng.stats().dtmf_out, 5);

        // Events, by start timestamp, in the order they went out.
        let mut events: Vec<(u32, Vec<usize>)> = Vec::new();
        for (i, (_, h, _)) in pkts.iter().enumerate() {
            if h.payload_type != PT_EVENT {
                continue;
            }
            match events.last_mut() {
                Some((ts, idx)) if *ts == h.timestamp => idx.push(i),
                _ => {
                    assert!(
                        events.iter().all(|(ts, _)| *ts != h.timestamp),
                        "event {} resumed after another one began",
                        h.timestamp
                    );
                    events.push((h.timestamp, vec![i]));
                }
            }
        }
        let codes: Vec<u8> = events.iter().map(|(_, idx)| pkts[idx[0]].2[0]).collect();
        assert_eq!(codes, [1, 2, 3, 4, 11], "in the order asked");
        let first_voice_ts = pkts[0].1.timestamp;
        for (n, (ts, idx)) in events.iter().enumerate() {
            // Each digit starts where the voice frame it replaces would have:
            // 2 frames of voice first, then 5 event + 3 voice frames a digit.
            let want = first_voice_ts.wrapping_add(160 * (2 + 8 * n as u32));
            assert_eq!(*ts, want, "digit {n} starts on the voice timeline");
            assert_eq!(idx.len(), 7, "digit {n}: 5 frames and 2 end copies");
            for (k, &i) in idx.iter().enumerate() {
                let (_, h, p) = &pkts[i];
                assert_eq!(h.marker, k == 0, "digit {n} packet {k}: marker");
                assert_eq!(p[0], codes[n]);
                assert_eq!(p[1] & 0x80 != 0, k >= 4, "digit {n} packet {k}: E bit");
                let dur = u16::from_be_bytes([p[2], p[3]]);
                assert_eq!(dur, (160 * (k as u16 + 1)).min(800));
            }
        }
        // Voice between the digits: exactly 3 frames after each digit's last
        // frame, on the timeline; the first two carry the end copies beside.
        for (n, (ts, idx)) in events.iter().enumerate() {
            let end_at = pkts[idx[4]].0;
            let voice: Vec<_> = pkts
                .iter()
                .filter(|(t, h, _)| h.payload_type == PT_PCMU && *t > end_at)
                .take(3)
                .collect();
            for (k, (t, h, _)) in voice.iter().enumerate() {
                assert_eq!(*t, end_at + FRAME * (k as u32 + 1), "digit {n} voice {k}");
                assert_eq!(h.timestamp, ts.wrapping_add(800 + 160 * k as u32));
                assert!(!h.marker);
            }
            assert_eq!(pkts[idx[5]].0, voice[0].0, "end copy beside voice");
            assert_eq!(pkts[idx[6]].0, voice[1].0, "end copy beside voice");
            if let Some((_, next)) = events.get(n + 1) {
                assert_eq!(pkts[next[0]].0, end_at + FRAME * 4, "gap of 3 frames");
            }
        }
        let last_end = pkts[events[4].1[6]].0;
        let after = pkts
            .iter()
            .filter(|(t, h, _)| h.payload_type == PT_PCMU && *t > last_end)
            .count();
        assert!(after >= 5, "voice resumes after the last digit: {after}");
        // One stream: sequence numbers run on, one voice-or-event slot a tick.
        let seqs: Vec<u16> = pkts.iter().map(|(_, h, _)| h.sequence).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
        let mut slots: Vec<(Instant, u32)> = pkts
            .iter()
            .filter(|(_, h, p)| h.payload_type == PT_PCMU || p[1] & 0x80 == 0)
            .map(|(t, h, p)| match h.payload_type {
                PT_PCMU => (*t, h.timestamp),
                // An event packet stands for the frame its duration ends on.
                _ => (
                    *t,
                    h.timestamp
                        .wrapping_add(u32::from(u16::from_be_bytes([p[2], p[3]])))
                        .wrapping_sub(160),
                ),
            })
            .collect();
        // (Final event packets: the first of the three E packets is a slot too.)
        for (_, idx) in &events {
            let (t, h, p) = &pkts[idx[4]];
            let dur = u32::from(u16::from_be_bytes([p[2], p[3]]));
            slots.push((*t, h.timestamp.wrapping_add(dur).wrapping_sub(160)));
        }
        slots.sort();
        assert!(
            slots
                .windows(2)
                .all(|w| w[1].0 == w[0].0 + FRAME && w[1].1 == w[0].1.wrapping_add(160)),
            "one 20 ms slot a tick, 160 units apart"
        );
    }

    /// At most [`session::DTMF_QUEUE`] digits wait; more are refused until
    /// one starts. Digits still queued when the call goes (or is held) are
    /// simply dropped.
    #[test]
    fn dtmf_queue_is_bounded_and_dropped_with_the_call() {
        let mut net = Net::new();
        let a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let b = Phone::new("b", "192.0.2.20:4000", 500.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "192.0.2.10:4000"));
        net.eng.add_call(t0, b.media("r", "192.0.2.20:4000"));
        net.advance_to(t0 + FRAME);
        for n in 0..session::DTMF_QUEUE {
            let d = char::from(b'0' + (n % 10) as u8);
            assert!(net.eng.send_dtmf(net.now, &a.call, d, 100), "digit {n}");
        }
        assert!(
            !net.eng.send_dtmf(net.now, &a.call, '#', 100),
            "33rd refused"
        );
        assert_eq!(net.eng.stats().dtmf_out, session::DTMF_QUEUE as u64);
        // The first digit starts playing: room for one more.
        net.advance_to(net.now + FRAME);
        assert!(net.eng.send_dtmf(net.now, &a.call, '#', 100));
        assert!(!net.eng.send_dtmf(net.now, &a.call, '#', 100));

        // b: "123" queued, then b holds the call mid-digit: the rest is dropped.
        assert!("123"
            .chars()
            .all(|d| net.eng.send_dtmf(net.now, &b.call, d, 100)));
        net.advance_to(net.now + FRAME * 2);
        let mut held = b.media("r", "192.0.2.20:4000");
        held.send = false;
        net.eng.add_call(net.now, held);
        net.advance_to(net.now + FRAME * 10);
        net.eng.add_call(net.now, b.media("r", "192.0.2.20:4000"));

        // a hangs up with 30 digits queued.
        let sent_before = net.rtp_to(&a.call).len();
        let report = net.eng.remove_call(net.now, &a.call).expect("was up");
        assert!(report.packets_out > 0);
        net.advance_to(net.now + Duration::from_secs(2));
        assert_eq!(
            net.rtp_to(&a.call).len(),
            sent_before,
            "nothing after hangup"
        );
        assert!(!net.eng.send_dtmf(net.now, &a.call, '1', 100), "call gone");

        let b_events: Vec<u8> = parsed(&net.rtp_to(&b.call))
            .iter()
            .filter(|(_, h, _)| h.payload_type == PT_EVENT)
            .map(|(_, _, p)| p[0])
            .collect();
        assert_eq!(b_events, [1, 1], "digit 1 cut by the hold, 2 and 3 dropped");
        let b_voice_after = parsed(&net.rtp_to(&b.call))
            .iter()
            .filter(|(t, h, _)| h.payload_type == PT_PCMU && *t > net.now - Duration::from_secs(1))
            .count();
        assert!(b_voice_after >= 45, "b's voice resumed: {b_voice_after}");
    }

    #[test]
    fn lost_input_is_concealed_without_a_gap_in_output_cadence() {
        let mut net = Net::new();
        let mut phones = [
            Phone::new("a", "192.0.2.10:4000", 1000.0),
            Phone::new("b", "198.51.100.20:5000", 600.0),
        ];
        let t0 = net.now;
        for p in &phones {
            net.eng.add_call(t0, p.media("room", &p.src.to_string()));
        }
        // a loses packets 20, 21, 22 and 30.
        talk(&mut net, &mut phones, 1, |i, k| {
            i == 0 && matches!(k, 20..=22 | 30)
        });
        let to_b = net.rtp_to(&phones[1].call);
        assert!(to_b.len() >= 50);
        for w in to_b.windows(2) {
            let (p, q) = (
                RtpPacket::parse(&w[0].data).expect("valid"),
                RtpPacket::parse(&w[1].data).expect("valid"),
            );
            assert_eq!(q.sequence(), p.sequence().wrapping_add(1));
            assert_eq!(q.timestamp(), p.timestamp().wrapping_add(160));
            assert_eq!(w[1].at - w[0].at, FRAME);
        }
        let r = net.eng.call_report(&phones[0].call).expect("up");
        assert_eq!(r.lost, 4);
        assert!(r.concealed_frames >= 4, "{}", r.concealed_frames);
        // The tone goes on through the holes: the single loss is bridged; the
        // three-frame hole fades out (while the jitter buffer also waits a
        // frame or two for a late packet) and the tone comes back.
        let pcm = decode(&to_b);
        let frames: Vec<bool> = pcm
            .chunks(160)
            .map(|f| f.iter().any(|&s| s.abs() > 200))
            .collect();
        let first = frames.iter().position(|&x| x).expect("b hears a");
        let quiet = frames[first..].iter().filter(|&&x| !x).count();
        assert!(quiet <= 2, "{frames:?}");
        assert!(frames[frames.len() - 10..].iter().all(|&x| x));
    }

    #[test]
    fn ten_party_mix_is_the_saturated_sum_of_the_other_nine() {
        let mut net = Net::new();
        let t0 = net.now;
        let levels: [i16; 10] = [12000, 9000, -3000, 500, 7000, 6000, -800, 2500, 1000, 100];
        let codes: Vec<u8> = levels.iter().map(|&l| Law::Pcmu.encode_sample(l)).collect();
        let mut phones: Vec<Phone> = (0..10)
            .map(|i| Phone::new(&format!("p{i}"), &format!("192.0.2.{}:4000", i + 1), 0.0))
            .collect();
        for p in &phones {
            net.eng.add_call(t0, p.media("big", &p.src.to_string()));
        }
        let start = t0 + Duration::from_millis(5);
        for k in 0..40 {
            net.advance_to(start + FRAME * k);
            for (p, &c) in phones.iter_mut().zip(&codes) {
                let pkt = p.constant(c);
                net.receive(p, &pkt);
            }
        }
        net.advance_to(start + FRAME * 40);
        let decoded: Vec<i32> = codes
            .iter()
            .map(|&c| i32::from(Law::Pcmu.decode_sample(c)))
            .collect();
        let total: i32 = decoded.iter().sum();
        let mut saturated = 0;
        for (i, p) in phones.iter().enumerate() {
            let last = net.rtp_to(&p.call).pop().expect("sent");
            let pkt = RtpPacket::parse(&last.data).expect("valid");
            let want = (total - decoded[i]).clamp(-32768, 32767) as i16;
            saturated += usize::from(want == i16::MAX);
            let code = Law::Pcmu.encode_sample(want);
            assert!(pkt.payload().iter().all(|&c| c == code), "participant {i}");
        }
        assert!(
            (1..10).contains(&saturated),
            "the test covers both cases: {saturated}"
        );
    }

    #[test]
    fn rtt_from_the_callers_receiver_report() {
        let mut net = Net::new();
        let mut a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "192.0.2.10:4000"));
        let pkt = a.voice();
        net.receive(&a, &pkt);
        net.advance_to(t0 + Duration::from_secs(5));
        let sr = net.rtcp_to(&a.call).pop().expect("first report at 5 s");
        let (our_ssrc, ntp) = parse_compound(&sr.data)
            .find_map(|p| match p {
                Ok(RtcpPacket::SenderReport(s)) => Some((s.ssrc, s.info.ntp)),
                _ => None,
            })
            .expect("we sent media, so an SR");
        // 20 ms each way, the phone holds the SR for 500 ms before its RR.
        net.advance_to(sr.at + Duration::from_millis(540));
        let block = ReportBlock {
            ssrc: our_ssrc,
            fraction_lost: 0,
            cumulative_lost: 0,
            ext_highest_seq: 0,
            jitter: 0,
            lsr: ntp.middle32(),
            dlsr: 65536 / 2,
        };
        let mut buf = [0u8; 64];
        let n = write_rr(&mut buf, a.ssrc, &[block]).expect("fits");
        let src = addr("192.0.2.10:4001");
        net.receive_from(&a.call.clone(), src, &buf[..n], true);
        let r = net.eng.call_report(&a.call).expect("up");
        assert_eq!(r.rtt_ms, Some(40));
        assert_eq!(net.eng.stats().rtcp_in, 1);
        // A forged report from elsewhere is dropped.
        net.receive_from(&a.call.clone(), addr("198.51.100.1:4001"), &buf[..n], true);
        assert_eq!(net.eng.call_report(&a.call).expect("up").foreign_dropped, 1);
    }

    #[test]
    fn room_ends_with_its_last_participant() {
        let mut net = Net::new();
        let a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let b = Phone::new("b", "192.0.2.11:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "192.0.2.10:4000"));
        net.eng.add_call(t0, b.media("r", "192.0.2.11:4000"));
        assert_eq!((net.eng.calls(), net.eng.rooms()), (2, 1));
        net.advance_to(t0 + Duration::from_millis(100));
        assert!(net.eng.remove_call(net.now, &a.call).is_some());
        assert!(net.eng.remove_call(net.now, &a.call).is_none());
        net.drain();
        assert!(!net
            .events
            .iter()
            .any(|(_, e)| matches!(e, MediaEvent::RoomEnded { .. })));
        // Our BYE went to a's RTCP port.
        let bye = net.rtcp_to(&a.call).pop().expect("BYE");
        assert!(parse_compound(&bye.data).any(|p| matches!(p, Ok(RtcpPacket::Goodbye(_)))));
        net.eng.remove_call(net.now, &b.call).expect("up");
        net.drain();
        assert_eq!(
            net.events.last().map(|(_, e)| e.clone()),
            Some(MediaEvent::RoomEnded { room: "r".into() })
        );
        assert_eq!((net.eng.calls(), net.eng.rooms()), (0, 0));
        assert_eq!(net.eng.poll_output(net.now), MediaOutput::Idle(None));
        let s = net.eng.stats();
        assert_eq!((s.calls_active, s.rooms_active, s.calls_total), (0, 0, 2));
    }

    #[test]
    fn packets_for_unknown_calls_and_garbage_are_counted() {
        let mut net = Net::new();
        let a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "192.0.2.10:4000"));
        net.receive_from(&CallKey("gone".into()), a.src, &[0x80; 40], false);
        net.receive(&a, &[0x00, 0x01]);
        net.receive(&a, &[0x80, 13, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let s = net.eng.stats();
        assert_eq!((s.unknown_call, s.malformed, s.packets_in), (1, 1, 0));
        let r = net.eng.call_report(&a.call).expect("up");
        assert_eq!(r.latched, None, "comfort noise does not latch");
    }

    #[test]
    fn hold_address_sends_nothing_until_the_caller_speaks() {
        let mut net = Net::new();
        let mut a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "0.0.0.0:4000"));
        net.advance_to(t0 + Duration::from_secs(1));
        assert!(net.rtp_to(&a.call).is_empty(), "RFC 3264 s8.4: c=0.0.0.0");
        let pkt = a.voice();
        net.receive(&a, &pkt);
        net.advance_to(t0 + Duration::from_secs(2));
        let rtp = net.rtp_to(&a.call);
        assert_eq!(rtp.len(), 50);
        assert!(rtp.iter().all(|s| s.dst == a.src));
        // The timeline ran on through the silent second.
        let p = RtpPacket::parse(&rtp[1].data).expect("valid");
        let q = RtpPacket::parse(&rtp[0].data).expect("valid");
        assert_eq!(p.timestamp().wrapping_sub(q.timestamp()), 160);
    }

    #[test]
    fn a_new_ssrc_mid_call_is_followed() {
        let mut net = Net::new();
        let mut phones = [
            Phone::new("a", "192.0.2.10:4000", 1000.0),
            Phone::new("b", "198.51.100.20:5000", 600.0),
        ];
        let t0 = net.now;
        for p in &phones {
            net.eng.add_call(t0, p.media("room", &p.src.to_string()));
        }
        talk(&mut net, &mut phones, 1, |_, _| false);
        // The trunk switches a's stream (a transfer on its side): new SSRC,
        // sequence and timestamp base, same address.
        phones[0].ssrc ^= 0xffff;
        phones[0].seq = phones[0].seq.wrapping_add(30_000);
        phones[0].ts = phones[0].ts.wrapping_add(1 << 30);
        let n_before = net.rtp_to(&phones[1].call).len();
        talk(&mut net, &mut phones, 1, |_, _| false);
        let to_b = net.rtp_to(&phones[1].call).split_off(n_before);
        let pcm = decode(&to_b);
        let tail = &pcm[pcm.len() - 4000..];
        assert!(goertzel(tail, 1000.0) > 1e5, "b hears a's new stream");
    }

    #[test]
    fn reordering_and_duplicates_are_counted_not_lost() {
        let mut net = Net::new();
        let mut a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "192.0.2.10:4000"));
        let mut held = None;
        for k in 0..50u32 {
            net.advance_to(t0 + FRAME * k + Duration::from_millis(3));
            let pkt = a.voice();
            match k {
                10 => held = Some(pkt),
                11 => {
                    net.receive(&a, &pkt);
                    let late = held.take().expect("held at 10");
                    net.receive(&a, &late);
                }
                20 => {
                    net.receive(&a, &pkt);
                    net.receive(&a, &pkt);
                }
                _ => net.receive(&a, &pkt),
            }
        }
        let r = net.eng.call_report(&a.call).expect("up");
        assert_eq!((r.lost, r.reordered, r.duplicates), (0, 1, 1));
        assert_eq!(r.packets_in, 51);
    }

    #[test]
    fn a_digit_whose_end_packets_were_lost_is_reported_once() {
        let mut net = Net::new();
        let mut a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "192.0.2.10:4000"));
        let ts = a.ts;
        for k in 1..=4u16 {
            let dur = (k * 160).to_be_bytes();
            let pkt = a.packet(PT_EVENT, k == 1, ts, &[9, 10, dur[0], dur[1]]);
            net.receive(&a, &pkt);
            net.advance_to(net.now + FRAME);
        }
        net.advance_to(net.now + Duration::from_secs(2));
        let digits: Vec<_> = net
            .events
            .iter()
            .filter(|(_, e)| matches!(e, MediaEvent::Dtmf { digit: '9', .. }))
            .collect();
        assert_eq!(digits.len(), 1, "{:?}", net.events);
    }

    #[test]
    fn the_same_stream_from_a_new_address_relatches_after_a_silence() {
        let mut net = Net::new();
        let mut a = Phone::new("a", "192.0.2.10:4000", 1000.0);
        let t0 = net.now;
        net.eng.add_call(t0, a.media("r", "192.0.2.10:4000"));
        for k in 0..10u32 {
            net.advance_to(t0 + FRAME * k);
            let pkt = a.voice();
            net.receive(&a, &pkt);
        }
        // The NAT rebinds: same SSRC from a new port. Too soon: dropped.
        a.src = addr("192.0.2.10:4002");
        let pkt = a.voice();
        net.receive(&a, &pkt);
        assert_eq!(net.eng.call_report(&a.call).expect("up").foreign_dropped, 1);
        // After a second of silence from the old address, it follows.
        net.advance_to(t0 + FRAME * 9 + session::RELATCH_AFTER);
        let pkt = a.voice();
        net.receive(&a, &pkt);
        let r = net.eng.call_report(&a.call).expect("up");
        assert_eq!((r.latched, r.foreign_dropped), (Some(a.src), 1));
        // A stranger with another SSRC never moves it.
        let mut m = Phone::new("m", "198.51.100.66:6666", 300.0);
        m.call = a.call.clone();
        net.advance_to(net.now + Duration::from_secs(5));
        let pkt = m.voice();
        net.receive(&m, &pkt);
        let r = net.eng.call_report(&a.call).expect("up");
        assert_eq!((r.latched, r.foreign_dropped), (Some(a.src), 2));
        net.advance_to(net.now + FRAME * 2);
        assert_eq!(net.rtp_to(&a.call).last().map(|s| s.dst), Some(a.src));
    }

    proptest::proptest! {
        /// Hostile datagrams (random bytes, and random bytes behind a valid
        /// RTP or RTCP header) from the caller's and a stranger's address,
        /// between ticks: nothing panics, the caller keeps getting exactly one
        /// packet per tick, and the engine goes idle every time.
        #[test]
        fn hostile_input_never_breaks_the_cadence(
            packets in proptest::collection::vec(
                (0u8..4, proptest::collection::vec(proptest::num::u8::ANY, 0..300), proptest::bool::ANY),
                1..120,
            )
        ) {
            let mut net = Net::new();
            let a = Phone::new("a", "192.0.2.10:4000", 1000.0);
            let stranger: SocketAddr = addr("203.0.113.99:999");
            let t0 = net.now;
            net.eng.add_call(t0, a.media("r", "192.0.2.10:4000"));
            for (i, (kind, mut bytes, from_caller)) in packets.into_iter().enumerate() {
                match kind {
                    0 => {}
                    1 if bytes.len() >= 12 => {
                        bytes[0] = 0x80;
                        bytes[1] &= 0x7f;
                    }
                    2 if bytes.len() >= 8 => {
                        bytes[0] = 0x80 | (bytes[0] & 0x1f);
                        bytes[1] = 200 + bytes[1] % 5;
                    }
                    _ if bytes.len() >= 12 => {
                        bytes[0] = 0x80;
                        bytes[1] = PT_EVENT;
                    }
                    _ => {}
                }
                let src = if from_caller { a.src } else { stranger };
                net.receive_from(&a.call.clone(), src, &bytes, i % 7 == 0);
                net.advance_to(t0 + Duration::from_millis(5 * i as u64 + 1));
            }
            let end = net.now;
            let ticks = (end - t0).as_millis() / 20;
            let rtp = net.rtp_to(&a.call);
            proptest::prop_assert_eq!(rtp.len() as u128, ticks);
            let report = net.eng.remove_call(end, &a.call).expect("up");
            proptest::prop_assert!(report.packets_in + report.foreign_dropped + report.malformed <= 120);
        }
    }
}
