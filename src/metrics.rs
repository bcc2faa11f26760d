//! Prometheus text exposition (format 0.0.4) of every shard's counters.
//!
//! Where it sits: off the hot path. Each shard copies its counters into a
//! [`ShardSnapshot`] about once a second and stores it in the shared [`Board`]
//! (one short mutex hold per shard per second, never per packet); the shard that
//! serves `GET /metrics` renders the board. Shards keep their own counters
//! lock-free; nothing here is touched while a packet is processed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Upper bounds (µs) of the jitter histogram buckets we export.
pub const JITTER_BUCKETS_US: &[u64] = &[
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 40_000, 80_000, 160_000,
];

/// One shard's counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub sip_received: u64,
    pub sip_dropped: u64,
    pub sip_bad_requests: u64,
    pub sip_forwarded: u64,
    pub sip_retransmissions_absorbed: u64,
    /// Responses sent by status code.
    pub sip_responses: BTreeMap<u16, u64>,
    pub calls_active: u64,
    /// Ended or refused calls by result ("answered", "refused", "caller-bye", ...).
    pub calls_by_result: BTreeMap<String, u64>,
    pub rooms_active: u64,
    pub rtp_packets_in: u64,
    pub rtp_packets_out: u64,
    pub rtp_bytes_in: u64,
    pub rtp_bytes_out: u64,
    pub rtp_lost: u64,
    pub rtp_foreign_dropped: u64,
    /// Cumulative counts per `JITTER_BUCKETS_US` bound, then +Inf, and the sum (µs).
    pub jitter_buckets: Vec<u64>,
    pub jitter_count: u64,
    pub jitter_sum_us: u64,
    /// RTP packets per second, measured by the shard between its last two snapshots.
    pub rtp_packets_per_sec_in: f64,
    pub rtp_packets_per_sec_out: f64,
    pub mesh_dropped: u64,
    pub tcp_connections: u64,
}

/// The latest snapshot of every shard.
#[derive(Clone, Default)]
pub struct Board {
    shards: Arc<Mutex<Vec<Option<ShardSnapshot>>>>,
}

impl Board {
    pub fn new(shards: usize) -> Board {
        Board {
            shards: Arc::new(Mutex::new(vec![None; shards])),
        }
    }

    pub fn publish(&self, snap: ShardSnapshot) {
        // A poisoned lock only means another shard panicked while publishing;
        // the data is plain counters, still fine to overwrite.
        let mut g = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let i = snap.shard;
        if i < g.len() {
            g[i] = Some(snap);
        }
    }

