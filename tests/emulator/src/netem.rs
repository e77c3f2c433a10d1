//! `truid-netem`: a TCP proxy on loopback that makes the link to an upstream look like a WAN
//! and its middleboxes: a round-trip time, a front end that closes idle connections, a NAT or
//! firewall that silently forgets them. For the WAN benchmark and the link-fault tests.
//!
//! Start it in-process with [`Netem::start`], or run the `truid-netem` binary.
//!
//! # What it models
//! The proxy stands for the whole path: the client on one side, the server (tru.ID and its
//! front end) on the other, `d = rtt / 2` of one-way delay between them. Bandwidth is not
//! limited and nothing is lost except where said.
//! - **Bytes**: each chunk read from one side is written to the other at its arrival time + `d`,
//!   in order per direction (one queue of (due time, bytes) per direction, no sleep per byte).
//! - **Connection setup**: the client's `connect()` ends at once on loopback, where a real one
//!   takes 1 RTT; so the client's bytes count as sent no earlier than 1 RTT after the accept
//!   (due at `max(arrival, accept + rtt) + d`), the server's no earlier than 1.5 RTT (when its
//!   accept would return; due at `max(arrival, accept + 1.5 rtt) + d`), and the upstream
//!   connect is made `d` after the accept (when the SYN would arrive). A plain request then
//!   costs 2 RTT on a fresh connection and 1 RTT on a kept one; TLS 1.3 adds 1 RTT, TLS 1.2
//!   2 RTT, as on a real link. A refused upstream resets the client 1 RTT after its accept.
//! - **End of stream and resets** travel like bytes: a FIN (or a reset) from one side reaches
//!   the other `d` later, after the bytes sent before it. A side that closed fully (a server
//!   closing a kept-alive connection) resets what it is sent next: that reset reaches the other
//!   side `d` after the upstream's kernel sent it, so 1 RTT after the client's bytes.
//! - **`idle_fin`** (a front end's keep-alive timeout: Apache 5 s, AWS ALB 60 s, nginx 75 s):
//!   after that long without a byte either way, the server side closes: FIN to the upstream at
//!   once, FIN to the client `d` later. Bytes the client sends after that reach a closed socket
//!   and draw a reset, which arrives 1 RTT after they were sent.
//! - **`idle_drop`** (a NAT or firewall that forgot the connection: no FIN, no reset): after
//!   that long without traffic, every byte in either direction is dropped and nothing is
//!   closed, until the client closes; then the proxy closes both sides. Traffic is a byte
//!   either way or any TCP segment from the client: as at a real NAT, the client's TCP
//!   keepalive probes keep the connection alive. The proxy never sees a probe (its kernel
//!   answers it), so it reads the client socket's segment counter (Linux `tcpi_segs_in`) every
//!   250 ms: a probe restarts the clock when seen, so a drop after a probe comes up to 250 ms
//!   late (without probes it comes on time). The server's probes are not watched. Limit: once
//!   dead, the proxy's own kernel still acknowledges what the client sends (bytes are read and
//!   thrown away, probes answered), so neither keepalive nor `TCP_USER_TIMEOUT` on the client
//!   notices the dead link; only an application deadline does.
//! - Whichever idle limit comes first applies; a dead link is never closed by `idle_fin`.
//!   Keepalive probes do not postpone `idle_fin`: a front end counts HTTP bytes only.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// How to start a [`Netem`].
#[derive(Clone, Debug)]
pub struct NetemOptions {
    /// Address to listen on; port 0 picks a free one. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Where connections are forwarded.
    pub upstream: SocketAddr,
    /// Round-trip time added (half each way). Default zero.
    pub rtt: Duration,
    /// Close a connection idle this long with FIN both ways (a front end's keep-alive timeout).
    pub idle_fin: Option<Duration>,
    /// A connection idle this long goes silently dead (a NAT or firewall that forgot it).
    pub idle_drop: Option<Duration>,
    /// Write one JSON line per connection event on stderr (the binary's log).
    pub log_events: bool,
}

impl NetemOptions {
    /// A proxy to `upstream` on a free loopback port, with no delay and no idle limit.
    pub fn new(upstream: SocketAddr) -> NetemOptions {
        NetemOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream,
            rtt: Duration::ZERO,
            idle_fin: None,
            idle_drop: None,
            log_events: false,
        }
    }
}

