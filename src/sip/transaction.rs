//! SIP transactions (RFC 3261 s17, with RFC 6026's Accepted state), sans-IO.
//!
//! Where it sits: between the parser and the call core on the shard that owns the
//! call. A request first meets [`Transactions::on_request`]: a retransmission is
//! absorbed here (the last response is sent again) and never reaches the call core,
//! so a retransmitted INVITE cannot create a second call. Responses the call core
//! sends go through [`Transactions::respond`], which keeps them for retransmission
//! and arms the timers. Client transactions carry the requests we originate (BYE).
//!
//! Time: every method takes `now`; timers live in one heap per table keyed by
//! transaction (lazy deletion: a popped entry fires only if it is still the armed
//! deadline). The driver asks [`Transactions::next_deadline`] and calls
//! [`Transactions::handle_timeout`] then.

use super::endpoint::Peer;
use super::message::{Method, SipMessage};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// RFC 3261 s17.1.1.1 timer values.
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
pub const T4: Duration = Duration::from_secs(5);

/// Cap on live transactions per shard: past it new requests are refused with 503
/// instead of growing memory without bound.
pub const MAX_TRANSACTIONS: usize = 200_000;

/// Identifies a transaction (s17.2.3). ACK maps to its INVITE.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxKey(String);

impl TxKey {
    /// Server transaction key of a request; `None` if it has no usable Via.
    pub fn for_request(req: &SipMessage) -> Option<TxKey> {
        let via = req.top_via().ok()?;
        let method = match req.method()? {
            Method::Ack => "INVITE",
            Method::Other => req.method_str(),
            m => m.as_str(),
        };
        let port = via.port.unwrap_or(0);
        match via.branch {
            // RFC 3261 branch: unique, so branch + sent-by + method identify it.
            Some(b) if b.starts_with("z9hG4bK") => Some(TxKey(format!(
                "{b}|{}:{port}|{method}",
                via.host.to_ascii_lowercase()
            ))),
            // RFC 2543 peer (s17.2.3 fallback): Call-ID, CSeq number, From tag, top Via.
            _ => {
                let cseq = req.cseq().ok()?.seq;
                let from_tag = req.from().ok().and_then(|f| f.tag()).unwrap_or("");
                Some(TxKey(format!(
                    "2543|{}|{cseq}|{from_tag}|{}|{method}",
                    req.call_id()?,
                    via.raw
                )))
            }
        }
    }

    /// Key of the INVITE transaction a CANCEL refers to (same branch, s9.2).
    pub fn invite_for_cancel(cancel: &SipMessage) -> Option<TxKey> {
        let k = TxKey::for_request(cancel)?;
        let s = k.0.strip_suffix("|CANCEL")?;
        Some(TxKey(format!("{s}|INVITE")))
    }

    /// Client transaction key: our branch and the method.
    pub fn client(branch: &str, method: Method) -> TxKey {
        TxKey(format!("c|{branch}|{}", method.as_str()))
    }

