//! Second-round red-team tests of the agent's public socket and of enrolment without the
//! administrator (issue #17), against main b277661: the round-1 fixes (tests/attack_agent.rs)
//! and what round 1 did not cover. Two attacks worked there and their tests failed: a caller
//! who gave up at the last prompt skipped the wait after its wrong codes, and a padded rhost
//! pushed the agent's via="agent" marker past 1024 bytes. The other test asserts a defence
//! that held.
//!
//! Real parts only: the real agent binary (tests/common/daemon.rs), real NSS users and real
//! pam_unix (tests/private-host.sh), real libpam, the emulator; a raw caller of the public
//! socket is socat run with the user's uid, so the agent's SO_PEERCRED sees that uid.
//! Run: `tests/private-host.sh cargo test --test attack_agent2`

#[allow(unused_imports)]
mod common;
use common::logins::*;
use common::services::*;
use common::*;

use std::process::Command;
use std::time::{Duration, Instant};

fn login_request(user: &str, service: &str, rhost: Option<&str>, tty: Option<&str>) -> String {
    serde_json::json!({
        "v": 3,
        "service": {"op": "login", "user": user, "service": service, "tty": tty, "rhost": rhost, "combined": false}
    })
    .to_string()
}

/// The agent's wait after a wrong guess (`WRONG_GUESS_WAIT`, 2 s) comes only when a login
/// ends as a wrong guess (`Outcome::is_a_wrong_guess`). A caller that answers two prompts with
/// wrong codes and then answers the third with `no_answer` ends as `conversation_error`
/// (tries=2): no wait, and its next request starts at once. So one uid's guesses cost only
/// tru.ID's round trips, not the 2 s SECURITY.md promises ("It costs the caller 2 s per wrong
/// guess, one request at a time per uid"), and a local user burns the project's tru.ID rate
/// limit (shared by every host of the project; a 429 denies every login under every failmode)
/// as fast as the agent can send.
#[test]
fn wrong_guesses_cost_their_wait_even_when_the_caller_gives_up() {
    let user = "truidab1";
    ensure_user(user);
    let w = World::new();
    let f = w.enroll(user);
    let cfg = w.config("", &[(user, f.as_str())]);
    let a = agent(&w, &cfg);
    let wrong = w.wrong_code(&f);
    let requests = 4;
    let started = Instant::now();
    for _ in 0..requests {
        let mut c = Caller::connect(uid_of(user), &a.public);
        c.send(&login_request(user, "truid-locker", None, None));
        let mut answered = 0;
        let mut done = None;
        while let Some(v) = c.next() {
            if v.get("prompt_secret").is_some() {
                if answered < 2 {
                    c.send(&serde_json::json!({ "answer": wrong }).to_string());
                    answered += 1;
                } else {
                    c.send(&serde_json::json!({ "no_answer": "gave up" }).to_string());
                }
            }
            if let Some(d) = v.get("done") {
                done = Some(d.clone());
                break;
            }
        }
        assert_eq!(answered, 2, "{done:?}");
        assert!(
            done.as_ref().is_some_and(|d| d.get("verified").is_none()),
            "{done:?}"
        );
    }
    let took = started.elapsed();
    let guesses = w.emu.stats().verification_attempts;
    assert_eq!(guesses, 2 * requests, "every wrong code reached tru.ID");
    // What should be: each request that sent a wrong code waited 2 s before its answer.
    assert!(
        took >= Duration::from_secs(2 * requests),
        "{guesses} wrong guesses in {requests} requests took {took:?}, under the 2 s per \
         request the agent waits after a wrong guess: {:?}",
        w.outcomes()
    );
}

