//! truid-pam against the emulator: enroll as a person would (the test reads the secret the CLI
//! prints and computes the code as the phone does), then log in through the module; list,
//! deactivate, check, test, project; the config edits.

#[allow(unused_imports)] // common re-exports what other test files use
mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CLI: &str = env!("CARGO_BIN_EXE_truid-pam");

/// Kills the child by PID when the test ends, also when it fails.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(cfg: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(CLI)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The config every CLI test starts from, with comments that edits must keep.
fn base_config(w: &World) -> String {
    let i = w.emu.info();
    format!(
        "# pam_truid test config: these comments must survive every edit\n{}\n[login]\ntries = 2 # two tries\n\n[users]\n# enrolled users below\n\n[console]\nworkspace_id = \"{}\"\nproject_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
        w.api_table(),
        i.workspace_id,
        i.project_id,
        i.workspace_client_id,
        i.workspace_client_secret
    )
}

/// Runs `enroll`, reads the secret it prints, answers with the code an app computes from it.
fn enroll(cfg: &Path, user: &str) -> (Output, String) {
    enroll_with(cfg, user, &[])
}

/// `enroll` with more arguments.
fn enroll_with(cfg: &Path, user: &str, more: &[&str]) -> (Output, String) {
    let mut child = Guard(
        Command::new(CLI)
            .arg("--config")
            .arg(cfg)
            .args(["enroll", user, "--phone", "+447700900001"])
            .args(more)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut seen = String::new();
    let secret = loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "enroll ended early: {seen}"
        );
        seen.push_str(&line);
        if let Some(s) = line.trim().strip_prefix("Or enter this key by hand: ") {
            break s.to_string();
        }
    };
    let key = truid_emulator::totp::decode_secret(&secret).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = truid_emulator::totp::code(&key, now);
    let mut stdin = child.0.stdin.take().unwrap();
    writeln!(stdin, "{code}").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    seen.push_str(&rest);
    (
        Output {
            status,
            stdout: seen.into_bytes(),
            stderr: stderr.into_bytes(),
        },
        code,
    )
}

fn factor_of(cfg: &Path, user: &str) -> Option<String> {
    let text = std::fs::read_to_string(cfg).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    doc.get("users")?.get(user)?.as_str().map(str::to_string)
}

#[test]
fn enroll_then_log_in_with_the_new_factor() {
    let w = World::new();
    let cfg = w.write_config(&base_config(&w));
    let before = std::fs::read_to_string(&cfg).unwrap();
    let (out, _) = enroll(&cfg, "erin");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Scan this QR code"));
    let factor = factor_of(&cfg, "erin").expect("erin in [users]");
    // Byte for byte, the file is the old one plus the new lines.
    let after = std::fs::read_to_string(&cfg).unwrap();
    let added = format!("erin = \"{factor}\"\n");
    assert!(
        after.contains(&format!("[users]\n{added}")) || after.contains(&format!("below\n{added}")),
        "{after}"
    );
    assert_eq!(
        after.replacen(&added, "", 1),
        before + "\n[phones]\nerin = \"+447700900001\"\n",
        "{after}"
    );
    let meta = std::fs::metadata(&cfg).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // The factor is ACTIVE at tru.ID and the module lets erin in with the phone's next code
    // (the current one was spent on activation).
    w.module_stack();
    let (rc, _) = w.login("erin", &[&w.emu.code(&factor, 1).unwrap()]);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", w.outcomes());
    // Enrolled already: refused without --force, config untouched.
    let again = cli(&cfg, &["enroll", "erin", "--phone", "+447700900001"], "");
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already enrolled"),
        "{}",
        text(&again)
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), after);
}

