//! The TOML configuration: read strictly, checked whole, turned into typed values.
//!
//! Every error names the file and the key and says what to do, and every error denies the
//! login whatever `failmode` says: a typo must never open the door.

use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/security/pam_truid.toml";
pub const DEFAULT_TOKEN_CACHE: &str = "/run/pam_truid";
/// Where `truid-pam agent` listens by default (the folder tmpfiles.d makes at boot).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/pam_truid/agent.sock";
/// Where the agent serves unprivileged callers, each for their own account only (screen
/// lockers, `truid-pam enroll` run by a user): a folder anyone may enter, unlike the token's.
pub const DEFAULT_PUBLIC_SOCKET: &str = "/run/pam_truid-public/agent.sock";
/// Far above any real configuration (a thousand users is ~60 KB); refuses a file that would
/// make the module read megabytes inside sshd.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
const MAX_SECRET_BYTES: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problem: String,
}

impl ConfigError {
    fn new(path: &Path, problem: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// tru.ID unreachable: refuse the login.
    Secure,
    /// tru.ID unreachable: let the login go on, with a loud warning in the log.
    Safe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unenrolled {
    Deny,
    Ignore,
    /// A user without a factor enrolls inside the login (`[enroll] groups` limit who), once
    /// the stack's first factor has passed.
    Enroll,
}

/// Which trust anchors, besides `ca_file`, verify tru.ID's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Roots {
    /// The distribution's CA bundle (Debian, RHEL and SUSE paths).
    System,
    /// The Mozilla set compiled into the module: no file to read at login.
    Builtin,
    /// Only `ca_file`.
    None,
}

/// How the person proves they hold their phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Push for PUSH factors (Enter at the prompt), a code otherwise or when typed.
    Auto,
    /// Codes only.
    Totp,
    /// Push only, for PUSH factors.
    Push,
}

/// Whose factor `su` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuFactor {
    /// The user being switched to (what PAM names as the user).
    Target,
    /// The user who runs `su` (PAM_RUSER), as pam_duo does: the person at the keyboard.
    Caller,
}

/// When a recovery code may stand in for the tru.ID code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accept {
    /// Only when tru.ID cannot be reached (checked right then), before failmode decides.
    Unavailable,
    /// Also with tru.ID up: for a lost phone.
    Always,
    /// Never: a recovery code is a wrong try.
    Never,
}

#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    pub file: PathBuf,
    pub accept: Accept,
}

/// `[enroll]`: who may enroll without the administrator.
#[derive(Debug, Clone, Default)]
pub struct EnrollConfig {
    /// `truid-pam enroll` run by a user for themselves, through the agent.
    pub self_service: bool,
    /// Only members may enroll themselves (self-service and `unenrolled = "enroll"`); empty:
    /// everyone.
    pub groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub api: ApiConfig,
    pub login: LoginConfig,
    pub recovery: RecoveryConfig,
    pub enroll: EnrollConfig,
    pub users: BTreeMap<String, FactorId>,
    /// E.164 numbers (digits only) for push: tru.ID's factor does not return the number.
    pub phones: BTreeMap<String, String>,
    pub console: Option<ConsoleConfig>,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Without a trailing slash.
    pub base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub ca_file: Option<PathBuf>,
    pub roots: Roots,
    pub timeout: Duration,
    pub proxy: Option<String>,
    /// Folder of the token cache; `None` turns the cache off.
    pub token_cache: Option<PathBuf>,
    /// The local agent's socket, asked first when something listens there; `None`: never.
    pub agent: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct LoginConfig {
    pub failmode: FailMode,
    /// Why a local user could hold the port tru.ID is reached through (a loopback `base_url` or
    /// `proxy` on a port anyone may bind), if one could: `failmode = "safe"` then acts as
    /// `secure`, since that user could make every call fail at will.
    pub endpoint_bindable: Option<String>,
    pub unenrolled: Unenrolled,
    pub tries: u32,
    pub prompt: String,
    pub lookup: bool,
    /// Put before the user name to make the external user ID that `lookup` searches for and
    /// `truid-pam enroll` writes (e.g. "unix:"); "" by default.
    pub lookup_prefix: String,
    pub groups: Vec<String>,
    /// Never asked (PAM_IGNORE), matched on the name NSS gives; checked before `groups`.
    pub exempt_users: Vec<String>,
    /// Members are never asked; a group NSS cannot answer for exempts no one.
    pub exempt_groups: Vec<String>,
    /// One prompt for the password and the code (`combined_prompt`); the password part goes to
    /// the stack as PAM_AUTHTOK. Also the module argument `combined`.
    pub combined: bool,
    pub combined_prompt: String,
    /// How many trailing digits of a one-prompt answer are the code.
    pub code_digits: usize,
    pub su: SuFactor,
    pub method: Method,
    pub push_timeout: Duration,
    /// Shown on the phone; `{service}`, `{host}`, `{user}`, `{rhost}` filled in. Empty: tru.ID's
    /// `challenge_default_message`.
    pub push_message: String,
    pub push_prompt: String,
}

#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub workspace_id: String,
    pub project_id: String,
    pub client_id: String,
    pub client_secret: Secret,
}

/// A tru.ID factor ID: a UUID, checked when the config is read (and when it is read off the
/// agent's socket).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FactorId(String);

