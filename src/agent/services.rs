//! The daemon's services for unprivileged callers, on the public socket: a screen locker's
//! login and a user's own enrolment. Each caller is served for the account its socket peer
//! credentials (`SO_PEERCRED`) name, never one its request names; the agent reads the system
//! config itself, never a path or setting a caller sends. SECURITY.md, "The agent", has the
//! whole model; each refusal here has a test in tests/agent_services.rs.

use super::protocol::{
    line_of, peer_uid, FromCaller, Lines, Service, ServiceRequest, ToCaller, PROTOCOL,
};
use super::serving::Projects;
use crate::config::Config;
use crate::enrolment::{self, ConfigFile};
use crate::flow::{self, Account, ConvError, Conversation, LoginContext, Outcome};
use crate::log::Sink;
use crate::secret::Secret;
use crate::text::sanitize;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Time a caller has to send its request once connected.
const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// Time a person has to answer one prompt (sshd's LoginGraceTime is 2 min).
const ANSWER_WAIT: Duration = Duration::from_secs(120);
/// Connections of unprivileged callers open at once, all together: each holds a thread while a
/// person types, and the root socket's workers are never among them.
pub const MAX_CALLERS: usize = 32;
/// Connections one uid may have open at once: the one served and one more, told it is busy.
/// So a user cannot take the threads of everyone else's lockers.
const CONNECTIONS_PER_UID: usize = 2;
/// Self-service enrolments a uid may start in `ENROL_WINDOW`: each makes a factor at tru.ID.
const ENROLMENTS_PER_UID: usize = 3;
const ENROL_WINDOW: Duration = Duration::from_secs(3600);
/// As the module asks libpam for after a wrong code (`pam::FAIL_DELAY_USEC`): a guess costs
/// time here too, and one uid runs one request at a time.
const WRONG_GUESS_WAIT: Duration = Duration::from_secs(2);

pub const MSG_BUSY: &str =
    "Another tru.ID request of yours is still running: finish or close it, then try again.";
pub const MSG_NOT_YOURS: &str =
    "The pam_truid agent checks only your own code, and this program asked for another account's.";
pub const MSG_SELF_OFF: &str =
    "Enrolling yourself is turned off on this host: ask your administrator to enroll you (or to set [enroll] self = true).";
pub const MSG_NOT_IN_GROUPS: &str =
    "You are not in the groups that may enroll themselves on this host ([enroll] groups): ask your administrator.";
pub const MSG_TOO_MANY: &str =
    "You have started too many enrolments in the last hour: wait an hour, or ask your administrator.";
pub const MSG_AGENT_CONFIG: &str =
    "The pam_truid agent cannot read its configuration: ask your administrator (the system log has the reason).";

/// What the services keep between callers: the config's path, and who is being served.
pub struct Services {
    config: PathBuf,
    sink: Sink,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Open connections, by uid.
    open: HashMap<u32, usize>,
    /// uids with a request running (one each).
    busy: HashSet<u32>,
    /// When each uid started its recent enrolments.
    enrolments: HashMap<u32, Vec<Instant>>,
}

