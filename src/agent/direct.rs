//! Where a login's calls go when no agent answers: to tru.ID from the login process itself.
//!
//! The module does not carry the HTTP client (reqwest, hyper, tokio, rustls). That client is
//! most of its size, and every login paid for loading it (page faults, relocations, unmapping)
//! even when the agent made the calls. It lives in `libpam_truid_direct.so` beside the module,
//! which only a login that goes direct loads (`Loaded`). `truid-pam` links the client itself
//! (`InProcess`). Both take the agent's wire types (`super::protocol`), a `Call` in and a `Reply`
//! out, and run it as the agent does (`super::upstream`), so a call means the same whichever way
//! it goes.

use super::protocol::{read_request, Answer, Call, Reply, Request, WireApi, MAX_MESSAGE, PROTOCOL};
use super::upstream::reply_on;
use crate::api::Client;
use crate::config::ApiConfig;
use once_cell::sync::OnceCell;
use std::ffi::{c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The library's file name, in the folder the module was loaded from.
pub const LIBRARY_NAME: &str = "libpam_truid_direct.so";

/// Runs the calls that go to tru.ID without the agent.
pub trait Direct {
    /// One call of a login whose calls so far took `spent` of the `[api] timeout`.
    fn call(&mut self, api: &ApiConfig, spent: Duration, call: Call) -> Reply;
}

fn refused(why: String) -> Reply {
    Reply {
        requests: 0,
        answer: Answer::Refused(why),
    }
}

/// The HTTP client in this process. One per login, so the login's calls share a connection.
#[derive(Default)]
pub struct InProcess {
    client: Option<Client>,
}

impl Direct for InProcess {
    fn call(&mut self, api: &ApiConfig, spent: Duration, call: Call) -> Reply {
        let client = match &mut self.client {
            Some(c) => c,
            None => match Client::for_login(api) {
                Ok(c) => self.client.insert(c),
                // A local setup failure (unreadable ca_file) is the administrator's to fix and
                // denies whatever failmode says: it is not tru.ID being down.
                Err(why) => return refused(why),
            },
        };
        reply_on(client, spent, call)
    }
}

/// The library's side of one call: a request line in, a reply line out.
pub fn answer_line(session: &mut InProcess, line: &[u8]) -> Vec<u8> {
    let reply = match read_request(line) {
        Ok(r) => session.call(&r.api.config(), Duration::from_millis(r.spent_ms), r.call),
        Err(why) => refused(format!("the direct client library: {why}")),
    };
    let mut text = serde_json::to_vec(&reply).unwrap_or_default();
    text.push(b'\n');
    text
}

// ---------------------------------------------------------------------------------------------
// The module's side: the library, loaded on the first login of the process that goes direct.

type OpenFn = unsafe extern "C" fn() -> *mut c_void;
type CallFn = unsafe extern "C" fn(*mut c_void, *const u8, usize, *mut u8, usize) -> isize;
type CloseFn = unsafe extern "C" fn(*mut c_void);

struct Library {
    open: OpenFn,
    call: CallFn,
    close: CloseFn,
}

/// Kept for the life of the process (the library is loaded with RTLD_NODELETE: a Rust library
/// with thread-local state cannot be unloaded safely). A failed load is not kept: the next
/// login tries again, after the administrator's fix.
static LIBRARY: OnceCell<Library> = OnceCell::new();

/// The direct client library, called through its C interface.
#[derive(Default)]
pub struct Loaded {
    session: Option<(&'static Library, Session)>,
}

/// A session of the library: its HTTP client for one login.
struct Session(*mut c_void);

// SAFETY: a session is the library's `InProcess` (an HTTP client, which is `Send`), and it is
// used by one thread at a time: the one that holds this `Loaded` (a login's calls made ahead
// take it to their thread and give it back).
unsafe impl Send for Session {}

impl Direct for Loaded {
    fn call(&mut self, api: &ApiConfig, spent: Duration, call: Call) -> Reply {
        self.try_call(api, spent, call).unwrap_or_else(refused)
    }
}

impl Loaded {
    fn try_call(&mut self, api: &ApiConfig, spent: Duration, call: Call) -> Result<Reply, String> {
        let (lib, session) = match &self.session {
            Some((lib, s)) => (*lib, s.0),
            None => {
                let lib = LIBRARY.get_or_try_init(Library::load)?;
                // SAFETY: a function of the library loaded above, with the signature of its
                // v1 interface; it takes no argument.
                let s = unsafe { (lib.open)() };
                if s.is_null() {
                    return Err("the direct client library could not start".into());
                }
                self.session = Some((lib, Session(s)));
                (lib, s)
            }
        };
        let request = Request {
            v: PROTOCOL,
            api: WireApi::new(api),
            spent_ms: u64::try_from(spent.as_millis()).unwrap_or(u64::MAX),
            call,
        };
        let text = request
            .to_line()
            .ok_or("the request could not be written")?;
        let mut out = vec![0u8; MAX_MESSAGE];
        // SAFETY: `session` came from this library's open and is not closed yet; both buffers
        // are valid for the lengths given, and the library writes at most `out.len()` bytes.
        let n = unsafe {
            (lib.call)(
                session,
                text.as_ptr(),
                text.len(),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        let line = usize::try_from(n)
            .ok()
            .and_then(|n| out.get(..n))
            .ok_or("the direct client library failed on a call")?;
        serde_json::from_slice(line)
            .map_err(|_| "the direct client library gave an unreadable answer".into())
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some((lib, session)) = self.session.take() {
            // SAFETY: the session came from this library's open and is closed once, here. Its
            // HTTP client's thread ends before this returns, so none outlives the login.
            unsafe { (lib.close)(session.0) }
        }
    }
}

/// Checks the library file at `path` as the module does before loading it: a regular file,
/// not a symlink, owned by root, writable by no one else. The error says what is wrong.
pub fn check_library(path: &Path) -> Result<(), String> {
    let shown = path.display();
    // Opened without following a symlink, and checked on the open file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("the direct client library {shown} cannot be opened ({e})"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("the direct client library {shown}: {e}"))?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "the direct client library {shown} is not a regular file of root that only root \
             may write (owner uid {}, mode {:o})",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

impl Library {
    fn load() -> Result<Library, String> {
        let path = beside_module()?;
        let shown = path.display();
        let why_needed = "no pam_truid agent answered, and without one the module reaches \
                          tru.ID through this library";
        check_library(&path).map_err(|e| {
            format!("{e}; {why_needed}: it is not loaded; reinstall the package, or start pam_truid-agent")
        })?;
        // Loaded by its path. Between the check and the load only someone who may write the
        // module's own folder (root) could swap the file, and they could swap the module.
        // A library loaded earlier in this process under the same path is given back by
        // dlopen as it is: that is the version the module (never unloaded either) came with.
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("the direct client library path {shown} holds a NUL byte"))?;
        // SAFETY: a NUL-terminated path; the flags are dlopen's.
        let handle = unsafe {
            libc::dlopen(
                c_path.as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_NODELETE,
            )
        };
        if handle.is_null() {
            return Err(format!(
                "the direct client library {shown} could not be loaded ({}); {why_needed}: \
                 reinstall the package",
                dl_error()
            ));
        }
        let symbol = |name: &CStr| {
            // SAFETY: a handle dlopen returned, and a NUL-terminated name.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            if p.is_null() {
                Err(format!(
                    "the direct client library {shown} lacks {} (another version than the \
                     module's): reinstall the package, then restart this program",
                    name.to_string_lossy()
                ))
            } else {
                Ok(p)
            }
        };
        let (open, call, close) = (
            symbol(c"pam_truid_direct_v1_open")?,
            symbol(c"pam_truid_direct_v1_call")?,
            symbol(c"pam_truid_direct_v1_close")?,
        );
        // SAFETY: the library exports these names with exactly these signatures (the `v1` in
        // the names is the interface version; a change of signature takes a new name).
        unsafe {
            Ok(Library {
                open: std::mem::transmute::<*mut c_void, OpenFn>(open),
                call: std::mem::transmute::<*mut c_void, CallFn>(call),
                close: std::mem::transmute::<*mut c_void, CloseFn>(close),
            })
        }
    }
}

/// The library's path: beside the file this module was loaded from.
fn beside_module() -> Result<PathBuf, String> {
    // SAFETY: dladdr only reads the loader's tables; `info` is written on success.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let here = beside_module as *const c_void;
    // SAFETY: `here` is an address in this module; `info` is a valid out-parameter.
    let found = unsafe { libc::dladdr(here, &mut info) } != 0 && !info.dli_fname.is_null();
    if !found {
        return Err("the module cannot tell which file it was loaded from".into());
    }
    // SAFETY: dladdr gave a NUL-terminated path owned by the loader, valid while we are loaded.
    let module = unsafe { CStr::from_ptr(info.dli_fname) };
    let module = PathBuf::from(std::ffi::OsStr::from_bytes(module.to_bytes()));
    let dir = module
        .parent()
        .filter(|d| d.is_absolute())
        .ok_or_else(|| format!("the module's path {} is not absolute", module.display()))?;
    Ok(dir.join(LIBRARY_NAME))
}

/// dlerror's text, if any.
fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "no reason given".into()
    } else {
        // SAFETY: checked non-null above.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::tests::api;

    #[test]
    fn the_library_refuses_a_request_of_another_version_and_sends_nothing() {
        let line = Request {
            v: PROTOCOL + 1,
            api: WireApi::new(&api()),
            spent_ms: 0,
            call: Call::FindFactor { user: "a".into() },
        }
        .to_line()
        .unwrap();
        let mut session = InProcess::default();
        let reply: Reply = serde_json::from_slice(&answer_line(&mut session, &line)).unwrap();
        assert_eq!(reply.requests, 0);
        assert!(
            matches!(reply.answer, Answer::Refused(ref w) if w.contains("protocol")),
            "{reply:?}"
        );
        // Refused before any client was made.
        assert!(session.client.is_none());
    }
}
