//! `sb-rtcload`: WebRTC "agents" for the calls-with-an-agent load test
//! (scripts/loadtest-agents.sh, docs/benchmarks.md).
//!
//! Where it sits: beside `sb-loadgen`, outside the server. sb-loadgen places
//! the SIP calls; switchboard's log says which room each answered caller
//! joined (`SIP caller joined the LiveKit room ... room=<name>`); this tool
//! tails that log and sends one agent into each new room, in order, up to
//! `--agents`. An agent is what a LiveKit agent SDK is to the server: a v1
//! signal client (`/rtc/v1?join_request=`, one PeerConnection, the client
//! offers) that publishes one Opus microphone track and subscribes to the
//! caller. So the server Opus-encodes the caller for the agent and decodes the
//! agent's Opus into the caller's mix, as in the product.
//!
//! Per agent: one non-blocking UDP socket on `--local-ip`, one str0m `Rtc`
//! (full ICE, Opus only) whose first offer has one `sendonly` audio m-line
//! (its msid track id is the `cid` of the join request's AddTrackRequest)
//! and two `recvonly` ones, and one WebSocket (tungstenite, non-blocking after
//! the handshake). A `media_sections_requirement` is answered by a re-offer
//! with that many more `recvonly` m-lines (at least one). A ping every 5 s.
//!
//! One thread drives every agent from one epoll (UDP sockets and WebSockets):
//! every 20 ms each connected agent writes the same 20 ms Opus packet (a
//! 600 Hz tone at 8 kHz, encoded once with switchboard's encoder) on its
//! sendonly m-line, spread over 10 phases; it counts the Opus packets it
//! receives on the others.
//!
//! With `--rooms a,b,...` it joins the named rooms at once instead of reading
//! the log: agents may then join before any caller, or share a room with
//! several (the server's `media_sections_requirement` path).
//!
//! Report: once `--agents` agents are connected (or `--join-timeout` passed),
//! after `--settle` (or at `--window-at` from start, connected or not), one
//! window of `--duration`: packets received vs 50 per second per agent, per
//! receive m-line the loss from the RTP sequence numbers, silent agents,
//! re-offers, and this process's CPU. Then it keeps the agents talking until
//! `--hold` seconds from start (so sb-loadgen's window is covered) and exits.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::{
    self,
    client::IntoClientRequest,
    http::{header::AUTHORIZATION, HeaderValue},
    protocol::WebSocket,
    Message,
};
use livekit_protocol as lk;
use prost::Message as _;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use switchboard::codec::opus::{Frame, OpusEncoder, FRAME_SAMPLES, MAX_ENCODED_BYTES};
use switchboard::livekit::signal::join_request;
use switchboard::livekit::token::{self, Claims, VideoGrant};

const PTIME: Duration = Duration::from_millis(20);
const PHASES: u32 = 10;
const PING_EVERY: Duration = Duration::from_secs(5);
/// 48 kHz RTP ticks per 20 ms Opus packet.
const TICKS: u64 = 960;

const USAGE: &str = "usage: sb-rtcload --rooms-from-log PATH --agents N [options]
  --ws 127.0.0.1:7880        switchboard's LiveKit port
  --key devkey --secret secret   API key that signs the agents' tokens
  --local-ip 127.0.0.1       address of the agents' UDP sockets
  --rooms-from-log PATH      switchboard's log: one agent per room a SIP caller joined
  --rooms a,b,...            or these rooms, joined at once, one agent each (repeat a
                             name for several agents in one room)
  --agents N                 how many agents (the first N rooms, in log order)
  --join-timeout 60          stop waiting for N connected agents after (s)
  --settle 2                 wait after the last agent connected before measuring (s)
  --duration 15              measurement window (s)
  --window-at 0              open the window this many s from start, connected or not
                             (0: --settle after the last agent connected)
  --hold 0                   keep the agents talking until this many s from start
  --server-pid PID           also read the server's CPU over the window";

