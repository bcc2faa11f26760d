//! Adaptive jitter buffer for one incoming audio stream.
//!
//! Where it sits: between the network and the mixer. The leg driver pushes each
//! accepted RTP packet ([`JitterBuffer::push`]) as it arrives; the mixer pulls one
//! frame per 20 ms tick ([`JitterBuffer::pop`]) and decodes it, or runs packet-loss
//! concealment on [`Frame::Missing`].
//!
//! What it owns: a fixed ring of `capacity` slots indexed by extended sequence
//! number (payloads are `Bytes` clones of the received datagram: no copy, no
//! allocation per packet), the playout position, and the delay estimate that sets
//! the target buffering delay. Deterministic: time comes only from the `Instant`s
//! passed in.
//!
//! How the delay adapts. For each packet, transit = arrival - (RTP time in µs);
//! the *relative delay* of a packet is its transit minus the smallest transit
//! seen (a minimum that leaks upward by a few µs per packet so sender/receiver
//! clock drift cannot inflate it forever). A peak of relative delays jumps up at
//! once on a delayed (or late) packet and decays by 1/512 per pop (a 10 s time
//! constant), and the target is that peak plus half a frame, clamped to
//! `[min_delay, max_delay]`: grow fast, shrink slowly. The buffer follows the
//! target without DSP time-stretching:
//! - it grows by *waiting*: when the next frame is absent and fewer than target's
//!   worth of frames are queued, `pop` returns `Missing` without advancing (the
//!   frame may be late rather than lost); on an empty buffer likewise;
//! - it shrinks by *dropping*: when more than two frames beyond target are
//!   queued, one frame is dropped, at most every [`SHRINK_EVERY_POPS`] pops.
//!
//! One pop is one packet: the stream's packetization time must equal the pop
//! interval ([`JitterBufferConfig::frame`], 20 ms for G.711 from trunks).

use std::time::{Duration, Instant};

use bytes::Bytes;

/// At most one frame is dropped to shrink the buffer per this many pops (200 ms).
pub const SHRINK_EVERY_POPS: u32 = 10;
/// The peak delay decays by 1/2^this per pop.
const PEAK_DECAY_SHIFT: u32 = 9;
/// A sequence jump larger than this (either way) needs a second packet to confirm it.
const MAX_SEQ_JUMP: i64 = 200;
/// A transit change larger than this is a timestamp jump, not network delay: the
/// delay baseline is reset instead of the target exploding.
const TS_JUMP_US: i64 = 5_000_000;
/// Extended sequence numbers start here so a packet just before the first one
/// (reordered at the start) is still representable.
const EXT_SEQ_ORIGIN: i64 = 1 << 32;

/// What the mixer gets for one tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The payload of the next packet, to decode.
    Audio(Bytes),
    /// The stream is live but this frame did not arrive (yet): conceal it.
    Missing,
    /// The stream went quiet (no packets for several ticks: DTX, hold, end).
    Silence,
    /// Nothing to play yet: no packet, or still filling to the target delay.
    NotReady,
}

/// What `push` did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Buffered,
    /// Its slot was already played or skipped: dropped.
    Late,
    /// Already buffered: dropped.
    Duplicate,
    /// A huge sequence jump, not confirmed yet: dropped.
    Discarded,
    /// A confirmed huge jump: the buffer was flushed and restarted with it.
    Resynced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JitterBufferConfig {
    /// RTP clock of the stream (8000 for G.711).
    pub clock_rate: u32,
    /// Pop interval and packetization time.
    pub frame: Duration,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Slots in the ring; bounds memory and the deepest possible buffer.
    pub capacity: usize,
    /// Consecutive empty pops answered with `Missing` before the stream counts
    /// as stopped and pops answer `Silence`.
    pub max_underrun_frames: u32,
}

impl Default for JitterBufferConfig {
    fn default() -> Self {
        JitterBufferConfig {
            clock_rate: 8000,
            frame: Duration::from_millis(20),
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            capacity: 64,
            max_underrun_frames: 5,
        }
    }
}

