//! Receive statistics for one incoming RTP stream (RFC 3550 s6.4.1, appendix A.1,
//! A.3, A.8): packets, bytes, loss, reordering, duplicates and interarrival jitter.
//!
//! Where it sits: the driver parses each RTP datagram ([`super::packet`]) and
//! feeds its SSRC, sequence number, timestamp, length and kernel receive time to
//! [`ReceiveStats::on_packet`] *before* anything else looks at it. The verdict
//! ([`PacketClass`]) tells the driver whether the packet belongs to the stream.
//! [`ReceiveStats::take_report_block`] feeds the receiver reports of
//! [`super::rtcp::RtcpSession`]; the counters and the jitter histogram feed metrics.
//!
//! What it owns: the sequence-number state of the current source (extended highest
//! sequence with wrap cycles, a 128-packet window of what was received), the jitter
//! estimator, and one hdrhistogram of jitter values in microseconds.
//!
//! Time: `arrival_us` is the receive time in microseconds on *any* clock; only
//! differences between packets are used. That lets the driver pass the kernel's
//! `SO_TIMESTAMPNS` (CLOCK_REALTIME) directly, without converting it into an
//! `Instant`. If that clock steps backwards, the one affected jitter sample is
//! skipped rather than turned into a bogus multi-second transit jump.
//!
//! Counting rules, chosen so that injected faults show up exactly:
//! - `lost` = expected - received, where duplicates are *not* counted as received
//!   (RFC 3550 A.3 counts them, which lets duplicates hide losses; we count them
//!   separately instead). Dropping 5 of 1000 packets gives `lost == 5`.
//! - `reordered`: a packet with a sequence number lower than the highest seen that
//!   was not received before. Swapping 3 adjacent pairs gives `reordered == 3`.
//! - `duplicates`: a sequence number received before, within the window.

use hdrhistogram::Histogram;

use super::rtcp::ReportBlock;

/// RFC 3550 A.1: a forward jump up to this many packets is a gap (loss), not a restart.
pub const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: a packet up to this far behind the highest is late, not a restart.
pub const MAX_MISORDER: u16 = 100;
/// RFC 3550 A.1: sequential packets needed before a new source is believed.
pub const MIN_SEQUENTIAL: u8 = 2;
/// Largest jitter the histogram resolves; larger values are clamped to it.
pub const JITTER_HISTOGRAM_MAX_US: u64 = 10_000_000;

/// What one packet was to the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketClass {
    /// Highest sequence so far (possibly after a gap).
    InOrder,
    /// Lower than the highest, not seen before: late but useful.
    Reordered,
    /// Seen before: drop it.
    Duplicate,
    /// From an SSRC that is not (yet) validated (RFC 3550 A.1 probation).
    Probation,
    /// Validated a new SSRC, which replaced the previous source (stats reset).
    NewSource,
    /// A huge sequence jump confirmed by the next packet: the sender restarted
    /// its sequence numbers (RFC 3550 A.1); the source's sequence state was reset.
    Restarted,
    /// A huge sequence jump not (yet) confirmed: ignored.
    Discarded,
}

impl PacketClass {
    /// Whether the packet should be passed on (to the jitter buffer, DTMF, ...).
    pub fn is_accepted(self) -> bool {
        matches!(
            self,
            PacketClass::InOrder
                | PacketClass::Reordered
                | PacketClass::NewSource
                | PacketClass::Restarted
        )
    }
}

/// Call-wide counters, summed over every source the call has had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiveCounters {
    /// Every packet offered, whatever its class.
    pub packets: u64,
    /// Sum of the `bytes` arguments of every packet offered.
    pub bytes: u64,
    /// Packets expected from the validated sources (extended sequence span).
    pub expected: u64,
    /// Distinct packets received from the validated sources.
    pub received: u64,
    /// `expected - received`: negative only if a source backs up before its start.
    pub lost: i64,
    pub reordered: u64,
    pub duplicates: u64,
    /// Probation packets of sources never validated, and unconfirmed jumps.
    pub discarded: u64,
    /// How many times a new SSRC replaced the current source.
    pub source_changes: u64,
}

