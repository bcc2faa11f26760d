//! The LiveKit rooms of one shard as the signal protocol sees them, and the
//! glue between them and the WebSocket connections and SIP calls of that shard.
//!
//! Where it sits: `runtime::livekit_http` hands each admitted WebSocket (on the
//! room's owner shard) to [`SignalRooms::connect`], which joins it to the
//! room's sans-IO [`RoomSignal`] and returns the connection's [`SignalPeer`].
//! The SIP side joins each call's caller as a participant of kind SIP while
//! it rings ([`SignalRooms::sip_call_ringing`]), marks it active at the answer
//! ([`SignalRooms::sip_call_started`]) and removes it at hangup. Whatever a
//! room says (`RoomSignal::poll_output`) is routed here: frames and closes into
//! the per-connection queue of the participant they are for (waking its
//! WebSocket task), media requests to the WebRTC peers and the media engine,
//! and an empty room is dropped. RoomService calls (Twirp) are carried out by
//! [`SignalRooms::room_service`].
//!
//! Owns: the shard's `RoomSignal`s by name, one outbound queue per connected
//! participant, and which SIP call is which participant (and its track).
//! Signal timers (ping timeout, reconnect grace) are fired by
//! [`SignalRooms::handle_timeout`], which a shard task calls at
//! [`SignalRooms::poll_timeout`].
//!
//! WebRTC ([`WebRtc`]): one UDP port per shard, one str0m peer per
//! participant (v0: two, publisher and subscriber), [`webrtc_loop`] carrying
//! datagrams and timers. Audio: a subscriber's slots (v1: its `recvonly`
//! m-lines, announced by msid and `mid_to_track_id`; v0: m-lines we offer on
//! its subscriber PeerConnection) carry the tracks it subscribes to; a
//! participant's Opus is forwarded to its track's subscribers as it came
//! (SFU) and, when the room has callers, handed to the media engine
//! (`MediaCommand`) to be mixed for them; a caller's Opus frames
//! (`caller_audio`) go to its track's subscribers. Data-channel messages and
//! DTMF are relayed as the room routes them.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::livekit_http::{SignalOutput as WsOutput, SignalPeer};
use super::media_driver::MediaCommand;
use crate::livekit::connect::Generation;
use crate::livekit::http::Upgrade;
use crate::livekit::peer::{
    announce_tracks, offered_send_tracks, Datagram, OpusPacket, PeerConfig, PeerEvent, PeerKey,
    PeerOutput, PeerSet, ShardDtls, WebRtcPeer,
};
use crate::livekit::signal::{
    MediaRequest, ParticipantSid, RoomSignal, SignalConfig, SignalOutput, TrackSid,
};
use crate::livekit::sip_participant::{CallStatus, InboundCall, SipParticipant};
use crate::livekit::twirp::{Outcome, RoomCall};
use crate::sip::endpoint::{CallKey, CallerInfo, MediaSpec, PIN_ROOM_PREFIX};
use std::sync::Arc;
use str0m::media::Mid;

/// WebSocket close code for a session the room ended (RFC 6455 s7.4.1: 1000).
const CLOSE_NORMAL: u16 = 1000;

/// Wakes one WebSocket task when its queue gets something (single-threaded).
#[derive(Debug, Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once `notify` has been called since the last time it resolved.
    pub fn notified(&self) -> Notified<'_> {
        Notified(self)
    }
}