struct Opts {
    ws: SocketAddr,
    key: String,
    secret: String,
    local_ip: IpAddr,
    log: String,
    rooms: Vec<String>,
    agents: usize,
    join_timeout: Duration,
    settle: Duration,
    duration: Duration,
    hold: Duration,
    window_at: Option<Duration>,
    server_pid: Option<u32>,
}

fn parse_opts() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts {
        ws: "127.0.0.1:7880".parse().expect("literal"),
        key: "devkey".into(),
        secret: "secret".into(),
        local_ip: "127.0.0.1".parse().expect("literal"),
        log: String::new(),
        rooms: Vec::new(),
        agents: 0,
        join_timeout: Duration::from_secs(60),
        settle: Duration::from_secs(2),
        duration: Duration::from_secs(15),
        hold: Duration::ZERO,
        window_at: None,
        server_pid: None,
    };
    let mut it = args.iter();
    while let Some(name) = it.next() {
        if name == "-h" || name == "--help" {
            return Err(USAGE.into());
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{name} {v}: {e}");
        let secs = |v: &str| v.parse::<f64>().map(Duration::from_secs_f64);
        match name.as_str() {
            "--ws" => o.ws = v.parse().map_err(|e| bad(&e))?,
            "--key" => o.key = v.clone(),
            "--secret" => o.secret = v.clone(),
            "--local-ip" => o.local_ip = v.parse().map_err(|e| bad(&e))?,
            "--rooms-from-log" => o.log = v.clone(),
            "--rooms" => o.rooms = v.split(',').map(str::to_owned).collect(),
            "--agents" => o.agents = v.parse().map_err(|e| bad(&e))?,
            "--join-timeout" => o.join_timeout = secs(v).map_err(|e| bad(&e))?,
            "--settle" => o.settle = secs(v).map_err(|e| bad(&e))?,
            "--duration" => o.duration = secs(v).map_err(|e| bad(&e))?,
            "--hold" => o.hold = secs(v).map_err(|e| bad(&e))?,
            "--window-at" => {
                o.window_at = Some(secs(v).map_err(|e| bad(&e))?).filter(|d| !d.is_zero())
            }
            "--server-pid" => o.server_pid = Some(v.parse().map_err(|e| bad(&e))?),
            _ => return Err(format!("unknown option {name}\n{USAGE}")),
        }
    }
    if o.agents == 0 {
        o.agents = o.rooms.len();
    }
    if o.log.is_empty() == o.rooms.is_empty() || o.agents == 0 {
        return Err(USAGE.into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------
// Rooms from the server's log
// ---------------------------------------------------------------------------

/// Tails switchboard's log for the rooms SIP callers joined.
struct LogRooms {
    file: File,
    pos: u64,
    partial: String,
    seen: HashSet<String>,
}

impl LogRooms {
    fn open(path: &str) -> io::Result<LogRooms> {
        Ok(LogRooms {
            file: File::open(path)?,
            pos: 0,
            partial: String::new(),
            seen: HashSet::new(),
        })
    }

    /// New rooms since the last call, in log order.
    fn poll(&mut self) -> io::Result<Vec<String>> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        self.pos += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut rooms = Vec::new();
        while let Some(nl) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=nl).collect();
            let line = strip_ansi(&line);
            if !line.contains("SIP caller joined the LiveKit room") {
                continue;
            }
            if let Some(room) = field(&line, "room=") {
                if self.seen.insert(room.to_owned()) {
                    rooms.push(room.to_owned());
                }
            }
        }
        Ok(rooms)
    }
}

