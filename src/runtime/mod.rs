//! The thread-per-core runtime: one pinned glommio executor ("shard") per core,
//! each with its own SIP sockets, its own SIP [`Endpoint`], its media ports, and
//! links to every other shard.
//!
//! Data flow: the kernel spreads SIP datagrams and TCP connections over the
//! shards' SO_REUSEPORT sockets ([`sip_transport`]); each shard's loop
//! ([`shard`]) hands them to its endpoint and carries out what the endpoint asks
//! (send, forward to the owning shard over the [`mesh`], open or close a media
//! ports ([`media_driver`]), wake at the next deadline). This module is the IO edge:
//! the only place that reads the clock, owns sockets and catches signals; the
//! protocol cores it drives are sans-IO.
//!
//! Owns: process start-up ([`system::prepare`]: memlock, io_uring probe, CPU set),
//! binding the SIP sockets before any executor runs (so a bind error is one clean
//! line), the executors' lifetimes, SIGINT/SIGTERM, and per-shard counters.
//!
//! Shutdown: the first SIGINT/SIGTERM (or [`Running::shutdown`]) makes every shard
//! call `Endpoint::begin_shutdown` (503 to new INVITEs, BYE to live calls) and
//! keep serving until `Endpoint::is_drained` or `shutdown.grace_secs` pass; a
//! second SIGINT/SIGTERM exits the process at once with status 1.
//!
//! [`Endpoint`]: crate::sip::endpoint::Endpoint

pub mod livekit_http;
pub mod media_driver;
pub mod mesh;
pub mod metrics_http;
pub mod rtp_socket;
pub mod shard;
pub mod signal_rooms;
pub mod sip_transport;
pub mod system;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use thiserror::Error;
use tracing::{info, warn};

use crate::config::Config;

pub use sip_transport::TransportError;
pub use system::SystemError;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error(transparent)]
    System(#[from] SystemError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(
        "cannot bind the LiveKit port {addr}: {source} (set [livekit] port, or 0 to turn it off)"
    )]
    LiveKitBind { addr: SocketAddr, source: io::Error },
    #[error("no SIP transport enabled: set sip.udp or sip.tcp")]
    NoTransport,
    #[error("shard count must be at least 1")]
    NoShards,
    #[error("cannot install SIGINT/SIGTERM handlers: {0}")]
    Signals(io::Error),
    #[error("cannot start shard {shard} on CPU {cpu}: {reason}")]
    ShardStart {
        shard: usize,
        cpu: usize,
        reason: String,
    },
    #[error("shard {shard} failed: {reason}")]
    ShardFailed { shard: usize, reason: String },
}

/// See `LocalExecutorBuilder::preempt_timer`; SIP timers are 500 ms-scale,
/// RTP packets 20 ms apart.
const PREEMPT_TIMER: Duration = Duration::from_millis(10);

/// Tunables of the drivers (not of the protocols). `Default` is production.
#[derive(Clone, Debug)]
pub struct Limits {
    /// TCP connections one shard holds at most; accepts beyond are closed at once.
    pub tcp_max_conns: usize,
    /// Close a TCP connection after this long with nothing read or written.
    pub tcp_idle: Duration,
    /// How often a shard looks for idle connections.
    pub tcp_idle_sweep: Duration,
    /// Outbound TCP connect timeout.
    pub tcp_connect_timeout: Duration,
    /// Unframed bytes buffered per TCP connection (RFC 3261 s18.3 framing);
    /// exceeding it closes the connection.
    pub tcp_max_buffer: usize,
    /// Messages queued for writing per TCP connection; beyond, dropped.
    pub tcp_write_queue: usize,
    /// Datagrams queued for sending on a shard's SIP UDP socket; beyond, dropped.
    pub udp_send_queue: usize,
    /// How often each shard looks at the stop flags.
    pub stop_poll: Duration,
    /// How long a mesh join may take before a shard gives up (a sibling failed).
    pub mesh_join_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tcp_max_conns: 10_000,
            tcp_idle: Duration::from_secs(600),
            tcp_idle_sweep: Duration::from_secs(15),
            tcp_connect_timeout: Duration::from_secs(5),
            tcp_max_buffer: 64 * 1024,
            tcp_write_queue: 256,
            udp_send_queue: 4096,
            stop_poll: Duration::from_millis(50),
            mesh_join_timeout: Duration::from_secs(10),
        }
    }
}

/// A monotonically increasing count written by exactly one shard thread and
/// read by anyone (metrics). Single writer, so a relaxed load + store is
/// exact and avoids a locked read-modify-write on the packet path.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// For gauges (open connections, open media ports).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! shard_counters {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        /// One shard's driver counters; the metrics exporter reads them from any
        /// thread through [`Running::counters`].
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $($(#[$m])* pub $name: Counter,)*
        }
        impl ShardCounters {
            /// `(name, value)` for every counter, for exposition.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.get()),)*]
            }
        }
    };
}

