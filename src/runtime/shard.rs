//! One shard's event loop: the driver between its sockets and its SIP endpoint.
//!
//! Data flow: UDP receive, TCP connection readers and mesh receivers call
//! [`Shard::on_inbound`]; the one timer task calls the endpoint's
//! `handle_timeout` at its next deadline; after every `handle_*` call the shard
//! drains `poll_output` until `Output::Idle`, carrying out each output (UDP send
//! queue, TCP write queue or new connection, the mesh, media ports). A stop
//! watcher polls the process-wide stop flags and runs the graceful shutdown.
//!
//! Owns: the shard's `Endpoint` (in a `RefCell`: tasks on one thread take turns
//! and never hold it across an await), its TCP connections, its media ports and
//! its single wake-up deadline. Reads the clock (`Instant::now()`) for the
//! endpoint, which never does.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::UdpSocket;
use tracing::{error, info, warn};

use super::media_driver::{MediaCommand, MediaNotice, ShardMedia, TICK};
use super::mesh::{self, Mesh, MeshError, ShardMsg};
use super::sip_transport::{self, Connections, QueueError, ShardSockets, MAX_DATAGRAM};
use super::{Limits, ShardCounters, StopFlags};
use crate::config::Config;
use crate::sip::endpoint::{Endpoint, Inbound, Output, Peer, Transmit, Transport};

/// Outputs taken in one drain before the shard lets other tasks run; only an
/// endpoint bug gets near it.
const MAX_OUTPUTS_PER_DRAIN: usize = 10_000;

/// How long a stopping shard waits for queued sends to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(250);

/// Everything a shard's thread needs to start (all `Send`).
pub struct ShardStart {
    pub shard: usize,
    pub shards: usize,
    pub config: Arc<Config>,
    pub limits: Limits,
    pub sockets: ShardSockets,
    /// This shard's LiveKit listener (`[livekit]`), if the port is open.
    pub livekit: Option<socket2::Socket>,
    pub mesh: Option<MeshBuilder<ShardMsg, Full>>,
    pub stop: Arc<StopFlags>,
    pub counters: Arc<ShardCounters>,
    pub nonce_secret: [u8; 16],
    pub seed: u64,
    /// Where the shard publishes its counters for `/metrics`.
    pub board: crate::metrics::Board,
}

