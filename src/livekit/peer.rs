//! One LiveKit SDK participant's WebRTC session on the owner shard: ICE-lite,
//! DTLS-SRTP, Opus audio and the SCTP data channels `_reliable` / `_lossy`,
//! built on str0m's sans-IO `Rtc`.
//!
//! Where it sits in the data flow (issue 5, `docs/livekit.md` section 4):
//!
//! ```text
//! signal session --publisher_offer / trickle--> WebRtcPeer::accept_offer / add_remote_candidate
//!                <--answer SDP-----------------
//! shard UDP port (7882 + shard) --datagram--> PeerSet::handle_datagram (demux by source
//!     address, then by the STUN USERNAME's ufrag) --> WebRtcPeer::handle_datagram
//! WebRtcPeer::poll --> Transmit (to the socket) | Event (to the room) | Timeout (timer heap)
//! room (SFU forward, or the SIP caller's encoded track) --> WebRtcPeer::write_opus / send_data
//! ```
//!
//! What it owns: one str0m [`Rtc`] per participant, built for Opus (the
//! video m-lines an SDK pre-allocates are accepted but answered `inactive`:
//! no video is ever sent or received), in
//! ICE-lite mode (RFC 8445 s2.5: we never send checks, only answer them) with
//! a single host candidate (the shard's own UDP address); the mapping between
//! data channel ids and their labels; per-mid send state (payload type,
//! sequence numbers in RTP mode, the extended RTP time in frame mode).
//!
//! It never reads the clock or touches a socket: datagrams, candidates and
//! `now: Instant` come in, datagrams, events and the next deadline come out.
//! The poll contract is str0m's: after any input, call [`WebRtcPeer::poll`]
//! until it returns [`PeerOutput::Timeout`], and call
//! [`WebRtcPeer::handle_timeout`] at (or after) that instant.
//!
//! Everything a peer sends is bounded: the offer's size, the number of
//! remote candidates, the number of data channels and their label length,
//! the size of one data channel message (SCTP max message size; str0m then
//! keeps at most ~1 MiB of SCTP reassembly storage per peer, allocated as
//! data arrives).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::format::Codec;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig, RtcError};

/// Opus always runs an RTP clock of 48 kHz, whatever the encoder's sampling
/// rate (RFC 7587 s4.1): a 20 ms frame advances the timestamp by 960.
pub const OPUS_CLOCK_RATE: u32 = 48_000;

/// Largest offer we parse. The Python SDK 1.2.1's first offer (3 audio, 3
/// video, 1 data m-line) is about 15 KiB; renegotiations add audio m-lines.
pub const MAX_OFFER_LEN: usize = 128 * 1024;

/// Trickled remote candidates kept per peer. ICE-lite learns the working
/// address from the checks themselves (peer-reflexive), so a handful is plenty.
pub const MAX_REMOTE_CANDIDATES: usize = 32;

/// Data channels per peer. LiveKit clients open `_reliable` and `_lossy`
/// (and `_data_track` with newer protocols); more are closed on sight.
pub const MAX_CHANNELS: usize = 8;

/// Longest data channel label kept (LiveKit's are under 16 bytes).
pub const MAX_LABEL_LEN: usize = 64;

/// SCTP max message size announced and enforced (RFC 8841 s6,
/// `a=max-message-size`). LiveKit caps a reliable data packet at 15 KiB; a
/// little headroom for the protobuf envelope.
pub const MAX_DATA_MESSAGE: u32 = 64 * 1024;

/// Audio m-lines tracked per peer (send state per mid).
pub const MAX_AUDIO_MIDS: usize = 64;

/// The longest a [`WebRtcPeer::poll`] deadline lies in the future. str0m's
/// ICE-lite agent only prunes a silent candidate pair (15 s without a binding
/// request, RFC 7675 consent) when it is handed a timeout; capping the
/// deadline makes sure the driver visits it even when nothing else is due.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why a peer refused an input or an action.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("offer too large: {0} bytes")]
    OfferTooLarge(usize),
    #[error("bad offer: {0}")]
    BadOffer(String),
    #[error("offer refused: {0}")]
    OfferRefused(RtcError),
    #[error("bad candidate: {0}")]
    BadCandidate(String),
    #[error("too many remote candidates")]
    TooManyCandidates,
    #[error("not a STUN, DTLS, RTP or RTCP datagram")]
    NotWebRtc,
    #[error("no audio m-line {0} that we can send on")]
    UnknownMid(Mid),
    #[error("no open data channel labelled {0:?}")]
    NoChannel(String),
    #[error("data channel {0:?} is full")]
    ChannelFull(String),
    #[error("{0} cannot be announced as a host candidate: {1}")]
    BadHost(SocketAddr, String),
    #[error("could not make a DTLS certificate")]
    Certificate,
    #[error("webrtc: {0}")]
    Rtc(#[from] RtcError),
}

/// Crypto shared by every peer of a shard: the provider (aws-lc-rs) and one
/// DTLS certificate. Sharing the certificate roughly halves `Rtc` creation
/// time (docs/livekit.md s2); the fingerprint in each answer is the same,
/// which WebRTC allows (RFC 8827 s6.5 only asks that it match the handshake).
#[derive(Clone)]
pub struct ShardDtls {
    provider: Arc<CryptoProvider>,
    cert: Option<DtlsCert>,
}

impl ShardDtls {
    /// The provider with one certificate made now, for every peer.
    pub fn generate() -> Result<Self, PeerError> {
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or(PeerError::Certificate)?;
        Ok(ShardDtls {
            provider: Arc::new(provider),
            cert: Some(cert),
        })
    }

    /// The provider only: each `Rtc` makes its own certificate (slower; kept
    /// for the creation benchmark and for deployments that want per-peer keys).
    pub fn per_peer_certificates() -> Self {
        ShardDtls {
            provider: Arc::new(str0m::crypto::from_feature_flags()),
            cert: None,
        }
    }
}

/// How one peer is built.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The shard's UDP address, announced as our only (host) candidate: the
    /// bind address, or `[webrtc] external_ip` behind a 1:1 NAT.
    pub host: SocketAddr,
    /// RTP mode (str0m `set_rtp_mode`): packets in and out as RTP, no frame
    /// depacketising; what an SFU forwards. Frame mode otherwise.
    pub rtp_mode: bool,
}

/// A datagram to send from the shard's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// One Opus packet from the participant.
#[derive(Debug, Clone)]
pub struct OpusPacket {
    pub mid: Mid,
    /// The Opus payload (RFC 7587), shared: an SFU hands this same `Arc` to
    /// every subscriber's [`WebRtcPeer::write_opus`] without copying.
    pub payload: Arc<[u8]>,
    /// RTP timestamp, 48 kHz (RFC 7587 s4.1).
    pub rtp_timestamp: u32,
    /// RTP sequence number (the first, if str0m joined several packets).
    pub sequence: u16,
    /// When the datagram carrying it was received (the `now` it came with).
    pub received: Instant,
    /// The sender's audio level (RFC 6464 header extension), in dBov (0 is
    /// the loudest, -127 silence), when it sent one.
    pub audio_level: Option<i8>,
}

/// What happened on the session, for the room and the signal session.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// ICE and DTLS are up: media and data can flow.
    Connected,
    /// ICE lost the peer (no check for the consent timeout) or the peer
    /// closed DTLS/SCTP. Reported once per connection.
    Disconnected,
    /// An Opus packet arrived on an audio m-line.
    Opus(OpusPacket),
    /// A data channel opened (the client opens `_reliable` / `_lossy` with
    /// DCEP, RFC 8832).
    ChannelOpen { label: Arc<str> },
    /// A data channel message (a LiveKit `DataPacket` on `_reliable` /
    /// `_lossy`).
    ChannelMessage {
        label: Arc<str>,
        binary: bool,
        data: Vec<u8>,
    },
    /// A data channel closed.
    ChannelClosed { label: Arc<str> },
}

/// What [`WebRtcPeer::poll`] hands back.
#[derive(Debug)]
pub enum PeerOutput {
    /// Send this datagram.
    Transmit(Datagram),
    /// Something happened.
    Event(PeerEvent),
    /// Nothing more until this instant: call [`WebRtcPeer::handle_timeout`].
    Timeout(Instant),
}

/// Send state of one audio m-line we may send on.
#[derive(Debug, Clone, Copy)]
struct AudioTx {
    pt: Pt,
    /// RTP mode: the next sequence number (extended, str0m keeps the ROC).
    next_seq: u64,
    /// Frame mode: the last extended RTP time written, to extend the 32-bit
    /// timestamps we are given across wrap-around.
    last_time: Option<u64>,
    /// Its m-line's position in the SDP (slots are handed out in order).
    line: usize,
}

/// A LiveKit participant's WebRTC session (one `RTCPeerConnection` on the
/// other side).
pub struct WebRtcPeer {
    rtc: Rtc,
    host: SocketAddr,
    local_ufrag: String,
    rtp_mode: bool,
    audio: HashMap<Mid, AudioTx>,
    channels: HashMap<ChannelId, Arc<str>>,
    remote_candidates: usize,
    /// ICE + DTLS have been up at least once (str0m's `Event::Connected`).
    dtls_up: bool,
    /// Currently connected, as last reported.
    connected: bool,
    /// The latest `now` seen, to bound the deadline (`MAX_POLL_INTERVAL`).
    last_now: Instant,
    /// Our offer awaiting the client's answer (a v0 subscriber PeerConnection).
    pending: Option<str0m::change::SdpPendingOffer>,
}