pub struct Notified<'a>(&'a Notify);

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.replace(false) {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// One connected participant's outbound queue.
#[derive(Debug, Default)]
struct Outbound {
    queue: RefCell<VecDeque<WsOutput>>,
    notify: Rc<Notify>,
}

/// A subscriber slot: one of our send-only audio m-lines and the track it
/// carries, if any.
type Slot = (Mid, Option<Arc<str>>);

/// The shard's WebRTC side: its UDP port's peers (one per participant).
pub struct WebRtc {
    /// Our host candidate: the UDP socket's address as announced.
    pub host: std::net::SocketAddr,
    dtls: ShardDtls,
    peers: PeerSet,
    by_pid: HashMap<ParticipantSid, PeerKey>,
    deadlines: HashMap<PeerKey, Instant>,
    /// Datagrams to send from the shard's UDP socket.
    pub outbox: VecDeque<Datagram>,
    /// Wakes the UDP task (datagrams queued, a deadline moved).
    pub notify: Rc<Notify>,
    /// Whose peer each is: (participant, room).
    owners: HashMap<PeerKey, (ParticipantSid, String)>,
    /// Data-channel messages received, to route through their room:
    /// (from, room, packet, reliable).
    data_in: Vec<(ParticipantSid, String, Vec<u8>, bool)>,
    /// Per peer, its subscriber slots (our send-only audio m-lines, in order)
    /// and the track each carries, as the last answer announced them.
    down: HashMap<PeerKey, Vec<Slot>>,
    /// Per peer, its own audio m-lines and the tracks it publishes on them.
    up: HashMap<PeerKey, HashMap<Mid, Arc<str>>>,
    /// Where each track is sent: (subscriber's peer, its slot).
    forward: HashMap<Arc<str>, Vec<(PeerKey, Mid)>>,
    /// Tracks of peers dropped on an error, still to be taken out of the
    /// media engine's rooms.
    dropped_tracks: Vec<Arc<str>>,
    /// `forward` gained or lost a route since `SignalRooms` last looked
    /// (which callers to publish is decided only then, not on every event).
    routes_changed: bool,
    /// Opus packets received, to forward and mix: (room, track, packet).
    audio_in: Vec<(String, Arc<str>, OpusPacket)>,
    /// `media_sections_requirement`s asked of each peer, bounded so a client
    /// that never adds the sections cannot make us loop.
    asked: HashMap<PeerKey, u32>,
    /// Per peer, slots freed since its last answer: they must be announced
    /// `inactive` once before they carry another track, or the client would
    /// fire no track event for the new one (the transceiver's direction
    /// would not change; W3C webrtc-pc s4.4.1.6).
    stale: HashMap<PeerKey, Vec<Mid>>,
    /// v0 (`/rtc`): each participant's subscriber PeerConnection, on which
    /// we offer the tracks it subscribes to.
    sub_by_pid: HashMap<ParticipantSid, PeerKey>,
    /// v0: subscriptions not yet offered: (track, its publisher).
    sub_wanted: HashMap<ParticipantSid, Vec<(Arc<str>, String)>>,
    /// v0: the tracks of our outstanding offer, by subscriber peer.
    sub_offered: HashMap<PeerKey, Vec<Slot>>,
    next_offer_id: u32,
}

/// At most this many datagrams wait for the socket; beyond, the oldest are
/// dropped (a peer's ICE/DTLS retransmits, RTP is loss tolerant).
const MAX_OUTBOX: usize = 4096;

impl WebRtc {
    pub fn new(host: std::net::SocketAddr) -> Result<WebRtc, String> {
        let dtls = ShardDtls::generate().map_err(|e| format!("DTLS certificate: {e}"))?;
        Ok(WebRtc {
            host,
            dtls,
            peers: PeerSet::new(),
            by_pid: HashMap::new(),
            deadlines: HashMap::new(),
            outbox: VecDeque::new(),
            notify: Rc::new(Notify::default()),
            owners: HashMap::new(),
            data_in: Vec::new(),
            down: HashMap::new(),
            up: HashMap::new(),
            forward: HashMap::new(),
            routes_changed: false,
            dropped_tracks: Vec::new(),
            audio_in: Vec::new(),
            asked: HashMap::new(),
            stale: HashMap::new(),
            sub_by_pid: HashMap::new(),
            sub_wanted: HashMap::new(),
            sub_offered: HashMap::new(),
            next_offer_id: 0,
        })
    }

    /// Run a peer until it waits: queue its datagrams, note its deadline.
    fn drain(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        loop {
            match peer.poll() {
                Ok(PeerOutput::Transmit(d)) => {
                    if self.outbox.len() >= MAX_OUTBOX {
                        self.outbox.pop_front();
                    }
                    self.outbox.push_back(d);
                }
                Ok(PeerOutput::Event(e)) => match e {
                    PeerEvent::Connected => info!(peer = ?key, "WebRTC peer connected"),
                    PeerEvent::Disconnected => info!(peer = ?key, "WebRTC peer disconnected"),
                    PeerEvent::ChannelOpen { label } => {
                        debug!(peer = ?key, %label, "data channel open")
                    }
                    PeerEvent::ChannelMessage { label, data, .. } => {
                        // LiveKit's DataPackets: `_reliable` and `_lossy`
                        // (a bounded queue: a flood is dropped, not stored).
                        if let Some((pid, room)) = self.owners.get(&key) {
                            if self.data_in.len() < MAX_OUTBOX {
                                let reliable = &*label == "_reliable";
                                self.data_in
                                    .push((pid.clone(), room.clone(), data, reliable));
                            }
                        }
                    }
                    PeerEvent::Opus(p) => {
                        let track = self.up.get(&key).and_then(|m| m.get(&p.mid));
                        if let (Some(track), Some((_, room))) = (track, self.owners.get(&key)) {
                            if self.audio_in.len() < MAX_OUTBOX {
                                self.audio_in.push((room.clone(), Arc::clone(track), p));
                            }
                        }
                    }
                    _ => {}
                },
                Ok(PeerOutput::Timeout(t)) => {
                    self.deadlines.insert(key, t);
                    break;
                }
                Err(e) => {
                    warn!(peer = ?key, error = %e, "WebRTC peer failed; dropped");
                    if let Some((pid, _)) = self.owners.get(&key).cloned() {
                        // Its tracks leave the mix too (SignalRooms tells
                        // the media engine: `take_dropped_tracks`).
                        let gone = self.remove(&pid);
                        self.dropped_tracks.extend(gone);
                    }
                    break;
                }
            }
        }
        self.notify.notify();
    }

    /// A datagram on the shard's UDP port.
    pub fn handle_datagram(&mut self, from: std::net::SocketAddr, bytes: &[u8], now: Instant) {
        match self.peers.handle_datagram(from, self.host, bytes, now) {
            Ok(key) => self.drain(key),
            Err(e) => debug!(%from, error = %e, "WebRTC datagram dropped"),
        }
    }

    /// The earliest peer deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.values().min().copied()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<PeerKey> = self
            .deadlines
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(p) = self.peers.get_mut(key) {
                if let Err(e) = p.handle_timeout(now) {
                    debug!(peer = ?key, error = %e, "WebRTC timeout");
                }
            }
            self.deadlines.remove(&key);
            self.drain(key);
        }
    }

    /// The participant's offer: answer it (creating its peer on the first).
    fn accept_offer(
        &mut self,
        pid: &ParticipantSid,
        room: &str,
        sdp: &str,
        now: Instant,
    ) -> Option<String> {
        let key = match self.by_pid.get(pid) {
            Some(k) => *k,
            None => {
                let k = self.new_peer(pid, room, now)?;
                self.by_pid.insert(pid.clone(), k);
                k
            }
        };
        let answer = match self.peers.get_mut(key)?.accept_offer(sdp) {
            Ok(a) => a,
            Err(e) => {
                warn!(participant = %pid, error = %e, "offer refused");
                return None;
            }
        };
        self.drain(key);
        Some(answer)
    }

    /// A new str0m peer of `pid` in `room` on this port.
    fn new_peer(&mut self, pid: &ParticipantSid, room: &str, now: Instant) -> Option<PeerKey> {
        let config = PeerConfig {
            host: self.host,
            rtp_mode: false,
        };
        match WebRtcPeer::new(&config, &self.dtls, now) {
            Ok(peer) => {
                let k = self.peers.insert(peer);
                self.owners.insert(k, (pid.clone(), room.to_string()));
                Some(k)
            }
            Err(e) => {
                warn!(participant = %pid, error = %e, "WebRTC peer not created");
                None
            }
        }
    }

    fn remote_candidate(&mut self, pid: &ParticipantSid, init: &str, subscriber: bool) {
        let peers = if subscriber {
            &self.sub_by_pid
        } else {
            &self.by_pid
        };
        let Some(key) = peers.get(pid).copied() else {
            return;
        };
        if let Some(p) = self.peers.get_mut(key) {
            if let Err(e) = p.add_remote_candidate_init(init) {
                debug!(participant = %pid, error = %e, "remote candidate ignored");
            }
        }
        self.drain(key);
    }

    /// Drop `pid`'s peer and everything kept about it; returns the tracks
    /// it published (to take out of the mix).
    fn remove(&mut self, pid: &ParticipantSid) -> Vec<Arc<str>> {
        self.sub_wanted.remove(pid);
        if let Some(key) = self.sub_by_pid.remove(pid) {
            self.drop_peer(key);
        }
        let Some(key) = self.by_pid.remove(pid) else {
            return Vec::new();
        };
        self.drop_peer(key);
        self.up
            .remove(&key)
            .map(|m| m.into_values().collect())
            .unwrap_or_default()
    }

    /// Close one peer and forget its routes.
    fn drop_peer(&mut self, key: PeerKey) {
        if let Some(mut p) = self.peers.remove(key) {
            let _ = p.close();
        }
        self.deadlines.remove(&key);
        self.owners.remove(&key);
        self.down.remove(&key);
        self.asked.remove(&key);
        self.stale.remove(&key);
        for dests in self.forward.values_mut() {
            dests.retain(|(k, _)| *k != key);
        }
        self.forward.retain(|_, d| !d.is_empty());
        self.routes_changed = true;
        self.sub_offered.remove(&key);
    }

    /// Give `pid`'s subscriptions (`wanted`: track, its publisher) slots in
    /// the answer just made, and rewrite the answer to announce them.
    /// Returns the answer, its `mid_to_track_id`, and how many subscriptions
    /// found no free slot (the client must add sections).
    fn assign(
        &mut self,
        pid: &ParticipantSid,
        answer: &str,
        wanted: &[(Arc<str>, String)],
    ) -> (String, HashMap<String, String>, u32) {
        let Some(key) = self.by_pid.get(pid).copied() else {
            return (answer.to_owned(), HashMap::new(), 0);
        };
        let Some(peer) = self.peers.get_mut(key) else {
            return (answer.to_owned(), HashMap::new(), 0);
        };
        let slots = peer.subscriber_slots();
        let old = self.down.remove(&key).unwrap_or_default();
        // Freed since the last answer: idle in this one, reusable after.
        let stale = self.stale.remove(&key).unwrap_or_default();
        // Keep what a slot carried if it is still wanted; new slots start free.
        let mut down: Vec<Slot> = slots
            .iter()
            .map(|&mid| {
                let kept = old
                    .iter()
                    .find(|(m, _)| *m == mid)
                    .and_then(|(_, t)| t.clone())
                    .filter(|t| wanted.iter().any(|(w, _)| w == t));
                (mid, kept)
            })
            .collect();
        let mut missing = 0;
        for (track, _) in wanted {
            if down.iter().any(|(_, t)| t.as_ref() == Some(track)) {
                continue;
            }
            match down
                .iter_mut()
                .find(|(m, t)| t.is_none() && !stale.contains(m))
            {
                Some(slot) => slot.1 = Some(Arc::clone(track)),
                None => missing += 1,
            }
        }
        let mut assigned = HashMap::new();
        let mut mid_to_track = HashMap::new();
        let mut idle = Vec::new();
        for (mid, track) in &down {
            match track {
                Some(t) => {
                    let publisher = wanted
                        .iter()
                        .find(|(w, _)| w == t)
                        .map_or("", |(_, p)| p.as_str());
                    assigned.insert(*mid, (format!("{publisher}|{t}"), t.to_string()));
                    mid_to_track.insert(mid.to_string(), t.to_string());
                }
                None => idle.push(*mid),
            }
        }
        // The forwarding table: this peer's old routes out, the new ones in.
        for dests in self.forward.values_mut() {
            dests.retain(|(k, _)| *k != key);
        }
        for (mid, track) in &down {
            if let Some(t) = track {
                self.forward
                    .entry(Arc::clone(t))
                    .or_default()
                    .push((key, *mid));
            }
        }
        self.forward.retain(|_, d| !d.is_empty());
        self.routes_changed = true;
        self.down.insert(key, down);
        (
            announce_tracks(answer, &assigned, &idle),
            mid_to_track,
            missing,
        )
    }

    /// Learn which of `pid`'s offered m-lines carry which of its tracks
    /// (the whole set: an offer says everything it sends). Returns the
    /// tracks new in this offer and those no longer sent (unpublished: the
    /// client removed the sender and renegotiated).
    fn learn_published(
        &mut self,
        pid: &ParticipantSid,
        tracks: Vec<(Mid, Arc<str>)>,
    ) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let Some(key) = self.by_pid.get(pid).copied() else {
            return (Vec::new(), Vec::new());
        };
        let old = self.up.remove(&key).unwrap_or_default();
        let new: Vec<Arc<str>> = tracks
            .iter()
            .filter(|(_, t)| !old.values().any(|o| o == t))
            .map(|(_, t)| Arc::clone(t))
            .collect();
        let gone: Vec<Arc<str>> = old
            .into_values()
            .filter(|o| !tracks.iter().any(|(_, t)| t == o))
            .collect();
        self.up.insert(key, tracks.into_iter().collect());
        (new, gone)
    }

    /// Ask `pid`'s client for more receive sections, within the bound.
    fn may_ask(&mut self, pid: &ParticipantSid) -> bool {
        let Some(key) = self.by_pid.get(pid).copied() else {
            return false;
        };
        let n = self.asked.entry(key).or_default();
        *n += 1;
        *n <= crate::livekit::peer::MAX_AUDIO_MIDS as u32
    }

    /// Whether `pid` has a peer (has offered).
    fn has_peer(&self, pid: &ParticipantSid) -> bool {
        self.by_pid.contains_key(pid)
    }

    /// Stop sending `track` to `pid` (its slot is freed at the next answer).
    fn unassign(&mut self, pid: &ParticipantSid, track: &str) {
        if let Some(w) = self.sub_wanted.get_mut(pid) {
            w.retain(|(t, _)| &**t != track);
        }
        let keys: Vec<PeerKey> = [self.by_pid.get(pid), self.sub_by_pid.get(pid)]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for key in keys {
            self.unassign_on(key, track);
        }
    }

    fn unassign_on(&mut self, key: PeerKey, track: &str) {
        if let Some(dests) = self.forward.get_mut(track) {
            dests.retain(|(k, _)| *k != key);
        }
        self.forward.retain(|_, d| !d.is_empty());
        self.routes_changed = true;
        if let Some(down) = self.down.get_mut(&key) {
            for slot in down.iter_mut() {
                if slot.1.as_deref() == Some(track) {
                    slot.1 = None;
                    self.stale.entry(key).or_default().push(slot.0);
                }
            }
        }
    }

    /// v1: whether `pid`'s PeerConnection has a slot that can take a track
    /// after one more offer/answer (idle now, or freed and to be announced
    /// idle by that answer).
    fn has_free_slot(&self, pid: &ParticipantSid) -> bool {
        self.by_pid.get(pid).is_some_and(|k| {
            self.down
                .get(k)
                .is_some_and(|d| d.iter().any(|(_, t)| t.is_none()))
        })
    }

    /// v0: `pid` subscribes to `track`: it is offered on its subscriber
    /// PeerConnection (created on the first). Returns the offer to send
    /// (SDP, id, mid_to_track_id), unless one is still outstanding.
    fn subscribe_v0(
        &mut self,
        pid: &ParticipantSid,
        room: &str,
        track: Arc<str>,
        publisher: String,
        now: Instant,
    ) -> Option<(String, u32, HashMap<String, String>)> {
        let known = self.sub_by_pid.get(pid).is_some_and(|k| {
            self.down
                .get(k)
                .into_iter()
                .chain(self.sub_offered.get(k))
                .flatten()
                .any(|(_, t)| t.as_ref() == Some(&track))
        });
        let wanted = self.sub_wanted.entry(pid.clone()).or_default();
        if !known && !wanted.iter().any(|(t, _)| *t == track) && wanted.len() < 64 {
            wanted.push((track, publisher));
        }
        self.offer_v0(pid, room, now)
    }

    /// v0: offer `pid` what it waits for, if no offer is outstanding.
    fn offer_v0(
        &mut self,
        pid: &ParticipantSid,
        room: &str,
        now: Instant,
    ) -> Option<(String, u32, HashMap<String, String>)> {
        if self.sub_wanted.get(pid).is_none_or(Vec::is_empty) {
            return None;
        }
        let key = match self.sub_by_pid.get(pid) {
            Some(k) => *k,
            None => {
                let k = self.new_peer(pid, room, now)?;
                self.sub_by_pid.insert(pid.clone(), k);
                k
            }
        };
        let peer = self.peers.get_mut(key)?;
        if peer.has_pending_offer() {
            return None;
        }
        let wanted = self.sub_wanted.remove(pid).unwrap_or_default();
        let msids: Vec<(String, String)> = wanted
            .iter()
            .map(|(t, publisher)| (format!("{publisher}|{t}"), t.to_string()))
            .collect();
        let (sdp, mids) = match peer.offer_tracks(&msids) {
            Ok(Some(offer)) => offer,
            Ok(None) => return None,
            Err(e) => {
                warn!(participant = %pid, error = %e, "subscriber offer not made");
                return None;
            }
        };
        let mut mid_to_track = HashMap::new();
        let mut offered = Vec::new();
        for (mid, (track, _)) in mids.into_iter().zip(wanted) {
            mid_to_track.insert(mid.to_string(), track.to_string());
            offered.push((mid, Some(track)));
        }
        self.sub_offered.insert(key, offered);
        self.drain(key);
        self.next_offer_id = self.next_offer_id.wrapping_add(1);
        Some((sdp, self.next_offer_id, mid_to_track))
    }

    /// v0: the client's answer on its subscriber PeerConnection: the offered
    /// tracks start flowing.
    fn accept_answer_v0(&mut self, pid: &ParticipantSid, sdp: &str) {
        let Some(key) = self.sub_by_pid.get(pid).copied() else {
            return;
        };
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        if let Err(e) = peer.accept_answer(sdp) {
            warn!(participant = %pid, error = %e, "subscriber answer refused");
            return;
        }
        for (mid, track) in self.sub_offered.remove(&key).unwrap_or_default() {
            if let Some(t) = &track {
                self.forward
                    .entry(Arc::clone(t))
                    .or_default()
                    .push((key, mid));
                self.routes_changed = true;
            }
            self.down.entry(key).or_default().push((mid, track));
        }
        self.drain(key);
    }

    /// Whether anyone receives `track`.
    fn is_forwarded(&self, track: &str) -> bool {
        self.forward.contains_key(track)
    }

    /// Send one Opus packet of `track` to each of its subscribers (the same
    /// payload, shared).
    fn send_track(&mut self, track: &str, payload: &Arc<[u8]>, rtp_timestamp: u32, now: Instant) {
        // Taken out while the peers run (no copy per packet), put back after.
        let Some((name, dests)) = self.forward.remove_entry(track) else {
            return;
        };
        for &(key, mid) in &dests {
            if let Some(p) = self.peers.get_mut(key) {
                if !p.is_connected() {
                    continue;
                }
                if let Err(e) = p.write_opus(mid, Arc::clone(payload), rtp_timestamp, now) {
                    debug!(peer = ?key, %mid, error = %e, "Opus packet not sent");
                }
            }
            self.drain(key);
        }
        // A peer that failed meanwhile was dropped: not a route any more.
        let mut dests = dests;
        dests.retain(|(k, _)| self.owners.contains_key(k));
        if !dests.is_empty() {
            self.forward.entry(name).or_default().extend(dests);
        }
    }

    /// Send a data packet to `pid` on `_reliable` or `_lossy`.
    fn send_data(&mut self, pid: &ParticipantSid, packet: &[u8], reliable: bool) {
        let Some(key) = self.by_pid.get(pid).copied() else {
            return;
        };
        let label = if reliable { "_reliable" } else { "_lossy" };
        if let Some(p) = self.peers.get_mut(key) {
            if let Err(e) = p.send_data(label, true, packet) {
                debug!(participant = %pid, error = %e, "data packet not sent");
            }
        }
        self.drain(key);
    }
}

