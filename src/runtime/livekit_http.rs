//! The LiveKit port (`[livekit] port`, 7880) on every shard: HTTP `validate`,
//! refusals, and the signaling WebSocket the SDKs connect to.
//!
//! Data flow: the kernel spreads connections over the shards' SO_REUSEPORT
//! listeners ([`bind`]); a shard's [`serve`] loop accepts, reads one HTTP/1.1
//! request head within [`MAX_REQUEST_HEAD`] bytes and [`REQUEST_TIMEOUT`], and
//! asks the sans-IO front door (`livekit::http::route`) what to do: write an
//! answer and close (validate, CORS preflight, 401/404/405/400), or write
//! `101 Switching Protocols` and run [`websocket_loop`]: client frames go into
//! a [`SignalPeer`] (the signal session), its frames go out; WebSocket ping,
//! pong and the close handshake (RFC 6455 s5.5) are tungstenite's, frames are
//! bounded by [`MAX_SIGNAL_MESSAGE`].
//!
//! Owns: the listeners, the per-shard connection bound
//! ([`MAX_CONNS_PER_SHARD`]; beyond it new connections are closed at once),
//! the read/time bounds, and the glue between a socket and a signal session.
//! It reads the clock (`Instant::now()`, `SystemTime::now()` for token times)
//! and passes it down; the protocol logic never does.
//!
//! Which shard: the room's owner, `room_shard(room, shards)` (FNV-1a, as
//! SIP), so a room's signal sessions and its media live on one thread. Once
//! `route` has admitted a connection on shard A for a room owned by B, A hands
//! B a [`Handoff`] over the mesh, once: a `dup`ed fd of the stream (glommio
//! 0.9's `TcpStream` is `FromRawFd` but not `IntoRawFd`), the bytes read past
//! the request head, and the admission. B rebuilds a `TcpStream`
//! ([`adopt`]), writes the 101 and runs the WebSocket. A then drops its own
//! fd without `shutdown(2)`, which would end the connection for B too. When
//! the mesh link is full or gone, A answers 503 (logged, rate-limited): the
//! SDKs retry.
//!
//! Signal session: an admitted connection joins its room's `RoomSignal`
//! through `runtime::signal_rooms` (which also seats the shard's SIP callers
//! in those rooms); a join the room refuses is closed with 1008 and the reason.
//! WebRTC connects through `signal_rooms::WebRtc` (media routing is not there
//! yet).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use futures_util::SinkExt;
use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{debug, info, warn};

use super::mesh::ShardMsg;
use super::shard::LogLimiter;
use super::signal_rooms::{Notify, SignalRooms};
use crate::livekit::http::{parse_head, route, Reply, Upgrade};
use crate::livekit::token::KeyStore;
use crate::livekit::twirp::{self, TwirpRequest, TwirpResponse};
use crate::sip::endpoint::room_shard;

/// Largest request head read (request line and headers). The Python SDK's v1
/// `join_request=` is ~2.2 KB percent-encoded; a token ~0.5 KB.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// A request head must be complete this long after the accept.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one shard holds at once (requests and WebSockets).
pub const MAX_CONNS_PER_SHARD: usize = 4096;
/// Largest WebSocket message (and frame) accepted from a client: an SDP offer
/// with many transceivers is a few KB; this leaves room and bounds memory.
pub const MAX_SIGNAL_MESSAGE: usize = 256 * 1024;
/// How long we wait for the client's Close after sending ours (RFC 6455
/// s7.1.1: the server should close the TCP connection first, after the
/// handshake).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A write (an answer, a frame) that makes no progress for this long ends the
/// connection: a client that stops reading must not hold a slot forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The close reason while `livekit::signal` does not exist.
pub const NO_SESSION_REASON: &str = "switchboard: signal session not implemented yet";

/// The bound, listening sockets of every shard, not yet in an executor.
#[derive(Debug)]
pub struct LiveKitSockets {
    pub addr: SocketAddr,
    pub per_shard: Vec<Socket>,
}

