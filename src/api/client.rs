//! HTTP to tru.ID over one kept-alive connection, within one `Deadline`.

use super::transport::{timed_out_error, Answer, Outgoing, Transport};
use super::types::{
    Challenge, ChallengeStatus, Factor, FactorKind, FactorList, PhoneCheck, Problem, TokenAnswer,
};
use super::ApiError;
use crate::cache::{TokenCache, REFRESH_MARGIN_SECS};
use crate::config::{ApiConfig, FactorId};
use crate::deadline::Deadline;
use crate::ports::{Authenticator, NewFactor};
use crate::secret::Secret;
use base64::Engine as _;
use reqwest::header::HeaderValue;
use reqwest::Method;
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const JSON_PATCH: &str = "application/json-patch+json";
/// Waited on a 429 without `Retry-After`, if the deadline allows.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Which credentials and scopes the token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The project's credentials: `authenticator` (and `phone_check`, for push).
    Authenticator,
    /// The workspace's credentials: `console`.
    Console,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Authenticator => "authenticator phone_check",
            Scope::Console => "console",
        }
    }
}

/// A client for one login (or one CLI command, or one call of the agent). Dropping it closes
/// its connection (and, on the blocking transport, ends reqwest's runtime thread), so nothing
/// of it outlives the login.
pub struct Client {
    http: Transport,
    base: String,
    client_id: String,
    client_secret: Secret,
    scope: Scope,
    token: Option<HeldToken>,
    cache: Option<TokenCache>,
    pub deadline: Deadline,
    /// HTTP requests sent, for `truid-pam test` and the benchmarks.
    pub requests: u32,
}

impl Client {
    /// A login's client (the direct client library's, `truid-pam test`'s): the project's
    /// credentials, on a runtime of its own that keeps its connection's task running while the
    /// person types. Errors are local setup problems (an unreadable `ca_file`, a bad proxy)
    /// and deny like config errors.
    pub fn for_login(api: &ApiConfig) -> Result<Client, String> {
        let http = Transport::for_login(api)?;
        Ok(Client::with_http(
            api,
            Scope::Authenticator,
            &api.client_id,
            &api.client_secret,
            http,
        ))
    }

    /// A client with the project's credentials, for the CLI's commands.
    pub fn new(api: &ApiConfig) -> Result<Client, String> {
        Client::with_credentials(
            api,
            Scope::Authenticator,
            &api.client_id,
            &api.client_secret,
        )
    }

    pub fn with_credentials(
        api: &ApiConfig,
        scope: Scope,
        client_id: &str,
        client_secret: &Secret,
    ) -> Result<Client, String> {
        let http = Transport::blocking(api, 1)?;
        Ok(Client::with_http(
            api,
            scope,
            client_id,
            client_secret,
            http,
        ))
    }

    /// A client on an HTTP client made before (the agent keeps one per project and hands it to
    /// each call, so calls share its kept-alive connections).
    pub fn with_http(
        api: &ApiConfig,
        scope: Scope,
        client_id: &str,
        client_secret: &Secret,
        http: Transport,
    ) -> Client {
        let cache = match (scope, &api.token_cache) {
            (Scope::Authenticator, Some(dir)) => Some(TokenCache::new(
                dir,
                &api.base_url,
                client_id,
                client_secret,
            )),
            _ => None,
        };
        Client {
            http,
            base: api.base_url.clone(),
            client_id: client_id.to_string(),
            client_secret: client_secret.clone(),
            scope,
            token: None,
            cache,
            deadline: Deadline::new(api.timeout),
            requests: 0,
        }
    }

    /// The bearer token this client holds, to hand to the next client of the same project.
    pub fn held_token(&self) -> Option<HeldToken> {
        self.token.clone()
    }

    /// Takes a token another client of the same project got, unless it is about to run out
    /// (this client then gets a new one).
    pub fn hold_token(&mut self, token: Option<HeldToken>) {
        self.token = token.filter(HeldToken::usable);
    }

    /// Gets a new token now, whatever this client holds (the agent's refresh before expiry).
    pub fn renew_token(&mut self) -> Result<(), ApiError> {
        self.token = Some(self.fetch_token()?);
        Ok(())
    }

    /// Ends this client, giving back its transport (and so its open connection) for the next.
    pub fn into_transport(self) -> Transport {
        self.http
    }