impl std::fmt::Debug for WebRtcPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcPeer")
            .field("host", &self.host)
            .field("local_ufrag", &self.local_ufrag)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl WebRtcPeer {
    /// A peer for one participant, before any offer. Refused when the host
    /// address cannot be a candidate (e.g. the unspecified `0.0.0.0` of a
    /// wildcard bind: the announced address must be one the client can reach).
    pub fn new(config: &PeerConfig, dtls: &ShardDtls, now: Instant) -> Result<Self, PeerError> {
        let candidate = Candidate::host(config.host, "udp")
            .map_err(|e| PeerError::BadHost(config.host, e.to_string()))?;
        let mut rtc_config = RtcConfig::new()
            .set_ice_lite(true)
            // Opus for audio; nothing else gets negotiated (docs/livekit.md
            // s2, SDK probe).
            .clear_codecs()
            .enable_opus(true, false)
            // Video is accepted only to be answered `inactive` (see
            // `idle_video`): a rejected m-line (port 0) stops the client's
            // transceiver, and livekit-client 2.23 then builds its next offer
            // on the stopped one and Chromium refuses it ("Transceiver not
            // found based on m-line index").
            .enable_vp8(true)
            .set_crypto_provider(dtls.provider.clone())
            .set_sctp_max_message_size(MAX_DATA_MESSAGE)
            .set_rtp_mode(config.rtp_mode);
        if let Some(cert) = &dtls.cert {
            rtc_config = rtc_config.set_dtls_cert(cert.clone());
        }
        let mut rtc = rtc_config.build(now);
        rtc.add_local_candidate(candidate);
        let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Ok(WebRtcPeer {
            rtc,
            host: config.host,
            local_ufrag,
            rtp_mode: config.rtp_mode,
            audio: HashMap::new(),
            channels: HashMap::new(),
            remote_candidates: 0,
            dtls_up: false,
            connected: false,
            last_now: now,
            pending: None,
        })
    }

    /// Our ICE username fragment: the first half of the USERNAME in every
    /// check the client sends (RFC 8445 s7.2.2), the demux key of [`PeerSet`].
    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// The shard address announced as our candidate.
    pub fn host(&self) -> SocketAddr {
        self.host
    }

    /// ICE and DTLS are up and the peer has not gone away.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Answer the client's offer (the v1 `publisher_offer`, or a later
    /// `offer` on renegotiation). The answer carries `a=ice-lite`, our host
    /// candidate and `a=setup:passive` (the client is the DTLS client).
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, PeerError> {
        if sdp.len() > MAX_OFFER_LEN {
            return Err(PeerError::OfferTooLarge(sdp.len()));
        }
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| PeerError::BadOffer(e.to_string()))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(PeerError::OfferRefused)?;
        let answer = idle_video(&answer.to_sdp_string());
        self.learn_audio_mids(&answer);
        Ok(answer)
    }

    /// Record the send state of each accepted audio m-line of our answer.
    /// The mids are read from the answer str0m wrote (not from the offer),
    /// so rejected m-lines (port 0) are left out.
    fn learn_audio_mids(&mut self, answer: &str) {
        let Some(pt) = self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return;
        };
        let mut in_audio = false;
        let mut index = 0usize;
        for line in answer.lines() {
            if let Some(m) = line.strip_prefix("m=") {
                index += 1;
                // "m=audio 9 ..." is accepted; "m=audio 0 ..." is rejected.
                in_audio = m.starts_with("audio ") && !m.starts_with("audio 0 ");
            } else if let Some(mid) = line.strip_prefix("a=mid:") {
                if !in_audio || self.audio.len() >= MAX_AUDIO_MIDS {
                    continue;
                }
                let mid = Mid::from(mid.trim());
                let sends = self
                    .rtc
                    .media(mid)
                    .is_some_and(|m| m.kind() == MediaKind::Audio && m.direction().is_sending());
                if sends {
                    self.audio.entry(mid).or_insert(AudioTx {
                        pt,
                        next_seq: u64::from(rand::random::<u16>()),
                        last_time: None,
                        line: index,
                    });
                }
            }
        }
    }

    /// v0 subscriber PeerConnection (we offer): new send-only audio m-lines,
    /// one per `(stream id, track id)` (the msid LiveKit's SDKs read as
    /// `<participant>|<track>`). Returns the offer and the new mids in order;
    /// `None` while an earlier offer still waits for its answer (offer/answer
    /// is one exchange at a time, RFC 3264 s4).
    pub fn offer_tracks(
        &mut self,
        tracks: &[(String, String)],
    ) -> Result<Option<(String, Vec<Mid>)>, PeerError> {
        if self.pending.is_some() || tracks.is_empty() {
            return Ok(None);
        }
        let mut api = self.rtc.sdp_api();
        let mids: Vec<Mid> = tracks
            .iter()
            .map(|(stream, track)| {
                api.add_media(
                    MediaKind::Audio,
                    str0m::media::Direction::SendOnly,
                    Some(stream.clone()),
                    Some(track.clone()),
                    None,
                )
            })
            .collect();
        let Some((offer, pending)) = api.apply() else {
            return Ok(None);
        };
        self.pending = Some(pending);
        Ok(Some((offer.to_sdp_string(), mids)))
    }

    /// Whether our offer waits for an answer.
    pub fn has_pending_offer(&self) -> bool {
        self.pending.is_some()
    }

    /// The client's answer to our last offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), PeerError> {
        if sdp.len() > MAX_OFFER_LEN {
            return Err(PeerError::OfferTooLarge(sdp.len()));
        }
        let Some(pending) = self.pending.take() else {
            return Err(PeerError::BadOffer("an answer without our offer".into()));
        };
        let answer = str0m::change::SdpAnswer::from_sdp_string(sdp)
            .map_err(|e| PeerError::BadOffer(e.to_string()))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(PeerError::OfferRefused)?;
        self.learn_audio_mids(sdp);
        Ok(())
    }

    /// The audio m-lines we can send Opus on, after the last answer.
    pub fn sending_mids(&self) -> impl Iterator<Item = Mid> + '_ {
        self.audio.keys().copied()
    }

    /// The audio m-lines we only send on (the client offered them
    /// `recvonly`): the slots for the tracks it subscribes to, in m-line
    /// order. A `sendrecv` line is the client's own publication.
    pub fn subscriber_slots(&self) -> Vec<Mid> {
        let mut slots: Vec<(usize, Mid)> = self
            .audio
            .iter()
            .filter_map(|(&mid, tx)| {
                let m = self.rtc.media(mid)?;
                (m.direction() == str0m::media::Direction::SendOnly).then_some((tx.line, mid))
            })
            .collect();
        slots.sort_unstable();
        slots.into_iter().map(|(_, m)| m).collect()
    }

    /// A trickled client candidate (`candidate:...` with or without `a=`).
    pub fn add_remote_candidate(&mut self, candidate: &str) -> Result<(), PeerError> {
        if self.remote_candidates >= MAX_REMOTE_CANDIDATES {
            return Err(PeerError::TooManyCandidates);
        }
        let text = candidate.trim();
        let text = text.strip_prefix("a=").unwrap_or(text);
        let candidate =
            Candidate::from_sdp_string(text).map_err(|e| PeerError::BadCandidate(e.to_string()))?;
        self.rtc.add_remote_candidate(candidate);
        self.remote_candidates += 1;
        Ok(())
    }

    /// A trickled candidate as LiveKit's signal carries it
    /// (`TrickleRequest.candidateInit`): the client's `RTCIceCandidateInit`
    /// as JSON, `{"candidate":"candidate:...","sdpMid":"0",...}`. An empty
    /// `candidate` is the end-of-candidates marker (W3C WebRTC s4.8.1) and
    /// is accepted as a no-op.
    pub fn add_remote_candidate_init(&mut self, json: &str) -> Result<(), PeerError> {
        /// The one field we need; the others (sdpMid, sdpMLineIndex,
        /// usernameFragment) do not matter with BUNDLE and one ICE agent.
        #[derive(serde::Deserialize)]
        struct CandidateInit {
            candidate: String,
        }
        // An RTCIceCandidateInit is a few hundred bytes.
        const MAX_INIT_LEN: usize = 4096;
        if json.len() > MAX_INIT_LEN {
            return Err(PeerError::BadCandidate(format!("{} bytes", json.len())));
        }
        let init: CandidateInit =
            serde_json::from_str(json).map_err(|e| PeerError::BadCandidate(e.to_string()))?;
        if init.candidate.trim().is_empty() {
            return Ok(());
        }
        self.add_remote_candidate(&init.candidate)
    }

    /// Whether this datagram belongs to this peer (str0m `Rtc::accepts`:
    /// the nominated remote address, or a STUN message with our ufrag).
    pub fn accepts(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) -> bool {
        match Receive::new(Protocol::Udp, from, to, bytes) {
            Ok(receive) => self.rtc.accepts(&Input::Receive(self.last_now, receive)),
            Err(_) => false,
        }
    }

    /// A datagram from the shard's socket. Datagrams that are none of STUN,
    /// DTLS, RTP or RTCP (RFC 7983 demux) are refused with
    /// [`PeerError::NotWebRtc`]; the caller drops them. Malformed DTLS, SRTP
    /// that fails authentication and the like are dropped by str0m.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), PeerError> {
        self.last_now = self.last_now.max(now);
        let receive =
            Receive::new(Protocol::Udp, from, to, bytes).map_err(|_| PeerError::NotWebRtc)?;
        self.rtc.handle_input(Input::Receive(now, receive))?;
        Ok(())
    }

    /// The deadline from the last [`PeerOutput::Timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), PeerError> {
        self.last_now = self.last_now.max(now);
        self.rtc.handle_input(Input::Timeout(now))?;
        Ok(())
    }

    /// The next output. Drain until [`PeerOutput::Timeout`].
    pub fn poll(&mut self) -> Result<PeerOutput, PeerError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Transmit(t) => {
                    return Ok(PeerOutput::Transmit(Datagram {
                        from: t.source,
                        to: t.destination,
                        bytes: t.contents.into(),
                    }))
                }
                Output::Timeout(at) => {
                    let cap = self.last_now + MAX_POLL_INTERVAL;
                    return Ok(PeerOutput::Timeout(at.min(cap)));
                }
                Output::Event(event) => {
                    if let Some(event) = self.translate(event) {
                        return Ok(PeerOutput::Event(event));
                    }
                }
            }
        }
    }

    /// str0m's event to ours, or `None` for what the room does not need.
    fn translate(&mut self, event: Event) -> Option<PeerEvent> {
        match event {
            Event::Connected => {
                self.dtls_up = true;
                self.became_connected()
            }
            Event::IceConnectionStateChange(state) => match state {
                IceConnectionState::Disconnected => self.became_disconnected(),
                IceConnectionState::Connected | IceConnectionState::Completed if self.dtls_up => {
                    self.became_connected()
                }
                _ => None,
            },
            Event::Closed => self.became_disconnected(),
            Event::MediaData(data) => {
                if data.params.spec().codec != Codec::Opus {
                    return None;
                }
                Some(PeerEvent::Opus(OpusPacket {
                    mid: data.mid,
                    payload: data.data,
                    // The extended time's low 32 bits are the RTP timestamp.
                    rtp_timestamp: data.time.numer() as u32,
                    sequence: data.seq_range.start().as_u16(),
                    received: data.network_time,
                    audio_level: data.ext_vals.audio_level,
                }))
            }
            Event::RtpPacket(packet) => {
                let mid = self.rtc.media_by_ssrc_mid(packet.header.ssrc)?;
                Some(PeerEvent::Opus(OpusPacket {
                    mid,
                    payload: packet.payload,
                    rtp_timestamp: packet.header.timestamp,
                    sequence: packet.header.sequence_number,
                    received: packet.timestamp,
                    audio_level: packet.header.ext_vals.audio_level,
                }))
            }
            Event::ChannelOpen(id, label) => {
                if self.channels.len() >= MAX_CHANNELS || label.len() > MAX_LABEL_LEN {
                    tracing::debug!(label_len = label.len(), "closing an extra data channel");
                    self.rtc.direct_api().close_data_channel(id);
                    return None;
                }
                let label: Arc<str> = label.into();
                self.channels.insert(id, label.clone());
                Some(PeerEvent::ChannelOpen { label })
            }
            Event::ChannelData(data) => {
                let label = self.channels.get(&data.id)?.clone();
                Some(PeerEvent::ChannelMessage {
                    label,
                    binary: data.binary,
                    data: data.data,
                })
            }
            Event::ChannelClose(id) => {
                let label = self.channels.remove(&id)?;
                Some(PeerEvent::ChannelClosed { label })
            }
            _ => None,
        }
    }

    fn became_connected(&mut self) -> Option<PeerEvent> {
        if self.connected {
            return None;
        }
        self.connected = true;
        tracing::debug!(ufrag = %self.local_ufrag, "webrtc peer connected");
        Some(PeerEvent::Connected)
    }

    fn became_disconnected(&mut self) -> Option<PeerEvent> {
        if !self.connected {
            return None;
        }
        self.connected = false;
        tracing::debug!(ufrag = %self.local_ufrag, "webrtc peer disconnected");
        Some(PeerEvent::Disconnected)
    }

    /// Send one Opus packet on an audio m-line we answered as sending.
    /// `payload` is taken as an `Arc<[u8]>` so a forwarded packet is shared,
    /// not copied, across subscribers. Before ICE/DTLS are up str0m drops it.
    pub fn write_opus(
        &mut self,
        mid: Mid,
        payload: impl Into<Arc<[u8]>>,
        rtp_timestamp: u32,
        now: Instant,
    ) -> Result<(), PeerError> {
        self.last_now = self.last_now.max(now);
        let tx = self.audio.get_mut(&mid).ok_or(PeerError::UnknownMid(mid))?;
        if self.rtp_mode {
            let seq = SeqNo::from(tx.next_seq);
            tx.next_seq += 1;
            let pt = tx.pt;
            let mut api = self.rtc.direct_api();
            let stream = api
                .stream_tx_by_mid(mid, None)
                .ok_or(PeerError::UnknownMid(mid))?;
            stream.write_rtp(RtpWrite::new(pt, seq, rtp_timestamp, now, payload));
            Ok(())
        } else {
            let time = extend_timestamp(tx.last_time, rtp_timestamp);
            tx.last_time = Some(time);
            let pt = tx.pt;
            let writer = self.rtc.writer(mid).ok_or(PeerError::UnknownMid(mid))?;
            let media_time = MediaTime::new(time, Frequency::FORTY_EIGHT_KHZ);
            writer.write(pt, now, media_time, payload)?;
            Ok(())
        }
    }

    /// Send a message on an open data channel (`_reliable`, `_lossy`).
    pub fn send_data(&mut self, label: &str, binary: bool, data: &[u8]) -> Result<(), PeerError> {
        let id = self
            .channels
            .iter()
            .find(|(_, l)| &***l == label)
            .map(|(id, _)| *id)
            .ok_or_else(|| PeerError::NoChannel(label.to_string()))?;
        let mut channel = self
            .rtc
            .channel(id)
            .ok_or_else(|| PeerError::NoChannel(label.to_string()))?;
        if channel.write(binary, data)? {
            Ok(())
        } else {
            Err(PeerError::ChannelFull(label.to_string()))
        }
    }

    /// Start closing (RTCP BYE, SCTP shutdown, DTLS close_notify); keep
    /// polling to drain what that sends.
    pub fn close(&mut self) -> Result<(), PeerError> {
        self.rtc.close()?;
        Ok(())
    }

    /// str0m still has something to do (false once closed and drained).
    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }
}