/// Counters of a [`Netem`].
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct NetemStats {
    pub connections_accepted: u64,
    /// Connections closed by `idle_fin`.
    pub closed_idle_fin: u64,
    /// Connections gone silently dead by `idle_drop`.
    pub blackholed: u64,
    /// Connections that TCP keepalive probes kept alive past `idle_drop` (counted once each).
    pub keepalive_kept: u64,
    /// Connections whose upstream connect failed.
    pub upstream_failed: u64,
    /// Connections open now.
    pub open: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    idle_fin: AtomicU64,
    blackholed: AtomicU64,
    keepalive_kept: AtomicU64,
    upstream_failed: AtomicU64,
    open: AtomicU64,
}

struct Shared {
    opts: NetemOptions,
    counters: Counters,
}

impl Shared {
    fn stats(&self) -> NetemStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetemStats {
            connections_accepted: g(&c.accepted),
            closed_idle_fin: g(&c.idle_fin),
            blackholed: g(&c.blackholed),
            keepalive_kept: g(&c.keepalive_kept),
            upstream_failed: g(&c.upstream_failed),
            open: g(&c.open),
        }
    }

    fn event(&self, conn: u64, event: &str) {
        if self.opts.log_events {
            let line = serde_json::json!({"event": event, "conn": conn, "stats": self.stats()});
            eprintln!("{line}");
        }
    }
}

/// A running proxy. Dropping it stops it and closes every connection.
pub struct Netem {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Netem {
    /// Starts the proxy on its own tokio runtime; returns once it listens.
    pub fn start(opts: NetemOptions) -> io::Result<Netem> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("truid-netem")
            .enable_all()
            .build()?;
        let listener = StdTcpListener::bind(opts.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            opts,
            counters: Counters::default(),
        });
        {
            let _guard = runtime.enter();
            let listener = TcpListener::from_std(listener)?;
            runtime.spawn(accept_loop(shared.clone(), listener));
        }
        Ok(Netem {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetemStats {
        self.shared.stats()
    }

    /// Stops the proxy and closes every connection.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut next_id = 0u64;
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let accepted = Instant::now();
                next_id += 1;
                shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = sock.set_nodelay(true);
                tokio::spawn(serve(shared.clone(), sock, next_id, accepted));
            }
            Err(e) => {
                eprintln!("truid-netem: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<Shared>, u64);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::Relaxed);
        self.0.event(self.1, "close");
    }
}

/// The idle clock of one connection, and how many directions have delivered their FIN.
struct Link {
    born: Instant,
    /// Nanoseconds after `born` of the last byte read or written, either way.
    last: AtomicU64,
    ended: watch::Sender<u8>,
}

impl Link {
    fn touch(&self) {
        let ns = Instant::now()
            .saturating_duration_since(self.born)
            .as_nanos();
        self.last
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.born + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Idle {
    Fin,
    Drop,
}

/// How the open phase of a connection ended.
enum Outcome {
    /// Both directions delivered their end of stream.
    Done,
    /// A reset is due on one side (true: the client, false: the upstream), or a write failed
    /// (None: reset both).
    Reset(Option<bool>),
    Idle(Idle),
}

async fn serve(shared: Arc<Shared>, mut client: TcpStream, id: u64, accepted: Instant) {
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(shared.clone(), id);
    shared.event(id, "accept");
    let opts = &shared.opts;
    let rtt = opts.rtt;
    let d = rtt / 2;

    // The SYN reaches the server half a round trip after the client sent it.
    sleep_until(accepted + d).await;
    let connect = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(opts.upstream));
    let mut upstream = match connect.await {
        Ok(Ok(s)) => s,
        _ => {
            shared
                .counters
                .upstream_failed
                .fetch_add(1, Ordering::Relaxed);
            shared.event(id, "upstream_failed");
            // The refusal (a reset) reaches the client a round trip after its SYN.
            sleep_until(accepted + rtt).await;
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    // Read before the split borrows `client`; `client` outlives the watchdog that uses it.
    let client_fd = client.as_raw_fd();

    let link = Link {
        born: accepted,
        last: AtomicU64::new(0),
        ended: watch::Sender::new(0),
    };
    let outcome = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let up = forward(&mut cr, &mut uw, accepted + rtt, d, &link);
        let down = forward(&mut ur, &mut cw, accepted + rtt + d, d, &link);
        let kept = || {
            shared
                .counters
                .keepalive_kept
                .fetch_add(1, Ordering::Relaxed);
            shared.event(id, "keepalive_kept");
        };
        let idle = watchdog(&link, client_fd, opts.idle_fin, opts.idle_drop, kept);
        tokio::pin!(up, down, idle);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                end = &mut up, if !up_done => match end {
                    End::Eof => up_done = true,
                    End::Reset => break Outcome::Reset(Some(false)),
                    End::Broken => break Outcome::Reset(None),
                },
                end = &mut down, if !down_done => match end {
                    End::Eof => down_done = true,
                    End::Reset => break Outcome::Reset(Some(true)),
                    End::Broken => break Outcome::Reset(None),
                },
                what = &mut idle => break Outcome::Idle(what),
            }
            if up_done && down_done {
                break Outcome::Done;
            }
        }
    };
    match outcome {
        Outcome::Done => {}
        Outcome::Reset(side) => {
            if side != Some(false) {
                let _ = client.set_zero_linger();
            }
            if side != Some(true) {
                let _ = upstream.set_zero_linger();
            }
        }
        Outcome::Idle(Idle::Fin) => {
            shared.counters.idle_fin.fetch_add(1, Ordering::Relaxed);
            shared.event(id, "idle_fin");
            // The front end closes: its FIN reaches the server now (dropping closes it).
            drop(upstream);
            closed_by_server(&mut client, rtt).await;
        }
        Outcome::Idle(Idle::Drop) => {
            shared.counters.blackholed.fetch_add(1, Ordering::Relaxed);
            shared.event(id, "blackhole");
            blackhole(&mut client).await;
            // The client closed: only now does the proxy close both sides.
        }
    }
}

/// The server side closed at `now`: FIN to the client half a round trip later; bytes from the
/// client after that draw a reset a round trip after they were sent. Returns when the client
/// closes too or the reset is sent.
async fn closed_by_server(client: &mut TcpStream, rtt: Duration) {
    let fin_at = Instant::now() + rtt / 2;
    let mut fin_sent = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = sleep_until(fin_at), if !fin_sent => {
                let _ = client.shutdown().await;
                fin_sent = true;
            }
            r = client.read(&mut buf) => {
                let sent = Instant::now();
                if !fin_sent {
                    sleep_until(fin_at).await;
                    let _ = client.shutdown().await;
                }
                if let Ok(n) = r {
                    if n > 0 {
                        sleep_until(sent + rtt).await;
                        let _ = client.set_zero_linger();
                    }
                }
                return;
            }
        }
    }
}