    /// A bearer token: this client's, the cache's, or a new one.
    fn token(&mut self) -> Result<Secret, ApiError> {
        if let Some(t) = self.token.as_ref().filter(|t| !t.left().is_zero()) {
            return Ok(t.value.clone());
        }
        if let Some((value, left)) = self.cache.as_ref().and_then(TokenCache::load) {
            self.token = Some(HeldToken::new(value.clone(), left));
            return Ok(value);
        }
        let t = self.fetch_token()?;
        let value = t.value.clone();
        self.token = Some(t);
        Ok(value)
    }

    fn fetch_token(&mut self) -> Result<HeldToken, ApiError> {
        let url = format!("{}/oauth2/v1/token", self.base);
        let body = format!(
            "grant_type=client_credentials&scope={}",
            self.scope.as_str().replace(' ', "%20")
        );
        let ans = self.send_with_retry(&Outgoing {
            method: Method::POST,
            url: &url,
            authorization: basic(&self.client_id, &self.client_secret)?,
            body: Some(("application/x-www-form-urlencoded", body.as_bytes())),
            // A second token is no harm: the first simply goes unused.
            twice_is_harmless: true,
        })?;
        match ans.status {
            200..=299 => {
                let t: TokenAnswer = decode(&ans.body)?;
                if t.access_token.is_empty() {
                    return Err(ApiError::Failed(
                        "token answer has an empty access_token".into(),
                    ));
                }
                let lifetime = t.expires_in.unwrap_or(3600);
                if let Some(c) = &self.cache {
                    c.store(&t.access_token, lifetime);
                }
                Ok(HeldToken::new(
                    t.access_token.clone(),
                    Duration::from_secs(lifetime.min(MAX_TOKEN_LIFETIME)),
                ))
            }
            // The project's credentials refused: a configuration error, which denies whatever
            // failmode says (a typo in the secret must not open the door).
            400 | 401 | 403 => Err(ApiError::Refused(format!(
                "token refused ({}); check [api] client_id and client_secret",
                status_text(&ans)
            ))),
            _ => Err(status_error(&ans)),
        }
    }

