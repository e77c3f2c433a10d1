//! A client built on first use.

use super::{ApiError, ChallengeStatus, Client, FactorKind};
use crate::config::{ApiConfig, FactorId};
use crate::flow::Authenticator;
use crate::secret::Secret;
use std::time::Duration;

/// Builds the HTTP client on first use, so logins that never reach tru.ID (unenrolled users,
/// users outside `groups`) pay nothing for TLS.
pub struct LazyClient<'a> {
    api: &'a ApiConfig,
    client: Option<Client>,
}

impl<'a> LazyClient<'a> {
    pub fn new(api: &'a ApiConfig) -> Self {
        LazyClient { api, client: None }
    }

    fn get(&mut self) -> Result<&mut Client, ApiError> {
        if self.client.is_none() {
            // A local setup failure (unreadable ca_file) is the administrator's to fix and
            // denies whatever failmode says: it is not tru.ID being down.
            let c = Client::new(self.api).map_err(ApiError::Refused)?;
            self.client = Some(c);
        }
        self.client
            .as_mut()
            .ok_or_else(|| ApiError::Refused("HTTP client missing".into()))
    }

    pub fn requests(&self) -> u32 {
        self.client.as_ref().map_or(0, |c| c.requests)
    }
}

impl Authenticator for LazyClient<'_> {
    fn create_challenge(
        &mut self,
        factor: &FactorId,
        reference_id: &str,
    ) -> Result<String, ApiError> {
        self.get()?.create_challenge(factor, reference_id)
    }

    fn verify(
        &mut self,
        factor: &FactorId,
        challenge_id: &str,
        code: &Secret,
    ) -> Result<ChallengeStatus, ApiError> {
        self.get()?.verify(factor, challenge_id, code)
    }

    fn factor_kind(&mut self, factor: &FactorId) -> Result<FactorKind, ApiError> {
        self.get()?.factor_kind(factor)
    }

    fn start_push(
        &mut self,
        factor: &FactorId,
        reference_id: &str,
        phone: &str,
        message: Option<&str>,
    ) -> Result<String, ApiError> {
        self.get()?.start_push(factor, reference_id, phone, message)
    }

    fn challenge_status(
        &mut self,
        factor: &FactorId,
        challenge_id: &str,
    ) -> Result<ChallengeStatus, ApiError> {
        self.get()?.challenge_status(factor, challenge_id)
    }

    fn pause(&mut self, wait: Duration) {
        std::thread::sleep(wait);
    }

    fn find_factor(&mut self, user: &str) -> Result<Option<FactorId>, ApiError> {
        self.get()?.find_factor(user)
    }
}
