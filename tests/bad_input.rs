//! Bad input of every kind, through real libpam loading the built module: codes that are not
//! codes, configuration that is wrong in type, value or file, PAM items built to break logs.
//!
//! The base configuration of these tests says `failmode = "safe"`, so that any bad input the
//! module mistook for "tru.ID unavailable" would show up as a login let in.

// Not every helper of the shared harness is used here.
#[allow(unused_imports)]
mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const MALFORMED: &str = "A tru.ID code is 6 to 8 digits.";

fn with_enrolled_alice() -> (World, String) {
    let w = World::new();
    let f = w.enroll("alice");
    w.module_stack();
    (w, f)
}

// ---------------------------------------------------------------------------------------------
// Codes

/// Answers that are not 6 to 8 ASCII digits. (A NUL byte cannot reach the module: the PAM
/// conversation returns C strings, so "123\0456" arrives as "123"; that case is below.)
fn bad_codes() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "      ".into(),
        " 123456".into(),
        "123456 ".into(),
        "123 456".into(),
        "12345\t".into(),
        "abcdef".into(),
        "12345a".into(),
        "0x1234".into(),
        "+123456".into(),
        "-123456".into(),
        "12345".into(),
        "123456789".into(),
        "１２３４５６".into(), // fullwidth digits
        "١٢٣٤٥٦".into(),       // Arabic-Indic digits
        "𝟏𝟐𝟑𝟒𝟓𝟔".into(),       // mathematical bold digits
        "123456\n".into(),
        "123\u{1b}[2J".into(),
        "123".into(), // what "123\0456" becomes
        "7".repeat(10 * 1024),
        "x".repeat(10 * 1024),
    ]
}

#[test]
fn malformed_codes_are_refused_locally_and_never_sent() {
    for failmode in ["secure", "safe"] {
        let (w, f) = with_enrolled_alice();
        w.config(
            &format!("failmode = \"{failmode}\"\ntries = 1"),
            &[("alice", &f)],
        );
        for code in bad_codes() {
            let (rc, s) = w.login("alice", &[&code]);
            let shown = format!("{:.40?}", code);
            assert_eq!(rc, PAM_AUTH_ERR, "{failmode} {shown}");
            assert!(
                s.seen.contains(&Seen::Error(MALFORMED.into())),
                "{failmode} {shown}: {:?}",
                s.seen
            );
            let lines = w.outcomes();
            assert!(
                lines.len() == 1 && lines[0].contains("outcome=wrong_code"),
                "{failmode} {shown}: {lines:?}"
            );
            // Whatever was typed is not in the log.
            if code.len() >= 5 && code.trim() == code {
                assert!(!lines[0].contains(code.as_str()), "{lines:?}");
            }
        }
        let st = w.emu.stats();
        assert_eq!(st.verification_attempts, 0, "{failmode}: a code was sent");
        assert_eq!(st.requests.get("challenge_verify"), None, "{failmode}");
    }
}

