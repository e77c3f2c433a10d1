//! The agent's services for unprivileged callers (its public socket), through real parts only:
//! the real `truid-pam agent --public-socket`, `truid-pam enroll` run by real NSS users
//! (runuser), the module run as the user through real libpam (pamtester under pam_wrapper, as
//! in tests/unprivileged.rs), raw requests sent by the user with socat, and the emulator.
//!
//! Each refusal of the security model (src/agent/services.rs) has its own test, which checks
//! what the person is told, the outcome line the agent itself logged (its `--syslog-socket` is
//! the test's listener), what
//! reached the emulator, and the config file where it matters. `each_refusal_as_the_agent_sends_it`
//! checks them all once more from a raw caller, exactly as the agent sends them.
//!
//! `the_callers_side_reads_every_line_the_agent_sends` failed on the code it was written
//! against (the caller's side of the relay took two lines that came in one read for one, and
//! the other tests through the relay failed at random); `a_request_of_another_protocol_version_is_logged_by_the_agent`
//! too (the agent did not log it).
//!
//! Run them in the private host: `tests/private-host.sh cargo test --test agent_services`.
//! The root socket refusing non-root callers is tests/agent.rs's
//! (`the_agent_socket_is_closed_to_other_users`); here only its mode next to the public one.

#[allow(unused_imports)]
mod common;
use common::daemon::*;
use common::logins::*;
use common::services::uid_of;
use common::*;

use pam_truid::agent::protocol::{ToCaller, PROTOCOL};
use pam_truid::agent::services::{
    MSG_AGENT_CONFIG, MSG_BUSY, MSG_NOT_IN_GROUPS, MSG_NOT_YOURS, MSG_SELF_OFF, MSG_TOO_MANY,
};
use pam_truid::enrolment::{Enrolled, MSG_BAD_PHONE, MSG_CODE, MSG_PHONE};
use pam_truid::flow::Outcome;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The most any one step of a test may take: far above what it needs, so that a hang fails
/// the test instead of holding the run.
const STEP: Duration = Duration::from_secs(30);

/// The reason a caller gets for any config error of the agent (`services::Relay::end`).
const GENERIC_CONFIG_REASON: &str =
    "the pam_truid agent's configuration or files have a problem (the system log says which)";

// ---------------------------------------------------------------------------------------------
// The agent's own log

