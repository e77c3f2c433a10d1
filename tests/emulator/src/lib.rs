//! `truid-emulator`: a local stand-in for the tru.ID API (token endpoint, Authenticator API,
//! console project configuration, PhoneCheck creation, challenge callbacks), for tests, demos
//! and offline development.
//!
//! Start it in-process with [`Emulator::start`], or run the `truid-emulator` binary, which
//! prints one JSON line ([`ReadyInfo`]) on stdout when it is ready. [`Netem`] (the
//! `truid-netem` binary) is a delaying TCP proxy to put a WAN between a client and it.
//!
//! # Choices where tru.ID documents nothing
//! - A wrong code on a challenge answers **200** with status `FAILED` (the challenge is spent);
//!   a challenge takes one code only: any PATCH on a challenge that is no longer `PENDING`
//!   answers 400. An expired challenge turns `EXPIRED` and a PATCH on it answers 400.
//! - A wrong activation code on a `PENDING` factor answers 400 and leaves it `PENDING`.
//! - A code is accepted for the current 30 s step and one step either way; each step's code is
//!   accepted once per factor (activation and challenges share that memory).
//! - `expired_at` is present on a challenge only once it has expired.
//! - `external_user_id` clashes answer 400 "external_user_id is not unique".
//! - A PUSH challenge needs `check_id` and `check_url` (400 when missing); `message` is optional
//!   and defaults to the project's `challenge_default_message`. A PATCH with a code on a PUSH
//!   challenge answers 400.
//! - Factor creation accepts an optional `"type": "TOTP" | "PUSH"` (emulator extension,
//!   default `TOTP`).
//! - Callbacks are sent on status changes after creation (VERIFIED, FAILED, EXPIRED), not on
//!   creation; up to 3 attempts (1 s, 2 s apart).
//! - Rate limit: one fixed one-minute window for the whole server; `X-RateLimit-Reset` is the
//!   number of seconds until the window resets. Control endpoints are not limited.
//! - Collections link `prev`/`next` only when such a page exists.
//! - A challenge collection lists its items under `_embedded.challenges` (the spec's
//!   ChallengeCollection model names the array `factors`, which reads as a slip of its author);
//!   it searches on `status`, `reference_id`, `challenge_id` and `type`, sorts on `created_at`
//!   or `updated_at` (`sort=created_at,desc`; default oldest first).
//! - `Access-Control-Allow-Origin: *` is sent on every 2xx answer of the Authenticator and
//!   console operations (the spec marks it required there), not on the token endpoint,
//!   PhoneCheck or the control endpoints, where the spec does not.
//! - Token endpoint errors are `application/problem+json` (401 for bad credentials or a bad
//!   Basic header, 400 for a missing/unknown grant type or a scope the client may not have).

pub mod netem;
pub mod totp;

mod server;
mod state;
mod tls;
mod util;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use netem::{Netem, NetemOptions, NetemStats};
pub use state::ChallengeView;

