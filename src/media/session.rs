//! The RTP session of one call leg: everything between the call's UDP port and
//! its seat in the room that is about *this* leg, not about mixing.
//!
//! Where it sits in the data flow:
//!
//! ```text
//! socket --datagram--> MediaEngine::handle_packet --> RtpSession::on_rtp
//!     latching + source check --> ReceiveStats (loss, jitter µs) --> DTMF receiver
//!     --> Inbound::Audio { seq, ts, payload range } --> Room jitter buffer
//! Room mix tick --PCM frame--> RtpSession::send_frame --> G.711 encode | RFC 4733 event
//!     (digits from RtpSession::send_dtmf wait in a queue and play one by one)
//!     --> RTP header (our SSRC/seq/ts) --> Outbox --> MediaOutput::Transmit
//! RtpSession::on_rtcp / handle_timeout --> RtcpSession (SR/RR every ~5 s, RTT)
//! ```
//!
//! What it owns: the symmetric-RTP latch (RFC 4961 s4: send where the caller's
//! packets come from, drop everyone else's), the receive statistics, the RTCP
//! schedule, the RFC 4733 receiver and sender with the queue of digits still to
//! play, the media-timeout clock, and our outgoing stream's SSRC, sequence
//! number and timestamp (RFC 3550 s5.1).
//!
//! Sans-IO like the rest of `media`: every method takes `now`; nothing here reads
//! a clock or touches a socket. Nothing allocates per packet: packets are written
//! into the engine's [`Outbox`] arena.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::codec::g711::{Compander, FRAME_SAMPLES};
use crate::rtp::dtmf::END_PACKETS;
use crate::rtp::{
    is_rtcp, DtmfEvent, DtmfPacket, DtmfReceiver, DtmfSender, NtpTime, PacketClass, ReceiveStats,
    RtcpSession, RtpHeader, RtpPacket,
};

use super::{CallKey, CallMediaReport, Codec, Outbox};

/// RTP clock of G.711 and of telephone-event beside it (RFC 3551 s4.5.14).
pub const CLOCK_RATE: u32 = 8000;
/// We send one 20 ms frame per mix tick, whatever `a=ptime` asked for: the
/// room mixes in 20 ms steps, and `ptime` is a preference of the receiver
/// (RFC 4566 s6), which every trunk we know accepts at 20 ms.
pub const FRAME: Duration = Duration::from_millis(20);
/// Volume of the DTMF events we send, -dBm0 (RFC 4733 s2.3.4): what phones send.
const DTMF_VOLUME: u8 = 10;
/// Digits that may wait to be played to the caller (beyond the one playing):
/// an agent's "1234#" or a PIN with room to spare; more is refused.
pub const DTMF_QUEUE: usize = 32;
/// Voice frames between one digit's last frame and the next digit's first.
/// RFC 4733 fixes no gap; 50 ms is the usual, which our 20 ms ticks make 60 ms.
/// The two retransmitted end packets of the digit before go out in it.
pub const DTMF_GAP_FRAMES: u32 = 3;
const _: () = assert!(DTMF_GAP_FRAMES >= END_PACKETS as u32 - 1);
/// Silence from the latched address after which the same SSRC may move to a
/// new address (NAT rebinding). Long enough that two live sources cannot
/// alternate; short enough that the caller does not notice.
pub const RELATCH_AFTER: Duration = Duration::from_secs(1);
/// Largest RTCP compound we write: SR with one block (52) + SDES CNAME (<= 264) + BYE (8).
pub(crate) const RTCP_MAX: usize = 340;
/// RTP header (12) + one 20 ms G.711 frame (160).
pub(crate) const RTP_MAX: usize = 12 + FRAME_SAMPLES;

