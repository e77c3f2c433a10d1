//! `truid-bench wan`: the WAN table of issue 15 (run by `tests/bench.sh --wan`).
//!
//! Each scenario gets an emulator of its own (in this process, so its counters belong to it
//! alone) behind a `Netem` proxy of its own (a round-trip time, and a front end that closes idle
//! connections or a middlebox that silently forgets them). The module is pointed at the proxy,
//! on its own (`agent = ""`) or through the running agent. Every login is a fresh process
//! (`truid-bench wanlogin`) through real libpam (`pam_start_confdir`, users known through
//! nss_wrapper) whose conversation records when the code prompt appears, waits the typing time,
//! and answers with the right code computed at that moment; so every login should succeed.
//!
//! Scenarios of the first section (every RTT, first and warm) run one after the other; those of
//! the second (idle, typing, link faults at 100 ms) run side by side, started 1.5 s apart, since
//! each mostly waits: their requests still never mix (one emulator each).

use super::*;
use std::os::unix::net::UnixDatagram;
use truid_emulator::{Emulator, FactorType, Netem, NetemOptions, Options};

const PAM_FAIL_DELAY: c_int = 10;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Own,
    Agent,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Own => "on its own",
            Mode::Agent => "agent",
        }
    }
}

/// One row of the table: `samples` logins, each after `idle` without a login.
struct Step {
    label: String,
    idle: Duration,
    typing: Duration,
    samples: usize,
    /// Measured but not a row (the login that warms a scenario up).
    report: bool,
    /// The link closes or goes dead while the person types: the verdict may take 3 RTT.
    closed_while_typing: bool,
}

struct Scenario {
    mode: Mode,
    rtt_ms: u64,
    idle_fin: Option<f64>,
    idle_drop: Option<f64>,
    steps: Vec<Step>,
}

/// What one login measured.
#[derive(Clone)]
struct Sample {
    prompt_ms: Option<f64>,
    verdict_ms: f64,
    rc: i32,
    outcome: String,
    message: String,
    requests: u64,
    handshakes: u64,
    tokens: u64,
}

struct Row {
    label: String,
    mode: Mode,
    rtt_ms: u64,
    closed_while_typing: bool,
    samples: Vec<Sample>,
}

fn step(label: &str, idle_s: f64, typing_s: f64, samples: usize) -> Step {
    Step {
        label: label.into(),
        idle: Duration::from_secs_f64(idle_s),
        typing: Duration::from_secs_f64(typing_s),
        samples,
        report: true,
        closed_while_typing: false,
    }
}

fn warm_up() -> Step {
    Step {
        report: false,
        ..step("warm-up", 0.0, 1.0, 1)
    }
}

fn secs_arg(args: &[String], name: &str) -> Res<Option<f64>> {
    opt(args, name).map(str::parse).transpose().map_err(e(name))
}

