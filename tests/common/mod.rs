//! Real-peer test harness: a `switchboard` process per test, driven by sipp.
//!
//! Where it sits: outside the crate, at the wire. Integration tests (`tests/sip_calls.rs`)
//! start the real binary (`CARGO_BIN_EXE_switchboard`) on its own 127.0.0.1 ports with a
//! TOML config, wait until it answers OPTIONS, run sipp scenarios from `tests/sipp/`
//! against it with a hard time limit, read sipp's statistics file, and finally stop the
//! server with SIGTERM, asserting a clean exit within 5 s (the operator's shutdown path).
//!
//! What it owns: port allocation (so concurrent tests never share a SIP port or an RTP
//! range), per-test scratch directories, child processes (never leaked: `Drop` kills
//! what is still running) and failure reports (the server's stderr and sipp's error log
//! are printed when a test fails).
//!
//! sipp is an external program (Debian `sip-tester`, installed by
//! `scripts/install-deps.sh`). When it is missing the sipp tests are skipped loudly,
//! unless `CI` is set: in CI a missing sipp is a failure, so a green run always means
//! the calls were really made.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod livekit;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a stopped server may take to BYE its calls and exit (SIGTERM contract).
pub const STOP_WITHIN: Duration = Duration::from_secs(5);

/// Root of the repository (for `tests/sipp/*.xml` and `tests/data/...`).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// Ports are handed out from one cursor per test process, starting at a pid-derived
/// offset, and every block is
/// - reserved across processes (a file per block in [`reservation_dir`], naming the
///   owner's pid; blocks of dead owners are reclaimed), because a server's RTP range
///   is only bound call by call, so probing alone cannot see it: two test runs at once
///   (a developer's and the lead's, say) would otherwise hand out the same range;
/// - probed free (bind) before it is handed out, for everything else on the machine.
///
/// 20002..25000 stays clear of
/// - the default RTP range 10000..=20000 (`switchboard --dev`, `scripts/dev.sh`, a
///   developer's server may be binding there at any moment),
/// - Linux's ephemeral range 32768..60999 (every `bind(:0)` lands there; a load
///   generator can hold thousands of them),
/// - the fixed ports other tests use (25060.., 30000..31199).
const PORT_LO: u32 = 20_002;
const PORT_HI: u32 = 25_000;

fn port_cursor() -> &'static Mutex<u32> {
    static CURSOR: OnceLock<Mutex<u32>> = OnceLock::new();
    CURSOR.get_or_init(|| {
        let span = PORT_HI - PORT_LO;
        Mutex::new(PORT_LO + (std::process::id().wrapping_mul(7919)) % (span / 2))
    })
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Where port reservations live: one empty file `BASE-LEN-PID` per block.
pub fn reservation_dir() -> PathBuf {
    std::env::temp_dir().join("switchboard-test-ports")
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists; it touches
    // no memory of ours.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A reserved block of ports; the reservation ends when the last clone is dropped.
#[derive(Debug)]
struct Reservation(PathBuf);

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reserve `base..base+n` unless a live process holds an overlapping block.
fn reserve(base: u32, n: u32) -> Option<Reservation> {
    let dir = reservation_dir();
    std::fs::create_dir_all(&dir).ok()?;
    // One process at a time looks at and changes the reservations (flock on a lock
    // file; released when the file is closed at the end of this function).
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .ok()?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock(2) on a descriptor we own and keep open for the whole call.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return None;
    }
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.split('-').map(|p| p.parse::<u32>().ok());
        let (Some(Some(b)), Some(Some(len)), Some(Some(pid))) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if b < base + n && base < b + len {
            return None;
        }
    }
    let path = dir.join(format!("{base}-{n}-{}", std::process::id()));
    std::fs::File::create(&path).ok()?;
    drop(lock);
    Some(Reservation(path))
}

