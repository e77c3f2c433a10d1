//! The lines of `truid-pam check` about rolling out without lockouts: the recovery-code file,
//! what failmode means with or without codes, the exempt accounts, the one prompt.

use pam_truid::config::{Accept, Config, FailMode};
use pam_truid::recovery::Store;
use pam_truid::text::sanitize;
use std::collections::BTreeMap;

/// One line's verdict: a warning is something to change, yet the module works as it is.
pub enum Verdict {
    Ok(String),
    Warn(String),
    Fail(String),
}

/// Why the module stands aside for `user` (the name NSS gives), if it does.
pub fn exempt(cfg: &Config, user: &str) -> Option<String> {
    if cfg.login.exempt_users.iter().any(|u| u == user) {
        return Some("in [login] exempt_users".into());
    }
    if cfg.login.exempt_groups.is_empty() {
        return None;
    }
    let pw = pam_truid::host::passwd(user).ok().flatten()?;
    let groups = pam_truid::host::member_of(&pw, &cfg.login.exempt_groups)?;
    groups
        .first()
        .map(|g| format!("in \"{}\" of [login] exempt_groups", sanitize(g, 64)))
}

pub fn items(cfg: &Config) -> Vec<(String, Verdict)> {
    let mut out = Vec::new();
    let counts = recovery_file(cfg, &mut out);
    out.push(("failmode".into(), failmode(cfg, counts.as_ref())));
    exempt_lines(cfg, &mut out);
    if cfg.login.combined {
        out.push((
            "combined".into(),
            Verdict::Ok(format!(
                "combined = true: one prompt (\"{}\") takes the password and the code after it; the password goes on to the stack (PAM_AUTHTOK), so the module must come before pam_unix with try_first_pass (conf/pam.d/sshd-combined)",
                sanitize(&cfg.login.combined_prompt, 200)
            )),
        ));
    }
    out
}

