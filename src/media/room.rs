//! A room's audio: who is in it, one jitter buffer per incoming stream, and the
//! 20 ms mix-minus tick.
//!
//! Where it sits in the data flow:
//!
//! ```text
//! RtpSession (per call) --payload Bytes--> Room::push --> participant's JitterBuffer
//! every 20 ms, Room::mix:
//!     each participant: JitterBuffer::pop --> G.711 decode | concealment | silence
//!     sum of all (i32) --> for each participant: sum - own, saturated to i16
//!     --> Room::mixed() --> the engine hands each frame to its leg (RtpSession::send_frame)
//! ```
//!
//! What it owns: the participants, their jitter buffers and decoders, their last
//! good frame (for concealment) and the mixing buffers, and the tick schedule.
//! Not the legs: a participant is a [`ParticipantKind`]: a SIP caller named by
//! its call, or a WebRTC participant's published audio track (Opus, decoded at
//! 8 kHz behind [`Decoder`]). A track is mixed for the callers; it hears
//! nothing here (WebRTC subscribers get each track forwarded, as an SFU does),
//! and when no caller is in the room its packets are dropped undecoded.
//!
//! The mix is N-1 for every listener in O(N): everyone is summed once in i32
//! (exact for up to 65536 full-scale talkers), and each listener gets the sum
//! minus its own frame, saturated to i16 only then, so a listener never hears
//! itself and clipping happens once, at the output.
//!
//! Sans-IO: the engine calls [`Room::mix`] at [`Room::next_tick`].

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::g711::{Compander, FRAME_SAMPLES};
use crate::codec::opus::OpusDecoder;
use crate::rtp::jitter_buffer::PushOutcome;
use crate::rtp::{Frame, JitterBuffer, JitterBufferConfig};

use super::CallKey;

/// The mix interval: one G.711 frame.
pub const TICK: Duration = Duration::from_millis(20);
/// If the driver falls behind by more than this many ticks, the missed ticks are
/// skipped instead of sent in a burst: a burst would only overflow the far
/// end's jitter buffer.
pub const MAX_CATCH_UP_TICKS: u32 = 5;
/// Ticks per audio-level window (500 ms): who speaks is decided per window.
pub const LEVEL_WINDOW_TICKS: u32 = 25;
/// One tick in this many is measured for the level (5 frames of 20 ms per
/// window): an RMS estimate that good costs a fifth of measuring every frame.
const LEVEL_SAMPLE_EVERY: u32 = 5;
/// A participant speaks when its window's RMS is above this, in dBov
/// (livekit-server's default active level is -35 dBov).
pub const SPEAKING_DBOV: f64 = -35.0;
/// Concealment gain for the 1st, 2nd, 3rd consecutive missing frame, in 1/256:
/// repeat the last good frame, fading, then silence. Repeating more than ~60 ms
/// of the same 20 ms sounds like a buzz, worse than a gap (cf. G.711 Appendix I).
const PLC_GAIN: [i32; 3] = [192, 128, 64];

/// One participant of a room, by what it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParticipantKind {
    /// A phone caller: its audio comes and goes through the call's RTP session.
    Sip(CallKey),
    /// A WebRTC participant's audio track (LiveKit `TR_...` sid): it only
    /// speaks into the mix.
    Track(std::sync::Arc<str>),
}

/// A participant's handle within its room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u32);

/// How a participant's payloads become PCM at 8 kHz.
#[derive(Debug)]
pub enum Decoder {
    G711(Compander),
    /// Opus (RFC 7587) decoded at 8 kHz; its RTP clock is 48 kHz.
    Opus(Box<OpusDecoder>),
}

impl Decoder {
    /// An Opus decoder at 8 kHz, or `None` if libopus refused to make one.
    pub fn opus() -> Option<Decoder> {
        OpusDecoder::new().ok().map(|d| Decoder::Opus(Box::new(d)))
    }

    /// The RTP clock of the payloads this decoder takes.
    fn clock_rate(&self) -> u32 {
        match self {
            Decoder::G711(_) => 8000,
            Decoder::Opus(_) => crate::codec::opus::RTP_CLOCK_RATE,
        }
    }

