//! A screen locker unlocks with the user's code: the real i3lock on a real X server (Xvfb),
//! run as an unprivileged NSS user (tests/private-host.sh), typed at with xdotool; its PAM
//! service "i3lock" runs the built module, which relays the login to the real agent binary
//! over the agent's public socket; the agent asks the emulator. Without an agent the locker
//! stays locked (SECURITY.md, "Programs that run as the user"). With the pam-auth-update
//! profile, the locker's stack (Debian's /etc/pam.d/i3lock: `auth include login`, so
//! common-auth) asks the password and then the code.
//!
//! i3lock answers EVERY prompt of one `pam_authenticate` with the one text typed (its
//! conv_callback strdups the same password for each message): with `tries = 2`, a wrong code
//! is sent twice (that test is ignored for now: see its reason). Under the profile, where
//! pam_unix asks first, the code prompt gets the password, so i3lock cannot unlock there at
//! all (the last test shows it, and that the password alone does not open it either). A
//! locker that shows each prompt (xscreensaver, a greeter) is played there by pamtester on a
//! terminal, run as the user.
//!
//! How the host stays untouched: the stacks are bind-mounted over /etc/pam.d/i3lock (or a
//! copy over /etc/pam.d whole) in a private mount namespace of the locker alone
//! (`in_namespace`); users exist only in the private /etc. Xvfb picks a free display itself
//! (`-displayfd`). Every process (Xvfb, i3lock, the agent) is ended by its PID (its process
//! group) in a Drop guard, also when a test fails; every wait is bounded and polls a real
//! condition.

#[allow(unused_imports)]
mod common;
use common::daemon::*;
use common::logins::*;
use common::*;

use std::collections::HashMap;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Far above what any step takes here (Xvfb starts in well under a second, a login in a few).
const DEADLINE: Duration = Duration::from_secs(30);
/// How often a bounded wait looks again.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// An X server, a locker, a keyboard

/// Xvfb on the display it chose itself, killed by its PID (group) when the test ends.
struct Xvfb {
    child: Child,
    display: u32,
}

impl Xvfb {
    /// Starts Xvfb; `-displayfd 1` makes it take the first free display and print its number
    /// once it accepts connections (no two tests, nor a host's own X, can collide). Then its
    /// socket must take a connection.
    fn start(w: &World) -> Xvfb {
        let err = std::fs::File::create(w.path("xvfb.log")).unwrap();
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "640x480x24"])
            .args(["-nolisten", "tcp", "-noreset"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("Xvfb (tests/setup.sh installs xvfb)");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread reads the line, so that the wait for it has a deadline.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut x = Xvfb { child, display: 0 };
        let line = rx.recv_timeout(DEADLINE).unwrap_or_default();
        x.display = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "Xvfb gave no display number ({line:?}): {}",
                std::fs::read_to_string(w.path("xvfb.log")).unwrap_or_default()
            )
        });
        let socket = format!("/tmp/.X11-unix/X{}", x.display);
        poll_until("Xvfb's socket takes a connection", || {
            UnixStream::connect(&socket).is_ok()
        });
        x
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM first: Xvfb then removes its socket and lock file.
        kill_group(&mut self.child);
    }
}

/// `i3lock -n` run as `user` on `display` (through runuser, as a session would start it), in
/// a mount namespace of its own where each `(file, over)` is bind-mounted. Our child is
/// runuser, which waits for i3lock and exits with its status.
struct Locker {
    child: Child,
    log: PathBuf,
}

impl Locker {
    fn start(w: &World, user: &str, display: u32, binds: &[(&Path, &str)]) -> Locker {
        let log = w.path(&format!("i3lock-{user}.log"));
        let err = std::fs::File::create(&log).unwrap();
        let env_display = format!("DISPLAY=:{display}");
        let argv = [
            "runuser",
            "-u",
            user,
            "--",
            "env",
            &env_display,
            "i3lock",
            "-n",
        ];
        let child = in_namespace(binds, &argv)
            .stdin(Stdio::null())
            .stdout(err.try_clone().unwrap())
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut l = Locker { child, log };
        l.wait_locked();
        l
    }

