//! The login decision. Generic over the two things it talks to, the person (`Conversation`)
//! and tru.ID (`Authenticator`), so unit tests script both and pin every prompt; the PAM module
//! and `truid-pam test` run this same function with the real ones.

use crate::api::{ApiError, ChallengeStatus, FactorKind};
use crate::config::{
    is_valid_name, Accept, Config, FactorId, FailMode, Method, SuFactor, Unenrolled,
};
use crate::enrolment::{self, Enrolled, Record};
use crate::recovery::{self, Used};
use crate::secret::Secret;
use crate::text::sanitize;
use std::time::Duration;

pub use crate::ports::{Ahead, Authenticator, ConvError, Conversation, NewFactor, Recovery};

impl Recovery for recovery::Store {
    fn use_code(&mut self, user: &str, code: &Secret) -> Result<Used, String> {
        recovery::Store::use_code(self, user, code).map_err(|e| format!("recovery codes: {e}"))
    }
    fn check_nothing(&mut self, code: &Secret) {
        recovery::Store::check_nothing(self, code)
    }
}

/// The login as PAM describes it.
#[derive(Debug, Clone, Default)]
pub struct LoginContext {
    pub user: String,
    pub service: String,
    pub rhost: Option<String>,
    pub tty: Option<String>,
    /// The requesting user (`PAM_RUSER`): for `su`, the person who typed it.
    pub ruser: Option<String>,
    /// This machine's name, for the push message ("sudo on web-3").
    pub host: String,
    /// Those of `[login] groups` the user whose factor is asked for is in (matched by NSS, see
    /// `host::member_of`); `None`: unknown (NSS could not say), so the factor is asked.
    pub groups: Option<Vec<String>>,
    /// Those of `[login] exempt_groups` that user is in; `None`: unknown, so none.
    pub exempt_groups: Option<Vec<String>>,
    /// Whether that user may enroll themselves (`[enroll] groups` empty, or a member);
    /// `None`: NSS could not say, so they may not.
    pub may_enroll: Option<bool>,
    /// An earlier module of the stack took a password (PAM_AUTHTOK is set and not empty):
    /// first-login enrolment needs it, so that a stack with no first factor before this
    /// module never lets whoever knows a name bind their own phone to it.
    pub password_given: bool,
    /// The uid of the unprivileged caller the agent runs this login for (its public socket):
    /// the log line says so, since the caller named the service, rhost and tty itself.
    pub agent_caller: Option<u32>,
    /// That user as NSS names them (`host::resolve`): every lookup and comparison uses this
    /// name, never the one typed.
    pub account: Account,
    /// A random part of the challenge's reference ID, unique to this login.
    pub nonce: String,
    /// Why an unprivileged local user controls this process, if one does ("real uid 1000",
    /// "AT_SECURE: a setuid or setgid program"). That user may stop, signal and rlimit it, and
    /// so make any call fail at will: `failmode = "safe"` then acts as `secure`.
    /// Set by the caller from the process's facts (`pam::controlled_by`).
    pub controlled_by: Option<String>,
}

/// What NSS said about the user whose factor the login needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Account {
    /// Not looked up: denies, so a caller that forgot to ask NSS cannot skip the check.
    #[default]
    Unresolved,
    /// The account's `pw_name`: `alice` for a login typed as `Alice` on a case-insensitive
    /// directory.
    Known(String),
    /// NSS does not know the name.
    Unknown,
    /// NSS could not answer, or gave a name that cannot be used.
    Failed(String),
}

/// What happened, and so what the module answers. Mapped to a PAM code in `pam.rs` and to a
/// log line in `log.rs`, each in one place. The agent sends it whole to a module it ran a
/// login for (`agent::services`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    Verified {
        tries: u32,
    },
    /// Every try used up on wrong or malformed codes.
    WrongCode {
        tries: u32,
    },
    /// No factor for the user. `ignore`: `unenrolled = "ignore"`, no prompt was shown.
    NotEnrolled {
        ignore: bool,
        tries: u32,
    },
    /// The user is exempt, or outside `[login] groups`: the module stands aside.
    NotRequired {
        reason: String,
    },
    /// A user without a factor enrolled inside the login (`unenrolled = "enroll"`): the new
    /// factor is ACTIVE, activated with its first code.
    Enrolled {
        factor: FactorId,
    },
    /// An enrolment that did not end in an active factor: no usable phone number, or no code
    /// that activated it. Denied, like wrong codes.
    EnrolmentFailed {
        tries: u32,
        reason: String,
    },
    /// One of the user's recovery codes let them in; it is gone now.
    RecoveryUsed {
        tries: u32,
        left: usize,
    },
    /// NSS does not know the name (or could not say): denied under `deny` and `ignore` alike,
    /// after the prompts an unenrolled user gets under `deny`.
    UnknownUser {
        tries: u32,
        reason: String,
    },
    /// tru.ID answered and refused the request (a 4xx that is not about the code).
    Refused {
        tries: u32,
        reason: String,
    },
    /// No verdict from tru.ID (unreachable, or a failed call). `let_in` only where `safe`
    /// applies (`api_failure`); the reason says why it did not, when it did not.
    Unavailable {
        tries: u32,
        reason: String,
        let_in: bool,
    },
    ConfigError {
        reason: String,
    },
    ConvError {
        tries: u32,
        reason: String,
    },
    /// PAM items the module cannot work with (no user, a user name with control characters).
    BadInput {
        reason: String,
    },
    /// The module runs without root (a screen locker, any program run as the user): it cannot
    /// read the root-only config nor ask tru.ID, so it refuses. Never PAM_IGNORE: see
    /// SECURITY.md, "Programs that run as the user".
    Unprivileged {
        reason: String,
    },
}

impl Outcome {
    /// The `outcome=` word of the log line.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Verified { .. } => "verified",
            Outcome::WrongCode { .. } => "wrong_code",
            Outcome::NotEnrolled { ignore: false, .. } => "not_enrolled_denied",
            Outcome::NotEnrolled { ignore: true, .. } => "not_enrolled_ignored",
            Outcome::NotRequired { .. } => "not_required",
            Outcome::RecoveryUsed { .. } => "recovery_used",
            Outcome::Enrolled { .. } => "enrolled",
            Outcome::EnrolmentFailed { .. } => "enrolment_failed",
            Outcome::UnknownUser { .. } => "unknown_user",
            Outcome::Refused { .. } => "refused",
            Outcome::Unavailable { let_in: false, .. } => "unavailable_denied",
            Outcome::Unavailable { let_in: true, .. } => "unavailable_allowed",
            Outcome::ConfigError { .. } => "config_error",
            Outcome::ConvError { .. } => "conversation_error",
            Outcome::BadInput { .. } => "bad_input",
            Outcome::Unprivileged { .. } => "unprivileged_denied",
        }
    }

    /// Someone typed what was not the code: wrong codes, and the users whose denial must look
    /// like it (no factor under `deny`, a name NSS does not know). These wait before the
    /// answer, so a guess costs time.
    /// A conversation that fails after wrong tries (the caller gives up at the last prompt)
    /// counts too: otherwise giving up would skip the wait.
    pub fn is_a_wrong_guess(&self) -> bool {
        matches!(
            self,
            Outcome::WrongCode { .. }
                | Outcome::NotEnrolled { ignore: false, .. }
                | Outcome::UnknownUser { .. }
                | Outcome::EnrolmentFailed { .. }
        ) || matches!(self, Outcome::ConvError { tries, .. } if *tries > 0)
    }

    pub fn tries(&self) -> u32 {
        match self {
            Outcome::Verified { tries }
            | Outcome::WrongCode { tries }
            | Outcome::NotEnrolled { tries, .. }
            | Outcome::UnknownUser { tries, .. }
            | Outcome::Refused { tries, .. }
            | Outcome::Unavailable { tries, .. }
            | Outcome::ConvError { tries, .. }
            | Outcome::RecoveryUsed { tries, .. }
            | Outcome::EnrolmentFailed { tries, .. } => *tries,
            Outcome::Enrolled { .. } => 1,
            Outcome::NotRequired { .. }
            | Outcome::ConfigError { .. }
            | Outcome::BadInput { .. }
            | Outcome::Unprivileged { .. } => 0,
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Outcome::Verified { .. } => "code verified by tru.ID".into(),
            Outcome::WrongCode { .. } => "tries used up on wrong codes".into(),
            Outcome::NotEnrolled { ignore: true, .. } => {
                "no tru.ID factor for the user; unenrolled = \"ignore\"".into()
            }
            Outcome::NotEnrolled { ignore: false, .. } => {
                "no tru.ID factor for the user; unenrolled = \"deny\"".into()
            }
            Outcome::RecoveryUsed { left, .. } => {
                format!("a recovery code stood in for the tru.ID code; {left} left")
            }
            Outcome::Enrolled { factor } => {
                format!("enrolled: factor {factor} activated with its first code")
            }
            Outcome::Unavailable {
                reason,
                let_in: true,
                ..
            } => format!("{reason}; failmode = \"safe\": LOGIN ALLOWED WITHOUT SECOND FACTOR"),
            Outcome::NotRequired { reason }
            | Outcome::Refused { reason, .. }
            | Outcome::UnknownUser { reason, .. }
            | Outcome::Unavailable { reason, .. }
            | Outcome::ConfigError { reason }
            | Outcome::ConvError { reason, .. }
            | Outcome::EnrolmentFailed { reason, .. }
            | Outcome::BadInput { reason }
            | Outcome::Unprivileged { reason } => reason.clone(),
        }
    }
}

pub const MSG_MALFORMED: &str = "A tru.ID code is 6 to 8 digits.";
pub const MSG_TRY_AGAIN: &str = "Wrong code, try again.";
pub const MSG_UNAVAILABLE: &str =
    "tru.ID cannot be reached, so the login is refused. Ask your administrator.";
pub const MSG_FAILED: &str =
    "The check with tru.ID failed, so the login is refused. Ask your administrator.";
pub const MSG_EXPIRED: &str = "The request expired while waiting for the code, try again.";
pub const MSG_PUSH_DENIED: &str = "The request was denied on the phone.";
pub const MSG_PUSH_TIMEOUT: &str = "No answer from the phone in time.";
pub const MSG_PUSH_ONLY: &str = "This login is approved on the phone: press Enter.";
pub const MSG_UNPRIVILEGED: &str =
    "This program runs as you, so it cannot check your tru.ID code, and it refuses. Log in on another terminal with your password and code, or ask your administrator.";
