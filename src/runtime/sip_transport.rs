//! SIP transports of one shard: the SO_REUSEPORT UDP socket and TCP listener,
//! TCP connections (accepted and opened), and stream framing (RFC 3261 s18.3).
//!
//! Data flow: bytes off a socket -> (TCP: [`StreamFramer`] cuts messages by
//! Content-Length with `sip::message::frame_len`) -> `Inbound` to the shard's
//! endpoint; `Transmit` from the endpoint -> the UDP send queue or a connection's
//! write queue. The kernel spreads datagrams and connections over the shards'
//! sockets, which all share one address:port.
//!
//! Owns: the SIP sockets (bound on the main thread by [`bind_sip`], before any
//! executor starts, so bind errors are clear), this shard's TCP connection table,
//! and each connection's reader and writer tasks. Every queue is bounded: what
//! does not fit is dropped and counted, never waited for.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream, UdpSocket};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;
use tracing::{debug, warn};

use super::shard::Shard;
use crate::sip::endpoint::{ConnRef, Inbound, Peer, Transport};
use crate::sip::message::{frame_len, Framing};

/// Largest UDP payload (RFC 768 length field); the receive buffer is this big.
pub const MAX_DATAGRAM: usize = 65_535;

/// Bytes read from a TCP stream per read call.
const TCP_READ_CHUNK: usize = 16 * 1024;

/// Kernel socket buffers we ask for; capped by net.core.{r,w}mem_max
/// (see tuning/99-switchboard.conf). Large receive buffers absorb bursts of
/// INVITEs while a shard is busy.
const SIP_UDP_RCVBUF: usize = 4 << 20;
const SIP_UDP_SNDBUF: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("cannot bind SIP {transport} socket on {addr}: {source}{hint}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        source: io::Error,
        hint: &'static str,
    },
}

impl TransportError {
    fn bind(transport: &'static str, addr: SocketAddr, source: io::Error) -> TransportError {
        let hint = match source.raw_os_error() {
            Some(libc::EADDRINUSE) => " (another switchboard or SIP server already listens there)",
            Some(libc::EACCES) | Some(libc::EPERM) => {
                " (ports below 1024 need CAP_NET_BIND_SERVICE: \
                  AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit)"
            }
            Some(libc::EADDRNOTAVAIL) => " (no interface of this host has that address)",
            _ => "",
        };
        TransportError::Bind {
            transport,
            addr,
            source,
            hint,
        }
    }

    fn in_use(&self) -> bool {
        matches!(self, TransportError::Bind { source, .. }
            if source.raw_os_error() == Some(libc::EADDRINUSE))
    }
}

/// One shard's SIP sockets, bound and (TCP) listening, not yet in an executor.
#[derive(Debug)]
pub struct ShardSockets {
    pub udp: Option<Socket>,
    pub tcp: Option<Socket>,
}

/// All shards' SIP sockets.
#[derive(Debug)]
pub struct SipSockets {
    pub udp_addr: Option<SocketAddr>,
    pub tcp_addr: Option<SocketAddr>,
    pub per_shard: Vec<ShardSockets>,
}

fn domain(addr: SocketAddr) -> Domain {
    if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    }
}

