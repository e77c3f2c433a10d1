//! Real logins end to end: a private OpenSSH server, sudo and su, each running the PAM stack
//! from `conf/` (read from the file, only the module line pointed at the built module and the
//! test's config and log socket), against the emulator over TLS.
//!
//! How the host stays untouched: each program runs in a private mount namespace
//! (`unshare --mount --propagation private`) in which the test's stack is bind-mounted over
//! `/etc/pam.d/<service>` (and, for sudo, a test folder over `/etc/sudoers.d`). The host's
//! files are never written. The `@include common-*` lines of the snippets resolve to the
//! host's own files, as they would on a real machine. sshd's config is
//! `conf/sshd_config.d/pam_truid.conf` followed by the test's own lines (port, host key...).
//! The display-manager stacks cannot meet their display manager here: they run through real
//! libpam in-process (`pam_start_confdir`) with a conversation shaped like a greeter's. The
//! pam-auth-update profile is applied by the real `pam-auth-update` to private copies of the
//! folders it writes, and logged in through with pamtester on those copies.
//!
//! Every stack is also run for a user the module stands aside for (STAND_ASIDE): the first
//! factor the distribution asks (the Unix password) must still decide.
//!
//! How prompts are answered: every interactive program (ssh, su) runs on a pseudo-terminal the
//! harness (tests/common/logins.rs, shared with tests/rollout.rs) opens itself
//! (`posix_openpt`), as its controlling terminal. A prompt is the last line
//! of output ending in ": " while the terminal's echo is off, which is when ssh's
//! readpassphrase and Linux-PAM's misc_conv (su) are waiting for the answer; the answer is
//! written only then, so no typed-ahead input can be flushed. sudo reads its answers from
//! stdin (`sudo -S`). No sshpass, no paramiko: each prompt is seen and recorded.
//!
//! Every daemon and client is killed by its process group id in a `Drop` guard, also when a
//! test fails; every wait has a deadline.
//!
//! How the host's accounts stay untouched: users (names `truid*`, unique per test) are created
//! with `useradd -m` only inside tests/private-host.sh, which gives the whole test binary a
//! private copy of /etc (and of the mail and login-record files) in its own mount namespace,
//! removed when it ends; `ensure_user` refuses to run anywhere else. So `sudo .ci/run` and
//! `sudo tests/private-host.sh cargo test --test real_logins` add no account to the host.

// common re-exports what other test files use.
#[allow(unused_imports)]
mod common;
use common::logins::*;
use common::*;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The checks refuse each way of not being in the private host: no variable, /etc not a
/// mount point, the variable naming another folder (here, one with an `etc` of its own).
#[test]
fn users_are_added_only_in_the_private_host() {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let here = private_host();
    assert_eq!(
        private_host_in(Some(here.clone().into()), &mountinfo),
        Ok(here.clone())
    );
    assert!(private_host_in(None, &mountinfo)
        .unwrap_err()
        .contains("not set"));
    let host_like: String = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) != Some("/etc"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(private_host_in(Some(here.clone().into()), &host_like)
        .unwrap_err()
        .contains("not a mount point"));
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir(other.path().join("etc")).unwrap();
    assert!(private_host_in(Some(other.path().into()), &mountinfo)
        .unwrap_err()
        .contains("is not"));
}

/// The two ways the module stands aside (answers PAM_IGNORE) for a user: without a factor
/// under `unenrolled = "ignore"`, and with one but outside `[login] groups`. Each: the
/// `[login]` lines, whether the user is in `[users]`, the outcome word the module logs.
const STAND_ASIDE: [(&str, bool, &str); 2] = [
    (
        "unenrolled = \"ignore\"",
        false,
        "outcome=not_enrolled_ignored",
    ),
    ("groups = [\"truidnogroup\"]", true, "outcome=not_required"),
];

/// Writes the config of one STAND_ASIDE way for `user` (whose factor is `factor`).
fn stand_aside_config(w: &World, way: (&str, bool, &str), user: &str, factor: &str) {
    let (login, enrolled, _) = way;
    if enrolled {
        w.config(login, &[(user, factor)]);
    } else {
        w.config(login, &[]);
    }
}

/// The module ran once since the last look and stood aside, as `way` says it does.
fn assert_stood_aside(w: &World, way: (&str, bool, &str)) {
    let lines = w.outcomes();
    assert!(
        lines.len() == 1 && lines[0].contains(way.2),
        "{}: {lines:?}",
        way.0
    );
}

fn outcome_lines_with(w: &World, word: &str) -> Vec<String> {
    w.outcomes()
        .into_iter()
        .filter(|l| l.contains(word))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// sshd

#[test]
fn ssh_key_then_code_asks_only_the_code_and_carries_rhost() {
    let u = "truidpk1";
    let (w, sshd, f) = ssh_world(SshVariant::Publickey, "", &[u], true);
    let s = sshd.login(SshVariant::Publickey, u, &[&w.code(&f[0])]);
    assert_logged_in(&s, u, Some(&sshd));
    // The key was accepted; then only the tru.ID prompt, no password prompt.
    assert_eq!(s.prompts, [ssh_prompt(u, PROMPT)]);
    assert!(!s.transcript.to_lowercase().contains("password"), "{s:#?}");
    // One challenge, not two.
    assert_eq!(w.emu.stats().challenges_created, 1);
    let lines = w.outcomes();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&format!(
            "outcome=verified user=\"{u}\" service=\"sshd\" rhost=\"127.0.0.1\""
        )) && lines[0].contains("tries=1"),
        "{lines:?}"
    );
    let ch = w.emu.last_challenges();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].factor_id, f[0]);
    assert_eq!(ch[0].status, "VERIFIED");
    let r = ch[0].reference_id.clone().unwrap_or_default();
    assert!(
        r.starts_with(&format!("pam_truid/sshd/127.0.0.1/{u}/")),
        "{r}"
    );
    // sshd checked the key first (publickey partial success, then keyboard-interactive).
    let log = sshd.log_text();
    assert!(log.contains(&format!("Partial publickey for {u}")), "{log}");
}

#[test]
fn ssh_password_then_code_in_one_keyboard_interactive_exchange() {
    let u = "truidpw1";
    let (w, sshd, f) = ssh_world(SshVariant::Password, "", &[u], true);
    let s = sshd.login(SshVariant::Password, u, &[PASSWORD, &w.code(&f[0])]);
    assert_logged_in(&s, u, Some(&sshd));
    assert_eq!(s.prompts[0], ssh_prompt(u, "Password: "));
    assert_eq!(pam_prompts(&s), ["Password: ", PROMPT]);
    assert_eq!(w.emu.stats().challenges_created, 1);
    // A wrong password stops the stack at common-auth: no code asked, no challenge created.
    let s = sshd.login(SshVariant::Password, u, &["not-the-password"]);
    assert_refused(&s);
    assert_eq!(s.prompts, [ssh_prompt(u, "Password: ")]);
    assert_eq!(w.emu.stats().challenges_created, 1);
    // The right password and a wrong code: refused.
    let bad = w.wrong_code(&f[0]);
    let s = sshd.login(SshVariant::Password, u, &[PASSWORD, &bad, &bad, &bad]);
    assert_refused(&s);
    assert_eq!(s.prompts.len(), 4, "{s:#?}");
}

#[test]
fn ssh_wrong_codes_are_refused() {
    let u = "truidwr1";
    let (w, sshd, f) = ssh_world(SshVariant::Publickey, "", &[u], true);
    let bad = w.wrong_code(&f[0]);
    let s = sshd.login(SshVariant::Publickey, u, &[&bad, &bad, &bad]);
    assert_refused(&s);
    assert_eq!(pam_prompts(&s), [PROMPT; 3]);
    assert!(s.transcript.contains("Wrong code, try again."), "{s:#?}");
    assert!(!s.transcript.contains(&format!("\n{u}\n")), "{s:#?}");
    assert_eq!(w.emu.stats().challenges_created, 3);
    assert_eq!(w.emu.stats().verifications, 0);
    let lines = w.outcomes();
    assert!(
        lines.len() == 1 && lines[0].contains("outcome=wrong_code") && lines[0].contains("tries=3"),
        "{lines:?}"
    );
}

#[test]
fn ssh_wrong_then_right_within_tries() {
    let u = "truidwr2";
    let (w, sshd, f) = ssh_world(SshVariant::Publickey, "tries = 2", &[u], true);
    let bad = w.wrong_code(&f[0]);
    let s = sshd.login(SshVariant::Publickey, u, &[&bad, &w.code(&f[0])]);
    assert_logged_in(&s, u, Some(&sshd));
    assert_eq!(pam_prompts(&s), [PROMPT; 2]);
    assert!(s.transcript.contains("Wrong code, try again."), "{s:#?}");
    let lines = outcome_lines_with(&w, "outcome=verified");
    assert!(
        lines.len() == 1 && lines[0].contains("tries=2"),
        "{lines:?}"
    );
}

