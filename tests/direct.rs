//! The module without an agent: it carries no HTTP client of its own and reaches tru.ID through
//! `libpam_truid_direct.so` beside it, loaded only then. A library that is missing, that others
//! may write, or that is a symlink is never loaded, and the login is denied under either failmode
//! (an installation fault, not tru.ID being down).

#[allow(unused_imports)]
mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const LIBRARY: &str = "libpam_truid_direct.so";

/// A copy of the module in `dir` (root-owned, 0644, as an installed one); with a copy of the
/// library beside it when `library_mode` is given.
fn installed_copy(dir: &Path, library_mode: Option<u32>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let module = dir.join("pam_truid.so");
    std::fs::copy(module_path(), &module).unwrap();
    std::fs::set_permissions(&module, std::fs::Permissions::from_mode(0o644)).unwrap();
    if let Some(mode) = library_mode {
        let lib = dir.join(LIBRARY);
        std::fs::copy(module_path().with_file_name(LIBRARY), &lib).unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    module
}

/// The stack with `module` in place of the built one, and `debug`.
fn stack_with(w: &World, module: &Path) {
    w.stack(&format!(
        "auth required {} {{args}} debug\n",
        module.display()
    ));
}

/// alice, enrolled, logs in with her right code through `module` under `failmode = "safe"`:
/// the PAM result and the outcome lines.
fn safe_login_through(w: &World, module: &Path) -> (i32, Vec<String>) {
    let f = w.enroll("alice");
    w.config("failmode = \"safe\"", &[("alice", &f)]);
    stack_with(w, module);
    let (rc, _) = w.login("alice", &[&w.code(&f)]);
    (rc, w.outcomes())
}

fn nm(so: &Path) -> String {
    let out = Command::new("nm")
        .arg(so)
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success(), "nm {}", so.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_module_carries_no_http_client_and_goes_direct_through_its_library() {
    let w = World::new();
    // The HTTP stack is in the library, not in what every login loads.
    let module_symbols = nm(&module_path());
    for crate_name in ["rustls", "reqwest", "hyper", "tokio"] {
        assert!(
            !module_symbols.contains(crate_name),
            "the module links {crate_name}"
        );
    }
    let library_symbols = nm(&module_path().with_file_name(LIBRARY));
    assert!(library_symbols.contains("rustls") && library_symbols.contains("reqwest"));

    let f = w.enroll("alice");
    w.config("", &[("alice", &f)]);
    w.stack("auth required {module} {args} debug\n");
    // The first login also fetches the token (then cached); the second is a plain one.
    assert_eq!(w.login("alice", &[&w.code(&f)]).0, PAM_SUCCESS);
    let before = w.emu.stats().tls_handshakes;
    let g = w.enroll("bob");
    w.config("", &[("alice", &f), ("bob", &g)]);
    let (rc, _) = w.login("bob", &[&w.code(&g)]);
    assert_eq!(rc, PAM_SUCCESS);
    let lines = w.outcomes();
    let debug = lines
        .iter()
        .rfind(|l| l.contains("debug:"))
        .unwrap_or_else(|| panic!("no debug line: {lines:?}"));
    // One connection of the library's client carried both calls.
    assert!(debug.contains("http_requests=2 via_agent=false"), "{debug}");
    assert_eq!(w.emu.stats().tls_handshakes - before, 1);
}

#[test]
fn without_its_library_a_login_is_denied_under_either_failmode() {
    for failmode in ["secure", "safe"] {
        let w = World::new();
        let module = installed_copy(&w.path("lib"), None);
        let f = w.enroll("alice");
        w.config(&format!("failmode = \"{failmode}\""), &[("alice", &f)]);
        stack_with(&w, &module);
        let (rc, s) = w.login("alice", &[&w.code(&f)]);
        assert_eq!(rc, PAM_AUTH_ERR, "failmode {failmode}");
        // Prompt first (as for every login, so enrolment does not show): the code is asked,
        // then refused without anything sent.
        assert_eq!(s.prompts(), ["tru.ID code: "], "{:?}", s.seen);
        assert!(w.emu.last_challenges().is_empty(), "tru.ID was asked");
        let lines = w.outcomes();
        let line = lines.iter().find(|l| !l.contains("debug:")).unwrap();
        assert!(line.contains("outcome=refused"), "{line}");
        // What went wrong and what to do.
        assert!(
            line.contains(&format!("{LIBRARY} cannot be opened"))
                && line.contains("reinstall the package, or start pam_truid-agent"),
            "{line}"
        );
    }
}

#[test]
fn a_library_others_may_write_or_a_symlink_is_never_loaded() {
    // Group-writable: anyone in the group could put code into every login.
    let w = World::new();
    let module = installed_copy(&w.path("lib"), Some(0o664));
    let (rc, lines) = safe_login_through(&w, &module);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("that only root may write") && l.contains("mode 664")),
        "{lines:?}"
    );
    // Not loaded: its code never ran, so tru.ID saw nothing.
    assert!(w.emu.last_challenges().is_empty());

    // A symlink to a good library: refused too (the file is opened without following links).
    let w = World::new();
    let module = installed_copy(&w.path("lib"), None);
    let real = w.path("elsewhere").join(LIBRARY);
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::copy(module_path().with_file_name(LIBRARY), &real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&real, module.with_file_name(LIBRARY)).unwrap();
    let (rc, lines) = safe_login_through(&w, &module);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(
        lines.iter().any(|l| l.contains("cannot be opened")),
        "{lines:?}"
    );
    assert!(w.emu.last_challenges().is_empty());

    // The same copy with a proper library beside it logs in: the refusals above were the
    // library's, not the copy's.
    std::fs::remove_file(module.with_file_name(LIBRARY)).unwrap();
    std::fs::copy(&real, module.with_file_name(LIBRARY)).unwrap();
    assert_eq!(safe_login_through(&w, &module).0, PAM_SUCCESS);
}