    /// Decode one payload into `out` (160 samples); a short payload is padded
    /// with silence rather than leaving stale samples. An Opus packet longer
    /// than 20 ms is cut to its first 20 ms (the jitter buffer paces 20 ms
    /// frames); an undecodable one is silence.
    fn decode(&mut self, payload: &[u8], out: &mut [i16; FRAME_SAMPLES]) {
        let n = match self {
            Decoder::G711(c) => c.decode(payload, out),
            Decoder::Opus(d) => {
                let mut wide = [0i16; crate::codec::opus::MAX_PACKET_SAMPLES];
                let n = d.decode(payload, &mut wide).unwrap_or(0).min(FRAME_SAMPLES);
                out[..n].copy_from_slice(&wide[..n]);
                n
            }
        };
        out[n..].fill(0);
    }

    /// A missing frame: Opus conceals it itself (PLC); `false` asks the room
    /// to repeat the last frame, fading.
    fn conceal(&mut self, out: &mut [i16; FRAME_SAMPLES]) -> bool {
        match self {
            Decoder::G711(_) => false,
            Decoder::Opus(d) => d.conceal(out).is_ok(),
        }
    }
}

/// Per-participant mixing counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParticipantStats {
    /// Frames decoded from received audio.
    pub played: u64,
    /// Frames made up by concealment (repeat or silence for a missing frame).
    pub concealed: u64,
}

struct Participant {
    id: ParticipantId,
    kind: ParticipantKind,
    decoder: Decoder,
    jitter: JitterBuffer,
    /// What this participant says this tick.
    frame: [i16; FRAME_SAMPLES],
    /// Whether `frame` holds anything (silence is left out of the sum).
    speaking: bool,
    /// Last frame decoded from a real packet, for concealment.
    last: [i16; FRAME_SAMPLES],
    missing_run: usize,
    /// What this participant hears this tick.
    mixed: [i16; FRAME_SAMPLES],
    stats: ParticipantStats,
    /// Sum of squared samples in the current level window.
    energy: u64,
}

impl Participant {
    /// Fill `frame` for this tick from the jitter buffer. With `decode`
    /// false (nobody in the room listens to this participant) the frame is
    /// only taken off the buffer.
    fn pull(&mut self, now: Instant, decode: bool) {
        let frame = self.jitter.pop(now);
        if !decode {
            self.speaking = false;
            return;
        }
        match frame {
            Frame::Audio(payload) => {
                self.decoder.decode(&payload, &mut self.frame);
                self.last = self.frame;
                self.missing_run = 0;
                self.speaking = true;
                self.stats.played += 1;
            }
            Frame::Missing => {
                self.stats.concealed += 1;
                if self.missing_run < PLC_GAIN.len() && self.decoder.conceal(&mut self.frame) {
                    self.speaking = true;
                    self.missing_run += 1;
                    return;
                }
                match PLC_GAIN.get(self.missing_run) {
                    Some(&g) => {
                        for (o, &s) in self.frame.iter_mut().zip(&self.last) {
                            *o = ((i32::from(s) * g) >> 8) as i16;
                        }
                        self.speaking = true;
                    }
                    None => self.speaking = false,
                }
                self.missing_run = self.missing_run.saturating_add(1);
            }
            Frame::Silence | Frame::NotReady => {
                self.speaking = false;
                self.missing_run = 0;
            }
        }
    }
}

/// A room on its owner shard.
pub struct Room {
    name: String,
    participants: Vec<Participant>,
    next_id: u32,
    next_tick: Instant,
    ticks: u64,
    skipped_ticks: u64,
    sum: [i32; FRAME_SAMPLES],
    /// Ticks into the current level window.
    level_ticks: u32,
    /// Who spoke in the last window reported, and a report waiting when
    /// that changed.
    speaking: Vec<ParticipantId>,
    levels: Option<Vec<(ParticipantKind, u16)>>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("name", &self.name)
            .field("participants", &self.participants.len())
            .field("next_tick", &self.next_tick)
            .field("ticks", &self.ticks)
            .finish_non_exhaustive()
    }
}

