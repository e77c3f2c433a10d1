//! pam_truid: the tru.ID Authenticator as a second factor for PAM logins.
//!
//! `pam` is the thin FFI side; every decision lives in `flow`, which the module and the
//! `truid-pam` CLI share. The module itself (`libpam_truid.so`, its `pam_sm_*` entry points) is
//! the `module/` crate: linked into the direct client library and the CLI, this crate exports
//! nothing of PAM's.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod agent;
pub mod api;
pub mod cache;
pub mod config;
pub mod config_edit;
pub mod deadline;
pub mod enrolment;
pub mod flow;
pub mod host;
pub mod log;
pub mod pam;
pub mod ports;
pub mod recovery;
pub mod secret;
pub mod text;

/// The stack of every thread pam_truid starts: set, never left to `RUST_MIN_STACK`, which the
/// caller of a setuid program controls (a tiny one crashed su in a TLS handshake).
pub(crate) const THREAD_STACK: usize = 2 * 1024 * 1024;
