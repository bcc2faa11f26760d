//! DTMF as RTP telephone-events (RFC 4733 s2.3 payload, s2.5 procedures).
//!
//! Where it sits: packets of the negotiated telephone-event payload type go to
//! [`DtmfReceiver`] instead of the jitter buffer; the digits it emits become
//! LiveKit `sip_dtmf` data packets in the room. In the other direction, a digit
//! from the room (or the API) goes to [`DtmfSender`], whose packets the leg sends
//! in place of voice frames on its 20 ms tick.
//!
//! What it owns: the event state machines only. The caller assigns sequence
//! numbers (the event shares the voice stream's sequence space) and SSRC.
//!
//! Receive rules: an event is keyed by its RTP timestamp (s2.5.2.1: every packet
//! of one event carries the timestamp of its start). It is emitted exactly once,
//! when it ends: on the first packet with the E bit (the two redundant end
//! packets, s2.5.1.4, and late start/update packets are then ignored), when a
//! packet of a newer event arrives, or when no packet has come for
//! [`DtmfReceiver::END_TIMEOUT`] (all end packets lost).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::packet::RtpHeader;

/// Payload length of one event report (s2.3).
pub const EVENT_PAYLOAD_LEN: usize = 4;
/// s2.5.1.4: the end of an event is sent three times.
pub const END_PACKETS: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error("telephone-event payload of {len} bytes, need 4")]
    Truncated { len: usize },
    #[error("telephone-event {0} is not a DTMF digit (0-15)")]
    UnsupportedEvent(u8),
    #[error("'{0}' is not a DTMF digit")]
    UnknownDigit(char),
    #[error("event duration does not fit the 16-bit duration field")]
    DurationTooLong,
    #[error("an event is already being sent")]
    Busy,
}

/// The digit of event code 0-15 (s3.2, table 1): 0-9, `*`, `#`, A-D.
pub fn digit_of(code: u8) -> Option<char> {
    match code {
        0..=9 => Some((b'0' + code) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + code - 12) as char),
        _ => None,
    }
}

/// The event code of a digit; `a`-`d` are accepted for A-D.
pub fn event_code(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// How a received event came to an end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventEnd {
    /// A packet with the E bit.
    EndBit,
    /// A newer event started before any end packet arrived.
    NextEvent,
    /// Nothing arrived for [`DtmfReceiver::END_TIMEOUT`].
    Timeout,
}

/// One received digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtmfEvent {
    pub digit: char,
    pub code: u8,
    /// Length of the tone, from the last duration field seen.
    pub duration_ms: u32,
    /// Power level as -dBm0 (0 is loudest, 63 quietest), s2.3.
    pub volume: u8,
    /// RTP timestamp of the event start: the key of the event.
    pub timestamp: u32,
    pub end: EventEnd,
}

#[derive(Clone, Copy, Debug)]
struct ActiveEvent {
    ssrc: u32,
    timestamp: u32,
    code: u8,
    volume: u8,
    /// Duration of earlier 0xffff-unit segments (s2.5.1.3), in RTP units.
    prior_segments: u32,
    /// Duration field of the current segment.
    duration: u16,
    /// Timestamp of the current segment's start.
    segment_ts: u32,
    last_packet: Instant,
}

/// `a` is older than `b` in RTP timestamp serial arithmetic.
fn ts_older(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Telephone-event receive state of one leg.
///
/// Poll contract: feed [`on_packet`](Self::on_packet) (and
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)
/// passes), then drain [`poll_event`](Self::poll_event).
#[derive(Debug)]
pub struct DtmfReceiver {
    clock_rate: u32,
    active: Option<ActiveEvent>,
    /// (SSRC, timestamp) of the last emitted event: its stragglers are ignored.
    last_done: Option<(u32, u32)>,
    events: VecDeque<DtmfEvent>,
}

impl DtmfReceiver {
    /// An event with no packet for this long is over. Updates come every 50 ms at
    /// most (s2.5.1.2 suggests 50, trunks use 20), so this survives several lost
    /// updates yet reports a digit whose end packets were all lost quickly.
    pub const END_TIMEOUT: Duration = Duration::from_millis(300);

    /// `clock_rate` of the telephone-event payload type (8000 with G.711).
    pub fn new(clock_rate: u32) -> DtmfReceiver {
        DtmfReceiver {
            clock_rate: clock_rate.max(1),
            active: None,
            last_done: None,
            // Two events can end on one packet (the next one starts with its end).
            events: VecDeque::with_capacity(4),
        }
    }