/// How to start an [`Emulator`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to listen on; port 0 picks a free one. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Serve HTTPS with a freshly generated CA (default true).
    pub tls: bool,
    /// Where `ca.pem`, `server.pem` and `server.key` are written. `None`: a fresh temporary
    /// folder, kept as long as the [`Emulator`] lives.
    pub cert_dir: Option<PathBuf>,
    /// Load the state from this file at start (when it exists) and write it atomically after
    /// each change.
    pub state_file: Option<PathBuf>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub workspace_id: Option<String>,
    pub project_id: Option<String>,
    pub workspace_client_id: Option<String>,
    pub workspace_client_secret: Option<String>,
    /// Lifetime of issued access tokens (`expires_in`). Default 3600 s.
    pub token_ttl: Duration,
    /// Lifetime of a challenge before it turns `EXPIRED`. Default 300 s.
    pub challenge_ttl: Duration,
    /// The project's initial `configuration.authenticator.issuer_name`.
    pub issuer_name: String,
    /// Act as the phone for push challenges: after the delay, approve (`true`) or deny.
    pub push_auto: Option<(Duration, bool)>,
    /// Requests per minute (whole server) before 429. Default 100000.
    pub rate_limit: u32,
    /// Faults active from the start (the binary's `--latency-ms` and `--fault`).
    pub faults: Vec<Fault>,
    /// Close a kept-alive connection after this long without a request, as front ends do
    /// (Apache's default is 5 s). `None`: kept open for as long as the client keeps it.
    pub idle_close: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: true,
            cert_dir: None,
            state_file: None,
            client_id: None,
            client_secret: None,
            workspace_id: None,
            project_id: None,
            workspace_client_id: None,
            workspace_client_secret: None,
            token_ttl: Duration::from_secs(3600),
            challenge_ttl: Duration::from_secs(300),
            issuer_name: "pam_truid emulator".to_string(),
            push_auto: None,
            rate_limit: 100_000,
            faults: Vec::new(),
            idle_close: None,
        }
    }
}

/// Everything a client needs; the binary prints it as its one JSON line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadyInfo {
    pub base_url: String,
    /// The CA certificate (PEM) to trust; `None` without TLS.
    pub ca_file: Option<String>,
    pub client_id: String,
    pub client_secret: String,
    pub workspace_id: String,
    pub project_id: String,
    pub workspace_client_id: String,
    pub workspace_client_secret: String,
}

/// Kind of factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "UPPERCASE")]
pub enum FactorType {
    Totp,
    Push,
}

/// A factor created directly in the `ACTIVE` state by [`Emulator::seed_factor`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seeded {
    pub factor_id: String,
    pub secret_base32: String,
}

/// Which API route a [`Fault`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// `POST /oauth2/v1/token`
    Token,
    /// `POST .../factors/{id}/challenges`
    ChallengeCreate,
    /// `PATCH .../factors/{id}/challenges/{cid}`
    ChallengeVerify,
    /// `GET .../factors/{id}/challenges/{cid}`
    ChallengeGet,
    /// `GET .../factors/{id}/challenges`
    ChallengeList,
    /// `GET .../factors`
    FactorList,
    /// `GET .../factors/{id}`
    FactorGet,
    /// `POST .../factors`
    FactorCreate,
    /// `PATCH .../factors/{id}`
    FactorPatch,
    /// `GET`/`PATCH /console/v0.2/workspaces/{w}/projects/{p}`
    Console,
    /// `/phone_check/v0.2/checks...`
    PhoneCheck,
    /// Every route of the API (never the `/_emulator` control endpoints).
    Any,
}

impl Route {
    /// The name used in [`Stats::requests`].
    pub fn name(self) -> &'static str {
        match self {
            Route::Token => "token",
            Route::ChallengeCreate => "challenge_create",
            Route::ChallengeVerify => "challenge_verify",
            Route::ChallengeGet => "challenge_get",
            Route::ChallengeList => "challenge_list",
            Route::FactorList => "factor_list",
            Route::FactorGet => "factor_get",
            Route::FactorCreate => "factor_create",
            Route::FactorPatch => "factor_patch",
            Route::Console => "console",
            Route::PhoneCheck => "phone_check",
            Route::Any => "any",
        }
    }
}

/// What an injected fault does to a matching request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Wait, then answer normally (or apply the next matching non-latency fault).
    Latency(Duration),
    /// Answer this status with a problem+json body.
    Status(u16),
    /// 429 problem, with `Retry-After` when given.
    TooManyRequests { retry_after: Option<u64> },
    /// 200 with the body `<html>oops` (`text/html`).
    NotJson,
    /// 200 with `{"unexpected":true}`.
    WrongShape,
    /// 200 with a body of that many bytes, streamed.
    Huge(usize),
    /// Close the TCP connection without answering.
    Drop,
    /// Send headers with `Content-Length: 1000`, 10 bytes of body, then close.
    DropMidBody,
    /// Send headers with `Content-Length: 1000` and 10 bytes of body, then nothing more (the
    /// connection is held until the client gives up or 10 minutes pass).
    HangMidBody,
    /// Never answer (the connection is held until the client gives up or 10 minutes pass).
    Hang,
    /// 401 problem, as for a refused token.
    Unauthorized,
}

