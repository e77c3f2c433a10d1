//! Red-team tests of the agent's public socket (issue #17): what a local unprivileged user can
//! make the agent's services do for, or against, other people. Four attacks worked on the code
//! they were written against (8efdc51) and their tests failed there: a second request of one
//! uid deadlocked the services, one uid trickling requests held every place, a uid alias
//! stood an enrolled user's locker aside, and a caller's made-up rhost was logged unmarked.
//! The other test asserts refusals that held.
//!
//! Real parts only: the real agent binary (tests/common/daemon.rs), real NSS users
//! (tests/private-host.sh), the module through real libpam (pamtester + pam_wrapper run as the
//! user by runuser, as tests/unprivileged.rs), the emulator; a raw caller of the public socket
//! is socat run with the user's uid, so the agent's SO_PEERCRED sees that uid.
//! Run: `tests/private-host.sh cargo test --test attack_agent`

#[allow(unused_imports)]
mod common;
use common::logins::*;
use common::services::*;
use common::*;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn login_request(user: &str, service: &str, rhost: Option<&str>, tty: Option<&str>) -> String {
    serde_json::json!({
        "v": 3,
        "service": {"op": "login", "user": user, "service": service, "tty": tty, "rhost": rhost, "combined": false}
    })
    .to_string()
}

