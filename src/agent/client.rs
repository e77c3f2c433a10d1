//! The module's side: each call of the login, sent to the agent while one of root listens,
//! else to tru.ID directly (`super::direct`). `truid-pam test` logs in through it too, and
//! `truid-pam check` connects with it to see whether an agent answers.

use super::direct::Direct;
use super::protocol::{
    millis, peer_uid, read_line, Answer, Call, Reply, Request, WireApi, PROTOCOL,
};
use crate::api::{timed_out_error, ApiError, ChallengeStatus, FactorKind};
use crate::config::{ApiConfig, FactorId};
use crate::deadline::Deadline;
use crate::ports::{Ahead, Authenticator, NewFactor};
use crate::secret::Secret;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Past the module's deadline, time left for the agent's own answer to arrive.
const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// The module's calls, sent to the agent while one listens, else to tru.ID directly (`D`: the
/// direct client library in the module, the client itself in `truid-pam`).
///
/// Each call connects anew, so a login that waits minutes for a person holds no connection,
/// and an agent restarted mid-login costs nothing: the next call finds the new one, or goes
/// direct.
///
/// What the flow asks for ahead (`Authenticator::prepare`: the challenge, and the lookup before
/// it) runs on a thread of its own while the person reads the prompt and types; the call that
/// needs it then waits for that thread and takes its answer. The thread ends before any other
/// call, and before this value is dropped, so none outlives the login.
pub struct AgentOrDirect<D: Direct + Send + 'static> {
    /// `None` while the calls ahead run (they have it), or if their thread died.
    calls: Option<Calls<D>>,
    ahead: Option<AheadThread<D>>,
    prepared: Prepared,
}

/// The thread of the calls made ahead: it gives back the calls and their answers (none if it
/// could not take the calls).
type AheadThread<D> = std::thread::JoinHandle<Option<(Calls<D>, Prepared)>>;

/// What makes the calls, whichever thread runs them.
struct Calls<D: Direct> {
    api: ApiConfig,
    /// `None` once a connect found no agent: the rest of the login goes direct.
    socket: Option<PathBuf>,
    direct: D,
    deadline: Deadline,
    requests: u32,
    agent_answers: u32,
    /// Set when the agent took time and gave no answer (hung, died mid-call, or busy past the
    /// deadline): then no later failure is an outage, since a local user can make the agent
    /// busy (their own wrong codes draw 429s whose `Retry-After` it waits out).
    agent_stalled: bool,
}

/// Answers got ahead, each for the arguments it was asked with.
#[derive(Default)]
struct Prepared {
    lookup: Option<(String, Result<Option<FactorId>, ApiError>)>,
    challenge: Option<PreparedChallenge>,
}

struct PreparedChallenge {
    factor: FactorId,
    reference_id: String,
    id: Result<String, ApiError>,
    made: std::time::Instant,
}

/// A challenge made ahead is used for a code typed within this long; one older is left unused
/// (tru.ID's challenge lifetime is not documented; the emulator's is 5 min), and the code gets
/// a fresh one.
const PREPARED_FOR: Duration = Duration::from_secs(120);