/// An injected fault.
///
/// JSON shape (control endpoint `POST /_emulator/faults`, binary flag `--fault`):
/// ```json
/// {"route": "token", "kind": "latency", "ms": 250, "times": 2}
/// {"route": "challenge_verify", "kind": "status", "status": 503}
/// {"route": "any", "kind": "too_many_requests", "retry_after": 7}
/// {"kind": "not_json"}   {"kind": "wrong_shape"}   {"kind": "huge", "bytes": 10000000}
/// {"kind": "drop"}   {"kind": "drop_mid_body"}   {"kind": "hang_mid_body"}   {"kind": "hang"}
/// {"kind": "unauthorized"}
/// ```
/// `route` is one of `token`, `challenge_create`, `challenge_verify`, `challenge_get`,
/// `challenge_list`, `factor_list`, `factor_get`, `factor_create`, `factor_patch`, `console`,
/// `phone_check`, `any` (default `any`); `times` is how many matching requests it hits (absent or `null`:
/// until cleared).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FaultWire", into = "FaultWire")]
pub struct Fault {
    pub route: Route,
    pub kind: FaultKind,
    pub times: Option<u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultWire {
    #[serde(default = "route_any")]
    route: Route,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<usize>,
    #[serde(default)]
    times: Option<u32>,
}

fn route_any() -> Route {
    Route::Any
}

impl TryFrom<FaultWire> for Fault {
    type Error = String;
    fn try_from(w: FaultWire) -> Result<Self, String> {
        let kind = match w.kind.as_str() {
            "latency" => {
                FaultKind::Latency(Duration::from_millis(w.ms.ok_or("latency needs \"ms\"")?))
            }
            "status" => {
                let s = w.status.ok_or("status needs \"status\"")?;
                if !(100..=599).contains(&s) {
                    return Err("status must be 100..=599".into());
                }
                FaultKind::Status(s)
            }
            "too_many_requests" => FaultKind::TooManyRequests {
                retry_after: w.retry_after,
            },
            "not_json" => FaultKind::NotJson,
            "wrong_shape" => FaultKind::WrongShape,
            "huge" => FaultKind::Huge(w.bytes.ok_or("huge needs \"bytes\"")?),
            "drop" => FaultKind::Drop,
            "drop_mid_body" => FaultKind::DropMidBody,
            "hang_mid_body" => FaultKind::HangMidBody,
            "hang" => FaultKind::Hang,
            "unauthorized" => FaultKind::Unauthorized,
            other => return Err(format!("unknown fault kind {other:?}")),
        };
        Ok(Fault {
            route: w.route,
            kind,
            times: w.times,
        })
    }
}

impl From<Fault> for FaultWire {
    fn from(f: Fault) -> Self {
        let mut w = FaultWire {
            route: f.route,
            kind: String::new(),
            ms: None,
            status: None,
            retry_after: None,
            bytes: None,
            times: f.times,
        };
        w.kind = match f.kind {
            FaultKind::Latency(d) => {
                w.ms = Some(d.as_millis() as u64);
                "latency"
            }
            FaultKind::Status(s) => {
                w.status = Some(s);
                "status"
            }
            FaultKind::TooManyRequests { retry_after } => {
                w.retry_after = retry_after;
                "too_many_requests"
            }
            FaultKind::NotJson => "not_json",
            FaultKind::WrongShape => "wrong_shape",
            FaultKind::Huge(n) => {
                w.bytes = Some(n);
                "huge"
            }
            FaultKind::Drop => "drop",
            FaultKind::DropMidBody => "drop_mid_body",
            FaultKind::HangMidBody => "hang_mid_body",
            FaultKind::Hang => "hang",
            FaultKind::Unauthorized => "unauthorized",
        }
        .to_string();
        w
    }
}

/// Counters, as `GET /_emulator/stats` shows them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Requests per route name ([`Route::name`], plus `control` and `unknown`).
    pub requests: BTreeMap<String, u64>,
    pub tokens_issued: u64,
    pub tls_handshakes: u64,
    pub connections_accepted: u64,
    pub challenges_created: u64,
    /// Challenges that turned `VERIFIED` through a code.
    pub verifications: u64,
    /// Codes submitted to challenges (right or wrong).
    pub verification_attempts: u64,
    /// Callback POSTs answered with a 2xx.
    pub callbacks_delivered: u64,
    /// Callback POST attempts that failed (network error or non-2xx).
    pub callbacks_failed: u64,
    /// Requests answered with 429 by the rate limiter.
    pub rate_limited: u64,
    /// Faults applied (latency included).
    pub faults_applied: u64,
}