/// Counters, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitterBufferStats {
    pub pushed: u64,
    pub played: u64,
    /// Pops answered with `Missing`.
    pub missing: u64,
    pub late: u64,
    pub duplicates: u64,
    pub discarded: u64,
    /// Oldest frames dropped because the ring was full.
    pub overflow_dropped: u64,
    /// Frames dropped to bring the delay down to target.
    pub shrink_dropped: u64,
    pub resyncs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Never received anything, or reset.
    Empty,
    /// Holding packets until the target delay is reached.
    Buffering,
    Playing,
    /// Was playing, the stream stopped.
    Paused,
}

#[derive(Clone, Debug)]
struct Slot {
    ext_seq: i64,
    /// Extended RTP timestamp in µs.
    ts_us: i64,
    payload: Bytes,
}

/// The adaptive jitter buffer of one incoming stream.
#[derive(Debug)]
pub struct JitterBuffer {
    cfg: JitterBufferConfig,
    frame_us: i64,
    min_us: i64,
    max_us: i64,
    slots: Box<[Option<Slot>]>,
    state: State,
    epoch: Option<Instant>,
    /// Highest extended sequence pushed since the last (re)start.
    highest: i64,
    /// Next extended sequence to play (while buffering: the lowest buffered).
    next: i64,
    /// Last timestamp seen, its extended value and its packet's extended
    /// sequence, to unwrap timestamps.
    ts_ref: (u32, i64, i64),
    /// The sequence that would confirm a huge jump.
    bad_seq: Option<u16>,
    min_transit: Option<i64>,
    transit_leak_us: i64,
    peak_us: i64,
    target_us: i64,
    underrun_run: u32,
    pops_since_shrink: u32,
    stats: JitterBufferStats,
}

impl JitterBuffer {
    /// Allocates the ring once; nothing allocates afterwards.
    pub fn new(cfg: JitterBufferConfig) -> JitterBuffer {
        let frame_us = (cfg.frame.as_micros() as i64).max(1);
        let min_us = cfg.min_delay.as_micros() as i64;
        let max_us = (cfg.max_delay.as_micros() as i64).max(min_us);
        let capacity = cfg.capacity.max(2);
        JitterBuffer {
            cfg: JitterBufferConfig { capacity, ..cfg },
            frame_us,
            min_us,
            max_us,
            slots: vec![None; capacity].into_boxed_slice(),
            state: State::Empty,
            epoch: None,
            highest: 0,
            next: 0,
            ts_ref: (0, 0, 0),
            bad_seq: None,
            min_transit: None,
            // 5 µs per 20 ms packet: follows up to 250 ppm of clock drift.
            transit_leak_us: (frame_us / 4000).max(1),
            peak_us: 0,
            target_us: min_us,
            underrun_run: 0,
            pops_since_shrink: 0,
            stats: JitterBufferStats::default(),
        }
    }

    pub fn config(&self) -> &JitterBufferConfig {
        &self.cfg
    }

    pub fn stats(&self) -> JitterBufferStats {
        self.stats
    }

    /// The delay the buffer is aiming for.
    pub fn target_delay(&self) -> Duration {
        Duration::from_micros(self.target_us as u64)
    }

    /// Frames from the next to play up to the newest buffered, gaps included.
    pub fn depth(&self) -> usize {
        match self.state {
            State::Empty => 0,
            _ => (self.highest - self.next + 1).max(0) as usize,
        }
    }

    /// Forget the stream's sequence and timing (call on an SSRC change). The
    /// learnt target delay is kept: the network path is the same.
    pub fn reset(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.state = State::Empty;
        self.bad_seq = None;
        self.min_transit = None;
        self.underrun_run = 0;
    }

    fn idx(&self, ext: i64) -> usize {
        (ext.rem_euclid(self.slots.len() as i64)) as usize
    }

    fn us_since_epoch(&self, t: Instant) -> i64 {
        match self.epoch {
            Some(e) => t.saturating_duration_since(e).as_micros() as i64,
            None => 0,
        }
    }

    /// RTP ticks per frame.
    fn frame_ticks(&self) -> i64 {
        self.frame_us * i64::from(self.cfg.clock_rate) / 1_000_000
    }

    fn ts_to_us(&self, ext_ts: i64) -> i64 {
        ext_ts * 1_000_000 / i64::from(self.cfg.clock_rate.max(1))
    }