impl TryFrom<String> for FactorId {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        FactorId::parse(&s).ok_or("not a factor ID")
    }
}

impl From<FactorId> for String {
    fn from(f: FactorId) -> String {
        f.0
    }
}

impl FactorId {
    pub fn parse(s: &str) -> Option<FactorId> {
        let b = s.as_bytes();
        let shape_ok = b.len() == 36
            && b.iter().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => c.is_ascii_hexdigit(),
            });
        shape_ok.then(|| FactorId(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FactorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    api: RawApi,
    #[serde(default)]
    login: RawLogin,
    #[serde(default)]
    recovery: RawRecovery,
    #[serde(default)]
    enroll: RawEnroll,
    #[serde(default)]
    users: BTreeMap<String, String>,
    #[serde(default)]
    phones: BTreeMap<String, String>,
    console: Option<RawConsole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    region: Option<String>,
    base_url: Option<String>,
    client_id: String,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    roots: Option<Roots>,
    timeout: Option<u64>,
    proxy: Option<String>,
    token_cache: Option<String>,
    agent: Option<String>,
    trust_loopback_port: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogin {
    failmode: Option<FailMode>,
    unenrolled: Option<Unenrolled>,
    tries: Option<u32>,
    prompt: Option<String>,
    lookup: Option<bool>,
    lookup_prefix: Option<String>,
    groups: Option<Vec<String>>,
    exempt_users: Option<Vec<String>>,
    exempt_groups: Option<Vec<String>>,
    combined: Option<bool>,
    combined_prompt: Option<String>,
    code_digits: Option<usize>,
    su: Option<SuFactor>,
    method: Option<Method>,
    push_timeout: Option<u64>,
    push_message: Option<String>,
    push_prompt: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRecovery {
    file: Option<PathBuf>,
    accept: Option<Accept>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnroll {
    #[serde(rename = "self")]
    self_service: Option<bool>,
    groups: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    workspace_id: String,
    project_id: String,
    client_id: String,
    client_secret: String,
}

/// What a file holds, for the permission rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holds {
    /// Settings only: must not be writable by group or others.
    Settings,
    /// A secret: must not be readable or writable by group or others either.
    Secret,
}

impl Config {
    /// Reads and checks the file: regular, not a symlink, owned by root, not writable by group
    /// or others (nor readable, when it holds the client secret), at most 1 MiB, UTF-8.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_checked(path, Holds::Settings, MAX_CONFIG_BYTES)?;
        let cfg = Config::parse(path, &text)?;
        Ok(cfg)
    }

    /// Parses configuration text; `path` names the file in errors and anchors the checks of
    /// files it refers to.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::new(path, toml_problem(text, &e)))?;
        let err = |key: &str, problem: String| ConfigError::new(path, format!("{key}: {problem}"));

        let api = raw.api;
        let base_url = match (&api.base_url, &api.region) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "[api] region",
                    "set either region or base_url, not both".into(),
                ))
            }
            (Some(url), None) => check_base_url(url).map_err(|p| err("[api] base_url", p))?,
            (None, Some(r)) => match r.as_str() {
                "eu" | "in" | "us" => format!("https://{r}.api.tru.id"),
                other => {
                    return Err(err(
                        "[api] region",
                        format!(
                            "\"{}\" is not a tru.ID region; use \"eu\", \"in\" or \"us\"",
                            crate::text::sanitize(other, 32)
                        ),
                    ))
                }
            },
            (None, None) => "https://eu.api.tru.id".to_string(),
        };
        check_token_text(&api.client_id).map_err(|p| err("[api] client_id", p))?;
        let client_secret = match (api.client_secret, &api.client_secret_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "[api] client_secret",
                    "set either client_secret or client_secret_file, not both".into(),
                ))
            }
            (Some(s), None) => {
                // The secret sits in this file, so this file must be as private as a secret.
                check_mode_of(path, Holds::Secret)?;
                Secret::new(s)
            }
            (None, Some(file)) => {
                let text = read_checked(file, Holds::Secret, MAX_SECRET_BYTES)?;
                Secret::new(text.trim_end_matches(['\n', '\r']).to_string())
            }
            (None, None) => {
                return Err(err(
                    "[api] client_secret",
                    "missing: set client_secret or client_secret_file".into(),
                ))
            }
        };
        check_token_text(client_secret.expose()).map_err(|p| err("[api] client_secret", p))?;
        let timeout = match api.timeout {
            None => 10,
            Some(t @ 1..=120) => t,
            Some(t) => {
                return Err(err(
                    "[api] timeout",
                    format!("{t} is out of range; use 1 to 120 seconds"),
                ))
            }
        };
        let proxy = match api.proxy {
            None => None,
            Some(p) => Some(check_proxy(&p).map_err(|e| err("[api] proxy", e))?),
        };
        if proxy.is_some() && base_url.starts_with("http://") {
            return Err(err(
                "[api] proxy",
                "a proxy would see the plain http:// requests, client secret and codes included; \
                 use an https:// base_url, or no proxy"
                    .into(),
            ));
        }
        let endpoint_bindable = if api.trust_loopback_port == Some(true) {
            None
        } else {
            [Some(base_url.as_str()), proxy.as_deref()]
                .into_iter()
                .flatten()
                .find_map(bindable_loopback)
        };
        let token_cache = match api.token_cache.as_deref() {
            None => Some(PathBuf::from(DEFAULT_TOKEN_CACHE)),
            Some("") => None,
            Some(p) if p.starts_with('/') => Some(PathBuf::from(p)),
            Some(_) => {
                return Err(err(
                    "[api] token_cache",
                    "must be an absolute folder path, or \"\" to turn the cache off".into(),
                ))
            }
        };
        let agent = match api.agent.as_deref() {
            None => Some(PathBuf::from(DEFAULT_AGENT_SOCKET)),
            Some("") => None,
            Some(p) if p.starts_with('/') => Some(PathBuf::from(p)),
            Some(_) => return Err(err(
                "[api] agent",
                "must be the absolute path of the agent's socket, or \"\" to never use an agent"
                    .into(),
            )),
        };
        if let Some(ca) = &api.ca_file {
            if !ca.is_absolute() {
                return Err(err("[api] ca_file", "must be an absolute path".into()));
            }
            // It decides whom the module trusts, so it gets this file's own checks (TLS setup
            // reads it under them again).
            open_checked(ca, Holds::Settings).map_err(|e| err("[api] ca_file", e.to_string()))?;
        }
        let roots = api.roots.unwrap_or(Roots::System);
        if roots == Roots::None && api.ca_file.is_none() {
            return Err(err(
                "[api] roots",
                "\"none\" needs ca_file: nothing would be trusted".into(),
            ));
        }

        let login = raw.login;
        let tries = match login.tries {
            None => 3,
            Some(t @ 1..=10) => t,
            Some(t) => {
                return Err(err(
                    "[login] tries",
                    format!("{t} is out of range; use 1 to 10"),
                ))
            }
        };
        let text = |key: &str, value: Option<String>, default: &str, empty_ok: bool| {
            let v = value.unwrap_or_else(|| default.to_string());
            if (!empty_ok && v.trim().is_empty())
                || v.chars().count() > 200
                || v.chars().any(char::is_control)
            {
                return Err(err(
                    &format!("[login] {key}"),
                    "must be 1 to 200 printable characters".into(),
                ));
            }
            Ok(v)
        };
        let prompt = text("prompt", login.prompt, "tru.ID code: ", false)?;
        let push_prompt = text(
            "push_prompt",
            login.push_prompt,
            "Press Enter to approve on your phone, or type a tru.ID code: ",
            false,
        )?;
        let push_message = text(
            "push_message",
            login.push_message,
            "{service} login as {user} on {host}",
            true,
        )?;
        let push_timeout = match login.push_timeout {
            None => 60,
            Some(t @ 5..=300) => t,
            Some(t) => {
                return Err(err(
                    "[login] push_timeout",
                    format!("{t} is out of range; use 5 to 300 seconds"),
                ))
            }
        };
        let lookup_prefix = login.lookup_prefix.unwrap_or_default();
        if lookup_prefix.len() > 64 || lookup_prefix.chars().any(char::is_control) {
            return Err(err(
                "[login] lookup_prefix",
                "must be at most 64 bytes without control characters, e.g. \"unix:\"".into(),
            ));
        }
        let groups = login.groups.unwrap_or_default();
        let exempt_users = login.exempt_users.unwrap_or_default();
        let exempt_groups = login.exempt_groups.unwrap_or_default();
        for (key, names, what) in [
            ("groups", &groups, "group"),
            ("exempt_users", &exempt_users, "user"),
            ("exempt_groups", &exempt_groups, "group"),
        ] {
            if let Some(bad) = names.iter().find(|g| !is_valid_name(g)) {
                return Err(err(
                    &format!("[login] {key}"),
                    format!(
                        "\"{}\" is not a {what} name",
                        crate::text::sanitize(bad, 64)
                    ),
                ));
            }
        }
        // Exemptions win over `groups`; a group in both says two opposite things.
        if let Some(both) = exempt_groups.iter().find(|g| groups.contains(g)) {
            return Err(err(
                "[login] exempt_groups",
                format!(
                    "\"{}\" is also in [login] groups: its members would be asked and exempt at once; remove it from one of the two",
                    crate::text::sanitize(both, 64)
                ),
            ));
        }
        let combined_prompt = text(
            "combined_prompt",
            login.combined_prompt,
            "Password and tru.ID code: ",
            false,
        )?;
        let code_digits = match login.code_digits {
            None => 6,
            Some(d @ 6..=8) => d,
            Some(d) => {
                return Err(err(
                    "[login] code_digits",
                    format!("{d} is out of range; use 6 to 8"),
                ))
            }
        };
        let enroll = EnrollConfig {
            self_service: raw.enroll.self_service.unwrap_or(false),
            groups: raw.enroll.groups.unwrap_or_default(),
        };
        if let Some(bad) = enroll.groups.iter().find(|g| !is_valid_name(g)) {
            return Err(err(
                "[enroll] groups",
                format!("\"{}\" is not a group name", crate::text::sanitize(bad, 64)),
            ));
        }
        // Enrolling at the prompt before the password would let anyone who knows a name bind
        // their own phone to it.
        if login.unenrolled == Some(Unenrolled::Enroll) && login.combined == Some(true) {
            return Err(err(
                "[login] unenrolled",
                "\"enroll\" cannot go with combined = true: one prompt comes before the password is checked, and enrolment must come after it; use unenrolled = \"deny\" there".into(),
            ));
        }
        let recovery = RecoveryConfig {
            file: match raw.recovery.file {
                None => PathBuf::from(crate::recovery::DEFAULT_FILE),
                Some(f) if f.is_absolute() && f.file_name().is_some() => f,
                Some(_) => {
                    return Err(err(
                        "[recovery] file",
                        "must be an absolute file path".into(),
                    ))
                }
            },
            accept: raw.recovery.accept.unwrap_or(Accept::Unavailable),
        };

        let mut users = BTreeMap::new();
        for (user, id) in raw.users {
            if !is_valid_name(&user) {
                return Err(err(
                    "[users]",
                    format!(
                        "\"{}\" is not a user name",
                        crate::text::sanitize(&user, 64)
                    ),
                ));
            }
            let Some(factor) = FactorId::parse(&id) else {
                return Err(err(
                    &format!("[users] {}", crate::text::sanitize(&user, 64)),
                    format!(
                        "\"{}\" is not a tru.ID factor ID (a UUID such as 5995afaf-f5d1-47ab-b586-50ad46904eec)",
                        crate::text::sanitize(&id, 64)
                    ),
                ));
            };
            users.insert(user, factor);
        }

        let mut phones = BTreeMap::new();
        for (user, phone) in raw.phones {
            if !is_valid_name(&user) {
                return Err(err(
                    "[phones]",
                    format!(
                        "\"{}\" is not a user name",
                        crate::text::sanitize(&user, 64)
                    ),
                ));
            }
            let Some(number) = normalize_phone(&phone) else {
                return Err(err(
                    &format!("[phones] {}", crate::text::sanitize(&user, 64)),
                    "is not an E.164 phone number such as \"+447700900000\"".into(),
                ));
            };
            phones.insert(user, number);
        }

        let console = match raw.console {
            None => None,
            Some(c) => {
                check_mode_of(path, Holds::Secret)?;
                for (key, v) in [
                    ("workspace_id", &c.workspace_id),
                    ("project_id", &c.project_id),
                    ("client_id", &c.client_id),
                    ("client_secret", &c.client_secret),
                ] {
                    check_token_text(v).map_err(|p| err(&format!("[console] {key}"), p))?;
                }
                Some(ConsoleConfig {
                    workspace_id: c.workspace_id,
                    project_id: c.project_id,
                    client_id: c.client_id,
                    client_secret: Secret::new(c.client_secret),
                })
            }
        };

        Ok(Config {
            path: path.to_path_buf(),
            api: ApiConfig {
                base_url,
                client_id: api.client_id,
                client_secret,
                ca_file: api.ca_file,
                roots,
                timeout: Duration::from_secs(timeout),
                proxy,
                token_cache,
                agent,
            },
            login: LoginConfig {
                failmode: login.failmode.unwrap_or(FailMode::Secure),
                endpoint_bindable,
                unenrolled: login.unenrolled.unwrap_or(Unenrolled::Deny),
                tries,
                prompt,
                lookup: login.lookup.unwrap_or(false),
                lookup_prefix,
                groups,
                exempt_users,
                exempt_groups,
                combined: login.combined.unwrap_or(false),
                combined_prompt,
                code_digits,
                su: login.su.unwrap_or(SuFactor::Target),
                method: login.method.unwrap_or(Method::Auto),
                push_timeout: Duration::from_secs(push_timeout),
                push_message,
                push_prompt,
            },
            recovery,
            enroll,
            users,
            phones,
            console,
        })
    }
}

