//! The outcomes table of the module, through real libpam (`pam_start_confdir`) loading the
//! built `libpam_truid.so`, against the emulator over TLS.

#[allow(unused_imports)] // common re-exports what other test files use
mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const PROMPT: &str = "tru.ID code: ";

#[test]
fn right_code_logs_in_and_logs_one_line() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config("", &[("alice", &f)]);
    w.module_stack();
    let (rc, s) = w.login("alice", &[&w.code(&f)]);
    assert_eq!(rc, PAM_SUCCESS);
    assert_eq!(s.seen, [Seen::Prompt(PROMPT.into())]);
    let lines = w.outcomes();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(
            "outcome=verified user=\"alice\" service=\"svc\" rhost=\"198.51.100.9\" tty=\"\" tries=1"
        ),
        "{}",
        lines[0]
    );
    // authpriv.info: <86>
    assert!(lines[0].starts_with("<86>"), "{}", lines[0]);
    // The challenge carries service, remote host and user for the console.
    let ch = w.emu.last_challenges();
    assert_eq!(ch.len(), 1);
    let r = ch[0].reference_id.clone().unwrap_or_default();
    assert!(r.starts_with("pam_truid/svc/198.51.100.9/alice/"), "{r}");
}

#[test]
fn configured_prompt_is_the_one_shown() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config(
        "prompt = \"Authenticator code for example.org: \"",
        &[("alice", &f)],
    );
    w.module_stack();
    let (rc, s) = w.login("alice", &[&w.code(&f)]);
    assert_eq!(rc, PAM_SUCCESS);
    assert_eq!(s.prompts(), ["Authenticator code for example.org: "]);
}

#[test]
fn wrong_codes_use_up_tries_and_each_try_has_its_own_challenge() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config("tries = 2", &[("alice", &f)]);
    w.module_stack();
    let wrong = w.wrong_code(&f);
    let wrong = wrong.as_str();
    let (rc, s) = w.login("alice", &[wrong, wrong]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(s.prompts(), [PROMPT, PROMPT]);
    assert!(s
        .seen
        .contains(&Seen::Error("Wrong code, try again.".into())));
    assert_eq!(w.emu.stats().challenges_created, 2);
    let lines = w.outcomes();
    assert!(
        lines[0].contains("outcome=wrong_code") && lines[0].contains("tries=2"),
        "{lines:?}"
    );
}

#[test]
fn wrong_then_right_within_tries() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config("", &[("alice", &f)]);
    w.module_stack();
    let right = w.code(&f);
    let wrong = w.wrong_code(&f);
    let wrong = wrong.as_str();
    let (rc, _) = w.login("alice", &[wrong, "12ab", &right]);
    assert_eq!(rc, PAM_SUCCESS);
    // The malformed try reused its challenge: two challenges for three tries.
    assert_eq!(w.emu.stats().challenges_created, 2);
    assert!(w.outcomes()[0].contains("tries=3"));
}

#[test]
fn a_code_is_spent_once() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config("tries = 1", &[("alice", &f)]);
    w.module_stack();
    let code = w.code(&f);
    assert_eq!(w.login("alice", &[&code]).0, PAM_SUCCESS);
    assert_eq!(w.login("alice", &[&code]).0, PAM_AUTH_ERR);
}

#[test]
fn unenrolled_deny_prompts_then_refuses_without_asking_tru_id() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config("", &[("alice", &f)]);
    w.module_stack();
    let (rc, s) = w.login("mallory", &["123456", "123456", "123456"]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(s.prompts(), [PROMPT, PROMPT, PROMPT]);
    assert_eq!(w.emu.stats().tokens_issued, 0);
    assert!(w.outcomes()[0].contains("outcome=not_enrolled_denied user=\"mallory\""));
}

