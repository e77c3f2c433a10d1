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

#[test]
fn the_module_carries_its_own_unwinder_and_does_not_load_libgcc_s() {
    // build.rs links GCC's static unwinder: one library fewer to load at every login.
    let so = common::module_path();
    let so = so.to_str().unwrap();
    let dynamic = tool("readelf", &["-dW", so]);
    let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(
        needed.iter().all(|l| !l.contains("libgcc_s")),
        "the module still needs libgcc_s:\n{}",
        needed.join("\n")
    );
    // Panics must still unwind to pam-bindings' catch_unwind: the unwinder is inside, local.
    let symbols = tool("nm", &[so]);
    assert!(
        symbols
            .lines()
            .any(|l| l.ends_with(" t _Unwind_RaiseException")),
        "no local _Unwind_RaiseException in the module"
    );
}

#[test]
fn the_module_is_never_unloaded() {
    // build.rs links with -z nodelete: libpam's dlclose at pam_end must not unmap code that a
    // thread-exit destructor registered by Rust's standard library may still call.
    let so = common::module_path();
    let dynamic = tool("readelf", &["-dW", so.to_str().unwrap()]);
    let flags = dynamic
        .lines()
        .find(|l| l.contains("(FLAGS_1)"))
        .unwrap_or_else(|| panic!("no FLAGS_1:\n{dynamic}"));
    assert!(flags.contains("NODELETE"), "{flags}");
}