/// Sequence state of the validated source (RFC 3550 A.1 `source`).
#[derive(Clone, Copy, Debug)]
struct Source {
    ssrc: u32,
    max_seq: u16,
    /// Wrap count shifted left 16 (A.1 `cycles`), so `cycles + max_seq` is the
    /// extended highest sequence number.
    cycles: u64,
    /// Extended sequence of the first packet; signed so a packet from just before
    /// the first one (reordered at the start) can move it back.
    base: i64,
    /// A.1 `bad_seq`: the sequence that would confirm a huge jump; > 0xffff = none.
    bad_seq: u32,
    /// Distinct packets received.
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Bit k set: extended sequence `ext_max - k` was received.
    window: u128,
}

impl Source {
    fn new(ssrc: u32, seq: u16) -> Source {
        Source {
            ssrc,
            max_seq: seq,
            cycles: 0,
            base: i64::from(seq),
            bad_seq: u32::MAX,
            received: 1,
            expected_prior: 0,
            received_prior: 0,
            window: 1,
        }
    }

    fn ext_max(&self) -> i64 {
        (self.cycles + u64::from(self.max_seq)) as i64
    }

    fn expected(&self) -> u64 {
        (self.ext_max() - self.base + 1).max(0) as u64
    }

    fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// RFC 3550 A.1 `update_seq`, plus the duplicate window.
    fn update(&mut self, seq: u16) -> PacketClass {
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta == 0 {
            PacketClass::Duplicate
        } else if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += 1 << 16;
            }
            self.max_seq = seq;
            self.window = if udelta >= 128 {
                0
            } else {
                self.window << udelta
            } | 1;
            self.bad_seq = u32::MAX;
            self.received += 1;
            PacketClass::InOrder
        } else if udelta <= u16::MAX - MAX_MISORDER {
            // A huge jump: believe it only if the next packet continues from it.
            if u32::from(seq) == self.bad_seq {
                PacketClass::Restarted
            } else {
                self.bad_seq = u32::from(seq.wrapping_add(1));
                PacketClass::Discarded
            }
        } else {
            // Behind the highest by 1..=MAX_MISORDER (< 128, inside the window).
            let back = u32::from(udelta.wrapping_neg());
            let bit = 1u128 << back;
            if self.window & bit != 0 {
                return PacketClass::Duplicate;
            }
            self.window |= bit;
            self.received += 1;
            let ext = self.ext_max() - i64::from(back);
            if ext < self.base {
                // Reordered around the very first packet: it belongs to the stream.
                self.base = ext;
            }
            PacketClass::Reordered
        }
    }
}

/// A source being validated (RFC 3550 A.1 probation).
#[derive(Clone, Copy, Debug)]
struct Candidate {
    ssrc: u32,
    first_seq: u16,
    next_seq: u16,
    /// Sequential packets seen so far.
    seen: u8,
}

/// RFC 3550 A.8 jitter estimator, in microseconds, scaled by 16 like the
/// reference code so the integer update loses no precision.
#[derive(Clone, Copy, Debug, Default)]
struct JitterEstimator {
    last: Option<(u64, u32)>,
    jitter_q4: i64,
}

impl JitterEstimator {
    /// Feed one packet; returns the new estimate in µs if it changed.
    fn update(&mut self, arrival_us: u64, ts: u32, clock_rate: u32) -> Option<u64> {
        let prev = self.last.replace((arrival_us, ts));
        let (prev_arrival, prev_ts) = prev?;
        if arrival_us < prev_arrival {
            // The receive clock stepped backwards: no meaningful sample.
            return None;
        }
        let dr = (arrival_us - prev_arrival) as i64;
        // Timestamp difference, wrapping (s5.1: the timestamp wraps at 2^32).
        let dts = i64::from(ts.wrapping_sub(prev_ts) as i32);
        let rate = i64::from(clock_rate.max(1));
        // Round to the nearest µs (exact at 8 kHz, where a tick is 125 µs).
        let ds_us = (dts * 1_000_000 + dts.signum() * rate / 2) / rate;
        // s6.4.1: D(i,j) = (Rj - Ri) - (Sj - Si); J += (|D| - J) / 16.
        let d = (dr - ds_us).abs();
        self.jitter_q4 += d - ((self.jitter_q4 + 8) >> 4);
        Some(self.jitter_us())
    }

    fn jitter_us(&self) -> u64 {
        ((self.jitter_q4 + 8) >> 4).max(0) as u64
    }
}

