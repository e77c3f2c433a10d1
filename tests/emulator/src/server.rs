//! Transport (TCP, TLS, HTTP/1.1 keep-alive), routing, the API handlers, faults, rate
//! limiting, callbacks, persistence and the `/_emulator` control endpoints.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use sha2::Digest;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::state::{
    type_str, Challenge, ChallengeStatus, ChallengeView, Creds, Factor, FactorStatus, PhoneCheck,
    State, Token,
};
use crate::util::{enc, iso8601, now_ms, pct_decode, random_token, valid_e164};
use crate::{tls, totp, FactorType, Fault, FaultKind, Options, ReadyInfo, Route, Seeded, Stats};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;
const AUTHN: &str = "/authenticator/v0.1";
const HAL: &str = "application/hal+json";
const PROBLEM: &str = "application/problem+json";
const JSON: &str = "application/json";

type Body = http_body_util::combinators::BoxBody<Bytes, io::Error>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Responses

enum RespBody {
    Full(Bytes),
    Huge(usize),
    DropMidBody,
    HangMidBody,
}

/// An answer before it becomes a hyper response.
pub struct Resp {
    status: u16,
    ctype: &'static str,
    body: RespBody,
    headers: Vec<(&'static str, String)>,
}

impl Resp {
    fn json(status: u16, ctype: &'static str, v: &Value) -> Resp {
        Resp {
            status,
            ctype,
            body: RespBody::Full(Bytes::from(v.to_string())),
            headers: Vec::new(),
        }
    }
    fn hal(status: u16, v: &Value) -> Resp {
        Resp::json(status, HAL, v)
    }
    fn raw(status: u16, ctype: &'static str, body: &'static str) -> Resp {
        Resp {
            status,
            ctype,
            body: RespBody::Full(Bytes::from_static(body.as_bytes())),
            headers: Vec::new(),
        }
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Resp {
        self.headers.push((name, value.into()));
        self
    }
}

fn slug(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("bad_request", "Bad Request"),
        401 => ("unauthorized", "Unauthorized"),
        403 => ("forbidden", "Forbidden"),
        404 => ("not_found", "Not Found"),
        405 => ("method_not_allowed", "Method Not Allowed"),
        409 => ("conflict", "Conflict"),
        413 => ("payload_too_large", "Payload Too Large"),
        415 => ("unsupported_media_type", "Unsupported Media Type"),
        429 => ("too_many_requests", "Too Many Requests"),
        500 => ("internal_server_error", "Internal Server Error"),
        502 => ("bad_gateway", "Bad Gateway"),
        503 => ("service_unavailable", "Service Unavailable"),
        504 => ("gateway_timeout", "Gateway Timeout"),
        _ => ("error", "Error"),
    }
}

/// An RFC 7807 problem, shaped as tru.ID shapes them.
fn problem(status: u16, detail: impl Into<String>) -> Resp {
    let (s, title) = slug(status);
    problem_typed(status, s, title, detail)
}

fn problem_typed(status: u16, slug: &str, title: &str, detail: impl Into<String>) -> Resp {
    let mut r = Resp::json(
        status,
        PROBLEM,
        &json!({
            "type": format!("https://developer.tru.id/docs/reference/api-errors#{slug}"),
            "title": title,
            "status": status,
            "detail": detail.into(),
        }),
    );
    if status == 401 {
        r = r.header("www-authenticate", "Bearer realm=\"tru.ID\"");
    }
    r
}

type R = Result<Resp, Resp>;

// ---------------------------------------------------------------------------------------------
// Bodies for the Huge and DropMidBody faults

static CHUNK: [u8; 65536] = [b'x'; 65536];

struct HugeBody {
    remaining: usize,
}

impl http_body::Body for HugeBody {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK.len());
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining as u64)
    }
}

/// Sends 10 bytes, gives hyper time to flush them (with the headers), then fails, which
/// makes hyper close the connection short of the announced Content-Length. With a long `wait`
/// (the HangMidBody fault) the rest of the answer never comes while the client waits.
struct MidDropBody {
    sent: bool,
    wait: Duration,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for MidDropBody {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"factor_")))));
        }
        let wait = self.wait;
        let pause = self
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
        if pause.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "drop_mid_body fault",
        ))))
    }
}