/// Plays a digit to the SIP caller with this Call-ID; false if it could not.
pub type DtmfToCaller = Rc<dyn Fn(&str, char) -> bool>;

/// The LiveKit rooms of one shard. See the module doc.
pub struct SignalRooms {
    shard: usize,
    config: SignalConfig,
    seeds: u64,
    rooms: HashMap<String, RoomSignal>,
    conns: HashMap<ParticipantSid, Rc<Outbound>>,
    /// SIP Call-ID -> (room, participant, its published track).
    sip: HashMap<String, (String, ParticipantSid, TrackSid)>,
    /// The callers whose voice the media engine publishes (Call-IDs).
    publishing: std::collections::HashSet<String>,
    /// Rooms without callers: who speaks, from the levels the SDKs put in
    /// their packets (RFC 6464), per 500 ms window.
    header_levels: HashMap<String, LevelWindow>,
    /// When the earliest of those windows ends (checked per datagram, so the
    /// windows are walked only when one is due).
    next_level_close: Option<Instant>,
    /// The shard's WebRTC port, when it could be opened.
    pub webrtc: Option<WebRtc>,
    /// Plays a digit to a SIP caller (by Call-ID), as RFC 4733 events: the
    /// shard's media engine, set by the shard.
    pub dtmf_to_caller: Option<DtmfToCaller>,
    /// Hands requests to the shard's media engine (queued for its next tick).
    pub to_media: Option<Rc<dyn Fn(MediaCommand)>>,
    /// Hangs up a phone caller (BYE) by Call-ID: the shard's SIP endpoint.
    /// Called by whoever took the hang-ups out of [`SignalRooms::room_service`],
    /// once the rooms are no longer borrowed.
    pub hang_up: Option<HangUp>,
}

