//! The delaying proxy: its round trip, connection setup, order, idle FIN, silent drop (and TCP
//! keepalive keeping it off), a refused upstream, and the binary. Timings are functional
//! properties of the proxy, measured on loopback: lower bounds exact, upper bounds half a round
//! trip above (an error of half a round trip in the model fails them).

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::poll;
use truid_emulator::{Emulator, Netem, NetemOptions, Options};

/// What the echo server saw on one of its connections.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Data(usize),
    Eof,
    Error,
}

/// An upstream that echoes every byte back and reports what it saw; stopped on drop.
struct Echo {
    addr: SocketAddr,
    seen: mpsc::Receiver<Seen>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start() -> Echo {
        Echo::closing_after(None)
    }

    /// An echo server that closes each connection after echoing `chunks` reads (as a server
    /// closes a kept-alive connection).
    fn closing_after(chunks: Option<usize>) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    for _ in 0..chunks.unwrap_or(usize::MAX) {
                        match conn.read(&mut buf) {
                            Ok(0) => {
                                let _ = tx.send(Seen::Eof);
                                return;
                            }
                            Ok(n) => {
                                let _ = tx.send(Seen::Data(n));
                                if conn.write_all(&buf[..n]).is_err() {
                                    let _ = tx.send(Seen::Error);
                                    return;
                                }
                            }
                            Err(_) => {
                                let _ = tx.send(Seen::Error);
                                return;
                            }
                        }
                    }
                    // Dropping `conn` closes it fully: what comes next draws a reset.
                });
            }
        });
        Echo { addr, seen, stop }
    }

    /// The next event, within `limit`.
    fn next(&self, limit: Duration) -> Option<Seen> {
        self.seen.recv_timeout(limit).ok()
    }

    /// Whether `want` comes within `limit` (other events before it are skipped).
    fn until(&self, want: &Seen, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.seen.recv_timeout(left) {
                Ok(s) if &s == want => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn proxy(upstream: SocketAddr, f: impl FnOnce(&mut NetemOptions)) -> Netem {
    let mut o = NetemOptions::new(upstream);
    f(&mut o);
    Netem::start(o).expect("netem starts")
}

/// Writes `msg` and reads its echo; the time it took.
fn exchange(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let t = Instant::now();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    t.elapsed()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[test]
fn rtt_costs_one_round_trip_per_exchange_and_one_for_the_handshake() {
    let echo = Echo::start();
    let netem = proxy(echo.addr, |o| o.rtt = Duration::from_millis(100));
    let t = Instant::now();
    let mut s = TcpStream::connect(netem.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut s, b"first");
    // A fresh connection: TCP's handshake (1 RTT), then the exchange (1 RTT).
    let first = t.elapsed();
    assert!(
        (200..250).contains(&ms(first)),
        "connect + first exchange took {first:?}"
    );
    for n in 0..3 {
        let d = exchange(&mut s, format!("again {n}").as_bytes());
        assert!((100..150).contains(&ms(d)), "exchange {n} took {d:?}");
    }
    assert_eq!(netem.stats().connections_accepted, 1);
}

#[test]
fn tls_through_the_proxy_costs_tcp_tls_and_request_round_trips() {
    let emu = Emulator::start(Options::default()).unwrap();
    let upstream: SocketAddr = emu
        .info()
        .base_url
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let netem = proxy(upstream, |o| o.rtt = Duration::from_millis(200));
    let c = common::client(&emu, Duration::from_secs(10));
    let url = format!("https://{}/_emulator/info", netem.addr());
    let get = || {
        let t = Instant::now();
        let r = c.get(&url).send().unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["base_url"], emu.info().base_url.as_str());
        t.elapsed()
    };
    // TCP (1 RTT) + TLS 1.3 (1 RTT) + the request (1 RTT).
    let first = get();
    assert!((600..700).contains(&ms(first)), "first request {first:?}");
    // The kept connection: the request alone.
    let second = get();
    assert!(
        (200..300).contains(&ms(second)),
        "second request {second:?}"
    );
    assert_eq!(netem.stats().connections_accepted, 1);
    assert_eq!(emu.stats().tls_handshakes, 1);
}

#[test]
fn bytes_keep_their_order_and_the_fin_follows_them() {
    let echo = Echo::start();
    let netem = proxy(echo.addr, |o| o.rtt = Duration::from_millis(20));
    let mut s = TcpStream::connect(netem.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in sent.chunks(1000) {
            w.write_all(chunk).unwrap();
        }
        // Half-close: the echo server sees EOF after the last byte and closes in turn.
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes out of order or changed");
    assert!(echo.until(&Seen::Eof, Duration::from_secs(5)));
    assert!(poll(Duration::from_secs(5), || (netem.stats().open == 0)
        .then_some(()))
    .is_some());
}

#[test]
fn idle_fin_closes_both_ways_after_the_idle_time_only() {
    let echo = Echo::start();
    let netem = proxy(echo.addr, |o| {
        o.rtt = Duration::from_millis(20);
        o.idle_fin = Some(Duration::from_secs(1));
    });
    let mut s = TcpStream::connect(netem.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut s, b"hello");
    // Gaps shorter than the limit, 1.4 s in all: each byte restarts the idle clock. (The
    // sleeps are the idle time under test, not a synchronisation.)
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        exchange(&mut s, b"still here");
    }
    let last = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).expect("a FIN, not a timeout");
    let idle = last.elapsed();
    assert_eq!(n, 0, "end of stream");
    // 1 s idle, then the FIN takes half a round trip.
    assert!((1000..1500).contains(&ms(idle)), "FIN after {idle:?}");
    assert!(
        echo.until(&Seen::Eof, Duration::from_secs(2)),
        "the upstream got a FIN too"
    );
    assert_eq!(netem.stats().closed_idle_fin, 1);
    assert_eq!(netem.stats().blackholed, 0);
    drop(s);
    assert!(poll(Duration::from_secs(5), || (netem.stats().open == 0)
        .then_some(()))
    .is_some());
}

#[test]
fn idle_fin_then_a_request_draws_a_reset() {
    let echo = Echo::start();
    let netem = proxy(echo.addr, |o| o.idle_fin = Some(Duration::from_millis(300)));
    let mut s = TcpStream::connect(netem.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut s, b"x");
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "FIN");
    // A client that did not notice the FIN sends its next request: the front end is gone.
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let r = s.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "no answer: {r:?}");
    let w = poll(Duration::from_secs(5), || {
        s.write_all(b"more").err().map(|e| e.kind())
    });
    assert!(
        matches!(w, Some(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)),
        "reset: {w:?}"
    );
    // The upstream saw the first exchange and the FIN, never the late request.
    assert_eq!(echo.next(Duration::from_secs(1)), Some(Seen::Data(1)));
    assert_eq!(echo.next(Duration::from_secs(1)), Some(Seen::Eof));
    assert_eq!(echo.next(Duration::from_millis(200)), None);
    assert_eq!(netem.stats().closed_idle_fin, 1);
}