/// The agent's own outcome lines: its `--syslog-socket` is this listener. A datagram socket's
/// queue is short, and a writer that blocks on a full one would hold the test, so a thread
/// empties it as lines come.
struct AgentLog {
    path: PathBuf,
    sock: Arc<UnixDatagram>,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Moves every datagram waiting in `sock` to `lines`.
fn drain(sock: &UnixDatagram, lines: &mut Vec<String>) {
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = sock.recv(&mut buf) {
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

impl AgentLog {
    fn new(w: &World) -> AgentLog {
        let path = w.path("agent-log.sock");
        let sock = Arc::new(UnixDatagram::bind(&path).unwrap());
        sock.set_nonblocking(true).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (sock, lines, stop) = (sock.clone(), lines.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut fd = libc::pollfd {
                    fd: sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                while !stop.load(Ordering::SeqCst) {
                    // SAFETY: one valid pollfd. The timeout only bounds how late the stop is seen.
                    unsafe { libc::poll(&mut fd, 1, 100) };
                    drain(&sock, &mut lines.lock().unwrap());
                }
            })
        };
        AgentLog {
            path,
            sock,
            lines,
            stop,
            reader: Some(reader),
        }
    }

    /// The outcome lines the process `pid` (the agent) logged so far. Under the lock the
    /// queue is emptied here too: every line sent before this call is counted.
    fn outcomes(&self, pid: u32) -> Vec<String> {
        let mut lines = self.lines.lock().unwrap();
        drain(&self.sock, &mut lines);
        let me = format!("pam_truid[{pid}]: ");
        lines
            .iter()
            .filter(|l| l.contains(&me) && l.contains("outcome="))
            .cloned()
            .collect()
    }
}

impl Drop for AgentLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The host: the emulator, the agent with its public socket, the config it reads

/// Fields drop in this order: the agent is stopped before its log and the world go.
struct Host {
    agent: Daemon,
    log: AgentLog,
    public: PathBuf,
    root_socket: PathBuf,
    /// Module outcome lines read so far (reading drains the socket).
    module_seen: std::cell::RefCell<Vec<String>>,
    w: World,
}

impl Host {
    /// The emulator, the config `text`, and the agent serving users with it.
    fn new(config: impl FnOnce(&World) -> String) -> Host {
        Host::with_world(World::new(), config)
    }

    fn with_world(w: World, config: impl FnOnce(&World) -> String) -> Host {
        let text = config(&w);
        let cfg = w.write_config(&text);
        // The module, run as a user, logs to the world's listener too.
        std::fs::set_permissions(&w.log.path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let log = AgentLog::new(&w);
        let root_socket = w.path("agent").join("agent.sock");
        let public = w.path("public").join("agent.sock");
        let agent = start_agent_serving_users(&root_socket, &public, &cfg, &log.path);
        Host {
            agent,
            log,
            public,
            root_socket,
            module_seen: Default::default(),
            w,
        }
    }

    fn cfg(&self) -> PathBuf {
        self.w.path("pam_truid.toml")
    }

    fn config_text(&self) -> String {
        std::fs::read_to_string(self.cfg()).unwrap()
    }

    fn agent_outcomes(&self) -> Vec<String> {
        self.log.outcomes(self.agent.child.id())
    }

    /// The outcome lines the module logged so far (as root or as a user).
    fn module_outcomes(&self) -> Vec<String> {
        let mut seen = self.module_seen.borrow_mut();
        seen.extend(
            self.w
                .log
                .lines()
                .into_iter()
                .filter(|l| l.contains("outcome=")),
        );
        seen.clone()
    }

    fn factors_created(&self) -> u64 {
        requests(&self.w, "factor_create")
    }

    /// `truid-pam enroll ARGS` run by `user`, against the agent's public socket.
    fn enroll(&self, user: &str, args: &[&str]) -> Cli {
        self.enroll_via(&self.public, &[], user, args)
    }

    /// `enroll` against `agent`, run under `wrap` (a program and its arguments, e.g. strace).
    fn enroll_via(&self, agent: &Path, wrap: &[&str], user: &str, args: &[&str]) -> Cli {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", user, "--"])
            .args(wrap)
            .args([CLI, "enroll", "--agent"])
            .arg(agent)
            .args(args);
        Cli::spawn(cmd)
    }

    /// A program run as `user` (a screen locker) logs `pam_user` in through real libpam, its
    /// stack for `service` being the module with `agent=` the public socket; `input` is what
    /// the person types. Whether PAM let them in, and all the program printed.
    fn locker(&self, user: &str, service: &str, pam_user: &str, input: &str) -> (bool, String) {
        self.locker_via(&self.public, &[], user, service, pam_user, input)
    }

    /// `locker` with `agent=` the given socket, run under `wrap`.
    fn locker_via(
        &self,
        agent: &Path,
        wrap: &[&str],
        user: &str,
        service: &str,
        pam_user: &str,
        input: &str,
    ) -> (bool, String) {
        let pamd = self.w.path("user-pam.d");
        if !pamd.exists() {
            std::fs::create_dir(&pamd).unwrap();
            std::fs::set_permissions(&pamd, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // The config the module is given: it cannot read it as the user, and never needs to.
        let stack = pamd.join(service);
        std::fs::write(
            &stack,
            format!(
                "auth required {} config={} syslog_socket={} agent={}\n",
                module_path().display(),
                self.cfg().display(),
                self.w.log.path.display(),
                agent.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&stack, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", user, "--"])
            .args(wrap)
            .args(["env", "LD_PRELOAD=libpam_wrapper.so", "PAM_WRAPPER=1"])
            .arg(format!("PAM_WRAPPER_SERVICE_DIR={}", pamd.display()))
            .args(["pamtester", service, pam_user, "authenticate"]);
        let mut run = Cli::spawn(cmd);
        run.type_line(input);
        let done = run.finish();
        let text = format!("{}{}", done.stdout, done.stderr);
        let ok = done.status.success() && text.contains("successfully authenticated");
        (ok, text)
    }

    /// One raw request line sent to the public socket by `user` (socat run as them), and
    /// the agent's lines back, as text. Nothing is typed: a prompt is answered by the end of
    /// the input.
    fn raw(&self, user: &str, line: &str) -> Vec<String> {
        self.raw_answering(user, line, &[])
    }

    /// `raw`, each prompt of the agent answered in turn with one of `answers` (once the
    /// prompt has come: a caller answers what it was asked).
    fn raw_answering(&self, user: &str, line: &str, answers: &[&str]) -> Vec<String> {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", user, "--", "socat", "-t", "10", "STDIO"])
            .arg(format!("UNIX-CONNECT:{}", self.public.display()));
        let mut run = Cli::spawn(cmd);
        run.type_line(line);
        for a in answers {
            run.wait_for("{\"prompt_");
            run.type_line(&serde_json::json!({ "answer": a }).to_string());
        }
        let done = run.finish();
        assert!(done.status.success(), "socat: {}", done.stderr);
        done.stdout
            .lines()
            .map(|l| match serde_json::from_str::<ToCaller>(l) {
                Ok(m) => describe(&m),
                Err(_) => panic!("the agent sent a line that is not a ToCaller: {l:?}"),
            })
            .collect()
    }
}

fn requests(w: &World, route: &str) -> u64 {
    w.emu.stats().requests.get(route).copied().unwrap_or(0)
}

/// What an agent's line is, as text the tests compare (ToCaller has no Debug: it may carry
/// a QR code).
fn describe(m: &ToCaller) -> String {
    match m {
        ToCaller::PromptSecret(t) => format!("prompt_secret: {t}"),
        ToCaller::PromptEcho(t) => format!("prompt_echo: {t}"),
        ToCaller::Info(t) => format!("info: {t}"),
        ToCaller::Error(t) => format!("error: {t}"),
        ToCaller::KeepPassword(_) => "keep_password".into(),
        ToCaller::Done(o) => format!("done: {o:?}"),
    }
}

fn done_line(o: &Outcome) -> String {
    format!("done: {o:?}")
}

/// `[api]` for the emulator, the administrator's own comments and lines (which an enrolment
/// must keep), `login` and `enroll` lines, and `users`.
fn config_text(w: &World, login: &str, enroll: &str, users: &[(&str, &str)]) -> String {
    let kept = w.enroll("keptuser");
    let mut text = format!(
        "# The administrator's note: kept by every edit.\n{}\n[login]\n{login}\n\n[enroll]\n{enroll}\n\n# Who has which factor.\n[users]\nkeptuser = \"{kept}\" # a comment on a line\n",
        w.api_table()
    );
    for (u, f) in users {
        text.push_str(&format!("{u} = \"{f}\"\n"));
    }
    text.push_str("\n[phones]\n# numbers for push\nkeptuser = \"+447700900999\"\n");
    text
}

const SELF_ON: &str = "self = true";

/// A user the host knows (NSS), whom the tests run programs as.
fn user(name: &str) -> &str {
    ensure_user(name);
    name
}

// ---------------------------------------------------------------------------------------------
// A program run as the user, driven line by line

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// A program the test runs (its own process group, ended by it if the test fails first):
/// its stderr read line by line as it comes, its stdin typed into.
struct Cli {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its lines as they come: (from stdout, the line).
    lines: mpsc::Receiver<(bool, String)>,
    /// Everything it wrote so far.
    stdout: String,
    stderr: String,
}

impl Cli {
    fn spawn(mut cmd: Command) -> Cli {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let read = |from_stdout: bool, stream: Box<dyn std::io::Read + Send>| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((from_stdout, line)).is_err() {
                        break;
                    }
                }
            });
        };
        read(true, Box::new(child.stdout.take().unwrap()));
        read(false, Box::new(child.stderr.take().unwrap()));
        Cli {
            stdin: child.stdin.take(),
            child,
            lines,
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    fn keep(&mut self, from_stdout: bool, line: &str) {
        let all = if from_stdout {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        all.push_str(line);
        all.push('\n');
    }

    /// Waits for a line holding `want` (the program has shown it, so it now waits for the
    /// answer); returns the lines since the last wait, that one included.
    fn wait_for(&mut self, want: &str) -> String {
        let deadline = Instant::now() + STEP;
        let mut got = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((from_stdout, line)) => {
                    got.push_str(&line);
                    got.push('\n');
                    self.keep(from_stdout, &line);
                    if line.contains(want) {
                        return got;
                    }
                }
                Err(_) => panic!(
                    "never shown {want:?}; so far:\n{}{}",
                    self.stdout, self.stderr
                ),
            }
        }
    }

    fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        // The program may have ended already (a refusal): what it says is checked afterwards.
        let _ = stdin.write_all(format!("{text}\n").as_bytes());
        let _ = stdin.flush();
    }

    /// Closes stdin (no more answers) and waits for the end.
    fn finish(mut self) -> Finished {
        self.stdin = None;
        let deadline = Instant::now() + STEP;
        let status = wait_until(&mut self.child, deadline)
            .unwrap_or_else(|| panic!("did not end; stderr so far:\n{}", self.stderr));
        // The readers end at the pipes' end (every writer has gone).
        while let Ok((from_stdout, line)) = self.lines.recv_timeout(STEP) {
            self.keep(from_stdout, &line);
        }
        Finished {
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------------
// The phone

/// The key the first code prompt shows ("…or enter this key by hand: KEY.").
fn key_in(prompt: &str) -> String {
    let (_, rest) = prompt
        .split_once("enter this key by hand: ")
        .expect("the code prompt shows the key");
    let key: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    assert!(key.len() >= 16, "a short key: {} characters", key.len());
    key
}

/// What the app shows now for `key`.
fn app_code(key: &str) -> String {
    let secret = truid_emulator::totp::decode_secret(key).expect("a base32 key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    truid_emulator::totp::code(&secret, now)
}

/// The factor the CLI says is now the user's ("Activated: factor F is yours").
fn activated_factor(stdout: &str) -> String {
    let (_, rest) = stdout
        .split_once("Activated: factor ")
        .unwrap_or_else(|| panic!("not activated: {stdout}"));
    rest.split_whitespace().next().unwrap().to_string()
}

/// A later login of `user` as root's stacks run it (the world's stack, real libpam), with the
/// factor's next code (its current one activated it, and a step's code is taken once).
fn root_login_is_verified(h: &Host, user: &str, factor: &str) {
    h.w.module_stack();
    let code = h.w.emu.code(factor, 1).unwrap();
    let (rc, s) = h.w.login(user, &[&code]);
    let lines = h.module_outcomes();
    assert_eq!(rc, PAM_SUCCESS, "{:?} {lines:?}", s.seen);
    assert_eq!(s.prompts(), vec!["tru.ID code: "]);
    let last = lines.last().unwrap();
    assert!(
        last.contains("outcome=verified") && last.contains(&format!("user=\"{user}\"")),
        "{lines:?}"
    );
}

fn assert_kept(text: &str) {
    for kept in [
        "# The administrator's note: kept by every edit.",
        "# Who has which factor.",
        "# a comment on a line",
        "# numbers for push",
        "keptuser = \"+447700900999\"",
        "trust_loopback_port = true",
    ] {
        assert!(text.contains(kept), "lost {kept:?}:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A user enrolls themselves

#[test]
fn a_user_enrolls_themselves_with_phone_given_and_then_logs_in() {
    let h = Host::new(|w| config_text(w, "", SELF_ON, &[]));
    let u = user("truidas01");
    // Both sockets as the unit has them: root's stays closed to users (tests/agent.rs), the
    // public one is open to all, in a folder only root writes to.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&h.root_socket), 0o600);
    assert_eq!(mode(&h.public), 0o666);
    assert_eq!(mode(h.public.parent().unwrap()), 0o755);
    let before = std::fs::metadata(h.cfg()).unwrap();

    let mut run = h.enroll(u, &["--phone", "+447700900123"]);
    let prompt = run.wait_for(MSG_CODE.trim_end());
    assert!(!prompt.contains(MSG_PHONE.trim_end()), "phone asked again");
    assert!(prompt.contains("Scan this QR code"), "no QR code");
    run.type_line(&app_code(&key_in(&prompt)));
    let done = run.finish();
    assert!(done.status.success(), "{}{}", done.stdout, done.stderr);
    let f = activated_factor(&done.stdout);
    assert!(
        done.stderr
            .contains(&format!("your logins now ask for the code of factor {f}")),
        "{}",
        done.stderr
    );

    // Recorded as the administrator's `enroll` records: the file otherwise as it was.
    let text = h.config_text();
    assert!(text.contains(&format!("{u} = \"{f}\"")), "{text}");
    assert!(text.contains(&format!("{u} = \"+447700900123\"")), "{text}");
    assert_kept(&text);
    let after = std::fs::metadata(h.cfg()).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode())
    );
    let cfg = pam_truid::config::Config::load(&h.cfg()).unwrap();
    assert_eq!(cfg.users.get(u).map(|f| f.as_str()), Some(f.as_str()));

    let lines = h.agent_outcomes();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("outcome=enrolled")
            && lines[0].contains(&format!("user=\"{u}\""))
            && lines[0].contains("service=\"truid-pam-enroll\"")
            && lines[0].contains(&f),
        "{lines:?}"
    );
    assert_eq!(h.factors_created(), 1);
    assert_eq!(requests(&h.w, "factor_patch"), 1, "one activation");

    root_login_is_verified(&h, u, &f);
}

#[test]
fn a_user_enrolls_themselves_typing_the_phone_at_the_prompt() {
    let h = Host::new(|w| config_text(w, "", SELF_ON, &[]));
    let u = user("truidas02");
    let mut run = h.enroll(u, &[]);
    run.wait_for(MSG_PHONE.trim_end());
    // Not a number: asked again; spaces and dashes are fine.
    run.type_line("12");
    run.wait_for(MSG_BAD_PHONE);
    run.wait_for(MSG_PHONE.trim_end());
    assert_eq!(h.factors_created(), 0, "a factor for a bad number");
    run.type_line("+44 7700-900124");
    let prompt = run.wait_for(MSG_CODE.trim_end());
    run.type_line(&app_code(&key_in(&prompt)));
    let done = run.finish();
    assert!(done.status.success(), "{}{}", done.stdout, done.stderr);
    let f = activated_factor(&done.stdout);

    let text = h.config_text();
    assert!(text.contains(&format!("{u} = \"{f}\"")), "{text}");
    assert!(text.contains(&format!("{u} = \"+447700900124\"")), "{text}");
    assert_kept(&text);
    let lines = h.agent_outcomes();
    assert!(
        lines.len() == 1 && lines[0].contains("outcome=enrolled"),
        "{lines:?}"
    );
    assert_eq!(h.factors_created(), 1);
    root_login_is_verified(&h, u, &f);
}

#[test]
fn with_lookup_an_enrolment_writes_nothing_and_the_login_finds_the_factor() {
    let h = Host::new(|w| config_text(w, "lookup = true", SELF_ON, &[]));
    let u = user("truidas03");
    let before = h.config_text();
    let mut run = h.enroll(u, &["--phone", "+447700900125"]);
    let prompt = run.wait_for(MSG_CODE.trim_end());
    run.type_line(&app_code(&key_in(&prompt)));
    let done = run.finish();
    assert!(done.status.success(), "{}{}", done.stdout, done.stderr);
    let f = activated_factor(&done.stdout);
    assert_eq!(h.config_text(), before, "lookup = true writes nothing");
    let lines = h.agent_outcomes();
    assert!(
        lines.len() == 1 && lines[0].contains("outcome=enrolled"),
        "{lines:?}"
    );
    // Found at tru.ID by its external user ID, the user's name.
    let lookups = requests(&h.w, "factor_list");
    root_login_is_verified(&h, u, &f);
    assert!(requests(&h.w, "factor_list") > lookups, "no lookup");
}

// ---------------------------------------------------------------------------------------------
// 2. Refusals

#[test]
fn self_service_is_off_by_default() {
    let h = Host::new(|w| config_text(w, "", "", &[]));
    let u = user("truidas04");
    let before = h.config_text();
    let done = h.enroll(u, &["--phone", "+447700900126"]).finish();
    assert!(!done.status.success());
    assert!(done.stderr.contains(MSG_SELF_OFF), "{}", done.stderr);
    assert!(
        !done.stderr.contains(MSG_CODE.trim_end()),
        "{}",
        done.stderr
    );
    let lines = h.agent_outcomes();
    assert!(
        lines.len() == 1
            && lines[0].contains("outcome=refused")
            && lines[0].contains(&format!("user=\"{u}\""))
            && lines[0].contains("[enroll] self is false"),
        "{lines:?}"
    );
    assert_eq!(h.factors_created(), 0);
    assert_eq!(h.config_text(), before);
}

#[test]
fn only_members_of_the_enroll_groups_enroll_themselves() {
    let (member, outsider) = (user("truidas05"), user("truidas06"));
    ensure_group_with("truidasgrp", &[member]);
    let h = Host::new(|w| config_text(w, "", "self = true\ngroups = [\"truidasgrp\"]", &[]));
    let before = h.config_text();

    let done = h.enroll(outsider, &["--phone", "+447700900127"]).finish();
    assert!(!done.status.success());
    assert!(done.stderr.contains(MSG_NOT_IN_GROUPS), "{}", done.stderr);
    let lines = h.agent_outcomes();
    assert!(
        lines.len() == 1
            && lines[0].contains("outcome=refused")
            && lines[0].contains(&format!("user=\"{outsider}\""))
            && lines[0].contains("none of [enroll] groups"),
        "{lines:?}"
    );
    assert_eq!(h.factors_created(), 0);
    assert_eq!(h.config_text(), before);

    // The member gets as far as the phone (and leaves there).
    let mut run = h.enroll(member, &[]);
    run.wait_for(MSG_PHONE.trim_end());
    let done = run.finish();
    assert!(!done.status.success());
    assert!(!done.stderr.contains(MSG_NOT_IN_GROUPS), "{}", done.stderr);
    let lines = h.agent_outcomes();
    assert!(
        lines.len() == 2
            && lines[1].contains("outcome=conversation_error")
            && lines[1].contains(&format!("user=\"{member}\"")),
        "{lines:?}"
    );
}

#[test]
fn a_fourth_enrolment_within_the_hour_is_refused() {
    let h = Host::new(|w| config_text(w, "", SELF_ON, &[]));
    let (u, other) = (user("truidas07"), user("truidas08"));
    // Three starts, each left at the phone prompt (stdin closed).
    for i in 0..3 {
        let mut run = h.enroll(u, &[]);
        run.wait_for(MSG_PHONE.trim_end());
        let done = run.finish();
        assert!(!done.status.success(), "start {i}");
    }
    let done = h.enroll(u, &["--phone", "+447700900128"]).finish();
    assert!(!done.status.success());
    assert!(done.stderr.contains(MSG_TOO_MANY), "{}", done.stderr);
    assert!(
        !done.stderr.contains(MSG_CODE.trim_end()),
        "{}",
        done.stderr
    );
    // The number was given: without the limit, a factor would have been made.
    assert_eq!(h.factors_created(), 0);
    let lines = h.agent_outcomes();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[..3]
            .iter()
            .all(|l| l.contains("outcome=conversation_error")),
        "{lines:?}"
    );
    assert!(
        lines[3].contains("outcome=refused")
            && lines[3].contains(&format!("user=\"{u}\""))
            && lines[3].contains("3 enrolments within the hour"),
        "{lines:?}"
    );
    // The count is the uid's own.
    let mut run = h.enroll(other, &[]);
    run.wait_for(MSG_PHONE.trim_end());
    let done = run.finish();
    assert!(!done.stderr.contains(MSG_TOO_MANY), "{}", done.stderr);
}

#[test]
fn a_user_with_an_active_factor_cannot_enroll_again() {
    let u = user("truidas09");
    let w = World::new();
    let f = w.enroll(u);
    let h = Host::with_world(w, |w| config_text(w, "", SELF_ON, &[(u, &f)]));
    let before = h.config_text();
    let done = h.enroll(u, &["--phone", "+447700900129"]).finish();
    assert!(!done.status.success());
    let why = Enrolled::HasFactor.reason();
    assert!(done.stderr.contains(&why), "{}", done.stderr);
    assert!(
        !done.stderr.contains(MSG_CODE.trim_end()),
        "{}",
        done.stderr
    );
    let lines = h.agent_outcomes();
    assert!(
        lines.len() == 1 && lines[0].contains("outcome=refused") && lines[0].contains(&why),
        "{lines:?}"
    );
    assert_eq!(h.factors_created(), 0);
    assert_eq!(h.config_text(), before);

    // With lookup, a factor at tru.ID under the user's external ID is theirs too.
    let v = user("truidas10");
    h.w.enroll(v);
    h.w.write_config(&config_text(&h.w, "lookup = true", SELF_ON, &[]));
    let before = h.config_text();
    let done = h.enroll(v, &["--phone", "+447700900130"]).finish();
    assert!(done.stderr.contains(&why), "{}", done.stderr);
    let lines = h.agent_outcomes();
    assert!(
        lines.len() == 2 && lines[1].contains(&format!("user=\"{v}\"")) && lines[1].contains(&why),
        "{lines:?}"
    );
    assert_eq!(h.factors_created(), 0);
    assert_eq!(h.config_text(), before);
}

#[test]
fn a_user_cannot_enroll_another_account_from_the_cli() {
    let h = Host::new(|w| config_text(w, "", SELF_ON, &[]));
    let (u, other) = (user("truidas11"), user("truidas12"));
    for target in [other, "root"] {
        let done = h.enroll(u, &[target, "--phone", "+447700900131"]).finish();
        assert!(!done.status.success());
        assert!(
            done.stderr.contains("you can enroll only yourself"),
            "{}",
            done.stderr
        );
    }
    // Refused by the CLI itself: the agent served nobody.
    assert_eq!(h.agent_outcomes(), Vec::<String>::new());
    assert_eq!(h.factors_created(), 0);
    // Naming oneself is fine: that goes to the agent.
    let mut run = h.enroll(u, &[u]);
    run.wait_for(MSG_PHONE.trim_end());
    drop(run.finish());
    assert_eq!(h.agent_outcomes().len(), 1);
}

#[test]
fn a_raw_enrol_request_cannot_name_a_user() {
    let h = Host::new(|w| config_text(w, "", SELF_ON, &[]));
    let (u, other) = (user("truidas13"), user("truidas14"));
    let before = h.config_text();
    for line in [
        format!(
            r#"{{"v":{PROTOCOL},"service":{{"op":"enroll","phone":"+447700900132","user":"{other}"}}}}"#
        ),
        format!(
            r#"{{"v":{PROTOCOL},"user":"{other}","service":{{"op":"enroll","phone":"+447700900132"}}}}"#
        ),
    ] {
        let got = h.raw(u, &line);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("done: BadInput") && got[0].contains("could not be read"),
            "{got:?}"
        );
    }
    assert_eq!(h.factors_created(), 0);
    assert_eq!(h.config_text(), before);
    // The same request without the name is served (for the caller): the agent asks the
    // phone, and the end of the input ends it.
    let got = h.raw(
        u,
        &format!(r#"{{"v":{PROTOCOL},"service":{{"op":"enroll","phone":null}}}}"#),
    );
    assert_eq!(
        got.first(),
        Some(&format!("prompt_echo: {MSG_PHONE}")),
        "{got:?}"
    );
    assert!(
        got.last().unwrap().starts_with("done: ConvError"),
        "{got:?}"
    );
    // The unreadable requests above were logged (bad_input) by the agent, then this one.
    let lines = h.agent_outcomes();
    let (unreadable, rest) = lines.split_at(lines.len() - 1);
    assert!(
        unreadable.iter().all(|l| l.contains("outcome=bad_input"))
            && rest[0].contains("outcome=conversation_error")
            && rest[0].contains(&format!("user=\"{u}\"")),
        "{lines:?}"
    );
}

#[test]
fn a_locker_login_is_checked_only_for_the_callers_own_account() {
    let (u, other) = (user("truidas15"), user("truidas16"));
    let w = World::new();
    let f = w.enroll(u);
    let g = w.enroll(other);
    let h = Host::with_world(w, |w| config_text(w, "", "", &[(u, &f), (other, &g)]));
    for target in ["root", other, "truidas-nosuchuser"] {
        let (ok, text) = h.locker(u, "truid-locker", target, &h.w.code(&g));
        assert!(!ok, "{target}: {text}");
        assert!(text.contains(MSG_NOT_YOURS), "{target}: {text}");
        assert!(text.contains("Authentication failure"), "{target}: {text}");
        assert!(!text.contains("tru.ID code: "), "{target}: {text}");
    }
    assert_eq!(h.w.emu.stats().challenges_created, 0);
    let lines = h.agent_outcomes();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (l, target) in lines.iter().zip(["root", other, "truidas-nosuchuser"]) {
        assert!(
            l.contains("outcome=refused")
                && l.contains(&format!("user=\"{u}\""))
                && l.contains(&format!("the code of \\\"{target}\\\"")),
            "{l}"
        );
    }
    let module = h.module_outcomes();
    assert!(
        module.len() == 3 && module.iter().all(|l| l.contains("outcome=refused")),
        "{module:?}"
    );
    // The caller's own account is checked.
    let (ok, text) = h.locker(u, "truid-locker", u, &h.w.code(&f));
    assert!(ok, "{text}");
    assert_eq!(h.w.emu.stats().challenges_created, 1);
    assert!(h.agent_outcomes()[3].contains("outcome=verified"));
}

#[test]
fn a_locker_login_for_su_is_refused() {
    let u = user("truidas17");
    let w = World::new();
    let f = w.enroll(u);
    let h = Host::with_world(w, |w| config_text(w, "", "", &[(u, &f)]));
    for service in ["su", "su-l"] {
        let (ok, text) = h.locker(u, service, u, &h.w.code(&f));
        assert!(!ok, "{service}: {text}");
        assert!(text.contains(MSG_NOT_YOURS), "{service}: {text}");
        assert!(!text.contains("tru.ID code: "), "{service}: {text}");
    }
    assert_eq!(h.w.emu.stats().challenges_created, 0);
    let lines = h.agent_outcomes();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (l, service) in lines.iter().zip(["su", "su-l"]) {
        assert!(
            l.contains("outcome=refused") && l.contains(&format!("service=\"{service}\"")),
            "{l}"
        );
    }
    // Another service name, same account: checked.
    let (ok, text) = h.locker(u, "xscreensaver", u, &h.w.code(&f));
    assert!(ok, "{text}");
}

#[test]
fn a_second_request_of_one_uid_at_once_is_refused_as_busy() {
    let (u, other) = (user("truidas18"), user("truidas19"));
    let w = World::new();
    let g = w.enroll(other);
    let h = Host::with_world(w, |w| config_text(w, "", SELF_ON, &[(other, &g)]));
    // The first request (u enrolling) holds at the phone prompt.
    let mut first = h.enroll(u, &[]);
    first.wait_for(MSG_PHONE.trim_end());

    let (ok, text) = h.locker(u, "truid-locker", u, "123456");
    assert!(!ok, "{text}");
    assert!(text.contains(MSG_BUSY), "{text}");
    assert!(!text.contains("tru.ID code: "), "{text}");
    let module = h.module_outcomes();
    assert!(
        module.len() == 1
            && module[0].contains("outcome=refused")
            && module[0].contains("another request running"),
        "{module:?}"
    );
    let done = h.enroll(u, &["--phone", "+447700900133"]).finish();
    assert!(done.stderr.contains(MSG_BUSY), "{}", done.stderr);
    assert_eq!(h.w.emu.stats().challenges_created, 0);
    assert_eq!(h.factors_created(), 0);
    // Another uid is not held up.
    let (ok, text) = h.locker(other, "truid-locker", other, &h.w.code(&g));
    assert!(ok, "{text}");

    // Once the first ends, the uid is served again.
    let done = first.finish();
    assert!(!done.status.success());
    let lines = h.agent_outcomes();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("outcome=conversation_error")
                && l.contains(&format!("user=\"{u}\""))),
        "{lines:?}"
    );
    let mut again = h.enroll(u, &[]);
    again.wait_for(MSG_PHONE.trim_end());
    let done = again.finish();
    assert!(!done.stderr.contains(MSG_BUSY), "{}", done.stderr);
}

fn other_versions() -> [String; 2] {
    [PROTOCOL - 1, PROTOCOL + 1]
        .map(|v| format!(r#"{{"v":{v},"service":{{"op":"enroll","phone":"+447700900134"}}}}"#))
}

#[test]
fn a_request_of_another_protocol_version_is_refused() {
    let h = Host::new(|w| config_text(w, "", SELF_ON, &[]));
    let u = user("truidas20");
    let before = h.config_text();
    for line in other_versions() {
        let got = h.raw(u, &line);
        // Only the outcome: nothing asked, no factor made.
        assert_eq!(
            got,
            vec![done_line(&Outcome::ConfigError {
                reason: GENERIC_CONFIG_REASON.into()
            })],
            "{line}"
        );
    }
    assert_eq!(h.factors_created(), 0);
    assert_eq!(h.config_text(), before);
}

/// The caller is told "the system log says which"; the agent must then say it.
#[test]
fn a_request_of_another_protocol_version_is_logged_by_the_agent() {
    let h = Host::new(|w| config_text(w, "", SELF_ON, &[]));
    let u = user("truidas21");
    let line = &other_versions()[0];
    let got = h.raw(u, line);
    assert_eq!(got.len(), 1, "{got:?}");
    let lines = h.agent_outcomes();
    assert!(
        lines.len() == 1
            && lines[0].contains("outcome=config_error")
            && lines[0].contains(&format!("protocol {PROTOCOL}")),
        "{lines:?}"
    );
}

#[test]
fn a_config_the_agent_cannot_read_is_told_only_in_general() {
    let u = user("truidas22");
    let w = World::new();
    let f = w.enroll(u);
    let h = Host::with_world(w, |w| config_text(w, "", SELF_ON, &[(u, &f)]));
    // Holds the client secret, readable by all: the module and the agent refuse it.
    std::fs::set_permissions(h.cfg(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = h.cfg().display().to_string();

    let done = h.enroll(u, &["--phone", "+447700900135"]).finish();
    assert!(!done.status.success());
    assert!(done.stderr.contains(MSG_AGENT_CONFIG), "{}", done.stderr);
    assert!(
        done.stderr.contains(GENERIC_CONFIG_REASON),
        "{}",
        done.stderr
    );
    let (ok, text) = h.locker(u, "truid-locker", u, &h.w.code(&f));
    assert!(!ok, "{text}");
    assert!(text.contains(MSG_AGENT_CONFIG), "{text}");
    for shown in [&done.stderr, &text] {
        for detail in [path.as_str(), "0644", "chmod", "readable by group"] {
            assert!(
                !shown.contains(detail),
                "the caller saw {detail:?}: {shown}"
            );
        }
    }
    let module = h.module_outcomes();
    assert!(
        module.len() == 1
            && module[0].contains("outcome=config_error")
            && !module[0].contains(&path),
        "{module:?}"
    );
    // The details are in the agent's own lines.
    let lines = h.agent_outcomes();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert!(
            l.contains("outcome=config_error")
                && l.contains(&path)
                && l.contains("readable by group or others"),
            "{l}"
        );
    }
    assert_eq!(h.factors_created(), 0);
    assert_eq!(h.w.emu.stats().challenges_created, 0);
}

#[test]
fn a_listener_that_is_not_roots_gets_no_request() {
    let u = user("truidas23");
    let w = World::new();
    let f = w.enroll(u);
    let h = Host::with_world(w, |w| config_text(w, "", SELF_ON, &[(u, &f)]));
    // Another user's socket, in a folder anyone may write to.
    let open = h.w.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = open.join("agent.sock");
    let heard = open.join("heard");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "socat",
        "-d",
        "-d",
        "-u",
    ])
    // Open to all, as a socket someone plants for others to connect to.
    .arg(format!("UNIX-LISTEN:{},fork,mode=0777", sock.display()))
    .arg(format!("OPEN:{},creat,append", heard.display()));
    let mut impostor = Daemon::start(cmd, "listening on", true);

    let done = h
        .enroll_via(&sock, &[], u, &["--phone", "+447700900136"])
        .finish();
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("is not served by root")
            && done.stderr.contains("goes through the pam_truid agent"),
        "{}",
        done.stderr
    );
    let (ok, text) = h.locker_via(&sock, &[], u, "truid-locker", u, &h.w.code(&f));
    assert!(!ok, "{text}");
    assert!(text.contains(pam_truid::flow::MSG_UNPRIVILEGED), "{text}");
    assert!(!text.contains("tru.ID code: "), "{text}");
    let module = h.module_outcomes();
    assert!(
        module.len() == 1
            && module[0].contains("outcome=unprivileged_denied")
            && module[0].contains("not served by root"),
        "{module:?}"
    );
    // Both connected, saw a peer that is not root, and sent not one byte: no phone, no code.
    impostor.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        impostor.said("accepting connection"),
        "nothing connected to the impostor"
    );
    let sent = std::fs::read(&heard).unwrap_or_default();
    assert!(sent.is_empty(), "{} bytes reached the impostor", sent.len());
    assert_eq!(h.agent_outcomes(), Vec::<String>::new());
    assert_eq!(h.factors_created(), 0);
}

// ---------------------------------------------------------------------------------------------
// 3. failmode = "safe" does not let a caller in

#[test]
fn safe_never_lets_a_locker_in_when_tru_id_is_down() {
    let u = user("truidas24");
    let w = World::new();
    let f = w.enroll(u);
    let h = Host::with_world(w, |w| config_text(w, "failmode = \"safe\"", "", &[(u, &f)]));
    h.w.emu.set_fault(Fault {
        route: Route::Any,
        kind: FaultKind::Status(503),
        times: None,
    });
    let (ok, text) = h.locker(u, "truid-locker", u, &h.w.code(&f));
    assert!(!ok, "let in: {text}");
    assert!(
        text.contains("cannot retrieve authentication info"),
        "{text}"
    );
    // What the person is told, as the agent sends it (the module may lose it: see
    // the_callers_side_reads_every_line_the_agent_sends).
    let got = h.raw_answering(u, &login_line(u, "truid-locker"), &[&h.w.code(&f)]);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], "prompt_secret: tru.ID code: ");
    assert_eq!(
        got[1],
        format!("error: {}", pam_truid::flow::MSG_UNAVAILABLE)
    );
    assert!(
        got.last().unwrap().starts_with("done: Unavailable")
            && got.last().unwrap().contains("let_in: false"),
        "{got:?}"
    );
    let lines = h.agent_outcomes();
    assert!(
        lines.len() == 2
            && lines
                .iter()
                .all(|l| l.contains("outcome=unavailable_denied")
                    && l.contains(&format!("user=\"{u}\""))),
        "{lines:?}"
    );
    let module = h.module_outcomes();
    assert!(
        module.len() == 1 && module[0].contains("outcome=unavailable_denied"),
        "{module:?}"
    );
    assert_eq!(h.w.emu.stats().verifications, 0);
    // The same config lets root's own login in (the host vouches for the endpoint): it is
    // the caller's control over the program that makes the difference.
    h.w.module_stack();
    let (rc, s) = h.w.login(u, &[&h.w.code(&f)]);
    let module = h.module_outcomes();
    assert_eq!(rc, PAM_SUCCESS, "{:?} {module:?}", s.seen);
    assert!(
        module
            .last()
            .unwrap()
            .contains("outcome=unavailable_allowed"),
        "{module:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Every refusal as the agent sends it (a raw request: what reaches the caller, exactly)

fn enroll_line(phone: Option<&str>) -> String {
    let phone = phone.map_or("null".to_string(), |p| format!("\"{p}\""));
    format!(r#"{{"v":{PROTOCOL},"service":{{"op":"enroll","phone":{phone}}}}}"#)
}

fn login_line(user: &str, service: &str) -> String {
    format!(
        r#"{{"v":{PROTOCOL},"service":{{"op":"login","user":"{user}","service":"{service}","tty":null,"rhost":null,"combined":false}}}}"#
    )
}

/// The agent told the caller `msg`, then ended with a refusal whose reason holds `why`.
fn assert_refused(got: &[String], msg: &str, why: &str) {
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], format!("error: {msg}"));
    // As the outcome's Debug shows it.
    let why = format!("{why:?}");
    let why = &why[1..why.len() - 1];
    assert!(
        got[1].starts_with("done: Refused { tries: 0, reason: ") && got[1].contains(why),
        "{got:?}"
    );
}

/// Each refusal of the security model, sent by the user's own program (socat run as them):
/// the lines the agent sends, its outcome line, and that nothing reached tru.ID. The same
/// refusals through `truid-pam enroll` and the module are the tests above.
#[test]
fn each_refusal_as_the_agent_sends_it() {
    let (a, b, c) = (user("truidas26"), user("truidas27"), user("truidas28"));
    ensure_group_with("truidasgrp2", &[b]);
    let w = World::new();
    let fa = w.enroll(a);
    let h = Host::with_world(w, |w| config_text(w, "", "", &[(a, &fa)]));
    let (uid_a, uid_b, uid_c) = (uid_of(a), uid_of(b), uid_of(c));
    let mut logged = 0;
    let mut agent_logged = |who: &str, outcome: &str, why: &str| {
        let lines = h.agent_outcomes();
        logged += 1;
        assert_eq!(lines.len(), logged, "{lines:?}");
        let l = lines.last().unwrap();
        assert!(
            l.contains(&format!("outcome={outcome} "))
                && l.contains(&format!("user=\"{who}\""))
                && l.contains(why),
            "{l}"
        );
    };
    let phone = Some("+447700900140");

    // [enroll] self is off by default.
    let before = h.config_text();
    assert_refused(
        &h.raw(a, &enroll_line(phone)),
        MSG_SELF_OFF,
        "[enroll] self is false",
    );
    agent_logged(a, "refused", "[enroll] self is false");
    assert_eq!(h.config_text(), before);

    // Not in [enroll] groups.
    h.w.write_config(&config_text(
        &h.w,
        "",
        "self = true\ngroups = [\"truidasgrp2\"]",
        &[],
    ));
    assert_refused(
        &h.raw(a, &enroll_line(phone)),
        MSG_NOT_IN_GROUPS,
        "none of [enroll] groups",
    );
    agent_logged(a, "refused", "none of [enroll] groups");

    // An ACTIVE factor already.
    h.w.write_config(&config_text(&h.w, "", SELF_ON, &[(a, &fa)]));
    let before = h.config_text();
    let has = Enrolled::HasFactor.reason();
    assert_refused(&h.raw(a, &enroll_line(phone)), &has, &has);
    agent_logged(a, "refused", &has);
    assert_eq!(h.config_text(), before);

    // A fourth start within the hour: the first three left at the phone prompt.
    for _ in 0..3 {
        let got = h.raw(c, &enroll_line(None));
        assert_eq!(got[0], format!("prompt_echo: {MSG_PHONE}"), "{got:?}");
        agent_logged(c, "conversation_error", "");
    }
    let limit = format!("uid {uid_c} started 3 enrolments within the hour");
    assert_refused(&h.raw(c, &enroll_line(phone)), MSG_TOO_MANY, &limit);
    agent_logged(c, "refused", &limit);

    // A login for another account, or for su.
    for (target, service) in [
        ("root", "truid-locker"),
        (b, "truid-locker"),
        ("truidas-nosuchuser", "truid-locker"),
        (a, "su"),
        (a, "su-l"),
    ] {
        let why = format!("uid {uid_a} asked for the code of \"{target}\" (service \"{service}\")");
        assert_refused(&h.raw(a, &login_line(target, service)), MSG_NOT_YOURS, &why);
        agent_logged(a, "refused", &format!("the code of \\\"{target}\\\""));
    }

    // A second request of one uid while its first waits at a prompt.
    let mut first = h.enroll(b, &[]);
    first.wait_for(MSG_PHONE.trim_end());
    let busy = format!("uid {uid_b} has another request running");
    assert_refused(&h.raw(b, &login_line(b, "truid-locker")), MSG_BUSY, &busy);
    agent_logged(b, "refused", &busy);
    assert_refused(&h.raw(b, &enroll_line(phone)), MSG_BUSY, &busy);
    agent_logged(b, "refused", &busy);
    drop(first.finish());
    agent_logged(b, "conversation_error", "");

    // A config the agent cannot use: told only that there is a problem.
    std::fs::set_permissions(h.cfg(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let got = h.raw(a, &enroll_line(phone));
    assert_eq!(
        got,
        vec![
            format!("error: {MSG_AGENT_CONFIG}"),
            done_line(&Outcome::ConfigError {
                reason: GENERIC_CONFIG_REASON.into()
            })
        ]
    );
    agent_logged(a, "config_error", &h.cfg().display().to_string());

    assert_eq!(h.factors_created(), 0);
    assert_eq!(h.w.emu.stats().challenges_created, 0);
}

// ---------------------------------------------------------------------------------------------
// The caller's side of the relay

/// A caller that reads a little late (descheduled between its request and its read: strace
/// holds its `sendto` for 0.3 s, the scenario, not a wait for anything) finds the agent's
/// lines waiting together in the socket. Each must still reach the person.
#[test]
fn the_callers_side_reads_every_line_the_agent_sends() {
    let h = Host::new(|w| config_text(w, "", "", &[]));
    let u = user("truidas25");
    let slow = [
        "strace",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=sendto",
        "-e",
        "inject=sendto:delay_exit=300000",
    ];
    let done = h
        .enroll_via(&h.public, &slow, u, &["--phone", "+447700900141"])
        .finish();
    assert!(
        done.stderr.contains(MSG_SELF_OFF)
            && done.stderr.contains("not enrolled: [enroll] self is false"),
        "{}",
        done.stderr
    );
    let (ok, text) = h.locker_via(&h.public, &slow, u, "truid-locker", "root", "");
    assert!(!ok, "{text}");
    assert!(
        text.contains(MSG_NOT_YOURS) && text.contains("Authentication failure"),
        "{text}"
    );
    let module = h.module_outcomes();
    assert!(
        module.len() == 1 && module[0].contains("outcome=refused"),
        "{module:?}"
    );
}