fn local_of(s: &Socket) -> io::Result<SocketAddr> {
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// SO_REUSEPORT lets any process of the same user join the group and take a
/// share of the traffic. Binding once without it first fails if anything (a
/// previous switchboard still running, another SIP server) holds the port.
fn probe_exclusive(ty: Type, addr: SocketAddr) -> io::Result<()> {
    let s = Socket::new(domain(addr), ty, None)?;
    if ty == Type::STREAM {
        // TIME_WAIT leftovers of our last run must not count as "in use";
        // SO_REUSEADDR still refuses a port someone listens on.
        s.set_reuse_address(true)?;
    }
    s.bind(&SockAddr::from(addr))
}

fn udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(domain(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if let Err(e) = s.set_recv_buffer_size(SIP_UDP_RCVBUF) {
        debug!(error = %e, "SO_RCVBUF not set");
    }
    if let Err(e) = s.set_send_buffer_size(SIP_UDP_SNDBUF) {
        debug!(error = %e, "SO_SNDBUF not set");
    }
    s.bind(&SockAddr::from(addr))?;
    Ok(s)
}

fn tcp_listener(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(domain(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(1024)?;
    Ok(s)
}

fn try_bind(
    addr: SocketAddr,
    shards: usize,
    udp: bool,
    tcp: bool,
) -> Result<SipSockets, TransportError> {
    let mut port = addr.port();
    let mut udps = Vec::new();
    let mut tcps = Vec::new();
    let at = |port| SocketAddr::new(addr.ip(), port);
    if udp {
        if port != 0 {
            probe_exclusive(Type::DGRAM, at(port))
                .map_err(|e| TransportError::bind("UDP", at(port), e))?;
        }
        for _ in 0..shards {
            let s = udp_socket(at(port)).map_err(|e| TransportError::bind("UDP", at(port), e))?;
            if port == 0 {
                // Port 0: the first shard's socket picks, the others join it.
                port = local_of(&s)
                    .map_err(|e| TransportError::bind("UDP", at(0), e))?
                    .port();
            }
            udps.push(s);
        }
    }
    if tcp {
        if port != 0 {
            probe_exclusive(Type::STREAM, at(port))
                .map_err(|e| TransportError::bind("TCP", at(port), e))?;
        }
        for _ in 0..shards {
            let s = tcp_listener(at(port)).map_err(|e| TransportError::bind("TCP", at(port), e))?;
            if port == 0 {
                port = local_of(&s)
                    .map_err(|e| TransportError::bind("TCP", at(0), e))?
                    .port();
            }
            tcps.push(s);
        }
    }
    let udp_addr = udp.then(|| at(port));
    let tcp_addr = tcp.then(|| at(port));
    let mut udps = udps.into_iter();
    let mut tcps = tcps.into_iter();
    let per_shard = (0..shards)
        .map(|_| ShardSockets {
            udp: udps.next(),
            tcp: tcps.next(),
        })
        .collect();
    Ok(SipSockets {
        udp_addr,
        tcp_addr,
        per_shard,
    })
}

/// Bind every shard's SIP sockets on `addr` (UDP and/or TCP, one SO_REUSEPORT
/// socket per shard and transport). Port 0 picks one free port for all.
pub fn bind_sip(
    addr: SocketAddr,
    shards: usize,
    udp: bool,
    tcp: bool,
) -> Result<SipSockets, TransportError> {
    // With port 0 the UDP port the kernel picks may be taken for TCP: retry.
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        match try_bind(addr, shards, udp, tcp) {
            Ok(s) => return Ok(s),
            Err(e) if e.in_use() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        TransportError::bind("UDP", addr, io::Error::from_raw_os_error(libc::EADDRINUSE))
    }))
}

/// A dual-stack socket (bound to `::`) reports IPv4 peers as `::ffff:a.b.c.d`;
/// the endpoint sees them as the IPv4 addresses they are, so trunk address
/// lists, Via `received=` and logs read naturally.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The reverse of [`canonical`] for sending: an IPv4 destination on an IPv6
/// socket must be written as IPv4-mapped, or the kernel refuses it.
pub fn for_socket(dest: SocketAddr, local: SocketAddr) -> SocketAddr {
    match (dest, local) {
        (SocketAddr::V4(v4), SocketAddr::V6(_)) => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => dest,
    }
}

/// Hand a bound socket2 UDP socket to this thread's glommio reactor.
/// Must run inside an executor.
pub fn into_glommio_udp(s: Socket) -> UdpSocket {
    // SAFETY: `into_raw_fd` gives up ownership of a valid, open UDP socket fd;
    // glommio's UdpSocket takes sole ownership and closes it on drop.
    unsafe { UdpSocket::from_raw_fd(s.into_raw_fd()) }
}

/// Hand a bound, listening socket2 TCP socket to this thread's glommio reactor.
/// Must run inside an executor.
pub fn into_glommio_listener(s: Socket) -> TcpListener {
    // SAFETY: as above: a valid, listening TCP socket whose ownership moves to
    // glommio's TcpListener.
    unsafe { TcpListener::from_raw_fd(s.into_raw_fd()) }
}

// ----- stream framing ---------------------------------------------------------

/// What a TCP byte stream yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// One whole SIP message.
    Message(Bytes),
    /// An RFC 5626 s3.5.1 keep-alive ping (CRLF CRLF): answer with one CRLF.
    Ping,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("stream cannot be framed: {0}")]
    Invalid(&'static str),
    #[error("more than {0} bytes without a complete message")]
    Overflow(usize),
}

/// Cuts SIP messages off a TCP byte stream (sans-IO): the reader writes into
/// [`read_buf`](StreamFramer::read_buf), commits with
/// [`filled`](StreamFramer::filled), then takes frames with
/// [`next_frame`](StreamFramer::next_frame). Messages are split off the buffer
/// without copying; the buffer never holds more than `max` bytes.
pub struct StreamFramer {
    buf: BytesMut,
    max: usize,
    /// Bytes `read_buf` lent out past the data, not yet committed by `filled`.
    lent: usize,
    /// CR/LF bytes seen since the last message: four make a ping.
    crlf_run: usize,
}

impl StreamFramer {
    pub fn new(max: usize) -> StreamFramer {
        let max = max.max(1);
        StreamFramer {
            buf: BytesMut::with_capacity(TCP_READ_CHUNK.min(max)),
            max,
            lent: 0,
            crlf_run: 0,
        }
    }

    /// Bytes buffered and not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.lent
    }

    /// Room to read into (at most one chunk, never past `max`); empty when the
    /// buffer is full, which [`next_frame`](Self::next_frame) reports as overflow.
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.settle();
        let len = self.buf.len();
        let room = (self.max - len).min(TCP_READ_CHUNK);
        // Zeroing costs a memset per read; it keeps this free of `unsafe`.
        self.buf.resize(len + room, 0);
        self.lent = room;
        &mut self.buf[len..]
    }

    /// The last `read_buf` received `n` bytes.
    pub fn filled(&mut self, n: usize) {
        let n = n.min(self.lent);
        let keep = self.buf.len() - self.lent + n;
        self.buf.truncate(keep);
        self.lent = 0;
    }

    /// Drop lent bytes that were never filled.
    fn settle(&mut self) {
        if self.lent > 0 {
            self.filled(0);
        }
    }

    /// Append bytes (tests and callers that already hold a buffer).
    pub fn push(&mut self, data: &[u8]) -> usize {
        self.settle();
        let room = self.max - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    /// The next frame, `Ok(None)` if more bytes are needed. After an error the
    /// stream must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        self.settle();
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            match frame_len(&self.buf) {
                Framing::KeepAlive(n) => {
                    // RFC 3261 s7.5: CRLFs before a message are ignored; RFC 5626
                    // s3.5.1: a double CRLF is a ping, even split over reads.
                    let n = n.clamp(1, self.buf.len());
                    let _ = self.buf.split_to(n);
                    self.crlf_run += n;
                    if self.crlf_run >= 4 {
                        self.crlf_run = 0;
                        return Ok(Some(Frame::Ping));
                    }
                }
                Framing::Complete(n) if n > 0 && n <= self.buf.len() => {
                    self.crlf_run = 0;
                    return Ok(Some(Frame::Message(self.buf.split_to(n).freeze())));
                }
                Framing::Complete(_) => return Err(FramingError::Invalid("bad frame length")),
                Framing::Partial => {
                    if self.buf.len() >= self.max {
                        return Err(FramingError::Overflow(self.max));
                    }
                    return Ok(None);
                }
                Framing::Invalid(why) => return Err(FramingError::Invalid(why)),
            }
        }
    }
}