#[test]
fn ssh_tru_id_down_follows_failmode() {
    for (failmode, u) in [("secure", "truiddn1"), ("safe", "truiddn2")] {
        let w = World::new();
        ensure_user(u);
        let f = w.enroll(u);
        let closed = free_port();
        let text = w.api_table().replace(
            &w.emu.info().base_url,
            &format!("https://127.0.0.1:{closed}"),
        );
        w.write_config(&format!(
            "{text}\n[login]\nfailmode = \"{failmode}\"\n[users]\n{u} = \"{f}\"\n"
        ));
        let sshd = Sshd::start(&w, SshVariant::Publickey);
        // Prompt first: the code is asked before tru.ID is (sshd is root, not setuid: `safe`
        // applies to an outage before the code).
        let s = sshd.login(SshVariant::Publickey, u, &["123456"]);
        assert_eq!(pam_prompts(&s), [PROMPT], "{s:#?}");
        let lines = w.outcomes();
        assert_eq!(lines.len(), 1, "{lines:?}");
        if failmode == "secure" {
            assert_refused(&s);
            assert!(lines[0].contains("outcome=unavailable_denied"), "{lines:?}");
        } else {
            assert_logged_in(&s, u, Some(&sshd));
            assert!(
                lines[0].contains("outcome=unavailable_allowed")
                    && lines[0].contains("LOGIN ALLOWED WITHOUT SECOND FACTOR"),
                "{lines:?}"
            );
        }
    }
}

#[test]
fn ssh_unenrolled_user_deny_then_ignore() {
    let u = "truidun1";
    let (w, sshd, _) = ssh_world(SshVariant::Publickey, "", &[u], false);
    // deny: asked as if enrolled (nothing tells an attacker who is enrolled), then refused.
    let s = sshd.login(SshVariant::Publickey, u, &["123456", "123456", "123456"]);
    assert_refused(&s);
    assert_eq!(pam_prompts(&s), [PROMPT; 3]);
    assert_eq!(w.emu.stats().tokens_issued, 0);
    assert_eq!(
        outcome_lines_with(&w, "outcome=not_enrolled_denied").len(),
        1
    );
    // ignore (the config is read at each login): no code; the key and the Unix password
    // (common-auth after the module) let the user in.
    set_password(u);
    w.config("unenrolled = \"ignore\"", &[]);
    let s = sshd.login(SshVariant::Publickey, u, &[PASSWORD]);
    assert_logged_in(&s, u, Some(&sshd));
    assert_eq!(pam_prompts(&s), ["Password: "]);
    assert_eq!(
        outcome_lines_with(&w, "outcome=not_enrolled_ignored").len(),
        1
    );
    assert_eq!(w.emu.stats().challenges_created, 0);
}

/// Both sshd stacks, for a user the module stands aside for (each STAND_ASIDE way): the Unix
/// password is still asked (after the key with sshd-publickey), the right one lets in, a wrong
/// one or none is refused. With a stack that ended in pam_permit, the key alone let them in.
#[test]
fn ssh_asks_the_password_of_a_user_the_module_stands_aside_for() {
    for (variant, u) in [
        (SshVariant::Publickey, "truidsa1"),
        (SshVariant::Password, "truidsa2"),
    ] {
        let w = World::new();
        ensure_user(u);
        set_password(u);
        let f = w.enroll(u);
        stand_aside_config(&w, STAND_ASIDE[0], u, &f);
        let sshd = Sshd::start(&w, variant);
        for way in STAND_ASIDE {
            stand_aside_config(&w, way, u, &f);
            let what = format!("{variant:?}, {}", way.0);
            // Nothing typed: asked the password, and not let in.
            let s = sshd.login(variant, u, &[]);
            assert!(!s.ok(), "{what}: in on nothing: {s:#?}");
            assert_eq!(pam_prompts(&s), ["Password: "], "{what}");
            w.outcomes();
            // A wrong password: refused.
            let s = sshd.login(variant, u, &["not-the-password"]);
            assert_refused(&s);
            assert_eq!(pam_prompts(&s), ["Password: "], "{what}");
            w.outcomes();
            // The right one: in, asked nothing else.
            let s = sshd.login(variant, u, &[PASSWORD]);
            assert_logged_in(&s, u, Some(&sshd));
            assert_eq!(pam_prompts(&s), ["Password: "], "{what}");
            assert_stood_aside(&w, way);
        }
        assert_eq!(w.emu.stats().challenges_created, 0, "{variant:?}");
        if variant == SshVariant::Publickey {
            let log = sshd.log_text();
            assert!(log.contains(&format!("Partial publickey for {u}")), "{log}");
        }
    }
}

#[test]
fn ssh_prompt_is_the_configured_one() {
    let u = "truidpr1";
    let prompt = "Authenticator code for example.org: ";
    let (w, sshd, f) = ssh_world(
        SshVariant::Publickey,
        &format!("prompt = \"{prompt}\""),
        &[u],
        true,
    );
    let s = sshd.login(SshVariant::Publickey, u, &[&w.code(&f[0])]);
    assert_logged_in(&s, u, Some(&sshd));
    assert_eq!(s.prompts, [ssh_prompt(u, prompt)]);
}

#[test]
fn ssh_32_concurrent_logins_then_keeps_serving() {
    const RIGHT: usize = 32;
    const WRONG: usize = 4;
    let names: Vec<String> = (0..RIGHT + WRONG + 1)
        .map(|i| format!("truidcc{i:02}"))
        .collect();
    let users: Vec<&str> = names.iter().map(String::as_str).collect();
    let (w, sshd, f) = ssh_world(SshVariant::Publickey, "tries = 1", &users, true);
    let answers: Vec<String> = (0..RIGHT + WRONG)
        .map(|i| {
            if i < RIGHT {
                w.emu.code(&f[i], 0).unwrap()
            } else {
                w.wrong_code(&f[i])
            }
        })
        .collect();
    // The log socket holds few datagrams (net.unix.max_dgram_qlen, 10 by default) and the
    // module's send blocks when it is full, as glibc's syslog() does: read it while the logins
    // run, as a syslog daemon would.
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut logged = Vec::new();
    let sessions: Vec<Session> = std::thread::scope(|scope| {
        let drain = scope.spawn(|| {
            let mut got = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                got.extend(w.log.lines());
                std::thread::sleep(Duration::from_millis(5));
            }
            got
        });
        let handles: Vec<_> = (0..RIGHT + WRONG)
            .map(|i| {
                let (sshd, user, code) = (&sshd, users[i], answers[i].as_str());
                scope.spawn(move || sshd.login(SshVariant::Publickey, user, &[code]))
            })
            .collect();
        let sessions = handles.into_iter().map(|h| h.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        logged = drain.join().unwrap();
        logged.extend(w.log.lines());
        sessions
    });
    for (i, s) in sessions.iter().enumerate() {
        assert_eq!(s.prompts, [ssh_prompt(users[i], PROMPT)], "{s:#?}");
        if i < RIGHT {
            assert_logged_in(s, users[i], Some(&sshd));
        } else {
            assert_refused(s);
        }
    }
    let st = w.emu.stats();
    assert_eq!(st.challenges_created, (RIGHT + WRONG) as u64);
    assert_eq!(st.verifications, RIGHT as u64);
    let count = |word: &str| logged.iter().filter(|l| l.contains(word)).count();
    assert_eq!(count("outcome=verified"), RIGHT, "{logged:#?}");
    assert_eq!(count("outcome=wrong_code"), WRONG, "{logged:#?}");
    assert_eq!(count("rhost=\"127.0.0.1\""), RIGHT + WRONG, "{logged:#?}");
    // Each login's challenge was its own user's.
    for (i, u) in users[..RIGHT + WRONG].iter().enumerate() {
        let ch: Vec<_> = w
            .emu
            .last_challenges()
            .into_iter()
            .filter(|c| c.factor_id == f[i])
            .collect();
        assert_eq!(ch.len(), 1, "{u}");
        let r = ch[0].reference_id.clone().unwrap_or_default();
        assert!(
            r.starts_with(&format!("pam_truid/sshd/127.0.0.1/{u}/")),
            "{r}"
        );
        assert_eq!(ch[0].status == "VERIFIED", i < RIGHT, "{u}: {:?}", ch[0]);
    }
    // sshd keeps serving.
    let last = users[RIGHT + WRONG];
    let s = sshd.login(SshVariant::Publickey, last, &[&w.code(&f[RIGHT + WRONG])]);
    assert_logged_in(&s, last, Some(&sshd));
}