/// One room's RFC 6464 levels over the current window: per track, the sum
/// of linear levels and how many packets carried one.
#[derive(Debug)]
struct LevelWindow {
    start: Instant,
    tracks: HashMap<Arc<str>, (f64, u32)>,
}

/// How long a level window lasts (as the media room's, `media::room`).
const LEVEL_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);
/// Speaking above -35 dBov (livekit-server's default active level), linear.
const SPEAKING_LINEAR: f64 = 0.017_782_794;

/// Why the room side ends a phone call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangUpCause {
    /// RoomService `RemoveParticipant` of its SIP participant.
    ParticipantRemoved,
    /// RoomService `DeleteRoom`.
    RoomDeleted,
}

/// See [`SignalRooms::hang_up`].
pub type HangUp = Rc<dyn Fn(&str, HangUpCause)>;

impl SignalRooms {
    pub fn new(shard: usize, seed: u64) -> SignalRooms {
        SignalRooms {
            shard,
            config: SignalConfig {
                node_id: format!("switchboard-shard-{shard}"),
                ..SignalConfig::default()
            },
            seeds: seed,
            rooms: HashMap::new(),
            conns: HashMap::new(),
            sip: HashMap::new(),
            publishing: Default::default(),
            header_levels: HashMap::new(),
            next_level_close: None,
            webrtc: None,
            dtmf_to_caller: None,
            to_media: None,
            hang_up: None,
        }
    }

    fn room(&mut self, name: &str, now: Instant) -> &mut RoomSignal {
        if !self.rooms.contains_key(name) {
            self.seeds = self.seeds.wrapping_mul(6364136223846793005).wrapping_add(1);
            let created_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let room = RoomSignal::new(name, self.config.clone(), self.seeds, created_ms, now);
            info!(room = name, shard = self.shard, "LiveKit room created");
            self.rooms.insert(name.to_string(), room);
        }
        self.rooms
            .get_mut(name)
            .expect("inserted above when it was missing")
    }