    /// Client transaction key of a response.
    pub fn for_response(resp: &SipMessage) -> Option<TxKey> {
        let via = resp.top_via().ok()?;
        let method = resp.cseq().ok()?.method;
        Some(TxKey::client(via.branch?, method))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE: request received, no response yet.
    Trying,
    Proceeding,
    Completed,
    /// INVITE: ACK received for a non-2xx final.
    Confirmed,
    /// INVITE: 2xx sent (RFC 6026); retransmitted INVITEs are absorbed.
    Accepted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TimerKind {
    /// Retransmit the final response (INVITE, unreliable transport).
    G,
    /// End of the transaction (H, I, J, L).
    End,
    /// Client: retransmit request (E).
    E,
    /// Client: give up (F) or linger end (K).
    ClientEnd,
}

struct ServerTx {
    invite: bool,
    state: ServerState,
    peer: Peer,
    last: Option<Bytes>,
    last_status: u16,
    g_interval: Duration,
    timer_g: Option<Instant>,
    timer_end: Option<Instant>,
    request: SipMessage,
}

struct ClientTx {
    peer: Peer,
    request: Bytes,
    e_interval: Duration,
    timer_e: Option<Instant>,
    timer_end: Option<Instant>,
    done: bool,
    call_id: String,
}

/// What the table asks the endpoint to do after a timer fired.
#[derive(Debug)]
pub enum TxOutput {
    /// Send these bytes again.
    Retransmit { peer: Peer, data: Bytes },
    /// INVITE server transaction: final non-2xx never acknowledged (Timer H).
    /// The call core treats the call as failed.
    NoAck { call_id: String },
    /// Client transaction timed out without a final response (Timer F).
    ClientTimeout { call_id: String, key: TxKey },
}

/// What became of an incoming request.
#[derive(Debug)]
pub enum RequestMatch {
    /// A new transaction was created: hand the request to the call core.
    New(TxKey),
    /// A retransmission: send `resend` (if a response was already sent) and stop.
    Retransmission { resend: Option<(Peer, Bytes)> },
    /// An ACK that completed a non-2xx INVITE transaction: nothing more to do.
    AckAbsorbed,
    /// An ACK that matched no transaction: the ACK for a 2xx, for the dialog.
    AckForDialog,
    /// Too many live transactions: refuse with 503.
    Overloaded,
}

/// All transactions of one shard.
#[derive(Default)]
pub struct Transactions {
    server: HashMap<TxKey, ServerTx>,
    client: HashMap<TxKey, ClientTx>,
    timers: BinaryHeap<Reverse<(Instant, u64, TxKey, TimerKindOrd)>>,
    seq: u64,
}

/// `TimerKind` with an order, for the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TimerKindOrd(u8);

impl From<TimerKind> for TimerKindOrd {
    fn from(k: TimerKind) -> Self {
        TimerKindOrd(match k {
            TimerKind::G => 0,
            TimerKind::End => 1,
            TimerKind::E => 2,
            TimerKind::ClientEnd => 3,
        })
    }
}

impl Transactions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.server.len() + self.client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Client transactions still waiting for a final response (BYEs in flight).
    pub fn client_pending(&self) -> usize {
        self.client.values().filter(|t| !t.done).count()
    }

    fn arm(&mut self, at: Instant, key: &TxKey, kind: TimerKind) {
        self.seq += 1;
        self.timers
            .push(Reverse((at, self.seq, key.clone(), kind.into())));
    }

    /// Match an incoming request against the server transactions (s17.2.3).
    pub fn on_request(&mut self, now: Instant, req: &SipMessage, peer: Peer) -> RequestMatch {
        let Some(key) = TxKey::for_request(req) else {
            // validate_request() ran before us, so a Via exists; be safe anyway.
            return RequestMatch::AckForDialog;
        };
        let is_ack = req.method() == Some(Method::Ack);
        if let Some(tx) = self.server.get_mut(&key) {
            if is_ack {
                if tx.invite && tx.state == ServerState::Completed {
                    // s17.2.1: ACK moves Completed -> Confirmed, Timer I = T4 (0 on TCP).
                    tx.state = ServerState::Confirmed;
                    tx.timer_g = None;
                    let at = now
                        + if peer.is_reliable() {
                            Duration::ZERO
                        } else {
                            T4
                        };
                    tx.timer_end = Some(at);
                    self.arm(at, &key, TimerKind::End);
                    return RequestMatch::AckAbsorbed;
                }
                if tx.invite && tx.state == ServerState::Confirmed {
                    return RequestMatch::AckAbsorbed;
                }
                // ACK for a 2xx carries the INVITE's branch only from RFC 2543 peers or
                // broken stacks; it belongs to the dialog either way.
                return RequestMatch::AckForDialog;
            }
            let resend = match tx.state {
                ServerState::Trying => None,
                _ => tx.last.clone().map(|d| (tx.peer, d)),
            };
            return RequestMatch::Retransmission { resend };
        }
        if is_ack {
            return RequestMatch::AckForDialog;
        }
        if self.server.len() >= MAX_TRANSACTIONS {
            return RequestMatch::Overloaded;
        }
        let invite = req.method() == Some(Method::Invite);
        self.server.insert(
            key.clone(),
            ServerTx {
                invite,
                state: if invite {
                    ServerState::Proceeding
                } else {
                    ServerState::Trying
                },
                peer,
                last: None,
                last_status: 0,
                g_interval: T1,
                timer_g: None,
                timer_end: None,
                request: req.clone(),
            },
        );
        RequestMatch::New(key)
    }

    /// Drop a server transaction without a response: the request was handed to
    /// the shard that owns the call, which runs its own transaction.
    pub fn forget(&mut self, key: &TxKey) {
        self.server.remove(key);
    }

    /// The flow a server transaction's request arrived on.
    pub fn peer(&self, key: &TxKey) -> Option<Peer> {
        self.server.get(key).map(|t| t.peer)
    }

    /// The request that opened a server transaction.
    pub fn request(&self, key: &TxKey) -> Option<&SipMessage> {
        self.server.get(key).map(|t| &t.request)
    }

    pub fn server_state(&self, key: &TxKey) -> Option<ServerState> {
        self.server.get(key).map(|t| t.state)
    }

    /// Final status already sent on this server transaction, if any.
    pub fn final_status(&self, key: &TxKey) -> Option<u16> {
        self.server
            .get(key)
            .map(|t| t.last_status)
            .filter(|s| *s >= 200)
    }

    /// Record and send a response on a server transaction. Returns where to send
    /// it, or `None` if the transaction is gone or already has a final response
    /// (a late response is never sent twice).
    pub fn respond(&mut self, now: Instant, key: &TxKey, status: u16, data: Bytes) -> Option<Peer> {
        let tx = self.server.get_mut(key)?;
        if tx.last_status >= 200 {
            return None;
        }
        tx.last = Some(data);
        tx.last_status = status;
        let peer = tx.peer;
        let reliable = peer.is_reliable();
        if status < 200 {
            tx.state = ServerState::Proceeding;
            return Some(peer);
        }
        let mut arms: Vec<(Instant, TimerKind)> = Vec::with_capacity(2);
        if tx.invite {
            if status < 300 {
                // RFC 6026 s7.1: Accepted, Timer L = 64*T1 absorbs INVITE retransmissions.
                tx.state = ServerState::Accepted;
                let at = now + 64 * T1;
                tx.timer_end = Some(at);
                arms.push((at, TimerKind::End));
            } else {
                tx.state = ServerState::Completed;
                if !reliable {
                    let at = now + tx.g_interval;
                    tx.timer_g = Some(at);
                    arms.push((at, TimerKind::G));
                }
                let at = now + 64 * T1; // Timer H
                tx.timer_end = Some(at);
                arms.push((at, TimerKind::End));
            }
        } else {
            tx.state = ServerState::Completed;
            // Timer J: 64*T1 on UDP to absorb retransmissions, 0 on TCP.
            let at = now + if reliable { Duration::ZERO } else { 64 * T1 };
            tx.timer_end = Some(at);
            arms.push((at, TimerKind::End));
        }
        for (at, kind) in arms {
            self.arm(at, key, kind);
        }
        Some(peer)
    }

    /// Start a non-INVITE client transaction (s17.1.2) for a request we send.
    pub fn start_client(
        &mut self,
        now: Instant,
        key: TxKey,
        peer: Peer,
        request: Bytes,
        call_id: &str,
    ) {
        let reliable = peer.is_reliable();
        let f = now + 64 * T1;
        let e = (!reliable).then(|| now + T1);
        self.client.insert(
            key.clone(),
            ClientTx {
                peer,
                request,
                e_interval: T1,
                timer_e: e,
                timer_end: Some(f),
                done: false,
                call_id: call_id.to_string(),
            },
        );
        if let Some(e) = e {
            self.arm(e, &key, TimerKind::E);
        }
        self.arm(f, &key, TimerKind::ClientEnd);
    }

    /// A response arrived for a client transaction. Returns the call it belongs to
    /// when it is the first final response; provisional and retransmitted finals
    /// return `None`.
    pub fn on_response(&mut self, now: Instant, key: &TxKey, status: u16) -> Option<String> {
        let tx = self.client.get_mut(key)?;
        if status < 200 {
            // s17.1.2.2 Proceeding: keep retransmitting at T2.
            tx.e_interval = T2;
            return None;
        }
        if tx.done {
            return None;
        }
        tx.done = true;
        tx.timer_e = None;
        // Timer K: T4 on UDP to absorb retransmitted responses, 0 on TCP.
        let at = now
            + if tx.peer.is_reliable() {
                Duration::ZERO
            } else {
                T4
            };
        tx.timer_end = Some(at);
        let call = tx.call_id.clone();
        self.arm(at, key, TimerKind::ClientEnd);
        Some(call)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, ..))| *at)
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<TxOutput>) {
        while let Some(Reverse((at, _, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, _, key, kind))) = self.timers.pop() else {
                break;
            };
            match kind.0 {
                0 => self.fire_g(now, at, &key, out),
                1 => self.fire_server_end(at, &key, out),
                2 => self.fire_e(now, at, &key, out),
                _ => self.fire_client_end(at, &key, out),
            }
        }
    }

    fn fire_g(&mut self, now: Instant, at: Instant, key: &TxKey, out: &mut Vec<TxOutput>) {
        let Some(tx) = self.server.get_mut(key) else {
            return;
        };
        if tx.timer_g != Some(at) || tx.state != ServerState::Completed {
            return;
        }
        if let Some(d) = &tx.last {
            out.push(TxOutput::Retransmit {
                peer: tx.peer,
                data: d.clone(),
            });
        }
        // s17.2.1: Timer G doubles up to T2.
        tx.g_interval = (tx.g_interval * 2).min(T2);
        let next = now + tx.g_interval;
        tx.timer_g = Some(next);
        self.arm(next, key, TimerKind::G);
    }

    fn fire_server_end(&mut self, at: Instant, key: &TxKey, out: &mut Vec<TxOutput>) {
        let Some(tx) = self.server.get(key) else {
            return;
        };
        if tx.timer_end != Some(at) {
            return;
        }
        if tx.invite && tx.state == ServerState::Completed {
            // Timer H: the ACK never came (s17.2.1).
            if let Some(cid) = tx.request.call_id() {
                out.push(TxOutput::NoAck {
                    call_id: cid.to_string(),
                });
            }
        }
        self.server.remove(key);
    }

    fn fire_e(&mut self, now: Instant, at: Instant, key: &TxKey, out: &mut Vec<TxOutput>) {
        let Some(tx) = self.client.get_mut(key) else {
            return;
        };
        if tx.timer_e != Some(at) || tx.done {
            return;
        }
        out.push(TxOutput::Retransmit {
            peer: tx.peer,
            data: tx.request.clone(),
        });
        tx.e_interval = (tx.e_interval * 2).min(T2);
        let next = now + tx.e_interval;
        tx.timer_e = Some(next);
        self.arm(next, key, TimerKind::E);
    }

    fn fire_client_end(&mut self, at: Instant, key: &TxKey, out: &mut Vec<TxOutput>) {
        let Some(tx) = self.client.get(key) else {
            return;
        };
        if tx.timer_end != Some(at) {
            return;
        }
        if !tx.done {
            out.push(TxOutput::ClientTimeout {
                call_id: tx.call_id.clone(),
                key: key.clone(),
            });
        }
        self.client.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::endpoint::{Peer, Transport};

    fn peer(t: Transport) -> Peer {
        Peer {
            transport: t,
            remote: "127.0.0.1:5061".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        }
    }

    fn req(method: &str, branch: &str) -> SipMessage {
        let s = format!("{method} sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n\r\n");
        SipMessage::parse(Bytes::from(s)).unwrap()
    }

    #[test]
    fn invite_retransmission_is_absorbed_and_resent() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let p = peer(Transport::Udp);
        let inv = req("INVITE", "z9hG4bK-a");
        let RequestMatch::New(key) = t.on_request(now, &inv, p) else {
            panic!("first INVITE must be new")
        };
        // Retransmission before any response: absorbed, nothing to resend.
        assert!(matches!(
            t.on_request(now, &inv, p),
            RequestMatch::Retransmission { resend: None }
        ));
        t.respond(now, &key, 180, Bytes::from_static(b"180"));
        match t.on_request(now, &inv, p) {
            RequestMatch::Retransmission {
                resend: Some((_, d)),
            } => assert_eq!(&d[..], b"180"),
            other => panic!("{other:?}"),
        }
        t.respond(now, &key, 200, Bytes::from_static(b"200"));
        assert_eq!(t.server_state(&key), Some(ServerState::Accepted));
        // A late second final is not sent.
        assert!(t
            .respond(now, &key, 486, Bytes::from_static(b"486"))
            .is_none());
        match t.on_request(now, &inv, p) {
            RequestMatch::Retransmission {
                resend: Some((_, d)),
            } => assert_eq!(&d[..], b"200"),
            other => panic!("{other:?}"),
        }
        // Timer L ends it.
        let mut out = vec![];
        t.handle_timeout(now + 64 * T1, &mut out);
        assert!(t.is_empty());
    }

    #[test]
    fn non_2xx_final_retransmits_until_ack() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let p = peer(Transport::Udp);
        let inv = req("INVITE", "z9hG4bK-b");
        let RequestMatch::New(key) = t.on_request(now, &inv, p) else {
            panic!()
        };
        t.respond(now, &key, 486, Bytes::from_static(b"486"));
        let mut out = vec![];
        // Timer G: T1, then 2*T1 later.
        t.handle_timeout(now + T1, &mut out);
        assert_eq!(out.len(), 1);
        t.handle_timeout(now + T1 + T1, &mut out);
        assert_eq!(out.len(), 1, "second G fires at 3*T1, not 2*T1");
        t.handle_timeout(now + 3 * T1, &mut out);
        assert_eq!(out.len(), 2);
        let ack = req("ACK", "z9hG4bK-b");
        assert!(matches!(
            t.on_request(now + 3 * T1, &ack, p),
            RequestMatch::AckAbsorbed
        ));
        out.clear();
        t.handle_timeout(now + 20 * T1, &mut out);
        assert!(out.is_empty(), "no retransmission after ACK: {out:?}");
        assert!(t.is_empty(), "Timer I ended it");
    }

    #[test]
    fn missing_ack_reports_no_ack() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let p = peer(Transport::Tcp);
        let inv = req("INVITE", "z9hG4bK-c");
        let RequestMatch::New(key) = t.on_request(now, &inv, p) else {
            panic!()
        };
        t.respond(now, &key, 487, Bytes::from_static(b"487"));
        let mut out = vec![];
        t.handle_timeout(now + 64 * T1, &mut out);
        assert!(
            matches!(&out[..], [TxOutput::NoAck { call_id }] if call_id == "c1"),
            "{out:?}"
        );
    }

    #[test]
    fn cancel_finds_its_invite() {
        let inv = req("INVITE", "z9hG4bK-d");
        let cancel = req("CANCEL", "z9hG4bK-d");
        assert_eq!(TxKey::invite_for_cancel(&cancel), TxKey::for_request(&inv));
        assert_ne!(TxKey::for_request(&cancel), TxKey::for_request(&inv));
    }

    #[test]
    fn client_transaction_retransmits_and_times_out() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let p = peer(Transport::Udp);
        let key = TxKey::client("z9hG4bK-sb0-1", Method::Bye);
        t.start_client(now, key.clone(), p, Bytes::from_static(b"BYE"), "c1");
        let mut out = vec![];
        let mut at = now;
        while at < now + 64 * T1 {
            at += Duration::from_millis(100);
            t.handle_timeout(at, &mut out);
        }
        let retrans = out
            .iter()
            .filter(|o| matches!(o, TxOutput::Retransmit { .. }))
            .count();
        // E fires at 0.5, 1.5, 3.5, 7.5, then every 4 s up to 32 s: 4 + 6 = 10 times.
        assert_eq!(retrans, 10);
        assert!(matches!(out.last(), Some(TxOutput::ClientTimeout { .. })));
        assert!(t.is_empty());
    }

    #[test]
    fn client_transaction_final_response() {
        let mut t = Transactions::new();
        let now = Instant::now();
        let key = TxKey::client("z9hG4bK-sb0-2", Method::Bye);
        t.start_client(
            now,
            key.clone(),
            peer(Transport::Udp),
            Bytes::from_static(b"BYE"),
            "c9",
        );
        assert_eq!(t.on_response(now, &key, 200).as_deref(), Some("c9"));
        assert_eq!(t.on_response(now, &key, 200), None, "retransmitted 200");
        let mut out = vec![];
        t.handle_timeout(now + T4, &mut out);
        assert!(out.is_empty());
        assert!(t.is_empty());
    }
}