/// Extend a 32-bit RTP timestamp against the previous extended one, taking
/// the shorter way round (RFC 3550 A.1's idea applied to timestamps), so
/// str0m's media time never runs backwards at a wrap.
fn extend_timestamp(previous: Option<u64>, ts: u32) -> u64 {
    let Some(prev) = previous else {
        // Start in the second "cycle" so a first step backwards stays >= 0.
        return (1u64 << 32) | u64::from(ts);
    };
    let delta = ts.wrapping_sub(prev as u32) as i32;
    prev.wrapping_add_signed(i64::from(delta))
}

trait MediaBySsrc {
    fn media_by_ssrc_mid(&mut self, ssrc: str0m::rtp::Ssrc) -> Option<Mid>;
}

impl MediaBySsrc for Rtc {
    /// RTP mode: the mid an incoming SSRC belongs to (str0m maps it from
    /// the MID header extension or the SDP's `a=ssrc`).
    fn media_by_ssrc_mid(&mut self, ssrc: str0m::rtp::Ssrc) -> Option<Mid> {
        self.direct_api().stream_rx(&ssrc).map(|s| s.mid())
    }
}

/// Key of a peer in a [`PeerSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(u32);

/// Source addresses remembered per peer for the demux fast path.
const ADDRS_PER_PEER: usize = 4;

