//! First-login enrolment (`[login] unenrolled = "enroll"`), end to end: a user without a factor
//! enrolls inside their own login, through a real sshd running conf/pam.d/sshd-password
//! (common::logins), through real libpam loading the built module (common::pam_login), and
//! not at all through a real setuid su run by another user. The emulator is tru.ID; the test
//! plays the phone from what the person is shown (the key in the QR code's prompt).
//!
//! What tru.ID holds is asked of the emulator through the project's own API client
//! (`search_factors` by external user ID): a factor's status, and that none was made.
//!
//! Prompts on a terminal are answered as tests/real_logins.rs says, with one addition: an
//! echo-on prompt (the phone number) gives no sign on the terminal, so it is known by its text;
//! ssh's readpassphrase flushes typed-ahead input before it writes a prompt, so an answer
//! written once the prompt is shown is the one it reads.
//!
//! Run through tests/private-host.sh (it adds Unix users and groups to a private /etc).

// common re-exports what other test files use.
#[allow(unused_imports)]
mod common;
use common::logins::*;
use common::*;

use pam_truid::api::{Client, Factor};
use pam_truid::config::Config;
use pam_truid::enrolment::{
    qr_text, MSG_BAD_PHONE, MSG_CODE, MSG_PHONE, MSG_START, MSG_WRONG_CODE,
};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PHONE: &str = "+447700900123";
const KEY_INTRO: &str = "enter this key by hand: ";

// ---------------------------------------------------------------------------------------------
// Helpers

/// The `[api]` table, then the `[login]` lines, then the rest (`[enroll]`, `[users]`...), with
/// the administrator's comments that an enrolment must keep.
fn config_text(w: &World, login: &str, rest: &str) -> String {
    format!(
        "# pam_truid.toml of the first-login tests: the administrator's own words.\n{}\n\
         [login]\n# Users without a factor enroll at their first login.\n{login}\n\n{rest}",
        w.api_table()
    )
}

/// What tru.ID holds under the external user ID `user`, asked with the project's client.
fn factors_of(w: &World, user: &str) -> Vec<Factor> {
    let cfg = Config::load(&w.path("pam_truid.toml")).expect("the test's config loads");
    let mut client = Client::new(&cfg.api).unwrap();
    client
        .search_factors(user)
        .unwrap()
        .into_iter()
        .filter(|f| f.external_user_id == user)
        .collect()
}

fn factors_created(w: &World) -> u64 {
    w.emu
        .stats()
        .requests
        .get("factor_create")
        .copied()
        .unwrap_or(0)
}

