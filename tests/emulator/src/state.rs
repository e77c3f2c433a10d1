//! The emulator's data: factors, challenges, tokens, the project, PhoneChecks. Everything here
//! is plain data manipulated under one `std::sync::Mutex` that is never held across an await.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{totp, FactorType};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FactorStatus {
    Pending,
    Active,
    Inactive,
}

impl FactorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FactorStatus::Pending => "PENDING",
            FactorStatus::Active => "ACTIVE",
            FactorStatus::Inactive => "INACTIVE",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChallengeStatus {
    Pending,
    Verified,
    Failed,
    Expired,
}

impl ChallengeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeStatus::Pending => "PENDING",
            ChallengeStatus::Verified => "VERIFIED",
            ChallengeStatus::Failed => "FAILED",
            ChallengeStatus::Expired => "EXPIRED",
        }
    }
}

pub fn type_str(t: FactorType) -> &'static str {
    match t {
        FactorType::Totp => "TOTP",
        FactorType::Push => "PUSH",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Factor {
    pub factor_id: String,
    pub status: FactorStatus,
    #[serde(rename = "type")]
    pub kind: FactorType,
    pub external_user_id: String,
    pub phone_number: String,
    /// Base32, as in the URI.
    pub secret: String,
    pub url: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Time steps whose code was already accepted (recent ones only).
    #[serde(default)]
    pub used_steps: Vec<u64>,
}

impl Factor {
    /// Checks a code against the current step and one step either way; a step's code is
    /// accepted once. Marks the step used on success.
    pub fn accept_code(&mut self, code: &str, now_ms: u64) -> bool {
        let secret = match totp::decode_secret(&self.secret) {
            Some(s) => s,
            None => return false,
        };
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        let step = now_ms / 1000 / totp::STEP_SECS;
        for s in [step.saturating_sub(1), step, step + 1] {
            if self.used_steps.contains(&s) {
                continue;
            }
            if totp::code_at_step(&secret, s) == code {
                self.used_steps.push(s);
                self.used_steps.retain(|u| u + 3 >= step);
                return true;
            }
        }
        false
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Challenge {
    pub challenge_id: String,
    pub factor_id: String,
    #[serde(rename = "type")]
    pub kind: FactorType,
    pub status: ChallengeStatus,
    pub reference_id: Option<String>,
    pub check_id: Option<String>,
    pub check_url: Option<String>,
    pub message: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub expires_ms: u64,
    pub expired_ms: Option<u64>,
}

impl Challenge {
    /// Turns a pending challenge past its lifetime into `EXPIRED`; true when it changed.
    pub fn expire_if_due(&mut self, now_ms: u64) -> bool {
        if self.status == ChallengeStatus::Pending && now_ms >= self.expires_ms {
            self.status = ChallengeStatus::Expired;
            self.updated_ms = now_ms;
            self.expired_ms = Some(now_ms);
            true
        } else {
            false
        }
    }

    pub fn view(&self) -> ChallengeView {
        ChallengeView {
            challenge_id: self.challenge_id.clone(),
            factor_id: self.factor_id.clone(),
            factor_type: self.kind,
            reference_id: self.reference_id.clone(),
            status: self.status.as_str().to_string(),
            message: self.message.clone(),
            check_id: self.check_id.clone(),
        }
    }
}

/// A challenge as tests see it ([`crate::Emulator::challenge`], `GET /_emulator/challenges`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChallengeView {
    pub challenge_id: String,
    pub factor_id: String,
    pub factor_type: FactorType,
    pub reference_id: Option<String>,
    /// `PENDING`, `VERIFIED`, `FAILED` or `EXPIRED`.
    pub status: String,
    pub message: Option<String>,
    pub check_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Token {
    pub scopes: Vec<String>,
    pub expires_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhoneCheck {
    pub check_id: String,
    pub phone_number: String,
    pub redirect_url: Option<String>,
    pub created_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Creds {
    pub client_id: String,
    pub client_secret: String,
    pub workspace_id: String,
    pub project_id: String,
    pub workspace_client_id: String,
    pub workspace_client_secret: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub creds: Creds,
    #[serde(default)]
    pub project: Value,
    #[serde(default)]
    pub factors: HashMap<String, Factor>,
    #[serde(default)]
    pub challenges: HashMap<String, Challenge>,
    #[serde(default)]
    pub tokens: HashMap<String, Token>,
    #[serde(default)]
    pub phone_checks: HashMap<String, PhoneCheck>,
    /// external_user_id -> factor_id
    #[serde(skip)]
    pub by_ext: HashMap<String, String>,
    /// Challenge ids, oldest first (at most [`RECENT`]).
    #[serde(skip)]
    pub recent: VecDeque<String>,
    #[serde(skip)]
    pub generation: u64,
}

pub const RECENT: usize = 100;

impl State {
    /// Rebuilds the indexes after loading.
    pub fn reindex(&mut self) {
        self.by_ext = self
            .factors
            .values()
            .map(|f| (f.external_user_id.clone(), f.factor_id.clone()))
            .collect();
        let mut chs: Vec<&Challenge> = self.challenges.values().collect();
        chs.sort_by(|a, b| {
            a.created_ms
                .cmp(&b.created_ms)
                .then(a.challenge_id.cmp(&b.challenge_id))
        });
        self.recent = chs
            .iter()
            .rev()
            .take(RECENT)
            .rev()
            .map(|c| c.challenge_id.clone())
            .collect();
    }

    pub fn remember_challenge(&mut self, id: &str) {
        self.recent.push_back(id.to_string());
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// `configuration.authenticator`, when the project has one.
    pub fn authenticator_config(&self) -> Option<&serde_json::Map<String, Value>> {
        self.project
            .get("configuration")
            .and_then(|c| c.get("authenticator"))
            .and_then(|a| a.as_object())
    }

    pub fn issuer_name(&self) -> Option<String> {
        self.authenticator_config()
            .and_then(|a| a.get("issuer_name"))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    pub fn callback_url(&self) -> Option<String> {
        self.authenticator_config()
            .and_then(|a| a.get("challenge_callback_url"))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    pub fn default_message(&self) -> Option<String> {
        self.authenticator_config()
            .and_then(|a| a.get("challenge_default_message"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }
}