// ---------------------------------------------------------------------------------------------
// sudo

/// `printf ANSWERS | sudo -S -k id -un` run as `user`, with the sudo snippet over
/// /etc/pam.d/sudo and a sudoers.d folder of our own over /etc/sudoers.d, both only in a
/// private mount namespace. Returns (success, stdout, stderr).
fn sudo_as(w: &World, user: &str, stdin: &str) -> (bool, String, String) {
    let stack = snippet_stack(w, "sudo");
    run_piped(
        in_namespace(
            &[
                (&stack, "/etc/pam.d/sudo"),
                (&w.path("sudoers.d"), "/etc/sudoers.d"),
            ],
            &["runuser", "-u", user, "--", "sudo", "-S", "-k", "id", "-un"],
        ),
        stdin,
    )
}

/// Runs `cmd` in its own process group with `stdin` as its input (then end of input).
/// Returns (success, stdout, stderr).
fn run_piped(mut cmd: Command, stdin: &str) -> (bool, String, String) {
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut stdout = String::new();
    let _ = out.read_to_string(&mut stdout);
    let status = wait_until(&mut child, Instant::now() + LOGIN_DEADLINE);
    let stderr = reader.join().unwrap();
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

/// A sudoers.d folder for sudo_as: `users` may run anything, asked every time; one PAM round
/// per sudo run so a refusal is the stack's refusal (sudo's own passwd_tries would call it
/// again).
fn sudoers(w: &World, users: &[&str]) {
    let d = w.path("sudoers.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let list = users.join(",");
    let rule = d.join("pam_truid_test");
    std::fs::write(
        &rule,
        format!(
            "Defaults:{list} timestamp_timeout=0, passwd_tries=1, lecture=never\n\
             {list} ALL=(ALL:ALL) ALL\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rule, std::fs::Permissions::from_mode(0o440)).unwrap();
}

#[test]
fn sudo_right_code_wrong_code_and_wrong_then_right() {
    let users = ["truidsd1", "truidsd2", "truidsd3"];
    let w = World::new();
    let f: Vec<String> = users
        .iter()
        .map(|u| {
            ensure_user(u);
            w.enroll(u)
        })
        .collect();
    let pairs: Vec<(&str, &str)> = users
        .iter()
        .zip(&f)
        .map(|(u, f)| (*u, f.as_str()))
        .collect();
    w.config("", &pairs);
    sudoers(&w, &users);

    // Right code: the command runs as root.
    let (ok, out, err) = sudo_as(&w, users[0], &format!("{}\n", w.code(&f[0])));
    assert!(ok && out.trim() == "root", "{out}\n{err}");
    // The code instead of the password: no password asked.
    assert!(
        err.contains(PROMPT) && !err.contains("password for"),
        "{err}"
    );
    // Wrong codes: refused, nothing runs.
    let bad = w.wrong_code(&f[1]);
    let (ok, out, err) = sudo_as(&w, users[1], &format!("{bad}\n{bad}\n{bad}\n"));
    assert!(!ok && out.trim().is_empty(), "{out}\n{err}");
    assert_eq!(err.matches(PROMPT).count(), 3, "{err}");
    // default=die: a wrong code ends the stack, no password is asked after it.
    assert!(!err.contains("password for"), "{err}");
    // No "Wrong code, try again." here: sudo calls PAM with PAM_SILENT (its pam_silent
    // default), and the module honours it for messages.
    assert!(!err.contains("Wrong code, try again."), "{err}");
    // Wrong then right within tries.
    let bad = w.wrong_code(&f[2]);
    let (ok, out, err) = sudo_as(&w, users[2], &format!("{bad}\n{}\n", w.code(&f[2])));
    assert!(ok && out.trim() == "root", "{out}\n{err}");

    let lines = w.outcomes();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].contains(&format!(
        "outcome=verified user=\"{}\" service=\"sudo\"",
        users[0]
    )));
    assert!(lines[1].contains("outcome=wrong_code") && lines[1].contains("tries=3"));
    assert!(lines[2].contains("outcome=verified") && lines[2].contains("tries=2"));
    // The host's sudoers.d is untouched: our rule only ever existed in the namespace.
    assert!(!Path::new("/etc/sudoers.d/pam_truid_test").exists());
}

/// sudo for a user the module stands aside for (each STAND_ASIDE way): sudo asks the Unix
/// password (common-auth after the module), the right one runs the command as root, a wrong
/// one or none runs nothing. With the stack that ended in pam_permit, `sudo -k` ran the
/// command as root with nothing typed.
#[test]
fn sudo_asks_the_password_of_a_user_the_module_stands_aside_for() {
    let u = "truidsa3";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    sudoers(&w, &[u]);
    let asked = format!("[sudo] password for {u}: ");
    for way in STAND_ASIDE {
        stand_aside_config(&w, way, u, &f);
        let what = way.0;
        // Nothing typed (end of input at once).
        let (ok, out, err) = sudo_as(&w, u, "");
        assert!(
            !ok && out.trim().is_empty(),
            "{what}: root on nothing: {out}\n{err}"
        );
        assert!(
            err.contains(&asked) && !err.contains(PROMPT),
            "{what}: {err}"
        );
        assert_stood_aside(&w, way);
        // A wrong password.
        let (ok, out, err) = sudo_as(&w, u, "not-the-password\n");
        assert!(!ok && out.trim().is_empty(), "{what}: {out}\n{err}");
        assert_eq!(err.matches(&asked).count(), 1, "{what}: {err}");
        assert_stood_aside(&w, way);
        // The right one.
        let (ok, out, err) = sudo_as(&w, u, &format!("{PASSWORD}\n"));
        assert!(ok && out.trim() == "root", "{what}: {out}\n{err}");
        assert!(
            err.contains(&asked) && !err.contains(PROMPT),
            "{what}: {err}"
        );
        assert_stood_aside(&w, way);
    }
    assert_eq!(w.emu.stats().challenges_created, 0);
}

// ---------------------------------------------------------------------------------------------
// su

/// `caller` runs `su [-] target -c "id -un"` on a terminal with the su snippet over
/// /etc/pam.d/su (which /etc/pam.d/su-l includes) in a private mount namespace.
fn su_as(w: &World, caller: &str, dash: bool, target: &str, answers: &[&str]) -> Session {
    let stack = snippet_stack(w, "su");
    let mut argv = vec!["runuser", "-u", caller, "--", "su"];
    if dash {
        argv.push("-");
    }
    argv.extend([target, "-c", "id -un"]);
    Pty::spawn(in_namespace(&[(&stack, "/etc/pam.d/su")], &argv)).converse(answers)
}

fn su_world(login: &str, caller: &str, target: &str) -> (World, String, String) {
    let w = World::new();
    ensure_user(caller);
    ensure_user(target);
    set_password(target);
    let (fc, ft) = (w.enroll(caller), w.enroll(target));
    w.config(login, &[(caller, &fc), (target, &ft)]);
    (w, fc, ft)
}

#[test]
fn su_asks_the_targets_code_by_default() {
    let (caller, target) = ("truidsua", "truidsub");
    let (w, fc, ft) = su_world("tries = 1", caller, target);
    // The caller's own code is not the target's: refused.
    let s = su_as(&w, caller, false, target, &[PASSWORD, &w.code(&fc)]);
    assert_refused(&s);
    assert_eq!(s.prompts, ["Password: ", PROMPT]);
    // The target's code: in.
    let s = su_as(&w, caller, false, target, &[PASSWORD, &w.code(&ft)]);
    assert_logged_in(&s, target, None);
    assert_eq!(s.prompts, ["Password: ", PROMPT]);
    let ch = w.emu.last_challenges();
    assert!(ch.iter().all(|c| c.factor_id == ft), "{ch:?}");
    let r = ch[1].reference_id.clone().unwrap_or_default();
    assert!(
        r.starts_with(&format!("pam_truid/su/local/{target}/")),
        "{r}"
    );
    let lines = outcome_lines_with(&w, "outcome=verified");
    assert!(
        lines.len() == 1 && lines[0].contains(&format!("user=\"{target}\" service=\"su\"")),
        "{lines:?}"
    );
}

#[test]
fn su_caller_asks_the_callers_code() {
    let (caller, target) = ("truidsuc", "truidsud");
    let (w, fc, ft) = su_world("su = \"caller\"\ntries = 1", caller, target);
    // `su -` is service su-l, which includes su: the same stack.
    let s = su_as(&w, caller, true, target, &[PASSWORD, &w.code(&ft)]);
    assert_refused(&s);
    let s = su_as(&w, caller, true, target, &[PASSWORD, &w.code(&fc)]);
    assert_logged_in(&s, target, None);
    assert_eq!(s.prompts, ["Password: ", PROMPT]);
    let ch = w.emu.last_challenges();
    assert!(ch.iter().all(|c| c.factor_id == fc), "{ch:?}");
    let r = ch[1].reference_id.clone().unwrap_or_default();
    assert!(
        r.starts_with(&format!("pam_truid/su-l/local/{caller}/")),
        "{r}"
    );
    let lines = outcome_lines_with(&w, "outcome=verified");
    assert!(
        lines.len() == 1 && lines[0].contains("service=\"su-l\""),
        "{lines:?}"
    );
    // A wrong password stops at common-auth: no challenge.
    let before = w.emu.stats().challenges_created;
    let s = su_as(&w, caller, true, target, &["wrong-password"]);
    assert_refused(&s);
    assert_eq!(w.emu.stats().challenges_created, before);
}

/// su to a target the module stands aside for (each STAND_ASIDE way): the target's Unix
/// password is asked, the right one lets in, a wrong one or none is refused; no code asked.
#[test]
fn su_asks_the_password_of_a_target_the_module_stands_aside_for() {
    let (caller, target) = ("truidsa4", "truidsa5");
    let w = World::new();
    ensure_user(caller);
    ensure_user(target);
    set_password(target);
    let f = w.enroll(target);
    for way in STAND_ASIDE {
        stand_aside_config(&w, way, target, &f);
        let what = way.0;
        let s = su_as(&w, caller, false, target, &[]);
        assert!(!s.ok(), "{what}: in on nothing: {s:#?}");
        assert_eq!(s.prompts, ["Password: "], "{what}");
        let s = su_as(&w, caller, false, target, &["not-the-password"]);
        assert_refused(&s);
        assert_eq!(s.prompts, ["Password: "], "{what}");
        // common-auth first: a wrong password never reaches the module.
        assert!(w.outcomes().is_empty(), "{what}");
        let s = su_as(&w, caller, true, target, &[PASSWORD]);
        assert_logged_in(&s, target, None);
        assert_eq!(s.prompts, ["Password: "], "{what}");
        assert_stood_aside(&w, way);
    }
    assert_eq!(w.emu.stats().challenges_created, 0);
}

// ---------------------------------------------------------------------------------------------
// Desktop login

const DESKTOP: [&str; 2] = ["gdm-password", "lightdm"];

/// A stack folder with the display-manager snippets. Their `@include common-*` lines are the
/// host's own files, as on a real machine: Linux-PAM 1.5 resolves `@include` from /etc/pam.d
/// even under `pam_start_confdir`.
fn desktop_confdir(w: &World) -> PathBuf {
    let dir = w.path("dm.d");
    std::fs::create_dir_all(&dir).unwrap();
    for service in DESKTOP {
        std::fs::copy(snippet_stack(w, service), dir.join(service)).unwrap();
    }
    dir
}

/// One login through real libpam with a conversation shaped like a greeter's: echo-off
/// prompts and messages only (echo-on refused), no terminal involved.
fn greeter_login(dir: &Path, service: &str, user: &str, answers: &[&str]) -> (i32, Script) {
    let items = Items {
        tty: Some(":0".into()),
        ..Default::default()
    };
    let mut s = Script::answering(answers);
    s.echo_off_only = true;
    let rc = pam_login(dir, service, user, &items, &mut s);
    (rc, s)
}

/// The display-manager snippets through real libpam with a greeter-shaped conversation.
#[test]
fn desktop_stacks_work_with_an_echo_off_only_conversation() {
    let u = "truiddm1";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    w.config("", &[(u, &f)]);
    let dir = desktop_confdir(&w);
    for (i, service) in DESKTOP.into_iter().enumerate() {
        let run = |answers: &[&str]| greeter_login(&dir, service, u, answers);
        let (rc, s) = run(&[PASSWORD, &w.emu.code(&f, i as i64).unwrap()]);
        assert_eq!(rc, PAM_SUCCESS, "{service}: {:?}", s.seen);
        assert_eq!(s.prompts(), ["Password: ", PROMPT], "{service}");
        assert!(
            s.seen.iter().all(|m| !matches!(m, Seen::EchoOnPrompt(_))),
            "{service}: {:?}",
            s.seen
        );
        let bad = w.wrong_code(&f);
        let (rc, s) = run(&[PASSWORD, &bad, &bad, &bad]);
        assert_eq!(rc, PAM_AUTH_ERR, "{service}: {:?}", s.seen);
        assert!(
            s.seen
                .contains(&Seen::Error("Wrong code, try again.".into())),
            "{service}: {:?}",
            s.seen
        );
    }
    let lines = w.outcomes();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("service=\"gdm-password\" rhost=\"\" tty=\":0\"")),
        "{lines:?}"
    );
}

