//! `/metrics` over HTTP, and the once-a-second snapshot every shard publishes.
//!
//! Data flow: each shard's [`publish_loop`] copies its endpoint, media engine and
//! driver counters into a [`ShardSnapshot`] once a second and stores it on the
//! shared [`Board`]; shard 0 accepts scrapes ([`serve`]) and renders the board
//! (`metrics::render`). Nothing here runs per packet.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;

use super::shard::Shard;
use crate::metrics::{parse_http, Board, HttpRequest, ShardSnapshot, JITTER_BUCKETS_US};

const PUBLISH_EVERY: Duration = Duration::from_secs(1);

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Serve scrapes, one request per connection, each bounded in size and time.
pub async fn serve(listener: TcpListener, board: Board) {
    loop {
        let Ok(mut stream) = listener.accept().await else {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let board = board.clone();
        glommio::spawn_local(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let deadline = Instant::now() + Duration::from_secs(5);
            let req = loop {
                let read = futures_lite::future::or(
                    async { Some(stream.read(&mut chunk).await) },
                    async {
                        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()))
                            .await;
                        None
                    },
                )
                .await;
                match read {
                    Some(Ok(n)) if n > 0 => {
                        buf.extend_from_slice(&chunk[..n]);
                        match parse_http(&buf) {
                            HttpRequest::Partial => continue,
                            r => break r,
                        }
                    }
                    _ => return,
                }
            };
            let resp = match req {
                HttpRequest::Metrics => crate::metrics::http_response(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &board.render(),
                ),
                HttpRequest::Health => {
                    crate::metrics::http_response("200 OK", "text/plain", "ok\n")
                }
                HttpRequest::NotFound => {
                    crate::metrics::http_response("404 Not Found", "text/plain", "try /metrics\n")
                }
                _ => {
                    crate::metrics::http_response("400 Bad Request", "text/plain", "bad request\n")
                }
            };
            let _ = stream.write_all(&resp).await;
            let _ = stream.close().await;
        })
        .detach();
    }
}

/// Publish this shard's counters once a second.
pub async fn publish_loop(shard: Rc<Shard>, board: Board) {
    let mut last: Option<(Instant, u64, u64)> = None;
    loop {
        glommio::timer::sleep(PUBLISH_EVERY).await;
        let now = Instant::now();
        let mut snap = ShardSnapshot {
            shard: shard.id,
            ..ShardSnapshot::default()
        };
        if let Ok(ep) = shard.endpoint.try_borrow() {
            let st = ep.stats();
            snap.sip_received = st.received;
            snap.sip_dropped = st.dropped;
            snap.sip_bad_requests = st.bad_requests;
            snap.sip_forwarded = st.forwarded;
            snap.sip_retransmissions_absorbed = st.retransmissions_absorbed;
            snap.sip_responses = st.responses.iter().map(|(k, v)| (*k, *v)).collect();
            snap.calls_active = ep.active_calls() as u64;
            snap.calls_by_result = st.ended.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            snap.calls_by_result
                .insert("refused".to_string(), st.calls_refused);
        }
        if let Ok(m) = shard.media.try_borrow() {
            let ms = m.engine().stats();
            snap.rooms_active = ms.rooms_active as u64;
            snap.rtp_packets_in = ms.packets_in;
            snap.rtp_packets_out = ms.packets_out;
            snap.rtp_bytes_in = ms.bytes_in;
            snap.rtp_bytes_out = ms.bytes_out;
            snap.rtp_lost = ms.lost.max(0) as u64;
            snap.rtp_foreign_dropped = ms.foreign_dropped;
            let h = &ms.jitter_us;
            snap.jitter_buckets = JITTER_BUCKETS_US
                .iter()
                .map(|le| h.count_between(0, *le))
                .collect();
            snap.jitter_count = h.len();
            snap.jitter_sum_us = (h.mean() * h.len() as f64) as u64;
            if let Some((t, pin, pout)) = last {
                let secs = now.duration_since(t).as_secs_f64().max(1e-3);
                snap.rtp_packets_per_sec_in = ms.packets_in.saturating_sub(pin) as f64 / secs;
                snap.rtp_packets_per_sec_out = ms.packets_out.saturating_sub(pout) as f64 / secs;
            }
            last = Some((now, ms.packets_in, ms.packets_out));
        }
        snap.mesh_dropped = shard.counters.mesh_dropped_full.get();
        snap.tcp_connections = shard.counters.tcp_open.get();
        board.publish(snap);
    }
}
