//! Enrolling a user: a factor made at tru.ID, its QR code shown in the person's own
//! conversation, activated with the first code, and only then recorded. One flow for the ways
//! in that need no administrator: `truid-pam enroll` run by the user (the agent runs this for
//! them) and the first login under `unenrolled = "enroll"`.

use crate::api::ApiError;
use crate::config::{normalize_phone, Config, FactorId};
use crate::ports::{Authenticator, ConvError, Conversation};
use crate::secret::Secret;

use std::path::Path;

/// Codes a person may type before the factor is left PENDING.
pub const ACTIVATION_TRIES: u32 = 3;
/// Phone numbers a person may type before enrolment stops.
const PHONE_TRIES: u32 = 3;

pub const MSG_PHONE: &str =
    "Your mobile number for tru.ID, with the country code (e.g. +447700900000): ";
pub const MSG_BAD_PHONE: &str =
    "That is not a phone number with its country code: type + and the country code, then the number (e.g. +447700900000).";
pub const MSG_CODE: &str = "Code shown by the app: ";
pub const MSG_WRONG_CODE: &str =
    "tru.ID refused that code: wait for the app's next code and type it.";
pub const MSG_HAS_FACTOR: &str =
    "You have a tru.ID factor already: ask your administrator to replace it.";
pub const MSG_START: &str =
    "You have no tru.ID factor yet: enroll now with the tru.ID Authenticator on your phone.";

/// Where an enrolment is recorded once its factor is ACTIVE.
pub trait Record {
    fn record(&mut self, user: &str, factor: &FactorId, phone_digits: &str) -> Result<(), String>;
}

/// `[users]` and `[phones]` of the config file, written as the CLI writes them (comments kept,
/// atomically, under the lock). With `lookup = true` nothing is written: the module finds the
/// factor at tru.ID by its external user ID.
pub struct ConfigFile<'a> {
    pub path: &'a Path,
    pub lookup: bool,
}

impl Record for ConfigFile<'_> {
    fn record(&mut self, user: &str, factor: &FactorId, phone_digits: &str) -> Result<(), String> {
        if self.lookup {
            return Ok(());
        }
        crate::config_edit::update(self.path, |doc| {
            crate::config_edit::set_user(doc, user, factor.as_str());
            crate::config_edit::set_phone(doc, user, phone_digits);
            Ok(())
        })
    }
}

/// How an enrolment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Enrolled {
    /// ACTIVE at tru.ID and recorded.
    Active {
        factor: FactorId,
    },
    /// The user has an ACTIVE factor: replacing it takes the administrator.
    HasFactor,
    /// No usable phone number was typed.
    BadPhone,
    /// No code activated the factor; it is left PENDING (it lets no one in).
    NotActivated {
        factor: FactorId,
    },
    /// tru.ID refused a request or could not be reached; nothing was recorded.
    Api(ApiError),
    /// ACTIVE at tru.ID, but the config could not be written.
    NotRecorded {
        factor: FactorId,
        reason: String,
    },
    Conv(String),
}

impl Enrolled {
    /// The words for the log line and the person.
    pub fn reason(&self) -> String {
        match self {
            Enrolled::Active { factor } => format!("enrolled factor {factor}"),
            Enrolled::HasFactor => "the user has an ACTIVE factor; only the administrator can replace it (truid-pam enroll --force)".into(),
            Enrolled::BadPhone => "no usable phone number was typed".into(),
            Enrolled::NotActivated { factor } => format!(
                "no code activated factor {factor} in {ACTIVATION_TRIES} tries; it is left PENDING"
            ),
            Enrolled::Api(e) => format!("tru.ID: {e}"),
            Enrolled::NotRecorded { factor, reason } => format!(
                "factor {factor} is ACTIVE but could not be recorded ({reason}); ask the administrator to add it"
            ),
            Enrolled::Conv(why) => why.clone(),
        }
    }
}

