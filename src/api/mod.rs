//! The tru.ID API client: token, factors, challenges. Knows HTTP and JSON, nothing of PAM.

mod client;
mod tls;
mod transport;
mod types;

pub use client::{Client, Scope};
pub use tls::{client_config, forget_trust, trust_changed};
pub(crate) use transport::timed_out_error;
pub use transport::Transport;
pub use types::{Challenge, ChallengeStatus, Factor, FactorKind, FactorList, Problem};

use std::fmt;

/// Why a call to tru.ID did not give an answer the caller can use.
///
/// The split decides who may be let in: only `Unavailable` is subject to `failmode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// tru.ID answered and said no: a 4xx about the request (for a code: a wrong code).
    Refused(String),
    /// tru.ID could not be asked, or its answer could not be used: connect, TLS, timeout,
    /// 5xx, 429 past the deadline, an unreadable answer, a token refused after a refresh.
    Unavailable(String),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Refused(r) => write!(f, "tru.ID refused the request: {r}"),
            ApiError::Unavailable(r) => write!(f, "tru.ID unavailable: {r}"),
        }
    }
}

impl std::error::Error for ApiError {}
