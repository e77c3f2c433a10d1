//! Attack review of issue 16 (recovery codes, exempt accounts, one prompt): each test is one
//! way someone tried to get past the second factor, use a recovery code twice or someone
//! else's, or turn a failure into a login. A test that FAILS is an attack that works (it
//! asserts the safe behaviour); the others hold and stay as regression tests.
//!
//! Real parts only: real libpam loading the built module (common::pam_login), real sshd,
//! su and sshpass/ssh through common::logins, real Unix users of the private host, the
//! emulator with its faults. Run through tests/private-host.sh.

#[allow(unused_imports)]
mod common;
use common::logins::*;
use common::recovery::*;
use common::*;

use pam_truid::recovery::{self, Used};
use pam_truid::secret::Secret;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COMBINED_PROMPT: &str = "Password and tru.ID code: ";

// ---------------------------------------------------------------------------------------------
// Helpers (the shared ones are in tests/common/recovery.rs)

fn one_prompt(dir: &std::path::Path, user: &str, answer: &str) -> (i32, Script) {
    let mut s = Script::answering(&[answer]);
    let rc = pam_login(dir, "svc", user, &Items::default(), &mut s);
    (rc, s)
}

// ---------------------------------------------------------------------------------------------
// The administrator who pastes the snippets literally

/// conf/pam.d/sshd-combined tells the administrator to put `AuthenticationMethods any` (and
/// PasswordAuthentication yes) in place of conf/sshd_config.d/pam_truid.conf's lines. sshd's
/// PubkeyAuthentication is on by default, so `any` lets an enrolled user with an authorized
/// key in on the key alone: no PAM auth stack, no code. (The harness's sshd has the client's
/// key authorized for every user, as any user's ~/.ssh/authorized_keys would be.)
///
/// FAILS now: the key alone logs in. Fix: the header should say
/// `AuthenticationMethods password keyboard-interactive` (each a list of its own, so one of the
/// two PAM methods is needed) or `PubkeyAuthentication no`.
#[test]
fn ssh_combined_snippet_never_lets_a_key_in_alone() {
    let u = "truidak1";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    w.config("", &[(u, f.as_str())]);
    let sshd = Sshd::start(&w, SshVariant::Combined);
    // The client offers its key (then keyboard-interactive, whose prompt gets no answer).
    let s = sshd.login(SshVariant::Publickey, u, &[]);
    let logged_in = s.ok() && s.output_lines().last() == Some(&u);
    let log = sshd.log_text();
    let accepted: Vec<&str> = log.lines().filter(|l| l.contains("Accepted")).collect();
    assert!(
        !logged_in,
        "an enrolled user logged in on the key alone, no code asked (module outcomes: {:?}); sshd: {accepted:?}",
        outcome_names(&w)
    );
}

// ---------------------------------------------------------------------------------------------
// One prompt

/// A password that is not UTF-8 (a Latin-1 `é`, as an older client or keyboard map sends it),
/// through real sshd's password method with conf/pam.d/sshd-combined (sshpass types it): the
/// module reads the answer with from_utf8_lossy and hands pam_unix U+FFFD instead of the byte
/// typed, so the right password and the right code are refused, after the code was used up.
///
/// FAILS now (a lockout, not a door). Fix: keep the answer's bytes; cut the code off the end
/// as bytes (digits and the dashed code are ASCII) and hand the password part to PAM_AUTHTOK
/// byte for byte; only the code part needs to be text.
#[test]
fn ssh_combined_hands_a_latin1_password_on_unchanged() {
    let u = "truidak2";
    let w = World::new();
    ensure_user(u);
    let password: &[u8] = b"caf\xe9-Truid-pw";
    {
        let _one = USERADD.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = format!("{u}:").into_bytes();
        line.extend_from_slice(password);
        line.push(b'\n');
        c.stdin.take().unwrap().write_all(&line).unwrap();
        assert!(c.wait().unwrap().success());
    }
    let f = w.enroll(u);
    w.config("", &[(u, f.as_str())]);
    let sshd = Sshd::start(&w, SshVariant::Combined);
    let mut answer = password.to_vec();
    answer.extend_from_slice(w.code(&f).as_bytes());
    let mut c = Command::new("sshpass");
    c.arg("-p")
        .arg(OsStr::from_bytes(&answer))
        .args(["ssh", "-F", "/dev/null", "-p", &sshd.port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "PubkeyAuthentication=no"])
        .args(["-o", "KbdInteractiveAuthentication=no"])
        .args(["-o", "PreferredAuthentications=password"])
        .args(["-o", "NumberOfPasswordPrompts=1"])
        .arg(format!("{u}@127.0.0.1"))
        .args(["id", "-un"])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let status = wait_until(&mut child, Instant::now() + LOGIN_DEADLINE);
    if status.is_none() {
        kill_group(&mut child);
    }
    let mut out = String::new();
    use std::io::Read;
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let outcomes = outcome_names(&w);
    assert_eq!(outcomes, ["verified"], "the code was not the problem");
    assert!(
        status.is_some_and(|s| s.success()) && out.trim() == u,
        "the right password (not UTF-8) and the right code were refused: pam_unix got another password; sshd: {:?}",
        sshd.log_text()
            .lines()
            .filter(|l| l.contains("password for"))
            .collect::<Vec<_>>()
    );
}