pub(crate) fn run(args: &[String]) -> Res<()> {
    let module = PathBuf::from(opt(args, "--module").ok_or("--module SO")?);
    let work = PathBuf::from(opt(args, "--work").ok_or("--work DIR")?);
    let agent_sock = PathBuf::from(opt(args, "--agent").ok_or("--agent SOCKET")?);
    let quick = args.iter().any(|a| a == "--quick");
    let rtts: Vec<u64> = opt(args, "--rtts")
        .unwrap_or("0,30,100,300")
        .split(',')
        .map(|v| v.trim().parse().map_err(e("--rtts")))
        .collect::<Res<_>>()?;
    let link_rtt: u64 = secs_arg(args, "--link-rtt")?.map_or(100, |v| v as u64);
    let warm_n = if quick { 3 } else { 10 };
    let me = std::env::current_exe().map_err(e("current_exe"))?;

    let mut first: Vec<Scenario> = Vec::new();
    for &rtt in &rtts {
        for mode in [Mode::Own, Mode::Agent] {
            first.push(Scenario {
                mode,
                rtt_ms: rtt,
                idle_fin: None,
                idle_drop: None,
                steps: vec![
                    step("first login (no token, no connection)", 0.0, 1.0, 1),
                    step(
                        &format!("warm (back to back, median of {warm_n})"),
                        0.0,
                        1.0,
                        warm_n,
                    ),
                ],
            });
        }
    }
    let mut second: Vec<Scenario> = Vec::new();
    for mode in [Mode::Own, Mode::Agent] {
        let mut plain = vec![
            warm_up(),
            step("typing 15 s", 0.0, 15.0, 1),
            step("typing 50 s", 0.0, 50.0, 1),
            step("after 25 s idle", 25.0, 1.0, 1),
        ];
        if !quick {
            plain.push(step("after 10 min idle", 600.0, 1.0, 1));
        }
        let fin5 = vec![
            warm_up(),
            step(
                "front end closes idle connections after 5 s; next login 8 s later",
                8.0,
                1.0,
                1,
            ),
            Step {
                closed_while_typing: true,
                ..step("front end closes after 5 s; typing 8 s", 0.0, 8.0, 1)
            },
        ];
        let fin60 = vec![
            warm_up(),
            step(
                "front end closes idle connections after 60 s; next login 65 s later",
                65.0,
                1.0,
                1,
            ),
            step("front end closes after 60 s; typing 50 s", 0.0, 50.0, 1),
        ];
        let drop10 = vec![
            warm_up(),
            step(
                "a middlebox silently drops connections idle 10 s; next login 12 s later",
                12.0,
                1.0,
                1,
            ),
            Step {
                closed_while_typing: true,
                ..step("middlebox drops after 10 s idle; typing 15 s", 0.0, 15.0, 1)
            },
        ];
        for (fin, drop, steps) in [
            (None, None, plain),
            (Some(5.0), None, fin5),
            (Some(60.0), None, fin60),
            (None, Some(10.0), drop10),
        ] {
            second.push(Scenario {
                mode,
                rtt_ms: link_rtt,
                idle_fin: fin,
                idle_drop: drop,
                steps,
            });
        }
    }

    // Users: one factor per login (a code is good once), all known to NSS through nss_wrapper.
    let logins: usize = first
        .iter()
        .chain(&second)
        .flat_map(|s| &s.steps)
        .map(|s| s.samples)
        .sum();
    let mut passwd = std::fs::read_to_string("/etc/passwd").map_err(e("/etc/passwd"))?;
    for i in 0..logins {
        passwd.push_str(&format!(
            "wan{i:04}:x:{}:64200::/nonexistent:/usr/sbin/nologin\n",
            65201 + i
        ));
    }
    let group =
        std::fs::read_to_string("/etc/group").map_err(e("/etc/group"))? + "truid-bench:x:64200:\n";
    std::fs::write(work.join("passwd"), passwd).map_err(e("passwd"))?;
    std::fs::write(work.join("group"), group).map_err(e("group"))?;
    std::env::set_var("NSS_WRAPPER_PASSWD", work.join("passwd"));
    std::env::set_var("NSS_WRAPPER_GROUP", work.join("group"));

    let ctx = Ctx {
        module,
        work,
        agent_sock,
        me,
    };
    let started = Instant::now();
    let mut next_user = 0usize;
    let mut rows: Vec<Row> = Vec::new();
    for (i, sc) in first.iter().enumerate() {
        eprintln!("truid-bench wan: RTT {} ms, {}", sc.rtt_ms, sc.mode.label());
        rows.extend(run_scenario(&ctx, sc, i, next_user)?);
        next_user += sc.steps.iter().map(|s| s.samples).sum::<usize>();
    }
    eprintln!(
        "truid-bench wan: {} idle, typing and link scenarios at {link_rtt} ms, side by side (about {} s)",
        second.len(),
        if quick { 130 } else { 730 }
    );
    let second_rows: Vec<Res<Vec<Row>>> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (k, sc) in second.iter().enumerate() {
            let first_user = next_user;
            next_user += sc.steps.iter().map(|s| s.samples).sum::<usize>();
            let ctx = &ctx;
            let idx = first.len() + k;
            handles.push(s.spawn(move || {
                std::thread::sleep(Duration::from_millis(1500 * k as u64));
                run_scenario(ctx, sc, idx, first_user)
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("scenario thread".into())))
            .collect()
    });
    // Rows of the second section grouped by case, the module on its own before the agent.
    let mut second_flat: Vec<Row> = Vec::new();
    for r in second_rows {
        second_flat.extend(r?);
    }
    let order: Vec<String> = second
        .iter()
        .filter(|s| s.mode == Mode::Own)
        .flat_map(|s| s.steps.iter().filter(|t| t.report).map(|t| t.label.clone()))
        .collect();
    second_flat.sort_by_key(|r| {
        (
            order
                .iter()
                .position(|l| *l == r.label)
                .unwrap_or(usize::MAX),
            r.mode == Mode::Agent,
        )
    });
    rows.extend(second_flat);

    print_table(&rows, &rtts, link_rtt, quick, warm_n, started.elapsed());
    Ok(())
}

