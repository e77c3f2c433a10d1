//! The module as a citizen of the host process: the `.so` exports the six PAM entry points and
//! nothing else (no Rust symbol can clash with the host's or another module's), and loading it
//! does not need an executable stack.

#[allow(unused_imports)]
mod common;
use std::process::Command;

const PAM_ENTRY_POINTS: [&str; 6] = [
    "pam_sm_acct_mgmt",
    "pam_sm_authenticate",
    "pam_sm_chauthtok",
    "pam_sm_close_session",
    "pam_sm_open_session",
    "pam_sm_setcred",
];

fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} cannot run ({e}): install binutils (tests/setup.sh does)")
    });
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn only_the_pam_entry_points_are_exported() {
    let so = common::module_path();
    let so = so.to_str().unwrap();
    let listing = tool("nm", &["-D", "--defined-only", so]);
    // "<address> <type> <name>[@version]"
    let mut exported: Vec<String> = listing
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            // Absolute symbols are version-node names of a version script, not code or data.
            (kind != "A").then(|| name.split('@').next().unwrap_or(name).to_string())
        })
        .collect();
    exported.sort();
    assert_eq!(
        exported, PAM_ENTRY_POINTS,
        "\nnm -D --defined-only:\n{listing}"
    );
    // Each is a function.
    for l in listing.lines() {
        if let Some(name) = PAM_ENTRY_POINTS.iter().find(|n| l.ends_with(*n)) {
            assert!(l.contains(" T "), "{name} is not a text symbol: {l}");
        }
    }
}

#[test]
fn the_module_needs_no_executable_stack() {
    let so = common::module_path();
    let headers = tool("readelf", &["-lW", so.to_str().unwrap()]);
    let stack = headers
        .lines()
        .find(|l| l.contains("GNU_STACK"))
        .unwrap_or_else(|| panic!("no GNU_STACK header:\n{headers}"));
    assert!(!stack.contains("RWE"), "executable stack: {stack}");
}