/// Why an incoming datagram was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// From an address other than the latched one (RFC 4961 s4).
    Foreign,
    /// Not a valid RTP/RTCP packet.
    Malformed,
    /// A payload type the SDP answer did not negotiate (comfort noise, video...).
    UnknownPayloadType(u8),
    /// Duplicate, unconfirmed sequence jump, or an SSRC still on probation
    /// while another source is live ([`PacketClass`]).
    Rejected(PacketClass),
}

/// What [`RtpSession::on_rtp`] made of a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A voice frame for the room's jitter buffer.
    Audio {
        sequence: u16,
        timestamp: u32,
        /// Where the payload sits in the datagram.
        payload: Range<usize>,
        /// The stream changed source (new SSRC): the jitter buffer starts over.
        new_stream: bool,
        /// The jitter estimate this packet produced, µs, if it was sampled.
        jitter_us: Option<u64>,
    },
    /// A telephone-event packet (digits come out of [`RtpSession::poll_dtmf`]).
    Event {
        jitter_us: Option<u64>,
    },
    /// An RTCP packet, taken in.
    Rtcp,
    Dropped(Dropped),
}

/// Send-side and drop counters of one leg (receive counters live in
/// [`ReceiveStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub rtcp_in: u64,
    pub rtcp_out: u64,
    pub foreign_dropped: u64,
    pub malformed: u64,
    pub unknown_payload_type: u64,
    pub dtmf_digits_in: u64,
    pub dtmf_packets_out: u64,
    /// Times the caller's stream moved to a new address (see [`RELATCH_AFTER`]).
    pub relatched: u64,
}

/// What a session is told at setup (and at a re-INVITE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub codec: Codec,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    /// Where the SDP says to send RTP (c= address, m= port).
    pub remote: SocketAddr,
    pub media_timeout: Duration,
    /// Replaces `media_timeout` while the call is on hold.
    pub hold_timeout: Duration,
    /// We may send RTP (our direction is sendrecv or sendonly).
    pub send: bool,
    /// We may receive RTP (our direction is sendrecv or recvonly).
    pub receive: bool,
}

impl SessionConfig {
    /// Whether the caller has the call on hold (RFC 3264 s8.4): anything but
    /// `sendrecv`, or the RFC 2543 way (c=0.0.0.0). A held phone may send
    /// nothing at all (even one that offers `sendonly` for music on hold often
    /// does not), so its silence is not trouble until `hold_timeout`.
    pub fn on_hold(&self) -> bool {
        !(self.send && self.receive) || self.remote.ip().is_unspecified() || self.remote.port() == 0
    }

    /// How long the caller may send nothing before the call is ended.
    pub fn silence_limit(&self) -> Duration {
        if self.on_hold() {
            self.hold_timeout
        } else {
            self.media_timeout
        }
    }
}

/// Our outgoing stream's random starting point (RFC 3550 s5.1, s8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSeed {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
}

/// The RTP session of one call.
pub struct RtpSession {
    call: CallKey,
    cfg: SessionConfig,
    encoder: Compander,
    /// Symmetric RTP: the source address of the caller's RTP, once seen.
    latched: Option<SocketAddr>,
    /// The same for RTCP, which a NAT maps independently.
    rtcp_latched: Option<SocketAddr>,
    /// Origin of the µs arrival times given to `ReceiveStats`.
    epoch: Instant,
    stats: ReceiveStats,
    rtcp: RtcpSession,
    dtmf_rx: DtmfReceiver,
    dtmf_tx: DtmfSender,
    /// Digits (and durations) waiting for the one playing and the gap after it.
    dtmf_queue: VecDeque<(char, Duration)>,
    /// Voice frames still to send before the next digit may start.
    dtmf_gap: u32,
    ssrc: u32,
    sequence: u16,
    /// RTP timestamp of the next frame we send.
    timestamp: u32,
    sent_any: bool,
    last_rtp: Instant,
    timed_out: bool,
    counters: SessionCounters,
    /// Loss already folded into the shard's total.
    lost_reported: i64,
}

