//! A real browser for the LiveKit tests: Debian's headless Chromium running
//! `livekit-client` (npm, its UMD build) in `tests/browser/index.html` +
//! `page.js`.
//!
//! The runner serves the page, the SDK and the page's report on a tiny HTTP
//! server of its own on 127.0.0.1 (a thread per connection, each bounded by
//! socket timeouts), starts Chromium (`--headless=new --no-sandbox`, a fake
//! media device, a fresh profile in the test's scratch directory, in a process
//! group of its own), waits (bounded) for the page to POST its JSON report to
//! `/result`, and kills the whole group in every case (`Drop`). The page's
//! console lines (POSTed to `/log`) and Chromium's stderr are kept for failure
//! reports.
//!
//! Where things are: Chromium is `SB_CHROMIUM` or `chromium` /
//! `chromium-browser` on `PATH` (Debian package `chromium`); livekit-client is
//! `SB_NODE_DIR/node_modules/livekit-client` (default
//! `~/.cache/switchboard/node`, which `scripts/install-deps.sh --browser`
//! fills with the pinned version).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The livekit-client version `scripts/install-deps.sh --browser` installs.
pub const LIVEKIT_CLIENT_VERSION: &str = "2.23.0";

/// What a browser test needs: the Chromium binary and livekit-client's UMD file.
pub struct Tools {
    pub chromium: PathBuf,
    pub umd: PathBuf,
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SB_CHROMIUM") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    on_path(&["chromium", "chromium-browser"])
}

/// `SB_NODE_DIR`, else `~/.cache/switchboard/node`.
pub fn node_dir() -> Option<PathBuf> {
    std::env::var_os("SB_NODE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/switchboard/node")))
}

fn find_umd() -> Option<PathBuf> {
    let p = node_dir()?.join("node_modules/livekit-client/dist/livekit-client.umd.js");
    p.is_file().then_some(p)
}

/// The tools, or `None` after saying loudly that `test` is skipped; with `CI`
/// set a missing tool fails the test (CI installs them: `.ci/run` ->
/// `scripts/test.sh` -> `scripts/install-deps.sh --browser`). `SB_BROWSER=0`
/// skips it on purpose, CI or not.
pub fn tools_or_skip(test: &str) -> Option<Tools> {
    if std::env::var("SB_BROWSER").is_ok_and(|v| v == "0") {
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n!!!!!!!! SKIPPED {test}: SB_BROWSER=0 (browser not found on purpose). \
             This test did NOT run. !!!!!!!!\n"
        );
        return None;
    }
    let chromium = find_chromium();
    let umd = find_umd();
    if let (Some(chromium), Some(umd)) = (&chromium, &umd) {
        return Some(Tools {
            chromium: chromium.clone(),
            umd: umd.clone(),
        });
    }
    let mut missing = Vec::new();
    if chromium.is_none() {
        missing.push("chromium (Debian package chromium, or SB_CHROMIUM)".to_owned());
    }
    if umd.is_none() {
        missing.push(format!(
            "livekit-client@{LIVEKIT_CLIENT_VERSION} (npm) in {}",
            node_dir().unwrap_or_default().display()
        ));
    }
    let missing = missing.join(" and ");
    if ci() {
        panic!("{test}: {missing} not found and CI is set; run scripts/install-deps.sh --browser");
    }
    // Straight to stderr, past the test harness's capture: a skip must be seen.
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n!!!!!!!! SKIPPED {test}: browser not found: {missing} (run \
         scripts/install-deps.sh --browser). This test did NOT run. !!!!!!!!\n"
    );
    None
}