/// Reads and drops whatever the client sends, until it closes.
async fn blackhole(client: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// How often the idle-drop clock reads the client socket's segment counter while it runs.
const PROBE_POLL: Duration = Duration::from_millis(250);

/// Segment counters of a TCP socket, from Linux's `tcp_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segs {
    /// Segments received, pure ACKs and keepalive probes included.
    segs_in: u32,
    /// Our segments not acknowledged yet.
    unacked: u32,
}

/// The counters of TCP socket `fd`; None if the kernel has none (not TCP, or Linux < 4.2).
fn tcp_segs(fd: RawFd) -> Option<Segs> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes, the size of `info`, and sets `len` to
    // what it wrote. Any fd is sound: a closed or foreign one makes the call fail or describe
    // another socket, never write out of bounds.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let need = std::mem::offset_of!(libc::tcp_info, tcpi_segs_in) + std::mem::size_of::<u32>();
    if rc != 0 || (len as usize) < need {
        return None;
    }
    // SAFETY: tcp_info is plain integers, so the zeroed-then-partly-written bytes are valid.
    let info = unsafe { info.assume_init() };
    Some(Segs {
        segs_in: info.tcpi_segs_in,
        unacked: info.tcpi_unacked,
    })
}

/// Segments from the client that carried no byte (keepalive probes): what a NAT sees as
/// traffic although the proxy reads nothing.
struct Probes {
    fd: RawFd,
    /// The byte clock and the counters at the last look.
    bytes: Instant,
    segs: Option<Segs>,
    /// When the last probe was seen.
    seen: Option<Instant>,
}

impl Probes {
    fn new(fd: RawFd, bytes: Instant) -> Probes {
        Probes {
            fd,
            bytes,
            segs: tcp_segs(fd),
            seen: None,
        }
    }

    /// Looks at the counters; returns the last traffic a NAT saw: a byte or a probe.
    fn look(&mut self, bytes: Instant, now: Instant) -> Instant {
        let segs = tcp_segs(self.fd);
        // A segment came in while no byte moved. Not the ACK of our own data: that is owed
        // only while some is unacknowledged, and our data counted already. (A segment that
        // brings bytes not yet read counts early, by the time the proxy takes to read it.)
        if let (Some(old), Some(new)) = (self.segs, segs) {
            if bytes == self.bytes && new.segs_in != old.segs_in && old.unacked == 0 {
                self.seen = Some(now);
            }
        }
        self.bytes = bytes;
        self.segs = segs;
        self.seen.map_or(bytes, |p| p.max(bytes))
    }
}

