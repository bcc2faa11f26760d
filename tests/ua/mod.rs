//! A small SIP user agent with real RTP for end-to-end media tests.
//!
//! It is deliberately independent of the code under test: its own SIP text, its
//! own G.711 mu-law (the textbook formula), its own tone detector. It speaks plain
//! UDP to a running `switchboard` on 127.0.0.1, paces RTP at 20 ms with absolute
//! deadlines, and records what it receives.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// mu-law encode (ITU-T G.711, the classic bias-and-segment formula).
pub fn ulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s;
    }
    s = s.min(CLIP) + BIAS;
    let mut exp = 7;
    let mut mask = 0x4000;
    while exp > 0 && s & mask == 0 {
        exp -= 1;
        mask >>= 1;
    }
    let mant = (s >> (exp + 3)) & 0x0F;
    !(sign | (exp << 4) | mant) as u8
}

pub fn ulaw_decode(code: u8) -> i16 {
    let c = !code;
    let sign = c & 0x80;
    let exp = (c >> 4) & 0x07;
    let mant = c & 0x0F;
    let mag = (((i32::from(mant) << 3) + 0x84) << exp) - 0x84;
    (if sign != 0 { -mag } else { mag }) as i16
}

/// Goertzel power of `freq` in `samples` (8 kHz), normalised by length.
pub fn tone_power(samples: &[i16], freq: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * freq / 8000.0).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - k * s1 * s2) / (samples.len().max(1) as f64).powi(2)
}

/// Total power of a signal, same normalisation as `tone_power` for a pure tone.
pub fn total_power(samples: &[i16]) -> f64 {
    let e: f64 = samples.iter().map(|x| f64::from(*x).powi(2)).sum();
    e / samples.len().max(1) as f64 / 4.0
}

#[derive(Debug, Clone)]
pub struct Received {
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
    pub marker: bool,
    pub payload: Vec<u8>,
    pub from: SocketAddr,
    pub at: Instant,
}

pub struct Ua {
    pub sip: UdpSocket,
    pub rtp: UdpSocket,
    pub server: SocketAddr,
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: String,
    pub remote_rtp: Option<SocketAddr>,
    pub cseq: u32,
    pub from_number: String,
    pub to_number: String,
    /// Every SIP message received, in order.
    pub sip_log: Vec<String>,
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

pub fn status_of(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

impl Ua {
    pub fn new(server: SocketAddr, from_number: &str, to_number: &str, tag: &str) -> Ua {
        let sip = UdpSocket::bind("127.0.0.1:0").expect("bind sip");
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind rtp");
        sip.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Ua {
            sip,
            rtp,
            server,
            call_id: format!("ua-{tag}-{}", std::process::id()),
            from_tag: format!("ft-{tag}"),
            to_tag: String::new(),
            remote_rtp: None,
            cseq: 1,
            from_number: from_number.into(),
            to_number: to_number.into(),
            sip_log: vec![],
        }
    }

    fn local(&self) -> SocketAddr {
        self.sip.local_addr().unwrap()
    }

    fn send(&self, text: &str) {
        self.sip
            .send_to(text.as_bytes(), self.server)
            .expect("send sip");
    }

    fn recv(&mut self, deadline: Instant) -> Option<String> {
        let mut buf = [0u8; 65535];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sip.recv_from(&mut buf) {
                let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.sip_log.push(s.clone());
                return Some(s);
            }
        }
        None
    }

    fn offer(&self) -> String {
        let port = self.rtp.local_addr().unwrap().port();
        format!("v=0\r\no=ua 1 1 IN IP4 127.0.0.1\r\ns=ua\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")
    }

    fn invite_text(&self, branch: &str) -> String {
        let sdp = self.offer();
        let l = self.local();
        format!(
            "INVITE sip:{to}@{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch={branch};rport\r\nFrom: <sip:{from}@{l}>;tag={ft}\r\nTo: <sip:{to}@{srv}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:ua@{l}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            to = self.to_number,
            srv = self.server,
            from = self.from_number,
            ft = self.from_tag,
            cid = self.call_id,
            len = sdp.len()
        )
    }

    /// INVITE until a final response; ACK a 200. Returns the final status.
    pub fn call(&mut self) -> u16 {
        let branch = format!("z9hG4bK-{}-1", self.call_id);
        let invite = self.invite_text(&branch);
        self.send(&invite);
        let start = Instant::now();
        let mut last_send = start;
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(m) = self.recv(Instant::now() + Duration::from_millis(200)) {
                let Some(st) = status_of(&m) else { continue };
                if st < 200 {
                    continue;
                }
                if let Some(to) = header(&m, "To") {
                    if let Some(t) = to.split(";tag=").nth(1) {
                        self.to_tag = t.split(';').next().unwrap_or("").to_string();
                    }
                }
                if st == 200 {
                    self.remote_rtp = parse_sdp_addr(&m);
                }
                self.ack(&branch, st);
                return st;
            } else if last_send.elapsed() > Duration::from_millis(500) {
                self.send(&invite);
                last_send = Instant::now();
            }
        }
        0
    }