/// Move the calling thread into a network namespace of its own with only the
/// loopback interface up, so that everything it starts afterwards (the
/// server, the caller, the page server, Chromium) sees nothing but 127.0.0.1:
/// Chromium then gathers only loopback candidates and no packet can go to any
/// other address. Needs CAP_SYS_ADMIN (root, as in CI); `false` when that is
/// refused, and the test runs in the host's namespace (Chromium's candidate
/// pair then uses one of the machine's own addresses, still on this machine).
pub fn private_network() -> bool {
    // SAFETY: unshare(2) with CLONE_NEWNET only changes the calling thread's
    // network namespace; no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return false;
    }
    // SIOCGIFFLAGS / SIOCSIFFLAGS on "lo": struct ifreq is the name (16 bytes)
    // then a union whose first member here is the short flags (40 bytes in all).
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: a datagram socket only for the two ioctls, closed below; `req` is
    // a live, properly sized ifreq for the kernel to read and write.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let got = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req as *mut IfReq);
        req.flags |= libc::IFF_UP as libc::c_short;
        let set = libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req as *mut IfReq);
        libc::close(fd);
        assert!(
            got == 0 && set == 0,
            "bring lo up in the new network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    true
}

// ---------------------------------------------------------------------------
// The page server
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Shared {
    /// Console lines the page POSTed to /log, in arrival order.
    console: Vec<String>,
    /// The JSON body POSTed to /result.
    result: Option<String>,
    /// Requests served, for the failure report.
    requests: Vec<String>,
}

