//! The caller's side of the agent's services: a request sent to the public socket, and the
//! agent's conversation relayed to the person, until the outcome comes back. The module run
//! without root (a screen locker) and `truid-pam enroll` run by a user call this.

use super::protocol::{line_of, peer_uid, FromCaller, Lines, ServiceRequest, ToCaller};
use crate::flow::{ConvError, Conversation, Outcome};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longer than the agent gives a person for a prompt: the agent ends a silent caller first.
const WAIT: Duration = Duration::from_secs(180);

/// Why no outcome came from the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayError {
    /// Nothing of root listens at the path: no agent runs.
    NoAgent(String),
    /// An agent was reached but the exchange broke off.
    Broken(String),
}

/// Sends `request` to the agent at `socket` and relays its conversation to `conv`.
pub fn relay(
    socket: &Path,
    request: &ServiceRequest,
    conv: &mut impl Conversation,
) -> Result<Outcome, RelayError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| RelayError::NoAgent(format!("no agent at {}: {e}", socket.display())))?;
    // Only root's agent: anyone could listen at a path a test or a stack names.
    if peer_uid(&stream) != Some(0) {
        return Err(RelayError::NoAgent(format!(
            "{} is not served by root, so it is not the pam_truid agent",
            socket.display()
        )));
    }
    let broken =
        |e: std::io::Error| RelayError::Broken(format!("the agent's answer broke off: {e}"));
    stream.set_write_timeout(Some(WAIT)).map_err(broken)?;
    stream.set_read_timeout(Some(WAIT)).map_err(broken)?;
    let line =
        line_of(request).ok_or_else(|| RelayError::Broken("cannot write the request".into()))?;
    stream.write_all(&line).map_err(broken)?;
    let mut lines = Lines::new();
    loop {
        let line = lines.next(&mut stream).map_err(broken)?;
        let message = serde_json::from_slice::<ToCaller>(&line).map_err(|_| {
            RelayError::Broken("the agent sent a message that could not be read".into())
        })?;
        let answer = match message {
            ToCaller::Done(outcome) => return Ok(outcome),
            ToCaller::Info(text) => {
                conv.info(&text);
                continue;
            }
            ToCaller::Error(text) => {
                conv.error(&text);
                continue;
            }
            ToCaller::KeepPassword(password) => {
                conv.keep_password(password);
                continue;
            }
            ToCaller::PromptSecret(text) => conv.prompt_secret(&text),
            ToCaller::PromptEcho(text) => conv.prompt_echo(&text),
        };
        let reply = match answer {
            Ok(a) => FromCaller::Answer(a),
            Err(ConvError(why)) => FromCaller::NoAnswer(why),
        };
        let line =
            line_of(&reply).ok_or_else(|| RelayError::Broken("cannot write an answer".into()))?;
        stream.write_all(&line).map_err(broken)?;
    }
}