#[test]
fn ten_malformed_tries_use_one_challenge_then_a_right_code_still_works() {
    let (w, f) = with_enrolled_alice();
    w.config("failmode = \"safe\"\ntries = 10", &[("alice", &f)]);
    let mut answers: Vec<String> = bad_codes().into_iter().take(9).collect();
    answers.push(w.code(&f));
    let refs: Vec<&str> = answers.iter().map(String::as_str).collect();
    let (rc, s) = w.login("alice", &refs);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", w.outcomes());
    assert_eq!(s.prompts().len(), 10);
    let st = w.emu.stats();
    assert_eq!(
        st.challenges_created, 1,
        "malformed tries reuse the challenge"
    );
    assert_eq!(st.verification_attempts, 1, "only the right code was sent");
    let lines = w.outcomes();
    assert!(
        lines[0].contains("outcome=verified") && lines[0].contains("tries=10"),
        "{lines:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// A config as (table, key, TOML value) entries, so a test can change one of them.
struct Conf {
    entries: Vec<(String, String, String)>,
    extra: String,
}

impl Conf {
    fn base(w: &World, factor: &str) -> Conf {
        let i = w.emu.info();
        let q = |s: &str| format!("\"{s}\"");
        let e = |t: &str, k: &str, v: String| (t.to_string(), k.to_string(), v);
        Conf {
            entries: vec![
                e("api", "base_url", q(&i.base_url)),
                e("api", "client_id", q(&i.client_id)),
                e("api", "client_secret", q(&i.client_secret)),
                e("api", "ca_file", q(i.ca_file.as_deref().unwrap())),
                e("api", "roots", q("none")),
                e("api", "timeout", "5".into()),
                e(
                    "api",
                    "token_cache",
                    q(&w.path("cache").display().to_string()),
                ),
                e("api", "agent", q("")),
                e("login", "failmode", q("safe")),
                e("users", "alice", q(factor)),
            ],
            extra: String::new(),
        }
    }

    /// Sets (or adds) `table.key` to the raw TOML `value`; `None` removes it.
    fn set(mut self, table: &str, key: &str, value: Option<&str>) -> Conf {
        self.entries.retain(|(t, k, _)| !(t == table && k == key));
        if let Some(v) = value {
            self.entries
                .push((table.to_string(), key.to_string(), v.to_string()));
        }
        self
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for table in ["api", "login", "users", "console"] {
            let rows: Vec<_> = self.entries.iter().filter(|(t, _, _)| t == table).collect();
            if rows.is_empty() {
                continue;
            }
            out.push_str(&format!("[{table}]\n"));
            for (_, k, v) in rows {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        out.push_str(&self.extra);
        out
    }
}

/// Logs in with the config and expects a denial whose log line contains every one of `names`.
/// `config_error` lines must come with `PAM_SERVICE_ERR` and no prompt.
fn expect_denied(w: &World, case: &str, names: &[&str]) -> String {
    let (rc, s) = w.login("alice", &[]);
    let lines = w.outcomes();
    assert_eq!(lines.len(), 1, "{case}: {lines:?}");
    let line = &lines[0];
    assert_eq!(rc, PAM_SERVICE_ERR, "{case}: {line}");
    assert!(line.contains("outcome=config_error"), "{case}: {line}");
    assert!(s.seen.is_empty(), "{case}: {:?}", s.seen);
    for n in names {
        assert!(
            line.contains(n),
            "{case}: log line does not name {n:?}: {line}"
        );
    }
    line.clone()
}

#[test]
fn every_key_with_a_wrong_type_or_value_denies_naming_it() {
    let (w, f) = with_enrolled_alice();
    let s = |v: &str| format!("\"{v}\"");
    let long = s(&"p".repeat(201));
    // (table, key, bad raw TOML value, what the log line must contain)
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("api", "region", "5".into(), "region"),
        ("api", "region", s("mars"), "region"),
        ("api", "base_url", "5".into(), "base_url"),
        ("api", "base_url", "[\"https://x\"]".into(), "base_url"),
        ("api", "base_url", s("not a url"), "base_url"),
        ("api", "base_url", s("http://example.com"), "loopback"),
        ("api", "base_url", s("http://10.0.0.1:8080"), "loopback"),
        (
            "api",
            "base_url",
            s("http://127.0.0.1.example.com"),
            "loopback",
        ),
        // A local user may listen there (the relay restarting, or the other address of
        // localhost), and nothing proves who answers plain http://.
        (
            "api",
            "base_url",
            s("http://127.0.0.1:8080"),
            "any local user may listen",
        ),
        (
            "api",
            "base_url",
            s("http://localhost:80"),
            "instead of localhost",
        ),
        (
            "api",
            "base_url",
            s("https://localhost:8443"),
            "instead of localhost",
        ),
        (
            "api",
            "proxy",
            s("http://localhost:3128"),
            "instead of localhost",
        ),
        ("api", "base_url", s("ftp://127.0.0.1"), "base_url"),
        ("api", "base_url", s("https://u:p@127.0.0.1"), "credentials"),
        ("api", "base_url", s("https://127.0.0.1/?x=1"), "query"),
        ("api", "client_id", "5".into(), "client_id"),
        ("api", "client_id", s(""), "client_id"),
        ("api", "client_id", s("has space"), "client_id"),
        ("api", "client_id", s(&"c".repeat(1025)), "client_id"),
        ("api", "client_secret", "true".into(), "client_secret"),
        ("api", "client_secret", s(""), "client_secret"),
        ("api", "client_secret", s("tab\\there"), "client_secret"),
        (
            "api",
            "client_secret_file",
            "5".into(),
            "client_secret_file",
        ),
        ("api", "ca_file", "5".into(), "ca_file"),
        ("api", "ca_file", s("relative/ca.pem"), "ca_file"),
        ("api", "roots", "5".into(), "roots"),
        ("api", "roots", s("mozilla"), "roots"),
        ("api", "timeout", s("10"), "timeout"),
        ("api", "timeout", "0".into(), "timeout"),
        ("api", "timeout", "121".into(), "timeout"),
        ("api", "timeout", "-1".into(), "timeout"),
        ("api", "timeout", "1.5".into(), "timeout"),
        ("api", "timeout", "99999999999999999999".into(), "timeout"),
        ("api", "proxy", "5".into(), "proxy"),
        ("api", "proxy", s("socks5://127.0.0.1:1080"), "proxy"),
        ("api", "proxy", s("not a url"), "proxy"),
        ("api", "token_cache", "5".into(), "token_cache"),
        ("api", "token_cache", s("run/pam_truid"), "token_cache"),
        ("api", "agent", "5".into(), "agent"),
        ("api", "agent", s("run/pam_truid/agent.sock"), "agent"),
        ("api", "unknown_key", "1".into(), "unknown_key"),
        ("login", "failmode", "5".into(), "failmode"),
        ("login", "failmode", s("open"), "failmode"),
        ("login", "failmode", s("SAFE"), "failmode"),
        ("login", "unenrolled", "false".into(), "unenrolled"),
        ("login", "unenrolled", s("allow"), "unenrolled"),
        ("login", "tries", s("3"), "tries"),
        ("login", "tries", "0".into(), "tries"),
        ("login", "tries", "11".into(), "tries"),
        ("login", "tries", "4294967296".into(), "tries"),
        ("login", "prompt", "5".into(), "prompt"),
        ("login", "prompt", s(""), "prompt"),
        ("login", "prompt", s("   "), "prompt"),
        ("login", "prompt", s("code\\u001b[2J: "), "prompt"),
        ("login", "prompt", s("code\\n: "), "prompt"),
        ("login", "prompt", long.clone(), "prompt"),
        ("login", "lookup", s("yes"), "lookup"),
        ("login", "lookup", "1".into(), "lookup"),
        ("login", "groups", s("wheel"), "groups"),
        ("login", "groups", "[5]".into(), "groups"),
        ("login", "groups", "[\"bad\\u0007group\"]".into(), "groups"),
        ("login", "groups", "[\"\"]".into(), "groups"),
        ("login", "su", "5".into(), "su"),
        ("login", "su", s("both"), "su"),
        ("login", "unknown_key", "1".into(), "unknown_key"),
        ("users", "bob", "5".into(), "bob"),
        ("users", "bob", s("not-a-uuid"), "bob"),
        (
            "users",
            "bob",
            s("5995afaf-f5d1-47ab-b586-50ad46904eec0"),
            "bob",
        ),
        (
            "users",
            "bob",
            s("5995afaf_f5d1_47ab_b586_50ad46904eec"),
            "bob",
        ),
        (
            "users",
            "bob",
            s("g995afaf-f5d1-47ab-b586-50ad46904eec"),
            "bob",
        ),
        ("users", "bob", s(""), "bob"),
        ("users", "\"bad\\nuser\"", s(&f), "bad\\\\x0auser"),
        ("users", "\"\"", s(&f), "[users]"),
        ("users", "\"al\\u001bice\"", s(&f), "al\\\\x1bice"),
    ];
    for (table, key, value, name) in &cases {
        let c = Conf::base(&w, &f).set(table, key, Some(value));
        w.write_config(&c.text());
        expect_denied(&w, &format!("{table}.{key} = {value:.60}"), &[name]);
    }
    assert_eq!(
        w.emu.stats().tokens_issued,
        0,
        "a bad config reached tru.ID"
    );
}

#[test]
fn push_keys_with_wrong_types_deny_naming_them() {
    // The push settings of [login] and the [phones] table.
    let (w, f) = with_enrolled_alice();
    let s = |v: &str| format!("\"{v}\"");
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("login", "method", "5".into(), "method"),
        ("login", "method", s("sms"), "method"),
        ("login", "push_timeout", s("60"), "push_timeout"),
        ("login", "push_timeout", "4".into(), "push_timeout"),
        ("login", "push_timeout", "301".into(), "push_timeout"),
        ("login", "push_message", "5".into(), "push_message"),
        ("login", "push_message", s("a\\u001b[2J"), "push_message"),
        ("login", "push_prompt", "5".into(), "push_prompt"),
        ("login", "push_prompt", s(""), "push_prompt"),
    ];
    for (table, key, value, name) in &cases {
        let c = Conf::base(&w, &f).set(table, key, Some(value));
        w.write_config(&c.text());
        expect_denied(&w, &format!("{table}.{key} = {value}"), &[name]);
    }
    for (phones, name) in [
        ("[phones]\nalice = 447700900000\n", "alice"),
        ("[phones]\nalice = \"07700 900000\"\n", "alice"),
        (
            "[phones]\n\"bad\\tuser\" = \"+447700900000\"\n",
            "bad\\\\x09user",
        ),
        ("phones = \"+447700900000\"\n", "phones"),
    ] {
        let mut c = Conf::base(&w, &f);
        c.extra = phones.to_string();
        // A bare key must come before the first table.
        let text = if phones.starts_with('[') {
            c.text()
        } else {
            format!("{phones}{}", c.text())
        };
        w.write_config(&text);
        expect_denied(&w, phones, &[name]);
    }
}

#[test]
fn config_structure_errors_deny_naming_the_problem() {
    let (w, f) = with_enrolled_alice();
    let base = Conf::base(&w, &f);
    let both_urls = Conf::base(&w, &f).set("api", "region", Some("\"eu\""));
    let no_secret = Conf::base(&w, &f).set("api", "client_secret", None);
    let both_secrets = Conf::base(&w, &f).set(
        "api",
        "client_secret_file",
        Some(&format!("\"{}\"", w.path("secret").display())),
    );
    let roots_none = Conf::base(&w, &f).set("api", "ca_file", None);
    let no_client_id = Conf::base(&w, &f).set("api", "client_id", None);
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("region and base_url", both_urls.text(), vec!["region"]),
        ("no secret", no_secret.text(), vec!["client_secret"]),
        ("secret twice", both_secrets.text(), vec!["client_secret"]),
        ("roots none, no ca_file", roots_none.text(), vec!["roots"]),
        ("no client_id", no_client_id.text(), vec!["client_id"]),
        (
            "duplicate user",
            format!("{}alice = \"{f}\"\n", base.text()),
            vec!["alice"],
        ),
        (
            "duplicate table",
            format!("{}[login]\ntries = 2\n", base.text()),
            vec!["login"],
        ),
        (
            "unknown table",
            format!("{}[extra]\nx = 1\n", base.text()),
            vec!["extra"],
        ),
        (
            "unknown top-level key",
            format!("failmod = \"safe\"\n{}", base.text()),
            vec!["failmod"],
        ),
        (
            "api is not a table",
            "api = \"https://eu.api.tru.id\"\n".into(),
            vec!["api"],
        ),
        (
            "no api table",
            format!("[users]\nalice = \"{f}\"\n"),
            vec!["api"],
        ),
        (
            "users is not a table",
            format!("users = [\"alice\"]\n{}", base.text().replace("[users]", "[x]")),
            vec!["users"],
        ),
        (
            "console is not a table",
            format!("console = 5\n{}", base.text()),
            vec!["console"],
        ),
        (
            "console missing a key",
            format!(
                "{}[console]\nworkspace_id = \"w\"\nproject_id = \"p\"\nclient_id = \"c\"\n",
                base.text()
            ),
            vec!["client_secret"],
        ),
        (
            "console key of the wrong type",
            format!(
                "{}[console]\nworkspace_id = 5\nproject_id = \"p\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
                base.text()
            ),
            vec!["workspace_id"],
        ),
        (
            "console key empty",
            format!(
                "{}[console]\nworkspace_id = \"w\"\nproject_id = \"\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
                base.text()
            ),
            vec!["project_id"],
        ),
        (
            "console unknown key",
            format!(
                "{}[console]\nworkspace_id = \"w\"\nproject_id = \"p\"\nclient_id = \"c\"\nclient_secret = \"s\"\nregion = \"eu\"\n",
                base.text()
            ),
            vec!["region"],
        ),
        ("empty file", String::new(), vec!["api"]),
        ("not TOML", "<html>\n".into(), vec!["TOML"]),
        (
            "a NUL byte",
            base.text().replace("[login]", "[login]\n\u{0}"),
            vec!["TOML"],
        ),
    ];
    for (case, text, names) in &cases {
        w.write_config(text);
        expect_denied(&w, case, names);
    }
}

#[test]
fn config_file_problems_deny_naming_the_file() {
    let (w, f) = with_enrolled_alice();
    let cfg = w.path("pam_truid.toml");
    let good = Conf::base(&w, &f).text();
    let cfg_s = cfg.display().to_string();
    // Beyond tests/pam_module.rs: other kinds of file and modes.
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "a folder",
            Box::new(|p| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            }),
            "not a regular file",
        ),
        (
            "a FIFO (must not block)",
            Box::new(|p| {
                std::fs::remove_file(p).unwrap();
                nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            }),
            "not a regular file",
        ),
        (
            "world-writable",
            Box::new(|p| set_mode(p, 0o602)),
            "writable by group or others",
        ),
        (
            "owned by root, group not root, group-writable",
            Box::new(|p| {
                nix::unistd::chown(p, None, Some(nix::unistd::Gid::from_raw(65534))).unwrap();
                set_mode(p, 0o660);
            }),
            "writable by group or others",
        ),
        (
            "symlink to a good file",
            Box::new(|p| {
                let real = p.with_extension("real");
                std::fs::rename(p, &real).unwrap();
                std::os::unix::fs::symlink(&real, p).unwrap();
            }),
            "symbolic link",
        ),
        (
            "just over 1 MiB",
            Box::new(|p| {
                let mut t = std::fs::read(p).unwrap();
                t.resize(1024 * 1024 + 1, b'\n');
                std::fs::write(p, t).unwrap();
            }),
            "bytes",
        ),
        (
            "invalid UTF-8 in a comment",
            Box::new(|p| {
                let mut t = std::fs::read(p).unwrap();
                t.extend_from_slice(b"# caf\xe9\n");
                std::fs::write(p, t).unwrap();
            }),
            "UTF-8",
        ),
        (
            "owned by nobody, mode 0600",
            Box::new(|p| {
                nix::unistd::chown(p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap()
            }),
            "not root",
        ),
    ];
    for (case, breaker, expect) in cases {
        let _ = std::fs::remove_dir(&cfg);
        let _ = std::fs::remove_file(cfg.with_extension("real"));
        w.write_config(&good);
        breaker(&cfg);
        expect_denied(&w, case, &[expect, &cfg_s]);
    }
    let _ = std::fs::remove_file(&cfg);
}