/// The file's text, read with the same checks as `Config::load` (for the CLI's edits).
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    read_checked(path, Holds::Settings, MAX_CONFIG_BYTES)
}

/// An E.164 phone number as tru.ID takes it: digits only (a leading `+` is dropped),
/// 8 to 15 of them, not starting with 0.
pub fn normalize_phone(phone: &str) -> Option<String> {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    ok.then(|| digits.to_string())
}

/// Longest user or group name taken: far above what NSS modules give (sssd's
/// `user@a.long.ad.domain`), short enough to keep a log line bounded.
pub const MAX_NAME_BYTES: usize = 256;

/// A user or group name as NSS may give it: any UTF-8 text without control characters (so no
/// NUL, newline or escape), 1 to 256 bytes. SSSD's `bob@ad.example.com`, winbind's `AD\bob` and
/// names with spaces are names; whether the account exists is for NSS to say. Such a name is
/// escaped wherever it is logged (`text::sanitize`) and quoted in the one query it goes into.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.chars().any(char::is_control)
}

/// A TOML error in words, with where it is (line, column, table and key), and never the
/// file's text: toml's own rendering quotes the offending line, and that line may hold
/// `client_secret`. Quoted words of the message, the key and the table are shown only when
/// they look like a setting's word (a secret pasted alone on a line reads as a key, and serde
/// quotes values it cannot take).
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    toml_error_in_words(text, e.message(), e.span())
}