    fn ack(&self, invite_branch: &str, status: u16) {
        let l = self.local();
        // s17.1.1.3: ACK for non-2xx reuses the INVITE branch; for 2xx a new one.
        let branch = if status == 200 {
            format!("z9hG4bK-{}-ack", self.call_id)
        } else {
            invite_branch.to_string()
        };
        let ack = format!(
            "ACK sip:{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch={branch};rport\r\nFrom: <sip:{from}@{l}>;tag={ft}\r\nTo: <sip:{to}@{srv}>;tag={tt}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            srv = self.server,
            from = self.from_number,
            to = self.to_number,
            ft = self.from_tag,
            tt = self.to_tag,
            cid = self.call_id
        );
        self.send(&ack);
    }

    /// BYE and wait for its 200. Returns the status.
    pub fn bye(&mut self) -> u16 {
        self.cseq += 1;
        let l = self.local();
        let bye = format!(
            "BYE sip:{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-{cid}-bye{n};rport\r\nFrom: <sip:{from}@{l}>;tag={ft}\r\nTo: <sip:{to}@{srv}>;tag={tt}\r\nCall-ID: {cid}\r\nCSeq: {n} BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            srv = self.server,
            from = self.from_number,
            to = self.to_number,
            ft = self.from_tag,
            tt = self.to_tag,
            cid = self.call_id,
            n = self.cseq
        );
        self.send(&bye);
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(m) = self.recv(deadline) {
            if m.contains("BYE") && status_of(&m).is_some() {
                return status_of(&m).unwrap_or(0);
            }
        }
        0
    }

    /// Wait for a BYE from the server (e.g. media timeout); answer it 200.
    pub fn wait_bye(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while let Some(m) = self.recv(deadline) {
            if m.starts_with("BYE ") {
                let reply = bye_ok(&m);
                self.send(&reply);
                return Some(m);
            }
        }
        None
    }
}