/// Enrolls `user` (the name NSS gives, already allowed by the caller's policy): the phone
/// (asked unless given), the factor, its QR code, the first code, the record.
pub fn enroll(
    cfg: &Config,
    user: &str,
    phone: Option<&str>,
    conv: &mut impl Conversation,
    api: &mut impl Authenticator,
    record: &mut dyn Record,
) -> Enrolled {
    let external = format!("{}{user}", cfg.login.lookup_prefix);
    match has_active_factor(cfg, user, &external, api) {
        Ok(true) => return Enrolled::HasFactor,
        Ok(false) => {}
        Err(e) => return Enrolled::Api(e),
    }
    let phone = match phone.map(normalize_phone) {
        Some(Some(p)) => p,
        Some(None) => return Enrolled::BadPhone,
        None => match ask_phone(conv) {
            Ok(Some(p)) => p,
            Ok(None) => return Enrolled::BadPhone,
            Err(ConvError(why)) => return Enrolled::Conv(why),
        },
    };
    let factor = match api.new_factor(&phone, &external) {
        Ok(f) => f,
        Err(e) => return Enrolled::Api(e),
    };
    // sshd shows a keyboard-interactive client messages only with a next prompt, so the QR
    // code is the first code prompt's text.
    let mut prompt = match qr_text(factor.uri.expose()) {
        Some(qr) => format!(
            "{qr}\nScan this QR code with the tru.ID Authenticator (or any TOTP app){}.\n{MSG_CODE}",
            otpauth_secret(factor.uri.expose())
                .map(|k| format!(", or enter this key by hand: {}", k.expose()))
                .unwrap_or_default()
        ),
        None => MSG_CODE.to_string(),
    };
    for _ in 0..ACTIVATION_TRIES {
        let code = match conv.prompt_secret(&prompt) {
            Ok(c) => c,
            Err(ConvError(why)) => return Enrolled::Conv(why),
        };
        prompt = MSG_CODE.to_string();
        if !crate::flow::code_is_well_formed(code.expose()) {
            conv.error(crate::flow::MSG_MALFORMED);
            continue;
        }
        match api.activate(&factor.id, &code) {
            Ok(true) => {
                return match record.record(user, &factor.id, &phone) {
                    Ok(()) => Enrolled::Active { factor: factor.id },
                    Err(reason) => Enrolled::NotRecorded {
                        factor: factor.id,
                        reason,
                    },
                }
            }
            // A wrong code is a 4xx about the code, or a factor left PENDING.
            Ok(false) | Err(ApiError::Refused(_)) => conv.error(MSG_WRONG_CODE),
            Err(e) => return Enrolled::Api(e),
        }
    }
    Enrolled::NotActivated { factor: factor.id }
}

/// Whether tru.ID holds an ACTIVE factor for the user: the one `[users]` names, or one under
/// the external user ID (which lookup would find, and which a new factor could not take).
/// Factors under that ID that are not ACTIVE, left PENDING by an enrolment that did not
/// finish, are retired here, so that one failed try never blocks the next.
fn has_active_factor(
    cfg: &Config,
    user: &str,
    external: &str,
    api: &mut impl Authenticator,
) -> Result<bool, ApiError> {
    if let Some(f) = cfg.users.get(user) {
        if api.factor_active(f)? {
            return Ok(true);
        }
    }
    api.claim_external_id(external)
}

fn ask_phone(conv: &mut impl Conversation) -> Result<Option<String>, ConvError> {
    for _ in 0..PHONE_TRIES {
        let typed = conv.prompt_echo(MSG_PHONE)?;
        let cleaned: String = typed
            .expose()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
            .collect();
        if let Some(p) = normalize_phone(&cleaned) {
            return Ok(Some(p));
        }
        conv.error(MSG_BAD_PHONE);
    }
    Ok(None)
}

/// The QR code of `uri` as text (two rows of modules a line), light on dark as terminals show
/// it best; `None` if the URI is too long for a QR code.
pub fn qr_text(uri: &str) -> Option<String> {
    let code = qrcode::QrCode::new(uri.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// The base32 secret of an `otpauth://` URI, for typing in by hand.
pub fn otpauth_secret(uri: &str) -> Option<Secret> {
    let url = reqwest::Url::parse(uri).ok()?;
    let secret = url
        .query_pairs()
        .find(|(k, _)| k == "secret")
        .map(|(_, v)| Secret::new(v.into_owned()))?;
    secret
        .expose()
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'=')
        .then_some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_from_uri() {
        let s = otpauth_secret("otpauth://totp/Acme:alice?secret=JBSWY3DPEHPK3PXP&issuer=Acme")
            .unwrap();
        assert_eq!(s.expose(), "JBSWY3DPEHPK3PXP");
        assert!(otpauth_secret("otpauth://totp/x?secret=a%1bb").is_none());
    }

    #[test]
    fn qr_is_drawn() {
        let q = qr_text("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP").unwrap();
        assert!(q.lines().count() > 10);
    }
}
