//! The shard's media driver: its RTP sockets, an epoll set over them, and the
//! shard's [`MediaEngine`] (rooms, mixing, RTP sessions).
//!
//! Data flow:
//!
//! ```text
//! endpoint Output::MediaOpen   -> bind RTP + RTCP RtpSockets, register in epoll
//! endpoint Output::MediaStart  -> MediaEngine::add_call (joins the room)
//! media task, every TICK:  epoll_wait(0) -> recv_batch (kernel timestamps)
//!                          -> MediaEngine::handle_packet -> handle_timeout (20 ms mix)
//!                          -> poll_output: Transmit -> RtpSocket::send_to
//!                                          Event    -> the endpoint (timeout) / log (DTMF)
//! endpoint Output::MediaClose  -> MediaEngine::remove_call -> call record, sockets closed
//! ```
//!
//! Why a poll tick and not a task per socket: glommio's sockets cannot return
//! kernel receive timestamps nor batch (see `rtp_socket`), and one `epoll_wait`
//! per tick costs one syscall for all of the shard's calls; only sockets with
//! packets are read. Arrival times come from the kernel, so the tick adds at
//! most `TICK` of latency and nothing to the measured jitter.
//!
//! Owns: the sockets and the engine; nothing here is shared with another shard.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::rtp_socket::{Received, RtpSocket, RtpSocketError};
use crate::media::{self, CallMedia, CallMediaReport, MediaEngine, MediaEvent, MediaOutput};
use crate::sdp;
use crate::sip::endpoint::{CallKey, MediaFigures, MediaSpec};

/// How often the media task wakes while calls exist. The mix runs on its own
/// 20 ms cadence inside the engine; this only bounds how late a packet is read.
pub const TICK: Duration = Duration::from_millis(4);
/// The shortest sleep of the media task between two passes.
pub const MIN_WAKE: Duration = Duration::from_millis(1);
/// Datagrams read per socket per tick (a socket with more is read again next tick).
const BATCH: usize = 16;
const BUF: usize = 2048;
/// Kernel receive queue per RTP socket: a short stall must queue, not drop.
const RCVBUF: usize = 256 * 1024;

struct Port {
    key: media::CallKey,
    rtp: RtpSocket,
    rtcp: RtpSocket,
    /// Set by MediaStart; packets before it (early media) are read and dropped.
    started: bool,
}

/// What the media tick asks of the SIP side.
pub enum MediaNotice {
    /// No RTP for the media timeout: the endpoint sends BYE.
    Timeout(CallKey),
    /// A digit the caller pressed (the endpoint uses it for PIN entry).
    Dtmf(CallKey, char),
    /// One Opus frame of a published caller (48 kHz RTP timestamp), for its
    /// WebRTC subscribers.
    Published(CallKey, bytes::Bytes, u32),
    /// Who speaks in a room (for LiveKit's `speakers_changed`): callers by
    /// their SIP Call-ID, tracks by sid, levels in 0..=1.
    Speakers {
        room: String,
        callers: Vec<(CallKey, f32)>,
        tracks: Vec<(std::sync::Arc<str>, f32)>,
    },
}

/// What the LiveKit side asks of the media engine. Queued by the shard and
/// applied at the start of the next media tick, so the WebRTC side never
/// needs the engine borrowed.
#[derive(Debug)]
pub enum MediaCommand {
    /// Publish (or stop) the caller's voice as Opus.
    Publish {
        call: CallKey,
        on: bool,
    },
    /// A WebRTC audio track to mix for the callers of `room`.
    AddTrack {
        room: String,
        track: std::sync::Arc<str>,
    },
    RemoveTrack {
        track: std::sync::Arc<str>,
    },
    /// One Opus packet of a track.
    TrackPacket {
        track: std::sync::Arc<str>,
        sequence: u16,
        rtp_timestamp: u32,
        arrival: Instant,
        payload: std::sync::Arc<[u8]>,
    },
}

