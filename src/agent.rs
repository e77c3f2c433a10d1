//! The local agent: `truid-pam agent`, a root daemon that keeps kept-alive TLS connections to
//! tru.ID and the bearer token for every login of the host.
//!
//! Why: a login process starts with nothing, so each login paid a full TLS handshake (two
//! signature checks and a key exchange, most of a login's CPU). The module asks the agent over
//! a Unix socket instead; the agent sends the same requests on a connection it already has.
//! The login flow stays in the module; the agent only carries the API calls of
//! `flow::Authenticator`, and answers with the same `ApiError` split, so failmode decides
//! exactly as it does without an agent.
//!
//! Trust: both sides check the other's credentials on the socket (`SO_PEERCRED`): the module
//! talks only to a process of root, and the agent answers only root. When nothing (or nothing
//! of root) listens at the configured path, the module goes to tru.ID itself.
//!
//! Wire: one JSON object per line each way, one call per connection.

use crate::api::{
    timed_out_error, ApiError, ChallengeStatus, Client, FactorKind, HeldToken, Scope, Transport,
};
use crate::config::{ApiConfig, FactorId, Roots};
use crate::deadline::Deadline;
use crate::direct::Direct;
use crate::flow::{Ahead, Authenticator};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use zeroize::Zeroizing;

/// The version both sides must speak; a mismatch is answered, not guessed at.
/// 2: answers carry `Failed` (no verdict, no outage), which a version-1 module cannot read.
pub const PROTOCOL: u32 = 2;
/// A request carries a few IDs and at most a code: far below this.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;
/// Room a message is written into from the start: a request is about 600 bytes, so the buffer
/// never grows, and so never leaves an unzeroised copy of a secret behind in freed memory.
pub(crate) const MESSAGE_ROOM: usize = 8 * 1024;
/// Time the agent gives a root client to send its request once connected.
const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// Projects (API settings) the agent keeps connections for; the oldest goes first.
const MAX_PROJECTS: usize = 8;
/// Idle connections kept per project: at least the most workers an agent runs (32 by default),
/// so a burst of concurrent logins does not leave connections to be closed and made again.
const IDLE_PER_PROJECT: usize = 64;
/// Past the module's deadline, time left for the agent's own answer to arrive.
const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// The `[api]` settings of the module's config, sent with every call: the agent reads no
/// config file, so one agent serves every config of the host and never sees a stale one.
#[derive(Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WireApi {
    base_url: String,
    client_id: String,
    #[serde(serialize_with = "expose")]
    client_secret: Secret,
    ca_file: Option<PathBuf>,
    roots: Roots,
    timeout_ms: u64,
    proxy: Option<String>,
    token_cache: Option<PathBuf>,
}

impl WireApi {
    pub(crate) fn new(api: &ApiConfig) -> Self {
        WireApi {
            base_url: api.base_url.clone(),
            client_id: api.client_id.clone(),
            client_secret: api.client_secret.clone(),
            ca_file: api.ca_file.clone(),
            roots: api.roots,
            timeout_ms: millis(api.timeout),
            proxy: api.proxy.clone(),
            token_cache: api.token_cache.clone(),
        }
    }

    pub(crate) fn config(&self) -> ApiConfig {
        ApiConfig {
            base_url: self.base_url.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            ca_file: self.ca_file.clone(),
            roots: self.roots,
            timeout: Duration::from_millis(self.timeout_ms),
            proxy: self.proxy.clone(),
            token_cache: self.token_cache.clone(),
            agent: None,
        }
    }
}

/// One call of `flow::Authenticator`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Call {
    CreateChallenge {
        factor: String,
        reference_id: String,
    },
    Verify {
        factor: String,
        challenge_id: String,
        #[serde(serialize_with = "expose")]
        code: Secret,
    },
    FindFactor {
        user: String,
    },
    FactorKind {
        factor: String,
    },
    StartPush {
        factor: String,
        reference_id: String,
        phone: String,
        message: Option<String>,
    },
    ChallengeStatus {
        factor: String,
        challenge_id: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub(crate) v: u32,
    pub(crate) api: WireApi,
    /// Of the login's `[api] timeout`, what its earlier calls used.
    pub(crate) spent_ms: u64,
    pub(crate) call: Call,
}