    /// One authorised call, refreshing the token once if tru.ID refuses it.
    ///
    /// After a 401 the request goes again with the new token, a code's verify included: tru.ID
    /// refused it for its token, before it looked at what it carried, so the code was not
    /// checked and sending it again is its first check.
    fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
        twice_is_harmless: bool,
    ) -> Result<Vec<u8>, ApiError> {
        let url = format!("{}{}", self.base, path);
        for refreshed in [false, true] {
            let token = self.token()?;
            let ans = self.send_with_retry(&Outgoing {
                method: method.clone(),
                url: &url,
                authorization: bearer(&token)?,
                body: body.as_ref().map(|(ct, b)| (*ct, b.as_slice())),
                twice_is_harmless,
            })?;
            match ans.status {
                200..=299 => return Ok(ans.body),
                401 if !refreshed => {
                    self.token = None;
                    if let Some(c) = &self.cache {
                        c.forget();
                    }
                }
                // tru.ID answers, and refuses what it just issued: not an outage.
                401 => {
                    return Err(ApiError::Failed(
                        "tru.ID refused a freshly issued token (401)".into(),
                    ))
                }
                // Of the 4xx, 408 and 429 are no refusal of the request (`status_error` says).
                408 | 429 => return Err(status_error(&ans)),
                400..=499 => return Err(ApiError::Refused(status_text(&ans))),
                _ => return Err(status_error(&ans)),
            }
        }
        Err(ApiError::Failed("token refused".into()))
    }

    /// Sends a request; on 429 waits for `Retry-After` and sends once more, only if the wait
    /// and a request still fit in the deadline.
    fn send_with_retry(&mut self, out: &Outgoing) -> Result<Answer, ApiError> {
        let ans = self.send(out)?;
        if ans.status != 429 {
            return Ok(ans);
        }
        let wait = ans.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
        match self.deadline.remaining() {
            Some(left) if left > wait + Duration::from_millis(100) => {
                self.deadline.charge(|| std::thread::sleep(wait));
                // What the wait left may be too short for an answer; the 429 that made the
                // wait (the tries themselves can draw one) keeps that from being an outage.
                self.send(out).map_err(|e| match e {
                    ApiError::Unavailable(why) => ApiError::Failed(format!(
                        "{why}, after waiting out a 429 (rate limited, which the tries \
                         themselves can cause)"
                    )),
                    other => other,
                })
            }
            _ => Ok(ans),
        }
    }

    /// Sends a request (a harmless one may go twice: `Transport::exchange`).
    fn send(&mut self, out: &Outgoing) -> Result<Answer, ApiError> {
        let budget = self.deadline.budget();
        let Some(left) = self.deadline.remaining() else {
            return Err(timed_out_error(budget));
        };
        self.requests += 1;
        let http = &self.http;
        self.deadline
            .charge(|| http.exchange(out, left, budget))
            .map_err(|f| f.error)
    }

    /// GET a factor.
    pub fn get_factor(&mut self, factor: &str) -> Result<Factor, ApiError> {
        let body = self.call(Method::GET, &factor_path(factor), None, true)?;
        decode(&body)
    }

    /// Factors whose external user ID is `external_id` (RSQL search), first page of up to
    /// `SEARCH_PAGE`. The value is quoted as RSQL wants and the whole query percent-encoded,
    /// so no name can change the query; tru.ID may still read `*` as a wildcard, so callers
    /// keep only exact matches.
    pub fn search_factors(&mut self, external_id: &str) -> Result<Vec<Factor>, ApiError> {
        if external_id.is_empty()
            || external_id.len() > 512
            || external_id.chars().any(char::is_control)
        {
            return Err(ApiError::Refused(
                "an external user ID to search for must be 1 to 512 bytes without control characters"
                    .into(),
            ));
        }
        let path = format!(
            "/authenticator/v0.1/factors?search={}&page=1&size={SEARCH_PAGE}",
            percent_encode(&rsql_equals("external_user_id", external_id))
        );
        let body = self.call(Method::GET, &path, None, true)?;
        let list: FactorList = decode(&body)?;
        Ok(list.factors().to_vec())
    }

    /// Creates a factor (201 PENDING).
    pub fn create_factor(
        &mut self,
        phone: &str,
        external_user_id: &str,
    ) -> Result<Factor, ApiError> {
        let body = serde_json::json!({"phone_number": phone, "external_user_id": external_user_id});
        let b = self.post_json("/authenticator/v0.1/factors", &body, false)?;
        decode(&b)
    }

    /// Sends a JSON Patch to a factor (activate with a code, deactivate).
    pub fn patch_factor(
        &mut self,
        factor: &str,
        patch: serde_json::Value,
    ) -> Result<Factor, ApiError> {
        let b = self.call(
            Method::PATCH,
            &factor_path(factor),
            Some((JSON_PATCH, patch.to_string().into_bytes())),
            false,
        )?;
        decode(&b)
    }

    /// Deactivates a factor and renames its external user ID (which tru.ID holds unique), so
    /// that the ID may be enrolled again; the factor as tru.ID left it.
    pub fn retire_factor(&mut self, factor: &str) -> Result<Factor, ApiError> {
        let renamed = format!("disabled-{}", crate::text::random_hex(8));
        let patch = serde_json::json!([
            { "op": "replace", "path": "/status", "value": "INACTIVE" },
            { "op": "replace", "path": "/external_user_id", "value": renamed },
        ]);
        self.patch_factor(factor, patch)
    }

    /// GET or PATCH any JSON path (the console API of `truid-pam project`).
    pub fn json(
        &mut self,
        method: Method,
        path: &str,
        patch: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ApiError> {
        let harmless = method == Method::GET;
        let body = patch.map(|p| (JSON_PATCH, p.to_string().into_bytes()));
        let b = self.call(method, path, body, harmless)?;
        decode(&b)
    }
}

impl Client {
    fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
        twice_is_harmless: bool,
    ) -> Result<Vec<u8>, ApiError> {
        self.call(
            Method::POST,
            path,
            Some(("application/json", body.to_string().into_bytes())),
            twice_is_harmless,
        )
    }

    /// Creates a challenge (code or push, as the body says) and returns its ID. Only a code's
    /// challenge may be created twice: a second one is never used, where a second push would
    /// ask the phone twice.
    fn post_challenge(
        &mut self,
        factor: &FactorId,
        body: &serde_json::Value,
        twice_is_harmless: bool,
    ) -> Result<String, ApiError> {
        let path = format!("{}/challenges", factor_path(factor.as_str()));
        checked_challenge_id(decode(&self.post_json(&path, body, twice_is_harmless)?)?)
    }
}

impl Authenticator for Client {
    fn create_challenge(
        &mut self,
        factor: &FactorId,
        reference_id: &str,
    ) -> Result<String, ApiError> {
        self.post_challenge(
            factor,
            &serde_json::json!({ "reference_id": reference_id }),
            true,
        )
    }

    fn verify(
        &mut self,
        factor: &FactorId,
        challenge_id: &str,
        code: &Secret,
    ) -> Result<ChallengeStatus, ApiError> {
        let patch = zeroize::Zeroizing::new(
            serde_json::json!([{ "op": "add", "path": "/code", "value": code.expose() }])
                .to_string(),
        );
        let b = self.call(
            Method::PATCH,
            &challenge_path(factor, challenge_id),
            Some((JSON_PATCH, patch.as_bytes().to_vec())),
            false,
        )?;
        status_of(&b, challenge_id)
    }