pub struct ShardMedia {
    shard: usize,
    engine: MediaEngine,
    ports: HashMap<CallKey, Port>,
    /// epoll token -> (call, is RTCP)
    tokens: HashMap<u64, (CallKey, bool)>,
    by_media_key: HashMap<media::CallKey, CallKey>,
    next_token: u64,
    epoll: OwnedFd,
    bufs: Vec<[u8; BUF]>,
    received: Vec<Received>,
    events: Vec<libc::epoll_event>,
    deadline: Option<Instant>,
    send_errors: u64,
    bind_failures: u64,
}

fn media_codec(c: sdp::Codec) -> media::Codec {
    match c {
        sdp::Codec::Pcmu => media::Codec::Pcmu,
        sdp::Codec::Pcma => media::Codec::Pcma,
    }
}

impl ShardMedia {
    pub fn new(
        shard: usize,
        media_timeout: Duration,
        hold_timeout: Duration,
    ) -> io::Result<ShardMedia> {
        // SAFETY: epoll_create1 takes a flags word and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut engine = MediaEngine::new(shard, media_timeout);
        engine.set_hold_timeout(hold_timeout);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        engine.set_wallclock(Instant::now(), wall);
        Ok(ShardMedia {
            shard,
            engine,
            ports: HashMap::new(),
            tokens: HashMap::new(),
            by_media_key: HashMap::new(),
            next_token: 1,
            epoll,
            bufs: vec![[0u8; BUF]; BATCH],
            received: Vec::with_capacity(BATCH),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            deadline: None,
            send_errors: 0,
            bind_failures: 0,
        })
    }

    pub fn engine(&self) -> &MediaEngine {
        &self.engine
    }

    pub fn open_ports(&self) -> usize {
        self.ports.len()
    }

    /// How long the media task may sleep: until the engine's next deadline, at
    /// most `tick` (sockets are read every tick).
    /// Never less than `MIN_WAKE`: with many rooms on unrelated 20 ms phases a
    /// deadline is always near, and waking for each one costs more CPU than the
    /// jitter it saves (measured: docs/benchmarks.md).
    pub fn next_wake(&self, now: Instant, tick: Duration) -> Duration {
        match self.deadline {
            Some(d) => d.saturating_duration_since(now).clamp(MIN_WAKE, tick),
            None => tick,
        }
    }

    /// Carry out one [`MediaCommand`].
    pub fn apply(&mut self, now: Instant, cmd: MediaCommand) {
        match cmd {
            MediaCommand::Publish { call, on } => {
                let Some(port) = self.ports.get(&call) else {
                    return;
                };
                if !self.engine.set_published(&port.key, on) {
                    warn!(call_id = %call, shard = self.shard, "caller's track not published (no Opus encoder)");
                }
            }
            MediaCommand::AddTrack { room, track } => {
                if !self.engine.add_track(now, &room, &track) {
                    debug!(room = %room, track = %track, "track not mixed (already, or no Opus decoder)");
                }
            }
            MediaCommand::RemoveTrack { track } => self.engine.remove_track(&track),
            MediaCommand::TrackPacket {
                track,
                sequence,
                rtp_timestamp,
                arrival,
                payload,
            } => {
                self.engine
                    .handle_track_packet(&track, sequence, rtp_timestamp, arrival, &payload)
            }
        }
    }

    pub fn has_work(&self) -> bool {
        !self.ports.is_empty() || self.engine.calls() > 0
    }