/// Breaks a file in one way.
type Breaker = Box<dyn Fn(&Path)>;

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
}

#[test]
fn client_secret_file_problems_deny_naming_the_file() {
    let (w, f) = with_enrolled_alice();
    let secret = w.emu.info().client_secret.clone();
    let sf = w.path("secret");
    let sf_s = sf.display().to_string();
    let conf = Conf::base(&w, &f).set("api", "client_secret", None).set(
        "api",
        "client_secret_file",
        Some(&format!("\"{sf_s}\"")),
    );
    // The config itself no longer holds a secret, so it may be world-readable.
    let write = |w: &World| {
        let p = w.write_config(&conf.text());
        set_mode(&p, 0o644);
        let _ = std::fs::remove_file(&sf);
        let _ = std::fs::remove_dir(&sf);
        let _ = std::fs::remove_file(sf.with_extension("real"));
        std::fs::write(&sf, format!("{secret}\n")).unwrap();
        set_mode(&sf, 0o600);
    };
    // It works as written: the cases below are the only change.
    write(&w);
    let code = w.code(&f);
    assert_eq!(
        w.login("alice", &[&code]).0,
        PAM_SUCCESS,
        "{:?}",
        w.outcomes()
    );
    assert!(w.outcomes()[0].contains("outcome=verified"));

    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "readable by others",
            Box::new(|p| set_mode(p, 0o604)),
            "readable by group or others",
        ),
        (
            "readable by group",
            Box::new(|p| set_mode(p, 0o640)),
            "readable by group or others",
        ),
        (
            "group-writable",
            Box::new(|p| set_mode(p, 0o620)),
            "writable by group or others",
        ),
        (
            "not root's",
            Box::new(|p| {
                nix::unistd::chown(p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap()
            }),
            "not root",
        ),
        (
            "symlink",
            Box::new(|p| {
                let real = p.with_extension("real");
                std::fs::rename(p, &real).unwrap();
                std::os::unix::fs::symlink(&real, p).unwrap();
            }),
            "symbolic link",
        ),
        (
            "missing",
            Box::new(|p| std::fs::remove_file(p).unwrap()),
            "does not exist",
        ),
        (
            "a folder",
            Box::new(|p| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            }),
            "not a regular file",
        ),
        (
            "a FIFO",
            Box::new(|p| {
                std::fs::remove_file(p).unwrap();
                nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            }),
            "not a regular file",
        ),
        (
            "several megabytes",
            Box::new(|p| std::fs::write(p, vec![b'a'; 3 * 1024 * 1024]).unwrap()),
            "bytes",
        ),
        (
            "invalid UTF-8",
            Box::new(|p| std::fs::write(p, b"s3cr\xff\n").unwrap()),
            "UTF-8",
        ),
        (
            "empty",
            Box::new(|p| std::fs::write(p, b"\n").unwrap()),
            "client_secret",
        ),
        (
            "two lines",
            Box::new(|p| std::fs::write(p, b"abc\ndef\n").unwrap()),
            "client_secret",
        ),
    ];
    for (case, breaker, expect) in cases {
        write(&w);
        breaker(&sf);
        let (rc, s) = w.login("alice", &[]);
        let lines = w.outcomes();
        assert_eq!(rc, PAM_SERVICE_ERR, "{case}: {lines:?}");
        assert!(s.seen.is_empty(), "{case}");
        assert!(
            lines.len() == 1
                && lines[0].contains("outcome=config_error")
                && lines[0].contains(expect),
            "{case}: {lines:?}"
        );
        if case != "empty" && case != "two lines" {
            assert!(lines[0].contains(&sf_s), "{case}: {lines:?}");
        }
        assert!(
            !lines[0].contains(&secret),
            "{case}: the secret is in the log"
        );
    }
    // /dev/zero: a device, endless; refused without reading it.
    let c2 = conf.set("api", "client_secret_file", Some("\"/dev/zero\""));
    let p = w.write_config(&c2.text());
    set_mode(&p, 0o644);
    expect_denied(&w, "/dev/zero", &["/dev/zero", "not a regular file"]);
}

