//! Endpoint tests on virtual time: N shards in memory, the mesh simulated by
//! delivering `Output::Forward` to the named shard. No sockets, no sleeping.

use super::*;
use crate::config::Config;

const CALLER: &str = "127.0.0.1:5061";

struct Net {
    eps: Vec<Endpoint>,
    now: Instant,
    /// (shard that sent, transmit)
    sent: Vec<(usize, Transmit)>,
    media: Vec<(usize, String)>,
    specs: Vec<MediaSpec>,
    /// What each `Output::Ringing` said: (room, caller).
    ringing: Vec<(String, CallerInfo)>,
}

impl Net {
    fn new(cfg: Config, shards: usize) -> Net {
        let cfg = Arc::new(cfg);
        let now = Instant::now();
        let wall = SystemTime::now();
        let eps = (0..shards)
            .map(|s| Endpoint::new(Arc::clone(&cfg), s, shards, [7; 16], 42, wall, now))
            .collect();
        Net {
            eps,
            now,
            sent: vec![],
            media: vec![],
            specs: vec![],
            ringing: vec![],
        }
    }

    fn peer(transport: Transport) -> Peer {
        Peer {
            transport,
            remote: CALLER.parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        }
    }

    /// Deliver bytes to `shard` as if its socket received them; run the mesh to idle.
    fn recv_on(&mut self, shard: usize, data: &str, transport: Transport) {
        let msg = Inbound::new(
            Self::peer(transport),
            Bytes::from(data.to_string()),
            self.now,
        );
        self.eps[shard].handle_inbound(self.now, msg);
        self.drain();
    }

    fn recv(&mut self, data: &str) {
        self.recv_on(0, data, Transport::Udp);
    }

    fn drain(&mut self) {
        // Timers due now fire too (the answer runs from a timer at `now`).
        for _ in 0..100 {
            self.drain_outputs();
            let due = self
                .eps
                .iter_mut()
                .any(|e| matches!(e.poll_output(self.now), Output::Idle(Some(t)) if t <= self.now));
            if !due {
                break;
            }
            for e in &mut self.eps {
                e.handle_timeout(self.now);
            }
        }
    }

