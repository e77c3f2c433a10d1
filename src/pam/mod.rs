//! The thin FFI side: module arguments, PAM items, the conversation, and the one mapping from
//! `Outcome` to a PAM return code. No decision is taken here.

mod conv;

use crate::agent::client::AgentOrDirect;
use crate::agent::direct::Loaded;
use crate::agent::protocol::{Service as AgentService, ServiceRequest};
use crate::agent::relay::{relay, RelayError};
use crate::config::{Config, DEFAULT_PATH};
use crate::flow::{self, LoginContext, Outcome};
use crate::log::{Severity, Sink};
use ::pam::constants::{PamFlag, PamResultCode, PAM_SILENT};
use ::pam::items::{AuthTok, RHost, RUser, Service, Tty};
use ::pam::module::{PamHandle, PamHooks};
use std::ffi::CStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub use conv::PamConv;

pub struct TruId;

impl PamHooks for TruId {
    fn sm_authenticate(pamh: &mut PamHandle, args: Vec<&CStr>, flags: PamFlag) -> PamResultCode {
        authenticate(pamh, &args, flags)
    }

    /// Nothing to set; answering success keeps `auth` stacks that call setcred working.
    fn sm_setcred(_: &mut PamHandle, _: Vec<&CStr>, _: PamFlag) -> PamResultCode {
        PamResultCode::PAM_SUCCESS
    }
}

/// The module arguments of the PAM stack line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub config: PathBuf,
    pub syslog_socket: Option<PathBuf>,
    pub debug: bool,
    /// One prompt for the password and the code (as `[login] combined = true`), for this stack.
    pub combined: bool,
    /// The agent's public socket, for a module run without root (which cannot read the
    /// config): `agent=PATH`, by default `config::DEFAULT_PUBLIC_SOCKET`.
    pub public_agent: PathBuf,
}

/// Unknown or malformed arguments are errors: a typo in the stack must deny, not be skipped.
pub fn parse_args<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> Result<Args, String> {
    let mut out = Args {
        config: PathBuf::from(DEFAULT_PATH),
        syslog_socket: None,
        debug: false,
        combined: false,
        public_agent: PathBuf::from(crate::config::DEFAULT_PUBLIC_SOCKET),
    };
    for raw in args {
        let arg =
            std::str::from_utf8(raw).map_err(|_| "a module argument is not UTF-8".to_string())?;
        match arg.split_once('=') {
            Some(("config", p)) if p.starts_with('/') => out.config = PathBuf::from(p),
            Some(("syslog_socket", p)) if p.starts_with('/') => {
                out.syslog_socket = Some(PathBuf::from(p))
            }
            Some(("agent", p)) if p.starts_with('/') => out.public_agent = PathBuf::from(p),
            Some(("config" | "syslog_socket" | "agent", _)) => {
                return Err(format!(
                    "module argument \"{}\" needs an absolute path",
                    crate::text::sanitize(arg, 200)
                ))
            }
            None if arg == "debug" => out.debug = true,
            None if arg == "combined" => out.combined = true,
            _ => {
                return Err(format!(
                    "unknown module argument \"{}\"; known: config=PATH, syslog_socket=PATH, agent=PATH, debug, combined",
                    crate::text::sanitize(arg, 200)
                ))
            }
        }
    }
    Ok(out)
}

/// The PAM return code of an outcome: the one place where this is decided.
pub fn pam_code(outcome: &Outcome) -> PamResultCode {
    use PamResultCode::*;
    match outcome {
        Outcome::Verified { .. } | Outcome::RecoveryUsed { .. } | Outcome::Enrolled { .. } => {
            PAM_SUCCESS
        }
        Outcome::Unavailable { let_in: true, .. } => PAM_SUCCESS,
        Outcome::Unavailable { let_in: false, .. } | Outcome::Unprivileged { .. } => {
            PAM_AUTHINFO_UNAVAIL
        }
        Outcome::NotEnrolled { ignore: true, .. } | Outcome::NotRequired { .. } => PAM_IGNORE,
        Outcome::WrongCode { .. }
        | Outcome::EnrolmentFailed { .. }
        | Outcome::NotEnrolled { ignore: false, .. }
        | Outcome::UnknownUser { .. }
        | Outcome::Refused { .. }
        | Outcome::BadInput { .. } => PAM_AUTH_ERR,
        Outcome::ConfigError { .. } => PAM_SERVICE_ERR,
        Outcome::ConvError { .. } => PAM_CONV_ERR,
    }
}

