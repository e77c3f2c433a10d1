//! Rollout without lockouts (issue 16), end to end: recovery codes, exempt accounts, and one
//! prompt for the password and the code, through real libpam loading the built module
//! (`pam_start_confdir`, common::pam_login) and through a real sshd running the stacks of
//! conf/ (common::logins), against the emulator, for real NSS users of the private host.
//!
//! Recovery codes are made with the library (`pam_truid::recovery`), into a store in the
//! test's own folder (root's, 0700), which the config points at. What reached tru.ID is read
//! from the emulator's counters: `requests["challenge_verify"]` counts every code sent.
//! tru.ID "down" is a loopback port nothing listens on, as tests/faults.rs does it.
//!
//! Run through tests/private-host.sh (it adds Unix users and groups to a private /etc).

// common re-exports what other test files use.
#[allow(unused_imports)]
mod common;
use common::logins::*;
use common::recovery::*;
use common::*;

use pam_truid::recovery;
use pam_truid::secret::Secret;
use std::sync::Barrier;

const COMBINED_PROMPT: &str = "Password and tru.ID code: ";
const RECOVERY_OFF: &str = "Recovery codes are not accepted here.";
const REACHABLE: &str =
    "tru.ID can be reached: type the code from the app. Recovery codes are for when it cannot.";
const TRY_AGAIN: &str = "Wrong code, try again.";
/// authpriv (10) * 8 + severity: crit, err, notice.
const CRIT: &str = "<82>";
const ERR: &str = "<83>";
const NOTICE: &str = "<85>";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Every line the module logged since the last look, and those of them that are outcomes.
fn log_lines(w: &World) -> (Vec<String>, Vec<String>) {
    let all = w.log.lines();
    let outcomes = all
        .iter()
        .filter(|l| l.contains("outcome="))
        .cloned()
        .collect();
    (all, outcomes)
}

/// None of `lines` holds any of `secrets` (a code as shown, as the store reads it, or a
/// password). The failure names the line by number only, so a failure prints no secret.
fn assert_no_secret(lines: &[String], secrets: &[&str], what: &str) {
    for (i, l) in lines.iter().enumerate() {
        for s in secrets {
            let undashed = s.replace('-', "");
            assert!(
                !l.contains(s) && !l.contains(&undashed),
                "{what}: line {i} of {} holds a code or password",
                lines.len()
            );
        }
    }
}

fn exposed(codes: &[Secret]) -> Vec<&str> {
    codes.iter().map(|c| c.expose()).collect()
}

/// The TOTP code of a factor `offset` steps from now. The emulator accepts a step's code
/// once, from one step before to one after: offsets 0 and 1 give a user two logins.
fn code_at(w: &World, factor: &str, offset: i64) -> String {
    w.emu.code(factor, offset).unwrap()
}

/// `[users]` pairs: each user with their factor.
fn pairs<'a>(users: &[&'a str], factors: &'a [String]) -> Vec<(&'a str, &'a str)> {
    users
        .iter()
        .copied()
        .zip(factors.iter().map(String::as_str))
        .collect()
}