/// `line` without ANSI escape sequences (tracing's colours).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of ` name=value` in a tracing line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}"))? + 1 + name.len();
    let rest = &line[at..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

// ---------------------------------------------------------------------------
// One agent
// ---------------------------------------------------------------------------

/// What one receive m-line got in the window: packets and the extended
/// sequence numbers seen (the caller's track sits on one m-line; several
/// when an agent shares its room with several callers).
#[derive(Default, Clone, Copy)]
struct Stream {
    received: u64,
    first: u64,
    last: u64,
}

type Window = HashMap<Mid, Stream>;

struct Agent {
    room: String,
    sock: UdpSocket,
    local: SocketAddr,
    rtc: Rtc,
    ws: WebSocket<TcpStream>,
    send_mid: Mid,
    pt: Option<Pt>,
    pending: Option<SdpPendingOffer>,
    /// Receive m-lines asked for while an offer was pending.
    owed_sections: u32,
    offers: u32,
    joined: bool,
    connected_at: Option<Instant>,
    next_timeout: Instant,
    next_send: Instant,
    next_ping: Instant,
    sent: u64,
    received: u64,
    window: Window,
    dead: Option<String>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Agent {
    fn start(i: usize, room: String, o: &Opts, now: Instant) -> Result<Agent, String> {
        let sock = UdpSocket::bind((o.local_ip, 0)).map_err(|e| format!("udp bind: {e}"))?;
        sock.set_nonblocking(true)
            .map_err(|e| format!("udp nonblocking: {e}"))?;
        let local = sock.local_addr().map_err(|e| format!("udp addr: {e}"))?;
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .enable_opus(true, false)
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .build(now);
        let cand = Candidate::host(local, "udp").map_err(|e| format!("candidate: {e}"))?;
        let cand_sdp = cand.to_sdp_string();
        rtc.add_local_candidate(cand);
        let cid = format!("agent-mic-{i}");
        let mut api = rtc.sdp_api();
        let send_mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some(format!("agent-stream-{i}")),
            Some(cid.clone()),
            None,
        );
        for _ in 0..2 {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply().ok_or("no offer")?;
        let req = lk::JoinRequest {
            client_info: Some(lk::ClientInfo {
                sdk: lk::client_info::Sdk::Rust as i32,
                version: "sb-rtcload".into(),
                protocol: 16,
                ..Default::default()
            }),
            connection_settings: Some(lk::ConnectionSettings {
                auto_subscribe: true,
                ..Default::default()
            }),
            add_track_requests: vec![lk::AddTrackRequest {
                cid,
                name: "agent-voice".into(),
                r#type: lk::TrackType::Audio as i32,
                source: lk::TrackSource::Microphone as i32,
                ..Default::default()
            }],
            publisher_offer: Some(lk::SessionDescription {
                r#type: "offer".into(),
                sdp: offer.to_sdp_string(),
                id: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let claims = Claims {
            api_key: o.key.clone(),
            identity: format!("agent-{i}"),
            name: format!("agent {i}"),
            expires_at: Some(now_unix() + 6 * 3600),
            video: Some(VideoGrant {
                room_join: true,
                room: room.clone(),
                can_publish: Some(true),
                can_subscribe: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let jwt = token::encode(&claims, o.secret.as_bytes());
        let url = format!(
            "ws://{}/rtc/v1?join_request={}",
            o.ws,
            join_request::encode(&req, false)
        );
        let mut request = url
            .into_client_request()
            .map_err(|e| format!("request: {e}"))?;
        request.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {jwt}")).map_err(|e| format!("header: {e}"))?,
        );
        let stream = TcpStream::connect(o.ws).map_err(|e| format!("connect {}: {e}", o.ws))?;
        stream.set_nodelay(true).ok();
        let (mut ws, _resp) =
            tungstenite::client::client(request, stream).map_err(|e| format!("handshake: {e}"))?;
        ws.get_mut()
            .set_nonblocking(true)
            .map_err(|e| format!("ws nonblocking: {e}"))?;
        // Our candidate is in the offer; trickle it too, as SDKs do.
        let init = serde_json::json!({
            "candidate": cand_sdp.trim_start_matches("a=").trim_end(),
            "sdpMid": send_mid.to_string(),
            "sdpMLineIndex": 0,
        });
        let trickle = lk::signal_request::Message::Trickle(lk::TrickleRequest {
            candidate_init: init.to_string(),
            target: lk::SignalTarget::Publisher as i32,
            r#final: false,
        });
        let phase = PTIME / PHASES * (i as u32 % PHASES);
        let mut agent = Agent {
            room,
            sock,
            local,
            rtc,
            ws,
            send_mid,
            pt: None,
            pending: Some(pending),
            owed_sections: 0,
            offers: 1,
            joined: false,
            connected_at: None,
            next_timeout: now,
            next_send: now + phase,
            next_ping: now + PING_EVERY,
            sent: 0,
            received: 0,
            window: Window::default(),
            dead: None,
        };
        agent.signal(trickle);
        Ok(agent)
    }

    fn signal(&mut self, m: lk::signal_request::Message) {
        let req = lk::SignalRequest { message: Some(m) };
        match self.ws.send(Message::Binary(req.encode_to_vec().into())) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.die(format!("ws send: {e}")),
        }
    }

    fn die(&mut self, why: String) {
        if self.dead.is_none() {
            eprintln!("sb-rtcload: agent in {}: {why}", self.room);
            self.dead = Some(why);
        }
    }

    /// Every signal message waiting on the WebSocket.
    fn read_ws(&mut self) {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(b)) => match lk::SignalResponse::decode(&b[..]) {
                    Ok(r) => self.on_signal(r),
                    Err(e) => self.die(format!("bad SignalResponse: {e}")),
                },
                Ok(Message::Close(c)) => {
                    self.die(format!("server closed the signal connection: {c:?}"));
                    return;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.ws.flush();
                    return;
                }
                Err(e) => {
                    self.die(format!("ws read: {e}"));
                    return;
                }
            }
            if self.dead.is_some() {
                return;
            }
        }
    }

    fn on_signal(&mut self, r: lk::SignalResponse) {
        use lk::signal_response::Message as R;
        match r.message {
            Some(R::Join(_)) => self.joined = true,
            Some(R::Answer(sd)) => {
                let Some(pending) = self.pending.take() else {
                    self.die("an answer with no offer pending".into());
                    return;
                };
                let answer = match SdpAnswer::from_sdp_string(&sd.sdp) {
                    Ok(a) => a,
                    Err(e) => return self.die(format!("answer does not parse: {e}")),
                };
                if let Err(e) = self.rtc.sdp_api().accept_answer(pending, answer) {
                    return self.die(format!("answer refused: {e}"));
                }
                if self.owed_sections > 0 {
                    let n = std::mem::take(&mut self.owed_sections);
                    self.reoffer(n);
                }
            }
            Some(R::MediaSectionsRequirement(m)) => {
                let n = m.num_audios.max(1);
                if self.pending.is_some() {
                    self.owed_sections += n;
                } else {
                    self.reoffer(n);
                }
            }
            Some(R::Trickle(t)) => {
                let v: serde_json::Value =
                    serde_json::from_str(&t.candidate_init).unwrap_or_default();
                if let Some(c) = v.get("candidate").and_then(|c| c.as_str()) {
                    if !c.is_empty() {
                        if let Ok(c) = Candidate::from_sdp_string(c) {
                            self.rtc.add_remote_candidate(c);
                        }
                    }
                }
            }
            Some(R::Leave(l)) => self.die(format!("server sent leave: {l:?}")),
            _ => {}
        }
    }

    fn reoffer(&mut self, n: u32) {
        let mut api = self.rtc.sdp_api();
        for _ in 0..n {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        self.pending = Some(pending);
        self.offers += 1;
        let id = self.offers;
        self.signal(lk::signal_request::Message::Offer(lk::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id,
            ..Default::default()
        }));
    }

    fn read_udp(&mut self, buf: &mut [u8], measuring: bool) {
        loop {
            match self.sock.recv_from(buf) {
                Ok((n, from)) => {
                    let Ok(recv) = Receive::new(Protocol::Udp, from, self.local, &buf[..n]) else {
                        continue;
                    };
                    let now = Instant::now();
                    if let Err(e) = self.rtc.handle_input(Input::Receive(now, recv)) {
                        self.die(format!("rtc input: {e}"));
                        return;
                    }
                    self.drain(measuring);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.die(format!("udp recv: {e}")),
            }
        }
    }

    /// str0m's output: datagrams out, events, the next timeout.
    fn drain(&mut self, measuring: bool) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    let _ = self.sock.send_to(&t.contents, t.destination);
                }
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    return;
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        self.connected_at.get_or_insert_with(Instant::now);
                    }
                    Event::MediaData(d) if d.mid != self.send_mid => {
                        self.received += 1;
                        if measuring {
                            let w = self.window.entry(d.mid).or_insert(Stream {
                                received: 0,
                                first: **d.seq_range.start(),
                                last: 0,
                            });
                            w.received += 1;
                            w.last = w.last.max(**d.seq_range.end());
                        }
                    }
                    _ => {}
                },
                Err(e) => return self.die(format!("rtc poll: {e}")),
            }
        }
    }

    fn send_media(&mut self, packet: &Arc<[u8]>, now: Instant) {
        if self.connected_at.is_none() || self.pending.is_some() && self.offers == 1 {
            return;
        }
        let pt = match self.pt {
            Some(pt) => pt,
            None => {
                let Some(p) = self
                    .rtc
                    .codec_config()
                    .find(|p| p.spec().codec == Codec::Opus)
                else {
                    return;
                };
                self.pt = Some(p.pt());
                p.pt()
            }
        };
        let ts = MediaTime::new(self.sent * TICKS, Frequency::FORTY_EIGHT_KHZ);
        let Some(w) = self.rtc.writer(self.send_mid) else {
            return;
        };
        match w.write(pt, now, ts, packet.clone()) {
            Ok(()) => self.sent += 1,
            Err(e) => self.die(format!("write: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------
// epoll
// ---------------------------------------------------------------------------

struct Epoll(i32);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall, the fd is owned by the returned value.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn add(&self, fd: i32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` lives across the call; `fd` is open.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> usize {
        // Rounded up: a deadline under 1 ms away must not become a 0 ms
        // wait (a spin until it passes).
        let ms = timeout.as_micros().div_ceil(1000).min(100) as i32;
        // SAFETY: `events` is a valid buffer of its length.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, ms) };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

fn cpu_secs_self() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime of `pid` in seconds (`/proc/<pid>/stat` fields 14, 15).
fn cpu_secs_pid(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// One 20 ms Opus packet of a 600 Hz tone at 8 kHz.
fn tone_packet() -> Result<Arc<[u8]>, String> {
    let mut enc = OpusEncoder::new().map_err(|e| format!("opus encoder: {e}"))?;
    let mut out = vec![0u8; MAX_ENCODED_BYTES];
    let mut n = 0;
    // A few frames in, so the packet is a steady-state one.
    for f in 0..5 {
        let mut pcm: Frame = [0; FRAME_SAMPLES];
        for (k, s) in pcm.iter_mut().enumerate() {
            let t = (f * FRAME_SAMPLES + k) as f64 / 8000.0;
            *s = (8000.0 * (2.0 * std::f64::consts::PI * 600.0 * t).sin()) as i16;
        }
        n = enc
            .encode(&pcm, &mut out)
            .map_err(|e| format!("opus: {e}"))?;
    }
    Ok(out[..n].into())
}

#[derive(PartialEq)]
enum Phase {
    Joining,
    Settling(Instant),
    Measuring(Instant),
    Holding,
}

fn run(o: Opts) -> Result<bool, String> {
    let start = Instant::now();
    let packet = tone_packet()?;
    let mut rooms = if o.log.is_empty() {
        None
    } else {
        Some(LogRooms::open(&o.log).map_err(|e| format!("{}: {e}", o.log))?)
    };
    let mut listed = o.rooms.clone().into_iter();
    let ep = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut agents: Vec<Agent> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 2048];
    let mut next_log = start;
    let mut phase = Phase::Joining;
    let join_deadline = start + o.join_timeout;
    let mut cpu0 = (0.0, None);
    let mut ok = true;
    let mut all_connected = false;
    loop {
        let now = Instant::now();
        // New rooms: one agent each.
        if agents.len() < o.agents && now >= next_log {
            next_log = now + Duration::from_millis(50);
            let new = match &mut rooms {
                Some(r) => r.poll().map_err(|e| format!("{}: {e}", o.log))?,
                None => listed.by_ref().collect(),
            };
            for room in new {
                if agents.len() >= o.agents {
                    break;
                }
                let i = agents.len();
                let a = Agent::start(i, room, &o, Instant::now())?;
                ep.add(a.sock.as_raw_fd(), (i as u64) << 1)
                    .map_err(|e| format!("epoll add: {e}"))?;
                ep.add(a.ws.get_ref().as_raw_fd(), (i as u64) << 1 | 1)
                    .map_err(|e| format!("epoll add: {e}"))?;
                agents.push(a);
            }
        }
        let measuring = matches!(phase, Phase::Measuring(_));
        // Deadlines: sends, pings, str0m timeouts.
        let now = Instant::now();
        let mut wake = now + PTIME;
        for a in agents.iter_mut().filter(|a| a.dead.is_none()) {
            if now >= a.next_send {
                a.send_media(&packet, now);
                a.next_send += PTIME;
                if a.next_send < now {
                    a.next_send = now + PTIME;
                }
            }
            if now >= a.next_ping {
                a.next_ping = now + PING_EVERY;
                a.signal(lk::signal_request::Message::Ping(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0),
                ));
            }
            if now >= a.next_timeout {
                if let Err(e) = a.rtc.handle_input(Input::Timeout(now)) {
                    a.die(format!("rtc timeout: {e}"));
                    continue;
                }
            }
            a.drain(measuring);
            wake = wake.min(a.next_send).min(a.next_timeout).min(a.next_ping);
        }
        // Phases of the measurement.
        let connected = agents.iter().filter(|a| a.connected_at.is_some()).count();
        if !all_connected && connected >= o.agents {
            all_connected = true;
            eprintln!(
                "sb-rtcload: all {connected} agents connected {:.1} s from start",
                start.elapsed().as_secs_f64()
            );
        }
        match phase {
            Phase::Joining if o.window_at.is_some_and(|at| now >= start + at) => {
                eprintln!(
                    "sb-rtcload: {connected}/{} agents connected at the window, {:.1} s ({} rooms seen)",
                    o.agents,
                    start.elapsed().as_secs_f64(),
                    agents.len()
                );
                phase = Phase::Settling(now);
            }
            Phase::Joining
                if o.window_at.is_none() && (connected >= o.agents || now >= join_deadline) =>
            {
                eprintln!(
                    "sb-rtcload: {connected}/{} agents connected after {:.1} s ({} rooms seen)",
                    o.agents,
                    start.elapsed().as_secs_f64(),
                    agents.len()
                );
                phase = Phase::Settling(now + o.settle);
            }
            Phase::Settling(until) if now >= until => {
                for a in &mut agents {
                    a.window = Window::default();
                }
                cpu0 = (cpu_secs_self(), o.server_pid.and_then(cpu_secs_pid));
                phase = Phase::Measuring(now);
            }
            Phase::Measuring(since) if now >= since + o.duration => {
                let secs = now.duration_since(since).as_secs_f64();
                ok = report(&agents, secs, cpu0, &o);
                phase = Phase::Holding;
            }
            Phase::Holding if now >= start + o.hold => break,
            _ => {}
        }
        let timeout = wake.saturating_duration_since(Instant::now());
        let n = ep.wait(&mut events, timeout);
        let measuring = matches!(phase, Phase::Measuring(_));
        for ev in &events[..n] {
            let token = ev.u64;
            let Some(a) = agents.get_mut((token >> 1) as usize) else {
                continue;
            };
            if a.dead.is_some() {
                continue;
            }
            if token & 1 == 1 {
                a.read_ws();
                a.drain(measuring);
            } else {
                a.read_udp(&mut buf, measuring);
            }
        }
    }
    Ok(ok)
}

fn report(agents: &[Agent], secs: f64, cpu0: (f64, Option<f64>), o: &Opts) -> bool {
    let me = (cpu_secs_self() - cpu0.0) / secs * 100.0;
    let server = match (cpu0.1, o.server_pid.and_then(cpu_secs_pid)) {
        (Some(a), Some(b)) => format!("{:.1}%", (b - a) / secs * 100.0),
        _ => "n/a".into(),
    };
    let connected = agents.iter().filter(|a| a.connected_at.is_some()).count();
    let dead = agents.iter().filter(|a| a.dead.is_some()).count();
    let mut received = 0u64;
    let mut span = 0u64;
    let mut silent = 0usize;
    let mut streams = 0usize;
    for a in agents {
        if a.window.is_empty() {
            silent += 1;
        }
        for w in a.window.values() {
            streams += 1;
            received += w.received;
            span += w.last + 1 - w.first;
        }
    }
    let reoffers: u32 = agents.iter().map(|a| a.offers - 1).sum();
    let expected = (50.0 * secs * agents.len() as f64).round() as u64;
    let lost = span.saturating_sub(received);
    let loss = if span > 0 {
        lost as f64 * 100.0 / span as f64
    } else {
        f64::NAN
    };
    let rate = received as f64 * 100.0 / expected.max(1) as f64;
    println!(
        "agents {} connected {connected} dead {dead} silent {silent} | window {secs:.1} s: \
         received {received} of {expected} expected ({rate:.2}%) on {streams} m-lines, \
         seq span {span}, lost {lost} ({loss:.3}%), re-offers {reoffers} \
         | sb-rtcload CPU {me:.1}% | server CPU {server}",
        agents.len()
    );
    let sent: u64 = agents.iter().map(|a| a.sent).sum();
    let total_rx: u64 = agents.iter().map(|a| a.received).sum();
    println!("totals: sent {sent} packets, received {total_rx}");
    dead == 0 && silent == 0 && connected == agents.len() && agents.len() == o.agents
}

fn main() -> ExitCode {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(o) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sb-rtcload: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The unsafe edges of the generator: the epoll wrapper and the CPU
    //! clocks, checked against the kernel.

    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn epoll_reports_a_readable_socket_and_times_out_otherwise() {
        let ep = Epoll::new().expect("epoll");
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        ep.add(rx.as_raw_fd(), 7).expect("register");
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 4];
        // Nothing sent: the wait ends by its timeout with no event.
        assert_eq!(ep.wait(&mut events, Duration::from_millis(5)), 0);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.send_to(b"x", rx.local_addr().expect("addr"))
            .expect("send");
        let n = ep.wait(&mut events, Duration::from_millis(1000));
        assert_eq!(n, 1);
        let token = events[0].u64;
        assert_eq!(token, 7);
        // A closed fd cannot be registered: the error comes back, no panic.
        assert!(ep.add(-1, 8).is_err());
    }

    #[test]
    fn cpu_clocks_move_and_read_this_process() {
        let before = cpu_secs_self();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_secs_self() > before, "getrusage counts our work");
        let mine = cpu_secs_pid(std::process::id()).expect("/proc/self/stat parses");
        assert!(mine >= 0.0);
        assert!(cpu_secs_pid(u32::MAX).is_none(), "no such process");
    }
}
