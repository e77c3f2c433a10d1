//! Facts about the host the flow needs but must not look up itself: who the user is, as NSS
//! names them, and which of `[login] groups` they are in.

use crate::config::{is_valid_name, Config, Unenrolled};
use crate::flow::{self, Account, LoginContext};
use nix::unistd::{getgrouplist, Gid, Group, User};
use std::ffi::CString;

/// An account as NSS gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    /// `pw_name`: the canonical name (SSSD and winbind answer `Alice` with `alice`).
    pub name: String,
    pub gid: u32,
}

/// `getpwnam(name)`: `Ok(None)` when NSS does not know the name, `Err` when it could not say
/// or gave a name this module cannot use.
pub fn passwd(name: &str) -> Result<Option<Passwd>, String> {
    match User::from_name(name) {
        Ok(Some(u)) => {
            // nix decodes pw_name lossily: a replacement character means it was not UTF-8.
            if !is_valid_name(&u.name) || u.name.contains('\u{fffd}') {
                return Err("NSS gave an account name that is not usable text".into());
            }
            Ok(Some(Passwd {
                name: u.name,
                gid: u.gid.as_raw(),
            }))
        }
        Ok(None) => Ok(None),
        // glibc documents ENOENT, ESRCH, EBADF and EPERM as "not found" from some modules.
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH) => Ok(None),
        Err(e) => Err(format!("the NSS lookup of the user failed ({e})")),
    }
}

/// Fills in what the flow needs from NSS for this login: the account of the user whose factor
/// is asked (PAM_USER, or PAM_RUSER for `su = "caller"`), and which of `[login] groups` and
/// `exempt_groups` it is in. A name the flow will refuse anyway is not looked up.
pub fn resolve(cfg: &Config, login: &mut LoginContext) {
    let Ok(typed) = flow::factor_user(cfg, login).map(str::to_string) else {
        return;
    };
    login.account = match passwd(&typed) {
        Ok(Some(pw)) => {
            // One getgrouplist for both lists: NSS may be a directory a round trip away.
            let (groups, exempt) = (&cfg.login.groups, &cfg.login.exempt_groups);
            // `[enroll] groups` only where a user may enroll: no NSS work for it otherwise.
            let enrolling = cfg.enroll.self_service || cfg.login.unenrolled == Unenrolled::Enroll;
            let enroll: &[String] = if enrolling { &cfg.enroll.groups } else { &[] };
            if !groups.is_empty() || !exempt.is_empty() || !enroll.is_empty() {
                let gids = group_ids(&pw);
                let among = |wanted: &[String]| {
                    (!wanted.is_empty()).then(|| named_among(gids.as_deref()?, wanted))?
                };
                login.groups = among(groups);
                login.exempt_groups = among(exempt);
                login.may_enroll = if enroll.is_empty() {
                    Some(true)
                } else {
                    among(enroll).map(|g| !g.is_empty())
                };
            } else {
                login.may_enroll = Some(true);
            }
            Account::Known(pw.name)
        }
        Ok(None) => Account::Unknown,
        Err(e) => Account::Failed(e),
    };
}

/// Those of `wanted` (group names as the config gives them) that the account is in, matched by
/// GID so that NSS decides what a name means (a case-insensitive directory matches `Admins` to
/// `admins`). `None` when NSS could not answer: the flow then asks for the factor.
pub fn member_of(account: &Passwd, wanted: &[String]) -> Option<Vec<String>> {
    named_among(&group_ids(account)?, wanted)
}

/// The account's groups (primary and supplementary) as NSS lists them.
fn group_ids(account: &Passwd) -> Option<Vec<Gid>> {
    let name = CString::new(account.name.as_str()).ok()?;
    getgrouplist(&name, Gid::from_raw(account.gid)).ok()
}

/// Those of `wanted` that are among `gids`; `None` when NSS could not say what a name means.
fn named_among(gids: &[Gid], wanted: &[String]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for g in wanted {
        match Group::from_name(g) {
            Ok(Some(group)) if gids.contains(&group.gid) => out.push(g.clone()),
            // A group NSS says does not exist has no members.
            Ok(_) | Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH) => {}
            Err(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_in_group_root() {
        let root = passwd("root").unwrap().unwrap();
        assert_eq!(root.name, "root");
        let groups = member_of(&root, &["root".into(), "no-such-group-here".into()]).unwrap();
        assert_eq!(groups, ["root"]);
        assert_eq!(passwd("no-such-user-here"), Ok(None));
    }
}
