//! Facts about the host the flow needs but must not look up itself.

use nix::unistd::{getgrouplist, Group, User};
use std::ffi::CString;

/// The names of the groups `user` belongs to (primary and supplementary), or `None` when they
/// cannot be read: the flow then asks for the factor rather than skip it.
pub fn groups_of(user: &str) -> Option<Vec<String>> {
    let account = User::from_name(user).ok()??;
    let name = CString::new(user).ok()?;
    let gids = getgrouplist(&name, account.gid).ok()?;
    gids.into_iter()
        .map(|gid| Group::from_gid(gid).ok().flatten().map(|g| g.name))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_in_group_root() {
        let groups = super::groups_of("root").unwrap();
        assert!(groups.iter().any(|g| g == "root"), "{groups:?}");
        assert!(super::groups_of("no-such-user-here").is_none());
    }
}