/// One SO_REUSEPORT listener per shard on `addr`. Binding once without
/// SO_REUSEPORT first makes "someone else has the port" (a livekit-server, a
/// second switchboard) an error instead of a silent share of the traffic.
pub fn bind(addr: SocketAddr, shards: usize) -> io::Result<LiveKitSockets> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let probe = Socket::new(domain, Type::STREAM, None)?;
    probe.set_reuse_address(true)?;
    probe.bind(&SockAddr::from(addr))?;
    drop(probe);
    let per_shard = (0..shards.max(1))
        .map(|_| {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.bind(&SockAddr::from(addr))?;
            s.listen(1024)?;
            Ok(s)
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(LiveKitSockets { addr, per_shard })
}

/// Hand a listening socket to this thread's glommio reactor (inside an
/// executor).
pub fn into_glommio_listener(s: Socket) -> TcpListener {
    // SAFETY: `into_raw_fd` gives up ownership of a valid, listening TCP
    // socket; glommio's TcpListener takes sole ownership and closes it on drop.
    unsafe { TcpListener::from_raw_fd(s.into_raw_fd()) }
}

/// A shard's LiveKit front: what every connection task of the shard shares.
pub struct Front {
    pub shard: usize,
    pub shards: usize,
    keys: KeyStore,
    open: Cell<usize>,
    max_conns: usize,
    log: LogLimiter,
    /// The shard's LiveKit rooms (signal side), shared with the SIP side.
    pub rooms: Rc<RefCell<SignalRooms>>,
}

/// How an admitted connection reaches another shard: the shard's mesh
/// (`Shard::mesh_offer`); `false` when the link did not take it.
pub type HandOver = Rc<dyn Fn(usize, ShardMsg) -> bool>;

impl Front {
    pub fn new(shard: usize, shards: usize, keys: KeyStore) -> Front {
        Front {
            shard,
            shards,
            keys,
            open: Cell::new(0),
            max_conns: MAX_CONNS_PER_SHARD,
            log: LogLimiter::default(),
            rooms: Rc::new(RefCell::new(SignalRooms::new(shard, rand::random()))),
        }
    }

    /// At most `max` connections at once (tests; production uses
    /// [`MAX_CONNS_PER_SHARD`]).
    pub fn with_limit(mut self, max: usize) -> Front {
        self.max_conns = max;
        self
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.get()
    }
}

/// Counts a connection for as long as it lives.
struct Slot(Rc<Front>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
    }
}

/// An admitted connection on its way to the room's owner shard.
#[derive(Debug)]
pub struct Handoff {
    /// A `dup` of the arrival shard's socket.
    pub fd: OwnedFd,
    /// Bytes read past the request head (normally none: clients wait for 101).
    pub prefix: Vec<u8>,
    pub what: Handed,
    pub peer: Option<SocketAddr>,
}

/// What the owner shard is to do with a handed-over connection.
#[derive(Debug)]
pub enum Handed {
    /// Answer 101 and run the signal session.
    Signal(Box<Upgrade>),
    /// Carry out a RoomService call and answer it.
    Twirp(Box<TwirpRequest>),
}

/// On the owner shard: take a handed-over connection and serve it.
pub fn adopt(front: &Rc<Front>, h: Handoff) {
    if front.open.get() >= front.max_conns {
        if let Some(suppressed) = front.log.allow(Instant::now()) {
            warn!(
                limit = front.max_conns,
                suppressed, "handed-over LiveKit connection dropped: shard at its limit"
            );
        }
        return;
    }
    front.open.set(front.open.get() + 1);
    let slot = Slot(Rc::clone(front));
    // SAFETY: `h.fd` is an open, connected TCP socket (a `dup` made by the
    // arrival shard) that this Handoff owns alone; ownership moves to the
    // glommio TcpStream, which closes it on drop.
    let stream = unsafe { TcpStream::from_raw_fd(h.fd.into_raw_fd()) };
    // The timeout is per glommio stream, not per socket: set it again.
    if let Err(e) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
        debug!(peer = ?h.peer, error = %e, "write timeout not set");
    }
    let front_rooms = Rc::clone(&front.rooms);
    glommio::spawn_local(async move {
        match h.what {
            Handed::Signal(up) => upgraded(&front_rooms, stream, h.prefix, &up, h.peer).await,
            Handed::Twirp(req) => serve_twirp(&front_rooms, stream, &req, h.peer).await,
        }
        drop(slot);
    })
    .detach();
}

