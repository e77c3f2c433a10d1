//! `libpam_truid_direct.so`: the HTTP client to tru.ID that the PAM module loads only when no
//! local agent answers (see `pam_truid::agent::direct`). A thin C interface over
//! `pam_truid::agent::direct::InProcess`; the `v1` in its names is the interface version.

use pam_truid::agent::direct::{answer_line, InProcess};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A session: the HTTP client of one login. NULL if it could not be made.
#[no_mangle]
pub extern "C" fn pam_truid_direct_v1_open() -> *mut c_void {
    catch_unwind(|| Box::into_raw(Box::<InProcess>::default()).cast::<c_void>())
        .unwrap_or(std::ptr::null_mut())
}

/// Runs the request line in `request` and writes the reply line into `out`; answers its
/// length, or -1 (a panic, a reply longer than `out_len`, a NULL argument).
///
/// # Safety
/// `session` comes from `pam_truid_direct_v1_open` and is not closed; `request` is valid for
/// `request_len` bytes and `out` for `out_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn pam_truid_direct_v1_call(
    session: *mut c_void,
    request: *const u8,
    request_len: usize,
    out: *mut u8,
    out_len: usize,
) -> isize {
    if session.is_null() || request.is_null() || out.is_null() {
        return -1;
    }
    // A panic must not cross into the module's C caller: the call fails, and the login with it.
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's promise above.
        let (session, line) = unsafe {
            (
                &mut *session.cast::<InProcess>(),
                std::slice::from_raw_parts(request, request_len),
            )
        };
        let reply = answer_line(session, line);
        if reply.len() > out_len {
            return -1;
        }
        // SAFETY: `out` holds `out_len` >= `reply.len()` bytes and does not overlap `reply`.
        unsafe { std::ptr::copy_nonoverlapping(reply.as_ptr(), out, reply.len()) };
        isize::try_from(reply.len()).unwrap_or(-1)
    }))
    .unwrap_or(-1)
}

/// Ends a session: its connection closes and its HTTP client's thread ends before this returns.
///
/// # Safety
/// `session` comes from `pam_truid_direct_v1_open` and is closed once.
#[no_mangle]
pub unsafe extern "C" fn pam_truid_direct_v1_close(session: *mut c_void) {
    if session.is_null() {
        return;
    }
    // SAFETY: the caller's promise above.
    let session = unsafe { Box::from_raw(session.cast::<InProcess>()) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(session)));
}