    /// An admitted WebSocket on this (the owner) shard: join it to its room.
    /// `Err` carries the close code and reason when the room refuses it.
    pub fn connect(
        this: &Rc<RefCell<SignalRooms>>,
        up: &Upgrade,
        now: Instant,
    ) -> Result<RoomConnection, (u16, String)> {
        let mut rooms = this.borrow_mut();
        let name = up.admission.room.clone();
        let joined = rooms.room(&name, now).join(&up.admission, &up.request, now);
        let pid = match joined {
            Ok(pid) => pid,
            Err(e) => {
                warn!(room = %name, error = %e, "signal join refused");
                rooms.pump(&name);
                // 1008: policy violation (RFC 6455 s7.4.1).
                return Err((1008, e.to_string()));
            }
        };
        let out = Rc::new(Outbound::default());
        rooms.conns.insert(pid.clone(), Rc::clone(&out));
        rooms.pump(&name);
        info!(room = %name, participant = %pid, identity = %up.admission.identity, "participant joined");
        Ok(RoomConnection {
            rooms: Rc::clone(this),
            room: name,
            pid,
            out,
            closed: false,
        })
    }

    /// A SIP call rings on this shard (180 sent; it will be answered into
    /// `room`): its caller joins the room as a participant of kind SIP with
    /// `sip.callStatus` ringing, as livekit-sip joins before it answers.
    pub fn sip_call_ringing(
        &mut self,
        call: &CallKey,
        room: &str,
        caller: &CallerInfo,
        now: Instant,
    ) {
        self.join_caller(&call.to_string(), room, caller, CallStatus::Ringing, now);
    }