/// Receive statistics of one call leg's incoming stream.
pub struct ReceiveStats {
    clock_rate: u32,
    source: Option<Source>,
    candidate: Option<Candidate>,
    jitter: JitterEstimator,
    histogram: Histogram<u64>,
    counters: ReceiveCounters,
    /// Expected/received of sources that were replaced or restarted.
    prior_expected: u64,
    prior_received: u64,
}

impl std::fmt::Debug for ReceiveStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiveStats")
            .field("clock_rate", &self.clock_rate)
            .field("ssrc", &self.ssrc())
            .field("counters", &self.counters())
            .field("jitter_us", &self.jitter_us())
            .finish()
    }
}

impl ReceiveStats {
    /// `clock_rate`: the RTP clock of the negotiated codec (8000 for G.711).
    ///
    /// Allocates the jitter histogram once (2 significant digits up to 10 s:
    /// about 18 KiB), so nothing allocates per packet.
    pub fn new(clock_rate: u32) -> ReceiveStats {
        let histogram = Histogram::new_with_bounds(1, JITTER_HISTOGRAM_MAX_US, 2)
            .expect("constant bounds are valid: 1 <= low, high >= 2 * low, sigfig <= 5");
        ReceiveStats {
            clock_rate: clock_rate.max(1),
            source: None,
            candidate: None,
            jitter: JitterEstimator::default(),
            histogram,
            counters: ReceiveCounters::default(),
            prior_expected: 0,
            prior_received: 0,
        }
    }

    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// The validated source, if any.
    pub fn ssrc(&self) -> Option<u32> {
        self.source.map(|s| s.ssrc)
    }

    /// Account for one received RTP packet. `bytes` is whatever the caller wants
    /// summed (the driver passes the datagram length); `arrival_us` is the receive
    /// time in µs on any clock (see the module doc).
    pub fn on_packet(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        bytes: usize,
        arrival_us: u64,
    ) -> PacketClass {
        self.counters.packets += 1;
        self.counters.bytes += bytes as u64;
        let class = match &mut self.source {
            Some(src) if src.ssrc == ssrc => {
                let class = src.update(seq);
                if class == PacketClass::Restarted {
                    self.retire_source();
                    self.source = Some(Source::new(ssrc, seq));
                    self.jitter = JitterEstimator::default();
                }
                class
            }
            _ => self.probation(ssrc, seq),
        };
        match class {
            PacketClass::Duplicate => self.counters.duplicates += 1,
            PacketClass::Reordered => self.counters.reordered += 1,
            PacketClass::Discarded => self.counters.discarded += 1,
            _ => {}
        }
        if class.is_accepted() {
            if let Some(j) = self.jitter.update(arrival_us, timestamp, self.clock_rate) {
                self.histogram
                    .saturating_record(j.min(JITTER_HISTOGRAM_MAX_US));
            }
        }
        class
    }

    /// RFC 3550 A.1 probation for a packet whose SSRC is not the current source.
    fn probation(&mut self, ssrc: u32, seq: u16) -> PacketClass {
        let continues = matches!(self.candidate, Some(c) if c.ssrc == ssrc && c.next_seq == seq);
        if !continues {
            if let Some(old) = self.candidate.take() {
                // That candidate never made it: its packets were noise.
                self.counters.discarded += u64::from(old.seen);
            }
            self.candidate = Some(Candidate {
                ssrc,
                first_seq: seq,
                next_seq: seq.wrapping_add(1),
                seen: 0,
            });
        }
        let Some(c) = self.candidate.as_mut() else {
            unreachable!("candidate was set just above");
        };
        c.seen += 1;
        c.next_seq = seq.wrapping_add(1);
        if c.seen < MIN_SEQUENTIAL {
            return PacketClass::Probation;
        }
        // Validated. The probation packets were real packets of this source, so
        // they count: base is the first of them, all of them were received.
        let c = *c;
        self.candidate = None;
        if self.source.is_some() {
            self.counters.source_changes += 1;
            self.retire_source();
        }
        let mut src = Source::new(ssrc, c.first_seq);
        let span = seq.wrapping_sub(c.first_seq);
        src.max_seq = seq;
        src.received = u64::from(c.seen);
        src.window = (1u128 << (span + 1)) - 1;
        if seq < c.first_seq {
            src.cycles = 1 << 16;
        }
        self.source = Some(src);
        self.jitter = JitterEstimator::default();
        PacketClass::NewSource
    }

    /// Fold the current source's expected/received into the call totals.
    fn retire_source(&mut self) {
        if let Some(src) = self.source.take() {
            self.prior_expected += src.expected();
            self.prior_received += src.received;
        }
    }