fn into_response(r: Resp, rate: &[(&'static str, String)]) -> Response<Body> {
    let (body, len): (Body, Option<String>) = match r.body {
        RespBody::Full(b) => (Full::new(b).map_err(|n| match n {}).boxed(), None),
        RespBody::Huge(n) => (HugeBody { remaining: n }.boxed(), None),
        RespBody::DropMidBody => (
            MidDropBody {
                sent: false,
                wait: Duration::from_millis(100),
                pause: None,
            }
            .boxed(),
            Some("1000".into()),
        ),
        RespBody::HangMidBody => (
            MidDropBody {
                sent: false,
                wait: Duration::from_secs(600),
                pause: None,
            }
            .boxed(),
            Some("1000".into()),
        ),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(r.ctype));
    if let Some(len) = len {
        if let Ok(v) = HeaderValue::from_str(&len) {
            h.insert(CONTENT_LENGTH, v);
        }
    }
    for (name, value) in rate.iter().chain(r.headers.iter()) {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(*name, v);
        }
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Shared state

#[derive(Default)]
struct Counters {
    tokens_issued: AtomicU64,
    tls_handshakes: AtomicU64,
    connections_accepted: AtomicU64,
    challenges_created: AtomicU64,
    verifications: AtomicU64,
    verification_attempts: AtomicU64,
    callbacks_delivered: AtomicU64,
    callbacks_failed: AtomicU64,
    rate_limited: AtomicU64,
    faults_applied: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Persister {
    path: PathBuf,
    written: Mutex<u64>,
}

pub struct Shared {
    pub info: ReadyInfo,
    base_url: String,
    token_ttl: Duration,
    challenge_ttl: Duration,
    default_issuer: String,
    push_auto: Option<(Duration, bool)>,
    rate_limit: u32,
    idle_close: Option<Duration>,
    state: Mutex<State>,
    faults: Mutex<Vec<Fault>>,
    counters: Counters,
    requests: Mutex<BTreeMap<&'static str, u64>>,
    /// (window start ms, requests in the window)
    rate: Mutex<(u64, u32)>,
    qr_cache: Mutex<HashMap<String, Arc<str>>>,
    persist: Option<Persister>,
    handle: tokio::runtime::Handle,
    http: reqwest::Client,
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

fn gen_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Shared {
    pub fn new(
        opts: Options,
        base_url: String,
        tls: Option<&tls::Tls>,
        handle: &tokio::runtime::Handle,
    ) -> io::Result<Arc<Shared>> {
        let mut state = match &opts.state_file {
            Some(p) if p.exists() => {
                let data = std::fs::read(p)?;
                serde_json::from_slice::<State>(&data).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("state file {}: {e}", p.display()),
                    )
                })?
            }
            _ => State::default(),
        };
        let pick = |given: &Option<String>, stored: &str, gen: &dyn Fn() -> String| -> String {
            match given {
                Some(g) => g.clone(),
                None if !stored.is_empty() => stored.to_string(),
                None => gen(),
            }
        };
        let old = state.creds.clone();
        let creds = Creds {
            client_id: pick(&opts.client_id, &old.client_id, &|| {
                uuid::Uuid::new_v4().simple().to_string()
            }),
            client_secret: pick(&opts.client_secret, &old.client_secret, &|| {
                random_token(24)
            }),
            workspace_id: pick(&opts.workspace_id, &old.workspace_id, &|| {
                format!("w{}", uuid::Uuid::new_v4().simple())
            }),
            project_id: pick(&opts.project_id, &old.project_id, &gen_id),
            workspace_client_id: pick(&opts.workspace_client_id, &old.workspace_client_id, &|| {
                uuid::Uuid::new_v4().simple().to_string()
            }),
            workspace_client_secret: pick(
                &opts.workspace_client_secret,
                &old.workspace_client_secret,
                &|| random_token(24),
            ),
        };
        let now = now_ms();
        if !state.project.is_object() {
            state.project = json!({
                "project_id": creds.project_id,
                "name": "pam_truid emulator project",
                "mode": "live",
                "created_at": iso8601(now),
                "updated_at": iso8601(now),
                "configuration": {
                    "authenticator": {
                        "issuer_name": opts.issuer_name,
                        "challenge_callback_url": null,
                        "challenge_default_message": "Please confirm your login",
                    },
                    "phone_check": {
                        "callback_url": "https://example.com/phone-check-callback",
                    },
                },
            });
        }
        if let Some(p) = state.project.as_object_mut() {
            p.insert("project_id".into(), json!(creds.project_id));
        }
        state.creds = creds.clone();
        state.reindex();
        state.generation = 1;

        let info = ReadyInfo {
            base_url: base_url.clone(),
            ca_file: tls.map(|t| t.ca_file.display().to_string()),
            client_id: creds.client_id,
            client_secret: creds.client_secret,
            workspace_id: creds.workspace_id,
            project_id: creds.project_id,
            workspace_client_id: creds.workspace_client_id,
            workspace_client_secret: creds.workspace_client_secret,
        };
        let client_tls = tls::client_config(tls.map(|t| &t.ca_der))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(client_tls)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let shared = Arc::new(Shared {
            info,
            base_url,
            token_ttl: opts.token_ttl,
            challenge_ttl: opts.challenge_ttl,
            default_issuer: opts.issuer_name.clone(),
            push_auto: opts.push_auto,
            rate_limit: opts.rate_limit.max(1),
            idle_close: opts.idle_close,
            state: Mutex::new(state),
            faults: Mutex::new(opts.faults.clone()),
            counters: Counters::default(),
            requests: Mutex::new(BTreeMap::new()),
            rate: Mutex::new((now, 0)),
            qr_cache: Mutex::new(HashMap::new()),
            persist: opts.state_file.clone().map(|path| Persister {
                path,
                written: Mutex::new(0),
            }),
            handle: handle.clone(),
            http,
            shutdown: tokio::sync::watch::Sender::new(false),
        });
        shared.persist_now()?;
        Ok(shared)
    }

    // -- persistence -------------------------------------------------------------------------

    /// Locks the state for a change: the generation moves on; call `persist` after unlocking.
    fn change(&self) -> MutexGuard<'_, State> {
        let mut st = lock(&self.state);
        st.generation += 1;
        st
    }

    fn persist(&self) {
        if let Err(e) = self.persist_now() {
            eprintln!("truid-emulator: cannot write the state file: {e}");
        }
    }

    fn persist_now(&self) -> io::Result<()> {
        let Some(p) = &self.persist else {
            return Ok(());
        };
        let (gen, data) = {
            let st = lock(&self.state);
            (
                st.generation,
                serde_json::to_vec(&*st).map_err(io::Error::other)?,
            )
        };
        let mut written = lock(&p.written);
        if gen <= *written {
            return Ok(());
        }
        write_atomic(&p.path, &data)?;
        *written = gen;
        Ok(())
    }

    // -- library API -------------------------------------------------------------------------

    pub fn seed(self: &Arc<Self>, ext: &str, kind: FactorType) -> Seeded {
        let seeded = {
            let mut st = self.change();
            if let Some(f) = st.by_ext.get(ext).and_then(|id| st.factors.get(id)) {
                Seeded {
                    factor_id: f.factor_id.clone(),
                    secret_base32: f.secret.clone(),
                }
            } else {
                let issuer = st
                    .issuer_name()
                    .unwrap_or_else(|| self.default_issuer.clone());
                let f = new_factor(&issuer, ext, "447700900000", kind, FactorStatus::Active);
                let s = Seeded {
                    factor_id: f.factor_id.clone(),
                    secret_base32: f.secret.clone(),
                };
                st.by_ext.insert(ext.to_string(), f.factor_id.clone());
                st.factors.insert(f.factor_id.clone(), f);
                s
            }
        };
        self.persist();
        seeded
    }

    pub fn code(&self, factor_id: &str, offset: i64) -> Option<String> {
        let secret = {
            let st = lock(&self.state);
            st.factors.get(factor_id)?.secret.clone()
        };
        let secret = totp::decode_secret(&secret)?;
        let t = (now_ms() / 1000) as i64 + offset * totp::STEP_SECS as i64;
        Some(totp::code(&secret, t.max(0) as u64))
    }

    pub fn add_fault(&self, f: Fault) {
        lock(&self.faults).push(f);
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            requests: lock(&self.requests)
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            tokens_issued: g(&c.tokens_issued),
            tls_handshakes: g(&c.tls_handshakes),
            connections_accepted: g(&c.connections_accepted),
            challenges_created: g(&c.challenges_created),
            verifications: g(&c.verifications),
            verification_attempts: g(&c.verification_attempts),
            callbacks_delivered: g(&c.callbacks_delivered),
            callbacks_failed: g(&c.callbacks_failed),
            rate_limited: g(&c.rate_limited),
            faults_applied: g(&c.faults_applied),
        }
    }

    pub fn revoke_tokens(&self) {
        self.change().tokens.clear();
        self.persist();
    }

    pub fn challenge_view(self: &Arc<Self>, fid: &str, cid: &str) -> Option<ChallengeView> {
        let (view, events) = {
            let mut st = lock(&self.state);
            let ch = st.challenges.get_mut(cid).filter(|c| c.factor_id == fid)?;
            let events = if ch.expire_if_due(now_ms()) {
                vec![ch.clone()]
            } else {
                vec![]
            };
            let view = ch.view();
            if !events.is_empty() {
                st.generation += 1;
            }
            (view, events)
        };
        self.after(events);
        Some(view)
    }

    pub fn recent_challenges(self: &Arc<Self>) -> Vec<ChallengeView> {
        let st = lock(&self.state);
        st.recent
            .iter()
            .filter_map(|id| st.challenges.get(id))
            .map(|c| c.view())
            .collect()
    }

    pub fn resolve_push(self: &Arc<Self>, fid: &str, cid: &str, approve: bool) -> R {
        let now = now_ms();
        let (resp, events) = {
            let mut st = self.change();
            let Some(ch) = st.challenges.get_mut(cid).filter(|c| c.factor_id == fid) else {
                return Err(problem(404, "Challenge not found"));
            };
            let mut events = Vec::new();
            if ch.expire_if_due(now) {
                events.push(ch.clone());
            }
            if ch.kind != FactorType::Push {
                drop(st);
                self.after(events);
                return Err(problem(400, "Challenge is not a PUSH challenge"));
            }
            if ch.status != ChallengeStatus::Pending {
                drop(st);
                self.after(events);
                return Err(problem(400, "Challenge is not PENDING"));
            }
            ch.status = if approve {
                ChallengeStatus::Verified
            } else {
                ChallengeStatus::Failed
            };
            ch.updated_ms = now;
            if approve {
                inc(&self.counters.verifications);
            }
            events.push(ch.clone());
            (Resp::json(200, JSON, &json!(ch.view())), events)
        };
        self.after(events);
        Ok(resp)
    }

    /// After a change: write the state file, then send callbacks for changed challenges.
    fn after(self: &Arc<Self>, events: Vec<Challenge>) {
        self.persist();
        if events.is_empty() {
            return;
        }
        let Some(url) = lock(&self.state).callback_url() else {
            return;
        };
        for ch in events {
            let body = json!({
                "challenge_id": ch.challenge_id,
                "factor_id": ch.factor_id,
                "status": ch.status.as_str(),
                "reference_id": ch.reference_id,
                "type": type_str(ch.kind),
                "created_at": iso8601(ch.created_ms),
                "updated_at": iso8601(ch.updated_ms),
            })
            .to_string();
            let me = self.clone();
            let url = url.clone();
            self.handle
                .spawn(async move { me.send_callback(url, body).await });
        }
    }

    async fn send_callback(self: Arc<Self>, url: String, body: String) {
        let digest = format!(
            "SHA-256={}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body.as_bytes()))
        );
        for attempt in 0..3u64 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(attempt)).await;
            }
            let res = self
                .http
                .post(&url)
                .header("content-type", JSON)
                .header("digest", &digest)
                .header("date", crate::util::http_date(now_ms()))
                .header("x-tru-callback", "challenge")
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => {
                    inc(&self.counters.callbacks_delivered);
                    return;
                }
                Ok(r) => {
                    inc(&self.counters.callbacks_failed);
                    eprintln!("truid-emulator: callback {url}: HTTP {}", r.status());
                }
                Err(e) => {
                    inc(&self.counters.callbacks_failed);
                    eprintln!("truid-emulator: callback {url}: {e}");
                }
            }
        }
    }

    fn data_url(&self, f: &Factor) -> Arc<str> {
        if let Some(d) = lock(&self.qr_cache).get(&f.factor_id) {
            return d.clone();
        }
        let d: Arc<str> = qr_data_url(&f.url).into();
        lock(&self.qr_cache).insert(f.factor_id.clone(), d.clone());
        d
    }

    fn factor_json(&self, f: &Factor) -> Value {
        json!({
            "factor_id": f.factor_id,
            "status": f.status.as_str(),
            "type": type_str(f.kind),
            "external_user_id": f.external_user_id,
            "url": f.url,
            "data_url": &*self.data_url(f),
            "created_at": iso8601(f.created_ms),
            "updated_at": iso8601(f.updated_ms),
            "_links": {"self": {"href": format!("{}{AUTHN}/factors/{}", self.base_url, f.factor_id)}},
        })
    }

    fn challenge_json(&self, c: &Challenge) -> Value {
        let factor = format!("{}{AUTHN}/factors/{}", self.base_url, c.factor_id);
        let mut v = json!({
            "challenge_id": c.challenge_id,
            "factor_id": c.factor_id,
            "type": type_str(c.kind),
            "status": c.status.as_str(),
            "created_at": iso8601(c.created_ms),
            "updated_at": iso8601(c.updated_ms),
            "_links": {
                "self": {"href": format!("{factor}/challenges/{}", c.challenge_id)},
                "factor": {"href": factor},
            },
        });
        if let Some(m) = v.as_object_mut() {
            if let Some(r) = &c.reference_id {
                m.insert("reference_id".into(), json!(r));
            }
            if let Some(e) = c.expired_ms {
                m.insert("expired_at".into(), json!(iso8601(e)));
            }
            if c.kind == FactorType::Push {
                m.insert("check_id".into(), json!(c.check_id));
                m.insert("message".into(), json!(c.message));
            }
        }
        v
    }
}