/// Accept and serve connections until the listener fails for good.
pub async fn serve(front: Rc<Front>, hand_over: HandOver, listener: TcpListener) {
    loop {
        let mut stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                if let Some(suppressed) = front.log.allow(Instant::now()) {
                    warn!(error = %e, suppressed, "LiveKit accept failed");
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if front.open.get() >= front.max_conns {
            if let Some(suppressed) = front.log.allow(Instant::now()) {
                warn!(
                    limit = front.max_conns,
                    suppressed, "LiveKit connection refused: shard at its limit"
                );
            }
            // Closing without reading: a flood costs an accept and a close.
            let _ = stream.close().await;
            continue;
        }
        front.open.set(front.open.get() + 1);
        let slot = Slot(Rc::clone(&front));
        let hand_over = Rc::clone(&hand_over);
        glommio::spawn_local(async move {
            let front = Rc::clone(&slot.0);
            connection(&front, &*hand_over, stream).await;
            drop(slot);
        })
        .detach();
    }
}

/// One connection: a request head, then an answer or a WebSocket.
async fn connection(
    front: &Front,
    hand_over: &dyn Fn(usize, ShardMsg) -> bool,
    mut stream: TcpStream,
) {
    let peer = stream.peer_addr().ok();
    if let Err(e) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
        debug!(?peer, error = %e, "write timeout not set");
    }
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let (head, len) = loop {
        let read = futures_lite::future::or(async { Some(stream.read(&mut chunk).await) }, async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            None
        })
        .await;
        match read {
            Some(Ok(n)) if n > 0 => {
                // Take no more than the bound allows.
                let n = n.min(MAX_REQUEST_HEAD - buf.len());
                buf.extend_from_slice(&chunk[..n]);
            }
            // Closed, failed or too slow: nothing worth answering.
            _ => return,
        }
        match parse_head(&buf, MAX_REQUEST_HEAD) {
            Ok(Some(done)) => break done,
            Ok(None) => continue,
            Err(e) => {
                debug!(?peer, error = %e, "bad LiveKit HTTP request");
                let _ = stream.write_all(&e.answer()).await;
                let _ = stream.close().await;
                return;
            }
        }
    };
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if head.target.starts_with("/twirp/") {
        let body = buf[len..].to_vec();
        return twirp_request(front, hand_over, stream, &head, body, deadline, peer).await;
    }
    match route(&head, &front.keys, now_unix) {
        Reply::Answer(answer) => {
            debug!(?peer, method = %head.method, status = answer.status, "LiveKit HTTP answer");
            let _ = stream.write_all(&answer.to_bytes()).await;
            let _ = stream.close().await;
        }
        Reply::Upgrade(up) => {
            let owner = room_shard(&up.admission.room, front.shards);
            info!(?peer, room = %up.admission.room, identity = %up.admission.identity,
                owner, "LiveKit signal connection admitted");
            let prefix = buf[len..].to_vec();
            if owner == front.shard {
                return upgraded(&front.rooms, stream, prefix, &up, peer).await;
            }
            // SAFETY: dup(2) of the fd this stream owns and keeps open for
            // the call; the new fd, if any, is owned by `OwnedFd` alone.
            let dup = unsafe { libc::dup(stream.as_raw_fd()) };
            if dup < 0 {
                warn!(?peer, error = %io::Error::last_os_error(), "dup failed; serving here");
                return upgraded(&front.rooms, stream, prefix, &up, peer).await;
            }
            // SAFETY: `dup` is a fresh, open fd nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(dup) };
            let room = up.admission.room.clone();
            let handoff = Handoff {
                fd,
                prefix,
                what: Handed::Signal(up),
                peer,
            };
            if hand_over(owner, ShardMsg::LiveKit(handoff)) {
                debug!(?peer, %room, owner, "LiveKit connection handed to the room's owner");
                // Dropped, not closed: `close` would shut the socket down for
                // the owner too.
                drop(stream);
            } else {
                // The hand-off (and its dup) is gone; the admission with it.
                if let Some(suppressed) = front.log.allow(Instant::now()) {
                    warn!(?peer, %room, owner, suppressed,
                        "mesh link full or closed: LiveKit connection refused");
                }
                let busy = crate::livekit::http::Response::text(503, "try again");
                let _ = stream.write_all(&busy.to_bytes()).await;
                let _ = stream.close().await;
            }
        }
    }
}