impl Request {
    /// The request as one line, in a buffer that is zeroised when dropped (it holds the client
    /// secret and maybe the code) and that never grows (`MESSAGE_ROOM`).
    pub(crate) fn to_line(&self) -> Option<Zeroizing<Vec<u8>>> {
        let mut text = Zeroizing::new(Vec::with_capacity(MESSAGE_ROOM));
        serde_json::to_writer(&mut *text, self).ok()?;
        text.push(b'\n');
        Some(text)
    }
}

/// The answer to one call: its value (an ID, a status, a kind, or none), or the error with
/// the same split the module's own client makes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    Ok(Option<String>),
    Refused(String),
    Unavailable(String),
    /// No verdict and no outage (`ApiError::Failed`): denies under every failmode.
    Failed(String),
    /// The agent cannot serve this call: it speaks another protocol version (a package upgrade
    /// before the agent's restart), or cannot set up this project's HTTP client (a `ca_file`
    /// it cannot see from its sandbox). It sent nothing to tru.ID; the module goes there itself.
    GoDirect(String),
}

impl Answer {
    fn of(result: Result<Option<String>, ApiError>) -> Answer {
        match result {
            Ok(v) => Answer::Ok(v),
            Err(ApiError::Refused(why)) => Answer::Refused(why),
            Err(ApiError::Unavailable(why)) => Answer::Unavailable(why),
            Err(ApiError::Failed(why)) => Answer::Failed(why),
        }
    }

    /// The answer as the client's result. `GoDirect` reaches here only from the direct path,
    /// which has nowhere else to go: it denies.
    fn into_result(self) -> Result<Option<String>, ApiError> {
        match self {
            Answer::Ok(v) => Ok(v),
            Answer::Refused(why) | Answer::GoDirect(why) => Err(ApiError::Refused(why)),
            Answer::Unavailable(why) => Err(ApiError::Unavailable(why)),
            Answer::Failed(why) => Err(ApiError::Failed(why)),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// HTTP requests sent for this call (the module's debug line counts them).
    pub requests: u32,
    pub answer: Answer,
}

fn expose<S: serde::Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The user ID of the process at the other end of the socket.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

// ---------------------------------------------------------------------------------------------
// The module's side.

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

/// The one line a peer sends, of at most `MAX_MESSAGE` bytes. Every buffer it passes through
/// is zeroised when dropped, since a request holds the client secret and the code. Read
/// straight from the socket, without a `BufReader`, whose buffer would not be.
fn read_line(stream: &mut UnixStream) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut line = Zeroizing::new(Vec::with_capacity(MESSAGE_ROOM));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    while line.last() != Some(&b'\n') {
        let n = stream.read(&mut chunk[..])?;
        if n == 0 && line.is_empty() {
            // `truid-pam check` connects to see whether an agent listens, and sends nothing.
            return Err(std::io::ErrorKind::NotConnected.into());
        }
        if n == 0 || line.len() + n > MAX_MESSAGE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "message cut short or too long",
            ));
        }
        line.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    Ok(line)
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
}

// ---------------------------------------------------------------------------------------------
// The agent's side (the socket, threads and signals are `truid-pam agent`'s).

/// What the agent keeps per project: its HTTP client (whose pool holds the kept connections)
/// and the last bearer token.
struct Project {
    settings: WireApi,
    http: Transport,
    /// The trust its connections were verified with (`client_config` gives another once a
    /// CA file changes).
    trust: Arc<rustls::ClientConfig>,
    token: Mutex<Option<HeldToken>>,
}

/// The agent's projects, by all their `[api]` settings (secret included, so a changed secret is
/// a new project, never a reused token), and the runtime their connections live on.
pub struct Projects {
    known: Mutex<Vec<Arc<Project>>>,
    /// Kept running for the agent's life: connections' tasks run between calls, so one that a
    /// front end closed while idle is dropped from the pool at once, never handed to a call.
    runtime: tokio::runtime::Runtime,
    /// Wakes the token refresher when a token arrives (its due time may be sooner).
    tokens_changed: Condvar,
}

impl Projects {
    /// The agent's projects, with a runtime of one thread for their connections.
    pub fn new() -> Result<Projects, String> {
        let runtime = crate::api::http_runtime("truid-pam-agent-io")?;
        Ok(Projects {
            known: Mutex::new(Vec::new()),
            runtime,
            tokens_changed: Condvar::new(),
        })
    }

