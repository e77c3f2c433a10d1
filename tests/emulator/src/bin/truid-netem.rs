//! `truid-netem`: a delaying TCP proxy on loopback, until SIGTERM or SIGINT.
//! Prints one JSON line on stdout when ready; one JSON line per connection event on stderr.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use truid_emulator::{Netem, NetemOptions};

const HELP: &str = "\
truid-netem: a TCP proxy on loopback that makes the link to an upstream look like a WAN:
a round-trip time, a front end that closes idle connections, a middlebox that forgets them.

When ready it prints ONE JSON line on stdout:
  {\"idle_drop_secs\":S|null,\"idle_fin_secs\":S|null,\"listen\":\"127.0.0.1:PORT\",
   \"rtt_ms\":N,\"upstream\":\"...\"}
then serves until SIGTERM or SIGINT (exit status 0). Each connection event is one JSON line
on stderr, with the counters so far:
  {\"event\":\"accept|idle_fin|blackhole|keepalive_kept|upstream_failed|close\",\"conn\":N,
   \"stats\":{\"connections_accepted\",\"closed_idle_fin\",\"blackholed\",\"keepalive_kept\",
   \"upstream_failed\",\"open\"}}

USAGE: truid-netem --upstream ADDR [FLAGS]

  --upstream ADDR      where to forward (host:port; required)
  --listen ADDR        address to listen on (default 127.0.0.1:0, a free port)
  --rtt MS             add MS milliseconds of round trip, MS/2 each way; connection setup
                       pays it too (a fresh connection costs 1 RTT before its first byte,
                       as TCP's handshake does)
  --idle-fin SECS      close a connection idle (no byte either way) for SECS with FIN both
                       ways, as a front end's keep-alive timeout does (Apache 5, ALB 60)
  --idle-drop SECS     a connection idle for SECS goes silently dead: every byte either way
                       is dropped, nothing is closed, until the client closes (a NAT or
                       firewall that forgot it). The client's TCP keepalive probes count as
                       traffic, as at a NAT (seen within 250 ms). Once dead, the proxy's kernel
                       still acknowledges the client's bytes and probes: keepalive does not see
                       the loss.
  --quiet              no event lines on stderr
  -h, --help           this text

SECS may have a fraction (0.5). See the top of tests/emulator/src/netem.rs for exactly what is
modelled.
";

fn addr(flag: &str, v: &str) -> Result<SocketAddr, String> {
    v.to_socket_addrs()
        .map_err(|e| format!("{flag} {v:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{flag} {v:?}: no address"))
}

fn secs(flag: &str, v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("{flag}: a number of seconds above 0, not {v:?}")),
    }
}

fn parse(args: Vec<String>) -> Result<Option<NetemOptions>, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut upstream = None;
    let mut rtt = Duration::ZERO;
    let mut idle_fin = None;
    let mut idle_drop = None;
    let mut log_events = true;
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (flag, None),
        };
        let mut value = || -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => listen = addr("--listen", &value()?)?,
            "--upstream" => upstream = Some(addr("--upstream", &value()?)?),
            "--rtt" => {
                let v = value()?;
                let ms = v
                    .parse::<u64>()
                    .map_err(|_| format!("--rtt: a number of milliseconds, not {v:?}"))?;
                rtt = Duration::from_millis(ms);
            }
            "--idle-fin" => idle_fin = Some(secs("--idle-fin", &value()?)?),
            "--idle-drop" => idle_drop = Some(secs("--idle-drop", &value()?)?),
            "--quiet" => log_events = false,
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    let upstream = upstream.ok_or("--upstream ADDR is required (see --help)")?;
    Ok(Some(NetemOptions {
        listen,
        upstream,
        rtt,
        idle_fin,
        idle_drop,
        log_events,
    }))
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1).collect()) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("truid-netem: {e}");
            return ExitCode::from(2);
        }
    };
    // As truid-emulator: SIGTERM and SIGINT blocked before any thread starts, taken with
    // sigwait (no handler, no tokio signal driver).
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("truid-netem: signals: {e}");
        return ExitCode::FAILURE;
    }
    let ready = serde_json::json!({
        "upstream": opts.upstream.to_string(),
        "rtt_ms": opts.rtt.as_millis() as u64,
        "idle_fin_secs": opts.idle_fin.map(|d| d.as_secs_f64()),
        "idle_drop_secs": opts.idle_drop.map(|d| d.as_secs_f64()),
    });
    let netem = match Netem::start(opts) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("truid-netem: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ready = ready;
    ready["listen"] = serde_json::json!(netem.addr().to_string());
    {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{ready}").and_then(|_| out.flush()).is_err() {
            eprintln!("truid-netem: cannot write the ready line");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = signals.wait() {
        eprintln!("truid-netem: signals: {e}");
    }
    netem.shutdown();
    ExitCode::SUCCESS
}
