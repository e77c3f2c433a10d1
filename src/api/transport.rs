//! How a request reaches tru.ID: reqwest's blocking client in the module, or reqwest's async
//! client on the agent's runtime.
//!
//! Both keep their connections' tasks running between requests (the blocking client on its own
//! thread, the agent on a runtime it keeps alive), so a connection a front end closed while
//! idle is seen closed at once and never handed to the next request. Everything above the
//! transport (token, retries, deadline, what an answer means) is `Client`'s, and the same for
//! both.

use super::ApiError;
use crate::config::ApiConfig;
use crate::text::sanitize;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::Method;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// No answer pam_truid reads comes near this; a bigger one is refused unread.
pub(crate) const MAX_ANSWER: u64 = 256 * 1024;
const ACCEPTED: &str = "application/hal+json, application/json, application/problem+json";

/// A request, whichever transport sends it.
pub(crate) struct Outgoing<'a> {
    pub method: Method,
    pub url: &'a str,
    /// The whole `Authorization` value, marked sensitive so no debug output shows it.
    pub authorization: HeaderValue,
    pub body: Option<(&'static str, &'a [u8])>,
    /// Whether tru.ID may get this request twice: a read, a token, a TOTP challenge (a spare
    /// challenge is never used). Never a code, nor anything that reaches the phone.
    pub twice_is_harmless: bool,
}

/// A request that got no usable answer. `unanswered`: no byte of an answer came, because the
/// connection broke after it was made or stayed silent until the time given. That is what a
/// kept connection looks like that a front end closed under the request, or that a middlebox
/// forgot; a fresh connection may well succeed.
pub(crate) struct Failure {
    pub error: ApiError,
    pub unanswered: bool,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Failure {
        Failure {
            error,
            unanswered: false,
        }
    }
}

pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub enum Transport {
    /// reqwest's blocking client: one runtime thread, ended when the client drops. The CLI's
    /// own commands (enroll, list, project).
    Blocking(reqwest::blocking::Client),
    /// reqwest's async client on a runtime kept running: the agent's (shared by all its
    /// workers, and so its pool of kept connections), or a login's own. The calling thread
    /// drives its request (`Handle::block_on`).
    Shared(Arc<Shared>),
}

pub struct Shared {
    runtime: tokio::runtime::Handle,
    /// Keeps its connections for the next request. Replaced (its kept connections dropped)
    /// when one of them was found silent: a middlebox that forgot one has likely forgotten
    /// the others, and a code must not go on one of them.
    http: std::sync::Mutex<reqwest::Client>,
    /// Keeps none: a second try on it is on a connection of its own (`exchange`).
    fresh: reqwest::Client,
    /// What a client is made from, to make `http` anew.
    api: ApiConfig,
    idle: usize,
    tls: Arc<rustls::ClientConfig>,
    /// A login's own runtime, ended with the transport.
    own: Option<tokio::runtime::Runtime>,
}