impl<D: Direct + Send + 'static> AgentOrDirect<D> {
    pub fn new(api: &ApiConfig, direct: D) -> Self {
        AgentOrDirect {
            calls: Some(Calls {
                api: api.clone(),
                socket: api.agent.clone(),
                direct,
                deadline: Deadline::new(api.timeout),
                requests: 0,
                agent_answers: 0,
                agent_stalled: false,
            }),
            ahead: None,
            prepared: Prepared::default(),
        }
    }

    /// HTTP requests this login sent to tru.ID, through the agent or not.
    pub fn requests(&mut self) -> u32 {
        self.calls().map_or(0, |c| c.requests)
    }

    /// Whether any call went through the agent (the debug line says so).
    pub fn used_agent(&mut self) -> bool {
        self.calls().is_ok_and(|c| c.agent_answers > 0)
    }

    /// The calls, once those ahead are done (their answers then wait in `prepared`).
    fn calls(&mut self) -> Result<&mut Calls<D>, ApiError> {
        if let Some(ahead) = self.ahead.take() {
            // A panic there is a bug: the login denies (no calls are left to make).
            if let Ok(Some((calls, prepared))) = ahead.join() {
                self.calls = Some(calls);
                self.prepared = prepared;
            }
        }
        self.calls
            .as_mut()
            .ok_or_else(|| ApiError::Failed("the calls made ahead failed inside the module".into()))
    }

    /// Runs `job` on a thread of its own, with the calls. A thread that cannot start (limits
    /// the caller of a setuid program can set) is no failure: the calls are then made as they
    /// are needed.
    fn run_ahead(&mut self, job: impl FnOnce(&mut Calls<D>, &mut Prepared) + Send + 'static) {
        if self.calls().is_err() {
            return;
        }
        let (hand, take) = std::sync::mpsc::channel::<Calls<D>>();
        // The calls go to the thread only once it runs: if it cannot start, they stay here.
        let started = std::thread::Builder::new()
            .name("pam_truid-ahead".into())
            // Set, so that RUST_MIN_STACK in the environment (su keeps its caller's) cannot
            // give the thread a stack too small for a TLS handshake.
            .stack_size(crate::THREAD_STACK)
            .spawn(move || {
                let mut calls = take.recv().ok()?;
                let mut prepared = Prepared::default();
                job(&mut calls, &mut prepared);
                Some((calls, prepared))
            });
        let Ok(thread) = started else { return };
        if let Some(calls) = self.calls.take() {
            if let Err(back) = hand.send(calls) {
                self.calls = Some(back.0);
            }
        }
        self.ahead = Some(thread);
    }
}

impl<D: Direct + Send + 'static> Drop for AgentOrDirect<D> {
    fn drop(&mut self) {
        // No thread of the module outlives the login (the module may be unloaded after it).
        if let Some(ahead) = self.ahead.take() {
            let _ = ahead.join();
        }
    }
}

impl<D: Direct> Calls<D> {
    /// Sends `call` to the agent; `None` when the call must go direct: no agent of root listens,
    /// it speaks another protocol version, or it failed to answer.
    fn via_agent(&mut self, call: &impl Fn() -> Call) -> Option<Result<Option<String>, ApiError>> {
        let path = self.socket.as_deref()?;
        let Some(left) = self.deadline.remaining() else {
            return Some(Err(timed_out_error(self.api.timeout)));
        };
        let Some(stream) = connect(path) else {
            self.socket = None;
            return None;
        };
        let request = Request {
            v: PROTOCOL,
            api: WireApi::new(&self.api),
            spent_ms: millis(self.deadline.spent()),
            call: call(),
        };
        let reply = self
            .deadline
            .charge(|| exchange(stream, &request, left + ANSWER_GRACE));
        let answer = match reply {
            Some(Reply { requests, answer }) => {
                self.requests += requests;
                answer
            }
            // The agent broke (died mid-call, hung, answered nonsense): tru.ID is asked
            // directly with what is left of the budget. That is safe even for a code: one the
            // agent did get through has spent its challenge, and tru.ID refuses it again.
            None => {
                self.agent_stalled = true;
                Answer::GoDirect(String::new())
            }
        };
        if let Answer::GoDirect(_) = answer {
            self.socket = None;
            return None;
        }
        self.agent_answers += 1;
        Some(answer.into_result())
    }

    /// The call sent to tru.ID by this process, on the budget the login has left.
    fn via_direct(&mut self, call: Call) -> Result<Option<String>, ApiError> {
        if self.deadline.remaining().is_none() {
            return Err(timed_out_error(self.api.timeout));
        }
        let spent = self.deadline.spent();
        let (api, direct) = (&self.api, &mut self.direct);
        let reply = self.deadline.charge(|| direct.call(api, spent, call));
        self.requests += reply.requests;
        reply.answer.into_result()
    }