/// A locker's stack, in a folder the user may read: the module relaying to the agent, then
/// `after` (what stands for pam_unix's password check).
fn locker_stack(w: &World, public: &Path, after: &str) -> PathBuf {
    let dir = w.path("lockpam");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.join("truid-locker");
    std::fs::write(
        &file,
        format!(
            "auth required {} agent={} syslog_socket={}\n{after}",
            module_path().display(),
            public.display(),
            w.log.path.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    dir
}

/// The locker run by `user` (pamtester under pam_wrapper, through runuser), `typed` on its
/// stdin (what the person types at its prompts).
fn run_locker(user: &str, stack: &Path, typed: &str) -> Output {
    let mut child = Command::new("runuser")
        .args([
            "-u",
            user,
            "--",
            "env",
            "LD_PRELOAD=libpam_wrapper.so",
            "PAM_WRAPPER=1",
        ])
        .arg(format!("PAM_WRAPPER_SERVICE_DIR={}", stack.display()))
        .args(["pamtester", "truid-locker", user, "authenticate"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(typed.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether the public socket closes a new connection unanswered at once: all its slots are
/// taken. A probe that is served is closed by us, which gives its slot back.
fn slots_full(public: &Path) -> bool {
    let mut probe = UnixStream::connect(public).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    matches!(probe.read(&mut [0u8; 16]), Ok(0))
}

/// Connections of one uid that each trickle a byte of a request that never ends, topped up to
/// `n` whenever the agent closes one; stopped (every socat killed) when dropped.
struct Trickle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trickle {
    fn start(uid: u32, public: PathBuf, n: usize) -> Trickle {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<Caller> = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                conns.retain_mut(|c| matches!(c.child.try_wait(), Ok(None)));
                while conns.len() < n {
                    conns.push(Caller::connect(uid, &public));
                }
                for c in &mut conns {
                    // A blank is whitespace the JSON reader would skip: the request never ends.
                    let _ = c.input.write_all(b" ").and_then(|()| c.input.flush());
                }
                // The attack's pace: one byte a second per connection, well inside the 5 s
                // the agent waits for each read.
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Trickle {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One local user holds every slot of the public socket (MAX_CALLERS, counted for all users
/// together before the caller's uid is looked at) with connections that send a byte of a
/// request every second: the agent's 5 s is a timeout per read, not for the request. Another
/// user's screen locker is then closed unanswered and cannot unlock, though its code is right.
#[test]
fn one_user_trickling_requests_cannot_shut_other_users_out() {
    let (attacker, victim) = ("truidaa1", "truidaa2");
    ensure_user(attacker);
    ensure_user(victim);
    let w = World::new();
    let f = w.enroll(victim);
    let cfg = w.config("", &[(victim, f.as_str())]);
    let a = agent(&w, &cfg);
    let stack = locker_stack(&w, &a.public, "");
    // Without the attack the victim's locker unlocks with the right code.
    let out = run_locker(victim, &stack, &format!("{}\n", w.code(&f)));
    assert!(out.status.success(), "{}", text_of(&out));

    let _flood = Trickle::start(uid_of(attacker), a.public.clone(), 40);
    // The scenario: the attack goes on past the 5 s a caller has to send its request.
    std::thread::sleep(Duration::from_secs(7));
    let full = slots_full(&a.public);
    // Codes of the next steps: the first one was used above.
    let code = w.emu.code(&f, 1).unwrap();
    let out = run_locker(victim, &stack, &format!("{code}\n"));
    assert!(
        out.status.success(),
        "the victim's locker was shut out by another user (every slot taken: {full}): {}",
        text_of(&out)
    );
}

/// Two accounts with one uid (`useradd -o`), the alias first in /etc/passwd so that
/// getpwuid names it. Returns (alias, user).
fn uid_alias_pair() -> (&'static str, &'static str) {
    let (alias, user) = ("truidal0", "truidal1");
    ensure_user(alias);
    if nix::unistd::User::from_name(user).unwrap().is_none() {
        let _one_at_a_time = USERADD.lock().unwrap_or_else(|e| e.into_inner());
        let out = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", "-o", "-u"])
            .arg(uid_of(alias).to_string())
            .arg(user)
            .output()
            .unwrap();
        assert!(
            out.status.success() || out.status.code() == Some(9),
            "useradd -o {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pw = nix::unistd::User::from_uid(uid_of(user).into())
        .unwrap()
        .unwrap();
    assert_eq!(pw.name, alias, "getpwuid should name the alias first");
    (alias, user)
}

/// The agent checks the factor of the name getpwuid gives the caller's uid, not of PAM_USER
/// (which it only checks maps to that uid). With a uid alias listed first, an enrolled user's
/// locker is judged as the alias's: under `unenrolled = "ignore"` (the roll-out setting) the
/// alias has no factor, the module stands aside and the locker unlocks on the password alone,
/// where a root login of the same user asks the code.
#[test]
fn a_uid_alias_does_not_stand_an_enrolled_users_locker_aside() {
    let (_alias, user) = uid_alias_pair();
    let w = World::new();
    let f = w.enroll(user);
    let cfg = w.config("unenrolled = \"ignore\"", &[(user, f.as_str())]);
    // A root login of the user asks the code (and fails without it).
    w.stack("auth required {module} {args}\nauth required pam_permit.so\n");
    let (rc, s) = w.login(user, &[]);
    assert_ne!(rc, PAM_SUCCESS, "{:?}", s.seen);
    assert!(!s.prompts().is_empty(), "{:?}", s.seen);

    let a = agent(&w, &cfg);
    // pam_permit stands for pam_unix after a right password: only the module may stop this.
    let stack = locker_stack(&w, &a.public, "auth required pam_permit.so\n");
    let out = run_locker(user, &stack, "");
    let lines = w.outcomes();
    assert!(
        !out.status.success(),
        "the locker of enrolled {user} unlocked without a code: {}\n{lines:?}",
        text_of(&out)
    );
}

/// The agent's outcome line for a caller of the public socket carries the service, rhost and
/// tty the caller made up, and nothing that tells it from the module's own line in that
/// service: any user can write `outcome=wrong_code service="sshd" rhost="<any address>"` lines
/// (for their own name) into the auth log, which log watchers (fail2ban-style bans, audits)
/// read as SSH logins from that address.
#[test]
fn a_callers_made_up_rhost_is_not_logged_as_a_real_login() {
    let user = "truidaa3";
    ensure_user(user);
    let w = World::new();
    let f = w.enroll(user);
    let cfg = w.config("", &[(user, f.as_str())]);
    let a = agent(&w, &cfg);
    let uid = uid_of(user);
    let mut c = Caller::connect(uid, &a.public);
    c.send(&login_request(
        user,
        "sshd",
        Some("203.0.113.77"),
        Some("ssh"),
    ));
    let wrong = w.wrong_code(&f);
    let mut seen = Vec::new();
    while let Some(v) = c.next() {
        if v.get("prompt_secret").is_some() {
            c.send(&serde_json::json!({ "answer": wrong }).to_string());
        }
        let done = v.get("done").is_some();
        seen.push(v);
        if done {
            break;
        }
    }
    assert!(
        seen.iter().any(|v| v.get("done").is_some()),
        "no outcome: {seen:?}"
    );
    let lines = w.outcomes();
    let forged: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("203.0.113.77"))
        .collect();
    assert_eq!(forged.len(), 1, "{lines:?}");
    // What should be: the line says it came from the public socket, and from which uid.
    assert!(
        forged[0].contains("agent") && forged[0].contains(&uid.to_string()),
        "the agent's line passes for a real sshd login from 203.0.113.77: {}",
        forged[0]
    );
}

/// Held: a caller of the public socket is served only for its own account: another user's
/// name, root's, a name NSS does not know, the service su, and a uid NSS cannot name are
/// refused before anything is asked of tru.ID, as is a request with a field it may not carry.
#[test]
fn the_public_socket_serves_only_the_callers_own_account() {
    let (me, other) = ("truidaa4", "truidaa5");
    ensure_user(me);
    ensure_user(other);
    let w = World::new();
    let (fm, fo) = (w.enroll(me), w.enroll(other));
    let cfg = w.config("", &[(me, fm.as_str()), (other, fo.as_str())]);
    let a = agent(&w, &cfg);
    let uid = uid_of(me);
    let refused = |uid: u32, request: String| {
        let mut c = Caller::connect(uid, &a.public);
        c.send(&request);
        let seen = c.rest();
        let done = seen.last().and_then(|v| v.get("done")).cloned();
        assert!(
            done.as_ref().is_some_and(|d| d.get("verified").is_none()),
            "{request}: {seen:?}"
        );
        assert!(
            !seen.iter().any(|v| v.get("prompt_secret").is_some()),
            "{request} was asked a code: {seen:?}"
        );
        seen
    };
    for request in [
        login_request(other, "truid-locker", None, None),
        login_request("root", "truid-locker", None, None),
        login_request("no-such-user-here", "truid-locker", None, None),
        login_request(me, "su", None, None),
        login_request(me, "su-l", None, None),
    ] {
        let seen = refused(uid, request);
        assert!(
            seen.iter().any(|v| v
                .get("error")
                .is_some_and(|e| e == pam_truid::agent::services::MSG_NOT_YOURS)),
            "{seen:?}"
        );
    }
    // A uid NSS cannot name: nothing to check a code for.
    let seen = refused(64_999, login_request(me, "truid-locker", None, None));
    assert!(
        seen.last().unwrap()["done"].get("unknown_user").is_some(),
        "{seen:?}"
    );
    // A field a request may not carry (a user beside the service's).
    refused(
        uid,
        login_request(me, "truid-locker", None, None)
            .replace("\"v\":3", "\"v\":3,\"user\":\"root\""),
    );
    assert_eq!(w.emu.stats().challenges_created, 0);
}

/// A second request of a uid while its first runs is meant to be refused at once (MSG_BUSY).
/// `Busy::take` (src/agent/services.rs) builds the guard before `bool::then_some` looks at the
/// bool, so the refused guard is dropped inside the statement that still holds the state
/// mutex, and its `Drop` locks that mutex again: the thread deadlocks holding it. From then on
/// every request of every user waits for that mutex (the first caller's own end too), the 32
/// slots fill, and no locker of anyone on the host is served until the agent restarts. A
/// locker's double click is enough.
#[test]
fn a_second_request_of_one_uid_is_refused_and_wedges_nothing() {
    let (me, other) = ("truidaa6", "truidaa7");
    ensure_user(me);
    ensure_user(other);
    let w = World::new();
    let (fm, fo) = (w.enroll(me), w.enroll(other));
    let cfg = w.config("", &[(me, fm.as_str()), (other, fo.as_str())]);
    let a = agent(&w, &cfg);
    let uid = uid_of(me);
    let mut first = Caller::connect(uid, &a.public);
    first.send(&login_request(me, "truid-locker", None, None));
    let prompt = first.next().unwrap();
    assert!(prompt.get("prompt_secret").is_some(), "{prompt:?}");
    let mut second = Caller::connect(uid, &a.public);
    second.send(&login_request(me, "truid-locker", None, None));
    let seen = second.rest();
    // Meanwhile another user asks for their own code.
    let mut bystander = Caller::connect(uid_of(other), &a.public);
    bystander.send(&login_request(other, "truid-locker", None, None));
    let served = bystander.next();
    assert!(
        served
            .as_ref()
            .is_some_and(|v| v.get("prompt_secret").is_some()),
        "after a second request of uid {uid}, another user is not served: {served:?}"
    );
    drop(bystander);
    assert!(
        seen.iter().any(|v| v
            .get("error")
            .is_some_and(|e| e == pam_truid::agent::services::MSG_BUSY)),
        "the second request got no MSG_BUSY within {LINE_WAIT:?}: {seen:?}"
    );
    // The first goes on and is verified with the right code.
    first.send(&serde_json::json!({ "answer": w.code(&fm) }).to_string());
    let rest = first.rest();
    assert!(
        rest.last()
            .is_some_and(|d| d["done"].get("verified").is_some()),
        "{rest:?}"
    );
    // Another user's locker is served as before.
    let stack = locker_stack(&w, &a.public, "");
    let out = run_locker(other, &stack, &format!("{}\n", w.code(&fo)));
    assert!(out.status.success(), "{}", text_of(&out));
}