fn write_atomic(path: &std::path::Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The state holds client secrets and TOTP secrets: owner-only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn new_factor(
    issuer: &str,
    ext: &str,
    phone: &str,
    kind: FactorType,
    status: FactorStatus,
) -> Factor {
    use rand::Rng;
    let mut secret = [0u8; 20];
    rand::rng().fill(&mut secret[..]);
    let secret = totp::encode_secret(&secret);
    let url = format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(issuer),
        enc(ext),
        enc(issuer)
    );
    let now = now_ms();
    Factor {
        factor_id: gen_id(),
        status,
        kind,
        external_user_id: ext.to_string(),
        phone_number: phone.to_string(),
        secret,
        url,
        created_ms: now,
        updated_ms: now,
        used_steps: Vec::new(),
    }
}

/// `data:image/png;base64,...` of a QR code of `url`.
pub fn qr_data_url(url: &str) -> String {
    use image::ImageEncoder;
    let Ok(code) = qrcode::QrCode::new(url.as_bytes()) else {
        return String::new();
    };
    let img = code
        .render::<image::Luma<u8>>()
        .min_dimensions(200, 200)
        .build();
    let mut png = Vec::new();
    if image::codecs::png::PngEncoder::new(&mut png)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::L8,
        )
        .is_err()
    {
        return String::new();
    }
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

// ---------------------------------------------------------------------------------------------
// Transport

pub fn spawn(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut stop = shared.shutdown.subscribe();
    let s = shared.clone();
    shared.handle.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                acc = listener.accept() => match acc {
                    Ok((sock, _)) => {
                        inc(&s.counters.connections_accepted);
                        let _ = sock.set_nodelay(true);
                        let s = s.clone();
                        let acceptor = acceptor.clone();
                        tokio::spawn(serve_conn(s, sock, acceptor));
                    }
                    Err(e) => {
                        eprintln!("truid-emulator: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
    let s = shared.clone();
    shared.handle.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            s.sweep();
        }
    });
}

impl Shared {
    /// Expires due challenges (with callbacks) and forgets long-expired tokens.
    fn sweep(self: &Arc<Self>) {
        let now = now_ms();
        let mut events = Vec::new();
        {
            let mut st = lock(&self.state);
            for ch in st.challenges.values_mut() {
                if ch.expire_if_due(now) {
                    events.push(ch.clone());
                }
            }
            let before = st.tokens.len();
            st.tokens.retain(|_, t| t.expires_ms + 60_000 > now);
            let hour_ago = now.saturating_sub(3_600_000);
            st.challenges
                .retain(|_, c| c.status == ChallengeStatus::Pending || c.updated_ms > hour_ago);
            if !events.is_empty() || before != st.tokens.len() {
                st.generation += 1;
            }
        }
        if !events.is_empty() {
            self.after(events);
        }
    }
}

async fn serve_conn(
    shared: Arc<Shared>,
    sock: tokio::net::TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    match acceptor {
        Some(acc) => {
            let hs = tokio::time::timeout(Duration::from_secs(10), acc.accept(sock)).await;
            if let Ok(Ok(tls)) = hs {
                inc(&shared.counters.tls_handshakes);
                run_http(shared, TokioIo::new(tls)).await
            }
        }
        None => run_http(shared, TokioIo::new(sock)).await,
    }
}

async fn run_http<I>(shared: Arc<Shared>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let k = kill.clone();
    let idle_close = shared.idle_close;
    // (requests in flight, when the last one ended), for `idle_close`.
    let activity = Arc::new(std::sync::Mutex::new((0u32, tokio::time::Instant::now())));
    let a = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let kill = k.clone();
        let activity = a.clone();
        async move {
            lock(&activity).0 += 1;
            let r = shared.handle_request(kill, req).await;
            let mut act = lock(&activity);
            *act = (act.0.saturating_sub(1), tokio::time::Instant::now());
            Ok::<_, Infallible>(r)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .writev(false)
        .serve_connection(io, svc);
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
        _ = idle_for(activity, idle_close) => {}
    }
}

/// Ends when the connection has been idle (no request in flight) for `limit`; never without
/// one. Dropping the connection then closes it, as a front end's keep-alive timeout does.
async fn idle_for(
    activity: Arc<std::sync::Mutex<(u32, tokio::time::Instant)>>,
    limit: Option<Duration>,
) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let (in_flight, last) = *lock(&activity);
        if in_flight == 0 && last.elapsed() >= limit {
            return;
        }
        let wait = if in_flight == 0 {
            limit.saturating_sub(last.elapsed())
        } else {
            limit
        };
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

struct Ctx {
    method: Method,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    body: Bytes,
}

impl Ctx {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn media_type(&self) -> Option<String> {
        self.header("content-type").map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }
}

enum Ep {
    Token,
    FactorCreate,
    FactorList,
    FactorGet(String),
    FactorPatch(String),
    ChallengeCreate(String),
    ChallengeList(String),
    ChallengeGet(String, String),
    ChallengeVerify(String, String),
    ConsoleGet(String, String),
    ConsolePatch(String, String),
    PhoneCheckCreate,
    PhoneCheckGet(String),
}

fn method_not_allowed(allow: &'static str) -> Resp {
    problem(405, "Method not allowed").header("allow", allow)
}

fn resolve(m: &Method, segs: &[&str]) -> Result<(Route, Ep), Resp> {
    let s = |i: usize| segs[i].to_string();
    let is_ch = |x: &str| x == "challenges" || x == "challenge";
    match segs {
        ["oauth2", "v1", "token"] => match *m {
            Method::POST => Ok((Route::Token, Ep::Token)),
            _ => Err(method_not_allowed("POST")),
        },
        ["authenticator", "v0.1", "factors"] => match *m {
            Method::POST => Ok((Route::FactorCreate, Ep::FactorCreate)),
            Method::GET => Ok((Route::FactorList, Ep::FactorList)),
            _ => Err(method_not_allowed("GET, POST")),
        },
        ["authenticator", "v0.1", "factors", _] => match *m {
            Method::GET => Ok((Route::FactorGet, Ep::FactorGet(s(3)))),
            Method::PATCH => Ok((Route::FactorPatch, Ep::FactorPatch(s(3)))),
            _ => Err(method_not_allowed("GET, PATCH")),
        },
        ["authenticator", "v0.1", "factors", _, c] if is_ch(c) => match *m {
            Method::POST => Ok((Route::ChallengeCreate, Ep::ChallengeCreate(s(3)))),
            Method::GET => Ok((Route::ChallengeList, Ep::ChallengeList(s(3)))),
            _ => Err(method_not_allowed("GET, POST")),
        },
        ["authenticator", "v0.1", "factors", _, c, _] if is_ch(c) => match *m {
            Method::GET => Ok((Route::ChallengeGet, Ep::ChallengeGet(s(3), s(5)))),
            Method::PATCH => Ok((Route::ChallengeVerify, Ep::ChallengeVerify(s(3), s(5)))),
            _ => Err(method_not_allowed("GET, PATCH")),
        },
        ["console", "v0.2", "workspaces", _, "projects", _] => match *m {
            Method::GET => Ok((Route::Console, Ep::ConsoleGet(s(3), s(5)))),
            Method::PATCH => Ok((Route::Console, Ep::ConsolePatch(s(3), s(5)))),
            _ => Err(method_not_allowed("GET, PATCH")),
        },
        ["phone_check", "v0.2", "checks"] => match *m {
            Method::POST => Ok((Route::PhoneCheck, Ep::PhoneCheckCreate)),
            _ => Err(method_not_allowed("POST")),
        },
        ["phone_check", "v0.2", "checks", _] => match *m {
            Method::GET => Ok((Route::PhoneCheck, Ep::PhoneCheckGet(s(3)))),
            _ => Err(method_not_allowed("GET")),
        },
        _ => Err(problem(404, "No such resource")),
    }
}

/// The spec (`Headers.v1`) marks `Access-Control-Allow-Origin: *` required on every 2xx
/// answer of the Authenticator and console operations; the token endpoint and PhoneCheck
/// answers are not marked so.
fn with_cors(route: Route, r: Resp) -> Resp {
    let api = !matches!(route, Route::Token | Route::PhoneCheck);
    if api && (200..300).contains(&r.status) {
        r.header("access-control-allow-origin", "*")
    } else {
        r
    }
}

fn split_path(path: &str) -> Option<Vec<String>> {
    let trimmed = path.trim_start_matches('/');
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    trimmed.split('/').map(pct_decode).collect()
}

impl Shared {
    fn count(&self, name: &'static str) {
        *lock(&self.requests).entry(name).or_insert(0) += 1;
    }