    fn update_target(&mut self) {
        self.target_us = (self.peak_us + self.frame_us / 2).clamp(self.min_us, self.max_us);
    }

    /// Learn from one packet's transit time.
    fn observe_delay(&mut self, transit: i64) {
        let min = match self.min_transit {
            Some(m) if transit - m > TS_JUMP_US => {
                // The sender's timeline jumped backwards (or it paused its clock):
                // not delay. Start the baseline over.
                self.min_transit = Some(transit);
                return;
            }
            Some(m) => transit.min(m + self.transit_leak_us),
            None => transit,
        };
        self.min_transit = Some(min);
        self.peak_us = self.peak_us.max(transit - min);
        self.update_target();
    }

    /// Take one packet of the stream (already validated by `ReceiveStats`).
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        arrival: Instant,
        payload: Bytes,
    ) -> PushOutcome {
        self.stats.pushed += 1;
        self.epoch.get_or_insert(arrival);
        let arrival_us = self.us_since_epoch(arrival);
        if self.state == State::Empty {
            self.start(seq, timestamp, arrival_us, payload);
            return PushOutcome::Buffered;
        }
        let ext = self.highest + i64::from(seq.wrapping_sub(self.highest as u16) as i16);
        if (ext - self.highest).abs() > MAX_SEQ_JUMP {
            if self.bad_seq == Some(seq) {
                self.stats.resyncs += 1;
                self.reset();
                self.start(seq, timestamp, arrival_us, payload);
                return PushOutcome::Resynced;
            }
            self.bad_seq = Some(seq.wrapping_add(1));
            self.stats.discarded += 1;
            return PushOutcome::Discarded;
        }
        self.bad_seq = None;
        let (ref_ts, ref_ext_ts, ref_ext_seq) = self.ts_ref;
        let dts = i64::from(timestamp.wrapping_sub(ref_ts) as i32);
        let ext_ts = if dts.abs() * 1_000_000 > TS_JUMP_US * i64::from(self.cfg.clock_rate) {
            // The sender's timeline jumped (restart, or a hostile peer). Keep our
            // extended timeline continuous, at nominal spacing, so it cannot run
            // away, and restart the delay baseline: this is not network delay.
            self.min_transit = None;
            ref_ext_ts + (ext - ref_ext_seq) * self.frame_ticks()
        } else {
            ref_ext_ts + dts
        };
        self.ts_ref = (timestamp, ext_ts, ext);
        let ts_us = self.ts_to_us(ext_ts);
        self.observe_delay(arrival_us - ts_us);

        let cap = self.slots.len() as i64;
        if ext < self.next {
            // While buffering, an earlier packet simply becomes the first to play.
            if self.state != State::Buffering || self.highest - ext + 1 > cap {
                self.stats.late += 1;
                return PushOutcome::Late;
            }
            self.next = ext;
        }
        let i = self.idx(ext);
        if matches!(&self.slots[i], Some(s) if s.ext_seq == ext) {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        if self.state == State::Paused {
            // The stream is back (after DTX or hold): fill up to target again,
            // starting with this packet; the pause was silence, not loss.
            self.state = State::Buffering;
            self.next = self.next.max(ext);
        }
        if ext > self.highest {
            self.highest = ext;
            // Bounded: drop the oldest frames that no longer fit the ring.
            while self.highest - self.next + 1 > cap {
                let j = self.idx(self.next);
                if matches!(&self.slots[j], Some(s) if s.ext_seq == self.next) {
                    self.stats.overflow_dropped += 1;
                }
                self.slots[j] = None;
                self.next += 1;
            }
        }
        self.slots[i] = Some(Slot {
            ext_seq: ext,
            ts_us,
            payload,
        });
        PushOutcome::Buffered
    }

    fn start(&mut self, seq: u16, timestamp: u32, arrival_us: i64, payload: Bytes) {
        let ext = EXT_SEQ_ORIGIN + i64::from(seq);
        self.highest = ext;
        self.next = ext;
        self.ts_ref = (timestamp, i64::from(timestamp), ext);
        let ts_us = self.ts_to_us(i64::from(timestamp));
        self.min_transit = None;
        self.observe_delay(arrival_us - ts_us);
        self.state = State::Buffering;
        self.underrun_run = 0;
        let i = self.idx(ext);
        self.slots[i] = Some(Slot {
            ext_seq: ext,
            ts_us,
            payload,
        });
    }

    /// Take the frame at `next` out of the ring, if it is there.
    fn take(&mut self, ext: i64) -> Option<Bytes> {
        let i = self.idx(ext);
        match self.slots[i].take() {
            Some(s) if s.ext_seq == ext => Some(s.payload),
            other => {
                self.slots[i] = other;
                None
            }
        }
    }

    fn has(&self, ext: i64) -> bool {
        matches!(&self.slots[self.idx(ext)], Some(s) if s.ext_seq == ext)
    }

    /// The frame for this tick. Call once per frame interval.
    pub fn pop(&mut self, now: Instant) -> Frame {
        self.peak_us -= self.peak_us >> PEAK_DECAY_SHIFT;
        self.update_target();
        self.pops_since_shrink = self.pops_since_shrink.saturating_add(1);
        match self.state {
            State::Empty => Frame::NotReady,
            State::Paused => Frame::Silence,
            State::Buffering => {
                // Start once the first frame has waited `target` beyond the time
                // the fastest packet would have brought it.
                // The ring may have dropped the oldest frames while filling:
                // start from the lowest one still there.
                while self.next < self.highest && !self.has(self.next) {
                    self.next += 1;
                }
                let first_ts_us = match &self.slots[self.idx(self.next)] {
                    Some(s) if s.ext_seq == self.next => s.ts_us,
                    _ => return Frame::NotReady,
                };
                let start_at = first_ts_us + self.min_transit.unwrap_or(0) + self.target_us;
                if self.us_since_epoch(now) < start_at {
                    return Frame::NotReady;
                }
                self.state = State::Playing;
                self.pops_since_shrink = 0;
                self.play()
            }
            State::Playing => self.play(),
        }
    }

    fn play(&mut self) -> Frame {
        let depth = self.highest - self.next + 1;
        if depth <= 0 {
            // Underrun: wait for the late packet rather than skip it.
            self.underrun_run += 1;
            if self.underrun_run > self.cfg.max_underrun_frames {
                self.state = State::Paused;
                return Frame::Silence;
            }
            self.stats.missing += 1;
            return Frame::Missing;
        }
        self.underrun_run = 0;
        if !self.has(self.next) {
            if depth * self.frame_us <= self.target_us {
                // A gap with little queued behind it: the packet may be late,
                // not lost. Waiting grows the buffer toward the target.
                self.stats.missing += 1;
                return Frame::Missing;
            }
            self.next += 1;
            self.stats.missing += 1;
            return Frame::Missing;
        }
        if depth * self.frame_us > self.target_us + 2 * self.frame_us
            && self.pops_since_shrink >= SHRINK_EVERY_POPS
            && self.has(self.next + 1)
        {
            self.take(self.next);
            self.next += 1;
            self.stats.shrink_dropped += 1;
            self.pops_since_shrink = 0;
        }
        match self.take(self.next) {
            Some(p) => {
                self.next += 1;
                self.stats.played += 1;
                Frame::Audio(p)
            }
            None => {
                self.next += 1;
                self.stats.missing += 1;
                Frame::Missing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    fn payload(seq: u16) -> Bytes {
        Bytes::copy_from_slice(&seq.to_be_bytes())
    }

    fn seq_of(f: &Frame) -> Option<u16> {
        match f {
            Frame::Audio(b) => Some(u16::from_be_bytes([b[0], b[1]])),
            _ => None,
        }
    }

    /// A sender emitting one packet every 20 ms from `first_seq`, with per-packet
    /// extra delays (ms); the mixer pops every 20 ms, offset by 10 ms from the
    /// sender so arrivals and pops never tie. Packets with delay `None` are lost.
    /// Returns the frames popped.
    fn run(
        jb: &mut JitterBuffer,
        first_seq: u16,
        delays_ms: &[Option<u64>],
        pops: usize,
    ) -> Vec<Frame> {
        let t0 = Instant::now();
        let mut arrivals: Vec<(Duration, u16, u32)> = delays_ms
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let d = (*d)?;
                let seq = first_seq.wrapping_add(i as u16);
                let ts = (i as u32).wrapping_mul(160).wrapping_add(0xffff_ff00);
                Some((FRAME * i as u32 + Duration::from_millis(d), seq, ts))
            })
            .collect();
        arrivals.sort_by_key(|a| a.0);
        let mut out = vec![];
        let mut next = 0;
        for p in 0..pops {
            let pop_at = FRAME * p as u32 + Duration::from_millis(10);
            while next < arrivals.len() && arrivals[next].0 <= pop_at {
                let (at, seq, ts) = arrivals[next];
                jb.push(seq, ts, t0 + at, payload(seq));
                next += 1;
            }
            out.push(jb.pop(t0 + pop_at));
        }
        out
    }

    fn audio_seqs(frames: &[Frame]) -> Vec<u16> {
        frames.iter().filter_map(seq_of).collect()
    }

    #[test]
    fn in_order_stream() {
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        assert_eq!(jb.pop(Instant::now()), Frame::NotReady);
        let delays = vec![Some(5); 100];
        let frames = run(&mut jb, 1000, &delays, 105);
        assert_eq!(audio_seqs(&frames), (1000..1100).collect::<Vec<_>>());
        // Filling first, then every frame in order, then the stream stops.
        assert!(matches!(frames[0], Frame::NotReady));
        let first_audio = frames.iter().position(|f| seq_of(f).is_some()).unwrap();
        assert!(first_audio <= 2);
        let s = jb.stats();
        assert_eq!(
            (s.played, s.late, s.duplicates, s.shrink_dropped),
            (100, 0, 0, 0)
        );
        assert_eq!(jb.target_delay(), Duration::from_millis(20));
    }

    #[test]
    fn slot_is_small() {
        // The ring is the only allocation: `capacity` slots of this size.
        assert!(std::mem::size_of::<Option<Slot>>() <= 48);
    }

    #[test]
    fn stream_end_goes_silent() {
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        let frames = run(&mut jb, 0, &vec![Some(5); 20], 40);
        let tail = &frames[frames.len() - 10..];
        assert!(tail.iter().all(|f| *f == Frame::Silence), "{tail:?}");
        // Exactly max_underrun_frames Missing before going silent.
        assert_eq!(jb.stats().missing, 5);
    }

    #[test]
    fn reordered_packets_play_in_order() {
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        let mut delays = vec![Some(5); 100];
        // 30 arrives after 31, 60 after 61.
        delays[30] = Some(27);
        delays[60] = Some(30);
        let frames = run(&mut jb, 500, &delays, 110);
        assert_eq!(audio_seqs(&frames), (500..600).collect::<Vec<_>>());
        assert_eq!(jb.stats().late, 0);
    }

    #[test]
    fn lost_packets_are_missing() {
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        let mut delays = vec![Some(5); 100];
        delays[40] = None;
        delays[70] = None;
        let frames = run(&mut jb, 0, &delays, 102);
        let seqs = audio_seqs(&frames);
        let want: Vec<u16> = (0..100).filter(|s| *s != 40 && *s != 70).collect();
        assert_eq!(seqs, want);
        // Each loss is concealed where it happened.
        let i39 = frames.iter().position(|f| seq_of(f) == Some(39)).unwrap();
        assert_eq!(frames[i39 + 1], Frame::Missing);
        assert_eq!(seq_of(&frames[i39 + 2]), Some(41));
        assert_eq!(jb.stats().late, 0);
    }

    #[test]
    fn late_packet_is_dropped_and_grows_target() {
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        let mut delays = vec![Some(5); 100];
        delays[50] = Some(125); // 120 ms later than the rest: past its slot.
        let frames = run(&mut jb, 0, &delays, 104);
        // 50 is waited for one tick (the gap has only one frame behind it),
        // then concealed; when it finally arrives it is dropped and counted, and
        // its delay lifts the target at once.
        let s = jb.stats();
        assert_eq!(s.late, 1);
        let want: Vec<u16> = (0..100).filter(|&s| s != 50).collect();
        assert_eq!(audio_seqs(&frames), want);
        assert!(
            jb.target_delay() >= Duration::from_millis(100),
            "{:?}",
            jb.target_delay()
        );
    }

    #[test]
    fn late_packet_after_play_position_is_counted() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        let ms = |n: u64| t0 + Duration::from_millis(n);
        for s in 0..5u16 {
            jb.push(s, u32::from(s) * 160, ms(u64::from(s) * 20), payload(s));
        }
        jb.pop(ms(90));
        jb.pop(ms(110));
        assert_eq!(jb.push(0, 0, ms(115), payload(0)), PushOutcome::Late);
        assert_eq!(jb.push(4, 640, ms(115), payload(4)), PushOutcome::Duplicate);
        assert_eq!(jb.stats().late, 1);
        assert_eq!(jb.stats().duplicates, 1);
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        let t0 = Instant::now();
        let mut frames = vec![];
        for i in 0..50u16 {
            let at = t0 + FRAME * u32::from(i);
            jb.push(i, u32::from(i) * 160, at, payload(i));
            jb.push(i, u32::from(i) * 160, at, payload(i));
            frames.push(jb.pop(at + Duration::from_millis(10)));
        }
        assert_eq!(jb.stats().duplicates, 50);
        assert_eq!(
            audio_seqs(&frames),
            (0..audio_seqs(&frames).len() as u16).collect::<Vec<_>>()
        );
    }

    #[test]
    fn sequence_and_timestamp_wrap() {
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        // run() starts timestamps just below 2^32 too.
        let frames = run(&mut jb, 65_500, &vec![Some(3); 100], 103);
        let want: Vec<u16> = (0..100u32).map(|i| (65_500 + i) as u16).collect();
        assert_eq!(audio_seqs(&frames), want);
        assert_eq!(jb.stats().resyncs, 0);
        assert_eq!(jb.target_delay(), Duration::from_millis(20));
    }

    #[test]
    fn target_adapts_up_fast_and_down_slowly() {
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        // 3 s of clean stream, 2 s of heavy jitter (0-80 ms), then 25 s clean.
        let mut delays = vec![Some(5u64); 150];
        let mut x = 7u32;
        for _ in 0..100 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            delays.push(Some(u64::from((x >> 8) % 80)));
        }
        delays.extend(std::iter::repeat_n(Some(5), 1250));
        let t0 = Instant::now();
        let mut arrivals: Vec<(Duration, u16)> = delays
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    FRAME * i as u32 + Duration::from_millis(d.unwrap()),
                    i as u16,
                )
            })
            .collect();
        arrivals.sort_by_key(|a| a.0);
        let mut next = 0;
        let mut target_at = vec![];
        for p in 0..1500usize {
            let pop_at = FRAME * p as u32 + Duration::from_millis(10);
            while next < arrivals.len() && arrivals[next].0 <= pop_at {
                let (at, seq) = arrivals[next];
                jb.push(seq, u32::from(seq) * 160, t0 + at, payload(seq));
                next += 1;
            }
            jb.pop(t0 + pop_at);
            target_at.push(jb.target_delay());
        }
        let ms = Duration::from_millis;
        assert_eq!(target_at[149], ms(20));
        // Within the jittery second the target has grown to cover it.
        assert!(target_at[200] >= ms(60), "{:?}", target_at[200]);
        // One second after the jitter stops it is still high (slow shrink)...
        assert!(target_at[300] >= ms(50), "{:?}", target_at[300]);
        // ...halfway back after ~10 s, and at the minimum after ~25 s.
        assert!(target_at[750] < ms(50), "{:?}", target_at[750]);
        assert_eq!(target_at[1499], ms(20));
        // The buffer itself came back down by dropping frames.
        assert!(jb.stats().shrink_dropped > 0);
        assert!(jb.depth() <= 3, "depth {}", jb.depth());
    }

    #[test]
    fn ssrc_change_resync_and_seq_jump() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        let ms = |n: u64| t0 + Duration::from_millis(n);
        for s in 0..10u16 {
            jb.push(s, u32::from(s) * 160, ms(u64::from(s) * 20), payload(s));
        }
        // A stray far-away sequence number is discarded...
        assert_eq!(
            jb.push(30_000, 0, ms(200), payload(1)),
            PushOutcome::Discarded
        );
        assert_eq!(
            jb.push(10, 1600, ms(200), payload(10)),
            PushOutcome::Buffered
        );
        // ...a confirmed one restarts the buffer.
        assert_eq!(
            jb.push(40_000, 9, ms(220), payload(2)),
            PushOutcome::Discarded
        );
        assert_eq!(
            jb.push(40_001, 169, ms(240), payload(3)),
            PushOutcome::Resynced
        );
        assert_eq!(jb.depth(), 1);
        assert_eq!(jb.stats().resyncs, 1);
        // Explicit reset on SSRC change: new sequence space, new timeline.
        jb.reset();
        assert_eq!(jb.pop(ms(250)), Frame::NotReady);
        assert_eq!(
            jb.push(7, 123_456, ms(260), payload(7)),
            PushOutcome::Buffered
        );
        assert_eq!(jb.pop(ms(300)), Frame::Audio(payload(7)));
    }

    #[test]
    fn timestamp_jump_does_not_explode_target() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        for i in 0..20u32 {
            let at = t0 + FRAME * i;
            // Timestamp jumps back by 10 s at packet 10 (sender restarted its clock).
            let ts = if i < 10 { 800_000 + i * 160 } else { i * 160 };
            jb.push(i as u16, ts, at, payload(i as u16));
            jb.pop(at + Duration::from_millis(10));
        }
        assert_eq!(jb.target_delay(), Duration::from_millis(20));
    }

    #[test]
    fn bounded_capacity_drops_oldest() {
        let t0 = Instant::now();
        let cfg = JitterBufferConfig {
            capacity: 8,
            ..Default::default()
        };
        let mut jb = JitterBuffer::new(cfg);
        // A burst of 20 packets at once, nothing popped.
        for s in 0..20u16 {
            jb.push(s, u32::from(s) * 160, t0, payload(s));
        }
        assert_eq!(jb.depth(), 8);
        assert_eq!(jb.stats().overflow_dropped, 12);
        let f = jb.pop(t0 + Duration::from_secs(1));
        assert_eq!(seq_of(&f), Some(12));
    }

    proptest::proptest! {
        /// Hostile input (any sequence numbers, timestamps, arrival gaps): no
        /// panic, the ring stays bounded, every push is accounted for.
        #[test]
        fn never_panics_and_stays_bounded(
            ops in proptest::collection::vec(
                (proptest::prelude::any::<u16>(), proptest::prelude::any::<u32>(), 0u64..100, 0u8..4),
                0..300,
            ),
        ) {
            let t0 = Instant::now();
            let cfg = JitterBufferConfig { capacity: 16, ..Default::default() };
            let mut jb = JitterBuffer::new(cfg);
            let mut now = t0;
            let mut base = 0u16;
            for (seq, ts, gap_ms, kind) in ops {
                now += Duration::from_millis(gap_ms);
                match kind {
                    0 => { jb.pop(now); }
                    // Mostly near the current sequence, sometimes anywhere.
                    1 | 2 => {
                        base = base.wrapping_add(seq % 5);
                        let t = if kind == 1 { u32::from(base) * 160 } else { ts };
                        jb.push(base.wrapping_sub(seq % 3), t, now, Bytes::new());
                    }
                    _ => { jb.push(seq, ts, now, Bytes::new()); }
                }
                proptest::prop_assert!(jb.depth() <= 16);
                let t = jb.target_delay();
                proptest::prop_assert!(t >= Duration::from_millis(20) && t <= Duration::from_millis(200));
            }
            let s = jb.stats();
            proptest::prop_assert!(s.played + s.late + s.duplicates + s.discarded + s.overflow_dropped + s.shrink_dropped <= s.pushed);
        }
    }

    #[test]
    fn pause_and_resume_after_dtx() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterBufferConfig::default());
        let mut frames = vec![];
        // Talk 1 s, silence (no packets, timestamps run on) 1 s, talk 1 s.
        for p in 0..165u32 {
            let at = t0 + FRAME * p;
            if !(50..100).contains(&p) && p < 160 {
                let seq = if p < 50 { p } else { p - 50 } as u16;
                jb.push(seq, p * 160, at, payload(seq));
            }
            frames.push(jb.pop(at + Duration::from_millis(10)));
        }
        assert!(frames[60..95].iter().all(|f| *f == Frame::Silence));
        assert_eq!(audio_seqs(&frames), (0..110).collect::<Vec<_>>());
        assert_eq!(jb.stats().late, 0);
    }
}