#[test]
fn enroll_bad_input_leaves_the_config_untouched() {
    let w = World::new();
    let cfg = w.write_config(&base_config(&w));
    let before = std::fs::read_to_string(&cfg).unwrap();
    for (args, stdin, expect) in [
        (
            vec!["enroll", "erin", "--phone", "07700 900000"],
            "",
            "not an E.164",
        ),
        (
            vec!["enroll", "bad\u{1b}user", "--phone", "+447700900001"],
            "",
            "not a Unix user name",
        ),
        (
            vec!["enroll", "frank", "--phone", "+447700900002"],
            "000000\n111111\n222222\n",
            "left PENDING",
        ),
        (
            vec!["enroll", "gina", "--phone", "+447700900003"],
            "",
            "left PENDING",
        ),
    ] {
        let out = cli(&cfg, &args, stdin);
        assert!(!out.status.success(), "{args:?}");
        let t = text(&out);
        assert!(t.contains(expect), "{args:?}: {t}");
        assert!(t.lines().last().unwrap().starts_with("truid-pam: "), "{t}");
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), before, "{args:?}");
    }
}

#[test]
fn list_check_deactivate() {
    let w = World::new();
    let cfg = w.write_config(&base_config(&w));
    let (out, _) = enroll(&cfg, "hana");
    assert!(out.status.success(), "{}", text(&out));
    let factor = factor_of(&cfg, "hana").unwrap();

    let check = cli(&cfg, &["check"], "");
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains(&format!("ok   user hana: {factor} ACTIVE")));

    let list = cli(&cfg, &["list", "--json"], "");
    assert!(list.status.success(), "{}", text(&list));
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows[0]["user"], "hana");
    assert_eq!(rows[0]["status"], "ACTIVE");
    assert_eq!(rows[0]["type"], "TOTP");
    assert_eq!(rows[0]["in_config"], true);

    let d = cli(&cfg, &["deactivate", "hana"], "");
    assert!(d.status.success(), "{}", text(&d));
    assert_eq!(factor_of(&cfg, "hana"), None);
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("hana"));
    // The external ID is free again: hana can enroll anew.
    let (out, _) = enroll(&cfg, "hana");
    assert!(out.status.success(), "{}", text(&out));
    let d = cli(&cfg, &["deactivate", "nobody"], "");
    assert!(!d.status.success() && text(&d).contains("not in [users]"));
}

#[test]
fn check_reports_each_broken_thing_and_fails() {
    let w = World::new();
    let f = w.enroll("ivan");
    let good = format!("{}\n[users]\nivan = \"{f}\"\n", w.api_table());
    let cfg = w.write_config(&good);
    assert!(cli(&cfg, &["check"], "").status.success());
    let cases: Vec<(String, &str)> = vec![
        (good.replace("timeout = 5", "timeout = 0"), "timeout"),
        (
            good.replace(&w.emu.info().client_secret, "wrong-secret"),
            "token refused",
        ),
        (
            good.replace(&f, "5995afaf-f5d1-47ab-b586-50ad46904eec"),
            "5995afaf-f5d1-47ab-b586-50ad46904eec",
        ),
        (
            good.replace(&w.emu.info().base_url, "https://127.0.0.1:9"),
            "cannot connect",
        ),
    ];
    for (text_cfg, expect) in cases {
        w.write_config(&text_cfg);
        let out = cli(&cfg, &["check"], "");
        assert!(!out.status.success(), "{expect}");
        let t = text(&out);
        let fail = t.lines().find(|l| l.starts_with("FAIL")).unwrap_or("");
        assert!(fail.contains(expect), "{expect}: {t}");
    }
    w.write_config(&good);
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = cli(&cfg, &["check"], "");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("writable by group or others"),
        "{}",
        text(&out)
    );
}

#[test]
fn test_command_runs_the_module_flow() {
    let w = World::new();
    let f = w.enroll("judy");
    let cfg = w.config("", &[("judy", &f)]);
    let out = cli(&cfg, &["test", "judy"], &format!("{}\n", w.code(&f)));
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("tru.ID code: "), "{t}");
    assert!(
        t.contains("PAM_SUCCESS") && t.contains("outcome=verified"),
        "{t}"
    );
    let out = cli(&cfg, &["test", "judy"], "000000\n111111\n222222\n");
    assert!(!out.status.success());
    assert!(text(&out).contains("PAM_AUTH_ERR"), "{}", text(&out));
}