/// `n` consecutive ports, reserved for this process and free on UDP (and on TCP
/// too when `tcp`).
fn alloc_block(n: u32, tcp: bool) -> (u16, Reservation) {
    let mut cur = port_cursor().lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..2_000 {
        if *cur + n >= PORT_HI {
            *cur = PORT_LO;
        }
        let base = *cur;
        *cur += n;
        let Some(held) = reserve(base, n) else {
            continue;
        };
        let all_free = (base..base + n).all(|p| {
            let p = p as u16;
            udp_free(p) && (!tcp || tcp_free(p))
        });
        if all_free {
            return (base as u16, held);
        }
    }
    panic!("no block of {n} free ports in {PORT_LO}..{PORT_HI}");
}

/// `n` consecutive free ports, reserved until this process exits.
pub fn alloc_ports(n: u32, tcp: bool) -> u16 {
    let (base, held) = alloc_block(n, tcp);
    std::mem::forget(held);
    base
}

/// The ports one test uses: the server's SIP port (UDP+TCP), its RTP range, and a
/// client port and media port for sipp. Reserved until dropped.
#[derive(Clone, Debug)]
pub struct Ports {
    pub sip: u16,
    pub rtp_min: u16,
    pub rtp_max: u16,
    pub client: u16,
    pub client_media: u16,
    _held: std::sync::Arc<Vec<Reservation>>,
}

impl Ports {
    /// `rtp` ports for the server (two per concurrent call: RTP and RTCP).
    pub fn alloc(rtp: u32) -> Ports {
        let (sip, a) = alloc_block(1, true);
        let (rtp_min, b) = alloc_block(rtp, false);
        let (client, c) = alloc_block(1, true);
        // sipp's media port and the three above it (it may open RTP+RTCP, audio+video).
        let (client_media, d) = alloc_block(4, false);
        Ports {
            sip,
            rtp_min,
            rtp_max: rtp_min + (rtp - 1) as u16,
            client,
            client_media,
            _held: std::sync::Arc::new(vec![a, b, c, d]),
        }
    }

    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip))
    }
}

// ---------------------------------------------------------------------------
// Scratch directories
// ---------------------------------------------------------------------------

/// A fresh directory for one test's files (config, logs, sipp traces). Removed when the
/// test passes, kept (and named in the failure report) when it fails.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sb-sip-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

/// Fill a config template: `@SIP_PORT@`, `@RTP_MIN@`, `@RTP_MAX@`.
pub fn fill_config(template: &str, ports: &Ports) -> String {
    template
        .replace("@SIP_PORT@", &ports.sip.to_string())
        .replace("@RTP_MIN@", &ports.rtp_min.to_string())
        .replace("@RTP_MAX@", &ports.rtp_max.to_string())
}

/// One `switchboard --config FILE` process.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Server {
    /// Start with `config_template` (see [`fill_config`]) and wait until it answers
    /// OPTIONS over UDP. Panics, with the server's stderr, if it exits or stays silent.
    pub fn start(scratch: &Scratch, config_template: &str, ports: &Ports) -> Server {
        let config = scratch.path("switchboard.toml");
        std::fs::write(&config, fill_config(config_template, ports)).expect("write config");
        let log = scratch.path("switchboard.stderr.log");
        let stderr = std::fs::File::create(&log).expect("create server log");
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("SB_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Plain text logs: the tests search them, people read them in reports.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn switchboard");
        let mut server = Server {
            child: Some(child),
            addr: ports.server_addr(),
            log,
            config,
        };
        server.wait_ready(Duration::from_secs(15));
        server
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("server already stopped")
    }

    /// Everything the server wrote to stderr so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Panic with the server's log attached.
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n===== switchboard stderr ({}) =====\n{}\n===== end of switchboard stderr =====",
            self.log.display(),
            tail(&self.log_text(), 200)
        );
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    /// Ask with OPTIONS until a 200 arrives (bounded: `within`).
    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut attempt = 0u32;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child().try_wait() {
                self.fail(&format!("switchboard exited during startup: {status}"));
            }
            attempt += 1;
            if let Some(resp) = options_ping(self.addr, Duration::from_millis(200), attempt) {
                if status_code(&resp) == Some(200) {
                    return;
                }
            }
        }
        self.fail(&format!(
            "switchboard did not answer OPTIONS with 200 within {within:?}"
        ));
    }

    /// SIGTERM, then assert the process exits with status 0 within [`STOP_WITHIN`].
    pub fn stop(mut self) {
        let status = self.terminate(STOP_WITHIN);
        match status {
            Some(s) if s.success() => {}
            Some(s) => self.fail(&format!("switchboard exited with {s} after SIGTERM")),
            None => self.fail(&format!(
                "switchboard did not exit within {STOP_WITHIN:?} of SIGTERM (killed)"
            )),
        }
    }

    /// Send SIGTERM and wait; SIGKILL when `within` passes. `None` = had to kill.
    fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        sigterm(child.id());
        let got = wait_timeout(child, within);
        if got.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        got
    }

    /// Lines of the log containing every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let panicking = std::thread::panicking();
        let _ = self.terminate(Duration::from_secs(2));
        self.child = None;
        if panicking {
            eprintln!(
                "===== switchboard stderr ({}) =====\n{}\n===== end of switchboard stderr =====",
                self.log.display(),
                tail(&self.log_text(), 200)
            );
        }
    }
}