/// The agent's outcome line is marked ` via="agent" caller_uid=N` at its END, after the
/// service, rhost and tty the caller made up. A caller pads its rhost after a real-looking
/// address with characters that `sanitize` escapes to 9 bytes each (`\u{e0020}`): the line
/// grows past 1024 bytes, the length RFC 3164 allows a syslog message and at which syslog
/// relays and collectors cut, so what arrives there is
/// `pam_truid[PID]: outcome=wrong_code user="..." service="sshd" rhost="203.0.113.77\u{e0020}...`
/// with no marker: the round-1 forgery (an SSH login from any address, in root's log) again,
/// wherever the line is cut.
#[test]
fn the_agents_marker_comes_before_anything_the_caller_wrote() {
    let user = "truidab2";
    ensure_user(user);
    let w = World::new();
    let f = w.enroll(user);
    let cfg = w.config("tries = 1", &[(user, f.as_str())]);
    let a = agent(&w, &cfg);
    let rhost = format!("203.0.113.77{}", "\u{e0020}".repeat(116));
    let mut c = Caller::connect(uid_of(user), &a.public);
    c.send(&login_request(user, "sshd", Some(&rhost), Some("ssh")));
    let wrong = w.wrong_code(&f);
    while let Some(v) = c.next() {
        if v.get("prompt_secret").is_some() {
            c.send(&serde_json::json!({ "answer": wrong }).to_string());
        }
        if v.get("done").is_some() {
            break;
        }
    }
    let lines = w.outcomes();
    let line = lines
        .iter()
        .find(|l| l.contains("rhost=\"203.0.113.77"))
        .unwrap_or_else(|| panic!("no outcome line: {lines:?}"));
    assert!(line.contains("via=\"agent\""), "{line}");
    // The datagram as sent, header included: what a relay keeping 1024 bytes keeps.
    let kept = &line.as_bytes()[..line.len().min(1024)];
    let kept = String::from_utf8_lossy(kept);
    assert!(
        kept.contains(" service=\"sshd\" rhost=\"203.0.113.77"),
        "the forged part is first: {kept}"
    );
    assert!(
        kept.contains("via=\"agent\""),
        "the agent's line is {} bytes; its first 1024 read as a real sshd login: {kept}",
        line.len()
    );
}

/// Held: first-login enrolment behind Debian's common-auth with the pam-auth-update profile's
/// line (`auth requisite pam_truid.so` in the Additional block): a wrong password ends the
/// stack at pam_deny; an account without a password (`passwd -d`, pam_unix `nullok` lets it in
/// without asking, so no PAM_AUTHTOK) is denied as under `deny`; a locked account (`usermod
/// -L`) fails at pam_unix even with its right password. None of them is offered enrolment; the
/// right password of an unlocked account is (the control).
#[test]
fn no_enrolment_without_the_accounts_right_password() {
    let user = "truidab3";
    ensure_user(user);
    let w = World::new();
    w.write_config(&format!(
        "{}\n[login]\nunenrolled = \"enroll\"\ntries = 1\n",
        w.api_table()
    ));
    // /etc/pam.d/common-auth as pam-auth-update writes it with packaging/pam-configs/truid.
    w.stack(
        "auth [success=1 default=ignore] pam_unix.so nullok\n\
         auth requisite pam_deny.so\n\
         auth required pam_permit.so\n\
         auth requisite {module} {args}\n",
    );
    let offered = |s: &Script| {
        s.seen
            .contains(&Seen::Info(pam_truid::enrolment::MSG_START.into()))
    };
    let run = |what: &str, answers: &[&str]| {
        let (rc, s) = w.login(user, answers);
        assert_ne!(rc, PAM_SUCCESS, "{what}: {:?}", s.seen);
        (offered(&s), s.seen)
    };
    let sh = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };

    set_password(user);
    let (o, seen) = run("a wrong password", &["not-the-password", "x", "x"]);
    assert!(!o, "a wrong password was offered enrolment: {seen:?}");
    assert!(
        w.outcomes().is_empty(),
        "the module ran: {:?}",
        w.outcomes()
    );

    sh(&["usermod", "-L", user]);
    let (o, seen) = run("a locked account", &[PASSWORD, "x", "x"]);
    assert!(!o, "a locked account was offered enrolment: {seen:?}");
    sh(&["usermod", "-U", user]);

    sh(&["passwd", "-d", user]);
    let (o, seen) = run("an account without a password", &["", "x", "x"]);
    assert!(
        !o,
        "a password-less account was offered enrolment: {seen:?}"
    );
    let lines = w.outcomes();
    assert!(
        lines.len() == 1 && lines[0].contains("outcome=not_enrolled_denied"),
        "{lines:?}"
    );

    // The control: the right password is offered enrolment (no phone given: denied).
    set_password(user);
    let (o, seen) = run(
        "the right password",
        &[PASSWORD, "no phone", "no phone", "no phone"],
    );
    assert!(o, "the right password was not offered enrolment: {seen:?}");
    assert_eq!(w.emu.stats().requests.get("factor_create"), None);
}
