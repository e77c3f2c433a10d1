//! `truid-pam enroll`: factor, QR code, activation with the first code, and only then the
//! config line.

use crate::terminal::TerminalConv;
use crate::{client, load, terminal, Failure};
use base64::Engine;
use pam_truid::agent::protocol::{Service, ServiceRequest};
use pam_truid::agent::relay::{relay, RelayError};
use pam_truid::api::ApiError;
use pam_truid::config::{is_valid_name, normalize_phone};
use pam_truid::enrolment;
use pam_truid::flow::code_is_well_formed;
use pam_truid::flow::Outcome;
use pam_truid::text::sanitize;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pam_truid::enrolment::ACTIVATION_TRIES;

#[derive(clap::Args)]
pub struct Args {
    /// The Unix user to enroll (run without root: yourself, through the agent; USER may be left
    /// out).
    user: Option<String>,
    /// The user's mobile number, E.164 (e.g. +447700900000); asked if left out when enrolling
    /// yourself.
    #[arg(long)]
    phone: Option<String>,
    /// The agent's public socket, for enrolling yourself.
    #[arg(long, value_name = "PATH", default_value = pam_truid::config::DEFAULT_PUBLIC_SOCKET)]
    agent: PathBuf,
    /// The external user ID at tru.ID (default: [login] lookup_prefix and the user's name as
    /// NSS gives it).
    #[arg(long, value_name = "ID")]
    external_id: Option<String>,
    /// Also save the QR code as a PNG (it holds the secret: mode 0600).
    #[arg(long, value_name = "FILE")]
    qr_png: Option<PathBuf>,
    /// Enroll even if USER already has a factor in [users] (the old factor stays at tru.ID).
    #[arg(long)]
    force: bool,
}

pub fn run(path: &Path, args: Args) -> Result<ExitCode, Failure> {
    if !nix::unistd::geteuid().is_root() {
        return self_service(args);
    }
    let Some(user) = args.user.clone() else {
        return Err(Failure(
            "name the user to enroll (as root; a user enrolls themselves by running truid-pam enroll without root)".into(),
        ));
    };
    let Some(phone) = args.phone.clone() else {
        return Err(Failure(
            "give the user's mobile number with --phone, e.g. --phone +447700900000".into(),
        ));
    };
    admin(path, args, &user, &phone)
}