    /// Call-wide counters.
    pub fn counters(&self) -> ReceiveCounters {
        let (exp, rec) = self.source.map_or((0, 0), |s| (s.expected(), s.received));
        let expected = self.prior_expected + exp;
        let received = self.prior_received + rec;
        ReceiveCounters {
            expected,
            received,
            lost: expected as i64 - received as i64,
            ..self.counters
        }
    }

    /// Extended highest sequence number of the current source (RFC 3550 A.3).
    pub fn ext_highest_seq(&self) -> Option<u32> {
        self.source.map(|s| s.ext_max() as u32)
    }

    /// Current interarrival jitter estimate, µs (RFC 3550 s6.4.1 J).
    pub fn jitter_us(&self) -> u64 {
        self.jitter.jitter_us()
    }

    /// Jitter in RTP timestamp units, as a receiver report carries it.
    pub fn jitter_rtp_units(&self) -> u32 {
        let j = self.jitter.jitter_us() as u128 * u128::from(self.clock_rate) / 1_000_000;
        j.min(u128::from(u32::MAX)) as u32
    }

    /// Median of the jitter estimates recorded, one per packet, µs.
    pub fn jitter_p50_us(&self) -> u64 {
        self.histogram.value_at_quantile(0.5)
    }
    pub fn jitter_p99_us(&self) -> u64 {
        self.histogram.value_at_quantile(0.99)
    }
    pub fn jitter_max_us(&self) -> u64 {
        self.histogram.max()
    }
    /// The histogram itself, for the shard to merge with `Histogram::add`.
    pub fn jitter_histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }

    /// The report block about the current source for our next RR/SR (RFC 3550
    /// s6.4.1, A.3), and start a new reporting interval. `lsr`/`dlsr` are left 0
    /// for [`super::rtcp::RtcpSession`] to fill in. `None` before a source is valid.
    pub fn take_report_block(&mut self) -> Option<ReportBlock> {
        let jitter = self.jitter_rtp_units();
        let src = self.source.as_mut()?;
        let expected = src.expected();
        let expected_interval = expected.saturating_sub(src.expected_prior);
        let received_interval = src.received.saturating_sub(src.received_prior);
        src.expected_prior = expected;
        src.received_prior = src.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        // A.3: fraction = lost_interval / expected_interval in 1/256, 0 if negative.
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        Some(ReportBlock {
            ssrc: src.ssrc,
            fraction_lost,
            cumulative_lost: src.lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            ext_highest_seq: src.ext_max() as u32,
            jitter,
            lsr: 0,
            dlsr: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0x1234_5678;

    /// Feed packets with sequence numbers `seqs` (in that arrival order), each with
    /// timestamp `seq * 160` and arrival at 20 ms per arrival slot.
    fn feed(stats: &mut ReceiveStats, seqs: &[u16]) -> Vec<PacketClass> {
        seqs.iter()
            .enumerate()
            .map(|(i, &s)| stats.on_packet(SSRC, s, u32::from(s) * 160, 172, i as u64 * 20_000))
            .collect()
    }

    #[test]
    fn clean_stream() {
        let mut st = ReceiveStats::new(8000);
        let seqs: Vec<u16> = (0..1000).collect();
        let classes = feed(&mut st, &seqs);
        assert_eq!(classes[0], PacketClass::Probation);
        assert_eq!(classes[1], PacketClass::NewSource);
        assert!(classes[2..].iter().all(|&c| c == PacketClass::InOrder));
        let c = st.counters();
        assert_eq!(c.packets, 1000);
        assert_eq!(c.bytes, 172_000);
        assert_eq!(c.expected, 1000);
        assert_eq!(c.received, 1000);
        assert_eq!(c.lost, 0);
        assert_eq!((c.reordered, c.duplicates, c.discarded), (0, 0, 0));
        // Constant 20 ms spacing against 160-tick timestamps: no jitter at all.
        assert_eq!(st.jitter_us(), 0);
        assert_eq!(st.jitter_max_us(), 0);
        assert_eq!(st.ext_highest_seq(), Some(999));
    }

    #[test]
    fn injected_loss_is_exact() {
        let mut st = ReceiveStats::new(8000);
        let dropped = [10u16, 200, 201, 555, 998];
        let seqs: Vec<u16> = (0..1000).filter(|s| !dropped.contains(s)).collect();
        feed(&mut st, &seqs);
        let c = st.counters();
        assert_eq!(c.lost, 5);
        assert_eq!(c.expected, 1000);
        assert_eq!((c.reordered, c.duplicates), (0, 0));
    }

    #[test]
    fn injected_reorder_and_duplicates_are_exact() {
        let mut st = ReceiveStats::new(8000);
        let mut seqs: Vec<u16> = (0..1000).collect();
        for i in [100usize, 300, 700] {
            seqs.swap(i, i + 1);
        }
        // Duplicates: one immediate, one late, one of a reordered packet.
        seqs.insert(51, 50);
        seqs.insert(500, 450);
        seqs.insert(305, 301);
        feed(&mut st, &seqs);
        let c = st.counters();
        assert_eq!(c.reordered, 3);
        assert_eq!(c.duplicates, 3);
        assert_eq!(c.lost, 0);
        assert_eq!(c.received, 1000);
    }

    #[test]
    fn loss_reorder_dup_together() {
        let mut st = ReceiveStats::new(8000);
        let mut seqs: Vec<u16> = (0..1000).filter(|s| s % 100 != 7).collect(); // 10 lost
        seqs.swap(20, 21);
        seqs.swap(40, 42); // 2 packets behind the highest when they arrive? only one is
        let dup = seqs[600];
        seqs.insert(610, dup);
        feed(&mut st, &seqs);
        let c = st.counters();
        assert_eq!(c.lost, 10);
        // swap(40,42): arrival order 42,41,40: 41 and 40 both arrive below 42.
        assert_eq!(c.reordered, 3);
        assert_eq!(c.duplicates, 1);
    }

    #[test]
    fn sequence_wrap() {
        let mut st = ReceiveStats::new(8000);
        let seqs: Vec<u16> = (0..300u32).map(|i| (65_400 + i) as u16).collect();
        let mut arrival = seqs.clone();
        arrival.retain(|&s| s != 65_535 && s != 3);
        arrival.swap(130, 131); // around 0..=1 after the wrap
        let classes = feed(&mut st, &arrival);
        assert!(!classes.contains(&PacketClass::Discarded));
        let c = st.counters();
        assert_eq!(c.expected, 300);
        assert_eq!(c.lost, 2);
        assert_eq!(c.reordered, 1);
        // 1 cycle + highest 163
        assert_eq!(st.ext_highest_seq(), Some(65_536 + 163));
    }

    #[test]
    fn reordered_before_first_packet() {
        let mut st = ReceiveStats::new(8000);
        feed(&mut st, &[5, 6, 4, 7, 8]);
        let c = st.counters();
        assert_eq!((c.expected, c.received, c.lost, c.reordered), (5, 5, 0, 1));
    }

    #[test]
    fn ssrc_change_resets_source() {
        let mut st = ReceiveStats::new(8000);
        feed(&mut st, &(0..100).collect::<Vec<_>>());
        assert_eq!(st.ssrc(), Some(SSRC));
        // New SSRC with an unrelated sequence space, 2 losses in it.
        let mut t = 5_000_000;
        let mut classes = vec![];
        for s in (40_000u16..40_050).filter(|s| *s != 40_010 && *s != 40_020) {
            classes.push(st.on_packet(0xabcd, s, u32::from(s) * 160, 172, t));
            t += 20_000;
        }
        assert_eq!(classes[0], PacketClass::Probation);
        assert_eq!(classes[1], PacketClass::NewSource);
        assert_eq!(st.ssrc(), Some(0xabcd));
        let c = st.counters();
        assert_eq!(c.source_changes, 1);
        assert_eq!(c.expected, 150);
        assert_eq!(c.lost, 2);
        let rb = st.take_report_block().unwrap();
        assert_eq!(rb.ssrc, 0xabcd);
        assert_eq!(rb.cumulative_lost, 2);
        assert_eq!(rb.ext_highest_seq, 40_049);
    }

    #[test]
    fn stray_ssrc_does_not_disturb() {
        let mut st = ReceiveStats::new(8000);
        feed(&mut st, &(0..10).collect::<Vec<_>>());
        assert_eq!(st.on_packet(99, 7, 0, 10, 300_000), PacketClass::Probation);
        feed(&mut st, &(10..20).collect::<Vec<_>>());
        // A different stray resets probation: the first stray is discarded.
        assert_eq!(st.on_packet(98, 1, 0, 10, 500_000), PacketClass::Probation);
        let c = st.counters();
        assert_eq!(st.ssrc(), Some(SSRC));
        assert_eq!((c.lost, c.discarded, c.source_changes), (0, 1, 0));
    }

    #[test]
    fn huge_jump_needs_confirmation() {
        let mut st = ReceiveStats::new(8000);
        feed(&mut st, &(0..10).collect::<Vec<_>>());
        assert_eq!(st.on_packet(SSRC, 30_000, 0, 1, 1), PacketClass::Discarded);
        assert_eq!(st.on_packet(SSRC, 10, 1600, 1, 2), PacketClass::InOrder);
        assert_eq!(st.on_packet(SSRC, 40_000, 0, 1, 3), PacketClass::Discarded);
        assert_eq!(
            st.on_packet(SSRC, 40_001, 160, 1, 4),
            PacketClass::Restarted
        );
        assert_eq!(st.on_packet(SSRC, 40_002, 320, 1, 5), PacketClass::InOrder);
        let c = st.counters();
        assert_eq!(c.discarded, 2);
        assert_eq!(c.lost, 0);
        assert_eq!(c.expected, 11 + 2);
    }

    /// The RFC 3550 s6.4.1 estimator, computed independently in floating point.
    fn reference_jitter_us(send_us: &[f64], arrive_us: &[f64]) -> f64 {
        let mut j = 0.0f64;
        for i in 1..send_us.len() {
            let d = (arrive_us[i] - arrive_us[i - 1]) - (send_us[i] - send_us[i - 1]);
            j += (d.abs() - j) / 16.0;
        }
        j
    }

    #[test]
    fn jitter_matches_rfc_formula() {
        let mut st = ReceiveStats::new(8000);
        // Deterministic pseudo-random network delay between 5 and 45 ms, so some
        // packets overtake others: the estimator runs in arrival order, as the
        // driver feeds it. The first two (the probation packets) are on time.
        let mut x: u32 = 12345;
        let mut packets = vec![];
        for i in 0..2000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let delay_us = if i < 2 {
                5_000
            } else {
                5_000 + (x >> 8) % 40_000
            };
            let send_us = u64::from(i) * 20_000;
            let arrival_us = 1_000_000_000 + send_us + u64::from(delay_us);
            packets.push((arrival_us, send_us, i));
        }
        packets.sort();
        let mut send = vec![];
        let mut arrive = vec![];
        for &(a, s, i) in &packets {
            send.push(s as f64);
            arrive.push(a as f64);
            // Timestamps start near the wrap to exercise it.
            let ts = 0xffff_f000u32.wrapping_add(i * 160);
            st.on_packet(SSRC, i as u16, ts, 172, a);
        }
        assert!(st.counters().reordered > 100);
        assert_eq!(st.counters().lost, 0);
        let want = reference_jitter_us(&send, &arrive);
        let got = st.jitter_us() as f64;
        assert!((got - want).abs() <= 2.0, "got {got} want {want}");
        assert!(want > 5_000.0, "the test should inject real jitter: {want}");
        // RR units: 8 ticks per ms.
        let ticks = st.jitter_rtp_units() as f64;
        assert!((ticks - want * 8.0 / 1000.0).abs() <= 1.0);
        assert!(st.jitter_p50_us() > 0);
        assert!(st.jitter_p99_us() >= st.jitter_p50_us());
        assert!(st.jitter_max_us() >= st.jitter_p99_us());
    }

    #[test]
    fn jitter_single_spike() {
        // One packet 16 ms late: D = 16000 then -16000 -> J = 1000, then
        // 1000 + (16000 - 1000)/16 = 1937.5.
        let mut st = ReceiveStats::new(8000);
        for i in 0..10u32 {
            let late = if i == 5 { 16_000 } else { 0 };
            st.on_packet(SSRC, i as u16, i * 160, 1, u64::from(i) * 20_000 + late);
            if i == 5 {
                assert_eq!(st.jitter_us(), 1000);
            }
        }
        let mut j = 1000.0f64;
        j += (16_000.0 - j) / 16.0;
        for _ in 7..10 {
            j += (0.0 - j) / 16.0;
        }
        assert!((st.jitter_us() as f64 - j).abs() <= 1.0);
    }

    #[test]
    fn clock_step_backwards_is_ignored() {
        let mut st = ReceiveStats::new(8000);
        st.on_packet(SSRC, 0, 0, 1, 10_000_000);
        st.on_packet(SSRC, 1, 160, 1, 10_020_000);
        st.on_packet(SSRC, 2, 320, 1, 5_000_000);
        st.on_packet(SSRC, 3, 480, 1, 5_020_000);
        assert_eq!(st.jitter_us(), 0);
    }

    #[test]
    fn report_block_fraction_lost() {
        let mut st = ReceiveStats::new(8000);
        // Interval 1: 100 expected, 25 lost -> fraction 64/256.
        let seqs: Vec<u16> = (0..100).filter(|s| s % 4 != 3).collect();
        feed(&mut st, &seqs);
        // 99 was lost: the highest is 98, so 99 expected; 24 lost.
        let rb = st.take_report_block().unwrap();
        assert_eq!(rb.ext_highest_seq, 98);
        assert_eq!(rb.cumulative_lost, 24);
        assert_eq!(rb.fraction_lost, (24 * 256 / 99) as u8);
        // Interval 2: clean (99 arrives late, then 100..200).
        let seqs: Vec<u16> = std::iter::once(99).chain(100..200).collect();
        feed(&mut st, &seqs);
        let rb = st.take_report_block().unwrap();
        assert_eq!(rb.fraction_lost, 0);
        assert_eq!(rb.cumulative_lost, 24);
        assert_eq!(rb.jitter, st.jitter_rtp_units());
    }

    proptest::proptest! {
        /// Drops, adjacent swaps and duplicates injected at random show up in
        /// the counters exactly, wherever the sequence space starts (wrap).
        #[test]
        fn injected_faults_are_counted_exactly(
            start in proptest::prelude::any::<u16>(),
            len in 20usize..600,
            drop_mask in proptest::collection::vec(proptest::prelude::any::<u8>(), 600),
            swap_mask in proptest::collection::vec(proptest::prelude::any::<u8>(), 600),
            dup_mask in proptest::collection::vec(proptest::prelude::any::<u8>(), 600),
        ) {
            // Keep the first three (probation) and the last (the loss span ends
            // at the highest received); drop about 5% of the rest.
            let mut dropped = 0u64;
            let mut arrival: Vec<u16> = vec![];
            for (i, &roll) in drop_mask.iter().enumerate().take(len) {
                if i >= 3 && i + 1 < len && roll < 13 {
                    dropped += 1;
                } else {
                    arrival.push(start.wrapping_add(i as u16));
                }
            }
            // Swap disjoint adjacent pairs: each makes exactly one late arrival.
            let mut swaps = 0u64;
            let mut i = 3;
            while i + 1 < arrival.len() {
                if swap_mask[i] < 20 {
                    arrival.swap(i, i + 1);
                    swaps += 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            // Duplicate a recent arrival (well inside the window) here and there.
            let mut dups = 0u64;
            let mut fed: Vec<u16> = vec![];
            for (k, &seq) in arrival.iter().enumerate() {
                fed.push(seq);
                if k >= 3 && dup_mask[k] < 10 {
                    let back = usize::from(dup_mask[k]) % 10;
                    fed.push(fed[fed.len() - 1 - back.min(fed.len() - 1)]);
                    dups += 1;
                }
            }
            let mut st = ReceiveStats::new(8000);
            for (k, &seq) in fed.iter().enumerate() {
                st.on_packet(SSRC, seq, u32::from(seq) * 160, 100, k as u64 * 20_000);
            }
            let c = st.counters();
            proptest::prop_assert_eq!(c.expected, len as u64);
            proptest::prop_assert_eq!(c.lost, dropped as i64);
            proptest::prop_assert_eq!(c.reordered, swaps);
            proptest::prop_assert_eq!(c.duplicates, dups);
            proptest::prop_assert_eq!(c.packets, fed.len() as u64);
        }
    }

    #[test]
    fn histogram_footprint() {
        // Documented as about 18 KiB per call.
        let st = ReceiveStats::new(8000);
        let bytes = st.jitter_histogram().distinct_values() * 8;
        assert!(bytes < 20 * 1024, "{bytes}");
    }

    #[test]
    fn no_report_before_validation() {
        let mut st = ReceiveStats::new(8000);
        assert!(st.take_report_block().is_none());
        st.on_packet(SSRC, 0, 0, 1, 0);
        assert!(st.take_report_block().is_none());
    }
}