    fn get(&self, wire: WireApi, api: &ApiConfig) -> Result<Arc<Project>, String> {
        let trust = crate::api::client_config(
            api.roots,
            api.ca_file.as_deref(),
            api.token_cache.as_deref(),
        )?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut token = None;
        if let Some(i) = known.iter().position(|p| p.settings == wire) {
            if let Some(p) = known.get(i).filter(|p| Arc::ptr_eq(&p.trust, &trust)) {
                return Ok(p.clone());
            }
            // A changed CA file: this project's connections were verified with the old
            // anchors, and go (its token stays good). Other projects keep theirs.
            token = known.remove(i).token();
        }
        // Made here, so a project the agent cannot set up is never kept.
        let project = Arc::new(Project {
            settings: wire,
            http: Transport::shared(api, IDLE_PER_PROJECT, self.runtime.handle())?,
            trust,
            token: Mutex::new(token),
        });
        if known.len() >= MAX_PROJECTS {
            known.remove(0);
        }
        known.push(project.clone());
        Ok(project)
    }

    /// Drops every project: their connections close once their calls in flight end.
    pub fn forget(&self) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Runs one call for a root client and answers it.
    pub fn answer(&self, request: Request) -> Reply {
        let api = request.api.config();
        let project = match self.get(request.api, &api) {
            Ok(p) => p,
            // The agent's own setup, not the module's: the module may well manage on its own
            // (and denies, as for any local setup problem, if it cannot either).
            Err(why) => {
                return Reply {
                    requests: 0,
                    answer: Answer::GoDirect(why),
                }
            }
        };
        let mut client = project.client(&api);
        let reply = reply_on(
            &mut client,
            Duration::from_millis(request.spent_ms),
            request.call,
        );
        if project.keep_token(client.held_token()) {
            let _looked_at = self.known.lock();
            self.tokens_changed.notify_all();
        }
        reply
    }

    /// Gets each project a new token before its token runs out, so that no login waits for
    /// one (1 token request per project per token lifetime, and no other request). Runs until
    /// the process ends: the agent's refresher thread.
    pub fn refresh_tokens(&self) -> ! {
        let lock = || self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut known = lock();
        loop {
            // Looked at under the lock, which `answer` takes to wake this: no wake is missed.
            let mut next = REFRESH_IDLE;
            let mut due = Vec::new();
            for p in known.iter() {
                if let Some(t) = p.token() {
                    match t.left().checked_sub(refresh_before(&t)) {
                        None => due.push((p.clone(), t)),
                        Some(wait) => next = next.min(wait),
                    }
                }
            }
            if due.is_empty() {
                known = self
                    .tokens_changed
                    .wait_timeout(known, next.max(Duration::from_millis(50)))
                    .map_or_else(|p| p.into_inner().0, |(g, _)| g);
                continue;
            }
            drop(known);
            let mut failed = false;
            for (p, old) in due {
                let api = p.settings.config();
                let mut client = p.client(&api);
                if client.renew_token().is_ok() {
                    p.keep_token(client.held_token());
                } else {
                    // Tried again shortly while the old token lasts; then dropped, so that
                    // nothing asks tru.ID until a login does (it then gets its own).
                    failed = true;
                    if !old.usable() {
                        p.keep_token(None);
                    }
                }
            }
            known = lock();
            if failed {
                known = self
                    .tokens_changed
                    .wait_timeout(known, REFRESH_RETRY)
                    .map_or_else(|p| p.into_inner().0, |(g, _)| g);
            }
        }
    }
}

/// With no token to renew, the refresher still looks this often.
const REFRESH_IDLE: Duration = Duration::from_secs(60);
/// After a failed renewal, the next try.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// How long before its end a token is renewed: a fifth of its lifetime (12 min of tru.ID's
/// hour), and before it gets too short for a login to take (`HeldToken::usable`).
fn refresh_before(t: &HeldToken) -> Duration {
    (t.lifetime() / 5).max(t.margin() + t.lifetime() / 20)
}

impl Project {
    /// A client for one call, on the project's connections and token.
    fn client(&self, api: &ApiConfig) -> Client {
        let mut client = Client::with_http(
            api,
            Scope::Authenticator,
            &api.client_id,
            &api.client_secret,
            self.http.clone(),
        );
        client.hold_token(self.token.lock().map(|t| t.clone()).unwrap_or(None));
        client
    }

    /// Keeps `token` if it is another than the one held; whether it was.
    fn keep_token(&self, token: Option<HeldToken>) -> bool {
        let Ok(mut held) = self.token.lock() else {
            return false;
        };
        let changed = match (&*held, &token) {
            (Some(a), Some(b)) => !a.same(b),
            (None, None) => false,
            _ => true,
        };
        if changed {
            *held = token;
        }
        changed
    }