shard_counters! {
    udp_datagrams_in, udp_bytes_in, udp_datagrams_out, udp_bytes_out,
    /// Datagrams the kernel refused (logged at most once a second).
    udp_send_errors,
    udp_recv_errors,
    /// Datagrams dropped because the shard's send queue was full.
    udp_send_queue_full,
    mesh_sent, mesh_received,
    /// Messages dropped because the link to the target shard was full.
    mesh_dropped_full,
    mesh_dropped_closed,
    tcp_accepted, tcp_connected, tcp_connect_failed,
    /// Connections refused because the shard holds `tcp_max_conns`.
    tcp_refused_limit,
    tcp_closed, tcp_idle_closed,
    /// Gauge: connections open now.
    tcp_open,
    tcp_messages_in, tcp_bytes_in, tcp_bytes_out,
    /// Streams closed because they could not be framed.
    tcp_framing_errors,
    /// Streams closed because unframed bytes exceeded `tcp_max_buffer`.
    tcp_overflow,
    tcp_write_errors,
    /// Messages dropped because a connection's write queue was full.
    tcp_queue_full,
    /// RFC 5626 s3.5.1 double-CRLF pings answered.
    tcp_pings,
    /// Gauge: media ports open now.
    media_open,
    media_bind_failed,
    rtp_packets_in, rtp_bytes_in, rtcp_packets_in,
    timer_fires,
    /// The endpoint produced more outputs in one go than a drain takes.
    drain_overruns,
}

/// Why and how the shards should stop; shared by the signal handlers, the
/// [`Running`] handle and every shard's stop watcher.
#[derive(Debug, Default)]
pub struct StopFlags {
    /// Begin a graceful shutdown (set by SIGINT/SIGTERM through signal-hook).
    pub drain: Arc<AtomicBool>,
    /// Stop now, without draining.
    pub abort: AtomicBool,
}

/// The running shards.
pub struct Running {
    udp_addr: Option<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
    livekit_addr: Option<SocketAddr>,
    stop: Arc<StopFlags>,
    counters: Vec<Arc<ShardCounters>>,
    handles: Vec<(usize, ExecutorJoinHandle<Result<(), String>>)>,
}

impl Running {
    /// The SIP UDP address all shards share (port resolved if 0 was configured).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }
    /// The LiveKit port's address, when it is open (`[livekit]`).
    pub fn livekit_addr(&self) -> Option<SocketAddr> {
        self.livekit_addr
    }
    pub fn counters(&self) -> &[Arc<ShardCounters>] {
        &self.counters
    }
    /// Graceful shutdown, as on SIGTERM.
    pub fn shutdown(&self) {
        self.stop.drain.store(true, Ordering::Relaxed);
    }
    /// Stop every shard at its next stop check, without draining.
    pub fn abort(&self) {
        self.stop.abort.store(true, Ordering::Relaxed);
    }
    /// Wait for every shard to stop. On failure the root cause is returned: an
    /// executor that could not start or panicked, before a shard's own error
    /// (which may only be "the others did not join the mesh").
    pub fn join(self) -> Result<(), RuntimeError> {
        let mut executor_error = None;
        let mut shard_error = None;
        for (shard, h) in self.handles {
            let (reason, slot) = match h.join() {
                Ok(Ok(())) => continue,
                Ok(Err(reason)) => (reason, &mut shard_error),
                Err(e) => (e.to_string(), &mut executor_error),
            };
            warn!(shard, %reason, "shard failed");
            // One failed shard means the others cannot complete the mesh.
            self.stop.abort.store(true, Ordering::Relaxed);
            slot.get_or_insert(RuntimeError::ShardFailed { shard, reason });
        }
        match executor_error.or(shard_error) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// How many shards to run by default: the CPUs this process may use.
pub fn available_cores() -> usize {
    system::allowed_cpus().len().max(1)
}

/// Run switchboard until SIGINT/SIGTERM and the drain that follows.
pub fn run(config: Arc<Config>, shards: usize) -> Result<(), RuntimeError> {
    let stop = Arc::new(StopFlags::default());
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag as it was before this signal:
        // the second signal exits at once, the first only sets the flag.
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop.drain))
            .map_err(RuntimeError::Signals)?;
        signal_hook::flag::register(sig, Arc::clone(&stop.drain)).map_err(RuntimeError::Signals)?;
    }
    let running = start_with(config, shards, Limits::default(), stop)?;
    let r = running.join();
    info!("all shards stopped");
    r
}