// ----- TCP connections ---------------------------------------------------------

/// Why a message could not be queued on a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The connection's write queue is full (the peer does not read).
    Full,
    /// No such connection (closed).
    Gone,
}

struct ConnEntry {
    remote: SocketAddr,
    /// `None` while an outbound connect is in progress.
    local: Option<SocketAddr>,
    queue: LocalSender<Bytes>,
    /// Dropping the entry drops this sender, which ends the reader task.
    _close: LocalSender<()>,
    last_activity: Rc<Cell<Instant>>,
}

/// What a new connection's tasks take over.
pub struct ConnTasks {
    pub id: u64,
    queue_rx: LocalReceiver<Bytes>,
    close_rx: LocalReceiver<()>,
    last_activity: Rc<Cell<Instant>>,
}

/// This shard's TCP connections, by id and by remote address. Removing an
/// entry closes the connection: its writer sends what is queued and then
/// FIN, its reader stops.
pub struct Connections {
    shard: usize,
    next_id: u64,
    by_id: HashMap<u64, ConnEntry>,
    by_remote: HashMap<SocketAddr, u64>,
}

impl Connections {
    pub fn new(shard: usize) -> Connections {
        Connections {
            shard,
            next_id: 1,
            by_id: HashMap::new(),
            by_remote: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Register a connection (accepted, or being opened if `local` is None).
    pub fn insert(
        &mut self,
        remote: SocketAddr,
        local: Option<SocketAddr>,
        queue_cap: usize,
        now: Instant,
    ) -> ConnTasks {
        let id = self.next_id;
        self.next_id += 1;
        let (queue, queue_rx) = local_channel::new_bounded(queue_cap.max(1));
        let (close, close_rx) = local_channel::new_bounded(1);
        let last_activity = Rc::new(Cell::new(now));
        self.by_id.insert(
            id,
            ConnEntry {
                remote,
                local,
                queue,
                _close: close,
                last_activity: Rc::clone(&last_activity),
            },
        );
        // The newest connection to an address is the one to reuse
        // (RFC 3261 s18.1.1 lets requests reuse an existing connection).
        self.by_remote.insert(remote, id);
        ConnTasks {
            id,
            queue_rx,
            close_rx,
            last_activity,
        }
    }

    pub fn set_local(&mut self, id: u64, local: SocketAddr) {
        if let Some(e) = self.by_id.get_mut(&id) {
            e.local = Some(local);
        }
    }

    /// The connection to send on: the one named by `conn` if it is ours and
    /// open, else any open one to `remote`.
    pub fn lookup(&self, conn: Option<ConnRef>, remote: SocketAddr) -> Option<u64> {
        conn.filter(|c| c.shard == self.shard && self.by_id.contains_key(&c.id))
            .map(|c| c.id)
            .or_else(|| self.by_remote.get(&remote).copied())
    }

    pub fn queue(&self, id: u64, data: Bytes) -> Result<(), QueueError> {
        let e = self.by_id.get(&id).ok_or(QueueError::Gone)?;
        e.queue.try_send(data).map_err(|err| match err {
            glommio::GlommioError::WouldBlock(_) => QueueError::Full,
            _ => QueueError::Gone,
        })
    }

    /// Messages waiting in write queues (for the shutdown flush).
    pub fn queued(&self) -> usize {
        self.by_id.values().map(|e| e.queue.len()).sum()
    }

    /// Close connection `id`; false if it was already gone.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(e) = self.by_id.remove(&id) else {
            return false;
        };
        if self.by_remote.get(&e.remote) == Some(&id) {
            self.by_remote.remove(&e.remote);
        }
        true
    }

