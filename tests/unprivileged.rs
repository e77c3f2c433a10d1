//! A PAM application that runs as the user (a screen locker, pamtester started by the user):
//! the module cannot read the root-only config there, so it refuses with an outcome of its own
//! and tells the person why, never PAM_SERVICE_ERR with a permission error, and never
//! PAM_IGNORE (SECURITY.md, "Programs that run as the user").
//!
//! Real libpam (pamtester under pam_wrapper, run by the user through runuser), a real NSS user
//! (tests/private-host.sh), the built module, the test's syslog listener.

#[allow(unused_imports)]
mod common;
use common::logins::*;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

#[test]
fn a_program_run_as_the_user_is_refused_and_told_why() {
    let u = "truidun1";
    ensure_user(u);
    let w = World::new();
    let f = w.enroll(u);
    let cfg = w.config("", &[(u, f.as_str())]);
    // What the user's program may read: the stack and the log socket, in a folder of its own.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = SyslogSink::new(open.path());
    std::fs::set_permissions(&log.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pamd = open.path().join("pamd");
    std::fs::create_dir(&pamd).unwrap();
    std::fs::set_permissions(&pamd, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The user's code would be right: it is the module's refusal that decides.
    std::fs::write(
        pamd.join("truid-locker"),
        format!(
            "auth required {} config={} syslog_socket={}\n",
            module_path().display(),
            cfg.display(),
            log.path.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        pamd.join("truid-locker"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = Command::new("runuser")
        .args([
            "-u",
            u,
            "--",
            "env",
            "LD_PRELOAD=libpam_wrapper.so",
            "PAM_WRAPPER=1",
        ])
        .arg(format!("PAM_WRAPPER_SERVICE_DIR={}", pamd.display()))
        .args(["pamtester", "truid-locker", u, "authenticate"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    // The person reads why, and libpam's answer is "cannot retrieve authentication info".
    assert!(text.contains(pam_truid::flow::MSG_UNPRIVILEGED), "{text}");
    assert!(
        text.contains("cannot retrieve authentication info"),
        "{text}"
    );
    assert!(
        !text.contains("tru.ID code: "),
        "asked for a code it cannot check: {text}"
    );
    let lines = log.lines();
    let outcome: Vec<&String> = lines.iter().filter(|l| l.contains("outcome=")).collect();
    assert_eq!(outcome.len(), 1, "{lines:?}");
    assert!(
        outcome[0].contains("outcome=unprivileged_denied")
            && outcome[0].contains(&format!("user=\"{u}\""))
            && outcome[0].contains("runs as uid"),
        "{outcome:?}"
    );
    // Nothing was asked of tru.ID.
    assert_eq!(w.emu.stats().challenges_created, 0);
}
