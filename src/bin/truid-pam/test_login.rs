//! `truid-pam test USER`: the module's own login flow, run from the terminal.

use crate::terminal::TerminalConv;
use crate::Failure;
use pam_truid::agent::client::AgentOrDirect;
use pam_truid::agent::direct::InProcess;
use pam_truid::agent::protocol::{Service, ServiceRequest};
use pam_truid::agent::relay::{relay, RelayError};
use pam_truid::config::Config;
use pam_truid::flow::{self, Account, LoginContext};
use std::path::Path;
use std::process::ExitCode;

pub fn run(path: &Path, user: &str, service: &str) -> Result<ExitCode, Failure> {
    if !nix::unistd::geteuid().is_root() {
        return through_agent(user, service);
    }
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            println!("the module would answer PAM_SERVICE_ERR (login denied): {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut login = LoginContext {
        user: user.to_string(),
        service: service.to_string(),
        ruser: nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        groups: None,
        nonce: pam_truid::text::random_hex(6),
        // The same fact the module puts there: run by a user, `safe` acts as `secure`.
        controlled_by: pam_truid::pam::controlled_by(),
        ..Default::default()
    };
    // As the module does: the user as NSS names them, and their groups.
    pam_truid::host::resolve(&cfg, &mut login);
    let mut api = AgentOrDirect::new(&cfg.api, InProcess::default());
    if let Account::Known(name) = &login.account {
        if *name != login.user {
            println!(
                "NSS names the user \"{}\": the module checks that account",
                pam_truid::text::sanitize(name, 128)
            );
        }
    }
    // A recovery code typed here is used up, as at a real login.
    let mut codes = pam_truid::recovery::Store::new(&cfg.recovery.file);
    let outcome = flow::authenticate(&cfg, &login, &mut TerminalConv, &mut api, &mut codes);
    Ok(answer(
        &outcome,
        &format!("{} HTTP requests", api.requests()),
    ))
}

/// Run by a user: the login a screen locker of theirs gets, through the agent's public socket
/// (their own account only).
fn through_agent(user: &str, service: &str) -> Result<ExitCode, Failure> {
    let request = ServiceRequest::new(Service::Login {
        user: user.to_string(),
        service: service.to_string(),
        tty: None,
        rhost: None,
        combined: false,
    });
    let socket = Path::new(pam_truid::config::DEFAULT_PUBLIC_SOCKET);
    match relay(socket, &request, &mut TerminalConv) {
        Ok(outcome) => Ok(answer(&outcome, "through the agent")),
        Err(RelayError::NoAgent(why)) | Err(RelayError::Broken(why)) => Err(Failure(format!(
            "without root this asks the pam_truid agent, and {why}: run it as root, or start the agent (systemctl enable --now pam_truid-agent)"
        ))),
    }
}

/// Prints what the module would answer, and exits as a login would end.
fn answer(outcome: &flow::Outcome, how: &str) -> ExitCode {
    let code = pam_truid::pam::pam_code(outcome);
    println!(
        "the module would answer {code:?}: outcome={} tries={} reason=\"{}\" ({how})",
        outcome.name(),
        outcome.tries(),
        pam_truid::text::sanitize(&outcome.reason(), 300),
    );
    if code == ::pam::constants::PamResultCode::PAM_SUCCESS {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