pub const MSG_RECOVERY_OFF: &str = "Recovery codes are not accepted here.";
pub const MSG_RECOVERY_REACHABLE: &str =
    "tru.ID can be reached: type the code from the app. Recovery codes are for when it cannot.";
pub const MSG_COMBINED: &str =
    "Type your password and the tru.ID code after it, with nothing between them.";

/// The first poll of a push comes soon (a quick approval is let in quickly); later ones
/// further apart, up to this.
const POLL_MAX: Duration = Duration::from_secs(1);
const POLL_FIRST: Duration = Duration::from_millis(250);

/// A code as tru.ID's authenticator shows it: 6 to 8 ASCII digits, nothing else. Anything else
/// uses up a try and is never sent.
pub fn code_is_well_formed(code: &str) -> bool {
    (6..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit())
}

/// The user whose factor this login needs, as typed (PAM_USER, or PAM_RUSER for
/// `su = "caller"`): the name `host::resolve` asks NSS about.
pub fn factor_user<'a>(cfg: &Config, login: &'a LoginContext) -> Result<&'a str, Outcome> {
    let is_su = matches!(login.service.as_str(), "su" | "su-l");
    let name = if is_su && cfg.login.su == SuFactor::Caller {
        login.ruser.as_deref().ok_or_else(|| Outcome::BadInput {
            reason: "su = \"caller\" but PAM_RUSER is not set".into(),
        })?
    } else {
        login.user.as_str()
    };
    if !is_valid_name(name) {
        return Err(Outcome::BadInput {
            reason: format!(
                "user name \"{}\" is not valid (empty, over 256 bytes, or with control characters)",
                sanitize(name, 64)
            ),
        });
    }
    Ok(name)
}

/// The challenge's `reference_id`: lets an administrator find this login in tru.ID's console.
pub fn reference_id(login: &LoginContext, user: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
            .take(64)
            .collect()
    };
    let host = login.rhost.as_deref().map(clean).unwrap_or_default();
    let host = if host.is_empty() {
        "local".to_string()
    } else {
        host
    };
    format!(
        "pam_truid/{}/{}/{}/{}",
        clean(&login.service),
        host,
        clean(user),
        clean(&login.nonce)
    )
}

/// Whose factor a code is checked against.
enum Who {
    Found(FactorId),
    /// `lookup = true` and not in `[users]`: asked of tru.ID once a well-formed code is typed.
    Later,
    /// No factor: the prompts go on as for an enrolled user, and nothing is sent.
    Nobody,
}

/// Runs one login: the prompt first, then for each well-formed code (the lookup,) a challenge
/// and the verify, up to `tries` times.
///
/// Prompt first, so that an enrolled user and one without a factor under `deny` look alike up
/// to the verdict: the same prompt at once, whether tru.ID is quick, slow or down. Only a push
/// user (a `[phones]` entry, method auto or push) needs the factor's kind before the prompt,
/// and `unenrolled = "ignore"` needs the lookup before it (it shows such a user no prompt).
pub fn authenticate(
    cfg: &Config,
    login: &LoginContext,
    conv: &mut impl Conversation,
    api: &mut impl Authenticator,
    codes: &mut impl Recovery,
) -> Outcome {
    authenticate_or_enroll(cfg, login, conv, api, codes, None)
}

/// `authenticate`, where a user without a factor may enroll inside the login
/// (`unenrolled = "enroll"`) and is recorded in `record`. Without a `record` (a caller that
/// cannot write the config) such a user is denied as under `deny`.
pub fn authenticate_or_enroll(
    cfg: &Config,
    login: &LoginContext,
    conv: &mut impl Conversation,
    api: &mut impl Authenticator,
    codes: &mut impl Recovery,
    record: Option<&mut dyn Record>,
) -> Outcome {
    let typed = match factor_user(cfg, login) {
        Ok(name) => name,
        Err(outcome) => return outcome,
    };
    // From here on only the name NSS gives counts: `Alice` is the enrolled `alice`. A name NSS
    // does not know is never PAM_IGNORE: with a lagging or case-insensitive NSS it may be an
    // enrolled user's, and standing aside would wave them through. Under `deny` it is asked
    // like a user without a factor, so an outsider cannot tell which accounts exist.
    let (user, unknown) = match &login.account {
        Account::Known(name) if is_valid_name(name) => (name.as_str(), None),
        Account::Known(_) | Account::Unresolved => {
            return Outcome::BadInput {
                reason: "the account was not resolved through NSS".into(),
            }
        }
        Account::Unknown => (
            typed,
            Some("no such user (NSS does not know the name)".to_string()),
        ),
        Account::Failed(reason) => (typed, Some(reason.clone())),
    };
    if let Some(reason) = &unknown {
        if cfg.login.unenrolled == Unenrolled::Ignore {
            return Outcome::UnknownUser {
                tries: 0,
                reason: reason.clone(),
            };
        }
    }
    // Exemptions come before `groups`, and only for an account NSS knows: a name it does not
    // know, or groups it cannot list, exempt no one.
    if unknown.is_none() {
        if cfg.login.exempt_users.iter().any(|u| u == user) {
            return Outcome::NotRequired {
                reason: "user is in [login] exempt_users".into(),
            };
        }
        if let Some(g) = login.exempt_groups.as_ref().and_then(|gs| gs.first()) {
            return Outcome::NotRequired {
                reason: format!(
                    "user is in \"{}\" of [login] exempt_groups",
                    sanitize(g, 64)
                ),
            };
        }
    }
    if !cfg.login.groups.is_empty() && unknown.is_none() {
        // Groups that could not be read (NSS down) count as membership: when unsure, ask.
        let member = login
            .groups
            .as_ref()
            .is_none_or(|gs| gs.iter().any(|g| cfg.login.groups.contains(g)));
        if !member {
            return Outcome::NotRequired {
                reason: "user is in none of [login] groups".into(),
            };
        }
    }
    let phone = cfg.phones.get(user);
    // One prompt carries a typed code: no push.
    let maybe_push = matches!(cfg.login.method, Method::Auto | Method::Push)
        && phone.is_some()
        && !cfg.login.combined;
    // The external user ID tru.ID holds for this user, for `lookup = true`. The lookup waits
    // for the code, unless its answer decides the prompt (a push user) or whether there is one
    // at all (`ignore` shows a user without a factor none).
    let lookup_name = format!("{}{user}", cfg.login.lookup_prefix);
    let mut who = match cfg.users.get(user) {
        _ if unknown.is_some() => Who::Nobody,
        Some(f) => Who::Found(f.clone()),
        None if cfg.login.lookup && (maybe_push || cfg.login.unenrolled != Unenrolled::Deny) => {
            match api.find_factor(&lookup_name) {
                Ok(Some(f)) => Who::Found(f),
                Ok(None) => Who::Nobody,
                Err(e) => return api_failure(cfg, login, conv, 0, e, None),
            }
        }
        None if cfg.login.lookup => Who::Later,
        None => Who::Nobody,
    };
    // `[users]` holds the name as typed but NSS names the account otherwise (`Alice` for
    // `alice`): a config written with the wrong name must not stand an enrolled person aside.
    if matches!(who, Who::Nobody)
        && unknown.is_none()
        && typed != user
        && cfg.users.contains_key(typed)
    {
        return Outcome::Refused {
            tries: 0,
            reason: format!(
                "[users] has \"{}\" but NSS names the account \"{}\"; write the name NSS gives (getent passwd)",
                sanitize(typed, 64),
                sanitize(user, 64)
            ),
        };
    }
    if matches!(who, Who::Nobody) && cfg.login.unenrolled == Unenrolled::Ignore {
        return Outcome::NotEnrolled {
            ignore: true,
            tries: 0,
        };
    }
    if let (Who::Nobody, Some(record)) = (&who, record) {
        if let Some(outcome) =
            first_login_enrolment(cfg, login, user, unknown.is_some(), conv, api, record)
        {
            return outcome;
        }
    }

    let push = match (&who, cfg.login.method, phone) {
        (Who::Nobody | Who::Later, _, _) | (_, Method::Totp, _) | (_, Method::Auto, None) => false,
        (Who::Found(factor), Method::Auto | Method::Push, Some(_)) => {
            match api.factor_kind(factor) {
                Ok(FactorKind::Push) => true,
                Ok(_) if cfg.login.method == Method::Auto => false,
                Ok(kind) => {
                    return Outcome::Refused {
                        tries: 0,
                        reason: format!("method = \"push\" but the factor is {kind:?}"),
                    }
                }
                Err(e) => return api_failure(cfg, login, conv, 0, e, None),
            }
        }
        (Who::Found(_), Method::Push, None) => {
            return Outcome::Refused {
                tries: 0,
                reason: "method = \"push\" but the user has no [phones] entry".into(),
            }
        }
    };

    let reference = reference_id(login, user);
    // The challenge (and the lookup) is made while the person reads the prompt and types.
    // Nothing is asked for a user without a factor; their prompt comes as fast.
    if !push {
        prepare_next(api, &who, &lookup_name, &reference);
    }
    // Set once a code or a push has gone to tru.ID: from then on a failure may hide a wrong
    // code, so it denies under both failmodes.
    let mut sent: Option<&'static str> = None;
    // One prompt is one try: a client that sends one password sends the same one again.
    let tries = if cfg.login.combined {
        1
    } else {
        cfg.login.tries
    };
    let round_of = RoundOf {
        cfg,
        user,
        known: unknown.is_none(),
        lookup_name: &lookup_name,
        reference: &reference,
    };
    // The password part of a one-prompt answer, handed on only if the module lets the login in.
    let mut password = None;
    for attempt in 1..=tries {
        let last = attempt == tries;
        let prompt = if push {
            &cfg.login.push_prompt
        } else if cfg.login.combined {
            &cfg.login.combined_prompt
        } else {
            &cfg.login.prompt
        };
        let answer = match conv.prompt_secret(prompt) {
            Ok(a) => a,
            Err(ConvError(reason)) => {
                return Outcome::ConvError {
                    tries: attempt - 1,
                    reason,
                }
            }
        };
        let round = match (&who, phone) {
            (Who::Found(factor), Some(phone)) if push && answer.is_empty() => {
                let message = push_message(cfg, login, user);
                // Marked before the push: the phone may be asked even if the answer is lost.
                sent = Some("a push was sent, so this failure could hide a denial on the phone");
                push_round(
                    cfg,
                    conv,
                    api,
                    factor,
                    &reference,
                    phone,
                    message.as_deref(),
                )
            }
            _ if push && cfg.login.method == Method::Push => Round::Failed(MSG_PUSH_ONLY),
            _ if cfg.login.combined => match split_combined(&answer, cfg.login.code_digits) {
                Some((typed_password, code)) => {
                    password = Some(typed_password);
                    round_of.code(api, codes, &mut who, &code, &mut sent).end
                }
                None => Round::Failed(MSG_COMBINED),
            },
            _ => {
                let round = round_of.code(api, codes, &mut who, &answer, &mut sent);
                // A wrong code used its challenge up: the next try's is made while the person
                // types again.
                if !last && round.used_challenge && matches!(round.end, Round::Failed(_)) {
                    prepare_next(api, &who, &lookup_name, &reference);
                }
                round.end
            }
        };
        let outcome = match round {
            Round::Verified => Outcome::Verified { tries: attempt },
            Round::Recovered { left } => Outcome::RecoveryUsed {
                tries: attempt,
                left,
            },
            Round::Broken(reason) => Outcome::ConfigError { reason },
            Round::Api(e) => api_failure(cfg, login, conv, attempt, e, sent),
            Round::Failed(msg) => {
                // A malformed code is told even on the last try: the person learns why.
                if msg == MSG_MALFORMED || msg == MSG_COMBINED || !last {
                    conv.error(msg);
                }
                continue;
            }
        };
        // Every way in hands the stack the password: also an outage `safe` lets in, or the
        // password would then be asked again and a one-password client locked out.
        if let Some(p) = password.take() {
            if matches!(
                outcome,
                Outcome::Verified { .. }
                    | Outcome::RecoveryUsed { .. }
                    | Outcome::Unavailable { let_in: true, .. }
            ) {
                conv.keep_password(p);
            }
        }
        return outcome;
    }
    match (who, unknown) {
        (Who::Nobody, Some(reason)) => Outcome::UnknownUser { tries, reason },
        (Who::Nobody, None) => Outcome::NotEnrolled {
            ignore: false,
            tries,
        },
        _ => Outcome::WrongCode { tries },
    }
}

