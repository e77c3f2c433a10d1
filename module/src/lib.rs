//! `libpam_truid.so`, the PAM module: its six `pam_sm_*` entry points, and nothing else. What
//! they do is the `pam_truid` crate's (`pam_truid::pam::TruId`); this crate only exports them,
//! so that the other libraries built from `pam_truid` (the direct client library) do not.

use pam_truid::pam::TruId;
::pam::pam_hooks!(TruId);
