//! The wire protocol between the module and the agent (and the direct client library): what a
//! request and an answer hold, how a line is read and written, and the peer check both sides
//! make on the socket.
//!
//! Wire: one JSON object per line each way, one call per connection.

use crate::api::ApiError;
use crate::config::{ApiConfig, Roots};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;
use zeroize::Zeroizing;

/// The version both sides must speak; a mismatch is answered, not guessed at.
/// 2: answers carry `Failed` (no verdict, no outage), which a version-1 module cannot read.
/// 3: the enrolment calls (`NewFactor`, `Activate`, `FactorStatus`).
pub const PROTOCOL: u32 = 3;
/// A request carries a few IDs and at most a code: far below this.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;
/// Room a message is written into from the start: a request is about 600 bytes, so the buffer
/// never grows, and so never leaves an unzeroised copy of a secret behind in freed memory.
pub(crate) const MESSAGE_ROOM: usize = 8 * 1024;

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
    /// Answered with the factor ID and its otpauth URI, a space between.
    NewFactor {
        phone: String,
        external_id: String,
    },
    /// Answered with the factor's status after the code.
    Activate {
        factor: String,
        #[serde(serialize_with = "expose")]
        code: Secret,
    },
    /// Answered with "ACTIVE" or another status.
    FactorStatus {
        factor: String,
    },
    /// Answered with "ACTIVE" when an ACTIVE factor holds the ID, else "FREE".
    ClaimExternalId {
        external_id: String,
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
        line_of(self)
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
    pub(crate) fn of(result: Result<Option<String>, ApiError>) -> Answer {
        match result {
            Ok(v) => Answer::Ok(v),
            Err(ApiError::Refused(why)) => Answer::Refused(why),
            Err(ApiError::Unavailable(why)) => Answer::Unavailable(why),
            Err(ApiError::Failed(why)) => Answer::Failed(why),
        }
    }

    /// The answer as the client's result. `GoDirect` reaches here only from the direct path,
    /// which has nowhere else to go: it denies.
    pub(crate) fn into_result(self) -> Result<Option<String>, ApiError> {
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

/// What a caller of the public socket asks (`services`): always for the account the socket's
/// peer credentials name, never for one the request names.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Service {
    /// Check the caller's own code: a screen locker's login. `user` is PAM_USER, which must
    /// be the caller's account.
    Login {
        user: String,
        service: String,
        tty: Option<String>,
        rhost: Option<String>,
        /// The stack's `combined` argument: one prompt for password and code.
        combined: bool,
    },
    /// Enroll the caller (`truid-pam enroll` run by a user); the phone is asked if not given.
    Enroll { phone: Option<String> },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequest {
    pub(crate) v: u32,
    pub(crate) service: Service,
}

impl ServiceRequest {
    pub fn new(service: Service) -> Self {
        ServiceRequest {
            v: PROTOCOL,
            service,
        }
    }
}

/// The agent's side of a relayed conversation: what to show or ask the person, then the end.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToCaller {
    PromptSecret(String),
    PromptEcho(String),
    Info(String),
    Error(String),
    /// The password part of a one-prompt answer whose code was verified, for the caller to
    /// hand on (PAM_AUTHTOK); it came from the caller's own answer.
    KeepPassword(#[serde(serialize_with = "expose")] Secret),
    Done(crate::flow::Outcome),
}

/// The caller's answer to a prompt.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FromCaller {
    Answer(#[serde(serialize_with = "expose")] Secret),
    /// The conversation failed on the caller's side.
    NoAnswer(String),
}

/// `value` as one line, in a buffer zeroised when dropped (an answer is a code; a prompt may
/// hold a new factor's QR code).
pub(crate) fn line_of(value: &impl Serialize) -> Option<Zeroizing<Vec<u8>>> {
    let mut text = Zeroizing::new(Vec::with_capacity(MESSAGE_ROOM));
    serde_json::to_writer(&mut *text, value).ok()?;
    text.push(b'\n');
    Some(text)
}

fn expose<S: serde::Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose())
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The user ID of the process at the other end of the socket: both sides check it (the module
/// talks only to root's agent, the agent answers only root).
pub(crate) fn peer_uid(stream: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

/// The one line a peer sends (one call per connection), of at most `MAX_MESSAGE` bytes. Every
/// buffer it passes through is zeroised when dropped, since a request holds the client secret
/// and the code. Read straight from the socket, without a `BufReader`, whose buffer would not be.
pub(crate) fn read_line(stream: &mut UnixStream) -> std::io::Result<Zeroizing<Vec<u8>>> {
    Lines::new().next(stream)
}

/// Lines read one at a time off a stream that carries many (the public socket's conversation):
/// what came after a line in the same read is kept for the next, never dropped or glued on.
/// Zeroised when dropped, as `read_line`'s buffers.
pub(crate) struct Lines {
    pending: Zeroizing<Vec<u8>>,
}

impl Lines {
    pub(crate) fn new() -> Self {
        Lines {
            pending: Zeroizing::new(Vec::with_capacity(MESSAGE_ROOM)),
        }
    }

    /// The next line, without its newline, of at most `MAX_MESSAGE` bytes.
    pub(crate) fn next(&mut self, stream: &mut UnixStream) -> std::io::Result<Zeroizing<Vec<u8>>> {
        self.read(stream, None)
    }

    /// `next`, whole by `deadline` however slowly it comes (each read waits what is left).
    pub(crate) fn next_by(
        &mut self,
        stream: &mut UnixStream,
        deadline: std::time::Instant,
    ) -> std::io::Result<Zeroizing<Vec<u8>>> {
        self.read(stream, Some(deadline))
    }

    fn read(
        &mut self,
        stream: &mut UnixStream,
        deadline: Option<std::time::Instant>,
    ) -> std::io::Result<Zeroizing<Vec<u8>>> {
        let mut chunk = Zeroizing::new([0u8; 4096]);
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line = Zeroizing::new(self.pending.get(..end).unwrap_or_default().to_vec());
                let rest = Zeroizing::new(self.pending.get(end + 1..).unwrap_or_default().to_vec());
                self.pending.clear();
                self.pending.extend_from_slice(&rest);
                return Ok(line);
            }
            if let Some(by) = deadline {
                let left = by.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                stream.set_read_timeout(Some(left))?;
            }
            let n = stream.read(&mut chunk[..])?;
            if n == 0 && self.pending.is_empty() {
                return Err(std::io::ErrorKind::NotConnected.into());
            }
            if n == 0 || self.pending.len() + n > MAX_MESSAGE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "message cut short or too long",
                ));
            }
            self.pending
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `[api]` settings for unit tests (the serving and direct tests use them too).
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
    fn lines_sent_together_come_back_one_by_one() {
        use std::io::Write;
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(b"{\"error\":\"x\"}\n{\"prompt_secret\":\"y\"}\n{\"in")
            .unwrap();
        let mut lines = Lines::new();
        assert_eq!(&lines.next(&mut b).unwrap()[..], b"{\"error\":\"x\"}");
        assert_eq!(
            &lines.next(&mut b).unwrap()[..],
            b"{\"prompt_secret\":\"y\"}"
        );
        a.write_all(b"fo\":\"z\"}\n").unwrap();
        let third = lines.next(&mut b).unwrap();
        assert!(
            matches!(serde_json::from_slice::<ToCaller>(&third), Ok(ToCaller::Info(t)) if t == "z")
        );
        drop(a);
        assert!(lines.next(&mut b).is_err());
    }

    #[test]
    fn unknown_fields_and_answers_in_a_reply_are_refused() {
        assert!(
            serde_json::from_str::<Reply>(r#"{"requests":1,"answer":{"ok":"x"},"more":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Reply>(r#"{"requests":1,"answer":{"maybe":"x"}}"#).is_err());
    }
}