    /// Fixed one-minute window. Returns (headers, allowed, seconds to reset).
    fn rate_check(&self) -> (Vec<(&'static str, String)>, bool, u64) {
        let now = now_ms();
        let mut r = lock(&self.rate);
        if now >= r.0 + 60_000 || now < r.0 {
            *r = (now, 0);
        }
        r.1 = r.1.saturating_add(1);
        let allowed = r.1 <= self.rate_limit;
        let reset = (r.0 + 60_000).saturating_sub(now).div_ceil(1000).max(1);
        let remaining = self.rate_limit.saturating_sub(r.1);
        (
            vec![
                ("x-ratelimit-limit", self.rate_limit.to_string()),
                ("x-ratelimit-remaining", remaining.to_string()),
                ("x-ratelimit-reset", reset.to_string()),
            ],
            allowed,
            reset,
        )
    }

    /// Latency faults matching `route` (summed) and the first other matching fault.
    fn take_faults(&self, route: Route) -> (Duration, Option<FaultKind>) {
        let mut faults = lock(&self.faults);
        let mut delay = Duration::ZERO;
        let mut chosen = None;
        for f in faults.iter_mut() {
            if f.route != Route::Any && f.route != route {
                continue;
            }
            if f.times == Some(0) {
                continue;
            }
            match &f.kind {
                FaultKind::Latency(d) => delay += *d,
                k if chosen.is_none() => chosen = Some(k.clone()),
                _ => continue,
            }
            if let Some(t) = f.times.as_mut() {
                *t -= 1;
            }
            inc(&self.counters.faults_applied);
        }
        faults.retain(|f| f.times != Some(0));
        (delay, chosen)
    }

    async fn handle_request(
        self: Arc<Self>,
        kill: Arc<Notify>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let Some(segs) = split_path(req.uri().path()) else {
            self.count("unknown");
            let (rate, _, _) = self.rate_check();
            return into_response(problem(404, "No such resource"), &rate);
        };
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        if segs.first() == Some(&"_emulator") {
            self.count("control");
            let (parts, body) = req.into_parts();
            let ctx = match read_ctx(&parts, body).await {
                Ok(c) => c,
                Err(r) => return into_response(r, &[]),
            };
            let r = self.control(&segs[1..], &ctx).unwrap_or_else(|e| e);
            return into_response(r, &[]);
        }

        let (rate, allowed, reset) = self.rate_check();
        let routed = resolve(req.method(), &segs);
        self.count(match &routed {
            Ok((r, _)) => r.name(),
            Err(_) => "unknown",
        });
        if !allowed {
            inc(&self.counters.rate_limited);
            let r = problem(429, "Rate limit exceeded").header("retry-after", reset.to_string());
            return into_response(r, &rate);
        }
        let (route, ep) = match routed {
            Ok(x) => x,
            Err(r) => return into_response(r, &rate),
        };
        // From here every answer is the route's own (faults included), so the route decides
        // whether the spec's CORS header goes on a success.
        let answer = |r: Resp| into_response(with_cors(route, r), &rate);

        let (delay, fault) = self.take_faults(route);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(kind) = fault {
            let r = match kind {
                FaultKind::Latency(_) => None,
                FaultKind::Status(s) => Some(problem(s, format!("Injected fault: status {s}"))),
                FaultKind::TooManyRequests { retry_after } => {
                    let mut r = problem(429, "Injected fault: too many requests");
                    if let Some(s) = retry_after {
                        r = r.header("retry-after", s.to_string());
                    }
                    Some(r)
                }
                FaultKind::NotJson => Some(Resp::raw(200, "text/html", "<html>oops")),
                FaultKind::WrongShape => Some(Resp::raw(200, HAL, "{\"unexpected\":true}")),
                FaultKind::Huge(n) => Some(Resp {
                    status: 200,
                    ctype: HAL,
                    body: RespBody::Huge(n),
                    headers: Vec::new(),
                }),
                FaultKind::DropMidBody => Some(Resp {
                    status: 200,
                    ctype: HAL,
                    body: RespBody::DropMidBody,
                    headers: Vec::new(),
                }),
                FaultKind::HangMidBody => Some(Resp {
                    status: 200,
                    ctype: HAL,
                    body: RespBody::HangMidBody,
                    headers: Vec::new(),
                }),
                FaultKind::Unauthorized => Some(problem(401, "Invalid or expired token")),
                FaultKind::Drop => {
                    kill.notify_one();
                    std::future::pending::<()>().await;
                    None
                }
                FaultKind::Hang => {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    kill.notify_one();
                    std::future::pending::<()>().await;
                    None
                }
            };
            if let Some(r) = r {
                return answer(r);
            }
        }

        let (parts, body) = req.into_parts();
        let ctx = match read_ctx(&parts, body).await {
            Ok(c) => c,
            Err(r) => return answer(r),
        };
        answer(self.dispatch(ep, &ctx).unwrap_or_else(|e| e))
    }

    fn dispatch(self: &Arc<Self>, ep: Ep, ctx: &Ctx) -> R {
        match ep {
            Ep::Token => self.token(ctx),
            Ep::FactorCreate => self.factor_create(ctx),
            Ep::FactorList => self.factor_list(ctx),
            Ep::FactorGet(id) => self.factor_get(ctx, &id),
            Ep::FactorPatch(id) => self.factor_patch(ctx, &id),
            Ep::ChallengeCreate(id) => self.challenge_create(ctx, &id),
            Ep::ChallengeList(id) => self.challenge_list(ctx, &id),
            Ep::ChallengeGet(f, c) => self.challenge_get(ctx, &f, &c),
            Ep::ChallengeVerify(f, c) => self.challenge_verify(ctx, &f, &c),
            Ep::ConsoleGet(w, p) => self.console(ctx, &w, &p, false),
            Ep::ConsolePatch(w, p) => self.console(ctx, &w, &p, true),
            Ep::PhoneCheckCreate => self.phone_check_create(ctx),
            Ep::PhoneCheckGet(id) => self.phone_check_get(ctx, &id),
        }
    }
}

/// Bodies larger than [`MAX_BODY`] are still read (and thrown away) up to this many bytes
/// or [`DRAIN_TIME`], so the client reads the 413 instead of a reset connection.
const DRAIN_MAX: usize = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

async fn read_ctx(parts: &hyper::http::request::Parts, mut body: Incoming) -> Result<Ctx, Resp> {
    let too_big = || {
        problem(413, format!("Request body larger than {MAX_BODY} bytes"))
            .header("connection", "close")
    };
    let declared = match parts.headers.get(CONTENT_LENGTH) {
        Some(len) => match len.to_str().ok().and_then(|l| l.trim().parse::<u64>().ok()) {
            Some(l) => Some(l),
            None => return Err(problem(400, "Invalid Content-Length")),
        },
        None => None,
    };
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let over = declared.is_some_and(|l| l > MAX_BODY as u64);
    let read_all = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(());
            };
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen <= MAX_BODY && !over {
                    buf.extend_from_slice(&data);
                } else if seen > DRAIN_MAX {
                    break;
                }
            }
        }
        Ok(())
    };
    match tokio::time::timeout(DRAIN_TIME, read_all).await {
        Ok(Ok(())) => {}
        Ok(Err(())) => return Err(problem(400, "Could not read the request body")),
        Err(_) if over || seen > MAX_BODY => return Err(too_big()),
        Err(_) => return Err(problem(400, "Timed out reading the request body")),
    }
    if over || seen > MAX_BODY {
        return Err(too_big());
    }
    let body = buf.freeze();
    let query = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    Ok(Ctx {
        method: parts.method.clone(),
        headers: parts.headers.clone(),
        query,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// Body parsing helpers

/// The JSON object of a POST body. An empty body is `{}` when `empty_ok`.
fn json_object(ctx: &Ctx, empty_ok: bool) -> Result<Map<String, Value>, Resp> {
    if let Some(mt) = ctx.media_type() {
        if mt != JSON && !mt.ends_with("+json") {
            return Err(problem(415, "Content-Type must be application/json"));
        }
    }
    if ctx.body.iter().all(|b| b.is_ascii_whitespace()) {
        return if empty_ok {
            Ok(Map::new())
        } else {
            Err(problem(400, "The request body is missing"))
        };
    }
    match serde_json::from_slice::<Value>(&ctx.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(problem(400, "The request body must be a JSON object")),
        Err(e) => Err(problem(400, format!("The request body is invalid: {e}"))),
    }
}

/// A required string field.
fn req_str(m: &Map<String, Value>, name: &str) -> Result<String, Resp> {
    match m.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(problem(400, format!("{name} must not be empty"))),
        Some(Value::Null) | None => Err(problem(400, format!("{name} is required"))),
        Some(_) => Err(problem(400, format!("{name} must be a string"))),
    }
}

/// An optional string field.
fn opt_str(m: &Map<String, Value>, name: &str) -> Result<Option<String>, Resp> {
    match m.get(name) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(problem(400, format!("{name} must be a string"))),
    }
}

struct PatchOp {
    op: String,
    path: String,
    value: Option<Value>,
}