    /// Connections with no traffic for `idle`.
    pub fn idle_since(&self, cutoff: Instant) -> Vec<u64> {
        self.by_id
            .iter()
            .filter(|(_, e)| e.last_activity.get() < cutoff)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn peer(&self, id: u64) -> Option<Peer> {
        let e = self.by_id.get(&id)?;
        Some(Peer {
            transport: Transport::Tcp,
            remote: e.remote,
            local: e.local?,
            conn: Some(ConnRef {
                shard: self.shard,
                id,
            }),
        })
    }
}

/// Accept connections on this shard's listener until the shard stops.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let now = Instant::now();
                let (remote, local) = match (stream.peer_addr(), stream.local_addr()) {
                    (Ok(r), Ok(l)) => (canonical(r), canonical(l)),
                    _ => continue, // reset before we looked: nothing to serve
                };
                if shard.conns.borrow().len() >= shard.limits.tcp_max_conns {
                    shard.counters.tcp_refused_limit.inc();
                    if let Some(suppressed) = shard.log_tcp.allow(now) {
                        warn!(%remote, limit = shard.limits.tcp_max_conns, suppressed,
                            "TCP connection limit reached; connection refused");
                    }
                    continue; // dropping `stream` closes it
                }
                shard.counters.tcp_accepted.inc();
                let tasks = shard.conns.borrow_mut().insert(
                    remote,
                    Some(local),
                    shard.limits.tcp_write_queue,
                    now,
                );
                debug!(%remote, id = tasks.id, "TCP connection accepted");
                spawn_conn(&shard, stream, tasks);
            }
            Err(e) => {
                let now = Instant::now();
                if let Some(suppressed) = shard.log_tcp.allow(now) {
                    warn!(error = %e, suppressed, "TCP accept failed");
                }
                // EMFILE and friends persist: do not spin on them.
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Open a connection to `remote` from this shard and queue `first` on it.
pub fn connect(shard: &Rc<Shard>, remote: SocketAddr, first: Bytes) {
    let now = Instant::now();
    if shard.conns.borrow().len() >= shard.limits.tcp_max_conns {
        shard.counters.tcp_refused_limit.inc();
        if let Some(suppressed) = shard.log_tcp.allow(now) {
            warn!(%remote, suppressed, "TCP connection limit reached; message dropped");
        }
        return;
    }
    let tasks = shard
        .conns
        .borrow_mut()
        .insert(remote, None, shard.limits.tcp_write_queue, now);
    let _ = shard.conns.borrow().queue(tasks.id, first);
    let shard = Rc::clone(shard);
    glommio::spawn_local(async move {
        let timeout = shard.limits.tcp_connect_timeout;
        match TcpStream::connect_timeout(remote, timeout).await {
            Ok(stream) => {
                if !shard.conns.borrow().contains(tasks.id) {
                    return; // closed (shutdown, sweep) while connecting
                }
                let Ok(local) = stream.local_addr().map(canonical) else {
                    shard.close_conn(tasks.id);
                    return;
                };
                shard.counters.tcp_connected.inc();
                shard.conns.borrow_mut().set_local(tasks.id, local);
                debug!(%remote, id = tasks.id, "TCP connection opened");
                spawn_conn(&shard, stream, tasks);
            }
            Err(e) => {
                shard.counters.tcp_connect_failed.inc();
                if let Some(suppressed) = shard.log_tcp.allow(Instant::now()) {
                    warn!(%remote, error = %e, suppressed, "TCP connect failed; queued messages dropped");
                }
                shard.close_conn(tasks.id);
            }
        }
    })
    .detach();
}

fn spawn_conn(shard: &Rc<Shard>, stream: TcpStream, tasks: ConnTasks) {
    let _ = stream.set_nodelay(true);
    shard
        .counters
        .tcp_open
        .set(shard.conns.borrow().len() as u64);
    let Some(peer) = shard.conns.borrow().peer(tasks.id) else {
        return;
    };
    // The two halves poll separate io_uring sources (read and write readiness),
    // so the mutex inside `split` is never contended across an await.
    let (reader, writer) = futures_lite::io::split(stream);
    let ConnTasks {
        id,
        queue_rx,
        close_rx,
        last_activity,
    } = tasks;
    glommio::spawn_local(read_conn(
        Rc::clone(shard),
        peer,
        reader,
        close_rx,
        Rc::clone(&last_activity),
    ))
    .detach();
    glommio::spawn_local(write_conn(
        Rc::clone(shard),
        id,
        writer,
        queue_rx,
        last_activity,
    ))
    .detach();
}

async fn read_conn(
    shard: Rc<Shard>,
    peer: Peer,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    close_rx: LocalReceiver<()>,
    last_activity: Rc<Cell<Instant>>,
) {
    let id = peer.conn.map_or(0, |c| c.id);
    let mut framer = StreamFramer::new(shard.limits.tcp_max_buffer);
    let why = 'conn: loop {
        let buf = framer.read_buf();
        if buf.is_empty() {
            shard.counters.tcp_overflow.inc();
            break "buffer full";
        }
        let read = futures_lite::future::or(async { Some(reader.read(buf).await) }, async {
            // Only ever resolves when the connection's entry is dropped.
            let _ = close_rx.recv().await;
            None
        })
        .await;
        let n = match read {
            None => break "closed",
            Some(Ok(0)) => {
                framer.filled(0);
                break "EOF";
            }
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                framer.filled(0);
                break "read error";
            }
        };
        framer.filled(n);
        let now = Instant::now();
        last_activity.set(now);
        shard.counters.tcp_bytes_in.add(n as u64);
        loop {
            match framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Message(data))) => {
                    shard.counters.tcp_messages_in.inc();
                    shard.on_inbound(Inbound::new(peer, data, now));
                }
                Ok(Some(Frame::Ping)) => {
                    // RFC 5626 s3.5.1: pong is a single CRLF.
                    shard.counters.tcp_pings.inc();
                    let _ = shard.conns.borrow().queue(id, Bytes::from_static(b"\r\n"));
                }
                Err(e) => {
                    match e {
                        FramingError::Overflow(_) => shard.counters.tcp_overflow.inc(),
                        FramingError::Invalid(_) => shard.counters.tcp_framing_errors.inc(),
                    }
                    if let Some(suppressed) = shard.log_tcp.allow(now) {
                        warn!(remote = %peer.remote, error = %e, suppressed, "closing TCP connection");
                    }
                    break 'conn "framing";
                }
            }
        }
        glommio::yield_if_needed().await;
    };
    debug!(remote = %peer.remote, id, why, "TCP connection closing");
    shard.close_conn(id);
}