/// A DTLS record header (RFC 9147 s4: content type 22, version 1.2): only
/// classified, never parsed, by `Rtc::accepts`, which then answers whether a
/// non-STUN datagram from an address would be taken (a nominated or viable
/// ICE pair), not just whether a STUN USERNAME matches.
const DTLS_PROBE: [u8; 13] = [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Why a datagram reached no peer.
#[derive(Debug, thiserror::Error)]
pub enum DemuxError {
    #[error("no peer for a datagram from {0}")]
    NoPeer(SocketAddr),
    #[error("peer {0:?}: {1}")]
    Peer(PeerKey, PeerError),
}

/// The peers sharing one shard UDP port, and the demultiplexer in front of
/// them (docs/livekit.md s4). A datagram goes to the peer its source address
/// was last seen with, if that peer's `Rtc::accepts` it; otherwise, for a
/// STUN check, to the peer whose local ufrag starts the USERNAME
/// (RFC 8445 s7.2.2). No linear scan over peers: DTLS and SRTP only ever come
/// from an address that passed ICE checks first.
#[derive(Debug, Default)]
pub struct PeerSet {
    peers: HashMap<PeerKey, PeerEntry>,
    by_ufrag: HashMap<String, PeerKey>,
    by_addr: HashMap<SocketAddr, PeerKey>,
    next_key: u32,
}

#[derive(Debug)]
struct PeerEntry {
    peer: WebRtcPeer,
    /// Source addresses in `by_addr` for this peer, oldest first, bounded so
    /// checks sprayed from many addresses cannot grow the map.
    addrs: Vec<SocketAddr>,
}

impl PeerSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, peer: WebRtcPeer) -> PeerKey {
        let key = PeerKey(self.next_key);
        self.next_key = self.next_key.wrapping_add(1);
        self.by_ufrag.insert(peer.local_ufrag().to_string(), key);
        self.peers.insert(
            key,
            PeerEntry {
                peer,
                addrs: Vec::new(),
            },
        );
        key
    }

    pub fn remove(&mut self, key: PeerKey) -> Option<WebRtcPeer> {
        let entry = self.peers.remove(&key)?;
        self.by_ufrag.remove(entry.peer.local_ufrag());
        for addr in &entry.addrs {
            if self.by_addr.get(addr) == Some(&key) {
                self.by_addr.remove(addr);
            }
        }
        Some(entry.peer)
    }

    pub fn get_mut(&mut self, key: PeerKey) -> Option<&mut WebRtcPeer> {
        self.peers.get_mut(&key).map(|e| &mut e.peer)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = PeerKey> + '_ {
        self.peers.keys().copied()
    }

    /// Which peer a datagram is for, without handling it.
    pub fn route(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) -> Option<PeerKey> {
        if let Some(&key) = self.by_addr.get(&from) {
            if self.peers.get(&key)?.peer.accepts(from, to, bytes) {
                return Some(key);
            }
        }
        let ufrag = stun_local_ufrag(bytes)?;
        let &key = self.by_ufrag.get(ufrag)?;
        self.peers
            .get(&key)?
            .peer
            .accepts(from, to, bytes)
            .then_some(key)
    }

    /// Route a datagram from the shard's port and hand it to its peer.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> Result<PeerKey, DemuxError> {
        let key = self
            .route(from, to, bytes)
            .ok_or(DemuxError::NoPeer(from))?;
        let entry = self.peers.get_mut(&key).ok_or(DemuxError::NoPeer(from))?;
        entry
            .peer
            .handle_datagram(from, to, bytes, now)
            .map_err(|e| DemuxError::Peer(key, e))?;
        // Remember the address only once str0m's ICE agent has a working
        // pair from it (the check passed MESSAGE-INTEGRITY, RFC 8489 s14.5):
        // checks forged with a known ufrag cannot push the client's real
        // address out of the bounded list.
        let verified = entry.peer.accepts(from, to, &DTLS_PROBE);
        if verified && self.by_addr.get(&from) != Some(&key) {
            if entry.addrs.len() >= ADDRS_PER_PEER {
                let old = entry.addrs.remove(0);
                if self.by_addr.get(&old) == Some(&key) {
                    self.by_addr.remove(&old);
                }
            }
            entry.addrs.push(from);
            self.by_addr.insert(from, key);
        }
        Ok(key)
    }
}

