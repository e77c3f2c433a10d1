//! Helpers shared by the emulator's tests: a client that trusts the emulator's CA, tokens,
//! factor creation and activation.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use truid_emulator::{totp, Emulator, Options};

pub const PATCH_CT: &str = "application/json-patch+json";

pub fn start(opts: Options) -> (Emulator, Client) {
    let emu = Emulator::start(opts).expect("emulator starts");
    let c = client(&emu, Duration::from_secs(10));
    (emu, c)
}

pub fn start_default() -> (Emulator, Client) {
    start(Options::default())
}

pub fn tls_config(ca_file: &str) -> rustls::ClientConfig {
    let pem = std::fs::read_to_string(ca_file).expect("ca.pem readable");
    let der = pem_to_der(&pem);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).expect("CA accepted");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("PEM base64")
}

pub fn client(emu: &Emulator, timeout: Duration) -> Client {
    let mut b = Client::builder().timeout(timeout);
    if let Some(ca) = &emu.info().ca_file {
        b = b.tls_backend_preconfigured(tls_config(ca));
    }
    b.build().expect("client builds")
}

pub fn url(emu: &Emulator, path: &str) -> String {
    format!("{}{}", emu.info().base_url, path)
}

pub fn authn(emu: &Emulator, path: &str) -> String {
    format!("{}/authenticator/v0.1{}", emu.info().base_url, path)
}

pub fn token_resp(c: &Client, emu: &Emulator, id: &str, secret: &str, scope: &str) -> Response {
    c.post(url(emu, "/oauth2/v1/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials"), ("scope", scope)])
        .send()
        .expect("token request")
}

/// A project token with scopes authenticator and phone_check.
pub fn token(c: &Client, emu: &Emulator) -> String {
    let i = emu.info();
    let r = token_resp(
        c,
        emu,
        &i.client_id,
        &i.client_secret,
        "authenticator phone_check",
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

pub fn console_token(c: &Client, emu: &Emulator) -> String {
    let i = emu.info();
    let r = token_resp(
        c,
        emu,
        &i.workspace_client_id,
        &i.workspace_client_secret,
        "console",
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

pub fn create_factor(c: &Client, emu: &Emulator, tok: &str, ext: &str) -> Value {
    let r = c
        .post(authn(emu, "/factors"))
        .bearer_auth(tok)
        .json(&json!({"phone_number": "447700900000", "external_user_id": ext}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().unwrap()
}

pub fn secret_of(url: &str) -> Vec<u8> {
    let q = url.split_once('?').expect("query in otpauth URI").1;
    let secret = q
        .split('&')
        .find_map(|kv| kv.strip_prefix("secret="))
        .expect("secret in URI");
    totp::decode_secret(secret).expect("base32 secret")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn code_for(secret: &[u8], step_offset: i64) -> String {
    totp::code(secret, (now() as i64 + step_offset * 30) as u64)
}

pub fn patch(c: &Client, url: &str, tok: &str, body: Value) -> Response {
    c.patch(url)
        .bearer_auth(tok)
        .header("content-type", PATCH_CT)
        .body(body.to_string())
        .send()
        .unwrap()
}

/// Creates a factor and activates it with the code of step `offset`; returns (factor, secret).
pub fn active_factor(c: &Client, emu: &Emulator, tok: &str, ext: &str) -> (Value, Vec<u8>) {
    let f = create_factor(c, emu, tok, ext);
    let secret = secret_of(f["url"].as_str().unwrap());
    let id = f["factor_id"].as_str().unwrap();
    let r = patch(
        c,
        &authn(emu, &format!("/factors/{id}")),
        tok,
        json!([{"op": "add", "path": "/code", "value": code_for(&secret, 0)}]),
    );
    assert_eq!(r.status(), 200);
    let f: Value = r.json().unwrap();
    assert_eq!(f["status"], "ACTIVE");
    (f, secret)
}

pub fn new_challenge(c: &Client, emu: &Emulator, tok: &str, fid: &str, body: Value) -> Response {
    c.post(authn(emu, &format!("/factors/{fid}/challenges")))
        .bearer_auth(tok)
        .json(&body)
        .send()
        .unwrap()
}

/// Asserts an RFC 7807 answer with this status.
pub fn assert_problem(r: Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert!(
        r.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("application/problem+json"),
        "problem content type"
    );
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(r.headers().contains_key(h), "{h} present");
    }
    let v: Value = r.json().unwrap();
    assert!(v["type"].as_str().unwrap().starts_with("https://"));
    assert!(v["title"].is_string());
    assert!(v["detail"].is_string());
    assert_eq!(v["status"], status);
    v
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A 6-digit code that no step near now produces.
pub fn wrong_code(secret: &[u8]) -> String {
    let near: Vec<String> = (-2..=2).map(|o| code_for(secret, o)).collect();
    (0..)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .unwrap()
}