/// One-prompt answers an attacker may send (real libpam, the snippet's auth lines, a
/// pam_exec recording PAM_AUTHTOK): none logs in without the right password AND the right
/// code, and the stack never goes past the module on a wrong code.
/// - the code alone (only digits): the module verifies it, pam_unix gets "" and refuses;
/// - a recovery code alone: used up (as documented), pam_unix gets "" and refuses;
/// - 64 KiB of password then a recovery code: refused by pam_unix, no crash;
/// - a wrong recovery code under failmode = "safe" with tru.ID down: wrong_code, the stack
///   stops at the module;
/// - a password that ends in digits, then the code: in, PAM_AUTHTOK the whole password.
#[test]
fn one_prompt_odd_answers_never_log_in_on_one_factor() {
    let u = "truidak3";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    let codes = give_codes(&w, u, 3);
    config(
        &w,
        &w.api_table(),
        "",
        "accept = \"always\"",
        &[(u, f.as_str())],
    );
    let (dir, record) = combined_stack_recording_authtok(&w);

    let (rc, s) = one_prompt(&dir, u, &w.emu.code(&f, 0).unwrap());
    assert_eq!(s.prompts(), [COMBINED_PROMPT]);
    assert_eq!(rc, PAM_AUTH_ERR, "the code alone");
    assert_eq!(take_authtok(&record).as_deref(), Some(&b""[..]));

    let (rc, _) = one_prompt(&dir, u, codes[0].expose());
    assert_eq!(rc, PAM_AUTH_ERR, "a recovery code alone");
    assert_eq!(take_authtok(&record).as_deref(), Some(&b""[..]));
    assert_eq!(left(&w, u), 2);

    let long = format!("{}{}", "A".repeat(64 * 1024), codes[1].expose());
    let (rc, _) = one_prompt(&dir, u, &long);
    assert_ne!(rc, PAM_SUCCESS, "64 KiB of password");
    // pam_exec shows at most 511 bytes of it; that the stack reached it is what counts.
    assert!(take_authtok(&record).is_some_and(|t| t.iter().all(|b| *b == b'A')));
    assert_eq!(left(&w, u), 1);

    // PASSWORD ("Truid-test-pw-1") ends in a digit: the code is still the last 6.
    let (rc, _) = one_prompt(
        &dir,
        u,
        &format!("{PASSWORD}{}", w.emu.code(&f, 1).unwrap()),
    );
    assert_eq!(rc, PAM_SUCCESS, "password ending in a digit, then the code");
    assert_eq!(
        take_authtok(&record).as_deref(),
        Some(PASSWORD.as_bytes()),
        "PAM_AUTHTOK is not the password part"
    );
    assert_eq!(
        outcome_names(&w),
        ["verified", "recovery_used", "recovery_used", "verified"]
    );

    // failmode = "safe", tru.ID down: a wrong recovery code (accept = "unavailable").
    config(
        &w,
        &down_api(&w),
        "failmode = \"safe\"",
        "",
        &[(u, f.as_str())],
    );
    let wrong = recovery::generate(1).unwrap();
    let (rc, _) = one_prompt(&dir, u, &format!("{PASSWORD}{}", wrong[0].expose()));
    assert_eq!(
        rc, PAM_AUTH_ERR,
        "a wrong recovery code under safe, tru.ID down"
    );
    assert!(take_authtok(&record).is_none(), "the stack went on");
    assert_eq!(outcome_names(&w), ["wrong_code"]);
    assert_eq!(left(&w, u), 1);
}

