//! The caches in the root-only folder (`[api] token_cache`, default /run/pam_truid): the token,
//! one file per (base URL, client ID, client secret), so that every login on the host shares one
//! token per token lifetime; and the system CA bundle's decoded trust anchors.
//!
//! A cache that cannot be used (missing, wrong owner, wrong mode, corrupt) is ignored and
//! rewritten: it can cost a token request, never a login.

use crate::secret::Secret;
use rustls::pki_types::{Der, TrustAnchor};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A token is used only while more than this is left of it.
pub const REFRESH_MARGIN_SECS: u64 = 60;
/// The longest token lifetime the cache believes (tru.ID issues an hour).
const MAX_LIFETIME_SECS: u64 = 24 * 3600;
const MAX_FILE: u64 = 16 * 1024;

/// A token is cached for the credentials that obtained it, secret included: a config with the
/// right client ID but a wrong secret must get no token (tru.ID refuses it), never the one a
/// right config left here. The secret is never written: the file name and the entry hold
/// HMAC-SHA256(key = secret, base URL and client ID), which only the secret's holder can make.
#[derive(Debug, Clone)]
pub struct TokenCache {
    dir: PathBuf,
    file: PathBuf,
    /// Hex of the keyed hash above.
    key: String,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
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
    pub fn new(dir: &Path, base_url: &str, client_id: &str, client_secret: &Secret) -> TokenCache {
        let hmac_key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, client_secret.expose().as_bytes());
        // The lengths first, so that no two (base URL, client ID) pairs hash the same bytes.
        let message = format!(
            "{}\n{}\n{base_url}\n{client_id}",
            base_url.len(),
            client_id.len()
        );
        let tag = ring::hmac::sign(&hmac_key, message.as_bytes());
        let key = crate::text::hex(tag.as_ref());
        let name = key.get(..24).unwrap_or(&key);
        TokenCache {
            dir: dir.to_path_buf(),
            file: dir.join(format!("token-{name}.json")),
            key,
        }
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The cached token, if it is for these credentials and has more than a minute left, with
    /// what is left of it.
    pub fn load(&self) -> Option<(Secret, std::time::Duration)> {
        let bytes = zeroize::Zeroizing::new(read_private(&self.dir, &self.file, MAX_FILE)?);
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        let fresh = entry.expires_at > now().saturating_add(REFRESH_MARGIN_SECS);
        let left = std::time::Duration::from_secs(
            entry
                .expires_at
                .saturating_sub(now())
                .min(MAX_LIFETIME_SECS),
        );
        // The key is no secret to whoever can read the file (root): a plain comparison.
        (fresh && entry.key == self.key).then(|| (Secret::new(entry.access_token.clone()), left))
    }

    /// Writes the token atomically: readers see the old token or the new one, never half of
    /// one. Failures are ignored (the next login fetches again).
    pub fn store(&self, token: &Secret, expires_in: u64) {
        let entry = Entry {
            key: self.key.clone(),
            access_token: token.expose().to_string(),
            // A lifetime tru.ID gives is believed up to a day: an absurd one (u64::MAX) must
            // neither overflow nor keep a token past any real lifetime.
            expires_at: now().saturating_add(expires_in.min(MAX_LIFETIME_SECS)),
        };
        if let Ok(text) = serde_json::to_string(&entry) {
            let text = zeroize::Zeroizing::new(text);
            let _ = write_private(&self.dir, &self.file, text.as_bytes());
        }
    }