/// The display-manager stacks for a user the module stands aside for (each STAND_ASIDE way):
/// the password alone decides; the right one lets in, a wrong one or none is refused.
#[test]
fn desktop_stacks_ask_the_password_of_a_user_the_module_stands_aside_for() {
    let u = "truidsa6";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    let dir = desktop_confdir(&w);
    for service in DESKTOP {
        for way in STAND_ASIDE {
            stand_aside_config(&w, way, u, &f);
            let what = format!("{service}, {}", way.0);
            let (rc, s) = greeter_login(&dir, service, u, &[]);
            assert_ne!(rc, PAM_SUCCESS, "{what}: in on nothing: {:?}", s.seen);
            assert_eq!(s.prompts(), ["Password: "], "{what}");
            let (rc, s) = greeter_login(&dir, service, u, &["not-the-password"]);
            assert_eq!(rc, PAM_AUTH_ERR, "{what}: {:?}", s.seen);
            assert_eq!(s.prompts(), ["Password: "], "{what}");
            assert!(w.outcomes().is_empty(), "{what}");
            let (rc, s) = greeter_login(&dir, service, u, &[PASSWORD]);
            assert_eq!(rc, PAM_SUCCESS, "{what}: {:?}", s.seen);
            assert_eq!(s.prompts(), ["Password: "], "{what}");
            assert_stood_aside(&w, way);
        }
    }
    assert_eq!(w.emu.stats().challenges_created, 0);
}

// ---------------------------------------------------------------------------------------------
// The pam-auth-update profile

/// The shipped profile, its module line pointed at the built module and this test's config,
/// enabled by the real pam-auth-update on copies; the copy of /etc/pam.d it left.
fn pam_auth_update_enabled(w: &World) -> PathBuf {
    let profile = pointed_at_test_module(w, &shipped_profile(), "packaging/pam-configs/truid");
    pam_auth_update_with(w, &profile)
}

/// The pam-auth-update profile, enabled by the real pam-auth-update, then logins through the
/// common-auth it wrote (a service without its own file, so /etc/pam.d/other): an enrolled
/// user gives the password, then the code; a user the module stands aside for (each
/// STAND_ASIDE way) gives the password alone, and a wrong one or none is refused.
#[test]
fn pam_auth_update_profile_keeps_the_password_first() {
    let (enrolled, aside) = ("truidsa7", "truidsa8");
    let w = World::new();
    for u in [enrolled, aside] {
        ensure_user(u);
        set_password(u);
    }
    let (fe, fa) = (w.enroll(enrolled), w.enroll(aside));
    let host_common_auth = std::fs::read_to_string("/etc/pam.d/common-auth").unwrap();
    let dir = pam_auth_update_enabled(&w);
    // The module went into the Additional block, after the password's Primary block.
    let common_auth = std::fs::read_to_string(dir.join("common-auth")).unwrap();
    let lines: Vec<&str> = common_auth
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    let at = |word: &str| lines.iter().position(|l| l.contains(word));
    let module = at("pam_truid.so").unwrap_or_else(|| panic!("{common_auth}"));
    assert!(
        lines[module]
            .split_whitespace()
            .take(2)
            .eq(["auth", "requisite"]),
        "{common_auth}"
    );
    assert!(
        [at("pam_unix.so"), at("pam_permit.so")]
            .iter()
            .all(|i| i.is_some_and(|i| i < module)),
        "{common_auth}"
    );
    // The host's own file is as it was.
    assert_eq!(
        std::fs::read_to_string("/etc/pam.d/common-auth").unwrap(),
        host_common_auth
    );
    // Linux-PAM 1.5 resolves `@include` from /etc/pam.d even under pam_start_confdir: log in
    // with pamtester, on a terminal (it reads each answer when asked), in a namespace where
    // the copy is /etc/pam.d, as the host would.
    // A service without a file of its own runs /etc/pam.d/other, which is the common-* files.
    // (Not "other" by name: libpam then loads that file twice, as the service and as the
    // fallback, and runs its stack twice.)
    let login = |user: &str, answers: &[&str]| -> Session {
        let argv = ["pamtester", "truid-no-such-service", user, "authenticate"];
        Pty::spawn(in_namespace(&[(&dir, "/etc/pam.d")], &argv)).converse(answers)
    };

    // Enrolled: the password, then the code.
    w.config("", &[(enrolled, &fe)]);
    let s = login(enrolled, &[PASSWORD, &w.code(&fe)]);
    assert!(s.ok(), "{s:#?}");
    assert_eq!(s.prompts, ["Password: ", PROMPT]);
    assert!(w.outcomes()[0].contains("outcome=verified"));
    let s = login(enrolled, &["not-the-password"]);
    assert_refused(&s);
    assert_eq!(s.prompts, ["Password: "]);
    assert_eq!(w.emu.stats().challenges_created, 1);

    // Stood aside for: the password alone decides.
    for way in STAND_ASIDE {
        stand_aside_config(&w, way, aside, &fa);
        let what = way.0;
        let s = login(aside, &[]);
        assert!(!s.ok(), "{what}: in on nothing: {s:#?}");
        assert_eq!(s.prompts, ["Password: "], "{what}");
        let s = login(aside, &["not-the-password"]);
        assert_refused(&s);
        assert_eq!(s.prompts, ["Password: "], "{what}");
        assert!(w.outcomes().is_empty(), "{what}");
        let s = login(aside, &[PASSWORD]);
        assert!(s.ok(), "{what}: {s:#?}");
        assert_eq!(s.prompts, ["Password: "], "{what}");
        assert_stood_aside(&w, way);
    }
    assert_eq!(w.emu.stats().challenges_created, 1);
}