/// A Twirp call (`POST /twirp/livekit.RoomService/...`): read its body
/// (bounded in size and time), check it, and carry it out on the room's
/// owner shard (handing the connection over, as for a WebSocket).
async fn twirp_request(
    front: &Front,
    hand_over: &dyn Fn(usize, ShardMsg) -> bool,
    mut stream: TcpStream,
    head: &crate::livekit::http::RequestHead,
    mut body: Vec<u8>,
    deadline: Instant,
    peer: Option<SocketAddr>,
) {
    let answer = |r: TwirpResponse| r.to_bytes();
    let path = head
        .target
        .split_once('?')
        .map_or(&*head.target, |(p, _)| p);
    if let Err(r) = twirp::check_route(&head.method, path) {
        let _ = stream.write_all(&answer(r)).await;
        let _ = stream.close().await;
        return;
    }
    let n = match head.content_length {
        Some(n) if n <= twirp::MAX_BODY => n,
        Some(_) => {
            let mut r = TwirpResponse::error("malformed", "request body too large");
            r.status = 413;
            let _ = stream.write_all(&answer(r)).await;
            let _ = stream.close().await;
            return;
        }
        None => {
            let r = TwirpResponse::error("malformed", "Content-Length is required");
            let _ = stream.write_all(&answer(r)).await;
            let _ = stream.close().await;
            return;
        }
    };
    let mut chunk = [0u8; 2048];
    while body.len() < n {
        let read = futures_lite::future::or(async { Some(stream.read(&mut chunk).await) }, async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            None
        })
        .await;
        match read {
            Some(Ok(k)) if k > 0 => body.extend_from_slice(&chunk[..k.min(n - body.len())]),
            _ => return,
        }
    }
    body.truncate(n);
    let path = head
        .target
        .split_once('?')
        .map_or(&*head.target, |(p, _)| p);
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let req = match twirp::parse(
        &head.method,
        path,
        head.content_type.as_deref(),
        head.authorization.as_deref(),
        &body,
        &front.keys,
        now_unix,
    ) {
        Ok(r) => r,
        Err(r) => {
            info!(?peer, path, status = r.status, "Twirp call refused");
            let _ = stream.write_all(&answer(r)).await;
            let _ = stream.close().await;
            return;
        }
    };
    let owner = room_shard(req.call.room(), front.shards);
    if owner == front.shard {
        return serve_twirp(&front.rooms, stream, &req, peer).await;
    }
    // SAFETY: dup(2) of the fd this stream owns and keeps open for the
    // call; the new fd, if any, is owned by `OwnedFd` alone.
    let dup = unsafe { libc::dup(stream.as_raw_fd()) };
    if dup < 0 {
        warn!(?peer, error = %io::Error::last_os_error(), "dup failed; Twirp call refused");
        let _ = stream
            .write_all(&answer(TwirpResponse::error("unavailable", "try again")))
            .await;
        return;
    }
    // SAFETY: `dup` is a fresh, open fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(dup) };
    let handoff = Handoff {
        fd,
        prefix: Vec::new(),
        what: Handed::Twirp(Box::new(req)),
        peer,
    };
    if hand_over(owner, ShardMsg::LiveKit(handoff)) {
        drop(stream);
    } else {
        let _ = stream
            .write_all(&answer(TwirpResponse::error("unavailable", "try again")))
            .await;
        let _ = stream.close().await;
    }
}

