//! Recovery codes: one-time codes an administrator hands a user for a lost phone or for when
//! tru.ID cannot be reached (`truid-pam recovery`).
//!
//! A code is 12 symbols of Crockford's base32 (60 bits), shown as `xxxx-xxxx-xxxx`: never 6 to 8
//! digits, so it is never taken for a tru.ID code and never sent to tru.ID. Only argon2id
//! hashes are stored (a salt per code), in one root-only file that is rewritten whole, under a
//! lock, through a rename: a code is used up exactly once, however many logins type it at once.

use crate::config::{self, ConfigError};
use crate::secret::Secret;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

pub const DEFAULT_FILE: &str = "/var/lib/pam_truid/recovery.toml";
/// Codes `truid-pam recovery` makes unless told otherwise, and the most it makes: a wrong code
/// is checked against each unused one, so the most bounds what a try costs.
pub const DEFAULT_COUNT: usize = 10;
pub const MAX_COUNT: usize = 20;

/// Crockford's base32: no I, L, O or U, so no symbol looks like another; typed `o`, `i` and `l`
/// are read as `0`, `1` and `1`.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const SYMBOLS: usize = 12;
/// OWASP's argon2id floor (19 MiB, 2 passes): tens of milliseconds a check on one core, while
/// a stolen file still costs an attacker that per guess of 60 bits.
const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
/// Hashes the file may ask for beyond ours are refused: a check must not cost seconds.
const MAX_M_COST_KIB: u32 = 256 * 1024;
const MAX_T_COST: u32 = 10;
/// A code that is not the user's costs this many hashes, whether the name has codes, how many,
/// or none: the time a wrong try takes does not tell who holds codes, nor how many.
const CHECKS_AT_LEAST: usize = MAX_COUNT;
/// What those extra hashes are computed against: our parameters, a fixed salt, no code.
const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$cGFtX3RydWlkLWR1bW15$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A thousand users with a hundred codes each is ~10 MB; a bigger file is not ours.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// How long a login waits for another one's rewrite (milliseconds of work) before it denies:
/// a stopped process that holds the lock must not hang every other login that uses a code.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The canonical form of a recovery code as typed (any case; dashes or spaces between the
/// three groups of four, or none), or `None` if it is not one.
pub fn parse_code(typed: &str) -> Option<Secret> {
    let typed = typed.trim();
    let bytes = typed.as_bytes();
    let grouped = bytes.len() == SYMBOLS + 2
        && matches!(bytes.get(4), Some(b'-' | b' '))
        && bytes.get(9) == bytes.get(4);
    if !(grouped || bytes.len() == SYMBOLS) {
        return None;
    }
    let mut canonical = Zeroizing::new(String::with_capacity(SYMBOLS));
    for (i, b) in bytes.iter().enumerate() {
        if grouped && (i == 4 || i == 9) {
            continue;
        }
        let c = match b.to_ascii_lowercase() {
            b'o' => b'0',
            b'i' | b'l' => b'1',
            c if ALPHABET.contains(&c) => c,
            _ => return None,
        };
        canonical.push(char::from(c));
    }
    Some(Secret::new(canonical.as_str()))
}

/// Where a recovery code ends a one-prompt answer (`password` then `xxxx-xxxx-xxxx`): the byte
/// at which it starts. Only the dashed form counts there, so a password that merely ends in
/// twelve letters is not cut.
pub fn trailing_code_start(answer: &str) -> Option<usize> {
    let start = answer.len().checked_sub(SYMBOLS + 2)?;
    let tail = answer.get(start..)?;
    let b = tail.as_bytes();
    (b.get(4) == Some(&b'-') && b.get(9) == Some(&b'-') && parse_code(tail).is_some())
        .then_some(start)
}

/// `count` new codes, as shown to the person (`xxxx-xxxx-xxxx`).
pub fn generate(count: usize) -> Result<Vec<Secret>, String> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut codes = Vec::with_capacity(count);
    for _ in 0..count {
        let mut raw = Zeroizing::new([0u8; SYMBOLS]);
        rng.fill(raw.as_mut())
            .map_err(|_| "the system's random number source failed".to_string())?;
        let mut shown = Zeroizing::new(String::with_capacity(SYMBOLS + 2));
        for (i, b) in raw.iter().enumerate() {
            if i == 4 || i == 8 {
                shown.push('-');
            }
            // 256 is a multiple of 32: every symbol is equally likely.
            let symbol = ALPHABET.get(usize::from(b % 32)).copied().unwrap_or(b'0');
            shown.push(char::from(symbol));
        }
        codes.push(Secret::new(shown.as_str()));
    }
    Ok(codes)
}