    /// Waits until i3lock holds the keyboard: it forks its window-raising child only after
    /// grabbing pointer and keyboard (i3lock.c, main), so an i3lock under our runuser whose
    /// parent is an i3lock means keys typed now reach it.
    fn wait_locked(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let procs = descendants(self.child.id());
            let locked = procs
                .iter()
                .any(|(_, ppid, comm)| comm == "i3lock" && procs_comm(&procs, *ppid) == "i3lock");
            if locked {
                return;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("i3lock ended before it locked ({st}): {}", self.output());
            }
            assert!(Instant::now() < deadline, "i3lock never locked");
            std::thread::sleep(POLL);
        }
    }

    /// Still locked: runuser waits, and i3lock is there under it.
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
            && descendants(self.child.id())
                .iter()
                .any(|(_, _, comm)| comm == "i3lock")
    }

    /// How i3lock ended, or None if it is still locked at the deadline (then it is killed).
    fn exit(&mut self) -> Option<ExitStatus> {
        wait_until(&mut self.child, Instant::now() + DEADLINE)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// The processes under `root` (itself excluded): (pid, parent, name), from /proc.
fn descendants(root: u32) -> Vec<(u32, u32, String)> {
    let mut all: Vec<(u32, u32, String)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the name may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        all.push((pid, ppid, comm));
    }
    let parent: HashMap<u32, u32> = all.iter().map(|(p, pp, _)| (*p, *pp)).collect();
    all.into_iter()
        .filter(|(pid, _, _)| {
            let mut at = *pid;
            // Up the parents; bounded, in case /proc changed while it was read.
            for _ in 0..64 {
                match parent.get(&at) {
                    Some(&pp) if pp == root => return true,
                    Some(&pp) if pp > 1 => at = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

fn procs_comm(procs: &[(u32, u32, String)], pid: u32) -> &str {
    procs
        .iter()
        .find(|(p, _, _)| *p == pid)
        .map_or("", |(_, _, c)| c.as_str())
}

/// The person types `text` and Return at the locked screen (xdotool, as the user, as any
/// client of the user's display could).
fn type_at(user: &str, display: u32, text: &str) {
    // Two runs: `xdotool type` types all the words after it, a chained `key Return` too.
    for keys in [["type", "--delay", "20", text], ["key", "Return", "", ""]] {
        let env_display = format!("DISPLAY=:{display}");
        let mut c = Command::new("runuser")
            .args(["-u", user, "--", "env", &env_display, "xdotool"])
            .args(keys.iter().filter(|k| !k.is_empty()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let st = wait_until(&mut c, Instant::now() + DEADLINE);
        // Not the command line in the message: it holds the code.
        assert!(st.is_some_and(|s| s.success()), "xdotool failed: {st:?}");
    }
}

/// Polls `cond` until it holds; panics at the deadline.
fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(POLL);
    }
}

/// Waits for the module's next outcome line (the module writes it before `pam_authenticate`
/// returns to the locker) and returns it; `seen` collects every line.
fn next_outcome(w: &World, seen: &mut Vec<String>) -> String {
    let before = seen.len();
    poll_until("the module's outcome line", || {
        seen.extend(w.outcomes());
        seen.len() > before
    });
    assert_eq!(seen.len(), before + 1, "one login, one line: {seen:?}");
    seen[before].clone()
}

// ---------------------------------------------------------------------------------------------
// The module, the agent

/// A log socket the user's module may write to (the World's, opened to everyone).
fn open_log(w: &World) {
    std::fs::set_permissions(&w.log.path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// Where the agent's public socket is (in a folder the agent makes, root's, 0755).
fn public_socket(w: &World) -> PathBuf {
    w.path("public/agent.sock")
}

/// The module's arguments for a program run as the user: the agent to relay to, the log.
/// No config=: without root the module reads none (the agent reads its own).
fn module_line_args(w: &World, agent: &Path) -> String {
    format!(
        "{} agent={} syslog_socket={}",
        module_path().display(),
        agent.display(),
        w.log.path.display()
    )
}

/// An i3lock stack of the module alone, to bind over /etc/pam.d/i3lock.
fn i3lock_stack(w: &World, agent: &Path) -> PathBuf {
    let p = w.path("pam-i3lock");
    std::fs::write(
        &p,
        format!("auth required {}\n", module_line_args(w, agent)),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// The agent, its own outcome lines sent where nothing listens: these tests read the module's.
fn agent_for(w: &World, config: &Path) -> Daemon {
    start_agent_serving_users(
        &w.path("agent.sock"),
        &public_socket(w),
        config,
        &w.path("agent-log-unread"),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. The locker unlocks with the code

/// i3lock as `u`, the module relaying to the agent under `[login] tries`: a wrong code keeps it
/// locked, then the right one unlocks it (exit status 0).
fn wrong_then_right_code(u: &str, tries: u64) {
    ensure_user(u);
    let w = World::new();
    let f = w.enroll(u);
    let cfg = w.config(&format!("tries = {tries}\n"), &[(u, f.as_str())]);
    open_log(&w);
    let _agent = agent_for(&w, &cfg);
    let stack = i3lock_stack(&w, &public_socket(&w));
    let x = Xvfb::start(&w);
    let mut lock = Locker::start(&w, u, x.display, &[(&stack, "/etc/pam.d/i3lock")]);
    let mut seen = Vec::new();

    type_at(u, x.display, &w.wrong_code(&f));
    let line = next_outcome(&w, &mut seen);
    assert!(
        line.contains("outcome=wrong_code")
            && line.contains(&format!("user=\"{u}\""))
            && line.contains("service=\"i3lock\"")
            && line.contains(&format!("tries={tries}")),
        "{line}"
    );
    assert!(
        lock.running(),
        "unlocked on a wrong code: {}",
        lock.output()
    );
    let s = w.emu.stats();
    // Every prompt got the same wrong code (i3lock's one typed text), and each went to tru.ID.
    assert_eq!(
        (s.verification_attempts, s.verifications),
        (tries, 0),
        "{s:?}"
    );

    // Typed while i3lock may still wait out the failure: X keeps the keys for it. The line
    // comes only once the first pam_authenticate has returned: i3lock stayed locked on it.
    type_at(u, x.display, &w.emu.code(&f, 0).unwrap());
    let line = next_outcome(&w, &mut seen);
    assert!(
        line.contains("outcome=verified") && line.contains("tries=1"),
        "{line}"
    );
    let st = lock.exit();
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "{st:?}: {}",
        lock.output()
    );
    let s = w.emu.stats();
    assert_eq!(
        (s.verification_attempts, s.verifications),
        (tries + 1, 1),
        "{s:?}"
    );
}

#[test]
fn i3lock_unlocks_with_the_users_code_through_the_agent() {
    wrong_then_right_code("truidlk1", 1);
}

/// Two tries: both prompts of one pam_authenticate get the one wrong code typed.
/// Two tries: both prompts of one pam_authenticate get the one wrong code typed (the agent's
/// "Wrong code" and its next prompt come in one read: the relay takes them line by line).
#[test]
fn i3lock_answers_every_try_with_the_one_code_typed() {
    wrong_then_right_code("truidlk5", 2);
}

/// i3lock sends one text: with `combined` before pam_unix it takes the password and the code
/// in it. The agent checks the code, the module hands the password part on, pam_unix checks
/// it: the right pair unlocks; a wrong password with the right code stays locked.
#[test]
fn i3lock_unlocks_with_password_and_code_in_one_text() {
    let u = "truidlk6";
    ensure_user(u);
    set_password(u);
    let w = World::new();
    let f = w.enroll(u);
    let cfg = w.config("", &[(u, f.as_str())]);
    open_log(&w);
    let _agent = agent_for(&w, &cfg);
    let p = w.path("pam-i3lock-combined");
    std::fs::write(
        &p,
        format!(
            "auth requisite {} combined\nauth required pam_unix.so try_first_pass\n",
            module_line_args(&w, &public_socket(&w))
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let x = Xvfb::start(&w);
    let mut lock = Locker::start(&w, u, x.display, &[(&p, "/etc/pam.d/i3lock")]);
    let mut seen = Vec::new();

    type_at(
        u,
        x.display,
        &format!("not-the-password{}", w.emu.code(&f, 0).unwrap()),
    );
    let line = next_outcome(&w, &mut seen);
    // The code was right; pam_unix, after the module, refused the password.
    assert!(line.contains("outcome=verified"), "{line}");
    assert!(
        lock.running(),
        "unlocked on a wrong password: {}",
        lock.output()
    );
    // A second pam_authenticate runs only in a locker still locked.
    type_at(
        u,
        x.display,
        &format!("{PASSWORD}{}", w.emu.code(&f, 1).unwrap()),
    );
    let line = next_outcome(&w, &mut seen);
    assert!(line.contains("outcome=verified"), "{line}");
    let st = lock.exit();
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "{st:?}: {}",
        lock.output()
    );
    let s = w.emu.stats();
    assert_eq!((s.verification_attempts, s.verifications), (2, 2), "{s:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. Without an agent it stays locked

#[test]
fn i3lock_stays_locked_without_an_agent() {
    let u = "truidlk2";
    ensure_user(u);
    let w = World::new();
    let f = w.enroll(u);
    w.config("", &[(u, f.as_str())]);
    open_log(&w);
    // No agent listens here. The module then refuses (unprivileged_denied) rather than stand
    // aside (PAM_IGNORE): standing aside would let the rest of the locker's stack (the
    // password alone, under the pam-auth-update profile) unlock a session the second factor
    // guarded at login, for anyone who watched the password typed (SECURITY.md, "Programs
    // that run as the user").
    let nowhere = w.path("no-agent/agent.sock");
    let stack = i3lock_stack(&w, &nowhere);
    let x = Xvfb::start(&w);
    let mut lock = Locker::start(&w, u, x.display, &[(&stack, "/etc/pam.d/i3lock")]);
    let mut seen = Vec::new();
    // The right code, twice: the second line comes only once the first pam_authenticate has
    // returned to i3lock, which therefore did not unlock on it.
    for _ in 0..2 {
        type_at(u, x.display, &w.emu.code(&f, 0).unwrap());
        let line = next_outcome(&w, &mut seen);
        assert!(
            line.contains("outcome=unprivileged_denied")
                && line.contains(&format!("user=\"{u}\""))
                && line.contains("runs as uid")
                && line.contains("no agent at"),
            "{line}"
        );
        assert!(
            lock.running(),
            "unlocked without an agent: {}",
            lock.output()
        );
    }
    // The module had nothing to ask tru.ID with (no config, no secret): nothing went there.
    assert_eq!(w.emu.stats().challenges_created, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. The pam-auth-update profile

/// The shipped pam-auth-update profile (its `pam_truid.so` pointed at the built module, the
/// agent and the log), enabled by the real pam-auth-update on copies; the copy of /etc/pam.d.
fn pam_auth_update_enabled(w: &World, agent: &Path) -> PathBuf {
    let profile = shipped_profile();
    let module = module_line_args(w, agent);
    let mut replaced = 0;
    let rendered: String = profile
        .lines()
        .map(|l| {
            if !l.trim_start().starts_with('#') && l.split_whitespace().any(|t| t == "pam_truid.so")
            {
                replaced += 1;
                format!("{}\n", l.replace("pam_truid.so", &module))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(replaced, 1, "packaging/pam-configs/truid: one module line");
    let dir = pam_auth_update_with(w, &rendered);
    let common_auth = std::fs::read_to_string(dir.join("common-auth")).unwrap();
    assert!(common_auth.contains(&module), "{common_auth}");
    // The locker's own file is Debian's: its auth is login's, which includes common-auth.
    let i3lock = std::fs::read_to_string(dir.join("i3lock")).unwrap();
    assert!(
        i3lock
            .lines()
            .any(|l| l.split_whitespace().eq(["auth", "include", "login"])),
        "{i3lock}"
    );
    dir
}

/// A locker that shows each prompt (as xscreensaver or a greeter does), run as the user on
/// the stacks the profile made: pamtester on a terminal, PAM service "i3lock", each answer
/// typed when its prompt shows.
#[test]
fn with_the_profile_a_locker_unlocks_with_password_and_code() {
    let u = "truidlk3";
    ensure_user(u);
    set_password(u);
    let w = World::new();
    let f = w.enroll(u);
    // One try: a wrong code ends the login (pamtester would otherwise be asked again).
    let cfg = w.config("tries = 1\n", &[(u, f.as_str())]);
    open_log(&w);
    let _agent = agent_for(&w, &cfg);
    let dir = pam_auth_update_enabled(&w, &public_socket(&w));
    let login = |answers: &[&str]| -> Session {
        let argv = [
            "runuser",
            "-u",
            u,
            "--",
            "pamtester",
            "i3lock",
            u,
            "authenticate",
        ];
        Pty::spawn(in_namespace(&[(&dir, "/etc/pam.d")], &argv)).converse(answers)
    };
    let mut seen = Vec::new();

    // The password, then a wrong code: refused.
    let s = login(&[PASSWORD, &w.wrong_code(&f)]);
    assert_refused(&s);
    assert_eq!(s.prompts, ["Password: ", PROMPT]);
    let line = next_outcome(&w, &mut seen);
    assert!(
        line.contains("outcome=wrong_code") && line.contains("service=\"i3lock\""),
        "{line}"
    );
    // A wrong password: the code is never asked.
    let s = login(&["not-the-password"]);
    assert_refused(&s);
    assert_eq!(s.prompts, ["Password: "]);
    // The password, then the code: unlocked.
    let s = login(&[PASSWORD, &w.emu.code(&f, 0).unwrap()]);
    assert!(s.ok(), "{s:#?}");
    assert_eq!(s.prompts, ["Password: ", PROMPT]);
    let line = next_outcome(&w, &mut seen);
    assert!(line.contains("outcome=verified"), "{line}");
    let st = w.emu.stats();
    assert_eq!(
        (st.verification_attempts, st.verifications),
        (2, 1),
        "{st:?}"
    );
    assert!(w.outcomes().is_empty());
}

/// i3lock itself on the profile's stacks: pam_unix asks first and gets the text typed, then
/// the module's prompt gets the same text. The password alone therefore never opens it (the
/// module does not stand aside), and no text can answer both.
#[test]
fn with_the_profile_i3lock_does_not_unlock_on_the_password() {
    let u = "truidlk4";
    ensure_user(u);
    set_password(u);
    let w = World::new();
    let f = w.enroll(u);
    let cfg = w.config("tries = 1\n", &[(u, f.as_str())]);
    open_log(&w);
    let _agent = agent_for(&w, &cfg);
    let dir = pam_auth_update_enabled(&w, &public_socket(&w));
    let x = Xvfb::start(&w);
    let mut lock = Locker::start(&w, u, x.display, &[(&dir, "/etc/pam.d")]);
    let mut seen = Vec::new();
    type_at(u, x.display, PASSWORD);
    // pam_unix took the password (the module is reached only then: pam_deny, requisite, ends
    // common-auth otherwise); the module's prompt got it too, which is no code: a try used up.
    let line = next_outcome(&w, &mut seen);
    assert!(
        line.contains("outcome=wrong_code")
            && line.contains("service=\"i3lock\"")
            && line.contains("tries=1"),
        "{line}"
    );
    assert!(
        lock.running(),
        "unlocked on the password: {}",
        lock.output()
    );
    // Not 6 to 8 digits: it never went to tru.ID as a code.
    assert_eq!(w.emu.stats().verification_attempts, 0);
}