/// What the person saw, for a failure's message: the QR code's prompt holds the factor's
/// secret (the key, and the QR code itself), so it shows as a placeholder.
fn redacted(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|x| match x {
            Seen::Prompt(p) if p.contains(KEY_INTRO) => "Prompt(<the QR code's prompt>)".into(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn is_phone_prompt(s: &Seen) -> bool {
    matches!(s, Seen::Prompt(p) | Seen::EchoOnPrompt(p) if p == MSG_PHONE)
}

/// The one outcome line logged since the last look.
fn one_outcome(w: &World) -> String {
    one_outcome_without(w, &[])
}

/// `one_outcome`, where no line logged since the last look holds any of `secrets`.
fn one_outcome_without(w: &World, secrets: &[&str]) -> String {
    let all = w.log.lines();
    for (i, l) in all.iter().enumerate() {
        // By number only: the failure must not print the secret either.
        assert!(
            !secrets.iter().any(|s| l.contains(s)),
            "log line {i} holds a secret"
        );
    }
    let outcomes: Vec<&String> = all.iter().filter(|l| l.contains("outcome=")).collect();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    outcomes[0].clone()
}

/// The key the QR code's prompt gives for typing in by hand.
fn key_in(text: &str) -> Option<String> {
    let rest = text.split_once(KEY_INTRO)?.1;
    let key: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '=')
        .collect();
    (!key.is_empty()).then_some(key)
}

/// What the phone's app shows now for `key`.
fn app_code(key: &str) -> String {
    let secret = truid_emulator::totp::decode_secret(key).expect("the key is base32");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    truid_emulator::totp::code(&secret, now.as_secs())
}

// ---------------------------------------------------------------------------------------------
// A terminal that also answers echo-on prompts

/// One prompt as the person at the terminal saw it.
struct Shown {
    /// Everything shown since the last answer, up to and with the prompt: with sshd, the
    /// PAM messages that came before a prompt are part of its text.
    text: String,
    /// The prompt's own (last) line.
    line: String,
    /// The terminal's echo was on: what is typed is shown.
    echo: bool,
}

/// Runs the program on `pty`, answering each prompt with `answer` (`None`: stop there, the
/// program is killed).
fn converse(
    mut pty: Pty,
    mut answer: impl FnMut(&Shown) -> Option<String>,
) -> (Session, Vec<Shown>) {
    let deadline = Instant::now() + LOGIN_DEADLINE;
    let mut shown = Vec::new();
    let mut stopped = false;
    loop {
        if Instant::now() >= deadline {
            stopped = true;
            break;
        }
        if !pty.pump(Duration::from_millis(20)) {
            break;
        }
        let pending = String::from_utf8_lossy(&pty.buf[pty.answered..]).replace('\r', "");
        let line = pending.rsplit('\n').next().unwrap_or("").to_string();
        let echo_off = pty.echo_off();
        if !(line.ends_with(": ") && (echo_off || line.ends_with(MSG_PHONE))) {
            continue;
        }
        pty.answered = pty.buf.len();
        let s = Shown {
            text: pending,
            line,
            echo: !echo_off,
        };
        let reply = answer(&s);
        shown.push(s);
        match reply {
            Some(a) => pty.write_line(&a),
            None => {
                stopped = true;
                break;
            }
        }
    }
    let status = if stopped {
        kill_group(&mut pty.child);
        None
    } else {
        wait_until(&mut pty.child, deadline)
    };
    let session = Session {
        status,
        prompts: shown.iter().map(|s| s.line.clone()).collect(),
        transcript: String::from_utf8_lossy(&pty.buf).replace('\r', ""),
    };
    (session, shown)
}

/// `ssh user@127.0.0.1 id -un` with keyboard-interactive only (password + tru.ID), on a
/// terminal of a UTF-8 locale, as a person's terminal is: ssh shows other characters of a
/// prompt as escapes.
fn ssh(
    sshd: &Sshd,
    user: &str,
    answer: impl FnMut(&Shown) -> Option<String>,
) -> (Session, Vec<Shown>) {
    let mut c = Command::new("ssh");
    c.env("LC_ALL", "C.UTF-8")
        .args(["-F", "/dev/null", "-p", &sshd.port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30"])
        .args(["-o", "NumberOfPasswordPrompts=1", "-o", "BatchMode=no"])
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=keyboard-interactive",
        ])
        .arg(format!("{user}@127.0.0.1"))
        .args(["id", "-un"]);
    converse(Pty::spawn(c), answer)
}

/// The person enrolling: the password, the phone number, then the code their app shows for
/// the key of the QR code's prompt. Anything else is not expected: stop.
fn enrolling_person(s: &Shown) -> Option<String> {
    if s.line.ends_with("Password: ") {
        Some(PASSWORD.into())
    } else if s.line.ends_with(MSG_PHONE) {
        Some(PHONE.into())
    } else if s.line == MSG_CODE {
        Some(app_code(&key_in(&s.text)?))
    } else {
        None
    }
}

/// A World with `user` (a Unix password) and a private sshd on conf/pam.d/sshd-password.
fn ssh_enrol_world(user: &str, login: &str) -> (World, Sshd) {
    let w = World::new();
    ensure_user(user);
    set_password(user);
    w.write_config(&config_text(
        &w,
        login,
        "[users]\n# Added by truid-pam enroll, or by a first login.\n",
    ));
    let sshd = Sshd::start(&w, SshVariant::Password);
    (w, sshd)
}

/// The first login's enrolment as sshd shows it: the phone prompt after the start message,
/// then the QR code inside the first code prompt with the factor's key; the code typed from
/// the key activates it and the session runs. Returns the factor now ACTIVE, and the key.
fn enrol_over_ssh(w: &World, sshd: &Sshd, user: &str) -> (Factor, String) {
    let (s, shown) = ssh(sshd, user, enrolling_person);
    // Failures show the prompts' last lines, not the transcript: it holds the key.
    assert_eq!(
        pam_prompts(&s),
        ["Password: ", MSG_PHONE, MSG_CODE],
        "{}",
        sshd.log_text()
    );
    assert!(
        s.ok() && s.output_lines().last() == Some(&user),
        "{user} not logged in ({:?}): {:?}\n{}",
        s.status,
        s.output_lines(),
        sshd.log_text()
    );
    // sshd hands a keyboard-interactive client PAM's messages with the next prompt only: the
    // start message comes with the phone prompt, the QR code with the first code prompt.
    assert!(shown[1].text.contains(MSG_START), "{}", shown[1].text);
    let factors = factors_of(w, user);
    assert_eq!(factors.len(), 1, "{factors:?}");
    let f = factors[0].clone();
    assert_eq!(f.status, "ACTIVE");
    let uri = f.url.as_ref().expect("the factor's otpauth URI");
    let qr = qr_text(uri.expose()).unwrap();
    assert!(
        shown[2].text.contains(&qr),
        "the QR code of the factor's URI is not in the code prompt's text ({} lines)",
        shown[2].text.lines().count()
    );
    // The key shown is the factor's own secret (the code typed was made from it).
    let key = key_in(&shown[2].text).unwrap();
    assert!(
        uri.expose().contains(&format!("secret={key}&")),
        "the key shown is not the factor's secret"
    );
    assert!(!shown[2].text.contains(MSG_WRONG_CODE));
    (f, key)
}

/// A later login: password and code, no enrolment; in with the app's next code (the one just
/// used for the activation would be a replay).
fn second_login_over_ssh(w: &World, sshd: &Sshd, user: &str, factor: &str) {
    let next = w.emu.code(factor, 1).unwrap();
    let (s, _) = ssh(sshd, user, |s| {
        if s.line.ends_with("Password: ") {
            Some(PASSWORD.into())
        } else if s.line.ends_with(PROMPT) {
            Some(next.clone())
        } else {
            None
        }
    });
    assert_logged_in(&s, user, Some(sshd));
    assert_eq!(pam_prompts(&s), ["Password: ", PROMPT]);
    assert!(!s.transcript.contains(MSG_START), "{}", s.transcript);
    let line = one_outcome(w);
    assert!(
        line.contains(&format!(
            "outcome=verified user=\"{user}\" service=\"sshd\""
        )),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------------
// Through a real sshd

/// A new user logs in over ssh, is enrolled in their own login, lands in a session, and is
/// recorded in `[users]` and `[phones]` with the file's comments kept; their next login asks
/// the code.
#[test]
fn ssh_first_login_enrolls_then_the_next_login_asks_the_code() {
    let user = "truidfl1";
    let (w, sshd) = ssh_enrol_world(user, "unenrolled = \"enroll\"");
    let before = std::fs::read_to_string(w.path("pam_truid.toml")).unwrap();
    let (f, key) = enrol_over_ssh(&w, &sshd, user);

    let line = one_outcome_without(&w, &[&key]);
    assert!(
        line.contains(&format!(
            "outcome=enrolled user=\"{user}\" service=\"sshd\""
        )),
        "{line}"
    );
    assert!(line.contains(&f.factor_id), "{line}");
    let after = std::fs::read_to_string(w.path("pam_truid.toml")).unwrap();
    // Failures show the file from [users] on: the part before holds the client secret.
    let (head, tables) = after.split_at(after.find("\n[users]\n").expect("[users]"));
    assert!(before.starts_with(head), "the file up to [users] changed");
    for comment in before.lines().filter(|l| l.starts_with('#')) {
        assert!(after.contains(comment), "comment lost: {comment}\n{tables}");
    }
    let t: toml::Table = toml::from_str(&after).unwrap();
    assert_eq!(
        t["users"][user].as_str(),
        Some(f.factor_id.as_str()),
        "{tables}"
    );
    assert_eq!(t["phones"][user].as_str(), Some(PHONE), "{tables}");
    // The module reads what it wrote: the file is still one it accepts.
    let cfg = Config::load(&w.path("pam_truid.toml")).unwrap();
    assert_eq!(cfg.users[user].as_str(), f.factor_id);

    second_login_over_ssh(&w, &sshd, user, &f.factor_id);
}

/// The phone number is typed where it can be seen: the terminal echoes it.
#[test]
fn ssh_phone_prompt_echoes_the_number() {
    let user = "truidfl2";
    let (w, sshd) = ssh_enrol_world(user, "unenrolled = \"enroll\"");
    // Up to the phone prompt, then stop: only its echo is in question.
    let (s, shown) = ssh(&sshd, user, |s| {
        s.line.ends_with("Password: ").then(|| PASSWORD.into())
    });
    assert_eq!(pam_prompts(&s), ["Password: ", MSG_PHONE], "{s:#?}");
    assert!(!shown[0].echo);
    assert!(shown[1].echo, "the phone number would be typed blind");
    assert!(factors_of(&w, user).is_empty());
}

/// With `lookup = true` the enrolment writes nothing: the next login finds the factor at
/// tru.ID by the user's external ID.
#[test]
fn lookup_records_nothing_and_the_next_login_finds_the_factor() {
    let user = "truidfl3";
    let (w, sshd) = ssh_enrol_world(user, "unenrolled = \"enroll\"\nlookup = true");
    let before = std::fs::read(w.path("pam_truid.toml")).unwrap();
    let (f, key) = enrol_over_ssh(&w, &sshd, user);
    let line = one_outcome_without(&w, &[&key]);
    assert!(line.contains("outcome=enrolled"), "{line}");
    assert_eq!(
        std::fs::read(w.path("pam_truid.toml")).unwrap(),
        before,
        "nothing is recorded in the config"
    );
    assert_eq!(f.external_user_id, user);
    second_login_over_ssh(&w, &sshd, user, &f.factor_id);
}

// ---------------------------------------------------------------------------------------------
// Through real libpam

/// A World whose config has `unenrolled = "enroll"` and `login`, `rest` after; the module
/// alone in the stack.
fn enrol_world(login: &str, rest: &str) -> World {
    let w = World::new();
    w.write_config(&config_text(
        &w,
        &format!("unenrolled = \"enroll\"\n{login}"),
        rest,
    ));
    password_stack(&w);
    w
}

/// The stack of every shipped service in short: the password (real pam_unix, which ends the
/// stack on a wrong one and leaves PAM_AUTHTOK set), then the module. First-login enrolment
/// needs a password taken before it.
fn password_stack(w: &World) {
    w.stack("auth requisite pam_unix.so\nauth required {module} {args}\n");
}

/// A login through `password_stack` by `user` (given the tests' password): the password, then
/// `answers`; what the person saw after the password prompt.
fn login_after_password(w: &World, user: &str, answers: &[&str]) -> (i32, Script) {
    set_password(user);
    let mut all = vec![PASSWORD];
    all.extend_from_slice(answers);
    let (rc, mut s) = w.login(user, &all);
    assert_eq!(
        s.seen.first(),
        Some(&Seen::Prompt("Password: ".into())),
        "{:?}",
        redacted(&s.seen)
    );
    s.seen.remove(0);
    (rc, s)
}

/// The phone prompt asks for an answer that is shown as it is typed.
#[test]
fn the_phone_prompt_is_echo_on() {
    let w = enrol_world("", "");
    let (rc, s) = login_after_password(&w, "alice", &["no phone", "no phone", "no phone"]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(
        s.seen[1],
        Seen::EchoOnPrompt(MSG_PHONE.into()),
        "{:?}",
        redacted(&s.seen)
    );
}

/// Three wrong codes: denied, the factor left PENDING at tru.ID (it lets no one in), and not a
/// byte of the config changed.
#[test]
fn wrong_codes_leave_the_factor_pending_and_the_config_as_it_was() {
    let w = enrol_world("", "[users]\n");
    let before = std::fs::read(w.path("pam_truid.toml")).unwrap();
    let (rc, s) = login_after_password(&w, "bob", &[PHONE, "000000", "111111", "222222"]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(s.seen.len(), 8, "{:?}", redacted(&s.seen));
    assert_eq!(s.seen[0], Seen::Info(MSG_START.into()));
    assert!(is_phone_prompt(&s.seen[1]), "{:?}", redacted(&s.seen));
    assert!(
        matches!(&s.seen[2], Seen::Prompt(p) if p.contains(KEY_INTRO) && p.ends_with(MSG_CODE)),
        "{:?}",
        redacted(&s.seen)
    );
    assert_eq!(
        s.seen[3..],
        [
            Seen::Error(MSG_WRONG_CODE.into()),
            Seen::Prompt(MSG_CODE.into()),
            Seen::Error(MSG_WRONG_CODE.into()),
            Seen::Prompt(MSG_CODE.into()),
            Seen::Error(MSG_WRONG_CODE.into()),
        ]
    );
    let line = one_outcome(&w);
    assert!(
        line.contains("outcome=enrolment_failed user=\"bob\""),
        "{line}"
    );
    assert_eq!(std::fs::read(w.path("pam_truid.toml")).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(w.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let factors = factors_of(&w, "bob");
    assert_eq!(factors.len(), 1, "{factors:?}");
    assert_eq!(factors[0].status, "PENDING");
}

/// A failed enrolment leaves a PENDING factor under the user's external ID, which tru.ID holds
/// unique: the next try retires it and enrols; and with no password taken before the module
/// (a stack with the module alone), no one is offered enrolment at all.
#[test]
fn a_failed_enrolment_never_blocks_the_next_and_none_comes_without_a_password() {
    let w = enrol_world("", "[users]\n");
    let (rc, _) = login_after_password(&w, "ivan", &[PHONE, "000000", "111111", "222222"]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(factors_of(&w, "ivan")[0].status, "PENDING");
    let mut s = Script::answering(&[PASSWORD, PHONE]);
    s.answer_from = Some(Box::new(|text: &str| key_in(text).map(|k| app_code(&k))));
    let rc = pam_login(&w.path("pam.d"), "svc", "ivan", &Items::default(), &mut s);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", redacted(&s.seen));
    let lines = w.outcomes();
    assert!(
        lines[0].contains("outcome=enrolment_failed user=\"ivan\""),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("outcome=enrolled user=\"ivan\""),
        "{lines:?}"
    );
    let now = factors_of(&w, "ivan");
    assert_eq!(now.len(), 1, "the PENDING one was renamed away: {now:?}");
    assert_eq!(now[0].status, "ACTIVE");
    let cfg = Config::load(&w.path("pam_truid.toml")).unwrap();
    assert_eq!(cfg.users["ivan"].as_str(), now[0].factor_id);

    // The module alone: no first factor before it, so nobody enrols, whatever they type.
    w.module_stack();
    let (rc, s) = w.login("judy", &["x", "x", "x"]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(s.prompts(), [PROMPT; 3], "{:?}", redacted(&s.seen));
    assert!(!s.seen.contains(&Seen::Info(MSG_START.into())));
    assert!(factors_of(&w, "judy").is_empty());
}

/// The network on each call an enrolment makes (the claim's search, the factor's creation,
/// its activation), under `failmode = "safe"`: refused, 429, not JSON, the wrong shape,
/// dropped, cut mid-body. None becomes a login or writes the config; and the same user
/// enrols once the network is back.
#[test]
fn network_faults_on_enrolment_never_let_in_nor_write() {
    let w = enrol_world("failmode = \"safe\"", "[users]\n");
    let before = std::fs::read(w.path("pam_truid.toml")).unwrap();
    let login = |w: &World| {
        let mut s = Script::answering(&[PASSWORD, PHONE]);
        s.answer_from = Some(Box::new(|text: &str| key_in(text).map(|k| app_code(&k))));
        set_password("kim");
        let rc = pam_login(&w.path("pam.d"), "svc", "kim", &Items::default(), &mut s);
        (rc, s)
    };
    let kinds = [
        FaultKind::Status(503),
        FaultKind::TooManyRequests { retry_after: None },
        FaultKind::NotJson,
        FaultKind::WrongShape,
        FaultKind::Drop,
        FaultKind::DropMidBody,
    ];
    for route in [Route::FactorList, Route::FactorCreate, Route::FactorPatch] {
        for kind in kinds.clone() {
            // A search of the wrong shape reads as "no factor": the enrolment then goes on,
            // on calls that work, as it should.
            if route == Route::FactorList && kind == FaultKind::WrongShape {
                continue;
            }
            let what = format!("{route:?} {kind:?}");
            w.emu.clear_faults();
            w.emu.set_fault(Fault {
                route,
                kind,
                times: None,
            });
            let (rc, s) = login(&w);
            assert_ne!(rc, PAM_SUCCESS, "{what}: {:?}", redacted(&s.seen));
            let line = w.outcomes().pop().unwrap_or_default();
            assert!(
                !line.contains("outcome=enrolled") && !line.contains("unavailable_allowed"),
                "{what}: {line}"
            );
            assert_eq!(
                std::fs::read(w.path("pam_truid.toml")).unwrap(),
                before,
                "{what}"
            );
        }
    }
    w.emu.clear_faults();
    let (rc, s) = login(&w);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", redacted(&s.seen));
    let active: Vec<_> = factors_of(&w, "kim")
        .into_iter()
        .filter(|f| f.status == "ACTIVE")
        .collect();
    assert_eq!(active.len(), 1, "{active:?}");
}

/// No usable phone number in three tries: denied, and no factor made.
#[test]
fn a_bad_phone_three_times_makes_no_factor() {
    let w = enrol_world("", "");
    let (rc, s) = login_after_password(&w, "carol", &["hello", "12", "07700 900123"]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(s.seen[0], Seen::Info(MSG_START.into()));
    let phones = s.seen.iter().filter(|x| is_phone_prompt(x)).count();
    let bad = s
        .seen
        .iter()
        .filter(|x| **x == Seen::Error(MSG_BAD_PHONE.into()))
        .count();
    assert_eq!(
        (phones, bad, s.seen.len()),
        (3, 3, 7),
        "{:?}",
        redacted(&s.seen)
    );
    let line = one_outcome(&w);
    assert!(line.contains("outcome=enrolment_failed"), "{line}");
    assert_eq!(factors_created(&w), 0);
    assert!(factors_of(&w, "carol").is_empty());
}

/// `[enroll] groups` (a real group): a member is offered the enrolment; a user outside it
/// gets what an unenrolled user gets under "deny", and no factor is made.
#[test]
fn outside_enroll_groups_is_denied_as_under_deny() {
    let (member, outsider, group) = ("truidfg1", "truidfg2", "truidenrollers");
    ensure_user(member);
    ensure_user(outsider);
    ensure_group_with(group, &[member]);
    let w = World::new();
    password_stack(&w);
    let codes = ["000000", "111111", "222222"];

    w.write_config(&config_text(&w, "unenrolled = \"deny\"", ""));
    let (rc, under_deny) = login_after_password(&w, outsider, &codes);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(one_outcome(&w).contains("outcome=not_enrolled_denied"));

    w.write_config(&config_text(
        &w,
        "unenrolled = \"enroll\"",
        &format!("[enroll]\ngroups = [\"{group}\"]\n"),
    ));
    let (rc, s) = login_after_password(&w, outsider, &codes);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(s.seen, under_deny.seen);
    assert_eq!(s.prompts(), [PROMPT; 3]);
    let line = one_outcome(&w);
    assert!(
        line.contains(&format!("outcome=not_enrolled_denied user=\"{outsider}\"")),
        "{line}"
    );

    // The member is offered it (and types no usable phone: nothing made either way).
    let (rc, s) = login_after_password(&w, member, &["x", "x", "x"]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(s.seen[0], Seen::Info(MSG_START.into()));
    assert!(is_phone_prompt(&s.seen[1]), "{:?}", redacted(&s.seen));
    assert!(one_outcome(&w).contains("outcome=enrolment_failed"));
    assert_eq!(factors_created(&w), 0);
}

/// tru.ID down under `failmode = "safe"`: the enrolment is denied (unavailable_denied), while
/// an enrolled user is let in by the same config: a user without a factor has no second
/// factor for `safe` to stand in for.
#[test]
fn tru_id_down_denies_an_enrolment_even_under_safe() {
    let w = World::new();
    password_stack(&w);
    let enrolled = w.enroll("dave");
    w.write_config(&config_text(
        &w,
        "unenrolled = \"enroll\"\nfailmode = \"safe\"",
        &format!("[users]\ndave = \"{enrolled}\"\n"),
    ));
    w.emu.set_fault(Fault {
        route: Route::Any,
        kind: FaultKind::Status(503),
        times: None,
    });
    let (rc, s) = login_after_password(&w, "erin", &[]);
    assert_eq!(rc, PAM_AUTHINFO_UNAVAIL, "{:?}", redacted(&s.seen));
    // tru.ID is asked first whether the user's external ID is free: down, the person is told
    // so before typing a number.
    assert_eq!(
        s.seen,
        [
            Seen::Info(MSG_START.into()),
            Seen::Error(pam_truid::flow::MSG_UNAVAILABLE.into())
        ],
        "{:?}",
        redacted(&s.seen)
    );
    assert!(
        !s.prompts().iter().any(|p| p.contains(KEY_INTRO)),
        "{:?}",
        redacted(&s.seen)
    );
    let line = one_outcome(&w);
    assert!(
        line.contains("outcome=unavailable_denied user=\"erin\""),
        "{line}"
    );
    // The control: safe is in force for an enrolled user.
    let (rc, _) = login_after_password(&w, "dave", &["123456"]);
    assert_eq!(rc, PAM_SUCCESS);
    assert!(one_outcome(&w).contains("outcome=unavailable_allowed"));
    w.emu.clear_faults();
    assert!(factors_of(&w, "erin").is_empty());
}

/// `combined = true` cannot go with "enroll" (one prompt comes before the password is
/// checked): in the file it is a config error; as the module argument, nobody is enrolled.
#[test]
fn combined_and_enroll_enroll_no_one() {
    let w = World::new();
    w.write_config(&config_text(
        &w,
        "unenrolled = \"enroll\"\ncombined = true",
        "",
    ));
    password_stack(&w);
    let (rc, s) = login_after_password(&w, "frank", &[PHONE]);
    assert_eq!(rc, PAM_SERVICE_ERR);
    assert!(s.seen.is_empty(), "{:?}", redacted(&s.seen));
    let line = one_outcome(&w);
    assert!(line.contains("outcome=config_error"), "{line}");
    assert!(line.contains("combined"), "{line}");

    w.write_config(&config_text(&w, "unenrolled = \"enroll\"", ""));
    w.stack("auth required {module} {args} combined\n");
    let (rc, s) = w.login("frank", &[&format!("{PASSWORD}123456")]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(
        s.seen,
        [Seen::Prompt("Password and tru.ID code: ".into())],
        "no enrolment after the one prompt"
    );
    let line = one_outcome(&w);
    assert!(
        line.contains("outcome=not_enrolled_denied user=\"frank\""),
        "{line}"
    );
    assert_eq!(factors_created(&w), 0);
}

/// A user with a factor (in `[users]`, or at tru.ID under `lookup = true`) is asked the code,
/// right or wrong, and never to enroll.
#[test]
fn a_user_with_a_factor_is_never_asked_to_enroll() {
    let w = World::new();
    password_stack(&w);
    let (gina, hana) = (w.enroll("gina"), w.enroll("hana"));
    for lookup in [false, true] {
        let users = if lookup {
            String::new()
        } else {
            format!("[users]\ngina = \"{gina}\"\nhana = \"{hana}\"\n")
        };
        w.write_config(&config_text(
            &w,
            &format!("unenrolled = \"enroll\"\nlookup = {lookup}"),
            &users,
        ));
        // Each round its own step's code: a code is taken once.
        let step = if lookup { 1 } else { 0 };
        let (rc, s) = login_after_password(&w, "gina", &[&w.emu.code(&gina, step).unwrap()]);
        assert_eq!(
            rc,
            PAM_SUCCESS,
            "lookup = {lookup}: {:?}",
            redacted(&s.seen)
        );
        assert_eq!(s.seen, [Seen::Prompt(PROMPT.into())]);
        assert!(one_outcome(&w).contains("outcome=verified"));
        let wrong = w.wrong_code(&hana);
        let (rc, s) = login_after_password(&w, "hana", &[&wrong, &wrong, &wrong]);
        assert_eq!(rc, PAM_AUTH_ERR);
        assert_eq!(s.prompts(), [PROMPT; 3], "lookup = {lookup}");
        assert!(
            !s.seen
                .iter()
                .any(|x| is_phone_prompt(x) || *x == Seen::Info(MSG_START.into())),
            "{:?}",
            redacted(&s.seen)
        );
        assert!(one_outcome(&w).contains("outcome=wrong_code"));
    }
    assert_eq!(factors_created(&w), 0);
}

// ---------------------------------------------------------------------------------------------
// Through a real setuid su

/// su run by another unprivileged user to a target without a factor: the caller controls su's
/// process (AT_SECURE, its own real uid) and could enroll their phone on the target's account,
/// so no enrolment is offered: the target's password, the code prompt, denied. The same target
/// in a root process is offered it.
#[test]
fn su_by_another_user_offers_no_enrolment() {
    let (caller, target) = ("truidsu1", "truidsu2");
    ensure_user(caller);
    ensure_user(target);
    set_password(target);
    let w = World::new();
    w.write_config(&config_text(&w, "unenrolled = \"enroll\"\ntries = 1", ""));
    let stack = snippet_stack(&w, "su");
    let argv = ["runuser", "-u", caller, "--", "su", target, "-c", "id -un"];
    let (s, _) = converse(
        Pty::spawn(in_namespace(&[(&stack, "/etc/pam.d/su")], &argv)),
        |s| match s.line.as_str() {
            "Password: " => Some(PASSWORD.into()),
            PROMPT => Some("123456".into()),
            _ => None,
        },
    );
    assert_eq!(s.prompts, ["Password: ", PROMPT], "{s:#?}");
    assert_refused(&s);
    assert!(!s.transcript.contains(MSG_START), "{}", s.transcript);
    let line = one_outcome(&w);
    assert!(
        line.contains(&format!(
            "outcome=not_enrolled_denied user=\"{target}\" service=\"su\""
        )),
        "{line}"
    );
    assert_eq!(factors_created(&w), 0);

    // The control: root's own login of the target (no caller to control it) is offered it.
    password_stack(&w);
    let (rc, s) = login_after_password(&w, target, &["x", "x", "x"]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(
        s.seen[0],
        Seen::Info(MSG_START.into()),
        "{:?}",
        redacted(&s.seen)
    );
    assert!(one_outcome(&w).contains("outcome=enrolment_failed"));
}