#[test]
fn ssh_push_prompt_is_visible_and_approval_logs_in() {
    // sshd shows PAM_TEXT_INFO only with a next prompt; the push instruction is in the
    // prompt itself, so the person sees it before the phone buzzes.
    let u = "truidpu1";
    ensure_user(u);
    let w = World::new();
    let f = w.emu.seed_factor(u, common::FactorType::Push).factor_id;
    w.write_config(&format!(
        "{}\n[login]\npush_timeout = 20\n[users]\n{u} = \"{f}\"\n[phones]\n{u} = \"+447700900123\"\n",
        w.api_table()
    ));
    let sshd = Sshd::start(&w, SshVariant::Publickey);
    let s = std::thread::scope(|sc| {
        sc.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let pending =
                    w.emu.last_challenges().into_iter().find(|c| {
                        c.factor_type == common::FactorType::Push && c.status == "PENDING"
                    });
                if let Some(c) = pending {
                    assert!(w.emu.resolve_push(&c.factor_id, &c.challenge_id, true));
                    return;
                }
                assert!(Instant::now() < deadline, "no push challenge appeared");
                // Bounded polling of the emulator's state.
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        sshd.login(SshVariant::Publickey, u, &[""])
    });
    assert_logged_in(&s, u, Some(&sshd));
    assert_eq!(
        s.prompts,
        [ssh_prompt(
            u,
            "Press Enter to approve on your phone, or type a tru.ID code: "
        )]
    );
    let lines = w.outcomes();
    assert!(lines[0].contains("outcome=verified"), "{lines:?}");
}

// ---------------------------------------------------------------------------------------------
// sudo -i: its own PAM service

/// `printf ANSWERS | sudo -S -k -i id -un` run as `user` (a login shell: PAM service
/// `sudo-i`, Debian's sudo being built --with-pam-login), with the sudo snippet over
/// /etc/pam.d/sudo and our sudoers.d, and, when `shipped_sudo_i`, the sudo-i snippet over
/// /etc/pam.d/sudo-i; otherwise the host's own sudo-i runs, as after installing conf/pam.d/sudo
/// alone. Returns (success, stdout, stderr).
fn sudo_login_shell_as(
    w: &World,
    user: &str,
    shipped_sudo_i: bool,
    stdin: &str,
) -> (bool, String, String) {
    let (sudo, sudo_i, sudoers_d) = (
        snippet_stack(w, "sudo"),
        snippet_stack(w, "sudo-i"),
        w.path("sudoers.d"),
    );
    let mut binds: Vec<(&Path, &str)> =
        vec![(&sudo, "/etc/pam.d/sudo"), (&sudoers_d, "/etc/sudoers.d")];
    if shipped_sudo_i {
        binds.push((&sudo_i, "/etc/pam.d/sudo-i"));
    }
    let argv = [
        "runuser", "-u", user, "--", "sudo", "-S", "-k", "-i", "id", "-un",
    ];
    run_piped(in_namespace(&binds, &argv), stdin)
}

/// `sudo -i` with conf/pam.d/sudo and conf/pam.d/sudo-i installed asks an enrolled user the
/// code, as plain sudo does: the password alone is refused, the code gives root. A user the
/// module stands aside for is asked the Unix password. And the hole the shipped sudo-i closes:
/// with conf/pam.d/sudo alone (the host's Debian sudo-i), `sudo -i` gives root on the password.
#[test]
fn sudo_login_shell_asks_the_code_with_the_shipped_sudo_i() {
    let (enrolled, aside) = ("truidsi1", "truidsi2");
    assert!(
        Path::new("/etc/pam.d/sudo-i").exists(),
        "this host's sudo has no /etc/pam.d/sudo-i (Debian's sudo package ships it)"
    );
    let w = World::new();
    for u in [enrolled, aside] {
        ensure_user(u);
        set_password(u);
    }
    let (fe, fa) = (w.enroll(enrolled), w.enroll(aside));
    sudoers(&w, &[enrolled, aside]);
    w.config("", &[(enrolled, &fe)]);
    let asked = |u: &str| format!("[sudo] password for {u}: ");

    // Without the shipped sudo-i: root on the password alone; the module never runs.
    let (ok, out, err) = sudo_login_shell_as(&w, enrolled, false, &format!("{PASSWORD}\n"));
    assert!(ok && out.trim() == "root", "{out}\n{err}");
    assert!(
        err.contains(&asked(enrolled)) && !err.contains(PROMPT),
        "{err}"
    );
    assert!(w.outcomes().is_empty());

    // With it: the password is not a code; refused, and no password is asked.
    let (ok, out, err) = sudo_login_shell_as(
        &w,
        enrolled,
        true,
        &format!("{PASSWORD}\n{PASSWORD}\n{PASSWORD}\n"),
    );
    assert!(
        !ok && out.trim().is_empty(),
        "root on the password: {out}\n{err}"
    );
    assert!(
        err.contains(PROMPT) && !err.contains("password for"),
        "{err}"
    );
    let lines = w.outcomes();
    assert!(
        lines.len() == 1
            && lines[0].contains("outcome=wrong_code")
            && lines[0].contains("service=\"sudo-i\""),
        "{lines:?}"
    );
    // A wrong code: refused.
    let bad = w.wrong_code(&fe);
    let (ok, out, err) = sudo_login_shell_as(&w, enrolled, true, &format!("{bad}\n{bad}\n{bad}\n"));
    assert!(!ok && out.trim().is_empty(), "{out}\n{err}");
    assert!(outcome_lines_with(&w, "outcome=wrong_code").len() == 1);
    // The code: a root login shell.
    let (ok, out, err) = sudo_login_shell_as(&w, enrolled, true, &format!("{}\n", w.code(&fe)));
    assert!(ok && out.trim() == "root", "{out}\n{err}");
    assert!(
        err.contains(PROMPT) && !err.contains("password for"),
        "{err}"
    );
    let lines = outcome_lines_with(&w, "outcome=verified");
    assert!(
        lines.len() == 1 && lines[0].contains(&format!("user=\"{enrolled}\" service=\"sudo-i\"")),
        "{lines:?}"
    );

    // A user the module stands aside for: the Unix password decides.
    for way in STAND_ASIDE {
        stand_aside_config(&w, way, aside, &fa);
        let what = way.0;
        let (ok, out, err) = sudo_login_shell_as(&w, aside, true, "");
        assert!(
            !ok && out.trim().is_empty(),
            "{what}: root on nothing: {out}\n{err}"
        );
        assert!(
            err.contains(&asked(aside)) && !err.contains(PROMPT),
            "{what}: {err}"
        );
        assert_stood_aside(&w, way);
        let (ok, out, err) = sudo_login_shell_as(&w, aside, true, "not-the-password\n");
        assert!(!ok && out.trim().is_empty(), "{what}: {out}\n{err}");
        assert_stood_aside(&w, way);
        let (ok, out, err) = sudo_login_shell_as(&w, aside, true, &format!("{PASSWORD}\n"));
        assert!(ok && out.trim() == "root", "{what}: {out}\n{err}");
        assert!(
            err.contains(&asked(aside)) && !err.contains(PROMPT),
            "{what}: {err}"
        );
        assert_stood_aside(&w, way);
    }
}