#[test]
fn idle_drop_goes_silent_until_the_client_closes() {
    let echo = Echo::start();
    let netem = proxy(echo.addr, |o| {
        o.rtt = Duration::from_millis(20);
        o.idle_drop = Some(Duration::from_secs(1));
        o.idle_fin = Some(Duration::from_secs(3));
    });
    let mut s = TcpStream::connect(netem.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut s, b"hello");
    let last = Instant::now();
    assert_eq!(echo.next(Duration::from_secs(1)), Some(Seen::Data(5)));
    poll(Duration::from_secs(5), || {
        (netem.stats().blackholed == 1).then_some(())
    })
    .expect("the link goes dead");
    assert!(last.elapsed() >= Duration::from_secs(1));

    // The next request goes unanswered, and the connection stays open: no FIN, no reset,
    // also past the idle-fin limit.
    s.write_all(b"anyone?").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "read times out: {r:?}"
    );
    s.write_all(b"still?").unwrap();
    assert_eq!(
        echo.next(Duration::from_millis(0)),
        None,
        "upstream saw nothing"
    );
    assert_eq!(netem.stats().open, 1);
    assert_eq!(netem.stats().closed_idle_fin, 0);

    // The client gives up: only now is the upstream closed.
    drop(s);
    assert!(echo.until(&Seen::Eof, Duration::from_secs(5)));
    assert!(poll(Duration::from_secs(5), || (netem.stats().open == 0)
        .then_some(()))
    .is_some());
}

/// Turns on TCP keepalive: the first probe after `idle_secs` without traffic, then one every
/// `interval_secs`.
fn keepalive(s: &TcpStream, idle_secs: libc::c_int, interval_secs: libc::c_int) {
    use std::os::fd::AsRawFd;
    let set = |level, name, value: libc::c_int| {
        // SAFETY: `value` is a live c_int and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
    };
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_secs);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval_secs);
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
}

/// A client of a proxy with idle_drop = 2 s, after one exchange and then 4 s idle (the idle
/// time under test, not a synchronisation).
fn idle_4s_behind_idle_drop_2s(echo: &Echo, keep: bool) -> (Netem, TcpStream) {
    let netem = proxy(echo.addr, |o| o.idle_drop = Some(Duration::from_secs(2)));
    let mut s = TcpStream::connect(netem.addr()).unwrap();
    if keep {
        keepalive(&s, 1, 1);
    }
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    exchange(&mut s, b"hello");
    assert_eq!(echo.next(Duration::from_secs(1)), Some(Seen::Data(5)));
    std::thread::sleep(Duration::from_secs(4));
    (netem, s)
}

#[test]
fn idle_drop_is_kept_off_by_tcp_keepalive_probes_as_at_a_nat() {
    let echo = Echo::start();
    let (netem, mut s) = idle_4s_behind_idle_drop_2s(&echo, true);
    // No byte for 4 s, but a probe every second: the NAT kept the mapping.
    exchange(&mut s, b"still there?");
    assert_eq!(echo.next(Duration::from_secs(1)), Some(Seen::Data(12)));
    assert_eq!(netem.stats().blackholed, 0);
    assert_eq!(netem.stats().keepalive_kept, 1);
}