/// A stand-in for the library, in C, that answers every call with `reply` (or fails with -1
/// when `reply` is None): what a broken or mismatched library could do.
fn fake_library(dir: &Path, reply: Option<&str>) {
    let source = dir.join("fake.c");
    let body = match reply {
        Some(r) => format!(
            "static const char r[] = \"{}\\n\"; if (cap < sizeof r - 1) return -1; memcpy(out, r, sizeof r - 1); return sizeof r - 1;",
            r.replace('"', "\\\"")
        ),
        None => "return -1;".into(),
    };
    std::fs::write(
        &source,
        format!(
            "#include <string.h>\n#include <sys/types.h>\n\
             void *pam_truid_direct_v1_open(void) {{ static int s; return &s; }}\n\
             ssize_t pam_truid_direct_v1_call(void *s, const char *req, size_t len, char *out, size_t cap) {{ (void)s; (void)req; (void)len; {body} }}\n\
             void pam_truid_direct_v1_close(void *s) {{ (void)s; }}\n"
        ),
    )
    .unwrap();
    let lib = dir.join(LIBRARY);
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&source)
        .output()
        .expect("cc runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn a_library_that_answers_nonsense_or_fails_denies_even_under_failmode_safe() {
    // A reply without a value, one that is not a reply, and a failed call: none may become
    // "tru.ID unavailable", which failmode = "safe" would let in.
    for reply in [
        Some(r#"{"requests":0,"answer":{"ok":null}}"#),
        Some("not a reply"),
        None,
    ] {
        let w = World::new();
        let module = installed_copy(&w.path("lib"), None);
        fake_library(&w.path("lib"), reply);
        let (rc, lines) = safe_login_through(&w, &module);
        assert_eq!(rc, PAM_AUTH_ERR, "reply {reply:?}");
        assert!(
            lines.iter().any(|l| l.contains("outcome=refused")),
            "reply {reply:?}: {lines:?}"
        );
    }
}

#[test]
fn a_library_not_owned_by_root_is_never_loaded() {
    let w = World::new();
    let module = installed_copy(&w.path("lib"), Some(0o644));
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::chown(&module.with_file_name(LIBRARY), Some(nobody.uid), None).unwrap();
    let (rc, lines) = safe_login_through(&w, &module);
    assert_eq!(rc, PAM_AUTH_ERR);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("owner uid {}", nobody.uid))),
        "{lines:?}"
    );
    assert!(w.emu.last_challenges().is_empty());
}

/// Issue 14, item 5: a measurement, not a timed test (run by hand:
/// `cargo test --release --test direct -- --ignored --nocapture time_to_prompt`).
/// Through real libpam, the module on its own, the emulator 80 ms away on every request, the
/// token cached: how long an enrolled user and one without a factor (`unenrolled = "deny"`)
/// wait for the prompt, whether tru.ID is up or down, and then for the verdict on a wrong code.
/// The time to the prompt is a login whose conversation fails at the first prompt.
#[test]
#[ignore]
fn time_to_prompt_enrolled_and_not() {
    const RUNS: usize = 20;
    let latency = std::time::Duration::from_millis(80);
    let w = World::new();
    let f = w.enroll("alice");
    // pat as `truid-pam enroll --phone` leaves a user: with a [phones] entry (method auto).
    let g = w.enroll("pat");
    let users = format!("alice = \"{f}\"\npat = \"{g}\"\n[phones]\npat = \"+447700900001\"\n");
    w.write_config(&format!("{}\n[login]\n[users]\n{users}", w.api_table()));
    w.module_stack();
    // The token is cached by a first login, as on any host that logs people in.
    assert_eq!(w.login("alice", &[&w.code(&f)]).0, PAM_SUCCESS);
    w.emu.set_fault(Fault {
        route: Route::Any,
        kind: FaultKind::Latency(latency),
        times: None,
    });
    let median = |user: &str, answers: &[&str]| {
        let mut t: Vec<std::time::Duration> = (0..RUNS)
            .map(|_| {
                let took = timed(|| w.login(user, answers)).1;
                // Read, so that the log socket's queue never fills and delays a login.
                w.outcomes();
                took
            })
            .collect();
        t.sort();
        t[RUNS / 2]
    };
    let wrong = w.wrong_code(&f);
    println!("| user | to prompt, up | prompt to verdict (wrong code), up | to prompt, down | prompt to verdict, down |");
    println!("|---|---|---|---|---|");
    let up: Vec<_> = ["alice", "pat", "mallory"]
        .iter()
        .map(|u| (median(u, &[]), median(u, &[&wrong])))
        .collect();
    // Down: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = w
        .api_table()
        .replace(&w.emu.info().base_url, &format!("https://{closed}"));
    w.write_config(&format!("{text}\n[login]\n[users]\n{users}"));
    let rows = [
        "alice (enrolled)",
        "pat (enrolled, [phones] entry)",
        "mallory (no factor)",
    ];
    for (i, u) in rows.iter().enumerate() {
        let name = u.split(' ').next().unwrap();
        let (down, down_whole) = (median(name, &[]), median(name, &[&wrong]));
        let (prompt, whole) = up[i];
        let ms = |d: std::time::Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        println!(
            "| {u} | {} | {} | {} | {} |",
            ms(prompt),
            ms(whole.saturating_sub(prompt)),
            ms(down),
            ms(down_whole.saturating_sub(down))
        );
    }
}