/// A user without a factor enrolls at their first login, if `unenrolled = "enroll"` and
/// `[enroll] groups` let them; `None`: they may not, and are denied as under `deny`.
/// Only after the first factor: an earlier module took a password, never with one prompt (it
/// comes before the password), nor in a process a local user controls (su, sudo: the caller
/// could enroll the target's account). The stack must end on a wrong password before this
/// module (`requisite`, or common-auth's jump to pam_deny), as every shipped stack does: a
/// `required` first factor would let the stack run on to here.
fn first_login_enrolment(
    cfg: &Config,
    login: &LoginContext,
    user: &str,
    unknown: bool,
    conv: &mut impl Conversation,
    api: &mut impl Authenticator,
    record: &mut dyn Record,
) -> Option<Outcome> {
    let allowed = cfg.login.unenrolled == Unenrolled::Enroll
        && !unknown
        && !cfg.login.combined
        && login.controlled_by.is_none()
        && login.password_given
        && login.may_enroll == Some(true);
    if !allowed {
        return None;
    }
    conv.info(enrolment::MSG_START);
    let enrolled = enrolment::enroll(cfg, user, None, conv, api, record);
    match &enrolled {
        Enrolled::Api(ApiError::Unavailable(_)) => conv.error(MSG_UNAVAILABLE),
        Enrolled::Api(_) | Enrolled::NotRecorded { .. } => conv.error(MSG_FAILED),
        Enrolled::HasFactor => conv.error(enrolment::MSG_HAS_FACTOR),
        _ => {}
    }
    Some(enrolment_outcome(enrolled))
}

/// The outcome of an enrolment, as the log and PAM see it: only an ACTIVE, recorded factor
/// lets in.
pub fn enrolment_outcome(enrolled: Enrolled) -> Outcome {
    match enrolled {
        Enrolled::Active { factor } => Outcome::Enrolled { factor },
        Enrolled::HasFactor => Outcome::Refused {
            tries: 0,
            reason: Enrolled::HasFactor.reason(),
        },
        e @ (Enrolled::BadPhone | Enrolled::NotActivated { .. }) => Outcome::EnrolmentFailed {
            tries: enrolment::ACTIVATION_TRIES,
            reason: e.reason(),
        },
        Enrolled::Api(ApiError::Refused(reason)) => Outcome::Refused {
            tries: 0,
            reason: format!("enrolment: {reason}"),
        },
        // A user without a factor is never let in by `safe`: they have no second factor.
        Enrolled::Api(e) => Outcome::Unavailable {
            tries: 0,
            reason: format!("enrolment: {e}"),
            let_in: false,
        },
        e @ Enrolled::NotRecorded { .. } => Outcome::ConfigError { reason: e.reason() },
        Enrolled::Conv(reason) => Outcome::ConvError { tries: 0, reason },
    }
}

/// Asks ahead for what the next code needs: its factor's challenge, or the lookup first.
fn prepare_next(api: &mut impl Authenticator, who: &Who, lookup_name: &str, reference: &str) {
    match who {
        Who::Found(factor) => api.prepare(Ahead::Challenge {
            factor,
            reference_id: reference,
        }),
        Who::Later => api.prepare(Ahead::LookupThenChallenge {
            user: lookup_name,
            reference_id: reference,
        }),
        Who::Nobody => {}
    }
}

/// A code's try: how it ended, and whether its code went to a challenge (which it used up).
struct CodeRound {
    end: Round,
    used_challenge: bool,
}

impl From<Round> for CodeRound {
    fn from(end: Round) -> CodeRound {
        CodeRound {
            end,
            used_challenge: false,
        }
    }
}

/// How one try ended.
enum Round {
    Verified,
    /// A recovery code let the user in; this many are left.
    Recovered {
        left: usize,
    },
    /// The recovery codes could not be read or struck off: denied.
    Broken(String),
    /// Not verified; the message for the person.
    Failed(&'static str),
    Api(ApiError),
}

/// What every try of one login shares.
struct RoundOf<'a> {
    cfg: &'a Config,
    /// The account as NSS names it, whose recovery codes count.
    user: &'a str,
    /// NSS knows the account: a name it does not know has no codes, whatever the file says.
    known: bool,
    lookup_name: &'a str,
    reference: &'a str,
}

impl RoundOf<'_> {
    /// One answer: a recovery code goes to `recovery`, and is never sent. A code is checked
    /// locally (a malformed one is a used try that is never sent and creates nothing), then
    /// the factor found if it is looked up, a challenge got and the code sent. A user without
    /// a factor gets the same answers, and nothing is sent.
    fn code(
        &self,
        api: &mut impl Authenticator,
        codes: &mut impl Recovery,
        who: &mut Who,
        code: &Secret,
        sent: &mut Option<&'static str>,
    ) -> CodeRound {
        if recovery::parse_code(code.expose()).is_some() {
            return self.recovery(api, codes, who, code);
        }
        if !code_is_well_formed(code.expose()) {
            return Round::Failed(MSG_MALFORMED).into();
        }
        if let Err(e) = find_later(api, self.lookup_name, who) {
            return Round::Api(e).into();
        }
        let Who::Found(factor) = who else {
            return Round::Failed(MSG_TRY_AGAIN).into();
        };
        let challenge = match get_challenge(api, factor, self.reference) {
            Ok(c) => c,
            Err(e) => return Round::Api(e).into(),
        };
        // Marked before the call: a code in flight may have reached tru.ID.
        *sent = Some("a code was sent, so this failure could hide a wrong code");
        let end = match api.verify(factor, &challenge, code) {
            Ok(ChallengeStatus::Verified) => Round::Verified,
            Ok(ChallengeStatus::Expired) => Round::Failed(MSG_EXPIRED),
            // FAILED, still PENDING, or a status this version does not know: not verified.
            // A 4xx about the code is tru.ID saying no: a wrong code, never a service failure.
            Ok(_) | Err(ApiError::Refused(_)) => Round::Failed(MSG_TRY_AGAIN),
            Err(e) => Round::Api(e),
        };
        CodeRound {
            end,
            used_challenge: true,
        }
    }

    /// A recovery code. Under `accept = "unavailable"` it counts only once this login finds
    /// tru.ID unreachable for the user's factor (the lookup or the challenge fails there and
    /// then); a wrong one is a wrong try either way, never an outage that failmode decides.
    fn recovery(
        &self,
        api: &mut impl Authenticator,
        codes: &mut impl Recovery,
        who: &mut Who,
        code: &Secret,
    ) -> CodeRound {
        let mut used_challenge = false;
        // A name NSS does not know, and a user without a factor, get the answers an enrolled
        // user gets in the common case (tru.ID up), so nobody learns who is enrolled.
        match self.cfg.recovery.accept {
            Accept::Never => return Round::Failed(MSG_RECOVERY_OFF).into(),
            Accept::Always if !self.known => {
                codes.check_nothing(code);
                return Round::Failed(MSG_TRY_AGAIN).into();
            }
            Accept::Always => {}
            Accept::Unavailable if !self.known => {
                return Round::Failed(MSG_RECOVERY_REACHABLE).into()
            }
            Accept::Unavailable => {
                // Whether tru.ID answers for the user's factor right now. A user it holds no
                // factor for has nothing that is unreachable.
                let reached = find_later(api, self.lookup_name, who).and_then(|()| match who {
                    Who::Found(factor) => {
                        used_challenge = true;
                        get_challenge(api, factor, self.reference).map(drop)
                    }
                    _ => Ok(()),
                });
                // Only no verdict at all lets the code be checked; a refusal is tru.ID's.
                let stop = match reached {
                    Ok(()) => Some(Round::Failed(MSG_RECOVERY_REACHABLE)),
                    Err(e @ ApiError::Refused(_)) => Some(Round::Api(e)),
                    Err(ApiError::Unavailable(_) | ApiError::Failed(_)) => None,
                };
                if let Some(end) = stop {
                    return CodeRound {
                        end,
                        used_challenge,
                    };
                }
            }
        }
        let end = match codes.use_code(self.user, code) {
            Ok(Used::Accepted { left }) => Round::Recovered { left },
            Ok(Used::Rejected) => Round::Failed(MSG_TRY_AGAIN),
            Err(reason) => Round::Broken(reason),
        };
        CodeRound {
            end,
            used_challenge,
        }
    }
}