    fn drain_outputs(&mut self) {
        loop {
            let mut progressed = false;
            for s in 0..self.eps.len() {
                loop {
                    match self.eps[s].poll_output(self.now) {
                        Output::Idle(_) => break,
                        Output::Transmit(t) => self.sent.push((s, t)),
                        Output::Forward { shard, msg } => {
                            self.eps[shard].handle_inbound(self.now, msg);
                            progressed = true;
                        }
                        Output::MediaOpen { call, .. } => {
                            self.media.push((s, format!("open {call}")))
                        }
                        Output::MediaClose { call, .. } => {
                            self.media.push((s, format!("close {call}")))
                        }
                        Output::MediaStart(spec) => {
                            self.media.push((s, format!("start {}", spec.call)));
                            self.specs.push(spec);
                        }
                        Output::Ringing { call, room, caller } => {
                            self.media.push((s, format!("ring {call}")));
                            self.ringing.push((room, caller));
                        }
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        // Step through deadlines so timers fire in order.
        for _ in 0..10_000 {
            let next = self
                .eps
                .iter_mut()
                .filter_map(|e| match e.poll_output(self.now) {
                    Output::Idle(t) => t,
                    _ => Some(self.now),
                })
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = t.max(self.now);
                    for e in &mut self.eps {
                        e.handle_timeout(self.now);
                    }
                    self.drain();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Responses sent so far, as (status, full text).
    fn responses(&self) -> Vec<(u16, String)> {
        self.sent
            .iter()
            .filter_map(|(_, t)| {
                let m = SipMessage::parse(t.data.clone()).ok()?;
                Some((m.status()?, String::from_utf8_lossy(&t.data).into_owned()))
            })
            .collect()
    }

    fn statuses(&self) -> Vec<u16> {
        self.responses().into_iter().map(|(s, _)| s).collect()
    }

    fn requests(&self) -> Vec<String> {
        self.sent
            .iter()
            .filter(|(_, t)| !t.data.starts_with(b"SIP/2.0"))
            .map(|(_, t)| String::from_utf8_lossy(&t.data).into_owned())
            .collect()
    }

    fn total_calls(&self) -> u64 {
        self.eps.iter().map(|e| e.stats().calls_total).sum()
    }

    fn active(&self) -> usize {
        self.eps.iter().map(|e| e.active_calls()).sum()
    }
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";

fn invite(call_id: &str, branch: &str, to_user: &str, sdp: &str, extra: &str) -> String {
    format!(
        "INVITE sip:{to_user}@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch};rport\r\n\
From: \"Caller\" <sip:+15550123@127.0.0.1:5061>;tag=caller1\r\n\
To: <sip:{to_user}@127.0.0.1:5060>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:caller@127.0.0.1:5061>\r\n\
Max-Forwards: 70\r\n{extra}\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn to_tag_of(resp: &str) -> String {
    let m = SipMessage::parse(Bytes::from(resp.to_string())).unwrap();
    m.to().unwrap().tag().unwrap().to_string()
}

fn in_dialog(method: &str, call_id: &str, branch: &str, to_tag: &str, cseq: u32) -> String {
    format!(
        "{method} sip:127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch};rport\r\n\
From: \"Caller\" <sip:+15550123@127.0.0.1:5061>;tag=caller1\r\n\
To: <sip:+15550100@127.0.0.1:5060>;tag={to_tag}\r\n\
Call-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\n\
Max-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn ok_for_invite(net: &Net) -> String {
    net.responses()
        .into_iter()
        .find(|(s, t)| *s == 200 && t.contains("CSeq: 1 INVITE"))
        .expect("200 OK for the INVITE")
        .1
}

#[test]
fn options_gets_200_with_allow() {
    let mut net = Net::new(Config::dev(), 1);
    net.recv("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-o1\r\nFrom: <sip:ping@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: ping1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    let r = net.responses();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 200);
    assert!(r[0].1.contains("Allow: INVITE, ACK, BYE, CANCEL, OPTIONS"));
}

#[test]
fn full_call_udp() {
    let mut net = Net::new(Config::dev(), 1);
    net.recv(&invite("call-a", "z9hG4bK-a1", "+15550100", SDP, ""));
    assert_eq!(net.statuses(), vec![100, 180, 200]);
    let ok = ok_for_invite(&net);
    // The answer names the shard's RTP address and a port of its slice.
    let slice = rtp_slice(10000, 20000, 0, 1);
    let port: u16 = ok
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio in answer");
    assert!(slice.contains(&port), "{port} in the shard's slice");
    assert!(ok.contains("c=IN IP4 127.0.0.1"), "{ok}");
    assert!(ok.contains("PCMU/8000"));
    assert!(ok.contains("telephone-event/8000"));
    assert_eq!(
        net.media,
        vec![
            (0, "open call-a".to_string()),
            (0, "ring call-a".to_string()),
            (0, "start call-a".to_string())
        ]
    );
    let tag = to_tag_of(&ok);
    assert!(tag.starts_with("sb0-"));
    // The participant's facts: who called whom, from where, our dialog tag.
    let (room, caller) = &net.ringing[0];
    assert_eq!(room, &net.specs[0].room);
    assert_eq!(caller, &net.specs[0].caller, "the same facts at the answer");
    assert_eq!(caller.call_tag, tag);
    assert_eq!(caller.callee, "+15550100");
    assert_eq!(
        (caller.number.as_str(), caller.from_host.as_str()),
        ("+15550123", "127.0.0.1")
    );
    net.recv(&in_dialog("ACK", "call-a", "z9hG4bK-a2", &tag, 1));
    // No 200 retransmission after the ACK.
    let before = net.sent.len();
    net.advance(Duration::from_secs(10));
    assert_eq!(net.sent.len(), before, "no retransmission after ACK");
    net.recv(&in_dialog("BYE", "call-a", "z9hG4bK-a3", &tag, 2));
    assert_eq!(net.statuses().last(), Some(&200));
    assert_eq!(net.active(), 0);
    assert_eq!(net.media.last(), Some(&(0, "close call-a".to_string())));
}

#[test]
fn ok_is_retransmitted_until_ack_then_bye_on_timeout() {
    let mut net = Net::new(Config::dev(), 1);
    net.recv(&invite("call-r", "z9hG4bK-r1", "+15550100", SDP, ""));
    net.advance(Duration::from_millis(3600));
    let oks = net.statuses().iter().filter(|s| **s == 200).count();
    // 200 at 0, then T1 (0.5), 1.5, 3.5 s.
    assert_eq!(oks, 4);
    net.advance(Duration::from_secs(40));
    let byes = net.requests();
    assert!(
        byes.iter().any(|r| r.starts_with("BYE ")),
        "BYE after 64*T1 without ACK"
    );
}

#[test]
fn retransmitted_invite_creates_one_call() {
    let mut net = Net::new(Config::dev(), 2);
    let inv = invite("call-dup", "z9hG4bK-d1", "+15550100", SDP, "");
    net.recv_on(0, &inv, Transport::Udp);
    net.recv_on(1, &inv, Transport::Udp);
    net.recv_on(0, &inv, Transport::Udp);
    assert_eq!(net.total_calls(), 1);
    assert_eq!(net.active(), 1);
    // Each retransmission got the last response again (the 200).
    assert_eq!(net.statuses(), vec![100, 180, 200, 200, 200]);
}

#[test]
fn cancel_before_answer_gives_487() {
    let mut cfg = Config::dev();
    cfg.sip.answer_delay_ms = 2000;
    let mut net = Net::new(cfg, 2);
    net.recv_on(
        1,
        &invite("call-c", "z9hG4bK-c1", "+15550100", SDP, ""),
        Transport::Udp,
    );
    assert_eq!(net.statuses(), vec![100, 180]);
    let cancel = "CANCEL sip:+15550100@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-c1;rport\r\nFrom: \"Caller\" <sip:+15550123@127.0.0.1:5061>;tag=caller1\r\nTo: <sip:+15550100@127.0.0.1:5060>\r\nCall-ID: call-c\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    net.recv_on(0, cancel, Transport::Udp);
    let r = net.responses();
    assert_eq!(net.statuses(), vec![100, 180, 200, 487], "{r:?}");
    assert!(r[2].1.contains("CSeq: 1 CANCEL"));
    assert!(r[3].1.contains("CSeq: 1 INVITE"));
    assert_eq!(net.active(), 0);
    // The answer timer must not resurrect the call.
    net.advance(Duration::from_secs(3));
    assert!(!net.statuses().contains(&603));
    assert_eq!(net.statuses().iter().filter(|s| **s == 200).count(), 1);
}

#[test]
fn unsupported_codec_gets_488() {
    let mut net = Net::new(Config::dev(), 1);
    let g729 = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    net.recv(&invite("call-488", "z9hG4bK-g1", "+15550100", g729, ""));
    assert_eq!(net.statuses(), vec![488]);
    assert_eq!(net.active(), 0);
}

#[test]
fn malformed_gets_400_with_reason_and_garbage_is_dropped() {
    let mut net = Net::new(Config::dev(), 1);
    net.recv("INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-m1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
    let r = net.responses();
    assert_eq!(r.len(), 1);
    assert!(
        r[0].1
            .starts_with("SIP/2.0 400 Bad Request - Missing Call-ID\r\n"),
        "{}",
        r[0].1
    );
    net.recv("\u{0}\u{1}garbage");
    net.recv("OPTIONS sip:x SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\n\r\n");
    assert_eq!(
        net.responses().len(),
        1,
        "nothing addressable, nothing sent"
    );
    assert_eq!(net.eps[0].stats().dropped, 2);
}

#[test]
fn unknown_method_and_unknown_dialog() {
    let mut net = Net::new(Config::dev(), 1);
    net.recv("FOO sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-f1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: f1\r\nCSeq: 1 FOO\r\nContent-Length: 0\r\n\r\n");
    net.recv(&in_dialog("BYE", "nope", "z9hG4bK-b9", "sb0-1234", 2));
    assert_eq!(net.statuses(), vec![501, 481]);
}

#[test]
fn shutdown_byes_calls_and_refuses_new_ones() {
    let mut net = Net::new(Config::dev(), 1);
    net.recv(&invite("call-s", "z9hG4bK-s1", "+15550100", SDP, ""));
    let tag = to_tag_of(&ok_for_invite(&net));
    net.recv(&in_dialog("ACK", "call-s", "z9hG4bK-s2", &tag, 1));
    net.eps[0].begin_shutdown(net.now);
    net.drain();
    let bye = net
        .requests()
        .into_iter()
        .find(|r| r.starts_with("BYE "))
        .expect("BYE sent");
    assert!(!net.eps[0].is_drained());
    net.recv(&invite("call-new", "z9hG4bK-n1", "+15550100", SDP, ""));
    let last = net.responses().last().unwrap().clone();
    assert_eq!(last.0, 503);
    assert!(last.1.contains("Retry-After:"));
    // The caller answers our BYE.
    let m = SipMessage::parse(Bytes::from(bye)).unwrap();
    let branch = m.top_via().unwrap().branch.unwrap().to_string();
    let ok = format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: call-s\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n", m.header(HeaderName::From).unwrap(), m.header(HeaderName::To).unwrap());
    net.recv(&ok);
    assert!(net.eps[0].is_drained());
}

#[test]
fn two_shards_route_to_the_room_owner() {
    // Many calls with different numbers: each ends on hash(room) % 2, whatever
    // shard received it, and in-dialog requests reach it by the tag.
    let mut net = Net::new(Config::dev(), 2);
    for i in 0..20 {
        let cid = format!("route-{i}");
        let callee = format!("+1555010{i:02}");
        net.sent.clear();
        net.recv_on(
            i % 2,
            &invite(&cid, &format!("z9hG4bK-x{i}"), &callee, SDP, ""),
            Transport::Udp,
        );
        let ok = ok_for_invite(&net);
        let room = format!("call-{callee}");
        let owner = room_shard(&room, 2);
        let tag = to_tag_of(&ok);
        assert_eq!(shard_in_token(&tag), Some(owner));
        assert!(
            net.sent.iter().all(|(s, _)| *s == owner),
            "owner shard sends every response"
        );
        net.recv_on(
            1 - owner,
            &in_dialog("BYE", &cid, &format!("z9hG4bK-y{i}"), &tag, 2),
            Transport::Udp,
        );
        assert_eq!(net.statuses().last(), Some(&200));
    }
    assert_eq!(net.total_calls(), 20);
    assert_eq!(net.active(), 0);
}

#[test]
fn rtp_slices_are_disjoint_and_even() {
    let a = rtp_slice(10000, 20000, 0, 2);
    let b = rtp_slice(10000, 20000, 1, 2);
    assert!(a.iter().all(|p| p % 2 == 0) && b.iter().all(|p| p % 2 == 0));
    assert!(a.iter().all(|p| !b.contains(p) && !b.contains(&(p + 1))));
    assert_eq!(a.len() + b.len(), 5000);
}

fn pin_config() -> Config {
    Config::from_str(
        r#"
[sip]
bind = "127.0.0.1"
port = 5060
[[trunks]]
id = "ST_t"
[[dispatch_rules]]
id = "SDR_conf"
type = "direct"
room_name = "conference"
pin = "4321"
"#,
        "pin.toml",
    )
    .unwrap()
}

fn media_starts(net: &Net) -> Vec<String> {
    net.media
        .iter()
        .filter(|(_, m)| m.starts_with("start "))
        .map(|(_, m)| m.clone())
        .collect()
}

#[test]
fn pin_rule_waits_for_the_right_digits_then_joins_the_room() {
    let mut net = Net::new(pin_config(), 1);
    net.recv(&invite("call-pin", "z9hG4bK-p1", "+15550100", SDP, ""));
    let tag = to_tag_of(&ok_for_invite(&net));
    net.recv(&in_dialog("ACK", "call-pin", "z9hG4bK-p2", &tag, 1));
    let ck = CallKey("call-pin".into());
    // Answered, but parked: one MediaStart so far, into a room of its own;
    // it never rang into a room.
    assert_eq!(media_starts(&net).len(), 1);
    assert!(net.ringing.is_empty());
    let spec_room = |net: &Net| {
        net.eps[0]
            .calls
            .get(&ck)
            .map(|c| media_spec(&ck, c).unwrap().room)
    };
    assert_eq!(spec_room(&net).as_deref(), Some("pin:call-pin"));
    // A wrong entry ended by '#', then the right one.
    for d in ['9', '#', '4', '3', '2'] {
        net.eps[0].handle_dtmf(net.now, &ck, d);
    }
    net.drain();
    assert_eq!(media_starts(&net).len(), 1, "not yet: 3 of 4 digits");
    net.eps[0].handle_dtmf(net.now, &ck, '1');
    net.drain();
    assert_eq!(
        media_starts(&net).len(),
        2,
        "PIN right: MediaStart into the room"
    );
    assert_eq!(spec_room(&net).as_deref(), Some("conference"));
}

#[test]
fn three_wrong_pins_end_the_call() {
    let mut net = Net::new(pin_config(), 1);
    net.recv(&invite("call-badpin", "z9hG4bK-q1", "+15550100", SDP, ""));
    let tag = to_tag_of(&ok_for_invite(&net));
    net.recv(&in_dialog("ACK", "call-badpin", "z9hG4bK-q2", &tag, 1));
    let ck = CallKey("call-badpin".into());
    for _ in 0..2 {
        for d in "1111".chars() {
            net.eps[0].handle_dtmf(net.now, &ck, d);
        }
    }
    net.drain();
    assert!(
        !net.requests().iter().any(|r| r.starts_with("BYE ")),
        "two wrong PINs: still up"
    );
    for d in "0000".chars() {
        net.eps[0].handle_dtmf(net.now, &ck, d);
    }
    net.drain();
    assert!(
        net.requests().iter().any(|r| r.starts_with("BYE ")),
        "third wrong PIN: BYE"
    );
    assert_eq!(media_starts(&net).len(), 1, "never joined the room");
}

#[test]
fn stream_fallback_addresses() {
    assert_eq!(
        literal_addr("sip:alice@192.0.2.7:5070;transport=tcp"),
        Some("192.0.2.7:5070".parse().unwrap())
    );
    assert_eq!(
        literal_addr("sip:[2001:db8::1]"),
        Some("[2001:db8::1]:5060".parse().unwrap())
    );
    assert_eq!(literal_addr("sip:alice@pbx.example.com"), None);
    // A TCP response whose connection closed reconnects to the Via port.
    let req = SipMessage::parse(Bytes::from_static(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n")).unwrap();
    assert_eq!(
        builder::stream_response_target(&req, "192.0.2.9:40000".parse().unwrap()),
        "192.0.2.9:5070".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn a_port_held_elsewhere_is_replaced_before_the_answer() {
    let mut net = Net::new(Config::dev(), 1);
    let msg = Inbound::new(
        Net::peer(Transport::Udp),
        Bytes::from(invite("call-port", "z9hG4bK-pp1", "+15550100", SDP, "")),
        net.now,
    );
    net.eps[0].handle_inbound(net.now, msg);
    let mut opens = vec![];
    let mut sent = vec![];
    // Two rounds: the inbound's outputs, then the answer timer's.
    for round in 0..2 {
        if round == 1 {
            net.eps[0].handle_timeout(net.now);
        }
        loop {
            match net.eps[0].poll_output(net.now) {
                Output::Idle(_) => break,
                Output::MediaOpen { call, local } => {
                    opens.push(local.port());
                    if opens.len() == 1 {
                        // The driver could not bind it (another process holds it).
                        net.eps[0].handle_media_failed(net.now, &call);
                    }
                }
                Output::Transmit(t) => sent.push(String::from_utf8_lossy(&t.data).into_owned()),
                _ => {}
            }
        }
    }
    assert_eq!(opens.len(), 2, "a second port was opened: {opens:?}");
    assert_ne!(opens[0], opens[1]);
    let ok = sent
        .iter()
        .find(|t| t.starts_with("SIP/2.0 200"))
        .expect("answered after all");
    assert!(
        ok.contains(&format!("m=audio {} RTP/AVP", opens[1])),
        "the answer names the port that was bound: {ok}"
    );
    assert_eq!(net.eps[0].active_calls(), 1);
}

/// A trunk with digest auth, challenging with `challenge` (401 or 407).
fn auth_config(challenge: i64) -> Config {
    let text = format!(
        "[[trunks]]\nid = \"ST_auth\"\nauth_username = \"alice\"\nauth_password = \"s3cret\"\n\
         auth_challenge = {challenge}\n\n[[dispatch_rules]]\nid = \"SDR_c\"\ntype = \"callee\"\n\
         room_prefix = \"call-\"\n"
    );
    Config::from_str(&text, "auth.toml").unwrap()
}

/// RFC 3261 s22.2 (401, WWW-Authenticate) and s22.3 (407, Proxy-Authenticate):
/// the first INVITE is challenged with the configured status and header, the
/// retry with credentials computed from that challenge is answered, and a retry
/// with a wrong password gets 403.
#[test]
fn digest_challenge_as_configured_then_call_is_answered() {
    for (code, chal_header, creds_header) in [
        (401, "WWW-Authenticate", "Authorization"),
        (407, "Proxy-Authenticate", "Proxy-Authorization"),
    ] {
        for (password, want) in [("s3cret", 200), ("wrong", 403)] {
            let mut net = Net::new(auth_config(code), 1);
            let call_id = format!("auth-{code}-{password}");
            net.recv(&invite(&call_id, "z9hG4bK-d1", "+15550100", SDP, ""));
            let (status, text) = net.responses().pop().expect("a challenge");
            assert_eq!(status, code as u16, "{text}");
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{chal_header}: ")))
                .unwrap_or_else(|| panic!("{chal_header} in {text}"))
                .to_string();
            let ch = digest::parse_challenge(&value).unwrap();
            let creds = digest::authorization(
                &ch,
                &digest::ClientRequest {
                    username: "alice",
                    password,
                    method: "INVITE",
                    uri: "sip:+15550100@127.0.0.1:5060",
                    cnonce: "0a4f113b",
                    nc: 1,
                },
            )
            .unwrap();
            let extra = format!("{creds_header}: {creds}\r\n");
            net.recv(
                &invite(&call_id, "z9hG4bK-d2", "+15550100", SDP, &extra)
                    .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE"),
            );
            let last = net.statuses().pop();
            assert_eq!(last, Some(want), "{code} {password}: {:?}", net.statuses());
        }
    }
}

/// RFC 3264 s8.4: hold and resume by re-INVITE. The answer mirrors the offer's
/// direction and the media layer is told ours (it stops the mix and the media
/// timeout while held).
#[test]
fn hold_and_resume_by_reinvite_renegotiate_the_direction() {
    let mut net = Net::new(Config::dev(), 1);
    net.recv(&invite("call-h", "z9hG4bK-h1", "+15550100", SDP, ""));
    let ok = ok_for_invite(&net);
    let tag = to_tag_of(&ok);
    net.recv(&in_dialog("ACK", "call-h", "z9hG4bK-h1", &tag, 1));
    assert_eq!(
        net.specs.last().map(|m| m.direction),
        Some(sdp::Direction::SendRecv)
    );

    for (cseq, offer_dir, want) in [
        (2, "a=inactive\r\n", sdp::Direction::Inactive),
        (3, "a=sendonly\r\n", sdp::Direction::RecvOnly),
        (4, "", sdp::Direction::SendRecv),
    ] {
        let body = format!("{SDP}{offer_dir}");
        let branch = format!("z9hG4bK-h{cseq}");
        let req = invite("call-h", &branch, "+15550100", &body, "")
            .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
            .replace(
                "To: <sip:+15550100@127.0.0.1:5060>",
                &format!("To: <sip:+15550100@127.0.0.1:5060>;tag={tag}"),
            );
        net.recv(&req);
        let (status, answer) = net
            .responses()
            .into_iter()
            .rfind(|(_, t)| t.contains(&format!("CSeq: {cseq} INVITE")))
            .expect("an answer to the re-INVITE");
        assert_eq!(status, 200, "{answer}");
        assert!(
            answer.contains(&format!("a={}\r\n", want.as_str())),
            "{want:?} in {answer}"
        );
        assert_eq!(net.specs.last().map(|m| m.direction), Some(want));
        net.recv(&in_dialog("ACK", "call-h", &branch, &tag, cseq));
    }
    assert_eq!(net.active(), 1);
}
