//! What the login and enrolment flows talk to, as traits: the person (`Conversation`), tru.ID
//! (`Authenticator`) and the recovery codes (`Recovery`). Apart from `flow` so that the flows,
//! the API client and the agent all depend on these, and none on another's code.

use crate::api::{ApiError, ChallengeStatus, FactorKind};
use crate::config::FactorId;
use crate::recovery::Used;
use crate::secret::Secret;
use std::time::Duration;

/// What the flow needs to say to and ask of the person logging in.
pub trait Conversation {
    /// Asks for a secret answer without echo (`PAM_PROMPT_ECHO_OFF`).
    fn prompt_secret(&mut self, text: &str) -> Result<Secret, ConvError>;
    /// Asks for an answer shown as it is typed (`PAM_PROMPT_ECHO_ON`): a phone number.
    fn prompt_echo(&mut self, text: &str) -> Result<Secret, ConvError> {
        self.prompt_secret(text)
    }
    /// A message (`PAM_TEXT_INFO`); failures are ignored, the login does not depend on them.
    fn info(&mut self, text: &str);
    /// An error message (`PAM_ERROR_MSG`); failures are ignored too.
    fn error(&mut self, text: &str);
    /// The password part of a one-prompt answer (`combined`), once its code is verified: for
    /// the rest of the stack (PAM_AUTHTOK). By default it is dropped.
    fn keep_password(&mut self, _password: Secret) {}
}

/// The user's recovery codes (`recovery::Store`; a script in the unit tests).
pub trait Recovery {
    /// Uses `code` up if it is one of `user`'s unused codes. `Err`: the codes cannot be read or
    /// the used one cannot be struck off; the login is then refused.
    fn use_code(&mut self, user: &str, code: &Secret) -> Result<Used, String>;
    /// Takes the time a wrong code takes, for a name that has no codes (NSS does not know it).
    fn check_nothing(&mut self, _code: &Secret) {}
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvError(pub String);

/// What the flow needs of tru.ID.
pub trait Authenticator {
    /// Creates a challenge on the factor; returns its ID.
    fn create_challenge(
        &mut self,
        factor: &FactorId,
        reference_id: &str,
    ) -> Result<String, ApiError>;
    /// Sends the code for the challenge; returns the challenge's status after it.
    fn verify(
        &mut self,
        factor: &FactorId,
        challenge_id: &str,
        code: &Secret,
    ) -> Result<ChallengeStatus, ApiError>;
    /// The ACTIVE factor whose external user ID is `user`, if tru.ID holds one.
    fn find_factor(&mut self, user: &str) -> Result<Option<FactorId>, ApiError>;
    /// TOTP or PUSH.
    fn factor_kind(&mut self, factor: &FactorId) -> Result<FactorKind, ApiError>;
    /// Starts a push to the phone (a PhoneCheck, then the push challenge); returns its ID.
    fn start_push(
        &mut self,
        factor: &FactorId,
        reference_id: &str,
        phone: &str,
        message: Option<&str>,
    ) -> Result<String, ApiError>;
    /// The challenge's status now.
    fn challenge_status(
        &mut self,
        factor: &FactorId,
        challenge_id: &str,
    ) -> Result<ChallengeStatus, ApiError>;
    /// Waits between two polls of a push (a fake records it instead).
    fn pause(&mut self, wait: Duration);
    /// Starts, without waiting for it, what the next code will need, so that it is there once
    /// the person has typed the code (which then goes to tru.ID in one round trip). The calls
    /// that need it take it; they must give the same answers as without it. By default nothing
    /// is done ahead.
    fn prepare(&mut self, _ahead: Ahead<'_>) {}
    /// Creates a PENDING factor for the phone, with the external user ID (enrolment).
    fn new_factor(&mut self, _phone: &str, _external_id: &str) -> Result<NewFactor, ApiError> {
        Err(ApiError::Refused("enrolment is not offered here".into()))
    }
    /// Sends the first code to a PENDING factor: whether it is ACTIVE after it.
    fn activate(&mut self, _factor: &FactorId, _code: &Secret) -> Result<bool, ApiError> {
        Err(ApiError::Refused("enrolment is not offered here".into()))
    }
    /// Whether the factor is ACTIVE at tru.ID now.
    fn factor_active(&mut self, _factor: &FactorId) -> Result<bool, ApiError> {
        Err(ApiError::Refused("enrolment is not offered here".into()))
    }
    /// Frees the external user ID for a new factor (tru.ID holds it unique): factors under it
    /// that are not ACTIVE (left PENDING by an enrolment that did not finish) are retired.
    /// `true`: an ACTIVE factor holds it, and stays.
    fn claim_external_id(&mut self, _external_id: &str) -> Result<bool, ApiError> {
        Err(ApiError::Refused("enrolment is not offered here".into()))
    }
}

/// A factor just made: its ID, and the `otpauth://` URI the app scans (it holds the secret).
pub struct NewFactor {
    pub id: FactorId,
    pub uri: Secret,
}

/// What a code will need, asked for while the person reads the prompt and types.
#[derive(Debug, Clone, Copy)]
pub enum Ahead<'a> {
    /// A challenge on the factor, for `create_challenge(factor, reference_id)`.
    Challenge {
        factor: &'a FactorId,
        reference_id: &'a str,
    },
    /// `find_factor(user)` (`lookup = true`), then a challenge on the factor it finds.
    LookupThenChallenge {
        user: &'a str,
        reference_id: &'a str,
    },
}
