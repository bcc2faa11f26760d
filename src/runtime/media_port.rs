//! A call's RTP port on its owner shard: bind, drain, close.
//!
//! Data flow: the endpoint's `Output::MediaOpen { call, local }` (after SDP
//! negotiation picked `local`, an even port of this shard's slice of the RTP
//! range) -> the shard binds the RTP socket on `local` and the RTCP socket on
//! the next port (RFC 3550 s11: RTCP = RTP + 1), and a reader task drains
//! each; `MediaClose` drops the [`MediaPort`], which cancels the readers and
//! closes both sockets.
//! For now packets are only counted; the RTP core (jitter buffer, decode,
//! RTCP) will take them from here.
//!
//! Owns: the per-call RTP and RTCP sockets and their reader tasks.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use glommio::task::JoinHandle;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;

use super::sip_transport::into_glommio_udp;
use super::ShardCounters;

/// RTP over UDP stays below the path MTU; a larger datagram is not ours and
/// is counted truncated.
const RTP_BUF: usize = 2048;

#[derive(Debug, Error)]
pub enum MediaPortError {
    #[error("cannot bind RTP port {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// Bind the call's RTP socket. Neither SO_REUSEADDR nor SO_REUSEPORT: a port
/// in use (by another call, or another process) must fail here rather than
/// silently share the port's packets.
pub fn bind_rtp(local: SocketAddr) -> Result<Socket, MediaPortError> {
    let err = |source| MediaPortError::Bind {
        addr: local,
        source,
    };
    let domain = if local.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(false).map_err(err)?;
    s.bind(&SockAddr::from(local)).map_err(err)?;
    Ok(s)
}

/// An open RTP/RTCP port pair. Dropping it cancels the readers and closes
/// the sockets.
pub struct MediaPort {
    local: SocketAddr,
    rtp: JoinHandle<()>,
    rtcp: JoinHandle<()>,
    /// RTP packets and bytes received on this port (for the call record).
    received: Rc<(Cell<u64>, Cell<u64>)>,
}

#[derive(Clone, Copy)]
enum Kind {
    Rtp,
    Rtcp,
}

fn drain(
    socket: glommio::net::UdpSocket,
    kind: Kind,
    counters: Arc<ShardCounters>,
    received: Rc<(Cell<u64>, Cell<u64>)>,
) -> JoinHandle<()> {
    glommio::spawn_local(async move {
        // One buffer per socket, reused for every packet.
        let mut buf = vec![0u8; RTP_BUF];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((n, _from)) => match kind {
                    Kind::Rtp => {
                        counters.rtp_packets_in.inc();
                        counters.rtp_bytes_in.add(n as u64);
                        received.0.set(received.0.get() + 1);
                        received.1.set(received.1.get() + n as u64);
                    }
                    Kind::Rtcp => counters.rtcp_packets_in.inc(),
                },
                // ICMP errors surface here on some kernels; keep reading.
                Err(_) => glommio::timer::sleep(std::time::Duration::from_millis(1)).await,
            }
            glommio::yield_if_needed().await;
        }
    })
    .detach()
}

impl MediaPort {
    /// Bind RTP on `local` and RTCP on the next port, and start draining
    /// both. Must run inside a shard's executor.
    pub fn open(
        local: SocketAddr,
        counters: Arc<ShardCounters>,
    ) -> Result<MediaPort, MediaPortError> {
        let rtcp_addr = SocketAddr::new(local.ip(), local.port().wrapping_add(1));
        if rtcp_addr.port() == 0 {
            return Err(MediaPortError::Bind {
                addr: rtcp_addr,
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        // Bind both before starting either reader: a half-open pair never exists.
        let rtp = bind_rtp(local)?;
        let rtcp = bind_rtp(rtcp_addr)?;
        let received = Rc::new((Cell::new(0), Cell::new(0)));
        let rtp = drain(
            into_glommio_udp(rtp),
            Kind::Rtp,
            Arc::clone(&counters),
            Rc::clone(&received),
        );
        let rtcp = drain(
            into_glommio_udp(rtcp),
            Kind::Rtcp,
            counters,
            Rc::clone(&received),
        );
        Ok(MediaPort {
            local,
            rtp,
            rtcp,
            received,
        })
    }

    /// The RTP address (RTCP is the next port).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// RTP packets and bytes received so far.
    pub fn received(&self) -> (u64, u64) {
        (self.received.0.get(), self.received.1.get())
    }
}

impl Drop for MediaPort {
    fn drop(&mut self) {
        // Each reader owns its socket: cancelling it drops the socket, which
        // closes the port.
        self.rtp.cancel();
        self.rtcp.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};
    use std::time::Duration;

    /// An even port whose successor is free too (probe, then release).
    fn free_pair() -> SocketAddr {
        for _ in 0..100 {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let a = s.local_addr().unwrap();
            if a.port() % 2 == 0 && std::net::UdpSocket::bind(("127.0.0.1", a.port() + 1)).is_ok() {
                return a;
            }
        }
        panic!("no free port pair");
    }

    #[test]
    fn binds_exclusively_counts_packets_and_closes_on_drop() {
        crate::runtime::system::raise_memlock().unwrap();
        let addr = free_pair();
        let rtcp = SocketAddr::new(addr.ip(), addr.port() + 1);
        let h = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(crate::runtime::system::IO_MEMORY_PER_SHARD)
            .spawn(move || async move {
                let counters = Arc::new(ShardCounters::default());
                let port = MediaPort::open(addr, Arc::clone(&counters)).unwrap();
                assert_eq!(port.local(), addr);
                // A second bind of the same port must fail: no silent sharing.
                assert!(matches!(bind_rtp(addr), Err(MediaPortError::Bind { .. })));
                let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                for _ in 0..3 {
                    tx.send_to(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1], addr)
                        .unwrap();
                }
                for _ in 0..200 {
                    if counters.rtp_packets_in.get() == 3 {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                assert_eq!(counters.rtp_packets_in.get(), 3);
                assert_eq!(counters.rtp_bytes_in.get(), 36);
                assert_eq!(port.received(), (3, 36));
                tx.send_to(&[0x81, 200, 0, 1, 0, 0, 0, 1], rtcp).unwrap();
                for _ in 0..200 {
                    if counters.rtcp_packets_in.get() == 1 {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                assert_eq!(counters.rtcp_packets_in.get(), 1);
                assert!(bind_rtp(rtcp).is_err(), "RTCP port must be held too");
                drop(port);
                // Closed: the port can be bound again.
                let mut rebound = false;
                for _ in 0..200 {
                    if bind_rtp(addr).is_ok() && bind_rtp(rtcp).is_ok() {
                        rebound = true;
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                assert!(rebound, "port still bound after MediaPort was dropped");
            })
            .unwrap();
        h.join().unwrap();
    }
}
