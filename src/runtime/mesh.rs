//! The shard mesh: bounded channels from every shard to every other shard.
//!
//! Data flow: a SIP message that lands on the wrong shard (the endpoint says
//! `Output::Forward`) crosses here once, as [`ShardMsg::Inbound`], to the shard
//! that owns the call; a response or request the owner must send over a TCP
//! connection held by another shard crosses as [`ShardMsg::Transmit`]. Built on
//! glommio's `channel_mesh` (lock-free SPSC queues between executors).
//!
//! Owns: the sending side of this shard's links. Sending never waits: a full
//! link drops the message and the caller counts it (SIP retransmits over UDP;
//! over TCP the transaction times out), so a slow shard can neither block
//! another shard's loop nor make memory grow without bound.

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::GlommioError;
use thiserror::Error;

use crate::sip::endpoint::{Inbound, Transmit};

/// Messages per directed link (shard a -> shard b). At ~1 KiB per SIP message
/// this bounds a link at about 1 MiB.
pub const LINK_CAPACITY: usize = 1024;

/// What one shard hands to another.
#[derive(Debug)]
pub enum ShardMsg {
    /// A SIP message for the call the receiving shard owns.
    Inbound(Inbound),
    /// Bytes to write on a TCP connection the receiving shard holds
    /// (`peer.conn.shard` is the receiver).
    Transmit(Transmit),
    /// An admitted LiveKit signal connection for a room the receiving shard
    /// owns (`runtime::livekit_http`).
    LiveKit(super::livekit_http::Handoff),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MeshError {
    #[error("link to shard {0} is full; message dropped")]
    Full(usize),
    #[error("shard {0} has stopped; message dropped")]
    Closed(usize),
    #[error("no shard {0} in the mesh")]
    NoSuchShard(usize),
}

/// One builder for the whole process; each shard clones it and calls [`join`].
pub fn builder(shards: usize) -> MeshBuilder<ShardMsg, Full> {
    MeshBuilder::full(shards, LINK_CAPACITY)
}

/// Join the mesh from inside a shard's executor. Resolves once every shard has
/// joined. glommio numbers peers by executor id; `start` creates executors in
/// shard order, so the peer id equals the shard index (checked by the caller).
pub async fn join(
    builder: MeshBuilder<ShardMsg, Full>,
) -> Result<(Mesh, Receivers<ShardMsg>), String> {
    let (senders, receivers) = builder
        .join()
        .await
        .map_err(|e| format!("joining the shard mesh: {e}"))?;
    Ok((Mesh { senders }, receivers))
}

/// This shard's sending side.
pub struct Mesh {
    senders: Senders<ShardMsg>,
}

impl Mesh {
    /// Index of this shard in the mesh.
    pub fn shard(&self) -> usize {
        self.senders.peer_id()
    }

    pub fn shards(&self) -> usize {
        self.senders.nr_consumers()
    }

    /// Hand `msg` to shard `to` without waiting. On error the message is gone.
    pub fn try_send(&self, to: usize, msg: ShardMsg) -> Result<(), MeshError> {
        if to >= self.shards() || to == self.shard() {
            return Err(MeshError::NoSuchShard(to));
        }
        match self.senders.try_send_to(to, msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(_)) => Err(MeshError::Full(to)),
            Err(_) => Err(MeshError::Closed(to)),
        }
    }

    /// Tell every peer we send no more (their receiving tasks then end).
    pub fn close(&self) {
        self.senders.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::endpoint::{Peer, Transport};
    use bytes::Bytes;
    use glommio::{LocalExecutorBuilder, Placement};
    use std::time::Instant;

    fn inbound(tag: &'static str) -> ShardMsg {
        let a = "127.0.0.1:5060".parse().unwrap();
        let peer = Peer {
            transport: Transport::Udp,
            remote: a,
            local: a,
            conn: None,
        };
        ShardMsg::Inbound(Inbound::new(
            peer,
            Bytes::from_static(tag.as_bytes()),
            Instant::now(),
        ))
    }

    /// Two executors: shard 0 fills its link to shard 1 before shard 1 reads;
    /// the overflow is refused as `Full`, never blocks, and what fit arrives.
    #[test]
    fn bounded_link_drops_when_full_and_delivers_the_rest() {
        crate::runtime::system::raise_memlock().unwrap();
        let mb = builder(2);
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let mb0 = mb.clone();
        let h0 = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(crate::runtime::system::IO_MEMORY_PER_SHARD)
            .spawn(move || async move {
                let (mesh, _rx) = join(mb0).await.unwrap();
                assert_eq!(mesh.shard(), 0);
                let mut sent = 0;
                let mut full = 0;
                for _ in 0..LINK_CAPACITY + 10 {
                    match mesh.try_send(1, inbound("x")) {
                        Ok(()) => sent += 1,
                        Err(MeshError::Full(1)) => full += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                assert_eq!(
                    mesh.try_send(0, inbound("self")),
                    Err(MeshError::NoSuchShard(0))
                );
                assert_eq!(
                    mesh.try_send(7, inbound("none")),
                    Err(MeshError::NoSuchShard(7))
                );
                go_tx.send(()).unwrap();
                mesh.close();
                (sent, full)
            })
            .unwrap();
        let h1 = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(crate::runtime::system::IO_MEMORY_PER_SHARD)
            .spawn(move || async move {
                let (mesh, mut rx) = join(mb).await.unwrap();
                assert_eq!(mesh.shard(), 1);
                // Wait (off the executor's hot path: a test) until shard 0 is done.
                glommio::executor()
                    .spawn_blocking(move || go_rx.recv().unwrap())
                    .await;
                let mut got = 0;
                for (_from, r) in rx.streams() {
                    while let Some(m) = r.recv().await {
                        assert!(matches!(m, ShardMsg::Inbound(_)));
                        got += 1;
                    }
                }
                got
            })
            .unwrap();
        let (sent, full) = h0.join().unwrap();
        let got = h1.join().unwrap();
        assert!(full >= 10, "sent {sent} full {full}");
        assert_eq!(got, sent);
    }
}