/// Whether an unprivileged local user controls this process, and why: its real uid is not
/// root (the caller may signal it, ptrace it, set its rlimits), or the kernel marked it
/// AT_SECURE (setuid or setgid: su, sudo keep the caller's real uid, and the caller may stop
/// them and sets their rlimits). Such a process treats `failmode = "safe"` as `secure`.
pub fn controlled_by() -> Option<String> {
    // SAFETY: getuid and getauxval have no preconditions and cannot fail.
    let (uid, secure) = unsafe { (libc::getuid(), libc::getauxval(libc::AT_SECURE)) };
    if uid != 0 {
        Some(format!("the process runs with real uid {uid}"))
    } else if secure != 0 {
        Some("the process is setuid or setgid (AT_SECURE)".into())
    } else {
        None
    }
}

fn item<'a, T: ::pam::items::Item<'a> + std::ops::Deref<Target = &'a CStr>>(
    pamh: &'a PamHandle,
) -> Option<String> {
    let value = pamh.get_item::<T>().ok()??;
    Some(String::from_utf8_lossy(value.to_bytes()).into_owned())
}

fn authenticate(pamh: &mut PamHandle, args: &[&CStr], flags: PamFlag) -> PamResultCode {
    let parsed = parse_args(args.iter().map(|a| a.to_bytes()));
    // Even when another argument is wrong, log where the administrator asked.
    let socket = args
        .iter()
        .filter_map(|a| a.to_bytes().strip_prefix(b"syslog_socket="))
        .find(|p| p.starts_with(b"/"))
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)));
    let sink = socket.as_deref().map_or_else(Sink::default, Sink::at);
    let mut login = LoginContext {
        service: item::<Service>(pamh).unwrap_or_default(),
        rhost: item::<RHost>(pamh),
        tty: item::<Tty>(pamh),
        ruser: item::<RUser>(pamh),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        nonce: crate::text::random_hex(6),
        controlled_by: controlled_by(),
        ..Default::default()
    };
    let debug = parsed.as_ref().is_ok_and(|a| a.debug);
    let started = std::time::Instant::now();
    let mut traffic = Traffic::default();
    let outcome = run(pamh, &mut login, parsed, flags, &mut traffic);
    sink.outcome(&login, &outcome);
    if debug {
        sink.write(
            Severity::Debug,
            &format!(
                "debug: outcome={} http_requests={} via_agent={} elapsed_ms={}",
                outcome.name(),
                traffic.http_requests,
                traffic.via_agent,
                started.elapsed().as_millis()
            ),
        );
    }
    if outcome.is_a_wrong_guess() {
        fail_delay(pamh);
    }
    pam_code(&outcome)
}

/// How long libpam keeps a failed login waiting, as pam_unix asks by default: a wrong guess
/// costs time, so a caller who starts `sudo` in a loop tries a few codes a second, not a
/// hundred (libpam varies the wait by up to a half, and waits once per `pam_authenticate`).
const FAIL_DELAY_USEC: libc::c_uint = 2_000_000;

extern "C" {
    // libpam's; pam-bindings does not wrap these.
    fn pam_fail_delay(pamh: *mut PamHandle, usec: libc::c_uint) -> libc::c_int;
    fn pam_set_item(
        pamh: *mut PamHandle,
        item_type: libc::c_int,
        item: *const libc::c_void,
    ) -> libc::c_int;
}

/// `PAM_AUTHTOK` of <security/_pam_types.h>.
const PAM_AUTHTOK: libc::c_int = 6;

/// Hands the password part of a one-prompt answer to the modules after this one (pam_unix's
/// `use_first_pass`). libpam copies it; our copy is zeroised when `password` drops.
fn set_authtok(pamh: &mut PamHandle, password: &[u8]) -> Result<(), String> {
    let c = zeroize::Zeroizing::new(
        std::ffi::CString::new(password)
            .map_err(|_| "the password part holds a NUL byte".to_string())?
            .into_bytes_with_nul(),
    );
    // SAFETY: `pamh` is the live handle of this call; `c` is NUL-terminated and outlives the
    // call, and libpam copies the string.
    let rc = unsafe { pam_set_item(pamh, PAM_AUTHTOK, c.as_ptr().cast()) };
    if rc == PamResultCode::PAM_SUCCESS as libc::c_int {
        Ok(())
    } else {
        Err(format!("libpam did not take the password part (code {rc})"))
    }
}