/// `toml_problem` for any TOML parser's message and span (the CLI's toml_edit too).
pub fn toml_error_in_words(
    text: &str,
    message: &str,
    span: Option<std::ops::Range<usize>>,
) -> String {
    // Word by word, never by pairing quotes (a quote inside a value would throw a pairing off):
    // a token that stands in the file is shown only when it is a setting's word; what is not
    // in the file is the parser's own wording.
    let mut said = String::new();
    let mut token = String::new();
    let flush = |token: &mut String, said: &mut String| {
        let tiny = token.len() == 1 && token.bytes().all(|b| b.is_ascii_punctuation())
            || (token.len() <= 4 && token.bytes().all(|b| b.is_ascii_digit()));
        let hide =
            !token.is_empty() && text.contains(token.as_str()) && !setting_word(token) && !tiny;
        said.push_str(if hide { "(value not shown)" } else { token });
        token.clear();
    };
    for c in one_line(message).chars() {
        if c.is_whitespace() || matches!(c, '`' | '"' | '\'' | ',' | '(' | ')' | ';') {
            flush(&mut token, &mut said);
            said.push(c);
        } else {
            token.push(c);
        }
    }
    flush(&mut token, &mut said);
    let shown = |name: &str| {
        if setting_word(name) {
            name.to_string()
        } else {
            "(a name not shown)".to_string()
        }
    };
    let at = span.map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        // The key of that line and the table above it: names, never values.
        let table = before
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim())
            .map(|t| format!("[{}] ", shown(t)));
        let here = text.lines().nth(line - 1).unwrap_or("").trim();
        let key = here
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        let place = match key {
            Some(k) => format!(" ({}{})", table.unwrap_or_default(), shown(k)),
            // A table header is a name too.
            None if here.starts_with('[') && !here.contains('=') => format!(
                " (table [{}])",
                shown(here.trim_matches(|c| c == '[' || c == ']').trim())
            ),
            None => String::new(),
        };
        format!("line {line}, column {column}{place}: ")
    });
    format!(
        "{}{said} (a TOML error; see pam_truid.toml(5) for the keys)",
        at.unwrap_or_default()
    )
}