// ---------------------------------------------------------------------------------------------
// polkit

/// One authentication as polkit-agent-helper-1 runs it: service polkit-1, the administrator
/// as the user, no tty, each prompt passed on to the authentication agent. Through real libpam
/// from `dir` (`pam_start_confdir`). No polkitd runs here (no system D-Bus): the real helper
/// is run up to its report to polkitd in `polkit_helper`, an action's whole round trip not.
fn polkit_auth(dir: &Path, user: &str, answers: &[&str]) -> (i32, Script) {
    let mut s = Script::answering(answers);
    let rc = pam_login(dir, "polkit-1", user, &Items::default(), &mut s);
    (rc, s)
}

/// A stack folder whose polkit-1 is `text`.
fn polkit_confdir(w: &World, name: &str, text: &str) -> PathBuf {
    let dir = w.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("polkit-1"), text).unwrap();
    dir
}

/// conf/pam.d/polkit-1: the password, then the code; a wrong code or password is refused; a
/// user the module stands aside for is asked the password only. And the hole it closes:
/// Debian's own polkit-1 (common-auth only) lets an enrolled admin in on the password alone.
/// Two users with Unix passwords and factors, of whom only `enrolled` is in `[users]`; each
/// test then says how the module stands aside for `aside` (`stand_aside_config`). Their factors.
fn enrolled_and_aside(w: &World, enrolled: &str, aside: &str) -> (String, String) {
    for u in [enrolled, aside] {
        ensure_user(u);
        set_password(u);
    }
    let (fe, fa) = (w.enroll(enrolled), w.enroll(aside));
    w.config("", &[(enrolled, &fe)]);
    (fe, fa)
}