/// `kill -TERM pid`: std has no way to send anything but SIGKILL.
fn sigterm(pid: u32) {
    // SAFETY: kill(2) takes a pid and a signal number and touches no memory of ours;
    // the pid is our own child's, which has not been reaped yet (so not reused).
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(
        rc,
        0,
        "kill(SIGTERM) failed: {}",
        std::io::Error::last_os_error()
    );
}

fn wait_timeout(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = String::new();
    if from > 0 {
        out.push_str(&format!("[... {from} earlier lines ...]\n"));
    }
    out.push_str(&all[from..].join("\n"));
    out
}

// ---------------------------------------------------------------------------
// A bare UDP SIP client (readiness probe, malformed-message sender)
// ---------------------------------------------------------------------------

/// Send one OPTIONS from a fresh socket and return the first datagram that comes back.
pub fn options_ping(server: SocketAddr, wait: Duration, n: u32) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    let local = sock.local_addr().ok()?;
    let msg = format!(
        "OPTIONS sip:{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-probe-{n}-{pid};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=probe{n}\r\n\
         To: <sip:{server}>\r\n\
         Call-ID: probe-{n}-{pid}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        pid = std::process::id()
    );
    sock.send_to(msg.as_bytes(), server).ok()?;
    recv_sip(&sock, wait)
}

/// The first datagram that starts like a SIP message within `wait` (keep-alive CRLFs
/// and other stray bytes are skipped).
pub fn recv_sip(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).ok()?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if buf[..n].starts_with(b"SIP/2.0 ") => return Some(buf[..n].to_vec()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Status code of a SIP response.
pub fn status_code(msg: &[u8]) -> Option<u16> {
    let line = msg.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    (parts.next()? == "SIP/2.0").then_some(())?;
    parts.next()?.parse().ok()
}

/// Reason phrase of a SIP response (lossy: it may carry the peer's bytes).
pub fn reason_phrase(msg: &[u8]) -> String {
    let line = msg
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    line.splitn(3, ' ').nth(2).unwrap_or("").to_owned()
}

/// Value of the first header `name` (case-insensitive, no compact forms) in a message.
pub fn header(msg: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Replace every occurrence of `from` in `data` (raw bytes: test messages may hold
/// bytes that are not UTF-8 on purpose).
pub fn replace_bytes(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// sipp
// ---------------------------------------------------------------------------

/// Where sipp is, or `None` after saying loudly that the sipp tests are skipped.
/// With `CI` set a missing sipp fails the test instead: CI must make the calls.
pub fn sipp_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = find_sipp() {
        return Some(p);
    }
    let ci = std::env::var("CI").map(|v| !v.is_empty() && v != "0" && v != "false");
    if ci.unwrap_or(false) {
        panic!("{test}: sipp not found and CI is set; run scripts/install-deps.sh (Debian package sip-tester)");
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\n!!!!!!!! SKIPPED {test}: sipp not found (install Debian package sip-tester, \
         or run scripts/install-deps.sh). This test did NOT run. !!!!!!!!\n"
    );
    None
}

fn find_sipp() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SIPP") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("sipp"))
        .find(|p| p.is_file())
}

/// SIP transport for sipp's `-t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SippTransport {
    /// `-t u1`: UDP, one socket.
    Udp,
    /// `-t t1`: TCP, one connection for all calls.
    Tcp,
    /// `-t un`: UDP, a socket (so a source port) per call.
    UdpPerCall,
    /// `-t tn`: TCP, a connection per call.
    TcpPerCall,
}

impl SippTransport {
    fn flag(self) -> &'static str {
        match self {
            SippTransport::Udp => "u1",
            SippTransport::Tcp => "t1",
            SippTransport::UdpPerCall => "un",
            SippTransport::TcpPerCall => "tn",
        }
    }
}