    /// A SIP call was answered (or renegotiated) on this shard: its caller is
    /// (or stays) a participant of kind SIP in the room, `sip.callStatus`
    /// active. A call in a PIN waiting room (`pin:<call-id>`) is not
    /// announced anywhere.
    pub fn sip_call_started(&mut self, spec: &MediaSpec, now: Instant) {
        let call_id = spec.call.to_string();
        if spec.room.starts_with(PIN_ROOM_PREFIX) {
            return;
        }
        if let Some((room, pid, _)) = self.sip.get(&call_id) {
            if *room == spec.room {
                // Answered after ringing, or a re-INVITE: same participant.
                let (room, pid) = (room.clone(), pid.clone());
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.set_call_status(&pid, CallStatus::Active);
                }
                self.pump(&room);
                return;
            }
            self.sip_call_ended(&call_id);
        }
        self.join_caller(&call_id, &spec.room, &spec.caller, CallStatus::Active, now);
    }

    fn join_caller(
        &mut self,
        call_id: &str,
        room_name: &str,
        caller: &CallerInfo,
        status: CallStatus,
        now: Instant,
    ) {
        if room_name.starts_with(PIN_ROOM_PREFIX) || self.sip.contains_key(call_id) {
            return;
        }
        let no_headers = Default::default();
        // `sip.callID` is LiveKit's own id for the call (SCL_...); the SIP
        // Call-ID goes in `sip.callIDFull`.
        let scl = crate::livekit::ids::new_id("SCL_", &mut rand::thread_rng());
        let call = InboundCall {
            from_user: &caller.number,
            from_host: &caller.from_host,
            to_user: &caller.callee,
            call_id: &scl,
            sip_call_id: call_id,
            call_tag: &caller.call_tag,
            trunk_id: &caller.trunk_id,
            rule_id: &caller.rule_id,
            rule_attributes: &caller.attributes,
            header_attributes: &no_headers,
            hide_phone_number: caller.hide_phone_number,
        };
        let participant = SipParticipant::inbound(&call, status);
        let room = self.room(room_name, now);
        match room.join_sip(participant, false, now) {
            Ok((pid, track)) => {
                info!(call_id, room = room_name, participant = %pid, track = %track.as_str(), status = ?status, "SIP caller joined the LiveKit room");
                self.sip
                    .insert(call_id.to_owned(), (room_name.to_owned(), pid, track));
            }
            Err(e) => {
                warn!(call_id, room = room_name, error = %e, "SIP caller not joined")
            }
        }
        self.pump(room_name);
    }

    /// The SIP call hung up: its participant leaves.
    pub fn sip_call_ended(&mut self, call_id: &str) {
        let Some((room, pid, _)) = self.sip.remove(call_id) else {
            return;
        };
        // A call that stays up (moved to another room) stops encoding for
        // the subscribers it had here.
        if self.publishing.remove(call_id) {
            if let Some(m) = &self.to_media {
                m(MediaCommand::Publish {
                    call: CallKey(call_id.into()),
                    on: false,
                });
            }
        }
        if let Some(r) = self.rooms.get_mut(&room) {
            // As livekit-sip: the status says hangup, then the participant goes.
            r.set_call_status(&pid, CallStatus::Hangup);
            r.remove_participant(&pid, livekit_protocol::DisconnectReason::ClientInitiated);
        }
        self.pump(&room);
    }

    /// The earliest signal timer of any room.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rooms
            .values()
            .filter_map(RoomSignal::poll_timeout)
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.poll_timeout().is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            if let Some(r) = self.rooms.get_mut(&name) {
                r.handle_timeout(now);
            }
            self.pump(&name);
        }
    }

    /// Route everything `name` has to say.
    fn pump(&mut self, name: &str) {
        let mut empty = false;
        {
            let Some(room) = self.rooms.get_mut(name) else {
                return;
            };
            while let Some(o) = room.poll_output() {
                match o {
                    SignalOutput::Send { to, frame } => {
                        if let Some(c) = self.conns.get(&to) {
                            c.queue.borrow_mut().push_back(WsOutput::Frame(frame));
                            c.notify.notify();
                        }
                    }
                    SignalOutput::Close { pid, reason } => {
                        if let Some(c) = self.conns.remove(&pid) {
                            c.queue.borrow_mut().push_back(WsOutput::Close {
                                code: CLOSE_NORMAL,
                                reason: format!("{reason:?}"),
                            });
                            c.notify.notify();
                        }
                    }
                    SignalOutput::Media(MediaRequest::ParticipantLeft { pid, reason }) => {
                        debug!(room = name, participant = %pid, ?reason, "participant left");
                        self.sip.retain(|_, (_, p, _)| *p != pid);
                        if let Some(w) = &mut self.webrtc {
                            for track in w.remove(&pid) {
                                if let Some(m) = &self.to_media {
                                    m(MediaCommand::RemoveTrack { track });
                                }
                            }
                        }
                    }
                    SignalOutput::Media(MediaRequest::AcceptOffer { pid, sdp, id }) => {
                        let Some(w) = self.webrtc.as_mut() else {
                            debug!(room = name, participant = %pid, "offer not answered (no WebRTC port on this shard)");
                            continue;
                        };
                        let Some(answer) = w.accept_offer(&pid, name, &sdp, Instant::now()) else {
                            continue;
                        };
                        // The tracks it publishes, by the msid of its offer.
                        let published: Vec<(Mid, Arc<str>)> = offered_send_tracks(&sdp)
                            .into_iter()
                            .filter_map(|(mid, cid)| {
                                room.track_by_cid(&pid, &cid)
                                    .map(|t| (mid, t.as_str().into()))
                            })
                            .collect();
                        let (new, gone) = w.learn_published(&pid, published);
                        for track in new {
                            info!(room = name, participant = %pid, track = %track, "audio track published (forwarded to subscribers, mixed for callers)");
                            if let Some(m) = &self.to_media {
                                m(MediaCommand::AddTrack {
                                    room: name.to_owned(),
                                    track,
                                });
                            }
                        }
                        for track in gone {
                            info!(room = name, participant = %pid, track = %track, "audio track no longer sent: unpublished");
                            if let Some(sid) = room.track_sid(&track) {
                                room.unpublish_track(&pid, &sid);
                            }
                            if let Some(m) = &self.to_media {
                                m(MediaCommand::RemoveTrack { track });
                            }
                        }
                        // What it subscribes to gets the answer's free slots
                        // (v1; a v0 client receives on its subscriber PC).
                        let v1 = room.generation(&pid) == Some(Generation::V1);
                        let wanted: Vec<(Arc<str>, String)> = room
                            .subscriptions(&pid)
                            .filter(|_| v1)
                            .filter_map(|t| {
                                room.publisher(t)
                                    .map(|p| (t.as_str().into(), p.as_str().to_owned()))
                            })
                            .collect();
                        let (answer, mid_to_track, missing) = w.assign(&pid, &answer, &wanted);
                        if let Err(e) = room.send_answer(&pid, answer, id, mid_to_track) {
                            debug!(room = name, participant = %pid, error = %e, "answer not sent");
                        }
                        if missing > 0 {
                            // Slots this answer idled can take tracks after
                            // one more exchange; else the client adds some.
                            if w.has_free_slot(&pid) {
                                let _ = room.require_media_sections(&pid, 0);
                            } else if w.may_ask(&pid) {
                                info!(room = name, participant = %pid, n = missing, "asking the client for more receive slots");
                                let _ = room.require_media_sections(&pid, missing);
                            }
                        }
                    }
                    SignalOutput::Media(MediaRequest::Subscribe {
                        subscriber,
                        publisher,
                        track,
                    }) => {
                        let Some(w) = &mut self.webrtc else {
                            continue;
                        };
                        match room.generation(&subscriber) {
                            // v1, once it has answered: the track needs a
                            // slot, announced in an answer, so the client
                            // must re-offer: with no new section when a
                            // slot is free, else adding one (bounded).
                            // Before its first offer, that answer assigns it.
                            Some(Generation::V1) if w.has_free_slot(&subscriber) => {
                                let _ = room.require_media_sections(&subscriber, 0);
                            }
                            Some(Generation::V1)
                                if w.has_peer(&subscriber) && w.may_ask(&subscriber) =>
                            {
                                info!(room = name, participant = %subscriber, n = 1, "asking the client for more receive slots");
                                let _ = room.require_media_sections(&subscriber, 1);
                            }
                            // v0: we offer it on the subscriber PC.
                            Some(Generation::V0) => {
                                let offer = w.subscribe_v0(
                                    &subscriber,
                                    name,
                                    track.as_str().into(),
                                    publisher.as_str().to_owned(),
                                    Instant::now(),
                                );
                                if let Some((sdp, id, map)) = offer {
                                    if let Err(e) = room.send_offer(&subscriber, sdp, id, map) {
                                        debug!(room = name, participant = %subscriber, error = %e, "offer not sent");
                                    }
                                }
                            }
                            // Not answered yet (its first answer assigns the
                            // slot), asked too often; or a phone caller, who
                            // hears the mix, not tracks.
                            Some(Generation::V1) | None => {}
                        }
                    }
                    SignalOutput::Media(MediaRequest::Unsubscribe { subscriber, track }) => {
                        if let Some(w) = &mut self.webrtc {
                            w.unassign(&subscriber, track.as_str());
                        }
                    }
                    SignalOutput::Media(MediaRequest::RemoteCandidate {
                        pid,
                        candidate_init,
                        target,
                        ..
                    }) => {
                        if let Some(w) = &mut self.webrtc {
                            let sub = target == livekit_protocol::SignalTarget::Subscriber;
                            w.remote_candidate(&pid, &candidate_init, sub);
                        }
                    }
                    SignalOutput::Media(MediaRequest::AcceptAnswer { pid, sdp, .. }) => {
                        let Some(w) = &mut self.webrtc else {
                            continue;
                        };
                        w.accept_answer_v0(&pid, &sdp);
                        // What was subscribed meanwhile goes in the next offer.
                        if let Some((sdp, id, map)) = w.offer_v0(&pid, name, Instant::now()) {
                            if let Err(e) = room.send_offer(&pid, sdp, id, map) {
                                debug!(room = name, participant = %pid, error = %e, "offer not sent");
                            }
                        }
                    }
                    SignalOutput::Media(req) => {
                        debug!(
                            room = name,
                            ?req,
                            "media request not carried out yet (the room model change)"
                        );
                    }
                    SignalOutput::RoomEmpty => empty = true,
                }
            }
        }
        self.sync_publishing();
        if empty
            && self
                .rooms
                .get(name)
                .is_some_and(|r| r.participants().next().is_none())
        {
            self.rooms.remove(name);
            info!(room = name, shard = self.shard, "LiveKit room ended");
        }
    }

    /// Publish a caller's voice exactly while someone receives its track.
    fn sync_publishing(&mut self) {
        let Some(w) = &mut self.webrtc else {
            return;
        };
        if !std::mem::take(&mut w.routes_changed) {
            return;
        }
        let w: &WebRtc = w;
        for (call, (_, _, track)) in &self.sip {
            let on = w.is_forwarded(track.as_str());
            if on != self.publishing.contains(call) {
                if on {
                    self.publishing.insert(call.clone());
                } else {
                    self.publishing.remove(call);
                }
                info!(call_id = %call, track = %track.as_str(), on, "caller's track published to subscribers");
                if let Some(m) = &self.to_media {
                    m(MediaCommand::Publish {
                        call: crate::sip::endpoint::CallKey(call.as_str().into()),
                        on,
                    });
                }
            }
        }
        self.publishing.retain(|c| self.sip.contains_key(c));
    }

    /// Who speaks in `room`, as the media room measured it: the room's
    /// `speakers_changed` (callers by Call-ID, WebRTC tracks by sid, each
    /// reported as its participant).
    pub fn media_speakers(
        &mut self,
        room: &str,
        callers: &[(CallKey, f32)],
        tracks: &[(Arc<str>, f32)],
    ) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let mut levels: Vec<(ParticipantSid, f32)> = Vec::new();
        for (call, level) in callers {
            if let Some((_, pid, _)) = self.sip.get(&*call.0) {
                levels.push((pid.clone(), *level));
            }
        }
        for (track, level) in tracks {
            if let Some(pid) = r.publisher_of(track) {
                match levels.iter_mut().find(|(p, _)| p == pid) {
                    Some(l) => l.1 = l.1.max(*level),
                    None => levels.push((pid.clone(), *level)),
                }
            }
        }
        r.report_levels(&levels);
        let name = room.to_owned();
        self.pump(&name);
    }

    /// One Opus frame of a published caller: to its track's subscribers.
    pub fn caller_audio(
        &mut self,
        call_id: &str,
        payload: &[u8],
        rtp_timestamp: u32,
        now: Instant,
    ) {
        let (Some((_, _, track)), Some(w)) = (self.sip.get(call_id), &mut self.webrtc) else {
            return;
        };
        let payload: Arc<[u8]> = payload.into();
        w.send_track(track.as_str(), &payload, rtp_timestamp, now);
    }

    /// A datagram on the shard's WebRTC port.
    pub fn webrtc_datagram(&mut self, from: std::net::SocketAddr, bytes: &[u8], now: Instant) {
        if let Some(w) = &mut self.webrtc {
            w.handle_datagram(from, bytes, now);
        }
        self.route_data();
        self.route_audio(now);
        self.close_level_windows(now);
    }

    /// Report who speaks in the caller-less rooms whose level window is over
    /// (`speakers_changed` when that set changed), and start the next.
    fn close_level_windows(&mut self, now: Instant) {
        if self.next_level_close.is_none_or(|t| now < t) {
            return;
        }
        let due: Vec<String> = self
            .header_levels
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.start) >= LEVEL_WINDOW)
            .map(|(r, _)| r.clone())
            .collect();
        for name in due {
            let Some(window) = self.header_levels.remove(&name) else {
                continue;
            };
            let Some(room) = self.rooms.get_mut(&name) else {
                continue;
            };
            if room.has_sip_participant() {
                continue; // the media room measures it now
            }
            let mut levels: Vec<(ParticipantSid, f32)> = Vec::new();
            for (track, (sum, n)) in &window.tracks {
                let level = sum / f64::from((*n).max(1));
                if level <= SPEAKING_LINEAR {
                    continue;
                }
                if let Some(pid) = room.publisher_of(track) {
                    levels.push((pid.clone(), level as f32));
                }
            }
            room.report_levels(&levels);
            // A room that still gets packets opens its next window with them.
            if !window.tracks.is_empty() {
                self.header_levels.insert(
                    name.clone(),
                    LevelWindow {
                        start: now,
                        tracks: HashMap::new(),
                    },
                );
            }
            self.pump(&name);
        }
        self.next_level_close = self
            .header_levels
            .values()
            .map(|w| w.start + LEVEL_WINDOW)
            .min();
    }

    /// Forward the Opus packets the peers received to their tracks'
    /// subscribers (SFU: the packet as it came), and into the mix when the
    /// room has callers. Tracks of peers that failed leave the mix.
    fn route_audio(&mut self, now: Instant) {
        let Some(w) = &mut self.webrtc else {
            return;
        };
        let w: &mut WebRtc = w;
        for track in std::mem::take(&mut w.dropped_tracks) {
            if let Some(m) = &self.to_media {
                m(MediaCommand::RemoveTrack { track });
            }
        }
        for (room, track, p) in std::mem::take(&mut w.audio_in) {
            w.send_track(&track, &p.payload, p.rtp_timestamp, now);
            let callers = self
                .rooms
                .get(&room)
                .is_some_and(RoomSignal::has_sip_participant);
            // No callers, so no decoding: who speaks comes from the level
            // the sender put in the packet.
            if let (false, Some(dbov)) = (callers, p.audio_level) {
                let next = &mut self.next_level_close;
                let window = self.header_levels.entry(room.clone()).or_insert_with(|| {
                    let end = now + LEVEL_WINDOW;
                    *next = Some(next.map_or(end, |n| n.min(end)));
                    LevelWindow {
                        start: now,
                        tracks: HashMap::new(),
                    }
                });
                let sum = window.tracks.entry(Arc::clone(&track)).or_default();
                sum.0 += 10f64.powf(f64::from(dbov.min(0)) / 20.0);
                sum.1 += 1;
            }
            if let (true, Some(m)) = (callers, &self.to_media) {
                m(MediaCommand::TrackPacket {
                    track,
                    sequence: p.sequence,
                    rtp_timestamp: p.rtp_timestamp,
                    arrival: p.received,
                    payload: p.payload,
                });
            }
        }
    }

    /// The WebRTC peers' timers.
    pub fn webrtc_timeout(&mut self, now: Instant) {
        if let Some(w) = &mut self.webrtc {
            w.handle_timeout(now);
        }
        self.route_data();
        self.route_audio(now);
        self.close_level_windows(now);
    }

    /// Relay the data packets the peers received, as their rooms say
    /// (`RoomSignal::route_data`: destinations, the sender's identity set by us).
    fn route_data(&mut self) {
        let Some(w) = &mut self.webrtc else {
            return;
        };
        let w: &mut WebRtc = w;
        for (from, room, packet, reliable) in std::mem::take(&mut w.data_in) {
            let Some(r) = self.rooms.get(&room) else {
                continue;
            };
            match r.route_data(&from, &packet, reliable) {
                Ok(route) => {
                    for to in &route.to {
                        w.send_data(to, &route.packet, route.reliable);
                    }
                    for (pid, digit) in &route.dtmf_to_sip {
                        let call = self
                            .sip
                            .iter()
                            .find(|(_, (_, p, _))| p == pid)
                            .map(|(c, _)| c.clone());
                        let played = match (call, &self.dtmf_to_caller) {
                            (Some(c), Some(play)) => play(&c, *digit),
                            _ => false,
                        };
                        if played {
                            info!(room = %room, participant = %pid, digit = %digit, "DTMF played to the caller");
                        } else {
                            debug!(room = %room, participant = %pid, digit = %digit, "DTMF not played (call gone, no telephone-event, or 32 digits already queued)");
                        }
                    }
                }
                Err(e) => {
                    debug!(room = %room, participant = %from, error = %e, "data packet dropped")
                }
            }
        }
    }

    /// The caller of `call_id` pressed `digit` (RFC 4733): the room's
    /// participants get a LiveKit SIP DTMF data packet (the SDKs'
    /// `sip_dtmf_received`).
    pub fn sip_dtmf(&mut self, call_id: &str, digit: char) {
        let Some((room, pid, _)) = self.sip.get(call_id) else {
            return; // not in a LiveKit room (a PIN room, or no LiveKit port)
        };
        let (Some(r), Some(w)) = (self.rooms.get(room), &mut self.webrtc) else {
            return;
        };
        match r.sip_dtmf(pid, digit) {
            Ok(route) => {
                for to in &route.to {
                    w.send_data(to, &route.packet, true);
                }
            }
            Err(e) => debug!(call_id, room = %room, error = %e, "DTMF not relayed"),
        }
    }

    /// A RoomService call for a room of this shard. A participant removed
    /// leaves with `PARTICIPANT_REMOVED` (its SDK is told, its WebSocket
    /// closed); a deleted room's participants leave with `ROOM_DELETED`. Phone
    /// callers among them are returned, to be hung up (BYE) by the caller of
    /// this: their participant leaves now, with `sip.callStatus` hangup.
    pub fn room_service(
        &mut self,
        call: &RoomCall,
        _now: Instant,
    ) -> (Outcome, Vec<(String, HangUpCause)>) {
        use livekit_protocol::DisconnectReason;
        let Some(room) = self.rooms.get_mut(call.room()) else {
            return (Outcome::NotFound("room not found"), Vec::new());
        };
        let (victims, outcome, cause, reason) = match call {
            RoomCall::ListParticipants { .. } => {
                let list = room.participants().cloned().collect();
                return (Outcome::Participants(list), Vec::new());
            }
            RoomCall::UpdateRoomMetadata { metadata, .. } => {
                room.set_room_metadata(metadata);
                let info = room.room().clone();
                let name = call.room().to_owned();
                self.pump(&name);
                return (Outcome::Room(Box::new(info)), Vec::new());
            }
            RoomCall::UpdateParticipant {
                identity,
                metadata,
                name,
                attributes,
                ..
            } => {
                let Some(pid) = room.find_identity(identity).cloned() else {
                    return (Outcome::NotFound("participant not found"), Vec::new());
                };
                let outcome =
                    match room.update_participant(&pid, metadata.clone(), name.clone(), attributes)
                    {
                        Ok(()) => match room.participant(&pid) {
                            Some(p) => Outcome::Participant(Box::new(p.clone())),
                            None => Outcome::NotFound("participant not found"),
                        },
                        Err(e) => Outcome::Invalid(e),
                    };
                let name = call.room().to_owned();
                self.pump(&name);
                return (outcome, Vec::new());
            }
            RoomCall::RemoveParticipant { identity, .. } => match room.find_identity(identity) {
                Some(pid) => (
                    vec![pid.clone()],
                    Outcome::Removed,
                    HangUpCause::ParticipantRemoved,
                    DisconnectReason::ParticipantRemoved,
                ),
                None => return (Outcome::NotFound("participant not found"), Vec::new()),
            },
            RoomCall::DeleteRoom { .. } => {
                let all = room.participant_sids().cloned().collect();
                (
                    all,
                    Outcome::Deleted,
                    HangUpCause::RoomDeleted,
                    DisconnectReason::RoomDeleted,
                )
            }
        };
        let mut hangups = Vec::new();
        for pid in &victims {
            let caller = self
                .sip
                .iter()
                .find(|(_, (_, p, _))| p == pid)
                .map(|(c, _)| c.clone());
            if let Some(call_id) = caller {
                self.sip.remove(&call_id);
                room.set_call_status(pid, CallStatus::Hangup);
                info!(call_id = %call_id, room = %call.room(), participant = %pid, ?cause, "phone caller removed from the room: hanging up");
                hangups.push((call_id, cause));
            }
            room.remove_participant(pid, reason);
        }
        let name = call.room().to_owned();
        self.pump(&name);
        (outcome, hangups)
    }

    /// Rooms open on this shard.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }
}