#[test]
fn idle_drop_without_keepalive_goes_dead() {
    let echo = Echo::start();
    let (netem, mut s) = idle_4s_behind_idle_drop_2s(&echo, false);
    s.write_all(b"still there?").unwrap();
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "no answer within 2 s: {r:?}"
    );
    assert_eq!(echo.next(Duration::ZERO), None, "upstream saw nothing");
    assert_eq!(netem.stats().blackholed, 1);
    assert_eq!(netem.stats().keepalive_kept, 0);
}

#[test]
fn idle_fin_is_not_kept_off_by_keepalive_probes() {
    let echo = Echo::start();
    let netem = proxy(echo.addr, |o| o.idle_fin = Some(Duration::from_secs(2)));
    let mut s = TcpStream::connect(netem.addr()).unwrap();
    keepalive(&s, 1, 1);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut s, b"hello");
    let last = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).expect("a FIN, not a timeout");
    let idle = last.elapsed();
    assert_eq!(n, 0, "end of stream");
    // A front end counts bytes only: the probes at 1 s and 2 s do not postpone its FIN.
    assert!((2000..2300).contains(&ms(idle)), "FIN after {idle:?}");
    assert_eq!(netem.stats().closed_idle_fin, 1);
    assert_eq!(netem.stats().keepalive_kept, 0);
}

#[test]
fn a_request_to_a_server_that_closed_draws_a_reset_one_round_trip_later() {
    let echo = Echo::closing_after(Some(1));
    let netem = proxy(echo.addr, |o| o.rtt = Duration::from_millis(100));
    let mut s = TcpStream::connect(netem.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut s, b"x");
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "the server's FIN");
    // The client sends its next request on the connection it thinks kept: the server's
    // kernel resets it, and the client learns it a round trip after sending.
    let t = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let kind = loop {
        // After a FIN, reads give end of stream even once reset: the socket error tells.
        if let Some(e) = s.take_error().unwrap() {
            break e.kind();
        }
        assert!(t.elapsed() < Duration::from_secs(3), "no reset");
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = t.elapsed();
    assert!(
        matches!(kind, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "{kind:?}"
    );
    assert!((100..150).contains(&ms(took)), "reset after {took:?}");
    assert!(poll(Duration::from_secs(5), || (netem.stats().open == 0)
        .then_some(()))
    .is_some());
}

#[test]
fn refused_upstream_resets_the_client_after_one_round_trip() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let netem = proxy(addr, |o| o.rtt = Duration::from_millis(100));
    let t = Instant::now();
    let mut s = TcpStream::connect(netem.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4];
    let r = s.read(&mut buf);
    let took = t.elapsed();
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{r:?}"
    );
    assert!((100..150).contains(&ms(took)), "reset after {took:?}");
    assert_eq!(netem.stats().upstream_failed, 1);
}

/// Kills the child when the test ends, passed or failed.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_prints_a_ready_line_logs_events_and_exits_0_on_sigterm() {
    let echo = Echo::start();
    let child = Command::new(env!("CARGO_BIN_EXE_truid-netem"))
        .args(["--upstream", &echo.addr.to_string(), "--rtt", "10"])
        .args(["--idle-fin", "30", "--idle-drop=0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut g = Guard(child);
    let mut out = BufReader::new(g.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["upstream"], echo.addr.to_string());
    assert_eq!(v["rtt_ms"], 10);
    assert_eq!(v["idle_fin_secs"], 30.0);
    assert_eq!(v["idle_drop_secs"], 0.5);
    let listen: SocketAddr = v["listen"].as_str().unwrap().parse().unwrap();
    assert_eq!(listen.ip().to_string(), "127.0.0.1");

    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let d = exchange(&mut s, b"ping");
    assert!(d >= Duration::from_millis(10), "{d:?}");
    let mut err = BufReader::new(g.0.stderr.take().unwrap());
    let mut events = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        err.read_line(&mut l).unwrap();
        let e: serde_json::Value = serde_json::from_str(&l).unwrap();
        events.push(e);
    }
    assert_eq!(events[0]["event"], "accept");
    assert_eq!(events[0]["conn"], 1);
    assert_eq!(events[0]["stats"]["connections_accepted"], 1);
    assert_eq!(events[1]["event"], "blackhole");
    assert_eq!(events[1]["stats"]["blackholed"], 1);

    let pid = g.0.id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = g.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "exits after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn binary_refuses_bad_flags() {
    for args in [
        &[][..],
        &["--upstream", "127.0.0.1:1", "--rtt", "fast"][..],
        &["--upstream", "127.0.0.1:1", "--idle-fin", "0"][..],
        &["--upstream", "127.0.0.1:1", "--idle-drop", "-3"][..],
        &["--upstream", "nowhere"][..],
        &["--upstream", "127.0.0.1:1", "--bogus"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_truid-netem"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("truid-netem: "), "{err}");
    }
}