    pub fn render(&self) -> String {
        let g = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let snaps: Vec<&ShardSnapshot> = g.iter().flatten().collect();
        render(&snaps)
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Render snapshots as Prometheus text.
pub fn render(snaps: &[&ShardSnapshot]) -> String {
    let mut out = String::with_capacity(4096);
    let sum = |f: fn(&ShardSnapshot) -> u64| snaps.iter().map(|s| f(s)).sum::<u64>();

    metric(
        &mut out,
        "switchboard_calls_active",
        "gauge",
        "Calls in progress.",
    );
    let _ = writeln!(out, "switchboard_calls_active {}", sum(|s| s.calls_active));

    metric(
        &mut out,
        "switchboard_calls_total",
        "counter",
        "Calls by result: refused (and why), or how they ended.",
    );
    let mut by_result: BTreeMap<&str, u64> = BTreeMap::new();
    for s in snaps {
        for (k, v) in &s.calls_by_result {
            *by_result.entry(k.as_str()).or_default() += v;
        }
    }
    for (k, v) in by_result {
        let _ = writeln!(out, "switchboard_calls_total{{result=\"{k}\"}} {v}");
    }

    metric(
        &mut out,
        "switchboard_rooms_active",
        "gauge",
        "Rooms with at least one participant.",
    );
    let _ = writeln!(out, "switchboard_rooms_active {}", sum(|s| s.rooms_active));

    metric(
        &mut out,
        "switchboard_sip_responses_total",
        "counter",
        "SIP responses sent, by status code.",
    );
    let mut by_code: BTreeMap<u16, u64> = BTreeMap::new();
    for s in snaps {
        for (k, v) in &s.sip_responses {
            *by_code.entry(*k).or_default() += v;
        }
    }
    for (k, v) in by_code {
        let _ = writeln!(out, "switchboard_sip_responses_total{{code=\"{k}\"}} {v}");
    }

    type Field = fn(&ShardSnapshot) -> u64;
    let per_shard: &[(&str, &str, Field)] = &[
        (
            "switchboard_sip_messages_received_total",
            "SIP messages received.",
            |s| s.sip_received,
        ),
        (
            "switchboard_sip_dropped_total",
            "SIP messages dropped: unparsable and unaddressable.",
            |s| s.sip_dropped,
        ),
        (
            "switchboard_sip_bad_requests_total",
            "Malformed requests answered 400/505.",
            |s| s.sip_bad_requests,
        ),
        (
            "switchboard_sip_forwarded_total",
            "SIP messages handed to another shard.",
            |s| s.sip_forwarded,
        ),
        (
            "switchboard_sip_retransmissions_absorbed_total",
            "Retransmitted requests absorbed by transactions.",
            |s| s.sip_retransmissions_absorbed,
        ),
        (
            "switchboard_mesh_dropped_total",
            "Cross-shard messages dropped on a full mesh channel.",
            |s| s.mesh_dropped,
        ),
    ];
    for (name, help, f) in per_shard {
        metric(&mut out, name, "counter", help);
        for s in snaps {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, f(s));
        }
    }

    metric(
        &mut out,
        "switchboard_rtp_packets_total",
        "counter",
        "RTP packets by shard and direction.",
    );
    for s in snaps {
        let _ = writeln!(
            out,
            "switchboard_rtp_packets_total{{shard=\"{}\",direction=\"in\"}} {}",
            s.shard, s.rtp_packets_in
        );
        let _ = writeln!(
            out,
            "switchboard_rtp_packets_total{{shard=\"{}\",direction=\"out\"}} {}",
            s.shard, s.rtp_packets_out
        );
    }
    metric(
        &mut out,
        "switchboard_rtp_packets_per_second",
        "gauge",
        "RTP packet rate by shard and direction over the last second.",
    );
    for s in snaps {
        let _ = writeln!(
            out,
            "switchboard_rtp_packets_per_second{{shard=\"{}\",direction=\"in\"}} {:.1}",
            s.shard, s.rtp_packets_per_sec_in
        );
        let _ = writeln!(
            out,
            "switchboard_rtp_packets_per_second{{shard=\"{}\",direction=\"out\"}} {:.1}",
            s.shard, s.rtp_packets_per_sec_out
        );
    }
    metric(
        &mut out,
        "switchboard_rtp_bytes_total",
        "counter",
        "RTP payload bytes by direction.",
    );
    let _ = writeln!(
        out,
        "switchboard_rtp_bytes_total{{direction=\"in\"}} {}",
        sum(|s| s.rtp_bytes_in)
    );
    let _ = writeln!(
        out,
        "switchboard_rtp_bytes_total{{direction=\"out\"}} {}",
        sum(|s| s.rtp_bytes_out)
    );
    metric(
        &mut out,
        "switchboard_rtp_lost_total",
        "counter",
        "RTP packets lost (RFC 3550 A.3) over ended and live calls.",
    );
    let _ = writeln!(out, "switchboard_rtp_lost_total {}", sum(|s| s.rtp_lost));
    metric(
        &mut out,
        "switchboard_rtp_foreign_dropped_total",
        "counter",
        "RTP packets from a source other than the latched one, dropped.",
    );
    let _ = writeln!(
        out,
        "switchboard_rtp_foreign_dropped_total {}",
        sum(|s| s.rtp_foreign_dropped)
    );

    metric(
        &mut out,
        "switchboard_rtp_jitter_microseconds",
        "histogram",
        "RFC 3550 interarrival jitter samples, in microseconds.",
    );
    let mut cum = vec![0u64; JITTER_BUCKETS_US.len() + 1];
    for s in snaps {
        for (i, c) in s.jitter_buckets.iter().enumerate().take(cum.len()) {
            cum[i] += c;
        }
    }
    for (i, le) in JITTER_BUCKETS_US.iter().enumerate() {
        let _ = writeln!(
            out,
            "switchboard_rtp_jitter_microseconds_bucket{{le=\"{le}\"}} {}",
            cum[i]
        );
    }
    let count = sum(|s| s.jitter_count);
    let _ = writeln!(
        out,
        "switchboard_rtp_jitter_microseconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "switchboard_rtp_jitter_microseconds_sum {}",
        sum(|s| s.jitter_sum_us)
    );
    let _ = writeln!(out, "switchboard_rtp_jitter_microseconds_count {count}");
    out
}

/// What a tiny HTTP/1.x request on the metrics port asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpRequest {
    /// Need more bytes.
    Partial,
    Metrics,
    /// `/` or `/healthz`: liveness.
    Health,
    NotFound,
    BadRequest,
}