    fn epoll_add(&mut self, fd: i32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both fds are open (the epoll set and a socket we own); `ev` is
        // a valid epoll_event that the kernel only reads.
        let r =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Bind the call's RTP port and the RTCP port above it.
    pub fn open(&mut self, call: &CallKey, local: SocketAddr) -> Result<(), RtpSocketError> {
        if self
            .ports
            .get(call)
            .is_some_and(|p| p.rtp.local_addr() == local)
        {
            return Ok(());
        }
        let rtcp_addr = SocketAddr::new(local.ip(), local.port().wrapping_add(1));
        let rtp = RtpSocket::bind(local).inspect_err(|_| self.bind_failures += 1)?;
        let rtcp = RtpSocket::bind(rtcp_addr).inspect_err(|_| self.bind_failures += 1)?;
        let _ = rtp.set_recv_buffer_size(RCVBUF);
        // A moved port replaces the old pair: forget its tokens (closing its fds
        // removes them from the epoll set).
        self.tokens.retain(|_, (c, _)| c != call);
        let (t_rtp, t_rtcp) = (self.next_token, self.next_token + 1);
        self.next_token += 2;
        for (sock, tok) in [(&rtp, t_rtp), (&rtcp, t_rtcp)] {
            if let Err(e) = self.epoll_add(sock.as_raw_fd(), tok) {
                warn!(call_id = %call, error = %e, "epoll registration failed");
            }
        }
        self.tokens.insert(t_rtp, (call.clone(), false));
        self.tokens.insert(t_rtcp, (call.clone(), true));
        let key = media::CallKey(call.0.clone());
        self.by_media_key.insert(key.clone(), call.clone());
        self.ports.insert(
            call.clone(),
            Port {
                key,
                rtp,
                rtcp,
                started: false,
            },
        );
        debug!(call_id = %call, %local, "media ports open");
        Ok(())
    }

    /// The call was answered: it joins its room.
    pub fn start(&mut self, now: Instant, spec: MediaSpec) {
        let Some(port) = self.ports.get_mut(&spec.call) else {
            warn!(call_id = %spec.call, room = %spec.room, "media start without an open port");
            return;
        };
        // Called again for a started call (a re-INVITE: hold, resume, new
        // address or codec; or the room a PIN chose), `add_call` updates the
        // session in place: its counters, SSRC and timeline carry on, so the call
        // record covers the whole call and the caller sees one stream.
        port.started = true;
        self.engine.add_call(
            now,
            CallMedia {
                call: port.key.clone(),
                room: spec.room,
                local: spec.local,
                remote: spec.remote,
                codec: media_codec(spec.codec),
                payload_type: spec.payload_type,
                telephone_event: spec.telephone_event,
                ptime_ms: spec.ptime_ms,
                send: spec.direction.sends(),
                receive: spec.direction.receives(),
            },
        );
        self.deadline = Some(now);
    }

    /// Play `digit` to the caller as RFC 4733 events (a LiveKit participant's
    /// SIP DTMF), after the digits already queued for it. False when the call
    /// is unknown here, did not offer telephone-event, or its queue is full.
    pub fn send_dtmf(
        &mut self,
        now: Instant,
        call: &CallKey,
        digit: char,
        duration_ms: u32,
    ) -> bool {
        let Some(port) = self.ports.get(call) else {
            return false;
        };
        self.engine.send_dtmf(now, &port.key, digit, duration_ms)
    }

    /// The call ended: its media figures for the call record; sockets closed.
    pub fn close(&mut self, now: Instant, call: &CallKey) -> MediaFigures {
        // Packets that arrived before the hangup but were not read yet belong in
        // the call record (the BYE can overtake the media tick).
        let wall_now = SystemTime::now();
        self.read_port(call, false, now, wall_now);
        self.read_port(call, true, now, wall_now);
        let Some(port) = self.ports.remove(call) else {
            return MediaFigures::default();
        };
        self.tokens.retain(|_, (c, _)| c != call);
        self.by_media_key.remove(&port.key);
        let report = self.engine.remove_call(now, &port.key);
        report.as_ref().map(figures).unwrap_or_default()
    }

    /// One media tick: read what arrived, run the engine's timers, send.
    /// Returns what the SIP side must act on.
    pub fn tick(&mut self, now: Instant, notices: &mut Vec<MediaNotice>) {
        self.read_ready(now);
        if self.deadline.is_some_and(|d| d <= now) || self.deadline.is_none() {
            self.engine.handle_timeout(now);
        }
        self.drain(now, notices);
    }

    fn read_ready(&mut self, now: Instant) {
        if self.ports.is_empty() {
            return;
        }
        let wall_now = SystemTime::now();
        // SAFETY: `events` is a live buffer of `len` epoll_event entries the
        // kernel may write; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                0,
            )
        };
        if n <= 0 {
            return;
        }
        for i in 0..n as usize {
            let token = self.events[i].u64;
            let Some((call, rtcp)) = self.tokens.get(&token).cloned() else {
                continue;
            };
            self.read_port(&call, rtcp, now, wall_now);
        }
    }

    /// Read what one of a call's sockets holds (a few batches at most) into the engine.
    fn read_port(&mut self, call: &CallKey, rtcp: bool, now: Instant, wall_now: SystemTime) {
        let Some(port) = self.ports.get_mut(call) else {
            return;
        };
        let sock = if rtcp { &mut port.rtcp } else { &mut port.rtp };
        for _ in 0..4 {
            let got = sock
                .recv_batch(&mut self.bufs, &mut self.received)
                .unwrap_or(0);
            if got == 0 {
                break;
            }
            for (k, r) in self.received.iter().enumerate() {
                // Before MediaStart (early media, or a stray sender) nothing is kept.
                if r.truncated || !port.started {
                    continue;
                }
                let arrival = r.kernel_ts.map_or(now, |ts| ts.to_instant(now, wall_now));
                self.engine.handle_packet(
                    now,
                    &port.key,
                    r.src,
                    arrival,
                    &self.bufs[k][..r.len],
                    rtcp,
                );
            }
            if got < self.bufs.len() {
                break;
            }
        }
    }

    fn drain(&mut self, now: Instant, notices: &mut Vec<MediaNotice>) {
        loop {
            match self.engine.poll_output(now) {
                MediaOutput::Transmit {
                    call,
                    dst,
                    data,
                    rtcp,
                } => {
                    let Some(sip_key) = self.by_media_key.get(&call) else {
                        continue;
                    };
                    let Some(port) = self.ports.get(sip_key) else {
                        continue;
                    };
                    let sock = if rtcp { &port.rtcp } else { &port.rtp };
                    if sock.send_to(&data, dst).is_err() {
                        self.send_errors += 1;
                    }
                }
                MediaOutput::Event(ev) => match ev {
                    MediaEvent::Dtmf {
                        call,
                        room,
                        digit,
                        duration_ms,
                    } => {
                        info!(call_id = %call.0, room = %room, digit = %digit, duration_ms, shard = self.shard, "dtmf");
                        if let Some(k) = self.by_media_key.get(&call) {
                            notices.push(MediaNotice::Dtmf(k.clone(), digit));
                        }
                    }
                    MediaEvent::MediaTimeout { call } => {
                        if let Some(k) = self.by_media_key.get(&call) {
                            notices.push(MediaNotice::Timeout(k.clone()));
                        }
                    }
                    MediaEvent::RoomEnded { room } => {
                        debug!(room = %room, shard = self.shard, "room ended");
                    }
                    MediaEvent::Speakers { room, levels } => {
                        let mut callers = Vec::new();
                        let mut tracks = Vec::new();
                        for (kind, permille) in levels {
                            let level = f32::from(permille) / 1000.0;
                            match kind {
                                media::ParticipantKind::Sip(k) => {
                                    if let Some(sip) = self.by_media_key.get(&k) {
                                        callers.push((sip.clone(), level));
                                    }
                                }
                                media::ParticipantKind::Track(t) => tracks.push((t, level)),
                            }
                        }
                        notices.push(MediaNotice::Speakers {
                            room,
                            callers,
                            tracks,
                        });
                    }
                    MediaEvent::Published {
                        call,
                        payload,
                        rtp_timestamp,
                    } => {
                        if let Some(k) = self.by_media_key.get(&call) {
                            notices.push(MediaNotice::Published(k.clone(), payload, rtp_timestamp));
                        }
                    }
                },
                MediaOutput::Idle(deadline) => {
                    self.deadline = deadline;
                    return;
                }
            }
        }
    }

    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }
}

/// The media half of a call record.
pub fn figures(r: &CallMediaReport) -> MediaFigures {
    MediaFigures {
        packets_in: r.packets_in,
        packets_out: r.packets_out,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        lost: r.lost.max(0) as u64,
        reordered: r.reordered,
        duplicates: r.duplicates,
        foreign_dropped: r.foreign_dropped,
        jitter_p50_us: r.jitter_p50_us,
        jitter_p99_us: r.jitter_p99_us,
        jitter_max_us: r.jitter_max_us,
        dtmf_digits: r.dtmf_digits,
        rtt_ms: r.rtt_ms.map_or(0, u64::from),
    }
}