    /// One call: through the agent, or to tru.ID directly; its value read by `read`.
    fn ask<T>(
        &mut self,
        call: impl Fn() -> Call,
        read: impl FnOnce(Option<String>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let answer = match self.via_agent(&call) {
            Some(answer) => answer,
            None => self.via_direct(call()),
        };
        let answer = match answer {
            Err(ApiError::Unavailable(why)) if self.agent_stalled => {
                Err(ApiError::Failed(format!(
                    "{why}, after the local agent gave no answer (which a local user can \
                     cause: no outage of tru.ID)"
                )))
            }
            other => other,
        };
        read(answer?)
    }

    fn find_factor(&mut self, user: &str) -> Result<Option<FactorId>, ApiError> {
        self.ask(
            || Call::FindFactor { user: user.into() },
            |v| match v {
                None => Ok(None),
                Some(id) => FactorId::parse(&id).map(Some).ok_or_else(|| {
                    ApiError::Refused(
                        "a malformed factor ID came back from the agent or the direct client"
                            .into(),
                    )
                }),
            },
        )
    }

    fn create_challenge(
        &mut self,
        factor: &FactorId,
        reference_id: &str,
    ) -> Result<String, ApiError> {
        self.ask(
            || Call::CreateChallenge {
                factor: factor.as_str().into(),
                reference_id: reference_id.into(),
            },
            want_value,
        )
    }

    /// A challenge made now, kept for the code to come.
    fn prepare_challenge(&mut self, factor: FactorId, reference_id: String, into: &mut Prepared) {
        let id = self.create_challenge(&factor, &reference_id);
        into.challenge = Some(PreparedChallenge {
            factor,
            reference_id,
            id,
            made: std::time::Instant::now(),
        });
    }
}

/// A connection to the agent at `path`, if one of root listens there and has room.
pub fn connect(path: &Path) -> Option<UnixStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
    // Non-blocking, because a blocking connect to a listener whose queue is full waits without
    // end; a busy agent is as good as none.
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .ok()?;
    socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &UnixAddr::new(path).ok()?,
    )
    .ok()?;
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false).ok()?;
    // Anyone may bind a socket where the folder lets them; only root's answers are believed.
    (peer_uid(&stream) == Some(0)).then_some(stream)
}

/// Sends the request and reads the answer; `None` if the agent does not give a readable one.
fn exchange(mut stream: UnixStream, request: &Request, wait: Duration) -> Option<Reply> {
    stream.set_write_timeout(Some(wait)).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    stream.write_all(&request.to_line()?).ok()?;
    let line = read_line(&mut stream).ok()?;
    serde_json::from_slice(&line).ok()
}

/// A value the call must have. An answer without one is malformed, and malformed input denies
/// (Refused): it must never become "tru.ID unavailable", which `failmode = "safe"` lets in.
fn want_value(v: Option<String>) -> Result<String, ApiError> {
    v.ok_or_else(|| {
        ApiError::Refused("no value came back from the agent or the direct client".into())
    })
}

fn want_status(v: Option<String>) -> Result<ChallengeStatus, ApiError> {
    Ok(ChallengeStatus::from_name(&want_value(v)?))
}