    /// Take one telephone-event packet.
    pub fn on_packet(
        &mut self,
        header: &RtpHeader,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), DtmfError> {
        if payload.len() < EVENT_PAYLOAD_LEN {
            return Err(DtmfError::Truncated { len: payload.len() });
        }
        let code = payload[0];
        let end = payload[1] & 0x80 != 0;
        let volume = payload[1] & 0x3f;
        let duration = u16::from_be_bytes([payload[2], payload[3]]);
        if code > 15 {
            return Err(DtmfError::UnsupportedEvent(code));
        }
        let ts = header.timestamp;
        if let Some((ssrc, done)) = self.last_done {
            if ssrc == header.ssrc && (ts == done || ts_older(ts, done)) {
                // Redundant end packets, or a late packet of an emitted event.
                return Ok(());
            }
        }
        if let Some(a) = self.active.as_mut() {
            if a.ssrc == header.ssrc {
                if a.timestamp == ts || a.segment_ts == ts {
                    a.duration = a.duration.max(duration);
                    a.volume = volume;
                    a.last_packet = now;
                    if end {
                        self.finish(EventEnd::EndBit);
                    }
                    return Ok(());
                }
                if ts_older(ts, a.segment_ts) {
                    return Ok(());
                }
                // s2.5.1.3: a long event goes on in a new segment whose timestamp
                // is the previous segment's start plus its (full) duration.
                if code == a.code
                    && a.duration == u16::MAX
                    && ts == a.segment_ts.wrapping_add(u32::from(u16::MAX))
                {
                    a.prior_segments += u32::from(u16::MAX);
                    a.segment_ts = ts;
                    a.duration = duration;
                    a.last_packet = now;
                    if end {
                        self.finish(EventEnd::EndBit);
                    }
                    return Ok(());
                }
            }
            self.finish(EventEnd::NextEvent);
        }
        self.active = Some(ActiveEvent {
            ssrc: header.ssrc,
            timestamp: ts,
            code,
            volume,
            prior_segments: 0,
            duration,
            segment_ts: ts,
            last_packet: now,
        });
        if end {
            self.finish(EventEnd::EndBit);
        }
        Ok(())
    }

    fn finish(&mut self, end: EventEnd) {
        let Some(a) = self.active.take() else {
            return;
        };
        self.last_done = Some((a.ssrc, a.timestamp));
        let units = u64::from(a.prior_segments) + u64::from(a.duration);
        self.events.push_back(DtmfEvent {
            digit: digit_of(a.code).unwrap_or('?'),
            code: a.code,
            duration_ms: (units * 1000 / u64::from(self.clock_rate)) as u32,
            volume: a.volume,
            timestamp: a.timestamp,
            end,
        });
    }

    /// When an event without end packets will be declared over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active.map(|a| a.last_packet + Self::END_TIMEOUT)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|t| now >= t) {
            self.finish(EventEnd::Timeout);
        }
    }

    /// The next finished digit.
    pub fn poll_event(&mut self) -> Option<DtmfEvent> {
        self.events.pop_front()
    }
}

/// One telephone-event packet to send: the caller adds sequence number, SSRC
/// and the negotiated payload type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtmfPacket {
    pub payload: [u8; EVENT_PAYLOAD_LEN],
    /// Set on the first packet of the event (s2.5.1.1).
    pub marker: bool,
    /// The event's start timestamp, the same on every packet (s2.5.1.1).
    pub timestamp: u32,
    /// The E bit.
    pub end: bool,
    /// True: send this instead of the voice frame of this tick. False: a
    /// retransmitted end packet, sent beside the voice frame (voice resumes
    /// right after the event rather than 40 ms later).
    pub replaces_voice: bool,
}

#[derive(Clone, Copy, Debug)]
struct Sending {
    code: u8,
    timestamp: u32,
    /// Total duration in RTP units.
    total: u16,
    /// Packets of the event sent so far (start + updates + end retransmissions).
    sent: u32,
}

/// Telephone-event generator of one leg (RFC 4733 s2.5.1).
///
/// Call [`start`](Self::start) with the RTP timestamp the next voice frame would
/// have had, then [`next_packet`](Self::next_packet) once per packetization
/// tick until it returns `None`. The first packet has the marker; each tick
/// updates the duration; the last duration is sent with the E bit three times.
/// The voice stream resumes at `timestamp + duration` (see
/// [`resume_timestamp`](Self::resume_timestamp)).
#[derive(Debug)]
pub struct DtmfSender {
    frame_units: u32,
    ptime_us: u128,
    volume: u8,
    state: Option<Sending>,
}

