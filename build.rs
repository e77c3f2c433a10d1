//! GCC's unwinder, linked in statically (libgcc_eh.a) instead of the shared libgcc_s.so.1, into
//! everything that links this crate: the module (module/), its direct client library (direct/)
//! and truid-pam. Cargo passes a library's link search paths on to whatever links it, so the
//! folder set up here reaches them all. (The module's other link setting, `-z nodelete`, is in
//! module/build.rs, and the direct client library's in direct/build.rs: a link argument belongs
//! to the package whose library it is.)
//!
//! Why: every login loads the module, and with it libgcc_s; on the benchmark machine that extra
//! library (its mapping, relocations and its CPU-feature constructor, whose `cpuid` is a trap
//! under virtualisation) cost about 0.2 ms of the 2 ms a login may add (issue 9). Panics still
//! unwind: the module keeps `panic = "unwind"` and catches them at the FFI edge.
//!
//! How: rustc asks the linker for `-lgcc_s`. A folder searched before the compiler's own, holding
//! `libgcc_s.a` as a link to GCC's `libgcc_eh.a`, makes the linker take the static unwinder for
//! that name; the version script keeps its symbols local to the module. Where GCC's archive
//! cannot be found (another toolchain), nothing changes and the shared library is used.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["CC", "TARGET_CC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.contains("-linux-gnu") {
        return;
    }
    let Some((cc, archive)) = gcc_eh() else {
        println!("cargo:warning=libgcc_eh.a not found: the module links the shared libgcc_s");
        return;
    };
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let dir = out.join("static-unwinder");
    let link = dir.join("libgcc_s.a");
    let _ = std::fs::remove_file(&link);
    if std::fs::create_dir_all(&dir).is_err()
        || std::os::unix::fs::symlink(&archive, &link).is_err()
    {
        println!("cargo:warning=could not set up the static unwinder: the module links libgcc_s");
        return;
    }
    // A GCC whose libgcc_eh.a is not position-independent cannot put it in a shared object:
    // link a small one with it first, and keep the shared unwinder if that fails.
    if !links_a_shared_object(&cc, &dir, &out) {
        println!("cargo:warning=libgcc_eh.a does not link into a shared object here: the module links libgcc_s");
        return;
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
}

/// Whether `cc` links a shared object that unwinds with the archive in `dir`.
fn links_a_shared_object(cc: &[String], dir: &Path, out: &Path) -> bool {
    let source = out.join("unwinder-probe.c");
    let code = "extern void _Unwind_Resume(void *);\nvoid *probe(void) { return (void *)_Unwind_Resume; }\n";
    if std::fs::write(&source, code).is_err() {
        return false;
    }
    let Some((program, args)) = cc.split_first() else {
        return false;
    };
    Command::new(program)
        .args(args)
        .args(["-shared", "-fPIC", "-o"])
        .arg(out.join("unwinder-probe.so"))
        .arg(&source)
        .arg("-L")
        .arg(dir)
        .arg("-lgcc_s")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The C compiler for the target (program and arguments), and GCC's static unwinder as it
/// reports it.
fn gcc_eh() -> Option<(Vec<String>, PathBuf)> {
    let target = std::env::var("TARGET").ok()?;
    let host = std::env::var("HOST").ok()?;
    // The compiler for the target, as the cc crate looks for it; a cross build without one named
    // keeps the shared unwinder rather than take the host's archive.
    let named = [
        format!("CC_{target}"),
        format!("CC_{}", target.replace('-', "_")),
        "TARGET_CC".to_string(),
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok());
    let cc = match named {
        Some(cc) => cc,
        None if target == host => std::env::var("CC").unwrap_or_else(|_| "cc".into()),
        None => return None,
    };
    // "ccache gcc", "gcc -m64": the program, then its own arguments.
    let cc: Vec<String> = cc.split_whitespace().map(str::to_string).collect();
    let (program, args) = cc.split_first()?;
    let out = Command::new(program)
        .args(args)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // A compiler that does not know the file prints its bare name back.
    (path.is_absolute() && Path::new(&path).is_file()).then_some((cc, path))
}