    fn factor_kind(&mut self, factor: &FactorId) -> Result<FactorKind, ApiError> {
        Ok(self.get_factor(factor.as_str())?.kind())
    }

    fn start_push(
        &mut self,
        factor: &FactorId,
        reference_id: &str,
        phone: &str,
        message: Option<&str>,
    ) -> Result<String, ApiError> {
        let body = serde_json::json!({ "phone_number": phone });
        let check: PhoneCheck =
            decode(&self.post_json("/phone_check/v0.2/checks", &body, false)?)?;
        let mut body = serde_json::json!({
            "reference_id": reference_id,
            "check_id": check.check_id,
            "check_url": check.links.check_url.href,
            "message": message,
        });
        if message.is_none() {
            // Absent, not null: tru.ID then shows the project's challenge_default_message.
            if let Some(b) = body.as_object_mut() {
                b.remove("message");
            }
        }
        self.post_challenge(factor, &body, false)
    }

    fn challenge_status(
        &mut self,
        factor: &FactorId,
        challenge_id: &str,
    ) -> Result<ChallengeStatus, ApiError> {
        let b = self.call(
            Method::GET,
            &challenge_path(factor, challenge_id),
            None,
            true,
        )?;
        status_of(&b, challenge_id)
    }

    fn pause(&mut self, wait: Duration) {
        // The person answering on the phone: not charged to the API deadline, bounded by
        // push_timeout in the flow.
        std::thread::sleep(wait);
    }

    fn new_factor(&mut self, phone: &str, external_id: &str) -> Result<NewFactor, ApiError> {
        let f = self.create_factor(phone, external_id)?;
        let id = FactorId::parse(&f.factor_id)
            .ok_or_else(|| ApiError::Refused("tru.ID gave a malformed factor ID".into()))?;
        let uri = f.url.ok_or_else(|| {
            ApiError::Refused(format!("tru.ID gave factor {id} without an otpauth URI"))
        })?;
        Ok(NewFactor { id, uri })
    }

    fn activate(&mut self, factor: &FactorId, code: &Secret) -> Result<bool, ApiError> {
        let patch = serde_json::json!([{ "op": "add", "path": "/code", "value": code.expose() }]);
        Ok(self.patch_factor(factor.as_str(), patch)?.status == "ACTIVE")
    }

    fn factor_active(&mut self, factor: &FactorId) -> Result<bool, ApiError> {
        Ok(self.get_factor(factor.as_str())?.status == "ACTIVE")
    }

    fn claim_external_id(&mut self, external_id: &str) -> Result<bool, ApiError> {
        let mut active = false;
        // The search may match more than the exact ID (RSQL wildcards): only exact ones count.
        for f in self.search_factors(external_id)? {
            if f.external_user_id != external_id {
                continue;
            }
            if f.status == "ACTIVE" {
                active = true;
            } else {
                self.retire_factor(&f.factor_id)?;
            }
        }
        Ok(active)
    }

    fn find_factor(&mut self, external_id: &str) -> Result<Option<FactorId>, ApiError> {
        let factors = self.search_factors(external_id)?;
        let found = factors
            .iter()
            .filter(|f| f.status == "ACTIVE" && f.external_user_id == external_id)
            .find_map(|f| FactorId::parse(&f.factor_id));
        // A full page without the exact match (a name with `*` that tru.ID read as a wildcard)
        // proves nothing: the factor may be on a later page. "Not enrolled" could stand an
        // enrolled user aside under `ignore`, so this denies.
        if found.is_none() && factors.len() >= SEARCH_PAGE {
            return Err(ApiError::Refused(format!(
                "the search for \"{}\" gave a full page of other factors; put the user in [users]",
                crate::text::sanitize(external_id, 64)
            )));
        }
        Ok(found)
    }
}

/// A bearer token and when it runs out (as far as tru.ID's `expires_in` said).
#[derive(Clone)]
pub struct HeldToken {
    value: Secret,
    until: Instant,
    /// What was left of it when this process got it.
    lifetime: Duration,
}

impl HeldToken {
    fn new(value: Secret, left: Duration) -> HeldToken {
        HeldToken {
            value,
            until: Instant::now() + left,
            lifetime: left,
        }
    }