impl<D: Direct + Send + 'static> Authenticator for AgentOrDirect<D> {
    fn prepare(&mut self, ahead: Ahead<'_>) {
        match ahead {
            Ahead::Challenge {
                factor,
                reference_id,
            } => {
                let (factor, reference_id) = (factor.clone(), reference_id.to_string());
                self.run_ahead(move |calls, into| {
                    calls.prepare_challenge(factor, reference_id, into)
                });
            }
            Ahead::LookupThenChallenge { user, reference_id } => {
                let (user, reference_id) = (user.to_string(), reference_id.to_string());
                self.run_ahead(move |calls, into| {
                    let found = calls.find_factor(&user);
                    if let Ok(Some(factor)) = &found {
                        calls.prepare_challenge(factor.clone(), reference_id, into);
                    }
                    into.lookup = Some((user, found));
                });
            }
        }
    }

    fn create_challenge(
        &mut self,
        factor: &FactorId,
        reference_id: &str,
    ) -> Result<String, ApiError> {
        // Settled first: the calls ahead may still be running.
        self.calls()?;
        // tru.ID unavailable ahead (a 503 while the person typed) says nothing of tru.ID now:
        // asked again. Any other failure stands (asked again with its time spent, it would
        // end as "no answer in time", an outage).
        let ready = self.prepared.challenge.take().filter(|p| {
            p.factor == *factor
                && p.reference_id == reference_id
                && p.made.elapsed() < PREPARED_FOR
                && !matches!(p.id, Err(ApiError::Unavailable(_)))
        });
        match ready {
            Some(p) => p.id,
            None => self.calls()?.create_challenge(factor, reference_id),
        }
    }

    fn verify(
        &mut self,
        factor: &FactorId,
        challenge_id: &str,
        code: &Secret,
    ) -> Result<ChallengeStatus, ApiError> {
        self.calls()?.ask(
            || Call::Verify {
                factor: factor.as_str().into(),
                challenge_id: challenge_id.into(),
                code: code.clone(),
            },
            want_status,
        )
    }

    fn find_factor(&mut self, user: &str) -> Result<Option<FactorId>, ApiError> {
        self.calls()?;
        // As for the challenge: tru.ID unavailable ahead is asked again.
        let ready = self
            .prepared
            .lookup
            .take()
            .filter(|(u, r)| u == user && !matches!(r, Err(ApiError::Unavailable(_))));
        match ready {
            Some((_, found)) => found,
            None => self.calls()?.find_factor(user),
        }
    }

    fn factor_kind(&mut self, factor: &FactorId) -> Result<FactorKind, ApiError> {
        self.calls()?.ask(
            || Call::FactorKind {
                factor: factor.as_str().into(),
            },
            |v| Ok(FactorKind::from_name(&want_value(v)?)),
        )
    }

    fn start_push(
        &mut self,
        factor: &FactorId,
        reference_id: &str,
        phone: &str,
        message: Option<&str>,
    ) -> Result<String, ApiError> {
        self.calls()?.ask(
            || Call::StartPush {
                factor: factor.as_str().into(),
                reference_id: reference_id.into(),
                phone: phone.into(),
                message: message.map(str::to_string),
            },
            want_value,
        )
    }

    fn challenge_status(
        &mut self,
        factor: &FactorId,
        challenge_id: &str,
    ) -> Result<ChallengeStatus, ApiError> {
        self.calls()?.ask(
            || Call::ChallengeStatus {
                factor: factor.as_str().into(),
                challenge_id: challenge_id.into(),
            },
            want_status,
        )
    }

    fn pause(&mut self, wait: Duration) {
        // The person answering on the phone: not charged to the API deadline.
        std::thread::sleep(wait);
    }

    fn new_factor(&mut self, phone: &str, external_id: &str) -> Result<NewFactor, ApiError> {
        self.calls()?.ask(
            || Call::NewFactor {
                phone: phone.into(),
                external_id: external_id.into(),
            },
            |v| {
                let v = Secret::new(want_value(v)?);
                let (id, uri) = v
                    .expose()
                    .split_once(' ')
                    .and_then(|(id, uri)| Some((FactorId::parse(id)?, uri)))
                    .ok_or_else(|| ApiError::Refused("a malformed new factor came back".into()))?;
                Ok(NewFactor {
                    id,
                    uri: Secret::new(uri),
                })
            },
        )
    }

    fn activate(&mut self, factor: &FactorId, code: &Secret) -> Result<bool, ApiError> {
        self.calls()?.ask(
            || Call::Activate {
                factor: factor.as_str().into(),
                code: code.clone(),
            },
            |v| Ok(want_value(v)? == "ACTIVE"),
        )
    }

    fn claim_external_id(&mut self, external_id: &str) -> Result<bool, ApiError> {
        self.calls()?.ask(
            || Call::ClaimExternalId {
                external_id: external_id.into(),
            },
            |v| Ok(want_value(v)? == "ACTIVE"),
        )
    }

    fn factor_active(&mut self, factor: &FactorId) -> Result<bool, ApiError> {
        self.calls()?.ask(
            || Call::FactorStatus {
                factor: factor.as_str().into(),
            },
            |v| Ok(want_value(v)? == "ACTIVE"),
        )
    }
}