/// Which scenario sipp runs.
#[derive(Clone, Debug)]
pub enum Scenario {
    /// sipp's built-in scenario (`-sn uac`).
    BuiltIn(&'static str),
    /// A file, with `@NAME@` placeholders filled in (see `tests/sipp/README.md`).
    File {
        path: PathBuf,
        fill: Vec<(String, String)>,
    },
}

impl Scenario {
    /// `tests/sipp/<name>` as it is.
    pub fn file(name: &str) -> Scenario {
        Scenario::File {
            path: repo_path(&format!("tests/sipp/{name}")),
            fill: Vec::new(),
        }
    }

    /// `tests/sipp/<name>` with `@KEY@` replaced by value.
    pub fn template(name: &str, fill: &[(&str, &str)]) -> Scenario {
        Scenario::File {
            path: repo_path(&format!("tests/sipp/{name}")),
            fill: fill
                .iter()
                .map(|(k, v)| (format!("@{k}@"), v.to_string()))
                .collect(),
        }
    }
}

/// One sipp run, built up like a command line.
pub struct Sipp {
    pub scenario: Scenario,
    pub transport: SippTransport,
    /// `-m`: total calls.
    pub calls: u32,
    /// `-r`: calls per second.
    pub rate: u32,
    /// `-l`: concurrent calls at most.
    pub limit: u32,
    /// `-d`: length of `<pause/>` without a duration (ms).
    pub pause_ms: u32,
    /// `-s`: the user part of the Request-URI (the called number).
    pub called: String,
    /// `-timeout`: sipp gives up (and fails) after this.
    pub timeout: Duration,
    /// Extra arguments (`-au`, `-ap`, `-lost`, `-key k v`, ...).
    pub extra: Vec<String>,
    /// Keep sipp's sent/received messages in a file (for [`SippRun::messages`]).
    pub trace_messages: bool,
}

impl Sipp {
    pub fn new(scenario: Scenario) -> Sipp {
        Sipp {
            scenario,
            transport: SippTransport::Udp,
            calls: 1,
            rate: 10,
            limit: 10,
            pause_ms: 1000,
            called: "+15550100".into(),
            timeout: Duration::from_secs(30),
            extra: Vec::new(),
            trace_messages: true,
        }
    }

    pub fn transport(mut self, t: SippTransport) -> Sipp {
        self.transport = t;
        self
    }
    pub fn calls(mut self, calls: u32, rate: u32, limit: u32) -> Sipp {
        self.calls = calls;
        self.rate = rate;
        self.limit = limit;
        self
    }
    pub fn pause_ms(mut self, ms: u32) -> Sipp {
        self.pause_ms = ms;
        self
    }
    pub fn called(mut self, number: &str) -> Sipp {
        self.called = number.into();
        self
    }
    pub fn timeout(mut self, t: Duration) -> Sipp {
        self.timeout = t;
        self
    }
    pub fn arg(mut self, a: &str) -> Sipp {
        self.extra.push(a.into());
        self
    }
    pub fn trace_messages(mut self, on: bool) -> Sipp {
        self.trace_messages = on;
        self
    }

    /// Run to completion against `server`; killed when it outlives its own `-timeout`
    /// by 15 s (a wedged sipp must not hang the suite).
    pub fn run(&self, sipp: &Path, scratch: &Scratch, ports: &Ports, name: &str) -> SippRun {
        self.spawn(sipp, scratch, ports, name).wait()
    }