/// The file's state; its counts when it could be read.
fn recovery_file(
    cfg: &Config,
    out: &mut Vec<(String, Verdict)>,
) -> Option<BTreeMap<String, usize>> {
    let path = &cfg.recovery.file;
    let when = crate::recovery::accepted_when(cfg);
    let counts = match Store::new(path).counts() {
        Err(e) => {
            out.push((
                "recovery codes".into(),
                Verdict::Fail(format!(
                    "{e}; a login that types a recovery code is refused until this is fixed"
                )),
            ));
            return None;
        }
        Ok(counts) => {
            let missing = matches!(std::fs::symlink_metadata(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound);
            let codes: usize = counts.values().sum();
            let v = if missing {
                Verdict::Ok(format!(
                    "{}: missing (no codes): no recovery codes yet: make them with truid-pam recovery USER",
                    path.display()
                ))
            } else {
                Verdict::Ok(format!(
                    "{}: readable, root's alone; {} user(s), {codes} unused code(s); accepted {when}",
                    path.display(),
                    counts.len()
                ))
            };
            out.push(("recovery codes".into(), v));
            counts
        }
    };
    Some(counts)
}

fn failmode(cfg: &Config, counts: Option<&BTreeMap<String, usize>>) -> Verdict {
    let off = cfg.recovery.accept == Accept::Never;
    match cfg.login.failmode {
        FailMode::Safe => Verdict::Warn(format!(
            "\"safe\": whenever tru.ID cannot be reached, every enrolled user gets in without a second factor (anyone who can cut the link can too){}; with recovery codes in hand \"secure\" is the safe default: set failmode = \"secure\"{} and give each user codes with truid-pam recovery USER",
            cfg.login
                .endpoint_bindable
                .as_deref()
                .map(|why| format!(" (here it acts as \"secure\" anyway: {why})"))
                .unwrap_or_default(),
            if off { " and [recovery] accept = \"unavailable\"" } else { "" }
        )),
        FailMode::Secure if off => Verdict::Ok(
            "\"secure\": a tru.ID outage refuses every enrolled user, and recovery codes are off ([recovery] accept = \"never\"): keep a way in that does not need the module (an exempt account or root's console)".into(),
        ),
        FailMode::Secure => {
            let Some(counts) = counts else {
                return Verdict::Ok(
                    "\"secure\": a tru.ID outage refuses logins but those with a recovery code (the recovery file cannot be read: see above)".into(),
                );
            };
            let without: Vec<&String> = cfg
                .users
                .keys()
                .filter(|u| counts.get(*u).copied().unwrap_or(0) == 0)
                .collect();
            if cfg.users.is_empty() {
                Verdict::Ok("\"secure\": a tru.ID outage refuses logins but those with a recovery code".into())
            } else if without.is_empty() {
                Verdict::Ok(format!(
                    "\"secure\", and each of the {} enrolled user(s) has recovery codes for a tru.ID outage",
                    cfg.users.len()
                ))
            } else {
                let mut named: Vec<String> =
                    without.iter().take(5).map(|u| sanitize(u, 64)).collect();
                if without.len() > 5 {
                    named.push("...".into());
                }
                Verdict::Ok(format!(
                    "\"secure\": {} of {} enrolled user(s) have no recovery codes ({}): a tru.ID outage or a lost phone locks them out; make them some with truid-pam recovery USER",
                    without.len(),
                    cfg.users.len(),
                    named.join(", ")
                ))
            }
        }
    }
}

fn exempt_lines(cfg: &Config, out: &mut Vec<(String, Verdict)>) {
    for name in &cfg.login.exempt_users {
        let shown = sanitize(name, 64);
        let v = match pam_truid::host::passwd(name) {
            Ok(None) => Verdict::Warn(format!(
                "NSS does not know \"{shown}\": this entry exempts no one; check the name"
            )),
            Ok(Some(pw)) if pw.name != *name => Verdict::Warn(format!(
                "NSS names \"{shown}\" \"{}\": logins are matched on the name NSS gives, so this entry exempts no one; write \"{0}\"",
                sanitize(&pw.name, 64)
            )),
            Ok(Some(_)) if cfg.users.contains_key(name) => Verdict::Warn(format!(
                "\"{shown}\" is also in [users]: their factor is never asked; remove them from one of the two"
            )),
            Ok(Some(_)) => Verdict::Ok(
                "never asked for a code (the module answers PAM_IGNORE; the stack's other factors decide)".into(),
            ),
            Err(e) => Verdict::Warn(format!("\"{shown}\": {e}: it exempts no one while NSS cannot say")),
        };
        out.push((format!("exempt user {shown}"), v));
    }
    for group in &cfg.login.exempt_groups {
        let shown = sanitize(group, 64);
        let v = match nix::unistd::Group::from_name(group) {
            Ok(Some(_)) => {
                let enrolled: Vec<String> = cfg
                    .users
                    .keys()
                    .filter(|u| {
                        pam_truid::host::passwd(u)
                            .ok()
                            .flatten()
                            .and_then(|pw| pam_truid::host::member_of(&pw, std::slice::from_ref(group)))
                            .is_some_and(|g| !g.is_empty())
                    })
                    .map(|u| sanitize(u, 64))
                    .collect();
                if enrolled.is_empty() {
                    Verdict::Ok("members are never asked for a code (PAM_IGNORE)".into())
                } else {
                    Verdict::Warn(format!(
                        "members in [users] ({}): their factor is never asked",
                        enrolled.join(", ")
                    ))
                }
            }
            Ok(None) | Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH) => {
                Verdict::Warn(format!(
                    "NSS does not know group \"{shown}\": it exempts no one; check the name"
                ))
            }
            Err(e) => Verdict::Warn(format!(
                "group \"{shown}\" cannot be looked up ({e}): it exempts no one while NSS cannot say"
            )),
        };
        out.push((format!("exempt group {shown}"), v));
    }
    // A group of `groups` NSS does not know has no members: a typo there stands everyone aside.
    for group in &cfg.login.groups {
        let shown = sanitize(group, 64);
        let v = match nix::unistd::Group::from_name(group) {
            Ok(Some(_)) => Verdict::Ok("its members are asked for a code".into()),
            Ok(None) | Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH) => {
                Verdict::Warn(format!(
                    "NSS does not know group \"{shown}\": nobody is asked for a code through it; check the name"
                ))
            }
            Err(e) => Verdict::Warn(format!(
                "group \"{shown}\" cannot be looked up ({e}): its members are asked while NSS cannot say"
            )),
        };
        out.push((format!("group {shown}"), v));
    }
}