impl DtmfSender {
    /// `clock_rate` of the telephone-event payload type, packetization time of the
    /// leg (20 ms), `volume` as -dBm0 (10 is what most phones send).
    pub fn new(clock_rate: u32, ptime: Duration, volume: u8) -> DtmfSender {
        let frame_units = (ptime.as_micros() * u128::from(clock_rate) / 1_000_000).max(1) as u32;
        DtmfSender {
            frame_units,
            ptime_us: ptime.as_micros().max(1),
            volume: volume.min(63),
            state: None,
        }
    }

    pub fn is_sending(&self) -> bool {
        self.state.is_some()
    }

    /// Begin sending `digit` for `duration` (rounded up to whole frames, at
    /// least one) starting at RTP time `timestamp`.
    pub fn start(
        &mut self,
        digit: char,
        duration: Duration,
        timestamp: u32,
    ) -> Result<(), DtmfError> {
        if self.state.is_some() {
            return Err(DtmfError::Busy);
        }
        let (code, total) = self.event(digit, duration)?;
        self.state = Some(Sending {
            code,
            timestamp,
            total,
            sent: 0,
        });
        Ok(())
    }

    /// Whether [`start`](Self::start) would take `digit` for `duration` once
    /// idle: a DTMF digit, and a duration the 16-bit field holds.
    pub fn check(&self, digit: char, duration: Duration) -> Result<(), DtmfError> {
        self.event(digit, duration).map(|_| ())
    }

    /// The event code and the duration in RTP units (whole frames, at least one).
    fn event(&self, digit: char, duration: Duration) -> Result<(u8, u16), DtmfError> {
        let code = event_code(digit).ok_or(DtmfError::UnknownDigit(digit))?;
        let frames = duration.as_micros().div_ceil(self.ptime_us).max(1);
        let units = frames * u128::from(self.frame_units);
        let total = u16::try_from(units).map_err(|_| DtmfError::DurationTooLong)?;
        Ok((code, total))
    }

    /// RTP timestamp at which voice continues after the current event.
    pub fn resume_timestamp(&self) -> Option<u32> {
        self.state
            .map(|s| s.timestamp.wrapping_add(u32::from(s.total)))
    }

    /// The packet for this tick, or `None` when no event is being sent.
    pub fn next_packet(&mut self) -> Option<DtmfPacket> {
        let s = self.state.as_mut()?;
        let frames = u32::from(s.total) / self.frame_units;
        s.sent += 1;
        let k = s.sent;
        // Packet k (1-based) reports k frames; from the last frame on, the full
        // duration with the E bit, three times.
        let duration = (k * self.frame_units).min(u32::from(s.total)) as u16;
        let end = k >= frames;
        let packet = DtmfPacket {
            payload: [
                s.code,
                (u8::from(end) << 7) | self.volume,
                (duration >> 8) as u8,
                duration as u8,
            ],
            marker: k == 1,
            timestamp: s.timestamp,
            end,
            replaces_voice: k <= frames,
        };
        if k >= frames + u32::from(END_PACKETS) - 1 {
            self.state = None;
        }
        Some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(ts: u32) -> RtpHeader {
        RtpHeader {
            marker: false,
            payload_type: 101,
            sequence: 0,
            timestamp: ts,
            ssrc: 9,
        }
    }

    fn pkt(code: u8, end: bool, duration: u16) -> [u8; 4] {
        [
            code,
            (u8::from(end) << 7) | 10,
            (duration >> 8) as u8,
            duration as u8,
        ]
    }

    #[test]
    fn digit_table() {
        let all: String = (0..16).map(|c| digit_of(c).unwrap()).collect();
        assert_eq!(all, "0123456789*#ABCD");
        for c in 0..16 {
            assert_eq!(event_code(digit_of(c).unwrap()), Some(c));
        }
        assert_eq!(event_code('d'), Some(15));
        assert_eq!(event_code('x'), None);
        assert_eq!(digit_of(16), None);
    }

    #[test]
    fn redundant_end_packets_give_one_event() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(8000);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Start retransmitted (as some gateways do), updates, three ends.
        for (i, (end, dur)) in [
            (false, 160),
            (false, 160),
            (false, 320),
            (false, 480),
            (true, 640),
            (true, 640),
            (true, 640),
        ]
        .into_iter()
        .enumerate()
        {
            rx.on_packet(&hdr(1000), &pkt(5, end, dur), ms(20 * i as u64))
                .unwrap();
        }
        let ev = rx.poll_event().unwrap();
        assert_eq!(
            ev,
            DtmfEvent {
                digit: '5',
                code: 5,
                duration_ms: 80,
                volume: 10,
                timestamp: 1000,
                end: EventEnd::EndBit
            }
        );
        assert_eq!(rx.poll_event(), None);
        assert_eq!(rx.poll_timeout(), None);
        // A late update of the same event after its end: still nothing.
        rx.on_packet(&hdr(1000), &pkt(5, false, 480), ms(200))
            .unwrap();
        assert_eq!(rx.poll_event(), None);
        // The same digit pressed again is a new event (new timestamp).
        rx.on_packet(&hdr(3000), &pkt(5, false, 160), ms(300))
            .unwrap();
        rx.on_packet(&hdr(3000), &pkt(5, true, 800), ms(380))
            .unwrap();
        let ev = rx.poll_event().unwrap();
        assert_eq!((ev.digit, ev.timestamp, ev.duration_ms), ('5', 3000, 100));
    }

