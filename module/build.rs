//! The module's link setting of its own: **it is never unloaded** (`-z nodelete`). libpam
//! unloads modules at `pam_end`, but Rust's standard library can leave a thread-exit destructor
//! of the module registered with libc (`thread::current()` does); a thread that exits after the
//! unload would jump into unmapped code. Multi-threaded applications (and the tests, whose
//! threads log in at once) hit that. A kept module also makes the next login in the same
//! process cheaper.
//!
//! Its other one, GCC's static unwinder, is set by the pam_truid crate's build script (../build.rs)
//! for everything that links that crate, this module included.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("TARGET")
        .unwrap_or_default()
        .contains("-linux")
    {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}