/// A JSON Patch document (RFC 6902); 415 unless `application/json-patch+json`.
fn json_patch(ctx: &Ctx) -> Result<Vec<PatchOp>, Resp> {
    if ctx.media_type().as_deref() != Some("application/json-patch+json") {
        return Err(problem(
            415,
            "Content-Type must be application/json-patch+json",
        ));
    }
    let v: Value = serde_json::from_slice(&ctx.body)
        .map_err(|e| problem(400, format!("The request body is invalid: {e}")))?;
    let Value::Array(items) = v else {
        return Err(problem(400, "A JSON Patch must be an array of operations"));
    };
    if items.is_empty() {
        return Err(problem(400, "The JSON Patch has no operation"));
    }
    items
        .into_iter()
        .map(|item| {
            let Value::Object(m) = item else {
                return Err(problem(400, "Each JSON Patch operation must be an object"));
            };
            Ok(PatchOp {
                op: req_str(&m, "op")?,
                path: req_str(&m, "path")?,
                value: m.get("value").cloned(),
            })
        })
        .collect()
}

fn op_string(op: &PatchOp) -> Result<String, Resp> {
    match &op.value {
        Some(Value::String(s)) => Ok(s.clone()),
        None => Err(problem(400, format!("{} needs a value", op.path))),
        Some(_) => Err(problem(400, format!("{} must be a string", op.path))),
    }
}

// ---------------------------------------------------------------------------------------------
// API handlers