/// Start the shards and return at once; see [`Running`].
pub fn start(config: Arc<Config>, shards: usize) -> Result<Running, RuntimeError> {
    start_with(
        config,
        shards,
        Limits::default(),
        Arc::new(StopFlags::default()),
    )
}

/// [`start`] with explicit driver limits and stop flags.
pub fn start_with(
    config: Arc<Config>,
    shards: usize,
    limits: Limits,
    stop: Arc<StopFlags>,
) -> Result<Running, RuntimeError> {
    if shards == 0 {
        return Err(RuntimeError::NoShards);
    }
    if !config.sip.udp && !config.sip.tcp {
        return Err(RuntimeError::NoTransport);
    }
    let cpus = system::prepare(shards)?;
    if shards > cpus.len() {
        warn!(
            shards,
            cpus = cpus.len(),
            "more shards than CPUs: some CPUs run two shards"
        );
    }
    let bind = SocketAddr::new(config.sip.bind, config.sip.port);
    let sockets = sip_transport::bind_sip(bind, shards, config.sip.udp, config.sip.tcp)?;
    info!(
        shards,
        udp = ?sockets.udp_addr,
        tcp = ?sockets.tcp_addr,
        "SIP sockets bound"
    );
    let (udp_addr, tcp_addr) = (sockets.udp_addr, sockets.tcp_addr);
    // The LiveKit port: one SO_REUSEPORT listener per shard, on the SIP address.
    let livekit = if config.livekit.enabled() {
        let addr = SocketAddr::new(config.sip.bind, config.livekit.port);
        let s = livekit_http::bind(addr, shards)
            .map_err(|source| RuntimeError::LiveKitBind { addr, source })?;
        info!(%addr, "LiveKit signaling on ws://{addr}");
        Some(s)
    } else {
        info!("LiveKit port closed ([livekit] port 0 or no API keys)");
        None
    };
    let livekit_addr = livekit.as_ref().map(|l| l.addr);
    let mut livekit_sockets = livekit.into_iter().flat_map(|l| l.per_shard);
    let mesh = (shards > 1).then(|| mesh::builder(shards));
    // Nonces carry an HMAC under this secret so any shard can verify them.
    let nonce_secret: [u8; 16] = rand::random();
    // Each shard publishes its counters here once a second; shard 0 serves them.
    let board = crate::metrics::Board::new(shards);
    let mut running = Running {
        udp_addr,
        tcp_addr,
        livekit_addr,
        stop: Arc::clone(&stop),
        counters: Vec::with_capacity(shards),
        handles: Vec::with_capacity(shards),
    };
    // Executors are created in shard order: glommio numbers mesh peers by
    // executor id, which increases with creation, so peer id == shard index.
    for (shard, socks) in sockets.per_shard.into_iter().enumerate() {
        let cpu = cpus[shard % cpus.len()];
        let counters = Arc::new(ShardCounters::default());
        running.counters.push(Arc::clone(&counters));
        let start = shard::ShardStart {
            shard,
            shards,
            config: Arc::clone(&config),
            limits: limits.clone(),
            sockets: socks,
            livekit: livekit_sockets.next(),
            mesh: mesh.clone(),
            stop: Arc::clone(&stop),
            counters,
            nonce_secret,
            seed: rand::random(),
            board: board.clone(),
        };
        let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard{shard}"))
            .io_memory(system::IO_MEMORY_PER_SHARD)
            // How long one task may run before `yield_if_needed` yields: bounds
            // how late a timer fires while a socket is flooded (default 100 ms).
            .preempt_timer(PREEMPT_TIMER)
            .spawn(move || shard::run(start));
        match spawned {
            Ok(h) => running.handles.push((shard, h)),
            Err(e) => {
                running.abort();
                // Let the started shards leave their mesh join and exit.
                let _ = running.join();
                return Err(RuntimeError::ShardStart {
                    shard,
                    cpu,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_snapshot_names_every_field() {
        let c = ShardCounters::default();
        c.udp_datagrams_in.inc();
        c.udp_bytes_in.add(100);
        c.tcp_open.set(3);
        let s = c.snapshot();
        let get = |n: &str| s.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        assert_eq!(get("udp_datagrams_in"), Some(1));
        assert_eq!(get("udp_bytes_in"), Some(100));
        assert_eq!(get("tcp_open"), Some(3));
        assert_eq!(get("mesh_dropped_full"), Some(0));
    }

    #[test]
    fn zero_shards_and_no_transport_are_refused() {
        let mut cfg = crate::config::Config::dev();
        assert!(matches!(
            start(Arc::new(cfg.clone()), 0),
            Err(RuntimeError::NoShards)
        ));
        cfg.sip.udp = false;
        cfg.sip.tcp = false;
        assert!(matches!(
            start(Arc::new(cfg), 1),
            Err(RuntimeError::NoTransport)
        ));
    }
}