/// One WebSocket's view of its room: the [`SignalPeer`] the loop drives.
pub struct RoomConnection {
    rooms: Rc<RefCell<SignalRooms>>,
    room: String,
    pid: ParticipantSid,
    out: Rc<Outbound>,
    closed: bool,
}

impl SignalPeer for RoomConnection {
    fn handle_frame(&mut self, frame: &[u8], now: Instant) {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(r) = rooms.rooms.get_mut(&self.room) {
            if let Err(e) = r.handle_request(&self.pid, frame, now) {
                debug!(room = %self.room, participant = %self.pid, error = %e, "signal request refused");
            }
        }
        rooms.pump(&self.room);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.rooms.borrow_mut().handle_timeout(now);
    }

    fn handle_closed(&mut self, now: Instant) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let mut rooms = self.rooms.borrow_mut();
        rooms.conns.remove(&self.pid);
        if let Some(r) = rooms.rooms.get_mut(&self.room) {
            r.connection_lost(&self.pid, now);
        }
        rooms.pump(&self.room);
    }

    fn poll_output(&mut self, _now: Instant) -> WsOutput {
        if let Some(o) = self.out.queue.borrow_mut().pop_front() {
            return o;
        }
        // Signal timers run from the shard's task; a room's own frames arrive
        // through the queue and `notify`.
        WsOutput::Idle(None)
    }

    fn notify(&self) -> Option<Rc<Notify>> {
        Some(Rc::clone(&self.out.notify))
    }
}