/// On the room's owner shard: carry out a RoomService call and answer it.
/// Phone callers it disconnects are hung up (BYE) after the rooms are
/// released (the SIP side reports back into them).
async fn serve_twirp(
    rooms: &Rc<RefCell<SignalRooms>>,
    mut stream: TcpStream,
    req: &TwirpRequest,
    peer: Option<SocketAddr>,
) {
    let (outcome, hangups, hang_up) = {
        let mut r = rooms.borrow_mut();
        let (outcome, hangups) = r.room_service(&req.call, Instant::now());
        (outcome, hangups, r.hang_up.clone())
    };
    let done = !matches!(
        outcome,
        twirp::Outcome::NotFound(_) | twirp::Outcome::Invalid(_)
    );
    info!(?peer, call = ?req.call, done, "Twirp RoomService call");
    if let Some(h) = hang_up {
        for (call_id, cause) in &hangups {
            h(call_id, *cause);
        }
    }
    let r = twirp::respond(req, outcome);
    let _ = stream.write_all(&r.to_bytes()).await;
    let _ = stream.close().await;
}

/// Write the 101 and run the WebSocket with a fresh signal session.
async fn upgraded(
    rooms: &Rc<RefCell<SignalRooms>>,
    mut stream: TcpStream,
    prefix: Vec<u8>,
    up: &Upgrade,
    peer: Option<SocketAddr>,
) {
    if stream.write_all(&up.response()).await.is_err() {
        return;
    }
    let stream = Prefixed::new(prefix, stream);
    let mut session = open_session(rooms, up, Instant::now());
    let end = websocket_loop(stream, session.as_mut()).await;
    info!(?peer, room = %up.admission.room, ?end, "LiveKit signal connection closed");
}

// ----- the signal session's interface ----------------------------------------

/// What the WebSocket loop needs of a signal session (`livekit::signal`), in
/// the str0m poll style: feed a frame or a timeout, then drain
/// [`poll_output`](SignalPeer::poll_output) until it says `Idle`.
pub trait SignalPeer {
    /// One binary message from the client (a protobuf `SignalRequest`).
    fn handle_frame(&mut self, frame: &[u8], now: Instant);
    /// The deadline of the last `Idle` has passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The WebSocket is gone (client close, error); no more output is taken.
    fn handle_closed(&mut self, now: Instant);
    fn poll_output(&mut self, now: Instant) -> SignalOutput;
    /// Signalled when output is queued from elsewhere (another participant's
    /// request, a timer): the loop then drains `poll_output` again.
    fn notify(&self) -> Option<Rc<Notify>> {
        None
    }
}

/// What a signal session asks the loop to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalOutput {
    /// Send one binary message (a protobuf `SignalResponse`).
    Frame(Vec<u8>),
    /// Close the WebSocket with this code and reason (at most 123 bytes,
    /// RFC 6455 s5.5).
    Close { code: u16, reason: String },
    /// Nothing to do until `Some(deadline)` or the next frame.
    Idle(Option<Instant>),
}

/// The session for an admitted connection: a participant of its room, or
/// (when the room refuses the join) a session that only closes with the reason.
fn open_session(
    rooms: &Rc<RefCell<SignalRooms>>,
    up: &Upgrade,
    now: Instant,
) -> Box<dyn SignalPeer> {
    match SignalRooms::connect(rooms, up, now) {
        Ok(c) => Box::new(c),
        Err((code, reason)) => Box::new(Refused {
            code,
            reason: Some(reason),
        }),
    }
}

/// A join the room refused: close with its reason.
struct Refused {
    code: u16,
    reason: Option<String>,
}

impl SignalPeer for Refused {
    fn handle_frame(&mut self, _frame: &[u8], _now: Instant) {}
    fn handle_timeout(&mut self, _now: Instant) {}
    fn handle_closed(&mut self, _now: Instant) {}
    fn poll_output(&mut self, _now: Instant) -> SignalOutput {
        match self.reason.take() {
            Some(mut reason) => {
                // RFC 6455 s5.5: a close reason fits in 123 bytes.
                while reason.len() > 123 {
                    reason.pop();
                }
                SignalOutput::Close {
                    code: self.code,
                    reason,
                }
            }
            None => SignalOutput::Idle(None),
        }
    }
}