impl Room {
    /// A room whose first mix is one tick after `now`; its ticks stay on that
    /// phase for its whole life.
    pub fn new(name: String, now: Instant) -> Room {
        Room {
            name,
            participants: Vec::with_capacity(4),
            next_id: 0,
            next_tick: now + TICK,
            ticks: 0,
            skipped_ticks: 0,
            sum: [0; FRAME_SAMPLES],
            level_ticks: 0,
            speaking: Vec::new(),
            levels: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn len(&self) -> usize {
        self.participants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    /// Mix ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Ticks skipped because the driver fell too far behind.
    pub fn skipped_ticks(&self) -> u64 {
        self.skipped_ticks
    }

    /// Add a participant with a fresh jitter buffer (allocated here, once).
    pub fn join(&mut self, kind: ParticipantKind, decoder: Decoder) -> ParticipantId {
        let id = ParticipantId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        let clock_rate = decoder.clock_rate();
        self.participants.push(Participant {
            id,
            kind,
            decoder,
            jitter: JitterBuffer::new(JitterBufferConfig {
                clock_rate,
                frame: TICK,
                ..JitterBufferConfig::default()
            }),
            frame: [0; FRAME_SAMPLES],
            speaking: false,
            last: [0; FRAME_SAMPLES],
            missing_run: 0,
            mixed: [0; FRAME_SAMPLES],
            stats: ParticipantStats::default(),
            energy: 0,
        });
        id
    }

    /// Remove a participant; its counters are returned. The room is over when
    /// [`is_empty`](Self::is_empty) afterwards.
    pub fn leave(&mut self, id: ParticipantId) -> Option<ParticipantStats> {
        let i = self.participants.iter().position(|p| p.id == id)?;
        Some(self.participants.remove(i).stats)
    }

    fn participant_mut(&mut self, id: ParticipantId) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| p.id == id)
    }

    pub fn participant_stats(&self, id: ParticipantId) -> Option<ParticipantStats> {
        self.participants
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.stats)
    }

    /// A re-INVITE changed the participant's codec.
    pub fn set_decoder(&mut self, id: ParticipantId, decoder: Decoder) {
        if let Some(p) = self.participant_mut(id) {
            p.decoder = decoder;
        }
    }

    /// One received voice packet of `id`'s stream.
    pub fn push(
        &mut self,
        id: ParticipantId,
        sequence: u16,
        timestamp: u32,
        arrival: Instant,
        payload: Bytes,
    ) -> Option<PushOutcome> {
        let p = self.participant_mut(id)?;
        Some(p.jitter.push(sequence, timestamp, arrival, payload))
    }

    /// `id`'s stream changed source: its sequence and timing start over.
    pub fn reset_stream(&mut self, id: ParticipantId) {
        if let Some(p) = self.participant_mut(id) {
            p.jitter.reset();
        }
    }

    /// When the next mix is due.
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// The time of the tick to run now, if one is due; advances the schedule.
    /// A driver more than [`MAX_CATCH_UP_TICKS`] late skips to the latest tick
    /// (keeping the phase) instead of bursting.
    pub fn due(&mut self, now: Instant) -> Option<Instant> {
        if now < self.next_tick {
            return None;
        }
        let behind = now.duration_since(self.next_tick);
        let late_ticks = (behind.as_micros() / TICK.as_micros()) as u32;
        if late_ticks > MAX_CATCH_UP_TICKS {
            self.next_tick += TICK * late_ticks;
            self.skipped_ticks += u64::from(late_ticks);
        }
        let at = self.next_tick;
        self.next_tick += TICK;
        Some(at)
    }