async fn write_conn(
    shard: Rc<Shard>,
    id: u64,
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    queue_rx: LocalReceiver<Bytes>,
    last_activity: Rc<Cell<Instant>>,
) {
    // Ends when the entry (the queue's sender) is dropped and the queue is empty.
    while let Some(data) = queue_rx.recv().await {
        if let Err(e) = writer.write_all(&data).await {
            shard.counters.tcp_write_errors.inc();
            if let Some(suppressed) = shard.log_tcp.allow(Instant::now()) {
                warn!(id, error = %e, suppressed, "TCP write failed; closing connection");
            }
            shard.close_conn(id);
            return;
        }
        shard.counters.tcp_bytes_out.add(data.len() as u64);
        last_activity.set(Instant::now());
        glommio::yield_if_needed().await;
    }
    let _ = writer.close().await;
}

/// Close connections idle for `limits.tcp_idle`, every `limits.tcp_idle_sweep`.
pub async fn idle_sweep(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(shard.limits.tcp_idle_sweep).await;
        let now = Instant::now();
        let Some(cutoff) = now.checked_sub(shard.limits.tcp_idle) else {
            continue;
        };
        let idle = shard.conns.borrow().idle_since(cutoff);
        for id in idle {
            shard.counters.tcp_idle_closed.inc();
            debug!(id, "closing idle TCP connection");
            shard.close_conn(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const OPTIONS: &[u8] = b"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-1\r\n\
From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:gw@127.0.0.1>\r\n\
Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    const INVITE: &[u8] = b"INVITE sip:gw@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-2\r\n\
From: <sip:a@127.0.0.1>;tag=2\r\nTo: <sip:gw@127.0.0.1>\r\n\
Call-ID: c2\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\
Content-Length: 10\r\n\r\nv=0\r\no=x\r\n";

    /// Feed `stream` in two pieces cut at `cut`, collecting every frame.
    fn frames_split(stream: &[u8], cut: usize, max: usize) -> Result<Vec<Frame>, FramingError> {
        let mut f = StreamFramer::new(max);
        let mut out = Vec::new();
        for part in [&stream[..cut], &stream[cut..]] {
            // Write through read_buf/filled as the reader does, in small chunks.
            let mut rest = part;
            while !rest.is_empty() {
                let buf = f.read_buf();
                if buf.is_empty() {
                    f.filled(0);
                    return Err(f.next_frame().err().unwrap_or(FramingError::Overflow(max)));
                }
                let n = buf.len().min(rest.len()).min(7);
                buf[..n].copy_from_slice(&rest[..n]);
                f.filled(n);
                rest = &rest[n..];
                while let Some(fr) = f.next_frame()? {
                    out.push(fr);
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn messages_and_pings_survive_a_split_at_every_position() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"\r\n\r\n"); // ping
        stream.extend_from_slice(OPTIONS);
        stream.extend_from_slice(b"\r\n"); // lone CRLF: ignored (RFC 3261 s7.5)
        stream.extend_from_slice(INVITE);
        stream.extend_from_slice(b"\r\n\r\n"); // ping
        for cut in 0..=stream.len() {
            let frames = frames_split(&stream, cut, 64 * 1024).unwrap();
            assert_eq!(
                frames,
                vec![
                    Frame::Ping,
                    Frame::Message(Bytes::from_static(OPTIONS)),
                    Frame::Message(Bytes::from_static(INVITE)),
                    Frame::Ping,
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn body_is_cut_by_content_length() {
        let mut stream = INVITE.to_vec();
        stream.extend_from_slice(OPTIONS);
        let mut f = StreamFramer::new(64 * 1024);
        assert_eq!(f.push(&stream), stream.len());
        assert_eq!(
            f.next_frame().unwrap(),
            Some(Frame::Message(Bytes::from_static(INVITE)))
        );
        assert_eq!(
            f.next_frame().unwrap(),
            Some(Frame::Message(Bytes::from_static(OPTIONS)))
        );
        assert_eq!(f.next_frame().unwrap(), None);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn partial_message_waits_for_more() {
        let mut f = StreamFramer::new(64 * 1024);
        f.push(&INVITE[..INVITE.len() - 1]);
        assert_eq!(f.next_frame().unwrap(), None);
        f.push(&INVITE[INVITE.len() - 1..]);
        assert!(matches!(f.next_frame().unwrap(), Some(Frame::Message(_))));
    }

    #[test]
    fn missing_content_length_closes_the_stream() {
        let mut f = StreamFramer::new(64 * 1024);
        f.push(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: a\r\n\r\n");
        assert!(matches!(f.next_frame(), Err(FramingError::Invalid(_))));
    }

    #[test]
    fn unframeable_bytes_past_the_limit_overflow() {
        let max = 1024;
        let mut stream = b"OPTIONS sip:x SIP/2.0\r\nX-Pad: ".to_vec();
        stream.resize(4096, b'a');
        let err = frames_split(&stream, 100, max).unwrap_err();
        assert_eq!(err, FramingError::Overflow(max));
    }

    #[test]
    fn unfilled_read_buf_is_not_data() {
        let mut f = StreamFramer::new(64 * 1024);
        let _ = f.read_buf();
        // The reader was cancelled before `filled`: nothing was received.
        assert_eq!(f.next_frame().unwrap(), None);
        assert_eq!(f.buffered(), 0);
        f.push(OPTIONS);
        assert!(matches!(f.next_frame().unwrap(), Some(Frame::Message(_))));
    }

    #[test]
    fn bind_errors_name_the_address_and_the_fix() {
        // Hold a port without SO_REUSEPORT, as a foreign SIP server would.
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let err = bind_sip(addr, 2, true, false).unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
        assert!(err.contains("UDP"), "{err}");
        assert!(err.contains("already listens"), "{err}");

        let tcp_holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taddr = tcp_holder.local_addr().unwrap();
        let err = bind_sip(taddr, 1, false, true).unwrap_err().to_string();
        assert!(
            err.contains("TCP") && err.contains(&taddr.to_string()),
            "{err}"
        );

        let err = bind_sip("192.0.2.77:5060".parse().unwrap(), 1, true, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no interface"), "{err}");
    }

    #[test]
    fn port_zero_gives_every_shard_the_same_port_for_udp_and_tcp() {
        let s = bind_sip("127.0.0.1:0".parse().unwrap(), 3, true, true).unwrap();
        let port = s.udp_addr.unwrap().port();
        assert_ne!(port, 0);
        assert_eq!(s.tcp_addr.unwrap().port(), port);
        assert_eq!(s.per_shard.len(), 3);
        for sh in &s.per_shard {
            assert_eq!(local_of(sh.udp.as_ref().unwrap()).unwrap().port(), port);
            assert_eq!(local_of(sh.tcp.as_ref().unwrap()).unwrap().port(), port);
        }
        // And a second switchboard on that port is refused, not let in.
        let err = bind_sip(s.udp_addr.unwrap(), 1, true, true).unwrap_err();
        assert!(err.in_use());
    }

    #[test]
    fn v4_mapped_peers_are_seen_as_v4_and_sent_to_as_mapped() {
        let mapped: SocketAddr = "[::ffff:203.0.113.7]:5060".parse().unwrap();
        let v4: SocketAddr = "203.0.113.7:5060".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
        let any6: SocketAddr = "[::]:5060".parse().unwrap();
        let any4: SocketAddr = "0.0.0.0:5060".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v6), v6);
        assert_eq!(for_socket(v4, any6), mapped);
        assert_eq!(for_socket(v4, any4), v4);
        assert_eq!(for_socket(v6, any6), v6);
    }

    #[test]
    fn connection_table_finds_by_ref_then_remote_and_closes() {
        let now = Instant::now();
        let mut c = Connections::new(0);
        let r1: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let l: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let t1 = c.insert(r1, Some(l), 2, now);
        let other_shard = ConnRef {
            shard: 1,
            id: t1.id,
        };
        assert_eq!(c.lookup(None, r1), Some(t1.id));
        assert_eq!(c.lookup(Some(other_shard), r1), Some(t1.id));
        assert_eq!(c.lookup(None, "127.0.0.1:9".parse().unwrap()), None);
        let p = c.peer(t1.id).unwrap();
        assert_eq!(
            p.conn,
            Some(ConnRef {
                shard: 0,
                id: t1.id
            })
        );
        assert_eq!(p.local, l);
        // Bounded write queue.
        assert_eq!(c.queue(t1.id, Bytes::from_static(b"a")), Ok(()));
        assert_eq!(c.queue(t1.id, Bytes::from_static(b"b")), Ok(()));
        assert_eq!(
            c.queue(t1.id, Bytes::from_static(b"c")),
            Err(QueueError::Full)
        );
        assert_eq!(c.queued(), 2);
        assert_eq!(c.idle_since(now + Duration::from_secs(1)), vec![t1.id]);
        assert!(c.idle_since(now).is_empty());
        assert!(c.remove(t1.id));
        assert!(!c.remove(t1.id));
        assert_eq!(c.lookup(None, r1), None);
        assert_eq!(c.queue(t1.id, Bytes::new()), Err(QueueError::Gone));
        assert!(c.is_empty());
    }
}
