//! `truid-bench`: the driver of `tests/bench.sh` (a benchmark run by hand, not a test).
//!
//! `truid-bench all --ready READY.json --module pam_truid.so --work DIR` seeds users in a running
//! emulator, then measures whole `pamtester` logins (under pam_wrapper) with `pam_truid.so`,
//! `pam_permit.so` alone and `pam_google_authenticator.so`, pairwise in one run, and prints the
//! table. The other subcommands are the pieces it runs in fresh processes:
//! `dlopen PATH`, `floor READY.json TOKEN FACTOR N`, `leak CONFDIR SERVICE USER:CODE...`.
//! `truid-bench wan --module pam_truid.so --work DIR --agent SOCKET [--rtts 0,30,100,300]
//! [--quick]` is the WAN table of issue 15 (`wan.rs`; its logins run as `wanlogin ...`).
//!
//! Every process it starts is waited for; every loop is bounded.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use truid_emulator::{totp, ReadyInfo, Stats};

type Res<T> = Result<T, String>;

// In a folder without main.rs, so that Cargo does not take it for a binary of its own.
#[path = "truid-bench/wan.rs"]
mod wan;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("all") => all(&args[1..]),
        Some("dlopen") => dlopen_once(&args[1..]),
        Some("floor") => floor(&args[1..]),
        Some("leak") => leak(&args[1..]),
        Some("wan") => wan::run(&args[1..]),
        Some("wanlogin") => wan::login_child(&args[1..]),
        _ => Err("usage: truid-bench all|wan|dlopen|floor|leak ... (see tests/bench.sh)".into()),
    };
    if let Err(e) = r {
        eprintln!("truid-bench: {e}");
        std::process::exit(1);
    }
}

fn e<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |err| format!("{what}: {err}")
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTPS/1.1 client on rustls + ring: the control endpoint, the floor, the load test.

struct Https {
    cfg: Arc<rustls::ClientConfig>,
    addr: String,
    host: ServerName<'static>,
    basic: String,
}