impl Shared {
    fn pooled(&self) -> reqwest::Client {
        self.http.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Drops the kept connections (those in use end with their request).
    fn forget_kept(&self) {
        let _inside = self.runtime.enter();
        if let Ok(new) = build_client(&self.api, self.idle, &self.tls) {
            *self.http.lock().unwrap_or_else(|p| p.into_inner()) = new;
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(rt) = self.own.take() {
            // Its thread ends before the login returns; only a resolver call stuck in the
            // system's DNS is left behind after a second (in the direct client library,
            // which is never unloaded).
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Where a harmless request (`Outgoing::twice_is_harmless`) with no answer yet goes again, on
/// a fresh connection, while the first try goes on: a quarter of the time left, at least 1 s.
/// A kept connection a middlebox forgot never answers; a slow tru.ID still does, on the first.
fn hedge_after(left: Duration) -> Duration {
    (left / 4).max(Duration::from_secs(1)).min(left)
}

/// How long a connection is kept idle: as long as a person may type without it being made
/// again (the code then goes out in one round trip), below the 60 s after which common front
/// ends (AWS ALB) close one, so that the server does not close it just as a request goes out.
pub const KEPT_IDLE: Duration = Duration::from_secs(55);
/// TCP keepalive on every connection: a probe after this long without traffic, and again at
/// this interval, so that a NAT or firewall that forgets connections idle for 10 s or more
/// keeps this one while the person types; and three unanswered probes (20 s) end a dead one.
const KEEPALIVE: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// The same settings on either client builder.
macro_rules! configure {
    ($builder:expr, $api:expr, $idle:expr, $tls:expr) => {{
        let b = $builder
            .use_preconfigured_tls($tls)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .tcp_keepalive(KEEPALIVE)
            .tcp_keepalive_interval(KEEPALIVE)
            .tcp_keepalive_retries(KEEPALIVE_PROBES)
            .pool_max_idle_per_host($idle)
            .pool_idle_timeout(KEPT_IDLE)
            .connect_timeout($api.timeout)
            .user_agent(concat!("pam_truid/", env!("CARGO_PKG_VERSION")));
        // The config alone decides where the module connects: the host process's *_proxy
        // variables are never read.
        match &$api.proxy {
            Some(p) => b.proxy(reqwest::Proxy::all(p).map_err(|e| format!("[api] proxy: {e}"))?),
            None => b.no_proxy(),
        }
    }};
}

/// The same request on either client.
macro_rules! request {
    ($http:expr, $out:expr, $left:expr) => {{
        let r = $http
            .request($out.method.clone(), $out.url)
            .header(AUTHORIZATION, $out.authorization.clone())
            .header(ACCEPT, ACCEPTED)
            .timeout($left);
        match $out.body {
            Some((ct, b)) => r.header(CONTENT_TYPE, ct).body(b.to_vec()),
            None => r,
        }
    }};
}

/// A runtime of one thread for HTTP connections (a login's, or the agent's for all its
/// projects). Its stack is set, so that RUST_MIN_STACK in the environment (su keeps its
/// caller's) cannot give the thread a stack too small for a TLS handshake.
pub fn http_runtime(name: &str) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .thread_stack_size(crate::THREAD_STACK)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))
}

/// A reqwest client with the module's settings, keeping up to `idle` connections. Made inside
/// the runtime it is used on.
fn build_client(
    api: &ApiConfig,
    idle: usize,
    tls: &rustls::ClientConfig,
) -> Result<reqwest::Client, String> {
    configure!(reqwest::Client::builder(), api, idle, tls.clone())
        .build()
        .map_err(|e| format!("HTTP client setup failed: {e}"))
}

impl Transport {
    /// The module's: keeps up to `idle` connections open between requests.
    pub fn blocking(api: &ApiConfig, idle: usize) -> Result<Transport, String> {
        let tls = (*tls(api)?).clone();
        let http = configure!(reqwest::blocking::Client::builder(), api, idle, tls)
            .build()
            .map_err(|e| format!("HTTP client setup failed: {e}"))?;
        Ok(Transport::Blocking(http))
    }

    /// The agent's: on `runtime`, which the agent keeps running.
    pub fn shared(
        api: &ApiConfig,
        idle: usize,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Transport, String> {
        Transport::on(api, idle, runtime.clone(), None)
    }

    /// A login's: on a runtime of its own (one thread, ended with the transport).
    pub fn for_login(api: &ApiConfig) -> Result<Transport, String> {
        let runtime = http_runtime("pam_truid-http")?;
        Transport::on(api, 1, runtime.handle().clone(), Some(runtime))
    }

    fn on(
        api: &ApiConfig,
        idle: usize,
        runtime: tokio::runtime::Handle,
        own: Option<tokio::runtime::Runtime>,
    ) -> Result<Transport, String> {
        let tls = tls(api)?;
        // reqwest's async client starts its resolver and connections on the runtime it is
        // used from: built inside this one.
        let inside = runtime.enter();
        let (http, fresh) = (build_client(api, idle, &tls)?, build_client(api, 0, &tls)?);
        drop(inside);
        Ok(Transport::Shared(Arc::new(Shared {
            runtime,
            http: std::sync::Mutex::new(http),
            fresh,
            api: api.clone(),
            idle,
            tls,
            own,
        })))
    }

    /// Sends `out` and reads the answer, all within `left`; `budget` names the configured
    /// timeout in errors.
    ///
    /// A harmless request (`twice_is_harmless`: a read, a token, a code's challenge) that got
    /// no answer on its (maybe kept) connection goes again on a fresh one: at once when the
    /// connection broke under it, or after `hedge_after` of silence while the first try goes
    /// on, and the first answer wins. When both fail, the fresh connection's failure is the
    /// one told: only it can say that tru.ID cannot be reached. A code is never sent twice:
    /// it may have reached tru.ID and been counted, and its answer lost.
    pub(crate) fn exchange(
        &self,
        out: &Outgoing,
        left: Duration,
        budget: Duration,
    ) -> Result<Answer, Failure> {
        match self {
            Transport::Blocking(http) => {
                let fail = |e: reqwest::Error| transport_error(&e, budget);
                let resp = request!(http, out, left).send().map_err(fail)?;
                let (status, retry_after) = (resp.status().as_u16(), retry_after(resp.headers()));
                check_length(resp.headers())?;
                let mut body = Vec::new();
                resp.take(MAX_ANSWER + 1)
                    .read_to_end(&mut body)
                    .map_err(|e| {
                        body_error(e.kind() == std::io::ErrorKind::TimedOut, &e, budget)
                    })?;
                Ok(finish(status, retry_after, body)?)
            }
            Transport::Shared(h) => h.runtime.block_on(async {
                let resp = if out.twice_is_harmless {
                    hedged(h, out, left, budget).await?
                } else {
                    head(&h.pooled(), out, left, budget).await?
                };
                read_answer(resp, budget).await
            }),
        }
    }
}

/// The answer's head of a harmless request, hedged: on the kept connection, and on a fresh one
/// at once if that broke, or after `hedge_after` of silence while the first goes on. The first
/// head wins; once a head came, its body is read as it is (an answer begun is no silence).
async fn hedged(
    h: &Shared,
    out: &Outgoing<'_>,
    left: Duration,
    budget: Duration,
) -> Result<reqwest::Response, Failure> {
    let started = Instant::now();
    let rest = || left.saturating_sub(started.elapsed());
    let pooled = h.pooled();
    let first = head(&pooled, out, left, budget);
    tokio::pin!(first);
    match tokio::time::timeout(hedge_after(left), &mut first).await {
        Ok(Err(f)) if f.unanswered && !rest().is_zero() => {
            head(&h.fresh, out, rest(), budget).await
        }
        Ok(done) => done,
        Err(_silent) => {
            let second = head(&h.fresh, out, rest(), budget);
            tokio::pin!(second);
            let won = tokio::select! {
                r = &mut first => match r {
                    Err(kept) => {
                        if kept.unanswered {
                            h.forget_kept();
                        }
                        second.await.map_err(|fresh| worse(fresh, kept))
                    }
                    r => r,
                },
                r = &mut second => match r {
                    Ok(resp) => {
                        h.forget_kept();
                        Ok(resp)
                    }
                    // The fresh try failed: the first may still answer.
                    Err(fresh) => match first.await {
                        Ok(resp) => Ok(resp),
                        Err(kept) => Err(worse(fresh, kept)),
                    },
                },
            };
            won
        }
    }
}

/// Of the two tries' failures, the one told: one that is no outage (`Failed`) before one that
/// is; else the fresh connection's, the only one that can say tru.ID cannot be reached.
fn worse(fresh: Failure, kept: Failure) -> Failure {
    match (&fresh.error, &kept.error) {
        (ApiError::Unavailable(_), ApiError::Failed(_)) if !kept.unanswered => kept,
        _ => fresh,
    }
}

/// Sends the request on `http` and waits for the answer's head, within `left` (which covers
/// the body too, read by `read_answer`).
async fn head(
    http: &reqwest::Client,
    out: &Outgoing<'_>,
    left: Duration,
    budget: Duration,
) -> Result<reqwest::Response, Failure> {
    request!(http, out, left)
        .send()
        .await
        .map_err(|e| transport_error(&e, budget))
}

/// The answer whose head came: its body read whole, up to the size limit.
async fn read_answer(mut resp: reqwest::Response, budget: Duration) -> Result<Answer, Failure> {
    let (status, retry_after) = (resp.status().as_u16(), retry_after(resp.headers()));
    check_length(resp.headers())?;
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| body_error(e.is_timeout(), &e, budget))?
    {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > MAX_ANSWER {
            break;
        }
    }
    Ok(finish(status, retry_after, body)?)
}

fn tls(api: &ApiConfig) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    super::tls::client_config(
        api.roots,
        api.ca_file.as_deref(),
        api.token_cache.as_deref(),
    )
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A declared length over the limit is refused before a byte of the body is read.
fn check_length(h: &HeaderMap) -> Result<(), ApiError> {
    let declared = h
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_ANSWER => Err(ApiError::Failed(format!(
            "answer of {n} bytes is over the {MAX_ANSWER} byte limit"
        ))),
        _ => Ok(()),
    }
}

fn finish(status: u16, retry_after: Option<Duration>, body: Vec<u8>) -> Result<Answer, ApiError> {
    if body.len() as u64 > MAX_ANSWER {
        return Err(ApiError::Failed(format!(
            "answer is over the {MAX_ANSWER} byte limit"
        )));
    }
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

fn body_error(timed_out: bool, e: &dyn std::fmt::Display, budget: Duration) -> ApiError {
    // An answer begun and broken off, or begun and never finished: tru.ID (or something in its
    // name) was there, so this is no outage (a body that trickles until the deadline would
    // otherwise be a way to make `failmode = "safe"` apply).
    if timed_out {
        ApiError::Failed(format!(
            "answer cut short: it began but did not end within [api] timeout ({} s)",
            budget.as_secs()
        ))
    } else {
        ApiError::Failed(format!(
            "answer cut short: {}",
            sanitize(&e.to_string(), 200)
        ))
    }
}

pub(crate) fn timed_out_error(budget: Duration) -> ApiError {
    ApiError::Unavailable(format!(
        "no answer within [api] timeout ({} s)",
        budget.as_secs()
    ))
}

/// What a failed send means. Only a connection that could not be made, or no answer in time,
/// is tru.ID being unreachable; the rest deny under every failmode (see `ApiError`).
fn transport_error(e: &reqwest::Error, budget: Duration) -> Failure {
    // The innermost cause says what failed (refused, DNS, certificate).
    let mut cause: &dyn std::error::Error = e;
    let mut local = None;
    let mut tls = false;
    loop {
        note_cause(cause, &mut local, &mut tls);
        match cause.source() {
            Some(next) => cause = next,
            None => break,
        }
    }
    let shown = sanitize(&in_words(&cause.to_string()), 200);
    // This host ran out of something: an unprivileged user can cause that at will in their
    // own setuid process (rlimits), so it is never an outage.
    if let Some(errno) = local {
        let what = std::io::Error::from_raw_os_error(errno).to_string();
        let detail = if shown.contains(&what) {
            String::new()
        } else {
            format!(" ({shown})")
        };
        return ApiError::Failed(format!("this host ran out of a resource: {what}{detail}")).into();
    }
    // Someone answered who cannot prove to be tru.ID: an attack or a misconfiguration.
    if tls {
        return ApiError::Failed(format!("TLS: {shown}")).into();
    }
    if e.is_timeout() {
        return Failure {
            error: timed_out_error(budget),
            unanswered: true,
        };
    }
    if e.is_connect() {
        return ApiError::Unavailable(format!("cannot connect: {shown}")).into();
    }
    // Connected, then the exchange broke before an answer (a kept connection the server
    // closed, a reset): tru.ID or something in its place was reached, so it is no evidence of
    // an outage. A fresh connection may succeed (`Client::send`).
    Failure {
        error: ApiError::Failed(format!("request failed: {shown}")),
        unanswered: true,
    }
}

/// A library's error text as a person reads it: the two ways a closed connection is reported
/// said in words, and no link into a library's documentation (rustls adds one).
fn in_words(text: &str) -> String {
    if text.contains("close_notify") || text.contains("connection closed before message completed")
    {
        return "the server closed the connection before it answered".into();
    }
    text.split_whitespace()
        .filter(|w| !w.starts_with("https://") && !w.starts_with("http://"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches(':')
        .to_string()
}

/// Errors of this host's own resources, whatever layer reports them. EADDRNOTAVAIL and
/// EADDRINUSE are the local ports run out: any local user may bind them all.
const LOCAL_ERRNOS: [i32; 7] = [
    libc::EMFILE,
    libc::ENFILE,
    libc::ENOMEM,
    libc::ENOBUFS,
    libc::EAGAIN,
    libc::EADDRNOTAVAIL,
    libc::EADDRINUSE,
];

/// Records a local resource error or a TLS error found at one link of a source chain.
/// `io::Error::source` skips the error it wraps (and io errors nest: hyper's wraps
/// tokio-rustls's, which wraps rustls's), so each wrapped one is looked at too.
fn note_cause(cause: &(dyn std::error::Error + 'static), local: &mut Option<i32>, tls: &mut bool) {
    let mut next = Some(cause);
    // Bounded: a chain of wrapped io errors is a few deep.
    for _ in 0..8 {
        let Some(c) = next else { return };
        if c.downcast_ref::<rustls::Error>().is_some() {
            *tls = true;
        }
        let Some(io) = c.downcast_ref::<std::io::Error>() else {
            return;
        };
        if let Some(n) = io.raw_os_error().filter(|n| LOCAL_ERRNOS.contains(n)) {
            local.get_or_insert(n);
        }
        if io.kind() == std::io::ErrorKind::OutOfMemory {
            local.get_or_insert(libc::ENOMEM);
        }
        next = io
            .get_ref()
            .map(|e| e as &(dyn std::error::Error + 'static));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_connections_are_said_in_words_without_links() {
        let rustls = "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof";
        assert_eq!(
            in_words(rustls),
            "the server closed the connection before it answered"
        );
        assert_eq!(
            in_words("see https://example.invalid/x: broken pipe"),
            "see broken pipe"
        );
        assert_eq!(
            in_words("Connection refused (os error 111)"),
            "Connection refused (os error 111)"
        );
    }

    #[test]
    fn local_resource_and_tls_errors_are_found_anywhere_in_the_chain() {
        let wrapped = std::io::Error::other(std::io::Error::from_raw_os_error(libc::EMFILE));
        let (mut local, mut tls) = (None, false);
        note_cause(&wrapped, &mut local, &mut tls);
        assert_eq!(local, Some(libc::EMFILE));
        // As hyper reports it: an io error around tokio-rustls's io error around rustls's.
        let cert = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        ));
        let (mut local, mut tls) = (None, false);
        note_cause(&cert, &mut local, &mut tls);
        assert!(tls && local.is_none());
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let (mut local, mut tls) = (None, false);
        note_cause(&refused, &mut local, &mut tls);
        assert!(!tls && local.is_none());
    }
}
