//! `truid-pam enroll`: factor, QR code, activation with the first code, and only then the
//! config line.

use crate::{client, edit, load, terminal, Failure};
use base64::Engine;
use pam_truid::api::ApiError;
use pam_truid::config::{is_valid_name, normalize_phone};
use pam_truid::flow::code_is_well_formed;
use pam_truid::text::sanitize;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Codes a person may type before the factor is left PENDING.
const ACTIVATION_TRIES: u32 = 3;

#[derive(clap::Args)]
pub struct Args {
    /// The Unix user to enroll.
    user: String,
    /// The user's mobile number, E.164 (e.g. +447700900000).
    #[arg(long)]
    phone: String,
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
    if !is_valid_name(&args.user) {
        return Err(Failure(format!(
            "\"{}\" is not a Unix user name (1 to 256 bytes, no control characters)",
            sanitize(&args.user, 64)
        )));
    }
    let Some(phone) = normalize_phone(&args.phone) else {
        return Err(Failure(format!(
            "\"{}\" is not an E.164 phone number; give the country code and number, e.g. +447700900000",
            sanitize(&args.phone, 32)
        )));
    };
    let cfg = load(path)?;
    // The module looks users up by the name NSS gives (`Alice` is `alice` on sssd), so that
    // is the name written.
    let user = canonical_user(&args.user)?;
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
    if let Some(secret) = otpauth_secret(uri.expose()) {
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
                edit::update(path, |doc| {
                    edit::set_user(doc, &user, &id);
                    edit::set_phone(doc, &user, &phone);
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
    let code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| Failure(format!("cannot draw the QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// The base32 secret of an `otpauth://` URI, for typing in by hand.
fn otpauth_secret(uri: &str) -> Option<pam_truid::secret::Secret> {
    let url = reqwest::Url::parse(uri).ok()?;
    let secret = url
        .query_pairs()
        .find(|(k, _)| k == "secret")
        .map(|(_, v)| v.into_owned())?;
    secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'=')
        .then(|| pam_truid::secret::Secret::new(secret))
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
    fn secret_from_uri() {
        let s = otpauth_secret("otpauth://totp/Acme:alice?secret=JBSWY3DPEHPK3PXP&issuer=Acme")
            .unwrap();
        assert_eq!(s.expose(), "JBSWY3DPEHPK3PXP");
        assert!(otpauth_secret("otpauth://totp/x?secret=a%1bb").is_none());
    }

    #[test]
    fn qr_is_drawn() {
        let q = qr_text("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP").unwrap();
        assert!(q.lines().count() > 10);
    }
}