/// A wrong code in one prompt under failmode = "safe" while tru.ID's verify answers badly
/// (a dropped connection, 503, 429, not JSON, cut mid-body): once the code is sent a failure
/// could hide a wrong code, so none is let in, and pam_unix is never reached.
#[test]
fn one_prompt_wrong_code_under_safe_with_a_faulty_verify_is_refused() {
    let u = "truidak4";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    config(
        &w,
        &w.api_table(),
        "failmode = \"safe\"",
        "",
        &[(u, f.as_str())],
    );
    let (dir, record) = combined_stack_recording_authtok(&w);
    for kind in [
        FaultKind::Drop,
        FaultKind::Status(503),
        FaultKind::TooManyRequests {
            retry_after: Some(1),
        },
        FaultKind::NotJson,
        FaultKind::DropMidBody,
    ] {
        w.emu.clear_faults();
        w.emu.set_fault(Fault {
            route: Route::ChallengeVerify,
            kind: kind.clone(),
            times: None,
        });
        let bad = w.wrong_code(&f);
        let (rc, _) = one_prompt(&dir, u, &format!("{PASSWORD}{bad}"));
        assert_ne!(rc, PAM_SUCCESS, "{kind:?}: a wrong code got in");
        assert!(
            take_authtok(&record).is_none(),
            "{kind:?}: the stack went on"
        );
        let names = outcome_names(&w);
        assert!(
            names.len() == 1 && names[0] != "unavailable_allowed",
            "{kind:?}: {names:?}"
        );
    }
    w.emu.clear_faults();
}

// ---------------------------------------------------------------------------------------------
// Recovery codes: twice, someone else's, a failure made a login