    fn token(&self) -> Option<HeldToken> {
        self.token.lock().ok()?.clone()
    }
}

/// One call on `client`, for a login whose calls so far took `spent` of its `[api] timeout`:
/// the reply, with the HTTP requests this call sent.
pub(crate) fn reply_on(client: &mut Client, spent: Duration, call: Call) -> Reply {
    client.deadline = Deadline::with_spent(client.deadline.budget(), spent);
    let before = client.requests;
    let answer = Answer::of(run(client, call));
    Reply {
        requests: client.requests.saturating_sub(before),
        answer,
    }
}

/// One call on `client`: its value as the wire carries it.
fn run(client: &mut Client, call: Call) -> Result<Option<String>, ApiError> {
    let factor_id = |f: &str| {
        FactorId::parse(f)
            .ok_or_else(|| ApiError::Refused("malformed factor ID in the request".into()))
    };
    Ok(match call {
        Call::CreateChallenge {
            factor,
            reference_id,
        } => Some(client.create_challenge(&factor_id(&factor)?, &reference_id)?),
        Call::Verify {
            factor,
            challenge_id,
            code,
        } => Some(
            client
                .verify(&factor_id(&factor)?, &challenge_id, &code)?
                .name()
                .to_string(),
        ),
        Call::FindFactor { user } => client.find_factor(&user)?.map(|f| f.as_str().to_string()),
        Call::FactorKind { factor } => {
            Some(client.factor_kind(&factor_id(&factor)?)?.name().to_string())
        }
        Call::StartPush {
            factor,
            reference_id,
            phone,
            message,
        } => Some(client.start_push(
            &factor_id(&factor)?,
            &reference_id,
            &phone,
            message.as_deref(),
        )?),
        Call::ChallengeStatus {
            factor,
            challenge_id,
        } => Some(
            client
                .challenge_status(&factor_id(&factor)?, &challenge_id)?
                .name()
                .to_string(),
        ),
    })
}

/// A request line, or why it cannot be read. serde's message is not passed on: it quotes the
/// values it stumbles on, and a value may be the secret or the code.
/// A request of another protocol version (a package upgrade before a restart) is refused here,
/// for the agent and the direct client library alike.
pub(crate) fn read_request(line: &[u8]) -> Result<Request, String> {
    let request = serde_json::from_slice::<Request>(line).map_err(|e| {
        format!(
            "the request could not be read ({:?} error at column {})",
            e.classify(),
            e.column()
        )
    })?;
    if request.v != PROTOCOL {
        return Err(format!(
            "speaks protocol {PROTOCOL}, the module {}: install the same version of both \
             (reinstall the package, then restart the agent)",
            request.v
        ));
    }
    Ok(request)
}

/// The answer to one request line. One the agent cannot read (a module of another version)
/// was sent nowhere, so the module is told to go direct.
fn reply_to(line: &[u8], projects: &Projects) -> Reply {
    match read_request(line) {
        Ok(request) => projects.answer(request),
        Err(why) => Reply {
            requests: 0,
            answer: Answer::GoDirect(format!("the pam_truid agent: {why}")),
        },
    }
}

