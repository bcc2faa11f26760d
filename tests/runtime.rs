//! The runtime with the real SIP endpoint, on 127.0.0.1 only: OPTIONS over UDP
//! and TCP on every shard, RFC 5626 keep-alive, a clean and quick shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::config::Config;
use switchboard::runtime::{start, Running};

fn boot(shards: usize) -> Running {
    let mut c = Config::dev();
    c.sip.bind = "127.0.0.1".parse().unwrap();
    c.sip.port = 0;
    // Parallel tests in one process: keep the dev LiveKit port (7880) closed.
    c.livekit.port = 0;
    c.shutdown.grace_secs = 2;
    start(Arc::new(c), shards).expect("runtime starts")
}

fn options(call_id: &str, transport: &str) -> String {
    format!(
        "OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bK-{call_id};rport\r\n\
         From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:gw@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

/// EINTR-proof: socket calls with a timeout are never restarted (signal(7)).
fn udp_ask(to: SocketAddr, msg: &str) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.send_to(msg.as_bytes(), to).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.recv_from(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => {
                let (n, from) = r.expect("no UDP reply");
                assert_eq!(from, to);
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
    }
}

fn tcp_read_head(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) => panic!("closed after {:?}", String::from_utf8_lossy(&got)),
            Ok(_) => got.push(b[0]),
            Err(e) => panic!("no TCP reply: {e}"),
        }
    }
    String::from_utf8(got).unwrap()
}

#[test]
fn options_over_udp_and_tcp_then_quick_shutdown() {
    let r = boot(2);
    let udp = r.udp_addr().unwrap();
    let tcp = r.tcp_addr().unwrap();
    // Several source ports so both shards' sockets answer.
    for i in 0..8 {
        let reply = udp_ask(udp, &options(&format!("rt-u{i}"), "UDP"));
        assert!(reply.starts_with("SIP/2.0 200 "), "{reply}");
        assert!(reply.contains(&format!("rt-u{i}")));
    }
    for i in 0..8 {
        let mut s = TcpStream::connect(tcp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(options(&format!("rt-t{i}"), "TCP").as_bytes())
            .unwrap();
        let reply = tcp_read_head(&mut s);
        assert!(reply.starts_with("SIP/2.0 200 "), "{reply}");
        // RFC 5626 s3.5.1: double-CRLF ping, CRLF pong.
        s.write_all(b"\r\n\r\n").unwrap();
        let mut pong = [0u8; 2];
        s.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"\r\n");
    }
    let sum = |name: &str| -> u64 {
        r.counters()
            .iter()
            .flat_map(|c| c.snapshot())
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(sum("udp_datagrams_in"), 8);
    assert_eq!(sum("tcp_accepted"), 8);
    assert_eq!(sum("udp_send_errors"), 0);
    let t = Instant::now();
    r.shutdown();
    r.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}
