//! A call's RTP port on its owner shard: bind, drain, close.
//!
//! Data flow: the endpoint's `Output::MediaOpen { call, local }` (after SDP
//! negotiation picked `local` from this shard's slice of the RTP range) -> the
//! shard binds a UDP socket here and a reader task drains it; `MediaClose`
//! drops the [`MediaPort`], which cancels the reader and closes the socket.
//! For now packets are only counted; the RTP core (jitter buffer, decode,
//! RTCP) will take them from here.
//!
//! Owns: the per-call RTP socket and its reader task.

use std::io;
use std::net::SocketAddr;
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

/// An open RTP port. Dropping it cancels the reader and closes the socket.
pub struct MediaPort {
    local: SocketAddr,
    reader: JoinHandle<()>,
}

impl MediaPort {
    /// Bind `local` and start draining it. Must run inside a shard's executor.
    pub fn open(
        local: SocketAddr,
        counters: Arc<ShardCounters>,
    ) -> Result<MediaPort, MediaPortError> {
        let socket = into_glommio_udp(bind_rtp(local)?);
        let reader = glommio::spawn_local(async move {
            // One buffer per port, reused for every packet.
            let mut buf = vec![0u8; RTP_BUF];
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, _from)) => {
                        counters.rtp_packets_in.inc();
                        counters.rtp_bytes_in.add(n as u64);
                    }
                    // ICMP errors surface here on some kernels; keep reading.
                    Err(_) => glommio::timer::sleep(std::time::Duration::from_millis(1)).await,
                }
            }
        })
        .detach();
        Ok(MediaPort { local, reader })
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for MediaPort {
    fn drop(&mut self) {
        // The reader owns the socket: cancelling it drops the socket, which
        // closes the port.
        self.reader.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};
    use std::time::Duration;

    fn free_port() -> SocketAddr {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    }

    #[test]
    fn binds_exclusively_counts_packets_and_closes_on_drop() {
        crate::runtime::system::raise_memlock().unwrap();
        let addr = free_port();
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
                drop(port);
                // Closed: the port can be bound again.
                let mut rebound = false;
                for _ in 0..200 {
                    if bind_rtp(addr).is_ok() {
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
