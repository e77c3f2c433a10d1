//! Users as NSS names them (issue 14, item 3): directory names (`bob@ad.example.com`,
//! `AD\bob`), a case-insensitive directory (`Alice` is the enrolled `alice`), names NSS does not
//! know, and `lookup = true` with names that try to change the search.
//!
//! Each login runs through real libpam in a child process (this test binary again, its
//! `nss_driver`) with nss_wrapper preloaded, so NSS is nss_wrapper's passwd and group files and,
//! for the case-insensitive directory, a real NSS module compiled here from C that answers
//! `getpwnam("Alice")` with `pw_name = "alice"`, as SSSD and winbind do.

#[allow(unused_imports)] // common re-exports what other test files use
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What libpam answers when every module of the stack answered PAM_IGNORE (here the module
/// alone is the stack): the module's PAM_IGNORE, and nothing else it answers, gives this.
const STOOD_ASIDE: i32 = PAM_PERM_DENIED;

/// Where nss_wrapper finds the accounts.
struct Nss {
    dir: tempfile::TempDir,
    /// The case-insensitive module, when asked for.
    module: Option<PathBuf>,
}

impl Nss {
    /// `users` as passwd lines (group `users`, GID 2000), and the groups `(name, members)`.
    fn new(users: &[&str], groups: &[(&str, &[&str])]) -> Nss {
        let dir = tempfile::tempdir().unwrap();
        let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
        for (i, u) in users.iter().enumerate() {
            passwd.push_str(&format!(
                "{u}:x:{}:2000::/nonexistent:/bin/false\n",
                3000 + i
            ));
        }
        let mut group = String::from("root:x:0:\nusers:x:2000:\n");
        for (i, (g, members)) in groups.iter().enumerate() {
            group.push_str(&format!("{g}:x:{}:{}\n", 4000 + i, members.join(",")));
        }
        std::fs::write(dir.path().join("passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("group"), group).unwrap();
        Nss { dir, module: None }
    }

    /// Adds the case-insensitive directory: any case of `alice` is the account `alice`.
    fn with_case_insensitive_alice(mut self) -> Nss {
        let c = self.dir.path().join("ci.c");
        std::fs::write(&c, CASE_INSENSITIVE_NSS).unwrap();
        let so = self.dir.path().join("libnss_ci.so");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-Wall", "-Werror", "-o"])
            .arg(&so)
            .arg(&c)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.module = Some(so);
        self
    }

    /// Makes `cmd` run with this NSS.
    fn apply(&self, cmd: &mut Command) {
        cmd.env("LD_PRELOAD", "libnss_wrapper.so")
            .env("NSS_WRAPPER_PASSWD", self.dir.path().join("passwd"))
            .env("NSS_WRAPPER_GROUP", self.dir.path().join("group"));
        if let Some(so) = &self.module {
            cmd.env("NSS_WRAPPER_MODULE_SO_PATH", so)
                .env("NSS_WRAPPER_MODULE_FN_PREFIX", "ci");
        }
    }
}

/// An NSS module (glibc's `_nss_<name>_getpwnam_r` interface) that matches `alice` in any case
/// and answers with the canonical lower-case name, as SSSD with `case_sensitive = false` does.
const CASE_INSENSITIVE_NSS: &str = r#"
#include <errno.h>
#include <nss.h>
#include <pwd.h>
#include <string.h>
#include <strings.h>

static enum nss_status fill(struct passwd *pw, char *buf, size_t len, int *err) {
    if (len < 64) { *err = ERANGE; return NSS_STATUS_TRYAGAIN; }
    strcpy(buf, "alice"); pw->pw_name = buf;
    strcpy(buf + 8, "x"); pw->pw_passwd = buf + 8;
    strcpy(buf + 16, "/"); pw->pw_dir = buf + 16; pw->pw_gecos = buf + 16;
    strcpy(buf + 24, "/bin/false"); pw->pw_shell = buf + 24;
    pw->pw_uid = 64500; pw->pw_gid = 2000;
    return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_ci_getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t len, int *err) {
    if (strcasecmp(name, "alice") != 0) { *err = ENOENT; return NSS_STATUS_NOTFOUND; }
    return fill(pw, buf, len, err);
}

enum nss_status _nss_ci_getpwuid_r(uid_t uid, struct passwd *pw, char *buf, size_t len, int *err) {
    if (uid != 64500) { *err = ENOENT; return NSS_STATUS_NOTFOUND; }
    return fill(pw, buf, len, err);
}
"#;

/// One login through real libpam in a child process whose NSS is `nss`.
fn login(
    w: &World,
    nss: &Nss,
    service: &str,
    user: &str,
    ruser: Option<&str>,
    answers: &[&str],
) -> (i32, Vec<Seen>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "nss_driver",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("NAMES_DRIVER", "1")
    .env("NAMES_CONFDIR", w.path("pam.d"))
    .env("NAMES_SERVICE", service)
    .env("NAMES_USER", user)
    .env("NAMES_ANSWERS", answers.join("\n"));
    if let Some(r) = ruser {
        cmd.env("NAMES_RUSER", r);
    }
    nss.apply(&mut cmd);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut rc = None;
    let mut seen = Vec::new();
    for line in stdout.lines() {
        if let Some(n) = line.strip_prefix("NAMES_RC=") {
            rc = n.parse().ok();
        } else if let Some(rest) = line.strip_prefix("NAMES_SEEN\t") {
            let (kind, text) = rest.split_once('\t').unwrap();
            seen.push(match kind {
                "prompt" => Seen::Prompt(text.into()),
                "echo" => Seen::EchoOnPrompt(text.into()),
                "info" => Seen::Info(text.into()),
                _ => Seen::Error(text.into()),
            });
        }
    }
    let rc = rc.unwrap_or_else(|| {
        panic!(
            "the driver gave no result: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (rc, seen)
}

/// The child's side: one `pam_authenticate` as the parent describes it, printed back.
#[test]
#[ignore = "run by the other tests of this file, in a child process where NSS is nss_wrapper"]
fn nss_driver() {
    if std::env::var_os("NAMES_DRIVER").is_none() {
        return;
    }
    let var = |k: &str| std::env::var(k).ok();
    let answers = var("NAMES_ANSWERS").unwrap_or_default();
    let mut s = Script::answering(
        &answers
            .split('\n')
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>(),
    );
    let rc = pam_login(
        Path::new(&var("NAMES_CONFDIR").unwrap()),
        &var("NAMES_SERVICE").unwrap(),
        &var("NAMES_USER").unwrap(),
        &Items {
            rhost: Some("198.51.100.9".into()),
            ruser: var("NAMES_RUSER"),
            ..Default::default()
        },
        &mut s,
    );
    // libtest's own "test nss_driver ... " has no newline yet.
    println!();
    for m in &s.seen {
        let (kind, text) = match m {
            Seen::Prompt(t) => ("prompt", t),
            Seen::EchoOnPrompt(t) => ("echo", t),
            Seen::Info(t) => ("info", t),
            Seen::Error(t) => ("error", t),
        };
        println!("NAMES_SEEN\t{kind}\t{}", text.replace('\n', " "));
    }
    println!("NAMES_RC={rc}");
}

/// A config: the emulator's `[api]`, `login` lines, then `users` lines as given (TOML keys,
/// quoted where they must be).
fn config(w: &World, login: &str, users: &[String]) {
    let mut text = w.api_table();
    text.push_str(&format!(
        "\n[login]\nprompt = \"tru.ID code: \"\n{login}\n\n[users]\n"
    ));
    for u in users {
        text.push_str(u);
        text.push('\n');
    }
    w.write_config(&text);
    w.module_stack();
}

fn prompts(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| matches!(s, Seen::Prompt(_))).count()
}

#[test]
fn directory_names_stand_aside_or_are_asked_as_any_user() {
    let w = World::new();
    let nss = Nss::new(
        &["bob@ad.example.com", "AD\\bob"],
        &[("domain admins@ad.example.com", &["bob@ad.example.com"])],
    );
    let f = w.enroll("bob@ad.example.com");
    let g = w.enroll("AD\\bob");
    // Not enrolled, unenrolled = "ignore": the module stands aside (STOOD_ASIDE, not AUTH_ERR).
    config(&w, "unenrolled = \"ignore\"", &[]);
    for user in ["bob@ad.example.com", "AD\\bob"] {
        let (rc, seen) = login(&w, &nss, "svc", user, None, &[]);
        assert_eq!(rc, STOOD_ASIDE, "{user}: {:?}", w.outcomes());
        assert!(seen.is_empty(), "{seen:?}");
    }
    let lines = w.outcomes();
    assert!(
        lines[1].contains("outcome=not_enrolled_ignored user=\"AD\\\\bob\""),
        "{lines:?}"
    );

    // Enrolled under quoted keys: asked for the code, verified, a wrong code refused.
    config(
        &w,
        "unenrolled = \"ignore\"\ntries = 1",
        &[
            format!("\"bob@ad.example.com\" = \"{f}\""),
            format!("'AD\\bob' = \"{g}\""),
        ],
    );
    for (user, factor) in [("bob@ad.example.com", &f), ("AD\\bob", &g)] {
        let (rc, seen) = login(&w, &nss, "svc", user, None, &[&w.code(factor)]);
        assert_eq!(rc, PAM_SUCCESS, "{user}: {:?}", w.outcomes());
        assert_eq!(seen, [Seen::Prompt("tru.ID code: ".into())]);
        let (rc, _) = login(&w, &nss, "svc", user, None, &[&w.wrong_code(factor)]);
        assert_eq!(rc, PAM_AUTH_ERR, "{user}");
    }
    assert!(w
        .emu
        .last_challenges()
        .iter()
        .all(|c| c.factor_id == f || c.factor_id == g));

    // Outside [login] groups (matched through NSS): stands aside; inside: asked.
    config(
        &w,
        "groups = [\"domain admins@ad.example.com\"]",
        &[
            format!("\"bob@ad.example.com\" = \"{f}\""),
            format!("'AD\\bob' = \"{g}\""),
        ],
    );
    let (rc, seen) = login(&w, &nss, "svc", "AD\\bob", None, &[]);
    assert_eq!(rc, STOOD_ASIDE, "{:?}", w.outcomes());
    assert!(seen.is_empty());
    // The next step's code: this step's was spent above.
    let next = w.emu.code(&f, 1).unwrap();
    let (rc, _) = login(&w, &nss, "svc", "bob@ad.example.com", None, &[&next]);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", w.outcomes());
}

#[test]
fn a_case_insensitive_directory_cannot_wave_alice_through_as_alice_typed_otherwise() {
    let w = World::new();
    let nss = Nss::new(&[], &[]).with_case_insensitive_alice();
    let f = w.enroll("alice");
    config(
        &w,
        "unenrolled = \"ignore\"\ntries = 1",
        &[format!("alice = \"{f}\"")],
    );
    for typed in ["Alice", "ALICE"] {
        // Asked for alice's code, not waved through; a wrong code refused.
        let (rc, seen) = login(&w, &nss, "svc", typed, None, &[&w.wrong_code(&f)]);
        assert_eq!(rc, PAM_AUTH_ERR, "{typed}: {:?}", w.outcomes());
        assert_eq!(prompts(&seen), 1, "{typed}: {seen:?}");
        let line = w.outcomes().pop().unwrap();
        assert!(
            line.contains(&format!("outcome=wrong_code user=\"{typed}\""))
                && line.ends_with("account=\"alice\""),
            "{line}"
        );
    }
    let (rc, _) = login(&w, &nss, "svc", "Alice", None, &[&w.code(&f)]);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", w.outcomes());
    assert!(w
        .emu
        .last_challenges()
        .last()
        .unwrap()
        .reference_id
        .as_deref()
        .unwrap()
        .contains("/alice/"));

    // [users] written with the typed case: NSS's name is not in it, and the module refuses
    // rather than stand the enrolled person aside.
    config(&w, "unenrolled = \"ignore\"", &[format!("Alice = \"{f}\"")]);
    let (rc, seen) = login(&w, &nss, "svc", "Alice", None, &[]);
    assert_eq!(rc, PAM_AUTH_ERR, "{:?}", w.outcomes());
    assert!(seen.is_empty());
    assert!(w.outcomes().pop().unwrap().contains("outcome=refused"));

    // su = "caller": PAM_RUSER goes through NSS the same way.
    config(
        &w,
        "unenrolled = \"ignore\"\ntries = 1\nsu = \"caller\"",
        &[format!("alice = \"{f}\"")],
    );
    std::fs::copy(w.path("pam.d/svc"), w.path("pam.d/su")).unwrap();
    let (rc, seen) = login(&w, &nss, "su", "root", Some("ALICE"), &[&w.wrong_code(&f)]);
    assert_eq!(rc, PAM_AUTH_ERR, "{:?}", w.outcomes());
    assert_eq!(prompts(&seen), 1);

    // lookup = true with a prefix: the search is for "unix:alice", whatever the case typed.
    let h = w.enroll("unix:alice");
    config(
        &w,
        "unenrolled = \"ignore\"\nlookup = true\nlookup_prefix = \"unix:\"",
        &[],
    );
    let (rc, _) = login(&w, &nss, "svc", "aLiCe", None, &[&w.code(&h)]);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", w.outcomes());
    assert_eq!(w.emu.last_challenges().last().unwrap().factor_id, h);
}

#[test]
fn a_name_nss_does_not_know_is_denied_under_deny_and_ignore() {
    let w = World::new();
    // carol exists and is not enrolled; alice is enrolled but NSS does not (or no longer) know
    // her; ghost is nobody.
    let nss = Nss::new(&["carol"], &[]);
    let f = w.enroll("alice");
    let users = [format!("alice = \"{f}\"")];
    config(&w, "unenrolled = \"ignore\"", &users);
    for user in ["ghost", "alice", "Carol"] {
        let (rc, seen) = login(&w, &nss, "svc", user, None, &[]);
        assert_eq!(rc, PAM_AUTH_ERR, "{user}: {:?}", w.outcomes());
        assert!(seen.is_empty(), "{seen:?}");
        let line = w.outcomes().pop().unwrap();
        assert!(line.contains("outcome=unknown_user"), "{line}");
    }
    // deny: the same prompts and messages as an existing user who is not enrolled.
    config(&w, "unenrolled = \"deny\"", &users);
    let answers = ["111111", "abc", "222222"];
    let (rc, unenrolled) = login(&w, &nss, "svc", "carol", None, &answers);
    assert_eq!(rc, PAM_AUTH_ERR);
    for user in ["ghost", "alice"] {
        let (rc, seen) = login(&w, &nss, "svc", user, None, &answers);
        assert_eq!(rc, PAM_AUTH_ERR, "{user}");
        assert_eq!(seen, unenrolled, "{user}");
        let line = w.outcomes().pop().unwrap();
        assert!(line.contains("outcome=unknown_user"), "{line}");
    }
    assert_eq!(prompts(&unenrolled), 3);
    assert_eq!(w.emu.stats().challenges_created, 0, "tru.ID was asked");
}

#[test]
fn lookup_with_hostile_names_finds_only_the_factor_of_that_exact_name() {
    let w = World::new();
    let hostile = "a\"||external_user_id==\"b";
    let nss = Nss::new(&["alice", "b", hostile, "a,b", "*", "a*"], &[]);
    let victim = w.enroll("alice");
    let b = w.enroll("b");
    let ab = w.enroll("a,b");
    config(&w, "unenrolled = \"ignore\"\nlookup = true", &[]);
    // No factor has these exact external user IDs: nothing is asked, nobody else's factor is
    // challenged.
    for user in [hostile, "*"] {
        let (rc, seen) = login(&w, &nss, "svc", user, None, &[]);
        assert_eq!(rc, STOOD_ASIDE, "{user}: {:?}", w.outcomes());
        assert!(seen.is_empty(), "{user}: {seen:?}");
    }
    assert_eq!(w.emu.stats().challenges_created, 0);
    // `a,b` has its own factor: found, asked, verified; only that factor challenged.
    let (rc, _) = login(&w, &nss, "svc", "a,b", None, &[&w.code(&ab)]);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", w.outcomes());
    let challenged: Vec<String> = w
        .emu
        .last_challenges()
        .into_iter()
        .map(|c| c.factor_id)
        .collect();
    assert_eq!(challenged, std::slice::from_ref(&ab));
    assert!(![victim, b].iter().any(|f| challenged.contains(f)));
    // A wildcard that fills a page with other factors proves nothing: denied, not ignored.
    for i in 0..20 {
        w.emu.seed_factor(&format!("a{i}"), FactorType::Totp);
    }
    let (rc, seen) = login(&w, &nss, "svc", "a*", None, &[]);
    assert_eq!(rc, PAM_AUTH_ERR, "{:?}", w.outcomes());
    assert!(seen.is_empty());
    let line = w.outcomes().pop().unwrap();
    assert!(
        line.contains("outcome=refused") && line.contains("full page"),
        "{line}"
    );
}

/// `truid-pam enroll USER` with this NSS: reads the secret it prints and answers with the code
/// an app computes from it. The CLI's output and whether it succeeded.
fn enroll(w: &World, nss: &Nss, user: &str) -> (bool, String) {
    use std::io::{BufRead, Read, Write};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_truid-pam"));
    cmd.arg("--config")
        .arg(w.path("pam_truid.toml"))
        .args(["enroll", user, "--phone", "+447700900001"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    nss.apply(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child_out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let mut child = Kill(child);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if child_out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if let Some(secret) = line.trim().strip_prefix("Or enter this key by hand: ") {
            let key = truid_emulator::totp::decode_secret(secret).unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            writeln!(stdin, "{}", truid_emulator::totp::code(&key, now)).unwrap();
        }
    }
    drop(stdin);
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), seen + &err)
}

#[test]
fn enroll_writes_the_name_nss_gives_quoted_and_with_the_lookup_prefix() {
    let w = World::new();
    let nss = Nss::new(&["AD\\bob"], &[]).with_case_insensitive_alice();
    config(&w, "lookup_prefix = \"unix:\"\ntries = 1", &[]);
    let (ok, out) = enroll(&w, &nss, "ALICE");
    assert!(ok, "{out}");
    let (ok, out) = enroll(&w, &nss, "AD\\bob");
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(w.path("pam_truid.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let users = doc["users"].as_table().unwrap();
    assert_eq!(users.len(), 2, "{text}");
    let alice = users["alice"].as_str().unwrap().to_string();
    let bob = users["AD\\bob"].as_str().unwrap().to_string();
    // Written as a quoted key (toml_edit picks a literal string here).
    assert!(text.contains("\n'AD\\bob' = "), "{text}");
    // The factors carry the prefixed external user IDs (seeding an existing one returns it).
    assert_eq!(
        w.emu.seed_factor("unix:alice", FactorType::Totp).factor_id,
        alice
    );
    assert_eq!(
        w.emu
            .seed_factor("unix:AD\\bob", FactorType::Totp)
            .factor_id,
        bob
    );
    // And the module asks for them, whatever the case typed.
    let next = w.emu.code(&alice, 1).unwrap();
    let (rc, _) = login(&w, &nss, "svc", "Alice", None, &[&next]);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", w.outcomes());
    // A name NSS does not know is not enrolled, and the file is left as it was.
    let (ok, out) = enroll(&w, &nss, "ghost");
    assert!(!ok && out.contains("no user \"ghost\""), "{out}");
    assert_eq!(
        std::fs::read_to_string(w.path("pam_truid.toml")).unwrap(),
        text
    );
}