impl Shared {
    /// Checks the bearer token and its scope.
    fn auth(&self, ctx: &Ctx, scope: &str) -> Result<(), Resp> {
        let Some(h) = ctx.header("authorization") else {
            return Err(problem(401, "Missing bearer token"));
        };
        let mut it = h.splitn(2, ' ');
        let (Some(kind), Some(token)) = (it.next(), it.next()) else {
            return Err(problem(401, "Invalid Authorization header"));
        };
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(problem(401, "Invalid Authorization header"));
        }
        let st = lock(&self.state);
        let Some(t) = st.tokens.get(token.trim()) else {
            return Err(problem(401, "Invalid or expired token"));
        };
        if now_ms() >= t.expires_ms {
            return Err(problem(401, "Invalid or expired token"));
        }
        if !t.scopes.iter().any(|s| s == scope) {
            return Err(problem(403, format!("The token lacks the scope {scope}")));
        }
        Ok(())
    }

    fn token(&self, ctx: &Ctx) -> R {
        let basic_err = || {
            problem(401, "Invalid client credentials")
                .header("www-authenticate", "Basic realm=\"tru.ID\"")
        };
        let h = ctx.header("authorization").ok_or_else(basic_err)?;
        let mut it = h.trim().splitn(2, ' ');
        let (Some(kind), Some(b64)) = (it.next(), it.next()) else {
            return Err(basic_err());
        };
        if !kind.eq_ignore_ascii_case("basic") {
            return Err(basic_err());
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(basic_err)?;
        let (id, secret) = decoded.split_once(':').ok_or_else(basic_err)?;
        let allowed: &[&str] = {
            let st = lock(&self.state);
            let c = &st.creds;
            if id == c.client_id && secret == c.client_secret {
                &["authenticator", "phone_check"]
            } else if id == c.workspace_client_id && secret == c.workspace_client_secret {
                &["console"]
            } else {
                return Err(basic_err());
            }
        };
        if let Some(mt) = ctx.media_type() {
            if mt != "application/x-www-form-urlencoded" {
                return Err(problem(
                    415,
                    "Content-Type must be application/x-www-form-urlencoded",
                ));
            }
        }
        let form: Vec<(String, String)> = form_urlencoded::parse(&ctx.body).into_owned().collect();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        match get("grant_type") {
            None => return Err(problem(400, "grant_type is required")),
            Some("client_credentials") => {}
            Some(g) => return Err(problem(400, format!("Unsupported grant_type {g:?}"))),
        }
        let scopes: Vec<String> = match get("scope") {
            Some(s) if !s.trim().is_empty() => {
                let wanted: Vec<String> = s.split_whitespace().map(str::to_string).collect();
                if let Some(bad) = wanted.iter().find(|w| !allowed.contains(&w.as_str())) {
                    return Err(problem(400, format!("Invalid scope {bad:?}")));
                }
                wanted
            }
            _ => allowed.iter().map(|s| s.to_string()).collect(),
        };
        let token = random_token(32);
        let ttl = self.token_ttl.as_secs();
        {
            let mut st = self.change();
            st.tokens.insert(
                token.clone(),
                Token {
                    scopes: scopes.clone(),
                    expires_ms: now_ms() + self.token_ttl.as_millis() as u64,
                },
            );
        }
        self.persist();
        inc(&self.counters.tokens_issued);
        Ok(Resp::json(
            200,
            JSON,
            &json!({
                "access_token": token,
                "token_type": "bearer",
                "expires_in": ttl,
                "scope": scopes.join(" "),
            }),
        )
        .header("cache-control", "no-store"))
    }

    fn factor_create(self: &Arc<Self>, ctx: &Ctx) -> R {
        self.auth(ctx, "authenticator")?;
        let body = json_object(ctx, false)?;
        let phone = req_str(&body, "phone_number")?;
        let ext = req_str(&body, "external_user_id")?;
        let kind = match opt_str(&body, "type")?.as_deref() {
            None | Some("TOTP") => FactorType::Totp,
            Some("PUSH") => FactorType::Push,
            Some(o) => return Err(problem(400, format!("Unknown factor type {o:?}"))),
        };
        if !valid_e164(&phone) {
            return Err(problem_typed(
                400,
                "phone_format_invalid",
                "Bad Request",
                "Phone Number Validation Error",
            ));
        }
        let f = {
            let mut st = self.change();
            let Some(issuer) = st.authenticator_config().map(|_| {
                st.issuer_name()
                    .unwrap_or_else(|| self.default_issuer.clone())
            }) else {
                return Err(problem(400, "Project has no authenticator config"));
            };
            if st.by_ext.contains_key(&ext) {
                return Err(problem(400, "external_user_id is not unique"));
            }
            let f = new_factor(&issuer, &ext, &phone, kind, FactorStatus::Pending);
            st.by_ext.insert(ext.clone(), f.factor_id.clone());
            st.factors.insert(f.factor_id.clone(), f.clone());
            f
        };
        self.persist();
        let v = self.factor_json(&f);
        let href = format!("{}{AUTHN}/factors/{}", self.base_url, f.factor_id);
        Ok(Resp::hal(201, &v).header("location", href))
    }

    fn factor_list(&self, ctx: &Ctx) -> R {
        self.auth(ctx, "authenticator")?;
        let paging = Paging::of(ctx)?;
        let filters = parse_rsql(ctx.query("search").unwrap_or(""), FACTOR_FIELDS)?;
        let mut all: Vec<Factor> = {
            let st = lock(&self.state);
            st.factors
                .values()
                .filter(|f| {
                    filters
                        .as_ref()
                        .is_none_or(|e| e.matches(&|k| factor_field(f, k)))
                })
                .cloned()
                .collect()
        };
        all.sort_by(|a, b| {
            a.created_ms
                .cmp(&b.created_ms)
                .then(a.factor_id.cmp(&b.factor_id))
        });
        let items = paging.slice(&all).map(|f| self.factor_json(f)).collect();
        Ok(Resp::hal(
            200,
            &self.collection(ctx, "/factors", "factors", &paging, all.len(), items),
        ))
    }

    /// `GET /factors/{id}/challenges`: the factor's challenges, a HAL ChallengeCollection.
    /// (One project per emulator: a factor that exists is the project's.)
    fn challenge_list(self: &Arc<Self>, ctx: &Ctx, fid: &str) -> R {
        self.auth(ctx, "authenticator")?;
        let paging = Paging::of(ctx)?;
        let filters = parse_rsql(ctx.query("search").unwrap_or(""), CHALLENGE_FIELDS)?;
        let sort = parse_sort(ctx, &["created_at", "updated_at"])?;
        let now = now_ms();
        let (mut all, events) = {
            let mut st = lock(&self.state);
            if !st.factors.contains_key(fid) {
                return Err(problem(404, "Factor not found"));
            }
            let mut events = Vec::new();
            let mut all = Vec::new();
            for ch in st.challenges.values_mut().filter(|c| c.factor_id == fid) {
                // The status searched on must be the one a GET would show.
                if ch.expire_if_due(now) {
                    events.push(ch.clone());
                }
                if filters
                    .as_ref()
                    .is_none_or(|e| e.matches(&|k| challenge_field(ch, k)))
                {
                    all.push(ch.clone());
                }
            }
            if !events.is_empty() {
                st.generation += 1;
            }
            (all, events)
        };
        self.after(events);
        let (field, desc) = sort.unwrap_or(("created_at", false));
        all.sort_by(|a, b| {
            let key = |c: &Challenge| match field {
                "updated_at" => c.updated_ms,
                _ => c.created_ms,
            };
            let o = key(a)
                .cmp(&key(b))
                .then(a.challenge_id.cmp(&b.challenge_id));
            if desc {
                o.reverse()
            } else {
                o
            }
        });
        let items = paging.slice(&all).map(|c| self.challenge_json(c)).collect();
        let path = format!("/factors/{fid}/challenges");
        Ok(Resp::hal(
            200,
            &self.collection(ctx, &path, "challenges", &paging, all.len(), items),
        ))
    }

    /// One page of a collection under `{AUTHN}{path}`, as HAL: `page`, `_embedded.{key}` and
    /// `_links` (self, first, last; prev and next only when such a page exists), the links
    /// keeping the request's `search` and `sort`.
    fn collection(
        &self,
        ctx: &Ctx,
        path: &str,
        key: &str,
        paging: &Paging,
        total: usize,
        items: Vec<Value>,
    ) -> Value {
        let (page, size) = (paging.page, paging.size);
        let total = total as u64;
        let total_pages = total.div_ceil(size);
        let kept: String = ["search", "sort"]
            .iter()
            .filter_map(|k| ctx.query(k).filter(|v| !v.is_empty()).map(|v| (k, v)))
            .map(|(k, v)| format!("{k}={}&", enc(v)))
            .collect();
        let link = |p: u64| json!({"href": format!("{}{AUTHN}{path}?{kept}page={p}&size={size}", self.base_url)});
        let last = total_pages.max(1);
        let mut links = Map::new();
        links.insert("self".into(), link(page));
        links.insert("first".into(), link(1));
        links.insert("last".into(), link(last));
        if page > 1 {
            links.insert("prev".into(), link((page - 1).min(last)));
        }
        if page < total_pages {
            links.insert("next".into(), link(page + 1));
        }
        json!({
            "_links": links,
            "_embedded": {key: items},
            "page": {"size": size, "total_elements": total, "total_pages": total_pages, "number": page},
        })
    }

    fn factor_get(&self, ctx: &Ctx, id: &str) -> R {
        self.auth(ctx, "authenticator")?;
        let f = lock(&self.state)
            .factors
            .get(id)
            .cloned()
            .ok_or_else(|| problem(404, "Factor not found"))?;
        Ok(Resp::hal(200, &self.factor_json(&f)))
    }

    fn factor_patch(&self, ctx: &Ctx, id: &str) -> R {
        self.auth(ctx, "authenticator")?;
        let ops = json_patch(ctx)?;
        let now = now_ms();
        let f = {
            let mut st = self.change();
            let Some(orig) = st.factors.get(id) else {
                return Err(problem(404, "Factor not found"));
            };
            let mut f = orig.clone();
            for op in &ops {
                match (op.op.as_str(), op.path.as_str()) {
                    ("add", "/code") => {
                        let code = op_string(op)?;
                        if f.status != FactorStatus::Pending {
                            return Err(problem(400, "Factor is not PENDING"));
                        }
                        if !f.accept_code(&code, now) {
                            return Err(problem(400, "Invalid code"));
                        }
                        f.status = FactorStatus::Active;
                    }
                    ("replace", "/status") => match op_string(op)?.as_str() {
                        "INACTIVE" => f.status = FactorStatus::Inactive,
                        other => {
                            return Err(problem(400, format!("Cannot set status to {other:?}")))
                        }
                    },
                    ("replace", "/external_user_id") => {
                        let ext = op_string(op)?;
                        if ext.trim().is_empty() {
                            return Err(problem(400, "external_user_id must not be empty"));
                        }
                        if ext != f.external_user_id && st.by_ext.contains_key(&ext) {
                            return Err(problem(400, "external_user_id is not unique"));
                        }
                        f.external_user_id = ext;
                    }
                    (o, p) => {
                        return Err(problem(400, format!("Unsupported operation {o} on {p}")))
                    }
                }
            }
            f.updated_ms = now;
            let old_ext = st.factors.get(id).map(|o| o.external_user_id.clone());
            if let Some(old) = old_ext {
                if old != f.external_user_id {
                    st.by_ext.remove(&old);
                    st.by_ext
                        .insert(f.external_user_id.clone(), f.factor_id.clone());
                }
            }
            st.factors.insert(f.factor_id.clone(), f.clone());
            f
        };
        self.persist();
        Ok(Resp::hal(200, &self.factor_json(&f)))
    }

    fn challenge_create(self: &Arc<Self>, ctx: &Ctx, fid: &str) -> R {
        self.auth(ctx, "authenticator")?;
        let body = json_object(ctx, true)?;
        let reference_id = opt_str(&body, "reference_id")?;
        let now = now_ms();
        let ch = {
            let mut st = self.change();
            let Some(f) = st.factors.get(fid) else {
                return Err(problem(404, "Factor not found"));
            };
            if f.status != FactorStatus::Active {
                return Err(problem(400, "Factor is not ACTIVE"));
            }
            // A PUSH factor also carries a TOTP secret (the app shows a code as a fallback):
            // a challenge without check_id and check_url on it is a code challenge.
            let wants_push = f.kind == FactorType::Push
                && (body.get("check_id").is_some() || body.get("check_url").is_some());
            let kind = if wants_push {
                FactorType::Push
            } else {
                FactorType::Totp
            };
            let (check_id, check_url, message) = if kind == FactorType::Push {
                let message = match opt_str(&body, "message")? {
                    Some(m) => Some(m),
                    None => st.default_message(),
                };
                (
                    Some(req_str(&body, "check_id")?),
                    Some(req_str(&body, "check_url")?),
                    message,
                )
            } else {
                (None, None, None)
            };
            let ch = Challenge {
                challenge_id: gen_id(),
                factor_id: fid.to_string(),
                kind,
                status: ChallengeStatus::Pending,
                reference_id,
                check_id,
                check_url,
                message,
                created_ms: now,
                updated_ms: now,
                expires_ms: now + self.challenge_ttl.as_millis() as u64,
                expired_ms: None,
            };
            st.remember_challenge(&ch.challenge_id);
            st.challenges.insert(ch.challenge_id.clone(), ch.clone());
            ch
        };
        self.persist();
        inc(&self.counters.challenges_created);
        if ch.kind == FactorType::Push {
            if let Some((delay, approve)) = self.push_auto {
                let me = self.clone();
                let (f, c) = (ch.factor_id.clone(), ch.challenge_id.clone());
                self.handle.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = me.resolve_push(&f, &c, approve);
                });
            }
        }
        let href = format!(
            "{}{AUTHN}/factors/{fid}/challenges/{}",
            self.base_url, ch.challenge_id
        );
        Ok(Resp::hal(201, &self.challenge_json(&ch)).header("location", href))
    }

    fn challenge_get(self: &Arc<Self>, ctx: &Ctx, fid: &str, cid: &str) -> R {
        self.auth(ctx, "authenticator")?;
        let (ch, events) = {
            let mut st = lock(&self.state);
            if !st.factors.contains_key(fid) {
                return Err(problem(404, "Factor not found"));
            }
            let Some(ch) = st.challenges.get_mut(cid).filter(|c| c.factor_id == fid) else {
                return Err(problem(404, "Challenge not found"));
            };
            let ev = if ch.expire_if_due(now_ms()) {
                vec![ch.clone()]
            } else {
                vec![]
            };
            let ch = ch.clone();
            if !ev.is_empty() {
                st.generation += 1;
            }
            (ch, ev)
        };
        self.after(events);
        Ok(Resp::hal(200, &self.challenge_json(&ch)))
    }

    /// Resolves a TOTP challenge with a code. Not documented by tru.ID: a wrong code answers
    /// 200 with status FAILED (the challenge is spent); a challenge that is not PENDING any
    /// more (VERIFIED, FAILED, EXPIRED) answers 400 to any further code.
    fn challenge_verify(self: &Arc<Self>, ctx: &Ctx, fid: &str, cid: &str) -> R {
        self.auth(ctx, "authenticator")?;
        let ops = json_patch(ctx)?;
        let [op] = &ops[..] else {
            return Err(problem(
                400,
                "Exactly one operation (add /code) is expected",
            ));
        };
        if op.op != "add" || op.path != "/code" {
            return Err(problem(
                400,
                format!("Unsupported operation {} on {}", op.op, op.path),
            ));
        }
        let code = op_string(op)?;
        let now = now_ms();
        let mut events = Vec::new();
        let result = {
            let mut st = self.change();
            let st = &mut *st;
            let Some(f) = st.factors.get_mut(fid) else {
                return Err(problem(404, "Factor not found"));
            };
            match st.challenges.get_mut(cid).filter(|c| c.factor_id == fid) {
                None => Err(problem(404, "Challenge not found")),
                Some(ch) => {
                    if ch.expire_if_due(now) {
                        events.push(ch.clone());
                    }
                    if ch.status == ChallengeStatus::Expired {
                        Err(problem(400, "Challenge has expired"))
                    } else if ch.status != ChallengeStatus::Pending {
                        Err(problem(400, "Challenge is not PENDING"))
                    } else if ch.kind != FactorType::Totp {
                        Err(problem(400, "Challenge is not a TOTP challenge"))
                    } else if f.status != FactorStatus::Active {
                        Err(problem(400, "Factor is not ACTIVE"))
                    } else {
                        inc(&self.counters.verification_attempts);
                        if f.accept_code(&code, now) {
                            ch.status = ChallengeStatus::Verified;
                            inc(&self.counters.verifications);
                        } else {
                            ch.status = ChallengeStatus::Failed;
                        }
                        ch.updated_ms = now;
                        events.push(ch.clone());
                        Ok(ch.clone())
                    }
                }
            }
        };
        self.after(events);
        let ch = result?;
        Ok(Resp::hal(200, &self.challenge_json(&ch)))
    }

    fn console(&self, ctx: &Ctx, w: &str, p: &str, patch: bool) -> R {
        self.auth(ctx, "console")?;
        {
            let st = lock(&self.state);
            if w != st.creds.workspace_id {
                return Err(problem(404, "Workspace not found"));
            }
            if p != st.creds.project_id {
                return Err(problem(404, "Project not found"));
            }
        }
        if !patch {
            return Ok(Resp::hal(200, &self.project_json()));
        }
        let ops = json_patch(ctx)?;
        {
            let mut st = self.change();
            let mut project = st.project.clone();
            for op in &ops {
                if !(op.path == "/name"
                    || op.path == "/configuration"
                    || op.path.starts_with("/configuration/"))
                {
                    return Err(problem(400, format!("Cannot change {}", op.path)));
                }
                apply_op(&mut project, op)?;
            }
            validate_project(&project)?;
            if let Some(m) = project.as_object_mut() {
                m.insert("updated_at".into(), json!(iso8601(now_ms())));
            }
            st.project = project;
        }
        self.persist();
        Ok(Resp::hal(200, &self.project_json()))
    }

    fn project_json(&self) -> Value {
        let mut v = lock(&self.state).project.clone();
        if let Some(m) = v.as_object_mut() {
            let href = format!(
                "{}/console/v0.2/workspaces/{}/projects/{}",
                self.base_url, self.info.workspace_id, self.info.project_id
            );
            m.insert("_links".into(), json!({"self": {"href": href}}));
        }
        v
    }

    fn phone_check_create(&self, ctx: &Ctx) -> R {
        self.auth(ctx, "phone_check")?;
        let body = json_object(ctx, false)?;
        let phone = req_str(&body, "phone_number")?;
        let redirect_url = opt_str(&body, "redirect_url")?;
        if !valid_e164(&phone) {
            return Err(problem_typed(
                400,
                "phone_format_invalid",
                "Bad Request",
                "Phone Number Validation Error",
            ));
        }
        let pc = PhoneCheck {
            check_id: gen_id(),
            phone_number: phone,
            redirect_url,
            created_ms: now_ms(),
        };
        self.change()
            .phone_checks
            .insert(pc.check_id.clone(), pc.clone());
        self.persist();
        let href = format!("{}/phone_check/v0.2/checks/{}", self.base_url, pc.check_id);
        Ok(Resp::hal(201, &self.phone_check_json(&pc)).header("location", href))
    }

    fn phone_check_get(&self, ctx: &Ctx, id: &str) -> R {
        self.auth(ctx, "phone_check")?;
        let pc = lock(&self.state)
            .phone_checks
            .get(id)
            .cloned()
            .ok_or_else(|| problem(404, "Check Not Found"))?;
        Ok(Resp::hal(200, &self.phone_check_json(&pc)))
    }

    fn phone_check_json(&self, pc: &PhoneCheck) -> Value {
        let href = format!("{}/phone_check/v0.2/checks/{}", self.base_url, pc.check_id);
        json!({
            "check_id": pc.check_id,
            "status": "ACCEPTED",
            "charge_amount": 1,
            "charge_currency": "API",
            "created_at": iso8601(pc.created_ms),
            "ttl": 60,
            "_links": {
                "self": {"href": href},
                "check_url": {"href": format!("{href}/redirect")},
            },
        })
    }
}

