//! Every outcome of a login, written through one function in one fixed, greppable form:
//!
//! `pam_truid[PID]: outcome=<name> user="<u>" service="<s>" rhost="<h>" tty="<t>" tries=<n> reason="<why>"`
//!
//! to syslog, facility authpriv. Values are escaped (see `text::sanitize`), so a user name or
//! a remote host cannot forge a line; secrets never reach this module at all.

use crate::flow::{Account, LoginContext, Outcome};
use crate::text::sanitize;
use std::path::{Path, PathBuf};

/// The syslog socket of the host; the module argument `syslog_socket=` points elsewhere
/// (a container's or a test's listener).
pub const DEFAULT_SOCKET: &str = "/dev/log";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Debug,
    Info,
    Notice,
    Warning,
    Err,
    Crit,
}

/// The one line for an outcome, without the syslog header.
/// When NSS names the account whose factor was asked differently from `user=` (a
/// case-insensitive directory, or `su = "caller"`), ` account="<name>"` ends the line. A login
/// the agent ran for an unprivileged caller has ` via="agent" caller_uid=N` right after the
/// outcome (that caller named the service, rhost and tty).
pub fn outcome_line(login: &LoginContext, outcome: &Outcome) -> String {
    let account = match &login.account {
        Account::Known(name) if *name != login.user => {
            format!(" account=\"{}\"", sanitize(name, 128))
        }
        _ => String::new(),
    };
    // First after the outcome: whatever the caller wrote comes after it, even in a line a
    // relay cuts at 1024 bytes.
    let via = login
        .agent_caller
        .map(|uid| format!(" via=\"agent\" caller_uid={uid}"))
        .unwrap_or_default();
    format!(
        "outcome={}{via} user=\"{}\" service=\"{}\" rhost=\"{}\" tty=\"{}\" tries={} reason=\"{}\"{account}",
        outcome.name(),
        sanitize(&login.user, 128),
        sanitize(&login.service, 64),
        sanitize(login.rhost.as_deref().unwrap_or(""), 128),
        sanitize(login.tty.as_deref().unwrap_or(""), 64),
        outcome.tries(),
        sanitize(&outcome.reason(), 300),
    )
}

pub fn severity(outcome: &Outcome) -> Severity {
    match outcome {
        Outcome::Verified { .. } => Severity::Info,
        Outcome::NotEnrolled { .. } | Outcome::NotRequired { .. } => Severity::Notice,
        // A new factor bound to an account: the administrator should see each one.
        Outcome::Enrolled { .. } => Severity::Warning,
        Outcome::WrongCode { .. }
        | Outcome::EnrolmentFailed { .. }
        | Outcome::UnknownUser { .. }
        | Outcome::Refused { .. }
        | Outcome::BadInput { .. } => Severity::Warning,
        Outcome::ConvError { .. } => Severity::Err,
        Outcome::ConfigError { .. } | Outcome::Unprivileged { .. } => Severity::Err,
        // Letting a login in without the second factor must stand out in any log review.
        // So must a recovery code: the administrator hears of every use (and of the last one).
        Outcome::Unavailable { let_in: true, .. } | Outcome::RecoveryUsed { .. } => Severity::Crit,
        Outcome::Unavailable { .. } => Severity::Err,
    }
}

/// Where log lines go.
#[derive(Debug, Clone)]
pub struct Sink {
    socket: PathBuf,
}

impl Default for Sink {
    fn default() -> Self {
        Sink {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

impl Sink {
    pub fn at(socket: &Path) -> Sink {
        Sink {
            socket: socket.to_path_buf(),
        }
    }

    /// Writes the outcome line. A host without a syslog daemon loses the line rather than the
    /// login: the PAM result never depends on logging.
    pub fn outcome(&self, login: &LoginContext, outcome: &Outcome) {
        self.write(severity(outcome), &outcome_line(login, outcome));
    }

    /// A line that is not an outcome (debug detail); same escaping rules apply to callers.
    pub fn write(&self, severity: Severity, line: &str) {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_AUTHPRIV,
            hostname: None,
            process: "pam_truid".into(),
            pid: std::process::id(),
        };
        let level = match severity {
            Severity::Debug => syslog::Severity::LOG_DEBUG,
            Severity::Info => syslog::Severity::LOG_INFO,
            Severity::Notice => syslog::Severity::LOG_NOTICE,
            Severity::Warning => syslog::Severity::LOG_WARNING,
            Severity::Err => syslog::Severity::LOG_ERR,
            Severity::Crit => syslog::Severity::LOG_CRIT,
        };
        let mut datagram = Vec::with_capacity(line.len() + 64);
        if syslog::LogFormat::format(&formatter, &mut datagram, level, line).is_err() {
            return;
        }
        // Sent by hand rather than through syslog's logger so the send is bounded: a wedged
        // syslog daemon must cost a log line, not stall every login of sshd and sudo.
        let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
            return;
        };
        let _ = sock.set_write_timeout(Some(SEND_TIMEOUT));
        let _ = sock.send_to(&datagram, &self.socket);
    }
}

/// How long a log line may wait for room in the syslog socket's queue.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);
