//! The daemon's serving (the socket, threads and signals are `truid-pam agent`'s): the projects
//! whose connections and tokens it keeps, and one connection of root answered.

use super::protocol::{
    line_of, peer_uid, read_line, read_request, Answer, Reply, Request, WireApi,
};
use super::upstream::reply_on;
use crate::api::{Client, HeldToken, Scope, Transport};
use crate::config::ApiConfig;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Time the agent gives a root client to send its request once connected.
const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// Projects (API settings) the agent keeps connections for; the oldest goes first.
const MAX_PROJECTS: usize = 8;
/// Idle connections kept per project: at least the most workers an agent runs (32 by default),
/// so a burst of concurrent logins does not leave connections to be closed and made again.
const IDLE_PER_PROJECT: usize = 64;

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

    /// Runs `f` with a client on the project's kept connections and token (the agent's
    /// services for unprivileged callers, whose calls the flow makes itself).
    pub fn with_client<T>(
        &self,
        api: &ApiConfig,
        f: impl FnOnce(&mut Client) -> T,
    ) -> Result<T, String> {
        let project = self.get(WireApi::new(api), api)?;
        let mut client = project.client(api);
        let out = f(&mut client);
        if project.keep_token(client.held_token()) {
            let _looked_at = self.known.lock();
            self.tokens_changed.notify_all();
        }
        Ok(out)
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
    // Zeroised: a new factor's reply holds its otpauth secret.
    let text = line_of(&reply).ok_or("the answer could not be written")?;
    stream
        .set_write_timeout(Some(REQUEST_WAIT))
        .and_then(|()| stream.write_all(&text))
        .map_err(|e| format!("writing an answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::tests::api;
    use crate::agent::protocol::{Call, PROTOCOL};
    use crate::config::Roots;
    use crate::secret::Secret;
    use std::path::PathBuf;

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
    fn other_versions_hidden_ca_files_and_malformed_ids_are_sent_nowhere() {
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
