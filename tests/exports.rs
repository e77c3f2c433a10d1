//! The module as a citizen of the host process: the `.so` exports the six PAM entry points and
//! nothing else (no Rust symbol can clash with the host's or another module's), and loading it
//! does not need an executable stack. Its direct client library, loaded into the same process,
//! exports its own three functions and nothing else: no second set of PAM entry points.

#[allow(unused_imports)]
mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

const PAM_ENTRY_POINTS: [&str; 6] = [
    "pam_sm_acct_mgmt",
    "pam_sm_authenticate",
    "pam_sm_chauthtok",
    "pam_sm_close_session",
    "pam_sm_open_session",
    "pam_sm_setcred",
];

/// The direct client library's C interface (src/agent/direct.rs loads these names).
const DIRECT_FUNCTIONS: [&str; 3] = [
    "pam_truid_direct_v1_call",
    "pam_truid_direct_v1_close",
    "pam_truid_direct_v1_open",
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

/// The direct client library beside the module, as the module finds it.
fn direct_library_path() -> PathBuf {
    let so = common::module_path().with_file_name("libpam_truid_direct.so");
    assert!(so.is_file(), "{} is missing", so.display());
    so
}

/// Asserts that `so` exports exactly `names` (sorted), each a function.
fn assert_exports_exactly(so: &Path, names: &[&str]) {
    let listing = tool("nm", &["-D", "--defined-only", so.to_str().unwrap()]);
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
        exported,
        names,
        "\n{}: nm -D --defined-only:\n{listing}",
        so.display()
    );
    // Each is a function.
    for l in listing.lines() {
        if let Some(name) = names.iter().find(|n| l.ends_with(*n)) {
            assert!(l.contains(" T "), "{name} is not a text symbol: {l}");
        }
    }
}

#[test]
fn only_the_pam_entry_points_are_exported() {
    assert_exports_exactly(&common::module_path(), &PAM_ENTRY_POINTS);
}

#[test]
fn the_direct_library_exports_only_its_own_functions() {
    // It links the same crate as the module: the PAM entry points must stay the module's.
    assert_exports_exactly(&direct_library_path(), &DIRECT_FUNCTIONS);
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

/// `readelf -dW` of `so`: its NEEDED libraries and its FLAGS_1.
fn needed_and_flags(so: &Path) -> (Vec<String>, String) {
    let dynamic = tool("readelf", &["-dW", so.to_str().unwrap()]);
    let needed = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .map(str::to_string)
        .collect();
    let flags = dynamic
        .lines()
        .find(|l| l.contains("(FLAGS_1)"))
        .unwrap_or_else(|| panic!("no FLAGS_1 in {}:\n{dynamic}", so.display()))
        .to_string();
    (needed, flags)
}

#[test]
fn the_module_carries_its_own_unwinder_and_does_not_load_libgcc_s() {
    // build.rs links GCC's static unwinder: one library fewer to load at every login.
    let so = common::module_path();
    let (needed, _) = needed_and_flags(&so);
    assert!(
        needed.iter().all(|l| !l.contains("libgcc_s")),
        "the module still needs libgcc_s:\n{}",
        needed.join("\n")
    );
    // Panics must still unwind to pam-bindings' catch_unwind: the unwinder is inside, local.
    let symbols = tool("nm", &[so.to_str().unwrap()]);
    assert!(
        symbols
            .lines()
            .any(|l| l.ends_with(" t _Unwind_RaiseException")),
        "no local _Unwind_RaiseException in the module"
    );
}

#[test]
fn the_module_is_never_unloaded() {
    // module/build.rs links with -z nodelete: libpam's dlclose at pam_end must not unmap code
    // that a thread-exit destructor registered by Rust's standard library may still call.
    let (_, flags) = needed_and_flags(&common::module_path());
    assert!(flags.contains("NODELETE"), "{flags}");
}

#[test]
fn the_direct_library_is_never_unloaded_and_does_not_load_libgcc_s() {
    // The same two link settings (direct/build.rs, build.rs): the library is loaded into the
    // login process as the module is, and the packages depend on libc and libpam alone.
    let (needed, flags) = needed_and_flags(&direct_library_path());
    assert!(flags.contains("NODELETE"), "{flags}");
    assert!(
        needed.iter().all(|l| !l.contains("libgcc_s")),
        "the direct client library needs libgcc_s:\n{}",
        needed.join("\n")
    );
}