struct Ctx {
    module: PathBuf,
    work: PathBuf,
    agent_sock: PathBuf,
    me: PathBuf,
}

fn run_scenario(ctx: &Ctx, sc: &Scenario, idx: usize, first_user: usize) -> Res<Vec<Row>> {
    let emu = Emulator::start(Options::default()).map_err(e("emulator"))?;
    let info = emu.info().clone();
    let upstream: std::net::SocketAddr = info
        .base_url
        .strip_prefix("https://")
        .ok_or("emulator base_url")?
        .parse()
        .map_err(e("emulator address"))?;
    let mut nopts = NetemOptions::new(upstream);
    nopts.rtt = Duration::from_millis(sc.rtt_ms);
    nopts.idle_fin = sc.idle_fin.map(Duration::from_secs_f64);
    nopts.idle_drop = sc.idle_drop.map(Duration::from_secs_f64);
    let netem = Netem::start(nopts).map_err(e("netem"))?;

    let dir = ctx.work.join(format!("wan{idx:02}"));
    let confdir = dir.join("pam.d");
    std::fs::create_dir_all(&confdir).map_err(e("mkdir"))?;
    let count: usize = sc.steps.iter().map(|s| s.samples).sum();
    let mut users: Vec<(String, String)> = Vec::with_capacity(count);
    let mut table = String::new();
    for i in first_user..first_user + count {
        let name = format!("wan{i:04}");
        let s = emu.seed_factor(&name, FactorType::Totp);
        table.push_str(&format!("{name} = \"{}\"\n", s.factor_id));
        users.push((name, s.secret_base32));
    }
    let agent = match sc.mode {
        Mode::Own => String::new(),
        Mode::Agent => ctx.agent_sock.display().to_string(),
    };
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api]\nbase_url = \"https://{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nca_file = \"{}\"\nagent = \"{agent}\"\ntimeout = 10\ntoken_cache = \"{}\"\n\n[login]\nfailmode = \"secure\"\n\n[users]\n{table}",
            netem.addr(),
            info.client_id,
            info.client_secret,
            info.ca_file.as_deref().unwrap_or_default(),
            dir.join("cache").display()
        ),
    )
    .map_err(e("config"))?;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).map_err(e("chmod"))?;
    // The syslog socket of this scenario: read after each login for its outcome line.
    let log_path = dir.join("log.sock");
    let log = UnixDatagram::bind(&log_path).map_err(e("log socket"))?;
    log.set_nonblocking(true).map_err(e("log socket"))?;
    let service = format!("wan{idx:02}");
    std::fs::write(
        confdir.join(&service),
        format!(
            "auth required {} config={} syslog_socket={}\n",
            ctx.module.display(),
            cfg.display(),
            log_path.display()
        ),
    )
    .map_err(e("service"))?;

    let mut rows = Vec::new();
    let mut users = users.into_iter();
    for st in &sc.steps {
        let mut samples = Vec::new();
        for _ in 0..st.samples {
            let (user, secret) = users.next().ok_or("too few users")?;
            // The idle time is what is measured: nothing waits on it.
            std::thread::sleep(st.idle);
            let (a, buf) = (emu.stats(), &mut [0u8; 4096]);
            while log.recv(buf).is_ok() {}
            let out = Command::new(&ctx.me)
                .env("LD_PRELOAD", "libnss_wrapper.so")
                .env("TRUID_BENCH_SECRET", &secret)
                .arg("wanlogin")
                .arg(&confdir)
                .arg(&service)
                .arg(&user)
                .arg(st.typing.as_millis().to_string())
                .stdin(Stdio::null())
                .output()
                .map_err(e("wanlogin"))?;
            let b = emu.stats();
            let mut outcome = String::new();
            while let Ok(k) = log.recv(buf) {
                let line = String::from_utf8_lossy(&buf[..k]).to_string();
                if let Some(w) = line.split_whitespace().find(|w| w.starts_with("outcome=")) {
                    outcome = w.to_string();
                }
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
                format!("wanlogin: {}", String::from_utf8_lossy(&out.stderr).trim())
            })?;
            let api = |s: &Stats| -> u64 {
                s.requests
                    .iter()
                    .filter(|(k, _)| k.as_str() != "control")
                    .map(|(_, v)| v)
                    .sum()
            };
            samples.push(Sample {
                prompt_ms: v["prompt_ms"].as_f64(),
                verdict_ms: v["verdict_ms"].as_f64().unwrap_or(f64::NAN),
                rc: v["rc"].as_i64().unwrap_or(-1) as i32,
                outcome,
                message: v["message"].as_str().unwrap_or("").to_string(),
                requests: api(&b) - api(&a),
                handshakes: b.tls_handshakes - a.tls_handshakes,
                tokens: b.tokens_issued - a.tokens_issued,
            });
        }
        if st.report {
            rows.push(Row {
                label: st.label.clone(),
                mode: sc.mode,
                rtt_ms: sc.rtt_ms,
                closed_while_typing: st.closed_while_typing,
                samples,
            });
        }
    }
    netem.shutdown();
    emu.shutdown();
    Ok(rows)
}