impl std::fmt::Debug for RtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpSession")
            .field("call", &self.call)
            .field("latched", &self.latched)
            .field("ssrc", &self.ssrc)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl RtpSession {
    /// `ntp_now` is the wall-clock time of `now` for our sender reports.
    pub fn new(
        now: Instant,
        ntp_now: NtpTime,
        call: CallKey,
        cfg: SessionConfig,
        seed: StreamSeed,
        cname: &str,
    ) -> RtpSession {
        RtpSession {
            encoder: Compander::new(cfg.codec.law()),
            latched: None,
            rtcp_latched: None,
            // Arrival times a little before setup (a kernel timestamp of a packet
            // that raced the 200 OK) must not saturate to the origin.
            epoch: now.checked_sub(Duration::from_secs(60)).unwrap_or(now),
            stats: ReceiveStats::new(CLOCK_RATE),
            rtcp: RtcpSession::new(seed.ssrc, cname, CLOCK_RATE, now, ntp_now),
            dtmf_rx: DtmfReceiver::new(CLOCK_RATE),
            dtmf_tx: DtmfSender::new(CLOCK_RATE, FRAME, DTMF_VOLUME),
            dtmf_queue: VecDeque::new(),
            dtmf_gap: 0,
            ssrc: seed.ssrc,
            sequence: seed.sequence,
            timestamp: seed.timestamp,
            sent_any: false,
            last_rtp: now,
            timed_out: false,
            counters: SessionCounters::default(),
            lost_reported: 0,
            call,
            cfg,
        }
    }

    pub fn call(&self) -> &CallKey {
        &self.call
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    pub fn receive_stats(&self) -> &ReceiveStats {
        &self.stats
    }

    /// The caller's RTP source address, once latched.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }

    /// A re-INVITE changed the media description. A new remote address undoes
    /// the latch: the caller moved, and its first packets from there re-latch.
    pub fn renegotiate(&mut self, now: Instant, cfg: SessionConfig) {
        if cfg.remote != self.cfg.remote {
            self.latched = None;
            self.rtcp_latched = None;
        }
        if cfg.on_hold() != self.cfg.on_hold() {
            // Into or out of hold: the silence allowed changes, count from now.
            self.last_rtp = now;
        }
        self.encoder = Compander::new(cfg.codec.law());
        self.cfg = cfg;
    }

    /// Where our RTP goes: the latched source, else the SDP address. `None`
    /// while the SDP address is a hold address (c=0.0.0.0, RFC 3264 s8.4) or
    /// port 0 (stream refused) and nothing latched.
    pub fn rtp_destination(&self) -> Option<SocketAddr> {
        if let Some(a) = self.latched {
            return Some(a);
        }
        let a = self.cfg.remote;
        (!a.ip().is_unspecified() && a.port() != 0).then_some(a)
    }

    /// Where our RTCP goes: the latched RTCP source, else RTP port + 1
    /// (RFC 3550 s11) of wherever RTP goes. `None` if RTP is on port 65535.
    pub fn rtcp_destination(&self) -> Option<SocketAddr> {
        if let Some(a) = self.rtcp_latched {
            return Some(a);
        }
        let mut a = self.rtp_destination()?;
        a.set_port(a.port().checked_add(1)?);
        Some(a)
    }

    fn arrival_us(&self, arrival: Instant) -> u64 {
        arrival.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Take one datagram received on the call's RTP port (`rtcp == false`) or
    /// RTCP port. An RTCP packet on the RTP port (rtcp-mux, RFC 5761 s4) is
    /// recognised and taken as RTCP.
    pub fn on_rtp(
        &mut self,
        now: Instant,
        src: SocketAddr,
        arrival: Instant,
        data: &[u8],
        rtcp: bool,
    ) -> Inbound {
        if rtcp || is_rtcp(data) {
            return self.on_rtcp(now, src, data);
        }
        let Ok(pkt) = RtpPacket::parse(data) else {
            self.counters.malformed += 1;
            return Inbound::Dropped(Dropped::Malformed);
        };
        // RFC 4961 s4 (symmetric RTP): once the caller's address is known, packets
        // from anywhere else are someone else's (or an attack) and never reach
        // the room; we do not follow them either. One exception: the caller's
        // NAT rebinding (or a mobile handover) moves the same stream, same
        // SSRC, to a new address after the old one fell silent; following it
        // saves the call, and a third party would have to know the SSRC.
        if self.latched.is_some_and(|l| l != src) {
            let moved = self.stats.ssrc() == Some(pkt.ssrc())
                && now.saturating_duration_since(self.last_rtp) >= RELATCH_AFTER;
            if !moved {
                self.counters.foreign_dropped += 1;
                return Inbound::Dropped(Dropped::Foreign);
            }
            self.latched = Some(src);
            self.rtcp_latched = None;
            self.counters.relatched += 1;
        }
        let pt = pkt.payload_type();
        let is_event = self.cfg.telephone_event == Some(pt);
        if pt != self.cfg.payload_type && !is_event {
            // Not latching on these: a stray comfort-noise or video packet from a
            // scanner must not steal the call's media.
            self.counters.unknown_payload_type += 1;
            return Inbound::Dropped(Dropped::UnknownPayloadType(pt));
        }
        self.latched.get_or_insert(src);
        self.last_rtp = now;
        let had_source = self.stats.ssrc().is_some();
        let class = self.stats.on_packet(
            pkt.ssrc(),
            pkt.sequence(),
            pkt.timestamp(),
            data.len(),
            self.arrival_us(arrival),
        );
        let jitter_us = class.is_accepted().then(|| self.stats.jitter_us());
        // The first packet of the very first source is on probation (RFC 3550
        // A.1) but is the caller's audio all the same: play it. Probation while
        // another source is live is a stranger's stream: drop it.
        let usable = class.is_accepted() || (class == PacketClass::Probation && !had_source);
        if !usable {
            return Inbound::Dropped(Dropped::Rejected(class));
        }
        if is_event {
            // Malformed or non-DTMF events (flash, fax tones) are not digits:
            // nothing to tell the room.
            let _ = self.dtmf_rx.on_packet(&pkt.header(), pkt.payload(), now);
            return Inbound::Event { jitter_us };
        }
        let new_stream =
            (class == PacketClass::NewSource && had_source) || class == PacketClass::Restarted;
        Inbound::Audio {
            sequence: pkt.sequence(),
            timestamp: pkt.timestamp(),
            payload: pkt.payload_range(),
            new_stream,
            jitter_us,
        }
    }

    fn on_rtcp(&mut self, now: Instant, src: SocketAddr, data: &[u8]) -> Inbound {
        if self.rtcp_latched.is_some_and(|l| l != src) {
            self.counters.foreign_dropped += 1;
            return Inbound::Dropped(Dropped::Foreign);
        }
        // RTCP is only believed from the caller's host once RTP latched: the
        // port may differ (NAT), the address may not.
        if self.latched.is_some_and(|l| l.ip() != src.ip()) {
            self.counters.foreign_dropped += 1;
            return Inbound::Dropped(Dropped::Foreign);
        }
        match self.rtcp.handle_rtcp(data, now) {
            Ok(_) => {
                self.rtcp_latched.get_or_insert(src);
                self.counters.rtcp_in += 1;
                Inbound::Rtcp
            }
            Err(_) => {
                self.counters.malformed += 1;
                Inbound::Dropped(Dropped::Malformed)
            }
        }
    }

    /// The next finished incoming digit.
    pub fn poll_dtmf(&mut self) -> Option<DtmfEvent> {
        let ev = self.dtmf_rx.poll_event()?;
        self.counters.dtmf_digits_in += 1;
        Some(ev)
    }

    /// Queue `digit` to be played to the caller as an RFC 4733 event for
    /// `duration`, in place of the voice frames: at the next frame if nothing
    /// plays, else [`DTMF_GAP_FRAMES`] of voice after the digit before it.
    /// False if no telephone-event was negotiated, the digit is not DTMF, the
    /// duration does not fit an event, or [`DTMF_QUEUE`] digits already wait.
    pub fn send_dtmf(&mut self, digit: char, duration: Duration) -> bool {
        if self.cfg.telephone_event.is_none()
            || self.dtmf_queue.len() >= DTMF_QUEUE
            || self.dtmf_tx.check(digit, duration).is_err()
        {
            return false;
        }
        self.dtmf_queue.push_back((digit, duration));
        true
    }

    /// A digit is playing, or waiting to.
    pub fn is_sending_dtmf(&self) -> bool {
        self.dtmf_tx.is_sending() || !self.dtmf_queue.is_empty()
    }

    /// Digits no one can hear (nowhere to send, or no telephone-event any
    /// more) are dropped: the one playing and those waiting.
    fn drop_dtmf(&mut self) {
        while self.dtmf_tx.next_packet().is_some() {}
        self.dtmf_queue.clear();
        self.dtmf_gap = 0;
    }

    /// The telephone-event packet of this tick, if any: the playing digit's
    /// next one, else the first of the next queued digit once the gap is over.
    fn next_dtmf_packet(&mut self) -> Option<DtmfPacket> {
        if !self.dtmf_tx.is_sending() && self.dtmf_gap == 0 {
            if let Some((digit, duration)) = self.dtmf_queue.pop_front() {
                // A new event (RFC 4733 s2.5.1.1): marker, and as its timestamp
                // the one the voice frame it replaces would have had, so our
                // timeline stays continuous. Checked when queued: cannot fail.
                let started = self.dtmf_tx.start(digit, duration, self.timestamp);
                debug_assert!(started.is_ok());
            }
        }
        let ev = self.dtmf_tx.next_packet()?;
        if ev.end && ev.replaces_voice {
            // Its last frame: voice for a while before the next digit.
            self.dtmf_gap = DTMF_GAP_FRAMES;
        }
        Some(ev)
    }

    /// Send one 20 ms frame of the room's mix (`pcm`, 160 samples) to the
    /// caller, or the DTMF event packet that replaces it.
    pub fn send_frame(&mut self, now: Instant, pcm: &[i16], out: &mut Outbox) {
        let dst = self.rtp_destination().filter(|_| self.cfg.send);
        let Some(dst) = dst else {
            // Nowhere to send: the timeline runs on, so that when the caller
            // comes back our stream resumes at the right timestamp. Digits
            // playing or queued are dropped (nobody could hear them).
            self.drop_dtmf();
            self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
            return;
        };
        if let Some(te) = self.cfg.telephone_event {
            if let Some(ev) = self.next_dtmf_packet() {
                let header = RtpHeader {
                    marker: ev.marker,
                    payload_type: te,
                    sequence: self.sequence,
                    timestamp: ev.timestamp,
                    ssrc: self.ssrc,
                };
                let n = out.transmit(&self.call, dst, false, RTP_MAX, |buf| {
                    header.write(&ev.payload, buf).ok()
                });
                self.sent(now, ev.timestamp, n, ev.payload.len());
                self.counters.dtmf_packets_out += 1;
                if ev.replaces_voice {
                    self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
                    return;
                }
            }
        } else {
            // A re-INVITE took telephone-event away.
            self.drop_dtmf();
        }
        self.dtmf_gap = self.dtmf_gap.saturating_sub(1);
        let header = RtpHeader {
            // RFC 3551 s4.1: the marker flags the first packet of a talkspurt;
            // we never suppress silence, so only the very first one.
            marker: !self.sent_any,
            payload_type: self.cfg.payload_type,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        };
        let encoder = self.encoder;
        let samples = pcm.len().min(FRAME_SAMPLES);
        let n = out.transmit(&self.call, dst, false, RTP_MAX, |buf| {
            let len = header.write_header(buf).ok()?;
            Some(len + encoder.encode(&pcm[..samples], &mut buf[len..]))
        });
        self.sent(now, self.timestamp, n, samples);
        self.sent_any = true;
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
    }

    fn sent(&mut self, now: Instant, timestamp: u32, written: Option<usize>, payload_len: usize) {
        let Some(n) = written else { return };
        self.sequence = self.sequence.wrapping_add(1);
        self.counters.packets_out += 1;
        self.counters.bytes_out += n as u64;
        self.rtcp.on_rtp_sent(now, timestamp, payload_len);
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to do.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.rtcp.poll_timeout();
        if !self.timed_out {
            t = t.min(self.last_rtp + self.cfg.silence_limit());
        }
        if let Some(d) = self.dtmf_rx.poll_timeout() {
            t = t.min(d);
        }
        t
    }

    /// RTCP reports due, digits whose end never came. Returns true exactly
    /// once, when the caller has sent no RTP for the media timeout.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Outbox) -> bool {
        self.dtmf_rx.handle_timeout(now);
        if now >= self.rtcp.poll_timeout() {
            if let Some(dst) = self.rtcp_destination() {
                let (rtcp, stats) = (&mut self.rtcp, &mut self.stats);
                let n = out.transmit(&self.call, dst, true, RTCP_MAX, |buf| {
                    rtcp.poll_transmit(now, Some(stats), buf).ok().flatten()
                });
                // RTCP_MAX fits our compound (our CNAME is short), so this
                // never fails; if it did, the schedule would not advance.
                debug_assert!(n.is_some() || now < self.rtcp.poll_timeout());
                if n.is_some() {
                    self.counters.rtcp_out += 1;
                }
            } else {
                // No port to send to: keep the schedule moving.
                let _ = self.rtcp.poll_transmit(now, None, &mut [0u8; RTCP_MAX]);
            }
        }
        if !self.timed_out && now >= self.last_rtp + self.cfg.silence_limit() {
            self.timed_out = true;
            return true;
        }
        false
    }

    /// A final report and our BYE (RFC 3550 s6.6), at hangup.
    pub fn send_bye(&mut self, now: Instant, out: &mut Outbox) {
        let Some(dst) = self.rtcp_destination() else {
            return;
        };
        let (rtcp, stats) = (&mut self.rtcp, &mut self.stats);
        let n = out.transmit(&self.call, dst, true, RTCP_MAX, |buf| {
            rtcp.write_bye(now, Some(stats), buf).ok()
        });
        if n.is_some() {
            self.counters.rtcp_out += 1;
        }
    }

    /// Loss counted since the last call, for the shard's running total.
    pub fn take_lost_delta(&mut self) -> i64 {
        let lost = self.stats.counters().lost;
        let d = lost - self.lost_reported;
        self.lost_reported = lost;
        d
    }

    /// The leg's figures for the call record.
    pub fn report(&self, concealed_frames: u64) -> CallMediaReport {
        let rx = self.stats.counters();
        CallMediaReport {
            packets_in: rx.packets,
            packets_out: self.counters.packets_out,
            bytes_in: rx.bytes,
            bytes_out: self.counters.bytes_out,
            lost: rx.lost,
            reordered: rx.reordered,
            duplicates: rx.duplicates,
            foreign_dropped: self.counters.foreign_dropped,
            malformed: self.counters.malformed,
            jitter_p50_us: self.stats.jitter_p50_us(),
            jitter_p99_us: self.stats.jitter_p99_us(),
            jitter_max_us: self.stats.jitter_max_us(),
            dtmf_digits: self.counters.dtmf_digits_in,
            rtt_ms: self
                .rtcp
                .rtt()
                .map(|d| u32::try_from((d.as_micros() + 500) / 1000).unwrap_or(u32::MAX)),
            concealed_frames,
            codec: self.cfg.codec,
            latched: self.latched,
            media_timeout: self.timed_out,
        }
    }
}