fn argon2(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string (`$argon2id$v=19$m=...`) stored for a code as shown or typed.
pub fn hash(code: &Secret) -> Result<String, String> {
    let canonical = parse_code(code.expose()).ok_or("not a recovery code")?;
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "the system's random number source failed".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let params = Params::new(M_COST_KIB, T_COST, 1, Some(32)).map_err(|e| e.to_string())?;
    argon2(params)
        .hash_password(canonical.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

fn bad(why: &str) -> String {
    format!("a stored hash is not one this version writes ({why})")
}

/// A stored hash as a login would use it: argon2id, its cost within what a login may spend,
/// a salt and a hash. Checked without computing it.
fn parse_stored(phc: &str) -> Result<(PasswordHash<'_>, Params), String> {
    let parsed = PasswordHash::new(phc).map_err(|_| bad("not a PHC string"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(bad("not argon2id"));
    }
    let params = Params::try_from(&parsed).map_err(|_| bad("its parameters"))?;
    if params.m_cost() > MAX_M_COST_KIB || params.t_cost() > MAX_T_COST {
        return Err(bad("its cost is above what a login may spend"));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(bad("no salt or no hash"));
    }
    Ok((parsed, params))
}

/// Whether `canonical` is the code behind `phc`. The hash's memory is reserved fallibly, so a
/// process whose memory a caller limited denies instead of aborting.
fn matches(phc: &str, canonical: &Secret) -> Result<bool, String> {
    #[cfg(test)]
    tests::HASHED.with(|n| n.set(n.get() + 1));
    let (parsed, params) = parse_stored(phc)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(bad("no salt or no hash"));
    };
    let mut salt_buf = [0u8; 64];
    let salt = salt
        .decode_b64(&mut salt_buf)
        .map_err(|_| bad("its salt"))?;
    let mut blocks: Vec<Block> = Vec::new();
    blocks
        .try_reserve_exact(params.block_count())
        .map_err(|_| "no memory for checking the recovery code".to_string())?;
    blocks.resize(params.block_count(), Block::default());
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    argon2(params)
        .hash_password_into_with_memory(canonical.expose().as_bytes(), salt, &mut out, &mut blocks)
        .map_err(|_| bad("it cannot be recomputed"))?;
    // Constant time: how much of a guess matched must not show in the time taken.
    let diff = out
        .iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    Ok(diff == 0 && out.len() == expected.len())
}

/// `n` hashes that match nothing, at the stored codes' cost.
fn spend_checks(n: usize, canonical: &Secret) {
    for _ in 0..n {
        let _ = matches(DUMMY, canonical);
    }
}

/// What the file holds: user name (as NSS names the account) = their unused codes' hashes.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Codes {
    #[serde(default)]
    codes: BTreeMap<String, Vec<String>>,
}

/// What using a code did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// It was one of the user's codes, and it is gone now; this many are left.
    Accepted { left: usize },
    /// Not one of the user's unused codes (or another login used it first).
    Rejected,
}

/// The recovery-code file (`[recovery] file`).
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(path: &Path) -> Store {
        Store {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".lock");
        PathBuf::from(p)
    }

    /// Its folder must be root's and closed to others (0700), as `cache::write_private` wants
    /// it: whoever may write there could swap the file.
    fn check_folder(&self) -> Result<Option<()>, ConfigError> {
        let err = |p: String| ConfigError {
            path: self.path.clone(),
            problem: p,
        };
        let folder = self
            .path
            .parent()
            .filter(|p| p.is_absolute())
            .ok_or_else(|| err("must be an absolute file path".into()))?;
        match std::fs::symlink_metadata(folder) {
            Ok(m) if !m.is_dir() => Err(err(format!(
                "its folder {} is not a folder",
                folder.display()
            ))),
            Ok(m) if m.uid() != 0 || m.mode() & 0o077 != 0 => Err(err(format!(
                "its folder {} must be owned by root, writable by root alone and closed to others; run: chown root: {0} && chmod 700 {0}",
                folder.display()
            ))),
            Ok(_) => Ok(Some(())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(format!("its folder cannot be examined: {e}"))),
        }
    }

    /// The file's contents; a missing file (or folder) holds no codes.
    fn read(&self) -> Result<Codes, ConfigError> {
        if self.check_folder()?.is_none() {
            return Ok(Codes::default());
        }
        match std::fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Codes::default()),
            _ => {}
        }
        let text = config::read_private(&self.path, MAX_FILE_BYTES)?;
        toml::from_str(&text).map_err(|_| ConfigError {
            path: self.path.clone(),
            problem: "is not a recovery-code file this version reads; make new codes with: truid-pam recovery USER".into(),
        })
    }

    /// How many unused codes each user has. A hash no login could use is an error, not a code:
    /// a count the logins cannot back would mislead whoever relies on it.
    pub fn counts(&self) -> Result<BTreeMap<String, usize>, ConfigError> {
        let codes = self.read()?.codes;
        for (user, hashes) in &codes {
            self.check_usable(user, hashes)?;
        }
        Ok(codes.into_iter().map(|(u, c)| (u, c.len())).collect())
    }

    pub fn left(&self, user: &str) -> Result<usize, ConfigError> {
        let codes = self.read()?.codes;
        let hashes = codes.get(user).map_or(&[][..], Vec::as_slice);
        self.check_usable(user, hashes)?;
        Ok(hashes.len())
    }

    /// How many hashes the file holds for the user, usable or not: for replacing or revoking a
    /// set, which must work on a broken one too.
    pub fn stored(&self, user: &str) -> Result<usize, ConfigError> {
        Ok(self.read()?.codes.get(user).map_or(0, Vec::len))
    }

    fn check_usable(&self, user: &str, hashes: &[String]) -> Result<(), ConfigError> {
        for h in hashes {
            parse_stored(h).map_err(|why| ConfigError {
                path: self.path.clone(),
                problem: format!(
                    "{why} among the codes of \"{}\": logins refuse them; make new ones with: truid-pam recovery {}",
                    crate::text::sanitize(user, 64),
                    crate::text::sanitize(user, 64)
                ),
            })?;
        }
        Ok(())
    }

    /// Replaces the user's codes with these hashes (`None`: removes them). Creates the folder
    /// (mode 0700) when it is missing.
    pub fn set(&self, user: &str, hashes: Option<Vec<String>>) -> Result<(), ConfigError> {
        if self.check_folder()?.is_none() {
            let folder = self.path.parent().unwrap_or(Path::new("/"));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(folder)
                .map_err(|e| self.io_error("its folder cannot be created", &e))?;
            self.check_folder()?;
        }
        let _lock = self.lock()?;
        let mut codes = self.read()?;
        match hashes {
            Some(h) => codes.codes.insert(user.to_string(), h),
            None => codes.codes.remove(user),
        };
        self.write(&codes)
    }

    /// Uses up `code` (as typed) if it is one of the user's unused codes. The hashes are
    /// checked without the lock (they cost the time); the one that matched is then removed
    /// under it only if it is still there, so of two logins with one code exactly one wins.
    pub fn use_code(&self, user: &str, code: &Secret) -> Result<Used, ConfigError> {
        let Some(canonical) = parse_code(code.expose()) else {
            return Ok(Used::Rejected);
        };
        let before = self.read()?;
        let hashes = before.codes.get(user).map_or(&[][..], Vec::as_slice);
        let mut found = None;
        for h in hashes {
            if matches(h, &canonical).map_err(|p| ConfigError {
                path: self.path.clone(),
                problem: p,
            })? {
                found = Some(h.clone());
                break;
            }
        }
        let Some(found) = found else {
            spend_checks(CHECKS_AT_LEAST.saturating_sub(hashes.len()), &canonical);
            return Ok(Used::Rejected);
        };
        let _lock = self.lock()?;
        let mut now = self.read()?;
        let Some(left) = now.codes.get_mut(user) else {
            return Ok(Used::Rejected);
        };
        let Some(at) = left.iter().position(|h| *h == found) else {
            return Ok(Used::Rejected);
        };
        left.remove(at);
        let left = left.len();
        if left == 0 {
            now.codes.remove(user);
        }
        // Only once the file without the code is in place does the code count.
        self.write(&now)?;
        Ok(Used::Accepted { left })
    }

    /// The time a wrong code costs, for a name that has no codes here (one NSS does not know):
    /// the file read and the hashes, so such a name looks like any other.
    pub fn check_nothing(&self, code: &Secret) {
        let _ = self.read();
        if let Some(canonical) = parse_code(code.expose()) {
            spend_checks(CHECKS_AT_LEAST, &canonical);
        }
    }

    fn io_error(&self, what: &str, e: &std::io::Error) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            problem: format!("{what}: {e}"),
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, ConfigError> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(&path)
            .map_err(|e| self.io_error("its lock file cannot be opened", &e))?;
        let started = Instant::now();
        let mut file = file;
        loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((f, nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR))
                    if started.elapsed() < LOCK_WAIT =>
                {
                    file = f;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((_, e)) => {
                    return Err(ConfigError {
                        path: self.path.clone(),
                        problem: format!(
                            "another login or truid-pam holds it ({e}); try again, and look for a stopped process holding {}",
                            path.display()
                        ),
                    })
                }
            }
        }
    }

    /// Writes the whole file through a temporary one and a rename (`cache::write_private`), so
    /// a crash, a full disk or a file-size limit leaves the old file in place, never a cut one;
    /// then syncs the folder, so a used code stays used after a crash.
    fn write(&self, codes: &Codes) -> Result<(), ConfigError> {
        let mut text = String::from(
            "# Recovery codes of pam_truid: argon2id hashes, one per unused code.\n\
             # Written by truid-pam recovery and by logins that use a code; do not edit.\n",
        );
        text.push_str(&toml::to_string(codes).map_err(|e| ConfigError {
            path: self.path.clone(),
            problem: format!("cannot be written: {e}"),
        })?);
        let folder = self.path.parent().unwrap_or(Path::new("/"));
        crate::cache::write_private(folder, &self.path, text.as_bytes())
            .and_then(|()| File::open(folder)?.sync_all())
            .map_err(|e| self.io_error("cannot be rewritten", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Hashes this thread computed (`matches`).
        pub(super) static HASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn hashes_of(f: impl FnOnce()) -> usize {
        HASHED.with(|n| n.set(0));
        f();
        HASHED.with(|n| n.get())
    }

    /// Needs root, as the suite does. A wrong code costs the same work whoever the name is:
    /// counted in hashes, not timed.
    #[test]
    fn a_wrong_code_costs_as_many_hashes_for_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("codes/recovery.toml"));
        let many = generate(MAX_COUNT).unwrap();
        store
            .set(
                "many",
                Some(many.iter().map(|c| hash(c).unwrap()).collect()),
            )
            .unwrap();
        let one = generate(1).unwrap();
        store
            .set("one", Some(vec![hash(&one[0]).unwrap()]))
            .unwrap();
        let wrong = generate(1).unwrap().remove(0);
        let costs = [
            hashes_of(|| assert_eq!(store.use_code("many", &wrong).unwrap(), Used::Rejected)),
            hashes_of(|| assert_eq!(store.use_code("one", &wrong).unwrap(), Used::Rejected)),
            hashes_of(|| assert_eq!(store.use_code("none", &wrong).unwrap(), Used::Rejected)),
            hashes_of(|| store.check_nothing(&wrong)),
        ];
        assert_eq!(costs, [MAX_COUNT; 4]);
        // A right code stops at its own hash.
        assert_eq!(
            hashes_of(|| assert!(matches!(
                store.use_code("one", &one[0]).unwrap(),
                Used::Accepted { left: 0 }
            ))),
            1
        );
    }

    #[test]
    fn codes_have_the_shape_and_are_never_totp_codes() {
        let codes = generate(50).unwrap();
        for c in &codes {
            let s = c.expose();
            assert_eq!(s.len(), 14, "{s}");
            assert_eq!((&s[4..5], &s[9..10]), ("-", "-"));
            assert!(!crate::flow::code_is_well_formed(s));
            assert!(parse_code(s).is_some());
        }
        let mut unique: Vec<_> = codes.iter().map(|c| c.expose().to_string()).collect();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 50);
    }

    #[test]
    fn typed_forms() {
        let canon = |s: &str| parse_code(s).map(|c| c.expose().to_string());
        assert_eq!(canon("ab2c-dEF3-ghjk").as_deref(), Some("ab2cdef3ghjk"));
        assert_eq!(canon(" AB2C DEF3 GHJK ").as_deref(), Some("ab2cdef3ghjk"));
        assert_eq!(canon("ab2cdef3ghjk").as_deref(), Some("ab2cdef3ghjk"));
        // Look-alikes read as the symbol they look like.
        assert_eq!(canon("oil0-0000-0000").as_deref(), Some("011000000000"));
        for bad in [
            "ab2c-def3-ghj",
            "ab2c-def3ghjk-",
            "ab2c def3-ghjk",
            "ab2c-def3-ghju",
            "123456",
            "12345678",
            "",
        ] {
            assert_eq!(canon(bad), None, "{bad}");
        }
    }

    #[test]
    fn trailing_code_in_one_answer() {
        let a = "pass word!ab2c-def3-ghjk";
        assert_eq!(trailing_code_start(a), Some(10));
        assert_eq!(trailing_code_start("ab2c-def3-ghjk"), Some(0));
        assert_eq!(trailing_code_start("passwordab2cdef3ghjk"), None);
        assert_eq!(trailing_code_start("pw123456"), None);
        assert_eq!(trailing_code_start("é"), None);
    }

    #[test]
    fn hash_matches_its_code_only() {
        let code = Secret::new("ab2c-def3-ghjk");
        let h = hash(&code).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!h.contains("ab2c"));
        assert!(matches(&h, &parse_code("AB2C DEF3 GHJK").unwrap()).unwrap());
        assert!(!matches(&h, &parse_code("ab2c-def3-ghjm").unwrap()).unwrap());
        assert_ne!(h, hash(&code).unwrap(), "a salt per code");
        // The stand-in hash is well formed at our cost, and matches no code.
        assert_eq!(
            matches(DUMMY, &parse_code("0000-0000-0000").unwrap()),
            Ok(false)
        );
        assert!(DUMMY.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(matches(
            "$argon2id$v=19$m=999999,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
            &parse_code("ab2c-def3-ghjk").unwrap()
        )
        .is_err());
    }

    /// Needs root, as the suite does: the store refuses files and folders that are not root's.
    #[test]
    fn store_uses_each_code_once_even_at_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("codes/recovery.toml"));
        assert_eq!(store.left("alice").unwrap(), 0, "no file: no codes");
        let codes = generate(3).unwrap();
        let hashes = codes.iter().map(|c| hash(c).unwrap()).collect();
        store.set("alice", Some(hashes)).unwrap();
        let folder = dir.path().join("codes");
        assert_eq!(
            std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let file = std::fs::metadata(store.path()).unwrap();
        assert_eq!(file.permissions().mode() & 0o777, 0o600);
        assert_eq!(store.counts().unwrap().get("alice"), Some(&3));
        assert_eq!(store.use_code("bob", &codes[0]).unwrap(), Used::Rejected);

        // Eight logins with one code at once: exactly one wins.
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.use_code("alice", &codes[0]).unwrap()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|u| matches!(u, Used::Accepted { .. }))
                .count()
        });
        assert_eq!(wins, 1);
        assert_eq!(store.left("alice").unwrap(), 2);
        assert_eq!(
            store.use_code("alice", &codes[1]).unwrap(),
            Used::Accepted { left: 1 }
        );
        assert!(!std::fs::read_to_string(store.path())
            .unwrap()
            .contains(codes[2].expose()));

        // A file or folder others may touch is an error, never "no codes".
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(store.use_code("alice", &codes[2]).is_err());
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o733)).unwrap();
        let e = store.left("alice").unwrap_err();
        assert!(e.problem.contains("writable by root alone"), "{e}");
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700)).unwrap();
        store.set("alice", None).unwrap();
        assert_eq!(store.left("alice").unwrap(), 0);
    }
}
