//! The IO edge of RTP: one call's non-blocking UDP socket, drained in batches
//! with the kernel's receive timestamp of every datagram.
//!
//! Where it sits in the data flow:
//!
//! ```text
//! NIC --> kernel (stamps each skb: SO_TIMESTAMPNS) --> RtpSocket::recv_batch (recvmmsg)
//!     --> [Received { len, src, kernel_ts }] --> shard driver: kernel_ts -> Instant
//!     --> media::MediaEngine::handle_packet(.., arrival, ..)
//! media::MediaOutput::Transmit --> shard driver --> RtpSocket::send_to
//! ```
//!
//! What it owns: the socket (bound to the call's `(ip, port)` from the shard's
//! slice of the RTP range), and nothing else: the caller owns the receive
//! buffers and the output vector, so a drain allocates nothing.
//!
//! Why kernel timestamps: the shard polls these sockets every few milliseconds,
//! so "when we read it" is off by up to the poll interval, which would swamp
//! the microsecond RFC 3550 jitter we report. The kernel's receive time
//! (CLOCK_REALTIME, see socket(7) `SO_TIMESTAMPNS`) is exact whenever we read.
//! Why `recvmmsg(2)`: one syscall drains everything queued since the last poll.
//! glommio's `UdpSocket` offers neither (see ECOSYSTEM.md), so this is a plain
//! fd built with socket2 and driven by the shard's poll loop.
//!
//! Linux only (recvmmsg, SCM_TIMESTAMPNS), like the rest of the runtime.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;

/// Datagrams one `recvmmsg` call can take; more `bufs` than this are filled
/// over several calls of [`RtpSocket::recv_batch`].
pub const MAX_BATCH: usize = 32;

/// Control-message space per datagram: one `cmsghdr` (16) + `timespec` (16),
/// with room to spare should the kernel add another control message.
const CMSG_WORDS: usize = 16;

#[derive(Debug, Error)]
pub enum RtpSocketError {
    #[error("cannot create a UDP socket for {addr}: {source}")]
    Socket { addr: SocketAddr, source: io::Error },
    #[error("cannot set {option} on the RTP socket for {addr}: {source}")]
    Option {
        addr: SocketAddr,
        option: &'static str,
        source: io::Error,
    },
    #[error("cannot bind RTP port {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// A kernel receive time: CLOCK_REALTIME, as `SCM_TIMESTAMPNS` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelTimestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl KernelTimestamp {
    /// As a wall-clock time.
    pub fn system_time(self) -> SystemTime {
        let since = Duration::new(self.sec.unsigned_abs(), self.nsec);
        if self.sec >= 0 {
            UNIX_EPOCH + since
        } else {
            UNIX_EPOCH - since
        }
    }

    /// Microseconds since the Unix epoch: what `rtp::ReceiveStats` takes as
    /// an arrival time (only differences matter).
    pub fn as_micros(self) -> u64 {
        (self.sec.max(0) as u64) * 1_000_000 + u64::from(self.nsec / 1000)
    }

    /// On the monotonic clock, given one reading of both clocks taken together
    /// by the driver (once per batch): `now - (wall_now - self)`. A stamp from
    /// the future (the wall clock stepped back between) maps to `now`.
    pub fn to_instant(self, now: Instant, wall_now: SystemTime) -> Instant {
        match wall_now.duration_since(self.system_time()) {
            Ok(age) => now.checked_sub(age).unwrap_or(now),
            Err(_) => now,
        }
    }
}

/// One datagram of a batch: its bytes are in the `bufs` slot of the same index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    pub src: SocketAddr,
    /// `None` if the kernel gave no timestamp (the driver then uses its own now).
    pub kernel_ts: Option<KernelTimestamp>,
    /// The datagram was longer than its buffer and was cut (MSG_TRUNC): not RTP
    /// we negotiated; drop it.
    pub truncated: bool,
}

/// One call's RTP (or RTCP) socket.
#[derive(Debug)]
pub struct RtpSocket {
    socket: Socket,
    local: SocketAddr,
}