/// `lookup = true`: the factor is asked of tru.ID once an answer needs it.
fn find_later(
    api: &mut impl Authenticator,
    lookup_name: &str,
    who: &mut Who,
) -> Result<(), ApiError> {
    if let Who::Later = who {
        *who = match api.find_factor(lookup_name)? {
            Some(f) => Who::Found(f),
            None => Who::Nobody,
        };
    }
    Ok(())
}

/// A one-prompt answer cut into the password and the code after it: a recovery code in its
/// dashed form, or else the last `digits` characters when they are digits.
pub fn split_combined(answer: &Secret, digits: usize) -> Option<(Secret, Secret)> {
    let a = answer.expose();
    let at = recovery::trailing_code_start(a).or_else(|| {
        let at = a.len().checked_sub(digits)?;
        a.get(at..)
            .is_some_and(|tail| tail.bytes().all(|b| b.is_ascii_digit()))
            .then_some(at)
    })?;
    let (password, code) = (a.get(..at)?, a.get(at..)?);
    Some((Secret::new(password), Secret::new(code)))
}

/// The challenge a code is sent on: the one asked for ahead (`prepare_next`), which the
/// Authenticator hands over, or one made now.
fn get_challenge(
    api: &mut impl Authenticator,
    factor: &FactorId,
    reference: &str,
) -> Result<String, ApiError> {
    api.create_challenge(factor, reference)
}

/// One push: sent, announced, polled until answered or `push_timeout`.
fn push_round(
    cfg: &Config,
    conv: &mut impl Conversation,
    api: &mut impl Authenticator,
    factor: &FactorId,
    reference: &str,
    phone: &str,
    message: Option<&str>,
) -> Round {
    let challenge = match api.start_push(factor, reference, phone, message) {
        Ok(c) => c,
        Err(e) => return Round::Api(e),
    };
    conv.info(&match message {
        Some(m) => format!("Approve the request on your phone: \"{m}\""),
        None => "Approve the request on your phone.".to_string(),
    });
    let mut waited = Duration::ZERO;
    let mut step = POLL_FIRST;
    loop {
        match api.challenge_status(factor, &challenge) {
            Ok(ChallengeStatus::Verified) => return Round::Verified,
            Ok(ChallengeStatus::Pending) if waited < cfg.login.push_timeout => {}
            Ok(ChallengeStatus::Pending | ChallengeStatus::Expired) => {
                return Round::Failed(MSG_PUSH_TIMEOUT)
            }
            Ok(_) => return Round::Failed(MSG_PUSH_DENIED),
            Err(e) => return Round::Api(e),
        }
        let wait = step.min(cfg.login.push_timeout.saturating_sub(waited));
        api.pause(wait);
        waited += wait;
        step = (step * 2).min(POLL_MAX);
    }
}

/// The message shown on the phone, with the login's service, host and user filled in.
fn push_message(cfg: &Config, login: &LoginContext, user: &str) -> Option<String> {
    let clean = |s: &str| -> String { sanitize(s, 64).replace('\\', "") };
    let m = cfg
        .login
        .push_message
        .replace("{service}", &clean(&login.service))
        .replace("{host}", &clean(&login.host))
        .replace("{user}", &clean(user))
        .replace("{rhost}", &clean(login.rhost.as_deref().unwrap_or("")));
    (!m.trim().is_empty()).then_some(m)
}