/// Stands in for `livekit::signal` until it exists: says so and closes.
#[derive(Debug, Default)]
pub struct NoSession {
    said: bool,
}

impl SignalPeer for NoSession {
    fn handle_frame(&mut self, _frame: &[u8], _now: Instant) {}
    fn handle_timeout(&mut self, _now: Instant) {}
    fn handle_closed(&mut self, _now: Instant) {}
    fn poll_output(&mut self, _now: Instant) -> SignalOutput {
        if std::mem::replace(&mut self.said, true) {
            return SignalOutput::Idle(None);
        }
        warn!("{NO_SESSION_REASON}: closing the WebSocket");
        SignalOutput::Close {
            code: u16::from(CloseCode::Error),
            reason: NO_SESSION_REASON.into(),
        }
    }
}

/// How a WebSocket connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEnd {
    /// The client closed (its Close frame, or the TCP connection went away).
    ByClient,
    /// The session asked to close and the handshake completed (or timed out).
    BySession,
    /// A protocol error, an oversized message or an IO error.
    Failed(String),
}

/// Run a WebSocket on `stream` (already past the 101) with `session` until
/// either side closes. Text messages (protobuf JSON, which livekit-server also
/// accepts) are refused with close code 1003 until an SDK needs them.
pub async fn websocket_loop<S>(stream: S, session: &mut dyn SignalPeer) -> WsEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_SIGNAL_MESSAGE))
        .max_frame_size(Some(MAX_SIGNAL_MESSAGE));
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
    loop {
        // Drain the session (the poll contract), then wait for a frame or the
        // session's deadline.
        let deadline = loop {
            match session.poll_output(Instant::now()) {
                SignalOutput::Frame(data) => {
                    if let Err(e) = ws.feed(Message::Binary(data.into())).await {
                        session.handle_closed(Instant::now());
                        return WsEnd::Failed(e.to_string());
                    }
                }
                SignalOutput::Close { code, reason } => {
                    return close(ws, CloseCode::from(code), &reason).await;
                }
                SignalOutput::Idle(d) => break d,
            }
        };
        if let Err(e) = ws.flush().await {
            session.handle_closed(Instant::now());
            return WsEnd::Failed(e.to_string());
        }
        let notify = session.notify();
        let next = futures_lite::future::or(async { Some(Some(ws.next().await)) }, async {
            let timer = async {
                match deadline {
                    Some(d) => {
                        glommio::timer::sleep(d.saturating_duration_since(Instant::now())).await
                    }
                    None => futures_lite::future::pending::<()>().await,
                }
                None
            };
            let woken = async {
                match &notify {
                    Some(n) => n.notified().await,
                    None => futures_lite::future::pending::<()>().await,
                }
                Some(None)
            };
            futures_lite::future::or(timer, woken).await
        })
        .await;
        let now = Instant::now();
        let next = match next {
            // Output queued from elsewhere: drain it.
            Some(None) => continue,
            Some(Some(n)) => Some(n),
            None => None,
        };
        match next {
            None => session.handle_timeout(now),
            Some(None) => {
                session.handle_closed(now);
                return WsEnd::ByClient;
            }
            Some(Some(Ok(Message::Binary(data)))) => session.handle_frame(&data, now),
            Some(Some(Ok(Message::Text(_)))) => {
                session.handle_closed(now);
                return close(ws, CloseCode::Unsupported, "text frames are not supported").await;
            }
            // tungstenite queued the pong itself; the next flush sends it.
            Some(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
            Some(Some(Ok(Message::Close(_)))) => {
                // tungstenite queued our Close reply: send it, then wait for
                // the end of the stream (the handshake is complete).
                session.handle_closed(now);
                let _ = ws.flush().await;
                return WsEnd::ByClient;
            }
            Some(Some(Err(e))) => {
                session.handle_closed(now);
                // Tell the client why when the protocol allows it (RFC 6455
                // s7.4.1: 1009 for too big, 1002 for a protocol error).
                let code = match &e {
                    async_tungstenite::tungstenite::Error::Capacity(_) => CloseCode::Size,
                    async_tungstenite::tungstenite::Error::Protocol(_) => CloseCode::Protocol,
                    _ => return WsEnd::Failed(e.to_string()),
                };
                let _ = close(ws, code, "").await;
                return WsEnd::Failed(e.to_string());
            }
        }
    }
}

