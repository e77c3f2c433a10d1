//! The tru.ID API client: token, factors, challenges. Knows HTTP and JSON, nothing of PAM.

mod client;
mod tls;
mod transport;
mod types;

pub use client::{Client, HeldToken, Scope};
pub use tls::{client_config, forget_trust};
pub(crate) use transport::timed_out_error;
pub use transport::{http_runtime, Transport};
pub use types::{Challenge, ChallengeStatus, Factor, FactorKind, FactorList, Problem};

use std::fmt;

/// Why a call to tru.ID did not give an answer the caller can use.
///
/// The split decides who may be let in: only `Unavailable` is subject to `failmode`, and only
/// where the flow allows (`flow::api_failure`). Anything a local user or the login's own input
/// could provoke is `Failed`, never `Unavailable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// tru.ID answered and said no: a 4xx about the request (for a code: a wrong code).
    Refused(String),
    /// tru.ID cannot be reached from this host: no connection (refused, unreachable, DNS, a
    /// connect timeout), no answer in time on a fresh connection, HTTP 5xx or 408.
    Unavailable(String),
    /// No verdict, but no evidence of an outage either: 429 (wrong tries provoke it), an answer
    /// that cannot be used (not JSON, wrong shape, another challenge, too big, cut short), a
    /// certificate that does not prove tru.ID, a kept connection that broke, a fresh token
    /// refused, a local resource running out (EMFILE, ENOMEM, a thread that cannot start).
    /// Denies under every failmode.
    Failed(String),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Refused(r) => write!(f, "tru.ID refused the request: {r}"),
            ApiError::Unavailable(r) => write!(f, "tru.ID unavailable: {r}"),
            ApiError::Failed(r) => write!(f, "the call to tru.ID failed: {r}"),
        }
    }
}

impl std::error::Error for ApiError {}