/// Asks libpam to wait before `pam_authenticate` reports the failure (the application may take
/// the wait over with `PAM_FAIL_DELAY`). The answer is ignored: no delay is no reason to deny.
fn fail_delay(pamh: &mut PamHandle) {
    // SAFETY: `pamh` is the live handle libpam gave this call of pam_sm_authenticate.
    let _ = unsafe { pam_fail_delay(pamh, FAIL_DELAY_USEC) };
}

/// What a login sent to tru.ID, for the debug line.
#[derive(Default)]
struct Traffic {
    http_requests: u32,
    via_agent: bool,
}

fn run(
    pamh: &mut PamHandle,
    login: &mut LoginContext,
    args: Result<Args, String>,
    flags: PamFlag,
    traffic: &mut Traffic,
) -> Outcome {
    let args = match args {
        Ok(a) => a,
        Err(reason) => return Outcome::ConfigError { reason },
    };
    match pamh.get_user(None) {
        Ok(u) => login.user = u,
        Err(code) => {
            return Outcome::BadInput {
                reason: format!("no usable user name from PAM ({code:?})"),
            }
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return unprivileged(pamh, login, &args, flags, euid);
    }
    let mut cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::ConfigError {
                reason: e.to_string(),
            }
        }
    };
    cfg.login.combined |= args.combined;
    login.password_given = pamh
        .get_item::<AuthTok>()
        .ok()
        .flatten()
        .is_some_and(|t| !t.as_bytes().is_empty());
    // The user as NSS names them, and their groups from that name (flow does no I/O).
    crate::host::resolve(&cfg, login);
    let mut conv = match PamConv::from_handle(pamh, flags & PAM_SILENT != 0) {
        Some(c) => c,
        None => {
            return Outcome::ConvError {
                tries: 0,
                reason: "the application gave no conversation function".into(),
            }
        }
    };
    // Without an agent, the calls go through the direct client library (loaded only then).
    let mut api = AgentOrDirect::new(&cfg.api, Loaded::default());
    let mut codes = crate::recovery::Store::new(&cfg.recovery.file);
    // A user without a factor may enroll here (`unenrolled = "enroll"`): recorded in this
    // config, as `truid-pam enroll` records.
    let mut record = crate::enrolment::ConfigFile {
        path: &args.config,
        lookup: cfg.login.lookup,
    };
    let outcome = flow::authenticate_or_enroll(
        &cfg,
        login,
        &mut conv,
        &mut api,
        &mut codes,
        Some(&mut record),
    );
    traffic.http_requests = api.requests();
    traffic.via_agent = api.used_agent();
    let password = conv.take_password();
    drop(conv);
    hand_on_password(pamh, password, outcome)
    // `api` drops here: the direct client's connection closes and its thread ends before PAM
    // returns.
}

/// Hands the password part of a one-prompt answer to the rest of the stack, only for a login
/// this module lets in.
fn hand_on_password(
    pamh: &mut PamHandle,
    password: Option<zeroize::Zeroizing<Vec<u8>>>,
    outcome: Outcome,
) -> Outcome {
    match password {
        Some(p) if pam_code(&outcome) == PamResultCode::PAM_SUCCESS => {
            if let Err(reason) = set_authtok(pamh, &p) {
                return Outcome::ConvError {
                    tries: outcome.tries(),
                    reason,
                };
            }
            outcome
        }
        _ => outcome,
    }
}