/// Resolves when the link has been idle for the first limit reached: `fin` counts bytes only
/// (a front end), `dead` counts the client's keepalive probes too (a NAT). Calls `kept` once
/// if probes keep the link alive past `dead`.
async fn watchdog(
    link: &Link,
    client: RawFd,
    fin: Option<Duration>,
    dead: Option<Duration>,
    kept: impl FnOnce(),
) -> Idle {
    if fin.is_none() && dead.is_none() {
        return std::future::pending().await;
    }
    let mut probes = dead.map(|_| Probes::new(client, link.last()));
    let mut kept = Some(kept);
    loop {
        let now = Instant::now();
        let bytes = link.last();
        let fin_at = fin.map(|l| bytes + l);
        let mut drop_at = None;
        if let (Some(limit), Some(p)) = (dead, probes.as_mut()) {
            let at = p.look(bytes, now) + limit;
            if bytes + limit <= now && now < at {
                if let Some(k) = kept.take() {
                    k();
                }
            }
            drop_at = Some(at);
        }
        // On a tie the front end closes first, as before.
        let first = match (fin_at, drop_at) {
            (Some(f), Some(d)) if d < f => (d, Idle::Drop),
            (Some(f), _) => (f, Idle::Fin),
            (None, Some(d)) => (d, Idle::Drop),
            (None, None) => return std::future::pending().await,
        };
        if now >= first.0 {
            return first.1;
        }
        // While probes are watched, look again soon: a probe's time is known only to that.
        let wake = match probes {
            Some(_) => first.0.min(now + PROBE_POLL),
            None => first.0,
        };
        sleep_until(wake).await;
    }
}

/// After the source's FIN was delivered: the source may still reset (a side that closed fully
/// resets what it is sent next); pass that on `delay` later. Returns `Eof` once the other
/// direction has delivered its FIN too.
async fn after_fin(src: &ReadHalf<'_>, delay: Duration, link: &Link) -> End {
    link.ended.send_modify(|n| *n += 1);
    let mut ended = link.ended.subscribe();
    let reset = async {
        loop {
            match src.as_ref().ready(Interest::ERROR).await {
                Ok(r) if !r.is_error() => continue,
                _ => break,
            }
        }
        let at = Instant::now() + delay;
        sleep_until(at).await;
    };
    tokio::select! {
        _ = reset => End::Reset,
        _ = ended.wait_for(|n| *n >= 2) => End::Eof,
    }
}

/// Stop reading a side while this much is queued towards the other (a slow reader there).
const MAX_QUEUED: usize = 4 << 20;

enum Item {
    Data(Vec<u8>),
    Eof,
    Reset,
}

/// How one direction ended.
enum End {
    /// Both directions delivered their end of stream (FIN).
    Eof,
    /// The source reset; the reset is due on the destination now.
    Reset,
    /// Writing to the destination failed.
    Broken,
}

/// One direction: each chunk read from `src` is written to `dst` at `max(arrival, floor) +
/// delay`, in order.
async fn forward(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    floor: Instant,
    delay: Duration,
    link: &Link,
) -> End {
    let mut queue: VecDeque<(Instant, Item)> = VecDeque::new();
    let mut queued = 0usize;
    let mut reading = true;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let due = queue.front().map(|(t, _)| *t);
        tokio::select! {
            r = src.read(&mut buf), if reading && queued < MAX_QUEUED => {
                let at = Instant::now().max(floor) + delay;
                let item = match r {
                    Ok(0) => Item::Eof,
                    Ok(n) => {
                        link.touch();
                        queued += n;
                        Item::Data(buf.get(..n).unwrap_or_default().to_vec())
                    }
                    Err(_) => Item::Reset,
                };
                reading = matches!(item, Item::Data(_));
                queue.push_back((at, item));
            }
            _ = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let now = Instant::now();
                while queue.front().is_some_and(|(t, _)| *t <= now) {
                    let Some((_, item)) = queue.pop_front() else { break };
                    match item {
                        Item::Data(b) => {
                            queued -= b.len();
                            if dst.write_all(&b).await.is_err() {
                                return End::Broken;
                            }
                            link.touch();
                        }
                        Item::Eof => {
                            let _ = dst.shutdown().await;
                            return after_fin(src, delay, link).await;
                        }
                        Item::Reset => return End::Reset,
                    }
                }
            }
            // Not reached: reading stops only with an end queued, which returns once delivered.
            else => return End::Broken,
        }
    }
}