impl Services {
    pub fn new(config: PathBuf, sink: Sink) -> Self {
        Services {
            config,
            sink,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a new connection, by its peer's uid: none when that uid or everyone
    /// together have all their places (the connection is then closed unanswered).
    pub fn admit(self: &Arc<Self>, stream: &UnixStream) -> Result<Admitted, String> {
        let uid = peer_uid(stream).ok_or("a caller without peer credentials was refused")?;
        let mut state = self.state();
        let total: usize = state.open.values().sum();
        let mine = state.open.get(&uid).copied().unwrap_or(0);
        if total >= MAX_CALLERS || mine >= CONNECTIONS_PER_UID {
            return Err(format!(
                "uid {uid} has {mine} connections open, all users {total}: one more was closed unanswered"
            ));
        }
        state.open.insert(uid, mine + 1);
        Ok(Admitted {
            services: self.clone(),
            uid,
        })
    }

    /// Serves one caller of the public socket to the end: its request, the relayed
    /// conversation, the outcome.
    pub fn serve(&self, mut stream: UnixStream, projects: &Projects) -> Result<(), String> {
        let Some(uid) = peer_uid(&stream) else {
            return Err("a caller without peer credentials was refused".into());
        };
        // One deadline for the whole request line, not one per read: a caller that trickles a
        // byte at a time is cut off all the same.
        let mut lines = Lines::new();
        let line = match lines.next_by(&mut stream, Instant::now() + REQUEST_WAIT) {
            Ok(line) => line,
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(format!("uid {uid}: reading a request: {e}")),
        };
        let mut relay = Relay { stream, lines };
        // Refusals before the request runs are logged too, under the caller's name.
        let caller = || {
            let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_default();
            context(uid, &name, "pam_truid-agent")
        };
        let request = match serde_json::from_slice::<ServiceRequest>(&line) {
            Ok(r) if r.v == PROTOCOL => r,
            Ok(r) => {
                let outcome = Outcome::ConfigError {
                    reason: format!(
                        "the agent speaks protocol {PROTOCOL}, the caller {}: install the same version of both",
                        r.v
                    ),
                };
                return relay.end(self.logged(&caller(), outcome));
            }
            Err(e) => {
                let outcome = Outcome::BadInput {
                    reason: format!("the request could not be read ({:?} error)", e.classify()),
                };
                return relay.end(self.logged(&caller(), outcome));
            }
        };
        // One request per uid at a time: a user cannot hold many threads, nor guess codes in
        // parallel.
        let Some(_busy) = Busy::take(self, uid) else {
            relay.error(MSG_BUSY);
            let outcome = Outcome::Refused {
                tries: 0,
                reason: format!("uid {uid} has another request running"),
            };
            return relay.end(self.logged(&caller(), outcome));
        };
        let outcome = self.run(uid, request.service, &mut relay, projects);
        relay.end(outcome)
    }

    fn run(&self, uid: u32, service: Service, relay: &mut Relay, projects: &Projects) -> Outcome {
        let account = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
            Ok(Some(u)) if crate::config::is_valid_name(&u.name) => u.name,
            _ => {
                return self.logged(
                    &context(uid, "", "pam_truid-agent"),
                    Outcome::UnknownUser {
                        tries: 0,
                        reason: format!("NSS does not name uid {uid}"),
                    },
                )
            }
        };
        let cfg = match Config::load(&self.config) {
            Ok(c) => c,
            Err(e) => {
                relay.error(MSG_AGENT_CONFIG);
                return self.logged(
                    &context(uid, &account, "pam_truid-agent"),
                    Outcome::ConfigError {
                        reason: e.to_string(),
                    },
                );
            }
        };
        match service {
            Service::Login {
                user,
                service,
                tty,
                rhost,
                combined,
            } => {
                let mut login = context(uid, &account, &service);
                login.tty = tty;
                login.rhost = rhost;
                let mut cfg = cfg;
                // As the module argument does for a root login.
                cfg.login.combined |= combined;
                self.login(&cfg, uid, &user, login, relay, projects)
            }
            Service::Enroll { phone } => {
                let login = context(uid, &account, "truid-pam-enroll");
                self.enroll(&cfg, uid, login, phone.as_deref(), relay, projects)
            }
        }
    }

    /// A locker's login: the flow of a root login, for the caller's own account only.
    fn login(
        &self,
        cfg: &Config,
        uid: u32,
        user: &str,
        mut login: LoginContext,
        relay: &mut Relay,
        projects: &Projects,
    ) -> Outcome {
        // The name the program gave must be the caller's own account: NSS must give it the
        // caller's uid (`Alice` for `alice` is fine, `root` or `bob` is not). That name, as NSS
        // gives it, is then the one checked, as a root login checks it: of two names sharing a
        // uid, the other one's factor (or its lack) must not stand in.
        let named = nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .filter(|u| u.uid.as_raw() == uid && crate::config::is_valid_name(&u.name));
        if let Some(u) = &named {
            login.user = u.name.clone();
        }
        if named.is_none() || matches!(login.service.as_str(), "su" | "su-l") {
            relay.error(MSG_NOT_YOURS);
            return self.logged(
                &login,
                Outcome::Refused {
                    tries: 0,
                    reason: format!(
                        "uid {uid} asked for the code of \"{}\" (service \"{}\"): only the caller's own account is checked",
                        sanitize(user, 64),
                        sanitize(&login.service, 32)
                    ),
                },
            );
        }
        crate::host::resolve(cfg, &mut login);
        let mut codes = crate::recovery::Store::new(&cfg.recovery.file);
        let outcome = projects.with_client(&cfg.api, |client| {
            flow::authenticate(cfg, &login, relay, client, &mut codes)
        });
        let outcome = outcome.unwrap_or_else(|reason| Outcome::ConfigError { reason });
        if outcome.is_a_wrong_guess() {
            std::thread::sleep(WRONG_GUESS_WAIT);
        }
        self.logged(&login, outcome)
    }

    /// A user's own enrolment (`truid-pam enroll` without root).
    fn enroll(
        &self,
        cfg: &Config,
        uid: u32,
        mut login: LoginContext,
        phone: Option<&str>,
        relay: &mut Relay,
        projects: &Projects,
    ) -> Outcome {
        let refuse = |relay: &mut Relay, msg: &str, reason: &str| {
            relay.error(msg);
            Outcome::Refused {
                tries: 0,
                reason: reason.to_string(),
            }
        };
        if !cfg.enroll.self_service {
            let o = refuse(relay, MSG_SELF_OFF, "[enroll] self is false");
            return self.logged(&login, o);
        }
        crate::host::resolve(cfg, &mut login);
        let Account::Known(user) = login.account.clone() else {
            let o = refuse(relay, MSG_AGENT_CONFIG, "NSS could not resolve the caller");
            return self.logged(&login, o);
        };
        if login.may_enroll != Some(true) {
            let o = refuse(
                relay,
                MSG_NOT_IN_GROUPS,
                "the caller is in none of [enroll] groups",
            );
            return self.logged(&login, o);
        }
        if !self.may_start_enrolment(uid) {
            let o = refuse(
                relay,
                MSG_TOO_MANY,
                &format!("uid {uid} started {ENROLMENTS_PER_UID} enrolments within the hour"),
            );
            return self.logged(&login, o);
        }
        let mut record = ConfigFile {
            path: &cfg.path,
            lookup: cfg.login.lookup,
        };
        let enrolled = projects.with_client(&cfg.api, |client| {
            enrolment::enroll(cfg, &user, phone, relay, client, &mut record)
        });
        let outcome = match enrolled {
            Ok(e) => {
                if !matches!(e, enrolment::Enrolled::Active { .. }) {
                    relay.error(&e.reason());
                }
                flow::enrolment_outcome(e)
            }
            Err(reason) => Outcome::ConfigError { reason },
        };
        if let Outcome::Enrolled { factor } = &outcome {
            relay.info(&format!(
                "Enrolled: your logins now ask for the code of factor {factor}."
            ));
        }
        self.logged(&login, outcome)
    }

    /// Counts an enrolment start for `uid`, if it has not used up its starts in the window.
    fn may_start_enrolment(&self, uid: u32) -> bool {
        let mut state = self.state();
        let starts = state.enrolments.entry(uid).or_default();
        starts.retain(|t| t.elapsed() < ENROL_WINDOW);
        if starts.len() >= ENROLMENTS_PER_UID {
            return false;
        }
        starts.push(Instant::now());
        true
    }

    /// Writes the outcome line (the agent's own record, whatever the caller logs) and gives
    /// the outcome back.
    fn logged(&self, login: &LoginContext, outcome: Outcome) -> Outcome {
        self.sink.outcome(login, &outcome);
        outcome
    }
}

/// A connection's place (`Services::admit`); given back when dropped, also by a panic.
pub struct Admitted {
    services: Arc<Services>,
    uid: u32,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = self.services.state();
        if let Some(n) = state.open.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.open.remove(&self.uid);
            }
        }
    }
}