    /// What is left of its lifetime.
    pub fn left(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Whether a login may still start on it: more is left than a minute (as in the token
    /// cache), or than a quarter of its lifetime for one shorter than four minutes.
    pub fn usable(&self) -> bool {
        self.left() > self.margin()
    }

    /// Under this much left, a token is no longer taken.
    pub fn margin(&self) -> Duration {
        (self.lifetime / 4).min(Duration::from_secs(REFRESH_MARGIN_SECS))
    }

    /// Whether both are the same token (got at the same moment).
    pub fn same(&self, other: &HeldToken) -> bool {
        self.until == other.until
    }
}

/// The longest lifetime believed (as the cache does): an absurd `expires_in` must not
/// overflow an `Instant`.
const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;

/// Factors asked for per search. An external user ID is unique at tru.ID, so an exact search
/// finds at most one; a page this small also stays far below the answer size limit when a
/// wildcard matches many.
const SEARCH_PAGE: usize = 10;

/// `field=="value"`, with `"` and `\` escaped by a backslash as RSQL's quoted arguments want.
fn rsql_equals(field: &str, value: &str) -> String {
    let mut out = format!("{field}==\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Every byte but RFC 3986's unreserved ones as `%XX` (a space too: never `+`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A challenge ID goes into the next request's path: only a plain identifier will do.
fn checked_challenge_id(c: Challenge) -> Result<String, ApiError> {
    let usable = !c.challenge_id.is_empty()
        && c.challenge_id.len() <= 128
        && c.challenge_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if usable {
        Ok(c.challenge_id)
    } else {
        Err(ApiError::Failed(
            "challenge answer has no usable challenge_id".into(),
        ))
    }
}

/// The status of the challenge an answer describes, if it is the one asked about.
fn status_of(body: &[u8], challenge_id: &str) -> Result<ChallengeStatus, ApiError> {
    let c: Challenge = decode(body)?;
    if c.challenge_id != challenge_id {
        return Err(ApiError::Failed("answer is about another challenge".into()));
    }
    Ok(c.status)
}

fn challenge_path(factor: &FactorId, challenge_id: &str) -> String {
    format!("{}/challenges/{challenge_id}", factor_path(factor.as_str()))
}

fn factor_path(factor: &str) -> String {
    format!("/authenticator/v0.1/factors/{factor}")
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::Failed(format!("unreadable answer from tru.ID ({e})")))
}

fn status_text(ans: &Answer) -> String {
    let problem: Problem = serde_json::from_slice(&ans.body).unwrap_or_default();
    let summary = problem.summary();
    if summary.is_empty() {
        format!("HTTP {}", ans.status)
    } else {
        format!("HTTP {}: {summary}", ans.status)
    }
}

/// An answer that is neither a success nor a refusal. Only 408 and 5xx say tru.ID cannot
/// serve; 429 is caused by the tries themselves (an attacker's wrong codes provoke it), and
/// any other status is no evidence of an outage: both deny under every failmode.
fn status_error(ans: &Answer) -> ApiError {
    match ans.status {
        408 | 500..=599 => ApiError::Unavailable(status_text(ans)),
        429 => ApiError::Failed(format!(
            "{}: rate limited, which the tries themselves can cause",
            status_text(ans)
        )),
        _ => ApiError::Failed(status_text(ans)),
    }
}

/// `Authorization: Basic` for the token endpoint; the text made on the way is zeroised.
fn basic(id: &str, secret: &Secret) -> Result<HeaderValue, ApiError> {
    let pair = Zeroizing::new(format!("{id}:{}", secret.expose()));
    let value = Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    ));
    sensitive(&value, "[api] client_id and client_secret")
}

fn bearer(token: &Secret) -> Result<HeaderValue, ApiError> {
    let value = Zeroizing::new(format!("Bearer {}", token.expose()));
    sensitive(&value, "the access token tru.ID issued")
}

/// A header value no debug output shows. Text a header cannot carry is refused, never sent.
fn sensitive(value: &str, what: &str) -> Result<HeaderValue, ApiError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| ApiError::Failed(format!("{what} cannot go in an HTTP header")))?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_values_are_quoted_and_encoded() {
        assert_eq!(
            rsql_equals("external_user_id", r#"a"||external_user_id=="b"#),
            r#"external_user_id=="a\"||external_user_id==\"b""#
        );
        assert_eq!(
            rsql_equals("external_user_id", r"AD\bob"),
            r#"external_user_id=="AD\\bob""#
        );
        let q = percent_encode(&rsql_equals("external_user_id", "a,b;c&size=1 d+é"));
        assert_eq!(
            q,
            "external_user_id%3D%3D%22a%2Cb%3Bc%26size%3D1%20d%2B%C3%A9%22"
        );
        assert!(q
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
    }
}