/// A running emulator. Dropping it stops the server and its threads.
pub struct Emulator {
    shared: Arc<server::Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    _tempdir: Option<tempfile::TempDir>,
}

impl Emulator {
    /// Starts the server on its own multi-thread tokio runtime; returns once it listens.
    pub fn start(opts: Options) -> std::io::Result<Emulator> {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("truid-emulator")
            .enable_all()
            .build()?;

        let (cert_dir, tempdir) = match &opts.cert_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("truid-emulator-")
                    .tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let tls = if opts.tls {
            Some(tls::generate(&cert_dir)?)
        } else {
            None
        };

        let listener = StdTcpListener::bind(opts.listen)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let host = match local.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = format!("{scheme}://{host}:{}", local.port());

        let shared = {
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let shared = server::Shared::new(opts, base_url, tls.as_ref(), runtime.handle())?;
            server::spawn(shared.clone(), listener, tls.map(|t| t.acceptor));
            shared
        };
        Ok(Emulator {
            shared,
            runtime: Some(runtime),
            _tempdir: tempdir,
        })
    }

    /// Base URL, CA file and credentials.
    pub fn info(&self) -> &ReadyInfo {
        &self.shared.info
    }

    /// Creates an `ACTIVE` factor directly (no API round trips). When `external_user_id`
    /// already has a factor, that factor is returned as it is.
    pub fn seed_factor(&self, external_user_id: &str, kind: FactorType) -> Seeded {
        self.shared.seed(external_user_id, kind)
    }

    /// The TOTP code of a factor for now + `step_offset` × 30 s.
    pub fn code(&self, factor_id: &str, step_offset: i64) -> Option<String> {
        self.shared.code(factor_id, step_offset)
    }

    /// Adds a fault (faults are tried in the order they were added).
    pub fn set_fault(&self, f: Fault) {
        self.shared.add_fault(f);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Forgets every issued token: they all answer 401 from now on.
    pub fn revoke_tokens(&self) {
        self.shared.revoke_tokens();
    }

    /// A challenge's current state (`None` when unknown or not the factor's).
    pub fn challenge(&self, factor_id: &str, challenge_id: &str) -> Option<ChallengeView> {
        self.shared.challenge_view(factor_id, challenge_id)
    }

    /// The most recently created challenges (up to 100), oldest first.
    pub fn last_challenges(&self) -> Vec<ChallengeView> {
        self.shared.recent_challenges()
    }

    /// Acts as the phone: approves (`VERIFIED`) or denies (`FAILED`) a pending PUSH challenge.
    /// `false` when there is no such pending PUSH challenge.
    pub fn resolve_push(&self, factor_id: &str, challenge_id: &str, approve: bool) -> bool {
        self.shared
            .resolve_push(factor_id, challenge_id, approve)
            .is_ok()
    }

    /// Stops the server and its threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}