/// A uid's one running request; given back when dropped, also by a panic.
struct Busy<'a> {
    services: &'a Services,
    uid: u32,
}

impl<'a> Busy<'a> {
    fn take(services: &'a Services, uid: u32) -> Option<Busy<'a>> {
        // The lock is let go before a `Busy` exists: one dropped under it would take it again.
        let taken = services.state().busy.insert(uid);
        taken.then(|| Busy { services, uid })
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.services.state().busy.remove(&self.uid);
    }
}

/// A login of `uid` for the log and the flow: the service as the caller named it, marked as
/// the agent's, and `controlled_by` set, since the caller controls the program that asked
/// (`failmode = "safe"` acts as `secure`).
fn context(uid: u32, account: &str, service: &str) -> LoginContext {
    LoginContext {
        user: account.to_string(),
        // Raw, as PAM's items are: the log line and the reference ID escape it themselves.
        service: service.chars().take(64).collect(),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        nonce: crate::text::random_hex(6),
        controlled_by: Some(format!(
            "an unprivileged caller (uid {uid}) asked the agent"
        )),
        agent_caller: Some(uid),
        ..Default::default()
    }
}

/// The person's side of the conversation, relayed over the caller's socket.
struct Relay {
    stream: UnixStream,
    lines: Lines,
}

impl Relay {
    fn send(&mut self, message: &ToCaller) -> std::io::Result<()> {
        let line = line_of(message).ok_or(std::io::ErrorKind::InvalidData)?;
        self.stream.set_write_timeout(Some(REQUEST_WAIT))?;
        self.stream.write_all(&line)
    }

