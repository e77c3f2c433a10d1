//! The code input path: whatever the person types (as the PAM conversation hands it over, bytes
//! made UTF-8 lossily) and whatever tru.ID answers, only a well-formed code is ever sent, and
//! only a verified code, or tru.ID unavailable under `failmode = "safe"` before any code was
//! sent, lets the login in, or the one recovery code that is right (flag 0x80 also turns on the
//! one prompt for password and code, and `accept = "always"`); only a login let in hands a
//! password part on, and it never holds the code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pam_truid::api::{ApiError, ChallengeStatus, FactorKind};
use pam_truid::config::{Config, FactorId};
use pam_truid::flow::{self, Authenticator, ConvError, Conversation, LoginContext, Outcome};
use pam_truid::secret::Secret;
use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

const FACTOR: &str = "5995afaf-f5d1-47ab-b586-50ad46904eec";
const RIGHT: &str = "123456";
const RIGHT_RECOVERY: &str = "ab2c-def3-ghjk";

struct Person {
    answers: VecDeque<String>,
    kept: Option<String>,
    /// The answer to the last prompt.
    last: String,
}

impl Conversation for Person {
    fn prompt_secret(&mut self, _text: &str) -> Result<Secret, ConvError> {
        let a = self
            .answers
            .pop_front()
            .ok_or_else(|| ConvError("no more answers".into()))?;
        self.last = a.clone();
        Ok(Secret::new(a))
    }
    fn keep_password(&mut self, password: Secret) {
        self.kept = Some(password.expose().to_string());
    }
    fn info(&mut self, text: &str) {
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
    fn error(&mut self, text: &str) {
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
}

/// tru.ID, misbehaving as the fuzzer's flags say.
struct TruId {
    flags: u8,
    calls: u32,
    verified: bool,
    /// A code went out (a verify call was made): from then on no failure may let anyone in.
    sent: bool,
}

impl TruId {
    fn fail(&self, bit: u8) -> Option<ApiError> {
        if self.flags & bit == 0 {
            return None;
        }
        Some(if self.flags & 0x80 != 0 {
            ApiError::Refused("400".into())
        } else {
            ApiError::Unavailable("503".into())
        })
    }
}

impl Authenticator for TruId {
    fn create_challenge(&mut self, _f: &FactorId, _r: &str) -> Result<String, ApiError> {
        self.calls += 1;
        match self.fail(0x04) {
            Some(e) if self.calls.is_multiple_of(2) || self.flags & 0x40 != 0 => Err(e),
            _ => Ok(format!("ch-{}", self.calls)),
        }
    }
    fn verify(
        &mut self,
        _f: &FactorId,
        _c: &str,
        code: &Secret,
    ) -> Result<ChallengeStatus, ApiError> {
        assert!(
            flow::code_is_well_formed(code.expose()),
            "a malformed code was sent: {:?}",
            code.expose()
        );
        self.sent = true;
        if let Some(e) = self.fail(0x08) {
            return Err(e);
        }
        let status = match (code.expose() == RIGHT, self.flags & 0x30) {
            (true, 0x00) => ChallengeStatus::Verified,
            (_, 0x10) => ChallengeStatus::Expired,
            (_, 0x20) => ChallengeStatus::Other("VERIFIED ".into()),
            _ => ChallengeStatus::Failed,
        };
        self.verified = status == ChallengeStatus::Verified;
        Ok(status)
    }
    fn find_factor(&mut self, _user: &str) -> Result<Option<FactorId>, ApiError> {
        Ok(FactorId::parse(FACTOR))
    }
    fn factor_kind(&mut self, _f: &FactorId) -> Result<FactorKind, ApiError> {
        Ok(FactorKind::Totp)
    }
    fn start_push(
        &mut self,
        _f: &FactorId,
        _r: &str,
        _p: &str,
        _m: Option<&str>,
    ) -> Result<String, ApiError> {
        Err(ApiError::Refused("no push here".into()))
    }
    fn challenge_status(&mut self, _f: &FactorId, _c: &str) -> Result<ChallengeStatus, ApiError> {
        Ok(ChallengeStatus::Pending)
    }
    fn pause(&mut self, _wait: Duration) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let answers: VecDeque<String> = rest
        .split(|b| *b == b'\n')
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    for a in &answers {
        let spec = (6..=8).contains(&a.len()) && a.bytes().all(|b| b.is_ascii_digit());
        assert_eq!(flow::code_is_well_formed(a), spec, "{a:?}");
    }
    let safe = flags & 0x01 != 0;
    let tries = 1 + u32::from(flags >> 1 & 0x01) * 2;
    let combined = flags & 0x80 != 0;
    let text = format!(
        "[api]\nbase_url = \"https://127.0.0.1:1\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         [login]\nfailmode = \"{}\"\ntries = {tries}\ncombined = {combined}\n\
         [recovery]\naccept = \"{}\"\n[users]\nalice = \"{FACTOR}\"\n",
        if safe { "safe" } else { "secure" },
        if combined { "always" } else { "unavailable" },
    );
    let cfg = Config::parse(Path::new("/nonexistent.toml"), &text).expect("the fixed config");
    let login = LoginContext {
        user: "alice".into(),
        service: "sshd".into(),
        nonce: "n".into(),
        account: flow::Account::Known("alice".into()),
        ..Default::default()
    };
    let mut person = Person {
        answers,
        kept: None,
        last: String::new(),
    };
    let mut truid = TruId {
        flags,
        calls: 0,
        verified: false,
        sent: false,
    };
    let mut codes = OneCode { used: false };
    let outcome = flow::authenticate(&cfg, &login, &mut person, &mut truid, &mut codes);
    let success = pam_truid::pam::pam_code(&outcome) as i32 == 0;
    match &outcome {
        Outcome::Verified { .. } => assert!(truid.verified, "{outcome:?} without a verified code"),
        Outcome::RecoveryUsed { .. } => assert!(codes.used, "{outcome:?} without the right code"),
        Outcome::Unavailable { let_in, .. } => {
            assert!(
                !*let_in || (safe && !truid.sent),
                "{outcome:?} after a code was sent"
            )
        }
        _ => {}
    }
    if success {
        assert!(
            truid.verified
                || codes.used
                || (safe && !truid.sent && matches!(outcome, Outcome::Unavailable { .. })),
            "{outcome:?} let the login in"
        );
    }
    match &person.kept {
        Some(p) => {
            assert!(combined && success, "{outcome:?} kept a password");
            // The password part is the answer without the code that let the login in.
            let rest = person
                .last
                .strip_prefix(p.as_str())
                .expect("a prefix of the answer");
            let right_rc =
                pam_truid::recovery::parse_code(RIGHT_RECOVERY).map(|c| c.expose().to_string());
            let let_in_unverified = matches!(outcome, Outcome::Unavailable { let_in: true, .. });
            assert!(
                rest == RIGHT
                    || (let_in_unverified && flow::code_is_well_formed(rest))
                    || pam_truid::recovery::parse_code(rest).map(|c| c.expose().to_string())
                        == right_rc,
                "the code went on as the password"
            );
        }
        None => assert!(!(combined && success && !matches!(outcome, Outcome::Unavailable { .. }))),
    }
});

/// One recovery code, good once; every other answer is no code of the user's.
struct OneCode {
    used: bool,
}

impl flow::Recovery for OneCode {
    fn use_code(&mut self, user: &str, code: &Secret) -> Result<pam_truid::recovery::Used, String> {
        use pam_truid::recovery::{parse_code, Used};
        let right = parse_code(RIGHT_RECOVERY).map(|c| c.expose().to_string());
        if user == "alice"
            && !self.used
            && parse_code(code.expose()).map(|c| c.expose().to_string()) == right
        {
            self.used = true;
            return Ok(Used::Accepted { left: 0 });
        }
        Ok(Used::Rejected)
    }
}