/// Send our Close and wait (bounded) for the client's, reading and dropping
/// whatever else it still sends (RFC 6455 s5.5.1).
async fn close<S>(mut ws: WebSocketStream<S>, code: CloseCode, reason: &str) -> WsEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if let Err(e) = ws.close(Some(frame)).await {
        return WsEnd::Failed(e.to_string());
    }
    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
    futures_lite::future::or(drain, glommio::timer::sleep(CLOSE_TIMEOUT)).await;
    WsEnd::BySession
}

// ----- a stream with bytes already read ---------------------------------------

/// A stream whose first bytes were already read into a buffer (the bytes
/// after the HTTP request head). Also what a hand-off to the owner shard will
/// carry: the fd plus these bytes.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.len().min(this.prefix.len() - this.at);
            buf[..n].copy_from_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::protocol::CloseFrame;
    use glommio::LocalExecutorBuilder;

    /// Echoes every frame back; closes (1000, "bye") on the frame `bye`.
    #[derive(Default)]
    struct Echo {
        out: Vec<SignalOutput>,
        closed: bool,
        frames: usize,
    }

    impl SignalPeer for Echo {
        fn handle_frame(&mut self, frame: &[u8], _now: Instant) {
            self.frames += 1;
            if frame == b"bye" {
                self.out.push(SignalOutput::Close {
                    code: 1000,
                    reason: "bye".into(),
                });
            } else {
                self.out.push(SignalOutput::Frame(frame.to_vec()));
            }
        }
        fn handle_timeout(&mut self, _now: Instant) {}
        fn handle_closed(&mut self, _now: Instant) {
            self.closed = true;
        }
        fn poll_output(&mut self, _now: Instant) -> SignalOutput {
            if self.out.is_empty() {
                SignalOutput::Idle(None)
            } else {
                self.out.remove(0)
            }
        }
    }

    /// A connected pair on loopback: (server side, client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = glommio::spawn_local(async move { TcpStream::connect(addr).await.unwrap() });
        let s = l.accept().await.unwrap();
        (s, c.await)
    }

    /// Run `f` on a glommio executor on this thread.
    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        LocalExecutorBuilder::default().make().unwrap().run(f)
    }

    async fn client(stream: TcpStream) -> WebSocketStream<TcpStream> {
        WebSocketStream::from_raw_socket(stream, Role::Client, None).await
    }

    #[test]
    fn frames_echo_pings_are_answered_and_the_session_closes() {
        let (end, frames, closed, got) = run(async {
            let (s, c) = pair().await;
            let server = glommio::spawn_local(async move {
                let mut echo = Echo::default();
                let end = websocket_loop(Prefixed::new(Vec::new(), s), &mut echo).await;
                (end, echo.frames, echo.closed)
            });
            let mut ws = client(c).await;
            let mut got = Vec::new();
            ws.send(Message::Binary(b"one".to_vec().into()))
                .await
                .unwrap();
            got.push(ws.next().await.unwrap().unwrap());
            ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
            got.push(ws.next().await.unwrap().unwrap());
            ws.send(Message::Binary(b"bye".to_vec().into()))
                .await
                .unwrap();
            got.push(ws.next().await.unwrap().unwrap());
            // Completing the close handshake ends the stream on both sides.
            while let Some(Ok(_)) = ws.next().await {}
            let (end, frames, closed) = server.await;
            (end, frames, closed, got)
        });
        assert_eq!(end, WsEnd::BySession);
        assert_eq!(frames, 2);
        assert!(!closed, "the session closed it, it was not told of a close");
        assert_eq!(got[0], Message::Binary(b"one".to_vec().into()));
        assert_eq!(got[1], Message::Pong(b"p".to_vec().into()));
        assert_eq!(
            got[2],
            Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into()
            }))
        );
    }

    #[test]
    fn client_close_and_oversized_messages_end_the_loop() {
        let (by_client, client_closed, too_big, close) = run(async {
            let (s, c) = pair().await;
            let server = glommio::spawn_local(async move {
                let mut echo = Echo::default();
                let end = websocket_loop(s, &mut echo).await;
                (end, echo.closed)
            });
            let mut ws = client(c).await;
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
            let (by_client, client_closed) = server.await;

            let (s, c) = pair().await;
            let server = glommio::spawn_local(async move {
                let mut echo = Echo::default();
                websocket_loop(s, &mut echo).await
            });
            let mut ws = client(c).await;
            let big = vec![7u8; MAX_SIGNAL_MESSAGE + 1];
            let _ = ws.send(Message::Binary(big.into())).await;
            let mut close = None;
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Close(f) = m {
                    close = f;
                }
            }
            (by_client, client_closed, server.await, close)
        });
        assert_eq!(by_client, WsEnd::ByClient);
        assert!(client_closed, "the session hears of the client's close");
        assert!(matches!(too_big, WsEnd::Failed(_)), "{too_big:?}");
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Size));
    }

    #[test]
    fn without_a_session_the_client_gets_a_close_with_the_reason() {
        let close = run(async {
            let (s, c) = pair().await;
            let server = glommio::spawn_local(async move {
                let mut none = NoSession::default();
                websocket_loop(s, &mut none).await
            });
            let mut ws = client(c).await;
            let mut close = None;
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Close(f) = m {
                    close = f;
                }
            }
            assert_eq!(server.await, WsEnd::BySession);
            close
        });
        let close = close.expect("a close frame");
        assert_eq!(close.code, CloseCode::Error);
        assert_eq!(close.reason.as_str(), NO_SESSION_REASON);
    }

    #[test]
    fn prefixed_bytes_come_first_then_the_stream() {
        let got = run(async {
            let (s, mut c) = pair().await;
            c.write_all(b"world").await.unwrap();
            c.close().await.unwrap();
            let mut p = Prefixed::new(b"hello ".to_vec(), s);
            let mut all = Vec::new();
            let mut small = [0u8; 4];
            loop {
                let n = p.read(&mut small).await.unwrap();
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&small[..n]);
            }
            all
        });
        assert_eq!(got, b"hello world");
    }

    #[test]
    fn the_port_is_refused_when_someone_else_listens() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        assert!(bind(addr, 2).is_err());
        drop(held);
        let s = bind(addr, 2).unwrap();
        assert_eq!(s.per_shard.len(), 2);
    }
}