/// The module without root (a screen locker, any program run as the user): it cannot read the
/// root-only config, so the agent runs the login for the caller's own account, over its public
/// socket. Without an agent it refuses (never PAM_IGNORE: SECURITY.md, "Programs that run as
/// the user").
fn unprivileged(
    pamh: &mut PamHandle,
    login: &mut LoginContext,
    args: &Args,
    flags: PamFlag,
    euid: libc::uid_t,
) -> Outcome {
    let Some(mut conv) = PamConv::from_handle(pamh, flags & PAM_SILENT != 0) else {
        return Outcome::ConvError {
            tries: 0,
            reason: "the application gave no conversation function".into(),
        };
    };
    let request = ServiceRequest::new(AgentService::Login {
        user: login.user.clone(),
        service: login.service.clone(),
        tty: login.tty.clone(),
        rhost: login.rhost.clone(),
        combined: args.combined,
    });
    match relay(&args.public_agent, &request, &mut conv) {
        // A locker that sends one text (i3lock) unlocks with password and code in it, the
        // password handed on to pam_unix (`combined`).
        Ok(outcome) => {
            // The agent applies `safe` as `secure` to such a caller; an agent of another
            // version that did not is not followed.
            let outcome = match outcome {
                Outcome::Unavailable { tries, reason, .. } => Outcome::Unavailable {
                    tries,
                    reason,
                    let_in: false,
                },
                other => other,
            };
            let password = conv.take_password();
            drop(conv);
            hand_on_password(pamh, password, outcome)
        }
        Err(RelayError::NoAgent(why)) => {
            flow::Conversation::error(&mut conv, flow::MSG_UNPRIVILEGED);
            Outcome::Unprivileged {
                reason: format!(
                    "the module runs as uid {euid}, not root (a screen locker or another program run as the user), and {why}: start the agent (systemctl enable --now pam_truid-agent), which checks such a caller's own code"
                ),
            }
        }
        // Denies under every failmode: the caller controls this process.
        Err(RelayError::Broken(reason)) => Outcome::Unavailable {
            tries: 0,
            reason,
            let_in: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let a = parse_args([b"config=/x/y.toml".as_slice(), b"debug"]).unwrap();
        assert_eq!(a.config, PathBuf::from("/x/y.toml"));
        assert!(a.debug);
        assert_eq!(parse_args([]).unwrap().config, PathBuf::from(DEFAULT_PATH));
        for bad in [
            &b"conf=/x"[..],
            b"config=relative.toml",
            b"debug=1",
            b"\xff",
        ] {
            assert!(parse_args([bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_verified_and_failmode_safe_succeed() {
        use PamResultCode::*;
        let cases = [
            (Outcome::Verified { tries: 1 }, PAM_SUCCESS),
            (Outcome::WrongCode { tries: 3 }, PAM_AUTH_ERR),
            (
                Outcome::NotEnrolled {
                    ignore: false,
                    tries: 3,
                },
                PAM_AUTH_ERR,
            ),
            (
                Outcome::NotEnrolled {
                    ignore: true,
                    tries: 0,
                },
                PAM_IGNORE,
            ),
            (
                Outcome::NotRequired {
                    reason: String::new(),
                },
                PAM_IGNORE,
            ),
            (Outcome::RecoveryUsed { tries: 1, left: 0 }, PAM_SUCCESS),
            (
                Outcome::Unprivileged {
                    reason: String::new(),
                },
                PAM_AUTHINFO_UNAVAIL,
            ),
            (
                Outcome::UnknownUser {
                    tries: 0,
                    reason: String::new(),
                },
                PAM_AUTH_ERR,
            ),
            (
                Outcome::Refused {
                    tries: 0,
                    reason: String::new(),
                },
                PAM_AUTH_ERR,
            ),
            (
                Outcome::Unavailable {
                    tries: 0,
                    reason: String::new(),
                    let_in: false,
                },
                PAM_AUTHINFO_UNAVAIL,
            ),
            (
                Outcome::Unavailable {
                    tries: 0,
                    reason: String::new(),
                    let_in: true,
                },
                PAM_SUCCESS,
            ),
            (
                Outcome::ConfigError {
                    reason: String::new(),
                },
                PAM_SERVICE_ERR,
            ),
            (
                Outcome::ConvError {
                    tries: 0,
                    reason: String::new(),
                },
                PAM_CONV_ERR,
            ),
            (
                Outcome::BadInput {
                    reason: String::new(),
                },
                PAM_AUTH_ERR,
            ),
        ];
        for (o, code) in cases {
            assert_eq!(pam_code(&o), code, "{o:?}");
        }
    }
}
