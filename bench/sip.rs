//! SIP signaling benches: what one request costs a shard before any call logic.
//!
//! Where it sits: every datagram on the SIP port goes through `SipMessage::parse`,
//! `validate_request` and the Call-ID / CSeq / Via / From / To accessors before it is
//! routed to its owner shard and matched to a transaction. This file measures that
//! front door, and `rsip` 0.4 doing the same work, side by side, on:
//! - a typical trunk INVITE with SDP (Twilio-like, ~900 bytes);
//! - a small OPTIONS (the keep-alive ping trunks send every few seconds).
//!
//! Run: `cargo bench --bench sip` (add `-- sip_parse` to pick a group). Short on
//! purpose: 2 s of measurement per bench.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rsip::prelude::{HeadersExt, ToTypedHeader, UntypedHeader};
use std::hint::black_box;
use std::time::Duration;
use switchboard::sip::message::SipMessage;

/// A trunk INVITE as Twilio Elastic SIP Trunking sends it (addresses from the
/// documentation ranges), with its SDP offer: G.711 both laws + telephone-event.
fn trunk_invite() -> Bytes {
    let sdp = "v=0\r\n\
o=root 1193718347 1193718347 IN IP4 54.172.60.1\r\n\
s=Twilio Media Gateway\r\n\
c=IN IP4 54.172.60.1\r\n\
t=0 0\r\n\
m=audio 17326 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=maxptime:150\r\n\
a=sendrecv\r\n";
    let msg = format!(
        "INVITE sip:+14155550100@203.0.113.10:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 54.172.60.0:5060;branch=z9hG4bK5a1e.0b6b3f5e7c29a1f4d8e2c7b9a3f60d1e.0\r\n\
Max-Forwards: 69\r\n\
From: \"+14155550123\" <sip:+14155550123@trunk.pstn.twilio.com>;tag=81604397_6772d868_2b9e6e4c-3b9a-4c1e\r\n\
To: <sip:+14155550100@203.0.113.10>\r\n\
Call-ID: 3f1e7a0c4b2d6e8f9a1b3c5d7e9f0a2b@0.0.0.0\r\n\
CSeq: 101 INVITE\r\n\
Contact: <sip:+14155550123@54.172.60.0:5060;transport=udp>\r\n\
Allow: INVITE,ACK,CANCEL,OPTIONS,BYE,REFER,NOTIFY\r\n\
Supported: timer\r\n\
User-Agent: Twilio Gateway\r\n\
X-Twilio-CallSid: CA0123456789abcdef0123456789abcdef\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\
\r\n\
{sdp}",
        sdp.len()
    );
    Bytes::from(msg)
}

/// A trunk's OPTIONS keep-alive.
const OPTIONS: &[u8] = b"OPTIONS sip:203.0.113.10:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 54.172.60.0:5060;branch=z9hG4bK1d3f.8a2b\r\n\
Max-Forwards: 70\r\n\
From: <sip:ping@trunk.pstn.twilio.com>;tag=1c2d3e4f\r\n\
To: <sip:203.0.113.10:5060>\r\n\
Call-ID: 6b8d0f2a4c6e@54.172.60.0\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\
\r\n";

/// Our front door: parse, validate, read what routing and the transaction need.
fn ours_full(buf: &Bytes) -> usize {
    let m = SipMessage::parse(buf.clone()).expect("bench message parses");
    m.validate_request().expect("bench message is valid");
    let call_id = m.call_id().expect("Call-ID");
    let cseq = m.cseq().expect("CSeq");
    let via = m.top_via().expect("Via");
    let from = m.from().expect("From");
    let to = m.to().expect("To");
    call_id.len()
        + cseq.seq as usize
        + via.branch.map_or(0, str::len)
        + from.tag().map_or(0, str::len)
        + to.uri.len()
        + m.body().len()
}

/// rsip doing the same: parse, then the same five headers as typed values.
fn rsip_full(buf: &[u8]) -> usize {
    let m = rsip::SipMessage::try_from(buf).expect("rsip parses the bench message");
    let call_id = m.call_id_header().expect("Call-ID").value().len();
    let cseq = m
        .cseq_header()
        .expect("CSeq")
        .typed()
        .expect("typed CSeq")
        .seq;
    let via = m.via_header().expect("Via").typed().expect("typed Via");
    let from = m.from_header().expect("From").typed().expect("typed From");
    let to = m.to_header().expect("To").typed().expect("typed To");
    call_id
        + cseq as usize
        + via.params.len()
        + from.params.len()
        + to.uri.to_string().len()
        + m.body().len()
}

fn sip_parse(c: &mut Criterion) {
    let invite = trunk_invite();
    let options = Bytes::from_static(OPTIONS);
    // The inputs are what they claim: a ~900-byte valid INVITE with its SDP, and a
    // valid OPTIONS (`ours_full` panics otherwise).
    assert!(
        (850..=1000).contains(&invite.len()),
        "INVITE is {} bytes",
        invite.len()
    );
    ours_full(&invite);
    ours_full(&options);
    // rsip only runs where it parses the message; say so instead of failing.
    let rsip_ok = |b: &[u8]| rsip::SipMessage::try_from(b).is_ok();

    let mut g = c.benchmark_group("sip_parse");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    for (name, msg) in [("invite_sdp", &invite), ("options", &options)] {
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_with_input(BenchmarkId::new("switchboard/parse", name), msg, |b, m| {
            b.iter(|| SipMessage::parse(black_box(m).clone()).map(|m| m.headers().len()))
        });
        g.bench_with_input(
            BenchmarkId::new("switchboard/parse+validate+access", name),
            msg,
            |b, m| b.iter(|| ours_full(black_box(m))),
        );
        if rsip_ok(msg) {
            g.bench_with_input(BenchmarkId::new("rsip/parse", name), msg, |b, m| {
                b.iter(|| rsip::SipMessage::try_from(black_box(&m[..])).is_ok())
            });
            g.bench_with_input(BenchmarkId::new("rsip/parse+access", name), msg, |b, m| {
                b.iter(|| rsip_full(black_box(&m[..])))
            });
        } else {
            eprintln!("rsip does not parse the {name} bench message: skipped");
        }
    }
    g.finish();
}

// Routing a request to its shard and a full OPTIONS transaction are measured on
// the endpoint in bench/endpoint.rs.

criterion_group!(benches, sip_parse);
criterion_main!(benches);