/// Allows one log line per second per kind of trouble, and says how many were
/// suppressed in between, so a flood of bad peers cannot flood the log.
#[derive(Debug, Default)]
pub struct LogLimiter {
    next: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl LogLimiter {
    /// `Some(suppressed since the last line)` if a line may be logged now.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        match self.next.get() {
            Some(t) if now < t => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.next.set(Some(now + Duration::from_secs(1)));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

/// One shard's state, shared by its tasks (`Rc`: never leaves the thread).
pub struct Shard {
    pub id: usize,
    pub limits: Limits,
    pub counters: Arc<ShardCounters>,
    pub conns: RefCell<Connections>,
    pub log_tcp: LogLimiter,
    log_udp: LogLimiter,
    log_mesh: LogLimiter,
    log_media: LogLimiter,
    pub(super) endpoint: RefCell<Endpoint>,
    /// The endpoint's next deadline, as its last `Output::Idle` said.
    deadline: Cell<Option<Instant>>,
    /// Wakes the timer task when `deadline` changes.
    timer_kick: LocalSender<()>,
    udp_out: Option<LocalSender<(SocketAddr, Bytes)>>,
    mesh: Option<Mesh>,
    pub(super) media: RefCell<ShardMedia>,
    /// Wakes the media task when a call starts (it sleeps while there is none).
    media_kick: LocalSender<()>,
    /// What the LiveKit side asked of the media engine since the last media
    /// tick (bounded: see `queue_media_command`).
    media_commands: RefCell<std::collections::VecDeque<MediaCommand>>,
    /// The LiveKit port's per-shard state, when the port is open.
    livekit: Option<Rc<super::livekit_http::Front>>,
}

/// Media commands waiting for the next media tick at most; beyond, track
/// packets are dropped (a stalled media task must not grow memory).
const MAX_MEDIA_COMMANDS: usize = 16 * 1024;

impl Shard {
    /// Queue a LiveKit-side request for the media task and wake it.
    fn queue_media_command(&self, cmd: MediaCommand) {
        let mut q = self.media_commands.borrow_mut();
        if q.len() >= MAX_MEDIA_COMMANDS && matches!(cmd, MediaCommand::TrackPacket { .. }) {
            return;
        }
        q.push_back(cmd);
        drop(q);
        let _ = self.media_kick.try_send(());
    }

    /// Hand one received SIP message to the endpoint and carry out the result.
    pub fn on_inbound(self: &Rc<Self>, msg: Inbound) {
        let now = Instant::now();
        let Ok(mut ep) = self.endpoint.try_borrow_mut() else {
            // Unreachable by construction (no borrow spans an await, and the
            // drain never calls back here); drop rather than panic.
            error!("endpoint busy; inbound message dropped");
            return;
        };
        ep.handle_inbound(now, msg);
        self.drain(&mut ep, now);
    }

    fn on_timeout(self: &Rc<Self>, now: Instant) {
        let Ok(mut ep) = self.endpoint.try_borrow_mut() else {
            error!("endpoint busy at timeout");
            return;
        };
        self.counters.timer_fires.inc();
        ep.handle_timeout(now);
        self.drain(&mut ep, now);
    }

    fn on_mesh(self: &Rc<Self>, msg: ShardMsg) {
        self.counters.mesh_received.inc();
        match msg {
            ShardMsg::Inbound(m) => self.on_inbound(m),
            ShardMsg::Transmit(t) => self.send_tcp(t),
            ShardMsg::LiveKit(h) => match &self.livekit {
                Some(front) => super::livekit_http::adopt(front, h),
                // Every shard listens when one does; dropping closes it.
                None => warn!("LiveKit connection handed to a shard without the port"),
            },
        }
    }

    fn begin_shutdown(self: &Rc<Self>, now: Instant) {
        if let Ok(mut ep) = self.endpoint.try_borrow_mut() {
            ep.begin_shutdown(now);
            self.drain(&mut ep, now);
        }
    }

    fn is_drained(&self) -> bool {
        self.endpoint.try_borrow().is_ok_and(|ep| ep.is_drained())
    }

    /// Carry out the endpoint's outputs until it is idle (the poll contract).
    fn drain(self: &Rc<Self>, ep: &mut Endpoint, now: Instant) {
        for _ in 0..MAX_OUTPUTS_PER_DRAIN {
            match ep.poll_output(now) {
                Output::Transmit(t) => self.transmit(t),
                Output::Forward { shard, msg } => {
                    if shard == self.id {
                        // Ours after all: no need to cross the mesh.
                        ep.handle_inbound(now, msg);
                    } else {
                        self.mesh_send(shard, ShardMsg::Inbound(msg));
                    }
                }
                Output::MediaOpen { call, local } => {
                    let opened = self.media.borrow_mut().open(&call, local);
                    self.counters
                        .media_open
                        .set(self.media.borrow().open_ports() as u64);
                    if let Err(e) = opened {
                        self.counters.media_bind_failed.inc();
                        if let Some(suppressed) = self.log_media.allow(now) {
                            warn!(call_id = %call, error = %e, suppressed, "media port not opened");
                        }
                        ep.handle_media_failed(now, &call);
                    }
                }
                Output::Ringing { call, room, caller } => {
                    if let Some(front) = &self.livekit {
                        front
                            .rooms
                            .borrow_mut()
                            .sip_call_ringing(&call, &room, &caller, now);
                    }
                }
                Output::MediaStart(spec) => {
                    if let Some(front) = &self.livekit {
                        front.rooms.borrow_mut().sip_call_started(&spec, now);
                    }
                    self.media.borrow_mut().start(now, spec);
                    let _ = self.media_kick.try_send(());
                }
                Output::MediaClose { call, record } => {
                    if let Some(front) = &self.livekit {
                        front.rooms.borrow_mut().sip_call_ended(&call.to_string());
                    }
                    let mut media = self.media.borrow_mut();
                    let figures = media.close(now, &call);
                    self.counters.media_open.set(media.open_ports() as u64);
                    record.log(&figures);
                }
                Output::Idle(deadline) => {
                    self.set_deadline(deadline);
                    return;
                }
            }
        }
        // Not idle yet: let other tasks run, continue from the timer task.
        self.counters.drain_overruns.inc();
        warn!(
            limit = MAX_OUTPUTS_PER_DRAIN,
            "endpoint still busy after a full drain"
        );
        self.set_deadline(Some(now));
    }

    fn set_deadline(&self, deadline: Option<Instant>) {
        if self.deadline.get() != deadline {
            self.deadline.set(deadline);
            // Capacity 1: a kick already pending wakes the timer just as well.
            let _ = self.timer_kick.try_send(());
        }
    }

    fn transmit(self: &Rc<Self>, t: Transmit) {
        match t.peer.transport {
            Transport::Udp => self.send_udp(t.peer.remote, t.data),
            Transport::Tcp => match t.peer.conn {
                Some(c) if c.shard != self.id => self.mesh_send(c.shard, ShardMsg::Transmit(t)),
                _ => self.send_tcp(t),
            },
        }
    }

    fn send_udp(&self, to: SocketAddr, data: Bytes) {
        let Some(q) = &self.udp_out else {
            self.counters.udp_send_errors.inc();
            if let Some(suppressed) = self.log_udp.allow(Instant::now()) {
                warn!(%to, suppressed, "UDP transmit but sip.udp is off; dropped");
            }
            return;
        };
        if q.try_send((to, data)).is_err() {
            self.counters.udp_send_queue_full.inc();
            if let Some(suppressed) = self.log_udp.allow(Instant::now()) {
                warn!(%to, suppressed, "UDP send queue full; datagram dropped");
            }
        }
    }

    /// Send over a connection of this shard: the one named, else any to the
    /// remote, else a new one (RFC 3261 s18.2.2: responses go back on the
    /// request's connection, or a new one to the same address).
    fn send_tcp(self: &Rc<Self>, t: Transmit) {
        let id = self.conns.borrow().lookup(t.peer.conn, t.peer.remote);
        match id {
            Some(id) => match self.conns.borrow().queue(id, t.data) {
                Ok(()) => {}
                Err(QueueError::Full) => {
                    self.counters.tcp_queue_full.inc();
                    if let Some(suppressed) = self.log_tcp.allow(Instant::now()) {
                        warn!(remote = %t.peer.remote, id, suppressed,
                            "TCP write queue full; message dropped");
                    }
                }
                Err(QueueError::Gone) => self.counters.tcp_write_errors.inc(),
            },
            None => sip_transport::connect(self, t.peer.remote, t.data),
        }
    }

    fn mesh_send(&self, to: usize, msg: ShardMsg) {
        let r = match &self.mesh {
            Some(m) => m.try_send(to, msg),
            None => Err(MeshError::NoSuchShard(to)),
        };
        match r {
            Ok(()) => self.counters.mesh_sent.inc(),
            Err(e) => {
                match e {
                    MeshError::Full(_) => self.counters.mesh_dropped_full.inc(),
                    _ => self.counters.mesh_dropped_closed.inc(),
                }
                if let Some(suppressed) = self.log_mesh.allow(Instant::now()) {
                    warn!(error = %e, suppressed, "mesh message dropped");
                }
            }
        }
    }

    /// Send `msg` to shard `to` if its link takes it (counted either way);
    /// the caller keeps a fallback for `false` (the message is gone).
    pub(super) fn mesh_offer(&self, to: usize, msg: ShardMsg) -> bool {
        let Some(m) = &self.mesh else {
            return false;
        };
        match m.try_send(to, msg) {
            Ok(()) => {
                self.counters.mesh_sent.inc();
                true
            }
            Err(MeshError::Full(_)) => {
                self.counters.mesh_dropped_full.inc();
                false
            }
            Err(_) => {
                self.counters.mesh_dropped_closed.inc();
                false
            }
        }
    }

    /// Close TCP connection `id` of this shard (idempotent).
    pub fn close_conn(&self, id: u64) {
        let mut conns = self.conns.borrow_mut();
        if conns.remove(id) {
            self.counters.tcp_closed.inc();
            self.counters.tcp_open.set(conns.len() as u64);
        }
    }

    /// Messages still waiting to be sent.
    fn queued(&self) -> usize {
        self.udp_out.as_ref().map_or(0, |q| q.len()) + self.conns.borrow().queued()
    }
}

/// The media task: while calls exist, every `TICK` read what the RTP sockets
/// received, run the engine's mix and report timers, send; tell the endpoint
/// about media timeouts. Sleeps while the shard has no media.
async fn media_loop(shard: Rc<Shard>, kick: LocalReceiver<()>) {
    let mut notices = Vec::new();
    loop {
        let busy = shard.media.borrow().has_work();
        if busy {
            // Wake for the engine's next deadline (a room's 20 ms mix) when it
            // comes before the next read tick, so mixes go out on time.
            let wait = shard.media.borrow().next_wake(Instant::now(), TICK);
            glommio::timer::sleep(wait).await;
        } else if kick.recv().await.is_none() {
            return;
        }
        let now = Instant::now();
        {
            let commands = std::mem::take(&mut *shard.media_commands.borrow_mut());
            let mut media = shard.media.borrow_mut();
            for c in commands {
                media.apply(now, c);
            }
            media.tick(now, &mut notices);
        }
        for n in notices.drain(..) {
            match n {
                MediaNotice::Timeout(call) => {
                    if let Ok(mut ep) = shard.endpoint.try_borrow_mut() {
                        ep.handle_media_timeout(now, &call);
                        shard.drain(&mut ep, now);
                    }
                }
                MediaNotice::Speakers {
                    room,
                    callers,
                    tracks,
                } => {
                    if let Some(front) = &shard.livekit {
                        front
                            .rooms
                            .borrow_mut()
                            .media_speakers(&room, &callers, &tracks);
                    }
                }
                MediaNotice::Published(call, payload, ts) => {
                    if let Some(front) = &shard.livekit {
                        front
                            .rooms
                            .borrow_mut()
                            .caller_audio(&call.0, &payload, ts, now);
                    }
                }
                MediaNotice::Dtmf(call, digit) => {
                    if let Some(front) = &shard.livekit {
                        front.rooms.borrow_mut().sip_dtmf(&call.to_string(), digit);
                    }
                    if let Ok(mut ep) = shard.endpoint.try_borrow_mut() {
                        ep.handle_dtmf(now, &call, digit);
                        shard.drain(&mut ep, now);
                    }
                }
            }
        }
    }
}

/// The one timer of the shard: sleeps until the endpoint's deadline (or until
/// the deadline changes), then calls `handle_timeout`. No task per SIP timer.
async fn timer_loop(shard: Rc<Shard>, kick: LocalReceiver<()>) {
    loop {
        match shard.deadline.get() {
            None => {
                if kick.recv().await.is_none() {
                    return;
                }
            }
            Some(at) => {
                let now = Instant::now();
                if at > now {
                    futures_lite::future::or(
                        async {
                            let _ = kick.recv().await;
                        },
                        glommio::timer::sleep(at - now),
                    )
                    .await;
                    continue;
                }
                shard.on_timeout(now);
                if shard.deadline.get().is_some_and(|d| d <= now) {
                    // The endpoint asked again for a moment already past: do not
                    // spin on it.
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                } else {
                    futures_lite::future::yield_now().await;
                }
            }
        }
    }
}

async fn udp_recv_loop(shard: Rc<Shard>, socket: Rc<UdpSocket>, local: SocketAddr) {
    // One receive buffer per shard, reused.
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, remote)) => {
                let received = Instant::now();
                let remote = sip_transport::canonical(remote);
                shard.counters.udp_datagrams_in.inc();
                shard.counters.udp_bytes_in.add(n as u64);
                let bytes = &buf[..n];
                // Empty datagrams and bare CRLF keep-alives carry no message.
                if bytes.iter().all(|b| *b == b'\r' || *b == b'\n') {
                    continue;
                }
                // The one copy on this path: the endpoint keeps slices of the
                // message beyond the next receive, so it gets its own `Bytes`
                // (glommio cannot receive into caller-owned shared buffers).
                let data = Bytes::copy_from_slice(bytes);
                let peer = Peer {
                    transport: Transport::Udp,
                    remote,
                    local,
                    conn: None,
                };
                shard.on_inbound(Inbound::new(peer, data, received));
                // While datagrams keep coming, recv never waits: give the timer,
                // the stop watcher and TCP their turn when the time slice is up.
                glommio::yield_if_needed().await;
            }
            Err(e) => {
                shard.counters.udp_recv_errors.inc();
                if let Some(suppressed) = shard.log_udp.allow(Instant::now()) {
                    warn!(error = %e, suppressed, "UDP receive failed");
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn udp_send_loop(
    shard: Rc<Shard>,
    socket: Rc<UdpSocket>,
    local: SocketAddr,
    queue: LocalReceiver<(SocketAddr, Bytes)>,
) {
    while let Some((to, data)) = queue.recv().await {
        match socket
            .send_to(&data, sip_transport::for_socket(to, local))
            .await
        {
            Ok(n) => {
                shard.counters.udp_datagrams_out.inc();
                shard.counters.udp_bytes_out.add(n as u64);
            }
            Err(e) => {
                // Never fatal: an unreachable peer must not stop the shard.
                shard.counters.udp_send_errors.inc();
                if let Some(suppressed) = shard.log_udp.allow(Instant::now()) {
                    warn!(%to, error = %e, suppressed, "UDP send failed");
                }
            }
        }
        glommio::yield_if_needed().await;
    }
}

async fn join_mesh(
    builder: MeshBuilder<ShardMsg, Full>,
    limits: &Limits,
    stop: &StopFlags,
) -> Result<(Mesh, glommio::channels::channel_mesh::Receivers<ShardMsg>), String> {
    let give_up = async {
        let end = Instant::now() + limits.mesh_join_timeout;
        while Instant::now() < end && !stop.abort.load(Ordering::Relaxed) {
            glommio::timer::sleep(limits.stop_poll).await;
        }
        Err("the other shards did not join the mesh in time".to_string())
    };
    futures_lite::future::or(mesh::join(builder), give_up).await
}

/// Stops every shard when this one ends abnormally (an error return or a
/// panic): a gateway missing a shard loses a share of its SIP traffic, so it
/// must exit and be restarted (systemd `Restart=on-failure`).
struct FailGuard {
    stop: Arc<StopFlags>,
    clean: bool,
}

impl Drop for FailGuard {
    fn drop(&mut self) {
        if !self.clean {
            if std::thread::panicking() {
                error!("shard panicked; stopping all shards");
            } else {
                error!("shard failed; stopping all shards");
            }
            self.stop.abort.store(true, Ordering::Relaxed);
        }
    }
}

/// A shard's life: join the mesh, start the tasks, serve until told to stop,
/// drain, flush. Runs as the main future of the shard's executor.
pub async fn run(start: ShardStart) -> Result<(), String> {
    let ShardStart {
        shard: id,
        shards,
        config,
        limits,
        sockets,
        livekit,
        mesh,
        stop,
        counters,
        nonce_secret,
        seed,
        board,
    } = start;
    // Everything this thread runs belongs to this shard, so the span may stay
    // entered across awaits: no other shard's task is ever polled here.
    let span = tracing::info_span!("shard", shard = id);
    let _entered = span.enter();
    let mut guard = FailGuard {
        stop: Arc::clone(&stop),
        clean: false,
    };

    let (mesh, receivers) = match mesh {
        Some(b) => {
            let (m, r) = join_mesh(b, &limits, &stop).await?;
            if m.shard() != id {
                return Err(format!(
                    "mesh numbered this shard {} instead of {id}",
                    m.shard()
                ));
            }
            (Some(m), Some(r))
        }
        None => (None, None),
    };

    let now = Instant::now();
    let endpoint = Endpoint::new(
        Arc::clone(&config),
        id,
        shards,
        nonce_secret,
        seed,
        SystemTime::now(),
        now,
    );
    let (timer_kick, kick_rx) = local_channel::new_bounded(1);
    let udp = match sockets.udp {
        Some(s) => {
            let local = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or("SIP UDP socket has no local address")?;
            Some((Rc::new(sip_transport::into_glommio_udp(s)), local))
        }
        None => None,
    };
    let (udp_out, udp_out_rx) = match udp {
        Some(_) => {
            let (tx, rx) = local_channel::new_bounded(limits.udp_send_queue.max(1));
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let (media_kick, media_kick_rx) = local_channel::new_bounded(1);
    let media = ShardMedia::new(id, config.rtp.media_timeout(), config.rtp.hold_timeout())
        .map_err(|e| format!("cannot create the media epoll set: {e}"))?;
    let shard = Rc::new(Shard {
        id,
        limits: limits.clone(),
        counters,
        conns: RefCell::new(Connections::new(id)),
        log_tcp: LogLimiter::default(),
        log_udp: LogLimiter::default(),
        log_mesh: LogLimiter::default(),
        log_media: LogLimiter::default(),
        endpoint: RefCell::new(endpoint),
        deadline: Cell::new(None),
        timer_kick,
        udp_out,
        mesh,
        media: RefCell::new(media),
        media_kick,
        media_commands: RefCell::new(std::collections::VecDeque::new()),
        livekit: livekit.as_ref().map(|_| {
            Rc::new(super::livekit_http::Front::new(
                id,
                shards,
                config.livekit.keys.clone(),
            ))
        }),
    });
    glommio::spawn_local(media_loop(Rc::clone(&shard), media_kick_rx)).detach();

    glommio::spawn_local(timer_loop(Rc::clone(&shard), kick_rx)).detach();
    if let (Some((socket, local)), Some(rx)) = (udp, udp_out_rx) {
        glommio::spawn_local(udp_recv_loop(Rc::clone(&shard), Rc::clone(&socket), local)).detach();
        glommio::spawn_local(udp_send_loop(Rc::clone(&shard), socket, local, rx)).detach();
    }
    if let Some(s) = sockets.tcp {
        let listener = sip_transport::into_glommio_listener(s);
        glommio::spawn_local(sip_transport::accept_loop(Rc::clone(&shard), listener)).detach();
    }
    glommio::spawn_local(sip_transport::idle_sweep(Rc::clone(&shard))).detach();
    if let (Some(s), Some(front)) = (livekit, &shard.livekit) {
        let listener = super::livekit_http::into_glommio_listener(s);
        let mesh_of = Rc::clone(&shard);
        let hand_over: super::livekit_http::HandOver =
            Rc::new(move |to, msg| mesh_of.mesh_offer(to, msg));
        glommio::spawn_local(super::livekit_http::serve(
            Rc::clone(front),
            hand_over,
            listener,
        ))
        .detach();
        glommio::spawn_local(super::signal_rooms::timer_loop(Rc::clone(&front.rooms))).detach();
        // A participant's SIP DTMF is played to the caller by this shard's
        // media engine (the room and its calls live here). Holds the shard
        // weakly: the rooms belong to the shard, not the other way round.
        let weak = Rc::downgrade(&shard);
        front.rooms.borrow_mut().dtmf_to_caller =
            Some(Rc::new(move |call_id: &str, digit: char| {
                let Some(shard) = weak.upgrade() else {
                    return false;
                };
                let key = crate::sip::endpoint::CallKey(call_id.into());
                let Ok(mut media) = shard.media.try_borrow_mut() else {
                    return false;
                };
                let played = media.send_dtmf(Instant::now(), &key, digit, 100);
                drop(media);
                let _ = shard.media_kick.try_send(());
                played
            }));
        let weak = Rc::downgrade(&shard);
        front.rooms.borrow_mut().hang_up = Some(Rc::new(
            move |call_id: &str, cause: super::signal_rooms::HangUpCause| {
                let Some(shard) = weak.upgrade() else {
                    return;
                };
                let reason = match cause {
                    super::signal_rooms::HangUpCause::ParticipantRemoved => {
                        crate::sip::endpoint::EndReason::ParticipantRemoved
                    }
                    super::signal_rooms::HangUpCause::RoomDeleted => {
                        crate::sip::endpoint::EndReason::RoomDeleted
                    }
                };
                let key = crate::sip::endpoint::CallKey(call_id.into());
                let now = Instant::now();
                let Ok(mut ep) = shard.endpoint.try_borrow_mut() else {
                    warn!(call_id, "endpoint busy: call not hung up");
                    return;
                };
                ep.hang_up(now, &key, reason);
                shard.drain(&mut ep, now);
            },
        ));
        let weak = Rc::downgrade(&shard);
        front.rooms.borrow_mut().to_media = Some(Rc::new(move |cmd: MediaCommand| {
            if let Some(shard) = weak.upgrade() {
                shard.queue_media_command(cmd);
            }
        }));
        open_webrtc_port(id, &config, front);
    }
    if let Some(mut r) = receivers {
        for (_from, rx) in r.streams() {
            let shard = Rc::clone(&shard);
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    shard.on_mesh(msg);
                    glommio::yield_if_needed().await;
                }
            })
            .detach();
        }
    }
    glommio::spawn_local(super::metrics_http::publish_loop(
        Rc::clone(&shard),
        board.clone(),
    ))
    .detach();
    if id == 0 && config.metrics.port != 0 {
        let addr = SocketAddr::new(config.sip.bind, config.metrics.port);
        match super::metrics_http::bind(addr) {
            Ok(l) => {
                info!(%addr, "metrics on http://{addr}/metrics");
                glommio::spawn_local(super::metrics_http::serve(l, board.clone())).detach();
            }
            // Metrics are not worth refusing calls over: say so loudly, go on.
            Err(e) => error!(%addr, error = %e, "cannot bind the metrics port; /metrics disabled"),
        }
    }
    // The endpoint may have work before any input (none today): honour the
    // poll contract from the start.
    if let Ok(mut ep) = shard.endpoint.try_borrow_mut() {
        shard.drain(&mut ep, now);
    }
    info!(cpu = ?core_affinity_hint(), "shard running");

    // Stop watcher: a flag check every `stop_poll` is cheap and needs no
    // signal-safe wake-up path into the executor.
    let grace = Duration::from_secs(config.shutdown.grace_secs);
    let mut grace_end: Option<Instant> = None;
    loop {
        glommio::timer::sleep(limits.stop_poll).await;
        if stop.abort.load(Ordering::Relaxed) {
            info!("stopping at once");
            break;
        }
        let now = Instant::now();
        match grace_end {
            None => {
                if stop.drain.load(Ordering::Relaxed) {
                    info!(
                        grace_secs = grace.as_secs(),
                        "shutting down: draining calls"
                    );
                    shard.begin_shutdown(now);
                    grace_end = Some(now + grace);
                }
            }
            Some(end) => {
                if shard.is_drained() {
                    info!("drained");
                    break;
                }
                if now >= end {
                    warn!("grace period over; stopping with calls still up");
                    break;
                }
            }
        }
    }
    // Let the last responses and BYEs leave before the sockets close.
    let flush_end = Instant::now() + FLUSH_TIMEOUT;
    while shard.queued() > 0 && Instant::now() < flush_end {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if let Some(m) = &shard.mesh {
        m.close();
    }
    guard.clean = true;
    Ok(())
}

/// The CPU this thread runs on, for the start-up log line.
fn core_affinity_hint() -> Option<i32> {
    // SAFETY: sched_getcpu takes no arguments and only returns a number.
    let cpu = unsafe { libc::sched_getcpu() };
    (cpu >= 0).then_some(cpu)
}

/// The shard's WebRTC UDP port (`[livekit] rtc_port` + shard, or ephemeral):
/// bound on `sip.bind` (the host's first IPv4 address when that is the
/// wildcard, since ICE announces a concrete address). A port that cannot be
/// opened leaves the shard without WebRTC (logged): signaling still works.
fn open_webrtc_port(id: usize, config: &Config, front: &Rc<super::livekit_http::Front>) {
    let ip = if config.sip.bind.is_unspecified() {
        match super::system::host_ipv4() {
            Some(ip) => std::net::IpAddr::V4(ip),
            None => {
                warn!(
                    shard = id,
                    "no IPv4 address for WebRTC host candidates; WebRTC off"
                );
                return;
            }
        }
    } else {
        config.sip.bind
    };
    let port = match config.livekit.rtc_port {
        0 => 0,
        p => match u16::try_from(usize::from(p) + id) {
            Ok(p) => p,
            Err(_) => {
                warn!(shard = id, "rtc_port + shard is past 65535; WebRTC off");
                return;
            }
        },
    };
    let socket = match glommio::net::UdpSocket::bind(SocketAddr::new(ip, port)) {
        Ok(s) => s,
        Err(e) => {
            warn!(shard = id, %ip, port, error = %e, "cannot bind the WebRTC port; WebRTC off on this shard");
            return;
        }
    };
    let host = match socket.local_addr() {
        // Behind 1:1 NAT the candidate names `[sip] external_ip` (as SDP does
        // for RTP); str0m is handed that address as each datagram's
        // destination, so it matches the candidate it announced.
        Ok(a) => SocketAddr::new(config.sip.external_ip.unwrap_or(a.ip()), a.port()),
        Err(e) => {
            warn!(shard = id, error = %e, "WebRTC port has no address; WebRTC off");
            return;
        }
    };
    match super::signal_rooms::WebRtc::new(host) {
        Ok(w) => {
            info!(shard = id, %host, "WebRTC port open");
            front.rooms.borrow_mut().webrtc = Some(w);
            glommio::spawn_local(super::signal_rooms::webrtc_loop(
                Rc::clone(&front.rooms),
                socket,
            ))
            .detach();
        }
        Err(e) => warn!(shard = id, error = %e, "WebRTC off on this shard"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_allows_one_line_a_second_and_counts_the_rest() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(l.allow(t0 + Duration::from_millis(500)), None);
        assert_eq!(l.allow(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(l.allow(t0 + Duration::from_millis(1001)), None);
    }
}