#[test]
fn polkit_stack_asks_the_password_then_the_code() {
    let (enrolled, aside) = ("truidpl1", "truidpl2");
    let w = World::new();
    let (fe, fa) = enrolled_and_aside(&w, enrolled, aside);

    // Debian's file (polkitd's, or the host's override in /etc/pam.d).
    let host_file = ["/etc/pam.d/polkit-1", "/usr/lib/pam.d/polkit-1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("no polkit-1 stack on this host: install polkitd (tests/setup.sh does)");
    let debian = polkit_confdir(
        &w,
        "polkit-debian.d",
        &std::fs::read_to_string(host_file).unwrap(),
    );
    let (rc, s) = polkit_auth(&debian, enrolled, &[PASSWORD]);
    assert_eq!(rc, PAM_SUCCESS, "{host_file}: {:?}", s.seen);
    assert_eq!(s.prompts(), ["Password: "], "{host_file}");
    assert!(w.outcomes().is_empty(), "{host_file} runs the module");

    let shipped = std::fs::read_to_string(snippet_stack(&w, "polkit-1")).unwrap();
    let dir = polkit_confdir(&w, "polkit.d", &shipped);
    // The password, then the code.
    let (rc, s) = polkit_auth(&dir, enrolled, &[PASSWORD, &w.code(&fe)]);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", s.seen);
    assert_eq!(s.prompts(), ["Password: ", PROMPT]);
    let lines = w.outcomes();
    assert!(
        lines.len() == 1
            && lines[0].contains(&format!(
                "outcome=verified user=\"{enrolled}\" service=\"polkit-1\""
            )),
        "{lines:?}"
    );
    // The password alone (no code to give): refused.
    let (rc, s) = polkit_auth(&dir, enrolled, &[PASSWORD]);
    assert_ne!(rc, PAM_SUCCESS, "{:?}", s.seen);
    assert_eq!(s.prompts(), ["Password: ", PROMPT]);
    w.outcomes();
    // Wrong codes: refused.
    let bad = w.wrong_code(&fe);
    let (rc, s) = polkit_auth(&dir, enrolled, &[PASSWORD, &bad, &bad, &bad]);
    assert_eq!(rc, PAM_AUTH_ERR, "{:?}", s.seen);
    assert_eq!(s.prompts(), ["Password: ", PROMPT, PROMPT, PROMPT]);
    assert_eq!(outcome_lines_with(&w, "outcome=wrong_code").len(), 1);
    // A wrong password stops at common-auth: no code asked, tru.ID not asked.
    let before = w.emu.stats().challenges_created;
    let (rc, s) = polkit_auth(&dir, enrolled, &["not-the-password"]);
    assert_eq!(rc, PAM_AUTH_ERR, "{:?}", s.seen);
    assert_eq!(s.prompts(), ["Password: "]);
    assert_eq!(w.emu.stats().challenges_created, before);
    assert!(w.outcomes().is_empty());

    // A user the module stands aside for: the password alone decides.
    for way in STAND_ASIDE {
        stand_aside_config(&w, way, aside, &fa);
        let what = way.0;
        let (rc, s) = polkit_auth(&dir, aside, &[]);
        assert_ne!(rc, PAM_SUCCESS, "{what}: in on nothing: {:?}", s.seen);
        assert_eq!(s.prompts(), ["Password: "], "{what}");
        let (rc, s) = polkit_auth(&dir, aside, &["not-the-password"]);
        assert_eq!(rc, PAM_AUTH_ERR, "{what}: {:?}", s.seen);
        assert_eq!(s.prompts(), ["Password: "], "{what}");
        assert!(w.outcomes().is_empty(), "{what}");
        let (rc, s) = polkit_auth(&dir, aside, &[PASSWORD]);
        assert_eq!(rc, PAM_SUCCESS, "{what}: {:?}", s.seen);
        assert_eq!(s.prompts(), ["Password: "], "{what}");
        assert_stood_aside(&w, way);
    }
}

// ---------------------------------------------------------------------------------------------
// [login] groups with su

/// `[login] groups` is checked on the user whose factor is asked. With su = "caller" an admin
/// (a caller in the group) is asked root's password and then their own code when they
/// `su -` to root; a caller outside the group, the password only. With su = "target" (the
/// default) the groups are root's, and root is in none: `su -` to root asks no code, as
/// pam_truid.toml(5) and conf/pam.d/su warn.
#[test]
fn su_caller_with_groups_asks_an_admin_their_code_for_root() {
    let (admin, other) = ("truidgr1", "truidgr2");
    let group = "truidadmins";
    let w = World::new();
    for u in [admin, other] {
        ensure_user(u);
    }
    ensure_group_with(group, &[admin]);
    // root's password in the private copy of /etc only.
    set_password("root");
    let (fa, fo) = (w.enroll(admin), w.enroll(other));
    let users = [(admin, fa.as_str()), (other, fo.as_str())];
    w.config(
        &format!("su = \"caller\"\ngroups = [\"{group}\"]\ntries = 1"),
        &users,
    );

    // The admin: root's password, then their own code.
    let s = su_as(&w, admin, true, "root", &[PASSWORD, &w.code(&fa)]);
    assert_logged_in(&s, "root", None);
    assert_eq!(s.prompts, ["Password: ", PROMPT]);
    let ch = w.emu.last_challenges();
    assert!(
        !ch.is_empty() && ch.iter().all(|c| c.factor_id == fa),
        "{ch:?}"
    );
    let lines = w.outcomes();
    assert!(
        lines.len() == 1
            && lines[0].contains("outcome=verified")
            && lines[0].contains("service=\"su-l\""),
        "{lines:?}"
    );
    // Root's password without the admin's code: refused.
    let s = su_as(&w, admin, true, "root", &[PASSWORD, &w.wrong_code(&fa)]);
    assert_refused(&s);
    assert_eq!(s.prompts, ["Password: ", PROMPT]);
    assert_eq!(outcome_lines_with(&w, "outcome=wrong_code").len(), 1);
    // A caller outside the group: root's password only.
    let s = su_as(&w, other, true, "root", &[PASSWORD]);
    assert_logged_in(&s, "root", None);
    assert_eq!(s.prompts, ["Password: "]);
    let lines = w.outcomes();
    assert!(
        lines.len() == 1 && lines[0].contains("outcome=not_required"),
        "{lines:?}"
    );

    // The trap the docs warn of: su = "target" with the same groups checks root's groups.
    w.config(&format!("groups = [\"{group}\"]\ntries = 1"), &users);
    let s = su_as(&w, admin, true, "root", &[PASSWORD]);
    assert_logged_in(&s, "root", None);
    assert_eq!(s.prompts, ["Password: "]);
    let lines = w.outcomes();
    assert!(
        lines.len() == 1 && lines[0].contains("outcome=not_required user=\"root\""),
        "{lines:?}"
    );
}

/// What the real polkit-agent-helper-1 (setuid root, run by `user` as an authentication agent
/// runs it) did with `polkit_1` as /etc/pam.d/polkit-1, in a private mount namespace whose
/// /etc/pam.d is a copy of the host's: the prompts it passed on to the agent, and whether PAM
/// let the user in. With no polkitd to report to (no system D-Bus here), the helper ends in
/// FAILURE either way; PAM's verdict is what it printed before: "pam_authenticate failed" or
/// going on to reach polkitd ("Error getting authority").
fn polkit_helper(w: &World, polkit_1: &str, user: &str, answers: &[&str]) -> (Vec<String>, bool) {
    let dir = w.path("pam.d-with-polkit-1");
    if !dir.exists() {
        run_ok(Command::new("cp").arg("-a").arg("/etc/pam.d").arg(&dir));
    }
    std::fs::write(dir.join("polkit-1"), polkit_1).unwrap();
    let helper = "/usr/lib/polkit-1/polkit-agent-helper-1";
    // The agent's protocol: the cookie first, then one line per answer.
    let mut stdin = String::from("truid-test-cookie\n");
    for a in answers {
        stdin.push_str(a);
        stdin.push('\n');
    }
    let argv = ["runuser", "-u", user, "--", helper, user];
    let (_, out, err) = run_piped(in_namespace(&[(&dir, "/etc/pam.d")], &argv), &stdin);
    let prompts = out
        .lines()
        .filter_map(|l| l.strip_prefix("PAM_PROMPT_ECHO_OFF "))
        .map(|p| p.to_string())
        .collect();
    let refused = err.contains("pam_authenticate failed") || err.contains("pam_acct_mgmt failed");
    let passed = err.contains("Error getting authority") || out.lines().any(|l| l == "SUCCESS");
    assert!(
        refused != passed,
        "{helper}: neither verdict:\n{out}\n{err}"
    );
    (prompts, passed)
}

/// The same through the real setuid polkit-agent-helper-1: Debian's polkit-1 lets an enrolled
/// user through on the password alone; conf/pam.d/polkit-1 asks the password, then the code,
/// and refuses a wrong code; a user the module stands aside for gives the password only.
#[test]
fn polkit_helper_asks_the_code_with_the_shipped_stack() {
    let (enrolled, aside) = ("truidpl3", "truidpl4");
    let w = World::new();
    let (fe, fa) = enrolled_and_aside(&w, enrolled, aside);
    let debian = std::fs::read_to_string("/usr/lib/pam.d/polkit-1")
        .expect("/usr/lib/pam.d/polkit-1: install polkitd (tests/setup.sh does)");
    let shipped = std::fs::read_to_string(snippet_stack(&w, "polkit-1")).unwrap();

    let (prompts, passed) = polkit_helper(&w, &debian, enrolled, &[PASSWORD]);
    assert!(passed && prompts == ["Password: "], "{prompts:?}");
    assert!(w.outcomes().is_empty());

    let (prompts, passed) = polkit_helper(&w, &shipped, enrolled, &[PASSWORD, &w.code(&fe)]);
    assert!(passed && prompts == ["Password: ", PROMPT], "{prompts:?}");
    assert!(w.outcomes()[0].contains("outcome=verified"));
    let bad = w.wrong_code(&fe);
    let (prompts, passed) = polkit_helper(&w, &shipped, enrolled, &[PASSWORD, &bad, &bad, &bad]);
    assert!(!passed && prompts.len() == 4, "{prompts:?}");
    assert!(w.outcomes()[0].contains("outcome=wrong_code"));

    stand_aside_config(&w, STAND_ASIDE[0], aside, &fa);
    let (prompts, passed) = polkit_helper(&w, &shipped, aside, &["not-the-password"]);
    assert!(!passed && prompts == ["Password: "], "{prompts:?}");
    let (prompts, passed) = polkit_helper(&w, &shipped, aside, &[PASSWORD]);
    assert!(passed && prompts == ["Password: "], "{prompts:?}");
    assert_stood_aside(&w, STAND_ASIDE[0]);
}

/// The ticket `sudo -i` leaves: one shell runs `sudo -S -i true` with the password, then
/// `sudo -n id -un` (no prompt allowed), with sudo's own timestamp_timeout (15 minutes on
/// Debian) and a private ticket folder over /run/sudo/ts. With the host's sudo-i the first run
/// is root on the password and the second rides its ticket without the code; with the shipped
/// sudo-i the first is refused and the second has no ticket.
#[test]
fn sudo_login_shell_ticket_needs_the_code_too() {
    let u = "truidsi3";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    w.config("", &[(u, &f)]);
    let d = w.path("sudoers.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (sudo, sudo_i) = (snippet_stack(&w, "sudo"), snippet_stack(&w, "sudo-i"));
    let script = "sudo -S -i true; echo first=$?; sudo -n id -un; echo second=$?";
    for shipped in [false, true] {
        // A fresh, empty ticket folder each time (sudo wants it root's, 0700).
        let ts = w.path(&format!("sudo-ts-{shipped}"));
        std::fs::create_dir(&ts).unwrap();
        std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o700)).unwrap();
        let rule = d.join("pam_truid_test");
        let _ = std::fs::remove_file(&rule);
        std::fs::write(
            &rule,
            format!(
                "Defaults:{u} passwd_tries=1, lecture=never, timestampdir={}\n\
                 {u} ALL=(ALL:ALL) ALL\n",
                ts.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&rule, std::fs::Permissions::from_mode(0o440)).unwrap();
        let mut binds: Vec<(&Path, &str)> =
            vec![(&sudo, "/etc/pam.d/sudo"), (&d, "/etc/sudoers.d")];
        if shipped {
            binds.push((&sudo_i, "/etc/pam.d/sudo-i"));
        }
        let argv = ["runuser", "-u", u, "--", "sh", "-c", script];
        let (_, out, err) = run_piped(in_namespace(&binds, &argv), &format!("{PASSWORD}\n"));
        let lines: Vec<&str> = out.lines().collect();
        if shipped {
            // Refused (the password is not a code), and no ticket for the second.
            assert_eq!(lines, ["first=1", "second=1"], "shipped sudo-i: {err}");
            assert!(err.contains(PROMPT), "{err}");
        } else {
            // The hole: root on the password, then root again without anything typed.
            assert_eq!(lines, ["first=0", "root", "second=0"], "{err}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// failmode = "safe" in a process its caller controls (issue 14, item 1): su and sudo keep the
// caller's real uid, so the caller may stop them and set their rlimits. Neither may turn a
// wrong code into a login.

/// `[api] timeout` of these tests, short so that a stop outlasts it quickly.
const FM_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the shipped stack asks the password before the code, so answers start with it.
fn password_first(service: &str) -> bool {
    let mut before = String::new();
    for line in conf(&format!("pam.d/{service}"))
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        if line.split_whitespace().any(|t| t == "pam_truid.so") {
            break;
        }
        before.push_str(line);
    }
    before.contains("common-auth") || before.contains("pam_unix")
}

/// The config for these tests: `failmode = "safe"`, one try, `users`, and the agent's socket
/// when one is given.
fn fm_config(w: &World, agent: Option<&Path>, users: &[(&str, &str)]) {
    let mut text = w.api_table().replace(
        "timeout = 5",
        &format!("timeout = {}", FM_TIMEOUT.as_secs()),
    );
    if let Some(sock) = agent {
        text = text.replace("agent = \"\"", &format!("agent = \"{}\"", sock.display()));
    }
    text.push_str("\n[login]\nfailmode = \"safe\"\ntries = 1\n\n[users]\n");
    for (u, f) in users {
        text.push_str(&format!("{u} = \"{f}\"\n"));
    }
    w.write_config(&text);
}

/// `truid-pam agent` as a real process, killed by its PID when dropped.
struct FmAgent {
    child: Child,
    /// Its stdout, kept open so that its later lines do not fail.
    _out: Option<std::io::BufReader<std::process::ChildStdout>>,
}

impl Drop for FmAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the agent on `socket` and waits for its ready line (no sleeping).
fn fm_agent(socket: &Path) -> FmAgent {
    use std::io::BufRead;
    let child = Command::new(env!("CARGO_BIN_EXE_truid-pam"))
        .args(["agent", "--workers", "4", "--socket"])
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Guarded from here: a failed wait below still kills it.
    let mut agent = FmAgent { child, _out: None };
    let mut out = std::io::BufReader::new(agent.child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the agent never said it listens"
        );
    }
    agent._out = Some(out);
    agent
}

fn uid_of(name: &str) -> u32 {
    nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}

/// PIDs of the processes named `comm` whose real uid is `uid`.
fn pids_of(comm: &str, uid: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
        if name.trim() == comm && real_uid == Some(uid) {
            pids.push(pid);
        }
    }
    pids
}

/// `caller` signals `pid` with kill(1) run as `caller`: the kernel decides that it may.
fn kill_as(caller: &str, signal: &str, pid: i32) {
    let st = Command::new("runuser")
        .args([
            "-u",
            caller,
            "--",
            "kill",
            &format!("-{signal}"),
            &pid.to_string(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "{caller} could not send SIG{signal} to {pid}");
}

/// Once the emulator has seen a request on `route` (beyond `before`, and held it: a latency
/// fault), `caller` stops its process `comm` for longer than `[api] timeout`, then continues
/// it. False if no such request came.
fn stop_during(w: &World, route: &str, before: u64, comm: &str, caller: &str) -> bool {
    let deadline = Instant::now() + LOGIN_DEADLINE;
    while w.emu.stats().requests.get(route).copied().unwrap_or(0) <= before {
        if Instant::now() > deadline {
            return false;
        }
        // Bounded polling of the emulator's state.
        std::thread::sleep(Duration::from_millis(5));
    }
    let pids = pids_of(comm, uid_of(caller));
    assert_eq!(pids.len(), 1, "{comm} of {caller}: {pids:?}");
    // runuser, the test's stand-in for the caller's shell, stops itself when its child stops
    // (su's job control): it is continued after, as a shell's `fg` would. Not the attack.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    let parent: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    kill_as(caller, "STOP", pids[0]);
    // The attack itself: the process stays stopped past its deadline.
    std::thread::sleep(FM_TIMEOUT + Duration::from_secs(1));
    kill_as(caller, "CONT", pids[0]);
    unsafe {
        libc::kill(parent, libc::SIGCONT);
    }
    true
}

/// The one outcome line of an attack: not let in, and it says why `safe` did not apply.
/// Returns the line (the log listener hands each line out once).
fn assert_safe_did_not_apply(w: &World) -> String {
    safe_did_not_apply(&w.outcomes())
}

fn safe_did_not_apply(lines: &[String]) -> String {
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        !lines[0].contains("outcome=unavailable_allowed") && !lines[0].contains("outcome=verified"),
        "{lines:?}"
    );
    assert!(
        lines[0].contains("outcome=unavailable_denied")
            && (lines[0].contains("does not apply") || lines[0].contains("no failmode")),
        "{lines:?}"
    );
    eprintln!("{}", lines[0]);
    lines[0].clone()
}

/// The slow call the stop lands in: creating the challenge takes 1.5 s of the 2 s.
fn slow_create(w: &World) -> u64 {
    w.emu.set_fault(Fault {
        route: Route::ChallengeCreate,
        kind: FaultKind::Latency(Duration::from_millis(1500)),
        times: None,
    });
    w.emu
        .stats()
        .requests
        .get("challenge_create")
        .copied()
        .unwrap_or(0)
}

fn su_stopped_by_its_caller(caller: &str, target: &str, via_agent: bool) {
    let w = World::new();
    ensure_user(caller);
    ensure_user(target);
    set_password(target);
    let ft = w.enroll(target);
    let sock = w.path("agent").join("agent.sock");
    let _agent = via_agent.then(|| fm_agent(&sock));
    fm_config(&w, via_agent.then_some(sock.as_path()), &[(target, &ft)]);
    let before = slow_create(&w);
    let wrong = w.wrong_code(&ft);
    let answers: Vec<&str> = if password_first("su") {
        vec![PASSWORD, &wrong]
    } else {
        vec![&wrong]
    };
    let s = std::thread::scope(|sc| {
        let stopper = sc.spawn(|| stop_during(&w, "challenge_create", before, "su", caller));
        let s = su_as(&w, caller, false, target, &answers);
        assert!(stopper.join().unwrap(), "su never asked for a challenge");
        s
    });
    assert_refused(&s);
    assert_ne!(s.output_lines().last(), Some(&target), "{s:#?}");
    // The stop landed before the code went out: the reason is who controls su.
    let line = assert_safe_did_not_apply(&w);
    // Through the agent, the stop shows as the agent giving no answer in time.
    assert!(
        line.contains("so a local user could cause this failure")
            || line.contains("which a local user can cause"),
        "{line}"
    );
}

#[test]
fn su_stopped_by_its_caller_past_the_timeout_is_refused_under_safe() {
    su_stopped_by_its_caller("truidfma", "truidfmb", false);
}

#[test]
fn su_stopped_by_its_caller_through_the_agent_is_refused_under_safe() {
    su_stopped_by_its_caller("truidfmc", "truidfmd", true);
}

#[test]
fn sudo_stopped_by_its_caller_past_the_timeout_is_refused_under_safe() {
    let user = "truidfme";
    let w = World::new();
    ensure_user(user);
    set_password(user);
    let f = w.enroll(user);
    fm_config(&w, None, &[(user, &f)]);
    sudoers(&w, &[user]);
    let before = slow_create(&w);
    let wrong = w.wrong_code(&f);
    let stdin = if password_first("sudo") {
        format!("{PASSWORD}\n{wrong}\n")
    } else {
        format!("{wrong}\n")
    };
    let (ok, out, err) = std::thread::scope(|sc| {
        let stopper = sc.spawn(|| stop_during(&w, "challenge_create", before, "sudo", user));
        let r = sudo_as(&w, user, &stdin);
        assert!(stopper.join().unwrap(), "sudo never asked for a challenge");
        r
    });
    assert!(!ok && out.trim().is_empty(), "{out}\n{err}");
    assert_safe_did_not_apply(&w);
}

/// `ulimit -n N` set by the caller before su: the module's connection cannot be made.
#[test]
fn su_with_too_few_descriptors_is_refused_under_safe() {
    let (caller, target) = ("truidfmf", "truidfmg");
    let w = World::new();
    ensure_user(caller);
    ensure_user(target);
    set_password(target);
    let ft = w.enroll(target);
    fm_config(&w, None, &[(target, &ft)]);
    let stack = snippet_stack(&w, "su");
    let wrong = w.wrong_code(&ft);
    let answers: Vec<&str> = if password_first("su") {
        vec![PASSWORD, &wrong]
    } else {
        vec![&wrong]
    };
    let script = format!("ulimit -n {FM_FDS} && exec su {target} -c 'id -un'");
    let argv = ["runuser", "-u", caller, "--", "sh", "-c", script.as_str()];
    let s = Pty::spawn(in_namespace(&[(&stack, "/etc/pam.d/su")], &argv)).converse(&answers);
    assert_refused(&s);
    assert_ne!(s.output_lines().last(), Some(&target), "{s:#?}");
    // Where the descriptors run out decides the words: at the connection (no failmode lets
    // it in), or already at the CA file (a local setup failure, refused): never an outage.
    let lines = w.outcomes();
    let at_ca_file = lines.len() == 1
        && lines[0].contains("outcome=refused")
        && lines[0].contains("Too many open files");
    if !at_ca_file {
        safe_did_not_apply(&lines);
    }
}

/// The fewest descriptors with which su still reaches the module's call to tru.ID.
const FM_FDS: u32 = 6;

/// The caller of su chooses su's environment, and Rust's standard library sizes every thread
/// it starts by `RUST_MIN_STACK`. With `RUST_MIN_STACK=16384` su dies of SIGSEGV before any
/// verdict or log line: now in the module's thread of the calls made ahead (issue 15), which
/// runs the direct client library's call; before that change already in reqwest's own thread
/// (`reqwest-internal-sync-runtime`) of the same library. Through the agent it holds. A wrong
/// code must end as a wrong code, logged, with su alive to say so.
fn su_with_a_small_rust_min_stack(caller: &str, target: &str) {
    let w = World::new();
    ensure_user(caller);
    ensure_user(target);
    set_password(target);
    let ft = w.enroll(target);
    fm_config(&w, None, &[(target, &ft)]);
    let stack = snippet_stack(&w, "su");
    let wrong = w.wrong_code(&ft);
    let answers: Vec<&str> = if password_first("su") {
        vec![PASSWORD, &wrong]
    } else {
        vec![&wrong]
    };
    let script = format!("export RUST_MIN_STACK=16384 && exec su {target} -c 'id -un'");
    let argv = ["runuser", "-u", caller, "--", "sh", "-c", script.as_str()];
    let s = Pty::spawn(in_namespace(&[(&stack, "/etc/pam.d/su")], &argv)).converse(&answers);
    assert_refused(&s);
    let lines = w.outcomes();
    assert!(
        !s.output_lines()
            .iter()
            .any(|l| l.contains("Segmentation fault")),
        "su crashed: {:?} {lines:?}",
        s.output_lines()
    );
    assert!(
        lines.len() == 1 && lines[0].contains("outcome=wrong_code"),
        "{:?} {lines:?}",
        s.output_lines()
    );
}

#[test]
fn su_with_a_small_rust_min_stack_does_not_crash() {
    su_with_a_small_rust_min_stack("truidfmh", "truidfmi");
}