    /// Start sipp and return at once (for tests that act on the server mid-call);
    /// [`RunningSipp::wait`] collects the result.
    pub fn spawn(&self, sipp: &Path, scratch: &Scratch, ports: &Ports, name: &str) -> RunningSipp {
        let stat_file = scratch.path(&format!("{name}.stat.csv"));
        let error_file = scratch.path(&format!("{name}.errors.log"));
        let message_file = scratch.path(&format!("{name}.messages.log"));
        let screen_file = scratch.path(&format!("{name}.screen.log"));
        let out_file = scratch.path(&format!("{name}.stdout.log"));

        let mut cmd = Command::new(sipp);
        match &self.scenario {
            Scenario::BuiltIn(sn) => {
                cmd.arg("-sn").arg(sn);
            }
            Scenario::File { path, fill } => {
                let mut xml = std::fs::read_to_string(path)
                    .unwrap_or_else(|e| panic!("read scenario {}: {e}", path.display()));
                for (k, v) in fill {
                    xml = xml.replace(k, v);
                }
                assert!(
                    !xml.contains("@STATUS@"),
                    "scenario {} needs its @STATUS@ filled in",
                    path.display()
                );
                let filled = scratch.path(&format!("{name}.xml"));
                std::fs::write(&filled, xml).expect("write scenario");
                cmd.arg("-sf").arg(filled);
            }
        }
        let timeout_s = self.timeout.as_secs().max(1);
        cmd.args(["-t", self.transport.flag()])
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &ports.client.to_string()])
            .args(["-mp", &ports.client_media.to_string()])
            .args(["-m", &self.calls.to_string()])
            .args(["-r", &self.rate.to_string()])
            .args(["-l", &self.limit.to_string()])
            .args(["-d", &self.pause_ms.to_string()])
            .args(["-s", &self.called])
            .args(["-timeout", &format!("{timeout_s}s"), "-timeout_error"])
            // Unexpected messages fail the call (the default), and a lost response to
            // a non-INVITE is retransmitted at most 5 times (UDP).
            .args(["-max_non_invite_retrans", "5", "-max_invite_retrans", "5"])
            // sipp refuses per-call transports (-t un/tn) when its default socket
            // budget (50000) exceeds the open-files limit (often 1024); 512 is plenty here.
            .args(["-max_socket", "512"])
            .arg("-nostdin")
            .arg("-trace_stat")
            .arg("-stf")
            .arg(&stat_file)
            .args(["-fd", "1"])
            .arg("-trace_err")
            .arg("-error_file")
            .arg(&error_file)
            .arg("-trace_screen")
            .arg("-screen_file")
            .arg(&screen_file);
        if self.trace_messages {
            cmd.arg("-trace_msg")
                .arg("-message_file")
                .arg(&message_file);
        }
        cmd.args(&self.extra);
        cmd.arg(ports.server_addr().to_string());
        cmd.current_dir(&scratch.dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_file).expect("sipp stdout file"))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&out_file)
                    .expect("sipp stderr file"),
            ));
        let command_line = format!("{cmd:?}");
        let started = Instant::now();
        let child = cmd.spawn().expect("spawn sipp");
        RunningSipp {
            child: Some(child),
            command_line,
            started,
            hard_limit: self.timeout + Duration::from_secs(15),
            stat_file,
            error_file,
            message_file,
            screen_file,
            out_file,
        }
    }
}

/// A sipp process still running; killed on drop if nobody waited for it.
pub struct RunningSipp {
    child: Option<Child>,
    command_line: String,
    started: Instant,
    hard_limit: Duration,
    stat_file: PathBuf,
    error_file: PathBuf,
    message_file: PathBuf,
    screen_file: PathBuf,
    out_file: PathBuf,
}

impl RunningSipp {
    /// What sipp has written to its message trace so far.
    pub fn messages_so_far(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.message_file).unwrap_or_default()).into_owned()
    }

    /// Wait for sipp to finish (killed when it outlives its `-timeout` by 15 s).
    pub fn wait(mut self) -> SippRun {
        let mut child = self.child.take().expect("sipp waited for twice");
        let left = self.hard_limit.saturating_sub(self.started.elapsed());
        let status = wait_timeout(&mut child, left);
        let killed = status.is_none();
        if killed {
            let _ = child.kill();
            let _ = child.wait();
        }
        let read =
            |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        SippRun {
            command_line: self.command_line.clone(),
            exit_code: status.and_then(|s| s.code()),
            killed,
            elapsed: self.started.elapsed(),
            stats: SippStats::parse(&read(&self.stat_file)),
            errors: read(&self.error_file),
            screen: read(&self.screen_file),
            output: read(&self.out_file),
            messages: read(&self.message_file),
        }
    }
}