/// A user enrolls themselves: the agent runs the enrolment for the account this process runs
/// as, with the system config it reads itself, and this terminal is the conversation.
fn self_service(args: Args) -> Result<ExitCode, Failure> {
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .ok_or_else(|| Failure("NSS does not name the user this runs as".into()))?;
    if let Some(user) = &args.user {
        let same = pam_truid::host::passwd(user)
            .ok()
            .flatten()
            .is_some_and(|pw| pw.name == me.name);
        if !same {
            return Err(Failure(format!(
                "you can enroll only yourself ({}); enrolling \"{}\" takes root",
                sanitize(&me.name, 128),
                sanitize(user, 128)
            )));
        }
    }
    if args.external_id.is_some() || args.qr_png.is_some() || args.force {
        return Err(Failure(
            "--external-id, --qr-png and --force are the administrator's (run as root)".into(),
        ));
    }
    let request = ServiceRequest::new(Service::Enroll { phone: args.phone });
    match relay(&args.agent, &request, &mut TerminalConv) {
        Ok(Outcome::Enrolled { factor }) => {
            println!(
                "Activated: factor {factor} is yours ({}); your logins now ask for its code.",
                sanitize(&me.name, 128)
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(outcome) => Err(Failure(format!(
            "not enrolled: {}",
            sanitize(&outcome.reason(), 300)
        ))),
        Err(RelayError::NoAgent(why)) => Err(Failure(format!(
            "enrolling yourself goes through the pam_truid agent, and {why}: ask your administrator to start it (systemctl enable --now pam_truid-agent) or to enroll you"
        ))),
        Err(RelayError::Broken(why)) => Err(Failure(format!("not enrolled: {why}"))),
    }
}

fn admin(path: &Path, args: Args, user: &str, phone: &str) -> Result<ExitCode, Failure> {
    if !is_valid_name(user) {
        return Err(Failure(format!(
            "\"{}\" is not a Unix user name (1 to 256 bytes, no control characters)",
            sanitize(user, 64)
        )));
    }
    let Some(phone) = normalize_phone(phone) else {
        return Err(Failure(format!(
            "\"{}\" is not an E.164 phone number; give the country code and number, e.g. +447700900000",
            sanitize(phone, 32)
        )));
    };
    let cfg = load(path)?;
    // The module looks users up by the name NSS gives (`Alice` is `alice` on sssd), so that
    // is the name written.
    let user = canonical_user(user)?;
    if let Some(why) = crate::rollout_check::exempt(&cfg, &user) {
        eprintln!("warning: {} is exempt ({why}): the module never asks them for this factor's code while that stays so.", sanitize(&user, 128));
    }
    let external = args
        .external_id
        .clone()
        .unwrap_or_else(|| format!("{}{user}", cfg.login.lookup_prefix));
    if external.is_empty() || external.len() > 512 || external.chars().any(char::is_control) {
        return Err(Failure(format!(
            "\"{}\" cannot be an external user ID: use 1 to 256 bytes without control characters",
            sanitize(&external, 64)
        )));
    }
    if let Some(old) = cfg.users.get(&user) {
        if !args.force {
            return Err(Failure(format!(
                "{0} is already enrolled (factor {old}); use --force to enroll again, or `truid-pam deactivate '{0}'` first",
                sanitize(&user, 128)
            )));
        }
    }
    let mut api = client(&cfg)?;
    // Made before the factor, so that a bad path costs no PENDING factor.
    let png_file = args.qr_png.as_deref().map(create_png).transpose()?;
    let factor = api.create_factor(&phone, &external)?;
    let id = factor.factor_id.clone();
    let uri = factor
        .url
        .as_ref()
        .ok_or_else(|| Failure(format!("tru.ID gave factor {id} without an otpauth URI")))?;

    println!(
        "Factor {id} created for {} (status {}).",
        sanitize(&user, 128),
        sanitize(&factor.status, 16)
    );
    println!("Scan this QR code with the tru.ID Authenticator (or any TOTP app):\n");
    println!("{}", qr_text(uri.expose())?);
    if let Some(secret) = enrolment::otpauth_secret(uri.expose()) {
        println!("Or enter this key by hand: {}\n", secret.expose());
    }
    if let (Some(png), Some(file)) = (&args.qr_png, png_file) {
        let saved = save_png(file, png, factor.data_url.as_ref().map(|d| d.expose()));
        if saved.is_err() {
            let _ = std::fs::remove_file(png);
        }
        saved?;
        println!("QR code saved to {}", png.display());
    }
    let _ = std::io::stdout().flush();

    for attempt in 1..=ACTIVATION_TRIES {
        let code = terminal::read_line("Code shown by the app: ", false).map_err(|e| {
            Failure(format!(
                "cannot read the code ({e}); factor {id} is left PENDING: run enroll again with --force"
            ))
        })?;
        if !code_is_well_formed(code.expose()) {
            eprintln!("A code is 6 to 8 digits.");
            continue;
        }
        let patch = serde_json::json!([{ "op": "add", "path": "/code", "value": code.expose() }]);
        match api.patch_factor(&id, patch) {
            Ok(f) if f.status == "ACTIVE" => {
                pam_truid::config_edit::update(path, |doc| {
                    pam_truid::config_edit::set_user(doc, &user, &id);
                    pam_truid::config_edit::set_phone(doc, &user, &phone);
                    Ok(())
                })?;
                println!(
                    "Activated. \"{}\" = \"{id}\" added to [users] (and the phone to [phones]) of {}.",
                    sanitize(&user, 128),
                    path.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            Ok(f) => eprintln!(
                "tru.ID left the factor {}; try the next code.",
                sanitize(&f.status, 16)
            ),
            Err(ApiError::Refused(r)) if attempt < ACTIVATION_TRIES => {
                eprintln!("tru.ID refused that code ({r}); wait for the next one and try again.")
            }
            Err(e) => {
                return Err(Failure(format!(
                    "{e}; factor {id} is left PENDING and {} is not enrolled",
                    user
                )))
            }
        }
    }
    Err(Failure(format!(
        "no valid code after {ACTIVATION_TRIES} tries; factor {id} is left PENDING and {} is not enrolled",
        user
    )))
}

/// The user's name as NSS gives it (`pw_name`); an account NSS does not know cannot log in,
/// so it is not enrolled.
pub fn canonical_user(typed: &str) -> Result<String, Failure> {
    match pam_truid::host::passwd(typed) {
        Ok(Some(pw)) => {
            if pw.name != typed {
                println!(
                    "NSS names \"{}\" \"{}\": enrolling that name.",
                    sanitize(typed, 128),
                    sanitize(&pw.name, 128)
                );
            }
            Ok(pw.name)
        }
        Ok(None) => Err(Failure(format!(
            "no user \"{}\" on this host (getent passwd does not know it); create the account first, or check the name",
            sanitize(typed, 128)
        ))),
        Err(e) => Err(Failure(format!("\"{}\": {e}", sanitize(typed, 128)))),
    }
}

fn qr_text(uri: &str) -> Result<String, Failure> {
    enrolment::qr_text(uri)
        .ok_or_else(|| Failure("cannot draw the QR code: the URI is too long".into()))
}

/// A new file for the PNG, mode 0600: it holds the secret, so it is never written through a
/// link someone planted nor into a file that exists (and whose mode or owner may let others
/// read it).
fn create_png(path: &Path) -> Result<std::fs::File, Failure> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Failure(format!(
                "{} exists (a file or a link): the QR code holds the secret, so it is only \
                 written to a new file; remove it first or pick another path",
                path.display()
            )),
            _ => Failure(format!("{}: cannot create the PNG: {e}", path.display())),
        })
}

fn save_png(mut file: std::fs::File, path: &Path, data_url: Option<&str>) -> Result<(), Failure> {
    let b64 = data_url
        .and_then(|d| d.strip_prefix("data:image/png;base64,"))
        .ok_or_else(|| Failure("tru.ID gave no PNG QR code (data_url)".into()))?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| Failure(format!("the PNG QR code is not valid base64: {e}")))?;
    file.write_all(&png)
        .and_then(|()| file.sync_all())
        .map_err(|e| Failure(format!("{}: cannot write the PNG: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_is_drawn() {
        let q = qr_text("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP").unwrap();
        assert!(q.lines().count() > 10);
    }
}