    /// Drops the cached token (tru.ID refused it).
    pub fn forget(&self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// What tells one version of a file from another: a file replaced (another inode) or rewritten
/// in place (another size, mtime or ctime; no one can set a ctime back) has another identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    pub fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// The system CA bundle's trust anchors, already decoded, keyed by the bundle's path and
/// [`FileId`]: reading and decoding ~150 PEM certificates costs more
/// than the whole TLS handshake of a login, and sudo or sshd pay it in every process.
/// A bundle replaced by `update-ca-certificates` has a new identity, so the cache follows it.
#[derive(Debug, Clone)]
pub struct AnchorCache {
    dir: PathBuf,
    file: PathBuf,
    key: Vec<u8>,
}

const ANCHORS_MAGIC: &[u8] = b"pam_truid anchors 1\n";
const MAX_ANCHORS_FILE: u64 = 4 * 1024 * 1024;

impl AnchorCache {
    /// `None` when the bundle cannot be examined (then nothing is cached).
    pub fn new(dir: &Path, bundle: &Path) -> Option<AnchorCache> {
        let id = FileId::of(&std::fs::metadata(bundle).ok()?);
        let key = format!(
            "{}\0{}\0{}\0{}\0{}.{}\0{}.{}\n",
            bundle.display(),
            id.dev,
            id.ino,
            id.len,
            id.mtime.0,
            id.mtime.1,
            id.ctime.0,
            id.ctime.1
        );
        Some(AnchorCache {
            dir: dir.to_path_buf(),
            file: dir.join("anchors-system.bin"),
            key: key.into_bytes(),
        })
    }

    /// The anchors, if the cache holds them for this very bundle.
    pub fn load(&self) -> Option<Vec<TrustAnchor<'static>>> {
        let bytes = read_private(&self.dir, &self.file, MAX_ANCHORS_FILE)?;
        let mut rest = bytes
            .strip_prefix(ANCHORS_MAGIC)?
            .strip_prefix(self.key.as_slice())?;
        let mut anchors = Vec::new();
        while !rest.is_empty() {
            let subject = take_field(&mut rest)?;
            let spki = take_field(&mut rest)?;
            let constraints = take_field(&mut rest)?;
            anchors.push(TrustAnchor {
                subject: Der::from(subject.to_vec()),
                subject_public_key_info: Der::from(spki.to_vec()),
                name_constraints: (!constraints.is_empty())
                    .then(|| Der::from(constraints.to_vec())),
            });
        }
        Some(anchors)
    }

    /// Writes the anchors (atomically; failures only cost the next process a re-read).
    pub fn store(&self, anchors: &[TrustAnchor<'_>]) {
        let mut out = Vec::with_capacity(64 * 1024);
        out.extend_from_slice(ANCHORS_MAGIC);
        out.extend_from_slice(&self.key);
        for a in anchors {
            let constraints: &[u8] = a.name_constraints.as_ref().map_or(&[], |c| c.as_ref());
            for field in [
                a.subject.as_ref(),
                a.subject_public_key_info.as_ref(),
                constraints,
            ] {
                let Ok(len) = u32::try_from(field.len()) else {
                    return;
                };
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(field);
            }
        }
        let _ = write_private(&self.dir, &self.file, &out);
    }
}

/// One length-prefixed field of the anchors file.
fn take_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    let field = tail.get(..len)?;
    *rest = tail.get(len..)?;
    Some(field)
}

/// A file's bytes, only if it and its folder are private to this user (a cache others could
/// write would let them choose a token or, worse, whom the module trusts).
fn read_private(dir: &Path, file: &Path, max: u64) -> Option<Vec<u8>> {
    if !dir_is_private(dir) {
        return None;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(file)
        .ok()?;
    let meta = f.metadata().ok()?;
    let private = meta.is_file()
        && meta.uid() == nix::unistd::geteuid().as_raw()
        && meta.mode() & 0o077 == 0
        && meta.len() <= max;
    if !private {
        return None;
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    (&mut f).take(max).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Writes atomically (temporary file, fsync, rename), mode 0600, in a folder created 0700 and
/// private to this user. The recovery codes (`recovery::Store`) are written this way too.
pub(crate) fn write_private(dir: &Path, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if !dir_is_private(dir) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "cache folder is not private to this user",
        ));
    }
    let tmp = dir.join(format!(
        ".{}.{}.{}",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
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
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn dir_is_private(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| {
        m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o077 == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sec(s: &str) -> Secret {
        Secret::new(s)
    }

    #[test]
    fn stores_and_loads_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let c = TokenCache::new(&dir, "https://a", "id", &sec("s"));
        assert!(c.load().is_none());
        c.store(&Secret::new("tok"), 3600);
        assert_eq!(c.load().unwrap().0.expose(), "tok");
        let m = std::fs::metadata(c.path()).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // Another client or base URL never sees this token.
        assert!(TokenCache::new(&dir, "https://a", "other", &sec("s"))
            .load()
            .is_none());
        assert!(TokenCache::new(&dir, "https://b", "id", &sec("s"))
            .load()
            .is_none());
        // Nor does a wrong secret for the same client, and the secret is not in the file.
        assert!(TokenCache::new(&dir, "https://a", "id", &sec("wrong"))
            .load()
            .is_none());
        let text = std::fs::read_to_string(c.path()).unwrap();
        assert!(text.contains("tok") && !text.contains("\"s\""), "{text}");
        c.forget();
        assert!(c.load().is_none());
    }

    #[test]
    fn an_absurd_lifetime_neither_overflows_nor_outlives_a_day() {
        let tmp = tempfile::tempdir().unwrap();
        let c = TokenCache::new(&tmp.path().join("c"), "https://a", "id", &sec("s"));
        c.store(&Secret::new("tok"), u64::MAX);
        assert_eq!(c.load().unwrap().0.expose(), "tok");
        let text = std::fs::read_to_string(c.path()).unwrap();
        let entry: serde_json::Value = serde_json::from_str(&text).unwrap();
        let at = entry["expires_at"].as_u64().unwrap();
        assert!(at <= now() + MAX_LIFETIME_SECS, "{at}");
    }

    #[test]
    fn a_token_close_to_expiry_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let c = TokenCache::new(&tmp.path().join("c"), "https://a", "id", &sec("s"));
        c.store(&Secret::new("tok"), REFRESH_MARGIN_SECS - 1);
        assert!(c.load().is_none());
    }

    #[test]
    fn an_open_cache_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let c = TokenCache::new(&dir, "https://a", "id", &sec("s"));
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
        let c = TokenCache::new(&dir, "https://a", "id", &sec("s"));
        c.store(&Secret::new("tok"), 3600);
        std::fs::write(c.path(), b"{not json").unwrap();
        assert!(c.load().is_none());
    }
}