/// A word of the config's own vocabulary: a key, a table, an enum value (`client_secret`,
/// `login`, `secure`), or a short plain user name. Nothing random-looking passes.
fn setting_word(w: &str) -> bool {
    !w.is_empty()
        && w.len() <= 32
        && w.bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_token_text(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("is empty".into());
    }
    if v.len() > 1024 || v.chars().any(|c| c.is_control() || c == ' ') {
        return Err("must be at most 1024 characters, without spaces or control characters".into());
    }
    Ok(())
}

/// `https://` anywhere; plain `http://` only to this machine, where nothing crosses a network.
fn check_base_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials; use client_id and client_secret".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    refuse_localhost(&parsed)?;
    match parsed.scheme() {
        "https" => {}
        // Nothing proves who answers plain http://. Only a port that only root may bind on a
        // loopback address does: on any other port, a local user who listens first (while the
        // relay restarts) is tru.ID for the module, and gets the secret and every code.
        "http" if is_loopback(&parsed) => {
            let port = parsed.port_or_known_default().unwrap_or(80);
            let unprivileged = unprivileged_port_start();
            if port >= unprivileged {
                return Err(format!(
                    "plain http:// on port {port} of a loopback address: any local user may listen \
                     there; use https://, or a port below {unprivileged} (only root may bind those)"
                ));
            }
        }
        "http" => {
            return Err(
                "plain http:// is only allowed to a loopback address (127.0.0.1, [::1]) on a port below 1024; use https://"
                    .into(),
            )
        }
        other => return Err(format!("scheme {other}:// is not supported; use https://")),
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// `localhost` names two addresses (127.0.0.1 and ::1): a relay or proxy listens on one, and a
/// local user may listen on the other, which the client may try first.
fn refuse_localhost(url: &reqwest::Url) -> Result<(), String> {
    if url.port() == Some(0) {
        return Err("port 0 is no port anything listens on".into());
    }
    // `localhost.` (the absolute name) resolves the same.
    let name = |d: &str| d.trim_end_matches('.').to_ascii_lowercase();
    match url.host() {
        Some(url::Host::Domain(d)) if name(d) == "localhost" || name(d).ends_with(".localhost") => {
            Err(
                "name the address (127.0.0.1 or [::1]) instead of localhost: it stands for both, \
                 and a local user may listen on the one your service does not"
                    .into(),
            )
        }
        _ => Ok(()),
    }
}

/// `host:port` of a loopback URL on a port any local user may bind, saying so; `None` for any
/// other URL (another host, or a port only root may bind).
fn bindable_loopback(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = match parsed.host()? {
        url::Host::Ipv4(ip) if ip.is_loopback() => ip.to_string(),
        url::Host::Ipv6(ip) if ip.is_loopback() => format!("[{ip}]"),
        _ => return None,
    };
    let port = parsed.port_or_known_default()?;
    (port >= unprivileged_port_start()).then(|| {
        format!(
            "{host}:{port} is a loopback port any local user may bind ([api] \
             trust_loopback_port = true if only your service can hold it)"
        )
    })
}

/// The first port an unprivileged user may bind (`net.ipv4.ip_unprivileged_port_start`,
/// 1024 unless changed; it covers IPv6 too).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1024)
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(_)) => false,
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn check_proxy(p: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(p).map_err(|e| format!("not a URL ({e})"))?;
    refuse_localhost(&parsed)?;
    match parsed.scheme() {
        "http" | "https" => Ok(p.to_string()),
        other => Err(format!(
            "scheme {other}:// is not supported; use http:// or https://"
        )),
    }
}

