//! Signaling benches on one shard's `Endpoint`, sans-IO (no sockets):
//! - route: the routing decision for an in-dialog request (parse + tag -> owner shard),
//! - options: a full non-INVITE transaction (parse, validate, match, respond, drain),
//! - call: a whole INVITE/ACK/BYE call (three transactions, SDP answer, call record).
//!
//! Run: `cargo bench --bench endpoint -- --noplot`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use switchboard::config::Config;
use switchboard::sip::endpoint::{Endpoint, Inbound, Output, Peer, Transport};

fn peer() -> Peer {
    Peer {
        transport: Transport::Udp,
        remote: "127.0.0.1:5061".parse().unwrap(),
        local: "127.0.0.1:5060".parse().unwrap(),
        conn: None,
    }
}

fn drain(ep: &mut Endpoint, now: Instant) -> usize {
    let mut n = 0;
    loop {
        match ep.poll_output(now) {
            Output::Idle(_) => return n,
            o => {
                black_box(&o);
                n += 1;
            }
        }
    }
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";

fn bench(c: &mut Criterion) {
    let cfg = Arc::new(Config::dev());
    let mut g = c.benchmark_group("endpoint");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));

    // A BYE carrying shard 1's tag, received on shard 0: parse, validate, forward.
    let bye = Bytes::from_static(b"BYE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-r1;rport\r\nFrom: <sip:+15550123@127.0.0.1>;tag=caller1\r\nTo: <sip:+15550100@127.0.0.1>;tag=sb1-0123456789abcdef\r\nCall-ID: route-bench\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    let now = Instant::now();
    let mut ep = Endpoint::new(Arc::clone(&cfg), 0, 2, [1; 16], 1, SystemTime::now(), now);
    g.bench_function("route_in_dialog_request", |b| {
        b.iter(|| {
            ep.handle_inbound(now, Inbound::new(peer(), bye.clone(), now));
            drain(&mut ep, now)
        })
    });

    let mut ep = Endpoint::new(Arc::clone(&cfg), 0, 1, [1; 16], 1, SystemTime::now(), now);
    let mut i: u64 = 0;
    g.bench_function("options_transaction", |b| {
        b.iter(|| {
            i += 1;
            let m = format!("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-o{i};rport\r\nFrom: <sip:ping@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: ping{i}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
            ep.handle_inbound(now, Inbound::new(peer(), Bytes::from(m), now));
            let n = drain(&mut ep, now);
            // Timer J on UDP keeps the transaction 32 s: expire them as we go.
            if i.is_multiple_of(1024) {
                ep.handle_timeout(now + Duration::from_secs(64));
                drain(&mut ep, now);
            }
            n
        })
    });

    let mut ep = Endpoint::new(Arc::clone(&cfg), 0, 1, [1; 16], 1, SystemTime::now(), now);
    let mut j: u64 = 0;
    g.bench_function("call_invite_ack_bye", |b| {
        b.iter(|| {
            j += 1;
            let inv = format!("INVITE sip:+15550100@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-i{j};rport\r\nFrom: <sip:+15550123@127.0.0.1:5061>;tag=c{j}\r\nTo: <sip:+15550100@127.0.0.1:5060>\r\nCall-ID: call{j}\r\nCSeq: 1 INVITE\r\nContact: <sip:c@127.0.0.1:5061>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}", SDP.len());
            ep.handle_inbound(now, Inbound::new(peer(), Bytes::from(inv), now));
            let mut tag = String::new();
            // The 200 goes out from the answer timer, due at once.
            for round in 0..2 {
                if round == 1 {
                    ep.handle_timeout(now);
                }
                loop {
                    match ep.poll_output(now) {
                        Output::Idle(_) => break,
                        Output::Transmit(t) => {
                            if t.data.starts_with(b"SIP/2.0 200") {
                                let m =
                                    switchboard::sip::message::SipMessage::parse(t.data).unwrap();
                                tag = m.to().unwrap().tag().unwrap().to_string();
                            }
                        }
                        o => {
                            black_box(o);
                        }
                    }
                }
            }
            let ack = format!("ACK sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-a{j};rport\r\nFrom: <sip:+15550123@127.0.0.1:5061>;tag=c{j}\r\nTo: <sip:+15550100@127.0.0.1:5060>;tag={tag}\r\nCall-ID: call{j}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
            ep.handle_inbound(now, Inbound::new(peer(), Bytes::from(ack), now));
            drain(&mut ep, now);
            let bye = format!("BYE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-b{j};rport\r\nFrom: <sip:+15550123@127.0.0.1:5061>;tag=c{j}\r\nTo: <sip:+15550100@127.0.0.1:5060>;tag={tag}\r\nCall-ID: call{j}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
            ep.handle_inbound(now, Inbound::new(peer(), Bytes::from(bye), now));
            let n = drain(&mut ep, now);
            if j.is_multiple_of(512) {
                ep.handle_timeout(now + Duration::from_secs(64));
                drain(&mut ep, now);
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