/// The USERNAME attribute of a STUN message (RFC 8489 s14.3), split at the
/// colon: in an ICE check it is "receiver's ufrag:sender's ufrag" (RFC 8445
/// s7.2.2), so the first half is the local ufrag of the peer it is for.
/// `None` for anything that is not a well-formed STUN message with one.
pub fn stun_local_ufrag(bytes: &[u8]) -> Option<&str> {
    const HEADER: usize = 20;
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
    const USERNAME: u16 = 0x0006;
    // RFC 8489 s5: the top two bits of a STUN message are zero; RFC 7983
    // demux puts first bytes 0..=3 on STUN.
    if bytes.len() < HEADER || bytes[0] & 0xC0 != 0 || bytes[4..8] != MAGIC_COOKIE {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    let body = bytes.get(HEADER..HEADER + body_len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        // Attributes are padded to 4 bytes (RFC 8489 s14).
        let padded = 4 + len.div_ceil(4) * 4;
        rest = rest.get(padded..).unwrap_or(&[]);
    }
    None
}

/// Answer every accepted video m-line `a=inactive`, without msid or SSRCs:
/// the client keeps its transceivers (a later offer may reuse them) and
/// sends us no video, which this audio SFU would not forward anyway.
pub fn idle_video(answer: &str) -> String {
    let mut out = String::with_capacity(answer.len());
    let mut video = false;
    for line in answer.split_inclusive("\r\n") {
        if line.starts_with("m=") {
            video = line.starts_with("m=video ") && !line.starts_with("m=video 0 ");
        }
        if video {
            let attr = line.trim_end();
            if matches!(attr, "a=sendonly" | "a=recvonly" | "a=sendrecv") {
                out.push_str("a=inactive\r\n");
                continue;
            }
            if attr.starts_with("a=msid:") || attr.starts_with("a=ssrc") {
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

/// The audio m-lines of an offer that carry a track the client sends
/// (`sendonly` or `sendrecv`), with the track id of their `a=msid` (the
/// `cid` of the client's `AddTrackRequest`, JSEP s5.2.1).
pub fn offered_send_tracks(offer: &str) -> Vec<(Mid, String)> {
    let mut found = Vec::new();
    for section in offer.split("\nm=").skip(1) {
        if !section.starts_with("audio ") {
            continue;
        }
        let mut mid = None;
        let mut track = None;
        let mut sends = false;
        for line in section.lines().map(str::trim_end) {
            if let Some(m) = line.strip_prefix("a=mid:") {
                mid = Some(m.trim());
            } else if let Some(ms) = line.strip_prefix("a=msid:") {
                track = ms.split_whitespace().nth(1);
            } else if line == "a=sendonly" || line == "a=sendrecv" {
                sends = true;
            }
        }
        if let (Some(mid), Some(track), true) = (mid, track, sends) {
            found.push((Mid::from(mid), track.to_owned()));
        }
    }
    found
}

/// Rewrite our answer so the client can tell which track each of our
/// sending audio m-lines carries: `assigned` mids get
/// `a=msid:<stream> <track>` (LiveKit's SDKs read the stream id as
/// `<participant>|<track>`) in place of str0m's random one, in the `a=msid`
/// line and the `a=ssrc ... msid:` lines; `idle` mids are answered `a=inactive` so they fire no
/// track event until a later answer gives them a track (RFC 8829 s5.3.1).
pub fn announce_tracks(
    answer: &str,
    assigned: &HashMap<Mid, (String, String)>,
    idle: &[Mid],
) -> String {
    let mut out = String::with_capacity(answer.len() + 64 * assigned.len());
    let mut sections = answer.split_inclusive("\r\n").peekable();
    // The session part, up to the first m= line, is copied as is.
    while let Some(line) = sections.next_if(|l| !l.starts_with("m=")) {
        out.push_str(line);
    }
    let mut current: Vec<&str> = Vec::new();
    let flush = |current: &mut Vec<&str>, out: &mut String| {
        let mid = current
            .iter()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(|m| Mid::from(m.trim_end()));
        let audio = current.first().is_some_and(|l| l.starts_with("m=audio"));
        let what = match mid {
            Some(m) if audio => {
                if let Some((stream, track)) = assigned.get(&m) {
                    Some(Ok(format!("{stream} {track}")))
                } else if idle.contains(&m) {
                    Some(Err(()))
                } else {
                    None
                }
            }
            _ => None,
        };
        for line in current.drain(..) {
            match &what {
                Some(Ok(msid)) if line.starts_with("a=msid:") => {
                    out.push_str(&format!("a=msid:{msid}\r\n"));
                }
                Some(Ok(msid)) if line.starts_with("a=ssrc:") && line.contains(" msid:") => {
                    let head = line.split(" msid:").next().unwrap_or(line);
                    out.push_str(&format!("{head} msid:{msid}\r\n"));
                }
                Some(Err(())) if line.starts_with("a=sendonly") => out.push_str("a=inactive\r\n"),
                Some(Err(())) if line.starts_with("a=msid:") => {}
                _ => out.push_str(line),
            }
        }
    };
    for line in sections {
        if line.starts_with("m=") && !current.is_empty() {
            flush(&mut current, &mut out);
        }
        current.push(line);
    }
    flush(&mut current, &mut out);
    out
}

#[cfg(test)]
mod tests {
    //! Driven in memory on virtual time: a "browser" built from str0m with
    //! full ICE (it sends the checks, we only answer, as with a real SDK)
    //! against our ICE-lite peers behind a `PeerSet`, with a fixed one-way
    //! latency. No sockets, no sleeping.

    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use str0m::change::{SdpAnswer, SdpPendingOffer};
    use str0m::media::Direction;

    const LATENCY: Duration = Duration::from_millis(5);
    /// The longest virtual step: bounds how late a deadline is noticed.
    const MAX_STEP: Duration = Duration::from_millis(20);
    const PYTHON_OFFER: &str = include_str!("testdata/python-sdk-1.2.1-offer.sdp");

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), port)
    }

    fn server_addr() -> SocketAddr {
        addr(1, 7882)
    }

    fn dtls() -> ShardDtls {
        ShardDtls::generate().expect("aws-lc-rs makes certificates")
    }

    /// One of our peers on the shard port, in frame mode, before any offer.
    fn server_peer(now: Instant) -> WebRtcPeer {
        let config = PeerConfig {
            host: server_addr(),
            rtp_mode: false,
        };
        WebRtcPeer::new(&config, &dtls(), now).expect("peer")
    }

    fn opus_pt(rtc: &Rtc) -> Pt {
        rtc.codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .expect("opus enabled")
            .pt()
    }

    /// A browser-like peer: full ICE, one sendrecv Opus m-line, `_reliable`.
    struct Browser {
        rtc: Rtc,
        addr: SocketAddr,
        mid: Mid,
        /// `_reliable`, when it offered one.
        channel: Option<ChannelId>,
        events: Vec<Event>,
        /// Drop everything it sends (a client that vanished).
        silent: bool,
    }

    impl Browser {
        fn offer(addr: SocketAddr, now: Instant) -> (Browser, String, SdpPendingOffer) {
            let mut rtc = RtcConfig::new()
                .clear_codecs()
                .enable_opus(true, false)
                .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
                .build(now);
            rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"));
            let mut api = rtc.sdp_api();
            let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
            let channel = api.add_channel("_reliable".into());
            let (offer, pending) = api.apply().expect("changes to offer");
            let browser = Browser {
                rtc,
                addr,
                mid,
                channel: Some(channel),
                events: Vec::new(),
                silent: false,
            };
            (browser, offer.to_sdp_string(), pending)
        }

        fn media(&self) -> Vec<(Vec<u8>, u64)> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Event::MediaData(d) => Some((d.data.to_vec(), d.time.numer())),
                    _ => None,
                })
                .collect()
        }
    }

    /// Browsers and one shard port with its `PeerSet`, on a virtual clock.
    struct Net {
        now: Instant,
        set: PeerSet,
        browsers: Vec<Browser>,
        keys: Vec<PeerKey>,
        in_flight: Vec<(Instant, Datagram)>,
        server_events: Vec<(PeerKey, Instant, PeerEvent)>,
        demux_errors: usize,
        /// The last STUN check a browser sent us.
        last_check: Option<Datagram>,
    }

    impl Net {
        fn new(browsers: usize, rtp_mode: bool) -> Net {
            let start = Instant::now();
            let dtls = dtls();
            let config = PeerConfig {
                host: server_addr(),
                rtp_mode,
            };
            let mut net = Net {
                now: start,
                set: PeerSet::new(),
                browsers: Vec::new(),
                keys: Vec::new(),
                in_flight: Vec::new(),
                server_events: Vec::new(),
                demux_errors: 0,
                last_check: None,
            };
            for i in 0..browsers {
                let (mut browser, offer, pending) = Browser::offer(addr(2 + i as u8, 5000), start);
                let mut peer = WebRtcPeer::new(&config, &dtls, start).expect("peer");
                let answer = peer.accept_offer(&offer).expect("answer");
                // Trickle, as the signal session will: the client's candidate.
                let candidate = Candidate::host(browser.addr, "udp").expect("candidate");
                peer.add_remote_candidate(&candidate.to_sdp_string())
                    .expect("candidate accepted");
                let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
                browser
                    .rtc
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .expect("browser accepts answer");
                net.keys.push(net.set.insert(peer));
                net.browsers.push(browser);
            }
            net
        }

        fn peer(&mut self, i: usize) -> &mut WebRtcPeer {
            let key = self.keys[i];
            self.set.get_mut(key).expect("peer present")
        }

        /// One step: drain every endpoint, advance to the next deadline or
        /// delivery (at most `MAX_STEP`), deliver, fire timeouts.
        fn step(&mut self) {
            let mut next = self.now + MAX_STEP;
            for b in &mut self.browsers {
                loop {
                    match b.rtc.poll_output().expect("browser poll") {
                        Output::Transmit(t) => {
                            if !b.silent {
                                let d = Datagram {
                                    from: t.source,
                                    to: t.destination,
                                    bytes: t.contents.into(),
                                };
                                self.in_flight.push((self.now + LATENCY, d));
                            }
                        }
                        Output::Event(e) => b.events.push(e),
                        Output::Timeout(t) => {
                            next = next.min(t);
                            break;
                        }
                    }
                }
            }
            for &key in &self.keys {
                let Some(peer) = self.set.get_mut(key) else {
                    continue;
                };
                loop {
                    match peer.poll().expect("peer poll") {
                        PeerOutput::Transmit(d) => {
                            assert_eq!(d.from, server_addr(), "sent from the shard port");
                            self.in_flight.push((self.now + LATENCY, d));
                        }
                        PeerOutput::Event(e) => self.server_events.push((key, self.now, e)),
                        PeerOutput::Timeout(t) => {
                            next = next.min(t);
                            break;
                        }
                    }
                }
            }
            for (at, _) in &self.in_flight {
                next = next.min(*at);
            }
            // Always move on a little, so a deadline of "now" cannot spin.
            self.now = next.max(self.now + Duration::from_micros(100));
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|(at, _)| *at <= now);
            self.in_flight = later;
            for (_, d) in due {
                if d.to == server_addr() && d.bytes.first().is_some_and(|b| *b < 4) {
                    self.last_check = Some(d.clone());
                }
                if d.to == server_addr() {
                    if self
                        .set
                        .handle_datagram(d.from, d.to, &d.bytes, now)
                        .is_err()
                    {
                        self.demux_errors += 1;
                    }
                } else if let Some(b) = self.browsers.iter_mut().find(|b| b.addr == d.to) {
                    let receive =
                        Receive::new(Protocol::Udp, d.from, d.to, &d.bytes).expect("we send valid");
                    b.rtc
                        .handle_input(Input::Receive(now, receive))
                        .expect("browser input");
                }
            }
            for b in &mut self.browsers {
                b.rtc
                    .handle_input(Input::Timeout(now))
                    .expect("browser timeout");
            }
            for &key in &self.keys {
                if let Some(peer) = self.set.get_mut(key) {
                    peer.handle_timeout(now).expect("peer timeout");
                }
            }
        }

        fn run_for(&mut self, d: Duration) {
            let until = self.now + d;
            while self.now < until {
                self.step();
            }
        }

        /// Step until `done`, failing the test past `limit` of virtual time.
        fn run_until(&mut self, limit: Duration, what: &str, done: impl Fn(&Net) -> bool) {
            let until = self.now + limit;
            while !done(self) {
                assert!(
                    self.now < until,
                    "{what}: not within {limit:?} of virtual time"
                );
                self.step();
            }
        }

        fn server_saw(&self, i: usize, pred: impl Fn(&PeerEvent) -> bool) -> bool {
            self.server_events
                .iter()
                .any(|(k, _, e)| *k == self.keys[i] && pred(e))
        }

        fn server_opus(&self, i: usize) -> Vec<OpusPacket> {
            self.server_events
                .iter()
                .filter_map(|(k, _, e)| match e {
                    PeerEvent::Opus(p) if *k == self.keys[i] => Some(p.clone()),
                    _ => None,
                })
                .collect()
        }

        /// Connected both ways, `_reliable` open on both sides.
        fn connect_all(&mut self) {
            self.run_until(Duration::from_secs(5), "ICE + DTLS + SCTP", |net| {
                (0..net.browsers.len()).all(|i| {
                    net.server_saw(i, |e| matches!(e, PeerEvent::Connected))
                        && net.server_saw(i, |e| {
                            matches!(e, PeerEvent::ChannelOpen { label } if &**label == "_reliable")
                        })
                        && net.browsers[i].rtc.is_connected()
                        && net.browsers[i]
                            .events
                            .iter()
                            .any(|e| matches!(e, Event::ChannelOpen(..)))
                })
            });
        }

        /// 20 ms frames: the browser and our peer each send `count` packets.
        fn exchange_opus(&mut self, i: usize, count: u32, first_ts: u32) {
            for n in 0..count {
                let now = self.now;
                let ts = first_ts.wrapping_add(n * 960);
                let b = &mut self.browsers[i];
                let pt = opus_pt(&b.rtc);
                let mid = b.mid;
                let up = browser_payload(i, n);
                b.rtc
                    .writer(mid)
                    .expect("browser writer")
                    .write(
                        pt,
                        now,
                        MediaTime::new(u64::from(ts), Frequency::FORTY_EIGHT_KHZ),
                        up,
                    )
                    .expect("browser write");
                let down = room_payload(i, n);
                self.peer(i)
                    .write_opus(mid, down, ts, now)
                    .expect("peer write");
                self.run_for(Duration::from_millis(20));
            }
            self.run_for(Duration::from_millis(200));
        }
    }

    fn browser_payload(i: usize, n: u32) -> Vec<u8> {
        // Distinct per browser and per frame; Opus TOC-like first byte.
        let mut p = vec![0x78, i as u8, n as u8];
        p.extend(std::iter::repeat_n(0x5a ^ n as u8, 60));
        p
    }

    fn room_payload(i: usize, n: u32) -> Vec<u8> {
        let mut p = vec![0x78, 0xf0 | i as u8, n as u8];
        p.extend(std::iter::repeat_n(0xa5 ^ n as u8, 40));
        p
    }

    fn check_media_both_ways(rtp_mode: bool) {
        let mut net = Net::new(1, rtp_mode);
        net.connect_all();
        let first_ts = 0xffff_f000; // wraps within the 50 frames
        net.exchange_opus(0, 50, first_ts);

        // Browser -> room: 50 packets, in order, payloads and timestamps intact.
        let got = net.server_opus(0);
        assert_eq!(got.len(), 50, "all 50 frames reached the room");
        for (n, p) in got.iter().enumerate() {
            assert_eq!(p.mid, net.browsers[0].mid);
            assert_eq!(&*p.payload, &browser_payload(0, n as u32)[..]);
            assert_eq!(p.rtp_timestamp, first_ts.wrapping_add(n as u32 * 960));
            if n > 0 {
                assert_eq!(p.sequence, got[n - 1].sequence.wrapping_add(1));
            }
        }

        // Room -> browser: 50 packets, timestamps 960 apart (the browser's
        // str0m reports extended time; our sender may offset it).
        let media = net.browsers[0].media();
        assert_eq!(media.len(), 50, "all 50 frames reached the browser");
        for (n, (data, time)) in media.iter().enumerate() {
            assert_eq!(data, &room_payload(0, n as u32));
            if n > 0 {
                assert_eq!(time - media[n - 1].1, 960, "frame {n}");
            }
        }
        let last = media.last().expect("50 frames").1 as u32;
        assert_eq!(last, first_ts.wrapping_add(49 * 960), "RTP time as written");

        // `_reliable` both ways.
        net.peer(0)
            .send_data("_reliable", true, b"room to client")
            .expect("send on _reliable");
        let channel = net.browsers[0].channel.expect("offered _reliable");
        let accepted = net.browsers[0]
            .rtc
            .channel(channel)
            .expect("browser channel")
            .write(true, b"client to room")
            .expect("browser write");
        assert!(accepted);
        net.run_for(Duration::from_millis(200));
        assert!(net.server_saw(0, |e| matches!(
            e,
            PeerEvent::ChannelMessage { label, binary: true, data }
                if &**label == "_reliable" && data == b"client to room"
        )));
        assert!(net.browsers[0].events.iter().any(|e| matches!(
            e,
            Event::ChannelData(d) if d.id == channel && d.data == b"room to client"
        )));
        assert_eq!(net.demux_errors, 0);
    }

    #[test]
    fn media_and_data_cross_both_ways() {
        check_media_both_ways(false);
    }

    #[test]
    fn media_and_data_cross_both_ways_in_rtp_mode() {
        check_media_both_ways(true);
    }

    #[test]
    fn v0_subscriber_peer_offers_tracks_and_sends_on_them() {
        // Our peer offers (the v0 subscriber PeerConnection), a full-ICE
        // browser answers; Opus written on the offered mid arrives there,
        // under the msid LiveKit's SDKs read as <participant>|<track>.
        let mut net = Net::new(0, false);
        let start = net.now;
        let mut peer = server_peer(start);
        let tracks = [("PA_pub|TR_one".to_owned(), "TR_one".to_owned())];
        let (offer, mids) = peer
            .offer_tracks(&tracks)
            .expect("offer made")
            .expect("nothing pending");
        assert_eq!(mids.len(), 1);
        assert!(offer.contains("a=msid:PA_pub|TR_one TR_one"), "{offer}");
        assert!(offer.contains("a=sendonly"), "{offer}");
        assert!(peer.has_pending_offer());
        assert!(
            peer.offer_tracks(&tracks).expect("no error").is_none(),
            "one at a time"
        );

        let baddr = addr(9, 5000);
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .enable_opus(true, false)
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .build(start);
        rtc.add_local_candidate(Candidate::host(baddr, "udp").expect("host candidate"));
        let answer = rtc
            .sdp_api()
            .accept_offer(str0m::change::SdpOffer::from_sdp_string(&offer).expect("parses"))
            .expect("browser answers");
        peer.accept_answer(&answer.to_sdp_string())
            .expect("answer accepted");
        assert!(!peer.has_pending_offer());
        assert_eq!(peer.subscriber_slots(), mids);
        let candidate = Candidate::host(baddr, "udp").expect("candidate");
        peer.add_remote_candidate(&candidate.to_sdp_string())
            .expect("candidate accepted");
        net.browsers.push(Browser {
            rtc,
            addr: baddr,
            mid: mids[0],
            channel: None,
            events: Vec::new(),
            silent: false,
        });
        net.keys.push(net.set.insert(peer));
        net.run_until(Duration::from_secs(5), "ICE + DTLS", |net| {
            net.server_saw(0, |e| matches!(e, PeerEvent::Connected))
        });
        let mut ts = 960u32;
        for _ in 0..20 {
            let now = net.now;
            net.peer(0)
                .write_opus(mids[0], vec![0x78, 1, 2, 3], ts, now)
                .expect("write on the offered mid");
            ts += 960;
            net.run_for(Duration::from_millis(20));
        }
        net.run_for(Duration::from_millis(100));
        assert!(
            net.browsers[0]
                .events
                .iter()
                .any(|e| matches!(e, Event::MediaAdded(m) if m.mid == mids[0])),
            "the browser got the track"
        );
        assert!(
            net.browsers[0].media().len() >= 15,
            "{}",
            net.browsers[0].media().len()
        );
        // An answer nobody asked for is refused.
        assert!(net.peer(0).accept_answer("v=0\r\n").is_err());
    }

    #[test]
    fn announces_which_slot_carries_which_track() {
        let now = Instant::now();
        let mut peer = server_peer(now);
        let answer = peer.accept_offer(PYTHON_OFFER).expect("answered");
        let slots = peer.subscriber_slots();
        assert_eq!(slots.len(), 3, "the SDK's 3 recvonly audio lines");
        let assigned = HashMap::from([(slots[0], ("PA_a|TR_b".to_owned(), "TR_b".to_owned()))]);
        let out = announce_tracks(&answer, &assigned, &slots[1..]);
        let sections: Vec<&str> = out.split("\r\nm=").skip(1).collect();
        let section = |mid: Mid| {
            sections
                .iter()
                .find(|s| s.contains(&format!("a=mid:{mid}\r\n")))
                .copied()
                .expect("every mid is still there")
        };
        let first = section(slots[0]);
        assert!(first.contains("a=msid:PA_a|TR_b TR_b\r\n"), "{first}");
        assert!(first.contains("a=sendonly"), "{first}");
        let ssrc_msids: Vec<&str> = first
            .lines()
            .filter(|l| l.starts_with("a=ssrc:") && l.contains(" msid:"))
            .collect();
        assert!(
            ssrc_msids
                .iter()
                .all(|l| l.ends_with(" msid:PA_a|TR_b TR_b")),
            "{first}"
        );
        for &idle in &slots[1..] {
            let s = section(idle);
            assert!(s.contains("a=inactive") && !s.contains("a=sendonly"), "{s}");
            assert!(!s.contains("a=msid:"), "{s}");
        }
        // Everything else is as str0m wrote it.
        assert_eq!(out.lines().count(), answer.lines().count() - 2);
        assert_eq!(out.split("\r\nm=").next(), answer.split("\r\nm=").next());
    }

    proptest::proptest! {
        /// The SDP helpers take whatever text comes (a client's offer, our
        /// answer cut anywhere) without panicking, and never invent lines.
        #[test]
        fn sdp_helpers_take_any_text(
            text in "((v=0|m=(audio|video) (0|9) x|a=(mid|msid|ssrc):[ -~]{0,12}|a=(sendonly|recvonly|sendrecv|inactive)|[ -~]{0,20})\r?\n){0,30}",
        ) {
            let _ = offered_send_tracks(&text);
            let mut assigned = HashMap::new();
            assigned.insert(Mid::from("0"), ("PA_x|TR_y".to_owned(), "TR_y".to_owned()));
            let out = announce_tracks(&text, &assigned, &[Mid::from("1")]);
            proptest::prop_assert!(out.lines().count() <= text.lines().count() + 1);
            let idle = idle_video(&text);
            proptest::prop_assert!(idle.lines().count() <= text.lines().count() + 1);
        }
    }

    #[test]
    fn finds_the_tracks_an_offer_sends() {
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
            a=msid:stream-1 track-cid-1\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\n\
            a=msid:- track-cid-2\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendonly\r\n\
            a=msid:s v\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\na=sendrecv\r\n\
            a=msid:s track-cid-3\r\n";
        assert_eq!(
            offered_send_tracks(offer),
            vec![
                (Mid::from("0"), "track-cid-1".to_owned()),
                (Mid::from("3"), "track-cid-3".to_owned())
            ]
        );
        assert!(
            offered_send_tracks(PYTHON_OFFER).is_empty(),
            "it only receives"
        );
    }

    #[test]
    fn answers_the_python_sdk_offer() {
        let now = Instant::now();
        let mut peer = server_peer(now);
        let answer = peer
            .accept_offer(PYTHON_OFFER)
            .expect("the SDK's offer is answered");

        assert!(answer.contains("a=ice-lite"), "{answer}");
        assert!(answer.contains("a=setup:passive"), "{answer}");
        assert!(
            answer.contains("10.0.0.1 7882 typ host"),
            "our host candidate: {answer}"
        );
        let sections: Vec<&str> = answer.split("\r\nm=").skip(1).collect();
        assert_eq!(sections.len(), 7, "every offered m-line is answered");
        let audio: Vec<_> = sections
            .iter()
            .filter(|s| s.starts_with("audio 9 "))
            .collect();
        assert_eq!(audio.len(), 3, "3 audio m-lines kept");
        for s in &audio {
            assert!(
                s.contains("a=sendonly"),
                "recvonly offered, sendonly answered: {s}"
            );
            assert!(s.contains("opus/48000/2"), "{s}");
            for other in ["PCMU", "PCMA", "G722", "red/", "CN/"] {
                assert!(!s.contains(other), "Opus only, found {other}: {s}");
            }
        }
        let video: Vec<_> = sections
            .iter()
            .filter(|s| s.starts_with("video "))
            .collect();
        assert_eq!(video.len(), 3);
        assert!(
            video
                .iter()
                .all(|s| s.starts_with("video 9 ") && s.contains("a=inactive")),
            "video kept but idle: {video:?}"
        );
        assert!(
            video.iter().all(|s| !s.contains("a=sendonly")
                && !s.contains("a=msid")
                && !s.contains("a=ssrc")),
            "{video:?}"
        );
        assert!(
            sections
                .iter()
                .any(|s| s.starts_with("application 9 UDP/DTLS/SCTP")),
            "data channel kept: {answer}"
        );
        let mut mids: Vec<String> = peer.sending_mids().map(|m| m.to_string()).collect();
        mids.sort();
        assert_eq!(mids, ["0", "1", "2"]);
    }

    #[test]
    fn a_bad_offer_is_a_typed_error() {
        let now = Instant::now();
        let mut peer = server_peer(now);
        assert!(matches!(
            peer.accept_offer("v=0\r\nthis is no sdp\r\n"),
            Err(PeerError::BadOffer(_))
        ));
        let huge = "a".repeat(MAX_OFFER_LEN + 1);
        assert!(matches!(
            peer.accept_offer(&huge),
            Err(PeerError::OfferTooLarge(_))
        ));
        // The SDK's offer cut in half (a truncated signal frame).
        let cut = &PYTHON_OFFER[..PYTHON_OFFER.len() / 2];
        assert!(peer.accept_offer(cut).is_err());
        // Still usable afterwards.
        assert!(peer.accept_offer(PYTHON_OFFER).is_ok());
    }

    #[test]
    fn an_unannounceable_host_is_refused() {
        let config = PeerConfig {
            host: "0.0.0.0:7882".parse().expect("literal"),
            rtp_mode: false,
        };
        assert!(matches!(
            WebRtcPeer::new(&config, &dtls(), Instant::now()),
            Err(PeerError::BadHost(..))
        ));
    }

    #[test]
    fn remote_candidates_are_checked_and_bounded() {
        let now = Instant::now();
        let mut peer = server_peer(now);
        assert!(matches!(
            peer.add_remote_candidate("candidate:garbage"),
            Err(PeerError::BadCandidate(_))
        ));
        for port in 0..MAX_REMOTE_CANDIDATES as u16 {
            let c = Candidate::host(addr(9, 1000 + port), "udp").expect("candidate");
            peer.add_remote_candidate(&format!("a={}", c.to_sdp_string()))
                .expect("within bound");
        }
        let c = Candidate::host(addr(9, 999), "udp").expect("candidate");
        assert!(matches!(
            peer.add_remote_candidate(&c.to_sdp_string()),
            Err(PeerError::TooManyCandidates)
        ));
    }

    #[test]
    fn candidate_init_json_as_the_signal_carries_it() {
        let now = Instant::now();
        let mut peer = server_peer(now);
        peer.accept_offer(PYTHON_OFFER).expect("answer");
        // What libwebrtc's RTCIceCandidate.toJSON() gives (with its
        // extension attributes after the type).
        let init = r#"{"candidate":"candidate:3157186281 1 udp 2122260223 192.168.1.5 54321 typ host generation 0 ufrag SJH5 network-id 1","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"SJH5"}"#;
        peer.add_remote_candidate_init(init)
            .expect("browser candidate");
        assert_eq!(peer.remote_candidates, 1);
        // End of candidates: accepted, nothing added.
        peer.add_remote_candidate_init(r#"{"candidate":"","sdpMid":"0"}"#)
            .expect("end-of-candidates");
        assert_eq!(peer.remote_candidates, 1);
        for bad in [
            "not json",
            r#"{"sdpMid":"0"}"#,
            r#"{"candidate":"candidate:x"}"#,
            r#"{"candidate":42}"#,
        ] {
            assert!(
                matches!(
                    peer.add_remote_candidate_init(bad),
                    Err(PeerError::BadCandidate(_))
                ),
                "{bad}"
            );
        }
        let huge = format!(r#"{{"candidate":"{}"}}"#, "a".repeat(5000));
        assert!(peer.add_remote_candidate_init(&huge).is_err());
        assert_eq!(peer.remote_candidates, 1);
    }

    #[test]
    fn garbage_and_truncated_dtls_are_ignored() {
        let mut net = Net::new(1, false);
        net.connect_all();
        let from = net.browsers[0].addr;
        let now = net.now;
        let peer = net.peer(0);

        // Not STUN/DTLS/RTP (RFC 7983 first byte 0xff): refused, typed.
        assert!(matches!(
            peer.handle_datagram(from, server_addr(), &[0xff; 40], now),
            Err(PeerError::NotWebRtc)
        ));
        assert!(matches!(
            peer.handle_datagram(from, server_addr(), &[], now),
            Err(PeerError::NotWebRtc)
        ));
        // A DTLS handshake record whose length runs past the datagram.
        let truncated = [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 100, 1, 2];
        let _ = peer.handle_datagram(from, server_addr(), &truncated, now);
        // An application-data record of noise (fails to decrypt).
        let mut noise = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 7, 0, 32];
        noise.extend([0x33; 32]);
        let _ = peer.handle_datagram(from, server_addr(), &noise, now);
        // A cut RTP header and an SRTP packet that fails authentication.
        let _ = peer.handle_datagram(from, server_addr(), &[0x80, 111, 0], now);
        let mut forged = vec![0x80, 111, 0, 7, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        forged.extend([0u8; 40]);
        let _ = peer.handle_datagram(from, server_addr(), &forged, now);
        // A STUN header claiming more than it carries.
        let stun = [
            0, 1, 0, 200, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let _ = peer.handle_datagram(from, server_addr(), &stun, now);
        assert!(peer.is_connected(), "still connected after the junk");

        // And the session still carries media.
        net.exchange_opus(0, 5, 1000);
        assert_eq!(net.server_opus(0).len(), 5);
        assert_eq!(net.browsers[0].media().len(), 5);
        assert!(!net.server_saw(0, |e| matches!(e, PeerEvent::Disconnected)));
    }

    #[test]
    fn a_silent_peer_is_reported_disconnected() {
        let mut net = Net::new(1, false);
        net.connect_all();
        net.run_for(Duration::from_secs(2));
        assert!(!net.server_saw(0, |e| matches!(e, PeerEvent::Disconnected)));

        // The deadline handed to the driver is never more than
        // `MAX_POLL_INTERVAL` away, so the consent timeout below is noticed
        // even by a driver that only wakes on deadlines.
        let now = net.now;
        loop {
            match net.peer(0).poll().expect("poll") {
                PeerOutput::Timeout(at) => {
                    assert!(at <= now + MAX_POLL_INTERVAL, "{:?}", at - now);
                    break;
                }
                PeerOutput::Transmit(d) => net.in_flight.push((now + LATENCY, d)),
                PeerOutput::Event(e) => net.server_events.push((net.keys[0], now, e)),
            }
        }

        net.browsers[0].silent = true;
        let silent_since = net.now;
        net.run_until(Duration::from_secs(40), "disconnect reported", |net| {
            net.server_saw(0, |e| matches!(e, PeerEvent::Disconnected))
        });
        let at = net
            .server_events
            .iter()
            .find(|(_, _, e)| matches!(e, PeerEvent::Disconnected))
            .map(|(_, at, _)| *at)
            .expect("seen");
        let after = at - silent_since;
        // str0m's ICE-lite agent drops a pair 15 s after its last check;
        // our deadline cap (1 s) bounds how late that is noticed.
        assert!(after >= Duration::from_secs(10), "not premature: {after:?}");
        assert!(
            after <= Duration::from_secs(17),
            "within the ICE timeout: {after:?}"
        );
        let disconnects = net
            .server_events
            .iter()
            .filter(|(_, _, e)| matches!(e, PeerEvent::Disconnected))
            .count();
        assert_eq!(disconnects, 1, "reported once");
        assert!(!net.peer(0).is_connected());
        eprintln!("disconnect reported {after:?} after the client went silent");
    }

    #[test]
    fn two_peers_are_demultiplexed_on_one_port() {
        let mut net = Net::new(2, false);
        net.connect_all();
        net.exchange_opus(0, 10, 0);
        net.exchange_opus(1, 10, 0);
        for i in 0..2 {
            let got = net.server_opus(i);
            assert_eq!(got.len(), 10, "peer {i}");
            for (n, p) in got.iter().enumerate() {
                assert_eq!(&*p.payload, &browser_payload(i, n as u32)[..], "peer {i}");
            }
            let media = net.browsers[i].media();
            assert_eq!(media.len(), 10, "browser {i}");
            for (n, (data, _)) in media.iter().enumerate() {
                assert_eq!(data, &room_payload(i, n as u32), "browser {i}");
            }
        }
        assert_eq!(net.demux_errors, 0);

        // Each peer's ufrag routes to it; an unknown source gets nobody.
        let ufrag1 = net.peer(1).local_ufrag().to_string();
        let check = stun_check(&format!("{ufrag1}:abcd"));
        assert_eq!(
            net.set.route(addr(77, 1), server_addr(), &check),
            None,
            "no MESSAGE-INTEGRITY check passes str0m's parse: not routed"
        );
        assert!(net
            .set
            .handle_datagram(addr(77, 1), server_addr(), &[0x80; 30], net.now)
            .is_err());
        // A real check with its MESSAGE-INTEGRITY broken (FINGERPRINT
        // recomputed, so it parses) from a new address: routed by ufrag,
        // refused by str0m, and its address is not remembered.
        let check = net.last_check.clone().expect("checks were sent");
        let forged = break_integrity(&check.bytes);
        let spoofed = addr(66, 6666);
        let _ = net
            .set
            .handle_datagram(spoofed, server_addr(), &forged, net.now);
        assert!(!net.set.by_addr.contains_key(&spoofed));
        // The genuine check from a new address (NAT rebinding) is.
        let rebound = addr(66, 6667);
        let key = net
            .set
            .handle_datagram(rebound, server_addr(), &check.bytes, net.now)
            .expect("genuine check routed");
        assert_eq!(net.set.by_addr.get(&rebound), Some(&key));

        // A removed peer's addresses route nowhere.
        let key0 = net.keys[0];
        let from0 = net.browsers[0].addr;
        assert!(net.set.remove(key0).is_some());
        assert_eq!(net.set.len(), 1);
        assert!(!net.set.by_addr.contains_key(&from0));
    }

    #[test]
    fn renegotiation_adds_audio_and_channels_are_bounded() {
        use str0m::channel::{ChannelConfig, Reliability};

        let mut net = Net::new(1, false);
        net.connect_all();

        // The client re-offers with one more recvonly audio m-line (v1:
        // after `media_sections_requirement`): we answer it as sendonly.
        let mut api = net.browsers[0].rtc.sdp_api();
        let new_mid = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().expect("re-offer");
        let answer = net
            .peer(0)
            .accept_offer(&offer.to_sdp_string())
            .expect("re-answer");
        let answer = SdpAnswer::from_sdp_string(&answer).expect("parses");
        net.browsers[0]
            .rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accepted");
        assert!(net.peer(0).sending_mids().any(|m| m == new_mid));
        net.run_for(Duration::from_millis(200));

        // `_lossy` (unordered, no retransmit, as the SDKs open it) and more
        // channels than we keep.
        let lossy = net.browsers[0]
            .rtc
            .direct_api()
            .create_data_channel(ChannelConfig {
                label: "_lossy".into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            });
        for i in 0..MAX_CHANNELS + 2 {
            net.browsers[0]
                .rtc
                .direct_api()
                .create_data_channel(ChannelConfig {
                    label: format!("extra{i}"),
                    ..Default::default()
                });
        }
        net.run_for(Duration::from_millis(500));
        let opened: Vec<String> = net
            .server_events
            .iter()
            .filter_map(|(_, _, e)| match e {
                PeerEvent::ChannelOpen { label } => Some(label.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(opened.len(), MAX_CHANNELS, "{opened:?}");
        assert!(opened.iter().any(|l| l == "_lossy"), "{opened:?}");

        // Media on the new m-line and a message on `_lossy` reach the client.
        let now = net.now;
        net.peer(0)
            .write_opus(new_mid, vec![0x78, 1, 2, 3], 4800, now)
            .expect("write on the new mid");
        net.peer(0)
            .send_data("_lossy", true, b"lossy hello")
            .expect("send on _lossy");
        net.run_for(Duration::from_millis(200));
        let b = &net.browsers[0];
        assert!(b.events.iter().any(|e| matches!(
            e,
            Event::MediaData(d) if d.mid == new_mid && *d.data == [0x78, 1, 2, 3]
        )));
        assert!(b.events.iter().any(|e| matches!(
            e,
            Event::ChannelData(d) if d.id == lossy && d.data == b"lossy hello"
        )));
    }

    /// CRC-32 (ISO-HDLC), for STUN FINGERPRINT (RFC 8489 s14.7).
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// Flip a bit of MESSAGE-INTEGRITY (0x0008) and recompute FINGERPRINT
    /// (0x8028, the last attribute) so the message still parses.
    fn break_integrity(check: &[u8]) -> Vec<u8> {
        let mut m = check.to_vec();
        let mut at = 20;
        let mut fingerprint = None;
        while at + 4 <= m.len() {
            let kind = u16::from_be_bytes([m[at], m[at + 1]]);
            let len = usize::from(u16::from_be_bytes([m[at + 2], m[at + 3]]));
            if kind == 0x0008 {
                m[at + 4] ^= 0x01;
            }
            if kind == 0x8028 {
                fingerprint = Some(at);
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        let fp = fingerprint.expect("str0m's checks carry FINGERPRINT");
        let crc = crc32(&m[..fp]) ^ 0x5354_554e;
        m[fp + 4..fp + 8].copy_from_slice(&crc.to_be_bytes());
        m
    }

    /// A STUN binding request with only a USERNAME attribute.
    fn stun_check(username: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend((username.len() as u16).to_be_bytes());
        attr.extend(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend((attr.len() as u16).to_be_bytes());
        m.extend([0x21, 0x12, 0xa4, 0x42]);
        m.extend([7u8; 12]);
        m.extend(attr);
        m
    }

    #[test]
    fn stun_username_gives_the_local_ufrag() {
        assert_eq!(stun_local_ufrag(&stun_check("abcd:wxyz")), Some("abcd"));
        assert_eq!(stun_local_ufrag(&stun_check("abc:w")), Some("abc"));
        // Another attribute (padded) before USERNAME.
        let mut m = stun_check("ufr1:x");
        let extra = [0x80, 0x22, 0x00, 0x03, b'a', b'b', b'c', 0];
        m.splice(20..20, extra);
        let len = (m.len() - 20) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(stun_local_ufrag(&m), Some("ufr1"));
        // Not STUN: no cookie, RTP first byte, cut short, length past the end.
        let mut no_cookie = stun_check("abcd:wxyz");
        no_cookie[4] = 0;
        assert_eq!(stun_local_ufrag(&no_cookie), None);
        let mut rtp = stun_check("abcd:wxyz");
        rtp[0] = 0x80;
        assert_eq!(stun_local_ufrag(&rtp), None);
        let full = stun_check("abcd:wxyz");
        for cut in 0..full.len() {
            assert_eq!(stun_local_ufrag(&full[..cut]), None, "cut at {cut}");
        }
        let mut long_attr = stun_check("abcd:wxyz");
        long_attr[23] = 200;
        assert_eq!(stun_local_ufrag(&long_attr), None);
        assert_eq!(stun_local_ufrag(&[0u8; 20]), None, "no attributes");
    }

    proptest::proptest! {
        /// Any bytes: no panic, and an answer only for a well-formed STUN
        /// header whose USERNAME lies inside the message.
        #[test]
        fn stun_username_parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Some(ufrag) = stun_local_ufrag(&bytes) {
                proptest::prop_assert!(bytes.len() >= 20);
                proptest::prop_assert!(ufrag.len() + 24 <= bytes.len());
            }
        }

        /// A check we build gives back its first ufrag, whatever follows.
        #[test]
        fn stun_username_round_trips(local in "[a-zA-Z0-9+/]{1,32}", remote in "[a-zA-Z0-9+/]{0,32}") {
            let check = stun_check(&format!("{local}:{remote}"));
            proptest::prop_assert_eq!(stun_local_ufrag(&check), Some(local.as_str()));
        }
    }

    #[test]
    fn timestamps_extend_across_wrap() {
        let first = extend_timestamp(None, u32::MAX - 100);
        let next = extend_timestamp(Some(first), 859);
        assert_eq!(next - first, 960);
        let back = extend_timestamp(Some(next), u32::MAX - 100);
        assert_eq!(back, first, "a step back is a step back");
        let from_zero = extend_timestamp(None, 0);
        assert!(extend_timestamp(Some(from_zero), u32::MAX) < from_zero);
    }

    #[test]
    fn writing_to_a_mid_we_do_not_send_on_is_refused() {
        let now = Instant::now();
        let mut peer = server_peer(now);
        peer.accept_offer(PYTHON_OFFER).expect("answer");
        // mid 3 is an (idle) video m-line.
        assert!(matches!(
            peer.write_opus(Mid::from("3"), vec![1u8; 10], 0, now),
            Err(PeerError::UnknownMid(_))
        ));
        assert!(matches!(
            peer.send_data("_reliable", true, b"x"),
            Err(PeerError::NoChannel(_))
        ));
    }
}