/// Parse the head of an HTTP request (enough for GET on two paths).
pub fn parse_http(buf: &[u8]) -> HttpRequest {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return if buf.len() > 8192 {
            HttpRequest::BadRequest
        } else {
            HttpRequest::Partial
        };
    };
    let line = buf[..end].split(|b| *b == b'\n').next().unwrap_or(b"");
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return HttpRequest::BadRequest;
    };
    if method != b"GET" && method != b"HEAD" {
        return HttpRequest::BadRequest;
    }
    let path = path.split(|b| *b == b'?').next().unwrap_or(b"");
    match path {
        b"/metrics" => HttpRequest::Metrics,
        b"/" | b"/healthz" => HttpRequest::Health,
        _ => HttpRequest::NotFound,
    }
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn http_response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sums_and_per_shard() {
        let mut a = ShardSnapshot {
            shard: 0,
            calls_active: 2,
            rtp_packets_in: 100,
            jitter_buckets: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10],
            jitter_count: 10,
            jitter_sum_us: 12345,
            ..Default::default()
        };
        a.sip_responses.insert(200, 5);
        a.calls_by_result.insert("answered".into(), 3);
        let mut b = ShardSnapshot {
            shard: 1,
            calls_active: 1,
            rtp_packets_in: 50,
            ..Default::default()
        };
        b.sip_responses.insert(200, 1);
        b.sip_responses.insert(404, 2);
        let text = render(&[&a, &b]);
        assert!(text.contains("switchboard_calls_active 3\n"));
        assert!(text.contains("switchboard_sip_responses_total{code=\"200\"} 6\n"));
        assert!(text.contains("switchboard_sip_responses_total{code=\"404\"} 2\n"));
        assert!(text.contains("switchboard_calls_total{result=\"answered\"} 3\n"));
        assert!(text.contains("switchboard_rtp_packets_total{shard=\"1\",direction=\"in\"} 50\n"));
        assert!(text.contains("switchboard_rtp_jitter_microseconds_bucket{le=\"+Inf\"} 10\n"));
        assert!(text.contains("switchboard_rtp_jitter_microseconds_sum 12345\n"));
        // Every sample line is "name{labels} value" or "name value".
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }

    #[test]
    fn http_parsing() {
        assert_eq!(
            parse_http(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            HttpRequest::Metrics
        );
        assert_eq!(
            parse_http(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            HttpRequest::Metrics
        );
        assert_eq!(
            parse_http(b"GET /nope HTTP/1.1\r\n\r\n"),
            HttpRequest::NotFound
        );
        assert_eq!(parse_http(b"GET /metr"), HttpRequest::Partial);
        assert_eq!(
            parse_http(b"POST /metrics HTTP/1.1\r\n\r\n"),
            HttpRequest::BadRequest
        );
        assert_eq!(parse_http(&[b'a'; 9000]), HttpRequest::BadRequest);
    }
}