type Conn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Https {
    fn new(info: &ReadyInfo) -> Res<Https> {
        let ca = info
            .ca_file
            .as_deref()
            .ok_or("the emulator must run with TLS")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(e("ca_file"))? {
            roots.add(c.map_err(e("ca_file"))?).map_err(e("ca_file"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(e("tls"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let hostport = info
            .base_url
            .strip_prefix("https://")
            .ok_or("base_url is not https")?
            .to_string();
        let host = hostport.rsplit_once(':').map_or(hostport.as_str(), |h| h.0);
        let host =
            ServerName::try_from(host.trim_matches(['[', ']']).to_string()).map_err(e("host"))?;
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", info.client_id, info.client_secret));
        Ok(Https {
            cfg: Arc::new(cfg),
            addr: hostport,
            host,
            basic,
        })
    }

    /// TCP connect and the whole TLS handshake.
    fn connect(&self) -> Res<Conn> {
        let sock = TcpStream::connect(&self.addr).map_err(e("connect"))?;
        sock.set_nodelay(true).map_err(e("nodelay"))?;
        let conn =
            rustls::ClientConnection::new(self.cfg.clone(), self.host.clone()).map_err(e("tls"))?;
        let mut s = rustls::StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(e("handshake"))?;
        }
        Ok(s)
    }

    /// One request in one write; the answer's status and body (Content-Length framing).
    fn call(
        &self,
        c: &mut Conn,
        method: &str,
        path: &str,
        auth: &str,
        ctype: &str,
        body: &[u8],
    ) -> Res<(u16, Vec<u8>)> {
        let host = &self.addr;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: {auth}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        c.write_all(&req).map_err(e("write"))?;
        c.flush().map_err(e("flush"))?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = c.read(&mut chunk).map_err(e("read"))?;
            if n == 0 || buf.len() > 1 << 20 {
                return Err("answer cut short".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or("no content-length")?;
        while buf.len() < head_end + len {
            let n = c.read(&mut chunk).map_err(e("read"))?;
            if n == 0 {
                return Err("body cut short".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok((status, buf[head_end..head_end + len].to_vec()))
    }

    fn json(&self, method: &str, path: &str, body: &str) -> Res<serde_json::Value> {
        let mut c = self.connect()?;
        let (st, b) = self.call(
            &mut c,
            method,
            path,
            "none",
            "application/json",
            body.as_bytes(),
        )?;
        if st != 200 {
            return Err(format!("{method} {path}: {st}"));
        }
        serde_json::from_slice(&b).map_err(e("json"))
    }

    fn stats(&self) -> Res<Stats> {
        serde_json::from_value(self.json("GET", "/_emulator/stats", "")?).map_err(e("stats"))
    }

    fn token(&self) -> Res<String> {
        let mut c = self.connect()?;
        let (st, b) = self.call(
            &mut c,
            "POST",
            "/oauth2/v1/token",
            &format!("Basic {}", self.basic),
            "application/x-www-form-urlencoded",
            b"grant_type=client_credentials&scope=authenticator",
        )?;
        let v: serde_json::Value = serde_json::from_slice(&b).map_err(e("token"))?;
        match (st, v["access_token"].as_str()) {
            (200, Some(t)) => Ok(t.to_string()),
            _ => Err(format!("token: {st}")),
        }
    }

    /// What a login asks of tru.ID: one connection, create a challenge, send a code.
    fn login(&self, token: &str, factor: &str, code: &str) -> Res<()> {
        let mut c = self.connect()?;
        let auth = format!("Bearer {token}");
        let path = format!("/authenticator/v0.1/factors/{factor}/challenges");
        let (st, b) = self.call(
            &mut c,
            "POST",
            &path,
            &auth,
            "application/json",
            br#"{"reference_id":"bench"}"#,
        )?;
        let v: serde_json::Value = serde_json::from_slice(&b).map_err(e("challenge"))?;
        let cid = v["challenge_id"]
            .as_str()
            .ok_or(format!("challenge: {st}"))?;
        let patch = format!(r#"[{{"op":"add","path":"/code","value":"{code}"}}]"#);
        let (st, _) = self.call(
            &mut c,
            "PATCH",
            &format!("{path}/{cid}"),
            &auth,
            "application/json-patch+json",
            patch.as_bytes(),
        )?;
        if st != 200 {
            return Err(format!("verify: {st}"));
        }
        Ok(())
    }
}

fn read_ready(path: &str) -> Res<ReadyInfo> {
    let text = std::fs::read_to_string(path).map_err(e(path))?;
    serde_json::from_str(text.lines().next().unwrap_or("")).map_err(e(path))
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((p / 100.0) * (s.len() - 1) as f64).round() as usize]
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// One pamtester login, measured with wait4's rusage.

#[derive(Clone, Default)]
struct Run {
    err: String,
    ok: bool,
    wall_ms: f64,
    cpu_ms: f64,
    rss_kb: f64,
}

fn pamtester(pamd: &Path, service: &str, user: &str, input: &str) -> Res<Run> {
    let start = Instant::now();
    let mut child = Command::new("pamtester")
        .args([service, user, "authenticate"])
        .env("LD_PRELOAD", "libpam_wrapper.so libnss_wrapper.so")
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", pamd.join(format!("d-{service}")))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(e("pamtester"))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input.as_bytes());
    }
    let mut status: c_int = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    if r < 0 {
        return Err("wait4 failed".into());
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let mut err = String::new();
    if !ok {
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        err = format!("status {status:#x}: {}", err.trim());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    Ok(Run {
        ok,
        err,
        wall_ms: wall.as_secs_f64() * 1e3,
        cpu_ms: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_kb: ru.ru_maxrss as f64,
    })
}

/// Instructions of one whole pamtester login under callgrind.
fn callgrind(pamd: &Path, service: &str, user: &str, input: &str, out: &Path) -> Res<u64> {
    let mut child = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .args(["pamtester", service, user, "authenticate"])
        .env("LD_PRELOAD", "libpam_wrapper.so libnss_wrapper.so")
        // nss_wrapper's RTLD_DEEPBIND and valgrind do not mix (nss_wrapper(1)).
        .env("NSS_WRAPPER_DISABLE_DEEPBIND", "1")
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", pamd.join(format!("d-{service}")))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(e("valgrind"))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input.as_bytes());
    }
    let st = child.wait().map_err(e("valgrind"))?;
    if !st.success() {
        return Err(format!("callgrind of {service}: login failed ({st})"));
    }
    callgrind_total(out)
}

fn callgrind_total(out: &Path) -> Res<u64> {
    let text = std::fs::read_to_string(out).map_err(e("callgrind output"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary: ").or(l.strip_prefix("totals: ")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no total in the callgrind output".into())
}

/// CPU time (user+sys) a process has used so far, in ms, from /proc/PID/stat.
fn cpu_of(pid: u32) -> Res<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(e("agent stat"))?;
    // The fields after the command name (which may hold spaces) end in ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).ok_or("agent stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let mut ticks = 0.0;
    for i in [11, 12] {
        ticks += f
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or("agent stat: no CPU times")?;
    }
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks * 1e3 / hz)
}

// ---------------------------------------------------------------------------------------------
// `all`: the whole benchmark.

struct User {
    name: String,
    factor: String,
    secret: Vec<u8>,
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn all(args: &[String]) -> Res<()> {
    let ready_path = opt(args, "--ready").ok_or("--ready FILE")?;
    let module = PathBuf::from(opt(args, "--module").ok_or("--module SO")?);
    let work = PathBuf::from(opt(args, "--work").ok_or("--work DIR")?);
    let n: usize = opt(args, "--logins")
        .map_or(Ok(100), str::parse)
        .map_err(e("--logins"))?;
    let conc: usize = opt(args, "--concurrent")
        .map_or(Ok(200), str::parse)
        .map_err(e("--concurrent"))?;
    let secdir = opt(args, "--secdir").unwrap_or("/usr/lib/x86_64-linux-gnu/security");
    let skip_callgrind = args.iter().any(|a| a == "--no-callgrind");
    // The local agent (`truid-pam agent`), started by bench.sh: its socket and PID.
    let agent_sock = opt(args, "--agent").map(PathBuf::from);
    let agent_pid: Option<u32> = opt(args, "--agent-pid")
        .map(str::parse)
        .transpose()
        .map_err(e("--agent-pid"))?;
    let info = read_ready(ready_path)?;
    let https = Https::new(&info)?;
    let ca = info.ca_file.clone().unwrap_or_default();
    let me = std::env::current_exe().map_err(e("current_exe"))?;

    // Users: one factor per login, so every login has a fresh code (a code is good once).
    let leak_n = 20;
    let block = 20;
    let with_agent = agent_sock.is_some();
    let total = 3
        + n
        + conc
        + 3
        + leak_n
        + 2 * block
        + if with_agent {
            3 + n + conc + 1 + leak_n
        } else {
            0
        };
    eprintln!("truid-bench: seeding {total} factors");
    let mut users = Vec::with_capacity(total);
    for i in 0..total {
        let name = format!("bench{i:04}");
        let v = https.json(
            "POST",
            "/_emulator/seed",
            &format!(r#"{{"external_user_id":"{name}","type":"TOTP"}}"#),
        )?;
        let secret = v["secret"]
            .as_str()
            .and_then(totp::decode_secret)
            .ok_or("seed: no secret")?;
        let factor = v["factor_id"]
            .as_str()
            .ok_or("seed: no factor_id")?
            .to_string();
        users.push(User {
            name,
            factor,
            secret,
        });
    }
    let code = |u: &User| totp::code(&u.secret, now_secs());

    // The module asks NSS for every user and refuses a name it does not know: the bench users
    // exist for the logins through nss_wrapper (the host's accounts plus theirs; the host is not
    // changed). Every login process below preloads it; these two variables point it at the files.
    let mut passwd = std::fs::read_to_string("/etc/passwd").map_err(e("/etc/passwd"))?;
    for (i, u) in users.iter().enumerate() {
        passwd.push_str(&format!(
            "{}:x:{}:64200::/nonexistent:/usr/sbin/nologin\n",
            u.name,
            64201 + i
        ));
    }
    let group =
        std::fs::read_to_string("/etc/group").map_err(e("/etc/group"))? + "truid-bench:x:64200:\n";
    std::fs::write(work.join("passwd"), passwd).map_err(e("passwd"))?;
    std::fs::write(work.join("group"), group).map_err(e("group"))?;
    // Set before any thread of this process starts a child.
    std::env::set_var("NSS_WRAPPER_PASSWD", work.join("passwd"));
    std::env::set_var("NSS_WRAPPER_GROUP", work.join("group"));

    // The syslog socket the module writes to; drained so it never blocks the module.
    let log_sock = work.join("log.sock");
    let _ = std::fs::remove_file(&log_sock);
    let log = std::os::unix::net::UnixDatagram::bind(&log_sock).map_err(e("log socket"))?;
    let verified = Arc::new(AtomicU64::new(0));
    let others = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let (verified, others) = (verified.clone(), others.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(k) = log.recv(&mut buf) {
                if buf[..k].windows(17).any(|w| w == b"outcome=verified ") {
                    verified.fetch_add(1, Ordering::Relaxed);
                } else if let Ok(mut o) = others.lock() {
                    o.push(String::from_utf8_lossy(&buf[..k]).to_string());
                }
            }
        });
    }

    // Configs (one per user, as a host has a few users each) and PAM services.
    let pamd = work.join("pamd");
    let cfgs = work.join("cfg");
    let cache = work.join("cache");
    for d in [&pamd, &cfgs] {
        std::fs::create_dir_all(d).map_err(e("mkdir"))?;
    }
    let write_private = |p: &Path, text: &str| -> Res<()> {
        std::fs::write(p, text).map_err(e("write"))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).map_err(e("chmod"))
    };
    // `agent`: the module asks the local agent; otherwise (`agent = ""`) it goes to tru.ID itself.
    let service_with = |u: &User, roots: Option<&str>, agent: bool| -> Res<String> {
        let tag = if agent {
            "agent"
        } else {
            roots.unwrap_or("default")
        };
        let cfg = cfgs.join(format!("{}-{tag}.toml", u.name));
        let mut roots_line = roots.map_or(String::new(), |r| format!("roots = \"{r}\"\n"));
        match (&agent_sock, agent) {
            (Some(sock), true) => roots_line.push_str(&format!("agent = \"{}\"\n", sock.display())),
            _ => roots_line.push_str("agent = \"\"\n"),
        }
        write_private(
            &cfg,
            &format!(
                "[api]\nbase_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nca_file = \"{ca}\"\n{roots_line}timeout = 10\ntoken_cache = \"{}\"\n\n[login]\nfailmode = \"secure\"\n\n[users]\n{} = \"{}\"\n",
                info.base_url, info.client_id, info.client_secret, cache.display(), u.name, u.factor
            ),
        )?;
        let svc = format!("truid-{}-{tag}", u.name);
        std::fs::write(
            pamd.join(&svc),
            format!(
                "auth required {} config={} syslog_socket={}\n",
                module.display(),
                cfg.display(),
                log_sock.display()
            ),
        )
        .map_err(e("write"))?;
        // pam_wrapper copies the whole service folder at every pam_start: one folder per
        // login keeps that cost the same as for the other stacks (two files).
        let own = pamd.join(format!("d-{svc}"));
        std::fs::create_dir_all(&own).map_err(e("mkdir"))?;
        std::fs::write(own.join("other"), "auth required pam_deny.so\n").map_err(e("write"))?;
        std::fs::write(
            own.join(&svc),
            format!(
                "auth required {} config={} syslog_socket={}\n",
                module.display(),
                cfg.display(),
                log_sock.display()
            ),
        )
        .map_err(e("write"))?;
        Ok(svc)
    };
    let service = |u: &User, roots: Option<&str>| service_with(u, roots, false);
    std::fs::write(pamd.join("permit"), "auth required pam_permit.so\n").map_err(e("write"))?;
    // pam_google_authenticator: a local TOTP check. Its secret file is root's (the user= option),
    // without DISALLOW_REUSE and RATE_LIMIT: the file is only read, as on most hosts.
    let ga_secret: Vec<u8> = (0..10u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let ga_file = work.join("google_authenticator");
    write_private(
        &ga_file,
        &format!(
            "{}\n\" TOTP_AUTH\n",
            totp::encode_secret(&ga_secret).trim_end_matches('=')
        ),
    )?;
    std::fs::write(
        pamd.join("gauth"),
        format!(
            "auth required pam_google_authenticator.so secret={} user=root\n",
            ga_file.display()
        ),
    )
    .map_err(e("write"))?;
    std::fs::write(pamd.join("other"), "auth required pam_deny.so\n").map_err(e("write"))?;
    for svc in ["permit", "gauth"] {
        let own = pamd.join(format!("d-{svc}"));
        std::fs::create_dir_all(&own).map_err(e("mkdir"))?;
        std::fs::copy(pamd.join(svc), own.join(svc)).map_err(e("copy"))?;
        std::fs::copy(pamd.join("other"), own.join("other")).map_err(e("copy"))?;
    }
    let ga_code = || format!("{}\n", totp::code(&ga_secret, now_secs()));

    let mut next = 0usize;
    let mut take = || {
        next += 1;
        &users[next - 1]
    };

    // Warm-up: page cache, the token cache (one token request), each stack once.
    let _ = std::fs::remove_dir_all(&cache);
    let s0 = https.stats()?;
    for _ in 0..3 {
        let u = take();
        let svc = service(u, None)?;
        let r = pamtester(&pamd, &svc, &u.name, &format!("{}\n", code(u)))?;
        if !r.ok {
            return Err(format!("warm-up login of {} failed", u.name));
        }
        pamtester(&pamd, "permit", "root", "")?;
        let g = pamtester(&pamd, "gauth", "root", &ga_code())?;
        if !g.ok {
            return Err("pam_google_authenticator login failed".into());
        }
        if with_agent {
            let u = take();
            let svc = service_with(u, None, true)?;
            let r = pamtester(&pamd, &svc, &u.name, &format!("{}\n", code(u)))?;
            if !r.ok {
                return Err(format!(
                    "warm-up login of {} through the agent failed: {}",
                    u.name, r.err
                ));
            }
        }
    }

    // Pairwise sequential logins: permit, google-authenticator, truid (and truid through the
    // agent), order rotating.
    let kinds = if with_agent { 4 } else { 3 };
    eprintln!("truid-bench: {n} sequential logins of each kind, interleaved");
    // A login on its own, and the one through the agent that runs next to it.
    type Pair<'a> = (&'a User, String, Option<(&'a User, String)>);
    let seq: Vec<Pair> = (0..n)
        .map(|_| {
            let u = take();
            let s = service(u, None)?;
            let a = if with_agent {
                let v = take();
                Some((v, service_with(v, None, true)?))
            } else {
                None
            };
            Ok((u, s, a))
        })
        .collect::<Res<_>>()?;
    let s1 = https.stats()?;
    let agent_cpu_before = agent_pid.map(cpu_of).transpose()?;
    let mut runs: [Vec<Run>; 4] = Default::default();
    for (i, (u, svc, a)) in seq.iter().enumerate() {
        for k in 0..kinds {
            let which = (i + k) % kinds;
            let r = match (which, a) {
                (0, _) => pamtester(&pamd, "permit", "root", "")?,
                (1, _) => pamtester(&pamd, "gauth", "root", &ga_code())?,
                (2, _) => pamtester(&pamd, svc, &u.name, &format!("{}\n", code(u)))?,
                (_, Some((v, asvc))) => pamtester(&pamd, asvc, &v.name, &format!("{}\n", code(v)))?,
                (_, None) => return Err("no agent service".into()),
            };
            runs[which].push(r);
        }
    }
    // The agent's own CPU, spread over the logins it served (only the agent kind uses it).
    let agent_cpu_ms = match (agent_pid, agent_cpu_before) {
        (Some(pid), Some(b)) => Some((cpu_of(pid)? - b) / n as f64),
        _ => None,
    };
    // Requests and handshakes per login of each kind, each counted in a block of its own.
    let mut blocks: Vec<(&str, Stats, Stats)> = Vec::new();
    for agent in [false, true] {
        if agent && !with_agent {
            continue;
        }
        let users: Vec<(&User, String)> = (0..block)
            .map(|_| {
                let u = take();
                service_with(u, None, agent).map(|s| (u, s))
            })
            .collect::<Res<_>>()?;
        let a = https.stats()?;
        for (u, svc) in &users {
            let r = pamtester(&pamd, svc, &u.name, &format!("{}\n", code(u)))?;
            if !r.ok {
                return Err(format!("login of {} failed: {}", u.name, r.err));
            }
        }
        let b = https.stats()?;
        blocks.push((
            if agent {
                "through the agent"
            } else {
                "on its own"
            },
            a,
            b,
        ));
    }
    let errors: Vec<usize> = runs
        .iter()
        .map(|v| v.iter().filter(|r| !r.ok).count())
        .collect();

    // 200 concurrent logins against the one emulator, on their own and through the agent.
    struct Burst {
        label: &'static str,
        runs: Vec<Run>,
        elapsed: f64,
        errors: usize,
        a: Stats,
        b: Stats,
    }
    let mut bursts: Vec<Burst> = Vec::new();
    for agent in [false, true] {
        if agent && !with_agent {
            continue;
        }
        eprintln!(
            "truid-bench: {conc} concurrent logins{}",
            if agent { " through the agent" } else { "" }
        );
        let tag = if agent { "agent" } else { "default" };
        let batch: Vec<(String, String)> = (0..conc)
            .map(|_| {
                let u = take();
                service_with(u, None, agent).map(|_| (u.name.clone(), code(u)))
            })
            .collect::<Res<_>>()?;
        let a = https.stats()?;
        let start = Instant::now();
        // Through real libpam (pam_start_confdir) in one fresh process per login: pam_wrapper's
        // clean-up of its temporary folders races when hundreds of instances start at once.
        let handles: Vec<_> = batch
            .into_iter()
            .map(|(user, code)| {
                let (pamd, me) = (pamd.clone(), me.clone());
                std::thread::spawn(move || -> Res<Run> {
                    let start = Instant::now();
                    let o = Command::new(&me)
                        .env("LD_PRELOAD", "libnss_wrapper.so")
                        .arg("leak")
                        .arg(&pamd)
                        .arg(format!("{user}:{code}:{tag}"))
                        .output()
                        .map_err(e("login"))?;
                    Ok(Run {
                        ok: o.status.success(),
                        err: String::from_utf8_lossy(&o.stderr).to_string(),
                        wall_ms: start.elapsed().as_secs_f64() * 1e3,
                        ..Default::default()
                    })
                })
            })
            .collect();
        let runs: Vec<Run> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread".into())))
            .collect::<Res<_>>()?;
        let elapsed = start.elapsed().as_secs_f64();
        let b = https.stats()?;
        let errors = runs.iter().filter(|r| !r.ok).count();
        for r in runs.iter().filter(|r| !r.ok).take(3) {
            eprintln!("truid-bench: a concurrent login failed: {}", r.err);
        }
        bursts.push(Burst {
            label: if agent {
                "through the agent"
            } else {
                "on their own"
            },
            runs,
            elapsed,
            errors,
            a,
            b,
        });
    }

    // The emulator alone: the same two requests on a fresh TLS connection, no PAM, from
    // 16 client threads (one wrong code each: the emulator does the same work).
    let token = https.token()?;
    let factors: Vec<String> = users[..n].iter().map(|u| u.factor.clone()).collect();
    let emu_logins = 1600usize;
    let https = Arc::new(https);
    let start = Instant::now();
    let hs: Vec<_> = (0..16)
        .map(|t| {
            let (h, tok, fs) = (https.clone(), token.clone(), factors.clone());
            std::thread::spawn(move || -> Res<()> {
                for i in 0..emu_logins / 16 {
                    h.login(&tok, &fs[(t * 31 + i) % fs.len()], "000000")?;
                }
                Ok(())
            })
        })
        .collect();
    for h in hs {
        h.join().map_err(|_| "load thread")??;
    }
    let emu_rate = emu_logins as f64 / start.elapsed().as_secs_f64();

    // The floor: one TLS handshake and two loopback round trips, same TLS stack, no PAM.
    let out = Command::new(&me)
        .args(["floor", ready_path, &token, &users[0].factor, "300"])
        .output()
        .map_err(e("floor"))?;
    let floor_text = String::from_utf8_lossy(&out.stdout).to_string();
    let floor_ms: Vec<f64> = floor_text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if floor_ms.len() != 2 {
        return Err(format!(
            "floor: {floor_text} {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    // dlopen time, each in a fresh process.
    let dl = |path: &str| -> Res<f64> {
        let mut v = Vec::new();
        for _ in 0..30 {
            let o = Command::new(&me)
                .args(["dlopen", path])
                .output()
                .map_err(e("dlopen"))?;
            let us: f64 = String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .map_err(|_| format!("dlopen {path}: {}", String::from_utf8_lossy(&o.stderr)))?;
            v.push(us);
        }
        Ok(pct(&v, 50.0))
    };
    let dl_truid = dl(&module.display().to_string())?;
    let dl_permit = dl(&format!("{secdir}/pam_permit.so"))?;
    let dl_ga = dl(&format!("{secdir}/pam_google_authenticator.so"))?;
    let so_size = std::fs::metadata(&module).map_err(e("module"))?.len();
    // The direct client library beside the module, loaded only by logins that go direct.
    let direct_lib = module.with_file_name("libpam_truid_direct.so");
    let direct_size = std::fs::metadata(&direct_lib)
        .map_err(e("libpam_truid_direct.so"))?
        .len();
    let dl_direct = dl(&direct_lib.display().to_string())?;

    // Threads and sockets of the module after pam_sm_authenticate returns: 20 logins in one
    // process through real libpam.
    let mut leak_lines = Vec::new();
    for agent in [false, true] {
        if agent && !with_agent {
            continue;
        }
        let leak_users: Vec<String> = (0..leak_n)
            .map(|_| {
                let u = take();
                service_with(u, None, agent)?;
                Ok(format!(
                    "{}:{}:{}",
                    u.name,
                    code(u),
                    if agent { "agent" } else { "default" }
                ))
            })
            .collect::<Res<_>>()?;
        let mut leak_cmd = Command::new(&me);
        leak_cmd
            .env("LD_PRELOAD", "libnss_wrapper.so")
            .arg("leak")
            .arg(&pamd)
            .args(&leak_users);
        let out = leak_cmd.output().map_err(e("leak"))?;
        let leak_line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(format!(
                "leak check: {leak_line} {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        leak_lines.push((
            if agent {
                "through the agent"
            } else {
                "on its own"
            },
            leak_line,
        ));
    }

    // Instructions of one whole login (callgrind), token cached, per trust-root choice.
    let mut cg: Vec<(String, u64)> = Vec::new();
    if !skip_callgrind {
        eprintln!("truid-bench: callgrind");
        let o = |s: &str| work.join(format!("callgrind.{s}"));
        cg.push((
            "pam_permit.so".into(),
            callgrind(&pamd, "permit", "root", "", &o("permit"))?,
        ));
        cg.push((
            "pam_google_authenticator.so".into(),
            callgrind(&pamd, "gauth", "root", &ga_code(), &o("gauth"))?,
        ));
        for roots in ["system", "builtin", "none"] {
            let u = take();
            let svc = service(u, Some(roots))?;
            let label = match roots {
                "system" => "pam_truid.so, roots = \"system\" (default) + ca_file",
                "builtin" => "pam_truid.so, roots = \"builtin\" + ca_file",
                _ => "pam_truid.so, roots = \"none\" + ca_file",
            };
            let i = callgrind(&pamd, &svc, &u.name, &format!("{}\n", code(u)), &o(roots))?;
            cg.push((label.into(), i));
        }
        if with_agent {
            let u = take();
            let svc = service_with(u, None, true)?;
            let i = callgrind(&pamd, &svc, &u.name, &format!("{}\n", code(u)), &o("agent"))?;
            cg.push((
                "pam_truid.so through the agent (the login process only)".into(),
                i,
            ));
        }
        let floor_cg = |k: &str| -> Res<u64> {
            let out = o(&format!("floor{k}"));
            let st = Command::new("valgrind")
                .arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(&me)
                .args(["floor", ready_path, &token, &users[0].factor, k])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(e("valgrind"))?;
            if !st.success() {
                return Err("callgrind of the floor failed".into());
            }
            callgrind_total(&out)
        };
        let f = floor_cg("1")?.saturating_sub(floor_cg("0")?);
        cg.push((
            "floor: 1 handshake + 2 requests (rustls+ring, no PAM)".into(),
            f,
        ));
    }
    let s5 = https.stats()?;

    // ---- the table
    let api_requests = |a: &Stats, b: &Stats| -> u64 {
        b.requests
            .iter()
            .filter(|(k, _)| k.as_str() != "control")
            .map(|(k, v)| v - a.requests.get(k).copied().unwrap_or(0))
            .sum()
    };
    let names = [
        "pam_permit.so",
        "pam_google_authenticator.so",
        "pam_truid.so on its own (agent = \"\")",
        "pam_truid.so through the agent",
    ];
    let med = |v: &[Run], f: fn(&Run) -> f64| pct(&v.iter().map(f).collect::<Vec<_>>(), 50.0);
    let p95 = |v: &[Run], f: fn(&Run) -> f64| pct(&v.iter().map(f).collect::<Vec<_>>(), 95.0);
    let wall = |r: &Run| r.wall_ms;
    let cpu = |r: &Run| r.cpu_ms;
    let rss = |r: &Run| r.rss_kb;
    let pw = med(&runs[0], wall);
    let pc = med(&runs[0], cpu);
    println!();
    println!(
        "pam_truid benchmark: {n} logins of each kind, interleaved; pamtester under pam_wrapper;"
    );
    println!(
        "emulator on loopback, TLS, latency 0; token cached (one token request in the warm-up)."
    );
    println!();
    println!("| stack | wall median | wall p95 | x permit (median) | CPU user+sys median | x permit | peak RSS | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    for (k, name) in names.iter().enumerate().take(kinds) {
        let v = &runs[k];
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2}x | {:.2} ms | {:.2}x | {:.0} KiB | {} |",
            med(v, wall),
            p95(v, wall),
            med(v, wall) / pw,
            med(v, cpu),
            med(v, cpu) / pc,
            med(v, rss),
            errors[k]
        );
    }
    println!();
    for k in 2..kinds {
        println!(
            "- {}: added wall time over pam_permit.so {:.2} ms median",
            names[k],
            med(&runs[k], wall) - pw
        );
    }
    println!(
        "- the floor of a login on its own (TCP connect, one TLS 1.3 handshake, two requests, rustls+ring in one warm process, no PAM): {:.2} ms median, {:.2} ms p95",
        floor_ms[0], floor_ms[1]
    );
    if let Some(c) = agent_cpu_ms {
        println!(
            "- the agent's own CPU (user+sys, /proc/PID/stat over the {n} logins it served): {c:.3} ms per login; login process + agent: {:.2}x permit",
            (med(&runs[3], cpu) + c) / pc
        );
    }
    println!(
        "- token requests: {} in the warm-up (empty cache), {} in all later logins",
        s1.tokens_issued - s0.tokens_issued,
        s5.tokens_issued - s1.tokens_issued
    );
    for (label, a, b) in &blocks {
        // `- 1`: the stats request itself comes on a TLS connection of its own.
        println!(
            "- per pam_truid login {label} ({block} logins in a row): {:.2} HTTP requests, {:.2} TLS handshakes ({:.2} connections), {} token requests",
            api_requests(a, b) as f64 / block as f64,
            (b.tls_handshakes - a.tls_handshakes - 1) as f64 / block as f64,
            (b.connections_accepted - a.connections_accepted - 1) as f64 / block as f64,
            b.tokens_issued - a.tokens_issued
        );
    }
    for bu in &bursts {
        let cw: Vec<f64> = bu.runs.iter().map(|r| r.wall_ms).collect();
        println!(
            "- {conc} concurrent pam_truid logins {} (one process each, real libpam via pam_start_confdir): {:.2} s in all, {:.0} logins/s, per login p50 {:.1} ms, p99 {:.1} ms, errors {}; {} HTTP requests, {} TLS handshakes, {} token requests",
            bu.label,
            bu.elapsed,
            conc as f64 / bu.elapsed,
            pct(&cw, 50.0),
            pct(&cw, 99.0),
            bu.errors,
            api_requests(&bu.a, &bu.b),
            bu.b.tls_handshakes - bu.a.tls_handshakes - 1,
            bu.b.tokens_issued - bu.a.tokens_issued
        );
    }
    println!(
        "- the emulator alone (16 client threads on the same 2-core host, a fresh TLS connection + the same 2 requests each): {emu_rate:.0} logins/s"
    );
    println!(
        "- module: {} bytes ({:.1} MiB); dlopen (RTLD_NOW, fresh process, median of 30): pam_truid.so {dl_truid:.0} us, pam_permit.so {dl_permit:.0} us, pam_google_authenticator.so {dl_ga:.0} us",
        so_size,
        so_size as f64 / 1048576.0
    );
    println!(
        "- its direct client library (loaded only by logins without the agent): {} bytes ({:.1} MiB); dlopen {dl_direct:.0} us",
        direct_size,
        direct_size as f64 / 1048576.0
    );
    for (label, line) in &leak_lines {
        println!(
            "- after pam_sm_authenticate returned, {leak_n} logins {label} in one process: {line}"
        );
    }
    println!(
        "- syslog lines outcome=verified: {} (expected {})",
        verified.load(Ordering::Relaxed),
        (3 + n + block + conc + leak_n) * if with_agent { 2 } else { 1 }
            + if skip_callgrind {
                0
            } else {
                3 + usize::from(with_agent)
            }
    );
    for line in others
        .lock()
        .map(|o| o.clone())
        .unwrap_or_default()
        .iter()
        .take(5)
    {
        println!("  - other outcome: {line}");
    }
    if !cg.is_empty() {
        println!();
        println!("| one whole login under callgrind (pam_wrapper, token cached) | instructions | x permit |");
        println!("|---|---|---|");
        let base = cg[0].1 as f64;
        for (label, i) in &cg {
            println!(
                "| {label} | {:.2} M | {:.2}x |",
                *i as f64 / 1e6,
                *i as f64 / base
            );
        }
    }

    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `dlopen PATH`: microseconds of one dlopen(RTLD_NOW) in this fresh process.

fn dlopen_once(args: &[String]) -> Res<()> {
    let path = CString::new(args.first().ok_or("dlopen PATH")?.as_str()).map_err(e("path"))?;
    let start = Instant::now();
    // SAFETY: dlopen of a PAM module; its constructors are the module's own.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    let us = start.elapsed().as_secs_f64() * 1e6;
    if h.is_null() {
        let msg = unsafe { CStr::from_ptr(libc::dlerror()) };
        return Err(format!("dlopen: {}", msg.to_string_lossy()));
    }
    println!("{us:.1}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `floor READY TOKEN FACTOR N`: N times a fresh connection + handshake + the 2 requests; prints
// the median and p95 in ms. N = 0 builds everything and connects nowhere (the callgrind base).

fn floor(args: &[String]) -> Res<()> {
    let [ready, token, factor, n] = args else {
        return Err("floor READY TOKEN FACTOR N".into());
    };
    let n: usize = n.parse().map_err(e("N"))?;
    let https = Https::new(&read_ready(ready)?)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        https.login(token, factor, "000000")?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("{:.3} {:.3}", pct(&v, 50.0), pct(&v, 95.0));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `leak CONFDIR USER:CODE...`: logins through real libpam in this one process; after each
// pam_authenticate, counts this process's threads and sockets.

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}
#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}
#[repr(C)]
struct PamConv {
    conv: extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int,
    appdata: *mut c_void,
}

extern "C" fn answer(
    num: c_int,
    _msgs: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata: *mut c_void,
) -> c_int {
    if num <= 0 {
        return 19;
    }
    // SAFETY: libpam hands our own CString as appdata; the responses are malloc'ed for it.
    unsafe {
        let code = &*(appdata as *const CString);
        let out =
            libc::calloc(num as usize, std::mem::size_of::<PamResponse>()) as *mut PamResponse;
        for i in 0..num as usize {
            (*out.add(i)).resp = libc::strdup(code.as_ptr());
        }
        *resp = out;
    }
    0
}

fn count(dir: &str, pred: impl Fn(&Path) -> bool) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).filter(|x| pred(&x.path())).count())
        .unwrap_or(0)
}

/// Sockets this process holds, as "tcp" or "unix" (from /proc/self/net).
fn sockets() -> Vec<String> {
    let table =
        |f: &str| std::fs::read_to_string(format!("/proc/self/net/{f}")).unwrap_or_default();
    let (tcp, unix) = (table("tcp") + &table("tcp6"), table("unix"));
    let mut out = Vec::new();
    for d in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(t) = std::fs::read_link(d.path()) else {
            continue;
        };
        let t = t.to_string_lossy().to_string();
        let Some(inode) = t.strip_prefix("socket:[").and_then(|x| x.strip_suffix(']')) else {
            continue;
        };
        let has = |tab: &str| tab.split_whitespace().any(|w| w == inode);
        out.push(
            if has(&tcp) {
                "tcp"
            } else if has(&unix) {
                "unix"
            } else {
                "other"
            }
            .to_string(),
        );
    }
    out
}

fn leak(args: &[String]) -> Res<()> {
    let confdir = CString::new(
        args.first()
            .ok_or("leak CONFDIR USER:CODE[:TAG]...")?
            .as_str(),
    )
    .map_err(e("confdir"))?;
    type Start = unsafe extern "C" fn(
        *const c_char,
        *const c_char,
        *const PamConv,
        *const c_char,
        *mut *mut c_void,
    ) -> c_int;
    type Auth = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
    // SAFETY: libpam's documented entry points, looked up by name.
    let (start, auth, end) = unsafe {
        let h = libc::dlopen(c"libpam.so.0".as_ptr(), libc::RTLD_NOW);
        if h.is_null() {
            return Err("cannot load libpam.so.0".into());
        }
        let f = |n: &CStr| libc::dlsym(h, n.as_ptr());
        let (s, a, x) = (
            f(c"pam_start_confdir"),
            f(c"pam_authenticate"),
            f(c"pam_end"),
        );
        if s.is_null() || a.is_null() || x.is_null() {
            return Err("libpam has no pam_start_confdir".into());
        }
        (
            std::mem::transmute::<*mut c_void, Start>(s),
            std::mem::transmute::<*mut c_void, Auth>(a),
            std::mem::transmute::<*mut c_void, Auth>(x),
        )
    };
    let threads_before = count("/proc/self/task", |_| true);
    let sockets_before = sockets().len();
    let (mut max_threads, mut max_sockets, mut failed) = (0, 0, 0);
    let mut reaped_ms = 0.0f64;
    let mut kinds = Vec::new();
    for spec in &args[1..] {
        let mut parts = spec.split(':');
        let (user, code) = (
            parts.next().unwrap_or(""),
            parts.next().ok_or("USER:CODE[:TAG]")?,
        );
        let tag = parts.next().unwrap_or("default");
        let service = CString::new(format!("truid-{user}-{tag}")).map_err(e("service"))?;
        let user = CString::new(user).map_err(e("user"))?;
        let code = CString::new(code).map_err(e("code"))?;
        let conv = PamConv {
            conv: answer,
            appdata: &code as *const CString as *mut c_void,
        };
        let mut pamh: *mut c_void = std::ptr::null_mut();
        // SAFETY: as documented by libpam; conv and code outlive the handle.
        let rc = unsafe {
            let rc = start(
                service.as_ptr(),
                user.as_ptr(),
                &conv,
                confdir.as_ptr(),
                &mut pamh,
            );
            if rc != 0 {
                return Err(format!("pam_start_confdir: {rc}"));
            }
            auth(pamh, 0)
        };
        // A thread the module joined can stay listed for a moment until the kernel reaps it:
        // look again for up to 100 ms before counting it as left running.
        let mut threads = count("/proc/self/task", |_| true);
        if threads > threads_before {
            let seen = Instant::now();
            while threads > threads_before && seen.elapsed() < Duration::from_millis(100) {
                std::thread::sleep(Duration::from_millis(1));
                threads = count("/proc/self/task", |_| true);
            }
            reaped_ms = reaped_ms.max(seen.elapsed().as_secs_f64() * 1e3);
        }
        max_threads = max_threads.max(threads);
        let socks = sockets();
        max_sockets = max_sockets.max(socks.len());
        kinds = socks;
        // SAFETY: the handle from pam_start_confdir.
        unsafe { end(pamh, rc) };
        if rc != 0 {
            failed += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(10));
    println!(
        "threads {threads_before} before, at most {max_threads} after a login (a joined thread gone from /proc within {reaped_ms:.1} ms); sockets {sockets_before} before, at most {max_sockets} after a login ({kinds:?}); failed logins {failed}"
    );
    if failed > 0 || max_threads > threads_before || max_sockets > sockets_before {
        return Err("the module left something behind, or a login failed".into());
    }
    Ok(())
}
