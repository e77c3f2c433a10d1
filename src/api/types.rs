//! The answers tru.ID gives, as far as pam_truid reads them. Unknown fields are ignored.

use crate::secret::Secret;
use crate::text::sanitize;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(crate) struct TokenAnswer {
    pub access_token: Secret,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// A factor. `url` and `data_url` carry the TOTP secret, so they are `Secret`s.
#[derive(Debug, Clone, Deserialize)]
pub struct Factor {
    pub factor_id: String,
    pub status: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub external_user_id: String,
    #[serde(default)]
    pub url: Option<Secret>,
    #[serde(default)]
    pub data_url: Option<Secret>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// What kind of factor: decides between a code and a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactorKind {
    Totp,
    Push,
    Other(String),
}

impl Factor {
    pub fn kind(&self) -> FactorKind {
        FactorKind::from_name(&self.kind)
    }
}

impl FactorKind {
    pub fn name(&self) -> &str {
        match self {
            FactorKind::Totp => "TOTP",
            FactorKind::Push => "PUSH",
            FactorKind::Other(s) => s,
        }
    }

    pub fn from_name(s: &str) -> Self {
        match s {
            "TOTP" => FactorKind::Totp,
            "PUSH" => FactorKind::Push,
            other => FactorKind::Other(sanitize(other, 16)),
        }
    }
}

/// A PhoneCheck as far as a push challenge needs it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PhoneCheck {
    pub check_id: String,
    #[serde(rename = "_links")]
    pub links: PhoneCheckLinks,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PhoneCheckLinks {
    pub check_url: Link,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Link {
    pub href: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FactorList {
    #[serde(rename = "_embedded", default)]
    pub embedded: Option<EmbeddedFactors>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddedFactors {
    #[serde(default)]
    pub factors: Vec<Factor>,
}

impl FactorList {
    pub fn factors(&self) -> &[Factor] {
        self.embedded.as_ref().map_or(&[], |e| &e.factors)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Challenge {
    pub challenge_id: String,
    pub status: ChallengeStatus,
}

/// A challenge's status. Anything but `Verified` is "not verified", whatever it is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeStatus {
    Pending,
    Verified,
    Failed,
    Expired,
    Other(String),
}

impl ChallengeStatus {
    /// tru.ID's name of the status.
    pub fn name(&self) -> &str {
        match self {
            ChallengeStatus::Pending => "PENDING",
            ChallengeStatus::Verified => "VERIFIED",
            ChallengeStatus::Failed => "FAILED",
            ChallengeStatus::Expired => "EXPIRED",
            ChallengeStatus::Other(s) => s,
        }
    }

    pub fn from_name(s: &str) -> Self {
        match s {
            "PENDING" => ChallengeStatus::Pending,
            "VERIFIED" => ChallengeStatus::Verified,
            "FAILED" => ChallengeStatus::Failed,
            "EXPIRED" => ChallengeStatus::Expired,
            _ => ChallengeStatus::Other(sanitize(s, 32)),
        }
    }
}

impl<'de> Deserialize<'de> for ChallengeStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| ChallengeStatus::from_name(&s))
    }
}

/// An RFC 7807 problem answer; every field optional, since real answers vary.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

impl Problem {
    /// "title: detail", escaped, for a log line or a screen.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [&self.title, &self.detail]
            .into_iter()
            .flatten()
            .map(|s| sanitize(s, 200))
            .collect();
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_tolerates_unknown_values() {
        let c: Challenge =
            serde_json::from_str(r#"{"challenge_id":"x","status":"WEIRD\u001b[0m","extra":1}"#)
                .unwrap();
        assert_eq!(c.status, ChallengeStatus::Other("WEIRD\\x1b[0m".into()));
        let c: Challenge =
            serde_json::from_str(r#"{"challenge_id":"x","status":"VERIFIED"}"#).unwrap();
        assert_eq!(c.status, ChallengeStatus::Verified);
    }

    #[test]
    fn factor_debug_hides_the_totp_secret() {
        let f: Factor = serde_json::from_str(
            r#"{"factor_id":"f","status":"PENDING","type":"TOTP","url":"otpauth://totp/x?secret=JBSWY3DPEHPK3PXP"}"#,
        )
        .unwrap();
        assert!(!format!("{f:?}").contains("JBSWY3DP"));
    }

    #[test]
    fn problem_summary_is_escaped() {
        let p: Problem =
            serde_json::from_str(r#"{"title":"Bad\u001b[2J","detail":"no\nway","status":400}"#)
                .unwrap();
        assert_eq!(p.summary(), "Bad\\x1b[2J: no\\x0away");
    }
}