    fn ask(&mut self, message: ToCaller) -> Result<Secret, ConvError> {
        let lost =
            |e: std::io::Error| ConvError(format!("the caller's conversation was lost ({e})"));
        self.send(&message).map_err(lost)?;
        let by = Instant::now() + ANSWER_WAIT;
        let line = self.lines.next_by(&mut self.stream, by).map_err(lost)?;
        match serde_json::from_slice::<FromCaller>(&line) {
            Ok(FromCaller::Answer(a)) => Ok(a),
            Ok(FromCaller::NoAnswer(why)) => Err(ConvError(format!(
                "the caller's conversation failed: {}",
                sanitize(&why, 200)
            ))),
            Err(_) => Err(ConvError(
                "the caller sent an answer that could not be read".into(),
            )),
        }
    }

    /// Sends the outcome, and closes. A config error's details stay in the agent's log: the
    /// caller is told only that there is one.
    fn end(mut self, outcome: Outcome) -> Result<(), String> {
        let outcome = match outcome {
            Outcome::ConfigError { .. } => Outcome::ConfigError {
                reason: "the pam_truid agent's configuration or files have a problem (the system log says which)".into(),
            },
            other => other,
        };
        self.send(&ToCaller::Done(outcome))
            .map_err(|e| format!("writing an outcome: {e}"))
    }
}

impl Conversation for Relay {
    fn prompt_secret(&mut self, text: &str) -> Result<Secret, ConvError> {
        self.ask(ToCaller::PromptSecret(text.to_string()))
    }

    fn prompt_echo(&mut self, text: &str) -> Result<Secret, ConvError> {
        self.ask(ToCaller::PromptEcho(text.to_string()))
    }

    fn info(&mut self, text: &str) {
        let _ = self.send(&ToCaller::Info(text.to_string()));
    }

    fn error(&mut self, text: &str) {
        let _ = self.send(&ToCaller::Error(text.to_string()));
    }

    fn keep_password(&mut self, password: Secret) {
        let _ = self.send(&ToCaller::KeepPassword(password));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_gets_two_connections_and_gives_them_back() {
        let services = Arc::new(Services::new("/nonexistent.toml".into(), Sink::default()));
        let pairs: Vec<_> = (0..3).map(|_| UnixStream::pair().unwrap()).collect();
        let first = services.admit(&pairs[0].0).unwrap();
        let _second = services.admit(&pairs[1].0).unwrap();
        assert!(services.admit(&pairs[2].0).is_err());
        drop(first);
        assert!(services.admit(&pairs[2].0).is_ok());
        assert!(services.state().open.values().sum::<usize>() <= CONNECTIONS_PER_UID);
    }
}
