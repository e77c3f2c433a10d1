//! `truid-pam recovery`: one-time codes for a lost phone or a tru.ID outage, shown once; only
//! their argon2id hashes are kept ([recovery] file).

use crate::{load, Failure};
use pam_truid::config::{Accept, Config};
use pam_truid::recovery::{self, Store, DEFAULT_COUNT, MAX_COUNT};
use pam_truid::secret::Secret;
use pam_truid::text::sanitize;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The Unix user the codes are for (the name NSS gives is the one kept).
    user: String,
    /// How many codes to make, 1 to 20; they replace the user's old ones.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_COUNT, value_parser = count)]
    count: usize,
    /// Print a JSON object instead of lines.
    #[arg(long)]
    json: bool,
    /// Remove the user's codes instead of making new ones.
    #[arg(long, conflicts_with = "count")]
    revoke: bool,
}

fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_COUNT).contains(&n) => Ok(n),
        _ => Err(format!("use a number from 1 to {MAX_COUNT}")),
    }
}

/// When the module takes a code, in words, for the person who hands the codes out.
pub fn accepted_when(cfg: &Config) -> String {
    match cfg.recovery.accept {
        Accept::Unavailable => "only when tru.ID cannot be reached".into(),
        Accept::Always => "always, also with tru.ID up (for a lost phone)".into(),
        Accept::Never => format!(
            "never: recovery codes are turned off in {} ([recovery] accept = \"never\")",
            cfg.path.display()
        ),
    }
}

fn accept_word(a: Accept) -> &'static str {
    match a {
        Accept::Unavailable => "unavailable",
        Accept::Always => "always",
        Accept::Never => "never",
    }
}

pub fn run(path: &Path, args: Args) -> Result<ExitCode, Failure> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure(
            "recovery codes are root's alone: run truid-pam recovery as root (e.g. with sudo)"
                .into(),
        ));
    }
    let cfg = load(path)?;
    let store = Store::new(&cfg.recovery.file);
    let user = resolve(&args.user, args.revoke, &store)?;
    let shown = sanitize(&user, 128);
    let before = store.stored(&user)?;
    if args.revoke {
        // Nothing to remove: the file is not written (nor made).
        if before > 0 {
            store.set(&user, None)?;
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "user": user, "removed": before, "file": store.path() })
            );
        } else if before == 0 {
            println!("{shown} had no recovery codes: nothing removed.");
        } else {
            println!(
                "Removed the {before} recovery code(s) of {shown}: none of them works any more."
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let codes = recovery::generate(args.count).map_err(Failure)?;
    let hashes = hash_all(&codes)?;
    // Shown only once they are stored: a code printed but not kept would fail its owner later.
    store.set(&user, Some(hashes))?;
    notes(&cfg, &user);
    // Written whole, in one buffer that is zeroised: a closed or full standard output is an
    // error that says the new set was never seen, not a panic, and no code is left in memory.
    let mut out = zeroize::Zeroizing::new(String::new());
    if args.json {
        let list: Vec<&str> = codes.iter().map(Secret::expose).collect();
        out.push_str(
            &serde_json::json!({
                "user": user,
                "codes": list,
                "accept": accept_word(cfg.recovery.accept),
                "replaced": before,
                "file": store.path(),
            })
            .to_string(),
        );
        out.push('\n');
    } else {
        out.push_str(&format!(
            "{} recovery code(s) for {shown}. They are shown this once: hand them over or store them safely now. Each works once.\n",
            codes.len()
        ));
        for c in &codes {
            out.push_str(c.expose());
            out.push('\n');
        }
        out.push_str(&format!("They are accepted {}.\n", accepted_when(&cfg)));
        if before > 0 {
            out.push_str(&format!(
                "The {before} code(s) {shown} had before no longer work.\n"
            ));
        }
    }
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        return Err(Failure(format!(
            "the new codes of {shown} are stored, but they could not be shown ({e}); nobody has seen them, so run truid-pam recovery {shown} again to make a set you can read"
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// The name NSS gives (the key the module looks codes up by). A name NSS does not know gets
/// no codes; its codes, if the file holds some under that exact name (a deleted account),
/// may still be revoked.
fn resolve(typed: &str, revoke: bool, store: &Store) -> Result<String, Failure> {
    if !pam_truid::config::is_valid_name(typed) {
        return Err(Failure(format!(
            "\"{}\" is not a Unix user name (1 to 256 bytes, no control characters)",
            sanitize(typed, 64)
        )));
    }
    match pam_truid::host::passwd(typed) {
        Ok(Some(pw)) => {
            if pw.name != typed {
                eprintln!(
                    "NSS names \"{}\" \"{}\": the codes are that name's.",
                    sanitize(typed, 128),
                    sanitize(&pw.name, 128)
                );
            }
            Ok(pw.name)
        }
        Ok(None) if revoke && store.stored(typed)? > 0 => Ok(typed.to_string()),
        Ok(None) => Err(Failure(format!(
            "no user \"{}\" on this host (getent passwd does not know it): a login as that name is refused anyway, so it gets no codes; check the name",
            sanitize(typed, 128)
        ))),
        Err(e) => Err(Failure(format!("\"{}\": {e}", sanitize(typed, 128)))),
    }
}

/// Each hash costs tens of milliseconds of one core: spread them over the cores.
fn hash_all(codes: &[Secret]) -> Result<Vec<String>, Failure> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4);
    let per = codes.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = codes
            .chunks(per)
            .map(|chunk| s.spawn(move || chunk.iter().map(recovery::hash).collect::<Vec<_>>()))
            .collect();
        let mut out = Vec::with_capacity(codes.len());
        for h in handles {
            let hashed = h
                .join()
                .map_err(|_| Failure("hashing the codes failed".into()))?;
            for r in hashed {
                // The error names the failure, never the code.
                out.push(r.map_err(|e| Failure(format!("cannot hash a recovery code: {e}")))?);
            }
        }
        Ok(out)
    })
}

/// What makes these codes useless as things stand, on standard error (the codes are on
/// standard output).
fn notes(cfg: &Config, user: &str) {
    if let Some(why) = crate::rollout_check::exempt(cfg, user) {
        eprintln!(
            "note: {} is exempt ({why}): the module never asks them for a code, so these are not needed.",
            sanitize(user, 128)
        );
    } else if cfg.recovery.accept == Accept::Unavailable
        && !cfg.login.lookup
        && !cfg.users.contains_key(user)
    {
        eprintln!(
            "note: {} has no factor in [users]: under accept = \"unavailable\" a code counts only when their factor cannot be reached, so these work once they are enrolled.",
            sanitize(user, 128)
        );
    }
}