/// Applies one JSON Patch `add`/`replace`/`remove` to `doc`.
fn apply_op(doc: &mut Value, op: &PatchOp) -> Result<(), Resp> {
    let tokens: Vec<String> = op
        .path
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, parents)) = tokens.split_last() else {
        return Err(problem(400, "Invalid path"));
    };
    let mut cur = &mut *doc;
    for t in parents {
        cur = cur
            .get_mut(t.as_str())
            .ok_or_else(|| problem(400, format!("Path {} does not exist", op.path)))?;
    }
    let Value::Object(obj) = cur else {
        return Err(problem(400, format!("Path {} does not exist", op.path)));
    };
    match op.op.as_str() {
        "add" | "replace" => {
            let value = op
                .value
                .clone()
                .ok_or_else(|| problem(400, format!("{} needs a value", op.op)))?;
            if op.op == "replace" && !obj.contains_key(last) {
                return Err(problem(400, format!("Path {} does not exist", op.path)));
            }
            obj.insert(last.clone(), value);
        }
        "remove" => {
            if obj.remove(last).is_none() {
                return Err(problem(400, format!("Path {} does not exist", op.path)));
            }
        }
        other => return Err(problem(400, format!("Unsupported operation {other}"))),
    }
    Ok(())
}

fn validate_project(p: &Value) -> Result<(), Resp> {
    if !p.get("name").is_some_and(Value::is_string) {
        return Err(problem(400, "name must be a string"));
    }
    let Some(cfg) = p.get("configuration") else {
        return Ok(());
    };
    let Value::Object(cfg) = cfg else {
        return Err(problem(400, "configuration must be an object"));
    };
    if let Some(a) = cfg.get("authenticator") {
        let Value::Object(a) = a else {
            return Err(problem(
                400,
                "configuration.authenticator must be an object",
            ));
        };
        for (k, v) in a {
            if !(v.is_string() || v.is_null()) {
                return Err(problem(
                    400,
                    format!("configuration.authenticator.{k} must be a string"),
                ));
            }
        }
        if let Some(Value::String(u)) = a.get("challenge_callback_url") {
            if !(u.is_empty() || u.starts_with("https://") || u.starts_with("http://")) {
                return Err(problem(
                    400,
                    "challenge_callback_url must be an http(s) URL",
                ));
            }
        }
    }
    Ok(())
}

/// `page` and `size` of a collection request: pages count from 1, size 1..=100 (default 10).
struct Paging {
    page: u64,
    size: u64,
}

impl Paging {
    fn of(ctx: &Ctx) -> Result<Paging, Resp> {
        let num = |name: &str, default: u64, max: u64| -> Result<u64, Resp> {
            match ctx.query(name) {
                None | Some("") => Ok(default),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n >= 1 && n <= max => Ok(n),
                    _ => Err(problem(
                        400,
                        format!("{name} must be an integer between 1 and {max}"),
                    )),
                },
            }
        };
        Ok(Paging {
            page: num("page", 1, u32::MAX as u64)?,
            size: num("size", 10, 100)?,
        })
    }

    /// This page's items of `all` (sorted already).
    fn slice<'a, T>(&self, all: &'a [T]) -> impl Iterator<Item = &'a T> {
        let skip = (self.page - 1).saturating_mul(self.size);
        all.iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(self.size as usize)
    }
}

/// `sort=field[,asc|desc]`, the field one of `fields`; `Some((field, descending))`.
fn parse_sort(ctx: &Ctx, fields: &[&'static str]) -> Result<Option<(&'static str, bool)>, Resp> {
    let Some(v) = ctx.query("sort").filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let (field, dir) = v.split_once(',').unwrap_or((v, "asc"));
    let Some(field) = fields.iter().find(|f| **f == field.trim()) else {
        return Err(problem(
            400,
            format!("Cannot sort on {field:?} (one of: {})", fields.join(", ")),
        ));
    };
    match dir.trim().to_ascii_lowercase().as_str() {
        "asc" => Ok(Some((field, false))),
        "desc" => Ok(Some((field, true))),
        other => Err(problem(
            400,
            format!("Sort direction must be asc or desc, not {other:?}"),
        )),
    }
}

const CHALLENGE_FIELDS: &[&str] = &["status", "reference_id", "challenge_id", "type"];

/// RSQL as tru.ID's search takes it: `field==value` and `field!=value` comparisons, joined by
/// `;` or ` and ` (AND, binding tighter) and `,` or ` or ` (OR), with parentheses. A value is
/// unquoted (no space, quote, `;`, `,`, `(` or `)`) or quoted with `"` or `'`, where a backslash
/// escapes the next character. `*` in a value is a wildcard, quoted or not. Anything else is a
/// 400, so a query a client failed to quote shows up as an error or as a different match.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rsql {
    Cmp {
        field: String,
        equal: bool,
        value: String,
    },
    And(Vec<Rsql>),
    Or(Vec<Rsql>),
}

impl Rsql {
    /// Whether the item whose field values `get` gives matches (a field without a value
    /// matches no `==`).
    fn matches<'a>(&self, get: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Rsql::Cmp {
                field,
                equal,
                value,
            } => get(field).is_some_and(|v| glob(value, v)) == *equal,
            Rsql::And(all) => all.iter().all(|e| e.matches(get)),
            Rsql::Or(any) => any.iter().any(|e| e.matches(get)),
        }
    }
}

/// The fields a factor search may name.
const FACTOR_FIELDS: &[&str] = &["external_user_id", "status", "type", "factor_id"];