    #[test]
    fn lost_end_packets_end_by_timeout() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(8000);
        rx.on_packet(&hdr(0), &pkt(11, false, 160), t0).unwrap();
        let t1 = t0 + Duration::from_millis(20);
        rx.on_packet(&hdr(0), &pkt(11, false, 320), t1).unwrap();
        assert_eq!(rx.poll_timeout(), Some(t1 + DtmfReceiver::END_TIMEOUT));
        rx.handle_timeout(t1 + Duration::from_millis(100));
        assert_eq!(rx.poll_event(), None);
        rx.handle_timeout(t1 + DtmfReceiver::END_TIMEOUT);
        let ev = rx.poll_event().unwrap();
        assert_eq!(
            (ev.digit, ev.duration_ms, ev.end),
            ('#', 40, EventEnd::Timeout)
        );
        // An end packet arriving after the timeout does not repeat the digit.
        rx.on_packet(&hdr(0), &pkt(11, true, 800), t1 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(rx.poll_event(), None);
    }

    #[test]
    fn lost_end_packets_end_by_next_event() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(8000);
        rx.on_packet(&hdr(0), &pkt(1, false, 160), t0).unwrap();
        // The next event's only surviving packet is an end packet: two events.
        rx.on_packet(&hdr(2000), &pkt(2, true, 800), t0).unwrap();
        let a = rx.poll_event().unwrap();
        let b = rx.poll_event().unwrap();
        assert_eq!((a.digit, a.end), ('1', EventEnd::NextEvent));
        assert_eq!(
            (b.digit, b.end, b.duration_ms),
            ('2', EventEnd::EndBit, 100)
        );
    }

    #[test]
    fn malformed_payloads() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(8000);
        assert_eq!(
            rx.on_packet(&hdr(0), &[1, 2, 3], t0),
            Err(DtmfError::Truncated { len: 3 })
        );
        assert_eq!(
            rx.on_packet(&hdr(0), &pkt(16, false, 0), t0),
            Err(DtmfError::UnsupportedEvent(16))
        );
        assert_eq!(rx.poll_event(), None);
    }

    #[test]
    fn long_event_segments_are_one_digit() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(8000);
        rx.on_packet(&hdr(100), &pkt(0, false, 0xffff), t0).unwrap();
        rx.on_packet(&hdr(100 + 0xffff), &pkt(0, false, 160), t0)
            .unwrap();
        rx.on_packet(&hdr(100 + 0xffff), &pkt(0, true, 8000), t0)
            .unwrap();
        let ev = rx.poll_event().unwrap();
        assert_eq!(ev.duration_ms, (0xffff + 8000) * 1000 / 8000);
        assert_eq!(rx.poll_event(), None);
    }

    #[test]
    fn sender_sequence_exact_bytes() {
        let mut tx = DtmfSender::new(8000, Duration::from_millis(20), 10);
        tx.start('9', Duration::from_millis(100), 48_000).unwrap();
        assert_eq!(
            tx.start('1', Duration::from_millis(100), 0),
            Err(DtmfError::Busy)
        );
        assert_eq!(tx.resume_timestamp(), Some(48_800));
        let pkts: Vec<DtmfPacket> = std::iter::from_fn(|| tx.next_packet()).collect();
        let want = [
            ([9, 0x0a, 0x00, 0xa0], true, false, true),
            ([9, 0x0a, 0x01, 0x40], false, false, true),
            ([9, 0x0a, 0x01, 0xe0], false, false, true),
            ([9, 0x0a, 0x02, 0x80], false, false, true),
            ([9, 0x8a, 0x03, 0x20], false, true, true),
            ([9, 0x8a, 0x03, 0x20], false, true, false),
            ([9, 0x8a, 0x03, 0x20], false, true, false),
        ];
        assert_eq!(pkts.len(), want.len());
        for (p, (payload, marker, end, replaces)) in pkts.iter().zip(want) {
            assert_eq!(p.payload, payload);
            assert_eq!(p.marker, marker);
            assert_eq!(p.end, end);
            assert_eq!(p.replaces_voice, replaces);
            assert_eq!(p.timestamp, 48_000);
        }
        assert!(!tx.is_sending());
        assert_eq!(tx.next_packet(), None);
    }

    #[test]
    fn sender_rounds_up_and_rejects() {
        let mut tx = DtmfSender::new(8000, Duration::from_millis(20), 10);
        tx.start('#', Duration::from_millis(50), 0).unwrap();
        let pkts: Vec<_> = std::iter::from_fn(|| tx.next_packet()).collect();
        // 50 ms -> 3 frames (480 units): 3 voice slots + 2 retransmitted ends.
        assert_eq!(pkts.len(), 5);
        assert_eq!(&pkts[2].payload[2..], &[0x01, 0xe0]);
        assert_eq!(
            tx.start('x', Duration::from_millis(50), 0),
            Err(DtmfError::UnknownDigit('x'))
        );
        assert_eq!(
            tx.start('1', Duration::from_secs(10), 0),
            Err(DtmfError::DurationTooLong)
        );
        assert_eq!(
            tx.check('1', Duration::from_secs(10)),
            Err(DtmfError::DurationTooLong)
        );
        assert_eq!(
            tx.check('x', Duration::ZERO),
            Err(DtmfError::UnknownDigit('x'))
        );
        assert_eq!(tx.check('#', Duration::from_millis(100)), Ok(()));
        // Zero duration still sends one frame.
        tx.start('1', Duration::ZERO, 0).unwrap();
        assert_eq!(std::iter::from_fn(|| tx.next_packet()).count(), 3);
    }

    proptest::proptest! {
        /// Whatever arrives, in whatever order: no panic, and never two digits
        /// for one event (timestamp).
        #[test]
        fn receiver_emits_each_event_once(
            packets in proptest::collection::vec(
                (0u32..8, proptest::prelude::any::<[u8; 4]>(), 0u64..400, proptest::prelude::any::<bool>()),
                0..60,
            ),
        ) {
            let t0 = Instant::now();
            let mut rx = DtmfReceiver::new(8000);
            let mut seen = std::collections::HashSet::new();
            let mut now = t0;
            for (ts_index, mut payload, gap_ms, short) in packets {
                payload[0] %= 17;
                now += Duration::from_millis(gap_ms);
                rx.handle_timeout(now);
                let len = if short { 3 } else { 4 };
                let _ = rx.on_packet(&hdr(ts_index * 1000), &payload[..len], now);
                while let Some(ev) = rx.poll_event() {
                    proptest::prop_assert!(seen.insert(ev.timestamp), "twice: {:?}", ev);
                }
            }
        }
    }

    #[test]
    fn sender_to_receiver() {
        let t0 = Instant::now();
        let mut tx = DtmfSender::new(8000, Duration::from_millis(20), 7);
        let mut rx = DtmfReceiver::new(8000);
        let mut digits = String::new();
        let mut ts = 0u32;
        for (n, d) in "1234567890*#ABCD".chars().enumerate() {
            tx.start(d, Duration::from_millis(60), ts).unwrap();
            let resume = tx.resume_timestamp().unwrap();
            let mut i = 0;
            while let Some(p) = tx.next_packet() {
                let h = RtpHeader {
                    marker: p.marker,
                    timestamp: p.timestamp,
                    ..hdr(0)
                };
                let now = t0 + Duration::from_millis(1000 * n as u64 + 20 * i);
                rx.on_packet(&h, &p.payload, now).unwrap();
                i += 1;
            }
            ts = resume + 1600;
            while let Some(ev) = rx.poll_event() {
                assert_eq!(
                    (ev.duration_ms, ev.volume, ev.end),
                    (60, 7, EventEnd::EndBit)
                );
                digits.push(ev.digit);
            }
        }
        assert_eq!(digits, "1234567890*#ABCD");
    }
}