impl Drop for RoomConnection {
    fn drop(&mut self) {
        if !self.closed {
            self.handle_closed(Instant::now());
        }
    }
}

/// The shard's WebRTC UDP port: datagrams in to the peers, the peers'
/// datagrams out, their timers fired.
pub async fn webrtc_loop(rooms: Rc<RefCell<SignalRooms>>, socket: glommio::net::UdpSocket) {
    let socket = Rc::new(socket);
    let recv = {
        let rooms = Rc::clone(&rooms);
        let socket = Rc::clone(&socket);
        async move {
            let mut buf = vec![0u8; 2048];
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        rooms
                            .borrow_mut()
                            .webrtc_datagram(from, &buf[..n], Instant::now());
                    }
                    Err(e) => {
                        debug!(error = %e, "WebRTC port receive error");
                        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        }
    };
    let send = async move {
        loop {
            let notify = rooms.borrow().webrtc.as_ref().map(|w| Rc::clone(&w.notify));
            let Some(notify) = notify else { return };
            // Send what is queued.
            loop {
                let next = rooms
                    .borrow_mut()
                    .webrtc
                    .as_mut()
                    .and_then(|w| w.outbox.pop_front());
                let Some(d) = next else { break };
                if let Err(e) = socket.send_to(&d.bytes, d.to).await {
                    debug!(to = %d.to, error = %e, "WebRTC send failed");
                }
            }
            let deadline = rooms
                .borrow()
                .webrtc
                .as_ref()
                .and_then(WebRtc::poll_timeout);
            let wait = deadline.map_or(std::time::Duration::from_secs(1), |t| {
                t.saturating_duration_since(Instant::now())
                    .min(std::time::Duration::from_secs(1))
            });
            futures_lite::future::or(notify.notified(), glommio::timer::sleep(wait)).await;
            rooms.borrow_mut().webrtc_timeout(Instant::now());
        }
    };
    futures_lite::future::zip(recv, send).await;
}

/// Fire the shard's signal timers as they come due (ping timeouts, reconnect
/// grace); sleeps at most a second so rooms created meanwhile are seen.
pub async fn timer_loop(rooms: Rc<RefCell<SignalRooms>>) {
    loop {
        let now = Instant::now();
        let next = rooms.borrow().poll_timeout();
        let wait = next.map_or(std::time::Duration::from_secs(1), |t| {
            t.saturating_duration_since(now)
                .min(std::time::Duration::from_secs(1))
        });
        glommio::timer::sleep(wait).await;
        rooms.borrow_mut().handle_timeout(Instant::now());
    }
}