/// A stopped process that holds the recovery lock (a user can stop their own su or sudo at
/// that moment; the test holds the same flock on recovery.toml.lock, which is what such a
/// process does) under failmode = "safe" with tru.ID down: a login with a valid code waits at
/// most the 5 s, then is refused (config_error: PAM_SERVICE_ERR), and its code is not used
/// up; once the lock is let go the same code works, once.
#[test]
fn recovery_lock_held_by_a_stopped_login_refuses_and_keeps_the_code() {
    let u = "carol";
    let w = World::new();
    let f = w.enroll(u);
    let codes = give_codes(&w, u, 2);
    config(
        &w,
        &down_api(&w),
        "failmode = \"safe\"\ntries = 1",
        "",
        &[(u, f.as_str())],
    );
    w.module_stack();
    let lock_path = {
        let mut p = store(&w).path().as_os_str().to_owned();
        p.push(".lock");
        PathBuf::from(p)
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let started = Instant::now();
    let (rc, _) = w.login(u, &[codes[0].expose()]);
    let took = started.elapsed();
    assert_eq!(rc, PAM_SERVICE_ERR, "while the lock is held");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert_eq!(outcome_names(&w), ["config_error"]);
    assert_eq!(left(&w, u), 2, "a refused login used a code up");
    drop(held);
    let (rc, _) = w.login(u, &[codes[0].expose()]);
    assert_eq!(rc, PAM_SUCCESS);
    let (rc, _) = w.login(u, &[codes[0].expose()]);
    assert_eq!(rc, PAM_AUTH_ERR, "the same code twice");
    assert_eq!(left(&w, u), 1);
}

/// Another user's recovery code (accept = "always", tru.ID up): bob's code for alice is
/// refused and stays bob's. Under su, whose codes count follows [login] su: with "target"
/// the caller's own code does not open the target, with "caller" the target's does not.
#[test]
fn another_users_recovery_code_is_refused() {
    let (a, b) = ("truidak5", "truidak6");
    let w = World::new();
    ensure_user(a);
    ensure_user(b);
    let (fa, fb) = (w.enroll(a), w.enroll(b));
    let ca = give_codes(&w, a, 2);
    let cb = give_codes(&w, b, 2);
    let users = [(a, fa.as_str()), (b, fb.as_str())];
    config(
        &w,
        &w.api_table(),
        "tries = 1",
        "accept = \"always\"",
        &users,
    );
    let dir = w.stack("auth required {module} {args}\n");
    std::fs::copy(dir.join("svc"), dir.join("su")).unwrap();

    let (rc, _) = w.login(a, &[cb[0].expose()]);
    assert_eq!(rc, PAM_AUTH_ERR, "b's code for a");
    let su = |target: &str, caller: &str, code: &Secret| {
        let mut s = Script::answering(&[code.expose()]);
        let items = Items {
            ruser: Some(caller.to_string()),
            ..Default::default()
        };
        pam_login(&dir, "su", target, &items, &mut s)
    };
    // su = "target" (default): a su b with a's code.
    assert_eq!(su(b, a, &ca[0]), PAM_AUTH_ERR, "su target: caller's code");
    config(
        &w,
        &w.api_table(),
        "tries = 1\nsu = \"caller\"",
        "accept = \"always\"",
        &users,
    );
    assert_eq!(su(b, a, &cb[0]), PAM_AUTH_ERR, "su caller: target's code");
    assert_eq!(
        (left(&w, a), left(&w, b)),
        (2, 2),
        "a refused code was used up"
    );
    assert_eq!(su(b, a, &ca[1]), PAM_SUCCESS, "su caller: caller's code");
    assert_eq!((left(&w, a), left(&w, b)), (1, 2));
    assert_eq!(verifies(&w), 0, "a recovery code was sent to tru.ID");
}

/// User names the recovery file must keep apart as TOML keys: an SSSD name, a winbind name,
/// names with a space, a quote, a dot, a bracket, and names that differ only in case. Each
/// user's code works for that name only, once (the store, as the module uses it).
#[test]
fn recovery_file_keeps_odd_names_apart() {
    let w = World::new();
    let names = [
        "bob@ad.example.com",
        "bob",
        "AD\\dave",
        "x y",
        "a\"b",
        "a",
        "a.b",
        "[codes]",
        "Alice",
        "alice",
    ];
    let st = store(&w);
    let mut codes = Vec::new();
    for n in names {
        let c = recovery::generate(1).unwrap().remove(0);
        st.set(n, Some(vec![recovery::hash(&c).unwrap()])).unwrap();
        codes.push(c);
    }
    for (i, n) in names.iter().enumerate() {
        let other = &codes[(i + 1) % names.len()];
        assert_eq!(st.use_code(n, other).unwrap(), Used::Rejected, "{n}");
    }
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            st.use_code(n, &codes[i]).unwrap(),
            Used::Accepted { left: 0 },
            "{n}"
        );
        assert_eq!(st.use_code(n, &codes[i]).unwrap(), Used::Rejected, "{n}");
    }
    assert!(st.counts().unwrap().is_empty());
}

/// The caller of setuid su sets RLIMIT_FSIZE to 0 with SIGXFSZ ignored: the rewrite that
/// strikes the code off cannot be written. tru.ID down, failmode = "safe", the target's
/// password and a valid recovery code of the target: refused (config_error), the code kept.
/// Then without the limit the same code works once.
#[test]
fn su_with_a_file_size_limit_cannot_keep_a_recovery_code() {
    let (caller, target) = ("truidak7", "truidak8");
    let w = World::new();
    ensure_user(caller);
    ensure_user(target);
    set_password(target);
    let ft = w.enroll(target);
    let codes = give_codes(&w, target, 2);
    config(
        &w,
        &down_api(&w),
        "failmode = \"safe\"\ntries = 1",
        "",
        &[(target, ft.as_str())],
    );
    let stack = snippet_stack(&w, "su");
    let code = codes[0].expose();
    let su = |prefix: &str| {
        let script = format!("{prefix} exec su {target} -c 'id -un'");
        let argv = ["runuser", "-u", caller, "--", "sh", "-c", script.as_str()];
        Pty::spawn(in_namespace(&[(&stack, "/etc/pam.d/su")], &argv)).converse(&[PASSWORD, code])
    };
    let s = su("trap '' XFSZ; ulimit -f 0;");
    assert_refused(&s);
    assert_ne!(s.output_lines().last(), Some(&target), "{s:#?}");
    assert_eq!(outcome_names(&w), ["config_error"]);
    assert_eq!(
        left(&w, target),
        2,
        "the code was used up by a refused login"
    );
    let s = su("");
    assert_logged_in(&s, target, None);
    assert_eq!(outcome_names(&w), ["recovery_used"]);
    let s = su("");
    assert_refused(&s);
    assert_eq!(left(&w, target), 1);
}