    /// Run one mix tick at `now`: afterwards [`mixed`](Self::mixed) yields what
    /// each participant hears.
    pub fn mix(&mut self, now: Instant) {
        self.ticks += 1;
        self.sum.fill(0);
        // Tracks are decoded only for callers to hear; a caller's own audio
        // is always decoded (it is also what its published track carries).
        let callers = self
            .participants
            .iter()
            .any(|p| matches!(p.kind, ParticipantKind::Sip(_)));
        for p in &mut self.participants {
            let decode = callers || matches!(p.kind, ParticipantKind::Sip(_));
            p.pull(now, decode);
            if p.speaking {
                for (s, &x) in self.sum.iter_mut().zip(&p.frame) {
                    *s += i32::from(x);
                }
                if self.level_ticks.is_multiple_of(LEVEL_SAMPLE_EVERY) {
                    p.energy += frame_energy(&p.frame);
                }
            }
        }
        self.level_ticks += 1;
        if self.level_ticks >= LEVEL_WINDOW_TICKS {
            self.end_level_window();
        }
        for p in &mut self.participants {
            if p.speaking {
                for ((m, &s), &own) in p.mixed.iter_mut().zip(&self.sum).zip(&p.frame) {
                    *m = saturate(s - i32::from(own));
                }
            } else {
                for (m, &s) in p.mixed.iter_mut().zip(&self.sum) {
                    *m = saturate(s);
                }
            }
        }
    }

    /// Close a level window: who spoke, how loud (linear RMS in 1/1000 of
    /// full scale; LiveKit's `SpeakerInfo.level` is that over 1000); a report
    /// is kept when the speakers changed.
    fn end_level_window(&mut self) {
        let measured = self.level_ticks.div_ceil(LEVEL_SAMPLE_EVERY);
        let samples = f64::from(measured) * FRAME_SAMPLES as f64;
        self.level_ticks = 0;
        let mut speaking = Vec::new();
        let mut levels = Vec::new();
        for p in &mut self.participants {
            let rms = (std::mem::take(&mut p.energy) as f64 / samples).sqrt() / 32768.0;
            let dbov = 20.0 * rms.max(1e-9).log10();
            if dbov > SPEAKING_DBOV {
                speaking.push(p.id);
                levels.push((p.kind.clone(), (rms.min(1.0) * 1000.0).round() as u16));
            }
        }
        if speaking != self.speaking {
            self.speaking = speaking;
            self.levels = Some(levels);
        }
    }

    /// Who speaks now and how loud, once each time that set changes (checked
    /// every [`LEVEL_WINDOW_TICKS`]). Tracks are only measured while callers
    /// are in the room (they are not decoded otherwise).
    pub fn take_levels(&mut self) -> Option<Vec<(ParticipantKind, u16)>> {
        self.levels.take()
    }

    /// What `id` said in the last [`mix`](Self::mix) (decoded or
    /// concealed), or `None` for silence.
    pub fn spoken(&self, id: ParticipantId) -> Option<&[i16; FRAME_SAMPLES]> {
        self.participants
            .iter()
            .find(|p| p.id == id)
            .and_then(|p| p.speaking.then_some(&p.frame))
    }

    /// What each participant hears, from the last [`mix`](Self::mix).
    pub fn mixed(
        &self,
    ) -> impl Iterator<Item = (ParticipantId, &ParticipantKind, &[i16; FRAME_SAMPLES])> {
        self.participants.iter().map(|p| (p.id, &p.kind, &p.mixed))
    }
}

/// Sum of squares of one frame, at full scale. Squares of the top 12 bits
/// (`x >> 4`) in `u32` (160 x 2047^2 < 2^32): vectorizes as 32-bit
/// multiplies; what is lost is below -66 dBov, far under the speaking level.
#[inline]
fn frame_energy(frame: &[i16; FRAME_SAMPLES]) -> u64 {
    let sum: u32 = frame
        .iter()
        .map(|&x| {
            let v = i32::from(x) >> 4;
            (v * v) as u32
        })
        .sum();
    u64::from(sum) << 8
}