/// A file that decides whom the module trusts (`[api] ca_file`), read under the config's own
/// checks: root's, writable by root alone, no symlink, checked on the open descriptor.
pub(crate) fn read_trusted(path: &Path, max: u64) -> Result<String, ConfigError> {
    read_checked(path, Holds::Settings, max)
}

/// A file that holds secrets of the module's own (the recovery-code hashes): root's, and
/// readable by root alone.
pub(crate) fn read_private(path: &Path, max: u64) -> Result<String, ConfigError> {
    read_checked(path, Holds::Secret, max)
}

/// Opens a file the strict way (no symlink, no FIFO, root-owned, mode checked on the open
/// descriptor so nothing can be swapped in between) and returns its text.
fn read_checked(path: &Path, holds: Holds, max: u64) -> Result<String, ConfigError> {
    let (mut file, meta) = open_checked(path, holds)?;
    if meta.len() > max {
        return Err(ConfigError::new(
            path,
            format!("is {} bytes, more than the {max} allowed", meta.len()),
        ));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ConfigError::new(path, format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(ConfigError::new(
            path,
            format!("is more than the {max} bytes allowed"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        ConfigError::new(
            path,
            format!(
                "is not valid UTF-8 (byte {}); save it as UTF-8",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The open file and its metadata, once the checks on the descriptor passed.
fn open_checked(
    path: &Path,
    holds: Holds,
) -> Result<(std::fs::File, std::fs::Metadata), ConfigError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            let what = match e.raw_os_error() {
                Some(libc::ELOOP) => {
                    "is a symbolic link; point the module at the real file".to_string()
                }
                Some(libc::ENOENT) => {
                    "does not exist; create it (see pam_truid.toml(5)) or fix the path".to_string()
                }
                Some(libc::EACCES) => "cannot be read: permission denied".to_string(),
                _ => format!("cannot be opened: {e}"),
            };
            ConfigError::new(path, what)
        })?;
    let meta = file
        .metadata()
        .map_err(|e| ConfigError::new(path, format!("cannot be examined: {e}")))?;
    check_meta(path, &meta, holds)?;
    Ok((file, meta))
}

fn check_mode_of(path: &Path, holds: Holds) -> Result<(), ConfigError> {
    // Only reached for a file parsed from disk; a config parsed from text (tests, the CLI's
    // dry runs) has no file whose mode could be wrong.
    match std::fs::symlink_metadata(path) {
        Ok(meta) => check_meta(path, &meta, holds),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ConfigError::new(path, format!("cannot be examined: {e}"))),
    }
}

fn check_meta(path: &Path, meta: &std::fs::Metadata, holds: Holds) -> Result<(), ConfigError> {
    if !meta.file_type().is_file() {
        return Err(ConfigError::new(path, "is not a regular file"));
    }
    if meta.uid() != 0 {
        return Err(ConfigError::new(
            path,
            format!(
                "is owned by uid {}, not root; run: chown root: {}",
                meta.uid(),
                path.display()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(ConfigError::new(
            path,
            format!(
                "is writable by group or others (mode {mode:04o}); run: chmod go-w {}",
                path.display()
            ),
        ));
    }
    if holds == Holds::Secret && mode & 0o044 != 0 {
        return Err(ConfigError::new(
            path,
            format!(
                "holds a secret but is readable by group or others (mode {mode:04o}); run: chmod 600 {}",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[api]
base_url = "https://127.0.0.1:8443/"
client_id = "cid"
client_secret = "csecret"

[users]
alice = "5995afaf-f5d1-47ab-b586-50ad46904eec"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/nonexistent/pam_truid.toml"), text)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.api.base_url, "https://127.0.0.1:8443");
        assert_eq!(c.api.timeout, Duration::from_secs(10));
        assert_eq!(c.login.failmode, FailMode::Secure);
        assert_eq!(c.login.unenrolled, Unenrolled::Deny);
        assert_eq!(c.login.tries, 3);
        assert_eq!(c.login.prompt, "tru.ID code: ");
        assert!(c.login.exempt_users.is_empty() && c.login.exempt_groups.is_empty());
        assert!(!c.login.combined);
        assert_eq!(c.login.combined_prompt, "Password and tru.ID code: ");
        assert_eq!(c.login.code_digits, 6);
        assert_eq!(
            c.recovery.file,
            Path::new("/var/lib/pam_truid/recovery.toml")
        );
        assert_eq!(c.recovery.accept, Accept::Unavailable);
        assert_eq!(c.api.roots, Roots::System);
        assert_eq!(
            c.api.token_cache.as_deref(),
            Some(Path::new("/run/pam_truid"))
        );
        assert_eq!(
            c.api.agent.as_deref(),
            Some(Path::new("/run/pam_truid/agent.sock"))
        );
        let off = parse(&GOOD.replace(
            "client_secret = \"csecret\"",
            "client_secret = \"csecret\"\nagent = \"\"",
        ))
        .unwrap();
        assert_eq!(off.api.agent, None);
        assert_eq!(
            c.users["alice"].as_str(),
            "5995afaf-f5d1-47ab-b586-50ad46904eec"
        );
    }

    #[test]
    fn region_picks_the_host() {
        let c =
            parse("[api]\nregion = \"us\"\nclient_id = \"a\"\nclient_secret = \"b\"\n").unwrap();
        assert_eq!(c.api.base_url, "https://us.api.tru.id");
        let e = parse("[api]\nregion = \"mars\"\nclient_id = \"a\"\nclient_secret = \"b\"\n")
            .unwrap_err();
        assert!(e.problem.contains("[api] region"), "{e}");
    }

    #[test]
    fn every_bad_value_is_an_error_naming_its_key() {
        let cases: &[(&str, &str)] = &[
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\ntimeout = \"10\"\n", "timeout"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\ntimeout = 0\n", "timeout"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\ntimeot = 10\n", "timeot"),
            ("[api]\nclient_id = \"a\"\n", "client_secret"),
            ("[api]\nclient_id = 5\nclient_secret = \"b\"\n", "client_id"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\nbase_url = \"http://example.com\"\n", "base_url"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\nbase_url = \"ftp://127.0.0.1\"\n", "base_url"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\nfailmode = \"open\"\n", "failmode"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\ntries = 0\n", "tries"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\ntries = -1\n", "tries"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\nunenrolled = \"allow\"\n", "unenrolled"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\nprompt = \"\"\n", "prompt"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\nlookup = \"yes\"\n", "lookup"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[users]\nbob = \"not-a-uuid\"\n", "[users] bob"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[users]\nbob = 5\n", "bob"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[users]\nbob = \"5995afaf-f5d1-47ab-b586-50ad46904eec\"\nbob = \"5995afaf-f5d1-47ab-b586-50ad46904eed\"\n", "bob"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[extra]\nx = 1\n", "extra"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\nroots = \"none\"\n", "roots"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\ngroups = [\"ops\"]\nexempt_groups = [\"ops\"]\n", "exempt_groups"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\nexempt_users = [\"\"]\n", "exempt_users"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\nexempt_groups = \"ops\"\n", "exempt_groups"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\ncombined = 1\n", "combined"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\ncode_digits = 5\n", "code_digits"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[recovery]\naccept = \"sometimes\"\n", "accept"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[recovery]\nfile = \"codes.toml\"\n", "[recovery] file"),
            ("[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[recovery]\nfiles = \"/x\"\n", "files"),
        ];
        for (text, key) in cases {
            let e = parse(text).expect_err(text);
            assert!(
                e.to_string().contains(key),
                "error for {text:?} does not name {key}: {e}"
            );
            assert!(
                e.to_string().starts_with("/nonexistent/pam_truid.toml"),
                "{e}"
            );
        }
    }

    #[test]
    fn loopback_http_only_on_a_port_only_root_may_bind() {
        let with = |key: &str, url: &str| {
            parse(&format!(
                "[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n{key} = \"{url}\"\n"
            ))
        };
        for url in ["http://127.0.0.1:80", "http://[::1]:9", "http://127.0.0.2"] {
            with("base_url", url).unwrap();
        }
        // A local user may listen on these: refused, saying why.
        for url in ["http://127.0.0.1:8080", "http://[::1]:1024"] {
            let e = with("base_url", url).unwrap_err().to_string();
            assert!(e.contains("any local user may listen"), "{url}: {e}");
        }
        for (key, url) in [
            ("base_url", "http://localhost:80"),
            ("base_url", "https://localhost:8443"),
            ("base_url", "https://relay.localhost"),
            ("proxy", "http://localhost:3128"),
        ] {
            let e = with(key, url).unwrap_err().to_string();
            assert!(e.contains("instead of localhost"), "{url}: {e}");
        }
        with("proxy", "http://127.0.0.1:3128").unwrap();
        for (key, url) in [
            ("base_url", "https://localhost.:8443"),
            ("base_url", "https://LOCALHOST."),
            ("proxy", "http://foo.localhost.:3128"),
        ] {
            let e = with(key, url).unwrap_err().to_string();
            assert!(e.contains("instead of localhost"), "{url}: {e}");
        }
        let e = with("base_url", "http://127.0.0.1:0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port 0"), "{e}");
        // A proxy would read plain http:// requests, the secret with them.
        let e = parse(
            "[api]\nclient_id = \"a\"\nclient_secret = \"b\"\nbase_url = \"http://127.0.0.1:80\"\nproxy = \"http://127.0.0.1:3128\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[api] proxy") && e.contains("plain http://"),
            "{e}"
        );
    }

    #[test]
    fn a_loopback_port_anyone_may_bind_takes_safe_away_unless_vouched_for() {
        let with = |lines: &str| {
            parse(&format!(
                "[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n{lines}\n"
            ))
            .unwrap()
            .login
            .endpoint_bindable
        };
        let why = with("base_url = \"https://127.0.0.1:8443\"").unwrap();
        assert!(
            why.contains("127.0.0.1:8443") && why.contains("any local user"),
            "{why}"
        );
        assert!(with("base_url = \"https://[::1]:8443\"").is_some());
        assert!(with("proxy = \"http://127.0.0.1:3128\"").is_some());
        assert_eq!(with("base_url = \"https://127.0.0.1:443\""), None);
        assert_eq!(with("region = \"eu\""), None);
        assert_eq!(
            with("base_url = \"https://127.0.0.1:8443\"\ntrust_loopback_port = true"),
            None
        );
    }

    #[test]
    fn syntax_errors_name_the_line_and_never_quote_it() {
        let secret = "PyCHLudkOg5RzFXQl2o-TWDxGGq0_0Q5";
        for text in [
            format!("[api]\nclient_id = \"a\"\nclient_secret = \"{secret}\" x\n"),
            format!(
                "[api]\nclient_id = \"a\"\nclient_secret = \"old\"\nclient_secret = \"{secret}\"\n"
            ),
            format!(
                "[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[console]\nworkspace_id = \"w\"\n\
                 project_id = \"p\"\nclient_id = \"c\"\nclient_secret = {secret}\n"
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(!e.contains(secret) && !e.contains("PyCH"), "{e}");
            assert!(e.contains("line "), "{e}");
        }
        // A secret pasted alone on a line reads as a key; a multi-line string's line too.
        for text in [
            "[api]\nclient_id = \"a\"\nclient_secret = \"b\"\ndGhpc2lzYXNlY3JldA==\n",
            "[api]\nclient_id = \"a\"\nclient_secret = \"\"\"\nSecqretPart=Part2\"\"\"\nx\n",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                !e.contains("dGhpc2") && !e.contains("Secqret") && !e.contains("Part2"),
                "{e}"
            );
        }
        // A quote inside a value must not throw the hiding off.
        for text in [
            "[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\nfailmode = \"sa`Zx9Qw7Lm\"\n",
            "[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\n\"ok`Zx9Qw7Lm\" = 1\n",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(!e.contains("Zx9Q"), "{e}");
        }
        let e = parse(
            "[api]\nclient_id = \"a\"\nclient_secret = \"b\"\n[login]\nfailmode = \"open\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 5") && e.contains("`secure`"), "{e}");
    }

    #[test]
    fn errors_never_echo_the_secret() {
        let text = "[api]\nclient_id = \"a\"\nclient_secret = \"s3cr3t value\"\n";
        let e = parse(text).unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let ok = parse("[api]\nclient_id = \"a\"\nclient_secret = \"s3cr3t\"\n").unwrap();
        assert!(!format!("{ok:?}").contains("s3cr3t"));
    }

    #[test]
    fn phones() {
        assert_eq!(
            normalize_phone("+447700900000").as_deref(),
            Some("447700900000")
        );
        assert_eq!(
            normalize_phone("447700900000").as_deref(),
            Some("447700900000")
        );
        for bad in [
            "",
            "+",
            "07700900000",
            "44 7700 900000",
            "4477009000001234",
            "+44a7700900000",
        ] {
            assert!(normalize_phone(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names() {
        for good in [
            "alice",
            "svc-backup$",
            "bob@ad.example.com",
            "AD\\bob",
            "John Smith@ad.example.com",
            "алиса",
        ] {
            assert!(is_valid_name(good), "{good:?}");
        }
        assert!(is_valid_name(&"a".repeat(MAX_NAME_BYTES)));
        for bad in ["", "a\u{1b}", "a\nb", "a\0b", "a\u{7f}", "a\u{9b}b"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert!(!is_valid_name(&"a".repeat(MAX_NAME_BYTES + 1)));
    }

    #[test]
    fn directory_names_are_quoted_keys() {
        let c = parse(&format!(
            "{GOOD}\"bob@ad.example.com\" = \"5995afaf-f5d1-47ab-b586-50ad46904eed\"\n'AD\\bob' = \"5995afaf-f5d1-47ab-b586-50ad46904eee\"\n\
             [phones]\n\"bob@ad.example.com\" = \"+447700900000\"\n"
        ))
        .unwrap();
        assert!(c.users.contains_key("bob@ad.example.com"));
        assert!(c.users.contains_key("AD\\bob"));
        assert_eq!(c.phones["bob@ad.example.com"], "447700900000");
        let g = parse(&GOOD.replace(
            "[users]",
            "[login]\ngroups = [\"domain admins@ad.example.com\", \"AD\\\\ops\"]\n[users]",
        ))
        .unwrap();
        assert_eq!(g.login.groups, ["domain admins@ad.example.com", "AD\\ops"]);
        let e = parse(&format!(
            "{GOOD}\"bob\\u0007\" = \"5995afaf-f5d1-47ab-b586-50ad46904eed\"\n"
        ))
        .unwrap_err();
        assert!(e.problem.contains("bob\\x07"), "{e}");
    }

    #[test]
    fn lookup_prefix() {
        assert_eq!(parse(GOOD).unwrap().login.lookup_prefix, "");
        let c =
            parse(&GOOD.replace("[users]", "[login]\nlookup_prefix = \"unix:\"\n[users]")).unwrap();
        assert_eq!(c.login.lookup_prefix, "unix:");
        for bad in ["\"a\\nb\"", "5", &format!("\"{}\"", "p".repeat(65))] {
            let e = parse(&GOOD.replace(
                "[users]",
                &format!("[login]\nlookup_prefix = {bad}\n[users]"),
            ))
            .unwrap_err();
            assert!(e.problem.contains("lookup_prefix"), "{bad}: {e}");
        }
    }
}