impl RtpSocket {
    /// Bind a non-blocking UDP socket on `local` with kernel receive timestamps.
    /// No SO_REUSEADDR/SO_REUSEPORT: a port already in use must fail here
    /// rather than silently share another call's packets.
    pub fn bind(local: SocketAddr) -> Result<RtpSocket, RtpSocketError> {
        let domain = if local.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(|source| {
            RtpSocketError::Socket {
                addr: local,
                source,
            }
        })?;
        let opt = |option, source| RtpSocketError::Option {
            addr: local,
            option,
            source,
        };
        socket
            .set_nonblocking(true)
            .map_err(|e| opt("O_NONBLOCK", e))?;
        enable_timestampns(&socket).map_err(|e| opt("SO_TIMESTAMPNS", e))?;
        socket
            .bind(&SockAddr::from(local))
            .map_err(|source| RtpSocketError::Bind {
                addr: local,
                source,
            })?;
        // Port 0 asks the kernel to pick: report the real one.
        let local = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(local);
        Ok(RtpSocket { socket, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Size the kernel receive queue (SO_RCVBUF): a shard that stalls for a
    /// moment should find its packets queued, not dropped.
    pub fn set_recv_buffer_size(&self, bytes: usize) -> io::Result<()> {
        self.socket.set_recv_buffer_size(bytes)
    }

    /// Send one datagram. Non-blocking: a full send queue is
    /// `ErrorKind::WouldBlock`, which the driver counts and drops (a late RTP
    /// packet is worth nothing).
    pub fn send_to(&self, data: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(data, &SockAddr::from(dst))
    }

    /// Drain up to `min(bufs.len(), MAX_BATCH)` queued datagrams with one
    /// `recvmmsg(2)`: datagram `i` lands in `bufs[i]`, its metadata in `out[i]`
    /// (`out` is cleared first). Returns how many; 0 when nothing is queued.
    pub fn recv_batch<B: AsMut<[u8]>>(
        &mut self,
        bufs: &mut [B],
        out: &mut Vec<Received>,
    ) -> io::Result<usize> {
        out.clear();
        let n = bufs.len().min(MAX_BATCH);
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: all-zero bytes are a valid value of these plain C structs
        // (null pointers, zero lengths, AF_UNSPEC); every pointer is set below
        // before the kernel sees it.
        let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
        // u64 words: cmsghdr needs 8-byte alignment.
        let mut cmsgs = [[0u64; CMSG_WORDS]; MAX_BATCH];
        for i in 0..n {
            let buf = bufs[i].as_mut();
            iovs[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = mem::size_of_val(&cmsgs[i]) as _;
        }
        // SAFETY: `msgs[..n]` are initialised headers whose name, iovec and
        // control pointers point at live, correctly sized buffers owned by this
        // frame (`names`, `iovs`, `cmsgs`) or by the caller (`bufs`, borrowed
        // mutably for the whole call); the kernel writes only within the
        // lengths given. MSG_DONTWAIT with a null timeout never blocks.
        let got = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let got = got as usize;
        for i in 0..got {
            let h = &msgs[i].msg_hdr;
            // SAFETY: the kernel filled `names[i]` with an address of
            // `msg_namelen` bytes, which fits the storage it was given.
            let src = unsafe { SockAddr::new(names[i], h.msg_namelen) }.as_socket();
            let Some(src) = src else {
                // Not an IP source: cannot happen on an AF_INET/AF_INET6 UDP
                // socket; report it as a cut datagram so the driver drops it.
                out.push(Received {
                    len: 0,
                    src: self.local,
                    kernel_ts: None,
                    truncated: true,
                });
                continue;
            };
            out.push(Received {
                len: (msgs[i].msg_len as usize).min(iovs[i].iov_len),
                src,
                kernel_ts: timestamp_of(h),
                truncated: h.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(got)
    }
}

impl AsRawFd for RtpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

fn enable_timestampns(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd, and a pointer to a c_int with its exact length, as
    // setsockopt(2) requires for a boolean option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The SCM_TIMESTAMPNS control message of one received datagram, if any.
fn timestamp_of(h: &libc::msghdr) -> Option<KernelTimestamp> {
    // SAFETY: `h` is a header recvmmsg filled in: msg_control points at the
    // live cmsg buffer and msg_controllen is the length the kernel wrote, so the
    // CMSG_* walk stays inside it; the payload is read unaligned because
    // CMSG_DATA only guarantees cmsghdr alignment.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let hdr = &*c;
            if hdr.cmsg_level == libc::SOL_SOCKET
                && hdr.cmsg_type == libc::SCM_TIMESTAMPNS
                && hdr.cmsg_len as usize
                    >= libc::CMSG_LEN(mem::size_of::<libc::timespec>() as u32) as usize
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(KernelTimestamp {
                    sec: ts.tv_sec,
                    nsec: ts.tv_nsec.clamp(0, 999_999_999) as u32,
                });
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().expect("literal address")
    }

    /// Drain until `want` datagrams arrived or a second passed (loopback
    /// delivers synchronously; the bound only keeps a broken kernel from
    /// hanging the test).
    fn drain(
        sock: &mut RtpSocket,
        bufs: &mut [[u8; 256]],
        want: usize,
    ) -> Vec<(Received, Vec<u8>)> {
        let mut got = Vec::new();
        let mut out = Vec::new();
        for _ in 0..1000 {
            let n = sock.recv_batch(bufs, &mut out).expect("recvmmsg");
            assert_eq!(n, out.len());
            for (r, b) in out.iter().zip(bufs.iter()) {
                got.push((*r, b[..r.len].to_vec()));
            }
            if got.len() >= want {
                break;
            }
            if n == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    }

    #[test]
    fn receives_batches_with_monotonic_kernel_timestamps_close_to_now() {
        let mut sock = RtpSocket::bind(local()).expect("bind");
        let peer = UdpSocket::bind(local()).expect("bind peer");
        let before = SystemTime::now();
        for i in 0..40u8 {
            peer.send_to(&[i; 172], sock.local_addr()).expect("send");
        }
        let mut bufs = [[0u8; 256]; 8];
        let got = drain(&mut sock, &mut bufs, 40);
        let after = SystemTime::now();
        assert_eq!(got.len(), 40, "several batches of at most 8");
        let mut last = None;
        for (i, (r, data)) in got.iter().enumerate() {
            assert_eq!(r.src, peer.local_addr().expect("bound"));
            assert_eq!((r.len, r.truncated), (172, false));
            assert!(data.iter().all(|&b| b == i as u8), "in order, in its slot");
            let ts = r.kernel_ts.expect("SO_TIMESTAMPNS is on");
            let t = ts.system_time();
            assert!(
                t + Duration::from_millis(5) >= before && t <= after + Duration::from_millis(5)
            );
            if let Some(l) = last {
                assert!(l <= ts, "monotonic");
            }
            last = Some(ts);
        }
    }

    #[test]
    fn empty_queue_and_empty_bufs_return_zero() {
        let mut sock = RtpSocket::bind(local()).expect("bind");
        let mut out = vec![Received {
            len: 1,
            src: local(),
            kernel_ts: None,
            truncated: false,
        }];
        let mut bufs = [[0u8; 64]; 4];
        assert_eq!(sock.recv_batch(&mut bufs, &mut out).expect("no error"), 0);
        assert!(out.is_empty(), "cleared");
        let mut none: [[u8; 64]; 0] = [];
        assert_eq!(sock.recv_batch(&mut none, &mut out).expect("no error"), 0);
    }

    #[test]
    fn oversized_datagram_is_flagged_truncated() {
        let mut sock = RtpSocket::bind(local()).expect("bind");
        let peer = UdpSocket::bind(local()).expect("bind peer");
        peer.send_to(&[7u8; 1000], sock.local_addr()).expect("send");
        let mut bufs = [[0u8; 256]; 2];
        let got = drain(&mut sock, &mut bufs, 1);
        assert_eq!(got.len(), 1);
        assert!(got[0].0.truncated);
        assert_eq!(got[0].0.len, 256);
    }

    #[test]
    fn sends_to_a_peer_and_binding_a_taken_port_fails() {
        let sock = RtpSocket::bind(local()).expect("bind");
        let peer = UdpSocket::bind(local()).expect("bind peer");
        assert_eq!(
            sock.send_to(b"rtp", peer.local_addr().expect("bound"))
                .expect("send"),
            3
        );
        let mut buf = [0u8; 16];
        peer.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let (n, from) = peer.recv_from(&mut buf).expect("received");
        assert_eq!((&buf[..n], from), (&b"rtp"[..], sock.local_addr()));
        assert!(matches!(
            RtpSocket::bind(sock.local_addr()),
            Err(RtpSocketError::Bind { .. })
        ));
    }

    #[test]
    fn ipv6_loopback_works_where_available() {
        let Ok(mut sock) = RtpSocket::bind("[::1]:0".parse().expect("literal")) else {
            return; // no IPv6 on this host
        };
        let peer = UdpSocket::bind("[::1]:0").expect("bind peer");
        peer.send_to(b"v6", sock.local_addr()).expect("send");
        let mut bufs = [[0u8; 256]; 1];
        let got = drain(&mut sock, &mut bufs, 1);
        assert_eq!(got[0].0.src, peer.local_addr().expect("bound"));
        assert!(got[0].0.kernel_ts.is_some());
    }

    #[test]
    fn kernel_time_maps_onto_the_monotonic_clock() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000);
        let ts = KernelTimestamp {
            sec: 1_700_000_000,
            nsec: 497_000_000,
        };
        assert_eq!(ts.to_instant(now, wall), now - Duration::from_millis(3));
        assert_eq!(ts.as_micros(), 1_700_000_000_497_000);
        let future = KernelTimestamp {
            sec: 1_700_000_001,
            nsec: 0,
        };
        assert_eq!(future.to_instant(now, wall), now);
    }
}