fn errors(s: &Script) -> Vec<&str> {
    s.seen
        .iter()
        .filter_map(|m| match m {
            Seen::Error(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// Exactly one outcome line, and it holds each of `want`.
fn assert_one_outcome(lines: &[String], want: &[&str]) -> String {
    assert_eq!(lines.len(), 1, "{lines:?}");
    for w in want {
        assert!(lines[0].contains(w), "{w:?} not in {lines:?}");
    }
    lines[0].clone()
}

// ---------------------------------------------------------------------------------------------
// Recovery codes

/// tru.ID down under `failmode = "secure"`, `accept` left at its default ("unavailable"),
/// through real sshd with conf/pam.d/sshd-password (the Unix password, then the code): a
/// recovery code lets the user in once; the same code again is refused (each try a wrong
/// one), another of their codes still works. Each use is logged at crit with the codes left,
/// and no code reaches any log.
#[test]
fn ssh_recovery_code_when_tru_id_is_down_lets_in_once() {
    let u = "truidrc1";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    let codes = give_codes(&w, u, 3);
    config(
        &w,
        &down_api(&w),
        "failmode = \"secure\"",
        "",
        &[(u, f.as_str())],
    );
    let sshd = Sshd::start(&w, SshVariant::Password);
    let code = codes[1].expose();

    let s = sshd.login(SshVariant::Password, u, &[PASSWORD, code]);
    assert_logged_in(&s, u, Some(&sshd));
    assert_eq!(pam_prompts(&s), ["Password: ", PROMPT]);
    let (mut all, outcomes) = log_lines(&w);
    let line = assert_one_outcome(
        &outcomes,
        &[
            "outcome=recovery_used",
            &format!("user=\"{u}\" service=\"sshd\""),
            "2 left",
        ],
    );
    assert!(line.starts_with(CRIT), "not at crit: {line}");
    assert_eq!(left(&w, u), 2);

    // The same code again: each try is a wrong try, the login is refused.
    let s = sshd.login(SshVariant::Password, u, &[PASSWORD, code, code, code]);
    assert_refused(&s);
    assert_eq!(pam_prompts(&s), ["Password: ", PROMPT, PROMPT, PROMPT]);
    assert!(s.transcript.contains(TRY_AGAIN), "{s:#?}");
    let (more, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=wrong_code", "tries=3"]);
    all.extend(more);
    assert_eq!(left(&w, u), 2, "a refused code used another one up");

    // Another of the user's codes still works.
    let s = sshd.login(SshVariant::Password, u, &[PASSWORD, codes[0].expose()]);
    assert_logged_in(&s, u, Some(&sshd));
    let (more, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=recovery_used", "1 left"]);
    all.extend(more);
    assert_eq!(left(&w, u), 1);

    assert_no_secret(&all, &exposed(&codes), "module log");
    let sshd_log: Vec<String> = sshd.log_text().lines().map(str::to_string).collect();
    assert_no_secret(&sshd_log, &exposed(&codes), "sshd log");
    // The store holds hashes only.
    let file = vec![std::fs::read_to_string(store(&w).path()).unwrap()];
    assert_no_secret(&file, &exposed(&codes), "codes file");
}

/// Two logins with one code at once (real libpam, two threads let go together at a
/// barrier, each with its own PAM handle): exactly one PAM_SUCCESS, the other PAM_AUTH_ERR.
/// Five rounds, each with a code of its own, so a race has room to show.
#[test]
fn two_logins_with_one_code_at_once_exactly_one_gets_in() {
    const ROUNDS: usize = 5;
    let u = "carol";
    let w = World::new();
    let f = w.enroll(u);
    let codes = give_codes(&w, u, ROUNDS);
    // One try each: the loser's only answer is the code the winner used up.
    config(
        &w,
        &w.api_table(),
        "tries = 1",
        "accept = \"always\"",
        &[(u, f.as_str())],
    );
    let confdir = w.module_stack();
    for (round, code) in codes.iter().enumerate() {
        let barrier = Barrier::new(2);
        let rcs: Vec<i32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut script = Script::answering(&[code.expose()]);
                        barrier.wait();
                        pam_login(&confdir, "svc", u, &Items::default(), &mut script)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = rcs.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [PAM_SUCCESS, PAM_AUTH_ERR],
            "round {round}: {rcs:?}"
        );
        assert_eq!(left(&w, u), ROUNDS - 1 - round, "round {round}");
        let (all, outcomes) = log_lines(&w);
        assert_eq!(outcomes.len(), 2, "round {round}: {outcomes:?}");
        let used = outcomes
            .iter()
            .filter(|l| l.contains("outcome=recovery_used"))
            .count();
        let wrong = outcomes
            .iter()
            .filter(|l| l.contains("outcome=wrong_code"))
            .count();
        assert_eq!((used, wrong), (1, 1), "round {round}: {outcomes:?}");
        assert_no_secret(&all, &exposed(&codes), "module log");
    }
    assert_eq!(verifies(&w), 0, "a recovery code was sent to tru.ID");
}

/// `accept = "never"`: recovery codes are wrong tries (PAM_AUTH_ERR after the tries), none is
/// sent to tru.ID, and the codes file is left as it was. The TOTP code still works, and is
/// counted as sent (the counter this test relies on does count).
#[test]
fn accept_never_refuses_recovery_codes_and_sends_none() {
    let u = "dave";
    let w = World::new();
    let f = w.enroll(u);
    let codes = give_codes(&w, u, 3);
    config(
        &w,
        &w.api_table(),
        "",
        "accept = \"never\"",
        &[(u, f.as_str())],
    );
    w.module_stack();
    let before = std::fs::read(store(&w).path()).unwrap();
    let (rc, s) = w.login(u, &exposed(&codes));
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(s.prompts(), [PROMPT; 3]);
    assert!(errors(&s).contains(&RECOVERY_OFF), "{:?}", s.seen);
    let (all, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=wrong_code", "tries=3"]);
    assert_no_secret(&all, &exposed(&codes), "module log");
    assert_eq!(verifies(&w), 0, "a recovery code was sent to tru.ID");
    assert_eq!(w.emu.stats().verification_attempts, 0);
    assert_eq!(left(&w, u), 3);
    assert_eq!(
        std::fs::read(store(&w).path()).unwrap(),
        before,
        "the codes file changed"
    );

    let (rc, _) = w.login(u, &[&w.code(&f)]);
    assert_eq!(rc, PAM_SUCCESS);
    assert_eq!(verifies(&w), 1);
}

/// `accept = "always"` with tru.ID up (a lost phone): a recovery code lets in, logged at crit
/// as recovery_used, and nothing is sent to tru.ID for it.
#[test]
fn accept_always_lets_a_recovery_code_in_with_tru_id_up() {
    let u = "erin";
    let w = World::new();
    let f = w.enroll(u);
    let codes = give_codes(&w, u, 3);
    config(
        &w,
        &w.api_table(),
        "",
        "accept = \"always\"",
        &[(u, f.as_str())],
    );
    w.module_stack();
    let (rc, s) = w.login(u, &[codes[2].expose()]);
    assert_eq!(rc, PAM_SUCCESS);
    assert_eq!(s.prompts(), [PROMPT]);
    let (all, outcomes) = log_lines(&w);
    let line = assert_one_outcome(&outcomes, &["outcome=recovery_used", "tries=1", "2 left"]);
    assert!(line.starts_with(CRIT), "not at crit: {line}");
    assert_no_secret(&all, &exposed(&codes), "module log");
    assert_eq!(verifies(&w), 0, "the recovery code was sent to tru.ID");
    assert_eq!(w.emu.stats().verification_attempts, 0);
    assert_eq!(left(&w, u), 2);
    // Used up: the same code again is a wrong try.
    let (rc, _) = w.login(u, &[codes[2].expose(); 3]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(left(&w, u), 2);
    // Codes are the user's own: another (enrolled) user cannot use them.
    let other = "gina";
    let g = w.enroll(other);
    config(
        &w,
        &w.api_table(),
        "",
        "accept = \"always\"",
        &[(u, f.as_str()), (other, g.as_str())],
    );
    let (rc, _) = w.login(
        other,
        &[codes[0].expose(), codes[1].expose(), codes[0].expose()],
    );
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(left(&w, u), 2);
    assert_eq!(verifies(&w), 0);
    let (all, _) = log_lines(&w);
    assert_no_secret(&all, &exposed(&codes), "module log");
}

/// Under `failmode = "safe"` with tru.ID unreachable, six digits let in (that is what safe
/// means), but a recovery code that is not one of the user's is a wrong try: it never turns
/// into the outage that safe lets through.
#[test]
fn a_wrong_recovery_code_under_safe_with_tru_id_down_is_refused() {
    let u = "hana";
    let w = World::new();
    let f = w.enroll(u);
    let mine = give_codes(&w, u, 2);
    let guesses = recovery::generate(3).unwrap();
    config(
        &w,
        &down_api(&w),
        "failmode = \"safe\"",
        "",
        &[(u, f.as_str())],
    );
    w.module_stack();
    let (rc, s) = w.login(u, &exposed(&guesses));
    assert_eq!(rc, PAM_AUTH_ERR);
    assert_eq!(s.prompts(), [PROMPT; 3]);
    let (_, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=wrong_code", "tries=3"]);
    assert_eq!(left(&w, u), 2);
    // The control: the outage itself is let in under safe, and one of the user's codes too.
    let (rc, _) = w.login(u, &["123456"]);
    assert_eq!(rc, PAM_SUCCESS);
    let (_, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=unavailable_allowed"]);
    let (rc, _) = w.login(u, &[mine[0].expose()]);
    assert_eq!(rc, PAM_SUCCESS);
    let (_, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=recovery_used", "1 left"]);
}

/// `accept = "unavailable"` (the default) with tru.ID up: the recovery code is refused with
/// the message that tru.ID can be reached, and is not used up; the right TOTP code on the
/// next try lets in.
#[test]
fn accept_unavailable_refuses_a_recovery_code_while_tru_id_is_up() {
    let u = "frank";
    let w = World::new();
    let f = w.enroll(u);
    let codes = give_codes(&w, u, 3);
    config(
        &w,
        &w.api_table(),
        "",
        "accept = \"unavailable\"",
        &[(u, f.as_str())],
    );
    w.module_stack();
    let before = std::fs::read(store(&w).path()).unwrap();
    let (rc, s) = w.login(u, &[codes[0].expose(), &w.code(&f)]);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", s.seen);
    assert_eq!(s.prompts(), [PROMPT; 2]);
    assert_eq!(errors(&s), [REACHABLE]);
    let (all, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=verified", "tries=2"]);
    assert_no_secret(&all, &exposed(&codes), "module log");
    assert_eq!(left(&w, u), 3, "the refused recovery code was used up");
    assert_eq!(std::fs::read(store(&w).path()).unwrap(), before);
    // Only the TOTP code went to tru.ID.
    assert_eq!(verifies(&w), 1);
    assert_eq!(w.emu.stats().verifications, 1);
}

// ---------------------------------------------------------------------------------------------
// Exempt accounts

const BREAKGLASS: &str = "truidbreakglass";

/// `[login] exempt_users` and `exempt_groups` (a real group, groupadd in the private host):
/// the module answers PAM_IGNORE without a prompt and logs not_required at notice. With the
/// module alone in the stack, libpam turns "every module ignored" into PAM_PERM_DENIED, which
/// nothing else the module answers gives (tests/names.rs). A user of neither is asked.
#[test]
fn exempt_users_and_groups_are_not_asked() {
    let (by_name, by_group, asked) = ("truidex1", "truidex2", "truidex3");
    let w = World::new();
    for u in [by_name, by_group, asked] {
        ensure_user(u);
    }
    ensure_group_with(BREAKGLASS, &[by_group]);
    let factors: Vec<String> = [by_name, by_group, asked]
        .iter()
        .map(|u| w.enroll(u))
        .collect();
    config(
        &w,
        &w.api_table(),
        &format!("exempt_users = [\"{by_name}\"]\nexempt_groups = [\"{BREAKGLASS}\"]"),
        "",
        &pairs(&[by_name, by_group, asked], &factors),
    );
    w.module_stack();
    for (u, reason) in [
        (by_name, "user is in [login] exempt_users".to_string()),
        (
            by_group,
            format!("user is in \\\"{BREAKGLASS}\\\" of [login] exempt_groups"),
        ),
    ] {
        let (rc, s) = w.login(u, &[]);
        assert_eq!(rc, PAM_PERM_DENIED, "{u}: not PAM_IGNORE");
        assert!(s.seen.is_empty(), "{u}: {:?}", s.seen);
        let (_, outcomes) = log_lines(&w);
        let line = assert_one_outcome(
            &outcomes,
            &["outcome=not_required", &format!("user=\"{u}\""), &reason],
        );
        assert!(line.starts_with(NOTICE), "{line}");
    }
    let (rc, s) = w.login(asked, &[&w.code(&factors[2])]);
    assert_eq!(rc, PAM_SUCCESS);
    assert_eq!(s.prompts(), [PROMPT]);
    assert_eq!(w.emu.stats().challenges_created, 1);
}

/// An exempt user with the shipped conf/pam.d/sshd-publickey through real sshd: after the key
/// the Unix password is asked (the module stands aside, common-auth decides): nothing or a
/// wrong one is refused, the right one lets in, and no code is asked or sent. An enrolled user
/// outside the exemptions is asked the code only.
#[test]
fn ssh_exempt_users_are_still_asked_their_password() {
    let (by_name, by_group, asked) = ("truidex4", "truidex5", "truidex6");
    let w = World::new();
    for u in [by_name, by_group, asked] {
        ensure_user(u);
        set_password(u);
    }
    ensure_group_with(BREAKGLASS, &[by_group]);
    let factors: Vec<String> = [by_name, by_group, asked]
        .iter()
        .map(|u| w.enroll(u))
        .collect();
    config(
        &w,
        &w.api_table(),
        &format!("exempt_users = [\"{by_name}\"]\nexempt_groups = [\"{BREAKGLASS}\"]"),
        "",
        &pairs(&[by_name, by_group, asked], &factors),
    );
    let sshd = Sshd::start(&w, SshVariant::Publickey);
    for u in [by_name, by_group] {
        let s = sshd.login(SshVariant::Publickey, u, &[]);
        assert!(!s.ok(), "{u}: in on the key alone: {s:#?}");
        assert_eq!(pam_prompts(&s), ["Password: "], "{u}");
        let s = sshd.login(SshVariant::Publickey, u, &["not-the-password"]);
        assert_refused(&s);
        assert_eq!(pam_prompts(&s), ["Password: "], "{u}");
        let s = sshd.login(SshVariant::Publickey, u, &[PASSWORD]);
        assert_logged_in(&s, u, Some(&sshd));
        assert_eq!(pam_prompts(&s), ["Password: "], "{u}");
        let (_, outcomes) = log_lines(&w);
        assert_eq!(outcomes.len(), 3, "{u}: {outcomes:?}");
        assert!(
            outcomes.iter().all(|l| l.contains("outcome=not_required")),
            "{u}: {outcomes:?}"
        );
    }
    assert_eq!(w.emu.stats().challenges_created, 0);
    let s = sshd.login(SshVariant::Publickey, asked, &[&w.code(&factors[2])]);
    assert_logged_in(&s, asked, Some(&sshd));
    assert_eq!(pam_prompts(&s), [PROMPT]);
}

/// A group in both `groups` and `exempt_groups` says two opposite things: a config error
/// (PAM_SERVICE_ERR, logged config_error at err), nothing asked, for everyone.
#[test]
fn a_group_both_asked_and_exempt_is_a_config_error() {
    let u = "truidex7";
    let w = World::new();
    ensure_user(u);
    ensure_group_with(BREAKGLASS, &[u]);
    let f = w.enroll(u);
    config(
        &w,
        &w.api_table(),
        &format!("groups = [\"{BREAKGLASS}\"]\nexempt_groups = [\"{BREAKGLASS}\"]"),
        "",
        &[(u, f.as_str())],
    );
    w.module_stack();
    for who in [u, "alice"] {
        let (rc, s) = w.login(who, &[&w.code(&f)]);
        assert_eq!(rc, PAM_SERVICE_ERR, "{who}");
        assert!(s.seen.is_empty(), "{who}: {:?}", s.seen);
        let (_, outcomes) = log_lines(&w);
        let line = assert_one_outcome(
            &outcomes,
            &["outcome=config_error", "exempt_groups", BREAKGLASS],
        );
        assert!(line.starts_with(ERR), "{line}");
    }
    assert_eq!(w.emu.stats().tokens_issued, 0);
}

// ---------------------------------------------------------------------------------------------
// One prompt for the password and the code

/// conf/pam.d/sshd-combined as written (the module line pointed at the test module, its
/// `combined` argument kept) with the sshd lines its header names, through real sshd's
/// `password` method (ssh answers its own password prompt; sshd hands that to the module's
/// one prompt): password + code logs in; right password + wrong code, wrong password + right
/// code, and the password alone are refused, the last with no code sent; an exempt user logs
/// in with the password alone (pam_unix asks, sshd answers). A keyboard-interactive client
/// of the same sshd is shown the one prompt.
#[test]
fn ssh_password_method_with_one_prompt_for_password_and_code() {
    let (u, exempt, kbd) = ("truidcb1", "truidcb2", "truidcb3");
    let w = World::new();
    for x in [u, exempt, kbd] {
        ensure_user(x);
        set_password(x);
    }
    let f: Vec<String> = [u, exempt, kbd].iter().map(|x| w.enroll(x)).collect();
    config(
        &w,
        &w.api_table(),
        &format!("exempt_users = [\"{exempt}\"]"),
        "",
        &pairs(&[u, exempt, kbd], &f),
    );
    let sshd = Sshd::start(&w, SshVariant::Combined);
    // The module line kept its argument.
    let stack = std::fs::read_to_string(w.path("pam-sshd-combined")).unwrap();
    assert!(
        stack.lines().any(|l| l.starts_with("auth")
            && l.contains("libpam_truid.so")
            && l.ends_with(" combined")),
        "{stack}"
    );
    let ssh_asks = |who: &str| format!("{who}@127.0.0.1's password: ");
    let mut secrets = vec![PASSWORD.to_string()];

    // Password and code: in.
    let code = code_at(&w, &f[0], 0);
    secrets.push(code.clone());
    let s = sshd.login(SshVariant::Combined, u, &[&format!("{PASSWORD}{code}")]);
    assert_logged_in(&s, u, Some(&sshd));
    assert_eq!(s.prompts, [ssh_asks(u)]);
    assert!(
        sshd.log_text()
            .contains(&format!("Accepted password for {u}")),
        "{}",
        sshd.log_text()
    );
    let (mut all, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=verified", "service=\"sshd\""]);
    assert_eq!((verifies(&w), w.emu.stats().verifications), (1, 1));

    // The right password, a wrong code: refused.
    let bad = w.wrong_code(&f[0]);
    let s = sshd.login(SshVariant::Combined, u, &[&format!("{PASSWORD}{bad}")]);
    assert_refused(&s);
    let (more, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=wrong_code", "tries=1"]);
    all.extend(more);
    assert_eq!((verifies(&w), w.emu.stats().verifications), (2, 1));

    // The password alone: refused, and no code sent.
    let s = sshd.login(SshVariant::Combined, u, &[PASSWORD]);
    assert_refused(&s);
    let (more, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=wrong_code"]);
    all.extend(more);
    assert_eq!(verifies(&w), 2, "a code was sent for the password alone");

    // A wrong password with the right code: the module verifies the code, pam_unix refuses.
    let code = code_at(&w, &f[0], 1);
    secrets.push(code.clone());
    let s = sshd.login(
        SshVariant::Combined,
        u,
        &[&format!("not-the-password{code}")],
    );
    assert_refused(&s);
    let (more, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=verified"]);
    all.extend(more);
    assert_eq!(w.emu.stats().verifications, 2);
    assert!(
        sshd.log_text()
            .contains(&format!("Failed password for {u}")),
        "{}",
        sshd.log_text()
    );

    // An exempt user: the password alone (pam_unix asks, sshd answers); a wrong one is refused.
    let s = sshd.login(SshVariant::Combined, exempt, &["not-the-password"]);
    assert_refused(&s);
    let s = sshd.login(SshVariant::Combined, exempt, &[PASSWORD]);
    assert_logged_in(&s, exempt, Some(&sshd));
    assert_eq!(s.prompts, [ssh_asks(exempt)]);
    let (more, outcomes) = log_lines(&w);
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|l| l.contains("outcome=not_required")),
        "{outcomes:?}"
    );
    all.extend(more);

    // keyboard-interactive against the same sshd: the one prompt, shown.
    let code = code_at(&w, &f[2], 0);
    secrets.push(code.clone());
    let s = sshd.login(SshVariant::Password, kbd, &[&format!("{PASSWORD}{code}")]);
    assert_logged_in(&s, kbd, Some(&sshd));
    assert_eq!(pam_prompts(&s), [COMBINED_PROMPT]);
    let (more, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=verified"]);
    all.extend(more);
    assert_eq!(w.emu.stats().verifications, 3);

    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_no_secret(&all, &secrets, "module log");
}

/// PAM_AUTHTOK as pam_exec recorded it, as text (`None`: pam_exec did not run).
fn authtok_text(record: &std::path::Path) -> Option<String> {
    take_authtok(record).map(|t| String::from_utf8(t).unwrap())
}

/// One prompt through real libpam (a conversation that answers one prompt): after the module,
/// PAM_AUTHTOK is the password part, never the code, and pam_unix (`try_first_pass`) checks
/// it; the login succeeds iff both are right. A recovery code in the code's place works
/// (`accept = "always"`), and is used up even when the password after it is wrong, as the
/// snippet says.
#[test]
fn one_prompt_hands_the_password_part_to_pam_unix() {
    let u = "truidcb4";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    let codes = give_codes(&w, u, 2);
    config(
        &w,
        &w.api_table(),
        "",
        "accept = \"always\"",
        &[(u, f.as_str())],
    );
    let (dir, record) = combined_stack_recording_authtok(&w);
    let login = |answer: &str| {
        let mut s = Script::answering(&[answer]);
        let rc = pam_login(&dir, "svc", u, &Items::default(), &mut s);
        assert_eq!(s.prompts(), [COMBINED_PROMPT], "{:?}", s.seen);
        (rc, authtok_text(&record))
    };
    let wrong_pw = "not-the-password";
    let code0 = code_at(&w, &f, 0);
    let code1 = code_at(&w, &f, 1);

    let (rc, tok) = login(&format!("{PASSWORD}{code0}"));
    assert_eq!(rc, PAM_SUCCESS);
    assert!(
        tok.as_deref() == Some(PASSWORD),
        "PAM_AUTHTOK is not the password part"
    );

    // A wrong code stops the stack at the module: no PAM_AUTHTOK, pam_unix never runs.
    let bad = w.wrong_code(&f);
    let (rc, tok) = login(&format!("{PASSWORD}{bad}"));
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(tok.is_none(), "the stack went on after a wrong code");

    // The right code, a wrong password: pam_unix gets the wrong password alone and refuses.
    let (rc, tok) = login(&format!("{wrong_pw}{code1}"));
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(
        tok.as_deref() == Some(wrong_pw),
        "PAM_AUTHTOK is not the password part"
    );
    assert_eq!(w.emu.stats().verifications, 2);

    // A recovery code in the code's place.
    let (rc, tok) = login(&format!("{PASSWORD}{}", codes[0].expose()));
    assert_eq!(rc, PAM_SUCCESS);
    assert!(
        tok.as_deref() == Some(PASSWORD),
        "PAM_AUTHTOK is not the password part"
    );
    assert_eq!(left(&w, u), 1);
    let (rc, tok) = login(&format!("{wrong_pw}{}", codes[1].expose()));
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(
        tok.as_deref() == Some(wrong_pw),
        "PAM_AUTHTOK is not the password part"
    );
    assert_eq!(left(&w, u), 0);
    assert_eq!(verifies(&w), 3, "a recovery code was sent to tru.ID");

    let (all, outcomes) = log_lines(&w);
    let names: Vec<&str> = outcomes
        .iter()
        .map(|l| {
            l.split("outcome=")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or("")
        })
        .collect();
    assert_eq!(
        names,
        [
            "verified",
            "wrong_code",
            "verified",
            "recovery_used",
            "recovery_used"
        ]
    );
    let mut secrets = exposed(&codes);
    secrets.extend([PASSWORD, wrong_pw, code0.as_str(), code1.as_str()]);
    assert_no_secret(&all, &secrets, "module log");
}

/// One prompt under `failmode = "safe"` with tru.ID unreachable: the module lets the login in
/// without the second factor (unavailable_allowed), and the stack's pam_unix must still check
/// the password. It can only do so without a second prompt if the module hands it the
/// password part, as it does after a verified code: a one-prompt client (sshd's `password`
/// method, a screen locker) answers any further prompt with the whole line again.
#[test]
fn one_prompt_under_safe_with_tru_id_down_still_hands_the_password_on() {
    let u = "truidcb5";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    config(
        &w,
        &down_api(&w),
        "failmode = \"safe\"",
        "",
        &[(u, f.as_str())],
    );
    let (dir, record) = combined_stack_recording_authtok(&w);
    let mut s = Script::answering(&[&format!("{PASSWORD}123456")]);
    let rc = pam_login(&dir, "svc", u, &Items::default(), &mut s);
    let (_, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=unavailable_allowed"]);
    assert_eq!(
        s.prompts(),
        [COMBINED_PROMPT],
        "a second prompt: {:?}",
        s.seen
    );
    assert!(
        authtok_text(&record).as_deref() == Some(PASSWORD),
        "PAM_AUTHTOK is not the password part"
    );
    assert_eq!(rc, PAM_SUCCESS);
}

/// What the missing PAM_AUTHTOK above does to a real login: conf/pam.d/sshd-combined through
/// real sshd's `password` method, `failmode = "safe"`, tru.ID unreachable. sshd-password lets
/// the right password in during such an outage; here pam_unix asks for the password again,
/// sshd answers that prompt with the whole line (password and code), and the user is out.
#[test]
fn ssh_password_method_one_prompt_under_safe_with_tru_id_down() {
    let u = "truidcb6";
    let w = World::new();
    ensure_user(u);
    set_password(u);
    let f = w.enroll(u);
    config(
        &w,
        &down_api(&w),
        "failmode = \"safe\"",
        "",
        &[(u, f.as_str())],
    );
    let sshd = Sshd::start(&w, SshVariant::Combined);
    // A wrong password is refused whatever the outage.
    let s = sshd.login(SshVariant::Combined, u, &["not-the-password123456"]);
    assert_refused(&s);
    let (_, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=unavailable_allowed"]);
    let s = sshd.login(SshVariant::Combined, u, &[&format!("{PASSWORD}123456")]);
    let (_, outcomes) = log_lines(&w);
    assert_one_outcome(&outcomes, &["outcome=unavailable_allowed"]);
    assert_logged_in(&s, u, Some(&sshd));
}