#[test]
fn project_set_merges_and_show_reads_back() {
    let w = World::new();
    let cfg = w.write_config(&base_config(&w));
    let out = cli(
        &cfg,
        &[
            "project",
            "set",
            "--issuer-name",
            "Acme SSH",
            "--message",
            "Log in?",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    let show = cli(&cfg, &["project", "show", "--json"], "");
    assert!(show.status.success(), "{}", text(&show));
    let p: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let a = &p["configuration"]["authenticator"];
    assert_eq!(a["issuer_name"], "Acme SSH");
    assert_eq!(a["challenge_default_message"], "Log in?");
    // What the set did not name is still there.
    assert!(p["configuration"].as_object().unwrap().len() > 1, "{p}");
    let out = cli(
        &cfg,
        &[
            "project",
            "set",
            "--callback-url",
            "https://hooks.example/truid",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    let p: serde_json::Value =
        serde_json::from_slice(&cli(&cfg, &["project", "show", "--json"], "").stdout).unwrap();
    assert_eq!(
        p["configuration"]["authenticator"]["issuer_name"],
        "Acme SSH"
    );
    // New factors carry the issuer name.
    let (out, _) = enroll(&cfg, "kim");
    assert!(text(&out).contains("Scan"), "{}", text(&out));
}

#[test]
fn concurrent_enrolls_both_land_and_a_killed_writer_leaves_a_valid_file() {
    let w = World::new();
    let cfg = w.write_config(&base_config(&w));
    let users = ["lee", "max", "ned", "oli"];
    std::thread::scope(|s| {
        for u in users {
            let cfg = &cfg;
            s.spawn(move || {
                let (out, _) = enroll(cfg, u);
                assert!(out.status.success(), "{u}: {}", text(&out));
            });
        }
    });
    for u in users {
        assert!(factor_of(&cfg, u).is_some(), "{u} lost");
    }
    // Writers killed at random points (SIGKILL) while others write: the file always parses
    // as a config the module accepts.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut killed = 0;
    while killed < 20 && Instant::now() < deadline {
        let mut c = Guard(
            Command::new(CLI)
                .arg("--config")
                .arg(&cfg)
                .args(["deactivate", users[killed % users.len()]])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_micros(500 * (killed as u64 % 7)));
        let _ = c.0.kill();
        let _ = c.0.wait();
        killed += 1;
        let text = std::fs::read_to_string(&cfg).unwrap();
        pam_truid::config::Config::parse(&cfg, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.starts_with("# pam_truid test config"), "{text}");
    }
    assert!(pam_truid::config::Config::load(&cfg).is_ok());
}

#[test]
fn the_qr_png_goes_only_to_a_new_private_file() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let w = World::new();
    let cfg = w.write_config(&base_config(&w));
    // An attacker's plants: a link to a file they will read later, and a file open to all.
    let target = w.path("attacker-reads-this");
    std::fs::write(&target, "").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).unwrap();
    let link = w.path("qr-link.png");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let open = w.path("qr-open.png");
    std::fs::write(&open, "").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    let dangling = w.path("qr-dangling.png");
    std::os::unix::fs::symlink(w.path("not-yet"), &dangling).unwrap();
    let requests = || w.emu.stats().requests.values().sum::<u64>();
    let requests_before = requests();
    for planted in [&link, &open, &dangling] {
        let out = cli(
            &cfg,
            &[
                "enroll",
                "lena",
                "--phone",
                "+447700900009",
                "--qr-png",
                planted.to_str().unwrap(),
            ],
            "",
        );
        let t = text(&out);
        assert!(!out.status.success(), "{}: {t}", planted.display());
        assert!(
            t.contains("exists") && t.contains("remove it first or pick another path"),
            "{}: {t}",
            planted.display()
        );
    }
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"",
        "written through the link"
    );
    assert_eq!(
        std::fs::read(&open).unwrap(),
        b"",
        "written into the open file"
    );
    assert!(
        !w.path("not-yet").exists(),
        "created through the dangling link"
    );
    assert_eq!(
        requests(),
        requests_before,
        "refused before tru.ID was asked: no PENDING factor"
    );
    assert_eq!(factor_of(&cfg, "lena"), None);

    // A new path: written, 0600, a PNG.
    let new = w.path("qr-new.png");
    let (out, _) = enroll_with(&cfg, "lena", &["--qr-png", new.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let m = std::fs::symlink_metadata(&new).unwrap();
    assert!(m.is_file());
    assert_eq!(m.mode() & 0o777, 0o600);
    assert_eq!(m.uid(), 0);
    assert!(std::fs::read(&new).unwrap().starts_with(b"\x89PNG\r\n"));
}

/// A config with the emulator's `[api]`, `[login]` and `[recovery]` lines (the recovery file in
/// the test's folder, under `rc/`), and `[users]`.
fn recovery_config(w: &World, login: &str, recovery: &str, users: &[(&str, &str)]) -> PathBuf {
    let mut text = format!(
        "{}\n[login]\n{login}\n\n[recovery]\nfile = \"{}\"\n{recovery}\n\n[users]\n",
        w.api_table(),
        w.path("rc/recovery.toml").display()
    );
    for (u, f) in users {
        text.push_str(&format!("{u} = \"{f}\"\n"));
    }
    w.write_config(&text)
}

/// The codes `recovery` printed: the lines shaped `xxxx-xxxx-xxxx`.
fn printed_codes(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let b = l.as_bytes();
            b.len() == 14
                && b.iter().enumerate().all(|(i, c)| match i {
                    4 | 9 => *c == b'-',
                    _ => b"0123456789abcdefghjkmnpqrstvwxyz".contains(c),
                })
        })
        .map(str::to_string)
        .collect()
}

/// The hashes the recovery file holds for `user`.
fn stored_hashes(w: &World, user: &str) -> Vec<String> {
    let text = std::fs::read_to_string(w.path("rc/recovery.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    doc.get("codes")
        .and_then(|c| c.get(user))
        .and_then(|h| h.as_array())
        .map(|a| a.iter().map(|h| h.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn recovery_codes_are_shown_once_stored_hashed_replaced_and_revoked() {
    use std::os::unix::fs::MetadataExt;
    let w = World::new();
    let f = w.enroll("alice");
    let cfg = recovery_config(&w, "", "accept = \"always\"", &[("alice", &f)]);
    let file = w.path("rc/recovery.toml");

    let out = cli(&cfg, &["recovery", "alice", "--count", "4"], "");
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    let first = printed_codes(&out);
    assert_eq!(first.len(), 4, "{t}");
    for c in &first {
        assert_eq!(t.matches(c.as_str()).count(), 1, "shown once: {t}");
    }
    let mut unique = first.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{t}");
    assert!(
        t.contains("shown this once") && t.contains("Each works once"),
        "{t}"
    );
    assert!(t.contains("accepted always"), "{t}");

    // Only argon2id hashes, no code in any form; 0600 in a 0700 folder, root's.
    let stored = std::fs::read_to_string(&file).unwrap();
    for c in &first {
        assert!(!stored.contains(c.as_str()), "{stored}");
        assert!(!stored.contains(&c.replace('-', "")), "{stored}");
    }
    let hashes = stored_hashes(&w, "alice");
    assert_eq!(hashes.len(), 4, "{stored}");
    assert!(
        hashes.iter().all(|h| h.starts_with("$argon2id$v=19$")),
        "{stored}"
    );
    let m = std::fs::symlink_metadata(&file).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid()), (0o600, 0));
    let d = std::fs::metadata(w.path("rc")).unwrap();
    assert_eq!((d.mode() & 0o777, d.uid()), (0o700, 0));

    // Again: a new set replaces the old one, which no longer lets alice in.
    let out = cli(&cfg, &["recovery", "alice", "--count", "2", "--json"], "");
    assert!(out.status.success(), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["user"], "alice");
    assert_eq!(j["accept"], "always");
    assert_eq!(j["replaced"], 4);
    let second: Vec<String> = j["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(second.len(), 2);
    assert!(second.iter().all(|c| !first.contains(c)));
    let after = stored_hashes(&w, "alice");
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|h| !hashes.contains(h)), "old hashes left");
    w.module_stack();
    let (rc, _) = w.login("alice", &[&first[0]]);
    assert_ne!(rc, PAM_SUCCESS, "a replaced code let alice in");
    let (rc, _) = w.login("alice", &[&second[0]]);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", w.outcomes());
    assert!(
        w.outcomes()
            .iter()
            .any(|l| l.contains("outcome=recovery_used")),
        "{:?}",
        w.outcomes()
    );

    // list counts what is left, also for a user with codes and no factor.
    let out = cli(&cfg, &["recovery", "bob"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(printed_codes(&out).len(), 10, "the default count");
    let list = cli(&cfg, &["list", "--json"], "");
    assert!(list.status.success(), "{}", text(&list));
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let row = |u: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["user"] == u)
            .cloned()
            .unwrap_or_else(|| panic!("{u}: {rows}"))
    };
    assert_eq!(row("alice")["recovery_codes"], 1);
    assert_eq!(row("alice")["status"], "ACTIVE");
    assert_eq!(row("bob")["recovery_codes"], 10);
    assert_eq!(row("bob")["factor_id"], "");
    let table = cli(&cfg, &["list"], "");
    let t = text(&table);
    assert!(t.lines().next().unwrap().contains("RECOVERY"), "{t}");
    let bob = t.lines().find(|l| l.starts_with("bob ")).unwrap_or("");
    assert!(
        bob.split_whitespace().any(|w| w == "10") && bob.contains("no factor in [users]"),
        "{t}"
    );

    // --revoke removes the set and says how many; a second one finds none.
    let out = cli(&cfg, &["recovery", "bob", "--revoke"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Removed the 10 recovery code(s)"),
        "{}",
        text(&out)
    );
    assert!(stored_hashes(&w, "bob").is_empty());
    assert_eq!(stored_hashes(&w, "alice").len(), 1, "alice's untouched");
    let out = cli(&cfg, &["recovery", "bob", "--revoke"], "");
    assert!(out.status.success() && text(&out).contains("nothing removed"));

    // A broken file: list says so in words and fails, check names the fix.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let list = cli(&cfg, &["list"], "");
    assert!(!list.status.success());
    assert!(
        text(&list).contains("recovery codes cannot be counted")
            && text(&list).contains("chmod 600"),
        "{}",
        text(&list)
    );
    let check = cli(&cfg, &["check"], "");
    assert!(!check.status.success(), "{}", text(&check));
    let fail = text(&check)
        .lines()
        .find(|l| l.starts_with("FAIL recovery codes"))
        .unwrap_or("")
        .to_string();
    assert!(fail.contains("chmod 600"), "{}", text(&check));
    // A code is never made for a broken file.
    let out = cli(&cfg, &["recovery", "alice"], "");
    assert!(
        !out.status.success() && printed_codes(&out).is_empty(),
        "{}",
        text(&out)
    );
}

#[test]
fn recovery_refuses_names_nss_does_not_know_bad_counts_and_non_root() {
    let w = World::new();
    let cfg = recovery_config(&w, "", "", &[]);
    let out = cli(&cfg, &["recovery", "no-such-user-here"], "");
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.lines().last().unwrap().starts_with("truid-pam: ") && t.contains("no user"),
        "{t}"
    );
    assert!(printed_codes(&out).is_empty());
    assert!(!w.path("rc").exists(), "nothing written");
    for bad in ["0", "21", "ten"] {
        let out = cli(&cfg, &["recovery", "alice", "--count", bad], "");
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", CLI])
        .arg("--config")
        .arg(&cfg)
        .args(["recovery", "alice"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("run truid-pam recovery as root"),
        "{}",
        text(&out)
    );
    assert!(!w.path("rc").exists(), "nothing written");
}

#[test]
fn check_reports_recovery_failmode_exemptions_and_one_prompt() {
    let w = World::new();
    let (fa, fb) = (w.enroll("alice"), w.enroll("bob"));
    let users = [("alice", fa.as_str()), ("bob", fb.as_str())];
    let line = |out: &Output, start: &str| {
        text(out)
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start}: {}", text(out)))
            .to_string()
    };

    // No file yet: said, and not a failure; secure names who has no codes.
    let cfg = recovery_config(&w, "", "", &users);
    let out = cli(&cfg, &["check"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(line(&out, "ok   recovery codes: ")
        .contains("no recovery codes yet: make them with truid-pam recovery USER"));
    assert!(
        line(&out, "ok   failmode: ").contains("2 of 2 enrolled user(s) have no recovery codes")
    );
    assert!(!text(&out).contains("combined"), "{}", text(&out));
    assert!(!text(&out).contains("WARN"), "{}", text(&out));

    let made = cli(&cfg, &["recovery", "alice", "--count", "3"], "");
    assert!(made.status.success(), "{}", text(&made));
    let out = cli(&cfg, &["check"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(line(&out, "ok   recovery codes: ").contains("1 user(s), 3 unused code(s)"));
    let fm = line(&out, "ok   failmode: ");
    assert!(
        fm.contains("1 of 2 enrolled user(s)") && fm.contains("(bob)"),
        "{fm}"
    );

    // safe: a warning that says what it does and recommends secure with codes; still exit 0.
    let cfg = recovery_config(&w, "failmode = \"safe\"", "", &users);
    let out = cli(&cfg, &["check"], "");
    assert!(out.status.success(), "{}", text(&out));
    let warn = line(&out, "WARN failmode: ");
    assert!(
        warn.contains("without a second factor")
            && warn.contains("set failmode = \"secure\"")
            && warn.contains("truid-pam recovery USER"),
        "{warn}"
    );
    let out = cli(&cfg, &["check", "--json"], "");
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fm = items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["check"] == "failmode")
        .unwrap();
    assert_eq!((&fm["ok"], &fm["warning"]), (&true.into(), &true.into()));

    // Exemptions NSS cannot match, an exempt user who is enrolled, the one prompt.
    let cfg = recovery_config(
        &w,
        "exempt_users = [\"no-such-user-here\", \"alice\", \"carol\"]\nexempt_groups = [\"no-such-group-here\", \"truid-tests\"]\ncombined = true",
        "",
        &users,
    );
    let out = cli(&cfg, &["check"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(line(&out, "WARN exempt user no-such-user-here: ").contains("NSS does not know"));
    assert!(line(&out, "WARN exempt user alice: ").contains("their factor is never asked"));
    assert!(line(&out, "ok   exempt user carol: ").contains("never asked"));
    assert!(line(&out, "WARN exempt group no-such-group-here: ").contains("exempts no one"));
    // The tests' users are all in truid-tests: both enrolled ones are named.
    let g = line(&out, "WARN exempt group truid-tests: ");
    assert!(g.contains("alice, bob") && g.contains("never asked"), "{g}");
    assert!(line(&out, "ok   combined: ").contains("combined = true"));

    // An exempt user can still be enrolled, with a warning.
    let (out, _) = enroll(&cfg, "carol");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("warning: carol is exempt (in [login] exempt_users)"),
        "{}",
        text(&out)
    );
    assert!(factor_of(&cfg, "carol").is_some());

    // A folder others may write to fails the check, with the fix.
    std::fs::set_permissions(
        w.path("rc"),
        std::os::unix::fs::PermissionsExt::from_mode(0o733),
    )
    .unwrap();
    let out = cli(&cfg, &["check"], "");
    assert!(!out.status.success());
    assert!(line(&out, "FAIL recovery codes: ").contains("writable by root alone"));

    // A typo in [login] groups stands everyone aside: check says so.
    let groups_cfg = recovery_config(
        &w,
        "groups = [\"no-such-group-here\", \"truid-tests\"]",
        "",
        &users,
    );
    let out = cli(&groups_cfg, &["check"], "");
    assert!(line(&out, "WARN group no-such-group-here: ").contains("nobody is asked"));
    assert!(line(&out, "ok   group truid-tests: ").contains("asked for a code"));
}

/// `check`'s line about the agent's public socket (the fixed path programs run as a user look
/// at), run in a mount namespace with an empty /run of its own, so that nothing of the host's
/// serves there: a warning when `[enroll] self` needs it, a plain line when nothing does, and
/// ok once an agent of root serves it in that namespace.
#[test]
fn check_reports_the_public_socket() {
    let w = World::new();
    let public = pam_truid::config::DEFAULT_PUBLIC_SOCKET;
    let line = |out: &Output| {
        let t = text(out);
        t.lines()
            .find(|l| l.contains(" public socket: "))
            .unwrap_or_else(|| panic!("no public socket line: {t}"))
            .to_string()
    };
    // CMD in a new mount namespace whose /run is an empty tmpfs.
    let private_run = |cmd: &[&std::ffi::OsStr]| {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t tmpfs -o mode=0755 truid-run /run && exec \"$@\"")
            .arg("sh")
            .args(cmd);
        c
    };
    let check = |cfg: &Path| {
        private_run(&[
            CLI.as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "check".as_ref(),
        ])
        .output()
        .unwrap()
    };

    let self_cfg = w.write_config(&format!("{}\n[enroll]\nself = true\n", w.api_table()));
    let out = check(&self_cfg);
    assert!(
        out.status.success(),
        "a warning is no failure: {}",
        text(&out)
    );
    let warn = line(&out);
    assert!(
        warn.starts_with(&format!(
            "WARN public socket: no agent of root's serves {public}"
        )) && warn.contains("[enroll] self = true")
            && warn.contains("systemctl enable --now pam_truid-agent"),
        "{warn}"
    );

    let plain_cfg = w.write_config(&w.api_table());
    let out = check(&plain_cfg);
    assert!(out.status.success(), "{}", text(&out));
    let ok = line(&out);
    assert!(
        ok.starts_with(&format!(
            "ok   public socket: no agent of root's serves {public}"
        )),
        "{ok}"
    );

    // The shared stack names the module (pam-auth-update's profile on): lockers need it. A
    // copy of common-auth with the line, bound over it in that namespace only.
    let stack = w.path("common-auth");
    let host_stack = std::fs::read_to_string("/etc/pam.d/common-auth").unwrap();
    std::fs::write(
        &stack,
        format!("{host_stack}auth requisite pam_truid.so # added by the test\n"),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t tmpfs -o mode=0755 truid-run /run && mount --bind \"$0\" /etc/pam.d/common-auth && exec \"$@\"")
        .arg(&stack)
        .arg(CLI)
        .arg("--config")
        .arg(&plain_cfg)
        .arg("check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let warn = line(&out);
    assert!(
        warn.starts_with("WARN public socket: ")
            && warn.contains("screen lockers, which run the module as the user (/etc/pam.d/common-auth names pam_truid.so)")
            && !warn.contains("[enroll] self"),
        "{warn}"
    );

    // An agent of root on the public socket, in its own namespace; check runs in that one.
    let root_socket = w.path("agent.sock");
    let agent = common::daemon::Daemon::start(
        private_run(&[
            CLI.as_ref(),
            "--config".as_ref(),
            self_cfg.as_os_str(),
            "agent".as_ref(),
            "--workers".as_ref(),
            "2".as_ref(),
            "--socket".as_ref(),
            root_socket.as_os_str(),
            "--public-socket".as_ref(),
            public.as_ref(),
        ]),
        "listening on",
        false,
    );
    let out = Command::new("nsenter")
        .arg("--mount")
        .arg(format!("--target={}", agent.child.id()))
        .arg("--")
        .arg(CLI)
        .arg("--config")
        .arg(&self_cfg)
        .arg("check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        line(&out),
        format!(
            "ok   public socket: {public}: root's agent serves users (screen lockers, truid-pam enroll by a user)"
        )
    );
    drop(agent);
}
