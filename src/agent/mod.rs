//! The local agent: `truid-pam agent`, a root daemon that keeps kept-alive TLS connections to
//! tru.ID and the bearer token for every login of the host.
//!
//! Why: a login process starts with nothing, so each login paid a full TLS handshake (two
//! signature checks and a key exchange, most of a login's CPU). The module asks the agent over
//! a Unix socket instead; the agent sends the same requests on a connection it already has.
//! The login flow stays in the module; the agent only carries the API calls of
//! `flow::Authenticator`, and answers with the same `ApiError` split, so failmode decides
//! exactly as it does without an agent.
//!
//! Trust: both sides check the other's credentials on the socket (`SO_PEERCRED`): the module
//! talks only to a process of root, and the agent answers only root. When nothing (or nothing
//! of root) listens at the configured path, the module goes to tru.ID itself.
//!
//! One role per file; each uses only the files listed above it (no import circle):
//!
//! ```text
//! protocol.rs  the wire: Request, Call, Answer, Reply, lines, the peer check   uses none of these
//! upstream.rs  one Call run against tru.ID with an api::Client                 <- protocol
//! direct.rs    the calls without an agent: in-process, or the library          <- protocol, upstream
//! client.rs    the module's side: AgentOrDirect, the Authenticator             <- protocol, direct
//! relay.rs     a caller's side of the services: its conversation relayed       <- protocol
//! serving.rs   the daemon's serving: projects, tokens, one root connection     <- protocol, upstream
//! services.rs  the daemon's services for unprivileged callers (public socket)  <- protocol, serving
//! ```
//!
//! The agent listens on two sockets: the root socket (serving.rs: calls of root's modules) and
//! the public socket (services.rs: a screen locker's login, a user's own enrolment, each for the
//! caller's own account). Neither serving.rs nor services.rs uses client.rs, direct.rs or
//! relay.rs: those are the callers'.

pub mod client;
pub mod direct;
pub mod protocol;
pub mod relay;
pub mod services;
pub mod serving;
pub mod upstream;