/// The search `s` on the given fields; `None` when empty.
fn parse_rsql(s: &str, fields: &[&str]) -> Result<Option<Rsql>, Resp> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    let mut p = RsqlParser {
        chars: s.chars().collect(),
        at: 0,
        fields,
    };
    let e = p.or()?;
    p.skip_spaces();
    if p.at != p.chars.len() {
        return Err(p.error("unexpected text"));
    }
    Ok(Some(e))
}

struct RsqlParser<'f> {
    chars: Vec<char>,
    at: usize,
    fields: &'f [&'f str],
}

impl RsqlParser<'_> {
    fn error(&self, what: &str) -> Resp {
        problem(
            400,
            format!("Invalid search: {what} at character {}", self.at),
        )
    }
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }
    fn skip_spaces(&mut self) {
        while self.peek() == Some(' ') {
            self.at += 1;
        }
    }
    /// Consumes `word` (after spaces) if it comes next.
    fn eat(&mut self, word: &str) -> bool {
        let save = self.at;
        if !word.starts_with(' ') {
            self.skip_spaces();
        }
        let w: Vec<char> = word.chars().collect();
        if self.chars[self.at..].starts_with(&w) {
            self.at += w.len();
            true
        } else {
            self.at = save;
            false
        }
    }
    fn or(&mut self) -> Result<Rsql, Resp> {
        let mut terms = vec![self.and()?];
        while self.eat(",") || self.eat(" or ") {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Rsql::Or(terms)
        })
    }
    fn and(&mut self) -> Result<Rsql, Resp> {
        let mut terms = vec![self.term()?];
        while self.eat(";") || self.eat(" and ") {
            terms.push(self.term()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Rsql::And(terms)
        })
    }
    fn term(&mut self) -> Result<Rsql, Resp> {
        if self.eat("(") {
            let e = self.or()?;
            if !self.eat(")") {
                return Err(self.error("missing )"));
            }
            return Ok(e);
        }
        self.skip_spaces();
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            self.at += 1;
        }
        let field: String = self.chars[start..self.at].iter().collect();
        if field.is_empty() {
            return Err(self.error("a field name is missing"));
        }
        if !self.fields.contains(&field.as_str()) {
            return Err(problem(400, format!("Cannot search on {field:?}")));
        }
        let equal = if self.eat("==") {
            true
        } else if self.eat("!=") {
            false
        } else {
            return Err(problem(
                400,
                format!("Unsupported search term on {field:?}"),
            ));
        };
        let value = self.value()?;
        Ok(Rsql::Cmp {
            field,
            equal,
            value,
        })
    }
    fn value(&mut self) -> Result<String, Resp> {
        let mut out = String::new();
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.at += 1;
                loop {
                    match self.peek() {
                        None => return Err(self.error("unterminated quoted value")),
                        Some('\\') => {
                            self.at += 1;
                            let Some(c) = self.peek() else {
                                return Err(self.error("a backslash ends the value"));
                            };
                            out.push(c);
                            self.at += 1;
                        }
                        Some(c) if c == q => {
                            self.at += 1;
                            return Ok(out);
                        }
                        Some(c) => {
                            out.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            _ => {
                while let Some(c) = self.peek() {
                    if matches!(c, ' ' | '"' | '\'' | ';' | ',' | '(' | ')') {
                        break;
                    }
                    out.push(c);
                    self.at += 1;
                }
                if out.is_empty() {
                    return Err(self.error("a value is missing"));
                }
                Ok(out)
            }
        }
    }
}

fn factor_field<'a>(f: &'a Factor, k: &str) -> Option<&'a str> {
    match k {
        "external_user_id" => Some(&f.external_user_id),
        "status" => Some(f.status.as_str()),
        "type" => Some(type_str(f.kind)),
        "factor_id" => Some(&f.factor_id),
        _ => None,
    }
}

fn challenge_field<'a>(c: &'a Challenge, k: &str) -> Option<&'a str> {
    match k {
        "status" => Some(c.status.as_str()),
        "reference_id" => c.reference_id.as_deref(),
        "challenge_id" => Some(&c.challenge_id),
        "type" => Some(type_str(c.kind)),
        _ => None,
    }
}

fn glob(p: &str, v: &str) -> bool {
    if !p.contains('*') {
        return p == v;
    }
    let parts: Vec<&str> = p.split('*').collect();
    let mut rest = v;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Control endpoints

impl Shared {
    fn control(self: &Arc<Self>, segs: &[&str], ctx: &Ctx) -> R {
        let m = &ctx.method;
        let body_json = || -> Result<Value, Resp> {
            serde_json::from_slice(&ctx.body)
                .map_err(|e| problem(400, format!("The request body is invalid: {e}")))
        };
        let faults_json = |me: &Shared| json!({"faults": *lock(&me.faults)});
        match segs {
            ["faults"] => match *m {
                Method::POST => {
                    let f: Fault = serde_json::from_value(body_json()?)
                        .map_err(|e| problem(400, format!("Invalid fault: {e}")))?;
                    self.add_fault(f);
                    Ok(Resp::json(200, JSON, &faults_json(self)))
                }
                Method::DELETE => {
                    self.clear_faults();
                    Ok(Resp::json(200, JSON, &faults_json(self)))
                }
                Method::GET => Ok(Resp::json(200, JSON, &faults_json(self))),
                _ => Err(method_not_allowed("GET, POST, DELETE")),
            },
            ["factors", id, "code"] => {
                if *m != Method::GET {
                    return Err(method_not_allowed("GET"));
                }
                let offset = match ctx.query("offset") {
                    None => 0,
                    Some(o) => o
                        .parse::<i64>()
                        .ok()
                        .filter(|o| o.abs() <= 1_000_000)
                        .ok_or_else(|| problem(400, "offset must be an integer"))?,
                };
                let code = self
                    .code(id, offset)
                    .ok_or_else(|| problem(404, "Factor not found"))?;
                Ok(Resp::json(200, JSON, &json!({"code": code})))
            }
            ["factors", fid, c, cid, action]
                if (*c == "challenges" || *c == "challenge")
                    && (*action == "approve" || *action == "deny") =>
            {
                if *m != Method::POST {
                    return Err(method_not_allowed("POST"));
                }
                self.resolve_push(fid, cid, *action == "approve")
            }
            ["seed"] => {
                if *m != Method::POST {
                    return Err(method_not_allowed("POST"));
                }
                let Value::Object(b) = body_json()? else {
                    return Err(problem(400, "The request body must be a JSON object"));
                };
                let ext = req_str(&b, "external_user_id")?;
                let kind = match opt_str(&b, "type")?.as_deref() {
                    None | Some("TOTP") => FactorType::Totp,
                    Some("PUSH") => FactorType::Push,
                    Some(o) => return Err(problem(400, format!("Unknown factor type {o:?}"))),
                };
                let s = self.seed(&ext, kind);
                Ok(Resp::json(
                    200,
                    JSON,
                    &json!({"factor_id": s.factor_id, "secret": s.secret_base32}),
                ))
            }
            ["stats"] => Ok(Resp::json(200, JSON, &json!(self.stats()))),
            ["tokens", "revoke"] => {
                if *m != Method::POST {
                    return Err(method_not_allowed("POST"));
                }
                self.revoke_tokens();
                Ok(Resp::json(200, JSON, &json!({"revoked": true})))
            }
            ["challenges"] => Ok(Resp::json(200, JSON, &json!(self.recent_challenges()))),
            ["info"] => Ok(Resp::json(200, JSON, &json!(self.info))),
            _ => Err(problem(404, "No such control endpoint")),
        }
    }
}

#[cfg(test)]
mod rsql_tests {
    use super::*;

    fn cmp(field: &str, value: &str) -> Rsql {
        Rsql::Cmp {
            field: field.into(),
            equal: true,
            value: value.into(),
        }
    }

    #[test]
    fn quoting_and_escapes() {
        let p = |s: &str| parse_rsql(s, FACTOR_FIELDS).ok().flatten();
        assert_eq!(
            p("external_user_id==alice"),
            Some(cmp("external_user_id", "alice"))
        );
        assert_eq!(
            p(r#"external_user_id=="a\"||external_user_id==\"b""#),
            Some(cmp("external_user_id", r#"a"||external_user_id=="b"#))
        );
        assert_eq!(
            p(r#"external_user_id=="AD\\bob""#),
            Some(cmp("external_user_id", r"AD\bob"))
        );
        assert_eq!(
            p(r#"external_user_id=="a,b;c""#),
            Some(cmp("external_user_id", "a,b;c"))
        );
        assert_eq!(
            p("external_user_id==a,external_user_id==b"),
            Some(Rsql::Or(vec![
                cmp("external_user_id", "a"),
                cmp("external_user_id", "b")
            ]))
        );
        assert_eq!(
            p("status==ACTIVE and type==TOTP"),
            Some(Rsql::And(vec![
                cmp("status", "ACTIVE"),
                cmp("type", "TOTP")
            ]))
        );
        for bad in [
            r#"external_user_id=="open"#,
            "external_user_id==",
            "name==x",
            "external_user_id==a b",
            r#"external_user_id=="a"b"#,
        ] {
            assert!(parse_rsql(bad, FACTOR_FIELDS).is_err(), "{bad}");
        }
    }
}