#[cfg(test)]
mod serve_tests {
    use super::*;
    use glommio::LocalExecutorBuilder;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// One shard with a limit of 2: a third connection is closed unanswered
    /// while two are held; the held ones are still served; once they are gone
    /// new connections are served again.
    #[test]
    fn connections_beyond_the_limit_are_closed_at_once() {
        let sockets = bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let sock = sockets.per_shard.into_iter().next().unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let client_done = Arc::clone(&done);
        let client = std::thread::spawn(move || {
            let ask = |s: &mut std::net::TcpStream| {
                s.write_all(b"GET /rtc/validate HTTP/1.1\r\n\r\n").unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out
            };
            let connect = || {
                let s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            };
            let mut a = connect();
            let mut b = connect();
            // Let the server count both before the third arrives.
            std::thread::sleep(Duration::from_millis(200));
            let mut c = connect();
            let mut byte = [0u8; 1];
            let third = c.read(&mut byte);
            let held = (ask(&mut a), ask(&mut b));
            drop((a, b));
            std::thread::sleep(Duration::from_millis(200));
            let after = ask(&mut connect());
            client_done.store(true, Ordering::Relaxed);
            (third.ok(), held, after)
        });
        LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(async move {
                let front = Rc::new(Front::new(0, 1, KeyStore::dev()).with_limit(2));
                let never: HandOver = Rc::new(|_, _| false);
                let listener = into_glommio_listener(sock);
                glommio::spawn_local(serve(front, never, listener)).detach();
                while !done.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            });
        let (third, (a, b), after) = client.join().unwrap();
        assert_eq!(third, Some(0), "the connection over the limit is closed");
        for answer in [a, b, after] {
            assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
        }
    }
}