/// Serves one connection: only root is answered; anything else is closed unanswered.
pub fn serve(mut stream: UnixStream, projects: &Projects) -> Result<(), String> {
    let uid = peer_uid(&stream);
    if uid != Some(0) {
        return Err(format!(
            "refused a connection from uid {}: only root is served",
            uid.map_or("unknown".into(), |u| u.to_string())
        ));
    }
    stream
        .set_read_timeout(Some(REQUEST_WAIT))
        .map_err(|e| e.to_string())?;
    let line = match read_line(&mut stream) {
        Ok(line) => line,
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return Ok(()),
        Err(e) => return Err(format!("reading a request: {e}")),
    };
    let reply = reply_to(&line, projects);
    let mut text = serde_json::to_vec(&reply).map_err(|e| e.to_string())?;
    text.push(b'\n');
    stream
        .set_write_timeout(Some(REQUEST_WAIT))
        .and_then(|()| stream.write_all(&text))
        .map_err(|e| format!("writing an answer: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `[api]` settings for unit tests (src/direct.rs uses them too).
    pub(crate) fn api() -> ApiConfig {
        ApiConfig {
            base_url: "https://127.0.0.1:1".into(),
            client_id: "id".into(),
            client_secret: Secret::new("s3cr3t-value"),
            ca_file: None,
            roots: Roots::Builtin,
            timeout: Duration::from_secs(3),
            proxy: None,
            token_cache: None,
            agent: None,
        }
    }

    #[test]
    fn a_request_crosses_the_wire_whole_and_shows_no_secret_in_debug() {
        let r = Request {
            v: PROTOCOL,
            api: WireApi::new(&api()),
            spent_ms: 7,
            call: Call::Verify {
                factor: "f".into(),
                challenge_id: "c".into(),
                code: Secret::new("123456"),
            },
        };
        let text = serde_json::to_string(&r).unwrap();
        let back: Request = serde_json::from_str(&text).unwrap();
        assert_eq!(back.api.client_secret.expose(), "s3cr3t-value");
        assert_eq!(back.spent_ms, 7);
        match back.call {
            Call::Verify { code, .. } => assert_eq!(code.expose(), "123456"),
            _ => panic!("another call"),
        }
        let cfg = back.api.config();
        assert_eq!(cfg.timeout, Duration::from_secs(3));
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
    }

    #[test]
    fn an_unreadable_request_sends_the_module_direct_and_quotes_nothing() {
        let mut good = serde_json::to_value(Request {
            v: PROTOCOL,
            api: WireApi::new(&api()),
            spent_ms: 0,
            call: Call::Verify {
                factor: "f".into(),
                challenge_id: "c".into(),
                code: Secret::new("123456"),
            },
        })
        .unwrap();
        // A module of another version: a field this agent does not know, a code as a number.
        good["call"]["code"] = serde_json::json!(987654);
        let mut extra = good.clone();
        extra["api"]["s3cr3t_field"] = serde_json::json!("s3cr3t-value");
        for line in [good.to_string(), extra.to_string(), "not json".into()] {
            let reply = reply_to(line.as_bytes(), &Projects::new().unwrap());
            let text = serde_json::to_string(&reply).unwrap();
            assert!(matches!(reply.answer, Answer::GoDirect(_)), "{text}");
            for value in ["987654", "s3cr3t"] {
                assert!(!text.contains(value), "{text}");
            }
        }
    }

    #[test]
    fn each_error_class_crosses_the_wire_as_it_is() {
        for e in [
            ApiError::Refused("r".into()),
            ApiError::Unavailable("u".into()),
            ApiError::Failed("f".into()),
        ] {
            let text = serde_json::to_string(&Answer::of(Err(e.clone()))).unwrap();
            let back: Answer = serde_json::from_str(&text).unwrap();
            assert_eq!(back.into_result(), Err(e));
        }
    }

    #[test]
    fn unknown_fields_and_versions_are_refused() {
        assert!(
            serde_json::from_str::<Reply>(r#"{"requests":1,"answer":{"ok":"x"},"more":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Reply>(r#"{"requests":1,"answer":{"maybe":"x"}}"#).is_err());
        let other_version = Request {
            v: PROTOCOL + 1,
            api: WireApi::new(&api()),
            spent_ms: 0,
            call: Call::FindFactor { user: "a".into() },
        };
        let reply = reply_to(&other_version.to_line().unwrap(), &Projects::new().unwrap());
        assert!(
            matches!(reply.answer, Answer::GoDirect(ref w) if w.contains("protocol")),
            "{reply:?}"
        );
        let r = Request {
            v: PROTOCOL,
            api: WireApi::new(&api()),
            spent_ms: 0,
            call: Call::FactorKind {
                factor: "not-a-uuid".into(),
            },
        };
        // A ca_file the agent cannot read (its sandbox hides /tmp): the module goes direct.
        let mut hidden = api();
        hidden.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        hidden.roots = Roots::None;
        let reply = Projects::new().unwrap().answer(Request {
            v: PROTOCOL,
            api: WireApi::new(&hidden),
            spent_ms: 0,
            call: Call::FindFactor { user: "a".into() },
        });
        assert!(
            matches!(reply.answer, Answer::GoDirect(ref w) if w.contains("/nonexistent/ca.pem")),
            "{reply:?}"
        );
        // A malformed ID is never sent on: the agent refuses it like the config would.
        let reply = Projects::new().unwrap().answer(r);
        assert!(matches!(reply.answer, Answer::Refused(_)), "{reply:?}");
        assert_eq!(reply.requests, 0);
    }
}