#[test]
fn unenrolled_ignore_stands_aside() {
    let w = World::new();
    w.config("unenrolled = \"ignore\"", &[]);
    // Module first, then pam_deny: PAM_IGNORE lets pam_deny decide; PAM_SUCCESS would not.
    w.stack("auth sufficient {module} {args}\nauth required pam_deny.so\n");
    let (rc, s) = w.login("bob", &[]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(s.seen.is_empty());
    w.stack("auth required {module} {args}\nauth required pam_permit.so\n");
    let (rc, _) = w.login("bob", &[]);
    assert_eq!(rc, PAM_SUCCESS);
    assert!(w
        .outcomes()
        .iter()
        .all(|l| l.contains("outcome=not_enrolled_ignored")));
}

#[test]
fn lookup_finds_the_factor_at_tru_id() {
    let w = World::new();
    let f = w.enroll("carol");
    w.config("lookup = true", &[]);
    w.module_stack();
    let (rc, _) = w.login("carol", &[&w.code(&f)]);
    assert_eq!(rc, PAM_SUCCESS);
    let (rc, _) = w.login("dave", &["123456", "123456", "123456"]);
    assert_eq!(rc, PAM_AUTH_ERR);
}

#[test]
fn token_is_cached_between_logins_and_refreshed_when_refused() {
    let w = World::new();
    let users: Vec<(String, String)> = ["u1", "u2", "u3"]
        .iter()
        .map(|u| (u.to_string(), w.enroll(u)))
        .collect();
    let pairs: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, f)| (u.as_str(), f.as_str()))
        .collect();
    w.config("", &pairs);
    w.module_stack();
    for (u, f) in &users[..2] {
        assert_eq!(w.login(u, &[&w.code(f)]).0, PAM_SUCCESS);
    }
    assert_eq!(w.emu.stats().tokens_issued, 1, "two logins, one token");
    let cached = std::fs::read_dir(w.path("cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        cached.metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
    w.emu.revoke_tokens();
    let (u, f) = &users[2];
    assert_eq!(w.login(u, &[&w.code(f)]).0, PAM_SUCCESS);
    assert_eq!(
        w.emu.stats().tokens_issued,
        2,
        "refused token refreshed once"
    );
}

#[test]
fn tru_id_down_follows_failmode() {
    for (failmode, expect, outcome) in [
        ("secure", PAM_AUTHINFO_UNAVAIL, "outcome=unavailable_denied"),
        ("safe", PAM_SUCCESS, "outcome=unavailable_allowed"),
    ] {
        let w = World::new();
        let f = w.enroll("alice");
        // A port nothing listens on: connection refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let text = w
            .api_table()
            .replace(&w.emu.info().base_url, &format!("https://{closed}"));
        w.write_config(&format!(
            "{text}\n[login]\nfailmode = \"{failmode}\"\n[users]\nalice = \"{f}\"\n"
        ));
        w.module_stack();
        // Prompt first: the code is asked before tru.ID is, for every user alike.
        let (rc, s) = w.login("alice", &[&w.code(&f)]);
        assert_eq!(rc, expect, "{failmode}");
        assert_eq!(s.prompts(), ["tru.ID code: "]);
        let lines = w.outcomes();
        assert!(
            lines[0].contains(outcome) && lines[0].contains("cannot connect"),
            "{lines:?}"
        );
        if failmode == "safe" {
            // authpriv.crit: <82>
            assert!(
                lines[0].starts_with("<82>")
                    && lines[0].contains("LOGIN ALLOWED WITHOUT SECOND FACTOR"),
                "{lines:?}"
            );
        }
    }
}

#[test]
fn server_errors_on_each_call_follow_failmode_and_wrong_codes_never_do() {
    for route in [Route::Token, Route::ChallengeCreate, Route::ChallengeVerify] {
        // Before the code (token, create) safe lets in; once the code went out, nothing does.
        let safe = if route == Route::ChallengeVerify {
            PAM_AUTHINFO_UNAVAIL
        } else {
            PAM_SUCCESS
        };
        for (failmode, expect) in [("secure", PAM_AUTHINFO_UNAVAIL), ("safe", safe)] {
            let w = World::new();
            let f = w.enroll("alice");
            w.config(&format!("failmode = \"{failmode}\""), &[("alice", &f)]);
            w.module_stack();
            w.emu.set_fault(Fault {
                route,
                kind: FaultKind::Status(503),
                times: None,
            });
            let (rc, _) = w.login("alice", &["000000"]);
            assert_eq!(rc, expect, "{route:?} {failmode}");
            assert!(w.outcomes()[0].contains("HTTP 503"), "{:?}", w.outcomes());
        }
    }
    // A wrong code with failmode = "safe" is a wrong code.
    let w = World::new();
    let f = w.enroll("alice");
    w.config("failmode = \"safe\"\ntries = 1", &[("alice", &f)]);
    w.module_stack();
    let wrong = w.wrong_code(&f);
    let wrong = wrong.as_str();
    assert_eq!(w.login("alice", &[wrong]).0, PAM_AUTH_ERR);
}

#[test]
fn a_hanging_server_is_cut_at_the_timeout() {
    let w = World::new();
    let f = w.enroll("alice");
    let text = w.api_table().replace("timeout = 5", "timeout = 2");
    w.write_config(&format!(
        "{text}\n[login]\nfailmode = \"secure\"\n[users]\nalice = \"{f}\"\n"
    ));
    w.module_stack();
    w.emu.set_fault(Fault {
        route: Route::ChallengeCreate,
        kind: FaultKind::Hang,
        times: None,
    });
    let ((rc, _), took) = timed(|| w.login("alice", &[&w.code(&f)]));
    assert_eq!(rc, PAM_AUTHINFO_UNAVAIL);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    assert!(w.outcomes()[0].contains("no answer within [api] timeout (2 s)"));
}

#[test]
fn config_errors_deny_whatever_failmode() {
    let w = World::new();
    let f = w.enroll("alice");
    w.module_stack();
    let good = format!(
        "{}\n[login]\nfailmode = \"safe\"\n[users]\nalice = \"{f}\"\n",
        w.api_table()
    );
    let cfg = w.path("pam_truid.toml");
    type Breaker = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "missing",
            Box::new(|p| std::fs::remove_file(p).unwrap()),
            "does not exist",
        ),
        (
            "group-writable",
            Box::new(|p| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o620)).unwrap()
            }),
            "writable by group or others",
        ),
        (
            "secret readable",
            Box::new(|p| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap()
            }),
            "readable by group or others",
        ),
        (
            "not root's",
            Box::new(|p| {
                nix::unistd::chown(p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap()
            }),
            "not root",
        ),
        (
            "unknown key",
            Box::new(|p| {
                let t = std::fs::read_to_string(p).unwrap();
                std::fs::write(p, t.replace("[login]", "[login]\nfailmod = \"secure\"")).unwrap()
            }),
            "failmod",
        ),
        (
            "bad value",
            Box::new(|p| {
                let t = std::fs::read_to_string(p).unwrap();
                std::fs::write(p, t.replace("failmode = \"safe\"", "failmode = \"sure\"")).unwrap()
            }),
            "failmode",
        ),
        (
            "symlink",
            Box::new(|p| {
                let real = p.with_extension("real");
                std::fs::rename(p, &real).unwrap();
                std::os::unix::fs::symlink(&real, p).unwrap()
            }),
            "symbolic link",
        ),
        (
            "invalid UTF-8",
            Box::new(|p| std::fs::write(p, b"[api]\nclient_id = \"\xff\"\n").unwrap()),
            "UTF-8",
        ),
        (
            "huge",
            Box::new(|p| std::fs::write(p, vec![b'#'; 3 * 1024 * 1024]).unwrap()),
            "bytes",
        ),
    ];
    for (name, breaker, expect) in cases {
        w.write_config(&good);
        let _ = std::fs::remove_file(cfg.with_extension("real"));
        breaker(&cfg);
        let (rc, s) = w.login("alice", &[]);
        assert_eq!(rc, PAM_SERVICE_ERR, "{name}");
        assert!(s.seen.is_empty(), "{name}: {:?}", s.seen);
        let lines = w.outcomes();
        assert!(
            lines.len() == 1
                && lines[0].contains("outcome=config_error")
                && lines[0].contains(expect),
            "{name}: {lines:?}"
        );
    }
    assert_eq!(w.emu.stats().tokens_issued, 0);
}