impl Drop for RunningSipp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one sipp run left behind.
#[derive(Debug)]
pub struct SippRun {
    pub command_line: String,
    /// sipp's exit code: 0 = every call succeeded, 1 = at least one failed,
    /// 97 = stopped by an internal command, 99 = no call processed, 255/254 = fatal.
    pub exit_code: Option<i32>,
    /// sipp outlived its own timeout and was killed by the harness.
    pub killed: bool,
    pub elapsed: Duration,
    /// The last row of `-trace_stat` (cumulative counters).
    pub stats: Option<SippStats>,
    pub errors: String,
    pub screen: String,
    pub output: String,
    pub messages: String,
}

impl SippRun {
    /// Everything worth reading when a run went wrong.
    pub fn report(&self) -> String {
        format!(
            "sipp: {}\nexit code {:?}{} after {:.1?}\nstats: {:?}\n\
             ----- sipp errors -----\n{}\n----- sipp output -----\n{}\n----- last screen -----\n{}\n\
             ----- messages (tail) -----\n{}",
            self.command_line,
            self.exit_code,
            if self.killed { " (killed by the harness)" } else { "" },
            self.elapsed,
            self.stats,
            tail(&self.errors, 60),
            tail(&self.output, 40),
            last_screen(&self.screen),
            tail(&self.messages, 120),
        )
    }

    /// Assert that sipp exited 0 with exactly `calls` successful calls and none failed.
    pub fn assert_all_succeeded(&self, server: &Server, calls: u64) {
        let ok = self.exit_code == Some(0)
            && self
                .stats
                .as_ref()
                .is_some_and(|s| s.successful == calls && s.failed == 0);
        if !ok {
            server.fail(&format!(
                "expected {calls} successful calls and 0 failed\n{}",
                self.report()
            ));
        }
    }

    /// The messages sipp received, from its `-trace_msg` file.
    pub fn received(&self) -> Vec<String> {
        trace_blocks(&self.messages, "message received")
    }

    /// The messages sipp sent, from its `-trace_msg` file.
    pub fn sent(&self) -> Vec<String> {
        trace_blocks(&self.messages, "message sent")
    }
}

/// Split sipp's `-trace_msg` log into the messages whose banner contains `kind`.
fn trace_blocks(log: &str, kind: &str) -> Vec<String> {
    // Each message is introduced by a line of dashes with a timestamp, then a line
    // like "UDP message received [523] bytes :", a blank line, and the message.
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if line.starts_with("----------------------------------------------") {
            if let Some(m) = current.take() {
                out.push(m.trim().to_owned());
            }
            continue;
        }
        let banner = (line.starts_with("UDP message") || line.starts_with("TCP message"))
            && (line.contains("message sent") || line.contains("message received"));
        if banner {
            if let Some(m) = current.take() {
                out.push(m.trim().to_owned());
            }
            if line.contains(kind) {
                current = Some(String::new());
            }
            continue;
        }
        if let Some(m) = current.as_mut() {
            m.push_str(line);
            m.push_str("\r\n");
        }
    }
    if let Some(m) = current.take() {
        out.push(m.trim().to_owned());
    }
    out.retain(|m| !m.is_empty());
    out
}

fn last_screen(screens: &str) -> String {
    // -trace_screen appends one screen per dump; the last one is the final state.
    let parts: Vec<&str> = screens
        .split("------------------------------ Scenario Screen")
        .collect();
    tail(parts.last().copied().unwrap_or(""), 60)
}

/// Cumulative counters from sipp's `-trace_stat` CSV (`;`-separated, header first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SippStats {
    pub created: u64,
    pub successful: u64,
    pub failed: u64,
    pub retransmissions: u64,
    pub unexpected: u64,
    pub timeouts: u64,
    pub columns: HashMap<String, String>,
}