#[inline]
fn saturate(x: i32) -> i16 {
    x.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::g711::Law;

    fn t0() -> Instant {
        Instant::now()
    }

    fn call(n: &str) -> ParticipantKind {
        ParticipantKind::Sip(CallKey(n.into()))
    }

    fn pcmu() -> Decoder {
        Decoder::G711(Compander::new(Law::Pcmu))
    }

    /// A track is only decoded while a caller is there to hear it: alone,
    /// its packets are taken off the buffer and nothing is played.
    #[test]
    fn a_track_alone_is_not_decoded() {
        let t = t0();
        let mut r = Room::new("r".into(), t);
        let track = r.join(
            ParticipantKind::Track("TR_x".into()),
            Decoder::opus().expect("libopus"),
        );
        let mut enc = crate::codec::opus::OpusEncoder::new().expect("encoder");
        let mut out = [0u8; 400];
        let len = enc
            .encode(&[1000; FRAME_SAMPLES], &mut out)
            .expect("encode");
        for k in 0..10u16 {
            let at = t + TICK * u32::from(k);
            r.push(
                track,
                k,
                u32::from(k) * 960,
                at,
                Bytes::copy_from_slice(&out[..len]),
            );
            r.mix(at + TICK);
        }
        assert_eq!(r.participant_stats(track).map(|s| s.played), Some(0));
        let caller = r.join(call("a"), pcmu());
        for k in 10..20u16 {
            let at = t + TICK * u32::from(k);
            r.push(
                track,
                k,
                u32::from(k) * 960,
                at,
                Bytes::copy_from_slice(&out[..len]),
            );
            r.mix(at + TICK);
        }
        assert!(r.participant_stats(track).is_some_and(|s| s.played > 0));
        assert!(r.spoken(track).is_some());
        assert!(r.spoken(caller).is_none(), "the caller said nothing");
    }

    /// Who speaks is decided per 500 ms window and reported when it
    /// changes: a caller at -10 dBov speaks (level its RMS), one at
    /// -50 dBov does not; the same speakers again are not reported again.
    #[test]
    fn speakers_are_reported_when_they_change() {
        let t = t0();
        let mut r = Room::new("r".into(), t);
        let law = Law::Pcmu;
        let loud = r.join(call("loud"), pcmu());
        let quiet = r.join(call("quiet"), pcmu());
        let enc = |level: f64, k: u32| {
            let mut pcm = [0i16; FRAME_SAMPLES];
            for (i, s) in pcm.iter_mut().enumerate() {
                let n = f64::from(k) * 160.0 + i as f64;
                *s = (level * (2.0 * std::f64::consts::PI * 440.0 * n / 8000.0).sin()) as i16;
            }
            let mut out = [0u8; FRAME_SAMPLES];
            law.encode(&pcm, &mut out);
            Bytes::copy_from_slice(&out)
        };
        let run = |r: &mut Room, from: u32, to: u32, loud_level: f64| {
            let mut reports = Vec::new();
            for k in from..to {
                let at = t + TICK * k;
                let seq = k as u16;
                r.push(loud, seq, k * 160, at, enc(loud_level, k));
                r.push(quiet, seq, k * 160, at, enc(100.0, k));
                r.mix(at + TICK);
                reports.extend(r.take_levels());
            }
            reports
        };
        let first = run(&mut r, 0, 50, 10_000.0);
        assert_eq!(first.len(), 1, "one change: {first:?}");
        assert_eq!(first[0].len(), 1);
        assert_eq!(first[0][0].0, call("loud"));
        // A 10000-peak sine: RMS 7071 of 32768, 216/1000 (the first window
        // starts with the jitter buffer's fill, so a little less).
        assert!((150..=230).contains(&first[0][0].1), "{:?}", first[0]);
        let silent = run(&mut r, 50, 100, 0.0);
        assert_eq!(silent, vec![Vec::new()], "nobody speaks any more");
    }

    #[test]
    fn saturates_at_both_ends() {
        assert_eq!(saturate(40_000), i16::MAX);
        assert_eq!(saturate(-40_000), i16::MIN);
        assert_eq!(saturate(-5), -5);
    }

    #[test]
    fn schedule_keeps_phase_and_skips_long_stalls() {
        let t = t0();
        let mut r = Room::new("r".into(), t);
        assert_eq!(r.due(t), None);
        assert_eq!(r.due(t + TICK), Some(t + TICK));
        assert_eq!(r.due(t + TICK), None);
        // Two ticks late: both run, in order.
        assert_eq!(r.due(t + TICK * 4), Some(t + TICK * 2));
        assert_eq!(r.due(t + TICK * 4), Some(t + TICK * 3));
        assert_eq!(r.due(t + TICK * 4), Some(t + TICK * 4));
        assert_eq!(r.due(t + TICK * 4), None);
        // A second-long stall: skip to the latest tick on the same phase.
        let late = t + TICK * 54 + Duration::from_millis(7);
        assert_eq!(r.due(late), Some(t + TICK * 54));
        assert_eq!(r.due(late), None);
        assert_eq!(r.skipped_ticks(), 49);
        assert_eq!(r.next_tick(), t + TICK * 55);
    }

    /// Feed constant frames to three participants until they play, then check
    /// the exact mix-minus.
    #[test]
    fn mix_minus_is_exact_and_saturates() {
        let t = t0();
        let mut r = Room::new("r".into(), t);
        let law = Law::Pcmu;
        let codes = [
            law.encode_sample(20_000),
            law.encode_sample(16_000),
            law.encode_sample(-300),
        ];
        let ids: Vec<_> = (0..3)
            .map(|i| r.join(call(&i.to_string()), pcmu()))
            .collect();
        for k in 0..20u16 {
            let at = t + TICK * u32::from(k);
            for (i, id) in ids.iter().enumerate() {
                let payload = Bytes::from(vec![codes[i]; FRAME_SAMPLES]);
                r.push(*id, k, u32::from(k) * 160, at, payload);
            }
            while let Some(tick) = r.due(at) {
                r.mix(tick);
            }
        }
        let v: Vec<i32> = codes
            .iter()
            .map(|&c| i32::from(law.decode_sample(c)))
            .collect();
        let heard: Vec<i16> = r.mixed().map(|(_, _, f)| f[0]).collect();
        assert_eq!(heard[0], saturate(v[1] + v[2]));
        assert_eq!(heard[1], saturate(v[0] + v[2]));
        assert_eq!(heard[2], i16::MAX, "20000 + 16000 saturates");
        assert!(r.mixed().all(|(_, _, f)| f.iter().all(|&s| s == f[0])));
    }

    #[test]
    fn missing_frame_repeats_fading_then_silence() {
        let t = t0();
        let mut r = Room::new("r".into(), t);
        let a = r.join(call("a"), pcmu());
        let b = r.join(call("b"), pcmu());
        let code = Law::Pcmu.encode_sample(8000);
        let level = i32::from(Law::Pcmu.decode_sample(code));
        let mut heard_by_b = Vec::new();
        // a sends 10 frames, then stops (as if lost); b is silent.
        for k in 0..30u16 {
            let at = t + TICK * u32::from(k);
            if k < 10 {
                r.push(
                    a,
                    k,
                    u32::from(k) * 160,
                    at,
                    Bytes::from(vec![code; FRAME_SAMPLES]),
                );
            }
            while let Some(tick) = r.due(at) {
                r.mix(tick);
                let f = r.mixed().find(|(id, _, _)| *id == b).map(|(_, _, f)| f[0]);
                heard_by_b.push(f.unwrap_or_default());
            }
        }
        let first_gap = heard_by_b
            .iter()
            .rposition(|&s| i32::from(s) == level)
            .expect("a's audio was played")
            + 1;
        assert_eq!(
            &heard_by_b[first_gap..first_gap + 4],
            &[
                ((level * 192) >> 8) as i16,
                ((level * 128) >> 8) as i16,
                ((level * 64) >> 8) as i16,
                0
            ]
        );
        assert!(heard_by_b[first_gap + 3..].iter().all(|&s| s == 0));
        assert!(r.participant_stats(a).unwrap().concealed >= 3);
    }

    #[test]
    fn lone_participant_hears_silence_and_room_empties() {
        let t = t0();
        let mut r = Room::new("r".into(), t);
        let a = r.join(call("a"), pcmu());
        r.push(a, 1, 160, t, Bytes::from(vec![0x10; FRAME_SAMPLES]));
        for k in 1..10u32 {
            while let Some(tick) = r.due(t + TICK * k) {
                r.mix(tick);
                assert!(r.mixed().all(|(_, _, f)| f.iter().all(|&s| s == 0)));
            }
        }
        assert_eq!(r.ticks(), 9);
        assert!(r.leave(a).is_some());
        assert!(r.leave(a).is_none());
        assert!(r.is_empty());
    }
}