#[test]
fn a_bad_module_argument_denies() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config("failmode = \"safe\"", &[("alice", &f)]);
    w.stack("auth required {module} {args} confg=/etc/x\n");
    let (rc, _) = w.login("alice", &[]);
    assert_eq!(rc, PAM_SERVICE_ERR);
    assert!(w.outcomes()[0].contains("unknown module argument"));
}

#[test]
fn a_broken_conversation_is_a_conversation_error() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config("failmode = \"safe\"", &[("alice", &f)]);
    w.module_stack();
    let mut s = Script {
        broken: true,
        ..Default::default()
    };
    let rc = pam_login(&w.path("pam.d"), "svc", "alice", &Items::default(), &mut s);
    assert_eq!(rc, PAM_CONV_ERR);
    assert!(w.outcomes()[0].contains("outcome=conversation_error"));
}

#[test]
fn a_display_manager_conversation_works() {
    // GDM and LightDM answer PAM_PROMPT_ECHO_OFF and show TEXT_INFO/ERROR_MSG, nothing else,
    // and there is no terminal.
    let w = World::new();
    let f = w.enroll("alice");
    w.config("", &[("alice", &f)]);
    w.module_stack();
    let wrong = w.wrong_code(&f);
    let wrong = wrong.as_str();
    std::fs::copy(w.path("pam.d/svc"), w.path("pam.d/gdm-password")).unwrap();
    let mut s = Script::answering(&[wrong, &w.code(&f)]);
    s.echo_off_only = true;
    let rc = pam_login(
        &w.path("pam.d"),
        "gdm-password",
        "alice",
        &Items {
            tty: Some(":0".into()),
            ..Default::default()
        },
        &mut s,
    );
    assert_eq!(rc, PAM_SUCCESS, "{:?}", s.seen);
    assert!(s.seen.iter().all(|m| !matches!(m, Seen::EchoOnPrompt(_))));
}