/// The page, the SDK and the report endpoints on 127.0.0.1:<ephemeral>.
pub struct PageServer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    pub fn start(umd: &Path) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let files = Arc::new(Files {
            index: std::fs::read(super_path("index.html")).expect("tests/browser/index.html"),
            page: std::fs::read(super_path("page.js")).expect("tests/browser/page.js"),
            umd: std::fs::read(umd).expect("livekit-client.umd.js"),
        });
        let (s, st) = (Arc::clone(&shared), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, f) = (Arc::clone(&s), Arc::clone(&files));
                        // Each connection bounded by its socket timeouts.
                        std::thread::spawn(move || serve(conn, &s, &f));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        PageServer {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// Wait (at most `within`) for the page's report.
    pub fn wait_result(&self, within: Duration, chromium: &mut Chromium) -> Option<String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(r) = self.shared.lock().unwrap().result.clone() {
                return Some(r);
            }
            if !chromium.is_running() {
                // Give a last POST in flight a moment.
                std::thread::sleep(Duration::from_millis(200));
                return self.shared.lock().unwrap().result.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn console(&self) -> Vec<String> {
        self.shared.lock().unwrap().console.clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().unwrap().requests.clone()
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Files {
    index: Vec<u8>,
    page: Vec<u8>,
    umd: Vec<u8>,
}

fn super_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser")
        .join(file)
}

/// One request, one response, then close (bounded: 5 s per read and write).
fn serve(mut conn: TcpStream, shared: &Mutex<Shared>, files: &Files) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return, // a speculative connection that sent nothing
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("").to_owned();
    let target = words.next().unwrap_or("").to_owned();
    let path = target.split('?').next().unwrap_or("").to_owned();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    let body = String::from_utf8_lossy(&body).into_owned();
    shared
        .lock()
        .unwrap()
        .requests
        .push(format!("{method} {path}"));
    let (status, ctype, content): (&str, &str, &[u8]) = match (method.as_str(), path.as_str()) {
        ("GET", "/") | ("GET", "/index.html") => ("200 OK", "text/html", &files.index),
        ("GET", "/page.js") => ("200 OK", "text/javascript", &files.page),
        ("GET", "/livekit-client.umd.js") => ("200 OK", "text/javascript", &files.umd),
        ("POST", "/log") => {
            shared.lock().unwrap().console.push(body);
            ("204 No Content", "text/plain", b"")
        }
        ("POST", "/result") => {
            shared.lock().unwrap().result = Some(body);
            ("204 No Content", "text/plain", b"")
        }
        _ => ("404 Not Found", "text/plain", b"not found"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        content.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(content);
    let _ = conn.flush();
}

// ---------------------------------------------------------------------------
// Chromium
// ---------------------------------------------------------------------------

/// A headless Chromium in a process group of its own; the group is killed on
/// drop (SIGTERM, then SIGKILL after 3 s).
pub struct Chromium {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Chromium {
    /// Open `url` in `chromium` with a fresh profile under `dir`; its stderr
    /// (with `--enable-logging=stderr`) goes to `dir/chromium.stderr.log`.
    pub fn start(chromium: &Path, dir: &Path, url: &str) -> Chromium {
        use std::os::unix::process::CommandExt as _;
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).expect("create the Chromium profile dir");
        let log = dir.join("chromium.stderr.log");
        let stderr = std::fs::File::create(&log).expect("create the Chromium log");
        let child = Command::new(chromium)
            .args([
                "--headless=new",
                // As root (CI) Chromium refuses to start sandboxed.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                // Media: a fake capture device, no permission prompt, audio
                // without a user gesture.
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                // The server's only candidate is on 127.0.0.1.
                "--allow-loopback-in-peer-connection",
                // Nothing but 127.0.0.1: no name resolution, no background
                // fetches, no mDNS names for host candidates (multicast).
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,\
                 DialMediaRouteProvider,OptimizationHints,Translate",
                "--no-first-run",
                "--no-default-browser-check",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromium.display()));
        Chromium {
            child: Some(child),
            log,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The lines of Chromium's stderr.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Kill the group; bounded (3 s for SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the process group we created for our own child
        // (process_group(0) made its pid the group id); no memory is touched.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (renderer, GPU, zygote helpers).
        // SAFETY: as above; the group id is not reused while the leader is
        // unreaped, and we reap it only below.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one page run produced.
pub struct PageRun {
    /// The page's JSON report (`Value::Null` when none came).
    pub result: serde_json::Value,
    pub console: Vec<String>,
    pub chromium_log: String,
    pub requests: Vec<String>,
    pub seconds: f64,
}

impl PageRun {
    /// Everything a failure report needs: the report, the console, Chromium's
    /// stderr (its last 150 lines).
    pub fn report(&self) -> String {
        // Without a D-Bus (CI, containers) Chromium's stderr is mostly its
        // complaints about that; and console lines carry the page's long URL.
        let lines: Vec<String> = self
            .chromium_log
            .lines()
            .filter(|l| !l.contains("dbus") && !l.contains("D-Bus"))
            .map(|l| l.split(", source: http").next().unwrap_or(l))
            .map(|l| l.chars().take(400).collect())
            .collect();
        let from = lines.len().saturating_sub(150);
        format!(
            "===== page report ({:.1} s) =====\n{}\n===== page console =====\n{}\n\
             ===== page server requests =====\n{}\n===== Chromium stderr (last {} lines) =====\n{}\n\
             ===== end of browser output =====",
            self.seconds,
            serde_json::to_string_pretty(&self.result).unwrap_or_default(),
            self.console.join("\n"),
            self.requests.join("\n"),
            lines.len() - from,
            lines[from..].join("\n")
        )
    }
}

/// Serve the page, open it in Chromium with `query`, wait (at most `within`)
/// for its report, stop Chromium. `dir` keeps the profile and the logs.
pub fn run_page(tools: &Tools, dir: &Path, query: &[(&str, &str)], within: Duration) -> PageRun {
    let t0 = Instant::now();
    let server = PageServer::start(&tools.umd);
    let qs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    let url = format!("http://{}/?{}", server.addr, qs.join("&"));
    let mut chromium = Chromium::start(&tools.chromium, dir, &url);
    let result = server.wait_result(within, &mut chromium);
    chromium.stop();
    let result = match result {
        Some(r) => serde_json::from_str(&r).unwrap_or(serde_json::Value::String(r)),
        None => serde_json::Value::Null,
    };
    PageRun {
        result,
        console: server.console(),
        chromium_log: chromium.log_text(),
        requests: server.requests(),
        seconds: t0.elapsed().as_secs_f64(),
    }
}

/// Percent-encoding for a query value (RFC 3986 unreserved kept).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
