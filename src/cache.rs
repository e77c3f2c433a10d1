//! The token cache: one file per (base URL, client ID) in a root-only folder, so that every
//! login on the host shares one token per token lifetime.
//!
//! A cache that cannot be used (missing, wrong owner, wrong mode, corrupt) is ignored and
//! rewritten: it can cost a token request, never a login.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A token is used only while more than this is left of it.
pub const REFRESH_MARGIN_SECS: u64 = 60;
const MAX_FILE: u64 = 16 * 1024;

#[derive(Debug, Clone)]
pub struct TokenCache {
    dir: PathBuf,
    file: PathBuf,
    base_url: String,
    client_id: String,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    base_url: String,
    client_id: String,
    access_token: String,
    expires_at: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.access_token);
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenCache {
    pub fn new(dir: &Path, base_url: &str, client_id: &str) -> TokenCache {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{base_url}\n{client_id}").as_bytes(),
        );
        let name: String = digest
            .as_ref()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        TokenCache {
            dir: dir.to_path_buf(),
            file: dir.join(format!("token-{name}.json")),
            base_url: base_url.to_string(),
            client_id: client_id.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The cached token, if it is for this base URL and client and has more than a minute left.
    pub fn load(&self) -> Option<Secret> {
        if !self.dir_is_private() {
            return None;
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.file)
            .ok()?;
        let meta = f.metadata().ok()?;
        let private = meta.is_file()
            && meta.uid() == nix::unistd::geteuid().as_raw()
            && meta.mode() & 0o077 == 0
            && meta.len() <= MAX_FILE;
        if !private {
            return None;
        }
        let mut text = zeroize::Zeroizing::new(String::new());
        (&mut f).take(MAX_FILE).read_to_string(&mut text).ok()?;
        let entry: Entry = serde_json::from_str(&text).ok()?;
        let fresh = entry.expires_at > now() + REFRESH_MARGIN_SECS;
        (fresh && entry.base_url == self.base_url && entry.client_id == self.client_id)
            .then(|| Secret::new(entry.access_token.clone()))
    }

    /// Writes the token atomically (temporary file, fsync, rename): readers see the old token or
    /// the new one, never half of one. Failures are ignored (the next login fetches again).
    pub fn store(&self, token: &Secret, expires_in: u64) {
        let _ = self.try_store(token, expires_in);
    }

    fn try_store(&self, token: &Secret, expires_in: u64) -> std::io::Result<()> {
        self.ensure_dir()?;
        let entry = Entry {
            base_url: self.base_url.clone(),
            client_id: self.client_id.clone(),
            access_token: token.expose().to_string(),
            expires_at: now() + expires_in,
        };
        let text = zeroize::Zeroizing::new(serde_json::to_string(&entry)?);
        let tmp = self.dir.join(format!(
            ".{}.{}.{}",
            self.file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("token"),
            std::process::id(),
            crate::text::random_hex(4)
        ));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Drops the cached token (tru.ID refused it).
    pub fn forget(&self) {
        let _ = std::fs::remove_file(&self.file);
    }

    fn dir_is_private(&self) -> bool {
        std::fs::symlink_metadata(&self.dir).is_ok_and(|m| {
            m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o077 == 0
        })
    }

    fn ensure_dir(&self) -> std::io::Result<()> {
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if self.dir_is_private() {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "token cache folder is not private to this user",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stores_and_loads_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let c = TokenCache::new(&dir, "https://a", "id");
        assert!(c.load().is_none());
        c.store(&Secret::new("tok"), 3600);
        assert_eq!(c.load().unwrap().expose(), "tok");
        let m = std::fs::metadata(c.path()).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // Another client or base URL never sees this token.
        assert!(TokenCache::new(&dir, "https://a", "other").load().is_none());
        assert!(TokenCache::new(&dir, "https://b", "id").load().is_none());
        c.forget();
        assert!(c.load().is_none());
    }

    #[test]
    fn a_token_close_to_expiry_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let c = TokenCache::new(&tmp.path().join("c"), "https://a", "id");
        c.store(&Secret::new("tok"), REFRESH_MARGIN_SECS - 1);
        assert!(c.load().is_none());
    }

    #[test]
    fn an_open_cache_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let c = TokenCache::new(&dir, "https://a", "id");
        c.store(&Secret::new("tok"), 3600);
        std::fs::set_permissions(c.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(c.load().is_none(), "a file others can read is ignored");
        std::fs::set_permissions(c.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(c.load().is_none(), "a folder others can enter is ignored");
    }

    #[test]
    fn a_corrupt_cache_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let c = TokenCache::new(&dir, "https://a", "id");
        c.store(&Secret::new("tok"), 3600);
        std::fs::write(c.path(), b"{not json").unwrap();
        assert!(c.load().is_none());
    }
}