fn rc_name(rc: i32) -> String {
    let n = match rc {
        0 => "PAM_SUCCESS",
        4 => "PAM_SYSTEM_ERR",
        7 => "PAM_AUTH_ERR",
        9 => "PAM_AUTHINFO_UNAVAIL",
        10 => "PAM_USER_UNKNOWN",
        19 => "PAM_CONV_ERR",
        25 => "PAM_IGNORE",
        26 => "PAM_ABORT",
        _ => return format!("PAM code {rc}"),
    };
    n.into()
}

fn print_table(
    rows: &[Row],
    rtts: &[u64],
    link_rtt: u64,
    quick: bool,
    warm_n: usize,
    took: Duration,
) {
    println!();
    println!(
        "pam_truid over a WAN (issue 15): truid-netem on loopback between the module (or the agent) and the emulator; every login a fresh process through real libpam (pam_start_confdir), answering the right code after the typing time; timeout = 10, failmode = \"secure\"."
    );
    println!();
    println!("| case | RTT | to prompt | to verdict | result | per login: HTTP / TLS / token | target to prompt | target to verdict | vs targets |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut pass, mut lost) = (0, 0);
    for r in rows {
        let n = r.samples.len();
        let prompts: Vec<f64> = r.samples.iter().filter_map(|s| s.prompt_ms).collect();
        let verdicts: Vec<f64> = r.samples.iter().map(|s| s.verdict_ms).collect();
        // Right: let in, and because the code verified (not a failmode letting it through).
        let right = |s: &Sample| s.rc == 0 && s.outcome == "outcome=verified";
        let ok = r.samples.iter().filter(|s| right(s)).count();
        lost += n - ok;
        let prompt = if prompts.is_empty() {
            "no prompt".to_string()
        } else {
            format!("{:.1} ms", pct(&prompts, 50.0))
        };
        let verdict = pct(&verdicts, 50.0);
        let rtt = r.rtt_ms as f64;
        let limit = if r.closed_while_typing {
            3.0 * rtt + 30.0
        } else {
            rtt + 30.0
        };
        let result = if ok == n {
            format!(
                "ok{}",
                if n > 1 {
                    format!(" {ok}/{n}")
                } else {
                    String::new()
                }
            )
        } else {
            let bad = r.samples.iter().find(|s| !right(s));
            let detail = bad.map_or(String::new(), |s| {
                let mut d = rc_name(s.rc);
                if !s.outcome.is_empty() {
                    d.push_str(&format!(", {}", s.outcome));
                }
                if !s.message.is_empty() {
                    let m: String = s.message.chars().take(90).collect();
                    d.push_str(&format!(": \"{m}\""));
                }
                d
            });
            let what = if bad.is_some_and(|s| s.rc == 0) {
                "**let in unchecked**"
            } else {
                "**refused**"
            };
            format!("{what} {}/{n} ({detail})", n - ok)
        };
        let per =
            |f: fn(&Sample) -> u64| r.samples.iter().map(f).sum::<u64>() as f64 / n.max(1) as f64;
        let mut misses = Vec::new();
        if prompts.is_empty() || pct(&prompts, 50.0) > 30.0 {
            misses.push("prompt");
        }
        if verdict.is_nan() || verdict > limit {
            misses.push("verdict");
        }
        if ok < n {
            misses.push("login lost");
        }
        let verdict_s = if misses.is_empty() {
            pass += 1;
            "PASS".to_string()
        } else {
            format!("MISS ({})", misses.join(", "))
        };
        println!(
            "| {}, {} | {} ms | {prompt} | {verdict:.0} ms | {result} | {:.1} / {:.1} / {:.1} | <= 30 ms | <= {limit:.0} ms ({}) | {verdict_s} |",
            r.mode.label(),
            r.label,
            r.rtt_ms,
            per(|s| s.requests),
            per(|s| s.handshakes),
            per(|s| s.tokens),
            if r.closed_while_typing { "3 RTT + 30" } else { "1 RTT + 30" },
        );
    }
    println!();
    println!(
        "- {pass} of {} rows meet every target; logins lost (a right code not let in as verified): {lost}",
        rows.len()
    );
    println!(
        "- to prompt: from pam_start to the code prompt in the conversation; to verdict: from the answer to pam_authenticate's return (libpam's fail delay taken over by the application, so a refusal shows no 2 s wait). Medians where a row has several logins."
    );
    println!(
        "- per login at the emulator: API requests (token included), TLS handshakes, token requests."
    );
    println!(
        "- measured: RTT {} ms x (on its own, agent) x (first login, warm x{warm_n}, typing 1 s), one after the other; at {link_rtt} ms, side by side, each scenario after one warm-up login of its own: typing 15 s and 50 s, after 25 s idle{}, front end closing idle connections after 5 s (next login 8 s later; typing 8 s) and after 60 s (next login 65 s later; typing 50 s), middlebox silently dropping after 10 s (next login 12 s later; typing 15 s).",
        rtts.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        if quick {
            "; after 10 min idle not run (--quick)"
        } else {
            ", after 10 min idle"
        }
    );
    println!("- took {:.0} s", took.as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// `wanlogin CONFDIR SERVICE USER TYPING_MS` (the TOTP secret in TRUID_BENCH_SECRET): one login
// through real libpam in this fresh process; prints one JSON line.

struct ConvState {
    t0: Instant,
    prompt_at: Option<Duration>,
    answered_at: Option<Instant>,
    typing: Duration,
    secret: Vec<u8>,
    messages: Vec<String>,
}

extern "C" fn wan_conv(
    num: c_int,
    msgs: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata: *mut c_void,
) -> c_int {
    if num <= 0 || msgs.is_null() || resp.is_null() || appdata.is_null() {
        return 19;
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: libpam passes `num` messages and our own ConvState as appdata; the responses
        // are malloc'ed, as libpam frees them.
        unsafe {
            let st = &mut *(appdata as *mut ConvState);
            let out =
                libc::calloc(num as usize, std::mem::size_of::<PamResponse>()) as *mut PamResponse;
            if out.is_null() {
                return 19;
            }
            for i in 0..num as usize {
                let m = *msgs.add(i);
                let text = CStr::from_ptr((*m).msg).to_string_lossy().to_string();
                match (*m).msg_style {
                    1 | 2 => {
                        if st.prompt_at.is_none() {
                            st.prompt_at = Some(st.t0.elapsed());
                        }
                        // The person reads and types; the code is the one shown then.
                        std::thread::sleep(st.typing);
                        let code =
                            CString::new(totp::code(&st.secret, now_secs())).unwrap_or_default();
                        (*out.add(i)).resp = libc::strdup(code.as_ptr());
                        st.answered_at = Some(Instant::now());
                    }
                    _ => st.messages.push(text),
                }
            }
            *resp = out;
            0
        }
    }));
    r.unwrap_or(19)
}

extern "C" fn no_fail_delay(_retval: c_int, _usec: libc::c_uint, _appdata: *mut c_void) {}

pub(crate) fn login_child(args: &[String]) -> Res<()> {
    let [confdir, service, user, typing] = args else {
        return Err("wanlogin CONFDIR SERVICE USER TYPING_MS".into());
    };
    let secret = std::env::var("TRUID_BENCH_SECRET")
        .ok()
        .and_then(|s| totp::decode_secret(&s))
        .ok_or("TRUID_BENCH_SECRET")?;
    let typing = Duration::from_millis(typing.parse().map_err(e("TYPING_MS"))?);
    type Start = unsafe extern "C" fn(
        *const c_char,
        *const c_char,
        *const PamConv,
        *const c_char,
        *mut *mut c_void,
    ) -> c_int;
    type Auth = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
    type SetItem = unsafe extern "C" fn(*mut c_void, c_int, *const c_void) -> c_int;
    // SAFETY: libpam's documented entry points, looked up by name.
    let (start, auth, end, set_item) = unsafe {
        let h = libc::dlopen(c"libpam.so.0".as_ptr(), libc::RTLD_NOW);
        if h.is_null() {
            return Err("cannot load libpam.so.0".into());
        }
        let f = |n: &CStr| libc::dlsym(h, n.as_ptr());
        let (s, a, x, i) = (
            f(c"pam_start_confdir"),
            f(c"pam_authenticate"),
            f(c"pam_end"),
            f(c"pam_set_item"),
        );
        if s.is_null() || a.is_null() || x.is_null() || i.is_null() {
            return Err("libpam has no pam_start_confdir".into());
        }
        (
            std::mem::transmute::<*mut c_void, Start>(s),
            std::mem::transmute::<*mut c_void, Auth>(a),
            std::mem::transmute::<*mut c_void, Auth>(x),
            std::mem::transmute::<*mut c_void, SetItem>(i),
        )
    };
    let c = |s: &str| CString::new(s).map_err(e("argument"));
    let (confdir, service, user) = (c(confdir)?, c(service)?, c(user)?);
    let mut st = ConvState {
        t0: Instant::now(),
        prompt_at: None,
        answered_at: None,
        typing,
        secret,
        messages: Vec::new(),
    };
    let conv = PamConv {
        conv: wan_conv,
        appdata: &mut st as *mut ConvState as *mut c_void,
    };
    let mut pamh: *mut c_void = std::ptr::null_mut();
    // SAFETY: as documented by libpam; conv and st outlive the handle.
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
        set_item(pamh, PAM_FAIL_DELAY, no_fail_delay as *const c_void);
        auth(pamh, 0)
    };
    let done = Instant::now();
    // SAFETY: the handle from pam_start_confdir.
    unsafe { end(pamh, rc) };
    let verdict = done.duration_since(st.answered_at.unwrap_or(st.t0));
    let v = serde_json::json!({
        "prompt_ms": st.prompt_at.map(|d| d.as_secs_f64() * 1e3),
        "verdict_ms": verdict.as_secs_f64() * 1e3,
        "rc": rc,
        "message": st.messages.join(" / "),
    });
    println!("{v}");
    Ok(())
}