#[test]
fn hostile_pam_items_are_logged_escaped() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config("", &[("alice", &f)]);
    w.module_stack();
    let mut s = Script::answering(&[&w.code(&f)]);
    let rhost = "evil\n<86>pam_truid: outcome=verified user=\"root\"\x1b[2J;$(reboot)";
    let rc = pam_login(
        &w.path("pam.d"),
        "svc",
        "alice",
        &Items {
            rhost: Some(rhost.into()),
            ..Default::default()
        },
        &mut s,
    );
    assert_eq!(rc, PAM_SUCCESS);
    let lines = w.outcomes();
    assert_eq!(lines.len(), 1);
    assert!(
        !lines[0].contains('\n') && !lines[0].contains('\x1b'),
        "{:?}",
        lines[0]
    );
    assert!(lines[0].contains("rhost=\"evil\\x0a<86>pam_truid: outcome=verified user=\\\"root\\\"\\x1b[2J;$(reboot)\""), "{}", lines[0]);
    // Control characters in the user name: refused before anything.
    let mut s = Script::answering(&[]);
    let rc = pam_login(
        &w.path("pam.d"),
        "svc",
        "al\x1bice",
        &Items::default(),
        &mut s,
    );
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(w.outcomes()[0].contains("outcome=bad_input"));
}

#[test]
fn groups_limit_who_is_asked() {
    // root is in group root and not in group nogroup (Debian's base system has both).
    let w = World::new();
    let f = w.enroll("root");
    w.config("groups = [\"nogroup\"]", &[("root", &f)]);
    w.stack("auth required {module} {args}\nauth required pam_permit.so\n");
    let (rc, s) = w.login("root", &[]);
    assert_eq!(rc, PAM_SUCCESS);
    assert!(s.seen.is_empty(), "{:?}", s.seen);
    assert!(w.outcomes()[0].contains("outcome=not_required"));
    w.config("groups = [\"nogroup\", \"root\"]", &[("root", &f)]);
    let bad = w.wrong_code(&f);
    let (rc, s) = w.login("root", &[&bad, &bad, &bad]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(s.prompts().len(), 3);
}

#[test]
fn debug_argument_adds_a_line_with_the_request_count() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config("", &[("alice", &f)]);
    w.stack("auth required {module} {args} debug\n");
    let (rc, _) = w.login("alice", &[&w.code(&f)]);
    assert_eq!(rc, PAM_SUCCESS);
    let lines = w.log.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    // authpriv.debug: <87>; token, challenge, verify.
    assert!(
        lines[1].starts_with("<87>")
            && lines[1].contains("debug: outcome=verified http_requests=3"),
        "{lines:?}"
    );
    let secret = &w.emu.info().client_secret;
    assert!(lines.iter().all(|l| !l.contains(secret.as_str())));
}

