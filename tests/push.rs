//! Push approval through real libpam against the emulator: the test plays the phone through
//! the emulator's control side (approve, deny, or no answer).

#[allow(unused_imports)] // common re-exports what other test files use
mod common;
use common::*;
use std::time::{Duration, Instant};

const PUSH_PROMPT: &str = "Press Enter to approve on your phone, or type a tru.ID code: ";

fn push_world(login: &str) -> (World, String) {
    let w = World::new();
    let f = w.emu.seed_factor("carol", FactorType::Push).factor_id;
    let text = format!(
        "{}\n[login]\npush_timeout = 5\n{login}\n[users]\ncarol = \"{f}\"\n[phones]\ncarol = \"+447700900123\"\n",
        w.api_table()
    );
    w.write_config(&text);
    w.module_stack();
    (w, f)
}

fn pending_push(w: &World) -> Option<(String, String, Option<String>)> {
    w.emu
        .last_challenges()
        .into_iter()
        .find(|c| c.factor_type == FactorType::Push && c.status == "PENDING")
        .map(|c| (c.factor_id, c.challenge_id, c.message))
}

/// Plays the phone: waits (bounded) for the login's push challenge.
fn wait_for_push(w: &World) -> (String, String, Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = pending_push(w) {
            return p;
        }
        assert!(Instant::now() < deadline, "no push challenge appeared");
        // Bounded polling of the emulator's state, not a sleep standing in for an event.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn approved_on_the_phone() {
    let (w, _) = push_world("");
    let (rc, s, message) = std::thread::scope(|sc| {
        let phone = sc.spawn(|| {
            let (f, c, m) = wait_for_push(&w);
            assert!(w.emu.resolve_push(&f, &c, true));
            m
        });
        let (rc, s) = w.login("carol", &[""]);
        (rc, s, phone.join().unwrap())
    });
    assert_eq!(rc, PAM_SUCCESS, "{:?}", s.seen);
    assert_eq!(s.prompts(), [PUSH_PROMPT]);
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let expected = format!("svc login as carol on {host}");
    assert_eq!(message.as_deref(), Some(expected.as_str()));
    assert!(s.seen.contains(&Seen::Info(format!(
        "Approve the request on your phone: \"{expected}\""
    ))));
    assert!(w.outcomes()[0].contains("outcome=verified user=\"carol\""));
    assert_eq!(w.emu.stats().requests.get("phone_check").copied(), Some(1));
}

#[test]
fn denied_then_the_code_as_fallback() {
    let (w, f) = push_world("");
    let (rc, s) = std::thread::scope(|sc| {
        sc.spawn(|| {
            let (f, c, _) = wait_for_push(&w);
            assert!(w.emu.resolve_push(&f, &c, false));
        });
        // Enter (push, denied), then the code from the app.
        let code = w.code(&f);
        w.login("carol", &["", &code])
    });
    assert_eq!(rc, PAM_SUCCESS, "{:?}", s.seen);
    assert!(s
        .seen
        .contains(&Seen::Error("The request was denied on the phone.".into())));
    assert_eq!(s.prompts(), [PUSH_PROMPT, PUSH_PROMPT]);
    assert!(w.outcomes()[0].contains("tries=2"));
}

#[test]
fn no_answer_until_the_push_timeout() {
    let (w, _) = push_world("tries = 1");
    let ((rc, s), took) = timed(|| w.login("carol", &[""]));
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(
        w.outcomes()[0].contains("outcome=wrong_code"),
        "{:?}",
        s.seen
    );
}

#[test]
fn tru_id_down_mid_poll_denies_under_both_failmodes() {
    // The push went out: a failure now could hide a denial on the phone, so `safe` does not
    // apply (it used to let this login in).
    for (mode, expect) in [
        ("secure", PAM_AUTHINFO_UNAVAIL),
        ("safe", PAM_AUTHINFO_UNAVAIL),
    ] {
        let (w, _) = push_world(&format!("failmode = \"{mode}\""));
        let (rc, _) = std::thread::scope(|sc| {
            sc.spawn(|| {
                wait_for_push(&w);
                w.emu.set_fault(Fault {
                    route: Route::ChallengeGet,
                    kind: FaultKind::Status(503),
                    times: None,
                });
            });
            w.login("carol", &[""])
        });
        assert_eq!(rc, expect, "{mode}");
        let lines = w.outcomes();
        assert!(lines[0].contains("HTTP 503"), "{lines:?}");
        if mode == "safe" {
            assert!(
                lines[0].contains("does not apply: a push was sent"),
                "{lines:?}"
            );
        }
    }
}

#[test]
fn push_method_without_a_phone_denies() {
    let w = World::new();
    let f = w.emu.seed_factor("carol", FactorType::Push).factor_id;
    w.config("method = \"push\"\nfailmode = \"safe\"", &[("carol", &f)]);
    w.module_stack();
    let (rc, _) = w.login("carol", &[]);
    assert_eq!(rc, PAM_AUTH_ERR);
    let lines = w.outcomes();
    assert!(
        lines[0].contains("outcome=refused") && lines[0].contains("[phones]"),
        "{lines:?}"
    );
}
