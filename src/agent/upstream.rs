//! One call run against tru.ID with an `api::Client`: what the agent does for a module, and
//! what the direct path does in the login process (or in `truid-pam`). Both send the same
//! requests, so a call means the same whichever way it goes.

use super::protocol::{Answer, Call, Reply};
use crate::api::{ApiError, Client};
use crate::config::FactorId;
use crate::deadline::Deadline;
use crate::ports::Authenticator;
use std::time::Duration;

/// One call on `client`, for a login whose calls so far took `spent` of its `[api] timeout`:
/// the reply, with the HTTP requests this call sent.
pub(crate) fn reply_on(client: &mut Client, spent: Duration, call: Call) -> Reply {
    client.deadline = Deadline::with_spent(client.deadline.budget(), spent);
    let before = client.requests;
    let answer = Answer::of(run(client, call));
    Reply {
        requests: client.requests.saturating_sub(before),
        answer,
    }
}

/// One call on `client`: its value as the wire carries it.
fn run(client: &mut Client, call: Call) -> Result<Option<String>, ApiError> {
    let factor_id = |f: &str| {
        FactorId::parse(f)
            .ok_or_else(|| ApiError::Refused("malformed factor ID in the request".into()))
    };
    Ok(match call {
        Call::CreateChallenge {
            factor,
            reference_id,
        } => Some(client.create_challenge(&factor_id(&factor)?, &reference_id)?),
        Call::Verify {
            factor,
            challenge_id,
            code,
        } => Some(
            client
                .verify(&factor_id(&factor)?, &challenge_id, &code)?
                .name()
                .to_string(),
        ),
        Call::FindFactor { user } => client.find_factor(&user)?.map(|f| f.as_str().to_string()),
        Call::FactorKind { factor } => {
            Some(client.factor_kind(&factor_id(&factor)?)?.name().to_string())
        }
        Call::StartPush {
            factor,
            reference_id,
            phone,
            message,
        } => Some(client.start_push(
            &factor_id(&factor)?,
            &reference_id,
            &phone,
            message.as_deref(),
        )?),
        Call::NewFactor { phone, external_id } => {
            let f = client.new_factor(&phone, &external_id)?;
            Some(format!("{} {}", f.id, f.uri.expose()))
        }
        Call::Activate { factor, code } => {
            Some(active_word(client.activate(&factor_id(&factor)?, &code)?))
        }
        Call::ClaimExternalId { external_id } => Some(
            if client.claim_external_id(&external_id)? {
                "ACTIVE"
            } else {
                "FREE"
            }
            .to_string(),
        ),
        Call::FactorStatus { factor } => {
            Some(active_word(client.factor_active(&factor_id(&factor)?)?))
        }
        Call::ChallengeStatus {
            factor,
            challenge_id,
        } => Some(
            client
                .challenge_status(&factor_id(&factor)?, &challenge_id)?
                .name()
                .to_string(),
        ),
    })
}

/// A factor's state as the wire carries it.
fn active_word(active: bool) -> String {
    if active { "ACTIVE" } else { "PENDING" }.to_string()
}
