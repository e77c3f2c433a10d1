//! The direct client library is never unloaded either (`-z nodelete`), for the module's reason
//! (module/build.rs): a Rust library with thread-local state cannot be unloaded safely. The
//! module also loads it with RTLD_NODELETE; this holds for any other loader.
//!
//! GCC's static unwinder comes from the pam_truid crate's build script (../build.rs).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("TARGET")
        .unwrap_or_default()
        .contains("-linux")
    {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}