impl SippStats {
    pub fn parse(csv: &str) -> Option<SippStats> {
        let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines.next()?.split(';').collect();
        let last: Vec<&str> = lines.next_back()?.split(';').collect();
        let columns: HashMap<String, String> = header
            .iter()
            .zip(last.iter())
            .map(|(h, v)| (h.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let n = |name: &str| -> u64 { columns.get(name).and_then(|v| v.parse().ok()).unwrap_or(0) };
        Some(SippStats {
            created: n("TotalCallCreated"),
            successful: n("SuccessfulCall(C)"),
            failed: n("FailedCall(C)"),
            retransmissions: n("Retransmissions(C)"),
            unexpected: n("FailedUnexpectedMessage(C)"),
            timeouts: n("FailedCallRejected(C)")
                + n("FailedMaxUDPRetrans(C)")
                + n("FailedTcpClosed(C)"),
            columns,
        })
    }
}

#[cfg(test)]
mod tests {
    // Harness self-tests run with every test binary that includes this module.
    use super::*;

    #[test]
    fn harness_parses_sipp_stat_rows() {
        let csv =
            "StartTime;TotalCallCreated;SuccessfulCall(C);FailedCall(C);Retransmissions(C);\n\
                   x;1;0;0;0;\n\
                   y;10;9;1;3;\n";
        let s = SippStats::parse(csv).unwrap();
        assert_eq!(
            (s.created, s.successful, s.failed, s.retransmissions),
            (10, 9, 1, 3)
        );
        assert!(SippStats::parse("").is_none());
        assert!(SippStats::parse("only;a;header\n").is_none());
    }

    #[test]
    fn harness_reads_status_reason_and_headers() {
        let m = b"SIP/2.0 400 Missing Call-ID\r\nVia: SIP/2.0/UDP h\r\ncall-id: x\r\n\r\n";
        assert_eq!(status_code(m), Some(400));
        assert_eq!(reason_phrase(m), "Missing Call-ID");
        assert_eq!(header(m, "Call-ID").as_deref(), Some("x"));
        assert_eq!(status_code(b"garbage"), None);
        assert_eq!(
            replace_bytes(b"a@X@b\xff@X@", b"@X@", b"--"),
            b"a--b\xff--".to_vec()
        );
    }

    #[test]
    fn harness_splits_sipp_message_trace() {
        let log = "----------------------------------------------- 2026-01-01\n\
                   UDP message sent (10 bytes):\n\n\
                   INVITE sip:x SIP/2.0\n\
                   Call-ID: a\n\n\
                   ----------------------------------------------- 2026-01-01\n\
                   UDP message received [20] bytes :\n\n\
                   SIP/2.0 100 Trying\n\
                   Call-ID: a\n\n";
        assert_eq!(trace_blocks(log, "message sent").len(), 1);
        let r = trace_blocks(log, "message received");
        assert_eq!(r.len(), 1);
        assert!(r[0].starts_with("SIP/2.0 100"));
    }

    #[test]
    fn harness_reservations_exclude_overlaps_and_end_on_drop() {
        // Reservations are only files: use numbers no real port has, per process, so
        // no other test (here or in a concurrent run) sees these.
        let x = 100_000 + (std::process::id() % 100_000) * 100;
        let a = reserve(x, 10).expect("free block");
        assert!(reserve(x + 5, 10).is_none(), "overlap must be refused");
        let b = reserve(x + 10, 10).expect("adjacent block is free");
        drop(a);
        let c = reserve(x + 5, 5).expect("free again after drop");
        drop((b, c));
        assert!(reserve(x, 20).is_some(), "all released");
    }

    #[test]
    fn harness_hands_out_distinct_free_ports() {
        let a = Ports::alloc(10);
        let b = Ports::alloc(10);
        let ranges = [
            (a.sip, a.sip),
            (a.rtp_min, a.rtp_max),
            (a.client, a.client),
            (b.sip, b.sip),
            (b.rtp_min, b.rtp_max),
            (b.client, b.client),
        ];
        for (i, x) in ranges.iter().enumerate() {
            for y in &ranges[i + 1..] {
                assert!(x.1 < y.0 || y.1 < x.0, "{x:?} overlaps {y:?}");
            }
        }
        assert_eq!(a.rtp_max - a.rtp_min, 9);
    }
}