#[test]
fn an_unreadable_ca_file_denies_under_safe() {
    // Not tru.ID being down: the administrator's to fix, so failmode does not apply.
    let (w, f) = with_enrolled_alice();
    let not_pem = w.path("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for (case, path, expect) in [
        ("missing", w.path("missing-ca.pem"), "missing-ca.pem"),
        ("not PEM", not_pem.clone(), "no certificate"),
    ] {
        let c = Conf::base(&w, &f).set("api", "ca_file", Some(&format!("\"{}\"", path.display())));
        w.write_config(&c.text());
        let (rc, _) = w.login("alice", &[&w.code(&f)]);
        let lines = w.outcomes();
        assert_ne!(rc, PAM_SUCCESS, "{case}: {lines:?}");
        assert!(
            lines.len() == 1 && lines[0].contains(expect) && !lines[0].contains("unavailable"),
            "{case}: {lines:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// PAM items

#[test]
fn bad_user_names_are_refused_before_anything() {
    let (w, f) = with_enrolled_alice();
    w.config(
        "failmode = \"safe\"\nunenrolled = \"ignore\"",
        &[("alice", &f)],
    );
    let long = "a".repeat(10 * 1024);
    for user in [
        "",
        "al\nice",
        "al\tice",
        "alice\r",
        "al\u{7f}ice",
        "al\u{9b}ice",
        long.as_str(),
    ] {
        let (rc, s) = pam_with(&w, "svc", Some(user), &Items::default(), &[]);
        let lines = w.outcomes();
        let shown = format!("{user:.40?}");
        // Not PAM_IGNORE: "ignore" is for users without a factor, not for names that are not
        // names.
        assert_eq!(rc, PAM_AUTH_ERR, "{shown}: {lines:?}");
        assert!(s.is_empty(), "{shown}: {s:?}");
        assert_eq!(lines.len(), 1, "{shown}");
        let line = &lines[0];
        assert!(line.contains("outcome=bad_input"), "{shown}: {line}");
        assert!(
            !line.contains(['\n', '\r', '\t', '\u{7f}', '\u{9b}']),
            "{line:?}"
        );
        assert!(line.len() < 1200, "{shown}: line of {} bytes", line.len());
    }
    // Names NSS could give (directories have `@`, `\`, spaces, any script), but this host's
    // does not know: denied (not PAM_IGNORE, under "ignore" too), nothing asked of tru.ID,
    // logged escaped.
    for user in [
        "alice\u{202e}",
        "алиса",
        "alice bob",
        "../../etc/passwd",
        "-rf",
        "alice;reboot",
        "$(reboot)",
        "\"quoted\\\"",
    ] {
        let (rc, s) = pam_with(&w, "svc", Some(user), &Items::default(), &[]);
        let lines = w.outcomes();
        assert_eq!(rc, PAM_AUTH_ERR, "{user:?}: {lines:?}");
        assert!(s.is_empty(), "{user:?}: {s:?}");
        assert_eq!(lines.len(), 1, "{user:?}");
        assert!(
            lines[0].contains("outcome=unknown_user"),
            "{user:?}: {}",
            lines[0]
        );
        assert!(!lines[0].contains('\u{202e}'), "{:?}", lines[0]);
    }
    assert_eq!(w.emu.stats().tokens_issued, 0);
}

#[test]
fn no_user_at_all_is_refused() {
    // pam_start with a NULL user: the module asks libpam, which prompts for one; the
    // application gives none.
    let (w, f) = with_enrolled_alice();
    w.config("failmode = \"safe\"", &[("alice", &f)]);
    let (rc, seen) = pam_with(&w, "svc", None, &Items::default(), &[]);
    let lines = w.outcomes();
    assert_ne!(rc, PAM_SUCCESS, "{lines:?}");
    assert!(
        seen.iter().all(|m| !matches!(m, Seen::Prompt(_))),
        "{seen:?}"
    );
    assert!(
        lines.len() == 1 && lines[0].contains("outcome=bad_input"),
        "{lines:?}"
    );
}

#[test]
fn hostile_tty_rhost_and_ruser_are_logged_escaped_and_never_sent_raw() {
    let (w, f) = with_enrolled_alice();
    w.config("failmode = \"safe\"\nsu = \"caller\"", &[("alice", &f)]);
    let nasty = "x\u{1b}]0;owned\u{7}\n`id`|$(reboot)&;<>\"'\\\u{202e}";
    // 1 KiB: longer than any host name. (At 10 KiB libpam's own audit record fails and
    // pam_authenticate answers PAM_SYSTEM_ERR whatever the module said.)
    let huge_rhost = format!("{nasty}{}", "h".repeat(1024));
    let items = Items {
        rhost: Some(huge_rhost.clone()),
        tty: Some(format!("pts/1{nasty}")),
        ruser: None,
    };
    let code = w.code(&f);
    let (rc, _) = pam_with(&w, "svc", Some("alice"), &items, &[&code]);
    let lines = w.outcomes();
    assert_eq!(rc, PAM_SUCCESS, "{lines:?}");
    let line = &lines[0];
    assert!(
        !line.contains(['\u{1b}', '\u{7}', '\n', '\u{202e}']),
        "raw control characters: {line:?}"
    );
    assert!(
        line.contains("tty=\"pts/1x\\x1b]0;owned\\x07\\x0a`id`|$(reboot)&;<>\\\"'\\\\\\u{202e}\""),
        "{line}"
    );
    assert!(line.len() < 1200, "rhost not cut: {} bytes", line.len());
    // What tru.ID's console shows: only safe characters, bounded.
    let r = w.emu.last_challenges()[0]
        .reference_id
        .clone()
        .unwrap_or_default();
    assert!(
        r.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/.-_:".contains(c))
            && r.len() < 300,
        "{r}"
    );

    // su with su = "caller": PAM_RUSER is the name checked, and logged escaped.
    std::fs::copy(w.path("pam.d/svc"), w.path("pam.d/su")).unwrap();
    let items = Items {
        ruser: Some("al\u{1b}[2Jice".into()),
        ..Items::default()
    };
    let (rc, s) = pam_with(&w, "su", Some("root"), &items, &[]);
    let lines = w.outcomes();
    assert_eq!(rc, PAM_AUTH_ERR, "{lines:?}");
    assert!(s.is_empty());
    assert!(
        lines[0].contains("outcome=bad_input") && lines[0].contains("al\\\\x1b[2Jice"),
        "{lines:?}"
    );
    // su = "caller" without PAM_RUSER.
    let (rc, _) = pam_with(&w, "su", Some("root"), &Items::default(), &[]);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(w.outcomes()[0].contains("PAM_RUSER"), "{:?}", w.outcomes());
}

/// `pam_authenticate` for `service`, with `user` possibly NULL (`pam_start` without a user),
/// through the shared harness; returns the result and what the person saw.
fn pam_with(
    w: &World,
    service: &str,
    user: Option<&str>,
    items: &Items,
    answers: &[&str],
) -> (i32, Vec<Seen>) {
    let mut s = Script::answering(answers);
    let rc = pam_login_as(&w.path("pam.d"), service, user, items, &mut s);
    (rc, s.seen)
}

/// toml's own error text quotes the offending line: a syntax error on the `client_secret` line
/// (a stray character, a second line pasted while rotating it) put the secret into the syslog
/// line that any `sudo` by an ordinary user writes, readable by the adm group. The line names
/// the place (line, column, key) and never the text.
#[test]
fn a_syntax_error_on_a_secret_line_never_logs_the_secret() {
    let (w, f) = with_enrolled_alice();
    let secret = w.emu.info().client_secret.clone();
    let base = Conf::base(&w, &f);
    let q = |s: &str| format!("\"{s}\"");
    let console = |secret_value: &str| {
        format!(
            "[console]\nworkspace_id = \"w\"\nproject_id = \"p\"\nclient_id = \"c\"\nclient_secret = {secret_value}\n"
        )
    };
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "a stray word after the secret",
            base.text()
                .replace(&q(&secret), &format!("{} x", q(&secret))),
            vec!["client_secret", "line "],
        ),
        (
            "the secret pasted twice",
            base.text().replace(
                "[login]",
                &format!("client_secret = {}\n[login]", q(&secret)),
            ),
            vec!["client_secret", "duplicate key"],
        ),
        (
            "an unquoted console secret",
            format!("{}{}", base.text(), console(&secret)),
            vec!["client_secret", "[console]"],
        ),
    ];
    for (case, text, names) in &cases {
        w.write_config(text);
        let line = expect_denied(&w, case, names);
        assert!(
            !line.contains(&secret) && !line.contains(&secret[..8]),
            "{case}: the secret is in the log line: {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Caches and trust files

#[test]
fn a_cached_token_is_no_use_to_a_config_with_a_wrong_secret() {
    for failmode in ["secure", "safe"] {
        let (w, f) = with_enrolled_alice();
        let secret = w.emu.info().client_secret.clone();
        let right = Conf::base(&w, &f).set("login", "failmode", Some(&format!("\"{failmode}\"")));
        w.write_config(&right.text());
        let (rc, _) = w.login("alice", &[&w.code(&f)]);
        assert_eq!(rc, PAM_SUCCESS, "{failmode}: {:?}", w.outcomes());
        let _ = w.outcomes();
        // The token is cached, and the secret that got it is not in the cache.
        let cached: Vec<_> = std::fs::read_dir(w.path("cache"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("token-")
            })
            .collect();
        assert_eq!(cached.len(), 1, "{failmode}: {cached:?}");
        let text = std::fs::read_to_string(&cached[0]).unwrap();
        assert!(text.contains("access_token"), "{text}");
        assert!(
            !text.contains(&secret),
            "{failmode}: the secret is in the cache"
        );
        let tokens = w.emu.stats().tokens_issued;

        // Same base URL and client ID, a wrong secret: tru.ID refuses it a token, and the
        // token the right secret left in the cache must not stand in for one.
        let wrong = right.set("api", "client_secret", Some("\"not-the-secret-4711\""));
        w.write_config(&wrong.text());
        // The next time step's code: valid, and not the one already used.
        let next = w.emu.code(&f, 1).unwrap();
        let (rc, _) = w.login("alice", &[&next]);
        let lines = w.outcomes();
        assert_eq!(rc, PAM_AUTH_ERR, "{failmode}: {lines:?}");
        assert!(
            lines.len() == 1 && !lines[0].contains("outcome=verified"),
            "{failmode}: {lines:?}"
        );
        assert_eq!(
            w.emu.stats().tokens_issued,
            tokens,
            "{failmode}: a token for the wrong secret"
        );
        assert_eq!(
            w.emu.stats().verifications,
            1,
            "{failmode}: a code was verified"
        );
    }
}

/// A CA file others could change decides whom the module trusts: each is a config error,
/// denied whatever failmode says, named in the log and by `truid-pam check`.
#[test]
fn a_ca_file_others_could_change_denies_and_check_says_so() {
    use std::os::unix::fs::symlink;
    let (w, f) = with_enrolled_alice();
    let emu_ca = w.emu.info().ca_file.clone().unwrap();
    let ca = w.path("ca.pem");
    let real = w.path("ca-real.pem");
    let good = || {
        let _ = std::fs::remove_file(&ca);
        std::fs::copy(&emu_ca, &ca).unwrap();
        set_mode(&ca, 0o644);
    };
    let conf = Conf::base(&w, &f).set("api", "ca_file", Some(&format!("\"{}\"", ca.display())));
    let cfg = w.write_config(&conf.text());
    good();
    let (rc, _) = w.login("alice", &[&w.code(&f)]);
    assert_eq!(rc, PAM_SUCCESS, "{:?}", w.outcomes());
    let _ = w.outcomes();
    let check = |case: &str, expect: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_truid-pam"))
            .arg("--config")
            .arg(&cfg)
            .arg("check")
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!out.status.success(), "{case}: check passed: {t}");
        let fail = t.lines().find(|l| l.starts_with("FAIL")).unwrap_or("");
        assert!(
            fail.contains("ca_file") && fail.contains(expect),
            "{case}: {t}"
        );
    };
    let cases: [(&str, &dyn Fn(), &str); 4] = [
        (
            "owned by nobody",
            &|| std::os::unix::fs::chown(&ca, Some(65534), None).unwrap(),
            "chown root:",
        ),
        ("mode 0666", &|| set_mode(&ca, 0o666), "chmod go-w"),
        ("group-writable", &|| set_mode(&ca, 0o664), "chmod go-w"),
        (
            "a symlink",
            &|| {
                std::fs::rename(&ca, &real).unwrap();
                symlink(&real, &ca).unwrap();
            },
            "symbolic link",
        ),
    ];
    for (case, spoil, expect) in cases {
        good();
        spoil();
        // A fresh login reads it anew: same process (this test) that cached the good one.
        let (rc, s) = w.login("alice", &[&w.code(&f)]);
        let lines = w.outcomes();
        assert_eq!(rc, PAM_SERVICE_ERR, "{case}: {lines:?}");
        assert!(s.seen.is_empty(), "{case}: {:?}", s.seen);
        assert!(
            lines.len() == 1
                && lines[0].contains("outcome=config_error")
                && lines[0].contains(&ca.display().to_string())
                && lines[0].contains(expect),
            "{case}: {lines:?}"
        );
        check(case, expect);
        let _ = std::fs::remove_file(&real);
    }
}

#[test]
fn line_separators_and_bidi_controls_in_a_log_line_are_escaped() {
    let (w, f) = with_enrolled_alice();
    w.config("failmode = \"safe\"", &[("alice", &f)]);
    let hostile: [u32; 14] = [
        0x2028, 0x2029, 0x061c, 0x200e, 0x200f, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066,
        0x2067, 0x2068, 0x2069,
    ];
    for code in hostile {
        let c = char::from_u32(code).unwrap();
        // A host name that, shown raw, would start a forged line or reorder the text.
        let rhost = format!("10.0.0.1{c}outcome=verified user=root");
        let items = Items {
            rhost: Some(rhost),
            ..Items::default()
        };
        // No answer: the login ends at the prompt, and its line names the host.
        let (rc, _) = pam_with(&w, "svc", Some("alice"), &items, &[]);
        let lines = w.outcomes();
        assert_ne!(rc, PAM_SUCCESS, "U+{code:04X}: {lines:?}");
        assert!(!lines[0].contains(c), "U+{code:04X} raw: {:?}", lines[0]);
        assert!(
            lines[0].contains(&format!("10.0.0.1\\u{{{code:x}}}outcome=verified")),
            "U+{code:04X}: {}",
            lines[0]
        );
    }
    // A user name with one: refused before anything, and escaped in the line that says so.
    let (rc, _) = pam_with(&w, "svc", Some("alice\u{2028}root"), &Items::default(), &[]);
    let lines = w.outcomes();
    assert_ne!(rc, PAM_SUCCESS, "{lines:?}");
    assert!(
        !lines[0].contains('\u{2028}') && lines[0].contains("alice\\u{2028}root"),
        "{lines:?}"
    );
}