/// 200 OK for a BYE we received.
fn bye_ok(bye: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        for l in bye.lines() {
            if let Some((n, _)) = l.split_once(':') {
                if n.trim().eq_ignore_ascii_case(name) {
                    out.push_str(l.trim_end());
                    out.push_str("\r\n");
                }
            }
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

fn parse_sdp_addr(msg: &str) -> Option<SocketAddr> {
    let body = msg.split("\r\n\r\n").nth(1)?;
    let ip = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim();
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split(' ')
        .next()?;
    format!("{ip}:{port}").parse().ok()
}

/// What a media stream does each 20 ms tick.
#[derive(Clone)]
pub struct StreamPlan {
    /// Tone frequency in Hz (0 = silence).
    pub tone_hz: f64,
    pub amplitude: f64,
    /// Packets to send (50 per second).
    pub packets: usize,
    /// Send offsets (µs) added to each packet's nominal time, for jitter tests.
    pub jitter_us: Vec<i64>,
    /// Sequence numbers (by index) not to send, to inject loss.
    pub drop: Vec<usize>,
    /// Pairs of indexes to swap, to inject reordering.
    pub swap: Vec<usize>,
    /// Indexes to send twice.
    pub duplicate: Vec<usize>,
    /// DTMF digits to send (RFC 4733) at these packet indexes: (index, event code).
    pub dtmf: Vec<(usize, u8)>,
    pub ssrc: u32,
}

impl StreamPlan {
    pub fn tone(hz: f64, packets: usize) -> StreamPlan {
        StreamPlan {
            tone_hz: hz,
            amplitude: 8000.0,
            packets,
            jitter_us: vec![],
            drop: vec![],
            swap: vec![],
            duplicate: vec![],
            dtmf: vec![],
            ssrc: 0x1234_5678,
        }
    }
}

pub struct MediaRun {
    pub received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<Vec<Instant>>>,
    receiver: Option<JoinHandle<()>>,
}

impl MediaRun {
    /// Start sending `plan` to `dst` from `sock` and recording what arrives on it.
    pub fn start(sock: &UdpSocket, dst: SocketAddr, plan: StreamPlan) -> MediaRun {
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let rx_sock = sock.try_clone().unwrap();
        rx_sock
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (rx_stop, rx_store) = (Arc::clone(&stop), Arc::clone(&received));
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !rx_stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = rx_sock.recv_from(&mut buf) {
                    if n < 12 || buf[0] >> 6 != 2 {
                        continue;
                    }
                    let pt = buf[1] & 0x7f;
                    if (72..=76).contains(&pt) {
                        continue; // RTCP on the same port
                    }
                    let cc = usize::from(buf[0] & 0x0f);
                    let hdr = 12 + 4 * cc;
                    if n < hdr {
                        continue;
                    }
                    rx_store.lock().unwrap().push(Received {
                        seq: u16::from_be_bytes([buf[2], buf[3]]),
                        ts: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                        pt,
                        marker: buf[1] & 0x80 != 0,
                        payload: buf[hdr..n].to_vec(),
                        from,
                        at: Instant::now(),
                    });
                }
            }
        });
        let tx_sock = sock.try_clone().unwrap();
        let tx_stop = Arc::clone(&stop);
        let sender = std::thread::spawn(move || send_plan(&tx_sock, dst, &plan, &tx_stop));
        MediaRun {
            received,
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    /// Wait for the sender to finish; returns the actual send instants.
    pub fn join_sender(&mut self) -> Vec<Instant> {
        self.sender
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default()
    }

    pub fn stop(mut self) -> Vec<Received> {
        self.join_sender();
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.receiver.take() {
            h.join().unwrap();
        }
        let v = self.received.lock().unwrap().clone();
        v
    }
}

fn rtp_packet(seq: u16, ts: u32, ssrc: u32, pt: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(pt | if marker { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn send_plan(
    sock: &UdpSocket,
    dst: SocketAddr,
    plan: &StreamPlan,
    stop: &AtomicBool,
) -> Vec<Instant> {
    let start = Instant::now() + Duration::from_millis(20);
    let mut sent_at = Vec::with_capacity(plan.packets);
    // Build every packet first (index order), then apply reordering.
    let mut packets: Vec<(usize, Vec<u8>)> = Vec::with_capacity(plan.packets);
    let dtmf: BTreeMap<usize, u8> = plan.dtmf.iter().copied().collect();
    let mut dtmf_left: Option<(u8, u32, usize)> = None; // (event, ts, packets sent)
    for i in 0..plan.packets {
        let seq = (1000 + i) as u16;
        let ts = (160 * i) as u32;
        if let Some(ev) = dtmf.get(&i) {
            dtmf_left = Some((*ev, ts, 0));
        }
        if let Some((ev, ets, n)) = dtmf_left {
            // RFC 4733: 5 updates of 20 ms then 3 end packets, same timestamp.
            let end = n >= 5;
            let dur = (160 * (n.min(5) + 1)) as u16;
            let payload = [
                ev,
                if end { 0x80 | 10 } else { 10 },
                (dur >> 8) as u8,
                dur as u8,
            ];
            packets.push((i, rtp_packet(seq, ets, plan.ssrc, 101, n == 0, &payload)));
            dtmf_left = if n >= 7 { None } else { Some((ev, ets, n + 1)) };
            continue;
        }
        let mut payload = [0u8; 160];
        for (k, b) in payload.iter_mut().enumerate() {
            let t = (160 * i + k) as f64 / 8000.0;
            let v = plan.amplitude * (2.0 * std::f64::consts::PI * plan.tone_hz * t).sin();
            *b = ulaw_encode(v as i16);
        }
        packets.push((i, rtp_packet(seq, ts, plan.ssrc, 0, i == 0, &payload)));
    }
    for &a in &plan.swap {
        if a + 1 < packets.len() {
            packets.swap(a, a + 1);
        }
    }
    for (slot, (idx, pkt)) in packets.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let offset = plan.jitter_us.get(slot).copied().unwrap_or(0);
        let nominal = start + Duration::from_millis(20 * slot as u64);
        let at = if offset >= 0 {
            nominal + Duration::from_micros(offset as u64)
        } else {
            nominal - Duration::from_micros((-offset) as u64)
        };
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        if plan.drop.contains(idx) {
            sent_at.push(Instant::now());
            continue;
        }
        let _ = sock.send_to(pkt, dst);
        sent_at.push(Instant::now());
        if plan.duplicate.contains(idx) {
            let _ = sock.send_to(pkt, dst);
        }
    }
    sent_at
}

/// Decode the PCMU payloads received (in arrival order, PT 0 only).
pub fn decode_pcmu(rx: &[Received]) -> Vec<i16> {
    rx.iter()
        .filter(|r| r.pt == 0)
        .flat_map(|r| r.payload.iter().map(|b| ulaw_decode(*b)))
        .collect()
}

/// A `switchboard` process for one test, on its own ports; SIGTERM on drop.
pub struct Server {
    pub child: std::process::Child,
    pub sip: SocketAddr,
    pub log: std::path::PathBuf,
    pub dir: std::path::PathBuf,
}

impl Server {
    /// Start with `config` (TOML); waits until it answers OPTIONS.
    pub fn start(name: &str, config: &str, sip_port: u16) -> Server {
        let dir = std::env::temp_dir().join(format!("sb-media-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg_path = dir.join("switchboard.toml");
        std::fs::write(&cfg_path, config).unwrap();
        let log = dir.join("stderr.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start switchboard");
        let sip: SocketAddr = format!("127.0.0.1:{sip_port}").parse().unwrap();
        let server = Server {
            child,
            sip,
            log,
            dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let l = s.local_addr().unwrap();
        let mut buf = [0u8; 4096];
        for i in 0..100 {
            let m = format!("OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-ready{i};rport\r\nFrom: <sip:probe@{l}>;tag=p\r\nTo: <sip:{}>\r\nCall-ID: ready-{i}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", self.sip, self.sip);
            let _ = s.send_to(m.as_bytes(), self.sip);
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                if buf[..n].starts_with(b"SIP/2.0 200") {
                    return;
                }
            }
        }
        panic!(
            "switchboard did not answer OPTIONS; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log that are call records for `call_id`.
    pub fn call_records(&self, call_id: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("call record") && l.contains(call_id))
            .map(str::to_string)
            .collect()
    }

    /// Poll the log until a call record for `call_id` appears.
    pub fn wait_record(&self, call_id: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.call_records(call_id).pop() {
                return l;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no call record for {call_id}; log:\n{}", self.log_text());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // std cannot send SIGTERM; the `kill` command can (graceful shutdown path).
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Value of `key=value` in a tracing log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("{key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn ulaw_roundtrip_is_close() {
        for x in [-30000i16, -1000, -10, 0, 10, 1000, 30000] {
            let y = ulaw_decode(ulaw_encode(x));
            assert!(
                (i32::from(x) - i32::from(y)).abs() <= i32::from(x).abs() / 16 + 8,
                "{x} {y}"
            );
        }
    }

    #[test]
    fn goertzel_finds_tone() {
        let s: Vec<i16> = (0..8000)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin()) as i16
            })
            .collect();
        assert!(tone_power(&s, 1000.0) > 100.0 * tone_power(&s, 600.0));
    }
}