/// A failed call to tru.ID. A refusal denies. `Failed` denies under every failmode. For
/// `Unavailable`, `failmode = "safe"` lets the login in only when nothing of this login could
/// have caused the failure on purpose: no code or push has gone out yet (after one, a failure
/// may hide a wrong code), and no unprivileged local user controls the process (who could stop
/// it past the deadline, or starve it of descriptors).
fn api_failure(
    cfg: &Config,
    login: &LoginContext,
    conv: &mut impl Conversation,
    tries: u32,
    e: ApiError,
    sent: Option<&'static str>,
) -> Outcome {
    match e {
        ApiError::Unavailable(reason) => {
            let why_not = if cfg.login.failmode != FailMode::Safe {
                None
            } else if let Some(what) = sent {
                Some(what.to_string())
            } else {
                login
                    .controlled_by
                    .as_ref()
                    .or(cfg.login.endpoint_bindable.as_ref())
                    .map(|c| format!("{c}, so a local user could cause this failure"))
            };
            let let_in = cfg.login.failmode == FailMode::Safe && why_not.is_none();
            if !let_in {
                conv.error(MSG_UNAVAILABLE);
            }
            let reason = match why_not {
                Some(w) => format!("{reason}; failmode = \"safe\" does not apply: {w}"),
                None => reason,
            };
            Outcome::Unavailable {
                tries,
                reason,
                let_in,
            }
        }
        ApiError::Failed(reason) => {
            conv.error(MSG_FAILED);
            Outcome::Unavailable {
                tries,
                reason: format!(
                    "{reason}; no failmode lets this in: it is not tru.ID being unreachable"
                ),
                let_in: false,
            }
        }
        ApiError::Refused(reason) => Outcome::Refused { tries, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::path::Path;

    /// A conversation that expects exactly these exchanges, in order.
    #[derive(Default)]
    struct Script {
        answers: VecDeque<&'static str>,
        seen: Vec<String>,
        fail_prompt: bool,
        /// Shared with a FakeApi: what both saw, in the order it happened.
        journal: Journal,
        /// The password part handed to the stack (`keep_password`).
        kept: Option<String>,
    }

    type Journal = std::rc::Rc<std::cell::RefCell<Vec<String>>>;

    impl Script {
        fn answering(answers: &[&'static str]) -> Self {
            Script {
                answers: answers.iter().copied().collect(),
                ..Default::default()
            }
        }
    }

    impl Conversation for Script {
        fn prompt_secret(&mut self, text: &str) -> Result<Secret, ConvError> {
            self.seen.push(format!("prompt:{text}"));
            self.journal.borrow_mut().push("prompt".into());
            if self.fail_prompt {
                return Err(ConvError("conversation failed".into()));
            }
            let a = self
                .answers
                .pop_front()
                .unwrap_or_else(|| panic!("unexpected prompt {text:?}"));
            Ok(Secret::new(a))
        }
        fn info(&mut self, text: &str) {
            self.seen.push(format!("info:{text}"));
        }
        fn error(&mut self, text: &str) {
            self.seen.push(format!("error:{text}"));
        }
        fn keep_password(&mut self, password: Secret) {
            self.kept = Some(password.expose().to_string());
        }
    }

    /// No recovery codes at all.
    struct NoCodes;

    impl Recovery for NoCodes {
        fn use_code(&mut self, _: &str, _: &Secret) -> Result<Used, String> {
            Ok(Used::Rejected)
        }
    }

    /// One user's codes, used up once; what was asked.
    #[derive(Default)]
    struct Codes {
        user: &'static str,
        unused: Vec<&'static str>,
        asked: Vec<String>,
        broken: bool,
    }

    impl Recovery for Codes {
        fn use_code(&mut self, user: &str, code: &Secret) -> Result<Used, String> {
            self.asked.push(format!("{user} {}", code.expose()));
            if self.broken {
                return Err("recovery codes: cannot be rewritten".into());
            }
            let canon = |c: &str| crate::recovery::parse_code(c).map(|s| s.expose().to_string());
            match self
                .unused
                .iter()
                .position(|c| canon(c) == canon(code.expose()))
            {
                Some(at) if user == self.user => {
                    self.unused.remove(at);
                    Ok(Used::Accepted {
                        left: self.unused.len(),
                    })
                }
                _ => Ok(Used::Rejected),
            }
        }
    }

    const RC: &str = "ab2c-def3-ghjk";

    fn codes() -> Codes {
        Codes {
            user: "alice",
            unused: vec![RC, "zzzz-zzzz-zzzz"],
            ..Default::default()
        }
    }

    #[test]
    fn recovery_code_under_each_accept() {
        let down = || ApiError::Unavailable("tru.ID cannot be reached".into());
        // "always": it lets in with tru.ID up; nothing goes to tru.ID for it.
        let mut conv = Script::answering(&[RC]);
        let mut api = fake("123456");
        let mut c = codes();
        let cfg = config("[recovery]\naccept = \"always\"");
        let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut c);
        assert_eq!(out, Outcome::RecoveryUsed { tries: 1, left: 1 });
        assert!(
            api.calls.iter().all(|c| !c.starts_with("verify")),
            "{:?}",
            api.calls
        );
        assert_eq!(c.asked, [format!("alice {RC}")]);
        // The same code again is a wrong try.
        let mut conv = Script::answering(&[RC]);
        let cfg1 = config("tries = 1\n[recovery]\naccept = \"always\"");
        let out = authenticate(&cfg1, &login("alice"), &mut conv, &mut api, &mut c);
        assert_eq!(out, Outcome::WrongCode { tries: 1 });

        // "never": a wrong try, never checked, never sent.
        let mut conv = Script::answering(&[RC, "123456"]);
        let mut api = fake("123456");
        let mut c = codes();
        let cfg = config("[recovery]\naccept = \"never\"");
        let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut c);
        assert_eq!(out, Outcome::Verified { tries: 2 });
        assert!(c.asked.is_empty());
        assert!(conv.seen.contains(&format!("error:{MSG_RECOVERY_OFF}")));
        assert!(api.calls.iter().all(|c| !c.contains(RC)), "{:?}", api.calls);

        // "unavailable" (default), tru.ID up: refused and kept, the app's code goes on.
        let mut conv = Script::answering(&[RC, "123456"]);
        let mut api = fake("123456");
        let mut c = codes();
        let out = authenticate(&config(""), &login("alice"), &mut conv, &mut api, &mut c);
        assert_eq!(out, Outcome::Verified { tries: 2 });
        assert!(c.asked.is_empty());
        assert_eq!(c.unused.len(), 2);
        assert!(conv
            .seen
            .contains(&format!("error:{MSG_RECOVERY_REACHABLE}")));

        // "unavailable", tru.ID down: it lets in under secure, and only the right one does.
        for failmode in ["secure", "safe"] {
            let cfg = config(&format!("failmode = \"{failmode}\"\ntries = 1"));
            let mut api = fake("123456");
            api.fail_create = Some(down());
            let mut c = codes();
            let mut conv = Script::answering(&[RC]);
            let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut c);
            assert_eq!(
                out,
                Outcome::RecoveryUsed { tries: 1, left: 1 },
                "{failmode}"
            );
            // A wrong recovery code is a wrong try, never an outage that "safe" lets in.
            let mut conv = Script::answering(&["ab2c-def3-ghjm"]);
            let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut c);
            assert_eq!(out, Outcome::WrongCode { tries: 1 }, "{failmode}");
            // Another user's code is no code of alice's.
            let mut conv = Script::answering(&["zzzz-zzzz-zzzz"]);
            let mut bob = codes();
            bob.user = "bob";
            let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut bob);
            assert_eq!(out, Outcome::WrongCode { tries: 1 }, "{failmode}");
        }
        // A name NSS does not know has no codes, even if the file lists it.
        let cfg = config("tries = 1\n[recovery]\naccept = \"always\"");
        let mut c = codes();
        let mut l = login("alice");
        l.account = Account::Unknown;
        let mut conv = Script::answering(&[RC]);
        let out = authenticate(&cfg, &l, &mut conv, &mut fake("123456"), &mut c);
        assert_eq!(out.name(), "unknown_user");
        assert!(c.asked.is_empty());
        // A user without a factor has nothing that is unreachable.
        let mut api = fake("123456");
        api.fail_create = Some(down());
        let mut c = codes();
        c.user = "mallory";
        let mut conv = Script::answering(&[RC]);
        let out = authenticate(
            &config("tries = 1"),
            &login("mallory"),
            &mut conv,
            &mut api,
            &mut c,
        );
        assert_eq!(
            out,
            Outcome::NotEnrolled {
                ignore: false,
                tries: 1
            }
        );
        assert!(c.asked.is_empty());
        // Codes that cannot be struck off deny, under safe too.
        let mut api = fake("123456");
        api.fail_create = Some(down());
        let mut c = codes();
        c.broken = true;
        let mut conv = Script::answering(&[RC]);
        let out = authenticate(
            &config("failmode = \"safe\""),
            &login("alice"),
            &mut conv,
            &mut api,
            &mut c,
        );
        assert!(matches!(out, Outcome::ConfigError { .. }), "{out:?}");
    }

    #[test]
    fn exempt_accounts_are_never_asked() {
        let cfg = config(
            "exempt_users = [\"ansible\"]\nexempt_groups = [\"breakglass\"]\ngroups = [\"ops\"]",
        );
        let run = |l: LoginContext| {
            let mut conv = Script::answering(&["111111", "111111", "111111"]);
            let mut api = fake("123456");
            let out = authenticate(&cfg, &l, &mut conv, &mut api, &mut NoCodes);
            (out, conv.seen.len())
        };
        let (out, prompts) = run(login("ansible"));
        assert_eq!(out.name(), "not_required");
        assert_eq!(prompts, 0);
        // Exemption wins over groups.
        let mut l = login("alice");
        l.groups = Some(vec!["ops".into()]);
        l.exempt_groups = Some(vec!["breakglass".into()]);
        let (out, _) = run(l.clone());
        assert_eq!(out.name(), "not_required");
        assert!(out.reason().contains("breakglass"), "{}", out.reason());
        // Groups NSS could not list exempt no one; a name NSS does not know is never exempt.
        l.exempt_groups = None;
        assert_eq!(run(l).0, Outcome::WrongCode { tries: 3 });
        let mut l = login("ansible");
        l.account = Account::Unknown;
        assert_eq!(run(l).0.name(), "unknown_user");
        // Matched on the name NSS gives, not the one typed.
        let mut l = login("Ansible");
        l.account = Account::Known("ansible".into());
        assert_eq!(run(l).0.name(), "not_required");
        let mut l = login("ansible");
        l.account = Account::Known("ansible2".into());
        assert_ne!(run(l).0.name(), "not_required");
    }

    #[test]
    fn one_prompt_for_password_and_code() {
        let run = |answer: &'static str, accept: &str| {
            let mut conv = Script::answering(&[answer]);
            let mut api = fake("123456");
            let mut c = codes();
            let cfg = config(&format!(
                "combined = true\n[recovery]\naccept = \"{accept}\""
            ));
            let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut c);
            (out, conv, api)
        };
        let (out, conv, api) = run("pass 1234123456", "unavailable");
        assert_eq!(out, Outcome::Verified { tries: 1 });
        assert_eq!(conv.kept.as_deref(), Some("pass 1234"));
        assert_eq!(conv.seen, ["prompt:Password and tru.ID code: "]);
        assert!(
            api.calls.iter().any(|c| c.ends_with("verify ch1 123456")),
            "{:?}",
            api.calls
        );
        // One try: a wrong code ends it, and no password goes to the stack.
        let (out, conv, _) = run("pass111111", "unavailable");
        assert_eq!(out, Outcome::WrongCode { tries: 1 });
        assert_eq!(conv.kept, None);
        // No code after the password: nothing is sent.
        let (out, conv, api) = run("password", "unavailable");
        assert_eq!(out, Outcome::WrongCode { tries: 1 });
        assert!(conv.seen.contains(&format!("error:{MSG_COMBINED}")));
        assert!(api.calls.iter().all(|c| !c.starts_with("verify")));
        // A recovery code in the code's place.
        let (out, conv, _) = run("hunter2ab2c-def3-ghjk", "always");
        assert_eq!(out, Outcome::RecoveryUsed { tries: 1, left: 1 });
        assert_eq!(conv.kept.as_deref(), Some("hunter2"));
        // An outage failmode = "safe" lets in hands the password on too.
        let mut conv = Script::answering(&["pw123456"]);
        let mut api = fake("123456");
        api.fail_create = Some(ApiError::Unavailable("down".into()));
        let cfg = config("combined = true\nfailmode = \"safe\"");
        let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut codes());
        assert_eq!(out.name(), "unavailable_allowed");
        assert_eq!(conv.kept.as_deref(), Some("pw"));
        // Under secure it is refused, and nothing is handed on.
        let mut conv = Script::answering(&["pw123456"]);
        let cfg = config("combined = true");
        let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut codes());
        assert_eq!(out.name(), "unavailable_denied");
        assert_eq!(conv.kept, None);
        // Only the code is cut off: an empty password is the stack's to refuse.
        let (out, conv, _) = run("123456", "unavailable");
        assert_eq!(out, Outcome::Verified { tries: 1 });
        assert_eq!(conv.kept.as_deref(), Some(""));
    }

    /// tru.ID as a script: which code is right, and which calls fail.
    #[derive(Default)]
    struct FakeApi {
        right_code: &'static str,
        calls: Vec<String>,
        fail_create: Option<ApiError>,
        fail_verify: Option<ApiError>,
        verify_status: Option<ChallengeStatus>,
        lookup: Option<&'static str>,
        push_factor: bool,
        push_answers: VecDeque<ChallengeStatus>,
        fail_poll: Option<ApiError>,
        paused: Duration,
        journal: Journal,
    }

    impl Authenticator for FakeApi {
        fn prepare(&mut self, ahead: Ahead<'_>) {
            self.journal.borrow_mut().push(match ahead {
                Ahead::Challenge { factor, .. } => format!("prepare challenge {factor}"),
                Ahead::LookupThenChallenge { user, .. } => format!("prepare lookup {user}"),
            });
        }
        fn create_challenge(&mut self, f: &FactorId, r: &str) -> Result<String, ApiError> {
            self.calls.push(format!("create {f} {r}"));
            self.journal.borrow_mut().push("create".into());
            match &self.fail_create {
                Some(e) => Err(e.clone()),
                None => Ok(format!("ch{}", self.calls.len())),
            }
        }
        fn verify(
            &mut self,
            _f: &FactorId,
            c: &str,
            code: &Secret,
        ) -> Result<ChallengeStatus, ApiError> {
            self.calls.push(format!("verify {c} {}", code.expose()));
            if let Some(e) = &self.fail_verify {
                return Err(e.clone());
            }
            if let Some(s) = &self.verify_status {
                return Ok(s.clone());
            }
            Ok(if code.expose() == self.right_code {
                ChallengeStatus::Verified
            } else {
                ChallengeStatus::Failed
            })
        }
        fn find_factor(&mut self, user: &str) -> Result<Option<FactorId>, ApiError> {
            self.calls.push(format!("find {user}"));
            Ok(self.lookup.and_then(FactorId::parse))
        }
        fn factor_kind(&mut self, _f: &FactorId) -> Result<FactorKind, ApiError> {
            self.calls.push("kind".into());
            Ok(if self.push_answers.is_empty() && !self.push_factor {
                FactorKind::Totp
            } else {
                FactorKind::Push
            })
        }
        fn start_push(
            &mut self,
            _f: &FactorId,
            r: &str,
            phone: &str,
            message: Option<&str>,
        ) -> Result<String, ApiError> {
            self.calls
                .push(format!("push {r} {phone} {}", message.unwrap_or("-")));
            Ok(format!("p{}", self.calls.len()))
        }
        fn challenge_status(
            &mut self,
            _f: &FactorId,
            c: &str,
        ) -> Result<ChallengeStatus, ApiError> {
            self.calls.push(format!("poll {c}"));
            if let Some(e) = &self.fail_poll {
                return Err(e.clone());
            }
            Ok(self
                .push_answers
                .pop_front()
                .unwrap_or(ChallengeStatus::Pending))
        }
        fn new_factor(&mut self, phone: &str, external: &str) -> Result<NewFactor, ApiError> {
            self.calls.push(format!("new_factor {phone} {external}"));
            if let Some(e) = &self.fail_create {
                return Err(e.clone());
            }
            Ok(NewFactor {
                id: FactorId::parse(NEW_FACTOR).unwrap(),
                uri: Secret::new("otpauth://totp/t:alice?secret=JBSWY3DPEHPK3PXP&issuer=t"),
            })
        }
        fn activate(&mut self, f: &FactorId, code: &Secret) -> Result<bool, ApiError> {
            self.calls.push(format!("activate {f} {}", code.expose()));
            if code.expose() == self.right_code {
                Ok(true)
            } else {
                Err(ApiError::Refused("invalid code".into()))
            }
        }
        fn factor_active(&mut self, f: &FactorId) -> Result<bool, ApiError> {
            self.calls.push(format!("active? {f}"));
            Ok(true)
        }
        fn claim_external_id(&mut self, external: &str) -> Result<bool, ApiError> {
            self.calls.push(format!("claim {external}"));
            Ok(false)
        }
        fn pause(&mut self, wait: Duration) {
            self.paused += wait;
        }
    }

    const FACTOR: &str = "5995afaf-f5d1-47ab-b586-50ad46904eec";

    const NEW_FACTOR: &str = "5995afaf-f5d1-47ab-b586-50ad46904eee";

    /// What the enrolment recorded.
    #[derive(Default)]
    struct Recorded(Vec<String>);

    impl Record for Recorded {
        fn record(&mut self, user: &str, f: &FactorId, phone: &str) -> Result<(), String> {
            self.0.push(format!("{user} {f} {phone}"));
            Ok(())
        }
    }

    /// An unenrolled `bob` past the password, under `unenrolled = "enroll"`.
    fn enrolling(extra: &str) -> (Config, LoginContext) {
        let cfg = config(&format!("unenrolled = \"enroll\"\n{extra}"));
        let mut l = login("bob");
        l.password_given = true;
        l.may_enroll = Some(true);
        (cfg, l)
    }

    #[test]
    fn a_user_without_a_factor_enrolls_at_the_first_login() {
        let (cfg, l) = enrolling("");
        let mut conv = Script::answering(&["+44 7700 900123", "123456"]);
        let mut api = fake("123456");
        let mut rec = Recorded::default();
        let out =
            authenticate_or_enroll(&cfg, &l, &mut conv, &mut api, &mut NoCodes, Some(&mut rec));
        assert_eq!(
            out,
            Outcome::Enrolled {
                factor: FactorId::parse(NEW_FACTOR).unwrap()
            }
        );
        assert_eq!(rec.0, [format!("bob {NEW_FACTOR} 447700900123")]);
        assert_eq!(
            api.calls,
            [
                "claim bob".to_string(),
                "new_factor 447700900123 bob".to_string(),
                format!("activate {NEW_FACTOR} 123456")
            ]
        );
        assert_eq!(conv.seen[0], format!("info:{}", enrolment::MSG_START));
        assert_eq!(conv.seen[1], format!("prompt:{}", enrolment::MSG_PHONE));
        // The QR code and the key are in the code prompt itself (sshd shows info only with a
        // prompt).
        let qr = &conv.seen[2];
        assert!(
            qr.starts_with("prompt:") && qr.contains(['\u{2580}', '\u{2584}', '\u{2588}']),
            "{qr}"
        );
        assert!(conv.seen[2].contains("enter this key by hand: JBSWY3DPEHPK3PXP"));
        assert!(conv.seen[2].ends_with(enrolment::MSG_CODE));
    }

    #[test]
    fn enrolment_at_login_needs_every_condition() {
        type Change = Box<dyn Fn(&mut LoginContext)>;
        let cases: Vec<(&str, &str, Change)> = vec![
            ("unenrolled deny", "", Box::new(|_| {})),
            (
                "no password before",
                "",
                Box::new(|l| l.password_given = false),
            ),
            (
                "su or sudo",
                "",
                Box::new(|l| l.controlled_by = Some("AT_SECURE".into())),
            ),
            (
                "not in [enroll] groups",
                "",
                Box::new(|l| l.may_enroll = Some(false)),
            ),
            ("groups unknown", "", Box::new(|l| l.may_enroll = None)),
            (
                "NSS does not know the name",
                "",
                Box::new(|l| l.account = Account::Unknown),
            ),
            ("one prompt", "combined = true", Box::new(|_| {})),
        ];
        for (why, extra, change) in cases {
            let (mut cfg, mut l) = enrolling("");
            if why == "unenrolled deny" {
                cfg.login.unenrolled = Unenrolled::Deny;
            }
            if !extra.is_empty() {
                cfg.login.combined = true;
            }
            change(&mut l);
            let tries = cfg.login.tries;
            let answers: Vec<&'static str> = vec!["123456"; tries as usize];
            let mut conv = Script::answering(&answers);
            let mut api = fake("123456");
            let mut rec = Recorded::default();
            let out =
                authenticate_or_enroll(&cfg, &l, &mut conv, &mut api, &mut NoCodes, Some(&mut rec));
            assert!(
                matches!(
                    out,
                    Outcome::NotEnrolled { ignore: false, .. } | Outcome::UnknownUser { .. }
                ),
                "{why}: {out:?}"
            );
            assert!(api.calls.is_empty(), "{why}: {:?}", api.calls);
            assert!(rec.0.is_empty(), "{why}");
        }
    }

    #[test]
    fn a_failed_enrolment_records_nothing_and_never_lets_in() {
        // Three wrong codes.
        let (cfg, l) = enrolling("failmode = \"safe\"");
        let mut conv = Script::answering(&["+447700900123", "111111", "222222", "333333"]);
        let mut api = fake("123456");
        let mut rec = Recorded::default();
        let out =
            authenticate_or_enroll(&cfg, &l, &mut conv, &mut api, &mut NoCodes, Some(&mut rec));
        assert!(matches!(out, Outcome::EnrolmentFailed { .. }), "{out:?}");
        assert!(rec.0.is_empty());
        // Three phone numbers that are none: no factor made.
        let mut conv = Script::answering(&["12", "+0123", "call me"]);
        let mut api = fake("123456");
        let out =
            authenticate_or_enroll(&cfg, &l, &mut conv, &mut api, &mut NoCodes, Some(&mut rec));
        assert!(matches!(out, Outcome::EnrolmentFailed { .. }), "{out:?}");
        assert_eq!(api.calls, ["claim bob"], "no factor made");
        // tru.ID down, under safe: denied (a user without a factor has no second factor).
        let mut conv = Script::answering(&["+447700900123"]);
        let mut api = fake("123456");
        api.fail_create = Some(ApiError::Unavailable("down".into()));
        let out =
            authenticate_or_enroll(&cfg, &l, &mut conv, &mut api, &mut NoCodes, Some(&mut rec));
        assert!(
            matches!(out, Outcome::Unavailable { let_in: false, .. }),
            "{out:?}"
        );
        assert_eq!(
            crate::pam::pam_code(&out),
            ::pam::constants::PamResultCode::PAM_AUTHINFO_UNAVAIL
        );
        assert!(rec.0.is_empty());
        // Without a record (truid-pam test), such a user is denied as under deny.
        let mut conv = Script::answering(&["1", "2", "3"]);
        let mut api = fake("123456");
        let out = authenticate(&cfg, &l, &mut conv, &mut api, &mut NoCodes);
        assert!(
            matches!(out, Outcome::NotEnrolled { ignore: false, .. }),
            "{out:?}"
        );
    }

    fn config(extra_login: &str) -> Config {
        let text = format!(
            "[api]\nbase_url = \"https://127.0.0.1:1\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             [login]\nprompt = \"Code please: \"\n{extra_login}\n[users]\nalice = \"{FACTOR}\"\n"
        );
        Config::parse(Path::new("/nonexistent.toml"), &text).unwrap()
    }

    /// A login whose user NSS knows under the same name.
    fn login(user: &str) -> LoginContext {
        LoginContext {
            user: user.into(),
            service: "sshd".into(),
            rhost: Some("192.0.2.7".into()),
            nonce: "n0nce".into(),
            account: Account::Known(user.into()),
            ..Default::default()
        }
    }

    fn fake(code: &'static str) -> FakeApi {
        FakeApi {
            right_code: code,
            ..Default::default()
        }
    }

    #[test]
    fn the_challenge_is_asked_for_ahead_of_each_code_that_will_need_one() {
        let run = |cfg: &Config, user: &str, answers: &[&'static str], lookup: bool| {
            let mut conv = Script::answering(answers);
            let mut api = fake("123456");
            if lookup {
                api.lookup = Some(FACTOR);
            }
            api.journal = conv.journal.clone();
            let out = authenticate(cfg, &login(user), &mut conv, &mut api, &mut NoCodes);
            let journal = conv.journal.borrow().clone();
            (out, journal)
        };
        // Before the first prompt; again after a wrong code used the challenge up; not after a
        // malformed one (its challenge is still unused), nor after the last try.
        let (out, journal) = run(&config(""), "alice", &["111111", "12", "123456"], false);
        assert_eq!(out, Outcome::Verified { tries: 3 });
        let ahead = format!("prepare challenge {FACTOR}");
        assert_eq!(
            journal,
            [&ahead, "prompt", "create", &ahead, "prompt", "prompt", "create"]
        );
        let (_, journal) = run(&config("tries = 1"), "alice", &["111111"], false);
        assert_eq!(journal, [&ahead, "prompt", "create"]);
        // lookup = true: the lookup too, before the prompt.
        let (out, journal) = run(&config("lookup = true"), "carol", &["123456"], true);
        assert_eq!(out, Outcome::Verified { tries: 1 });
        assert_eq!(journal, ["prepare lookup carol", "prompt", "create"]);
        // No factor: nothing is asked for, the prompts come all the same.
        let (_, journal) = run(&config(""), "mallory", &["1", "2", "3"], false);
        assert_eq!(journal, ["prompt", "prompt", "prompt"]);
    }

    #[test]
    fn right_code_first_time() {
        let mut conv = Script::answering(&["123456"]);
        let mut api = fake("123456");
        let out = authenticate(
            &config(""),
            &login("alice"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 1 });
        assert_eq!(conv.seen, ["prompt:Code please: "]);
        assert_eq!(
            api.calls,
            [
                format!("create {FACTOR} pam_truid/sshd/192.0.2.7/alice/n0nce"),
                "verify ch1 123456".to_string()
            ]
        );
    }

    #[test]
    fn wrong_then_right_uses_a_fresh_challenge() {
        let mut conv = Script::answering(&["111111", "123456"]);
        let mut api = fake("123456");
        let out = authenticate(
            &config(""),
            &login("alice"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 2 });
        assert_eq!(
            conv.seen,
            [
                "prompt:Code please: ",
                &format!("error:{MSG_TRY_AGAIN}"),
                "prompt:Code please: "
            ]
        );
        assert_eq!(api.calls.len(), 4);
        assert_eq!(api.calls[1], "verify ch1 111111");
        assert_eq!(api.calls[3], "verify ch3 123456");
    }

    #[test]
    fn tries_used_up() {
        let mut conv = Script::answering(&["111111", "222222"]);
        let mut api = fake("123456");
        let out = authenticate(
            &config("tries = 2"),
            &login("alice"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::WrongCode { tries: 2 });
        assert_eq!(
            conv.seen,
            [
                "prompt:Code please: ",
                &format!("error:{MSG_TRY_AGAIN}"),
                "prompt:Code please: "
            ]
        );
    }

    #[test]
    fn malformed_codes_are_never_sent_and_use_a_try() {
        for bad in [
            "",
            "12345",
            "123456789",
            "12 456",
            "abcdef",
            "１２３４５６",
            "123\u{0}56",
            "1234567\n",
        ] {
            let mut conv = Script::answering(&[bad]);
            let mut api = fake("123456");
            let out = authenticate(
                &config("tries = 1"),
                &login("alice"),
                &mut conv,
                &mut api,
                &mut NoCodes,
            );
            assert_eq!(out, Outcome::WrongCode { tries: 1 }, "{bad:?}");
            // Never sent, and nothing created for it.
            assert!(api.calls.is_empty(), "{bad:?}: {:?}", api.calls);
            assert_eq!(conv.seen[1], format!("error:{MSG_MALFORMED}"));
        }
        let long: &'static str = Box::leak("7".repeat(10_000).into_boxed_str());
        let mut conv = Script::answering(&[long, "123456"]);
        let mut api = fake("123456");
        let out = authenticate(
            &config(""),
            &login("alice"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 2 });
        // The malformed try created nothing: one create, one verify, for the good code.
        assert_eq!(api.calls.len(), 2, "{:?}", api.calls);
    }

    #[test]
    fn expired_challenge_is_a_used_try() {
        let mut conv = Script::answering(&["123456", "123456"]);
        let mut api = fake("123456");
        api.verify_status = Some(ChallengeStatus::Expired);
        let out = authenticate(
            &config("tries = 2"),
            &login("alice"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::WrongCode { tries: 2 });
        assert_eq!(conv.seen[1], format!("error:{MSG_EXPIRED}"));
    }

    #[test]
    fn wrong_code_refused_by_tru_id_is_never_a_service_failure() {
        for failmode in ["secure", "safe"] {
            let mut conv = Script::answering(&["111111"]);
            let mut api = fake("123456");
            api.fail_verify = Some(ApiError::Refused("400 Bad Request: invalid code".into()));
            let cfg = config(&format!("tries = 1\nfailmode = \"{failmode}\""));
            let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut NoCodes);
            assert_eq!(out, Outcome::WrongCode { tries: 1 }, "{failmode}");
        }
    }

    #[test]
    fn unavailable_before_any_code_follows_failmode() {
        for (failmode, let_in) in [("secure", false), ("safe", true)] {
            // On create: the prompt came first, the code was never sent.
            let mut conv = Script::answering(&["123456"]);
            let mut api = fake("123456");
            api.fail_create = Some(ApiError::Unavailable("connect: refused".into()));
            let cfg = config(&format!("failmode = \"{failmode}\""));
            let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut NoCodes);
            assert_eq!(
                out,
                Outcome::Unavailable {
                    tries: 1,
                    reason: "connect: refused".into(),
                    let_in
                }
            );
            let mut expect = vec!["prompt:Code please: ".to_string()];
            if !let_in {
                expect.push(format!("error:{MSG_UNAVAILABLE}"));
            }
            assert_eq!(conv.seen, expect);
            assert!(api.calls.iter().all(|c| !c.starts_with("verify")));
        }
    }

    #[test]
    fn safe_does_not_apply_once_a_code_was_sent() {
        for failmode in ["secure", "safe"] {
            let mut conv = Script::answering(&["111111"]);
            let mut api = fake("123456");
            api.fail_verify = Some(ApiError::Unavailable(
                "no answer within [api] timeout".into(),
            ));
            let cfg = config(&format!("failmode = \"{failmode}\""));
            let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut NoCodes);
            assert_eq!(out.name(), "unavailable_denied", "{failmode}");
            assert_eq!(out.tries(), 1);
            if failmode == "safe" {
                assert!(
                    out.reason().contains("does not apply: a code was sent"),
                    "{}",
                    out.reason()
                );
            }
            assert_eq!(conv.seen[1], format!("error:{MSG_UNAVAILABLE}"));
        }
    }

    #[test]
    fn safe_does_not_apply_in_a_process_a_local_user_controls() {
        let mut l = login("alice");
        l.controlled_by = Some("the process is setuid or setgid (AT_SECURE)".into());
        let mut conv = Script::answering(&["123456"]);
        let mut api = fake("123456");
        api.fail_create = Some(ApiError::Unavailable(
            "no answer within [api] timeout".into(),
        ));
        let out = authenticate(
            &config("failmode = \"safe\""),
            &l,
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out.name(), "unavailable_denied");
        assert!(
            out.reason().contains(
                "failmode = \"safe\" does not apply: the process is setuid or setgid \
                 (AT_SECURE), so a local user could cause this failure"
            ),
            "{}",
            out.reason()
        );
    }

    #[test]
    fn failed_denies_under_both_failmodes() {
        for failmode in ["secure", "safe"] {
            for on_create in [true, false] {
                let mut conv = Script::answering(&["123456"]);
                let mut api = fake("123456");
                let e = ApiError::Failed("HTTP 429".into());
                if on_create {
                    api.fail_create = Some(e);
                } else {
                    api.fail_verify = Some(e);
                }
                let cfg = config(&format!("failmode = \"{failmode}\""));
                let out = authenticate(&cfg, &login("alice"), &mut conv, &mut api, &mut NoCodes);
                assert_eq!(out.name(), "unavailable_denied", "{failmode} {on_create}");
                assert!(out.reason().contains("no failmode lets this in"));
                assert_eq!(conv.seen[1], format!("error:{MSG_FAILED}"));
            }
        }
    }

    #[test]
    fn the_prompt_comes_before_any_call_for_everyone() {
        // tru.ID down: an enrolled user still sees the prompt first, as one without a factor.
        for user in ["alice", "mallory"] {
            let mut conv = Script::answering(&["123456", "123456", "123456"]);
            let mut api = fake("123456");
            api.fail_create = Some(ApiError::Unavailable("connect: refused".into()));
            let out = authenticate(&config(""), &login(user), &mut conv, &mut api, &mut NoCodes);
            assert_eq!(conv.seen[0], "prompt:Code please: ", "{user}: {out:?}");
        }
        // With lookup, the lookup waits for a well-formed code too.
        let mut conv = Script::answering(&["12", "123456"]);
        let mut api = fake("123456");
        api.lookup = Some(FACTOR);
        let out = authenticate(
            &config("lookup = true"),
            &login("carol"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 2 });
        assert_eq!(conv.seen[0], "prompt:Code please: ");
        assert_eq!(api.calls.len(), 3, "{:?}", api.calls);
        assert_eq!(api.calls[0], "find carol");
        // A user lookup does not find, under deny: the shape of an enrolled user's wrong codes.
        let mut conv = Script::answering(&["111111", "abc", "123456"]);
        let mut api = fake("123456");
        let out = authenticate(
            &config("lookup = true"),
            &login("mallory"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out.name(), "not_enrolled_denied");
        assert_eq!(api.calls, ["find mallory"]);
        assert_eq!(
            conv.seen,
            [
                "prompt:Code please: ".to_string(),
                format!("error:{MSG_TRY_AGAIN}"),
                "prompt:Code please: ".to_string(),
                format!("error:{MSG_MALFORMED}"),
                "prompt:Code please: ".to_string(),
            ]
        );
    }

    #[test]
    fn challenge_refused_denies_whatever_failmode() {
        let mut conv = Script::answering(&["123456"]);
        let mut api = fake("123456");
        api.fail_create = Some(ApiError::Refused("404 Not Found: no such factor".into()));
        let out = authenticate(
            &config("failmode = \"safe\""),
            &login("alice"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out.name(), "refused");
    }

    #[test]
    fn unenrolled_deny_prompts_like_an_enrolled_user_and_asks_nobody() {
        let mut conv = Script::answering(&["111111", "abc", "123456"]);
        let mut api = fake("123456");
        let out = authenticate(
            &config(""),
            &login("mallory"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(
            out,
            Outcome::NotEnrolled {
                ignore: false,
                tries: 3
            }
        );
        assert_eq!(
            conv.seen,
            [
                "prompt:Code please: ".to_string(),
                format!("error:{MSG_TRY_AGAIN}"),
                "prompt:Code please: ".to_string(),
                format!("error:{MSG_MALFORMED}"),
                "prompt:Code please: ".to_string(),
            ]
        );
        assert!(api.calls.is_empty());
    }

    #[test]
    fn unenrolled_ignore_shows_nothing() {
        let mut conv = Script::answering(&[]);
        let mut api = fake("123456");
        let out = authenticate(
            &config("unenrolled = \"ignore\""),
            &login("bob"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out.name(), "not_enrolled_ignored");
        assert!(conv.seen.is_empty() && api.calls.is_empty());
    }

    #[test]
    fn lookup_finds_a_factor_for_a_user_missing_from_the_map() {
        let mut conv = Script::answering(&["123456"]);
        let mut api = fake("123456");
        api.lookup = Some(FACTOR);
        let out = authenticate(
            &config("lookup = true"),
            &login("carol"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 1 });
        assert_eq!(api.calls[0], "find carol");
    }

    #[test]
    fn conversation_failure() {
        let mut conv = Script {
            fail_prompt: true,
            ..Default::default()
        };
        let mut api = fake("123456");
        let out = authenticate(
            &config(""),
            &login("alice"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out.name(), "conversation_error");
    }

    #[test]
    fn bad_user_names_are_refused_before_anything() {
        for user in ["", "a\nb", "x\u{1b}[2J", &"a".repeat(10_000)] {
            let mut conv = Script::answering(&[]);
            let mut api = fake("123456");
            let out = authenticate(&config(""), &login(user), &mut conv, &mut api, &mut NoCodes);
            assert_eq!(out.name(), "bad_input", "{user:?}");
            assert!(api.calls.is_empty() && conv.seen.is_empty());
        }
    }

    #[test]
    fn su_asks_for_the_callers_factor_when_configured() {
        let mut l = login("root");
        l.service = "su".into();
        l.ruser = Some("alice".into());
        l.account = Account::Known("alice".into());
        let mut conv = Script::answering(&["123456"]);
        let mut api = fake("123456");
        let out = authenticate(
            &config("su = \"caller\""),
            &l,
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 1 });
        // Default: the target user (root), who has no factor.
        l.account = Account::Known("root".into());
        let mut conv = Script::answering(&["123456", "123456", "123456"]);
        let out = authenticate(&config(""), &l, &mut conv, &mut api, &mut NoCodes);
        assert_eq!(out.name(), "not_enrolled_denied");
    }

    #[test]
    fn the_name_nss_gives_is_the_one_that_counts() {
        // Typed `Alice`, NSS (case-insensitive) says `alice`: alice's factor, under ignore too.
        let mut l = login("Alice");
        l.account = Account::Known("alice".into());
        let mut conv = Script::answering(&["111111"]);
        let mut api = fake("123456");
        let cfg = config("unenrolled = \"ignore\"\ntries = 1");
        let out = authenticate(&cfg, &l, &mut conv, &mut api, &mut NoCodes);
        assert_eq!(out, Outcome::WrongCode { tries: 1 });
        assert!(
            api.calls[0].starts_with(&format!("create {FACTOR} pam_truid/sshd/192.0.2.7/alice/"))
        );
        // Never resolved: denied before anything.
        l.account = Account::Unresolved;
        let mut conv = Script::answering(&[]);
        let out = authenticate(&cfg, &l, &mut conv, &mut api, &mut NoCodes);
        assert_eq!(out.name(), "bad_input");
    }

    #[test]
    fn a_users_key_nss_names_otherwise_denies_rather_than_stands_aside() {
        // [users] says `Alice`, NSS says the account is `alice`.
        let text = "[api]\nbase_url = \"https://127.0.0.1:1\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             [login]\nunenrolled = \"ignore\"\n[users]\nAlice = \"5995afaf-f5d1-47ab-b586-50ad46904eec\"\n";
        let cfg = Config::parse(Path::new("/nonexistent.toml"), text).unwrap();
        let mut l = login("Alice");
        l.account = Account::Known("alice".into());
        let mut conv = Script::answering(&[]);
        let mut api = fake("123456");
        let out = authenticate(&cfg, &l, &mut conv, &mut api, &mut NoCodes);
        assert_eq!(out.name(), "refused", "{out:?}");
        assert!(out.reason().contains("getent passwd"), "{}", out.reason());
    }

    #[test]
    fn a_name_nss_does_not_know_is_denied_under_both_modes() {
        for account in [Account::Unknown, Account::Failed("NSS down".into())] {
            let mut l = login("ghost");
            l.account = account.clone();
            let mut api = fake("123456");
            // deny: the prompts of an unenrolled user, then denied.
            let mut conv = Script::answering(&["111111", "222222", "333333"]);
            let out = authenticate(&config(""), &l, &mut conv, &mut api, &mut NoCodes);
            assert_eq!(out.name(), "unknown_user", "{account:?}");
            assert_eq!(out.tries(), 3);
            assert_eq!(conv.seen.len(), 5, "{:?}", conv.seen);
            // ignore: denied (not PAM_IGNORE), no prompt.
            let mut conv = Script::answering(&[]);
            let out = authenticate(
                &config("unenrolled = \"ignore\""),
                &l,
                &mut conv,
                &mut api,
                &mut NoCodes,
            );
            assert_eq!(out.name(), "unknown_user");
            assert!(conv.seen.is_empty());
            assert!(api.calls.is_empty(), "{:?}", api.calls);
        }
    }

    #[test]
    fn lookup_searches_for_the_prefixed_name() {
        let mut conv = Script::answering(&["123456"]);
        let mut api = fake("123456");
        api.lookup = Some(FACTOR);
        let cfg = config("lookup = true\nlookup_prefix = \"unix:\"");
        let out = authenticate(
            &cfg,
            &login("bob@ad.example.com"),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 1 });
        assert_eq!(api.calls[0], "find unix:bob@ad.example.com");
    }

    #[test]
    fn groups_limit_who_needs_the_factor() {
        let cfg = config("groups = [\"admins\"]");
        let mut l = login("alice");
        l.groups = Some(vec!["users".into()]);
        let mut conv = Script::answering(&[]);
        let mut api = fake("123456");
        assert_eq!(
            authenticate(&cfg, &l, &mut conv, &mut api, &mut NoCodes).name(),
            "not_required"
        );
        l.groups = Some(vec!["users".into(), "admins".into()]);
        let mut conv = Script::answering(&["123456"]);
        assert_eq!(
            authenticate(&cfg, &l, &mut conv, &mut api, &mut NoCodes),
            Outcome::Verified { tries: 1 }
        );
    }

    fn push_config(extra: &str) -> Config {
        config(&format!(
            "push_timeout = 5\n{extra}\n[phones]\nalice = \"+447700900000\""
        ))
    }

    fn push_login() -> LoginContext {
        let mut l = login("alice");
        l.service = "sudo".into();
        l.host = "web-3".into();
        l
    }

    const PUSH_PROMPT: &str =
        "prompt:Press Enter to approve on your phone, or type a tru.ID code: ";

    #[test]
    fn push_approved_after_enter() {
        let mut conv = Script::answering(&[""]);
        let mut api = fake("123456");
        api.push_answers = [ChallengeStatus::Pending, ChallengeStatus::Verified].into();
        let out = authenticate(
            &push_config(""),
            &push_login(),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 1 });
        assert_eq!(
            conv.seen,
            [
                PUSH_PROMPT.to_string(),
                "info:Approve the request on your phone: \"sudo login as alice on web-3\"".into()
            ]
        );
        assert_eq!(api.calls[0], "kind");
        assert!(
            api.calls[1].starts_with("push pam_truid/sudo/192.0.2.7/alice/n0nce 447700900000 sudo login as alice on web-3"),
            "{:?}",
            api.calls
        );
        assert_eq!(api.paused, POLL_FIRST);
    }

    #[test]
    fn push_denied_then_code_typed() {
        let mut conv = Script::answering(&["", "123456"]);
        let mut api = fake("123456");
        api.push_answers = [ChallengeStatus::Failed].into();
        let out = authenticate(
            &push_config(""),
            &push_login(),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 2 });
        assert_eq!(conv.seen[2], format!("error:{MSG_PUSH_DENIED}"));
        assert_eq!(conv.seen[3], PUSH_PROMPT);
        assert!(api.calls.iter().any(|c| c.starts_with("create")));
    }

    #[test]
    fn push_unanswered_until_the_push_timeout() {
        let mut conv = Script::answering(&[""]);
        let mut api = fake("123456");
        api.push_factor = true;
        let out = authenticate(
            &push_config("tries = 1"),
            &push_login(),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::WrongCode { tries: 1 });
        assert_eq!(api.paused, Duration::from_secs(5));
        // Polls back off to one a second: 0.25 + 0.5 + 1 + 1 + 1 + 1 + 0.25.
        let polls = api.calls.iter().filter(|c| c.starts_with("poll")).count();
        assert_eq!(polls, 8, "{:?}", api.calls);
    }

    #[test]
    fn push_failing_mid_poll_denies_under_both_failmodes() {
        // The push went out: a failure now could hide a denial on the phone.
        for (mode, let_in) in [("secure", false), ("safe", false)] {
            let mut conv = Script::answering(&[""]);
            let mut api = fake("123456");
            api.push_factor = true;
            api.fail_poll = Some(ApiError::Unavailable("HTTP 503".into()));
            let cfg = push_config(&format!("failmode = \"{mode}\""));
            let out = authenticate(&cfg, &push_login(), &mut conv, &mut api, &mut NoCodes);
            assert_eq!(out.name(), "unavailable_denied", "{mode}");
            assert_eq!(out.tries(), 1);
            assert!(matches!(out, Outcome::Unavailable { let_in: l, .. } if l == let_in));
        }
    }

    #[test]
    fn push_method_refuses_typed_codes_and_totp_method_never_pushes() {
        let mut conv = Script::answering(&["123456"]);
        let mut api = fake("123456");
        api.push_factor = true;
        let out = authenticate(
            &push_config("method = \"push\"\ntries = 1"),
            &push_login(),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::WrongCode { tries: 1 });
        assert!(api.calls.iter().all(|c| !c.starts_with("verify")));
        let mut conv = Script::answering(&["123456"]);
        let mut api = fake("123456");
        api.push_factor = true;
        let out = authenticate(
            &push_config("method = \"totp\""),
            &push_login(),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 1 });
        assert_eq!(conv.seen, ["prompt:Code please: "]);
        assert!(api.calls.iter().all(|c| c != "kind"));
    }

    #[test]
    fn auto_without_a_phone_is_totp_without_asking_the_kind() {
        let mut conv = Script::answering(&["123456"]);
        let mut api = fake("123456");
        let out = authenticate(
            &config(""),
            &push_login(),
            &mut conv,
            &mut api,
            &mut NoCodes,
        );
        assert_eq!(out, Outcome::Verified { tries: 1 });
        assert_eq!(api.calls.len(), 2, "{:?}", api.calls);
    }

    #[test]
    fn reference_id_keeps_only_safe_characters() {
        let mut l = login("alice");
        l.rhost = Some("evil;$(rm -rf)\u{1b}[1m.example".into());
        let r = reference_id(&l, "alice");
        assert_eq!(r, "pam_truid/sshd/evilrm-rf1m.example/alice/n0nce");
    }
}