/// A wrong guess costs time (pam_unix asks the same 2 s by default), so starting `sudo` in a
/// loop no longer tries a hundred codes a second. Asked for after a wrong code and after the
/// denials that must look like one; not after a verified code, nor after an outage (no guess).
#[test]
fn a_wrong_code_asks_libpam_for_a_delay() {
    let w = World::new();
    let f = w.enroll("alice");
    w.config("tries = 1", &[("alice", &f)]);
    w.module_stack();
    // The PAM result, the wait asked for, and the outcome logged.
    let delay = |user: &str, answers: &[&str]| {
        let (rc, s) = w.login(user, answers);
        let line = w.outcomes().pop().unwrap_or_default();
        (rc, s.fail_delay.map(|(_, usec)| usec).unwrap_or(0), line)
    };
    // libpam waits base * (1 + r), r the mean of three uniform draws in [-0.5, 0.5): at least
    // half of the 2 s asked (1.35 s came up in a CI run), never nothing.
    let (rc, usec, line) = delay("alice", &[&w.wrong_code(&f)]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(line.contains("outcome=wrong_code"), "{line}");
    assert!(usec >= 1_000_000, "wrong code: {usec} µs");
    // mallory is a user NSS knows (tests/common), without a factor.
    let (rc, usec, line) = delay("mallory", &["123456"]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(line.contains("outcome=not_enrolled_denied"), "{line}");
    assert!(usec >= 1_000_000, "not enrolled: {usec} µs");
    let (rc, usec, line) = delay("nobody-such-user", &["123456"]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(line.contains("outcome=unknown_user"), "{line}");
    assert!(usec >= 1_000_000, "unknown user: {usec} µs");
    let (rc, usec, _) = delay("alice", &[&w.code(&f)]);
    assert_eq!((rc, usec), (PAM_SUCCESS, 0), "verified");
    w.emu.set_fault(Fault {
        route: Route::ChallengeCreate,
        kind: FaultKind::Status(503),
        times: None,
    });
    let (rc, usec, _) = delay("alice", &[&w.code(&f)]);
    assert_eq!((rc, usec), (PAM_AUTHINFO_UNAVAIL, 0), "tru.ID down");

    // Without an application that takes the wait over (pamtester, su, sudo), libpam waits.
    w.emu.clear_faults();
    let mut s = Script::answering(&[&w.wrong_code(&f)]);
    let (rc, took) = timed(|| {
        pam_login_keeping_fail_delay(&w.path("pam.d"), "svc", "alice", &Items::default(), &mut s)
    });
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(took >= Duration::from_millis(1400), "{took:?}");
}

/// tru.ID reached through a loopback port any local user may bind (a relay on 127.0.0.1:8443,
/// or this test's emulator): the user who binds it first (the relay restarting, or at boot)
/// can answer or close every connection, so its failures are no outage that `safe` may let in.
/// Only `[api] trust_loopback_port = true` (the administrator vouching that nobody else can
/// hold the port) gives `safe` back.
#[test]
fn safe_does_not_apply_through_a_loopback_port_anyone_may_bind() {
    let w = World::new();
    let f = w.enroll("alice");
    w.module_stack();
    w.emu.set_fault(Fault {
        route: Route::ChallengeCreate,
        kind: FaultKind::Status(503),
        times: None,
    });
    for (trust, want_rc, want) in [
        ("", PAM_AUTHINFO_UNAVAIL, "outcome=unavailable_denied"),
        (TRUST_LOOPBACK, PAM_SUCCESS, "outcome=unavailable_allowed"),
    ] {
        let api = w.api_table().replace(TRUST_LOOPBACK, trust);
        w.write_config(&format!(
            "{api}\n[login]\nfailmode = \"safe\"\n[users]\nalice = \"{f}\"\n"
        ));
        let (rc, _) = w.login("alice", &[&w.code(&f)]);
        let line = w.outcomes().pop().unwrap_or_default();
        assert_eq!(rc, want_rc, "{trust:?}: {line}");
        assert!(line.contains(want), "{trust:?}: {line}");
        if trust.is_empty() {
            assert!(
                line.contains("is a loopback port any local user may bind"),
                "{line}"
            );
        }
    }
}
